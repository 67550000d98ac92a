/* answer.c - one answer fitted to one client (answer.h): ID, flags, the
 * name's spelling, TTLs by offset, EDNS, UDP truncation. Owns nothing. */
#include "answer.h"
#include "edns.h"

#include <string.h>

void dp_answer_src_upstream(dp_answer_src_t *src, const uint8_t *msg, size_t len,
			    const dp_dns_answer_t *a, uint32_t ttl_max)
{
	src->wire = msg;
	src->len = DP_MIN(len, (size_t)a->v.msg_end); /* trailing bytes never reach a client */
	src->v = a->v;
	src->ttl = a->ttl;
	src->nttl = a->nttl;
	src->ttl_total = a->ttl_total;
	src->ttl_max = ttl_max;
	src->age = 0;
	src->stale = false;
	src->scrubbed = false;
}

/* The client's ID, RD and spelling of the name; AD only for a client that
 * set AD or DO (RFC 6840 5.7). Returns the header flags written. */
static uint16_t fit_header(uint8_t *out, const dp_answer_client_t *cl)
{
	const dp_dns_view_t *qv = cl->qv;
	dp_wr16(out, qv->id);
	uint16_t flags = (uint16_t)((dp_rd16(out + 2) & ~DP_DNS_F_RD) | (qv->flags & DP_DNS_F_RD));
	if (!(qv->flags & DP_DNS_F_AD) && !(qv->has_opt && qv->do_bit))
		flags &= (uint16_t)~DP_DNS_F_AD;
	dp_wr16(out + 2, flags);
	/* Same length: the question matched (cache key or in-flight table). */
	memcpy(out + DP_DNS_HDR_LEN, cl->q + qv->qname_off, qv->qname_len);
	return flags;
}

/* Every TTL but the OPT's, at the offsets src lists (out is a copy of
 * src->wire: the same offsets). */
static void fit_ttls(uint8_t *out, const dp_answer_src_t *src)
{
	dp_dns_ttl_iter_t it;
	size_t off;
	dp_dns_ttl_iter_init(&it, out, src->ttl, src->nttl, src->ttl_total);
	while (dp_dns_ttl_next(&it, &off)) {
		uint32_t t = dp_dns_ttl(out, off); /* RFC 2181 8 */
		if (t > src->ttl_max)
			t = src->ttl_max;
		if (src->stale)
			t = DP_ANSWER_STALE_TTL;
		else
			t = t > src->age ? t - src->age : 0;
		dp_wr32(out + off, t);
	}
}

int dp_answer_personalise(const dp_answer_src_t *src, const dp_answer_client_t *cl, uint8_t *out,
			  size_t cap, bool *truncated)
{
	*truncated = false;
	if (src->len > cap)
		return DP_E_TOOBIG;
	memcpy(out, src->wire, src->len);
	dp_dns_view_t v = src->v;
	v.flags = fit_header(out, cl);
	/* TTLs first: the offsets are the source's until the OPT shrinks. */
	fit_ttls(out, src);
	size_t len = src->len;
	v.msg_end = (uint16_t)len;
	if (!src->scrubbed || !cl->qv->has_opt)
		len = dp_edns_scrub_answer(out, len, &v, cl->qv->has_opt, cl->qv->opt_padding,
					   cl->ecs, cl->ecs_len);
	if (cl->udp_limit && len > cl->udp_limit) {
		len = dp_dns_truncate(out, &v);
		*truncated = true;
	}
	if ((cl->keepalive_on || cl->pad_block) && v.has_opt)
		len = dp_edns_stream_answer(out, len, cap, v.opt_off,
					    cl->keepalive_on ? cl->keepalive : -1, cl->pad_block);
	return (int)len;
}
