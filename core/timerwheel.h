/* timerwheel.h - a hierarchical timer wheel: timers fire in deadline order
 * whatever their delays; arming and cancelling are O(1).
 *
 * Time is counted in ticks of the caller's choosing (a shard uses
 * milliseconds) and passed in by the caller: the module reads no clock and
 * does no I/O. Eleven levels of 64 slots cover every 64-bit deadline:
 * level L holds the timers whose deadline first differs from the wheel's
 * current time in the L-th group of six bits (counting from the low end),
 * in the slot named by that group of the deadline. Hence:
 *   - every timer of level L is due before every timer of level L + 1, and
 *     within a level the slot order is the deadline order, so the earliest
 *     timer is in the lowest occupied slot of the lowest occupied level
 *     (found with two bitmaps and a count of trailing zeros);
 *   - a level-0 slot holds timers of one exact deadline: the resolution is
 *     one tick;
 *   - when time reaches a slot of level L > 0, its timers move down to the
 *     levels below ("cascade"); a timer moves at most once per level.
 * Timers of one deadline fire in the order they were armed.
 *
 * Entries are embedded in their owners (no allocation per timer) and linked
 * by pointers, so an owner must not move while its timer is armed; a zeroed
 * entry is a valid unarmed one. The wheel owns only its slot heads.
 *
 * Model: h2o's lib/common/timerwheel.c (the same geometry), written anew.
 */
#ifndef DP_TIMERWHEEL_H
#define DP_TIMERWHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DP_TW_BITS 6
#define DP_TW_SLOTS (1u << DP_TW_BITS)
#define DP_TW_LEVELS 11 /* 11 x 6 bits >= 64: no deadline is out of range */

typedef struct dp_tw_link {
	struct dp_tw_link *next, *prev;
} dp_tw_link_t;

typedef struct dp_tw_entry dp_tw_entry_t;

/* Called by dp_tw_run for a timer that is due; the entry is unarmed by
 * then (the callback may arm it again, for a later tick, or free its
 * owner). arg is dp_tw_run's. */
typedef void (*dp_tw_cb)(dp_tw_entry_t *e, void *arg);

struct dp_tw_entry {
	dp_tw_link_t link; /* link.next == NULL: not armed */
	uint64_t at; /* deadline, in ticks */
	dp_tw_cb cb;
};

typedef struct dp_tw {
	uint64_t now; /* every timer due at or before now is on the due list */
	uint32_t levels; /* bit L: level L has an occupied slot */
	uint32_t count; /* armed timers */
	uint64_t occupied[DP_TW_LEVELS]; /* bit s: slot s of that level is not empty */
	dp_tw_link_t due; /* reached, not yet handed out: in deadline order */
	dp_tw_link_t slot[DP_TW_LEVELS][DP_TW_SLOTS];
} dp_tw_t;

/* An empty wheel whose time is now. */
void dp_tw_init(dp_tw_t *w, uint64_t now);

/* An unarmed entry that calls cb when it fires (cb may be NULL for users
 * of dp_tw_pop only). */
static inline void dp_tw_entry_init(dp_tw_entry_t *e, dp_tw_cb cb)
{
	e->link.next = e->link.prev = NULL;
	e->at = 0;
	e->cb = cb;
}

static inline bool dp_tw_armed(const dp_tw_entry_t *e)
{
	return e->link.next != NULL;
}

/* Arm e to fire at tick at; an armed e is moved (re-armed). A deadline at
 * or before the wheel's time fires at the next dp_tw_pop/dp_tw_run. O(1).
 * Hot path. */
void dp_tw_add(dp_tw_t *w, dp_tw_entry_t *e, uint64_t at);

/* Disarm e; nothing when it is not armed. O(1). Hot path. */
void dp_tw_cancel(dp_tw_t *w, dp_tw_entry_t *e);

/* The tick at which the earliest timer may be due: exact when it lies
 * within the current 64 ticks, otherwise the start of its slot (a lower
 * bound: waiting until then costs one cascade and no lateness). The
 * wheel's time when a timer is due already; UINT64_MAX when none is armed.
 * O(1). */
uint64_t dp_tw_next(const dp_tw_t *w);

/* Advance the wheel's time to now (never backwards) and hand out the
 * earliest timer due at or before now, unarmed; NULL when none is. Call
 * until NULL: timers come out in deadline order. Amortised O(1). */
dp_tw_entry_t *dp_tw_pop(dp_tw_t *w, uint64_t now);

/* dp_tw_pop until NULL, calling each timer's cb(e, arg). A callback may
 * arm, re-arm or cancel any timer; one that keeps re-arming timers at or
 * before now makes this loop run on. Returns the number fired. */
size_t dp_tw_run(dp_tw_t *w, uint64_t now, void *arg);

#endif
