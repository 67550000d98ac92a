/* fuzz_http.c - the metrics endpoint's request parser. Invariants: a
 * parsed request has a path that starts with '/', holds no spaces or
 * control octets and is terminated; "need more" only before the limit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s (line %d)\n", #x, __LINE__); abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	dp_http_req_t r;
	size_t max = 4095;
	int rc = dp_http_parse((const char *)data, size, max, &r);
	CHECK(rc == 1 || rc == 0 || rc == DP_E_MALFORMED || rc == DP_E_TOOBIG);
	if (rc == 0)
		CHECK(size < max);
	if (rc == 1) {
		size_t pl = strnlen(r.path, sizeof(r.path));
		CHECK(pl > 0 && pl < sizeof(r.path));
		CHECK(r.path[0] == '/');
		for (size_t i = 0; i < pl; i++)
			CHECK((unsigned char)r.path[i] > 32 && (unsigned char)r.path[i] < 127);
		CHECK(r.method >= 1 && r.method <= 3);
	}
	return 0;
}
