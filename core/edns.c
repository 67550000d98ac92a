/* edns.c - EDNS(0) padding on the upstream leg, Client Subnet, and answer
 * scrubbing. */
#include "edns.h"

#include <string.h>

int dp_edns_ecs_read(const uint8_t *msg, const dp_dns_view_t *v, uint8_t *out)
{
	/* Read inside the option: OPTION-LENGTH bounds everything after it. */
	dp_cursor_t c;
	dp_cursor_init(&c, msg, (size_t)v->opt_off + v->opt_len, (size_t)v->opt_ecs + 2);
	size_t olen = dp_cursor_u16(&c);
	if (!c.err && olen < c.len - c.pos)
		c.len = c.pos + olen;
	const uint8_t *d = msg + c.pos;
	uint16_t family = dp_cursor_u16(&c);
	unsigned source = dp_cursor_u8(&c);
	dp_cursor_skip(&c, 1); /* SCOPE PREFIX-LENGTH */
	unsigned bits = family == 1 ? 32 : family == 2 ? 128 : 0;
	size_t alen = (source + 7) / 8;
	if (c.err || bits == 0 || source > bits || dp_cursor_left(&c) != alen)
		return DP_E_FORMERR;
	memcpy(out, d, 3);
	out[3] = 0; /* SCOPE: 0 in queries (RFC 7871 6) */
	memcpy(out + 4, d + 4, alen);
	if (source % 8)
		out[4 + alen - 1] &= (uint8_t)(0xff00u >> (source % 8));
	return (int)(4 + alen);
}

int dp_edns_pad_query(const uint8_t *msg, const dp_dns_view_t *v, const uint8_t *ecs,
		      size_t ecs_len, unsigned block, uint8_t *out, size_t cap)
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
		if (after) /* records that followed the OPT moved down over it */
			dp_dns_shift_pointers(out, o, v->opt_off, v->opt_after, v->opt_off,
					      v->opt_len);
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
	} else {
		dp_wr16(opt + 3, DP_EDNS_OUR_UDP_SIZE);
		memset(opt + 5, 0, 4);
	}
	/* None of the client's options: Padding and keepalive are ours to set,
	 * a COOKIE belongs to the client's session with us, and anything else
	 * (ECS above all) would make the answer the client's alone while the
	 * cache and the in-flight table share it. */
	if (ecs) {
		if (rd + rdlen + 4 + ecs_len > cap)
			return DP_E_TOOBIG;
		dp_wr16(out + rd + rdlen, DP_DNS_OPT_ECS);
		dp_wr16(out + rd + rdlen + 2, (uint16_t)ecs_len);
		memcpy(out + rd + rdlen + 4, ecs, ecs_len);
		rdlen += 4 + ecs_len;
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

/* Whether answer option data d (l octets) is the Client Subnet we forwarded
 * (ecs): the same family, source prefix and address; the scope may differ. */
static bool ecs_is(const uint8_t *d, size_t l, const uint8_t *ecs, size_t ecs_len)
{
	return ecs && l == ecs_len && memcmp(d, ecs, 3) == 0 &&
	       memcmp(d + 4, ecs + 4, ecs_len - 4) == 0;
}

size_t dp_edns_scrub_answer(uint8_t *msg, size_t len, dp_dns_view_t *v, bool client_opt,
			    bool client_padding, const uint8_t *ecs, size_t ecs_len)
{
	len = DP_MIN(len, (size_t)v->msg_end); /* trailing bytes never reach a client */
	v->opt_ecs = 0;
	if (!v->has_opt)
		return len;
	size_t off = v->opt_off, olen = v->opt_len;
	/* Records after the OPT (rare: upstreams put it last) move down;
	 * their pointers to names behind the cut move with them. */
	unsigned after = v->opt_after;
	if (!client_opt) {
		memmove(msg + off, msg + off + olen, len - (off + olen));
		if (after)
			dp_dns_shift_pointers(msg, len - olen, off, after, off, olen);
		dp_wr16(msg + 10, (uint16_t)(dp_rd16(msg + 10) - 1));
		v->has_opt = false;
		v->opt_padding = false;
		v->opt_keepalive = false;
		v->opt_after = 0;
		v->arcount--;
		len -= olen;
		v->msg_end = (uint16_t)len;
		return len;
	}
	/* Keep Padding the client asked for and its own subnet; drop the rest. */
	bool padded = false;
	size_t rd = off + 11, rend = off + olen, o = rd;
	while (o + 4 <= rend) {
		size_t l = 4 + (size_t)dp_rd16(msg + o + 2);
		uint16_t code = dp_rd16(msg + o);
		if (code == DP_DNS_OPT_PADDING && client_padding) {
			padded = true;
			o += l;
			continue;
		}
		if (code == DP_DNS_OPT_ECS && !v->opt_ecs &&
		    ecs_is(msg + o + 4, l - 4, ecs, ecs_len)) {
			v->opt_ecs = (uint16_t)o;
			o += l;
			continue;
		}
		memmove(msg + o, msg + o + l, len - (o + l));
		rend -= l;
		len -= l;
		if (after)
			dp_dns_shift_pointers(msg, len, rend, after, o, l);
	}
	dp_wr16(msg + off + 9, (uint16_t)(rend - rd));
	v->opt_len = (uint16_t)(rend - off);
	v->opt_padding = padded;
	v->opt_keepalive = false;
	v->msg_end = (uint16_t)len;
	return len;
}

int dp_edns_ecs_scope(const uint8_t *msg, const dp_dns_view_t *v)
{
	if (!v->has_opt || !v->opt_ecs || dp_rd16(msg + v->opt_ecs + 2) < 4)
		return -1;
	return msg[v->opt_ecs + 7];
}

/* True when an OPT record starts at opt_off and ends message m. */
static bool opt_ends(const uint8_t *m, size_t len, size_t opt_off)
{
	return opt_off != 0 && opt_off + 11 <= len && m[opt_off] == 0 &&
	       dp_rd16(m + opt_off + 1) == DP_DNS_TYPE_OPT &&
	       opt_off + 11 + dp_rd16(m + opt_off + 9) == len;
}

static size_t drop_opts(uint8_t *m, size_t len, size_t opt_off, bool padding, bool keepalive);

size_t dp_edns_stream_answer(uint8_t *msg, size_t len, size_t cap, size_t opt_off, int keepalive,
			     unsigned block)
{
	if (!opt_ends(msg, len, opt_off))
		return len;
	len = drop_opts(msg, len, opt_off, block != 0, true);
	cap = DP_MIN(cap, (size_t)DP_DNS_MAX_MSG);
	size_t o = len;
	if (keepalive >= 0 && o + 6 <= cap) {
		dp_wr16(msg + o, DP_DNS_OPT_KEEPALIVE);
		dp_wr16(msg + o + 2, 2);
		dp_wr16(msg + o + 4, (uint16_t)DP_MIN(keepalive, 65535));
		o += 6;
	}
	if (block) {
		size_t pad = (block - (o + 4) % block) % block;
		if (o + 4 + pad <= cap) {
			dp_wr16(msg + o, DP_DNS_OPT_PADDING);
			dp_wr16(msg + o + 2, (uint16_t)pad);
			memset(msg + o + 4, 0, pad);
			o += 4 + pad;
		}
	}
	dp_wr16(msg + opt_off + 9, (uint16_t)(o - opt_off - 11));
	return o;
}

/* Leave out of the OPT at opt_off (ending m) its Padding options when
 * padding, its edns-tcp-keepalive options when keepalive. Returns the new
 * length (len when the options do not tile the RDATA). */
static size_t drop_opts(uint8_t *m, size_t len, size_t opt_off, bool padding, bool keepalive)
{
	size_t in = opt_off + 11, out = in;
	while (in + 4 <= len) /* the options must tile the RDATA exactly */
		in += 4u + dp_rd16(m + in + 2);
	if (in != len)
		return len; /* not ours: leave it alone */
	for (in = out; in < len;) {
		uint16_t code = dp_rd16(m + in);
		size_t olen = 4u + dp_rd16(m + in + 2);
		bool drop = (code == DP_DNS_OPT_PADDING && padding) ||
			    (code == DP_DNS_OPT_KEEPALIVE && keepalive);
		if (!drop) {
			memmove(m + out, m + in, olen);
			out += olen;
		}
		in += olen;
	}
	dp_wr16(m + opt_off + 9, (uint16_t)(out - opt_off - 11));
	return out;
}

size_t dp_edns_strip_stream_opts(uint8_t *m, size_t len, size_t opt_off, bool keep_keepalive)
{
	if (!opt_ends(m, len, opt_off))
		return len;
	return drop_opts(m, len, opt_off, true, !keep_keepalive);
}
