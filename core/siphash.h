/* siphash.h - SipHash-1-3 with a per-process random key, for every table a
 * client can fill with keys of its choosing (cache, in-flight table, rate
 * limiter, per-client budgets).
 *
 * An unkeyed hash lets a client pick names or addresses that collide (one
 * bucket, one chain, one victim evicted over and over); a keyed one does not,
 * since the key is drawn from getrandom() at start and never leaves the
 * process. SipHash-1-3 (one compression round, three finalisation rounds) is
 * the variant Rust and CPython use for their hash tables: short inputs such
 * as a DNS name cost a few tens of nanoseconds.
 *
 * Streaming form for callers that produce 64-bit words themselves (the cache
 * folds a name's case eight octets at a time): dp_sip_init, dp_sip_word for
 * every full word, dp_sip_final with the last 0-7 octets (zero padded, as a
 * little-endian word) and the total length in octets.
 *
 * Owns: the process key (dp_hash_key), written once before any shard starts.
 */
#ifndef DP_SIPHASH_H
#define DP_SIPHASH_H

#include "dp.h"

typedef struct dp_sipkey {
	uint64_t k0, k1;
} dp_sipkey_t;

/* The process key. Zero until dp_hash_key_init(). */
extern dp_sipkey_t dp_hash_key;

/* Draw the process key from getrandom(). Call once, before any shard starts.
 * Returns 0 or a negative errno (the key is left as it was). */
int dp_hash_key_init(void);

typedef struct dp_sip {
	uint64_t v0, v1, v2, v3;
} dp_sip_t;

#define DP_SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

static inline void dp_sip_round(dp_sip_t *s)
{
	s->v0 += s->v1;
	s->v1 = DP_SIP_ROTL(s->v1, 13);
	s->v1 ^= s->v0;
	s->v0 = DP_SIP_ROTL(s->v0, 32);
	s->v2 += s->v3;
	s->v3 = DP_SIP_ROTL(s->v3, 16);
	s->v3 ^= s->v2;
	s->v0 += s->v3;
	s->v3 = DP_SIP_ROTL(s->v3, 21);
	s->v3 ^= s->v0;
	s->v2 += s->v1;
	s->v1 = DP_SIP_ROTL(s->v1, 17);
	s->v1 ^= s->v2;
	s->v2 = DP_SIP_ROTL(s->v2, 32);
}

static inline void dp_sip_init(dp_sip_t *s, const dp_sipkey_t *k)
{
	s->v0 = k->k0 ^ 0x736f6d6570736575ull;
	s->v1 = k->k1 ^ 0x646f72616e646f6dull;
	s->v2 = k->k0 ^ 0x6c7967656e657261ull;
	s->v3 = k->k1 ^ 0x7465646279746573ull;
}

/* SipHash-c-d's block and finalisation steps; the rounds are parameters so
 * that the unit test can check the construction against the paper's
 * SipHash-2-4 vectors. Everything else uses c = 1, d = 3. */
static inline void dp_sip_word_r(dp_sip_t *s, uint64_t m, int c)
{
	s->v3 ^= m;
	for (int i = 0; i < c; i++)
		dp_sip_round(s);
	s->v0 ^= m;
}

static inline uint64_t dp_sip_final_r(dp_sip_t *s, uint64_t tail, size_t len, int c, int d)
{
	dp_sip_word_r(s, tail | ((uint64_t)(len & 0xff) << 56), c);
	s->v2 ^= 0xff;
	for (int i = 0; i < d; i++)
		dp_sip_round(s);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/* One full 8-octet block, read little-endian by the caller. Hot path. */
static inline void dp_sip_word(dp_sip_t *s, uint64_t m)
{
	dp_sip_word_r(s, m, 1);
}

/* tail: the last len % 8 octets as a little-endian word, zero padded;
 * len: the total length in octets. Returns the hash. Hot path. */
static inline uint64_t dp_sip_final(dp_sip_t *s, uint64_t tail, size_t len)
{
	return dp_sip_final_r(s, tail, len, 1, 3);
}

/* SipHash-c-d of len octets at p under key k (dp_siphash: c = 1, d = 3). */
uint64_t dp_siphash_r(const dp_sipkey_t *k, const void *p, size_t len, int c, int d);
static inline uint64_t dp_siphash(const dp_sipkey_t *k, const void *p, size_t len)
{
	return dp_siphash_r(k, p, len, 1, 3);
}

/* Keyed hash of two 64-bit words (addresses, IDs) under the process key.
 * Hot path. */
static inline uint64_t dp_hash2(uint64_t a, uint64_t b)
{
	dp_sip_t s;
	dp_sip_init(&s, &dp_hash_key);
	dp_sip_word(&s, a);
	dp_sip_word(&s, b);
	return dp_sip_final(&s, 0, 16);
}

#endif
