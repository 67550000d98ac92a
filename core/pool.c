/* pool.c - the shard's upstream pool: which upstream and which connection
 * carry each query, and what happens when they do not answer.
 *
 * Owns: the per-upstream state (health, backoff, latency histogram, hedge
 * delay), the round-robin and exploration cursors, the hedge budget, and
 * the bookkeeping of which query is on which connection (the connection's
 * query and hedge lists, the query's conn/up_id and conn2/up_id2). The
 * connections themselves (socket, TLS, framing, IDs) are upconn.c's: the
 * pool calls down into it and hears back through dp_upconn_ops_t. Answers
 * and failures go up to the query table only through dp_upstream_sink_t.
 *
 * Zones: a query goes only to the upstreams of its forwarding zone
 * (route.h, set in the query); failover and hedging stay within it. Each
 * zone has its own round-robin cursor and hedge delay.
 *
 * Selection: round robin, or the fastest upstream by moving average with
 * an exploring pick now and then; within an upstream, the least loaded
 * ready connection with room, opening another when those are busy. A
 * udp:// upstream's queries go on its UDP sockets, each on a random port
 * of its own that serves DP_UPCONN_UDP_QUERIES queries (one) and closes at
 * the end of the turn that saw the last answered (dp_pool_end_turn); an
 * answer truncated there (TC) is asked again over TCP, of the same
 * upstream; a UDP query not answered after the hedge delay is sent again
 * (another upstream of the zone, else another port of the same one).
 *
 * Failure: a connection that fails or is closed re-sends its queries once,
 * on another connection (another upstream when this one failed its
 * health); a query already re-sent once gets SERVFAIL. A failure backs the
 * upstream off (250 ms doubling to 30 s); a probe brings it back. A query
 * whose hedge copy is in flight elsewhere keeps that copy as its primary.
 *
 * Hedging: a query not answered after the hedge delay (fixed, or about the
 * best upstream's p95) is sent to a second upstream too, at most 1 in 20.
 */
#include "pool.h"
#include "edns.h"
#include "route.h"
#include "upconn.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

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
#define PROBE_RECENT_MS 60000 /* an idle connection used this lately is kept (probed) */
#define UDP_IDLE_MS 5000 /* an unused UDP socket is closed after this */

static void on_hedge_due(dp_tw_entry_t *e, void *arg);
static const dp_upconn_ops_t conn_ops;

int dp_pool_init(dp_shard_t *s, const dp_upstream_sink_t *sink)
{
	const dp_config_t *cfg = s->cfg;
	int rc = dp_upconn_init(s, &conn_ops);
	if (rc < 0)
		return rc;
	dp_pool_t *p = &s->pool;
	p->sink = sink;
	p->drained = calloc((size_t)DP_MAX_UPSTREAMS * DP_UPCONN_UDP_SOCKS, sizeof(uint32_t));
	if (!p->drained) {
		dp_upconn_free(s);
		return -ENOMEM;
	}
	for (int u = 0; u < DP_MAX_UPSTREAMS; u++) {
		p->up[u].first_conn = (uint32_t)u * s->upc.per_upstream;
		p->up[u].hedge_ms = cfg->hedge_ms > 0 ? (uint32_t)cfg->hedge_ms : HEDGE_DEFAULT_MS;
	}
	for (int z = 0; z < DP_MAX_ZONES; z++)
		p->hedge_delay_ms[z] = cfg->hedge_ms > 0 ? (uint32_t)cfg->hedge_ms : HEDGE_DEFAULT_MS;
	p->hedge_budget = HEDGE_RATIO * HEDGE_BURST / 4; /* some hedges from the start */
	return 0;
}

void dp_pool_free(dp_shard_t *s)
{
	free(s->pool.drained);
	s->pool.drained = NULL;
	dp_upconn_free(s);
}

/* ---- health and latency ---------------------------------------------------- */

static bool upstream_down(const dp_shard_t *s, uint32_t u)
{
	return s->pool.up[u].down_until_ms > s->now_ms;
}

/* A connection of upstream u failed its health: back the upstream off,
 * 250 ms doubling per consecutive failure, up to 30 s. */
static void note_failure(dp_shard_t *s, uint32_t u)
{
	dp_upstream_state_t *st = &s->pool.up[u];
	M_INC(s->metrics.up[u].errors);
	st->fails++;
	uint64_t backoff = BACKOFF_MIN_MS;
	for (uint32_t i = 1; i < st->fails && backoff < BACKOFF_MAX_MS; i++)
		backoff *= 2;
	st->down_until_ms = s->now_ms + DP_MIN(backoff, (uint64_t)BACKOFF_MAX_MS);
}

/* How long a send may take no byte before its upstream counts as not
 * reading: the query timeout, within 1 to 5 s. */
static uint64_t stall_ms(const dp_shard_t *s)
{
	return DP_MIN(DP_MAX(s->cfg->timeout_ms, 1000u), 5000u);
}

/* Latency sample for upstream u: moving average and histogram (bucket i
 * holds up to 100 us * 1.5^i), from which the hedge delay (about the p95)
 * is taken once a tick. */
static void record_latency(dp_shard_t *s, uint32_t u, uint64_t rtt_ns)
{
	dp_upstream_state_t *st = &s->pool.up[u];
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
	dp_upstream_state_t *st = &s->pool.up[u];
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

/* ---- selection ------------------------------------------------------------- */

/* An upstream of zone z that is not down (and not in the skip mask: bit u
 * for upstream u): round robin, or with the fastest policy the lowest
 * latency moving average, trying the others now and then (and those with
 * few samples first) so their figures stay fresh. */
static uint32_t pick_upstream(dp_shard_t *s, uint32_t z, uint32_t skip)
{
	dp_pool_t *p = &s->pool;
	uint32_t n = (uint32_t)s->cfg->nupstream;
	uint32_t mine = s->cfg->zone[z].upstreams & ~skip;
	bool rr = s->cfg->upstream_policy == DP_POLICY_RR || ++p->explore % EXPLORE_EVERY == 0;
	if (!rr) {
		uint32_t best = DP_NONE, best_us = UINT32_MAX;
		for (uint32_t u = 0; u < n; u++) {
			if (!(mine >> u & 1) || upstream_down(s, u))
				continue;
			/* Untested (few queries sent, not few answers back: a
			 * slow upstream would otherwise draw every query until
			 * its first answers arrive) goes first. */
			uint32_t us = p->up[u].sent < 8 ? 0 : p->up[u].ewma_us;
			if (us < best_us) {
				best_us = us;
				best = u;
			}
		}
		if (best != DP_NONE && best_us > 0)
			return best;
	}
	for (uint32_t k = 0; k < n; k++) {
		uint32_t u = (p->rr[z] + k) % n;
		if (!(mine >> u & 1) || upstream_down(s, u))
			continue;
		p->rr[z] = (uint8_t)(u + 1);
		return u;
	}
	return DP_NONE;
}

/* How much connection c wants the next query of len octets (lower is
 * better, UINT32_MAX: not at all): the least loaded ready one with room;
 * a new one when those are busy; a connecting one; a closing one last,
 * which reconnects once it has closed. *full: a ready one had no room. */
static uint32_t conn_score(const dp_upconn_t *c, uint32_t len, bool *full)
{
	switch (c->state) {
	case C_READY:
		if (!dp_upconn_has_room(c, len)) {
			*full = true;
			return UINT32_MAX;
		}
		/* A retired UDP port only when nothing else can take it, the
		 * least busy first. */
		return c->retired ? UINT32_MAX / 2 + c->queries.count : c->queries.count;
	case C_DOWN: return OPEN_MORE_AT;
	case C_CONNECTING:
	case C_HANDSHAKE: return OPEN_MORE_AT + 1 + c->queries.count;
	default: return UINT32_MAX - 1;
	}
}

/* The connection of upstream u that should take the next query (len
 * octets), connected now if it was down; DP_NONE when none can. dgram:
 * one of its UDP sockets, else a stream connection; never not_ci. */
static uint32_t pick_conn_of(dp_shard_t *s, uint32_t u, uint32_t len, bool dgram, uint32_t not_ci)
{
	uint32_t best = DP_NONE, best_score = UINT32_MAX;
	bool full = false;
	uint32_t first = dp_upconn_first(&s->upc, u, dgram);
	for (uint32_t k = 0; k < dp_upconn_count(&s->upc, dgram); k++) {
		uint32_t score = conn_score(&s->upc.c[first + k], len, &full);
		if (score < best_score && first + k != not_ci) {
			best_score = score;
			best = first + k;
		}
	}
	if (best == DP_NONE && full)
		STAT_INC(s, upstream_wbuf_full);
	if (best != DP_NONE && s->upc.c[best].state == C_DOWN) {
		int rc = dp_upconn_start(s, best);
		if (rc < 0) {
			char why[96];
			snprintf(why, sizeof(why), "%s", dp_strerror(rc));
			dp_warn("upstream connect failed", "shard=%d upstream=%s reason=\"%s\"", s->id,
				s->cfg->upstream[u].text, why);
			s->pool.up[u].fails++;
			s->pool.up[u].down_until_ms = s->now_ms + BACKOFF_MIN_MS;
			return DP_NONE;
		}
	}
	return best;
}

static bool is_udp(const dp_shard_t *s, uint32_t u)
{
	return s->cfg->upstream[u].transport == DP_UP_UDP;
}

/* The connection of upstream u for a query: a UDP socket of a udp://
 * upstream, a stream connection of the others. */
static uint32_t pick_conn(dp_shard_t *s, uint32_t u, uint32_t len)
{
	return pick_conn_of(s, u, len, is_udp(s, u), DP_NONE);
}

/* ---- sending --------------------------------------------------------------- */

/* Write query qi on ready connection ci under upstream ID id (the primary
 * copy, or a hedge). -ENOBUFS when the connection is full. */
static int write_query(dp_shard_t *s, uint32_t ci, uint32_t qi, uint16_t id, bool hedge)
{
	dp_query_t *q = &s->q[qi];
	dp_upconn_t *c = &s->upc.c[ci];
	int rc = dp_upconn_write(s, ci, q->wire, q->len, id,
				 (uint16_t)dp_edns_padded_opt_off(&q->view));
	if (rc < 0)
		return rc;
	if (c->kind == UK_UDP && ++c->nsent >= DP_UPCONN_UDP_QUERIES)
		c->retired = true; /* time for another port */
	M_INC(s->metrics.up[c->upstream].sent);
	if (hedge) {
		q->hedge_start_ns = dp_now_ns();
	} else {
		q->state = Q_SENT;
		q->start_ns = dp_now_ns();
		if (s->pool.hedge_budget < HEDGE_RATIO * HEDGE_BURST)
			s->pool.hedge_budget++;
	}
	STAT_INC(s, upstream_sent);
	return 0;
}

/* A client query just went to upstream u: count it, and arm its hedge
 * timer (a hedge may follow if the answer is late, once per query). */
static void note_client_query(dp_shard_t *s, uint32_t qi, uint32_t u)
{
	dp_query_t *q = &s->q[qi];
	s->pool.up[u].last_traffic_ms = s->now_ms;
	if (s->pool.up[u].sent < UINT32_MAX)
		s->pool.up[u].sent++;
	/* A second upstream to ask, or a UDP upstream to ask again. */
	bool again = s->cfg->zone[q->zone].nup > 1 || is_udp(s, u);
	if (s->cfg->hedge_ms != 0 && again && !q->hedged && !dp_tw_armed(&q->hedge_t)) {
		/* The delay in force now (auto: it moves every tick): the
		 * wheel keeps hedges in order whatever it was. */
		uint64_t at = s->now_ms + (s->cfg->hedge_ms > 0 ? (uint32_t)s->cfg->hedge_ms
								: s->pool.hedge_delay_ms[q->zone]);
		dp_tw_entry_init(&q->hedge_t, on_hedge_due);
		dp_tw_add(&s->timers, &q->hedge_t, at);
	}
}

/* Put query qi on connection ci: an ID, its list, and the batch when the
 * connection is ready (else it goes out once the handshake is done). */
static int assign(dp_shard_t *s, uint32_t qi, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	dp_query_t *q = &s->q[qi];
	if (c->state == C_READY && !dp_upconn_has_room(c, q->len)) {
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
	if (q->client.transport != T_NONE)
		note_client_query(s, qi, c->upstream);
	if (c->state == C_READY)
		return write_query(s, ci, qi, q->up_id, false);
	return 0;
}

int dp_pool_send_on(dp_shard_t *s, uint32_t qi, uint32_t ci)
{
	/* A probe: of the zone of the upstream it checks. */
	s->q[qi].zone = s->cfg->upstream[s->upc.c[ci].upstream].zone;
	if (s->upc.c[ci].state == C_DOWN) {
		int rc = dp_upconn_start(s, ci);
		if (rc < 0)
			return rc;
	}
	return assign(s, qi, ci);
}

int dp_pool_send(dp_shard_t *s, uint32_t qi, int exclude)
{
	/* Never again an upstream that answered this query with SERVFAIL. */
	uint32_t skip = s->q[qi].servfailed | (exclude >= 0 ? 1u << exclude : 0);
	uint32_t z = s->q[qi].zone;
	for (int attempt = 0; attempt < s->cfg->zone[z].nup; attempt++) {
		uint32_t u = pick_upstream(s, z, skip);
		if (u == DP_NONE)
			return -EHOSTUNREACH;
		uint32_t ci = pick_conn(s, u, s->q[qi].len);
		if (ci == DP_NONE)
			continue; /* that upstream is down or full now; try another */
		return assign(s, qi, ci);
	}
	return -EHOSTUNREACH;
}

/* A query left UDP socket ci: once it retired and nothing is left on it,
 * queue it to close at the end of the turn. */
static void note_left(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->kind != UK_UDP || !c->retired || c->drained || c->queries.count ||
	    c->hedges.count || c->state != C_READY)
		return;
	c->drained = true; /* once per socket: the array has room for all */
	s->pool.drained[s->pool.ndrained++] = ci;
}

static void hedge_detach(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	uint32_t ci = q->conn2;
	dp_upconn_t *c2 = &s->upc.c[ci];
	if (dp_idmap_get(&c2->ids, q->up_id2) == qi)
		dp_idmap_release(&c2->ids, q->up_id2);
	dp_list_remove(&c2->hedges, s->q, sizeof(dp_query_t), C2OFF, qi);
	q->conn2 = DP_NONE;
	note_left(s, ci);
}

void dp_pool_detach(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	if (q->conn != DP_NONE) {
		dp_upconn_t *c = &s->upc.c[q->conn];
		if (dp_idmap_get(&c->ids, q->up_id) == qi)
			dp_idmap_release(&c->ids, q->up_id);
		dp_list_remove(&c->queries, s->q, sizeof(dp_query_t), COFF, qi);
		note_left(s, q->conn);
		q->conn = DP_NONE;
	}
	if (q->conn2 != DP_NONE)
		hedge_detach(s, qi);
	dp_tw_cancel(&s->timers, &q->hedge_t);
}

void dp_pool_end_turn(dp_shard_t *s)
{
	dp_pool_t *p = &s->pool;
	for (uint32_t k = 0; k < p->ndrained; k++) {
		uint32_t ci = p->drained[k];
		dp_upconn_t *c = &s->upc.c[ci];
		c->drained = false;
		/* Taken again meanwhile (nothing else was free): kept. */
		if (c->state == C_READY && !c->queries.count && !c->hedges.count)
			dp_upconn_fail(s, ci, false, "upstream socket retired", "a fresh port takes over");
	}
	p->ndrained = 0;
	dp_upconn_flush(s);
}

/* The hedge delay of a query is up (its timer on the shard's wheel fired,
 * in deadline order): ask another upstream too, budget permitting. */
static void on_hedge_due(dp_tw_entry_t *e, void *arg)
{
	dp_shard_t *s = arg;
	dp_query_t *q = DP_CONTAINER_OF(e, dp_query_t, hedge_t);
	uint32_t qi = (uint32_t)(q - s->q);
	if (q->conn == DP_NONE || q->hedged || q->conn2 != DP_NONE ||
	    s->pool.hedge_budget < HEDGE_RATIO)
		return;
	uint32_t first = s->upc.c[q->conn].upstream;
	uint32_t u = pick_upstream(s, q->zone, q->servfailed | 1u << first);
	uint32_t ci;
	if (u != DP_NONE)
		ci = pick_conn(s, u, q->len);
	else if (s->upc.c[q->conn].kind == UK_UDP) /* lost? again, from another port */
		ci = pick_conn_of(s, first, q->len, true, q->conn);
	else
		return;
	if (ci == DP_NONE)
		return;
	dp_upconn_t *c = &s->upc.c[ci];
	int id = dp_idmap_take(&c->ids, qi);
	if (id < 0)
		return;
	s->pool.hedge_budget -= HEDGE_RATIO;
	q->hedged = true;
	q->conn2 = ci;
	q->up_id2 = (uint16_t)id;
	dp_list_push_tail(&c->hedges, s->q, sizeof(dp_query_t), C2OFF, qi);
	STAT_INC(s, hedges_sent);
	if (c->state == C_READY) {
		if (write_query(s, ci, qi, q->up_id2, true) < 0)
			hedge_detach(s, qi); /* full (pick_conn checked): keep the books right */
	} else {
		q->hedge_start_ns = dp_now_ns(); /* sent once the handshake is done */
	}
}

/* ---- what connections report (dp_upconn_ops_t) ----------------------------- */

/* Upstream u is healthy: a handshake, a TCP connect or a UDP answer. */
static void note_up(dp_shard_t *s, uint32_t u)
{
	dp_upstream_state_t *st = &s->pool.up[u];
	st->ever_up = true;
	st->fails = 0;
	st->down_until_ms = 0;
}

/* Handshake done: the upstream is healthy; send what queued while it
 * connected. What does not fit is answered SERVFAIL (a hedge copy is
 * dropped: its primary lives on). */
static void on_ready(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->kind != UK_UDP) /* a UDP socket proves nothing until an answer */
		note_up(s, c->upstream);
	uint32_t next;
	for (uint32_t qi = c->queries.head; qi != DP_NONE; qi = next) {
		next = s->q[qi].clink.next;
		if (s->q[qi].state == Q_PENDING && write_query(s, ci, qi, s->q[qi].up_id, false) < 0)
			s->pool.sink->fail(s, qi);
	}
	for (uint32_t qi = c->hedges.head; qi != DP_NONE; qi = next) {
		next = s->q[qi].c2link.next;
		if (write_query(s, ci, qi, s->q[qi].up_id2, true) < 0)
			hedge_detach(s, qi);
	}
}

/* The query ID of msg on connection ci, if it is in flight there: the
 * query slot, and whether it is the hedge copy; DP_NONE otherwise (late:
 * timed out, answered, or the slot reused since). */
static uint32_t match_id(dp_shard_t *s, uint32_t ci, uint16_t id, bool *hedge)
{
	uint32_t qi = dp_idmap_get(&s->upc.c[ci].ids, id);
	if (qi >= s->q_hiwater)
		return DP_NONE;
	const dp_query_t *q = &s->q[qi];
	*hedge = false;
	if (q->conn == ci && q->up_id == id && q->state == Q_SENT)
		return qi;
	*hedge = true;
	if (q->conn2 == ci && q->up_id2 == id)
		return qi;
	return DP_NONE;
}

/* Query qi's answer from UDP upstream u was truncated: ask u again over
 * TCP, as a stub resolver does (RFC 7766 5); both copies on UDP go. */
static void retry_over_tcp(dp_shard_t *s, uint32_t qi, uint32_t u)
{
	STAT_INC(s, upstream_tc_retries);
	dp_pool_detach(s, qi);
	s->q[qi].hedged = true; /* the TCP answer is the one to wait for */
	uint32_t ci = pick_conn_of(s, u, s->q[qi].len, false, DP_NONE);
	if (ci == DP_NONE || assign(s, qi, ci) < 0)
		s->pool.sink->fail(s, qi);
}

/* One message from connection ci: the answer to the query it names by ID,
 * if that query is in flight there and the question is the same. */
static void on_message(dp_shard_t *s, uint32_t ci, uint8_t *msg, size_t len)
{
	dp_upconn_t *c = &s->upc.c[ci];
	bool hedge;
	if (len < DP_DNS_HDR_LEN) {
		STAT_INC(s, upstream_malformed);
		return;
	}
	uint32_t qi = match_id(s, ci, dp_rd16(msg), &hedge);
	if (qi == DP_NONE) {
		STAT_INC(s, upstream_bad_id);
		return;
	}
	dp_query_t *q = &s->q[qi];
	dp_dns_answer_t ans;
	const dp_dns_view_t *v = &ans.v;
	if (dp_dns_parse_answer_rrs(msg, len, &ans) < 0) {
		/* Unusable answer to a query we know: fail it now rather than
		 * leave the client waiting for the deadline. */
		STAT_INC(s, upstream_malformed);
		s->pool.sink->fail(s, qi);
		return;
	}
	if (!dp_dns_question_equal(q->wire, &q->view, msg, v) ||
	    !dp_upconn_case_ok(s, ci, msg, len)) {
		STAT_INC(s, upstream_bad_question);
		return;
	}
	c->got_answer = true;
	c->last_used_ms = s->now_ms;
	if (v->opt_keepalive && v->keepalive)
		c->keepalive_ms = v->keepalive * 100u;
	record_latency(s, c->upstream, dp_now_ns() - (hedge ? q->hedge_start_ns : q->start_ns));
	s->pool.up[c->upstream].timeouts_in_row = 0;
	if (c->kind == UK_UDP && unlikely(!s->pool.up[c->upstream].ever_up ||
					  s->pool.up[c->upstream].fails))
		note_up(s, c->upstream);
	STAT_INC(s, upstream_answers);
	M_INC(s->metrics.up[c->upstream].answers);
	if (c->kind == UK_UDP && (v->flags & DP_DNS_F_TC)) {
		retry_over_tcp(s, qi, c->upstream);
		return;
	}
	if (hedge)
		STAT_INC(s, hedge_wins);
	s->pool.sink->answer(s, qi, msg, len, &ans, c->upstream);
}

/* Query qi's connection failed and its hedge copy is in flight on another:
 * that copy becomes the primary, nothing is sent again. */
static void promote_hedge(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	dp_upconn_t *c2 = &s->upc.c[q->conn2];
	dp_list_remove(&c2->hedges, s->q, sizeof(dp_query_t), C2OFF, qi);
	q->conn = q->conn2;
	q->up_id = q->up_id2;
	q->start_ns = q->hedge_start_ns;
	q->conn2 = DP_NONE;
	/* Sent only if its connection was ready; otherwise it goes out with
	 * the others once the handshake is done. */
	q->state = c2->state == C_READY ? Q_SENT : Q_PENDING;
	dp_list_push_tail(&c2->queries, s->q, sizeof(dp_query_t), COFF, qi);
}

/* Query qi was on failed connection ci (already off its list): keep it
 * alive elsewhere, or answer SERVFAIL when it was sent and re-sent before
 * (each query is re-sent at most once). */
static void requeue(dp_shard_t *s, uint32_t ci, uint32_t qi, int exclude)
{
	dp_query_t *q = &s->q[qi];
	q->clink.prev = q->clink.next = DP_NONE;
	q->conn = DP_NONE;
	dp_idmap_release(&s->upc.c[ci].ids, q->up_id);
	bool was_sent = q->state == Q_SENT;
	if (q->conn2 != DP_NONE) {
		promote_hedge(s, qi);
		return;
	}
	if (was_sent && q->resent) {
		s->pool.sink->fail(s, qi);
		return;
	}
	if (was_sent) {
		q->resent = 1;
		STAT_INC(s, upstream_resent);
	}
	if (dp_pool_send(s, qi, exclude) < 0)
		s->pool.sink->fail(s, qi);
}

/* Connection ci is closing (health: count it against its upstream): its
 * queries go elsewhere, its hedge copies are dropped (their queries live
 * on through their primary copy). */
static void on_closed(dp_shard_t *s, uint32_t ci, bool health)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (health)
		note_failure(s, c->upstream);
	while (c->hedges.head != DP_NONE)
		hedge_detach(s, c->hedges.head);
	/* Take the query list out first: re-sending may pick this very slot
	 * again (it reconnects after closing) and push onto its list. */
	uint32_t qi = c->queries.head;
	c->queries = DP_LIST_EMPTY;
	int exclude = health ? (int)c->upstream : -1;
	while (qi != DP_NONE) {
		uint32_t next = s->q[qi].clink.next;
		requeue(s, ci, qi, exclude);
		qi = next;
	}
}

/* Connection ci is closed and its slot free: queries (or hedge copies) put
 * on it while it closed want it connected again; when it cannot be, the
 * queries get SERVFAIL and the hedge copies are dropped. */
static void on_down(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if ((!c->queries.count && !c->hedges.count) || s->stop)
		return;
	int rc = upstream_down(s, c->upstream) ? -EHOSTUNREACH : dp_upconn_start(s, ci);
	if (rc == 0)
		return;
	while (c->hedges.head != DP_NONE)
		hedge_detach(s, c->hedges.head);
	while (c->queries.head != DP_NONE)
		s->pool.sink->fail(s, c->queries.head);
}

static const dp_upconn_ops_t conn_ops = {
	.ready = on_ready,
	.message = on_message,
	.closed = on_closed,
	.down = on_down,
};

/* ---- timeouts, ticks, reload ------------------------------------------------ */

void dp_pool_note_timeout(dp_shard_t *s, uint32_t ci)
{
	uint32_t u = s->upc.c[ci].upstream;
	M_INC(s->metrics.up[u].timeouts);
	record_latency(s, u, (uint64_t)s->cfg->timeout_ms * 1000000ull);
	if (++s->pool.up[u].timeouts_in_row >= TIMEOUTS_DOWN && s->upc.c[ci].state == C_READY) {
		s->pool.up[u].timeouts_in_row = 0;
		dp_upconn_fail(s, ci, true, "upstream not answering", "consecutive queries timed out");
	}
}

/* Per tick for UDP socket ci: closed once nothing is in flight on it and
 * it retired (its port served its share) or was not used for a while. */
static void expire_udp(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->state != C_READY || c->queries.count || c->hedges.count)
		return;
	if (c->retired || s->now_ms - c->last_used_ms >= UDP_IDLE_MS)
		dp_upconn_fail(s, ci, false, "upstream socket retired", "a fresh port takes over");
}

/* Per tick for connection ci: fail it when its upstream stopped reading;
 * when idle, act just before the upstream's own idle timeout would close
 * it under us. Still in use lately: ride the live session with a probe,
 * which keeps it open and checks health without a new handshake. Unused:
 * close it ourselves, cleanly. */
static void expire_conn(dp_shard_t *s, uint32_t ci)
{
	dp_upconn_t *c = &s->upc.c[ci];
	if (c->kind == UK_UDP) {
		expire_udp(s, ci);
		return;
	}
	if (dp_upconn_stalled(s, c, stall_ms(s))) {
		STAT_INC(s, upstream_write_stalled);
		dp_upconn_fail(s, ci, true, "upstream not reading", "a send took no byte in time");
		return;
	}
	if (c->state != C_READY || c->queries.count || c->hedges.count)
		return;
	uint32_t limit = c->keepalive_ms ? c->keepalive_ms : s->cfg->upstream_idle_ms;
	uint32_t margin = DP_MIN(1000u, limit / 4);
	if (s->now_ms - c->last_used_ms + margin < limit)
		return;
	/* (The TCP connection of a udp:// upstream, for truncated answers, is
	 * not worth keeping: its upstream's traffic is UDP.) */
	bool retry_conn = c->kind == UK_TCP && is_udp(s, c->upstream);
	if (!retry_conn && s->now_ms - s->pool.up[c->upstream].last_traffic_ms < PROBE_RECENT_MS) {
		if (s->pool.sink->probe(s, ci) == 0)
			STAT_INC(s, probes_sent);
	} else {
		STAT_INC(s, upstream_idle_closed);
		dp_upconn_fail(s, ci, false, "upstream connection idle", "closed before its idle timeout");
	}
}

void dp_pool_expire(dp_shard_t *s)
{
	for (uint32_t ci = 0; ci < s->upc.n; ci++)
		expire_conn(s, ci);
	/* Auto hedge delay, per zone: an answer is late when the zone's best
	 * upstream would have answered by now, i.e. the smallest p95 of its
	 * upstreams that have enough samples (default until one has). */
	uint32_t best[DP_MAX_ZONES] = { 0 };
	for (int u = 0; u < s->cfg->nupstream; u++) {
		dp_upstream_state_t *st = &s->pool.up[u];
		uint32_t z = s->cfg->upstream[u].zone;
		update_hedge_delay(s, (uint32_t)u);
		if (st->hist_n >= HEDGE_SAMPLES && (best[z] == 0 || st->hedge_ms < best[z]))
			best[z] = st->hedge_ms;
	}
	for (int z = 0; z < s->cfg->nzones; z++)
		s->pool.hedge_delay_ms[z] = best[z] ? best[z] : HEDGE_DEFAULT_MS;
	for (int u = 0; u < s->cfg->nupstream; u++) {
		/* Down and its backoff is over: probe it now rather than wait for
		 * a client's query to find out. */
		dp_upstream_state_t *st = &s->pool.up[u];
		uint32_t ci = dp_upconn_first(&s->upc, (uint32_t)u, is_udp(s, (uint32_t)u));
		if (st->fails && st->down_until_ms && s->now_ms >= st->down_until_ms &&
		    s->upc.c[ci].state == C_DOWN) {
			st->down_until_ms = 0;
			if (s->pool.sink->probe(s, ci) == 0)
				STAT_INC(s, probes_sent);
		}
	}
}

void dp_pool_publish(dp_shard_t *s)
{
	for (int u = 0; u < s->cfg->nupstream; u++) {
		const dp_upstream_state_t *st = &s->pool.up[u];
		uint64_t inflight = 0;
		for (uint32_t k = 0; k < s->upc.per_upstream; k++)
			inflight += s->upc.c[st->first_conn + k].queries.count;
		M_SET(s->metrics.up[u].inflight, inflight);
		/* 2: failing (until a handshake succeeds again, probes
		 * included), 1: up, 0: not tried by this shard yet. */
		M_SET(s->metrics.up[u].healthy, st->fails ? 2 : st->ever_up ? 1 : 0);
	}
}

static bool same_zone(const dp_zone_cfg_t *a, const dp_zone_cfg_t *b)
{
	return a->wire_len == b->wire_len && memcmp(a->wire, b->wire, a->wire_len) == 0;
}

/* Whether upstream u of the old config and of the new one (s->cfg) are
 * the same server, spoken to the same way, for the same zone. */
static bool same_upstream(const dp_shard_t *s, const dp_config_t *old, int u)
{
	const dp_upstream_cfg_t *a = &old->upstream[u], *b = &s->cfg->upstream[u];
	return a->addr.len == b->addr.len && memcmp(&a->addr.ss, &b->addr.ss, a->addr.len) == 0 &&
	       strcmp(a->name, b->name) == 0 && a->npins == b->npins && a->no_ca == b->no_ca &&
	       memcmp(a->pins, b->pins, sizeof(a->pins)) == 0 && a->transport == b->transport &&
	       same_zone(&old->zone[a->zone], &s->cfg->zone[b->zone]);
}

/* Upstream slot u may now be a different server: fresh state, and its
 * queries move to the upstreams of the new config. */
static void reset_upstream(dp_shard_t *s, uint32_t u)
{
	dp_upstream_state_t *st = &s->pool.up[u];
	dp_upconn_forget_session(s, u);
	uint32_t first = st->first_conn;
	memset(st, 0, sizeof(*st));
	st->first_conn = first;
	st->hedge_ms = s->cfg->hedge_ms > 0 ? (uint32_t)s->cfg->hedge_ms : HEDGE_DEFAULT_MS;
	memset(&s->metrics.up[u], 0, sizeof(s->metrics.up[u]));
	for (uint32_t k = 0; k < s->upc.per_upstream; k++) {
		uint8_t state = s->upc.c[first + k].state;
		if (state != C_DOWN && state != C_CLOSING)
			dp_upconn_fail(s, first + k, false, "upstream reconfigured", "reload");
	}
}

/* The zones may have changed: every query in the table takes the route of
 * the new config (a probe the zone of the upstream it checks), before
 * any of them is sent again; a zone's counter restarts under a new name. */
static void reroute(dp_shard_t *s, const dp_config_t *old)
{
	const dp_config_t *cfg = s->cfg;
	for (int z = 0; z < DP_MAX_ZONES; z++)
		if (z >= cfg->nzones || z >= old->nzones || !same_zone(&old->zone[z], &cfg->zone[z]))
			M_SET(s->metrics.zone_queries[z], 0);
	for (uint32_t qi = 0; qi < s->q_hiwater; qi++) {
		dp_query_t *q = &s->q[qi];
		if (q->state == Q_FREE)
			continue;
		q->zone = (uint8_t)dp_route_zone(cfg, q->wire + q->view.qname_off, q->view.qname_len);
		if (q->client.transport == T_NONE && !q->key_hash && q->conn != DP_NONE)
			q->zone = cfg->upstream[s->upc.c[q->conn].upstream].zone;
	}
}

void dp_pool_reconfigure(dp_shard_t *s, const dp_config_t *old)
{
	const dp_config_t *cfg = s->cfg;
	reroute(s, old);
	bool ca_changed = strcmp(old->ca_file, cfg->ca_file) != 0 ||
			  old->tls_min_version != cfg->tls_min_version;
	int n = DP_MAX(old->nupstream, cfg->nupstream);
	for (int u = 0; u < n; u++) {
		if (u >= old->nupstream || u >= cfg->nupstream || ca_changed ||
		    !same_upstream(s, old, u))
			reset_upstream(s, (uint32_t)u);
	}
}
