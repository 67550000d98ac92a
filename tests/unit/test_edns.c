/* test_edns.c - EDNS(0) on the TLS leg: padding queries to the block
 * (RFC 7830, RFC 8467) and scrubbing upstream answers down to the EDNS the
 * client asked for; on the plain legs (udp://, tcp://), stripping the
 * padding and keepalive back out (dp_edns_strip_stream_opts).
 *
 * Messages are assembled byte by byte with the small writer below; each
 * result is re-parsed with the dns.c validator and its OPT options are
 * listed by a walker of our own, so a test says exactly which options came
 * out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "edns.h"

/* ---- a tiny wire writer ------------------------------------------------ */

#include "wire.h"

/* A name of exactly wire_len octets (labels of at most 63), wire_len != 2. */
static void put_wire_name(wire_t *w, size_t wire_len)
{
	size_t left = wire_len - 1; /* the root octet */
	while (left > 0) {
		size_t l = DP_MIN(left - 1, (size_t)63);
		if (left - (l + 1) == 1)
			l--; /* never leave a single octet behind */
		put8(w, (unsigned)l);
		for (size_t i = 0; i < l; i++)
			put8(w, 'a' + (unsigned)(i % 26));
		left -= l + 1;
	}
	put8(w, 0);
}

static void put_opt(wire_t *w, unsigned udp, unsigned version, unsigned flags, const void *rdata,
		    size_t rdlen)
{
	put8(w, 0);
	put_rr_tail(w, DP_DNS_TYPE_OPT, udp, (uint32_t)version << 16 | flags, rdata, rdlen);
}

/* Build an option list: code, length, then length bytes of fill. */
typedef struct opts {
	uint8_t b[66000];
	size_t n;
} opts_t;

static void opt_add(opts_t *o, unsigned code, const void *data, size_t len)
{
	assert_true(o->n + 4 + len <= sizeof(o->b));
	o->b[o->n++] = (uint8_t)(code >> 8);
	o->b[o->n++] = (uint8_t)code;
	o->b[o->n++] = (uint8_t)(len >> 8);
	o->b[o->n++] = (uint8_t)len;
	if (len) {
		if (data)
			memcpy(o->b + o->n, data, len);
		else
			memset(o->b + o->n, 0, len);
	}
	o->n += len;
}

#define T_A 1
#define T_TXT 16
#define C_IN 1
#define DO_FLAG 0x8000
#define OPT_COOKIE 10
#define OPT_OTHER 65001 /* a local/experimental option: passed through untouched */

static const uint8_t cookie[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
static const uint8_t addr1[4] = { 192, 0, 2, 1 };

/* ---- reading the OPT of a message ------------------------------------------ */

typedef struct opt_list {
	int n;
	uint16_t code[32];
	uint16_t len[32];
	size_t data_off[32]; /* offset of the option's data in the message */
} opt_list_t;

/* The options of the OPT at v->opt_off, in order. */
static void list_opts(const uint8_t *m, const dp_dns_view_t *v, opt_list_t *l)
{
	memset(l, 0, sizeof(*l));
	assert_true(v->has_opt);
	size_t o = v->opt_off + 11, end = v->opt_off + v->opt_len;
	assert_int_equal(dp_rd16(m + v->opt_off + 9), v->opt_len - 11);
	while (o < end) {
		assert_true(o + 4 <= end);
		assert_true(l->n < 32);
		l->code[l->n] = dp_rd16(m + o);
		l->len[l->n] = dp_rd16(m + o + 2);
		l->data_off[l->n] = o + 4;
		o += 4 + l->len[l->n];
		l->n++;
	}
	assert_int_equal(o, end);
}

static int count_code(const opt_list_t *l, uint16_t code)
{
	int c = 0;
	for (int i = 0; i < l->n; i++)
		c += l->code[i] == code;
	return c;
}

static int find_code(const opt_list_t *l, uint16_t code)
{
	for (int i = 0; i < l->n; i++)
		if (l->code[i] == code)
			return i;
	return -1;
}

/* The query name/A, RD, with an OPT (payload udp, flags, options o) when edns. */
static void make_query(wire_t *w, const char *name, bool edns, unsigned udp, unsigned flags,
		       const opts_t *o)
{
	put_hdr(w, 0xbeef, DP_DNS_F_RD, 1, 0, 0, edns ? 1 : 0);
	put_name(w, name);
	put16(w, T_A);
	put16(w, C_IN);
	if (edns)
		put_opt(w, udp, 0, flags, o ? o->b : NULL, o ? o->n : 0);
}

/* Check the invariants every padded query has, and return its view. */
static void check_padded(const uint8_t *in, const dp_dns_view_t *vin, const uint8_t *out, int n,
			 unsigned block, dp_dns_view_t *vout, opt_list_t *ol)
{
	assert_true(n > 0);
	assert_int_equal((unsigned)n % block, 0);
	assert_int_equal(dp_dns_parse_query(out, (size_t)n, vout), 0);
	assert_int_equal(vout->msg_end, n);
	/* Header: same ID, flags, counts but ARCOUNT (which counts the OPT). */
	assert_memory_equal(out, in, 10);
	assert_int_equal(vout->arcount, vin->arcount + (vin->has_opt ? 0 : 1));
	/* The question travels unchanged. */
	assert_int_equal(vout->question_end, vin->question_end);
	assert_memory_equal(out + 12, in + 12, vin->question_end - 12);
	/* Exactly one OPT, the last RR, with one empty keepalive and one
	 * padding option, the padding last. */
	assert_true(vout->has_opt);
	assert_int_equal(vout->opt_off + vout->opt_len, n);
	list_opts(out, vout, ol);
	assert_int_equal(count_code(ol, DP_DNS_OPT_PADDING), 1);
	assert_int_equal(count_code(ol, DP_DNS_OPT_KEEPALIVE), 1);
	assert_int_equal(ol->len[find_code(ol, DP_DNS_OPT_KEEPALIVE)], 0);
	assert_int_equal(ol->code[ol->n - 1], DP_DNS_OPT_PADDING);
	/* RFC 7830 3: the padding octets are zero. */
	int pi = ol->n - 1;
	for (size_t i = 0; i < ol->len[pi]; i++)
		assert_int_equal(out[ol->data_off[pi] + i], 0);
	assert_true(vout->opt_padding);
	assert_true(vout->opt_keepalive);
	assert_int_equal(vout->keepalive, 0);
}

/* ---- padding queries --------------------------------------------------------- */

static void pad_adds_opt_when_missing(void **state)
{
	wire_t w;
	static uint8_t out[4096];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	make_query(&w, "www.example.com", false, 0, 0, NULL);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	assert_int_equal(n, 128);
	assert_int_equal(dp_rd16(out + 10), 1); /* ARCOUNT 0 -> 1 */
	assert_int_equal(vo.udp_size, DP_EDNS_OUR_UDP_SIZE);
	assert_false(vo.do_bit);
	assert_int_equal(vo.edns_version, 0);
	assert_int_equal(vo.ext_rcode, 0);
	assert_int_equal(ol.n, 2);
	assert_int_equal(ol.code[0], DP_DNS_OPT_KEEPALIVE);
}

/* Options of a message's OPT other than those in allowed (n codes). */
static int count_other(const opt_list_t *l, const uint16_t *allowed, int n)
{
	int c = 0;
	for (int i = 0; i < l->n; i++) {
		bool ok = false;
		for (int j = 0; j < n; j++)
			ok |= l->code[i] == allowed[j];
		c += !ok;
	}
	return c;
}

/* Hole 2: none of the client's options goes upstream (its subnet least of
 * all), so the answer depends only on the cache key. */
static void pad_forwards_no_client_option(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	static uint8_t out[4096];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	static const uint8_t ecs[] = { 0, 1, 24, 0, 192, 0, 2 }; /* client subnet 192.0.2/24 */
	opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
	opt_add(&o, DP_DNS_OPT_ECS, ecs, sizeof(ecs));
	opt_add(&o, 3, NULL, 0); /* NSID request */
	make_query(&w, "www.example.com", true, 4096, DO_FLAG, &o);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	/* Payload size and DO as the client sent them. */
	assert_int_equal(vo.udp_size, 4096);
	assert_true(vo.do_bit);
	assert_int_equal(ol.n, 2); /* keepalive, padding: ours alone */
	assert_int_equal(vo.opt_ecs, 0);
	assert_null(memmem(out, (size_t)n, ecs + 4, 3));
}

/* --forward-ecs: the subnet we read (dp_edns_ecs_read) goes upstream, and
 * nothing else of the client's. */
static void pad_forwards_given_subnet(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	static uint8_t out[4096];
	uint8_t ecs[DP_EDNS_ECS_MAX];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	/* 198.51.100.77/22 with a scope set: cut to 198.51.100.0/22, scope 0 */
	static const uint8_t sent[] = { 0, 1, 22, 5, 198, 51, 103 };
	static const uint8_t want[] = { 0, 1, 22, 0, 198, 51, 100 };
	opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
	opt_add(&o, DP_DNS_OPT_ECS, sent, sizeof(sent));
	make_query(&w, "www.example.com", true, 1232, 0, &o);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_not_equal(v.opt_ecs, 0);
	int el = dp_edns_ecs_read(w.b, &v, ecs);
	assert_int_equal(el, sizeof(want));
	assert_memory_equal(ecs, want, sizeof(want));
	int n = dp_edns_pad_query(w.b, &v, ecs, (size_t)el, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	assert_int_equal(ol.n, 3);
	assert_int_equal(ol.code[0], DP_DNS_OPT_ECS);
	assert_int_equal(ol.len[0], sizeof(want));
	assert_memory_equal(out + ol.data_off[0], want, sizeof(want));
	assert_int_equal(vo.opt_ecs, ol.data_off[0] - 4);
	assert_int_equal(find_code(&ol, OPT_OTHER), -1);
}

/* RFC 7871 6: what dp_edns_ecs_read accepts and how it normalises. */
static void ecs_read_checks_the_option(void **state)
{
	static const struct {
		uint8_t data[24];
		size_t len;
		int want; /* length, or DP_E_FORMERR */
		uint8_t out[20];
	} cases[] = {
		{ { 0, 1, 24, 0, 192, 0, 2 }, 7, 7, { 0, 1, 24, 0, 192, 0, 2 } },
		{ { 0, 1, 0, 0 }, 4, 4, { 0, 1, 0, 0 } }, /* /0: "do not use my address" */
		{ { 0, 1, 32, 0, 192, 0, 2, 9 }, 8, 8, { 0, 1, 32, 0, 192, 0, 2, 9 } },
		{ { 0, 1, 25, 0, 192, 0, 2, 0xff }, 8, 8, { 0, 1, 25, 0, 192, 0, 2, 0x80 } },
		{ { 0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 1, 2, 0xff }, 11, 11,
		  { 0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 1, 2, 0xff } },
		{ { 0, 2, 128, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 }, 20, 20,
		  { 0, 2, 128, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 } },
		{ { 0, 1, 33, 0, 1, 2, 3, 4, 5 }, 9, DP_E_FORMERR, { 0 } }, /* prefix too long */
		{ { 0, 2, 129, 0 }, 4, DP_E_FORMERR, { 0 } },
		{ { 0, 3, 8, 0, 1 }, 5, DP_E_FORMERR, { 0 } }, /* unknown family */
		{ { 0, 1, 24, 0, 192, 0, 2, 0 }, 8, DP_E_FORMERR, { 0 } }, /* octet too many */
		{ { 0, 1, 24, 0, 192, 0 }, 6, DP_E_FORMERR, { 0 } }, /* octet too few */
		{ { 0, 1, 24 }, 3, DP_E_FORMERR, { 0 } }, /* shorter than the fixed part */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wire_t w;
		opts_t o = { .n = 0 };
		dp_dns_view_t v;
		uint8_t ecs[DP_EDNS_ECS_MAX];
		opt_add(&o, DP_DNS_OPT_ECS, cases[i].data, cases[i].len);
		make_query(&w, "www.example.com", true, 1232, 0, &o);
		assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
		int n = dp_edns_ecs_read(w.b, &v, ecs);
		assert_int_equal(n, cases[i].want);
		if (n > 0)
			assert_memory_equal(ecs, cases[i].out, (size_t)n);
	}
}

static void pad_replaces_existing_padding(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	static uint8_t out[4096];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	static const uint8_t ka[2] = { 0, 50 };
	/* The client padded to its own taste (300 octets, not zero) and asked
	 * for keepalive: both are for its hop, not ours. */
	uint8_t junk[300];
	memset(junk, 0xaa, sizeof(junk));
	opt_add(&o, DP_DNS_OPT_PADDING, junk, sizeof(junk));
	opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
	opt_add(&o, DP_DNS_OPT_KEEPALIVE, ka, sizeof(ka));
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 5); /* and a second one */
	make_query(&w, "www.example.com", true, 1232, 0, &o);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_true(v.opt_padding);
	int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	assert_int_equal(ol.n, 2); /* keepalive (empty), padding */
	/* The 300 octets of client padding are gone: one block suffices. */
	assert_int_equal(n, 128);
}

static void pad_moves_opt_last(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	static uint8_t out[4096];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
	/* Additional section: OPT first, then an A record (as a client might
	 * put a TSIG-less extra RR there). */
	put_hdr(&w, 0x4242, DP_DNS_F_RD | DP_DNS_F_CD, 1, 0, 0, 2);
	put_name(&w, "example.org");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t opt_at = w.n;
	put_opt(&w, 1400, 0, DO_FLAG, o.b, o.n);
	size_t a_at = w.n;
	put_name(&w, "glue.example.org");
	put_rr_tail(&w, T_A, C_IN, 300, addr1, 4);
	size_t a_len = w.n - a_at;
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.opt_off, opt_at);
	int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	assert_int_equal(dp_rd16(out + 10), 2); /* ARCOUNT unchanged */
	/* The A record now sits where the OPT was, byte for byte. */
	assert_memory_equal(out + opt_at, w.b + a_at, a_len);
	assert_int_equal(vo.opt_off, opt_at + a_len);
	assert_int_equal(vo.udp_size, 1400);
	assert_true(vo.do_bit);
	assert_int_equal(ol.n, 2);
}

static void pad_ignores_trailing_bytes(void **state)
{
	wire_t w;
	static uint8_t out[4096];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	make_query(&w, "www.example.com", true, 1232, 0, NULL);
	put_bytes(&w, "garbage-after-the-message", 25);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_true(v.msg_end < w.n);
	int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	assert_null(memmem(out, (size_t)n, "garbage", 7));
}

/* Every message length from the smallest query up: always a multiple of
 * the block, never more than 11 (OPT) + 4 (keepalive) + 4 (padding header)
 * + block - 1 octets longer than the input. The worst case is reached:
 * whoever sizes the output buffer must allow all of it (see
 * test_hostile.py::test_query_length_needing_most_padding). */
static void pad_every_length(void **state)
{
	static uint8_t out[4096];
	static const unsigned blocks[] = { 128, 468, 1, 0 };
	for (size_t bi = 0; bi < DP_ARRAY_LEN(blocks); bi++) {
		unsigned block = blocks[bi];
		size_t worst[2] = { 0, 0 };
		for (int edns = 0; edns <= 1; edns++) {
			/* Grow the question name one octet at a time (wire
			 * length 2 is no name: one label needs 3). */
			for (size_t namelen = 1; namelen <= DP_DNS_MAX_NAME; namelen++) {
				if (namelen == 2)
					continue;
				wire_t w;
				put_hdr(&w, 0xbeef, DP_DNS_F_RD, 1, 0, 0, edns);
				put_wire_name(&w, namelen);
				put16(&w, T_A);
				put16(&w, C_IN);
				if (edns)
					put_opt(&w, 1232, 0, 0, NULL, 0);
				dp_dns_view_t v, vo;
				opt_list_t ol;
				assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
				int n = dp_edns_pad_query(w.b, &v, NULL, 0, block, out, sizeof(out));
				if (block > 1) {
					check_padded(w.b, &v, out, n, block, &vo, &ol);
				} else {
					assert_true(n > 0);
					assert_int_equal(dp_dns_parse_query(out, (size_t)n, &vo), 0);
					assert_true(vo.opt_padding);
				}
				size_t growth = (size_t)n - w.n;
				size_t bound = (edns ? 0 : 11) + 4 + 4 + (block ? block - 1 : 0);
				assert_true(growth <= bound);
				if (growth > worst[edns])
					worst[edns] = growth;
			}
		}
		if (block == 128) {
			/* The bound is tight without OPT (with an empty OPT the
			 * message carries 11 octets already). */
			assert_int_equal(worst[0], 11 + 4 + 4 + 127);
			assert_int_equal(worst[1], 4 + 4 + 127);
		}
	}
}

static void pad_too_big(void **state)
{
	wire_t w;
	static uint8_t out[70000];
	dp_dns_view_t v;
	make_query(&w, "www.example.com", false, 0, 0, NULL);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	/* Every capacity short of the result fails cleanly, the exact one works. */
	int full = dp_edns_pad_query(w.b, &v, NULL, 0, 128, out, sizeof(out));
	assert_int_equal(full, 128);
	for (size_t cap = 0; cap < (size_t)full; cap++)
		assert_int_equal(dp_edns_pad_query(w.b, &v, NULL, 0, 128, out, cap), DP_E_TOOBIG);
	assert_int_equal(dp_edns_pad_query(w.b, &v, NULL, 0, 128, out, (size_t)full), full);

	/* Same with a subnet to forward: the copy is bounded too. */
	static const uint8_t ecs[] = { 0, 2, 128, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
	full = dp_edns_pad_query(w.b, &v, ecs, sizeof(ecs), 128, out, sizeof(out));
	assert_int_equal(full, 128);
	for (size_t cap = 0; cap < (size_t)full; cap++)
		assert_int_equal(dp_edns_pad_query(w.b, &v, ecs, sizeof(ecs), 128, out, cap),
				 DP_E_TOOBIG);

	/* A big client option is not copied at all. */
	opts_t o = { .n = 0 };
	opt_add(&o, 65001, NULL, 65535 - 33 - 11 - 4 - 2);
	make_query(&w, "www.example.com", true, 1232, 0, &o);
	assert_true(w.n <= DP_DNS_MAX_MSG);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(dp_edns_pad_query(w.b, &v, NULL, 0, 128, out, sizeof(out)), 128);

	/* Near the 65,535-octet maximum: padding would overflow a message. */
	wire_t big;
	put_hdr(&big, 1, DP_DNS_F_RD, 1, 0, 0, 1);
	put_name(&big, "www.example.com");
	put16(&big, T_A);
	put16(&big, C_IN);
	put_name(&big, "x.example.com");
	static uint8_t junk[65535 - 33 - 15 - 10 - 8];
	put_rr_tail(&big, T_TXT, C_IN, 0, junk, sizeof(junk));
	assert_true(big.n <= DP_DNS_MAX_MSG);
	assert_int_equal(dp_dns_parse_query(big.b, big.n, &v), 0);
	assert_int_equal(dp_edns_pad_query(big.b, &v, NULL, 0, 128, out, sizeof(out)), DP_E_TOOBIG);
}

/* ---- scrubbing answers --------------------------------------------------------- */

/* An answer to "www.example.com" A: one A record, then in the additional
 * section an A record, the OPT (with options o) and, when opt_not_last,
 * another A record after it. */
static void make_answer(wire_t *w, const opts_t *o, bool opt_not_last)
{
	put_hdr(w, 0xbeef, DP_DNS_F_QR | DP_DNS_F_RD | DP_DNS_F_RA, 1, 1, 0,
		opt_not_last ? 3 : 2);
	put_name(w, "www.example.com");
	put16(w, T_A);
	put16(w, C_IN);
	put8(w, 0xc0);
	put8(w, 12);
	put_rr_tail(w, T_A, C_IN, 300, addr1, 4);
	put_name(w, "ns.example.com");
	put_rr_tail(w, T_A, C_IN, 300, addr1, 4);
	put_opt(w, 1232, 0, DO_FLAG, o ? o->b : NULL, o ? o->n : 0);
	if (opt_not_last) {
		put8(w, 0xc0);
		put8(w, 12);
		put_rr_tail(w, T_TXT, C_IN, 60, "\x04tail", 5);
	}
}

/* Everything but the OPT RR, in order: what must survive any scrub. */
static size_t without_opt(const uint8_t *m, size_t len, const dp_dns_view_t *v, uint8_t *out)
{
	memcpy(out, m, v->opt_off);
	size_t after = v->opt_off + v->opt_len;
	memcpy(out + v->opt_off, m + after, len - after);
	return len - v->opt_len;
}

static void scrub_removes_opt_for_plain_client(void **state)
{
	for (int not_last = 0; not_last <= 1; not_last++) {
		wire_t w;
		opts_t o = { .n = 0 };
		dp_dns_view_t v, v2;
		static uint8_t expect[4096];
		static const uint8_t ka[2] = { 0, 100 };
		opt_add(&o, DP_DNS_OPT_KEEPALIVE, ka, 2);
		opt_add(&o, DP_DNS_OPT_PADDING, NULL, 200);
		make_answer(&w, &o, not_last);
		assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
		assert_true(v.has_opt && v.opt_padding && v.opt_keepalive);
		assert_int_equal(v.opt_after, not_last ? 1 : 0);
		size_t elen = without_opt(w.b, w.n, &v, expect);
		uint16_t ar = v.arcount;
		size_t n = dp_edns_scrub_answer(w.b, w.n, &v, false, false, NULL, 0);
		assert_int_equal(n, elen);
		assert_false(v.has_opt);
		assert_false(v.opt_padding);
		assert_false(v.opt_keepalive);
		assert_int_equal(v.arcount, ar - 1);
		assert_int_equal(v.msg_end, n);
		assert_int_equal(v.opt_after, 0); /* no OPT, nothing after it */
		expect[10] = (uint8_t)((ar - 1) >> 8);
		expect[11] = (uint8_t)(ar - 1);
		assert_memory_equal(w.b, expect, n);
		/* It re-parses: no OPT, the other records intact. */
		assert_int_equal(dp_dns_parse_answer(w.b, n, &v2), 0);
		assert_false(v2.has_opt);
		assert_int_equal(v2.arcount, ar - 1);
		assert_int_equal(v2.ancount, 1);
		assert_int_equal(v2.msg_end, n);
	}
}

static void scrub_plain_client_even_when_client_padding_flag_set(void **state)
{
	/* client_padding without client_opt cannot happen, but must not keep
	 * an OPT the client never sent. */
	wire_t w;
	opts_t o = { .n = 0 };
	dp_dns_view_t v, v2;
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 10);
	make_answer(&w, &o, false);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	size_t n = dp_edns_scrub_answer(w.b, w.n, &v, false, true, NULL, 0);
	assert_int_equal(dp_dns_parse_answer(w.b, n, &v2), 0);
	assert_false(v2.has_opt);
}

static void scrub_removes_padding_unasked(void **state)
{
	for (int not_last = 0; not_last <= 1; not_last++) {
		wire_t w;
		opts_t o = { .n = 0 };
		dp_dns_view_t v, v2;
		opt_list_t ol;
		static const uint8_t ka[2] = { 0, 100 };
		opt_add(&o, DP_DNS_OPT_PADDING, NULL, 200);
		opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
		opt_add(&o, DP_DNS_OPT_KEEPALIVE, ka, 2);
		opt_add(&o, DP_DNS_OPT_PADDING, NULL, 3);
		make_answer(&w, &o, not_last);
		size_t orig = w.n;
		assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
		uint16_t ar = v.arcount;
		size_t n = dp_edns_scrub_answer(w.b, w.n, &v, true, false, NULL, 0);
		assert_int_equal(n, orig - (4 + 200) - (4 + sizeof(cookie)) - (4 + 2) - (4 + 3));
		assert_true(v.has_opt);
		assert_false(v.opt_padding);
		assert_false(v.opt_keepalive);
		assert_int_equal(v.msg_end, n);
		assert_int_equal(v.opt_len, 11);
		list_opts(w.b, &v, &ol);
		assert_int_equal(ol.n, 0);
		assert_int_equal(dp_dns_parse_answer(w.b, n, &v2), 0);
		assert_true(v2.has_opt);
		assert_false(v2.opt_padding);
		assert_false(v2.opt_keepalive);
		assert_true(v2.do_bit);
		assert_int_equal(v2.arcount, ar);
		assert_int_equal(v2.opt_off, v.opt_off);
		assert_int_equal(v2.opt_len, v.opt_len);
		assert_int_equal(v2.msg_end, n);
		if (not_last) /* the record after the OPT moved down intact */
			assert_memory_equal(w.b + n - 5, "\x04tail", 5);
	}
}

static void scrub_keeps_padding_asked(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	dp_dns_view_t v, v2;
	opt_list_t ol;
	opt_add(&o, DP_DNS_OPT_KEEPALIVE, NULL, 0);
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 120);
	make_answer(&w, &o, false);
	size_t orig = w.n;
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	size_t n = dp_edns_scrub_answer(w.b, w.n, &v, true, true, NULL, 0);
	assert_int_equal(n, orig - 4); /* only the keepalive went */
	assert_true(v.opt_padding);
	assert_false(v.opt_keepalive);
	list_opts(w.b, &v, &ol);
	assert_int_equal(ol.n, 1);
	assert_int_equal(ol.code[0], DP_DNS_OPT_PADDING);
	assert_int_equal(ol.len[0], 120);
	assert_int_equal(dp_dns_parse_answer(w.b, n, &v2), 0);
	assert_true(v2.opt_padding);
	assert_false(v2.opt_keepalive);
}

static void scrub_leaves_clean_answers_alone(void **state)
{
	wire_t w, copy;
	opts_t o = { .n = 0 };
	dp_dns_view_t v;
	/* OPT without options: nothing to take out for any client with EDNS. */
	make_answer(&w, &o, true);
	copy = w;
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_int_equal(dp_edns_scrub_answer(w.b, w.n, &v, true, false, NULL, 0), w.n);
	assert_memory_equal(w.b, copy.b, w.n);
	assert_int_equal(dp_edns_scrub_answer(w.b, w.n, &v, true, true, NULL, 0), w.n);
	assert_memory_equal(w.b, copy.b, w.n);

	/* No OPT in the answer at all: untouched whatever the client had. */
	put_hdr(&w, 1, DP_DNS_F_QR, 1, 0, 0, 0);
	put_name(&w, "example.org");
	put16(&w, T_A);
	put16(&w, C_IN);
	copy = w;
	for (int co = 0; co <= 1; co++) {
		assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
		assert_int_equal(dp_edns_scrub_answer(w.b, w.n, &v, co, co, NULL, 0), w.n);
		assert_memory_equal(w.b, copy.b, w.n);
	}
}

/* Hole 2: whatever the upstream put in its OPT for this one response (NSID,
 * a subnet, Extended DNS Errors, anything unknown) never reaches a client;
 * only the subnet the client itself sent (scope aside) may come back. */
static void scrub_drops_per_response_options(void **state)
{
	static const uint8_t ours[] = { 0, 1, 24, 0, 198, 51, 100 };
	static const uint8_t echo[] = { 0, 1, 24, 16, 198, 51, 100 }; /* scope /16 */
	static const uint8_t other[] = { 0, 1, 24, 24, 203, 0, 113 };
	static const uint16_t pad_ecs[] = { DP_DNS_OPT_PADDING, DP_DNS_OPT_ECS };
	for (int mode = 0; mode < 4; mode++) { /* no ecs; ours; other's; ours + padding */
		for (int not_last = 0; not_last <= 1; not_last++) {
			wire_t w;
			opts_t o = { .n = 0 };
			dp_dns_view_t v, v2;
			opt_list_t ol;
			opt_add(&o, 3, "upstream-1", 10); /* NSID */
			opt_add(&o, DP_DNS_OPT_ECS, mode == 2 ? other : echo, sizeof(echo));
			opt_add(&o, 15, "\x00\x03stale", 7); /* EDE */
			opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
			opt_add(&o, DP_DNS_OPT_PADDING, NULL, 30);
			opt_add(&o, OPT_COOKIE, cookie, sizeof(cookie));
			make_answer(&w, &o, not_last);
			assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
			assert_int_not_equal(v.opt_ecs, 0);
			bool pad = mode == 3;
			const uint8_t *e = mode ? ours : NULL;
			size_t n = dp_edns_scrub_answer(w.b, w.n, &v, true, pad, e, e ? sizeof(ours) : 0);
			assert_int_equal(dp_dns_parse_answer(w.b, n, &v2), 0);
			list_opts(w.b, &v2, &ol);
			assert_int_equal(count_other(&ol, pad_ecs, 2), 0);
			assert_int_equal(count_code(&ol, DP_DNS_OPT_PADDING), pad);
			assert_null(memmem(w.b, n, "upstream-1", 10));
			assert_null(memmem(w.b, n, other + 4, 3));
			if (mode == 1 || mode == 3) {
				assert_int_equal(count_code(&ol, DP_DNS_OPT_ECS), 1);
				assert_int_equal(v.opt_ecs, v2.opt_ecs);
				assert_memory_equal(w.b + v.opt_ecs + 4, echo, sizeof(echo));
				assert_int_equal(dp_edns_ecs_scope(w.b, &v), 16);
			} else {
				assert_int_equal(count_code(&ol, DP_DNS_OPT_ECS), 0);
				assert_int_equal(v.opt_ecs, 0);
				assert_int_equal(dp_edns_ecs_scope(w.b, &v), -1);
			}
			if (not_last)
				assert_memory_equal(w.b + n - 5, "\x04tail", 5);
		}
	}
}

static void scrub_drops_trailing_bytes(void **state)
{
	wire_t w;
	dp_dns_view_t v, v2;
	make_answer(&w, NULL, false);
	size_t real = w.n;
	put_bytes(&w, "trailing", 8);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	assert_int_equal(v.msg_end, real);
	/* Nothing to scrub in the OPT: still cut at the message end. */
	assert_int_equal(dp_edns_scrub_answer(w.b, w.n, &v, true, false, NULL, 0), real);
	/* And removing the OPT works on the message proper. */
	make_answer(&w, NULL, true);
	real = w.n;
	put_bytes(&w, "trailing", 8);
	assert_int_equal(dp_dns_parse_answer(w.b, w.n, &v), 0);
	size_t n = dp_edns_scrub_answer(w.b, w.n, &v, false, false, NULL, 0);
	assert_int_equal(n, real - 11);
	assert_int_equal(dp_dns_parse_answer(w.b, n, &v2), 0);
	assert_int_equal(v2.msg_end, n);
	assert_memory_equal(w.b + n - 5, "\x04tail", 5);
}

/* The round trip dotproxy performs: pad a client's query, let an upstream
 * answer carry our keepalive and its padding, scrub for the client. */
static void pad_then_scrub_round_trip(void **state)
{
	for (int client = 0; client < 3; client++) { /* no EDNS, EDNS, EDNS+padding */
		wire_t q, a;
		opts_t co = { .n = 0 }, ao = { .n = 0 };
		static uint8_t up[4096];
		dp_dns_view_t vq, vu, va, v2;
		if (client == 2)
			opt_add(&co, DP_DNS_OPT_PADDING, NULL, 40);
		make_query(&q, "www.example.com", client > 0, 1232, 0, &co);
		assert_int_equal(dp_dns_parse_query(q.b, q.n, &vq), 0);
		int n = dp_edns_pad_query(q.b, &vq, NULL, 0, 128, up, sizeof(up));
		assert_int_equal(dp_dns_parse_query(up, (size_t)n, &vu), 0);
		assert_true(vu.opt_padding && vu.opt_keepalive);
		static const uint8_t ka[2] = { 0, 30 };
		opt_add(&ao, DP_DNS_OPT_KEEPALIVE, ka, 2);
		opt_add(&ao, DP_DNS_OPT_PADDING, NULL, 300);
		make_answer(&a, &ao, false);
		assert_int_equal(dp_dns_parse_answer(a.b, a.n, &va), 0);
		size_t m = dp_edns_scrub_answer(a.b, a.n, &va, vq.has_opt, vq.opt_padding, NULL, 0);
		assert_int_equal(dp_dns_parse_answer(a.b, m, &v2), 0);
		assert_int_equal(v2.has_opt, client > 0);
		assert_int_equal(v2.opt_padding, client == 2);
		assert_false(v2.opt_keepalive);
	}
}

/* A client's COOKIE belongs to its session with us: it is never sent
 * upstream, and a COOKIE in an answer (the upstream's, for us) never
 * reaches a client, so cached and coalesced answers cannot hand one
 * client's cookie to another. */
/* The options of the OPT at opt_off that ends m (len). */
static void list_tail_opts(const uint8_t *m, size_t len, size_t opt_off, opt_list_t *l)
{
	dp_dns_view_t v;
	memset(&v, 0, sizeof(v));
	v.has_opt = true;
	v.opt_off = (uint16_t)opt_off;
	v.opt_len = (uint16_t)(len - opt_off);
	list_opts(m, &v, l);
}

static void stream_answer_pads_to_468_with_keepalive(void **state)
{
	static opts_t o;
	o.n = 0;
	opt_add(&o, OPT_OTHER, "ab", 2);
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 37); /* the upstream's */
	opt_add(&o, DP_DNS_OPT_KEEPALIVE, "\x00\x05", 2); /* the upstream's */
	static wire_t w;
	w.n = 0;
	make_answer(&w, &o, false);
	size_t opt_off = w.n - 11 - o.n;
	static uint8_t before[70000];
	memcpy(before, w.b, opt_off);
	size_t n = dp_edns_stream_answer(w.b, w.n, sizeof(w.b), opt_off, 100, DP_EDNS_ANSWER_BLOCK);
	assert_int_equal(n % DP_EDNS_ANSWER_BLOCK, 0);
	assert_memory_equal(w.b, before, opt_off); /* the records before the OPT untouched */
	opt_list_t l;
	list_tail_opts(w.b, n, opt_off, &l);
	assert_int_equal(count_code(&l, OPT_OTHER), 1);
	assert_int_equal(count_code(&l, DP_DNS_OPT_KEEPALIVE), 1);
	assert_int_equal(count_code(&l, DP_DNS_OPT_PADDING), 1);
	int k = find_code(&l, DP_DNS_OPT_KEEPALIVE);
	assert_int_equal(l.len[k], 2);
	assert_int_equal(dp_rd16(w.b + l.data_off[k]), 100);
	assert_int_equal(find_code(&l, DP_DNS_OPT_PADDING), l.n - 1); /* padding last */
}

static void stream_answer_keepalive_only_keeps_padding(void **state)
{
	static opts_t o;
	o.n = 0;
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 37);
	static wire_t w;
	w.n = 0;
	make_answer(&w, &o, false);
	size_t opt_off = w.n - 11 - o.n;
	size_t n = dp_edns_stream_answer(w.b, w.n, sizeof(w.b), opt_off, 7, 0);
	assert_int_equal(n, w.n + 6);
	opt_list_t l;
	list_tail_opts(w.b, n, opt_off, &l);
	assert_int_equal(count_code(&l, DP_DNS_OPT_PADDING), 1);
	assert_int_equal(l.len[find_code(&l, DP_DNS_OPT_PADDING)], 37);
	assert_int_equal(dp_rd16(w.b + l.data_off[find_code(&l, DP_DNS_OPT_KEEPALIVE)]), 7);
}

static void stream_answer_leaves_misplaced_opt_and_respects_cap(void **state)
{
	static wire_t w;
	w.n = 0;
	make_answer(&w, NULL, true); /* a record after the OPT */
	size_t opt_off = w.n - 11 - 17; /* the OPT, then the 17-octet TXT record */
	static uint8_t copy[70000];
	memcpy(copy, w.b, w.n);
	assert_int_equal(dp_edns_stream_answer(w.b, w.n, sizeof(w.b), opt_off, 1, 468), w.n);
	assert_memory_equal(w.b, copy, w.n);
	w.n = 0;
	make_answer(&w, NULL, false);
	opt_off = w.n - 11;
	/* room for the keepalive, not for the padding: keepalive only */
	size_t n = dp_edns_stream_answer(w.b, w.n, w.n + 8, opt_off, 1, 468);
	assert_int_equal(n, w.n + 6);
}

static void cookie_never_crosses(void **state)
{
	(void)state;
	wire_t w;
	opts_t o = { .n = 0 };
	static uint8_t out[4096];
	dp_dns_view_t v, vo;
	opt_list_t ol;
	opt_add(&o, OPT_COOKIE, cookie, sizeof(cookie));
	make_query(&w, "www.example.com", true, 1232, 0, &o);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
	check_padded(w.b, &v, out, n, DP_EDNS_QUERY_BLOCK, &vo, &ol);
	for (int i = 0; i < ol.n; i++)
		assert_int_not_equal(ol.code[i], OPT_COOKIE);

	wire_t a;
	opts_t ao = { .n = 0 };
	opt_add(&ao, OPT_COOKIE, cookie, sizeof(cookie));
	make_answer(&a, &ao, false);
	dp_dns_view_t av;
	assert_int_equal(dp_dns_parse_answer(a.b, a.n, &av), 0);
	size_t orig = a.n;
	size_t m = dp_edns_scrub_answer(a.b, a.n, &av, true, true, NULL, 0);
	assert_int_equal(m, orig - (4 + sizeof(cookie)));
	dp_dns_view_t av2;
	assert_int_equal(dp_dns_parse_answer(a.b, m, &av2), 0);
	assert_true(av2.has_opt);
}

/* ---- plain upstreams: dp_edns_strip_stream_opts -------------------------------- */

/* A query to www.example.com whose OPT (last) holds options o. */
static void strip_query(wire_t *w, const opts_t *o, dp_dns_view_t *v)
{
	make_query(w, "www.example.com", true, 1232, DO_FLAG, o);
	assert_int_equal(dp_dns_parse_query(w->b, w->n, v), 0);
	assert_int_equal(v->opt_off + v->opt_len, w->n);
}

/* Catches: padding left in a plain query, keepalive sent over UDP or
 * lost over TCP, the client's subnet (and an unknown option) dropped, a
 * stale RDLENGTH, options reordered, the rest of the message touched. */
static void strip_padding_and_keepalive(void **state)
{
	static const uint8_t subnet[] = { 0, 1, 24, 0, 198, 51, 100 };
	for (int keep = 0; keep < 2; keep++) {
		wire_t w;
		opts_t o = { .n = 0 };
		dp_dns_view_t v, v2;
		opt_list_t ol;
		opt_add(&o, DP_DNS_OPT_ECS, subnet, sizeof(subnet));
		opt_add(&o, DP_DNS_OPT_PADDING, NULL, 17); /* not last: dropped anyway */
		opt_add(&o, DP_DNS_OPT_KEEPALIVE, NULL, 0);
		opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
		opt_add(&o, DP_DNS_OPT_PADDING, NULL, 60);
		strip_query(&w, &o, &v);
		uint8_t before[512];
		memcpy(before, w.b, w.n);
		size_t n = dp_edns_strip_stream_opts(w.b, w.n, v.opt_off, keep);
		size_t want = w.n - (4 + 17) - (4 + 60) - (keep ? 0 : 4);
		assert_int_equal(n, want);
		/* Everything before the OPT's RDATA is as it was but RDLENGTH. */
		assert_memory_equal(w.b, before, v.opt_off + 9);
		assert_int_equal(dp_rd16(w.b + v.opt_off + 9), n - v.opt_off - 11);
		assert_int_equal(dp_dns_parse_query(w.b, n, &v2), 0);
		assert_int_equal(v2.msg_end, n);
		assert_false(v2.opt_padding);
		assert_int_equal(v2.opt_keepalive, keep);
		list_opts(w.b, &v2, &ol);
		assert_int_equal(ol.n, 2 + keep);
		assert_int_equal(ol.code[0], DP_DNS_OPT_ECS);
		assert_memory_equal(w.b + ol.data_off[0], subnet, sizeof(subnet));
		if (keep)
			assert_int_equal(ol.code[1], DP_DNS_OPT_KEEPALIVE);
		assert_int_equal(ol.code[1 + keep], OPT_OTHER);
		assert_memory_equal(w.b + ol.data_off[1 + keep], cookie, sizeof(cookie));
		assert_int_equal(v2.udp_size, 1232);
		assert_true(v2.do_bit);
	}
}

/* Catches: an OPT emptied of its options left with the old RDLENGTH, and
 * a query with nothing to strip changed at all. */
static void strip_to_empty_and_nothing_to_do(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	dp_dns_view_t v, v2;
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 100);
	strip_query(&w, &o, &v);
	size_t n = dp_edns_strip_stream_opts(w.b, w.n, v.opt_off, true);
	assert_int_equal(n, v.opt_off + 11);
	assert_int_equal(dp_rd16(w.b + v.opt_off + 9), 0);
	assert_int_equal(dp_dns_parse_query(w.b, n, &v2), 0);
	assert_true(v2.has_opt);
	assert_false(v2.opt_padding);

	o.n = 0;
	opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
	opt_add(&o, DP_DNS_OPT_KEEPALIVE, NULL, 0);
	strip_query(&w, &o, &v);
	uint8_t before[512];
	memcpy(before, w.b, w.n);
	assert_int_equal(dp_edns_strip_stream_opts(w.b, w.n, v.opt_off, true), w.n);
	assert_memory_equal(w.b, before, w.n);
	/* No OPT at all (opt_off 0): nothing to do. */
	make_query(&w, "www.example.com", false, 0, 0, NULL);
	memcpy(before, w.b, w.n);
	assert_int_equal(dp_edns_strip_stream_opts(w.b, w.n, 0, false), w.n);
	assert_memory_equal(w.b, before, w.n);
}

/* Catches: edits of a record that is not a well-formed last OPT: options
 * that do not tile the RDATA (one running past it, a stray octet), an
 * RDLENGTH that is not the rest of the message (the OPT not last), an
 * offset at another record or beyond the message. Each is left byte for
 * byte as it was, its length too. */
static void strip_leaves_malformed_alone(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	dp_dns_view_t v;
	uint8_t before[512];
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 8);
	opt_add(&o, DP_DNS_OPT_KEEPALIVE, NULL, 0);

	for (int mode = 0; mode < 6; mode++) {
		strip_query(&w, &o, &v);
		size_t off = v.opt_off, len = w.n;
		switch (mode) {
		case 0: /* the keepalive claims 9 octets, the RDATA has none left */
			dp_wr16(w.b + len - 2, 9);
			break;
		case 1: /* a stray octet after the options, counted in RDLENGTH */
			w.b[len++] = 0;
			dp_wr16(w.b + off + 9, dp_rd16(w.b + off + 9) + 1);
			break;
		case 2: /* RDLENGTH one short of the message */
			dp_wr16(w.b + off + 9, dp_rd16(w.b + off + 9) - 1);
			break;
		case 3: /* not an OPT: type A */
			dp_wr16(w.b + off + 1, T_A);
			break;
		case 4: /* an owner name that is not the root */
			w.b[off] = 1;
			break;
		case 5: /* an offset past the end */
			off = len - 5;
			break;
		}
		memcpy(before, w.b, len);
		assert_int_equal(dp_edns_strip_stream_opts(w.b, len, off, false), len);
		assert_memory_equal(w.b, before, len);
	}
}

/* Catches: the OPT taken as the last record when another follows it. */
static void strip_opt_not_last(void **state)
{
	wire_t w;
	opts_t o = { .n = 0 };
	dp_dns_view_t v;
	opt_add(&o, DP_DNS_OPT_PADDING, NULL, 30);
	put_hdr(&w, 0x4242, DP_DNS_F_RD, 1, 0, 0, 2);
	put_name(&w, "example.org");
	put16(&w, T_A);
	put16(&w, C_IN);
	size_t opt_at = w.n;
	put_opt(&w, 1400, 0, 0, o.b, o.n);
	put_name(&w, "glue.example.org");
	put_rr_tail(&w, T_A, C_IN, 300, addr1, 4);
	assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
	assert_int_equal(v.opt_off, opt_at);
	uint8_t before[512];
	memcpy(before, w.b, w.n);
	assert_int_equal(dp_edns_strip_stream_opts(w.b, w.n, opt_at, false), w.n);
	assert_memory_equal(w.b, before, w.n);
}

/* What pool.c does: pad for TLS, then strip for a plain upstream at
 * dp_edns_padded_opt_off. Catches: that offset wrong when the client's
 * OPT was not last (padding moved it), when there was none, or when
 * the client's query had trailing octets. */
static void pad_then_strip(void **state)
{
	static uint8_t out[4096];
	for (int shape = 0; shape < 4; shape++) {
		wire_t w;
		opts_t o = { .n = 0 };
		dp_dns_view_t v, v2;
		opt_add(&o, OPT_OTHER, cookie, sizeof(cookie));
		if (shape == 0) { /* no OPT */
			make_query(&w, "www.example.com", false, 0, 0, NULL);
		} else if (shape == 1 || shape == 3) { /* OPT last; 3: trailing octets */
			make_query(&w, "www.example.com", true, 1232, 0, &o);
			if (shape == 3)
				put_bytes(&w, "\1\2\3", 3);
		} else { /* OPT, then an A record */
			put_hdr(&w, 0x4242, DP_DNS_F_RD, 1, 0, 0, 2);
			put_name(&w, "example.org");
			put16(&w, T_A);
			put16(&w, C_IN);
			put_opt(&w, 1400, 0, 0, o.b, o.n);
			put_name(&w, "glue.example.org");
			put_rr_tail(&w, T_A, C_IN, 300, addr1, 4);
		}
		assert_int_equal(dp_dns_parse_query(w.b, w.n, &v), 0);
		int n = dp_edns_pad_query(w.b, &v, NULL, 0, DP_EDNS_QUERY_BLOCK, out, sizeof(out));
		assert_true(n > 0);
		size_t off = dp_edns_padded_opt_off(&v);
		for (int keep = 0; keep < 2; keep++) {
			uint8_t copy[4096];
			memcpy(copy, out, (size_t)n);
			size_t m = dp_edns_strip_stream_opts(copy, (size_t)n, off, keep);
			assert_true(m < (size_t)n);
			assert_int_equal(dp_dns_parse_query(copy, m, &v2), 0);
			assert_int_equal(v2.msg_end, m);
			assert_int_equal(v2.opt_off, off);
			assert_false(v2.opt_padding);
			assert_int_equal(v2.opt_keepalive, keep);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(cookie_never_crosses),
		cmocka_unit_test(stream_answer_pads_to_468_with_keepalive),
		cmocka_unit_test(stream_answer_keepalive_only_keeps_padding),
		cmocka_unit_test(stream_answer_leaves_misplaced_opt_and_respects_cap),
		cmocka_unit_test(pad_adds_opt_when_missing),
		cmocka_unit_test(pad_forwards_no_client_option),
		cmocka_unit_test(pad_forwards_given_subnet),
		cmocka_unit_test(ecs_read_checks_the_option),
		cmocka_unit_test(pad_replaces_existing_padding),
		cmocka_unit_test(pad_moves_opt_last),
		cmocka_unit_test(pad_ignores_trailing_bytes),
		cmocka_unit_test(pad_every_length),
		cmocka_unit_test(pad_too_big),
		cmocka_unit_test(scrub_removes_opt_for_plain_client),
		cmocka_unit_test(scrub_plain_client_even_when_client_padding_flag_set),
		cmocka_unit_test(scrub_removes_padding_unasked),
		cmocka_unit_test(scrub_keeps_padding_asked),
		cmocka_unit_test(scrub_leaves_clean_answers_alone),
		cmocka_unit_test(scrub_drops_per_response_options),
		cmocka_unit_test(scrub_drops_trailing_bytes),
		cmocka_unit_test(pad_then_scrub_round_trip),
		cmocka_unit_test(strip_padding_and_keepalive),
		cmocka_unit_test(strip_to_empty_and_nothing_to_do),
		cmocka_unit_test(strip_leaves_malformed_alone),
		cmocka_unit_test(strip_opt_not_last),
		cmocka_unit_test(pad_then_strip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
