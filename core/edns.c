/* edns.c - EDNS(0) padding on the upstream leg and answer scrubbing. */
#include "edns.h"

#include <string.h>

int dp_edns_pad_query(const uint8_t *msg, const dp_dns_view_t *v, unsigned block, uint8_t *out,
		      size_t cap)
{
	size_t end = v->msg_end, o = 0;
	/* Everything but the OPT, in order. */
	if (v->has_opt) {
		size_t before = v->opt_off, after = end - (v->opt_off + v->opt_len);
		if (before + after > cap)
			return DP_E_TOOBIG;
		memcpy(out, msg, before);
		memcpy(out + before, msg + v->opt_off + v->opt_len, after);
		o = before + after;
		if (after) {
			/* Records that followed the OPT moved down over it. */
			unsigned moved = 0;
			size_t p = v->question_end;
			unsigned n = (unsigned)v->ancount + v->nscount + v->arcount;
			for (unsigned i = 0; i < n; i++) {
				if (p > v->opt_off)
					moved++;
				p = dp_dns_skip_rr(msg, p);
			}
			dp_dns_shift_pointers(out, o, v->opt_off, moved, v->opt_off, v->opt_len);
		}
	} else {
		if (end > cap)
			return DP_E_TOOBIG;
		memcpy(out, msg, end);
		o = end;
		dp_wr16(out + 10, (uint16_t)(v->arcount + 1));
	}
	/* The OPT's fixed part: owner, type, class (payload size), TTL. */
	if (o + 11 > cap)
		return DP_E_TOOBIG;
	uint8_t *opt = out + o;
	opt[0] = 0;
	dp_wr16(opt + 1, DP_DNS_TYPE_OPT);
	size_t rd = o + 11, rdlen = 0;
	if (v->has_opt) {
		const uint8_t *src = msg + v->opt_off; /* owner is the single zero octet */
		memcpy(opt + 3, src + 3, 6); /* class and TTL as the client sent them */
		size_t so = v->opt_off + 11, send = v->opt_off + v->opt_len;
		while (so + 4 <= send) {
			size_t olen = dp_rd16(msg + so + 2);
			uint16_t code = dp_rd16(msg + so);
			/* Padding and keepalive are ours to set; a COOKIE belongs
			 * to the client's session with us, not ours upstream. */
			if (code != DP_DNS_OPT_PADDING && code != DP_DNS_OPT_KEEPALIVE &&
			    code != DP_DNS_OPT_COOKIE) {
				if (rd + rdlen + 4 + olen > cap)
					return DP_E_TOOBIG;
				memcpy(out + rd + rdlen, msg + so, 4 + olen);
				rdlen += 4 + olen;
			}
			so += 4 + olen;
		}
	} else {
		dp_wr16(opt + 3, DP_EDNS_OUR_UDP_SIZE);
		memset(opt + 5, 0, 4);
	}
	if (rd + rdlen + 4 > cap)
		return DP_E_TOOBIG;
	dp_wr16(out + rd + rdlen, DP_DNS_OPT_KEEPALIVE);
	dp_wr16(out + rd + rdlen + 2, 0);
	rdlen += 4;
	size_t total = rd + rdlen + 4;
	size_t pad = block ? (block - total % block) % block : 0;
	if (total + pad > cap || total + pad > DP_DNS_MAX_MSG)
		return DP_E_TOOBIG;
	uint8_t *p = out + rd + rdlen;
	dp_wr16(p, DP_DNS_OPT_PADDING);
	dp_wr16(p + 2, (uint16_t)pad);
	memset(p + 4, 0, pad);
	rdlen += 4 + pad;
	dp_wr16(opt + 9, (uint16_t)rdlen);
	return (int)(rd + rdlen);
}

size_t dp_edns_scrub_answer(uint8_t *msg, size_t len, dp_dns_view_t *v, bool client_opt,
			    bool client_padding)
{
	len = DP_MIN(len, (size_t)v->msg_end); /* trailing bytes never reach a client */
	if (!v->has_opt)
		return len;
	size_t off = v->opt_off, olen = v->opt_len;
	/* Records after the OPT (rare: upstreams put it last) move down;
	 * their pointers to names behind the cut move with them. */
	unsigned after = 0;
	if (off + olen < len) {
		size_t p = v->question_end;
		unsigned n = (unsigned)v->ancount + v->nscount + v->arcount;
		for (unsigned i = 0; i < n; i++) {
			if (p > off)
				after++;
			p = dp_dns_skip_rr(msg, p);
		}
	}
	if (!client_opt) {
		memmove(msg + off, msg + off + olen, len - (off + olen));
		if (after)
			dp_dns_shift_pointers(msg, len - olen, off, after, off, olen);
		dp_wr16(msg + 10, (uint16_t)(dp_rd16(msg + 10) - 1));
		v->has_opt = false;
		v->opt_padding = false;
		v->opt_keepalive = false;
		v->arcount--;
		len -= olen;
		v->msg_end = (uint16_t)len;
		return len;
	}
	bool strip_pad = v->opt_padding && !client_padding;
	/* Drop those options from the OPT's RDATA. */
	size_t rd = off + 11, rend = off + olen, o = rd;
	while (o + 4 <= rend) {
		size_t l = 4 + (size_t)dp_rd16(msg + o + 2);
		uint16_t code = dp_rd16(msg + o);
		if ((strip_pad && code == DP_DNS_OPT_PADDING) || code == DP_DNS_OPT_KEEPALIVE ||
		    code == DP_DNS_OPT_COOKIE) {
			memmove(msg + o, msg + o + l, len - (o + l));
			rend -= l;
			len -= l;
			if (after)
				dp_dns_shift_pointers(msg, len, rend, after, o, l);
			continue;
		}
		o += l;
	}
	dp_wr16(msg + off + 9, (uint16_t)(rend - rd));
	v->opt_len = (uint16_t)(rend - off);
	if (strip_pad)
		v->opt_padding = false;
	v->opt_keepalive = false;
	v->msg_end = (uint16_t)len;
	return len;
}
