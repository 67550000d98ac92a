/* clientshare.h - fair share of a shard's query table per client address.
 *
 * A client address (IPv4 address, IPv6 /64) may use the whole query table
 * while no one else needs it; under contention every active address gets at
 * least an equal share. This module keeps the accounting: which addresses
 * have queries in the table, how many each, and each address's queries in
 * arrival order (to reclaim the oldest). Pure: no I/O, no dp_query_t; the
 * caller passes query indices (0 .. qcap-1).
 *
 * Admission (dp_cshare_admit), with cap the table size, used the slots in
 * use (every query, with or without a client), n the active addresses
 * counting the asking one, share = max(1, cap / n), mine the asking
 * address's queries, and headroom = cap / 8:
 *   used <  cap - headroom          admit (not contended)
 *   mine >= share                   refuse (contended, at or over its share)
 *   used <  cap                     admit
 *   the largest count > share       reclaim: the caller frees the oldest query
 *                                   of that address, then admits
 *   otherwise                       refuse
 * Guarantee: while the table is contended, an address under its share is
 * admitted (reclaiming only from an address strictly over the share, which
 * keeps at least its share), and an address at or over its share never
 * grows. An address alone is never refused before the table is full.
 * Slots held by queries without a client (prefetch, probes) are not
 * reclaimable, so the guarantee holds over the slots clients hold.
 *
 * Owns: the address table (open addressing, keyed hash dp_hash2 with the
 * process key so client-chosen addresses cannot collide on purpose), an
 * entry pool of qcap entries (an entry lives while its count > 0), one list
 * per count value (O(1) access to the largest count), and per query its
 * entry and list links. Everything is allocated once by dp_cshare_init();
 * nothing per query.
 */
#ifndef DP_CLIENTSHARE_H
#define DP_CLIENTSHARE_H

#include "dp.h"
#include "list.h" /* DP_NONE */

#include <sys/socket.h>

/* A client address as the share counts it: IPv4 address (IPv4-mapped
 * IPv6 included), or IPv6 /64 prefix. */
typedef struct dp_cshare_key {
	uint64_t hi, lo;
} dp_cshare_key_t;

typedef struct dp_cshare_ent {
	dp_cshare_key_t key;
	uint64_t hash;
	uint32_t count; /* queries in the table; 0 = entry free */
	uint32_t qhead, qtail; /* its queries, oldest first (query index + 1, 0 = none) */
	uint32_t bprev, bnext; /* list of entries with the same count (entry index + 1) */
} dp_cshare_ent_t;

typedef struct dp_cshare {
	uint32_t qcap; /* query table size */
	uint32_t active; /* addresses with count > 0 */
	uint32_t maxc; /* largest count of any address */
	uint32_t mask; /* slot table size - 1 */
	uint32_t *slot; /* open addressing: entry index + 1, 0 = empty */
	dp_cshare_ent_t *ent; /* qcap entries */
	uint32_t ent_hiwater, ent_free; /* pool: never used above hiwater; free list (+1) */
	uint32_t *bucket; /* bucket[c]: first entry with count c (+1), c in 1..qcap */
	uint32_t *qent; /* per query: its entry + 1, 0 = not counted */
	uint32_t *qprev, *qnext; /* per query: its address's list (query index + 1) */
} dp_cshare_t;

enum { DP_CSHARE_ADMIT = 0, DP_CSHARE_RECLAIM, DP_CSHARE_REFUSE };

/* Size the accounting for a query table of qcap slots. Allocates (zeroed
 * pages, touched only as used). Returns 0 or -ENOMEM (cs then safe to
 * dp_cshare_free). */
int dp_cshare_init(dp_cshare_t *cs, uint32_t qcap);

/* Free what dp_cshare_init allocated; cs may be zeroed or half set up. */
void dp_cshare_free(dp_cshare_t *cs);

/* The share key of a client address (AF_INET or AF_INET6). */
void dp_cshare_key_of(const struct sockaddr *sa, dp_cshare_key_t *k);

/* Queries counted for address k. Hot path. */
uint32_t dp_cshare_count(const dp_cshare_t *cs, const dp_cshare_key_t *k);

/* Whether address k may take a slot when used slots of the table are in
 * use: DP_CSHARE_ADMIT, DP_CSHARE_RECLAIM (free dp_cshare_victim() first,
 * then admit) or DP_CSHARE_REFUSE. The rule is in the file comment. Hot
 * path. */
int dp_cshare_admit(const dp_cshare_t *cs, const dp_cshare_key_t *k, uint32_t used);

/* The oldest query of the address with the most queries, DP_NONE when no
 * address has any. */
uint32_t dp_cshare_victim(const dp_cshare_t *cs);

/* The next (newer) query of qi's address, DP_NONE after the newest. */
uint32_t dp_cshare_next(const dp_cshare_t *cs, uint32_t qi);

/* Count query qi (not counted yet, < qcap) for address k. Hot path. */
void dp_cshare_add(dp_cshare_t *cs, const dp_cshare_key_t *k, uint32_t qi);

/* Stop counting query qi; nothing when it is not counted. Hot path. */
void dp_cshare_del(dp_cshare_t *cs, uint32_t qi);

#endif
