/* tcp.h - the TCP frontend's io_uring transport (tcp.c) under tcpconn.h:
 * hands each query to the query layer as a T_TCP client and answers through
 * its ops (s->fe[T_TCP]). */
#ifndef DP_TCP_H
#define DP_TCP_H

#include "shard-t.h"

/* ---- set-up and teardown ---- */

/* Set up the shard's client table (--max-tcp-clients / shards: TCP and TLS
 * clients together), its TLS layer when it has TLS listeners, and register
 * the frontend's ops (s->fe[T_TCP]). Allocates; returns 0 or -ENOMEM. */
int dp_tcp_init(dp_shard_t *s);
/* After a reload: adopt --max-inflight-per-conn. */
void dp_tcp_reconfigure(dp_shard_t *s);
/* Teardown: shut every client socket; dp_tcp_free after the ring is gone. */
void dp_tcp_close_all(dp_shard_t *s);
/* Free the client table and its buffers (after the ring is gone). */
void dp_tcp_free(dp_shard_t *s);

/* ---- completions (engine.c dispatches them) ---- */

/* Start (again) the multishot accept on listener li (li | DP_LI_TLS:
 * encrypted listener li, dp_config_enc), not when stopping. */
void dp_tcp_arm_accept(dp_shard_t *s, int li);
/* Drain: cancel that accept for good (it is not armed again). */
void dp_tcp_cancel_accept(dp_shard_t *s, int li);
/* An accept completion of listener li: the ACL, then a connection slot. */
void dp_tcp_on_accept(dp_shard_t *s, struct io_uring_cqe *cqe, int li);
/* A receive / send completion of connection idx/gen (stale ones dropped by
 * tcpconn). Hot path. */
void dp_tcp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);
void dp_tcp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);
/* A ciphertext send completion of TLS connection idx/gen (OP_TLS_SEND). */
void dp_tcp_on_tls_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);

/* ---- once per loop turn ---- */

/* Before the flushes (no frame, answer or query end on the stack): resume
 * the client connections paused by backpressure whose turn has come (a
 * query of theirs ended, or a slot freed for those refused their fair
 * share). Dispatches held frames: makes queries and answers. */
void dp_tcp_resume_pending(dp_shard_t *s);
/* True when TLS handshakes wait for the next turn's budget: do not sleep. */
bool dp_tcp_more(const dp_shard_t *s);
/* End of a loop turn: one send per connection with queued answers. */
void dp_tcp_flush(dp_shard_t *s);
/* Close idle clients whose time is up. */
void dp_tcp_expire(dp_shard_t *s);
/* Close client connection idx (any generation). */
void dp_tcp_close(dp_shard_t *s, uint32_t idx);

/* ---- drain (SIGTERM) ---- */

/* Stop reading from every client connection (answers still go). */
void dp_tcp_stop_reading(dp_shard_t *s);
/* True when no client connection has a receive in the kernel, nor is
 * paused with frames or its socket still to read. */
bool dp_tcp_reads_done(dp_shard_t *s);
/* True when no client connection has answers waiting or being sent. */
bool dp_tcp_idle_output(dp_shard_t *s);

#endif
