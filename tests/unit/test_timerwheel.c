/* test_timerwheel.c - the hierarchical timer wheel (core/timerwheel.c).
 *
 * The wheel reads no clock: every test drives time by hand. The central
 * check is firing order: whatever the mix of delays, timers come out in
 * deadline order, each at the first advance that reaches its deadline, and
 * exactly once (issue 12, hole 6: a FIFO list per delay was not).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "timerwheel.h"
#include "rnd.h"

typedef struct tmr {
	dp_tw_entry_t e;
	uint32_t id;
	uint64_t want; /* deadline asked for */
	int fired;
	uint64_t fired_at; /* the now of the pop that handed it out */
} tmr_t;

#define ALEN(a) (sizeof(a) / sizeof((a)[0]))
#define TMR(ep) ((tmr_t *)((char *)(ep) - offsetof(tmr_t, e)))


static dp_tw_t *new_wheel(uint64_t now)
{
	dp_tw_t *w = malloc(sizeof(*w));
	assert_non_null(w);
	dp_tw_init(w, now);
	return w;
}

/* Pop everything due at now; check order and lateness. Returns how many. */
static size_t drain(dp_tw_t *w, uint64_t now, uint64_t prev_now, uint64_t *last_at)
{
	size_t n = 0;
	dp_tw_entry_t *e;
	while ((e = dp_tw_pop(w, now)) != NULL) {
		tmr_t *t = TMR(e);
		assert_false(dp_tw_armed(e));
		assert_int_equal(t->fired, 0);
		if (t->want > now)
			fail_msg("timer %u due at %llu fired at %llu (early)", t->id,
				 (unsigned long long)t->want, (unsigned long long)now);
		/* not late: the previous advance had not reached it */
		if (t->want < prev_now)
			fail_msg("timer %u due at %llu fired only at %llu (previous advance %llu)",
				 t->id, (unsigned long long)t->want, (unsigned long long)now,
				 (unsigned long long)prev_now);
		if (t->want < *last_at)
			fail_msg("timer %u due at %llu fired after one due at %llu", t->id,
				 (unsigned long long)t->want, (unsigned long long)*last_at);
		*last_at = t->want;
		t->fired++;
		t->fired_at = now;
		n++;
	}
	return n;
}

static void empty_wheel(void **state)
{
	dp_tw_t *w = new_wheel(1000);
	assert_int_equal(dp_tw_next(w), UINT64_MAX);
	assert_null(dp_tw_pop(w, 5000));
	assert_int_equal(w->now, 5000);
	assert_null(dp_tw_pop(w, 100)); /* time never goes back */
	assert_int_equal(w->now, 5000);
	tmr_t t;
	memset(&t, 0, sizeof(t)); /* a zeroed entry is unarmed */
	assert_false(dp_tw_armed(&t.e));
	dp_tw_cancel(w, &t.e); /* harmless */
	assert_int_equal(w->count, 0);
	free(w);
}

/* The hole-6 case: a 10 s timer armed first, then a 1 s one (a reload
 * shortened the timeout): the 1 s one fires at 1 s, not after 10 s. */
static void test_hole6_shorter_delay_after_longer_fires_first(void **state)
{
	uint64_t t0 = 123456789;
	dp_tw_t *w = new_wheel(t0);
	tmr_t a = { .id = 1, .want = t0 + 10000 }, b = { .id = 2, .want = t0 + 1000 };
	dp_tw_add(w, &a.e, a.want);
	dp_tw_add(w, &b.e, b.want);
	assert_true(dp_tw_next(w) <= b.want);
	assert_true(dp_tw_next(w) > t0);
	uint64_t last = 0;
	assert_int_equal(drain(w, t0 + 999, t0, &last), 0);
	assert_int_equal(drain(w, t0 + 1000, t0 + 999, &last), 1);
	assert_int_equal(b.fired, 1);
	assert_int_equal(a.fired, 0);
	assert_int_equal(drain(w, t0 + 9999, t0 + 1000, &last), 0);
	assert_int_equal(drain(w, t0 + 10000, t0 + 9999, &last), 1);
	assert_int_equal(a.fired, 1);
	assert_int_equal(w->count, 0);
	assert_int_equal(dp_tw_next(w), UINT64_MAX);
	free(w);
}

/* Many timers, delays from 0 to hours, armed at different times, time
 * advanced in uneven steps: deadline order, never early, never late. */
static void mixed_delays_fire_in_order(void **state)
{
	enum { N = 20000 };
	tmr_t *t = calloc(N, sizeof(*t));
	assert_non_null(t);
	uint64_t now = 1ull << 33; /* about what CLOCK_MONOTONIC ms look like */
	dp_tw_t *w = new_wheel(now);
	static const uint64_t scale[] = { 1, 10, 100, 1000, 10000, 3600000, 86400000ull * 3 };
	uint64_t last = 0, prev = now;
	size_t fired = 0;
	uint32_t armed = 0;
	while (fired < N) {
		/* arm a few, then advance by a random step */
		for (int k = 0; k < 50 && armed < N; k++, armed++) {
			tmr_t *x = &t[armed];
			x->id = armed;
			x->want = now + rnd() % (scale[rnd() % ALEN(scale)] + 1);
			dp_tw_add(w, &x->e, x->want);
		}
		uint64_t nd = dp_tw_next(w);
		uint64_t step = armed < N ? rnd() % 50 : (nd == UINT64_MAX ? 1 : nd - now + rnd() % 3);
		prev = now;
		now += step;
		last = 0;
		fired += drain(w, now, prev, &last);
		/* next() never promises later than the earliest deadline */
		uint64_t min_want = UINT64_MAX;
		if (fired < N && fired % 997 == 0) {
			for (uint32_t i = 0; i < armed; i++)
				if (!t[i].fired && t[i].want < min_want)
					min_want = t[i].want;
			assert_true(dp_tw_next(w) <= min_want);
			assert_true(dp_tw_next(w) > now || min_want <= now);
		}
	}
	for (uint32_t i = 0; i < N; i++)
		assert_int_equal(t[i].fired, 1);
	assert_int_equal(w->count, 0);
	free(t);
	free(w);
}

/* One reference: a random mix of arm, re-arm, cancel and advance, checked
 * against a plain array scanned for the minimum. */
static void matches_reference_model(void **state)
{
	enum { N = 2000, OPS = 200000 };
	tmr_t *t = calloc(N, sizeof(*t));
	bool *armed = calloc(N, sizeof(*armed));
	assert_non_null(t);
	assert_non_null(armed);
	uint64_t now = (1ull << 36) - 200; /* crosses a level-6 boundary early on */
	dp_tw_t *w = new_wheel(now);
	uint32_t n_armed = 0;
	for (int op = 0; op < OPS; op++) {
		uint32_t i = (uint32_t)(rnd() % N);
		switch (rnd() % 4) {
		case 0:
		case 1: {
			uint64_t d = rnd() % ((rnd() % 3 == 0) ? 1000000 : 300);
			t[i].want = now + d;
			t[i].id = i;
			if (!armed[i])
				n_armed++;
			armed[i] = true;
			dp_tw_add(w, &t[i].e, t[i].want);
			break;
		}
		case 2:
			if (armed[i])
				n_armed--;
			armed[i] = false;
			dp_tw_cancel(w, &t[i].e);
			assert_false(dp_tw_armed(&t[i].e));
			break;
		default: {
			uint64_t to = now + rnd() % 2000;
			/* reference: what is due, in order of deadline */
			dp_tw_entry_t *e;
			uint64_t last = 0;
			while ((e = dp_tw_pop(w, to)) != NULL) {
				tmr_t *x = TMR(e);
				assert_true(armed[x->id]);
				assert_true(x->want <= to);
				assert_true(x->want >= last);
				last = x->want;
				armed[x->id] = false;
				n_armed--;
			}
			for (uint32_t k = 0; k < N; k++)
				if (armed[k] && t[k].want <= to)
					fail_msg("timer %u due at %llu not fired by %llu", k,
						 (unsigned long long)t[k].want, (unsigned long long)to);
			now = to;
			break;
		}
		}
		assert_int_equal(w->count, n_armed);
	}
	free(t);
	free(armed);
	free(w);
}

static void cancel_and_rearm(void **state)
{
	dp_tw_t *w = new_wheel(0);
	tmr_t a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 };
	dp_tw_add(w, &a.e, 100);
	dp_tw_add(w, &b.e, 5000);
	dp_tw_add(w, &c.e, 70);
	assert_int_equal(w->count, 3);
	dp_tw_cancel(w, &c.e);
	dp_tw_cancel(w, &c.e); /* twice is harmless */
	assert_int_equal(w->count, 2);
	/* re-arm a: later than b, then earlier again */
	dp_tw_add(w, &a.e, 6000);
	assert_int_equal(w->count, 2);
	assert_null(dp_tw_pop(w, 4999));
	assert_ptr_equal(dp_tw_pop(w, 5000), &b.e);
	dp_tw_add(w, &a.e, 5500);
	assert_null(dp_tw_pop(w, 5499));
	assert_ptr_equal(dp_tw_pop(w, 5500), &a.e);
	assert_null(dp_tw_pop(w, 7000));
	/* a cancelled slot leaves no trace: next() is empty again */
	assert_int_equal(dp_tw_next(w), UINT64_MAX);
	dp_tw_add(w, &c.e, 100000);
	dp_tw_cancel(w, &c.e);
	assert_int_equal(dp_tw_next(w), UINT64_MAX);
	assert_int_equal(w->levels, 0);
	/* re-arm from inside the due list (popped by nobody yet) */
	dp_tw_add(w, &a.e, 7000); /* at the wheel's time: due at once */
	assert_int_equal(dp_tw_next(w), 7000);
	dp_tw_add(w, &a.e, 7010);
	assert_null(dp_tw_pop(w, 7009));
	assert_ptr_equal(dp_tw_pop(w, 7010), &a.e);
	free(w);
}

/* Callbacks: dp_tw_run hands out due timers in order; a callback may
 * cancel another due timer (it then does not fire) and re-arm itself. */
typedef struct run_ctx {
	dp_tw_t *w;
	tmr_t *victim;
	uint32_t order[8];
	int n;
} run_ctx_t;

static void on_fire(dp_tw_entry_t *e, void *arg)
{
	run_ctx_t *c = arg;
	tmr_t *t = TMR(e);
	c->order[c->n++] = t->id;
	if (t->id == 1 && c->victim)
		dp_tw_cancel(c->w, &c->victim->e);
	if (t->id == 3 && !t->fired++)
		dp_tw_add(c->w, e, c->w->now + 125); /* once more, at 150 */
}

static void run_with_callbacks(void **state)
{
	dp_tw_t *w = new_wheel(10);
	tmr_t t[4];
	memset(t, 0, sizeof(t));
	for (int i = 0; i < 4; i++) {
		t[i].id = (uint32_t)i;
		dp_tw_entry_init(&t[i].e, on_fire);
	}
	run_ctx_t c = { .w = w, .victim = &t[2] };
	dp_tw_add(w, &t[0].e, 40);
	dp_tw_add(w, &t[1].e, 20);
	dp_tw_add(w, &t[2].e, 30); /* cancelled by 1's callback */
	dp_tw_add(w, &t[3].e, 25);
	assert_int_equal(dp_tw_run(w, 100, &c), 3);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.order[0], 1);
	assert_int_equal(c.order[1], 3);
	assert_int_equal(c.order[2], 0);
	assert_true(dp_tw_armed(&t[3].e)); /* re-armed */
	assert_int_equal(dp_tw_run(w, 149, &c), 0);
	assert_int_equal(dp_tw_run(w, 150, &c), 1);
	assert_int_equal(c.order[3], 3);
	assert_int_equal(w->count, 0);
	free(w);
}

/* Hours, days, and the far end of the range. */
static void large_delays(void **state)
{
	uint64_t t0 = 5000;
	dp_tw_t *w = new_wheel(t0);
	tmr_t h = { .id = 1 }, d = { .id = 2 }, y = { .id = 3 }, m = { .id = 4 }, s = { .id = 5 };
	dp_tw_add(w, &m.e, UINT64_MAX);
	dp_tw_add(w, &y.e, t0 + 86400000ull * 365 * 100); /* a century */
	dp_tw_add(w, &d.e, t0 + 86400000ull * 2);
	dp_tw_add(w, &h.e, t0 + 3600000ull * 5);
	dp_tw_add(w, &s.e, t0 + 1);
	assert_int_equal(dp_tw_next(w), t0 + 1);
	assert_ptr_equal(dp_tw_pop(w, t0 + 1), &s.e);
	uint64_t n = dp_tw_next(w);
	assert_true(n > t0 + 1 && n <= t0 + 3600000ull * 5);
	/* walk to each deadline through next(): wake-ups are few */
	tmr_t *expect[] = { &h, &d, &y, &m };
	uint64_t want[] = { t0 + 3600000ull * 5, t0 + 86400000ull * 2,
			    t0 + 86400000ull * 365 * 100, UINT64_MAX };
	int wakeups = 0;
	for (int i = 0; i < 4; i++) {
		dp_tw_entry_t *e = NULL;
		while (!e) {
			uint64_t nx = dp_tw_next(w);
			assert_true(nx <= want[i]);
			e = dp_tw_pop(w, nx);
			wakeups++;
			assert_true(wakeups < 200);
		}
		assert_ptr_equal(e, &expect[i]->e);
		assert_int_equal(w->now, want[i]);
	}
	/* at most one wake-up per level per timer */
	assert_true(wakeups <= 4 * DP_TW_LEVELS);
	assert_int_equal(w->count, 0);
	free(w);
}

/* Deadlines that cross slot and level boundaries (the slot index wraps
 * from 63 to 0 with a carry into the next level), from a time just before
 * such boundaries. */
static void wrap_around(void **state)
{
	static const uint64_t starts[] = { 63, 4095 - 3, (1ull << 18) - 1, (1ull << 36) - 2,
					   (1ull << 60) - 7, 0xfffffffffffff000ull };
	for (size_t k = 0; k < ALEN(starts); k++) {
		uint64_t t0 = starts[k];
		dp_tw_t *w = new_wheel(t0);
		enum { N = 300 };
		tmr_t t[N];
		memset(t, 0, sizeof(t));
		for (uint32_t i = 0; i < N; i++) {
			t[i].id = i;
			t[i].want = t0 + 1 + (N - 1 - i) * 7; /* armed latest first */
			dp_tw_add(w, &t[i].e, t[i].want);
		}
		uint64_t last = 0, now = t0;
		size_t fired = 0;
		for (int step = 0; step < 5000 && fired < N; step++) {
			uint64_t prev = now;
			now += 3;
			fired += drain(w, now, prev, &last);
		}
		assert_int_equal(fired, N);
		for (uint32_t i = 0; i < N; i++)
			assert_true(t[i].fired_at - t[i].want < 3);
		free(w);
	}
}

/* Thousands of timers on one tick: all fire together, in arming order. */
static void many_in_one_slot(void **state)
{
	enum { N = 10000 };
	tmr_t *t = calloc(N, sizeof(*t));
	assert_non_null(t);
	dp_tw_t *w = new_wheel(777);
	for (uint32_t i = 0; i < N; i++) {
		t[i].id = i;
		dp_tw_add(w, &t[i].e, 777 + 30000); /* a level > 0 slot: cascades */
	}
	/* and some on the neighbouring ticks */
	tmr_t before = { .id = N }, after = { .id = N + 1 };
	dp_tw_add(w, &after.e, 777 + 30001);
	dp_tw_add(w, &before.e, 777 + 29999);
	/* cancel every tenth */
	for (uint32_t i = 0; i < N; i += 10)
		dp_tw_cancel(w, &t[i].e);
	assert_null(dp_tw_pop(w, 777 + 29998));
	assert_ptr_equal(dp_tw_pop(w, 777 + 30000), &before.e);
	uint32_t prev = 0, n = 0;
	dp_tw_entry_t *e;
	while ((e = dp_tw_pop(w, 777 + 30000)) != NULL) {
		tmr_t *x = TMR(e);
		assert_true(x->id % 10 != 0);
		assert_true(n == 0 || x->id > prev);
		prev = x->id;
		n++;
	}
	assert_int_equal(n, N - N / 10);
	assert_int_equal(dp_tw_next(w), 777 + 30001);
	assert_ptr_equal(dp_tw_pop(w, 777 + 30001), &after.e);
	assert_int_equal(w->count, 0);
	free(t);
	free(w);
}

/* Arming at or before the wheel's time: due at the next pop, and next()
 * says so (the loop must not sleep). */
static void overdue_fires_at_once(void **state)
{
	dp_tw_t *w = new_wheel(1000);
	tmr_t a = { .id = 1 }, b = { .id = 2 };
	dp_tw_add(w, &b.e, 1200);
	dp_tw_add(w, &a.e, 900);
	assert_int_equal(dp_tw_next(w), 1000);
	assert_ptr_equal(dp_tw_pop(w, 1000), &a.e);
	assert_null(dp_tw_pop(w, 1000));
	/* 1200 is beyond the current 64 ticks: next() is its slot's start */
	assert_true(dp_tw_next(w) > 1000 && dp_tw_next(w) <= 1200);
	assert_null(dp_tw_pop(w, 1199));
	assert_ptr_equal(dp_tw_pop(w, 1200), &b.e);
	free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(empty_wheel),
		cmocka_unit_test(test_hole6_shorter_delay_after_longer_fires_first),
		cmocka_unit_test(mixed_delays_fire_in_order),
		cmocka_unit_test(matches_reference_model),
		cmocka_unit_test(cancel_and_rearm),
		cmocka_unit_test(run_with_callbacks),
		cmocka_unit_test(large_delays),
		cmocka_unit_test(wrap_around),
		cmocka_unit_test(many_in_one_slot),
		cmocka_unit_test(overdue_fires_at_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
