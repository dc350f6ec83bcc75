/* SPDX-License-Identifier: MIT */
/*
 * ds-powercut: a pass-through FUSE file system that can lose power.
 *
 * Every request is applied to a backing directory, except that file data
 * lives first in a page cache modelled inside this process, and namespace
 * changes are remembered until they are durable. What is durable when (the
 * POSIX contract, not what ext4 happens to do):
 *
 *  - File data: a write goes to in-memory 4 KiB pages (dirty per 512-byte
 *    sector); reads merge those pages over the backing file. fsync/fdatasync
 *    of the file writes its dirty sectors and its size to the backing file:
 *    from then on they survive a power cut. Synchronous O_SYNC/O_DSYNC and
 *    RWF_DSYNC writes arrive from the kernel as WRITE followed by FSYNC; an
 *    asynchronous direct write (io_uring, AIO) gets no FSYNC, so a WRITE
 *    through a description opened O_DSYNC/O_SYNC (the open flags come with
 *    every WRITE) is made durable before its reply. RWF_DSYNC alone on an
 *    asynchronous direct write is not seen (FUSE is not told).
 *  - File size: ftruncate and fallocate (mode 0: size only; KEEP_SIZE: no-op;
 *    other modes EOPNOTSUPP) change the size at once for readers and become
 *    durable with the next fsync of the file, like the data.
 *  - Directory entries (create, mkdir, unlink, rmdir, rename): applied to the
 *    backing directory at once, durable once every directory involved (the
 *    parent; both parents for a rename) has been fsynced after the change. An
 *    unlinked file (or a file replaced by rename) waits in a hidden graveyard
 *    (BACKING/.powercut-graveyard) until its removal is durable.
 *
 * "cut" (power cut): freeze first -- every request from then on blocks, and
 * after "release" (or --freeze-timeout-s) fails with EIO, so the program
 * using the file system never sees another completion -- then, per file:
 * a pending size change is kept or lost (coin flip); each run of contiguous
 * dirty sectors is dropped, written whole, torn to a random prefix of its
 * sectors, or torn to a random subset of them (seeded choice); then every
 * namespace change that is not durable is undone, newest first. What happened
 * is logged (--log) and summarised in the reply. Afterwards the backing
 * directory is "the disk after the crash": unmount, and mount it again (or
 * use it directly) to "reboot".
 *
 * EIO injection with Linux's writeback-error semantics: "eio-next-fsync
 * [PATTERN [KIND]]" (or "eio-fsync N [PATTERN [KIND]]": the N-th matching
 * fsync from now; KIND any (default), data: fdatasync only, full: fsync
 * only) makes that fsync fail with EIO; the dirty pages it covered are dropped (the
 * backing file keeps its old bytes, later reads see them: the kernel's cached
 * pages of the file are invalidated). The error is
 * counted per inode (an error sequence, like errseq_t); each open file
 * handle remembers the sequence it has seen: the failing fsync reports it,
 * every other handle open at that time reports EIO once on its next fsync
 * (after writing its dirty data), handles opened later never see it.
 * PATTERN is an fnmatch(3) pattern matched against the path (from the mount
 * root, e.g. "/spool/lane-00/[0-9]*.seg") the handle was opened under.
 *
 * Control: a unix stream socket (--ctl PATH): connect, send one command line,
 * read the one-line JSON reply until EOF. Commands: status, cut, release,
 * eio-next-fsync [PATTERN [KIND]], eio-fsync N [PATTERN [KIND]], eio-off.
 *
 * usage: ds-powercut --backing DIR --ctl SOCKET [--seed N] [--log FILE]
 *                    [--trace PATTERN] [--backing-sync] [--max-dirty-mb N]
 *                    [--freeze-timeout-s S] MOUNTPOINT [FUSE options]
 * Runs in the foreground (-f is implied) so its caller owns the PID; stop it
 * with fusermount3 -u MOUNTPOINT (or SIGTERM). The backing file is not
 * fsynced (the host does not lose power, only the model does) unless
 * --backing-sync.
 *
 * --trace PATTERN (with --log): for files whose path matches, log every write
 * ("W PATH OFF+LEN") and every fsync with the extents it makes durable
 * ("S PATH OFF+LEN ...", "E PATH ..." for one failed by injection), each
 * stamped with CLOCK_REALTIME before the reply: a test can then tell, for
 * any byte, when it became durable and compare that with when the program
 * relied on it (an audit that needs no lucky cut).
 *
 * One mutex serialises all state; memory is bounded by --max-dirty-mb
 * (writes beyond it fail with ENOSPC and say so in the log).
 */
#define FUSE_USE_VERSION 31

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <fuse.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PC_PAGE	     4096u
#define PC_SECT	     512u
#define PC_SECTS     (PC_PAGE / PC_SECT)
#define PC_HASH	     4096u
#define PC_GRAVE     ".powercut-graveyard"
#define PC_CMD_MAX   1024
#define PC_REPLY_MAX 4096

struct pc_page {
	uint64_t idx;
	uint8_t dirty; /* one bit per 512-byte sector */
	uint8_t data[PC_PAGE];
};

struct pc_inode {
	struct pc_inode *hnext;
	ino_t ino;
	bool hashed;	/* in the table; false once its removal is durable (ino may be reused) */
	int fd;		/* backing file, O_RDWR */
	uint64_t size;	/* logical size, what readers see */
	uint64_t dsize; /* backing (durable) size */
	uint64_t
		vis; /* backing bytes below vis are file content; above: truncated away since the last sync */
	bool size_dirty;
	struct pc_page **pages; /* sorted by idx */
	size_t npages, cap;
	uint64_t err_seq;
	unsigned refs; /* open handles */
	char *path;    /* path at the last open, for the log */
};

#define PC_FH_MAGIC 0x70636668u /* file handle */
#define PC_DH_MAGIC 0x70636468u /* directory handle */

struct pc_fh {
	uint32_t magic;
	struct pc_inode *in;
	uint64_t seen; /* err_seq this open file description has seen */
	char *path;
};

enum ns_kind { NS_CREATE, NS_MKDIR, NS_UNLINK, NS_RMDIR, NS_RENAME };
static const char *const ns_names[] = {"create", "mkdir", "unlink", "rmdir", "rename"};

struct ns_op {
	enum ns_kind kind;
	ino_t dir[2];
	bool synced[2];
	int ndir;
	ino_t ino;   /* the entry's inode (create/mkdir) */
	mode_t mode; /* rmdir: to recreate it */
	char *a, *b; /* path; rename: from, to */
	char *grave; /* unlink, or the target a rename replaced: where it waits */
};

struct cut_stats {
	uint64_t files, runs, dropped, whole, prefix, subset, sect_written, sect_lost, sizes_kept, sizes_lost;
	uint64_t ns_undone, ns_failed;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int bfd; /* backing directory */
	char *backing;
	struct pc_inode *tab[PC_HASH];
	struct ns_op *ops;
	size_t nops, opcap;
	uint64_t rng;
	FILE *log;
	bool backing_sync;
	uint64_t dirty_max_pages, dirty_pages;
	unsigned freeze_timeout_s;
	bool frozen, released;
	uint64_t grave_no;
	/* EIO injection */
	char eio_pattern[256];
	uint64_t eio_countdown;	 /* 0: off; n: the n-th matching fsync fails */
	int eio_kind;		 /* 0 any, 1 fdatasync only, 2 full fsync only */
	char trace_pattern[256]; /* --trace: log writes and syncs of matching files */
	struct cut_stats last_cut;
	/* counters */
	uint64_t n_writes, n_fsyncs, n_fsyncs_clean, n_fsyncdirs, n_eio_injected, n_eio_reported, n_enospc,
		n_cuts;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .bfd = -1};

static void log_stamp(void);

static void pc_log(const char *fmt, ...)
{
	if (!G.log)
		return;
	log_stamp();
	va_list ap;
	va_start(ap, fmt);
	vfprintf(G.log, fmt, ap);
	va_end(ap);
	fputc('\n', G.log);
}

static void log_stamp(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(G.log, "%lld.%06ld ", (long long)ts.tv_sec, ts.tv_nsec / 1000);
}

static bool traced(const char *path)
{
	return G.log && G.trace_pattern[0] && path && !fnmatch(G.trace_pattern, path, 0);
}

static uint64_t rnd(void)
{
	/* splitmix64: seeded, reproducible for a given order of requests. */
	uint64_t z = (G.rng += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* Path relative to the backing directory: "/" -> ".", "/a/b" -> "a/b". */
static const char *rel(const char *path)
{
	return (path[0] == '/' && path[1] == 0) ? "." : path + 1;
}

static bool hidden(const char *path)
{
	return path && !strncmp(path, "/" PC_GRAVE, sizeof(PC_GRAVE)) &&
	       (path[sizeof(PC_GRAVE)] == 0 || path[sizeof(PC_GRAVE)] == '/');
}

/* Inode number of the directory holding path (relative form). */
static int parent_ino(const char *path, ino_t *out)
{
	char buf[PATH_MAX];
	struct stat st;
	snprintf(buf, sizeof(buf), "%s", rel(path));
	char *slash = strrchr(buf, '/');
	const char *dir = ".";
	if (slash) {
		*slash = 0;
		dir = buf;
	}
	if (fstatat(G.bfd, dir, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	*out = st.st_ino;
	return 0;
}

/* ---- frozen: after a cut nothing completes until released, then everything fails ---- */

/* Called with G.mu held at the start of every request: non-zero (-EIO) if the power is off. */
static int power_off(void)
{
	if (!G.frozen)
		return 0;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += G.freeze_timeout_s;
	while (!G.released)
		if (pthread_cond_timedwait(&G.cv, &G.mu, &until) == ETIMEDOUT) {
			if (!G.released)
				pc_log("freeze timeout (%us): releasing blocked requests with EIO",
				       G.freeze_timeout_s);
			G.released = true;
		}
	return -EIO;
}

#define ENTER()                                                                                              \
	do {                                                                                                 \
		pthread_mutex_lock(&G.mu);                                                                   \
		int off_rc_ = power_off();                                                                   \
		if (off_rc_) {                                                                               \
			pthread_mutex_unlock(&G.mu);                                                         \
			return off_rc_;                                                                      \
		}                                                                                            \
	} while (0)
#define LEAVE(rc)                                                                                            \
	do {                                                                                                 \
		int leave_rc_ = (rc);                                                                        \
		pthread_mutex_unlock(&G.mu);                                                                 \
		return leave_rc_;                                                                            \
	} while (0)

/* ---- inodes and their pages ---- */

static struct pc_inode *inode_find(ino_t ino)
{
	for (struct pc_inode *in = G.tab[ino % PC_HASH]; in; in = in->hnext)
		if (in->ino == ino)
			return in;
	return NULL;
}

static void inode_unhash(struct pc_inode *in)
{
	if (!in->hashed)
		return;
	struct pc_inode **pp = &G.tab[in->ino % PC_HASH];
	while (*pp != in)
		pp = &(*pp)->hnext;
	*pp = in->hnext;
	in->hashed = false;
}

static void inode_drop_pages(struct pc_inode *in, size_t from)
{
	for (size_t i = from; i < in->npages; i++) {
		free(in->pages[i]);
		G.dirty_pages--;
	}
	in->npages = from < in->npages ? from : in->npages;
}

/* Forget the inode if nothing refers to it and it holds nothing unsynced. */
static void inode_maybe_free(struct pc_inode *in)
{
	if (in->refs || in->npages || in->size_dirty)
		return;
	inode_unhash(in);
	close(in->fd);
	free(in->pages);
	free(in->path);
	free(in);
}

/* The inode of the backing file at path (relative to the mount root), created on first use. */
static int inode_get(const char *path, struct pc_inode **out)
{
	struct stat st;
	if (fstatat(G.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	struct pc_inode *in = inode_find(st.st_ino);
	if (in) {
		*out = in;
		return 0;
	}
	int fd = openat(G.bfd, rel(path), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	in = calloc(1, sizeof(*in));
	if (!in) {
		close(fd);
		return -ENOMEM;
	}
	in->ino = st.st_ino;
	in->fd = fd;
	in->size = in->dsize = in->vis = (uint64_t)st.st_size;
	in->path = strdup(path);
	in->hashed = true;
	in->hnext = G.tab[in->ino % PC_HASH];
	G.tab[in->ino % PC_HASH] = in;
	*out = in;
	return 0;
}

/* Index of the first page with idx >= want. */
static size_t page_pos(const struct pc_inode *in, uint64_t want)
{
	size_t lo = 0, hi = in->npages;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (in->pages[mid]->idx < want)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The page idx, filled from the backing file (or zeros) when first touched; NULL: ENOMEM/ENOSPC. */
static struct pc_page *page_get(struct pc_inode *in, uint64_t idx, int *err)
{
	size_t pos = page_pos(in, idx);
	if (pos < in->npages && in->pages[pos]->idx == idx)
		return in->pages[pos];
	if (G.dirty_pages >= G.dirty_max_pages) {
		G.n_enospc++;
		pc_log("ENOSPC: dirty limit of %" PRIu64 " pages reached (%s)", G.dirty_max_pages, in->path);
		*err = -ENOSPC;
		return NULL;
	}
	if (in->npages == in->cap) {
		size_t cap = in->cap ? 2 * in->cap : 64;
		struct pc_page **p = realloc(in->pages, cap * sizeof(*p));
		if (!p) {
			*err = -ENOMEM;
			return NULL;
		}
		in->pages = p;
		in->cap = cap;
	}
	struct pc_page *pg = calloc(1, sizeof(*pg));
	if (!pg) {
		*err = -ENOMEM;
		return NULL;
	}
	pg->idx = idx;
	uint64_t off = idx * PC_PAGE;
	if (off < in->vis) {
		uint64_t n = in->vis - off < PC_PAGE ? in->vis - off : PC_PAGE;
		ssize_t r = pread(in->fd, pg->data, n, (off_t)off);
		if (r < 0) {
			*err = -errno;
			free(pg);
			return NULL;
		}
	}
	memmove(in->pages + pos + 1, in->pages + pos, (in->npages - pos) * sizeof(*in->pages));
	in->pages[pos] = pg;
	in->npages++;
	G.dirty_pages++;
	return pg;
}

static int inode_read(struct pc_inode *in, char *buf, size_t len, uint64_t off)
{
	if (off >= in->size)
		return 0;
	if (len > in->size - off)
		len = (size_t)(in->size - off);
	size_t done = 0;
	size_t pos = page_pos(in, off / PC_PAGE);
	while (done < len) {
		uint64_t o = off + done;
		uint64_t idx = o / PC_PAGE;
		size_t in_page = (size_t)(o % PC_PAGE);
		size_t n = PC_PAGE - in_page;
		if (n > len - done)
			n = len - done;
		while (pos < in->npages && in->pages[pos]->idx < idx)
			pos++;
		if (pos < in->npages && in->pages[pos]->idx == idx) {
			memcpy(buf + done, in->pages[pos]->data + in_page, n);
		} else {
			memset(buf + done, 0, n);
			if (o < in->vis) {
				size_t b = in->vis - o < n ? (size_t)(in->vis - o) : n;
				ssize_t r = pread(in->fd, buf + done, b, (off_t)o);
				if (r < 0)
					return -errno;
			}
		}
		done += n;
	}
	return (int)len;
}

static int inode_write(struct pc_inode *in, const char *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		uint64_t o = off + done;
		size_t in_page = (size_t)(o % PC_PAGE);
		size_t n = PC_PAGE - in_page;
		if (n > len - done)
			n = len - done;
		int err = 0;
		struct pc_page *pg = page_get(in, o / PC_PAGE, &err);
		if (!pg)
			return done ? (int)done : err;
		memcpy(pg->data + in_page, buf + done, n);
		for (size_t s = in_page / PC_SECT; s <= (in_page + n - 1) / PC_SECT; s++)
			pg->dirty |= (uint8_t)(1u << s);
		done += n;
	}
	if (off + len > in->size) {
		in->size = off + len;
		in->size_dirty = true;
	}
	return (int)len;
}

static int inode_truncate(struct pc_inode *in, uint64_t n)
{
	if (n == in->size)
		return 0;
	if (n < in->size) {
		/* Pages wholly past n go; the one straddling n is zeroed past it. */
		size_t pos = page_pos(in, (n + PC_PAGE - 1) / PC_PAGE);
		inode_drop_pages(in, pos);
		if (n % PC_PAGE && pos > 0 && in->pages[pos - 1]->idx == n / PC_PAGE) {
			struct pc_page *pg = in->pages[pos - 1];
			memset(pg->data + n % PC_PAGE, 0, PC_PAGE - n % PC_PAGE);
		}
		if (n < in->vis)
			in->vis = n;
	}
	in->size = n;
	in->size_dirty = true;
	return 0;
}

static int pwrite_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
	while (n) {
		ssize_t w = pwrite(fd, p, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* Write sectors [s0, s1) of page pg (their current bytes), clipped to limit. */
static int write_sectors(struct pc_inode *in, const struct pc_page *pg, unsigned s0, unsigned s1,
			 uint64_t limit)
{
	uint64_t off = pg->idx * PC_PAGE + s0 * PC_SECT;
	uint64_t end = pg->idx * PC_PAGE + s1 * PC_SECT;
	if (end > limit)
		end = limit;
	if (off >= end)
		return 0;
	return pwrite_all(in->fd, pg->data + s0 * PC_SECT, (size_t)(end - off), off);
}

/* --trace: "S PATH OFF+LEN ..." the dirty extents an fsync is about to make durable. */
static void trace_sync(const struct pc_inode *in, const char *what)
{
	uint64_t start = 0, end = 0;
	log_stamp();
	fprintf(G.log, "%s %s", what, in->path);
	for (size_t i = 0; i < in->npages; i++)
		for (unsigned s = 0; s < PC_SECTS; s++) {
			if (!(in->pages[i]->dirty & (1u << s)))
				continue;
			uint64_t a = in->pages[i]->idx * PC_PAGE + s * PC_SECT, b = a + PC_SECT;
			if (b > in->size)
				b = in->size;
			if (a >= b)
				continue;
			if (end && a == end) {
				end = b;
				continue;
			}
			if (end)
				fprintf(G.log, " %" PRIu64 "+%" PRIu64, start, end - start);
			start = a;
			end = b;
		}
	if (end)
		fprintf(G.log, " %" PRIu64 "+%" PRIu64, start, end - start);
	fputc('\n', G.log);
}

/* fsync: everything of this file becomes durable. */
static int inode_sync(struct pc_inode *in)
{
	int rc = 0;
	if (in->vis < in->dsize) {
		if (ftruncate(in->fd, (off_t)in->vis))
			return -errno;
		in->dsize = in->vis;
	}
	for (size_t i = 0; i < in->npages && !rc; i++) {
		struct pc_page *pg = in->pages[i];
		for (unsigned s = 0; s < PC_SECTS && !rc; s++) {
			if (!(pg->dirty & (1u << s)))
				continue;
			unsigned e = s;
			while (e < PC_SECTS && (pg->dirty & (1u << e)))
				e++;
			rc = write_sectors(in, pg, s, e, in->size);
			s = e;
		}
	}
	if (rc)
		return rc;
	inode_drop_pages(in, 0);
	if (in->size != in->dsize || in->size_dirty) {
		struct stat st;
		if (fstat(in->fd, &st))
			return -errno;
		if ((uint64_t)st.st_size != in->size && ftruncate(in->fd, (off_t)in->size))
			return -errno;
	}
	in->dsize = in->vis = in->size;
	in->size_dirty = false;
	if (G.backing_sync && fsync(in->fd))
		return -errno;
	return 0;
}

/* ---- namespace changes ---- */

static int ns_push(enum ns_kind kind, ino_t d0, ino_t d1, int ndir, const char *a, const char *b)
{
	if (G.nops == G.opcap) {
		size_t cap = G.opcap ? 2 * G.opcap : 64;
		struct ns_op *p = realloc(G.ops, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		G.ops = p;
		G.opcap = cap;
	}
	struct ns_op *op = &G.ops[G.nops++];
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->dir[0] = d0;
	op->dir[1] = d1;
	op->ndir = ndir;
	op->a = strdup(a);
	op->b = b ? strdup(b) : NULL;
	return 0;
}

static void ns_free(struct ns_op *op)
{
	free(op->a);
	free(op->b);
	free(op->grave);
}

/* A new graveyard name for a file leaving the namespace (relative to the backing dir). */
static char *grave_name(void)
{
	char buf[64];
	snprintf(buf, sizeof(buf), PC_GRAVE "/g%" PRIu64, ++G.grave_no);
	return strdup(buf);
}

/* The change is durable: files in the graveyard for it can go for good. */
static void ns_durable(struct ns_op *op)
{
	if (op->grave) {
		struct stat st;
		if (!fstatat(G.bfd, op->grave, &st, AT_SYMLINK_NOFOLLOW)) {
			struct pc_inode *in = inode_find(st.st_ino);
			if (in) {
				inode_unhash(in); /* its inode number may be reused from now on */
				if (!in->refs) {
					inode_drop_pages(in, 0); /* nobody can read them again */
					in->size_dirty = false;
					inode_maybe_free(in);
				}
			}
		}
		if (unlinkat(G.bfd, op->grave, 0) && unlinkat(G.bfd, op->grave, AT_REMOVEDIR))
			pc_log("durable %s %s: removing %s: %s", ns_names[op->kind], op->a, op->grave,
			       strerror(errno));
	}
}

static void fsyncdir_ino(ino_t dir)
{
	size_t keep = 0;
	for (size_t i = 0; i < G.nops; i++) {
		struct ns_op *op = &G.ops[i];
		bool all = true;
		for (int d = 0; d < op->ndir; d++) {
			if (op->dir[d] == dir)
				op->synced[d] = true;
			all &= op->synced[d];
		}
		if (all) {
			ns_durable(op);
			ns_free(op);
		} else {
			G.ops[keep++] = *op;
		}
	}
	G.nops = keep;
}

static void rm_rf_at(int dfd, const char *name)
{
	if (!unlinkat(dfd, name, 0) || errno == ENOENT)
		return;
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0) {
		DIR *d = fdopendir(fd);
		if (d) {
			struct dirent *e;
			while ((e = readdir(d)))
				if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
					rm_rf_at(dirfd(d), e->d_name);
			closedir(d);
		} else {
			close(fd);
		}
	}
	unlinkat(dfd, name, AT_REMOVEDIR);
}

static bool same_ino(const char *p, ino_t ino)
{
	struct stat st;
	return !fstatat(G.bfd, p, &st, AT_SYMLINK_NOFOLLOW) && st.st_ino == ino;
}

/* Undo one change that did not become durable (the newest first). 0 or -errno. */
static int ns_undo(struct ns_op *op)
{
	switch (op->kind) {
	case NS_CREATE:
		if (!same_ino(op->a, op->ino))
			return -ESTALE;
		return unlinkat(G.bfd, op->a, 0) ? -errno : 0;
	case NS_MKDIR:
		if (!same_ino(op->a, op->ino))
			return -ESTALE;
		rm_rf_at(G.bfd, op->a);
		return 0;
	case NS_UNLINK:
		return renameat(G.bfd, op->grave, G.bfd, op->a) ? -errno : 0;
	case NS_RMDIR:
		return mkdirat(G.bfd, op->a, op->mode) ? -errno : 0;
	case NS_RENAME:
		if (renameat(G.bfd, op->b, G.bfd, op->a))
			return -errno;
		if (op->grave && renameat(G.bfd, op->grave, G.bfd, op->b))
			return -errno;
		return 0;
	}
	return -EINVAL;
}

/* ---- power cut ---- */

/* One run of contiguous dirty sectors: pages [p0, p1) of in, starting at sector s0 of p0, n sectors. */
static void cut_run(struct pc_inode *in, size_t p0, unsigned s0, uint64_t n, uint64_t limit,
		    struct cut_stats *cs)
{
	static const char *const modes[] = {"dropped", "whole", "torn-prefix", "torn-subset"};
	uint64_t r = rnd() % 100;
	int mode = r < 30 ? 0 : r < 55 ? 1 : r < 80 ? 2 : 3;
	uint64_t prefix = n > 1 ? 1 + rnd() % (n - 1) : rnd() % 2; /* torn-prefix: 1..n-1 sectors */
	uint64_t written = 0, first_off = in->pages[p0]->idx * PC_PAGE + s0 * PC_SECT;
	size_t p = p0;
	unsigned s = s0;
	char pattern[80];
	size_t plen = 0;
	for (uint64_t k = 0; k < n; k++) {
		bool w = mode == 1 || (mode == 2 && k < prefix) || (mode == 3 && (rnd() & 1));
		if (w) {
			int rc = write_sectors(in, in->pages[p], s, s + 1, limit);
			if (rc)
				pc_log("cut: %s: write at %" PRIu64 ": %s", in->path,
				       in->pages[p]->idx * PC_PAGE + s * PC_SECT, strerror(-rc));
			written++;
		}
		if (plen < sizeof(pattern) - 4)
			pattern[plen++] = w ? 'w' : '-';
		if (++s == PC_SECTS) {
			s = 0;
			p++;
		}
	}
	pattern[plen] = 0;
	if (n > plen)
		strcat(pattern, "...");
	cs->runs++;
	cs->sect_written += written;
	cs->sect_lost += n - written;
	if (mode == 0)
		cs->dropped++;
	else if (mode == 1)
		cs->whole++;
	else if (mode == 2)
		cs->prefix++;
	else
		cs->subset++;
	pc_log("cut: %s off %" PRIu64 " len %" PRIu64 ": %s, %" PRIu64 "/%" PRIu64 " sectors written [%s]",
	       in->path, first_off, n * PC_SECT, modes[mode], written, n, pattern);
}

static void cut_inode(struct pc_inode *in, struct cut_stats *cs)
{
	bool keep_size = true;
	cs->files++;
	if (in->size_dirty) {
		keep_size = rnd() & 1;
		keep_size ? cs->sizes_kept++ : cs->sizes_lost++;
		pc_log("cut: %s size %" PRIu64 " -> %" PRIu64 " (truncated to %" PRIu64 " meanwhile): %s",
		       in->path, in->dsize, in->size, in->vis, keep_size ? "kept" : "lost");
		if (keep_size && in->vis < in->dsize && ftruncate(in->fd, (off_t)in->vis))
			pc_log("cut: %s: ftruncate: %s", in->path, strerror(errno));
	}
	uint64_t limit = keep_size ? in->size : in->dsize;
	/* Runs of contiguous dirty sectors, across page boundaries. */
	size_t rp = 0;
	unsigned rs = 0;
	uint64_t rn = 0, next = 0;
	for (size_t i = 0; i < in->npages; i++) {
		for (unsigned s = 0; s < PC_SECTS; s++) {
			uint64_t g = in->pages[i]->idx * PC_SECTS + s;
			if (!(in->pages[i]->dirty & (1u << s)))
				continue;
			if (rn && g == next) {
				rn++;
			} else {
				if (rn)
					cut_run(in, rp, rs, rn, limit, cs);
				rp = i;
				rs = s;
				rn = 1;
			}
			next = g + 1;
		}
	}
	if (rn)
		cut_run(in, rp, rs, rn, limit, cs);
	if (keep_size && ftruncate(in->fd, (off_t)in->size))
		pc_log("cut: %s: ftruncate: %s", in->path, strerror(errno));
	inode_drop_pages(in, 0);
	in->size_dirty = false;
	in->size = in->dsize = in->vis = limit;
}

static void power_cut(struct cut_stats *cs)
{
	G.frozen = true;
	G.released = false;
	G.n_cuts++;
	pc_log("cut: power off (seed state %" PRIu64 ")", G.rng);
	for (unsigned h = 0; h < PC_HASH; h++)
		for (struct pc_inode *in = G.tab[h]; in; in = in->hnext)
			if (in->npages || in->size_dirty)
				cut_inode(in, cs);
	for (size_t i = G.nops; i-- > 0;) {
		struct ns_op *op = &G.ops[i];
		int rc = ns_undo(op);
		rc ? cs->ns_failed++ : cs->ns_undone++;
		pc_log("cut: undo %s %s%s%s: %s", ns_names[op->kind], op->a, op->b ? " -> " : "",
		       op->b ? op->b : "", rc ? strerror(-rc) : "done");
		ns_free(op);
	}
	G.nops = 0;
	G.last_cut = *cs;
	pc_log("cut: done: %" PRIu64 " files, %" PRIu64 " runs (%" PRIu64 " dropped, %" PRIu64
	       " whole, %" PRIu64 " torn-prefix, %" PRIu64 " torn-subset), %" PRIu64
	       " sectors written, %" PRIu64 " lost; sizes kept %" PRIu64 " lost %" PRIu64
	       "; namespace changes undone %" PRIu64 " (failed %" PRIu64 ")",
	       cs->files, cs->runs, cs->dropped, cs->whole, cs->prefix, cs->subset, cs->sect_written,
	       cs->sect_lost, cs->sizes_kept, cs->sizes_lost, cs->ns_undone, cs->ns_failed);
	if (G.log)
		fflush(G.log);
}

/* ---- FUSE operations ---- */

struct pc_dh {
	uint32_t magic;
	ino_t ino;
	char path[]; /* readdir may get no path (nullpath_ok) */
};

/* The file handle of fi, or NULL (no fi, or a directory's). */
static struct pc_fh *FH(struct fuse_file_info *fi)
{
	struct pc_fh *fh = fi ? (struct pc_fh *)(uintptr_t)fi->fh : NULL;
	return fh && fh->magic == PC_FH_MAGIC ? fh : NULL;
}

static void *pc_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	cfg->use_ino = 1;
	cfg->hard_remove = 1; /* unlinked open files keep their handle; no .fuse_hidden renames */
	cfg->nullpath_ok = 1;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->kernel_cache = 0;
	cfg->direct_io = 0;
	/* The page cache we model is ours: the kernel must send every write now, not later. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	return NULL;
}

static int pc_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	ENTER();
	if (hidden(path))
		LEAVE(-ENOENT);
	struct pc_inode *in = NULL;
	if (FH(fi)) {
		in = FH(fi)->in;
		if (fstat(in->fd, st))
			LEAVE(-errno);
	} else {
		if (!path)
			LEAVE(-ENOENT);
		if (fstatat(G.bfd, rel(path), st, AT_SYMLINK_NOFOLLOW))
			LEAVE(-errno);
		if (S_ISREG(st->st_mode))
			in = inode_find(st->st_ino);
	}
	if (in)
		st->st_size = (off_t)in->size;
	LEAVE(0);
}

static int pc_access(const char *path, int mask)
{
	ENTER();
	if (hidden(path))
		LEAVE(-ENOENT);
	LEAVE(faccessat(G.bfd, rel(path), mask, 0) ? -errno : 0);
}

static int pc_readlink(const char *path, char *buf, size_t size)
{
	ENTER();
	ssize_t n = readlinkat(G.bfd, rel(path), buf, size - 1);
	if (n < 0)
		LEAVE(-errno);
	buf[n] = 0;
	LEAVE(0);
}

static int pc_opendir(const char *path, struct fuse_file_info *fi)
{
	ENTER();
	struct stat st;
	if (hidden(path))
		LEAVE(-ENOENT);
	if (fstatat(G.bfd, rel(path), &st, 0))
		LEAVE(-errno);
	if (!S_ISDIR(st.st_mode))
		LEAVE(-ENOTDIR);
	struct pc_dh *dh = calloc(1, sizeof(*dh) + strlen(path) + 1);
	if (!dh)
		LEAVE(-ENOMEM);
	dh->magic = PC_DH_MAGIC;
	dh->ino = st.st_ino;
	strcpy(dh->path, path);
	fi->fh = (uint64_t)(uintptr_t)dh;
	LEAVE(0);
}

static int pc_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	ENTER();
	path = ((struct pc_dh *)(uintptr_t)fi->fh)->path;
	int fd = openat(G.bfd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		LEAVE(-errno);
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		LEAVE(-errno);
	}
	bool root = !strcmp(path, "/");
	struct dirent *e;
	while ((e = readdir(d))) {
		if (root && !strcmp(e->d_name, PC_GRAVE))
			continue;
		struct stat st = {.st_ino = e->d_ino, .st_mode = (mode_t)DTTOIF(e->d_type)};
		if (filler(buf, e->d_name, &st, 0, 0))
			break;
	}
	closedir(d);
	LEAVE(0);
}

static int pc_releasedir(const char *path, struct fuse_file_info *fi)
{
	free((struct pc_dh *)(uintptr_t)fi->fh);
	return 0;
}

static int pc_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
	ENTER();
	G.n_fsyncdirs++;
	fsyncdir_ino(((struct pc_dh *)(uintptr_t)fi->fh)->ino);
	LEAVE(0);
}

static int pc_mkdir(const char *path, mode_t mode)
{
	ENTER();
	ino_t dir;
	struct stat st;
	if (hidden(path))
		LEAVE(-EPERM);
	int rc = parent_ino(path, &dir);
	if (rc)
		LEAVE(rc);
	if (mkdirat(G.bfd, rel(path), mode))
		LEAVE(-errno);
	if (fstatat(G.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW))
		LEAVE(-errno);
	rc = ns_push(NS_MKDIR, dir, 0, 1, rel(path), NULL);
	if (!rc)
		G.ops[G.nops - 1].ino = st.st_ino;
	LEAVE(rc);
}

static int pc_rmdir(const char *path)
{
	ENTER();
	ino_t dir;
	struct stat st;
	if (hidden(path))
		LEAVE(-ENOENT);
	int rc = parent_ino(path, &dir);
	if (rc)
		LEAVE(rc);
	if (fstatat(G.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW))
		LEAVE(-errno);
	if (unlinkat(G.bfd, rel(path), AT_REMOVEDIR))
		LEAVE(-errno);
	rc = ns_push(NS_RMDIR, dir, 0, 1, rel(path), NULL);
	if (!rc)
		G.ops[G.nops - 1].mode = st.st_mode & 07777;
	LEAVE(rc);
}

static int pc_unlink(const char *path)
{
	ENTER();
	ino_t dir;
	if (hidden(path))
		LEAVE(-ENOENT);
	int rc = parent_ino(path, &dir);
	if (rc)
		LEAVE(rc);
	char *grave = grave_name();
	if (!grave)
		LEAVE(-ENOMEM);
	if (renameat(G.bfd, rel(path), G.bfd, grave)) {
		rc = -errno;
		free(grave);
		LEAVE(rc);
	}
	rc = ns_push(NS_UNLINK, dir, 0, 1, rel(path), NULL);
	if (rc) {
		free(grave);
		LEAVE(rc);
	}
	G.ops[G.nops - 1].grave = grave;
	LEAVE(0);
}

static int pc_rename(const char *from, const char *to, unsigned int flags)
{
	ENTER();
	ino_t d0, d1;
	struct stat st;
	if (hidden(from) || hidden(to))
		LEAVE(-EPERM);
	if (flags & ~RENAME_NOREPLACE)
		LEAVE(-EINVAL);
	int rc = parent_ino(from, &d0);
	if (!rc)
		rc = parent_ino(to, &d1);
	if (rc)
		LEAVE(rc);
	if (fstatat(G.bfd, rel(from), &st, AT_SYMLINK_NOFOLLOW))
		LEAVE(-errno);
	char *grave = NULL;
	if (!fstatat(G.bfd, rel(to), &st, AT_SYMLINK_NOFOLLOW)) {
		if (flags & RENAME_NOREPLACE)
			LEAVE(-EEXIST);
		grave = grave_name();
		if (!grave)
			LEAVE(-ENOMEM);
		if (renameat(G.bfd, rel(to), G.bfd, grave)) {
			rc = -errno;
			free(grave);
			LEAVE(rc);
		}
	}
	if (renameat(G.bfd, rel(from), G.bfd, rel(to))) {
		rc = -errno;
		if (grave && renameat(G.bfd, grave, G.bfd, rel(to)))
			pc_log("rename: could not put %s back: %s", to, strerror(errno));
		free(grave);
		LEAVE(rc);
	}
	rc = ns_push(NS_RENAME, d0, d1, d0 == d1 ? 1 : 2, rel(from), rel(to));
	if (rc) {
		free(grave);
		LEAVE(rc);
	}
	G.ops[G.nops - 1].grave = grave;
	LEAVE(0);
}

static int pc_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	ENTER();
	if (FH(fi))
		LEAVE(fchmod(FH(fi)->in->fd, mode) ? -errno : 0);
	LEAVE(fchmodat(G.bfd, rel(path), mode, 0) ? -errno : 0);
}

static int pc_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	ENTER();
	if (FH(fi))
		LEAVE(fchown(FH(fi)->in->fd, uid, gid) ? -errno : 0);
	LEAVE(fchownat(G.bfd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW) ? -errno : 0);
}

static int pc_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	ENTER();
	if (FH(fi))
		LEAVE(futimens(FH(fi)->in->fd, tv) ? -errno : 0);
	LEAVE(utimensat(G.bfd, rel(path), tv, AT_SYMLINK_NOFOLLOW) ? -errno : 0);
}

static int pc_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	ENTER();
	struct pc_inode *in;
	if (size < 0)
		LEAVE(-EINVAL);
	if (FH(fi)) {
		in = FH(fi)->in;
	} else {
		int rc = inode_get(path, &in);
		if (rc)
			LEAVE(rc);
	}
	int rc = inode_truncate(in, (uint64_t)size);
	inode_maybe_free(in);
	LEAVE(rc);
}

static int fh_open(const char *path, struct pc_inode *in, struct fuse_file_info *fi)
{
	struct pc_fh *fh = calloc(1, sizeof(*fh));
	if (!fh)
		return -ENOMEM;
	fh->magic = PC_FH_MAGIC;
	fh->in = in;
	fh->seen = in->err_seq; /* an error from before this open is not ours to see */
	fh->path = strdup(path);
	in->refs++;
	free(in->path);
	in->path = strdup(path);
	fi->fh = (uint64_t)(uintptr_t)fh;
	fi->direct_io = 0;
	fi->keep_cache = 0;
	if (fi->flags & O_TRUNC)
		inode_truncate(in, 0);
	return 0;
}

static int pc_open(const char *path, struct fuse_file_info *fi)
{
	ENTER();
	struct pc_inode *in;
	if (hidden(path))
		LEAVE(-ENOENT);
	int rc = inode_get(path, &in);
	if (rc)
		LEAVE(rc);
	rc = fh_open(path, in, fi);
	if (rc)
		inode_maybe_free(in);
	LEAVE(rc);
}

static int pc_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	ENTER();
	struct stat st;
	ino_t dir;
	if (hidden(path))
		LEAVE(-EPERM);
	int rc = parent_ino(path, &dir);
	if (rc)
		LEAVE(rc);
	bool existed = !fstatat(G.bfd, rel(path), &st, AT_SYMLINK_NOFOLLOW);
	if (existed && (fi->flags & O_EXCL))
		LEAVE(-EEXIST);
	if (!existed) {
		int fd = openat(G.bfd, rel(path), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
		if (fd < 0)
			LEAVE(-errno);
		if (fstat(fd, &st)) {
			rc = -errno;
			close(fd);
			LEAVE(rc);
		}
		close(fd);
		rc = ns_push(NS_CREATE, dir, 0, 1, rel(path), NULL);
		if (rc)
			LEAVE(rc);
		G.ops[G.nops - 1].ino = st.st_ino;
	}
	struct pc_inode *in;
	rc = inode_get(path, &in);
	if (rc)
		LEAVE(rc);
	rc = fh_open(path, in, fi);
	if (rc)
		inode_maybe_free(in);
	LEAVE(rc);
}

static int pc_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	ENTER();
	LEAVE(inode_read(FH(fi)->in, buf, size, (uint64_t)off));
}

static int pc_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	ENTER();
	G.n_writes++;
	struct pc_inode *in = FH(fi)->in;
	int rc = inode_write(in, buf, size, (uint64_t)off);
	if (traced(in->path)) {
		log_stamp();
		fprintf(G.log, "W %s %lld+%d\n", in->path, (long long)off, rc);
	}
	if (rc > 0 && (fi->flags & (O_DSYNC | O_SYNC))) {
		/*
		 * A write through a description opened O_DSYNC/O_SYNC is durable when it
		 * completes. The kernel sends FSYNC after a synchronous one, but not
		 * after an asynchronous direct write (io_uring, AIO), so make it durable
		 * here, before the reply. The whole file is synced (more than the
		 * contract asks: any other unsynced bytes of it survive too).
		 */
		G.n_fsyncs++;
		if (traced(in->path))
			trace_sync(in, "S");
		int src = inode_sync(in);
		if (src) {
			pc_log("O_DSYNC write %s: backing file: %s", in->path, strerror(-src));
			LEAVE(-EIO);
		}
	}
	LEAVE(rc);
}

static int pc_statfs(const char *path, struct statvfs *st)
{
	ENTER();
	LEAVE(fstatvfs(G.bfd, st) ? -errno : 0);
}

static int pc_flush(const char *path, struct fuse_file_info *fi)
{
	return 0; /* close() is not a sync */
}

static int pc_release(const char *path, struct fuse_file_info *fi)
{
	pthread_mutex_lock(&G.mu); /* also after a cut: only frees memory */
	struct pc_fh *fh = FH(fi);
	struct pc_inode *in = fh->in;
	in->refs--;
	free(fh->path);
	free(fh);
	if (!in->hashed && !in->refs) {
		/* Removed for good: its unsynced data can never be read again. */
		inode_drop_pages(in, 0);
		in->size_dirty = false;
	}
	inode_maybe_free(in);
	pthread_mutex_unlock(&G.mu);
	return 0;
}

static int pc_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	ENTER();
	struct pc_fh *fh = FH(fi);
	struct pc_inode *in = fh->in;
	G.n_fsyncs++;
	bool kind_ok = G.eio_kind == 0 || (G.eio_kind == 1) == (datasync != 0);
	if (G.eio_countdown && kind_ok && !fnmatch(G.eio_pattern, fh->path, 0) && --G.eio_countdown == 0) {
		uint64_t dirty = 0;
		for (size_t i = 0; i < in->npages; i++)
			dirty += (uint64_t)__builtin_popcount(in->pages[i]->dirty) * PC_SECT;
		if (traced(in->path))
			trace_sync(in, "E");
		inode_drop_pages(in, 0);
		in->err_seq++;
		fh->seen = in->err_seq;
		G.n_eio_injected++;
		G.n_eio_reported++;
		pc_log("eio: %s of %s fails; %" PRIu64 " dirty bytes in %s dropped (error seq %" PRIu64 ")",
		       datasync ? "fdatasync" : "fsync", fh->path, dirty, in->path, in->err_seq);
		if (G.log)
			fflush(G.log);
		/* The kernel's page cache still holds the dropped bytes: make later reads come here. */
		char *inval = strdup(fh->path);
		pthread_mutex_unlock(&G.mu);
		if (inval) {
			fuse_invalidate_path(fuse_get_context()->fuse, inval);
			free(inval);
		}
		return -EIO;
	}
	if (!in->npages && !in->size_dirty)
		G.n_fsyncs_clean++;
	if (traced(in->path))
		trace_sync(in, "S");
	int rc = inode_sync(in);
	if (rc) {
		pc_log("fsync %s: backing file: %s", fh->path, strerror(-rc));
		LEAVE(-EIO);
	}
	if (fh->seen != in->err_seq) {
		/* Linux errseq: an error not seen through this open file description is reported once. */
		fh->seen = in->err_seq;
		G.n_eio_reported++;
		pc_log("eio: fsync of %s reports the earlier error (seq %" PRIu64 ") to another handle",
		       fh->path, in->err_seq);
		LEAVE(-EIO);
	}
	LEAVE(0);
}

static int pc_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	ENTER();
	if (off < 0 || len <= 0)
		LEAVE(-EINVAL);
	if (mode & ~FALLOC_FL_KEEP_SIZE)
		LEAVE(-EOPNOTSUPP);
	struct pc_inode *in = FH(fi)->in;
	if (!(mode & FALLOC_FL_KEEP_SIZE) && (uint64_t)(off + len) > in->size) {
		in->size = (uint64_t)(off + len);
		in->size_dirty = true;
	}
	LEAVE(0);
}

static int pc_unsupported_link(const char *a, const char *b)
{
	return -EPERM;
}

static int pc_mknod(const char *path, mode_t mode, dev_t dev)
{
	return -EPERM;
}

static const struct fuse_operations pc_ops = {
	.init = pc_init,
	.getattr = pc_getattr,
	.access = pc_access,
	.readlink = pc_readlink,
	.opendir = pc_opendir,
	.readdir = pc_readdir,
	.releasedir = pc_releasedir,
	.fsyncdir = pc_fsyncdir,
	.mkdir = pc_mkdir,
	.rmdir = pc_rmdir,
	.unlink = pc_unlink,
	.rename = pc_rename,
	.symlink = pc_unsupported_link,
	.link = pc_unsupported_link,
	.mknod = pc_mknod,
	.chmod = pc_chmod,
	.chown = pc_chown,
	.utimens = pc_utimens,
	.truncate = pc_truncate,
	.open = pc_open,
	.create = pc_create,
	.read = pc_read,
	.write = pc_write,
	.statfs = pc_statfs,
	.flush = pc_flush,
	.release = pc_release,
	.fsync = pc_fsync,
	.fallocate = pc_fallocate,
};

/* ---- control socket ---- */

static int cut_json(char *out, size_t cap, const struct cut_stats *cs)
{
	return snprintf(out, cap,
			"{\"files\":%" PRIu64 ",\"runs\":%" PRIu64 ",\"dropped\":%" PRIu64
			",\"whole\":%" PRIu64 ",\"torn_prefix\":%" PRIu64 ",\"torn_subset\":%" PRIu64
			",\"sectors_written\":%" PRIu64 ",\"sectors_lost\":%" PRIu64
			",\"sizes_kept\":%" PRIu64 ",\"sizes_lost\":%" PRIu64 ",\"ns_undone\":%" PRIu64
			",\"ns_undo_failed\":%" PRIu64 "}",
			cs->files, cs->runs, cs->dropped, cs->whole, cs->prefix, cs->subset, cs->sect_written,
			cs->sect_lost, cs->sizes_kept, cs->sizes_lost, cs->ns_undone, cs->ns_failed);
}

static void status_json(char *out, size_t cap)
{
	uint64_t inodes = 0, dirty_files = 0;
	for (unsigned h = 0; h < PC_HASH; h++)
		for (struct pc_inode *in = G.tab[h]; in; in = in->hnext) {
			inodes++;
			dirty_files += in->npages || in->size_dirty;
		}
	snprintf(out, cap,
		 "{\"frozen\":%s,\"released\":%s,\"inodes\":%" PRIu64 ",\"dirty_files\":%" PRIu64
		 ",\"dirty_pages\":%" PRIu64 ",\"ns_pending\":%zu,\"writes\":%" PRIu64 ",\"fsyncs\":%" PRIu64
		 ",\"fsyncs_clean\":%" PRIu64 ",\"fsyncdirs\":%" PRIu64 ",\"eio_armed\":%" PRIu64
		 ",\"eio_injected\":%" PRIu64 ",\"eio_reported\":%" PRIu64 ",\"enospc\":%" PRIu64
		 ",\"cuts\":%" PRIu64 ",\"last_cut\":",
		 G.frozen ? "true" : "false", G.released ? "true" : "false", inodes, dirty_files,
		 G.dirty_pages, G.nops, G.n_writes, G.n_fsyncs, G.n_fsyncs_clean, G.n_fsyncdirs,
		 G.eio_countdown, G.n_eio_injected, G.n_eio_reported, G.n_enospc, G.n_cuts);
	size_t n = strlen(out);
	n += (size_t)cut_json(out + n, cap - n, &G.last_cut);
	snprintf(out + n, cap - n, "}");
}

static void ctl_command(char *cmd, char *out, size_t cap)
{
	char *save = NULL, *verb = strtok_r(cmd, " \t\r\n", &save);
	char *arg1 = strtok_r(NULL, " \t\r\n", &save);
	char *arg2 = strtok_r(NULL, " \t\r\n", &save);

	pthread_mutex_lock(&G.mu);
	if (!verb) {
		snprintf(out, cap, "{\"error\":\"empty command\"}");
	} else if (!strcmp(verb, "status")) {
		status_json(out, cap);
	} else if (!strcmp(verb, "cut")) {
		if (G.frozen) {
			snprintf(out, cap, "{\"error\":\"already cut\"}");
		} else {
			struct cut_stats cs = {0};
			power_cut(&cs);
			cut_json(out, cap, &cs);
		}
	} else if (!strcmp(verb, "release")) {
		G.released = true;
		pthread_cond_broadcast(&G.cv);
		snprintf(out, cap, "{\"released\":%s}", G.frozen ? "true" : "false");
	} else if (!strcmp(verb, "eio-next-fsync") || !strcmp(verb, "eio-fsync")) {
		bool next = !strcmp(verb, "eio-next-fsync");
		char *arg3 = strtok_r(NULL, " \t\r\n", &save);
		const char *pat = next ? arg1 : arg2, *kind = next ? arg2 : arg3;
		char *end = NULL;
		unsigned long long n = next ? 1 : (arg1 ? strtoull(arg1, &end, 10) : 0);
		int k = !kind || !strcmp(kind, "any") ? 0
			: !strcmp(kind, "data")	      ? 1
			: !strcmp(kind, "full")	      ? 2
						      : -1;
		if ((!next && (!arg1 || *end || n == 0)) || k < 0) {
			snprintf(out, cap,
				 "{\"error\":\"usage: eio-next-fsync [PATTERN [any|data|full]] | "
				 "eio-fsync N [PATTERN [any|data|full]]\"}");
		} else if (pat && strlen(pat) >= sizeof(G.eio_pattern)) {
			snprintf(out, cap, "{\"error\":\"pattern too long\"}");
		} else {
			snprintf(G.eio_pattern, sizeof(G.eio_pattern), "%s", pat ? pat : "*");
			G.eio_countdown = n;
			G.eio_kind = k;
			pc_log("eio: armed: %s number %llu matching '%s' will fail",
			       k == 0	? "fsync or fdatasync"
			       : k == 1 ? "fdatasync"
					: "fsync",
			       n, G.eio_pattern);
			snprintf(out, cap, "{\"armed\":%llu}", n);
		}
	} else if (!strcmp(verb, "eio-off")) {
		G.eio_countdown = 0;
		snprintf(out, cap, "{\"armed\":0}");
	} else {
		snprintf(out, cap, "{\"error\":\"unknown command\"}");
	}
	if (G.log)
		fflush(G.log);
	pthread_mutex_unlock(&G.mu);
}

static void *ctl_main(void *arg)
{
	int ls = (int)(intptr_t)arg;
	for (;;) {
		int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return NULL;
		}
		struct timeval tv = {.tv_sec = 5};
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		char cmd[PC_CMD_MAX], out[PC_REPLY_MAX];
		size_t n = 0;
		while (n < sizeof(cmd) - 1) {
			ssize_t r = read(c, cmd + n, sizeof(cmd) - 1 - n);
			if (r <= 0)
				break;
			n += (size_t)r;
			if (memchr(cmd, '\n', n))
				break;
		}
		cmd[n] = 0;
		ctl_command(cmd, out, sizeof(out));
		size_t len = strlen(out);
		out[len++] = '\n';
		for (size_t off = 0; off < len;) {
			ssize_t w = write(c, out + off, len - off);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		close(c);
	}
}

static int ctl_listen(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "ds-powercut: --ctl path too long\n");
		return -1;
	}
	strcpy(sa.sun_path, path);
	unlink(path);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 16)) {
		fprintf(stderr, "ds-powercut: --ctl %s: %s\n", path, strerror(errno));
		if (s >= 0)
			close(s);
		return -1;
	}
	return s;
}

/* ---- main ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ds-powercut --backing DIR --ctl SOCKET [--seed N] [--log FILE] [--trace PATTERN]\n"
		"                   [--backing-sync] [--max-dirty-mb N] [--freeze-timeout-s S] MOUNTPOINT\n"
		"                   [FUSE options]\n"
		"A pass-through FUSE file system over DIR that keeps unsynced data in memory and loses it\n"
		"on command (power cut), and can fail fsync with EIO. Control: one command per connection\n"
		"to SOCKET: status | cut | release | eio-next-fsync [PATTERN [any|data|full]] |\n"
		"eio-fsync N [PATTERN [any|data|full]] | eio-off. Runs in the foreground; stop with "
		"fusermount3 -u MOUNTPOINT.\n");
}

int main(int argc, char **argv)
{
	const char *backing = NULL, *ctl = NULL, *logpath = NULL;
	unsigned long long seed = 1, dirty_mb = 512, freeze_s = 60;
	char **fargv = calloc((size_t)argc + 4, sizeof(*fargv));
	int fargc = 0;

	if (!fargv)
		return 1;
	fargv[fargc++] = argv[0];
	fargv[fargc++] = "-f";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool more = i + 1 < argc;
		if (!strcmp(a, "--backing") && more) {
			backing = argv[++i];
		} else if (!strcmp(a, "--ctl") && more) {
			ctl = argv[++i];
		} else if (!strcmp(a, "--seed") && more) {
			seed = strtoull(argv[++i], NULL, 0);
		} else if (!strcmp(a, "--log") && more) {
			logpath = argv[++i];
		} else if (!strcmp(a, "--max-dirty-mb") && more) {
			dirty_mb = strtoull(argv[++i], NULL, 10);
		} else if (!strcmp(a, "--freeze-timeout-s") && more) {
			freeze_s = strtoull(argv[++i], NULL, 10);
		} else if (!strcmp(a, "--trace") && more) {
			snprintf(G.trace_pattern, sizeof(G.trace_pattern), "%s", argv[++i]);
		} else if (!strcmp(a, "--backing-sync")) {
			G.backing_sync = true;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "-f")) {
			/* always foreground */
		} else {
			fargv[fargc++] = argv[i];
		}
	}
	if (!backing || !ctl || fargc < 3 || !dirty_mb || !freeze_s) {
		usage(stderr);
		return 2;
	}
	G.rng = seed;
	G.dirty_max_pages = dirty_mb * (1024 * 1024 / PC_PAGE);
	G.freeze_timeout_s = (unsigned)freeze_s;
	G.backing = realpath(backing, NULL);
	G.bfd = G.backing ? open(G.backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (G.bfd < 0) {
		fprintf(stderr, "ds-powercut: --backing %s: %s\n", backing, strerror(errno));
		return 1;
	}
	if (logpath) {
		G.log = fopen(logpath, "a");
		if (!G.log) {
			fprintf(stderr, "ds-powercut: --log %s: %s\n", logpath, strerror(errno));
			return 1;
		}
		setvbuf(G.log, NULL, _IOLBF, 0);
	}
	/* A graveyard left over (this process died without a cut): its files were unlinked; let them go. */
	rm_rf_at(G.bfd, PC_GRAVE);
	if (mkdirat(G.bfd, PC_GRAVE, 0700)) {
		fprintf(stderr, "ds-powercut: %s/%s: %s\n", G.backing, PC_GRAVE, strerror(errno));
		return 1;
	}
	int ls = ctl_listen(ctl);
	if (ls < 0)
		return 1;
	pthread_t thr;
	if (pthread_create(&thr, NULL, ctl_main, (void *)(intptr_t)ls)) {
		fprintf(stderr, "ds-powercut: control thread: %s\n", strerror(errno));
		return 1;
	}
	pthread_detach(thr);
	pc_log("start: backing %s, seed %llu, pid %d", G.backing, seed, (int)getpid());
	int rc = fuse_main(fargc, fargv, &pc_ops, NULL);
	pthread_mutex_lock(&G.mu);
	if (!G.frozen) {
		/* A clean unmount syncs everything, data and namespace. */
		for (unsigned h = 0; h < PC_HASH; h++)
			for (struct pc_inode *in = G.tab[h]; in; in = in->hnext)
				if ((in->npages || in->size_dirty) && inode_sync(in))
					pc_log("exit: sync of %s failed", in->path);
		for (size_t i = 0; i < G.nops; i++) {
			ns_durable(&G.ops[i]);
			ns_free(&G.ops[i]);
		}
		G.nops = 0;
	}
	pc_log("exit: fuse_main returned %d%s", rc,
	       G.frozen ? " (after a power cut)" : ", everything synced");
	pthread_mutex_unlock(&G.mu);
	rm_rf_at(G.bfd, PC_GRAVE);
	unlink(ctl);
	free(fargv);
	return rc;
}
