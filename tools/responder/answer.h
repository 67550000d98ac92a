/* answer.h - how dot-responder answers one query: the fixed A/AAAA record,
 * the TTL (--ttl, or the name's first label with --name-ttl), NXDOMAIN with
 * an SOA for "t<N>-nx..." names, the echoed OPT, and FORMERR / NOTIMP /
 * BADVERS for queries it cannot read. No I/O, no TLS.
 */
#ifndef DOT_RESPONDER_ANSWER_H
#define DOT_RESPONDER_ANSWER_H

#include "responder-t.h"

enum { ANS_DROP = -1, ANS_CLOSE = -2 };

/* Build the answer to query q (len bytes) as behaviour bh says, into out.
 * Returns its length, ANS_DROP (a response: send nothing) or ANS_CLOSE
 * (unreadable, or out too small: close the connection). Counts nxdomain and
 * errors_answered in s. Hot path, no allocation; out_cap >= ANSWER_MAX - 2
 * always suffices. */
int answer_build(shard_t *s, const behave_t *bh, const uint8_t *q, size_t len, uint8_t *out,
		 size_t out_cap);

#endif
