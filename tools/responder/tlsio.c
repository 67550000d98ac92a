/* tlsio.c - the answer batch's SSL_write and TLS failures (see tlsio.h). */
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tlsio.h"

/* --reorder: the answers of ob (offsets in rev) last first, into ob2. */
static const uint8_t *ob_reversed(shard_t *s)
{
	size_t o = 0;
	for (uint32_t i = s->nrev; i-- > 0;) {
		size_t a = s->rev[i], b = i + 1 < s->nrev ? s->rev[i + 1] : s->ob_len;
		memcpy(s->ob2 + o, s->ob + a, b - a);
		o += b - a;
	}
	return s->ob2;
}

int tlsio_flush(shard_t *s, conn_t *c)
{
	if (!s->ob_len)
		return 0;
	const uint8_t *out = s->ob;
	if (unlikely(s->nrev > 1)) {
		out = ob_reversed(s);
		CNT_INC(s, fault_reordered);
	}
	s->nrev = 0;
	int r = SSL_write(c->ssl, out, (int)s->ob_len);
	s->ob_len = 0;
	CNT_INC(s, tls_writes);
	if (r <= 0) {
		ERR_clear_error();
		return DP_E_TLS;
	}
	return 0;
}

void tlsio_failed(shard_t *s, conn_t *c)
{
	ERR_clear_error();
	CNT_INC(s, tls_errors);
	c->want_close = true; /* after sending any alert BoringSSL queued */
}
