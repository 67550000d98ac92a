/* test_ratelimit.c - per-client token buckets (--rate-limit QPS).
 *
 * The clock is a parameter of dp_rl_check(), so every test drives time by
 * hand: no sleeping, exact counts.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"
#include "siphash.h"

#define ENTRIES (1u << 16) /* what engine.c uses */

static const struct sockaddr *sa_port(const char *a, uint16_t port)
{
	static struct sockaddr_storage ss[8];
	static int next;
	struct sockaddr_storage *s = &ss[next++ % 8];
	memset(s, 0, sizeof(*s));
	struct sockaddr_in *s4 = (struct sockaddr_in *)s;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)s;
	if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
	} else {
		assert_int_equal(inet_pton(AF_INET6, a, &s6->sin6_addr), 1);
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
	}
	return (const struct sockaddr *)s;
}

static const struct sockaddr *sa(const char *a)
{
	return sa_port(a, 5353);
}

static int check(dp_ratelimit_t *rl, const char *a, uint64_t now)
{
	return dp_rl_check(rl, sa(a), now);
}

/* n queries at now: how many passed, slipped, dropped. */
typedef struct tally {
	int pass, slip, drop;
} tally_t;

static tally_t burst(dp_ratelimit_t *rl, const char *a, uint64_t now, int n)
{
	tally_t t = { 0, 0, 0 };
	for (int i = 0; i < n; i++) {
		int r = check(rl, a, now);
		if (r == DP_RL_PASS)
			t.pass++;
		else if (r == DP_RL_SLIP)
			t.slip++;
		else if (r == DP_RL_DROP)
			t.drop++;
		else
			fail_msg("dp_rl_check returned %d", r);
	}
	return t;
}

static void off_passes_everything(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 0, 0), 0);
	assert_null(rl.b); /* nothing allocated when off */
	tally_t t = burst(&rl, "192.0.2.1", 1000, 100000);
	assert_int_equal(t.pass, 100000);
	dp_rl_free(&rl);
	dp_rl_free(&rl); /* twice is harmless */
}

static void burst_then_slip_drop_alternate(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 10), 0);
	for (int i = 0; i < 10; i++)
		assert_int_equal(check(&rl, "192.0.2.1", 5000), DP_RL_PASS);
	/* Over the limit: the first one slips (TC=1), then drop and slip
	 * alternate, so half of the excess is answered (and sent to TCP). */
	for (int i = 0; i < 20; i++)
		assert_int_equal(check(&rl, "192.0.2.1", 5000), (i % 2 == 0) ? DP_RL_SLIP : DP_RL_DROP);
	dp_rl_free(&rl);
}

static void burst_defaults_to_rate(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 50, 0), 0);
	assert_int_equal(rl.burst, 50);
	tally_t t = burst(&rl, "192.0.2.1", 1, 300);
	assert_int_equal(t.pass, 50);
	assert_int_equal(t.slip, 125);
	assert_int_equal(t.drop, 125);
	dp_rl_free(&rl);

	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 3), 0);
	t = burst(&rl, "192.0.2.1", 1, 10);
	assert_int_equal(t.pass, 3);
	dp_rl_free(&rl);
}

static void refill_over_time(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 10), 0); /* one token per 100 ms */
	uint64_t t0 = 100000;
	assert_int_equal(burst(&rl, "192.0.2.1", t0, 10).pass, 10);
	assert_int_not_equal(check(&rl, "192.0.2.1", t0), DP_RL_PASS);
	/* 99 ms: not yet a whole token. */
	assert_int_not_equal(check(&rl, "192.0.2.1", t0 + 99), DP_RL_PASS);
	/* 100 ms: one (the 99 already accrued count). */
	assert_int_equal(check(&rl, "192.0.2.1", t0 + 100), DP_RL_PASS);
	assert_int_not_equal(check(&rl, "192.0.2.1", t0 + 100), DP_RL_PASS);
	/* Fractions accumulate across checks: 50 + 50 ms make one token. */
	assert_int_not_equal(check(&rl, "192.0.2.1", t0 + 150), DP_RL_PASS);
	assert_int_equal(check(&rl, "192.0.2.1", t0 + 200), DP_RL_PASS);
	/* A steady 10/s client is never limited. */
	for (uint64_t t = t0 + 300; t < t0 + 60000; t += 100)
		assert_int_equal(check(&rl, "192.0.2.1", t), DP_RL_PASS);
	/* A clock that goes backwards refills nothing and breaks nothing. */
	assert_int_not_equal(check(&rl, "192.0.2.1", t0), DP_RL_PASS);
	dp_rl_free(&rl);
}

static void refill_capped_at_burst(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 10), 0);
	assert_int_equal(burst(&rl, "192.0.2.1", 1000, 10).pass, 10);
	/* An hour idle earns a full bucket, not 36,000 queries. */
	tally_t t = burst(&rl, "192.0.2.1", 1000 + 3600 * 1000, 100);
	assert_int_equal(t.pass, 10);
	/* A large rate does not overflow the bucket arithmetic. */
	dp_rl_free(&rl);
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 1000000, 0), 0);
	t = burst(&rl, "192.0.2.1", 1, 1000000);
	assert_int_equal(t.pass, 1000000);
	assert_int_not_equal(check(&rl, "192.0.2.1", 1), DP_RL_PASS);
	t = burst(&rl, "192.0.2.1", 1 + 86400000ull * 30, 1000001);
	assert_int_equal(t.pass, 1000000);
	dp_rl_free(&rl);
}

static void clock_zero_is_fine(void **state)
{
	/* last_ms == 0 marks an unused bucket: a check at time 0 must not
	 * hand out a fresh allowance on every call. */
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 5, 5), 0);
	tally_t t = burst(&rl, "192.0.2.1", 0, 50);
	assert_int_equal(t.pass, 5);
	dp_rl_free(&rl);
}

static void clients_independent(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 5, 5), 0);
	/* Exhaust one client. */
	assert_int_equal(burst(&rl, "192.0.2.1", 1000, 20).pass, 5);
	/* Its neighbours, in the same /24 and far away, are untouched. */
	static const char *const others[] = { "192.0.2.2", "192.0.3.1", "198.51.100.1",
					      "10.0.0.1", "2001:db8::1", "2001:db8:1::1" };
	for (size_t i = 0; i < DP_ARRAY_LEN(others); i++) {
		tally_t t = burst(&rl, others[i], 1000, 5);
		if (t.pass != 5)
			fail_msg("%s limited by another client's traffic", others[i]);
	}
	/* And the first one is still limited. */
	assert_int_not_equal(check(&rl, "192.0.2.1", 1000), DP_RL_PASS);
	dp_rl_free(&rl);
}

static void source_port_does_not_matter(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 5, 5), 0);
	int pass = 0;
	for (uint16_t p = 1024; p < 1124; p++)
		pass += dp_rl_check(&rl, sa_port("192.0.2.9", p), 1000) == DP_RL_PASS;
	assert_int_equal(pass, 5);
	pass = 0;
	for (uint16_t p = 1024; p < 1124; p++)
		pass += dp_rl_check(&rl, sa_port("2001:db8::9", p), 1000) == DP_RL_PASS;
	assert_int_equal(pass, 5);
	dp_rl_free(&rl);
}

static void ipv6_aggregated_per_64(void **state)
{
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 5, 5), 0);
	/* Five addresses of one /64 share one allowance... */
	static const char *const same64[] = { "2001:db8:1:2::1", "2001:db8:1:2::2",
					      "2001:db8:1:2:ffff:ffff:ffff:ffff",
					      "2001:db8:1:2:1234::", "2001:db8:1:2::abcd" };
	for (size_t i = 0; i < DP_ARRAY_LEN(same64); i++)
		assert_int_equal(check(&rl, same64[i], 1000), DP_RL_PASS);
	for (size_t i = 0; i < DP_ARRAY_LEN(same64); i++)
		assert_int_not_equal(check(&rl, same64[i], 1000), DP_RL_PASS);
	/* ...the next /64 (and the one differing in its first octet) do not. */
	assert_int_equal(burst(&rl, "2001:db8:1:3::1", 1000, 5).pass, 5);
	assert_int_equal(burst(&rl, "2001:db8:1:1::1", 1000, 5).pass, 5);
	assert_int_equal(burst(&rl, "3001:db8:1:2::1", 1000, 5).pass, 5);
	/* IPv4 stays per address: two hosts of one /24 are separate. */
	assert_int_equal(burst(&rl, "203.0.113.1", 1000, 5).pass, 5);
	assert_int_equal(burst(&rl, "203.0.113.2", 1000, 5).pass, 5);
	dp_rl_free(&rl);
}

static void many_clients_bounded_memory(void **state)
{
	/* The table is fixed: a million distinct sources reuse its buckets
	 * (a newcomer takes a bucket over) and nothing grows. */
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, 1024, 2, 2), 0);
	dp_rl_bucket_t *before = rl.b;
	struct sockaddr_in s4;
	memset(&s4, 0, sizeof(s4));
	s4.sin_family = AF_INET;
	for (uint32_t i = 0; i < 1000000; i++) {
		s4.sin_addr.s_addr = htonl(0x0a000000u + i);
		(void)dp_rl_check(&rl, (const struct sockaddr *)&s4, 1000 + i / 1000);
	}
	assert_ptr_equal(rl.b, before);
	assert_int_equal(rl.mask, 1023);
	dp_rl_free(&rl);
	assert_null(rl.b);
}

/* Regression: IPv4 keys and IPv6 /64 keys once shared one key space (a
 * tag in the top octet of a native-endian u64), so the /64 2001:abcd:0:20::
 * drained the allowance of IPv4 host 32.1.171.205 on little-endian hosts.
 * Buckets now carry the address family. */
static void ipv6_64_and_ipv4_never_share_a_bucket(void **state)
{
	(void)state;
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 5, 5), 0);
	assert_int_equal(burst(&rl, "2001:abcd:0:20::1", 1000, 5).pass, 5);
	tally_t t = burst(&rl, "32.1.171.205", 1000, 5);
	dp_rl_free(&rl);
	assert_int_equal(t.pass, 5);
}

/* ---- issue 12, hole 5 ------------------------------------------------------ */

static const struct sockaddr *sa4(uint32_t host_order)
{
	static struct sockaddr_in s4[4];
	static int next;
	struct sockaddr_in *s = &s4[next++ % 4];
	memset(s, 0, sizeof(*s));
	s->sin_family = AF_INET;
	s->sin_addr.s_addr = htonl(host_order);
	s->sin_port = htons(5353);
	return (const struct sockaddr *)s;
}

/* The bucket f108c5a's table (direct-mapped, unkeyed) gave an IPv4
 * address: anyone could compute it. */
static uint32_t old_bucket(uint32_t host_order, uint32_t entries)
{
	uint64_t key = htonl(host_order);
	uint64_t h = (key ^ ((uint64_t)AF_INET << 56)) * 0x9E3779B97F4A7C15ull;
	return (uint32_t)(h >> 32) & (entries - 1);
}

/* n addresses (host order) from base on that share the set of first,
 * under the current process key. */
static void same_set(dp_ratelimit_t *rl, uint32_t first, uint32_t base, uint32_t *out, int n)
{
	uint32_t want = dp_rl_set(rl, sa4(first));
	int got = 0;
	for (uint32_t a = base; got < n && a < base + (64u << 20); a++)
		if (a != first && dp_rl_set(rl, sa4(a)) == want)
			out[got++] = a;
	assert_int_equal(got, n);
}

/* Alternating a victim's address with one that collides with it: the old
 * table handed the newcomer the bucket with a full allowance on every
 * switch, so neither address was ever limited. Now each keeps its own
 * bucket (and, past the set's ways, a newcomer inherits an allowance that
 * is as drained as the one it replaces). */
static void test_hole5_takeover_does_not_refill(void **state)
{
	(void)state;
	dp_sipkey_t saved = dp_hash_key;
	dp_hash_key = (dp_sipkey_t){ 0x243f6a8885a308d3ull, 0x13198a2e03707344ull };
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 10), 0);
	const uint32_t victim = 0xc0000201; /* 192.0.2.1 */

	/* 1. An address colliding under the old unkeyed hash. */
	uint32_t coll = 0;
	for (uint32_t a = 0x0a000000; a < 0x0b000000 && !coll; a++)
		if (old_bucket(a, ENTRIES) == old_bucket(victim, ENTRIES))
			coll = a;
	assert_int_not_equal(coll, 0);
	int vpass = 0, cpass = 0;
	for (int i = 0; i < 200; i++) {
		vpass += dp_rl_check(&rl, sa4(victim), 5000 + (uint64_t)i) == DP_RL_PASS;
		cpass += dp_rl_check(&rl, sa4(coll), 5000 + (uint64_t)i) == DP_RL_PASS;
	}
	/* 200 ms at 10/s: the burst of 10 and 2 refilled, not 200 */
	if (vpass > 12 || cpass > 12)
		fail_msg("alternating with a colliding address: victim passed %d of 200, "
			 "the other %d (limit 10 + 2)", vpass, cpass);
	dp_rl_free(&rl);

	/* 2. Twice as many addresses as a set has ways, all in the victim's
	 * set (found here with the key, which a client does not have),
	 * taking its buckets over in turn for 10 s at a query per address
	 * per 10 ms: the set never hands out more than its buckets hold
	 * and refill, i.e. the attacker gains nothing by cycling. */
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 10), 0);
	uint32_t addrs[2 * DP_RL_WAYS];
	same_set(&rl, victim, 0x0a000000, addrs, 2 * DP_RL_WAYS);
	int pass = 0;
	uint64_t t0 = 100000, t = t0;
	for (int round = 0; round < 1000; round++, t += 10)
		for (int k = 0; k < 2 * DP_RL_WAYS; k++)
			pass += dp_rl_check(&rl, sa4(addrs[k]), t) == DP_RL_PASS;
	int limit = DP_RL_WAYS * (10 + (int)((t - t0) * 10 / 1000));
	if (pass > limit)
		fail_msg("cycling %d addresses of one set: %d passed in %llu ms, the set holds "
			 "at most %d", 2 * DP_RL_WAYS, pass, (unsigned long long)(t - t0), limit);
	print_message("cycling %d addresses of one set for %llu ms: %d passed (set holds %d)\n",
		      2 * DP_RL_WAYS, (unsigned long long)(t - t0), pass, limit);
	assert_true(pass >= limit / 2); /* and it does hand out what it holds */
	/* The victim itself, arriving in the busy set, starts drained (what
	 * one bucket refilled since the last round, at most one query). */
	assert_true(burst(&rl, "192.0.2.1", t, 10).pass <= 1);
	/* A set left alone for burst/rate seconds: a newcomer gets its full
	 * allowance at once (a legitimate new client is not held back). */
	t += 1000;
	assert_int_equal(burst(&rl, "192.0.2.1", t, 10).pass, 10);
	dp_rl_free(&rl);
	dp_hash_key = saved;
}

/* The set of an address depends on the process key: what collides in one
 * process does not in another, and nothing can be computed from outside. */
static void test_hole5_hash_is_keyed(void **state)
{
	(void)state;
	dp_sipkey_t saved = dp_hash_key;
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init(&rl, ENTRIES, 10, 10), 0);
	enum { N = 2000 };
	static uint32_t set1[N];
	dp_hash_key = (dp_sipkey_t){ 0x0123456789abcdefull, 0xfedcba9876543210ull };
	for (uint32_t i = 0; i < N; i++)
		set1[i] = dp_rl_set(&rl, sa4(0xc0a80000 + i));
	uint32_t together[DP_RL_WAYS + 1];
	together[0] = 0xc0a80001;
	same_set(&rl, together[0], 0x0a000000, together + 1, DP_RL_WAYS);

	dp_hash_key = (dp_sipkey_t){ 0x0123456789abcdefull, 0xfedcba9876543211ull };
	int same = 0, as_old = 0;
	for (uint32_t i = 0; i < N; i++) {
		uint32_t s2 = dp_rl_set(&rl, sa4(0xc0a80000 + i));
		same += s2 == set1[i];
		as_old += s2 == old_bucket(0xc0a80000 + i, ENTRIES) / DP_RL_WAYS;
	}
	/* 16384 sets: a handful of coincidences at most */
	if (same > 10 || as_old > 10)
		fail_msg("%d of %d addresses in the same set under two keys, %d where the "
			 "unkeyed hash puts them", same, N, as_old);
	/* Addresses that shared a set under the first key are spread out. */
	int with_first = 0;
	for (int k = 1; k <= DP_RL_WAYS; k++)
		with_first += dp_rl_set(&rl, sa4(together[k])) == dp_rl_set(&rl, sa4(together[0]));
	assert_true(with_first <= 1);
	/* The key is drawn at random: two draws differ. */
	dp_sipkey_t k1, k2;
	assert_int_equal(dp_hash_key_init(), 0);
	k1 = dp_hash_key;
	assert_int_equal(dp_hash_key_init(), 0);
	k2 = dp_hash_key;
	assert_false(k1.k0 == k2.k0 && k1.k1 == k2.k1);
	dp_rl_free(&rl);
	dp_hash_key = saved;
}

/* One table for every shard: threads charging the same client at the same
 * moment never hand out more than the bucket holds (each charge is one
 * compare-and-swap of the bucket's arrival time). */
typedef struct {
	dp_ratelimit_t *rl;
	uint16_t port;
	int pass;
} charger_t;

static void *charger(void *arg)
{
	charger_t *c = arg;
	struct sockaddr_in a; /* sa_port's buffers are not for threads */
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.9", &a.sin_addr);
	for (int i = 0; i < 100000; i++) {
		a.sin_port = htons((uint16_t)(c->port + i));
		c->pass += dp_rl_check(c->rl, (const struct sockaddr *)&a, 7000) == DP_RL_PASS;
	}
	return NULL;
}

static void test_shared_table_threads_share_one_allowance(void **state)
{
	(void)state;
	dp_ratelimit_t rl;
	assert_int_equal(dp_rl_init_shared(&rl, ENTRIES), 0);
	tally_t off = burst(&rl, "192.0.2.9", 5000, 100);
	assert_int_equal(off.pass, 100); /* rate 0 until set */
	dp_rl_set_rate(&rl, 1000, 1000);
	charger_t c[4];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		c[i] = (charger_t){ &rl, (uint16_t)(1000 + i * 10000), 0 };
		assert_int_equal(pthread_create(&t[i], NULL, charger, &c[i]), 0);
	}
	int pass = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		pass += c[i].pass;
	}
	/* the burst, once, across the four threads */
	assert_int_equal(pass, 1000);
	/* a reload turns it off and on again */
	dp_rl_set_rate(&rl, 0, 0);
	assert_int_equal(burst(&rl, "192.0.2.9", 7000, 10).pass, 10);
	dp_rl_free(&rl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(off_passes_everything),
		cmocka_unit_test(burst_then_slip_drop_alternate),
		cmocka_unit_test(burst_defaults_to_rate),
		cmocka_unit_test(refill_over_time),
		cmocka_unit_test(refill_capped_at_burst),
		cmocka_unit_test(clock_zero_is_fine),
		cmocka_unit_test(clients_independent),
		cmocka_unit_test(source_port_does_not_matter),
		cmocka_unit_test(ipv6_aggregated_per_64),
		cmocka_unit_test(many_clients_bounded_memory),
		cmocka_unit_test(ipv6_64_and_ipv4_never_share_a_bucket),
		cmocka_unit_test(test_hole5_takeover_does_not_refill),
		cmocka_unit_test(test_hole5_hash_is_keyed),
		cmocka_unit_test(test_shared_table_threads_share_one_allowance),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
