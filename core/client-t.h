/* client-t.h - a client as the frontend that read its query names it, and
 * the frontend's ops the query layer answers it through (types only).
 *
 * A frontend (udp.c, tcp.c; handoff.c for a query another shard read)
 * builds one dp_client_t per query and hands it to the query layer with the
 * message (dp_query_from_client, dp_query_from_shard). The query layer keeps
 * it in the query's slot and answers only through the ops of the client's
 * transport, which each frontend sets in its shard's table (dp_shard_t.fe)
 * at start-up: query.c calls no frontend function directly.
 */
#ifndef DP_CLIENT_T_H
#define DP_CLIENT_T_H

#include "clientshare.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

struct dp_shard;

/* Which frontend answers a client: the index of its ops in dp_shard_t.fe.
 * T_NONE has no frontend. */
enum {
	T_UDP = 0, /* a datagram to addr, from listen socket li (of this shard) */
	T_TCP, /* a connection of this shard: tcp.idx/tcp.gen */
	T_TCP_REMOTE, /* a connection of shard tcp.origin: answered through the
		       * hand-off (handoff.c), counted on its origin */
	T_NONE, /* no client: prefetch or probe, the answer only feeds the cache */
};
#define DP_FRONTENDS T_NONE /* entries of dp_shard_t.fe */

/* A listen index (dp_client_t.li, tcpconn's listen_idx) with this bit is
 * the encrypted listener li & DP_LI_INDEX (s->tls_fd, dp_config_enc): its
 * clients are encrypted (DNS-over-TLS, or DNS-over-HTTPS with DP_LI_HTTPS
 * too), answered through the TCP frontend's ops. */
#define DP_LI_TLS 0x80
#define DP_LI_HTTPS 0x40
#define DP_LI_INDEX 0x3f

typedef struct dp_client {
	union {
		struct sockaddr_in6 addr; /* T_UDP (AF_INET fits too) */
		struct {
			dp_cshare_key_t key; /* its address, as the fair share counts it */
			uint32_t idx, gen; /* connection slot and generation (on origin) */
			uint8_t origin; /* T_TCP_REMOTE: the shard holding the connection */
		} tcp;
	};
	uint64_t arrive_ns; /* when another shard read it; 0: read here, now */
	uint8_t transport; /* T_* */
	uint8_t li; /* listen address it came in on (DP_LI_TLS: a TLS one) */
} dp_client_t;

/* True when c reached us encrypted (a DNS-over-TLS or -HTTPS connection). */
static inline bool dp_client_encrypted(const dp_client_t *c)
{
	return c->transport != T_UDP && (c->li & DP_LI_TLS);
}

/* What the query layer needs of a frontend. Called from the shard's thread;
 * c is valid during the call only. The ops may read only what identifies
 * the client to them: addr and li (T_UDP), tcp.idx and tcp.gen (T_TCP),
 * tcp.idx, tcp.gen and tcp.origin (T_TCP_REMOTE); the rest of a client may
 * be unset (a T_TCP client rebuilt from a hand-off answer). */
typedef struct dp_frontend_ops {
	/* Send answer msg (len octets, copied; hot path) to c. len 0: the query
	 * ends without an answer, which only a frontend that must end it
	 * elsewhere (the hand-off: its origin) passes on. */
	void (*answer)(struct dp_shard *s, const dp_client_t *c, const uint8_t *msg, size_t len);
	/* A query of c took a slot in the query table / left it (answered or
	 * not): a TCP connection counts its queries in flight (its cap, idle
	 * close, drain). NULL when the frontend counts nothing. Hot path. */
	void (*query_begin)(struct dp_shard *s, const dp_client_t *c);
	void (*query_end)(struct dp_shard *s, const dp_client_t *c);
} dp_frontend_ops_t;

#endif
