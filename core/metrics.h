/* metrics.h - per-shard metrics beyond the plain counters (stats.h).
 *
 * Shards write their own dp_metrics_t with relaxed stores (M_INC etc.);
 * prometheus.h renders them for the control thread.
 */
#ifndef DP_METRICS_H
#define DP_METRICS_H

#include "config.h"
#include "stats.h"

#define DP_QTYPE_CLASSES 12 /* A AAAA CNAME MX NS PTR SOA SRV TXT HTTPS SVCB other */
#define DP_RCODES 7 /* NOERROR FORMERR SERVFAIL NXDOMAIN NOTIMP REFUSED other */
#define DP_HIST_BUCKETS 14 /* finite bounds; one more for +Inf */

/* The transport label of client metrics. */
enum { DP_MT_UDP = 0, DP_MT_TCP, DP_MT_TLS, DP_MT_HTTPS, DP_MT_TRANSPORTS };

typedef struct dp_hist {
	uint64_t b[DP_HIST_BUCKETS + 1]; /* per bucket, not cumulative */
	uint64_t sum_us;
	uint64_t count;
} dp_hist_t;

typedef struct dp_upmetrics {
	uint64_t sent, answers, errors, timeouts, connects, handshakes, resumed;
	uint64_t inflight; /* gauge, published each tick */
	uint64_t healthy; /* 0 not tried, 1 up, 2 failing; published each tick */
	dp_hist_t rtt;
} dp_upmetrics_t;

typedef struct dp_metrics {
	uint64_t qtype[DP_MT_TRANSPORTS][DP_QTYPE_CLASSES]; /* [transport][class] */
	uint64_t rcode[DP_RCODES];
	dp_hist_t client_lat; /* arrival to answer, queries that went upstream */
	dp_upmetrics_t up[DP_MAX_UPSTREAMS];
	uint64_t zone_queries[DP_MAX_ZONES]; /* client queries routed to zone z */
} dp_metrics_t;

#define M_ADD(p, v) __atomic_store_n(&(p), (p) + (v), __ATOMIC_RELAXED)
#define M_INC(p) M_ADD(p, 1)
#define M_SET(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELAXED)

/* Index of a query type in the qtype classes. */
int dp_metrics_qtype_class(uint16_t qtype);

/* Record a latency in microseconds into h (writer: its shard). */
void dp_hist_observe(dp_hist_t *h, uint64_t us);

#endif
