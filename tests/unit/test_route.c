/* test_route.c - dp_route_zone: which forwarding zone a query name goes to.
 * The zones come from the real option parser (--forward), so a test reads
 * as the command line an operator would write; each lookup names the zone
 * it expects by its text ("corp.example."), never by a bare index. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "route.h"

static dp_config_t cfg;

/* cfg from the defaults and one --forward ZONE=udp://192.0.2.1 per zone
 * given (NULL-terminated). */
static void zones(const char *first, ...)
{
	char *argv[80], vals[38][300];
	int argc = 0, n = 0;
	argv[argc++] = (char *)"dotproxy";
	va_list ap;
	va_start(ap, first);
	for (const char *z = first; z; z = va_arg(ap, const char *)) {
		assert_true(n < 38);
		snprintf(vals[n], sizeof(vals[n]), "%s=udp://192.0.2.1", z);
		argv[argc++] = (char *)"--forward";
		argv[argc++] = vals[n++];
	}
	va_end(ap);
	argv[argc] = NULL;
	char err[512] = "";
	dp_config_defaults(&cfg);
	int rc = dp_config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (rc != 0)
		fail_msg("parse: %s", err);
	assert_int_equal(cfg.nzones, n + 1);
}

/* Dotted text into wire form ("" or "." the root); returns its length. */
static size_t wire_of(const char *dotted, uint8_t *out)
{
	size_t o = 0;
	const char *p = strcmp(dotted, ".") == 0 ? "" : dotted;
	while (*p) {
		size_t l = strcspn(p, ".");
		assert_true(l >= 1 && l <= 63 && o + l + 2 <= DP_DNS_MAX_NAME + 1);
		out[o++] = (uint8_t)l;
		memcpy(out + o, p, l);
		o += l;
		p += l + (p[l] == '.');
	}
	out[o++] = 0;
	return o;
}

/* The text of the zone that name (dotted) routes to: "." for the root. */
static const char *route(const char *name)
{
	uint8_t w[DP_DNS_MAX_NAME + 1];
	size_t len = wire_of(name, w);
	uint32_t z = dp_route_zone(&cfg, w, len);
	assert_true(z < (uint32_t)cfg.nzones);
	return cfg.zone[z].text;
}

/* Catches: the first (or the shortest) matching zone winning over the
 * longest, in either order of configuration. */
static void longest_suffix_wins(void **state)
{
	for (int order = 0; order < 2; order++) {
		if (order == 0)
			zones("corp.example", "a.corp.example", NULL);
		else
			zones("a.corp.example", "corp.example", NULL);
		assert_string_equal(route("www.a.corp.example"), "a.corp.example.");
		assert_string_equal(route("a.corp.example"), "a.corp.example.");
		assert_string_equal(route("b.corp.example"), "corp.example.");
		assert_string_equal(route("x.b.corp.example"), "corp.example.");
		assert_string_equal(route("corp.example"), "corp.example.");
		/* Shorter than either zone, or another branch: the default. */
		assert_string_equal(route("example"), ".");
		assert_string_equal(route("www.example.com"), ".");
		assert_string_equal(route("."), ".");
		assert_string_equal(route("corp.example.com"), ".");
	}
}

/* Catches: a case-sensitive compare (queries arrive in any case, 0x20
 * resolvers mix it on purpose) and a zone kept as the operator typed it. */
static void case_insensitive(void **state)
{
	zones("Corp.EXAMPLE", NULL);
	assert_string_equal(cfg.zone[1].text, "corp.example.");
	assert_string_equal(route("www.corp.example"), "corp.example.");
	assert_string_equal(route("WWW.CORP.EXAMPLE"), "corp.example.");
	assert_string_equal(route("wWw.cOrP.eXaMpLe"), "corp.example.");
	/* Only ASCII letters fold: a naive c | 0x20 would take DEL (0x7f)
	 * for '_' (0x5f) and CR (0x0d) for '-' (0x2d). */
	zones("a_", "b-c", NULL);
	assert_string_equal(route("x.A_"), "a_.");
	assert_string_equal(route("x.a\x7f"), ".");
	assert_string_equal(route("x.B-C"), "b-c.");
	assert_string_equal(route("x.b\r"), ".");
}

/* Catches: a plain byte-suffix compare. "example" is a suffix of the
 * octets of "xexample" and of a label that holds "\7example" inside it,
 * but neither name is at or below the zone. */
static void label_boundary(void **state)
{
	zones("example", NULL);
	assert_string_equal(route("www.example"), "example.");
	assert_string_equal(route("example"), "example.");
	assert_string_equal(route("xexample"), ".");
	assert_string_equal(route("www.badexample"), ".");
	assert_string_equal(route("example.com"), ".");
	/* One 9-octet label: 'a', then octets that read as "\7example". */
	static const uint8_t inner[] = { 9, 'a', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0 };
	assert_int_equal(dp_route_zone(&cfg, inner, sizeof(inner)), 0);
	/* The same octets as two labels are below the zone. */
	static const uint8_t two[] = { 1, 'a', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0 };
	assert_int_equal(dp_route_zone(&cfg, two, sizeof(two)), 1);
}

/* Catches: a number label matched by its tail ("110" under zone "10"),
 * and the more specific reverse zone losing to its parent. */
static void reverse_zones(void **state)
{
	zones("in-addr.arpa", "10.in-addr.arpa", "ip6.arpa",
	      "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", NULL);
	assert_string_equal(route("4.3.2.10.in-addr.arpa"), "10.in-addr.arpa.");
	assert_string_equal(route("10.in-addr.arpa"), "10.in-addr.arpa.");
	assert_string_equal(route("4.3.2.110.in-addr.arpa"), "in-addr.arpa.");
	assert_string_equal(route("4.3.2.1.in-addr.arpa"), "in-addr.arpa.");
	assert_string_equal(route("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2."
				  "ip6.arpa"),
			    "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.");
	assert_string_equal(route("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.b.d.0.1.0.0.2."
				  "ip6.arpa"),
			    "ip6.arpa.");
	assert_string_equal(route("arpa"), ".");
}

/* Catches: a lookup that reads the name (or spends any work) when only the
 * default route exists: the name pointer is not even valid. */
static void root_alone_costs_nothing(void **state)
{
	zones(NULL);
	assert_int_equal(cfg.nzones, 1);
	assert_int_equal(dp_route_zone(&cfg, NULL, 20), 0);
	assert_string_equal(route("www.example.com"), ".");
	/* "." given again: still the root alone. */
	zones(NULL);
	char *argv[] = { "dotproxy", "--forward", ".=192.0.2.9#x", NULL };
	char err[256];
	dp_config_defaults(&cfg);
	assert_int_equal(dp_config_parse_args(&cfg, 3, argv, err, sizeof(err)), 0);
	assert_int_equal(cfg.nzones, 1);
	assert_int_equal(dp_route_zone(&cfg, NULL, 20), 0);
}

/* n copies of c, as a label. */
static void label(char *out, size_t n, char c)
{
	memset(out, c, n);
	out[n] = 0;
}

/* Catches: the label-start bitmap sized or indexed short (label offsets
 * up to 254), a zone of the maximum length, and names past 255 octets
 * (not a name: the default, without reading past the end). */
static void longest_names(void **state)
{
	char l63[64], l61[62], text[300];
	label(l63, 63, 'a');
	label(l61, 61, 'c');
	/* A zone of 255 octets: three 63-octet labels and a 61-octet one. */
	snprintf(text, sizeof(text), "%s.%s.%s.%s", l63, l63, l63, l61);
	zones(text, "b.example", NULL);
	assert_int_equal(cfg.zone[1].wire_len, 255);
	assert_string_equal(route(text), cfg.zone[1].text);
	text[0] = 'b'; /* the same length, one octet different: not it */
	assert_string_equal(route(text), ".");

	/* A 255-octet name whose last label (63 octets) starts at offset 190
	 * and is the zone. */
	zones(l63, NULL);
	snprintf(text, sizeof(text), "%s.%s.%s.%s", l63, l61, l63, l63);
	uint8_t w[DP_DNS_MAX_NAME + 1];
	size_t len = wire_of(text, w);
	assert_int_equal(len, 255);
	assert_int_equal(dp_route_zone(&cfg, w, len), 1);
	w[191] = 'b'; /* that label changed: the default */
	assert_int_equal(dp_route_zone(&cfg, w, len), 0);
	/* The last label at offset 192: past three 64-bit words of starts. */
	zones(l61, NULL);
	snprintf(text, sizeof(text), "%s.%s.%s.%s", l63, l63, l63, l61);
	len = wire_of(text, w);
	assert_int_equal(len, 255);
	assert_int_equal(w[192], 61);
	assert_int_equal(dp_route_zone(&cfg, w, len), 1);

	/* One octet more than a name can have: the default. */
	uint8_t big[DP_DNS_MAX_NAME + 1] = { 0 };
	assert_int_equal(dp_route_zone(&cfg, big, sizeof(big)), 0);
}

/* Catches: a walk that trusts label lengths: a length over 63 (a
 * compression pointer), or a label running past the end, must not make
 * a zone match from an offset that is not a label start. */
static void malformed_names(void **state)
{
	zones("example", NULL);
	static const uint8_t ptr[] = { 1, 'a', 0xc0, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0 };
	assert_int_equal(dp_route_zone(&cfg, ptr, sizeof(ptr)), 0);
	static const uint8_t past[] = { 20, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0 };
	assert_int_equal(dp_route_zone(&cfg, past, sizeof(past)), 0);
	assert_int_equal(dp_route_zone(&cfg, ptr, 0), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(longest_suffix_wins),
		cmocka_unit_test(case_insensitive),
		cmocka_unit_test(label_boundary),
		cmocka_unit_test(reverse_zones),
		cmocka_unit_test(root_alone_costs_nothing),
		cmocka_unit_test(longest_names),
		cmocka_unit_test(malformed_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
