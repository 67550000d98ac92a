/* clientshare.c - fair share of the query table per client address (see
 * clientshare.h for the admission rule and what it guarantees).
 *
 * Links are stored as index + 1 so that zeroed memory is a valid empty
 * state: the tables come from calloc and their pages stay untouched until
 * used.
 */
#include "clientshare.h"
#include "siphash.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define NIL 0u

int dp_cshare_init(dp_cshare_t *cs, uint32_t qcap)
{
	memset(cs, 0, sizeof(*cs));
	uint32_t n = 2;
	while (n < 2 * qcap)
		n <<= 1;
	cs->qcap = qcap;
	cs->mask = n - 1;
	cs->slot = calloc(n, sizeof(uint32_t));
	cs->ent = calloc(qcap, sizeof(dp_cshare_ent_t));
	cs->bucket = calloc((size_t)qcap + 1, sizeof(uint32_t));
	cs->qent = calloc(qcap, sizeof(uint32_t));
	cs->qprev = calloc(qcap, sizeof(uint32_t));
	cs->qnext = calloc(qcap, sizeof(uint32_t));
	if (!cs->slot || !cs->ent || !cs->bucket || !cs->qent || !cs->qprev || !cs->qnext) {
		dp_cshare_free(cs);
		return -ENOMEM;
	}
	return 0;
}

void dp_cshare_free(dp_cshare_t *cs)
{
	free(cs->slot);
	free(cs->ent);
	free(cs->bucket);
	free(cs->qent);
	free(cs->qprev);
	free(cs->qnext);
	memset(cs, 0, sizeof(*cs));
}

void dp_cshare_key_of(const struct sockaddr *sa, dp_cshare_key_t *k)
{
	static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	uint32_t v4;
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		const uint8_t *a = s6->sin6_addr.s6_addr;
		if (memcmp(a, v4mapped, 12) != 0) {
			memcpy(&k->hi, a, 8); /* the /64 */
			k->lo = 6;
			return;
		}
		memcpy(&v4, a + 12, 4);
	} else {
		v4 = ((const struct sockaddr_in *)sa)->sin_addr.s_addr;
	}
	k->hi = v4;
	k->lo = 4;
}

static bool key_eq(const dp_cshare_key_t *a, const dp_cshare_key_t *b)
{
	return a->hi == b->hi && a->lo == b->lo;
}

/* Entry of key k (hash h) + 1, or NIL; *pos is the slot it is in, or the
 * empty slot where it would go. */
static uint32_t find(const dp_cshare_t *cs, const dp_cshare_key_t *k, uint64_t h, uint32_t *pos)
{
	for (uint32_t i = (uint32_t)h & cs->mask;; i = (i + 1) & cs->mask) {
		uint32_t e = cs->slot[i];
		if (e == NIL || (cs->ent[e - 1].hash == h && key_eq(&cs->ent[e - 1].key, k))) {
			*pos = i;
			return e;
		}
	}
}

/* Remove slot i from the open-addressing table (backward-shift deletion:
 * later entries of the run move into the hole when their home allows). */
static void slot_del(dp_cshare_t *cs, uint32_t i)
{
	uint32_t m = cs->mask, j = i;
	for (;;) {
		cs->slot[i] = NIL;
		for (;;) {
			j = (j + 1) & m;
			if (cs->slot[j] == NIL)
				return;
			uint32_t home = (uint32_t)cs->ent[cs->slot[j] - 1].hash & m;
			/* stays if home lies cyclically in (i, j] */
			if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
				continue;
			break;
		}
		cs->slot[i] = cs->slot[j];
		i = j;
	}
}

/* ---- lists of entries by count ------------------------------------------ */

static void bucket_unlink(dp_cshare_t *cs, uint32_t e)
{
	dp_cshare_ent_t *x = &cs->ent[e - 1];
	if (x->bprev)
		cs->ent[x->bprev - 1].bnext = x->bnext;
	else
		cs->bucket[x->count] = x->bnext;
	if (x->bnext)
		cs->ent[x->bnext - 1].bprev = x->bprev;
	x->bprev = x->bnext = NIL;
}

static void bucket_link(dp_cshare_t *cs, uint32_t e)
{
	dp_cshare_ent_t *x = &cs->ent[e - 1];
	x->bprev = NIL;
	x->bnext = cs->bucket[x->count];
	if (x->bnext)
		cs->ent[x->bnext - 1].bprev = e;
	cs->bucket[x->count] = e;
}

/* ---- queries ------------------------------------------------------------- */

uint32_t dp_cshare_count(const dp_cshare_t *cs, const dp_cshare_key_t *k)
{
	uint32_t pos, e = find(cs, k, dp_hash2(k->hi, k->lo), &pos);
	return e ? cs->ent[e - 1].count : 0;
}

int dp_cshare_admit(const dp_cshare_t *cs, const dp_cshare_key_t *k, uint32_t used)
{
	uint32_t cap = cs->qcap;
	if (used < cap - cap / 8)
		return DP_CSHARE_ADMIT;
	uint32_t mine = dp_cshare_count(cs, k);
	uint32_t n = cs->active + (mine == 0);
	uint32_t share = DP_MAX(cap / n, 1u);
	if (mine >= share)
		return DP_CSHARE_REFUSE;
	if (used < cap)
		return DP_CSHARE_ADMIT;
	return cs->maxc > share ? DP_CSHARE_RECLAIM : DP_CSHARE_REFUSE;
}

uint32_t dp_cshare_victim(const dp_cshare_t *cs)
{
	if (cs->maxc == 0)
		return DP_NONE;
	uint32_t e = cs->bucket[cs->maxc];
	return cs->ent[e - 1].qhead - 1;
}

uint32_t dp_cshare_next(const dp_cshare_t *cs, uint32_t qi)
{
	return cs->qnext[qi] ? cs->qnext[qi] - 1 : DP_NONE;
}

void dp_cshare_add(dp_cshare_t *cs, const dp_cshare_key_t *k, uint32_t qi)
{
	uint64_t h = dp_hash2(k->hi, k->lo);
	uint32_t pos, e = find(cs, k, h, &pos);
	dp_cshare_ent_t *x;
	if (e == NIL) {
		/* At most qcap addresses have a query: the pool cannot run out. */
		if (cs->ent_free) {
			e = cs->ent_free;
			cs->ent_free = cs->ent[e - 1].bnext;
		} else {
			e = ++cs->ent_hiwater;
		}
		x = &cs->ent[e - 1];
		*x = (dp_cshare_ent_t){ .key = *k, .hash = h };
		cs->slot[pos] = e;
		cs->active++;
	} else {
		x = &cs->ent[e - 1];
		bucket_unlink(cs, e);
	}
	x->count++;
	bucket_link(cs, e);
	if (x->count > cs->maxc)
		cs->maxc = x->count;
	/* Newest last in the address's list. */
	cs->qent[qi] = e;
	cs->qnext[qi] = NIL;
	cs->qprev[qi] = x->qtail;
	if (x->qtail)
		cs->qnext[x->qtail - 1] = qi + 1;
	else
		x->qhead = qi + 1;
	x->qtail = qi + 1;
}

void dp_cshare_del(dp_cshare_t *cs, uint32_t qi)
{
	uint32_t e = cs->qent[qi];
	if (e == NIL)
		return;
	dp_cshare_ent_t *x = &cs->ent[e - 1];
	uint32_t p = cs->qprev[qi], n = cs->qnext[qi];
	if (p)
		cs->qnext[p - 1] = n;
	else
		x->qhead = n;
	if (n)
		cs->qprev[n - 1] = p;
	else
		x->qtail = p;
	cs->qent[qi] = cs->qprev[qi] = cs->qnext[qi] = NIL;

	bucket_unlink(cs, e);
	/* The largest count drops only when this entry was its last holder;
	 * the entry itself then holds maxc - 1 (or is gone, and so is everyone). */
	if (x->count == cs->maxc && cs->bucket[x->count] == NIL)
		cs->maxc--;
	if (--x->count) {
		bucket_link(cs, e);
		return;
	}
	uint32_t pos;
	find(cs, &x->key, x->hash, &pos);
	slot_del(cs, pos);
	x->bnext = cs->ent_free;
	cs->ent_free = e;
	cs->active--;
}
