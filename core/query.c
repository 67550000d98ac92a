/* query.c - a query's path between its frontend and the upstreams: the
 * cache, coalescing, prefetch, serve-stale and the fair share around the
 * query table (qtable.c holds the slots and the in-flight index).
 *
 * Owns: every live query's deadline timer on the shard's timer wheel, the
 * fair-share counts (clientshare.h), the shard's answer cache and the
 * scratch buffer answers are built in. Every query leaves the table through
 * exactly one of dp_query_answer() and dp_query_fail(), so every query gets
 * exactly one answer.
 *
 * Path of a query (dp_query_from_client): validate -> ACL, rate limit (UDP)
 * -> its home is another shard? hand it over (handoff.c) -> resolve: cache
 * hit? answer from the cache -> fair share -> a slot -> same question
 * already upstream? wait for it (coalesced) -> otherwise pad it and hand it
 * to an upstream connection. Each shard caches and coalesces only the
 * questions it is home for, so the shards' caches and in-flight tables
 * together are one per machine. A query handed to us enters at resolve
 * (dp_query_from_shard, called by the hand-off through s->xs_deliver).
 *
 * Clients (client-t.h): the frontend that read the query names its client
 * (dp_client_t), which the slot keeps; answers go only through the ops of
 * the client's transport, s->fe[transport] (a UDP datagram, a TCP
 * connection of this shard, or one of another shard through the hand-off).
 * Nothing here calls a frontend directly.
 *
 * What makes a question: name, type, class, DO, CD, and with --forward-ecs
 * the client's subnet; the query sent upstream carries nothing else of the
 * client's (edns.h: no client option; AD always set, RFC 6840 5.7), so one
 * answer is right for every client that asks the same question, and the
 * cache and the in-flight table can share it. Per-client parts (ID,
 * spelling, RD, AD, EDNS) are fitted to each client on the way out.
 *
 * Fair share (clientshare.h): a client address may fill the table while no
 * one else needs it; when it is nearly full, an address at its share is
 * refused a slot (UDP: SERVFAIL; TCP: the query is handed back, and the
 * connection waits: tcpconn.h), and one under it takes the oldest query of
 * the address furthest over its share when no slot is free.
 *
 * SERVFAIL from an upstream: the query goes to an upstream that has not
 * failed it yet; when none is left, the SERVFAIL is cached for
 * --servfail-ttl (RFC 9520) and the clients get a stale answer instead when
 * the cache has one (RFC 8767).
 */
#include "answer.h"
#include "edns.h"
#include "query.h"
#include "handoff.h"
#include "qtable.h"
#include "route.h"
#include "pool.h"
#include "home.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define QOFF_C offsetof(dp_query_t, clink)
#define SCRATCH_SIZE 65536
_Static_assert(SCRATCH_SIZE >= DP_DNS_MAX_MSG, "scratch holds any answer");
/* Reclaiming for the fair share skips queries other clients wait on
 * (coalesced behind them): it looks at this many of the victim's oldest. */
#define RECLAIM_TRIES 4

_Static_assert(DP_MAX_UPSTREAMS <= 32, "dp_query_t.servfailed has a bit per upstream");
_Static_assert(DP_MAX_ZONES <= 256, "dp_query_t.zone is an octet");

/* Probes and prefetches: no one to answer. */
static const dp_client_t no_client = { .transport = T_NONE };

int dp_query_table_init(dp_shard_t *s)
{
	int rc = dp_qtable_init(s);
	if (rc < 0)
		return rc;
	s->scratch = malloc(SCRATCH_SIZE);
	if (!s->scratch || dp_cshare_init(&s->share, s->q_cap) < 0)
		return -ENOMEM;
	size_t cache_bytes = (size_t)s->cfg->cache_mb * 1024 * 1024 / (size_t)s->cfg->threads;
	s->cache_on = cache_bytes > 0;
	return dp_cache_init(&s->cache, cache_bytes, s->cfg->cache_min_ttl, s->cfg->cache_max_ttl,
			     s->cfg->stale_ttl);
}

void dp_query_table_free(dp_shard_t *s)
{
	dp_cache_destroy(&s->cache);
	dp_cshare_free(&s->share);
	free(s->scratch);
	s->scratch = NULL;
	dp_qtable_free(s);
}

/* The cache key of query q (as resolve made it). */
static void query_key(const dp_query_t *q, dp_cache_key_t *k)
{
	dp_cache_key(q->wire, &q->view, k);
	if (q->ecs_len)
		dp_cache_key_ecs(k, q->ecs, q->ecs_len);
}

/* The largest UDP answer the client of query v takes. */
static uint16_t udp_limit(const dp_shard_t *s, const dp_dns_view_t *v)
{
	return v->has_opt ? DP_MIN(v->udp_size, s->cfg->max_udp_size) : 512;
}

/* ---- a query's slot --------------------------------------------------------- */

static void on_deadline(dp_tw_entry_t *e, void *arg);

/* Free slot qi: off its connection, its timers, its fair-share count and
 * its client's count of queries in flight. */
static void query_free(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	if (q->conn != DP_NONE)
		dp_pool_detach(s, qi);
	dp_tw_cancel(&s->timers, &q->deadline_t);
	dp_tw_cancel(&s->timers, &q->hedge_t);
	dp_cshare_del(&s->share, qi);
	if (q->client.transport != T_NONE && s->fe[q->client.transport]->query_end)
		s->fe[q->client.transport]->query_end(s, &q->client);
	dp_qtable_put(s, qi);
}

/* ---- answering a client (through its frontend's ops) ------------------------ */

/* What answers to an encrypted stream client with EDNS carry besides
 * (answer.h): Padding to 468-octet blocks (RFC 8467), and for DNS-over-TLS
 * edns-tcp-keepalive with our idle timeout (not over HTTPS: the option is
 * DNS-over-TCP's, and an HTTP cache could hand the answer to others).
 * Plain TCP answers are left as they were before the TLS listener, byte
 * for byte: no keepalive even when asked (RFC 7828 lets a server not
 * announce it). */
static void fit_stream(const dp_shard_t *s, const dp_client_t *c, const dp_dns_view_t *qv,
		       dp_answer_client_t *cl)
{
	if (c->transport == T_UDP || c->transport == T_NONE || !qv->has_opt ||
	    !dp_client_encrypted(c))
		return;
	cl->keepalive_on = !(c->li & DP_LI_HTTPS);
	cl->keepalive = (uint16_t)DP_MIN(s->cfg->tcp_idle_ms / 100, 65535u);
	cl->pad_block = DP_EDNS_ANSWER_BLOCK;
}

/* Send msg to client c through its frontend. Answers come fitted to the
 * client's UDP size already (dp_answer_personalise), and the errors we
 * build are never too long. */
static void reply(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, size_t len)
{
	if (c->transport == T_NONE)
		return;
	if (len >= DP_DNS_HDR_LEN) {
		unsigned rc = msg[3] & 0xf;
		M_INC(s->metrics.rcode[rc <= 5 ? rc : 6]);
	}
	s->fe[c->transport]->answer(s, c, msg, len);
}

static void reply_q(dp_shard_t *s, dp_query_t *q, uint8_t *msg, size_t len)
{
	reply(s, &q->client, msg, len);
}

/* Answer client c's query q (view v) with an error rcode; when none can be
 * built, the frontend still hears that the query ended. */
static void reply_error(dp_shard_t *s, const dp_client_t *c, const uint8_t *q,
			const dp_dns_view_t *v, int rcode)
{
	uint8_t out[1024];
	int n = dp_dns_build_error(q, v, rcode, s->cfg->max_udp_size, out, 512);
	dp_answer_client_t cl = { 0 };
	fit_stream(s, c, v, &cl);
	if (n > 0 && v->has_opt && (cl.keepalive_on || cl.pad_block))
		n = (int)dp_edns_stream_answer(out, (size_t)n, sizeof(out), (size_t)n - 11,
					       cl.keepalive_on ? cl.keepalive : -1, cl.pad_block);
	if (n > 0)
		reply(s, c, out, (size_t)n);
	else if (c->transport != T_NONE)
		s->fe[c->transport]->answer(s, c, NULL, 0);
}

/* Answer client c (its query msg, view v, UDP size limit) from the cache
 * entry e (fresh, or stale: TTL 30). */
static void reply_cached(dp_shard_t *s, const uint8_t *msg, const dp_dns_view_t *v,
			 const dp_client_t *c, uint16_t limit, dp_cache_entry_t *e, bool stale)
{
	dp_answer_src_t src;
	dp_cache_entry_src(e, s->now_ms, stale, &src);
	/* No subnet: the entry's OPT is the key's already (src.scrubbed). */
	dp_answer_client_t cl = { .q = msg, .qv = v,
				  .udp_limit = c->transport == T_UDP ? limit : 0 };
	fit_stream(s, c, v, &cl);
	bool tc;
	int n = dp_answer_personalise(&src, &cl, s->scratch, SCRATCH_SIZE, &tc);
	if (n < 0) {
		STAT_INC(s, servfail);
		reply_error(s, c, msg, v, DP_DNS_RCODE_SERVFAIL);
		return;
	}
	if (tc)
		STAT_INC(s, udp_truncated);
	STAT_INC(s, answers);
	reply(s, c, s->scratch, (size_t)n);
}

#ifdef DP_BENCH_DELAY_US
/* Test builds only: a deliberately slower dotproxy, so the bench suite's
 * regression gate can be shown to trip. */
static void bench_delay(void)
{
	uint64_t end = dp_now_ns() + DP_BENCH_DELAY_US * 1000ull;
	while (dp_now_ns() < end)
		;
}
#endif

/* Query q's upstream form: msg padded, with the forwarded subnet (q->ecs,
 * set first). Allocates when it does not fit inline. Returns 0, or a
 * negative code (q->wire is then the inline buffer). */
static int query_wire(dp_query_t *q, const uint8_t *msg, const dp_dns_view_t *v)
{
	/* Room for the query with its OPT moved last (11), keepalive (4),
	 * padding option header (4) and up to a block of padding (the subnet
	 * forwarded is never longer than the client's option it came from). */
	size_t need = (size_t)v->msg_end + 11 + 4 + 4 + DP_EDNS_QUERY_BLOCK;
	q->wire = need <= DP_QUERY_INLINE ? q->inline_wire : malloc(need);
	int plen = q->wire ? dp_edns_pad_query(msg, v, q->ecs_len ? q->ecs : NULL, q->ecs_len,
					       DP_EDNS_QUERY_BLOCK, q->wire, need)
			   : -ENOMEM;
	if (unlikely(plen < 0)) {
		if (q->wire != q->inline_wire)
			free(q->wire);
		q->wire = q->inline_wire;
		return plen;
	}
	q->len = (uint16_t)plen;
	/* AD asked of every upstream: the answer then says whether the data is
	 * authentic whatever the client set, and the cache strips AD for
	 * clients that set neither AD nor DO (RFC 6840 5.7). */
	q->wire[3] |= DP_DNS_F_AD;
	return 0;
}

/* Fill slot qi for client c's query msg (view v; key_hash its cache key's,
 * 0 without a cache; ecs the subnet forwarded) and arm its deadline.
 * Returns 0, or a negative code when the query cannot be stored (the slot
 * is then free). */
static int query_setup(dp_shard_t *s, uint32_t qi, const dp_client_t *c, const uint8_t *msg,
		       const dp_dns_view_t *v, uint64_t key_hash, const uint8_t *ecs,
		       size_t ecs_len)
{
	dp_query_t *q = &s->q[qi];
	q->conn = DP_NONE;
	q->in_table = false;
	q->clink.prev = q->clink.next = DP_NONE;
	q->waiters = (dp_list_t){ DP_NONE, DP_NONE, 0 };
	q->leader = DP_NONE;
	q->conn2 = DP_NONE;
	q->hedged = false;
	dp_tw_entry_init(&q->deadline_t, on_deadline);
	dp_tw_entry_init(&q->hedge_t, NULL); /* upstream.c arms it */
	q->ecs_len = (uint8_t)ecs_len;
	if (ecs_len)
		memcpy(q->ecs, ecs, ecs_len);
	int rc = query_wire(q, msg, v);
	if (unlikely(rc < 0)) {
		q->client.transport = T_NONE;
		query_free(s, qi);
		return rc;
	}
	q->view = *v;
	q->state = Q_PENDING;
	q->resent = 0;
	q->client_id = v->id;
	q->key_hash = key_hash;
	q->servfailed = 0;
	q->zone = 0; /* routed by the caller, which has the zone already (route.h) */
	q->client_udp_limit = udp_limit(s, v);
	/* The timeout in force now: after a reload that shortened it, this
	 * deadline comes before those of older queries, and the wheel fires
	 * it first. */
	q->deadline_ms = s->now_ms + s->cfg->timeout_ms;
	q->start_ns = 0;
	q->client = *c;
	if (c->transport != T_NONE) {
		if (!c->arrive_ns)
			q->client.arrive_ns = dp_now_ns();
		if (s->fe[c->transport]->query_begin)
			s->fe[c->transport]->query_begin(s, c);
	}
	dp_tw_add(&s->timers, &q->deadline_t, q->deadline_ms);
	return 0;
}

/* Refresh a popular entry before it expires: a query with no client whose
 * answer only goes into the cache. Identical client queries that miss in
 * the meantime coalesce onto it. */
static void prefetch(dp_shard_t *s, const uint8_t *msg, const dp_dns_view_t *v,
		     const dp_cache_key_t *key)
{
	uint32_t qi = dp_qtable_alloc(s);
	if (qi == DP_NONE)
		return;
	if (query_setup(s, qi, &no_client, msg, v, key->hash, key->ecs, key->ecs_len) < 0)
		return;
	s->q[qi].zone = (uint8_t)dp_route_zone(s->cfg, msg + v->qname_off, v->qname_len);
	if (dp_qtable_flight_find(s, &s->q[qi]) != DP_NONE) {
		query_free(s, qi);
		return;
	}
	dp_qtable_flight_add(s, qi);
	STAT_INC(s, cache_prefetched);
	if (dp_pool_send(s, qi, -1) < 0)
		query_free(s, qi); /* no client to tell */
}

/* A client query is being answered (from the cache, upstream, or with an
 * error): count its type and its zone. Returns the zone (route.h). */
static uint32_t count_qtype(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
			    const dp_dns_view_t *v)
{
	int t = c->transport == T_UDP	 ? DP_MT_UDP
		: !dp_client_encrypted(c) ? DP_MT_TCP
		: (c->li & DP_LI_HTTPS)	 ? DP_MT_HTTPS
					 : DP_MT_TLS;
	uint32_t zone = dp_route_zone(s->cfg, msg + v->qname_off, v->qname_len);
	M_INC(s->metrics.qtype[t][dp_metrics_qtype_class(v->qtype)]);
	M_INC(s->metrics.zone_queries[zone]);
	return zone;
}

/* Fair share (clientshare.h): whether client address k may take a slot now.
 * When the table is full and k is under its share, the oldest query of the
 * address furthest over its share is answered (SERVFAIL, or stale) to make
 * room; one that other clients' queries are coalesced behind is skipped. */
static bool admit(dp_shard_t *s, const dp_cshare_key_t *k)
{
	int d = dp_cshare_admit(&s->share, k, s->q_used);
	if (likely(d == DP_CSHARE_ADMIT))
		return true;
	if (d == DP_CSHARE_REFUSE)
		return false;
	uint32_t qi = dp_cshare_victim(&s->share);
	for (int i = 0; i < RECLAIM_TRIES && qi != DP_NONE; i++) {
		if (s->q[qi].waiters.count == 0) {
			STAT_INC(s, fair_reclaimed);
			dp_query_fail(s, qi);
			return true;
		}
		qi = dp_cshare_next(&s->share, qi);
	}
	return false;
}

/* ---- where a query comes in ------------------------------------------------- */

static int resolve(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, const dp_dns_view_t *v);

/* Rate limit's slip: header and question with TC=1, never larger than the
 * query; a real client retries over TCP, which is not limited. */
static void slip(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, const dp_dns_view_t *v)
{
	uint8_t out[512];
	int n = dp_dns_build_error(msg, v, DP_DNS_RCODE_NOERROR, s->cfg->max_udp_size, out,
				   sizeof(out));
	STAT_INC(s, ratelimit_tc);
	if (n > 0) {
		out[2] |= DP_DNS_F_TC >> 8;
		s->fe[T_UDP]->answer(s, c, out, (size_t)n);
	}
}

/* UDP client c's query (parsed: rc, v) against the ACL and the rate limit
 * (a TCP client passed the ACL when accepted, and cannot spoof its
 * address). Returns true when it goes on; else it was answered or dropped. */
static bool udp_admit(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
		      const dp_dns_view_t *v, int rc)
{
	const struct sockaddr *sa = (const struct sockaddr *)&c->addr;
	bool readable = rc != DP_E_MALFORMED && rc != DP_E_RESPONSE;
	if (unlikely(!dp_acl_allows(&s->cfg->acl, sa))) {
		STAT_INC(s, acl_refused);
		if (readable)
			reply_error(s, c, msg, v, DP_DNS_RCODE_REFUSED);
		return false;
	}
	if (!s->rl || !__atomic_load_n(&s->rl->rate, __ATOMIC_RELAXED) || !readable)
		return true;
	int r = dp_rl_check(s->rl, sa, s->now_ms);
	if (r == DP_RL_DROP) {
		STAT_INC(s, ratelimited);
		return false;
	}
	if (r == DP_RL_SLIP) {
		slip(s, c, msg, v);
		return false;
	}
	return true;
}

/* A query that did not validate (dp_dns_parse_query's rc): the error
 * answer it gets, or nothing for one unreadable or a response. */
static void answer_invalid(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
			   const dp_dns_view_t *v, int rc)
{
	switch (rc) {
	case DP_E_FORMERR:
		STAT_INC(s, formerr);
		reply_error(s, c, msg, v, DP_DNS_RCODE_FORMERR);
		break;
	case DP_E_NOTIMP:
		STAT_INC(s, notimp);
		reply_error(s, c, msg, v, DP_DNS_RCODE_NOTIMP);
		break;
	case DP_E_BADVERS:
		STAT_INC(s, badvers);
		reply_error(s, c, msg, v, DP_DNS_RCODE_BADVERS);
		break;
	default: /* unreadable, or a response: drop */
		STAT_INC(s, dropped);
		break;
	}
}

/* Hand the query to its home shard when that is another one. Returns true
 * when it went (the home answers it). The one extra cost of a query at
 * home: a SipHash of its name. A UDP query read off its home means the
 * steering program (steer.bpf.c) is not attached or did not agree with
 * home.h: zero while steering is on. Without a cache there is nothing to
 * share: no hand-off. */
static bool hand_to_home(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len,
			 const dp_dns_view_t *v)
{
	if (s->nshards <= 1 || !v->has_question)
		return false;
	uint32_t home = dp_home_shard(dp_home_hash(msg + v->qname_off, v->qname_len),
				      (uint32_t)s->nshards);
	if (home == (uint32_t)s->id)
		return false;
	if (c->transport == T_UDP)
		STAT_INC(s, udp_off_home);
	return s->cache_on && dp_handoff_query(s, home, c, msg, len) == 0;
}

int dp_query_from_client(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, size_t len)
{
#ifdef DP_BENCH_DELAY_US
	bench_delay();
#endif
	dp_dns_view_t v;
	int rc = dp_dns_parse_query(msg, len, &v);
	if (c->transport == T_UDP && !udp_admit(s, c, msg, &v, rc))
		return 0;
	if (unlikely(rc < 0)) {
		answer_invalid(s, c, msg, &v, rc);
		return 0;
	}
	if (hand_to_home(s, c, msg, len, &v))
		return 0;
	return resolve(s, c, msg, &v);
}

void dp_query_from_shard(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, size_t len)
{
	dp_dns_view_t v;
	if (unlikely(dp_dns_parse_query(msg, len, &v) < 0)) {
		/* It passed on the shard that read it: cannot happen. */
		STAT_INC(s, dropped);
		s->fe[c->transport]->answer(s, c, NULL, 0);
		return;
	}
	/* A TCP query over its share here gets SERVFAIL: the connection lives
	 * on the origin, which bounds what it hands over (DP_XS_TCP_CREDIT). */
	(void)resolve(s, c, msg, &v);
}

/* ---- the home shard's part: cache, fair share, coalescing, upstream --------- */

/* The client's subnet to forward (--forward-ecs) into ecs: its length, 0
 * when none, or negative when the client's option is malformed (then
 * answered FORMERR, RFC 7871 7.1.1). */
static int forwarded_subnet(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
			    const dp_dns_view_t *v, uint8_t *ecs)
{
	if (!v->opt_ecs || !s->cfg->forward_ecs)
		return 0;
	int n = dp_edns_ecs_read(msg, v, ecs);
	if (unlikely(n < 0)) {
		count_qtype(s, c, msg, v);
		STAT_INC(s, formerr);
		reply_error(s, c, msg, v, DP_DNS_RCODE_FORMERR);
	}
	return n;
}

/* Look key up in the cache: on a hit answer client c from it (and refresh
 * the entry when it is popular and about to expire). Returns true when
 * answered. */
static bool from_cache(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
		       const dp_dns_view_t *v, const dp_cache_key_t *key)
{
	bool stale;
	dp_cache_entry_t *e = dp_cache_lookup(&s->cache, key, s->now_ms, false, &stale);
	if (!e)
		return false;
	count_qtype(s, c, msg, v);
	STAT_INC(s, cache_hits);
	/* answered within this loop turn: counted in the lowest bucket, unless
	 * it came through a hand-off */
	dp_hist_observe(&s->metrics.client_lat,
			c->arrive_ns ? (dp_now_ns() - c->arrive_ns) / 1000 : 0);
	reply_cached(s, msg, v, c, udp_limit(s, v), e, false);
	if (dp_cache_prefetch_due(e, s->now_ms))
		prefetch(s, msg, v, key);
	return true;
}

/* Client c's address as the fair share counts it. */
static void share_key(const dp_client_t *c, dp_cshare_key_t *k)
{
	if (c->transport == T_UDP)
		dp_cshare_key_of((const struct sockaddr *)&c->addr, k);
	else
		*k = c->tcp.key;
}

/* The fair share refused client c (address k) a slot. A TCP client of this
 * shard waits: DP_E_FULL, and tcpconn holds the frame and pauses the
 * connection. Anyone else gets SERVFAIL (a TCP client of another shard:
 * its origin bounds what it hands over, DP_XS_TCP_CREDIT). */
static int refuse(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
		  const dp_dns_view_t *v, const dp_cshare_key_t *k)
{
	if (c->transport == T_TCP) {
		STAT_INC(s, fair_refused);
		return DP_E_FULL;
	}
	count_qtype(s, c, msg, v);
	bool alone = s->share.active == (dp_cshare_count(&s->share, k) > 0);
	if (alone && s->q_used >= s->q_cap)
		STAT_INC(s, inflight_full); /* no one else: the table is simply full */
	else
		STAT_INC(s, fair_refused);
	STAT_INC(s, servfail);
	reply_error(s, c, msg, v, DP_DNS_RCODE_SERVFAIL);
	return 0;
}

/* A slot for client c's query, filled: its index, or DP_NONE when the
 * table is full or the query cannot be stored (answered SERVFAIL). */
static uint32_t take_slot(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg,
			  const dp_dns_view_t *v, uint64_t key_hash, const uint8_t *ecs,
			  size_t ecs_len)
{
	uint32_t qi = dp_qtable_alloc(s);
	if (unlikely(qi == DP_NONE))
		STAT_INC(s, inflight_full);
	else if (likely(query_setup(s, qi, c, msg, v, key_hash, ecs, ecs_len) == 0))
		return qi;
	STAT_INC(s, servfail);
	reply_error(s, c, msg, v, DP_DNS_RCODE_SERVFAIL);
	return DP_NONE;
}

/* The same question as query qi's is upstream already: qi waits for its
 * answer (true). Else qi enters the in-flight table for others to wait on
 * (false). */
static bool coalesce(dp_shard_t *s, uint32_t qi)
{
	uint32_t lead = dp_qtable_flight_find(s, &s->q[qi]);
	if (lead == DP_NONE) {
		dp_qtable_flight_add(s, qi);
		return false;
	}
	dp_query_t *q = &s->q[qi];
	q->state = Q_WAITING;
	q->leader = lead;
	dp_list_push_tail(&s->q[lead].waiters, s->q, sizeof(dp_query_t), QOFF_C, qi);
	STAT_INC(s, cache_coalesced);
	return true;
}

/* Resolve client c's query msg (valid, view v) on its home shard. Returns
 * 0, or DP_E_FULL for a TCP query of this shard the fair share did not
 * take (the caller holds it). */
static int resolve(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, const dp_dns_view_t *v)
{
	uint8_t ecs[DP_EDNS_ECS_MAX];
	int ecs_len = forwarded_subnet(s, c, msg, v, ecs);
	if (unlikely(ecs_len < 0))
		return 0;
	dp_cache_key_t key;
	key.hash = 0;
	if (s->cache_on) {
		dp_cache_key(msg, v, &key);
		if (ecs_len)
			dp_cache_key_ecs(&key, ecs, (size_t)ecs_len);
		if (from_cache(s, c, msg, v, &key))
			return 0;
	}
	/* Counted only once taken: a TCP query held back by the fair share
	 * comes here again. */
	dp_cshare_key_t ck;
	share_key(c, &ck);
	if (unlikely(!admit(s, &ck)))
		return refuse(s, c, msg, v, &ck);
	uint32_t zone = count_qtype(s, c, msg, v);
	if (s->cache_on)
		STAT_INC(s, cache_misses);
	uint32_t qi = take_slot(s, c, msg, v, key.hash, ecs, (size_t)ecs_len);
	if (unlikely(qi == DP_NONE))
		return 0;
	s->q[qi].zone = (uint8_t)zone;
	dp_cshare_add(&s->share, &ck, qi);
	if (s->cache_on && coalesce(s, qi))
		return 0;
	if (dp_pool_send(s, qi, -1) < 0)
		dp_query_fail(s, qi);
	return 0;
}

/* ---- answers and failures -------------------------------------------------- */

/* Answer query fq from the upstream answer src: a copy of it fitted to
 * fq's client. */
static void answer_one(dp_shard_t *s, uint32_t fqi, const dp_answer_src_t *src)
{
	dp_query_t *fq = &s->q[fqi];
	if (fq->client.transport != T_NONE) {
		dp_answer_client_t cl = {
			.q = fq->wire, .qv = &fq->view, .ecs = fq->ecs_len ? fq->ecs : NULL,
			.ecs_len = fq->ecs_len,
			.udp_limit = fq->client.transport == T_UDP ? fq->client_udp_limit : 0,
		};
		fit_stream(s, &fq->client, &fq->view, &cl);
		bool tc;
		/* Fails only if an answer outgrew scratch, which holds the
		 * largest message; the client still gets its one answer. */
		int n = dp_answer_personalise(src, &cl, s->scratch, SCRATCH_SIZE, &tc);
		if (unlikely(n < 0)) {
			STAT_INC(s, servfail);
			reply_error(s, &fq->client, fq->wire, &fq->view, DP_DNS_RCODE_SERVFAIL);
			query_free(s, fqi);
			return;
		}
		if (tc)
			STAT_INC(s, udp_truncated);
		STAT_INC(s, answers);
		reply_q(s, fq, s->scratch, (size_t)n);
		dp_hist_observe(&s->metrics.client_lat, (dp_now_ns() - fq->client.arrive_ns) / 1000);
	}
	query_free(s, fqi);
}

/* A SERVFAIL from upstream for query qi: note it, and send the query to an
 * upstream that has not failed it yet (its waiters stay with it). Returns
 * true when it went out again. */
static bool servfail_failover(dp_shard_t *s, uint32_t qi, int upstream)
{
	dp_query_t *q = &s->q[qi];
	if (upstream >= 0 && upstream < DP_MAX_UPSTREAMS)
		q->servfailed |= 1u << upstream;
	if (s->cfg->zone[q->zone].nup < 2)
		return false; /* the zone's only upstream */
	/* Both copies (a hedge too): the other may be on its way, but an
	 * upstream that has not failed is asked either way. */
	dp_pool_detach(s, qi);
	return dp_pool_send(s, qi, -1) == 0;
}

void dp_query_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
		     const dp_dns_answer_t *a, int upstream)
{
	dp_query_t *q = &s->q[qi];
	bool probe = q->client.transport == T_NONE && !q->key_hash;
	const dp_dns_view_t *v = &a->v;
	if (unlikely(DP_DNS_RCODE(v->flags) == DP_DNS_RCODE_SERVFAIL && !v->ext_rcode) && !probe) {
		if (servfail_failover(s, qi, upstream))
			return;
		if (s->cache_on) {
			/* Every upstream failed: remember it a little while
			 * (RFC 9520), unless an answer worth serving stale is
			 * there; each waiting client then gets that stale
			 * answer (RFC 8767) or the SERVFAIL from the cache. */
			dp_cache_key_t key;
			query_key(q, &key);
			if (dp_cache_insert_servfail(&s->cache, &key, msg, len, a,
						     s->cfg->servfail_ttl, s->now_ms) == 0)
				STAT_INC(s, cache_inserts);
			dp_query_fail(s, qi);
			return;
		}
	} else if (s->cache_on && q->key_hash) {
		dp_cache_key_t key;
		query_key(q, &key);
		if (dp_cache_insert(&s->cache, &key, msg, len, a, s->now_ms) == 0)
			STAT_INC(s, cache_inserts);
	}
	dp_answer_src_t src;
	dp_answer_src_upstream(&src, msg, len, a, s->cache_on ? s->cfg->cache_max_ttl : UINT32_MAX);
	while (q->waiters.head != DP_NONE) {
		uint32_t w = q->waiters.head;
		dp_list_remove(&q->waiters, s->q, sizeof(dp_query_t), QOFF_C, w);
		s->q[w].leader = DP_NONE;
		answer_one(s, w, &src);
	}
	answer_one(s, qi, &src);
}

/* SERVFAIL, unless the cache holds a stale answer (RFC 8767). */
static void fail_one(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	if (q->client.transport != T_NONE) {
		dp_hist_observe(&s->metrics.client_lat, (dp_now_ns() - q->client.arrive_ns) / 1000);
		q->view.id = q->client_id;
		bool stale = false;
		dp_cache_entry_t *e = NULL;
		if (s->cache_on) {
			dp_cache_key_t key;
			query_key(q, &key);
			e = dp_cache_lookup(&s->cache, &key, s->now_ms, true, &stale);
		}
		if (e) {
			if (stale)
				STAT_INC(s, cache_stale_served);
			reply_cached(s, q->wire, &q->view, &q->client, q->client_udp_limit, e,
				     stale);
		} else {
			STAT_INC(s, servfail);
			reply_error(s, &q->client, q->wire, &q->view, DP_DNS_RCODE_SERVFAIL);
		}
	}
	query_free(s, qi);
}

void dp_query_fail(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	if (q->state == Q_WAITING) {
		/* A follower alone (its own deadline): leave the leader's list. */
		if (q->leader != DP_NONE)
			dp_list_remove(&s->q[q->leader].waiters, s->q, sizeof(dp_query_t), QOFF_C, qi);
		q->leader = DP_NONE;
		fail_one(s, qi);
		return;
	}
	while (q->waiters.head != DP_NONE) {
		uint32_t w = q->waiters.head;
		dp_list_remove(&q->waiters, s->q, sizeof(dp_query_t), QOFF_C, w);
		s->q[w].leader = DP_NONE;
		fail_one(s, w);
	}
	fail_one(s, qi);
}

/* The deadline timer of a query fired (the shard's wheel, in deadline
 * order): SERVFAIL it. */
static void on_deadline(dp_tw_entry_t *e, void *arg)
{
	dp_shard_t *s = arg;
	uint32_t qi = (uint32_t)(DP_CONTAINER_OF(e, dp_query_t, deadline_t) - s->q);
	STAT_INC(s, timeouts);
	/* Answer it first: the upstream's bookkeeping below may close the
	 * connection, which would re-send what is still on it. */
	uint32_t ci = s->q[qi].conn;
	uint8_t state = s->q[qi].state;
	uint8_t transport = s->q[qi].client.transport;
	dp_query_fail(s, qi);
	if (ci != DP_NONE && state == Q_SENT && transport != T_NONE)
		dp_pool_note_timeout(s, ci);
}

void dp_query_fail_all(dp_shard_t *s)
{
	if (!s->q)
		return;
	/* Teardown only: a scan of the slots ever used. Failing a leader
	 * frees its waiters too; the state check skips them. */
	for (uint32_t qi = 0; qi < s->q_hiwater; qi++)
		if (s->q[qi].state != Q_FREE)
			dp_query_fail(s, qi);
}

int dp_query_probe(dp_shard_t *s, uint32_t ci)
{
	/* ./IN/NS, RD=1: any resolver answers it from its root hints. */
	static const uint8_t probe[] = { 0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1 };
	dp_dns_view_t v;
	if (dp_dns_parse_query(probe, sizeof(probe), &v) < 0)
		return DP_E_MALFORMED;
	uint32_t qi = dp_qtable_alloc(s);
	if (qi == DP_NONE)
		return DP_E_FULL;
	int rc = query_setup(s, qi, &no_client, probe, &v, 0, NULL, 0);
	if (rc < 0)
		return rc;
	rc = dp_pool_send_on(s, qi, ci);
	if (rc < 0)
		query_free(s, qi);
	return rc;
}

void dp_query_publish_stats(dp_shard_t *s)
{
	STAT_SET(s, cache_evictions, s->cache.st.evictions);
	STAT_SET(s, cache_entries, s->cache.st.entries);
	STAT_SET(s, cache_bytes, s->cache.st.bytes);
}
