/* tcpconn.c - the TCP frontend's state machine (see tcpconn.h): framing,
 * buffers, answer queue, idle timeout, eviction, EOF, drain, backpressure,
 * and when a slot may be reused. No I/O: everything goes through t->io.
 */
#include "tcpconn.h"
#include "tcpframe.h"

#include <errno.h>
#include <string.h>

#define IOFF offsetof(dp_tcpc_t, ilink)
#define QOFF offsetof(dp_tcpc_t, qlink)
#define WOFF offsetof(dp_tcpc_t, wlink)
#define DNS_HDR_LEN 12
#define DRAIN_READS 1024 /* reads of 4 KiB per connection when draining */

static void count(dp_tcpconns_t *t, int which)
{
	t->io->stat(t->ctx, which, 1);
}

/* Grow a connection buffer to hold need octets, within the table's budget
 * (so thousands of clients that stall mid-frame or never read cannot take
 * the memory). */
static bool grow(dp_tcpconns_t *t, dp_buf_t *b, size_t need)
{
	if (need <= b->cap)
		return true;
	size_t n = dp_grow_size(b->cap, need, 512), old = b->cap;
	if (t->buf_bytes - old + n > t->buf_max) {
		count(t, DP_TCPC_CLOSED_MEMORY);
		return false;
	}
	if (!dp_buf_reserve(b, n, n))
		return false;
	t->buf_bytes = t->buf_bytes - old + n;
	return true;
}

static void drop_buf(dp_tcpconns_t *t, dp_buf_t *b)
{
	t->buf_bytes -= b->cap;
	dp_buf_free(b);
}

/* Free every buffer of connection c. */
static void drop_bufs(dp_tcpconns_t *t, dp_tcpc_t *c)
{
	drop_buf(t, &c->rbuf);
	drop_buf(t, &c->wq.out);
	drop_buf(t, &c->wq.fill);
	dp_sendq_reset(&c->wq);
}

/* A connection is quiet (may be evicted for a newcomer) when it is open,
 * waits for no answer, has nothing to send and holds no frame back (not
 * paused). The quiet list holds exactly those, in the order they became
 * quiet or last sent a query. */
static void update_quiet(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	bool q = c->used && !c->closing && c->inflight == 0 && !c->wq.inflight &&
		 c->wq.fill.len == 0 && !c->paused;
	if (q == c->quiet)
		return;
	if (q)
		dp_list_push_tail(&t->quiet, t->c, sizeof(dp_tcpc_t), QOFF, idx);
	else
		dp_list_remove(&t->quiet, t->c, sizeof(dp_tcpc_t), QOFF, idx);
	c->quiet = q;
}

/* Only a complete query counts as activity, and the end of the answers to
 * the queries before it (the connection was busy until then): a client
 * that trickles a frame byte by byte, or announces 65,535 octets and
 * stalls, still reaches the idle timeout and is closed. */
static void touch(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	c->last_active_ms = *t->now_ms;
	c->idle_recheck = false;
	dp_list_remove(&t->idle, t->c, sizeof(dp_tcpc_t), IOFF, idx);
	dp_list_push_tail(&t->idle, t->c, sizeof(dp_tcpc_t), IOFF, idx);
	if (c->quiet) {
		dp_list_remove(&t->quiet, t->c, sizeof(dp_tcpc_t), QOFF, idx);
		dp_list_push_tail(&t->quiet, t->c, sizeof(dp_tcpc_t), QOFF, idx);
	}
}

/* Take a paused connection off the list it waits on, if any. */
static void unwait(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	if (c->wait == DP_TCPC_W_SHARE)
		dp_list_remove(&t->share_wait, t->c, sizeof(dp_tcpc_t), WOFF, idx);
	else if (c->wait == DP_TCPC_W_RESUME)
		dp_list_remove(&t->resume, t->c, sizeof(dp_tcpc_t), WOFF, idx);
	c->wait = DP_TCPC_W_NONE;
}

/* Queue paused connection idx for dp_tcpconn_resume_pending (leaving the
 * share-wait list: it gets its try now). */
static void queue_resume(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	if (c->wait == DP_TCPC_W_RESUME)
		return;
	unwait(t, idx);
	dp_list_push_tail(&t->resume, t->c, sizeof(dp_tcpc_t), WOFF, idx);
	c->wait = DP_TCPC_W_RESUME;
}

static void finalize(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	t->io->close(t->ctx, idx, c->fd);
	c->fd = -1;
	drop_bufs(t, c);
	c->used = c->closing = false;
	c->gen++; /* completions and answers still addressed to it are stale */
	c->ilink.next = t->free;
	t->free = idx;
	t->closing--;
	t->used--;
	t->io->stat(t->ctx, DP_TCPC_OPEN, t->used);
}

/* Finalize a closing connection once nothing refers to it: no operation
 * in the transport, no frame of ours on the stack, not on the flush list. */
static void try_finalize(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	if (c->used && c->closing && c->ops == 0 && c->hold == 0 && !c->dirty)
		finalize(t, idx);
}

static void release(dp_tcpconns_t *t, uint32_t idx)
{
	if (--t->c[idx].hold == 0)
		try_finalize(t, idx);
}

bool dp_tcpconn_hold(dp_tcpconns_t *t, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (!c)
		return false;
	c->hold++;
	return true;
}

void dp_tcpconn_release(dp_tcpconns_t *t, uint32_t idx)
{
	release(t, idx);
}

bool dp_tcpconn_charge(dp_tcpconns_t *t, uint32_t idx, ptrdiff_t delta)
{
	(void)idx;
	if (delta > 0 && t->buf_bytes + (size_t)delta > t->buf_max) {
		count(t, DP_TCPC_CLOSED_MEMORY);
		return false;
	}
	t->buf_bytes += (size_t)delta; /* wraps back for a negative delta */
	return true;
}

void dp_tcpconn_progress(dp_tcpconns_t *t, uint32_t idx)
{
	t->c[idx].last_progress_ms = *t->now_ms;
}

void dp_tcpconn_close(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	if (!c->used || c->closing)
		return;
	c->closing = true;
	t->closing++;
	dp_list_remove(&t->idle, t->c, sizeof(dp_tcpc_t), IOFF, idx);
	unwait(t, idx); /* its held frames go with it */
	update_quiet(t, idx);
	t->io->shutdown(t->ctx, idx, c->fd, c->ops > 0);
	try_finalize(t, idx);
}

static void arm_recv(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	c->recv_armed = true;
	c->ops++;
	t->io->recv(t->ctx, idx, c->gen, c->fd);
}

int dp_tcpconn_init(dp_tcpconns_t *t, uint32_t cap, uint32_t reserve, const dp_tcpconn_io_t *io,
		    void *ctx, const uint64_t *now_ms)
{
	/* calloc of a large table maps zero pages: untouched slots cost no RSS. */
	dp_tcpc_t *c = calloc((size_t)cap + reserve, sizeof(dp_tcpc_t));
	if (!c) {
		memset(t, 0, sizeof(*t));
		return -ENOMEM;
	}
	*t = (dp_tcpconns_t){
		.c = c, .io = io, .ctx = ctx, .now_ms = now_ms, .cap = cap, .reserve = reserve,
		.free = DP_NONE, .dirty = DP_NONE,
		.idle = DP_LIST_EMPTY, .quiet = DP_LIST_EMPTY,
		.share_wait = DP_LIST_EMPTY, .resume = DP_LIST_EMPTY,
		.buf_max = DP_TCPCONN_BUF_MAX, .wq_max = DP_TCPCONN_WQ_MAX,
	};
	return 0;
}

void dp_tcpconn_free(dp_tcpconns_t *t)
{
	if (!t->c)
		return;
	for (uint32_t i = 0; i < t->hiwater; i++)
		drop_bufs(t, &t->c[i]);
	free(t->c);
	t->c = NULL;
}

static uint32_t take_slot(dp_tcpconns_t *t)
{
	if (t->free != DP_NONE) {
		uint32_t idx = t->free;
		t->free = t->c[idx].ilink.next;
		return idx;
	}
	if (t->hiwater < t->cap + t->reserve)
		return t->hiwater++;
	return DP_NONE;
}

int dp_tcpconn_accept(dp_tcpconns_t *t, int fd, uint8_t li)
{
	if (t->used - t->closing >= t->cap) {
		/* Full: make room by closing the least recently active client
		 * that has nothing in flight (RFC 7766 6.2.3 lets a server close
		 * idle connections under pressure); refuse when none is quiet. */
		if (t->quiet.head == DP_NONE) {
			count(t, DP_TCPC_REFUSED);
			return DP_E_FULL;
		}
		count(t, DP_TCPC_EVICTED);
		dp_tcpconn_close(t, t->quiet.head);
	}
	uint32_t idx = take_slot(t);
	if (idx == DP_NONE) {
		count(t, DP_TCPC_REFUSED);
		return DP_E_FULL;
	}
	/* Every slot starts clean: finalize freed the buffers; only the
	 * generation survives. */
	dp_tcpc_t *c = &t->c[idx];
	uint32_t gen = c->gen;
	memset(c, 0, sizeof(*c));
	c->gen = gen;
	c->used = true;
	c->fd = fd;
	c->listen_idx = li;
	c->last_active_ms = c->last_progress_ms = *t->now_ms;
	c->dirty_next = DP_NONE;
	c->ilink = c->qlink = c->wlink = (dp_link_t){ DP_NONE, DP_NONE };
	t->used++;
	count(t, DP_TCPC_ACCEPTED);
	t->io->stat(t->ctx, DP_TCPC_OPEN, t->used);
	dp_list_push_tail(&t->idle, t->c, sizeof(dp_tcpc_t), IOFF, idx);
	update_quiet(t, idx);
	if (!t->reads_stopped)
		arm_recv(t, idx);
	return (int)idx;
}

/* Stop reading connection idx (see tcpconn.h, backpressure). share: the
 * query layer refused its frame, so it also waits for a slot to free. */
static void pause_conn(dp_tcpconns_t *t, uint32_t idx, bool share)
{
	dp_tcpc_t *c = &t->c[idx];
	if (share && c->wait == DP_TCPC_W_NONE) {
		dp_list_push_tail(&t->share_wait, t->c, sizeof(dp_tcpc_t), WOFF, idx);
		c->wait = DP_TCPC_W_SHARE;
	}
	if (c->paused)
		return;
	c->paused = true;
	count(t, DP_TCPC_PAUSED);
	update_quiet(t, idx);
	/* A multishot receive would go on filling rbuf. What it delivers
	 * before the cancel lands is held like the rest. */
	if (c->recv_armed)
		t->io->recv_cancel(t->ctx, idx, c->gen, c->fd);
}

struct frame_ctx {
	dp_tcpconns_t *t;
	uint32_t idx;
	uint32_t frames;
	uint8_t *held; /* paused: the frame (its length octets) it stopped at */
};

/* One complete frame: hand it upward, unless the connection started
 * closing (then stop the split: nothing more of it is read), or is paused
 * or pauses now (then stop the split: this frame and the rest are held). */
static int on_frame(void *ctx, uint8_t *msg, size_t len)
{
	struct frame_ctx *f = ctx;
	dp_tcpconns_t *t = f->t;
	dp_tcpc_t *c = &t->c[f->idx];
	if (c->closing)
		return DP_E_MALFORMED;
	if (c->paused || (t->inflight_max && c->inflight >= t->inflight_max)) {
		pause_conn(t, f->idx, false);
		f->held = msg - 2;
		return DP_E_FULL;
	}
	if (len < DNS_HDR_LEN) {
		count(t, DP_TCPC_DROPPED);
		return DP_E_MALFORMED; /* nothing to answer to: close */
	}
	if (f->frames++ == 0)
		touch(t, f->idx);
	if (t->io->frame(t->ctx, f->idx, c->gen, c->listen_idx, msg, len) == DP_E_FULL &&
	    !c->closing) {
		pause_conn(t, f->idx, true);
		f->held = msg - 2;
		return DP_E_FULL;
	}
	count(t, DP_TCPC_QUERY);
	return c->closing ? DP_E_MALFORMED : 0;
}

/* Hand the complete frames in buf[0..n) upward. Returns the octets done
 * with: every complete frame, or, when the connection paused, those before
 * the frame it stopped at; negative: the stream is malformed. */
static long split(struct frame_ctx *f, uint8_t *buf, size_t n)
{
	long used = dp_tcpframe_split(buf, n, on_frame, f);
	return used == DP_E_FULL ? (long)(f->held - buf) : used;
}

/* Hand upward the frames rbuf holds (a split tail completed, or frames
 * held by a pause); keep the rest. The caller holds the connection. */
static void split_rbuf(dp_tcpconns_t *t, uint32_t idx, struct frame_ctx *f)
{
	dp_tcpc_t *c = &t->c[idx];
	long used = split(f, c->rbuf.data, c->rbuf.len);
	if (c->closing)
		return;
	if (used < 0) {
		dp_tcpconn_close(t, idx);
		return;
	}
	dp_buf_consume(&c->rbuf, (size_t)used);
	if (c->rbuf.len == 0 && c->rbuf.cap > 4096) {
		/* Do not keep a 64 KB buffer for a connection that goes idle. */
		drop_buf(t, &c->rbuf);
	}
}

/* n octets received. The caller holds the connection: a frame's answer
 * may close it, but not free its buffers under us. */
static void on_data(dp_tcpconns_t *t, uint32_t idx, uint8_t *data, size_t n)
{
	dp_tcpc_t *c = &t->c[idx];
	struct frame_ctx f = { t, idx, 0, NULL };
	if (c->rbuf.len == 0) {
		/* Common case: whole frames in the received buffer; read them
		 * where they landed and keep only a split tail (or, paused, all
		 * from the frame it stopped at). */
		long used = split(&f, data, n);
		if (c->closing)
			return;
		if (used < 0) {
			dp_tcpconn_close(t, idx);
			return;
		}
		size_t rest = n - (size_t)used;
		if (rest) {
			if (!grow(t, &c->rbuf, rest)) {
				dp_tcpconn_close(t, idx);
				return;
			}
			dp_buf_append(&c->rbuf, data + used, rest, rest);
		}
		return;
	}
	if (!grow(t, &c->rbuf, (size_t)c->rbuf.len + n)) {
		dp_tcpconn_close(t, idx);
		return;
	}
	dp_buf_append(&c->rbuf, data, n, n);
	split_rbuf(t, idx, &f);
}

/* A connection whose client shut its side closes once it has its answers,
 * unless it still holds frames back (paused: they are answered first). */
static void maybe_close_after_eof(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	if (c->eof && !c->closing && !c->paused && c->inflight == 0 && !c->wq.inflight &&
	    c->wq.fill.len == 0)
		dp_tcpconn_close(t, idx);
}

/* Reading has ended for good (drain): take what the client sent before we
 * stopped and still sits in the socket, then answer it and close. Paused
 * (now or by a frame read here), the socket is left for its resumption,
 * which comes back here. The caller holds the connection. */
static void end_reading(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	uint8_t buf[4096];
	for (int i = 0; i < DRAIN_READS && !c->closing && !c->paused; i++) {
		long n = t->io->read_now(t->ctx, idx, c->fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		on_data(t, idx, buf, (size_t)n);
	}
	if (c->closing || c->paused)
		return;
	c->eof = true;
	maybe_close_after_eof(t, idx);
}

/* What follows a receive completion: EOF, drain, error, or a new receive. */
static void after_recv(dp_tcpconns_t *t, uint32_t idx, int res, bool more)
{
	dp_tcpc_t *c = &t->c[idx];
	if (res == 0) {
		/* The client will send no more: answer what it asked, then
		 * close. */
		c->eof = true;
		maybe_close_after_eof(t, idx);
		return;
	}
	if (!more && t->reads_stopped && (res > 0 || res == -ECANCELED || res == -ENOBUFS)) {
		end_reading(t, idx);
		return;
	}
	if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
		dp_tcpconn_close(t, idx);
		return;
	}
	if (res == -ENOBUFS)
		count(t, DP_TCPC_NOBUFS);
	/* -ECANCELED: we paused it (resumed since, perhaps). */
	if (!more && !c->recv_armed && !c->eof && !c->paused)
		arm_recv(t, idx);
}

void dp_tcpconn_on_recv(dp_tcpconns_t *t, uint32_t idx, uint32_t gen, int res, bool more,
			uint8_t *data)
{
	/* A slot is finalized only after its last completion: one for an older
	 * generation is not from this transport's operations. Drop it. */
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (!c)
		return;
	if (!more) {
		c->ops--;
		c->recv_armed = false;
	}
	c->hold++;
	if (res > 0 && data && !c->closing)
		on_data(t, idx, data, (size_t)res);
	if (!c->closing)
		after_recv(t, idx, res, more);
	release(t, idx);
}

static void start_send(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	const uint8_t *p;
	if (c->closing)
		return;
	size_t n = dp_sendq_start(&c->wq, &p); /* the rest, or the queued answers */
	if (n == 0)
		return;
	c->last_progress_ms = *t->now_ms;
	c->ops++;
	t->io->send(t->ctx, idx, c->gen, c->fd, p, n);
}

void dp_tcpconn_on_send(dp_tcpconns_t *t, uint32_t idx, uint32_t gen, int res)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (!c)
		return;
	c->ops--;
	int left = dp_sendq_done(&c->wq, res == 0 ? -EPIPE : res);
	c->hold++;
	if (c->closing) {
		/* finalized by release, once nothing else is in flight */
	} else if (left < 0) {
		dp_tcpconn_close(t, idx);
	} else {
		c->last_progress_ms = *t->now_ms;
		if (left == 0) {
			if (c->wq.out.cap > 16384)
				drop_buf(t, &c->wq.out);
			/* Its last answer is out: idle from now, not from its
			 * last query (one answered after 1.9 s of a 2 s idle
			 * timeout would leave the client 0.1 s to ask again). */
			if (c->inflight == 0 && c->wq.fill.len == 0)
				touch(t, idx);
		}
		start_send(t, idx);
		update_quiet(t, idx);
		maybe_close_after_eof(t, idx);
	}
	release(t, idx);
}

void dp_tcpconn_answer(dp_tcpconns_t *t, uint32_t idx, uint32_t gen, const uint8_t *msg,
		       size_t len)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (!c || c->closing || len > UINT16_MAX) {
		count(t, DP_TCPC_ANSWER_DROPPED);
		return;
	}
	dp_buf_t *b = &c->wq.fill;
	if (dp_sendq_queued(&c->wq) + len + 2 > t->wq_max ||
	    !grow(t, b, (size_t)b->len + len + 2)) {
		count(t, DP_TCPC_CLOSED_SLOW);
		count(t, DP_TCPC_ANSWER_DROPPED);
		dp_tcpconn_close(t, idx);
		return;
	}
	dp_wr16(b->data + b->len, (uint16_t)len);
	memcpy(b->data + b->len + 2, msg, len);
	b->len += (uint32_t)len + 2;
	update_quiet(t, idx);
	/* Send at the end of the turn, so that answers completing together
	 * leave in one send. */
	if (!c->dirty && !c->wq.inflight) {
		c->dirty = true;
		c->dirty_next = t->dirty;
		t->dirty = idx;
	}
}

void dp_tcpconn_query_begin(dp_tcpconns_t *t, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (!c)
		return;
	c->inflight++;
	update_quiet(t, idx);
}

void dp_tcpconn_query_end(dp_tcpconns_t *t, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (!c || c->inflight == 0)
		return;
	c->inflight--;
	update_quiet(t, idx);
	/* Under its cap again (or a slot freed): its turn, but not from
	 * here, deep inside the query layer. */
	if (c->paused && !c->closing)
		queue_resume(t, idx);
	maybe_close_after_eof(t, idx);
}

void dp_tcpconn_flush(dp_tcpconns_t *t)
{
	while (t->dirty != DP_NONE) {
		uint32_t idx = t->dirty;
		dp_tcpc_t *c = &t->c[idx];
		t->dirty = c->dirty_next;
		c->dirty_next = DP_NONE;
		c->dirty = false;
		if (c->closing)
			try_finalize(t, idx);
		else if (c->used)
			start_send(t, idx);
	}
}

void dp_tcpconn_expire(dp_tcpconns_t *t, uint32_t limit)
{
	uint64_t now = *t->now_ms;
	while (t->idle.head != DP_NONE) {
		uint32_t idx = t->idle.head;
		dp_tcpc_t *c = &t->c[idx];
		if (now - c->last_active_ms < limit)
			break;
		bool sending = c->wq.inflight || c->wq.fill.len;
		if (sending && now - c->last_progress_ms >= limit &&
		    t->io->unsent(t->ctx, idx, c->fd) > 0) {
			/* Its answers have not moved for a whole idle period and
			 * sit in its socket: the client does not read. (With its
			 * socket empty, the client has read them and only our
			 * send's completion is late, as receives are under a
			 * flood: busy, below.) */
			count(t, DP_TCPC_CLOSED_SLOW);
			dp_tcpconn_close(t, idx);
			continue;
		}
		/* Octets in its socket that no receive has handed us: the client
		 * sent a query and it is we who are behind. Under a flood of
		 * pipelining clients its receive can wait in the kernel for
		 * seconds (a wake-up queued behind theirs, or completed with
		 * -ENOBUFS and armed again, the ring drained); closing now would
		 * reset it with its queries unread. last_active_ms counts only
		 * the frames we have read, so it cannot tell.
		 * But octets that came since the loop last entered the kernel
		 * are pending too, though its receive takes them at the next
		 * enter: a client trickling a byte at a time would be granted
		 * a whole idle period whenever one lands just before this look.
		 * So octets alone first buy one tick (the head stays; the rest
		 * wait that tick): if they are still unread then, the shard is
		 * behind; if a frame completed, touch() moved it; if not, idle. */
		bool busy = c->inflight || sending || c->paused;
		bool unread = !busy && t->io->pending(t->ctx, idx, c->fd) > 0;
		if (unread && !c->idle_recheck) {
			c->idle_recheck = true;
			break;
		}
		if (busy || unread) {
			/* Busy, not idle: look again later. */
			c->idle_recheck = false;
			c->last_active_ms = now;
			dp_list_remove(&t->idle, t->c, sizeof(dp_tcpc_t), IOFF, idx);
			dp_list_push_tail(&t->idle, t->c, sizeof(dp_tcpc_t), IOFF, idx);
			continue;
		}
		count(t, DP_TCPC_CLOSED_IDLE);
		dp_tcpconn_close(t, idx);
	}
}

void dp_tcpconn_pause(dp_tcpconns_t *t, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (c && !c->closing)
		pause_conn(t, idx, false);
}

void dp_tcpconn_resume(dp_tcpconns_t *t, uint32_t idx, uint32_t gen)
{
	dp_tcpc_t *c = dp_tcpconn_get(t, idx, gen);
	if (c && !c->closing && c->paused)
		queue_resume(t, idx);
}

/* Look at paused connection idx again: hand its held frames upward (it may
 * pause again, or close), then read on. */
static void resume_conn(dp_tcpconns_t *t, uint32_t idx)
{
	dp_tcpc_t *c = &t->c[idx];
	c->paused = false;
	update_quiet(t, idx);
	/* Held: an answer given inside the split may close the connection, and
	 * a paused one often has no operation that would keep it from being
	 * finalized under us. */
	c->hold++;
	if (c->rbuf.len) {
		struct frame_ctx f = { t, idx, 0, NULL };
		split_rbuf(t, idx, &f);
	}
	if (c->closing || c->paused) {
		/* closed, or paused again */
	} else if (c->recv_armed) {
		/* its cancelled receive has not ended yet: it re-arms as it ends */
	} else if (c->eof) {
		maybe_close_after_eof(t, idx);
	} else if (t->reads_stopped) {
		end_reading(t, idx);
	} else {
		arm_recv(t, idx);
	}
	release(t, idx);
}

void dp_tcpconn_resume_pending(dp_tcpconns_t *t)
{
	for (;;) {
		if (t->resume.head == DP_NONE) {
			/* Slots freed while no one waited are no credit: the
			 * count restarts either way. */
			uint32_t n = t->io->freed(t->ctx);
			n = DP_MIN(n, t->share_wait.count);
			if (n == 0)
				return;
			while (n--)
				queue_resume(t, t->share_wait.head);
		}
		uint32_t idx = t->resume.head;
		unwait(t, idx);
		resume_conn(t, idx);
	}
}

void dp_tcpconn_stop_reading(dp_tcpconns_t *t)
{
	t->reads_stopped = true;
	for (uint32_t i = 0; i < t->hiwater; i++) {
		dp_tcpc_t *c = &t->c[i];
		if (c->used && !c->closing && c->recv_armed)
			t->io->recv_cancel(t->ctx, i, c->gen, c->fd);
	}
}

bool dp_tcpconn_reads_done(const dp_tcpconns_t *t)
{
	for (uint32_t i = 0; i < t->hiwater; i++) {
		const dp_tcpc_t *c = &t->c[i];
		if (c->used && !c->closing && (c->recv_armed || c->paused))
			return false;
	}
	return true;
}

bool dp_tcpconn_idle_output(const dp_tcpconns_t *t)
{
	for (uint32_t i = 0; i < t->hiwater; i++) {
		const dp_tcpc_t *c = &t->c[i];
		if (c->used && !c->closing && (c->wq.inflight || c->wq.fill.len || c->dirty))
			return false;
	}
	return true;
}

void dp_tcpconn_close_all(dp_tcpconns_t *t)
{
	for (uint32_t i = 0; i < t->hiwater; i++) {
		dp_tcpc_t *c = &t->c[i];
		if (c->used && c->fd >= 0) {
			t->io->shutdown(t->ctx, i, c->fd, false);
			t->io->close(t->ctx, i, c->fd);
			c->fd = -1;
		}
	}
}
