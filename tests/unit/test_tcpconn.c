/* test_tcpconn.c - the TCP frontend's state machine over a fake transport:
 * framing across receives, pipelining, answers given inside the frame loop
 * (cache hits) that close the connection, slot reuse, stale completions,
 * EOF, the write queue bound, drain, eviction, and backpressure (hole 3:
 * pause at the per-connection cap or on a fair-share refusal, frames held
 * and dispatched on resume, close, EOF and drain while paused). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "fake_tcp.h"

/* ---- a query layer for the tests ------------------------------------------ */

enum { M_NONE, M_ECHO, M_ASYNC, M_BIG };

typedef struct upper {
	int mode;
	bool refuse; /* refuse every frame (DP_E_FULL: the fair share) */
	int refused; /* frames refused */
	size_t big; /* M_BIG: answer length */
	uint8_t seen[32][64]; /* first octets of each frame */
	size_t seen_len[32];
	uint32_t seen_idx[32], seen_gen[32];
	int n;
} upper_t;

/* Records the frames it takes (seen), in the order taken. */
static int on_frame(fake_t *f, uint32_t idx, uint32_t gen, uint8_t *msg, size_t len)
{
	upper_t *u = f->user;
	if (u->refuse) {
		u->refused++;
		return DP_E_FULL;
	}
	if (u->n < 32) {
		memcpy(u->seen[u->n], msg, DP_MIN(len, 64));
		u->seen_len[u->n] = len;
		u->seen_idx[u->n] = idx;
		u->seen_gen[u->n] = gen;
	}
	u->n++;
	static uint8_t big[65535];
	switch (u->mode) {
	case M_ECHO:
		dp_tcpconn_answer(&f->t, idx, gen, msg, len); /* a cache hit */
		break;
	case M_ASYNC:
		dp_tcpconn_query_begin(&f->t, idx, gen);
		break;
	case M_BIG:
		memset(big, 0xab, u->big);
		memcpy(big, msg, 2);
		dp_tcpconn_answer(&f->t, idx, gen, big, u->big);
		break;
	default:
		break;
	}
	return 0;
}

static fake_t *setup_fake(uint32_t cap, int mode)
{
	fake_t *f = calloc(1, sizeof(*f));
	upper_t *u = calloc(1, sizeof(*u));
	assert_non_null(f);
	assert_non_null(u);
	fake_init(f, cap, 2);
	u->mode = mode;
	f->user = u;
	f->on_frame = on_frame;
	return f;
}

static void teardown_fake(fake_t *f)
{
	fake_fini(f);
	free(f->user);
	free(f);
}

/* A query frame: 2-octet length, then len octets starting with id. */
static size_t frame(uint8_t *out, uint16_t id, size_t len)
{
	dp_wr16(out, (uint16_t)len);
	memset(out + 2, (uint8_t)id, len);
	dp_wr16(out + 2, id);
	return len + 2;
}

/* n frames, ids first..first+n-1, of len octets each, into buf. */
static size_t frames(uint8_t *buf, uint16_t first, int n, size_t len)
{
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += frame(buf + total, (uint16_t)(first + i), len);
	return total;
}

/* The query layer finishes the i-th frame it took (answer, then end);
 * M_ASYNC frames of 20 octets. */
static void finish(fake_t *f, int i)
{
	upper_t *u = f->user;
	dp_tcpconn_answer(&f->t, u->seen_idx[i], u->seen_gen[i], u->seen[i], 20);
	dp_tcpconn_query_end(&f->t, u->seen_idx[i], u->seen_gen[i]);
}

/* A table whose answers are cache hits of big octets each (M_BIG), with a
 * write queue bound of wq_max: the answer that overflows closes. */
static fake_t *setup_big(size_t big, size_t wq_max)
{
	fake_t *f = setup_fake(4, M_BIG);
	upper_t *u = f->user;
	u->big = big;
	f->t.wq_max = wq_max;
	return f;
}

/* Flushes the turn's answers and has the client read all of them: the
 * n octets of queries in buf, each echoed (answered in order, all sent). */
static void assert_all_answered(fake_t *f, int fd, const uint8_t *buf, size_t n)
{
	dp_tcpconn_flush(&f->t);
	assert_true(fake_send_done(f, fd, -1));
	assert_int_equal(f->fd[fd].rx_len, n);
	assert_memory_equal(f->fd[fd].rx, buf, n);
}

/* A new client that sends the n octets of buf, taken in one receive
 * (more to come). Returns its fd. */
static int client_sends(fake_t *f, const uint8_t *buf, size_t n)
{
	int fd = fake_accept(f);
	assert_true(fd >= 0);
	assert_true(fake_recv_done(f, fd, (int)n, true, buf));
	return fd;
}

/* The connection on fd is gone and left nothing behind in the table. */
static void assert_closed_and_freed(fake_t *f, int fd)
{
	assert_false(f->fd[fd].open);
	assert_int_equal(f->t.used, 0);
	assert_int_equal(f->t.buf_bytes, 0);
}

/* ---- tests ---------------------------------------------------------------- */

static void frame_split_byte_by_byte(void **state)
{
	fake_t *f = setup_fake(4, M_NONE);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	assert_true(fd >= 3);
	uint8_t buf[64];
	size_t n = frame(buf, 0x1234, 30);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(u->n, 0);
		assert_true(fake_recv_done(f, fd, 1, true, buf + i));
	}
	assert_int_equal(u->n, 1);
	assert_int_equal(u->seen_len[0], 30);
	assert_memory_equal(u->seen[0], buf + 2, 30);
	assert_int_equal(fake_conn(f, fd)->rbuf.len, 0);
	teardown_fake(f);
}

static void pipelined_frames_one_send(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	uint8_t buf[256];
	size_t n = 0;
	for (int i = 0; i < 5; i++)
		n += frame(buf + n, (uint16_t)i, 20 + (size_t)i);
	/* 4 frames and a half in the first receive, the rest in the second. */
	size_t cut = n - 10;
	assert_true(fake_recv_done(f, fd, (int)cut, true, buf));
	assert_int_equal(u->n, 4);
	assert_true(fake_recv_done(f, fd, (int)(n - cut), true, buf + cut));
	assert_int_equal(u->n, 5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(dp_rd16(u->seen[i]), i);
	/* Answers completed in one turn leave in one send. */
	assert_false(f->fd[fd].send);
	dp_tcpconn_flush(&f->t);
	assert_true(f->fd[fd].send);
	assert_int_equal(f->fd[fd].send_len, n);
	assert_true(fake_send_done(f, fd, -1));
	assert_memory_equal(f->fd[fd].rx, buf, n);
	teardown_fake(f);
}

/* Hole 1: the multishot receive ends (no MORE) with data; the split tail
 * of an earlier receive is in rbuf; a cache hit answered inside the frame
 * loop overflows the write queue and closes the connection. Nothing is in
 * flight any more, yet the connection must not be finalized (its rbuf
 * freed) while the frame loop still runs, and no later frame of it may be
 * handed upward. */
static void answer_closing_inside_frame_loop(void **state)
{
	fake_t *f = setup_big(40000, 100000);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	uint8_t buf[1024];
	size_t n = frames(buf, 0, 10, 40);
	/* First receive: half a frame, kept in rbuf. */
	assert_true(fake_recv_done(f, fd, 21, true, buf));
	assert_int_equal(fake_conn(f, fd)->rbuf.len, 21);
	uint32_t idx = f->fd[fd].idx, gen = fake_conn(f, fd)->gen;
	/* Last receive (no MORE): the rest; the third answer overflows. */
	assert_true(fake_recv_done(f, fd, (int)(n - 21), false, buf + 21));
	assert_int_equal(u->n, 3);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_SLOW], 1);
	/* Closing, its answers never sent; finalized at the turn's flush
	 * (it is on the flush list): fd closed, gen bumped. */
	assert_true(f->t.c[idx].closing);
	assert_true(f->fd[fd].shut);
	dp_tcpconn_flush(&f->t);
	assert_false(f->fd[fd].send);
	assert_null(fake_conn(f, fd));
	assert_int_not_equal(f->t.c[idx].gen, gen);
	assert_closed_and_freed(f, fd);
	teardown_fake(f);
}

/* The same while a send is in flight: the slot waits for it. */
static void close_waits_for_send_in_flight(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	uint8_t buf[64];
	size_t n = frame(buf, 1, 20);
	int fd = client_sends(f, buf, n);
	dp_tcpconn_flush(&f->t);
	assert_true(f->fd[fd].send);
	dp_tcpconn_close(&f->t, f->fd[fd].idx);
	assert_true(f->fd[fd].open); /* receive and send still in flight */
	assert_true(f->fd[fd].cancel_all);
	fake_cancels_done(f, fd);
	assert_false(f->fd[fd].open);
	teardown_fake(f);
}

/* Hole 1: a closed client's partial frame must not be prepended to the
 * next client's stream in the same slot. */
static void slot_reuse_starts_clean(void **state)
{
	fake_t *f = setup_fake(1, M_ECHO);
	upper_t *u = f->user;
	int a = fake_accept(f);
	uint8_t buf[64];
	size_t n = frame(buf, 0xaaaa, 30);
	assert_true(fake_recv_done(f, a, 7, true, buf)); /* partial */
	assert_true(fake_recv_done(f, a, 0, false, NULL)); /* EOF */
	assert_null(fake_conn(f, a));
	int b = fake_accept(f);
	assert_true(b > a);
	assert_int_equal(f->fd[b].idx, f->fd[a].idx); /* same slot */
	dp_tcpc_t *c = fake_conn(f, b);
	assert_int_equal(c->rbuf.len, 0);
	assert_null(c->rbuf.data);
	assert_int_equal(c->wq.fill.len + c->wq.out.len + c->inflight + c->ops, 1); /* its receive */
	n = frame(buf, 0xbbbb, 30);
	assert_true(fake_recv_done(f, b, (int)n, true, buf));
	assert_int_equal(u->n, 1);
	assert_int_equal(dp_rd16(u->seen[0]), 0xbbbb);
	assert_int_equal(u->seen_len[0], 30);
	teardown_fake(f);
}

/* A completion or an answer for an older generation of a reused slot is
 * dropped, and does not disturb the new connection. */
static void stale_completion_for_reused_slot_dropped(void **state)
{
	fake_t *f = setup_fake(1, M_ASYNC);
	upper_t *u = f->user;
	uint8_t buf[64];
	size_t n = frame(buf, 1, 20);
	int a = client_sends(f, buf, n);
	uint32_t idx = u->seen_idx[0], old = u->seen_gen[0];
	dp_tcpconn_close(&f->t, idx);
	fake_cancels_done(f, a);
	int b = fake_accept(f);
	dp_tcpc_t *c = fake_conn(f, b);
	assert_int_equal(f->fd[b].idx, idx);
	uint32_t ops = c->ops;
	dp_tcpconn_on_recv(&f->t, idx, old, (int)n, false, buf);
	dp_tcpconn_on_send(&f->t, idx, old, 10);
	dp_tcpconn_answer(&f->t, idx, old, buf + 2, 20);
	dp_tcpconn_query_end(&f->t, idx, old);
	assert_int_equal(u->n, 1);
	assert_int_equal(c->ops, ops);
	assert_int_equal(c->wq.fill.len, 0);
	assert_int_equal(f->stat[DP_TCPC_ANSWER_DROPPED], 1);
	assert_true(c->quiet);
	teardown_fake(f);
}

static void eof_with_answers_pending(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	uint8_t buf[128];
	size_t n = frame(buf, 1, 20);
	n += frame(buf + n, 2, 20);
	int fd = client_sends(f, buf, n);
	assert_true(fake_recv_done(f, fd, 0, false, NULL));
	dp_tcpc_t *c = fake_conn(f, fd);
	assert_non_null(c);
	assert_true(c->eof);
	assert_int_equal(c->inflight, 2);
	finish(f, 0);
	finish(f, 1);
	assert_non_null(fake_conn(f, fd)); /* answers still to send */
	dp_tcpconn_flush(&f->t);
	assert_true(fake_send_done(f, fd, 10)); /* partial */
	assert_non_null(fake_conn(f, fd));
	assert_true(fake_send_done(f, fd, -1));
	assert_false(f->fd[fd].open);
	assert_int_equal(f->fd[fd].rx_len, n);
	assert_memory_equal(f->fd[fd].rx, buf, n);
	teardown_fake(f);
}

static void write_queue_overflow_closes(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	upper_t *u = f->user;
	f->t.wq_max = 100;
	uint8_t buf[512];
	size_t n = frames(buf, 0, 8, 30);
	int fd = client_sends(f, buf, n);
	/* 3 answers (96 octets) fit, the 4th closes; no frame after it. */
	assert_int_equal(u->n, 4);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_SLOW], 1);
	dp_tcpc_t *c = &f->t.c[f->fd[fd].idx];
	assert_true(c->closing);
	assert_true(f->fd[fd].open); /* its receive is still in flight */
	fake_cancels_done(f, fd);
	dp_tcpconn_flush(&f->t);
	assert_false(f->fd[fd].open);
	teardown_fake(f);
}

/* Answers queued, then the connection closes: the slot is on the flush
 * list and must not be reused (and re-queued) before the flush. */
static void close_with_flush_pending(void **state)
{
	fake_t *f = setup_fake(1, M_ECHO);
	int a = fake_accept(f);
	uint8_t buf[64];
	size_t n = frame(buf, 1, 20);
	assert_true(fake_recv_done(f, a, (int)n, false, buf)); /* receive ends */
	/* Its answer is queued for the flush; the server closes it. */
	dp_tcpconn_close(&f->t, f->fd[a].idx);
	fake_cancels_done(f, a);
	assert_true(f->fd[a].open); /* still on the flush list */
	dp_tcpconn_flush(&f->t);
	assert_false(f->fd[a].open);
	assert_false(f->fd[a].send);
	int b = client_sends(f, buf, n);
	dp_tcpconn_flush(&f->t);
	assert_true(fake_send_done(f, b, -1));
	assert_int_equal(f->fd[b].rx_len, n);
	assert_int_equal(f->t.dirty, DP_NONE);
	teardown_fake(f);
}

/* Drain: receives are cancelled; what sits in the socket is read, answered,
 * and the connection closes. */
static void drain_reads_socket_then_closes(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	uint8_t buf[128];
	size_t n = frame(buf, 1, 20);
	n += frame(buf + n, 2, 20);
	assert_true(fake_recv_done(f, fd, 5, true, buf)); /* partial, in rbuf */
	dp_tcpconn_stop_reading(&f->t);
	assert_true(f->fd[fd].recv_cancel);
	assert_false(dp_tcpconn_reads_done(&f->t));
	fake_sock_put(f, fd, buf + 5, n - 5);
	fake_cancels_done(f, fd);
	assert_true(dp_tcpconn_reads_done(&f->t));
	assert_int_equal(u->n, 2);
	assert_false(dp_tcpconn_idle_output(&f->t));
	dp_tcpconn_flush(&f->t);
	assert_true(fake_send_done(f, fd, -1));
	assert_false(f->fd[fd].open);
	assert_memory_equal(f->fd[fd].rx, buf, n);
	assert_true(dp_tcpconn_idle_output(&f->t));
	teardown_fake(f);
}

/* Drain with a cache hit overflowing the write queue inside the drain
 * read: the connection closes without being freed under the read loop. */
static void drain_answer_overflow_closes_safely(void **state)
{
	fake_t *f = setup_big(30000, 70000);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	static uint8_t buf[64 * 1024];
	size_t n = frames(buf, 0, 500, 40);
	assert_true(fake_recv_done(f, fd, 9, true, buf));
	dp_tcpconn_stop_reading(&f->t);
	fake_sock_put(f, fd, buf + 9, n - 9);
	fake_cancels_done(f, fd);
	assert_int_equal(u->n, 3);
	dp_tcpconn_flush(&f->t);
	assert_false(f->fd[fd].open);
	assert_int_equal(f->t.used, 0);
	teardown_fake(f);
}

/* Hole 7: at the cap, any connection with nothing in flight and nothing to
 * send may be evicted, not only the least recently active one. */
static void eviction_finds_any_quiet_connection(void **state)
{
	fake_t *f = setup_fake(2, M_ASYNC);
	uint8_t buf[64];
	size_t n = frame(buf, 1, 20);
	int busy = client_sends(f, buf, n); /* in flight */
	f->now += 10;
	int quiet = fake_accept(f);
	/* busy is the least recently active, and has a query in flight */
	dp_tcpconns_t *t = &f->t;
	assert_int_equal(t->idle.head, f->fd[busy].idx);
	assert_int_equal(t->quiet.head, f->fd[quiet].idx);
	int newcomer = fake_accept(f);
	assert_true(newcomer > 0);
	assert_int_equal(f->stat[DP_TCPC_EVICTED], 1);
	assert_true(t->c[f->fd[quiet].idx].closing || !f->fd[quiet].open);
	assert_non_null(fake_conn(f, busy));
	/* With every open connection busy, a newcomer is refused. */
	assert_true(fake_recv_done(f, newcomer, (int)n, true, buf));
	assert_int_equal(fake_accept(f), -1);
	assert_int_equal(f->stat[DP_TCPC_REFUSED], 1);
	teardown_fake(f);
}

static void pause_and_resume(void **state)
{
	fake_t *f = setup_fake(4, M_NONE);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	dp_tcpc_t *c = fake_conn(f, fd);
	dp_tcpconn_pause(&f->t, f->fd[fd].idx, c->gen);
	assert_true(f->fd[fd].recv_cancel);
	fake_cancels_done(f, fd);
	assert_false(f->fd[fd].recv);
	assert_non_null(fake_conn(f, fd)); /* paused, not closed */
	dp_tcpconn_resume(&f->t, f->fd[fd].idx, c->gen);
	assert_false(f->fd[fd].recv); /* not from here: at the loop's safe point */
	dp_tcpconn_resume_pending(&f->t);
	assert_true(f->fd[fd].recv);
	uint8_t buf[64];
	size_t n = frame(buf, 7, 20);
	assert_true(fake_recv_done(f, fd, (int)n, true, buf));
	assert_int_equal(u->n, 1);
	teardown_fake(f);
}

/* ---- hole 3: backpressure ------------------------------------------------- */

/* At --max-inflight-per-conn the connection is no longer read: its receive
 * is cancelled and the frames it sent already wait, in order, none dropped;
 * as its queries end, they are dispatched (at the loop's safe point, not
 * from inside the query's end), and reading starts again once they are
 * all out. */
static void hole3_pause_at_cap_holds_frames_until_queries_end(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	upper_t *u = f->user;
	f->t.inflight_max = 2;
	uint8_t buf[256];
	size_t n = frames(buf, 0, 5, 20);
	int fd = client_sends(f, buf, n);
	dp_tcpc_t *c = fake_conn(f, fd);
	assert_int_equal(u->n, 2);
	assert_true(c->paused);
	assert_false(c->quiet);
	assert_int_equal(f->stat[DP_TCPC_PAUSED], 1);
	assert_int_equal(f->stat[DP_TCPC_QUERY], 2);
	assert_true(f->fd[fd].recv_cancel);
	assert_int_equal(c->rbuf.len, 3 * 22); /* three frames held */
	fake_cancels_done(f, fd);
	assert_false(f->fd[fd].recv); /* not re-armed while paused */

	finish(f, 0);
	assert_int_equal(u->n, 2); /* queued, not dispatched from the query's end */
	dp_tcpconn_resume_pending(&f->t);
	assert_int_equal(u->n, 3); /* one frame: at the cap again */
	assert_true(c->paused);
	assert_false(f->fd[fd].recv);
	finish(f, 1);
	finish(f, 2);
	dp_tcpconn_resume_pending(&f->t);
	assert_int_equal(u->n, 5);
	assert_false(c->paused);
	assert_int_equal(c->rbuf.len, 0);
	assert_true(f->fd[fd].recv); /* every held frame out: read again */
	for (int i = 0; i < 5; i++)
		assert_int_equal(dp_rd16(u->seen[i]), i);
	finish(f, 3);
	finish(f, 4);
	assert_all_answered(f, fd, buf, n);
	teardown_fake(f);
}

/* A frame the query layer refuses (DP_E_FULL: the client's fair share) is
 * kept with the rest and offered again when a slot frees: first come,
 * first served, one try per slot freed; one refused again goes to the
 * back of the line. Slots freed while no one waits are no credit. */
static void hole3_refused_frame_waits_for_freed_slot(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	upper_t *u = f->user;
	int a = fake_accept(f), b = fake_accept(f);
	uint8_t buf[256];
	size_t na = frames(buf, 0x10, 2, 20);
	u->refuse = true;
	assert_true(fake_recv_done(f, a, (int)na, true, buf));
	size_t nb = frames(buf + na, 0x20, 1, 20);
	assert_true(fake_recv_done(f, b, (int)nb, true, buf + na));
	assert_int_equal(u->refused, 2);
	assert_int_equal(u->n, 0);
	assert_int_equal(f->t.share_wait.count, 2);
	assert_int_equal(f->t.share_wait.head, f->fd[a].idx);
	assert_int_equal(fake_conn(f, a)->rbuf.len, na);
	assert_int_equal(f->stat[DP_TCPC_QUERY], 0);
	fake_cancels_done(f, a);
	fake_cancels_done(f, b);

	dp_tcpconn_resume_pending(&f->t); /* nothing freed: nothing tried */
	assert_int_equal(u->refused, 2);
	f->freed = 1;
	dp_tcpconn_resume_pending(&f->t); /* a's try: refused again */
	assert_int_equal(u->refused, 3);
	assert_int_equal(f->t.share_wait.head, f->fd[b].idx);
	assert_int_equal(f->freed, 0);
	u->refuse = false;
	f->freed = 1;
	dp_tcpconn_resume_pending(&f->t); /* b's try */
	assert_int_equal(u->n, 1);
	assert_int_equal(dp_rd16(u->seen[0]), 0x20);
	assert_false(fake_conn(f, b)->paused);
	assert_true(f->fd[b].recv);
	assert_true(fake_conn(f, a)->paused);
	f->freed = 1;
	dp_tcpconn_resume_pending(&f->t); /* a's turn again: both its frames */
	assert_int_equal(u->n, 3);
	assert_int_equal(dp_rd16(u->seen[1]), 0x10);
	assert_int_equal(dp_rd16(u->seen[2]), 0x11);
	assert_int_equal(f->t.share_wait.count, 0);
	assert_true(f->fd[a].recv);
	assert_int_equal(f->stat[DP_TCPC_QUERY], 3);
	teardown_fake(f);
}

/* Held frames are dispatched with the connection held: an answer given
 * inside the dispatch (a cache hit) that overflows the write queue closes
 * the connection, which has no operation in flight, but it is finalized
 * only after the dispatch is done with its buffer, and no frame after the
 * close is handed upward. */
static void hole3_answer_closing_inside_resume(void **state)
{
	fake_t *f = setup_big(40000, 100000);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	uint8_t buf[512];
	size_t n = frames(buf, 0, 8, 20);
	u->refuse = true;
	assert_true(fake_recv_done(f, fd, (int)n, false, buf)); /* the receive ends */
	dp_tcpc_t *c = fake_conn(f, fd);
	assert_true(c->paused);
	assert_int_equal(c->ops, 0);
	u->refuse = false;
	f->freed = 1;
	dp_tcpconn_resume_pending(&f->t);
	assert_int_equal(u->n, 3); /* the third answer overflows */
	assert_int_equal(f->stat[DP_TCPC_CLOSED_SLOW], 1);
	assert_true(f->fd[fd].shut);
	dp_tcpconn_flush(&f->t);
	assert_closed_and_freed(f, fd);
	teardown_fake(f);
}

/* Closed while paused: it leaves the wait lists, its held frames go with
 * it, and nothing of it is dispatched afterwards. */
static void hole3_close_while_paused(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	upper_t *u = f->user;
	f->t.inflight_max = 1;
	int a = fake_accept(f), b = fake_accept(f);
	uint8_t buf[256];
	size_t n = frames(buf, 0, 3, 20);
	assert_true(fake_recv_done(f, a, (int)n, true, buf)); /* 1 taken, 2 held */
	u->refuse = true;
	assert_true(fake_recv_done(f, b, (int)n, true, buf)); /* refused, held */
	u->refuse = false;
	finish(f, 0); /* a is queued for resumption */
	assert_int_equal(f->t.resume.count, 1);
	assert_int_equal(f->t.share_wait.count, 1);
	dp_tcpconn_close(&f->t, f->fd[a].idx);
	dp_tcpconn_close(&f->t, f->fd[b].idx);
	assert_int_equal(f->t.resume.count, 0);
	assert_int_equal(f->t.share_wait.count, 0);
	fake_cancels_done(f, a);
	fake_cancels_done(f, b);
	dp_tcpconn_flush(&f->t);
	assert_false(f->fd[a].open);
	assert_false(f->fd[b].open);
	f->freed = 4;
	dp_tcpconn_resume_pending(&f->t);
	assert_int_equal(u->n, 1);
	assert_int_equal(f->t.used, 0);
	assert_int_equal(f->t.buf_bytes, 0);
	teardown_fake(f);
}

/* A paused connection is busy: it holds queries not yet read. It is not
 * closed as idle, nor evicted for a newcomer (which is refused instead). */
static void hole3_paused_connection_is_busy(void **state)
{
	fake_t *f = setup_fake(1, M_ASYNC);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	uint8_t buf[64];
	size_t n = frames(buf, 0, 1, 20);
	u->refuse = true;
	assert_true(fake_recv_done(f, fd, (int)n, true, buf));
	dp_tcpc_t *c = fake_conn(f, fd);
	assert_true(c->paused);
	assert_int_equal(c->inflight, 0);
	f->now += 60000;
	dp_tcpconn_expire(&f->t, 1000);
	assert_false(c->closing);
	assert_int_equal(fake_accept(f), -1);
	assert_int_equal(f->stat[DP_TCPC_REFUSED], 1);
	assert_int_equal(f->stat[DP_TCPC_EVICTED], 0);
	assert_non_null(fake_conn(f, fd));
	teardown_fake(f);
}

/* Chaos seed 1203: under a storm of pipelining clients, a client's receive
 * waited in the kernel for seconds (woken behind the flood, or ended with
 * -ENOBUFS and armed again) while its queries sat in its socket; idle
 * expiry, which counts only the frames we have read, reset it with all of
 * them unanswered. Octets waiting in the socket make a connection busy;
 * once they are read and answered, the idle timeout applies again. */
static void idle_expiry_spares_unread_socket(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	upper_t *u = f->user;
	int fd = fake_accept(f);
	uint8_t buf[128];
	size_t n = frame(buf, 1, 20);
	n += frame(buf + n, 2, 30);
	/* A split client: its first octets were read, the rest is in the
	 * socket, and the receive (armed) has not completed. */
	assert_true(fake_recv_done(f, fd, 7, true, buf));
	fake_sock_put(f, fd, buf + 7, n - 7);
	dp_tcpc_t *c = fake_conn(f, fd);
	f->now += 60000;
	dp_tcpconn_expire(&f->t, 2000);
	assert_false(c->closing);
	/* A tick later the octets are still unread: the shard is behind. */
	f->now += 100;
	dp_tcpconn_expire(&f->t, 2000);
	assert_false(c->closing);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_IDLE], 0);
	assert_true(f->fd[fd].recv);
	/* The receive completes at last: both queries are answered. */
	f->fd[fd].sock_off = f->fd[fd].sock_len;
	assert_true(fake_recv_done(f, fd, (int)(n - 7), true, buf + 7));
	assert_int_equal(u->n, 2);
	assert_all_answered(f, fd, buf, n);
	/* Nothing left anywhere: idle again, and closed as such. */
	f->now += 60000;
	dp_tcpconn_expire(&f->t, 2000);
	assert_true(c->closing);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_IDLE], 1);
	teardown_fake(f);
}

/* test_hostile's storm under ASan: a client trickling one octet of a frame
 * every 200 ms was closed 6 s after its idle timeout of 2 s. An octet that
 * landed just before the idle look sat unread (the receive takes it at the
 * next enter) and bought a whole idle period. Now unread octets buy one
 * tick; read by then and still no frame, the connection is idle. */
static void idle_trickle_gets_one_tick(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	int fd = fake_accept(f);
	uint8_t buf[128];
	size_t n = frame(buf, 1, 40);
	assert_true(fake_recv_done(f, fd, 3, true, buf)); /* part of a frame */
	fake_sock_put(f, fd, buf + 3, 1); /* the next octet, not yet received */
	dp_tcpc_t *c = fake_conn(f, fd);
	f->now += 2000;
	dp_tcpconn_expire(&f->t, 2000);
	assert_false(c->closing);
	/* The receive takes the octet: still no complete frame. */
	f->fd[fd].sock_off = f->fd[fd].sock_len;
	assert_true(fake_recv_done(f, fd, 1, true, buf + 3));
	f->now += 100;
	dp_tcpconn_expire(&f->t, 2000);
	assert_true(c->closing);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_IDLE], 1);
	(void)n;
	teardown_fake(f);
}

/* Chaos seed 1203, after the fix above: a reading client whose query was
 * answered 1.5 s after it came (an upstream timeout) was closed as idle
 * 0.5 s after the answer with a 2 s idle timeout, its next query (sent
 * after a short pause) lost. The idle period starts when the connection
 * stops being busy: its last answer sent. */
static void idle_timeout_counts_from_last_answer(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	uint8_t buf[64];
	size_t n = frame(buf, 7, 20);
	int fd = client_sends(f, buf, n);
	dp_tcpc_t *c = fake_conn(f, fd);
	assert_int_equal(c->inflight, 1);
	f->now += 1500; /* answered at its deadline */
	finish(f, 0);
	dp_tcpconn_flush(&f->t);
	f->now += 10;
	assert_true(fake_send_done(f, fd, -1));
	f->now += 600; /* 2.1 s after the query, 0.6 s after the answer */
	dp_tcpconn_expire(&f->t, 2000);
	assert_false(c->closing);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_IDLE], 0);
	f->now += 1400; /* a full idle period after the answer */
	dp_tcpconn_expire(&f->t, 2000);
	assert_true(c->closing);
	assert_int_equal(f->stat[DP_TCPC_CLOSED_IDLE], 1);
	teardown_fake(f);
}

/* Chaos seed 10, after the fixes above: a reading client was reset as
 * "slow" (answers not moving for an idle period) while it had read them:
 * the completion of our send waited in the kernel behind the flood. Slow
 * is a client that leaves our octets in its socket; one that took them is
 * busy. */
static void slow_close_needs_unread_answers(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	uint8_t buf[64];
	size_t n = frame(buf, 3, 20);
	int fds[2];
	for (int i = 0; i < 2; i++)
		fds[i] = client_sends(f, buf, n);
	dp_tcpconn_flush(&f->t);
	assert_true(f->fd[fds[0]].send && f->fd[fds[1]].send);
	f->fd[fds[0]].taken = true; /* read by its client; completion late */
	f->now += 60000;
	dp_tcpconn_expire(&f->t, 2000);
	assert_false(fake_conn(f, fds[0])->closing);
	assert_true(fake_conn(f, fds[1])->closing); /* its client does not read */
	assert_int_equal(f->stat[DP_TCPC_CLOSED_SLOW], 1);
	assert_true(fake_send_done(f, fds[0], -1));
	assert_int_equal(f->fd[fds[0]].rx_len, n);
	assert_true(fake_send_done(f, fds[1], -1));
	teardown_fake(f);
}

/* The client shuts its side while paused: its held frames are still
 * answered, then the connection closes. */
static void hole3_eof_while_paused_answers_held_frames(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	upper_t *u = f->user;
	f->t.inflight_max = 1;
	uint8_t buf[256];
	size_t n = frames(buf, 0, 3, 20);
	int fd = client_sends(f, buf, n);
	assert_true(fake_recv_done(f, fd, 0, false, NULL)); /* EOF */
	for (int i = 0; i < 3; i++) {
		assert_non_null(fake_conn(f, fd));
		finish(f, i);
		dp_tcpconn_resume_pending(&f->t);
	}
	assert_int_equal(u->n, 3);
	assert_all_answered(f, fd, buf, n);
	assert_false(f->fd[fd].open);
	teardown_fake(f);
}

/* Drain (SIGTERM) with a connection paused at its cap: the table is not
 * drained while it is paused; as its queries end its held frames are
 * dispatched, then what sits in its socket is read (pausing again at the
 * cap as needed), every query is answered, and it closes. */
static void hole3_drain_answers_paused_connection(void **state)
{
	fake_t *f = setup_fake(4, M_ASYNC);
	upper_t *u = f->user;
	f->t.inflight_max = 2;
	int fd = fake_accept(f);
	uint8_t buf[512];
	size_t n = frames(buf, 0, 8, 20);
	assert_true(fake_recv_done(f, fd, 4 * 22, true, buf)); /* 2 taken, 2 held */
	fake_cancels_done(f, fd);
	dp_tcpconn_stop_reading(&f->t);
	fake_sock_put(f, fd, buf + 4 * 22, n - 4 * 22); /* 4 more in the socket */
	assert_false(dp_tcpconn_reads_done(&f->t));
	for (int i = 0; i < 8 && u->n > i; i++) {
		if (u->n < 8) /* frames held, or in the socket */
			assert_false(dp_tcpconn_reads_done(&f->t));
		finish(f, i);
		dp_tcpconn_resume_pending(&f->t);
	}
	assert_int_equal(u->n, 8);
	for (int i = 0; i < 8; i++)
		assert_int_equal(dp_rd16(u->seen[i]), i);
	assert_true(dp_tcpconn_reads_done(&f->t));
	assert_all_answered(f, fd, buf, n);
	assert_false(f->fd[fd].open);
	teardown_fake(f);
}

static void malformed_frames_close(void **state)
{
	fake_t *f = setup_fake(4, M_ECHO);
	upper_t *u = f->user;
	int a = fake_accept(f), b = fake_accept(f);
	uint8_t zero[4] = { 0, 0, 0, 0 }, shortf[6] = { 0, 3, 1, 2, 3, 0 };
	assert_true(fake_recv_done(f, a, 4, true, zero));
	assert_true(fake_recv_done(f, b, 6, true, shortf));
	assert_int_equal(u->n, 0);
	assert_int_equal(f->stat[DP_TCPC_DROPPED], 1);
	assert_true(f->t.c[f->fd[a].idx].closing);
	assert_true(f->t.c[f->fd[b].idx].closing);
	teardown_fake(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(frame_split_byte_by_byte),
		cmocka_unit_test(pipelined_frames_one_send),
		cmocka_unit_test(answer_closing_inside_frame_loop),
		cmocka_unit_test(close_waits_for_send_in_flight),
		cmocka_unit_test(slot_reuse_starts_clean),
		cmocka_unit_test(stale_completion_for_reused_slot_dropped),
		cmocka_unit_test(eof_with_answers_pending),
		cmocka_unit_test(write_queue_overflow_closes),
		cmocka_unit_test(close_with_flush_pending),
		cmocka_unit_test(drain_reads_socket_then_closes),
		cmocka_unit_test(drain_answer_overflow_closes_safely),
		cmocka_unit_test(eviction_finds_any_quiet_connection),
		cmocka_unit_test(pause_and_resume),
		cmocka_unit_test(hole3_pause_at_cap_holds_frames_until_queries_end),
		cmocka_unit_test(hole3_refused_frame_waits_for_freed_slot),
		cmocka_unit_test(hole3_answer_closing_inside_resume),
		cmocka_unit_test(hole3_close_while_paused),
		cmocka_unit_test(hole3_paused_connection_is_busy),
		cmocka_unit_test(hole3_eof_while_paused_answers_held_frames),
		cmocka_unit_test(hole3_drain_answers_paused_connection),
		cmocka_unit_test(malformed_frames_close),
		cmocka_unit_test(idle_expiry_spares_unread_socket),
		cmocka_unit_test(idle_trickle_gets_one_tick),
		cmocka_unit_test(idle_timeout_counts_from_last_answer),
		cmocka_unit_test(slow_close_needs_unread_answers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
