/* tls-flood.c - opens new DNS-over-TLS connections at a fixed rate, for
 * bench/hsflood.py: each one a full TLS handshake (no session kept, no
 * ticket asked for, so never resumed), one DNS query, its answer, then
 * close. BoringSSL and epoll on one thread; costs little CPU per connection
 * so that the generator, on the same cores as the server, stays small.
 *
 *   tls-flood --connect IP:PORT --rate N --duration SEC [--name NAME]
 *             [--timeout SEC] [--max-open N]
 *
 * Connections are opened evenly: at any moment the number opened so far is
 * rate x elapsed (checked every millisecond), up to --max-open at once
 * (then later ones wait: the achieved rate shows it). The certificate is
 * not verified (the bench measures the server, not the PKI). At the end it
 * prints one line of counters on stdout:
 *   opened= handshakes= resumed= answered= failed= timeouts= late= elapsed_s=
 * (failed counts the timeouts too) and exits 0, or 1 when nothing was answered. Owns every connection it
 * opens; all are closed by the end of the run.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { ST_CONNECT, ST_HANDSHAKE, ST_ANSWER };

typedef struct conn {
	int fd; /* -1: free */
	int state;
	SSL *ssl;
	double started;
	uint8_t rx[2 + 512];
	size_t got;
} conn_t;

static struct {
	unsigned long opened, handshakes, resumed, answered, failed, timeouts, late;
} cnt;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The DoT query: 2-byte length, ID 0, RD, one question NAME/A/IN. */
static size_t make_query(const char *name, uint8_t *q, size_t cap)
{
	size_t o = 2;
	static const uint8_t hdr[12] = { 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0 };
	memcpy(q + o, hdr, sizeof(hdr));
	o += sizeof(hdr);
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t n = dot ? (size_t)(dot - name) : strlen(name);
		if (n == 0 || n > 63 || o + n + 6 > cap)
			return 0;
		q[o++] = (uint8_t)n;
		memcpy(q + o, name, n);
		o += n;
		name += n + (dot ? 1 : 0);
	}
	q[o++] = 0;
	memcpy(q + o, "\0\1\0\1", 4);
	o += 4;
	q[0] = (uint8_t)((o - 2) >> 8);
	q[1] = (uint8_t)(o - 2);
	return o;
}

static void finish(int ep, conn_t *c, int ok)
{
	if (!ok)
		cnt.failed++;
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	if (c->ssl) {
		if (ok)
			SSL_shutdown(c->ssl); /* close_notify, not waiting for the peer's */
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	close(c->fd);
	c->fd = -1;
}

static void want(int ep, conn_t *c, int err, int idx)
{
	struct epoll_event ev = { .events = err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN,
				  .data.u32 = (uint32_t)idx };
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Advance connection C as far as it goes without waiting. */
static void step(int ep, SSL_CTX *ctx, conn_t *c, int idx, const uint8_t *q, size_t qlen)
{
	if (c->state == ST_CONNECT) {
		int e = 0;
		socklen_t l = sizeof(e);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0 || e != 0)
			{ finish(ep, c, 0); return; }
		c->ssl = SSL_new(ctx);
		if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
			{ finish(ep, c, 0); return; }
		SSL_set_connect_state(c->ssl);
		c->state = ST_HANDSHAKE;
	}
	if (c->state == ST_HANDSHAKE) {
		int r = SSL_do_handshake(c->ssl);
		if (r != 1) {
			int err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
				{ want(ep, c, err, idx); return; }
			{ finish(ep, c, 0); return; }
		}
		cnt.handshakes++;
		if (SSL_session_reused(c->ssl))
			cnt.resumed++;
		if (SSL_write(c->ssl, q, (int)qlen) != (int)qlen)
			{ finish(ep, c, 0); return; }
		c->state = ST_ANSWER;
		c->got = 0;
	}
	for (;;) {
		int r = SSL_read(c->ssl, c->rx + c->got, (int)(sizeof(c->rx) - c->got));
		if (r <= 0) {
			int err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
				{ want(ep, c, err, idx); return; }
			{ finish(ep, c, 0); return; }
		}
		c->got += (size_t)r;
		if (c->got >= 2 && c->got >= 2u + (((size_t)c->rx[0] << 8) | c->rx[1])) {
			cnt.answered++;
			{ finish(ep, c, 1); return; }
		}
		if (c->got == sizeof(c->rx))
			{ finish(ep, c, 0); return; }
	}
}

static int open_one(int ep, conn_t *c, int idx, const struct sockaddr_in *sa, double t)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		cnt.opened++;
		cnt.failed++;
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	cnt.opened++;
	c->fd = fd;
	c->state = ST_CONNECT;
	c->started = t;
	struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = (uint32_t)idx };
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 && errno != EINPROGRESS) {
		cnt.failed++;
		close(fd);
		c->fd = -1;
		return -1;
	}
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: tls-flood --connect IP:PORT --rate N --duration SEC [--name NAME] "
			"[--timeout SEC] [--max-open N]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "connect", 1, 0, 'c' }, { "rate", 1, 0, 'r' }, { "duration", 1, 0, 'd' },
		{ "name", 1, 0, 'n' },	  { "timeout", 1, 0, 't' }, { "max-open", 1, 0, 'm' },
		{ 0, 0, 0, 0 }
	};
	const char *addr = NULL, *name = "flood.example.com";
	double rate = 0, duration = 0, timeout = 5;
	int max_open = 4096, o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': addr = optarg; break;
		case 'r': rate = atof(optarg); break;
		case 'd': duration = atof(optarg); break;
		case 'n': name = optarg; break;
		case 't': timeout = atof(optarg); break;
		case 'm': max_open = atoi(optarg); break;
		default: usage();
		}
	}
	char host[64];
	const char *colon = addr ? strrchr(addr, ':') : NULL;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	if (!colon || (size_t)(colon - addr) >= sizeof(host) || rate <= 0 || duration <= 0 || max_open < 1)
		usage();
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = 0;
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		usage();
	uint8_t q[300];
	size_t qlen = make_query(name, q, sizeof(q));
	if (!qlen)
		usage();

	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	static const uint8_t alpn[] = { 3, 'd', 'o', 't' };
	if (!ctx || SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn)) != 0)
		return 2;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	conn_t *conns = calloc((size_t)max_open, sizeof(*conns));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (!conns || ep < 0)
		return 2;
	for (int i = 0; i < max_open; i++)
		conns[i].fd = -1;

	/* free slots, a stack; a slot is back on it when its connection ends */
	int *free_slots = calloc((size_t)max_open, sizeof(int)), nfree = max_open;
	if (!free_slots)
		return 2;
	for (int i = 0; i < max_open; i++)
		free_slots[i] = max_open - 1 - i;
	double t0 = now(), t = t0, swept = t0;
	unsigned long due_total = (unsigned long)(rate * duration);
	struct epoll_event evs[256];
	while (cnt.opened < due_total || nfree < max_open) {
		t = now();
		unsigned long due = (unsigned long)(rate * (t - t0));
		if (due > due_total)
			due = due_total;
		if (cnt.opened < due && nfree == 0)
			cnt.late++; /* counted once per blocked loop turn */
		while (cnt.opened < due && nfree > 0) {
			int i = free_slots[--nfree];
			if (open_one(ep, &conns[i], i, &sa, t) < 0)
				free_slots[nfree++] = i;
		}
		int n = epoll_wait(ep, evs, 256, 1);
		for (int k = 0; k < n; k++) {
			int i = (int)evs[k].data.u32;
			if (conns[i].fd >= 0) {
				step(ep, ctx, &conns[i], i, q, qlen);
				if (conns[i].fd < 0)
					free_slots[nfree++] = i;
			}
		}
		if (t - swept < 0.1)
			continue;
		swept = t;
		for (int i = 0; i < max_open; i++) {
			if (conns[i].fd >= 0 && t - conns[i].started > timeout) {
				cnt.timeouts++;
				finish(ep, &conns[i], 0);
				free_slots[nfree++] = i;
			}
		}
	}
	printf("opened=%lu handshakes=%lu resumed=%lu answered=%lu failed=%lu timeouts=%lu late=%lu "
	       "elapsed_s=%.3f\n",
	       cnt.opened, cnt.handshakes, cnt.resumed, cnt.answered, cnt.failed, cnt.timeouts, cnt.late,
	       now() - t0);
	free(conns);
	free(free_slots);
	SSL_CTX_free(ctx);
	close(ep);
	return cnt.answered ? 0 : 1;
}
