/* ratelimit.c - token buckets per client address, in keyed 4-way sets,
 * shared by the shards (GCRA, one compare-and-swap per charge). */
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

int dp_rl_init_shared(dp_ratelimit_t *rl, uint32_t entries)
{
	int rc = dp_rl_init(rl, entries, 1, 1);
	dp_rl_set_rate(rl, 0, 0);
	return rc;
}

void dp_rl_set_rate(dp_ratelimit_t *rl, uint32_t rate, uint32_t burst)
{
	if (!rl->b)
		rate = 0;
	__atomic_store_n(&rl->burst, burst ? burst : rate, __ATOMIC_RELAXED);
	__atomic_store_n(&rl->rate, rate, __ATOMIC_RELAXED);
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

#define LD(p) __atomic_load_n(p, __ATOMIC_RELAXED)
#define ST(p, v) __atomic_store_n(p, v, __ATOMIC_RELAXED)

/* Charge one query to b at now_ns (GCRA): it passes when the bucket's
 * theoretical arrival time, one interval on, lies no more than the burst
 * ahead of now. A compare-and-swap, retried a few times when another shard
 * charged the bucket meanwhile; a bucket fought over that hard counts as
 * over the limit. */
static bool charge(dp_rl_bucket_t *b, uint64_t now_ns, uint64_t interval, uint64_t tolerance)
{
	uint64_t tat = LD(&b->tat_ns);
	for (int i = 0; i < 8; i++) {
		uint64_t next = (tat > now_ns ? tat : now_ns) + interval;
		if (next - now_ns > tolerance)
			return false;
		if (__atomic_compare_exchange_n(&b->tat_ns, &tat, next, false, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			return true;
	}
	return false;
}

int dp_rl_check(dp_ratelimit_t *rl, const struct sockaddr *sa, uint64_t now_ms)
{
	uint32_t rate = LD(&rl->rate);
	if (!rate)
		return DP_RL_PASS;
	if (now_ms == 0)
		now_ms = 1; /* last_ms 0 marks a bucket never used */
	uint8_t family;
	uint64_t key = addr_key(sa, &family);
	dp_rl_bucket_t *set = &rl->b[set_base(rl, key, family)];
	dp_rl_bucket_t *b = NULL, *lru = &set[0];
	for (int i = 0; i < DP_RL_WAYS; i++) {
		if (LD(&set[i].key) == key && LD(&set[i].family) == family && LD(&set[i].last_ms)) {
			b = &set[i];
			break;
		}
		if (LD(&set[i].last_ms) < LD(&lru->last_ms))
			lru = &set[i];
	}
	if (!b) {
		/* Takeover of the least recently seen bucket: the newcomer
		 * inherits its allowance as it stands now (its arrival time
		 * stays), never a refilled one. */
		b = lru;
		ST(&b->key, key);
		ST(&b->family, family);
		ST(&b->slip, 0);
	}
	ST(&b->last_ms, now_ms);
	uint64_t interval = 1000000000ull / rate;
	if (interval == 0)
		interval = 1;
	uint64_t burst = LD(&rl->burst);
	if (charge(b, now_ms * 1000000ull, interval, (burst ? burst : 1) * interval))
		return DP_RL_PASS;
	return (__atomic_add_fetch(&b->slip, 1, __ATOMIC_RELAXED) & 1) ? DP_RL_SLIP : DP_RL_DROP;
}
