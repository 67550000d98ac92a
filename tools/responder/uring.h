/* uring.h - a shard's io_uring plumbing: the SQE supply, arming accept,
 * receive, send and the wake-up read, the user_data encoding, the provided
 * receive-buffer ring, the pool of send buffers, and the dirty list (the
 * connections to service at the end of the loop turn).
 *
 * Owns nothing of its own: it works on the shard's ring, buffers and lists
 * (shard.c sets them up and frees them).
 */
#ifndef DOT_RESPONDER_URING_H
#define DOT_RESPONDER_URING_H

#include "responder-t.h"

/* user_data: op (8 bits) | generation (24 bits) | slot or listener (32). */
enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_WAKE, OP_TIMEOUT };

static inline uint64_t ud_make(unsigned op, uint32_t gen, uint32_t idx)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & 0xffffffu) << 32) | idx;
}

static inline uint32_t conn_idx(shard_t *s, conn_t *c)
{
	return (uint32_t)(c - s->conns);
}

/* Queue c for conn_service() at the end of this turn (once). Hot path. */
static inline void mark_dirty(shard_t *s, conn_t *c)
{
	if (!c->dirty) {
		c->dirty = true;
		s->dirty[s->ndirty++] = conn_idx(s, c);
	}
}

/* Give receive buffer bid back to the ring. Hot path. */
static inline void recv_buf_return(shard_t *s, unsigned bid)
{
	io_uring_buf_ring_add(s->br, s->rbufs + (size_t)bid * RECV_BUF_SIZE, RECV_BUF_SIZE,
			      (unsigned short)bid, io_uring_buf_ring_mask(RECV_BUF_COUNT), 0);
	io_uring_buf_ring_advance(s->br, 1);
}

/* A free SQE; when the SQ is full, submits what is queued first. Aborts the
 * process if there is still none (cannot happen after a submit). */
struct io_uring_sqe *uring_get_sqe(shard_t *s);

/* Multishot accept on listener li; with backoff, 50 ms later (after an
 * accept failed: EMFILE, ENFILE, ENOMEM). */
void uring_arm_accept(shard_t *s, int li, bool backoff);

/* Read the shard's eventfd: the main thread's stop signal. */
void uring_arm_wake(shard_t *s);

/* One receive for c into a buffer of the ring. Hot path. */
void uring_arm_recv(shard_t *s, conn_t *c);

/* Send c->tx from tx_off to tx_len. Only one send per socket may be in
 * flight. Hot path. */
void uring_arm_send(shard_t *s, conn_t *c);

/* A send buffer of TX_BUF_SIZE from the pool; allocates (malloc) only when
 * the pool is empty. NULL without memory. */
uint8_t *uring_tx_get(shard_t *s);

/* Return c's send buffer (if any) to the pool and clear c's send state. */
void uring_tx_put(shard_t *s, conn_t *c);

#endif
