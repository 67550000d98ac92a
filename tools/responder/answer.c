/* answer.c - how dot-responder answers one query (see answer.h). The query
 * is parsed in place by dpwire's dp_dns_parse_query(); the answer is written
 * straight into the caller's batch buffer. Owns nothing.
 */
#include <limits.h>
#include <string.h>

#include "answer.h"
#include "dns.h"

#define SOA_RDLEN 24 /* two compressed names, five 32-bit fields */
#define SOA_RR_LEN (12 + SOA_RDLEN) /* with a compressed owner */
#define OPT_RR_LEN 11 /* root owner, no options */

/* --name-ttl: read the question's first label. "t<N>-..." (case ignored)
 * sets the TTL to N seconds; "t<N>-nx..." makes the name not exist. Any
 * other name keeps the command line's TTL and exists. Returns true when
 * the name does not exist. Only with --name-ttl, so not the default path. */
static bool name_rule(const uint8_t *q, const dp_dns_view_t *v, uint32_t *ttl)
{
	if (!v->has_question)
		return false;
	const uint8_t *l = q + v->qname_off;
	size_t len = l[0], i = 2;
	uint64_t n = 0;
	/* a name with a parent (the SOA's owner), first label "t" digits "-" */
	if (len < 3 || l[1 + len] == 0 || (l[1] | 0x20) != 't')
		return false;
	for (; i <= len && l[i] >= '0' && l[i] <= '9' && n <= INT32_MAX; i++)
		n = n * 10 + (uint64_t)(l[i] - '0');
	if (i == 2 || i > len || l[i] != '-' || n > INT32_MAX)
		return false;
	*ttl = (uint32_t)n;
	return i + 2 <= len && (l[i + 1] | 0x20) == 'n' && (l[i + 2] | 0x20) == 'x';
}

/* The authority section of a --name-ttl NXDOMAIN: the SOA of the parent of
 * the question name (owner, MNAME and RNAME all point into the question),
 * TTL and MINIMUM both ttl, so a cache keeps the negative answer ttl
 * seconds (RFC 2308 5). Writes SOA_RR_LEN bytes at p. */
static void put_soa(uint8_t *p, const dp_dns_view_t *v, uint8_t label_len, uint32_t ttl)
{
	static const uint32_t timers[4] = { 1, 3600, 600, 86400 }; /* serial .. expire */
	uint16_t zone = (uint16_t)(0xc000 | (v->qname_off + 1 + label_len));
	dp_wr16(p, zone);
	dp_wr16(p + 2, 6); /* SOA */
	dp_wr16(p + 4, 1);
	dp_wr16(p + 6, (uint16_t)(ttl >> 16));
	dp_wr16(p + 8, (uint16_t)ttl);
	dp_wr16(p + 10, SOA_RDLEN);
	dp_wr16(p + 12, zone); /* MNAME */
	dp_wr16(p + 14, zone); /* RNAME */
	for (int i = 0; i < 4; i++) {
		dp_wr16(p + 16 + 4 * i, (uint16_t)(timers[i] >> 16));
		dp_wr16(p + 18 + 4 * i, (uint16_t)timers[i]);
	}
	dp_wr16(p + 32, (uint16_t)(ttl >> 16)); /* MINIMUM */
	dp_wr16(p + 34, (uint16_t)ttl);
}

/* The answer record: owner compressed to the question name, class IN.
 * Writes 12 + rdlen bytes at p. */
static void put_record(uint8_t *p, uint16_t qtype, uint32_t ttl, const uint8_t *rdata,
		       size_t rdlen)
{
	p[0] = 0xc0; /* pointer to the question name at offset 12 */
	p[1] = DP_DNS_HDR_LEN;
	dp_wr16(p + 2, qtype);
	dp_wr16(p + 4, 1);
	dp_wr16(p + 6, (uint16_t)(ttl >> 16));
	dp_wr16(p + 8, (uint16_t)ttl);
	dp_wr16(p + 10, (uint16_t)rdlen);
	memcpy(p + 12, rdata, rdlen);
}

/* The OPT echoed to a query that had one: our payload size, DO copied.
 * Writes OPT_RR_LEN bytes at p. */
static void put_opt(uint8_t *p, uint16_t udp_size, bool do_bit)
{
	p[0] = 0; /* root owner */
	dp_wr16(p + 1, DP_DNS_TYPE_OPT);
	dp_wr16(p + 3, udp_size);
	p[5] = 0; /* extended RCODE */
	p[6] = 0; /* version */
	p[7] = do_bit ? 0x80 : 0;
	p[8] = 0;
	dp_wr16(p + 9, 0); /* no options */
}

/* A query dp_dns_parse_query() refused (rc): FORMERR, NOTIMP or BADVERS
 * with the question when it could be read, or ANS_CLOSE / ANS_DROP. */
static int answer_error(shard_t *s, const behave_t *bh, int rc, const uint8_t *q,
			const dp_dns_view_t *v, uint8_t *out, size_t out_cap)
{
	int rcode;
	switch (rc) {
	case DP_E_MALFORMED:
		return ANS_CLOSE;
	case DP_E_RESPONSE:
		return ANS_DROP;
	case DP_E_NOTIMP:
		rcode = DP_DNS_RCODE_NOTIMP;
		break;
	case DP_E_BADVERS:
		rcode = DP_DNS_RCODE_BADVERS;
		break;
	default:
		rcode = DP_DNS_RCODE_FORMERR;
		break;
	}
	CNT_INC(s, errors_answered);
	rc = dp_dns_build_error(q, v, rcode, bh->udp_size, out, out_cap);
	return rc < 0 ? ANS_CLOSE : rc;
}

int answer_build(shard_t *s, const behave_t *bh, const uint8_t *q, size_t len, uint8_t *out,
		 size_t out_cap)
{
	dp_dns_view_t v;
	int rc = dp_dns_parse_query(q, len, &v);
	if (rc != 0)
		return answer_error(s, bh, rc, q, &v, out, out_cap);

	uint32_t ttl = bh->ttl;
	bool nx = unlikely(bh->name_ttl) && name_rule(q, &v, &ttl);
	const uint8_t *rdata = NULL;
	size_t rdlen = 0;
	if (nx) {
		/* no answer record: an SOA in the authority section */
	} else if (v.qclass == 1 && v.qtype == 1) {
		rdata = bh->a;
		rdlen = sizeof(bh->a);
	} else if (v.qclass == 1 && v.qtype == 28) {
		rdata = bh->aaaa;
		rdlen = sizeof(bh->aaaa);
	}
	size_t qend = v.question_end;
	size_t need = qend + (rdlen ? 12 + rdlen : 0) + (nx ? SOA_RR_LEN : 0) +
		      (v.has_opt ? OPT_RR_LEN : 0);
	if (need > out_cap)
		return ANS_CLOSE;

	uint16_t flags = (uint16_t)(DP_DNS_F_QR | DP_DNS_F_RA |
				    (v.flags & (DP_DNS_F_RD | DP_DNS_F_CD)) |
				    (nx ? DP_DNS_RCODE_NXDOMAIN : 0));
	dp_wr16(out, v.id);
	dp_wr16(out + 2, flags);
	dp_wr16(out + 4, 1);
	dp_wr16(out + 6, rdlen ? 1 : 0);
	dp_wr16(out + 8, nx ? 1 : 0);
	dp_wr16(out + 10, v.has_opt ? 1 : 0);
	memcpy(out + DP_DNS_HDR_LEN, q + DP_DNS_HDR_LEN, qend - DP_DNS_HDR_LEN);
	uint8_t *p = out + qend;
	if (rdlen) {
		put_record(p, v.qtype, ttl, rdata, rdlen);
		p += 12 + rdlen;
	}
	if (nx) {
		put_soa(p, &v, q[v.qname_off], ttl);
		p += SOA_RR_LEN;
		CNT_INC(s, nxdomain);
	}
	if (v.has_opt)
		put_opt(p, bh->udp_size, v.do_bit);
	return (int)need;
}
