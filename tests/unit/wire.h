/* wire.h - a tiny DNS wire writer shared by the unit tests (include after
 * <cmocka.h>). Big enough for a 64 KiB message. */
#ifndef DP_TEST_WIRE_H
#define DP_TEST_WIRE_H

#include <stdint.h>
#include <string.h>

typedef struct wire {
	uint8_t b[70000];
	size_t n;
} wire_t;

static inline void put8(wire_t *w, unsigned v)
{
	assert_true(w->n < sizeof(w->b));
	w->b[w->n++] = (uint8_t)v;
}

static inline void put16(wire_t *w, unsigned v)
{
	put8(w, v >> 8);
	put8(w, v);
}

static inline void put32(wire_t *w, uint32_t v)
{
	put16(w, v >> 16);
	put16(w, v & 0xffff);
}

static inline void put_bytes(wire_t *w, const void *p, size_t n)
{
	assert_true(w->n + n <= sizeof(w->b));
	if (n == 0)
		return; /* p may be NULL */
	memcpy(w->b + w->n, p, n);
	w->n += n;
}

/* Uncompressed name from dotted text; "" or "." is the root. */
static inline void put_name(wire_t *w, const char *dotted)
{
	const char *p = dotted;
	while (*p && strcmp(p, ".") != 0) {
		const char *dot = strchr(p, '.');
		size_t l = dot ? (size_t)(dot - p) : strlen(p);
		put8(w, (unsigned)l);
		put_bytes(w, p, l);
		p += l;
		if (*p == '.')
			p++;
	}
	put8(w, 0);
}

static inline void put_hdr(wire_t *w, unsigned id, unsigned flags, unsigned qd, unsigned an,
		    unsigned ns, unsigned ar)
{
	w->n = 0;
	put16(w, id);
	put16(w, flags);
	put16(w, qd);
	put16(w, an);
	put16(w, ns);
	put16(w, ar);
}

/* The fixed part of an RR after its owner name. */
static inline void put_rr_tail(wire_t *w, unsigned type, unsigned cls, uint32_t ttl, const void *rdata,
			size_t rdlen)
{
	put16(w, type);
	put16(w, cls);
	put32(w, ttl);
	put16(w, (unsigned)rdlen);
	put_bytes(w, rdata, rdlen);
}

#endif
