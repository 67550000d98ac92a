/* ring.c - getting SQEs and giving provided buffers back (ring.h). */
#include "ring.h"

struct io_uring_sqe *dp_sqe(dp_shard_t *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	while (unlikely(!sqe)) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	return sqe;
}

void dp_bufring_recycle(dp_shard_t *s, uint16_t bid)
{
	io_uring_buf_ring_add(s->br, dp_bufring_data(s, bid), s->br_size, bid,
			      io_uring_buf_ring_mask(s->br_count), 0);
	io_uring_buf_ring_advance(s->br, 1);
}
