/* tcpframe.h - DNS over TCP stream framing (RFC 1035 4.2.2, RFC 7766).
 *
 * Each message on a TCP stream (client or TLS upstream) travels behind a
 * 2-byte big-endian length. dp_tcpframe_split() cuts the complete messages
 * out of the bytes received so far, in place, and says how many bytes it
 * consumed; the caller keeps the rest for the next receive. Pure, no I/O,
 * no allocation: the fuzz target drives it directly.
 */
#ifndef DP_TCPFRAME_H
#define DP_TCPFRAME_H

#include "dp.h"

/* Called for each complete message; a negative return stops the split and
 * is passed back to the caller. */
typedef int (*dp_tcpframe_cb)(void *ctx, uint8_t *msg, size_t len);

/* Split buf[0..len) into messages. Returns the number of bytes consumed
 * (complete frames), DP_E_MALFORMED for a zero-length frame, or the
 * callback's negative return. Hot path. */
long dp_tcpframe_split(uint8_t *buf, size_t len, dp_tcpframe_cb cb, void *ctx);

/* Bytes still needed to complete the frame that starts at buf (len bytes
 * held so far): 0 when at least one full frame is there. */
size_t dp_tcpframe_need(const uint8_t *buf, size_t len);

#endif
