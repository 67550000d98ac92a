/* query.h - a query's path: cache, coalescing, fair share, upstream, and
 * the one answer every query gets (query.c; its slots are qtable.h's). */
#ifndef DP_QUERY_H
#define DP_QUERY_H

#include "shard-t.h"

/* Handle one query of client c (built by its frontend; arrive_ns 0). msg is
 * the receive buffer: read in place, copied only into the query slot. The
 * answer goes through s->fe[c->transport]. Returns 0 when the query was
 * taken (answered, dropped, handed to its home shard or in the table),
 * DP_E_FULL when a TCP query was not taken because its client address is
 * at its fair share of a contended table: the caller keeps it and offers it
 * again later (a UDP one is answered SERVFAIL instead). Hot path. */
int dp_query_from_client(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, size_t len);

/* Resolve a query another shard read and handed to us, its home (the
 * hand-off calls it through s->xs_deliver): as dp_query_from_client,
 * without the ACL and rate limit the receiving shard applied, nor a second
 * hand-off. c is a T_UDP client (answered from our socket) or a
 * T_TCP_REMOTE one, with its arrival time on its shard. Every query
 * delivered gets exactly one answer, len 0 when none can be made. Hot
 * path. */
void dp_query_from_shard(dp_shard_t *s, const dp_client_t *c, uint8_t *msg, size_t len);

/* ---- from the upstream pool (through dp_upstream_sink_t) ---- */

/* An upstream answer msg (parsed into a by dp_dns_parse_answer_rrs) for
 * the query in slot qi (already matched), from upstream index upstream.
 * Answers the client and frees the slot; but a SERVFAIL first sends the
 * query to an upstream that has not failed it. */
void dp_query_answer(dp_shard_t *s, uint32_t qi, uint8_t *msg, size_t len,
		     const dp_dns_answer_t *a, int upstream);
/* Answer the query with SERVFAIL (or a stale answer) and free its slot; a
 * leader's waiters too. */
void dp_query_fail(dp_shard_t *s, uint32_t qi);
/* Start a probe (./IN/NS, no client) on connection ci. Returns 0, or
 * DP_E_FULL / a negative code when no slot or the send failed. */
int dp_query_probe(dp_shard_t *s, uint32_t ci);

/* ---- the shard's life ---- */

/* Set up the query table (qtable.h), the fair share, the answer cache
 * (--cache-size over the shards) and the scratch buffer. Allocates.
 * Returns 0 or a negative code (then dp_query_table_free is still safe). */
int dp_query_table_init(dp_shard_t *s);
/* Copy the cache's own counters into the shard's (once per tick). */
void dp_query_publish_stats(dp_shard_t *s);
/* Teardown: answer every live query (SERVFAIL or stale) and free its slot. */
void dp_query_fail_all(dp_shard_t *s);
/* Free what dp_query_table_init set up (after dp_query_fail_all). */
void dp_query_table_free(dp_shard_t *s);

#endif
