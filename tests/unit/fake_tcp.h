/* fake_tcp.h - a fake transport under tcpconn (core/tcpconn.h) for unit
 * tests and the fuzz target: no sockets, no ring. It records what the state
 * machine asks for (a receive, a send, a cancel, a close) per fake fd, and
 * the test completes those operations when and how it likes. It enforces
 * the transport's rules and aborts on a breach: one receive and one send at
 * a time per fd, a send buffer left untouched until its completion (it is
 * read only then, as the kernel would), and no fd closed (slot finalized)
 * while an operation on it is still in flight.
 *
 * fds are never reused in one fake: an fd names one client for good.
 */
#ifndef DP_FAKE_TCP_H
#define DP_FAKE_TCP_H

#include "tcpconn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_FDS 512

typedef struct fake_fd {
	bool open, shut, cancel_all;
	bool recv; /* a receive is in flight */
	bool recv_cancel; /* ... and was asked to stop */
	uint32_t recv_idx, recv_gen;
	bool send; /* a send is in flight */
	uint32_t send_idx, send_gen;
	const uint8_t *send_buf;
	size_t send_len;
	uint8_t *sock; /* what a drain read finds in the socket */
	size_t sock_len, sock_off;
	uint8_t *rx; /* what the client received (sends completed) */
	size_t rx_len, rx_cap;
	uint32_t idx; /* its slot, from accept */
	bool taken; /* the client took what the send in flight carries */
} fake_fd_t;

typedef struct fake fake_t;
/* The query layer: 0 when it takes the frame, DP_E_FULL to refuse it for
 * now (fair share). */
typedef int (*fake_frame_fn)(fake_t *f, uint32_t idx, uint32_t gen, uint8_t *msg, size_t len);

struct fake {
	dp_tcpconns_t t;
	uint64_t now;
	fake_fd_t fd[FAKE_FDS];
	int next_fd;
	uint64_t stat[DP_TCPC_OPEN + 1];
	fake_frame_fn on_frame;
	void *user;
	uint32_t frames;
	uint32_t freed; /* query slots freed, for io->freed (the test sets it) */
};

#define FAKE_CHECK(cond, what)                                                        \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "fake transport: %s (%s:%d)\n", what, __FILE__, \
				__LINE__);                                            \
			abort();                                                      \
		}                                                                     \
	} while (0)

static fake_fd_t *fake_at(fake_t *f, int fd)
{
	FAKE_CHECK(fd >= 3 && fd < FAKE_FDS, "fd out of range");
	return &f->fd[fd];
}

static void fake_io_recv(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open && !d->shut, "receive on a closed or shut fd");
	FAKE_CHECK(!d->recv, "two receives on one fd");
	d->recv = true;
	d->recv_cancel = false;
	d->recv_idx = idx;
	d->recv_gen = gen;
}

static void fake_io_recv_cancel(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open, "cancel on a closed fd");
	if (d->recv && d->recv_idx == idx && d->recv_gen == gen)
		d->recv_cancel = true;
}

static void fake_io_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf,
			 size_t len)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open && !d->shut, "send on a closed or shut fd");
	FAKE_CHECK(!d->send, "two sends on one fd");
	FAKE_CHECK(len > 0, "empty send");
	d->send = true;
	d->send_idx = idx;
	d->send_gen = gen;
	d->send_buf = buf;
	d->send_len = len;
}

static void fake_io_shutdown(void *ctx, uint32_t idx, int fd, bool cancel)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open, "shutdown of a closed fd");
	d->shut = true;
	if (cancel) {
		d->cancel_all = true;
		if (d->recv)
			d->recv_cancel = true;
	}
}

static long fake_io_read_now(void *ctx, uint32_t idx, int fd, uint8_t *buf, size_t cap)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open, "read of a closed fd");
	size_t n = DP_MIN(cap, d->sock_len - d->sock_off);
	if (n == 0)
		return -EAGAIN;
	memcpy(buf, d->sock + d->sock_off, n);
	d->sock_off += n;
	return (long)n;
}

/* What sits in the socket is what a drain read would find there. */
static long fake_io_pending(void *ctx, uint32_t idx, int fd)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open, "pending of a closed fd");
	return (long)(d->sock_len - d->sock_off);
}

/* A send in flight sits in the socket until the client takes it. */
static long fake_io_unsent(void *ctx, uint32_t idx, int fd)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open, "unsent of a closed fd");
	return d->send && !d->taken ? (long)d->send_len : 0;
}

static void fake_io_close(void *ctx, uint32_t idx, int fd)
{
	fake_fd_t *d = fake_at(ctx, fd);
	FAKE_CHECK(d->open, "fd closed twice");
	FAKE_CHECK(!d->recv && !d->send, "slot finalized with an operation in flight");
	d->open = false;
}

static int fake_io_frame(void *ctx, uint32_t idx, uint32_t gen, uint8_t li, uint8_t *msg,
			 size_t len)
{
	fake_t *f = ctx;
	dp_tcpc_t *c = dp_tcpconn_get(&f->t, idx, gen);
	FAKE_CHECK(c, "frame for a connection that is gone");
	FAKE_CHECK(!c->closing, "frame for a connection that is closing");
	FAKE_CHECK(!c->paused, "frame for a connection that is paused");
	f->frames++;
	return f->on_frame ? f->on_frame(f, idx, gen, msg, len) : 0;
}

static uint32_t fake_io_freed(void *ctx)
{
	fake_t *f = ctx;
	uint32_t n = f->freed;
	f->freed = 0;
	return n;
}

static void fake_io_stat(void *ctx, int which, uint64_t v)
{
	fake_t *f = ctx;
	FAKE_CHECK(which >= 0 && which <= DP_TCPC_OPEN, "unknown counter");
	f->stat[which] = which == DP_TCPC_OPEN ? v : f->stat[which] + v;
}

static const dp_tcpconn_io_t fake_io = {
	.recv = fake_io_recv,
	.recv_cancel = fake_io_recv_cancel,
	.send = fake_io_send,
	.shutdown = fake_io_shutdown,
	.read_now = fake_io_read_now,
	.pending = fake_io_pending,
	.unsent = fake_io_unsent,
	.close = fake_io_close,
	.frame = fake_io_frame,
	.freed = fake_io_freed,
	.stat = fake_io_stat,
};

static void fake_init(fake_t *f, uint32_t cap, uint32_t reserve)
{
	memset(f, 0, sizeof(*f));
	f->next_fd = 3;
	f->now = 1000;
	int rc = dp_tcpconn_init(&f->t, cap, reserve, &fake_io, f, &f->now);
	FAKE_CHECK(rc == 0, "init");
}

static void fake_fini(fake_t *f)
{
	/* Teardown: the transport goes first, its operations with it. */
	for (int i = 0; i < FAKE_FDS; i++)
		f->fd[i].recv = f->fd[i].send = false;
	dp_tcpconn_close_all(&f->t);
	dp_tcpconn_free(&f->t);
	for (int i = 0; i < FAKE_FDS; i++) {
		free(f->fd[i].sock);
		free(f->fd[i].rx);
	}
}

/* A new client: returns its fd, or -1 when refused (or out of fds). */
static int fake_accept(fake_t *f)
{
	if (f->next_fd >= FAKE_FDS)
		return -1;
	int fd = f->next_fd;
	fake_fd_t *d = &f->fd[fd];
	d->open = true;
	int idx = dp_tcpconn_accept(&f->t, fd, 0);
	if (idx < 0) {
		d->open = false;
		return -1;
	}
	f->next_fd++;
	d->idx = (uint32_t)idx;
	return fd;
}

/* Complete fd's receive: n octets (copied to a buffer of exactly n, freed
 * after the call, like a provided buffer going back to its ring), or
 * res <= 0 with no data. Returns false when no receive is in flight. */
static bool fake_recv_done(fake_t *f, int fd, int res, bool more, const uint8_t *data)
{
	fake_fd_t *d = fake_at(f, fd);
	if (!d->recv)
		return false;
	uint32_t idx = d->recv_idx, gen = d->recv_gen;
	if (!more)
		d->recv = false;
	uint8_t *buf = NULL;
	if (res > 0) {
		buf = malloc((size_t)res);
		FAKE_CHECK(buf, "malloc");
		memcpy(buf, data, (size_t)res);
	}
	dp_tcpconn_on_recv(&f->t, idx, gen, res, more, buf);
	free(buf);
	return true;
}

/* Complete fd's send: res octets (at most what was asked; -1 for all of
 * it) or a negative errno. The octets sent are read from the send buffer
 * now and appended to what the client received. */
static bool fake_send_done(fake_t *f, int fd, long res)
{
	fake_fd_t *d = fake_at(f, fd);
	if (!d->send)
		return false;
	if (res == -1 || res > (long)d->send_len)
		res = (long)d->send_len;
	if (res > 0) {
		if (d->rx_len + (size_t)res > d->rx_cap) {
			d->rx_cap = (d->rx_len + (size_t)res) * 2;
			d->rx = realloc(d->rx, d->rx_cap);
			FAKE_CHECK(d->rx, "realloc");
		}
		memcpy(d->rx + d->rx_len, d->send_buf, (size_t)res);
		d->rx_len += (size_t)res;
	}
	d->send = false;
	dp_tcpconn_on_send(&f->t, d->send_idx, d->send_gen, (int)res);
	return true;
}

/* Operations the state machine asked to cancel end now: the receive with
 * -ECANCELED, a send with -ECANCELED (cancel_all). */
static void fake_cancels_done(fake_t *f, int fd)
{
	fake_fd_t *d = fake_at(f, fd);
	if (d->recv && d->recv_cancel)
		fake_recv_done(f, fd, -ECANCELED, false, NULL);
	if (d->send && d->cancel_all)
		fake_send_done(f, fd, -ECANCELED);
}

/* Octets the client has sent that sit in the socket (a drain read finds
 * them). */
static void fake_sock_put(fake_t *f, int fd, const uint8_t *data, size_t n)
{
	fake_fd_t *d = fake_at(f, fd);
	d->sock = realloc(d->sock, d->sock_len + n + 1);
	FAKE_CHECK(d->sock, "realloc");
	memcpy(d->sock + d->sock_len, data, n);
	d->sock_len += n;
}

/* The connection on fd, NULL once its slot is finalized or reused. */
static dp_tcpc_t *fake_conn(fake_t *f, int fd)
{
	fake_fd_t *d = fake_at(f, fd);
	if (!d->open)
		return NULL;
	dp_tcpc_t *c = &f->t.c[d->idx];
	return c->used && c->fd == fd ? c : NULL;
}

#endif
