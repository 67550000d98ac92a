/* test_dns.c - DNS wire validation, views, the answers dotproxy builds.
 *
 * Messages are assembled byte by byte with the small writer below, so each
 * test shows exactly which octets it feeds the parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dns.h"

/* ---- a tiny wire writer ------------------------------------------------ */

#include "wire.h"

static void set16(wire_t *w, size_t off, unsigned v)
{
	w->b[off] = (uint8_t)(v >> 8);
	w->b[off + 1] = (uint8_t)v;
}

/* A name of labels of the given lengths ('a' filled), then the root. */
static void put_long_name(wire_t *w, const unsigned *labels, size_t nlabels)
{
	for (size_t i = 0; i < nlabels; i++) {
		put8(w, labels[i]);
		for (unsigned j = 0; j < labels[i]; j++)
			put8(w, 'a');
	}
	put8(w, 0);
}

static void put_opt(wire_t *w, unsigned udp, unsigned ext_rcode, unsigned version, unsigned flags,
		    const void *rdata, size_t rdlen)
{
	put8(w, 0);
	put_rr_tail(w, DP_DNS_TYPE_OPT, udp, (uint32_t)ext_rcode << 24 | version << 16 | flags,
		    rdata, rdlen);
}

#define T_A 1
#define T_NS 2
#define T_CNAME 5
#define T_SOA 6
#define T_AAAA 28
#define C_IN 1
#define C_CH 3
#define DO_FLAG 0x8000

/* "www.example.com" IN A, RD, id 0x1234. */
static void make_query(wire_t *w, bool edns)
{
	put_hdr(w, 0x1234, DP_DNS_F_RD, 1, 0, 0, edns ? 1 : 0);
	put_name(w, "www.example.com");
	put16(w, T_A);
	put16(w, C_IN);
	if (edns)
		put_opt(w, 1232, 0, 0, DO_FLAG, NULL, 0);
}

static const uint8_t addr1[4] = { 192, 0, 2, 1 };
static const uint8_t addr2[4] = { 192, 0, 2, 2 };

/* ---- queries ------------------------------------------------------------ */

static void query_plain(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, false);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.id, 0x1234);
	assert_int_equal(v.flags, DP_DNS_F_RD);
	assert_int_equal(v.qdcount, 1);
	assert_true(v.has_question);
	assert_int_equal(v.qname_off, 12);
	assert_int_equal(v.qname_len, 17); /* 3www7example3com0 */
	assert_int_equal(v.qtype, T_A);
	assert_int_equal(v.qclass, C_IN);
	assert_int_equal(v.question_end, 12 + 17 + 4);
	assert_int_equal(v.msg_end, w.n);
	assert_false(v.has_opt);
	assert_false(v.do_bit);
	assert_int_equal(v.udp_size, 512);
}

static void query_edns(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, true);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_true(v.has_opt);
	assert_true(v.do_bit);
	assert_int_equal(v.edns_version, 0);
	assert_int_equal(v.udp_size, 1232);
	assert_int_equal(v.opt_off, v.question_end);
	assert_int_equal(v.opt_len, 11);
	assert_int_equal(v.msg_end, w.n);
	assert_int_equal(v.arcount, 1);
}

static void query_edns_no_do_small_size(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	put_hdr(&w, 7, 0, 1, 0, 0, 1);
	put_name(&w, "example.org");
	put16(&w, T_AAAA);
	put16(&w, C_IN);
	put_opt(&w, 100, 0, 0, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_true(v.has_opt);
	assert_false(v.do_bit);
	assert_int_equal(v.udp_size, 512); /* sizes below 512 mean 512 */
	assert_int_equal(v.qtype, T_AAAA);
}

static void query_edns_options(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* COOKIE (10) with an 8-byte client cookie, then padding (12) of 3. */
	static const uint8_t opts[] = { 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
					0, 12, 0, 3, 0, 0, 0 };
	put_hdr(&w, 7, 0, 1, 0, 0, 1);
	put_name(&w, "example.org");
	put16(&w, T_A);
	put16(&w, C_IN);
	put_opt(&w, 4096, 0, 0, DO_FLAG, opts, sizeof(opts));
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.opt_len, 11 + sizeof(opts));
	assert_int_equal(v.udp_size, 4096);
	assert_int_equal(v.msg_end, w.n);
}

static void query_edns_options_overrun(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* The option claims 8 bytes, the RDATA holds 4 after its header. */
	static const uint8_t bad_len[] = { 0, 10, 0, 8, 1, 2, 3, 4 };
	/* Three bytes: not even an option header. */
	static const uint8_t stub[] = { 0, 10, 0 };
	put_hdr(&w, 7, 0, 1, 0, 0, 1);
	put_name(&w, "example.org");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t opt_at = w.n;
	put_opt(&w, 4096, 0, 0, 0, bad_len, sizeof(bad_len));
	put_bytes(&w, "\0\0\0\0\0\0\0\0", 8); /* bytes the option might run into */
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	w.n = opt_at;
	put_opt(&w, 4096, 0, 0, 0, stub, sizeof(stub));
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

static void query_response_bit(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, false);
	set16(&w, 2, DP_DNS_F_QR | DP_DNS_F_RD);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_RESPONSE);
	assert_int_equal(v.id, 0x1234);
}

static void query_short(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, false);
	assert_int_equal(dp_dns_parse_query(w.b, 0, &v), DP_E_MALFORMED);
	assert_int_equal(dp_dns_parse_query(w.b, 11, &v), DP_E_MALFORMED);
	assert_int_equal(dp_dns_parse_answer(w.b, 11, &v), DP_E_MALFORMED);
	/* A bare header is readable: FORMERR (no question), not MALFORMED. */
	assert_int_equal(dp_dns_parse_query(w.b, 12, &v), DP_E_FORMERR);
	assert_int_equal(v.id, 0x1234);
	assert_false(v.has_question);
}

static void query_too_long(void **state)
{
	static uint8_t big[DP_DNS_MAX_MSG + 1];
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, false);
	memcpy(big, w.b, w.n);
	assert_int_equal(dp_dns_parse_query(big, sizeof(big), &v), DP_E_MALFORMED);
	/* 65535 bytes is still a message: the question, then ignored bytes. */
	assert_int_equal(dp_dns_parse_query(big, DP_DNS_MAX_MSG, &v), 0);
	assert_int_equal(v.msg_end, w.n);
}

static void query_notimp(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	static const unsigned opcodes[] = { 1, 2, 4, 5, 15 };
	for (size_t i = 0; i < DP_ARRAY_LEN(opcodes); i++) {
		make_query(&w, false);
		set16(&w, 2, opcodes[i] << 11 | DP_DNS_F_RD);
		assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_NOTIMP);
		assert_int_equal(v.id, 0x1234);
		assert_int_equal(DP_DNS_OPCODE(v.flags), opcodes[i]);
		/* The question is read so the NOTIMP can echo it. */
		assert_true(v.has_question);
		assert_int_equal(v.question_end, 12 + 17 + 4);
	}
}

static void query_qdcount(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, false);
	set16(&w, 4, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	assert_int_equal(v.id, 0x1234);
	assert_false(v.has_question);

	/* Two well-formed questions are still refused. */
	put_hdr(&w, 0x4321, 0, 2, 0, 0, 0);
	put_name(&w, "a.example");
	put16(&w, T_A);
	put16(&w, C_IN);
	put_name(&w, "b.example");
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	assert_int_equal(v.id, 0x4321);
	assert_false(v.has_question);
}

static void query_label_lengths(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	static const unsigned l63[] = { 63, 3 };
	static const unsigned l64[] = { 64, 3 };
	put_hdr(&w, 1, 0, 1, 0, 0, 0);
	put_long_name(&w, l63, 2);
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.qname_len, 64 + 4 + 1);

	/* 64 = 0x40: the extended label type, refused. */
	put_hdr(&w, 1, 0, 1, 0, 0, 0);
	put_long_name(&w, l64, 2);
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	assert_false(v.has_question);

	/* 0x80: the reserved label type. */
	put_hdr(&w, 1, 0, 1, 0, 0, 0);
	put8(&w, 0x81);
	put8(&w, 'a');
	put8(&w, 0);
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

static void query_name_length(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* 3 * 64 + 62 + 1 = 255 octets on the wire: the longest name. */
	static const unsigned l255[] = { 63, 63, 63, 61 };
	static const unsigned l256[] = { 63, 63, 63, 62 };
	put_hdr(&w, 1, 0, 1, 0, 0, 0);
	put_long_name(&w, l255, 4);
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.qname_len, 255);
	assert_int_equal(v.question_end, 12 + 255 + 4);

	put_hdr(&w, 1, 0, 1, 0, 0, 0);
	put_long_name(&w, l256, 4);
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

static void query_question_truncated(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, false);
	/* Cut anywhere inside the name or before qtype/qclass end. */
	for (size_t cut = 13; cut < w.n; cut++) {
		assert_int_equal(dp_dns_parse_query(w.b, cut, &v), DP_E_FORMERR);
		assert_false(v.has_question);
	}
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
}

static void query_pointer_in_question(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* www + pointer to offset 4, where "00 01" (qdcount) reads as the
	 * root: a backwards, in-bounds pointer, legal in any later name. */
	put_hdr(&w, 1, 0, 1, 0, 0, 0);
	put8(&w, 3);
	put_bytes(&w, "www", 3);
	put16(&w, 0xc004);
	put16(&w, T_A);
	put16(&w, C_IN);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	assert_false(v.has_question);

	/* As an answer owner, a pointer into the header is refused too (the
	 * header holds no names), and one to the question name is accepted. */
	put_hdr(&w, 1, 0, 1, 1, 0, 0);
	put_name(&w, "www");
	put16(&w, T_A);
	put16(&w, C_IN);
	put16(&w, 0xc004);
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	put_hdr(&w, 1, 0, 1, 1, 0, 0);
	put_name(&w, "www");
	put16(&w, T_A);
	put16(&w, C_IN);
	put16(&w, 0xc00c);
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
}

/* A query, then one additional RR whose owner is the given bytes. */
static void make_query_with_owner(wire_t *w, const uint8_t *owner, size_t olen)
{
	put_hdr(w, 1, 0, 1, 0, 0, 1);
	put_name(w, "example.com");
	put16(w, T_A);
	put16(w, C_IN);
	put_bytes(w, owner, olen);
	put_rr_tail(w, T_A, C_IN, 60, addr1, 4);
}

static void pointer_bad_targets(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	size_t rr = 12 + 13 + 4; /* the additional RR's owner offset */

	/* To itself. */
	uint8_t self[2] = { 0xc0 | (uint8_t)(rr >> 8), (uint8_t)rr };
	make_query_with_owner(&w, self, 2);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);

	/* Past the end of the message. */
	static const uint8_t oob[2] = { 0xff, 0xff };
	make_query_with_owner(&w, oob, 2);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);

	/* Backwards to the question: fine. */
	static const uint8_t back[2] = { 0xc0, 0x0c };
	make_query_with_owner(&w, back, 2);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);

	/* A pointer cut by the end of the message. */
	put_hdr(&w, 1, 0, 1, 0, 0, 1);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	put8(&w, 0xc0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

static void pointer_forward(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* Answer 1's owner points forward at answer 2's owner, a plain name. */
	put_hdr(&w, 1, 0, 1, 2, 0, 0);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t rr1 = w.n;
	size_t rr2 = rr1 + 2 + 10 + 4;
	put16(&w, 0xc000 | (unsigned)rr2);
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	assert_int_equal(w.n, rr2);
	put_name(&w, "example.net");
	put_rr_tail(&w, T_A, C_IN, 60, addr2, 4);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);

	/* The other way round (2 points back at 1's plain name) is fine. */
	put_hdr(&w, 1, 0, 1, 2, 0, 0);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	rr1 = w.n;
	put_name(&w, "example.net");
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	put16(&w, 0xc000 | (unsigned)rr1);
	put_rr_tail(&w, T_A, C_IN, 60, addr2, 4);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
}

static void pointer_loop(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* Owner 1 = "a" + pointer to owner 2; owner 2 = pointer to owner 1. */
	put_hdr(&w, 1, 0, 1, 2, 0, 0);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t rr1 = w.n;
	size_t rr2 = rr1 + 4 + 10 + 4;
	put8(&w, 1);
	put8(&w, 'a');
	put16(&w, 0xc000 | (unsigned)rr2);
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	assert_int_equal(w.n, rr2);
	put16(&w, 0xc000 | (unsigned)rr1);
	put_rr_tail(&w, T_A, C_IN, 60, addr2, 4);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR); /* QR=0 anyway */
	set16(&w, 2, DP_DNS_F_QR);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
	set16(&w, 2, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

/* n answers, each owner a pointer to the previous owner, the first to the
 * question: the owner of answer k takes k jumps. */
static void make_pointer_chain(wire_t *w, unsigned n)
{
	put_hdr(w, 1, DP_DNS_F_QR, 1, n, 0, 0);
	put_name(w, "example.com");
	put16(w, T_A);
	put16(w, C_IN);
	size_t prev = 12;
	for (unsigned i = 0; i < n; i++) {
		size_t here = w->n;
		put16(w, 0xc000 | (unsigned)prev);
		put_rr_tail(w, T_A, C_IN, 60, addr1, 4);
		prev = here;
	}
}

static void pointer_jump_limit(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_pointer_chain(&w, DP_DNS_MAX_JUMPS);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_int_equal(v.ancount, DP_DNS_MAX_JUMPS);
	make_pointer_chain(&w, DP_DNS_MAX_JUMPS + 1);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
}

static void rr_past_end(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	put_hdr(&w, 1, 0, 1, 0, 0, 1);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	put16(&w, 0xc00c);
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	/* RDLENGTH one past the end. */
	set16(&w, w.n - 6, 5);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	set16(&w, w.n - 6, 4);
	/* The RR's fixed part cut short. */
	for (size_t cut = w.n - 4 - 10; cut < w.n; cut++)
		assert_int_equal(dp_dns_parse_query(w.b, cut, &v), DP_E_FORMERR);
	/* A count promising an RR that is not there. */
	set16(&w, 10, 2);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	set16(&w, 10, 0);
	set16(&w, 8, 1);
	set16(&w, 10, 1);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

static void opt_twice(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, true);
	put_opt(&w, 1232, 0, 0, 0, NULL, 0);
	set16(&w, 10, 2);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	/* The same bytes with the count at 1: the second OPT is trailing junk. */
	set16(&w, 10, 1);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.msg_end, w.n - 11);
}

static void opt_wrong_section(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* Answer section. */
	make_query(&w, true);
	set16(&w, 6, 1);
	set16(&w, 10, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	/* Authority section. */
	set16(&w, 6, 0);
	set16(&w, 8, 1);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
	/* Answers from upstream get the same rule. */
	set16(&w, 2, DP_DNS_F_QR);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
	set16(&w, 8, 0);
	set16(&w, 10, 1);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_true(v.has_opt);
}

static void opt_owner_not_root(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	put_hdr(&w, 1, 0, 1, 0, 0, 1);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	put_name(&w, "com");
	put_rr_tail(&w, DP_DNS_TYPE_OPT, 1232, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);

	/* A pointer to a root label is not the literal root owner that
	 * RFC 6891 6.1.2 asks for: offset 4 holds 0x00 (qdcount's high byte). */
	put_hdr(&w, 1, 0, 1, 0, 0, 1);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	put16(&w, 0xc004);
	put_rr_tail(&w, DP_DNS_TYPE_OPT, 1232, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_FORMERR);
}

static void edns_badvers(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	put_hdr(&w, 0xbeef, DP_DNS_F_RD, 1, 0, 0, 1);
	put_name(&w, "example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	put_opt(&w, 1400, 0, 1, DO_FLAG, NULL, 0);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), DP_E_BADVERS);
	/* The view is complete: the BADVERS answer needs all of it. */
	assert_int_equal(v.id, 0xbeef);
	assert_true(v.has_question);
	assert_true(v.has_opt);
	assert_int_equal(v.edns_version, 1);
	assert_true(v.do_bit);
	assert_int_equal(v.udp_size, 1400);
	assert_int_equal(v.msg_end, w.n);
}

static void trailing_bytes(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_query(&w, true);
	size_t real = w.n;
	put_bytes(&w, "\xde\xad\xbe\xef\x00", 5);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.msg_end, real);
	assert_true(v.has_opt);
}

/* ---- answers ------------------------------------------------------------ */

/* www.example.com CNAME web.example.com, web.example.com A x2; names
 * compressed against the question and against the CNAME's RDATA. */
static void make_answer(wire_t *w, bool edns)
{
	put_hdr(w, 0x5555, DP_DNS_F_QR | DP_DNS_F_RD | DP_DNS_F_RA, 1, 3, 0, edns ? 1 : 0);
	put_name(w, "www.example.com");
	put16(w, T_A);
	put16(w, C_IN);
	/* www.example.com CNAME web.<example.com at 16> */
	put16(w, 0xc00c);
	put16(w, T_CNAME);
	put16(w, C_IN);
	put32(w, 300);
	put16(w, 6);
	size_t web = w->n;
	put8(w, 3);
	put_bytes(w, "web", 3);
	put16(w, 0xc010);
	/* web.example.com A, twice: owner points into the CNAME's RDATA */
	put16(w, 0xc000 | (unsigned)web);
	put_rr_tail(w, T_A, C_IN, 300, addr1, 4);
	put16(w, 0xc000 | (unsigned)web);
	put_rr_tail(w, T_A, C_IN, 300, addr2, 4);
	if (edns)
		put_opt(w, 1232, 0, 0, DO_FLAG, NULL, 0);
}

static void answer_compressed(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_answer(&w, false);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_int_equal(v.id, 0x5555);
	assert_int_equal(v.ancount, 3);
	assert_int_equal(v.qtype, T_A);
	assert_int_equal(v.question_end, 12 + 17 + 4);
	assert_int_equal(v.msg_end, w.n);
	assert_false(v.has_opt);

	char name[300];
	dp_dns_name_str(w.b, w.n, v.question_end + 12, name, sizeof(name));
	assert_string_equal(name, "web.example.com.");
	dp_dns_name_str(w.b, w.n, v.question_end + 18, name, sizeof(name));
	assert_string_equal(name, "web.example.com.");
}

static void answer_edns(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_answer(&w, true);
	w.b[w.n - 11 + 5] = 1; /* extended RCODE high bits */
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_true(v.has_opt);
	assert_int_equal(v.opt_off, w.n - 11);
	assert_int_equal(v.ext_rcode, 1);
	assert_true(v.do_bit);
}

static void answer_rejects(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	make_answer(&w, false);
	set16(&w, 2, DP_DNS_F_RD); /* QR=0 */
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
	make_answer(&w, false);
	set16(&w, 4, 0);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
	make_answer(&w, false);
	set16(&w, 4, 2);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
	make_answer(&w, false);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n - 1, &v), DP_E_FORMERR);
	/* Queries are not answers and answers not queries. */
	make_query(&w, false);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
}

static void answer_expanded_name_too_long(void **state)
{
	wire_t w;
	dp_dns_view_t v;
	/* Question name of 253 octets; an owner "a" + pointer to it expands to
	 * 2 + 253 = 255 (fine), "abc" + pointer to 4 + 253 = 257 (too long). */
	static const unsigned l253[] = { 63, 63, 63, 59 };
	for (unsigned extra = 1; extra <= 3; extra += 2) {
		put_hdr(&w, 1, DP_DNS_F_QR, 1, 1, 0, 0);
		put_long_name(&w, l253, 4);
		assert_int_equal(w.n, 12 + 253);
		put16(&w, T_A);
		put16(&w, C_IN);
		put8(&w, extra);
		for (unsigned i = 0; i < extra; i++)
			put8(&w, 'x');
		put16(&w, 0xc00c);
		put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
		assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), extra == 1 ? 0 : DP_E_FORMERR);
	}
}

/* ---- question_equal ----------------------------------------------------- */

static void question_equal(void **state)
{
	wire_t a, b;
	dp_dns_view_t va, vb;
	make_query(&a, false);
	assert_int_equal(dp_dns_parse_query(a.b, a.n, &va), 0);

	/* Case differs, ID differs, EDNS differs: same question. */
	put_hdr(&b, 0x9999, 0, 1, 0, 0, 1);
	put_name(&b, "WwW.ExAmPlE.CoM");
	put16(&b, T_A);
	put16(&b, C_IN);
	put_opt(&b, 512, 0, 0, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
	assert_true(dp_dns_question_equal(a.b, &va, b.b, &vb));
	assert_true(dp_dns_question_equal(b.b, &vb, a.b, &va));

	/* Type differs. */
	set16(&b, vb.question_end - 4, T_AAAA);
	assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
	assert_false(dp_dns_question_equal(a.b, &va, b.b, &vb));
	/* Class differs. */
	set16(&b, vb.question_end - 4, T_A);
	set16(&b, vb.question_end - 2, C_CH);
	assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
	assert_false(dp_dns_question_equal(a.b, &va, b.b, &vb));

	/* One letter differs. */
	make_query(&b, false);
	b.b[12 + 1] = 'v';
	assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
	assert_false(dp_dns_question_equal(a.b, &va, b.b, &vb));

	/* Different length. */
	put_hdr(&b, 1, 0, 1, 0, 0, 0);
	put_name(&b, "www.example.co");
	put16(&b, T_A);
	put16(&b, C_IN);
	assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
	assert_false(dp_dns_question_equal(a.b, &va, b.b, &vb));

	/* Same letters, labels cut differently: 3www7example vs 4wwwe6xample. */
	put_hdr(&b, 1, 0, 1, 0, 0, 0);
	put_name(&b, "wwwe.xample.com");
	put16(&b, T_A);
	put16(&b, C_IN);
	assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
	assert_int_equal(vb.qname_len, va.qname_len);
	assert_false(dp_dns_question_equal(a.b, &va, b.b, &vb));

	/* A view without a question equals nothing, not even itself. */
	dp_dns_view_t none;
	assert_int_equal(dp_dns_parse_query(a.b, 12, &none), DP_E_FORMERR);
	assert_false(dp_dns_question_equal(a.b, &none, a.b, &none));
	assert_false(dp_dns_question_equal(a.b, &va, a.b, &none));
}

static void question_equal_only_letters_fold(void **state)
{
	wire_t a, b;
	dp_dns_view_t va, vb;
	/* '[' (0x5b) and '{' (0x7b) are 0x20 apart but are not letters;
	 * '@' (0x40) and '`' (0x60) likewise. */
	static const char *pairs[][2] = { { "a[b", "a{b" }, { "@", "`" }, { "a^", "a~" } };
	for (size_t i = 0; i < DP_ARRAY_LEN(pairs); i++) {
		put_hdr(&a, 1, 0, 1, 0, 0, 0);
		put_name(&a, pairs[i][0]);
		put16(&a, T_A);
		put16(&a, C_IN);
		put_hdr(&b, 1, 0, 1, 0, 0, 0);
		put_name(&b, pairs[i][1]);
		put16(&b, T_A);
		put16(&b, C_IN);
		assert_int_equal(dp_dns_parse_query(a.b, a.n, &va), 0);
		assert_int_equal(dp_dns_parse_query(b.b, b.n, &vb), 0);
		assert_false(dp_dns_question_equal(a.b, &va, b.b, &vb));
	}
}

static void question_equal_query_and_answer(void **state)
{
	wire_t q, r;
	dp_dns_view_t vq, vr;
	make_query(&q, false);
	make_answer(&r, true);
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), 0);
	assert_int_equal(dp_dns_parse_answer(r.b, r.n, &vr), 0);
	assert_true(dp_dns_question_equal(q.b, &vq, r.b, &vr));
}

/* ---- build_error -------------------------------------------------------- */

static void build_error_plain(void **state)
{
	wire_t q;
	dp_dns_view_t vq, vr;
	uint8_t out[512];
	make_query(&q, false);
	set16(&q, 2, DP_DNS_F_RD | DP_DNS_F_CD | DP_DNS_F_AD | DP_DNS_F_TC);
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), 0);
	int n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_SERVFAIL, 1232, out, sizeof(out));
	assert_int_equal(n, vq.question_end);
	assert_int_equal(dp_dns_parse_answer(out, (size_t)n, &vr), 0);
	assert_int_equal(vr.id, 0x1234);
	assert_int_equal(DP_DNS_RCODE(vr.flags), DP_DNS_RCODE_SERVFAIL);
	assert_true(vr.flags & DP_DNS_F_QR);
	assert_true(vr.flags & DP_DNS_F_RD);
	assert_true(vr.flags & DP_DNS_F_RA);
	assert_true(vr.flags & DP_DNS_F_CD);
	assert_false(vr.flags & DP_DNS_F_TC);
	assert_false(vr.flags & DP_DNS_F_AA);
	assert_int_equal(vr.ancount + vr.nscount + vr.arcount, 0);
	assert_false(vr.has_opt);
	assert_true(dp_dns_question_equal(q.b, &vq, out, &vr));
	assert_int_equal(vr.msg_end, (size_t)n);
}

static void build_error_edns(void **state)
{
	wire_t q;
	dp_dns_view_t vq, vr;
	uint8_t out[512];
	make_query(&q, true); /* DO set */
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), 0);
	int n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_REFUSED, 1400, out, sizeof(out));
	assert_int_equal(n, vq.question_end + 11);
	assert_int_equal(dp_dns_parse_answer(out, (size_t)n, &vr), 0);
	assert_int_equal(DP_DNS_RCODE(vr.flags), DP_DNS_RCODE_REFUSED);
	assert_true(vr.has_opt);
	assert_int_equal(vr.arcount, 1);
	assert_int_equal(vr.udp_size, 1400);
	assert_true(vr.do_bit);
	assert_int_equal(vr.edns_version, 0);
	assert_int_equal(vr.ext_rcode, 0);
	assert_true(dp_dns_question_equal(q.b, &vq, out, &vr));

	/* Without DO in the query, none in the answer. */
	q.b[vq.opt_off + 7] = 0;
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), 0);
	n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_REFUSED, 1400, out, sizeof(out));
	assert_int_equal(dp_dns_parse_answer(out, (size_t)n, &vr), 0);
	assert_false(vr.do_bit);
}

static void build_error_badvers(void **state)
{
	wire_t q;
	dp_dns_view_t vq, vr;
	uint8_t out[512];
	put_hdr(&q, 0xbeef, DP_DNS_F_RD, 1, 0, 0, 1);
	put_name(&q, "example.com");
	put16(&q, T_A);
	put16(&q, C_IN);
	put_opt(&q, 1400, 0, 1, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), DP_E_BADVERS);
	int n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_BADVERS, 1232, out, sizeof(out));
	assert_true(n > 0);
	assert_int_equal(dp_dns_parse_answer(out, (size_t)n, &vr), 0);
	/* 16 = extended 1 << 4 | header 0. */
	assert_int_equal(DP_DNS_RCODE(vr.flags), 0);
	assert_true(vr.has_opt);
	assert_int_equal(vr.ext_rcode, 1);
	assert_int_equal(vr.edns_version, 0); /* we answer with the version we speak */
	assert_int_equal(vr.udp_size, 1232);
	assert_int_equal(vr.id, 0xbeef);
	assert_true(dp_dns_question_equal(q.b, &vq, out, &vr));
}

static void build_error_notimp_keeps_opcode(void **state)
{
	wire_t q;
	dp_dns_view_t vq, vr;
	uint8_t out[512];
	make_query(&q, false);
	set16(&q, 2, 2u << 11); /* STATUS */
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), DP_E_NOTIMP);
	int n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_NOTIMP, 1232, out, sizeof(out));
	assert_int_equal(n, vq.question_end);
	assert_int_equal(dp_dns_parse_answer(out, (size_t)n, &vr), 0);
	assert_int_equal(DP_DNS_OPCODE(vr.flags), 2);
	assert_int_equal(DP_DNS_RCODE(vr.flags), DP_DNS_RCODE_NOTIMP);
	assert_true(dp_dns_question_equal(q.b, &vq, out, &vr));
}

static void build_error_no_question(void **state)
{
	wire_t q;
	dp_dns_view_t vq;
	uint8_t out[512];
	put_hdr(&q, 0xabcd, DP_DNS_F_RD, 0, 0, 0, 0);
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), DP_E_FORMERR);
	int n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_FORMERR, 1232, out, sizeof(out));
	assert_int_equal(n, 12);
	assert_int_equal(dp_rd16(out), 0xabcd);
	assert_int_equal(dp_rd16(out + 2), DP_DNS_F_QR | DP_DNS_F_RD | DP_DNS_F_RA | DP_DNS_RCODE_FORMERR);
	for (int i = 4; i < 12; i += 2)
		assert_int_equal(dp_rd16(out + i), 0);
}

static void build_error_formerr_keeps_opt(void **state)
{
	wire_t q;
	dp_dns_view_t vq;
	uint8_t out[512];
	/* No question but an OPT: the FORMERR carries an OPT (RFC 6891 7). */
	put_hdr(&q, 0xabcd, 0, 0, 0, 0, 1);
	put_opt(&q, 1232, 0, 0, DO_FLAG, NULL, 0);
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), DP_E_FORMERR);
	assert_false(vq.has_question);
	assert_true(vq.has_opt);
	int n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_FORMERR, 1232, out, sizeof(out));
	assert_int_equal(n, 12 + 11);
	assert_int_equal(dp_rd16(out + 4), 0);
	assert_int_equal(dp_rd16(out + 10), 1);
	assert_int_equal(out[12], 0);
	assert_int_equal(dp_rd16(out + 13), DP_DNS_TYPE_OPT);
	assert_int_equal(dp_rd16(out + 15), 1232);
	assert_int_equal(out[19], 0x80); /* DO echoed */

	/* A question that cannot be read hides where the OPT starts: the
	 * FORMERR goes without one (and without the question). */
	put_hdr(&q, 0xabcd, 0, 1, 0, 0, 1);
	put_name(&q, "example.com");
	put16(&q, T_A);
	put16(&q, C_IN);
	put_opt(&q, 1232, 0, 0, 0, NULL, 0);
	q.b[12] = 0x40;
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), DP_E_FORMERR);
	assert_false(vq.has_question);
	n = dp_dns_build_error(q.b, &vq, DP_DNS_RCODE_FORMERR, 1232, out, sizeof(out));
	assert_int_equal(n, 12);
}

static void build_error_capacity(void **state)
{
	wire_t q;
	dp_dns_view_t vq, vr;
	uint8_t out[512];
	/* The longest question plus an OPT fits 512 with room to spare. */
	static const unsigned l255[] = { 63, 63, 63, 61 };
	put_hdr(&q, 1, 0, 1, 0, 0, 1);
	put_long_name(&q, l255, 4);
	put16(&q, T_A);
	put16(&q, C_IN);
	put_opt(&q, 4096, 0, 0, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), 0);
	int need = 12 + 255 + 4 + 11;
	assert_int_equal(dp_dns_build_error(q.b, &vq, 2, 512, out, sizeof(out)), need);
	assert_int_equal(dp_dns_parse_answer(out, (size_t)need, &vr), 0);
	assert_int_equal(dp_dns_build_error(q.b, &vq, 2, 512, out, (size_t)need), need);
	memset(out, 0x5a, sizeof(out));
	assert_int_equal(dp_dns_build_error(q.b, &vq, 2, 512, out, (size_t)need - 1), DP_E_TOOBIG);
	assert_int_equal(out[0], 0x5a); /* nothing written */
}

/* ---- truncate ----------------------------------------------------------- */

/* An answer with every section: 2 A, 1 NS, glue A for the NS, OPT placed
 * where opt_first says (before or after the glue). */
static void make_full_answer(wire_t *w, bool with_opt, bool opt_first)
{
	put_hdr(w, 0x7777, DP_DNS_F_QR | DP_DNS_F_RD | DP_DNS_F_RA, 1, 2, 1, with_opt ? 2 : 1);
	put_name(w, "example.com");
	put16(w, T_A);
	put16(w, C_IN);
	put16(w, 0xc00c);
	put_rr_tail(w, T_A, C_IN, 60, addr1, 4);
	put16(w, 0xc00c);
	put_rr_tail(w, T_A, C_IN, 60, addr2, 4);
	put16(w, 0xc00c);
	put16(w, T_NS);
	put16(w, C_IN);
	put32(w, 3600);
	put16(w, 5);
	size_t ns = w->n;
	put8(w, 2);
	put_bytes(w, "ns", 2);
	put16(w, 0xc00c);
	if (with_opt && opt_first)
		put_opt(w, 1232, 0, 0, DO_FLAG, "\x00\x0a\x00\x02\xab\xcd", 6);
	put16(w, 0xc000 | (unsigned)ns);
	put_rr_tail(w, T_A, C_IN, 3600, addr2, 4);
	if (with_opt && !opt_first)
		put_opt(w, 1232, 0, 0, DO_FLAG, "\x00\x0a\x00\x02\xab\xcd", 6);
}

static void truncate_with_opt(void **state)
{
	for (int opt_first = 0; opt_first <= 1; opt_first++) {
		wire_t w;
		dp_dns_view_t v, vt;
		make_full_answer(&w, true, opt_first);
		assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
		uint8_t opt_copy[64];
		memcpy(opt_copy, w.b + v.opt_off, v.opt_len);
		size_t n = dp_dns_truncate(w.b, &v);
		assert_int_equal(n, v.question_end + v.opt_len);
		assert_int_equal(v.opt_len, 11 + 6);
		assert_int_equal(dp_dns_parse_answer(w.b, n, &vt), 0);
		assert_true(vt.flags & DP_DNS_F_TC);
		assert_int_equal(vt.flags & ~DP_DNS_F_TC, v.flags);
		assert_int_equal(vt.id, 0x7777);
		assert_int_equal(vt.qdcount, 1);
		assert_int_equal(vt.ancount, 0);
		assert_int_equal(vt.nscount, 0);
		assert_int_equal(vt.arcount, 1);
		assert_true(vt.has_opt);
		assert_int_equal(vt.opt_off, v.question_end);
		assert_memory_equal(w.b + vt.opt_off, opt_copy, v.opt_len);
		assert_int_equal(vt.msg_end, n);
		assert_int_equal(memcmp(w.b + 12, "\x07" "example", 8), 0);
	}
}

static void truncate_without_opt(void **state)
{
	wire_t w;
	dp_dns_view_t v, vt;
	make_full_answer(&w, false, false);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	size_t n = dp_dns_truncate(w.b, &v);
	assert_int_equal(n, v.question_end);
	assert_int_equal(dp_dns_parse_answer(w.b, n, &vt), 0);
	assert_true(vt.flags & DP_DNS_F_TC);
	assert_int_equal(vt.ancount + vt.nscount + vt.arcount, 0);
	assert_false(vt.has_opt);
}

/* Regression (found with fuzz_dns_answer's truncate check): the OPT owner is
 * a pointer to a zero octet inside the A record's RDATA. Accepted, the
 * truncated answer kept the pointer while dropping what it pointed at. */
static const uint8_t opt_owner_into_rdata[] = {
	0x00, 0x01, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,
	0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d,
	0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00,
	0x00, 0x00, 0x3c, 0x00, 0x04, 0xc0, 0x00, 0x00, 0x02, 0xc0, 0x2a, 0x00,
	0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

static void truncate_opt_owner_pointer(void **state)
{
	dp_dns_view_t v;
	uint8_t m[sizeof(opt_owner_into_rdata)];
	memcpy(m, opt_owner_into_rdata, sizeof(m));
	assert_int_equal(dp_dns_parse_answer(m, sizeof(m), &v), DP_E_FORMERR);
	/* With the owner written as the root octet it is fine, and truncates
	 * to a message that parses. */
	wire_t w;
	memcpy(w.b, opt_owner_into_rdata, sizeof(m) - 12);
	w.n = sizeof(m) - 12;
	put_opt(&w, 1232, 0, 0, 0, NULL, 0);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	size_t n = dp_dns_truncate(w.b, &v);
	assert_int_equal(dp_dns_parse_answer(w.b, n, &v), 0);
	assert_true(v.has_opt);
	assert_int_equal(v.udp_size, 1232);
}

/* ---- name_str ----------------------------------------------------------- */

static void name_str(void **state)
{
	wire_t w;
	char s[300];
	make_query(&w, false);
	dp_dns_name_str(w.b, w.n, 12, s, sizeof(s));
	assert_string_equal(s, "www.example.com.");
	/* Cut to the buffer, always terminated. */
	memset(s, 'Z', sizeof(s));
	dp_dns_name_str(w.b, w.n, 12, s, 8);
	assert_true(strlen(s) < 8);
	assert_int_equal(memcmp(s, "www.ex", 6), 0);
	put_hdr(&w, 0, 0, 1, 0, 0, 0);
	put_name(&w, ".");
	dp_dns_name_str(w.b, w.n, 12, s, sizeof(s));
	assert_string_equal(s, ".");
	/* Unprintable and quoting characters never reach the log verbatim. */
	put_hdr(&w, 0, 0, 1, 0, 0, 0);
	put_bytes(&w, "\x04" "a\"\\\x01" "\x00", 6);
	dp_dns_name_str(w.b, w.n, 12, s, sizeof(s));
	assert_string_equal(s, "a???.");
}

/* A pointer must land on a name seen before: never on a TTL or other data
 * (rewriting a TTL would then change a name), and a pointed-to name must
 * lie wholly before the pointer. */
static void pointer_into_data_refused(void **state)
{
	(void)state;
	wire_t w;
	dp_dns_view_t v;
	put_hdr(&w, 1, 0x8180, 1, 2, 0, 0);
	put_name(&w, "www");
	put16(&w, T_A);
	put16(&w, C_IN);
	put16(&w, 0xc00c); /* owner: the question name, fine */
	size_t ttl_at = w.n + 4;
	put_rr_tail(&w, T_A, C_IN, 0, addr1, 4); /* TTL 0: its last octet reads as a root */
	put16(&w, (uint16_t)(0xc000 | (ttl_at + 3)));
	put_rr_tail(&w, T_A, C_IN, 60, addr1, 4);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), DP_E_FORMERR);
}

/* Records after the OPT move when the OPT is removed for a client without
 * EDNS; their pointers to names behind the OPT must move with them. */
static void shift_pointers_after_cut(void **state)
{
	(void)state;
	uint8_t m[64] = { 0 };
	/* at 20: name "a" then root; at 30: pointer to 20 */
	m[20] = 1; m[21] = 'a'; m[22] = 0;
	m[30] = 0xc0; m[31] = 20;
	m[32] = 0; m[33] = 1; /* type A */
	m[38] = 0; m[39] = 0; /* rdlen 0 */
	dp_dns_shift_pointers(m, 40, 30, 1, 10, 5);
	assert_int_equal(m[30], 0xc0);
	assert_int_equal(m[31], 15);
	/* a pointer before the cut stays */
	m[31] = 8;
	dp_dns_shift_pointers(m, 40, 30, 1, 10, 5);
	assert_int_equal(m[31], 8);
}

/* ---- the read cursor (cursor.h) --------------------------------------------- */

static void cursor_reads_in_order(void **state)
{
	(void)state;
	static const uint8_t b[] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09 };
	dp_cursor_t c;
	dp_cursor_init(&c, b, sizeof(b), 0);
	assert_int_equal(dp_cursor_u8(&c), 0x01);
	assert_int_equal(dp_cursor_u16(&c), 0x0203);
	assert_int_equal(dp_cursor_u32(&c), 0x04050607u);
	assert_int_equal(dp_cursor_left(&c), 2);
	dp_cursor_skip(&c, 1);
	assert_int_equal(dp_cursor_u8(&c), 0x09);
	assert_int_equal(dp_cursor_left(&c), 0);
	assert_int_equal(c.err, 0);
	dp_cursor_seek(&c, 1);
	assert_int_equal(dp_cursor_u16(&c), 0x0203);
	dp_cursor_seek(&c, sizeof(b)); /* the end itself is a position */
	assert_int_equal(c.err, 0);
	assert_int_equal(dp_cursor_left(&c), 0);
}

/* Every kind of read past the end: returns 0, moves nothing, sets the
 * error; and the error sticks, even for reads that would fit. The buffer
 * is exactly as long as the cursor's bound (malloc), so the sanitizer
 * build catches any read beyond it. */
static void cursor_error_sticks(void **state)
{
	(void)state;
	for (size_t len = 0; len <= 8; len++) {
		for (int kind = 0; kind < 5; kind++) {
			uint8_t *b = malloc(len ? len : 1);
			assert_non_null(b);
			memset(b, 0xee, len);
			dp_cursor_t c;
			dp_cursor_init(&c, b, len, 0);
			/* Fill up to where the read of this kind no longer fits. */
			static const size_t need[5] = { 1, 2, 4, 3, 0 };
			size_t n = kind == 4 ? len + 1 : need[kind];
			while (dp_cursor_left(&c) >= n)
				dp_cursor_skip(&c, n);
			size_t pos = c.pos;
			uint32_t v = 1;
			switch (kind) {
			case 0: v = dp_cursor_u8(&c); break;
			case 1: v = dp_cursor_u16(&c); break;
			case 2: v = dp_cursor_u32(&c); break;
			case 3: dp_cursor_skip(&c, 3); v = 0; break;
			default: dp_cursor_seek(&c, len + 1); v = 0; break;
			}
			assert_int_equal(v, 0);
			assert_int_equal(c.err, DP_E_FORMERR);
			assert_int_equal(c.pos, pos);
			assert_int_equal(dp_cursor_left(&c), 0);
			/* Sticky: nothing reads or moves any more. */
			c.pos = 0;
			assert_int_equal(dp_cursor_u8(&c), 0);
			assert_int_equal(dp_cursor_u16(&c), 0);
			assert_int_equal(dp_cursor_u32(&c), 0);
			dp_cursor_skip(&c, 0);
			dp_cursor_seek(&c, 0);
			assert_int_equal(c.pos, 0);
			assert_int_equal(c.err, DP_E_FORMERR);
			free(b);
		}
	}
	dp_cursor_t c;
	uint8_t one = 1;
	dp_cursor_init(&c, &one, 1, 2); /* starting past the end */
	assert_int_equal(c.err, DP_E_FORMERR);
	assert_int_equal(dp_cursor_u8(&c), 0);
}

/* ---- the parsed answer: TTL offsets ------------------------------------------ */

/* The TTL offsets of an answer with records in all three sections and one
 * after the OPT; the view counts the records after the OPT. */
static void answer_rrs_offsets(void **state)
{
	(void)state;
	wire_t w;
	dp_dns_answer_t a;
	dp_dns_view_t v;
	put_hdr(&w, 1, DP_DNS_F_QR, 1, 2, 1, 3);
	put_name(&w, "www.example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t want[5], k = 0;
	put16(&w, 0xc00c);
	want[k++] = w.n + 4;
	put_rr_tail(&w, T_A, C_IN, 10, addr1, 4);
	put16(&w, 0xc00c);
	want[k++] = w.n + 4;
	put_rr_tail(&w, T_A, C_IN, 20, addr2, 4);
	put16(&w, 0xc010); /* example.com */
	want[k++] = w.n + 4;
	put_rr_tail(&w, T_NS, C_IN, 30, "\xc0\x10", 2);
	put16(&w, 0xc00c);
	want[k++] = w.n + 4;
	put_rr_tail(&w, T_A, C_IN, 40, addr1, 4);
	put_opt(&w, 1232, 0, 0, 0, NULL, 0);
	put16(&w, 0xc00c);
	want[k++] = w.n + 4;
	put_rr_tail(&w, T_A, C_IN, 50, addr2, 4);
	assert_int_equal(dp_dns_parse_answer_rrs(w.b, w.n, &a), 0);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_memory_equal(&a.v, &v, sizeof(v));
	assert_int_equal(v.opt_after, 1);
	assert_int_equal(a.nttl, 5);
	assert_int_equal(a.ttl_total, 5);
	for (size_t i = 0; i < k; i++) {
		assert_int_equal(a.ttl[i], want[i]);
		assert_int_equal(dp_dns_ttl(w.b, a.ttl[i]), 10 * (i + 1));
	}
	/* A query's view counts them too (edns.c pads queries with them). */
	make_query(&w, true);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.opt_after, 0);
}

/* Past DP_DNS_RR_MAX records the first are kept and the iterator walks on
 * for the rest, skipping the OPT wherever it is. */
static void answer_rrs_past_cap(void **state)
{
	(void)state;
	static wire_t w;
	static dp_dns_answer_t a;
	const unsigned an = DP_DNS_RR_MAX + 10, ar = 5;
	put_hdr(&w, 1, DP_DNS_F_QR, 1, an, 0, ar + 1);
	put_name(&w, "www.example.com");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t want[DP_DNS_RR_MAX + 20], k = 0;
	for (unsigned i = 0; i < an + ar + 1; i++) {
		if (i == an + 2) {
			put_opt(&w, 1232, 0, 0, 0, NULL, 0);
			continue;
		}
		put16(&w, 0xc00c);
		want[k++] = w.n + 4;
		put_rr_tail(&w, T_A, C_IN, 0x80000000u | i, addr1, 4);
	}
	assert_int_equal(dp_dns_parse_answer_rrs(w.b, w.n, &a), 0);
	assert_int_equal(a.nttl, DP_DNS_RR_MAX);
	assert_int_equal(a.ttl_total, an + ar);
	assert_int_equal(a.v.opt_after, ar - 2);
	dp_dns_ttl_iter_t it;
	size_t off, i = 0;
	dp_dns_ttl_iter_init(&it, w.b, a.ttl, a.nttl, a.ttl_total);
	while (dp_dns_ttl_next(&it, &off)) {
		assert_true(i < k);
		assert_int_equal(off, want[i]);
		assert_int_equal(dp_dns_ttl(w.b, off), 0); /* RFC 2181 8 */
		i++;
	}
	assert_int_equal(i, k);
	/* A cut in any record fails the same way as the plain parse. */
	assert_int_equal(dp_dns_parse_answer_rrs(w.b, w.n - 1, &a), DP_E_FORMERR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(pointer_into_data_refused),
		cmocka_unit_test(shift_pointers_after_cut),
		cmocka_unit_test(query_plain),
		cmocka_unit_test(query_edns),
		cmocka_unit_test(query_edns_no_do_small_size),
		cmocka_unit_test(query_edns_options),
		cmocka_unit_test(query_edns_options_overrun),
		cmocka_unit_test(query_response_bit),
		cmocka_unit_test(query_short),
		cmocka_unit_test(query_too_long),
		cmocka_unit_test(query_notimp),
		cmocka_unit_test(query_qdcount),
		cmocka_unit_test(query_label_lengths),
		cmocka_unit_test(query_name_length),
		cmocka_unit_test(query_question_truncated),
		cmocka_unit_test(query_pointer_in_question),
		cmocka_unit_test(pointer_bad_targets),
		cmocka_unit_test(pointer_forward),
		cmocka_unit_test(pointer_loop),
		cmocka_unit_test(pointer_jump_limit),
		cmocka_unit_test(rr_past_end),
		cmocka_unit_test(opt_twice),
		cmocka_unit_test(opt_wrong_section),
		cmocka_unit_test(opt_owner_not_root),
		cmocka_unit_test(edns_badvers),
		cmocka_unit_test(trailing_bytes),
		cmocka_unit_test(answer_compressed),
		cmocka_unit_test(answer_edns),
		cmocka_unit_test(answer_rejects),
		cmocka_unit_test(answer_expanded_name_too_long),
		cmocka_unit_test(question_equal),
		cmocka_unit_test(question_equal_only_letters_fold),
		cmocka_unit_test(question_equal_query_and_answer),
		cmocka_unit_test(build_error_plain),
		cmocka_unit_test(build_error_edns),
		cmocka_unit_test(build_error_badvers),
		cmocka_unit_test(build_error_notimp_keeps_opcode),
		cmocka_unit_test(build_error_no_question),
		cmocka_unit_test(build_error_formerr_keeps_opt),
		cmocka_unit_test(build_error_capacity),
		cmocka_unit_test(truncate_with_opt),
		cmocka_unit_test(truncate_without_opt),
		cmocka_unit_test(truncate_opt_owner_pointer),
		cmocka_unit_test(name_str),
		cmocka_unit_test(cursor_reads_in_order),
		cmocka_unit_test(cursor_error_sticks),
		cmocka_unit_test(answer_rrs_offsets),
		cmocka_unit_test(answer_rrs_past_cap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
