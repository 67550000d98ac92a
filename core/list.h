/* list.h - intrusive doubly linked lists over table indices.
 *
 * Tables of preallocated slots (queries, connections) chain their elements
 * by index, not pointer: a dp_link_t inside each element, DP_NONE as the
 * end. No allocation; the list owns nothing.
 */
#ifndef DP_LIST_H
#define DP_LIST_H

#include <stddef.h>
#include <stdint.h>

#define DP_NONE UINT32_MAX

typedef struct dp_link {
	uint32_t prev, next;
} dp_link_t;

typedef struct dp_list {
	uint32_t head, tail;
	uint32_t count;
} dp_list_t;

#define DP_LIST_EMPTY ((dp_list_t){ DP_NONE, DP_NONE, 0 })

/* Append element idx of the table at base (elements of elem octets, link at
 * offset off) to l. Hot path. */
void dp_list_push_tail(dp_list_t *l, void *base, size_t elem, size_t off, uint32_t idx);
/* Unlink element idx (which must be on l) from l. Hot path. */
void dp_list_remove(dp_list_t *l, void *base, size_t elem, size_t off, uint32_t idx);

#endif
