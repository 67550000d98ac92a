/* doh.h - DNS-over-HTTPS sessions (RFC 8484): one HTTP/2 server session
 * (nghttp2) per connection, between the TLS layer (tlsconn.c), which hands
 * it plaintext and sends what it makes, and the stream state machine
 * (tcpconn.h), which sees the requests as a DNS-over-TCP client's frames
 * and answers them as such. No I/O, no clock.
 *
 * Requests: GET PATH?dns=BASE64URL (unpadded, RFC 4648 5) and POST PATH
 * with content-type application/dns-message. A request that holds a DNS
 * query becomes one frame (2-octet length, the message) whose ID is
 * replaced by a query slot's: clients send ID 0 (RFC 8484 4.1), so many
 * streams' queries share one ID, and the slot says which stream an answer
 * is for. The answer's ID is the request's again. What is not a query
 * gets its HTTP error at once and never reaches tcpconn: 400 (no or bad
 * dns=, too short, a response, unreadable), 404 (other path), 405 (other
 * method), 413 (body over 65,535 octets), 415 (other content type).
 * Answers: 200, content-type application/dns-message, content-length, and
 * cache-control max-age = the smallest TTL of the answer's records (0
 * without a record), RFC 8484 5.1.
 *
 * Abuse limits (each a response to a known HTTP/2 attack):
 *   - SETTINGS_MAX_CONCURRENT_STREAMS DP_DOH_MAX_STREAMS: further streams
 *     are refused (RST_STREAM REFUSED_STREAM, by nghttp2);
 *   - a stream's header block over DP_DOH_HDR_MAX octets is reset, and a
 *     block of more than DP_DOH_MAX_CONTINUATIONS CONTINUATION frames ends
 *     the connection (CONTINUATION flood, CVE-2024-28182);
 *   - rapid reset (CVE-2023-44487): a reset stream's query keeps its slot
 *     until its answer comes (then dropped), so resetting frees nothing the
 *     upstream side still works on: a connection has at most DP_DOH_SLOTS
 *     queries running however fast it resets; and resets beyond a burst of
 *     DP_DOH_RESET_BURST, then DP_DOH_RESET_RATE per second, end it (GOAWAY);
 *   - request bodies and header blocks held at once are bounded per
 *     connection (DP_DOH_RX_MAX): a stream that would go over is reset;
 *   - answers the client's flow-control window holds back count in
 *     dp_doh_pending; the caller closes a connection that lets them pile up.
 * A protocol error or an exceeded limit that ends the connection makes
 * dp_doh_recv return -1 with a GOAWAY in the output: send it, then close.
 *
 * Memory: nghttp2 allocates through this module's allocator, which counts
 * its octets; they, the requests' buffers and the answers held add up to
 * dp_doh_footprint, which the caller charges to its connection budget.
 */
#ifndef DP_DOH_H
#define DP_DOH_H

#include "buf.h"

#define DP_DOH_PATH_MAX 128 /* --listen-https-path, terminating NUL included */
#define DP_DOH_MAX_STREAMS 100 /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define DP_DOH_SLOTS 256 /* queries of one connection in flight upward */
#define DP_DOH_HDR_MAX 8192 /* a header block (RFC 7541 sizes: name + value + 32) */
#define DP_DOH_MAX_CONTINUATIONS 4
#define DP_DOH_RX_MAX (256u * 1024u) /* request octets held at once, all streams */
#define DP_DOH_RESET_BURST 200
#define DP_DOH_RESET_RATE 100 /* per second, after the burst */
/* An idle session's footprint, rounded up (nghttp2 keeps a 16 KB frame
 * buffer and its HPACK tables: 28 KB measured): what a connection budget
 * must allow per client for --max-tcp-clients of them to be idle. */
#define DP_DOH_IDLE_COST (32u * 1024u)

/* Events counted through the stat callback. */
enum dp_doh_stat {
	DP_DOH_REQUEST, /* a request became a query */
	DP_DOH_HTTP_ERROR, /* answered 4xx */
	DP_DOH_RESET, /* the client reset a stream (RST_STREAM) */
	DP_DOH_GOAWAY, /* the session ended for a protocol error or abuse */
};

typedef struct dp_doh dp_doh_t;

/* A server session for requests at path (copied; "/dns-query"); stat(ctx,
 * which) counts events. Its first output (the server's SETTINGS) is ready
 * at once. Returns NULL when out of memory. */
dp_doh_t *dp_doh_new(const char *path, void (*stat)(void *ctx, int which), void *ctx);
/* Free the session and everything it holds. Accepts NULL. */
void dp_doh_free(dp_doh_t *h);

/* Plaintext received, p[0..n): the queries it completes are appended to
 * *frames as DNS-over-TCP frames. Returns 0, or -1 when the connection
 * must end (a GOAWAY is in the output when one could be made; send it,
 * then close), or -ENOMEM (frames could not grow). */
int dp_doh_recv(dp_doh_t *h, const uint8_t *p, size_t n, dp_buf_t *frames);
/* Answers as tcpconn sends them: frames, p[0..n). Each goes to the stream
 * its ID names, if that stream is still open (else it is dropped).
 * Returns 0, or -1 when the session failed (close). */
int dp_doh_answer(dp_doh_t *h, const uint8_t *p, size_t n);
/* Append to *out everything the session has to send now (frames the
 * flow-control windows allow). Returns 0, or -1 when the session failed
 * (close) or *out could not grow. */
int dp_doh_output(dp_doh_t *h, dp_buf_t *out);
/* The server closes the connection in good standing: a GOAWAY with
 * NO_ERROR (not counted as DP_DOH_GOAWAY) into the output. */
void dp_doh_goodbye(dp_doh_t *h);
/* True when the session wants neither to read nor to write any more (it
 * sent or received GOAWAY and has nothing left): close the connection. */
bool dp_doh_done(const dp_doh_t *h);
/* Octets held: nghttp2's state, request buffers, answers not sent yet. */
size_t dp_doh_footprint(const dp_doh_t *h);
/* Answer octets held back by the client's flow-control windows. */
size_t dp_doh_pending(const dp_doh_t *h);
/* Streams open and queries in flight (for tests and drain). */
unsigned dp_doh_streams(const dp_doh_t *h);
unsigned dp_doh_inflight(const dp_doh_t *h);

/* Decode unpadded base64url (RFC 4648 5) src[0..n) into out (cap octets).
 * Returns the octets written, or -1 (a character outside the alphabet,
 * padding, a length no encoding has, or too long for cap). */
long dp_base64url_decode(const char *src, size_t n, uint8_t *out, size_t cap);

#endif
