/* SPDX-License-Identifier: MIT */
#include "spool_syncio.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "ds_assert.h"

#define SYNCIO_QUEUE_MAX 1024

struct syncio_cqe {
	uint64_t tag;
	int res;
};

struct spool_syncio {
	struct spool_lane *lane;
	void (*settled)(void *ctx, uint64_t cookie, int res);
	void *settled_ctx;
	struct syncio_cqe q[SYNCIO_QUEUE_MAX];
	unsigned first, n;
};

static int push(struct spool_syncio *s, uint64_t tag, int res)
{
	if (s->n == SYNCIO_QUEUE_MAX)
		return -EAGAIN;
	s->q[(s->first + s->n) % SYNCIO_QUEUE_MAX] = (struct syncio_cqe){tag, res};
	s->n++;
	return 0;
}

static int sio_write(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag)
{
	struct spool_syncio *s = ctx;
	ssize_t w;

	if (s->n == SYNCIO_QUEUE_MAX)
		return -EAGAIN;
	w = pwrite(fd, buf, len, (off_t)off);
	return push(s, tag, w < 0 ? -errno : (int)w);
}

static int sio_flush(void *ctx, int fd, uint64_t tag)
{
	struct spool_syncio *s = ctx;

	if (s->n == SYNCIO_QUEUE_MAX)
		return -EAGAIN;
	return push(s, tag, fdatasync(fd) ? -errno : 0);
}

static int sio_write_flush(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t wtag,
			   int flush_fd, uint64_t ftag)
{
	struct spool_syncio *s = ctx;
	ssize_t w;

	if (s->n + 2 > SYNCIO_QUEUE_MAX)
		return -EAGAIN;
	w = pwrite(fd, buf, len, (off_t)off);
	push(s, wtag, w < 0 ? -errno : (int)w);
	/* A short or failed write cancels its linked flush. */
	return push(s, ftag, w != (ssize_t)len ? -ECANCELED : fdatasync(flush_fd) ? -errno : 0);
}

static void sio_settled(void *ctx, uint64_t cookie, int res)
{
	struct spool_syncio *s = ctx;

	if (s->settled)
		s->settled(s->settled_ctx, cookie, res);
}

static const struct spool_io_ops syncio_ops = {
	.write = sio_write, .flush = sio_flush, .write_flush = sio_write_flush, .settled = sio_settled};

const struct spool_io_ops *spool_syncio_ops(void)
{
	return &syncio_ops;
}

int spool_syncio_create(struct spool_syncio **out, void (*settled)(void *ctx, uint64_t cookie, int res),
			void *settled_ctx)
{
	struct spool_syncio *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->settled = settled;
	s->settled_ctx = settled_ctx;
	*out = s;
	return 0;
}

void spool_syncio_destroy(struct spool_syncio *s)
{
	free(s);
}

void spool_syncio_attach(struct spool_syncio *s, struct spool_lane *l)
{
	s->lane = l;
}

void spool_syncio_run(struct spool_syncio *s)
{
	DS_ASSERT(s->lane);
	spool_lane_kick(s->lane);
	for (unsigned rounds = 0; s->n; rounds++) {
		struct syncio_cqe c = s->q[s->first];
		s->first = (s->first + 1) % SYNCIO_QUEUE_MAX;
		s->n--;
		spool_lane_complete(s->lane, c.tag, c.res);
		if (!s->n)
			spool_lane_kick(s->lane);
		DS_ASSERT(rounds < 100000000);
	}
}
