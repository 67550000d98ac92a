/* config.c - dotproxy's settings: one table of options, opts[], drives the
 * command line, the --config file, the defaults, --help and what a SIGHUP
 * reload may change (nginx's ngx_command_t, Knot's configuration schema).
 *
 * A row is one setting: its name (--name on the command line, "name value"
 * in the file), how its value is read (kind), the bytes of dp_config_t it
 * owns, its default (text its own parser reads), its help text, and its
 * reload rule. A new setting is a field in config.h and a row here.
 *
 * Owns nothing beyond the dp_config_t it fills; reads the --config file.
 */
#include "config.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------- the table */

/* How a value is read. */
enum {
	K_FLAG, /* no value: stores .min (files also take yes/true, or no/false to skip) */
	K_UINT, /* decimal in [.min, .max] */
	K_DURATION, /* "2", "2s", "1.5", "500ms" to ms, at least .min; or a .choices keyword */
	K_ENUM, /* one of .choices */
	K_STRING, /* text of .min to size - 1 octets, zero-padded */
	K_LISTEN, /* IP:PORT appended to listen[] and listen_text[] (.max of them) */
	K_LISTEN_TLS, /* IP[:PORT] (853 by default) appended to listen_tls[] */
	K_LISTEN_HTTPS, /* IP[:PORT] (443 by default) appended to listen_https[] */
	K_UPSTREAM, /* an upstream (see parse_upstream) of the root zone, appended to upstream[] */
	K_FORWARD, /* ZONE=UPSTREAM (a file's "ZONE UPSTREAM" too): an upstream of ZONE */
	K_CIDR, /* one ADDR[/LEN] added to a dp_acl_t */
	K_CIDR_LIST, /* ADDR[/LEN][,ADDR[/LEN]...] added to a dp_acl_t */
	K_METRICS, /* IP:PORT of the metrics endpoint, which it turns on */
	K_HELP, /* print --help, exit */
	K_VERSION, /* print the version, exit */
};

/* What a SIGHUP reload does with a setting. */
enum {
	R_LIVE, /* the shards take the new value */
	R_RESTART, /* read at start (threads, sockets, table sizes, privileges):
		    * the running value is kept, and a change is warned about */
	R_ARGV, /* command line only, not a file setting: config, help, version */
};

#define F_LIST 1 /* repeatable: the first use in a layer (defaults, file,
		  * command line) replaces what an earlier layer set */
#define F_AUTO0 2 /* 0 means "choose at start": a reload leaving it 0 keeps
		   * the running value without a warning */

typedef struct opt_choice {
	const char *name;
	long value;
} opt_choice_t;

typedef struct opt {
	const char *name;
	const char *arg; /* the value's name in --help; NULL: a switch */
	uint8_t kind, rule, flags;
	size_t off, size; /* the bytes of dp_config_t it owns (size 0: none) */
	long min, max; /* see the kinds; .max of a list: its capacity */
	const opt_choice_t *choices; /* NULL-terminated */
	const char *unit; /* K_UINT: what the number counts, for errors */
	const char *expect; /* what a bad value is told, when the kind's own text does not fit */
	const char *def; /* default as its parser reads it; lists: values separated by spaces */
	const char *shown; /* default as --help shows it, where def does not say it */
	const char *help;
} opt_t;

/* The field f; the fields a to b, both included (a list, its texts and count). */
#define FIELD(f) offsetof(dp_config_t, f), sizeof(((dp_config_t *)0)->f)
#define SPAN(a, b)                                                                     \
	offsetof(dp_config_t, a),                                                      \
		offsetof(dp_config_t, b) + sizeof(((dp_config_t *)0)->b) - offsetof(dp_config_t, a)
#define NOFIELD 0, 0

static const opt_choice_t policies[] = {
	{ "fastest", DP_POLICY_FASTEST }, { "round-robin", DP_POLICY_RR }, { NULL, 0 },
};
static const opt_choice_t hedge_words[] = { { "auto", -1 }, { "off", 0 }, { NULL, 0 } };
static const opt_choice_t tls_versions[] = { { "1.2", 0x0303 }, { "1.3", 0x0304 }, { NULL, 0 } };
static const opt_choice_t steer_modes[] = {
	{ "auto", DP_STEER_AUTO }, { "off", DP_STEER_OFF }, { NULL, 0 },
};
/* mmsg was a recvmmsg/sendmmsg mode, removed (it measured the same as uring,
 * bench/RESULTS.md): still accepted, so a config that names it still loads. */
static const opt_choice_t udp_io_modes[] = { { "uring", 0 }, { "mmsg", 1 }, { NULL, 0 } };
static const opt_choice_t log_levels[] = {
	{ "debug", DP_LOG_DEBUG }, { "info", DP_LOG_INFO }, { "warn", DP_LOG_WARN },
	{ "error", DP_LOG_ERROR }, { NULL, 0 },
};

/* In --help order. README.md's flag table lists the same flags and
 * defaults (tests/readme_flags.py checks). */
static const opt_t opts[] = {
	{ "listen", "ADDR:PORT", K_LISTEN, R_RESTART, F_LIST, SPAN(listen, nlisten),
	  .max = DP_MAX_LISTEN, .def = "127.0.0.1:53",
	  .help = "listen address for UDP and TCP, repeatable; IPv6 as [::1]:53" },
	{ "listen-tls", "ADDR[:PORT]", K_LISTEN_TLS, R_RESTART, F_LIST,
	  SPAN(listen_tls, nlisten_tls), .max = DP_MAX_LISTEN,
	  .help = "DNS-over-TLS listen address (RFC 7858), repeatable; port 853 by default; "
		  "needs --cert and --key" },
	{ "listen-https", "ADDR[:PORT]", K_LISTEN_HTTPS, R_RESTART, F_LIST,
	  SPAN(listen_https, nlisten_https), .max = DP_MAX_LISTEN,
	  .help = "DNS-over-HTTPS listen address (RFC 8484, HTTP/2), repeatable; port 443 by "
		  "default; needs --cert and --key" },
	{ "listen-https-path", "PATH", K_STRING, R_LIVE, 0, FIELD(listen_https_path), .min = 1,
	  .def = "/dns-query",
	  .help = "the DNS-over-HTTPS endpoint: GET PATH?dns=... and POST PATH" },
	{ "cert", "FILE", K_STRING, R_LIVE, 0, FIELD(cert_file), .min = 1,
	  .help = "certificate chain (PEM, leaf first) of the TLS listeners; re-read on SIGHUP "
		  "(new handshakes get it, open connections keep theirs)" },
	{ "key", "FILE", K_STRING, R_LIVE, 0, FIELD(key_file), .min = 1,
	  .help = "private key (PEM) of --cert; re-read on SIGHUP" },
	{ "listen-tls-min-version", "V", K_ENUM, R_LIVE, 0, FIELD(listen_tls_min_version),
	  .choices = tls_versions, .def = "1.3",
	  .help = "oldest TLS version the TLS listeners accept from clients, 1.3 or 1.2 "
		  "(--tls-min-version is the upstreams')" },
	{ "listen-tls-handshake-timeout", "DUR", K_DURATION, R_LIVE, 0,
	  FIELD(listen_tls_handshake_ms), .min = 1, .def = "5s",
	  .help = "a TLS client not done with its handshake this long after connecting is "
		  "closed" },
	{ "upstream", "IP[:PORT]#NAME", K_UPSTREAM, R_LIVE, 0, NOFIELD, .max = DP_MAX_UPSTREAMS,
	  .def = "1.1.1.1:853#cloudflare-dns.com 1.0.0.1:853#cloudflare-dns.com",
	  .help = "DoT upstream of the default route, repeatable (the same as --forward "
		  ".=UPSTREAM); NAME is checked against its certificate and sent as SNI; port 853 "
		  "by default; ,pin-sha256=BASE64 (up to 4) pins the server key; ,no-ca trusts the "
		  "pins alone" },
	{ "forward", "ZONE=UPSTREAM", K_FORWARD, R_LIVE, 0, NOFIELD, .max = DP_MAX_UPSTREAMS,
	  .help = "send queries at or below ZONE to UPSTREAM, repeatable (once per upstream; "
		  "the longest ZONE wins; '.' is the default route); UPSTREAM is a DoT upstream "
		  "as for --upstream, udp://IP[:PORT] (plain DNS, TCP when truncated; ,0x20 "
		  "randomizes the name's letter case, which the answer must echo) or "
		  "tcp://IP[:PORT] (plain DNS over TCP), port 53 by default; a layer (file, "
		  "command line) naming a zone replaces that zone's upstreams; config file: "
		  "forward ZONE UPSTREAM" },
	{ "allow-plain-default", NULL, K_FLAG, R_LIVE, 0, FIELD(allow_plain_default), .min = 1,
	  .help = "let udp:// and tcp:// upstreams serve the default route '.' (refused "
		  "otherwise, so that a typo cannot turn encryption off)" },
	{ "upstream-policy", "P", K_ENUM, R_LIVE, 0, FIELD(upstream_policy), .choices = policies,
	  .def = "fastest", .help = "fastest (lowest latency moving average) or round-robin" },
	{ "hedge-after", "DUR|auto|off", K_DURATION, R_LIVE, 0, FIELD(hedge_ms), .min = 1,
	  .choices = hedge_words, .def = "auto",
	  .help = "also ask the next best upstream when an answer is this late (auto: about "
		  "its p95)" },
	{ "upstream-idle-timeout", "DUR", K_DURATION, R_LIVE, 0, FIELD(upstream_idle_ms),
	  .min = 1000, .def = "10s",
	  .help = "upstream idle timeout assumed when it does not announce one (RFC 7828)" },
	{ "tls-min-version", "V", K_ENUM, R_LIVE, 0, FIELD(tls_min_version),
	  .choices = tls_versions, .def = "1.3", .help = "1.3 or 1.2" },
	{ "threads", "N", K_UINT, R_RESTART, F_AUTO0, FIELD(threads), .min = 1, .max = 256,
	  .shown = "one per online CPU", .help = "shards, one thread and io_uring each" },
	{ "timeout", "DURATION", K_DURATION, R_LIVE, 0, FIELD(timeout_ms), .min = 1, .def = "2s",
	  .help = "answer SERVFAIL after this; durations: 2, 2s, 1.5s, 500ms" },
	{ "handshake-timeout", "DUR", K_DURATION, R_LIVE, 0, FIELD(handshake_timeout_ms),
	  .min = 1, .def = "1s", .help = "bound on connect + TLS handshake" },
	{ "ca-file", "FILE", K_STRING, R_LIVE, 0, FIELD(ca_file),
	  .def = "/etc/ssl/certs/ca-certificates.crt",
	  .help = "CA bundle for upstream verification" },
	{ "max-tcp-clients", "N", K_UINT, R_RESTART, 0, FIELD(max_tcp_clients), .min = 1,
	  .max = 1000000, .def = "15000", .help = "open client TCP and TLS connections, together" },
	{ "tcp-idle-timeout", "DUR", K_DURATION, R_LIVE, 0, FIELD(tcp_idle_ms), .min = 1,
	  .def = "10s", .help = "close idle client TCP connections" },
	{ "max-inflight", "N", K_UINT, R_RESTART, 0, FIELD(max_inflight), .min = 1, .max = 1000000,
	  .def = "16384",
	  .help = "queries upstream per shard; under contention each client address gets a fair "
		  "share" },
	{ "max-inflight-per-conn", "N", K_UINT, R_LIVE, 0, FIELD(max_inflight_per_conn), .min = 1,
	  .max = 65535, .def = "256",
	  .help = "queries in flight per client TCP connection; at it the connection is not read" },
	{ "upstream-conns", "N", K_UINT, R_RESTART, 0, FIELD(upstream_conns), .min = 1, .max = 64,
	  .def = "1", .help = "TLS connections per upstream per shard" },
	{ "max-udp-size", "N", K_UINT, R_LIVE, 0, FIELD(max_udp_size), .min = 512, .max = 4096,
	  .def = "1232", .help = "largest UDP answer sent, 512..4096" },
	{ "allow", "CIDR", K_CIDR, R_LIVE, F_LIST, FIELD(acl),
	  .def = "127.0.0.0/8 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 ::1/128 fc00::/7",
	  .help = "clients allowed, repeatable (the first replaces the default); others get "
		  "REFUSED (UDP) or are closed (TCP)" },
	{ "rate-limit", "QPS", K_UINT, R_LIVE, 0, FIELD(rate_limit), .min = 0, .max = 10000000,
	  .expect = "queries per second, 0 = off", .shown = "off",
	  .help = "per client address (IPv6: /64), UDP and TLS; over it UDP queries are dropped or "
		  "answered TC=1, TLS ones answered REFUSED; 0 = off" },
	{ "cache-size", "MB", K_UINT, R_RESTART, 0, FIELD(cache_mb), .min = 0, .max = 1048576,
	  .unit = "megabytes", .def = "64", .help = "answer cache, split over shards; 0 = off" },
	{ "no-cache", NULL, K_FLAG, R_RESTART, 0, FIELD(cache_mb), .min = 0,
	  .help = "no answer cache" },
	{ "cache-min-ttl", "SECONDS", K_UINT, R_LIVE, 0, FIELD(cache_min_ttl), .min = 0,
	  .max = 604800, .unit = "seconds", .def = "0", .help = "cache answers at least this long" },
	{ "cache-max-ttl", "SECONDS", K_UINT, R_LIVE, 0, FIELD(cache_max_ttl), .min = 0,
	  .max = 604800, .unit = "seconds", .def = "86400", .help = "and at most this long" },
	{ "stale-ttl", "SECONDS", K_UINT, R_LIVE, 0, FIELD(stale_ttl), .min = 0, .max = 604800,
	  .unit = "seconds", .def = "86400",
	  .help = "serve expired answers (TTL 30) this long after expiry when no upstream answers" },
	{ "servfail-ttl", "SECONDS", K_UINT, R_LIVE, 0, FIELD(servfail_ttl), .min = 1, .max = 300,
	  .unit = "seconds", .def = "5",
	  .help = "cache a SERVFAIL that every upstream gave this long, 1..300 (RFC 9520)" },
	{ "forward-ecs", NULL, K_FLAG, R_LIVE, 0, FIELD(forward_ecs), .min = 1, .shown = "off",
	  .help = "forward the client's EDNS Client Subnet upstream, caching per subnet (off: "
		  "never forwarded, RFC 7871 11.1)" },
	{ "metrics", "ADDR:PORT", K_METRICS, R_RESTART, 0, SPAN(metrics, metrics_on),
	  .shown = "off", .help = "serve Prometheus /metrics and /healthz" },
	{ "metrics-allow", "CIDR[,CIDR...]", K_CIDR_LIST, R_LIVE, F_LIST, FIELD(metrics_acl),
	  .def = "127.0.0.1 ::1",
	  .help = "who may connect to --metrics, repeatable (the first replaces the default); "
		  "others are closed without an answer" },
	{ "config", "FILE", K_STRING, R_ARGV, 0, FIELD(config_file),
	  .help = "read settings from FILE: 'name value' per line, names as these flags without "
		  "'--', '#' comments; flags override it; SIGHUP re-reads it" },
	{ "user", "NAME", K_STRING, R_RESTART, 0, FIELD(user), .min = 1, .expect = "a user name",
	  .def = "nobody", .help = "after binding, run as NAME and its group" },
	{ "allow-root", NULL, K_FLAG, R_RESTART, 0, FIELD(allow_root), .min = 1,
	  .help = "keep running as root" },
	{ "no-pin", NULL, K_FLAG, R_RESTART, 0, FIELD(no_pin), .min = 1,
	  .help = "let the scheduler move shards between CPUs instead of pinning shard i to the "
		  "i-th CPU" },
	{ "udp-io", "MODE", K_ENUM, R_RESTART, 0, NOFIELD, .choices = udp_io_modes,
	  .expect = "uring", .def = "uring",
	  .help = "uring, the only mode (multishot recvmsg, send SQEs); mmsg, a mode since "
		  "removed, is accepted and means uring, so old configs still load" },
	{ "steering", "MODE", K_ENUM, R_RESTART, 0, FIELD(steering), .choices = steer_modes,
	  .def = "auto",
	  .help = "auto: a SO_REUSEPORT eBPF program sends each UDP query to its home shard, when "
		  "the kernel and privileges allow; off: queries are handed to their home shard" },
	{ "batch-us", "N", K_UINT, R_LIVE, 0, FIELD(batch_us), .min = 0, .max = 1000, .def = "200",
	  .help = "under load, let completions gather up to N us before waking; 0 = wake for each" },
	{ "drain-timeout", "DUR", K_DURATION, R_LIVE, 0, FIELD(drain_ms), .min = 1, .def = "5s",
	  .help = "on SIGTERM, answer what is in flight for at most this long, then exit" },
	{ "log-level", "LEVEL", K_ENUM, R_LIVE, 0, FIELD(log_level), .choices = log_levels,
	  .def = "info", .help = "debug, info, warn or error" },
	{ "help", NULL, K_HELP, R_ARGV, 0, NOFIELD, .help = "this text" },
	{ "version", NULL, K_VERSION, R_ARGV, 0, NOFIELD, .help = "print the version" },
};

#define NOPTS DP_ARRAY_LEN(opts)
_Static_assert(DP_ARRAY_LEN(opts) <= 64, "dp_config_t.list_fresh has a bit per option");

/* ------------------------------------------------------- value parsers */

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

/* udp://IP[:PORT][,0x20] or tcp://IP[:PORT], port 53 by default: plain
 * DNS. Returns 1 when s is one (parsed into u, or DP_E_CONFIG), 0 when
 * not. */
static int parse_plain_upstream(const char *s, dp_upstream_cfg_t *u)
{
	if (strncmp(s, "udp://", 6) == 0)
		u->transport = DP_UP_UDP;
	else if (strncmp(s, "tcp://", 6) == 0)
		u->transport = DP_UP_TCP;
	else
		return 0;
	char addr[128];
	size_t al = strcspn(s + 6, ",");
	if (al >= sizeof(addr) || strlen(s) >= sizeof(u->text))
		return DP_E_CONFIG;
	memcpy(addr, s + 6, al);
	addr[al] = 0;
	if (dp_config_parse_addr(addr, 53, &u->addr) < 0)
		return DP_E_CONFIG;
	if (s[6 + al]) {
		if (u->transport != DP_UP_UDP || strcmp(s + 6 + al, ",0x20") != 0)
			return DP_E_CONFIG;
		u->case_random = true;
	}
	snprintf(u->text, sizeof(u->text), "%s", s);
	return 1;
}

/* An upstream: plain (above), or DoT:
 * IP[:PORT][#NAME][,pin-sha256=BASE64]...[,no-ca] */
static int parse_upstream(const char *s, dp_upstream_cfg_t *u)
{
	memset(u, 0, sizeof(*u));
	int plain = parse_plain_upstream(s, u);
	if (plain != 0)
		return plain < 0 ? plain : 0;
	char spec[512];
	if (strlen(s) >= sizeof(spec))
		return DP_E_CONFIG;
	snprintf(spec, sizeof(spec), "%s", s);
	char *params = strchr(spec, ',');
	if (params)
		*params++ = 0;
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
	while (params && *params) {
		char *next = strchr(params, ',');
		if (next)
			*next++ = 0;
		if (strncmp(params, "pin-sha256=", 11) == 0) {
			const char *b64 = params + 11;
			uint8_t out[64];
			if (u->npins >= 4 || b64_decode(b64, out, sizeof(out)) != 32)
				return DP_E_CONFIG;
			memcpy(u->pins[u->npins++], out, 32);
		} else if (strcmp(params, "no-ca") == 0) {
			u->no_ca = true;
		} else {
			return DP_E_CONFIG;
		}
		params = next;
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

/* ------------------------------------------------- setting one value */

/* Store v into a scalar field of 1, 2 or 4 octets (bool, uint16_t,
 * int / int32_t / uint32_t); a row without a field stores nothing. */
static void store(void *field, size_t size, long v)
{
	if (size == 1) {
		uint8_t x = (uint8_t)v;
		memcpy(field, &x, 1);
	} else if (size == 2) {
		uint16_t x = (uint16_t)v;
		memcpy(field, &x, 2);
	} else if (size == 4) {
		uint32_t x = (uint32_t)v;
		memcpy(field, &x, 4);
	}
}

static int choose(const opt_choice_t *ch, const char *arg, long *v)
{
	for (; ch && ch->name; ch++)
		if (strcmp(ch->name, arg) == 0) {
			*v = ch->value;
			return 0;
		}
	return DP_E_CONFIG;
}

/* An encrypted listener: the next of list (n of them, texts text),
 * port def unless given. */
static int add_listen_enc(dp_sockaddr_t *list, char (*text)[64], int *n, uint16_t def,
			  const char *arg)
{
	if (*n >= DP_MAX_LISTEN)
		return DP_E_FULL;
	if (dp_config_parse_addr(arg, def, &list[*n]) < 0)
		return DP_E_CONFIG;
	snprintf(text[*n], sizeof(text[0]), "%s", arg);
	(*n)++;
	return 0;
}

static int add_listen(dp_config_t *c, const char *arg)
{
	if (c->nlisten >= DP_MAX_LISTEN)
		return DP_E_FULL;
	if (dp_config_parse_addr(arg, 0, &c->listen[c->nlisten]) < 0)
		return DP_E_CONFIG;
	snprintf(c->listen_text[c->nlisten], sizeof(c->listen_text[0]), "%s", arg);
	c->nlisten++;
	return 0;
}

/* The port of a listen address (network order), 0 when the kernel picks. */
static uint16_t port_of(const dp_sockaddr_t *a)
{
	return ((const struct sockaddr_in *)&a->ss)->sin_port;
}

static const char *enc_flag(const dp_config_t *c, int i)
{
	return dp_config_enc_https(c, i) ? "--listen-https" : "--listen-tls";
}

/* An encrypted listener on a plain listener's TCP address, or on another
 * encrypted one's, would share its port (SO_REUSEPORT, one process): the
 * kernel would hand either kind of client to either. Also: at most
 * DP_MAX_LISTEN of them, and their certificate. Returns 0, or DP_E_CONFIG
 * with err. */
static int check_tls_listen(const dp_config_t *c, char *err, size_t errlen)
{
	int n = dp_config_nenc(c);
	if (n > DP_MAX_LISTEN) {
		snprintf(err, errlen, "too many --listen-tls and --listen-https (at most %d together)",
			 DP_MAX_LISTEN);
		return DP_E_CONFIG;
	}
	if (n && (!c->cert_file[0] || !c->key_file[0])) {
		snprintf(err, errlen, "%s needs --cert and --key", enc_flag(c, 0));
		return DP_E_CONFIG;
	}
	for (int i = 0; i < n; i++)
		for (int j = 0; j < c->nlisten + i; j++) {
			const char *ta, *tb;
			const dp_sockaddr_t *a = dp_config_enc(c, i, &ta);
			const dp_sockaddr_t *b = j < c->nlisten ? &c->listen[j]
							       : dp_config_enc(c, j - c->nlisten, &tb);
			if (port_of(a) == 0 || a->len != b->len || memcmp(&a->ss, &b->ss, a->len) != 0)
				continue;
			snprintf(err, errlen, "%s %s: the same address as %s %s", enc_flag(c, i), ta,
				 j < c->nlisten ? "--listen" : enc_flag(c, j - c->nlisten),
				 j < c->nlisten ? c->listen_text[j] : tb);
			return DP_E_CONFIG;
		}
	if (c->listen_https_path[0] != '/' || strpbrk(c->listen_https_path, "?# ")) {
		snprintf(err, errlen, "--listen-https-path %s: expected a path starting with /, "
			 "without ?, # or spaces", c->listen_https_path);
		return DP_E_CONFIG;
	}
	return 0;
}

/* ---- forwarding zones ---- */

/* "cluster.local", "cluster.local." or "." into wire form, lower case.
 * Returns 0 or DP_E_CONFIG. */
static int parse_zone(const char *s, dp_zone_cfg_t *z)
{
	size_t o = 0;
	for (const char *p = strcmp(s, ".") == 0 ? "" : s; *p;) {
		size_t l = strcspn(p, ".");
		if (l == 0 || l > 63 || o + 1 + l + 1 > sizeof(z->wire))
			return DP_E_CONFIG; /* empty label, or too long */
		if (p[0] == '-' || p[l - 1] == '-')
			return DP_E_CONFIG; /* no label starts or ends with '-' (RFC 1123 2.1) */
		z->wire[o++] = (uint8_t)l;
		for (size_t i = 0; i < l; i++) {
			unsigned char ch = (unsigned char)p[i];
			if (!isalnum(ch) && ch != '-' && ch != '_')
				return DP_E_CONFIG;
			z->wire[o++] = (uint8_t)tolower(ch);
		}
		p += l;
		if (*p == '.')
			p++; /* a separator, or the final dot */
	}
	z->wire[o++] = 0;
	z->wire_len = (uint16_t)o;
	dp_dns_name_str(z->wire, z->wire_len, 0, z->text, sizeof(z->text));
	return 0;
}

/* Recount which upstreams serve which zone (after upstream[] changed). */
static void zone_masks(dp_config_t *c)
{
	for (int z = 0; z < c->nzones; z++) {
		c->zone[z].upstreams = 0;
		c->zone[z].nup = 0;
	}
	for (int u = 0; u < c->nupstream; u++) {
		dp_zone_cfg_t *z = &c->zone[c->upstream[u].zone];
		z->upstreams |= 1u << u;
		z->nup++;
	}
}

/* Zone z's upstreams from an earlier layer go (the others move down). */
static void zone_drop_upstreams(dp_config_t *c, int z)
{
	int n = 0;
	for (int u = 0; u < c->nupstream; u++)
		if (c->upstream[u].zone != z)
			c->upstream[n++] = c->upstream[u];
	memset(&c->upstream[n], 0, (size_t)(c->nupstream - n) * sizeof(c->upstream[0]));
	c->nupstream = n;
}

/* The index of zone nz in c, added when new. Returns it or DP_E_FULL. */
static int zone_index(dp_config_t *c, const dp_zone_cfg_t *nz)
{
	for (int z = 0; z < c->nzones; z++)
		if (c->zone[z].wire_len == nz->wire_len &&
		    memcmp(c->zone[z].wire, nz->wire, nz->wire_len) == 0)
			return z;
	if (c->nzones >= DP_MAX_ZONES)
		return DP_E_FULL;
	c->zone[c->nzones] = *nz;
	return c->nzones++;
}

/* Upstream spec up serves zone name: the first in a layer replaces what
 * an earlier layer gave the zone. Returns 0, DP_E_CONFIG or DP_E_FULL. */
static int add_route(dp_config_t *c, const char *zone, const char *up)
{
	dp_zone_cfg_t nz;
	dp_upstream_cfg_t u;
	memset(&nz, 0, sizeof(nz)); /* equal settings are equal bytes (reload compares) */
	if (parse_zone(zone, &nz) < 0 || parse_upstream(up, &u) < 0)
		return DP_E_CONFIG;
	int z = zone_index(c, &nz);
	if (z < 0)
		return z;
	if (!(c->zone_fresh & 1u << z)) {
		zone_drop_upstreams(c, z);
		c->zone_fresh |= 1u << z;
	}
	if (c->nupstream >= DP_MAX_UPSTREAMS)
		return DP_E_FULL;
	u.zone = (uint8_t)z;
	c->upstream[c->nupstream++] = u;
	zone_masks(c);
	return 0;
}

/* ZONE=UPSTREAM, or a file's ZONE UPSTREAM (an upstream's own options may
 * hold a '=': a space, when there is one, is the separator). */
static int add_forward(dp_config_t *c, const char *arg)
{
	char zone[DP_DNS_MAX_NAME + 2];
	size_t zl = strcspn(arg, " \t");
	if (arg[zl] == 0)
		zl = strcspn(arg, "=");
	if (arg[zl] == 0 || zl == 0 || zl >= sizeof(zone))
		return DP_E_CONFIG;
	memcpy(zone, arg, zl);
	zone[zl] = 0;
	const char *up = arg + zl + 1;
	while (*up == ' ' || *up == '\t')
		up++;
	return add_route(c, zone, up);
}

/* Read arg as o's kind into c. Returns 0, DP_E_CONFIG (a bad value) or
 * DP_E_FULL (a list at its capacity). */
static int set_value(dp_config_t *c, const opt_t *o, const char *arg)
{
	void *f = (char *)c + o->off;
	unsigned long n;
	uint32_t ms;
	long v;
	switch (o->kind) {
	case K_FLAG:
		store(f, o->size, o->min);
		return 0;
	case K_UINT:
		if (parse_uint(arg, (unsigned long)o->min, (unsigned long)o->max, &n) < 0)
			return DP_E_CONFIG;
		store(f, o->size, (long)n);
		return 0;
	case K_DURATION:
		if (choose(o->choices, arg, &v) < 0) {
			if (parse_duration_ms(arg, &ms) < 0 || ms < o->min)
				return DP_E_CONFIG;
			v = ms;
		}
		store(f, o->size, v);
		return 0;
	case K_ENUM:
		if (choose(o->choices, arg, &v) < 0)
			return DP_E_CONFIG;
		store(f, o->size, v);
		return 0;
	case K_STRING:
		if (strlen(arg) < (size_t)o->min || strlen(arg) >= o->size)
			return DP_E_CONFIG;
		memset(f, 0, o->size); /* equal settings are equal bytes (reload compares them) */
		memcpy(f, arg, strlen(arg));
		return 0;
	case K_LISTEN:
		return add_listen(c, arg);
	case K_LISTEN_TLS:
		return add_listen_enc(c->listen_tls, c->listen_tls_text, &c->nlisten_tls, 853, arg);
	case K_LISTEN_HTTPS:
		return add_listen_enc(c->listen_https, c->listen_https_text, &c->nlisten_https, 443,
				      arg);
	case K_UPSTREAM:
		return add_route(c, ".", arg);
	case K_FORWARD:
		return add_forward(c, arg);
	case K_CIDR:
		return dp_acl_add(f, arg) < 0 ? DP_E_CONFIG : 0;
	case K_CIDR_LIST:
		return parse_cidr_list(f, arg);
	case K_METRICS:
		if (dp_config_parse_addr(arg, 0, &c->metrics) < 0)
			return DP_E_CONFIG;
		c->metrics_on = true;
		return 0;
	default:
		return DP_E_CONFIG; /* help and version are the caller's */
	}
}

/* "a, b or c" of a choice list, after prefix. */
static void list_choices(const opt_choice_t *ch, const char *prefix, char *buf, size_t cap)
{
	size_t n = (size_t)snprintf(buf, cap, "%s", prefix);
	for (const opt_choice_t *p = ch; p->name && n < cap; p++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%s", p == ch ? "" : p[1].name ? ", " : " or ",
				      p->name);
}

/* What a valid value of o looks like, for "--name VALUE: expected ...". */
static void expectation(const opt_t *o, char *buf, size_t cap)
{
	if (o->expect) {
		snprintf(buf, cap, "%s", o->expect);
		return;
	}
	switch (o->kind) {
	case K_UINT:
		snprintf(buf, cap, "%s%s%ld..%ld", o->unit ? o->unit : "", o->unit ? ", " : "", o->min,
			 o->max);
		break;
	case K_DURATION:
		if (o->choices)
			list_choices(o->choices, "a duration, ", buf, cap);
		else if (o->min >= 1000)
			snprintf(buf, cap, "a duration of %gs or more", (double)o->min / 1000);
		else
			snprintf(buf, cap, "a duration such as 2s or 500ms");
		break;
	case K_ENUM:
		list_choices(o->choices, "", buf, cap);
		break;
	case K_STRING:
		snprintf(buf, cap, "at most %zu characters", o->size - 1);
		break;
	case K_LISTEN:
	case K_METRICS:
		snprintf(buf, cap, "IP:PORT or [IPv6]:PORT");
		break;
	case K_LISTEN_TLS:
	case K_LISTEN_HTTPS:
		snprintf(buf, cap, "IP[:PORT] or [IPv6][:PORT]");
		break;
	case K_UPSTREAM:
		snprintf(buf, cap, "IP[:PORT]#NAME[,pin-sha256=BASE64]...[,no-ca] (no-ca needs a "
				   "pin), udp://IP[:PORT][,0x20] or tcp://IP[:PORT] (at most %d "
				   "upstreams)",
			 DP_MAX_UPSTREAMS);
		break;
	case K_FORWARD:
		snprintf(buf, cap, "ZONE=UPSTREAM, ZONE a domain name or '.', UPSTREAM as for "
				   "--upstream (at most %d upstreams, %d zones)",
			 DP_MAX_UPSTREAMS, DP_MAX_ZONES);
		break;
	case K_CIDR:
		snprintf(buf, cap, "ADDR/LEN with no host bits set (at most %d)", DP_ACL_MAX);
		break;
	default:
		snprintf(buf, cap, "ADDR[/LEN][,ADDR[/LEN]...] with no host bits set (at most %d)",
			 DP_ACL_MAX);
		break;
	}
}

/* Apply one setting of the current layer; errors name it as its flag. A
 * list's first value in a layer replaces the list (its bytes cleared, so
 * that equal lists are equal bytes). */
static int apply(dp_config_t *c, const opt_t *o, const char *arg, char *err, size_t errlen)
{
	uint64_t bit = 1ull << (o - opts);
	if ((o->flags & F_LIST) && !(c->list_fresh & bit)) {
		memset((char *)c + o->off, 0, o->size);
		c->list_fresh |= bit;
	}
	int rc = set_value(c, o, arg);
	if (rc == DP_E_FULL) {
		snprintf(err, errlen, "too many --%s (at most %ld)", o->name, o->max);
	} else if (rc < 0) {
		char want[160];
		size_t len = strlen(arg);
		expectation(o, want, sizeof(want));
		snprintf(err, errlen, "--%s %.*s%s: expected %s", o->name, len > 200 ? 200 : (int)len,
			 arg, len > 200 ? "..." : "", want);
	}
	return rc < 0 ? DP_E_CONFIG : 0;
}

static const opt_t *find_opt(const char *name)
{
	for (size_t i = 0; i < NOPTS; i++)
		if (strcmp(opts[i].name, name) == 0)
			return &opts[i];
	return NULL;
}

/* --------------------------------------------------------- defaults */

void dp_config_defaults(dp_config_t *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < NOPTS; i++) {
		if (!opts[i].def)
			continue;
		char vals[256], *save = NULL;
		snprintf(vals, sizeof(vals), "%s", opts[i].def);
		for (char *v = strtok_r(vals, " ", &save); v; v = strtok_r(NULL, " ", &save))
			apply(c, &opts[i], v, NULL, 0); /* ours: unit_config checks they parse */
	}
	c->list_fresh = 0; /* the next layer replaces the default lists */
	c->zone_fresh = 0;
}

/* ------------------------------------------------------------ --help */

#define HELP_COL 28 /* where the help texts start */
#define HELP_WIDTH 79

/* Print words from column col, wrapping at HELP_WIDTH to HELP_COL. */
static void wrap(const char *text, int col)
{
	for (const char *p = text; *p;) {
		int w = (int)strcspn(p, " ");
		if (p != text && col + 1 + w > HELP_WIDTH) {
			printf("\n%*s", HELP_COL, "");
			col = HELP_COL;
		} else if (p != text) {
			putchar(' ');
			col++;
		}
		printf("%.*s", w, p);
		col += w;
		p += w;
		while (*p == ' ')
			p++;
	}
	putchar('\n');
}

/* The default as --help shows it (a list's values joined by ", "); false
 * when the row states none. */
static bool default_text(const opt_t *o, char *buf, size_t cap)
{
	const char *d = o->shown ? o->shown : o->def;
	size_t n = 0;
	if (!d)
		return false;
	for (; *d && n + 2 < cap; d++) {
		if (*d == ' ' && !o->shown)
			buf[n++] = ',';
		buf[n++] = *d;
	}
	buf[n] = 0;
	return true;
}

static void usage(void)
{
	printf("Usage: dotproxy [options]\n"
	       "A DNS forwarder: plain DNS over UDP and TCP in, DNS-over-TLS (RFC 7858) out\n"
	       "(or, by zone, plain DNS to servers inside a trusted network).\n\n");
	for (size_t i = 0; i < NOPTS; i++) {
		const opt_t *o = &opts[i];
		char left[64], text[1024], def[256];
		int n = snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "",
				 o->arg ? o->arg : "");
		size_t t = (size_t)snprintf(text, sizeof(text), "%s", o->help);
		if (default_text(o, def, sizeof(def)))
			t += (size_t)snprintf(text + t, sizeof(text) - t, " (default %s)", def);
		if (o->rule == R_RESTART && t < sizeof(text))
			snprintf(text + t, sizeof(text) - t, " [restart]");
		printf("  %-*s  ", HELP_COL - 4, left);
		wrap(text, n > HELP_COL - 4 ? n + 4 : HELP_COL);
	}
	printf("\n[restart]: read at start; a SIGHUP reload keeps the running value.\n"
	       "Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads --config (and\n"
	       "re-reads --cert and --key);\n"
	       "SIGUSR1 logs the counters.\n");
}

/* ------------------------------------------------------- config file */

/* Cut a line of the file into its name and value (NULL when none), in
 * place. A comment starts at a '#' that begins a word; a '#' inside a word
 * belongs to an upstream (IP#NAME). Returns false for a line with nothing. */
static bool split_line(char *line, char **name, char **value)
{
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
		return false;
	*name = p;
	*value = NULL;
	while (*p && *p != ' ' && *p != '\t')
		p++;
	if (*p) {
		*p++ = 0;
		while (*p == ' ' || *p == '\t')
			p++;
		*value = *p ? p : NULL;
	}
	return true;
}

/* One "name value" line. A switch takes no value, or yes/true (set) or
 * no/false (left alone). */
static int file_setting(dp_config_t *c, const char *name, const char *value, char *err,
			size_t errlen)
{
	const opt_t *o = find_opt(name);
	if (!o || o->rule == R_ARGV) {
		snprintf(err, errlen, "unknown setting '%s'", name);
		return DP_E_CONFIG;
	}
	if (o->arg && !value) {
		snprintf(err, errlen, "%s needs a value", name);
		return DP_E_CONFIG;
	}
	if (!o->arg && value) {
		if (strcmp(value, "no") == 0 || strcmp(value, "false") == 0)
			return 0;
		if (strcmp(value, "yes") != 0 && strcmp(value, "true") != 0) {
			snprintf(err, errlen, "%s takes no value (or yes/no)", name);
			return DP_E_CONFIG;
		}
	}
	return apply(c, o, value ? value : "", err, errlen);
}

int dp_config_parse_file(dp_config_t *c, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return DP_E_CONFIG;
	}
	char line[1024], msg[400], *name, *value;
	int lineno = 0, rc = 0;
	c->list_fresh = 0; /* a layer over the defaults */
	c->zone_fresh = 0;
	while (rc == 0 && fgets(line, sizeof(line), f)) {
		lineno++;
		size_t len = strlen(line);
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			snprintf(msg, sizeof(msg), "line too long");
			rc = DP_E_CONFIG;
		} else if (split_line(line, &name, &value)) {
			rc = file_setting(c, name, value, msg, sizeof(msg));
		}
		if (rc < 0)
			snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
	}
	fclose(f);
	return rc;
}

/* ------------------------------------------------------- command line */

#define OPT_BASE 256 /* getopt's code of opts[i] is OPT_BASE + i */

/* The --config file, if argv names one, is read before the command line
 * (which overrides it). */
static int read_config_first(dp_config_t *c, int argc, char **argv, char *err, size_t errlen)
{
	c->config_file[0] = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			snprintf(c->config_file, sizeof(c->config_file), "%s", argv[i + 1]);
		else if (strncmp(argv[i], "--config=", 9) == 0)
			snprintf(c->config_file, sizeof(c->config_file), "%s", argv[i] + 9);
	}
	return c->config_file[0] ? dp_config_parse_file(c, c->config_file, err, errlen) : 0;
}

/* What the layers together must give: the root zone first, and over
 * TLS unless plain DNS is allowed there. */
static int check_routes(const dp_config_t *c, char *err, size_t errlen)
{
	if (c->nzones == 0 || c->zone[0].wire_len != 1 || c->zone[0].nup == 0) {
		snprintf(err, errlen, "no upstream for the default route '.' (--upstream)");
		return DP_E_CONFIG;
	}
	for (int u = 0; u < c->nupstream; u++) {
		const dp_upstream_cfg_t *up = &c->upstream[u];
		if (up->zone == 0 && up->transport != DP_UP_DOT && !c->allow_plain_default) {
			snprintf(err, errlen,
				 "--forward .=%s: plain DNS for the default route needs "
				 "--allow-plain-default",
				 up->text);
			return DP_E_CONFIG;
		}
	}
	return 0;
}

int dp_config_parse_args(dp_config_t *c, int argc, char **argv, char *err, size_t errlen)
{
	struct option lo[NOPTS + 1];
	for (size_t i = 0; i < NOPTS; i++)
		lo[i] = (struct option){ opts[i].name, opts[i].arg ? required_argument : no_argument,
					 NULL, OPT_BASE + (int)i };
	lo[NOPTS] = (struct option){ NULL, 0, NULL, 0 };
	if (read_config_first(c, argc, argv, err, errlen) < 0)
		return DP_E_CONFIG;
	c->list_fresh = 0; /* the command line is the top layer */
	c->zone_fresh = 0;
	opterr = 0;
	optind = 0; /* 0, not 1: glibc and musl then reset all their scan state */
	int code;
	bool version = false;
	while ((code = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
		if (code == ':' || code == '?') {
			snprintf(err, errlen, code == ':' ? "%s: missing value (see --help)"
							  : "unknown option %s (see --help)",
				 argv[optind - 1]);
			return DP_E_CONFIG;
		}
		const opt_t *o = code == 'h' ? find_opt("help") : &opts[code - OPT_BASE];
		if (o->kind == K_HELP) {
			usage();
			return 1;
		}
		if (o->kind == K_VERSION) {
			version = true; /* printed once the settings checked out */
			continue;
		}
		if (apply(c, o, optarg ? optarg : "", err, errlen) < 0)
			return DP_E_CONFIG;
	}
	if (check_routes(c, err, errlen) < 0)
		return DP_E_CONFIG;
	if (c->cache_min_ttl > c->cache_max_ttl) {
		snprintf(err, errlen, "--cache-min-ttl %u is above --cache-max-ttl %u", c->cache_min_ttl,
			 c->cache_max_ttl);
		return DP_E_CONFIG;
	}
	if (check_tls_listen(c, err, errlen) < 0)
		return DP_E_CONFIG;
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument %s (see --help)", argv[optind]);
		return DP_E_CONFIG;
	}
	if (version)
		printf("dotproxy %s\n", DP_VERSION);
	return version ? 1 : 0;
}

/* -------------------------------------------------------- reload rule */

/* True when an earlier row owns the same bytes (no-cache and cache-size):
 * a change is reported once, under the first. */
static bool owned_earlier(const opt_t *o)
{
	for (const opt_t *p = opts; p < o; p++)
		if (p->off == o->off && p->size == o->size)
			return true;
	return false;
}

static bool all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int dp_config_keep_restart(dp_config_t *nc, const dp_config_t *old, char *names, size_t cap)
{
	int changed = 0;
	size_t len = 0;
	if (cap)
		names[0] = 0;
	for (const opt_t *o = opts; o < opts + NOPTS; o++) {
		if (o->rule != R_RESTART || o->size == 0 || owned_earlier(o))
			continue;
		char *now = (char *)nc + o->off;
		const char *was = (const char *)old + o->off;
		bool unset = (o->flags & F_AUTO0) && all_zero(now, o->size);
		if (!unset && memcmp(now, was, o->size) != 0) {
			if (len < cap)
				len += (size_t)snprintf(names + len, cap - len, "%s%s", changed ? "," : "",
							o->name);
			changed++;
		}
		memcpy(now, was, o->size);
	}
	return changed;
}
