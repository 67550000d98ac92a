/* fuzz_edns_cache.c - what dotproxy does to a message after validation:
 * padding a query for the upstream, scrubbing an answer for a client, and
 * the cache's insert, serve and TTL clamp. Invariants: every output is
 * again a valid message of the same question; padded queries are a
 * multiple of the block; scrubbing never grows a message and removes the
 * OPT for clients without EDNS; a served answer is never longer than what
 * was cached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "edns.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

static uint8_t out[65536 + 256];
static uint8_t copy[65536];

static void query_side(const uint8_t *data, size_t size)
{
	dp_dns_view_t v, pv;
	if (dp_dns_parse_query(data, size, &v) != 0)
		return;
	size_t need = (size_t)v.msg_end + 11 + 4 + 4 + DP_EDNS_QUERY_BLOCK;
	int n = dp_edns_pad_query(data, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, need);
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
}

static void answer_side(const uint8_t *data, size_t size, uint8_t sel)
{
	dp_dns_view_t v, sv;
	if (dp_dns_parse_answer(data, size, &v) != 0)
		return;
	bool client_opt = sel & 1, client_pad = sel & 2;
	memcpy(copy, data, size);
	dp_dns_view_t w = v;
	size_t n = dp_edns_scrub_answer(copy, size, &w, client_opt, client_pad, NULL, 0);
	CHECK(n <= size);
	CHECK(dp_dns_parse_answer(copy, n, &sv) == 0);
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
		CHECK(dp_dns_question_equal(data, &v, out, &sv));
	}
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
