/* tcpconn.h - the TCP frontend's state machine (RFC 7766), without I/O.
 *
 * One table of client connections per shard: framing (2-byte length), the
 * partial frame carried between receives, the queue of answers, the idle
 * timeout, the connection cap with eviction, EOF and drain, and the
 * lifetime of a slot. It does no I/O and knows nothing of io_uring or of
 * the shard: it asks a transport (dp_tcpconn_io_t) to receive, send,
 * shut down and close, and hands complete queries upward through the same
 * interface. tcp.c is the io_uring transport; tests drive it with a fake.
 *
 * Owns: the slots (dp_tcpc_t, cap + reserve of them, zero pages until
 * used) and per connection only what it needs: a buffer for a frame split
 * across receives, and its queued answers.
 *
 * Lifetime. A slot is identified by (idx, gen); every operation handed to
 * the transport and every query handed upward carries both, and a
 * completion or answer whose gen is not the slot's is dropped. Closing
 * (dp_tcpconn_close) shuts the socket down and cancels its operations; the
 * slot is finalized (buffers freed, fd closed, gen bumped, slot reusable)
 * only when nothing refers to it any more: no operation in the transport
 * (ops), no code path of this module on the stack (hold: taken around the
 * frame loop and the drain read, in which an answer given synchronously may
 * close the connection), and not on the flush list (dirty). Once closing,
 * no further frame of the connection is handed upward.
 *
 * Backpressure. A connection is paused when it has inflight_max queries in
 * flight and sends another, or when the query layer refuses one of its
 * frames (DP_E_FULL from io->frame: its client address is at its fair share
 * of the query table). Pausing cancels its receive; the frame it stopped at
 * and every octet after it stay in rbuf, in order: nothing is dropped. It
 * is looked at again when one of its queries ends (dp_tcpconn_query_end),
 * and, refused its share, when its turn comes on the share-wait list: first
 * come, first served, one connection gets one try per query slot freed
 * (io->freed). Both only queue it; dp_tcpconn_resume_pending(), which the
 * owner calls at a safe point of its loop (never from inside a query's
 * completion or an answer), dispatches the held frames with the connection
 * held and reads again unless it paused once more. A paused connection is
 * busy: never idle-expired, never evicted. At drain a paused connection is
 * not read until resumed; then its held frames and what still sits in its
 * socket are answered as any other connection's, and the table is not
 * drained (dp_tcpconn_reads_done) while one is paused: what it still holds
 * at the owner's drain deadline goes with it.
 */
#ifndef DP_TCPCONN_H
#define DP_TCPCONN_H

#include "buf.h"
#include "list.h"

/* Events counted through dp_tcpconn_io_t.stat. */
enum dp_tcpconn_stat {
	DP_TCPC_QUERY, /* a complete frame handed upward */
	DP_TCPC_DROPPED, /* a frame too short to be a DNS message (closes) */
	DP_TCPC_ACCEPTED,
	DP_TCPC_REFUSED, /* at the cap with no quiet connection to evict */
	DP_TCPC_EVICTED,
	DP_TCPC_CLOSED_IDLE,
	DP_TCPC_CLOSED_SLOW, /* write queue over its bound, or not read for a period */
	DP_TCPC_CLOSED_MEMORY, /* the table's buffer budget is spent */
	DP_TCPC_ANSWER_DROPPED, /* answer for a connection gone or closing */
	DP_TCPC_NOBUFS, /* receive found no provided buffer */
	DP_TCPC_PAUSED, /* a connection stopped being read (backpressure) */
	DP_TCPC_OPEN, /* gauge: value is the number of open connections */
};

/* Where a paused connection waits (dp_tcpc_t.wait). */
enum { DP_TCPC_W_NONE = 0, DP_TCPC_W_SHARE, DP_TCPC_W_RESUME };

/* The transport below and the query layer above, one context for both.
 * Every function is called from the shard's thread. */
typedef struct dp_tcpconn_io {
	/* Start a (multishot) receive on fd for slot idx/gen. It counts as one
	 * operation until its last completion (dp_tcpconn_on_recv with more
	 * false). */
	void (*recv)(void *ctx, uint32_t idx, uint32_t gen, int fd);
	/* Stop that receive (drain, pause): its last completion still comes,
	 * -ECANCELED or with data. */
	void (*recv_cancel)(void *ctx, uint32_t idx, uint32_t gen, int fd);
	/* Send buf[0..len) on fd; one completion (dp_tcpconn_on_send). buf is
	 * left untouched until then. */
	void (*send)(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf,
		     size_t len);
	/* Closing slot idx: shut fd down and, when cancel, cancel every
	 * operation on it (each still completes). */
	void (*shutdown)(void *ctx, uint32_t idx, int fd, bool cancel);
	/* Read what already sits in the socket, without waiting (drain).
	 * Returns the octets read, 0 at EOF, or a negative errno. */
	long (*read_now)(void *ctx, uint32_t idx, int fd, uint8_t *buf, size_t cap);
	/* Octets the kernel holds in fd's socket that no receive has handed
	 * us yet (0 when none, or on error). Asked only by idle expiry. */
	long (*pending)(void *ctx, uint32_t idx, int fd);
	/* Octets sent on fd that the client has not taken yet (still in the
	 * socket's send queue; 0 when none, or on error). Asked only by idle
	 * expiry, of a connection whose answers seem not to move. */
	long (*unsent)(void *ctx, uint32_t idx, int fd);
	/* Slot idx is done with fd: close it (and forget what the transport
	 * kept for the slot; fd may be -1 after dp_tcpconn_close_all). */
	void (*close)(void *ctx, uint32_t idx, int fd);
	/* Upward: one complete query from connection idx/gen, received on
	 * listener li. msg is valid during the call only. The callee may
	 * answer (dp_tcpconn_answer) and so close the connection before it
	 * returns. Returns 0 when it took the query (answered, in flight or
	 * dropped), DP_E_FULL when it refuses it for now (fair share): the
	 * connection keeps that frame and the rest, pauses, and offers the
	 * frame again when its turn comes after a slot is freed. Hot path. */
	int (*frame)(void *ctx, uint32_t idx, uint32_t gen, uint8_t li, uint8_t *msg,
		     size_t len);
	/* Upward: query slots freed since the last call (the count starts
	 * again at 0). Each gives the first connection on the share-wait list
	 * one more try. */
	uint32_t (*freed)(void *ctx);
	/* Upward: count event which (enum dp_tcpconn_stat) by 1, or for
	 * DP_TCPC_OPEN set the gauge to v. */
	void (*stat)(void *ctx, int which, uint64_t v);
} dp_tcpconn_io_t;

typedef struct dp_tcpc {
	uint32_t gen;
	bool used;
	bool closing;
	bool recv_armed;
	bool eof; /* the client shut its side: answer what it asked, then close */
	bool dirty; /* on the table's flush list */
	bool paused; /* not read until resumed (backpressure); frames held in rbuf */
	bool quiet; /* on the quiet list */
	bool idle_recheck; /* idle but octets unread: looked at again next tick */
	uint8_t wait; /* paused: on no list, the share-wait or the resume list */
	uint8_t listen_idx;
	uint16_t hold; /* frames of this module on the stack, and the transport's
			* own references (dp_tcpconn_hold: a TLS layer's sends) */
	int fd;
	uint32_t ops; /* operations in the transport */
	uint32_t inflight; /* queries not yet answered */
	uint32_t dirty_next;
	dp_link_t ilink; /* idle list */
	dp_link_t qlink; /* quiet list */
	dp_link_t wlink; /* share-wait or resume list */
	uint64_t last_active_ms;
	uint64_t last_progress_ms; /* last send issued or completed */
	dp_buf_t rbuf; /* partial frame carried between receives */
	dp_sendq_t wq; /* answers: the send in flight, those queued behind it */
} dp_tcpc_t;

typedef struct dp_tcpconns {
	const dp_tcpconn_io_t *io;
	void *ctx; /* passed to every io function */
	const uint64_t *now_ms; /* the owner's clock */
	dp_tcpc_t *c;
	uint32_t cap; /* open connections at most */
	uint32_t reserve; /* slots beyond cap, for connections still closing */
	uint32_t hiwater, free, used, closing;
	dp_list_t idle; /* open connections, least recently active first */
	dp_list_t quiet; /* open, nothing in flight, nothing to send: eviction order */
	uint32_t dirty; /* connections with answers to send this turn */
	size_t buf_bytes; /* receive and answer buffers of all connections */
	size_t buf_max; /* budget for buf_bytes */
	uint32_t wq_max; /* queued answer octets per connection before closing it */
	uint32_t inflight_max; /* queries in flight per connection; at it, paused (0: no cap) */
	dp_list_t share_wait; /* paused, refused their fair share: oldest first */
	dp_list_t resume; /* paused, to be looked at again by dp_tcpconn_resume_pending */
	bool reads_stopped; /* draining: no receive is started any more */
} dp_tcpconns_t;

#define DP_TCPCONN_WQ_MAX (256u * 1024u)
#define DP_TCPCONN_BUF_MAX ((size_t)64 << 20)

/* Set up a table of cap connections (plus reserve slots for connections
 * still closing) over transport io/ctx, reading the clock at *now_ms.
 * Allocates (zero pages until used). Returns 0 or -ENOMEM. */
int dp_tcpconn_init(dp_tcpconns_t *t, uint32_t cap, uint32_t reserve, const dp_tcpconn_io_t *io,
		    void *ctx, const uint64_t *now_ms);
/* Free every buffer and the table (after the transport is gone: no
 * completion may come back). Accepts a table never set up. */
void dp_tcpconn_free(dp_tcpconns_t *t);

/* A new connection on fd from listener li: takes a slot (evicting the
 * least recently active quiet connection when at the cap) and starts
 * receiving. Returns the slot index, or DP_E_FULL when refused (the caller
 * keeps fd and closes it). On success the table owns fd. */
int dp_tcpconn_accept(dp_tcpconns_t *t, int fd, uint8_t li);

/* A receive completion for idx/gen: res octets at data (res > 0), 0 at EOF,
 * or a negative errno; more is false on the receive's last completion.
 * data is only read during the call. Stale completions are dropped. Hot
 * path. */
void dp_tcpconn_on_recv(dp_tcpconns_t *t, uint32_t idx, uint32_t gen, int res, bool more,
			uint8_t *data);
/* A send completion for idx/gen: res octets sent or a negative errno. */
void dp_tcpconn_on_send(dp_tcpconns_t *t, uint32_t idx, uint32_t gen, int res);

/* Queue an answer (copied, framed) to connection idx/gen; dropped if the
 * connection is gone or closing; closes it when its write queue or the
 * buffer budget would overflow. Sent at the next dp_tcpconn_flush. Hot
 * path. */
void dp_tcpconn_answer(dp_tcpconns_t *t, uint32_t idx, uint32_t gen, const uint8_t *msg,
		       size_t len);
/* A query of connection idx/gen was handed upward and is now in flight /
 * is finished (answered or dropped). Hot path. */
void dp_tcpconn_query_begin(dp_tcpconns_t *t, uint32_t idx, uint32_t gen);
void dp_tcpconn_query_end(dp_tcpconns_t *t, uint32_t idx, uint32_t gen);

/* End of a loop turn: one send per connection with queued answers. */
void dp_tcpconn_flush(dp_tcpconns_t *t);
/* Close connections idle for idle_ms, and those whose answers have not
 * moved for as long while the client leaves them in its socket
 * (io->unsent). A connection with octets waiting in its socket
 * (io->pending) is not idle: its client has sent, we have not read yet. */
void dp_tcpconn_expire(dp_tcpconns_t *t, uint32_t idle_ms);
/* Close connection idx (any gen); it is finalized once nothing refers to
 * it. No-op on a free or closing slot. */
void dp_tcpconn_close(dp_tcpconns_t *t, uint32_t idx);

/* Backpressure from the owner: stop reading connection idx/gen now, as at
 * its cap (it is looked at again when one of its queries ends, or after
 * dp_tcpconn_resume). */
void dp_tcpconn_pause(dp_tcpconns_t *t, uint32_t idx, uint32_t gen);
/* Queue paused connection idx/gen to be resumed at the next
 * dp_tcpconn_resume_pending. Safe anywhere, also inside a frame or an
 * answer. */
void dp_tcpconn_resume(dp_tcpconns_t *t, uint32_t idx, uint32_t gen);
/* At a safe point of the owner's loop (no frame, answer or query end on
 * the stack), before dp_tcpconn_flush: give the first connections of the
 * share-wait list one try per slot freed (io->freed), and resume every
 * queued connection: dispatch its held frames (it may pause again), then
 * read it again. Dispatching may free slots and end queries, which queue
 * more: it runs until nothing is queued; bounded, as every try either
 * consumes a frame already received or waits for a slot. */
void dp_tcpconn_resume_pending(dp_tcpconns_t *t);

/* Drain: stop reading from every connection; each, as its receive ends,
 * reads what is already in its socket, answers it, then closes. */
void dp_tcpconn_stop_reading(dp_tcpconns_t *t);
/* True when no connection has a receive in the transport or is paused
 * (a paused one still has frames, or its socket, to read). */
bool dp_tcpconn_reads_done(const dp_tcpconns_t *t);
/* True when no connection has answers waiting or being sent. */
bool dp_tcpconn_idle_output(const dp_tcpconns_t *t);
/* Teardown: shut down and close every connection's fd now (operations in
 * flight are abandoned with the transport). */
void dp_tcpconn_close_all(dp_tcpconns_t *t);

/* The transport keeps connection idx/gen from being finalized while it
 * works on it outside a call from this module (a TLS layer delivering
 * plaintext in several calls, or its own ciphertext send in flight).
 * Returns false, taking nothing, when idx/gen is gone. Each true is
 * matched by one dp_tcpconn_release, which may finalize the slot (closing,
 * nothing else refers to it): the slot and what the transport keeps for
 * it must not be touched after that. */
bool dp_tcpconn_hold(dp_tcpconns_t *t, uint32_t idx, uint32_t gen);
void dp_tcpconn_release(dp_tcpconns_t *t, uint32_t idx);

/* The transport's own buffers of connection idx (a TLS layer's ciphertext
 * and session) count in the table's buffer budget (buf_bytes, buf_max) as
 * tcpconn's do: delta octets more (positive) or fewer (negative). Returns
 * false, charging nothing, when delta would take the table over its
 * budget (counted DP_TCPC_CLOSED_MEMORY; the caller closes idx); a
 * release (delta <= 0) always succeeds. The transport uncharges all it
 * charged for idx when the slot is closed (io->close). */
bool dp_tcpconn_charge(dp_tcpconns_t *t, uint32_t idx, ptrdiff_t delta);
/* The transport moved part of connection idx's send (a TLS layer's partial
 * ciphertext send): its client reads, slowly perhaps, so it is not closed
 * as one that does not read. */
void dp_tcpconn_progress(dp_tcpconns_t *t, uint32_t idx);

/* The connection in slot idx if it is open with generation gen, else NULL. */
static inline dp_tcpc_t *dp_tcpconn_get(dp_tcpconns_t *t, uint32_t idx, uint32_t gen)
{
	if (idx >= t->hiwater)
		return NULL;
	dp_tcpc_t *c = &t->c[idx];
	return c->used && c->gen == gen ? c : NULL;
}

#endif
