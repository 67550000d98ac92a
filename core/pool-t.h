/* pool-t.h - the upstream pool's per-upstream state and the interface to
 * the query layer above it (types only; pool.h has the functions). */
#ifndef DP_POOL_T_H
#define DP_POOL_T_H

#include "config.h"
#include "dns.h"

struct dp_shard;

#define DP_LAT_BUCKETS 32

typedef struct dp_upstream_state {
	uint32_t fails; /* consecutive connect/handshake failures */
	uint32_t ewma_us; /* answer latency, moving average (1/8 weight) */
	uint32_t samples;
	uint32_t hist[DP_LAT_BUCKETS]; /* latency histogram, halved now and then */
	uint32_t hist_n;
	uint32_t hedge_ms; /* current hedge delay (about the p95) */
	uint64_t last_traffic_ms; /* last client query sent to it */
	uint32_t timeouts_in_row; /* queries that timed out since its last answer */
	bool ever_up; /* a handshake with it has succeeded */
	uint32_t sent; /* client queries sent to it (saturates) */
	uint64_t down_until_ms;
	uint32_t first_conn; /* index of its first connection slot */
} dp_upstream_state_t;

/* What the pool tells the owner of the query table: calls up, through this
 * struct only (set once per shard by dp_pool_init). Each is called from the
 * shard's thread. */
typedef struct dp_upstream_sink {
	/* The answer to query qi from upstream u, matched by ID and question and
	 * parsed with its record offsets (dp_dns_parse_answer_rrs).
	 * The callee answers and frees the query (detaching it from the pool,
	 * dp_pool_detach) or sends it again (a SERVFAIL: dp_pool_send). msg
	 * may be modified. Hot path. */
	void (*answer)(struct dp_shard *s, uint32_t qi, uint8_t *msg, size_t len,
		       const dp_dns_answer_t *a, int upstream);
	/* Query qi cannot be answered upstream (no upstream takes it, its
	 * answer is unusable, or its connection failed twice): the callee
	 * answers its clients (SERVFAIL) and frees it. */
	void (*fail)(struct dp_shard *s, uint32_t qi);
	/* Send a health probe on connection ci (dp_pool_send_on). Returns 0 or
	 * a negative code. */
	int (*probe)(struct dp_shard *s, uint32_t ci);
} dp_upstream_sink_t;

typedef struct dp_pool {
	dp_upstream_state_t up[DP_MAX_UPSTREAMS];
	uint8_t rr[DP_MAX_ZONES]; /* per zone: round-robin cursor over upstreams */
	uint32_t explore; /* fastest policy: counts picks, every Nth explores */
	uint32_t hedge_budget; /* earned by primary sends, spent by hedges */
	uint32_t hedge_delay_ms[DP_MAX_ZONES]; /* auto: smallest p95 among the zone's upstreams */
	const dp_upstream_sink_t *sink;
	/* UDP sockets that retired and have nothing in flight: closed at the
	 * end of the turn (dp_pool_end_turn), not from inside the detach
	 * that drained them, which may run under their own receive. */
	uint32_t *drained; /* room for every UDP slot (upconn.h), off the shard */
	uint32_t ndrained;
} dp_pool_t;

#endif
