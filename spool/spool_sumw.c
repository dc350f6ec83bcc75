/* SPDX-License-Identifier: MIT */
/* The per-lane seal-summary writer thread (spool_sumw.h). */
#include "spool_sumw.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "spool.h"
#include "spool_format.h"
#include "spool_sum.h"

/* Queue entries: the sequence, this bit set when the segment is to be flushed first. */
#define SUMW_SYNC (1ull << 63)

static int job_run(struct spool_sumw *w, struct spool_sumw_job j, bool sealed)
{
	bool sync = !!(j.seq & SUMW_SYNC);
	int rc;

	if (!j.acc)
		return spool_sum_write(w->dir, w->lane, j.seq & ~SUMW_SYNC, sync, sealed);
	rc = spool_sum_write_acc(w->dir, j.acc, sync, sealed);
	spool_sum_acc_free(j.acc);
	free(j.acc);
	return rc;
}

static bool sum_exists(const char *dir, unsigned lane, uint64_t seq)
{
	char p[PATH_MAX];
	struct stat st;

	return !spool_sum_path(p, sizeof(p), dir, lane, seq) && !stat(p, &st);
}

/*
 * Segments of earlier runs without a summary: the active ones of earlier
 * runs (never sealed), those of a binary before format 4, those whose
 * summary was lost. One at a time, sealed segments of this run first.
 */
static void backfill(struct spool_sumw *w)
{
	char ldir[PATH_MAX];
	uint64_t *seqs = NULL;
	int n;

	if (!w->backfill_below || spool_lane_dir_path(ldir, sizeof(ldir), w->dir, w->lane))
		return;
	n = spool_seg_list(ldir, &seqs);
	for (int i = 0; i < n; i++) {
		bool stop;
		if (seqs[i] >= w->backfill_below || sum_exists(w->dir, w->lane, seqs[i]))
			continue;
		pthread_mutex_lock(&w->mu);
		while (w->count && !w->stop) {
			struct spool_sumw_job j = w->q[w->first];
			w->first = (w->first + 1) % SPOOL_SUMW_QUEUE;
			w->count--;
			pthread_mutex_unlock(&w->mu);
			int rc = job_run(w, j, true);
			pthread_mutex_lock(&w->mu);
			if (rc)
				w->failed++;
			else
				w->written++;
		}
		stop = w->stop;
		pthread_mutex_unlock(&w->mu);
		if (stop)
			break;
		if (spool_sum_write(w->dir, w->lane, seqs[i], true, false))
			w->failed++;
		else
			w->written++;
	}
	free(seqs);
}

static void *sumw_main(void *arg)
{
	struct spool_sumw *w = arg;

	backfill(w);
	pthread_mutex_lock(&w->mu);
	for (;;) {
		struct spool_sumw_job j;
		int rc;

		while (!w->count && !w->stop)
			pthread_cond_wait(&w->cv, &w->mu);
		if (!w->count)
			break;
		j = w->q[w->first];
		w->first = (w->first + 1) % SPOOL_SUMW_QUEUE;
		w->count--;
		pthread_mutex_unlock(&w->mu);
		/*
		 * -ENOENT: reclaimed before its summary was written; -EBADMSG, -E2BIG: no
		 * summary for it by design. Either way recovery scans it whole: nothing to do.
		 */
		rc = job_run(w, j, true);
		pthread_mutex_lock(&w->mu);
		if (rc)
			w->failed++;
		else
			w->written++;
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int spool_sumw_start(struct spool_sumw *w, const char *dir, unsigned lane, uint64_t backfill_below)
{
	int rc;

	memset(w, 0, sizeof(*w));
	w->dir = dir;
	w->lane = lane;
	w->backfill_below = backfill_below;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	rc = pthread_create(&w->th, NULL, sumw_main, w);
	if (rc) {
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mu);
		return -rc;
	}
	w->started = true;
	return 0;
}

static void sumw_queue(struct spool_sumw *w, uint64_t seq, struct spool_sum_acc *acc)
{
	bool queued = false;

	if (w->started) {
		pthread_mutex_lock(&w->mu);
		if (w->count < SPOOL_SUMW_QUEUE) {
			w->q[(w->first + w->count) % SPOOL_SUMW_QUEUE] = (struct spool_sumw_job){seq, acc};
			w->count++;
			queued = true;
			pthread_cond_signal(&w->cv);
		} else {
			w->dropped++;
		}
		pthread_mutex_unlock(&w->mu);
	}
	if (!queued && acc) {
		spool_sum_acc_free(acc);
		free(acc);
	}
}

void spool_sumw_sealed(struct spool_sumw *w, uint64_t seq, struct spool_sum_acc *acc)
{
	sumw_queue(w, seq, acc);
}

void spool_sumw_closed(struct spool_sumw *w, uint64_t seq, struct spool_sum_acc *acc)
{
	sumw_queue(w, seq | SUMW_SYNC, acc);
}

void spool_sumw_stop(struct spool_sumw *w)
{
	if (!w->started)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->th, NULL);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	w->started = false;
}
