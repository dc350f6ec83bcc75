/* SPDX-License-Identifier: MIT */
/* The per-lane seal-summary writer thread (spool_sumw.h). */
#include "spool_sumw.h"

#include <errno.h>
#include <string.h>

#include "spool_sum.h"

static void *sumw_main(void *arg)
{
	struct spool_sumw *w = arg;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		uint64_t seq;
		int rc;

		while (!w->count && !w->stop)
			pthread_cond_wait(&w->cv, &w->mu);
		if (!w->count)
			break;
		seq = w->q[w->first];
		w->first = (w->first + 1) % SPOOL_SUMW_QUEUE;
		w->count--;
		pthread_mutex_unlock(&w->mu);
		/*
		 * -ENOENT: reclaimed before its summary was written; -EBADMSG, -E2BIG: no
		 * summary for it by design. Either way recovery scans it whole: nothing to do.
		 */
		rc = spool_sum_write(w->dir, w->lane, seq);
		pthread_mutex_lock(&w->mu);
		if (rc)
			w->failed++;
		else
			w->written++;
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int spool_sumw_start(struct spool_sumw *w, const char *dir, unsigned lane)
{
	int rc;

	memset(w, 0, sizeof(*w));
	w->dir = dir;
	w->lane = lane;
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

void spool_sumw_sealed(struct spool_sumw *w, uint64_t seq)
{
	if (!w->started)
		return;
	pthread_mutex_lock(&w->mu);
	if (w->count < SPOOL_SUMW_QUEUE) {
		w->q[(w->first + w->count) % SPOOL_SUMW_QUEUE] = seq;
		w->count++;
		pthread_cond_signal(&w->cv);
	} else {
		w->dropped++;
	}
	pthread_mutex_unlock(&w->mu);
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
