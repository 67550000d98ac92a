/* main.c - dotproxy: parse the settings, bind, drop privileges, start the
 * shards, then hand over to the control loop (signals, reload, drain,
 * metrics) until it is time to stop. */
#include "control.h"
#include "engine.h"
#include "log.h"
#include "siphash.h"
#include "steer.h"
#include "tls.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static int online_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

/* After binding: become cfg->user unless told to stay root. Returns 0 or
 * -1 with a message in err (refusing to run as root by accident). */
static int drop_privileges(const dp_config_t *cfg, char *err, size_t errlen)
{
	if (geteuid() != 0 || cfg->allow_root)
		return 0;
	struct passwd *pw = getpwnam(cfg->user);
	if (!pw) {
		snprintf(err, errlen, "unknown user %s: refusing to run as root (--user NAME, or --allow-root)",
			 cfg->user);
		return -1;
	}
	if (pw->pw_uid == 0) {
		snprintf(err, errlen, "--user %s is root: refusing (use --allow-root to mean it)", cfg->user);
		return -1;
	}
	if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0 ||
	    setuid(0) == 0) {
		snprintf(err, errlen, "cannot drop privileges to %s: %s", cfg->user, strerror(errno));
		return -1;
	}
	dp_info("dropped privileges", "user=%s uid=%u gid=%u", cfg->user, (unsigned)pw->pw_uid,
		(unsigned)pw->pw_gid);
	return 0;
}

static bool caps_empty(const struct __user_cap_data_struct d[2])
{
	for (int i = 0; i < 2; i++)
		if (d[i].effective || d[i].permitted || d[i].inheritable)
			return false;
	return true;
}

/* After binding (and after becoming cfg->user): give up every capability,
 * whoever granted it (systemd's AmbientCapabilities, a file capability,
 * root with --allow-root). Nothing later needs one: a reload never binds
 * (listen addresses and the metrics address need a restart), and threads
 * inherit this thread's sets, so this runs before any shard starts.
 * Clears the bounding set where allowed (CAP_SETPCAP, i.e. root), then the
 * ambient, inheritable, permitted and effective sets. Returns 0, or -1 with
 * a message in err when a capability could not be dropped. */
static int drop_capabilities(char *err, size_t errlen)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) != 0) {
		snprintf(err, errlen, "cannot read capabilities: %s", strerror(errno));
		return -1;
	}
	int bounding = 0;
	if (d[0].effective & (1u << CAP_SETPCAP)) {
		for (int c = 0; c < 64 && prctl(PR_CAPBSET_READ, c, 0, 0, 0) >= 0; c++)
			if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) == 0)
				bounding++;
	}
	if (caps_empty(d))
		return 0; /* nothing to drop: no capset needed (a filter may forbid it) */
	/* Lowering permitted and inheritable empties the ambient set too. */
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capset, &h, d) != 0 || syscall(SYS_capget, &h, d) != 0 || !caps_empty(d)) {
		snprintf(err, errlen, "cannot drop capabilities after binding: %s (capset must be allowed)",
			 strerror(errno));
		return -1;
	}
	dp_info("dropped capabilities", "bounding_dropped=%d", bounding);
	return 0;
}

int main(int argc, char **argv)
{
	char err[512] = "";
	int status = 1, started = 0, n = 0;
	int (*udp)[DP_MAX_LISTEN] = NULL, (*tcp)[DP_MAX_LISTEN] = NULL;
	dp_shard_t *shards = NULL;
	dp_control_t ctl = { .metrics_fd = -1 };
	/* Shared by the shards, outlive them: the hand-off queues (a query
	 * goes to its home shard) and the per-client rate limiter. */
	dp_xshard_t xs;
	dp_ratelimit_t rlim;
	memset(&xs, 0, sizeof(xs));
	memset(&rlim, 0, sizeof(rlim));
	dp_config_t *cfg = malloc(sizeof(*cfg));
	if (!cfg) {
		fprintf(stderr, "dotproxy: out of memory\n");
		return 1;
	}
	dp_config_defaults(cfg);
	int rc = dp_config_parse_args(cfg, argc, argv, err, sizeof(err));
	if (rc == 1) {
		status = 0;
		goto out;
	}
	if (rc < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		status = 2;
		goto out;
	}
	dp_log_level = cfg->log_level;
	/* The key of every table a client can fill (cache, in-flight table,
	 * rate limiter): drawn before any shard exists, never shown. */
	rc = dp_hash_key_init();
	if (rc < 0) {
		fprintf(stderr, "dotproxy: cannot draw the hash key: %s\n", dp_strerror(rc));
		goto out;
	}
	if (cfg->threads == 0)
		cfg->threads = online_cpus();
	if (access(cfg->ca_file, R_OK) != 0) {
		fprintf(stderr, "dotproxy: cannot read CA file %s: %s\n", cfg->ca_file, strerror(errno));
		goto out;
	}

	/* Every client connection is a file descriptor: raise the soft limit
	 * to the hard one (often 1024 -> 1048576) before the first accept. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < cfg->max_tcp_clients + 256u)
		dp_warn("file descriptor limit below --max-tcp-clients", "nofile=%llu max_tcp_clients=%u",
			(unsigned long long)rl.rlim_cur, cfg->max_tcp_clients);

	/* The shards set their rings up after the user switch, and the kernel
	 * counts io_uring's pinned memory per user against RLIMIT_MEMLOCK
	 * (8 MB by default): every process of that user (several dotproxies as
	 * nobody) shares it. Raise the limit while we still may; it outlives
	 * the drop of privileges. Not fatal: the error says so if rings fail. */
	rlim_t memlock = (rlim_t)cfg->threads * (16u << 20);
	if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < memlock) {
		struct rlimit want = { memlock, rl.rlim_max == RLIM_INFINITY || rl.rlim_max > memlock
							? rl.rlim_max : memlock };
		if (setrlimit(RLIMIT_MEMLOCK, &want) != 0 && rl.rlim_max > rl.rlim_cur) {
			want.rlim_cur = want.rlim_max = rl.rlim_max;
			setrlimit(RLIMIT_MEMLOCK, &want);
		}
	}

	/* Signals are taken by the control loop (signalfd); shards never see
	 * them, so block them before any thread exists. */
	sigset_t set;
	dp_control_signals(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	n = cfg->threads;
	udp = calloc((size_t)n, sizeof(*udp));
	tcp = calloc((size_t)n, sizeof(*tcp));
	shards = calloc((size_t)n, sizeof(dp_shard_t));
	if (!udp || !tcp || !shards) {
		fprintf(stderr, "dotproxy: out of memory\n");
		goto out;
	}
	if ((n > 1 && dp_xshard_init(&xs, (uint32_t)n, dp_xshard_query_ring_size((uint32_t)n),
					    DP_XS_ANSWER_RING) < 0) ||
	    dp_rl_init_shared(&rlim, 1u << 16) < 0) {
		fprintf(stderr, "dotproxy: out of memory\n");
		goto out;
	}
	dp_rl_set_rate(&rlim, cfg->rate_limit, cfg->rate_limit);
	ctl = (dp_control_t){ .shards = shards, .nshards = n, .cfg = cfg, .argc = argc, .argv = argv,
			      .metrics_fd = -1 };
	if (dp_engine_bind_all(cfg, n, udp, tcp, err, sizeof(err)) < 0 ||
	    dp_control_bind_metrics(&ctl, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		goto out;
	}
	/* One TLS context (one copy of the CA bundle) for every shard: it is
	 * touched only when a connection is made, never per query. Made
	 * before privileges go, like the sockets. */
	SSL_CTX *ctx = dp_tls_client_ctx(cfg, err, sizeof(err));
	if (!ctx) {
		fprintf(stderr, "dotproxy: %s\n", err);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		SSL_CTX_up_ref(ctx);
		shards[i].ssl_ctx = ctx;
	}
	SSL_CTX_free(ctx);
	/* Steering needs CAP_BPF and CAP_NET_ADMIN: after binding (it takes
	 * every shard's UDP socket), before they go. Logs one line; without
	 * it queries are handed to their home shard. */
	dp_steer_start(cfg, n, udp);
	if (drop_privileges(cfg, err, sizeof(err)) < 0 || drop_capabilities(err, sizeof(err)) < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		goto out;
	}

	for (int i = 0; i < n; i++) {
		dp_shard_t *s = &shards[i];
		s->id = i;
		s->cfg = cfg;
		s->nlisten = cfg->nlisten;
		s->rl = &rlim;
		s->xs = n > 1 ? &xs : NULL;
		s->all = shards;
		s->nshards = (uint32_t)n;
		memcpy(s->udp_fd, udp[i], sizeof(s->udp_fd));
		memcpy(s->tcp_fd, tcp[i], sizeof(s->tcp_fd));
		for (int l = 0; l < DP_MAX_LISTEN; l++)
			udp[i][l] = tcp[i][l] = -1; /* the shard owns them now */
		rc = dp_shard_start(s);
		if (rc < 0) {
			fprintf(stderr, "dotproxy: shard %d: %s\n", i,
				s->init_msg[0] ? s->init_msg : dp_strerror(rc));
			goto out;
		}
		started++;
	}
	/* Every ring exists: shards may hand queries to each other. */
	__atomic_store_n(&xs.ready, 1, __ATOMIC_RELEASE);
	for (int l = 0; l < cfg->nlisten; l++)
		dp_info("listening", "addr=%s transports=udp,tcp", cfg->listen_text[l]);
	for (int u = 0; u < cfg->nupstream; u++)
		dp_info("upstream", "addr=%s", cfg->upstream[u].text);
	if (cfg->metrics_on) {
		char m[80];
		dp_sockaddr_str(&cfg->metrics, m, sizeof(m));
		dp_info("metrics", "addr=%s paths=/metrics,/healthz", m);
	}
	dp_info("started", "version=%s shards=%d timeout_ms=%u", DP_VERSION, n, cfg->timeout_ms);

	status = dp_control_run(&ctl);
	cfg = ctl.cfg; /* a reload may have replaced it */
	for (int i = 0; i < n; i++)
		dp_shard_stop(&shards[i]);
	for (int i = 0; i < n; i++)
		dp_shard_join(&shards[i]);
	started = 0;
	dp_control_log_stats(shards, n);
	dp_info("stopped", NULL);
out:
	for (int j = 0; j < started; j++) {
		dp_shard_stop(&shards[j]);
		dp_shard_join(&shards[j]);
	}
	for (int i = 0; shards && i < n; i++) {
		if (i >= started && shards[i].ssl_ctx && !shards[i].exited)
			SSL_CTX_free(shards[i].ssl_ctx); /* never started: still ours */
	}
	for (int i = 0; udp && tcp && i < n; i++)
		for (int l = 0; l < DP_MAX_LISTEN; l++) {
			if (udp[i][l] >= 0)
				close(udp[i][l]);
			if (tcp[i][l] >= 0)
				close(tcp[i][l]);
		}
	if (ctl.metrics_fd >= 0)
		close(ctl.metrics_fd);
	/* every shard is joined: nobody touches the queues any more */
	dp_xshard_free(&xs);
	dp_rl_free(&rlim);
	free(shards);
	free(udp);
	free(tcp);
	free(cfg);
	return status;
}
