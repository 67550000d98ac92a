/* test_upconn.c - one upstream connection's state machine without sockets:
 * upconn.c and tls.c over a fake transport (dp_upconn_io_t) and a fake pool
 * (dp_upconn_ops_t), talking real TLS to an in-process BoringSSL server
 * through memory BIOs. Covered: connect, handshake with a pin, batching
 * (one SSL_write, one send), answers framed across records, stale
 * completions (old generation, no operation in flight, after the slot was
 * reused), a peer closing mid-frame, a connection failing with a send in
 * flight and a half-filled batch, short and impossible sends, the
 * handshake timeout, and close_all. Plain upstreams: tcp:// (no TLS,
 * framed batches without padding, split frames, zero-length frames, peer
 * close) and udp:// (a datagram per query, refusals, empty datagrams). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Before cmocka.h, whose fail() macro could rewrite calls in them. */
#include "../../core/upconn.c"
#include "../../core/tls.c"

#include <openssl/ec_key.h>
#include <openssl/pem.h>

#include <cmocka.h>

struct io_uring_sqe *dp_sqe(dp_shard_t *s)
{
	abort(); /* the fake transport never asks for an SQE */
}

/* ---- a fake transport ------------------------------------------------------ */

static struct {
	int next_fd;
	int opens, connects, shutdowns, cancels, closes;
	int open_type; /* of the last open: SOCK_STREAM or SOCK_DGRAM */
	int ndgram; /* datagrams sent (send_dgram) */
	uint8_t dgram[8][512]; /* the first 8 of them */
	size_t dgram_len[8];
	int dgram_rc[8]; /* when non-zero, what send_dgram k returns */
	bool connect_pending, recv_pending, send_pending;
	uint32_t connect_gen, recv_gen, send_gen;
	uint8_t *recv_buf;
	size_t recv_len;
	const uint8_t *send_buf;
	size_t send_len;
} io;

static int f_open(struct dp_shard *s, int family, int type)
{
	io.opens++;
	io.open_type = type;
	return io.next_fd++;
}

static void f_connect(struct dp_shard *s, uint32_t ci, uint32_t gen, int fd,
		      const dp_sockaddr_t *to)
{
	assert_false(io.connect_pending);
	io.connects++;
	io.connect_pending = true;
	io.connect_gen = gen;
}

static void f_recv(struct dp_shard *s, uint32_t ci, uint32_t gen, int fd, uint8_t *buf,
		   size_t len)
{
	assert_false(io.recv_pending); /* one receive at a time */
	io.recv_pending = true;
	io.recv_gen = gen;
	io.recv_buf = buf;
	io.recv_len = len;
}

static void f_send(struct dp_shard *s, uint32_t ci, uint32_t gen, int fd, const uint8_t *buf,
		   size_t len)
{
	assert_false(io.send_pending); /* one send at a time */
	assert_true(len > 0);
	io.send_pending = true;
	io.send_gen = gen;
	io.send_buf = buf;
	io.send_len = len;
}

static void f_shutdown(struct dp_shard *s, int fd, bool cancel)
{
	io.shutdowns++;
	io.cancels += cancel;
}

static void f_close(struct dp_shard *s, int fd)
{
	io.closes++;
}

/* Connecting a UDP socket (synchronous: it only sets the peer). */
static int f_connect_dgram(struct dp_shard *s, int fd, const dp_sockaddr_t *to)
{
	io.connects++;
	return 0;
}

/* A datagram on a connected UDP socket: kept (the first 8), and taken
 * whole unless dgram_rc says otherwise. */
static int f_send_dgram(struct dp_shard *s, int fd, const uint8_t *buf, size_t len)
{
	int k = io.ndgram++;
	assert_true(len > 0 && len <= 512);
	if (k >= 8)
		return (int)len;
	memcpy(io.dgram[k], buf, len);
	io.dgram_len[k] = len;
	return io.dgram_rc[k] ? io.dgram_rc[k] : (int)len;
}

static const dp_upconn_io_t fake_io = {
	.open = f_open, .connect = f_connect, .recv = f_recv, .send = f_send,
	.connect_dgram = f_connect_dgram, .send_dgram = f_send_dgram, .shutdown = f_shutdown, .close = f_close,
};

/* ---- a fake pool ------------------------------------------------------------ */

static struct {
	int ready, closed, down;
	bool health;
	int nmsg;
	uint16_t msg_id[16];
	size_t msg_len[16];
} up;

static void o_ready(struct dp_shard *s, uint32_t ci)
{
	up.ready++;
}

static void o_message(struct dp_shard *s, uint32_t ci, uint8_t *msg, size_t len)
{
	if (up.nmsg < 16) {
		up.msg_id[up.nmsg] = len >= 2 ? dp_rd16(msg) : 0;
		up.msg_len[up.nmsg] = len;
	}
	up.nmsg++;
}

static void o_closed(struct dp_shard *s, uint32_t ci, bool health)
{
	assert_int_equal(s->upc.c[ci].state, C_CLOSING);
	assert_int_equal(s->upc.c[ci].batch.len, 0);
	up.closed++;
	up.health = health;
}

static void o_down(struct dp_shard *s, uint32_t ci)
{
	assert_int_equal(s->upc.c[ci].state, C_DOWN);
	assert_int_equal(s->upc.c[ci].ops, 0);
	up.down++;
}

static const dp_upconn_ops_t fake_ops = { o_ready, o_message, o_closed, o_down };

/* ---- an in-process TLS server ------------------------------------------------ */

static X509 *cert;
static EVP_PKEY *key;
static char ca_path[64];

static void make_cert(void)
{
	if (cert)
		return;
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	assert_non_null(ec);
	assert_int_equal(EC_KEY_generate_key(ec), 1);
	key = EVP_PKEY_new();
	assert_int_equal(EVP_PKEY_assign_EC_KEY(key, ec), 1);
	cert = X509_new();
	X509_set_version(cert, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
	X509_gmtime_adj(X509_getm_notBefore(cert), -60);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	X509_set_pubkey(cert, key);
	X509_NAME *n = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const uint8_t *)"upconn-test", -1, -1, 0);
	X509_set_issuer_name(cert, n);
	assert_true(X509_sign(cert, key, EVP_sha256()) > 0);
	snprintf(ca_path, sizeof(ca_path), "/tmp/test_upconn_XXXXXX");
	int fd = mkstemp(ca_path);
	assert_true(fd >= 0);
	FILE *f = fdopen(fd, "w");
	PEM_write_X509(f, cert);
	fclose(f);
}

typedef struct srv {
	SSL_CTX *ctx;
	SSL *ssl;
	BIO *in, *out; /* what the client sent / what the server made */
	uint8_t plain[4096]; /* queries read */
	size_t plain_len;
} srv_t;

static void srv_new(srv_t *v)
{
	memset(v, 0, sizeof(*v));
	v->ctx = SSL_CTX_new(TLS_method());
	assert_int_equal(SSL_CTX_use_certificate(v->ctx, cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(v->ctx, key), 1);
	v->ssl = SSL_new(v->ctx);
	v->in = BIO_new(BIO_s_mem());
	v->out = BIO_new(BIO_s_mem());
	SSL_set_bio(v->ssl, v->in, v->out);
	SSL_set_accept_state(v->ssl);
}

static void srv_free(srv_t *v)
{
	SSL_free(v->ssl);
	SSL_CTX_free(v->ctx);
}

/* The server's turn: handshake, then read whatever queries arrived. */
static void srv_step(srv_t *v)
{
	if (!SSL_is_init_finished(v->ssl)) {
		SSL_do_handshake(v->ssl);
		if (!SSL_is_init_finished(v->ssl))
			return;
	}
	int n;
	while ((n = SSL_read(v->ssl, v->plain + v->plain_len,
			     (int)(sizeof(v->plain) - v->plain_len))) > 0)
		v->plain_len += (size_t)n;
}

/* Framed messages the server has read. */
static int srv_frames(const srv_t *v)
{
	int k = 0;
	for (size_t p = 0; p + 2 <= v->plain_len; p += 2 + dp_rd16(v->plain + p))
		k++;
	return k;
}

static void srv_write(srv_t *v, const void *p, size_t n)
{
	assert_int_equal(SSL_write(v->ssl, p, (int)n), (int)n);
}

static dp_shard_t *cur; /* the shard of the test running */

/* Complete the send in flight (the server takes it all). */
static void send_done(srv_t *v, uint32_t ci)
{
	assert_true(io.send_pending);
	BIO_write(v->in, io.send_buf, (int)io.send_len);
	io.send_pending = false;
	dp_upconn_on_cqe(cur, OP_UP_SEND, ci, io.send_gen, (int)io.send_len);
}

/* Complete the receive in flight with at most max octets of the server's
 * output. */
static void recv_some(srv_t *v, uint32_t ci, size_t max)
{
	assert_true(io.recv_pending);
	int n = BIO_read(v->out, io.recv_buf, (int)DP_MIN(io.recv_len, max));
	assert_true(n > 0);
	io.recv_pending = false;
	dp_upconn_on_cqe(cur, OP_UP_RECV, ci, io.recv_gen, n);
}

/* Move octets both ways until nothing moves (bounded). */
static void pump(srv_t *v, uint32_t ci)
{
	for (int i = 0; i < 50; i++) {
		bool moved = false;
		if (io.send_pending) {
			send_done(v, ci);
			moved = true;
		}
		srv_step(v);
		if (io.recv_pending && BIO_pending(v->out) > 0) {
			recv_some(v, ci, SIZE_MAX);
			moved = true;
		}
		if (!moved)
			return;
	}
	fail_msg("pump did not settle");
}

/* ---- the shard ---------------------------------------------------------------- */

static dp_config_t cfg;

static dp_shard_t *shard_new(void)
{
	make_cert();
	memset(&io, 0, sizeof(io));
	memset(&up, 0, sizeof(up));
	io.next_fd = 100;
	dp_config_defaults(&cfg);
	cfg.nupstream = 1;
	cfg.upstream_conns = 2;
	cfg.handshake_timeout_ms = 1000;
	snprintf(cfg.ca_file, sizeof(cfg.ca_file), "%s", ca_path);
	dp_upstream_cfg_t *u = &cfg.upstream[0];
	assert_int_equal(dp_config_parse_addr("127.0.0.1:853", 853, &u->addr), 0);
	snprintf(u->text, sizeof(u->text), "test");
	/* Pins alone: the SPKI of the test certificate. */
	u->no_ca = true;
	uint8_t *der = NULL;
	int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
	SHA256(der, (size_t)n, u->pins[0]);
	OPENSSL_free(der);
	u->npins = 1;
	dp_shard_t *s = calloc(1, sizeof(*s));
	s->cfg = &cfg;
	s->now_ms = 5000;
	dp_tw_init(&s->timers, s->now_ms);
	char err[256];
	s->ssl_ctx = dp_tls_client_ctx(&cfg, err, sizeof(err));
	assert_non_null(s->ssl_ctx);
	assert_int_equal(dp_upconn_init(s, &fake_ops), 0);
	s->upc.io = &fake_io;
	cur = s;
	return s;
}

static void shard_free(dp_shard_t *s)
{
	dp_upconn_free(s);
	SSL_CTX_free(s->ssl_ctx);
	free(s);
}

/* Connect slot ci and complete its handshake with server v. */
static void connect_ready(dp_shard_t *s, srv_t *v, uint32_t ci)
{
	srv_new(v);
	int ready = up.ready;
	assert_int_equal(dp_upconn_start(s, ci), 0);
	assert_int_equal(s->upc.c[ci].state, C_CONNECTING);
	assert_true(io.connect_pending);
	io.connect_pending = false;
	dp_upconn_on_cqe(s, OP_UP_CONNECT, ci, io.connect_gen, 0);
	assert_int_equal(s->upc.c[ci].state, C_HANDSHAKE);
	pump(v, ci);
	assert_int_equal(up.ready, ready + 1);
	assert_int_equal(s->upc.c[ci].state, C_READY);
}

/* A query with ID id: header and the root's NS question. */
static void write_query(dp_shard_t *s, uint32_t ci, uint16_t id)
{
	static const uint8_t q[17] = { 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1 };
	assert_int_equal(dp_upconn_write(s, ci, q, sizeof(q), id, 0), 0);
}

/* A framed answer with ID id, 17 octets. */
static size_t framed_answer(uint8_t *out, uint16_t id)
{
	static const uint8_t a[17] = { 0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1 };
	dp_wr16(out, sizeof(a));
	memcpy(out + 2, a, sizeof(a));
	dp_wr16(out + 2, id);
	return 2 + sizeof(a);
}

/* ---- tests --------------------------------------------------------------------- */

/* Queries of one turn leave in one SSL_write and one send; answers come
 * back whole, two in one record and one split across two records and two
 * receives. The server's session ticket is kept for resumption. */
static void batch_and_answers(void **state)
{
	dp_shard_t *s = shard_new();
	srv_t v;
	connect_ready(s, &v, 0);
	for (uint16_t id = 1; id <= 3; id++)
		write_query(s, 0, id);
	assert_int_equal(s->upc.dirty, 0);
	dp_upconn_flush(s);
	assert_int_equal(s->stats.ssl_writes, 1);
	assert_int_equal(s->stats.ssl_write_queries, 3);
	assert_true(io.send_pending);
	pump(&v, 0);
	assert_int_equal(srv_frames(&v), 3);
	uint8_t a[64], b[64];
	size_t n1 = framed_answer(a, 1);
	n1 += framed_answer(a + n1, 2);
	srv_write(&v, a, n1);
	size_t n3 = framed_answer(b, 3);
	srv_write(&v, b, 5);
	srv_write(&v, b + 5, n3 - 5);
	recv_some(&v, 0, 40); /* part of the records */
	pump(&v, 0);
	assert_int_equal(up.nmsg, 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(up.msg_id[i], i + 1);
		assert_int_equal(up.msg_len[i], 17);
	}
	assert_int_equal(s->upc.c[0].plain.len, 0);
	assert_non_null(s->upc.session[0]);
	assert_int_equal(up.closed, 0);
	srv_free(&v);
	shard_free(s);
}

/* A pin that matches no key of the server: the handshake fails, counted
 * against the upstream's health. */
static void pin_mismatch(void **state)
{
	dp_shard_t *s = shard_new();
	cfg.upstream[0].pins[0][0] ^= 1;
	srv_t v;
	srv_new(&v);
	assert_int_equal(dp_upconn_start(s, 0), 0);
	io.connect_pending = false;
	dp_upconn_on_cqe(s, OP_UP_CONNECT, 0, io.connect_gen, 0);
	pump(&v, 0);
	assert_int_equal(up.ready, 0);
	assert_int_equal(up.closed, 1);
	assert_true(up.health);
	assert_int_equal(s->stats.pin_failures, 1);
	srv_free(&v);
	shard_free(s);
}

/* Completions that are not the connection's: of no operation in flight, of
 * an older or newer generation, and after the slot was closed and reused.
 * Each is dropped without touching the connection. */
static void stale_completions(void **state)
{
	dp_shard_t *s = shard_new();
	srv_t v;
	connect_ready(s, &v, 0);
	dp_upconn_t *c = &s->upc.c[0];
	uint32_t gen = c->gen, ops = c->ops;
	assert_false(io.send_pending);
	dp_upconn_on_cqe(s, OP_UP_SEND, 0, gen, 100); /* no send in flight */
	dp_upconn_on_cqe(s, OP_UP_CONNECT, 0, gen, 0); /* connected long ago */
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, gen + 1, 100);
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, gen - 1, 0);
	dp_upconn_on_cqe(s, OP_UP_RECV, s->upc.n + 5, gen, 0); /* no such slot */
	assert_int_equal(c->ops, ops);
	assert_int_equal(c->state, C_READY);
	assert_int_equal(up.closed, 0);

	/* Failed with its receive out: closing until that completes. */
	dp_upconn_fail(s, 0, false, "test", "close");
	assert_int_equal(c->state, C_CLOSING);
	assert_int_equal(io.cancels, 1);
	assert_int_equal(up.down, 0);
	assert_true(io.recv_pending);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, io.recv_gen, -ECANCELED);
	assert_int_equal(up.down, 1);
	assert_int_equal(c->state, C_DOWN);
	assert_int_equal(c->gen, gen + 1);
	assert_int_equal(io.closes, 1);

	/* The old generation's completions, while down and once reused. */
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, gen, 200);
	assert_int_equal(c->ops, 0);
	srv_t w;
	srv_new(&w);
	assert_int_equal(dp_upconn_start(s, 0), 0);
	dp_upconn_on_cqe(s, OP_UP_CONNECT, 0, gen, 0);
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, gen, 200);
	assert_int_equal(c->state, C_CONNECTING);
	assert_int_equal(c->ops, 1);
	io.connect_pending = false;
	dp_upconn_on_cqe(s, OP_UP_CONNECT, 0, io.connect_gen, 0);
	pump(&w, 0);
	assert_int_equal(c->state, C_READY);
	srv_free(&w);
	srv_free(&v);
	shard_free(s);
}

/* The server sends half a frame and closes: no message goes up, the
 * connection fails, and the half frame does not survive into the next
 * connection of the slot (its first answer arrives intact). */
static void peer_closes_mid_frame(void **state)
{
	dp_shard_t *s = shard_new();
	srv_t v;
	connect_ready(s, &v, 0);
	uint8_t a[64];
	size_t n = framed_answer(a, 7);
	srv_write(&v, a, n - 6);
	pump(&v, 0);
	assert_int_equal(up.nmsg, 0);
	assert_int_equal(s->upc.c[0].plain.len, n - 6);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, io.recv_gen, 0); /* EOF */
	assert_int_equal(up.closed, 1);
	assert_int_equal(up.down, 1);
	assert_null(s->upc.c[0].plain.data);
	srv_free(&v);

	connect_ready(s, &v, 0);
	srv_write(&v, a, n);
	pump(&v, 0);
	assert_int_equal(up.nmsg, 1);
	assert_int_equal(up.msg_id[0], 7);

	/* And a clean close_notify, mid-frame too. */
	srv_write(&v, a, 3);
	SSL_shutdown(v.ssl);
	pump(&v, 0);
	assert_int_equal(up.nmsg, 1);
	assert_int_equal(up.closed, 2);
	assert_int_equal(s->upc.c[0].state, C_DOWN);
	srv_free(&v);
	shard_free(s);
}

/* The connection fails with a send in flight and more queries in its
 * batch: the batch is dropped (the pool re-sends those queries), the
 * buffer in flight stays as the kernel reads it, and the slot is reused
 * only after the send's completion. */
static void fail_with_send_in_flight(void **state)
{
	dp_shard_t *s = shard_new();
	srv_t v;
	connect_ready(s, &v, 0);
	write_query(s, 0, 1);
	write_query(s, 0, 2);
	dp_upconn_flush(s);
	assert_true(io.send_pending);
	uint8_t copy[4096];
	size_t len = io.send_len;
	const uint8_t *buf = io.send_buf;
	memcpy(copy, buf, len);
	write_query(s, 0, 3);
	write_query(s, 0, 4);
	assert_true(s->upc.c[0].batch.len > 0);
	dp_upconn_fail(s, 0, true, "test", "failure");
	assert_int_equal(up.closed, 1);
	assert_int_equal(s->upc.c[0].batch.len, 0);
	dp_upconn_flush(s); /* was dirty: writes nothing now */
	assert_int_equal(s->stats.ssl_writes, 1);
	assert_memory_equal(buf, copy, len);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, io.recv_gen, -ECANCELED);
	assert_int_equal(up.down, 0); /* the send is still out */
	assert_memory_equal(buf, copy, len);
	io.send_pending = false;
	dp_upconn_on_cqe(s, OP_UP_SEND, 0, io.send_gen, -ECANCELED);
	assert_int_equal(up.down, 1);
	assert_int_equal(dp_sendq_queued(&s->upc.c[0].sendq), 0);
	srv_free(&v);
	shard_free(s);
}

/* A short send goes on from where it stopped; a send that claims more than
 * it was given fails the connection. */
static void short_and_bogus_sends(void **state)
{
	dp_shard_t *s = shard_new();
	srv_t v;
	connect_ready(s, &v, 0);
	write_query(s, 0, 1);
	dp_upconn_flush(s);
	const uint8_t *buf = io.send_buf;
	size_t len = io.send_len;
	BIO_write(v.in, buf, (int)(len / 2));
	io.send_pending = false;
	dp_upconn_on_cqe(s, OP_UP_SEND, 0, io.send_gen, (int)(len / 2));
	assert_true(io.send_pending);
	assert_ptr_equal(io.send_buf, buf + len / 2);
	assert_int_equal(io.send_len, len - len / 2);
	pump(&v, 0);
	assert_int_equal(srv_frames(&v), 1);

	write_query(s, 0, 2);
	dp_upconn_flush(s);
	io.send_pending = false;
	dp_upconn_on_cqe(s, OP_UP_SEND, 0, io.send_gen, (int)io.send_len + 5);
	assert_int_equal(up.closed, 1);
	assert_false(up.health); /* it was ready */
	srv_free(&v);
	shard_free(s);
}

/* No handshake within --handshake-timeout: failed, against its health. */
static void handshake_timeout(void **state)
{
	dp_shard_t *s = shard_new();
	assert_int_equal(dp_upconn_start(s, 1), 0);
	s->now_ms += cfg.handshake_timeout_ms;
	dp_tw_run(&s->timers, s->now_ms, s);
	assert_int_equal(up.closed, 1);
	assert_true(up.health);
	assert_int_equal(s->upc.c[1].state, C_CLOSING);
	io.connect_pending = false;
	dp_upconn_on_cqe(s, OP_UP_CONNECT, 1, io.connect_gen, -ECANCELED);
	assert_int_equal(s->upc.c[1].state, C_DOWN);
	assert_int_equal(up.down, 1);
	shard_free(s);
}

/* Teardown: every open connection's socket is shut down. */
static void close_all(void **state)
{
	dp_shard_t *s = shard_new();
	assert_int_equal(dp_upconn_start(s, 0), 0);
	io.connect_pending = false;
	assert_int_equal(dp_upconn_start(s, 1), 0);
	dp_upconn_close_all(s);
	assert_int_equal(io.shutdowns, 2);
	assert_int_equal(io.cancels, 0);
	shard_free(s);
	assert_int_equal(io.closes, 2);
}

/* ---- plain upstreams: tcp:// and udp:// ------------------------------------------ */

/* shard_new, its upstream spoken to over transport (DP_UP_TCP, DP_UP_UDP). */
static dp_shard_t *plain_shard(uint8_t transport)
{
	dp_shard_t *s = shard_new();
	cfg.upstream[0].transport = transport;
	cfg.upstream[0].npins = 0;
	cfg.upstream[0].no_ca = false;
	return s;
}

/* Start slot ci and complete its connect: ready at once (no TLS). */
static void connect_plain(dp_shard_t *s, uint32_t ci, int want_type)
{
	int ready = up.ready;
	assert_int_equal(dp_upconn_start(s, ci), 0);
	assert_int_equal(io.open_type, want_type);
	assert_null(s->upc.c[ci].ssl);
	if (want_type == SOCK_STREAM) {
		assert_true(io.connect_pending);
		io.connect_pending = false;
		dp_upconn_on_cqe(s, OP_UP_CONNECT, ci, io.connect_gen, 0);
	} else {
		/* connected at once (connect_dgram), ready before start returns */
		assert_false(io.connect_pending);
	}
	assert_int_equal(s->upc.c[ci].state, C_READY);
	assert_int_equal(up.ready, ready + 1);
	assert_true(io.recv_pending);
	assert_false(io.send_pending);
	assert_int_equal(s->stats.handshakes, 0);
}

/* A 44-octet query as the pool holds it, padded for TLS: the root's NS
 * question, then its OPT (at offset 17, the last record) with an empty
 * edns-tcp-keepalive and 8 octets of padding. */
#define PQ_LEN 44
#define PQ_OPT 17
static const uint8_t padded_q[PQ_LEN] = {
	0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, /* header, ARCOUNT 1 */
	0, 0, 2, 0, 1, /* . NS IN */
	0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 16, /* OPT, 1232, RDLENGTH 16 */
	0, 11, 0, 0, /* keepalive */
	0, 12, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, /* padding */
};

/* Check one message the upstream got: ID id, the question, an OPT with
 * the keepalive (when keepalive) and no padding. */
static void check_plain_query(const uint8_t *m, size_t len, uint16_t id, bool keepalive)
{
	assert_int_equal(len, PQ_LEN - 12 - (keepalive ? 0 : 4));
	assert_int_equal(dp_rd16(m), id);
	assert_memory_equal(m + 2, padded_q + 2, PQ_OPT + 9 - 2);
	assert_int_equal(dp_rd16(m + PQ_OPT + 9), keepalive ? 4 : 0);
	if (keepalive)
		assert_memory_equal(m + PQ_OPT + 11, "\0\13\0\0", 4);
}

/* Complete the receive in flight with n octets of data. */
static void recv_bytes(dp_shard_t *s, uint32_t ci, const void *data, size_t n)
{
	assert_true(io.recv_pending);
	assert_true(n <= io.recv_len);
	memcpy(io.recv_buf, data, n);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, ci, io.recv_gen, (int)n);
}

/* tcp://: no TLS, ready on connect; the queries of a turn leave in one
 * send, framed, each without our padding but with the keepalive (RFC
 * 7828 is for TCP too). Catches: a handshake attempted, SSL_write on a
 * NULL session, padding sent in the clear, a frame length not fixed
 * after stripping, the caller's query edited in place. */
static void tcp_plain_batch(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_TCP);
	connect_plain(s, 0, SOCK_STREAM);
	assert_int_equal(s->upc.c[0].kind, UK_TCP);
	uint8_t q[PQ_LEN];
	memcpy(q, padded_q, PQ_LEN);
	for (uint16_t id = 1; id <= 3; id++)
		assert_int_equal(dp_upconn_write(s, 0, q, PQ_LEN, id, PQ_OPT), 0);
	assert_memory_equal(q, padded_q, PQ_LEN);
	dp_upconn_flush(s);
	assert_true(io.send_pending);
	assert_int_equal(s->stats.ssl_writes, 0);
	assert_int_equal(s->stats.max_write_batch, 3);
	assert_int_equal(io.send_len, 3 * (2 + PQ_LEN - 12));
	for (int k = 0; k < 3; k++) {
		const uint8_t *f = io.send_buf + k * (2 + PQ_LEN - 12);
		assert_int_equal(dp_rd16(f), PQ_LEN - 12);
		check_plain_query(f + 2, PQ_LEN - 12, (uint16_t)(k + 1), true);
	}
	io.send_pending = false;
	dp_upconn_on_cqe(s, OP_UP_SEND, 0, io.send_gen, (int)io.send_len);
	assert_false(io.send_pending);
	/* A query without OPT (opt_off 0) goes as it is. */
	static const uint8_t bare[17] = { 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1 };
	assert_int_equal(dp_upconn_write(s, 0, bare, 17, 9, 0), 0);
	dp_upconn_flush(s);
	assert_int_equal(io.send_len, 19);
	assert_int_equal(dp_rd16(io.send_buf), 17);
	assert_int_equal(dp_rd16(io.send_buf + 2), 9);
	assert_int_equal(up.closed, 0);
	shard_free(s);
}

/* tcp://: answers split anywhere across receives come up whole, in order.
 * Catches: a receive that overwrites the part of a frame kept from the
 * last one, or a frame handed up before it is complete. */
static void tcp_plain_split_frames(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_TCP);
	connect_plain(s, 0, SOCK_STREAM);
	uint8_t a[128];
	size_t n = framed_answer(a, 1);
	n += framed_answer(a + n, 2);
	n += framed_answer(a + n, 3);
	static const size_t cuts[] = { 1, 20, 21, 40, 50 }; /* inside a length, at a boundary, ... */
	size_t at = 0;
	for (size_t i = 0; i <= DP_ARRAY_LEN(cuts); i++) {
		size_t end = i < DP_ARRAY_LEN(cuts) ? cuts[i] : n;
		recv_bytes(s, 0, a + at, end - at);
		at = end;
	}
	assert_int_equal(up.nmsg, 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(up.msg_id[i], i + 1);
		assert_int_equal(up.msg_len[i], 17);
	}
	assert_int_equal(s->upc.c[0].plain.len, 0);
	assert_true(io.recv_pending);
	assert_int_equal(up.closed, 0);
	shard_free(s);
}

/* tcp://: a zero-length frame is a protocol error against the upstream's
 * health; a close by the peer mid-frame fails the connection (not its
 * health once it answered) and the half frame is not carried into the
 * slot's next connection. */
static void tcp_plain_errors(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_TCP);
	connect_plain(s, 0, SOCK_STREAM);
	uint8_t a[64];
	size_t n = framed_answer(a, 4);
	a[n] = a[n + 1] = 0; /* then a zero-length frame */
	recv_bytes(s, 0, a, n + 2);
	assert_int_equal(up.nmsg, 1);
	assert_int_equal(up.closed, 1);
	assert_true(up.health);
	assert_int_equal(up.down, 1); /* nothing was in flight: finalized */
	assert_int_equal(s->upc.c[0].state, C_DOWN);

	connect_plain(s, 0, SOCK_STREAM);
	n = framed_answer(a, 5);
	recv_bytes(s, 0, a, n - 4);
	assert_int_equal(up.nmsg, 1);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, 0, io.recv_gen, 0); /* EOF */
	assert_int_equal(up.closed, 2);
	assert_false(up.health);
	assert_int_equal(s->upc.c[0].state, C_DOWN);

	connect_plain(s, 0, SOCK_STREAM);
	n = framed_answer(a, 6);
	recv_bytes(s, 0, a, n);
	assert_int_equal(up.nmsg, 2);
	assert_int_equal(up.msg_id[1], 6);
	/* A refused connect: against its health. */
	dp_upconn_close_all(s);
	shard_free(s);
	s = plain_shard(DP_UP_TCP);
	assert_int_equal(dp_upconn_start(s, 1), 0);
	io.connect_pending = false;
	dp_upconn_on_cqe(s, OP_UP_CONNECT, 1, io.connect_gen, -ECONNREFUSED);
	assert_int_equal(up.ready, 0);
	assert_int_equal(up.closed, 1);
	assert_true(up.health);
	shard_free(s);
}

/* udp://: its UDP slots open datagram sockets (its stream slots, for
 * retries of truncated answers, TCP); each query of a turn is its own
 * datagram, without padding or keepalive (RFC 7828 3.2.1: not over UDP);
 * no stream send. Catches: queries glued into one datagram, a length
 * prefix sent, keepalive over UDP, a UDP slot opened as a stream. */
static void udp_datagrams(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_UDP);
	uint32_t ci = dp_upconn_first(&s->upc, 0, true);
	assert_int_equal(ci, cfg.upstream_conns);
	assert_int_equal(dp_upconn_count(&s->upc, true), DP_UPCONN_UDP_SOCKS);
	connect_plain(s, ci, SOCK_DGRAM);
	assert_int_equal(s->upc.c[ci].kind, UK_UDP);
	assert_ptr_equal(io.recv_buf, s->upc.c[ci].plain.data);
	for (uint16_t id = 7; id < 10; id++)
		assert_int_equal(dp_upconn_write(s, ci, padded_q, PQ_LEN, id, PQ_OPT), 0);
	dp_upconn_flush(s);
	assert_int_equal(io.ndgram, 3);
	for (int k = 0; k < 3; k++)
		check_plain_query(io.dgram[k], io.dgram_len[k], (uint16_t)(7 + k), false);
	assert_false(io.send_pending);
	assert_int_equal(s->stats.up_sends, 3);
	assert_int_equal(s->upc.c[ci].batch.len, 0);
	/* Nothing left to send on the next flush. */
	dp_upconn_flush(s);
	assert_int_equal(io.ndgram, 3);

	/* Its stream slot speaks TCP, keepalive kept. */
	io.recv_pending = false; /* (the fake keeps one receive: the UDP one's is left out) */
	connect_plain(s, 0, SOCK_STREAM);
	assert_int_equal(s->upc.c[0].kind, UK_TCP);
	assert_int_equal(dp_upconn_write(s, 0, padded_q, PQ_LEN, 11, PQ_OPT), 0);
	dp_upconn_flush(s);
	assert_true(io.send_pending);
	check_plain_query(io.send_buf + 2, io.send_len - 2, 11, true);
	assert_int_equal(up.closed, 0);
	shard_free(s);
}

/* udp://: answers, one per receive; an empty datagram is no answer and
 * the socket listens on. Catches: a datagram appended to the last one,
 * an empty datagram taken for a close (as on a stream). */
static void udp_answers_and_empty(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_UDP);
	uint32_t ci = dp_upconn_first(&s->upc, 0, true) + 3;
	connect_plain(s, ci, SOCK_DGRAM);
	uint8_t a[64];
	framed_answer(a, 21);
	recv_bytes(s, ci, a + 2, 17);
	assert_int_equal(up.nmsg, 1);
	assert_int_equal(up.msg_id[0], 21);
	assert_int_equal(up.msg_len[0], 17);
	assert_ptr_equal(io.recv_buf, s->upc.c[ci].plain.data);
	recv_bytes(s, ci, a, 0);
	assert_int_equal(up.nmsg, 1);
	assert_int_equal(s->upc.c[ci].state, C_READY);
	assert_true(io.recv_pending);
	framed_answer(a, 22);
	recv_bytes(s, ci, a + 2, 17);
	assert_int_equal(up.nmsg, 2);
	assert_int_equal(up.msg_id[1], 22);
	assert_int_equal(up.msg_len[1], 17);
	assert_int_equal(up.closed, 0);
	shard_free(s);
}

/* udp://: the upstream's port refuses (ICMP port unreachable, reported
 * on a later send or on the receive): the socket fails, against the
 * upstream's health. A datagram the socket would not take (EAGAIN) is
 * lost, counted, and the socket stays. */
static void udp_refused(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_UDP);
	uint32_t ci = dp_upconn_first(&s->upc, 0, true);
	connect_plain(s, ci, SOCK_DGRAM);
	io.dgram_rc[0] = -EAGAIN;
	io.dgram_rc[1] = -ECONNREFUSED;
	for (uint16_t id = 1; id <= 3; id++)
		assert_int_equal(dp_upconn_write(s, ci, padded_q, PQ_LEN, id, PQ_OPT), 0);
	dp_upconn_flush(s);
	assert_int_equal(s->stats.upstream_udp_lost, 1);
	assert_int_equal(io.ndgram, 2); /* the third never tried */
	assert_int_equal(up.closed, 1);
	assert_true(up.health);
	assert_int_equal(s->upc.c[ci].state, C_CLOSING); /* its receive is out */
	assert_int_equal(s->upc.c[ci].batch.len, 0);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, ci, io.recv_gen, -ECANCELED);
	assert_int_equal(up.down, 1);

	connect_plain(s, ci, SOCK_DGRAM);
	io.recv_pending = false;
	dp_upconn_on_cqe(s, OP_UP_RECV, ci, io.recv_gen, -ECONNREFUSED);
	assert_int_equal(up.closed, 2);
	assert_true(up.health);
	assert_int_equal(up.down, 2);
	assert_int_equal(s->upc.c[ci].state, C_DOWN);
	assert_int_equal(up.nmsg, 0);
	shard_free(s);
}

/* udp://...,0x20: the question name's letters leave in a case drawn from
 * the socket's seed and the ID (two IDs: two patterns), non-letters
 * untouched; an answer echoing it passes, one with any letter's case
 * flipped does not, nor one in the client's own spelling. Catches: the
 * case left as the client spelt it, a check that ignores case, a pattern
 * that does not depend on the ID. */
static void udp_0x20(void **state)
{
	dp_shard_t *s = plain_shard(DP_UP_UDP);
	cfg.upstream[0].case_random = true;
	uint32_t ci = dp_upconn_first(&s->upc, 0, true);
	connect_plain(s, ci, SOCK_DGRAM);
	/* www.example-1.test. A IN, no OPT */
	static const uint8_t q[] = { 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0,
				     3, 'w', 'w', 'w', 9, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '1',
				     4, 't', 'e', 's', 't', 0, 0, 1, 0, 1 };
	assert_int_equal(dp_upconn_write(s, ci, q, sizeof(q), 100, 0), 0);
	assert_int_equal(dp_upconn_write(s, ci, q, sizeof(q), 101, 0), 0);
	dp_upconn_flush(s);
	assert_int_equal(io.ndgram, 2);
	uint8_t a[2][sizeof(q)];
	int upper[2] = { 0, 0 };
	for (int k = 0; k < 2; k++) {
		assert_int_equal(io.dgram_len[k], sizeof(q));
		memcpy(a[k], io.dgram[k], sizeof(q));
		assert_int_equal(dp_rd16(a[k]), 100 + k);
		for (size_t i = 12; i < sizeof(q); i++) {
			assert_int_equal(a[k][i] | 0x20, q[i] | 0x20); /* the same name */
			if (q[i] < 'a' || q[i] > 'z')
				assert_int_equal(a[k][i], q[i]); /* digits, lengths */
			upper[k] += a[k][i] >= 'A' && a[k][i] <= 'Z';
		}
		a[k][2] |= 0x80; /* as an answer: QR */
		assert_true(dp_upconn_case_ok(s, ci, a[k], sizeof(q)));
	}
	assert_true(upper[0] + upper[1] > 0); /* 30 letters: all lower has p = 2^-30 */
	assert_memory_not_equal(a[0] + 12, a[1] + 12, sizeof(q) - 12);
	uint8_t spelt[sizeof(q)];
	memcpy(spelt, q, sizeof(q));
	dp_wr16(spelt, 100);
	assert_false(dp_upconn_case_ok(s, ci, spelt, sizeof(q)));
	for (size_t i = 13; i < 16; i++) {
		uint8_t flipped[sizeof(q)];
		memcpy(flipped, a[0], sizeof(q));
		flipped[i] ^= 0x20;
		assert_false(dp_upconn_case_ok(s, ci, flipped, sizeof(q)));
	}
	cfg.upstream[0].case_random = false;
	assert_true(dp_upconn_case_ok(s, ci, spelt, sizeof(q))); /* without 0x20: any case */
	shard_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(batch_and_answers),
		cmocka_unit_test(pin_mismatch),
		cmocka_unit_test(stale_completions),
		cmocka_unit_test(peer_closes_mid_frame),
		cmocka_unit_test(fail_with_send_in_flight),
		cmocka_unit_test(short_and_bogus_sends),
		cmocka_unit_test(handshake_timeout),
		cmocka_unit_test(close_all),
		cmocka_unit_test(tcp_plain_batch),
		cmocka_unit_test(tcp_plain_split_frames),
		cmocka_unit_test(tcp_plain_errors),
		cmocka_unit_test(udp_datagrams),
		cmocka_unit_test(udp_0x20),
		cmocka_unit_test(udp_answers_and_empty),
		cmocka_unit_test(udp_refused),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	if (ca_path[0])
		unlink(ca_path);
	return rc;
}
