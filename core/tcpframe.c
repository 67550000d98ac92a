/* tcpframe.c - 2-byte length framing of DNS messages on a stream. */
#include "tcpframe.h"

long dp_tcpframe_split(uint8_t *buf, size_t len, dp_tcpframe_cb cb, void *ctx)
{
	size_t off = 0;
	while (len - off >= 2) {
		size_t mlen = dp_rd16(buf + off);
		if (mlen == 0)
			return DP_E_MALFORMED;
		if (len - off - 2 < mlen)
			break;
		int rc = cb(ctx, buf + off + 2, mlen);
		if (rc < 0)
			return rc;
		off += 2 + mlen;
	}
	return (long)off;
}

size_t dp_tcpframe_need(const uint8_t *buf, size_t len)
{
	if (len < 2)
		return 2 - len;
	size_t mlen = dp_rd16(buf);
	return len - 2 >= mlen ? 0 : mlen - (len - 2);
}
