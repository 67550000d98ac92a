/* timerwheel.c - hierarchical timer wheel (see timerwheel.h for the layout).
 *
 * The invariant everything rests on: a timer in a slot has a deadline after
 * w->now and sits at level (highest bit of at ^ now) / 6, slot digit L of
 * at; a timer on the due list has a deadline at or before w->now. Moving
 * w->now forward keeps it as long as no slot's start is passed, which is
 * why dp_tw_pop stops at each slot start and cascades that slot first.
 */
#include "timerwheel.h"

static inline void list_init(dp_tw_link_t *h)
{
	h->next = h->prev = h;
}

static inline bool list_empty(const dp_tw_link_t *h)
{
	return h->next == h;
}

static inline void list_push_tail(dp_tw_link_t *h, dp_tw_link_t *n)
{
	n->prev = h->prev;
	n->next = h;
	h->prev->next = n;
	h->prev = n;
}

static inline void list_unlink(dp_tw_link_t *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = NULL;
}

static inline unsigned level_of(uint64_t at, uint64_t now)
{
	/* at != now: the caller puts at <= now on the due list */
	return (unsigned)(63 - __builtin_clzll(at ^ now)) / DP_TW_BITS;
}

static inline unsigned slot_of(uint64_t at, unsigned level)
{
	return (unsigned)(at >> (level * DP_TW_BITS)) & (DP_TW_SLOTS - 1);
}

/* First tick of slot s of level L, seen from now: now's digits above L,
 * digit L = s, zeros below. */
static inline uint64_t slot_start(uint64_t now, unsigned level, unsigned s)
{
	unsigned shift = level * DP_TW_BITS;
	uint64_t high = shift + DP_TW_BITS >= 64 ? 0 : now >> (shift + DP_TW_BITS) << (shift + DP_TW_BITS);
	return high | (uint64_t)s << shift;
}

void dp_tw_init(dp_tw_t *w, uint64_t now)
{
	w->now = now;
	w->levels = 0;
	w->count = 0;
	list_init(&w->due);
	for (unsigned l = 0; l < DP_TW_LEVELS; l++) {
		w->occupied[l] = 0;
		for (unsigned s = 0; s < DP_TW_SLOTS; s++)
			list_init(&w->slot[l][s]);
	}
}

/* Link an unlinked e where its deadline says, relative to w->now. */
static void place(dp_tw_t *w, dp_tw_entry_t *e)
{
	if (e->at <= w->now) {
		list_push_tail(&w->due, &e->link);
		return;
	}
	unsigned l = level_of(e->at, w->now), s = slot_of(e->at, l);
	list_push_tail(&w->slot[l][s], &e->link);
	w->occupied[l] |= 1ull << s;
	w->levels |= 1u << l;
}

void dp_tw_add(dp_tw_t *w, dp_tw_entry_t *e, uint64_t at)
{
	if (dp_tw_armed(e))
		dp_tw_cancel(w, e);
	e->at = at;
	place(w, e);
	w->count++;
}

void dp_tw_cancel(dp_tw_t *w, dp_tw_entry_t *e)
{
	if (!dp_tw_armed(e))
		return;
	bool in_slot = e->at > w->now;
	list_unlink(&e->link);
	w->count--;
	if (!in_slot)
		return;
	unsigned l = level_of(e->at, w->now), s = slot_of(e->at, l);
	if (list_empty(&w->slot[l][s])) {
		w->occupied[l] &= ~(1ull << s);
		if (!w->occupied[l])
			w->levels &= ~(1u << l);
	}
}

uint64_t dp_tw_next(const dp_tw_t *w)
{
	if (!list_empty(&w->due))
		return w->now;
	if (!w->levels)
		return UINT64_MAX;
	unsigned l = (unsigned)__builtin_ctz(w->levels);
	unsigned s = (unsigned)__builtin_ctzll(w->occupied[l]);
	return slot_start(w->now, l, s);
}

/* Time has reached the start of slot s of level l (w->now is that start):
 * move its timers to the due list or to lower levels, keeping their order. */
static void cascade(dp_tw_t *w, unsigned l, unsigned s)
{
	dp_tw_link_t *h = &w->slot[l][s];
	dp_tw_link_t *n = h->next;
	list_init(h);
	w->occupied[l] &= ~(1ull << s);
	if (!w->occupied[l])
		w->levels &= ~(1u << l);
	while (n != h) {
		dp_tw_link_t *next = n->next;
		place(w, (dp_tw_entry_t *)n);
		n = next;
	}
}

dp_tw_entry_t *dp_tw_pop(dp_tw_t *w, uint64_t now)
{
	for (;;) {
		if (!list_empty(&w->due)) {
			dp_tw_link_t *n = w->due.next;
			list_unlink(n);
			w->count--;
			return (dp_tw_entry_t *)n;
		}
		uint64_t start = UINT64_MAX;
		unsigned l = 0, s = 0;
		if (w->levels) {
			l = (unsigned)__builtin_ctz(w->levels);
			s = (unsigned)__builtin_ctzll(w->occupied[l]);
			start = slot_start(w->now, l, s);
		}
		if (start > now) {
			/* Nothing due by now, and no slot start passed: every
			 * timer keeps its level and slot. */
			if (now > w->now)
				w->now = now;
			return NULL;
		}
		w->now = start; /* after w->now: slots are ahead of it */
		cascade(w, l, s);
	}
}

size_t dp_tw_run(dp_tw_t *w, uint64_t now, void *arg)
{
	size_t n = 0;
	dp_tw_entry_t *e;
	while ((e = dp_tw_pop(w, now)) != NULL) {
		n++;
		if (e->cb)
			e->cb(e, arg);
	}
	return n;
}
