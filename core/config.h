/* config.h - dotproxy's settings (dp_config_t) and the one option table
 * (config.c) that fills them from the defaults, the --config file and the
 * command line, prints --help, and says what a reload may change. */
#ifndef DP_CONFIG_H
#define DP_CONFIG_H

#include "acl.h"
#include "dns.h"
#include "dp.h"

#include <sys/socket.h>

#define DP_MAX_LISTEN 16
#define DP_MAX_UPSTREAMS 32 /* over all zones */
#define DP_MAX_ZONES 32

enum { DP_POLICY_FASTEST = 0, DP_POLICY_RR = 1 };
/* How an upstream is spoken to: DNS-over-TLS, or plain DNS (for servers
 * inside a trusted network) over TCP, or over UDP with TCP when truncated. */
enum { DP_UP_DOT = 0, DP_UP_TCP = 1, DP_UP_UDP = 2 };
/* --steering: auto loads the SO_REUSEPORT program that sends each UDP query
 * to its home shard (steer.h) where the kernel allows it; off never tries. */
enum { DP_STEER_AUTO = 0, DP_STEER_OFF = 1 };

typedef struct dp_sockaddr {
	struct sockaddr_storage ss;
	socklen_t len;
} dp_sockaddr_t;

typedef struct dp_upstream_cfg {
	dp_sockaddr_t addr;
	char name[256]; /* TLS name (SNI and certificate check); "" = check the IP */
	char text[512]; /* as given, for logs */
	uint8_t pins[4][32]; /* SHA-256 of a SubjectPublicKeyInfo (RFC 7469) */
	int npins;
	bool no_ca; /* trust the pins alone, skip CA and name verification */
	uint8_t transport; /* DP_UP_* */
	bool case_random; /* udp:// ...,0x20: random letter case in the question */
	uint8_t zone; /* index in zone[]: the zone it serves */
} dp_upstream_cfg_t;

/* A forwarding zone: queries at or below it go to its upstreams (the
 * longest zone that is a suffix of the name wins; zone 0 is the root). */
typedef struct dp_zone_cfg {
	uint8_t wire[DP_DNS_MAX_NAME]; /* the name in wire form, lower case */
	uint16_t wire_len;
	char text[DP_DNS_MAX_NAME + 2]; /* "cluster.local.", "." */
	uint32_t upstreams; /* bit u: upstream[u] serves it */
	uint8_t nup; /* how many */
} dp_zone_cfg_t;

typedef struct dp_config {
	dp_sockaddr_t listen[DP_MAX_LISTEN];
	char listen_text[DP_MAX_LISTEN][64];
	int nlisten;
	/* DNS-over-TLS listeners (RFC 7858): their certificate chain and key
	 * (PEM), read at start and again on every reload */
	dp_sockaddr_t listen_tls[DP_MAX_LISTEN];
	char listen_tls_text[DP_MAX_LISTEN][64];
	int nlisten_tls;
	/* DNS-over-HTTPS listeners (RFC 8484), the same certificate; at most
	 * DP_MAX_LISTEN TLS and HTTPS listeners together (dp_config_enc) */
	dp_sockaddr_t listen_https[DP_MAX_LISTEN];
	char listen_https_text[DP_MAX_LISTEN][64];
	int nlisten_https;
	char listen_https_path[128]; /* DP_DOH_PATH_MAX */
	char cert_file[4096];
	char key_file[4096];
	int listen_tls_min_version; /* TLS1_2_VERSION or TLS1_3_VERSION, for clients */
	uint32_t listen_tls_handshake_ms; /* a client's handshake, from its accept */
	dp_upstream_cfg_t upstream[DP_MAX_UPSTREAMS];
	int nupstream;
	dp_zone_cfg_t zone[DP_MAX_ZONES]; /* zone[0] is the root, ".": the default route */
	int nzones;
	bool allow_plain_default; /* plain DNS upstreams may serve the root zone */
	int threads; /* shards; 0 = one per online CPU */
	uint32_t timeout_ms; /* per query, client's view */
	uint32_t handshake_timeout_ms;
	uint32_t tcp_idle_ms; /* client TCP idle timeout */
	uint32_t max_tcp_clients; /* whole process */
	uint32_t max_inflight; /* per shard */
	uint32_t max_inflight_per_conn; /* per client TCP connection; over it, not read */
	uint32_t upstream_conns; /* per shard per upstream */
	uint16_t max_udp_size;
	char ca_file[4096];
	int log_level;
	dp_acl_t acl; /* clients allowed; the first --allow replaces the defaults */
	uint32_t rate_limit; /* queries/s per client address and shard; 0 = off */
	uint32_t cache_mb; /* whole process, split over shards; 0 = no cache */
	uint32_t cache_min_ttl, cache_max_ttl, stale_ttl; /* seconds */
	uint32_t servfail_ttl; /* seconds a SERVFAIL from every upstream is cached */
	bool forward_ecs; /* forward the client's Client Subnet, key the cache on it */
	int upstream_policy; /* DP_POLICY_* */
	int32_t hedge_ms; /* -1: adaptive (about the p95), 0: off */
	uint32_t upstream_idle_ms; /* assumed upstream idle timeout without RFC 7828 */
	int tls_min_version; /* TLS1_2_VERSION or TLS1_3_VERSION (0x0303/0x0304) */
	char config_file[4096];
	dp_sockaddr_t metrics;
	bool metrics_on;
	dp_acl_t metrics_acl; /* who may connect to it; default the loopback address */
	char user[64];
	bool allow_root;
	uint32_t drain_ms;
	bool no_pin; /* let the scheduler place shards (default: shard i on the i-th CPU) */
	int steering; /* DP_STEER_*; read at start only */
	uint32_t batch_us; /* completion coalescing under load, 0 = off */
	/* parsing: the repeatable options (a bit per row of config.c's table)
	 * that the current layer (defaults, file, command line) has started
	 * afresh; their first use in a layer replaces an earlier layer's list */
	uint64_t list_fresh;
	uint32_t zone_fresh; /* the same per zone: bit z, its upstreams replaced */
} dp_config_t;

/* Fill c with the defaults (each option's default text, read by its own
 * parser: what --help prints is what is used). */
void dp_config_defaults(dp_config_t *c);

/* Parse argv into c (which holds defaults): the --config file first, if
 * any, then the command line over it. Returns 0 to run, 1 when --help or
 * --version printed and the program should exit 0 (--version only once
 * every setting checked out, so that `--config FILE --version` checks a
 * file), DP_E_CONFIG with a one-line message in err otherwise. */
int dp_config_parse_args(dp_config_t *c, int argc, char **argv, char *err, size_t errlen);

/* Read settings from a config file into c (a layer under the command
 * line). Returns 0 or DP_E_CONFIG with "FILE:LINE: reason" in err. */
int dp_config_parse_file(dp_config_t *c, const char *path, char *err, size_t errlen);

/* Parse "IP:PORT", "[IPv6]:PORT", or a bare IP with default_port (0 = port
 * required). Returns 0 or DP_E_CONFIG. */
int dp_config_parse_addr(const char *s, uint16_t default_port, dp_sockaddr_t *out);

/* Reload: the settings a running process cannot change (threads, sockets,
 * table sizes, privileges) are copied from old into nc. names gets the
 * comma-separated names of those whose value in nc differed (a threads of
 * 0, "one per CPU", is no change). Returns how many differed. */
int dp_config_keep_restart(dp_config_t *nc, const dp_config_t *old, char *names, size_t cap);

/* "IP:PORT" text of an address, for logs. */
void dp_sockaddr_str(const dp_sockaddr_t *a, char *out, size_t cap);

/* The encrypted listeners, numbered as the engine opens them: the
 * --listen-tls ones, then the --listen-https ones. */
static inline int dp_config_nenc(const dp_config_t *c)
{
	return c->nlisten_tls + c->nlisten_https;
}

static inline bool dp_config_enc_https(const dp_config_t *c, int i)
{
	return i >= c->nlisten_tls;
}

/* Encrypted listener i's address; *text its spelling. */
static inline const dp_sockaddr_t *dp_config_enc(const dp_config_t *c, int i, const char **text)
{
	bool h = dp_config_enc_https(c, i);
	int j = h ? i - c->nlisten_tls : i;
	*text = h ? c->listen_https_text[j] : c->listen_tls_text[j];
	return h ? &c->listen_https[j] : &c->listen_tls[j];
}

#endif
