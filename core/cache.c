/* cache.c - per-shard answer cache with S3-FIFO eviction. An entry keeps
 * the TTL offsets of its answer, found once at insert, so that a hit ages
 * the TTLs by offset (answer.c) without walking the message. */
#include "cache.h"
#include "edns.h"
#include "siphash.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DP_TYPE_SOA 6

enum { IN_SMALL = 0, IN_MAIN = 1 };

struct dp_cache_entry {
	dp_cache_entry_t *hnext; /* hash chain */
	dp_cache_entry_t *qnext; /* FIFO */
	uint64_t hash;
	uint64_t inserted_ms;
	uint64_t expires_ms;
	uint32_t ttl; /* lifetime given at insert, seconds */
	uint32_t size; /* bytes charged */
	uint16_t len; /* wire length */
	uint16_t qtype, qclass;
	uint16_t question_end;
	uint16_t opt_off, opt_len; /* opt_len 0: no OPT */
	uint16_t opt_after; /* records after the OPT */
	uint16_t nttl; /* records but the OPT: TTL offsets in data */
	uint16_t hits;
	uint8_t flags, name_len, ecs_len;
	uint8_t freq; /* 0..3 */
	uint8_t where; /* IN_SMALL / IN_MAIN */
	bool dead; /* replaced or dropped; freed when its FIFO reaches it */
	bool prefetched;
	/* nttl TTL offsets into the wire (uint16_t, message order), name_len
	 * octets of key name, ecs_len of key subnet, then len octets of wire */
	_Alignas(uint16_t) uint8_t data[];
};

static inline const uint16_t *entry_ttls(const dp_cache_entry_t *e)
{
	return (const uint16_t *)(const void *)e->data;
}

static inline const uint8_t *entry_name(const dp_cache_entry_t *e)
{
	return e->data + (size_t)e->nttl * 2;
}

static inline uint8_t *entry_wire(const dp_cache_entry_t *e)
{
	return (uint8_t *)entry_name(e) + e->name_len + e->ecs_len;
}

static inline bool entry_servfail(const dp_cache_entry_t *e)
{
	return DP_DNS_RCODE(entry_wire(e)[3]) == DP_DNS_RCODE_SERVFAIL;
}

static uint32_t pow2_at_least(size_t n)
{
	uint32_t p = 1;
	while (p < n && p < (1u << 30))
		p <<= 1;
	return p;
}

int dp_cache_init(dp_cache_t *c, size_t max_bytes, uint32_t min_ttl, uint32_t max_ttl,
		  uint32_t stale_ttl)
{
	memset(c, 0, sizeof(*c));
	c->max_bytes = max_bytes;
	c->min_ttl = min_ttl;
	c->max_ttl = max_ttl;
	c->stale_ttl = stale_ttl;
	if (max_bytes == 0)
		return 0;
	/* About one bucket per 256 bytes of cache: chains stay short. */
	uint32_t nb = pow2_at_least(max_bytes / 256 + 1);
	c->buckets = calloc(nb, sizeof(*c->buckets));
	c->ghost = calloc(nb, sizeof(*c->ghost));
	if (!c->buckets || !c->ghost) {
		dp_cache_destroy(c);
		return -ENOMEM;
	}
	c->bucket_mask = nb - 1;
	c->ghost_mask = nb - 1;
	return 0;
}

static void free_fifo(dp_cache_entry_t *e)
{
	while (e) {
		dp_cache_entry_t *n = e->qnext;
		free(e);
		e = n;
	}
}

void dp_cache_destroy(dp_cache_t *c)
{
	free_fifo(c->small_head);
	free_fifo(c->main_head);
	free(c->buckets);
	free(c->ghost);
	memset(c, 0, sizeof(*c));
}


void dp_cache_key(const uint8_t *msg, const dp_dns_view_t *v, dp_cache_key_t *k)
{
	const uint8_t *src = msg + v->qname_off;
	size_t n = v->qname_len;
	k->name_len = (uint8_t)n;
	/* Eight octets per step: fold ASCII upper case (SWAR: a lane gets 0x20
	 * added when it is in 'A'..'Z'; label length octets are <= 63 and never
	 * are) and hash. The last step works on a zero-padded copy. The hash
	 * is SipHash under the process key (siphash.h): the cache buckets and
	 * the in-flight table (query.c) index by it, and a client that cannot
	 * compute it cannot pick names that collide. */
	const uint64_t ones7f = 0x7F7F7F7F7F7F7F7Full, hi = 0x8080808080808080ull;
	dp_sip_t h;
	dp_sip_init(&h, &dp_hash_key);
	for (size_t i = 0; i < n; i += 8) {
		uint64_t w = 0;
		memcpy(&w, src + i, n - i >= 8 ? 8 : n - i);
		uint64_t low7 = w & ones7f;
		uint64_t ge_a = low7 + 0x3F3F3F3F3F3F3F3Full; /* lane >= 'A' sets its bit 7 */
		uint64_t gt_z = low7 + 0x2525252525252525ull; /* lane >  'Z' sets its bit 7 */
		uint64_t upper = (ge_a ^ gt_z) & ~w & hi;
		w |= upper >> 2;
		memcpy(k->name + i, &w, 8);
		dp_sip_word(&h, w);
	}
	k->qtype = v->qtype;
	k->qclass = v->qclass;
	k->flags = (uint8_t)((v->has_opt && v->do_bit ? 1 : 0) | (v->flags & DP_DNS_F_CD ? 2 : 0));
	/* The zero-padded words and the name length in the last word make
	 * the input unambiguous. */
	k->hash = dp_sip_final(&h, (uint64_t)k->qtype | (uint64_t)k->qclass << 16 |
					   (uint64_t)k->flags << 32, n);
	k->ecs_len = 0;
}

void dp_cache_key_ecs(dp_cache_key_t *k, const uint8_t *ecs, size_t ecs_len)
{
	/* Keyed: a client picks its subnet and must not pick collisions. */
	k->ecs_len = (uint8_t)ecs_len;
	memcpy(k->ecs, ecs, ecs_len);
	k->hash ^= dp_siphash(&dp_hash_key, ecs, ecs_len);
}

static bool key_eq(const dp_cache_entry_t *e, const dp_cache_key_t *k)
{
	return e->hash == k->hash && e->qtype == k->qtype && e->qclass == k->qclass &&
	       e->flags == k->flags && e->name_len == k->name_len && e->ecs_len == k->ecs_len &&
	       memcmp(entry_name(e), k->name, k->name_len) == 0 &&
	       memcmp(entry_name(e) + k->name_len, k->ecs, k->ecs_len) == 0;
}

static void hash_unlink(dp_cache_t *c, dp_cache_entry_t *e)
{
	dp_cache_entry_t **pp = &c->buckets[e->hash & c->bucket_mask];
	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	e->hnext = NULL;
}

static void kill(dp_cache_t *c, dp_cache_entry_t *e)
{
	if (e->dead)
		return;
	hash_unlink(c, e);
	e->dead = true;
	c->st.entries--;
}

dp_cache_entry_t *dp_cache_lookup(dp_cache_t *c, const dp_cache_key_t *k, uint64_t now_ms,
				  bool allow_stale, bool *stale)
{
	*stale = false;
	if (!c->buckets) {
		if (!allow_stale)
			c->st.misses++;
		return NULL;
	}
	dp_cache_entry_t *e = c->buckets[k->hash & c->bucket_mask];
	while (e && !key_eq(e, k))
		e = e->hnext;
	if (e && now_ms >= e->expires_ms) {
		/* A failure is never worth serving past its time. */
		uint64_t stale_until = e->expires_ms;
		if (!entry_servfail(e))
			stale_until += (uint64_t)c->stale_ttl * 1000;
		if (now_ms >= stale_until) {
			kill(c, e); /* past any use; its memory goes with its FIFO turn */
			c->st.expired++;
			e = NULL;
		} else if (allow_stale) {
			*stale = true;
		} else {
			e = NULL;
		}
	}
	if (!allow_stale) {
		if (e) {
			c->st.hits++;
			if (e->freq < 3)
				e->freq++;
			if (e->hits < UINT16_MAX)
				e->hits++;
		} else {
			c->st.misses++;
		}
	} else if (e && *stale) {
		c->st.stale_served++;
	}
	return e;
}

uint32_t dp_cache_ttl_left(const dp_cache_entry_t *e, uint64_t now_ms)
{
	return now_ms >= e->expires_ms ? 0 : (uint32_t)((e->expires_ms - now_ms) / 1000);
}

uint32_t dp_cache_ttl_orig(const dp_cache_entry_t *e)
{
	return e->ttl;
}

bool dp_cache_prefetch_due(dp_cache_entry_t *e, uint64_t now_ms)
{
	if (e->prefetched || e->hits < 2 || e->ttl < 10 || now_ms >= e->expires_ms)
		return false;
	if ((e->expires_ms - now_ms) * 10 > (uint64_t)e->ttl * 1000)
		return false;
	e->prefetched = true;
	return true;
}


int64_t dp_cache_answer_ttl(const uint8_t *ans, const dp_dns_answer_t *a)
{
	const dp_dns_view_t *av = &a->v;
	unsigned rcode = DP_DNS_RCODE(av->flags);
	if ((av->flags & DP_DNS_F_TC) || av->ext_rcode ||
	    (rcode != DP_DNS_RCODE_NOERROR && rcode != DP_DNS_RCODE_NXDOMAIN))
		return -1;
	/* Over the TTL offsets of the answer and authority records (the OPT
	 * is in the additional section, so the i-th offset is the i-th
	 * record): the smallest TTL, whether the answer holds the asked type
	 * (a CNAME chain that ends in nothing is NODATA), and the SOA's
	 * negative TTL. */
	int64_t min = -1, soa_neg = -1;
	bool has_type = false;
	unsigned n = (unsigned)av->ancount + av->nscount;
	dp_dns_ttl_iter_t it;
	size_t off;
	dp_dns_ttl_iter_init(&it, ans, a->ttl, a->nttl, a->ttl_total);
	for (unsigned i = 0; i < n && dp_dns_ttl_next(&it, &off); i++) {
		uint16_t type = dp_rd16(ans + off - 4);
		uint16_t rdlen = dp_rd16(ans + off + 4);
		uint32_t ttl = dp_dns_ttl(ans, off); /* RFC 2181 8 */
		if (i < av->ancount && (type == av->qtype || av->qtype == 255 /* ANY */))
			has_type = true;
		if (i >= av->ancount && type == DP_TYPE_SOA && rdlen >= 22) {
			/* RFC 2308 5: min(SOA TTL, SOA MINIMUM) */
			uint32_t minimum = dp_rd32(ans + off + 6 + rdlen - 4);
			int64_t t = DP_MIN(ttl, minimum);
			soa_neg = soa_neg < 0 ? t : DP_MIN(soa_neg, t);
		}
		min = min < 0 ? (int64_t)ttl : DP_MIN(min, (int64_t)ttl);
	}
	bool negative = rcode == DP_DNS_RCODE_NXDOMAIN || !has_type;
	if (!negative)
		return min;
	/* Negative (RFC 2308): needs the SOA; bounded by any CNAME before it. */
	if (soa_neg < 0)
		return -1;
	return min < 0 ? soa_neg : DP_MIN(min, soa_neg);
}

static void fifo_push(dp_cache_entry_t **head, dp_cache_entry_t **tail, dp_cache_entry_t *e)
{
	e->qnext = NULL;
	if (*tail)
		(*tail)->qnext = e;
	else
		*head = e;
	*tail = e;
}

static dp_cache_entry_t *fifo_pop(dp_cache_entry_t **head, dp_cache_entry_t **tail)
{
	dp_cache_entry_t *e = *head;
	if (e) {
		*head = e->qnext;
		if (!*head)
			*tail = NULL;
		e->qnext = NULL;
	}
	return e;
}

static void drop(dp_cache_t *c, dp_cache_entry_t *e, bool remember)
{
	if (!e->dead) {
		if (remember)
			c->ghost[e->hash & c->ghost_mask] = e->hash;
		kill(c, e);
		c->st.evictions++;
	}
	c->st.bytes -= e->size;
	free(e);
}

static void evict_one(dp_cache_t *c)
{
	if (c->small_head && (c->small_bytes > c->max_bytes / 10 || !c->main_head)) {
		dp_cache_entry_t *e = fifo_pop(&c->small_head, &c->small_tail);
		c->small_bytes -= e->size;
		if (!e->dead && e->freq > 0) {
			e->freq = 0;
			e->where = IN_MAIN;
			fifo_push(&c->main_head, &c->main_tail, e);
			c->main_bytes += e->size;
			return;
		}
		drop(c, e, true);
		return;
	}
	/* Main: give each entry as many more rounds as it has hits (<= 3). */
	for (;;) {
		dp_cache_entry_t *e = fifo_pop(&c->main_head, &c->main_tail);
		if (!e)
			return;
		if (!e->dead && e->freq > 0) {
			e->freq--;
			fifo_push(&c->main_head, &c->main_tail, e);
			continue;
		}
		c->main_bytes -= e->size;
		drop(c, e, false);
		return;
	}
}

/* A new entry for answer ans (parsed into a) under k, not linked: the
 * wire scrubbed for every client of k (no upstream option; the subnet
 * option only when it is the key's own), and the TTL offsets of the
 * scrubbed wire. Sets *rc to 1 when it is not cacheable after all, or
 * -ENOMEM; NULL then. Allocates the entry. */
static dp_cache_entry_t *entry_make(dp_cache_t *c, const dp_cache_key_t *k, const uint8_t *ans,
				    size_t len, const dp_dns_answer_t *a, int *rc)
{
	size_t wl = DP_MIN(len, (size_t)a->v.msg_end);
	size_t size = sizeof(dp_cache_entry_t) + (size_t)a->ttl_total * 2 + k->name_len +
		      k->ecs_len + wl;
	*rc = 1;
	if (size > c->max_bytes / 4)
		return NULL;
	dp_cache_entry_t *e = malloc(size);
	*rc = -ENOMEM;
	if (!e)
		return NULL;
	memset(e, 0, sizeof(*e));
	e->nttl = a->ttl_total;
	e->name_len = k->name_len;
	e->ecs_len = k->ecs_len;
	memcpy((uint8_t *)entry_name(e), k->name, k->name_len);
	memcpy((uint8_t *)entry_name(e) + k->name_len, k->ecs, k->ecs_len);
	uint8_t *w = entry_wire(e);
	memcpy(w, ans, wl);
	dp_dns_view_t v = a->v;
	size_t sl = dp_edns_scrub_answer(w, wl, &v, true, false, k->ecs_len ? k->ecs : NULL,
					 k->ecs_len);
	/* RFC 7871 7.3: an answer scoped to a longer prefix than the one asked
	 * for is not for the whole subnet of the key; one with another subnet
	 * than ours is not ours at all. */
	if (k->ecs_len && ((a->v.opt_ecs && !v.opt_ecs) || dp_edns_ecs_scope(w, &v) > k->ecs[2])) {
		free(e);
		*rc = 1;
		return NULL;
	}
	/* The offsets, found once: records after the OPT moved down by what
	 * the scrub took out of it. */
	uint16_t *t = (uint16_t *)(void *)e->data;
	dp_dns_ttl_iter_t it;
	size_t off;
	dp_dns_ttl_iter_init(&it, ans, a->ttl, a->nttl, a->ttl_total);
	for (unsigned i = 0; dp_dns_ttl_next(&it, &off); i++)
		t[i] = (uint16_t)(off > a->v.opt_off && a->v.has_opt ? off - (wl - sl) : off);
	e->len = (uint16_t)sl;
	e->question_end = v.question_end;
	e->opt_off = v.has_opt ? v.opt_off : 0;
	e->opt_len = v.has_opt ? v.opt_len : 0;
	e->opt_after = v.opt_after;
	e->size = (uint32_t)size;
	return e;
}

/* Link the new entry e under k, in place of an older answer for the same
 * key, and evict down to the memory bound. */
static void entry_link(dp_cache_t *c, const dp_cache_key_t *k, dp_cache_entry_t *e)
{
	/* Replace an older answer for the same key; a refreshed entry keeps
	 * its standing (prefetch must not demote the names it keeps warm). */
	dp_cache_entry_t **pp = &c->buckets[k->hash & c->bucket_mask];
	bool was_main = false;
	for (dp_cache_entry_t *o = *pp; o; o = o->hnext)
		if (key_eq(o, k)) {
			was_main = o->where == IN_MAIN;
			e->freq = o->freq;
			e->hits = o->hits;
			kill(c, o);
			break;
		}
	e->hnext = *pp;
	*pp = e;
	if (was_main || c->ghost[k->hash & c->ghost_mask] == k->hash) {
		e->where = IN_MAIN;
		fifo_push(&c->main_head, &c->main_tail, e);
		c->main_bytes += e->size;
	} else {
		e->where = IN_SMALL;
		fifo_push(&c->small_head, &c->small_tail, e);
		c->small_bytes += e->size;
	}
	c->st.inserts++;
	c->st.entries++;
	c->st.bytes += e->size;
	while (c->small_bytes + c->main_bytes > c->max_bytes && (c->small_head || c->main_head))
		evict_one(c);
}

/* Store ans (parsed into a) under k for ttl seconds (> 0). Returns 0, 1
 * when it is not cacheable after all, -ENOMEM. */
static int store(dp_cache_t *c, const dp_cache_key_t *k, const uint8_t *ans, size_t len,
		 const dp_dns_answer_t *a, uint32_t ttl, uint64_t now_ms)
{
	int rc;
	dp_cache_entry_t *e = entry_make(c, k, ans, len, a, &rc);
	if (!e)
		return rc;
	e->hash = k->hash;
	e->qtype = k->qtype;
	e->qclass = k->qclass;
	e->flags = k->flags;
	e->ttl = ttl;
	e->inserted_ms = now_ms;
	e->expires_ms = now_ms + (uint64_t)ttl * 1000;
	entry_link(c, k, e);
	return 0;
}

int dp_cache_insert(dp_cache_t *c, const dp_cache_key_t *k, const uint8_t *ans, size_t len,
		    const dp_dns_answer_t *a, uint64_t now_ms)
{
	if (!c->buckets)
		return 1;
	int64_t ttl = dp_cache_answer_ttl(ans, a);
	if (ttl < 0)
		return 1;
	if (ttl < c->min_ttl)
		ttl = c->min_ttl;
	if (ttl > c->max_ttl)
		ttl = c->max_ttl;
	if (ttl == 0)
		return 1;
	return store(c, k, ans, len, a, (uint32_t)ttl, now_ms);
}

int dp_cache_insert_servfail(dp_cache_t *c, const dp_cache_key_t *k, const uint8_t *ans,
			     size_t len, const dp_dns_answer_t *a, uint32_t ttl, uint64_t now_ms)
{
	if (!c->buckets || ttl == 0 || DP_DNS_RCODE(a->v.flags) != DP_DNS_RCODE_SERVFAIL ||
	    a->v.ext_rcode)
		return 1;
	for (dp_cache_entry_t *o = c->buckets[k->hash & c->bucket_mask]; o; o = o->hnext)
		if (key_eq(o, k) && !entry_servfail(o) &&
		    now_ms < o->expires_ms + (uint64_t)c->stale_ttl * 1000)
			return 1;
	return store(c, k, ans, len, a, ttl, now_ms);
}

void dp_cache_entry_src(const dp_cache_entry_t *e, uint64_t now_ms, bool stale,
			dp_answer_src_t *src)
{
	const uint8_t *w = entry_wire(e);
	src->wire = w;
	src->len = e->len;
	memset(&src->v, 0, sizeof(src->v));
	src->v.flags = dp_rd16(w + 2);
	src->v.ancount = dp_rd16(w + 6);
	src->v.nscount = dp_rd16(w + 8);
	src->v.arcount = dp_rd16(w + 10);
	src->v.question_end = e->question_end;
	src->v.msg_end = e->len;
	src->v.has_opt = e->opt_len != 0;
	src->v.opt_off = e->opt_off;
	src->v.opt_len = e->opt_len;
	src->v.opt_after = e->opt_after;
	src->ttl = entry_ttls(e);
	src->nttl = src->ttl_total = e->nttl;
	src->ttl_max = e->ttl; /* --cache-max-ttl clamps what clients see too */
	src->age = now_ms > e->inserted_ms ? (uint32_t)((now_ms - e->inserted_ms) / 1000) : 0;
	src->stale = stale;
	src->scrubbed = true;
}
