/* query-t.h - a client query in the shard's query table (types only). */
#ifndef DP_QUERY_T_H
#define DP_QUERY_T_H

#include "client-t.h"
#include "dns.h"
#include "edns.h"
#include "list.h"
#include "timerwheel.h"

#include <netinet/in.h>

enum { Q_FREE = 0, Q_PENDING, Q_SENT, Q_WAITING /* coalesced behind a leader */ };

#define DP_QUERY_INLINE 672 /* a 512-octet query, padded, fits */

typedef struct dp_query {
	uint32_t gen;
	uint8_t state; /* Q_* */
	uint8_t resent; /* re-sent once after a connection failed */
	uint16_t client_id;
	uint16_t up_id;
	uint16_t len; /* query wire length as sent upstream (padded) */
	uint16_t client_udp_limit; /* largest UDP answer the client takes */
	uint32_t conn; /* upstream connection index, DP_NONE when none */
	dp_link_t tlink; /* free list (tlink.next) */
	dp_link_t clink; /* connection's query list; for Q_WAITING the leader's
			  * waiters list */
	uint32_t leader; /* Q_WAITING: the query it waits on */
	dp_list_t waiters; /* leader: queries waiting for the same answer */
	uint64_t key_hash; /* cache key hash, for the in-flight table */
	bool in_table; /* registered in the in-flight table */
	uint32_t servfailed; /* bit u: upstream u answered SERVFAIL (failover) */
	uint8_t zone; /* forwarding zone (route.h): whose upstreams it goes to */
	uint8_t ecs_len; /* the client's subnet as forwarded (--forward-ecs), */
	uint8_t ecs[DP_EDNS_ECS_MAX]; /* 0 when none: part of the question */
	uint64_t deadline_ms;
	dp_tw_entry_t deadline_t; /* shard timer: SERVFAIL at deadline_ms */
	uint64_t start_ns; /* written to its connection (latency sample) */
	/* hedging: a second copy on another upstream's connection */
	uint32_t conn2; /* DP_NONE when not hedged */
	uint16_t up_id2;
	bool hedged; /* a hedge was sent (at most one per query) */
	dp_link_t c2link; /* conn2's hedge list */
	dp_tw_entry_t hedge_t; /* shard timer: send the hedge (armed: may be hedged) */
	uint64_t hedge_start_ns;
	dp_client_t client; /* who asked (transport T_NONE: nobody); its
			     * arrive_ns is set: the client-seen latency */
	dp_dns_view_t view; /* of the client's query; the question is at the
			     * same offsets in wire */
	uint8_t *wire; /* upstream form (padded), inline or malloc'd */
	uint8_t inline_wire[DP_QUERY_INLINE];
} dp_query_t;

#endif
