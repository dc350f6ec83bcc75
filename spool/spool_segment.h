/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_SEGMENT_H
#define DS_SPOOL_SEGMENT_H

/*
 * Segment files, internal to spool/: preparing a segment (create,
 * allocate, zero-fill, stamp, fsync with its directory) and the spare
 * thread that keeps prepared segments ready per lane (one by default;
 * --segment-spares N keeps N, so a burst of N segments never waits for a
 * zero-fill nor shares the disk with one). Everything here
 * blocks in ordinary syscalls and runs off the hot path: on the spare
 * thread, or in the lane's worker only at open and when a roll finds no
 * spare ready. The lane (spool_lane.c) meets it only in
 * spool_spare_take(), under the spare's mutex.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/*
 * A segment's open files. Linux reports a writeback error once per open
 * file description (errseq_t): of two fdatasyncs in flight on one
 * descriptor, the one that runs first may consume the error of the other's
 * range, and the other then returns 0 for data that never reached the
 * disk. So an op whose success means "durable" (flush, seal, DSYNC write)
 * holds a descriptor of its own while it is in flight: a segment is opened
 * once per such op that may be in flight (flushes_in_flight_max, plus its
 * seal). Buffered writes, whose errors are not writeback errors, use fd[0].
 */
#define SPOOL_SEG_FDS_MAX (16 + 1)

struct seg_files {
	int fd[SPOOL_SEG_FDS_MAX];
	uint32_t n;
};

void seg_files_close(struct seg_files *f);

/* What preparing a lane's segments needs; the strings outlive the spare. */
struct seg_params {
	const char *dir, *lane_dir;
	unsigned lane_no;
	uint64_t segment_size;
	uint64_t lane_bytes_max; /* 0 = no quota */
	bool prewrite;
	uint32_t spares;   /* prepared segments kept ready, 1..SPOOL_SPARES_MAX */
	bool want_odirect; /* open prepared segments with O_DIRECT (falls back once refused) */
	uint32_t nfds;	   /* descriptors per segment, 1..SPOOL_SEG_FDS_MAX */
	/*
	 * Recycling (format 5): the pool of the lane's free files (SEQ.free),
	 * kept by the reclamation table (spool_reclaim.h; the lane passes it
	 * in, so this file needs no more of it). free_count NULL = never look
	 * for a free file.
	 */
	uint32_t (*free_count)(void *pool, unsigned lane);
	void (*free_note)(void *pool, unsigned lane, int delta, uint64_t bytes);
	void *pool;
};

/* Most prepared segments a lane keeps ready (--segment-spares). */
#define SPOOL_SPARES_MAX 64

/* A prepared segment, handed from the spare thread to the lane. */
struct seg_ready {
	struct seg_files files;
	uint64_t seq, epoch;
	bool odirect;
};

struct spool_spare {
	struct seg_params p;
	pthread_t thr;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool started, stop;
	bool want;	      /* prepare until p.spares are ready (cleared by a failure) */
	bool odirect_refused; /* O_DIRECT was refused once: stop asking */
	int err;	      /* the last preparation failed (-errno), until taken */
	/* Prepared segments in sequence order, q[first] the next one taken. */
	struct seg_ready q[SPOOL_SPARES_MAX];
	uint32_t first, nready; /* nready: atomic, read by the worker */
	uint64_t last_take_ns;	/* the lane's last take (monotonic): top-ups wait for quiet */
	uint64_t next_seq;
	uint64_t prepare_errors; /* failed preparations (atomic: read by the worker) */
	/* Preparations from a free file (recycled) and from a new, zero-filled one (atomic). */
	uint64_t prepared_recycled, prepared_fresh;
};

/* Start the spare thread; the first segment it prepares gets next_seq. 0 or -errno. */
int spool_spare_start(struct spool_spare *sp, const struct seg_params *p, uint64_t next_seq);
/* Stop and join the thread; unused prepared spares are closed and removed (highest first). */
void spool_spare_stop(struct spool_spare *sp);
/*
 * Take the prepared segment (waiting for it if needed) and ask for the
 * next one. A failed preparation is returned once (-ENOSPC for a full
 * disk or quota, else its -errno); the call after that asks again.
 */
int spool_spare_take(struct spool_spare *sp, struct seg_ready *out);
/* The spare is not ready and its last preparation failed (new txns should know early). */
bool spool_spare_failing(const struct spool_spare *sp);
uint64_t spool_spare_errors(const struct spool_spare *sp);
/* Prepared segments ready now (a gauge: read by the worker without the mutex). */
uint32_t spool_spare_ready(const struct spool_spare *sp);
void spool_spare_prepared(const struct spool_spare *sp, uint64_t *recycled, uint64_t *fresh);

/*
 * At lane open (before the spare starts): remove the lane's free files that
 * cannot be reused (not exactly segment_size bytes) or exceed max (0: all),
 * and return through *top the highest sequence a free file names (0: none).
 * The count kept, or -errno.
 */
int spool_free_sweep(const char *lane_dir, uint64_t segment_size, uint32_t max, uint64_t *top);

int spool_fsync_dir(const char *path);
/* fsync the directory holding path (its last component's parent). */
int spool_fsync_parent(const char *path);

#endif
