/* test_ratelimit.c - per-client token buckets (--rate-limit QPS).
 *
 * The clock is a parameter of dp_rl_check(), so every test drives time by
 * hand: no sleeping, exact counts.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"

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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
