/* test_xshard.c - the hand-off queues between shards: records in and out
 * in order, a full queue refuses without writing, wrap-around keeps records
 * whole, the room kept for answers, and two threads passing a million
 * messages through one queue.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "xshard.h"

#define CAP 4096

static dp_xmsg_t msg(uint32_t seq, uint8_t kind)
{
	dp_xmsg_t m;
	memset(&m, 0, sizeof(m));
	m.kind = kind;
	m.tcp_idx = seq;
	m.tcp_gen = ~seq;
	m.arrive_ns = (uint64_t)seq * 1000;
	m.origin = 3;
	m.li = 1;
	return m;
}

static void fill(uint8_t *d, size_t len, uint32_t seq)
{
	for (size_t i = 0; i < len; i++)
		d[i] = (uint8_t)(seq * 31 + i);
}

static void expect(dp_spsc_t *q, uint32_t seq, size_t len)
{
	dp_xmsg_t *m = dp_xs_peek(q);
	assert_non_null(m);
	assert_int_equal(m->tcp_idx, seq);
	assert_int_equal(m->tcp_gen, ~seq);
	assert_int_equal(m->len, len);
	assert_int_equal(m->origin, 3);
	uint8_t want[DP_XS_QUERY_MAX];
	fill(want, len, seq);
	assert_memory_equal(dp_xmsg_data(m), want, len);
	dp_xs_pop(q);
}

static void record_sizes(void **state)
{
	(void)state;
	/* header and data rounded up to 8, plus the size word */
	assert_int_equal(sizeof(dp_xmsg_t) % 8, 0);
	assert_int_equal(dp_xs_rec_size(0), 8 + sizeof(dp_xmsg_t));
	assert_int_equal(dp_xs_rec_size(1), 8 + sizeof(dp_xmsg_t) + 8);
	assert_int_equal(dp_xs_rec_size(8), 8 + sizeof(dp_xmsg_t) + 8);
	assert_int_equal(dp_xs_rec_size(9), 8 + sizeof(dp_xmsg_t) + 16);
	assert_true(DP_XS_SMALL_REC >= dp_xs_rec_size(DP_XS_SF_MAX));
	assert_true(DP_XS_SMALL_REC >= dp_xs_rec_size(sizeof(dp_xs_bigans_t)));
	/* the rings hold what the hand-off promises */
	assert_true(DP_XS_ANSWER_RING >=
		    DP_XS_ANSWER_KEEP + 2 * dp_xs_rec_size(DP_XS_ANSWER_INLINE));
	assert_true(DP_XS_QUERY_RING_MIN >= 2 * dp_xs_rec_size(DP_XS_QUERY_MAX));
	/* query rings shrink with the number of pairs, within bounds */
	assert_int_equal(dp_xshard_query_ring_size(2), DP_XS_QUERY_RING);
	assert_int_equal(dp_xshard_query_ring_size(8), DP_XS_QUERY_RING);
	assert_int_equal(dp_xshard_query_ring_size(16), 16u << 10);
	assert_int_equal(dp_xshard_query_ring_size(256), DP_XS_QUERY_RING_MIN);
	for (uint32_t n = 2; n <= 256; n++) {
		uint32_t c = dp_xshard_query_ring_size(n);
		assert_int_equal(c & (c - 1), 0);
		assert_true(c >= DP_XS_QUERY_RING_MIN && c <= DP_XS_QUERY_RING);
	}
}

static void fifo_and_empty(void **state)
{
	(void)state;
	uint8_t *buf = malloc(CAP);
	dp_spsc_t q;
	dp_spsc_init(&q, buf, CAP);
	assert_null(dp_xs_peek(&q));
	assert_true(dp_xs_empty(&q));
	uint8_t d[600];
	for (uint32_t i = 0; i < 5; i++) {
		dp_xmsg_t m = msg(i, DP_XMSG_UDP);
		fill(d, i * 100, i);
		assert_int_equal(dp_xs_push(&q, &m, d, i * 100, 0), 0);
	}
	assert_false(dp_xs_empty(&q));
	for (uint32_t i = 0; i < 5; i++)
		expect(&q, i, i * 100);
	assert_null(dp_xs_peek(&q));
	assert_true(dp_xs_empty(&q));
	assert_int_equal(dp_spsc_room(&q), CAP);
	free(buf);
}

static void full_queue_refuses_and_writes_nothing(void **state)
{
	(void)state;
	uint8_t *buf = malloc(CAP);
	dp_spsc_t q;
	dp_spsc_init(&q, buf, CAP);
	uint8_t d[200];
	size_t rec = dp_xs_rec_size(sizeof(d));
	uint32_t n = 0;
	for (;;) {
		dp_xmsg_t m = msg(n, DP_XMSG_TCP);
		fill(d, sizeof(d), n);
		if (dp_xs_push(&q, &m, d, sizeof(d), 0) < 0)
			break;
		n++;
	}
	assert_int_equal(n, CAP / rec);
	uint64_t tail = q.tail;
	dp_xmsg_t m = msg(999, DP_XMSG_TCP);
	assert_int_equal(dp_xs_push(&q, &m, d, sizeof(d), 0), -ENOSPC);
	assert_int_equal(q.tail, tail); /* nothing published */
	/* a smaller one that fits still goes */
	if (dp_spsc_room(&q) >= dp_xs_rec_size(0))
		assert_int_equal(dp_xs_push(&q, &m, NULL, 0, 0), 0);
	for (uint32_t i = 0; i < n; i++)
		expect(&q, i, sizeof(d));
	free(buf);
}

static void keep_leaves_room(void **state)
{
	(void)state;
	uint8_t *buf = malloc(CAP);
	dp_spsc_t q;
	dp_spsc_init(&q, buf, CAP);
	dp_xmsg_t m = msg(1, DP_XMSG_ANSWER);
	uint8_t d[1000];
	fill(d, sizeof(d), 1);
	size_t rec = dp_xs_rec_size(sizeof(d));
	/* refused when it would leave less than keep */
	assert_int_equal(dp_xs_push(&q, &m, d, sizeof(d), CAP - rec + 8), -ENOSPC);
	assert_int_equal(dp_xs_push(&q, &m, d, sizeof(d), CAP - rec), 0);
	assert_int_equal(dp_spsc_room(&q), CAP - rec);
	expect(&q, 1, sizeof(d));
	free(buf);
}

/* The answer queue's promise, in the model handoff.c runs: an origin has
 * at most `credit` TCP queries outstanding at the home (it sends a new one
 * only when an answer came back); the home answers those it holds in any
 * order, each with an answer pushed under keep = dp_xs_answer_keep(credit)
 * or, when that is refused, a SERVFAIL of at most DP_XS_SF_MAX octets,
 * which must always fit; the origin reads answers when it gets to it. */
static void test_hole_answer_room_servfail_always_fits(void **state)
{
	(void)state;
	const uint32_t cap = 16384, credit = 8;
	const size_t bigmax = 4000;
	assert_true(cap >= dp_xs_answer_keep(credit) + 2 * dp_xs_rec_size(bigmax));
	uint8_t *buf = malloc(cap);
	dp_spsc_t q;
	dp_spsc_init(&q, buf, cap);
	uint8_t big[4000], sf[DP_XS_SF_MAX];
	fill(big, sizeof(big), 7);
	fill(sf, sizeof(sf), 7);
	uint32_t seed = 12345, at_home = 0, outstanding = 0, refused = 0, answered = 0;
	for (int step = 0; step < 400000; step++) {
		seed = seed * 1103515245 + 12345;
		uint32_t r = (seed >> 8) % 3;
		if (r == 0 && outstanding < credit) {
			outstanding++; /* origin hands over a query */
			at_home++;
		} else if (r == 1 && at_home) {
			at_home--; /* home answers one */
			dp_xmsg_t m = msg(step, DP_XMSG_ANSWER);
			size_t len = (seed >> 12) % (bigmax + 1);
			if (dp_xs_push(&q, &m, big, len, dp_xs_answer_keep(credit)) < 0) {
				refused++;
				assert_int_equal(dp_xs_push(&q, &m, sf, (seed >> 4) % (DP_XS_SF_MAX + 1), 0),
						 0);
			}
		} else if (r == 2 && (seed >> 20) % 4 == 0 && dp_xs_peek(&q)) {
			dp_xs_pop(&q); /* origin takes an answer */
			outstanding--;
			answered++;
		}
	}
	print_message("%u answers, %u of them replaced by a SERVFAIL\n", answered, refused);
	assert_true(refused > 0); /* the rule was exercised */
	free(buf);
}

static void wrap_around_keeps_records_whole(void **state)
{
	(void)state;
	uint8_t *buf = malloc(CAP);
	dp_spsc_t q;
	dp_spsc_init(&q, buf, CAP);
	uint8_t d[DP_XS_QUERY_MAX];
	uint32_t in = 0, out = 0;
	/* sizes that do not divide the ring: every lap ends in a skip */
	for (int lap = 0; lap < 200; lap++) {
		for (;;) {
			size_t len = (in * 37) % 700;
			dp_xmsg_t m = msg(in, DP_XMSG_UDP);
			fill(d, len, in);
			if (dp_xs_push(&q, &m, d, len, 0) < 0)
				break;
			in++;
		}
		/* take half, so head and tail move around the ring */
		uint32_t take = (in - out + 1) / 2;
		for (uint32_t i = 0; i < take; i++, out++)
			expect(&q, out, (out * 37) % 700);
	}
	while (out < in) {
		expect(&q, out, (out * 37) % 700);
		out++;
	}
	assert_null(dp_xs_peek(&q));
	assert_true(q.head > 50u * CAP); /* went round many times */
	/* a record of half the ring fits whatever the position */
	for (int i = 0; i < 100; i++) {
		size_t len = CAP / 2 - dp_xs_rec_size(0);
		dp_xmsg_t m = msg(i, DP_XMSG_UDP);
		fill(d, len, (uint32_t)i);
		assert_int_equal(dp_xs_push(&q, &m, d, len, 0), 0);
		expect(&q, (uint32_t)i, len);
		dp_xmsg_t s = msg(i, DP_XMSG_UDP);
		fill(d, (size_t)i * 8 + 1, (uint32_t)i);
		assert_int_equal(dp_xs_push(&q, &s, d, (size_t)i * 8 + 1, 0), 0);
		expect(&q, (uint32_t)i, (size_t)i * 8 + 1);
	}
	free(buf);
}

/* ---- two threads -------------------------------------------------------- */

#define MILLION 1000000u

typedef struct {
	dp_spsc_t *q;
	uint32_t full;
} prod_t;

static void *producer(void *arg)
{
	prod_t *p = arg;
	uint8_t d[300];
	for (uint32_t i = 0; i < MILLION;) {
		size_t len = i % 300;
		dp_xmsg_t m = msg(i, DP_XMSG_UDP);
		fill(d, len, i);
		if (dp_xs_push(p->q, &m, d, len, 0) == 0)
			i++;
		else
			p->full++;
	}
	return NULL;
}

static void two_threads_a_million_in_order(void **state)
{
	(void)state;
	uint8_t *buf = malloc(CAP);
	dp_spsc_t *q = aligned_alloc(64, sizeof(*q));
	dp_spsc_init(q, buf, CAP);
	prod_t p = { q, 0 };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, producer, &p), 0);
	uint8_t want[300];
	uint32_t got = 0, bad = 0;
	while (got < MILLION) {
		dp_xmsg_t *m = dp_xs_peek(q);
		if (!m)
			continue;
		size_t len = got % 300;
		fill(want, len, got);
		if (m->tcp_idx != got || m->len != len || memcmp(dp_xmsg_data(m), want, len) != 0)
			bad++;
		dp_xs_pop(q);
		got++;
	}
	pthread_join(t, NULL);
	assert_int_equal(bad, 0);
	assert_null(dp_xs_peek(q));
	print_message("a million messages through a %u-octet ring: producer found it full %u times\n",
		      CAP, p.full);
	free(q);
	free(buf);
}

static void init_lays_out_every_pair(void **state)
{
	(void)state;
	dp_xshard_t x;
	assert_int_equal(dp_xshard_init(&x, 1, 4096, 4096), -EINVAL);
	assert_int_equal(dp_xshard_init(&x, 3, 4000, 4096), -EINVAL);
	assert_int_equal(dp_xshard_init(&x, 3, DP_XS_QUERY_RING, DP_XS_ANSWER_RING), 0);
	for (uint32_t f = 0; f < 3; f++)
		for (uint32_t t = 0; t < 3; t++) {
			dp_xlink_t *l = dp_xshard_link(&x, f, t);
			assert_int_equal((uintptr_t)&l->q.head % 64, 0);
			assert_int_equal((uintptr_t)&l->q.tail % 64, 0);
			assert_true((char *)&l->q.head - (char *)&l->q.tail >= 64);
			if (f == t) {
				assert_null(l->q.buf);
				continue;
			}
			assert_int_equal(l->q.cap, DP_XS_QUERY_RING);
			assert_int_equal(l->a.cap, DP_XS_ANSWER_RING);
			dp_xmsg_t m = msg(f * 3 + t, DP_XMSG_TCP);
			uint8_t d[16];
			fill(d, sizeof(d), f * 3 + t);
			assert_int_equal(dp_xs_push(&l->q, &m, d, sizeof(d), 0), 0);
			assert_int_equal(dp_xs_push(&l->a, &m, d, sizeof(d), 0), 0);
		}
	/* every queue is its own memory */
	for (uint32_t f = 0; f < 3; f++)
		for (uint32_t t = 0; t < 3; t++)
			if (f != t) {
				expect(&dp_xshard_link(&x, f, t)->q, f * 3 + t, 16);
				expect(&dp_xshard_link(&x, f, t)->a, f * 3 + t, 16);
			}
	dp_xshard_free(&x);
	dp_xshard_free(&x); /* twice is harmless */
}

/* Large answers travel as a pointer to a copy: one left in a queue when
 * the shards are gone is freed with the queues (ASan builds see a leak
 * otherwise). */
static void free_releases_queued_large_answers(void **state)
{
	(void)state;
	dp_xshard_t x;
	assert_int_equal(dp_xshard_init(&x, 2, DP_XS_QUERY_RING, DP_XS_ANSWER_RING), 0);
	dp_xs_bigans_t b = { malloc(20000), 20000 };
	assert_non_null(b.p);
	dp_xmsg_t m = msg(1, DP_XMSG_ANSWER_PTR);
	assert_int_equal(dp_xs_push(&dp_xshard_link(&x, 1, 0)->a, &m, (const uint8_t *)&b,
				    sizeof(b), DP_XS_ANSWER_KEEP), 0);
	dp_xshard_free(&x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(record_sizes),
		cmocka_unit_test(fifo_and_empty),
		cmocka_unit_test(full_queue_refuses_and_writes_nothing),
		cmocka_unit_test(keep_leaves_room),
		cmocka_unit_test(test_hole_answer_room_servfail_always_fits),
		cmocka_unit_test(wrap_around_keeps_records_whole),
		cmocka_unit_test(two_threads_a_million_in_order),
		cmocka_unit_test(init_lays_out_every_pair),
		cmocka_unit_test(free_releases_queued_large_answers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
