/* tls-t.h - the buffers a TLS session's BIO works on (types only). */
#ifndef DP_TLS_T_H
#define DP_TLS_T_H

#include "buf.h"

/* Owned by the connection; tls.c's BIO reads ciphertext from rx (from
 * rx_off on, where io_uring put it) and appends ciphertext to *tx (the
 * buffer the next send carries). No copy through memory BIOs. */
typedef struct dp_tls_wire {
	dp_buf_t rx; /* ciphertext received: rx.len octets, taken up to rx_off */
	uint32_t rx_off;
	dp_buf_t *tx; /* ciphertext made, waiting for the next send */
} dp_tls_wire_t;

#endif
