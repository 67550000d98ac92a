/* ratelimit.c - token buckets per client address, in keyed 4-way sets. */
#include "ratelimit.h"
#include "siphash.h"

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
	if (entries < DP_RL_WAYS || (entries & (entries - 1)))
		return -EINVAL;
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

/* First bucket of the set of (key, family): keyed, so a client cannot aim
 * at a set. */
static uint32_t set_base(const dp_ratelimit_t *rl, uint64_t key, uint8_t family)
{
	return (uint32_t)dp_hash2(key, family) & rl->mask & ~(uint32_t)(DP_RL_WAYS - 1);
}

uint32_t dp_rl_set(const dp_ratelimit_t *rl, const struct sockaddr *sa)
{
	uint8_t family;
	uint64_t key = addr_key(sa, &family);
	return set_base(rl, key, family) / DP_RL_WAYS;
}

/* Bring b's allowance up to now_ms (capped at the burst). */
static void refill(const dp_ratelimit_t *rl, dp_rl_bucket_t *b, uint64_t now_ms)
{
	uint64_t cap = DP_MIN((uint64_t)rl->burst * 1000, (uint64_t)UINT32_MAX);
	if (b->last_ms == 0) {
		b->tokens = (uint32_t)cap; /* never used: a full allowance */
	} else if (now_ms > b->last_ms) {
		/* rate queries/s = rate thousandths per millisecond */
		uint64_t t = b->tokens + (now_ms - b->last_ms) * (uint64_t)rl->rate;
		b->tokens = (uint32_t)DP_MIN(t, cap);
	} else {
		return; /* same millisecond, or a clock that went back */
	}
	b->last_ms = now_ms;
}

int dp_rl_check(dp_ratelimit_t *rl, const struct sockaddr *sa, uint64_t now_ms)
{
	if (!rl->rate)
		return DP_RL_PASS;
	if (now_ms == 0)
		now_ms = 1; /* last_ms 0 marks a bucket never used */
	uint8_t family;
	uint64_t key = addr_key(sa, &family);
	dp_rl_bucket_t *set = &rl->b[set_base(rl, key, family)];
	dp_rl_bucket_t *b = NULL, *lru = &set[0];
	for (int i = 0; i < DP_RL_WAYS; i++) {
		if (set[i].key == key && set[i].family == family && set[i].last_ms) {
			b = &set[i];
			break;
		}
		if (set[i].last_ms < lru->last_ms)
			lru = &set[i];
	}
	if (!b) {
		/* Takeover of the least recently seen bucket: the newcomer
		 * gets its allowance as it stands now, never a refilled one. */
		b = lru;
		refill(rl, b, now_ms);
		b->key = key;
		b->family = family;
		b->slip = 0;
	} else {
		refill(rl, b, now_ms);
	}
	if (b->tokens >= 1000) {
		b->tokens -= 1000;
		return DP_RL_PASS;
	}
	return (++b->slip & 1) ? DP_RL_SLIP : DP_RL_DROP;
}
