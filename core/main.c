/* main.c - dotproxy: parse the command line, bind, start the shards, wait
 * for signals, stop. */
#include "engine.h"
#include "log.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void log_stats(dp_shard_t *shards, int n)
{
	dp_stats_t sum;
	memset(&sum, 0, sizeof(sum));
	for (int i = 0; i < n; i++) {
#define DP_SUM(f)                                                                   \
	{                                                                           \
		uint64_t v = __atomic_load_n(&shards[i].stats.f, __ATOMIC_RELAXED); \
		if (strcmp(#f, "max_write_batch") == 0)                             \
			sum.f = DP_MAX(sum.f, v);                                   \
		else                                                                \
			sum.f += v;                                                 \
	}
		DP_STATS_FIELDS(DP_SUM)
#undef DP_SUM
	}
	char buf[2048];
	size_t o = 0;
#define DP_FMT(f)                                                                              \
	if (o < sizeof(buf))                                                                   \
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s=%llu", o ? " " : "", #f, \
				      (unsigned long long)sum.f);
	DP_STATS_FIELDS(DP_FMT)
#undef DP_FMT
	dp_log(DP_LOG_INFO, "stats", "%s", buf);
}

static int online_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

int main(int argc, char **argv)
{
	static dp_config_t cfg;
	char err[512] = "";
	dp_config_defaults(&cfg);
	int rc = dp_config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (rc == 1)
		return 0;
	if (rc < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		return 2;
	}
	dp_log_level = cfg.log_level;
	if (cfg.threads == 0)
		cfg.threads = online_cpus();
	if (access(cfg.ca_file, R_OK) != 0) {
		fprintf(stderr, "dotproxy: cannot read CA file %s: %s\n", cfg.ca_file,
			strerror(errno));
		return 1;
	}

	/* Every client connection is a file descriptor: raise the soft limit
	 * to the hard one (often 1024 -> 1048576) before the first accept. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < cfg.max_tcp_clients + 256u)
		dp_warn("file descriptor limit below --max-tcp-clients", "nofile=%llu max_tcp_clients=%u",
			(unsigned long long)rl.rlim_cur, cfg.max_tcp_clients);

	/* Signals are taken synchronously by this thread; shards never see them. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	int n = cfg.threads;
	int (*udp)[DP_MAX_LISTEN] = calloc((size_t)n, sizeof(*udp));
	int (*tcp)[DP_MAX_LISTEN] = calloc((size_t)n, sizeof(*tcp));
	dp_shard_t *shards = calloc((size_t)n, sizeof(dp_shard_t));
	if (!udp || !tcp || !shards) {
		fprintf(stderr, "dotproxy: out of memory\n");
		return 1;
	}
	if (dp_engine_bind_all(&cfg, n, udp, tcp, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotproxy: %s\n", err);
		return 1;
	}
	int started = 0;
	for (int i = 0; i < n; i++) {
		dp_shard_t *s = &shards[i];
		s->id = i;
		s->cfg = &cfg;
		s->nlisten = cfg.nlisten;
		memcpy(s->udp_fd, udp[i], sizeof(s->udp_fd));
		memcpy(s->tcp_fd, tcp[i], sizeof(s->tcp_fd));
		rc = dp_shard_start(s);
		if (rc < 0) {
			fprintf(stderr, "dotproxy: shard %d: %s\n", i,
				s->init_msg[0] ? s->init_msg : dp_strerror(rc));
			for (int j = 0; j < started; j++) {
				dp_shard_stop(&shards[j]);
				dp_shard_join(&shards[j]);
			}
			return 1;
		}
		started++;
	}
	for (int l = 0; l < cfg.nlisten; l++)
		dp_info("listening", "addr=%s transports=udp,tcp", cfg.listen_text[l]);
	for (int u = 0; u < cfg.nupstream; u++)
		dp_info("upstream", "addr=%s", cfg.upstream[u].text);
	dp_info("started", "version=%s shards=%d timeout_ms=%u", DP_VERSION, n, cfg.timeout_ms);

	for (;;) {
		int sig = sigwaitinfo(&set, NULL);
		if (sig == SIGUSR1) {
			log_stats(shards, n);
			continue;
		}
		if (sig == SIGINT || sig == SIGTERM)
			break;
	}
	dp_info("stopping", NULL);
	for (int i = 0; i < n; i++)
		dp_shard_stop(&shards[i]);
	for (int i = 0; i < n; i++)
		dp_shard_join(&shards[i]);
	log_stats(shards, n);
	free(shards);
	free(udp);
	free(tcp);
	return 0;
}
