/* handoff.c - one cache and one in-flight table per machine: every query
 * is resolved by its home shard (home.h), through the queues of xshard.h.
 *
 * The receiving shard validates the query and applies the ACL and the rate
 * limit (they are about the client); when the name's home is another
 * shard, it copies the query into the queue towards it and is done with
 * it (a TCP query stays counted on its connection until the answer comes
 * back). The home resolves it like a local one: cache hit, coalescing in
 * its in-flight table, upstream. UDP answers leave from the home's socket
 * for the same listen address; TCP answers go back to the origin.
 *
 * Waking: a shard that queued messages for another during a loop turn
 * wakes it once, before its next submit, with IORING_OP_MSG_RING (a CQE
 * with user_data OP_XSHARD | our id in its ring: no syscall on its side,
 * no lock); when the kernel lacks MSG_RING, or refuses one, with a write to
 * its eventfd (then it reads every queue). A woken shard reads the queues
 * of the shards that woke it after its completions, at most
 * DRAIN_BUDGET messages per queue per turn; a queue left non-empty keeps
 * it from sleeping in the next wait.
 *
 * When a queue is full (the home is far behind) the query is resolved
 * where it arrived: the client still gets a real answer, only the
 * one-cache property is lost for that query (counted: handoff_full). The
 * same for a TCP query when the connection's shard already has
 * DP_XS_TCP_CREDIT queries outstanding at that home (what lets the home
 * always find room for an answer, xshard.h).
 *
 * Lifecycle. No shard may queue into a shard that has exited, and no query
 * may be left in a queue nobody reads:
 *   - Hand-offs start only once every shard runs (xs->ready, set by main
 *     after the last shard started): before that a shard resolves locally.
 *   - Drain (SIGTERM): a shard keeps reading its incoming queues for as
 *     long as it runs. When its own reads have ended (it stopped reading
 *     and its last receives completed) it hands off nothing more and counts
 *     itself in xs->quiet. It exits only when every shard is quiet (nobody
 *     will queue a query to it), its incoming queues are empty, its own
 *     query table holds no client query (including those handed to it, whose
 *     answers it sends), and every TCP query it handed off has its answer
 *     back (nobody will queue an answer to it). A home owes answers only to
 *     origins that wait for them, so no message goes to an exited shard.
 *     A shard may exit in the very turn it queued its last answers: its
 *     teardown still sends those wakes, and a draining shard looks at every
 *     queue towards it each tick, woken or not.
 *   - At the drain deadline, or on stop, a shard exits anyway (its unfinished
 *     queries get SERVFAIL, as before). A peer may still queue to it: the
 *     queue memory belongs to main and lives until every shard is joined, so
 *     that costs a lost message, never memory safety; the MSG_RING to a
 *     closed ring fails and is ignored.
 *   - Reload (SIGHUP) changes nothing here: the shard count and the queues
 *     stay; each shard adopts the new settings at its own pace, and a query
 *     is resolved under the home's settings.
 *
 * Interfaces, none of which calls up: the query layer hands a query down
 * (dp_handoff_query); the home delivers it to the function its engine
 * registered (dp_handoff_init: the query layer's dp_query_from_shard), with
 * a client (client-t.h) whose answers come back here through remote_ops
 * (s->fe[T_TCP_REMOTE]) for a TCP client, or leave from the home's UDP
 * socket for a UDP one; on the origin an answer reaches its connection
 * through the TCP frontend's ops (s->fe[T_TCP]).
 */
#include "handoff.h"
#include "ring.h"
#include "home.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef IOSQE_CQE_SKIP_SUCCESS
#define IOSQE_CQE_SKIP_SUCCESS (1U << 6)
#endif

#define DRAIN_BUDGET 256 /* messages per queue per loop turn */

#define SET_WORDS (DP_XS_MAX_SHARDS / 64)

static inline void bit_set(uint64_t *m, uint32_t i)
{
	m[i >> 6] |= 1ull << (i & 63);
}

/* Move the shard set *from into *to and empty *from: the loop over it may
 * set bits again for the next turn. */
static void take_set(uint64_t *to, uint64_t *from)
{
	memcpy(to, from, SET_WORDS * sizeof(uint64_t));
	memset(from, 0, SET_WORDS * sizeof(uint64_t));
}

/* The lowest shard in set m, taken out of it; false when m is empty. */
static bool pop_shard(uint64_t *m, uint32_t *shard)
{
	for (uint32_t w = 0; w < SET_WORDS; w++)
		if (m[w]) {
			*shard = w * 64 + (uint32_t)__builtin_ctzll(m[w]);
			m[w] &= m[w] - 1;
			return true;
		}
	return false;
}

static bool running(dp_shard_t *s)
{
	return s->xs && !s->xs_quiet && __atomic_load_n(&s->xs->ready, __ATOMIC_ACQUIRE);
}

static void remote_answer(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len);

/* How the home's query layer answers a TCP client of another shard: back
 * to its origin. Its queries are counted on the origin, not here. */
static const dp_frontend_ops_t remote_ops = {
	.answer = remote_answer,
};

void dp_handoff_init(dp_shard_t *s, dp_handoff_deliver_fn *deliver)
{
	s->xs_deliver = deliver;
	s->fe[T_TCP_REMOTE] = &remote_ops;
	if (!s->xs)
		return;
	struct io_uring_probe *p = io_uring_get_probe_ring(&s->ring);
	s->xs_msg_ring = p && io_uring_opcode_supported(p, IORING_OP_MSG_RING);
	if (p)
		io_uring_free_probe(p);
	if (s->id == 0)
		dp_info("hand-off to home shards", "shards=%u wake=%s", s->nshards,
			s->xs_msg_ring ? "msg_ring" : "eventfd");
}

int dp_handoff_query(dp_shard_t *s, uint32_t home, const dp_client_t *c, const uint8_t *msg,
		     size_t len)
{
	if (!running(s) || len > DP_XS_QUERY_MAX)
		return -EAGAIN;
	bool tcp = c->transport == T_TCP;
	if (tcp && s->xs_out_tcp[home] >= DP_XS_TCP_CREDIT) {
		STAT_INC(s, handoff_full);
		return -ENOSPC;
	}
	dp_xmsg_t m;
	m.arrive_ns = dp_now_ns();
	m.tcp_idx = tcp ? c->tcp.idx : 0;
	m.tcp_gen = tcp ? c->tcp.gen : 0;
	m.kind = tcp ? DP_XMSG_TCP : DP_XMSG_UDP;
	m.origin = (uint8_t)s->id;
	m.li = c->li;
	if (tcp)
		m.peer = c->tcp.key;
	else
		m.addr = c->addr;
	dp_xlink_t *l = dp_xshard_link(s->xs, (uint32_t)s->id, home);
	if (dp_xs_push(&l->q, &m, msg, len, 0) < 0) {
		STAT_INC(s, handoff_full);
		return -ENOSPC;
	}
	if (tcp) {
		/* Counted on the connection until the answer is back: the
		 * per-connection caps and idle close see it as in flight. */
		s->fe[T_TCP]->query_begin(s, c);
		s->xs_out_tcp[home]++;
		s->xs_out_tcp_total++;
	}
	bit_set(s->xs_wake, home);
	STAT_INC(s, handoff_sent);
	return 0;
}

/* A SERVFAIL for the query that answer msg answers (same ID and question):
 * its header and question. Returns the length, 0 when msg has none. */
static size_t servfail_from(const uint8_t *msg, size_t len, uint8_t *out, size_t cap)
{
	dp_dns_view_t v;
	if (dp_dns_parse_answer(msg, len, &v) < 0)
		return 0;
	size_t qend = (size_t)DP_DNS_HDR_LEN + v.qname_len + 4;
	if (qend > len || qend > cap)
		return 0;
	memcpy(out, msg, qend);
	out[3] = (uint8_t)((out[3] & 0xf0) | DP_DNS_RCODE_SERVFAIL);
	out[2] &= (uint8_t)~(DP_DNS_F_TC >> 8);
	memset(out + 6, 0, 6); /* AN, NS, AR */
	return qend;
}

/* Queue answer msg for the origin of m: inline, or (large) as a pointer
 * to a copy. Returns 0, or -ENOSPC when it must not take the room kept for
 * SERVFAILs (or no copy could be made). */
static int push_answer(dp_spsc_t *q, dp_xmsg_t *m, const uint8_t *msg, size_t len)
{
	if (len <= DP_XS_ANSWER_INLINE) {
		m->kind = DP_XMSG_ANSWER;
		return dp_xs_push(q, m, msg, len, DP_XS_ANSWER_KEEP);
	}
	dp_xs_bigans_t b = { malloc(len), (uint32_t)len };
	if (!b.p)
		return -ENOMEM;
	memcpy(b.p, msg, len);
	m->kind = DP_XMSG_ANSWER_PTR;
	if (dp_xs_push(q, m, (const uint8_t *)&b, sizeof(b), DP_XS_ANSWER_KEEP) == 0)
		return 0;
	free(b.p);
	return -ENOSPC;
}

/* Home: the answer (len 0: none) for c, a TCP client of another shard, goes
 * back to its origin. Exactly one per query handed to us. Copies; hot path. */
static void remote_answer(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len)
{
	uint32_t origin = c->tcp.origin;
	dp_xlink_t *l = dp_xshard_link(s->xs, (uint32_t)s->id, origin);
	dp_xmsg_t m;
	memset(&m, 0, sizeof(m));
	m.origin = (uint8_t)s->id;
	m.tcp_idx = c->tcp.idx;
	m.tcp_gen = c->tcp.gen;
	if (len > UINT16_MAX || push_answer(&l->a, &m, msg, len) < 0) {
		/* No room for it beside the room kept: a SERVFAIL, which
		 * always fits (xshard.h). */
		uint8_t sf[DP_XS_SF_MAX];
		size_t n = len <= UINT16_MAX ? servfail_from(msg, len, sf, sizeof(sf)) : 0;
		STAT_INC(s, handoff_full);
		m.kind = DP_XMSG_ANSWER;
		if (dp_xs_push(&l->a, &m, sf, n, 0) < 0)
			dp_warn("hand-off answer lost", "shard=%d origin=%u", s->id, origin);
	}
	bit_set(s->xs_wake, origin);
}

/* One message from shard src's query queue: resolve it here, for a client
 * answered from our UDP socket or, TCP, back through remote_ops. */
static void take_query(dp_shard_t *s, uint32_t src, dp_xmsg_t *m)
{
	STAT_INC(s, handoff_received);
	dp_client_t c;
	if (m->kind == DP_XMSG_UDP) {
		c.addr = m->addr;
		c.transport = T_UDP;
	} else {
		c.tcp.key = m->peer;
		c.tcp.idx = m->tcp_idx;
		c.tcp.gen = m->tcp_gen;
		c.tcp.origin = (uint8_t)src;
		c.transport = T_TCP_REMOTE;
	}
	c.arrive_ns = m->arrive_ns;
	c.li = m->li;
	s->xs_deliver(s, &c, dp_xmsg_data(m), m->len);
}

/* One answer for one of our TCP clients, from home src: to its connection
 * (dropped there when it is gone), which counts the query ended. */
static void take_answer(dp_shard_t *s, uint32_t src, dp_xmsg_t *m)
{
	const dp_frontend_ops_t *fe = s->fe[T_TCP];
	dp_client_t c = { .transport = T_TCP };
	c.tcp.idx = m->tcp_idx;
	c.tcp.gen = m->tcp_gen;
	if (m->kind == DP_XMSG_ANSWER_PTR) {
		dp_xs_bigans_t b;
		memcpy(&b, dp_xmsg_data(m), sizeof(b));
		fe->answer(s, &c, b.p, b.len);
		free(b.p);
	} else if (m->len) {
		fe->answer(s, &c, dp_xmsg_data(m), m->len);
	}
	fe->query_end(s, &c);
	if (s->xs_out_tcp[src]) {
		s->xs_out_tcp[src]--;
		s->xs_out_tcp_total--;
	}
}

/* Read what src queued for us, DRAIN_BUDGET of each kind at most. Returns
 * true when something is left. */
static bool drain_from(dp_shard_t *s, uint32_t src)
{
	dp_xlink_t *l = dp_xshard_link(s->xs, src, (uint32_t)s->id);
	dp_xmsg_t *m;
	int n = 0;
	while (n < DRAIN_BUDGET && (m = dp_xs_peek(&l->a)) != NULL) {
		take_answer(s, src, m);
		dp_xs_pop(&l->a);
		n++;
	}
	bool more = n == DRAIN_BUDGET;
	n = 0;
	while (n < DRAIN_BUDGET && (m = dp_xs_peek(&l->q)) != NULL) {
		take_query(s, src, m);
		dp_xs_pop(&l->q);
		n++;
	}
	return more || n == DRAIN_BUDGET;
}

void dp_handoff_drain(dp_shard_t *s)
{
	if (!s->xs)
		return;
	s->xs_more = false;
	uint64_t in[SET_WORDS];
	uint32_t src;
	take_set(in, s->xs_in);
	while (pop_shard(in, &src))
		if (src < s->nshards && src != (uint32_t)s->id && drain_from(s, src)) {
			bit_set(s->xs_in, src);
			s->xs_more = true;
		}
}

static void wake_eventfd(dp_shard_t *s, uint32_t t)
{
	uint64_t one = 1;
	ssize_t w = write(s->all[t].wake_fd, &one, sizeof(one));
	(void)w;
}

void dp_handoff_wake(dp_shard_t *s)
{
	if (!s->xs)
		return;
	uint64_t wake[SET_WORDS];
	uint32_t t;
	take_set(wake, s->xs_wake);
	while (pop_shard(wake, &t)) {
		if (!s->xs_msg_ring) {
			wake_eventfd(s, t);
			continue;
		}
		/* The target's ring: set up before it said it runs, which main
		 * saw before setting xs->ready. */
		struct io_uring_sqe *sqe = dp_sqe(s);
		io_uring_prep_msg_ring(sqe, s->all[t].ring.ring_fd, 0,
				       dp_ud(OP_XSHARD, (uint32_t)s->id, 0), 0);
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io_uring_sqe_set_data64(sqe, dp_ud(OP_XSHARD_SENT, t, 0));
	}
}

void dp_handoff_on_cqe(dp_shard_t *s, struct io_uring_cqe *cqe, enum dp_op op, uint32_t idx)
{
	if (!s->xs || (op != OP_WAKE && idx >= s->nshards))
		return;
	if (op == OP_XSHARD) {
		bit_set(s->xs_in, idx);
		return;
	}
	if (op == OP_WAKE) {
		/* Woken through the eventfd (a peer without MSG_RING, or the
		 * main thread): read every queue. */
		for (uint32_t src = 0; src < s->nshards; src++)
			bit_set(s->xs_in, src);
		return;
	}
	/* OP_XSHARD_SENT: only failures complete (CQE_SKIP_SUCCESS). A
	 * target that has exited (drain deadline) refuses it: nothing to do;
	 * anything else: use the eventfd from now on. */
	if (cqe->res < 0 && cqe->res != -EBADFD && cqe->res != -EBADF) {
		if (s->xs_msg_ring)
			dp_warn("MSG_RING wake refused; waking shards through their eventfd",
				"shard=%d err=\"%s\"", s->id, dp_strerror(cqe->res));
		s->xs_msg_ring = false;
		wake_eventfd(s, idx);
	}
}

bool dp_handoff_quiet(dp_shard_t *s)
{
	if (!s->xs)
		return true;
	if (!s->xs_quiet) {
		s->xs_quiet = true;
		__atomic_add_fetch(&s->xs->quiet, 1, __ATOMIC_ACQ_REL);
	}
	/* Every queue towards us, whether or not a wake came for it (a peer
	 * that exited right after queueing is still read). */
	bool empty = true;
	for (uint32_t src = 0; src < s->nshards; src++) {
		if (src == (uint32_t)s->id)
			continue;
		dp_xlink_t *l = dp_xshard_link(s->xs, src, (uint32_t)s->id);
		if (!dp_xs_empty(&l->q) || !dp_xs_empty(&l->a)) {
			bit_set(s->xs_in, src); /* read it next turn */
			s->xs_more = true;
			empty = false;
		}
	}
	return empty && s->xs_out_tcp_total == 0 &&
	       __atomic_load_n(&s->xs->quiet, __ATOMIC_ACQUIRE) == s->nshards;
}
