/* query.c - the query table: one slot per query between arrival and answer.
 *
 * Owns: the shard's dp_query_t table (sized by --max-inflight, mapped once,
 * touched only as slots are first used) and the timeout list that holds
 * every live query in deadline order. Every query leaves the table through
 * exactly one of dp_query_answer() and dp_query_fail(), so every query gets
 * exactly one answer.
 */
#include "edns.h"
#include "engine.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define QOFF_T offsetof(dp_query_t, tlink)

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
	s->timeouts = (dp_list_t){ DP_NONE, DP_NONE, 0 };
	return 0;
}

void dp_query_table_free(dp_shard_t *s)
{
	if (!s->q)
		return;
	for (uint32_t i = 0; i < s->q_hiwater; i++)
		if (s->q[i].wire && s->q[i].wire != s->q[i].inline_wire)
			free(s->q[i].wire);
	munmap(s->q, sizeof(dp_query_t) * s->q_cap);
	s->q = NULL;
}

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
		dp_upstream_detach(s, qi);
	dp_list_remove(&s->timeouts, s->q, sizeof(dp_query_t), QOFF_T, qi);
	if (q->transport == T_TCP && q->client.tcp.idx < s->tcp_hiwater) {
		dp_tcpc_t *c = &s->tcp[q->client.tcp.idx];
		if (c->used && c->gen == q->client.tcp.gen && c->inflight)
			c->inflight--;
	}
	if (q->wire != q->inline_wire)
		free(q->wire);
	q->wire = NULL;
	q->state = Q_FREE;
	q->gen++;
	q->tlink.next = s->q_free;
	s->q_free = qi;
	s->q_used--;
	STAT_SET(s, queries_inflight, s->q_used);
}

/* Send msg to the query's client (UDP: truncated first when it is larger
 * than the client accepts). msg may be modified. */
static void reply(dp_shard_t *s, int transport, int li, const struct sockaddr_in6 *udp,
		  uint32_t tidx, uint32_t tgen, uint16_t udp_limit, uint8_t *msg, size_t len,
		  const dp_dns_view_t *v)
{
	if (transport == T_UDP) {
		if (len > udp_limit && v) {
			len = dp_dns_truncate(msg, v);
			STAT_INC(s, udp_truncated);
		}
		dp_udp_send(s, li, udp, msg, len);
	} else {
		dp_tcp_answer(s, tidx, tgen, msg, len);
	}
}

static void reply_error(dp_shard_t *s, int transport, int li, const struct sockaddr_in6 *udp,
			uint32_t tidx, uint32_t tgen, const uint8_t *q, const dp_dns_view_t *v,
			int rcode)
{
	uint8_t out[512];
	int n = dp_dns_build_error(q, v, rcode, s->cfg->max_udp_size, out, sizeof(out));
	if (n > 0)
		reply(s, transport, li, udp, tidx, tgen, 65535, out, (size_t)n, NULL);
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

void dp_query_from_client(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
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
			return;
		}
		if (s->rl.rate && rc != DP_E_MALFORMED && rc != DP_E_RESPONSE) {
			int r = dp_rl_check(&s->rl, sa, s->now_ms);
			if (r == DP_RL_DROP) {
				STAT_INC(s, ratelimited);
				return;
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
				return;
			}
		}
	}
	if (unlikely(rc < 0)) {
		switch (rc) {
		case DP_E_FORMERR:
			STAT_INC(s, formerr);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
				    DP_DNS_RCODE_FORMERR);
			return;
		case DP_E_NOTIMP:
			STAT_INC(s, notimp);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
				    DP_DNS_RCODE_NOTIMP);
			return;
		case DP_E_BADVERS:
			STAT_INC(s, badvers);
			reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
				    DP_DNS_RCODE_BADVERS);
			return;
		default: /* unreadable, or a response: drop */
			STAT_INC(s, dropped);
			return;
		}
	}
	uint32_t qi = query_alloc(s);
	if (unlikely(qi == DP_NONE)) {
		STAT_INC(s, inflight_full);
		STAT_INC(s, servfail);
		reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
			    DP_DNS_RCODE_SERVFAIL);
		return;
	}
	dp_query_t *q = &s->q[qi];
	/* Room for the query with its OPT moved last, padded to the block. */
	size_t need = (size_t)v.msg_end + 11 + 4 + DP_EDNS_QUERY_BLOCK;
	q->wire = need <= DP_QUERY_INLINE ? q->inline_wire : malloc(need);
	int plen = q->wire ? dp_edns_pad_query(msg, &v, DP_EDNS_QUERY_BLOCK, q->wire, need)
			   : -ENOMEM;
	if (unlikely(plen < 0)) {
		if (q->wire != q->inline_wire)
			free(q->wire);
		q->wire = q->inline_wire;
		q->transport = (uint8_t)transport;
		q->conn = DP_NONE;
		dp_list_push_tail(&s->timeouts, s->q, sizeof(dp_query_t), QOFF_T, qi);
		query_free(s, qi);
		STAT_INC(s, servfail);
		reply_error(s, transport, li, from, tcp_idx, tcp_gen, msg, &v,
			    DP_DNS_RCODE_SERVFAIL);
		return;
	}
	q->len = (uint16_t)plen;
	q->view = v;
	q->state = Q_PENDING;
	q->transport = (uint8_t)transport;
	q->resent = 0;
	q->listen_idx = (uint8_t)li;
	q->client_id = v.id;
	q->conn = DP_NONE;
	q->clink.prev = q->clink.next = DP_NONE;
	q->client_udp_limit = v.has_opt ? DP_MIN(v.udp_size, s->cfg->max_udp_size) : 512;
	q->deadline_ms = s->now_ms + s->cfg->timeout_ms;
	q->start_ns = 0;
	if (transport == T_UDP) {
		q->client.udp = *from;
	} else {
		q->client.tcp.idx = tcp_idx;
		q->client.tcp.gen = tcp_gen;
		s->tcp[tcp_idx].inflight++;
	}
	dp_list_push_tail(&s->timeouts, s->q, sizeof(dp_query_t), QOFF_T, qi);
	if (dp_upstream_send(s, qi, -1) < 0)
		dp_query_fail(s, qi);
}

void dp_query_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
		     const dp_dns_view_t *v)
{
	dp_query_t *q = &s->q[qi];
	dp_dns_view_t av = *v;
	dp_wr16(msg, q->client_id);
	len = dp_edns_scrub_answer(msg, len, &av, q->view.has_opt, q->view.opt_padding);
	STAT_INC(s, answers);
	reply(s, q->transport, q->listen_idx, &q->client.udp, q->client.tcp.idx,
	      q->client.tcp.gen, q->client_udp_limit, msg, len, &av);
	query_free(s, qi);
}

void dp_query_fail(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	q->view.id = q->client_id;
	STAT_INC(s, servfail);
	reply_error(s, q->transport, q->listen_idx, &q->client.udp, q->client.tcp.idx,
		    q->client.tcp.gen, q->wire, &q->view, DP_DNS_RCODE_SERVFAIL);
	query_free(s, qi);
}

void dp_query_expire(dp_shard_t *s)
{
	while (s->timeouts.head != DP_NONE && s->q[s->timeouts.head].deadline_ms <= s->now_ms) {
		STAT_INC(s, timeouts);
		dp_query_fail(s, s->timeouts.head);
	}
}

void dp_query_fail_all(dp_shard_t *s)
{
	if (!s->q)
		return;
	while (s->timeouts.head != DP_NONE)
		dp_query_fail(s, s->timeouts.head);
}
