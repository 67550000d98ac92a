/* stream.h - a connection's byte stream, TLS or plain. Either way the
 * connection has a pair of BIO_s_mem: receives are written into the read
 * BIO, and what is to be sent collects in the write BIO until conn.c moves
 * it to a send. A TLS connection (--listen) runs BoringSSL over the pair
 * (the SSL owns both BIOs); a plain one (--listen-tcp) uses them as byte
 * queues with nothing in between. Everything above (framing, answers,
 * faults, sends) is the same code for both.
 *
 * Also the turn's answer batch (s->ob): written with one stream write
 * (one SSL_write on TLS), last answer first under --reorder.
 */
#ifndef DOT_RESPONDER_STREAM_H
#define DOT_RESPONDER_STREAM_H

#include "responder-t.h"

/* stream_read() results besides a byte count (> 0). */
enum {
	STREAM_AGAIN = 0, /* the read BIO is drained: wait for the next receive */
	STREAM_EOF = -1, /* TLS close_notify from the peer */
	STREAM_ERR = -2, /* TLS failed */
};

/* Make c's stream: the BIO pair, and the SSL over it unless plain (a plain
 * connection has no handshake: hs_done is set). Allocates; returns 0 or
 * -ENOMEM (nothing left allocated). */
int stream_open(shard_t *s, conn_t *c, bool plain);

/* Free c's SSL and BIOs (none: no-op). */
void stream_free(conn_t *c);

/* Plaintext out of the read BIO into buf (cap > 0 bytes): a byte count,
 * or STREAM_AGAIN, STREAM_EOF, STREAM_ERR. Hot path. */
int stream_read(conn_t *c, uint8_t *buf, size_t cap);

/* Queue len bytes (one or more framed answers) for sending: one
 * SSL_write on TLS (counted in tls_writes), a copy into the write BIO on a
 * plain connection. Returns 0 or DP_E_TLS (the error queue is cleared). */
int stream_write(shard_t *s, conn_t *c, const uint8_t *p, size_t len);

/* Write the answer batch (s->ob, s->ob_len bytes) with one stream_write()
 * and empty the batch. Returns 0 (also when the batch was empty) or
 * DP_E_TLS. Hot path, no allocation. */
int stream_flush(shard_t *s, conn_t *c);

/* Stop writing on c: queue our close_notify on TLS; a plain connection
 * has nothing to say (its close is the FIN). Sets c->tls_shut. */
void stream_shutdown(conn_t *c);

/* The stream failed on c: count it (tls_errors) and close c once any
 * alert BoringSSL queued is sent. */
void stream_failed(shard_t *s, conn_t *c);

#endif
