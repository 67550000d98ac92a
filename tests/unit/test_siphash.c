/* test_siphash.c - the keyed hash every client-reachable table uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "home.h"
#include "siphash.h"

/* The SipHash paper (Aumasson, Bernstein 2012), appendix A: key 00..0f,
 * message 00..0e, SipHash-2-4 = a129ca6149be45e5. The first vectors of the
 * reference implementation's table cover the empty message and one full
 * block. */
static void test_paper_vectors(void **state)
{
	(void)state;
	dp_sipkey_t k = { 0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull };
	uint8_t m[64];
	for (int i = 0; i < 64; i++)
		m[i] = (uint8_t)i;
	assert_true(dp_siphash_r(&k, m, 15, 2, 4) == 0xa129ca6149be45e5ull);
	assert_true(dp_siphash_r(&k, m, 0, 2, 4) == 0x726fdb47dd0e0e31ull);
	assert_true(dp_siphash_r(&k, m, 8, 2, 4) == 0x93f5f5799a932462ull);
}

/* The streaming form gives what the one-call form gives. */
static void test_streaming_matches(void **state)
{
	(void)state;
	dp_sipkey_t k = { 0x1122334455667788ull, 0x99aabbccddeeff00ull };
	uint8_t m[40];
	for (int i = 0; i < 40; i++)
		m[i] = (uint8_t)(i * 7 + 3);
	for (size_t len = 0; len <= sizeof(m); len++) {
		dp_sip_t s;
		dp_sip_init(&s, &k);
		size_t i = 0;
		for (; i + 8 <= len; i += 8) {
			uint64_t w;
			memcpy(&w, m + i, 8);
			dp_sip_word(&s, w);
		}
		uint64_t tail = 0;
		memcpy(&tail, m + i, len - i);
		assert_true(dp_sip_final(&s, tail, len) == dp_siphash(&k, m, len));
	}
}

/* The point of the key: the same input hashes differently under another
 * key, so a client cannot precompute colliding inputs. */
static void test_key_changes_hash(void **state)
{
	(void)state;
	dp_sipkey_t a = { 1, 2 }, b = { 1, 3 };
	const char *name = "\7example\3com";
	assert_true(dp_siphash(&a, name, 13) != dp_siphash(&b, name, 13));
	dp_sipkey_t old = dp_hash_key;
	assert_int_equal(dp_hash_key_init(), 0);
	assert_true(dp_hash_key.k0 != 0 || dp_hash_key.k1 != 0);
	uint64_t h1 = dp_hash2(42, 7);
	dp_hash_key.k1 ^= 1;
	assert_true(dp_hash2(42, 7) != h1);
	dp_hash_key = old;
}

/* A name's home is its case-folded wire form's SipHash: the steering program
 * computes the same, so it is pinned to the one-call form here. */
static void test_home_hash_folds_case(void **state)
{
	(void)state;
	dp_sipkey_t old = dp_hash_key;
	dp_hash_key = (dp_sipkey_t){ 0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull };
	const uint8_t upper[] = "\3WwW\7ExAmPlE\3COM";
	const uint8_t lower[] = "\3www\7example\3com";
	size_t n = sizeof(lower); /* the root's zero octet included */
	assert_true(dp_home_hash(upper, n) == dp_home_hash(lower, n));
	assert_true(dp_home_hash(lower, n) == dp_siphash(&dp_hash_key, lower, n));
	const uint8_t other[] = "\3www\7example\3net";
	assert_true(dp_home_hash(other, n) != dp_home_hash(lower, n));
	uint32_t seen[8] = { 0 };
	for (uint64_t h = 0; h < 4096; h++)
		seen[dp_home_shard(dp_hash2(h, 0), 8)]++;
	for (int i = 0; i < 8; i++)
		assert_true(seen[i] > 400 && seen[i] < 640);
	assert_int_equal(dp_home_shard(UINT64_MAX, 3), 2);
	assert_int_equal(dp_home_shard(0, 3), 0);
	dp_hash_key = old;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_paper_vectors),
		cmocka_unit_test(test_streaming_matches),
		cmocka_unit_test(test_key_changes_hash),
		cmocka_unit_test(test_home_hash_folds_case),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
