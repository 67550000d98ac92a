/* control.h - the control thread (main): signals, reload, drain, and the
 * HTTP endpoint for /metrics and /healthz. Off the query path entirely. */
#ifndef DP_CONTROL_H
#define DP_CONTROL_H

#include "engine.h"

#include <signal.h>

#define DP_CONTROL_RETIRED 16 /* replaced configs waiting for a slow shard */

typedef struct dp_control {
	dp_shard_t *shards;
	int nshards;
	dp_config_t *cfg; /* current config, owned */
	int argc;
	char **argv; /* to re-read the command line over the file on reload */
	int metrics_fd; /* listening socket or -1 */
	uint32_t gen;
	/* Configs a reload replaced while a shard had not taken the new one
	 * yet (it may still read the old): freed once every shard has moved
	 * past retired_gen, or every shard has exited. */
	dp_config_t *retired[DP_CONTROL_RETIRED];
	uint32_t retired_gen[DP_CONTROL_RETIRED];
	int nretired;
} dp_control_t;

/* Bind the metrics listener (before privileges are dropped). Returns 0 or
 * a negative errno with a message in err. */
int dp_control_bind_metrics(dp_control_t *ctl, char *err, size_t errlen);

/* The signals the control loop takes (main blocks them in every thread
 * before any starts). */
void dp_control_signals(sigset_t *set);

/* Run until SIGTERM/SIGINT has drained every shard. Returns the exit code. */
int dp_control_run(dp_control_t *ctl);

/* Log the summed counters as one msg="stats" line. */
void dp_control_log_stats(dp_shard_t *shards, int n);

#endif
