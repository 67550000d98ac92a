/* shard.h - one dot-responder shard: a thread with its own io_uring, its
 * SO_REUSEPORT listeners, a provided-buffer ring for receives, a table of
 * connection slots and a pool of send buffers. Shards share nothing but the
 * read-only SSL_CTX and behaviour. A listener is TLS (--listen) or plain
 * TCP (--listen-tcp); its connections differ only in their stream.
 *
 * One loop turn:
 *
 *   submit_and_wait (one syscall for every SQE queued by the previous turn)
 *   for each CQE: accept -> conn_open(); recv -> conn_on_recv() (feeds the
 *                 read BIO, marks the slot dirty); send -> conn_on_send()
 *   with timed faults: fault_timers()
 *   for each dirty slot: conn_service() (one stream write, one send)
 *
 * Owns everything in the shard_t but the settings main.c fills in (see
 * shard_t in responder-t.h): the ring, the receive buffers, the slot table,
 * the send-buffer pool, the batch buffers and the fault queues.
 */
#ifndef DOT_RESPONDER_SHARD_H
#define DOT_RESPONDER_SHARD_H

#include "responder-t.h"

/* Start the thread of s (its settings filled in). It sets the shard up,
 * reports to shard_wait_ready(), runs the loop until shard_wake(), then
 * frees what it set up. Returns 0 or a positive pthread error. */
int shard_start(shard_t *s);

/* Wait until n started shards have finished their set-up. Returns how many
 * failed it (each printed why). */
int shard_wait_ready(int n);

/* Ask s to stop (writes its eventfd; the thread still needs joining).
 * Returns 0 or -1 when the write failed. */
int shard_wake(shard_t *s);

#endif
