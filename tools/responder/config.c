/* config.c - dot-responder's command line (see config.h). Owns nothing:
 * the settings live in the caller's resp_config_t.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "config.h"

static const resp_config_t defaults = {
	.threads = 1,
	.max_conns = DEFAULT_MAX_CONNS,
	.tls_min = TLS1_2_VERSION,
	.tls_max = TLS1_3_VERSION,
	.behave = { .a = { 192, 0, 2, 1 },
		    .aaaa = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 },
		    .ttl = 300,
		    .udp_size = ANSWER_UDP_SIZE,
		    .delay_pct = 100,
		    .reset_after = -1 },
};

/* ---- the flags ---------------------------------------------------------- */

/* What a flag's argument is and how it is stored. */
enum {
	K_LISTEN, /* IP:PORT, appended to listen[] (TLS) */
	K_LISTEN_TCP, /* IP:PORT, appended to listen[] (plain TCP) */
	K_STR, /* a path: the argv string itself */
	K_UINT, /* decimal in [min, max], into an unsigned field of `size` bytes */
	K_FLAG, /* no argument: the bool becomes true */
	K_IP4, /* dotted quad, 4 bytes */
	K_IP6, /* IPv6 text, 16 bytes */
	K_TLS, /* "1.2" or "1.3", a uint16_t TLS version */
	K_HELP,
};

typedef struct opt_def {
	const char *name;
	uint8_t kind;
	uint8_t size; /* K_UINT: sizeof the field: 1, 4 or 8 */
	unsigned long min, max; /* K_UINT */
	size_t off; /* offset of the field in resp_config_t */
} opt_def_t;

#define FIELD(f) .size = sizeof(((resp_config_t *)0)->f), .off = offsetof(resp_config_t, f)
#define OPT_UINT(n, f, lo, hi) { .name = n, .kind = K_UINT, .min = lo, .max = hi, FIELD(f) }
#define OPT_OTHER(n, k, f) { .name = n, .kind = k, FIELD(f) }

static const opt_def_t defs[] = {
	{ .name = "listen", .kind = K_LISTEN },
	{ .name = "listen-tcp", .kind = K_LISTEN_TCP },
	OPT_OTHER("cert", K_STR, cert),
	OPT_OTHER("key", K_STR, key),
	OPT_UINT("threads", threads, 1, 256),
	OPT_UINT("max-conns", max_conns, 1, 1u << 20),
	OPT_OTHER("answer-ip", K_IP4, behave.a),
	OPT_OTHER("answer-ip6", K_IP6, behave.aaaa),
	OPT_UINT("ttl", behave.ttl, 0, INT32_MAX),
	OPT_OTHER("name-ttl", K_FLAG, behave.name_ttl),
	OPT_OTHER("tls-min", K_TLS, tls_min),
	OPT_OTHER("tls-max", K_TLS, tls_max),
	OPT_UINT("delay-ms", behave.delay_ms, 0, 600000),
	OPT_UINT("delay-pct", behave.delay_pct, 0, 100),
	OPT_UINT("drop-pct", behave.drop_pct, 0, 100),
	OPT_OTHER("reorder", K_FLAG, behave.reorder),
	OPT_UINT("wrong-id-pct", behave.wrong_id_pct, 0, 100),
	OPT_UINT("wrong-question-pct", behave.wrong_question_pct, 0, 100),
	OPT_UINT("close-after", behave.close_after, 1, UINT32_MAX),
	OPT_UINT("idle-close-ms", behave.idle_close_ms, 1, 3600000),
	OPT_UINT("reset-mid-record", behave.reset_after, 0, INT32_MAX), /* int32_t, max fits */
	OPT_OTHER("refuse-handshake", K_FLAG, behave.refuse_handshake),
	OPT_UINT("handshake-delay-ms", behave.handshake_delay_ms, 0, 600000),
	OPT_UINT("seed", seed, 0, ULONG_MAX),
	{ .name = "help", .kind = K_HELP },
};

#define NDEFS DP_ARRAY_LEN(defs)
#define OPT_VAL_BASE 256 /* getopt value of defs[i]: OPT_VAL_BASE + i */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dot-responder --listen IP:PORT --cert FILE --key FILE [options]\n"
		"       dot-responder --listen-tcp IP:PORT [options]\n"
		"\n"
		"A synthetic DNS-over-TLS (and plain DNS-over-TCP) server: every A/AAAA\n"
		"query (class IN) gets one fixed record, other types NOERROR with no answer.\n"
		"\n"
		"  --listen IP:PORT     TCP+TLS address; [v6]:PORT for IPv6; port 0 picks a\n"
		"                       free port (printed). Repeatable; with --listen-tcp\n"
		"                       up to %d in all.\n"
		"  --listen-tcp IP:PORT plain DNS over TCP (RFC 7766 framing, pipelined), no\n"
		"                       TLS; the same answers, loop and faults (the\n"
		"                       handshake faults aside). Printed as tcp://IP:PORT;\n"
		"                       its queries also count in plain_queries.\n"
		"  --cert FILE          PEM certificate chain (leaf first); with --listen\n"
		"  --key FILE           PEM private key; with --listen\n"
		"  --threads N          shards, each with its own io_uring and SO_REUSEPORT\n"
		"                       listener (default 1)\n"
		"  --max-conns N        connections per shard (default %d); more are closed\n"
		"  --answer-ip A.B.C.D  A record data (default 192.0.2.1)\n"
		"  --answer-ip6 ADDR    AAAA record data (default 2001:db8::1)\n"
		"  --ttl N              TTL of the record (default 300)\n"
		"  --name-ttl           the first label decides: \"t<N>-...\" answers with\n"
		"                       TTL N, \"t<N>-nx...\" is NXDOMAIN (SOA TTL and\n"
		"                       MINIMUM N); other names as without it\n"
		"  --tls-min 1.2|1.3    lowest TLS version (default 1.2)\n"
		"  --tls-max 1.2|1.3    highest TLS version (default 1.3)\n"
		"\n"
		"Fault injection (all off by default; P is a percentage 0..100):\n"
		"  --delay-ms N         hold answers back N ms (others are served meanwhile)\n"
		"  --delay-pct P        only P%% of the answers are delayed (default 100)\n"
		"  --drop-pct P         never answer P%% of the queries\n"
		"  --reorder            the answers of each batch go out in reverse order\n"
		"  --wrong-id-pct P     P%% of the answers carry another ID (never the right one)\n"
		"  --wrong-question-pct P  P%% of the answers carry another name\n"
		"  --close-after N      after N answers on a connection: close_notify, close\n"
		"                       (queries not answered yet are dropped)\n"
		"  --idle-close-ms T    close_notify and close connections idle for T ms\n"
		"  --reset-mid-record K after K answers on a connection, send half of the\n"
		"                       next answer's TLS record, then reset (RST)\n"
		"  --refuse-handshake   reset every connection on its ClientHello\n"
		"  --handshake-delay-ms N  hold each ClientHello N ms before answering it\n"
		"  --seed N             seed for the percentages (default: from the clock)\n"
		"  --help               this text\n"
		"\n"
		"Prints \"listening on ...\" to stderr when ready. SIGUSR1 and exit print\n"
		"counters (connections= handshakes= queries= answers= ...) to stderr.\n"
		"SIGINT or SIGTERM stop it.\n",
		MAX_LISTEN, DEFAULT_MAX_CONNS);
}

/* ---- argument parsers ----------------------------------------------------- */

static int parse_listen(const char *arg, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon, *h = arg;
	size_t hl;
	bool v6 = arg[0] == '[';
	if (v6) {
		const char *end = strchr(arg, ']');
		if (!end || end[1] != ':')
			return -1;
		h = arg + 1;
		hl = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(arg, ':');
		if (!colon)
			return -1;
		hl = (size_t)(colon - arg);
	}
	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, h, hl);
	host[hl] = 0;
	char *e;
	unsigned long port = strtoul(colon + 1, &e, 10);
	if (!colon[1] || *e || port > 65535)
		return -1;
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return -1;
		*len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return -1;
		*len = sizeof(*a);
	}
	return 0;
}

void config_format_addr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	char h[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof(h));
		snprintf(out, cap, "[%s]:%u", h, ntohs(a->sin6_port));
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, h, sizeof(h));
		snprintf(out, cap, "%s:%u", h, ntohs(a->sin_port));
	}
}

void config_format_listener(const resp_config_t *cfg, int j, char *out, size_t cap)
{
	size_t o = 0;
	if (cfg->listen_plain[j] && cap > 6)
		o = (size_t)snprintf(out, cap, "tcp://");
	config_format_addr(&cfg->listen[j], out + o, cap - o);
}

static int parse_tls_version(const char *s, uint16_t *v)
{
	if (strcmp(s, "1.2") == 0)
		*v = TLS1_2_VERSION;
	else if (strcmp(s, "1.3") == 0)
		*v = TLS1_3_VERSION;
	else
		return -1;
	return 0;
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
	char *e;
	errno = 0;
	unsigned long v = strtoul(s, &e, 10);
	if (!*s || *e || errno || v < min || v > max || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

/* Store v (already in range) into the unsigned field of d at field. The
 * int and int32_t fields (threads, reset_after) are stored through their
 * unsigned type, which C allows and which keeps v: max fits the signed
 * type. */
static void store_uint(const opt_def_t *d, void *field, unsigned long v)
{
	switch (d->size) {
	case 1:
		*(uint8_t *)field = (uint8_t)v;
		break;
	case 4:
		*(uint32_t *)field = (uint32_t)v;
		break;
	default:
		*(uint64_t *)field = (uint64_t)v;
		break;
	}
}

/* Apply flag d with argument arg (NULL for K_FLAG). Returns 0, or -1 after
 * printing why. */
static int apply(resp_config_t *cfg, const opt_def_t *d, const char *arg)
{
	void *field = (char *)cfg + d->off;
	unsigned long v;
	int ok = 1;
	switch (d->kind) {
	case K_LISTEN:
	case K_LISTEN_TCP:
		if (cfg->nlisten == MAX_LISTEN) {
			fprintf(stderr, "dot-responder: at most %d --listen and --listen-tcp\n",
				MAX_LISTEN);
			return -1;
		}
		if (parse_listen(arg, &cfg->listen[cfg->nlisten], &cfg->listen_len[cfg->nlisten]) < 0) {
			fprintf(stderr, "dot-responder: bad --%s '%s' (IP:PORT or [IPv6]:PORT)\n",
				d->name, arg);
			return -1;
		}
		cfg->listen_plain[cfg->nlisten++] = d->kind == K_LISTEN_TCP;
		cfg->any_tls |= d->kind == K_LISTEN;
		break;
	case K_STR:
		*(const char **)field = arg;
		break;
	case K_UINT:
		ok = parse_uint(arg, d->min, d->max, &v) == 0;
		if (ok)
			store_uint(d, field, v);
		break;
	case K_FLAG:
		*(bool *)field = true;
		break;
	case K_IP4:
		ok = inet_pton(AF_INET, arg, field) == 1;
		break;
	case K_IP6:
		ok = inet_pton(AF_INET6, arg, field) == 1;
		break;
	case K_TLS:
		ok = parse_tls_version(arg, field) == 0;
		break;
	}
	if (!ok) {
		fprintf(stderr, "dot-responder: bad value '%s' for --%s\n", arg, d->name);
		return -1;
	}
	return 0;
}

/* ---- the whole command line ------------------------------------------------ */

/* What follows from the flags: which fault paths run, the seed. Checks the
 * combinations. Returns 0 or -1 after printing why. */
static int finish(resp_config_t *cfg)
{
	if (!cfg->nlisten || (cfg->any_tls && (!cfg->cert || !cfg->key))) {
		fprintf(stderr, "dot-responder: --listen with --cert and --key, or --listen-tcp, "
				"is required\n");
		usage(stderr);
		return -1;
	}
	if (cfg->tls_min > cfg->tls_max) {
		fprintf(stderr, "dot-responder: --tls-min above --tls-max\n");
		return -1;
	}
	behave_t *b = &cfg->behave;
	b->faulty = b->drop_pct || b->delay_ms || b->wrong_id_pct || b->wrong_question_pct ||
		    b->reorder || b->close_after || b->reset_after >= 0;
	cfg->timed = b->delay_ms || b->idle_close_ms || b->handshake_delay_ms;
	if (!cfg->seed)
		cfg->seed = dp_now_ms() ^ ((uint64_t)getpid() << 32);
	return 0;
}

int config_parse(resp_config_t *cfg, int argc, char **argv)
{
	static struct option lopts[NDEFS + 1]; /* from defs[], last one zero */
	for (size_t i = 0; i < NDEFS; i++) {
		bool noarg = defs[i].kind == K_FLAG || defs[i].kind == K_HELP;
		lopts[i] = (struct option){ defs[i].name, noarg ? no_argument : required_argument,
					    NULL, OPT_VAL_BASE + (int)i };
	}
	*cfg = defaults;
	int o;
	while ((o = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		const opt_def_t *d = o >= OPT_VAL_BASE ? &defs[o - OPT_VAL_BASE] : NULL;
		if (o == 'h' || (d && d->kind == K_HELP)) {
			usage(stdout);
			exit(0);
		}
		if (!d) {
			usage(stderr);
			return -1;
		}
		if (apply(cfg, d, optarg) < 0)
			return -1;
	}
	if (optind < argc) {
		fprintf(stderr, "dot-responder: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return finish(cfg);
}

void config_print_faults(const resp_config_t *cfg)
{
	const behave_t *b = &cfg->behave;
	if (!b->faulty && !cfg->timed && !b->refuse_handshake)
		return;
	fprintf(stderr,
		"faults delay-ms=%u delay-pct=%u drop-pct=%u reorder=%d wrong-id-pct=%u "
		"wrong-question-pct=%u close-after=%u idle-close-ms=%u reset-mid-record=%d "
		"refuse-handshake=%d handshake-delay-ms=%u seed=%llu\n",
		b->delay_ms, b->delay_pct, b->drop_pct, b->reorder, b->wrong_id_pct,
		b->wrong_question_pct, b->close_after, b->idle_close_ms, b->reset_after,
		b->refuse_handshake, b->handshake_delay_ms, (unsigned long long)cfg->seed);
}
