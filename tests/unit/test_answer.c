/* test_answer.c - dp_answer_personalise (core/answer.c): one answer fitted
 * to one client, from an upstream answer and from a cache entry.
 *
 * Answers and queries are assembled byte by byte (wire.h); an upstream
 * answer is parsed with dp_dns_parse_answer_rrs as upstream.c does, and
 * every output must parse again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "answer.h"
#include "cache.h"

#include "wire.h"

#define T_A 1
#define C_IN 1
#define QR DP_DNS_F_QR
#define RD DP_DNS_F_RD
#define RA DP_DNS_F_RA
#define AD DP_DNS_F_AD
#define DO_FLAG 0x8000u

static void set16(wire_t *w, size_t off, unsigned v)
{
	w->b[off] = (uint8_t)(v >> 8);
	w->b[off + 1] = (uint8_t)v;
}

/* Header and question; counts are set by the caller (set16). */
static void begin(wire_t *w, unsigned id, unsigned flags, const char *name)
{
	put_hdr(w, id, flags, 1, 0, 0, 0);
	put_name(w, name);
	put16(w, T_A);
	put16(w, C_IN);
}

/* An A record owned by the question name (pointer). */
static void put_a(wire_t *w, uint32_t ttl, uint8_t last)
{
	const uint8_t ip[4] = { 192, 0, 2, last };
	put16(w, 0xc00c);
	put_rr_tail(w, T_A, C_IN, ttl, ip, 4);
}

/* An OPT with the given options. */
static void put_opt(wire_t *w, bool do_bit, const void *opts, size_t len)
{
	put8(w, 0);
	put_rr_tail(w, DP_DNS_TYPE_OPT, 1232, do_bit ? DO_FLAG : 0, opts, len);
}

/* A query for name from a client: id, flags, EDNS (with Padding when
 * padding). */
static void query(wire_t *w, unsigned id, unsigned flags, const char *name, bool edns,
		  bool padding, dp_dns_view_t *v)
{
	static const uint8_t pad[4] = { 0, DP_DNS_OPT_PADDING, 0, 0 };
	begin(w, id, flags, name);
	if (edns) {
		put_opt(w, false, pad, padding ? 4 : 0);
		set16(w, 10, 1);
	}
	assert_int_equal(dp_dns_parse_query(w->b, w->n, v), 0);
}

typedef struct out {
	uint8_t b[70000];
	int n;
	bool tc;
	dp_dns_view_t v;
} out_t;

/* Personalise upstream answer a (parsed into pa) for the client of query q
 * (view qv), over UDP when udp_limit; the output must parse. */
static out_t *from_upstream(const wire_t *a, const dp_dns_answer_t *pa, uint32_t ttl_max,
			    const wire_t *q, const dp_dns_view_t *qv, uint16_t udp_limit)
{
	static out_t o;
	dp_answer_src_t src;
	dp_answer_client_t cl = { q->b, qv, NULL, 0, udp_limit, false, 0, 0 };
	dp_answer_src_upstream(&src, a->b, a->n, pa, ttl_max);
	o.n = dp_answer_personalise(&src, &cl, o.b, sizeof(o.b), &o.tc);
	assert_true(o.n > 0);
	assert_int_equal(dp_dns_parse_answer(o.b, (size_t)o.n, &o.v), 0);
	return &o;
}

/* The TTL of the i-th record (OPT included) of o. */
static uint32_t ttl_at(const out_t *o, unsigned i)
{
	size_t p = o->v.question_end;
	for (unsigned k = 0; k < i; k++) {
		p = dp_dns_skip_name(o->b, p);
		p += 10 + dp_rd16(o->b + p + 8);
	}
	p = dp_dns_skip_name(o->b, p);
	return dp_rd32(o->b + p + 4);
}

static void id_case_and_flags(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	begin(&a, 0x1111, QR | RD | RA | AD, "www.example.com");
	put_a(&a, 300, 1);
	set16(&a, 6, 1);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	/* RD clear, neither AD nor DO: no AD back. */
	query(&q, 0x2222, 0, "WwW.ExAmple.COM", false, false, &qv);
	out_t *o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 0);
	assert_int_equal(o->v.id, 0x2222);
	assert_int_equal(o->v.flags, QR | RA);
	assert_memory_equal(o->b + 12, q.b + 12, qv.qname_len);
	assert_false(o->tc);
	/* AD asked: AD kept; RD echoed. */
	query(&q, 0x3333, RD | AD, "www.EXAMPLE.com", false, false, &qv);
	o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 0);
	assert_int_equal(o->v.flags, QR | RD | RA | AD);
	/* The source is untouched. */
	assert_int_equal(dp_rd16(a.b), 0x1111);
	assert_memory_equal(a.b + 13, "www", 3);
}

/* RFC 2181 8 and --cache-max-ttl: 2^31 and above as 0, the rest clamped. */
static void ttls_clamped_and_big_is_zero(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	begin(&a, 1, QR | RD | RA, "big.example");
	put_a(&a, 0x80000000u, 1);
	put_a(&a, 0xffffffffu, 2);
	put_a(&a, 500, 3);
	put_a(&a, 50, 4);
	set16(&a, 6, 4);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	query(&q, 1, RD, "big.example", false, false, &qv);
	out_t *o = from_upstream(&a, &pa, 100, &q, &qv, 0);
	assert_int_equal(ttl_at(o, 0), 0);
	assert_int_equal(ttl_at(o, 1), 0);
	assert_int_equal(ttl_at(o, 2), 100);
	assert_int_equal(ttl_at(o, 3), 50);
}

/* Aged by the source's age, never below 0; stale: all 30. */
static void ttls_aged_and_stale(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	begin(&a, 1, QR | RD | RA, "age.example");
	put_a(&a, 300, 1);
	put_a(&a, 60, 2);
	set16(&a, 6, 2);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	query(&q, 9, RD, "age.example", false, false, &qv);
	dp_answer_src_t src;
	dp_answer_client_t cl = { q.b, &qv, NULL, 0, 0, false, 0, 0 };
	static out_t o;
	dp_answer_src_upstream(&src, a.b, a.n, &pa, UINT32_MAX);
	src.age = 100;
	o.n = dp_answer_personalise(&src, &cl, o.b, sizeof(o.b), &o.tc);
	assert_int_equal(dp_dns_parse_answer(o.b, (size_t)o.n, &o.v), 0);
	assert_int_equal(ttl_at(&o, 0), 200);
	assert_int_equal(ttl_at(&o, 1), 0);
	src.stale = true;
	o.n = dp_answer_personalise(&src, &cl, o.b, sizeof(o.b), &o.tc);
	assert_int_equal(ttl_at(&o, 0), DP_ANSWER_STALE_TTL);
	assert_int_equal(ttl_at(&o, 1), DP_ANSWER_STALE_TTL);
}

/* More records than dp_dns_answer_t keeps offsets for: every TTL is still
 * rewritten (walked on from the 64th). */
static void ttls_past_the_cap(void **state)
{
	(void)state;
	wire_t a, q;
	static dp_dns_answer_t pa;
	dp_dns_view_t qv;
	const unsigned n = DP_DNS_RR_MAX + 36;
	begin(&a, 1, QR | RD | RA, "many.example");
	for (unsigned i = 0; i < n; i++)
		put_a(&a, 0x80000000u + i, (uint8_t)i);
	set16(&a, 6, n);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	assert_int_equal(pa.nttl, DP_DNS_RR_MAX);
	assert_int_equal(pa.ttl_total, n);
	query(&q, 1, RD, "many.example", false, false, &qv);
	out_t *o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 0);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(ttl_at(o, i), 0);
}

/* No OPT for a client that sent none, though the answer has one and a
 * record after it (moved down, its TTL rewritten before the move). */
static void opt_dropped_for_client_without(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	static const uint8_t nsid[8] = { 0, 3, 0, 4, 'a', 'b', 'c', 'd' };
	begin(&a, 1, QR | RD | RA, "opt.example");
	put_a(&a, 300, 1);
	put_opt(&a, true, nsid, sizeof(nsid));
	put_a(&a, 0x90000000u, 2); /* additional, after the OPT */
	set16(&a, 6, 1);
	set16(&a, 10, 2);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	assert_int_equal(pa.v.opt_after, 1);
	query(&q, 5, RD, "opt.example", false, false, &qv);
	out_t *o = from_upstream(&a, &pa, 200, &q, &qv, 0);
	assert_false(o->v.has_opt);
	assert_int_equal(o->v.arcount, 1);
	assert_int_equal(o->n, (int)a.n - 11 - (int)sizeof(nsid));
	assert_int_equal(ttl_at(o, 0), 200);
	assert_int_equal(ttl_at(o, 1), 0);
	/* With EDNS the OPT stays, without the upstream's NSID. */
	query(&q, 5, RD, "opt.example", true, false, &qv);
	o = from_upstream(&a, &pa, 200, &q, &qv, 0);
	assert_true(o->v.has_opt && o->v.do_bit);
	assert_int_equal(o->v.opt_len, 11);
	assert_int_equal(ttl_at(o, 2), 0);
}

/* The upstream's Padding reaches a client that asked for padding (RFC
 * 7830, RFC 8467), and no other. */
static void padding_for_client_that_asked(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	static const uint8_t pad[12] = { 0, DP_DNS_OPT_PADDING, 0, 8 };
	begin(&a, 1, QR | RD | RA, "pad.example");
	put_a(&a, 300, 1);
	put_opt(&a, false, pad, sizeof(pad));
	set16(&a, 6, 1);
	set16(&a, 10, 1);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	query(&q, 5, RD, "pad.example", true, true, &qv);
	out_t *o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 0);
	assert_true(o->v.opt_padding);
	assert_int_equal(o->n, (int)a.n);
	query(&q, 5, RD, "pad.example", true, false, &qv);
	o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 0);
	assert_true(o->v.has_opt);
	assert_false(o->v.opt_padding);
}

/* Over UDP an answer larger than the client takes is cut to header,
 * question and OPT with TC; exactly the limit, or TCP, is not. */
static void truncated_to_udp_limit(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	begin(&a, 1, QR | RD | RA, "tc.example");
	for (unsigned i = 0; i < 40; i++)
		put_a(&a, 300, (uint8_t)i);
	put_opt(&a, false, NULL, 0);
	set16(&a, 6, 40);
	set16(&a, 10, 1);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	query(&q, 5, RD, "tc.example", true, false, &qv);
	out_t *o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 512);
	assert_true(o->tc);
	assert_true(o->v.flags & DP_DNS_F_TC);
	assert_int_equal(o->v.ancount, 0);
	assert_true(o->v.has_opt);
	assert_int_equal(o->n, (int)(o->v.question_end + 11));
	o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, (uint16_t)a.n);
	assert_false(o->tc);
	assert_int_equal(o->n, (int)a.n);
	o = from_upstream(&a, &pa, UINT32_MAX, &q, &qv, 0);
	assert_false(o->tc);
	assert_int_equal(o->v.ancount, 40);
}

static void too_big_for_output(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	begin(&a, 1, QR | RD | RA, "www.example");
	put_a(&a, 300, 1);
	set16(&a, 6, 1);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	query(&q, 5, RD, "www.example", false, false, &qv);
	dp_answer_src_t src;
	dp_answer_client_t cl = { q.b, &qv, NULL, 0, 0, false, 0, 0 };
	uint8_t small[20];
	bool tc;
	dp_answer_src_upstream(&src, a.b, a.n, &pa, UINT32_MAX);
	assert_int_equal(dp_answer_personalise(&src, &cl, small, sizeof(small), &tc), DP_E_TOOBIG);
}

/* From the cache: an entry whose OPT lost an option at insert, with a
 * record after it, is aged by the offsets stored at insert (shifted with
 * the record) and served to clients with and without EDNS. */
static void from_cache_entry(void **state)
{
	(void)state;
	wire_t a, q;
	dp_dns_answer_t pa;
	dp_dns_view_t qv;
	static const uint8_t nsid[8] = { 0, 3, 0, 4, 'a', 'b', 'c', 'd' };
	begin(&a, 1, QR | RD | RA, "ent.example");
	put_a(&a, 300, 1);
	put_opt(&a, false, nsid, sizeof(nsid));
	put_a(&a, 100, 2);
	set16(&a, 6, 1);
	set16(&a, 10, 2);
	assert_int_equal(dp_dns_parse_answer_rrs(a.b, a.n, &pa), 0);
	dp_cache_t c;
	dp_cache_key_t k;
	assert_int_equal(dp_cache_init(&c, 1 << 20, 0, 86400, 0), 0);
	query(&q, 7, RD, "ENT.example", true, false, &qv);
	dp_cache_key(q.b, &qv, &k);
	assert_int_equal(dp_cache_insert(&c, &k, a.b, a.n, &pa, 1000), 0);
	bool stale;
	dp_cache_entry_t *e = dp_cache_lookup(&c, &k, 31000, false, &stale);
	assert_non_null(e);
	dp_answer_src_t src;
	dp_answer_client_t cl = { q.b, &qv, NULL, 0, 0, false, 0, 0 };
	static out_t o;
	dp_cache_entry_src(e, 31000, false, &src);
	o.n = dp_answer_personalise(&src, &cl, o.b, sizeof(o.b), &o.tc);
	assert_int_equal(dp_dns_parse_answer(o.b, (size_t)o.n, &o.v), 0);
	assert_int_equal(o.v.id, 7);
	assert_memory_equal(o.b + 12, q.b + 12, qv.qname_len);
	assert_int_equal(o.v.opt_len, 11); /* the NSID stayed out */
	assert_int_equal(ttl_at(&o, 0), 270);
	assert_int_equal(ttl_at(&o, 2), 70);
	/* Without EDNS: no OPT; the record after it moved again. */
	query(&q, 8, RD, "ent.EXAMPLE", false, false, &qv);
	o.n = dp_answer_personalise(&src, &cl, o.b, sizeof(o.b), &o.tc);
	assert_int_equal(dp_dns_parse_answer(o.b, (size_t)o.n, &o.v), 0);
	assert_false(o.v.has_opt);
	assert_int_equal(ttl_at(&o, 1), 70);
	dp_cache_destroy(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(id_case_and_flags),
		cmocka_unit_test(ttls_clamped_and_big_is_zero),
		cmocka_unit_test(ttls_aged_and_stale),
		cmocka_unit_test(ttls_past_the_cap),
		cmocka_unit_test(opt_dropped_for_client_without),
		cmocka_unit_test(padding_for_client_that_asked),
		cmocka_unit_test(truncated_to_udp_limit),
		cmocka_unit_test(too_big_for_output),
		cmocka_unit_test(from_cache_entry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
