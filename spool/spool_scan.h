/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_SCAN_H
#define DS_SPOOL_SCAN_H

/*
 * The scanning engine over the mapped segments of a lane, internal to
 * spool/: the reader (spool_reader.c: list, read, verify, stats) and
 * recovery (spool_recover.c) are its two users. Recovery skips body bytes
 * where it can: a commit whose record ends below the durable watermark of
 * its segment (the writer stamps in every record how far a completed
 * flush had reached) has all its chunks durable, so chunk headers are
 * enough. Commits past the watermark, or whose chunks sit in another
 * segment, get their body CRC checked.
 */

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "spool_format.h"
#include "spool_reader.h"

enum rseg_state {
	RSEG_LISTED, /* name seen at open, file not opened yet */
	RSEG_MAPPED, /* opened and mapped (or too short to hold records: hdr_rc -ENODATA) */
	RSEG_GONE,   /* could not be opened or mapped when first needed (removed meanwhile) */
};

struct rseg {
	uint64_t seq;
	const uint8_t *map;
	uint64_t size;	   /* usable bytes: the file, or the header's segment size if smaller */
	uint64_t map_size; /* bytes mapped (munmap) */
	int hdr_rc;	   /* 0, -ENODATA (unused), -EBADMSG */
	enum rseg_state state;
	struct spool_seg_hdr hdr;
	/*
	 * Format 4: the segment's seal summary (spool_sum.h), loaded by readers
	 * with use_sums set; the scan replays it instead of reading the segment.
	 * sealed_to: every byte below it was durable when the summary was
	 * written (its seal flush completed first), so commits ending there need
	 * no body check for durability. 0 without a summary.
	 */
	struct spool_sum *sum;
	uint64_t sealed_to;
};

struct rlane {
	unsigned lane;
	struct rseg *segs;
	unsigned nsegs;
	bool all_mapped;
};

struct spool_reader {
	char dir[PATH_MAX];
	struct rlane lanes[SPOOL_LANES_MAX];
	unsigned nlanes;
	struct ds_rcpt *rcpt; /* decode space, SPOOL_RCPT_MAX */
	/*
	 * Recovery and the reclamation load: whole-spool scans take sealed
	 * segments from their summaries, and lanes are mapped, their summaries
	 * read and their other segments read ahead by parallel threads. Readers
	 * (list, verify, cat) leave it false and read every segment whole.
	 */
	bool use_sums;
};

struct scan_cfg {
	bool check_all_bodies;
	int (*msg)(void *ctx, struct rlane *rl, const struct spool_msg *m);
	/* A commit whose body is not there: durable says it was below the watermark. */
	void (*dropped)(void *ctx, struct rlane *rl, const struct spool_msg *m, bool durable);
	/*
	 * Bytes [from, to) of a segment are not records. tail: nothing valid
	 * follows. durable: the region starts below the segment's durable
	 * watermark, so it held acknowledged data: corruption, not a crash.
	 */
	void (*bad)(void *ctx, struct rlane *rl, struct rseg *s, uint64_t from, uint64_t to, bool tail,
		    bool zero, bool durable);
	void (*seg)(void *ctx, struct rlane *rl, struct rseg *s);
	/*
	 * Format 2: an intact (CRC checked) outcome or abort record, once its
	 * segment's scan is settled; not decoded. Whole-lane scans only.
	 */
	void (*delivery)(void *ctx, struct rlane *rl, struct rseg *s, const struct spool_rec *rec);
	/*
	 * spool_scan_spool only, called after every lane was scanned, in lane
	 * then commit order: msg_status for each message (a commit with its
	 * whole body and no abort record; msg too if set) with its folded
	 * delivery state; aborted for each commit an abort record refuses
	 * (kept: its body is all there). dropped is not called for those.
	 */
	int (*msg_status)(void *ctx, struct rlane *rl, const struct spool_msg *m,
			  const struct spool_msg_status *st);
	void (*aborted)(void *ctx, struct rlane *rl, const struct spool_msg *m, bool kept);
	/*
	 * spool_scan_spool only (verify): a durable commit whose body is not all
	 * there but whose every recipient is final by the fold. Returns true when
	 * that is the reclamation's intermediate state (chunk segment reclaimed
	 * before the commit's: FORMAT.md, "Reclamation"); false hands it to
	 * dropped as before.
	 */
	bool (*dropped_final)(void *ctx, struct rlane *rl, const struct spool_msg *m);
	/*
	 * spool_scan_spool only: the callbacks need no envelope (m->env all zero
	 * but rcpt_count; no chunk locator or body CRC), so commits are not
	 * decoded a second time.
	 */
	bool no_env;
	void *ctx;
};

/*
 * Open and map segment s->seq of lane in dir, check its header (s->hdr_rc):
 * 0, or -errno from open/mmap (-ENOENT: no such file). spool_scan_seg_close
 * unmaps it.
 */
int spool_scan_seg_open(const char *dir, unsigned lane, struct rseg *s);
void spool_scan_seg_close(struct rseg *s);
/* Open and map s on first use; false if it is gone or unusable. */
bool spool_scan_seg_map(struct spool_reader *r, struct rlane *rl, struct rseg *s);
void spool_scan_lane_map_all(struct spool_reader *r, struct rlane *rl);
void spool_scan_reader_map_all(struct spool_reader *r);
/* Index of the first segment (segments are sorted by seq) whose seq >= seq; nsegs if none. */
unsigned spool_scan_seg_index(const struct rlane *rl, uint64_t seq);
struct rseg *spool_scan_seg_find(struct rlane *rl, uint64_t seq);
/* Where a walk over one message's chunk records stands: the next record to look at. */
struct spool_chunk_pos {
	uint64_t seq; /* segment */
	uint64_t off; /* file offset in it */
};
/*
 * The one chunk walker (body walks of the reader and recovery, and
 * spool_fetch_read): the next chunk record of message m at or after *pos,
 * looking in segments pos->seq .. m->seq and, in the commit's segment, only
 * before the commit record. seg(ctx, seq, &s) hands out segment seq mapped:
 * 0, -ENOENT (no file of that number: skipped unless it holds the first
 * chunk or the commit), or -errno (returned). 0 with *out filled (its
 * payload points into the map) and *pos moved past it; -ENOENT when no
 * chunk of m remains; -EBADMSG when a segment that must be there is not
 * (missing file, bad header).
 */
int spool_scan_chunk_next(const struct spool_msg *m, struct spool_chunk_pos *pos,
			  int (*seg)(void *ctx, uint64_t seq, const struct rseg **out), void *ctx,
			  struct spool_rec *out);
/* Walk the body of m (chunks from its first segment on): 0, -EBADMSG, or fn's non-zero return. */
int spool_scan_body_walk(struct spool_reader *r, struct rlane *rl, const struct spool_msg *m,
			 int (*fn)(void *, const void *, size_t), void *ctx);
/* Scan rl from its segment index first (only_id != 0: that txn's records only). */
int spool_scan_lane_from(struct spool_reader *r, struct rlane *rl, const struct scan_cfg *cfg, unsigned first,
			 uint64_t only_id);
int spool_scan_lane(struct spool_reader *r, struct rlane *rl, const struct scan_cfg *cfg);

struct spool_scan_totals {
	uint64_t commits;	/* commit records (kept, dropped, aborted) */
	uint64_t outcomes;	/* outcome records read (intact and decodable) */
	uint64_t outcomes_bad;	/* intact CRC but not decodable: ignored */
	uint64_t outcomes_lost; /* naming no message here (reclaimed, aborted, never durable) */
	uint64_t aborts;	/* abort records */
	uint64_t copies;	/* format 3: commits of an id another copy of which is the message */
};
/*
 * The whole spool (spool_fold.c): every lane scanned (bad, seg as they come),
 * then abort records applied and outcome records folded across all lanes
 * (spool.h, the fold rule), then each commit handed out in lane, then
 * commit order (msg / msg_status / dropped / aborted). 0, -ENOMEM, or a
 * callback's non-zero return. tot may be NULL.
 */
int spool_scan_spool(struct spool_reader *r, const struct scan_cfg *cfg, struct spool_scan_totals *tot);
/*
 * The message of the commit record at (s, off) of lane rl, which a scan of
 * this reader found valid (the header is checked again, the CRC is not):
 * 0, -ENOENT (not a commit there).
 */
int spool_scan_commit_msg(struct spool_reader *r, struct rlane *rl, struct rseg *s, uint64_t off,
			  struct spool_msg *m);

#endif
