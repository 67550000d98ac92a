/* stream.c - a connection's byte stream, TLS or plain (see stream.h).
 * Owns nothing beyond the SSL and BIOs it makes for a connection. */
#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "stream.h"

int stream_open(shard_t *s, conn_t *c, bool plain)
{
	BIO *rbio = BIO_new(BIO_s_mem());
	BIO *wbio = BIO_new(BIO_s_mem());
	SSL *ssl = plain ? NULL : SSL_new(s->ctx);
	if (!rbio || !wbio || (!plain && !ssl)) {
		SSL_free(ssl);
		BIO_free(rbio);
		BIO_free(wbio);
		ERR_clear_error();
		return -ENOMEM;
	}
	if (ssl) {
		SSL_set_bio(ssl, rbio, wbio); /* ssl owns both */
		SSL_set_accept_state(ssl);
	}
	c->ssl = ssl;
	c->rbio = rbio;
	c->wbio = wbio;
	c->plain = plain;
	c->hs_done = plain;
	return 0;
}

void stream_free(conn_t *c)
{
	if (c->ssl) {
		SSL_free(c->ssl); /* and the BIOs it owns */
	} else {
		BIO_free(c->rbio);
		BIO_free(c->wbio);
	}
	c->ssl = NULL;
	c->rbio = c->wbio = NULL;
}

int stream_read(conn_t *c, uint8_t *buf, size_t cap)
{
	if (c->plain) {
		int n = BIO_read(c->rbio, buf, (int)cap);
		return n > 0 ? n : STREAM_AGAIN;
	}
	int r = SSL_read(c->ssl, buf, (int)cap);
	if (r > 0)
		return r;
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		return STREAM_AGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return STREAM_EOF;
	default:
		return STREAM_ERR;
	}
}

int stream_write(shard_t *s, conn_t *c, const uint8_t *p, size_t len)
{
	int r;
	if (c->plain) {
		r = BIO_write(c->wbio, p, (int)len); /* fails only without memory */
	} else {
		r = SSL_write(c->ssl, p, (int)len);
		CNT_INC(s, tls_writes);
	}
	if (r <= 0) {
		ERR_clear_error();
		return DP_E_TLS;
	}
	return 0;
}

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

int stream_flush(shard_t *s, conn_t *c)
{
	if (!s->ob_len)
		return 0;
	const uint8_t *out = s->ob;
	if (unlikely(s->nrev > 1)) {
		out = ob_reversed(s);
		CNT_INC(s, fault_reordered);
	}
	s->nrev = 0;
	size_t len = s->ob_len;
	s->ob_len = 0;
	return stream_write(s, c, out, len);
}

void stream_shutdown(conn_t *c)
{
	if (c->tls_shut)
		return;
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		ERR_clear_error();
	}
	c->tls_shut = true;
}

void stream_failed(shard_t *s, conn_t *c)
{
	ERR_clear_error();
	CNT_INC(s, tls_errors);
	c->want_close = true; /* after sending any alert BoringSSL queued */
}
