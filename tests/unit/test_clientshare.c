/* test_clientshare.c - fair share of the query table per client address.
 *
 * The module sees query indices only, so the tests play the query table:
 * they hand out indices, count them for an address, and free them.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clientshare.h"
#include "siphash.h"

static dp_cshare_key_t key(const char *a)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
	} else {
		assert_int_equal(inet_pton(AF_INET6, a, &s6->sin6_addr), 1);
		s6->sin6_family = AF_INET6;
	}
	dp_cshare_key_t k;
	dp_cshare_key_of((const struct sockaddr *)&ss, &k);
	return k;
}

static int setup(void **state)
{
	assert_int_equal(dp_hash_key_init(), 0);
	return 0;
}

static void keys_by_address_and_64(void **state)
{
	dp_cshare_key_t a = key("127.0.0.2"), b = key("::ffff:127.0.0.2"), c = key("127.0.0.3");
	assert_memory_equal(&a, &b, sizeof(a)); /* IPv4-mapped is the IPv4 client */
	assert_memory_not_equal(&a, &c, sizeof(a));
	dp_cshare_key_t d = key("2001:db8:1:2::1"), e = key("2001:db8:1:2:ffff::9"),
			f = key("2001:db8:1:3::1");
	assert_memory_equal(&d, &e, sizeof(d)); /* one /64 */
	assert_memory_not_equal(&d, &f, sizeof(d));
	/* An IPv6 /64 whose first octets look like an IPv4 address is not it. */
	dp_cshare_key_t g = key("7f00:2::");
	assert_memory_not_equal(&a, &g, sizeof(a));
}

static void counts_follow_add_and_del(void **state)
{
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, 64), 0);
	dp_cshare_key_t a = key("127.0.0.2"), b = key("127.0.0.3");
	dp_cshare_add(&cs, &a, 0);
	dp_cshare_add(&cs, &a, 1);
	dp_cshare_add(&cs, &b, 2);
	assert_int_equal(dp_cshare_count(&cs, &a), 2);
	assert_int_equal(dp_cshare_count(&cs, &b), 1);
	assert_int_equal(cs.active, 2);
	assert_int_equal(cs.maxc, 2);
	dp_cshare_del(&cs, 0);
	assert_int_equal(cs.maxc, 1);
	dp_cshare_del(&cs, 0); /* not counted any more: nothing */
	dp_cshare_del(&cs, 5); /* never counted: nothing */
	assert_int_equal(dp_cshare_count(&cs, &a), 1);
	dp_cshare_del(&cs, 1);
	dp_cshare_del(&cs, 2);
	assert_int_equal(dp_cshare_count(&cs, &a), 0);
	assert_int_equal(cs.active, 0);
	assert_int_equal(cs.maxc, 0);
	assert_int_equal(dp_cshare_victim(&cs), DP_NONE);
	dp_cshare_free(&cs);
	dp_cshare_free(&cs); /* twice is fine */
}

static void victim_is_oldest_of_largest(void **state)
{
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, 64), 0);
	dp_cshare_key_t a = key("127.0.0.2"), b = key("127.0.0.3");
	dp_cshare_add(&cs, &b, 9);
	dp_cshare_add(&cs, &a, 4);
	dp_cshare_add(&cs, &a, 7);
	dp_cshare_add(&cs, &a, 3);
	assert_int_equal(dp_cshare_victim(&cs), 4);
	assert_int_equal(dp_cshare_next(&cs, 4), 7);
	assert_int_equal(dp_cshare_next(&cs, 7), 3);
	assert_int_equal(dp_cshare_next(&cs, 3), DP_NONE);
	dp_cshare_del(&cs, 7); /* from the middle */
	assert_int_equal(dp_cshare_next(&cs, 4), 3);
	dp_cshare_del(&cs, 4);
	assert_int_equal(dp_cshare_victim(&cs), 3);
	/* b catches up and passes a */
	dp_cshare_add(&cs, &b, 11);
	dp_cshare_del(&cs, 3);
	assert_int_equal(dp_cshare_victim(&cs), 9);
	dp_cshare_free(&cs);
}

/* Fill a table of cap from address a alone: never refused before full. */
static void alone_uses_whole_table(void **state)
{
	enum { CAP = 64 };
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, CAP), 0);
	dp_cshare_key_t a = key("127.0.0.2");
	for (uint32_t i = 0; i < CAP; i++) {
		assert_int_equal(dp_cshare_admit(&cs, &a, i), DP_CSHARE_ADMIT);
		dp_cshare_add(&cs, &a, i);
	}
	/* Full and alone: nobody to take from. */
	assert_int_equal(dp_cshare_admit(&cs, &a, CAP), DP_CSHARE_REFUSE);
	dp_cshare_free(&cs);
}

static void contended_newcomer_reclaims_flooder_refused(void **state)
{
	enum { CAP = 64 };
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, CAP), 0);
	dp_cshare_key_t a = key("127.0.0.2"), b = key("127.0.0.3");
	for (uint32_t i = 0; i < CAP; i++)
		dp_cshare_add(&cs, &a, i);
	uint32_t used = CAP, next = 0; /* a's oldest */
	/* b gets its share (CAP / 2) by reclaiming a's oldest queries. */
	for (uint32_t i = 0; i < CAP / 2; i++) {
		assert_int_equal(dp_cshare_admit(&cs, &b, used), DP_CSHARE_RECLAIM);
		uint32_t v = dp_cshare_victim(&cs);
		assert_int_equal(v, next++);
		dp_cshare_del(&cs, v);
		dp_cshare_add(&cs, &b, v);
		/* a, over its share, gets no slot even when one frees up. */
		assert_int_equal(dp_cshare_admit(&cs, &a, used - 1), DP_CSHARE_REFUSE);
	}
	assert_int_equal(dp_cshare_count(&cs, &a), CAP / 2);
	assert_int_equal(dp_cshare_count(&cs, &b), CAP / 2);
	/* Both at their share: no one takes from the other. */
	assert_int_equal(dp_cshare_admit(&cs, &b, used), DP_CSHARE_REFUSE);
	assert_int_equal(dp_cshare_admit(&cs, &a, used), DP_CSHARE_REFUSE);
	/* A third address is under its share (CAP / 3) and takes from one of
	 * them, who keeps at least the new share. */
	dp_cshare_key_t c = key("127.0.0.4");
	assert_int_equal(dp_cshare_admit(&cs, &c, used), DP_CSHARE_RECLAIM);
	dp_cshare_free(&cs);
}

static void headroom_admits_under_share_without_reclaim(void **state)
{
	enum { CAP = 64 };
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, CAP), 0);
	dp_cshare_key_t a = key("127.0.0.2"), b = key("127.0.0.3");
	uint32_t used = CAP - CAP / 8; /* contended, not full */
	for (uint32_t i = 0; i < used; i++)
		dp_cshare_add(&cs, &a, i);
	assert_int_equal(dp_cshare_admit(&cs, &a, used), DP_CSHARE_ADMIT); /* still alone */
	assert_int_equal(dp_cshare_admit(&cs, &b, used), DP_CSHARE_ADMIT);
	dp_cshare_add(&cs, &b, used++);
	assert_int_equal(dp_cshare_admit(&cs, &a, used), DP_CSHARE_REFUSE);
	/* Below the headroom everyone is admitted. */
	assert_int_equal(dp_cshare_admit(&cs, &a, CAP - CAP / 8 - 1), DP_CSHARE_ADMIT);
	dp_cshare_free(&cs);
}

/* Slots without a client (prefetch) are not reclaimable: when no address
 * is over the share, a full table refuses. */
static void no_reclaim_below_share(void **state)
{
	enum { CAP = 64 };
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, CAP), 0);
	dp_cshare_key_t a = key("127.0.0.2"), b = key("127.0.0.3");
	for (uint32_t i = 0; i < CAP / 2; i++)
		dp_cshare_add(&cs, &a, i);
	/* the other half: queries without a client */
	assert_int_equal(dp_cshare_admit(&cs, &b, CAP), DP_CSHARE_REFUSE);
	dp_cshare_free(&cs);
}

/* Many addresses coming and going, checked against a plain model. */
static void churn_matches_model(void **state)
{
	enum { CAP = 512, ADDRS = 40, STEPS = 200000 };
	dp_cshare_t cs;
	assert_int_equal(dp_cshare_init(&cs, CAP), 0);
	static int owner[CAP]; /* -1 free, else address */
	static uint32_t model[ADDRS];
	dp_cshare_key_t k[ADDRS];
	for (int i = 0; i < ADDRS; i++) {
		char a[32];
		snprintf(a, sizeof(a), i % 2 ? "127.0.%d.1" : "2001:db8:%x::1", i);
		k[i] = key(a);
	}
	for (int i = 0; i < CAP; i++)
		owner[i] = -1;
	srand(12);
	for (int step = 0; step < STEPS; step++) {
		uint32_t qi = (uint32_t)rand() % CAP;
		if (owner[qi] < 0) {
			int a = rand() % (1 + rand() % ADDRS); /* skewed: low addresses busier */
			dp_cshare_add(&cs, &k[a], qi);
			owner[qi] = a;
			model[a]++;
		} else {
			model[owner[qi]]--;
			dp_cshare_del(&cs, qi);
			owner[qi] = -1;
		}
		if (step % 997)
			continue;
		uint32_t active = 0, maxc = 0;
		for (int a = 0; a < ADDRS; a++) {
			assert_int_equal(dp_cshare_count(&cs, &k[a]), model[a]);
			active += model[a] > 0;
			maxc = model[a] > maxc ? model[a] : maxc;
		}
		assert_int_equal(cs.active, active);
		assert_int_equal(cs.maxc, maxc);
		uint32_t v = dp_cshare_victim(&cs);
		if (maxc)
			assert_int_equal(model[owner[v]], maxc);
	}
	dp_cshare_free(&cs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(keys_by_address_and_64),
		cmocka_unit_test(counts_follow_add_and_del),
		cmocka_unit_test(victim_is_oldest_of_largest),
		cmocka_unit_test(alone_uses_whole_table),
		cmocka_unit_test(contended_newcomer_reclaims_flooder_refused),
		cmocka_unit_test(headroom_admits_under_share_without_reclaim),
		cmocka_unit_test(no_reclaim_below_share),
		cmocka_unit_test(churn_matches_model),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
