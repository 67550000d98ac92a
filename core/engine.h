/* engine.h - shard lifecycle and the io_uring loop (engine.c): binding the
 * listeners, starting, reloading, draining and stopping shards. The shard's
 * types are in shard-t.h; SQE and buffer helpers in ring.h. */
#ifndef DP_ENGINE_H
#define DP_ENGINE_H

#include "shard-t.h"

#include <openssl/ssl.h>

/* ---- engine.c ----------------------------------------------------------- */

/* Create listening sockets for every shard (SO_REUSEPORT), so bind errors
 * surface before any thread starts. fds[shard][listen] for UDP and TCP,
 * and tls[shard][i] for the DNS-over-TLS listeners.
 * Returns 0 or a negative errno with err filled with a one-line message. */
int dp_engine_bind_all(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN],
		       int (*tcp)[DP_MAX_LISTEN], int (*tls)[DP_MAX_LISTEN], char *err,
		       size_t errlen);

/* Start shard s's thread (it sets up its ring, TLS context and tables,
 * takes ownership of the given fds). Returns 0 or negative errno. */
int dp_shard_start(dp_shard_t *s);

/* Ask a shard to stop now (any thread); returns at once, dp_shard_join
 * waits for its thread. */
void dp_shard_stop(dp_shard_t *s);
/* Ask a shard to drain: stop reading queries, answer those in flight, exit
 * when done or after its config's --drain-timeout (any thread). */
void dp_shard_drain(dp_shard_t *s);
/* Hand a shard a new config (and upstream TLS context, may be NULL) to
 * adopt at its next turn (any thread). The caller keeps both alive until
 * cfg_gen shows the shard took them. srv_ctx (may be NULL): the TLS
 * listeners' new context, whose reference the shard takes. */
void dp_shard_reload(dp_shard_t *s, dp_config_t *cfg, SSL_CTX *ctx, SSL_CTX *srv_ctx,
		     uint32_t gen);
void dp_shard_join(dp_shard_t *s);

#endif
