/* ratelimit.c - token buckets per client address. */
#include "ratelimit.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

int dp_rl_init(dp_ratelimit_t *rl, uint32_t entries, uint32_t rate, uint32_t burst)
{
	memset(rl, 0, sizeof(*rl));
	rl->rate = rate;
	rl->burst = burst ? burst : rate;
	if (rate == 0)
		return 0;
	rl->b = calloc(entries, sizeof(dp_rl_bucket_t));
	if (!rl->b)
		return -ENOMEM;
	rl->mask = entries - 1;
	return 0;
}

void dp_rl_free(dp_ratelimit_t *rl)
{
	free(rl->b);
	rl->b = NULL;
}

static uint64_t addr_key(const struct sockaddr *sa, uint8_t *family)
{
	*family = (uint8_t)sa->sa_family;
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		uint64_t k;
		memcpy(&k, &s6->sin6_addr, 8); /* the /64 */
		return k;
	}
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
	return (uint64_t)s4->sin_addr.s_addr;
}

int dp_rl_check(dp_ratelimit_t *rl, const struct sockaddr *sa, uint64_t now_ms)
{
	if (!rl->rate)
		return DP_RL_PASS;
	uint8_t family;
	uint64_t key = addr_key(sa, &family);
	uint64_t h = (key ^ ((uint64_t)family << 56)) * 0x9E3779B97F4A7C15ull;
	dp_rl_bucket_t *b = &rl->b[(h >> 32) & rl->mask];
	uint64_t cap = (uint64_t)rl->burst * 1000;
	if (b->key != key || b->family != family || b->last_ms == 0) {
		b->key = key;
		b->family = family;
		b->tokens = (uint32_t)DP_MIN(cap, (uint64_t)UINT32_MAX);
		b->last_ms = now_ms ? now_ms : 1;
		b->slip = 0;
	} else if (now_ms > b->last_ms) {
		/* rate queries/s = rate thousandths per millisecond */
		uint64_t t = b->tokens + (now_ms - b->last_ms) * (uint64_t)rl->rate;
		b->tokens = (uint32_t)DP_MIN(t, DP_MIN(cap, (uint64_t)UINT32_MAX));
		b->last_ms = now_ms;
	}
	if (b->tokens >= 1000) {
		b->tokens -= 1000;
		return DP_RL_PASS;
	}
	return (++b->slip & 1) ? DP_RL_SLIP : DP_RL_DROP;
}
