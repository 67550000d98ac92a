/* upconn-t.h - upstream connections and the interfaces around them (types
 * only; upconn.h has the functions). */
#ifndef DP_UPCONN_T_H
#define DP_UPCONN_T_H

#include "buf.h"
#include "config.h"
#include "idmap.h"
#include "list.h"
#include "timerwheel.h"
#include "tls-t.h"

#include <openssl/ssl.h>

struct dp_shard;

enum { C_DOWN = 0, C_CONNECTING, C_HANDSHAKE, C_READY, C_CLOSING };

/* What a connection speaks, set when it starts: DNS-over-TLS, plain DNS
 * over TCP (both framed, RFC 7766), or plain DNS over a connected UDP
 * socket (one datagram per message, on a port of its own). */
enum { UK_DOT = 0, UK_TCP, UK_UDP };

/* One connection to an upstream (a slot of the shard's table). Fields
 * marked (pool) are the pool's bookkeeping: upconn.c only reads them. */
typedef struct dp_upconn {
	uint8_t state; /* C_* */
	uint8_t kind; /* UK_* */
	uint8_t upstream; /* index in cfg->upstream */
	bool retired; /* (pool) UDP: its port has served enough queries; takes
		       * no more unless nothing else can, closes once drained */
	bool drained; /* (pool) UDP: queued to close at the end of the turn */
	uint32_t nsent; /* (pool) UDP: queries sent from its port */
	uint64_t case_seed; /* UDP with 0x20: the letter case of a question is
			     * drawn from it and the query ID */
	bool recv_armed;
	bool dirty; /* on the shard's flush list */
	bool got_answer; /* (pool) an answer matched since connecting */
	int fd;
	uint32_t ops; /* operations in flight on fd */
	uint32_t gen; /* bumped when the slot is reused: in every user_data */
	uint64_t deadline_ms; /* handshake deadline while connecting */
	dp_tw_entry_t hs_t; /* shard timer at deadline_ms, armed while connecting */
	SSL *ssl; /* over our own BIO (tls.c) on wire; NULL unless UK_DOT */
	dp_tls_wire_t wire; /* ciphertext received; tx points at sendq.fill */
	dp_idmap_t ids; /* upstream ID -> query slot */
	dp_list_t queries; /* (pool) dp_query_t.clink: pending and sent */
	dp_list_t hedges; /* (pool) dp_query_t.c2link: hedge copies sent here */
	uint64_t last_used_ms; /* last query written or answer read */
	uint32_t keepalive_ms; /* (pool) upstream's idle timeout (RFC 7828), 0 = unknown */
	uint32_t dirty_next;
	dp_buf_t batch; /* plaintext queries framed for the next SSL_write */
	uint32_t batch_count; /* queries in batch */
	dp_sendq_t sendq; /* ciphertext: the send in flight, what TLS made since */
	uint64_t send_since_ms; /* the send in flight was issued or took bytes */
	dp_buf_t plain; /* plaintext received: framed DNS messages (UDP: one datagram) */
} dp_upconn_t;

/* What a connection tells its owner (the pool): calls up, through this
 * struct only. Each is called from the shard's thread. */
typedef struct dp_upconn_ops {
	/* The handshake of ci is done: it takes queries now. */
	void (*ready)(struct dp_shard *s, uint32_t ci);
	/* One complete DNS message (len may be under a header) read from ci.
	 * msg is valid during the call; the callee may fail ci. Hot path. */
	void (*message)(struct dp_shard *s, uint32_t ci, uint8_t *msg, size_t len);
	/* ci failed or is being closed (state C_CLOSING, its batch dropped):
	 * move its queries elsewhere. health: count it against the upstream. */
	void (*closed)(struct dp_shard *s, uint32_t ci, bool health);
	/* ci is closed for good and its slot free (C_DOWN, new generation):
	 * queries put on it while it closed want it connected again. */
	void (*down)(struct dp_shard *s, uint32_t ci);
} dp_upconn_ops_t;

/* The I/O below a connection: io_uring in the daemon (upconn.c), a fake in
 * the unit tests. Every operation started here completes through
 * dp_upconn_on_cqe with the (ci, gen) it was given. */
typedef struct dp_upconn_io {
	/* A non-blocking socket of family and type (SOCK_STREAM or
	 * SOCK_DGRAM): fd, or a negative errno. */
	int (*open)(struct dp_shard *s, int family, int type);
	void (*connect)(struct dp_shard *s, uint32_t ci, uint32_t gen, int fd,
			const dp_sockaddr_t *to);
	void (*recv)(struct dp_shard *s, uint32_t ci, uint32_t gen, int fd, uint8_t *buf,
		     size_t len);
	/* buf stays untouched until the send completes. */
	void (*send)(struct dp_shard *s, uint32_t ci, uint32_t gen, int fd, const uint8_t *buf,
		     size_t len);
	/* Connect UDP socket fd to to, now (no completion: it only sets the
	 * peer and binds a random port). 0 or a negative errno. */
	int (*connect_dgram)(struct dp_shard *s, int fd, const dp_sockaddr_t *to);
	/* One datagram on a connected UDP socket, now (no completion): the
	 * octets sent or a negative errno. */
	int (*send_dgram)(struct dp_shard *s, int fd, const uint8_t *buf, size_t len);
	/* Shut fd down; when cancel, also cancel every operation on it (each
	 * still completes). */
	void (*shutdown)(struct dp_shard *s, int fd, bool cancel);
	void (*close)(struct dp_shard *s, int fd);
} dp_upconn_io_t;

/* UDP sockets per udp:// upstream per shard. Each has its own port, which
 * the kernel picks at random, and serves DP_UPCONN_UDP_QUERIES queries,
 * then closes once they are answered: a fresh port per query while fewer
 * than DP_UPCONN_UDP_SOCKS are in flight; beyond that, queries share the
 * least busy sockets (an attacker then still has to hit the one port and
 * ID among those in flight). */
#define DP_UPCONN_UDP_SOCKS 32
#define DP_UPCONN_UDP_QUERIES 1

/* The shard's connection table, per upstream a reload could add:
 * --upstream-conns stream slots (TLS, or TCP) and DP_UPCONN_UDP_SOCKS UDP
 * slots (udp:// upstreams only); untouched ones cost no memory. */
typedef struct dp_upconns {
	dp_upconn_t *c;
	uint32_t n;
	uint32_t dirty; /* connections to flush at the end of the turn */
	uint32_t per_upstream; /* slots of upstream u: [u * per_upstream, +per_upstream) */
	uint32_t streams; /* the first this many of them are stream slots */
	SSL_SESSION *session[DP_MAX_UPSTREAMS]; /* newest resumable session, owned */
	const dp_upconn_ops_t *ops;
	const dp_upconn_io_t *io;
} dp_upconns_t;

#endif
