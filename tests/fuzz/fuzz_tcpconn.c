/* fuzz_tcpconn.c - the TCP frontend's state machine (core/tcpconn.c) over
 * the fake transport (tests/unit/fake_tcp.h). The input is a program: each
 * byte picks an event (a client connects; a receive completes with N bytes,
 * with or without MORE, with EOF or an error; a send completes fully,
 * partly or with an error; the server closes one; cancellations complete;
 * an answer comes back; time passes; drain; pause/resume; a stale
 * completion; the query table becomes contended or not; slots free; a
 * reload changes the per-connection cap) and the next bytes its arguments.
 * Clients send well-formed frames (sometimes malformed ones) whose content
 * tells the query layer what to do: answer at once from inside the frame
 * loop (a cache hit, small or large enough to overflow the write queue),
 * answer later, or not at all; while the table is contended, a query that
 * needs a slot is refused (DP_E_FULL, the fair share) and must come back.
 * The end of a loop turn resumes what is queued, then flushes, as the
 * shard does.
 *
 * Checked, besides ASan/UBSan: the fake's rules (no slot finalized with an
 * operation in flight, no frame for a connection gone, closing or paused),
 * every frame reaches the query layer under the connection of the client
 * that sent it, in the order sent, none skipped (a refused one comes back
 * next), every answer a client receives is its own, and the lists and
 * counters of the table stay consistent.
 *
 * Seeds (corpus/tcpconn/) are a few short hand-written programs: one
 * client, pipelining and drain, a frame split over the receive's end, a
 * burst of accepts over the cap, backpressure (refusals, the cap, resume).
 */
#include "../unit/fake_tcp.h"

#define CHECK(x) FAKE_CHECK(x, #x)
#define CLIENTS 8
#define PENDING 64

typedef struct client {
	int fd; /* 0: none */
	uint16_t seq;
	uint8_t out[2 + 12 + 255]; /* the frame being sent */
	size_t out_len, out_off;
	uint16_t expect; /* seq of the next frame the query layer must see */
	size_t rx_seen; /* octets of f->fd[fd].rx checked */
} client_t;

typedef struct pending {
	uint32_t idx, gen;
	uint16_t id;
	uint32_t uid;
} pending_t;

typedef struct world {
	fake_t f;
	const uint8_t *p;
	size_t n;
	client_t cl[CLIENTS];
	pending_t pend[PENDING];
	int npend;
	bool contended; /* queries that need a slot are refused (DP_E_FULL) */
	uint8_t answer[16 * 1024];
} world_t;

static uint8_t next(world_t *w)
{
	if (w->n == 0)
		return 0;
	w->n--;
	return *w->p++;
}

/* The next frame client k sends: id, action, size, its uid (fd), filler;
 * now and then a malformed one (zero length, or too short for DNS). */
static void make_frame(world_t *w, client_t *c)
{
	uint8_t kind = next(w);
	if (kind == 0xff) {
		c->out[0] = c->out[1] = 0;
		c->out_len = 2;
	} else if (kind == 0xfe) {
		dp_wr16(c->out, 3);
		memset(c->out + 2, 0, 3);
		c->out_len = 5;
	} else {
		size_t len = 12 + (next(w) & 0x7f);
		dp_wr16(c->out, (uint16_t)len);
		dp_wr16(c->out + 2, c->seq++);
		c->out[4] = kind; /* action */
		c->out[5] = next(w); /* answer size */
		uint32_t uid = (uint32_t)c->fd;
		memcpy(c->out + 6, &uid, 4);
		memset(c->out + 10, 0x5a, len - 8);
		c->out_len = 2 + len;
	}
	c->out_off = 0;
}

static size_t gen_bytes(world_t *w, client_t *c, uint8_t *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		if (c->out_off == c->out_len)
			make_frame(w, c);
		size_t k = DP_MIN(n - got, c->out_len - c->out_off);
		memcpy(buf + got, c->out + c->out_off, k);
		c->out_off += k;
		got += k;
	}
	return got;
}

/* The next n octets of client c's stream: first what sits in its socket
 * (put there at drain), then new frames. */
static void sent(world_t *w, client_t *c, uint8_t *buf, size_t n)
{
	fake_fd_t *d = &w->f.fd[c->fd];
	size_t k = DP_MIN(n, d->sock_len - d->sock_off);
	if (k) {
		memcpy(buf, d->sock + d->sock_off, k);
		d->sock_off += k;
	}
	gen_bytes(w, c, buf + k, n - k);
}

static void answer(world_t *w, uint32_t idx, uint32_t gen, uint16_t id, uint32_t uid,
		   size_t len)
{
	dp_wr16(w->answer, id);
	memcpy(w->answer + 2, &uid, 4);
	memset(w->answer + 6, 0xa5, len - 6);
	dp_tcpconn_answer(&w->f.t, idx, gen, w->answer, len);
}

static client_t *client_of(world_t *w, uint32_t uid)
{
	for (int k = 0; k < CLIENTS; k++)
		if (w->cl[k].fd == (int)uid)
			return &w->cl[k];
	return NULL;
}

/* The query layer: the frame must be from the client on that slot, and the
 * next one it sent. */
static int on_frame(fake_t *f, uint32_t idx, uint32_t gen, uint8_t *msg, size_t len)
{
	world_t *w = f->user;
	CHECK(len >= 12);
	uint32_t uid;
	memcpy(&uid, msg + 4, 4);
	CHECK(uid == (uint32_t)f->t.c[idx].fd);
	CHECK(f->fd[uid].idx == idx);
	uint16_t id = dp_rd16(msg);
	client_t *c = client_of(w, uid);
	CHECK(c && id == c->expect);
	if ((msg[2] & 3) == 0 && w->contended)
		return DP_E_FULL; /* at its fair share: offered again later */
	c->expect++;
	switch (msg[2] & 3) {
	case 0: /* a miss: answered later */
		if (w->npend < PENDING) {
			dp_tcpconn_query_begin(&f->t, idx, gen);
			w->pend[w->npend++] = (pending_t){ idx, gen, id, uid };
			break;
		}
		/* fall through */
	case 1: /* a cache hit */
		answer(w, idx, gen, id, uid, 12 + (msg[3] & 0x3f));
		break;
	case 2: /* a large cache hit */
		answer(w, idx, gen, id, uid, 12 + (size_t)msg[3] * 48);
		break;
	default: /* dropped (rate limited) */
		break;
	}
	return 0;
}

/* What client k received are whole answers of its own, in frames. */
static void check_rx(world_t *w, client_t *c)
{
	fake_fd_t *d = &w->f.fd[c->fd];
	while (d->rx_len - c->rx_seen >= 2) {
		size_t len = dp_rd16(d->rx + c->rx_seen);
		if (d->rx_len - c->rx_seen - 2 < len)
			break;
		uint32_t uid;
		CHECK(len >= 6);
		memcpy(&uid, d->rx + c->rx_seen + 4, 4);
		CHECK(uid == (uint32_t)c->fd);
		c->rx_seen += 2 + len;
	}
}

static fake_fd_t *fd_of(dp_tcpconns_t *t, const dp_tcpc_t *c)
{
	return &((fake_t *)t->ctx)->fd[c->fd];
}

/* Lists and counters agree with the slots. */
static void check_table(dp_tcpconns_t *t)
{
	uint32_t open = 0, closing = 0, quiet = 0, share = 0, resume = 0;
	bool reading = false, output = false;
	for (uint32_t i = 0; i < t->hiwater; i++) {
		dp_tcpc_t *c = &t->c[i];
		if (!c->used)
			continue;
		CHECK(c->hold == 0);
		if (c->closing) {
			closing++;
			CHECK(c->ops > 0 || c->dirty);
			CHECK(c->wait == DP_TCPC_W_NONE);
			continue;
		}
		open++;
		reading |= c->recv_armed || c->paused;
		output |= c->wq.inflight || c->wq.fill.len || c->dirty;
		bool q = c->inflight == 0 && !c->wq.inflight && c->wq.fill.len == 0 && !c->paused;
		CHECK(q == c->quiet);
		CHECK(c->wait == DP_TCPC_W_NONE || c->paused);
		share += c->wait == DP_TCPC_W_SHARE;
		resume += c->wait == DP_TCPC_W_RESUME;
		/* Paused, its receive is not re-armed, and one still running was
		 * asked to stop. */
		CHECK(!c->paused || !c->recv_armed || fd_of(t, c)->recv_cancel);
		quiet += q;
		CHECK(c->ops == (uint32_t)c->recv_armed + (uint32_t)c->wq.inflight);
	}
	CHECK(t->used == open + closing && t->closing == closing);
	CHECK(t->idle.count == open && t->quiet.count == quiet);
	CHECK(t->share_wait.count == share && t->resume.count == resume);
	CHECK(open <= t->cap);
	CHECK(dp_tcpconn_reads_done(t) == !reading);
	CHECK(dp_tcpconn_idle_output(t) == !output);
	uint32_t n = 0;
	for (uint32_t i = t->quiet.head; i != DP_NONE; i = t->c[i].qlink.next, n++)
		CHECK(n < quiet && t->c[i].quiet);
	n = 0;
	for (uint32_t i = t->dirty; i != DP_NONE; i = t->c[i].dirty_next, n++)
		CHECK(n < t->hiwater && t->c[i].dirty);
	n = 0;
	for (uint32_t i = t->share_wait.head; i != DP_NONE; i = t->c[i].wlink.next, n++)
		CHECK(n < share && t->c[i].wait == DP_TCPC_W_SHARE);
	n = 0;
	for (uint32_t i = t->resume.head; i != DP_NONE; i = t->c[i].wlink.next, n++)
		CHECK(n < resume && t->c[i].wait == DP_TCPC_W_RESUME);
}

static client_t *pick(world_t *w)
{
	client_t *c = &w->cl[next(w) % CLIENTS];
	return c->fd && fake_conn(&w->f, c->fd) ? c : NULL;
}

static void step(world_t *w, uint8_t op)
{
	fake_t *f = &w->f;
	static uint8_t buf[8192];
	client_t *c;
	switch (op % 20) {
	case 0: { /* a client connects (in a free or dead client place) */
		c = &w->cl[next(w) % CLIENTS];
		if (c->fd && fake_conn(f, c->fd))
			break;
		memset(c, 0, sizeof(*c));
		int fd = fake_accept(f);
		c->fd = fd > 0 ? fd : 0;
		break;
	}
	case 1: /* data, more to come */
	case 2: /* data, the receive ends */
	case 3: /* a large chunk */
		if ((c = pick(w)) && f->fd[c->fd].recv) {
			size_t len = op % 20 == 3 ? 256 + (size_t)next(w) * 30 : 1 + next(w);
			sent(w, c, buf, len);
			fake_recv_done(f, c->fd, (int)len, op % 20 != 2, buf);
		}
		break;
	case 4: /* EOF */
		if ((c = pick(w)))
			fake_recv_done(f, c->fd, 0, false, NULL);
		break;
	case 5: /* receive error, or out of provided buffers */
		if ((c = pick(w))) {
			uint8_t e = next(w);
			fake_recv_done(f, c->fd, e & 1 ? -ENOBUFS : -ECONNRESET, e & 2, NULL);
		}
		break;
	case 6: /* send done */
		if ((c = pick(w)) && fake_send_done(f, c->fd, -1))
			check_rx(w, c);
		break;
	case 7: /* send done in part */
		if ((c = pick(w)) && f->fd[c->fd].send) {
			long part = 1 + (long)(next(w) % f->fd[c->fd].send_len);
			fake_send_done(f, c->fd, part);
			check_rx(w, c);
		}
		break;
	case 8: /* send failed */
		if ((c = pick(w)))
			fake_send_done(f, c->fd, -EPIPE);
		break;
	case 9: /* the server closes it */
		if ((c = pick(w)))
			dp_tcpconn_close(&f->t, f->fd[c->fd].idx);
		break;
	case 10: /* end of a loop turn: resumptions, then sends */
		dp_tcpconn_resume_pending(&f->t);
		CHECK(f->t.resume.count == 0);
		CHECK(f->freed == 0 || f->t.share_wait.count == 0);
		dp_tcpconn_flush(&f->t);
		break;
	case 11: { /* cancellations complete */
		client_t *k = &w->cl[next(w) % CLIENTS];
		if (k->fd && f->fd[k->fd].open)
			fake_cancels_done(f, k->fd);
		break;
	}
	case 12: /* an answer from upstream (or a SERVFAIL at its deadline) */
		if (w->npend) {
			int i = next(w) % w->npend;
			pending_t p = w->pend[i];
			w->pend[i] = w->pend[--w->npend];
			answer(w, p.idx, p.gen, p.id, p.uid, 12 + next(w));
			dp_tcpconn_query_end(&f->t, p.idx, p.gen);
			f->freed++;
		}
		break;
	case 13: /* time passes */
		f->now += (uint64_t)next(w) * 20;
		dp_tcpconn_expire(&f->t, 1000);
		break;
	case 14: /* drain: stop reading; clients have sent more */
		if (!f->t.reads_stopped) {
			for (int k = 0; k < CLIENTS; k++) {
				client_t *d = &w->cl[k];
				if (!d->fd || !fake_conn(f, d->fd))
					continue;
				size_t len = (size_t)next(w) * 24;
				gen_bytes(w, d, buf, len);
				fake_sock_put(f, d->fd, buf, len);
			}
			dp_tcpconn_stop_reading(&f->t);
		}
		break;
	case 15: /* backpressure */
		if ((c = pick(w))) {
			dp_tcpc_t *k = fake_conn(f, c->fd);
			if (k->paused)
				dp_tcpconn_resume(&f->t, f->fd[c->fd].idx, k->gen);
			else
				dp_tcpconn_pause(&f->t, f->fd[c->fd].idx, k->gen);
		}
		break;
	case 16: { /* a stale completion for a free slot's previous generation
		   * (a reused slot's is in tests/unit/test_tcpconn.c: io_uring
		   * cannot produce one, its slot waits for every completion) */
		uint32_t idx = next(w) % (f->t.hiwater ? f->t.hiwater : 1);
		if (idx < f->t.hiwater && !f->t.c[idx].used && f->t.c[idx].gen > 0) {
			uint32_t gen = f->t.c[idx].gen - 1;
			client_t scratch = { 0 };
			gen_bytes(w, &scratch, buf, 16);
			dp_tcpconn_on_recv(&f->t, idx, gen, 16, false, buf);
			dp_tcpconn_on_send(&f->t, idx, gen, 1);
		}
		break;
	}
	case 17: /* the query table becomes contended, or no longer is */
		w->contended = !w->contended;
		break;
	case 18: /* other clients' queries leave the table */
		f->freed += next(w) % 4;
		break;
	case 19: /* a reload changes the per-connection cap (0: none) */
		f->t.inflight_max = next(w) % 5;
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096)
		return 0;
	static world_t w;
	memset(&w, 0, sizeof(w));
	w.p = data;
	w.n = size;
	/* Small table and bounds, so that eviction, refusal, the write queue
	 * and the buffer budget are all within reach. */
	fake_init(&w.f, 4, 2);
	w.f.t.wq_max = 4096;
	w.f.t.buf_max = 48 * 1024;
	w.f.t.inflight_max = 3;
	w.f.user = &w;
	w.f.on_frame = on_frame;
	while (w.n) {
		step(&w, next(&w));
		check_table(&w.f.t);
	}
	fake_fini(&w.f);
	return 0;
}
