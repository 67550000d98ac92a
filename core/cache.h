/* cache.h - the answer cache of one shard.
 *
 * Key: the question name folded to lower case, type, class, the DO and CD
 * bits, and with --forward-ecs the client's subnet as forwarded (family,
 * source prefix, address cut to the prefix: dp_cache_key_ecs). Value: the
 * answer in wire form, as the upstream sent it but for its EDNS options:
 * none is kept (NSID, EDE, cookies, padding: they are the upstream's, for
 * this response) except a Client Subnet option that repeats the key's
 * subnet; and the offsets of its TTLs, found once at insert from the parsed
 * answer. A hit is served through dp_answer_personalise() (answer.h): the
 * client's ID and spelling of the name, every TTL reduced by the time spent
 * in the cache (rewritten by offset, no walk), AD per RFC 6840 5.7, and the
 * EDNS the client asked for.
 *
 * Lifetime: the smallest TTL of the answer and authority records (negative
 * answers: the SOA's TTL and MINIMUM, RFC 2308), clamped to [min_ttl,
 * max_ttl]; TTLs of 2^31 and above count as 0 (RFC 2181 8). TC answers,
 * answers with no TTL and errors are not cached, but for a SERVFAIL that
 * every upstream gave (dp_cache_insert_servfail, RFC 9520). An answer whose
 * Client Subnet scope is longer than the source prefix it was asked for
 * (RFC 7871 7.3: valid for a narrower subnet than the key's) is not cached.
 * Expired entries stay until evicted, to be served stale (TTL 30, RFC 8767)
 * for up to stale_ttl when no upstream answers; a cached SERVFAIL is never
 * served stale.
 *
 * Memory: bounded by max_bytes (entry headers included). Eviction is S3-FIFO
 * (Yang et al., SOSP 2023): new entries enter a small FIFO; an entry hit
 * while there moves to the main FIFO, others leave and are remembered in a
 * ghost table so that their return goes straight to main; main evicts with
 * a small frequency counter (CLOCK-like). One-off names from a scan pass
 * through the small FIFO without pushing out hot names.
 *
 * Owns: every entry (one malloc per insert, none per hit), the hash buckets
 * and the ghost table. Not thread-safe: one per shard.
 */
#ifndef DP_CACHE_H
#define DP_CACHE_H

#include "answer.h"
#include "dns.h"
#include "edns.h"

typedef struct dp_cache_key {
	uint64_t hash;
	uint16_t qtype, qclass;
	uint8_t flags; /* bit 0: DO, bit 1: CD */
	uint8_t name_len;
	uint8_t ecs_len; /* 0: no subnet in the key */
	uint8_t ecs[DP_EDNS_ECS_MAX]; /* Client Subnet data as forwarded */
	uint8_t name[DP_DNS_MAX_NAME + 9]; /* wire form, lower case (+ room for 8-octet steps) */
} dp_cache_key_t;

typedef struct dp_cache_entry dp_cache_entry_t;

typedef struct dp_cache_stats {
	uint64_t hits, misses, stale_served, inserts, evictions, entries, bytes, expired;
} dp_cache_stats_t;

typedef struct dp_cache {
	dp_cache_entry_t **buckets;
	uint32_t bucket_mask;
	uint64_t *ghost;
	uint32_t ghost_mask;
	/* FIFOs: entries are inserted at the tail and leave from the head */
	dp_cache_entry_t *small_head, *small_tail, *main_head, *main_tail;
	size_t small_bytes, main_bytes, max_bytes;
	uint32_t min_ttl, max_ttl, stale_ttl; /* seconds */
	dp_cache_stats_t st;
} dp_cache_t;

/* max_bytes 0 disables the cache (every call then misses, inserts nothing).
 * Allocates the bucket and ghost tables (zero pages until used). Returns 0
 * or -ENOMEM. */
int dp_cache_init(dp_cache_t *c, size_t max_bytes, uint32_t min_ttl, uint32_t max_ttl,
		  uint32_t stale_ttl);
/* Frees every entry and the tables; accepts a zeroed cache. */
void dp_cache_destroy(dp_cache_t *c);

/* The key of query msg (view v, which has a question), without a subnet.
 * Hot path. */
void dp_cache_key(const uint8_t *msg, const dp_dns_view_t *v, dp_cache_key_t *k);

/* Add the client's subnet (ecs_len octets from dp_edns_ecs_read) to key k
 * made by dp_cache_key: it then matches only answers for that subnet.
 * Hot path. */
void dp_cache_key_ecs(dp_cache_key_t *k, const uint8_t *ecs, size_t ecs_len);

/* Look key up. Returns the entry when fresh; when expired but within the
 * stale window and allow_stale, returns it with *stale set; else NULL.
 * Counts a hit or a miss (not for allow_stale look-ups). Hot path. */
dp_cache_entry_t *dp_cache_lookup(dp_cache_t *c, const dp_cache_key_t *k, uint64_t now_ms,
				  bool allow_stale, bool *stale);

/* Seconds left before the entry expires (0 when expired), and the lifetime
 * it was inserted with. */
uint32_t dp_cache_ttl_left(const dp_cache_entry_t *e, uint64_t now_ms);
uint32_t dp_cache_ttl_orig(const dp_cache_entry_t *e);
/* Prefetch bookkeeping: true the first time it is called for an entry
 * that is due (hit at least twice, in the last tenth of a lifetime of at
 * least 10 s); the caller refreshes it. */
bool dp_cache_prefetch_due(dp_cache_entry_t *e, uint64_t now_ms);

/* The source that entry e (from dp_cache_lookup) is served from at now_ms
 * (stale: every TTL DP_ANSWER_STALE_TTL), for dp_answer_personalise(). src
 * points into the entry: valid until the next insert or look-up. Hot path,
 * no walk, no allocation. */
void dp_cache_entry_src(const dp_cache_entry_t *e, uint64_t now_ms, bool stale,
			dp_answer_src_t *src);

/* Insert (or replace) the answer ans (len octets, parsed into a by
 * dp_dns_parse_answer_rrs) under key k. Returns 0 when cached, 1 when the
 * answer is not cacheable, -ENOMEM. Allocates the entry. */
int dp_cache_insert(dp_cache_t *c, const dp_cache_key_t *k, const uint8_t *ans, size_t len,
		    const dp_dns_answer_t *a, uint64_t now_ms);

/* Insert the SERVFAIL ans (parsed into a) under key k for ttl seconds (RFC 9520:
 * 1 s to 5 min; the caller says when every upstream failed). It never
 * replaces an answer that is still fresh or servable stale: that one is
 * worth more than a failure. Returns 0 when cached, 1 when not, -ENOMEM.
 * Allocates the entry. */
int dp_cache_insert_servfail(dp_cache_t *c, const dp_cache_key_t *k, const uint8_t *ans,
			     size_t len, const dp_dns_answer_t *a, uint32_t ttl, uint64_t now_ms);

/* Lifetime in seconds the cache would give answer ans (parsed into a;
 * before clamping), or -1 when it is not cacheable. Reads the TTLs by
 * offset. Exposed for tests. */
int64_t dp_cache_answer_ttl(const uint8_t *ans, const dp_dns_answer_t *a);

#endif
