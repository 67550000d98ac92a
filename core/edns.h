/* edns.h - EDNS(0) on the TLS leg: padding queries (RFC 7830, RFC 8467) and
 * scrubbing answers so that a client gets only the EDNS it asked for. */
#ifndef DP_EDNS_H
#define DP_EDNS_H

#include "dns.h"

#define DP_EDNS_QUERY_BLOCK 128 /* RFC 8467 4.1: pad queries to 128 octets */
#define DP_EDNS_OUR_UDP_SIZE 1232

/* Write the upstream form of query msg (view v) to out: the same message
 * with its OPT record moved to the end of the additional section, any
 * Padding, edns-tcp-keepalive and COOKIE options it had dropped, an empty
 * edns-tcp-keepalive option (so that the upstream tells us its idle timeout,
 * RFC 7828 3.2.1), and a Padding option that brings the whole length to a
 * multiple of block. A query without OPT gets one (payload size
 * DP_EDNS_OUR_UDP_SIZE, DO clear). Returns the new length, or DP_E_TOOBIG
 * when it does not fit cap. Hot path, no allocation. */
int dp_edns_pad_query(const uint8_t *msg, const dp_dns_view_t *v, unsigned block, uint8_t *out,
		      size_t cap);

/* Remove from answer msg (len octets, view v) what the client did not ask
 * for: the whole OPT record when the client sent none (client_opt false), or
 * else Padding options when its query carried none (client_padding false)
 * and always edns-tcp-keepalive and COOKIE, which belong to our session
 * with the upstream, not to the client's.
 * Works in place, updates v; returns the new length. Hot path. */
size_t dp_edns_scrub_answer(uint8_t *msg, size_t len, dp_dns_view_t *v, bool client_opt,
			    bool client_padding);

#endif
