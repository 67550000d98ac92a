/* http.c - request-line parser for the metrics endpoint. */
#include "http.h"

#include <string.h>

static const char *find_head_end(const char *buf, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (buf[i] == '\n' && buf[i + 1] == '\n')
			return buf + i + 2;
		if (i + 3 < len && buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' &&
		    buf[i + 3] == '\n')
			return buf + i + 4;
	}
	return NULL;
}

int dp_http_parse(const char *buf, size_t len, size_t max, dp_http_req_t *r)
{
	memset(r, 0, sizeof(*r));
	if (!find_head_end(buf, len))
		return len >= max ? DP_E_TOOBIG : 0;
	/* Request line: METHOD SP TARGET SP HTTP/1.x CRLF */
	const char *eol = memchr(buf, '\n', len);
	size_t ll = (size_t)(eol - buf);
	if (ll && buf[ll - 1] == '\r')
		ll--;
	const char *sp1 = memchr(buf, ' ', ll);
	if (!sp1 || sp1 == buf)
		return DP_E_MALFORMED;
	const char *tgt = sp1 + 1;
	const char *sp2 = memchr(tgt, ' ', ll - (size_t)(tgt - buf));
	if (!sp2 || sp2 == tgt)
		return DP_E_MALFORMED;
	const char *ver = sp2 + 1;
	size_t vl = ll - (size_t)(ver - buf);
	if (vl != 8 || memcmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1'))
		return DP_E_MALFORMED;
	size_t ml = (size_t)(sp1 - buf);
	if (ml == 3 && memcmp(buf, "GET", 3) == 0)
		r->method = DP_HTTP_GET;
	else if (ml == 4 && memcmp(buf, "HEAD", 4) == 0)
		r->method = DP_HTTP_HEAD;
	else
		r->method = DP_HTTP_OTHER;
	size_t pl = (size_t)(sp2 - tgt);
	const char *q = memchr(tgt, '?', pl);
	if (q)
		pl = (size_t)(q - tgt);
	if (pl == 0 || pl >= sizeof(r->path) || tgt[0] != '/')
		return DP_E_MALFORMED;
	for (size_t i = 0; i < pl; i++)
		if ((unsigned char)tgt[i] <= 32 || (unsigned char)tgt[i] >= 127)
			return DP_E_MALFORMED;
	memcpy(r->path, tgt, pl);
	r->path[pl] = 0;
	return 1;
}
