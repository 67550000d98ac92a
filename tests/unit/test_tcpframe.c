/* test_tcpframe.c - 2-byte length framing on a stream. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tcpframe.h"

/* What the callback saw. */
typedef struct seen {
	int calls;
	int fail_at; /* return fail_rc on this call (1-based), 0 = never */
	int fail_rc;
	uint8_t *msg[16];
	size_t len[16];
} seen_t;

static int record(void *ctx, uint8_t *msg, size_t len)
{
	seen_t *s = ctx;
	if (s->calls < 16) {
		s->msg[s->calls] = msg;
		s->len[s->calls] = len;
	}
	s->calls++;
	if (s->fail_at && s->calls == s->fail_at)
		return s->fail_rc;
	return 1; /* positive returns are not errors */
}

static size_t put_frame(uint8_t *buf, size_t off, size_t len, uint8_t fill)
{
	dp_wr16(buf + off, (uint16_t)len);
	memset(buf + off + 2, fill, len);
	return off + 2 + len;
}

static void several_messages(void **state)
{
	uint8_t buf[256];
	size_t n = 0;
	n = put_frame(buf, n, 12, 'a');
	n = put_frame(buf, n, 1, 'b');
	n = put_frame(buf, n, 40, 'c');
	seen_t s = { 0 };
	assert_int_equal(dp_tcpframe_split(buf, n, record, &s), (long)n);
	assert_int_equal(s.calls, 3);
	/* In place: each message is a view into buf, behind its length. */
	assert_ptr_equal(s.msg[0], buf + 2);
	assert_int_equal(s.len[0], 12);
	assert_ptr_equal(s.msg[1], buf + 16);
	assert_int_equal(s.len[1], 1);
	assert_int_equal(s.msg[1][0], 'b');
	assert_ptr_equal(s.msg[2], buf + 19);
	assert_int_equal(s.len[2], 40);
	assert_int_equal(s.msg[2][39], 'c');
	assert_int_equal(dp_tcpframe_need(buf, n), 0);
}

static void partial_frame_kept(void **state)
{
	uint8_t buf[256];
	size_t n = put_frame(buf, 0, 20, 'a');
	size_t first = n;
	n = put_frame(buf, n, 30, 'b');
	/* Every cut inside the second frame consumes only the first. */
	for (size_t cut = first; cut < n; cut++) {
		seen_t s = { 0 };
		assert_int_equal(dp_tcpframe_split(buf, cut, record, &s), (long)first);
		assert_int_equal(s.calls, 1);
		size_t held = cut - first;
		size_t want = held < 2 ? 2 - held : 30 - (held - 2);
		assert_int_equal(dp_tcpframe_need(buf + first, held), want);
	}
	/* Every cut inside the first frame consumes nothing. */
	for (size_t cut = 0; cut < first; cut++) {
		seen_t s = { 0 };
		assert_int_equal(dp_tcpframe_split(buf, cut, record, &s), 0);
		assert_int_equal(s.calls, 0);
	}
}

static void byte_by_byte_stream(void **state)
{
	/* Feed a stream one byte at a time the way a receive loop would:
	 * keep what was not consumed, append, split again. */
	uint8_t stream[512], held[512];
	size_t n = 0;
	static const size_t sizes[] = { 3, 255, 1, 77, 2 };
	for (size_t i = 0; i < DP_ARRAY_LEN(sizes); i++)
		n = put_frame(stream, n, sizes[i], (uint8_t)('a' + i));
	size_t hn = 0;
	seen_t s = { 0 };
	for (size_t i = 0; i < n; i++) {
		held[hn++] = stream[i];
		long used = dp_tcpframe_split(held, hn, record, &s);
		assert_true(used >= 0);
		memmove(held, held + used, hn - (size_t)used);
		hn -= (size_t)used;
	}
	assert_int_equal(hn, 0);
	assert_int_equal(s.calls, DP_ARRAY_LEN(sizes));
	for (size_t i = 0; i < DP_ARRAY_LEN(sizes); i++)
		assert_int_equal(s.len[i], sizes[i]);
}

static void zero_length_frame(void **state)
{
	uint8_t buf[64];
	seen_t s = { 0 };
	dp_wr16(buf, 0);
	assert_int_equal(dp_tcpframe_split(buf, 2, record, &s), DP_E_MALFORMED);
	assert_int_equal(s.calls, 0);
	/* Also after a good frame, and even when nothing follows it. */
	size_t n = put_frame(buf, 0, 5, 'x');
	dp_wr16(buf + n, 0);
	memset(&s, 0, sizeof(s));
	assert_int_equal(dp_tcpframe_split(buf, n + 2, record, &s), DP_E_MALFORMED);
	assert_int_equal(s.calls, 1);
}

static void callback_error(void **state)
{
	uint8_t buf[64];
	size_t n = 0;
	for (int i = 0; i < 4; i++)
		n = put_frame(buf, n, 3, (uint8_t)i);
	seen_t s = { .fail_at = 2, .fail_rc = -EIO };
	assert_int_equal(dp_tcpframe_split(buf, n, record, &s), -EIO);
	assert_int_equal(s.calls, 2); /* stopped: frames 3 and 4 not delivered */
	seen_t s2 = { .fail_at = 1, .fail_rc = DP_E_TOOBIG };
	assert_int_equal(dp_tcpframe_split(buf, n, record, &s2), DP_E_TOOBIG);
	assert_int_equal(s2.calls, 1);
}

static void short_inputs(void **state)
{
	uint8_t buf[4] = { 0x00, 0x05, 0, 0 };
	seen_t s = { 0 };
	assert_int_equal(dp_tcpframe_split(buf, 0, record, &s), 0);
	assert_int_equal(dp_tcpframe_split(buf, 1, record, &s), 0);
	assert_int_equal(s.calls, 0);
	assert_int_equal(dp_tcpframe_need(buf, 0), 2);
	assert_int_equal(dp_tcpframe_need(buf, 1), 1);
	assert_int_equal(dp_tcpframe_need(buf, 2), 5);
	assert_int_equal(dp_tcpframe_need(buf, 4), 3);
}

static void largest_frame(void **state)
{
	static uint8_t buf[2 + 65535 + 1];
	size_t n = put_frame(buf, 0, 65535, 'z');
	seen_t s = { 0 };
	assert_int_equal(dp_tcpframe_need(buf, 2), 65535);
	assert_int_equal(dp_tcpframe_need(buf, n - 1), 1);
	assert_int_equal(dp_tcpframe_need(buf, n), 0);
	assert_int_equal(dp_tcpframe_split(buf, n - 1, record, &s), 0);
	assert_int_equal(dp_tcpframe_split(buf, n, record, &s), (long)n);
	assert_int_equal(s.calls, 1);
	assert_int_equal(s.len[0], 65535);
	/* A trailing lone byte stays for the next receive. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(dp_tcpframe_split(buf, n + 1, record, &s), (long)n);
	assert_int_equal(s.calls, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(several_messages),
		cmocka_unit_test(partial_frame_kept),
		cmocka_unit_test(byte_by_byte_stream),
		cmocka_unit_test(zero_length_frame),
		cmocka_unit_test(callback_error),
		cmocka_unit_test(short_inputs),
		cmocka_unit_test(largest_frame),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
