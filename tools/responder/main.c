/* main.c - dot-responder: a fast synthetic DNS-over-TLS server for tests
 * and benchmarks (RFC 7858 framing, TLS 1.2 and 1.3, session tickets,
 * fault injection), and the same over plain TCP with --listen-tcp. tools/README.md describes what it answers and the file
 * map; shard.h the loop.
 *
 * The main thread: reads the command line, makes the SSL_CTX (when there is
 * a TLS listener), opens one SO_REUSEPORT listener per --listen or
 * --listen-tcp address for each shard, starts the
 * shards, prints "listening on ...", then waits for signals: SIGUSR1 prints
 * the counters (summed over the shards), SIGINT or SIGTERM stop the shards
 * and print them once more. Owns the configuration, the SSL_CTX, the shard
 * array, the listeners and the shards' eventfds.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "config.h"
#include "shard.h"
#include "tlsctx.h"

static void print_counters(const shard_t *shards, int nshards)
{
	counters_t sum;
	memset(&sum, 0, sizeof(sum));
	for (int i = 0; i < nshards; i++) {
#define X(n) sum.n += __atomic_load_n(&shards[i].cnt.n, __ATOMIC_RELAXED);
		COUNTERS(X)
#undef X
	}
	char line[1024];
	size_t o = 0;
#define X(n) o += (size_t)snprintf(line + o, sizeof(line) - o, "%s" #n "=%llu", o ? " " : "", \
				   (unsigned long long)sum.n);
	COUNTERS(X)
#undef X
	fprintf(stderr, "%s\n", line);
}

/* One SO_REUSEPORT listener. Port 0 in *ss is replaced by the port the
 * kernel chose, so the next shard joins the same group. */
static int make_listener(struct sockaddr_storage *ss, socklen_t len)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    (ss->ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (struct sockaddr *)ss, len) < 0 || listen(fd, 4096) < 0)
		goto fail;
	socklen_t l = len;
	if (getsockname(fd, (struct sockaddr *)ss, &l) < 0)
		goto fail;
	return fd;
fail:;
	int e = -errno;
	close(fd);
	return e;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* The shard array with every shard's settings and no descriptor yet.
 * Allocates (free()); NULL without memory. */
static shard_t *shards_new(resp_config_t *cfg, SSL_CTX *ctx)
{
	shard_t *shards = aligned_alloc(64, sizeof(shard_t) * (size_t)cfg->threads);
	if (!shards)
		return NULL;
	memset(shards, 0, sizeof(shard_t) * (size_t)cfg->threads);
	for (int i = 0; i < cfg->threads; i++) {
		shard_t *s = &shards[i];
		s->id = i;
		s->wake_fd = -1;
		for (int j = 0; j < MAX_LISTEN; j++)
			s->listen_fd[j] = -1;
		s->ctx = ctx;
		s->bh = &cfg->behave;
		s->max_conns = cfg->max_conns;
		s->timed = cfg->timed;
		s->seed = cfg->seed;
	}
	return shards;
}

/* The listeners and the eventfd of shard s. Returns 0 or -1 after printing
 * why (what was opened is closed by close_fds()). */
static int open_fds(shard_t *s, resp_config_t *cfg)
{
	s->nlisten = cfg->nlisten;
	for (int j = 0; j < cfg->nlisten; j++) {
		int fd = make_listener(&cfg->listen[j], cfg->listen_len[j]);
		s->listen_plain[j] = cfg->listen_plain[j];
		if (fd < 0) {
			char a[80];
			config_format_listener(cfg, j, a, sizeof(a));
			fprintf(stderr, "dot-responder: listen %s: %s\n", a, strerror(-fd));
			return -1;
		}
		s->listen_fd[j] = fd;
	}
	s->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (s->wake_fd < 0) {
		fprintf(stderr, "dot-responder: eventfd: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

static void close_fds(shard_t *s)
{
	for (int j = 0; j < MAX_LISTEN; j++)
		if (s->listen_fd[j] >= 0)
			close(s->listen_fd[j]);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
}

/* The line tests wait for: every address with the port the kernel chose. */
static void print_ready(const resp_config_t *cfg)
{
	char line[MAX_LISTEN * 72], a[72];
	size_t o = 0;
	for (int j = 0; j < cfg->nlisten; j++) {
		config_format_listener(cfg, j, a, sizeof(a));
		o += (size_t)snprintf(line + o, sizeof(line) - o, "%s%s", j ? " " : "", a);
	}
	config_print_faults(cfg);
	fprintf(stderr, "listening on %s threads=%d\n", line, cfg->threads);
}

/* Until SIGINT or SIGTERM; SIGUSR1 prints the counters. */
static void wait_for_stop(const sigset_t *set, const shard_t *shards, int n)
{
	for (;;) {
		int sig;
		if (sigwait(set, &sig) != 0)
			continue;
		if (sig != SIGUSR1)
			return;
		print_counters(shards, n);
	}
}

/* Start the shards; 0 once all are ready, -1 otherwise. *started: how many
 * threads run (to be joined). */
static int start_shards(shard_t *shards, int n, int *started)
{
	for (; *started < n; (*started)++) {
		if (shard_start(&shards[*started])) {
			fprintf(stderr, "dot-responder: cannot start shard %d\n", *started);
			return -1;
		}
	}
	return shard_wait_ready(n) ? -1 : 0;
}

/* Wake every shard, join the started ones, print the counters once more
 * (when any ran), close the descriptors, free the array. Returns -1 when a
 * shard could not be woken. */
static int stop_shards(shard_t *shards, int n, int started)
{
	int rc = 0;
	for (int i = 0; i < n; i++)
		if (shard_wake(&shards[i]) < 0)
			rc = -1;
	for (int i = 0; i < started; i++)
		pthread_join(shards[i].thr, NULL);
	if (started)
		print_counters(shards, n);
	for (int i = 0; i < n; i++)
		close_fds(&shards[i]);
	free(shards);
	return rc;
}

int main(int argc, char **argv)
{
	static resp_config_t cfg;
	int rc = 1, started = 0;

	if (config_parse(&cfg, argc, argv) < 0)
		return 2;
	SSL_CTX *ctx = NULL;
	if (cfg.any_tls && !(ctx = tlsctx_new(&cfg)))
		return 1;
	raise_nofile();

	/* Shards inherit this mask; only the main thread takes signals. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	shard_t *shards = shards_new(&cfg, ctx);
	if (!shards) {
		fprintf(stderr, "dot-responder: out of memory\n");
		goto out;
	}
	for (int i = 0; i < cfg.threads; i++)
		if (open_fds(&shards[i], &cfg) < 0)
			goto out;
	if (start_shards(shards, cfg.threads, &started) < 0)
		goto out;
	print_ready(&cfg);
	wait_for_stop(&set, shards, cfg.threads);
	rc = 0;
out:
	if (shards && stop_shards(shards, cfg.threads, started) < 0)
		rc = 1;
	SSL_CTX_free(ctx);
	return rc;
}
