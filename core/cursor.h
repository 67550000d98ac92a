/* cursor.h - a bounds-checked read cursor over a wire message (the model is
 * Knot DNS's wire_ctx_t).
 *
 * A cursor reads octets [0, len) of a buffer it does not own. Every read
 * checks the bound first; a read that would pass it reads nothing, returns
 * 0, leaves the position where it was and sets err, and err sticks: every
 * later read and skip is a no-op returning 0. A parser can therefore read a
 * whole fixed part (type, class, TTL, RDLENGTH) and test err once, and no
 * sequence of calls reads a byte beyond len. Header only: the reads sit on
 * the hot path (dns.c validates every message with them) and must inline.
 */
#ifndef DP_CURSOR_H
#define DP_CURSOR_H

#include "dp.h"

typedef struct dp_cursor {
	const uint8_t *buf;
	size_t len; /* octets [0, len) may be read */
	size_t pos; /* next octet to read, <= len */
	int err; /* 0, or DP_E_FORMERR once a read or a move went out of bounds */
} dp_cursor_t;

/* A cursor over buf[0, len) at pos; pos past len sets err at once. */
static inline void dp_cursor_init(dp_cursor_t *c, const uint8_t *buf, size_t len, size_t pos)
{
	c->buf = buf;
	c->len = len;
	c->pos = pos <= len ? pos : len;
	c->err = pos <= len ? 0 : DP_E_FORMERR;
}

/* Octets left to read; 0 once err is set. */
static inline size_t dp_cursor_left(const dp_cursor_t *c)
{
	return c->err ? 0 : c->len - c->pos;
}

/* True when n more octets can be read; else sets err. */
static inline bool dp_cursor_need(dp_cursor_t *c, size_t n)
{
	if (unlikely(n > dp_cursor_left(c))) {
		c->err = DP_E_FORMERR;
		return false;
	}
	return true;
}

static inline uint8_t dp_cursor_u8(dp_cursor_t *c)
{
	if (!dp_cursor_need(c, 1))
		return 0;
	return c->buf[c->pos++];
}

/* Network byte order. */
static inline uint16_t dp_cursor_u16(dp_cursor_t *c)
{
	if (!dp_cursor_need(c, 2))
		return 0;
	uint16_t v = dp_rd16(c->buf + c->pos);
	c->pos += 2;
	return v;
}

/* Network byte order. */
static inline uint32_t dp_cursor_u32(dp_cursor_t *c)
{
	if (!dp_cursor_need(c, 4))
		return 0;
	uint32_t hi = dp_cursor_u16(c); /* both halves are there */
	return hi << 16 | dp_cursor_u16(c);
}

/* Step over n octets (all of them there, or err). */
static inline void dp_cursor_skip(dp_cursor_t *c, size_t n)
{
	if (dp_cursor_need(c, n))
		c->pos += n;
}

/* Move to pos (at most len, or err); for the end of a name another walker
 * read. */
static inline void dp_cursor_seek(dp_cursor_t *c, size_t pos)
{
	if (c->err)
		return;
	if (unlikely(pos > c->len))
		c->err = DP_E_FORMERR;
	else
		c->pos = pos;
}

#endif
