/* query.h - client queries: cache, coalescing, the query table (query.c). */
#ifndef DP_QUERY_H
#define DP_QUERY_H

#include "shard-t.h"

/* Handle one client query (msg is the receive buffer: read in place, copied
 * only into the query slot). For UDP, from/li say where to answer; for TCP,
 * tcp_idx/tcp_gen. Returns 0 when the query was taken (answered, dropped,
 * or in the table), DP_E_FULL when a TCP query was not taken because its
 * client address is at its fair share of a contended table: the caller
 * keeps it and offers it again later (a UDP one is answered SERVFAIL
 * instead). Hot path. */
int dp_query_from_client(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
			 const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen);
/* An upstream answer msg (parsed into a by dp_dns_parse_answer_rrs) for
 * the query in slot qi (already matched), from upstream index upstream.
 * Answers the client and frees the slot; but a SERVFAIL first sends the
 * query to an upstream that has not failed it. */
void dp_query_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
		     const dp_dns_answer_t *a, int upstream);
/* Answer the query with SERVFAIL and free its slot. */
void dp_query_fail(dp_shard_t *s, uint32_t qi);
/* Teardown: answer every live query (SERVFAIL or stale) and free its slot. */
void dp_query_fail_all(dp_shard_t *s);
/* Start a probe (./IN/NS, no client) on connection ci. */
int dp_query_probe(dp_shard_t *s, uint32_t ci);
/* Copy the cache's own counters into the shard's (once per tick). */
void dp_query_publish_stats(dp_shard_t *s);
int dp_query_table_init(dp_shard_t *s);
void dp_query_table_free(dp_shard_t *s);

/* Resolve a query another shard handed us (its home): as
 * dp_query_from_client, without the ACL and rate limit the receiving shard
 * applied. tcp_idx is DP_XS_REMOTE-marked for a TCP client of another
 * shard, and peer is then that client's fair-share key (NULL for UDP: the
 * key comes from from). Hot path. */
void dp_query_from_shard(dp_shard_t *s, int transport, uint8_t *msg, size_t len, int li,
			 const struct sockaddr_in6 *from, uint32_t tcp_idx, uint32_t tcp_gen,
			 uint64_t arrive_ns, const dp_cshare_key_t *peer);

#endif
