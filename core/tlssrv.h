/* tlssrv.h - the server side of TLS for the DNS-over-TLS and DNS-over-HTTPS
 * listeners (tlssrv.c): the context (certificate chain and key, versions,
 * ALPN "dot", or "h2" for an HTTPS connection)
 * and the session-ticket keys, one set per process (every shard and every
 * context a reload makes share them, so a client resumes on any shard and
 * across reloads), rotated every DP_TICKET_ROTATE_S with the previous key
 * kept for decryption. */
#ifndef DP_TLSSRV_H
#define DP_TLSSRV_H

#include "config.h"

#include <openssl/ssl.h>

#define DP_TICKET_ROTATE_S (12u * 3600u) /* a new ticket key twice a day */

/* A server context for cfg's TLS listeners: cfg->cert_file (chain, leaf
 * first) and cfg->key_file (PEM), versions from
 * cfg->listen_tls_min_version to 1.3, ALPN "dot" or, for the
 * connections dp_tlssrv_set_https marks, "h2" (a client that offers ALPN
 * without it is refused; one that offers none is served), tickets
 * under the process's keys, lifetime DP_TICKET_ROTATE_S. Safe to share
 * between threads. Allocates (the caller owns the reference); returns NULL
 * with err filled. */
SSL_CTX *dp_tlssrv_ctx(const dp_config_t *cfg, char *err, size_t errlen);

/* ssl (of a context made here) is an HTTPS listener's connection: its
 * ALPN is "h2", not "dot". Before its handshake. */
void dp_tlssrv_set_https(SSL *ssl);

#endif
