/* udp.c - the UDP frontend, in one of two modes (--udp-io):
 *
 *   uring (default): multishot recvmsg over the provided-buffer ring; each
 *     answer is a send SQE with the client's address (sendmsg on kernels
 *     before 6.1), batched with everything else in the loop turn.
 *   mmsg: a multishot poll says a socket is readable; recvmmsg takes up to
 *     DP_MMSG_BATCH datagrams per call; answers collect through the turn and
 *     leave with one sendmmsg at its end. Kept to measure the two against
 *     each other (bench/RESULTS.md).
 *
 * Owns: the shard's UDP send slots (dp_udp_send_t), each holding one answer
 * until its send completes, and the mmsg batch arrays. When every slot is
 * busy the answer goes out with a plain sendto() instead of being dropped.
 */
#include "engine.h"
#include "log.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define DP_BGID 1

static bool mmsg_mode(const dp_shard_t *s)
{
	return s->mm != NULL;
}

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
	if (s->cfg->udp_io != DP_UDP_IO_MMSG)
		return 0;
	dp_mmsg_t *m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE,
			    MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (m == MAP_FAILED)
		return -ENOMEM;
	for (int i = 0; i < DP_MMSG_BATCH; i++) {
		m->rx_iov[i] = (struct iovec){ m->rx_buf[i], sizeof(m->rx_buf[i]) };
		m->rx[i].msg_hdr.msg_iov = &m->rx_iov[i];
		m->rx[i].msg_hdr.msg_iovlen = 1;
		m->rx[i].msg_hdr.msg_name = &m->rx_addr[i];
		m->tx_iov[i].iov_base = m->tx_buf[i];
		m->tx[i].msg_hdr.msg_iov = &m->tx_iov[i];
		m->tx[i].msg_hdr.msg_iovlen = 1;
		m->tx[i].msg_hdr.msg_name = &m->tx_addr[i];
	}
	s->mm = m;
	return 0;
}

void dp_udp_free(dp_shard_t *s)
{
	if (s->sends)
		munmap(s->sends, sizeof(dp_udp_send_t) * s->send_cap);
	s->sends = NULL;
	if (s->mm)
		munmap(s->mm, sizeof(*s->mm));
	s->mm = NULL;
}

void dp_udp_arm(dp_shard_t *s, int li)
{
	if (s->udp_fd[li] < 0)
		return;
	struct io_uring_sqe *sqe = dp_sqe(s);
	if (mmsg_mode(s)) {
		io_uring_prep_poll_multishot(sqe, s->udp_fd[li], POLLIN);
	} else {
		s->udp_recv_mh.msg_namelen = sizeof(struct sockaddr_in6);
		s->udp_recv_mh.msg_controllen = 0;
		io_uring_prep_recvmsg_multishot(sqe, s->udp_fd[li], &s->udp_recv_mh, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = DP_BGID;
	}
	io_uring_sqe_set_data64(sqe, dp_ud(OP_UDP_RECV, (uint32_t)li, 0));
	s->udp_armed[li] = true;
	s->udp_live[li] = true;
}

/* One datagram in: count it and hand it on. A datagram longer than our
 * buffer arrives cut short: the header still reads, the rest is a FORMERR. */
static void datagram(dp_shard_t *s, int li, uint8_t *payload, size_t plen, bool truncated,
		     const void *name, socklen_t namelen)
{
	struct sockaddr_in6 from;
	memset(&from, 0, sizeof(from));
	memcpy(&from, name, DP_MIN(namelen, (socklen_t)sizeof(from)));
	STAT_INC(s, udp_queries);
	if (truncated)
		plen = DP_MIN(plen, (size_t)DP_DNS_HDR_LEN);
	dp_query_from_client(s, T_UDP, payload, plen, li, &from, 0, 0);
}

/* mmsg: up to DP_MMSG_ROUNDS recvmmsg calls on socket li; leaves bit li of
 * udp_more set when the last one came back full (more may be waiting: the
 * poll only fires again on a new arrival). */
static void mmsg_read(dp_shard_t *s, int li)
{
	dp_mmsg_t *m = s->mm;
	s->udp_more &= ~(1u << li);
	for (int round = 0; round < DP_MMSG_ROUNDS; round++) {
		for (int i = 0; i < DP_MMSG_BATCH; i++)
			m->rx[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in6);
		int n = recvmmsg(s->udp_fd[li], m->rx, DP_MMSG_BATCH, MSG_DONTWAIT, NULL);
		STAT_INC(s, udp_io_calls);
		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				dp_warn("udp receive failed", "shard=%d err=\"%s\"", s->id,
					dp_strerror(-errno));
			return;
		}
		for (int i = 0; i < n; i++) {
			struct msghdr *h = &m->rx[i].msg_hdr;
			datagram(s, li, m->rx_buf[i], m->rx[i].msg_len,
				 (h->msg_flags & MSG_TRUNC) != 0, h->msg_name, h->msg_namelen);
		}
		if (n < DP_MMSG_BATCH)
			return;
	}
	s->udp_more |= 1u << li;
}

void dp_udp_pump(dp_shard_t *s)
{
	for (int li = 0; li < s->nlisten; li++)
		if (s->udp_more & (1u << li)) {
			if (s->reads_stopped)
				s->udp_more &= ~(1u << li);
			else
				mmsg_read(s, li);
		}
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
	if (mmsg_mode(s)) {
		if (cqe->res > 0 && !s->reads_stopped)
			mmsg_read(s, li);
	} else if (cqe->flags & IORING_CQE_F_BUFFER) {
		uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		uint8_t *buf = s->br_mem + (size_t)bid * s->br_size;
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

/* mmsg: send tx[from..to) on socket li; a full socket buffer gets a short
 * wait (bounded), anything else costs the one answer it refused. */
static void mmsg_send_run(dp_shard_t *s, int li, uint32_t from, uint32_t to)
{
	dp_mmsg_t *m = s->mm;
	int waits = 0;
	while (from < to) {
		int n = sendmmsg(s->udp_fd[li], &m->tx[from], to - from, MSG_DONTWAIT);
		STAT_INC(s, udp_io_calls);
		if (n > 0) {
			from += (uint32_t)n;
			continue;
		}
		if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) && waits < 3) {
			struct pollfd p = { .fd = s->udp_fd[li], .events = POLLOUT };
			poll(&p, 1, 10);
			waits++;
			continue;
		}
		if (errno != EINTR) {
			STAT_INC(s, udp_send_errors);
			from++;
		}
	}
}

void dp_udp_flush(dp_shard_t *s)
{
	dp_mmsg_t *m = s->mm;
	if (!m || m->tx_n == 0)
		return;
	uint32_t start = 0;
	for (uint32_t i = 1; i <= m->tx_n; i++)
		if (i == m->tx_n || m->tx_li[i] != m->tx_li[start]) {
			mmsg_send_run(s, m->tx_li[start], start, i);
			start = i;
		}
	m->tx_n = 0;
}

static void send_sync(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, socklen_t alen,
		      const uint8_t *msg, size_t len)
{
	STAT_INC(s, udp_send_sync);
	if (sendto(s->udp_fd[li], msg, len, MSG_DONTWAIT, (const struct sockaddr *)addr, alen) < 0)
		STAT_INC(s, udp_send_errors);
}

void dp_udp_send(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, const uint8_t *msg,
		 size_t len)
{
	socklen_t alen = addr->sin6_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						       : sizeof(struct sockaddr_in);
	if (mmsg_mode(s)) {
		dp_mmsg_t *m = s->mm;
		if (len > sizeof(m->tx_buf[0])) {
			send_sync(s, li, addr, alen, msg, len);
			return;
		}
		if (m->tx_n == DP_MMSG_BATCH)
			dp_udp_flush(s);
		uint32_t i = m->tx_n++;
		memcpy(m->tx_buf[i], msg, len);
		memcpy(&m->tx_addr[i], addr, alen);
		m->tx_iov[i].iov_len = len;
		m->tx[i].msg_hdr.msg_namelen = alen;
		m->tx_li[i] = (uint8_t)li;
		return;
	}
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
