/* idmap.h - the query-ID map of one upstream connection.
 *
 * Every query sent on a connection gets a fresh 16-bit ID, unique among that
 * connection's in-flight queries and chosen at random (so IDs are not
 * predictable on the wire). The map takes the ID back to the caller's value
 * (dotproxy stores the query slot index). O(1) take, get and release.
 *
 * Owns: one table of 65,536 values (256 KiB, allocated and filled with
 * DP_IDMAP_NONE once per connection by dp_idmap_init).
 */
#ifndef DP_IDMAP_H
#define DP_IDMAP_H

#include "dp.h"

#define DP_IDMAP_NONE UINT32_MAX
/* Never fill more than half the ID space: random probing stays O(1). */
#define DP_IDMAP_MAX 32768u

typedef struct dp_idmap {
	uint32_t *val; /* val[id] = stored value, DP_IDMAP_NONE when free */
	uint32_t count;
	uint64_t rng;
} dp_idmap_t;

/* Allocates the table. Returns 0 or -ENOMEM. */
int dp_idmap_init(dp_idmap_t *m, uint64_t seed);

/* Frees the table; accepts a map that was never initialised (zeroed). */
void dp_idmap_destroy(dp_idmap_t *m);

/* Take a free ID for value (value != DP_IDMAP_NONE). Returns the ID
 * (0..65535) or DP_E_FULL when DP_IDMAP_MAX are in flight. Hot path. */
int dp_idmap_take(dp_idmap_t *m, uint32_t value);

/* The value stored under id, or DP_IDMAP_NONE. Hot path. */
static inline uint32_t dp_idmap_get(const dp_idmap_t *m, uint16_t id)
{
	return m->val[id];
}

/* Free id (a free id is left alone). Hot path. */
void dp_idmap_release(dp_idmap_t *m, uint16_t id);

#endif
