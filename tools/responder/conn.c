/* conn.c - one DNS-over-TLS or plain DNS-over-TCP connection (see conn.h).
 *
 * Receive completions only feed the read BIO and mark the connection dirty;
 * conn_service() runs once per dirty connection after all completions of a
 * turn, so however many receives landed, the answers leave in one stream
 * write (one SSL_write on TLS) and one send. Only one send is in flight per
 * socket (uring.c says why).
 *
 * Memory per connection is bounded: rbio holds at most one receive plus a
 * partial record (receives are re-armed only after rbio was drained; a
 * ClientHello held by --handshake-delay-ms is the exception), wbio at most
 * WBIO_LIMIT plus one turn of answers (receives stop above it), a partial
 * DNS message at most 65537 bytes, a send buffer only while a send is in
 * flight.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "answer.h"
#include "conn.h"
#include "dns.h"
#include "fault.h"
#include "stream.h"
#include "tcpframe.h"
#include "uring.h"

/* ---- slots -------------------------------------------------------------- */

static void conn_release(shard_t *s, conn_t *c)
{
	c->state = SLOT_FREE;
	c->gen++;
	c->next_free = s->free_head;
	s->free_head = conn_idx(s, c);
}

/* In-flight SQEs keep the file alive; shutdown() makes them complete, and
 * the slot is released when the last one has. */
void conn_close(shard_t *s, conn_t *c)
{
	if (c->state != SLOT_OPEN)
		return;
	c->state = SLOT_CLOSED;
	if (unlikely(c->in_idle))
		fault_idle_unlink(s, c);
	/* A reset (SO_LINGER 0 set) must not send a FIN first: SHUT_RD only
	 * wakes the pending receive, and the last reference then resets. */
	if (c->inflight)
		shutdown(c->fd, unlikely(c->reset_armed) ? SHUT_RD : SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	stream_free(c);
	free(c->carry);
	c->carry = NULL;
	c->carry_len = c->carry_cap = 0;
	if (!c->send_armed)
		uring_tx_put(s, c);
	CNT_INC(s, closed);
	if (c->inflight == 0)
		conn_release(s, c);
}

void conn_open(shard_t *s, int fd, bool plain)
{
	if (s->free_head == SLOT_NONE) {
		close(fd);
		CNT_INC(s, rejected);
		return;
	}
	uint32_t i = s->free_head;
	conn_t *c = &s->conns[i];

	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	uint32_t gen = c->gen, next = c->next_free;
	memset(c, 0, sizeof(*c));
	c->gen = gen;
	c->fd = -1;
	c->next_free = next;
	if (stream_open(s, c, plain) < 0) { /* the slot stays free */
		close(fd);
		CNT_INC(s, rejected);
		return;
	}
	s->free_head = next;
	c->fd = fd;
	c->state = SLOT_OPEN;
	c->bh = s->bh;
	c->next_free = SLOT_NONE;
	c->idle_prev = c->idle_next = SLOT_NONE;
	if (unlikely(c->bh->idle_close_ms))
		fault_idle_touch(s, c);
	CNT_INC(s, connections);
	uring_arm_recv(s, c);
}

/* Fault: reset the connection now (SO_LINGER 0, then close: an RST and no
 * FIN). Whatever is still queued is lost, as on a crash. */
static void conn_reset(shard_t *s, conn_t *c)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	c->reset_armed = true;
	conn_close(s, c);
}

/* ---- TLS and answers ---------------------------------------------------- */

/* dp_tcpframe_split() callback: answer one complete message into the batch. */
static int on_message(void *ctx, uint8_t *msg, size_t len)
{
	shard_t *s = ctx;
	conn_t *c = s->cur;
	CNT_INC(s, queries);
	if (c->plain)
		CNT_INC(s, plain_queries);
	if (s->ob_len + ANSWER_MAX > OUT_BATCH_CAP && stream_flush(s, c) < 0)
		return DP_E_TLS;
	uint8_t *out = s->ob + s->ob_len;
	int n = answer_build(s, c->bh, msg, len, out + 2, OUT_BATCH_CAP - s->ob_len - 2);
	if (n == ANS_DROP) {
		CNT_INC(s, dropped);
		return 0;
	}
	if (n < 0) {
		CNT_INC(s, malformed_closes);
		return DP_E_MALFORMED;
	}
	if (unlikely(c->bh->faulty))
		return fault_answer(s, c, out, n);
	dp_wr16(out, (uint16_t)n);
	s->ob_len += 2 + (size_t)n;
	CNT_INC(s, answers);
	return 0;
}

/* Run the TLS handshake step. True once it is done (now or before, or
 * never needed: plain connections start with hs_done): the caller may
 * read. */
static bool tls_handshake(shard_t *s, conn_t *c)
{
	if (c->hs_done)
		return true;
	if (unlikely(c->bh->refuse_handshake)) {
		/* The ClientHello arrived: reset instead of answering it. */
		CNT_INC(s, fault_refused);
		conn_reset(s, c);
		return false;
	}
	/* The ClientHello waits in rbio until fault_timers() lets it go. */
	if (unlikely(c->bh->handshake_delay_ms) && !c->hs_released && fault_hold_handshake(s, c))
		return false;
	int r = SSL_do_handshake(c->ssl);
	if (r != 1) {
		if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ)
			stream_failed(s, c);
		return false;
	}
	c->hs_done = true;
	CNT_INC(s, handshakes);
	if (SSL_session_reused(c->ssl))
		CNT_INC(s, resumed);
	return true;
}

/* Read the stream until rbio is empty, answering every complete message
 * into the batch. The scratch holds the carried partial message, then
 * stream_read() output; after each split the remainder (< 2 + 65535 bytes)
 * moves to the front, so a full record always fits behind it. Returns what
 * dp_tcpframe_split() last returned (negative: stop, see conn_process) with
 * the bytes left over in *have and the last stream_read() result in *st. */
static long read_messages(shard_t *s, conn_t *c, size_t *have_out, int *st)
{
	uint8_t *buf = s->scratch;
	size_t have = c->carry_len;
	if (have)
		memcpy(buf, c->carry, have);
	c->carry_len = 0;
	s->cur = c;
	s->ob_len = 0;
	s->nrev = 0;

	int r;
	long used = 0;
	for (;;) {
		r = stream_read(c, buf + have, SCRATCH_CAP - have);
		if (r <= 0)
			break;
		have += (size_t)r;
		used = dp_tcpframe_split(buf, have, on_message, s);
		if (used < 0)
			break;
		if (used) {
			have -= (size_t)used;
			memmove(buf, buf + used, have);
		}
	}
	*st = r;
	*have_out = have;
	return used;
}

/* Keep the partial message (have bytes at the front of the scratch) for
 * the next turn; grows c->carry (realloc, only when a message straddles
 * two reads). Without memory, closes. */
static void keep_carry(shard_t *s, conn_t *c, size_t have)
{
	if (have > c->carry_cap) {
		uint8_t *n = realloc(c->carry, have);
		if (!n) {
			c->want_close = true;
			return;
		}
		c->carry = n;
		c->carry_cap = (uint32_t)have;
	}
	memcpy(c->carry, s->scratch, have);
	c->carry_len = (uint32_t)have;
}

/* Run the handshake (TLS), then drain every complete message out of rbio
 * and answer them with one stream write. Hot path. */
static void conn_process(shard_t *s, conn_t *c)
{
	if (!tls_handshake(s, c))
		return;
	size_t have;
	int st;
	long used = read_messages(s, c, &have, &st);

	if (stream_flush(s, c) < 0) {
		stream_failed(s, c);
		return;
	}
	if (used < 0) {
		/* Zero-length frame or unreadable message: answers already
		 * written go out, then we close. */
		if (used == DP_E_TLS)
			stream_failed(s, c);
		else if (used == FAULT_STOP)
			fault_close_notify(s, c);
		else if (used != FAULT_RESET) /* that one: conn_service() */
			c->want_close = true;
		return;
	}
	if (st == STREAM_EOF) { /* close_notify: answer with ours */
		c->eof = true;
		stream_shutdown(c);
		return;
	}
	if (st == STREAM_ERR) {
		stream_failed(s, c);
		return;
	}
	if (have)
		keep_carry(s, c, have);
}

/* Move pending output (ciphertext on TLS) into a send buffer and queue one
 * send. */
static void flush_send(shard_t *s, conn_t *c)
{
	if (c->send_armed)
		return;
	size_t pend = BIO_pending(c->wbio);
	if (!pend)
		return;
	if (!c->tx && !(c->tx = uring_tx_get(s))) {
		conn_close(s, c);
		return;
	}
	int n = BIO_read(c->wbio, c->tx, (int)DP_MIN(pend, (size_t)TX_BUF_SIZE));
	if (n <= 0) {
		conn_close(s, c);
		return;
	}
	c->tx_len = (uint32_t)n;
	c->tx_off = 0;
	uring_arm_send(s, c);
}

void conn_service(shard_t *s, conn_t *c)
{
	c->dirty = false;
	if (c->state != SLOT_OPEN)
		return;
	if (c->rx_new) {
		c->rx_new = false;
		/* After a fault's close or tear, what still arrives is ignored. */
		if (likely(!c->want_close && !c->reset_armed))
			conn_process(s, c);
		if (c->state != SLOT_OPEN)
			return;
	}
	flush_send(s, c);
	if (c->state != SLOT_OPEN)
		return;
	if (unlikely(c->reset_armed)) {
		if (!c->send_armed && BIO_pending(c->wbio) == 0)
			conn_reset(s, c);
		return;
	}
	if (c->want_close || c->eof) {
		/* Half-closed by the peer (FIN, no close_notify): answers in
		 * the delay queue still go out before we close. */
		if (unlikely(c->delayed_pending) && !c->want_close && !c->tls_shut)
			return;
		if (!c->send_armed)
			conn_close(s, c);
		return;
	}
	if (!c->recv_armed && BIO_pending(c->wbio) < WBIO_LIMIT)
		uring_arm_recv(s, c);
}

/* ---- completions -------------------------------------------------------- */

void conn_on_recv(shard_t *s, conn_t *c, uint32_t gen, struct io_uring_cqe *cqe)
{
	int res = cqe->res;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		if (res > 0 && c->state == SLOT_OPEN && gen == (c->gen & 0xffffffu)) {
			/* A mem BIO write only fails on allocation failure. */
			if (BIO_write(c->rbio, s->rbufs + (size_t)bid * RECV_BUF_SIZE, res) != res)
				res = -ENOMEM;
		}
		recv_buf_return(s, bid);
	}
	c->recv_armed = false;
	c->inflight--;
	if (c->state != SLOT_OPEN) {
		if (c->state == SLOT_CLOSED && c->inflight == 0)
			conn_release(s, c);
		return;
	}
	CNT_INC(s, recvs);
	if (res > 0) {
		c->rx_new = true;
		if (unlikely(c->in_idle))
			fault_idle_touch(s, c);
		mark_dirty(s, c);
	} else if (res == 0) {
		c->eof = true;
		mark_dirty(s, c);
	} else if (res == -ENOBUFS) {
		/* Every buffer was taken this turn; they are back by the end of
		 * it, so re-arming in conn_service() does not spin. */
		CNT_INC(s, enobufs);
		mark_dirty(s, c);
	} else {
		conn_close(s, c);
	}
}

void conn_on_send(shard_t *s, conn_t *c, struct io_uring_cqe *cqe)
{
	c->send_armed = false;
	c->inflight--;
	if (c->state != SLOT_OPEN) {
		uring_tx_put(s, c);
		if (c->state == SLOT_CLOSED && c->inflight == 0)
			conn_release(s, c);
		return;
	}
	if (cqe->res <= 0) {
		conn_close(s, c);
		return;
	}
	c->tx_off += (uint32_t)cqe->res;
	if (c->tx_off < c->tx_len) {
		uring_arm_send(s, c); /* partial send: the rest, before anything newer */
		return;
	}
	uring_tx_put(s, c);
	mark_dirty(s, c); /* more ciphertext, a deferred recv, or a close */
}
