/* handoff.h - queries handed to their home shard and answers back
 * (handoff.c): below the query layer, which hands queries down and gets
 * those for it through the function given to dp_handoff_init. */
#ifndef DP_HANDOFF_H
#define DP_HANDOFF_H

#include "ring.h"
#include "shard-t.h"

/* The query layer's entry for a query another shard read (this shard is
 * its home): c is a T_UDP or T_TCP_REMOTE client. */
typedef void dp_handoff_deliver_fn(dp_shard_t *s, const dp_client_t *c, uint8_t *msg,
				   size_t len);

/* Hand client c's validated query (msg, len; c of this shard: T_UDP or
 * T_TCP) to shard home. Returns 0 when it went (home answers it; a TCP
 * query stays counted on its connection until the answer is back), or a
 * negative code: the caller resolves it here (queue full, too large,
 * hand-offs not running). Copies; hot path. */
int dp_handoff_query(dp_shard_t *s, uint32_t home, const dp_client_t *c, const uint8_t *msg,
		     size_t len);
/* Loop: read the queues of the shards that woke us (bounded per turn). */
void dp_handoff_drain(dp_shard_t *s);
/* Loop, before submitting: wake every shard we queued messages for. */
void dp_handoff_wake(dp_shard_t *s);
/* Completions of OP_XSHARD / OP_XSHARD_SENT, and OP_WAKE (the eventfd). */
void dp_handoff_on_cqe(dp_shard_t *s, struct io_uring_cqe *cqe, enum dp_op op, uint32_t idx);
/* Draining: this shard reads no more queries. True when no shard hands
 * off anything any more, our incoming queues are empty and every TCP
 * query we handed off has its answer back. */
bool dp_handoff_quiet(dp_shard_t *s);
/* Set-up (in the shard's thread, once its ring exists): queries handed to
 * us go to deliver; registers the ops that answer a TCP client of another
 * shard (s->fe[T_TCP_REMOTE]). */
void dp_handoff_init(dp_shard_t *s, dp_handoff_deliver_fn *deliver);

#endif
