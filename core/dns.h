/* dns.h - DNS wire format: validation, views, small answers we build.
 *
 * Messages are validated and read in place, where they landed (no copy, no
 * allocation). dp_dns_parse_query() / dp_dns_parse_answer() walk the whole
 * message once, through a bounds-checked cursor (cursor.h): header counts
 * against length, label lengths, compression pointers (in bounds, strictly
 * backwards so they cannot loop, at most DP_DNS_MAX_JUMPS per name), names of
 * at most 255 octets, every RR's RDATA inside the message, at most one OPT
 * record (root owner, additional section). The result is a dp_dns_view_t of
 * offsets into the message. An upstream answer is parsed into a
 * dp_dns_answer_t, which adds where each record's TTL is: whoever rewrites
 * records later (TTL clamping and ageing, the cache) does it by offset,
 * without walking the message again (Knot's rr_info).
 */
#ifndef DP_DNS_H
#define DP_DNS_H

#include "cursor.h"
#include "dp.h"

#define DP_DNS_HDR_LEN 12
#define DP_DNS_MAX_MSG 65535
#define DP_DNS_MAX_NAME 255
#define DP_DNS_MAX_JUMPS 64

#define DP_DNS_TYPE_SOA 6
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
	uint16_t opt_after; /* records after the OPT (they move when it changes), 0 without */
} dp_dns_view_t;

/* Records of an answer whose TTL offsets dp_dns_answer_t holds. A 64 KiB
 * message can hold about 6,000 records: an array for all of them (12 KiB)
 * on every answer's stack would cost more than the walks it saves. Real
 * answers hold a few records (a CNAME chain with signatures: about 20;
 * referral-like answers with glue: about 30), so the first 64 are kept
 * (128 octets) and the rare larger answer is walked on from the last one
 * kept (dp_dns_ttl_iter_t hides the difference). The cache stores every
 * offset of an entry once, at insert (no cap there: the entry is allocated
 * anyway), so a cache hit never walks. */
#define DP_DNS_RR_MAX 64

/* An upstream answer, parsed once: its view and, for every record but the
 * OPT in message order, the offset of its TTL field. Everything else of a
 * record is a fixed distance from it: TYPE at ttl - 4, CLASS at ttl - 2,
 * RDLENGTH at ttl + 4, RDATA at ttl + 6; only the owner name lies before
 * TYPE, and nothing after validation needs its start (Knot keeps it for
 * compression, which dotproxy never does). */
typedef struct dp_dns_answer {
	dp_dns_view_t v;
	uint16_t nttl; /* offsets in ttl[]: min(ttl_total, DP_DNS_RR_MAX) */
	uint16_t ttl_total; /* records but the OPT in the message */
	uint16_t ttl[DP_DNS_RR_MAX];
} dp_dns_answer_t;

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

/* dp_dns_parse_answer() that also fills a->ttl (the same single pass).
 * Hot path, no allocation. */
int dp_dns_parse_answer_rrs(const uint8_t *msg, size_t len, dp_dns_answer_t *a);

/* A record's TTL as a reader must take it: 2^31 and above count as 0
 * (RFC 2181 8). ttl_off: the offset of the TTL field. */
static inline uint32_t dp_dns_ttl(const uint8_t *msg, size_t ttl_off)
{
	uint32_t t = dp_rd32(msg + ttl_off);
	return (t & 0x80000000u) ? 0 : t;
}

/* The TTL offsets of every record but the OPT of a validated message, in
 * order: the first n from off[], and when the message has more (total > n)
 * the rest by walking on from the end of the last of them. For
 * dp_dns_answer_t (off = ttl) and the cache's entries (n == total). */
typedef struct dp_dns_ttl_iter {
	const uint8_t *msg;
	const uint16_t *off;
	unsigned n, total, i;
	size_t pos; /* past the record returned last, once beyond off[] */
} dp_dns_ttl_iter_t;

/* Walk on from pos (a record's start) to the next record that is not the
 * OPT; returns the offset of its TTL and sets *pos past it. The slow part
 * of dp_dns_ttl_next(), for answers larger than DP_DNS_RR_MAX. */
size_t dp_dns_ttl_walk(const uint8_t *msg, size_t *pos);

/* Start it over validated message msg: off[0, n), then walked up to total
 * (n > 0 whenever total > n: the walk starts after off[n - 1]). */
static inline void dp_dns_ttl_iter_init(dp_dns_ttl_iter_t *it, const uint8_t *msg,
					const uint16_t *off, unsigned n, unsigned total)
{
	it->msg = msg;
	it->off = off;
	it->n = n;
	it->total = total;
	it->i = 0;
	it->pos = 0;
}

/* The next TTL offset into *ttl_off; false when there is none left. */
static inline bool dp_dns_ttl_next(dp_dns_ttl_iter_t *it, size_t *ttl_off)
{
	if (it->i >= it->total)
		return false;
	if (likely(it->i < it->n)) {
		*ttl_off = it->off[it->i++];
		return true;
	}
	if (it->i == it->n) { /* n > 0 here: DP_DNS_RR_MAX records came first */
		size_t last = it->off[it->n - 1];
		it->pos = last + 6 + dp_rd16(it->msg + last + 4);
	}
	it->i++;
	*ttl_off = dp_dns_ttl_walk(it->msg, &it->pos);
	return true;
}

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
 * written, pointers not followed) that starts at p. */
size_t dp_dns_skip_name(const uint8_t *msg, size_t p);

/* Canonical text of a wire name for logs ("example.com."), bounded by cap. */
void dp_dns_name_str(const uint8_t *msg, size_t len, size_t off, char *out, size_t cap);

#endif
