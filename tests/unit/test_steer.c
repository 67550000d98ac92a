/* test_steer.c - the steering program's name reading and hash (steer_prog.h,
 * the same source the BPF object is built from) against home.h and dns.c,
 * and the parameters the loader gives it (steer.h).
 *
 * The kernel side is checked end to end by tests/integration/
 * test_steering.py (no UDP query lands away from its home); this checks
 * the functions over every length and case, without a kernel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dns.h"
#include "home.h"
#include "steer.h"
#include "rnd.h"


/* A random well-formed wire name of exactly len octets (2..255, or 1 for
 * the root) at out: labels of random length, octets of every value (upper
 * case ASCII often). */
static void random_name(uint8_t *out, unsigned len)
{
	unsigned pos = 0, rest = len - 1;
	while (rest > 0) {
		unsigned top = rest - 1 < 63 ? rest - 1 : 63;
		unsigned n = 1 + (unsigned)(rnd() % top);
		if (rest - (n + 1) == 1)
			n = n < top ? n + 1 : n - 1;
		out[pos++] = (uint8_t)n;
		for (unsigned i = 0; i < n; i++) {
			uint64_t r = rnd();
			out[pos++] = (r & 3) == 0 ? (uint8_t)('A' + (r >> 8) % 26) : (uint8_t)(r >> 16);
		}
		rest -= n + 1;
	}
	out[pos] = 0;
}

/* The parameter map holds the process key and the shard count, exactly. */
static void test_params_are_home_h_key(void **state)
{
	(void)state;
	assert_int_equal(dp_hash_key_init(), 0);
	struct dp_steer_params p;
	memset(&p, 0xa5, sizeof(p));
	dp_steer_params_make(&p, 8, 3);
	assert_true(p.k0 == dp_hash_key.k0);
	assert_true(p.k1 == dp_hash_key.k1);
	assert_int_equal(p.nshards, 8);
	assert_int_equal(p.nlisten, 3);
	assert_true(p.k0 != 0 || p.k1 != 0);
}

/* The SWAR case fold equals octet-by-octet A-Z -> a-z for every octet
 * value in every position (0x80-0xff, '@', '[' untouched). */
static void test_fold_every_octet(void **state)
{
	(void)state;
	for (int pos = 0; pos < 8; pos++)
		for (int c = 0; c < 256; c++) {
			uint64_t fill = rnd();
			uint64_t w = (fill & ~(0xffull << (8 * pos))) | ((uint64_t)c << (8 * pos));
			uint64_t want = 0;
			for (int i = 0; i < 8; i++) {
				uint8_t o = (uint8_t)(w >> (8 * i));
				if (o >= 'A' && o <= 'Z')
					o |= 0x20;
				want |= (uint64_t)o << (8 * i);
			}
			assert_true(dp_steer_fold(w) == want);
		}
}

/* Bit for bit: the program's hash and home equal dp_home_hash() and
 * dp_home_shard() for names of every length 1..255 (so every tail length
 * and word count), octets after the name being anything. */
static void test_hash_equals_home_h(void **state)
{
	(void)state;
	assert_int_equal(dp_hash_key_init(), 0);
	struct dp_steer_params p;
	dp_steer_params_make(&p, 1, 1);
	uint8_t buf[DP_STEER_NAME_BUF] __attribute__((aligned(8)));
	for (unsigned len = 1; len <= 255; len++) {
		if (len == 2) /* a label of one octet and the root is 3 */
			continue;
		for (int round = 0; round < 200; round++) {
			for (size_t i = 0; i < sizeof(buf); i++)
				buf[i] = (uint8_t)rnd();
			random_name(buf, len);
			assert_int_equal(dp_steer_name_len(buf, DP_STEER_NAME_BUF), len);
			uint64_t h = dp_steer_hash(buf, len, p.k0, p.k1);
			assert_true(h == dp_home_hash(buf, len));
			for (uint32_t n = 1; n <= 256; n = n * 2 + (n & 1))
				assert_int_equal(dp_steer_home(h, n), dp_home_shard(h, n));
		}
	}
	/* The hash depends on the key: the program reads it from the map. */
	uint8_t name[DP_STEER_NAME_BUF] __attribute__((aligned(8))) = "\7example\3com";
	assert_true(dp_steer_hash(name, 13, p.k0, p.k1) != dp_steer_hash(name, 13, p.k0 ^ 1, p.k1));
}

/* Case does not change the home. */
static void test_case_folded(void **state)
{
	(void)state;
	uint8_t a[DP_STEER_NAME_BUF] __attribute__((aligned(8))) = "\7ExAmPlE\3COM";
	uint8_t b[DP_STEER_NAME_BUF] __attribute__((aligned(8))) = "\7example\3com";
	assert_true(dp_steer_hash(a, 13, 1, 2) == dp_steer_hash(b, 13, 1, 2));
	/* 0xc5 is not 'E' */
	a[1] = 0xc5;
	assert_true(dp_steer_hash(a, 13, 1, 2) != dp_steer_hash(b, 13, 1, 2));
}

/* What the program refuses to read (it then leaves the datagram to the
 * kernel's hash). */
static void test_name_len_refuses(void **state)
{
	(void)state;
	uint8_t buf[DP_STEER_NAME_BUF];
	memset(buf, 0, sizeof(buf));
	memcpy(buf, "\3www\xc0\x0c", 6); /* compression pointer */
	assert_int_equal(dp_steer_name_len(buf, 6), 0);
	memcpy(buf, "\x41" "a\0", 3); /* extended label type 0x40 */
	assert_int_equal(dp_steer_name_len(buf, 3), 0);
	memcpy(buf, "\x81" "a\0", 3); /* reserved 0x80 */
	assert_int_equal(dp_steer_name_len(buf, 3), 0);
	memcpy(buf, "\3www\4pe", 7); /* runs past the datagram */
	assert_int_equal(dp_steer_name_len(buf, 7), 0);
	memcpy(buf, "\3www\0", 5);
	assert_int_equal(dp_steer_name_len(buf, 4), 0); /* root not in the datagram */
	assert_int_equal(dp_steer_name_len(buf, 5), 5);
	/* 255 octets is the limit; 256 is refused */
	memset(buf, 'a', sizeof(buf));
	for (int i = 0; i < 4; i++)
		buf[i * 64] = 63; /* four 63-octet labels: 256 with the root */
	assert_int_equal(dp_steer_name_len(buf, 256), 0);
	buf[192] = 62; /* 3 x 64 + 63 + the root at octet 255: 256 */
	buf[255] = 0;
	assert_int_equal(dp_steer_name_len(buf, 256), 0);
	buf[192] = 61; /* 3 x 64 + 62 + the root: 255 */
	buf[254] = 0;
	assert_int_equal(dp_steer_name_len(buf, 256), 255);
	buf[0] = 0;
	assert_int_equal(dp_steer_name_len(buf, 256), 1); /* the root */
}

/* The program reads the same question name as dns.c: over random and
 * mutated one-question queries, whenever it reads a name whose QTYPE and
 * QCLASS follow in the datagram, dp_dns_parse_query() read the same name
 * (same length); and whenever dns.c read a question, so did the program. */
static void test_name_len_agrees_with_dns_c(void **state)
{
	(void)state;
	uint8_t pkt[12 + 300];
	for (int round = 0; round < 200000; round++) {
		memset(pkt, 0, 12);
		pkt[2] = 0x01; /* RD */
		pkt[5] = 1; /* QDCOUNT 1 */
		unsigned len = 1 + (unsigned)(rnd() % 255);
		if (len == 2)
			len = 3;
		random_name(pkt + 12, len);
		size_t plen = 12 + len + 4;
		pkt[12 + len + 1] = 1; /* A */
		pkt[12 + len + 3] = 1; /* IN */
		/* mutate: a random octet of the name, or the length */
		uint64_t r = rnd();
		if (r & 1)
			pkt[12 + (r >> 8) % len] = (uint8_t)(r >> 24);
		if ((r & 6) == 0)
			plen = 12 + (r >> 32) % (len + 5);
		uint32_t avail = (uint32_t)(plen - 12 < DP_STEER_NAME_BUF ? plen - 12 : DP_STEER_NAME_BUF);
		uint8_t buf[DP_STEER_NAME_BUF];
		memset(buf, 0, sizeof(buf));
		memcpy(buf, pkt + 12, avail);
		uint32_t sl = dp_steer_name_len(buf, avail);
		dp_dns_view_t v;
		dp_dns_parse_query(pkt, plen, &v);
		if (sl && 12 + sl + 4 <= plen) {
			assert_true(v.has_question);
			assert_int_equal(v.qname_len, sl);
		}
		if (v.has_question)
			assert_int_equal(sl, v.qname_len);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_params_are_home_h_key),
		cmocka_unit_test(test_fold_every_octet),
		cmocka_unit_test(test_hash_equals_home_h),
		cmocka_unit_test(test_case_folded),
		cmocka_unit_test(test_name_len_refuses),
		cmocka_unit_test(test_name_len_agrees_with_dns_c),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
