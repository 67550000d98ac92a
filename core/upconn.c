/* upconn.c - connections to the upstreams, one table per shard: DNS-over-TLS
 * (RFC 7858), plain DNS over TCP (RFC 7766), and plain DNS over connected
 * UDP sockets, each with a port of its own.
 *
 * Owns: the shard's connection slots (per upstream a reload could add,
 * --upstream-conns stream slots and DP_UPCONN_UDP_SOCKS UDP ones), per open
 * connection its socket, its SSL session (TLS only: over tls.c's BIO on
 * the connection's own buffers), its ID map, and its receive, plaintext,
 * batch and send buffers; the newest resumable session per upstream. Which query goes on which connection, health and failover
 * are the pool's (pool.c), told through dp_upconn_ops_t; I/O goes through
 * dp_upconn_io_t (io_uring here, a fake in the unit tests).
 *
 * Write path: a query is framed into its connection's batch; at the end of
 * the loop turn every connection with a batch does ONE SSL_write (so queries
 * that arrived in the same turn share TLS records) and ONE send of the
 * ciphertext (TCP: of the batch itself; UDP: a datagram per query, sent
 * at once). Only one send is in flight per connection (dp_sendq_t);
 * ciphertext made meanwhile is appended by the BIO to the buffer behind it
 * and leaves with the next send.
 *
 * Read path: a receive lands in the connection's receive buffer, which the
 * BIO hands to TLS; SSL_read drains every complete record into the
 * plaintext buffer, where each framed DNS message goes up to the pool
 * (ops->message) to be matched by ID and question. Plain TCP receives into
 * the plaintext buffer directly; a UDP receive is one message. A connected
 * UDP socket takes datagrams from its upstream's address and port only
 * (the kernel drops the others).
 *
 * Bounds: a connection holds at most DP_UPCONN_WBUF_MAX octets the upstream
 * has not taken yet (queries framed in the batch and ciphertext behind the
 * send in flight); a full connection takes no query.
 *
 * Lifetime: every operation carries (slot, generation) in its user_data. A
 * connection that fails is shut down and its operations cancelled; the slot
 * is finalized (fd closed, generation bumped, ops->down) only after its
 * last completion, so buffers the kernel still reads or writes stay put,
 * and a completion of an older generation is recognised and dropped.
 */
#include "upconn.h"
#include "ring.h"
#include "tls.h"
#include "log.h"
#include "tcpframe.h"
#include "edns.h"
#include "siphash.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RX_SIZE (16 * 1024 + 512) /* a TLS record and then some */
#define PLAIN_CAP (65537 + 16 * 1024) /* a framed message and a record */

/* ---- io_uring transport ---------------------------------------------------- */

static int uring_open(dp_shard_t *s, int family, int type)
{
	int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	if (type == SOCK_STREAM)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static void uring_connect(dp_shard_t *s, uint32_t ci, uint32_t gen, int fd,
			  const dp_sockaddr_t *to)
{
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&to->ss, to->len);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_CONNECT, ci, gen));
}

static void uring_recv(dp_shard_t *s, uint32_t ci, uint32_t gen, int fd, uint8_t *buf,
		       size_t len)
{
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_RECV, ci, gen));
}

static void uring_send(dp_shard_t *s, uint32_t ci, uint32_t gen, int fd, const uint8_t *buf,
		       size_t len)
{
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_SEND, ci, gen));
}

static int uring_connect_dgram(dp_shard_t *s, int fd, const dp_sockaddr_t *to)
{
	return connect(fd, (const struct sockaddr *)&to->ss, to->len) < 0 ? -errno : 0;
}

static int uring_send_dgram(dp_shard_t *s, int fd, const uint8_t *buf, size_t len)
{
	ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	return n < 0 ? -errno : (int)n;
}

static void uring_shutdown(dp_shard_t *s, int fd, bool cancel)
{
	shutdown(fd, SHUT_RDWR);
	if (cancel) {
		struct io_uring_sqe *sqe = dp_sqe(s);
		io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
	}
}

static void uring_close(dp_shard_t *s, int fd)
{
	close(fd);
}

static const dp_upconn_io_t uring_io = {
	.open = uring_open, .connect = uring_connect, /* the socket, then its connect */
	.recv = uring_recv, .send = uring_send,
	.connect_dgram = uring_connect_dgram, .send_dgram = uring_send_dgram,
	.shutdown = uring_shutdown, .close = uring_close,
};

/* ---- the table ------------------------------------------------------------- */

static void on_handshake_due(dp_tw_entry_t *e, void *arg);
static void set_ready(dp_shard_t *s, uint32_t ci);
static void arm_recv(dp_shard_t *s, uint32_t ci);

int dp_upconn_init(dp_shard_t *s, const dp_upconn_ops_t *ops)
{
	dp_upconns_t *t = &s->upc;
	t->streams = s->cfg->upstream_conns;
	t->per_upstream = t->streams + DP_UPCONN_UDP_SOCKS;
	t->n = (uint32_t)DP_MAX_UPSTREAMS * t->per_upstream;
	t->c = calloc(t->n, sizeof(dp_upconn_t));
	if (!t->c)
		return -ENOMEM;
	t->ops = ops;
	t->io = &uring_io;
	t->dirty = DP_NONE;
	for (uint32_t i = 0; i < t->n; i++) {
		dp_upconn_t *c = &t->c[i];
		c->fd = -1;
		c->state = C_DOWN;
		c->upstream = (uint8_t)(i / t->per_upstream);
		c->queries = DP_LIST_EMPTY;
		c->hedges = DP_LIST_EMPTY;
		c->dirty_next = DP_NONE;
		c->wire.tx = &c->sendq.fill;
	}
	return 0;
}

void dp_upconn_free(dp_shard_t *s)
{
	dp_upconns_t *t = &s->upc;
	for (uint32_t i = 0; t->c && i < t->n; i++) {
		dp_upconn_t *c = &t->c[i];
		if (c->fd >= 0)
			t->io->close(s, c->fd);
		SSL_free(c->ssl);
		dp_idmap_destroy(&c->ids);
		dp_buf_free(&c->batch);
		dp_sendq_free(&c->sendq);
		dp_buf_free(&c->wire.rx);
		dp_buf_free(&c->plain);
	}
	free(t->c);
	t->c = NULL;
	for (int u = 0; u < DP_MAX_UPSTREAMS; u++)
		dp_upconn_forget_session(s, (uint32_t)u);
}

void dp_upconn_forget_session(dp_shard_t *s, uint32_t u)
{
	if (s->upc.session[u])
		SSL_SESSION_free(s->upc.session[u]);
	s->upc.session[u] = NULL;
}

static const char *up_name(const dp_shard_t *s, const dp_upconn_t *c)
{
	return s->cfg->upstream[c->upstream].text;
}

/* ---- connecting ------------------------------------------------------------ */

/* What a connection allocates once and keeps: its ID map, its receive
 * buffer (TLS); and the plaintext buffer, freed while it is down. */
static int conn_buffers(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	int rc;
	/* Seeded under the process's secret key: IDs nobody can predict,
	 * which a plain UDP upstream's answers depend on (with the port). */
	uint64_t seed = dp_hash2(dp_now_ns(), ((uint64_t)ci << 32) ^ (uint64_t)(uintptr_t)c);
	if (!c->ids.val && (rc = dp_idmap_init(&c->ids, seed)) < 0)
		return rc;
	if ((c->kind == UK_DOT && !dp_buf_reserve(&c->wire.rx, RX_SIZE, RX_SIZE)) ||
	    !dp_buf_reserve(&c->plain, PLAIN_CAP, PLAIN_CAP))
		return -ENOMEM;
	return 0;
}

/* What slot ci speaks: a UDP slot a datagram socket; a stream slot TLS,
 * or plain TCP for plain upstreams (a udp:// one's: its retries of
 * truncated answers). */
static uint8_t slot_kind(const dp_shard_t *s, uint32_t ci)
{
	const dp_upconns_t *t = &s->upc;
	if (ci % t->per_upstream >= t->streams)
		return UK_UDP;
	return s->cfg->upstream[t->c[ci].upstream].transport == DP_UP_DOT ? UK_DOT : UK_TCP;
}

int dp_upconn_start(dp_shard_t *s, uint32_t ci)
{
	dp_upconns_t *t = &s->upc;
	dp_upconn_t *c = &t->c[ci];
	const dp_upstream_cfg_t *u = &s->cfg->upstream[c->upstream];
	c->kind = slot_kind(s, ci);
	int rc = conn_buffers(s, ci);
	if (rc < 0)
		return rc;
	int fd = t->io->open(s, u->addr.ss.ss_family, c->kind == UK_UDP ? SOCK_DGRAM : SOCK_STREAM);
	if (fd < 0)
		return fd;
	if (c->kind == UK_UDP && (rc = t->io->connect_dgram(s, fd, &u->addr)) < 0) {
		t->io->close(s, fd);
		return rc;
	}
	c->wire.rx.len = c->wire.rx_off = 0;
	dp_sendq_reset(&c->sendq);
	if (c->kind == UK_DOT && (rc = dp_tls_new_session(s->ssl_ctx, u, &c->wire,
							 &t->session[c->upstream], &c->ssl)) < 0) {
		t->io->close(s, fd);
		return rc;
	}
	c->fd = fd;
	c->state = C_CONNECTING;
	c->deadline_ms = s->now_ms + s->cfg->handshake_timeout_ms;
	dp_tw_entry_init(&c->hs_t, on_handshake_due);
	if (c->kind != UK_UDP)
		dp_tw_add(&s->timers, &c->hs_t, c->deadline_ms);
	c->got_answer = false;
	c->keepalive_ms = 0; /* a new session: the upstream announces it again */
	c->plain.len = 0;
	c->batch.len = c->batch_count = 0;
	c->retired = false;
	c->nsent = 0;
	c->case_seed = dp_hash2(dp_now_ns(), ci);
	STAT_INC(s, connects);
	M_INC(s->metrics.up[c->upstream].connects);
	if (c->kind == UK_UDP) {
		/* Connected already: takes queries in this very turn. */
		set_ready(s, ci);
		arm_recv(s, ci);
		return 0;
	}
	c->ops++;
	t->io->connect(s, ci, c->gen, fd, &u->addr);
	dp_debug("upstream connecting", "shard=%d upstream=%s", s->id, u->text);
	return 0;
}

/* ---- writing --------------------------------------------------------------- */

static void mark_dirty(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = s->upc.dirty;
		s->upc.dirty = ci;
	}
}

/* ---- 0x20 ------------------------------------------------------------------ */

/* The letters of the question name of m (len octets, the name at offset
 * 12) take a case drawn from c's seed and m's ID, a bit per letter
 * (draft-vixie-dnsext-dns0x20): written into out (m itself) when out is
 * not NULL, else checked. Returns false when a letter's case differs. */
static bool case_walk(const dp_upconn_t *c, const uint8_t *m, size_t len, uint8_t *out)
{
	uint16_t id = dp_rd16(m);
	uint64_t bits = 0;
	unsigned left = 0, word = 0;
	for (size_t o = DP_DNS_HDR_LEN; o < len && m[o] && m[o] < 64; o += (size_t)m[o] + 1u) {
		for (size_t i = o + 1; i <= o + m[o] && i < len; i++) {
			uint8_t lc = m[i] | 0x20; /* lower case, for letters */
			if (lc < 'a' || lc > 'z')
				continue;
			if (left == 0) {
				bits = dp_hash2(c->case_seed, (uint64_t)word++ << 16 | id);
				left = 64;
			}
			bool upper = bits & 1;
			bits >>= 1;
			left--;
			if (out)
				out[i] = upper ? (uint8_t)(lc - 32) : lc;
			else if ((m[i] != lc) != upper)
				return false;
		}
	}
	return true;
}

bool dp_upconn_case_ok(const dp_shard_t *s, uint32_t ci, const uint8_t *msg, size_t len)
{
	const dp_upconn_t *c = &s->upc.c[ci];
	if (c->kind != UK_UDP || !s->cfg->upstream[c->upstream].case_random)
		return true;
	return case_walk(c, msg, len, NULL);
}

int dp_upconn_write(dp_shard_t *s, uint32_t ci, const uint8_t *msg, uint16_t len, uint16_t id,
		    uint16_t opt_off)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (!dp_upconn_has_room(c, len)) {
		STAT_INC(s, upstream_wbuf_full);
		return -ENOBUFS;
	}
	if (!dp_buf_reserve(&c->batch, (size_t)c->batch.len + len + 2, 4096))
		return -ENOMEM;
	uint8_t *p = c->batch.data + c->batch.len;
	dp_wr16(p, len);
	memcpy(p + 2, msg, len);
	dp_wr16(p + 2, id);
	if (c->kind != UK_DOT && opt_off) {
		len = (uint16_t)dp_edns_strip_stream_opts(p + 2, len, opt_off, c->kind == UK_TCP);
		dp_wr16(p, len);
	}
	if (c->kind == UK_UDP && s->cfg->upstream[c->upstream].case_random)
		case_walk(c, p + 2, len, p + 2);
	c->batch.len += len + 2u;
	c->batch_count++;
	c->last_used_ms = s->now_ms;
	mark_dirty(s, ci);
	return 0;
}

/* Start the next send of what TLS made (one send in flight at a time). */
static void out_pump(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	const uint8_t *p;
	if (c->state == C_CLOSING || c->fd < 0)
		return;
	size_t n = dp_sendq_start(&c->sendq, &p);
	if (n == 0)
		return;
	c->send_since_ms = s->now_ms;
	c->ops++;
	s->upc.io->send(s, ci, c->gen, c->fd, p, n);
	STAT_INC(s, up_sends);
}

/* UDP: each query of the batch as its own datagram. One that the socket
 * does not take is lost like any datagram (the query's hedge or deadline
 * covers it); a refusal (ICMP port unreachable) fails the connection. */
static void flush_dgrams(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	for (uint32_t o = 0; o + 2 <= c->batch.len;) {
		uint16_t len = dp_rd16(c->batch.data + o);
		int n = s->upc.io->send_dgram(s, c->fd, c->batch.data + o + 2, len);
		o += 2u + len;
		if (n == -ECONNREFUSED || n == -EHOSTUNREACH || n == -ENETUNREACH) {
			dp_upconn_fail(s, ci, true, "upstream send failed", dp_strerror(n));
			return;
		}
		if (n != (int)len)
			STAT_INC(s, upstream_udp_lost);
		STAT_INC(s, up_sends);
	}
	c->batch.len = c->batch_count = 0;
}

/* TLS: the batch through SSL_write, then one send of the ciphertext.
 * TCP: the batch itself. */
static void flush_stream(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->kind == UK_TCP) {
		if (!dp_buf_append(&c->sendq.fill, c->batch.data, c->batch.len, 4096)) {
			dp_upconn_fail(s, ci, false, "upstream write failed", "out of memory");
			return;
		}
	} else {
		int n = SSL_write(c->ssl, c->batch.data, (int)c->batch.len);
		if (n != (int)c->batch.len) {
			char why[256];
			dp_tls_error_reason(c->ssl, n, why, sizeof(why));
			dp_upconn_fail(s, ci, true, "upstream TLS write failed", why);
			return;
		}
		STAT_INC(s, ssl_writes);
		STAT_ADD(s, ssl_write_queries, c->batch_count);
	}
	if (c->batch_count > s->stats.max_write_batch)
		STAT_SET(s, max_write_batch, c->batch_count);
	c->batch.len = c->batch_count = 0;
	out_pump(s, ci);
}

void dp_upconn_flush(dp_shard_t *s)
{
	while (s->upc.dirty != DP_NONE) {
		uint32_t ci = s->upc.dirty;
		dp_upconn_t *c = &s->upc.c[ci];
		s->upc.dirty = c->dirty_next;
		c->dirty = false;
		if (c->state != C_READY || c->batch.len == 0)
			continue;
		if (c->kind == UK_UDP)
			flush_dgrams(s, ci);
		else
			flush_stream(s, ci);
	}
}

/* ---- closing --------------------------------------------------------------- */

/* The last operation of closing connection ci completed: nothing refers to
 * the slot any more. Free what an idle slot need not keep, bump the
 * generation, and let the pool use it again. */
static void finalize(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->fd >= 0)
		s->upc.io->close(s, c->fd);
	c->fd = -1;
	SSL_free(c->ssl); /* frees its BIO */
	c->ssl = NULL;
	dp_sendq_reset(&c->sendq);
	c->wire.rx.len = c->wire.rx_off = 0;
	c->state = C_DOWN;
	c->gen++; /* completions still addressed to it are stale */
	c->recv_armed = false;
	c->batch.len = c->batch_count = 0;
	/* Keep idle memory small: the buffer comes back on the next connect. */
	dp_buf_free(&c->plain);
	s->upc.ops->down(s, ci);
}

static void log_close(dp_shard_t *s, const dp_upconn_t *c, bool health, const char *what,
		      const char *reason)
{
	int lvl = health ? DP_LOG_WARN : DP_LOG_DEBUG;
	if (lvl >= dp_log_level)
		dp_log(lvl, what, "shard=%d upstream=%s reason=\"%s\" inflight=%u", s->id,
		       up_name(s, c), reason, c->queries.count);
}

void dp_upconn_fail(dp_shard_t *s, uint32_t ci, bool health, const char *what,
		    const char *reason)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->state == C_CLOSING || c->state == C_DOWN)
		return;
	log_close(s, c, health, what, reason);
	if (c->state != C_READY)
		STAT_INC(s, handshake_failures);
	STAT_INC(s, conn_closed);
	c->state = C_CLOSING;
	dp_tw_cancel(&s->timers, &c->hs_t);
	/* Queries framed but not written: the pool sends them again. What TLS
	 * made already stays until the send in flight, if any, completes. */
	c->batch.len = c->batch_count = 0;
	s->upc.io->shutdown(s, c->fd, c->ops > 0);
	s->upc.ops->closed(s, ci, health);
	if (c->ops == 0)
		finalize(s, ci);
}

/* Connect and handshake took longer than --handshake-timeout (the
 * connection's timer on the shard's wheel fired). */
static void on_handshake_due(dp_tw_entry_t *e, void *arg)
{
	dp_shard_t *s = arg;
	dp_upconn_t *c = DP_CONTAINER_OF(e, dp_upconn_t, hs_t);
	if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
		dp_upconn_fail(s, (uint32_t)(c - s->upc.c), true, "upstream handshake failed",
			       "handshake timeout");
}

void dp_upconn_close_all(dp_shard_t *s)
{
	for (uint32_t ci = 0; s->upc.c && ci < s->upc.n; ci++) {
		dp_upconn_t *c = &s->upc.c[ci];
		if (c->fd >= 0)
			s->upc.io->shutdown(s, c->fd, false);
	}
}

/* ---- reading --------------------------------------------------------------- */

static void arm_recv(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	c->recv_armed = true;
	c->ops++;
	if (c->kind == UK_DOT) {
		/* TLS took every byte of the last receive before asking for
		 * more (WANT_READ means its BIO ran dry): the buffer starts
		 * empty. */
		c->wire.rx.len = c->wire.rx_off = 0;
		s->upc.io->recv(s, ci, c->gen, c->fd, c->wire.rx.data, c->wire.rx.cap);
	} else {
		/* TCP: after what is left of a split frame; UDP: empty. */
		s->upc.io->recv(s, ci, c->gen, c->fd, c->plain.data + c->plain.len,
				c->plain.cap - c->plain.len);
	}
}

/* The handshake is done (TLS), or the socket connected (plain): the
 * connection takes queries. */
static void set_ready(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	c->state = C_READY;
	dp_tw_cancel(&s->timers, &c->hs_t);
	dp_debug("upstream ready", "shard=%d upstream=%s kind=%u version=%s resumed=%d queued=%u",
		 s->id, up_name(s, c), c->kind, c->ssl ? SSL_get_version(c->ssl) : "plain",
		 c->ssl ? SSL_session_reused(c->ssl) : 0, c->queries.count);
	s->upc.ops->ready(s, ci);
}

/* The handshake succeeded: check the pins, count it, tell the pool. */
static void handshake_done(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (dp_tls_check_pins(c->ssl, &s->cfg->upstream[c->upstream]) < 0) {
		STAT_INC(s, pin_failures);
		dp_upconn_fail(s, ci, true, "upstream handshake failed",
			       "no pin-sha256 matches the server's keys");
		return;
	}
	if (SSL_session_reused(c->ssl)) {
		STAT_INC(s, handshakes_resumed);
		M_INC(s->metrics.up[c->upstream].resumed);
	}
	M_INC(s->metrics.up[c->upstream].handshakes);
	STAT_INC(s, handshakes);
	set_ready(s, ci);
}

static void do_handshake(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		handshake_done(s, ci);
		return;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return;
	char why[256];
	dp_tls_error_reason(c->ssl, r, why, sizeof(why));
	dp_upconn_fail(s, ci, true, "upstream handshake failed", why);
}

struct message_ctx {
	dp_shard_t *s;
	uint32_t ci;
};

static int on_message(void *ctx, uint8_t *msg, size_t len)
{
	struct message_ctx *m = ctx;
	m->s->upc.ops->message(m->s, m->ci, msg, len);
	/* Failed by the pool (a malformed answer): stop the split, read no
	 * more of it. */
	return m->s->upc.c[m->ci].state == C_READY ? 0 : DP_E_MALFORMED;
}

/* SSL_read failed with n: the upstream closed, or TLS broke. */
static void read_failed(dp_shard_t *s, uint32_t ci, int n)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN) {
		dp_upconn_fail(s, ci, c->queries.count && !c->got_answer,
			       "upstream closed the connection", "close_notify");
		return;
	}
	char why[256];
	dp_tls_error_reason(c->ssl, n, why, sizeof(why));
	dp_upconn_fail(s, ci, true, "upstream TLS error", why);
}

/* Hand every complete framed message in plain up; a split frame waits
 * there for the rest. Returns false when the connection is no longer
 * ready (a message's handling closed it, or a zero-length frame). */
static bool split_plain(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	struct message_ctx m = { s, ci };
	long used = dp_tcpframe_split(c->plain.data, c->plain.len, on_message, &m);
	if (c->state != C_READY)
		return false;
	if (used < 0) {
		dp_upconn_fail(s, ci, true, "upstream protocol error", "zero-length message");
		return false;
	}
	dp_buf_consume(&c->plain, (size_t)used);
	return true;
}

/* Drain every complete record TLS can make of what was received and hand
 * each framed message up. A frame split across records waits in plain. */
static void read_plain(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	for (;;) {
		int n = SSL_read(c->ssl, c->plain.data + c->plain.len,
				 (int)(c->plain.cap - c->plain.len));
		if (n <= 0) {
			int e = SSL_get_error(c->ssl, n);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
				read_failed(s, ci, n);
			return;
		}
		c->plain.len += (uint32_t)n;
		if (!split_plain(s, ci))
			return;
	}
}

/* ---- completions ----------------------------------------------------------- */

static void on_connect(dp_shard_t *s, uint32_t ci, int res)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (res < 0) {
		dp_upconn_fail(s, ci, true, "upstream connect failed", dp_strerror(res));
		return;
	}
	if (c->kind != UK_DOT) {
		set_ready(s, ci);
		if (c->state != C_READY)
			return;
		arm_recv(s, ci);
		out_pump(s, ci);
		return;
	}
	c->state = C_HANDSHAKE;
	do_handshake(s, ci);
	/* Failed (closing, or already finalized and perhaps connecting
	 * again under a new generation): nothing more of this connection. */
	if (c->state != C_HANDSHAKE && c->state != C_READY)
		return;
	arm_recv(s, ci);
	out_pump(s, ci);
}

/* A datagram (res octets, or a negative errno) on UDP connection ci. An
 * ICMP error (refused, unreachable) fails it; an empty datagram is no
 * answer. */
static void on_recv_dgram(dp_shard_t *s, uint32_t ci, int res)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (res < 0) {
		dp_upconn_fail(s, ci, true, "upstream refused", dp_strerror(res));
		return;
	}
	c->plain.len = 0;
	if (res > 0)
		s->upc.ops->message(s, ci, c->plain.data, DP_MIN((uint32_t)res, c->plain.cap));
	if (c->state == C_READY)
		arm_recv(s, ci);
}

/* Received res octets of plain TCP (0: closed by the upstream). */
static void on_recv_tcp(dp_shard_t *s, uint32_t ci, int res)
{
	dp_upconn_t *c = &s->upc.c[ci];
	c->plain.len += DP_MIN((uint32_t)res, c->plain.cap - c->plain.len);
	if (split_plain(s, ci)) {
		arm_recv(s, ci);
		out_pump(s, ci);
	}
}

static void on_recv(dp_shard_t *s, uint32_t ci, int res)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->kind == UK_UDP) {
		on_recv_dgram(s, ci, res);
		return;
	}
	if (res <= 0) {
		bool health = c->state != C_READY || (c->queries.count && !c->got_answer);
		dp_upconn_fail(s, ci, health,
			       c->state == C_READY ? "upstream closed the connection"
						   : "upstream handshake failed",
			       res == 0 ? "connection closed by peer" : dp_strerror(res));
		return;
	}
	if (c->kind == UK_TCP) {
		on_recv_tcp(s, ci, res);
		return;
	}
	c->wire.rx_off = 0;
	c->wire.rx.len = (uint32_t)DP_MIN((uint32_t)res, c->wire.rx.cap);
	if (c->state == C_HANDSHAKE)
		do_handshake(s, ci);
	if (c->state == C_READY)
		read_plain(s, ci);
	if (c->state != C_READY && c->state != C_HANDSHAKE)
		return;
	arm_recv(s, ci);
	out_pump(s, ci);
}

static void on_send(dp_shard_t *s, uint32_t ci, int res)
{
	dp_upconn_t *c = &s->upc.c[ci];
	/* A stream send of a non-empty buffer never completes with 0 bytes:
	 * taken as a broken connection, not retried (it would never stall). */
	int left = dp_sendq_done(&c->sendq, res == 0 ? -EPIPE : res);
	if (left < 0) {
		dp_upconn_fail(s, ci, c->state != C_READY, "upstream send failed", dp_strerror(left));
		return;
	}
	c->send_since_ms = s->now_ms;
	out_pump(s, ci); /* the rest of a short send, or what TLS made since */
}

/* Whether a completion (op, gen) belongs to an operation connection c has
 * in flight. The slot is reused only after its last completion, so one
 * that does not is not ours to count: dropping it keeps ops, and with it
 * the slot's lifetime, right. */
static bool cqe_is_ours(const dp_upconn_t *c, enum dp_op op, uint32_t gen)
{
	if (gen != c->gen || c->ops == 0)
		return false;
	switch (op) {
	case OP_UP_CONNECT: return c->state == C_CONNECTING || c->state == C_CLOSING;
	case OP_UP_RECV: return c->recv_armed;
	case OP_UP_SEND: return c->sendq.inflight;
	default: return false;
	}
}

void dp_upconn_on_cqe(dp_shard_t *s, enum dp_op op, uint32_t ci, uint32_t gen, int res)
{
	if (ci >= s->upc.n || !cqe_is_ours(&s->upc.c[ci], op, gen)) {
		dp_debug("upstream stale completion", "shard=%d op=%d slot=%u gen=%u", s->id,
			 (int)op, ci, gen);
		return;
	}
	dp_upconn_t *c = &s->upc.c[ci];
	c->ops--;
	if (op == OP_UP_RECV)
		c->recv_armed = false;
	if (c->state == C_CLOSING) {
		if (op == OP_UP_SEND)
			c->sendq.inflight = false;
		if (c->ops == 0)
			finalize(s, ci);
		return;
	}
	switch (op) {
	case OP_UP_CONNECT: on_connect(s, ci, res); return;
	case OP_UP_RECV: on_recv(s, ci, res); return;
	case OP_UP_SEND: on_send(s, ci, res); return;
	default: return;
	}
}
