/* upstream-t.h - upstream connections and per-upstream state (types only). */
#ifndef DP_UPSTREAM_T_H
#define DP_UPSTREAM_T_H

#include "idmap.h"
#include "list.h"
#include "timerwheel.h"

#include <openssl/ssl.h>

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

#endif
