/* test_pool.c - the upstream pool's state machine without sockets or TLS:
 * pool.c over a fake connection layer (the dp_upconn_* functions below stand
 * in for upconn.c) and a fake query table behind dp_upstream_sink_t.
 * Covered: answers matched by ID and question, a connection failing with
 * queries in flight (re-sent once elsewhere, then SERVFAIL exactly once),
 * late answers (after the timeout, after the slot was reused), timeouts
 * marking an upstream down and a probe bringing it back, a hedge copy
 * taking over from a failed primary, and teardown with queries in flight.
 * Zones (--forward): queries kept to their zone's upstreams, failover
 * within the zone, udp:// retries over TCP on TC, UDP port retirement and
 * expiry, hedging to another port, a reload adding a zone. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Before cmocka.h, whose fail() macro would rewrite sink->fail(). */
#include "../../core/pool.c"
#include "../../core/metrics.c"

#include <cmocka.h>

#define NQ 64

/* ---- a fake connection layer (upconn.h) ------------------------------------ */

static struct {
	int start_rc; /* dp_upconn_start fails with this when set */
	int starts[DP_MAX_UPSTREAMS * (64 + DP_UPCONN_UDP_SOCKS)]; /* per slot */
	int fails[DP_MAX_UPSTREAMS * (64 + DP_UPCONN_UDP_SOCKS)];
	int writes;
	int per_upstream[DP_MAX_UPSTREAMS]; /* writes to upstream u */
	uint32_t last_write_ci;
	uint16_t last_write_id;
	bool last_health;
} fk;

int dp_upconn_init(dp_shard_t *s, const dp_upconn_ops_t *ops)
{
	dp_upconns_t *t = &s->upc;
	t->streams = s->cfg->upstream_conns;
	t->per_upstream = t->streams + DP_UPCONN_UDP_SOCKS;
	t->n = (uint32_t)DP_MAX_UPSTREAMS * t->per_upstream;
	t->c = calloc(t->n, sizeof(dp_upconn_t));
	t->ops = ops;
	t->dirty = DP_NONE;
	for (uint32_t i = 0; i < t->n; i++) {
		dp_upconn_t *c = &t->c[i];
		c->fd = -1;
		c->upstream = (uint8_t)(i / t->per_upstream);
		c->queries = c->hedges = DP_LIST_EMPTY;
		c->dirty_next = DP_NONE;
		assert_int_equal(dp_idmap_init(&c->ids, i + 1), 0);
	}
	return 0;
}

void dp_upconn_free(dp_shard_t *s)
{
	for (uint32_t i = 0; i < s->upc.n; i++)
		dp_idmap_destroy(&s->upc.c[i].ids);
	free(s->upc.c);
	s->upc.c = NULL;
}

int dp_upconn_start(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	assert_int_equal(c->state, C_DOWN);
	if (fk.start_rc)
		return fk.start_rc;
	fk.starts[ci]++;
	/* What the slot speaks, as upconn.c's slot_kind has it. */
	if (ci % s->upc.per_upstream >= s->upc.streams)
		c->kind = UK_UDP;
	else
		c->kind = s->cfg->upstream[c->upstream].transport == DP_UP_DOT ? UK_DOT : UK_TCP;
	c->retired = false;
	c->nsent = 0;
	c->state = C_CONNECTING;
	c->fd = 100 + (int)ci;
	c->ops = 1; /* the connect */
	c->got_answer = false;
	return 0;
}

int dp_upconn_write(dp_shard_t *s, uint32_t ci, const uint8_t *msg, uint16_t len, uint16_t id,
		    uint16_t opt_off)
{
	dp_upconn_t *c = &s->upc.c[ci];
	assert_int_equal(c->state, C_READY);
	if (!dp_upconn_has_room(c, len))
		return -ENOBUFS;
	fk.writes++;
	fk.per_upstream[c->upstream]++;
	c->last_used_ms = s->now_ms;
	fk.last_write_ci = ci;
	fk.last_write_id = id;
	c->batch_count++;
	return 0;
}

void dp_upconn_flush(dp_shard_t *s)
{
	/* the batches are the fake's: nothing to send */
}

bool dp_upconn_case_ok(const dp_shard_t *s, uint32_t ci, const uint8_t *msg, size_t len)
{
	return true; /* no 0x20 upstream here */
}

/* The connection's last operation completed: the slot is free again. */
static void fake_finalize(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	assert_int_equal(c->state, C_CLOSING);
	c->ops = 0;
	c->fd = -1;
	c->state = C_DOWN;
	c->gen++;
	s->upc.ops->down(s, ci);
}

void dp_upconn_fail(dp_shard_t *s, uint32_t ci, bool health, const char *what,
		    const char *reason)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->state == C_CLOSING || c->state == C_DOWN)
		return;
	fk.fails[ci]++;
	fk.last_health = health;
	c->state = C_CLOSING;
	c->batch_count = 0;
	s->upc.ops->closed(s, ci, health);
	if (c->ops == 0)
		fake_finalize(s, ci);
}

void dp_upconn_forget_session(dp_shard_t *s, uint32_t u)
{
}

/* The handshake of ci is done. */
static void fake_ready(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	assert_true(c->state == C_CONNECTING || c->state == C_HANDSHAKE);
	c->state = C_READY;
	s->upc.ops->ready(s, ci);
}

/* ---- a fake query table behind the sink ------------------------------------ */

static struct {
	int answers[NQ];
	int fails[NQ];
	int answer_upstream[NQ];
	int probes;
	uint32_t probe_ci;
} qt;

static void q_free(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	dp_pool_detach(s, qi); /* as query_free does */
	assert_int_equal(q->conn, DP_NONE);
	assert_int_equal(q->conn2, DP_NONE);
	q->state = Q_FREE;
	q->gen++;
}

static void sink_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
			const dp_dns_answer_t *a, int upstream)
{
	assert_int_not_equal(s->q[qi].state, Q_FREE);
	qt.answers[qi]++;
	qt.answer_upstream[qi] = upstream;
	q_free(s, qi);
}

static void sink_fail(dp_shard_t *s, uint32_t qi)
{
	assert_int_not_equal(s->q[qi].state, Q_FREE);
	qt.fails[qi]++;
	q_free(s, qi);
}

static uint32_t q_new(dp_shard_t *s, const char *label, uint8_t transport);

static int sink_probe(dp_shard_t *s, uint32_t ci)
{
	qt.probes++;
	qt.probe_ci = ci;
	uint32_t qi = q_new(s, "probe", T_NONE);
	int rc = dp_pool_send_on(s, qi, ci);
	if (rc < 0)
		q_free(s, qi);
	return rc;
}

static const dp_upstream_sink_t sink = { sink_answer, sink_fail, sink_probe };

/* A query for <label>.example/A in a free slot (the lowest). */
static uint32_t q_new(dp_shard_t *s, const char *label, uint8_t transport)
{
	uint32_t qi = 0;
	while (qi < NQ && s->q[qi].state != Q_FREE)
		qi++;
	assert_true(qi < NQ);
	dp_query_t *q = &s->q[qi];
	uint32_t gen = q->gen;
	memset(q, 0, sizeof(*q));
	q->gen = gen;
	q->wire = q->inline_wire;
	uint8_t *p = q->wire;
	static const uint8_t hdr[12] = { 0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };
	memcpy(p, hdr, 12);
	size_t n = 12, l = strlen(label);
	p[n++] = (uint8_t)l;
	memcpy(p + n, label, l);
	n += l;
	memcpy(p + n, "\7example\0\0\1\0\1", 13);
	n += 13;
	q->len = (uint16_t)n;
	assert_int_equal(dp_dns_parse_query(q->wire, n, &q->view), 0);
	q->state = Q_PENDING;
	q->client.transport = transport;
	q->conn = q->conn2 = DP_NONE;
	q->clink.prev = q->clink.next = DP_NONE;
	dp_tw_entry_init(&q->hedge_t, NULL);
	return qi;
}

/* The upstream's answer to query qi as sent under id (its question,
 * QR set, no records). */
static size_t answer_of(dp_shard_t *s, uint32_t qi, uint16_t id, uint8_t *out)
{
	const dp_query_t *q = &s->q[qi];
	memcpy(out, q->wire, q->len);
	dp_wr16(out, id);
	out[2] |= 0x80;
	return q->len;
}

static void deliver(dp_shard_t *s, uint32_t ci, uint8_t *msg, size_t len)
{
	s->upc.ops->message(s, ci, msg, len);
}

/* ---- the shard --------------------------------------------------------------- */

static dp_config_t cfg;

/* A shard over cfg (upstreams set already): conns per upstream, round
 * robin, hedge_ms, a 2 s timeout, the pool set up with the fake sink. */
static dp_shard_t *shard_on_cfg(uint32_t conns, int32_t hedge_ms)
{
	cfg.upstream_conns = conns;
	cfg.upstream_policy = DP_POLICY_RR;
	cfg.hedge_ms = hedge_ms;
	cfg.timeout_ms = 2000;
	dp_shard_t *s = calloc(1, sizeof(*s));
	s->cfg = &cfg;
	s->now_ms = 1000000;
	dp_tw_init(&s->timers, s->now_ms);
	s->q = calloc(NQ, sizeof(dp_query_t));
	s->q_cap = s->q_hiwater = NQ;
	assert_int_equal(dp_pool_init(s, &sink), 0);
	return s;
}

static dp_shard_t *shard_new(int nupstream, uint32_t conns, int32_t hedge_ms)
{
	memset(&fk, 0, sizeof(fk));
	memset(&qt, 0, sizeof(qt));
	dp_config_defaults(&cfg);
	cfg.nupstream = nupstream;
	for (int u = 0; u < nupstream; u++)
		snprintf(cfg.upstream[u].text, sizeof(cfg.upstream[u].text), "up%d", u);
	return shard_on_cfg(conns, hedge_ms);
}

static void shard_free(dp_shard_t *s)
{
	dp_pool_free(s);
	free(s->q);
	free(s);
}

static uint32_t first_conn(dp_shard_t *s, uint32_t u)
{
	return s->pool.up[u].first_conn;
}

/* ---- tests ------------------------------------------------------------------- */

/* A query waits on a connecting connection, goes out when it is ready, is
 * answered once; the same answer again is late (its ID is free). */
static void answer_once(void **state)
{
	dp_shard_t *s = shard_new(2, 1, 0);
	uint32_t qi = q_new(s, "a", T_UDP);
	assert_int_equal(dp_pool_send(s, qi, -1), 0);
	uint32_t ci = s->q[qi].conn;
	assert_int_equal(s->q[qi].state, Q_PENDING);
	assert_int_equal(fk.starts[ci], 1);
	fake_ready(s, ci);
	assert_int_equal(s->q[qi].state, Q_SENT);
	assert_int_equal(fk.writes, 1);
	uint8_t msg[512];
	size_t n = answer_of(s, qi, fk.last_write_id, msg);
	deliver(s, ci, msg, n);
	assert_int_equal(qt.answers[qi], 1);
	assert_int_equal(qt.answer_upstream[qi], s->upc.c[ci].upstream);
	assert_int_equal(s->upc.c[ci].queries.count, 0);
	assert_int_equal(s->upc.c[ci].ids.count, 0);
	deliver(s, ci, msg, n);
	assert_int_equal(qt.answers[qi], 1);
	assert_int_equal(s->stats.upstream_bad_id, 1);
	assert_int_equal(s->stats.upstream_answers, 1);
	shard_free(s);
}

/* A connection fails with queries in flight: the sent one is re-sent once,
 * on the other upstream; when that connection fails too, it gets SERVFAIL,
 * exactly once, and an answer arriving after that is ignored. */
static void failure_resends_once(void **state)
{
	dp_shard_t *s = shard_new(2, 1, 0);
	uint32_t a = first_conn(s, 0), b = first_conn(s, 1);
	uint32_t q1 = q_new(s, "one", T_UDP);
	assert_int_equal(dp_pool_send_on(s, q1, a), 0);
	fake_ready(s, a);
	uint16_t id_a = s->q[q1].up_id;
	uint32_t q2 = q_new(s, "two", T_UDP); /* queued, not sent yet */
	s->upc.c[a].state = C_HANDSHAKE; /* pretend: a second handshake pending */
	assert_int_equal(dp_pool_send_on(s, q2, a), 0);
	s->upc.c[a].state = C_READY;
	assert_int_equal(s->q[q2].state, Q_PENDING);

	s->upc.c[a].ops = 0;
	dp_upconn_fail(s, a, true, "test", "failure");
	assert_true(s->pool.up[0].down_until_ms > s->now_ms);
	assert_int_equal(s->upc.c[a].state, C_DOWN); /* finalized: no operation left */
	assert_int_equal(s->q[q1].conn, b);
	assert_int_equal(s->q[q2].conn, b);
	assert_int_equal(s->q[q1].resent, 1);
	assert_int_equal(s->q[q2].resent, 0); /* never sent: not counted */
	assert_int_equal(s->stats.upstream_resent, 1);
	assert_int_equal(qt.fails[q1] + qt.fails[q2], 0);
	assert_int_equal(fk.starts[a], 1); /* not reconnected: nothing queued on it */

	/* The late answer on the failed connection matches nothing. */
	uint8_t msg[512];
	size_t n = answer_of(s, q1, id_a, msg);
	deliver(s, a, msg, n);
	assert_int_equal(qt.answers[q1], 0);

	fake_ready(s, b);
	assert_int_equal(s->q[q1].state, Q_SENT);
	uint16_t id_b = s->q[q1].up_id;
	s->upc.c[b].ops = 1; /* its receive */
	dp_upconn_fail(s, b, false, "test", "failure");
	assert_int_equal(qt.fails[q1], 1); /* sent twice: SERVFAIL */
	assert_int_equal(s->q[q2].resent, 1); /* sent once, on b: goes again */
	assert_int_equal(s->q[q2].conn, b); /* up0 is backed off: b again, reconnecting */
	assert_int_equal(s->upc.c[b].state, C_CLOSING);
	fake_finalize(s, b);
	assert_int_equal(fk.starts[b], 2);
	n = answer_of(s, q1, id_b, msg);
	deliver(s, b, msg, n);
	assert_int_equal(qt.answers[q1], 0);
	assert_int_equal(qt.fails[q1], 1);
	assert_int_equal(qt.fails[q2], 0);
	shard_free(s);
}

/* Late answers: after the query timed out (freed, ID released), and after
 * its slot was reused for another question on the same connection. */
static void late_answers_ignored(void **state)
{
	dp_shard_t *s = shard_new(1, 1, 0);
	uint32_t ci = first_conn(s, 0);
	uint32_t qi = q_new(s, "late", T_UDP);
	assert_int_equal(dp_pool_send(s, qi, -1), 0);
	fake_ready(s, ci);
	uint16_t old_id = s->q[qi].up_id;
	uint8_t old[512];
	size_t old_n = answer_of(s, qi, old_id, old);
	/* Its deadline: the query table fails it, then tells the pool. */
	sink_fail(s, qi);
	dp_pool_note_timeout(s, ci);
	deliver(s, ci, old, old_n);
	assert_int_equal(qt.answers[qi], 0);
	assert_int_equal(s->stats.upstream_bad_id, 1);

	/* The slot is reused for another question; the old answer comes
	 * again, under the old ID and under the new one. */
	uint32_t q2 = q_new(s, "other", T_UDP);
	assert_int_equal(q2, qi);
	assert_int_equal(dp_pool_send(s, q2, -1), 0);
	uint16_t new_id = s->q[q2].up_id;
	if (new_id != old_id) {
		deliver(s, ci, old, old_n);
		assert_int_equal(s->stats.upstream_bad_id, 2);
	}
	dp_wr16(old, new_id);
	deliver(s, ci, old, old_n);
	assert_int_equal(s->stats.upstream_bad_question, 1);
	assert_int_equal(qt.answers[q2], 0);
	/* A message shorter than a header, and a malformed answer to the
	 * query: the first is dropped, the second fails the query once. */
	deliver(s, ci, old, 5);
	assert_int_equal(s->stats.upstream_malformed, 1);
	uint8_t bad[12] = { 0 };
	dp_wr16(bad, new_id);
	bad[2] = 0x80;
	bad[5] = 2; /* two questions announced, none there */
	deliver(s, ci, bad, sizeof(bad));
	assert_int_equal(qt.fails[q2], 2); /* the slot's first query timed out */
	deliver(s, ci, bad, sizeof(bad));
	assert_int_equal(qt.fails[q2], 2);
	shard_free(s);
}

/* Five timeouts in a row fail the connection and back its upstream off;
 * queries go to the other upstream meanwhile; after the backoff a probe
 * goes to it, and its handshake brings it back. */
static void timeouts_down_probe_up(void **state)
{
	dp_shard_t *s = shard_new(2, 1, 0);
	uint32_t a = first_conn(s, 0);
	uint32_t qi = q_new(s, "x", T_UDP);
	assert_int_equal(dp_pool_send_on(s, qi, a), 0);
	fake_ready(s, a);
	sink_fail(s, qi);
	for (int i = 0; i < TIMEOUTS_DOWN; i++)
		dp_pool_note_timeout(s, a);
	assert_int_equal(fk.fails[a], 1);
	assert_true(fk.last_health);
	assert_int_equal(s->pool.up[0].fails, 1);
	assert_int_equal(s->upc.c[a].state, C_CLOSING); /* its receive is still out */
	fake_finalize(s, a);
	assert_int_equal(fk.starts[a], 1); /* nothing on it: not reconnected */
	for (int i = 0; i < 4; i++) {
		uint32_t q = q_new(s, "y", T_UDP);
		assert_int_equal(dp_pool_send(s, q, -1), 0);
		assert_int_equal(s->upc.c[s->q[q].conn].upstream, 1);
	}
	dp_pool_publish(s);
	assert_int_equal(s->metrics.up[0].healthy, 2);

	dp_pool_expire(s); /* still backed off: no probe */
	assert_int_equal(qt.probes, 0);
	s->now_ms = s->pool.up[0].down_until_ms;
	dp_pool_expire(s);
	assert_int_equal(qt.probes, 1);
	assert_int_equal(qt.probe_ci, a);
	assert_int_equal(s->upc.c[a].state, C_CONNECTING);
	fake_ready(s, a);
	assert_int_equal(s->pool.up[0].fails, 0);
	assert_int_equal(s->pool.up[0].down_until_ms, 0);
	dp_pool_publish(s);
	assert_int_equal(s->metrics.up[0].healthy, 1);
	shard_free(s);
}

/* A connection that cannot be opened backs its upstream off; with every
 * upstream refusing, the query gets no connection (the caller SERVFAILs). */
static void connect_refused(void **state)
{
	dp_shard_t *s = shard_new(2, 1, 0);
	fk.start_rc = -EMFILE;
	uint32_t qi = q_new(s, "z", T_UDP);
	assert_int_equal(dp_pool_send(s, qi, -1), -EHOSTUNREACH);
	assert_int_equal(s->q[qi].conn, DP_NONE);
	assert_true(s->pool.up[0].down_until_ms > s->now_ms);
	assert_true(s->pool.up[1].down_until_ms > s->now_ms);
	shard_free(s);
}

/* A hedge copy on the second upstream; the primary's connection fails: the
 * copy becomes the primary, nothing is re-sent, the answer comes once. */
static void hedge_takes_over(void **state)
{
	dp_shard_t *s = shard_new(2, 1, 10);
	uint32_t a = first_conn(s, 0), b = first_conn(s, 1);
	fake_ready(s, (dp_upconn_start(s, b), b));
	uint32_t qi = q_new(s, "h", T_UDP);
	assert_int_equal(dp_pool_send_on(s, qi, a), 0);
	fake_ready(s, a);
	assert_true(dp_tw_armed(&s->q[qi].hedge_t));
	s->now_ms += 10;
	dp_tw_run(&s->timers, s->now_ms, s);
	assert_int_equal(s->q[qi].conn2, b);
	assert_int_equal(s->stats.hedges_sent, 1);
	uint16_t id2 = s->q[qi].up_id2;
	assert_int_equal(fk.last_write_id, id2);
	s->upc.c[a].ops = 1;
	dp_upconn_fail(s, a, true, "test", "failure");
	assert_int_equal(s->q[qi].conn, b);
	assert_int_equal(s->q[qi].up_id, id2);
	assert_int_equal(s->q[qi].conn2, DP_NONE);
	assert_int_equal(s->q[qi].state, Q_SENT);
	assert_int_equal(s->stats.upstream_resent, 0);
	uint8_t msg[512];
	size_t n = answer_of(s, qi, id2, msg);
	deliver(s, b, msg, n);
	assert_int_equal(qt.answers[qi], 1);
	assert_int_equal(qt.fails[qi], 0);
	assert_int_equal(s->upc.c[b].hedges.count + s->upc.c[b].queries.count, 0);
	fake_finalize(s, a);
	assert_int_equal(fk.starts[a], 1);
	shard_free(s);
}

/* Teardown with queries in flight: the query table fails them all (each
 * once, every ID and list entry released); a connection failing while the
 * shard stops does not reconnect for what was put on it. */
static void teardown_in_flight(void **state)
{
	dp_shard_t *s = shard_new(2, 2, 0);
	uint32_t qs[8];
	for (int i = 0; i < 8; i++) {
		qs[i] = q_new(s, "t", T_UDP);
		assert_int_equal(dp_pool_send(s, qs[i], -1), 0);
	}
	for (uint32_t ci = 0; ci < s->upc.n; ci++)
		if (s->upc.c[ci].state == C_CONNECTING)
			fake_ready(s, ci);
	s->stop = 1;
	uint32_t ci0 = s->q[qs[0]].conn;
	s->upc.c[ci0].ops = 1;
	dp_upconn_fail(s, ci0, false, "test", "stop");
	fake_finalize(s, ci0);
	for (int i = 0; i < 8; i++)
		if (s->q[qs[i]].state != Q_FREE)
			sink_fail(s, qs[i]);
	for (int i = 0; i < 8; i++)
		assert_int_equal(qt.fails[qs[i]] + qt.answers[qs[i]], 1);
	for (uint32_t ci = 0; ci < s->upc.n; ci++) {
		assert_int_equal(s->upc.c[ci].queries.count, 0);
		assert_int_equal(s->upc.c[ci].ids.count, 0);
		assert_true(fk.starts[ci] <= 1);
	}
	shard_free(s);
}

/* A reload that changes upstream 0 closes its connections (not a health
 * failure); their queries move on. */
static void reload_moves_queries(void **state)
{
	dp_shard_t *s = shard_new(2, 1, 0);
	uint32_t a = first_conn(s, 0);
	uint32_t qi = q_new(s, "r", T_UDP);
	assert_int_equal(dp_pool_send_on(s, qi, a), 0);
	fake_ready(s, a);
	dp_config_t old = cfg;
	snprintf(cfg.upstream[0].name, sizeof(cfg.upstream[0].name), "changed.example");
	s->upc.c[a].ops = 1;
	dp_pool_reconfigure(s, &old);
	assert_int_equal(fk.fails[a], 1);
	assert_false(fk.last_health);
	assert_int_equal(s->pool.up[0].fails, 0);
	assert_int_not_equal(s->q[qi].conn, DP_NONE);
	assert_int_equal(qt.fails[qi], 0);
	shard_free(s);
}

/* ---- forwarding zones ------------------------------------------------------- */

#include "route.h"

/* A shard over the config of the command line args (NULL-terminated,
 * after the defaults); one stream slot per upstream, round robin, hedge
 * after hedge_ms. */
static dp_shard_t *zone_shard(int32_t hedge_ms, const char *first, ...)
{
	char *argv[40];
	int argc = 0;
	argv[argc++] = (char *)"dotproxy";
	va_list ap;
	va_start(ap, first);
	for (const char *a = first; a; a = va_arg(ap, const char *)) {
		assert_true(argc < 39);
		argv[argc++] = (char *)a;
	}
	va_end(ap);
	argv[argc] = NULL;
	char err[256] = "";
	dp_config_defaults(&cfg);
	if (dp_config_parse_args(&cfg, argc, argv, err, sizeof(err)) != 0)
		fail_msg("config: %s", err);
	memset(&fk, 0, sizeof(fk));
	memset(&qt, 0, sizeof(qt));
	return shard_on_cfg(1, hedge_ms);
}

/* A client query for name/A (dotted), routed as query.c routes it. */
static uint32_t q_name(dp_shard_t *s, const char *name)
{
	uint32_t qi = q_new(s, "x", T_UDP);
	dp_query_t *q = &s->q[qi];
	uint8_t *p = q->wire + 12;
	size_t n = 0;
	for (const char *d = name; *d;) {
		size_t l = strcspn(d, ".");
		p[n++] = (uint8_t)l;
		memcpy(p + n, d, l);
		n += l;
		d += l + (d[l] == '.');
	}
	p[n++] = 0;
	memcpy(p + n, "\0\1\0\1", 4);
	q->len = (uint16_t)(12 + n + 4);
	assert_int_equal(dp_dns_parse_query(q->wire, q->len, &q->view), 0);
	q->zone = (uint8_t)dp_route_zone(s->cfg, q->wire + q->view.qname_off, q->view.qname_len);
	return qi;
}

/* The index of the upstream whose text is text. */
static uint32_t up_idx(const char *text)
{
	for (int u = 0; u < cfg.nupstream; u++)
		if (strcmp(cfg.upstream[u].text, text) == 0)
			return (uint32_t)u;
	fail_msg("no upstream %s", text);
	return DP_NONE;
}

/* The upstream of the connection query qi is on. */
static uint32_t q_up(dp_shard_t *s, uint32_t qi)
{
	assert_int_not_equal(s->q[qi].conn, DP_NONE);
	return s->upc.c[s->q[qi].conn].upstream;
}

/* Make every connecting slot ready. */
static void all_ready(dp_shard_t *s)
{
	for (uint32_t ci = 0; ci < s->upc.n; ci++)
		if (s->upc.c[ci].state == C_CONNECTING)
			fake_ready(s, ci);
}

/* Answer query qi (in flight, sent) on its primary connection. */
static void answer_q(dp_shard_t *s, uint32_t qi, uint16_t flags)
{
	uint8_t msg[512];
	size_t n = answer_of(s, qi, s->q[qi].up_id, msg);
	dp_wr16(msg + 2, dp_rd16(msg + 2) | flags);
	deliver(s, s->q[qi].conn, msg, n);
}

/* Catches: a query sent to an upstream of another zone (the root's, or a
 * sibling's), and round robin that leaves a zone's second upstream out. */
static void zones_keep_their_upstreams(void **state)
{
	dp_shard_t *s = zone_shard(0, "--upstream", "192.0.2.1#a", "--upstream", "192.0.2.2#b",
				   "--forward", "corp.example=tcp://10.0.0.1", "--forward",
				   "corp.example=tcp://10.0.0.2", "--forward",
				   "lab.corp.example=udp://10.0.0.3", NULL);
	uint32_t a = up_idx("192.0.2.1#a"), b = up_idx("192.0.2.2#b");
	uint32_t t1 = up_idx("tcp://10.0.0.1"), t2 = up_idx("tcp://10.0.0.2");
	uint32_t u3 = up_idx("udp://10.0.0.3");
	static const char *names[] = { "www.example.com", "x.corp.example", "y.lab.corp.example",
				       "CORP.EXAMPLE", "example" };
	for (int round = 0; round < 4; round++) {
		for (size_t i = 0; i < DP_ARRAY_LEN(names); i++) {
			uint32_t qi = q_name(s, names[i]);
			assert_int_equal(dp_pool_send(s, qi, -1), 0);
			all_ready(s);
			uint32_t u = q_up(s, qi);
			switch (i) {
			case 0:
			case 4: assert_true(u == a || u == b); break;
			case 1:
			case 3: assert_true(u == t1 || u == t2); break;
			case 2:
				assert_int_equal(u, u3);
				assert_int_equal(s->upc.c[s->q[qi].conn].kind, UK_UDP);
				break;
			}
			answer_q(s, qi, 0);
			assert_int_equal(qt.answers[qi], 1);
			assert_int_equal(qt.answer_upstream[qi], u);
			qt.answers[qi] = 0;
		}
	}
	/* Round robin within each zone: both of a two-upstream zone used. */
	assert_int_equal(fk.per_upstream[a], 4);
	assert_int_equal(fk.per_upstream[b], 4);
	assert_int_equal(fk.per_upstream[t1], 4);
	assert_int_equal(fk.per_upstream[t2], 4);
	assert_int_equal(fk.per_upstream[u3], 4);
	shard_free(s);
}

/* Catches: failover leaving the zone. A zone's failing upstream hands its
 * query to the zone's other upstream; a zone whose only upstream fails
 * answers SERVFAIL rather than ask the default route. */
static void failover_within_zone(void **state)
{
	dp_shard_t *s = zone_shard(0, "--upstream", "192.0.2.1#a", "--forward",
				   "corp.example=tcp://10.0.0.1", "--forward",
				   "corp.example=tcp://10.0.0.2", "--forward", "lab.test=udp://10.0.0.3",
				   NULL);
	uint32_t t1 = up_idx("tcp://10.0.0.1"), t2 = up_idx("tcp://10.0.0.2");
	uint32_t u3 = up_idx("udp://10.0.0.3");
	uint32_t qi = q_name(s, "www.corp.example");
	assert_int_equal(dp_pool_send_on(s, qi, dp_upconn_first(&s->upc, t1, false)), 0);
	all_ready(s);
	uint32_t ci = s->q[qi].conn;
	dp_upconn_fail(s, ci, true, "test", "failure");
	assert_int_equal(q_up(s, qi), t2);
	assert_int_equal(s->q[qi].resent, 1);
	/* t1 is backed off, t2 fails too: SERVFAIL, the root never asked. */
	all_ready(s);
	int root_writes = fk.per_upstream[0];
	dp_upconn_fail(s, s->q[qi].conn, true, "test", "failure");
	assert_int_equal(qt.fails[qi], 1);
	assert_int_equal(fk.per_upstream[0], root_writes);

	uint32_t q2 = q_name(s, "host.lab.test");
	int fails = qt.fails[q2]; /* (the slot may be qi's again) */
	assert_int_equal(dp_pool_send(s, q2, -1), 0);
	all_ready(s);
	assert_int_equal(q_up(s, q2), u3);
	dp_upconn_fail(s, s->q[q2].conn, true, "test", "refused");
	assert_int_equal(qt.fails[q2], fails + 1);
	assert_int_equal(fk.per_upstream[0], root_writes);
	/* The root's queries still go to the root. */
	uint32_t q3 = q_name(s, "www.example.com");
	assert_int_equal(dp_pool_send(s, q3, -1), 0);
	assert_int_equal(q_up(s, q3), 0);
	shard_free(s);
}

/* Catches: a truncated UDP answer handed to the client (or asked again
 * over UDP, or of another upstream) instead of asked again over TCP of
 * the same server; the UDP copy's ID left live; the TCP answer (which may
 * carry TC too) not taken. */
static void udp_tc_retries_over_tcp(void **state)
{
	dp_shard_t *s = zone_shard(0, "--forward", "lab.test=udp://10.0.0.3", "--forward",
				   "lab.test=udp://10.0.0.4", NULL);
	uint32_t qi = q_name(s, "big.lab.test");
	assert_int_equal(dp_pool_send(s, qi, -1), 0);
	all_ready(s);
	uint32_t u = q_up(s, qi), udp_ci = s->q[qi].conn;
	assert_int_equal(s->upc.c[udp_ci].kind, UK_UDP);
	uint16_t udp_id = s->q[qi].up_id;
	uint8_t tc[512];
	size_t tc_n = answer_of(s, qi, udp_id, tc);
	dp_wr16(tc + 2, dp_rd16(tc + 2) | DP_DNS_F_TC);
	deliver(s, udp_ci, tc, tc_n);
	assert_int_equal(qt.answers[qi], 0);
	assert_int_equal(s->stats.upstream_tc_retries, 1);
	uint32_t tcp_ci = s->q[qi].conn;
	assert_int_equal(tcp_ci, dp_upconn_first(&s->upc, u, false));
	assert_int_equal(s->upc.c[tcp_ci].state, C_CONNECTING);
	assert_int_equal(s->upc.c[udp_ci].queries.count, 0);
	assert_int_equal(s->upc.c[udp_ci].ids.count, 0);
	assert_false(dp_tw_armed(&s->q[qi].hedge_t));
	int writes = fk.writes;
	fake_ready(s, tcp_ci);
	assert_int_equal(s->upc.c[tcp_ci].kind, UK_TCP);
	assert_int_equal(fk.writes, writes + 1);
	assert_int_equal(fk.last_write_ci, tcp_ci);
	/* The UDP answer again: its ID is gone. */
	deliver(s, udp_ci, tc, tc_n);
	assert_int_equal(s->stats.upstream_bad_id, 1);
	/* Over TCP, TC set or not, the answer is the client's. */
	answer_q(s, qi, DP_DNS_F_TC);
	assert_int_equal(qt.answers[qi], 1);
	assert_int_equal(qt.answer_upstream[qi], u);
	assert_int_equal(s->stats.upstream_tc_retries, 1);
	shard_free(s);
}

/* Catches: a UDP port that serves a second query while a fresh one is
 * free, a retired socket closed while its query waits (or closed from
 * inside the detach rather than at the end of the turn), one left open
 * once answered, and, with every socket busy, queries piled on one
 * socket rather than the least busy. */
static void udp_ports_retire(void **state)
{
	dp_shard_t *s = zone_shard(0, "--forward", "lab.test=udp://10.0.0.3", NULL);
	uint32_t u = up_idx("udp://10.0.0.3");
	uint32_t first = dp_upconn_first(&s->upc, u, true);
	_Static_assert(DP_UPCONN_UDP_QUERIES == 1, "a port per query");
	uint32_t q1 = q_name(s, "a.lab.test");
	assert_int_equal(dp_pool_send(s, q1, -1), 0);
	all_ready(s);
	assert_int_equal(s->q[q1].conn, first);
	assert_true(s->upc.c[first].retired);
	/* The next query takes a fresh port. */
	uint32_t q2 = q_name(s, "b.lab.test");
	assert_int_equal(dp_pool_send(s, q2, -1), 0);
	all_ready(s);
	uint32_t fresh = s->q[q2].conn;
	assert_true(fresh > first && fresh < first + DP_UPCONN_UDP_SOCKS);
	dp_pool_end_turn(s);
	dp_pool_expire(s);
	assert_int_equal(fk.fails[first] + fk.fails[fresh], 0); /* queries in flight */
	answer_q(s, q1, 0);
	assert_int_equal(fk.fails[first], 0); /* not from inside the answer */
	dp_pool_end_turn(s);
	assert_int_equal(fk.fails[first], 1);
	assert_false(fk.last_health);
	assert_int_equal(fk.fails[fresh], 0); /* in use */
	answer_q(s, q2, 0);
	dp_pool_end_turn(s);
	assert_int_equal(fk.fails[fresh], 1);
	assert_int_equal(qt.fails[q1] + qt.fails[q2], 0);
	fake_finalize(s, first);
	fake_finalize(s, fresh);
	/* Every socket busy: the next ones go to the least busy. */
	uint32_t busy[DP_UPCONN_UDP_SOCKS];
	for (int i = 0; i < DP_UPCONN_UDP_SOCKS; i++) {
		busy[i] = q_name(s, "busy.lab.test");
		assert_int_equal(dp_pool_send(s, busy[i], -1), 0);
		all_ready(s);
	}
	uint32_t idle = s->q[busy[5]].conn;
	answer_q(s, busy[5], 0); /* queued to close at the end of the turn */
	uint32_t q3 = q_name(s, "c.lab.test"), q4 = q_name(s, "d.lab.test");
	assert_int_equal(dp_pool_send(s, q3, -1), 0);
	assert_int_equal(s->q[q3].conn, idle); /* the least busy: kept */
	assert_int_equal(dp_pool_send(s, q4, -1), 0);
	dp_pool_end_turn(s);
	assert_int_equal(s->upc.c[idle].state, C_READY);
	for (uint32_t k = 0; k < DP_UPCONN_UDP_SOCKS; k++)
		assert_true(s->upc.c[first + k].queries.count <= 2);
	shard_free(s);
}

/* Catches: no hedge for a zone with a single udp:// upstream (a lost
 * datagram would then wait for the deadline), the hedge sent on the same
 * port (or to another zone), and a hedge for a single tcp:// upstream
 * (nothing is lost on a stream). */
static void udp_hedge_another_port(void **state)
{
	dp_shard_t *s = zone_shard(10, "--forward", "lab.test=udp://10.0.0.3", "--forward",
				   "tcp.test=tcp://10.0.0.4", NULL);
	uint32_t u = up_idx("udp://10.0.0.3");
	uint32_t qi = q_name(s, "lost.lab.test");
	assert_int_equal(dp_pool_send(s, qi, -1), 0);
	all_ready(s);
	assert_true(dp_tw_armed(&s->q[qi].hedge_t));
	uint32_t c1 = s->q[qi].conn;
	s->now_ms += 10;
	dp_tw_run(&s->timers, s->now_ms, s);
	assert_int_equal(s->stats.hedges_sent, 1);
	uint32_t c2 = s->q[qi].conn2;
	assert_int_not_equal(c2, DP_NONE);
	assert_int_not_equal(c2, c1);
	assert_int_equal(s->upc.c[c2].upstream, u);
	assert_int_equal(s->upc.c[c2].kind, UK_UDP);
	all_ready(s);
	assert_int_equal(fk.last_write_ci, c2);
	/* The copy's answer wins; the first port's ID is released too. */
	uint8_t msg[512];
	size_t n = answer_of(s, qi, s->q[qi].up_id2, msg);
	deliver(s, c2, msg, n);
	assert_int_equal(qt.answers[qi], 1);
	assert_int_equal(s->stats.hedge_wins, 1);
	assert_int_equal(s->upc.c[c1].ids.count + s->upc.c[c2].ids.count, 0);

	uint32_t q2 = q_name(s, "x.tcp.test");
	assert_int_equal(dp_pool_send(s, q2, -1), 0);
	all_ready(s);
	assert_false(dp_tw_armed(&s->q[q2].hedge_t));
	shard_free(s);
}

/* Catches: in-flight queries keeping the zone of the old config after a
 * reload adds a zone: re-sent (their connection closed) they would go to
 * the default route instead of the new zone's upstream. */
static void reload_adds_zone(void **state)
{
	dp_shard_t *s = zone_shard(0, "--upstream", "192.0.2.1#a", "--upstream", "192.0.2.2#b",
				   NULL);
	uint32_t a = up_idx("192.0.2.1#a");
	uint32_t qn = q_name(s, "x.new.example"), qo = q_name(s, "y.other.example");
	uint32_t ca = dp_upconn_first(&s->upc, a, false);
	assert_int_equal(dp_pool_send_on(s, qn, ca), 0);
	assert_int_equal(dp_pool_send_on(s, qo, ca), 0);
	all_ready(s);
	assert_int_equal(s->q[qn].zone, 0);

	static dp_config_t old;
	old = cfg;
	char *argv[] = { "dotproxy", "--upstream", "192.0.2.1#a", "--upstream", "192.0.2.2#b",
			 "--forward", "New.Example=tcp://10.0.0.9", NULL };
	char err[256];
	dp_config_defaults(&cfg);
	assert_int_equal(dp_config_parse_args(&cfg, 7, argv, err, sizeof(err)), 0);
	cfg.upstream_conns = 1;
	cfg.upstream_policy = DP_POLICY_RR;
	cfg.hedge_ms = 0;
	dp_pool_reconfigure(s, &old);
	assert_int_equal(fk.fails[ca], 0); /* upstream a is unchanged: kept */
	assert_int_equal(s->q[qn].zone, 1);
	assert_int_equal(s->q[qo].zone, 0);
	assert_int_equal(s->q[qn].conn, ca); /* in flight where it was */
	/* a's connection goes: each query goes to its own zone. */
	dp_upconn_fail(s, ca, true, "test", "failure");
	assert_int_equal(q_up(s, qn), up_idx("tcp://10.0.0.9"));
	assert_int_equal(q_up(s, qo), up_idx("192.0.2.2#b"));
	all_ready(s);
	answer_q(s, qn, 0);
	answer_q(s, qo, 0);
	assert_int_equal(qt.answers[qn] + qt.answers[qo], 2);
	shard_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(answer_once),
		cmocka_unit_test(failure_resends_once),
		cmocka_unit_test(late_answers_ignored),
		cmocka_unit_test(timeouts_down_probe_up),
		cmocka_unit_test(connect_refused),
		cmocka_unit_test(hedge_takes_over),
		cmocka_unit_test(teardown_in_flight),
		cmocka_unit_test(reload_moves_queries),
		cmocka_unit_test(zones_keep_their_upstreams),
		cmocka_unit_test(failover_within_zone),
		cmocka_unit_test(udp_tc_retries_over_tcp),
		cmocka_unit_test(udp_ports_retire),
		cmocka_unit_test(udp_hedge_another_port),
		cmocka_unit_test(reload_adds_zone),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
