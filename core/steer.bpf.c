/* steer.bpf.c - the SO_REUSEPORT program that sends each UDP query to the
 * shard that is its question's home (home.h), so that the shard that reads
 * it is the one whose cache and in-flight table own the name.
 *
 * The kernel runs it in the receiving softirq, once per datagram, for the
 * reuseport group of the listen address the datagram is for. ctx->data
 * starts at the UDP header: the DNS message is at offset 8. It reads the
 * header and the question name, hashes the name as dp_home_hash() does
 * (SipHash-1-3 under the process key from the params map, case folded) and
 * selects socket listen * nshards + home from the socket array. Anything it
 * cannot read as one plain question (short, QR set, QDCOUNT != 1, a
 * compressed or overlong name, a socket it does not know) returns SK_PASS
 * without selecting: the kernel's own hash picks a shard, and the shard
 * hands the query to its home or answers it (FORMERR) as it would anyway.
 *
 * Maps (sized and filled by steer.c before the program is attached):
 *   dp_steer_params  array[1]: the key, nshards, nlisten
 *   dp_steer_socks   reuseport socket array, listen * nshards + shard
 *   dp_steer_listen  hash: socket cookie -> listen index, for every socket
 *                    (ctx->sk is some member of the group the datagram is
 *                    for: its cookie says which listen address that is)
 *   dp_steer_buf     per-CPU scratch for the name
 */
#include <linux/bpf.h>
#include <linux/in.h>

#include <bpf/bpf_helpers.h>

#include "steer_prog.h"

#define DNS_OFF 8 /* UDP header */
#define DNS_HDR 12

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_steer_params);
} dp_steer_params SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 1); /* set by the loader */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u64));
} dp_steer_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* set by the loader */
	__type(key, __u64);
	__type(value, __u32);
} dp_steer_listen SEC(".maps");

struct dp_steer_buf {
	__u8 b[DP_STEER_NAME_BUF] __attribute__((aligned(8))); /* read a word at a time */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_steer_buf);
} dp_steer_buf SEC(".maps");

SEC("sk_reuseport")
int dp_steer(struct sk_reuseport_md *ctx)
{
	__u32 zero = 0;
	__u8 hdr[DNS_HDR];

	if (ctx->ip_protocol != IPPROTO_UDP || ctx->len < DNS_OFF + DNS_HDR + 1)
		return SK_PASS;
	if (bpf_skb_load_bytes(ctx, DNS_OFF, hdr, sizeof(hdr)) < 0)
		return SK_PASS;
	/* A query (QR clear) with exactly one question. */
	if ((hdr[2] & 0x80) || hdr[4] != 0 || hdr[5] != 1)
		return SK_PASS;

	struct dp_steer_params *p = bpf_map_lookup_elem(&dp_steer_params, &zero);
	struct dp_steer_buf *buf = bpf_map_lookup_elem(&dp_steer_buf, &zero);
	if (!p || !buf || p->nshards == 0)
		return SK_PASS;

	/* As much of the name as the datagram holds, at most 256 octets. */
	__u32 n = ctx->len - (DNS_OFF + DNS_HDR);
	if (n > DP_STEER_NAME_BUF)
		n = DP_STEER_NAME_BUF;
	if (n < 1 || bpf_skb_load_bytes(ctx, DNS_OFF + DNS_HDR, buf->b, n) < 0)
		return SK_PASS;
	__u32 len = dp_steer_name_len(buf->b, n);
	if (len == 0)
		return SK_PASS;

	__u64 cookie = bpf_get_socket_cookie(ctx->sk);
	__u32 *listen = bpf_map_lookup_elem(&dp_steer_listen, &cookie);
	if (!listen)
		return SK_PASS;

	__u64 h = dp_steer_hash(buf->b, len, p->k0, p->k1);
	__u32 key = *listen * p->nshards + dp_steer_home(h, p->nshards);
	/* On failure (an empty slot: that shard's socket is closed) nothing is
	 * selected and the kernel's hash decides. */
	bpf_sk_select_reuseport(ctx, &dp_steer_socks, &key, 0);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
