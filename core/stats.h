/* stats.h - per-shard counters. Each shard writes its own (relaxed stores,
 * no lock prefix); readers sum them over shards with relaxed loads. */
#ifndef DP_STATS_H
#define DP_STATS_H

#include <stdint.h>

/* X(name): every counter, in the order they are printed. */
#define DP_STATS_FIELDS(X) \
	X(udp_queries) \
	X(tcp_queries) \
	X(answers) \
	X(servfail) \
	X(formerr) \
	X(notimp) \
	X(badvers) \
	X(dropped) \
	X(acl_refused) \
	X(ratelimited) \
	X(ratelimit_tc) \
	X(udp_truncated) \
	X(udp_send_errors) \
	X(udp_send_sync) \
	X(udp_io_calls) \
	X(bufring_empty) \
	X(inflight_full) \
	X(fair_refused) \
	X(fair_reclaimed) \
	X(tcp_paused) \
	X(timeouts) \
	X(upstream_sent) \
	X(upstream_resent) \
	X(hedges_sent) \
	X(hedge_wins) \
	X(probes_sent) \
	X(upstream_idle_closed) \
	X(upstream_answers) \
	X(upstream_bad_id) \
	X(upstream_bad_question) \
	X(upstream_malformed) \
	X(ssl_writes) \
	X(ssl_write_queries) \
	X(max_write_batch) \
	X(up_sends) \
	X(connects) \
	X(handshakes) \
	X(handshakes_resumed) \
	X(pin_failures) \
	X(handshake_failures) \
	X(conn_closed) \
	X(tcp_accepted) \
	X(tcp_refused) \
	X(tcp_open) \
	X(tcp_closed_idle) \
	X(tcp_closed_slow) \
	X(tcp_evicted) \
	X(tcp_closed_memory) \
	X(tcp_answers_dropped) \
	X(queries_inflight) \
	X(cache_hits) \
	X(cache_misses) \
	X(cache_stale_served) \
	X(cache_coalesced) \
	X(cache_prefetched) \
	X(cache_inserts) \
	X(cache_evictions) \
	X(cache_entries) \
	X(cache_bytes)

typedef struct dp_stats {
#define DP_STATS_DECL(n) uint64_t n;
	DP_STATS_FIELDS(DP_STATS_DECL)
#undef DP_STATS_DECL
} dp_stats_t;

#endif
