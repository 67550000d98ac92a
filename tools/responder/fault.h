/* fault.h - dot-responder's fault injection: the dice (a per-shard
 * xorshift sequence), what happens to one answer (drop, wrong ID or name,
 * delay, close after N, torn record), the FIFOs of delayed answers and held
 * handshakes, the idle list, and the timers that act on them once a turn.
 *
 * Nothing here runs unless a fault flag is set (behave_t in responder-t.h
 * says where each is tested). Owns the entries of the two FIFOs (malloc per
 * entry, the fault path only).
 */
#ifndef DOT_RESPONDER_FAULT_H
#define DOT_RESPONDER_FAULT_H

#include "responder-t.h"

/* Codes fault_answer() returns to stop dp_tcpframe_split() (beside DP_E_*). */
#define FAULT_STOP (DP_E_BASE - 100) /* --close-after reached: close_notify, close */
#define FAULT_RESET (DP_E_BASE - 101) /* torn record queued: reset once it is sent */

/* on_message() for a connection with faults: the answer (n bytes) was built
 * at frame + 2, behind the batch. Decides its fate: dropped, altered,
 * added to the batch, delayed (allocates) or torn. Returns 0, FAULT_STOP or
 * FAULT_RESET. Only with fault flags. */
int fault_answer(shard_t *s, conn_t *c, uint8_t *frame, int n);

/* --handshake-delay-ms: the ClientHello of c arrived. True while the
 * handshake must wait (the first call queues c, allocating; without memory
 * it goes on at once); fault_timers() lets it go. */
bool fault_hold_handshake(shard_t *s, conn_t *c);

/* close_notify after what is already written, then close once it is sent.
 * Queries still unread are dropped (a socket closed with unread data
 * resets), and so are answers still in the delay queue. */
void fault_close_notify(shard_t *s, conn_t *c);

/* --idle-close-ms: c was active now (moves it to the tail of the idle
 * list, adding it when absent). O(1). */
void fault_idle_touch(shard_t *s, conn_t *c);

/* Take c off the idle list (no-op when it is not on it). O(1). */
void fault_idle_unlink(shard_t *s, conn_t *c);

/* How long the loop may sleep before a delayed answer, a held handshake or
 * an idle close is due, in *ts. False: nothing is due. Reads the clock. */
bool fault_wait(shard_t *s, struct __kernel_timespec *ts);

/* Once a turn, after the completions (s->now_ms is fresh): send the delayed
 * answers that are due, let the held handshakes that are due go on, and
 * close_notify the connections idle for --idle-close-ms. Frees the entries
 * it takes. */
void fault_timers(shard_t *s);

/* Free every entry still queued (shard end). */
void fault_free_queues(shard_t *s);

#endif
