/* handoff.h - queries handed to their home shard and answers back (handoff.c). */
#ifndef DP_HANDOFF_H
#define DP_HANDOFF_H

#include "ring.h"
#include "shard-t.h"

/* A TCP client of another shard, as the home's query path names it: the
 * top bit set, the origin shard in bits 23-30, the slot in bits 0-22. */
#define DP_XS_REMOTE (1u << 31)
#define DP_XS_REMOTE_IDX(origin, idx) (DP_XS_REMOTE | ((uint32_t)(origin) << 23) | (idx))
#define DP_XS_ORIGIN(tidx) (((tidx) >> 23) & 0xff)
#define DP_XS_SLOT(tidx) ((tidx) & 0x7fffff)

/* Hand a validated client query (msg, len) to shard home. Returns 0 when
 * it went (home answers it), or a negative code: the caller resolves it
 * here (queue full, too large, hand-offs not running). Copies; hot path. */
int dp_handoff_query(dp_shard_t *s, uint32_t home, int transport, const uint8_t *msg,
		     size_t len, int li, const struct sockaddr_in6 *from, uint32_t tcp_idx,
		     uint32_t tcp_gen);
/* Home: the answer (len 0: none) for a remote TCP client tidx (marked)
 * goes back to its origin shard. Exactly one per query handed to us.
 * Copies; hot path. */
void dp_handoff_answer(dp_shard_t *s, uint32_t tidx, uint32_t tgen, const uint8_t *msg,
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
/* Set-up (in the shard's thread, once its ring exists). */
void dp_handoff_init(dp_shard_t *s);

#endif
