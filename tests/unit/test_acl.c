/* test_acl.c - client access control by address prefix (--allow CIDR). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <cmocka.h>

#include "acl.h"

/* A sockaddr for text address a (IPv4 or IPv6), port 53. */
static const struct sockaddr *sa(const char *a)
{
	static struct sockaddr_storage ss[4];
	static int next;
	struct sockaddr_storage *s = &ss[next++ % 4];
	memset(s, 0, sizeof(*s));
	struct sockaddr_in *s4 = (struct sockaddr_in *)s;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)s;
	if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(53);
	} else {
		assert_int_equal(inet_pton(AF_INET6, a, &s6->sin6_addr), 1);
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(53);
	}
	return (const struct sockaddr *)s;
}

static bool allows(const dp_acl_t *a, const char *addr)
{
	return dp_acl_allows(a, sa(addr));
}

static void defaults_allow_private(void **state)
{
	dp_acl_t a;
	dp_acl_defaults(&a);
	static const char *const yes[] = {
		"127.0.0.1", "127.255.255.254", "10.1.2.3", "10.0.0.0", "10.255.255.255",
		"172.16.0.1", "172.31.255.255", "192.168.1.1", "192.168.255.255",
		"::1", "fd00::1", "fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(yes); i++) {
		if (!allows(&a, yes[i]))
			fail_msg("default ACL refuses %s", yes[i]);
	}
}

static void defaults_deny_public(void **state)
{
	dp_acl_t a;
	dp_acl_defaults(&a);
	static const char *const no[] = {
		"8.8.8.8", "1.1.1.1", "172.32.0.1", "172.15.255.255", "192.169.0.1",
		"11.0.0.1", "9.255.255.255", "128.0.0.1", "0.0.0.0", "255.255.255.255",
		"2001:db8::1", "::2", "::", "fe80::1", "fe00::1", "fbff::1",
		"::ffff:8.8.8.8", "64:ff9b::808:808",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(no); i++) {
		if (allows(&a, no[i]))
			fail_msg("default ACL allows %s", no[i]);
	}
}

static void ipv4_mapped_counts_as_ipv4(void **state)
{
	dp_acl_t a;
	dp_acl_defaults(&a);
	assert_true(allows(&a, "::ffff:127.0.0.1"));
	assert_true(allows(&a, "::ffff:10.1.2.3"));
	assert_true(allows(&a, "::ffff:192.168.1.1"));
	assert_false(allows(&a, "::ffff:8.8.8.8"));
	assert_false(allows(&a, "::ffff:172.32.0.1"));
	/* Only the ::ffff:0:0/96 form is mapped: IPv4-compatible ::a.b.c.d
	 * and the other prefixes are plain IPv6. */
	assert_false(allows(&a, "::127.0.0.1"));
	assert_false(allows(&a, "::fffe:127.0.0.1"));
	assert_false(allows(&a, "1::ffff:127.0.0.1"));

	/* An IPv4-only list still matches mapped clients; an IPv6-only list
	 * does not match IPv4 clients. */
	dp_acl_t b = { .n = 0 };
	assert_int_equal(dp_acl_add(&b, "203.0.113.0/24"), 0);
	assert_true(allows(&b, "::ffff:203.0.113.77"));
	assert_true(allows(&b, "203.0.113.77"));
	assert_false(allows(&b, "::ffff:203.0.114.1"));
	dp_acl_t c = { .n = 0 };
	assert_int_equal(dp_acl_add(&c, "2001:db8::/32"), 0);
	assert_false(allows(&c, "32.1.13.184")); /* 0x20010db8 */
	assert_true(allows(&c, "2001:db8:ffff::1"));
}

static void prefix_boundaries(void **state)
{
	dp_acl_t a = { .n = 0 };
	assert_int_equal(dp_acl_add(&a, "198.51.100.128/25"), 0);
	assert_true(allows(&a, "198.51.100.128"));
	assert_true(allows(&a, "198.51.100.255"));
	assert_false(allows(&a, "198.51.100.127"));
	assert_false(allows(&a, "198.51.101.128"));

	dp_acl_t b = { .n = 0 };
	assert_int_equal(dp_acl_add(&b, "2001:db8:0:8000::/49"), 0);
	assert_true(allows(&b, "2001:db8:0:8000::1"));
	assert_true(allows(&b, "2001:db8:0:ffff:ffff::"));
	assert_false(allows(&b, "2001:db8:0:7fff::1"));

	/* A bare address is a host route. */
	dp_acl_t h = { .n = 0 };
	assert_int_equal(dp_acl_add(&h, "192.0.2.7"), 0);
	assert_int_equal(dp_acl_add(&h, "2001:db8::7"), 0);
	assert_int_equal(h.e[0].prefix, 32);
	assert_int_equal(h.e[1].prefix, 128);
	assert_true(allows(&h, "192.0.2.7"));
	assert_false(allows(&h, "192.0.2.6"));
	assert_true(allows(&h, "2001:db8::7"));
	assert_false(allows(&h, "2001:db8::6"));

	/* /0 takes its whole family and nothing else. */
	dp_acl_t z = { .n = 0 };
	assert_int_equal(dp_acl_add(&z, "0.0.0.0/0"), 0);
	assert_true(allows(&z, "8.8.8.8"));
	assert_true(allows(&z, "::ffff:8.8.8.8"));
	assert_false(allows(&z, "2001:db8::1"));
	assert_int_equal(dp_acl_add(&z, "::/0"), 0);
	assert_true(allows(&z, "2001:db8::1"));
}

static void empty_list_denies(void **state)
{
	dp_acl_t a = { .n = 0 };
	assert_false(allows(&a, "127.0.0.1"));
	assert_false(allows(&a, "::1"));
}

static void other_families_denied(void **state)
{
	dp_acl_t a;
	dp_acl_defaults(&a);
	assert_int_equal(dp_acl_add(&a, "0.0.0.0/0"), 0);
	assert_int_equal(dp_acl_add(&a, "::/0"), 0);
	struct sockaddr_un un;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	assert_false(dp_acl_allows(&a, (const struct sockaddr *)&un));
	struct sockaddr_storage unspec;
	memset(&unspec, 0, sizeof(unspec));
	assert_false(dp_acl_allows(&a, (const struct sockaddr *)&unspec));
}

static void bad_cidrs_rejected(void **state)
{
	static const char *const bad[] = {
		"", "/", "/8", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/8x", "10.0.0.0/-1",
		"10.0.0.0/+8", "10.0.0.0/ 8", "10.0.0.0/33", "10.0.0.0/4294967304",
		"10.0.0.0/99999999999999999999999", "10.0.0", "10.0.0.0.0", "256.0.0.0/8",
		" 10.0.0.0/8", "10.0.0.0 /8", "localhost", "10.0.0.0/8/8",
		"::1/129", "2001:db8::/", "2001:db8:::/32", "fe80::1%lo/128", "::ffff:zz/96",
		/* host bits set */
		"10.0.0.1/8", "10.128.0.0/8", "192.168.1.1/24", "127.0.0.1/8", "1.2.3.4/0",
		"172.16.0.0/11", "2001:db8::1/64", "fd00::/7", "::1/127", "2001:db8:0:1::/63",
		/* longer than any address text */
		"1111:2222:3333:4444:5555:6666:7777:8888:9999/128",
		"00000000000000000000000000000000000000000000000000000000000000000/8",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		dp_acl_t a = { .n = 0 };
		if (dp_acl_add(&a, bad[i]) != DP_E_CONFIG)
			fail_msg("dp_acl_add accepted \"%s\"", bad[i]);
		assert_int_equal(a.n, 0);
	}
}

static void good_cidrs_accepted(void **state)
{
	static const char *const good[] = {
		"10.0.0.0/8", "10.0.0.0/08", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.1",
		"172.16.0.0/12", "fc00::/7", "::/0", "::1", "::1/128", "2001:db8::/32",
		"::ffff:10.0.0.0/104", "2001:DB8::/32", "10.0.0.0/0008",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(good); i++) {
		dp_acl_t a = { .n = 0 };
		if (dp_acl_add(&a, good[i]) != 0)
			fail_msg("dp_acl_add refused \"%s\"", good[i]);
		assert_int_equal(a.n, 1);
	}
}

static void list_is_bounded(void **state)
{
	dp_acl_t a = { .n = 0 };
	char buf[64];
	for (int i = 0; i < DP_ACL_MAX; i++) {
		snprintf(buf, sizeof(buf), "10.%d.0.0/16", i);
		assert_int_equal(dp_acl_add(&a, buf), 0);
	}
	assert_int_equal(a.n, DP_ACL_MAX);
	assert_int_equal(dp_acl_add(&a, "192.0.2.0/24"), DP_E_CONFIG);
	assert_int_equal(a.n, DP_ACL_MAX);
	assert_true(allows(&a, "10.63.1.1"));
	assert_false(allows(&a, "10.64.1.1"));
	assert_false(allows(&a, "192.0.2.1"));
}

static void defaults_replaced_not_merged(void **state)
{
	/* What --allow 10.0.0.0/8 does in config.c: the first --allow starts
	 * an empty list. Loopback is then refused. */
	dp_acl_t a = { .n = 0 };
	assert_int_equal(dp_acl_add(&a, "10.0.0.0/8"), 0);
	assert_false(allows(&a, "127.0.0.1"));
	assert_false(allows(&a, "::1"));
	assert_true(allows(&a, "10.9.8.7"));
	/* dp_acl_defaults resets whatever was there. */
	dp_acl_defaults(&a);
	assert_int_equal(a.n, 6);
	assert_true(allows(&a, "127.0.0.1"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults_allow_private),
		cmocka_unit_test(defaults_deny_public),
		cmocka_unit_test(ipv4_mapped_counts_as_ipv4),
		cmocka_unit_test(prefix_boundaries),
		cmocka_unit_test(empty_list_denies),
		cmocka_unit_test(other_families_denied),
		cmocka_unit_test(bad_cidrs_rejected),
		cmocka_unit_test(good_cidrs_accepted),
		cmocka_unit_test(list_is_bounded),
		cmocka_unit_test(defaults_replaced_not_merged),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
