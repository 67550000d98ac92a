/* edns.h - EDNS(0) on the TLS leg: padding queries (RFC 7830, RFC 8467) and
 * scrubbing answers so that a client gets only the EDNS it asked for. */
#ifndef DP_EDNS_H
#define DP_EDNS_H

#include "dns.h"

#define DP_EDNS_QUERY_BLOCK 128 /* RFC 8467 4.1: pad queries to 128 octets */
#define DP_EDNS_OUR_UDP_SIZE 1232

/* Client Subnet (RFC 7871) option data at most: FAMILY (2), SOURCE and
 * SCOPE PREFIX-LENGTH (1 + 1), an IPv6 address (16). */
#define DP_EDNS_ECS_MAX 20

/* Read the Client Subnet option of query msg (view v, v->opt_ecs set) and
 * write its data in the form we forward upstream to out (at least
 * DP_EDNS_ECS_MAX octets): FAMILY, SOURCE PREFIX-LENGTH, SCOPE 0, and the
 * ADDRESS cut to the source prefix (octets past it absent, bits past it in
 * the last octet cleared). Equal output means equal subnet: it is what the
 * cache and the in-flight table key on. Returns the length, or DP_E_FORMERR
 * when the option breaks RFC 7871 section 6 (family neither 1 nor 2, a
 * prefix longer than the family's addresses, ADDRESS not exactly
 * ceil(SOURCE / 8) octets). Hot path, no allocation. */
int dp_edns_ecs_read(const uint8_t *msg, const dp_dns_view_t *v, uint8_t *out);

/* Write the upstream form of query msg (view v) to out: the same message
 * with its OPT record moved to the end of the additional section, carrying
 * none of the client's options (a forwarded query depends only on what the
 * cache keys on, so that an answer cached or shared with coalesced queries
 * is right for every client that gets it), but when ecs is not NULL a
 * Client Subnet option with the ecs_len octets of data at ecs (from
 * dp_edns_ecs_read), an empty edns-tcp-keepalive option (so that the
 * upstream tells us its idle timeout, RFC 7828 3.2.1), and a Padding option
 * that brings the whole length to a multiple of block. The OPT's payload
 * size, version and flags (DO) are the client's. A query without OPT gets
 * one (payload size DP_EDNS_OUR_UDP_SIZE, DO clear). Returns the new
 * length, or DP_E_TOOBIG when it does not fit cap. Hot path, no
 * allocation. */
int dp_edns_pad_query(const uint8_t *msg, const dp_dns_view_t *v, const uint8_t *ecs,
		      size_t ecs_len, unsigned block, uint8_t *out, size_t cap);

/* Where the OPT record of dp_edns_pad_query's output starts, for the query
 * whose view is v (the OPT is moved last). */
static inline size_t dp_edns_padded_opt_off(const dp_dns_view_t *v)
{
	return v->has_opt ? (size_t)v->msg_end - v->opt_len : v->msg_end;
}

/* Leave out of query m (len octets, its OPT record at opt_off, the last
 * record) the options only an encrypted stream wants: Padding (RFC 7830:
 * pointless in the clear) and, unless keep_keepalive, edns-tcp-keepalive
 * (RFC 7828 3.2.1: never over UDP). Edits m in place and returns its new
 * length (len when the OPT is not where it should be). */
size_t dp_edns_strip_stream_opts(uint8_t *m, size_t len, size_t opt_off, bool keep_keepalive);

#define DP_EDNS_ANSWER_BLOCK 468 /* RFC 8467 4.1: pad answers to encrypted clients */

/* Fit answer msg (len octets in a buffer of cap, its OPT record at opt_off
 * and ending the message) for a client over a stream: leave out any
 * edns-tcp-keepalive option (and, when block, any Padding), then add edns-tcp-keepalive with
 * keepalive (units of 100 ms, RFC 7828 3.3.2) when keepalive >= 0, and,
 * when block, a Padding option that brings the whole message to a multiple
 * of block octets (RFC 8467 4.1). Returns the new length; what does not fit
 * cap (or 65,535) is not added, and an OPT that is not where it should be
 * is left alone. Hot path, no allocation. */
size_t dp_edns_stream_answer(uint8_t *msg, size_t len, size_t cap, size_t opt_off, int keepalive,
			     unsigned block);

/* Remove from answer msg (len octets, view v) what is not the client's: the
 * whole OPT record when the client sent none (client_opt false); else every
 * option of the upstream's but Padding when the client's query carried
 * Padding (client_padding), and a Client Subnet option whose FAMILY, SOURCE
 * PREFIX-LENGTH and ADDRESS equal ecs (ecs_len octets from
 * dp_edns_ecs_read, NULL when the client's subnet was not forwarded). NSID,
 * COOKIE, edns-tcp-keepalive, Extended DNS Errors and the rest describe the
 * upstream's session with us or this one response: none of them may reach a
 * client, and above all not another client through the cache. The OPT's
 * fixed part (payload size, extended RCODE, DO) stays.
 * Works in place, updates v (v->opt_ecs: the ECS option kept, or 0);
 * returns the new length. Records after the OPT (v->opt_after, from the
 * parse) move down with their pointers fixed; no record is walked to find
 * them. Hot path. */
size_t dp_edns_scrub_answer(uint8_t *msg, size_t len, dp_dns_view_t *v, bool client_opt,
			    bool client_padding, const uint8_t *ecs, size_t ecs_len);

/* SCOPE PREFIX-LENGTH of the Client Subnet option of answer msg (view v),
 * or -1 when it has none. */
int dp_edns_ecs_scope(const uint8_t *msg, const dp_dns_view_t *v);

#endif
