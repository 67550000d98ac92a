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
 * DNS-over-TLS clients (--listen-tls) are connections of the same table
 * (one --max-tcp-clients for both) accepted on the TLS listeners; their
 * listen index carries DP_LI_TLS. For them the transport goes through
 * tlsconn.c, which decrypts what the receives bring before tcpconn sees it
 * and encrypts what tcpconn sends (OP_TLS_SEND carries the ciphertext);
 * receives, cancels and shutdowns are the same. Their queries are T_TCP
 * clients like any other (answered through tcp_ops, handed to their home
 * shard), told apart by dp_client_encrypted; over --rate-limit they get
 * REFUSED here, in an answer like any other.
 *
 * Completions carry op | slot | generation in user_data (engine.h): a late
 * completion for a reused slot is recognised and dropped by tcpconn.
 */
#include "tcp.h"
#include "edns.h"
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

/* Slot idx (in use) is a TLS connection. The tcpconn slot, which the
 * caller touches anyway, says so first: a plain TCP operation does not read
 * the TLS table's line. */
static inline bool is_tls(const dp_shard_t *s, uint32_t idx)
{
	return (s->tcp.c[idx].listen_idx & DP_LI_TLS) && dp_tlsconn_is(&s->tls, idx);
}

static void io_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf, size_t len)
{
	dp_shard_t *s = ctx;
	if (is_tls(s, idx)) {
		dp_tlsconn_send(&s->tls, idx, gen, buf, len);
		return;
	}
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_SEND, idx, gen));
}

static void io_shutdown(void *ctx, uint32_t idx, int fd, bool cancel)
{
	dp_shard_t *s = ctx;
	if (is_tls(s, idx))
		dp_tlsconn_goodbye(&s->tls, idx, fd);
	shutdown(fd, SHUT_RDWR);
	if (!cancel)
		return;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
}

static void sock_write_now(void *ctx, int fd, const uint8_t *buf, size_t len)
{
	(void)ctx;
	(void)!send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static long sock_read_now(void *ctx, int fd, uint8_t *buf, size_t cap)
{
	ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);
	return n < 0 ? -errno : (long)n;
}

static long io_read_now(void *ctx, uint32_t idx, int fd, uint8_t *buf, size_t cap)
{
	dp_shard_t *s = ctx;
	if (is_tls(s, idx))
		return dp_tlsconn_read_now(&s->tls, idx, fd, buf, cap);
	return sock_read_now(ctx, fd, buf, cap);
}

static long io_pending(void *ctx, uint32_t idx, int fd)
{
	int n = 0;
	return ioctl(fd, FIONREAD, &n) == 0 ? n : 0;
}

/* In the socket's send queue, and (TLS) ciphertext not handed to it yet. */
static long io_unsent(void *ctx, uint32_t idx, int fd)
{
	dp_shard_t *s = ctx;
	int n = 0;
	long q = is_tls(s, idx) ? (long)dp_tlsconn_unsent(&s->tls, idx) : 0;
	return (ioctl(fd, SIOCOUTQ, &n) == 0 ? n : 0) + q;
}

static void io_close(void *ctx, uint32_t idx, int fd)
{
	dp_shard_t *s = ctx;
	if (s->tcp.c[idx].listen_idx & DP_LI_TLS)
		dp_tlsconn_drop(&s->tls, idx);
	if (fd >= 0)
		close(fd);
}

/* A TLS client over --rate-limit: REFUSED, in an answer like any other
 * (RFC 7858 clients keep their connection; dropping a query would only
 * make them wait for it). Returns true when it was refused (or, not a
 * query we can answer, dropped). */
static bool tls_limited(dp_shard_t *s, uint32_t idx, uint32_t gen, const uint8_t *msg,
			size_t len)
{
	if (!s->rl || !__atomic_load_n(&s->rl->rate, __ATOMIC_RELAXED) ||
	    dp_rl_check(s->rl, (const struct sockaddr *)&s->tls_peer[idx], s->now_ms) ==
		    DP_RL_PASS)
		return false;
	STAT_INC(s, tls_ratelimited);
	dp_dns_view_t v;
	int rc = dp_dns_parse_query(msg, len, &v);
	if (rc == DP_E_MALFORMED || rc == DP_E_RESPONSE) {
		STAT_INC(s, dropped);
		return true;
	}
	uint8_t out[1024];
	int n = dp_dns_build_error(msg, &v, DP_DNS_RCODE_REFUSED, s->cfg->max_udp_size, out, 512);
	int keepalive = (s->tcp.c[idx].listen_idx & DP_LI_HTTPS)
				? -1 /* DNS-over-TCP's option, not HTTPS's (query.c fit_stream) */
				: (int)DP_MIN(s->cfg->tcp_idle_ms / 100, 65535u);
	if (n > 0 && v.has_opt)
		n = (int)dp_edns_stream_answer(out, (size_t)n, sizeof(out), (size_t)n - 11,
					       keepalive, DP_EDNS_ANSWER_BLOCK);
	if (n > 0)
		dp_tcpconn_answer(&s->tcp, idx, gen, out, (size_t)n);
	return true;
}

/* One query from connection idx/gen: its client is the connection. */
static int up_frame(void *ctx, uint32_t idx, uint32_t gen, uint8_t li, uint8_t *msg, size_t len)
{
	dp_shard_t *s = ctx;
	if ((li & DP_LI_TLS) && tls_limited(s, idx, gen, msg, len))
		return 0;
	dp_client_t c;
	c.tcp.key = s->tcp_peer[idx];
	c.tcp.idx = idx;
	c.tcp.gen = gen;
	c.tcp.origin = (uint8_t)s->id;
	c.arrive_ns = 0;
	c.transport = T_TCP;
	c.li = li;
	int rc = dp_query_from_client(s, &c, msg, len);
	if (rc == 0 && (li & (DP_LI_TLS | DP_LI_HTTPS)) == DP_LI_TLS)
		STAT_INC(s, tls_queries); /* (DNS-over-HTTPS ones: https_requests) */
	return rc;
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

/* ---- the transport below tlsconn (TLS clients) ------------------------------ */

static void tls_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf,
		     size_t len)
{
	dp_shard_t *s = ctx;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TLS_SEND, idx, gen));
}

static void doh_stat(void *ctx, int which)
{
	dp_shard_t *s = ctx;
	switch (which) {
	case DP_DOH_REQUEST: STAT_INC(s, https_requests); break;
	case DP_DOH_HTTP_ERROR: STAT_INC(s, https_errors); break;
	case DP_DOH_RESET: STAT_INC(s, h2_resets); break;
	case DP_DOH_GOAWAY: STAT_INC(s, h2_goaway); break;
	default: break;
	}
}

static const char *doh_path(void *ctx)
{
	const dp_shard_t *s = ctx;
	return s->cfg->listen_https_path;
}

static void tls_stat(void *ctx, int which)
{
	dp_shard_t *s = ctx;
	switch (which) {
	case DP_TLSC_HANDSHAKE: STAT_INC(s, tls_handshakes); break;
	case DP_TLSC_RESUMED: STAT_INC(s, tls_resumed); break;
	case DP_TLSC_HS_FAILED: STAT_INC(s, tls_handshake_failures); break;
	case DP_TLSC_HS_TIMEOUT: STAT_INC(s, tls_handshake_timeouts); break;
	case DP_TLSC_HS_DEFERRED: STAT_INC(s, tls_handshakes_deferred); break;
	case DP_TLSC_ERROR: STAT_INC(s, tls_errors); break;
	case DP_TLSC_DOH_SLOW: STAT_INC(s, https_slow_closed); break;
	default: break;
	}
}

static const dp_tlsconn_io_t tls_io = {
	.send = tls_send,
	.read_now = sock_read_now,
	.write_now = sock_write_now,
	.stat = tls_stat,
	.doh_stat = doh_stat,
	.doh_path = doh_path,
};

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
	/* An idle DNS-over-HTTPS client holds its HTTP/2 session (charged to
	 * the budget): the budget lets the cap's worth of them be idle, so
	 * the cap and its eviction bound them, not a budget refusal. */
	if (cfg->nlisten_https)
		s->tcp.buf_max = DP_MAX(s->tcp.buf_max, (size_t)cap * DP_DOH_IDLE_COST);
	s->fe[T_TCP] = &tcp_ops;
	if (rc < 0 || !s->nlisten_tls)
		return rc;
	s->tls_peer = calloc((size_t)cap + reserve, sizeof(*s->tls_peer));
	if (!s->tls_peer)
		return -ENOMEM;
	return dp_tlsconn_init(&s->tls, &s->tcp, &tls_io, s);
}

void dp_tcp_reconfigure(dp_shard_t *s)
{
	s->tcp.inflight_max = s->cfg->max_inflight_per_conn;
}

/* Listener li's socket and whether its accept is armed (li with DP_LI_TLS:
 * an encrypted listener). */
static int *listen_fd(dp_shard_t *s, int li)
{
	return li & DP_LI_TLS ? &s->tls_fd[li & DP_LI_INDEX] : &s->tcp_fd[li];
}

static bool *listen_armed(dp_shard_t *s, int li)
{
	return li & DP_LI_TLS ? &s->tls_armed[li & DP_LI_INDEX] : &s->tcp_armed[li];
}

/* The listen index an accept on li carries: an HTTPS listener's
 * connections carry DP_LI_HTTPS from their accept on (tlsconn, metrics). */
static int accept_li(const dp_shard_t *s, int li)
{
	if ((li & DP_LI_TLS) && dp_config_enc_https(s->cfg, li & DP_LI_INDEX))
		li |= DP_LI_HTTPS;
	return li;
}

void dp_tcp_cancel_accept(dp_shard_t *s, int li)
{
	if (*listen_fd(s, li) < 0)
		return;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_cancel64(sqe, dp_ud(OP_TCP_ACCEPT, (uint32_t)accept_li(s, li), 0), 0);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
	*listen_armed(s, li) = true; /* never armed again */
}

void dp_tcp_arm_accept(dp_shard_t *s, int li)
{
	int fd = *listen_fd(s, li);
	if (fd < 0 || s->stop)
		return;
	li = accept_li(s, li);
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_TCP_ACCEPT, (uint32_t)li, 0));
	*listen_armed(s, li) = true;
}

/* A TLS client accepted into slot idx from listener li: its session, its
 * address. */
static void tls_accepted(dp_shard_t *s, int idx, int li, const struct sockaddr_storage *peer)
{
	uint32_t gen = s->tcp.c[idx].gen;
	bool https = li & DP_LI_HTTPS;
	if (https)
		STAT_INC(s, https_accepted);
	else
		STAT_INC(s, tls_accepted);
	memset(&s->tls_peer[idx], 0, sizeof(s->tls_peer[idx]));
	memcpy(&s->tls_peer[idx], peer,
	       peer->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	if (!s->srv_ctx ||
	    dp_tlsconn_open(&s->tls, (uint32_t)idx, gen, s->srv_ctx, s->now_ms, https) < 0) {
		STAT_INC(s, tls_errors);
		dp_tcpconn_close(&s->tcp, (uint32_t)idx);
	}
}

void dp_tcp_on_accept(dp_shard_t *s, struct io_uring_cqe *cqe, int li)
{
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		*listen_armed(s, li) = false;
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
	if (li & DP_LI_TLS)
		tls_accepted(s, idx, li, &peer);
}

void dp_tcp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	uint8_t *data = NULL;
	uint16_t bid = 0;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		data = dp_bufring_data(s, bid);
	}
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (dp_tcpconn_get(&s->tcp, idx, gen) && is_tls(s, idx))
		dp_tlsconn_on_recv(&s->tls, idx, gen, cqe->res, more, data);
	else
		dp_tcpconn_on_recv(&s->tcp, idx, gen, cqe->res, more, data);
	if (data)
		dp_bufring_recycle(s, bid);
}

void dp_tcp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	dp_tcpconn_on_send(&s->tcp, idx, gen, cqe->res);
}

void dp_tcp_on_tls_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen)
{
	dp_tlsconn_on_send(&s->tls, idx, gen, cqe->res);
}

void dp_tcp_resume_pending(dp_shard_t *s)
{
	if (s->tls.c)
		dp_tlsconn_run(&s->tls);
	dp_tcpconn_resume_pending(&s->tcp);
}

bool dp_tcp_more(const dp_shard_t *s)
{
	return dp_tlsconn_more(&s->tls);
}

void dp_tcp_flush(dp_shard_t *s)
{
	dp_tcpconn_flush(&s->tcp);
}

void dp_tcp_expire(dp_shard_t *s)
{
	dp_tcpconn_expire(&s->tcp, s->cfg->tcp_idle_ms);
	if (s->tls.c)
		dp_tlsconn_expire(&s->tls, s->now_ms, s->cfg->listen_tls_handshake_ms);
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
	s->tls.teardown = true; /* sends may still read their buffers */
	dp_tcpconn_close_all(&s->tcp);
}

void dp_tcp_free(dp_shard_t *s)
{
	dp_tlsconn_free(&s->tls);
	dp_tcpconn_free(&s->tcp);
	free(s->tcp_peer);
	free(s->tls_peer);
	s->tcp_peer = NULL;
	s->tls_peer = NULL;
}
