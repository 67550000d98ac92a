/* udp.c - the UDP frontend: multishot recvmsg over the provided-buffer ring,
 * answers as sendmsg SQEs batched with everything else in the loop turn.
 *
 * Owns: the shard's UDP send slots (dp_udp_send_t), each holding one answer
 * until its send completes. When every slot is busy the answer goes out with
 * a plain sendto() instead of being dropped.
 */
#include "engine.h"
#include "log.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define DP_BGID 1

void dp_udp_arm(dp_shard_t *s, int li)
{
	if (s->udp_fd[li] < 0)
		return;
	s->udp_recv_mh.msg_namelen = sizeof(struct sockaddr_in6);
	s->udp_recv_mh.msg_controllen = 0;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_recvmsg_multishot(sqe, s->udp_fd[li], &s->udp_recv_mh, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = DP_BGID;
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UDP_RECV, (uint32_t)li, 0));
	s->udp_armed[li] = true;
	s->udp_live[li] = true;
}

void dp_udp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, int li)
{
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more)
		s->udp_live[li] = false;
	if (cqe->res < 0) {
		if (cqe->res == -ENOBUFS)
			STAT_INC(s, bufring_empty);
		else if (cqe->res != -ECANCELED)
			dp_warn("udp receive failed", "shard=%d err=\"%s\"", s->id,
				dp_strerror(cqe->res));
	}
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		uint8_t *buf = s->br_mem + (size_t)bid * s->br_size;
		struct io_uring_recvmsg_out *out =
			cqe->res > 0 ? io_uring_recvmsg_validate(buf, cqe->res, &s->udp_recv_mh) : NULL;
		if (out && out->namelen <= sizeof(struct sockaddr_in6)) {
			uint8_t *payload = io_uring_recvmsg_payload(out, &s->udp_recv_mh);
			unsigned plen = io_uring_recvmsg_payload_length(out, cqe->res, &s->udp_recv_mh);
			struct sockaddr_in6 from;
			memset(&from, 0, sizeof(from));
			memcpy(&from, io_uring_recvmsg_name(out), out->namelen);
			STAT_INC(s, udp_queries);
			/* A datagram longer than our buffer arrives cut short:
			 * the header still reads, the rest is a FORMERR. */
			if (out->flags & MSG_TRUNC)
				plen = DP_MIN(plen, (unsigned)DP_DNS_HDR_LEN);
			dp_query_from_client(s, T_UDP, payload, plen, li, &from, 0, 0);
		}
		dp_bufring_recycle(s, bid);
	}
	if (!more && s->reads_stopped) {
		/* Stopped reading to drain: datagrams that arrived before still
		 * sit in the socket; answer them too (bounded). */
		uint8_t buf[4096];
		for (int i = 0; i < 65536; i++) {
			struct sockaddr_in6 from;
			socklen_t flen = sizeof(from);
			memset(&from, 0, sizeof(from));
			ssize_t n = recvfrom(s->udp_fd[li], buf, sizeof(buf), MSG_DONTWAIT,
					     (struct sockaddr *)&from, &flen);
			if (n < 0)
				break;
			STAT_INC(s, udp_queries);
			dp_query_from_client(s, T_UDP, buf, (size_t)n, li, &from, 0, 0);
		}
		return;
	}
	if (!more && !s->stop && !s->reads_stopped) {
		/* Multishot ended (buffers ran out, or an error): re-arm now; the
		 * SQE goes in at the end of this turn, after this turn's buffers
		 * went back to the ring, so this cannot spin. */
		dp_udp_arm(s, li);
	}
}

void dp_udp_send(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, const uint8_t *msg,
		 size_t len)
{
	socklen_t alen = addr->sin6_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						       : sizeof(struct sockaddr_in);
	uint32_t slot = DP_NONE;
	if (s->send_free != DP_NONE) {
		slot = s->send_free;
		s->send_free = s->sends[slot].next_free;
	} else if (s->send_hiwater < s->send_cap) {
		slot = s->send_hiwater++;
	}
	if (slot == DP_NONE || len > sizeof(s->sends[0].data)) {
		STAT_INC(s, udp_send_sync);
		if (sendto(s->udp_fd[li], msg, len, MSG_DONTWAIT, (const struct sockaddr *)addr,
			   alen) < 0)
			STAT_INC(s, udp_send_errors);
		if (slot != DP_NONE) {
			s->sends[slot].next_free = s->send_free;
			s->send_free = slot;
		}
		return;
	}
	dp_udp_send_t *u = &s->sends[slot];
	memcpy(u->data, msg, len);
	memcpy(&u->addr, addr, alen);
	u->iov.iov_base = u->data;
	u->iov.iov_len = len;
	memset(&u->mh, 0, sizeof(u->mh));
	u->mh.msg_name = &u->addr;
	u->mh.msg_namelen = alen;
	u->mh.msg_iov = &u->iov;
	u->mh.msg_iovlen = 1;
	struct io_uring_sqe *sqe = dp_sqe(s);
	io_uring_prep_sendmsg(sqe, s->udp_fd[li], &u->mh, 0);
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UDP_SEND, slot, 0));
}

void dp_udp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t slot)
{
	if (cqe->res < 0)
		STAT_INC(s, udp_send_errors);
	if (slot < s->send_hiwater) {
		s->sends[slot].next_free = s->send_free;
		s->send_free = slot;
	}
}
