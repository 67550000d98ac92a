/* udp-t.h - a UDP answer in flight (types only). */
#ifndef DP_UDP_T_H
#define DP_UDP_T_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct dp_udp_send {
	struct msghdr mh;
	struct iovec iov;
	struct sockaddr_in6 addr;
	uint32_t next_free;
	uint16_t len;
	uint8_t alen, li;
	uint8_t data[4096];
} dp_udp_send_t;

#endif
