/* xshard.h - messages between shards: queries handed to their home shard,
 * TCP answers handed back to the shard that holds the connection.
 *
 * Every question has one home shard (home.h): the one whose cache holds its
 * answer and whose in-flight table coalesces it. A shard that receives a
 * query owned by another copies it into a queue towards the home shard and
 * goes on; the home runs it through the normal path (cache, coalescing,
 * upstream) as if it had arrived there. A UDP answer leaves from the home's
 * own socket for the same listen address (every shard's socket is bound to
 * the same address and port, SO_REUSEPORT, so the client sees the right
 * source); a TCP answer goes back to the origin shard, which owns the
 * connection, through a second queue.
 *
 * One pair of queues per ordered pair of shards (from, to): a query queue
 * (from hands queries to to) and an answer queue (from, as home, returns
 * answers to to's TCP clients). Each queue has exactly one producer thread
 * and one consumer thread: a byte ring of variable-length records, head and
 * tail on their own cache lines, published with release stores and read
 * with acquire loads; no lock, no read-modify-write, no allocation after
 * dp_xshard_init().
 *
 * Exactly one answer per TCP hand-off, even when the answer queue is
 * crowded: an origin keeps at most DP_XS_TCP_CREDIT TCP queries outstanding
 * at one home (more are resolved locally), and the home only queues an
 * answer when the room left afterwards is at least DP_XS_ANSWER_KEEP, a
 * SERVFAIL record (with the worst wrap-around waste) for each of the
 * credit. An answer refused by that rule is replaced by a SERVFAIL of at
 * most DP_XS_SMALL_REC, which always fits: since the last answer that went
 * in under the rule, only such SERVFAILs were added, each for a query of
 * the credit not yet answered, so fewer than DP_XS_TCP_CREDIT of them are
 * still in the queue when another is needed. Answers above
 * DP_XS_ANSWER_INLINE (large TCP answers, rare) travel as a pointer to a
 * copy (DP_XMSG_ANSWER_PTR, malloc'd by the home, freed by the origin),
 * so that any answer up to 65535 octets goes back whole.
 *
 * Lifecycle (drain, stop): see handoff.c, which runs these queues inside the
 * shards' loops. This module is pure: no io_uring, no shard.
 */
#ifndef DP_XSHARD_H
#define DP_XSHARD_H

#include "clientshare.h"

#include <netinet/in.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DP_XS_MAX_SHARDS 256 /* --threads' limit */
#define DP_XS_QUERY_RING (64u << 10) /* octets, power of two: the most */
#define DP_XS_QUERY_RING_MIN (16u << 10) /* ... and the least (many shards) */
#define DP_XS_QUERY_RINGS_TOTAL (4u << 20) /* what all query rings may take */
#define DP_XS_ANSWER_RING (128u << 10) /* octets, power of two */
#define DP_XS_QUERY_MAX 4096 /* larger queries are resolved where they arrive */
#define DP_XS_TCP_CREDIT 64 /* TCP queries one origin may have at one home */
#define DP_XS_ANSWER_INLINE 8192 /* larger answers go as a pointer to a copy */
#define DP_XS_SF_MAX 272 /* a SERVFAIL made from an answer: header, question */

/* A record: a size word, then the message. Sizes are multiples of 8. */
#define DP_XS_REC_HDR 8
#define DP_XS_ALIGN(n) (((n) + 7u) & ~(size_t)7u)

enum {
	DP_XMSG_UDP = 1, /* a UDP query; answer to addr from listen socket li */
	DP_XMSG_TCP, /* a TCP query of connection tcp_idx/tcp_gen on origin */
	DP_XMSG_ANSWER, /* an answer (len > 0) for tcp_idx/tcp_gen; len 0: the
			 * query ended without one (the origin only ends it) */
	DP_XMSG_ANSWER_PTR, /* the same, data is a dp_xs_bigans_t */
};

/* A large answer: the home's malloc'd copy, which the origin frees. */
typedef struct dp_xs_bigans {
	uint8_t *p;
	uint32_t len;
} dp_xs_bigans_t;

typedef struct dp_xmsg {
	uint64_t arrive_ns; /* when the origin read the query */
	union {
		struct sockaddr_in6 addr; /* UDP client (AF_INET fits too) */
		dp_cshare_key_t peer; /* TCP client, as the fair share counts it */
	};
	uint32_t tcp_idx, tcp_gen;
	uint16_t len; /* octets of DNS message that follow the header */
	uint8_t kind; /* DP_XMSG_* */
	uint8_t origin; /* shard that read the query */
	uint8_t li; /* listen index it came in on */
} dp_xmsg_t;

/* The largest record a SERVFAIL made by the hand-off takes. */
#define DP_XS_SMALL_REC (DP_XS_REC_HDR + DP_XS_ALIGN(sizeof(dp_xmsg_t) + DP_XS_SF_MAX))

typedef struct dp_spsc {
	alignas(64) uint64_t tail; /* producer writes (release) */
	uint64_t head_seen; /* producer's last look at head */
	alignas(64) uint64_t head; /* consumer writes (release) */
	uint64_t tail_seen; /* consumer's last look at tail */
	alignas(64) uint8_t *buf; /* read-only after init */
	uint32_t cap;
} dp_spsc_t;

typedef struct dp_xlink {
	dp_spsc_t q; /* queries from -> to */
	dp_spsc_t a; /* answers from (home) -> to (origin) */
} dp_xlink_t;

typedef struct dp_xshard {
	uint32_t n;
	dp_xlink_t *links; /* n * n, [from * n + to]; the diagonal is unused */
	uint8_t *mem;
	size_t mem_len;
	int ready; /* every shard runs: hand-offs may start (release/acquire) */
	uint32_t quiet; /* shards that will hand off nothing more (drain) */
} dp_xshard_t;

/* Queues for n shards (n >= 2), each ring qcap / acap octets (powers of
 * two, at least 2 * the largest record pushed). Allocates (one mapping,
 * touched only as queues fill). Returns 0, -EINVAL or -ENOMEM. */
int dp_xshard_init(dp_xshard_t *x, uint32_t n, uint32_t qcap, uint32_t acap);
/* The query ring size for n shards: DP_XS_QUERY_RINGS_TOTAL over the
 * n * (n - 1) rings, as a power of two between DP_XS_QUERY_RING_MIN and
 * DP_XS_QUERY_RING (64 KB up to 8 shards; 16 KB from 17). A ring's pages
 * are touched only as its traffic goes round it. */
uint32_t dp_xshard_query_ring_size(uint32_t n);

/* Frees what dp_xshard_init made, and the large answers still queued
 * (once no shard runs); safe on a zeroed or freed x. */
void dp_xshard_free(dp_xshard_t *x);

static inline dp_xlink_t *dp_xshard_link(dp_xshard_t *x, uint32_t from, uint32_t to)
{
	return &x->links[from * x->n + to];
}

/* Set up q over buf (cap octets, a power of two, >= 64). */
void dp_spsc_init(dp_spsc_t *q, uint8_t *buf, uint32_t cap);

/* Producer: octets the queue can take now (as of the consumer's last
 * release). */
size_t dp_spsc_room(dp_spsc_t *q);

/* Producer: append message m followed by len octets of data, leaving at
 * least keep octets free afterwards. Returns 0, or -ENOSPC (nothing
 * written). Copies; hot path. */
int dp_xs_push(dp_spsc_t *q, const dp_xmsg_t *m, const uint8_t *data, size_t len, size_t keep);

/* Consumer: the oldest message, or NULL when the queue is empty. Its data
 * (m->len octets, writable) follow it: dp_xmsg_data(m). Valid until
 * dp_xs_pop(). Hot path. */
dp_xmsg_t *dp_xs_peek(dp_spsc_t *q);
/* Consumer: release the message dp_xs_peek() returned. */
void dp_xs_pop(dp_spsc_t *q);
/* Consumer: true when nothing is queued. */
bool dp_xs_empty(dp_spsc_t *q);

static inline uint8_t *dp_xmsg_data(dp_xmsg_t *m)
{
	return (uint8_t *)(m + 1);
}

/* The record size of a message with len octets of data. */
static inline size_t dp_xs_rec_size(size_t len)
{
	return DP_XS_REC_HDR + DP_XS_ALIGN(sizeof(dp_xmsg_t) + len);
}

/* The room an answer queue keeps after an answer, for an origin with
 * `credit` TCP queries at most outstanding at the home: a SERVFAIL for each,
 * with the worst wrap-around waste (less than one record) before it. */
static inline size_t dp_xs_answer_keep(uint32_t credit)
{
	return (size_t)credit * 2 * DP_XS_SMALL_REC;
}
#define DP_XS_ANSWER_KEEP dp_xs_answer_keep(DP_XS_TCP_CREDIT)

#endif
