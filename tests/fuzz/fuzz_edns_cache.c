/* fuzz_edns_cache.c - what dotproxy does to a message after validation:
 * padding a query for the upstream, scrubbing an answer for a client,
 * personalising an upstream answer for a client (dp_answer_personalise:
 * ID, spelling, TTLs by offset, EDNS, UDP truncation), and the cache's
 * insert and serve (the same function, from the entry), with and without a
 * Client Subnet (the message's own, read as --forward-ecs reads a query's).
 * Invariants: every output is again a valid message of the same question;
 * padded queries are a multiple of the block and carry no option but ours
 * and the subnet given; scrubbing never grows a message, removes the OPT
 * for clients without EDNS and leaves no option but Padding (when asked)
 * and the client's own subnet; a personalised answer carries the client's
 * ID, no TTL above the maximum or with the top bit set, fits the UDP limit
 * or is the truncated form; a served answer is never longer than what was
 * cached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "cache.h"
#include "edns.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

static uint8_t out[65536 + 256];
static uint8_t copy[65536];

/* Every option of the OPT of msg (view v) is Padding (when pad), the ECS
 * option at v->opt_ecs (when ecs), or keepalive (when ka). */
static void check_opts(const uint8_t *msg, const dp_dns_view_t *v, bool pad, bool ecs, bool ka)
{
	if (!v->has_opt)
		return;
	size_t o = v->opt_off + 11, end = (size_t)v->opt_off + v->opt_len;
	while (o + 4 <= end) {
		uint16_t code = dp_rd16(msg + o);
		CHECK((pad && code == DP_DNS_OPT_PADDING) || (ka && code == DP_DNS_OPT_KEEPALIVE) ||
		      (ecs && code == DP_DNS_OPT_ECS && o == v->opt_ecs));
		o += 4 + dp_rd16(msg + o + 2);
	}
}

static void query_side(const uint8_t *data, size_t size)
{
	dp_dns_view_t v, pv;
	uint8_t ecs[DP_EDNS_ECS_MAX];
	int el = 0;
	if (dp_dns_parse_query(data, size, &v) != 0)
		return;
	if (v.opt_ecs) {
		el = dp_edns_ecs_read(data, &v, ecs);
		CHECK(el == DP_E_FORMERR || (el >= 4 && el <= DP_EDNS_ECS_MAX && ecs[3] == 0));
	}
	size_t need = (size_t)v.msg_end + 11 + 4 + 4 + DP_EDNS_QUERY_BLOCK;
	int n = dp_edns_pad_query(data, &v, el > 0 ? ecs : NULL, el > 0 ? (size_t)el : 0,
				  DP_EDNS_QUERY_BLOCK, out, need);
	if (n == DP_E_TOOBIG) {
		CHECK(need > DP_DNS_MAX_MSG - 200); /* only near the 64 KiB limit */
		return;
	}
	CHECK(n > 0 && (size_t)n <= need);
	CHECK(n % DP_EDNS_QUERY_BLOCK == 0);
	CHECK(dp_dns_parse_query(out, (size_t)n, &pv) == 0);
	CHECK(pv.has_opt && pv.opt_padding && pv.opt_keepalive);
	CHECK(dp_dns_question_equal(data, &v, out, &pv));
	CHECK(pv.do_bit == (v.has_opt && v.do_bit));
	check_opts(out, &pv, true, el > 0, true);
	if (el > 0) {
		CHECK(pv.opt_ecs && dp_rd16(out + pv.opt_ecs + 2) == el);
		CHECK(memcmp(out + pv.opt_ecs + 4, ecs, (size_t)el) == 0);
	}
}

/* Every TTL of personalised answer m (view mv) is at most max and below
 * 2^31; the header says TC when truncated. */
static void check_personalised(const uint8_t *m, size_t n, const dp_dns_view_t *mv,
			       uint32_t max, const dp_answer_client_t *cl, bool tc)
{
	dp_dns_answer_t pa;
	CHECK(dp_dns_parse_answer_rrs(m, n, &pa) == 0);
	CHECK(memcmp(&pa.v, mv, sizeof(*mv)) == 0);
	CHECK(mv->id == cl->qv->id);
	CHECK((mv->flags & DP_DNS_F_RD) == (cl->qv->flags & DP_DNS_F_RD));
	if (!cl->qv->has_opt)
		CHECK(!mv->has_opt);
	if (cl->udp_limit)
		CHECK(n <= cl->udp_limit || tc);
	if (tc)
		CHECK((mv->flags & DP_DNS_F_TC) && mv->ancount == 0 && mv->nscount == 0);
	dp_dns_ttl_iter_t it;
	size_t off;
	unsigned k = 0;
	dp_dns_ttl_iter_init(&it, m, pa.ttl, pa.nttl, pa.ttl_total);
	while (dp_dns_ttl_next(&it, &off)) {
		CHECK(dp_rd32(m + off) <= max && !(m[off] & 0x80));
		k++;
	}
	CHECK(k == pa.ttl_total);
}

/* The upstream answer data (parsed into a) personalised for a client that
 * asks the same question (its header and question stand in for the query);
 * then cached and served to it. */
static void personalise_side(const uint8_t *data, size_t size, const dp_dns_answer_t *a,
			     uint8_t sel, const uint8_t *fe, size_t elen)
{
	dp_dns_view_t qv = a->v, sv;
	qv.has_opt = sel & 1;
	qv.opt_padding = sel & 2;
	dp_answer_client_t cl = { data, &qv, fe, elen, (sel & 0x40) ? 512 : 0 };
	dp_answer_src_t src;
	uint32_t max = (sel & 0x20) ? 100 : 0x7fffffffu;
	bool tc;
	dp_answer_src_upstream(&src, data, size, a, max);
	int m = dp_answer_personalise(&src, &cl, out, sizeof(out), &tc);
	CHECK(m > 0 && (size_t)m <= size);
	CHECK(dp_dns_parse_answer(out, (size_t)m, &sv) == 0);
	check_personalised(out, (size_t)m, &sv, max, &cl, tc);
	check_opts(out, &sv, qv.opt_padding, fe != NULL, false);
	CHECK(dp_dns_question_equal(data, &a->v, out, &sv));

	dp_cache_t c;
	CHECK(dp_cache_init(&c, 1 << 20, 0, 86400, 3600) == 0);
	dp_cache_key_t k;
	dp_cache_key(data, &a->v, &k);
	if (fe)
		dp_cache_key_ecs(&k, fe, elen);
	int rc = dp_cache_insert(&c, &k, data, size, a, 1000);
	CHECK(rc == 0 || rc == 1);
	bool stale;
	dp_cache_entry_t *e = dp_cache_lookup(&c, &k, 1000, false, &stale);
	CHECK(rc == 0 ? e != NULL : e == NULL);
	if (e) {
		dp_cache_entry_src(e, 2000 + (sel & 0x1f) * 1000ull, sel & 0x80, &src);
		m = dp_answer_personalise(&src, &cl, out, sizeof(out), &tc);
		CHECK(m > 0 && (size_t)m <= size);
		CHECK(dp_dns_parse_answer(out, (size_t)m, &sv) == 0);
		check_personalised(out, (size_t)m, &sv, 86400, &cl, tc);
		check_opts(out, &sv, false, fe != NULL, false);
		CHECK(dp_dns_question_equal(data, &a->v, out, &sv));
	}
	/* A SERVFAIL (or anything else) offered as one: cached only if it is. */
	rc = dp_cache_insert_servfail(&c, &k, data, size, a, 5, 1000);
	CHECK(rc == 1 || (rc == 0 && DP_DNS_RCODE(a->v.flags) == DP_DNS_RCODE_SERVFAIL));
	dp_cache_destroy(&c);
}

static void answer_side(const uint8_t *data, size_t size, uint8_t sel)
{
	dp_dns_answer_t a;
	dp_dns_view_t sv;
	if (dp_dns_parse_answer_rrs(data, size, &a) != 0)
		return;
	const dp_dns_view_t v = a.v;
	bool client_opt = sel & 1, client_pad = sel & 2;
	/* The answer's own subnet stands in for the one we forwarded. */
	uint8_t ecs[DP_EDNS_ECS_MAX];
	int el = (sel & 0x80) && v.opt_ecs ? dp_edns_ecs_read(data, &v, ecs) : 0;
	const uint8_t *fe = el > 0 ? ecs : NULL;
	size_t elen = el > 0 ? (size_t)el : 0;
	memcpy(copy, data, size);
	dp_dns_view_t w = v;
	size_t n = dp_edns_scrub_answer(copy, size, &w, client_opt, client_pad, fe, elen);
	CHECK(n <= size);
	CHECK(dp_dns_parse_answer(copy, n, &sv) == 0);
	CHECK(sv.opt_ecs == w.opt_ecs && sv.opt_after == w.opt_after);
	check_opts(copy, &sv, client_pad, fe != NULL, false);
	if (!client_opt)
		CHECK(!sv.has_opt);
	CHECK(!sv.opt_keepalive);
	if (!client_pad)
		CHECK(!sv.opt_padding);
	CHECK(dp_dns_question_equal(data, &v, copy, &sv));
	personalise_side(data, size, &a, sel, fe, elen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t sel = data[0];
	data++;
	size--;
	query_side(data, size);
	answer_side(data, size, sel);
	return 0;
}
