/* shard.c - a shard thread: ring and buffer set-up, the loop, completion
 * dispatch, and the tear-down (see shard.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conn.h"
#include "dns.h"
#include "fault.h"
#include "shard.h"
#include "uring.h"

/* Shard set-up results, for shard_wait_ready(). */
static pthread_mutex_t ready_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cv = PTHREAD_COND_INITIALIZER;
static int ready_ok, ready_failed;

/* ---- set-up ------------------------------------------------------------- */

static int ring_setup(shard_t *s)
{
	static const unsigned flag_sets[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
		IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
		0,
	};
	int rc = -EINVAL;
	for (size_t i = 0; i < DP_ARRAY_LEN(flag_sets); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = CQ_ENTRIES;
		rc = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &p);
		if (rc == 0)
			break;
	}
	if (rc < 0)
		return rc;
	s->ring_ok = true;
	(void)io_uring_register_ring_fd(&s->ring);
	return 0;
}

/* The provided-buffer ring: RECV_BUF_COUNT receive buffers, all given to
 * the kernel. */
static int bufring_setup(shard_t *s)
{
	s->br_size = RECV_BUF_COUNT * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, s->br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
			 -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	s->br = mem;
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)(uintptr_t)mem;
	reg.ring_entries = RECV_BUF_COUNT;
	reg.bgid = RECV_BGID;
	int rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (rc < 0)
		return rc;
	io_uring_buf_ring_init(s->br);
	s->rbufs = aligned_alloc(4096, (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE);
	if (!s->rbufs)
		return -ENOMEM;
	for (unsigned i = 0; i < RECV_BUF_COUNT; i++)
		io_uring_buf_ring_add(s->br, s->rbufs + (size_t)i * RECV_BUF_SIZE, RECV_BUF_SIZE,
				      (unsigned short)i, io_uring_buf_ring_mask(RECV_BUF_COUNT),
				      (int)i);
	io_uring_buf_ring_advance(s->br, RECV_BUF_COUNT);
	return 0;
}

/* The slot table (all on the free list), the dirty list, the send-buffer
 * stack, and the plaintext buffers (scratch, batch; with --reorder the
 * reversed batch and its offsets). */
static int tables_setup(shard_t *s)
{
	s->conns = calloc(s->max_conns, sizeof(*s->conns));
	s->dirty = calloc(s->max_conns, sizeof(*s->dirty));
	s->txfree = calloc(s->max_conns, sizeof(*s->txfree));
	s->scratch = malloc(SCRATCH_CAP);
	s->ob = malloc(OUT_BATCH_CAP);
	if (!s->conns || !s->dirty || !s->txfree || !s->scratch || !s->ob)
		return -ENOMEM;
	if (s->bh->reorder) {
		s->rev = malloc(sizeof(*s->rev) * (OUT_BATCH_CAP / 8));
		s->ob2 = malloc(OUT_BATCH_CAP);
		if (!s->rev || !s->ob2)
			return -ENOMEM;
	}
	s->free_head = SLOT_NONE;
	for (uint32_t i = s->max_conns; i-- > 0;) {
		s->conns[i].fd = -1;
		s->conns[i].next_free = s->free_head;
		s->free_head = i;
	}
	return 0;
}

/* Set everything up and queue the accepts and the wake-up read. What it
 * allocated before a failure is freed by shard_fini(). */
static int shard_init(shard_t *s)
{
	int rc = ring_setup(s);
	if (rc < 0)
		return rc;
	rc = bufring_setup(s);
	if (rc < 0)
		return rc;
	rc = tables_setup(s);
	if (rc < 0)
		return rc;
	s->rng = (s->seed ^ ((uint64_t)(s->id + 1) * 0x9E3779B97F4A7C15ull)) | 1;
	s->idle_head = s->idle_tail = SLOT_NONE;
	s->now_ms = dp_now_ms();

	s->backoff.tv_sec = 0;
	s->backoff.tv_nsec = 50 * 1000 * 1000;
	for (int i = 0; i < s->nlisten; i++)
		uring_arm_accept(s, i, false);
	uring_arm_wake(s);
	rc = io_uring_submit(&s->ring);
	return rc < 0 ? rc : 0;
}

/* ---- the loop ----------------------------------------------------------- */

static void on_accept(shard_t *s, uint32_t li, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE) && !s->stop)
		uring_arm_accept(s, (int)li, cqe->res < 0);
	if (cqe->res >= 0)
		conn_open(s, cqe->res, s->listen_plain[li]);
}

static void handle_cqe(shard_t *s, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	unsigned op = (unsigned)(ud >> 56);
	uint32_t gen = (uint32_t)(ud >> 32) & 0xffffffu;
	uint32_t idx = (uint32_t)ud;

	switch (op) {
	case OP_ACCEPT:
		on_accept(s, idx, cqe);
		break;
	case OP_RECV:
		conn_on_recv(s, &s->conns[idx], gen, cqe);
		break;
	case OP_SEND:
		conn_on_send(s, &s->conns[idx], cqe);
		break;
	case OP_WAKE:
		s->stop = true;
		break;
	default:
		break;
	}
}

static void shard_loop(shard_t *s)
{
	while (!s->stop) {
		int rc;
		struct __kernel_timespec ts;
		if (unlikely(s->timed) && fault_wait(s, &ts)) {
			struct io_uring_cqe *first;
			rc = io_uring_submit_and_wait_timeout(&s->ring, &first, 1, &ts, NULL);
		} else {
			rc = io_uring_submit_and_wait(&s->ring, 1);
		}
		if (unlikely(s->timed))
			s->now_ms = dp_now_ms();
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
			fprintf(stderr, "dot-responder: shard %d: io_uring_submit_and_wait: %s\n",
				s->id, strerror(-rc));
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&s->ring, head, cqe)
		{
			handle_cqe(s, cqe);
			n++;
		}
		io_uring_cq_advance(&s->ring, n);

		if (unlikely(s->timed))
			fault_timers(s);
		for (uint32_t i = 0; i < s->ndirty; i++)
			conn_service(s, &s->conns[s->dirty[i]]);
		s->ndirty = 0;
	}
}

/* ---- tear-down ---------------------------------------------------------- */

/* Close every connection, cancel what is in flight (by closing the ring),
 * free every buffer. Safe after a partial shard_init(). */
static void shard_fini(shard_t *s)
{
	if (s->conns)
		for (uint32_t i = 0; i < s->max_conns; i++)
			conn_close(s, &s->conns[i]);
	if (s->ring_ok)
		io_uring_queue_exit(&s->ring); /* cancels what is still in flight */
	s->ring_ok = false;
	if (s->br)
		munmap(s->br, s->br_size);
	while (s->ntxfree)
		free(s->txfree[--s->ntxfree]);
	if (s->conns)
		for (uint32_t i = 0; i < s->max_conns; i++)
			free(s->conns[i].tx);
	free(s->rbufs);
	free(s->conns);
	free(s->dirty);
	free(s->txfree);
	free(s->scratch);
	free(s->ob);
	free(s->ob2);
	free(s->rev);
	fault_free_queues(s);
	s->rev = NULL;
	s->rbufs = s->scratch = s->ob = s->ob2 = NULL;
	s->conns = NULL;
	s->dirty = NULL;
	s->txfree = NULL;
	s->br = NULL;
}

static void *shard_main(void *arg)
{
	shard_t *s = arg;
	int rc = shard_init(s);
	if (rc < 0)
		fprintf(stderr, "dot-responder: shard %d: setup failed: %s\n", s->id,
			strerror(-rc));
	pthread_mutex_lock(&ready_mu);
	if (rc < 0)
		ready_failed++;
	else
		ready_ok++;
	pthread_cond_signal(&ready_cv);
	pthread_mutex_unlock(&ready_mu);
	if (rc == 0)
		shard_loop(s);
	shard_fini(s);
	return NULL;
}

/* ---- for the main thread ------------------------------------------------ */

int shard_start(shard_t *s)
{
	return pthread_create(&s->thr, NULL, shard_main, s);
}

int shard_wait_ready(int n)
{
	pthread_mutex_lock(&ready_mu);
	while (ready_ok + ready_failed < n)
		pthread_cond_wait(&ready_cv, &ready_mu);
	int failed = ready_failed;
	pthread_mutex_unlock(&ready_mu);
	return failed;
}

int shard_wake(shard_t *s)
{
	uint64_t one = 1;
	if (s->wake_fd >= 0 && write(s->wake_fd, &one, sizeof(one)) != sizeof(one))
		return -1;
	return 0;
}
