/* fuzz_dns_answer.c - dp_dns_parse_answer on upstream bytes, then
 * dp_dns_truncate on a copy; the truncated form must parse again. The same
 * bytes through dp_dns_parse_answer_rrs: the same verdict and view, and TTL
 * offsets that agree with a record-by-record walk of the message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

static uint8_t copy[DP_DNS_MAX_MSG];

/* The parsed form of a valid answer: the same view, and the TTL offsets of
 * every record but the OPT, in order, as a plain walk finds them. */
static void check_ttls(const uint8_t *data, const dp_dns_view_t *v)
{
	static dp_dns_answer_t a;
	CHECK(dp_dns_parse_answer_rrs(data, v->msg_end, &a) == 0);
	CHECK(memcmp(&a.v, v, sizeof(*v)) == 0);
	unsigned total = (unsigned)v->ancount + v->nscount + v->arcount - (v->has_opt ? 1 : 0);
	CHECK(a.ttl_total == total && a.nttl == (total < DP_DNS_RR_MAX ? total : DP_DNS_RR_MAX));
	dp_dns_ttl_iter_t it;
	size_t off, p = v->question_end, k = 0;
	dp_dns_ttl_iter_init(&it, data, a.ttl, a.nttl, a.ttl_total);
	for (unsigned i = 0; i < (unsigned)v->ancount + v->nscount + v->arcount; i++) {
		p = dp_dns_skip_name(data, p);
		CHECK(p + 10 <= v->msg_end);
		if (p - 1 != v->opt_off || !v->has_opt) {
			CHECK(dp_dns_ttl_next(&it, &off) && off == p + 4);
			k++;
		}
		p += 10 + dp_rd16(data + p + 8);
	}
	CHECK(k == total && !dp_dns_ttl_next(&it, &off) && p == v->msg_end);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	dp_dns_view_t v, vt;
	int rc = dp_dns_parse_answer(data, size, &v);
	if (size < DP_DNS_HDR_LEN || size > DP_DNS_MAX_MSG) {
		CHECK(rc == DP_E_MALFORMED);
		return 0;
	}
	CHECK(rc == 0 || rc == DP_E_FORMERR);
	CHECK(v.id == dp_rd16(data));
	if (rc < 0)
		return 0;

	CHECK(v.flags & DP_DNS_F_QR);
	CHECK(v.has_question && v.qdcount == 1 && v.qname_off == DP_DNS_HDR_LEN);
	CHECK(v.question_end == DP_DNS_HDR_LEN + v.qname_len + 4);
	CHECK(v.question_end <= v.msg_end && v.msg_end <= size);
	if (v.has_opt) {
		CHECK(v.opt_len >= 11 && v.opt_off >= v.question_end);
		CHECK((size_t)v.opt_off + v.opt_len <= v.msg_end);
	}
	CHECK(dp_dns_question_equal(data, &v, data, &v));
	check_ttls(data, &v);

	/* Truncation keeps header, question and OPT, and still parses. */
	memcpy(copy, data, size);
	size_t n = dp_dns_truncate(copy, &v);
	CHECK(n <= v.msg_end && n <= size);
	CHECK(n == v.question_end + (v.has_opt ? v.opt_len : 0u));
	CHECK(dp_dns_parse_answer(copy, n, &vt) == 0);
	CHECK(vt.msg_end == n);
	CHECK(vt.id == v.id && vt.flags == (v.flags | DP_DNS_F_TC));
	CHECK(vt.ancount == 0 && vt.nscount == 0 && vt.arcount == (v.has_opt ? 1 : 0));
	CHECK(vt.has_opt == v.has_opt);
	if (vt.has_opt) {
		CHECK(vt.udp_size == v.udp_size && vt.do_bit == v.do_bit);
		CHECK(vt.ext_rcode == v.ext_rcode && vt.edns_version == v.edns_version);
		CHECK(memcmp(copy + vt.opt_off, data + v.opt_off, v.opt_len) == 0);
	}
	CHECK(dp_dns_question_equal(data, &v, copy, &vt));

	/* Print the owner of the first RR after the question, as logs do. */
	char name[300];
	dp_dns_name_str(data, size, v.question_end, name, sizeof(name));
	CHECK(strlen(name) < sizeof(name));
	return 0;
}
