/* http.h - the one HTTP request shape the metrics endpoint accepts.
 * Pure and bounded, so it can be fuzzed: no allocation, no I/O. */
#ifndef DP_HTTP_H
#define DP_HTTP_H

#include "dp.h"

enum { DP_HTTP_GET = 1, DP_HTTP_HEAD = 2, DP_HTTP_OTHER = 3 };

typedef struct dp_http_req {
	int method; /* DP_HTTP_* */
	char path[256]; /* without the query string */
} dp_http_req_t;

/* Parse the head of a request held in buf (len octets, need not be
 * terminated). Returns 1 when a complete head (ending in an empty line) was
 * parsed into r, 0 when more bytes are needed, DP_E_MALFORMED when it is not
 * a well formed HTTP/1.x request line, DP_E_TOOBIG when the head exceeds
 * max octets. */
int dp_http_parse(const char *buf, size_t len, size_t max, dp_http_req_t *r);

#endif
