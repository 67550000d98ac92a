/* udp.c - the UDP frontend: multishot recvmsg over the provided-buffer
 * ring; each answer is a send SQE with the client's address (sendmsg on
 * kernels before 6.1), batched with everything else in the loop turn.
 * (A recvmmsg/sendmmsg mode measured equal and was removed; its figures
 * stay in bench/RESULTS.md.)
 *
 * Owns: the shard's UDP send slots (dp_udp_send_t), each holding one answer
 * until its send completes. When every slot is busy the answer goes out
 * with a plain sendto() instead of being dropped.
 *
 * Each datagram becomes a dp_client_t (client-t.h: address, listen index)
 * for the query layer, which answers through udp_ops (s->fe[T_UDP]).
 */
#include "udp.h"
#include "query.h"
#include "ring.h"
#include "log.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

/* How the query layer answers a UDP client (client-t.h). */
static void answer(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len);
static const dp_frontend_ops_t udp_ops = {
	.answer = answer,
};

int dp_udp_init(dp_shard_t *s)
{
	s->send_cap = 1024;
	s->sends = mmap(NULL, sizeof(dp_udp_send_t) * s->send_cap, PROT_READ | PROT_WRITE,
			MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (s->sends == MAP_FAILED) {
		s->sends = NULL;
		return -ENOMEM;
	}
	s->send_free = DP_NONE;
	s->fe[T_UDP] = &udp_ops;
	return 0;
}

void dp_udp_free(dp_shard_t *s)
{
	if (s->sends)
		munmap(s->sends, sizeof(dp_udp_send_t) * s->send_cap);
	s->sends = NULL;
}

void dp_udp_arm(dp_shard_t *s, int li)
{
	if (s->udp_fd[li] < 0)
		return;
	struct io_uring_sqe *sqe = dp_sqe(s);
	s->udp_recv_mh.msg_namelen = sizeof(struct sockaddr_in6);
	s->udp_recv_mh.msg_controllen = 0;
	io_uring_prep_recvmsg_multishot(sqe, s->udp_fd[li], &s->udp_recv_mh, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = DP_BGID;
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UDP_RECV, (uint32_t)li, 0));
	s->udp_armed[li] = true;
	s->udp_live[li] = true;
}

/* One datagram in: count it and hand it on. A datagram longer than our
 * buffer arrives cut short: the header still reads, the rest is a FORMERR. */
static void datagram(dp_shard_t *s, int li, uint8_t *payload, size_t plen, bool truncated,
		     const void *name, socklen_t namelen)
{
	dp_client_t c;
	memset(&c.addr, 0, sizeof(c.addr));
	memcpy(&c.addr, name, DP_MIN(namelen, (socklen_t)sizeof(c.addr)));
	c.arrive_ns = 0;
	c.transport = T_UDP;
	c.li = (uint8_t)li;
	STAT_INC(s, udp_queries);
	if (truncated)
		plen = DP_MIN(plen, (size_t)DP_DNS_HDR_LEN);
	dp_query_from_client(s, &c, payload, plen);
}

/* Stopped reading to drain: datagrams that arrived before still sit in the
 * socket; answer them too (bounded). */
static void read_leftovers(dp_shard_t *s, int li)
{
	uint8_t buf[4096];
	for (int i = 0; i < 65536; i++) {
		struct sockaddr_in6 from;
		socklen_t flen = sizeof(from);
		memset(&from, 0, sizeof(from));
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_name = &from, .msg_namelen = flen, .msg_iov = &iov,
				     .msg_iovlen = 1 };
		ssize_t n = recvmsg(s->udp_fd[li], &mh, MSG_DONTWAIT);
		if (n < 0)
			break;
		datagram(s, li, buf, (size_t)n, (mh.msg_flags & MSG_TRUNC) != 0, &from,
			 mh.msg_namelen);
	}
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
		uint8_t *buf = dp_bufring_data(s, bid);
		struct io_uring_recvmsg_out *out =
			cqe->res > 0 ? io_uring_recvmsg_validate(buf, cqe->res, &s->udp_recv_mh) : NULL;
		if (out && out->namelen <= sizeof(struct sockaddr_in6))
			datagram(s, li, io_uring_recvmsg_payload(out, &s->udp_recv_mh),
				 io_uring_recvmsg_payload_length(out, cqe->res, &s->udp_recv_mh),
				 (out->flags & MSG_TRUNC) != 0, io_uring_recvmsg_name(out),
				 out->namelen);
		dp_bufring_recycle(s, bid);
	}
	if (!more && s->reads_stopped) {
		read_leftovers(s, li);
		return;
	}
	if (!more && !s->stop && !s->reads_stopped) {
		/* Multishot ended (buffers ran out, or an error): re-arm now; the
		 * SQE goes in at the end of this turn, after this turn's buffers
		 * went back to the ring, so this cannot spin. */
		dp_udp_arm(s, li);
	}
}

static void send_sync(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, socklen_t alen,
		      const uint8_t *msg, size_t len)
{
	STAT_INC(s, udp_send_sync);
	if (sendto(s->udp_fd[li], msg, len, MSG_DONTWAIT, (const struct sockaddr *)addr, alen) < 0)
		STAT_INC(s, udp_send_errors);
}

/* Send msg (len octets, copied) to addr from listen socket li: an SQE in
 * this turn's batch, or a plain sendto() when every slot is busy. */
static void send_to(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, const uint8_t *msg,
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
		send_sync(s, li, addr, alen, msg, len);
		if (slot != DP_NONE) {
			s->sends[slot].next_free = s->send_free;
			s->send_free = slot;
		}
		return;
	}
	dp_udp_send_t *u = &s->sends[slot];
	memcpy(u->data, msg, len);
	memcpy(&u->addr, addr, alen);
	u->len = (uint16_t)len;
	u->alen = (uint8_t)alen;
	u->li = (uint8_t)li;
	struct io_uring_sqe *sqe = dp_sqe(s);
	if (s->udp_sendmsg) {
		u->iov.iov_base = u->data;
		u->iov.iov_len = len;
		memset(&u->mh, 0, sizeof(u->mh));
		u->mh.msg_name = &u->addr;
		u->mh.msg_namelen = alen;
		u->mh.msg_iov = &u->iov;
		u->mh.msg_iovlen = 1;
		io_uring_prep_sendmsg(sqe, s->udp_fd[li], &u->mh, 0);
	} else {
		/* IORING_OP_SEND with an address (Linux 6.1+): no msghdr for
		 * the kernel to copy in and take apart. */
		io_uring_prep_send(sqe, s->udp_fd[li], u->data, len, 0);
		io_uring_prep_send_set_addr(sqe, (const struct sockaddr *)&u->addr, (uint16_t)alen);
	}
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UDP_SEND, slot, 0));
}

/* A datagram from the listen address the query came in on (this shard's
 * socket for it, also for a query another shard read and handed here). No
 * query is counted: nothing waits on a UDP client. */
static void answer(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len)
{
	if (len)
		send_to(s, c->li, &c->addr, msg, len);
}

void dp_udp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t slot)
{
	if (cqe->res == -EINVAL && !s->udp_sendmsg && slot < s->send_hiwater) {
		/* A kernel older than 6.1 refuses an address on a send: use
		 * sendmsg from now on, and send this answer directly. */
		dp_udp_send_t *u = &s->sends[slot];
		s->udp_sendmsg = true;
		dp_info("udp sends with an address refused; using sendmsg", "shard=%d", s->id);
		send_sync(s, u->li, &u->addr, u->alen, u->data, u->len);
	} else if (cqe->res < 0) {
		STAT_INC(s, udp_send_errors);
	}
	if (slot < s->send_hiwater) {
		s->sends[slot].next_free = s->send_free;
		s->send_free = slot;
	}
}
