/* buf.h - a growable byte buffer (dp_buf_t) and the two-buffer send queue
 * (dp_sendq_t) every stream connection uses, client TCP and upstream TLS.
 *
 * A dp_buf_t owns its heap block (data, cap octets, len of them used). The
 * send queue holds the buffer being sent, which stays immutable while a
 * send is in flight (the kernel reads it), and the buffer being filled
 * behind it; when the send has taken everything, the two swap, so memory
 * is reused and nothing is copied. Only one send is in flight at a time:
 * two sends on one stream socket could interleave their octets.
 */
#ifndef DP_BUF_H
#define DP_BUF_H

#include "dp.h"

#include <errno.h>
#include <string.h>

typedef struct dp_buf {
	uint8_t *data;
	uint32_t len; /* octets used */
	uint32_t cap; /* octets allocated */
} dp_buf_t;

typedef struct dp_sendq {
	dp_buf_t out; /* being sent: immutable while inflight */
	dp_buf_t fill; /* queued behind it: appended to at any time */
	uint32_t off; /* octets of out already sent */
	bool inflight; /* a send of out is in the kernel */
} dp_sendq_t;

/* Capacity that holds need octets: doubling from cap, or from initial. */
static inline size_t dp_grow_size(size_t cap, size_t need, size_t initial)
{
	size_t n = cap ? cap : initial;
	while (n < need)
		n *= 2;
	return n;
}

/* dp_buf_reserve's slow path: reallocate b to hold need octets. */
bool dp_buf_realloc(dp_buf_t *b, size_t need, size_t initial);

/* Make b hold at least need octets (doubling from its capacity, or from
 * initial), keeping its content. Returns false, b untouched, when memory
 * runs out or need does not fit 32 bits. Allocates only when need does not
 * fit already. Hot path. */
static inline bool dp_buf_reserve(dp_buf_t *b, size_t need, size_t initial)
{
	return likely(need <= b->cap) || dp_buf_realloc(b, need, initial);
}

/* Append n octets at p to b (growing it as dp_buf_reserve). Returns false,
 * b untouched, when memory runs out. */
static inline bool dp_buf_append(dp_buf_t *b, const void *p, size_t n, size_t initial)
{
	if (!dp_buf_reserve(b, (size_t)b->len + n, initial))
		return false;
	memcpy(b->data + b->len, p, n);
	b->len += (uint32_t)n;
	return true;
}

/* Drop the first n octets of b (n <= len), moving the rest to the front. */
static inline void dp_buf_consume(dp_buf_t *b, size_t n)
{
	if (n == 0)
		return;
	memmove(b->data, b->data + n, b->len - n);
	b->len -= (uint32_t)n;
}

/* Free b's memory and leave it empty; accepts an empty buffer. */
void dp_buf_free(dp_buf_t *b);

/* Octets queued in q and not sent yet: the rest of out, and fill. */
static inline size_t dp_sendq_queued(const dp_sendq_t *q)
{
	return (size_t)(q->out.len - q->off) + q->fill.len;
}

/* The next send of q: the rest of out after a short send, or else fill,
 * swapped in as the new out. Returns the octets to send, at *p, and marks
 * q in flight; 0 (nothing changed) when a send is in flight already or
 * nothing is queued. Hot path. */
static inline size_t dp_sendq_start(dp_sendq_t *q, const uint8_t **p)
{
	if (q->inflight)
		return 0;
	if (q->off >= q->out.len) {
		if (q->fill.len == 0)
			return 0;
		dp_buf_t t = q->out;
		q->out = q->fill;
		q->fill = t;
		q->fill.len = 0;
		q->off = 0;
	}
	q->inflight = true;
	*p = q->out.data + q->off;
	return q->out.len - q->off;
}

/* The send in flight completed with res (octets taken, or a negative
 * errno). Returns the octets of out still to send (0: out is done and
 * empty), res when negative, or -EIO when res is more than was sent (a
 * broken transport). Either way q is no longer in flight. Hot path. */
static inline int dp_sendq_done(dp_sendq_t *q, int res)
{
	q->inflight = false;
	if (res < 0)
		return res;
	if ((uint32_t)res > q->out.len - q->off)
		return -EIO;
	q->off += (uint32_t)res;
	if (q->off < q->out.len)
		return (int)(q->out.len - q->off);
	q->out.len = q->off = 0;
	return 0;
}

/* Forget everything queued (the connection is gone); memory is kept. */
static inline void dp_sendq_reset(dp_sendq_t *q)
{
	q->out.len = q->fill.len = q->off = 0;
	q->inflight = false;
}

/* Free both buffers of q; accepts an empty queue. */
void dp_sendq_free(dp_sendq_t *q);

#endif
