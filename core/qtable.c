/* qtable.c - the shard's query table (see qtable.h): slots, free list and
 * the in-flight index.
 *
 * Owns: the dp_query_t slots (--max-inflight, mapped once, touched only as
 * slots are first used: q_hiwater marks the slots ever used), their free
 * list (tlink.next), the wire copies too large for a slot's inline buffer,
 * and the in-flight index s->flight, which maps a question upstream now to
 * its query for coalescing.
 */
#include "qtable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int dp_qtable_init(dp_shard_t *s)
{
	s->q_cap = s->cfg->max_inflight;
	s->q = mmap(NULL, sizeof(dp_query_t) * s->q_cap, PROT_READ | PROT_WRITE,
		    MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (s->q == MAP_FAILED) {
		s->q = NULL;
		return -ENOMEM;
	}
	s->q_free = DP_NONE;
	s->q_hiwater = 0;
	s->q_used = 0;
	uint32_t fl = 1;
	while (fl < 2 * s->q_cap)
		fl <<= 1;
	s->flight = malloc(sizeof(uint32_t) * fl);
	if (!s->flight)
		return -ENOMEM;
	memset(s->flight, 0xff, sizeof(uint32_t) * fl);
	s->flight_mask = fl - 1;
	return 0;
}

void dp_qtable_free(dp_shard_t *s)
{
	free(s->flight);
	s->flight = NULL;
	if (!s->q)
		return;
	for (uint32_t i = 0; i < s->q_hiwater; i++)
		if (s->q[i].wire && s->q[i].wire != s->q[i].inline_wire)
			free(s->q[i].wire);
	munmap(s->q, sizeof(dp_query_t) * s->q_cap);
	s->q = NULL;
}

/* ---- slots ------------------------------------------------------------------ */

uint32_t dp_qtable_alloc(dp_shard_t *s)
{
	uint32_t qi;
	if (s->q_free != DP_NONE) {
		qi = s->q_free;
		s->q_free = s->q[qi].tlink.next;
	} else if (s->q_hiwater < s->q_cap) {
		qi = s->q_hiwater++;
	} else {
		return DP_NONE;
	}
	s->q_used++;
	STAT_SET(s, queries_inflight, s->q_used);
	return qi;
}

static void flight_del(dp_shard_t *s, uint32_t qi);

void dp_qtable_put(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	if (q->in_table)
		flight_del(s, qi);
	if (q->wire != q->inline_wire)
		free(q->wire);
	q->wire = NULL;
	q->state = Q_FREE;
	q->gen++;
	q->tlink.next = s->q_free;
	s->q_free = qi;
	s->q_used--;
	s->q_freed++;
	STAT_SET(s, queries_inflight, s->q_used);
}

/* ---- in-flight index (coalescing) -------------------------------------------
 * Open addressing with linear probing and backward-shift deletion, keyed by
 * the cache key hash; a match also needs the same question and DO/CD bits. */

static bool same_question(const dp_query_t *a, const dp_query_t *b)
{
	return a->key_hash == b->key_hash &&
	       (a->view.has_opt && a->view.do_bit) == (b->view.has_opt && b->view.do_bit) &&
	       (a->view.flags & DP_DNS_F_CD) == (b->view.flags & DP_DNS_F_CD) &&
	       a->ecs_len == b->ecs_len && memcmp(a->ecs, b->ecs, a->ecs_len) == 0 &&
	       dp_dns_question_equal(a->wire, &a->view, b->wire, &b->view);
}

uint32_t dp_qtable_flight_find(const dp_shard_t *s, const dp_query_t *q)
{
	for (uint32_t i = (uint32_t)q->key_hash & s->flight_mask;; i = (i + 1) & s->flight_mask) {
		uint32_t qi = s->flight[i];
		if (qi == DP_NONE)
			return DP_NONE;
		if (same_question(&s->q[qi], q))
			return qi;
	}
}

void dp_qtable_flight_add(dp_shard_t *s, uint32_t qi)
{
	uint32_t i = (uint32_t)s->q[qi].key_hash & s->flight_mask;
	while (s->flight[i] != DP_NONE)
		i = (i + 1) & s->flight_mask;
	s->flight[i] = qi;
	s->q[qi].in_table = true;
}

static void flight_del(dp_shard_t *s, uint32_t qi)
{
	uint32_t m = s->flight_mask, i = (uint32_t)s->q[qi].key_hash & m;
	while (s->flight[i] != qi) {
		if (s->flight[i] == DP_NONE)
			return;
		i = (i + 1) & m;
	}
	s->q[qi].in_table = false;
	/* Backward-shift: move later entries of the run into the hole when
	 * their home slot allows it. */
	uint32_t j = i;
	for (;;) {
		s->flight[i] = DP_NONE;
		for (;;) {
			j = (j + 1) & m;
			if (s->flight[j] == DP_NONE)
				return;
			uint32_t home = (uint32_t)s->q[s->flight[j]].key_hash & m;
			/* stays if home lies cyclically in (i, j] */
			if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
				continue;
			break;
		}
		s->flight[i] = s->flight[j];
		i = j;
	}
}
