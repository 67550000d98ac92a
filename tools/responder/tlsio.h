/* tlsio.h - the plaintext side of a connection's TLS: the turn's answer
 * batch (s->ob) encrypted with one SSL_write (last first under --reorder),
 * and what happens when TLS fails. The ciphertext stays in the
 * connection's write BIO (a BIO_s_mem) until conn.c moves it to a send.
 */
#ifndef DOT_RESPONDER_TLSIO_H
#define DOT_RESPONDER_TLSIO_H

#include "responder-t.h"

/* Encrypt the answer batch (s->ob, s->ob_len bytes) with one SSL_write on
 * c and empty the batch. Returns 0 (also when the batch was empty) or
 * DP_E_TLS. Hot path, no allocation. */
int tlsio_flush(shard_t *s, conn_t *c);

/* TLS failed on c: count it and close c once any alert BoringSSL queued
 * is sent. */
void tlsio_failed(shard_t *s, conn_t *c);

#endif
