/* acl.c - client access control by address prefix. */
#include "acl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

void dp_acl_defaults(dp_acl_t *a)
{
	static const char *const def[] = {
		"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
		"::1/128", "fc00::/7",
	};
	a->n = 0;
	for (size_t i = 0; i < DP_ARRAY_LEN(def); i++)
		dp_acl_add(a, def[i]);
}

static bool prefix_match(const uint8_t *x, const uint8_t *y, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;
	if (memcmp(x, y, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (x[full] & mask) == (y[full] & mask);
}

int dp_acl_add(dp_acl_t *a, const char *cidr)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(cidr, '/');
	size_t hl = slash ? (size_t)(slash - cidr) : strlen(cidr);
	if (hl == 0 || hl >= sizeof(host) || a->n >= DP_ACL_MAX)
		return DP_E_CONFIG;
	memcpy(host, cidr, hl);
	host[hl] = 0;
	dp_acl_entry_t e;
	memset(&e, 0, sizeof(e));
	unsigned maxlen;
	if (inet_pton(AF_INET, host, e.addr) == 1) {
		e.family = AF_INET;
		maxlen = 32;
	} else if (inet_pton(AF_INET6, host, e.addr) == 1) {
		e.family = AF_INET6;
		maxlen = 128;
	} else {
		return DP_E_CONFIG;
	}
	unsigned long len = maxlen;
	if (slash) {
		char *end;
		if (slash[1] < '0' || slash[1] > '9')
			return DP_E_CONFIG;
		len = strtoul(slash + 1, &end, 10);
		if (*end || len > maxlen)
			return DP_E_CONFIG;
	}
	e.prefix = (uint8_t)len;
	/* Host bits must be clear: "10.0.0.1/8" is almost certainly a typo. */
	uint8_t zero[16] = { 0 }, masked[16];
	memcpy(masked, e.addr, sizeof(masked));
	for (unsigned b = (unsigned)len; b < maxlen; b++)
		masked[b / 8] &= (uint8_t)~(0x80 >> (b % 8));
	if (memcmp(masked, e.addr, maxlen / 8) != 0)
		return DP_E_CONFIG;
	(void)zero;
	a->e[a->n++] = e;
	return 0;
}

bool dp_acl_allows(const dp_acl_t *a, const struct sockaddr *sa)
{
	const uint8_t *addr;
	int family = sa->sa_family;
	if (family == AF_INET) {
		addr = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (family == AF_INET6) {
		addr = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
		if (memcmp(addr, mapped, 12) == 0) {
			family = AF_INET;
			addr += 12;
		}
	} else {
		return false;
	}
	for (int i = 0; i < a->n; i++)
		if (a->e[i].family == family && prefix_match(a->e[i].addr, addr, a->e[i].prefix))
			return true;
	return false;
}
