/* udp.h - the UDP frontend (udp.c). */
#ifndef DP_UDP_H
#define DP_UDP_H

#include "shard-t.h"

#include <netinet/in.h>

void dp_udp_arm(dp_shard_t *s, int li);
void dp_udp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, int li);
void dp_udp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t slot);
int dp_udp_init(dp_shard_t *s);
void dp_udp_free(dp_shard_t *s);
/* Send msg (len octets) to addr on listen socket li; copies msg. Hot path. */
void dp_udp_send(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, const uint8_t *msg,
		 size_t len);

#endif
