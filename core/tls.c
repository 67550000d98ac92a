/* tls.c - BoringSSL client contexts and sessions for upstream connections.
 *
 * Sessions run over our own BIO (below), not memory BIOs: BoringSSL reads
 * ciphertext where io_uring received it and writes ciphertext into the
 * buffer the next send carries; it never touches a socket. The context
 * verifies the chain against the CA bundle; each session checks the
 * upstream's name (or IP), sends SNI, and keeps the newest resumable
 * session in the slot its connection gave it. Pins are checked after the
 * handshake (dp_tls_check_pins).
 */
#include "tls.h"
#include "log.h"

#include <arpa/inet.h>
#include <openssl/digest.h>
#include <pthread.h>
#include <openssl/err.h>
#include <openssl/sha.h>
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

/* BoringSSL hands us each new session (ticket); app data of the SSL is the
 * upstream's session slot, which keeps the newest one. Returns 1: we own
 * sess. */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	SSL_SESSION **slot = SSL_get_app_data(ssl);
	if (!slot || !SSL_SESSION_is_resumable(sess))
		return 0;
	if (*slot)
		SSL_SESSION_free(*slot);
	*slot = sess;
	return 1;
}

SSL_CTX *dp_tls_client_ctx(const dp_config_t *cfg, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx) {
		snprintf(err, errlen, "SSL_CTX_new failed");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, (uint16_t)cfg->tls_min_version);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1) {
		char why[160];
		err_queue_str(why, sizeof(why));
		snprintf(err, errlen, "cannot load CA file %s: %s", cfg->ca_file, why);
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* Resumption: keep the newest ticket per upstream (new_session), offer
	 * it on the next connect, so reconnects skip the full handshake. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, new_session);
	return ctx;
}

/* ---- the connection's BIO ------------------------------------------------
 * One BIO per connection serves both directions: reads take ciphertext from
 * the connection's receive buffer where io_uring put it, writes append to
 * the buffer the next send carries. Compared with a pair of memory BIOs this
 * saves a copy each way and the memory BIOs' growing and shifting. */

static int conn_bio_read(BIO *b, char *out, int len)
{
	dp_tls_wire_t *w = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	uint32_t avail = w->rx.len - w->rx_off;
	if (avail == 0 || len <= 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	uint32_t n = DP_MIN(avail, (uint32_t)len);
	memcpy(out, w->rx.data + w->rx_off, n);
	w->rx_off += n;
	return (int)n;
}

static int conn_bio_write(BIO *b, const char *in, int len)
{
	dp_tls_wire_t *w = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (len < 0 || !dp_buf_append(w->tx, in, (size_t)len, 16384))
		return -1;
	return len;
}

static long conn_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	dp_tls_wire_t *w = BIO_get_data(b);
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return w ? (long)(w->rx.len - w->rx_off) : 0;
	case BIO_CTRL_WPENDING:
		return w ? (long)w->tx->len : 0;
	default:
		return 0;
	}
}

static int conn_bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static BIO_METHOD *conn_method;
static pthread_once_t conn_method_once = PTHREAD_ONCE_INIT;

static void conn_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "dotproxy-conn");
	if (!m)
		return;
	BIO_meth_set_read(m, conn_bio_read);
	BIO_meth_set_write(m, conn_bio_write);
	BIO_meth_set_ctrl(m, conn_bio_ctrl);
	BIO_meth_set_create(m, conn_bio_create);
	conn_method = m;
}

/* SNI and the check of the upstream's certificate: its name, or its IP
 * when it has none; pins alone (checked after the handshake) with no_ca.
 * Returns 0 or DP_E_TLS. */
static int set_peer_checks(SSL *ssl, const dp_upstream_cfg_t *u)
{
	if (u->no_ca) {
		SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
		if (u->name[0] && SSL_set_tlsext_host_name(ssl, u->name) != 1)
			return DP_E_TLS;
		return 0;
	}
	if (u->name[0]) {
		if (SSL_set_tlsext_host_name(ssl, u->name) != 1 || SSL_set1_host(ssl, u->name) != 1)
			return DP_E_TLS;
		return 0;
	}
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
		return DP_E_TLS;
	return 0;
}

int dp_tls_bind_wire(SSL *ssl, dp_tls_wire_t *w)
{
	pthread_once(&conn_method_once, conn_method_init);
	BIO *bio = conn_method ? BIO_new(conn_method) : NULL;
	if (!bio) {
		ERR_clear_error();
		return DP_E_TLS;
	}
	BIO_set_data(bio, w);
	SSL_set_bio(ssl, bio, bio); /* one BIO, both ways; ssl owns it */
	return 0;
}

int dp_tls_new_session(SSL_CTX *ctx, const dp_upstream_cfg_t *u, dp_tls_wire_t *w,
		       SSL_SESSION **session, SSL **ssl_out)
{
	pthread_once(&conn_method_once, conn_method_init);
	if (!conn_method)
		return DP_E_TLS;
	SSL *ssl = SSL_new(ctx);
	BIO *bio = BIO_new(conn_method);
	if (!ssl || !bio) {
		BIO_free(bio);
		SSL_free(ssl);
		ERR_clear_error();
		return DP_E_TLS;
	}
	BIO_set_data(bio, w);
	SSL_set_bio(ssl, bio, bio); /* one BIO, both ways; ssl owns it */
	SSL_set_connect_state(ssl);
	if (set_peer_checks(ssl, u) < 0) {
		SSL_free(ssl);
		ERR_clear_error();
		return DP_E_TLS;
	}
	SSL_set_app_data(ssl, session);
	if (*session)
		SSL_set_session(ssl, *session);
	*ssl_out = ssl;
	return 0;
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

static bool spki_pinned(X509 *cert, const dp_upstream_cfg_t *u)
{
	uint8_t *der = NULL;
	int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
	if (n <= 0)
		return false;
	uint8_t h[SHA256_DIGEST_LENGTH];
	SHA256(der, (size_t)n, h);
	OPENSSL_free(der);
	for (int i = 0; i < u->npins; i++)
		if (memcmp(h, u->pins[i], sizeof(h)) == 0)
			return true;
	return false;
}

int dp_tls_check_pins(SSL *ssl, const dp_upstream_cfg_t *u)
{
	if (u->npins == 0)
		return 0;
	/* RFC 7469 2.6: a pin may match any key of the chain. */
	X509 *leaf = SSL_get_peer_certificate(ssl);
	bool ok = leaf && spki_pinned(leaf, u);
	X509_free(leaf);
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	for (size_t i = 0; !ok && chain && i < sk_X509_num(chain); i++)
		ok = spki_pinned(sk_X509_value(chain, i), u);
	return ok ? 0 : DP_E_TLS;
}
