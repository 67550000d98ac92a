/* upconn.h - one connection to an upstream (upconn.c): DNS-over-TLS, plain
 * TCP, or a connected UDP socket: connect, handshake, framing, the ID map,
 * write batching, send and receive completions, close. Types in upconn-t.h. The pool (pool.h) decides which
 * connection carries which query; a connection reports back to it only
 * through dp_upconn_ops_t. */
#ifndef DP_UPCONN_H
#define DP_UPCONN_H

#include "ring.h"
#include "shard-t.h"

/* Octets a connection may hold that its upstream has not taken: about 4,000
 * queries of 250 octets, far more than an upstream reading at all lets
 * build up; an upstream that stops reading costs at most this. */
#define DP_UPCONN_WBUF_MAX (1024u * 1024u)

/* The first slot of upstream u's stream connections (dgram false: TLS,
 * or TCP) or of its UDP sockets (dgram true), and how many there are. */
static inline uint32_t dp_upconn_first(const dp_upconns_t *t, uint32_t u, bool dgram)
{
	return u * t->per_upstream + (dgram ? t->streams : 0);
}
static inline uint32_t dp_upconn_count(const dp_upconns_t *t, bool dgram)
{
	return dgram ? t->per_upstream - t->streams : t->streams;
}

/* Set up the shard's connection table (every slot C_DOWN) reporting to
 * ops, over io_uring. Allocates the table (zero pages until used). Returns
 * 0 or -ENOMEM. */
int dp_upconn_init(dp_shard_t *s, const dp_upconn_ops_t *ops);
/* Close every fd and free every buffer, session and the table (after the
 * ring is gone: no completion may come back). Accepts a table never set up. */
void dp_upconn_free(dp_shard_t *s);

/* Connect slot ci (C_DOWN) to its upstream: socket, TLS session (resuming
 * the upstream's last one), handshake timer, connect. A UDP socket is
 * connected at once and is ready (ops->ready) before this returns.
 * Allocates its buffers on first use. Returns 0 or a negative code (the
 * slot stays C_DOWN). */
int dp_upconn_start(dp_shard_t *s, uint32_t ci);

/* Whether a query of len octets still fits in what c may hold unsent (the
 * TLS overhead of the batch is not counted: it is bounded by the batch). */
static inline bool dp_upconn_has_room(const dp_upconn_t *c, uint32_t len)
{
	return (uint64_t)c->batch.len + c->sendq.fill.len + len + 2u <= DP_UPCONN_WBUF_MAX;
}

/* Frame msg (len octets) with upstream ID id into ready connection ci's
 * batch: it leaves at the end of the turn (dp_upconn_flush) with the
 * batch's one SSL_write (TLS), send (TCP), or as its own datagram (UDP).
 * opt_off: where msg's OPT record starts (it is the last record), 0 when
 * it has none; over plain DNS our padding (and over UDP our keepalive) is
 * left out of the copy (RFC 7830, RFC 7828 3.2.1). Returns 0, -ENOBUFS
 * when the connection is full, or -ENOMEM. Hot path. */
int dp_upconn_write(dp_shard_t *s, uint32_t ci, const uint8_t *msg, uint16_t len, uint16_t id,
		    uint16_t opt_off);

/* Whether answer msg (len octets, a parsed question) read on UDP
 * connection ci spells its question name's letters in the case the query
 * with its ID was sent in: always true unless the upstream is ,0x20. */
bool dp_upconn_case_ok(const dp_shard_t *s, uint32_t ci, const uint8_t *msg, size_t len);

/* Fail or close connection ci (a no-op when it is closing or down): log
 * what and reason (a warning when health), drop its unsent batch, shut the
 * socket down and cancel its operations, tell the pool (ops->closed); the
 * slot is reused (ops->down) once its last operation has completed. */
void dp_upconn_fail(dp_shard_t *s, uint32_t ci, bool health, const char *what,
		    const char *reason);

/* A completion of operation op (OP_UP_*) for connection ci, generation gen,
 * result res. A completion of an older generation, or of no operation in
 * flight, is dropped. Hot path. */
void dp_upconn_on_cqe(dp_shard_t *s, enum dp_op op, uint32_t ci, uint32_t gen, int res);

/* End of a loop turn: one SSL_write and one send per connection with
 * queued queries. Hot path. */
void dp_upconn_flush(dp_shard_t *s);

/* Whether c's send in flight has taken no byte for limit_ms: its upstream
 * does not read. */
static inline bool dp_upconn_stalled(const dp_shard_t *s, const dp_upconn_t *c,
				     uint64_t limit_ms)
{
	return c->state == C_READY && c->sendq.inflight && s->now_ms - c->send_since_ms >= limit_ms;
}

/* Forget upstream u's resumable session (its settings changed). */
void dp_upconn_forget_session(dp_shard_t *s, uint32_t u);

/* Teardown: shut every connection's socket down (their operations end). */
void dp_upconn_close_all(dp_shard_t *s);

#endif
