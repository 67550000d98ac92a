/* upstream.c - DNS-over-TLS connections to the upstreams, one pool per shard.
 *
 * Owns: the shard's connection slots (--upstream-conns per upstream), and
 * per open connection its SSL session with memory BIOs, its ID map, its
 * receive, plaintext, batch and send buffers.
 *
 * Write path: a query is framed into its connection's batch; at the end of
 * the loop turn every connection with a batch does ONE SSL_write (so queries
 * that arrived in the same turn share TLS records) and ONE send of the
 * ciphertext. Only one send is in flight per connection; ciphertext made
 * meanwhile waits in the write BIO and leaves with the next send.
 *
 * Read path: ciphertext from recv goes into the read BIO; SSL_read drains
 * every complete message into the plaintext buffer, where the framed answers
 * are matched by ID (the ID map) and question, then answered in place.
 *
 * Bounds: a connection holds at most WBUF_MAX octets the upstream has not
 * taken yet (queries framed in the batch and ciphertext behind the send in
 * flight); a full connection takes no query, which goes to another
 * connection or upstream, or is answered SERVFAIL. An upstream that takes
 * no byte of a send for a while (stall_ms) is failed like one that stopped
 * answering.
 *
 * Failure: a connection that fails or is closed re-sends its queries once,
 * on another connection (another upstream when this one failed its health);
 * the slot is reused only after every operation on its socket completed.
 */
#include "upstream.h"
#include "query.h"
#include "ring.h"
#include "tls.h"
#include "log.h"
#include "tcpframe.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#define RX_SIZE (16 * 1024 + 512)
#define PLAIN_CAP (65537 + 16 * 1024)
#define COFF offsetof(dp_query_t, clink)
#define C2OFF offsetof(dp_query_t, c2link)
#define HEDGE_MIN_MS 2
#define HEDGE_DEFAULT_MS 50 /* until an upstream has enough samples */
#define HEDGE_SAMPLES 20 /* samples before its p95 is trusted */
#define EXPLORE_EVERY 32 /* the fastest policy tries another upstream this often */
#define TIMEOUTS_DOWN 5 /* consecutive timeouts that mark an upstream down */
/* Hedges are at most 1 in HEDGE_RATIO queries: under overload every answer is
 * late, and unbounded hedging would double the load that made it late. */
#define HEDGE_RATIO 20
#define HEDGE_BURST 200 /* hedges that may be saved up */
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 30000
#define OPEN_MORE_AT 64 /* in flight per ready connection before another opens */
/* Octets a connection may hold that its upstream has not taken: about 4,000
 * queries of 250 octets, far more than an upstream reading at all lets
 * build up; an upstream that stops reading costs at most this. */
#define WBUF_MAX (1024u * 1024u)

static void conn_fail(dp_shard_t *s, uint32_t ci, bool health, const char *what,
		      const char *reason);
static void on_hedge_due(dp_tw_entry_t *e, void *arg);
static void on_handshake_due(dp_tw_entry_t *e, void *arg);

int dp_upstream_init(dp_shard_t *s)
{
	const dp_config_t *cfg = s->cfg;
	/* Slots for every upstream a reload could add; untouched ones cost
	 * no memory beyond this table. */
	s->nconns = (uint32_t)DP_MAX_UPSTREAMS * cfg->upstream_conns;
	s->conns = calloc(s->nconns, sizeof(dp_upconn_t));
	if (!s->conns)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->nconns; i++) {
		dp_upconn_t *c = &s->conns[i];
		c->fd = -1;
		c->state = C_DOWN;
		c->upstream = (uint8_t)(i / cfg->upstream_conns);
		c->queries = (dp_list_t){ DP_NONE, DP_NONE, 0 };
		c->hedges = (dp_list_t){ DP_NONE, DP_NONE, 0 };
		c->dirty_next = DP_NONE;
	}
	for (int u = 0; u < DP_MAX_UPSTREAMS; u++) {
		s->up[u].first_conn = (uint32_t)u * cfg->upstream_conns;
		s->up[u].hedge_ms = cfg->hedge_ms > 0 ? (uint32_t)cfg->hedge_ms : HEDGE_DEFAULT_MS;
	}
	s->hedge_delay_ms = cfg->hedge_ms > 0 ? (uint32_t)cfg->hedge_ms : HEDGE_DEFAULT_MS;
	s->hedge_budget = HEDGE_RATIO * HEDGE_BURST / 4; /* some hedges from the start */
	s->dirty_head = DP_NONE;
	return 0;
}

void dp_upstream_free(dp_shard_t *s)
{
	if (!s->conns)
		return;
	for (uint32_t i = 0; i < s->nconns; i++) {
		dp_upconn_t *c = &s->conns[i];
		if (c->fd >= 0)
			close(c->fd);
		SSL_free(c->ssl);
		dp_idmap_destroy(&c->ids);
		free(c->batch);
		free(c->sendbuf);
		free(c->pend);
		free(c->rxbuf);
		free(c->plain);
	}
	free(s->conns);
	s->conns = NULL;
	for (int u = 0; u < DP_MAX_UPSTREAMS; u++) {
		if (s->up[u].session)
			SSL_SESSION_free(s->up[u].session);
		s->up[u].session = NULL;
	}
}

static const char *up_name(const dp_shard_t *s, const dp_upconn_t *c)
{
	return s->cfg->upstream[c->upstream].text;
}

static void mark_dirty(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = s->dirty_head;
		s->dirty_head = ci;
	}
}

/* Whether a query of len octets still fits in what c may hold unsent (the
 * TLS overhead of the batch is not counted: it is bounded by the batch). */
static bool has_room(const dp_upconn_t *c, uint32_t len)
{
	return (uint64_t)c->batch_len + c->pend_len + len + 2u <= WBUF_MAX;
}

/* How long a send may take no byte before its upstream counts as not
 * reading: the query timeout, within 1 to 5 s. */
static uint64_t stall_ms(const dp_shard_t *s)
{
	return DP_MIN(DP_MAX(s->cfg->timeout_ms, 1000u), 5000u);
}

/* Frame query qi into connection ci's batch under upstream ID id (the
 * primary copy, or a hedge). -ENOBUFS when the connection is full. */
static int batch_append(dp_shard_t *s, uint32_t ci, uint32_t qi, uint16_t id, bool hedge)
{
	dp_upconn_t *c = &s->conns[ci];
	dp_query_t *q = &s->q[qi];
	if (!has_room(c, q->len)) {
		STAT_INC(s, upstream_wbuf_full);
		return -ENOBUFS;
	}
	if (!dp_buf_grow(&c->batch, &c->batch_cap, (size_t)c->batch_len + q->len + 2, 4096))
		return -ENOMEM;
	uint8_t *p = c->batch + c->batch_len;
	dp_wr16(p, q->len);
	memcpy(p + 2, q->wire, q->len);
	dp_wr16(p + 2, id);
	c->batch_len += q->len + 2u;
	c->batch_count++;
	c->last_used_ms = s->now_ms;
	M_INC(s->metrics.up[c->upstream].sent);
	if (hedge) {
		q->hedge_start_ns = dp_now_ns();
	} else {
		q->state = Q_SENT;
		q->start_ns = dp_now_ns();
		if (s->hedge_budget < HEDGE_RATIO * HEDGE_BURST)
			s->hedge_budget++;
	}
	STAT_INC(s, upstream_sent);
	mark_dirty(s, ci);
	return 0;
}

/* Latency sample for upstream u: moving average and histogram (bucket i
 * holds up to 100 us * 1.5^i), from which the hedge delay (about the p95)
 * is taken once a tick. */
static void record_latency(dp_shard_t *s, uint32_t u, uint64_t rtt_ns)
{
	dp_upstream_state_t *st = &s->up[u];
	uint32_t us = (uint32_t)DP_MIN(rtt_ns / 1000, (uint64_t)UINT32_MAX / 2);
	st->ewma_us = st->samples ? st->ewma_us - st->ewma_us / 8 + us / 8 : us;
	st->samples++;
	uint32_t b = 0;
	for (uint64_t lim = 100; b < DP_LAT_BUCKETS - 1 && us > lim; b++)
		lim = lim * 3 / 2;
	st->hist[b]++;
	dp_hist_observe(&s->metrics.up[u].rtt, us);
	if (++st->hist_n >= 2048) {
		for (int i = 0; i < DP_LAT_BUCKETS; i++)
			st->hist[i] /= 2;
		st->hist_n /= 2;
	}
}

static void update_hedge_delay(dp_shard_t *s, uint32_t u)
{
	dp_upstream_state_t *st = &s->up[u];
	if (s->cfg->hedge_ms >= 0 || st->hist_n < HEDGE_SAMPLES)
		return;
	uint32_t need = st->hist_n - st->hist_n / 20, acc = 0;
	uint64_t lim = 100;
	for (int b = 0; b < DP_LAT_BUCKETS; b++, lim = lim * 3 / 2) {
		acc += st->hist[b];
		if (acc >= need)
			break;
	}
	uint32_t ms = (uint32_t)(lim / 1000);
	st->hedge_ms = DP_MAX(ms, (uint32_t)HEDGE_MIN_MS);
	st->hedge_ms = DP_MIN(st->hedge_ms, s->cfg->timeout_ms / 2);
}

static void arm_recv(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	struct io_uring_sqe *sqe = dp_sqe(s);
	/* TLS took every byte of the last receive before asking for more
	 * (WANT_READ means its BIO ran dry), so the buffer starts empty. */
	c->rx_off = c->rx_len = 0;
	io_uring_prep_recv(sqe, c->fd, c->rxbuf, RX_SIZE, 0);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_RECV, ci, c->gen));
	c->recv_armed = true;
	c->ops++;
}

/* Move ciphertext waiting in the write BIO to the socket (one send in
 * flight at a time). */
static void out_pump(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	if (c->send_inflight || c->state == C_CLOSING || c->fd < 0)
		return;
	if (c->pend_len == 0)
		return;
	/* Swap: what TLS wrote becomes the buffer in flight. */
	uint8_t *tb = c->sendbuf;
	uint32_t tc = c->send_cap;
	c->sendbuf = c->pend;
	c->send_cap = c->pend_cap;
	c->send_len = c->pend_len;
	c->send_off = 0;
	c->pend = tb;
	c->pend_cap = tc;
	c->pend_len = 0;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_send(sqe, c->fd, c->sendbuf, c->send_len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_SEND, ci, c->gen));
	c->send_inflight = true;
	c->send_since_ms = s->now_ms;
	c->ops++;
	STAT_INC(s, up_sends);
}

static int conn_start(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	const dp_upstream_cfg_t *u = &s->cfg->upstream[c->upstream];
	int rc;
	if (!c->ids.val && (rc = dp_idmap_init(&c->ids, dp_now_ns() ^ ((uint64_t)ci << 32) ^
							       (uint64_t)(uintptr_t)c)) < 0)
		return rc;
	if (!c->rxbuf && !(c->rxbuf = malloc(RX_SIZE)))
		return -ENOMEM;
	if (!c->plain && !(c->plain = malloc(PLAIN_CAP)))
		return -ENOMEM;
	int fd = socket(u->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->rx_off = c->rx_len = 0;
	c->pend_len = 0;
	if ((rc = dp_tls_new_session(s->ssl_ctx, u, c, &c->ssl)) < 0) {
		close(fd);
		return rc;
	}
	SSL_set_app_data(c->ssl, &s->up[c->upstream]);
	if (s->up[c->upstream].session)
		SSL_set_session(c->ssl, s->up[c->upstream].session);
	c->fd = fd;
	c->state = C_CONNECTING;
	c->deadline_ms = s->now_ms + s->cfg->handshake_timeout_ms;
	dp_tw_entry_init(&c->hs_t, on_handshake_due);
	dp_tw_add(&s->timers, &c->hs_t, c->deadline_ms);
	c->got_answer = false;
	c->plain_len = 0;
	c->batch_len = c->batch_count = 0;
	c->send_len = c->send_off = 0;
	STAT_INC(s, connects);
	M_INC(s->metrics.up[c->upstream].connects);
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&u->addr.ss, u->addr.len);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_CONNECT, ci, c->gen));
	c->ops++;
	dp_debug("upstream connecting", "shard=%d upstream=%s", s->id, u->text);
	return 0;
}

static bool upstream_down(const dp_shard_t *s, uint32_t u)
{
	return s->up[u].down_until_ms > s->now_ms;
}

/* An upstream that is not down (and not in the skip mask: bit u for
 * upstream u): round robin, or with the fastest policy the lowest latency
 * moving average, trying the others now and then (and those with few
 * samples first) so their figures stay fresh. */
static uint32_t pick_upstream(dp_shard_t *s, uint32_t skip)
{
	uint32_t n = (uint32_t)s->cfg->nupstream;
	bool rr = s->cfg->upstream_policy == DP_POLICY_RR || ++s->explore % EXPLORE_EVERY == 0;
	if (!rr) {
		uint32_t best = DP_NONE, best_us = UINT32_MAX;
		for (uint32_t u = 0; u < n; u++) {
			if ((skip >> u & 1) || upstream_down(s, u))
				continue;
			/* Untested (few queries sent, not few answers back: a
			 * slow upstream would otherwise draw every query until
			 * its first answers arrive) goes first. */
			uint32_t us = s->up[u].sent < 8 ? 0 : s->up[u].ewma_us;
			if (us < best_us) {
				best_us = us;
				best = u;
			}
		}
		if (best != DP_NONE && best_us > 0)
			return best;
	}
	for (uint32_t k = 0; k < n; k++) {
		uint32_t u = (s->rr + k) % n;
		if ((skip >> u & 1) || upstream_down(s, u))
			continue;
		s->rr = u + 1;
		return u;
	}
	return DP_NONE;
}

/* The connection of upstream u that should take the next query (len
 * octets): the least loaded ready one with room for it; a new one when
 * those are busy or full; a connecting one; and as a last resort a closing
 * one, which reconnects once it has closed. */
static uint32_t pick_conn(dp_shard_t *s, uint32_t u, uint32_t len)
{
	uint32_t best = DP_NONE, best_score = UINT32_MAX;
	bool full = false;
	uint32_t first = s->up[u].first_conn;
	for (uint32_t k = 0; k < s->cfg->upstream_conns; k++) {
		uint32_t ci = first + k;
		dp_upconn_t *c = &s->conns[ci];
		uint32_t score;
		switch (c->state) {
		case C_READY:
			if (!has_room(c, len)) {
				full = true;
				continue;
			}
			score = c->queries.count;
			break;
		case C_DOWN: score = OPEN_MORE_AT; break;
		case C_CONNECTING:
		case C_HANDSHAKE: score = OPEN_MORE_AT + 1 + c->queries.count; break;
		default: score = UINT32_MAX - 1; break;
		}
		if (score < best_score) {
			best_score = score;
			best = ci;
		}
	}
	if (best == DP_NONE && full)
		STAT_INC(s, upstream_wbuf_full);
	if (best != DP_NONE && s->conns[best].state == C_DOWN) {
		int rc = conn_start(s, best);
		if (rc < 0) {
			char why[96];
			snprintf(why, sizeof(why), "%s", dp_strerror(rc));
			dp_warn("upstream connect failed", "shard=%d upstream=%s reason=\"%s\"", s->id,
				up_name(s, &s->conns[best]), why);
			s->up[u].fails++;
			s->up[u].down_until_ms = s->now_ms + BACKOFF_MIN_MS;
			return DP_NONE;
		}
	}
	return best;
}

static int assign(dp_shard_t *s, uint32_t qi, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	dp_query_t *q = &s->q[qi];
	if (c->state == C_READY && !has_room(c, q->len)) {
		STAT_INC(s, upstream_wbuf_full);
		return -ENOBUFS;
	}
	int id = dp_idmap_take(&c->ids, qi);
	if (id < 0)
		return id;
	q->up_id = (uint16_t)id;
	q->conn = ci;
	q->state = Q_PENDING;
	dp_list_push_tail(&c->queries, s->q, sizeof(dp_query_t), COFF, qi);
	if (q->client.transport != T_NONE) {
		s->up[c->upstream].last_traffic_ms = s->now_ms;
		if (s->up[c->upstream].sent < UINT32_MAX)
			s->up[c->upstream].sent++;
		/* A hedge may follow if the answer is late (once per query). */
		if (s->cfg->hedge_ms != 0 && s->cfg->nupstream > 1 && !q->hedged &&
		    !dp_tw_armed(&q->hedge_t)) {
			/* The delay in force now (auto: it moves every tick):
			 * the wheel keeps hedges in order whatever it was. */
			uint64_t at = s->now_ms + (s->cfg->hedge_ms > 0 ? (uint32_t)s->cfg->hedge_ms
									: s->hedge_delay_ms);
			dp_tw_entry_init(&q->hedge_t, on_hedge_due);
			dp_tw_add(&s->timers, &q->hedge_t, at);
		}
	}
	if (c->state == C_READY)
		return batch_append(s, ci, qi, q->up_id, false);
	return 0;
}

int dp_upstream_send_on(dp_shard_t *s, uint32_t qi, uint32_t ci)
{
	if (s->conns[ci].state == C_DOWN) {
		int rc = conn_start(s, ci);
		if (rc < 0)
			return rc;
	}
	return assign(s, qi, ci);
}

static void hedge_detach(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	dp_upconn_t *c2 = &s->conns[q->conn2];
	if (dp_idmap_get(&c2->ids, q->up_id2) == qi)
		dp_idmap_release(&c2->ids, q->up_id2);
	dp_list_remove(&c2->hedges, s->q, sizeof(dp_query_t), C2OFF, qi);
	q->conn2 = DP_NONE;
}

int dp_upstream_send(dp_shard_t *s, uint32_t qi, int exclude)
{
	/* Never again an upstream that answered this query with SERVFAIL. */
	uint32_t skip = s->q[qi].servfailed | (exclude >= 0 ? 1u << exclude : 0);
	for (int attempt = 0; attempt < s->cfg->nupstream; attempt++) {
		uint32_t u = pick_upstream(s, skip);
		if (u == DP_NONE)
			return -EHOSTUNREACH;
		uint32_t ci = pick_conn(s, u, s->q[qi].len);
		if (ci == DP_NONE)
			continue; /* that upstream is down or full now; try another */
		return assign(s, qi, ci);
	}
	return -EHOSTUNREACH;
}

void dp_upstream_detach(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	dp_upconn_t *c = &s->conns[q->conn];
	if (dp_idmap_get(&c->ids, q->up_id) == qi)
		dp_idmap_release(&c->ids, q->up_id);
	dp_list_remove(&c->queries, s->q, sizeof(dp_query_t), COFF, qi);
	q->conn = DP_NONE;
	if (q->conn2 != DP_NONE)
		hedge_detach(s, qi);
	dp_tw_cancel(&s->timers, &q->hedge_t);
}

static void finalize(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	SSL_free(c->ssl); /* frees both BIOs */
	c->ssl = NULL;
	c->pend_len = 0;
	c->rx_off = c->rx_len = 0;
	c->state = C_DOWN;
	c->gen++;
	c->send_inflight = c->recv_armed = false;
	c->batch_len = c->batch_count = 0;
	c->plain_len = 0;
	if (c->plain) {
		/* Keep idle memory small: buffers come back on the next connect. */
		free(c->plain);
		c->plain = NULL;
	}
	/* Queries re-queued here while it closed: connect again for them. */
	if (c->queries.count && !s->stop) {
		int rc = upstream_down(s, c->upstream) ? -EHOSTUNREACH : conn_start(s, ci);
		if (rc < 0) {
			while (c->queries.head != DP_NONE)
				dp_query_fail(s, c->queries.head);
		}
	}
}

static void conn_fail(dp_shard_t *s, uint32_t ci, bool health, const char *what,
		      const char *reason)
{
	dp_upconn_t *c = &s->conns[ci];
	if (c->state == C_CLOSING || c->state == C_DOWN)
		return;
	uint8_t old = c->state;
	int lvl = health ? DP_LOG_WARN : DP_LOG_DEBUG;
	if (lvl >= dp_log_level)
		dp_log(lvl, what, "shard=%d upstream=%s reason=\"%s\" inflight=%u", s->id,
		       up_name(s, c), reason, c->queries.count);
	if (old != C_READY)
		STAT_INC(s, handshake_failures);
	STAT_INC(s, conn_closed);
	if (health) {
		M_INC(s->metrics.up[c->upstream].errors);
		dp_upstream_state_t *us = &s->up[c->upstream];
		us->fails++;
		uint64_t backoff = BACKOFF_MIN_MS;
		for (uint32_t i = 1; i < us->fails && backoff < BACKOFF_MAX_MS; i++)
			backoff *= 2;
		us->down_until_ms = s->now_ms + DP_MIN(backoff, (uint64_t)BACKOFF_MAX_MS);
	}
	c->state = C_CLOSING;
	dp_tw_cancel(&s->timers, &c->hs_t);
	c->batch_len = c->batch_count = 0;
	shutdown(c->fd, SHUT_RDWR);
	if (c->ops) {
		struct io_uring_sqe *sqe = dp_sqe(s);
		io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, dp_ud(OP_IGNORE, 0, 0));
	}
	/* Hedge copies sent here are dropped; their queries live on through
	 * their primary copy. */
	while (c->hedges.head != DP_NONE)
		hedge_detach(s, c->hedges.head);
	/* Take the query list out first: re-sending may pick this very slot
	 * again (it reconnects after closing) and push onto its list. */
	uint32_t qi = c->queries.head;
	c->queries = (dp_list_t){ DP_NONE, DP_NONE, 0 };
	int exclude = health ? (int)c->upstream : -1;
	while (qi != DP_NONE) {
		dp_query_t *q = &s->q[qi];
		uint32_t next = q->clink.next;
		q->clink.prev = q->clink.next = DP_NONE;
		q->conn = DP_NONE;
		dp_idmap_release(&c->ids, q->up_id);
		bool was_sent = q->state == Q_SENT;
		if (q->conn2 != DP_NONE) {
			/* Its hedge copy is in flight elsewhere: that becomes the
			 * primary, nothing is sent again. */
			dp_upconn_t *c2 = &s->conns[q->conn2];
			dp_list_remove(&c2->hedges, s->q, sizeof(dp_query_t), C2OFF, qi);
			q->conn = q->conn2;
			q->up_id = q->up_id2;
			q->start_ns = q->hedge_start_ns;
			q->conn2 = DP_NONE;
			/* Sent only if its connection was ready; otherwise it goes
			 * out with the others once the handshake is done. */
			q->state = c2->state == C_READY ? Q_SENT : Q_PENDING;
			dp_list_push_tail(&c2->queries, s->q, sizeof(dp_query_t), COFF, qi);
		} else if (was_sent && q->resent) {
			dp_query_fail(s, qi);
		} else {
			if (was_sent) {
				q->resent = 1;
				STAT_INC(s, upstream_resent);
			}
			if (dp_upstream_send(s, qi, exclude) < 0)
				dp_query_fail(s, qi);
		}
		qi = next;
	}
	if (c->ops == 0)
		finalize(s, ci);
}

static void do_handshake(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		if (dp_tls_check_pins(c->ssl, &s->cfg->upstream[c->upstream]) < 0) {
			STAT_INC(s, pin_failures);
			conn_fail(s, ci, true, "upstream handshake failed",
				  "no pin-sha256 matches the server's keys");
			return;
		}
		if (SSL_session_reused(c->ssl)) {
			STAT_INC(s, handshakes_resumed);
			M_INC(s->metrics.up[c->upstream].resumed);
		}
		M_INC(s->metrics.up[c->upstream].handshakes);
		c->state = C_READY;
		dp_tw_cancel(&s->timers, &c->hs_t);
		s->up[c->upstream].ever_up = true;
		s->up[c->upstream].fails = 0;
		s->up[c->upstream].down_until_ms = 0;
		STAT_INC(s, handshakes);
		dp_debug("upstream ready", "shard=%d upstream=%s version=%s resumed=%d queued=%u",
			 s->id, up_name(s, c), SSL_get_version(c->ssl), SSL_session_reused(c->ssl),
			 c->queries.count);
		/* What queued while connecting; what does not fit is answered
		 * SERVFAIL (a hedge copy is dropped: its primary lives on). */
		uint32_t next;
		for (uint32_t qi = c->queries.head; qi != DP_NONE; qi = next) {
			next = s->q[qi].clink.next;
			if (s->q[qi].state == Q_PENDING &&
			    batch_append(s, ci, qi, s->q[qi].up_id, false) < 0)
				dp_query_fail(s, qi);
		}
		for (uint32_t qi = c->hedges.head; qi != DP_NONE; qi = next) {
			next = s->q[qi].c2link.next;
			if (batch_append(s, ci, qi, s->q[qi].up_id2, true) < 0)
				hedge_detach(s, qi);
		}
		return;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return;
	char why[256];
	dp_tls_error_reason(c->ssl, r, why, sizeof(why));
	conn_fail(s, ci, true, "upstream handshake failed", why);
}

struct answer_ctx {
	dp_shard_t *s;
	uint32_t ci;
};

static int on_answer(void *ctx, uint8_t *msg, size_t len)
{
	struct answer_ctx *a = ctx;
	dp_shard_t *s = a->s;
	dp_upconn_t *c = &s->conns[a->ci];
	if (len < DP_DNS_HDR_LEN) {
		STAT_INC(s, upstream_malformed);
		return 0;
	}
	uint16_t id = dp_rd16(msg);
	uint32_t qi = dp_idmap_get(&c->ids, id);
	bool primary = qi < s->q_hiwater && s->q[qi].conn == a->ci && s->q[qi].up_id == id &&
		       s->q[qi].state == Q_SENT;
	bool hedge = !primary && qi < s->q_hiwater && s->q[qi].conn2 == a->ci &&
		     s->q[qi].up_id2 == id;
	if (!primary && !hedge) {
		STAT_INC(s, upstream_bad_id);
		return 0;
	}
	dp_query_t *q = &s->q[qi];
	dp_dns_view_t v;
	if (dp_dns_parse_answer(msg, len, &v) < 0) {
		/* Unusable answer to a query we know: fail it now rather than
		 * leave the client waiting for the deadline. */
		STAT_INC(s, upstream_malformed);
		dp_query_fail(s, qi);
		return 0;
	}
	if (!dp_dns_question_equal(q->wire, &q->view, msg, &v)) {
		STAT_INC(s, upstream_bad_question);
		return 0;
	}
	c->got_answer = true;
	c->last_used_ms = s->now_ms;
	if (v.opt_keepalive && v.keepalive)
		c->keepalive_ms = v.keepalive * 100u;
	record_latency(s, c->upstream, dp_now_ns() - (primary ? q->start_ns : q->hedge_start_ns));
	s->up[c->upstream].timeouts_in_row = 0;
	STAT_INC(s, upstream_answers);
	M_INC(s->metrics.up[c->upstream].answers);
	if (hedge)
		STAT_INC(s, hedge_wins);
	dp_query_answer(s, qi, msg, len, &v, c->upstream);
	return 0;
}

/* Drain every complete record from the read BIO and handle the answers. */
static void read_plain(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->conns[ci];
	struct answer_ctx a = { s, ci };
	for (;;) {
		int n = SSL_read(c->ssl, c->plain + c->plain_len, (int)(PLAIN_CAP - c->plain_len));
		if (n <= 0) {
			int e = SSL_get_error(c->ssl, n);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
				return;
			if (e == SSL_ERROR_ZERO_RETURN) {
				conn_fail(s, ci, c->queries.count && !c->got_answer,
					  "upstream closed the connection", "close_notify");
				return;
			}
			char why[256];
			dp_tls_error_reason(c->ssl, n, why, sizeof(why));
			conn_fail(s, ci, true, "upstream TLS error", why);
			return;
		}
		c->plain_len += (uint32_t)n;
		long used = dp_tcpframe_split(c->plain, c->plain_len, on_answer, &a);
		if (c->state != C_READY)
			return; /* an answer's handling closed it */
		if (used < 0) {
			conn_fail(s, ci, true, "upstream protocol error", "zero-length message");
			return;
		}
		if (used) {
			memmove(c->plain, c->plain + used, c->plain_len - (size_t)used);
			c->plain_len -= (uint32_t)used;
		}
	}
}

void dp_upstream_on_cqe(dp_shard_t *s, struct io_uring_cqe *cqe, enum dp_op op, uint32_t ci,
			uint32_t gen)
{
	if (ci >= s->nconns)
		return;
	dp_upconn_t *c = &s->conns[ci];
	c->ops--;
	if (op == OP_UP_SEND)
		c->send_inflight = false;
	if (op == OP_UP_RECV)
		c->recv_armed = false;
	if (c->state == C_CLOSING) {
		if (c->ops == 0)
			finalize(s, ci);
		return;
	}
	int res = cqe->res;
	switch (op) {
	case OP_UP_CONNECT:
		if (res < 0) {
			conn_fail(s, ci, true, "upstream connect failed", dp_strerror(res));
			return;
		}
		c->state = C_HANDSHAKE;
		do_handshake(s, ci);
		if (c->state == C_CLOSING)
			return;
		arm_recv(s, ci);
		out_pump(s, ci);
		return;
	case OP_UP_RECV:
		if (res <= 0) {
			bool health = c->state != C_READY || (c->queries.count && !c->got_answer);
			conn_fail(s, ci, health,
				  c->state == C_READY ? "upstream closed the connection"
						      : "upstream handshake failed",
				  res == 0 ? "connection closed by peer" : dp_strerror(res));
			return;
		}
		c->rx_off = 0;
		c->rx_len = (uint32_t)res;
		if (c->state == C_HANDSHAKE) {
			do_handshake(s, ci);
			if (c->state != C_READY) {
				if (c->state == C_HANDSHAKE) {
					arm_recv(s, ci);
					out_pump(s, ci);
				}
				return;
			}
		}
		read_plain(s, ci);
		if (c->state != C_READY)
			return;
		arm_recv(s, ci);
		out_pump(s, ci);
		return;
	case OP_UP_SEND:
		if (res < 0) {
			conn_fail(s, ci, c->state != C_READY, "upstream send failed", dp_strerror(res));
			return;
		}
		c->send_off += (uint32_t)res;
		c->send_since_ms = s->now_ms;
		if (c->send_off < c->send_len) {
			struct io_uring_sqe *sqe = dp_sqe(s);
			io_uring_prep_send(sqe, c->fd, c->sendbuf + c->send_off,
					   c->send_len - c->send_off, MSG_NOSIGNAL);
			io_uring_sqe_set_data64(sqe, dp_ud(OP_UP_SEND, ci, c->gen));
			c->send_inflight = true;
			c->ops++;
			return;
		}
		c->send_len = c->send_off = 0;
		out_pump(s, ci);
		return;
	default:
		return;
	}
}

void dp_upstream_flush(dp_shard_t *s)
{
	while (s->dirty_head != DP_NONE) {
		uint32_t ci = s->dirty_head;
		dp_upconn_t *c = &s->conns[ci];
		s->dirty_head = c->dirty_next;
		c->dirty = false;
		if (c->state != C_READY || c->batch_len == 0)
			continue;
		int n = SSL_write(c->ssl, c->batch, (int)c->batch_len);
		if (n != (int)c->batch_len) {
			char why[256];
			dp_tls_error_reason(c->ssl, n, why, sizeof(why));
			conn_fail(s, ci, true, "upstream TLS write failed", why);
			continue;
		}
		STAT_INC(s, ssl_writes);
		STAT_ADD(s, ssl_write_queries, c->batch_count);
		if (c->batch_count > s->stats.max_write_batch)
			STAT_SET(s, max_write_batch, c->batch_count);
		c->batch_len = c->batch_count = 0;
		out_pump(s, ci);
	}
}

void dp_upstream_expire(dp_shard_t *s)
{
	for (uint32_t ci = 0; ci < s->nconns; ci++) {
		dp_upconn_t *c = &s->conns[ci];
		if (c->state == C_READY && c->send_inflight &&
		    s->now_ms - c->send_since_ms >= stall_ms(s)) {
			STAT_INC(s, upstream_write_stalled);
			conn_fail(s, ci, true, "upstream not reading", "a send took no byte in time");
			continue;
		}
		if (c->state != C_READY || c->queries.count || c->hedges.count)
			continue;
		/* Idle: act just before the upstream's own idle timeout would
		 * close it under us. Still in use lately: ride the live session
		 * with a probe, which keeps it open and checks health without
		 * a new handshake. Unused: close it ourselves, cleanly. */
		uint32_t limit = c->keepalive_ms ? c->keepalive_ms : s->cfg->upstream_idle_ms;
		uint32_t margin = DP_MIN(1000u, limit / 4);
		if (s->now_ms - c->last_used_ms + margin < limit)
			continue;
		if (s->now_ms - s->up[c->upstream].last_traffic_ms < 60000) {
			if (dp_query_probe(s, ci) == 0)
				STAT_INC(s, probes_sent);
		} else {
			STAT_INC(s, upstream_idle_closed);
			conn_fail(s, ci, false, "upstream connection idle", "closed before its idle timeout");
		}
	}
	/* Auto hedge delay: an answer is late when the best upstream would
	 * have answered by now, i.e. the smallest p95 of the upstreams that
	 * have enough samples (default until one has). */
	uint32_t best = 0;
	for (int u = 0; u < s->cfg->nupstream; u++) {
		update_hedge_delay(s, (uint32_t)u);
		if (s->up[u].hist_n >= HEDGE_SAMPLES && (best == 0 || s->up[u].hedge_ms < best))
			best = s->up[u].hedge_ms;
	}
	s->hedge_delay_ms = best ? best : HEDGE_DEFAULT_MS;
	for (int u = 0; u < s->cfg->nupstream; u++) {
		/* Down and its backoff is over: probe it now rather than wait for
		 * a client's query to find out. */
		dp_upstream_state_t *st = &s->up[u];
		if (st->fails && st->down_until_ms && s->now_ms >= st->down_until_ms) {
			uint32_t ci = st->first_conn;
			if (s->conns[ci].state == C_DOWN) {
				st->down_until_ms = 0;
				if (dp_query_probe(s, ci) == 0)
					STAT_INC(s, probes_sent);
			}
		}
	}
}

/* Connect and handshake took longer than --handshake-timeout (the
 * connection's timer on the shard's wheel fired). */
static void on_handshake_due(dp_tw_entry_t *e, void *arg)
{
	dp_shard_t *s = arg;
	dp_upconn_t *c = DP_CONTAINER_OF(e, dp_upconn_t, hs_t);
	if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
		conn_fail(s, (uint32_t)(c - s->conns), true, "upstream handshake failed",
			  "handshake timeout");
}

void dp_upstream_note_timeout(dp_shard_t *s, uint32_t ci)
{
	uint32_t u = s->conns[ci].upstream;
	M_INC(s->metrics.up[u].timeouts);
	record_latency(s, u, (uint64_t)s->cfg->timeout_ms * 1000000ull);
	if (++s->up[u].timeouts_in_row >= TIMEOUTS_DOWN && s->conns[ci].state == C_READY) {
		s->up[u].timeouts_in_row = 0;
		conn_fail(s, ci, true, "upstream not answering",
			  "consecutive queries timed out");
	}
}

/* The hedge delay of a query is up (its timer on the shard's wheel fired,
 * in deadline order): ask another upstream too, budget permitting. */
static void on_hedge_due(dp_tw_entry_t *e, void *arg)
{
	dp_shard_t *s = arg;
	dp_query_t *q = DP_CONTAINER_OF(e, dp_query_t, hedge_t);
	uint32_t qi = (uint32_t)(q - s->q);
	if (q->conn == DP_NONE || q->hedged || q->conn2 != DP_NONE ||
	    s->hedge_budget < HEDGE_RATIO)
		return;
	uint32_t u = pick_upstream(s, q->servfailed | 1u << s->conns[q->conn].upstream);
	if (u == DP_NONE)
		return;
	uint32_t ci = pick_conn(s, u, q->len);
	if (ci == DP_NONE)
		return;
	dp_upconn_t *c = &s->conns[ci];
	int id = dp_idmap_take(&c->ids, qi);
	if (id < 0)
		return;
	s->hedge_budget -= HEDGE_RATIO;
	q->hedged = true;
	q->conn2 = ci;
	q->up_id2 = (uint16_t)id;
	dp_list_push_tail(&c->hedges, s->q, sizeof(dp_query_t), C2OFF, qi);
	STAT_INC(s, hedges_sent);
	if (c->state == C_READY) {
		if (batch_append(s, ci, qi, q->up_id2, true) < 0)
			hedge_detach(s, qi); /* full (pick_conn checked): keep the books right */
	} else {
		q->hedge_start_ns = dp_now_ns(); /* sent once the handshake is done */
	}
}

void dp_upstream_publish(dp_shard_t *s)
{
	for (int u = 0; u < s->cfg->nupstream; u++) {
		uint64_t inflight = 0;
		for (uint32_t k = 0; k < s->cfg->upstream_conns; k++)
			inflight += s->conns[s->up[u].first_conn + k].queries.count;
		M_SET(s->metrics.up[u].inflight, inflight);
		/* 2: failing (until a handshake succeeds again, probes
		 * included), 1: up, 0: not tried by this shard yet. */
		const dp_upstream_state_t *st = &s->up[u];
		M_SET(s->metrics.up[u].healthy, st->fails ? 2 : st->ever_up ? 1 : 0);
	}
}

static bool same_upstream(const dp_upstream_cfg_t *a, const dp_upstream_cfg_t *b)
{
	return a->addr.len == b->addr.len && memcmp(&a->addr.ss, &b->addr.ss, a->addr.len) == 0 &&
	       strcmp(a->name, b->name) == 0 && a->npins == b->npins && a->no_ca == b->no_ca &&
	       memcmp(a->pins, b->pins, sizeof(a->pins)) == 0;
}

void dp_upstream_reconfigure(dp_shard_t *s, const dp_config_t *old)
{
	const dp_config_t *cfg = s->cfg;
	bool ca_changed = strcmp(old->ca_file, cfg->ca_file) != 0 ||
			  old->tls_min_version != cfg->tls_min_version;
	int n = DP_MAX(old->nupstream, cfg->nupstream);
	for (int u = 0; u < n; u++) {
		bool changed = u >= old->nupstream || u >= cfg->nupstream || ca_changed ||
			       !same_upstream(&old->upstream[u], &cfg->upstream[u]);
		if (!changed)
			continue;
		dp_upstream_state_t *st = &s->up[u];
		/* Fresh state: the slot may now be a different server. */
		if (st->session)
			SSL_SESSION_free(st->session);
		uint32_t first = st->first_conn;
		memset(st, 0, sizeof(*st));
		st->first_conn = first;
		st->hedge_ms = cfg->hedge_ms > 0 ? (uint32_t)cfg->hedge_ms : HEDGE_DEFAULT_MS;
		memset(&s->metrics.up[u], 0, sizeof(s->metrics.up[u]));
		/* Its queries move to the upstreams of the new config. */
		for (uint32_t k = 0; k < cfg->upstream_conns; k++) {
			uint32_t ci = first + k;
			uint8_t state = s->conns[ci].state;
			if (state != C_DOWN && state != C_CLOSING)
				conn_fail(s, ci, false, "upstream reconfigured", "reload");
		}
	}
}

void dp_upstream_close_all(dp_shard_t *s)
{
	if (!s->conns)
		return;
	for (uint32_t ci = 0; ci < s->nconns; ci++) {
		dp_upconn_t *c = &s->conns[ci];
		if (c->fd >= 0)
			shutdown(c->fd, SHUT_RDWR);
	}
}
