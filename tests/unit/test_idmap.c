/* test_idmap.c - the per-connection query-ID map: unique, bounded, random. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "idmap.h"

static void take_get_release(void **state)
{
	dp_idmap_t m;
	assert_int_equal(dp_idmap_init(&m, 42), 0);
	int a = dp_idmap_take(&m, 7);
	int b = dp_idmap_take(&m, 8);
	assert_in_range(a, 0, 65535);
	assert_in_range(b, 0, 65535);
	assert_int_not_equal(a, b);
	assert_int_equal(m.count, 2);
	assert_int_equal(dp_idmap_get(&m, (uint16_t)a), 7);
	assert_int_equal(dp_idmap_get(&m, (uint16_t)b), 8);

	dp_idmap_release(&m, (uint16_t)a);
	assert_int_equal(dp_idmap_get(&m, (uint16_t)a), DP_IDMAP_NONE);
	assert_int_equal(dp_idmap_get(&m, (uint16_t)b), 8);
	assert_int_equal(m.count, 1);
	/* Releasing a free ID changes nothing. */
	dp_idmap_release(&m, (uint16_t)a);
	assert_int_equal(m.count, 1);
	dp_idmap_release(&m, (uint16_t)(a ^ b ^ 0x5555));
	assert_int_equal(dp_idmap_get(&m, (uint16_t)b), 8);

	/* Value 0 is a value like any other. */
	int c = dp_idmap_take(&m, 0);
	assert_true(c >= 0);
	assert_int_equal(dp_idmap_get(&m, (uint16_t)c), 0);
	dp_idmap_destroy(&m);
	assert_null(m.val);
}

static void fresh_map_is_empty(void **state)
{
	dp_idmap_t m;
	assert_int_equal(dp_idmap_init(&m, 1), 0);
	for (uint32_t id = 0; id < 65536; id++)
		assert_int_equal(dp_idmap_get(&m, (uint16_t)id), DP_IDMAP_NONE);
	dp_idmap_destroy(&m);
}

static void full_and_unique(void **state)
{
	dp_idmap_t m;
	static uint8_t seen[65536];
	memset(seen, 0, sizeof(seen));
	assert_int_equal(dp_idmap_init(&m, 12345), 0);
	for (uint32_t i = 0; i < DP_IDMAP_MAX; i++) {
		int id = dp_idmap_take(&m, i);
		assert_in_range(id, 0, 65535);
		assert_int_equal(seen[id], 0);
		seen[id] = 1;
	}
	assert_int_equal(m.count, DP_IDMAP_MAX);
	assert_int_equal(dp_idmap_take(&m, 1), DP_E_FULL);
	assert_int_equal(dp_idmap_take(&m, 1), DP_E_FULL);

	/* Every stored value is found under its ID. */
	uint32_t found = 0;
	for (uint32_t id = 0; id < 65536; id++) {
		uint32_t v = dp_idmap_get(&m, (uint16_t)id);
		if (seen[id]) {
			assert_true(v < DP_IDMAP_MAX);
			found++;
		} else {
			assert_int_equal(v, DP_IDMAP_NONE);
		}
	}
	assert_int_equal(found, DP_IDMAP_MAX);

	/* One released, one more fits, then full again; the new ID is free. */
	uint16_t freed = 0;
	while (!seen[freed])
		freed++;
	dp_idmap_release(&m, freed);
	seen[freed] = 0;
	int id = dp_idmap_take(&m, 99);
	assert_true(id >= 0);
	assert_int_equal(seen[id], 0);
	assert_int_equal(dp_idmap_take(&m, 100), DP_E_FULL);
	dp_idmap_destroy(&m);
}

static void ids_look_random(void **state)
{
	enum { N = 2000 };
	dp_idmap_t m;
	static int ids[N];
	assert_int_equal(dp_idmap_init(&m, 0xdeadbeef), 0);
	unsigned or_bits = 0, and_bits = 0xffff, low_half = 0, steps = 0, even = 0;
	for (int i = 0; i < N; i++) {
		ids[i] = dp_idmap_take(&m, (uint32_t)i);
		assert_true(ids[i] >= 0);
		or_bits |= (unsigned)ids[i];
		and_bits &= (unsigned)ids[i];
		low_half += ids[i] < 32768;
		even += (ids[i] & 1) == 0;
		if (i > 0 && (unsigned)(ids[i] - ids[i - 1]) <= 2)
			steps++;
	}
	/* Every bit varies; halves and parity are balanced (binomial, N=2000:
	 * sd about 22, the bounds are over 9 sd away); no counting up. */
	assert_int_equal(or_bits, 0xffff);
	assert_int_equal(and_bits, 0);
	assert_in_range(low_half, 800, 1200);
	assert_in_range(even, 800, 1200);
	assert_true(steps < 10);
	dp_idmap_destroy(&m);

	/* Another seed, another sequence. */
	dp_idmap_t m2;
	assert_int_equal(dp_idmap_init(&m2, 0xdeadbef0), 0);
	int same = 0;
	for (int i = 0; i < 100; i++)
		same += dp_idmap_take(&m2, 0) == ids[i];
	assert_true(same < 5);
	dp_idmap_destroy(&m2);
}

static void seed_zero_works(void **state)
{
	/* xorshift never leaves an all-zero state: seed 0 must be replaced. */
	dp_idmap_t m;
	assert_int_equal(dp_idmap_init(&m, 0), 0);
	unsigned or_bits = 0;
	for (int i = 0; i < 1000; i++) {
		int id = dp_idmap_take(&m, 1);
		assert_true(id >= 0);
		or_bits |= (unsigned)id;
	}
	assert_int_equal(m.count, 1000);
	assert_int_equal(or_bits, 0xffff);
	dp_idmap_destroy(&m);
}

static void destroy_zeroed(void **state)
{
	dp_idmap_t m;
	memset(&m, 0, sizeof(m));
	dp_idmap_destroy(&m);
	assert_null(m.val);
	assert_int_equal(dp_idmap_init(&m, 3), 0);
	dp_idmap_destroy(&m);
	dp_idmap_destroy(&m); /* twice is fine */
	assert_null(m.val);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(take_get_release),
		cmocka_unit_test(fresh_map_is_empty),
		cmocka_unit_test(full_and_unique),
		cmocka_unit_test(ids_look_random),
		cmocka_unit_test(seed_zero_works),
		cmocka_unit_test(destroy_zeroed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
