/* upstream.h - upstream DoT connections and their pool (upstream.c). */
#ifndef DP_UPSTREAM_H
#define DP_UPSTREAM_H

#include "ring.h"
#include "shard-t.h"

int dp_upstream_init(dp_shard_t *s);
void dp_upstream_free(dp_shard_t *s);
/* Send query qi upstream (picks upstream and connection). Returns 0, or a
 * negative code when no upstream can take it (caller answers SERVFAIL). */
int dp_upstream_send(dp_shard_t *s, uint32_t qi, int exclude_upstream);
/* Detach query qi from its connection (timeout/answer): frees its ID. */
void dp_upstream_detach(dp_shard_t *s, uint32_t qi);
void dp_upstream_on_cqe(dp_shard_t *s, struct io_uring_cqe *cqe, enum dp_op op, uint32_t idx,
			uint32_t gen);
/* End of a loop turn: one SSL_write and one send per connection with
 * queued queries. Hot path. */
void dp_upstream_flush(dp_shard_t *s);
/* Per tick: hedge delays, keepalive probes, idle closes, probes that bring
 * a down upstream back. (Handshake deadlines are timers on the wheel.) */
void dp_upstream_expire(dp_shard_t *s);
/* A query sent on connection ci timed out: a latency sample of the whole
 * timeout for its upstream; consecutive timeouts mark the upstream down. */
void dp_upstream_note_timeout(dp_shard_t *s, uint32_t ci);
/* Send query qi on connection ci (probes). */
int dp_upstream_send_on(dp_shard_t *s, uint32_t qi, uint32_t ci);
void dp_upstream_close_all(dp_shard_t *s);
/* After a reload: close connections of upstreams whose settings changed
 * (their queries move to the new upstreams), reset their state. */
void dp_upstream_reconfigure(dp_shard_t *s, const dp_config_t *old);
/* Tick: publish per-upstream gauges (in flight, healthy). */
void dp_upstream_publish(dp_shard_t *s);

#endif
