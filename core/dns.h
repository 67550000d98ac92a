/* dns.h - DNS wire format: validation, views, small answers we build.
 *
 * Messages are validated and read in place, where they landed (no copy, no
 * allocation). dp_dns_parse() walks the whole message once: header counts
 * against length, label lengths, compression pointers (in bounds, strictly
 * backwards so they cannot loop, at most DP_DNS_MAX_JUMPS per name), names of
 * at most 255 octets, every RR's RDATA inside the message, at most one OPT
 * record (root owner, additional section). The result is a dp_dns_view_t of
 * offsets into the message.
 */
#ifndef DP_DNS_H
#define DP_DNS_H

#include "dp.h"

#define DP_DNS_HDR_LEN 12
#define DP_DNS_MAX_MSG 65535
#define DP_DNS_MAX_NAME 255
#define DP_DNS_MAX_JUMPS 64

#define DP_DNS_TYPE_OPT 41
#define DP_DNS_OPT_PADDING 12
#define DP_DNS_OPT_KEEPALIVE 11 /* edns-tcp-keepalive, RFC 7828 */
#define DP_DNS_OPT_COOKIE 10 /* RFC 7873: between a client and its server, per hop */
#define DP_DNS_OPT_ECS 8 /* EDNS Client Subnet, RFC 7871 */

#define DP_DNS_RCODE_NOERROR 0
#define DP_DNS_RCODE_FORMERR 1
#define DP_DNS_RCODE_SERVFAIL 2
#define DP_DNS_RCODE_NXDOMAIN 3
#define DP_DNS_RCODE_NOTIMP 4
#define DP_DNS_RCODE_REFUSED 5
#define DP_DNS_RCODE_BADVERS 16 /* extended: upper bits travel in the OPT TTL */

/* Header flag bits (second 16-bit word). */
#define DP_DNS_F_QR 0x8000u
#define DP_DNS_F_AA 0x0400u
#define DP_DNS_F_TC 0x0200u
#define DP_DNS_F_RD 0x0100u
#define DP_DNS_F_RA 0x0080u
#define DP_DNS_F_AD 0x0020u
#define DP_DNS_F_CD 0x0010u
#define DP_DNS_OPCODE(flags) (((flags) >> 11) & 0xf)
#define DP_DNS_RCODE(flags) ((flags) & 0xf)

/* A validated message: offsets into the buffer it was parsed from. */
typedef struct dp_dns_view {
	uint16_t id;
	uint16_t flags;
	uint16_t qdcount, ancount, nscount, arcount;
	uint16_t qname_off; /* 12 when there is a question */
	uint16_t qname_len; /* wire length of the (uncompressed) question name */
	uint16_t qtype, qclass;
	uint16_t question_end; /* offset just past the question, 12 if none */
	uint16_t msg_end; /* offset just past the last RR; bytes after it are ignored */
	bool has_question;
	bool has_opt;
	bool do_bit;
	uint8_t edns_version;
	uint8_t ext_rcode; /* upper 8 bits of the extended RCODE from the OPT TTL */
	uint16_t udp_size; /* OPT's advertised size, 512 without OPT (and at least 512) */
	uint16_t opt_off; /* offset of the OPT RR (its owner name), when has_opt */
	uint16_t opt_len; /* whole OPT RR length */
	bool opt_padding; /* the OPT carries a Padding option (RFC 7830) */
	bool opt_keepalive; /* it carries edns-tcp-keepalive (RFC 7828) */
	uint16_t keepalive; /* its TIMEOUT in units of 100 ms, 0 when absent or empty */
	uint16_t opt_ecs; /* offset of the first Client Subnet option (its code), 0 if none */
} dp_dns_view_t;

/* Validate a query from a client and fill *v. Hot path, no allocation.
 * Returns 0, or:
 *   DP_E_MALFORMED  shorter than a header: drop (nothing to answer to)
 *   DP_E_RESPONSE   QR=1: drop silently (never answer a response)
 *   DP_E_NOTIMP     opcode other than QUERY (v->id/flags valid)
 *   DP_E_FORMERR    anything else wrong (v->id/flags valid; v->has_question
 *                   says whether the question could be read)
 *   DP_E_BADVERS    EDNS version other than 0 (view otherwise complete)
 */
int dp_dns_parse_query(const uint8_t *msg, size_t len, dp_dns_view_t *v);

/* Validate an answer from an upstream (QR=1, exactly one question, sections
 * well formed). Returns 0 or DP_E_MALFORMED / DP_E_FORMERR. Hot path. */
int dp_dns_parse_answer(const uint8_t *msg, size_t len, dp_dns_view_t *v);

/* True when both messages ask the same question: name compared without
 * regard to ASCII case, type and class equal. */
bool dp_dns_question_equal(const uint8_t *a, const dp_dns_view_t *va,
			   const uint8_t *b, const dp_dns_view_t *vb);

/* Build a short answer to query q (view vq, which may lack a question) with
 * rcode (DP_DNS_RCODE_*, extended codes allowed): header, the question when
 * known, and an OPT record when the query had one (payload size
 * our_udp_size). Returns the length written or DP_E_TOOBIG when out_cap is
 * too small (512 always suffices). */
int dp_dns_build_error(const uint8_t *q, const dp_dns_view_t *vq, int rcode,
		       uint16_t our_udp_size, uint8_t *out, size_t out_cap);

/* Turn answer msg (view v) in place into its truncated form: header,
 * question, and the OPT record if it had one; TC=1, AN/NS counts 0.
 * Returns the new length. */
size_t dp_dns_truncate(uint8_t *msg, const dp_dns_view_t *v);

/* After the octets [cut, cut + delta) of a validated message were removed
 * (moved over by what followed), fix the compression pointers of the count
 * records that start at from (owner names and the RDATA names of the types
 * dns.c walks): a pointer to an offset >= cut + delta now points delta
 * lower. Nothing may point into the removed range (the validator refuses
 * pointers to an OPT owner). Hot path, rarely taken. */
void dp_dns_shift_pointers(uint8_t *msg, size_t len, size_t from, unsigned count, size_t cut,
			   size_t delta);

/* In a message that passed validation: the offset just past the name (as
 * written, pointers not followed) / the whole RR that starts at p. */
size_t dp_dns_skip_name(const uint8_t *msg, size_t p);
size_t dp_dns_skip_rr(const uint8_t *msg, size_t p);

/* Canonical text of a wire name for logs ("example.com."), bounded by cap. */
void dp_dns_name_str(const uint8_t *msg, size_t len, size_t off, char *out, size_t cap);

#endif
