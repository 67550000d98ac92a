/* udp.h - the UDP frontend (udp.c): receives datagrams, hands each query to
 * the query layer as a T_UDP client, sends the answers it gets back through
 * its ops (s->fe[T_UDP]). */
#ifndef DP_UDP_H
#define DP_UDP_H

#include "shard-t.h"

#include <netinet/in.h>

/* Start (again) the multishot receive on listen socket li. */
void dp_udp_arm(dp_shard_t *s, int li);
/* A receive completion of listen socket li: the datagram, if any, goes to
 * the query layer; the buffer back to its ring. Re-arms a receive that
 * ended, unless draining (then reads what is left in the socket). Hot
 * path. */
void dp_udp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, int li);
/* A send completion for send slot slot: frees the slot. */
void dp_udp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t slot);
/* Set up the send slots and register the frontend's ops (s->fe[T_UDP]).
 * Allocates. Returns 0 or -ENOMEM. */
int dp_udp_init(dp_shard_t *s);
/* Free the send slots (after the ring is gone). */
void dp_udp_free(dp_shard_t *s);

#endif
