/* tlsconn.h - DNS-over-TLS client connections (RFC 7858): the TLS layer
 * between the TCP frontend's transport (tcp.c, io_uring) and the stream
 * state machine (tcpconn.h), which stays I/O-free and sees plaintext only.
 *
 * A TLS connection is an ordinary tcpconn slot (the same --max-tcp-clients
 * cap, eviction, idle timeout, pipelining, backpressure and drain) whose
 * transport runs a BoringSSL server session over our BIO (tls.h):
 *   - ciphertext received (tcp.c's multishot receive) is decrypted here and
 *     handed to tcpconn as if it had been received (dp_tcpconn_on_recv);
 *   - tcpconn's sends (its framed answers) are encrypted with one SSL_write
 *     into this connection's ciphertext queue, sent by io->send; tcpconn's
 *     send completes when the ciphertext that carries it has been sent, so
 *     its write-queue bound and slow-reader detection hold as for TCP;
 *   - handshake output, tickets and alerts go out through the same queue.
 *
 * Handshakes never stall the shard: at most DP_TLSCONN_HS_PER_TURN
 * handshake steps run per loop turn (dp_tlsconn_run); the others wait in
 * arrival order on the deferred list, their ciphertext kept, so a flood of
 * new clients costs CPU in proportion and answers to established clients
 * go out every turn. A step is spent only on a receive that completes a
 * TLS record (the record layer is followed during the handshake): a
 * client trickling its octets costs no budget (BoringSSL only buffers
 * them), so it cannot push real handshakes toward their timeout. A client
 * not done with its handshake
 * --listen-tls-handshake-timeout after its accept is closed
 * (dp_tlsconn_expire).
 *
 * Lifetime: the state of a connection lives in the slot of the same index
 * as its tcpconn slot, from dp_tlsconn_open to the transport's close of
 * that slot (dp_tlsconn_drop). A ciphertext send in flight, and every
 * stretch of work here that calls into tcpconn, holds the tcpconn slot
 * (dp_tcpconn_hold), so the slot and this state outlive them.
 *
 * Memory: a receive's ciphertext is read where io_uring put it; a record
 * split across receives is kept by BoringSSL itself. A slot's own buffer
 * (w.rx) holds ciphertext only while no handshake step may read it (the
 * step deferred to a later turn) and what a drain read took; at most
 * DP_TLSCONN_HELLO_MAX before our first flight (a client sends nothing
 * beyond its ClientHello until it has it), DP_TLSCONN_RX_MAX after. What
 * a refused client sends is not kept. The ciphertext send queue is freed
 * whenever everything is sent and tcpconn's send is complete (an idle
 * client keeps no buffer). These buffers, and DP_TLSCONN_HS_COST while a
 * handshake is not done (BoringSSL's handshake state), count in tcpconn's
 * buffer budget (dp_tcpconn_charge); a connection that would overflow it
 * is closed (DP_TCPC_CLOSED_MEMORY).
 *
 * DNS-over-HTTPS (doh.h): a connection accepted on an HTTPS listener
 * negotiates "h2", and once its handshake is done gets an HTTP/2 session
 * between its plaintext and tcpconn: what it decrypts goes through the
 * session, which hands tcpconn the requests' queries as DNS frames, and
 * tcpconn's framed answers go through the session into responses. The
 * session's own output (SETTINGS, acknowledgements, window updates, a
 * GOAWAY) is encrypted into the same queue whenever input made some.
 * tcpconn's send completes when its answers are in the session (they are
 * copied there); what the client's flow-control window holds back counts
 * in the budget, and more than DP_TCPCONN_WQ_MAX of it closes the
 * connection as a slow reader. A session that ends (GOAWAY) closes the
 * connection once its output is sent. At drain, an HTTPS connection's
 * socket is not read any further (read_now gives EOF): its streams in
 * flight are answered, then it is closed.
 *
 * Owns: per slot, the SSL object, the buffer above, the ciphertext send
 * queue and the HTTP/2 session; per table, one plaintext buffer and the
 * two buffers an HTTP/2 step fills (frames up, output down).
 */
#ifndef DP_TLSCONN_H
#define DP_TLSCONN_H

#include "doh.h"
#include "tcpconn.h"
#include "tls-t.h"

#include <openssl/ssl.h>

#define DP_TLSCONN_HS_PER_TURN 8 /* handshake steps per loop turn */
#define DP_TLSCONN_RX_MAX (64u * 1024u) /* ciphertext held unread, then closed */
#define DP_TLSCONN_HELLO_MAX (32u * 1024u) /* ... before our first flight */
#define DP_TLSCONN_HS_COST (8u * 1024u) /* budget charged per handshake in progress */

/* Events counted through dp_tlsconn_io_t.stat. */
enum dp_tlsconn_stat {
	DP_TLSC_HANDSHAKE, /* a handshake completed */
	DP_TLSC_RESUMED, /* ... by resuming a session (ticket) */
	DP_TLSC_HS_FAILED, /* refused (ALPN, version, ...) or broken */
	DP_TLSC_HS_TIMEOUT, /* not done within the handshake timeout */
	DP_TLSC_HS_DEFERRED, /* a step waited for the next loop turn */
	DP_TLSC_ERROR, /* a TLS error after the handshake (closed) */
	DP_TLSC_DOH_SLOW, /* DNS-over-HTTPS answers held back over the bound (closed) */
};

/* The transport below. Called from the shard's thread. */
typedef struct dp_tlsconn_io {
	/* Send buf[0..len) (ciphertext) on fd for slot idx/gen; one completion,
	 * dp_tlsconn_on_send. buf is left untouched until then. */
	void (*send)(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf,
		     size_t len);
	/* Read what already sits in fd's socket, without waiting: octets, 0
	 * at EOF, or a negative errno (drain). */
	long (*read_now)(void *ctx, int fd, uint8_t *buf, size_t cap);
	/* Write buf[0..len) to fd now, without waiting, as much as the socket
	 * takes (dp_tlsconn_goodbye: best effort, the result not needed). */
	void (*write_now)(void *ctx, int fd, const uint8_t *buf, size_t len);
	/* Count event which (enum dp_tlsconn_stat). */
	void (*stat)(void *ctx, int which);
	/* Count DNS-over-HTTPS event which (enum dp_doh_stat). */
	void (*doh_stat)(void *ctx, int which);
	/* The DNS-over-HTTPS path ("/dns-query") new sessions serve. */
	const char *(*doh_path)(void *ctx);
} dp_tlsconn_io_t;

enum { DP_TLSC_PT_NONE = 0, DP_TLSC_PT_FILL, DP_TLSC_PT_OUT };

typedef struct dp_tlsc {
	SSL *ssl; /* NULL: not a TLS connection */
	uint32_t gen; /* of the tcpconn slot it serves */
	bool hs_done;
	bool https; /* an HTTPS listener's: HTTP/2 once the handshake is done */
	bool hs_listed; /* on the handshaking list */
	bool deferred; /* on the deferred list */
	bool sending; /* a ciphertext send is in the transport */
	bool poked; /* ... an empty one, to complete a failed tcpconn send */
	bool failed; /* handshake refused: close once its alert is out */
	bool pt_failed; /* SSL_write failed: tcpconn's send completes with an error */
	bool replied; /* our first flight is made: the client may send more */
	bool rec_ready; /* handshake: a record ended in the ciphertext at hand */
	bool rx_lent; /* w.rx is a receive's buffer, lent to the BIO for a call */
	uint8_t rec_hdr; /* handshake: header octets seen of the current record */
	uint8_t rec_len_hi; /* ... its length's high octet */
	uint16_t rec_body; /* ... its octets still to come */
	uint8_t pt; /* tcpconn's send: none, its ciphertext in wq.fill, in wq.out */
	uint32_t pt_len;
	uint64_t born_ms;
	dp_link_t hlink; /* handshaking list */
	dp_link_t dlink; /* deferred list */
	dp_tls_wire_t w; /* the BIO's: rx is own, or a receive's buffer during a call */
	dp_sendq_t wq; /* ciphertext to send */
	size_t charged; /* octets charged to tcpconn's budget (footprint, when last settled) */
	dp_doh_t *doh; /* https, handshake done: the HTTP/2 session */
} dp_tlsc_t;

typedef struct dp_tlsconns {
	dp_tcpconns_t *tcp; /* the connections these are the transport of */
	const dp_tlsconn_io_t *io;
	void *ctx;
	dp_tlsc_t *c; /* one per tcpconn slot */
	uint32_t n;
	uint8_t *plain; /* one SSL_read's plaintext */
	dp_buf_t frames; /* HTTP/2: queries made of one step's input, for tcpconn */
	dp_buf_t hout; /* HTTP/2: one step's output, to encrypt */
	dp_list_t handshaking; /* accept order: the handshake timeout */
	dp_list_t deferred; /* waiting for a handshake step, arrival order */
	uint32_t budget; /* handshake steps left this loop turn */
	bool in_run; /* dp_tlsconn_run is taking deferred steps */
	bool teardown; /* dp_tlsconn_drop frees nothing (the ring may still read) */
} dp_tlsconns_t;

/* Set up the TLS side of table tcp (one slot per tcpconn slot, zero pages
 * until used). Allocates; returns 0 or -ENOMEM. */
int dp_tlsconn_init(dp_tlsconns_t *t, dp_tcpconns_t *tcp, const dp_tlsconn_io_t *io, void *ctx);
/* Free every session and buffer (after the transport is gone). Accepts a
 * table never set up. */
void dp_tlsconn_free(dp_tlsconns_t *t);

/* tcpconn slot idx/gen, just accepted, is a TLS server connection under
 * ctx (a new SSL references it); https: DNS-over-HTTPS, else DNS-over-TLS.
 * Returns 0, or DP_E_TLS (the caller closes the slot). */
int dp_tlsconn_open(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, SSL_CTX *ctx, uint64_t now_ms,
		    bool https);
/* True when slot idx is a TLS connection. */
static inline bool dp_tlsconn_is(const dp_tlsconns_t *t, uint32_t idx)
{
	return idx < t->n && t->c[idx].ssl != NULL;
}
/* The transport closes slot idx: forget its session and buffers (unless
 * tearing down). */
void dp_tlsconn_drop(dp_tlsconns_t *t, uint32_t idx);

/* A receive completion of TLS slot idx/gen, as dp_tcpconn_on_recv takes
 * it: ciphertext res octets at data. Decrypts and hands the plaintext to
 * tcpconn, the completion last. Hot path. */
void dp_tlsconn_on_recv(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, int res, bool more,
			uint8_t *data);
/* A ciphertext send completion of slot idx/gen: res octets or -errno. */
void dp_tlsconn_on_send(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, int res);

/* tcpconn's send on TLS slot idx/gen (its io->send): encrypt
 * buf[0..len), queue the ciphertext; tcpconn's completion comes when it is
 * sent. Hot path. */
void dp_tlsconn_send(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, const uint8_t *buf,
		     size_t len);
/* tcpconn's drain read (its io->read_now) on TLS slot idx: plaintext
 * already decryptable from what sits in the socket; 0 at EOF or when no
 * more can be had without waiting, else a negative errno. */
long dp_tlsconn_read_now(dp_tlsconns_t *t, uint32_t idx, int fd, uint8_t *buf, size_t cap);
/* tcpconn closes TLS slot idx (its io->shutdown, before fd is shut
 * down): a connection in good standing is told so, a GOAWAY (NO_ERROR)
 * first for HTTP/2, then close_notify (RFC 8446 6.1), written at once
 * (io->write_now) when no ciphertext waits or is being sent (two writers
 * would interleave; otherwise it is left out). Best effort: the socket
 * takes it or not, nothing waits for it. */
void dp_tlsconn_goodbye(dp_tlsconns_t *t, uint32_t idx, int fd);
/* Ciphertext of slot idx queued and not handed to the kernel yet. */
size_t dp_tlsconn_unsent(const dp_tlsconns_t *t, uint32_t idx);

/* Once per loop turn, at a safe point (no call of tcpconn's on the stack):
 * a new budget of handshake steps, spent first on the deferred ones. */
void dp_tlsconn_run(dp_tlsconns_t *t);
/* True when deferred handshakes wait: the loop must not sleep. */
static inline bool dp_tlsconn_more(const dp_tlsconns_t *t)
{
	return t->deferred.count != 0;
}
/* Close connections whose handshake is not done limit_ms after accept. */
void dp_tlsconn_expire(dp_tlsconns_t *t, uint64_t now_ms, uint32_t limit_ms);

#endif
