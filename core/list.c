/* list.c - intrusive doubly linked lists over table indices. */
#include "list.h"

static inline dp_link_t *link_at(void *base, size_t elem, size_t off, uint32_t idx)
{
	return (dp_link_t *)((uint8_t *)base + (size_t)idx * elem + off);
}

void dp_list_push_tail(dp_list_t *l, void *base, size_t elem, size_t off, uint32_t idx)
{
	dp_link_t *n = link_at(base, elem, off, idx);
	n->next = DP_NONE;
	n->prev = l->tail;
	if (l->tail != DP_NONE)
		link_at(base, elem, off, l->tail)->next = idx;
	else
		l->head = idx;
	l->tail = idx;
	l->count++;
}

void dp_list_remove(dp_list_t *l, void *base, size_t elem, size_t off, uint32_t idx)
{
	dp_link_t *n = link_at(base, elem, off, idx);
	if (n->prev != DP_NONE)
		link_at(base, elem, off, n->prev)->next = n->next;
	else
		l->head = n->next;
	if (n->next != DP_NONE)
		link_at(base, elem, off, n->next)->prev = n->prev;
	else
		l->tail = n->prev;
	n->prev = n->next = DP_NONE;
	l->count--;
}
