/* steer.h - steering UDP queries to their home shard in the kernel.
 *
 * At start, after the sockets are bound and before capabilities go, main.c
 * calls dp_steer_start(): it loads the SO_REUSEPORT program (steer.bpf.c,
 * embedded in the binary), gives it the process hash key, the shard count
 * and every shard's UDP socket, and attaches it to each listen address's
 * reuseport group. From then on the kernel delivers each UDP query to the
 * socket of the shard that is its question's home (home.h), so it needs no
 * handoff. TCP connections cannot be steered per query.
 *
 * When the program cannot be loaded (--steering off, no CAP_BPF and
 * CAP_NET_ADMIN, an old kernel, a verifier refusal, a build without it)
 * one line says so and why, and the kernel's hash keeps spreading
 * datagrams: a query that lands away from its home is handed over there.
 *
 * Once attached the program and its maps belong to the reuseport groups
 * (the kernel holds them while a socket of the group is open): nothing is
 * kept here, nothing to free. A socket that closes leaves the socket array
 * by itself; its queries then fall back to the kernel's hash.
 */
#ifndef DP_STEER_H
#define DP_STEER_H

#include "config.h"
#include "home.h"
#include "steer_prog.h"

/* Try to steer: load, fill and attach the program for the nshards x
 * cfg->nlisten UDP sockets udp[shard][listen]. Logs exactly one line, which
 * says whether steering is on and, when not, why. Returns 1 when the
 * program is attached, 0 when not (not an error: the proxy carries on). */
int dp_steer_start(const dp_config_t *cfg, int nshards, int (*udp)[DP_MAX_LISTEN]);

/* The parameter map's value for nshards shards and nlisten listen
 * addresses: the process key (dp_hash_key, drawn before this is called),
 * so that the program computes dp_home_hash() and dp_home_shard() exactly. */
static inline void dp_steer_params_make(struct dp_steer_params *p, uint32_t nshards,
					uint32_t nlisten)
{
	p->k0 = dp_hash_key.k0;
	p->k1 = dp_hash_key.k1;
	p->nshards = nshards;
	p->nlisten = nlisten;
}

#endif
