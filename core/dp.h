/* dp.h - definitions every module shares: error codes, branch hints, clocks.
 *
 * Convention (one for the whole project): functions return 0 or a
 * non-negative value on success and a negative code on failure. Codes in
 * [-4095, -1] are -errno (as liburing and cqe->res use); codes from DP_E_BASE
 * down are dotproxy's own. dp_strerror() names either kind.
 */
#ifndef DP_DP_H
#define DP_DP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define DP_VERSION "0.1.0"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define DP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DP_MAX(a, b) ((a) > (b) ? (a) : (b))
/* The element of type T whose member m is at p. */
#define DP_CONTAINER_OF(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

enum {
	DP_E_BASE = -10000,
	DP_E_MALFORMED = DP_E_BASE, /* message unreadable: drop it */
	DP_E_FORMERR = DP_E_BASE - 1, /* header readable, rest is not */
	DP_E_NOTIMP = DP_E_BASE - 2, /* opcode we do not implement */
	DP_E_BADVERS = DP_E_BASE - 3, /* EDNS version we do not know */
	DP_E_RESPONSE = DP_E_BASE - 4, /* QR=1 where a query was expected */
	DP_E_FULL = DP_E_BASE - 5, /* a bounded table is full */
	DP_E_CONFIG = DP_E_BASE - 6, /* invalid configuration */
	DP_E_TLS = DP_E_BASE - 7, /* TLS failure */
	DP_E_TOOBIG = DP_E_BASE - 8, /* does not fit the buffer */
};

/* Name of an error code (negative errno or DP_E_*). Never NULL. */
const char *dp_strerror(int err);

/* Monotonic clock in nanoseconds / milliseconds. */
static inline uint64_t dp_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t dp_now_ms(void)
{
	return dp_now_ns() / 1000000ull;
}

static inline uint16_t dp_rd16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline void dp_wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline uint32_t dp_rd32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void dp_wr32(uint8_t *p, uint32_t v)
{
	dp_wr16(p, (uint16_t)(v >> 16));
	dp_wr16(p + 2, (uint16_t)v);
}

#endif
