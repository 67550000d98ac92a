/* idmap.c - random 16-bit query IDs per upstream connection. */
#include "idmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int dp_idmap_init(dp_idmap_t *m, uint64_t seed)
{
	m->val = malloc(65536 * sizeof(uint32_t));
	if (!m->val)
		return -ENOMEM;
	memset(m->val, 0xff, 65536 * sizeof(uint32_t));
	m->count = 0;
	m->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	return 0;
}

void dp_idmap_destroy(dp_idmap_t *m)
{
	free(m->val);
	m->val = NULL;
	m->count = 0;
}

static inline uint32_t next_rand(dp_idmap_t *m)
{
	/* xorshift64*: fast; from a secret seed (upconn.c draws it under
	 * the process key), its IDs are unpredictable to anyone who does not
	 * see them, i.e. off the path. */
	uint64_t x = m->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	m->rng = x;
	return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

int dp_idmap_take(dp_idmap_t *m, uint32_t value)
{
	if (m->count >= DP_IDMAP_MAX)
		return DP_E_FULL;
	/* At most half full: each probe succeeds with p >= 1/2, so the
	 * expected number of probes is <= 2. */
	for (;;) {
		uint16_t id = (uint16_t)next_rand(m);
		if (m->val[id] == DP_IDMAP_NONE) {
			m->val[id] = value;
			m->count++;
			return id;
		}
	}
}

void dp_idmap_release(dp_idmap_t *m, uint16_t id)
{
	if (m->val[id] != DP_IDMAP_NONE) {
		m->val[id] = DP_IDMAP_NONE;
		m->count--;
	}
}
