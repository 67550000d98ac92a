/* route.h - which forwarding zone a query name belongs to (route.c): the
 * longest of the configured zones (config.h, --forward) that is a suffix
 * of the name at a label boundary, compared case-insensitively. */
#ifndef DP_ROUTE_H
#define DP_ROUTE_H

#include "config.h"

/* The zone of name (uncompressed wire form, len octets, as a parsed
 * question holds it): an index in cfg->zone, 0 (the root) when no other
 * zone is a suffix. Hot path: with the root alone, no work. */
uint32_t dp_route_zone(const dp_config_t *cfg, const uint8_t *name, size_t len);

#endif
