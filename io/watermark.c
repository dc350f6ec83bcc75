/* SPDX-License-Identifier: MIT */
/*
 * The spool's high watermark: one sampler thread, one shared flag (see
 * watermark.h). The directory walk and statvfs run here, never on a worker's
 * loop; a worker only loads the flag at MAIL.
 */
#include "watermark.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "log.h"
#include "metrics.h"
#include "spool_reclaim.h" /* free files go first when the bound needs room */

/*
 * Server-wide, hence process-wide: every worker's sessions read the same
 * flag, and one server runs per process (the spool lock says so).
 */
static atomic_bool wm_high;

static struct {
	pthread_t thread;
	bool running;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	const struct io_config *cfg;
	struct obs_log_ring *log;
	const char *reason; /* why it is high (kept for the line saying it is low again) */
} wm = {.mu = PTHREAD_MUTEX_INITIALIZER};

bool io_watermark_high(void)
{
	return atomic_load_explicit(&wm_high, memory_order_relaxed);
}

/* pct% of total, without overflow for any file system size. */
static uint64_t pct_of(uint64_t total, uint32_t pct)
{
	return (uint64_t)((unsigned __int128)total * pct / 100);
}

void io_watermark_limits(const struct io_watermark_config *c, uint64_t fs_bytes,
			 struct io_watermark_limits *l)
{
	l->max_bytes = c->max_bytes ? c->max_bytes : pct_of(fs_bytes, c->max_pct);
	if (c->min_free_auto)
		l->min_free_bytes = DS_MIN(IO_WATERMARK_FLOOR_BYTES_DEFAULT,
					   pct_of(fs_bytes, IO_WATERMARK_FLOOR_PCT_DEFAULT));
	else
		l->min_free_bytes = c->min_free_bytes ? c->min_free_bytes : pct_of(fs_bytes, c->min_free_pct);
	/* 10% of hysteresis each way: a spool hovering at the limit does not flap. */
	l->resume_bytes = l->max_bytes - l->max_bytes / 10;
	l->resume_free_bytes = l->min_free_bytes + l->min_free_bytes / 10;
}

bool io_watermark_next(bool high, uint64_t bytes, uint64_t free_bytes, const struct io_watermark_limits *l,
		       const char **reason)
{
	bool over = bytes >= l->max_bytes, short_free = free_bytes < l->min_free_bytes;
	if (high && (bytes >= l->resume_bytes || free_bytes < l->resume_free_bytes)) {
		/* Still high: the reason is whatever is not clear yet. */
		over = bytes >= l->resume_bytes;
		short_free = free_bytes < l->resume_free_bytes;
	} else if (high) {
		return false;
	}
	if (reason)
		*reason = over && short_free ? "spool_max+min_free" : over ? "spool_max" : "min_free";
	return over || short_free;
}

/* Allocated bytes of the regular files of one directory; recurse into subdirectories while depth > 0. */
static int dir_bytes(int dfd, unsigned depth, uint64_t *sum)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		int e = -errno;
		close(dfd);
		return e;
	}
	int rc = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		/* A file removed between readdir and stat (reclamation) just no longer counts. */
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (S_ISREG(st.st_mode)) {
			*sum += (uint64_t)st.st_blocks * 512;
		} else if (S_ISDIR(st.st_mode) && depth > 0) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0)
				rc = dir_bytes(sub, depth - 1, sum);
			if (rc < 0)
				break;
		}
		errno = 0;
	}
	if (!de && errno && !rc)
		rc = -errno;
	closedir(d);
	return rc;
}

int io_watermark_spool_bytes(const char *dir, uint64_t *out)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	uint64_t sum = 0;
	int rc = dir_bytes(fd, 1, &sum); /* DIR/lane-NN/NNN.seg */
	if (rc == 0)
		*out = sum;
	return rc;
}

/*
 * One sample: measure, decide, publish. A failed measurement keeps the
 * state as it was (no flapping on a transient error); the next sample tries
 * again. Returns the limits and figures through the out-parameters for the
 * start-up line.
 */
static void sample(struct io_watermark_limits *lim, uint64_t *bytes_out, uint64_t *free_out)
{
	const struct io_config *cfg = wm.cfg;
	struct statvfs vfs;
	uint64_t bytes = 0;
	if (statvfs(cfg->spool_dir, &vfs) < 0 || io_watermark_spool_bytes(cfg->spool_dir, &bytes) < 0)
		return;
	uint64_t fs_bytes = (uint64_t)vfs.f_blocks * vfs.f_frsize;
	uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	struct io_watermark_limits l;
	io_watermark_limits(&cfg->watermark, fs_bytes, &l);
	bool was = io_watermark_high();
	const char *reason = NULL;
	bool now = io_watermark_next(was, bytes, free_bytes, &l, &reason);
	/*
	 * Free files (recycled segments waiting, format 5) count in the bytes;
	 * when the bound needs room they go first, before any MAIL is refused
	 * for long (the next sample measures without them).
	 */
	if (now && cfg->spool.reclaim)
		spool_reclaim_free_drop(cfg->spool.reclaim);
	if (now != was) {
		atomic_store_explicit(&wm_high, now, memory_order_relaxed);
		if (now)
			wm.reason = reason;
		struct obs_log_watermark line = {
			.high = now,
			.reason = wm.reason ? wm.reason : "",
			.bytes = bytes,
			.max_bytes = l.max_bytes,
			.resume_bytes = l.resume_bytes,
			.free_bytes = free_bytes,
			.min_free_bytes = l.min_free_bytes,
			.resume_free_bytes = l.resume_free_bytes,
		};
		if (wm.log)
			obs_log_watermark(wm.log, &line);
	}
	obs_metrics_watermark_set(now, now && !was, bytes, l.max_bytes, l.resume_bytes, free_bytes,
				  l.min_free_bytes);
	if (lim)
		*lim = l;
	if (bytes_out)
		*bytes_out = bytes;
	if (free_out)
		*free_out = free_bytes;
}

static void *sampler_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&wm.mu);
	while (!wm.stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += IO_WATERMARK_PERIOD_MS * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		while (!wm.stop && pthread_cond_timedwait(&wm.cv, &wm.mu, &ts) != ETIMEDOUT)
			;
		if (wm.stop)
			break;
		pthread_mutex_unlock(&wm.mu);
		sample(NULL, NULL, NULL);
		pthread_mutex_lock(&wm.mu);
	}
	pthread_mutex_unlock(&wm.mu);
	return NULL;
}

/* "80% of the file system = N bytes" or "N bytes". */
static void describe(char *buf, size_t cap, uint64_t bytes, uint64_t given, uint32_t pct,
		     const char *auto_text)
{
	if (auto_text)
		snprintf(buf, cap, "%llu bytes (%s)", (unsigned long long)bytes, auto_text);
	else if (given)
		snprintf(buf, cap, "%llu bytes", (unsigned long long)bytes);
	else if (!pct)
		snprintf(buf, cap, "0 (none)");
	else
		snprintf(buf, cap, "%llu bytes (%u%% of the file system)", (unsigned long long)bytes, pct);
}

int io_watermark_start(const struct io_config *cfg, struct obs_log_ring *log)
{
	DS_ASSERT(!wm.running);
	wm.cfg = cfg;
	wm.log = log;
	wm.stop = false;
	wm.reason = NULL;
	atomic_store(&wm_high, false);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int ret = pthread_cond_init(&wm.cv, &ca);
	pthread_condattr_destroy(&ca);
	if (ret)
		return -ret;
	struct io_watermark_limits l = {0};
	uint64_t bytes = 0, free_bytes = 0;
	sample(&l, &bytes, &free_bytes);
	const struct io_watermark_config *c = &cfg->watermark;
	char max_text[128], floor_text[128];
	describe(max_text, sizeof(max_text), l.max_bytes, c->max_bytes, c->max_pct, NULL);
	describe(floor_text, sizeof(floor_text), l.min_free_bytes, c->min_free_bytes, c->min_free_pct,
		 c->min_free_auto ? "default: min(1 GiB, 5% of the file system)" : NULL);
	fprintf(stderr,
		"dotspool: spool watermark: spool-max-bytes %s, resume below %llu; spool-min-free-bytes %s, "
		"resume above %llu; now %llu bytes in the spool, %llu free%s\n",
		max_text, (unsigned long long)l.resume_bytes, floor_text,
		(unsigned long long)l.resume_free_bytes, (unsigned long long)bytes,
		(unsigned long long)free_bytes,
		io_watermark_high() ? ": HIGH, new mail gets 452 at MAIL" : "");
	ret = pthread_create(&wm.thread, NULL, sampler_main, NULL);
	if (ret) {
		pthread_cond_destroy(&wm.cv);
		return -ret;
	}
	wm.running = true;
	return 0;
}

void io_watermark_stop(void)
{
	if (!wm.running)
		return;
	pthread_mutex_lock(&wm.mu);
	wm.stop = true;
	pthread_cond_signal(&wm.cv);
	pthread_mutex_unlock(&wm.mu);
	pthread_join(wm.thread, NULL);
	pthread_cond_destroy(&wm.cv);
	wm.running = false;
	wm.log = NULL;
}
