/* ratelimit.h - per-client token buckets (--rate-limit QPS), per shard.
 *
 * A fixed, direct-mapped table keyed by the client address (IPv4 /32, IPv6
 * /64, where one subscriber usually sits); a new key takes over its bucket
 * with a full allowance. Over the limit, most queries are dropped and every
 * second one ("slip", as BIND's RRL does it) gets an empty TC=1 answer, which
 * sends a real client to TCP; either way the answer is never larger than the
 * query, so the proxy cannot be used as an amplifier.
 *
 * Owns: the bucket table (allocated once by dp_rl_init). Note: clients are
 * spread over shards by the kernel's SO_REUSEPORT hash, so a client that
 * varies its source port can reach up to threads x QPS.
 */
#ifndef DP_RATELIMIT_H
#define DP_RATELIMIT_H

#include "dp.h"

#include <sys/socket.h>

enum { DP_RL_PASS = 0, DP_RL_DROP = 1, DP_RL_SLIP = 2 };

typedef struct dp_rl_bucket {
	uint64_t key; /* IPv4 address or IPv6 /64 ... */
	uint8_t family; /* ... told apart by the family, so they never share */
	uint64_t last_ms;
	uint32_t tokens; /* in thousandths of a query */
	uint32_t slip;
} dp_rl_bucket_t;

typedef struct dp_ratelimit {
	dp_rl_bucket_t *b;
	uint32_t mask;
	uint32_t rate; /* queries per second; 0 = off */
	uint32_t burst; /* bucket depth, in queries */
} dp_ratelimit_t;

/* entries: a power of two. Allocates. Returns 0 or -ENOMEM. */
int dp_rl_init(dp_ratelimit_t *rl, uint32_t entries, uint32_t rate, uint32_t burst);
void dp_rl_free(dp_ratelimit_t *rl);

/* Charge one query from sa at now_ms: DP_RL_PASS, DP_RL_DROP or DP_RL_SLIP.
 * Hot path. */
int dp_rl_check(dp_ratelimit_t *rl, const struct sockaddr *sa, uint64_t now_ms);

#endif
