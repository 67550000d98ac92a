/* test_doh.c - the DNS-over-HTTPS session (core/doh.c) against a real
 * HTTP/2 client: nghttp2's client session, in memory. The test plays
 * tcpconn and the query layer: it takes the frames the session hands up,
 * answers them (in any order) and hands the answers back framed.
 *
 * Covered: GET and POST to frames with slot IDs and back to 200 answers
 * with the request's ID, content-type, content-length and cache-control;
 * every refusal status; many streams sharing DNS ID 0 answered out of
 * order; a reset stream's answer dropped and its slot kept until then; the
 * slot bound under resets; rapid reset ending the session; a header block
 * over the limit; a CONTINUATION flood; answers held by a closed window;
 * memory back to its start; base64url.
 */
#include "../../core/doh.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#define MAXS 512

typedef struct resp {
	int status;
	char ctype[64];
	char cache[32];
	char allow[32];
	long clen;
	uint8_t body[4096];
	size_t blen;
	bool closed;
	uint32_t close_err;
	bool rst; /* the server reset it */
} resp_t;

typedef struct fx {
	dp_doh_t *h;
	nghttp2_session *cl;
	unsigned stats[4];
	dp_buf_t frames; /* what the session handed up, not taken yet */
	resp_t resp[MAXS * 2 + 2]; /* by stream ID / 2 */
	bool goaway; /* the client got one */
	int rc; /* last dp_doh_recv */
} fx_t;

static void on_stat(void *ctx, int which)
{
	((fx_t *)ctx)->stats[which]++;
}

static resp_t *resp_of(fx_t *f, int32_t stream)
{
	assert_true(stream > 0 && stream / 2 < (int32_t)DP_ARRAY_LEN(f->resp));
	return &f->resp[stream / 2];
}

/* ---- the client ---------------------------------------------------------- */

static int c_header(nghttp2_session *s, const nghttp2_frame *fr, const uint8_t *n, size_t nl,
		    const uint8_t *v, size_t vl, uint8_t flags, void *ud)
{
	(void)s;
	(void)flags;
	resp_t *r = resp_of(ud, fr->hd.stream_id);
	if (nl == 7 && memcmp(n, ":status", 7) == 0)
		r->status = atoi((const char *)v);
	else if (nl == 12 && memcmp(n, "content-type", 12) == 0)
		snprintf(r->ctype, sizeof(r->ctype), "%.*s", (int)vl, v);
	else if (nl == 13 && memcmp(n, "cache-control", 13) == 0)
		snprintf(r->cache, sizeof(r->cache), "%.*s", (int)vl, v);
	else if (nl == 14 && memcmp(n, "content-length", 14) == 0)
		r->clen = atol((const char *)v);
	else if (nl == 5 && memcmp(n, "allow", 5) == 0)
		snprintf(r->allow, sizeof(r->allow), "%.*s", (int)vl, v);
	return 0;
}

static int c_data(nghttp2_session *s, uint8_t flags, int32_t stream, const uint8_t *d, size_t n,
		  void *ud)
{
	(void)s;
	(void)flags;
	resp_t *r = resp_of(ud, stream);
	assert_true(r->blen + n <= sizeof(r->body));
	memcpy(r->body + r->blen, d, n);
	r->blen += n;
	return 0;
}

static int c_close(nghttp2_session *s, int32_t stream, uint32_t err, void *ud)
{
	(void)s;
	resp_t *r = resp_of(ud, stream);
	r->closed = true;
	r->close_err = err;
	return 0;
}

static int c_frame(nghttp2_session *s, const nghttp2_frame *fr, void *ud)
{
	(void)s;
	fx_t *f = ud;
	if (fr->hd.type == NGHTTP2_RST_STREAM)
		resp_of(f, fr->hd.stream_id)->rst = true;
	if (fr->hd.type == NGHTTP2_GOAWAY)
		f->goaway = true;
	return 0;
}

static void client_new(fx_t *f, uint32_t window)
{
	nghttp2_session_callbacks *cb;
	assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
	nghttp2_session_callbacks_set_on_header_callback(cb, c_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, c_close);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_frame);
	assert_int_equal(nghttp2_session_client_new(&f->cl, cb, f), 0);
	nghttp2_session_callbacks_del(cb);
	nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window },
					{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000 } };
	assert_int_equal(nghttp2_submit_settings(f->cl, NGHTTP2_FLAG_NONE, iv, 2), 0);
}

/* Move octets both ways until neither side has anything to say. */
static void pump(fx_t *f)
{
	for (int round = 0; round < 64; round++) {
		bool moved = false;
		const uint8_t *p;
		ssize_t n;
		while ((n = nghttp2_session_mem_send(f->cl, &p)) > 0) {
			f->rc = dp_doh_recv(f->h, p, (size_t)n, &f->frames);
			moved = true;
			if (f->rc < 0)
				break;
		}
		dp_buf_t out = { 0 };
		assert_int_equal(dp_doh_output(f->h, &out), 0);
		if (out.len) {
			moved = true;
			assert_int_equal(nghttp2_session_mem_recv(f->cl, out.data, out.len),
					 (ssize_t)out.len);
		}
		dp_buf_free(&out);
		if (!moved)
			return;
	}
	fail_msg("the sessions kept talking");
}

static int setup(void **state)
{
	fx_t *f = calloc(1, sizeof(*f));
	f->h = dp_doh_new("/dns-query", on_stat, f);
	assert_non_null(f->h);
	client_new(f, 65535);
	pump(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx_t *f = *state;
	nghttp2_session_del(f->cl);
	dp_doh_free(f->h);
	dp_buf_free(&f->frames);
	free(f);
	return 0;
}

/* ---- requests and answers -------------------------------------------------- */

/* A query for name (one label under "test."), ID id, into out. */
static size_t make_query(const char *name, uint16_t id, uint8_t *out)
{
	uint8_t q[] = { 0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };
	dp_wr16(q, id);
	memcpy(out, q, 12);
	size_t n = 12, l = strlen(name);
	out[n++] = (uint8_t)l;
	memcpy(out + n, name, l);
	n += l;
	memcpy(out + n, "\x04test\x00\x00\x01\x00\x01", 10);
	return n + 10;
}

static void b64url(const uint8_t *p, size_t n, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		out[o++] = a[v >> 18 & 63];
		out[o++] = a[v >> 12 & 63];
		if (i + 1 < n)
			out[o++] = a[v >> 6 & 63];
		if (i + 2 < n)
			out[o++] = a[v & 63];
	}
	out[o] = 0;
}

#define CNV(n, v) { (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE }

static int32_t get(fx_t *f, const char *path)
{
	nghttp2_nv nv[] = { CNV(":method", "GET"), CNV(":scheme", "https"),
			    CNV(":authority", "dns.test"), CNV(":path", path) };
	int32_t id = nghttp2_submit_request(f->cl, NULL, nv, 4, NULL, NULL);
	assert_true(id > 0);
	return id;
}

static int32_t send_get(fx_t *f, const char *name, uint16_t id)
{
	uint8_t q[300];
	char path[512] = "/dns-query?ct=x&dns=";
	b64url(q, make_query(name, id, q), path + strlen(path));
	return get(f, path);
}

typedef struct body {
	const uint8_t *p;
	size_t n, off;
} body_t;

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *fl,
			 nghttp2_data_source *src, void *ud)
{
	(void)s;
	(void)id;
	(void)ud;
	body_t *b = src->ptr;
	size_t k = DP_MIN(len, b->n - b->off);
	memcpy(buf, b->p + b->off, k);
	b->off += k;
	if (b->off == b->n)
		*fl |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)k;
}

static int32_t post(fx_t *f, const char *ctype, body_t *b)
{
	nghttp2_nv nv[] = { CNV(":method", "POST"), CNV(":scheme", "https"),
			    CNV(":authority", "dns.test"), CNV(":path", "/dns-query"),
			    CNV("content-type", ctype) };
	nghttp2_data_provider dp = { .source.ptr = b, .read_callback = body_read };
	int32_t id = nghttp2_submit_request(f->cl, NULL, nv, 5, &dp, NULL);
	assert_true(id > 0);
	return id;
}

/* The i-th frame handed up (0 first), its message at *msg. */
static size_t frame_at(fx_t *f, unsigned i, uint8_t **msg)
{
	size_t off = 0;
	for (;;) {
		assert_true(off + 2 <= f->frames.len);
		size_t n = dp_rd16(f->frames.data + off);
		if (i-- == 0) {
			*msg = f->frames.data + off + 2;
			return n;
		}
		off += 2 + n;
	}
}

static unsigned nframes(fx_t *f)
{
	unsigned k = 0;
	for (size_t off = 0; off + 2 <= f->frames.len; off += 2 + dp_rd16(f->frames.data + off))
		k++;
	return k;
}

/* Answer query q (len octets, as handed up) with one A record of TTL ttl,
 * as the query layer would, and hand it back framed. */
static void answer(fx_t *f, const uint8_t *q, size_t len, uint32_t ttl)
{
	uint8_t a[600];
	memcpy(a, q, len);
	a[2] |= 0x80; /* QR */
	a[3] = 0x80; /* RA */
	dp_wr16(a + 6, 1);
	static const uint8_t rr[] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 192, 0, 2, 1 };
	memcpy(a + len, rr, sizeof(rr));
	dp_wr16(a + len + 6, (uint16_t)(ttl >> 16));
	dp_wr16(a + len + 8, (uint16_t)ttl);
	uint8_t framed[602];
	dp_wr16(framed, (uint16_t)(len + sizeof(rr)));
	memcpy(framed + 2, a, len + sizeof(rr));
	assert_int_equal(dp_doh_answer(f->h, framed, len + sizeof(rr) + 2), 0);
}

static void take_frames(fx_t *f)
{
	f->frames.len = 0;
}

/* ---- tests --------------------------------------------------------------------- */

static void get_is_answered_with_its_id_and_min_ttl(void **state)
{
	fx_t *f = *state;
	int32_t s = send_get(f, "www", 0x1234);
	pump(f);
	assert_int_equal(nframes(f), 1);
	uint8_t *m;
	size_t n = frame_at(f, 0, &m);
	assert_int_equal(f->stats[DP_DOH_REQUEST], 1);
	assert_int_equal(dp_doh_inflight(f->h), 1);
	uint8_t q[300];
	size_t qn = make_query("www", 0x1234, q);
	assert_int_equal(n, qn);
	assert_memory_equal(m + 2, q + 2, qn - 2); /* all but the ID */
	answer(f, m, n, 77);
	take_frames(f);
	pump(f);
	resp_t *r = resp_of(f, s);
	assert_true(r->closed);
	assert_int_equal(r->status, 200);
	assert_string_equal(r->ctype, "application/dns-message");
	assert_string_equal(r->cache, "max-age=77");
	assert_int_equal(r->clen, (long)r->blen);
	assert_int_equal(dp_rd16(r->body), 0x1234);
	assert_int_equal(dp_doh_inflight(f->h), 0);
	assert_int_equal(dp_doh_streams(f->h), 0);
	assert_int_equal(dp_doh_pending(f->h), 0);
}

static void post_is_answered(void **state)
{
	fx_t *f = *state;
	uint8_t q[300];
	body_t b = { q, make_query("post", 0, q), 0 };
	int32_t s = post(f, "application/dns-message", &b);
	pump(f);
	assert_int_equal(nframes(f), 1);
	uint8_t *m;
	size_t n = frame_at(f, 0, &m);
	answer(f, m, n, 300);
	take_frames(f);
	pump(f);
	resp_t *r = resp_of(f, s);
	assert_int_equal(r->status, 200);
	assert_string_equal(r->cache, "max-age=300");
	assert_int_equal(dp_rd16(r->body), 0);
	assert_memory_equal(r->body + 12, q + 12, b.n - 12);
}

static void refusals_get_their_status(void **state)
{
	fx_t *f = *state;
	uint8_t q[300], resp[300];
	size_t qn = make_query("x", 0, q);
	memcpy(resp, q, qn);
	resp[2] |= 0x80;
	char p_resp[600] = "/dns-query?dns=", p_short[64] = "/dns-query?dns=";
	b64url(resp, qn, p_resp + strlen(p_resp));
	b64url(q, 11, p_short + strlen(p_short));
	struct {
		int32_t s;
		int want;
	} c[] = {
		{ get(f, "/dns-query?dns=@@@@"), 400 },	/* not base64url */
		{ get(f, "/dns-query?dns=AAAA="), 400 },	/* padded */
		{ get(f, "/dns-query"), 400 },		/* no dns= */
		{ get(f, p_short), 400 },			/* shorter than a header */
		{ get(f, p_resp), 400 },			/* a response */
		{ get(f, "/other?dns=AAAB"), 404 },
		{ get(f, "/dns-query-x?dns=AAAB"), 404 },
	};
	nghttp2_nv nv[] = { CNV(":method", "PUT"), CNV(":scheme", "https"),
			    CNV(":authority", "dns.test"), CNV(":path", "/dns-query") };
	int32_t put = nghttp2_submit_request(f->cl, NULL, nv, 4, NULL, NULL);
	body_t b1 = { q, qn, 0 };
	int32_t wrong_ct = post(f, "text/plain", &b1);
	static uint8_t big[70000];
	body_t b2 = { big, sizeof(big), 0 };
	int32_t too_big = post(f, "application/dns-message", &b2);
	pump(f);
	for (size_t i = 0; i < DP_ARRAY_LEN(c); i++)
		assert_int_equal(resp_of(f, c[i].s)->status, c[i].want);
	assert_int_equal(resp_of(f, put)->status, 405);
	assert_string_equal(resp_of(f, put)->allow, "GET, POST"); /* RFC 9110 15.5.6 */
	assert_string_equal(resp_of(f, c[0].s)->allow, "");
	assert_int_equal(resp_of(f, wrong_ct)->status, 415);
	assert_int_equal(resp_of(f, too_big)->status, 413);
	assert_int_equal(nframes(f), 0); /* none reached the query layer */
	assert_int_equal(f->stats[DP_DOH_HTTP_ERROR], DP_ARRAY_LEN(c) + 3);
	assert_int_equal(dp_doh_inflight(f->h), 0);
}

/* A negative answer: no record in the answer section, the zone's SOA in
 * the authority one with TTL 300 and MINIMUM 60: max-age 60 (RFC 2308 5). */
static void a_negative_answer_lives_no_longer_than_the_soa_minimum(void **state)
{
	fx_t *f = *state;
	int32_t s = send_get(f, "nx", 0);
	pump(f);
	uint8_t *m;
	size_t n = frame_at(f, 0, &m);
	uint8_t a[600];
	memcpy(a, m, n);
	a[2] |= 0x80;
	a[3] = 0x83; /* RA, NXDOMAIN */
	dp_wr16(a + 8, 1); /* NSCOUNT */
	static const uint8_t soa[] = {
		0xc0, 0x0f, 0, 6, 0, 1, 0, 0, 1, 44, 0, 22, /* test. SOA 300, 22 octets */
		0, 0,					/* MNAME ., RNAME . */
		0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 60, /* ... MINIMUM 60 */
	};
	memcpy(a + n, soa, sizeof(soa));
	uint8_t framed[602];
	dp_wr16(framed, (uint16_t)(n + sizeof(soa)));
	memcpy(framed + 2, a, n + sizeof(soa));
	assert_int_equal(dp_doh_answer(f->h, framed, n + sizeof(soa) + 2), 0);
	take_frames(f);
	pump(f);
	assert_int_equal(resp_of(f, s)->status, 200);
	assert_string_equal(resp_of(f, s)->cache, "max-age=60");
}

static void streams_sharing_id_zero_get_their_own_answers(void **state)
{
	fx_t *f = *state;
	enum { N = 50 };
	int32_t s[N];
	char name[16];
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		s[i] = send_get(f, name, 0);
	}
	pump(f);
	assert_int_equal(nframes(f), N);
	for (int i = N - 1; i >= 0; i--) { /* the last first */
		uint8_t *m;
		size_t n = frame_at(f, (unsigned)i, &m);
		answer(f, m, n, (uint32_t)(100 + i));
	}
	take_frames(f);
	pump(f);
	for (int i = 0; i < N; i++) {
		resp_t *r = resp_of(f, s[i]);
		snprintf(name, sizeof(name), "n%d", i);
		assert_int_equal(r->status, 200);
		assert_int_equal(dp_rd16(r->body), 0);
		assert_int_equal(r->body[12], strlen(name));
		assert_memory_equal(r->body + 13, name, strlen(name));
		char cc[32];
		snprintf(cc, sizeof(cc), "max-age=%d", 100 + i);
		assert_string_equal(r->cache, cc);
	}
}

static void a_reset_stream_keeps_its_slot_until_answered(void **state)
{
	fx_t *f = *state;
	int32_t gone = send_get(f, "gone", 0), kept = send_get(f, "kept", 0);
	pump(f);
	assert_int_equal(nframes(f), 2);
	nghttp2_submit_rst_stream(f->cl, NGHTTP2_FLAG_NONE, gone, NGHTTP2_CANCEL);
	pump(f);
	assert_int_equal(f->stats[DP_DOH_RESET], 1);
	assert_int_equal(dp_doh_streams(f->h), 1);
	assert_int_equal(dp_doh_inflight(f->h), 2); /* still running upstream */
	uint8_t *m;
	for (unsigned i = 0; i < 2; i++) {
		size_t n = frame_at(f, i, &m);
		answer(f, m, n, 5);
	}
	take_frames(f);
	pump(f);
	assert_int_equal(dp_doh_inflight(f->h), 0);
	assert_int_equal(resp_of(f, kept)->status, 200);
	assert_int_equal(resp_of(f, gone)->status, 0); /* its answer was dropped */
	assert_int_equal(resp_of(f, gone)->close_err, NGHTTP2_CANCEL);
}

/* 100 streams in flight, reset, twice over, then 56 more: every slot is
 * taken by a query still running, and the next request is refused. */
static void slots_bound_the_queries_resets_leave_running(void **state)
{
	fx_t *f = *state;
	char name[16];
	int k = 0;
	for (int round = 0; round < 2; round++) {
		int32_t s[DP_DOH_MAX_STREAMS];
		for (int i = 0; i < DP_DOH_MAX_STREAMS; i++) {
			snprintf(name, sizeof(name), "r%d", k++);
			s[i] = send_get(f, name, 0);
		}
		pump(f);
		for (int i = 0; i < DP_DOH_MAX_STREAMS; i++)
			nghttp2_submit_rst_stream(f->cl, NGHTTP2_FLAG_NONE, s[i], NGHTTP2_CANCEL);
		pump(f);
	}
	assert_int_equal(f->rc, 0);
	assert_false(f->goaway); /* 200 resets: the burst, not beyond */
	for (int i = 0; i < DP_DOH_SLOTS - 2 * DP_DOH_MAX_STREAMS; i++) {
		snprintf(name, sizeof(name), "r%d", k++);
		send_get(f, name, 0);
	}
	int32_t refused = send_get(f, "refused", 0);
	pump(f);
	assert_int_equal(dp_doh_inflight(f->h), DP_DOH_SLOTS);
	assert_int_equal(nframes(f), DP_DOH_SLOTS);
	assert_true(resp_of(f, refused)->rst);
	assert_int_equal(resp_of(f, refused)->close_err, NGHTTP2_REFUSED_STREAM);
	/* Answers free the slots: a new request goes through. */
	for (unsigned i = 0; i < DP_DOH_SLOTS; i++) {
		uint8_t *m;
		size_t n = frame_at(f, i, &m);
		answer(f, m, n, 1);
	}
	take_frames(f);
	assert_int_equal(dp_doh_inflight(f->h), 0);
	send_get(f, "again", 0);
	pump(f);
	assert_int_equal(nframes(f), 1);
}

static void rapid_reset_ends_the_session(void **state)
{
	fx_t *f = *state;
	char name[16];
	int sent = 0;
	while (!f->goaway && sent < 2000) {
		snprintf(name, sizeof(name), "rr%d", sent++);
		int32_t s = send_get(f, name, 0);
		pump(f); /* (reset before its HEADERS left, a stream never opens) */
		nghttp2_submit_rst_stream(f->cl, NGHTTP2_FLAG_NONE, s, NGHTTP2_CANCEL);
		pump(f);
	}
	assert_true(f->goaway);
	assert_true(sent <= DP_DOH_RESET_BURST + 10);
	assert_int_equal(f->stats[DP_DOH_GOAWAY], 1);
	assert_true(dp_doh_done(f->h) || f->rc < 0);
	assert_true(dp_doh_inflight(f->h) <= DP_DOH_SLOTS);
}

static void an_oversized_header_block_resets_its_stream(void **state)
{
	fx_t *f = *state;
	static char v[DP_DOH_HDR_MAX];
	memset(v, 'a', sizeof(v) - 1);
	nghttp2_nv nv[] = { CNV(":method", "GET"), CNV(":scheme", "https"),
			    CNV(":authority", "dns.test"), CNV(":path", "/dns-query?dns=AAAB"),
			    CNV("x-big", v) };
	int32_t s = nghttp2_submit_request(f->cl, NULL, nv, 5, NULL, NULL);
	int32_t ok = send_get(f, "fine", 0);
	pump(f);
	assert_true(resp_of(f, s)->rst);
	assert_int_equal(resp_of(f, s)->status, 0);
	assert_int_equal(nframes(f), 1); /* the other one went up */
	(void)ok;
	assert_int_equal(f->rc, 0);
	assert_false(f->goaway);
}

/* Raw frames: a HEADERS without END_HEADERS, then CONTINUATIONs. */
static void a_continuation_flood_ends_the_session(void **state)
{
	fx_t *f = *state;
	uint8_t buf[9 + 8];
	static const uint8_t field[] = { 0x00, 3, 'x', '-', 'a', 3, 'b', 'b', 'b' };
	int rc = 0;
	for (int i = 0; i < 50 && rc == 0; i++) {
		uint8_t type = i == 0 ? 1 : 9; /* HEADERS, then CONTINUATION */
		uint8_t flags = i == 0 ? 1 : 0; /* END_STREAM only, never END_HEADERS */
		buf[0] = 0;
		buf[1] = 0;
		buf[2] = sizeof(field);
		buf[3] = type;
		buf[4] = flags;
		dp_wr32(buf + 5, 1);
		uint8_t fr[9 + sizeof(field)];
		memcpy(fr, buf, 9);
		memcpy(fr + 9, field, sizeof(field));
		rc = dp_doh_recv(f->h, fr, sizeof(fr), &f->frames);
		if (rc == 0)
			assert_true(i <= DP_DOH_MAX_CONTINUATIONS);
	}
	assert_int_equal(rc, -1);
	dp_buf_t out = { 0 };
	assert_int_equal(dp_doh_output(f->h, &out), 0);
	assert_true(out.len >= 9 && out.data[out.len - 17 + 3] == NGHTTP2_GOAWAY);
	dp_buf_free(&out);
	assert_int_equal(f->stats[DP_DOH_GOAWAY], 1);
}

static void answers_behind_a_closed_window_are_pending(void **state)
{
	fx_t *f = *state;
	nghttp2_session_del(f->cl);
	dp_doh_free(f->h);
	f->h = dp_doh_new("/dns-query", on_stat, f);
	client_new(f, 0); /* stream windows of 0: no DATA until updated */
	memset(f->resp, 0, sizeof(f->resp));
	pump(f);
	int32_t s = send_get(f, "held", 0);
	pump(f);
	uint8_t *m;
	size_t n = frame_at(f, 0, &m);
	answer(f, m, n, 9);
	take_frames(f);
	pump(f);
	assert_int_equal(resp_of(f, s)->status, 200); /* its HEADERS went */
	assert_int_equal(resp_of(f, s)->blen, 0);
	assert_true(dp_doh_pending(f->h) > 12);
	nghttp2_submit_window_update(f->cl, NGHTTP2_FLAG_NONE, s, 1000);
	pump(f);
	assert_int_equal(dp_doh_pending(f->h), 0);
	assert_true(resp_of(f, s)->closed);
	assert_int_equal(resp_of(f, s)->blen, (size_t)resp_of(f, s)->clen);
}

static void memory_returns_to_its_start(void **state)
{
	fx_t *f = *state;
	size_t base = dp_doh_footprint(f->h);
	char name[16];
	for (int i = 0; i < 20; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		send_get(f, name, 0);
	}
	pump(f);
	assert_true(dp_doh_footprint(f->h) > base);
	for (unsigned i = 0; i < 20; i++) {
		uint8_t *m;
		size_t n = frame_at(f, i, &m);
		answer(f, m, n, 1);
	}
	take_frames(f);
	pump(f);
	assert_int_equal(dp_doh_streams(f->h), 0);
	/* nghttp2 keeps a few closed streams' state; requests hold nothing */
	assert_int_equal(f->h->bufs, 0);
	/* Open streams at free: ASan would see a request leak. */
	send_get(f, "open", 0);
	pump(f);
	assert_int_equal(dp_doh_streams(f->h), 1);
}

static void base64url_decodes_only_canonical_unpadded_text(void **state)
{
	(void)state;
	uint8_t out[8];
	assert_int_equal(dp_base64url_decode("AAEC", 4, out, sizeof(out)), 3);
	assert_memory_equal(out, "\x00\x01\x02", 3);
	assert_int_equal(dp_base64url_decode("-_8", 3, out, sizeof(out)), 2);
	assert_int_equal(out[0], 0xfb);
	assert_int_equal(out[1], 0xff);
	assert_int_equal(dp_base64url_decode("AA", 2, out, sizeof(out)), 1);
	assert_int_equal(dp_base64url_decode("AB", 2, out, sizeof(out)), -1); /* bits left */
	assert_int_equal(dp_base64url_decode("A", 1, out, sizeof(out)), -1);
	assert_int_equal(dp_base64url_decode("AA==", 4, out, sizeof(out)), -1);
	assert_int_equal(dp_base64url_decode("A+/A", 4, out, sizeof(out)), -1);
	assert_int_equal(dp_base64url_decode("AAAAAAAAAAAA", 12, out, sizeof(out)), -1); /* 9 > 8 */
	assert_int_equal(dp_base64url_decode("", 0, out, sizeof(out)), 0);
	/* Round trips of every length up to 70 octets against the encoder
	 * above; every octet outside the alphabet is refused in every place. */
	uint8_t in[70], back[70];
	char enc[100];
	for (size_t n = 0; n <= sizeof(in); n++) {
		for (size_t i = 0; i < n; i++)
			in[i] = (uint8_t)(i * 151 + n * 7);
		b64url(in, n, enc);
		assert_int_equal(dp_base64url_decode(enc, strlen(enc), back, sizeof(back)), (long)n);
		assert_memory_equal(back, in, n);
	}
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	for (int c = 0; c < 256; c++) {
		if (c && strchr(alphabet, c))
			continue;
		for (int at = 0; at < 6; at++) {
			char t[7] = "AAAAAA";
			t[at] = (char)c;
			assert_int_equal(dp_base64url_decode(t, 6, back, sizeof(back)), -1);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(get_is_answered_with_its_id_and_min_ttl),
		T(post_is_answered),
		T(refusals_get_their_status),
		T(a_negative_answer_lives_no_longer_than_the_soa_minimum),
		T(streams_sharing_id_zero_get_their_own_answers),
		T(a_reset_stream_keeps_its_slot_until_answered),
		T(slots_bound_the_queries_resets_leave_running),
		T(rapid_reset_ends_the_session),
		T(an_oversized_header_block_resets_its_stream),
		T(a_continuation_flood_ends_the_session),
		T(answers_behind_a_closed_window_are_pending),
		T(memory_returns_to_its_start),
		cmocka_unit_test(base64url_decodes_only_canonical_unpadded_text),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
