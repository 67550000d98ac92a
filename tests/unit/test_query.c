/* test_query.c - the query path and table (query.c, qtable.c) with no
 * socket and no ring. Fake frontends (client-t.h ops) record every answer;
 * a fake upstream takes queries and hands answers back the way upstream.c
 * does (an answer reaches a query only while it is on the connection with
 * that ID and question); a fake TCP transport (fake_tcp.h) under the real
 * connection state machine (tcpconn.c) stands for a client that goes away.
 *
 * Covers: coalescing (N clients, one upstream query, N answers with their
 * own IDs and spelling; then a cache hit), timeout -> exactly one SERVFAIL
 * per client (coalesced ones too), a late answer after the timeout and the
 * slot's reuse, fail_all (drain) answering everyone once, the fair share
 * (UDP refused: SERVFAIL; TCP refused: handed back unanswered; reclaiming
 * from the address over its share), a query handed over by another shard
 * answered once back to its origin (len 0 when it cannot be), no upstream
 * to take a query, and a TCP client gone before its answer.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include <cmocka.h>

#include "query.c"
#include "qtable.c"
#include "metrics.c"

/* Not every helper of the fake transport is used here. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "fake_tcp.h"
#pragma GCC diagnostic pop
#include "wire.h"

static dp_shard_t S;
static dp_config_t cfg;

/* ---- the upstream, faked ------------------------------------------------------
 * One connection (index 0). Like pool.c: a query sent gets an ID on it;
 * detach frees the ID; an answer reaches the query holding that ID only if
 * it is still sent on the connection and the question matches. */

static struct {
	uint32_t by_id[65536]; /* query holding each ID, DP_NONE when free */
	uint16_t next_id;
	int sends, detaches, timeouts;
	bool down; /* dp_pool_send refuses every query */
} up;

int dp_pool_send(dp_shard_t *s, uint32_t qi, int exclude_upstream)
{
	if (up.down)
		return -EHOSTUNREACH;
	dp_query_t *q = &s->q[qi];
	uint16_t id = up.next_id++;
	assert_int_equal(up.by_id[id], DP_NONE);
	up.by_id[id] = qi;
	q->conn = 0;
	q->up_id = id;
	q->state = Q_SENT;
	up.sends++;
	return 0;
}

void dp_pool_detach(dp_shard_t *s, uint32_t qi)
{
	dp_query_t *q = &s->q[qi];
	assert_int_equal(q->conn, 0);
	if (up.by_id[q->up_id] == qi)
		up.by_id[q->up_id] = DP_NONE;
	q->conn = DP_NONE;
	up.detaches++;
}

int dp_pool_send_on(dp_shard_t *s, uint32_t qi, uint32_t ci)
{
	return dp_pool_send(s, qi, -1);
}

void dp_pool_note_timeout(dp_shard_t *s, uint32_t ci)
{
	up.timeouts++;
}

/* One shard in these tests: nothing is handed over. */
int dp_handoff_query(dp_shard_t *s, uint32_t home, const dp_client_t *c, const uint8_t *msg,
		     size_t len)
{
	fail_msg("hand-off with one shard");
	return -EAGAIN;
}

/* ---- the frontends, faked: every answer recorded -------------------------- */

typedef struct answer {
	dp_client_t c;
	size_t len;
	uint8_t msg[512];
} answer_t;

static answer_t ans[128];
static int nans;
static int tcp_begins, tcp_ends;
static fake_t *tcpconns; /* set: T_TCP answers go to this connection table */

static void record(const dp_client_t *c, const uint8_t *msg, size_t len)
{
	assert_true(nans < (int)DP_ARRAY_LEN(ans));
	ans[nans].c = *c;
	ans[nans].len = len;
	if (len)
		memcpy(ans[nans].msg, msg, DP_MIN(len, sizeof(ans[0].msg)));
	nans++;
}

static void fe_answer(dp_shard_t *s, const dp_client_t *c, const uint8_t *msg, size_t len)
{
	assert_ptr_equal(s, &S);
	record(c, msg, len);
	if (c->transport == T_TCP && tcpconns && len)
		dp_tcpconn_answer(&tcpconns->t, c->tcp.idx, c->tcp.gen, msg, len);
}

static void fe_tcp_begin(dp_shard_t *s, const dp_client_t *c)
{
	tcp_begins++;
	if (tcpconns)
		dp_tcpconn_query_begin(&tcpconns->t, c->tcp.idx, c->tcp.gen);
}

static void fe_tcp_end(dp_shard_t *s, const dp_client_t *c)
{
	tcp_ends++;
	if (tcpconns)
		dp_tcpconn_query_end(&tcpconns->t, c->tcp.idx, c->tcp.gen);
}

static const dp_frontend_ops_t udp_fe = { .answer = fe_answer };
static const dp_frontend_ops_t tcp_fe = {
	.answer = fe_answer,
	.query_begin = fe_tcp_begin,
	.query_end = fe_tcp_end,
};
static const dp_frontend_ops_t remote_fe = { .answer = fe_answer };

/* ---- set-up ------------------------------------------------------------------ */

static int setup_shard(uint32_t max_inflight)
{
	memset(&S, 0, sizeof(S));
	dp_config_defaults(&cfg);
	cfg.threads = 1;
	cfg.nupstream = 1;
	cfg.max_inflight = max_inflight;
	cfg.cache_mb = 4;
	S.cfg = &cfg;
	S.nshards = 1;
	S.now_ms = 1000;
	dp_tw_init(&S.timers, S.now_ms);
	if (dp_query_table_init(&S) < 0)
		return -1;
	S.fe[T_UDP] = &udp_fe;
	S.fe[T_TCP] = &tcp_fe;
	S.fe[T_TCP_REMOTE] = &remote_fe;
	memset(&up, 0, sizeof(up));
	memset(up.by_id, 0xff, sizeof(up.by_id));
	up.next_id = 1;
	nans = tcp_begins = tcp_ends = 0;
	tcpconns = NULL;
	return 0;
}

static int setup(void **state)
{
	return setup_shard(1024);
}

static int setup_small(void **state)
{
	return setup_shard(16);
}

static int teardown(void **state)
{
	dp_query_fail_all(&S);
	dp_query_table_free(&S);
	return 0;
}

/* ---- messages and clients ---------------------------------------------------- */

static wire_t w;

/* A query for name/A with RD, into buf. Returns its length. */
static size_t make_query(uint8_t *buf, uint16_t id, const char *name)
{
	put_hdr(&w, id, DP_DNS_F_RD, 1, 0, 0, 0);
	put_name(&w, name);
	put16(&w, 1);
	put16(&w, 1);
	memcpy(buf, w.b, w.n);
	return w.n;
}

/* An upstream answer for name/A: rcode, and one A record when NOERROR. */
static size_t make_answer(uint8_t *buf, uint16_t id, const char *name, unsigned rcode)
{
	put_hdr(&w, id, 0x8000u | DP_DNS_F_RD | DP_DNS_F_RA | rcode, 1, rcode ? 0 : 1, 0, 0);
	put_name(&w, name);
	put16(&w, 1);
	put16(&w, 1);
	if (!rcode) {
		put_name(&w, name);
		put_rr_tail(&w, 1, 1, 300, "\x0a\x00\x00\x01", 4);
	}
	memcpy(buf, w.b, w.n);
	return w.n;
}

static dp_client_t udp_client(const char *ip, uint16_t port)
{
	dp_client_t c;
	memset(&c, 0, sizeof(c));
	struct sockaddr_in *sin = (struct sockaddr_in *)&c.addr;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	c.transport = T_UDP;
	return c;
}

static dp_client_t tcp_client(const char *ip, uint32_t idx, uint32_t gen)
{
	dp_client_t c = udp_client(ip, 53000);
	dp_cshare_key_t k;
	dp_cshare_key_of((const struct sockaddr *)&c.addr, &k);
	memset(&c, 0, sizeof(c));
	c.tcp.key = k;
	c.tcp.idx = idx;
	c.tcp.gen = gen;
	c.transport = T_TCP;
	return c;
}

static int ask(const dp_client_t *c, uint16_t id, const char *name)
{
	uint8_t buf[512];
	size_t n = make_query(buf, id, name);
	return dp_query_from_client(&S, c, buf, n);
}

/* The upstream answers ID id for name. Returns false when the answer
 * reaches no query (dropped, as pool.c drops it). */
static bool upstream_answers(uint16_t id, const char *name, unsigned rcode)
{
	uint32_t qi = up.by_id[id];
	if (qi == DP_NONE)
		return false;
	dp_query_t *q = &S.q[qi];
	if (q->conn != 0 || q->up_id != id || q->state != Q_SENT)
		return false;
	uint8_t buf[512];
	size_t n = make_answer(buf, id, name, rcode);
	dp_dns_answer_t a;
	assert_int_equal(dp_dns_parse_answer_rrs(buf, n, &a), 0);
	if (!dp_dns_question_equal(q->wire, &q->view, buf, &a.v))
		return false;
	dp_query_answer(&S, qi, buf, n, &a, 0);
	return true;
}

/* Answers to the UDP client on port, and the last one. */
static int answers_to_port(uint16_t port, const answer_t **last)
{
	int n = 0;
	for (int i = 0; i < nans; i++) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ans[i].c.addr;
		if (ans[i].c.transport == T_UDP && ntohs(sin->sin_port) == port) {
			n++;
			if (last)
				*last = &ans[i];
		}
	}
	return n;
}

static unsigned rcode_of(const answer_t *a)
{
	return a->msg[3] & 0xf;
}

static uint16_t id_of(const answer_t *a)
{
	return dp_rd16(a->msg);
}

static void advance(uint64_t ms)
{
	S.now_ms += ms;
	dp_tw_run(&S.timers, S.now_ms, &S);
}

/* ---- the tests ----------------------------------------------------------------- */

static void test_coalescing(void **state)
{
	dp_client_t c1 = udp_client("10.0.0.1", 1001), c2 = udp_client("10.0.0.2", 1002),
		    c3 = udp_client("10.0.0.3", 1003);
	assert_int_equal(ask(&c1, 0xa001, "www.example.com"), 0);
	assert_int_equal(ask(&c2, 0xa002, "WWW.Example.COM"), 0);
	assert_int_equal(ask(&c3, 0xa003, "www.example.com"), 0);
	assert_int_equal(up.sends, 1); /* one question upstream */
	assert_int_equal(S.q_used, 3);
	assert_int_equal(S.stats.cache_coalesced, 2);
	assert_int_equal(nans, 0);

	assert_true(upstream_answers(1, "www.example.com", 0));
	assert_int_equal(nans, 3);
	const answer_t *a = NULL;
	assert_int_equal(answers_to_port(1001, &a), 1);
	assert_int_equal(id_of(a), 0xa001);
	assert_int_equal(rcode_of(a), 0);
	assert_int_equal(answers_to_port(1002, &a), 1);
	assert_int_equal(id_of(a), 0xa002);
	assert_memory_equal(a->msg + DP_DNS_HDR_LEN, "\x03WWW\x07" "Example\x03" "COM", 17);
	assert_int_equal(answers_to_port(1003, &a), 1);
	assert_int_equal(id_of(a), 0xa003);
	assert_int_equal(S.q_used, 0);
	assert_int_equal(up.detaches, 1);

	/* The same question again: the cache answers, nothing goes upstream. */
	dp_client_t c4 = udp_client("10.0.0.4", 1004);
	assert_int_equal(ask(&c4, 0xa004, "www.example.com"), 0);
	assert_int_equal(up.sends, 1);
	assert_int_equal(answers_to_port(1004, &a), 1);
	assert_int_equal(id_of(a), 0xa004);
	assert_int_equal(S.stats.cache_hits, 1);
}

static void test_timeout_servfail_once(void **state)
{
	dp_client_t c1 = udp_client("10.0.0.1", 1001), c2 = udp_client("10.0.0.2", 1002);
	dp_client_t t = tcp_client("10.0.0.3", 5, 1);
	assert_int_equal(ask(&c1, 0x1111, "slow.example"), 0);
	advance(500);
	assert_int_equal(ask(&c2, 0x2222, "slow.example"), 0); /* coalesced, later deadline */
	assert_int_equal(ask(&t, 0x3333, "slower.example"), 0);
	assert_int_equal(up.sends, 2);
	assert_int_equal(tcp_begins, 1);

	advance(cfg.timeout_ms - 500 - 1);
	assert_int_equal(nans, 0);
	advance(1); /* the leader's deadline: it and its waiter */
	assert_int_equal(nans, 2);
	const answer_t *a = NULL;
	assert_int_equal(answers_to_port(1001, &a), 1);
	assert_int_equal(rcode_of(a), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(id_of(a), 0x1111);
	assert_int_equal(answers_to_port(1002, &a), 1);
	assert_int_equal(rcode_of(a), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(id_of(a), 0x2222);
	assert_int_equal(up.timeouts, 1);

	advance(500); /* the TCP query's deadline; the waiter's own is gone */
	assert_int_equal(nans, 3);
	assert_int_equal(ans[2].c.transport, T_TCP);
	assert_int_equal(ans[2].c.tcp.idx, 5);
	assert_int_equal(rcode_of(&ans[2]), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(tcp_ends, 1);
	advance(10 * cfg.timeout_ms);
	assert_int_equal(nans, 3);
	assert_int_equal(S.stats.timeouts, 2);
	assert_int_equal(S.q_used, 0);
	/* The answer that comes after all that reaches no one. */
	assert_false(upstream_answers(1, "slow.example", 0));
	assert_int_equal(nans, 3);
}

static void test_late_answer_after_reuse(void **state)
{
	dp_client_t a = udp_client("10.0.0.1", 1001), b = udp_client("10.0.0.2", 1002);
	assert_int_equal(ask(&a, 0x1111, "a.example"), 0);
	uint32_t qi = up.by_id[1];
	uint32_t gen = S.q[qi].gen;
	advance(cfg.timeout_ms);
	assert_int_equal(answers_to_port(1001, NULL), 1);
	assert_int_equal(up.by_id[1], DP_NONE); /* its ID went back */

	/* The slot and, worst case, the upstream ID are reused. */
	up.next_id = 1;
	assert_int_equal(ask(&b, 0x2222, "b.example"), 0);
	assert_int_equal(up.by_id[1], qi);
	assert_int_not_equal(S.q[qi].gen, gen);

	assert_false(upstream_answers(1, "a.example", 0)); /* late: dropped */
	assert_int_equal(answers_to_port(1001, NULL), 1);
	assert_int_equal(answers_to_port(1002, NULL), 0);

	assert_true(upstream_answers(1, "b.example", 0));
	const answer_t *ab = NULL;
	assert_int_equal(answers_to_port(1002, &ab), 1);
	assert_int_equal(id_of(ab), 0x2222);
	assert_int_equal(rcode_of(ab), 0);
	assert_int_equal(answers_to_port(1001, NULL), 1);
	assert_int_equal(S.q_used, 0);
}

static void test_fail_all(void **state)
{
	dp_client_t c1 = udp_client("10.0.0.1", 1001), c2 = udp_client("10.0.0.2", 1002);
	dp_client_t t = tcp_client("10.0.0.3", 3, 7);
	dp_client_t r = tcp_client("10.0.0.4", 9, 2);
	r.transport = T_TCP_REMOTE;
	r.tcp.origin = 1;
	r.arrive_ns = dp_now_ns();
	assert_int_equal(ask(&c1, 1, "x.example"), 0);
	assert_int_equal(ask(&c2, 2, "x.example"), 0);
	assert_int_equal(ask(&t, 3, "y.example"), 0);
	uint8_t buf[512];
	size_t n = make_query(buf, 4, "z.example");
	dp_query_from_shard(&S, &r, buf, n);
	assert_int_equal(up.sends, 3);
	assert_int_equal(S.q_used, 4);

	dp_query_fail_all(&S);
	assert_int_equal(nans, 4);
	assert_int_equal(answers_to_port(1001, NULL), 1);
	assert_int_equal(answers_to_port(1002, NULL), 1);
	int tcp = 0, remote = 0;
	for (int i = 0; i < nans; i++) {
		assert_int_equal(rcode_of(&ans[i]), DP_DNS_RCODE_SERVFAIL);
		tcp += ans[i].c.transport == T_TCP;
		remote += ans[i].c.transport == T_TCP_REMOTE;
	}
	assert_int_equal(tcp, 1);
	assert_int_equal(remote, 1);
	assert_int_equal(tcp_begins, 1);
	assert_int_equal(tcp_ends, 1);
	assert_int_equal(S.q_used, 0);
	assert_int_equal(up.detaches, 3);
	dp_query_fail_all(&S); /* nothing left: nobody answered twice */
	assert_int_equal(nans, 4);
}

/* 16 slots, headroom 2: contended from 14 in use. */
static void test_fair_share(void **state)
{
	char name[32];
	for (int i = 0; i < 12; i++) {
		dp_client_t a = udp_client("10.0.0.1", (uint16_t)(2000 + i));
		snprintf(name, sizeof(name), "a%d.example", i);
		assert_int_equal(ask(&a, (uint16_t)i, name), 0);
	}
	for (int i = 0; i < 2; i++) {
		dp_client_t b = udp_client("10.0.0.2", (uint16_t)(3000 + i));
		snprintf(name, sizeof(name), "b%d.example", i);
		assert_int_equal(ask(&b, (uint16_t)i, name), 0);
	}
	assert_int_equal(S.q_used, 14);
	assert_int_equal(nans, 0);

	/* A is over its share (8 of 16 with two addresses): UDP gets SERVFAIL,
	 * TCP is handed back unanswered, no slot taken, nothing counted. */
	dp_client_t a = udp_client("10.0.0.1", 2100);
	assert_int_equal(ask(&a, 0x100, "a-more.example"), 0);
	const answer_t *r = NULL;
	assert_int_equal(answers_to_port(2100, &r), 1);
	assert_int_equal(rcode_of(r), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(S.stats.fair_refused, 1);
	dp_client_t at = tcp_client("10.0.0.1", 4, 1);
	assert_int_equal(ask(&at, 0x101, "a-tcp.example"), DP_E_FULL);
	assert_int_equal(nans, 1);
	assert_int_equal(tcp_begins, 0);
	assert_int_equal(S.stats.fair_refused, 2);
	assert_int_equal(S.q_used, 14);

	/* B is under its share: admitted up to the full table, then A's
	 * oldest query makes room for it (SERVFAIL to A, once). */
	for (int i = 2; i < 5; i++) {
		dp_client_t b = udp_client("10.0.0.2", (uint16_t)(3000 + i));
		snprintf(name, sizeof(name), "b%d.example", i);
		assert_int_equal(ask(&b, (uint16_t)i, name), 0);
	}
	assert_int_equal(S.q_used, 16);
	assert_int_equal(S.stats.fair_reclaimed, 1);
	assert_int_equal(answers_to_port(2000, &r), 1);
	assert_int_equal(rcode_of(r), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(up.sends, 17);
	assert_int_equal(nans, 2);
}

static void test_handed_over(void **state)
{
	dp_client_t r = tcp_client("10.0.0.9", 77, 5);
	r.transport = T_TCP_REMOTE;
	r.tcp.origin = 3;
	r.arrive_ns = dp_now_ns();
	uint8_t buf[512];
	size_t n = make_query(buf, 0x4242, "far.example");
	dp_query_from_shard(&S, &r, buf, n);
	assert_int_equal(tcp_begins, 0); /* counted on its origin */
	assert_true(upstream_answers(1, "far.example", 0));
	assert_int_equal(nans, 1);
	assert_int_equal(ans[0].c.transport, T_TCP_REMOTE);
	assert_int_equal(ans[0].c.tcp.origin, 3);
	assert_int_equal(ans[0].c.tcp.idx, 77);
	assert_int_equal(ans[0].c.tcp.gen, 5);
	assert_int_equal(id_of(&ans[0]), 0x4242);
	assert_int_equal(tcp_ends, 0);

	/* One that does not parse here still ends on its origin: len 0. */
	dp_query_from_shard(&S, &r, buf, 5);
	assert_int_equal(nans, 2);
	assert_int_equal(ans[1].len, 0);
	assert_int_equal(S.q_used, 0);
}

static void test_no_upstream(void **state)
{
	up.down = true;
	dp_client_t c = udp_client("10.0.0.1", 1001);
	dp_client_t t = tcp_client("10.0.0.2", 1, 1);
	assert_int_equal(ask(&c, 7, "down.example"), 0);
	assert_int_equal(ask(&t, 8, "down2.example"), 0);
	assert_int_equal(nans, 2);
	assert_int_equal(rcode_of(&ans[0]), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(rcode_of(&ans[1]), DP_DNS_RCODE_SERVFAIL);
	assert_int_equal(tcp_begins, 1);
	assert_int_equal(tcp_ends, 1);
	assert_int_equal(S.q_used, 0);
	advance(10 * cfg.timeout_ms);
	assert_int_equal(nans, 2);
}

/* ---- a TCP client gone before its answer ------------------------------------- */

static int frame_to_query(fake_t *f, uint32_t idx, uint32_t gen, uint8_t *msg, size_t len)
{
	dp_client_t c = tcp_client("10.0.0.5", idx, gen);
	return dp_query_from_client(&S, &c, msg, len);
}

static void send_frame(fake_t *f, int fd, uint16_t id, const char *name)
{
	uint8_t buf[514];
	size_t n = make_query(buf + 2, id, name);
	dp_wr16(buf, (uint16_t)n);
	assert_true(fake_recv_done(f, fd, (int)n + 2, true, buf));
}

static void test_tcp_client_gone(void **state)
{
	static fake_t f;
	fake_init(&f, 1, 0);
	f.on_frame = frame_to_query;
	tcpconns = &f;
	int fd = fake_accept(&f);
	assert_true(fd >= 0);
	uint32_t idx = f.fd[fd].idx;
	send_frame(&f, fd, 0x5151, "gone.example");
	assert_int_equal(up.sends, 1);
	assert_int_equal(f.t.c[idx].inflight, 1);

	/* The client resets the connection: it closes, its slot is reused. */
	assert_true(fake_recv_done(&f, fd, -ECONNRESET, false, NULL));
	fake_cancels_done(&f, fd);
	assert_null(fake_conn(&f, fd));
	int fd2 = fake_accept(&f);
	assert_true(fd2 >= 0);
	assert_int_equal(f.fd[fd2].idx, idx);

	/* The answer comes: the query ends, nothing reaches the new client. */
	assert_true(upstream_answers(1, "gone.example", 0));
	assert_int_equal(nans, 1);
	assert_int_equal(tcp_ends, 1);
	assert_int_equal(f.stat[DP_TCPC_ANSWER_DROPPED], 1);
	dp_tcpconn_flush(&f.t);
	assert_false(f.fd[fd2].send);
	assert_int_equal(f.t.c[idx].inflight, 0);
	assert_int_equal(S.q_used, 0);

	/* The new client's own query is answered to it. */
	send_frame(&f, fd2, 0x5252, "here.example");
	assert_true(upstream_answers(2, "here.example", 0));
	dp_tcpconn_flush(&f.t);
	assert_true(f.fd[fd2].send);
	assert_true(fake_send_done(&f, fd2, -1));
	assert_int_equal(f.fd[fd2].rx_len, 2 + ans[1].len);
	assert_int_equal(dp_rd16(f.fd[fd2].rx + 2), 0x5252);
	tcpconns = NULL;
	fake_fini(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_coalescing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_servfail_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_late_answer_after_reuse, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fail_all, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fair_share, setup_small, teardown),
		cmocka_unit_test_setup_teardown(test_handed_over, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_upstream, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tcp_client_gone, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
