/* dns.c - DNS wire validation (one pass, through cursor.h), the TTL offsets
 * of an answer, and the few messages dotproxy builds itself. */
#include "dns.h"

#include <string.h>

/* Walk the name at off. Compression pointers must point strictly before the
 * start of the label sequence that holds them, so every jump goes backwards
 * and a loop is impossible; jumps are also capped. On success *next is the
 * offset just past the name as it appears at off, and *wire_len the length of
 * the expanded name. */
/* Label starts seen so far in the message being parsed: a compression
 * pointer must land on one (the start of a name, or of one of its
 * suffixes, seen before), never in a TTL, a count or other data. One bit per
 * octet, cleared for the message's length before each parse. */
static __thread uint8_t label_starts[DP_DNS_MAX_MSG / 8 + 1];

static inline void mark(size_t pos)
{
	label_starts[pos >> 3] |= (uint8_t)(1u << (pos & 7));
}

static inline bool marked(size_t pos)
{
	return label_starts[pos >> 3] & (1u << (pos & 7));
}

static int name_walk(const uint8_t *msg, size_t len, size_t off, bool allow_ptr,
		     size_t *next, size_t *wire_len)
{
	size_t pos = off, seq_start = off, total = 0, limit = len;
	unsigned jumps = 0;
	bool jumped = false;

	for (;;) {
		/* After a jump the name read must lie wholly before the pointer
		 * that led there (a prior occurrence), so a message cut after
		 * its last record still reads the same. */
		if (pos >= limit)
			return DP_E_FORMERR;
		uint8_t c = msg[pos];
		if (!jumped)
			mark(pos); /* a label, the root, or a pointer: a name suffix starts here */
		if (c == 0) {
			total += 1;
			if (!jumped)
				*next = pos + 1;
			break;
		}
		if ((c & 0xc0) == 0xc0) {
			if (!allow_ptr || pos + 1 >= limit)
				return DP_E_FORMERR;
			size_t target = ((size_t)(c & 0x3f) << 8) | msg[pos + 1];
			/* Backwards only, and never into the header, which holds
			 * no names (a pointer there would read counts as labels and
			 * change meaning when a count changes). */
			if (target >= seq_start || target < DP_DNS_HDR_LEN || !marked(target) ||
			    ++jumps > DP_DNS_MAX_JUMPS)
				return DP_E_FORMERR;
			if (!jumped)
				*next = pos + 2;
			jumped = true;
			limit = pos;
			pos = seq_start = target;
			continue;
		}
		if (c & 0xc0) /* 0x40 and 0x80: extended and reserved label types */
			return DP_E_FORMERR;
		total += (size_t)c + 1;
		if (total + 1 > DP_DNS_MAX_NAME)
			return DP_E_FORMERR;
		pos += (size_t)c + 1;
	}
	if (total > DP_DNS_MAX_NAME)
		return DP_E_FORMERR;
	*wire_len = total;
	return 0;
}

static int parse_question(const uint8_t *msg, size_t len, dp_dns_view_t *v)
{
	size_t next, wl;
	/* The question is the first name: nothing before it could be the target
	 * of a compression pointer, so it must be uncompressed. That also lets
	 * dp_dns_question_equal() compare it as a flat byte string. */
	int rc = name_walk(msg, len, DP_DNS_HDR_LEN, false, &next, &wl);
	if (rc < 0)
		return rc;
	dp_cursor_t c;
	dp_cursor_init(&c, msg, len, next);
	uint16_t qtype = dp_cursor_u16(&c);
	uint16_t qclass = dp_cursor_u16(&c);
	if (c.err)
		return DP_E_FORMERR;
	v->qname_off = DP_DNS_HDR_LEN;
	v->qname_len = (uint16_t)wl;
	v->qtype = qtype;
	v->qclass = qclass;
	v->question_end = (uint16_t)c.pos;
	v->has_question = true;
	return 0;
}

/* Where the names sit in the RDATA of the types that may carry compressed
 * names (RFC 3597 section 4 and its list of types decoders should expect):
 * *fixed octets before the first name, then *names names. Returns false for
 * every other type. One table for the validator and the pointer shifter. */
static bool rdata_layout(uint16_t type, unsigned *fixed, unsigned *names)
{
	*fixed = 0;
	switch (type) {
	case 2: case 3: case 4: case 5: case 7: case 8: case 9: case 12: case 39:
		*names = 1; return true; /* NS MD MF CNAME MB MG MR PTR DNAME */
	case 6: case 14: case 17:
		*names = 2; return true; /* SOA MINFO RP */
	case 15: case 18: case 21:
		*fixed = 2; *names = 1; return true; /* MX AFSDB RT */
	case 26:
		*fixed = 2; *names = 2; return true; /* PX */
	case 33:
		*fixed = 6; *names = 1; return true; /* SRV */
	default:
		return false;
	}
}

/* Names inside the RDATA (rdata_layout): walked, so their labels are valid
 * pointer targets, and checked to fit the RDATA. */
static int rdata_names(const uint8_t *msg, size_t len, uint16_t type, size_t rd, size_t end)
{
	unsigned fixed, names;
	if (!rdata_layout(type, &fixed, &names))
		return 0;
	size_t p = rd + fixed;
	for (unsigned i = 0; i < names; i++) {
		size_t next, wl;
		if (p >= end || name_walk(msg, end, p, true, &next, &wl) < 0)
			return DP_E_FORMERR;
		p = next;
	}
	if (type == 6)
		p += 20; /* SOA: serial, refresh, retry, expire, minimum */
	(void)len;
	return p <= end ? 0 : DP_E_FORMERR;
}

/* The options of the OPT whose RDATA is [rd, end): they must tile it
 * exactly; note Padding, keepalive and the first Client Subnet. */
static int parse_opt_options(const uint8_t *msg, size_t rd, size_t end, dp_dns_view_t *v)
{
	dp_cursor_t c;
	dp_cursor_init(&c, msg, end, rd);
	while (dp_cursor_left(&c)) {
		size_t o = c.pos;
		uint16_t code = dp_cursor_u16(&c);
		uint16_t olen = dp_cursor_u16(&c);
		dp_cursor_skip(&c, olen);
		if (c.err)
			return DP_E_FORMERR;
		if (code == DP_DNS_OPT_PADDING)
			v->opt_padding = true;
		if (code == DP_DNS_OPT_ECS && !v->opt_ecs)
			v->opt_ecs = (uint16_t)o;
		if (code == DP_DNS_OPT_KEEPALIVE) {
			v->opt_keepalive = true;
			if (olen == 2)
				v->keepalive = dp_rd16(msg + o + 4);
		}
	}
	return 0;
}

/* The OPT record at start (section 3 is the additional section); its TYPE
 * field is at start + 1, its TTL at ttl, its RDATA is [ttl + 6, end). */
static int parse_opt(const uint8_t *msg, size_t start, size_t ttl, size_t end, int section,
		     dp_dns_view_t *v)
{
	/* One OPT, in the additional section, owned by the root written as
	 * the single zero octet (RFC 6891 6.1.2), not a pointer to one:
	 * dp_dns_truncate() moves the OPT, and a pointer into the sections it
	 * drops would dangle. */
	if (section != 3 || v->has_opt || msg[start] != 0)
		return DP_E_FORMERR;
	/* Nothing may point at the OPT's owner: records after the OPT can
	 * then be moved over it (edns.c) by adjusting the pointers that cross
	 * it. */
	label_starts[start >> 3] &= (uint8_t)~(1u << (start & 7));
	int rc = parse_opt_options(msg, ttl + 6, end, v);
	if (rc < 0)
		return rc;
	v->has_opt = true;
	v->opt_off = (uint16_t)start;
	v->opt_len = (uint16_t)(end - start);
	uint16_t sz = dp_rd16(msg + ttl - 2); /* CLASS: the payload size */
	v->udp_size = sz < 512 ? 512 : sz;
	v->ext_rcode = msg[ttl];
	v->edns_version = msg[ttl + 1];
	v->do_bit = (msg[ttl + 2] & 0x80) != 0;
	return 0;
}

/* Walk count RRs from c's position; section 3 is the additional section.
 * With a, note each TTL offset (but the OPT's) in it. */
static int parse_rrs(dp_cursor_t *c, unsigned count, int section, dp_dns_view_t *v,
		     dp_dns_answer_t *a)
{
	const uint8_t *msg = c->buf;
	for (unsigned i = 0; i < count; i++) {
		size_t start = c->pos, next, wl;
		int rc = name_walk(msg, c->len, start, true, &next, &wl);
		if (rc < 0)
			return rc;
		dp_cursor_seek(c, next);
		uint16_t type = dp_cursor_u16(c);
		dp_cursor_skip(c, 2); /* CLASS */
		size_t ttl = c->pos;
		dp_cursor_skip(c, 4);
		uint16_t rdlen = dp_cursor_u16(c);
		size_t rd = c->pos;
		dp_cursor_skip(c, rdlen);
		if (c->err)
			return DP_E_FORMERR;
		if ((rc = rdata_names(msg, c->len, type, rd, c->pos)) < 0)
			return rc;
		if (v->has_opt)
			v->opt_after++;
		if (type == DP_DNS_TYPE_OPT) {
			if ((rc = parse_opt(msg, start, ttl, c->pos, section, v)) < 0)
				return rc;
		} else if (a) {
			if (a->nttl < DP_DNS_RR_MAX)
				a->ttl[a->nttl++] = (uint16_t)ttl;
			a->ttl_total++;
		}
	}
	return 0;
}

static int parse_common(const uint8_t *msg, size_t len, dp_dns_view_t *v, dp_dns_answer_t *a)
{
	int rc;
	if (v->qdcount > 1 || (v->qdcount == 1 && (rc = parse_question(msg, len, v)) < 0))
		return DP_E_FORMERR;
	dp_cursor_t c;
	dp_cursor_init(&c, msg, len, v->question_end);
	if ((rc = parse_rrs(&c, v->ancount, 1, v, a)) < 0 ||
	    (rc = parse_rrs(&c, v->nscount, 2, v, a)) < 0 ||
	    (rc = parse_rrs(&c, v->arcount, 3, v, a)) < 0)
		return rc;
	v->msg_end = (uint16_t)c.pos;
	return 0;
}

static int parse_header(const uint8_t *msg, size_t len, dp_dns_view_t *v)
{
	memset(v, 0, sizeof(*v));
	if (len < DP_DNS_HDR_LEN || len > DP_DNS_MAX_MSG)
		return DP_E_MALFORMED;
	memset(label_starts, 0, len / 8 + 1);
	dp_cursor_t c;
	dp_cursor_init(&c, msg, len, 0);
	v->id = dp_cursor_u16(&c);
	v->flags = dp_cursor_u16(&c);
	v->qdcount = dp_cursor_u16(&c);
	v->ancount = dp_cursor_u16(&c);
	v->nscount = dp_cursor_u16(&c);
	v->arcount = dp_cursor_u16(&c); /* 12 octets are there: no error */
	v->question_end = DP_DNS_HDR_LEN;
	v->msg_end = DP_DNS_HDR_LEN;
	v->udp_size = 512;
	return 0;
}

int dp_dns_parse_query(const uint8_t *msg, size_t len, dp_dns_view_t *v)
{
	int rc = parse_header(msg, len, v);
	if (rc < 0)
		return rc;
	if (v->flags & DP_DNS_F_QR)
		return DP_E_RESPONSE;
	if (DP_DNS_OPCODE(v->flags) != 0) {
		/* Read the question if we can, to echo it in NOTIMP. */
		if (v->qdcount == 1)
			(void)parse_question(msg, len, v);
		return DP_E_NOTIMP;
	}
	if (v->qdcount != 1) {
		/* Still look for the OPT so the FORMERR carries one (without a
		 * question the RRs start right after the header). */
		if (v->qdcount == 0)
			(void)parse_common(msg, len, v, NULL);
		return DP_E_FORMERR;
	}
	rc = parse_common(msg, len, v, NULL);
	if (rc < 0)
		return DP_E_FORMERR;
	if (v->has_opt && v->edns_version != 0)
		return DP_E_BADVERS;
	return 0;
}

static int parse_answer(const uint8_t *msg, size_t len, dp_dns_view_t *v, dp_dns_answer_t *a)
{
	int rc = parse_header(msg, len, v);
	if (rc < 0)
		return rc;
	if (!(v->flags & DP_DNS_F_QR) || v->qdcount != 1)
		return DP_E_FORMERR;
	return parse_common(msg, len, v, a);
}

int dp_dns_parse_answer(const uint8_t *msg, size_t len, dp_dns_view_t *v)
{
	return parse_answer(msg, len, v, NULL);
}

_Static_assert(DP_DNS_RR_MAX > 0 && DP_DNS_RR_MAX <= UINT16_MAX, "dp_dns_ttl_next walks on from ttl[]");

int dp_dns_parse_answer_rrs(const uint8_t *msg, size_t len, dp_dns_answer_t *a)
{
	a->nttl = 0;
	a->ttl_total = 0;
	return parse_answer(msg, len, &a->v, a);
}

size_t dp_dns_ttl_walk(const uint8_t *msg, size_t *pos)
{
	for (;;) {
		size_t p = dp_dns_skip_name(msg, *pos);
		*pos = p + 10 + dp_rd16(msg + p + 8);
		if (dp_rd16(msg + p) != DP_DNS_TYPE_OPT)
			return p + 4;
	}
}

static inline uint8_t lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

bool dp_dns_question_equal(const uint8_t *a, const dp_dns_view_t *va,
			   const uint8_t *b, const dp_dns_view_t *vb)
{
	if (!va->has_question || !vb->has_question || va->qname_len != vb->qname_len ||
	    va->qtype != vb->qtype || va->qclass != vb->qclass)
		return false;
	/* Question names are never compressed (parse_question refuses
	 * pointers), so compare the bytes; label length octets are <= 63 and
	 * lower() leaves them alone. */
	const uint8_t *pa = a + va->qname_off, *pb = b + vb->qname_off;
	if (memcmp(pa, pb, va->qname_len) == 0) /* the usual case: same spelling */
		return true;
	for (uint16_t i = 0; i < va->qname_len; i++)
		if (lower(pa[i]) != lower(pb[i]))
			return false;
	return true;
}

int dp_dns_build_error(const uint8_t *q, const dp_dns_view_t *vq, int rcode,
		       uint16_t our_udp_size, uint8_t *out, size_t out_cap)
{
	size_t qlen = vq->has_question ? (size_t)(vq->question_end - DP_DNS_HDR_LEN) : 0;
	size_t need = DP_DNS_HDR_LEN + qlen + (vq->has_opt ? 11 : 0);
	if (need > out_cap)
		return DP_E_TOOBIG;
	uint16_t flags = (uint16_t)(DP_DNS_F_QR | (vq->flags & (0x7800u | DP_DNS_F_RD | DP_DNS_F_CD)) |
				    DP_DNS_F_RA | ((unsigned)rcode & 0xf));
	dp_wr16(out, vq->id);
	dp_wr16(out + 2, flags);
	dp_wr16(out + 4, vq->has_question ? 1 : 0);
	dp_wr16(out + 6, 0);
	dp_wr16(out + 8, 0);
	dp_wr16(out + 10, vq->has_opt ? 1 : 0);
	if (qlen)
		memcpy(out + DP_DNS_HDR_LEN, q + DP_DNS_HDR_LEN, qlen);
	if (vq->has_opt) {
		uint8_t *o = out + DP_DNS_HDR_LEN + qlen;
		o[0] = 0; /* root owner */
		dp_wr16(o + 1, DP_DNS_TYPE_OPT);
		dp_wr16(o + 3, our_udp_size);
		o[5] = (uint8_t)((unsigned)rcode >> 4); /* extended RCODE */
		o[6] = 0; /* version */
		o[7] = vq->do_bit ? 0x80 : 0;
		o[8] = 0;
		dp_wr16(o + 9, 0); /* no options */
	}
	return (int)need;
}

size_t dp_dns_truncate(uint8_t *msg, const dp_dns_view_t *v)
{
	size_t end = v->question_end;
	unsigned ar = 0;
	if (v->has_opt) {
		memmove(msg + end, msg + v->opt_off, v->opt_len);
		end += v->opt_len;
		ar = 1;
	}
	dp_wr16(msg + 2, (uint16_t)(v->flags | DP_DNS_F_TC));
	dp_wr16(msg + 6, 0);
	dp_wr16(msg + 8, 0);
	dp_wr16(msg + 10, (uint16_t)ar);
	return end;
}

/* Fix the pointers of the literal part of the name at p; returns the
 * offset just past it. */
static size_t shift_name(uint8_t *msg, size_t len, size_t p, size_t cut, size_t delta)
{
	while (p < len) {
		uint8_t c = msg[p];
		if (c == 0)
			return p + 1;
		if ((c & 0xc0) == 0xc0) {
			if (p + 1 >= len)
				return len;
			size_t t = ((size_t)(c & 0x3f) << 8) | msg[p + 1];
			if (t >= cut + delta) {
				t -= delta;
				msg[p] = (uint8_t)(0xc0 | (t >> 8));
				msg[p + 1] = (uint8_t)t;
			}
			return p + 2;
		}
		p += (size_t)c + 1;
	}
	return len;
}

void dp_dns_shift_pointers(uint8_t *msg, size_t len, size_t from, unsigned count, size_t cut,
			   size_t delta)
{
	size_t p = from;
	for (unsigned i = 0; i < count && p < len; i++) {
		p = shift_name(msg, len, p, cut, delta);
		if (p + 10 > len)
			return;
		uint16_t type = dp_rd16(msg + p);
		size_t rd = p + 10, end = rd + dp_rd16(msg + p + 8);
		if (end > len)
			return;
		unsigned fixed = 0, names = 0;
		rdata_layout(type, &fixed, &names);
		size_t q = rd + fixed;
		for (unsigned k = 0; k < names && q < end; k++)
			q = shift_name(msg, end, q, cut, delta);
		p = end;
	}
}

size_t dp_dns_skip_name(const uint8_t *msg, size_t p)
{
	for (;;) {
		uint8_t c = msg[p];
		if (c == 0)
			return p + 1;
		if ((c & 0xc0) == 0xc0)
			return p + 2;
		p += (size_t)c + 1;
	}
}

void dp_dns_name_str(const uint8_t *msg, size_t len, size_t off, char *out, size_t cap)
{
	size_t o = 0, pos = off;
	unsigned jumps = 0;
	if (cap == 0)
		return;
	while (pos < len && o + 1 < cap) {
		uint8_t c = msg[pos];
		if (c == 0)
			break;
		if ((c & 0xc0) == 0xc0) {
			if (pos + 1 >= len || ++jumps > DP_DNS_MAX_JUMPS)
				break;
			pos = ((size_t)(c & 0x3f) << 8) | msg[pos + 1];
			continue;
		}
		if (c & 0xc0)
			break;
		for (size_t i = 1; i <= c && pos + i < len && o + 2 < cap; i++) {
			uint8_t ch = msg[pos + i];
			out[o++] = (ch > 32 && ch < 127 && ch != '"' && ch != '\\') ? (char)ch : '?';
		}
		if (o + 1 < cap)
			out[o++] = '.';
		pos += (size_t)c + 1;
	}
	if (o == 0 && o + 1 < cap)
		out[o++] = '.';
	out[o] = 0;
}
