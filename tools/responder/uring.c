/* uring.c - a shard's io_uring plumbing (see uring.h). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "uring.h"

struct io_uring_sqe *uring_get_sqe(shard_t *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (unlikely(!sqe)) {
		/* SQ full within one turn (thousands of busy connections): push
		 * what we have and carry on. */
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
		if (!sqe) {
			fprintf(stderr, "dot-responder: shard %d: no SQE after submit\n", s->id);
			abort();
		}
	}
	return sqe;
}

void uring_arm_accept(shard_t *s, int li, bool backoff)
{
	struct io_uring_sqe *sqe;
	if (backoff) {
		/* The accept failed (EMFILE, ENFILE, ENOMEM): wait a little
		 * instead of spinning. A hard link runs the accept even though
		 * the timeout "fails" with -ETIME. */
		sqe = uring_get_sqe(s);
		io_uring_prep_timeout(sqe, &s->backoff, 0, 0);
		sqe->flags |= IOSQE_IO_HARDLINK;
		io_uring_sqe_set_data64(sqe, ud_make(OP_TIMEOUT, 0, 0));
	}
	sqe = uring_get_sqe(s);
	io_uring_prep_multishot_accept(sqe, s->listen_fd[li], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, (uint32_t)li));
}

void uring_arm_wake(shard_t *s)
{
	struct io_uring_sqe *sqe = uring_get_sqe(s);
	io_uring_prep_read(sqe, s->wake_fd, &s->wake_val, sizeof(s->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0));
}

void uring_arm_recv(shard_t *s, conn_t *c)
{
	struct io_uring_sqe *sqe = uring_get_sqe(s);
	io_uring_prep_recv(sqe, c->fd, NULL, RECV_BUF_SIZE, 0);
	/* Armed right after rbio was drained, so the socket is usually empty:
	 * wait for readiness rather than try a receive that would fail. */
	sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RECV_BGID;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->gen, conn_idx(s, c)));
	c->recv_armed = true;
	c->inflight++;
}

/* Only one send in flight per socket: a second one could be reordered
 * against the first, and the ciphertext stream must stay in order. */
void uring_arm_send(shard_t *s, conn_t *c)
{
	struct io_uring_sqe *sqe = uring_get_sqe(s);
	io_uring_prep_send(sqe, c->fd, c->tx + c->tx_off, c->tx_len - c->tx_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, conn_idx(s, c)));
	c->send_armed = true;
	c->inflight++;
	CNT_INC(s, sends);
}

/* Send buffers: a stack of fixed buffers; malloc only when it is empty, so
 * the steady state allocates nothing. At most one per connection exists. */
uint8_t *uring_tx_get(shard_t *s)
{
	if (s->ntxfree)
		return s->txfree[--s->ntxfree];
	return malloc(TX_BUF_SIZE);
}

void uring_tx_put(shard_t *s, conn_t *c)
{
	if (c->tx)
		s->txfree[s->ntxfree++] = c->tx;
	c->tx = NULL;
	c->tx_len = c->tx_off = 0;
}
