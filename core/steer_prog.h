/* steer_prog.h - what the steering program (steer.bpf.c) and its loader
 * (steer.c) share: the layout of its parameter map, and the two pure
 * functions that read a question name and hash it.
 *
 * The functions are compiled twice: into the BPF object, and into the host
 * code of the unit test (tests/unit/test_steer.c), which checks them against
 * dp_home_hash() in home.h bit for bit. So this header uses nothing but
 * <linux/types.h>: no libc, no kernel helpers.
 *
 * The hash is home.h's, restated for a verifier: the name is walked once to
 * find its length (bounded loop), then hashed a whole 8-octet word at a time
 * with the case folded branch-free (SWAR), and the standard SipHash tail.
 */
#ifndef DP_STEER_PROG_H
#define DP_STEER_PROG_H

#include <linux/types.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Octets of the question name the program reads: a name is at most 255. */
#define DP_STEER_NAME_BUF 256

/* The parameter map's one value (key 0). Filled by the loader before the
 * program is attached; read-only afterwards. */
struct dp_steer_params {
	__u64 k0, k1; /* the process key (dp_hash_key) */
	__u32 nshards; /* socket array key = listen index * nshards + home */
	__u32 nlisten;
};

/* Wire length (1..255) of the uncompressed name at the start of buf, of
 * which n octets are readable, or 0 when the program must not steer: a
 * compression pointer or an extended/reserved label type (0x40, 0x80), a
 * name longer than 255 octets, or one that runs past n. Same limits as
 * dns.c's name_walk() for a question. */
static __always_inline __u32 dp_steer_name_len(const __u8 *buf, __u32 n)
{
	__u32 pos = 0;
	/* Every label but the root takes at least two octets: 127 labels and
	 * the root fill 255. */
	for (int i = 0; i < 128; i++) {
		if (pos >= n)
			return 0;
		__u8 c = buf[pos & (DP_STEER_NAME_BUF - 1)];
		if (c == 0)
			return pos + 1;
		if (c & 0xc0)
			return 0;
		pos += (__u32)c + 1;
		if (pos > 254) /* the root would be octet 256 or later */
			return 0;
	}
	return 0;
}

#define DP_STEER_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define DP_STEER_SIPROUND(v0, v1, v2, v3)      \
	do {                                   \
		v0 += v1;                      \
		v1 = DP_STEER_ROTL(v1, 13);    \
		v1 ^= v0;                      \
		v0 = DP_STEER_ROTL(v0, 32);    \
		v2 += v3;                      \
		v3 = DP_STEER_ROTL(v3, 16);    \
		v3 ^= v2;                      \
		v0 += v3;                      \
		v3 = DP_STEER_ROTL(v3, 21);    \
		v3 ^= v0;                      \
		v2 += v1;                      \
		v1 = DP_STEER_ROTL(v1, 17);    \
		v1 ^= v2;                      \
		v2 = DP_STEER_ROTL(v2, 32);    \
	} while (0)

/* The eight octets of buf at off (a multiple of 8; buf 8-octet aligned) as
 * a little-endian word, as home.h assembles them: one load. */
static __always_inline __u64 dp_steer_word(const __u8 *buf, __u32 off)
{
	__u64 w = *(const __u64 *)(const void *)(buf + (off & (DP_STEER_NAME_BUF - 8)));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	w = __builtin_bswap64(w);
#endif
	return w;
}

/* ASCII A-Z to a-z in every octet of w, other octets (0x80-0xff included)
 * unchanged. Per octet x of w with its top bit cleared: x + 0x3f has its top
 * bit set iff x >= 'A', x + 0x25 iff x > 'Z' (neither carries into the next
 * octet); their difference in that bit, on an octet whose own top bit was
 * clear, is an upper-case letter, which gets 0x20. */
static __always_inline __u64 dp_steer_fold(__u64 w)
{
	const __u64 hi = 0x8080808080808080ull;
	__u64 x = w & ~hi;
	__u64 ge_a = x + 0x3f3f3f3f3f3f3f3full;
	__u64 gt_z = x + 0x2525252525252525ull;
	__u64 upper = (ge_a ^ gt_z) & ~w & hi;
	return w | (upper >> 2);
}

/* dp_home_hash() of the len-octet name (1..255) at the start of buf, under
 * key k0/k1: SipHash-1-3, case folded, exact length. buf is 8-octet aligned
 * and holds DP_STEER_NAME_BUF octets; those past len are read but masked
 * out.
 *
 * Shaped for the verifier: every address depends on the loop counter alone,
 * never on len, so len stays an imprecise scalar and the verifier checks
 * the loop once, not once per length the name walk can return (that costs
 * ten times the instructions and seconds at start). The word at len's last
 * full word boundary is taken as the tail inside the loop for the same
 * reason. */
static __always_inline __u64 dp_steer_hash(const __u8 *buf, __u32 len, __u64 k0, __u64 k1)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ull;
	__u64 v1 = k1 ^ 0x646f72616e646f6dull;
	__u64 v2 = k0 ^ 0x6c7967656e657261ull;
	__u64 v3 = k1 ^ 0x7465646279746573ull;
	__u32 full = len >> 3;
	__u64 tail = 0;
	for (__u32 w = 0; w < DP_STEER_NAME_BUF / 8; w++) {
		__u64 m = dp_steer_fold(dp_steer_word(buf, w * 8));
		if (w == full) {
			tail = m;
			break;
		}
		v3 ^= m;
		DP_STEER_SIPROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	/* The last 0-7 octets, zero padded, the length in the top octet. */
	__u32 rest = len & 7;
	tail &= rest ? (~0ull >> (64 - 8 * rest)) : 0;
	__u64 m = tail | ((__u64)(len & 0xff) << 56);
	v3 ^= m;
	DP_STEER_SIPROUND(v0, v1, v2, v3);
	v0 ^= m;
	v2 ^= 0xff;
	DP_STEER_SIPROUND(v0, v1, v2, v3);
	DP_STEER_SIPROUND(v0, v1, v2, v3);
	DP_STEER_SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/* home.h's dp_home_shard(). */
static __always_inline __u32 dp_steer_home(__u64 h, __u32 nshards)
{
	return (__u32)(((h >> 32) * (__u64)nshards) >> 32);
}

#endif
