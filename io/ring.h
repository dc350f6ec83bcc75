/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_RING_H
#define DS_IO_RING_H

/*
 * One io_uring and its provided receive buffers: the primitives every user
 * of a worker's ring shares (connections, the /metrics endpoint, the spool
 * storage interface, and the delivery stage to come). Knows nothing of
 * workers, connections or sessions.
 */

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* user_data: operation in the top 4 bits, the rest depends on it. */
enum io_op {
	IO_OP_ACCEPT = 1, /* low bits: listener index */
	IO_OP_RECV,	  /* conn index << 32 | generation */
	IO_OP_SEND,
	IO_OP_SPOOL, /* spool tag (60 bits) */
	IO_OP_TICK,
	IO_OP_WAKE,
	IO_OP_IGNORE,  /* cancellations: nothing to do on completion */
	IO_OP_METRICS, /* the /metrics endpoint (io/mserve.c) */
	IO_OP_DLV,     /* the delivery stage (io/dlv.c): kind << 56 | connection << 32 | generation */
	IO_OP_VERIFY,  /* recipient verification probes (io/verify.c): probe << 32 | generation */
};

/* Submission queue entries per ring (--ring-entries); the kernel's limit is 32768. */
#define IO_RING_ENTRIES_MIN 4
#define IO_RING_ENTRIES_MAX 32768
/* Completion queue: at least this, and at least 2 x the submission queue. */
#define IO_RING_CQ_ENTRIES_MIN 16384

#define IO_OP_SHIFT 60
#define IO_TAG_MASK ((1ull << IO_OP_SHIFT) - 1)

static inline uint64_t io_ud(enum io_op op, uint64_t low)
{
	return ((uint64_t)op << IO_OP_SHIFT) | (low & IO_TAG_MASK);
}

struct io_ring {
	struct io_uring uring;
	bool up; /* initialised: io_ring_fini() tears it down */
	/* provided receive buffers, buffer group 0 */
	struct io_uring_buf_ring *br;
	size_t br_map_bytes;
	uint8_t *rbufs;
	uint32_t rbuf_count;
	uint32_t rbuf_size;
};

/*
 * Set up the ring (sq_entries, rounded up to a power of 2 by the kernel;
 * the completion queue holds at least IO_RING_CQ_ENTRIES_MIN and twice the
 * submission queue) and rbuf_count provided buffers of rbuf_size bytes.
 * verbose: say on stderr which setup flags the kernel lacks (one worker
 * says it for all). 0 or -errno; on failure io_ring_fini() frees what was
 * set up.
 */
int io_ring_init(struct io_ring *r, uint32_t sq_entries, uint32_t rbuf_count, uint32_t rbuf_size,
		 bool verbose);
void io_ring_fini(struct io_ring *r);
/* Says on stderr which opcodes dotspool needs this kernel lacks. */
void io_ring_probe(struct io_ring *r);

/* A free SQE; when the submission queue is full, what it holds goes to the kernel first. */
struct io_uring_sqe *io_sqe(struct io_ring *r);
/*
 * Two SQEs at once, for a linked pair that must reach the kernel together
 * (taken one by one, a full queue would submit the head alone). -EAGAIN
 * when there is no room for two even after submitting.
 */
int io_sqe_pair(struct io_ring *r, struct io_uring_sqe **first, struct io_uring_sqe **second);

/* The bytes of provided buffer bid (from a CQE with IORING_CQE_F_BUFFER). */
static inline uint8_t *io_rbuf(const struct io_ring *r, uint16_t bid)
{
	return r->rbufs + (size_t)bid * r->rbuf_size;
}
/* Give buffer bid back to the kernel once its bytes have been used. */
void io_rbuf_return(struct io_ring *r, uint16_t bid);

#endif
