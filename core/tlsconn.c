/* tlsconn.c - DNS-over-TLS client connections (see tlsconn.h): handshakes
 * within a budget per loop turn, decryption into tcpconn, encryption of
 * tcpconn's sends, the ciphertext send queue, the handshake timeout. */
#include "tlsconn.h"
#include "tls.h"

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
 * counts it: its ciphertext, carried and queued, and an estimate of
 * BoringSSL's state while its handshake is not done. Read only while w.rx
 * is its own (not a receive's buffer lent to the BIO). */
static size_t footprint(const dp_tlsc_t *c)
{
	return (size_t)c->w.rx.cap + c->wq.out.cap + c->wq.fill.cap +
	       (c->hs_done ? 0 : DP_TLSCONN_HS_COST);
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
	t->c = NULL;
	t->n = 0; /* dp_tlsconn_is is false for every slot from now on */
	t->plain = NULL;
}

int dp_tlsconn_open(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, SSL_CTX *ctx, uint64_t now_ms)
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
	/* The certificate, ALPN and other handshake settings are not needed
	 * once it is done: free them (idle clients cost less). */
	SSL_set_shed_handshake_config(ssl, 1);
	c->ssl = ssl;
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

/* SSL_write failed and nothing is being sent: tcpconn's send must still
 * complete, from a completion (never inside its own call): an empty send
 * brings one. */
static void poke(dp_tlsconns_t *t, uint32_t idx)
{
	dp_tlsc_t *c = &t->c[idx];
	if (c->sending || !dp_tcpconn_hold(t->tcp, idx, c->gen))
		return;
	c->sending = c->poked = true;
	t->io->send(t->ctx, idx, c->gen, t->tcp->c[idx].fd, c->wq.out.data, 0);
}

void dp_tlsconn_send(dp_tlsconns_t *t, uint32_t idx, uint32_t gen, const uint8_t *buf,
		     size_t len)
{
	dp_tlsc_t *c = &t->c[idx];
	c->pt = DP_TLSC_PT_FILL;
	c->pt_len = (uint32_t)len;
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
	int left = c->poked ? -EIO : dp_sendq_done(&c->wq, res == 0 ? -EPIPE : res);
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
		if (!c->sending && dp_sendq_queued(&c->wq) == 0)
			dp_sendq_free(&c->wq); /* the flight is out: its buffers are not kept */
		return true;
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
		process(t, idx);
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
	if (!c->hs_done || c->failed)
		return 0;
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
