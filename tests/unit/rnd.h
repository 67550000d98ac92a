/* rnd.h - a fixed-seed xorshift64 for unit tests: the same sequence every
 * run, so a failure replays. One state per test program. */
#ifndef DP_TEST_RND_H
#define DP_TEST_RND_H

#include <stdint.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

#endif
