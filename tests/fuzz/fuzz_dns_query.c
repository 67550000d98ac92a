/* fuzz_dns_query.c - dp_dns_parse_query on client bytes, then the error
 * answer built from whatever view it left. Aborts when an invariant breaks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

static void check_view(const dp_dns_view_t *v, size_t len)
{
	CHECK(v->question_end <= len);
	if (v->has_question) {
		CHECK(v->qname_off == DP_DNS_HDR_LEN);
		CHECK(v->qname_len >= 1 && v->qname_len <= DP_DNS_MAX_NAME);
		/* The question name is never compressed. */
		CHECK(v->question_end == DP_DNS_HDR_LEN + v->qname_len + 4);
	}
	if (v->has_opt) {
		CHECK(v->opt_len >= 11);
		CHECK(v->opt_off >= v->question_end);
		CHECK((size_t)v->opt_off + v->opt_len <= len);
		CHECK(v->udp_size >= 512);
	} else {
		CHECK(v->udp_size == 512);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	dp_dns_view_t v, vr;
	uint8_t out[512];
	int rc = dp_dns_parse_query(data, size, &v);

	if (size < DP_DNS_HDR_LEN || size > DP_DNS_MAX_MSG) {
		CHECK(rc == DP_E_MALFORMED);
		return 0;
	}
	CHECK(rc == 0 || rc == DP_E_RESPONSE || rc == DP_E_NOTIMP || rc == DP_E_FORMERR ||
	      rc == DP_E_BADVERS);
	CHECK(v.id == dp_rd16(data) && v.flags == dp_rd16(data + 2));
	CHECK((rc == DP_E_RESPONSE) == ((v.flags & DP_DNS_F_QR) != 0));
	check_view(&v, size);
	if (rc == 0 || rc == DP_E_BADVERS) {
		CHECK(v.has_question && v.qdcount == 1);
		CHECK(v.question_end <= v.msg_end && v.msg_end <= size);
		CHECK(!v.has_opt || (size_t)v.opt_off + v.opt_len <= v.msg_end);
		CHECK((rc == DP_E_BADVERS) == (v.has_opt && v.edns_version != 0));
		CHECK(dp_dns_question_equal(data, &v, data, &v));
	}
	if (rc == DP_E_MALFORMED || rc == DP_E_RESPONSE)
		return 0;

	/* What the daemon would answer. */
	int rcode = rc == DP_E_NOTIMP ? DP_DNS_RCODE_NOTIMP :
		    rc == DP_E_FORMERR ? DP_DNS_RCODE_FORMERR :
		    rc == DP_E_BADVERS ? DP_DNS_RCODE_BADVERS : DP_DNS_RCODE_SERVFAIL;
	int n = dp_dns_build_error(data, &v, rcode, 1232, out, sizeof(out));
	CHECK(n >= DP_DNS_HDR_LEN && n <= 512);
	CHECK(dp_rd16(out) == v.id);
	CHECK(dp_dns_build_error(data, &v, rcode, 1232, out, (size_t)n - 1) == DP_E_TOOBIG);
	n = dp_dns_build_error(data, &v, rcode, 1232, out, sizeof(out));
	if (v.has_question) {
		CHECK(dp_dns_parse_answer(out, (size_t)n, &vr) == 0);
		CHECK(vr.msg_end == (size_t)n);
		CHECK(vr.id == v.id);
		CHECK(DP_DNS_RCODE(vr.flags) == (rcode & 0xf));
		CHECK(vr.ancount == 0 && vr.nscount == 0);
		CHECK(dp_dns_question_equal(data, &v, out, &vr));
		CHECK(vr.has_opt == v.has_opt);
		if (vr.has_opt) {
			CHECK(vr.ext_rcode == (rcode >> 4));
			CHECK(vr.edns_version == 0 && vr.do_bit == v.do_bit);
		}
	} else {
		CHECK(dp_rd16(out + 4) == 0 && dp_rd16(out + 10) == (v.has_opt ? 1 : 0));
		CHECK((size_t)n == DP_DNS_HDR_LEN + (v.has_opt ? 11u : 0u));
	}

	/* The name printer stays inside both buffers wherever it starts. */
	char name[64];
	size_t off = size > 12 ? 12 + data[size - 1] % (size - 12) : 12;
	dp_dns_name_str(data, size, off, name, sizeof(name));
	CHECK(strlen(name) < sizeof(name));
	return 0;
}
