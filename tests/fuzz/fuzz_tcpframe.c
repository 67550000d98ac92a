/* fuzz_tcpframe.c - dp_tcpframe_split over a stream received in two parts.
 * The first input byte picks where the stream is cut and after how many
 * frames the callback fails; the rest is the stream. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "tcpframe.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

typedef struct ctx {
	const uint8_t *base;
	size_t base_len;
	size_t expect; /* where the next frame's length prefix must be */
	unsigned frames, fail_at;
	size_t total; /* bytes of frames seen, prefixes included */
} ctx_t;

static int on_frame(void *p, uint8_t *msg, size_t len)
{
	ctx_t *c = p;
	CHECK(len >= 1 && len <= 65535);
	CHECK(msg == c->base + c->expect + 2);
	CHECK(c->expect + 2 + len <= c->base_len);
	CHECK(dp_rd16(msg - 2) == len);
	c->expect += 2 + len;
	c->total += 2 + len;
	c->frames++;
	dp_dns_view_t v;
	(void)dp_dns_parse_query(msg, len, &v);
	if (c->fail_at && c->frames == c->fail_at)
		return DP_E_TOOBIG;
	return 0;
}

static uint8_t held[1 << 17];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > sizeof(held) / 2)
		return 0;
	uint8_t mode = data[0];
	const uint8_t *s = data + 1;
	size_t n = size - 1;

	/* One pass over the whole stream. */
	memcpy(held, s, n);
	ctx_t whole = { .base = held, .base_len = n };
	long used = dp_tcpframe_split(held, n, on_frame, &whole);
	CHECK(used == DP_E_MALFORMED || (used >= 0 && (size_t)used == whole.total));
	if (used >= 0) {
		CHECK((size_t)used <= n);
		/* What is left is not a whole frame. */
		CHECK(dp_tcpframe_need(held + used, n - (size_t)used) > 0);
	}

	/* The same stream in two receives gives the same frames. */
	size_t cut = n ? (size_t)(mode & 0x1f) * n / 31 : 0;
	memcpy(held, s, cut);
	ctx_t two = { .base = held, .base_len = cut };
	long u1 = dp_tcpframe_split(held, cut, on_frame, &two);
	if (u1 >= 0) {
		size_t keep = cut - (size_t)u1;
		memmove(held, held + u1, keep);
		memcpy(held + keep, s + cut, n - cut);
		two.base_len = keep + n - cut;
		two.expect = 0;
		long u2 = dp_tcpframe_split(held, two.base_len, on_frame, &two);
		if (used >= 0) {
			CHECK(u2 >= 0 && (size_t)u1 + (size_t)u2 == (size_t)used);
			CHECK(two.frames == whole.frames);
		} else {
			CHECK(u2 == DP_E_MALFORMED);
		}
	} else {
		CHECK(u1 == DP_E_MALFORMED && used == DP_E_MALFORMED);
	}

	/* A failing callback stops the split at once and its code comes back. */
	unsigned fail_at = (mode >> 5) + 1;
	if (used >= 0 && whole.frames >= fail_at) {
		memcpy(held, s, n);
		ctx_t f = { .base = held, .base_len = n, .fail_at = fail_at };
		CHECK(dp_tcpframe_split(held, n, on_frame, &f) == DP_E_TOOBIG);
		CHECK(f.frames == fail_at);
	}
	return 0;
}
