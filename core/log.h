/* log.h - key=value log lines on stderr, with levels.
 *
 * A line looks like: ts=2026-11-25T10:00:00.123Z level=warn msg="..." k=v ...
 * Callers pass the key=value tail themselves. Thread-safe: one write(2) per
 * line, so lines from different shards never interleave.
 */
#ifndef DP_LOG_H
#define DP_LOG_H

#include "dp.h"

enum dp_log_level { DP_LOG_DEBUG = 0, DP_LOG_INFO, DP_LOG_WARN, DP_LOG_ERROR };

extern int dp_log_level;

/* Log one line if level >= dp_log_level. msg is quoted; fmt (may be NULL)
 * formats the key=value tail. */
void dp_log(int level, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define dp_debug(...) do { if (dp_log_level <= DP_LOG_DEBUG) dp_log(DP_LOG_DEBUG, __VA_ARGS__); } while (0)
#define dp_info(...) dp_log(DP_LOG_INFO, __VA_ARGS__)
#define dp_warn(...) dp_log(DP_LOG_WARN, __VA_ARGS__)
#define dp_error(...) dp_log(DP_LOG_ERROR, __VA_ARGS__)

#endif
