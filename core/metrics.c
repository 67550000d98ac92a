/* metrics.c - what shards record beyond plain counters: query-type classes
 * and latency histograms (prometheus.c renders them). */
#include "metrics.h"

/* Bucket upper bounds in microseconds (prometheus.c writes them in seconds). */
static const uint64_t bound_us[DP_HIST_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};
int dp_metrics_qtype_class(uint16_t qtype)
{
	switch (qtype) {
	case 1: return 0;
	case 28: return 1;
	case 5: return 2;
	case 15: return 3;
	case 2: return 4;
	case 12: return 5;
	case 6: return 6;
	case 33: return 7;
	case 16: return 8;
	case 65: return 9;
	case 64: return 10;
	default: return 11;
	}
}

void dp_hist_observe(dp_hist_t *h, uint64_t us)
{
	int i = 0;
	while (i < DP_HIST_BUCKETS && us > bound_us[i])
		i++;
	M_INC(h->b[i]);
	M_ADD(h->sum_us, us);
	M_INC(h->count);
}

