/* test_stats.c - one aggregation of the per-shard values for every reader
 * (stats.h): counters and gauges add up over shards, peaks take the
 * highest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stats.h"

static void sums_and_peaks(void **state)
{
	(void)state;
	dp_stats_t a, b, acc;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	memset(&acc, 0, sizeof(acc));
	a.udp_queries = 10;
	b.udp_queries = 32;
	a.tcp_open = 3;
	b.tcp_open = 4;
	a.cache_bytes = 1000;
	b.cache_bytes = 24;
	a.max_write_batch = 19;
	b.max_write_batch = 12;
	dp_stats_add(&acc, &a);
	dp_stats_add(&acc, &b);
	assert_int_equal(acc.udp_queries, 42); /* counter: sum */
	assert_int_equal(acc.tcp_open, 7); /* gauge: sum */
	assert_int_equal(acc.cache_bytes, 1024);
	assert_int_equal(acc.max_write_batch, 19); /* peak: the highest shard */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sums_and_peaks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
