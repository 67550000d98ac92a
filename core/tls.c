/* tls.c - BoringSSL client contexts and sessions for upstream connections.
 *
 * Sessions run over memory BIOs: io_uring moves the ciphertext, BoringSSL
 * never touches a socket. The context verifies the chain against the CA
 * bundle; each session checks the upstream's name (or IP) and sends SNI.
 */
#include "engine.h"
#include "log.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

static void err_queue_str(char *out, size_t cap)
{
	unsigned long e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, out, cap);
	else
		snprintf(out, cap, "unknown error");
	ERR_clear_error();
}

SSL_CTX *dp_tls_client_ctx(const dp_config_t *cfg, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx) {
		snprintf(err, errlen, "SSL_CTX_new failed");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1) {
		char why[160];
		err_queue_str(why, sizeof(why));
		snprintf(err, errlen, "cannot load CA file %s: %s", cfg->ca_file, why);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int dp_tls_new_session(SSL_CTX *ctx, const dp_upstream_cfg_t *u, SSL **ssl_out, BIO **rbio_out,
		       BIO **wbio_out)
{
	SSL *ssl = SSL_new(ctx);
	BIO *rbio = BIO_new(BIO_s_mem());
	BIO *wbio = BIO_new(BIO_s_mem());
	if (!ssl || !rbio || !wbio)
		goto fail;
	SSL_set_bio(ssl, rbio, wbio); /* ssl owns both BIOs from here */
	SSL_set_connect_state(ssl);
	if (u->name[0]) {
		if (SSL_set_tlsext_host_name(ssl, u->name) != 1 || SSL_set1_host(ssl, u->name) != 1)
			goto fail_ssl;
	} else {
		uint8_t ip[16];
		size_t iplen;
		if (u->addr.ss.ss_family == AF_INET6) {
			memcpy(ip, &((const struct sockaddr_in6 *)&u->addr.ss)->sin6_addr, 16);
			iplen = 16;
		} else {
			memcpy(ip, &((const struct sockaddr_in *)&u->addr.ss)->sin_addr, 4);
			iplen = 4;
		}
		if (X509_VERIFY_PARAM_set1_ip(SSL_get0_param(ssl), ip, iplen) != 1)
			goto fail_ssl;
	}
	*ssl_out = ssl;
	*rbio_out = rbio;
	*wbio_out = wbio;
	return 0;
fail:
	BIO_free(rbio);
	BIO_free(wbio);
	SSL_free(ssl);
	ERR_clear_error();
	return DP_E_TLS;
fail_ssl:
	SSL_free(ssl);
	ERR_clear_error();
	return DP_E_TLS;
}

void dp_tls_error_reason(SSL *ssl, int ret, char *out, size_t cap)
{
	long vr = SSL_get_verify_result(ssl);
	if (vr != X509_V_OK) {
		snprintf(out, cap, "certificate verify failed: %s",
			 X509_verify_cert_error_string(vr));
		ERR_clear_error();
		return;
	}
	int e = SSL_get_error(ssl, ret);
	if (e == SSL_ERROR_SSL) {
		err_queue_str(out, cap);
		return;
	}
	snprintf(out, cap, "TLS error %d", e);
	ERR_clear_error();
}
