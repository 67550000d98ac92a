/* config.h - dot-responder's command line: the settings it makes
 * (resp_config_t, with the behaviour every connection gets), the usage
 * text, and the listen-address format used in messages.
 *
 * One table in config.c holds every flag with its kind, range and field;
 * getopt's table is built from it. The usage text and tools/README.md list
 * the same flags and must be kept in step by hand.
 */
#ifndef DOT_RESPONDER_CONFIG_H
#define DOT_RESPONDER_CONFIG_H

#include <sys/socket.h>

#include "responder-t.h"

typedef struct resp_config {
	struct sockaddr_storage listen[MAX_LISTEN]; /* port 0: main.c writes the chosen one back */
	socklen_t listen_len[MAX_LISTEN];
	bool listen_plain[MAX_LISTEN]; /* from --listen-tcp: plain DNS over TCP */
	int nlisten; /* --listen and --listen-tcp, in command-line order */
	bool any_tls; /* at least one --listen: needs --cert, --key, an SSL_CTX */
	const char *cert, *key; /* point into argv */
	int threads;
	uint32_t max_conns;
	uint16_t tls_min, tls_max;
	behave_t behave;
	bool timed; /* --delay-ms, --idle-close-ms or --handshake-delay-ms: timers */
	uint64_t seed; /* --seed: the percentages' random sequence */
} resp_config_t;

/* Fill *cfg from the defaults and the command line. Prints why on a bad
 * command line and returns -1; on --help prints the usage to stdout and
 * exits 0. Returns 0 otherwise, with behave.faulty, timed and a seed (from
 * the clock without --seed) worked out. */
int config_parse(resp_config_t *cfg, int argc, char **argv);

/* "IP:PORT" or "[IPv6]:PORT" of ss into out (cap bytes, NUL-terminated). */
void config_format_addr(const struct sockaddr_storage *ss, char *out, size_t cap);

/* Listener j as printed in "listening on": its address, with "tcp://" in
 * front for a plain one (--listen-tcp). */
void config_format_listener(const resp_config_t *cfg, int j, char *out, size_t cap);

/* When any fault is on, the line "faults delay-ms=... seed=..." on stderr. */
void config_print_faults(const resp_config_t *cfg);

#endif
