/* tcp.c - the TCP frontend (RFC 7766): multishot accept, multishot recv over
 * the provided-buffer ring, 2-byte framing, many queries per connection
 * answered in completion order, idle timeout, connection cap, bounded write
 * queue (a client that does not read its answers is disconnected).
 *
 * Owns: the shard's client table (dp_tcpc_t, --max-tcp-clients / shards
 * slots, zero pages until used) and per connection only what it needs: a
 * buffer for a frame split across receives, and its queued answers. An idle
 * connection holds no buffer at all.
 *
 * Lifetime: closing shuts the socket down and cancels its operations; the
 * slot (and its fd) is reused only after the last of them completed, so a
 * late completion never lands in somebody else's connection.
 */
#include "engine.h"
#include "log.h"
#include "tcpframe.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DP_BGID 1
#define TCP_WQ_MAX (256u * 1024u) /* queued answer bytes before we give up on a client */
#define TCP_SHARD_BUF_MAX ((size_t)64 << 20) /* all clients' buffers, per shard */
#define IOFF offsetof(dp_tcpc_t, ilink)

/* Grow a client buffer to hold need octets, within the shard's budget for
 * client buffers (so thousands of clients that stall mid-frame or never read
 * cannot take the memory). */
static bool grow(dp_shard_t *s, uint8_t **buf, uint32_t *cap, size_t need)
{
	if (need <= *cap)
		return true;
	size_t n = dp_grow_size(*cap, need, 512), old = *cap;
	if (s->tcp_buf_bytes - old + n > TCP_SHARD_BUF_MAX) {
		STAT_INC(s, tcp_closed_memory);
		return false;
	}
	if (!dp_buf_grow(buf, cap, n, n))
		return false;
	s->tcp_buf_bytes = s->tcp_buf_bytes - old + n;
	return true;
}

static void drop_buf(dp_shard_t *s, uint8_t **buf, uint32_t *cap)
{
	free(*buf);
	*buf = NULL;
	s->tcp_buf_bytes -= *cap;
	*cap = 0;
}

void dp_tcp_arm_accept(dp_shard_t *s, int li)
{
	if (s->tcp_fd[li] < 0 || s->stop)
		return;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_multishot_accept(sqe, s->tcp_fd[li], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_ACCEPT, (uint32_t)li, 0));
	s->tcp_armed[li] = true;
}

static void arm_recv(dp_shard_t *s, uint32_t idx)
{
	dp_tcpc_t *c = &s->tcp[idx];
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = DP_BGID;
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_RECV, idx, c->gen));
	c->recv_armed = true;
	c->ops++;
}

static void finalize(dp_shard_t *s, uint32_t idx)
{
	dp_tcpc_t *c = &s->tcp[idx];
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	drop_buf(s, &c->rbuf, &c->rcap);
	drop_buf(s, &c->out, &c->out_cap);
	drop_buf(s, &c->pend, &c->pend_cap);
	c->rlen = c->out_len = c->out_off = c->pend_len = 0;
	s->tcp_closing--;
	c->used = c->closing = c->recv_armed = c->send_inflight = c->eof = false;
	c->gen++;
	c->ilink.next = s->tcp_free;
	s->tcp_free = idx;
	s->tcp_used--;
	STAT_SET(s, tcp_open, s->tcp_used);
}

void dp_tcp_close(dp_shard_t *s, uint32_t idx)
{
	dp_tcpc_t *c = &s->tcp[idx];
	if (!c->used || c->closing)
		return;
	c->closing = true;
	s->tcp_closing++;
	dp_list_remove(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
	shutdown(c->fd, SHUT_RDWR);
	if (c->ops == 0) {
		finalize(s, idx);
		return;
	}
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
}

void dp_tcp_on_accept(dp_shard_t *s, struct io_uring_cqe *cqe, int li)
{
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		s->tcp_armed[li] = false;
		/* Out of fds and similar: wait for the next tick, do not spin. */
		if (cqe->res >= 0 || cqe->res == -EINTR)
			dp_tcp_arm_accept(s, li);
	}
	if (cqe->res < 0) {
		if (cqe->res != -ECANCELED)
			dp_warn("tcp accept failed", "shard=%d err=\"%s\"", s->id,
				dp_strerror(cqe->res));
		return;
	}
	int fd = cqe->res;
	if (s->stop) {
		close(fd);
		return;
	}
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	if (getpeername(fd, (struct sockaddr *)&peer, &plen) != 0 ||
	    !dp_acl_allows(&s->cfg->acl, (const struct sockaddr *)&peer)) {
		STAT_INC(s, acl_refused);
		close(fd);
		return;
	}
	if (s->tcp_used - s->tcp_closing >= s->tcp_cap) {
		/* Full: make room by closing the least recently active client
		 * that has nothing in flight (RFC 7766 6.2.3 lets a server close
		 * idle connections under pressure); refuse when none is idle. */
		uint32_t lru = s->tcp_idle.head;
		if (lru == DP_NONE || s->tcp[lru].inflight) {
			STAT_INC(s, tcp_refused);
			close(fd);
			return;
		}
		STAT_INC(s, tcp_evicted);
		dp_tcp_close(s, lru);
	}
	uint32_t idx;
	if (s->tcp_free != DP_NONE) {
		idx = s->tcp_free;
		s->tcp_free = s->tcp[idx].ilink.next;
	} else if (s->tcp_hiwater < s->tcp_cap + s->tcp_reserve) {
		idx = s->tcp_hiwater++;
	} else {
		STAT_INC(s, tcp_refused);
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	dp_tcpc_t *c = &s->tcp[idx];
	c->used = true;
	c->fd = fd;
	c->ops = 0;
	c->inflight = 0;
	c->listen_idx = (uint8_t)li;
	c->last_active_ms = s->now_ms;
	c->last_progress_ms = s->now_ms;
	c->dirty_next = DP_NONE;
	c->dirty = false;
	s->tcp_used++;
	STAT_INC(s, tcp_accepted);
	STAT_SET(s, tcp_open, s->tcp_used);
	dp_list_push_tail(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
	arm_recv(s, idx);
}

struct frame_ctx {
	dp_shard_t *s;
	uint32_t idx;
	uint32_t frames;
};

/* Only a complete query counts as activity: a client that trickles a frame
 * byte by byte, or announces 65,535 octets and stalls, still reaches the
 * idle timeout and is closed. */
static void touch(dp_shard_t *s, uint32_t idx)
{
	dp_tcpc_t *c = &s->tcp[idx];
	c->last_active_ms = s->now_ms;
	dp_list_remove(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
	dp_list_push_tail(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
}

static int on_frame(void *ctx, uint8_t *msg, size_t len)
{
	struct frame_ctx *f = ctx;
	dp_shard_t *s = f->s;
	dp_tcpc_t *c = &s->tcp[f->idx];
	if (len < DP_DNS_HDR_LEN) {
		STAT_INC(s, dropped);
		return DP_E_MALFORMED; /* nothing to answer to: close */
	}
	STAT_INC(s, tcp_queries);
	if (f->frames++ == 0)
		touch(s, f->idx);
	dp_query_from_client(s, T_TCP, msg, len, c->listen_idx, NULL, f->idx, c->gen);
	return c->closing ? DP_E_MALFORMED : 0;
}


static void on_data(dp_shard_t *s, uint32_t idx, uint8_t *data, size_t n)
{
	dp_tcpc_t *c = &s->tcp[idx];
	struct frame_ctx f = { s, idx, 0 };
	if (c->rlen == 0) {
		/* Common case: whole frames in the received buffer; read them
		 * where they landed and keep only a split tail. */
		long used = dp_tcpframe_split(data, n, on_frame, &f);
		if (used < 0) {
			dp_tcp_close(s, idx);
			return;
		}
		size_t rest = n - (size_t)used;
		if (rest) {
			if (!grow(s, &c->rbuf, &c->rcap, rest)) {
				dp_tcp_close(s, idx);
				return;
			}
			memcpy(c->rbuf, data + used, rest);
			c->rlen = (uint32_t)rest;
		}
		return;
	}
	if (!grow(s, &c->rbuf, &c->rcap, (size_t)c->rlen + n)) {
		dp_tcp_close(s, idx);
		return;
	}
	memcpy(c->rbuf + c->rlen, data, n);
	c->rlen += (uint32_t)n;
	long used = dp_tcpframe_split(c->rbuf, c->rlen, on_frame, &f);
	if (used < 0) {
		dp_tcp_close(s, idx);
		return;
	}
	if (used) {
		memmove(c->rbuf, c->rbuf + used, c->rlen - (size_t)used);
		c->rlen -= (uint32_t)used;
	}
	if (c->rlen == 0 && c->rcap > 4096) {
		/* Do not keep a 64 KB buffer for a connection that goes idle. */
		drop_buf(s, &c->rbuf, &c->rcap);
	}
}

static void maybe_close_after_eof(dp_shard_t *s, uint32_t idx)
{
	dp_tcpc_t *c = &s->tcp[idx];
	if (c->eof && c->inflight == 0 && !c->send_inflight && c->pend_len == 0)
		dp_tcp_close(s, idx);
}

void dp_tcp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = &s->tcp[idx];
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more) {
		c->ops--;
		c->recv_armed = false;
	}
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		if (cqe->res > 0 && c->used && !c->closing && c->gen == gen)
			on_data(s, idx, s->br_mem + (size_t)bid * s->br_size, (size_t)cqe->res);
		dp_bufring_recycle(s, bid);
	}
	if (!c->used || c->gen != gen)
		return;
	if (c->closing) {
		if (c->ops == 0)
			finalize(s, idx);
		return;
	}
	if (cqe->res == 0 || (cqe->res == -ECANCELED && s->reads_stopped)) {
		/* The client will send no more (or we stopped reading to drain):
		 * answer what it asked, then close. Draining, what the client
		 * sent before we stopped may still sit in the socket: take it. */
		if (cqe->res == -ECANCELED) {
			uint8_t buf[4096];
			for (int i = 0; i < 1024 && c->used && !c->closing; i++) {
				ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
				if (n <= 0)
					break;
				on_data(s, idx, buf, (size_t)n);
			}
			if (!c->used || c->closing)
				return;
		}
		c->eof = true;
		maybe_close_after_eof(s, idx);
		return;
	}
	if (cqe->res < 0 && cqe->res != -ENOBUFS) {
		dp_tcp_close(s, idx);
		return;
	}
	if (cqe->res == -ENOBUFS)
		STAT_INC(s, bufring_empty);
	if (!more && !c->eof && !s->reads_stopped)
		arm_recv(s, idx);
}

static void start_send(dp_shard_t *s, uint32_t idx)
{
	dp_tcpc_t *c = &s->tcp[idx];
	if (c->send_inflight || c->closing)
		return;
	if (c->out_off >= c->out_len) {
		if (c->pend_len == 0)
			return;
		/* Swap: the queued answers become the buffer in flight. */
		uint8_t *tb = c->out;
		uint32_t tc = c->out_cap;
		c->out = c->pend;
		c->out_cap = c->pend_cap;
		c->out_len = c->pend_len;
		c->out_off = 0;
		c->pend = tb;
		c->pend_cap = tc;
		c->pend_len = 0;
	}
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_send(sqe, c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_SEND, idx, c->gen));
	c->send_inflight = true;
	c->last_progress_ms = s->now_ms;
	c->ops++;
}

void dp_tcp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = &s->tcp[idx];
	c->ops--;
	c->send_inflight = false;
	if (!c->used || c->gen != gen)
		return;
	if (c->closing) {
		if (c->ops == 0)
			finalize(s, idx);
		return;
	}
	if (cqe->res <= 0) {
		dp_tcp_close(s, idx);
		return;
	}
	c->out_off += (uint32_t)cqe->res;
	c->last_progress_ms = s->now_ms;
	if (c->out_off >= c->out_len) {
		c->out_off = c->out_len = 0;
		if (c->out_cap > 16384)
			drop_buf(s, &c->out, &c->out_cap);
	}
	start_send(s, idx);
	maybe_close_after_eof(s, idx);
}

void dp_tcp_answer(dp_shard_t *s, uint32_t idx, uint32_t gen, const uint8_t *msg, size_t len)
{
	if (idx >= s->tcp_hiwater) {
		STAT_INC(s, tcp_answers_dropped);
		return;
	}
	dp_tcpc_t *c = &s->tcp[idx];
	if (!c->used || c->closing || c->gen != gen) {
		STAT_INC(s, tcp_answers_dropped);
		return;
	}
	size_t queued = (size_t)c->pend_len + (c->out_len - c->out_off);
	if (queued + len + 2 > TCP_WQ_MAX || !grow(s, &c->pend, &c->pend_cap, c->pend_len + len + 2)) {
		STAT_INC(s, tcp_closed_slow);
		STAT_INC(s, tcp_answers_dropped);
		dp_tcp_close(s, idx);
		return;
	}
	dp_wr16(c->pend + c->pend_len, (uint16_t)len);
	memcpy(c->pend + c->pend_len + 2, msg, len);
	c->pend_len += (uint32_t)len + 2;
	/* Send at the end of the turn, so that answers completing together
	 * leave in one send. */
	if (!c->dirty && !c->send_inflight) {
		c->dirty = true;
		c->dirty_next = s->tcp_dirty;
		s->tcp_dirty = idx;
	}
}

void dp_tcp_flush(dp_shard_t *s)
{
	while (s->tcp_dirty != DP_NONE) {
		uint32_t idx = s->tcp_dirty;
		dp_tcpc_t *c = &s->tcp[idx];
		s->tcp_dirty = c->dirty_next;
		c->dirty = false;
		if (c->used && !c->closing)
			start_send(s, idx);
	}
}

void dp_tcp_expire(dp_shard_t *s)
{
	uint32_t limit = s->cfg->tcp_idle_ms;
	while (s->tcp_idle.head != DP_NONE) {
		uint32_t idx = s->tcp_idle.head;
		dp_tcpc_t *c = &s->tcp[idx];
		if (s->now_ms - c->last_active_ms < limit)
			break;
		dp_list_remove(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
		bool sending = c->send_inflight || c->pend_len;
		if (sending && s->now_ms - c->last_progress_ms >= limit) {
			/* Its answers have not moved for a whole idle period: the
			 * client does not read. */
			STAT_INC(s, tcp_closed_slow);
			dp_list_push_tail(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
			dp_tcp_close(s, idx);
			continue;
		}
		if (c->inflight || sending) {
			/* Busy, not idle: look again later. */
			c->last_active_ms = s->now_ms;
			dp_list_push_tail(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
			continue;
		}
		STAT_INC(s, tcp_closed_idle);
		dp_list_push_tail(&s->tcp_idle, s->tcp, sizeof(dp_tcpc_t), IOFF, idx);
		dp_tcp_close(s, idx);
	}
}

void dp_tcp_stop_reading(dp_shard_t *s)
{
	for (uint32_t i = 0; i < s->tcp_hiwater; i++) {
		dp_tcpc_t *c = &s->tcp[i];
		if (!c->used || c->closing || !c->recv_armed)
			continue;
		struct io_uring_sqe *sqe = dp_sqe(s);
		io_uring_prep_cancel64(sqe, dp_ud(OP_TCP_RECV, i, c->gen), 0);
		io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
	}
}

bool dp_tcp_reads_done(dp_shard_t *s)
{
	for (uint32_t i = 0; i < s->tcp_hiwater; i++) {
		dp_tcpc_t *c = &s->tcp[i];
		if (c->used && !c->closing && c->recv_armed)
			return false;
	}
	return true;
}

bool dp_tcp_idle_output(dp_shard_t *s)
{
	for (uint32_t i = 0; i < s->tcp_hiwater; i++) {
		dp_tcpc_t *c = &s->tcp[i];
		if (c->used && !c->closing && (c->send_inflight || c->pend_len || c->dirty))
			return false;
	}
	return true;
}

void dp_tcp_close_all(dp_shard_t *s)
{
	for (uint32_t i = 0; i < s->tcp_hiwater; i++) {
		dp_tcpc_t *c = &s->tcp[i];
		if (c->used && c->fd >= 0) {
			shutdown(c->fd, SHUT_RDWR);
			close(c->fd);
			c->fd = -1;
		}
	}
}

void dp_tcp_free(dp_shard_t *s)
{
	if (!s->tcp)
		return;
	for (uint32_t i = 0; i < s->tcp_hiwater; i++) {
		drop_buf(s, &s->tcp[i].rbuf, &s->tcp[i].rcap);
		drop_buf(s, &s->tcp[i].out, &s->tcp[i].out_cap);
		drop_buf(s, &s->tcp[i].pend, &s->tcp[i].pend_cap);
	}
	free(s->tcp);
	s->tcp = NULL;
}
