/* config.c - command-line parsing into dp_config_t. */
#include "config.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dp_config_defaults(dp_config_t *c)
{
	memset(c, 0, sizeof(*c));
	c->threads = 0;
	c->timeout_ms = 2000;
	c->handshake_timeout_ms = 1000;
	c->tcp_idle_ms = 10000;
	c->max_tcp_clients = 15000;
	c->max_inflight = 16384;
	c->max_inflight_per_conn = 256;
	c->upstream_conns = 1;
	c->max_udp_size = 1232;
	snprintf(c->ca_file, sizeof(c->ca_file), "%s", "/etc/ssl/certs/ca-certificates.crt");
	c->log_level = DP_LOG_INFO;
	dp_acl_defaults(&c->acl);
	/* The metrics endpoint has no authentication: the loopback address
	 * only (127.0.0.1, not all of 127/8), until --metrics-allow says who
	 * else (the kubelet, Prometheus) may connect. */
	c->metrics_acl.n = 0;
	dp_acl_add(&c->metrics_acl, "127.0.0.1/32");
	dp_acl_add(&c->metrics_acl, "::1/128");
	c->cache_mb = 64;
	c->cache_min_ttl = 0;
	c->cache_max_ttl = 86400;
	c->stale_ttl = 86400;
	c->servfail_ttl = 5;
	c->tls_min_version = 0x0304;
	c->upstream_policy = DP_POLICY_FASTEST;
	c->hedge_ms = -1;
	c->upstream_idle_ms = 10000;
	c->drain_ms = 5000;
	c->pin = true;
	c->steering = DP_STEER_AUTO;
	c->batch_us = 200;
	snprintf(c->user, sizeof(c->user), "nobody");
}

int dp_config_parse_addr(const char *s, uint16_t default_port, dp_sockaddr_t *out)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *port_s = NULL;
	memset(out, 0, sizeof(*out));
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || (size_t)(close - s - 1) >= sizeof(host))
			return DP_E_CONFIG;
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = 0;
		if (close[1] == ':')
			port_s = close + 2;
		else if (close[1] != 0)
			return DP_E_CONFIG;
	} else {
		const char *colon = strchr(s, ':');
		if (colon && strchr(colon + 1, ':'))
			colon = NULL; /* bare IPv6 address without a port */
		size_t hl = colon ? (size_t)(colon - s) : strlen(s);
		if (hl >= sizeof(host))
			return DP_E_CONFIG;
		memcpy(host, s, hl);
		host[hl] = 0;
		if (colon)
			port_s = colon + 1;
	}
	long port = default_port;
	if (port_s) {
		char *end;
		errno = 0;
		port = strtol(port_s, &end, 10);
		if (errno || *port_s == 0 || *end || port < 0 || port > 65535)
			return DP_E_CONFIG;
	} else if (default_port == 0) {
		return DP_E_CONFIG;
	}
	struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->ss;
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		out->len = sizeof(*s4);
	} else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		out->len = sizeof(*s6);
	} else {
		return DP_E_CONFIG;
	}
	return 0;
}

void dp_sockaddr_str(const dp_sockaddr_t *a, char *out, size_t cap)
{
	char h[INET6_ADDRSTRLEN];
	if (a->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, h, sizeof(h));
		snprintf(out, cap, "[%s]:%u", h, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
		inet_ntop(AF_INET, &s4->sin_addr, h, sizeof(h));
		snprintf(out, cap, "%s:%u", h, ntohs(s4->sin_port));
	}
}

/* Standard base64 (RFC 4648, with padding). Returns the decoded length or
 * -1. Small and local so that the wire library needs no crypto library. */
static int b64_decode(const char *in, uint8_t *out, size_t cap)
{
	size_t n = strlen(in), o = 0;
	if (n % 4)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t acc = 0;
		int pad = 0;
		for (int j = 0; j < 4; j++) {
			char ch = in[i + j];
			int v;
			if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
			else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
			else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
			else if (ch == '+') v = 62;
			else if (ch == '/') v = 63;
			else if (ch == '=' && i + 4 == n && j >= 2) { v = 0; pad++; }
			else return -1;
			if (pad && ch != '=')
				return -1;
			acc = (acc << 6) | (uint32_t)v;
		}
		uint8_t b[3] = { (uint8_t)(acc >> 16), (uint8_t)(acc >> 8), (uint8_t)acc };
		for (int j = 0; j < 3 - pad; j++) {
			if (o >= cap)
				return -1;
			out[o++] = b[j];
		}
	}
	return (int)o;
}

/* IP[:PORT][#NAME][,pin-sha256=BASE64]...[,no-ca] */
static int parse_upstream(const char *s, dp_upstream_cfg_t *u)
{
	memset(u, 0, sizeof(*u));
	char spec[512];
	if (strlen(s) >= sizeof(spec))
		return DP_E_CONFIG;
	snprintf(spec, sizeof(spec), "%s", s);
	char *opts = strchr(spec, ',');
	if (opts)
		*opts++ = 0;
	const char *hash = strchr(spec, '#');
	char addr[128];
	size_t al = hash ? (size_t)(hash - spec) : strlen(spec);
	if (al == 0 || al >= sizeof(addr))
		return DP_E_CONFIG;
	memcpy(addr, spec, al);
	addr[al] = 0;
	if (dp_config_parse_addr(addr, 853, &u->addr) < 0)
		return DP_E_CONFIG;
	if (hash) {
		size_t nl = strlen(hash + 1);
		if (nl == 0 || nl >= sizeof(u->name))
			return DP_E_CONFIG;
		for (size_t i = 0; i < nl; i++) {
			char ch = hash[1 + i];
			if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
				return DP_E_CONFIG;
		}
		memcpy(u->name, hash + 1, nl + 1);
	}
	while (opts && *opts) {
		char *next = strchr(opts, ',');
		if (next)
			*next++ = 0;
		if (strncmp(opts, "pin-sha256=", 11) == 0) {
			const char *b64 = opts + 11;
			uint8_t out[64];
			if (u->npins >= 4 || b64_decode(b64, out, sizeof(out)) != 32)
				return DP_E_CONFIG;
			memcpy(u->pins[u->npins++], out, 32);
		} else if (strcmp(opts, "no-ca") == 0) {
			u->no_ca = true;
		} else {
			return DP_E_CONFIG;
		}
		opts = next;
	}
	if (u->no_ca && u->npins == 0)
		return DP_E_CONFIG; /* no-ca without a pin would trust anybody */
	snprintf(u->text, sizeof(u->text), "%s", spec);
	return 0;
}

/* Duration: "2", "2s", "1.5", "500ms". */
static int parse_duration_ms(const char *s, uint32_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return DP_E_CONFIG;
	if (strcmp(end, "ms") == 0)
		;
	else if (*end == 0 || strcmp(end, "s") == 0)
		v *= 1000.0;
	else
		return DP_E_CONFIG;
	if (!(v >= 1 && v <= 3600e3)) /* also refuses NaN ("nan", "nanms") */
		return DP_E_CONFIG;
	*out = (uint32_t)v;
	return 0;
}

static int parse_uint(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
		return DP_E_CONFIG;
	*out = v;
	return 0;
}

/* Add every entry of "CIDR[,CIDR...]" to a. Returns 0 or DP_E_CONFIG. */
static int parse_cidr_list(dp_acl_t *a, const char *list)
{
	char one[80];
	for (const char *p = list;;) {
		const char *comma = strchr(p, ',');
		size_t l = comma ? (size_t)(comma - p) : strlen(p);
		if (l == 0 || l >= sizeof(one))
			return DP_E_CONFIG;
		memcpy(one, p, l);
		one[l] = 0;
		if (dp_acl_add(a, one) < 0)
			return DP_E_CONFIG;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

static void usage(const dp_config_t *d)
{
	printf("Usage: dotproxy [options]\n"
	       "A DNS forwarder: plain DNS over UDP and TCP in, DNS-over-TLS (RFC 7858) out.\n\n"
	       "  --listen ADDR:PORT        listen address, repeatable (default 127.0.0.1:53);\n"
	       "                            IPv6 as [::1]:53\n"
	       "  --upstream IP[:PORT]#NAME DoT upstream, repeatable; NAME is checked against\n"
	       "                            its certificate and sent as SNI; port 853 by default\n"
	       "                            (default 1.1.1.1#cloudflare-dns.com and\n"
	       "                            1.0.0.1#cloudflare-dns.com)\n"
	       "                            ,pin-sha256=BASE64 (up to 4) pins the server key;\n"
	       "                            ,no-ca trusts the pins alone\n"
	       "  --upstream-policy P       fastest (lowest latency moving average, default)\n"
	       "                            or round-robin\n"
	       "  --hedge-after DUR|auto|off  also ask the next best upstream when an answer\n"
	       "                            is this late (default auto: about its p95)\n"
	       "  --upstream-idle-timeout DUR  upstream idle timeout assumed when it does not\n"
	       "                            announce one (RFC 7828); default 10s\n"
	       "  --tls-min-version V       1.3 (default) or 1.2\n"
	       "  --threads N               shards, one thread and io_uring each\n"
	       "                            (default: one per online CPU)\n"
	       "  --timeout DURATION        answer SERVFAIL after this (default %.1fs);\n"
	       "                            durations: 2, 2s, 1.5s, 500ms\n"
	       "  --handshake-timeout DUR   bound on connect + TLS handshake (default %ums)\n"
	       "  --ca-file FILE            CA bundle for upstream verification\n"
	       "                            (default %s)\n"
	       "  --max-tcp-clients N       open client TCP connections (default %u)\n"
	       "  --tcp-idle-timeout DUR    close idle client TCP connections (default %.1fs)\n"
	       "  --max-inflight N          queries upstream per shard (default %u); under\n"
	       "                            contention each client address gets a fair share\n"
	       "  --max-inflight-per-conn N  queries in flight per client TCP connection;\n"
	       "                            at it the connection is not read (default %u)\n"
	       "  --upstream-conns N        TLS connections per upstream per shard (default %u)\n"
	       "  --max-udp-size N          largest UDP answer sent, 512..4096 (default %u)\n"
"  --allow CIDR              clients allowed, repeatable (default loopback,\n"
	       "                            10/8, 172.16/12, 192.168/16, fc00::/7); others\n"
	       "                            get REFUSED (UDP) or are closed (TCP)\n"
	       "  --rate-limit QPS          per client address (IPv6: /64), UDP; over it\n"
	       "                            queries are dropped or answered TC=1 (default off)\n"
"  --cache-size MB           answer cache, split over shards (default %u; 0 = off)\n"
	       "  --no-cache                no answer cache\n"
	       "  --cache-min-ttl SECONDS   cache answers at least this long (default %u)\n"
	       "  --cache-max-ttl SECONDS   and at most this long (default %u)\n"
	       "  --stale-ttl SECONDS       serve expired answers (TTL 30) this long after\n"
	       "                            expiry when no upstream answers (default %u)\n"
	       "  --servfail-ttl SECONDS    cache a SERVFAIL that every upstream gave this\n"
	       "                            long, 1..300 (default %u; RFC 9520)\n"
	       "  --forward-ecs             forward the client's EDNS Client Subnet upstream,\n"
	       "                            caching per subnet (default: never forwarded,\n"
	       "                            RFC 7871 11.1)\n"
"  --metrics ADDR:PORT       serve Prometheus /metrics and /healthz (default off)\n"
	       "  --metrics-allow CIDR[,CIDR...]  who may connect to --metrics, repeatable\n"
	       "                            (default 127.0.0.1 and ::1); others are closed\n"
	       "                            without an answer\n"
	       "  --config FILE             read settings from FILE: 'name value' per line,\n"
	       "                            names as these flags without '--', '#' comments;\n"
	       "                            flags override it; SIGHUP re-reads it\n"
	       "  --user NAME               after binding, run as NAME and its group\n"
	       "                            (default nobody)\n"
	       "  --allow-root              keep running as root\n"
	       "  --no-pin                  let the scheduler move shards between CPUs\n"
	       "                            (default: shard i pinned to the i-th CPU)\n"
	       "  --udp-io MODE             uring, the only mode (multishot recvmsg, send\n"
	       "                            SQEs); kept so old configs still parse\n"
	       "  --steering MODE           auto (default: a SO_REUSEPORT eBPF program sends\n"
	       "                            each UDP query to its home shard, when the kernel\n"
	       "                            and privileges allow) or off (queries are handed\n"
	       "                            to their home shard); read at start only\n"
	       "  --batch-us N              under load, let completions gather up to N us\n"
	       "                            before waking (default %u; 0 = wake for each)\n"
	       "  --drain-timeout DUR       on SIGTERM, answer what is in flight for at most\n"
	       "                            this long, then exit (default 5s)\n"
	       "  --log-level LEVEL         debug, info, warn or error (default info)\n"
	       "  --help                    this text\n"
	       "  --version                 print the version\n\n"
	       "Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads --config;\n"
	       "SIGUSR1 logs the counters.\n",
	       d->timeout_ms / 1000.0, d->handshake_timeout_ms, d->ca_file, d->max_tcp_clients,
	       d->tcp_idle_ms / 1000.0, d->max_inflight, d->max_inflight_per_conn,
	       d->upstream_conns, d->max_udp_size, d->cache_mb, d->cache_min_ttl, d->cache_max_ttl,
	       d->stale_ttl, d->servfail_ttl, d->batch_us);
}

enum {
	OPT_LISTEN = 256, OPT_UPSTREAM, OPT_THREADS, OPT_TIMEOUT, OPT_CA, OPT_LOG,
	OPT_HELP, OPT_VERSION, OPT_MAXTCP, OPT_TCPIDLE, OPT_INFLIGHT, OPT_UPCONNS,
	OPT_UDPSIZE, OPT_HSTIMEOUT, OPT_ALLOW, OPT_RATELIMIT, OPT_CACHESIZE, OPT_NOCACHE,
	OPT_CACHEMIN, OPT_CACHEMAX, OPT_STALE, OPT_TLSMIN, OPT_POLICY, OPT_HEDGE, OPT_UPIDLE,
	OPT_CONFIG, OPT_METRICS, OPT_USER, OPT_ALLOWROOT, OPT_DRAIN, OPT_NOPIN,
	OPT_UDPIO, OPT_STEERING, OPT_BATCHUS, OPT_SERVFAILTTL, OPT_FWDECS, OPT_METRICSALLOW,
	OPT_INFLIGHT_CONN,
};

static const struct option opts[] = {
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "upstream", required_argument, NULL, OPT_UPSTREAM },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "handshake-timeout", required_argument, NULL, OPT_HSTIMEOUT },
	{ "ca-file", required_argument, NULL, OPT_CA },
	{ "log-level", required_argument, NULL, OPT_LOG },
	{ "max-tcp-clients", required_argument, NULL, OPT_MAXTCP },
	{ "tcp-idle-timeout", required_argument, NULL, OPT_TCPIDLE },
	{ "max-inflight", required_argument, NULL, OPT_INFLIGHT },
	{ "max-inflight-per-conn", required_argument, NULL, OPT_INFLIGHT_CONN },
	{ "upstream-conns", required_argument, NULL, OPT_UPCONNS },
	{ "max-udp-size", required_argument, NULL, OPT_UDPSIZE },
	{ "allow", required_argument, NULL, OPT_ALLOW },
	{ "rate-limit", required_argument, NULL, OPT_RATELIMIT },
	{ "cache-size", required_argument, NULL, OPT_CACHESIZE },
	{ "no-cache", no_argument, NULL, OPT_NOCACHE },
	{ "cache-min-ttl", required_argument, NULL, OPT_CACHEMIN },
	{ "cache-max-ttl", required_argument, NULL, OPT_CACHEMAX },
	{ "stale-ttl", required_argument, NULL, OPT_STALE },
	{ "servfail-ttl", required_argument, NULL, OPT_SERVFAILTTL },
	{ "forward-ecs", no_argument, NULL, OPT_FWDECS },
	{ "tls-min-version", required_argument, NULL, OPT_TLSMIN },
	{ "upstream-policy", required_argument, NULL, OPT_POLICY },
	{ "hedge-after", required_argument, NULL, OPT_HEDGE },
	{ "upstream-idle-timeout", required_argument, NULL, OPT_UPIDLE },
	{ "config", required_argument, NULL, OPT_CONFIG },
	{ "metrics", required_argument, NULL, OPT_METRICS },
	{ "metrics-allow", required_argument, NULL, OPT_METRICSALLOW },
	{ "user", required_argument, NULL, OPT_USER },
	{ "allow-root", no_argument, NULL, OPT_ALLOWROOT },
	{ "drain-timeout", required_argument, NULL, OPT_DRAIN },
	{ "no-pin", no_argument, NULL, OPT_NOPIN },
	{ "udp-io", required_argument, NULL, OPT_UDPIO },
	{ "steering", required_argument, NULL, OPT_STEERING },
	{ "batch-us", required_argument, NULL, OPT_BATCHUS },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

/* Apply one setting (code from opts[]; name is how it was written, for
 * errors). Repeatable lists (listen, upstream, allow) set in a later layer
 * (the command line after the file) replace those of an earlier one. */
static int apply(dp_config_t *c, int o, const char *arg, const char *name, char *err, size_t errlen)
{
	unsigned long n;
	switch (o) {
	case OPT_LISTEN:
		if (c->listen_layer != c->cur_layer) {
			c->nlisten = 0;
			c->listen_layer = c->cur_layer;
		}
		break;
	case OPT_UPSTREAM:
		if (c->upstream_layer != c->cur_layer) {
			c->nupstream = 0;
			c->upstream_layer = c->cur_layer;
		}
		break;
	case OPT_ALLOW:
		if (c->acl_layer != c->cur_layer) {
			c->acl.n = 0;
			c->acl_layer = c->cur_layer;
		}
		break;
	case OPT_METRICSALLOW:
		if (c->metrics_acl_layer != c->cur_layer) {
			c->metrics_acl.n = 0;
			c->metrics_acl_layer = c->cur_layer;
		}
		break;
	default:
		break;
	}
	switch (o) {
	case OPT_LISTEN:
		if (c->nlisten >= DP_MAX_LISTEN) {
			snprintf(err, errlen, "too many --listen (at most %d)", DP_MAX_LISTEN);
			return DP_E_CONFIG;
		}
		if (dp_config_parse_addr(arg, 0, &c->listen[c->nlisten]) < 0) {
			snprintf(err, errlen, "--listen %s: expected IP:PORT or [IPv6]:PORT", arg);
			return DP_E_CONFIG;
		}
		snprintf(c->listen_text[c->nlisten], sizeof(c->listen_text[0]), "%s", arg);
		c->nlisten++;
		break;
	case OPT_UPSTREAM:
		if (c->nupstream >= DP_MAX_UPSTREAMS) {
			snprintf(err, errlen, "too many --upstream (at most %d)", DP_MAX_UPSTREAMS);
			return DP_E_CONFIG;
		}
		if (parse_upstream(arg, &c->upstream[c->nupstream]) < 0) {
			snprintf(err, errlen,
				 "--upstream %s: expected IP[:PORT]#NAME[,pin-sha256=BASE64]...[,no-ca] (no-ca needs a pin)",
				 arg);
			return DP_E_CONFIG;
		}
		c->nupstream++;
		break;
	case OPT_THREADS:
		if (parse_uint(arg, 1, 256, &n) < 0) {
			snprintf(err, errlen, "--threads %s: expected 1..256", arg);
			return DP_E_CONFIG;
		}
		c->threads = (int)n;
		break;
	case OPT_TIMEOUT:
		if (parse_duration_ms(arg, &c->timeout_ms) < 0) {
			snprintf(err, errlen, "--timeout %s: expected a duration such as 2s or 500ms", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_HSTIMEOUT:
		if (parse_duration_ms(arg, &c->handshake_timeout_ms) < 0) {
			snprintf(err, errlen, "--handshake-timeout %s: expected a duration such as 1s", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_TCPIDLE:
		if (parse_duration_ms(arg, &c->tcp_idle_ms) < 0) {
			snprintf(err, errlen, "--tcp-idle-timeout %s: expected a duration such as 10s", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_CA:
		if (strlen(arg) >= sizeof(c->ca_file)) {
			snprintf(err, errlen, "--ca-file: path too long");
			return DP_E_CONFIG;
		}
		snprintf(c->ca_file, sizeof(c->ca_file), "%s", arg);
		break;
	case OPT_LOG: {
		int l = dp_log_parse_level(arg);
		if (l < 0) {
			snprintf(err, errlen, "--log-level %s: expected debug, info, warn or error", arg);
			return DP_E_CONFIG;
		}
		c->log_level = l;
		break;
	}
	case OPT_MAXTCP:
		if (parse_uint(arg, 1, 1000000, &n) < 0) {
			snprintf(err, errlen, "--max-tcp-clients %s: expected 1..1000000", arg);
			return DP_E_CONFIG;
		}
		c->max_tcp_clients = (uint32_t)n;
		break;
	case OPT_INFLIGHT:
		if (parse_uint(arg, 1, 1000000, &n) < 0) {
			snprintf(err, errlen, "--max-inflight %s: expected 1..1000000", arg);
			return DP_E_CONFIG;
		}
		c->max_inflight = (uint32_t)n;
		break;
	case OPT_INFLIGHT_CONN:
		if (parse_uint(arg, 1, 65535, &n) < 0) {
			snprintf(err, errlen, "--max-inflight-per-conn %s: expected 1..65535", arg);
			return DP_E_CONFIG;
		}
		c->max_inflight_per_conn = (uint32_t)n;
		break;
	case OPT_UPCONNS:
		if (parse_uint(arg, 1, 64, &n) < 0) {
			snprintf(err, errlen, "--upstream-conns %s: expected 1..64", arg);
			return DP_E_CONFIG;
		}
		c->upstream_conns = (uint32_t)n;
		break;
	case OPT_UDPSIZE:
		if (parse_uint(arg, 512, 4096, &n) < 0) {
			snprintf(err, errlen, "--max-udp-size %s: expected 512..4096", arg);
			return DP_E_CONFIG;
		}
		c->max_udp_size = (uint16_t)n;
		break;
	case OPT_ALLOW:
		if (dp_acl_add(&c->acl, arg) < 0) {
			snprintf(err, errlen, "--allow %s: expected ADDR/LEN with no host bits set (at most %d)",
				 arg, DP_ACL_MAX);
			return DP_E_CONFIG;
		}
		break;
	case OPT_RATELIMIT:
		if (parse_uint(arg, 0, 10000000, &n) < 0) {
			snprintf(err, errlen, "--rate-limit %s: expected queries per second, 0 = off", arg);
			return DP_E_CONFIG;
		}
		c->rate_limit = (uint32_t)n;
		break;
	case OPT_CACHESIZE:
		if (parse_uint(arg, 0, 1048576, &n) < 0) {
			snprintf(err, errlen, "--cache-size %s: expected megabytes, 0..1048576", arg);
			return DP_E_CONFIG;
		}
		c->cache_mb = (uint32_t)n;
		break;
	case OPT_NOCACHE:
		c->cache_mb = 0;
		break;
	case OPT_CACHEMIN:
	case OPT_CACHEMAX:
	case OPT_STALE:
		if (parse_uint(arg, 0, 604800, &n) < 0) {
			snprintf(err, errlen, "%s %s: expected seconds, 0..604800", name, arg);
			return DP_E_CONFIG;
		}
		if (o == OPT_CACHEMIN)
			c->cache_min_ttl = (uint32_t)n;
		else if (o == OPT_CACHEMAX)
			c->cache_max_ttl = (uint32_t)n;
		else
			c->stale_ttl = (uint32_t)n;
		break;
	case OPT_SERVFAILTTL:
		if (parse_uint(arg, 1, 300, &n) < 0) {
			snprintf(err, errlen, "%s %s: expected seconds, 1..300 (RFC 9520)", name, arg);
			return DP_E_CONFIG;
		}
		c->servfail_ttl = (uint32_t)n;
		break;
	case OPT_FWDECS:
		c->forward_ecs = true;
		break;
	case OPT_POLICY:
		if (strcmp(arg, "fastest") == 0)
			c->upstream_policy = DP_POLICY_FASTEST;
		else if (strcmp(arg, "round-robin") == 0)
			c->upstream_policy = DP_POLICY_RR;
		else {
			snprintf(err, errlen, "--upstream-policy %s: expected fastest or round-robin", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_HEDGE: {
		uint32_t ms;
		if (strcmp(arg, "auto") == 0)
			c->hedge_ms = -1;
		else if (strcmp(arg, "off") == 0)
			c->hedge_ms = 0;
		else if (parse_duration_ms(arg, &ms) == 0)
			c->hedge_ms = (int32_t)ms;
		else {
			snprintf(err, errlen, "--hedge-after %s: expected a duration, auto or off", arg);
			return DP_E_CONFIG;
		}
		break;
	}
	case OPT_UPIDLE:
		if (parse_duration_ms(arg, &c->upstream_idle_ms) < 0 || c->upstream_idle_ms < 1000) {
			snprintf(err, errlen, "--upstream-idle-timeout %s: expected a duration of 1s or more", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_TLSMIN:
		if (strcmp(arg, "1.2") == 0)
			c->tls_min_version = 0x0303;
		else if (strcmp(arg, "1.3") == 0)
			c->tls_min_version = 0x0304;
		else {
			snprintf(err, errlen, "--tls-min-version %s: expected 1.2 or 1.3", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_CONFIG:
		if (strlen(arg) >= sizeof(c->config_file)) {
			snprintf(err, errlen, "--config: path too long");
			return DP_E_CONFIG;
		}
		snprintf(c->config_file, sizeof(c->config_file), "%s", arg);
		break;
	case OPT_METRICS:
		if (dp_config_parse_addr(arg, 0, &c->metrics) < 0) {
			snprintf(err, errlen, "--metrics %s: expected IP:PORT", arg);
			return DP_E_CONFIG;
		}
		c->metrics_on = true;
		break;
	case OPT_METRICSALLOW:
		if (parse_cidr_list(&c->metrics_acl, arg) < 0) {
			snprintf(err, errlen,
				 "--metrics-allow %s: expected ADDR[/LEN][,ADDR[/LEN]...] with no host bits set (at most %d)",
				 arg, DP_ACL_MAX);
			return DP_E_CONFIG;
		}
		break;
	case OPT_USER:
		if (strlen(arg) == 0 || strlen(arg) >= sizeof(c->user)) {
			snprintf(err, errlen, "--user %s: expected a user name", arg);
			return DP_E_CONFIG;
		}
		snprintf(c->user, sizeof(c->user), "%s", arg);
		break;
	case OPT_ALLOWROOT:
		c->allow_root = true;
		break;
	case OPT_NOPIN:
		c->pin = false;
		break;
	case OPT_UDPIO:
		if (strcmp(arg, "uring") != 0) {
			snprintf(err, errlen, "--udp-io %s: expected uring (mmsg was removed: it "
				 "measured the same, bench/RESULTS.md)", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_STEERING:
		if (strcmp(arg, "auto") == 0) {
			c->steering = DP_STEER_AUTO;
		} else if (strcmp(arg, "off") == 0) {
			c->steering = DP_STEER_OFF;
		} else {
			snprintf(err, errlen, "--steering %s: expected auto or off", arg);
			return DP_E_CONFIG;
		}
		break;
	case OPT_BATCHUS:
		if (parse_uint(arg, 0, 1000, &n) < 0) {
			snprintf(err, errlen, "--batch-us %s: expected 0..1000", arg);
			return DP_E_CONFIG;
		}
		c->batch_us = (uint32_t)n;
		break;
	case OPT_DRAIN:
		if (parse_duration_ms(arg, &c->drain_ms) < 0) {
			snprintf(err, errlen, "--drain-timeout %s: expected a duration such as 5s", arg);
			return DP_E_CONFIG;
		}
		break;
	default:
		snprintf(err, errlen, "unknown setting %s", name);
		return DP_E_CONFIG;
	}
	return 0;
}

static int lookup_opt(const char *name, bool *has_arg)
{
	for (const struct option *op = opts; op->name; op++)
		if (strcmp(op->name, name) == 0) {
			*has_arg = op->has_arg == required_argument;
			return op->val;
		}
	return -1;
}

int dp_config_parse_file(dp_config_t *c, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return DP_E_CONFIG;
	}
	char line[1024];
	int lineno = 0, rc = 0;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		size_t len = strlen(line);
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			snprintf(err, errlen, "%s:%d: line too long", path, lineno);
			rc = DP_E_CONFIG;
			break;
		}
		/* A comment starts at a '#' that begins a word; a '#' inside a
		 * word belongs to an upstream (IP#NAME). */
		for (char *h = line; (h = strchr(h, '#')) != NULL; h++)
			if (h == line || h[-1] == ' ' || h[-1] == '\t') {
				*h = 0;
				break;
			}
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		char *end = p + strlen(p);
		while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
			*--end = 0;
		if (*p == 0)
			continue;
		char *name = p;
		while (*p && *p != ' ' && *p != '\t')
			p++;
		char *value = NULL;
		if (*p) {
			*p++ = 0;
			while (*p == ' ' || *p == '\t')
				p++;
			value = *p ? p : NULL;
		}
		bool has_arg;
		int o = lookup_opt(name, &has_arg);
		if (o < 0 || o == OPT_HELP || o == OPT_VERSION || o == OPT_CONFIG) {
			snprintf(err, errlen, "%s:%d: unknown setting '%s'", path, lineno, name);
			rc = DP_E_CONFIG;
			break;
		}
		if (has_arg && !value) {
			snprintf(err, errlen, "%s:%d: %s needs a value", path, lineno, name);
			rc = DP_E_CONFIG;
			break;
		}
		if (!has_arg && value && strcmp(value, "yes") != 0 && strcmp(value, "true") != 0) {
			if (strcmp(value, "no") == 0 || strcmp(value, "false") == 0)
				continue;
			snprintf(err, errlen, "%s:%d: %s takes no value (or yes/no)", path, lineno, name);
			rc = DP_E_CONFIG;
			break;
		}
		char msg[400];
		if (apply(c, o, value ? value : "", name, msg, sizeof(msg)) < 0) {
			snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
			rc = DP_E_CONFIG;
			break;
		}
	}
	fclose(f);
	return rc;
}

int dp_config_parse_args(dp_config_t *c, int argc, char **argv, char *err, size_t errlen)
{
	dp_config_t defaults;
	dp_config_defaults(&defaults);
	int o;
	opterr = 0;
	optind = 0; /* 0, not 1: glibc and musl then reset all their scan state */
	/* A --config file is read first; the command line overrides it. */
	c->config_file[0] = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			snprintf(c->config_file, sizeof(c->config_file), "%s", argv[i + 1]);
		else if (strncmp(argv[i], "--config=", 9) == 0)
			snprintf(c->config_file, sizeof(c->config_file), "%s", argv[i] + 9);
	}
	if (c->config_file[0]) {
		c->cur_layer = 1;
		if (dp_config_parse_file(c, c->config_file, err, errlen) < 0)
			return DP_E_CONFIG;
	}
	c->cur_layer = 2;
	while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (o) {
		case OPT_HELP:
		case 'h':
			usage(&defaults);
			return 1;
		case OPT_VERSION:
			printf("dotproxy %s\n", DP_VERSION);
			return 1;
		case ':':
			snprintf(err, errlen, "%s: missing value (see --help)", argv[optind - 1]);
			return DP_E_CONFIG;
		case '?':
			snprintf(err, errlen, "unknown option %s (see --help)", argv[optind - 1]);
			return DP_E_CONFIG;
		default: {
			char name[64];
			const char *nm = "option";
			for (const struct option *op = opts; op->name; op++)
				if (op->val == o) {
					snprintf(name, sizeof(name), "--%s", op->name);
					nm = name;
				}
			if (apply(c, o, optarg ? optarg : "", nm, err, errlen) < 0)
				return DP_E_CONFIG;
		}
		}
	}
	if (c->cache_min_ttl > c->cache_max_ttl) {
		snprintf(err, errlen, "--cache-min-ttl %u is above --cache-max-ttl %u", c->cache_min_ttl,
			 c->cache_max_ttl);
		return DP_E_CONFIG;
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument %s (see --help)", argv[optind]);
		return DP_E_CONFIG;
	}
	if (c->nlisten == 0) {
		dp_config_parse_addr("127.0.0.1:53", 0, &c->listen[0]);
		snprintf(c->listen_text[0], sizeof(c->listen_text[0]), "127.0.0.1:53");
		c->nlisten = 1;
	}
	if (c->nupstream == 0) {
		parse_upstream("1.1.1.1:853#cloudflare-dns.com", &c->upstream[0]);
		parse_upstream("1.0.0.1:853#cloudflare-dns.com", &c->upstream[1]);
		c->nupstream = 2;
	}
	return 0;
}
