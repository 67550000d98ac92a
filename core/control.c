/* control.c - signals, reload, drain, and a tiny HTTP server for /metrics
 * and /healthz, all on the main thread with poll(2).
 *
 * Owns: the signalfd, the metrics listener and up to MAX_CLIENTS HTTP
 * connections (one request each, then closed), and the configs handed to
 * the shards.
 *
 * The endpoint is the pod's readiness and liveness probe, so nobody may be
 * able to keep it busy: a connection from outside --metrics-allow is
 * closed at once without an answer; a client has HEADER_MS to send its
 * request head; and when every slot is taken, a newcomer evicts the oldest
 * waiting connection instead of being refused (idle connections renewed
 * faster than HEADER_MS cannot starve a probe that sends its request).
 */
#include "control.h"
#include "http.h"
#include "prometheus.h"
#include "tls.h"
#include "tlssrv.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* Per-client state is one fixed slot; a request is at most REQ_MAX - 1
 * octets of head (no body is ever read). */
#define MAX_CLIENTS 32
#define HEADER_MS 1500 /* from accept to a complete request head */
#define REQ_MAX 4096
#define BODY_MAX (512 * 1024)

typedef struct http_client {
	int fd;
	uint64_t deadline_ms;
	uint64_t seq; /* order of acceptance: the lowest is evicted first */
	size_t len;
	char req[REQ_MAX];
} http_client_t;

void dp_control_log_stats(dp_shard_t *shards, int n)
{
	dp_stats_t sum;
	memset(&sum, 0, sizeof(sum));
	for (int i = 0; i < n; i++)
		dp_stats_add(&sum, &shards[i].stats);
	char buf[4096];
	size_t o = 0;
#define DP_FMT(f)                                                                              \
	if (o < sizeof(buf))                                                                   \
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s=%llu", o ? " " : "", #f, \
				      (unsigned long long)sum.f);
	DP_STATS_FIELDS(DP_FMT)
#undef DP_FMT
	dp_log(DP_LOG_INFO, "stats", "%s", buf);
}

int dp_control_bind_metrics(dp_control_t *ctl, char *err, size_t errlen)
{
	ctl->metrics_fd = -1;
	if (!ctl->cfg->metrics_on)
		return 0;
	const dp_sockaddr_t *a = &ctl->cfg->metrics;
	char text[80];
	dp_sockaddr_str(a, text, sizeof(text));
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 64) < 0) {
		int e = errno;
		snprintf(err, errlen, "cannot serve metrics on %s: %s", text, strerror(e));
		if (fd >= 0)
			close(fd);
		return -e;
	}
	ctl->metrics_fd = fd;
	return 0;
}

static void respond(int fd, int code, const char *reason, const char *ctype, const char *body,
		    size_t blen)
{
	char head[256];
	int hl = snprintf(head, sizeof(head),
			  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			  "Connection: close\r\n\r\n",
			  code, reason, ctype, blen);
	/* Small answers to a local scraper: a blocking write with a bound. */
	struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	ssize_t w = send(fd, head, (size_t)hl, MSG_NOSIGNAL);
	size_t off = 0;
	while (w >= 0 && off < blen) {
		w = send(fd, body + off, blen - off, MSG_NOSIGNAL);
		if (w > 0)
			off += (size_t)w;
	}
}

static void serve(dp_control_t *ctl, http_client_t *c, const dp_http_req_t *r, char *body)
{
	bool head = r->method == DP_HTTP_HEAD;
	if (r->method == DP_HTTP_OTHER) {
		static const char m[] = "only GET\n";
		respond(c->fd, 405, "Method Not Allowed", "text/plain", m, sizeof(m) - 1);
	} else if (strcmp(r->path, "/metrics") == 0) {
		size_t n = dp_metrics_render(ctl->shards, ctl->nshards, ctl->cfg, body, BODY_MAX);
		respond(c->fd, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body,
			head ? 0 : n);
	} else if (strcmp(r->path, "/healthz") == 0) {
		if (dp_metrics_healthy(ctl->shards, ctl->nshards, ctl->cfg)) {
			static const char m[] = "ok\n";
			respond(c->fd, 200, "OK", "text/plain", m, head ? 0 : sizeof(m) - 1);
		} else {
			static const char m[] = "no healthy upstream\n";
			respond(c->fd, 503, "Service Unavailable", "text/plain", m,
				head ? 0 : sizeof(m) - 1);
		}
	} else {
		static const char m[] = "not found\n";
		respond(c->fd, 404, "Not Found", "text/plain", m, head ? 0 : sizeof(m) - 1);
	}
}

/* True when every shard still running has taken config generation gen. */
static bool shards_past(const dp_control_t *ctl, uint32_t gen)
{
	for (int i = 0; i < ctl->nshards; i++)
		if ((int32_t)(__atomic_load_n(&ctl->shards[i].cfg_gen, __ATOMIC_ACQUIRE) - gen) < 0 &&
		    !__atomic_load_n(&ctl->shards[i].exited, __ATOMIC_ACQUIRE))
			return false;
	return true;
}

/* Free the replaced configs no shard can read any more. */
static void free_retired(dp_control_t *ctl)
{
	int k = 0;
	for (int i = 0; i < ctl->nretired; i++) {
		if (shards_past(ctl, ctl->retired_gen[i])) {
			free(ctl->retired[i]);
			continue;
		}
		ctl->retired[k] = ctl->retired[i];
		ctl->retired_gen[k++] = ctl->retired_gen[i];
	}
	ctl->nretired = k;
}

/* The config reload gen replaced: freed now if every shard has taken gen,
 * else once they have (free_retired, every control loop turn). */
static void retire(dp_control_t *ctl, dp_config_t *old, uint32_t gen)
{
	if (shards_past(ctl, gen)) {
		free(old);
	} else if (ctl->nretired < DP_CONTROL_RETIRED) {
		ctl->retired[ctl->nretired] = old;
		ctl->retired_gen[ctl->nretired++] = gen;
	} else {
		dp_warn("reload: shards have not taken several new configs; an old one is kept in "
			"memory", NULL);
	}
}

static void reload(dp_control_t *ctl)
{
	char err[512] = "";
	dp_config_t *nc = malloc(sizeof(*nc));
	if (!nc) {
		dp_error("reload failed", "reason=\"out of memory\"");
		return;
	}
	dp_config_defaults(nc);
	int rc = dp_config_parse_args(nc, ctl->argc, ctl->argv, err, sizeof(err));
	if (rc != 0) {
		dp_error("reload rejected, keeping the running config", "reason=\"%s\"", err);
		free(nc);
		return;
	}
	/* Settings that shape threads, sockets and tables keep their running
	 * values; config.c's option table says which they are. */
	char fixed[256];
	if (dp_config_keep_restart(nc, ctl->cfg, fixed, sizeof(fixed)) > 0)
		dp_warn("reload: settings that need a restart changed; kept the running values",
			"settings=%s", fixed);
	dp_log_level = nc->log_level;
	bool new_ctx = strcmp(nc->ca_file, ctl->cfg->ca_file) != 0 ||
		       nc->tls_min_version != ctl->cfg->tls_min_version;
	SSL_CTX *ctxs[256] = { 0 };
	if (new_ctx) {
		SSL_CTX *ctx = dp_tls_client_ctx(nc, err, sizeof(err));
		if (!ctx) {
			dp_error("reload rejected, keeping the running config", "reason=\"%s\"", err);
			free(nc);
			return;
		}
		for (int i = 0; i < ctl->nshards; i++) {
			SSL_CTX_up_ref(ctx);
			ctxs[i] = ctx;
		}
		SSL_CTX_free(ctx);
	}
	/* The TLS listeners' certificate and key are read again on every
	 * reload (the files may have changed under the same names): new
	 * handshakes get them, established sessions keep theirs. */
	SSL_CTX *srv = dp_config_nenc(nc) ? dp_tlssrv_ctx(nc, err, sizeof(err)) : NULL;
	if (dp_config_nenc(nc) && !srv) {
		dp_error("reload rejected, keeping the running config", "reason=\"%s\"", err);
		for (int i = 0; i < ctl->nshards; i++)
			SSL_CTX_free(ctxs[i]);
		free(nc);
		return;
	}
	uint32_t gen = ++ctl->gen;
	for (int i = 0; i < ctl->nshards; i++) {
		if (srv)
			SSL_CTX_up_ref(srv);
		dp_shard_reload(&ctl->shards[i], nc, ctxs[i], srv, gen);
	}
	SSL_CTX_free(srv);
	/* The old config goes once every shard has moved to the new one: at
	 * once if they all do within a second (the usual case), else later. */
	for (int t = 0; t < 500 && !shards_past(ctl, gen); t++)
		usleep(2000);
	retire(ctl, ctl->cfg, gen);
	ctl->cfg = nc;
	dp_info("reloaded", "file=\"%s\" upstreams=%d zones=%d", nc->config_file, nc->nupstream,
		nc->nzones);
}

static void close_client(http_client_t *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->len = 0;
}

/* Read what arrived on c and answer once the request head is complete. */
static void client_read(dp_control_t *ctl, http_client_t *c, char *body)
{
	ssize_t r = read(c->fd, c->req + c->len, REQ_MAX - 1 - c->len);
	if (r <= 0) {
		if (r == 0 || (errno != EAGAIN && errno != EINTR))
			close_client(c);
		return;
	}
	c->len += (size_t)r;
	dp_http_req_t req;
	int rc = dp_http_parse(c->req, c->len, REQ_MAX - 1, &req);
	if (rc == 1) {
		serve(ctl, c, &req, body);
		close_client(c);
	} else if (rc < 0) {
		static const char m[] = "bad request\n";
		respond(c->fd, 400, "Bad Request", "text/plain", m, sizeof(m) - 1);
		close_client(c);
	}
}

/* A free slot, or the one accepted first (the oldest connection still
 * waiting for its request), closed for the newcomer. */
static http_client_t *take_slot(http_client_t *clients)
{
	http_client_t *oldest = &clients[0];
	for (int i = 0; i < MAX_CLIENTS; i++) {
		if (clients[i].fd < 0)
			return &clients[i];
		if (clients[i].seq < oldest->seq)
			oldest = &clients[i];
	}
	close_client(oldest);
	return oldest;
}

/* Accept what the listener holds, at most half the slots per turn: the
 * oldest are evicted first, so a connection accepted in this turn survives
 * it, and its request (read first in the next turn) is served. Sources
 * outside --metrics-allow are closed without an answer. A request that
 * arrived with the connection is answered at once. */
static void accept_clients(dp_control_t *ctl, http_client_t *clients, char *body, uint64_t now)
{
	static uint64_t seq;
	for (int a = 0; a < MAX_CLIENTS / 2; a++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(ctl->metrics_fd, (struct sockaddr *)&ss, &sl,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		if (!dp_acl_allows(&ctl->cfg->metrics_acl, (const struct sockaddr *)&ss)) {
			close(fd);
			continue;
		}
		http_client_t *c = take_slot(clients);
		c->fd = fd;
		c->len = 0;
		c->deadline_ms = now + HEADER_MS;
		c->seq = ++seq;
		client_read(ctl, c, body);
	}
}

void dp_control_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGHUP);
}

/* Act on the signals waiting on sfd: SIGUSR1 logs the counters, SIGHUP
 * reloads (not while draining), SIGTERM/SIGINT start the drain, which ends
 * by drain_until at the latest. */
static void take_signals(dp_control_t *ctl, int sfd, uint64_t now, bool *draining,
			 uint64_t *drain_until)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGUSR1) {
			dp_control_log_stats(ctl->shards, ctl->nshards);
		} else if (si.ssi_signo == SIGHUP) {
			if (*draining)
				continue;
			/* Without a file, the command line is read again: it
			 * changes nothing but the TLS listeners' certificate. */
			if (!ctl->cfg->config_file[0] && !dp_config_nenc(ctl->cfg))
				dp_warn("SIGHUP without --config: nothing to reload", NULL);
			else
				reload(ctl);
		} else if (!*draining) {
			dp_info("stopping", "signal=%u drain_timeout_ms=%u", si.ssi_signo,
				ctl->cfg->drain_ms);
			*draining = true;
			/* shards give up at drain_ms; allow for their teardown */
			*drain_until = now + ctl->cfg->drain_ms + 2000;
			for (int i = 0; i < ctl->nshards; i++)
				dp_shard_drain(&ctl->shards[i]);
			if (ctl->metrics_fd >= 0) {
				close(ctl->metrics_fd);
				ctl->metrics_fd = -1;
			}
		}
	}
}

int dp_control_run(dp_control_t *ctl)
{
	sigset_t set;
	dp_control_signals(&set);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		dp_error("signalfd failed", "err=\"%s\"", strerror(errno));
		return 1;
	}
	static http_client_t clients[MAX_CLIENTS];
	for (int i = 0; i < MAX_CLIENTS; i++)
		clients[i].fd = -1;
	char *body = ctl->metrics_fd >= 0 ? malloc(BODY_MAX) : NULL;
	bool draining = false;
	uint64_t drain_until = 0;
	for (;;) {
		struct pollfd pfd[2 + MAX_CLIENTS];
		int idx[2 + MAX_CLIENTS];
		nfds_t n = 0;
		pfd[n] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		idx[n++] = -1;
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (clients[i].fd >= 0) {
				pfd[n] = (struct pollfd){ .fd = clients[i].fd, .events = POLLIN };
				idx[n++] = i;
			}
		/* The listener last: requests that arrived are read before
		 * newcomers may evict their connections. */
		if (ctl->metrics_fd >= 0 && body) {
			pfd[n] = (struct pollfd){ .fd = ctl->metrics_fd, .events = POLLIN };
			idx[n++] = -2;
		}
		int pr = poll(pfd, n, 100);
		uint64_t now = dp_now_ms();
		free_retired(ctl);
		if (draining) {
			bool all = true;
			for (int i = 0; i < ctl->nshards; i++)
				if (!__atomic_load_n(&ctl->shards[i].exited, __ATOMIC_ACQUIRE))
					all = false;
			if (all || now > drain_until)
				break;
		}
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (clients[i].fd >= 0 && now > clients[i].deadline_ms)
				close_client(&clients[i]);
		if (pr <= 0)
			continue;
		for (nfds_t k = 0; k < n; k++) {
			if (!pfd[k].revents)
				continue;
			if (idx[k] == -1) {
				take_signals(ctl, sfd, now, &draining, &drain_until);
			} else if (idx[k] == -2) {
				accept_clients(ctl, clients, body, now);
			} else if (clients[idx[k]].fd == pfd[k].fd) {
				/* (not closed or handed to a newcomer this turn) */
				client_read(ctl, &clients[idx[k]], body);
			}
		}
	}
	for (int i = 0; i < MAX_CLIENTS; i++)
		close_client(&clients[i]);
	if (ctl->metrics_fd >= 0)
		close(ctl->metrics_fd);
	free_retired(ctl); /* all of them, once every shard has exited */
	free(body);
	close(sfd);
	return 0;
}
