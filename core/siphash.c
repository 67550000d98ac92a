/* siphash.c - the process hash key and SipHash-1-3 over a byte string. */
#include "siphash.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

dp_sipkey_t dp_hash_key;

int dp_hash_key_init(void)
{
	dp_sipkey_t k;
	ssize_t n = getrandom(&k, sizeof(k), 0);
	if (n != (ssize_t)sizeof(k))
		return n < 0 ? -errno : -EIO;
	dp_hash_key = k;
	return 0;
}

static uint64_t rd64le(const uint8_t *p, size_t n)
{
	uint64_t w = 0;
	for (size_t i = 0; i < n; i++)
		w |= (uint64_t)p[i] << (8 * i);
	return w;
}

uint64_t dp_siphash_r(const dp_sipkey_t *k, const void *p, size_t len, int c, int d)
{
	const uint8_t *b = p;
	dp_sip_t s;
	dp_sip_init(&s, k);
	size_t full = len & ~(size_t)7;
	for (size_t i = 0; i < full; i += 8)
		dp_sip_word_r(&s, rd64le(b + i, 8), c);
	return dp_sip_final_r(&s, rd64le(b + full, len - full), len, c, d);
}
