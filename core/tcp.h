/* tcp.h - the TCP frontend's io_uring transport (tcp.c) under tcpconn.h. */
#ifndef DP_TCP_H
#define DP_TCP_H

#include "shard-t.h"

void dp_tcp_arm_accept(dp_shard_t *s, int li);
void dp_tcp_on_accept(dp_shard_t *s, struct io_uring_cqe *cqe, int li);
void dp_tcp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);
void dp_tcp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);
/* Queue an answer (copied, framed) to client connection idx/gen; dropped if
 * the connection is gone. Hot path. */
void dp_tcp_answer(dp_shard_t *s, uint32_t idx, uint32_t gen, const uint8_t *msg, size_t len);
/* Close idle clients whose time is up. */
void dp_tcp_expire(dp_shard_t *s);
/* End of a loop turn: one send per connection with queued answers. */
void dp_tcp_flush(dp_shard_t *s);
/* Drain: stop reading from every client connection (answers still go). */
void dp_tcp_stop_reading(dp_shard_t *s);
/* True when no client connection has a receive in the kernel, nor is
 * paused with frames or its socket still to read. */
bool dp_tcp_reads_done(dp_shard_t *s);
/* True when no client connection has answers waiting or being sent. */
bool dp_tcp_idle_output(dp_shard_t *s);
/* Teardown: shut every client socket; dp_tcp_free after the ring is gone. */
void dp_tcp_close_all(dp_shard_t *s);
void dp_tcp_free(dp_shard_t *s);
void dp_tcp_close(dp_shard_t *s, uint32_t idx);
/* Set up the shard's client table (--max-tcp-clients / shards). Allocates;
 * returns 0 or -ENOMEM. */
int dp_tcp_init(dp_shard_t *s);
/* A query of client connection idx/gen is in flight / finished. Hot path. */
void dp_tcp_query_begin(dp_shard_t *s, uint32_t idx, uint32_t gen);
void dp_tcp_query_end(dp_shard_t *s, uint32_t idx, uint32_t gen);
/* Once per loop turn, before the flushes (no frame, answer or query end on
 * the stack): resume the client connections paused by backpressure whose
 * turn has come (a query of theirs ended, or a slot freed for those refused
 * their fair share). Dispatches held frames: makes queries and answers. */
void dp_tcp_resume_pending(dp_shard_t *s);
/* After a reload: adopt --max-inflight-per-conn. */
void dp_tcp_reconfigure(dp_shard_t *s);

#endif
