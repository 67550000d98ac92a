/* tls.h - TLS for upstream connections over our own BIOs (tls.c). */
#ifndef DP_TLS_H
#define DP_TLS_H

#include "config.h"
#include "upstream-t.h"

#include <openssl/ssl.h>

/* Client TLS context for upstreams: TLS 1.2+, verification against ca_file.
 * Allocates; returns NULL with err filled. */
SSL_CTX *dp_tls_client_ctx(const dp_config_t *cfg, char *err, size_t errlen);
/* A new client SSL for connection c, with SNI and name check for upstream
 * u, over BIOs that read c->rxbuf and append to c->pend directly (no copy
 * through memory BIOs). Allocates; returns 0 or DP_E_TLS. */
int dp_tls_new_session(SSL_CTX *ctx, const dp_upstream_cfg_t *u, dp_upconn_t *c, SSL **ssl);
/* 0 when the upstream has no pins or one of them matches a key of the
 * peer's chain, DP_E_TLS otherwise. */
int dp_tls_check_pins(SSL *ssl, const dp_upstream_cfg_t *u);
/* Describe why the handshake of ssl failed (verify result or error queue). */
void dp_tls_error_reason(SSL *ssl, int ret, char *out, size_t cap);

#endif
