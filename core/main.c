/* main.c - dotproxy: parse the settings, bind, drop privileges, start the
 * shards, then hand over to the control loop (signals, reload, drain,
 * metrics) until it is time to stop. */
#include "control.h"
#include "engine.h"
#include "log.h"
#include "siphash.h"
#include "steer.h"
#include "tls.h"
#include "tlssrv.h"

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

/* Every client connection is a file descriptor: raise the soft limit to
 * the hard one (often 1024 -> 1048576) before the first accept.
 * The shards set their rings up after the user switch, and the kernel
 * counts io_uring's pinned memory per user against RLIMIT_MEMLOCK (8 MB by
 * default): every process of that user (several dotproxies as nobody)
 * shares it. Raise that limit while we still may; it outlives the drop of
 * privileges. Neither is fatal: ring set-up says what ENOMEM means. */
static void raise_limits(const dp_config_t *cfg)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < cfg->max_tcp_clients + 256u)
		dp_warn("file descriptor limit below --max-tcp-clients", "nofile=%llu max_tcp_clients=%u",
			(unsigned long long)rl.rlim_cur, cfg->max_tcp_clients);
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
}

/* What the process owns between start and exit. The hand-off queues and
 * the rate limiter are shared by the shards and outlive them. */
typedef struct proc {
	dp_config_t *cfg;
	int n, started;
	int (*udp)[DP_MAX_LISTEN], (*tcp)[DP_MAX_LISTEN], (*tls)[DP_MAX_LISTEN]; /* until a shard owns them */
	dp_shard_t *shards;
	dp_control_t ctl;
	dp_xshard_t xs;
	dp_ratelimit_t rlim;
} proc_t;

/* Parse the command line and draw the hash key. Returns 0 to go on, or the
 * exit status (0 after --help or --version). */
static int configure(proc_t *p, int argc, char **argv)
{
	char err[512] = "";
	dp_config_defaults(p->cfg);
	int rc = dp_config_parse_args(p->cfg, argc, argv, err, sizeof(err));
	if (rc == 1)
		return 0;
	if (rc < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		return 2;
	}
	dp_log_level = p->cfg->log_level;
	/* The key of every table a client can fill (cache, in-flight table,
	 * rate limiter): drawn before any shard exists, never shown. */
	rc = dp_hash_key_init();
	if (rc < 0) {
		fprintf(stderr, "dotproxy: cannot draw the hash key: %s\n", dp_strerror(rc));
		return 1;
	}
	if (p->cfg->threads == 0)
		p->cfg->threads = online_cpus();
	if (access(p->cfg->ca_file, R_OK) != 0) {
		fprintf(stderr, "dotproxy: cannot read CA file %s: %s\n", p->cfg->ca_file,
			strerror(errno));
		return 1;
	}
	return -1;
}

/* Allocate the per-shard tables and what the shards share, bind every
 * socket, make the one TLS context, load the steering program, then drop
 * privileges and capabilities. Returns 0, or -1 with err filled. */
static int prepare(proc_t *p, int argc, char **argv, char *err, size_t errlen)
{
	const dp_config_t *cfg = p->cfg;
	int n = p->n = cfg->threads;
	p->udp = calloc((size_t)n, sizeof(*p->udp));
	p->tcp = calloc((size_t)n, sizeof(*p->tcp));
	p->tls = calloc((size_t)n, sizeof(*p->tls));
	p->shards = calloc((size_t)n, sizeof(dp_shard_t));
	if (!p->udp || !p->tcp || !p->tls || !p->shards ||
	    (n > 1 && dp_xshard_init(&p->xs, (uint32_t)n, dp_xshard_query_ring_size((uint32_t)n),
				     DP_XS_ANSWER_RING) < 0) ||
	    dp_rl_init_shared(&p->rlim, 1u << 16) < 0) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	dp_rl_set_rate(&p->rlim, cfg->rate_limit, cfg->rate_limit);
	p->ctl = (dp_control_t){ .shards = p->shards, .nshards = n, .cfg = p->cfg, .argc = argc,
				 .argv = argv, .metrics_fd = -1 };
	if (dp_engine_bind_all(cfg, n, p->udp, p->tcp, p->tls, err, errlen) < 0 ||
	    dp_control_bind_metrics(&p->ctl, err, errlen) < 0)
		return -1;
	/* One TLS context (one copy of the CA bundle) for every shard: it is
	 * touched only when a connection is made, never per query. Made
	 * before privileges go, like the sockets. */
	SSL_CTX *ctx = dp_tls_client_ctx(cfg, err, errlen);
	if (!ctx)
		return -1;
	for (int i = 0; i < n; i++) {
		SSL_CTX_up_ref(ctx);
		p->shards[i].ssl_ctx = ctx;
	}
	SSL_CTX_free(ctx);
	/* The TLS listeners' context: their key is read while we may. */
	if (dp_config_nenc(cfg)) {
		SSL_CTX *srv = dp_tlssrv_ctx(cfg, err, errlen);
		if (!srv)
			return -1;
		for (int i = 0; i < n; i++) {
			SSL_CTX_up_ref(srv);
			p->shards[i].srv_ctx = srv;
		}
		SSL_CTX_free(srv);
	}
	/* Steering needs CAP_BPF and CAP_NET_ADMIN: after binding (it takes
	 * every shard's UDP socket), before they go. Logs one line; without
	 * it queries are handed to their home shard. */
	dp_steer_start(cfg, n, p->udp);
	if (drop_privileges(cfg, err, errlen) < 0 || drop_capabilities(err, errlen) < 0)
		return -1;
	return 0;
}

/* Start every shard; each takes ownership of its sockets. Returns 0, or -1
 * with err filled (the shards started so far are stopped by teardown). */
static int start_shards(proc_t *p, char *err, size_t errlen)
{
	for (int i = 0; i < p->n; i++) {
		dp_shard_t *s = &p->shards[i];
		s->id = i;
		s->cfg = p->cfg;
		s->nlisten = p->cfg->nlisten;
		s->rl = &p->rlim;
		s->xs = p->n > 1 ? &p->xs : NULL;
		s->all = p->shards;
		s->nshards = (uint32_t)p->n;
		memcpy(s->udp_fd, p->udp[i], sizeof(s->udp_fd));
		memcpy(s->tcp_fd, p->tcp[i], sizeof(s->tcp_fd));
		s->nlisten_tls = dp_config_nenc(p->cfg);
		memcpy(s->tls_fd, p->tls[i], sizeof(s->tls_fd));
		for (int l = 0; l < DP_MAX_LISTEN; l++)
			p->udp[i][l] = p->tcp[i][l] = p->tls[i][l] = -1; /* the shard owns them now */
		int rc = dp_shard_start(s);
		if (rc < 0) {
			snprintf(err, errlen, "shard %d: %s", i,
				 s->init_msg[0] ? s->init_msg : dp_strerror(rc));
			return -1;
		}
		p->started++;
	}
	/* Every ring exists: shards may hand queries to each other. */
	__atomic_store_n(&p->xs.ready, 1, __ATOMIC_RELEASE);
	return 0;
}

static void log_started(const dp_config_t *cfg, int n)
{
	for (int l = 0; l < cfg->nlisten; l++)
		dp_info("listening", "addr=%s transports=udp,tcp", cfg->listen_text[l]);
	for (int l = 0; l < dp_config_nenc(cfg); l++) {
		const char *text;
		dp_config_enc(cfg, l, &text);
		dp_info("listening", "addr=%s transports=%s cert=\"%s\"", text,
			dp_config_enc_https(cfg, l) ? "https" : "tls", cfg->cert_file);
	}
	for (int u = 0; u < cfg->nupstream; u++)
		dp_info("upstream", "addr=%s zone=%s", cfg->upstream[u].text,
			cfg->zone[cfg->upstream[u].zone].text);
	if (cfg->metrics_on) {
		char m[80];
		dp_sockaddr_str(&cfg->metrics, m, sizeof(m));
		dp_info("metrics", "addr=%s paths=/metrics,/healthz", m);
	}
	dp_info("started", "version=%s shards=%d timeout_ms=%u", DP_VERSION, n, cfg->timeout_ms);
}

/* Stop and join the shards still running, close what no shard took, free
 * everything. */
static void teardown(proc_t *p)
{
	for (int j = 0; j < p->started; j++) {
		dp_shard_stop(&p->shards[j]);
		dp_shard_join(&p->shards[j]);
	}
	for (int i = 0; p->shards && i < p->n; i++) {
		if (i >= p->started && p->shards[i].ssl_ctx && !p->shards[i].exited)
			SSL_CTX_free(p->shards[i].ssl_ctx); /* never started: still ours */
		if (i >= p->started && p->shards[i].srv_ctx && !p->shards[i].exited)
			SSL_CTX_free(p->shards[i].srv_ctx);
	}
	for (int i = 0; p->udp && p->tcp && p->tls && i < p->n; i++)
		for (int l = 0; l < DP_MAX_LISTEN; l++) {
			if (p->udp[i][l] >= 0)
				close(p->udp[i][l]);
			if (p->tcp[i][l] >= 0)
				close(p->tcp[i][l]);
			if (p->tls[i][l] >= 0)
				close(p->tls[i][l]);
		}
	if (p->ctl.metrics_fd >= 0)
		close(p->ctl.metrics_fd);
	/* every shard is joined: nobody touches the queues any more */
	dp_xshard_free(&p->xs);
	dp_rl_free(&p->rlim);
	free(p->shards);
	free(p->udp);
	free(p->tcp);
	free(p->tls);
	free(p->cfg);
}

int main(int argc, char **argv)
{
	char err[512] = "";
	proc_t p;
	memset(&p, 0, sizeof(p));
	p.ctl.metrics_fd = -1;
	p.cfg = malloc(sizeof(*p.cfg));
	if (!p.cfg) {
		fprintf(stderr, "dotproxy: out of memory\n");
		return 1;
	}
	int status = configure(&p, argc, argv);
	if (status >= 0)
		goto out;
	status = 1;
	raise_limits(p.cfg);
	/* Signals are taken by the control loop (signalfd); shards never see
	 * them, so block them before any thread exists. */
	sigset_t set;
	dp_control_signals(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (prepare(&p, argc, argv, err, sizeof(err)) < 0 ||
	    start_shards(&p, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		goto out;
	}
	log_started(p.cfg, p.n);
	status = dp_control_run(&p.ctl);
	p.cfg = p.ctl.cfg; /* a reload may have replaced it */
	for (int i = 0; i < p.n; i++)
		dp_shard_stop(&p.shards[i]);
	for (int i = 0; i < p.n; i++)
		dp_shard_join(&p.shards[i]);
	p.started = 0;
	dp_control_log_stats(p.shards, p.n);
	dp_info("stopped", NULL);
out:
	teardown(&p);
	return status;
}
