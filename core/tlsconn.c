/* tlsconn.c - DNS-over-TLS and DNS-over-HTTPS client connections (see
 * tlsconn.h): handshakes within a budget per loop turn, decryption into
 * tcpconn (through an HTTP/2 session for HTTPS), encryption of tcpconn's
 * sends, the ciphertext send queue, the handshake timeout. */
#include "tlsconn.h"
#include "tls.h"
#include "tlssrv.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>

#define HOFF offsetof(dp_tlsc_t, hlink)
#define DOFF offsetof(dp_tlsc_t, dlink)
#define PLAIN_SIZE 16384 /* one TLS record's plaintext at most */

static void count(dp_tlsconns_t *t, int which)
{
	t->io->stat(t->ctx, which);
}

int dp_tlsconn_init(dp_tlsconns_t *t, dp_tcpconns_t *tcp, const dp_tlsconn_io_t *io, void *ctx)
{
	memset(t, 0, sizeof(*t));
	uint32_t n = tcp->cap + tcp->reserve;
	/* calloc of a large table maps zero pages: unused slots cost no RSS. */
	t->c = calloc(n, sizeof(dp_tlsc_t));
	t->plain = malloc(PLAIN_SIZE);
	if (!t->c || !t->plain) {
		free(t->c);
		free(t->plain);
		memset(t, 0, sizeof(*t));
		return -ENOMEM;
	}
	t->tcp = tcp;
	t->io = io;
	t->ctx = ctx;
	t->n = n;
	t->handshaking = t->deferred = DP_LIST_EMPTY;
	t->budget = DP_TLSCONN_HS_PER_TURN;
	return 0;
}

/* What slot idx holds beyond tcpconn's buffers, as the table's budget
 * counts it: its ciphertext, carried (w.rx, unless it is a receive's
 * buffer lent to the BIO) and queued, an estimate of BoringSSL's state
 * while its handshake is not done, and its HTTP/2 session. */
static size_t footprint(const dp_tlsc_t *c)
{
	return (c->rx_lent ? 0 : (size_t)c->w.rx.cap) + c->wq.out.cap + c->wq.fill.cap +
	       (c->hs_done ? 0 : DP_TLSCONN_HS_COST) + (c->doh ? dp_doh_footprint(c->doh) : 0);
}

/* Bring slot idx's charge in tcpconn's budget up to its footprint; over
 * the budget, close it. Returns false when it was refused. */
static bool charge(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	size_t now = footprint(c);
	if (now == c->charged)
		return true;
	if (!dp_tcpconn_charge(t->tcp, idx, (ptrdiff_t)now - (ptrdiff_t)c->charged)) {
		dp_tcpconn_close(t->tcp, idx);
		return false;
	}
	c->charged = now;
	return true;
}

static void clear_slot(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	if (c->charged)
		dp_tcpconn_charge(t->tcp, idx, -(ptrdiff_t)c->charged);
	if (c->hs_listed)
		dp_list_remove(&t->handshaking, t->c, sizeof(dp_tlsc_t), HOFF, idx);
	if (c->deferred)
		dp_list_remove(&t->deferred, t->c, sizeof(dp_tlsc_t), DOFF, idx);
	SSL_free(c->ssl);
	dp_doh_free(c->doh);
	dp_buf_free(&c->w.rx);
	dp_sendq_free(&c->wq);
	memset(c, 0, sizeof(*c));
}

void dp_tlsconn_free(dp_tlsconns_t *t)
{
	if (!t->c)
		return;
	for (uint32_t i = 0; i < t->n; i++) {
		if (!t->c[i].ssl)
			continue;
		t->c[i].hs_listed = t->c[i].deferred = false; /* the lists go too */
		t->c[i].charged = 0; /* and the budget */
		clear_slot(t, i);
	}
	free(t->c);
	free(t->plain);
	dp_buf_free(&t->frames);
	dp_buf_free(&t->hout);
	t->c = NULL;
	t->n = 0; /* dp_tlsconn_is is false for every slot from now on */
	t->plain = NULL;
}

int dp_tlsconn_open(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, SSL_CTX *ctx, uint64_t now_ms,
		    bool https)
{
	if (idx >= t->n)
		return DP_E_TLS;
	dp_tlsc_t *c = &t->c[idx];
	if (c->ssl)
		clear_slot(t, idx); /* cannot be: dropped when its slot was closed */
	if (!dp_tcpconn_charge(t->tcp, idx, DP_TLSCONN_HS_COST))
		return DP_E_TLS; /* the budget is spent */
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		dp_tcpconn_charge(t->tcp, idx, -(ptrdiff_t)DP_TLSCONN_HS_COST);
	if (!ssl) {
		ERR_clear_error();
		return DP_E_TLS;
	}
	c->w.tx = &c->wq.fill; /* the BIO appends to what the next send takes */
	if (dp_tls_bind_wire(ssl, &c->w) < 0) {
		SSL_free(ssl);
		dp_tcpconn_charge(t->tcp, idx, -(ptrdiff_t)DP_TLSCONN_HS_COST);
		return DP_E_TLS;
	}
	SSL_set_accept_state(ssl);
	if (https)
		dp_tlssrv_set_https(ssl);
	/* The certificate, ALPN and other handshake settings are not needed
	 * once it is done: free them (idle clients cost less). */
	SSL_set_shed_handshake_config(ssl, 1);
	c->ssl = ssl;
	c->https = https;
	c->charged = DP_TLSCONN_HS_COST;
	c->gen = gen;
	c->born_ms = now_ms;
	c->hlink = c->dlink = (dp_link_t){ DP_NONE, DP_NONE };
	dp_list_push_tail(&t->handshaking, t->c, sizeof(dp_tlsc_t), HOFF, idx);
	c->hs_listed = true;
	return 0;
}

void dp_tlsconn_drop(dp_tlsconns_t *t, uint32_t idx)
{
	if (dp_tlsconn_is(t, idx) && !t->teardown)
		clear_slot(t, idx);
}

/* ---- sending ciphertext ----------------------------------------------------- */

/* Start the next ciphertext send of idx, if none is in flight and there is
 * something to send (nothing once tcpconn closes it: its socket is shut).
 * The send holds the tcpconn slot until it completes. */
static void out_pump(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	dp_tcpc_t *tc = &t->tcp->c[idx];
	if (c->sending || tc->closing)
		return;
	bool swap = c->wq.off >= c->wq.out.len; /* fill becomes out */
	const uint8_t *p;
	size_t n = dp_sendq_start(&c->wq, &p);
	if (n == 0)
		return;
	if (swap && c->pt == DP_TLSC_PT_FILL)
		c->pt = DP_TLSC_PT_OUT;
	if (!dp_tcpconn_hold(t->tcp, idx, c->gen)) {
		dp_sendq_done(&c->wq, -EPIPE); /* cannot be: we are called on a live slot */
		return;
	}
	c->sending = true;
	t->io->send(t->ctx, idx, c->gen, tc->fd, p, n);
}

/* Nothing is being sent and tcpconn's send must complete: SSL_write
 * failed (with an error), or (HTTP/2) its answers are in the session (with
 * success). It must complete from a completion, never inside its own
 * call: an empty send brings one. */
static void poke(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	if (c->sending || !dp_tcpconn_hold(t->tcp, idx, c->gen))
		return;
	c->sending = c->poked = true;
	t->io->send(t->ctx, idx, c->gen, t->tcp->c[idx].fd, c->wq.out.data, 0);
}

/* ---- DNS-over-HTTPS ---------------------------------------------------------- */

static void doh_count(void *ctx, int which)
{
	dp_tlsconns_t *t = ctx;
	t->io->doh_stat(t->ctx, which);
}

/* The session of idx is over (GOAWAY): close once its output is sent. */
static void doh_end(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	c->failed = true; /* nothing more is read; closed when the queue is out */
	out_pump(t, idx);
	if (!c->sending && dp_sendq_queued(&c->wq) == 0)
		dp_tcpconn_close(t->tcp, idx);
}

/* Encrypt HTTP/2 output p[0..n) (whole frames) for ssl: a TLS record per
 * response, each ending with the frame that ends its stream. A client may
 * read a record at a time and expect no more than one response in it
 * (dnsperf 2.10 loses the second one); a record costs about 30 octets and
 * one seal. Returns false when SSL_write fails. */
static bool doh_seal(SSL *ssl, const uint8_t *p, size_t n)
{
	size_t start = 0, off = 0;
	while (off + 9 <= n) {
		size_t flen = (size_t)p[off] << 16 | (size_t)p[off + 1] << 8 | p[off + 2];
		uint8_t type = p[off + 3], flags = p[off + 4];
		off = DP_MIN(n, off + 9 + flen);
		bool ends = (type == 0 /* DATA */ || type == 1 /* HEADERS */) && (flags & 1);
		if (ends || off == n) {
			int len = (int)(off - start);
			if (SSL_write(ssl, p + start, len) != len)
				return false;
			start = off;
		}
	}
	return start == n || SSL_write(ssl, p + start, (int)(n - start)) == (int)(n - start);
}

/* Encrypt what the session of idx has to send into its queue, and send it.
 * Closes the connection when that fails or when the client lets answers
 * pile up behind its flow-control window. Returns false when closed. */
static bool doh_flush(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	t->hout.len = 0;
	bool ok = dp_doh_output(c->doh, &t->hout) == 0 && t->hout.len <= INT_MAX;
	ERR_clear_error();
	if (ok && t->hout.len)
		ok = doh_seal(c->ssl, t->hout.data, t->hout.len);
	ERR_clear_error();
	if (t->hout.cap > 4 * PLAIN_SIZE)
		dp_buf_free(&t->hout); /* a burst's buffer is not kept */
	t->hout.len = 0;
	/* What waits for the client: answers its flow-control window holds
	 * back, and everything encrypted it has not taken (4xx, acks, window
	 * updates too: none goes through tcpconn's bound). */
	bool slow = dp_doh_pending(c->doh) + dp_sendq_queued(&c->wq) > DP_TCPCONN_WQ_MAX;
	if (!ok || slow) {
		count(t, ok ? DP_TLSC_DOH_SLOW : DP_TLSC_ERROR);
		dp_tcpconn_close(t->tcp, idx);
		return false;
	}
	if (!charge(t, idx))
		return false;
	if (dp_doh_done(c->doh))
		doh_end(t, idx);
	else
		out_pump(t, idx);
	return true;
}

/* The handshake of HTTPS slot idx is done: its session, and our SETTINGS.
 * Returns false when it was closed. */
static bool doh_start(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	c->doh = dp_doh_new(t->io->doh_path(t->ctx), doh_count, t);
	if (!c->doh) {
		count(t, DP_TLSC_ERROR);
		dp_tcpconn_close(t->tcp, idx);
		return false;
	}
	return doh_flush(t, idx);
}

/* n octets of plaintext in t->plain for the session of idx: the queries
 * it completes go to tcpconn as received frames; then its output. */
static void doh_input(dp_tlsconns_t *t, uint32_t idx, size_t n)
{
	dp_tlsc_t *c = &t->c[idx];
	t->frames.len = 0;
	int rc = dp_doh_recv(c->doh, t->plain, n, &t->frames);
	if (rc == -ENOMEM) {
		count(t, DP_TLSC_ERROR);
		dp_tcpconn_close(t->tcp, idx);
		return;
	}
	if (t->frames.len)
		dp_tcpconn_on_recv(t->tcp, idx, c->gen, (int)t->frames.len, true, t->frames.data);
	t->frames.len = 0;
	if (t->frames.cap > 4 * PLAIN_SIZE)
		dp_buf_free(&t->frames);
	if (t->tcp->c[idx].closing)
		return;
	if (doh_flush(t, idx) && rc < 0 && !c->failed)
		doh_end(t, idx); /* the GOAWAY is queued: close once it is out */
}

/* tcpconn's send on HTTPS slot idx: its answers go into the session
 * (copied), and what the session makes of them is encrypted into the
 * queue. The send completes, as a TLS one does, when that ciphertext is
 * sent (pt FILL, then OUT when out_pump takes it); when none was queued
 * (the client's window holds them all), at the next send completion, an
 * empty one when nothing is being sent. */
static void doh_send(dp_tlsconns_t *t, uint32_t idx, const uint8_t *buf, size_t len)
{
	dp_tlsc_t *c = &t->c[idx];
	if (t->tcp->c[idx].closing || c->failed) {
		c->pt_failed = true;
	} else if (dp_doh_answer(c->doh, buf, len) < 0) {
		count(t, DP_TLSC_ERROR);
		c->pt_failed = true;
		dp_tcpconn_close(t->tcp, idx);
	} else if (!doh_flush(t, idx)) {
		c->pt_failed = true;
	}
	if (c->pt == DP_TLSC_PT_FILL && (c->pt_failed || c->wq.fill.len == 0))
		c->pt = DP_TLSC_PT_OUT; /* nothing of it waits in fill */
	if (!c->sending)
		poke(t, idx);
}

void dp_tlsconn_send(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, const uint8_t *buf,
		     size_t len)
{
	dp_tlsc_t *c = &t->c[idx];
	c->pt = DP_TLSC_PT_FILL;
	c->pt_len = (uint32_t)len;
	if (c->doh && gen == c->gen) {
		doh_send(t, idx, buf, len);
		return;
	}
	ERR_clear_error();
	if (gen != c->gen || !c->hs_done || len > INT_MAX ||
	    SSL_write(c->ssl, buf, (int)len) != (int)len) {
		ERR_clear_error();
		count(t, DP_TLSC_ERROR);
		c->pt_failed = true;
	} else if (!charge(t, idx)) {
		c->pt_failed = true; /* closed: tcpconn's send completes with an error */
	}
	out_pump(t, idx);
	if (c->pt_failed && !c->sending)
		poke(t, idx);
}

/* tcpconn's send is over: its ciphertext is sent (res, its length), or
 * will never be (a negative errno). */
static void pt_complete(dp_tlsconns_t *t, uint32_t idx, int res)
{
	dp_tlsc_t *c = &t->c[idx];
	c->pt = DP_TLSC_PT_NONE;
	c->pt_failed = false;
	dp_tcpconn_on_send(t->tcp, idx, c->gen, res);
}

void dp_tlsconn_on_send(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, int res)
{
	if (idx >= t->n)
		return;
	dp_tlsc_t *c = &t->c[idx];
	if (!c->ssl || c->gen != gen || !c->sending)
		return; /* cannot be: the send held the slot */
	c->sending = false;
	if (res > 0)
		dp_tcpconn_progress(t->tcp, idx); /* its client reads, if slowly */
	int left = c->poked ? (c->pt_failed ? -EIO : 0)
			    : dp_sendq_done(&c->wq, res == 0 ? -EPIPE : res);
	c->poked = false;
	dp_tcpc_t *tc = &t->tcp->c[idx];
	if (left < 0 || tc->closing || c->pt_failed) {
		if (c->pt != DP_TLSC_PT_NONE)
			pt_complete(t, idx, left < 0 ? left : -EPIPE);
		dp_tcpconn_close(t->tcp, idx);
	} else {
		if (left == 0 && c->pt == DP_TLSC_PT_OUT)
			pt_complete(t, idx, (int)c->pt_len); /* it may send again at once */
		if (c->failed && !c->sending && dp_sendq_queued(&c->wq) == 0)
			dp_tcpconn_close(t->tcp, idx); /* the alert is out */
		else
			out_pump(t, idx);
		if (!c->sending && c->pt == DP_TLSC_PT_NONE && dp_sendq_queued(&c->wq) == 0)
			dp_sendq_free(&c->wq); /* all sent, tcpconn's send too: idle
						* clients keep no send buffer */
	}
	charge(t, idx);
	dp_tcpconn_release(t->tcp, idx); /* may finalize: c is gone after */
}

/* ---- receiving ---------------------------------------------------------------- */

/* One handshake step over the ciphertext received. Returns true when the
 * handshake is done (and the connection goes on). */
static bool handshake(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	ERR_clear_error();
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		c->hs_done = true;
		dp_list_remove(&t->handshaking, t->c, sizeof(dp_tlsc_t), HOFF, idx);
		c->hs_listed = false;
		count(t, DP_TLSC_HANDSHAKE);
		if (SSL_session_reused(c->ssl))
			count(t, DP_TLSC_RESUMED);
		/* BoringSSL holds the TLS 1.3 tickets until our first write: a
		 * zero-byte one sends them now. A client whose first query waits
		 * behind Nagle for an ACK of its Finished gets one at once
		 * instead of after a delayed ACK (40 ms). */
		ERR_clear_error();
		SSL_write(c->ssl, "", 0);
		ERR_clear_error();
		if (!c->sending && dp_sendq_queued(&c->wq) == 0)
			dp_sendq_free(&c->wq); /* the flight is out: its buffers are not kept */
		return !c->https || doh_start(t, idx);
	}
	if (SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ) {
		if (c->sending || dp_sendq_queued(&c->wq))
			c->replied = true; /* the client may answer our flight now */
		out_pump(t, idx); /* our flight, if the step made one */
		return false;
	}
	/* Refused (no "dot" in its ALPN, an old version, ...) or broken: let
	 * the alert go out, then close (the handshake timeout bounds it). */
	ERR_clear_error();
	count(t, DP_TLSC_HS_FAILED);
	c->failed = true;
	out_pump(t, idx);
	if (!c->sending)
		dp_tcpconn_close(t->tcp, idx);
	return false;
}

/* Hand every record's plaintext to tcpconn, as received data (its
 * receive, if any, is still in flight: more). Bounded by the ciphertext
 * at hand: each read takes at least a record. */
static void read_plain(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	dp_tcpc_t *tc = &t->tcp->c[idx];
	while (!tc->closing) {
		ERR_clear_error();
		int n = SSL_read(c->ssl, t->plain, PLAIN_SIZE);
		if (n > 0 && c->doh) {
			doh_input(t, idx, (size_t)n);
			continue;
		}
		if (n > 0) {
			dp_tcpconn_on_recv(t->tcp, idx, c->gen, n, true, t->plain);
			continue;
		}
		int e = SSL_get_error(c->ssl, n);
		if (e == SSL_ERROR_WANT_READ)
			return;
		ERR_clear_error();
		if (e == SSL_ERROR_ZERO_RETURN) {
			/* close_notify: the client sends no more, as at EOF */
			dp_tcpconn_on_recv(t->tcp, idx, c->gen, 0, true, NULL);
			return;
		}
		count(t, DP_TLSC_ERROR);
		dp_tcpconn_close(t->tcp, idx);
		return;
	}
}

static void defer(dp_tlsconns_t *t, uint32_t idx)
{
	dp_list_push_tail(&t->deferred, t->c, sizeof(dp_tlsc_t), DOFF, idx);
	t->c[idx].deferred = true;
	count(t, DP_TLSC_HS_DEFERRED);
}

/* Follow the record layer (5-octet headers, 2-octet lengths) over
 * ciphertext p[0..n) received during the handshake. Returns true when a
 * record ends in it. */
static bool record_ends(dp_tlsc_t *c, const uint8_t *p, size_t n)
{
	bool ended = false;
	while (n) {
		if (c->rec_body) {
			size_t k = DP_MIN(n, (size_t)c->rec_body);
			c->rec_body = (uint16_t)(c->rec_body - k);
			p += k;
			n -= k;
			ended |= c->rec_body == 0;
			continue;
		}
		uint8_t b = *p++;
		n--;
		if (c->rec_hdr == 3)
			c->rec_len_hi = b;
		if (c->rec_hdr++ < 4)
			continue;
		c->rec_hdr = 0;
		c->rec_body = (uint16_t)(c->rec_len_hi << 8 | b);
		ended |= c->rec_body == 0;
	}
	return ended;
}

/* Work on the ciphertext at hand: a handshake step, then the records'
 * plaintext, then our output. A step over a complete record is work: it
 * takes one of the turn's budget, after those already waiting (else it is
 * deferred); one over part of a record only lets BoringSSL keep it. */
static void process(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	if (c->failed)
		return;
	if (!c->hs_done) {
		if (c->deferred)
			return; /* its turn comes in dp_tlsconn_run */
		if (c->rec_ready) {
			if (t->budget == 0 || (t->deferred.count && !t->in_run)) {
				defer(t, idx);
				return;
			}
			t->budget--;
			c->rec_ready = false;
		}
		if (!handshake(t, idx))
			return;
	}
	read_plain(t, idx);
	out_pump(t, idx);
}

/* Drop the ciphertext read from the carried buffer; free it once empty
 * after the handshake (idle clients keep none). */
static void compact(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tls_wire_t *w = &t->c[idx].w;
	dp_buf_consume(&w->rx, w->rx_off);
	w->rx_off = 0;
	if (w->rx.len == 0 && w->rx.cap && t->c[idx].hs_done)
		dp_buf_free(&w->rx);
}

/* n octets of ciphertext received. With nothing carried, they are read
 * where they landed (BoringSSL keeps a split record's start itself) and
 * only what no step could read yet (a deferred handshake's) is copied.
 * Nothing is kept of what a refused or closing client sends. */
static void feed(dp_tlsconns_t *t, uint32_t idx, uint8_t *data, size_t n)
{
	dp_tlsc_t *c = &t->c[idx];
	dp_tls_wire_t *w = &c->w;
	if (c->failed)
		return; /* its alert goes out, then it is closed */
	/* Before our first flight a client has nothing to send but its
	 * ClientHello: what comes beyond a generous one is not kept. */
	size_t max = c->replied || c->hs_done ? DP_TLSCONN_RX_MAX : DP_TLSCONN_HELLO_MAX;
	if (!c->hs_done && record_ends(c, data, n))
		c->rec_ready = true;
	if (w->rx.len == 0) {
		dp_buf_t own = w->rx;
		w->rx = (dp_buf_t){ data, (uint32_t)n, (uint32_t)n };
		w->rx_off = 0;
		c->rx_lent = true;
		process(t, idx);
		c->rx_lent = false;
		size_t rest = n - w->rx_off;
		w->rx = own;
		w->rx_off = 0;
		if (rest == 0 || c->failed || t->tcp->c[idx].closing)
			return;
		if (rest <= max && dp_buf_append(&w->rx, data + (n - rest), rest, 4096))
			return;
	} else if (w->rx.len + n <= max && dp_buf_append(&w->rx, data, n, 4096)) {
		process(t, idx);
		compact(t, idx);
		return;
	}
	count(t, DP_TLSC_ERROR); /* out of memory, or a client that never ends a record */
	dp_tcpconn_close(t->tcp, idx);
}

void dp_tlsconn_on_recv(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, int res, bool more,
			uint8_t *data)
{
	if (!dp_tcpconn_hold(t->tcp, idx, gen))
		return;
	if (res > 0 && data && !t->tcp->c[idx].closing) {
		feed(t, idx, data, (size_t)res);
		charge(t, idx);
	}
	/* Last, the receive's end as tcpconn sees it: its count of operations,
	 * EOF, errors, the next receive. */
	if (!more)
		dp_tcpconn_on_recv(t->tcp, idx, gen, res, false, NULL);
	dp_tcpconn_release(t->tcp, idx);
}

long dp_tlsconn_read_now(dp_tlsconns_t *t, uint32_t idx, int fd, uint8_t *buf, size_t cap)
{
	dp_tlsc_t *c = &t->c[idx];
	if (!c->hs_done || c->failed || c->https)
		return 0; /* (HTTPS: its streams in flight are answered, no new one read) */
	uint8_t tmp[4096];
	for (int i = 0; i < 64; i++) {
		ERR_clear_error();
		int n = SSL_read(c->ssl, buf, (int)DP_MIN(cap, (size_t)INT_MAX));
		if (n > 0) {
			compact(t, idx);
			charge(t, idx);
			return n;
		}
		int e = SSL_get_error(c->ssl, n);
		ERR_clear_error();
		if (e != SSL_ERROR_WANT_READ)
			return e == SSL_ERROR_ZERO_RETURN ? 0 : -EPROTO;
		long r = t->io->read_now(t->ctx, fd, tmp, sizeof(tmp));
		if (r <= 0)
			return r;
		if (c->w.rx.len + (size_t)r > DP_TLSCONN_RX_MAX ||
		    !dp_buf_append(&c->w.rx, tmp, (size_t)r, 4096) || !charge(t, idx))
			return -ENOMEM;
	}
	return -EAGAIN;
}

void dp_tlsconn_goodbye(dp_tlsconns_t *t, uint32_t idx, int fd)
{
	if (!dp_tlsconn_is(t, idx) || t->teardown)
		return;
	dp_tlsc_t *c = &t->c[idx];
	if (!c->hs_done || c->failed || c->sending || dp_sendq_queued(&c->wq))
		return; /* mid-handshake, an alert sent, or ciphertext that must go first */
	if (c->doh && !dp_doh_done(c->doh)) {
		dp_doh_goodbye(c->doh);
		t->hout.len = 0;
		if (dp_doh_output(c->doh, &t->hout) == 0 && t->hout.len)
			doh_seal(c->ssl, t->hout.data, t->hout.len);
		t->hout.len = 0;
	}
	ERR_clear_error();
	SSL_shutdown(c->ssl); /* close_notify, appended to wq.fill */
	ERR_clear_error();
	if (c->wq.fill.len)
		t->io->write_now(t->ctx, fd, c->wq.fill.data, c->wq.fill.len);
	c->failed = true; /* nothing more goes out of this one */
	dp_sendq_free(&c->wq);
	charge(t, idx);
}

size_t dp_tlsconn_unsent(const dp_tlsconns_t *t, uint32_t idx)
{
	return dp_tlsconn_is(t, idx) ? dp_sendq_queued(&t->c[idx].wq) : 0;
}

/* ---- once per turn, once per tick ------------------------------------------- */

void dp_tlsconn_run(dp_tlsconns_t *t)
{
	t->budget = DP_TLSCONN_HS_PER_TURN;
	t->in_run = true;
	while (t->budget && t->deferred.head != DP_NONE) {
		uint32_t idx = t->deferred.head;
		dp_tlsc_t *c = &t->c[idx];
		dp_list_remove(&t->deferred, t->c, sizeof(dp_tlsc_t), DOFF, idx);
		c->deferred = false;
		if (!dp_tcpconn_hold(t->tcp, idx, c->gen))
			continue;
		if (!t->tcp->c[idx].closing) {
			process(t, idx);
			compact(t, idx);
			charge(t, idx);
		}
		dp_tcpconn_release(t->tcp, idx);
	}
	t->in_run = false;
}

void dp_tlsconn_expire(dp_tlsconns_t *t, uint64_t now_ms, uint32_t limit_ms)
{
	while (t->handshaking.head != DP_NONE) {
		uint32_t idx = t->handshaking.head;
		dp_tlsc_t *c = &t->c[idx];
		if (now_ms - c->born_ms < limit_ms)
			break;
		dp_list_remove(&t->handshaking, t->c, sizeof(dp_tlsc_t), HOFF, idx);
		c->hs_listed = false;
		if (!t->tcp->c[idx].closing) {
			count(t, DP_TLSC_HS_TIMEOUT);
			dp_tcpconn_close(t->tcp, idx);
		}
	}
}
