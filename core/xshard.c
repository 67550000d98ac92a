/* xshard.c - single-producer/single-consumer byte rings of records.
 *
 * A record is a 4-octet size (a multiple of 8, header included) and 4
 * spare octets, then the message. A record never wraps: when it does not
 * fit before the end of the buffer, the producer writes a size of 0 there
 * ("skip to the start") and puts the record at the start; the skipped
 * octets count as used until the consumer passes them. head and tail count
 * octets since the start and never wrap (64 bits).
 *
 * Ordering: the producer writes a record, then stores tail with release;
 * the consumer loads tail with acquire before reading records up to it,
 * and stores head with release after it is done with them, which the
 * producer loads with acquire before reusing that space.
 */
#include "xshard.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

_Static_assert(DP_XS_ANSWER_RING >= DP_XS_TCP_CREDIT * 2 * DP_XS_SMALL_REC +
				     2 * (DP_XS_REC_HDR + DP_XS_ALIGN(sizeof(dp_xmsg_t) +
								   DP_XS_ANSWER_INLINE)),
	       "an answer ring holds a SERVFAIL for every TCP query an origin may owe, "
	       "and beside them the largest inline answer wherever the tail is");
_Static_assert(sizeof(dp_xs_bigans_t) <= DP_XS_SF_MAX, "a pointer record is a small record");
_Static_assert(DP_XS_QUERY_RING_MIN >= 2 * (DP_XS_REC_HDR + DP_XS_ALIGN(sizeof(dp_xmsg_t) +
								     DP_XS_QUERY_MAX)),
	       "a query ring takes the largest query handed off");

void dp_spsc_init(dp_spsc_t *q, uint8_t *buf, uint32_t cap)
{
	memset(q, 0, sizeof(*q));
	q->buf = buf;
	q->cap = cap;
}

size_t dp_spsc_room(dp_spsc_t *q)
{
	q->head_seen = __atomic_load_n(&q->head, __ATOMIC_ACQUIRE);
	return q->cap - (size_t)(q->tail - q->head_seen);
}

int dp_xs_push(dp_spsc_t *q, const dp_xmsg_t *m, const uint8_t *data, size_t len, size_t keep)
{
	size_t need = dp_xs_rec_size(len);
	uint64_t tail = q->tail; /* ours: no atomic needed to read it */
	size_t pos = (size_t)tail & (q->cap - 1);
	size_t waste = q->cap - pos < need ? q->cap - pos : 0;
	size_t total = waste + need;
	if (total + keep > q->cap - (size_t)(tail - q->head_seen) &&
	    total + keep > dp_spsc_room(q))
		return -ENOSPC;
	if (waste) {
		uint32_t skip = 0;
		memcpy(q->buf + pos, &skip, sizeof(skip));
		pos = 0;
	}
	uint32_t size = (uint32_t)need;
	memcpy(q->buf + pos, &size, sizeof(size));
	dp_xmsg_t *out = (dp_xmsg_t *)(void *)(q->buf + pos + DP_XS_REC_HDR);
	*out = *m;
	out->len = (uint16_t)len;
	if (len)
		memcpy(out + 1, data, len);
	__atomic_store_n(&q->tail, tail + total, __ATOMIC_RELEASE);
	return 0;
}

dp_xmsg_t *dp_xs_peek(dp_spsc_t *q)
{
	for (;;) {
		uint64_t head = q->head; /* ours */
		if (head == q->tail_seen) {
			q->tail_seen = __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
			if (head == q->tail_seen)
				return NULL;
		}
		size_t pos = (size_t)head & (q->cap - 1);
		uint32_t size;
		memcpy(&size, q->buf + pos, sizeof(size));
		if (size != 0)
			return (dp_xmsg_t *)(void *)(q->buf + pos + DP_XS_REC_HDR);
		/* skip marker: the record is at the start */
		__atomic_store_n(&q->head, head + (q->cap - pos), __ATOMIC_RELEASE);
	}
}

void dp_xs_pop(dp_spsc_t *q)
{
	uint64_t head = q->head;
	size_t pos = (size_t)head & (q->cap - 1);
	uint32_t size;
	memcpy(&size, q->buf + pos, sizeof(size));
	__atomic_store_n(&q->head, head + size, __ATOMIC_RELEASE);
}

bool dp_xs_empty(dp_spsc_t *q)
{
	return __atomic_load_n(&q->head, __ATOMIC_RELAXED) ==
	       __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
}

uint32_t dp_xshard_query_ring_size(uint32_t n)
{
	uint64_t rings = n > 1 ? (uint64_t)n * (n - 1) : 1;
	uint32_t cap = DP_XS_QUERY_RING;
	while (cap > DP_XS_QUERY_RING_MIN && (uint64_t)cap * rings > DP_XS_QUERY_RINGS_TOTAL)
		cap >>= 1;
	return cap;
}

int dp_xshard_init(dp_xshard_t *x, uint32_t n, uint32_t qcap, uint32_t acap)
{
	memset(x, 0, sizeof(*x));
	if (n < 2 || n > DP_XS_MAX_SHARDS || qcap < 64 || acap < 64 || (qcap & (qcap - 1)) ||
	    (acap & (acap - 1)))
		return -EINVAL;
	size_t pairs = (size_t)n * n;
	size_t links = DP_XS_ALIGN(pairs * sizeof(dp_xlink_t));
	links = (links + 4095) & ~(size_t)4095;
	x->mem_len = links + (size_t)n * (n - 1) * ((size_t)qcap + acap);
	/* Untouched pages cost nothing: a queue's pages are touched as it
	 * first fills that far. */
	void *mem = mmap(NULL, x->mem_len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
			 -1, 0);
	if (mem == MAP_FAILED) {
		x->mem_len = 0;
		return -ENOMEM;
	}
	x->mem = mem;
	x->n = n;
	x->links = (dp_xlink_t *)(void *)x->mem;
	uint8_t *p = x->mem + links;
	for (uint32_t f = 0; f < n; f++)
		for (uint32_t t = 0; t < n; t++) {
			dp_xlink_t *l = dp_xshard_link(x, f, t);
			if (f == t) {
				memset(l, 0, sizeof(*l));
				continue;
			}
			dp_spsc_init(&l->q, p, qcap);
			p += qcap;
			dp_spsc_init(&l->a, p, acap);
			p += acap;
		}
	return 0;
}

void dp_xshard_free(dp_xshard_t *x)
{
	for (uint32_t f = 0; x->mem && f < x->n; f++)
		for (uint32_t t = 0; t < x->n; t++) {
			dp_xlink_t *l = dp_xshard_link(x, f, t);
			dp_xmsg_t *m;
			while (f != t && (m = dp_xs_peek(&l->a)) != NULL) {
				if (m->kind == DP_XMSG_ANSWER_PTR) {
					dp_xs_bigans_t b;
					memcpy(&b, dp_xmsg_data(m), sizeof(b));
					free(b.p);
				}
				dp_xs_pop(&l->a);
			}
		}
	if (x->mem)
		munmap(x->mem, x->mem_len);
	x->mem = NULL;
	x->links = NULL;
	x->mem_len = 0;
	x->n = 0;
}
