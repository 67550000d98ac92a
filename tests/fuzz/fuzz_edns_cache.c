/* fuzz_edns_cache.c - what dotproxy does to a message after validation:
 * padding a query for the upstream, scrubbing an answer for a client, and
 * the cache's insert, serve and TTL clamp, with and without a Client
 * Subnet (the message's own, read as --forward-ecs reads a query's).
 * Invariants: every output is again a valid message of the same question;
 * padded queries are a multiple of the block and carry no option but ours
 * and the subnet given; scrubbing never grows a message, removes the OPT
 * for clients without EDNS and leaves no option but Padding (when asked)
 * and the client's own subnet; a served answer is never longer than what
 * was cached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void answer_side(const uint8_t *data, size_t size, uint8_t sel)
{
	dp_dns_view_t v, sv;
	if (dp_dns_parse_answer(data, size, &v) != 0)
		return;
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
	CHECK(sv.opt_ecs == w.opt_ecs);
	check_opts(copy, &sv, client_pad, fe != NULL, false);
	if (!client_opt)
		CHECK(!sv.has_opt);
	CHECK(!sv.opt_keepalive);
	if (!client_pad)
		CHECK(!sv.opt_padding);
	CHECK(dp_dns_question_equal(data, &v, copy, &sv));

	/* TTL clamp keeps the message valid. */
	memcpy(copy, data, size);
	dp_cache_clamp_ttls(copy, size, &v, sel >> 2);
	CHECK(dp_dns_parse_answer(copy, size, &sv) == 0);

	/* Cache: insert, look up, serve to a client asking the same question
	 * (the answer's own header and question stand in for the query). */
	dp_cache_t c;
	CHECK(dp_cache_init(&c, 1 << 20, 0, 86400, 3600) == 0);
	dp_cache_key_t k;
	dp_cache_key(data, &v, &k);
	if (fe)
		dp_cache_key_ecs(&k, fe, elen);
	int rc = dp_cache_insert(&c, &k, data, size, &v, 1000);
	CHECK(rc == 0 || rc == 1);
	bool stale;
	dp_cache_entry_t *e = dp_cache_lookup(&c, &k, 1000, false, &stale);
	CHECK(rc == 0 ? e != NULL : e == NULL);
	if (e) {
		dp_dns_view_t qv = v;
		qv.has_opt = client_opt;
		int m = dp_cache_serve(e, data, &qv, 2000 + (sel & 0x7f) * 1000ull, false, out,
				       sizeof(out));
		CHECK(m > 0 && (size_t)m <= size);
		CHECK(dp_dns_parse_answer(out, (size_t)m, &sv) == 0);
		CHECK(dp_rd16(out) == v.id);
		if (!client_opt)
			CHECK(!sv.has_opt);
		check_opts(out, &sv, false, fe != NULL, false);
		CHECK(dp_dns_question_equal(data, &v, out, &sv));
	}
	/* A SERVFAIL (or anything else) offered as one: cached only if it is. */
	rc = dp_cache_insert_servfail(&c, &k, data, size, &v, 5, 1000);
	CHECK(rc == 1 || (rc == 0 && DP_DNS_RCODE(v.flags) == DP_DNS_RCODE_SERVFAIL));
	dp_cache_destroy(&c);
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
