/* SPDX-License-Identifier: MIT */
/* Seal summaries: the codec, the writer and the orphan sweep (spool_sum.h, FORMAT.md). */
#include "spool_sum.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "ds_assert.h"
#include "spool.h"
#include "spool_segment.h"

#define SUM_CHUNK_SIZE 24u
#define SUM_REC_FIXED  16u

int spool_sum_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq)
{
	return spool_lane_file_path(buf, cap, dir, lane, seq, "sum");
}

uint64_t spool_sum_name_seq(const char *name)
{
	return spool_lane_file_seq(name, "sum");
}

/* ---- build ---- */

/*
 * The accumulator (spool_sum.h): the same bytes whether it is fed by the
 * lane as it stages records (no read-back of the segment) or by a scan of
 * the segment (spool_sum_build: segments of earlier runs).
 */
static uint8_t *acc_room(struct spool_sum_acc *a, size_t n)
{
	if (a->len + n + SPOOL_SUM_TRAILER > a->max) {
		a->err = -E2BIG;
		return NULL;
	}
	if (a->len + n + SPOOL_SUM_TRAILER > a->cap) {
		size_t ncap = a->cap ? a->cap : 64 * 1024;
		uint8_t *nb;
		while (ncap < a->len + n + SPOOL_SUM_TRAILER)
			ncap *= 2;
		nb = realloc(a->buf, ncap);
		if (!nb) {
			a->err = -ENOMEM;
			return NULL;
		}
		a->buf = nb;
		a->cap = ncap;
	}
	a->len += n;
	return a->buf + a->len - n;
}

int spool_sum_acc_init(struct spool_sum_acc *a, unsigned lane, uint64_t seq, uint64_t epoch, uint64_t size)
{
	memset(a, 0, sizeof(*a));
	a->lane = lane;
	a->seq = seq;
	a->epoch = epoch;
	a->size = size;
	a->end = SPOOL_SEG_DATA_OFF;
	a->max = (size_t)DS_MIN((uint64_t)SPOOL_SUM_MAX, size / 4);
	return acc_room(a, SPOOL_SUM_HDR_SIZE) ? 0 : a->err;
}

void spool_sum_acc_free(struct spool_sum_acc *a)
{
	free(a->buf);
	a->buf = NULL;
	a->len = a->cap = 0;
}

void spool_sum_acc_note(struct spool_sum_acc *a, const uint8_t *rec, uint64_t off)
{
	uint32_t type = rec[4], len = spool_get32(rec + 8);
	uint64_t id = spool_get64(rec + 16), total = spool_rec_total(len);
	uint8_t *p;

	if (a->err)
		return;
	a->watermark = DS_MAX(a->watermark, spool_get64(rec + 32));
	if (type == SPOOL_REC_CHUNK && a->last_chunk && off == a->last_chunk_off) {
		/* The lane grew its newest chunk in place (chunk_extend): the same entry, longer. */
		DS_ASSERT(off + total >= a->end);
		spool_put32(a->buf + a->last_chunk - 1 + 4, len);
		a->end = off + total;
		return;
	}
	DS_ASSERT(off >= a->end && off % SPOOL_REC_ALIGN == 0);
	a->end = off + total;
	a->last_chunk = 0;
	/* Direct-mode padding (segment sequence 0 in its id) belongs to no message: left out. */
	if (type == SPOOL_REC_CHUNK && !((id >> SPOOL_ID_COUNTER_BITS) & 0xffffffffull))
		return;
	if (type == SPOOL_REC_CHUNK) {
		if (!(p = acc_room(a, SUM_CHUNK_SIZE)))
			return;
		spool_put32(p, SPOOL_SUM_CHUNK);
		spool_put32(p + 4, len);
		spool_put64(p + 8, off);
		spool_put64(p + 16, id);
		a->last_chunk = (size_t)(p - a->buf) + 1;
		a->last_chunk_off = off;
	} else {
		DS_ASSERT(total <= UINT32_MAX);
		if (!(p = acc_room(a, SUM_REC_FIXED + total)))
			return;
		spool_put32(p, SPOOL_SUM_RECORD);
		spool_put32(p + 4, (uint32_t)total);
		spool_put64(p + 8, off);
		memcpy(p + SUM_REC_FIXED, rec, total);
	}
	a->entries++;
}

int spool_sum_acc_finish(struct spool_sum_acc *a, uint32_t flags, const struct timespec *seg_mtime,
			 uint8_t **out, size_t *outlen)
{
	uint8_t *h;
	uint32_t crc;

	*out = NULL;
	*outlen = 0;
	if (a->err)
		return a->err;
	DS_ASSERT(a->len >= SPOOL_SUM_HDR_SIZE && a->len + SPOOL_SUM_TRAILER <= a->cap);
	h = a->buf;
	memset(h, 0, SPOOL_SUM_HDR_SIZE);
	memcpy(h, SPOOL_SUM_MAGIC, 8);
	spool_put32(h + 8, SPOOL_SUM_VERSION);
	spool_put32(h + 12, SPOOL_SUM_HDR_SIZE);
	spool_put32(h + 16, a->lane);
	spool_put32(h + 20, flags);
	spool_put64(h + 24, a->seq);
	spool_put64(h + 32, a->epoch);
	spool_put64(h + 40, a->size);
	spool_put64(h + 48, a->end);
	spool_put64(h + 56, a->watermark);
	spool_put64(h + 64, (uint64_t)seg_mtime->tv_sec);
	spool_put64(h + 72, (uint64_t)seg_mtime->tv_nsec);
	crc = crc32c(0, a->buf, a->len);
	spool_put32(a->buf + a->len, a->entries);
	crc = crc32c(crc, a->buf + a->len, 4);
	spool_put32(a->buf + a->len + 4, crc);
	*out = a->buf;
	*outlen = a->len + SPOOL_SUM_TRAILER;
	a->buf = NULL;
	a->len = a->cap = 0;
	return 0;
}

struct build {
	struct spool_sum_acc acc;
	const uint8_t *map;
	unsigned nbad;
	bool bad_other; /* a region that is not the zero tail */
	bool recycled;	/* format 5: a non-zero tail is the earlier segment's bytes, the normal end */
};

static int build_rec(void *ctx, const struct spool_rec *r)
{
	struct build *b = ctx;

	spool_sum_acc_note(&b->acc, b->map + r->off, r->off);
	return b->acc.err ? 1 : 0;
}

static void build_bad(void *ctx, uint64_t from, uint64_t to, bool tail, bool zero)
{
	struct build *b = ctx;

	(void)to;
	b->nbad++;
	/* A recycled segment's tail is the earlier segment's bytes: its normal end (FORMAT.md). */
	if (!tail || (!zero && !b->recycled) || from != b->acc.end)
		b->bad_other = true;
}

int spool_sum_build(const uint8_t *map, uint64_t size, const struct spool_seg_hdr *hdr, uint32_t flags,
		    const struct timespec *seg_mtime, uint8_t **out, size_t *outlen)
{
	static const struct spool_scan_ops ops = {.rec = build_rec, .bad = build_bad, .delivery = true};
	struct build b = {.map = map, .recycled = spool_seg_recycled(hdr)};
	int rc;

	*out = NULL;
	*outlen = 0;
	if (size > hdr->segment_size)
		size = hdr->segment_size;
	rc = spool_sum_acc_init(&b.acc, hdr->lane, hdr->seq, hdr->epoch, size);
	if (!rc) {
		spool_seg_scan(map, size, hdr->epoch, SPOOL_SEG_DATA_OFF, &ops, &b);
		rc = b.acc.err;
	}
	if (!rc && (b.bad_other || b.nbad > 1))
		rc = -EBADMSG;
	if (!rc)
		rc = spool_sum_acc_finish(&b.acc, flags, seg_mtime, out, outlen);
	spool_sum_acc_free(&b.acc);
	return rc;
}

/* ---- parse, load ---- */

/* A copied record: the checks spool_rec_check makes on a segment, on the copy. */
static bool rec_copy_ok(const uint8_t *p, uint32_t total, uint64_t epoch)
{
	uint8_t h[SPOOL_REC_HDR_SIZE];
	uint32_t len, crc;

	if (total < SPOOL_REC_HDR_SIZE || spool_get32(p) != SPOOL_REC_MAGIC || p[4] <= SPOOL_REC_CHUNK ||
	    p[4] > SPOOL_REC_TYPE_LAST || p[5] || p[6] || p[7] || spool_get64(p + 24) != epoch)
		return false;
	len = spool_get32(p + 8);
	if (spool_rec_total(len) != total)
		return false;
	memcpy(h, p, sizeof(h));
	spool_put32(h + 12, 0);
	crc = crc32c(crc32c(0, h, sizeof(h)), p + SPOOL_REC_HDR_SIZE, len);
	return crc == spool_get32(p + 12);
}

int spool_sum_parse(uint8_t *buf, size_t len, struct spool_sum **out)
{
	struct spool_sum *s;
	const uint8_t *p, *end;
	uint64_t last_end = SPOOL_SEG_DATA_OFF;
	uint32_t nrecs = 0;

	*out = NULL;
	if (len < SPOOL_SUM_HDR_SIZE + SPOOL_SUM_TRAILER || len > SPOOL_SUM_MAX ||
	    memcmp(buf, SPOOL_SUM_MAGIC, 8) || spool_get32(buf + 8) != SPOOL_SUM_VERSION ||
	    spool_get32(buf + 12) != SPOOL_SUM_HDR_SIZE ||
	    crc32c(0, buf, len - 4) != spool_get32(buf + len - 4))
		return -EBADMSG;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lane = spool_get32(buf + 16);
	s->flags = spool_get32(buf + 20);
	s->entries = spool_get32(buf + len - SPOOL_SUM_TRAILER);
	s->seq = spool_get64(buf + 24);
	s->epoch = spool_get64(buf + 32);
	s->segment_size = spool_get64(buf + 40);
	s->end = spool_get64(buf + 48);
	s->watermark = spool_get64(buf + 56);
	s->seg_mtime.tv_sec = (time_t)spool_get64(buf + 64);
	s->seg_mtime.tv_nsec = (long)spool_get64(buf + 72);
	/* Walk once to check the structure and count the records, then index them. */
	end = buf + len - SPOOL_SUM_TRAILER;
	for (int pass = 0; pass < 2; pass++) {
		uint32_t n = 0, k = 0;

		last_end = SPOOL_SEG_DATA_OFF;
		for (p = buf + SPOOL_SUM_HDR_SIZE; p < end; n++) {
			uint32_t kind, a;
			uint64_t off, total;

			if ((size_t)(end - p) < SUM_REC_FIXED)
				goto bad;
			kind = spool_get32(p);
			a = spool_get32(p + 4);
			off = spool_get64(p + 8);
			if (kind == SPOOL_SUM_CHUNK) {
				if ((size_t)(end - p) < SUM_CHUNK_SIZE || a > SPOOL_CHUNK_MAX)
					goto bad;
				total = spool_rec_total(a);
				p += SUM_CHUNK_SIZE;
			} else if (kind == SPOOL_SUM_RECORD) {
				if ((size_t)(end - p) - SUM_REC_FIXED < a ||
				    (pass == 0 && !rec_copy_ok(p + SUM_REC_FIXED, a, s->epoch)))
					goto bad;
				total = a;
				if (pass == 1) {
					s->rec_off[k] = off;
					s->rec_at[k++] = p + SUM_REC_FIXED;
				}
				nrecs += pass == 0;
				p += SUM_REC_FIXED + a;
			} else {
				goto bad;
			}
			/* In file order, aligned, not overlapping, inside the records' end. */
			if (off < last_end || off % SPOOL_REC_ALIGN || off > s->end || total > s->end - off)
				goto bad;
			last_end = off + total;
		}
		if (n != s->entries || last_end > s->end || s->end > s->segment_size)
			goto bad;
		if (pass == 0) {
			s->nrecs = nrecs;
			s->rec_off = malloc((nrecs ? nrecs : 1) * sizeof(*s->rec_off));
			s->rec_at = malloc((nrecs ? nrecs : 1) * sizeof(*s->rec_at));
			if (!s->rec_off || !s->rec_at) {
				spool_sum_free(s);
				return -ENOMEM;
			}
		}
	}
	s->buf = buf;
	s->len = len;
	*out = s;
	return 0;
bad:
	free(s->rec_off);
	free(s->rec_at);
	free(s);
	return -EBADMSG;
}

void spool_sum_free(struct spool_sum *s)
{
	if (!s)
		return;
	free(s->buf);
	free(s->rec_off);
	free(s->rec_at);
	free(s);
}

int spool_sum_load(const char *dir, unsigned lane, const struct spool_seg_hdr *hdr, uint64_t size,
		   struct spool_sum **out)
{
	char path[PATH_MAX];
	struct stat st;
	uint8_t *buf;
	size_t got = 0;
	int fd, rc;

	*out = NULL;
	if ((rc = spool_sum_path(path, sizeof(path), dir, lane, hdr->seq)))
		return rc;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) || st.st_size < (off_t)(SPOOL_SUM_HDR_SIZE + SPOOL_SUM_TRAILER) ||
	    st.st_size > (off_t)SPOOL_SUM_MAX) {
		close(fd);
		return -EBADMSG;
	}
	buf = malloc((size_t)st.st_size);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (got != (size_t)st.st_size) {
		free(buf);
		return -EBADMSG;
	}
	rc = spool_sum_parse(buf, got, out);
	if (rc) {
		free(buf);
		return rc;
	}
	/* A segment modified after its summary was built (by hand, a tool, a test) is not what it says. */
	{
		char sp[PATH_MAX];
		struct stat sst;
		if (spool_seg_path(sp, sizeof(sp), dir, lane, hdr->seq) || stat(sp, &sst) ||
		    sst.st_mtim.tv_sec != (*out)->seg_mtime.tv_sec ||
		    sst.st_mtim.tv_nsec != (*out)->seg_mtime.tv_nsec)
			size = UINT64_MAX; /* stale below */
	}
	if ((*out)->lane != lane || (*out)->seq != hdr->seq || (*out)->epoch != hdr->epoch ||
	    (*out)->segment_size != size) {
		spool_sum_free(*out);
		*out = NULL;
		return -ESTALE;
	}
	return 0;
}

/* ---- replay ---- */

int spool_sum_replay(const struct spool_sum *s, const struct spool_scan_ops *ops, void *ctx)
{
	const uint8_t *p = s->buf + SPOOL_SUM_HDR_SIZE, *end = s->buf + s->len - SPOOL_SUM_TRAILER;

	while (p < end) {
		struct spool_rec r = {.off = spool_get64(p + 8)};
		uint32_t kind = spool_get32(p);
		int rc;

		if (kind == SPOOL_SUM_CHUNK) {
			r.type = SPOOL_REC_CHUNK;
			r.len = spool_get32(p + 4);
			r.txn_id = spool_get64(p + 16);
			r.total = spool_rec_total(r.len);
			p += SUM_CHUNK_SIZE;
		} else {
			const uint8_t *q = p + SUM_REC_FIXED;
			DS_ASSERT(kind == SPOOL_SUM_RECORD);
			r.type = q[4];
			r.len = spool_get32(q + 8);
			r.txn_id = spool_get64(q + 16);
			r.durable_off = spool_get64(q + 32);
			r.payload = q + SPOOL_REC_HDR_SIZE;
			r.total = spool_get32(p + 4);
			p += SUM_REC_FIXED + r.total;
		}
		if (ops->rec && (r.type == SPOOL_REC_CHUNK || r.type == SPOOL_REC_COMMIT || ops->delivery) &&
		    (rc = ops->rec(ctx, &r)))
			return rc;
	}
	/* spool_seg_scan reports the zero tail only where a record header would still fit. */
	if (ops->bad && s->end + SPOOL_REC_HDR_SIZE <= s->segment_size)
		ops->bad(ctx, s->end, s->segment_size, true, true);
	return 0;
}

const uint8_t *spool_sum_rec_at(const struct spool_sum *s, uint64_t off)
{
	uint32_t lo = 0, hi = s->nrecs;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (s->rec_off[mid] < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->nrecs && s->rec_off[lo] == off ? s->rec_at[lo] : NULL;
}

/* ---- write ---- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Bring the segment into the page cache in paced pieces before the build
 * walks its map. A direct-mode segment is not cached, and the map's
 * read-ahead puts megabytes of reads into the device queue in front of the
 * lanes' DSYNC group writes: measured, 4 KiB open loop in direct mode, p99
 * of final dot to 250 7.9 ms with the read-ahead against 1.8 ms without
 * summaries. One synchronous read of SUM_READ_PIECE_BYTES at a time and
 * no read-ahead (FADV_RANDOM on this description): a group write waits
 * behind one piece at most. A buffered-mode segment is in the cache: the
 * reads are copies. 0 or -errno (the build then reads through the map).
 */
#define SUM_READ_PIECE_BYTES (256u << 10)

static int sum_prefetch(int fd, uint64_t size)
{
	uint8_t *buf = malloc(SUM_READ_PIECE_BYTES);
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	for (uint64_t off = 0; off < size;) {
		size_t n = (size_t)DS_MIN((uint64_t)SUM_READ_PIECE_BYTES, size - off);
		ssize_t r = pread(fd, buf, n, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = r < 0 ? -errno : 0;
			break;
		}
		off += (uint64_t)r;
	}
	free(buf);
	return rc;
}

/*
 * Open lane/seq's segment for summarising: flushed first with sync_first,
 * and only once its mtime is settled (below). *fd and *st on success.
 */
static int sum_seg_open(const char *dir, unsigned lane, uint64_t seq, bool sync_first, int *fd,
			struct stat *st)
{
	char path[PATH_MAX];
	int rc;

	if ((rc = spool_seg_path(path, sizeof(path), dir, lane, seq)))
		return rc;
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return -errno;
	if (fstat(*fd, st) || st->st_size < (off_t)SPOOL_SEG_DATA_OFF) {
		close(*fd);
		return -ENODATA;
	}
	/*
	 * A segment found at start-up (not sealed by this process): what the file
	 * holds now may be only in the page cache (a crash of the process, not of
	 * the machine). The summary may only say what is durable: flush it first.
	 */
	if (sync_first && fdatasync(*fd)) {
		rc = -errno;
		close(*fd);
		return rc;
	}
	/*
	 * The segment's mtime goes into the summary: a later modification shows as
	 * another mtime. File timestamps come from a coarse clock; so that a
	 * write in the same tick as the last one cannot keep it, wait until the
	 * clock is clearly past it before reading (off the hot path).
	 */
	for (int i = 0; i < 100; i++) {
		struct timespec now;
		if (fstat(*fd, st))
			break;
		clock_gettime(CLOCK_REALTIME, &now);
		if (now.tv_sec > st->st_mtim.tv_sec + 1 ||
		    (int64_t)(now.tv_sec - st->st_mtim.tv_sec) * 1000000000 +
				    (now.tv_nsec - st->st_mtim.tv_nsec) >
			    20000000)
			break;
		nanosleep(&(struct timespec){.tv_nsec = 5000000}, NULL);
	}
	return 0;
}

/* Build the summary from the segment's own bytes (read back through a map). */
static int sum_build_from_file(int fd, const struct stat *st, unsigned lane, uint64_t seq, bool sealed,
			       uint8_t **sum, size_t *sumlen)
{
	struct spool_seg_hdr hdr;
	void *map;
	int rc;

	(void)sum_prefetch(fd, (uint64_t)st->st_size);
	map = mmap(NULL, (size_t)st->st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return -errno;
	/* Cached by the prefetch: a page it could not bring in is read alone, not with its neighbours. */
	madvise(map, (size_t)st->st_size, MADV_RANDOM);
	rc = spool_seg_hdr_decode(map, (size_t)st->st_size, &hdr);
	if (!rc && (hdr.lane != lane || hdr.seq != seq))
		rc = -EBADMSG;
	if (!rc)
		rc = spool_sum_build(map, (uint64_t)st->st_size, &hdr, sealed ? SPOOL_SUM_F_SEALED : 0,
				     &st->st_mtim, sum, sumlen);
	munmap(map, (size_t)st->st_size);
	return rc;
}

/* Write the summary bytes to lane/seq's .sum, durable with its directory entry. */
static int sum_store(const char *dir, unsigned lane, uint64_t seq, const uint8_t *sum, size_t sumlen)
{
	char path[PATH_MAX], ldir[PATH_MAX];
	int fd, rc;

	if ((rc = spool_sum_path(path, sizeof(path), dir, lane, seq)) ||
	    (rc = spool_lane_dir_path(ldir, sizeof(ldir), dir, lane)))
		return rc;
	/*
	 * Written in place, no temporary name: a torn file fails its CRC and is
	 * not used (recovery removes it and the next start writes it again), and
	 * the lane directory never holds a name that vanishes under a copy of it.
	 */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	rc = write_all(fd, sum, sumlen);
	if (!rc && fsync(fd))
		rc = -errno;
	if (close(fd) && !rc)
		rc = -errno;
	if (rc) {
		unlink(path);
		return rc;
	}
	return spool_fsync_dir(ldir);
}

int spool_sum_write(const char *dir, unsigned lane, uint64_t seq, bool sync_first, bool sealed)
{
	uint8_t *sum = NULL;
	size_t sumlen = 0;
	struct stat st;
	int fd, rc;

	if ((rc = sum_seg_open(dir, lane, seq, sync_first, &fd, &st)))
		return rc;
	rc = sum_build_from_file(fd, &st, lane, seq, sealed, &sum, &sumlen);
	close(fd);
	if (!rc)
		rc = sum_store(dir, lane, seq, sum, sumlen);
	free(sum);
	return rc;
}

/*
 * The segment file under fd is no longer the one summarised: reclaimed and
 * recycled meanwhile (format 5: renamed to a free file and stamped again),
 * so its bytes say nothing about the summary.
 */
static bool sum_seg_restamped(int fd, const struct spool_sum_acc *a)
{
	uint8_t b[SPOOL_SEG_HDR_SIZE];
	struct spool_seg_hdr h;

	if (pread(fd, b, sizeof(b), 0) != (ssize_t)sizeof(b) || spool_seg_hdr_decode(b, sizeof(b), &h))
		return true;
	return h.seq != a->seq || h.epoch != a->epoch;
}

/*
 * DS_SPOOL_SUM_CHECK=1 (tests): the summary the lane accumulated must be
 * byte for byte the one a read of the segment builds; anything else is a
 * bug in the accumulation, and the process stops on it.
 */
static void sum_check_against_file(int fd, const struct stat *st, const struct spool_sum_acc *a, bool sealed,
				   const uint8_t *sum, size_t sumlen)
{
	uint8_t *ref = NULL;
	size_t reflen = 0;
	int rc = sum_build_from_file(fd, st, a->lane, a->seq, sealed, &ref, &reflen);

	if ((rc || reflen != sumlen || memcmp(ref, sum, sumlen)) && !sum_seg_restamped(fd, a)) {
		fprintf(stderr,
			"spool: lane %u segment %llu: accumulated summary (%zu bytes) differs from the "
			"segment's "
			"(%zu bytes, rc %d)\n",
			a->lane, (unsigned long long)a->seq, sumlen, reflen, rc);
		DS_ASSERT(!"accumulated summary differs from the segment");
	}
	free(ref);
}

int spool_sum_write_acc(const char *dir, struct spool_sum_acc *a, bool sync_first, bool sealed)
{
	static int check = -1;
	uint8_t *sum = NULL;
	size_t sumlen = 0;
	struct stat st;
	int fd, rc;

	if (check < 0)
		check = getenv("DS_SPOOL_SUM_CHECK") != NULL;
	if (a->err)
		return a->err;
	if ((rc = sum_seg_open(dir, a->lane, a->seq, sync_first, &fd, &st)))
		return rc;
	/* The file's size bounds what a scan covers (struct rseg's size): the same figure. */
	if ((uint64_t)st.st_size < a->size)
		a->size = (uint64_t)st.st_size;
	rc = spool_sum_acc_finish(a, sealed ? SPOOL_SUM_F_SEALED : 0, &st.st_mtim, &sum, &sumlen);
	if (!rc && check)
		sum_check_against_file(fd, &st, a, sealed, sum, sumlen);
	close(fd);
	if (!rc)
		rc = sum_store(dir, a->lane, a->seq, sum, sumlen);
	free(sum);
	return rc;
}

void spool_sum_unlink_seq(const char *dir, unsigned lane, uint64_t seq)
{
	char p[PATH_MAX];

	if (!spool_sum_path(p, sizeof(p), dir, lane, seq))
		unlink(p);
}

void spool_sum_unlink_for(const char *seg_path)
{
	char p[PATH_MAX];
	size_t n = strlen(seg_path);

	if (n < 4 || n >= sizeof(p) || strcmp(seg_path + n - 4, ".seg"))
		return;
	memcpy(p, seg_path, n - 4);
	memcpy(p + n - 4, ".sum", 5);
	unlink(p);
}

/* ---- sweep ---- */

static int sweep_lane(const char *dir, unsigned lane)
{
	char ldir[PATH_MAX], path[PATH_MAX];
	struct dirent *de;
	DIR *d;
	int removed = 0, rc;

	if ((rc = spool_lane_dir_path(ldir, sizeof(ldir), dir, lane)))
		return rc;
	d = opendir(ldir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		uint64_t seq = spool_sum_name_seq(de->d_name);
		size_t n = strlen(de->d_name);
		bool tmp = n == 20 && !strcmp(de->d_name + 12, ".sum.tmp");
		struct stat st;

		if (!seq && !tmp)
			continue;
		if (seq && !spool_seg_path(path, sizeof(path), dir, lane, seq) && !stat(path, &st))
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", ldir, de->d_name) < (int)sizeof(path) &&
		    !unlink(path))
			removed++;
	}
	closedir(d);
	if (removed)
		spool_fsync_dir(ldir);
	return removed;
}

int spool_sum_sweep(const char *dir)
{
	unsigned lanes[SPOOL_LANES_MAX];
	int n = spool_lane_list(dir, lanes), total = 0;

	if (n < 0)
		return n == -ENOENT ? 0 : n;
	for (int i = 0; i < n; i++) {
		int rc = sweep_lane(dir, lanes[i]);
		if (rc < 0)
			return rc;
		total += rc;
	}
	return total;
}
