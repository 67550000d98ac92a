/* engine.c - shard lifecycle, the io_uring loop, provided buffers, lists.
 *
 * One loop turn:
 *   1. flush upstream write batches (one SSL_write + one send per connection),
 *      and client TCP answers,
 *   2. submit every SQE made since the last turn and wait for at least one
 *      completion (under heavy load: several, see batch_want) or the next
 *      deadline, in one io_uring_enter,
 *   3. handle every completion that is there,
 *   4. expire deadlines: the shard's timer wheel (query deadlines, hedge
 *      times, upstream handshakes) every turn, idle connections every tick.
 * Query deadlines and hedge times do not share one delay (a reload changes
 * --timeout, the auto hedge delay moves every tick), so they live in a
 * timer wheel (timerwheel.h): O(1) arm and cancel, fired in deadline order,
 * and its earliest deadline bounds the loop's wait.
 */
#include "engine.h"
#include "handoff.h"
#include "query.h"
#include "ring.h"
#include "tcp.h"
#include "tls.h"
#include "udp.h"
#include "pool.h"
#include "upconn.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define DP_RING_ENTRIES 4096
#define DP_CQ_ENTRIES 16384
#define DP_BUF_COUNT 512 /* power of two */
#define DP_BUF_SIZE 4096
#define DP_TICK_MS 100

/* ---- SQEs and buffers ------------------------------------------------------ */

static int bufring_setup(dp_shard_t *s)
{
	s->br_count = DP_BUF_COUNT;
	s->br_size = DP_BUF_SIZE;
	s->br_ring_bytes = s->br_count * sizeof(struct io_uring_buf);
	s->br = mmap(NULL, s->br_ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
		     -1, 0);
	if (s->br == MAP_FAILED) {
		s->br = NULL;
		return -errno;
	}
	/* Buffer memory is touched only as the kernel fills buffers. */
	s->br_mem = mmap(NULL, (size_t)s->br_count * s->br_size, PROT_READ | PROT_WRITE,
			 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (s->br_mem == MAP_FAILED) {
		s->br_mem = NULL;
		return -errno;
	}
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)s->br,
		.ring_entries = s->br_count,
		.bgid = DP_BGID,
	};
	int rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (rc < 0)
		return rc;
	io_uring_buf_ring_init(s->br);
	for (uint32_t i = 0; i < s->br_count; i++)
		io_uring_buf_ring_add(s->br, s->br_mem + (size_t)i * s->br_size, s->br_size,
				      (unsigned short)i, io_uring_buf_ring_mask(s->br_count), (int)i);
	io_uring_buf_ring_advance(s->br, (int)s->br_count);
	return 0;
}

/* ---- sockets --------------------------------------------------------------- */

static int open_listener(const dp_sockaddr_t *a, int type, char *err, size_t errlen,
			 const char *text)
{
	int fd = socket(a->ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int e = errno;
		snprintf(err, errlen, "cannot open socket for %s: %s", text, strerror(e));
		return -e;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (a->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (type == SOCK_DGRAM) {
		/* A burst of small datagrams must not overflow the default
		 * ~208 KB receive buffer while the shard is busy: ask for 8 MB
		 * (FORCE works as root, past net.core.rmem_max). */
		int sz = 8 << 20;
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		sz = 4 << 20;
		if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
		int e = errno;
		snprintf(err, errlen, "cannot bind %s %s: %s", type == SOCK_DGRAM ? "UDP" : "TCP",
			 text, strerror(e));
		close(fd);
		return -e;
	}
	if (type == SOCK_STREAM && listen(fd, 4096) < 0) {
		int e = errno;
		snprintf(err, errlen, "cannot listen on %s: %s", text, strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

/* The shards share each port through SO_REUSEPORT, which would just as
 * quietly share it with another process of the same user (an old dotproxy
 * still running would take part of the traffic). First bind without it:
 * if that fails, someone else holds the port. */
static int check_port_free(const dp_sockaddr_t *a, int type, char *err, size_t errlen,
			   const char *text)
{
	int fd = socket(a->ss.ss_family, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0; /* open_listener reports it */
	int one = 1;
	if (type == SOCK_STREAM) /* connections in TIME_WAIT do not count */
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (a->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	int rc = 0;
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 && errno == EADDRINUSE) {
		snprintf(err, errlen,
			 "cannot bind %s %s: address already in use by another process "
			 "(an old dotproxy still running?)",
			 type == SOCK_DGRAM ? "UDP" : "TCP", text);
		rc = -EADDRINUSE;
	}
	close(fd);
	return rc;
}

/* A TCP listener per shard on each --listen-tls and --listen-https address
 * (dp_config_enc's order; port 0: the first one's port for every shard).
 * Returns 0 or -EADDRINUSE with err. */
static int bind_tls(const dp_config_t *cfg, int nshards, int (*tls)[DP_MAX_LISTEN], char *err,
		    size_t errlen)
{
	for (int l = 0; l < dp_config_nenc(cfg); l++) {
		const char *text;
		dp_sockaddr_t a = *dp_config_enc(cfg, l, &text);
		if (((struct sockaddr_in *)&a.ss)->sin_port != 0 &&
		    check_port_free(&a, SOCK_STREAM, err, errlen, text) < 0)
			return -EADDRINUSE;
		for (int sh = 0; sh < nshards; sh++) {
			int fd = open_listener(&a, SOCK_STREAM, err, errlen, text);
			if (fd < 0)
				return -EADDRINUSE;
			tls[sh][l] = fd;
			if (sh == 0 && ((struct sockaddr_in *)&a.ss)->sin_port == 0) {
				socklen_t len = a.len;
				getsockname(fd, (struct sockaddr *)&a.ss, &len);
			}
		}
	}
	return 0;
}

int dp_engine_bind_all(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN],
		       int (*tcp)[DP_MAX_LISTEN], int (*tls)[DP_MAX_LISTEN], char *err,
		       size_t errlen)
{
	for (int sh = 0; sh < nshards; sh++)
		for (int l = 0; l < DP_MAX_LISTEN; l++)
			udp[sh][l] = tcp[sh][l] = tls[sh][l] = -1;
	for (int l = 0; l < cfg->nlisten; l++) {
		dp_sockaddr_t a = cfg->listen[l];
		if (((struct sockaddr_in *)&a.ss)->sin_port != 0 &&
		    (check_port_free(&a, SOCK_DGRAM, err, errlen, cfg->listen_text[l]) < 0 ||
		     check_port_free(&a, SOCK_STREAM, err, errlen, cfg->listen_text[l]) < 0))
			goto fail;
		for (int sh = 0; sh < nshards; sh++) {
			int fd = open_listener(&a, SOCK_DGRAM, err, errlen, cfg->listen_text[l]);
			if (fd < 0)
				goto fail;
			udp[sh][l] = fd;
			/* Port 0: every shard and the TCP side share the port
			 * the kernel chose for the first socket. */
			if (sh == 0 && ((struct sockaddr_in *)&a.ss)->sin_port == 0) {
				socklen_t len = a.len;
				getsockname(fd, (struct sockaddr *)&a.ss, &len);
			}
			fd = open_listener(&a, SOCK_STREAM, err, errlen, cfg->listen_text[l]);
			if (fd < 0)
				goto fail;
			tcp[sh][l] = fd;
		}
	}
	if (bind_tls(cfg, nshards, tls, err, errlen) < 0)
		goto fail;
	return 0;
fail:
	for (int sh = 0; sh < nshards; sh++)
		for (int l = 0; l < DP_MAX_LISTEN; l++) {
			if (udp[sh][l] >= 0)
				close(udp[sh][l]);
			if (tcp[sh][l] >= 0)
				close(tcp[sh][l]);
			if (tls[sh][l] >= 0)
				close(tls[sh][l]);
			udp[sh][l] = tcp[sh][l] = tls[sh][l] = -1;
		}
	return -EADDRINUSE;
}

/* ---- the loop -------------------------------------------------------------- */

static void arm_wake(dp_shard_t *s)
{
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_read(sqe, s->wake_fd, &s->wake_buf, sizeof(s->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_WAKE, 0, 0));
}

/* Draining, first: stop accepting (cancel the accepts and close the TCP
 * listeners, so new connections go to another process on the port). Queries
 * keep being read for DRAIN_READ_GRACE_MS: a client's query sent just before
 * the SIGTERM may still be on its way through the loopback's softirq. */
#define DRAIN_READ_GRACE_MS 100

static void start_drain(dp_shard_t *s)
{
	s->draining = true;
	s->drain_deadline_ms = s->now_ms + s->cfg->drain_ms;
	s->drain_reads_stop_ms = s->now_ms + DRAIN_READ_GRACE_MS;
	for (int l = 0; l < s->nlisten; l++)
		dp_tcp_cancel_accept(s, l);
	for (int l = 0; l < s->nlisten_tls; l++)
		dp_tcp_cancel_accept(s, DP_LI_TLS | l);
	io_uring_submit(&s->ring);
	for (int l = 0; l < s->nlisten; l++)
		if (s->tcp_fd[l] >= 0) {
			close(s->tcp_fd[l]);
			s->tcp_fd[l] = -1;
		}
	for (int l = 0; l < s->nlisten_tls; l++)
		if (s->tls_fd[l] >= 0) {
			close(s->tls_fd[l]);
			s->tls_fd[l] = -1;
		}
	dp_info("draining", "shard=%d inflight=%u", s->id, s->q_used);
}

/* Then stop reading queries: cancel the UDP receives and the receives of
 * client connections (each reads what is already in its socket as it ends);
 * answers still go out. */
static void stop_reading(dp_shard_t *s)
{
	s->reads_stopped = true;
	for (int l = 0; l < s->nlisten; l++) {
		struct io_uring_sqe *sqe = dp_sqe(s);
		io_uring_prep_cancel64(sqe, dp_ud(OP_UDP_RECV, (uint32_t)l, 0), 0);
		io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
		s->udp_armed[l] = true; /* not re-armed from here on */
	}
	dp_tcp_stop_reading(s);
}

static bool drained(dp_shard_t *s)
{
	if (!s->reads_stopped)
		return false;
	/* Not before every receive has ended: the last one reads what the
	 * client sent before we stopped. */
	for (int l = 0; l < s->nlisten; l++)
		if (s->udp_live[l])
			return false;
	if (!dp_tcp_reads_done(s))
		return false;
	/* We hand off nothing more; the others may still hand to us, or owe
	 * us TCP answers (handoff.c). */
	if (!dp_handoff_quiet(s))
		return false;
	uint32_t client_queries = 0;
	for (uint32_t i = 0; i < s->q_hiwater && client_queries == 0; i++)
		if (s->q[i].state != Q_FREE && s->q[i].client.transport != T_NONE)
			client_queries++;
	return client_queries == 0 && dp_tcp_idle_output(s);
}

static void control(dp_shard_t *s)
{
	dp_config_t *nc = __atomic_exchange_n(&s->new_cfg, NULL, __ATOMIC_ACQUIRE);
	if (nc) {
		const dp_config_t *old = s->cfg;
		SSL_CTX *ctx = __atomic_exchange_n(&s->new_ctx, NULL, __ATOMIC_ACQUIRE);
		s->cfg = nc;
		if (ctx) {
			SSL_CTX_free(s->ssl_ctx); /* sessions in use keep their reference */
			s->ssl_ctx = ctx;
		}
		SSL_CTX *srv = __atomic_exchange_n(&s->new_srv_ctx, NULL, __ATOMIC_ACQUIRE);
		if (srv) {
			/* New handshakes take the new certificate; sessions
			 * established keep a reference to the old context. */
			SSL_CTX_free(s->srv_ctx);
			s->srv_ctx = srv;
		}
		if (nc->rate_limit != old->rate_limit) /* the same store from every shard */
			dp_rl_set_rate(s->rl, nc->rate_limit, nc->rate_limit);
		dp_pool_reconfigure(s, old);
		dp_tcp_reconfigure(s);
		__atomic_store_n(&s->cfg_gen, s->pending_gen, __ATOMIC_RELEASE);
	}
	if (__atomic_load_n(&s->drain, __ATOMIC_ACQUIRE) && !s->draining)
		start_drain(s);
}

static void handle_cqe(dp_shard_t *s, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	enum dp_op op = DP_UD_OP(ud);
	uint32_t idx = DP_UD_IDX(ud), gen = DP_UD_GEN(ud);
	switch (op) {
	case OP_UDP_RECV:
		dp_udp_on_recv(s, cqe, (int)idx);
		break;
	case OP_UDP_SEND:
		dp_udp_on_send(s, cqe, idx);
		break;
	case OP_TCP_ACCEPT:
		dp_tcp_on_accept(s, cqe, (int)idx);
		break;
	case OP_TCP_RECV:
		dp_tcp_on_recv(s, cqe, idx, gen);
		break;
	case OP_TCP_SEND:
		dp_tcp_on_send(s, cqe, idx, gen);
		break;
	case OP_TLS_SEND:
		dp_tcp_on_tls_send(s, cqe, idx, gen);
		break;
	case OP_UP_CONNECT:
	case OP_UP_RECV:
	case OP_UP_SEND:
		dp_upconn_on_cqe(s, op, idx, gen, cqe->res);
		break;
	case OP_WAKE:
		if (!s->stop)
			arm_wake(s);
		control(s);
		dp_handoff_on_cqe(s, cqe, op, idx);
		break;
	case OP_XSHARD:
	case OP_XSHARD_SENT:
		dp_handoff_on_cqe(s, cqe, op, idx);
		break;
	case OP_IGNORE:
	default:
		break;
	}
}

static uint64_t next_deadline(dp_shard_t *s)
{
	uint64_t d = s->now_ms + DP_TICK_MS;
	return DP_MIN(d, dp_tw_next(&s->timers));
}

/* Completion coalescing at high query rates (like a NIC's adaptive
 * interrupt moderation). A shard that keeps up with a heavy load still runs
 * out of work every few datagrams, and the sleep and wake cost as much as
 * the work (bench/RESULTS.md). Above DP_BATCH_MIN_QPMS queries per ms, ask
 * io_uring to wake us only once the queries of batch_us have gathered, at
 * most batch_us later: with DEFER_TASKRUN the kernel then holds back the
 * wakeups of receives (measured: context switches per cache hit at ~160k
 * qps went from 0.2 to 0.04).
 * Below the threshold nothing waits, so light and moderate loads keep their
 * latency. The rate is that of the last millisecond. */
#define DP_BATCH_MIN_QPMS 40
#define DP_BATCH_MAX 64

static unsigned batch_want(dp_shard_t *s, uint64_t now_ns)
{
	uint64_t dt = now_ns - s->rate_t0_ns;
	if (dt >= 1000000) {
		uint64_t q = s->stats.udp_queries + s->stats.tcp_queries; /* TLS ones included */
		s->q_per_ms = (uint32_t)((q - s->rate_q0) * 1000000 / dt);
		s->rate_q0 = q;
		s->rate_t0_ns = now_ns;
	}
	if (s->q_per_ms < DP_BATCH_MIN_QPMS || s->draining)
		return 1;
	uint64_t want = (uint64_t)s->q_per_ms * s->cfg->batch_us / 1000;
	return want < 2 ? 1 : (unsigned)DP_MIN(want, DP_BATCH_MAX);
}

/* Kernels since 6.15 count a task sleeping in io_uring_enter as iowait
 * while it has requests in flight (an idle shard always has: its multishot
 * receives and accepts), unless the wait asks not to be. liburing 2.3
 * predates both flags. */
#ifndef IORING_FEAT_NO_IOWAIT
#define IORING_FEAT_NO_IOWAIT (1U << 17)
#endif
#ifndef IORING_ENTER_NO_IOWAIT
#define IORING_ENTER_NO_IOWAIT (1U << 7)
#endif

/* Hand the SQEs prepared since the last call to the kernel's SQ ring, as
 * liburing's (static) __io_uring_flush_sq does; returns how many are
 * pending. No SQPOLL here, but a release store is right either way. */
static unsigned ring_flush_sq(struct io_uring *r)
{
	struct io_uring_sq *sq = &r->sq;
	unsigned tail = sq->sqe_tail;
	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		io_uring_smp_store_release(sq->ktail, tail);
	}
	return tail - IO_URING_READ_ONCE(*sq->khead);
}

/* io_uring_submit_and_wait_timeout() with IORING_ENTER_NO_IOWAIT: liburing
 * 2.3 has no way to pass an enter flag to its wait helpers, so the one
 * io_uring_enter of the loop turn is made here: submit what is queued, wait
 * for want completions or ts. Returns what the kernel returned (-ETIME when
 * the time ran out); only called when the kernel has the feature. */
static int ring_submit_wait(dp_shard_t *s, unsigned want, struct __kernel_timespec *ts)
{
	struct io_uring *r = &s->ring;
	unsigned submit = ring_flush_sq(r);
	if (submit == 0 && io_uring_cq_ready(r) >= want)
		return 0;
	struct io_uring_getevents_arg arg = {
		.sigmask = 0,
		.sigmask_sz = _NSIG / 8,
		.ts = (uint64_t)(uintptr_t)ts,
	};
	unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | IORING_ENTER_NO_IOWAIT;
	int fd = r->ring_fd;
	if (s->ring_fd_registered) {
		flags |= IORING_ENTER_REGISTERED_RING;
		fd = r->enter_ring_fd;
	}
	return io_uring_enter2((unsigned)fd, submit, want, flags, (sigset_t *)&arg, sizeof(arg));
}

static void run_loop(dp_shard_t *s)
{
	s->now_ms = dp_now_ms();
	uint64_t last_tick = s->now_ms;
	unsigned want = 1;
	while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED)) {
		dp_tcp_resume_pending(s); /* before the flushes: it makes queries and answers */
		dp_pool_end_turn(s);
		dp_tcp_flush(s);
		dp_handoff_wake(s);
		uint64_t dl = next_deadline(s);
		/* Messages left in a hand-off queue: look for completions, do
		 * not sleep. */
		uint64_t wait_ms = dl > s->now_ms && !s->xs_more && !dp_tcp_more(s) ? dl - s->now_ms : 0;
		struct __kernel_timespec ts = {
			.tv_sec = (long long)(wait_ms / 1000),
			.tv_nsec = (long long)(wait_ms % 1000) * 1000000,
		};
		if (want > 1 && wait_ms) {
			ts.tv_sec = 0;
			ts.tv_nsec = (long long)s->cfg->batch_us * 1000;
		}
		struct io_uring_cqe *cqe;
		int rc = s->ring_no_iowait ? ring_submit_wait(s, want, &ts)
					   : io_uring_submit_and_wait_timeout(&s->ring, &cqe, want, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
			dp_error("io_uring wait failed", "shard=%d err=\"%s\"", s->id,
				 dp_strerror(rc));
			break;
		}
		uint64_t now_ns = dp_now_ns();
		s->now_ms = now_ns / 1000000;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&s->ring, head, cqe)
		{
			handle_cqe(s, cqe);
			n++;
		}
		io_uring_cq_advance(&s->ring, n);
		/* queries other shards handed us, TCP answers they sent back */
		dp_handoff_drain(s);
		want = s->cfg->batch_us ? batch_want(s, now_ns) : 1;
		/* query deadlines (SERVFAIL) and hedges, in deadline order */
		dp_tw_run(&s->timers, s->now_ms, s);
		if (s->now_ms - last_tick >= DP_TICK_MS) {
			last_tick = s->now_ms;
			if (s->draining && !s->reads_stopped && s->now_ms >= s->drain_reads_stop_ms)
				stop_reading(s);
			if (s->draining && (drained(s) || s->now_ms >= s->drain_deadline_ms)) {
				dp_info("drained", "shard=%d unanswered=%u", s->id, s->q_used);
				break;
			}
			dp_pool_publish(s);
			dp_pool_expire(s);
			dp_tcp_expire(s);
			dp_query_publish_stats(s);
			for (int l = 0; l < s->nlisten && !s->draining; l++) {
				if (!s->udp_armed[l])
					dp_udp_arm(s, l);
				if (!s->tcp_armed[l])
					dp_tcp_arm_accept(s, l);
			}
			for (int l = 0; l < s->nlisten_tls && !s->draining; l++)
				if (!s->tls_armed[l])
					dp_tcp_arm_accept(s, DP_LI_TLS | l);
		}
	}
}

static int ring_setup(dp_shard_t *s)
{
	/* Newest first; the kernel refuses flags it does not know. */
	const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE,
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_CQSIZE,
		IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE,
		IORING_SETUP_CQSIZE,
	};
	int rc = -EINVAL;
	for (size_t i = 0; i < DP_ARRAY_LEN(tries); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = tries[i];
		p.cq_entries = DP_CQ_ENTRIES;
		rc = io_uring_queue_init_params(DP_RING_ENTRIES, &s->ring, &p);
		if (rc == 0) {
			dp_debug("ring ready", "shard=%d flags=0x%x", s->id, p.flags);
			break;
		}
	}
	if (rc < 0)
		return rc;
	s->ring_ok = true;
	/* optional: saves an fd lookup per enter (returns 1 when done) */
	s->ring_fd_registered = io_uring_register_ring_fd(&s->ring) == 1;
	s->ring_no_iowait = (s->ring.features & IORING_FEAT_NO_IOWAIT) != 0;
	dp_debug("ring features", "shard=%d features=0x%x no_iowait=%d registered_fd=%d", s->id,
		 s->ring.features, s->ring_no_iowait, s->ring_fd_registered);
	return 0;
}

static void pin_to_cpu(dp_shard_t *s)
{
	cpu_set_t online;
	if (sched_getaffinity(0, sizeof(online), &online) != 0)
		return;
	int n = CPU_COUNT(&online), want = s->id % (n ? n : 1), seen = 0;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &online))
			continue;
		if (seen++ == want) {
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(c, &one);
			pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
			return;
		}
	}
}

static void shard_teardown(dp_shard_t *s)
{
	dp_query_fail_all(s);
	if (s->ring_ok)
		dp_handoff_wake(s); /* peers we queued answers for (submitted below) */
	dp_tcp_close_all(s);
	dp_upconn_close_all(s);
	if (s->ring_ok) {
		/* Let cancellations finish before memory they point at goes. */
		io_uring_submit(&s->ring);
		for (int i = 0; i < 50; i++) {
			struct io_uring_cqe *cqe;
			struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = 10000000 };
			if (io_uring_wait_cqe_timeout(&s->ring, &cqe, &ts) < 0)
				break;
			unsigned head, n = 0;
			io_uring_for_each_cqe(&s->ring, head, cqe) n++;
			io_uring_cq_advance(&s->ring, n);
		}
		io_uring_queue_exit(&s->ring);
		s->ring_ok = false;
	}
	for (int l = 0; l < s->nlisten; l++) {
		if (s->udp_fd[l] >= 0)
			close(s->udp_fd[l]);
		if (s->tcp_fd[l] >= 0)
			close(s->tcp_fd[l]);
		s->udp_fd[l] = s->tcp_fd[l] = -1;
	}
	for (int l = 0; l < s->nlisten_tls; l++) {
		if (s->tls_fd[l] >= 0)
			close(s->tls_fd[l]);
		s->tls_fd[l] = -1;
	}
	dp_pool_free(s);
	dp_query_table_free(s);
	dp_tcp_free(s);
	dp_udp_free(s);
	if (s->br_mem)
		munmap(s->br_mem, (size_t)s->br_count * s->br_size);
	if (s->br)
		munmap(s->br, s->br_ring_bytes);
	s->br = NULL;
	s->br_mem = NULL;
	if (s->ssl_ctx)
		SSL_CTX_free(s->ssl_ctx);
	s->ssl_ctx = NULL;
	SSL_CTX_free(s->srv_ctx); /* accepts NULL */
	SSL_CTX_free(__atomic_exchange_n(&s->new_srv_ctx, NULL, __ATOMIC_ACQUIRE));
	s->srv_ctx = NULL;
}

/* The pool's answers and failures go to the query table: the one call up
 * from the pool, wired here. */
static const dp_upstream_sink_t query_sink = {
	.answer = dp_query_answer,
	.fail = dp_query_fail,
	.probe = dp_query_probe,
};

static void *shard_main(void *arg)
{
	dp_shard_t *s = arg;
	int rc;
	if (!s->cfg->no_pin)
		pin_to_cpu(s);
	if ((rc = ring_setup(s)) < 0) {
		snprintf(s->init_msg, sizeof(s->init_msg), "io_uring setup failed: %s%s",
			 dp_strerror(rc),
			 rc == -ENOMEM ? " (the kernel counts about 0.8 MB of ring memory per "
					 "shard against RLIMIT_MEMLOCK, shared by every process "
					 "of the same user: raise it, or use fewer shards)"
				       : "");
		goto fail;
	}
	if ((rc = bufring_setup(s)) < 0) {
		snprintf(s->init_msg, sizeof(s->init_msg), "provided-buffer ring setup failed: %s",
			 dp_strerror(rc));
		goto fail;
	}
	if (!s->ssl_ctx) /* normally made by main, before privileges are dropped */
		s->ssl_ctx = dp_tls_client_ctx(s->cfg, s->init_msg, sizeof(s->init_msg));
	if (!s->ssl_ctx) {
		rc = DP_E_TLS;
		goto fail;
	}
	if ((rc = dp_udp_init(s)) < 0)
		goto fail;
	dp_tw_init(&s->timers, dp_now_ms());
	if ((rc = dp_query_table_init(s)) < 0 || (rc = dp_pool_init(s, &query_sink)) < 0) {
		snprintf(s->init_msg, sizeof(s->init_msg), "table setup failed: %s", dp_strerror(rc));
		goto fail;
	}
	if ((rc = dp_tcp_init(s)) < 0)
		goto fail;
	dp_handoff_init(s, dp_query_from_shard);
	for (int l = 0; l < s->nlisten; l++) {
		dp_udp_arm(s, l);
		dp_tcp_arm_accept(s, l);
	}
	for (int l = 0; l < s->nlisten_tls; l++)
		dp_tcp_arm_accept(s, DP_LI_TLS | l);
	arm_wake(s);
	__atomic_store_n(&s->init_err, 1, __ATOMIC_RELEASE); /* running */
	run_loop(s);
	shard_teardown(s);
	__atomic_store_n(&s->exited, 1, __ATOMIC_RELEASE);
	return NULL;
fail:
	if (!s->init_msg[0])
		snprintf(s->init_msg, sizeof(s->init_msg), "%s", dp_strerror(rc));
	shard_teardown(s);
	__atomic_store_n(&s->init_err, rc < 0 ? rc : -1, __ATOMIC_RELEASE);
	return NULL;
}

int dp_shard_start(dp_shard_t *s)
{
	s->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (s->wake_fd < 0)
		return -errno;
	s->init_err = 0;
	int rc = pthread_create(&s->thread, NULL, shard_main, s);
	if (rc != 0)
		return -rc;
	/* Wait until the shard is running or has failed. */
	for (int i = 0; i < 10000; i++) {
		int st = __atomic_load_n(&s->init_err, __ATOMIC_ACQUIRE);
		if (st == 1)
			return 0;
		if (st < 0) {
			pthread_join(s->thread, NULL);
			return st;
		}
		usleep(1000);
	}
	return -ETIMEDOUT;
}

void dp_shard_stop(dp_shard_t *s)
{
	__atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
	uint64_t one = 1;
	ssize_t w = write(s->wake_fd, &one, sizeof(one));
	(void)w;
}

static void wake(dp_shard_t *s)
{
	uint64_t one = 1;
	ssize_t w = write(s->wake_fd, &one, sizeof(one));
	(void)w;
}

void dp_shard_drain(dp_shard_t *s)
{
	__atomic_store_n(&s->drain, 1, __ATOMIC_RELEASE);
	wake(s);
}

void dp_shard_reload(dp_shard_t *s, dp_config_t *cfg, SSL_CTX *ctx, SSL_CTX *srv_ctx,
		     uint32_t gen)
{
	s->pending_gen = gen;
	__atomic_store_n(&s->new_ctx, ctx, __ATOMIC_RELEASE);
	SSL_CTX_free(__atomic_exchange_n(&s->new_srv_ctx, srv_ctx, __ATOMIC_RELEASE));
	__atomic_store_n(&s->new_cfg, cfg, __ATOMIC_RELEASE);
	wake(s);
}

void dp_shard_join(dp_shard_t *s)
{
	pthread_join(s->thread, NULL);
	close(s->wake_fd);
}
