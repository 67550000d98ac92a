/* prometheus.h - the /metrics text (Prometheus format 0.0.4) and /healthz's
 * verdict, read from every shard by the control thread (prometheus.c). */
#ifndef DP_PROMETHEUS_H
#define DP_PROMETHEUS_H

#include "config.h"

struct dp_shard;
/* Render every metric, summed over n shards, into buf. Returns the length
 * (truncated output is still valid text, cut at a line). */
size_t dp_metrics_render(struct dp_shard *shards, int n, const dp_config_t *cfg, char *buf,
			 size_t cap);

/* True while at least one upstream is healthy in at least one shard. */
bool dp_metrics_healthy(struct dp_shard *shards, int n, const dp_config_t *cfg);

#endif
