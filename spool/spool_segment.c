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

/* Write the header with a fresh epoch and fsync the file (not its directory). */
static int seg_stamp_file(int fd, const struct seg_params *p, uint64_t seq, uint32_t flags, uint64_t *epoch)
{
	uint8_t hdr[SPOOL_SEG_HDR_SIZE];
	struct spool_seg_hdr h = {.flags = flags};

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
	return 0;
}

/* Write the header with a fresh epoch and make file and directory entry durable. */
static int seg_stamp(int fd, const struct seg_params *p, uint64_t seq, uint64_t *epoch)
{
	int rc = seg_stamp_file(fd, p, seq, 0, epoch);
	return rc ? rc : spool_fsync_dir(p->lane_dir);
}

/* Remove free file path, counting it out of the pool when it was there to remove. */
static void free_drop(const struct seg_params *p, const char *path)
{
	if (!unlink(path))
		p->free_note(p->pool, p->lane_no, -1, p->segment_size);
}

/*
 * Reuse a free file (FORMAT.md, "Recycled segments") as segment seq at
 * path: the lowest-numbered SEQ.free of the lane, exactly segment_size
 * bytes. In this order: the lane directory fsynced (the reclaimer's rename
 * to .free is durable before the file changes: a crash can never show the
 * old name with the new header), the new header written (new epoch, seq,
 * RECYCLED) and fsynced, the file renamed to path, the directory fsynced.
 * A crash before the rename leaves a free file (ignored by readers, reused
 * or removed later); after it, a valid segment whose body still holds the
 * old incarnation's bytes, which never parse (another epoch). 0 with *fd
 * open on path; -ENOENT when there is no usable free file (nothing
 * changed); any other failure removes that free file (and path, if the
 * rename happened) and returns -errno: the caller prepares a fresh file.
 */
static int seg_recycle(const struct seg_params *p, uint64_t seq, const char *path, int *fd, uint64_t *epoch)
{
	char fpath[PATH_MAX];
	uint64_t *fseqs = NULL;
	struct stat st;
	bool renamed = false;
	int n, rc;

	*fd = -1;
	if (!p->free_count || !p->free_count(p->pool, p->lane_no))
		return -ENOENT;
	n = spool_lane_file_list(p->lane_dir, "free", &fseqs);
	if (n <= 0) {
		free(fseqs);
		return -ENOENT;
	}
	rc = spool_lane_file_path(fpath, sizeof(fpath), p->dir, p->lane_no, fseqs[0], "free");
	free(fseqs);
	if (rc)
		return -ENOENT;
	*fd = open(fpath, O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return -ENOENT; /* taken or removed meanwhile (the disk bound): nothing changed */
	if (fstat(*fd, &st)) {
		rc = -errno;
		goto fail;
	}
	if ((uint64_t)st.st_size != p->segment_size) {
		rc = -EINVAL;
		goto fail;
	}
	/* Never over a segment that exists (sequence numbers are never used twice). */
	if (!access(path, F_OK)) {
		close(*fd);
		*fd = -1;
		return -EEXIST;
	}
	rc = spool_fsync_dir(p->lane_dir);
	if (!rc)
		rc = seg_stamp_file(*fd, p, seq, SPOOL_SEG_F_RECYCLED, epoch);
	if (!rc && rename(fpath, path))
		rc = -errno;
	if (!rc) {
		renamed = true;
		p->free_note(p->pool, p->lane_no, -1, p->segment_size);
		rc = spool_fsync_dir(p->lane_dir);
	}
	if (!rc)
		return 0;
fail:
	close(*fd);
	*fd = -1;
	if (renamed)
		unlink(path);
	else
		free_drop(p, fpath);
	return rc;
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

/* The lane quota (tests): room for one more segment? Free files count too. 0 or -ENOSPC. */
static int seg_quota(const struct seg_params *p)
{
	uint64_t *seqs;
	int n, nf;

	if (!p->lane_bytes_max)
		return 0;
	n = spool_seg_list(p->lane_dir, &seqs);
	free(seqs);
	if (n < 0)
		return n;
	nf = spool_lane_file_list(p->lane_dir, "free", &seqs);
	free(seqs);
	if (nf < 0)
		return nf;
	return (uint64_t)(n + nf + 1) * p->segment_size > p->lane_bytes_max ? -ENOSPC : 0;
}

static int seg_prepare(struct spool_spare *sp, uint64_t seq, struct seg_ready *out, bool *seq_free)
{
	const struct seg_params *p = &sp->p;
	char path[PATH_MAX];
	int fd, rc;

	*seq_free = true;
	out->files.n = 0;
	rc = spool_seg_path(path, sizeof(path), p->dir, p->lane_no, seq);
	if (rc)
		return rc;
	rc = seg_recycle(p, seq, path, &fd, &out->epoch);
	if (rc == -EEXIST) {
		*seq_free = false;
		return rc;
	}
	if (!rc) {
		__atomic_add_fetch(&sp->prepared_recycled, 1, __ATOMIC_RELAXED);
	} else {
		/* No free file (or it failed and is gone): a new file, zero-filled. */
		rc = seg_quota(p);
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
			__atomic_add_fetch(&sp->prepared_fresh, 1, __ATOMIC_RELAXED);
	}
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

/*
 * Beyond the first spare, the pool is topped up only after the lane took
 * none for this long: a burst then writes its data once at the disk's full
 * bandwidth instead of sharing it with zero-fill for the spares that follow
 * (the zero-fill doubles the bytes a fresh segment costs the device).
 */
#define SPARE_TOPUP_QUIET_NS (1000ull * 1000 * 1000)

/*
 * 0: prepare the next segment now; else the monotonic time (ns) at which
 * to look again (UINT64_MAX: when signalled). The first spare is always
 * wanted at once; no failure may have stopped the filling.
 */
static uint64_t spare_wanted_at(const struct spool_spare *sp)
{
	uint64_t quiet_at;

	if (!sp->want || sp->nready >= sp->p.spares)
		return UINT64_MAX;
	if (!sp->nready)
		return 0;
	quiet_at = sp->last_take_ns + SPARE_TOPUP_QUIET_NS;
	return (uint64_t)ds_mono_ns() >= quiet_at ? 0 : quiet_at;
}

static void spare_wait_until(struct spool_spare *sp, uint64_t at_ns)
{
	struct timespec ts;

	if (at_ns == UINT64_MAX) {
		pthread_cond_wait(&sp->cv, &sp->mu);
		return;
	}
	ts.tv_sec = (time_t)(at_ns / 1000000000ull);
	ts.tv_nsec = (long)(at_ns % 1000000000ull);
	pthread_cond_timedwait(&sp->cv, &sp->mu, &ts);
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

		uint64_t at = spare_wanted_at(sp);
		if (at) {
			spare_wait_until(sp, at);
			continue;
		}
		seq = sp->next_seq++;
		pthread_mutex_unlock(&sp->mu);
		rc = seg_prepare(sp, seq, &seg, &seq_free);
		pthread_mutex_lock(&sp->mu);
		if (rc) {
			/* Reuse the number: a txn open across the next roll must find seq + 1. */
			if (seq_free && sp->next_seq == seq + 1)
				sp->next_seq = seq;
			__atomic_add_fetch(&sp->prepare_errors, 1, __ATOMIC_RELAXED);
			__atomic_store_n(&sp->err, rc, __ATOMIC_RELAXED);
			sp->want = false; /* tried again when the lane asks */
		} else {
			DS_ASSERT(seg.files.n == sp->p.nfds && seg.seq == seq);
			DS_ASSERT(sp->nready < sp->p.spares);
			sp->q[(sp->first + sp->nready) % SPOOL_SPARES_MAX] = seg;
			__atomic_store_n(&sp->nready, sp->nready + 1, __ATOMIC_RELEASE);
		}
		pthread_cond_broadcast(&sp->cv);
	}
	pthread_mutex_unlock(&sp->mu);
	return NULL;
}

/*
 * Fill the pool again (after a take, or after a failure once the lane
 * asks). Always a wake-up: the thread may sleep untimed on a full pool.
 */
static void request_locked(struct spool_spare *sp)
{
	if (sp->nready >= sp->p.spares)
		return;
	if (!sp->want) {
		sp->err = 0;
		sp->want = true;
	}
	pthread_cond_broadcast(&sp->cv);
}

int spool_spare_start(struct spool_spare *sp, const struct seg_params *p, uint64_t next_seq)
{
	int rc;

	DS_ASSERT(!sp->started && p->nfds >= 1 && p->nfds <= SPOOL_SEG_FDS_MAX && next_seq >= 1);
	DS_ASSERT(p->spares >= 1 && p->spares <= SPOOL_SPARES_MAX);
	sp->p = *p;
	sp->next_seq = next_seq;
	sp->first = sp->nready = 0;
	sp->last_take_ns = 0;
	pthread_mutex_init(&sp->mu, NULL);
	/* Timed waits (the top-up's quiet time) on the clock ds_mono_ns reads. */
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sp->cv, &ca);
	pthread_condattr_destroy(&ca);
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
	/*
	 * Unused spares: removed instead of leaving empty segments per restart,
	 * the highest first, so a crash in between leaves no number missing
	 * below a segment that stays.
	 */
	while (sp->nready) {
		struct seg_ready *r = &sp->q[(sp->first + sp->nready - 1) % SPOOL_SPARES_MAX];
		char path[PATH_MAX];
		if (!spool_seg_path(path, sizeof(path), sp->p.dir, sp->p.lane_no, r->seq))
			unlink(path);
		seg_files_close(&r->files);
		sp->nready--;
	}
}

/*
 * The failure to report when no spare is ready, once (-ENOSPC for a full
 * disk or quota); called with the mutex held, returns with it released.
 */
static int spare_err_take_unlock(struct spool_spare *sp)
{
	int rc = sp->err;

	sp->err = 0; /* try again next time */
	pthread_mutex_unlock(&sp->mu);
	return rc == -ENOSPC || rc == -EDQUOT ? -ENOSPC : rc;
}

int spool_spare_take(struct spool_spare *sp, struct seg_ready *out)
{
	pthread_mutex_lock(&sp->mu);
	if (!sp->nready && !sp->want && sp->err)
		return spare_err_take_unlock(sp);
	request_locked(sp);
	while (!sp->nready && !sp->err)
		pthread_cond_wait(&sp->cv, &sp->mu);
	if (!sp->nready)
		return spare_err_take_unlock(sp);
	*out = sp->q[sp->first];
	sp->q[sp->first].files.n = 0;
	sp->first = (sp->first + 1) % SPOOL_SPARES_MAX;
	__atomic_store_n(&sp->nready, sp->nready - 1, __ATOMIC_RELEASE);
	sp->last_take_ns = (uint64_t)ds_mono_ns();
	request_locked(sp);
	pthread_mutex_unlock(&sp->mu);
	return 0;
}

bool spool_spare_failing(const struct spool_spare *sp)
{
	return !__atomic_load_n(&sp->nready, __ATOMIC_ACQUIRE) && __atomic_load_n(&sp->err, __ATOMIC_RELAXED);
}

uint32_t spool_spare_ready(const struct spool_spare *sp)
{
	return __atomic_load_n(&sp->nready, __ATOMIC_ACQUIRE);
}

uint64_t spool_spare_errors(const struct spool_spare *sp)
{
	return __atomic_load_n(&sp->prepare_errors, __ATOMIC_RELAXED);
}

void spool_spare_prepared(const struct spool_spare *sp, uint64_t *recycled, uint64_t *fresh)
{
	*recycled = __atomic_load_n(&sp->prepared_recycled, __ATOMIC_RELAXED);
	*fresh = __atomic_load_n(&sp->prepared_fresh, __ATOMIC_RELAXED);
}

int spool_free_sweep(const char *lane_dir, uint64_t segment_size, uint32_t max, uint64_t *top)
{
	uint64_t *fseqs;
	uint32_t kept = 0;
	bool removed = false;
	int n = spool_lane_file_list(lane_dir, "free", &fseqs);

	*top = 0;
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		char path[PATH_MAX];
		struct stat st;
		int k = snprintf(path, sizeof(path), "%s/%012llu.free", lane_dir,
				 (unsigned long long)fseqs[i]);

		*top = fseqs[i]; /* sorted: the last one is the highest */
		if (k < 0 || (size_t)k >= sizeof(path))
			continue;
		/* The newest max files stay (lowest numbers go first: the spare takes those). */
		if (!stat(path, &st) && (uint64_t)st.st_size == segment_size && (uint32_t)(n - i) <= max) {
			kept++;
			continue;
		}
		if (!unlink(path))
			removed = true;
	}
	free(fseqs);
	if (removed)
		spool_fsync_dir(lane_dir); /* not needed for correctness: a free file left is harmless */
	return (int)kept;
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
