/* doh.c - DNS-over-HTTPS sessions over nghttp2 (see doh.h): requests to
 * DNS frames with their ID swapped for a query slot's, answers back to
 * HTTP/2 responses, the abuse limits, and a counting allocator. */
#include "doh.h"
#include "dns.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DNS_MSG_MAX 65535u
#define CT_DNS "application/dns-message"

enum { M_NONE = 0, M_GET, M_POST, M_OTHER };

/* One request (an HTTP/2 stream's user data), from its HEADERS to the
 * stream's close. */
typedef struct req {
	struct req *prev, *next; /* every open request of the session */
	int32_t stream;
	uint8_t method;
	bool ct_ok; /* content-type: application/dns-message */
	bool too_big; /* its body went over DNS_MSG_MAX */
	bool answered; /* a response is submitted, or the stream reset */
	uint16_t slot; /* 1 + its query slot while the query runs, else 0 */
	uint32_t hdr_octets; /* header block so far, RFC 7541 4.1 sizes */
	dp_buf_t path; /* :path */
	dp_buf_t body; /* POST body; then the answer being sent */
	uint32_t sent; /* answer octets given to nghttp2 */
} req_t;

/* A query handed upward: which stream its answer is for. */
typedef struct slot {
	int32_t stream; /* 0: the stream is gone, the answer will be dropped */
	uint16_t id; /* the request's own DNS ID */
	uint8_t gen; /* the slot's high ID octet: a late answer of a reused slot
		      * does not match */
	bool used;
} slot_t;

struct dp_doh {
	nghttp2_session *ng;
	void (*stat)(void *ctx, int which);
	void *ctx;
	char path[DP_DOH_PATH_MAX];
	size_t path_len;
	size_t mem; /* nghttp2's octets (the allocator below) */
	size_t bufs; /* requests and their buffers */
	size_t pending; /* answer octets submitted, not yet taken by nghttp2 */
	req_t *reqs; /* open requests (nghttp2_session_del calls no callback) */
	unsigned streams; /* requests open */
	unsigned inflight; /* slots used */
	unsigned continuations; /* CONTINUATION frames of the header block at hand */
	bool failed; /* a callback asked to end the connection */
	bool goodbye; /* the GOAWAY we send is a graceful one */
	dp_buf_t *frames; /* dp_doh_recv's output, during the call */
	int frames_err;
	uint16_t nfree;
	uint8_t free_slots[DP_DOH_SLOTS];
	slot_t slot[DP_DOH_SLOTS];
};

_Static_assert(DP_DOH_SLOTS == 256, "a slot's ID is its index (low octet) and gen (high)");

static void event(dp_doh_t *h, int which)
{
	h->stat(h->ctx, which);
}

/* ---- nghttp2's allocator: every octet counted in h->mem ------------------- */

typedef struct { size_t n; max_align_t pad[]; } mhdr_t;

static void *m_malloc(size_t n, void *ud)
{
	mhdr_t *p = malloc(sizeof(mhdr_t) + n);
	if (!p)
		return NULL;
	p->n = n;
	((dp_doh_t *)ud)->mem += n;
	return p + 1;
}

static void m_free(void *ptr, void *ud)
{
	if (!ptr)
		return;
	mhdr_t *p = (mhdr_t *)ptr - 1;
	((dp_doh_t *)ud)->mem -= p->n;
	free(p);
}

static void *m_calloc(size_t nmemb, size_t size, void *ud)
{
	if (size && nmemb > SIZE_MAX / size)
		return NULL;
	void *p = m_malloc(nmemb * size, ud);
	if (p)
		memset(p, 0, nmemb * size);
	return p;
}

static void *m_realloc(void *ptr, size_t n, void *ud)
{
	if (!ptr)
		return m_malloc(n, ud);
	mhdr_t *p = (mhdr_t *)ptr - 1;
	size_t old = p->n;
	mhdr_t *q = realloc(p, sizeof(mhdr_t) + n);
	if (!q)
		return NULL;
	q->n = n;
	((dp_doh_t *)ud)->mem += n - old;
	return q + 1;
}

/* ---- request buffers, counted in h->bufs ---------------------------------- */

static bool held_append(dp_doh_t *h, dp_buf_t *b, const void *p, size_t n)
{
	size_t before = b->cap;
	bool ok = dp_buf_append(b, p, n, 256);
	h->bufs += (size_t)b->cap - before;
	return ok;
}

static bool held_reserve(dp_doh_t *h, dp_buf_t *b, size_t need)
{
	size_t before = b->cap;
	bool ok = dp_buf_reserve(b, need, 256);
	h->bufs += (size_t)b->cap - before;
	return ok;
}

static void held_free(dp_doh_t *h, dp_buf_t *b)
{
	h->bufs -= b->cap;
	dp_buf_free(b);
}

/* ---- query slots ------------------------------------------------------------ */

/* A slot for stream's query whose own ID is id: its ID on the way up, or
 * -1 when every slot is taken. */
static int slot_take(dp_doh_t *h, int32_t stream, uint16_t id)
{
	if (h->nfree == 0)
		return -1;
	uint8_t i = h->free_slots[--h->nfree];
	slot_t *s = &h->slot[i];
	s->used = true;
	s->stream = stream;
	s->id = id;
	s->gen++;
	h->inflight++;
	return (int)((unsigned)s->gen << 8 | i);
}

static void slot_put(dp_doh_t *h, uint8_t i)
{
	h->slot[i].used = false;
	h->slot[i].stream = 0;
	h->free_slots[h->nfree++] = i;
	h->inflight--;
}

/* ---- responses --------------------------------------------------------------- */

static ssize_t read_answer(nghttp2_session *ng, int32_t stream, uint8_t *buf, size_t len,
			   uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	(void)ng;
	(void)stream;
	dp_doh_t *h = ud;
	req_t *r = src->ptr;
	size_t n = DP_MIN(len, (size_t)(r->body.len - r->sent));
	memcpy(buf, r->body.data + r->sent, n);
	r->sent += (uint32_t)n;
	h->pending -= n;
	if (r->sent == r->body.len)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

#define NV(n, v, vl) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), NGHTTP2_NV_FLAG_NO_COPY_NAME }

/* An error status with no body (405 says which methods are, RFC 9110
 * 15.5.6). */
static void respond_status(dp_doh_t *h, req_t *r, const char *status)
{
	nghttp2_nv nv[] = { NV(":status", status, 3), NV("content-length", "0", 1),
			    NV("allow", "GET, POST", 9) };
	r->answered = true;
	event(h, DP_DOH_HTTP_ERROR);
	size_t n = strcmp(status, "405") == 0 ? 3 : 2;
	if (nghttp2_submit_response(h->ng, r->stream, nv, n, NULL) != 0)
		h->failed = true;
}

/* RFC 8484 5.1: no longer fresh than the smallest TTL of the records (the
 * OPT's is not one), and for an SOA (a negative answer's) than its MINIMUM
 * (RFC 2308 5); 0 without a record or when it cannot be read. */
static uint32_t max_age(const uint8_t *msg, size_t len)
{
	dp_dns_answer_t a;
	if (dp_dns_parse_answer_rrs(msg, len, &a) < 0 || a.ttl_total == 0)
		return 0;
	dp_dns_ttl_iter_t it;
	dp_dns_ttl_iter_init(&it, msg, a.ttl, a.nttl, a.ttl_total);
	uint32_t min = UINT32_MAX;
	size_t off;
	while (dp_dns_ttl_next(&it, &off)) {
		min = DP_MIN(min, dp_dns_ttl(msg, off));
		size_t end = off + 6 + dp_rd16(msg + off + 4); /* past its RDATA */
		if (dp_rd16(msg + off - 4) == DP_DNS_TYPE_SOA && end - (off + 6) >= 22)
			min = DP_MIN(min, dp_dns_ttl(msg, end - 4)); /* MINIMUM, last */
	}
	return min == UINT32_MAX ? 0 : min;
}

/* v in decimal at the end of buf[0..end): returns where it starts. */
static char *decimal(char *end, uint32_t v)
{
	do {
		*--end = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return end;
}

/* Answer msg (len octets) to request r, under the request's own ID. */
static void respond_answer(dp_doh_t *h, req_t *r, const uint8_t *msg, size_t len, uint16_t id)
{
	r->body.len = 0;
	r->sent = 0;
	if (!held_append(h, &r->body, msg, len)) {
		nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, r->stream, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	dp_wr16(r->body.data, id);
	char clen[8], cache[24];
	char *cl = decimal(clen + sizeof(clen), (uint32_t)len);
	char *cc = decimal(cache + sizeof(cache), max_age(msg, len)) - 8;
	memcpy(cc, "max-age=", 8);
	nghttp2_nv nv[] = {
		NV(":status", "200", 3),
		NV("content-type", CT_DNS, sizeof(CT_DNS) - 1),
		NV("content-length", cl, (size_t)(clen + sizeof(clen) - cl)),
		NV("cache-control", cc, (size_t)(cache + sizeof(cache) - cc)),
	};
	nghttp2_data_provider dp = { .source.ptr = r, .read_callback = read_answer };
	r->answered = true;
	h->pending += len;
	if (nghttp2_submit_response(h->ng, r->stream, nv, 4, &dp) != 0)
		h->failed = true;
}

/* ---- requests --------------------------------------------------------------- */

/* The query a GET carries in its dns= parameter, into r->body. Returns
 * false when there is none or it does not decode. */
static bool get_query(dp_doh_t *h, req_t *r)
{
	const char *p = memchr(r->path.data, '?', r->path.len);
	if (!p)
		return false;
	const char *end = (const char *)r->path.data + r->path.len;
	for (p++; p < end;) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp ? amp : end;
		if (stop - p > 4 && memcmp(p, "dns=", 4) == 0) {
			size_t n = (size_t)(stop - p - 4);
			size_t cap = DP_MIN(n / 4 * 3 + 2, (size_t)DNS_MSG_MAX);
			r->body.len = 0; /* a GET's body, if it sent one, is not the query */
			if (!held_reserve(h, &r->body, cap))
				return false;
			long k = dp_base64url_decode(p + 4, n, r->body.data, cap);
			r->body.len = k > 0 ? (uint32_t)k : 0;
			return k > 0;
		}
		p = stop + 1;
	}
	return false;
}

/* Does r's :path name our endpoint (its query string aside)? */
static bool path_ok(const dp_doh_t *h, const req_t *r)
{
	const char *q = memchr(r->path.data, '?', r->path.len);
	size_t n = q ? (size_t)(q - (const char *)r->path.data) : r->path.len;
	return n == h->path_len && memcmp(r->path.data, h->path, n) == 0;
}

/* The DNS query of a complete request, or the HTTP status that refuses
 * it (NULL: r->body holds a query to hand upward). */
static const char *check_request(dp_doh_t *h, req_t *r)
{
	if (r->method != M_GET && r->method != M_POST)
		return "405";
	if (!r->path.len || !path_ok(h, r))
		return "404";
	if (r->method == M_GET) {
		if (!get_query(h, r))
			return "400";
	} else if (!r->ct_ok) {
		return "415";
	} else if (r->too_big) {
		return "413";
	}
	/* What dp_dns_parse_query calls unreadable (shorter than a header) or
	 * a response (QR) the query layer drops unanswered: 400 here. All
	 * else gets its DNS answer there, FORMERR and NOTIMP included. */
	if (r->body.len < DP_DNS_HDR_LEN || (r->body.data[2] & (DP_DNS_F_QR >> 8)))
		return "400";
	return NULL;
}

/* Request r is complete: refuse it, or hand its query upward as a frame. */
static void request_done(dp_doh_t *h, req_t *r)
{
	const char *status = check_request(h, r);
	held_free(h, &r->path);
	if (status) {
		held_free(h, &r->body);
		respond_status(h, r, status);
		return;
	}
	int lid = slot_take(h, r->stream, dp_rd16(r->body.data));
	if (lid < 0) {
		held_free(h, &r->body);
		nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, r->stream,
					  NGHTTP2_REFUSED_STREAM);
		return;
	}
	r->slot = (uint16_t)((lid & 0xff) + 1);
	dp_wr16(r->body.data, (uint16_t)lid);
	uint8_t len[2];
	dp_wr16(len, (uint16_t)r->body.len);
	if (!dp_buf_append(h->frames, len, 2, 4096) ||
	    !dp_buf_append(h->frames, r->body.data, r->body.len, 4096))
		h->frames_err = -ENOMEM;
	held_free(h, &r->body);
	event(h, DP_DOH_REQUEST);
}

/* ---- nghttp2's callbacks ----------------------------------------------------- */

static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud)
{
	(void)ng;
	dp_doh_t *h = ud;
	if (hd->type == NGHTTP2_HEADERS)
		h->continuations = 0;
	else if (hd->type == NGHTTP2_CONTINUATION && ++h->continuations > DP_DOH_MAX_CONTINUATIONS)
		return NGHTTP2_ERR_CALLBACK_FAILURE; /* a CONTINUATION flood: end it */
	return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
	dp_doh_t *h = ud;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	req_t *r = calloc(1, sizeof(*r));
	if (!r)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	r->stream = f->hd.stream_id;
	r->next = h->reqs;
	if (h->reqs)
		h->reqs->prev = r;
	h->reqs = r;
	h->bufs += sizeof(*r);
	h->streams++;
	nghttp2_session_set_stream_user_data(ng, r->stream, r);
	return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	(void)flags;
	dp_doh_t *h = ud;
	req_t *r = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (!r || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0; /* trailers: nothing in them matters */
	r->hdr_octets += (uint32_t)(namelen + valuelen + 32);
	if (r->hdr_octets > DP_DOH_HDR_MAX || h->bufs + valuelen > DP_DOH_RX_MAX)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
#define IS(s) (namelen == sizeof(s) - 1 && memcmp(name, s, namelen) == 0)
	if (IS(":method")) {
		r->method = valuelen == 3 && memcmp(value, "GET", 3) == 0	 ? M_GET
			    : valuelen == 4 && memcmp(value, "POST", 4) == 0 ? M_POST
									      : M_OTHER;
	} else if (IS(":path")) {
		r->path.len = 0;
		if (!held_append(h, &r->path, value, valuelen))
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	} else if (IS("content-type")) {
		r->ct_ok = valuelen == sizeof(CT_DNS) - 1 &&
			   strncasecmp((const char *)value, CT_DNS, valuelen) == 0;
	}
#undef IS
	return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream, const uint8_t *data,
			 size_t len, void *ud)
{
	(void)flags;
	dp_doh_t *h = ud;
	req_t *r = nghttp2_session_get_stream_user_data(ng, stream);
	if (!r || r->answered || r->too_big)
		return 0;
	if (r->body.len + len > DNS_MSG_MAX) {
		r->too_big = true; /* 413 once it ends; keep nothing more */
		held_free(h, &r->body);
		return 0;
	}
	if (h->bufs + len > DP_DOH_RX_MAX || !held_append(h, &r->body, data, len)) {
		r->answered = true; /* reset: nothing more of it is kept */
		held_free(h, &r->body);
		nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, stream, NGHTTP2_ENHANCE_YOUR_CALM);
	}
	return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
	dp_doh_t *h = ud;
	if (f->hd.type == NGHTTP2_RST_STREAM) {
		event(h, DP_DOH_RESET);
		return 0;
	}
	if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
	    !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	req_t *r = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (r && !r->answered && !r->slot)
		request_done(h, r);
	return h->failed ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* Request r's stream is closed: forget it. */
static void req_free(dp_doh_t *h, req_t *r)
{
	if (r->slot)
		h->slot[r->slot - 1].stream = 0; /* its answer, when it comes, is dropped */
	if (r->answered)
		h->pending -= r->body.len - r->sent; /* what the client will never get */
	if (r->prev)
		r->prev->next = r->next;
	else
		h->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	held_free(h, &r->path);
	held_free(h, &r->body);
	h->bufs -= sizeof(*r);
	h->streams--;
	free(r);
}

static int on_stream_close(nghttp2_session *ng, int32_t stream, uint32_t err, void *ud)
{
	(void)err;
	req_t *r = nghttp2_session_get_stream_user_data(ng, stream);
	if (r) {
		req_free(ud, r);
		nghttp2_session_set_stream_user_data(ng, stream, NULL);
	}
	return 0;
}

/* A GOAWAY leaves: we only send one to end a session for a protocol error
 * or abuse (nghttp2's own limits included). */
static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
	(void)ng;
	dp_doh_t *h = ud;
	if (f->hd.type == NGHTTP2_GOAWAY && !h->goodbye)
		event(h, DP_DOH_GOAWAY);
	return 0;
}

/* ---- the session ------------------------------------------------------------ */

static nghttp2_session_callbacks *h2_callbacks(void)
{
	nghttp2_session_callbacks *cb;
	if (nghttp2_session_callbacks_new(&cb) != 0)
		return NULL;
	nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
	nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
	return cb;
}

static nghttp2_option *h2_options(void)
{
	nghttp2_option *o;
	if (nghttp2_option_new(&o) != 0)
		return NULL;
	nghttp2_option_set_max_continuations(o, DP_DOH_MAX_CONTINUATIONS);
	/* Closed streams are not kept (they serve RFC 7540's priority tree,
	 * which SETTINGS_NO_RFC7540_PRIORITIES turns off): less work and
	 * memory per request. */
	nghttp2_option_set_no_closed_streams(o, 1);
	nghttp2_option_set_stream_reset_rate_limit(o, DP_DOH_RESET_BURST, DP_DOH_RESET_RATE);
	return o;
}

dp_doh_t *dp_doh_new(const char *path, void (*stat)(void *ctx, int which), void *ctx)
{
	dp_doh_t *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->stat = stat;
	h->ctx = ctx;
	snprintf(h->path, sizeof(h->path), "%s", path);
	h->path_len = strlen(h->path);
	for (unsigned i = 0; i < DP_DOH_SLOTS; i++)
		h->free_slots[i] = (uint8_t)(DP_DOH_SLOTS - 1 - i);
	h->nfree = DP_DOH_SLOTS;
	nghttp2_mem mem = { h, m_malloc, m_free, m_calloc, m_realloc };
	nghttp2_session_callbacks *cb = h2_callbacks();
	nghttp2_option *o = h2_options();
	int rc = cb && o ? nghttp2_session_server_new3(&h->ng, cb, h, o, &mem) : -1;
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(o);
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, DP_DOH_MAX_STREAMS },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, DP_DOH_HDR_MAX },
		{ NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1 },
	};
	if (rc != 0 || nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, 3) != 0) {
		dp_doh_free(h);
		return NULL;
	}
	return h;
}

void dp_doh_free(dp_doh_t *h)
{
	if (!h)
		return;
	nghttp2_session_del(h->ng);
	while (h->reqs)
		req_free(h, h->reqs);
	free(h);
}

int dp_doh_recv(dp_doh_t *h, const uint8_t *p, size_t n, dp_buf_t *frames)
{
	h->frames = frames;
	h->frames_err = 0;
	ssize_t rc = nghttp2_session_mem_recv(h->ng, p, n);
	h->frames = NULL;
	if (h->frames_err)
		return h->frames_err;
	if (rc < 0 || h->failed) {
		/* A protocol error, a flood, a failed callback: say so and end. */
		h->failed = true;
		nghttp2_session_terminate_session(h->ng, rc == NGHTTP2_ERR_FLOODED
								 ? NGHTTP2_ENHANCE_YOUR_CALM
								 : NGHTTP2_PROTOCOL_ERROR);
		return -1;
	}
	return 0;
}

int dp_doh_answer(dp_doh_t *h, const uint8_t *p, size_t n)
{
	while (n >= 2) {
		size_t len = dp_rd16(p);
		if (len > n - 2)
			break; /* cannot be: tcpconn sends whole frames */
		const uint8_t *msg = p + 2;
		p += 2 + len;
		n -= 2 + len;
		if (len < 12)
			continue;
		uint16_t lid = dp_rd16(msg);
		slot_t *s = &h->slot[lid & 0xff];
		if (!s->used || s->gen != lid >> 8)
			continue; /* cannot be: every query has its slot until answered */
		int32_t stream = s->stream;
		uint16_t id = s->id;
		slot_put(h, (uint8_t)(lid & 0xff));
		req_t *r = stream ? nghttp2_session_get_stream_user_data(h->ng, stream) : NULL;
		if (!r)
			continue; /* reset meanwhile: nobody wants it */
		r->slot = 0;
		respond_answer(h, r, msg, len, id);
	}
	return h->failed ? -1 : 0;
}

int dp_doh_output(dp_doh_t *h, dp_buf_t *out)
{
	for (;;) {
		const uint8_t *p;
		ssize_t n = nghttp2_session_mem_send(h->ng, &p);
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		if (!dp_buf_append(out, p, (size_t)n, 4096))
			return -1;
	}
}

void dp_doh_goodbye(dp_doh_t *h)
{
	h->goodbye = true;
	nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
}

bool dp_doh_done(const dp_doh_t *h)
{
	return !nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng);
}

size_t dp_doh_footprint(const dp_doh_t *h)
{
	return sizeof(*h) + h->mem + h->bufs;
}

size_t dp_doh_pending(const dp_doh_t *h)
{
	return h->pending;
}

unsigned dp_doh_streams(const dp_doh_t *h)
{
	return h->streams;
}

unsigned dp_doh_inflight(const dp_doh_t *h)
{
	return h->inflight;
}

/* ---- base64url -------------------------------------------------------------- */

/* The value of each base64url character (RFC 4648 5), 64 for the others. */
static const uint8_t b64[256] = {
#define X64 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64
	X64, X64,
	64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 62, 64, 64, /* '-' */
	52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 64, 64, 64, 64, 64, 64, /* 0-9 */
	64, 0,	1,  2,	3,  4,	5,  6,	7,  8,	9,  10, 11, 12, 13, 14, /* A-O */
	15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 64, 64, 64, 64, 63, /* P-Z _ */
	64, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, /* a-o */
	41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 64, 64, 64, 64, 64, /* p-z */
	X64, X64, X64, X64, X64, X64, X64, X64,
#undef X64
};

long dp_base64url_decode(const char *src, size_t n, uint8_t *out, size_t cap)
{
	if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
		return -1;
	const uint8_t *s = (const uint8_t *)src;
	size_t o = 0, i = 0;
	for (; i + 4 <= n; i += 4) { /* four characters, three octets */
		uint32_t v = (uint32_t)b64[s[i]] << 18 | (uint32_t)b64[s[i + 1]] << 12 |
			     (uint32_t)b64[s[i + 2]] << 6 | b64[s[i + 3]];
		if ((b64[s[i]] | b64[s[i + 1]] | b64[s[i + 2]] | b64[s[i + 3]]) & 64)
			return -1;
		out[o++] = (uint8_t)(v >> 16);
		out[o++] = (uint8_t)(v >> 8);
		out[o++] = (uint8_t)v;
	}
	uint32_t acc = 0;
	unsigned bits = 0;
	for (; i < n; i++) { /* the last two or three */
		if (b64[s[i]] & 64)
			return -1;
		acc = acc << 6 | b64[s[i]];
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	/* The bits left over must be zero (a canonical encoding). */
	if (acc & ((1u << bits) - 1))
		return -1;
	return (long)o;
}
