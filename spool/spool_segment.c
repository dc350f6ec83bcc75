/* SPDX-License-Identifier: MIT */
/*
 * Segment files and the spare thread (see spool_segment.h): the blocking
 * half of a lane, kept apart from the hot path in spool_lane.c.
 */
#include "spool_segment.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "spool_format.h"

int spool_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd))
		rc = -errno;
	close(fd);
	return rc;
}

void seg_files_close(struct seg_files *f)
{
	for (uint32_t i = 0; i < f->n; i++)
		close(f->fd[i]);
	f->n = 0;
}

/* f->fd[0] is open; open the others the same way (each its own file description). */
static int seg_files_open(const char *path, int flags, uint32_t n, struct seg_files *f)
{
	DS_ASSERT(f->n == 1 && n >= 1 && n <= SPOOL_SEG_FDS_MAX);
	while (f->n < n) {
		int fd = open(path, flags);
		if (fd < 0)
			return -errno;
		f->fd[f->n++] = fd;
	}
	return 0;
}

int spool_fsync_parent(const char *path)
{
	char parent[PATH_MAX];
	size_t n = strlen(path);

	if (n >= sizeof(parent))
		return -ENAMETOOLONG;
	memcpy(parent, path, n + 1);
	while (n > 1 && parent[n - 1] == '/')
		parent[--n] = 0;
	while (n > 0 && parent[n - 1] != '/')
		n--;
	if (n == 0)
		return spool_fsync_dir(".");
	while (n > 1 && parent[n - 1] == '/')
		n--;
	parent[n] = 0;
	return spool_fsync_dir(parent);
}

/*
 * Create, allocate, zero-fill, stamp and make durable one segment, so the
 * hot path's fdatasync never has to commit metadata (size, extents).
 * On failure *seq_free says whether no file of that name is left behind
 * (the sequence number can be used again: a gap in a lane's sequence
 * would cut the body of a message that spans it).
 */
/* Allocate size bytes and, with prewrite, write every one of them (paced). */
static int seg_fill(int fd, uint64_t size, bool prewrite)
{
	if (fallocate(fd, 0, 0, (off_t)size)) {
		int rc = -errno;
		if (rc != -EOPNOTSUPP || ftruncate(fd, (off_t)size))
			return rc;
	}
	if (!prewrite)
		return 0;
	/*
	 * Paced: each chunk is written back before the next is dirtied.
	 * Zero-filling 64 MiB into the page cache and fsyncing it at the end
	 * would put tens of megabytes of writeback in the device queue in front
	 * of the hot path's fdatasync (a p99 spike each time a segment is
	 * prepared); this way a flush waits behind one chunk at most.
	 */
	enum { ZB = 256 << 10 };
	static const uint8_t zero[ZB];
	for (uint64_t off = 0; off < size;) {
		size_t n = (size_t)DS_MIN((uint64_t)ZB, size - off);
		ssize_t w = pwrite(fd, zero, n, (off_t)off);
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		if (sync_file_range(fd, (off_t)off, w,
				    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
					    SYNC_FILE_RANGE_WAIT_AFTER) &&
		    errno != ENOSYS && errno != EINVAL)
			return -errno;
		off += (uint64_t)w;
	}
	return 0;
}

/* Write the header with a fresh epoch and make file and directory entry durable. */
static int seg_stamp(int fd, const struct seg_params *p, uint64_t seq, uint64_t *epoch)
{
	uint8_t hdr[SPOOL_SEG_HDR_SIZE];
	struct spool_seg_hdr h = {0};

	do {
		if (getrandom(&h.epoch, sizeof(h.epoch), 0) != sizeof(h.epoch))
			h.epoch = (uint64_t)ds_mono_ns() ^ ((uint64_t)seq << 32) ^ (uint64_t)getpid();
	} while (!h.epoch);
	h.version = SPOOL_FORMAT_VERSION;
	h.lane = p->lane_no;
	h.seq = seq;
	h.created_us = ds_wall_us();
	h.segment_size = p->segment_size;
	spool_seg_hdr_encode(hdr, &h);
	if (pwrite(fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr))
		return -EIO;
	if (fsync(fd))
		return -errno;
	*epoch = h.epoch;
	return spool_fsync_dir(p->lane_dir);
}

/*
 * The descriptors direct mode writes a segment through. Every write on them
 * carries RWF_DSYNC already; O_DSYNC says the same for the whole open file
 * description, which is what a FUSE file system is told (the open flags come
 * with every WRITE; RWF_DSYNC does not, and the kernel sends no FSYNC after
 * an asynchronous direct write: the power-cut FS needs it to know the write
 * is durable on completion). On ext4/XFS the two are the same IOCB_DSYNC.
 */
#define SEG_ODIRECT_FLAGS (O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC)

/*
 * Prepared and durable through the page cache; with want_odirect, data goes
 * around it from now on: *fd becomes an O_DIRECT descriptor. A file system
 * that refuses O_DIRECT (EINVAL) is said once, and never asked again.
 */
static int seg_open_direct(struct spool_spare *sp, const char *path, int *fd, bool *odirect)
{
	*odirect = false;
	if (!sp->p.want_odirect || __atomic_load_n(&sp->odirect_refused, __ATOMIC_RELAXED))
		return 0;
	int dfd = open(path, SEG_ODIRECT_FLAGS);
	if (dfd >= 0) {
		posix_fadvise(*fd, 0, (off_t)sp->p.segment_size, POSIX_FADV_DONTNEED);
		close(*fd);
		*fd = dfd;
		*odirect = true;
		return 0;
	}
	if (errno != EINVAL)
		return -errno;
	static int logged;
	if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
		fprintf(stderr,
			"spool: O_DIRECT refused on %s (EINVAL): spool-io direct falls back to buffered\n",
			sp->p.lane_dir);
	__atomic_store_n(&sp->odirect_refused, true, __ATOMIC_RELAXED);
	return 0;
}

/* The lane quota (tests): room for one more segment? 0 or -ENOSPC. */
static int seg_quota(const struct seg_params *p)
{
	uint64_t *seqs;
	int n;

	if (!p->lane_bytes_max)
		return 0;
	n = spool_seg_list(p->lane_dir, &seqs);
	free(seqs);
	if (n < 0)
		return n;
	return (uint64_t)(n + 1) * p->segment_size > p->lane_bytes_max ? -ENOSPC : 0;
}

static int seg_prepare(struct spool_spare *sp, uint64_t seq, struct seg_ready *out, bool *seq_free)
{
	const struct seg_params *p = &sp->p;
	char path[PATH_MAX];
	int fd, rc;

	*seq_free = true;
	out->files.n = 0;
	rc = seg_quota(p);
	if (!rc)
		rc = spool_seg_path(path, sizeof(path), p->dir, p->lane_no, seq);
	if (rc)
		return rc;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0) {
		*seq_free = errno != EEXIST;
		return -errno;
	}
	rc = seg_fill(fd, p->segment_size, p->prewrite);
	if (!rc)
		rc = seg_stamp(fd, p, seq, &out->epoch);
	if (!rc)
		rc = seg_open_direct(sp, path, &fd, &out->odirect);
	if (rc)
		goto fail;
	out->files.fd[0] = fd;
	out->files.n = 1;
	rc = seg_files_open(path, out->odirect ? SEG_ODIRECT_FLAGS : O_RDWR | O_CLOEXEC, p->nfds,
			    &out->files);
	if (rc) {
		seg_files_close(&out->files);
		fd = -1;
		goto fail;
	}
	out->seq = seq;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	*seq_free = !unlink(path) || errno == ENOENT;
	return rc;
}

static void *spare_main(void *arg)
{
	struct spool_spare *sp = arg;

	pthread_mutex_lock(&sp->mu);
	while (!sp->stop) {
		struct seg_ready seg = {.files.n = 0};
		uint64_t seq;
		bool seq_free = false;
		int rc;

		if (!sp->want || sp->ready) {
			pthread_cond_wait(&sp->cv, &sp->mu);
			continue;
		}
		seq = sp->next_seq++;
		pthread_mutex_unlock(&sp->mu);
		rc = seg_prepare(sp, seq, &seg, &seq_free);
		pthread_mutex_lock(&sp->mu);
		sp->want = false;
		if (rc) {
			/* Reuse the number: a txn open across the next roll must find seq + 1. */
			if (seq_free && sp->next_seq == seq + 1)
				sp->next_seq = seq;
			__atomic_add_fetch(&sp->prepare_errors, 1, __ATOMIC_RELAXED);
			__atomic_store_n(&sp->err, rc, __ATOMIC_RELAXED);
		} else {
			DS_ASSERT(seg.files.n == sp->p.nfds && seg.seq == seq);
			sp->seg = seg;
			__atomic_store_n(&sp->ready, true, __ATOMIC_RELEASE);
		}
		pthread_cond_broadcast(&sp->cv);
	}
	pthread_mutex_unlock(&sp->mu);
	return NULL;
}

static void request_locked(struct spool_spare *sp)
{
	if (!sp->ready && !sp->want) {
		sp->err = 0;
		sp->want = true;
		pthread_cond_broadcast(&sp->cv);
	}
}

int spool_spare_start(struct spool_spare *sp, const struct seg_params *p, uint64_t next_seq)
{
	int rc;

	DS_ASSERT(!sp->started && p->nfds >= 1 && p->nfds <= SPOOL_SEG_FDS_MAX && next_seq >= 1);
	sp->p = *p;
	sp->next_seq = next_seq;
	pthread_mutex_init(&sp->mu, NULL);
	pthread_cond_init(&sp->cv, NULL);
	rc = -pthread_create(&sp->thr, NULL, spare_main, sp);
	if (rc) {
		pthread_mutex_destroy(&sp->mu);
		pthread_cond_destroy(&sp->cv);
		return rc;
	}
	sp->started = true;
	return 0;
}

void spool_spare_stop(struct spool_spare *sp)
{
	if (!sp->started)
		return;
	pthread_mutex_lock(&sp->mu);
	sp->stop = true;
	pthread_cond_broadcast(&sp->cv);
	pthread_mutex_unlock(&sp->mu);
	pthread_join(sp->thr, NULL);
	pthread_mutex_destroy(&sp->mu);
	pthread_cond_destroy(&sp->cv);
	sp->started = false;
	if (sp->ready && sp->seg.files.n) {
		/* An unused spare: remove it instead of leaving an empty segment per restart. */
		char path[PATH_MAX];
		if (!spool_seg_path(path, sizeof(path), sp->p.dir, sp->p.lane_no, sp->seg.seq))
			unlink(path);
		seg_files_close(&sp->seg.files);
	}
	sp->ready = false;
}

int spool_spare_take(struct spool_spare *sp, struct seg_ready *out)
{
	int rc;

	pthread_mutex_lock(&sp->mu);
	if (!sp->ready && !sp->want && sp->err) {
		rc = sp->err;
		sp->err = 0; /* try again next time */
		pthread_mutex_unlock(&sp->mu);
		return rc == -ENOSPC || rc == -EDQUOT ? -ENOSPC : rc;
	}
	request_locked(sp);
	while (!sp->ready && !sp->err)
		pthread_cond_wait(&sp->cv, &sp->mu);
	if (!sp->ready) {
		rc = sp->err;
		sp->err = 0;
		pthread_mutex_unlock(&sp->mu);
		return rc == -EDQUOT ? -ENOSPC : rc;
	}
	*out = sp->seg;
	sp->seg.files.n = 0;
	__atomic_store_n(&sp->ready, false, __ATOMIC_RELEASE);
	request_locked(sp);
	pthread_mutex_unlock(&sp->mu);
	return 0;
}

bool spool_spare_failing(const struct spool_spare *sp)
{
	return !__atomic_load_n(&sp->ready, __ATOMIC_ACQUIRE) && __atomic_load_n(&sp->err, __ATOMIC_RELAXED);
}

uint64_t spool_spare_errors(const struct spool_spare *sp)
{
	return __atomic_load_n(&sp->prepare_errors, __ATOMIC_RELAXED);
}

int spool_dir_create(const char *path)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(tmp))
		return n ? -ENAMETOOLONG : -EINVAL;
	memcpy(tmp, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (tmp[i] != '/' && tmp[i] != 0)
			continue;
		char c = tmp[i];
		tmp[i] = 0;
		if (mkdir(tmp, 0750) == 0) {
			int rc = spool_fsync_parent(tmp);
			if (rc)
				return rc;
		} else if (errno != EEXIST) {
			return -errno;
		}
		tmp[i] = c;
	}
	return 0;
}
