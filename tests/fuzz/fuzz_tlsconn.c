/* fuzz_tlsconn.c - the DNS-over-TLS connection layer (core/tlsconn.c) over
 * the real tcpconn state machine, with a fake transport under both and real
 * BoringSSL clients on memory BIOs. The input is a program: each byte picks
 * an event (a client connects; a client writes a query, or shuts down; what
 * a client has written is delivered in a receive of some size, or garbage
 * is; a receive ends with EOF, an error or ENOBUFS; a ciphertext send
 * completes fully, partly or with an error; cancellations complete; the
 * server closes a client; a loop turn passes (deferred handshakes run,
 * answers flushed); time passes (handshake and idle timeouts)) and the next
 * bytes its arguments. The query layer answers every query at once (the
 * query echoed with QR set).
 *
 * Checked, besides ASan/UBSan: one ciphertext send at a time per slot, no
 * send or receive completion for a slot finalized, nothing sent on a slot
 * after its close, and every client that was never sent garbage and never
 * saw a failed send reads exactly its own answers, in the order asked.
 *
 * Seeds (corpus/tlsconn/): a client that handshakes and asks, two clients
 * with short sends, a handshake that times out.
 */
#include "../../core/tlsconn.c"
#include "../../core/doh.c"
#include "../../core/tlssrv.c"
#include "../../core/tls.c"

#include <openssl/ec_key.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <unistd.h>

#define CHECK(x)                                                                         \
	do {                                                                             \
		if (!(x)) {                                                              \
			fprintf(stderr, "fuzz_tlsconn: %s (%s:%d)\n", #x, __FILE__, __LINE__); \
			abort();                                                         \
		}                                                                        \
	} while (0)

#define CLIENTS 4
#define CAP 4
#define SLOTS (CAP + 8)

typedef struct client {
	bool on;
	SSL *ssl;
	BIO *in, *out;
	uint32_t idx, gen;
	bool spoiled; /* garbage or an error: its answers are not checked */
	uint16_t sent, read; /* queries asked, answers read */
	uint8_t carry[14]; /* an answer split over reads */
	int carry_len;
} client_t;

#define FDS 4096

static struct {
	dp_tcpconns_t t;
	dp_tlsconns_t tls;
	uint64_t now;
	SSL_CTX *srv, *cli;
	client_t c[CLIENTS];
	/* per slot: the transport's view */
	bool recv[SLOTS], recv_cancel[SLOTS], shut[SLOTS];
	const uint8_t *out[SLOTS];
	size_t out_len[SLOTS];
	uint32_t out_gen[SLOTS];
	uint32_t fd_idx[FDS]; /* fd - 100 -> slot */
	int next_fd;
} W;

static void spoil_slot(uint32_t idx)
{
	for (int i = 0; i < CLIENTS; i++)
		if (W.c[i].on && W.c[i].idx == idx)
			W.c[i].spoiled = true;
}

/* ---- tcpconn's transport ---- */

static void t_recv(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	CHECK(!W.recv[idx] && !W.shut[idx]);
	W.recv[idx] = true;
	W.recv_cancel[idx] = false;
}
static void t_recv_cancel(void *ctx, uint32_t idx, uint32_t gen, int fd)
{
	W.recv_cancel[idx] = true;
}
static void t_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf, size_t len)
{
	CHECK(dp_tlsconn_is(&W.tls, idx));
	dp_tlsconn_send(&W.tls, idx, gen, buf, len);
}
static void t_shutdown(void *ctx, uint32_t idx, int fd, bool cancel)
{
	CHECK(idx == W.fd_idx[fd - 100]);
	W.shut[idx] = true;
	spoil_slot(idx); /* closed by the server (evicted, timed out, ...) */
	if (cancel)
		W.recv_cancel[idx] = true;
}
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
	CHECK(!W.recv[idx] && !W.out[idx]); /* finalized with an operation in flight */
	dp_tlsconn_drop(&W.tls, idx);
	W.shut[idx] = W.recv_cancel[idx] = false; /* the slot may be taken again */
	for (int i = 0; i < CLIENTS; i++)
		if (W.c[i].on && W.c[i].idx == idx)
			W.c[i].gen = UINT32_MAX; /* gone */
}
static int t_frame(void *ctx, uint32_t idx, uint32_t gen, uint8_t li, uint8_t *msg, size_t len)
{
	uint8_t a[64];
	size_t n = DP_MIN(len, sizeof(a));
	memcpy(a, msg, n);
	a[2] |= 0x80;
	dp_tcpconn_answer(&W.t, idx, gen, a, n);
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

static void l_send(void *ctx, uint32_t idx, uint32_t gen, int fd, const uint8_t *buf, size_t len)
{
	CHECK(!W.out[idx]); /* one send at a time */
	W.out[idx] = buf ? buf : (const uint8_t *)"";
	W.out_len[idx] = len;
	W.out_gen[idx] = gen;
}
static long l_read_now(void *ctx, int fd, uint8_t *buf, size_t cap)
{
	return -EAGAIN;
}
static void l_stat(void *ctx, int which) {}
static const dp_tlsconn_io_t tls_io = { .send = l_send, .read_now = l_read_now, .stat = l_stat };

/* ---- set-up, once ---- */

static SSL_CTX *server_ctx(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	EC_KEY_generate_key(ec);
	EVP_PKEY *pk = EVP_PKEY_new();
	EVP_PKEY_assign_EC_KEY(pk, ec);
	X509 *x = X509_new();
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, pk);
	X509_NAME *nm = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const uint8_t *)"dns.test", -1, -1, 0);
	X509_set_issuer_name(x, nm);
	X509_sign(x, pk, EVP_sha256());
	dp_config_t cfg;
	memset(&cfg, 0, sizeof(cfg));
	snprintf(cfg.cert_file, sizeof(cfg.cert_file), "/tmp/dp-fuzz-tls-%d.pem", (int)getpid());
	snprintf(cfg.key_file, sizeof(cfg.key_file), "/tmp/dp-fuzz-tls-%d.key", (int)getpid());
	FILE *f = fopen(cfg.cert_file, "w");
	PEM_write_X509(f, x);
	fclose(f);
	f = fopen(cfg.key_file, "w");
	PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	cfg.listen_tls_min_version = TLS1_2_VERSION;
	char err[256];
	SSL_CTX *ctx = dp_tlssrv_ctx(&cfg, err, sizeof(err));
	unlink(cfg.cert_file);
	unlink(cfg.key_file);
	X509_free(x);
	EVP_PKEY_free(pk);
	CHECK(ctx);
	return ctx;
}

/* ---- events ---- */

static client_t *pick(uint8_t b)
{
	client_t *c = &W.c[b % CLIENTS];
	return c->on && c->gen != UINT32_MAX ? c : NULL;
}

static void connect_client(client_t *c, uint8_t arg)
{
	if ((c->on && c->gen != UINT32_MAX) || W.next_fd >= FDS)
		return;
	if (c->ssl)
		SSL_free(c->ssl); /* a client gone: its place is taken */
	c->ssl = NULL;
	int fd = W.next_fd++;
	int idx = dp_tcpconn_accept(&W.t, 100 + fd, 0x80);
	if (idx < 0)
		return;
	W.fd_idx[fd] = (uint32_t)idx;
	uint32_t gen = W.t.c[idx].gen;
	CHECK(dp_tlsconn_open(&W.tls, (uint32_t)idx, gen, W.srv, W.now, false) == 0);
	memset(c, 0, sizeof(*c));
	c->on = true;
	c->idx = (uint32_t)idx;
	c->gen = gen;
	c->ssl = SSL_new(W.cli);
	c->in = BIO_new(BIO_s_mem());
	c->out = BIO_new(BIO_s_mem());
	SSL_set_bio(c->ssl, c->in, c->out);
	SSL_set_connect_state(c->ssl);
	if (arg & 1)
		SSL_set_alpn_protos(c->ssl, (const uint8_t *)(arg & 2 ? "\x02h2" : "\x03" "dot"),
				    arg & 2 ? 3 : 4);
	SSL_do_handshake(c->ssl);
}

/* Deliver up to n octets of what c wrote (or garbage) in one receive. */
static void deliver(client_t *c, size_t n, const uint8_t *junk, size_t junk_len)
{
	if (!W.recv[c->idx])
		return;
	uint8_t buf[8192];
	int got;
	if (junk) {
		got = (int)DP_MIN(junk_len, sizeof(buf));
		memcpy(buf, junk, (size_t)got);
		c->spoiled = true;
	} else {
		got = BIO_read(c->out, buf, (int)DP_MIN(n, sizeof(buf)));
	}
	if (got > 0)
		dp_tlsconn_on_recv(&W.tls, c->idx, c->gen, got, true, buf);
}

static void recv_end(client_t *c, int res)
{
	if (!W.recv[c->idx])
		return;
	W.recv[c->idx] = false;
	if (res < 0 && res != -ENOBUFS && res != -ECANCELED)
		c->spoiled = true;
	dp_tlsconn_on_recv(&W.tls, c->idx, c->gen, res, false, NULL);
}

static void send_done(client_t *c, uint8_t how, uint8_t part)
{
	uint32_t i = c->idx;
	if (!W.out[i])
		return;
	size_t n = W.out_len[i];
	int res = (int)n;
	if (how == 1 && n > 1)
		res = 1 + part % (int)(n - 1);
	else if (how == 2 || W.shut[i]) {
		res = how == 2 ? -ECONNRESET : -ECANCELED;
		c->spoiled = true;
	}
	if (res > 0)
		BIO_write(c->in, W.out[i], res);
	W.out[i] = NULL;
	dp_tlsconn_on_send(&W.tls, i, W.out_gen[i], res);
}

/* The client reads what it can: answers must be its own, in order. */
static void client_read(client_t *c)
{
	SSL_do_handshake(c->ssl);
	uint8_t buf[4096];
	int n;
	while ((n = SSL_read(c->ssl, buf, sizeof(buf))) > 0) {
		for (int o = 0; o < n; o++) {
			c->carry[c->carry_len++] = buf[o];
			if (c->carry_len < 14)
				continue;
			c->carry_len = 0;
			if (c->spoiled)
				continue;
			uint16_t id = (uint16_t)(c->carry[2] << 8 | c->carry[3]);
			CHECK(dp_rd16(c->carry) == 12 && (c->carry[4] & 0x80));
			CHECK(id == c->read + 1);
			c->read++;
		}
	}
}

static void client_query(client_t *c)
{
	if (!SSL_is_init_finished(c->ssl))
		return;
	uint16_t id = (uint16_t)(c->sent + 1);
	uint8_t q[14] = { 0, 12, (uint8_t)(id >> 8), (uint8_t)id, 1, 0 };
	if (SSL_write(c->ssl, q, sizeof(q)) == (int)sizeof(q))
		c->sent++;
}

static void turn(void)
{
	dp_tlsconn_run(&W.tls);
	dp_tcpconn_resume_pending(&W.t);
	dp_tcpconn_flush(&W.t);
}

static void cancels_done(void)
{
	for (int i = 0; i < CLIENTS; i++) {
		client_t *c = pick((uint8_t)i);
		if (!c)
			continue;
		if (W.out[c->idx] && W.shut[c->idx])
			send_done(c, 0, 0);
		if (W.recv[c->idx] && W.recv_cancel[c->idx])
			recv_end(c, -ECANCELED);
	}
}

static void step(const uint8_t *p, size_t n)
{
	uint8_t op = p[0], a = n > 1 ? p[1] : 0, b = n > 2 ? p[2] : 0;
	client_t *c = pick(a);
	switch (op % 14) {
	case 0: connect_client(&W.c[a % CLIENTS], b); break;
	case 1: if (c) { SSL_do_handshake(c->ssl); deliver(c, 1 + (size_t)b * 64, NULL, 0); } break;
	case 2: if (c) deliver(c, 1 + b % 16, NULL, 0); break;
	case 3: if (c) deliver(c, 0, p + 3, n > 3 ? DP_MIN(n - 3, (size_t)b) : 0); break;
	case 4: if (c) send_done(c, 0, 0); break;
	case 5: if (c) send_done(c, 1, b); break;
	case 6: if (c) send_done(c, 2, 0); break;
	case 7: if (c) client_query(c); break;
	case 8: if (c) client_read(c); break;
	case 9: if (c) recv_end(c, b % 3 == 0 ? 0 : b % 3 == 1 ? -ENOBUFS : -ECONNRESET); break;
	case 10: if (c) { dp_tcpconn_close(&W.t, c->idx); c->spoiled = true; } break;
	case 11: if (c) { SSL_shutdown(c->ssl); c->spoiled = true; } break;
	case 12: W.now += (uint64_t)b * 50; dp_tlsconn_expire(&W.tls, W.now, 5000);
		dp_tcpconn_expire(&W.t, 10000); break;
	default: turn(); cancels_done(); break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool once;
	if (!once) {
		W.srv = server_ctx();
		W.cli = SSL_CTX_new(TLS_method());
		once = true;
	}
	SSL_CTX *srv = W.srv, *cli = W.cli;
	memset(&W, 0, sizeof(W));
	W.srv = srv;
	W.cli = cli;
	W.now = 1000;
	W.next_fd = 0;
	CHECK(dp_tcpconn_init(&W.t, CAP, 8, &tcp_io, NULL, &W.now) == 0);
	CHECK(dp_tlsconn_init(&W.tls, &W.t, &tls_io, NULL) == 0);
	/* steps of 3 octets, a step's garbage taken from what follows */
	for (size_t o = 0; o < size; o += 3)
		step(data + o, size - o);
	/* the end: a few turns with everything completing */
	for (int r = 0; r < 8; r++) {
		turn();
		cancels_done();
		for (int i = 0; i < CLIENTS; i++) {
			client_t *c = pick((uint8_t)i);
			if (c) {
				while (W.out[c->idx])
					send_done(c, 0, 0);
				client_read(c);
			}
		}
	}
	/* Teardown: the transport goes first, its operations with it. */
	memset(W.recv, 0, sizeof(W.recv));
	memset(W.out, 0, sizeof(W.out));
	W.tls.teardown = true;
	dp_tcpconn_close_all(&W.t);
	dp_tlsconn_free(&W.tls);
	dp_tcpconn_free(&W.t);
	for (int i = 0; i < CLIENTS; i++)
		if (W.c[i].ssl)
			SSL_free(W.c[i].ssl);
	return 0;
}
