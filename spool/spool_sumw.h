/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_SUMW_H
#define DS_SPOOL_SUMW_H

/*
 * The seal-summary writer of one lane, internal to spool/: a thread that
 * writes lane-NN/SSSSSSSSSSSS.sum (spool_sum_write) for each segment the
 * lane reports sealed, off the hot path. The lane only queues the
 * sequence number and the summary it accumulated while writing the segment
 * (a mutex held for a few instructions); a full queue drops it (that
 * segment has no summary: recovery scans it whole). Stopping
 * writes what is queued first.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct spool_sum_acc;

#define SPOOL_SUMW_QUEUE 64

struct spool_sumw_job {
	uint64_t seq;		   /* | SUMW_SYNC: flush the segment first */
	struct spool_sum_acc *acc; /* what the lane accumulated, or NULL: read the segment */
};

struct spool_sumw {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	const char *dir; /* outlives the writer */
	unsigned lane;
	uint64_t backfill_below;
	struct spool_sumw_job q[SPOOL_SUMW_QUEUE];
	unsigned first, count;
	bool stop, started;
	uint64_t written, failed, dropped;
};

/*
 * backfill_below: segments of the lane below this sequence (found at
 * start-up: never written again) that have no summary get one first, in
 * the background (fdatasync'd first; abandoned at stop). 0 = none.
 */
int spool_sumw_start(struct spool_sumw *w, const char *dir, unsigned lane, uint64_t backfill_below);
/*
 * Segment seq is sealed: every byte in it durable, never written again.
 * acc: its summary as the lane accumulated it (taken over: freed by the
 * writer), or NULL (the segment is read).
 */
void spool_sumw_sealed(struct spool_sumw *w, uint64_t seq, struct spool_sum_acc *acc);
/*
 * Segment seq is closed but was not sealed (the lane's active one at a clean
 * close: every byte as written): summarised with a flush first, flagged
 * sealed. Written before stop returns.
 */
void spool_sumw_closed(struct spool_sumw *w, uint64_t seq, struct spool_sum_acc *acc);
void spool_sumw_stop(struct spool_sumw *w);

#endif
