/* query.c - the query table: one slot per query between arrival and answer,
 * and the cache, coalescing, prefetch and serve-stale around it.
 *
 * Owns: the shard's dp_query_t table (sized by --max-inflight, mapped once,
 * touched only as slots are first used), every live query's deadline timer
 * on the shard's timer wheel, the in-flight table (questions upstream now,
 * for coalescing) and the shard's answer cache. Every query leaves the table
 * through exactly one of dp_query_answer() and dp_query_fail(), so every
 * query gets exactly one answer.
 *
 * Path of a query: validate -> ACL, rate limit -> its home is another
 * shard? hand it over (handoff.c) -> cache hit? answer from the cache ->
 * same question already upstream? wait for it (coalesced) -> otherwise pad
 * it and hand it to an upstream connection. Each shard caches and
 * coalesces only the questions it is home for, so the shards' caches and
 * in-flight tables together are one per machine.
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
#include "tcp.h"
#include "udp.h"
#include "pool.h"
#include "home.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define QOFF_C offsetof(dp_query_t, clink)
#define SCRATCH_SIZE 65536
_Static_assert(SCRATCH_SIZE >= DP_DNS_MAX_MSG, "scratch holds any answer");
/* Reclaiming for the fair share skips queries other clients wait on
 * (coalesced behind them): it looks at this many of the victim's oldest. */
#define RECLAIM_TRIES 4

_Static_assert(DP_MAX_UPSTREAMS <= 16, "dp_query_t.servfailed has a bit per upstream");

int dp_query_table_init(dp_shard_t *s)
{
	s->q_cap = s->cfg->max_inflight;
	s->q = mmap(NULL, sizeof(dp_query_t) * s->q_cap, PROT_READ | PROT_WRITE,
		    MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (s->q == MAP_FAILED) {
		s->q = NULL;
		return -ENOMEM;
	}
	s->q_free = DP_NONE;
	s->q_hiwater = 0;
	s->q_used = 0;
	uint32_t fl = 1;
	while (fl < 2 * s->q_cap)
		fl <<= 1;
	s->flight = malloc(sizeof(uint32_t) * fl);
	s->scratch = malloc(SCRATCH_SIZE);
	if (!s->flight || !s->scratch || dp_cshare_init(&s->share, s->q_cap) < 0)
		return -ENOMEM;
	memset(s->flight, 0xff, sizeof(uint32_t) * fl);
	s->flight_mask = fl - 1;
	size_t cache_bytes = (size_t)s->cfg->cache_mb * 1024 * 1024 / (size_t)s->cfg->threads;
	s->cache_on = cache_bytes > 0;
	return dp_cache_init(&s->cache, cache_bytes, s->cfg->cache_min_ttl, s->cfg->cache_max_ttl,
			     s->cfg->stale_ttl);
}

void dp_query_table_free(dp_shard_t *s)
{
	dp_cache_destroy(&s->cache);
	dp_cshare_free(&s->share);
	free(s->flight);
	free(s->scratch);
	s->flight = NULL;
	s->scratch = NULL;
	if (!s->q)
		return;
	for (uint32_t i = 0; i < s->q_hiwater; i++)
		if (s->q[i].wire && s->q[i].wire != s->q[i].inline_wire)
			free(s->q[i].wire);
	munmap(s->q, sizeof(dp_query_t) * s->q_cap);
	s->q = NULL;
}

/* ---- in-flight table (coalescing) ------------------------------------------
 * Open addressing with linear probing and backward-shift deletion, keyed by
 * the cache key hash; a match also needs the same question and DO/CD bits. */

static bool same_question(const dp_query_t *a, const dp_query_t *b)
{
	return a->key_hash == b->key_hash &&
	       (a->view.has_opt && a->view.do_bit) == (b->view.has_opt && b->view.do_bit) &&
	       (a->view.flags & DP_DNS_F_CD) == (b->view.flags & DP_DNS_F_CD) &&
	       a->ecs_len == b->ecs_len && memcmp(a->ecs, b->ecs, a->ecs_len) == 0 &&
	       dp_dns_question_equal(a->wire, &a->view, b->wire, &b->view);
}

/* The cache key of query q (as dp_query_from_client made it). */
static void query_key(const dp_query_t *q, dp_cache_key_t *k)
{
	dp_cache_key(q->wire, &q->view, k);
	if (q->ecs_len)
		dp_cache_key_ecs(k, q->ecs, q->ecs_len);
}

static uint32_t flight_find(dp_shard_t *s, const dp_query_t *q)
{
	for (uint32_t i = (uint32_t)q->key_hash & s->flight_mask;; i = (i + 1) & s->flight_mask) {
		uint32_t qi = s->flight[i];
		if (qi == DP_NONE)
			return DP_NONE;
		if (same_question(&s->q[qi], q))
			return qi;
	}
}

static void flight_add(dp_shard_t *s, uint32_t qi)
{
	uint32_t i = (uint32_t)s->q[qi].key_hash & s->flight_mask;
	while (s->flight[i] != DP_NONE)
		i = (i + 1) & s->flight_mask;
	s->flight[i] = qi;
	s->q[qi].in_table = true;
}

static void flight_del(dp_shard_t *s, uint32_t qi)
{
	uint32_t m = s->flight_mask, i = (uint32_t)s->q[qi].key_hash & m;
	while (s->flight[i] != qi) {
		if (s->flight[i] == DP_NONE)
			return;
		i = (i + 1) & m;
	}
	s->q[qi].in_table = false;
	/* Backward-shift: move later entries of the run into the hole when
	 * their home slot allows it. */
	uint32_t j = i;
	for (;;) {
		s->flight[i] = DP_NONE;
		for (;;) {
			j = (j + 1) & m;
			if (s->flight[j] == DP_NONE)
				return;
			uint32_t home = (uint32_t)s->q[s->flight[j]].key_hash & m;
			/* stays if home lies cyclically in (i, j] */
			if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
				continue;
			break;
		}
		s->flight[i] = s->flight[j];
		i = j;
	}
}

/* ---- slots ------------------------------------------------------------------ */

static void on_deadline(dp_tw_entry_t *e, void *arg);

static uint32_t query_alloc(dp_shard_t *s)
{
	uint32_t qi;
	if (s->q_free != DP_NONE) {
		qi = s->q_free;
		s->q_free = s->q[qi].tlink.next;
	} else if (s->q_hiwater < s->q_cap) {
		qi = s->q_hiwater++;
	} else {
		return DP_NONE;
	}
	s->q_used++;
	STAT_SET(s, queries_inflight, s->q_used);
	return qi;
}

static void query_free(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	if (q->conn != DP_NONE)
		dp_pool_detach(s, qi);
	if (q->in_table)
		flight_del(s, qi);
	dp_tw_cancel(&s->timers, &q->deadline_t);
	dp_tw_cancel(&s->timers, &q->hedge_t);
	dp_cshare_del(&s->share, qi);
	if (q->transport == T_TCP && !(q->client.tcp.idx & DP_XS_REMOTE))
		dp_tcp_query_end(s, q->client.tcp.idx, q->client.tcp.gen);
	if (q->wire != q->inline_wire)
		free(q->wire);
	q->wire = NULL;
	q->state = Q_FREE;
	q->gen++;
	q->tlink.next = s->q_free;
	s->q_free = qi;
	s->q_used--;
	s->q_freed++;
	STAT_SET(s, queries_inflight, s->q_used);
}

/* Send msg to a client (UDP: truncated first when larger than the client
 * takes; v describes msg and is needed only then). msg may be modified. */
static void reply(dp_shard_t *s, int transport, int li, const struct sockaddr_in6 *udp,
		  uint32_t tidx, uint32_t tgen, uint16_t udp_limit, uint8_t *msg, size_t len,
		  const dp_dns_view_t *v)
{
	if (transport != T_NONE && len >= DP_DNS_HDR_LEN) {
		unsigned rc = msg[3] & 0xf;
		M_INC(s->metrics.rcode[rc <= 5 ? rc : 6]);
	}
	if (transport == T_UDP) {
		/* Answers come truncated to the client's size already
		 * (dp_answer_personalise); what we build is never too long. */
		dp_udp_send(s, li, udp, msg, len);
	} else if (transport == T_TCP) {
		if (tidx & DP_XS_REMOTE)
			dp_handoff_answer(s, tidx, tgen, msg, len);
		else
			dp_tcp_answer(s, tidx, tgen, msg, len);
	}
}

static void reply_q(dp_shard_t *s, dp_query_t *q, uint8_t *msg, size_t len,
		    const dp_dns_view_t *v)
{
	reply(s, q->transport, q->listen_idx, &q->client.udp, q->client.tcp.idx, q->client.tcp.gen,
	      q->client_udp_limit, msg, len, v);
}

static void reply_error(dp_shard_t *s, int transport, int li, const struct sockaddr_in6 *udp,
			uint32_t tidx, uint32_t tgen, const uint8_t *q, const dp_dns_view_t *v,
			int rcode)
{
	uint8_t out[512];
	int n = dp_dns_build_error(q, v, rcode, s->cfg->max_udp_size, out, sizeof(out));
	if (n > 0)
		reply(s, transport, li, udp, tidx, tgen, 65535, out, (size_t)n, NULL);
	else if (transport == T_TCP && (tidx & DP_XS_REMOTE))
		dp_handoff_answer(s, tidx, tgen, NULL, 0); /* its origin ends it */
}

/* Answer query q from the cache entry e (fresh, or stale: TTL 30). */
static void reply_cached(dp_shard_t *s, const uint8_t *msg, const dp_dns_view_t *v, int transport,
			 int li, const struct sockaddr_in6 *udp, uint32_t tidx, uint32_t tgen,
			 uint16_t udp_limit, dp_cache_entry_t *e, bool stale)
{
	dp_answer_src_t src;
	dp_cache_entry_src(e, s->now_ms, stale, &src);
	/* No subnet: the entry's OPT is the key's already (src.scrubbed). */
	dp_answer_client_t cl = { msg, v, NULL, 0, transport == T_UDP ? udp_limit : 0 };
	bool tc;
	int n = dp_answer_personalise(&src, &cl, s->scratch, SCRATCH_SIZE, &tc);
	if (n < 0) {
		STAT_INC(s, servfail);
		reply_error(s, transport, li, udp, tidx, tgen, msg, v, DP_DNS_RCODE_SERVFAIL);
		return;
	}
	if (tc)
		STAT_INC(s, udp_truncated);
	STAT_INC(s, answers);
	reply(s, transport, li, udp, tidx, tgen, udp_limit, s->scratch, (size_t)n, NULL);
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

/* Fill slot qi for query msg (view v) and register it. Returns 0, or a
 * negative code when the query cannot be stored (the slot is then free). */
static int query_setup(dp_shard_t *s, uint32_t qi, const uint8_t *msg, const dp_dns_view_t *v,
		       int transport, int li, const struct sockaddr_in6 *from, uint32_t tcp_idx,
		       uint32_t tcp_gen, uint64_t key_hash, const uint8_t *ecs, size_t ecs_len,
		       uint64_t arrive_ns)
{
	dp_query_t *q = &s->q[qi];
	q->transport = (uint8_t)transport;
	q->conn = DP_NONE;
	q->in_table = false;
	q->clink.prev = q->clink.next = DP_NONE;
	q->waiters = (dp_list_t){ DP_NONE, DP_NONE, 0 };
	q->leader = DP_NONE;
	q->conn2 = DP_NONE;
	q->hedged = false;
	dp_tw_entry_init(&q->deadline_t, on_deadline);
	dp_tw_entry_init(&q->hedge_t, NULL); /* pool.c arms it */
	q->ecs_len = (uint8_t)ecs_len;
	if (ecs_len)
		memcpy(q->ecs, ecs, ecs_len);
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
		q->transport = T_NONE;
		query_free(s, qi);
		return plen;
	}
	q->len = (uint16_t)plen;
	/* AD asked of every upstream: the answer then says whether the data is
	 * authentic whatever the client set, and the cache strips AD for
	 * clients that set neither AD nor DO (RFC 6840 5.7). */
	q->wire[3] |= DP_DNS_F_AD;
	q->view = *v;
	q->state = Q_PENDING;
	q->resent = 0;
	q->listen_idx = (uint8_t)li;
	q->client_id = v->id;
	q->key_hash = key_hash;
	q->servfailed = 0;
	q->client_udp_limit = v->has_opt ? DP_MIN(v->udp_size, s->cfg->max_udp_size) : 512;
	/* The timeout in force now: after a reload that shortened it, this
	 * deadline comes before those of older queries, and the wheel fires
	 * it first. */
	q->deadline_ms = s->now_ms + s->cfg->timeout_ms;
	q->start_ns = 0;
	q->arrive_ns = transport == T_NONE ? 0 : arrive_ns ? arrive_ns : dp_now_ns();
	if (transport == T_UDP) {
		q->client.udp = *from;
	} else if (transport == T_TCP) {
		q->client.tcp.idx = tcp_idx;
		q->client.tcp.gen = tcp_gen;
		if (!(tcp_idx & DP_XS_REMOTE)) /* else counted on its origin */
			dp_tcp_query_begin(s, tcp_idx, tcp_gen);
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
	uint32_t qi = query_alloc(s);
	if (qi == DP_NONE)
		return;
	if (query_setup(s, qi, msg, v, T_NONE, 0, NULL, 0, 0, key->hash, key->ecs,
			key->ecs_len, 0) < 0)
		return;
	if (flight_find(s, &s->q[qi]) != DP_NONE) {
		query_free(s, qi);
		return;
	}
	flight_add(s, qi);
	STAT_INC(s, cache_prefetched);
	if (dp_pool_send(s, qi, -1) < 0)
		query_free(s, qi); /* no client to tell */
}

static void count_qtype(dp_shard_t *s, int transport, const dp_dns_view_t *v)
{
	M_INC(s->metrics.qtype[transport == T_TCP][dp_metrics_qtype_class(v->qtype)]);
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

static int resolve(dp_shard_t *s, int transport, uint8_t *msg, const dp_dns_view_t *v, int li,
		   const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen,
		   uint64_t arrive_ns, const dp_cshare_key_t *peer);

int dp_query_from_client(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
			 const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen)
{
#ifdef DP_BENCH_DELAY_US
	bench_delay();
#endif
	dp_dns_view_t v;
	int rc = dp_dns_parse_query(msg, len, &v);
	if (transport == T_UDP) {
		const struct sockaddr *sa = (const struct sockaddr *)from;
		if (unlikely(!dp_acl_allows(&s->cfg->acl, sa))) {
			STAT_INC(s, acl_refused);
			if (rc != DP_E_MALFORMED && rc != DP_E_RESPONSE)
				reply_error(s, transport, li, from, 0, 0, msg, &v,
					    DP_DNS_RCODE_REFUSED);
			return 0;
		}
		if (s->rl && __atomic_load_n(&s->rl->rate, __ATOMIC_RELAXED) &&
		    rc != DP_E_MALFORMED && rc != DP_E_RESPONSE) {
			int r = dp_rl_check(s->rl, sa, s->now_ms);
			if (r == DP_RL_DROP) {
				STAT_INC(s, ratelimited);
				return 0;
			}
			if (r == DP_RL_SLIP) {
				/* Header and question with TC=1: never larger
				 * than the query, and a real client retries
				 * over TCP, which is not limited. */
				uint8_t out[512];
				int n = dp_dns_build_error(msg, &v, DP_DNS_RCODE_NOERROR,
							   s->cfg->max_udp_size, out, sizeof(out));
				STAT_INC(s, ratelimit_tc);
				if (n > 0) {
					out[2] |= DP_DNS_F_TC >> 8;
					dp_udp_send(s, li, from, out, (size_t)n);
				}
				return 0;
			}
		}
	}
	if (unlikely(rc < 0)) {
		switch (rc) {
		case DP_E_FORMERR:
			STAT_INC(s, formerr);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
				    DP_DNS_RCODE_FORMERR);
			return 0;
		case DP_E_NOTIMP:
			STAT_INC(s, notimp);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
				    DP_DNS_RCODE_NOTIMP);
			return 0;
		case DP_E_BADVERS:
			STAT_INC(s, badvers);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
				    DP_DNS_RCODE_BADVERS);
			return 0;
		default: /* unreadable, or a response: drop */
			STAT_INC(s, dropped);
			return 0;
		}
	}
	if (s->nshards > 1 && v.has_question) {
		/* The one extra cost of a query at home: a SipHash of its name.
		 * A UDP query read off its home means the steering program
		 * (steer.bpf.c) is not attached or did not agree with home.h:
		 * zero while steering is on. Without a cache there is nothing to
		 * share: no hand-off. */
		uint32_t home = dp_home_shard(dp_home_hash(msg + v.qname_off, v.qname_len),
					      (uint32_t)s->nshards);
		if (home != (uint32_t)s->id) {
			if (transport == T_UDP)
				STAT_INC(s, udp_off_home);
			if (s->cache_on && dp_handoff_query(s, home, transport, msg, len, li, from,
							    tcp_idx, tcp_gen) == 0)
				return 0;
		}
	}
	return resolve(s, transport, msg, &v, li, from, tcp_idx, tcp_gen, 0, NULL);
}

void dp_query_from_shard(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
			 const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen,
			 uint64_t arrive_ns, const dp_cshare_key_t *peer)
{
	dp_dns_view_t v;
	if (unlikely(dp_dns_parse_query(msg, len, &v) < 0)) {
		/* It passed on the shard that read it: cannot happen. */
		STAT_INC(s, dropped);
		if (transport == T_TCP)
			dp_handoff_answer(s, tcp_idx, tcp_gen, NULL, 0);
		return;
	}
	/* A TCP query over its share here gets SERVFAIL: the connection lives
	 * on the origin, which bounds what it hands over (DP_XS_TCP_CREDIT). */
	(void)resolve(s, transport, msg, &v, li, from, tcp_idx, tcp_gen, arrive_ns, peer);
}

/* The home shard's part: cache, fair share, coalescing, upstream. peer: the
 * client's share key when the query came from another shard's TCP client,
 * else NULL (taken from from or the local connection). Returns 0, or
 * DP_E_FULL for a local TCP query the fair share did not take (tcpconn holds
 * the frame and pauses the connection). */
static int resolve(dp_shard_t *s, int transport, uint8_t *msg, const dp_dns_view_t *v, int li,
		   const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen,
		   uint64_t arrive_ns, const dp_cshare_key_t *peer)
{
	uint16_t udp_limit = v->has_opt ? DP_MIN(v->udp_size, s->cfg->max_udp_size) : 512;
	uint8_t ecs[DP_EDNS_ECS_MAX];
	int ecs_len = 0;
	if (v->opt_ecs && s->cfg->forward_ecs) {
		ecs_len = dp_edns_ecs_read(msg, v, ecs);
		if (unlikely(ecs_len < 0)) { /* RFC 7871 7.1.1 */
			count_qtype(s, transport, v);
			STAT_INC(s, formerr);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, v,
				    DP_DNS_RCODE_FORMERR);
			return 0;
		}
	}
	dp_cache_key_t key;
	key.hash = 0;
	if (s->cache_on) {
		bool stale;
		dp_cache_key(msg, v, &key);
		if (ecs_len)
			dp_cache_key_ecs(&key, ecs, (size_t)ecs_len);
		dp_cache_entry_t *e = dp_cache_lookup(&s->cache, &key, s->now_ms, false, &stale);
		if (e) {
			count_qtype(s, transport, v);
			STAT_INC(s, cache_hits);
			/* answered within this loop turn: counted in the lowest
			 * bucket, unless it came through a hand-off */
			dp_hist_observe(&s->metrics.client_lat,
					arrive_ns ? (dp_now_ns() - arrive_ns) / 1000 : 0);
			reply_cached(s, msg, v, transport, li, from, tcp_idx, tcp_gen, udp_limit, e,
				     false);
			if (dp_cache_prefetch_due(e, s->now_ms))
				prefetch(s, msg, v, &key);
			return 0;
		}
	}
	/* Counted only once taken: a TCP query held back by the fair share
	 * comes here again. */
	bool remote = transport == T_TCP && (tcp_idx & DP_XS_REMOTE);
	dp_cshare_key_t ck;
	if (peer)
		ck = *peer;
	else if (transport == T_TCP)
		ck = s->tcp_peer[tcp_idx];
	else
		dp_cshare_key_of((const struct sockaddr *)from, &ck);
	if (unlikely(!admit(s, &ck))) {
		if (transport == T_TCP && !remote) {
			STAT_INC(s, fair_refused);
			return DP_E_FULL;
		}
		count_qtype(s, transport, v);
		bool alone = s->share.active == (dp_cshare_count(&s->share, &ck) > 0);
		if (alone && s->q_used >= s->q_cap)
			STAT_INC(s, inflight_full); /* no one else: the table is simply full */
		else
			STAT_INC(s, fair_refused);
		STAT_INC(s, servfail);
		reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, v,
			    DP_DNS_RCODE_SERVFAIL);
		return 0;
	}
	count_qtype(s, transport, v);
	if (s->cache_on)
		STAT_INC(s, cache_misses);
	uint32_t qi = query_alloc(s);
	if (unlikely(qi == DP_NONE)) {
		STAT_INC(s, inflight_full);
		STAT_INC(s, servfail);
		reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, v,
			    DP_DNS_RCODE_SERVFAIL);
		return 0;
	}
	if (query_setup(s, qi, msg, v, transport, li, from, tcp_idx, tcp_gen, key.hash, ecs,
			(size_t)ecs_len, arrive_ns) < 0) {
		STAT_INC(s, servfail);
		reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, v,
			    DP_DNS_RCODE_SERVFAIL);
		return 0;
	}
	dp_cshare_add(&s->share, &ck, qi);
	if (s->cache_on) {
		uint32_t lead = flight_find(s, &s->q[qi]);
		if (lead != DP_NONE) {
			/* The same question is upstream already: wait for it. */
			dp_query_t *q = &s->q[qi];
			q->state = Q_WAITING;
			q->leader = lead;
			dp_list_push_tail(&s->q[lead].waiters, s->q, sizeof(dp_query_t), QOFF_C, qi);
			STAT_INC(s, cache_coalesced);
			return 0;
		}
		flight_add(s, qi);
	}
	if (dp_pool_send(s, qi, -1) < 0)
		dp_query_fail(s, qi);
	return 0;
}

/* Answer query fq from the upstream answer src: a copy of it fitted to
 * fq's client. */
static void answer_one(dp_shard_t *s, uint32_t fqi, const dp_answer_src_t *src)
{
	dp_query_t *fq = &s->q[fqi];
	if (fq->transport != T_NONE) {
		dp_answer_client_t cl = { fq->wire, &fq->view, fq->ecs_len ? fq->ecs : NULL,
					  fq->ecs_len,
					  fq->transport == T_UDP ? fq->client_udp_limit : 0 };
		bool tc;
		/* Cannot fail: scratch holds the largest message. */
		int n = dp_answer_personalise(src, &cl, s->scratch, SCRATCH_SIZE, &tc);
		if (tc)
			STAT_INC(s, udp_truncated);
		STAT_INC(s, answers);
		reply_q(s, fq, s->scratch, (size_t)n, NULL);
		dp_hist_observe(&s->metrics.client_lat, (dp_now_ns() - fq->arrive_ns) / 1000);
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
		q->servfailed |= (uint16_t)(1u << upstream);
	if (s->cfg->nupstream < 2)
		return false;
	/* Both copies (a hedge too): the other may be on its way, but an
	 * upstream that has not failed is asked either way. */
	dp_pool_detach(s, qi);
	return dp_pool_send(s, qi, -1) == 0;
}

void dp_query_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
		     const dp_dns_answer_t *a, int upstream)
{
	dp_query_t *q = &s->q[qi];
	bool probe = q->transport == T_NONE && !q->key_hash;
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
	if (q->transport != T_NONE) {
		dp_hist_observe(&s->metrics.client_lat, (dp_now_ns() - q->arrive_ns) / 1000);
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
			reply_cached(s, q->wire, &q->view, q->transport, q->listen_idx, &q->client.udp,
				     q->client.tcp.idx, q->client.tcp.gen, q->client_udp_limit, e,
				     stale);
		} else {
			STAT_INC(s, servfail);
			reply_error(s, q->transport, q->listen_idx, &q->client.udp,
				    q->client.tcp.idx, q->client.tcp.gen, q->wire, &q->view,
				    DP_DNS_RCODE_SERVFAIL);
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
	uint8_t transport = s->q[qi].transport;
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
	uint32_t qi = query_alloc(s);
	if (qi == DP_NONE)
		return DP_E_FULL;
	int rc = query_setup(s, qi, probe, &v, T_NONE, 0, NULL, 0, 0, 0, NULL, 0, 0);
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
