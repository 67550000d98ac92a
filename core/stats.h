/* stats.h - per-shard counters and gauges. Each shard writes its own
 * (relaxed stores, no lock prefix); every reader (/metrics, the SIGUSR1 log
 * line) aggregates them over shards with dp_stats_add(), so a value has one
 * kind and one aggregation whoever reads it. */
#ifndef DP_STATS_H
#define DP_STATS_H

#include <stdint.h>

/* The kind of a value is the list it is in. */

/* X(name): counters, which only grow; summed over shards; Prometheus
 * "counter". */
#define DP_STATS_COUNTERS(X) \
	X(udp_queries) \
	X(udp_off_home) \
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
	X(up_sends) \
	X(upstream_wbuf_full) \
	X(upstream_udp_lost) \
	X(upstream_tc_retries) \
	X(upstream_write_stalled) \
	X(connects) \
	X(handshakes) \
	X(handshakes_resumed) \
	X(pin_failures) \
	X(handshake_failures) \
	X(conn_closed) \
	X(tcp_accepted) \
	X(tcp_refused) \
	X(tcp_closed_idle) \
	X(tcp_closed_slow) \
	X(tcp_evicted) \
	X(tcp_closed_memory) \
	X(tcp_answers_dropped) \
	X(tls_accepted) \
	X(tls_queries) \
	X(tls_handshakes) \
	X(tls_resumed) \
	X(tls_handshake_failures) \
	X(tls_handshake_timeouts) \
	X(tls_handshakes_deferred) \
	X(tls_errors) \
	X(tls_ratelimited) \
	X(https_accepted) \
	X(https_requests) \
	X(https_errors) \
	X(https_slow_closed) \
	X(h2_resets) \
	X(h2_goaway) \
	X(cache_hits) \
	X(cache_misses) \
	X(cache_stale_served) \
	X(cache_coalesced) \
	X(cache_prefetched) \
	X(cache_inserts) \
	X(cache_evictions) \
	X(handoff_sent) \
	X(handoff_received) \
	X(handoff_full)

/* X(name): gauges, a shard's current value; summed over shards; Prometheus
 * "gauge". */
#define DP_STATS_GAUGES(X) \
	X(tcp_open) \
	X(queries_inflight) \
	X(cache_entries) \
	X(cache_bytes)

/* X(name): peaks, a shard's highest value so far; the maximum over shards;
 * Prometheus "gauge". */
#define DP_STATS_PEAKS(X) \
	X(max_write_batch)

/* X(name): every value, in the order they are printed. */
#define DP_STATS_FIELDS(X) DP_STATS_COUNTERS(X) DP_STATS_GAUGES(X) DP_STATS_PEAKS(X)

typedef struct dp_stats {
#define DP_STATS_DECL(n) uint64_t n;
	DP_STATS_FIELDS(DP_STATS_DECL)
#undef DP_STATS_DECL
} dp_stats_t;

/* Fold one shard's values (read with relaxed loads while it runs) into acc,
 * which starts zeroed: counters and gauges add up, peaks take the maximum.
 * The one aggregation every reader uses. */
static inline void dp_stats_add(dp_stats_t *acc, const dp_stats_t *shard)
{
#define DP_STATS_SUM(f) acc->f += __atomic_load_n(&shard->f, __ATOMIC_RELAXED);
#define DP_STATS_MAX(f)                                                  \
	{                                                                \
		uint64_t v = __atomic_load_n(&shard->f, __ATOMIC_RELAXED); \
		if (v > acc->f)                                          \
			acc->f = v;                                      \
	}
	DP_STATS_COUNTERS(DP_STATS_SUM)
	DP_STATS_GAUGES(DP_STATS_SUM)
	DP_STATS_PEAKS(DP_STATS_MAX)
#undef DP_STATS_SUM
#undef DP_STATS_MAX
}

#endif
