/* tlsctx.h - the one SSL_CTX every shard's connections are made from:
 * TLS versions, certificate chain and key, session tickets, ALPN "dot".
 */
#ifndef DOT_RESPONDER_TLSCTX_H
#define DOT_RESPONDER_TLSCTX_H

#include <openssl/base.h>

#include "config.h"

/* A server SSL_CTX as cfg says. Session tickets are on (BoringSSL's
 * default, keys made and rotated by the context); the stateful session
 * cache is off, so resumption is by ticket only and no lock is shared
 * between shards. Allocates (the caller frees it with SSL_CTX_free);
 * NULL after printing why. */
SSL_CTX *tlsctx_new(const resp_config_t *cfg);

#endif
