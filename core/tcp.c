/* tcp.c - the TCP frontend's io_uring transport: multishot accept, a
 * multishot recv per connection over the provided-buffer ring, sends, and
 * cancellation. The connection state machine (framing, buffers, answer
 * queue, idle timeout, eviction, drain, slot lifetime) is tcpconn.c; this
 * file turns its requests into SQEs and its completions back into calls,
 * and hands complete queries to the query layer, each with its client
 * (client-t.h: the connection's slot, generation and address); the query
 * layer answers and counts queries in flight through tcp_ops
 * (s->fe[T_TCP]), which the hand-off uses too for the answers of our
 * clients' queries resolved on another shard.
 *
 * Backpressure is tcpconn's (tcpconn.h): this file gives it the
 * per-connection cap (--max-inflight-per-conn), the query layer's refusals
 * (DP_E_FULL: the client address is at its fair share, clientshare.h) and
 * the count of query slots freed, and runs its resumptions once per loop
 * turn (dp_tcp_resume_pending). It also keeps each connection's client
 * address as the fair share counts it (s->tcp_peer).
 *
 * Completions carry op | slot | generation in user_data (engine.h): a late
 * completion for a reused slot is recognised and dropped by tcpconn.
 */
#include "tcp.h"
#include "query.h"
#include "ring.h"
#include "log.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>


/* ---- the transport below tcpconn ------------------------------------------ */

static void io_recv(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	dp_shard_t *s = ctx;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = DP_BGID;
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_RECV, idx, gen));
}

static void io_recv_cancel(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	dp_shard_t *s = ctx;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_cancel64(sqe, dp_ud(OP_TCP_RECV, idx, gen), 0);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
}

static void io_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf, size_t len)
{
	dp_shard_t *s = ctx;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_SEND, idx, gen));
}

static void io_shutdown(void *ctx, int fd, bool cancel)
{
	dp_shard_t *s = ctx;
	shutdown(fd, SHUT_RDWR);
	if (!cancel)
		return;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
}

static long io_read_now(void *ctx, int fd, uint8_t *buf, size_t cap)
{
	ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);
	return n < 0 ? -errno : (long)n;
}

static long io_pending(void *ctx, int fd)
{
	int n = 0;
	return ioctl(fd, FIONREAD, &n) == 0 ? n : 0;
}

static long io_unsent(void *ctx, int fd)
{
	int n = 0;
	return ioctl(fd, SIOCOUTQ, &n) == 0 ? n : 0;
}

static void io_close(void *ctx, int fd)
{
	if (fd >= 0)
		close(fd);
}

/* One query from connection idx/gen: its client is the connection. */
static int up_frame(void *ctx, uint32_t idx, uint32_t gen, uint8_t li, uint8_t *msg, size_t len)
{
	dp_shard_t *s = ctx;
	dp_client_t c;
	c.tcp.key = s->tcp_peer[idx];
	c.tcp.idx = idx;
	c.tcp.gen = gen;
	c.tcp.origin = (uint8_t)s->id;
	c.arrive_ns = 0;
	c.transport = T_TCP;
	c.li = li;
	return dp_query_from_client(s, &c, msg, len);
}

static uint32_t up_freed(void *ctx)
{
	dp_shard_t *s = ctx;
	uint32_t n = s->q_freed;
	s->q_freed = 0;
	return n;
}

static void up_stat(void *ctx, int which, uint64_t v)
{
	dp_shard_t *s = ctx;
	switch (which) {
	case DP_TCPC_QUERY: STAT_INC(s, tcp_queries); break;
	case DP_TCPC_DROPPED: STAT_INC(s, dropped); break;
	case DP_TCPC_ACCEPTED: STAT_INC(s, tcp_accepted); break;
	case DP_TCPC_REFUSED: STAT_INC(s, tcp_refused); break;
	case DP_TCPC_EVICTED: STAT_INC(s, tcp_evicted); break;
	case DP_TCPC_CLOSED_IDLE: STAT_INC(s, tcp_closed_idle); break;
	case DP_TCPC_CLOSED_SLOW: STAT_INC(s, tcp_closed_slow); break;
	case DP_TCPC_CLOSED_MEMORY: STAT_INC(s, tcp_closed_memory); break;
	case DP_TCPC_ANSWER_DROPPED: STAT_INC(s, tcp_answers_dropped); break;
	case DP_TCPC_NOBUFS: STAT_INC(s, bufring_empty); break;
	case DP_TCPC_PAUSED: STAT_INC(s, tcp_paused); break;
	case DP_TCPC_OPEN: STAT_SET(s, tcp_open, v); break;
	default: break;
	}
}

static const dp_tcpconn_io_t tcp_io = {
	/* operations on the socket, through the ring */
	.recv = io_recv,
	.recv_cancel = io_recv_cancel,
	.send = io_send,
	.shutdown = io_shutdown,
	/* what the kernel holds for it, asked at once; the close */
	.read_now = io_read_now,
	.pending = io_pending,
	.unsent = io_unsent,
	.close = io_close,
	/* up to the query layer and the counters */
	.frame = up_frame,
	.freed = up_freed,
	.stat = up_stat,
};

/* ---- the query layer's way to a TCP client (client-t.h) -------------------- */

/* Queue an answer on the connection; dropped when it is gone or closing
 * (tcpconn compares the generation). */
static void fe_answer(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len)
{
	if (len)
		dp_tcpconn_answer(&s->tcp, c->tcp.idx, c->tcp.gen, msg, len);
}

static void fe_query_begin(dp_shard_t *s, const dp_client_t *c)
{
	dp_tcpconn_query_begin(&s->tcp, c->tcp.idx, c->tcp.gen);
}

static void fe_query_end(dp_shard_t *s, const dp_client_t *c)
{
	dp_tcpconn_query_end(&s->tcp, c->tcp.idx, c->tcp.gen);
}

static const dp_frontend_ops_t tcp_ops = {
	.answer = fe_answer,
	.query_begin = fe_query_begin,
	.query_end = fe_query_end,
};

/* ---- the shard's side ------------------------------------------------------ */

int dp_tcp_init(dp_shard_t *s)
{
	const dp_config_t *cfg = s->cfg;
	uint32_t cap = cfg->max_tcp_clients / (uint32_t)cfg->threads +
		       (cfg->max_tcp_clients % (uint32_t)cfg->threads > (uint32_t)s->id);
	if (cap == 0)
		cap = 1;
	/* Evicted connections hold their slot until their cancellations
	 * complete (the next turn): a reserve lets a burst of newcomers in. */
	uint32_t reserve = cap / 4 + 64;
	s->tcp_peer = calloc((size_t)cap + reserve, sizeof(*s->tcp_peer));
	if (!s->tcp_peer)
		return -ENOMEM;
	int rc = dp_tcpconn_init(&s->tcp, cap, reserve, &tcp_io, s, &s->now_ms);
	s->tcp.inflight_max = cfg->max_inflight_per_conn;
	s->fe[T_TCP] = &tcp_ops;
	return rc;
}

void dp_tcp_reconfigure(dp_shard_t *s)
{
	s->tcp.inflight_max = s->cfg->max_inflight_per_conn;
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
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* The address is set before the first receive can complete. */
	int idx = dp_tcpconn_accept(&s->tcp, fd, (uint8_t)li);
	if (idx < 0) {
		close(fd);
		return;
	}
	dp_cshare_key_of((const struct sockaddr *)&peer, &s->tcp_peer[idx]);
}

void dp_tcp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	uint8_t *data = NULL;
	uint16_t bid = 0;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		data = dp_bufring_data(s, bid);
	}
	dp_tcpconn_on_recv(&s->tcp, idx, gen, cqe->res, cqe->flags & IORING_CQE_F_MORE, data);
	if (data)
		dp_bufring_recycle(s, bid);
}

void dp_tcp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	dp_tcpconn_on_send(&s->tcp, idx, gen, cqe->res);
}

void dp_tcp_resume_pending(dp_shard_t *s)
{
	dp_tcpconn_resume_pending(&s->tcp);
}

void dp_tcp_flush(dp_shard_t *s)
{
	dp_tcpconn_flush(&s->tcp);
}

void dp_tcp_expire(dp_shard_t *s)
{
	dp_tcpconn_expire(&s->tcp, s->cfg->tcp_idle_ms);
}

void dp_tcp_close(dp_shard_t *s, uint32_t idx)
{
	dp_tcpconn_close(&s->tcp, idx);
}

void dp_tcp_stop_reading(dp_shard_t *s)
{
	dp_tcpconn_stop_reading(&s->tcp);
}

bool dp_tcp_reads_done(dp_shard_t *s)
{
	return dp_tcpconn_reads_done(&s->tcp);
}

bool dp_tcp_idle_output(dp_shard_t *s)
{
	return dp_tcpconn_idle_output(&s->tcp);
}

void dp_tcp_close_all(dp_shard_t *s)
{
	dp_tcpconn_close_all(&s->tcp);
}

void dp_tcp_free(dp_shard_t *s)
{
	dp_tcpconn_free(&s->tcp);
	free(s->tcp_peer);
	s->tcp_peer = NULL;
}
