/* steer.c - load the steering program, fill its maps, attach it (steer.h).
 *
 * Runs once, on the main thread, before any shard starts and before the
 * capabilities are dropped (loading BPF needs CAP_BPF and CAP_NET_ADMIN, or
 * CAP_SYS_ADMIN). Owns nothing afterwards: the object is closed once the
 * program is attached, and the kernel keeps the program and its maps alive
 * for the reuseport groups.
 *
 * Built without DP_HAVE_STEERING (cmake -DDP_STEERING=OFF, or no libbpf or
 * no clang that targets BPF at build time), dp_steer_start() only says that
 * steering is unavailable.
 */
#include "steer.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define FALLBACK "UDP queries that land on another shard are handed to their home shard"

/* The one line when the program is not attached. expected: a deployment
 * choice (no privilege granted, a kernel or a build without BPF), said at
 * info level; anything else is a warning. */
static int say_off(const char *reason, bool expected)
{
	dp_log(expected ? DP_LOG_INFO : DP_LOG_WARN, "steering unavailable",
	       "reason=\"%s\" fallback=\"" FALLBACK "\"", reason);
	return 0;
}

#ifndef DP_HAVE_STEERING

static int try_attach(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN])
{
	(void)cfg, (void)nshards, (void)udp;
	return say_off("built without it (cmake -DDP_STEERING=OFF, or no libbpf or clang -target bpf)",
		       true);
}

#else

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/socket.h>
#include <unistd.h>

/* The compiled steer.bpf.c, embedded by the build (steer_obj.c). */
extern const unsigned char dp_steer_obj[];
extern const size_t dp_steer_obj_len;

/* libbpf's own chatter goes to the debug log; the one line the operator
 * sees is ours. */
static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (dp_log_level > DP_LOG_DEBUG || level == LIBBPF_DEBUG)
		return 0;
	char line[512];
	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = 0;
	dp_debug("libbpf", "text=\"%s\"", line);
	return 0;
}

/* The verifier's reason in its log: the last line before its statistics
 * ("processed N insns ..."), at most cap - 1 octets, quotes dropped. */
static void verifier_reason(const char *log, char *out, size_t cap)
{
	const char *end = strstr(log, "\nprocessed ");
	if (!end)
		end = log + strlen(log);
	const char *start = end;
	while (start > log && start[-1] != '\n')
		start--;
	if (start == end && start > log) { /* an empty line: take the one before */
		end = start - 1;
		start = end;
		while (start > log && start[-1] != '\n')
			start--;
	}
	size_t n = 0;
	for (const char *p = start; p < end && n + 1 < cap; p++)
		if (*p != '"' && *p != '\n')
			out[n++] = *p;
	out[n] = 0;
}

/* Why the object did not load (err: negative errno), in words. Returns
 * true when that is a deployment choice (no privilege granted, a kernel
 * without BPF), false for a surprise. */
static bool load_reason(int err, const char *log, char *out, size_t cap)
{
	char line[200];
	switch (-err) {
	case EPERM:
		snprintf(out, cap, "no privilege to load BPF: needs CAP_BPF and CAP_NET_ADMIN, or root "
				   "outside a restricted container");
		return true;
	case ENOSYS:
	case EOPNOTSUPP:
		snprintf(out, cap, "the kernel has no BPF: %s", strerror(-err));
		return true;
	case EINVAL:
	case EACCES:
	case E2BIG:
		verifier_reason(log, line, sizeof(line));
		snprintf(out, cap, "the kernel refused the program (old kernel or verifier): %s%s%s",
			 strerror(-err), line[0] ? ": " : "", line);
		return false;
	default:
		snprintf(out, cap, "cannot load the program: %s", strerror(-err));
		return false;
	}
}

/* Fill the maps: parameters, listen index of every socket (by cookie),
 * and socket listen * nshards + shard. Returns 0 or -errno with why. */
static int fill_maps(struct bpf_object *obj, const dp_config_t *cfg, int nshards,
		     int (*udp)[DP_MAX_LISTEN], char *why, size_t cap)
{
	int params = bpf_object__find_map_fd_by_name(obj, "dp_steer_params");
	int listen = bpf_object__find_map_fd_by_name(obj, "dp_steer_listen");
	int socks = bpf_object__find_map_fd_by_name(obj, "dp_steer_socks");
	if (params < 0 || listen < 0 || socks < 0) {
		snprintf(why, cap, "the embedded program lacks its maps");
		return -ENOENT;
	}
	struct dp_steer_params p;
	memset(&p, 0, sizeof(p));
	dp_steer_params_make(&p, (uint32_t)nshards, (uint32_t)cfg->nlisten);
	uint32_t zero = 0;
	if (bpf_map_update_elem(params, &zero, &p, BPF_ANY) < 0) {
		snprintf(why, cap, "cannot set its parameters: %s", strerror(errno));
		return -errno;
	}
	for (int l = 0; l < cfg->nlisten; l++)
		for (int sh = 0; sh < nshards; sh++) {
			int fd = udp[sh][l];
			uint64_t cookie = 0, v = (uint64_t)fd;
			socklen_t len = sizeof(cookie);
			uint32_t li = (uint32_t)l, key = (uint32_t)(l * nshards + sh);
			if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) < 0 ||
			    bpf_map_update_elem(listen, &cookie, &li, BPF_ANY) < 0 ||
			    bpf_map_update_elem(socks, &key, &v, BPF_ANY) < 0) {
				snprintf(why, cap, "cannot add the socket of shard %d on %s: %s", sh,
					 cfg->listen_text[l], strerror(errno));
				return -errno;
			}
		}
	return 0;
}

/* Attach prog to each listen address's group (through its shard 0
 * socket); on failure detach from those done. Returns 0 or -errno. */
static int attach(int prog, const dp_config_t *cfg, int (*udp)[DP_MAX_LISTEN], char *why,
		  size_t cap)
{
	for (int l = 0; l < cfg->nlisten; l++) {
		if (setsockopt(udp[0][l], SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog,
			       sizeof(prog)) == 0)
			continue;
		int err = -errno;
		snprintf(why, cap, "cannot attach it to %s: %s", cfg->listen_text[l], strerror(-err));
		for (int d = 0; d < l; d++) {
			int none = 0;
			setsockopt(udp[0][d], SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &none, sizeof(none));
		}
		return err;
	}
	return 0;
}

/* Open the embedded object, size its maps for nsocks sockets and load it
 * into the kernel (the verifier runs here). Returns the object (the
 * caller closes it), or NULL with why filled and *expected set when the
 * failure is a deployment choice. */
static struct bpf_object *load(uint32_t nsocks, char *why, size_t cap, bool *expected)
{
	size_t log_cap = 64 * 1024;
	char *log = calloc(1, log_cap); /* the verifier's log, read on failure */
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "dotproxy_steer",
		    .kernel_log_buf = log, .kernel_log_size = log ? log_cap : 0);
	struct bpf_object *obj = bpf_object__open_mem(dp_steer_obj, dp_steer_obj_len, &opts);
	if (!obj) {
		snprintf(why, cap, "cannot read the embedded program: %s", strerror(errno));
		goto fail;
	}
	struct bpf_map *socks = bpf_object__find_map_by_name(obj, "dp_steer_socks");
	struct bpf_map *listen = bpf_object__find_map_by_name(obj, "dp_steer_listen");
	if (!socks || !listen || bpf_map__set_max_entries(socks, nsocks) < 0 ||
	    bpf_map__set_max_entries(listen, nsocks) < 0) {
		snprintf(why, cap, "the embedded program lacks its maps");
		goto fail;
	}
	int err = bpf_object__load(obj);
	if (err < 0) {
		*expected = load_reason(err, log ? log : "", why, cap);
		goto fail;
	}
	free(log);
	return obj;
fail:
	bpf_object__close(obj);
	free(log);
	return NULL;
}

/* Load, fill and attach; one line either way. Returns 1 when attached. */
static int try_attach(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN])
{
	char why[300] = "";
	bool expected = false;
	uint64_t t0 = dp_now_ns();
	libbpf_print_fn_t old_print = libbpf_set_print(libbpf_print);
	struct bpf_object *obj = load((uint32_t)(nshards * cfg->nlisten), why, sizeof(why), &expected);
	struct bpf_program *prog = obj ? bpf_object__find_program_by_name(obj, "dp_steer") : NULL;
	int prog_fd = prog ? bpf_program__fd(prog) : -1;
	int on = 0;
	if (obj && prog_fd < 0)
		snprintf(why, sizeof(why), "the embedded program lacks dp_steer");
	else if (obj && fill_maps(obj, cfg, nshards, udp, why, sizeof(why)) == 0 &&
		 attach(prog_fd, cfg, udp, why, sizeof(why)) == 0)
		on = 1;
	if (on) {
		struct bpf_prog_info info;
		uint32_t info_len = sizeof(info);
		memset(&info, 0, sizeof(info));
		bpf_obj_get_info_by_fd(prog_fd, &info, &info_len);
		dp_info("steering on",
			"shards=%d listen=%d program=sk_reuseport verified_insns=%u xlated_insns=%u "
			"jited_bytes=%u load_ms=%llu",
			nshards, cfg->nlisten, info.verified_insns, info.xlated_prog_len / 8,
			info.jited_prog_len, (unsigned long long)((dp_now_ns() - t0) / 1000000));
	} else {
		say_off(why, expected);
	}
	/* Attached, the program and its maps live on in the reuseport groups. */
	bpf_object__close(obj);
	libbpf_set_print(old_print);
	return on;
}

#endif

int dp_steer_start(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN])
{
	if (cfg->steering == DP_STEER_OFF) {
		dp_info("steering off", "reason=\"--steering off\" fallback=\"" FALLBACK "\"");
		return 0;
	}
	if (nshards < 2) {
		dp_info("steering off", "reason=\"one shard: every query is home\"");
		return 0;
	}
	return try_attach(cfg, nshards, udp);
}
