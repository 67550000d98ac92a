/* engine.h - one shard: its io_uring, loop, tables and counters.
 *
 * A shard is a complete small proxy pinned to one CPU: it owns its ring, its
 * SO_REUSEPORT UDP sockets and TCP listeners, its provided-buffer ring, its
 * query table, its client TCP connections and its upstream TLS connections.
 * Nothing here is shared with another shard except the counters, which other
 * threads read with relaxed loads, the stop flag, the hand-off queues
 * (xshard.h: a query goes to its home shard, handoff.c) and the per-client
 * rate limiter (ratelimit.h).
 *
 * Completions are told apart by user_data = op (8 bits) | index (24 bits) |
 * generation (32 bits): no object is allocated per operation, and a stale
 * completion for a reused slot is recognised by its generation.
 */
#ifndef DP_ENGINE_H
#define DP_ENGINE_H

#include "cache.h"
#include "clientshare.h"
#include "config.h"
#include "dns.h"
#include "idmap.h"
#include "list.h"
#include "metrics.h"
#include "ratelimit.h"
#include "stats.h"
#include "timerwheel.h"
#include "tcpconn.h"
#include "xshard.h"

#include <liburing.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>

enum dp_op {
	OP_IGNORE = 0, /* cancels and other completions nobody waits for */
	OP_UDP_RECV,
	OP_UDP_SEND,
	OP_TCP_ACCEPT,
	OP_TCP_RECV,
	OP_TCP_SEND,
	OP_UP_CONNECT,
	OP_UP_RECV,
	OP_UP_SEND,
	OP_WAKE,
	OP_XSHARD, /* another shard queued messages for us (idx: that shard) */
	OP_XSHARD_SENT, /* our wake of shard idx failed (MSG_RING refused) */
};

static inline uint64_t dp_ud(enum dp_op op, uint32_t idx, uint32_t gen)
{
	return ((uint64_t)op << 56) | ((uint64_t)(idx & 0xffffff) << 32) | gen;
}
#define DP_UD_OP(u) ((enum dp_op)((u) >> 56))
#define DP_UD_IDX(u) ((uint32_t)(((u) >> 32) & 0xffffff))
#define DP_UD_GEN(u) ((uint32_t)(u))

/* ---- queries ---------------------------------------------------------- */

enum { Q_FREE = 0, Q_PENDING, Q_SENT, Q_WAITING /* coalesced behind a leader */ };
enum { T_UDP = 0, T_TCP, T_NONE /* prefetch: the answer only feeds the cache */ };

#define DP_QUERY_INLINE 672 /* a 512-octet query, padded, fits */

typedef struct dp_query {
	uint32_t gen;
	uint8_t state; /* Q_* */
	uint8_t transport; /* T_* */
	uint8_t resent; /* re-sent once after a connection failed */
	uint8_t listen_idx; /* UDP: which socket it came in on */
	uint16_t client_id;
	uint16_t up_id;
	uint16_t len; /* query wire length as sent upstream (padded) */
	uint16_t client_udp_limit; /* largest UDP answer the client takes */
	uint32_t conn; /* upstream connection index, DP_NONE when none */
	dp_link_t tlink; /* free list (tlink.next) */
	dp_link_t clink; /* connection's query list; for Q_WAITING the leader's
			  * waiters list */
	uint32_t leader; /* Q_WAITING: the query it waits on */
	dp_list_t waiters; /* leader: queries waiting for the same answer */
	uint64_t key_hash; /* cache key hash, for the in-flight table */
	bool in_table; /* registered in the in-flight table */
	uint16_t servfailed; /* bit u: upstream u answered SERVFAIL (failover) */
	uint8_t ecs_len; /* the client's subnet as forwarded (--forward-ecs), */
	uint8_t ecs[DP_EDNS_ECS_MAX]; /* 0 when none: part of the question */
	uint64_t deadline_ms;
	dp_tw_entry_t deadline_t; /* shard timer: SERVFAIL at deadline_ms */
	uint64_t start_ns; /* written to its connection (latency sample) */
	uint64_t arrive_ns; /* arrival from the client (client-seen latency) */
	/* hedging: a second copy on another upstream's connection */
	uint32_t conn2; /* DP_NONE when not hedged */
	uint16_t up_id2;
	bool hedged; /* a hedge was sent (at most one per query) */
	dp_link_t c2link; /* conn2's hedge list */
	dp_tw_entry_t hedge_t; /* shard timer: send the hedge (armed: may be hedged) */
	uint64_t hedge_start_ns;
	union {
		struct sockaddr_in6 udp; /* big enough for AF_INET too */
		struct {
			uint32_t idx, gen;
		} tcp;
	} client;
	dp_dns_view_t view; /* of the client's query; the question is at the
			     * same offsets in wire */
	uint8_t *wire; /* upstream form (padded), inline or malloc'd */
	uint8_t inline_wire[DP_QUERY_INLINE];
} dp_query_t;

/* ---- upstream connections --------------------------------------------- */

enum { C_DOWN = 0, C_CONNECTING, C_HANDSHAKE, C_READY, C_CLOSING };

typedef struct dp_upconn {
	uint8_t state; /* C_* */
	uint8_t upstream; /* index in cfg->upstream */
	bool recv_armed;
	bool send_inflight;
	bool dirty; /* on the shard's flush list */
	bool got_answer; /* an answer arrived since connecting */
	bool health_fail_on_close;
	int fd;
	uint32_t ops; /* SQEs in flight on fd */
	uint32_t gen;
	uint64_t deadline_ms; /* handshake deadline while connecting */
	dp_tw_entry_t hs_t; /* shard timer at deadline_ms, armed while connecting */
	SSL *ssl; /* over our own BIOs (tls.c): they read rxbuf, append to pend */
	dp_idmap_t ids;
	dp_list_t queries; /* dp_query_t.clink, pending and sent */
	dp_list_t hedges; /* dp_query_t.c2link: hedge copies sent here */
	uint64_t last_used_ms; /* last query written or answer read */
	uint32_t keepalive_ms; /* upstream's idle timeout (RFC 7828), 0 = unknown */
	uint32_t dirty_next;
	/* plaintext queries framed for the next SSL_write */
	uint8_t *batch;
	uint32_t batch_len, batch_cap, batch_count;
	/* ciphertext being sent: immutable while send_inflight */
	uint8_t *sendbuf;
	uint32_t send_len, send_off, send_cap;
	uint64_t send_since_ms; /* the send in flight was issued or took bytes */
	/* ciphertext made since, waiting for the next send (BIO writes here) */
	uint8_t *pend;
	uint32_t pend_len, pend_cap;
	/* ciphertext received, not yet taken by TLS (BIO reads here) */
	uint8_t *rxbuf;
	uint32_t rx_off, rx_len;
	/* plaintext received, framed DNS messages */
	uint8_t *plain;
	uint32_t plain_len;
} dp_upconn_t;

#define DP_LAT_BUCKETS 32

typedef struct dp_upstream_state {
	uint32_t fails; /* consecutive connect/handshake failures */
	uint32_t ewma_us; /* answer latency, moving average (1/8 weight) */
	uint32_t samples;
	uint32_t hist[DP_LAT_BUCKETS]; /* latency histogram, halved now and then */
	uint32_t hist_n;
	uint32_t hedge_ms; /* current hedge delay (about the p95) */
	uint64_t last_traffic_ms; /* last client query sent to it */
	uint32_t timeouts_in_row; /* queries that timed out since its last answer */
	bool ever_up; /* a handshake with it has succeeded */
	uint32_t sent; /* client queries sent to it (saturates) */
	uint64_t down_until_ms;
	uint32_t first_conn; /* index of its first connection slot */
	SSL_SESSION *session; /* newest resumable session (ticket), owned */
} dp_upstream_state_t;

/* ---- UDP answers in flight ---------------------------------------------- */

typedef struct dp_udp_send {
	struct msghdr mh;
	struct iovec iov;
	struct sockaddr_in6 addr;
	uint32_t next_free;
	uint16_t len;
	uint8_t alen, li;
	uint8_t data[4096];
} dp_udp_send_t;


/* ---- the shard ---------------------------------------------------------- */

typedef struct dp_shard {
	int id;
	uint32_t nshards; /* shards in the process: a question's home is one of them */
	const dp_config_t *cfg;
	pthread_t thread;
	struct io_uring ring;
	bool ring_ok;
	bool ring_fd_registered; /* enter through the registered ring index */
	bool ring_no_iowait; /* the kernel lets our waits opt out of iowait */
	volatile int stop;
	int wake_fd;
	uint64_t wake_buf;
	uint64_t now_ms;
	uint64_t rate_t0_ns, rate_q0; /* query rate: window start, queries then */
	uint32_t q_per_ms; /* queries per ms in the last window */

	int udp_fd[DP_MAX_LISTEN];
	int tcp_fd[DP_MAX_LISTEN];
	int nlisten;
	bool udp_armed[DP_MAX_LISTEN];
	bool udp_live[DP_MAX_LISTEN]; /* a receive is in the kernel (drain waits for its end) */
	bool tcp_armed[DP_MAX_LISTEN];
	struct msghdr udp_recv_mh; /* template for multishot recvmsg */

	/* provided-buffer ring shared by UDP recvmsg and TCP recv */
	struct io_uring_buf_ring *br;
	uint8_t *br_mem;
	uint32_t br_count, br_size;
	size_t br_ring_bytes;

	dp_udp_send_t *sends;
	uint32_t send_cap, send_hiwater, send_free;
	bool udp_sendmsg; /* uring: the kernel takes no address on a send */

	dp_query_t *q;
	uint32_t q_cap, q_hiwater, q_free, q_used;
	uint32_t q_freed; /* slots freed since the TCP frontend last asked (fair share) */
	dp_cshare_t share; /* in-flight queries per client address (fair share) */
	dp_tw_t timers; /* query deadlines and hedge times, in ms */

	dp_upconn_t *conns;
	uint32_t nconns;
	dp_upstream_state_t up[DP_MAX_UPSTREAMS];
	uint32_t rr; /* round-robin cursor over upstreams */
	uint32_t explore; /* fastest policy: counts picks, every Nth explores */
	uint32_t hedge_budget; /* earned by primary sends, spent by hedges */
	uint32_t hedge_delay_ms; /* auto: smallest p95 among upstreams */
	uint32_t dirty_head; /* connections to flush at the end of the turn */
	SSL_CTX *ssl_ctx;

	dp_tcpconns_t tcp; /* client TCP connections (tcpconn.h) */
	dp_cshare_key_t *tcp_peer; /* per connection slot: its client address (fair share) */

	dp_ratelimit_t *rl; /* the machine's (main owns it) */
	dp_metrics_t metrics;
	/* control messages from the main thread (read after a wake) */
	dp_config_t *new_cfg; /* reload: adopt this config (atomic exchange) */
	SSL_CTX *new_ctx; /* and this TLS context, when the CA file changed */
	uint32_t cfg_gen; /* generation adopted, for the main thread to see */
	uint32_t pending_gen;
	int drain; /* set: stop taking queries, finish, exit */
	bool draining;
	bool reads_stopped; /* draining: receives cancelled (after a short grace) */
	uint64_t drain_deadline_ms;
	uint64_t drain_reads_stop_ms;
	int exited;
	dp_cache_t cache;
	bool cache_on;
	uint32_t *flight; /* in-flight table: open addressing, query index or DP_NONE */
	uint32_t flight_mask;
	uint8_t *scratch; /* one answer being built, 64 KiB */
	dp_stats_t stats;
	/* hand-off to home shards (handoff.c); xs NULL with one shard */
	dp_xshard_t *xs;
	struct dp_shard *all; /* every shard, [0, nshards) */
	bool xs_msg_ring; /* wake with IORING_OP_MSG_RING, else the eventfd */
	bool xs_quiet; /* counted in xs->quiet: hands off nothing more */
	bool xs_more; /* a queue was left with messages: do not sleep */
	uint64_t xs_wake[DP_XS_MAX_SHARDS / 64]; /* shards to wake this turn */
	uint64_t xs_in[DP_XS_MAX_SHARDS / 64]; /* shards whose queues to read */
	uint32_t xs_out_tcp_total;
	uint16_t xs_out_tcp[DP_XS_MAX_SHARDS]; /* our TCP queries at each home */
	int init_err;
	char init_msg[256];
} dp_shard_t;

/* Counters: the shard writes, other threads read; relaxed, no lock prefix. */
#define STAT_ADD(s, name, v) \
	__atomic_store_n(&(s)->stats.name, (s)->stats.name + (v), __ATOMIC_RELAXED)
#define STAT_INC(s, name) STAT_ADD(s, name, 1)
#define STAT_SET(s, name, v) __atomic_store_n(&(s)->stats.name, (v), __ATOMIC_RELAXED)

/* ---- engine.c ----------------------------------------------------------- */

/* Create listening sockets for every shard (SO_REUSEPORT), so bind errors
 * surface before any thread starts. fds[shard][listen] for UDP and TCP.
 * Returns 0 or a negative errno with err filled with a one-line message. */
int dp_engine_bind_all(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN],
		       int (*tcp)[DP_MAX_LISTEN], char *err, size_t errlen);

/* Start shard s's thread (it sets up its ring, TLS context and tables,
 * takes ownership of the given fds). Returns 0 or negative errno. */
int dp_shard_start(dp_shard_t *s);

/* Ask a shard to stop now (any thread) and wait for it. */
void dp_shard_stop(dp_shard_t *s);
/* Ask a shard to drain: stop reading queries, answer those in flight, exit
 * when done or after drain_ms (any thread). */
void dp_shard_drain(dp_shard_t *s, uint32_t drain_ms);
/* Hand a shard a new config (and TLS context, may be NULL) to adopt at its
 * next turn (any thread). The caller keeps both alive until cfg_gen shows
 * the shard took them. */
void dp_shard_reload(dp_shard_t *s, dp_config_t *cfg, SSL_CTX *ctx, uint32_t gen);
void dp_shard_join(dp_shard_t *s);

/* An SQE, submitting first when the SQ is full. Never NULL. Hot path. */
struct io_uring_sqe *dp_sqe(dp_shard_t *s);

/* The element of type T whose member m is at p. */
#define DP_CONTAINER_OF(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

/* Give a provided buffer back to the ring. Hot path. */
void dp_bufring_recycle(dp_shard_t *s, uint16_t bid);

/* ---- udp.c -------------------------------------------------------------- */
void dp_udp_arm(dp_shard_t *s, int li);
void dp_udp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, int li);
void dp_udp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t slot);
int dp_udp_init(dp_shard_t *s);
void dp_udp_free(dp_shard_t *s);
/* Send msg (len octets) to addr on listen socket li; copies msg. Hot path. */
void dp_udp_send(dp_shard_t *s, int li, const struct sockaddr_in6 *addr, const uint8_t *msg,
		 size_t len);

/* ---- tcp.c -------------------------------------------------------------- */
void dp_tcp_arm_accept(dp_shard_t *s, int li);
void dp_tcp_on_accept(dp_shard_t *s, struct io_uring_cqe *cqe, int li);
void dp_tcp_on_recv(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);
void dp_tcp_on_send(dp_shard_t *s, struct io_uring_cqe *cqe, uint32_t idx, uint32_t gen);
/* Queue an answer (copied, framed) to client connection idx/gen; dropped if
 * the connection is gone. Hot path. */
void dp_tcp_answer(dp_shard_t *s, uint32_t idx, uint32_t gen, const uint8_t *msg, size_t len);
/* Close idle clients whose time is up. */
void dp_tcp_expire(dp_shard_t *s);
/* End of a loop turn: one send per connection with queued answers. */
void dp_tcp_flush(dp_shard_t *s);
/* Drain: stop reading from every client connection (answers still go). */
void dp_tcp_stop_reading(dp_shard_t *s);
/* True when no client connection has a receive in the kernel, nor is
 * paused with frames or its socket still to read. */
bool dp_tcp_reads_done(dp_shard_t *s);
/* True when no client connection has answers waiting or being sent. */
bool dp_tcp_idle_output(dp_shard_t *s);
/* Teardown: shut every client socket; dp_tcp_free after the ring is gone. */
void dp_tcp_close_all(dp_shard_t *s);
void dp_tcp_free(dp_shard_t *s);
void dp_tcp_close(dp_shard_t *s, uint32_t idx);
/* Set up the shard's client table (--max-tcp-clients / shards). Allocates;
 * returns 0 or -ENOMEM. */
int dp_tcp_init(dp_shard_t *s);
/* A query of client connection idx/gen is in flight / finished. Hot path. */
void dp_tcp_query_begin(dp_shard_t *s, uint32_t idx, uint32_t gen);
void dp_tcp_query_end(dp_shard_t *s, uint32_t idx, uint32_t gen);
/* Once per loop turn, before the flushes (no frame, answer or query end on
 * the stack): resume the client connections paused by backpressure whose
 * turn has come (a query of theirs ended, or a slot freed for those refused
 * their fair share). Dispatches held frames: makes queries and answers. */
void dp_tcp_resume_pending(dp_shard_t *s);
/* After a reload: adopt --max-inflight-per-conn. */
void dp_tcp_reconfigure(dp_shard_t *s);

/* ---- query.c ------------------------------------------------------------ */
/* Handle one client query (msg is the receive buffer: read in place, copied
 * only into the query slot). For UDP, from/li say where to answer; for TCP,
 * tcp_idx/tcp_gen. Returns 0 when the query was taken (answered, dropped,
 * or in the table), DP_E_FULL when a TCP query was not taken because its
 * client address is at its fair share of a contended table: the caller
 * keeps it and offers it again later (a UDP one is answered SERVFAIL
 * instead). Hot path. */
int dp_query_from_client(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
			 const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen);
/* An upstream answer for the query in slot qi (already matched), from
 * upstream index upstream. Answers the client and frees the slot; but a
 * SERVFAIL first sends the query to an upstream that has not failed it. */
void dp_query_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
		     const dp_dns_view_t *v, int upstream);
/* Answer the query with SERVFAIL and free its slot. */
void dp_query_fail(dp_shard_t *s, uint32_t qi);
/* Teardown: answer every live query (SERVFAIL or stale) and free its slot. */
void dp_query_fail_all(dp_shard_t *s);
/* Start a probe (./IN/NS, no client) on connection ci. */
int dp_query_probe(dp_shard_t *s, uint32_t ci);
/* Copy the cache's own counters into the shard's (once per tick). */
void dp_query_publish_stats(dp_shard_t *s);
int dp_query_table_init(dp_shard_t *s);
void dp_query_table_free(dp_shard_t *s);

/* Resolve a query another shard handed us (its home): as
 * dp_query_from_client, without the ACL and rate limit the receiving shard
 * applied. tcp_idx is DP_XS_REMOTE-marked for a TCP client of another
 * shard, and peer is then that client's fair-share key (NULL for UDP: the
 * key comes from from). Hot path. */
void dp_query_from_shard(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
			 const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen,
			 uint64_t arrive_ns, const dp_cshare_key_t *peer);

/* ---- handoff.c ---------------------------------------------------------- */
/* A TCP client of another shard, as the home's query path names it: the
 * top bit set, the origin shard in bits 23-30, the slot in bits 0-22. */
#define DP_XS_REMOTE (1u << 31)
#define DP_XS_REMOTE_IDX(origin, idx) (DP_XS_REMOTE | ((uint32_t)(origin) << 23) | (idx))
#define DP_XS_ORIGIN(tidx) (((tidx) >> 23) & 0xff)
#define DP_XS_SLOT(tidx) ((tidx) & 0x7fffff)

/* Hand a validated client query (msg, len) to shard home. Returns 0 when
 * it went (home answers it), or a negative code: the caller resolves it
 * here (queue full, too large, hand-offs not running). Copies; hot path. */
int dp_handoff_query(dp_shard_t *s, uint32_t home, int transport, const uint8_t *msg,
		     size_t len, int li, const struct sockaddr_in6 *from, uint32_t tcp_idx,
		     uint32_t tcp_gen);
/* Home: the answer (len 0: none) for a remote TCP client tidx (marked)
 * goes back to its origin shard. Exactly one per query handed to us.
 * Copies; hot path. */
void dp_handoff_answer(dp_shard_t *s, uint32_t tidx, uint32_t tgen, const uint8_t *msg,
		       size_t len);
/* Loop: read the queues of the shards that woke us (bounded per turn). */
void dp_handoff_drain(dp_shard_t *s);
/* Loop, before submitting: wake every shard we queued messages for. */
void dp_handoff_wake(dp_shard_t *s);
/* Completions of OP_XSHARD / OP_XSHARD_SENT, and OP_WAKE (the eventfd). */
void dp_handoff_on_cqe(dp_shard_t *s, struct io_uring_cqe *cqe, enum dp_op op, uint32_t idx);
/* Draining: this shard reads no more queries. True when no shard hands
 * off anything any more, our incoming queues are empty and every TCP
 * query we handed off has its answer back. */
bool dp_handoff_quiet(dp_shard_t *s);
/* Set-up (in the shard's thread, once its ring exists). */
void dp_handoff_init(dp_shard_t *s);

/* ---- upstream.c --------------------------------------------------------- */
int dp_upstream_init(dp_shard_t *s);
void dp_upstream_free(dp_shard_t *s);
/* Send query qi upstream (picks upstream and connection). Returns 0, or a
 * negative code when no upstream can take it (caller answers SERVFAIL). */
int dp_upstream_send(dp_shard_t *s, uint32_t qi, int exclude_upstream);
/* Detach query qi from its connection (timeout/answer): frees its ID. */
void dp_upstream_detach(dp_shard_t *s, uint32_t qi);
void dp_upstream_on_cqe(dp_shard_t *s, struct io_uring_cqe *cqe, enum dp_op op, uint32_t idx,
			uint32_t gen);
/* End of a loop turn: one SSL_write and one send per connection with
 * queued queries. Hot path. */
void dp_upstream_flush(dp_shard_t *s);
/* Per tick: hedge delays, keepalive probes, idle closes, probes that bring
 * a down upstream back. (Handshake deadlines are timers on the wheel.) */
void dp_upstream_expire(dp_shard_t *s);
/* A query sent on connection ci timed out: a latency sample of the whole
 * timeout for its upstream; consecutive timeouts mark the upstream down. */
void dp_upstream_note_timeout(dp_shard_t *s, uint32_t ci);
/* Send query qi on connection ci (probes). */
int dp_upstream_send_on(dp_shard_t *s, uint32_t qi, uint32_t ci);
void dp_upstream_close_all(dp_shard_t *s);
/* After a reload: close connections of upstreams whose settings changed
 * (their queries move to the new upstreams), reset their state. */
void dp_upstream_reconfigure(dp_shard_t *s, const dp_config_t *old);
/* Tick: publish per-upstream gauges (in flight, healthy). */
void dp_upstream_publish(dp_shard_t *s);

/* ---- tls.c -------------------------------------------------------------- */
/* Client TLS context for upstreams: TLS 1.2+, verification against ca_file.
 * Allocates; returns NULL with err filled. */
SSL_CTX *dp_tls_client_ctx(const dp_config_t *cfg, char *err, size_t errlen);
/* A new client SSL for connection c, with SNI and name check for upstream
 * u, over BIOs that read c->rxbuf and append to c->pend directly (no copy
 * through memory BIOs). Allocates; returns 0 or DP_E_TLS. */
int dp_tls_new_session(SSL_CTX *ctx, const dp_upstream_cfg_t *u, dp_upconn_t *c, SSL **ssl);
/* 0 when the upstream has no pins or one of them matches a key of the
 * peer's chain, DP_E_TLS otherwise. */
int dp_tls_check_pins(SSL *ssl, const dp_upstream_cfg_t *u);
/* Describe why the handshake of ssl failed (verify result or error queue). */
void dp_tls_error_reason(SSL *ssl, int ret, char *out, size_t cap);

#endif
