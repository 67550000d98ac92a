/* tls.h - TLS client sessions for upstream connections (tls.c): contexts,
 * sessions over our own BIO on the connection's buffers (tls-t.h),
 * verification, pins, resumption, error reasons. */
#ifndef DP_TLS_H
#define DP_TLS_H

#include "config.h"
#include "tls-t.h"

#include <openssl/ssl.h>

/* Client TLS context for upstreams: TLS 1.2+, verification against ca_file.
 * Allocates; returns NULL with err filled. */
SSL_CTX *dp_tls_client_ctx(const dp_config_t *cfg, char *err, size_t errlen);
/* A new client SSL for upstream u, with SNI and the name (or IP) check,
 * over one BIO that reads w->rx and appends to *w->tx directly (no copy
 * through memory BIOs); w must outlive the SSL. It offers *session (when
 * set) for resumption, and each new resumable session the server sends
 * replaces *session (freed, owned there); session must outlive the SSL.
 * Allocates; returns 0 or DP_E_TLS. */
int dp_tls_new_session(SSL_CTX *ctx, const dp_upstream_cfg_t *u, dp_tls_wire_t *w,
		       SSL_SESSION **session, SSL **ssl);
/* Put a BIO over w (as dp_tls_new_session's) under ssl: it reads w->rx and
 * appends to *w->tx; w must outlive ssl. Returns 0 or DP_E_TLS. */
int dp_tls_bind_wire(SSL *ssl, dp_tls_wire_t *w);
/* 0 when the upstream has no pins or one of them matches a key of the
 * peer's chain, DP_E_TLS otherwise. */
int dp_tls_check_pins(SSL *ssl, const dp_upstream_cfg_t *u);
/* Describe why the handshake of ssl failed (verify result or error queue). */
void dp_tls_error_reason(SSL *ssl, int ret, char *out, size_t cap);

#endif
