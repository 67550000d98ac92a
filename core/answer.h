/* answer.h - personalising an answer for one client.
 *
 * An answer goes out to a client from one of two sources: the upstream's
 * answer just received (shared by every client coalesced on it) or an entry
 * of the cache. Either way the client gets a copy fitted to it by
 * dp_answer_personalise(), the one place that does it:
 *   - its ID, its RD bit, and its own spelling of the name (0x20 case
 *     randomisation survives);
 *   - AD only when it set AD or DO (RFC 6840 5.7: queries go upstream with
 *     AD set, so the answer does not depend on the client's AD);
 *   - every TTL: 2^31 and above as 0 (RFC 2181 8), at most ttl_max, less
 *     the time spent in the cache, or DP_ANSWER_STALE_TTL when served stale
 *     (RFC 8767); rewritten by offset, the message is not walked;
 *   - EDNS as the client asked: no OPT for a client that sent none; else no
 *     upstream option but Padding when the client's query carried Padding
 *     (RFC 7830, RFC 8467) and the client's own Client Subnet (edns.h);
 *   - over UDP, the truncated form (TC, header, question, OPT) when it is
 *     larger than the client takes;
 *   - over a stream, for a client with EDNS: edns-tcp-keepalive when the
 *     frontend announces it, and Padding to its block for an encrypted
 *     client (RFC 8467: 468 octets), in place of any other Padding.
 * No allocation; the source is read only, the output is the caller's.
 */
#ifndef DP_ANSWER_H
#define DP_ANSWER_H

#include "dns.h"

#define DP_ANSWER_STALE_TTL 30 /* RFC 8767 4: 30 s recommended */

/* What an answer is served from. */
typedef struct dp_answer_src {
	const uint8_t *wire;
	size_t len; /* at most v.msg_end */
	dp_dns_view_t v; /* of wire: question_end, the OPT and the counts are used */
	const uint16_t *ttl; /* TTL offsets of every record but the OPT */
	uint16_t nttl, ttl_total; /* as in dp_dns_answer_t: nttl < ttl_total walks */
	uint32_t ttl_max; /* no TTL above it (UINT32_MAX: none) */
	uint32_t age; /* seconds spent in the cache, taken off every TTL */
	bool stale; /* every TTL DP_ANSWER_STALE_TTL */
	bool scrubbed; /* the OPT holds nothing a client of this question may not
			* see (the cache's entries): kept as it is for a client
			* with EDNS */
} dp_answer_src_t;

/* The client an answer is personalised for. */
typedef struct dp_answer_client {
	const uint8_t *q; /* its query: the name is read at qv->qname_off */
	const dp_dns_view_t *qv; /* ID, RD, AD, DO, OPT, Padding */
	const uint8_t *ecs; /* its Client Subnet as forwarded (dp_edns_ecs_read), */
	size_t ecs_len; /* NULL / 0 when none was */
	uint16_t udp_limit; /* over UDP, the largest answer it takes; 0: no limit (TCP) */
	/* over a stream (TCP, TLS), for a client that sent an OPT
	 * (dp_edns_stream_answer): announce edns-tcp-keepalive, in 100 ms */
	bool keepalive_on;
	uint16_t keepalive;
	uint16_t pad_block; /* pad to this block (encrypted clients: 468); 0: as asked */
} dp_answer_client_t;

/* src for the upstream answer msg (len octets, parsed into a, which must
 * outlive src): nothing aged, TTLs at most ttl_max. */
void dp_answer_src_upstream(dp_answer_src_t *src, const uint8_t *msg, size_t len,
			    const dp_dns_answer_t *a, uint32_t ttl_max);

/* Write to out (cap octets) the answer src personalised for client cl, as
 * the file's header says. *truncated tells whether it was cut to the UDP
 * limit. Returns the length, or DP_E_TOOBIG when src does not fit cap.
 * Hot path: one copy, TTLs rewritten by offset, no allocation. */
int dp_answer_personalise(const dp_answer_src_t *src, const dp_answer_client_t *cl, uint8_t *out,
			  size_t cap, bool *truncated);

#endif
