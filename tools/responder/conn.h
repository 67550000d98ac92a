/* conn.h - one connection of a shard, DNS over TLS (--listen) or plain DNS
 * over TCP (--listen-tcp): its slot (open, close, reset, release once no
 * SQE is in flight), its receive and send completions, and the end-of-turn
 * service: handshake (TLS), read the stream, split the 2-byte-length frames
 * (RFC 7766, RFC 7858), answer them all into one batch, one stream write,
 * one send.
 *
 * The stream (stream.h) is a pair of BIO_s_mem per connection, with TLS
 * over it or not; io_uring moves only what is on the wire. Owns each open
 * connection's stream (SSL and BIOs), its carry buffer (a partial DNS
 * message, malloc, rare) and, while a send is in flight, one send buffer
 * from the shard's pool.
 */
#ifndef DOT_RESPONDER_CONN_H
#define DOT_RESPONDER_CONN_H

#include "responder-t.h"

/* A freshly accepted socket fd: takes a free slot, allocates its stream
 * (the BIOs, and the SSL object unless plain), arms the first receive.
 * Without a slot or memory, closes fd (counted as rejected). Takes
 * ownership of fd. */
void conn_open(shard_t *s, int fd, bool plain);

/* Close c now (no-op unless open): frees its stream and carry; the slot is
 * released once the SQEs still in flight have completed. */
void conn_close(shard_t *s, conn_t *c);

/* A receive completed for c (gen: the generation in its user_data): the
 * bytes go into c's read BIO, the buffer back to the ring, and c is
 * marked dirty. Hot path. */
void conn_on_recv(shard_t *s, conn_t *c, uint32_t gen, struct io_uring_cqe *cqe);

/* A send completed for c: the rest of a partial send goes first, else the
 * send buffer returns to the pool and c is marked dirty. Hot path. */
void conn_on_send(shard_t *s, conn_t *c, struct io_uring_cqe *cqe);

/* End-of-turn work for a dirty connection: handshake (TLS), read, answer,
 * one stream write, one send, re-arm the receive unless output is backed up,
 * or close. Hot path. */
void conn_service(shard_t *s, conn_t *c);

#endif
