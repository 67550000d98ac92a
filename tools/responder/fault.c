/* fault.c - fault injection (see fault.h). Per answer: fault_answer(); per
 * handshake: fault_hold_handshake(); once a turn when a timed fault is on:
 * fault_wait() and fault_timers(). The connection closes themselves stay in
 * conn.c; this file only marks a connection (want_close, reset_armed) and
 * queues our close_notify.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>

#include "dns.h"
#include "fault.h"
#include "stream.h"
#include "uring.h"

/* ---- dice --------------------------------------------------------------- */

static uint32_t rng_next(shard_t *s)
{
	uint64_t x = s->rng; /* xorshift64* */
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	s->rng = x;
	return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* True for pct percent of the calls. */
static bool roll(shard_t *s, unsigned pct)
{
	return pct && (pct >= 100 || rng_next(s) % 100u < pct);
}

/* ---- idle list ------------------------------------------------------------ */

/* The idle list (--idle-close-ms): open connections, least recently active
 * first. Every connection has the same limit, so expiry only looks at the
 * head; activity moves a connection to the tail. O(1) both. */
void fault_idle_unlink(shard_t *s, conn_t *c)
{
	if (!c->in_idle)
		return;
	if (c->idle_prev != SLOT_NONE)
		s->conns[c->idle_prev].idle_next = c->idle_next;
	else
		s->idle_head = c->idle_next;
	if (c->idle_next != SLOT_NONE)
		s->conns[c->idle_next].idle_prev = c->idle_prev;
	else
		s->idle_tail = c->idle_prev;
	c->in_idle = false;
}

void fault_idle_touch(shard_t *s, conn_t *c)
{
	fault_idle_unlink(s, c);
	uint32_t i = conn_idx(s, c);
	c->last_active_ms = s->now_ms;
	c->idle_prev = s->idle_tail;
	c->idle_next = SLOT_NONE;
	if (s->idle_tail != SLOT_NONE)
		s->conns[s->idle_tail].idle_next = i;
	else
		s->idle_head = i;
	s->idle_tail = i;
	c->in_idle = true;
}

void fault_close_notify(shard_t *s, conn_t *c)
{
	stream_shutdown(c);
	c->want_close = true;
	fault_idle_unlink(s, c);
	mark_dirty(s, c);
}

/* ---- queues ------------------------------------------------------------- */

/* Queue an entry for connection c, due in ms, on the FIFO (head, tail),
 * with a copy of len bytes of frame. Allocates; NULL without memory. */
static delayed_t *fault_queue(shard_t *s, conn_t *c, delayed_t **head, delayed_t **tail,
			      uint32_t ms, const uint8_t *frame, size_t len)
{
	delayed_t *d = malloc(sizeof(*d) + len);
	if (!d)
		return NULL;
	d->next = NULL;
	d->due_ms = s->now_ms + ms;
	d->conn = conn_idx(s, c);
	d->gen = c->gen;
	d->len = (uint32_t)len;
	if (len)
		memcpy(d->msg, frame, len);
	if (*tail)
		(*tail)->next = d;
	else
		*head = d;
	*tail = d;
	return d;
}

/* The first entry of the FIFO (head, tail) when it is due, taken off the
 * queue (the caller frees it); NULL when none is due. */
static delayed_t *take_due(shard_t *s, delayed_t **head, delayed_t **tail)
{
	delayed_t *d = *head;
	if (!d || d->due_ms > s->now_ms)
		return NULL;
	*head = d->next;
	if (!*head)
		*tail = NULL;
	return d;
}

void fault_free_queues(shard_t *s)
{
	while (s->dq_head) {
		delayed_t *d = s->dq_head;
		s->dq_head = d->next;
		free(d);
	}
	while (s->hq_head) {
		delayed_t *d = s->hq_head;
		s->hq_head = d->next;
		free(d);
	}
	s->dq_tail = s->hq_tail = NULL;
}

/* ---- per answer ----------------------------------------------------------- */

/* Hold a framed answer (len bytes) back for --delay-ms (the fault path
 * only); without memory the answer is dropped instead. */
static void delay_answer(shard_t *s, conn_t *c, const uint8_t *frame, size_t len)
{
	if (!fault_queue(s, c, &s->dq_head, &s->dq_tail, c->bh->delay_ms, frame, len)) {
		CNT_INC(s, fault_dropped);
		return;
	}
	c->delayed_pending++;
	CNT_INC(s, fault_delayed);
}

/* --reset-mid-record: the answer in frame (len bytes) is the one to tear.
 * What the batch holds goes out whole; this answer is encrypted into its
 * own record (plain: written on its own), and only the first half of that
 * record is kept for sending.
 * conn_service() resets the connection once that is sent. */
static void tear_record(shard_t *s, conn_t *c, const uint8_t *frame, size_t len)
{
	(void)stream_flush(s, c); /* frame lies beyond ob_len: untouched */
	size_t before = BIO_pending(c->wbio);
	(void)stream_write(s, c, frame, len);
	size_t after = BIO_pending(c->wbio);
	size_t keep = before + (after - before) / 2;
	uint8_t *tmp = malloc(after ? after : 1);
	if (tmp) {
		int n = BIO_read(c->wbio, tmp, (int)after);
		if (n > 0 && (size_t)n >= keep)
			BIO_write(c->wbio, tmp, (int)keep);
		free(tmp);
	}
	c->reset_armed = true;
	CNT_INC(s, fault_resets);
}

/* --wrong-question-pct: another name of the same length (the first letter
 * changed), or for the root name another type, in the answer m (which has
 * a question). */
static void wrong_question(uint8_t *m)
{
	if (m[DP_DNS_HDR_LEN] > 0) {
		uint8_t ch = m[DP_DNS_HDR_LEN + 1];
		m[DP_DNS_HDR_LEN + 1] = (ch | 0x20) == 'q' ? 'z' : 'q';
	} else {
		dp_wr16(m + DP_DNS_HDR_LEN + 1, (uint16_t)(dp_rd16(m + DP_DNS_HDR_LEN + 1) ^ 1));
	}
}

int fault_answer(shard_t *s, conn_t *c, uint8_t *frame, int n)
{
	const behave_t *bh = c->bh;
	uint8_t *m = frame + 2;
	if (roll(s, bh->drop_pct)) {
		CNT_INC(s, fault_dropped);
		return 0;
	}
	if (roll(s, bh->wrong_id_pct)) {
		dp_wr16(m, (uint16_t)(dp_rd16(m) ^ (1u + rng_next(s) % 0xffffu)));
		CNT_INC(s, fault_wrong_id);
	}
	if (roll(s, bh->wrong_question_pct) && n >= DP_DNS_HDR_LEN + 5 && dp_rd16(m + 4) > 0) {
		wrong_question(m);
		CNT_INC(s, fault_wrong_question);
	}
	dp_wr16(frame, (uint16_t)n);
	c->answered++;
	if (bh->reset_after >= 0 && c->answered > (uint32_t)bh->reset_after) {
		tear_record(s, c, frame, 2 + (size_t)n);
		return FAULT_RESET;
	}
	if (bh->delay_ms && roll(s, bh->delay_pct)) {
		delay_answer(s, c, frame, 2 + (size_t)n);
	} else {
		if (bh->reorder)
			s->rev[s->nrev++] = (uint32_t)s->ob_len;
		s->ob_len += 2 + (size_t)n;
		CNT_INC(s, answers);
	}
	if (bh->close_after && c->answered >= bh->close_after) {
		CNT_INC(s, fault_closed_after);
		return FAULT_STOP;
	}
	return 0;
}

/* ---- per handshake -------------------------------------------------------- */

bool fault_hold_handshake(shard_t *s, conn_t *c)
{
	if (c->hs_held)
		return true;
	c->hs_held = true;
	CNT_INC(s, fault_hs_delayed);
	if (fault_queue(s, c, &s->hq_head, &s->hq_tail, c->bh->handshake_delay_ms, NULL, 0))
		return true;
	c->hs_released = true; /* without memory: at once */
	return false;
}

/* ---- timers --------------------------------------------------------------- */

bool fault_wait(shard_t *s, struct __kernel_timespec *ts)
{
	uint64_t due = UINT64_MAX;
	if (s->dq_head)
		due = s->dq_head->due_ms;
	if (s->hq_head)
		due = DP_MIN(due, s->hq_head->due_ms);
	if (s->idle_head != SLOT_NONE) {
		const conn_t *c = &s->conns[s->idle_head];
		due = DP_MIN(due, c->last_active_ms + c->bh->idle_close_ms);
	}
	if (due == UINT64_MAX)
		return false;
	uint64_t now = dp_now_ms(), w = due > now ? due - now : 0;
	ts->tv_sec = (long long)(w / 1000u);
	ts->tv_nsec = (long long)(w % 1000u) * 1000000;
	return true;
}

/* --delay-ms: write the delayed answers that are due, each with its own
 * stream write, unless the connection went away or is closing. */
static void send_due_answers(shard_t *s)
{
	delayed_t *d;
	while ((d = take_due(s, &s->dq_head, &s->dq_tail))) {
		conn_t *c = &s->conns[d->conn];
		if (c->state == SLOT_OPEN && c->gen == d->gen) {
			c->delayed_pending--;
			if (!c->tls_shut && !c->reset_armed && !c->want_close) {
				if (stream_write(s, c, d->msg, d->len) == 0) {
					CNT_INC(s, answers);
					if (c->in_idle)
						fault_idle_touch(s, c);
				} else {
					stream_failed(s, c);
				}
			}
			mark_dirty(s, c);
		}
		free(d);
	}
}

/* --handshake-delay-ms: the held ClientHellos that are due go on (their
 * connections are serviced at the end of the turn). */
static void release_due_handshakes(shard_t *s)
{
	delayed_t *d;
	while ((d = take_due(s, &s->hq_head, &s->hq_tail))) {
		conn_t *c = &s->conns[d->conn];
		if (c->state == SLOT_OPEN && c->gen == d->gen) {
			c->hs_released = true;
			c->rx_new = true; /* the held ClientHello */
			mark_dirty(s, c);
		}
		free(d);
	}
}

/* --idle-close-ms: close_notify the connections idle that long. */
static void close_idle(shard_t *s)
{
	while (s->idle_head != SLOT_NONE) {
		conn_t *c = &s->conns[s->idle_head];
		if (s->now_ms - c->last_active_ms < c->bh->idle_close_ms)
			break;
		if (c->delayed_pending || c->send_armed) {
			fault_idle_touch(s, c); /* not idle: answers are on their way */
			continue;
		}
		CNT_INC(s, fault_idle_closed);
		fault_close_notify(s, c);
	}
}

void fault_timers(shard_t *s)
{
	send_due_answers(s);
	release_due_handshakes(s);
	close_idle(s);
}
