/* SPDX-License-Identifier: MIT */
/*
 * One io_uring with its provided receive buffers (io/ring.h): set-up, the
 * opcode probe, SQEs, buffers.
 */
#include "ring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ds_assert.h"

static int ring_queue_init(struct io_ring *r, uint32_t sq_entries, bool verbose)
{
	struct io_uring_params p;
	static const unsigned flag_sets[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	/* The kernel rounds both sizes up to a power of 2 and wants CQ >= SQ. */
	DS_ASSERT(sq_entries >= IO_RING_ENTRIES_MIN && sq_entries <= IO_RING_ENTRIES_MAX);
	uint32_t sq_pow2 = 1;
	while (sq_pow2 < sq_entries)
		sq_pow2 <<= 1;
	uint32_t cq_entries = DS_MAX((uint32_t)IO_RING_CQ_ENTRIES_MIN, 2 * sq_pow2);
	int ret = -EINVAL;
	for (size_t i = 0; i < DS_ARRAY_SIZE(flag_sets); i++) {
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
		p.cq_entries = cq_entries;
		ret = io_uring_queue_init_params(sq_entries, &r->uring, &p);
		if (ret == 0) {
			r->up = true;
			if (verbose && i > 0)
				fprintf(stderr, "dotspool: io_uring without %s (older kernel)\n",
					i == 1 ? "DEFER_TASKRUN" : "COOP_TASKRUN");
			break;
		}
	}
	if (ret < 0)
		return ret;
	if (!(p.features & IORING_FEAT_NODROP) && verbose)
		fprintf(stderr, "dotspool: warning: kernel lacks IORING_FEAT_NODROP\n");
	return 0;
}

/* Provided buffer ring for multishot recv (liburing 2.3 API). */
static int ring_rbufs_init(struct io_ring *r, uint32_t rbuf_count, uint32_t rbuf_size)
{
	r->rbuf_count = rbuf_count;
	r->rbuf_size = rbuf_size;
	r->br_map_bytes = (size_t)rbuf_count * sizeof(struct io_uring_buf);
	void *map = mmap(NULL, r->br_map_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (map == MAP_FAILED)
		return -ENOMEM;
	r->br = map;
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)map,
		.ring_entries = rbuf_count,
		.bgid = 0,
	};
	int ret = io_uring_register_buf_ring(&r->uring, &reg, 0);
	if (ret < 0) {
		fprintf(stderr, "dotspool: io_uring provided buffer rings unsupported: %s\n", strerror(-ret));
		return ret;
	}
	r->rbufs = aligned_alloc(4096, (size_t)rbuf_count * rbuf_size);
	if (!r->rbufs)
		return -ENOMEM;
	io_uring_buf_ring_init(r->br);
	int mask = io_uring_buf_ring_mask(rbuf_count);
	for (uint32_t i = 0; i < rbuf_count; i++)
		io_uring_buf_ring_add(r->br, io_rbuf(r, (uint16_t)i), rbuf_size, (uint16_t)i, mask, (int)i);
	io_uring_buf_ring_advance(r->br, (int)rbuf_count);
	return 0;
}

int io_ring_init(struct io_ring *r, uint32_t sq_entries, uint32_t rbuf_count, uint32_t rbuf_size,
		 bool verbose)
{
	int ret = ring_queue_init(r, sq_entries, verbose);
	if (ret < 0)
		return ret;
	return ring_rbufs_init(r, rbuf_count, rbuf_size);
}

void io_ring_fini(struct io_ring *r)
{
	/* Closing the ring also unregisters the provided buffer ring that lives in br. */
	if (r->up)
		io_uring_queue_exit(&r->uring);
	r->up = false;
	if (r->br)
		munmap(r->br, r->br_map_bytes);
	r->br = NULL;
	free(r->rbufs);
	r->rbufs = NULL;
}

void io_ring_probe(struct io_ring *r)
{
	static const struct {
		int op;
		const char *name;
	} need[] = {
		{IORING_OP_ACCEPT, "ACCEPT"}, {IORING_OP_RECV, "RECV"},
		{IORING_OP_SEND, "SEND"},     {IORING_OP_WRITE, "WRITE"},
		{IORING_OP_FSYNC, "FSYNC"},   {IORING_OP_TIMEOUT, "TIMEOUT"},
		{IORING_OP_READ, "READ"},     {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
	};
	struct io_uring_probe *probe = io_uring_get_probe_ring(&r->uring);
	if (!probe)
		return;
	for (size_t i = 0; i < DS_ARRAY_SIZE(need); i++)
		if (!io_uring_opcode_supported(probe, need[i].op))
			fprintf(stderr,
				"dotspool: io_uring opcode %s missing: this kernel cannot run dotspool\n",
				need[i].name);
	io_uring_free_probe(probe);
}

struct io_uring_sqe *io_sqe(struct io_ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
	if (!sqe) {
		/* SQ full: hand what we have to the kernel and take a fresh slot. */
		io_uring_submit(&r->uring);
		sqe = io_uring_get_sqe(&r->uring);
	}
	DS_ASSERT(sqe != NULL);
	return sqe;
}

int io_sqe_pair(struct io_ring *r, struct io_uring_sqe **first, struct io_uring_sqe **second)
{
	if (io_uring_sq_space_left(&r->uring) < 2)
		io_uring_submit(&r->uring);
	if (io_uring_sq_space_left(&r->uring) < 2)
		return -EAGAIN; /* the kernel took nothing (-EBUSY) */
	*first = io_uring_get_sqe(&r->uring);
	*second = io_uring_get_sqe(&r->uring);
	DS_ASSERT(*first != NULL && *second != NULL);
	return 0;
}

void io_rbuf_return(struct io_ring *r, uint16_t bid)
{
	io_uring_buf_ring_add(r->br, io_rbuf(r, bid), r->rbuf_size, bid,
			      io_uring_buf_ring_mask(r->rbuf_count), 0);
	io_uring_buf_ring_advance(r->br, 1);
}
