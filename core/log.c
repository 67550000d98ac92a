/* log.c - key=value log lines on stderr; dp_strerror. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

int dp_log_level = DP_LOG_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

/* Repetitive warnings and errors are rate-limited per call site message and
 * thread: at most RL_BURST lines a second each; the first line after a quiet
 * spell says how many were suppressed. */
#define RL_SLOTS 16
#define RL_BURST 5
static __thread struct {
	const char *msg;
	uint64_t window_ms;
	uint32_t count, suppressed;
} rl[RL_SLOTS];

static uint32_t rate_limited(const char *msg, bool *drop)
{
	uint64_t now = dp_now_ms();
	unsigned slot = (unsigned)(((uintptr_t)msg >> 3) % RL_SLOTS);
	if (rl[slot].msg != msg) {
		rl[slot].msg = msg;
		rl[slot].window_ms = now;
		rl[slot].count = 0;
		rl[slot].suppressed = 0;
	}
	if (now - rl[slot].window_ms >= 1000) {
		rl[slot].window_ms = now;
		rl[slot].count = 0;
	}
	if (++rl[slot].count > RL_BURST) {
		rl[slot].suppressed++;
		*drop = true;
		return 0;
	}
	uint32_t sup = rl[slot].suppressed;
	rl[slot].suppressed = 0;
	*drop = false;
	return sup;
}

void dp_log(int level, const char *msg, const char *fmt, ...)
{
	if (level < dp_log_level)
		return;
	uint32_t suppressed = 0;
	if (level >= DP_LOG_WARN) {
		bool drop;
		suppressed = rate_limited(msg, &drop);
		if (drop)
			return;
	}
	char line[6144]; /* the SIGUSR1 stats line (up to 4 KB of values) fits whole */
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
			 "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s msg=\"%s\"",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
			 level_names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line) - 2)
		n = sizeof(line) - 2;
	if (fmt && *fmt) {
		line[n++] = ' ';
		va_list ap;
		va_start(ap, fmt);
		int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
		va_end(ap);
		if (m > 0)
			n += DP_MIN(m, (int)(sizeof(line) - (size_t)n - 2));
	}
	if (suppressed && (size_t)n < sizeof(line) - 40)
		n += snprintf(line + n, sizeof(line) - (size_t)n - 1, " suppressed=%u", suppressed);
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, (size_t)n);
	(void)w;
}

const char *dp_strerror(int err)
{
	switch (err) {
	case 0: return "success";
	case DP_E_MALFORMED: return "malformed message";
	case DP_E_FORMERR: return "format error";
	case DP_E_NOTIMP: return "not implemented";
	case DP_E_BADVERS: return "bad EDNS version";
	case DP_E_RESPONSE: return "response where a query was expected";
	case DP_E_FULL: return "table full";
	case DP_E_CONFIG: return "invalid configuration";
	case DP_E_TLS: return "TLS failure";
	case DP_E_TOOBIG: return "message too big";
	default:
		if (err < 0 && err > -4096)
			return strerror(-err);
		return "unknown error";
	}
}
