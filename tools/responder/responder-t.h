/* responder-t.h - the types every dot-responder module shares: limits, the
 * per-connection behaviour (behave_t), the counters, a connection slot
 * (conn_t), a delayed-answer entry (delayed_t) and a shard (shard_t).
 *
 * Types and constants only (HAProxy's -t.h split): any module can include it
 * without pulling in another module's functions. Which module owns and
 * changes each object is said at its type.
 */
#ifndef DOT_RESPONDER_T_H
#define DOT_RESPONDER_T_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <liburing.h>
#include <openssl/base.h>

#include "dp.h"

#define MAX_LISTEN 8
#define DEFAULT_MAX_CONNS 4096
#define RECV_BUF_SIZE 16384 /* one receive: about one full TLS record */
#define RECV_BUF_COUNT 256 /* per shard; power of two */
#define RECV_BGID 1
#define TX_BUF_SIZE 32768 /* ciphertext moved per send */
#define OUT_BATCH_CAP 16384 /* plaintext per SSL_write: one TLS record */
/* Room reserved per answer in the batch, length prefix included. The worst
 * answer is 318 bytes: a 271-byte question (255-byte name), an SOA
 * (NXDOMAIN by --name-ttl) and an OPT. */
#define ANSWER_MAX 512
/* plaintext in: a carried partial message plus one SSL_read (DP_DNS_MAX_MSG
 * is dns.h's; the files that use this include it) */
#define SCRATCH_CAP (2 + DP_DNS_MAX_MSG + 16384 + 64)
#define WBIO_LIMIT (256 * 1024) /* stop receiving above this much output */
#define RING_ENTRIES 2048
#define CQ_ENTRIES 8192
#define ANSWER_UDP_SIZE 1232

/* ---- per-connection behaviour ------------------------------------------ */

/* What a connection does with the queries it carries. Each connection points
 * at one of these (today all at the one the command line built, see
 * config.h); conn_open() picks it. The fault fields are all zero (off) by
 * default, and then nothing takes a slower path: on_message() tests `faulty`
 * once per answer, each handshake step tests `refuse_handshake` and
 * `handshake_delay_ms`, and the loop runs timers only when `delay_ms`,
 * `idle_close_ms` or `handshake_delay_ms` is set.
 * Where the faults take effect (fault.c unless said): fault_answer() (drop,
 * wrong ID or question, delay, close after N, torn record), stream_flush()
 * in stream.c (reorder), conn.c's handshake step (refused or stalled
 * handshake, TLS connections only), fault_timers() (delayed answers, stalled handshakes, idle
 * close). */
typedef struct behave {
	uint8_t a[4];
	uint8_t aaaa[16];
	uint32_t ttl;
	uint16_t udp_size; /* advertised in the OPT we echo */
	bool name_ttl; /* --name-ttl: the first label sets TTL and NXDOMAIN */
	/* ---- faults ---- */
	bool faulty; /* any per-answer fault below is on: on_message's slow path */
	bool reorder; /* each SSL_write's answers in reverse order */
	bool refuse_handshake; /* RST on the ClientHello */
	uint8_t drop_pct; /* never answer this share of queries */
	uint8_t delay_pct; /* of the answers, this share is delayed by delay_ms */
	uint8_t wrong_id_pct; /* answer under another ID (and never the right one) */
	uint8_t wrong_question_pct; /* answer with another name in the question */
	uint32_t delay_ms;
	uint32_t close_after; /* close_notify and close after this many answers; 0 = never */
	int32_t reset_after; /* answers sent whole before the torn record; -1 = never */
	uint32_t idle_close_ms; /* close_notify and close when idle this long; 0 = never */
	uint32_t handshake_delay_ms; /* hold the ClientHello this long; 0 = never */
} behave_t;

/* ---- counters ----------------------------------------------------------- */

#define COUNTERS(X)                                                            \
	X(connections) /* accepted */                                          \
	X(handshakes) /* completed */                                          \
	X(resumed) /* handshakes that resumed a session */                     \
	X(queries) /* complete DNS messages received */                        \
	X(plain_queries) /* of which on plain TCP connections (--listen-tcp) */ \
	X(answers) /* DNS messages sent back */                                \
	X(errors_answered) /* of which FORMERR, NOTIMP or BADVERS */           \
	X(nxdomain) /* of which NXDOMAIN (--name-ttl, "t<N>-nx...") */         \
	X(dropped) /* messages not answered (QR=1) */                          \
	X(malformed_closes) /* closed on an unreadable message */              \
	X(tls_errors) /* connections closed on a TLS failure */                \
	X(rejected) /* accepted over the connection cap and closed */          \
	X(closed) /* connections closed, any reason */                         \
	X(tls_writes) /* SSL_write calls (TLS connections only) */                                    \
	X(recvs)                                                               \
	X(sends)                                                               \
	X(enobufs) /* receives that found the buffer ring empty */             \
	X(fault_dropped) /* queries never answered (--drop-pct) */             \
	X(fault_delayed) /* answers held back (--delay-ms) */                  \
	X(fault_wrong_id) /* answers sent under another ID */                  \
	X(fault_wrong_question) /* answers sent with another name */           \
	X(fault_reordered) /* SSL_writes whose answers went out reversed */    \
	X(fault_closed_after) /* connections closed by --close-after */        \
	X(fault_idle_closed) /* connections closed by --idle-close-ms */       \
	X(fault_resets) /* connections reset after a torn record */            \
	X(fault_refused) /* handshakes refused with a reset */                 \
	X(fault_hs_delayed) /* handshakes held back (--handshake-delay-ms) */

typedef struct counters {
#define X(n) uint64_t n;
	COUNTERS(X)
#undef X
} counters_t;

/* Only the owning shard writes; the main thread reads with relaxed loads.
 * Load+store (not an atomic add) keeps the hot path free of locked ops. */
#define CNT_ADD(s, f, n) __atomic_store_n(&(s)->cnt.f, (s)->cnt.f + (n), __ATOMIC_RELAXED)
#define CNT_INC(s, f) CNT_ADD(s, f, 1)

/* ---- connection slots (conn.c) ------------------------------------------ */

enum { SLOT_FREE = 0, SLOT_OPEN, SLOT_CLOSED /* waiting for in-flight ops */ };

#define SLOT_NONE UINT32_MAX

typedef struct conn {
	int fd;
	uint32_t gen; /* bumped when the slot is released */
	uint8_t state;
	uint8_t inflight; /* recv + send SQEs not yet completed */
	bool recv_armed, send_armed;
	bool plain; /* accepted on a --listen-tcp listener: no TLS */
	bool hs_done; /* set from the start on a plain connection */
	bool rx_new; /* ciphertext fed since the last service */
	bool eof; /* peer closed (TCP FIN or TLS close_notify) */
	bool want_close; /* close once the output is sent */
	bool dirty;
	/* ---- faults (untouched when the behaviour has none) ---- */
	bool tls_shut; /* our close_notify is queued (plain: none): no more writes */
	bool reset_armed; /* RST once the (torn) output is sent */
	bool in_idle; /* on the shard's idle list */
	bool hs_held, hs_released; /* --handshake-delay-ms: waiting, then let go */
	uint32_t answered; /* answers made (sent, queued or delayed) */
	uint32_t delayed_pending; /* answers waiting in the delay queue */
	uint64_t last_active_ms; /* for --idle-close-ms */
	uint32_t idle_prev, idle_next;
	SSL *ssl; /* NULL on a plain connection */
	BIO *rbio, *wbio; /* BIO_s_mem pair, owned by ssl if any (stream.c) */
	uint8_t *tx; /* from the shard's pool while a send is in flight */
	uint32_t tx_len, tx_off;
	uint8_t *carry; /* partial DNS message between turns (malloc, rare) */
	uint32_t carry_len, carry_cap;
	const behave_t *bh;
	uint32_t next_free;
} conn_t;

/* ---- fault queues (fault.c) --------------------------------------------- */

/* An answer held back by --delay-ms: framed (2-byte length first), for the
 * connection slot conn while its generation is gen. Allocated per delayed
 * answer (the fault path only), freed when sent or dropped. Every delay is
 * the same, so the queue is a FIFO in due order. A held handshake
 * (--handshake-delay-ms) is an entry with len 0 on a queue of its own. */
typedef struct delayed {
	struct delayed *next;
	uint64_t due_ms;
	uint32_t conn, gen;
	uint32_t len; /* bytes in msg, length prefix included */
	uint8_t msg[];
} delayed_t;

/* ---- shards (shard.c) --------------------------------------------------- */

/* One thread and everything it serves. main.c fills the settings part
 * (id, listeners, wake_fd, ctx, bh, max_conns, timed, seed) before the
 * thread starts; the rest belongs to the shard thread alone. */
typedef struct shard {
	counters_t cnt; /* first: read by the main thread */
	int id;
	pthread_t thr;
	struct io_uring ring;
	bool ring_ok;
	bool stop;
	bool timed; /* timed faults on: the loop reads the clock, runs fault_timers() */
	int nlisten;
	int listen_fd[MAX_LISTEN];
	bool listen_plain[MAX_LISTEN]; /* --listen-tcp: its connections skip TLS */
	int wake_fd;
	uint64_t wake_val;
	SSL_CTX *ctx; /* shared by all shards, read-only; NULL without --listen */
	const behave_t *bh; /* given to every new connection */
	uint64_t seed; /* --seed, mixed with id into rng */
	struct __kernel_timespec backoff;
	struct io_uring_buf_ring *br;
	size_t br_size;
	uint8_t *rbufs;
	conn_t *conns;
	uint32_t max_conns;
	uint32_t free_head;
	uint32_t *dirty; /* slots to service at the end of this turn */
	uint32_t ndirty;
	uint8_t **txfree; /* stack of idle send buffers */
	uint32_t ntxfree;
	uint8_t *scratch; /* plaintext in: carry + stream_read() output */
	uint8_t *ob; /* plaintext out: the answer batch */
	size_t ob_len;
	conn_t *cur; /* connection whose messages are being answered */
	/* ---- faults ---- */
	uint64_t rng; /* xorshift64 state for the percentages */
	uint64_t now_ms; /* CLOCK_MONOTONIC, refreshed each turn when timers run */
	delayed_t *dq_head, *dq_tail; /* --delay-ms queue, due order */
	delayed_t *hq_head, *hq_tail; /* --handshake-delay-ms queue, due order */
	uint32_t idle_head, idle_tail; /* --idle-close-ms: least recently active first */
	uint32_t *rev; /* --reorder: offsets of the answers in ob */
	uint32_t nrev;
	uint8_t *ob2; /* --reorder: ob reversed */
} __attribute__((aligned(64))) shard_t;

#endif
