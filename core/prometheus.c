/* prometheus.c - Prometheus text exposition of the shards' counters and
 * metrics, summed over shards with relaxed loads (control thread). */
#include "prometheus.h"
#include "shard-t.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const qtype_names[DP_QTYPE_CLASSES] = {
	"A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS", "SVCB", "other",
};
static const char *const rcode_names[DP_RCODES] = {
	"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
};
/* Histogram bucket bounds as Prometheus writes them (metrics.c: in us). */
static const char *const bound_s[DP_HIST_BUCKETS] = {
	"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
	"0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
};

static inline uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

typedef struct out {
	char *buf;
	size_t cap, len;
	bool full;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
	if (o->full)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= o->cap - o->len) {
		o->full = true;
		/* cut back to the last complete line */
		while (o->len > 0 && o->buf[o->len - 1] != '\n')
			o->len--;
		o->buf[o->len] = 0;
		return;
	}
	o->len += (size_t)n;
}

static void hist_sum(dp_hist_t *acc, const dp_hist_t *h)
{
	for (int i = 0; i <= DP_HIST_BUCKETS; i++)
		acc->b[i] += ld(&h->b[i]);
	acc->sum_us += ld(&h->sum_us);
	acc->count += ld(&h->count);
}

static void hist_put(out_t *o, const char *name, const char *labels, const dp_hist_t *h)
{
	uint64_t cum = 0;
	const char *sep = labels[0] ? "," : "";
	for (int i = 0; i < DP_HIST_BUCKETS; i++) {
		cum += h->b[i];
		put(o, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, bound_s[i],
		    (unsigned long long)cum);
	}
	cum += h->b[DP_HIST_BUCKETS];
	put(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
	const char *lb = labels[0] ? "{" : "", *rb = labels[0] ? "}" : "";
	put(o, "%s_sum%s%s%s %.6f\n", name, lb, labels, rb, h->sum_us / 1e6);
	/* The count is the buckets' total, read in the same pass: the writer
	 * may have counted one more observation since (relaxed reads), and
	 * Prometheus wants +Inf == _count. */
	put(o, "%s_count%s%s%s %llu\n", name, lb, labels, rb, (unsigned long long)cum);
}

/* An upstream is healthy when some shard reaches it; failing when a shard
 * failed and none reaches it; healthy while no shard has tried it yet. */
static bool upstream_healthy(struct dp_shard *shards, int n, int u)
{
	bool failing = false;
	for (int i = 0; i < n; i++) {
		uint64_t h = ld(&shards[i].metrics.up[u].healthy);
		if (h == 1)
			return true;
		if (h == 2)
			failing = true;
	}
	return !failing;
}

/* The HELP and TYPE lines of metric name. */
static void head(out_t *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One plain metric without labels. */
static void put_one(out_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
	head(o, name, type, help);
	put(o, "%s %llu\n", name, (unsigned long long)v);
}

/* What clients asked and were answered: by transport and type, by rcode. */
static void put_client(out_t *o, struct dp_shard *shards, int n)
{
	head(o, "dotproxy_queries_total", "counter",
	     "Client queries received, by transport and query type.");
	static const char *const transports[DP_MT_TRANSPORTS] = { "udp", "tcp", "tls", "https" };
	for (int t = 0; t < DP_MT_TRANSPORTS; t++)
		for (int c = 0; c < DP_QTYPE_CLASSES; c++) {
			uint64_t v = 0;
			for (int i = 0; i < n; i++)
				v += ld(&shards[i].metrics.qtype[t][c]);
			put(o, "dotproxy_queries_total{transport=\"%s\",qtype=\"%s\"} %llu\n",
			    transports[t], qtype_names[c], (unsigned long long)v);
		}
	head(o, "dotproxy_answers_total", "counter", "Answers sent to clients, by rcode.");
	for (int r = 0; r < DP_RCODES; r++) {
		uint64_t v = 0;
		for (int i = 0; i < n; i++)
			v += ld(&shards[i].metrics.rcode[r]);
		put(o, "dotproxy_answers_total{rcode=\"%s\"} %llu\n", rcode_names[r],
		    (unsigned long long)v);
	}
	dp_hist_t h;
	memset(&h, 0, sizeof(h));
	for (int i = 0; i < n; i++)
		hist_sum(&h, &shards[i].metrics.client_lat);
	head(o, "dotproxy_query_duration_seconds", "histogram",
	     "Client-seen latency of queries sent upstream (arrival to answer).");
	hist_put(o, "dotproxy_query_duration_seconds", "", &h);
}

/* Every plain counter as an event; every gauge and peak under its own name
 * (stats.h says which is which); then the few counters with names of their
 * own that dashboards use. */
static void put_internal(out_t *o, const dp_stats_t *st)
{
	head(o, "dotproxy_events_total", "counter", "Internal counters (see docs/ARCHITECTURE.md).");
#define DP_PUT(f) put(o, "dotproxy_events_total{event=\"%s\"} %llu\n", #f, (unsigned long long)st->f);
	DP_STATS_COUNTERS(DP_PUT)
#undef DP_PUT
#define DP_PUT_SUMMED(f) put_one(o, "dotproxy_" #f, "gauge", "Internal gauge, summed over shards.", st->f);
#define DP_PUT_PEAK(f) put_one(o, "dotproxy_" #f, "gauge", "Internal peak, the highest of the shards.", st->f);
	DP_STATS_GAUGES(DP_PUT_SUMMED)
	DP_STATS_PEAKS(DP_PUT_PEAK)
#undef DP_PUT_PEAK
#undef DP_PUT_SUMMED
	put_one(o, "dotproxy_cache_hits_total", "counter", "Answers served from the cache.",
		st->cache_hits);
	put_one(o, "dotproxy_cache_misses_total", "counter", "Cache look-ups that missed.",
		st->cache_misses);
	put_one(o, "dotproxy_tcp_connections", "gauge", "Open client TCP connections.", st->tcp_open);
	put_one(o, "dotproxy_dropped_total", "counter",
		"Client messages dropped (unreadable, responses, rate limit).",
		st->dropped + st->ratelimited);
	put_one(o, "dotproxy_malformed_total", "counter",
		"Malformed client queries answered FORMERR.", st->formerr);
	put_one(o, "dotproxy_bufring_empty_total", "counter",
		"Receives that found the provided-buffer ring empty.", st->bufring_empty);
}

/* The zone upstream u serves, as a label value ("cluster.local.", "."). */
static const char *zone_of(const dp_config_t *cfg, int u)
{
	return cfg->zone[cfg->upstream[u].zone].text;
}

/* Client queries per forwarding zone (cache hits included). */
static void put_zones(out_t *o, struct dp_shard *shards, int n, const dp_config_t *cfg)
{
	head(o, "dotproxy_zone_queries_total", "counter",
	     "Client queries per forwarding zone (--forward), cache hits included.");
	for (int z = 0; z < cfg->nzones; z++) {
		uint64_t v = 0;
		for (int i = 0; i < n; i++)
			v += ld(&shards[i].metrics.zone_queries[z]);
		put(o, "dotproxy_zone_queries_total{zone=\"%s\"} %llu\n", cfg->zone[z].text,
		    (unsigned long long)v);
	}
}

/* The per-upstream counters, summed over shards. */
static void put_upstream_counters(out_t *o, struct dp_shard *shards, int n, const dp_config_t *cfg)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} upc[] = {
		{ "queries", "Queries written to the upstream (hedges included).", offsetof(dp_upmetrics_t, sent) },
		{ "answers", "Answers accepted from the upstream.", offsetof(dp_upmetrics_t, answers) },
		{ "errors", "Connections to the upstream that failed.", offsetof(dp_upmetrics_t, errors) },
		{ "timeouts", "Queries that timed out waiting for the upstream.", offsetof(dp_upmetrics_t, timeouts) },
		{ "reconnects", "Connections opened to the upstream.", offsetof(dp_upmetrics_t, connects) },
		{ "handshakes", "TLS handshakes completed.", offsetof(dp_upmetrics_t, handshakes) },
		{ "resumed_handshakes", "TLS handshakes that resumed a session.", offsetof(dp_upmetrics_t, resumed) },
	};
	for (size_t k = 0; k < DP_ARRAY_LEN(upc); k++) {
		put(o, "# HELP dotproxy_upstream_%s_total %s\n", upc[k].name, upc[k].help);
		put(o, "# TYPE dotproxy_upstream_%s_total counter\n", upc[k].name);
		for (int u = 0; u < cfg->nupstream; u++) {
			uint64_t v = 0;
			for (int i = 0; i < n; i++)
				v += ld((const uint64_t *)((const uint8_t *)&shards[i].metrics.up[u] + upc[k].off));
			put(o, "dotproxy_upstream_%s_total{upstream=\"%s\",zone=\"%s\"} %llu\n",
			    upc[k].name, cfg->upstream[u].text, zone_of(cfg, u), (unsigned long long)v);
		}
	}
}

/* Per upstream: queries waiting, health, round-trip histogram. */
static void put_upstream_state(out_t *o, struct dp_shard *shards, int n, const dp_config_t *cfg)
{
	head(o, "dotproxy_upstream_inflight", "gauge", "Queries waiting for the upstream.");
	for (int u = 0; u < cfg->nupstream; u++) {
		uint64_t v = 0;
		for (int i = 0; i < n; i++)
			v += ld(&shards[i].metrics.up[u].inflight);
		put(o, "dotproxy_upstream_inflight{upstream=\"%s\",zone=\"%s\"} %llu\n",
		    cfg->upstream[u].text, zone_of(cfg, u), (unsigned long long)v);
	}
	head(o, "dotproxy_upstream_healthy", "gauge",
	     "1 when the upstream is usable (not backing off after failures).");
	for (int u = 0; u < cfg->nupstream; u++)
		put(o, "dotproxy_upstream_healthy{upstream=\"%s\",zone=\"%s\"} %d\n",
		    cfg->upstream[u].text, zone_of(cfg, u), upstream_healthy(shards, n, u) ? 1 : 0);
	head(o, "dotproxy_upstream_rtt_seconds", "histogram", "Round trip of queries to the upstream.");
	for (int u = 0; u < cfg->nupstream; u++) {
		dp_hist_t h;
		memset(&h, 0, sizeof(h));
		for (int i = 0; i < n; i++)
			hist_sum(&h, &shards[i].metrics.up[u].rtt);
		char lab[900];
		snprintf(lab, sizeof(lab), "upstream=\"%s\",zone=\"%s\"", cfg->upstream[u].text,
			 zone_of(cfg, u));
		hist_put(o, "dotproxy_upstream_rtt_seconds", lab, &h);
	}
}

size_t dp_metrics_render(struct dp_shard *shards, int n, const dp_config_t *cfg, char *buf,
			 size_t cap)
{
	out_t o = { buf, cap, 0, false };
	buf[0] = 0;
	dp_stats_t st;
	memset(&st, 0, sizeof(st));
	for (int i = 0; i < n; i++)
		dp_stats_add(&st, &shards[i].stats);
	put_client(&o, shards, n);
	put_internal(&o, &st);
	put_zones(&o, shards, n, cfg);
	put_upstream_counters(&o, shards, n, cfg);
	put_upstream_state(&o, shards, n, cfg);
	return o.len;
}

bool dp_metrics_healthy(struct dp_shard *shards, int n, const dp_config_t *cfg)
{
	for (int u = 0; u < cfg->nupstream; u++)
		if (upstream_healthy(shards, n, u))
			return true;
	return false;
}
