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

#endif
