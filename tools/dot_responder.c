/* dot_responder.c - a fast synthetic DNS-over-TLS server for tests and
 * benchmarks (RFC 7858 framing, TLS 1.2 and 1.3, session tickets).
 *
 * Every A or AAAA query in class IN gets one fixed record; other types get
 * NOERROR with an empty answer. The question and ID are copied, and an OPT
 * (payload 1232, DO echoed) is added when the query carried one. With
 * --name-ttl a name's first label sets its TTL ("t300-...") or makes it not
 * exist ("t300-nx...": NXDOMAIN with an SOA), for workloads of many names.
 *
 * Shape: one shard per --threads, each a thread owning an io_uring, one
 * SO_REUSEPORT listener per --listen address, a provided-buffer ring for
 * receives, a table of connection slots and a pool of send buffers. TLS runs
 * over two BIO_s_mem per connection; io_uring only moves ciphertext. One loop
 * turn is:
 *
 *   submit_and_wait (one syscall for every SQE queued by the previous turn)
 *   for each CQE: accept -> new slot; recv -> BIO_write the ciphertext,
 *                 give the buffer back, mark the slot dirty; send -> advance,
 *                 resend the rest of a partial send, or mark dirty
 *   for each dirty slot: handshake or SSL_read until empty, answer every
 *                 complete message into one plaintext batch, ONE SSL_write,
 *                 move the ciphertext to a send buffer, queue one send,
 *                 re-arm the recv unless output is backed up
 *
 * Marking slots dirty and servicing them after the CQE pass is what makes
 * the SSL_write once per connection per turn, however many receives landed.
 *
 * Memory per connection is bounded: rbio holds at most one receive plus a
 * partial record (receives are re-armed only after rbio was drained), wbio
 * at most WBIO_LIMIT plus one turn of answers (receives stop above it), a
 * partial DNS message at most 65537 bytes, a send buffer only while a send
 * is in flight.
 *
 * Fault injection (--delay-ms, --drop-pct, --reorder, --wrong-id-pct,
 * --wrong-question-pct, --close-after, --idle-close-ms, --reset-mid-record,
 * --refuse-handshake, --handshake-delay-ms) lives in behave_t and a few
 * fault_* functions; with none set the path above is unchanged but for one
 * predictable branch per answer. Timed faults add a deadline to the wait.
 *
 * Owns: the SSL_CTX (shared, read-only after start), the shards and
 * everything in them (with the fault queues of delayed answers and held
 * handshakes). Counters are per shard, summed by the main thread.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "dns.h"
#include "tcpframe.h"

#define MAX_LISTEN 8
#define DEFAULT_MAX_CONNS 4096
#define RECV_BUF_SIZE 16384 /* one receive: about one full TLS record */
#define RECV_BUF_COUNT 256 /* per shard; power of two */
#define RECV_BGID 1
#define TX_BUF_SIZE 32768 /* ciphertext moved per send */
#define OUT_BATCH_CAP 16384 /* plaintext per SSL_write: one TLS record */
#define ANSWER_MAX 512 /* worst answer is ~310 bytes plus the length */
#define SCRATCH_CAP (2 + DP_DNS_MAX_MSG + 16384 + 64)
#define WBIO_LIMIT (256 * 1024) /* stop receiving above this much output */
#define RING_ENTRIES 2048
#define CQ_ENTRIES 8192
#define ANSWER_UDP_SIZE 1232

/* ---- per-connection behaviour ------------------------------------------ */

/* What a connection does with the queries it carries. Each connection points
 * at one of these (today all at the global one, set by the command line);
 * conn_open() picks it. The fault fields are all zero (off) by default, and
 * then nothing below takes a slower path: on_message() tests `faulty` once
 * per answer, the handshake tests `refuse_handshake` and
 * `handshake_delay_ms` once per connection, and the loop runs timers only
 * when `delay_ms`, `idle_close_ms` or `handshake_delay_ms` is set.
 * Where the faults take effect: fault_answer() (drop, wrong ID or question,
 * delay, close after N, torn record), ob_flush() (reorder), tls_process()
 * (refused or stalled handshake), fault_timers() (delayed answers, stalled
 * handshakes, idle close). */
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
	X(answers) /* DNS messages sent back */                                \
	X(errors_answered) /* of which FORMERR, NOTIMP or BADVERS */           \
	X(nxdomain) /* of which NXDOMAIN (--name-ttl, "t<N>-nx...") */         \
	X(dropped) /* messages not answered (QR=1) */                          \
	X(malformed_closes) /* closed on an unreadable message */              \
	X(tls_errors) /* connections closed on a TLS failure */                \
	X(rejected) /* accepted over the connection cap and closed */          \
	X(closed) /* connections closed, any reason */                         \
	X(tls_writes) /* SSL_write calls */                                    \
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

/* ---- connection slots --------------------------------------------------- */

enum { SLOT_FREE = 0, SLOT_OPEN, SLOT_CLOSED /* waiting for in-flight ops */ };

typedef struct conn {
	int fd;
	uint32_t gen; /* bumped when the slot is released */
	uint8_t state;
	uint8_t inflight; /* recv + send SQEs not yet completed */
	bool recv_armed, send_armed;
	bool hs_done;
	bool rx_new; /* ciphertext fed since the last service */
	bool eof; /* peer closed (TCP FIN or TLS close_notify) */
	bool want_close; /* close once the output is sent */
	bool dirty;
	/* ---- faults (untouched when the behaviour has none) ---- */
	bool tls_shut; /* our close_notify is queued: no SSL_write any more */
	bool reset_armed; /* RST once the (torn) output is sent */
	bool in_idle; /* on the shard's idle list */
	bool hs_held, hs_released; /* --handshake-delay-ms: waiting, then let go */
	uint32_t answered; /* answers made (sent, queued or delayed) */
	uint32_t delayed_pending; /* answers waiting in the delay queue */
	uint64_t last_active_ms; /* for --idle-close-ms */
	uint32_t idle_prev, idle_next;
	SSL *ssl;
	BIO *rbio, *wbio; /* owned by ssl */
	uint8_t *tx; /* from the shard's pool while a send is in flight */
	uint32_t tx_len, tx_off;
	uint8_t *carry; /* partial DNS message between turns (malloc, rare) */
	uint32_t carry_len, carry_cap;
	const behave_t *bh;
	uint32_t next_free;
} conn_t;

#define SLOT_NONE UINT32_MAX

/* user_data: op (8 bits) | generation (24 bits) | slot or listener (32). */
enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_WAKE, OP_TIMEOUT };

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

static inline uint64_t ud_make(unsigned op, uint32_t gen, uint32_t idx)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & 0xffffffu) << 32) | idx;
}

/* ---- shards ------------------------------------------------------------- */

typedef struct shard {
	counters_t cnt; /* first: read by the main thread */
	int id;
	pthread_t thr;
	struct io_uring ring;
	bool ring_ok;
	bool stop;
	int nlisten;
	int listen_fd[MAX_LISTEN];
	int wake_fd;
	uint64_t wake_val;
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
	uint8_t *scratch; /* plaintext in: carry + SSL_read output */
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

/* ---- global configuration (read-only once shards run) ------------------- */

static struct {
	struct sockaddr_storage listen[MAX_LISTEN];
	socklen_t listen_len[MAX_LISTEN];
	int nlisten;
	const char *cert, *key;
	int threads;
	uint32_t max_conns;
	uint16_t tls_min, tls_max;
	behave_t behave;
	bool timed; /* --delay-ms, --idle-close-ms or --handshake-delay-ms: timers */
	uint64_t seed; /* --seed: the percentages' random sequence */
	SSL_CTX *ctx;
} g = {
	.threads = 1,
	.max_conns = DEFAULT_MAX_CONNS,
	.tls_min = TLS1_2_VERSION,
	.tls_max = TLS1_3_VERSION,
	.behave = { .a = { 192, 0, 2, 1 },
		    .aaaa = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 },
		    .ttl = 300,
		    .udp_size = ANSWER_UDP_SIZE,
		    .delay_pct = 100,
		    .reset_after = -1 },
};

static shard_t *g_shards;

static pthread_mutex_t g_ready_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_ready_cv = PTHREAD_COND_INITIALIZER;
static int g_ready, g_failed;

/* ---- answers ------------------------------------------------------------ */

enum { ANS_DROP = -1, ANS_CLOSE = -2 };

#define SOA_RDLEN 24 /* two compressed names, five 32-bit fields */
#define SOA_RR_LEN (12 + SOA_RDLEN) /* with a compressed owner */

/* --name-ttl: read the question's first label. "t<N>-..." (case ignored)
 * sets the TTL to N seconds; "t<N>-nx..." makes the name not exist. Any
 * other name keeps the command line's TTL and exists. Returns true when
 * the name does not exist. Only with --name-ttl, so not the default path. */
static bool name_rule(const uint8_t *q, const dp_dns_view_t *v, uint32_t *ttl)
{
	if (!v->has_question)
		return false;
	const uint8_t *l = q + v->qname_off;
	size_t len = l[0], i = 2;
	uint64_t n = 0;
	/* a name with a parent (the SOA's owner), first label "t" digits "-" */
	if (len < 3 || l[1 + len] == 0 || (l[1] | 0x20) != 't')
		return false;
	for (; i <= len && l[i] >= '0' && l[i] <= '9' && n <= INT32_MAX; i++)
		n = n * 10 + (uint64_t)(l[i] - '0');
	if (i == 2 || i > len || l[i] != '-' || n > INT32_MAX)
		return false;
	*ttl = (uint32_t)n;
	return i + 2 <= len && (l[i + 1] | 0x20) == 'n' && (l[i + 2] | 0x20) == 'x';
}

/* The authority section of a --name-ttl NXDOMAIN: the SOA of the parent of
 * the question name (owner, MNAME and RNAME all point into the question),
 * TTL and MINIMUM both ttl, so a cache keeps the negative answer ttl
 * seconds (RFC 2308 5). Writes SOA_RR_LEN bytes at p. */
static void put_soa(uint8_t *p, const dp_dns_view_t *v, uint8_t label_len, uint32_t ttl)
{
	static const uint32_t timers[4] = { 1, 3600, 600, 86400 }; /* serial .. expire */
	uint16_t zone = (uint16_t)(0xc000 | (v->qname_off + 1 + label_len));
	dp_wr16(p, zone);
	dp_wr16(p + 2, 6); /* SOA */
	dp_wr16(p + 4, 1);
	dp_wr16(p + 6, (uint16_t)(ttl >> 16));
	dp_wr16(p + 8, (uint16_t)ttl);
	dp_wr16(p + 10, SOA_RDLEN);
	dp_wr16(p + 12, zone); /* MNAME */
	dp_wr16(p + 14, zone); /* RNAME */
	for (int i = 0; i < 4; i++) {
		dp_wr16(p + 16 + 4 * i, (uint16_t)(timers[i] >> 16));
		dp_wr16(p + 18 + 4 * i, (uint16_t)timers[i]);
	}
	dp_wr16(p + 32, (uint16_t)(ttl >> 16)); /* MINIMUM */
	dp_wr16(p + 34, (uint16_t)ttl);
}

/* Build the answer to query q (len bytes) into out. Returns its length,
 * ANS_DROP (send nothing) or ANS_CLOSE (unreadable: close the connection).
 * Hot path, no allocation; out_cap >= ANSWER_MAX - 2 always suffices. */
static int answer_build(shard_t *s, const behave_t *bh, const uint8_t *q, size_t len,
			uint8_t *out, size_t out_cap)
{
	dp_dns_view_t v;
	int rc = dp_dns_parse_query(q, len, &v), rcode;

	switch (rc) {
	case 0:
		break;
	case DP_E_MALFORMED:
		return ANS_CLOSE;
	case DP_E_RESPONSE:
		return ANS_DROP;
	case DP_E_NOTIMP:
		rcode = DP_DNS_RCODE_NOTIMP;
		goto error;
	case DP_E_BADVERS:
		rcode = DP_DNS_RCODE_BADVERS;
		goto error;
	default:
		rcode = DP_DNS_RCODE_FORMERR;
		goto error;
	}

	uint32_t ttl = bh->ttl;
	bool nx = unlikely(bh->name_ttl) && name_rule(q, &v, &ttl);
	const uint8_t *rdata = NULL;
	size_t rdlen = 0;
	if (nx) {
		/* no answer record: an SOA in the authority section */
	} else if (v.qclass == 1 && v.qtype == 1) {
		rdata = bh->a;
		rdlen = sizeof(bh->a);
	} else if (v.qclass == 1 && v.qtype == 28) {
		rdata = bh->aaaa;
		rdlen = sizeof(bh->aaaa);
	}
	size_t qend = v.question_end;
	size_t need = qend + (rdlen ? 12 + rdlen : 0) + (nx ? SOA_RR_LEN : 0) + (v.has_opt ? 11 : 0);
	if (need > out_cap)
		return ANS_CLOSE;

	uint16_t flags = (uint16_t)(DP_DNS_F_QR | DP_DNS_F_RA |
				    (v.flags & (DP_DNS_F_RD | DP_DNS_F_CD)) |
				    (nx ? DP_DNS_RCODE_NXDOMAIN : 0));
	dp_wr16(out, v.id);
	dp_wr16(out + 2, flags);
	dp_wr16(out + 4, 1);
	dp_wr16(out + 6, rdlen ? 1 : 0);
	dp_wr16(out + 8, nx ? 1 : 0);
	dp_wr16(out + 10, v.has_opt ? 1 : 0);
	memcpy(out + DP_DNS_HDR_LEN, q + DP_DNS_HDR_LEN, qend - DP_DNS_HDR_LEN);
	uint8_t *p = out + qend;
	if (rdlen) {
		p[0] = 0xc0; /* pointer to the question name at offset 12 */
		p[1] = DP_DNS_HDR_LEN;
		dp_wr16(p + 2, v.qtype);
		dp_wr16(p + 4, 1);
		dp_wr16(p + 6, (uint16_t)(ttl >> 16));
		dp_wr16(p + 8, (uint16_t)ttl);
		dp_wr16(p + 10, (uint16_t)rdlen);
		memcpy(p + 12, rdata, rdlen);
		p += 12 + rdlen;
	}
	if (nx) {
		put_soa(p, &v, q[v.qname_off], ttl);
		p += SOA_RR_LEN;
		CNT_INC(s, nxdomain);
	}
	if (v.has_opt) {
		p[0] = 0; /* root owner */
		dp_wr16(p + 1, DP_DNS_TYPE_OPT);
		dp_wr16(p + 3, bh->udp_size);
		p[5] = 0; /* extended RCODE */
		p[6] = 0; /* version */
		p[7] = v.do_bit ? 0x80 : 0;
		p[8] = 0;
		dp_wr16(p + 9, 0); /* no options */
	}
	return (int)need;

error:
	CNT_INC(s, errors_answered);
	rc = dp_dns_build_error(q, &v, rcode, bh->udp_size, out, out_cap);
	return rc < 0 ? ANS_CLOSE : rc;
}

/* ---- io_uring helpers --------------------------------------------------- */

static struct io_uring_sqe *get_sqe(shard_t *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (unlikely(!sqe)) {
		/* SQ full within one turn (thousands of busy connections): push
		 * what we have and carry on. */
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
		if (!sqe) {
			fprintf(stderr, "dot-responder: shard %d: no SQE after submit\n", s->id);
			abort();
		}
	}
	return sqe;
}

static inline uint32_t conn_idx(shard_t *s, conn_t *c)
{
	return (uint32_t)(c - s->conns);
}

static void arm_accept(shard_t *s, int li, bool backoff)
{
	struct io_uring_sqe *sqe;
	if (backoff) {
		/* The accept failed (EMFILE, ENFILE, ENOMEM): wait a little
		 * instead of spinning. A hard link runs the accept even though
		 * the timeout "fails" with -ETIME. */
		sqe = get_sqe(s);
		io_uring_prep_timeout(sqe, &s->backoff, 0, 0);
		sqe->flags |= IOSQE_IO_HARDLINK;
		io_uring_sqe_set_data64(sqe, ud_make(OP_TIMEOUT, 0, 0));
	}
	sqe = get_sqe(s);
	io_uring_prep_multishot_accept(sqe, s->listen_fd[li], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, (uint32_t)li));
}

static void arm_wake(shard_t *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);
	io_uring_prep_read(sqe, s->wake_fd, &s->wake_val, sizeof(s->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0));
}

static void arm_recv(shard_t *s, conn_t *c)
{
	struct io_uring_sqe *sqe = get_sqe(s);
	io_uring_prep_recv(sqe, c->fd, NULL, RECV_BUF_SIZE, 0);
	/* Armed right after rbio was drained, so the socket is usually empty:
	 * wait for readiness rather than try a receive that would fail. */
	sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RECV_BGID;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->gen, conn_idx(s, c)));
	c->recv_armed = true;
	c->inflight++;
}

/* Only one send in flight per socket: a second one could be reordered
 * against the first, and the ciphertext stream must stay in order. */
static void arm_send(shard_t *s, conn_t *c)
{
	struct io_uring_sqe *sqe = get_sqe(s);
	io_uring_prep_send(sqe, c->fd, c->tx + c->tx_off, c->tx_len - c->tx_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, conn_idx(s, c)));
	c->send_armed = true;
	c->inflight++;
	CNT_INC(s, sends);
}

static inline void recv_buf_return(shard_t *s, unsigned bid)
{
	io_uring_buf_ring_add(s->br, s->rbufs + (size_t)bid * RECV_BUF_SIZE, RECV_BUF_SIZE,
			      (unsigned short)bid, io_uring_buf_ring_mask(RECV_BUF_COUNT), 0);
	io_uring_buf_ring_advance(s->br, 1);
}

/* Send buffers: a stack of fixed buffers; malloc only when it is empty, so
 * the steady state allocates nothing. At most one per connection exists. */
static uint8_t *tx_get(shard_t *s)
{
	if (s->ntxfree)
		return s->txfree[--s->ntxfree];
	return malloc(TX_BUF_SIZE);
}

static void tx_put(shard_t *s, conn_t *c)
{
	if (c->tx)
		s->txfree[s->ntxfree++] = c->tx;
	c->tx = NULL;
	c->tx_len = c->tx_off = 0;
}

static inline void mark_dirty(shard_t *s, conn_t *c)
{
	if (!c->dirty) {
		c->dirty = true;
		s->dirty[s->ndirty++] = conn_idx(s, c);
	}
}

/* ---- faults: clock, dice, idle list --------------------------------------- */

/* Codes on_message() returns to stop the split (beside DP_E_*). */
#define FAULT_STOP (DP_E_BASE - 100) /* --close-after reached: close_notify, close */
#define FAULT_RESET (DP_E_BASE - 101) /* torn record queued: reset once it is sent */

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

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

/* The idle list (--idle-close-ms): open connections, least recently active
 * first. Every connection has the same limit, so expiry only looks at the
 * head; activity moves a connection to the tail. O(1) both. */
static void idle_unlink(shard_t *s, conn_t *c)
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

static void idle_touch(shard_t *s, conn_t *c)
{
	idle_unlink(s, c);
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

/* ---- connections -------------------------------------------------------- */

static void conn_release(shard_t *s, conn_t *c)
{
	c->state = SLOT_FREE;
	c->gen++;
	c->next_free = s->free_head;
	s->free_head = conn_idx(s, c);
}

/* Close now. In-flight SQEs keep the file alive; shutdown() makes them
 * complete, and the slot is released when the last one has. */
static void conn_close(shard_t *s, conn_t *c)
{
	if (c->state != SLOT_OPEN)
		return;
	c->state = SLOT_CLOSED;
	if (unlikely(c->in_idle))
		idle_unlink(s, c);
	/* A reset (SO_LINGER 0 set) must not send a FIN first: SHUT_RD only
	 * wakes the pending receive, and the last reference then resets. */
	if (c->inflight)
		shutdown(c->fd, unlikely(c->reset_armed) ? SHUT_RD : SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	SSL_free(c->ssl);
	c->ssl = NULL;
	c->rbio = c->wbio = NULL;
	free(c->carry);
	c->carry = NULL;
	c->carry_len = c->carry_cap = 0;
	if (!c->send_armed)
		tx_put(s, c);
	CNT_INC(s, closed);
	if (c->inflight == 0)
		conn_release(s, c);
}

/* A freshly accepted socket. Allocates the SSL object and its BIOs. */
static void conn_open(shard_t *s, int fd)
{
	if (s->free_head == SLOT_NONE) {
		close(fd);
		CNT_INC(s, rejected);
		return;
	}
	uint32_t i = s->free_head;
	conn_t *c = &s->conns[i];

	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	SSL *ssl = SSL_new(g.ctx);
	BIO *rbio = BIO_new(BIO_s_mem());
	BIO *wbio = BIO_new(BIO_s_mem());
	if (!ssl || !rbio || !wbio) {
		SSL_free(ssl);
		BIO_free(rbio);
		BIO_free(wbio);
		ERR_clear_error();
		close(fd);
		CNT_INC(s, rejected);
		return;
	}
	s->free_head = c->next_free;
	SSL_set_bio(ssl, rbio, wbio); /* ssl owns both */
	SSL_set_accept_state(ssl);

	uint32_t gen = c->gen;
	memset(c, 0, sizeof(*c));
	c->gen = gen;
	c->fd = fd;
	c->state = SLOT_OPEN;
	c->ssl = ssl;
	c->rbio = rbio;
	c->wbio = wbio;
	c->bh = &g.behave;
	c->next_free = SLOT_NONE;
	c->idle_prev = c->idle_next = SLOT_NONE;
	if (unlikely(c->bh->idle_close_ms))
		idle_touch(s, c);
	CNT_INC(s, connections);
	arm_recv(s, c);
}

/* Fault: reset the connection now (SO_LINGER 0, then close: an RST and no
 * FIN). Whatever is still queued is lost, as on a crash. */
static void conn_reset(shard_t *s, conn_t *c)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	c->reset_armed = true;
	conn_close(s, c);
}

/* Fault: close_notify after what is already written, then close once it
 * is sent. Queries still unread are dropped (a socket closed with unread
 * data resets), and so are answers still in the delay queue. */
static void conn_close_notify(shard_t *s, conn_t *c)
{
	if (!c->tls_shut) {
		SSL_shutdown(c->ssl);
		ERR_clear_error();
		c->tls_shut = true;
	}
	c->want_close = true;
	idle_unlink(s, c);
	mark_dirty(s, c);
}

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

/* --reorder: the answers of ob (offsets in rev) last first, into ob2. */
static const uint8_t *ob_reversed(shard_t *s)
{
	size_t o = 0;
	for (uint32_t i = s->nrev; i-- > 0;) {
		size_t a = s->rev[i], b = i + 1 < s->nrev ? s->rev[i + 1] : s->ob_len;
		memcpy(s->ob2 + o, s->ob + a, b - a);
		o += b - a;
	}
	return s->ob2;
}

/* Encrypt the answer batch with one SSL_write. */
static int ob_flush(shard_t *s, conn_t *c)
{
	if (!s->ob_len)
		return 0;
	const uint8_t *out = s->ob;
	if (unlikely(s->nrev > 1)) {
		out = ob_reversed(s);
		CNT_INC(s, fault_reordered);
	}
	s->nrev = 0;
	int r = SSL_write(c->ssl, out, (int)s->ob_len);
	s->ob_len = 0;
	CNT_INC(s, tls_writes);
	if (r <= 0) {
		ERR_clear_error();
		return DP_E_TLS;
	}
	return 0;
}

/* --reset-mid-record: the answer in frame (len bytes) is the one to tear.
 * What the batch holds goes out whole; this answer is encrypted into its
 * own record, and only the first half of that record is kept for sending.
 * conn_service() resets the connection once that is sent. */
static void tear_record(shard_t *s, conn_t *c, const uint8_t *frame, size_t len)
{
	if (ob_flush(s, c) < 0) /* frame lies beyond ob_len: untouched */
		ERR_clear_error();
	size_t before = BIO_pending(c->wbio);
	if (SSL_write(c->ssl, frame, (int)len) <= 0)
		ERR_clear_error();
	CNT_INC(s, tls_writes);
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

/* on_message() for a connection with faults: the answer (n bytes) was built
 * at frame + 2, behind the batch. Decide its fate; returns 0, FAULT_STOP or
 * FAULT_RESET. Not the hot path: only with fault flags. */
static int fault_answer(shard_t *s, conn_t *c, uint8_t *frame, int n)
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
		/* Another name of the same length (the first letter changed),
		 * or for the root name another type. */
		if (m[DP_DNS_HDR_LEN] > 0) {
			uint8_t ch = m[DP_DNS_HDR_LEN + 1];
			m[DP_DNS_HDR_LEN + 1] = (ch | 0x20) == 'q' ? 'z' : 'q';
		} else {
			dp_wr16(m + DP_DNS_HDR_LEN + 1, (uint16_t)(dp_rd16(m + DP_DNS_HDR_LEN + 1) ^ 1));
		}
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

/* dp_tcpframe_split() callback: answer one complete message into the batch. */
static int on_message(void *ctx, uint8_t *msg, size_t len)
{
	shard_t *s = ctx;
	conn_t *c = s->cur;
	CNT_INC(s, queries);
	if (s->ob_len + ANSWER_MAX > OUT_BATCH_CAP && ob_flush(s, c) < 0)
		return DP_E_TLS;
	uint8_t *out = s->ob + s->ob_len;
	int n = answer_build(s, c->bh, msg, len, out + 2, OUT_BATCH_CAP - s->ob_len - 2);
	if (n == ANS_DROP) {
		CNT_INC(s, dropped);
		return 0;
	}
	if (n < 0) {
		CNT_INC(s, malformed_closes);
		return DP_E_MALFORMED;
	}
	if (unlikely(c->bh->faulty))
		return fault_answer(s, c, out, n);
	dp_wr16(out, (uint16_t)n);
	s->ob_len += 2 + (size_t)n;
	CNT_INC(s, answers);
	return 0;
}

static void tls_failed(shard_t *s, conn_t *c)
{
	ERR_clear_error();
	CNT_INC(s, tls_errors);
	c->want_close = true; /* after sending any alert BoringSSL queued */
}

/* Run the handshake, then drain every complete message out of rbio and
 * answer them with one SSL_write. Hot path. */
static void tls_process(shard_t *s, conn_t *c)
{
	if (!c->hs_done) {
		if (unlikely(c->bh->refuse_handshake)) {
			/* The ClientHello arrived: reset instead of answering it. */
			CNT_INC(s, fault_refused);
			conn_reset(s, c);
			return;
		}
		if (unlikely(c->bh->handshake_delay_ms) && !c->hs_released) {
			/* The ClientHello waits in rbio; fault_timers() lets
			 * the handshake go on (without memory: at once). */
			if (!c->hs_held) {
				c->hs_held = true;
				CNT_INC(s, fault_hs_delayed);
				if (fault_queue(s, c, &s->hq_head, &s->hq_tail,
						c->bh->handshake_delay_ms, NULL, 0))
					return;
				c->hs_released = true;
			} else {
				return;
			}
		}
		int r = SSL_do_handshake(c->ssl);
		if (r != 1) {
			if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ)
				tls_failed(s, c);
			return;
		}
		c->hs_done = true;
		CNT_INC(s, handshakes);
		if (SSL_session_reused(c->ssl))
			CNT_INC(s, resumed);
	}

	/* The scratch holds the carried partial message, then SSL_read output.
	 * After each split the remainder (< 2 + 65535 bytes) moves to the
	 * front, so a full record always fits behind it. */
	uint8_t *buf = s->scratch;
	size_t have = c->carry_len;
	if (have)
		memcpy(buf, c->carry, have);
	c->carry_len = 0;
	s->cur = c;
	s->ob_len = 0;
	s->nrev = 0;

	int r, err;
	long used = 0;
	for (;;) {
		r = SSL_read(c->ssl, buf + have, (int)(SCRATCH_CAP - have));
		if (r <= 0)
			break;
		have += (size_t)r;
		used = dp_tcpframe_split(buf, have, on_message, s);
		if (used < 0)
			break;
		if (used) {
			have -= (size_t)used;
			memmove(buf, buf + used, have);
		}
	}
	err = used < 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);

	if (ob_flush(s, c) < 0) {
		tls_failed(s, c);
		return;
	}
	if (used < 0) {
		/* Zero-length frame or unreadable message: answers already
		 * written go out, then we close. */
		if (used == DP_E_TLS)
			tls_failed(s, c);
		else if (used == FAULT_STOP)
			conn_close_notify(s, c);
		else if (used != FAULT_RESET) /* that one: conn_service() */
			c->want_close = true;
		return;
	}
	switch (err) {
	case SSL_ERROR_WANT_READ:
		break;
	case SSL_ERROR_ZERO_RETURN: /* close_notify: answer with ours */
		c->eof = true;
		c->tls_shut = true;
		SSL_shutdown(c->ssl);
		ERR_clear_error();
		return;
	default:
		tls_failed(s, c);
		return;
	}
	if (have) {
		if (have > c->carry_cap) {
			uint8_t *n = realloc(c->carry, have);
			if (!n) {
				c->want_close = true;
				return;
			}
			c->carry = n;
			c->carry_cap = (uint32_t)have;
		}
		memcpy(c->carry, buf, have);
		c->carry_len = (uint32_t)have;
	}
}

/* Move pending ciphertext into a send buffer and queue one send. */
static void flush_send(shard_t *s, conn_t *c)
{
	if (c->send_armed)
		return;
	size_t pend = BIO_pending(c->wbio);
	if (!pend)
		return;
	if (!c->tx && !(c->tx = tx_get(s))) {
		conn_close(s, c);
		return;
	}
	int n = BIO_read(c->wbio, c->tx, (int)DP_MIN(pend, (size_t)TX_BUF_SIZE));
	if (n <= 0) {
		conn_close(s, c);
		return;
	}
	c->tx_len = (uint32_t)n;
	c->tx_off = 0;
	arm_send(s, c);
}

/* End-of-turn work for one connection: TLS, one send, re-arm the recv. */
static void conn_service(shard_t *s, conn_t *c)
{
	c->dirty = false;
	if (c->state != SLOT_OPEN)
		return;
	if (c->rx_new) {
		c->rx_new = false;
		/* After a fault's close or tear, what still arrives is ignored. */
		if (likely(!c->want_close && !c->reset_armed))
			tls_process(s, c);
		if (c->state != SLOT_OPEN)
			return;
	}
	flush_send(s, c);
	if (c->state != SLOT_OPEN)
		return;
	if (unlikely(c->reset_armed)) {
		if (!c->send_armed && BIO_pending(c->wbio) == 0)
			conn_reset(s, c);
		return;
	}
	if (c->want_close || c->eof) {
		/* Half-closed by the peer (FIN, no close_notify): answers in
		 * the delay queue still go out before we close. */
		if (unlikely(c->delayed_pending) && !c->want_close && !c->tls_shut)
			return;
		if (!c->send_armed)
			conn_close(s, c);
		return;
	}
	if (!c->recv_armed && BIO_pending(c->wbio) < WBIO_LIMIT)
		arm_recv(s, c);
}

/* ---- completions -------------------------------------------------------- */

static void on_recv(shard_t *s, conn_t *c, uint32_t gen, struct io_uring_cqe *cqe)
{
	int res = cqe->res;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		if (res > 0 && c->state == SLOT_OPEN && gen == (c->gen & 0xffffffu)) {
			/* A mem BIO write only fails on allocation failure. */
			if (BIO_write(c->rbio, s->rbufs + (size_t)bid * RECV_BUF_SIZE, res) != res)
				res = -ENOMEM;
		}
		recv_buf_return(s, bid);
	}
	c->recv_armed = false;
	c->inflight--;
	if (c->state != SLOT_OPEN) {
		if (c->state == SLOT_CLOSED && c->inflight == 0)
			conn_release(s, c);
		return;
	}
	CNT_INC(s, recvs);
	if (res > 0) {
		c->rx_new = true;
		if (unlikely(c->in_idle))
			idle_touch(s, c);
		mark_dirty(s, c);
	} else if (res == 0) {
		c->eof = true;
		mark_dirty(s, c);
	} else if (res == -ENOBUFS) {
		/* Every buffer was taken this turn; they are back by the end of
		 * it, so re-arming in conn_service() does not spin. */
		CNT_INC(s, enobufs);
		mark_dirty(s, c);
	} else {
		conn_close(s, c);
	}
}

static void on_send(shard_t *s, conn_t *c, struct io_uring_cqe *cqe)
{
	c->send_armed = false;
	c->inflight--;
	if (c->state != SLOT_OPEN) {
		tx_put(s, c);
		if (c->state == SLOT_CLOSED && c->inflight == 0)
			conn_release(s, c);
		return;
	}
	if (cqe->res <= 0) {
		conn_close(s, c);
		return;
	}
	c->tx_off += (uint32_t)cqe->res;
	if (c->tx_off < c->tx_len) {
		arm_send(s, c); /* partial send: the rest, before anything newer */
		return;
	}
	tx_put(s, c);
	mark_dirty(s, c); /* more ciphertext, a deferred recv, or a close */
}

static void on_accept(shard_t *s, uint32_t li, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE) && !s->stop)
		arm_accept(s, (int)li, cqe->res < 0);
	if (cqe->res >= 0)
		conn_open(s, cqe->res);
}

static void handle_cqe(shard_t *s, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	unsigned op = (unsigned)(ud >> 56);
	uint32_t gen = (uint32_t)(ud >> 32) & 0xffffffu;
	uint32_t idx = (uint32_t)ud;

	switch (op) {
	case OP_ACCEPT:
		on_accept(s, idx, cqe);
		break;
	case OP_RECV:
		on_recv(s, &s->conns[idx], gen, cqe);
		break;
	case OP_SEND:
		on_send(s, &s->conns[idx], cqe);
		break;
	case OP_WAKE:
		s->stop = true;
		break;
	default:
		break;
	}
}

/* ---- fault timers ------------------------------------------------------- */

/* How long the loop may sleep before a delayed answer, a held handshake or
 * an idle close is due. False: nothing is due, sleep until a completion. */
static bool fault_wait(shard_t *s, struct __kernel_timespec *ts)
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
	uint64_t now = mono_ms(), w = due > now ? due - now : 0;
	ts->tv_sec = (long long)(w / 1000u);
	ts->tv_nsec = (long long)(w % 1000u) * 1000000;
	return true;
}

/* Once a turn, after the completions (s->now_ms is fresh): send the delayed
 * answers that are due, let the held handshakes that are due go on (their
 * connections are serviced at the end of the turn), and close_notify the
 * connections idle for --idle-close-ms. Frees the entries it takes. */
static void fault_timers(shard_t *s)
{
	while (s->dq_head && s->dq_head->due_ms <= s->now_ms) {
		delayed_t *d = s->dq_head;
		s->dq_head = d->next;
		if (!s->dq_head)
			s->dq_tail = NULL;
		conn_t *c = &s->conns[d->conn];
		if (c->state == SLOT_OPEN && c->gen == d->gen) {
			c->delayed_pending--;
			if (!c->tls_shut && !c->reset_armed && !c->want_close) {
				CNT_INC(s, tls_writes);
				if (SSL_write(c->ssl, d->msg, (int)d->len) > 0) {
					CNT_INC(s, answers);
					if (c->in_idle)
						idle_touch(s, c);
				} else {
					tls_failed(s, c);
				}
			}
			mark_dirty(s, c);
		}
		free(d);
	}
	while (s->hq_head && s->hq_head->due_ms <= s->now_ms) {
		delayed_t *d = s->hq_head;
		s->hq_head = d->next;
		if (!s->hq_head)
			s->hq_tail = NULL;
		conn_t *c = &s->conns[d->conn];
		if (c->state == SLOT_OPEN && c->gen == d->gen) {
			c->hs_released = true;
			c->rx_new = true; /* the held ClientHello */
			mark_dirty(s, c);
		}
		free(d);
	}
	while (s->idle_head != SLOT_NONE) {
		conn_t *c = &s->conns[s->idle_head];
		if (s->now_ms - c->last_active_ms < c->bh->idle_close_ms)
			break;
		if (c->delayed_pending || c->send_armed) {
			idle_touch(s, c); /* not idle: answers are on their way */
			continue;
		}
		CNT_INC(s, fault_idle_closed);
		conn_close_notify(s, c);
	}
}

/* ---- shard life --------------------------------------------------------- */

static int ring_setup(shard_t *s)
{
	static const unsigned flag_sets[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
		IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
		0,
	};
	int rc = -EINVAL;
	for (size_t i = 0; i < DP_ARRAY_LEN(flag_sets); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = CQ_ENTRIES;
		rc = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &p);
		if (rc == 0)
			break;
	}
	if (rc < 0)
		return rc;
	s->ring_ok = true;
	(void)io_uring_register_ring_fd(&s->ring);
	return 0;
}

static int shard_init(shard_t *s)
{
	int rc = ring_setup(s);
	if (rc < 0)
		return rc;

	s->br_size = RECV_BUF_COUNT * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, s->br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
			 -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	s->br = mem;
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)(uintptr_t)mem;
	reg.ring_entries = RECV_BUF_COUNT;
	reg.bgid = RECV_BGID;
	rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (rc < 0)
		return rc;
	io_uring_buf_ring_init(s->br);
	s->rbufs = aligned_alloc(4096, (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE);
	if (!s->rbufs)
		return -ENOMEM;
	for (unsigned i = 0; i < RECV_BUF_COUNT; i++)
		io_uring_buf_ring_add(s->br, s->rbufs + (size_t)i * RECV_BUF_SIZE, RECV_BUF_SIZE,
				      (unsigned short)i, io_uring_buf_ring_mask(RECV_BUF_COUNT),
				      (int)i);
	io_uring_buf_ring_advance(s->br, RECV_BUF_COUNT);

	s->max_conns = g.max_conns;
	s->conns = calloc(s->max_conns, sizeof(*s->conns));
	s->dirty = calloc(s->max_conns, sizeof(*s->dirty));
	s->txfree = calloc(s->max_conns, sizeof(*s->txfree));
	s->scratch = malloc(SCRATCH_CAP);
	s->ob = malloc(OUT_BATCH_CAP);
	if (!s->conns || !s->dirty || !s->txfree || !s->scratch || !s->ob)
		return -ENOMEM;
	s->rng = (g.seed ^ ((uint64_t)(s->id + 1) * 0x9E3779B97F4A7C15ull)) | 1;
	s->idle_head = s->idle_tail = SLOT_NONE;
	s->now_ms = mono_ms();
	if (g.behave.reorder) {
		s->rev = malloc(sizeof(*s->rev) * (OUT_BATCH_CAP / 8));
		s->ob2 = malloc(OUT_BATCH_CAP);
		if (!s->rev || !s->ob2)
			return -ENOMEM;
	}
	s->free_head = SLOT_NONE;
	for (uint32_t i = s->max_conns; i-- > 0;) {
		s->conns[i].fd = -1;
		s->conns[i].next_free = s->free_head;
		s->free_head = i;
	}

	s->backoff.tv_sec = 0;
	s->backoff.tv_nsec = 50 * 1000 * 1000;
	for (int i = 0; i < s->nlisten; i++)
		arm_accept(s, i, false);
	arm_wake(s);
	rc = io_uring_submit(&s->ring);
	return rc < 0 ? rc : 0;
}

static void shard_loop(shard_t *s)
{
	while (!s->stop) {
		int rc;
		struct __kernel_timespec ts;
		if (unlikely(g.timed) && fault_wait(s, &ts)) {
			struct io_uring_cqe *first;
			rc = io_uring_submit_and_wait_timeout(&s->ring, &first, 1, &ts, NULL);
		} else {
			rc = io_uring_submit_and_wait(&s->ring, 1);
		}
		if (unlikely(g.timed))
			s->now_ms = mono_ms();
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
			fprintf(stderr, "dot-responder: shard %d: io_uring_submit_and_wait: %s\n",
				s->id, strerror(-rc));
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&s->ring, head, cqe)
		{
			handle_cqe(s, cqe);
			n++;
		}
		io_uring_cq_advance(&s->ring, n);

		if (unlikely(g.timed))
			fault_timers(s);
		for (uint32_t i = 0; i < s->ndirty; i++)
			conn_service(s, &s->conns[s->dirty[i]]);
		s->ndirty = 0;
	}
}

static void shard_fini(shard_t *s)
{
	if (s->conns)
		for (uint32_t i = 0; i < s->max_conns; i++)
			conn_close(s, &s->conns[i]);
	if (s->ring_ok)
		io_uring_queue_exit(&s->ring); /* cancels what is still in flight */
	s->ring_ok = false;
	if (s->br)
		munmap(s->br, s->br_size);
	while (s->ntxfree)
		free(s->txfree[--s->ntxfree]);
	if (s->conns)
		for (uint32_t i = 0; i < s->max_conns; i++)
			free(s->conns[i].tx);
	free(s->rbufs);
	free(s->conns);
	free(s->dirty);
	free(s->txfree);
	free(s->scratch);
	free(s->ob);
	free(s->ob2);
	free(s->rev);
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
	s->rev = NULL;
	s->rbufs = s->scratch = s->ob = s->ob2 = NULL;
	s->conns = NULL;
	s->dirty = NULL;
	s->txfree = NULL;
	s->br = NULL;
}

static void *shard_main(void *arg)
{
	shard_t *s = arg;
	int rc = shard_init(s);
	if (rc < 0)
		fprintf(stderr, "dot-responder: shard %d: setup failed: %s\n", s->id,
			strerror(-rc));
	pthread_mutex_lock(&g_ready_mu);
	if (rc < 0)
		g_failed++;
	else
		g_ready++;
	pthread_cond_signal(&g_ready_cv);
	pthread_mutex_unlock(&g_ready_mu);
	if (rc == 0)
		shard_loop(s);
	shard_fini(s);
	return NULL;
}

/* ---- main: options, TLS context, listeners, signals --------------------- */

static void print_counters(int nshards)
{
	counters_t sum;
	memset(&sum, 0, sizeof(sum));
	for (int i = 0; i < nshards; i++) {
#define X(n) sum.n += __atomic_load_n(&g_shards[i].cnt.n, __ATOMIC_RELAXED);
		COUNTERS(X)
#undef X
	}
	char line[1024];
	size_t o = 0;
#define X(n) o += (size_t)snprintf(line + o, sizeof(line) - o, "%s" #n "=%llu", o ? " " : "", \
				   (unsigned long long)sum.n);
	COUNTERS(X)
#undef X
	fprintf(stderr, "%s\n", line);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dot-responder --listen IP:PORT --cert FILE --key FILE [options]\n"
		"\n"
		"A synthetic DNS-over-TLS server: every A/AAAA query (class IN) gets one\n"
		"fixed record, other types NOERROR with no answer.\n"
		"\n"
		"  --listen IP:PORT     TCP+TLS address; [v6]:PORT for IPv6; port 0 picks a\n"
		"                       free port (printed). Repeatable, up to %d.\n"
		"  --cert FILE          PEM certificate chain (leaf first)\n"
		"  --key FILE           PEM private key\n"
		"  --threads N          shards, each with its own io_uring and SO_REUSEPORT\n"
		"                       listener (default 1)\n"
		"  --max-conns N        connections per shard (default %d); more are closed\n"
		"  --answer-ip A.B.C.D  A record data (default 192.0.2.1)\n"
		"  --answer-ip6 ADDR    AAAA record data (default 2001:db8::1)\n"
		"  --ttl N              TTL of the record (default 300)\n"
		"  --name-ttl           the first label decides: \"t<N>-...\" answers with\n"
		"                       TTL N, \"t<N>-nx...\" is NXDOMAIN (SOA TTL and\n"
		"                       MINIMUM N); other names as without it\n"
		"  --tls-min 1.2|1.3    lowest TLS version (default 1.2)\n"
		"  --tls-max 1.2|1.3    highest TLS version (default 1.3)\n"
		"\n"
		"Fault injection (all off by default; P is a percentage 0..100):\n"
		"  --delay-ms N         hold answers back N ms (others are served meanwhile)\n"
		"  --delay-pct P        only P%% of the answers are delayed (default 100)\n"
		"  --drop-pct P         never answer P%% of the queries\n"
		"  --reorder            the answers of each batch go out in reverse order\n"
		"  --wrong-id-pct P     P%% of the answers carry another ID (never the right one)\n"
		"  --wrong-question-pct P  P%% of the answers carry another name\n"
		"  --close-after N      after N answers on a connection: close_notify, close\n"
		"                       (queries not answered yet are dropped)\n"
		"  --idle-close-ms T    close_notify and close connections idle for T ms\n"
		"  --reset-mid-record K after K answers on a connection, send half of the\n"
		"                       next answer's TLS record, then reset (RST)\n"
		"  --refuse-handshake   reset every connection on its ClientHello\n"
		"  --handshake-delay-ms N  hold each ClientHello N ms before answering it\n"
		"  --seed N             seed for the percentages (default: from the clock)\n"
		"  --help               this text\n"
		"\n"
		"Prints \"listening on ...\" to stderr when ready. SIGUSR1 and exit print\n"
		"counters (connections= handshakes= queries= answers= ...) to stderr.\n"
		"SIGINT or SIGTERM stop it.\n",
		MAX_LISTEN, DEFAULT_MAX_CONNS);
}

static int parse_listen(const char *arg, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon, *h = arg;
	size_t hl;
	bool v6 = arg[0] == '[';
	if (v6) {
		const char *end = strchr(arg, ']');
		if (!end || end[1] != ':')
			return -1;
		h = arg + 1;
		hl = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(arg, ':');
		if (!colon)
			return -1;
		hl = (size_t)(colon - arg);
	}
	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, h, hl);
	host[hl] = 0;
	char *e;
	unsigned long port = strtoul(colon + 1, &e, 10);
	if (!colon[1] || *e || port > 65535)
		return -1;
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return -1;
		*len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return -1;
		*len = sizeof(*a);
	}
	return 0;
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	char h[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof(h));
		snprintf(out, cap, "[%s]:%u", h, ntohs(a->sin6_port));
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, h, sizeof(h));
		snprintf(out, cap, "%s:%u", h, ntohs(a->sin_port));
	}
}

static int parse_tls_version(const char *s, uint16_t *v)
{
	if (strcmp(s, "1.2") == 0)
		*v = TLS1_2_VERSION;
	else if (strcmp(s, "1.3") == 0)
		*v = TLS1_3_VERSION;
	else
		return -1;
	return 0;
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
	char *e;
	errno = 0;
	unsigned long v = strtoul(s, &e, 10);
	if (!*s || *e || errno || v < min || v > max || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv)
{
	/* Same order as opts[]: the error message indexes it. */
	enum { O_LISTEN = 256, O_CERT, O_KEY, O_THREADS, O_MAXCONNS, O_IP, O_IP6, O_TTL,
	       O_NAMETTL, O_TLSMIN, O_TLSMAX, O_DELAY, O_DELAYPCT, O_DROPPCT, O_REORDER, O_WRONGID,
	       O_WRONGQ, O_CLOSEAFTER, O_IDLECLOSE, O_RESETMID, O_REFUSE, O_HSDELAY, O_SEED, O_HELP };
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "cert", required_argument, NULL, O_CERT },
		{ "key", required_argument, NULL, O_KEY },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "max-conns", required_argument, NULL, O_MAXCONNS },
		{ "answer-ip", required_argument, NULL, O_IP },
		{ "answer-ip6", required_argument, NULL, O_IP6 },
		{ "ttl", required_argument, NULL, O_TTL },
		{ "name-ttl", no_argument, NULL, O_NAMETTL },
		{ "tls-min", required_argument, NULL, O_TLSMIN },
		{ "tls-max", required_argument, NULL, O_TLSMAX },
		{ "delay-ms", required_argument, NULL, O_DELAY },
		{ "delay-pct", required_argument, NULL, O_DELAYPCT },
		{ "drop-pct", required_argument, NULL, O_DROPPCT },
		{ "reorder", no_argument, NULL, O_REORDER },
		{ "wrong-id-pct", required_argument, NULL, O_WRONGID },
		{ "wrong-question-pct", required_argument, NULL, O_WRONGQ },
		{ "close-after", required_argument, NULL, O_CLOSEAFTER },
		{ "idle-close-ms", required_argument, NULL, O_IDLECLOSE },
		{ "reset-mid-record", required_argument, NULL, O_RESETMID },
		{ "refuse-handshake", no_argument, NULL, O_REFUSE },
		{ "handshake-delay-ms", required_argument, NULL, O_HSDELAY },
		{ "seed", required_argument, NULL, O_SEED },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int o;
	unsigned long v;
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case O_LISTEN:
			if (g.nlisten == MAX_LISTEN) {
				fprintf(stderr, "dot-responder: at most %d --listen\n", MAX_LISTEN);
				return -1;
			}
			if (parse_listen(optarg, &g.listen[g.nlisten], &g.listen_len[g.nlisten]) < 0) {
				fprintf(stderr, "dot-responder: bad --listen '%s' (IP:PORT or [IPv6]:PORT)\n",
					optarg);
				return -1;
			}
			g.nlisten++;
			break;
		case O_CERT:
			g.cert = optarg;
			break;
		case O_KEY:
			g.key = optarg;
			break;
		case O_THREADS:
			if (parse_uint(optarg, 1, 256, &v) < 0)
				goto bad;
			g.threads = (int)v;
			break;
		case O_MAXCONNS:
			if (parse_uint(optarg, 1, 1u << 20, &v) < 0)
				goto bad;
			g.max_conns = (uint32_t)v;
			break;
		case O_IP:
			if (inet_pton(AF_INET, optarg, g.behave.a) != 1)
				goto bad;
			break;
		case O_IP6:
			if (inet_pton(AF_INET6, optarg, g.behave.aaaa) != 1)
				goto bad;
			break;
		case O_TTL:
			if (parse_uint(optarg, 0, INT32_MAX, &v) < 0)
				goto bad;
			g.behave.ttl = (uint32_t)v;
			break;
		case O_NAMETTL:
			g.behave.name_ttl = true;
			break;
		case O_TLSMIN:
			if (parse_tls_version(optarg, &g.tls_min) < 0)
				goto bad;
			break;
		case O_TLSMAX:
			if (parse_tls_version(optarg, &g.tls_max) < 0)
				goto bad;
			break;
		case O_DELAY:
			if (parse_uint(optarg, 0, 600000, &v) < 0)
				goto bad;
			g.behave.delay_ms = (uint32_t)v;
			break;
		case O_DELAYPCT:
		case O_DROPPCT:
		case O_WRONGID:
		case O_WRONGQ:
			if (parse_uint(optarg, 0, 100, &v) < 0)
				goto bad;
			*(o == O_DELAYPCT ? &g.behave.delay_pct
			  : o == O_DROPPCT ? &g.behave.drop_pct
			  : o == O_WRONGID ? &g.behave.wrong_id_pct
					   : &g.behave.wrong_question_pct) = (uint8_t)v;
			break;
		case O_REORDER:
			g.behave.reorder = true;
			break;
		case O_CLOSEAFTER:
			if (parse_uint(optarg, 1, UINT32_MAX, &v) < 0)
				goto bad;
			g.behave.close_after = (uint32_t)v;
			break;
		case O_IDLECLOSE:
			if (parse_uint(optarg, 1, 3600000, &v) < 0)
				goto bad;
			g.behave.idle_close_ms = (uint32_t)v;
			break;
		case O_RESETMID:
			if (parse_uint(optarg, 0, INT32_MAX, &v) < 0)
				goto bad;
			g.behave.reset_after = (int32_t)v;
			break;
		case O_REFUSE:
			g.behave.refuse_handshake = true;
			break;
		case O_HSDELAY:
			if (parse_uint(optarg, 0, 600000, &v) < 0)
				goto bad;
			g.behave.handshake_delay_ms = (uint32_t)v;
			break;
		case O_SEED:
			if (parse_uint(optarg, 0, ULONG_MAX, &v) < 0)
				goto bad;
			g.seed = v;
			break;
		case O_HELP:
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
		continue;
bad:
		fprintf(stderr, "dot-responder: bad value '%s' for --%s\n", optarg,
			opts[o - O_LISTEN].name);
		return -1;
	}
	if (optind < argc) {
		fprintf(stderr, "dot-responder: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (!g.nlisten || !g.cert || !g.key) {
		fprintf(stderr, "dot-responder: --listen, --cert and --key are required\n");
		usage(stderr);
		return -1;
	}
	if (g.tls_min > g.tls_max) {
		fprintf(stderr, "dot-responder: --tls-min above --tls-max\n");
		return -1;
	}
	behave_t *b = &g.behave;
	b->faulty = b->drop_pct || b->delay_ms || b->wrong_id_pct || b->wrong_question_pct ||
		    b->reorder || b->close_after || b->reset_after >= 0;
	g.timed = b->delay_ms || b->idle_close_ms || b->handshake_delay_ms;
	if (!g.seed)
		g.seed = mono_ms() ^ ((uint64_t)getpid() << 32);
	return 0;
}

static void print_ssl_error(const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char buf[256];
	ERR_error_string_n(e, buf, sizeof(buf));
	fprintf(stderr, "dot-responder: %s %s: %s\n", what, file ? file : "", buf);
	ERR_clear_error();
}

/* Offer "dot" back when the client asks for it (RFC 7858 registers it);
 * without it, no ALPN rather than a failed handshake. */
static int alpn_select(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
		       unsigned inlen, void *arg)
{
	for (unsigned i = 0; i < inlen;) {
		unsigned l = in[i];
		if (i + 1 + l > inlen)
			break;
		if (l == 3 && memcmp(in + i + 1, "dot", 3) == 0) {
			*out = in + i + 1;
			*outlen = 3;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + l;
	}
	return SSL_TLSEXT_ERR_NOACK;
}

/* Allocates the global SSL_CTX. Session tickets are on (BoringSSL's default,
 * keys made and rotated by the context); the stateful server cache is off,
 * so resumption is by ticket only and no lock is shared between shards. */
static int tls_setup(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		print_ssl_error("SSL_CTX_new", NULL);
		return -1;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, g.tls_min) ||
	    !SSL_CTX_set_max_proto_version(ctx, g.tls_max)) {
		print_ssl_error("TLS versions", NULL);
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, g.cert) != 1) {
		print_ssl_error("certificate", g.cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, g.key, SSL_FILETYPE_PEM) != 1) {
		print_ssl_error("private key", g.key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		print_ssl_error("key does not match certificate", g.key);
		goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	g.ctx = ctx;
	return 0;
fail:
	SSL_CTX_free(ctx);
	return -1;
}

/* One SO_REUSEPORT listener. Port 0 in *ss is replaced by the port the
 * kernel chose, so the next shard joins the same group. */
static int make_listener(struct sockaddr_storage *ss, socklen_t len)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    (ss->ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (struct sockaddr *)ss, len) < 0 || listen(fd, 4096) < 0)
		goto fail;
	socklen_t l = len;
	if (getsockname(fd, (struct sockaddr *)ss, &l) < 0)
		goto fail;
	return fd;
fail:;
	int e = -errno;
	close(fd);
	return e;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	int rc = 1, started = 0;

	if (parse_args(argc, argv) < 0)
		return 2;
	if (tls_setup() < 0)
		return 1;
	raise_nofile();

	/* Shards inherit this mask; only the main thread takes signals. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	g_shards = aligned_alloc(64, sizeof(shard_t) * (size_t)g.threads);
	if (!g_shards) {
		fprintf(stderr, "dot-responder: out of memory\n");
		goto out;
	}
	memset(g_shards, 0, sizeof(shard_t) * (size_t)g.threads);
	for (int i = 0; i < g.threads; i++) {
		shard_t *s = &g_shards[i];
		s->id = i;
		s->wake_fd = -1;
		for (int j = 0; j < MAX_LISTEN; j++)
			s->listen_fd[j] = -1;
	}
	for (int i = 0; i < g.threads; i++) {
		shard_t *s = &g_shards[i];
		s->nlisten = g.nlisten;
		for (int j = 0; j < g.nlisten; j++) {
			int fd = make_listener(&g.listen[j], g.listen_len[j]);
			if (fd < 0) {
				char a[80];
				format_addr(&g.listen[j], a, sizeof(a));
				fprintf(stderr, "dot-responder: listen %s: %s\n", a, strerror(-fd));
				goto out;
			}
			s->listen_fd[j] = fd;
		}
		s->wake_fd = eventfd(0, EFD_CLOEXEC);
		if (s->wake_fd < 0) {
			fprintf(stderr, "dot-responder: eventfd: %s\n", strerror(errno));
			goto out;
		}
	}
	for (; started < g.threads; started++) {
		if (pthread_create(&g_shards[started].thr, NULL, shard_main, &g_shards[started])) {
			fprintf(stderr, "dot-responder: cannot start shard %d\n", started);
			goto out;
		}
	}
	pthread_mutex_lock(&g_ready_mu);
	while (g_ready + g_failed < g.threads)
		pthread_cond_wait(&g_ready_cv, &g_ready_mu);
	int failed = g_failed;
	pthread_mutex_unlock(&g_ready_mu);
	if (failed)
		goto out;

	char line[MAX_LISTEN * 64], a[64];
	size_t o = 0;
	for (int j = 0; j < g.nlisten; j++) {
		format_addr(&g.listen[j], a, sizeof(a));
		o += (size_t)snprintf(line + o, sizeof(line) - o, "%s%s", j ? " " : "", a);
	}
	const behave_t *b = &g.behave;
	if (b->faulty || g.timed || b->refuse_handshake)
		fprintf(stderr,
			"faults delay-ms=%u delay-pct=%u drop-pct=%u reorder=%d wrong-id-pct=%u "
			"wrong-question-pct=%u close-after=%u idle-close-ms=%u reset-mid-record=%d "
			"refuse-handshake=%d handshake-delay-ms=%u seed=%llu\n",
			b->delay_ms, b->delay_pct, b->drop_pct, b->reorder, b->wrong_id_pct,
			b->wrong_question_pct, b->close_after, b->idle_close_ms, b->reset_after,
			b->refuse_handshake, b->handshake_delay_ms, (unsigned long long)g.seed);
	fprintf(stderr, "listening on %s threads=%d\n", line, g.threads);

	for (;;) {
		int sig;
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGUSR1) {
			print_counters(g.threads);
			continue;
		}
		break;
	}
	rc = 0;
out:
	if (g_shards) {
		for (int i = 0; i < g.threads; i++) {
			uint64_t one = 1;
			if (g_shards[i].wake_fd >= 0 &&
			    write(g_shards[i].wake_fd, &one, sizeof(one)) != sizeof(one))
				rc = 1;
		}
		for (int i = 0; i < started; i++)
			pthread_join(g_shards[i].thr, NULL);
		if (started)
			print_counters(g.threads);
		for (int i = 0; i < g.threads; i++) {
			for (int j = 0; j < MAX_LISTEN; j++)
				if (g_shards[i].listen_fd[j] >= 0)
					close(g_shards[i].listen_fd[j]);
			if (g_shards[i].wake_fd >= 0)
				close(g_shards[i].wake_fd);
		}
		free(g_shards);
	}
	SSL_CTX_free(g.ctx);
	return rc;
}
