/* tlsctx.c - the shared server SSL_CTX (see tlsctx.h). */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tlsctx.h"

static void print_ssl_error(const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char buf[256];
	ERR_error_string_n(e, buf, sizeof(buf));
	fprintf(stderr, "dot-responder: %s %s: %s\n", what, file ? file : "", buf);
	ERR_clear_error();
}

/* Offer "dot" back when the client asks for it (RFC 7858 registers it);
 * without it, no ALPN rather than a failed handshake. */
static int alpn_select(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
		       unsigned inlen, void *arg)
{
	for (unsigned i = 0; i < inlen;) {
		unsigned l = in[i];
		if (i + 1 + l > inlen)
			break;
		if (l == 3 && memcmp(in + i + 1, "dot", 3) == 0) {
			*out = in + i + 1;
			*outlen = 3;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + l;
	}
	return SSL_TLSEXT_ERR_NOACK;
}

SSL_CTX *tlsctx_new(const resp_config_t *cfg)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		print_ssl_error("SSL_CTX_new", NULL);
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, cfg->tls_min) ||
	    !SSL_CTX_set_max_proto_version(ctx, cfg->tls_max)) {
		print_ssl_error("TLS versions", NULL);
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
		print_ssl_error("certificate", cfg->cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
		print_ssl_error("private key", cfg->key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		print_ssl_error("key does not match certificate", cfg->key);
		goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}
