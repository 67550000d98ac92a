/* route.c - the forwarding zone of a name. A query's name is walked once
 * for its label boundaries; each zone is then one comparison at the
 * single offset where it could start. A few zones cost a few short
 * comparisons per query, and the names a client picks cannot make it
 * cost more (no hashing, no search whose shape depends on the name). */
#include "route.h"

#include <string.h>

static inline uint8_t lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* Whether name (wire form) equals zone (wire form, lower case) ignoring
 * ASCII case. Label lengths (under 64) are never letters. */
static bool equal_ci(const uint8_t *name, const uint8_t *zone, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (lower(name[i]) != zone[i])
			return false;
	return true;
}

uint32_t dp_route_zone(const dp_config_t *cfg, const uint8_t *name, size_t len)
{
	if (cfg->nzones <= 1 || len == 0 || len > DP_DNS_MAX_NAME)
		return 0;
	/* Bit o: a label starts at offset o (the root's empty label too). */
	uint64_t starts[(DP_DNS_MAX_NAME + 64) / 64] = { 0 };
	for (size_t o = 0; o < len; o += (size_t)name[o] + 1u) {
		starts[o / 64] |= 1ull << (o % 64);
		if (name[o] == 0 || name[o] > 63)
			break;
	}
	uint32_t best = 0;
	size_t best_len = 1;
	for (int z = 1; z < cfg->nzones; z++) {
		const dp_zone_cfg_t *zn = &cfg->zone[z];
		if (zn->wire_len > len || zn->wire_len <= best_len)
			continue;
		size_t off = len - zn->wire_len;
		if ((starts[off / 64] >> (off % 64) & 1) && equal_ci(name + off, zn->wire, zn->wire_len)) {
			best = (uint32_t)z;
			best_len = zn->wire_len;
		}
	}
	return best;
}
