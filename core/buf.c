/* buf.c - growable byte buffers and the two-buffer send queue (buf.h). */
#include "buf.h"

#include <stdlib.h>

bool dp_buf_realloc(dp_buf_t *b, size_t need, size_t initial)
{
	if (need <= b->cap)
		return true;
	if (need > UINT32_MAX)
		return false;
	size_t n = dp_grow_size(b->cap, need, initial);
	if (n > UINT32_MAX)
		n = UINT32_MAX;
	uint8_t *p = realloc(b->data, n);
	if (!p)
		return false;
	b->data = p;
	b->cap = (uint32_t)n;
	return true;
}

void dp_buf_free(dp_buf_t *b)
{
	free(b->data);
	*b = (dp_buf_t){ NULL, 0, 0 };
}

void dp_sendq_free(dp_sendq_t *q)
{
	dp_buf_free(&q->out);
	dp_buf_free(&q->fill);
	q->off = 0;
	q->inflight = false;
}
