/* shard-t.h - one shard: its io_uring, tables and counters (types only).
 *
 * A shard is a complete small proxy pinned to one CPU: it owns its ring, its
 * SO_REUSEPORT UDP sockets and TCP listeners, its provided-buffer ring, its
 * query table, its client TCP connections and its upstream TLS connections.
 * Nothing here is shared with another shard except the counters, which other
 * threads read with relaxed loads, the stop flag, the hand-off queues
 * (xshard.h: a query goes to its home shard, handoff.c) and the per-client
 * rate limiter (ratelimit.h).
 */
#ifndef DP_SHARD_T_H
#define DP_SHARD_T_H

#include "cache.h"
#include "client-t.h"
#include "clientshare.h"
#include "config.h"
#include "metrics.h"
#include "query-t.h"
#include "ratelimit.h"
#include "stats.h"
#include "tcpconn.h"
#include "tlsconn.h"
#include "timerwheel.h"
#include "udp-t.h"
#include "upconn-t.h"
#include "pool-t.h"
#include "xshard.h"

#include <liburing.h>
#include <pthread.h>

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
	int tls_fd[DP_MAX_LISTEN]; /* DNS-over-TLS and -HTTPS listeners (dp_config_enc) */
	int nlisten_tls;
	bool tls_armed[DP_MAX_LISTEN];
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

	dp_upconns_t upc; /* upstream connections (upconn.h) */
	dp_pool_t pool; /* upstream selection, health, hedging (pool.h) */
	SSL_CTX *ssl_ctx;

	/* How the query layer answers a client, by its transport (client-t.h):
	 * set by each frontend's init (udp.c, tcp.c, handoff.c). */
	const dp_frontend_ops_t *fe[DP_FRONTENDS];

	dp_tcpconns_t tcp; /* client TCP connections (tcpconn.h) */
	dp_cshare_key_t *tcp_peer; /* per connection slot: its client address (fair share) */
	dp_tlsconns_t tls; /* the TLS layer of TLS client connections (tlsconn.h) */
	struct sockaddr_in6 *tls_peer; /* per connection slot of a TLS one: its address (rate limit) */
	SSL_CTX *srv_ctx; /* TLS listeners' context (tlssrv.h); NULL without them */
	SSL_CTX *new_srv_ctx; /* reload: adopt this one (new handshakes only) */

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
	/* where a query handed to us goes (the query layer, set by engine) */
	void (*xs_deliver)(struct dp_shard *s, const dp_client_t *c, uint8_t *msg, size_t len);
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

#endif
