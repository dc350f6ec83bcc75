/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_SUM_H
#define DS_SPOOL_SUM_H

/*
 * Seal summaries (format 4, FORMAT.md "Seal summaries"), internal to
 * spool/: a sidecar lane-NN/SSSSSSSSSSSS.sum per sealed segment that holds
 * what recovery needs from the segment without reading it: every non-chunk
 * record copied whole, a compact entry per chunk record (offset, txn id,
 * payload length), where the records end and the segment's durable
 * watermark. Built by the lane from the records it stages (or, for a
 * segment of an earlier run, from the segment with the parser a scan uses,
 * spool_seg_scan), so replaying it (spool_sum_replay) hands the scan engine
 * the very record stream a full scan of the segment would, the chunk
 * payloads left out. A summary that is missing, damaged or does not
 * match the segment's header (lane, seq, epoch, size) is not used: the
 * segment is scanned in full.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "spool_format.h"

#define SPOOL_SUM_MAGIC	   "DSPOOLSM"
#define SPOOL_SUM_VERSION  4u
#define SPOOL_SUM_HDR_SIZE 80u
#define SPOOL_SUM_TRAILER  8u
/* A summary larger than this, or than a quarter of its segment, is not written (no gain). */
#define SPOOL_SUM_MAX (64u << 20)

enum spool_sum_kind {
	SPOOL_SUM_CHUNK = 1,  /* u32 kind, u32 payload len, u64 off, u64 txn id */
	SPOOL_SUM_RECORD = 2, /* u32 kind, u32 total, u64 off, then the record's total bytes */
};

/*
 * Header flag: written after the segment's seal flush completed (by the lane
 * that wrote it), so every byte of it was durable as written: recovery need
 * not check bodies for durability. Without it (a segment found at start-up,
 * possibly torn by a crash) commits above the watermark get their body
 * checked as in a full scan.
 */
#define SPOOL_SUM_F_SEALED 1u

struct spool_sum {
	uint8_t *buf; /* the whole file */
	size_t len;
	unsigned lane;
	uint32_t flags;
	uint32_t entries;
	uint64_t seq, epoch;
	uint64_t segment_size;	   /* bytes scanned: the file, or the header's size if smaller */
	uint64_t end;		   /* file offset after the segment's last record */
	uint64_t watermark;	   /* max durable_off over the segment's records */
	struct timespec seg_mtime; /* the segment file's mtime when it was summarised */
	/* Non-chunk records by file offset (ascending): spool_sum_rec_at. */
	uint64_t *rec_off;
	const uint8_t **rec_at;
	uint32_t nrecs;
};

/*
 * A summary being built, record by record in file order: by the lane as it
 * stages records into its active segment (so a sealed segment is never read
 * back: in direct mode that read doubled the device's traffic), or by a scan
 * of the segment (spool_sum_build). Both give the same bytes; with
 * DS_SPOOL_SUM_CHECK=1 the writer compares them for every lane summary.
 */
struct spool_sum_acc {
	uint8_t *buf;
	size_t len, cap, max;
	unsigned lane;
	uint64_t seq, epoch, size;
	uint32_t entries;
	uint64_t end, watermark;
	size_t last_chunk; /* 1 + buf offset of the newest entry if it is a chunk, else 0 */
	uint64_t last_chunk_off;
	int err; /* -E2BIG, -ENOMEM: no summary for this segment (scanned whole) */
};

/* 0 or -ENOMEM; either way spool_sum_acc_free releases it. size: the segment's. */
int spool_sum_acc_init(struct spool_sum_acc *a, unsigned lane, uint64_t seq, uint64_t epoch, uint64_t size);
/*
 * The record whose encoded bytes (header, payload, padding) are at rec, at
 * file offset off: after the previous one, or the previous chunk again,
 * grown in place (the lane's chunk_extend).
 */
void spool_sum_acc_note(struct spool_sum_acc *a, const uint8_t *rec, uint64_t off);
/* The file's bytes (*out, malloc'd; the accumulator is emptied) or a->err. */
int spool_sum_acc_finish(struct spool_sum_acc *a, uint32_t flags, const struct timespec *seg_mtime,
			 uint8_t **out, size_t *outlen);
void spool_sum_acc_free(struct spool_sum_acc *a);

/* DIR/lane-NN/SSSSSSSSSSSS.sum */
int spool_sum_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq);
/* Parse "000000000012.sum" -> 12; 0 on anything else. */
uint64_t spool_sum_name_seq(const char *name);

/*
 * Build the summary of a sealed segment mapped at map[0, size) with header
 * hdr: *out (malloc'd) and *outlen. 0; -EBADMSG if the segment holds
 * anything but records and a zero tail (damage: it is scanned in full);
 * -E2BIG if the summary would exceed its bound; -ENOMEM.
 */
int spool_sum_build(const uint8_t *map, uint64_t size, const struct spool_seg_hdr *hdr, uint32_t flags,
		    const struct timespec *seg_mtime, uint8_t **out, size_t *outlen);
/*
 * Check and index a summary file's bytes (taken over by *out on success:
 * buf is freed by spool_sum_free). 0 or -EBADMSG (damaged or not a summary).
 */
int spool_sum_parse(uint8_t *buf, size_t len, struct spool_sum **out);
/*
 * Read lane/seq's summary and check it against the segment's header:
 * (size: the bytes a scan of it covers, struct rseg's size): 0 with *out,
 * -ENOENT (none), -EBADMSG (damaged), -ESTALE (another segment's: lane,
 * seq, epoch or size differ; or the segment's mtime is not the one it was
 * summarised with: modified since), -ENOMEM.
 */
int spool_sum_load(const char *dir, unsigned lane, const struct spool_seg_hdr *hdr, uint64_t size,
		   struct spool_sum **out);
void spool_sum_free(struct spool_sum *s);

/*
 * Hand the segment's records to ops in file order, exactly as
 * spool_seg_scan(map, segment size, epoch, SPOOL_SEG_DATA_OFF, ops, ctx)
 * would (chunk records with payload NULL, durable_off 0: the summary's
 * watermark stands for them), then the zero tail to ops->bad. Returns rec's
 * non-zero return, else 0.
 */
int spool_sum_replay(const struct spool_sum *s, const struct spool_scan_ops *ops, void *ctx);
/* The copy of the non-chunk record at file offset off (its 40-byte header first), or NULL. */
const uint8_t *spool_sum_rec_at(const struct spool_sum *s, uint64_t off);

/*
 * Write lane/seq's summary (segment never written again): build it from the
 * segment file, write it, fsync it and the lane directory. sync_first:
 * fdatasync the segment before reading it (not sealed by a flush of this
 * process). sealed: every byte of it is as its writer wrote it (sealed, or
 * the active segment at a clean close): flagged SPOOL_SUM_F_SEALED; not so
 * for segments found at start-up (a crash may have torn them). 0, -ENOENT
 * (segment gone), or the build's / a syscall's -errno.
 */
int spool_sum_write(const char *dir, unsigned lane, uint64_t seq, bool sync_first, bool sealed);

/*
 * As spool_sum_write, from what the lane accumulated while writing the
 * segment (the segment is only opened for its mtime, and flushed first with
 * sync_first). Leaves a finished or emptied; the caller frees it.
 */
int spool_sum_write_acc(const char *dir, struct spool_sum_acc *a, bool sync_first, bool sealed);

/* Remove lane/seq's summary, if any. */
void spool_sum_unlink_seq(const char *dir, unsigned lane, uint64_t seq);
/* Remove the summary of the segment file at seg_path (".seg" -> ".sum"), if any. */
void spool_sum_unlink_for(const char *seg_path);

/*
 * Remove every .sum of the spool whose .seg is not there (reclaimed or
 * compacted with the summary left behind by a crash). Count removed or -errno.
 */
int spool_sum_sweep(const char *dir);

#endif
