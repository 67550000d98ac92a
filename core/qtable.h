/* qtable.h - the shard's query table (qtable.c): the slots a query lives in
 * between its arrival and its answer, their free list, and the in-flight
 * index of the questions upstream now (coalescing).
 *
 * Storage only: which query goes in, when it leaves and who is answered is
 * query.c's. Works on the shard's fields (dp_shard_t.q, q_*, flight*).
 */
#ifndef DP_QTABLE_H
#define DP_QTABLE_H

#include "shard-t.h"

/* Set up --max-inflight slots (one mapping, touched only as slots are
 * first used) and the in-flight index (twice as many entries, rounded up
 * to a power of two). Allocates. Returns 0 or -ENOMEM (then
 * dp_qtable_free is still safe). */
int dp_qtable_init(dp_shard_t *s);

/* Free the slots (with any query wire that did not fit inline) and the
 * index. Accepts a table never or half set up. */
void dp_qtable_free(dp_shard_t *s);

/* Take a free slot: its index, DP_NONE when all --max-inflight are in use.
 * The slot holds what its last query left (gen, wire pointer); the caller
 * fills it. Hot path. */
uint32_t dp_qtable_alloc(dp_shard_t *s);

/* Give slot qi back: out of the in-flight index, its wire freed when not
 * inline, state Q_FREE, generation bumped (a late answer for it is no
 * longer its), counted freed for the TCP frontend's fair-share waiters.
 * The caller has detached everything else (upstream, timers, client).
 * Hot path. */
void dp_qtable_put(dp_shard_t *s, uint32_t qi);

/* The query upstream now with the same question as q (key hash, name
 * case-folded, type, class, DO, CD, forwarded subnet), DP_NONE when none.
 * Hot path. */
uint32_t dp_qtable_flight_find(const dp_shard_t *s, const dp_query_t *q);

/* Enter query qi (key_hash set, not entered yet) in the in-flight index:
 * identical questions now find it. Hot path. */
void dp_qtable_flight_add(dp_shard_t *s, uint32_t qi);

#endif
