/* home.h - which shard is a question's home.
 *
 * Every question has one home shard per machine: the one whose cache holds
 * its answer and whose in-flight table coalesces it. The home is a function
 * of the question name alone (case folded), so that every type of a name
 * shares a home, and it is computed bit for bit the same by the C code and
 * by the SO_REUSEPORT steering program (which reads the name from the UDP
 * payload and gets the key from a map):
 *
 *   h    = SipHash-1-3 under the process key (dp_hash_key) of the wire name
 *          with ASCII A-Z folded to a-z (label length octets unchanged),
 *          exact length (the standard SipHash tail: the last 0-7 octets
 *          zero padded, length in the top octet);
 *   home = ((h >> 32) * nshards) >> 32.
 *
 * The name is client-chosen: without the key a client could aim every name
 * at one shard.
 */
#ifndef DP_HOME_H
#define DP_HOME_H

#include "siphash.h"

/* Hash of a wire-form name (len octets, the root's single zero included),
 * case folded, under the process key. */
static inline uint64_t dp_home_hash(const uint8_t *name, size_t len)
{
	dp_sip_t s;
	dp_sip_init(&s, &dp_hash_key);
	uint64_t w = 0;
	size_t i = 0;
	for (; i < len; i++) {
		uint8_t c = name[i];
		if (c >= 'A' && c <= 'Z')
			c |= 0x20;
		w |= (uint64_t)c << (8 * (i & 7));
		if ((i & 7) == 7) {
			dp_sip_word(&s, w);
			w = 0;
		}
	}
	return dp_sip_final(&s, w, len);
}

/* The home shard of hash h among nshards. */
static inline uint32_t dp_home_shard(uint64_t h, uint32_t nshards)
{
	return (uint32_t)(((h >> 32) * (uint64_t)nshards) >> 32);
}

#endif
