/* test_tlsconn.c - the DNS-over-TLS connection layer (core/tlsconn.c) over
 * the real tcpconn state machine, with a fake transport under both and a
 * BoringSSL client on memory BIOs; and the ticket keys (core/tlssrv.c)
 * under a fake clock.
 *
 * The fake transport: tcpconn's receives are always "armed" (the test
 * delivers ciphertext with dp_tlsconn_on_recv, more = true), tcpconn's
 * sends go to tlsconn as tcp.c routes them, and tlsconn's ciphertext sends
 * are recorded per slot and completed by the test, which feeds them to the
 * client. */
#include "../../core/tlsconn.c"
#include "../../core/doh.c"
#include "../../core/tlssrv.c"
#include "../../core/tls.c"

#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>

#define CAP 16

typedef struct fx {
	dp_tcpconns_t t;
	dp_tlsconns_t tls;
	uint64_t now;
	SSL_CTX *srv, *cli;
	/* per slot: the ciphertext send in flight (tlsconn's) */
	const uint8_t *out[CAP + 8];
	size_t out_len[CAP + 8];
	uint32_t out_gen[CAP + 8];
	bool recv_armed[CAP + 8];
	uint32_t frames;
	uint8_t last_frame[512];
	size_t last_len;
	uint32_t closed;
	uint32_t stat[8];
} fx_t;

static fx_t *F;

/* ---- tcpconn's transport: as tcp.c, without a socket ---- */

static void t_recv(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	F->recv_armed[idx] = true;
}
static void t_recv_cancel(void *ctx, uint32_t idx, uint32_t gen, int fd) {}
static void t_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf, size_t len)
{
	assert_true(dp_tlsconn_is(&F->tls, idx));
	dp_tlsconn_send(&F->tls, idx, gen, buf, len);
}
static void t_shutdown(void *ctx, uint32_t idx, int fd, bool cancel) {}
static long t_read_now(void *ctx, uint32_t idx, int fd, uint8_t *buf, size_t cap)
{
	return -EAGAIN;
}
static long t_zero(void *ctx, uint32_t idx, int fd)
{
	return 0;
}
static void t_close(void *ctx, uint32_t idx, int fd)
{
	F->closed++;
	dp_tlsconn_drop(&F->tls, idx);
}
static int t_frame(void *ctx, uint32_t idx, uint32_t gen, uint8_t li, uint8_t *msg, size_t len)
{
	F->frames++;
	F->last_len = DP_MIN(len, sizeof(F->last_frame));
	memcpy(F->last_frame, msg, F->last_len);
	/* answered at once: the query back with QR set */
	uint8_t a[512];
	memcpy(a, msg, F->last_len);
	a[2] |= 0x80;
	dp_tcpconn_answer(&F->t, idx, gen, a, F->last_len);
	return 0;
}
static uint32_t t_freed(void *ctx)
{
	return 0;
}
static void t_stat(void *ctx, int which, uint64_t v) {}

static const dp_tcpconn_io_t tcp_io = {
	.recv = t_recv, .recv_cancel = t_recv_cancel, .send = t_send, .shutdown = t_shutdown,
	.read_now = t_read_now, .pending = t_zero, .unsent = t_zero, .close = t_close,
	.frame = t_frame, .freed = t_freed, .stat = t_stat,
};

/* ---- tlsconn's transport ---- */

static void l_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf, size_t len)
{
	assert_null(F->out[idx]);
	F->out[idx] = buf ? buf : (const uint8_t *)"";
	F->out_len[idx] = len;
	F->out_gen[idx] = gen;
}
static long l_read_now(void *ctx, int fd, uint8_t *buf, size_t cap)
{
	return -EAGAIN;
}
static void l_stat(void *ctx, int which)
{
	F->stat[which]++;
}
static const dp_tlsconn_io_t tls_io = { .send = l_send, .read_now = l_read_now, .stat = l_stat };

/* ---- a client ---- */

typedef struct client {
	SSL *ssl;
	BIO *in, *out; /* what the server sent us / what we send */
	int fd;
	uint32_t idx;
} client_t;

/* Everything the client has to send, delivered as one receive. */
static void client_push(client_t *c)
{
	uint8_t buf[65536];
	int n = BIO_read(c->out, buf, sizeof(buf));
	if (n > 0) {
		uint32_t gen = F->t.c[c->idx].gen;
		dp_tlsconn_on_recv(&F->tls, c->idx, gen, n, true, buf);
	}
}

/* Complete the ciphertext send in flight of c's slot: all taken, fed to
 * the client. Returns false when none is in flight. */
static bool server_push(client_t *c)
{
	uint32_t i = c->idx;
	if (!F->out[i])
		return false;
	const uint8_t *p = F->out[i];
	size_t n = F->out_len[i];
	F->out[i] = NULL;
	if (n)
		BIO_write(c->in, p, (int)n);
	dp_tlsconn_on_send(&F->tls, i, F->out_gen[i], (int)n);
	return true;
}

static void pump(client_t *c, int rounds)
{
	for (int i = 0; i < rounds; i++) {
		dp_tlsconn_run(&F->tls); /* a new loop turn */
		SSL_do_handshake(c->ssl);
		client_push(c);
		dp_tcpconn_flush(&F->t);
		while (server_push(c))
			dp_tcpconn_flush(&F->t);
	}
}

static void client_open(client_t *c, const char *alpn)
{
	memset(c, 0, sizeof(*c));
	c->ssl = SSL_new(F->cli);
	c->in = BIO_new(BIO_s_mem());
	c->out = BIO_new(BIO_s_mem());
	SSL_set_bio(c->ssl, c->in, c->out);
	SSL_set_connect_state(c->ssl);
	if (alpn) {
		uint8_t p[16] = { (uint8_t)strlen(alpn) };
		memcpy(p + 1, alpn, strlen(alpn));
		SSL_set_alpn_protos(c->ssl, p, 1 + (unsigned)strlen(alpn));
	}
	static int next_fd = 100;
	c->fd = next_fd++;
	int idx = dp_tcpconn_accept(&F->t, c->fd, 0x80); /* DP_LI_TLS | 0 */
	assert_true(idx >= 0);
	c->idx = (uint32_t)idx;
	assert_int_equal(dp_tlsconn_open(&F->tls, c->idx, F->t.c[idx].gen, F->srv, F->now, false), 0);
}

static void client_close(client_t *c)
{
	SSL_free(c->ssl);
}

/* The client's newest ticket (TLS 1.3 tickets come after the handshake). */
static SSL_SESSION *ticket_sess;
static int keep_ticket(SSL *ssl, SSL_SESSION *s)
{
	if (ticket_sess)
		SSL_SESSION_free(ticket_sess);
	ticket_sess = s;
	return 1;
}

/* ---- a throwaway certificate ---- */

static char cert_path[64], key_path[64];

static void make_cert(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	assert_non_null(ec);
	assert_int_equal(EC_KEY_generate_key(ec), 1);
	EVP_PKEY *pk = EVP_PKEY_new();
	EVP_PKEY_assign_EC_KEY(pk, ec);
	X509 *x = X509_new();
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, pk);
	X509_NAME *nm = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const uint8_t *)"dns.test", -1, -1, 0);
	X509_set_issuer_name(x, nm);
	assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
	snprintf(cert_path, sizeof(cert_path), "/tmp/dp-unit-tls-%d.pem", (int)getpid());
	snprintf(key_path, sizeof(key_path), "/tmp/dp-unit-tls-%d.key", (int)getpid());
	FILE *f = fopen(cert_path, "w");
	PEM_write_X509(f, x);
	fclose(f);
	f = fopen(key_path, "w");
	PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(pk);
}

static int setup(void **state)
{
	static fx_t fx;
	memset(&fx, 0, sizeof(fx));
	F = &fx;
	fx.now = 1000;
	assert_int_equal(dp_tcpconn_init(&fx.t, CAP, 8, &tcp_io, &fx, &fx.now), 0);
	assert_int_equal(dp_tlsconn_init(&fx.tls, &fx.t, &tls_io, &fx), 0);
	dp_config_t cfg;
	memset(&cfg, 0, sizeof(cfg));
	snprintf(cfg.cert_file, sizeof(cfg.cert_file), "%s", cert_path);
	snprintf(cfg.key_file, sizeof(cfg.key_file), "%s", key_path);
	cfg.listen_tls_min_version = TLS1_3_VERSION;
	char err[256];
	fx.srv = dp_tlssrv_ctx(&cfg, err, sizeof(err));
	assert_non_null(fx.srv);
	fx.cli = SSL_CTX_new(TLS_method());
	SSL_CTX_set_session_cache_mode(fx.cli, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(fx.cli, keep_ticket);
	*state = &fx;
	return 0;
}

static int teardown(void **state)
{
	F->tls.teardown = true;
	dp_tcpconn_close_all(&F->t);
	dp_tlsconn_free(&F->tls);
	dp_tcpconn_free(&F->t);
	SSL_CTX_free(F->srv);
	SSL_CTX_free(F->cli);
	return 0;
}

/* Client side: write a framed query of id, read one framed answer. */
static void client_query(client_t *c, uint16_t id)
{
	uint8_t q[2 + 12] = { 0, 12, (uint8_t)(id >> 8), (uint8_t)id, 1, 0 };
	assert_int_equal(SSL_write(c->ssl, q, sizeof(q)), (int)sizeof(q));
}

static int client_read(client_t *c, uint8_t *buf, int cap)
{
	return SSL_read(c->ssl, buf, cap);
}

/* ---- tests ---- */

static void handshake_and_pipelined_queries(void **state)
{
	client_t c;
	client_open(&c, "dot");
	pump(&c, 4);
	assert_int_equal(SSL_is_init_finished(c.ssl), 1);
	const uint8_t *sel;
	unsigned sl;
	SSL_get0_alpn_selected(c.ssl, &sel, &sl);
	assert_int_equal(sl, 3);
	assert_true(F->tls.c[c.idx].hs_done);
	assert_int_equal(F->stat[DP_TLSC_HANDSHAKE], 1);
	for (uint16_t i = 1; i <= 20; i++)
		client_query(&c, i);
	pump(&c, 2);
	assert_int_equal(F->frames, 20);
	uint8_t buf[4096];
	int n = client_read(&c, buf, sizeof(buf));
	assert_int_equal(n, 20 * 14);
	assert_int_equal(buf[2] << 8 | buf[3], 1);
	assert_true(buf[4] & 0x80);
	/* tcpconn's send completed: nothing queued, nothing in flight */
	assert_false(F->t.c[c.idx].wq.inflight);
	assert_int_equal(dp_tlsconn_unsent(&F->tls, c.idx), 0);
	client_close(&c);
}

static void alpn_without_dot_is_refused(void **state)
{
	client_t c;
	client_open(&c, "h2");
	uint32_t closed = F->closed;
	pump(&c, 3);
	assert_int_equal(F->stat[DP_TLSC_HS_FAILED], 1);
	assert_true(SSL_do_handshake(c.ssl) <= 0); /* the alert reached it */
	assert_true(F->t.c[c.idx].closing || F->closed > closed);
	client_close(&c);
}

static void handshakes_bounded_per_turn(void **state)
{
	client_t c[12];
	for (int i = 0; i < 12; i++) {
		client_open(&c[i], NULL);
		SSL_do_handshake(c[i].ssl);
	}
	F->tls.budget = DP_TLSCONN_HS_PER_TURN;
	for (int i = 0; i < 12; i++)
		client_push(&c[i]); /* one turn's ClientHellos */
	assert_int_equal(F->stat[DP_TLSC_HS_DEFERRED], 12 - DP_TLSCONN_HS_PER_TURN);
	assert_true(dp_tlsconn_more(&F->tls));
	dp_tlsconn_run(&F->tls); /* the next turn */
	assert_false(dp_tlsconn_more(&F->tls));
	for (int i = 0; i < 12; i++) {
		pump(&c[i], 3);
		assert_int_equal(SSL_is_init_finished(c[i].ssl), 1);
		client_close(&c[i]);
	}
}

static void half_open_handshake_times_out(void **state)
{
	client_t c;
	client_open(&c, NULL);
	F->now += 4000;
	dp_tlsconn_expire(&F->tls, F->now, 5000);
	assert_false(F->t.c[c.idx].closing);
	F->now += 1000;
	dp_tlsconn_expire(&F->tls, F->now, 5000);
	assert_int_equal(F->stat[DP_TLSC_HS_TIMEOUT], 1);
	assert_true(F->t.c[c.idx].closing);
	/* its receive ends (cancelled): the slot is finalized, the session gone */
	dp_tlsconn_on_recv(&F->tls, c.idx, F->t.c[c.idx].gen, -ECANCELED, false, NULL);
	assert_false(dp_tlsconn_is(&F->tls, c.idx));
	client_close(&c);
}

static void resumption_with_ticket(void **state)
{
	client_t c;
	client_open(&c, NULL);
	pump(&c, 4);
	client_query(&c, 7);
	pump(&c, 2);
	uint8_t buf[256];
	assert_int_equal(client_read(&c, buf, sizeof(buf)), 14);
	SSL_SESSION *sess = ticket_sess;
	ticket_sess = NULL;
	assert_non_null(sess);
	assert_true(SSL_SESSION_is_resumable(sess));
	client_t d;
	client_open(&d, NULL);
	SSL_set_session(d.ssl, sess);
	pump(&d, 4);
	assert_int_equal(SSL_session_reused(d.ssl), 1);
	assert_int_equal(F->stat[DP_TLSC_RESUMED], 1);
	SSL_SESSION_free(sess);
	client_close(&c);
	client_close(&d);
}

/* Complete the send in flight with at most chunk octets (a short send). */
static bool server_push_part(client_t *c, size_t chunk)
{
	uint32_t i = c->idx;
	if (!F->out[i])
		return false;
	size_t n = DP_MIN(chunk, F->out_len[i]);
	const uint8_t *p = F->out[i];
	F->out[i] = NULL;
	BIO_write(c->in, p, (int)n);
	dp_tlsconn_on_send(&F->tls, i, F->out_gen[i], (int)n);
	return true;
}

static void short_sends_complete_each_answer_once(void **state)
{
	client_t c;
	client_open(&c, "dot");
	pump(&c, 4);
	assert_int_equal(SSL_is_init_finished(c.ssl), 1);
	for (uint16_t i = 1; i <= 30; i++)
		client_query(&c, i);
	client_push(&c);
	dp_tcpconn_flush(&F->t);
	assert_true(F->t.c[c.idx].wq.inflight); /* tcpconn waits for its ciphertext */
	for (int k = 0; k < 10000 && server_push_part(&c, 7); k++)
		dp_tcpconn_flush(&F->t);
	assert_false(F->t.c[c.idx].wq.inflight);
	assert_int_equal(F->t.c[c.idx].wq.fill.len, 0);
	uint8_t buf[4096];
	int got = 0, n;
	while ((n = client_read(&c, buf + got, (int)sizeof(buf) - got)) > 0)
		got += n;
	assert_int_equal(got, 30 * 14);
	for (int i = 0; i < 30; i++)
		assert_int_equal(buf[i * 14 + 2] << 8 | buf[i * 14 + 3], i + 1);
	client_close(&c);
}

static void send_error_closes_and_frees(void **state)
{
	client_t c;
	client_open(&c, NULL);
	pump(&c, 4);
	client_query(&c, 1);
	client_push(&c);
	dp_tcpconn_flush(&F->t);
	uint32_t i = c.idx;
	assert_non_null(F->out[i]);
	F->out[i] = NULL;
	dp_tlsconn_on_send(&F->tls, i, F->out_gen[i], -EPIPE); /* the client reset */
	assert_true(F->t.c[i].closing);
	assert_false(F->t.c[i].wq.inflight); /* tcpconn's send completed (with the error) */
	assert_true(dp_tlsconn_is(&F->tls, i)); /* its receive is still in flight */
	dp_tlsconn_on_recv(&F->tls, i, F->t.c[i].gen, -ECANCELED, false, NULL);
	assert_false(dp_tlsconn_is(&F->tls, i));
	assert_false(F->t.c[i].used);
	client_close(&c);
}

static void garbage_instead_of_hello_is_closed(void **state)
{
	client_t c;
	client_open(&c, NULL);
	uint8_t junk[300];
	for (size_t k = 0; k < sizeof(junk); k++)
		junk[k] = (uint8_t)(k * 37 + 11);
	dp_tlsconn_on_recv(&F->tls, c.idx, F->t.c[c.idx].gen, (int)sizeof(junk), true, junk);
	assert_int_equal(F->stat[DP_TLSC_HS_FAILED], 1);
	/* the alert, if one was made, goes first; then the close */
	while (server_push(&c))
		;
	assert_true(F->t.c[c.idx].closing);
	client_close(&c);
}

static void close_notify_is_eof_after_answers(void **state)
{
	client_t c;
	client_open(&c, NULL);
	pump(&c, 4);
	client_query(&c, 3);
	SSL_shutdown(c.ssl); /* close_notify right behind the query */
	client_push(&c);
	assert_true(F->t.c[c.idx].eof);
	assert_false(F->t.c[c.idx].closing); /* its answer first */
	dp_tcpconn_flush(&F->t);
	while (server_push(&c))
		dp_tcpconn_flush(&F->t);
	assert_true(F->t.c[c.idx].closing);
	uint8_t buf[64];
	assert_int_equal(client_read(&c, buf, sizeof(buf)), 14);
	client_close(&c);
}

/* tcpconn's own buffers of slot idx, as its budget counts them. */
static size_t tcp_bufs(uint32_t idx)
{
	dp_tcpc_t *tc = &F->t.c[idx];
	return (size_t)tc->rbuf.cap + tc->wq.out.cap + tc->wq.fill.cap;
}

/* The ciphertext queued and the handshake in progress count in tcpconn's
 * buffer budget, and leave it with the connection. */
static void tls_buffers_count_in_budget(void **state)
{
	client_t c;
	client_open(&c, "dot");
	assert_int_equal(F->t.buf_bytes, DP_TLSCONN_HS_COST);
	SSL_do_handshake(c.ssl);
	client_push(&c); /* ClientHello: our flight is queued, being sent */
	dp_tlsc_t *tc = &F->tls.c[c.idx];
	assert_true(tc->sending);
	size_t q = (size_t)tc->wq.out.cap + tc->wq.fill.cap;
	assert_true(q >= 1024);
	assert_int_equal(F->t.buf_bytes, DP_TLSCONN_HS_COST + q);
	pump(&c, 4);
	assert_int_equal(SSL_is_init_finished(c.ssl), 1);
	client_query(&c, 5);
	pump(&c, 2);
	uint8_t buf[64];
	assert_int_equal(client_read(&c, buf, sizeof(buf)), 14);
	assert_int_equal(F->t.buf_bytes, tcp_bufs(c.idx) + tc->charged);
	assert_int_equal(tc->charged, 0); /* done and idle: nothing of ours */
	dp_tcpconn_close(&F->t, c.idx);
	dp_tlsconn_on_recv(&F->tls, c.idx, F->t.c[c.idx].gen, -ECANCELED, false, NULL);
	assert_false(F->t.c[c.idx].used);
	assert_int_equal(F->t.buf_bytes, 0);
	client_close(&c);
}

/* Over the budget: a new TLS connection is refused, and one whose flight
 * would overflow it is closed. */
static void tls_budget_refusal_closes(void **state)
{
	F->t.buf_max = DP_TLSCONN_HS_COST - 1;
	int idx = dp_tcpconn_accept(&F->t, 99, 0x80);
	assert_true(idx >= 0);
	assert_int_equal(dp_tlsconn_open(&F->tls, (uint32_t)idx, F->t.c[idx].gen, F->srv, F->now, false),
			 DP_E_TLS);
	assert_int_equal(F->t.buf_bytes, 0);
	dp_tcpconn_close(&F->t, (uint32_t)idx);
	F->t.buf_max = DP_TLSCONN_HS_COST + 1000;
	client_t c;
	client_open(&c, "dot");
	SSL_do_handshake(c.ssl);
	client_push(&c); /* our flight takes more than 1000 octets */
	assert_true(F->t.c[c.idx].closing);
	assert_true(F->t.buf_bytes <= F->t.buf_max);
	client_close(&c);
}

/* Before our first flight a client may send its ClientHello, not 64 KB:
 * what it piles up behind a deferred handshake is capped lower. */
static void ciphertext_before_our_flight_is_capped(void **state)
{
	client_t c;
	client_open(&c, "dot");
	SSL_do_handshake(c.ssl);
	F->tls.budget = 0; /* this turn's steps are spent: deferred */
	client_push(&c);
	assert_true(F->tls.c[c.idx].deferred);
	uint8_t junk[4096];
	memset(junk, 0x17, sizeof(junk));
	for (int i = 0; i < 10 && !F->t.c[c.idx].closing; i++) /* 40 KB */
		dp_tlsconn_on_recv(&F->tls, c.idx, F->t.c[c.idx].gen, (int)sizeof(junk), true,
				   junk);
	assert_true(F->t.c[c.idx].closing);
	assert_true(F->tls.c[c.idx].w.rx.len <= DP_TLSCONN_HELLO_MAX);
	client_close(&c);
}

/* An established client that asked and got its answer keeps no send
 * buffer while idle. */
static void idle_client_keeps_no_send_buffer(void **state)
{
	client_t c;
	client_open(&c, "dot");
	pump(&c, 4);
	for (uint16_t i = 1; i <= 3; i++) {
		client_query(&c, i);
		pump(&c, 2);
		uint8_t buf[64];
		assert_int_equal(client_read(&c, buf, sizeof(buf)), 14);
		dp_tlsc_t *tc = &F->tls.c[c.idx];
		assert_int_equal(tc->wq.out.cap, 0);
		assert_int_equal(tc->wq.fill.cap, 0);
		assert_int_equal(tc->w.rx.cap, 0);
	}
	client_close(&c);
}

/* A partial ciphertext send is progress: a slow but steady reader is not
 * taken for one that does not read. */
static void partial_send_is_progress(void **state)
{
	client_t c;
	client_open(&c, "dot");
	pump(&c, 4);
	for (uint16_t i = 1; i <= 30; i++)
		client_query(&c, i);
	client_push(&c);
	dp_tcpconn_flush(&F->t);
	uint64_t t0 = F->t.c[c.idx].last_progress_ms;
	F->now += 700;
	assert_true(server_push_part(&c, 7)); /* 7 octets of several hundred */
	assert_true(F->t.c[c.idx].wq.inflight); /* tcpconn's send is not done */
	assert_int_equal(F->t.c[c.idx].last_progress_ms, t0 + 700);
	client_close(&c);
}

/* A client trickling its ClientHello an octet per receive spends no
 * handshake budget until its record is complete: it cannot defer the real
 * handshakes of others. */
static void trickled_hello_costs_one_step(void **state)
{
	client_t c;
	client_open(&c, "dot");
	SSL_do_handshake(c.ssl);
	uint8_t hello[4096];
	int n = BIO_read(c.out, hello, sizeof(hello));
	assert_true(n > 100 && n < (int)sizeof(hello));
	F->tls.budget = DP_TLSCONN_HS_PER_TURN;
	uint32_t gen = F->t.c[c.idx].gen;
	for (int i = 0; i < n - 1; i++)
		dp_tlsconn_on_recv(&F->tls, c.idx, gen, 1, true, hello + i);
	assert_int_equal(F->tls.budget, DP_TLSCONN_HS_PER_TURN);
	assert_int_equal(F->stat[DP_TLSC_HS_DEFERRED], 0);
	assert_int_equal(F->tls.c[c.idx].w.rx.len, 0); /* BoringSSL keeps the part */
	dp_tlsconn_on_recv(&F->tls, c.idx, gen, 1, true, hello + n - 1);
	assert_int_equal(F->tls.budget, DP_TLSCONN_HS_PER_TURN - 1);
	assert_true(F->tls.c[c.idx].sending); /* our flight */
	pump(&c, 4);
	assert_int_equal(SSL_is_init_finished(c.ssl), 1);
	client_close(&c);
}

/* After dp_tlsconn_free no slot is a TLS one: the transport's closes that
 * follow (teardown) must not read the freed table. */
static void free_forgets_every_slot(void **state)
{
	client_t c;
	client_open(&c, "dot");
	pump(&c, 4);
	dp_tlsconn_free(&F->tls);
	assert_int_equal(F->tls.n, 0);
	assert_false(dp_tlsconn_is(&F->tls, c.idx));
	dp_tlsconn_drop(&F->tls, c.idx); /* as io->close does */
	client_close(&c);
}

/* ---- ticket keys ---- */

static uint64_t fake_s;
static uint64_t fake_clock(void)
{
	return fake_s;
}

static int ticket(uint8_t *name, int enc)
{
	uint8_t iv[EVP_MAX_IV_LENGTH];
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	HMAC_CTX *h = HMAC_CTX_new();
	int rc = ticket_cb(NULL, name, iv, c, h, enc);
	EVP_CIPHER_CTX_free(c);
	HMAC_CTX_free(h);
	return rc;
}

static void ticket_keys_rotate_keeping_previous(void **state)
{
	keys.now_s = fake_clock;
	keys.cur.born_s = keys.prev.born_s = 0;
	uint8_t a[16], b[16], c[16], x[16];
	fake_s = 100;
	assert_int_equal(ticket(a, 1), 1);
	fake_s = 100 + DP_TICKET_ROTATE_S - 1;
	assert_int_equal(ticket(x, 1), 1);
	assert_memory_equal(a, x, 16); /* not yet */
	assert_int_equal(ticket(a, 0), 1); /* current */
	fake_s = 100 + DP_TICKET_ROTATE_S;
	assert_int_equal(ticket(b, 1), 1);
	assert_memory_not_equal(a, b, 16); /* rotated */
	assert_int_equal(ticket(a, 0), 2); /* previous: decrypts, renewed */
	assert_int_equal(ticket(b, 0), 1);
	fake_s = 100 + 2 * DP_TICKET_ROTATE_S;
	assert_int_equal(ticket(c, 1), 1);
	assert_int_equal(ticket(a, 0), 0); /* two keys back: gone */
	assert_int_equal(ticket(b, 0), 2);
	memset(x, 0x5a, sizeof(x));
	assert_int_equal(ticket(x, 0), 0); /* unknown */
	keys.now_s = NULL;
	keys.cur.born_s = keys.prev.born_s = 0;
}

int main(void)
{
	make_cert();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(handshake_and_pipelined_queries, setup, teardown),
		cmocka_unit_test_setup_teardown(alpn_without_dot_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(handshakes_bounded_per_turn, setup, teardown),
		cmocka_unit_test_setup_teardown(half_open_handshake_times_out, setup, teardown),
		cmocka_unit_test_setup_teardown(resumption_with_ticket, setup, teardown),
		cmocka_unit_test_setup_teardown(short_sends_complete_each_answer_once, setup, teardown),
		cmocka_unit_test_setup_teardown(send_error_closes_and_frees, setup, teardown),
		cmocka_unit_test_setup_teardown(garbage_instead_of_hello_is_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(close_notify_is_eof_after_answers, setup, teardown),
		cmocka_unit_test_setup_teardown(free_forgets_every_slot, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_buffers_count_in_budget, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_budget_refusal_closes, setup, teardown),
		cmocka_unit_test_setup_teardown(ciphertext_before_our_flight_is_capped, setup, teardown),
		cmocka_unit_test_setup_teardown(idle_client_keeps_no_send_buffer, setup, teardown),
		cmocka_unit_test_setup_teardown(partial_send_is_progress, setup, teardown),
		cmocka_unit_test_setup_teardown(trickled_hello_costs_one_step, setup, teardown),
		cmocka_unit_test(ticket_keys_rotate_keeping_previous),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	unlink(cert_path);
	unlink(key_path);
	return rc;
}
