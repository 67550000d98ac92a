/* tlssrv.c - server TLS context for the DNS-over-TLS listeners, and the
 * process's session-ticket keys.
 *
 * Ticket keys: one current key (encrypts new tickets) and the previous one
 * (still decrypts, and a ticket under it is renewed), shared by every shard
 * and every context a reload makes, behind one mutex: the callback runs once
 * per handshake, never per query. The current key is replaced when it is
 * DP_TICKET_ROTATE_S old, and tickets live as long, so a ticket is always
 * under one of the two keys kept. Keys come from RAND_bytes and never leave
 * the process.
 *
 * Owns: the key pair (static, for the process's life).
 */
#include "tlssrv.h"
#include "log.h"

#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct ticket_key {
	uint8_t name[16];
	uint8_t aes[16];
	uint8_t hmac[32];
	uint64_t born_s; /* 0: none */
} ticket_key_t;

static struct {
	pthread_mutex_t mu;
	ticket_key_t cur, prev;
	uint64_t (*now_s)(void); /* the clock (tests set their own) */
} keys = { .mu = PTHREAD_MUTEX_INITIALIZER };

static uint64_t mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec + 1; /* never 0: 0 means no key */
}

/* Under keys.mu: make sure the current key exists and is young enough.
 * Returns false when no random bytes could be had. */
static bool keys_fresh(uint64_t now)
{
	if (keys.cur.born_s && now - keys.cur.born_s < DP_TICKET_ROTATE_S)
		return true;
	ticket_key_t k;
	bool ok = RAND_bytes(k.name, sizeof(k.name)) == 1 &&
		  RAND_bytes(k.aes, sizeof(k.aes)) == 1 && RAND_bytes(k.hmac, sizeof(k.hmac)) == 1;
	if (ok) {
		k.born_s = now;
		keys.prev = keys.cur;
		keys.cur = k;
	}
	OPENSSL_cleanse(&k, sizeof(k)); /* no copy of a key left on the stack */
	return ok;
}

/* The key named name: 1 the current one, 2 the previous one (still
 * young enough to decrypt), 0 none. Under keys.mu. */
static int key_named(const uint8_t *name, uint64_t now, ticket_key_t *out)
{
	if (keys.cur.born_s && memcmp(name, keys.cur.name, 16) == 0) {
		*out = keys.cur;
		return 1;
	}
	if (keys.prev.born_s && now - keys.prev.born_s < 2 * DP_TICKET_ROTATE_S &&
	    memcmp(name, keys.prev.name, 16) == 0) {
		*out = keys.prev;
		return 2;
	}
	return 0;
}

/* BoringSSL's ticket key callback: encrypt under the current key; decrypt
 * under the one the ticket names (2: renew it under the current key).
 * Returns 1, 2, 0 (unknown key: a full handshake) or -1. */
static int ticket_cb(SSL *ssl, uint8_t *name, uint8_t *iv, EVP_CIPHER_CTX *cctx,
		     HMAC_CTX *hctx, int encrypt)
{
	(void)ssl;
	ticket_key_t k;
	int rc;
	pthread_mutex_lock(&keys.mu);
	uint64_t now = keys.now_s ? keys.now_s() : mono_s();
	if (encrypt) {
		rc = keys_fresh(now) ? 1 : -1;
		k = keys.cur;
	} else {
		rc = key_named(name, now, &k);
	}
	pthread_mutex_unlock(&keys.mu);
	if (rc <= 0)
		return rc;
	if (encrypt) {
		memcpy(name, k.name, 16);
		if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1 ||
		    !EVP_EncryptInit_ex(cctx, EVP_aes_128_cbc(), NULL, k.aes, iv))
			rc = -1;
	} else if (!EVP_DecryptInit_ex(cctx, EVP_aes_128_cbc(), NULL, k.aes, iv)) {
		rc = -1;
	}
	if (rc > 0 && !HMAC_Init_ex(hctx, k.hmac, sizeof(k.hmac), EVP_sha256(), NULL))
		rc = -1;
	OPENSSL_cleanse(&k, sizeof(k));
	return rc;
}

/* The protocol a listener serves, as ALPN names it (length-prefixed):
 * "dot" (RFC 7858 3.2, RFC 8310 6), or "h2" on an HTTPS listener (RFC 8484
 * 5.2: HTTP/2 at least). The SSL's app data marks the latter. */
static const uint8_t alpn_dot[] = "\x03" "dot";
static const uint8_t alpn_h2[] = "\x02" "h2";

void dp_tlssrv_set_https(SSL *ssl)
{
	SSL_set_app_data(ssl, (void *)alpn_h2);
}

/* ALPN: choose the listener's protocol; a client that offers protocols but
 * not that one wants another service on this port, and is told so
 * (no_application_protocol). One that offers none is served. */
static int alpn_cb(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
		   unsigned inlen, void *arg)
{
	(void)arg;
	const uint8_t *want = SSL_get_app_data(ssl) == alpn_h2 ? alpn_h2 : alpn_dot;
	for (unsigned i = 0; i < inlen;) {
		unsigned l = in[i];
		if (i + 1 + l > inlen)
			break;
		if (l == want[0] && memcmp(in + i + 1, want + 1, l) == 0) {
			*out = in + i + 1;
			*outlen = (uint8_t)l;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + l;
	}
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void fail(char *err, size_t errlen, const char *what, const char *file)
{
	char why[160] = "unknown error";
	unsigned long e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, why, sizeof(why));
	ERR_clear_error();
	snprintf(err, errlen, "%s %s: %s", what, file, why);
}

SSL_CTX *dp_tlssrv_ctx(const dp_config_t *cfg, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx) {
		snprintf(err, errlen, "SSL_CTX_new failed");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, (uint16_t)cfg->listen_tls_min_version);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
		fail(err, errlen, "cannot load certificate chain", cfg->cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
		fail(err, errlen, "cannot load private key", cfg->key_file);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		fail(err, errlen, "private key does not match certificate", cfg->cert_file);
		goto fail;
	}
	SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
	/* Stateless resumption only: tickets under the process's keys (no
	 * per-context session cache that another shard or a reload would not
	 * see). */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_tlsext_ticket_key_cb(ctx, ticket_cb);
	SSL_CTX_set_timeout(ctx, DP_TICKET_ROTATE_S);
	SSL_CTX_set_session_psk_dhe_timeout(ctx, DP_TICKET_ROTATE_S);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}
