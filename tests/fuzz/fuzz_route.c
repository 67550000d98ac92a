/* fuzz_route.c - the zone parser (--forward ZONE=UPSTREAM through
 * dp_config_parse_args) and dp_route_zone against a slow reference.
 *
 * Input: a count byte (low 3 bits: up to 7 zone lines), that many lines
 * ending in '\n' (each a --forward ZONE, the upstream added here), then a
 * query name in wire form, possibly malformed. Checked: every zone the
 * parser accepts is a lower-case wire name of at most 255 octets with
 * labels of 1 to 63 octets, and its text names it; dp_route_zone returns
 * what the reference returns, for the name and for it in upper case. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "route.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

static dp_config_t cfg;

static uint8_t lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c - 'A' + 'a') : c;
}

/* An accepted zone is a well-formed, lower-case name in wire form. */
static void check_zone(const dp_zone_cfg_t *z)
{
	CHECK(z->wire_len >= 1 && z->wire_len <= DP_DNS_MAX_NAME);
	size_t o = 0;
	while (z->wire[o] != 0) {
		CHECK(z->wire[o] <= 63);
		for (size_t i = 1; i <= z->wire[o]; i++) {
			uint8_t c = z->wire[o + i];
			CHECK(c == lower(c) && c != '.' && c > ' ' && c < 0x7f);
		}
		o += 1u + z->wire[o];
		CHECK(o < z->wire_len);
	}
	CHECK(o + 1 == z->wire_len);
	size_t tl = strlen(z->text);
	CHECK(tl >= 1 && z->text[tl - 1] == '.');
	CHECK((tl == 1) == (z->wire_len == 1));
}

/* The reference: try every label start of the name (walked as a stub
 * resolver would, stopping at a length over 63, a root label or the end),
 * and at each every zone of exactly the remaining length, octet by octet;
 * the longest zone that matches wins. */
static uint32_t slow_route(const uint8_t *name, size_t len)
{
	if (cfg.nzones <= 1 || len == 0 || len > DP_DNS_MAX_NAME)
		return 0;
	uint32_t best = 0;
	size_t best_len = 0;
	size_t o = 0;
	for (;;) {
		for (int z = 1; z < cfg.nzones; z++) {
			const dp_zone_cfg_t *zn = &cfg.zone[z];
			if (zn->wire_len != len - o || zn->wire_len <= best_len)
				continue;
			size_t i = 0;
			while (i < zn->wire_len && lower(name[o + i]) == zn->wire[i])
				i++;
			if (i == zn->wire_len) {
				best = (uint32_t)z;
				best_len = zn->wire_len;
			}
		}
		if (name[o] == 0 || name[o] > 63)
			break;
		o += 1u + name[o];
		if (o >= len)
			break;
	}
	return best;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 2048)
		return 0;
	int nzones = data[0] & 7;
	size_t p = 1;
	static char vals[7][600];
	char *argv[2 + 7 + 1];
	int argc = 0;
	argv[argc++] = (char *)"dotproxy";
	for (int k = 0; k < nzones; k++) {
		const uint8_t *nl = memchr(data + p, '\n', size - p);
		if (!nl)
			return 0;
		size_t l = (size_t)(nl - (data + p));
		if (l > 300 || memchr(data + p, 0, l))
			return 0;
		snprintf(vals[k], sizeof(vals[k]), "--forward=%.*s=udp://192.0.2.%d", (int)l,
			 (const char *)data + p, k + 1);
		argv[argc++] = vals[k];
		p += l + 1;
	}
	argv[argc] = NULL;
	char err[512];
	dp_config_defaults(&cfg);
	int rc = dp_config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (rc != 0) {
		CHECK(rc == DP_E_CONFIG && err[0] != 0);
		return 0;
	}
	CHECK(cfg.nzones >= 1 && cfg.nzones <= 1 + nzones);
	CHECK(cfg.zone[0].wire_len == 1 && cfg.zone[0].nup >= 1);
	for (int z = 0; z < cfg.nzones; z++) {
		check_zone(&cfg.zone[z]);
		for (int y = 0; y < z; y++) /* one entry per zone */
			CHECK(cfg.zone[y].wire_len != cfg.zone[z].wire_len ||
			      memcmp(cfg.zone[y].wire, cfg.zone[z].wire, cfg.zone[z].wire_len) != 0);
	}

	static uint8_t name[2048], upper[2048];
	size_t len = size - p;
	memcpy(name, data + p, len);
	uint32_t got = dp_route_zone(&cfg, name, len);
	CHECK(got < (uint32_t)cfg.nzones);
	CHECK(got == slow_route(name, len));
	for (size_t i = 0; i < len; i++)
		upper[i] = name[i] >= 'a' && name[i] <= 'z' ? (uint8_t)(name[i] - 32) : name[i];
	CHECK(dp_route_zone(&cfg, upper, len) == got);
	/* Every accepted zone routes its own name to itself. */
	for (int z = 0; z < cfg.nzones; z++)
		CHECK(dp_route_zone(&cfg, cfg.zone[z].wire, cfg.zone[z].wire_len) == (uint32_t)z);
	return 0;
}
