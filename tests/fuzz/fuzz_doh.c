/* fuzz_doh.c - the DNS-over-HTTPS session (core/doh.c) under a hostile
 * client. The input is a program of steps, each [op][len][len octets]:
 *   op % 4 == 0: the octets are the client's next HTTP/2 input (after the
 *                client preface and an empty SETTINGS, which the target
 *                sends first, so the fuzzer starts inside the protocol);
 *   op % 4 == 1: answer the oldest query handed up (as the query layer
 *                would: its question, one record, a TTL from the octets);
 *   op % 4 == 2: answer the query at index len among those handed up;
 *   op % 4 == 3: take the session's output.
 * A session that ends (dp_doh_recv < 0, or done) stops the program.
 *
 * Checked, besides ASan/UBSan (leaks included: a session freed with
 * requests open must free them): every frame handed up is a whole DNS
 * message of at least a header whose ID names a slot in use; queries in
 * flight never exceed DP_DOH_SLOTS; answers held never exceed what the
 * session counts in its footprint.
 *
 * Seeds (corpus/doh/): GET and POST requests in HPACK literals, a reset,
 * written by tests/fuzz/doh_seeds.py.
 */
#include "../../core/doh.c"

#include <stdio.h>

#define CHECK(x)                                                                   \
	do {                                                                       \
		if (!(x)) {                                                        \
			fprintf(stderr, "fuzz_doh: check failed: %s (line %d)\n", #x, \
				__LINE__);                                        \
			abort();                                                   \
		}                                                                  \
	} while (0)

#define PENDING 512

static unsigned events[4];

static void on_stat(void *ctx, int which)
{
	(void)ctx;
	events[which]++;
}

typedef struct world {
	dp_doh_t *h;
	dp_buf_t frames;
	uint8_t q[PENDING][512]; /* queries handed up, not answered */
	uint16_t qlen[PENDING];
	unsigned nq;
} world_t;

/* Take the frames handed up into W->q, checking each. */
static void take(world_t *w)
{
	size_t off = 0;
	while (off + 2 <= w->frames.len) {
		size_t n = dp_rd16(w->frames.data + off);
		CHECK(off + 2 + n <= w->frames.len);
		const uint8_t *m = w->frames.data + off + 2;
		CHECK(n >= 12);
		const slot_t *s = &w->h->slot[m[1]];
		CHECK(s->used && s->gen == m[0]);
		if (w->nq < PENDING && n <= sizeof(w->q[0]) - 16) {
			memcpy(w->q[w->nq], m, n);
			w->qlen[w->nq++] = (uint16_t)n;
		}
		off += 2 + n;
	}
	CHECK(off == w->frames.len);
	w->frames.len = 0;
}

/* Answer query i with one A record of TTL ttl. */
static void answer(world_t *w, unsigned i, uint8_t ttl)
{
	uint8_t a[2 + 512 + 16];
	size_t n = w->qlen[i];
	memcpy(a + 2, w->q[i], n);
	a[2 + 2] |= 0x80;
	static const uint8_t rr[] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 192, 0, 2, 1 };
	size_t k = n;
	if (dp_rd16(a + 2 + 4) == 1) { /* one question: a record after it */
		memcpy(a + 2 + n, rr, sizeof(rr));
		a[2 + n + 9] = ttl;
		dp_wr16(a + 2 + 6, 1);
		k += sizeof(rr);
	}
	dp_wr16(a, (uint16_t)k);
	dp_doh_answer(w->h, a, k + 2);
	memmove(&w->q[i], &w->q[i + 1], (w->nq - i - 1) * sizeof(w->q[0]));
	memmove(&w->qlen[i], &w->qlen[i + 1], (w->nq - i - 1) * sizeof(w->qlen[0]));
	w->nq--;
}

static bool output(world_t *w)
{
	dp_buf_t out = { 0 };
	int rc = dp_doh_output(w->h, &out);
	dp_buf_free(&out);
	return rc == 0;
}

static void check(const world_t *w)
{
	CHECK(dp_doh_inflight(w->h) <= DP_DOH_SLOTS);
	CHECK(dp_doh_pending(w->h) <= dp_doh_footprint(w->h));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static world_t w;
	memset(&w, 0, sizeof(w));
	w.h = dp_doh_new("/dns-query", on_stat, NULL);
	CHECK(w.h);
	static const uint8_t hello[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
				       "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
	bool live = dp_doh_recv(w.h, hello, sizeof(hello) - 1, &w.frames) == 0;
	while (live && size >= 2) {
		uint8_t op = data[0], len = data[1];
		size_t n = DP_MIN((size_t)len, size - 2);
		const uint8_t *p = data + 2;
		data += 2 + n;
		size -= 2 + n;
		switch (op % 4) {
		case 0:
			live = dp_doh_recv(w.h, p, n, &w.frames) == 0;
			take(&w);
			break;
		case 1:
			if (w.nq)
				answer(&w, 0, n ? p[0] : 0);
			break;
		case 2:
			if (w.nq)
				answer(&w, len % w.nq, 7);
			break;
		default:
			live = output(&w);
			break;
		}
		check(&w);
		live = live && !dp_doh_done(w.h);
	}
	output(&w);
	dp_doh_free(w.h);
	dp_buf_free(&w.frames);
	return 0;
}
