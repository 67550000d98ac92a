/* pool.h - the shard's upstream pool (pool.c): which upstream and which
 * connection take a query, health and backoff, latency policy, hedging,
 * failover when a connection fails, idle and keepalive probes, reload.
 * Types in pool-t.h. It drives connections through upconn.h and reports to
 * the query table only through the sink given to dp_pool_init. */
#ifndef DP_POOL_H
#define DP_POOL_H

#include "shard-t.h"

/* Set up the pool and the shard's connection table; answers and failures
 * go to sink (kept, must outlive the shard). Allocates (upconn.h). Returns
 * 0 or -ENOMEM. */
int dp_pool_init(dp_shard_t *s, const dp_upstream_sink_t *sink);
/* Free the pool and every connection (after the ring is gone). */
void dp_pool_free(dp_shard_t *s);

/* Send query qi upstream: picks the upstream (never exclude_upstream when
 * >= 0, nor one that answered it SERVFAIL) and its connection. Returns 0,
 * or a negative code when no upstream can take it (the caller answers
 * SERVFAIL). Hot path. */
int dp_pool_send(dp_shard_t *s, uint32_t qi, int exclude_upstream);
/* Send query qi on connection ci (probes), connecting it when down.
 * Returns 0 or a negative code. */
int dp_pool_send_on(dp_shard_t *s, uint32_t qi, uint32_t ci);
/* Detach query qi from its connection and its hedge copy (answered, timed
 * out, failed): frees its IDs and its hedge timer. Hot path. */
void dp_pool_detach(dp_shard_t *s, uint32_t qi);
/* A query sent on connection ci timed out: a latency sample of the whole
 * timeout for its upstream; consecutive timeouts fail the connection and
 * mark the upstream down. */
void dp_pool_note_timeout(dp_shard_t *s, uint32_t ci);

/* End of a loop turn: close the UDP sockets that retired and drained (a
 * fresh port for the next query), then flush every connection's batch
 * (dp_upconn_flush). Hot path. */
void dp_pool_end_turn(dp_shard_t *s);

/* Per tick: stalled sends, keepalive probes and idle closes, the auto
 * hedge delay, probes that bring a down upstream back. (Handshake
 * deadlines and hedges are timers on the wheel.) */
void dp_pool_expire(dp_shard_t *s);
/* Per tick: publish per-upstream gauges (in flight, healthy). */
void dp_pool_publish(dp_shard_t *s);
/* After a reload (s->cfg is new, old the previous config): close the
 * connections of upstreams whose settings changed (their queries move to
 * the new upstreams) and reset their state. */
void dp_pool_reconfigure(dp_shard_t *s, const dp_config_t *old);

#endif
