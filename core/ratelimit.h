/* ratelimit.h - per-client token buckets (--rate-limit QPS), one table for
 * the whole machine.
 *
 * A fixed table keyed by the client address (IPv4 /32, IPv6 /64, where one
 * subscriber usually sits), set-associative: an address hashes, under the
 * process's secret SipHash key (siphash.h), to one set of DP_RL_WAYS
 * buckets, and takes one of them. A client cannot pick addresses that share
 * a set, since it does not know the key; and addresses that do share one
 * (by chance, or a flood of many sources) each keep their own bucket until
 * more than DP_RL_WAYS of them are active at once.
 *
 * Takeover: a newcomer to a full set takes its least recently seen bucket
 * and inherits that bucket's allowance as it stands now (its tokens plus
 * what the rate refilled since it was last seen), not a fresh full one. A
 * set whose buckets have been idle for burst/rate seconds hands a newcomer
 * a full allowance, so a legitimate new client can send at once; a set
 * kept busy hands out drained buckets, so cycling through addresses that
 * share a set earns nothing over the set's own refill rate (the old table
 * reset a bucket to full on every takeover: alternating a victim's address
 * with a colliding one was never limited). Under a flood of many sources
 * new clients may start drained: they get TC=1 and move to TCP.
 *
 * Over the limit, most queries are dropped and every second one ("slip",
 * as BIND's RRL does it) gets an empty TC=1 answer, which sends a real
 * client to TCP; either way the answer is never larger than the query, so
 * the proxy cannot be used as an amplifier.
 *
 * One table for every shard: the kernel spreads a client's datagrams over
 * the shards by source port, and a client spraying ports must still get
 * about its own limit, not threads x QPS. A bucket is a GCRA ("virtual
 * scheduling") token bucket: its whole allowance is one 64-bit theoretical
 * arrival time, charged with a compare-and-swap, so two shards charging the
 * same client never lose a charge. The other fields (identity, last seen,
 * slip) are relaxed loads and stores: a race there only makes the choice of
 * a bucket to take over, or the slip alternation, a little approximate.
 * The cost is one lock-prefixed instruction per UDP query, only with
 * --rate-limit on.
 *
 * Owns: the bucket table (allocated once by dp_rl_init or
 * dp_rl_init_shared).
 */
#ifndef DP_RATELIMIT_H
#define DP_RATELIMIT_H

#include "dp.h"

#include <sys/socket.h>

enum { DP_RL_PASS = 0, DP_RL_DROP = 1, DP_RL_SLIP = 2 };

#define DP_RL_WAYS 4 /* buckets per set: 128 octets, two cache lines */

typedef struct dp_rl_bucket {
	uint64_t key; /* IPv4 address or IPv6 /64 ... */
	uint64_t last_ms; /* last query seen (charged or not); 0: never used */
	uint64_t tat_ns; /* GCRA: when the bucket would be full again, minus
			  * the burst; the allowance is what lies before it */
	uint32_t slip;
	uint8_t family; /* ... told apart by the family, so they never share */
} dp_rl_bucket_t;

typedef struct dp_ratelimit {
	dp_rl_bucket_t *b;
	uint32_t mask; /* buckets - 1; a set is DP_RL_WAYS consecutive buckets */
	uint32_t rate; /* queries per second; 0 = off (relaxed: reload sets it) */
	uint32_t burst; /* bucket depth, in queries */
} dp_ratelimit_t;

/* entries: a power of two, at least DP_RL_WAYS. Allocates. Returns 0 or
 * -ENOMEM (-EINVAL for a bad entries). */
int dp_rl_init(dp_ratelimit_t *rl, uint32_t entries, uint32_t rate, uint32_t burst);
void dp_rl_free(dp_ratelimit_t *rl);

/* The machine's table: entries buckets whatever the rate (a reload may turn
 * limiting on), rate 0 until dp_rl_set_rate. Allocates. Returns 0 or
 * -ENOMEM / -EINVAL. */
int dp_rl_init_shared(dp_ratelimit_t *rl, uint32_t entries);

/* Change the rate and burst (any thread; shards see it at their next
 * check). A table made by dp_rl_init with rate 0 has no buckets and stays
 * off. */
void dp_rl_set_rate(dp_ratelimit_t *rl, uint32_t rate, uint32_t burst);

/* Charge one query from sa at now_ms: DP_RL_PASS, DP_RL_DROP or DP_RL_SLIP.
 * Any thread (the table is shared by the shards). Hot path. */
int dp_rl_check(dp_ratelimit_t *rl, const struct sockaddr *sa, uint64_t now_ms);

/* The set (0 .. buckets / DP_RL_WAYS - 1) that sa maps to under the current
 * process key. For tests. */
uint32_t dp_rl_set(const dp_ratelimit_t *rl, const struct sockaddr *sa);

#endif
