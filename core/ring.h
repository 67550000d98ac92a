/* ring.h - the shard's io_uring as every module uses it: how completions
 * are told apart, getting an SQE, giving provided buffers back.
 *
 * Completions are told apart by user_data = op (8 bits) | index (24 bits) |
 * generation (32 bits): no object is allocated per operation, and a stale
 * completion for a reused slot is recognised by its generation.
 */
#ifndef DP_RING_H
#define DP_RING_H

#include "shard-t.h"

#include <liburing.h>

#define DP_BGID 1 /* the provided-buffer group of UDP and TCP receives */

enum dp_op {
	OP_IGNORE = 0, /* cancels and other completions nobody waits for */
	OP_UDP_RECV,
	OP_UDP_SEND,
	OP_TCP_ACCEPT,
	OP_TCP_RECV,
	OP_TCP_SEND,
	OP_UP_CONNECT,
	OP_UP_RECV,
	OP_UP_SEND,
	OP_WAKE,
	OP_XSHARD, /* another shard queued messages for us (idx: that shard) */
	OP_XSHARD_SENT, /* our wake of shard idx failed (MSG_RING refused) */
	OP_TLS_SEND, /* ciphertext to a TLS client (tlsconn.h), idx/gen its slot */
};

static inline uint64_t dp_ud(enum dp_op op, uint32_t idx, uint32_t gen)
{
	return ((uint64_t)op << 56) | ((uint64_t)(idx & 0xffffff) << 32) | gen;
}
#define DP_UD_OP(u) ((enum dp_op)((u) >> 56))
#define DP_UD_IDX(u) ((uint32_t)(((u) >> 32) & 0xffffff))
#define DP_UD_GEN(u) ((uint32_t)(u))

/* An SQE, submitting first when the SQ is full. Never NULL. Hot path. */
struct io_uring_sqe *dp_sqe(dp_shard_t *s);

/* Give a provided buffer back to the ring. Hot path. */
void dp_bufring_recycle(dp_shard_t *s, uint16_t bid);

/* The data of provided buffer bid. */
static inline uint8_t *dp_bufring_data(dp_shard_t *s, uint16_t bid)
{
	return s->br_mem + (size_t)bid * s->br_size;
}

#endif
