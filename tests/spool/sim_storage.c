/* SPDX-License-Identifier: MIT */
#include "sim_storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ds_assert.h"

#define SIM_OPS_MAX 512

enum { SIM_WRITE = 1, SIM_FLUSH };

struct sim_op {
	int kind;
	int fd;
	const uint8_t *buf;
	uint32_t len;
	uint64_t off;
	uint64_t tag;
	bool link;
	bool dsync;
	int linked_write; /* index of the write a flush is linked to, -1 none */
	uint64_t linked_id;
	uint64_t cover_seq;
	uint64_t id;
	bool done; /* a flush that ran (or was cancelled): res is its result, delivered later */
	int res;
};

/*
 * Linux's writeback error reporting (errseq_t): a failed writeback bumps
 * the file's error sequence and drops the dirty data it was writing; each
 * open file description reports an error it has not seen on its next
 * fsync, once. A description opened while an error was unseen reports it
 * too; one opened after the error was reported does not.
 */
struct sim_file {
	uint64_t ino;
	uint32_t err;
	bool seen;
};

struct sim_fdesc {
	int fd;
	uint64_t ino;
	uint32_t seen;
};

struct sim_vw {
	int fd;	      /* our own dup: the lane may close (and the kernel reuse) its fd meanwhile */
	uint64_t ino; /* which file: flushes match on this, not on fd numbers */
	uint64_t off;
	uint32_t len;
	uint8_t *data;
	uint64_t seq;
	uint64_t op_id;
};

struct sim {
	struct spool_lane *lane;
	uint64_t rng;
	struct sim_faults f;
	void (*settled)(void *ctx, uint64_t cookie, int res);
	void *ctx;
	struct sim_op ops[SIM_OPS_MAX];
	unsigned nops;
	struct sim_vw *vw;
	size_t nvw, capvw;
	uint64_t wseq, events, op_ids;
	uint32_t nflush, nwrite;
	bool crashed;
	/* DSYNC extents that may be on the disk: [off, end) of file ino, by op id. */
	struct sim_dext {
		uint64_t ino, off, end, op_id;
	} * dext;
	size_t ndext, capdext;
	uint64_t dsync_done, torn_blocks;
	struct sim_file *files;
	size_t nfiles, capfiles;
	struct sim_fdesc *fdescs;
	size_t nfdescs, capfdescs;
	uint64_t wb_errors;
};

static uint64_t rnd(struct sim *s)
{
	s->rng ^= s->rng << 13;
	s->rng ^= s->rng >> 7;
	s->rng ^= s->rng << 17;
	return s->rng;
}

static int find_op(struct sim *s, uint64_t id)
{
	for (unsigned i = 0; i < s->nops; i++)
		if (s->ops[i].id == id)
			return (int)i;
	return -1;
}

/* Queue an op (a write when buf is set: buffered, or DSYNC with dsync); NULL if the queue is full. */
static struct sim_op *op_push(struct sim *s, int kind, int fd, uint64_t tag, const void *buf, uint32_t len,
			      uint64_t off, bool dsync)
{
	struct sim_op *op;

	if (s->nops == SIM_OPS_MAX)
		return NULL;
	op = &s->ops[s->nops++];
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->dsync = dsync;
	op->fd = fd;
	op->buf = buf;
	op->len = len;
	op->off = off;
	op->tag = tag;
	op->id = ++s->op_ids;
	return op;
}

static int sim_write(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag)
{
	struct sim *s = ctx;
	struct sim_op *op = op_push(s, SIM_WRITE, fd, tag, buf, len, off, false);

	return op ? 0 : -EAGAIN;
}

static uint64_t file_ino(int fd);

static int sim_write_dsync(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag)
{
	struct sim *s = ctx;
	struct sim_op *op;
	uint64_t ino = file_ino(fd);

	/* The direct discipline: whole blocks, and never a block that may already hold data. */
	DS_ASSERT(((uintptr_t)buf & 4095) == 0 && (off & 4095) == 0 && (len & 4095) == 0 && len);
	for (size_t i = 0; i < s->ndext; i++)
		if (s->dext[i].ino == ino && off < s->dext[i].end && off + len > s->dext[i].off) {
			fprintf(stderr, "sim: DSYNC write [%llu, +%u) rewrites [%llu, %llu)\n",
				(unsigned long long)off, len, (unsigned long long)s->dext[i].off,
				(unsigned long long)s->dext[i].end);
			abort();
		}
	op = op_push(s, SIM_WRITE, fd, tag, buf, len, off, true);
	if (!op)
		return -EAGAIN;
	if (s->ndext == s->capdext) {
		s->capdext = s->capdext ? s->capdext * 2 : 256;
		s->dext = realloc(s->dext, s->capdext * sizeof(*s->dext));
		DS_ASSERT(s->dext);
	}
	s->dext[s->ndext++] = (struct sim_dext){ino, off, off + len, op->id};
	return 0;
}

/* Nothing of this DSYNC write reached the disk (-EAGAIN): its blocks are fresh again. */
static void dext_drop(struct sim *s, uint64_t op_id)
{
	for (size_t i = 0; i < s->ndext; i++)
		if (s->dext[i].op_id == op_id) {
			s->dext[i] = s->dext[--s->ndext];
			return;
		}
}

/* Straight to the file, around any O_DIRECT of the lane's descriptor. */
static void dsync_persist(int fd, const uint8_t *buf, uint32_t n, uint64_t off)
{
	char path[64];
	int wfd;

	if (!n)
		return;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	wfd = open(path, O_WRONLY | O_CLOEXEC);
	DS_ASSERT(wfd >= 0);
	DS_ASSERT(pwrite(wfd, buf, n, (off_t)off) == (ssize_t)n);
	close(wfd);
}

uint64_t sim_dsync_writes(const struct sim *s)
{
	return s->dsync_done;
}

uint64_t sim_torn_blocks(const struct sim *s)
{
	return s->torn_blocks;
}

static int sim_flush(void *ctx, int fd, uint64_t tag)
{
	struct sim *s = ctx;
	struct sim_op *op = op_push(s, SIM_FLUSH, fd, tag, NULL, 0, 0, false);

	if (!op)
		return -EAGAIN;
	/* Adversarial: covers only the writes completed by now. */
	op->cover_seq = s->wseq;
	return 0;
}

/* The pair: the flush runs only after the write completed in full, and covers it. */
static int sim_write_flush(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t wtag,
			   int flush_fd, uint64_t ftag)
{
	struct sim *s = ctx;
	struct sim_op *w, *f;

	if (s->nops + 2 > SIM_OPS_MAX)
		return -EAGAIN;
	w = op_push(s, SIM_WRITE, fd, wtag, buf, len, off, false);
	w->link = true;
	f = op_push(s, SIM_FLUSH, flush_fd, ftag, NULL, 0, 0, false);
	f->linked_id = w->id;
	f->cover_seq = s->wseq;
	return 0;
}

static void sim_settled(void *ctx, uint64_t cookie, int res)
{
	struct sim *s = ctx;
	s->settled(s->ctx, cookie, res);
}

static const struct spool_io_ops ops = {
	.write = sim_write,
	.flush = sim_flush,
	.write_flush = sim_write_flush,
	.write_dsync = sim_write_dsync,
	.settled = sim_settled,
};

const struct spool_io_ops *sim_ops(void)
{
	return &ops;
}

struct sim *sim_create(uint64_t seed, const struct sim_faults *f,
		       void (*settled)(void *ctx, uint64_t cookie, int res), void *ctx)
{
	struct sim *s = calloc(1, sizeof(*s));

	DS_ASSERT(s);
	s->rng = seed * 0x9E3779B97F4A7C15ull + 1;
	if (f)
		s->f = *f;
	s->settled = settled;
	s->ctx = ctx;
	return s;
}

void sim_destroy(struct sim *s)
{
	for (size_t i = 0; i < s->nvw; i++) {
		free(s->vw[i].data);
		close(s->vw[i].fd);
	}
	free(s->vw);
	free(s->dext);
	free(s->files);
	free(s->fdescs);
	free(s);
}

void sim_attach(struct sim *s, struct spool_lane *l)
{
	s->lane = l;
}

bool sim_crashed(const struct sim *s)
{
	return s->crashed;
}

uint64_t sim_events(const struct sim *s)
{
	return s->events;
}

static uint64_t file_ino(int fd)
{
	struct stat st;
	DS_ASSERT(fstat(fd, &st) == 0);
	return (uint64_t)st.st_ino;
}

static struct sim_file *file_get(struct sim *s, uint64_t ino)
{
	for (size_t i = 0; i < s->nfiles; i++)
		if (s->files[i].ino == ino)
			return &s->files[i];
	if (s->nfiles == s->capfiles) {
		s->capfiles = s->capfiles ? s->capfiles * 2 : 16;
		s->files = realloc(s->files, s->capfiles * sizeof(*s->files));
		DS_ASSERT(s->files);
	}
	s->files[s->nfiles] = (struct sim_file){.ino = ino};
	return &s->files[s->nfiles++];
}

/* The open file description behind fd (the lane never dups: one fd number, one description). */
static struct sim_fdesc *fdesc_get(struct sim *s, int fd, uint64_t ino)
{
	struct sim_file *f = file_get(s, ino);

	for (size_t i = 0; i < s->nfdescs; i++)
		if (s->fdescs[i].fd == fd && s->fdescs[i].ino == ino)
			return &s->fdescs[i];
	if (s->nfdescs == s->capfdescs) {
		s->capfdescs = s->capfdescs ? s->capfdescs * 2 : 16;
		s->fdescs = realloc(s->fdescs, s->capfdescs * sizeof(*s->fdescs));
		DS_ASSERT(s->fdescs);
	}
	/* errseq_sample(): an error nobody has seen yet is reported to new opens as well. */
	s->fdescs[s->nfdescs] = (struct sim_fdesc){.fd = fd, .ino = ino, .seen = f->seen ? f->err : 0};
	return &s->fdescs[s->nfdescs++];
}

/*
 * A writeback of ino failed. Every descriptor open on it now was opened
 * before the error and will report it: register them all (the simulator
 * sees a descriptor only when an op uses it) before the sequence moves.
 */
static void file_wb_error(struct sim *s, uint64_t ino)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	struct sim_file *f;

	DS_ASSERT(d);
	while ((e = readdir(d))) {
		struct stat st;
		int fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd == dirfd(d) || fstat(fd, &st) || (uint64_t)st.st_ino != ino)
			continue;
		fdesc_get(s, fd, ino);
	}
	closedir(d);
	f = file_get(s, ino);
	f->err++;
	f->seen = false;
	s->wb_errors++;
}

/* file_check_and_advance_wb_err(): 0, or -EIO once per description per error. */
static int fdesc_check(struct sim *s, int fd, uint64_t ino)
{
	struct sim_fdesc *d = fdesc_get(s, fd, ino);
	struct sim_file *f = file_get(s, ino);

	if (d->seen == f->err)
		return 0;
	d->seen = f->err;
	f->seen = true;
	return -EIO;
}

static void vw_add(struct sim *s, struct sim_op *op, uint32_t n)
{
	struct sim_vw *v;

	if (s->nvw == s->capvw) {
		s->capvw = s->capvw ? s->capvw * 2 : 64;
		s->vw = realloc(s->vw, s->capvw * sizeof(*s->vw));
		DS_ASSERT(s->vw);
	}
	v = &s->vw[s->nvw++];
	v->fd = dup(op->fd);
	DS_ASSERT(v->fd >= 0);
	v->ino = file_ino(op->fd);
	v->off = op->off;
	v->len = n;
	v->data = malloc(n ? n : 1);
	DS_ASSERT(v->data);
	memcpy(v->data, op->buf, n);
	v->seq = ++s->wseq;
	v->op_id = op->id;
}

static void persist(struct sim_vw *v, uint32_t n)
{
	DS_ASSERT(pwrite(v->fd, v->data, n, (off_t)v->off) == (ssize_t)n);
}

static bool eligible(struct sim *s, struct sim_op *op)
{
	if (op->kind == SIM_FLUSH && op->linked_id) {
		int w = find_op(s, op->linked_id);
		return w < 0; /* the linked write completed (and was removed) */
	}
	return true;
}

/* Was the write this flush is linked to short (then the flush is cancelled)? */
static bool linked_short(struct sim *s, struct sim_op *op, uint64_t *linked_seq)
{
	*linked_seq = 0;
	for (size_t i = 0; i < s->nvw; i++)
		if (s->vw[i].op_id == op->linked_id)
			*linked_seq = s->vw[i].seq;
	return false;
}

/*
 * The faults' verdict on the next write (the n-th): its result, and in *n
 * how many of its bytes reach the file. A short buffered write is 1..len-1
 * bytes; a short DSYNC write (any of it may be on the disk) 0..len-1, and
 * only DSYNC writes fail with -EIO (write_fail_at), maybe leaving a prefix.
 */
static int write_outcome(struct sim *s, const struct sim_op *op, uint32_t *n)
{
	*n = 0;
	s->nwrite++;
	if (s->f.write_enospc_at && s->nwrite == s->f.write_enospc_at)
		return -ENOSPC;
	if (op->dsync && s->f.write_fail_at && s->nwrite == s->f.write_fail_at) {
		*n = (uint32_t)(rnd(s) % (op->len + 1));
		return -EIO;
	}
	if (s->f.eagain_pct && rnd(s) % 100 < s->f.eagain_pct)
		return -EAGAIN;
	*n = op->len;
	if (s->f.short_pct && (op->dsync || op->len > 1) && rnd(s) % 100 < s->f.short_pct)
		*n = op->dsync ? (uint32_t)(rnd(s) % op->len) : 1 + (uint32_t)(rnd(s) % (op->len - 1));
	return (int)*n;
}

/*
 * A flush runs: writeback of the dirty data it covers (the writes completed
 * when it was submitted, and the write linked to it), then the error check
 * of its own descriptor. Its completion is delivered later, in random order
 * with the others: Linux may finish two fsyncs in either order, and the one
 * that ran first may have consumed the other's error. An injected failure
 * (flush_fail_at) drops the covered writes, a random sector-aligned prefix
 * of each maybe on the disk, as a failed writeback leaves them.
 */
static void flush_run(struct sim *s, struct sim_op *op)
{
	uint64_t lseq, ino = file_ino(op->fd);
	bool fail;

	s->nflush++;
	linked_short(s, op, &lseq);
	fail = s->f.flush_fail_at && s->nflush == s->f.flush_fail_at;
	for (size_t k = 0; k < s->nvw;) {
		struct sim_vw *v = &s->vw[k];
		if (v->ino == ino && (v->seq <= op->cover_seq || v->seq == lseq)) {
			persist(v, fail ? (uint32_t)DS_MIN((uint64_t)v->len, rnd(s) % (v->len + 1) & ~511ull)
					: v->len);
			free(v->data);
			close(v->fd);
			s->vw[k] = s->vw[--s->nvw];
		} else {
			k++;
		}
	}
	if (fail)
		file_wb_error(s, ino);
	op->res = fdesc_check(s, op->fd, ino);
	op->done = true;
}

static void complete_one(struct sim *s, unsigned i)
{
	struct sim_op op = s->ops[i];
	int res;

	if (op.kind == SIM_FLUSH && !op.done) {
		flush_run(s, &s->ops[i]);
		s->events++;
		if (s->f.crash_at_event && s->events >= s->f.crash_at_event)
			s->crashed = true;
		return;
	}

	if (op.kind == SIM_WRITE && op.dsync && s->f.crash_at_event && s->events + 1 >= s->f.crash_at_event) {
		/* The crash strikes during this DSYNC write: it stays in flight for sim_crash_apply. */
		s->events++;
		s->crashed = true;
		return;
	}
	s->ops[i] = s->ops[--s->nops];
	if (op.kind == SIM_WRITE && op.dsync) {
		uint32_t n;
		res = write_outcome(s, &op, &n);
		if (res == -EAGAIN)
			dext_drop(s, op.id);
		dsync_persist(op.fd, op.buf, n, op.off);
		if (res == (int)op.len)
			s->dsync_done++;
	} else if (op.kind == SIM_WRITE) {
		uint32_t n;
		res = write_outcome(s, &op, &n);
		if (n)
			vw_add(s, &op, n);
		if (n != op.len) {
			/* A short or failed linked write cancels the flush linked to it. */
			for (unsigned k = 0; k < s->nops; k++)
				if (s->ops[k].kind == SIM_FLUSH && s->ops[k].linked_id == op.id) {
					s->ops[k].linked_id = 0;
					s->ops[k].res = -ECANCELED;
					s->ops[k].done = true;
				}
		}
	} else {
		res = op.res; /* ran earlier (flush_run), or cancelled */
	}
	s->events++;
	if (s->f.crash_at_event && s->events >= s->f.crash_at_event) {
		s->crashed = true;
		return;
	}
	spool_lane_complete(s->lane, op.tag, res);
}

unsigned sim_step(struct sim *s, unsigned n)
{
	unsigned done = 0;

	while (done < n && s->nops && !s->crashed) {
		unsigned cand[SIM_OPS_MAX], nc = 0;
		for (unsigned i = 0; i < s->nops; i++)
			if (eligible(s, &s->ops[i]))
				cand[nc++] = i;
		DS_ASSERT(nc);
		complete_one(s, cand[rnd(s) % nc]);
		done++;
	}
	return done;
}

void sim_drain(struct sim *s)
{
	for (unsigned rounds = 0; !s->crashed; rounds++) {
		DS_ASSERT(rounds < 10000000);
		spool_lane_kick(s->lane);
		if (!s->nops)
			break;
		sim_step(s, 1);
	}
}

void sim_crash_apply(struct sim *s, bool tear, bool scribble)
{
	/* DSYNC writes in flight: dropped, whole, torn per sector, or a garbage (torn) first block. */
	for (unsigned i = 0; i < s->nops; i++) {
		struct sim_op *op = &s->ops[i];
		uint64_t r = rnd(s) % 4;
		if (op->kind != SIM_WRITE || !op->dsync || r == 0)
			continue;
		if (r == 1) {
			dsync_persist(op->fd, op->buf, op->len, op->off);
			continue;
		}
		for (uint32_t k = 0; k < op->len; k += 512)
			if (rnd(s) & 1)
				dsync_persist(op->fd, op->buf + k, 512, op->off + k);
		if (r == 3) {
			uint8_t junk[4096];
			for (uint32_t k = 0; k < sizeof(junk); k++)
				junk[k] = (uint8_t)rnd(s);
			dsync_persist(op->fd, junk, sizeof(junk), op->off);
			s->torn_blocks++;
		}
	}
	for (size_t i = 0; i < s->nvw; i++) {
		struct sim_vw *v = &s->vw[i];
		uint64_t r = rnd(s) % 4;
		if (!tear || r == 0)
			continue;
		persist(v, r == 1 ? v->len : (uint32_t)(rnd(s) % (v->len + 1)));
	}
	if (scribble && s->nvw) {
		struct sim_vw *v = &s->vw[rnd(s) % s->nvw];
		uint8_t junk[512];
		uint32_t n = (uint32_t)DS_MIN((uint64_t)sizeof(junk), (uint64_t)v->len);
		uint64_t at = v->off + rnd(s) % (v->len - n + 1);
		for (uint32_t k = 0; k < n; k++)
			junk[k] = (uint8_t)rnd(s);
		DS_ASSERT(pwrite(v->fd, junk, n, (off_t)at) == (ssize_t)n);
	}
}
