/* acl.h - which client addresses may use the proxy (--allow CIDR). */
#ifndef DP_ACL_H
#define DP_ACL_H

#include "dp.h"

#include <sys/socket.h>

#define DP_ACL_MAX 64

typedef struct dp_acl_entry {
	uint8_t family; /* AF_INET or AF_INET6 */
	uint8_t prefix;
	uint8_t addr[16];
} dp_acl_entry_t;

typedef struct dp_acl {
	dp_acl_entry_t e[DP_ACL_MAX];
	int n;
} dp_acl_t;

/* Loopback, RFC 1918 and ULA (fc00::/7). */
void dp_acl_defaults(dp_acl_t *a);

/* Add "ADDR/LEN" or a bare address. Returns 0 or DP_E_CONFIG (bad text,
 * host bits set, or the list full). */
int dp_acl_add(dp_acl_t *a, const char *cidr);

/* True when sa (AF_INET, AF_INET6; IPv4-mapped IPv6 counts as IPv4) falls in
 * an entry. A handful of entries: a short scan. Hot path. */
bool dp_acl_allows(const dp_acl_t *a, const struct sockaddr *sa);

#endif
