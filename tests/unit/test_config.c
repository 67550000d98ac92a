/* test_config.c - the option table: command line, config file, defaults,
 * address parsing and the reload rule. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

static dp_config_t cfg;
static char err[512];

/* Parse args[0..n) (argv[0] supplied) into cfg, which starts from the
 * defaults. Whatever the parser prints (--help) goes to /dev/null. */
static int parse_argv(const char *const *args, int n)
{
	char *argv[80];
	int argc = 0;
	assert_true(n < 78);
	argv[argc++] = (char *)"dotproxy";
	for (int i = 0; i < n; i++)
		argv[argc++] = (char *)args[i];
	argv[argc] = NULL;
	dp_config_defaults(&cfg);
	memset(err, 0, sizeof(err));
	fflush(stdout);
	int saved = dup(STDOUT_FILENO);
	int null = open("/dev/null", O_WRONLY);
	assert_true(saved >= 0 && null >= 0);
	assert_true(dup2(null, STDOUT_FILENO) >= 0);
	int rc = dp_config_parse_args(&cfg, argc, argv, err, sizeof(err));
	fflush(stdout);
	assert_true(dup2(saved, STDOUT_FILENO) >= 0);
	close(saved);
	close(null);
	return rc;
}

/* parse("--a", "b", NULL) */
static int parse(const char *first, ...)
{
	const char *args[64];
	int n = 0;
	va_list ap;
	va_start(ap, first);
	for (const char *a = first; a; a = va_arg(ap, const char *)) {
		assert_true(n < 64);
		args[n++] = a;
	}
	va_end(ap);
	return parse_argv(args, n);
}

/* Parses a config file holding text into cfg (from the defaults). */
static int parse_text(const char *text)
{
	char path[] = "/tmp/dp-test-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	dp_config_defaults(&cfg);
	int rc = dp_config_parse_file(&cfg, path, err, sizeof(err));
	unlink(path);
	return rc;
}

static void assert_v4(const dp_sockaddr_t *a, const char *ip, unsigned port)
{
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
	struct in_addr want;
	assert_int_equal(a->ss.ss_family, AF_INET);
	assert_int_equal(a->len, sizeof(struct sockaddr_in));
	assert_int_equal(inet_pton(AF_INET, ip, &want), 1);
	assert_int_equal(s4->sin_addr.s_addr, want.s_addr);
	assert_int_equal(ntohs(s4->sin_port), port);
}

static void assert_v6(const dp_sockaddr_t *a, const char *ip, unsigned port)
{
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
	struct in6_addr want;
	assert_int_equal(a->ss.ss_family, AF_INET6);
	assert_int_equal(a->len, sizeof(struct sockaddr_in6));
	assert_int_equal(inet_pton(AF_INET6, ip, &want), 1);
	assert_memory_equal(&s6->sin6_addr, &want, sizeof(want));
	assert_int_equal(ntohs(s6->sin6_port), port);
}

static void defaults(void **state)
{
	assert_int_equal(parse(NULL), 0);
	assert_int_equal(cfg.nlisten, 1);
	assert_v4(&cfg.listen[0], "127.0.0.1", 53);
	assert_string_equal(cfg.listen_text[0], "127.0.0.1:53");
	assert_int_equal(cfg.nupstream, 2);
	assert_v4(&cfg.upstream[0].addr, "1.1.1.1", 853);
	assert_v4(&cfg.upstream[1].addr, "1.0.0.1", 853);
	assert_string_equal(cfg.upstream[0].name, "cloudflare-dns.com");
	assert_string_equal(cfg.upstream[1].name, "cloudflare-dns.com");
	assert_int_equal(cfg.threads, 0);
	assert_int_equal(cfg.timeout_ms, 2000);
	assert_int_equal(cfg.max_udp_size, 1232);
	assert_int_equal(cfg.max_inflight, 16384);
	assert_int_equal(cfg.max_inflight_per_conn, 256);
	assert_int_equal(cfg.log_level, DP_LOG_INFO);
	/* every default comes from the option table, read by the option's own
	 * parser: what --help shows is what runs */
	assert_int_equal(cfg.list_fresh, 0);
	assert_string_equal(cfg.upstream[0].text, "1.1.1.1:853#cloudflare-dns.com");
	assert_int_equal(cfg.handshake_timeout_ms, 1000);
	assert_int_equal(cfg.tcp_idle_ms, 10000);
	assert_int_equal(cfg.max_tcp_clients, 15000);
	assert_int_equal(cfg.upstream_conns, 1);
	assert_string_equal(cfg.ca_file, "/etc/ssl/certs/ca-certificates.crt");
	assert_int_equal(cfg.rate_limit, 0);
	assert_int_equal(cfg.cache_mb, 64);
	assert_int_equal(cfg.cache_min_ttl, 0);
	assert_int_equal(cfg.cache_max_ttl, 86400);
	assert_int_equal(cfg.stale_ttl, 86400);
	assert_int_equal(cfg.tls_min_version, 0x0304);
	assert_int_equal(cfg.upstream_policy, DP_POLICY_FASTEST);
	assert_int_equal(cfg.hedge_ms, -1);
	assert_int_equal(cfg.upstream_idle_ms, 10000);
	assert_int_equal(cfg.drain_ms, 5000);
	assert_false(cfg.no_pin);
	assert_false(cfg.metrics_on);
	assert_string_equal(cfg.user, "nobody");
	/* the same list as acl.c's dp_acl_defaults */
	dp_acl_t want;
	dp_acl_defaults(&want);
	assert_int_equal(cfg.acl.n, want.n);
	assert_memory_equal(cfg.acl.e, want.e, sizeof(want.e[0]) * (size_t)want.n);
	assert_int_equal(cfg.metrics_acl.n, 2);
}

static void listen_forms(void **state)
{
	assert_int_equal(parse("--listen", "0.0.0.0:5353", "--listen", "[::1]:5300",
			       "--listen=192.0.2.7:0", NULL), 0);
	assert_int_equal(cfg.nlisten, 3);
	assert_v4(&cfg.listen[0], "0.0.0.0", 5353);
	assert_v6(&cfg.listen[1], "::1", 5300);
	assert_v4(&cfg.listen[2], "192.0.2.7", 0);
	assert_string_equal(cfg.listen_text[1], "[::1]:5300");
	/* Upstreams keep their defaults. */
	assert_int_equal(cfg.nupstream, 2);

	assert_int_equal(parse("--listen", "[2001:db8::53]:65535", NULL), 0);
	assert_v6(&cfg.listen[0], "2001:db8::53", 65535);

	char text[80];
	dp_sockaddr_str(&cfg.listen[0], text, sizeof(text));
	assert_string_equal(text, "[2001:db8::53]:65535");
}

static void listen_bad(void **state)
{
	static const char *bad[] = {
		"127.0.0.1", /* a port is required */
		"[::1]", "::1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
		"127.0.0.1:53x", "127.0.0.1:0x35", "localhost:53", "256.0.0.1:53", "[::1]53",
		"[::1:53", "[127.0.0.1:53", "", ":53", "[]:53", "1.2.3:53",
		"127.0.0.1:99999999999999999999",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--listen", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--listen"));
		assert_non_null(strstr(err, bad[i]));
	}
}

static void listen_limit(void **state)
{
	const char *args[2 * (DP_MAX_LISTEN + 1)];
	char addrs[DP_MAX_LISTEN + 1][32];
	for (int i = 0; i <= DP_MAX_LISTEN; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "127.0.0.1:%d", 1000 + i);
		args[2 * i] = "--listen";
		args[2 * i + 1] = addrs[i];
	}
	/* DP_MAX_LISTEN addresses are fine, one more is not. */
	assert_int_equal(parse_argv(args, 2 * DP_MAX_LISTEN), 0);
	assert_int_equal(cfg.nlisten, DP_MAX_LISTEN);
	assert_v4(&cfg.listen[DP_MAX_LISTEN - 1], "127.0.0.1", 1000 + DP_MAX_LISTEN - 1);
	assert_int_equal(parse_argv(args, 2 * (DP_MAX_LISTEN + 1)), DP_E_CONFIG);
	assert_non_null(strstr(err, "too many --listen"));
}

static void listen_tls_forms(void **state)
{
	/* none by default; port 853 when not given; needs --cert and --key */
	assert_int_equal(parse(NULL), 0);
	assert_int_equal(cfg.nlisten_tls, 0);
	assert_int_equal(cfg.listen_tls_min_version, 0x0304);
	assert_int_equal(cfg.listen_tls_handshake_ms, 5000);
	assert_int_equal(parse("--listen-tls", "127.0.0.1", "--listen-tls", "[::1]:8853", "--cert",
			       "/c.pem", "--key", "/k.pem", "--listen-tls-min-version", "1.2",
			       "--listen-tls-handshake-timeout", "750ms", NULL),
			 0);
	assert_int_equal(cfg.nlisten_tls, 2);
	assert_v4(&cfg.listen_tls[0], "127.0.0.1", 853);
	assert_v6(&cfg.listen_tls[1], "::1", 8853);
	assert_string_equal(cfg.cert_file, "/c.pem");
	assert_string_equal(cfg.key_file, "/k.pem");
	assert_int_equal(cfg.listen_tls_min_version, 0x0303);
	assert_int_equal(cfg.listen_tls_handshake_ms, 750);
	assert_int_equal(cfg.nlisten, 1); /* --listen keeps its default */
	assert_int_equal(parse("--listen-tls", "127.0.0.1:853", "--cert", "/c.pem", NULL),
			 DP_E_CONFIG);
	assert_non_null(strstr(err, "--cert and --key"));
	assert_int_equal(parse("--listen-tls", "localhost:853", NULL), DP_E_CONFIG);
	/* not on a plain listener's address, nor twice */
	assert_int_equal(parse("--listen", "127.0.0.1:853", "--listen-tls", "127.0.0.1", "--cert",
			       "/c.pem", "--key", "/k.pem", NULL),
			 DP_E_CONFIG);
	assert_non_null(strstr(err, "the same address as --listen 127.0.0.1:853"));
	assert_int_equal(parse("--listen-tls", "127.0.0.1", "--listen-tls", "127.0.0.1:853", "--cert",
			       "/c.pem", "--key", "/k.pem", NULL),
			 DP_E_CONFIG);
	assert_int_equal(parse("--listen-tls-min-version", "1.1", NULL), DP_E_CONFIG);
	/* [restart]: a reload keeps the running listeners, but takes a new
	 * certificate */
	assert_int_equal(parse("--listen-tls", "127.0.0.1", "--cert", "/c.pem", "--key", "/k.pem",
			       NULL),
			 0);
	dp_config_t old = cfg;
	assert_int_equal(parse("--listen-tls", "127.0.0.2", "--cert", "/d.pem", "--key", "/k.pem",
			       NULL),
			 0);
	char names[256];
	assert_int_equal(dp_config_keep_restart(&cfg, &old, names, sizeof(names)), 1);
	assert_string_equal(names, "listen-tls");
	assert_v4(&cfg.listen_tls[0], "127.0.0.1", 853);
	assert_string_equal(cfg.cert_file, "/d.pem");
}

static void parse_addr_direct(void **state)
{
	dp_sockaddr_t a;
	assert_int_equal(dp_config_parse_addr("192.0.2.1", 853, &a), 0);
	assert_v4(&a, "192.0.2.1", 853);
	assert_int_equal(dp_config_parse_addr("2001:db8::1", 853, &a), 0);
	assert_v6(&a, "2001:db8::1", 853);
	assert_int_equal(dp_config_parse_addr("[2001:db8::1]", 853, &a), 0);
	assert_v6(&a, "2001:db8::1", 853);
	assert_int_equal(dp_config_parse_addr("[2001:db8::1]:8853", 853, &a), 0);
	assert_v6(&a, "2001:db8::1", 8853);
	assert_int_equal(dp_config_parse_addr("192.0.2.1:8853", 853, &a), 0);
	assert_v4(&a, "192.0.2.1", 8853);
	assert_int_equal(dp_config_parse_addr("192.0.2.1", 0, &a), DP_E_CONFIG);
	assert_int_equal(dp_config_parse_addr("2001:db8::1", 0, &a), DP_E_CONFIG);
	/* Longer than any address: refused, not overflowed. */
	char longs[200];
	memset(longs, '1', sizeof(longs) - 1);
	longs[sizeof(longs) - 1] = 0;
	assert_int_equal(dp_config_parse_addr(longs, 53, &a), DP_E_CONFIG);
	longs[0] = '[';
	longs[150] = ']';
	assert_int_equal(dp_config_parse_addr(longs, 53, &a), DP_E_CONFIG);
}

static void upstream_forms(void **state)
{
	assert_int_equal(parse("--upstream", "9.9.9.9#dns.quad9.net", "--upstream",
			       "149.112.112.112:8853#dns.quad9.net", "--upstream",
			       "[2620:fe::fe]:853#dns.quad9.net", "--upstream",
			       "[2620:fe::9]#dns9.quad9.net", "--upstream", "192.0.2.53", NULL),
			 0);
	assert_int_equal(cfg.nupstream, 5); /* the defaults are replaced */
	assert_v4(&cfg.upstream[0].addr, "9.9.9.9", 853);
	assert_string_equal(cfg.upstream[0].name, "dns.quad9.net");
	assert_string_equal(cfg.upstream[0].text, "9.9.9.9#dns.quad9.net");
	assert_v4(&cfg.upstream[1].addr, "149.112.112.112", 8853);
	assert_string_equal(cfg.upstream[1].name, "dns.quad9.net");
	assert_v6(&cfg.upstream[2].addr, "2620:fe::fe", 853);
	assert_v6(&cfg.upstream[3].addr, "2620:fe::9", 853);
	assert_string_equal(cfg.upstream[3].name, "dns9.quad9.net");
	/* Without a name the certificate is checked against the IP. */
	assert_v4(&cfg.upstream[4].addr, "192.0.2.53", 853);
	assert_string_equal(cfg.upstream[4].name, "");
	/* Listen keeps its default. */
	assert_int_equal(cfg.nlisten, 1);
}

static void upstream_bad(void **state)
{
	static const char *bad[] = {
		"#dns.quad9.net", "9.9.9.9#", "9.9.9.9#dns quad9", "9.9.9.9#dns/quad9",
		"dns.quad9.net#dns.quad9.net", "9.9.9.9:99999#dns.quad9.net",
		"9.9.9.9:#dns.quad9.net", "[2620:fe::fe#dns.quad9.net", "", "9.9.9.9##x",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--upstream", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--upstream"));
	}
	/* A name longer than 255 characters. */
	char big[300] = "9.9.9.9#";
	memset(big + 8, 'a', 260);
	big[268] = 0;
	assert_int_equal(parse("--upstream", big, NULL), DP_E_CONFIG);
}

#define PIN_0_31 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" /* bytes 0..31 */
#define PIN_FF "//////////////////////////////////////////8=" /* 32 x 0xff */

static void upstream_pins(void **state)
{
	uint8_t want[32], ff[32];
	for (int i = 0; i < 32; i++)
		want[i] = (uint8_t)i;
	memset(ff, 0xff, sizeof(ff));

	assert_int_equal(parse("--upstream", "1.1.1.1#one.one.one.one,pin-sha256=" PIN_0_31, NULL), 0);
	assert_int_equal(cfg.upstream[0].npins, 1);
	assert_memory_equal(cfg.upstream[0].pins[0], want, 32);
	assert_false(cfg.upstream[0].no_ca);
	assert_string_equal(cfg.upstream[0].name, "one.one.one.one");

	assert_int_equal(parse("--upstream", "192.0.2.1:853,pin-sha256=" PIN_FF ",pin-sha256=" PIN_0_31
			       ",no-ca", NULL), 0);
	assert_int_equal(cfg.upstream[0].npins, 2);
	assert_memory_equal(cfg.upstream[0].pins[0], ff, 32);
	assert_memory_equal(cfg.upstream[0].pins[1], want, 32);
	assert_true(cfg.upstream[0].no_ca);
	assert_string_equal(cfg.upstream[0].name, "");
	assert_v4(&cfg.upstream[0].addr, "192.0.2.1", 853);

	/* Four pins fit, a fifth does not. */
	const char *four = "1.1.1.1#x,pin-sha256=" PIN_FF ",pin-sha256=" PIN_FF ",pin-sha256=" PIN_FF
			   ",pin-sha256=" PIN_FF;
	assert_int_equal(parse("--upstream", four, NULL), 0);
	assert_int_equal(cfg.upstream[0].npins, 4);
	char five[400];
	snprintf(five, sizeof(five), "%s,pin-sha256=%s", four, PIN_FF);
	assert_int_equal(parse("--upstream", five, NULL), DP_E_CONFIG);

	static const char *bad[] = {
		"1.1.1.1#x,no-ca", /* no-ca without a pin trusts anybody */
		"1.1.1.1#x,pin-sha256=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", /* 31 bytes */
		"1.1.1.1#x,pin-sha256=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", /* 33 bytes */
		"1.1.1.1#x,pin-sha256=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", /* not 4n */
		"1.1.1.1#x,pin-sha256=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd=h8=", /* '=' inside */
		"1.1.1.1#x,pin-sha256=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxw!Hh8=", /* not base64 */
		"1.1.1.1#x,pin-sha256=",
		("1.1.1.1#x,pin-md5=" PIN_FF),
		"1.1.1.1#x,,no-ca",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--upstream", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--upstream"));
	}
}

static void threads_bounds(void **state)
{
	assert_int_equal(parse("--threads", "1", NULL), 0);
	assert_int_equal(cfg.threads, 1);
	assert_int_equal(parse("--threads", "256", NULL), 0);
	assert_int_equal(cfg.threads, 256);
	assert_int_equal(parse("--threads=8", NULL), 0);
	assert_int_equal(cfg.threads, 8);
	static const char *bad[] = { "0", "257", "-1", "abc", "4x", "", "99999999999999999999999" };
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--threads", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--threads"));
		assert_non_null(strstr(err, "1..256"));
	}
}

/* --udp-io has one mode left, uring; mmsg (removed) still loads as uring,
 * so a config written for it does not stop a start or a reload. */
static void udp_io_modes(void **state)
{
	assert_int_equal(parse("--udp-io", "uring", NULL), 0);
	assert_int_equal(parse("--udp-io", "mmsg", NULL), 0);
	static const char *bad[] = { "", "epoll", "MMSG", "uring2" };
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--udp-io", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--udp-io"));
		assert_non_null(strstr(err, "expected uring"));
	}
}

static void steering_modes(void **state)
{
	assert_int_equal(parse(NULL), 0);
	assert_int_equal(cfg.steering, DP_STEER_AUTO);
	assert_int_equal(parse("--steering", "off", NULL), 0);
	assert_int_equal(cfg.steering, DP_STEER_OFF);
	assert_int_equal(parse("--steering", "auto", NULL), 0);
	assert_int_equal(cfg.steering, DP_STEER_AUTO);
	static const char *bad[] = { "", "on", "OFF", "bpf", "auto2" };
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--steering", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--steering"));
		assert_non_null(strstr(err, "auto or off"));
	}
	/* The config file knows it too. */
	assert_int_equal(parse_text("steering off\n"), 0);
	assert_int_equal(cfg.steering, DP_STEER_OFF);
}

static void batch_us_bounds(void **state)
{
	assert_int_equal(parse(NULL), 0);
	assert_int_equal(cfg.batch_us, 200);
	assert_int_equal(parse("--batch-us", "0", NULL), 0);
	assert_int_equal(cfg.batch_us, 0);
	assert_int_equal(parse("--batch-us", "1000", NULL), 0);
	assert_int_equal(cfg.batch_us, 1000);
	static const char *bad[] = { "1001", "-1", "", "50us", "x" };
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--batch-us", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--batch-us"));
		assert_non_null(strstr(err, "0..1000"));
	}
}

/* Issue 12: --forward-ecs (off by default, RFC 7871 11.1) and
 * --servfail-ttl (RFC 9520: 1 s to 5 min). */
static void ecs_and_servfail_ttl(void **state)
{
	assert_int_equal(parse(NULL), 0);
	assert_false(cfg.forward_ecs);
	assert_int_equal(cfg.servfail_ttl, 5);
	assert_int_equal(parse("--forward-ecs", "--servfail-ttl", "300", NULL), 0);
	assert_true(cfg.forward_ecs);
	assert_int_equal(cfg.servfail_ttl, 300);
	assert_int_equal(parse("--servfail-ttl", "1", NULL), 0);
	assert_int_equal(cfg.servfail_ttl, 1);
	static const char *bad[] = { "0", "301", "-1", "", "5s", "x" };
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--servfail-ttl", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--servfail-ttl"));
		assert_non_null(strstr(err, "1..300"));
	}
	assert_int_equal(parse("--forward-ecs=yes", NULL), DP_E_CONFIG);
	/* The config file knows them too. */
	assert_int_equal(parse_text("forward-ecs\nservfail-ttl 30\n"), 0);
	assert_true(cfg.forward_ecs);
	assert_int_equal(cfg.servfail_ttl, 30);
}

static void timeout_forms(void **state)
{
	static const struct {
		const char *s;
		uint32_t ms;
	} good[] = {
		{ "2", 2000 }, { "2s", 2000 }, { "500ms", 500 }, { "1.5", 1500 },
		{ "1.5s", 1500 }, { "1ms", 1 }, { "3600", 3600000 },
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(good); i++) {
		assert_int_equal(parse("--timeout", good[i].s, NULL), 0);
		assert_int_equal(cfg.timeout_ms, good[i].ms);
	}
	static const char *bad[] = {
		"", "abc", "2m", "2 s", "s", "-1", "0", "0s", "0.5ms", "3601", "2sx",
		"nan", "NaNms", "inf", "-inf", "1e400",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--timeout", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--timeout"));
		assert_int_equal(cfg.timeout_ms, 2000); /* untouched */
	}
	/* The other durations share the parser. */
	assert_int_equal(parse("--handshake-timeout", "250ms", "--tcp-idle-timeout", "30s", NULL), 0);
	assert_int_equal(cfg.handshake_timeout_ms, 250);
	assert_int_equal(cfg.tcp_idle_ms, 30000);
	assert_int_equal(parse("--tcp-idle-timeout", "nan", NULL), DP_E_CONFIG);
}

static void other_numbers(void **state)
{
	assert_int_equal(parse("--max-udp-size", "512", "--max-inflight", "100",
			       "--upstream-conns", "64", "--max-tcp-clients", "1", NULL),
			 0);
	assert_int_equal(cfg.max_udp_size, 512);
	assert_int_equal(cfg.max_inflight, 100);
	assert_int_equal(cfg.upstream_conns, 64);
	assert_int_equal(cfg.max_tcp_clients, 1);
	assert_int_equal(parse("--max-udp-size", "511", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--max-udp-size", "4097", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--upstream-conns", "65", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--max-inflight", "0", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--max-inflight-per-conn", "1", NULL), 0);
	assert_int_equal(cfg.max_inflight_per_conn, 1);
	assert_int_equal(parse("--max-inflight-per-conn", "65535", NULL), 0);
	assert_int_equal(cfg.max_inflight_per_conn, 65535);
	assert_int_equal(parse("--max-inflight-per-conn", "0", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--max-inflight-per-conn", "65536", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--log-level", "debug", NULL), 0);
	assert_int_equal(cfg.log_level, DP_LOG_DEBUG);
	assert_int_equal(parse("--log-level", "verbose", NULL), DP_E_CONFIG);
	assert_non_null(strstr(err, "--log-level verbose"));
	assert_int_equal(parse("--ca-file", "/tmp/ca.pem", NULL), 0);
	assert_string_equal(cfg.ca_file, "/tmp/ca.pem");
}

static void errors_and_exits(void **state)
{
	assert_int_equal(parse("--bogus", NULL), DP_E_CONFIG);
	assert_string_equal(err, "unknown option --bogus (see --help)");
	assert_int_equal(parse("--threads", "2", "--bogus=1", NULL), DP_E_CONFIG);
	assert_non_null(strstr(err, "unknown option --bogus"));
	assert_int_equal(parse("-x", NULL), DP_E_CONFIG);
	assert_string_equal(err, "unknown option -x (see --help)");
	assert_int_equal(parse("--listen", NULL), DP_E_CONFIG);
	assert_string_equal(err, "--listen: missing value (see --help)");
	assert_int_equal(parse("stray", NULL), DP_E_CONFIG);
	assert_string_equal(err, "unexpected argument stray (see --help)");
	assert_int_equal(parse("--help", NULL), 1);
	assert_int_equal(parse("-h", NULL), 1);
	assert_int_equal(parse("--version", NULL), 1);
}

static void parse_is_repeatable(void **state)
{
	/* getopt keeps state between calls; a parse that stopped inside a
	 * group of short options must not leak into the next one. */
	assert_int_equal(parse("-hh", NULL), 1);
	assert_int_equal(parse("--threads", "4", NULL), 0);
	assert_int_equal(cfg.threads, 4);
	assert_int_equal(parse("-hx", NULL), 1);
	assert_int_equal(parse(NULL), 0);
	assert_int_equal(parse("--bogus", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--threads", "3", NULL), 0);
	assert_int_equal(cfg.threads, 3);
}

static bool acl_allows_text(const dp_acl_t *a, const char *ip)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
	}
	return dp_acl_allows(a, (const struct sockaddr *)&ss);
}

static void metrics_allow(void **state)
{
	/* default: the loopback address alone */
	assert_int_equal(parse(NULL), 0);
	assert_true(acl_allows_text(&cfg.metrics_acl, "127.0.0.1"));
	assert_true(acl_allows_text(&cfg.metrics_acl, "::1"));
	assert_false(acl_allows_text(&cfg.metrics_acl, "127.0.0.2"));
	assert_false(acl_allows_text(&cfg.metrics_acl, "10.1.2.3"));
	/* the first one replaces the default; comma lists and repeats add */
	assert_int_equal(parse("--metrics-allow", "10.0.0.0/8,192.0.2.7", "--metrics-allow", "fd00::/8",
			       NULL), 0);
	assert_int_equal(cfg.metrics_acl.n, 3);
	assert_false(acl_allows_text(&cfg.metrics_acl, "127.0.0.1"));
	assert_true(acl_allows_text(&cfg.metrics_acl, "10.9.8.7"));
	assert_true(acl_allows_text(&cfg.metrics_acl, "192.0.2.7"));
	assert_false(acl_allows_text(&cfg.metrics_acl, "192.0.2.8"));
	assert_true(acl_allows_text(&cfg.metrics_acl, "fd12::1"));
	/* the DNS allow list is a separate list */
	assert_true(acl_allows_text(&cfg.acl, "127.0.0.1"));
	assert_int_equal(parse("--metrics-allow", "10.0.0.1/8", NULL), DP_E_CONFIG);
	assert_non_null(strstr(err, "--metrics-allow"));
	assert_int_equal(parse("--metrics-allow", "10.0.0.0/8,", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--metrics-allow", ",10.0.0.0/8", NULL), DP_E_CONFIG);
	assert_int_equal(parse("--metrics-allow", "bogus", NULL), DP_E_CONFIG);
}

/* Switches, and keywords of values. */
static void switches_and_keywords(void **state)
{
	assert_int_equal(parse("--no-pin", "--no-cache", "--allow-root", "--hedge-after", "off",
			       "--upstream-policy", "round-robin", "--tls-min-version", "1.2", NULL), 0);
	assert_true(cfg.no_pin);
	assert_true(cfg.allow_root);
	assert_int_equal(cfg.cache_mb, 0);
	assert_int_equal(cfg.hedge_ms, 0);
	assert_int_equal(cfg.upstream_policy, DP_POLICY_RR);
	assert_int_equal(cfg.tls_min_version, 0x0303);
	assert_int_equal(parse("--hedge-after", "250ms", "--rate-limit", "100", NULL), 0);
	assert_int_equal(cfg.hedge_ms, 250);
	assert_int_equal(cfg.rate_limit, 100);
}

/* Lists: the file's first value replaces the default, later values add;
 * the command line's first value replaces the file's. */
static void file_layers(void **state)
{
	assert_int_equal(parse_text("listen 127.0.0.1:5300\nlisten [::1]:5300\n"
				    "allow 192.0.2.0/24\nmetrics 127.0.0.1:9100\n"
				    "forward-ecs yes\nno-pin no\ncache-min-ttl 60\n"), 0);
	assert_int_equal(cfg.nlisten, 2);
	assert_v4(&cfg.listen[0], "127.0.0.1", 5300);
	assert_v6(&cfg.listen[1], "::1", 5300);
	assert_int_equal(cfg.nupstream, 2); /* untouched: the defaults */
	assert_int_equal(cfg.acl.n, 1);
	assert_true(cfg.metrics_on);
	assert_true(cfg.forward_ecs);
	assert_false(cfg.no_pin);
	assert_int_equal(cfg.cache_min_ttl, 60);

	char path[] = "/tmp/dp-test-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	static const char text[] = "listen 127.0.0.1:5300\nlisten 127.0.0.1:5301\nthreads 3\n";
	assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
	close(fd);
	assert_int_equal(parse("--config", path, "--listen", "127.0.0.1:5400", NULL), 0);
	assert_int_equal(cfg.nlisten, 1);
	assert_v4(&cfg.listen[0], "127.0.0.1", 5400);
	assert_int_equal(cfg.threads, 3);
	assert_string_equal(cfg.config_file, path);
	unlink(path);

	/* file errors name the setting as its flag, after FILE:LINE */
	assert_int_equal(parse_text("# x\ncache-min-ttl 5x\n"), DP_E_CONFIG);
	assert_non_null(strstr(err, ":2: --cache-min-ttl 5x: expected seconds, 0..604800"));
	static const char *argv_only[] = { "help\n", "version\n", "config /etc/passwd\n" };
	for (size_t i = 0; i < DP_ARRAY_LEN(argv_only); i++) {
		assert_int_equal(parse_text(argv_only[i]), DP_E_CONFIG);
		assert_non_null(strstr(err, "unknown setting"));
	}
	assert_int_equal(parse_text("timeout\n"), DP_E_CONFIG);
	assert_non_null(strstr(err, "timeout needs a value"));
	assert_int_equal(parse_text("no-cache maybe\n"), DP_E_CONFIG);
	assert_non_null(strstr(err, "no-cache takes no value"));
}

/* A reload keeps the settings read at start, and names those it kept. */
static void reload_keeps_restart_settings(void **state)
{
	static dp_config_t old;
	assert_int_equal(parse("--threads", "2", "--listen", "127.0.0.1:5300", "--cache-size", "8",
			       "--timeout", "3s", NULL), 0);
	old = cfg;
	char names[256];

	/* Same restart-only settings, a changed live one: nothing to say. */
	assert_int_equal(parse("--threads", "2", "--listen", "127.0.0.1:5300", "--cache-size", "8",
			       "--timeout", "1s", NULL), 0);
	assert_int_equal(dp_config_keep_restart(&cfg, &old, names, sizeof(names)), 0);
	assert_string_equal(names, "");
	assert_int_equal(cfg.timeout_ms, 1000);

	/* threads left to its default (0: one per CPU) is no change */
	assert_int_equal(parse("--listen", "127.0.0.1:5300", "--cache-size", "8", NULL), 0);
	assert_int_equal(dp_config_keep_restart(&cfg, &old, names, sizeof(names)), 0);
	assert_int_equal(cfg.threads, 2);

	assert_int_equal(parse("--threads", "4", "--listen", "127.0.0.1:5301", "--listen",
			       "127.0.0.1:5302", "--no-cache", "--metrics", "127.0.0.1:9100",
			       "--user", "daemon", "--steering", "off", "--rate-limit", "50", NULL), 0);
	assert_int_equal(dp_config_keep_restart(&cfg, &old, names, sizeof(names)), 6);
	assert_string_equal(names, "listen,threads,cache-size,metrics,user,steering");
	assert_int_equal(cfg.threads, 2);
	assert_int_equal(cfg.nlisten, 1);
	assert_v4(&cfg.listen[0], "127.0.0.1", 5300);
	assert_string_equal(cfg.listen_text[0], "127.0.0.1:5300");
	assert_int_equal(cfg.cache_mb, 8);
	assert_false(cfg.metrics_on);
	assert_string_equal(cfg.user, "nobody");
	assert_int_equal(cfg.steering, DP_STEER_AUTO);
	assert_int_equal(cfg.rate_limit, 50); /* live: the new value stays */
	assert_int_equal(cfg.timeout_ms, 2000);
}

/* ---- forwarding zones (--forward) ------------------------------------------ */

/* The index of zone text (as stored: "corp.example.", "."), -1 if none. */
static int zone_idx(const char *text)
{
	for (int z = 0; z < cfg.nzones; z++)
		if (strcmp(cfg.zone[z].text, text) == 0)
			return z;
	return -1;
}

/* The upstreams of zone text, their .text joined by spaces, in order. */
static const char *zone_ups(const char *text)
{
	static char out[1024];
	int z = zone_idx(text);
	assert_true(z >= 0);
	out[0] = 0;
	int n = 0;
	uint32_t mask = 0;
	for (int u = 0; u < cfg.nupstream; u++) {
		if (cfg.upstream[u].zone != z)
			continue;
		size_t l = strlen(out);
		snprintf(out + l, sizeof(out) - l, "%s%s", n ? " " : "", cfg.upstream[u].text);
		n++;
		mask |= 1u << u;
	}
	/* The zone's own count and mask agree with the list. */
	assert_int_equal(cfg.zone[z].nup, n);
	assert_int_equal(cfg.zone[z].upstreams, mask);
	return out;
}

/* Catches: a plain upstream read as DoT (or the reverse), the wrong
 * default port (53 plain, 853 DoT), [IPv6]:PORT misread, zones not in wire
 * form and lower case, the defaults' root upstreams lost when only
 * another zone is given. */
static void forward_forms(void **state)
{
	assert_int_equal(parse("--forward", "corp.example=10.0.0.53#ns.corp.example", "--forward",
			       "Cluster.Local.=udp://10.96.0.10", "--forward",
			       "svc.test=tcp://[::1]:5353", "--forward", "u.test=udp://[2001:db8::1]",
			       "--forward", "t.test=tcp://192.0.2.2", "--forward",
			       "p.test=udp://192.0.2.3:5300", NULL), 0);
	assert_int_equal(cfg.nzones, 7);
	assert_int_equal(cfg.nupstream, 8);
	assert_int_equal(zone_idx("."), 0);
	assert_int_equal(cfg.zone[0].wire_len, 1);
	assert_string_equal(zone_ups("."), "1.1.1.1:853#cloudflare-dns.com "
					   "1.0.0.1:853#cloudflare-dns.com");
	const dp_upstream_cfg_t *u = &cfg.upstream[2];
	assert_string_equal(zone_ups("corp.example."), "10.0.0.53#ns.corp.example");
	assert_int_equal(u->transport, DP_UP_DOT);
	assert_v4(&u->addr, "10.0.0.53", 853);
	assert_string_equal(u->name, "ns.corp.example");

	int z = zone_idx("cluster.local.");
	assert_true(z > 0);
	assert_int_equal(cfg.zone[z].wire_len, 15);
	assert_memory_equal(cfg.zone[z].wire, "\7cluster\5local\0", 15);
	u = &cfg.upstream[3];
	assert_int_equal(u->zone, z);
	assert_int_equal(u->transport, DP_UP_UDP);
	assert_v4(&u->addr, "10.96.0.10", 53);
	assert_string_equal(u->text, "udp://10.96.0.10");
	assert_string_equal(u->name, "");
	assert_int_equal(u->npins, 0);

	u = &cfg.upstream[4];
	assert_string_equal(zone_ups("svc.test."), "tcp://[::1]:5353");
	assert_int_equal(u->transport, DP_UP_TCP);
	assert_v6(&u->addr, "::1", 5353);
	u = &cfg.upstream[5];
	assert_int_equal(u->transport, DP_UP_UDP);
	assert_v6(&u->addr, "2001:db8::1", 53);
	u = &cfg.upstream[6];
	assert_int_equal(u->transport, DP_UP_TCP);
	assert_v4(&u->addr, "192.0.2.2", 53);
	u = &cfg.upstream[7];
	assert_v4(&u->addr, "192.0.2.3", 5300);
	/* The DoT defaults are DoT. */
	assert_int_equal(cfg.upstream[0].transport, DP_UP_DOT);
	assert_int_equal(cfg.upstream[0].zone, 0);
}

/* Catches: a repeat for the same zone (spelled in another case, with or
 * without the final dot) making a second zone or replacing the first
 * upstream instead of adding one. */
static void forward_repeat_adds(void **state)
{
	assert_int_equal(parse("--forward", "cluster.local=udp://10.96.0.10", "--forward",
			       "CLUSTER.local.=tcp://10.96.0.11", "--forward",
			       "cluster.local=10.96.0.12#dns.cluster.local", NULL), 0);
	assert_int_equal(cfg.nzones, 2);
	assert_string_equal(zone_ups("cluster.local."),
			    "udp://10.96.0.10 tcp://10.96.0.11 10.96.0.12#dns.cluster.local");
	/* And --upstream, repeated, adds to the root the same way. */
	assert_int_equal(parse("--upstream", "9.9.9.9#q", "--forward", ".=149.112.112.112#q",
			       "--upstream", "192.0.2.1#x", NULL), 0);
	assert_int_equal(cfg.nzones, 1);
	assert_string_equal(zone_ups("."), "9.9.9.9#q 149.112.112.112#q 192.0.2.1#x");
}

/* Catches: --upstream X and --forward .=X building different configs
 * (the reload compares configs byte for byte). */
static void upstream_is_forward_root(void **state)
{
	static dp_config_t a;
	assert_int_equal(parse("--upstream", "9.9.9.9#dns.quad9.net,pin-sha256=" PIN_0_31, "--upstream",
			       "udp://192.0.2.1", "--allow-plain-default", NULL), 0);
	a = cfg;
	assert_int_equal(parse("--forward", ".=9.9.9.9#dns.quad9.net,pin-sha256=" PIN_0_31,
			       "--forward", ".=udp://192.0.2.1", "--allow-plain-default", NULL), 0);
	assert_int_equal(a.nupstream, 2);
	assert_int_equal(cfg.nupstream, 2);
	assert_memory_equal(a.upstream, cfg.upstream, sizeof(a.upstream));
	assert_int_equal(a.nzones, cfg.nzones);
	assert_memory_equal(a.zone, cfg.zone, sizeof(a.zone));
	assert_int_equal(cfg.upstream[0].npins, 1);
}

/* Writes text to a fresh file; its path in path (caller unlinks). */
static void write_file(char *path, const char *text)
{
	strcpy(path, "/tmp/dp-test-config-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
}

/* Catches: the file's "forward ZONE UPSTREAM" misread (a pin's '=' taken
 * for the separator), and the layer rule: the command line replaces only
 * the zones it names, the file only the zones it names. */
static void forward_layers(void **state)
{
	uint8_t want[32];
	for (int i = 0; i < 32; i++)
		want[i] = (uint8_t)i;
	/* The file alone (over the defaults). */
	assert_int_equal(parse_text("forward corp.example 10.0.0.53#ns.corp,pin-sha256=" PIN_0_31 "\n"
				    "forward\tcorp.example\tudp://10.0.0.54   # the second\n"
				    "forward other.example tcp://10.0.0.55\n"), 0);
	assert_string_equal(zone_ups("."), "1.1.1.1:853#cloudflare-dns.com "
					   "1.0.0.1:853#cloudflare-dns.com");
	/* (an upstream's text, its metrics label, leaves its pins out) */
	assert_string_equal(zone_ups("corp.example."), "10.0.0.53#ns.corp udp://10.0.0.54");
	const dp_upstream_cfg_t *u = &cfg.upstream[2];
	assert_int_equal(u->npins, 1);
	assert_memory_equal(u->pins[0], want, 32);
	assert_string_equal(u->name, "ns.corp");
	assert_string_equal(zone_ups("other.example."), "tcp://10.0.0.55");

	/* The command line over that file: corp.example and the root are
	 * replaced, other.example kept. */
	char path[64];
	write_file(path, "forward corp.example 10.0.0.53#ns.corp\n"
			 "forward corp.example udp://10.0.0.54\n"
			 "forward other.example tcp://10.0.0.55\n"
			 "forward . 9.9.9.9#dns.quad9.net\n");
	assert_int_equal(parse("--config", path, NULL), 0);
	assert_string_equal(zone_ups("."), "9.9.9.9#dns.quad9.net");
	assert_int_equal(parse("--config", path, "--forward", "Corp.Example.=udp://10.1.1.1",
			       "--forward", "corp.example=udp://10.1.1.2", "--forward",
			       "new.example=tcp://10.1.1.3", NULL), 0);
	assert_string_equal(zone_ups("corp.example."), "udp://10.1.1.1 udp://10.1.1.2");
	assert_string_equal(zone_ups("other.example."), "tcp://10.0.0.55");
	assert_string_equal(zone_ups("."), "9.9.9.9#dns.quad9.net");
	assert_string_equal(zone_ups("new.example."), "tcp://10.1.1.3");
	assert_int_equal(cfg.nupstream, 5);
	assert_int_equal(parse("--config", path, "--upstream", "192.0.2.7#x", NULL), 0);
	assert_string_equal(zone_ups("."), "192.0.2.7#x");
	assert_string_equal(zone_ups("corp.example."), "10.0.0.53#ns.corp udp://10.0.0.54");
	unlink(path);
}

/* Catches: plain DNS let into the default route without the switch (by
 * --upstream, --forward . or the file), an error that does not say what to
 * do, and plain upstreams of other zones refused. */
static void plain_default_needs_switch(void **state)
{
	static const char *plain[] = { "udp://192.0.2.1", "tcp://[::1]:5353" };
	for (size_t i = 0; i < DP_ARRAY_LEN(plain); i++) {
		char fwd[80];
		snprintf(fwd, sizeof(fwd), ".=%s", plain[i]);
		assert_int_equal(parse("--upstream", plain[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, plain[i]));
		assert_non_null(strstr(err, "--allow-plain-default"));
		assert_int_equal(parse("--forward", fwd, NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--allow-plain-default"));
		/* Beside a DoT one: still refused. */
		assert_int_equal(parse("--upstream", "9.9.9.9#q", "--forward", fwd, NULL), DP_E_CONFIG);
		assert_int_equal(parse("--forward", fwd, "--allow-plain-default", NULL), 0);
		assert_int_equal(cfg.upstream[0].zone, 0);
		assert_true(cfg.allow_plain_default);
	}
	assert_int_equal(parse("--forward", "corp.example=udp://192.0.2.1", NULL), 0);
	assert_false(cfg.allow_plain_default);
	/* The file: refused by the command line's check, allowed by the
	 * file's own switch. */
	char path[64];
	write_file(path, "forward . udp://192.0.2.1\n");
	assert_int_equal(parse("--config", path, NULL), DP_E_CONFIG);
	assert_non_null(strstr(err, "--allow-plain-default"));
	assert_int_equal(parse("--config", path, "--allow-plain-default", NULL), 0);
	unlink(path);
	write_file(path, "allow-plain-default\nforward . udp://192.0.2.1\n");
	assert_int_equal(parse("--config", path, NULL), 0);
	unlink(path);
}

/* Catches: zones that are not domain names accepted (empty labels, a
 * label over 63 octets, a name over 255, characters a name cannot have
 * here, no zone at all), and bad plain upstreams. */
static void forward_bad(void **state)
{
	char l64[65], long_zone[300];
	memset(l64, 'a', 64);
	l64[64] = 0;
	/* 4 x 63 + 3 dots: 257 octets in wire form. */
	memset(long_zone, 'b', 255);
	long_zone[255] = 0;
	for (int i = 63; i < 255; i += 64)
		long_zone[i] = '.';
	static const char *bad_zone[] = {
		"a..b", "..", ".a", "a b", "", "*.corp", "a/b", "a,b", "a:b", "é.corp", "a..",
	};
	char arg[400];
	for (size_t i = 0; i < DP_ARRAY_LEN(bad_zone); i++) {
		snprintf(arg, sizeof(arg), "%s=udp://192.0.2.1", bad_zone[i]);
		assert_int_equal(parse("--forward", arg, NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--forward"));
		assert_non_null(strstr(err, "ZONE=UPSTREAM"));
	}
	snprintf(arg, sizeof(arg), "%s.corp=udp://192.0.2.1", l64);
	assert_int_equal(parse("--forward", arg, NULL), DP_E_CONFIG);
	l64[63] = 0; /* 63 is fine */
	snprintf(arg, sizeof(arg), "%s.corp=udp://192.0.2.1", l64);
	assert_int_equal(parse("--forward", arg, NULL), 0);
	snprintf(arg, sizeof(arg), "%s=udp://192.0.2.1", long_zone);
	assert_int_equal(parse("--forward", arg, NULL), DP_E_CONFIG);
	long_zone[253] = 0; /* 4 labels, 255 octets in wire form: fine */
	snprintf(arg, sizeof(arg), "%s=udp://192.0.2.1", long_zone);
	assert_int_equal(parse("--forward", arg, NULL), 0);

	static const char *bad[] = {
		"-", "corp", "corp=", "=udp://192.0.2.1", "corp=udp://", "corp=udp://192.0.2.1:99999",
		"corp=udp://ns.corp", "corp=tcp://[::1", "corp=udp://192.0.2.1#ns.corp",
		"corp=tls://192.0.2.1", "corp=UDP://192.0.2.1", "corp=udp:/192.0.2.1",
	};
	for (size_t i = 0; i < DP_ARRAY_LEN(bad); i++) {
		assert_int_equal(parse("--forward", bad[i], NULL), DP_E_CONFIG);
		assert_non_null(strstr(err, "--forward"));
	}
	assert_int_equal(parse_text("forward corp.example\n"), DP_E_CONFIG);
	assert_int_equal(parse_text("forward a..b udp://192.0.2.1\n"), DP_E_CONFIG);
	assert_non_null(strstr(err, ":1: --forward"));
}

/* Catches: a zone "-" (or a label starting or ending with a hyphen)
 * taken as a zone: no host name has one (RFC 952, RFC 1123 2.1), so it
 * is a typo or an empty shell variable, e.g. --forward "$ZONE-=...". */
static void forward_hyphen_zone(void **state)
{
	static const char *bad_zone[] = { "-", "-.corp", "corp-", "a.-b" };
	char arg[100];
	for (size_t i = 0; i < DP_ARRAY_LEN(bad_zone); i++) {
		snprintf(arg, sizeof(arg), "%s=udp://192.0.2.1", bad_zone[i]);
		if (parse("--forward", arg, NULL) != DP_E_CONFIG)
			fail_msg("zone '%s' accepted", bad_zone[i]);
	}
	/* Inside a label it is fine, and so is '_' (_tcp, service zones). */
	assert_int_equal(parse("--forward", "my-corp.example=udp://192.0.2.1", "--forward",
			       "_msdcs.corp=udp://192.0.2.1", NULL), 0);
	assert_int_equal(cfg.nzones, 3);
}

/* Catches: the limits (DP_MAX_UPSTREAMS over all zones, DP_MAX_ZONES)
 * overrun, or reported as a bad value instead of "too many". */
static void forward_limits(void **state)
{
	static char vals[DP_MAX_ZONES + 2][64];
	const char *args[2 * (DP_MAX_ZONES + 2) + 2];
	int n = 0;
	/* One root upstream and DP_MAX_ZONES - 1 zones of one upstream each:
	 * DP_MAX_ZONES zones, DP_MAX_UPSTREAMS upstreams: the most there is. */
	_Static_assert(DP_MAX_ZONES == DP_MAX_UPSTREAMS, "the test fills both at once");
	args[n++] = "--upstream";
	args[n++] = "192.0.2.1#x";
	for (int z = 1; z <= DP_MAX_ZONES; z++) {
		snprintf(vals[z], sizeof(vals[z]), "z%d.test=udp://10.0.0.%d", z, z);
		args[n++] = "--forward";
		args[n++] = vals[z];
	}
	assert_int_equal(parse_argv(args, n - 2), 0);
	assert_int_equal(cfg.nzones, DP_MAX_ZONES);
	assert_int_equal(cfg.nupstream, DP_MAX_UPSTREAMS);
	assert_string_equal(zone_ups("z31.test."), "udp://10.0.0.31");
	/* A zone more: too many. */
	assert_int_equal(parse_argv(args, n), DP_E_CONFIG);
	assert_non_null(strstr(err, "too many --forward"));

	/* An upstream more in an existing zone: too many too. */
	n = 2;
	for (int k = 1; k < DP_MAX_UPSTREAMS; k++) {
		snprintf(vals[k], sizeof(vals[k]), "one.test=udp://10.0.1.%d", k);
		args[n++] = "--forward";
		args[n++] = vals[k];
	}
	assert_int_equal(parse_argv(args, n), 0);
	assert_int_equal(cfg.zone[1].nup, DP_MAX_UPSTREAMS - 1);
	assert_int_equal(cfg.zone[1].upstreams, 0xfffffffeu);
	snprintf(vals[DP_MAX_UPSTREAMS], sizeof(vals[0]), "one.test=udp://10.0.1.200");
	args[n++] = "--forward";
	args[n++] = vals[DP_MAX_UPSTREAMS];
	assert_int_equal(parse_argv(args, n), DP_E_CONFIG);
	assert_non_null(strstr(err, "too many --forward"));

	/* --upstream counts the same way. */
	n = 0;
	for (int k = 0; k <= DP_MAX_UPSTREAMS; k++) {
		snprintf(vals[k], sizeof(vals[k]), "192.0.2.%d#x", k + 1);
		args[n++] = "--upstream";
		args[n++] = vals[k];
	}
	assert_int_equal(parse_argv(args, n - 2), 0);
	assert_int_equal(parse_argv(args, n), DP_E_CONFIG);
	assert_non_null(strstr(err, "too many --upstream"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults),
		cmocka_unit_test(listen_forms),
		cmocka_unit_test(listen_bad),
		cmocka_unit_test(listen_limit),
		cmocka_unit_test(listen_tls_forms),
		cmocka_unit_test(parse_addr_direct),
		cmocka_unit_test(upstream_forms),
		cmocka_unit_test(upstream_bad),
		cmocka_unit_test(upstream_pins),
		cmocka_unit_test(threads_bounds),
		cmocka_unit_test(udp_io_modes),
		cmocka_unit_test(steering_modes),
		cmocka_unit_test(batch_us_bounds),
		cmocka_unit_test(ecs_and_servfail_ttl),
		cmocka_unit_test(timeout_forms),
		cmocka_unit_test(other_numbers),
		cmocka_unit_test(errors_and_exits),
		cmocka_unit_test(parse_is_repeatable),
		cmocka_unit_test(metrics_allow),
		cmocka_unit_test(switches_and_keywords),
		cmocka_unit_test(file_layers),
		cmocka_unit_test(reload_keeps_restart_settings),
		cmocka_unit_test(forward_forms),
		cmocka_unit_test(forward_repeat_adds),
		cmocka_unit_test(upstream_is_forward_root),
		cmocka_unit_test(forward_layers),
		cmocka_unit_test(plain_default_needs_switch),
		cmocka_unit_test(forward_bad),
		cmocka_unit_test(forward_hyphen_zone),
		cmocka_unit_test(forward_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
