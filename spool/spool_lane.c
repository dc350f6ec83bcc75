/* SPDX-License-Identifier: MIT */
/*
 * The lane: staging ring, segment rolling, group commit, settlement.
 *
 * Positions: every byte a lane appends gets a logical position in one
 * ever-growing stream (head). Each segment covers a contiguous logical
 * range [lstart, lend); records never span segments, so a logical position
 * maps to exactly one (segment, file offset). The staging ring is mapped
 * twice back to back, so any range of up to ring_size bytes is contiguous
 * in memory and one write never has to be split at the wrap.
 *
 * Durability: durable_pos is the logical position below which every byte
 * of every non-failed segment is known durable. A flush of the active
 * segment covers what was written to it before the flush started (we only
 * start a flush when no other write to that segment is in flight, or link
 * it to the one write in flight); an older segment becomes durable as a
 * whole by its seal flush. A commit settles when durable_pos reaches the
 * end of its commit record: its chunks lie before it in the stream.
 * Outcome records (format 2) ride the same queue and settle the same way.
 *
 * Aborts: a failed segment fails every unsettled commit, but the bytes of
 * a commit may still turn out intact on disk. So before such a commit is
 * settled with its error (451/452), an abort record naming it is written
 * to a healthy segment and made durable; only then settled(cookie, err).
 * Failed commits wait in the abort FIFO until their abort record is
 * staged; new commits and outcomes get -EAGAIN meanwhile.
 */
#include "spool.h"

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
#include "ds_clock.h"
#include "spool_compact.h"
#include "spool_format.h"
#include "spool_gap.h"
#include "spool_oprec.h"
#include "spool_reclaim.h"
#include "spool_segment.h"
#include "spool_sum.h"
#include "spool_sumw.h"

#define LANE_SEGS_MAX	 64
#define LANE_OPS_MAX	 128
#define LANE_COMMITS_MAX 16384
#define LANE_RETRY_MAX	 10000
#define TXN_OPEN	 1u
#define TXN_CLOSED	 2u
#define TXN_COMMITTED	 3u /* closed, its commit record queued: spool_txn_location() */
/*
 * Segments an abort record is tried on: a failed commit whose abort's
 * segment failed this often, or for which this many segment preparations
 * in a row failed, is settled with its error without one (aborts_lost).
 */
#define ABORT_TRIES_MAX 3u

/*
 * Direct mode (SPOOL_IO_DIRECT): every write covers whole 4 KiB blocks that
 * were never written before and carries RWF_DSYNC, so its completion makes
 * it durable. A block that holds acknowledged bytes is never written again
 * (a torn rewrite could destroy them): a group's write is padded to the
 * block end with a padding chunk (a chunk of a txn id that never commits)
 * and the next group starts on a fresh block. Segments start on a block
 * boundary of the lane's position space.
 */
#define DIO_BLOCK	  4096u
#define DIO_RING_RESERVE  (2 * DIO_BLOCK + 64) /* ring bytes kept for padding and roll gaps */
#define DIO_EAGER_MIN	  (256u << 10)	       /* full blocks written ahead of any commit */
#define DIO_ALIGN_DOWN(x) ((x) & ~(uint64_t)(DIO_BLOCK - 1))
#define DIO_ALIGN_UP(x)	  DIO_ALIGN_DOWN((x) + DIO_BLOCK - 1)

struct lane_seg {
	struct seg_files files;
	uint32_t fd_busy; /* bit i: files.fd[i] is held by a flush, seal or DSYNC write */
	uint64_t seq, epoch;
	uint64_t lstart;      /* logical position of file offset SPOOL_SEG_DATA_OFF */
	uint64_t lend;	      /* UINT64_MAX while active */
	uint64_t durable_l;   /* covered by a completed flush */
	uint64_t flush_req_l; /* highest cover of a submitted flush */
	uint32_t writes_inflight, ops_inflight;
	uint32_t counter; /* txn ids begun in this segment */
	bool failed, sealing, sealed;
	struct spool_sum_acc *sum; /* its seal summary, record by record; NULL: none (read back) */
};

enum { OP_FREE = 0, OP_WRITE, OP_FLUSH, OP_SEAL };

struct lane_op {
	uint32_t kind;
	uint32_t gen;
	struct lane_seg *seg;
	uint64_t lstart; /* write: first byte; flush: cover */
	uint32_t len, done;
	uint32_t retries;
	int slot; /* seg->files.fd[slot] held by this op, -1 none */
	uint64_t t_start_ns;
};

enum { Q_COMMIT = 0, Q_OUTCOME, Q_ABORT, Q_OPERATOR, Q_GAP };

/*
 * Q_MOVED: the commit record of a copy compaction writes (spool_compact.h):
 * it settles like a commit, but a failed one owes no abort record (no
 * client was answered; a surviving copy is a duplicate of a message that
 * exists, FORMAT.md "Moved records").
 */
#define Q_MOVED 16

/* A record waiting for durability (commit queue), or a failed commit owing an abort (abort FIFO). */
struct lane_commit {
	uint64_t cookie;
	uint64_t lend;	    /* end of its record in the lane's stream */
	uint64_t id;	    /* commit, abort: the message */
	uint64_t off;	    /* commit, abort: file offset of the message's commit record; outcome: dsn id */
	uint32_t seq;	    /* ... and its segment (< 2^32: spool_id) */
	uint32_t rec_seq;   /* the segment this record lies in (reclamation) */
	uint32_t chunk_seq; /* commit: segment of its first chunk, 0 = none */
	uint8_t kind;	    /* Q_* */
	uint8_t err;	    /* abort: positive errno the client is answered with */
	uint8_t tries;	    /* abort: segments its record was staged to that failed */
};

struct spool_lane {
	struct spool_config cfg;
	char dir[PATH_MAX];
	char lane_dir[PATH_MAX];
	unsigned lane_no;
	const struct spool_io_ops *ops;
	void *ctx;

	uint8_t *ring;
	uint64_t ring_size;
	uint64_t head, submitted, tail;

	struct lane_seg segs[LANE_SEGS_MAX];
	unsigned seg_first, seg_count;
	bool have_active; /* the last segment in the FIFO takes appends */

	struct lane_op ops_tab[LANE_OPS_MAX];
	uint32_t op_gen;
	uint32_t ops_inflight, flushes_inflight;

	struct lane_commit *commits;
	uint32_t commit_first, commit_count;
	struct lane_commit *aborts; /* failed commits owing an abort record (FIFO) */
	uint32_t abort_first, abort_count;
	uint32_t abort_roll_fails; /* segment preparations failed in a row while aborts were owed */
	uint64_t durable_pos;
	uint32_t gen; /* bumped when a segment fails: older open txns fail */

	/* Spare segment preparation (background thread; lock only at roll): spool_segment.h. */
	struct spool_spare spare;
	/* Format 4: seal summaries, written by their own thread (spool_sumw.h). */
	struct spool_sumw sumw;

	bool direct;	       /* direct write discipline (decided at the first roll) */
	uint32_t dio_inflight; /* direct writes in flight */

	struct spool_lane_stats st;

	/*
	 * Reclamation (cfg.reclaim): txns whose chunks are written but whose commit is not
	 * durable yet (open, or committed and unsettled), counted by the segment they began in
	 * (ascending; chunks lie there or later). The table is told the lowest such segment.
	 */
	struct lane_open_seq {
		uint32_t seq, n;
	} * open_seqs;
	uint32_t open_first, open_count, open_cap;
	uint64_t low_pub;
};

void spool_config_defaults(struct spool_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->dir = "./var/spool";
	cfg->segment_size = 64ull << 20;
	cfg->buffer_size = 8u << 20;
	cfg->flushes_in_flight_max = 2;
	cfg->prewrite = true;
	cfg->segment_spares = 1;
	cfg->lane_bytes_max = 0;
	cfg->io_mode = SPOOL_IO_BUFFERED;
}

/* ---- segment FIFO ---- */

static uint64_t ring_raw_free(const struct spool_lane *l)
{
	return l->ring_size - (l->head - l->tail);
}

static struct lane_seg *seg_at(struct spool_lane *l, unsigned i)
{
	return &l->segs[(l->seg_first + i) % LANE_SEGS_MAX];
}

static struct lane_seg *seg_active(struct spool_lane *l)
{
	return l->have_active ? seg_at(l, l->seg_count - 1) : NULL;
}

static uint64_t seg_cap_l(const struct spool_lane *l)
{
	return l->cfg.segment_size - SPOOL_SEG_DATA_OFF;
}

/* Bytes left in the active segment. */
static uint64_t seg_left(struct spool_lane *l)
{
	struct lane_seg *s = seg_active(l);
	return s ? s->lstart + seg_cap_l(l) - l->head : 0;
}

static uint64_t seg_file_off(const struct lane_seg *s, uint64_t lpos)
{
	return SPOOL_SEG_DATA_OFF + (lpos - s->lstart);
}

static struct lane_seg *seg_of(struct spool_lane *l, uint64_t lpos)
{
	for (unsigned i = 0; i < l->seg_count; i++) {
		struct lane_seg *s = seg_at(l, i);
		if (lpos >= s->lstart && lpos < s->lend)
			return s;
	}
	return NULL;
}

/* ---- reclamation hooks (spool_reclaim.h) ---- */

static uint64_t id_seq(uint64_t id)
{
	return (id >> SPOOL_ID_COUNTER_BITS) & 0xffffffffull;
}

/* Tell the table the lowest segment chunks not yet covered by a durable commit may lie in. */
static void open_publish(struct spool_lane *l)
{
	struct lane_seg *a = seg_active(l);
	uint64_t low;

	while (l->open_count && !l->open_seqs[l->open_first].n) {
		l->open_first++;
		l->open_count--;
	}
	/* No such txn: a new one begins in the active segment (or a later one). */
	low = l->open_count ? l->open_seqs[l->open_first].seq : a ? a->seq : l->low_pub;
	if (low != l->low_pub) {
		l->low_pub = low;
		spool_reclaim_lane_low(l->cfg.reclaim, l->lane_no, low);
	}
}

/*
 * A copy written by compaction keeps its message's id, which names an older
 * segment: it is counted there (sorted in), which keeps every segment of
 * the lane from that one on while the copy is open (the old copy too).
 */
static void open_inc_older(struct spool_lane *l, uint64_t seq)
{
	uint32_t i;

	if (!l->cfg.reclaim)
		return;
	for (i = 0; i < l->open_count; i++) {
		struct lane_open_seq *o = &l->open_seqs[l->open_first + i];
		if (o->seq == seq) {
			o->n++;
			open_publish(l);
			return;
		}
		if (o->seq > seq)
			break;
	}
	if (l->open_first + l->open_count == l->open_cap) {
		uint32_t ncap = l->open_cap ? l->open_cap * 2 : 16;
		struct lane_open_seq *n = realloc(l->open_seqs, ncap * sizeof(*n));
		if (!n) {
			spool_reclaim_lane_low(l->cfg.reclaim, l->lane_no, 0);
			l->cfg.reclaim = NULL;
			return;
		}
		l->open_seqs = n;
		l->open_cap = ncap;
	}
	memmove(&l->open_seqs[l->open_first + i + 1], &l->open_seqs[l->open_first + i],
		(l->open_count - i) * sizeof(*l->open_seqs));
	l->open_seqs[l->open_first + i] = (struct lane_open_seq){.seq = (uint32_t)seq, .n = 1};
	l->open_count++;
	open_publish(l);
}

/* A txn began in segment seq (segments only grow: appended at the end). */
static void open_inc(struct spool_lane *l, uint64_t seq)
{
	if (!l->cfg.reclaim)
		return;
	if (!l->open_count || l->open_seqs[l->open_first + l->open_count - 1].seq != seq) {
		if (l->open_first && l->open_first + l->open_count == l->open_cap) {
			memmove(l->open_seqs, l->open_seqs + l->open_first,
				l->open_count * sizeof(*l->open_seqs));
			l->open_first = 0;
		}
		if (l->open_first + l->open_count == l->open_cap) {
			uint32_t ncap = l->open_cap ? l->open_cap * 2 : 16;
			struct lane_open_seq *n = realloc(l->open_seqs, ncap * sizeof(*n));
			/* Without memory: the count is lost, so nothing of this lane is reclaimed again. */
			if (!n) {
				spool_reclaim_lane_low(l->cfg.reclaim, l->lane_no, 0);
				l->cfg.reclaim = NULL;
				return;
			}
			l->open_seqs = n;
			l->open_cap = ncap;
		}
		DS_ASSERT(!l->open_count || l->open_seqs[l->open_first + l->open_count - 1].seq < seq);
		l->open_seqs[l->open_first + l->open_count++] = (struct lane_open_seq){.seq = (uint32_t)seq};
	}
	l->open_seqs[l->open_first + l->open_count - 1].n++;
	open_publish(l);
}

/* The txn that began in segment seq has its commit durable, or will never have one. */
static void open_dec(struct spool_lane *l, uint64_t seq)
{
	if (!l->cfg.reclaim)
		return;
	for (uint32_t i = 0; i < l->open_count; i++) {
		struct lane_open_seq *o = &l->open_seqs[l->open_first + i];
		if (o->seq == seq) {
			DS_ASSERT(o->n > 0);
			o->n--;
			open_publish(l);
			return;
		}
	}
	DS_ASSERT(!"txn not counted");
}

/* The segment's accumulated summary is not wanted (failed, or the lane closes without it). */
static void seg_sum_drop(struct lane_seg *s)
{
	if (s->sum) {
		spool_sum_acc_free(s->sum);
		free(s->sum);
		s->sum = NULL;
	}
}

/* Start the new active segment's summary; without memory it has none (recovery reads it whole). */
static void seg_sum_start(struct spool_lane *l, struct lane_seg *s)
{
	if (!l->sumw.started)
		return;
	s->sum = malloc(sizeof(*s->sum));
	if (s->sum && spool_sum_acc_init(s->sum, l->lane_no, s->seq, s->epoch, l->cfg.segment_size))
		seg_sum_drop(s);
}

/* The record just encoded at lane position lpos of the active segment s (sum_note after each encode). */
static inline void seg_sum_note(struct lane_seg *s, const uint8_t *rec, uint64_t lpos)
{
	if (s->sum)
		spool_sum_acc_note(s->sum, rec, SPOOL_SEG_DATA_OFF + (lpos - s->lstart));
}

/* Drop finished segments from the front: sealed or failed, nothing in flight. */
static void segs_reap(struct spool_lane *l)
{
	while (l->seg_count) {
		struct lane_seg *s = seg_at(l, 0);
		if (l->have_active && l->seg_count == 1)
			break;
		if (!(s->sealed || s->failed) || s->ops_inflight || l->submitted < s->lend)
			break;
		DS_ASSERT(!s->fd_busy);
		seg_files_close(&s->files);
		/*
		 * Never written again. Sealed: every record in it is durable, hence settled and
		 * told to the table (advance_durable ran). Failed: its bytes are unknown, kept.
		 */
		bool sealed = !s->failed && l->durable_pos >= s->lend;
		if (sealed)
			spool_sumw_sealed(&l->sumw, s->seq, s->sum);
		else
			seg_sum_drop(s);
		s->sum = NULL;
		if (l->cfg.reclaim && sealed)
			spool_reclaim_seg_sealed(l->cfg.reclaim, l->lane_no, s->seq);
		else if (l->cfg.reclaim)
			spool_reclaim_seg_pin(l->cfg.reclaim, l->lane_no, s->seq);
		l->seg_first = (l->seg_first + 1) % LANE_SEGS_MAX;
		l->seg_count--;
	}
}

/*
 * Switch appends to the spare segment. Blocks only if the background
 * thread has not finished preparing it (start-up, or a burst larger than
 * one segment in the time it takes to prepare one).
 */
static int lane_roll(struct spool_lane *l)
{
	struct lane_seg *old = seg_active(l), *s;
	struct seg_ready seg;
	int rc;

	if (l->seg_count >= LANE_SEGS_MAX)
		return -EAGAIN;
	rc = spool_spare_take(&l->spare, &seg);
	if (rc)
		return rc;
	if (!l->st.segments_opened) {
		/* The first segment decides the lane's write discipline, for its whole life. */
		l->direct = l->ops->write_dsync && (l->cfg.io_mode == SPOOL_IO_DIRECT_NO_ODIRECT ||
						    (l->cfg.io_mode == SPOOL_IO_DIRECT && seg.odirect));
		l->st.direct = l->direct;
	}
	if (old)
		old->lend = l->head;
	if (l->direct && (l->head & (DIO_BLOCK - 1))) {
		/*
		 * Segments start on a block boundary. The gap is the old segment's
		 * last write's zero tail (never stale ring content on disk).
		 */
		uint64_t gap = DIO_ALIGN_UP(l->head) - l->head;
		DS_ASSERT(gap <= ring_raw_free(l));
		memset(l->ring + (l->head % l->ring_size), 0, gap);
		l->head += gap;
	}
	s = &l->segs[(l->seg_first + l->seg_count) % LANE_SEGS_MAX];
	memset(s, 0, sizeof(*s));
	s->files = seg.files;
	s->seq = seg.seq;
	s->epoch = seg.epoch;
	s->lstart = l->head;
	s->lend = UINT64_MAX;
	s->durable_l = l->head;
	s->flush_req_l = l->head;
	seg_sum_start(l, s);
	DS_ASSERT(s->seq < (1ull << SPOOL_ID_SEQ_BITS));
	l->seg_count++;
	l->have_active = true;
	l->st.segments_opened++;
	if (l->cfg.reclaim) {
		spool_reclaim_seg_add(l->cfg.reclaim, l->lane_no, s->seq, l->cfg.segment_size, false);
		open_publish(l);
	}
	return 0;
}

/* ---- ops ---- */

static struct lane_op *op_alloc(struct spool_lane *l, uint32_t kind, struct lane_seg *s, uint64_t *tag)
{
	for (uint32_t i = 0; i < LANE_OPS_MAX; i++) {
		struct lane_op *op = &l->ops_tab[i];
		if (op->kind != OP_FREE)
			continue;
		memset(op, 0, sizeof(*op));
		op->kind = kind;
		op->gen = ++l->op_gen & 0xffffff;
		op->seg = s;
		op->slot = -1;
		*tag = ((uint64_t)op->gen << 32) | i;
		return op;
	}
	return NULL;
}

/* Hold a descriptor of s of its own for op (see struct seg_files); false if all are held. */
static bool op_take_fd(struct lane_op *op)
{
	struct lane_seg *s = op->seg;

	DS_ASSERT(op->slot < 0);
	for (uint32_t i = 0; i < s->files.n; i++)
		if (!(s->fd_busy & (1u << i))) {
			s->fd_busy |= 1u << i;
			op->slot = (int)i;
			return true;
		}
	return false;
}

static bool seg_fd_free(const struct lane_seg *s)
{
	return s->fd_busy != (1u << s->files.n) - 1;
}

static int op_fd(const struct lane_op *op)
{
	return op->seg->files.fd[op->slot < 0 ? 0 : op->slot];
}

static void op_free(struct lane_op *op)
{
	if (op->slot >= 0) {
		DS_ASSERT(op->seg->fd_busy & (1u << op->slot));
		op->seg->fd_busy &= ~(1u << op->slot);
	}
	op->slot = -1;
	op->kind = OP_FREE;
}

static uint64_t op_tag(struct spool_lane *l, struct lane_op *op)
{
	return ((uint64_t)op->gen << 32) | (uint64_t)(op - l->ops_tab);
}

static void tail_update(struct spool_lane *l)
{
	uint64_t t = l->submitted;

	for (uint32_t i = 0; i < LANE_OPS_MAX; i++)
		if (l->ops_tab[i].kind == OP_WRITE)
			t = DS_MIN(t, l->ops_tab[i].lstart);
	DS_ASSERT(t >= l->tail);
	l->tail = t;
}

static void advance_durable(struct spool_lane *l)
{
	uint64_t pos = l->durable_pos;

	for (unsigned i = 0; i < l->seg_count; i++) {
		struct lane_seg *s = seg_at(l, i);
		if (s->failed)
			continue;
		if (s->sealed) {
			pos = DS_MAX(pos, s->lend);
			continue;
		}
		pos = DS_MAX(pos, s->durable_l);
		break;
	}
	l->durable_pos = DS_MAX(l->durable_pos, pos);
	while (l->commit_count) {
		struct lane_commit c = l->commits[l->commit_first];
		if (c.lend > l->durable_pos)
			break;
		l->commit_first = (l->commit_first + 1) % LANE_COMMITS_MAX;
		l->commit_count--;
		/* The table learns of a durable record before anyone can act on it (settled). */
		if (c.kind == Q_ABORT) {
			/* The refusal is durable: now the client may hear it. */
			if (l->cfg.reclaim) {
				/* Kept while this process runs: it must outlive the refused commit. */
				spool_reclaim_seg_pin(l->cfg.reclaim, l->lane_no, c.rec_seq);
				open_dec(l, id_seq(c.id));
			}
			l->st.aborts_durable++;
			l->ops->settled(l->ctx, c.cookie, -(int)c.err);
		} else if (c.kind == Q_OUTCOME || c.kind == Q_OPERATOR || c.kind == Q_GAP) {
			/* An operator record is about its message like an outcome: H(M) for reclamation. */
			if (l->cfg.reclaim) {
				/* Operator and gap records outlive a move of the message (compaction). */
				if (c.kind == Q_OUTCOME)
					spool_reclaim_msg_record(l->cfg.reclaim, c.id, l->lane_no, c.rec_seq,
								 c.off);
				else if (c.kind == Q_OPERATOR)
					spool_reclaim_msg_record_keep(l->cfg.reclaim, c.id, l->lane_no,
								      c.rec_seq);
				/* A gap record keeps its message for the window (AT_RISK) or no more
				 * (CLEARED: 0), and is carried forward by compaction while it does. */
				else
					spool_reclaim_msg_record_gap(l->cfg.reclaim, c.id, l->lane_no,
								     c.rec_seq, (int64_t)c.off);
			}
			l->st.outcomes_durable += c.kind == Q_OUTCOME;
			l->ops->settled(l->ctx, c.cookie, 0);
		} else {
			if (l->cfg.reclaim) {
				spool_reclaim_msg_add(l->cfg.reclaim, c.id, l->lane_no, c.seq, c.chunk_seq);
				open_dec(l, id_seq(c.id));
			}
			l->st.commits_durable++;
			l->ops->settled(l->ctx, c.cookie, 0);
		}
	}
}

static void queue_push(struct spool_lane *l, const struct lane_commit *c)
{
	DS_ASSERT(l->commit_count < LANE_COMMITS_MAX);
	l->commits[(l->commit_first + l->commit_count) % LANE_COMMITS_MAX] = *c;
	l->commit_count++;
}

static void abort_owe(struct spool_lane *l, const struct lane_commit *c)
{
	/* Every entry is a distinct failed commit still unsettled: never more than the queue held. */
	DS_ASSERT(l->abort_count < LANE_COMMITS_MAX);
	l->aborts[(l->abort_first + l->abort_count) % LANE_COMMITS_MAX] = *c;
	l->abort_count++;
}

/* Settle the first n owed aborts with their error, without an abort record. */
static void aborts_give_up(struct spool_lane *l, uint32_t n)
{
	while (n-- && l->abort_count) {
		struct lane_commit c = l->aborts[l->abort_first];
		l->abort_first = (l->abort_first + 1) % LANE_COMMITS_MAX;
		l->abort_count--;
		l->st.aborts_lost++;
		open_dec(l, id_seq(c.id));
		l->ops->settled(l->ctx, c.cookie, -(int)c.err);
	}
}

/*
 * A segment can no longer be trusted (flush or write error): never write
 * or flush it again, fail every unsettled commit and every open txn (their
 * bytes may live in it), and move appends to a fresh segment.
 */
static void seg_fail(struct spool_lane *l, struct lane_seg *s, int err)
{
	int res = err == -ENOSPC ? -ENOSPC : -EIO;

	if (s->failed)
		return;
	s->failed = true;
	l->st.flush_errors++;
	if (l->cfg.reclaim)
		spool_reclaim_seg_pin(l->cfg.reclaim, l->lane_no, s->seq);
	l->gen++;
	if (seg_active(l) == s) {
		s->lend = l->head;
		l->have_active = false;
	}
	if (l->submitted < s->lend && l->submitted >= s->lstart)
		l->submitted = DS_MIN(s->lend, l->head);
	/*
	 * Only the entries queued so far: settled() may queue new ones (new
	 * gen, new segment). A failed commit owes an abort record first (its
	 * bytes may yet turn out intact); an abort whose segment failed is
	 * owed again; an outcome is simply not durable (the caller records it
	 * again; should this copy survive, it says the same).
	 */
	for (uint32_t n = l->commit_count; n; n--) {
		struct lane_commit c = l->commits[l->commit_first];
		l->commit_first = (l->commit_first + 1) % LANE_COMMITS_MAX;
		l->commit_count--;
		if (c.kind == Q_MOVED) {
			open_dec(l, id_seq(c.id));
			l->ops->settled(l->ctx, c.cookie, res);
		} else if (c.kind == Q_COMMIT) {
			c.kind = Q_ABORT;
			c.err = (uint8_t)-res;
			c.tries = 0;
			abort_owe(l, &c);
		} else if (c.kind == Q_ABORT && ++c.tries < ABORT_TRIES_MAX) {
			abort_owe(l, &c);
		} else if (c.kind == Q_ABORT) {
			l->st.aborts_lost++;
			open_dec(l, id_seq(c.id));
			l->ops->settled(l->ctx, c.cookie, -(int)c.err);
		} else {
			l->st.outcome_errors += c.kind == Q_OUTCOME;
			l->ops->settled(l->ctx, c.cookie, res);
		}
	}
}

static bool want_flush(struct spool_lane *l)
{
	struct lane_seg *s = seg_active(l);
	struct lane_commit *last;

	if (!l->commit_count || !s)
		return false;
	last = &l->commits[(l->commit_first + l->commit_count - 1) % LANE_COMMITS_MAX];
	return last->lend > s->lstart && last->lend > s->flush_req_l;
}

/* Bookkeeping of a flush or seal the ops took (alone or behind its write). */
static void flush_submitted(struct spool_lane *l, struct lane_op *op)
{
	struct lane_seg *s = op->seg;

	s->ops_inflight++;
	l->ops_inflight++;
	if (op->kind == OP_FLUSH) {
		l->flushes_inflight++;
		s->flush_req_l = DS_MAX(s->flush_req_l, op->lstart);
	} else {
		s->sealing = true;
	}
}

static int submit_flush(struct spool_lane *l, struct lane_seg *s, uint32_t kind, uint64_t cover)
{
	uint64_t tag;
	struct lane_op *op = op_alloc(l, kind, s, &tag);
	int rc;

	if (!op)
		return -EAGAIN;
	if (!op_take_fd(op)) {
		op_free(op);
		return -EAGAIN;
	}
	op->lstart = cover;
	op->t_start_ns = (uint64_t)ds_mono_ns();
	rc = l->ops->flush(l->ctx, op_fd(op), tag);
	if (rc) {
		op_free(op);
		return rc;
	}
	flush_submitted(l, op);
	return 0;
}

/* A buffered write of what is left of op, on fd[0]. */
static int submit_write(struct spool_lane *l, struct lane_op *op)
{
	struct lane_seg *s = op->seg;
	uint64_t pos = op->lstart + op->done;

	return l->ops->write(l->ctx, s->files.fd[0], l->ring + (pos % l->ring_size), op->len - op->done,
			     seg_file_off(s, pos), op_tag(l, op));
}

static uint64_t durable_off_for(struct spool_lane *l, struct lane_seg *s);

/* Padding chunks belong to a txn id no txn ever has (segment sequence 0). */
static uint64_t pad_txn_id(const struct spool_lane *l)
{
	/* Never 0, even on lane 0: 0 marks an empty slot in readers' tables. */
	return spool_id_make(l->lane_no, 0, 1);
}

/*
 * Direct mode: fill the active segment up to the next block boundary so a
 * group's write ends there and the next one starts on a fresh block. A gap
 * too small for a record header takes one more block, unless that would
 * pass the segment's end: then the gap is the segment's zero tail (the
 * segment is full). False if the ring has no room right now.
 */
static bool dio_pad(struct spool_lane *l, struct lane_seg *s)
{
	uint64_t gap = DIO_ALIGN_UP(l->head) - l->head, seg_end = s->lstart + seg_cap_l(l);
	uint8_t *dst = l->ring + (l->head % l->ring_size);

	if (!gap)
		return true;
	if (gap < SPOOL_REC_HDR_SIZE && l->head + gap + DIO_BLOCK <= seg_end)
		gap += DIO_BLOCK;
	if (gap > ring_raw_free(l))
		return false;
	if (gap < SPOOL_REC_HDR_SIZE) {
		DS_ASSERT(l->head + gap == seg_end);
		memset(dst, 0, gap);
	} else {
		memset(dst + SPOOL_REC_HDR_SIZE, 0, gap - SPOOL_REC_HDR_SIZE);
		spool_rec_encode(dst, SPOOL_REC_CHUNK, (uint32_t)(gap - SPOOL_REC_HDR_SIZE), pad_txn_id(l),
				 s->epoch, durable_off_for(l, s));
		DS_ASSERT(spool_rec_total(gap - SPOOL_REC_HDR_SIZE) == gap);
		seg_sum_note(s, dst, l->head);
	}
	l->head += gap;
	l->st.pad_bytes += gap;
	return true;
}

/*
 * Hand len bytes of s from l->submitted to the kernel in one write: a DSYNC
 * write (direct mode, on a descriptor of its own) or a buffered one; with
 * flush, a buffered write and the fdatasync behind it, which the ops submit
 * together (the flush runs only once the write completed in full). On
 * success the write counts as in flight and submitted moves to end (a
 * direct write may pass end into block padding). -EAGAIN/-EBUSY: nothing
 * happened, try on a later pump; any other error failed s.
 */
static int start_write(struct spool_lane *l, struct lane_seg *s, uint32_t len, uint64_t end, bool dsync,
		       bool flush)
{
	uint64_t tag, ftag = 0;
	struct lane_op *op = op_alloc(l, OP_WRITE, s, &tag), *fop = NULL;
	int rc;

	if (!op)
		return -EAGAIN;
	if (flush)
		fop = op_alloc(l, OP_FLUSH, s, &ftag);
	if ((flush && (!fop || !op_take_fd(fop))) || (dsync && !op_take_fd(op))) {
		if (fop)
			op_free(fop);
		op_free(op);
		return -EAGAIN;
	}
	op->lstart = l->submitted;
	op->len = len;
	op->t_start_ns = (uint64_t)ds_mono_ns();
	if (dsync) {
		rc = l->ops->write_dsync(l->ctx, op_fd(op), l->ring + (op->lstart % l->ring_size), op->len,
					 seg_file_off(s, op->lstart), tag);
	} else if (flush) {
		fop->lstart = end;
		fop->t_start_ns = op->t_start_ns;
		rc = l->ops->write_flush(l->ctx, s->files.fd[0], l->ring + (op->lstart % l->ring_size),
					 op->len, seg_file_off(s, op->lstart), tag, op_fd(fop), ftag);
	} else {
		rc = submit_write(l, op);
	}
	if (rc) {
		if (fop)
			op_free(fop);
		op_free(op);
		if (rc != -EAGAIN && rc != -EBUSY)
			seg_fail(l, s, rc);
		return rc;
	}
	s->writes_inflight++;
	s->ops_inflight++;
	l->ops_inflight++;
	l->st.bytes_written += op->len;
	l->submitted = end;
	if (fop)
		flush_submitted(l, fop);
	return 0;
}

/*
 * Direct mode: every byte of [submitted, head) goes out in writes of whole,
 * never-written blocks, each durable on completion; up to
 * flushes_in_flight_max of them in flight (they never overlap, so their
 * completion order does not matter: a segment is durable up to its oldest
 * write still in flight).
 */
static void pump_direct(struct spool_lane *l)
{
	while (l->submitted < l->head && l->dio_inflight < l->cfg.flushes_in_flight_max &&
	       l->ops_inflight < LANE_OPS_MAX) {
		struct lane_seg *s = seg_of(l, l->submitted);
		uint64_t end, wend;
		int rc;

		if (!s) {
			/* The zero gap after a segment's end: the next segment starts on a block. */
			uint64_t next = l->head;
			for (unsigned i = 0; i < l->seg_count; i++)
				if (seg_at(l, i)->lstart > l->submitted)
					next = DS_MIN(next, seg_at(l, i)->lstart);
			DS_ASSERT(next - l->submitted < DIO_BLOCK);
			l->submitted = next;
			continue;
		}
		end = DS_MIN(l->head, s->lend);
		if (s->failed) {
			l->submitted = end;
			continue;
		}
		if (s == seg_active(l)) {
			const struct lane_commit *last =
				l->commit_count ? &l->commits[(l->commit_first + l->commit_count - 1) %
							      LANE_COMMITS_MAX]
						: NULL;
			if (last && last->lend > l->submitted && dio_pad(l, s)) {
				end = l->head; /* a group: everything, padded to the block end */
			} else {
				/* No commit waits: stream whole blocks once there are enough of them. */
				end = DIO_ALIGN_DOWN(l->head);
				if (end <= l->submitted || (end - l->submitted < DIO_EAGER_MIN &&
							    !(last && last->lend > l->submitted) &&
							    ring_raw_free(l) > l->ring_size / 2))
					break;
			}
		}
		/* An old segment's last write ends in its zero gap (its lend is not aligned). */
		wend = DIO_ALIGN_UP(end);
		DS_ASSERT(!(l->submitted & (DIO_BLOCK - 1)) && wend - l->submitted <= l->ring_size);
		rc = start_write(l, s, (uint32_t)(wend - l->submitted), end, true, false);
		if (rc == -EAGAIN || rc == -EBUSY)
			break;
		if (rc)
			continue;
		l->dio_inflight++;
	}
}

/* Direct mode: a DSYNC write of s completed in full. */
static void dio_durable(struct spool_lane *l, struct lane_seg *s)
{
	uint64_t lo = DS_MIN(l->submitted, s->lend);

	for (uint32_t i = 0; i < LANE_OPS_MAX; i++)
		if (l->ops_tab[i].kind == OP_WRITE && l->ops_tab[i].seg == s)
			lo = DS_MIN(lo, l->ops_tab[i].lstart);
	s->durable_l = DS_MAX(s->durable_l, lo);
	advance_durable(l);
}

static void aborts_stage(struct spool_lane *l);

static void lane_pump_once(struct spool_lane *l)
{
	struct lane_seg *act;

	aborts_stage(l);
	if (l->direct)
		pump_direct(l);
	while (!l->direct && l->submitted < l->head) {
		struct lane_seg *s = seg_of(l, l->submitted);
		uint64_t end;
		bool link = false;
		int rc;

		DS_ASSERT(s);
		end = DS_MIN(l->head, s->lend);
		if (s->failed) {
			l->submitted = end;
			continue;
		}
		if (s == seg_active(l) && end == l->head && s->writes_inflight == 0 &&
		    l->flushes_inflight < l->cfg.flushes_in_flight_max) {
			/* Link a flush to this write if commits wait for it (group commit). */
			struct lane_commit *last =
				l->commit_count ? &l->commits[(l->commit_first + l->commit_count - 1) %
							      LANE_COMMITS_MAX]
						: NULL;
			link = last && last->lend > s->lstart && last->lend > s->flush_req_l &&
			       l->ops_inflight + 2 <= LANE_OPS_MAX && /* the flush must get a slot too */
			       seg_fd_free(s);
		}
		rc = start_write(l, s, (uint32_t)(end - l->submitted), end, false, link);
		if (rc == -EAGAIN || rc == -EBUSY)
			break;
	}
	/* Seal older segments once all their writes completed. */
	for (unsigned i = 0; i < l->seg_count; i++) {
		struct lane_seg *s = seg_at(l, i);
		if (s == seg_active(l) || s->failed || s->sealed || s->sealing)
			continue;
		if (l->submitted >= s->lend && s->writes_inflight == 0) {
			int rc = submit_flush(l, s, OP_SEAL, s->lend);
			if (rc && rc != -EAGAIN && rc != -EBUSY)
				seg_fail(l, s, rc);
		}
	}
	act = seg_active(l);
	if (act && !l->direct && want_flush(l) && act->writes_inflight == 0 &&
	    l->flushes_inflight < l->cfg.flushes_in_flight_max && l->submitted > act->flush_req_l &&
	    l->submitted > act->lstart) {
		int rc = submit_flush(l, act, OP_FLUSH, l->submitted);
		if (rc && rc != -EAGAIN && rc != -EBUSY)
			seg_fail(l, act, rc);
	}
	segs_reap(l);
}

static void lane_pump(struct spool_lane *l)
{
	uint64_t fails = l->st.flush_errors;

	lane_pump_once(l);
	/* A segment failed while submitting: stage (and write) the aborts it owes now, not a turn later. */
	if (l->st.flush_errors != fails && l->abort_count)
		lane_pump_once(l);
}

void spool_lane_kick(struct spool_lane *l)
{
	lane_pump(l);
}

static void flush_latency_add(struct spool_lane *l, const struct lane_op *op)
{
	uint64_t lat_us = ((uint64_t)ds_mono_ns() - op->t_start_ns) / 1000;

	l->st.flushes++;
	l->st.flush_latency_us_sum += lat_us;
	l->st.flush_latency_us_max = DS_MAX(l->st.flush_latency_us_max, lat_us);
}

/* Direct mode: a DSYNC write completed. False if it was submitted again (not performed). */
static bool dio_write_done(struct spool_lane *l, struct lane_op *op, uint64_t tag, int res)
{
	struct lane_seg *s = op->seg;
	bool ok = false;

	if (s->failed) {
		/* Nothing: never trusted again. */
	} else if ((res == -EAGAIN || res == -EINTR) && ++op->retries <= LANE_RETRY_MAX) {
		/* Not performed: the same fresh blocks again (none of them acknowledged). */
		int rc = l->ops->write_dsync(l->ctx, op_fd(op), l->ring + (op->lstart % l->ring_size),
					     op->len, seg_file_off(s, op->lstart), tag);
		if (!rc)
			return false;
		seg_fail(l, s, rc);
	} else if (res < 0 || (uint32_t)res != op->len) {
		/* Failed or short: what reached the disk is unknown, never written again. */
		seg_fail(l, s, res < 0 && res != -EAGAIN && res != -EINTR ? res : -EIO);
	} else {
		ok = true;
		flush_latency_add(l, op);
	}
	s->writes_inflight--;
	s->ops_inflight--;
	l->ops_inflight--;
	l->dio_inflight--;
	op_free(op);
	tail_update(l);
	if (ok)
		dio_durable(l, s);
	return true;
}

/* A buffered write completed: in full, short (the rest goes out alone), or failed. */
static void write_done(struct spool_lane *l, struct lane_op *op, int res)
{
	struct lane_seg *s = op->seg;
	bool finished = false;

	if (s->failed) {
		finished = true;
	} else if (res == -EAGAIN || res == -EINTR || res == -ECANCELED || res == 0) {
		if (++op->retries > LANE_RETRY_MAX) {
			seg_fail(l, s, -EIO);
			finished = true;
		}
	} else if (res < 0) {
		seg_fail(l, s, res);
		finished = true;
	} else {
		DS_ASSERT((uint32_t)res <= op->len - op->done);
		op->done += (uint32_t)res;
		finished = op->done == op->len;
	}
	if (!finished) {
		int rc = submit_write(l, op);
		if (rc) {
			seg_fail(l, s, rc);
			finished = true;
		}
	}
	if (finished) {
		s->writes_inflight--;
		s->ops_inflight--;
		l->ops_inflight--;
		op_free(op);
		tail_update(l);
	}
}

/* A flush or seal completed: the range it covers is durable, or the segment is retired. */
static void flush_done(struct spool_lane *l, struct lane_op *op, int res)
{
	struct lane_seg *s = op->seg;
	uint32_t kind = op->kind;
	uint64_t cover = op->lstart;

	if (!s->failed && res == 0)
		flush_latency_add(l, op);
	op_free(op);
	s->ops_inflight--;
	l->ops_inflight--;
	if (kind == OP_FLUSH)
		l->flushes_inflight--;
	else
		s->sealing = false;
	if (s->failed) {
		/* Nothing: never trusted again. */
	} else if (res == -ECANCELED) {
		/*
		 * Never ran (its write was short): ask again later. Any other
		 * error, -EINTR and -EAGAIN included, may have consumed a
		 * writeback error: a failure.
		 */
		if (kind == OP_FLUSH) {
			s->flush_req_l = s->durable_l;
			for (uint32_t i = 0; i < LANE_OPS_MAX; i++)
				if (l->ops_tab[i].kind == OP_FLUSH && l->ops_tab[i].seg == s)
					s->flush_req_l = DS_MAX(s->flush_req_l, l->ops_tab[i].lstart);
		}
	} else if (res < 0) {
		/* A failed fsync is never retried and then trusted. */
		seg_fail(l, s, res);
	} else if (kind == OP_SEAL) {
		s->sealed = true;
		s->durable_l = s->lend;
		advance_durable(l);
	} else {
		s->durable_l = DS_MAX(s->durable_l, cover);
		advance_durable(l);
	}
}

void spool_lane_complete(struct spool_lane *l, uint64_t tag, int res)
{
	uint32_t slot = (uint32_t)tag;
	struct lane_op *op;

	DS_ASSERT(slot < LANE_OPS_MAX);
	op = &l->ops_tab[slot];
	DS_ASSERT(op->kind != OP_FREE && op->gen == (uint32_t)(tag >> 32));
	if (op->kind == OP_WRITE && l->direct)
		dio_write_done(l, op, tag, res);
	else if (op->kind == OP_WRITE)
		write_done(l, op, res);
	else
		flush_done(l, op, res);
	lane_pump(l);
}

bool spool_lane_busy(const struct spool_lane *l)
{
	return l->ops_inflight > 0 || l->commit_count > 0 || l->abort_count > 0;
}

void spool_lane_stats(const struct spool_lane *l, struct spool_lane_stats *st)
{
	*st = l->st;
	st->prepare_errors = spool_spare_errors(&l->spare);
	spool_spare_prepared(&l->spare, &st->segments_recycled, &st->segments_fresh);
	st->spares_ready = spool_spare_ready(&l->spare);
}

/* ---- open/close ---- */

static int ring_map(struct spool_lane *l, uint64_t size)
{
	long page = sysconf(_SC_PAGESIZE);
	uint8_t *base;
	int fd;

	size = (size + (uint64_t)page - 1) & ~((uint64_t)page - 1);
	fd = memfd_create("spool-ring", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size)) {
		close(fd);
		return -errno;
	}
	base = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		close(fd);
		return -errno;
	}
	if (mmap(base, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
	    mmap(base + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
		int rc = -errno;
		munmap(base, 2 * size);
		close(fd);
		return rc;
	}
	close(fd);
	/* Touch it now: no page faults on the hot path. */
	memset(base, 0, size);
	l->ring = base;
	l->ring_size = size;
	return 0;
}

/* The spare's view of the lane's free files (spool_segment.h): the reclamation table's pool. */
static uint32_t lane_free_count(void *pool, unsigned lane)
{
	return spool_reclaim_free_count(pool, lane);
}

static void lane_free_note(void *pool, unsigned lane, int delta, uint64_t bytes)
{
	spool_reclaim_free_note(pool, lane, delta, bytes);
}

int spool_lane_open(struct spool_lane **out, const struct spool_config *cfg, unsigned lane_no,
		    const struct spool_io_ops *ops, void *ops_ctx)
{
	struct spool_lane *l;
	struct seg_params sp;
	uint64_t *seqs, seqs_last;
	int n, rc;

	*out = NULL;
	if (lane_no >= SPOOL_LANES_MAX || cfg->segment_size < SPOOL_SEGMENT_SIZE_MIN ||
	    cfg->segment_size > SPOOL_SEGMENT_SIZE_MAX || (cfg->segment_size & 4095) ||
	    cfg->buffer_size < SPOOL_BUFFER_SIZE_MIN || cfg->flushes_in_flight_max < 1 ||
	    cfg->segment_spares > SPOOL_SPARES_MAX || !ops || !ops->write || !ops->flush ||
	    !ops->write_flush || !ops->settled)
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->cfg = *cfg;
	l->lane_no = lane_no;
	l->ops = ops;
	l->ctx = ops_ctx;
	if (snprintf(l->dir, sizeof(l->dir), "%s", cfg->dir) >= (int)sizeof(l->dir) ||
	    spool_lane_dir_path(l->lane_dir, sizeof(l->lane_dir), cfg->dir, lane_no)) {
		free(l);
		return -ENAMETOOLONG;
	}
	l->cfg.dir = l->dir;
	l->commits = calloc(LANE_COMMITS_MAX, sizeof(*l->commits));
	l->aborts = calloc(LANE_COMMITS_MAX, sizeof(*l->aborts));
	if (!l->commits || !l->aborts) {
		free(l->commits);
		free(l->aborts);
		free(l);
		return -ENOMEM;
	}
	rc = ring_map(l, cfg->buffer_size);
	if (rc)
		goto fail;
	if (mkdir(l->dir, 0750) == 0) {
		/* A new spool directory's own name must survive a crash too. */
		rc = spool_fsync_parent(l->dir);
		if (rc)
			goto fail;
	} else if (errno != EEXIST) {
		rc = -errno;
		goto fail;
	}
	if (mkdir(l->lane_dir, 0750) && errno != EEXIST) {
		rc = -errno;
		goto fail;
	}
	rc = spool_fsync_dir(l->dir);
	if (rc)
		goto fail;
	/* Segment sequence numbers strictly increase across restarts. */
	n = spool_seg_list(l->lane_dir, &seqs);
	if (n < 0) {
		rc = n;
		goto fail;
	}
	seqs_last = n ? seqs[n - 1] : 0;
	/*
	 * Free files (format 5): unusable or excess ones go, the rest form the
	 * lane's pool. Their numbers are below the lane's highest segment (the
	 * highest is never reclaimed), but the lane starts after them anyway.
	 */
	uint64_t free_top = 0;
	int nfree = spool_free_sweep(l->lane_dir, cfg->segment_size,
				     cfg->reclaim ? spool_reclaim_recycle_max(cfg->reclaim) : 0, &free_top);
	if (cfg->reclaim)
		spool_reclaim_free_set(cfg->reclaim, lane_no, nfree > 0 ? (uint32_t)nfree : 0,
				       cfg->segment_size);
	seqs_last = DS_MAX(seqs_last, free_top);
	sp = (struct seg_params){
		.dir = l->dir,
		.lane_dir = l->lane_dir,
		.lane_no = lane_no,
		.segment_size = cfg->segment_size,
		.lane_bytes_max = cfg->lane_bytes_max,
		.prewrite = cfg->prewrite,
		.spares = cfg->segment_spares ? cfg->segment_spares : 1,
		.want_odirect = cfg->io_mode == SPOOL_IO_DIRECT && ops->write_dsync,
		.nfds = DS_MIN(cfg->flushes_in_flight_max + 1, (uint32_t)SPOOL_SEG_FDS_MAX),
		.free_count = cfg->reclaim ? lane_free_count : NULL,
		.free_note = lane_free_note,
		.pool = cfg->reclaim,
	};
	rc = spool_spare_start(&l->spare, &sp, seqs_last + 1);
	free(seqs);
	if (rc)
		goto fail;
	/* Every segment there now is never written again: summaries for those without one. */
	rc = spool_sumw_start(&l->sumw, l->dir, lane_no, n ? seqs_last + 1 : 0);
	if (rc)
		goto fail;
	rc = lane_roll(l);
	if (rc)
		goto fail;
	*out = l;
	return 0;
fail:
	spool_lane_close(l);
	return rc;
}

void spool_lane_close(struct spool_lane *l)
{
	if (!l)
		return;
	DS_ASSERT(!spool_lane_busy(l));
	spool_spare_stop(&l->spare);
	/*
	 * The active segment is never written again (the next start begins after
	 * it): summarised now, flushed first, so the next start need not read it.
	 */
	if (seg_active(l) && !seg_active(l)->failed) {
		/*
		 * Bytes no flush of the lane covered (an aborted txn's chunks:
		 * every commit is settled) become durable only by the writer's
		 * fdatasync, outside the ops: the summary of such a segment is
		 * built from the file after it, not from the accumulator.
		 */
		if (l->durable_pos < l->head)
			seg_sum_drop(seg_active(l));
		spool_sumw_closed(&l->sumw, seg_active(l)->seq, seg_active(l)->sum);
		seg_active(l)->sum = NULL;
	}
	spool_sumw_stop(&l->sumw);
	for (unsigned i = 0; i < l->seg_count; i++) {
		seg_sum_drop(seg_at(l, i));
		seg_files_close(&seg_at(l, i)->files);
	}
	if (l->ring)
		munmap(l->ring, 2 * l->ring_size);
	free(l->open_seqs);
	free(l->commits);
	free(l->aborts);
	free(l);
}

/* ---- txns ---- */

/* priv layout */
#define P_FIRST_SEQ 0
#define P_FIRST_OFF 1
#define P_COUNT_GEN 2 /* chunk count | gen << 32 */
#define P_BODY_LEN  3
#define P_CRC_STATE 4 /* body crc | state << 32 */
#define P_ERR	    5
#define P_LAST_POS  6 /* lane position of this txn's last chunk record + 1; 0 = none */
#define P_LAST_LEN  7 /* its payload length */

static uint32_t txn_state(const struct spool_txn *t)
{
	return (uint32_t)(t->priv[P_CRC_STATE] >> 32);
}

static uint64_t ring_free(const struct spool_lane *l)
{
	uint64_t f = ring_raw_free(l);

	if (!l->direct)
		return f;
	return f > DIO_RING_RESERVE ? f - DIO_RING_RESERVE : 0;
}

static uint64_t rec_overhead(uint64_t bytes)
{
	return (SPOOL_REC_HDR_SIZE + SPOOL_REC_ALIGN) * (3 + bytes / SPOOL_CHUNK_MAX);
}

size_t spool_lane_append_room(const struct spool_lane *l)
{
	uint64_t f = ring_free(l), reserve = l->ring_size / 8, ov = rec_overhead(f);

	if (f <= reserve + ov)
		return 0;
	return (size_t)(f - reserve - ov);
}

int spool_txn_begin(struct spool_lane *l, struct spool_txn *t)
{
	struct lane_seg *s = seg_active(l);
	bool spare_bad;
	int rc;

	memset(t, 0, sizeof(*t));
	/* A full disk shows here first (452 at MAIL): no spare and the active segment nearly used. */
	spare_bad = spool_spare_failing(&l->spare);
	if (!s || s->counter >= (1u << SPOOL_ID_COUNTER_BITS) - 1 ||
	    (spare_bad && seg_left(l) < seg_cap_l(l) / 8)) {
		rc = lane_roll(l);
		if (rc)
			return rc == -EAGAIN ? -ENOSPC : rc;
		s = seg_active(l);
	}
	t->id = spool_id_make(l->lane_no, s->seq, s->counter++);
	t->priv[P_COUNT_GEN] = (uint64_t)l->gen << 32;
	t->priv[P_CRC_STATE] = (uint64_t)TXN_OPEN << 32;
	open_inc(l, s->seq);
	return 0;
}

static uint64_t durable_off_for(struct spool_lane *l, struct lane_seg *s)
{
	if (l->durable_pos <= s->lstart)
		return 0;
	return seg_file_off(s, DS_MIN(l->durable_pos, l->head));
}

/*
 * Make room for a record of total bytes in the active segment: roll when
 * there is no active segment or it is too full. 0, -EAGAIN (no room for a
 * segment now: retry after a completion) or the failed preparation's error.
 */
static int room_for_record(struct spool_lane *l, uint64_t total)
{
	if (seg_active(l) && seg_left(l) >= total)
		return 0;
	if (l->seg_count >= LANE_SEGS_MAX - 1)
		return -EAGAIN;
	return lane_roll(l);
}

/*
 * Stage an abort record for each failed commit that owes one (FORMAT.md,
 * "Abort rule"), as far as staging room allows; each then waits in the
 * commit queue, and is settled with its error once durable. A failed
 * preparation of the segment they need counts against all of them: after
 * ABORT_TRIES_MAX in a row they are settled without one (aborts_lost).
 */
static void aborts_stage(struct spool_lane *l)
{
	const uint64_t total = spool_rec_total(SPOOL_ABORT_SIZE);

	while (l->abort_count) {
		struct lane_commit c = l->aborts[l->abort_first];
		struct spool_abort a = {.reason = c.err, .commit_seq = c.seq, .commit_off = c.off};
		struct lane_seg *s;
		uint8_t *dst;
		int rc;

		if (l->commit_count >= LANE_COMMITS_MAX || ring_free(l) < total)
			return; /* room comes with a completion */
		rc = room_for_record(l, total);
		if (rc == -EAGAIN)
			return;
		if (rc) {
			if (++l->abort_roll_fails >= ABORT_TRIES_MAX) {
				l->abort_roll_fails = 0;
				aborts_give_up(l, l->abort_count);
			}
			continue;
		}
		l->abort_roll_fails = 0;
		s = seg_active(l);
		dst = l->ring + (l->head % l->ring_size);
		spool_abort_encode(dst + SPOOL_REC_HDR_SIZE, &a);
		spool_rec_encode(dst, SPOOL_REC_ABORT, SPOOL_ABORT_SIZE, c.id, s->epoch,
				 durable_off_for(l, s));
		seg_sum_note(s, dst, l->head);
		l->head += total;
		c.lend = l->head;
		c.rec_seq = (uint32_t)s->seq;
		queue_push(l, &c);
		l->abort_first = (l->abort_first + 1) % LANE_COMMITS_MAX;
		l->abort_count--;
		l->st.aborts++;
	}
}

/*
 * The session appends the body in pieces as small as one dot-unstuffed
 * line. If this txn's last chunk record is still the newest staged record
 * and no write has been submitted for it yet, grow it in place instead of
 * paying a record header (and padding) per piece: the chunk header's CRC
 * covers the header only (the commit's CRC covers the body), so it is
 * simply encoded again. Returns true when all of *len went in.
 */
static bool chunk_extend(struct spool_lane *l, struct spool_txn *t, const uint8_t **p, size_t *len)
{
	struct lane_seg *s = seg_active(l);
	uint64_t pos, plen, n, old_total, new_total;
	uint8_t *dst;

	if (!t->priv[P_LAST_POS] || !s)
		return false;
	pos = t->priv[P_LAST_POS] - 1;
	plen = t->priv[P_LAST_LEN];
	old_total = spool_rec_total(plen);
	if (pos + old_total != l->head || pos < l->submitted || pos < s->lstart)
		return false;
	n = *len;
	if (plen + n > SPOOL_CHUNK_MAX)
		return false;
	new_total = spool_rec_total(plen + n);
	if (new_total - old_total > ring_free(l) || new_total - old_total > seg_left(l))
		return false;
	dst = l->ring + (pos % l->ring_size);
	memcpy(dst + SPOOL_REC_HDR_SIZE + plen, *p, n);
	spool_rec_encode(dst, SPOOL_REC_CHUNK, (uint32_t)(plen + n), t->id, s->epoch, durable_off_for(l, s));
	seg_sum_note(s, dst, pos);
	l->head = pos + new_total;
	t->priv[P_LAST_LEN] = plen + n;
	t->priv[P_BODY_LEN] += n;
	t->priv[P_CRC_STATE] = ((uint64_t)TXN_OPEN << 32) | crc32c((uint32_t)t->priv[P_CRC_STATE], *p, n);
	*p += n;
	*len = 0;
	return true;
}

int spool_txn_append(struct spool_lane *l, struct spool_txn *t, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (txn_state(t) != TXN_OPEN)
		return t->priv[P_ERR] ? -(int)t->priv[P_ERR] : -EINVAL;
	if ((uint32_t)(t->priv[P_COUNT_GEN] >> 32) != l->gen)
		return -EIO;
	if (!len)
		return 0;
	if (len > spool_lane_append_room(l))
		return -EAGAIN;
	/* A roll we cannot make must fail before any byte is staged (no partial append on -EAGAIN). */
	if ((!seg_active(l) || len + rec_overhead(len) > seg_left(l)) && l->seg_count >= LANE_SEGS_MAX - 1)
		return -EAGAIN;
	if (chunk_extend(l, t, &p, &len))
		return 0;
	while (len) {
		struct lane_seg *s = seg_active(l);
		uint64_t n, total, off;
		uint8_t *dst;

		if (!s || seg_left(l) < SPOOL_REC_HDR_SIZE + 64) {
			int rc = lane_roll(l);
			if (rc) {
				/* Part of the body may be staged: the txn is lost (451/452). */
				open_dec(l, id_seq(t->id));
				t->priv[P_ERR] = (uint64_t)(rc == -EAGAIN ? EIO : -rc);
				t->priv[P_CRC_STATE] = (uint64_t)TXN_CLOSED << 32;
				return -(int)t->priv[P_ERR];
			}
			s = seg_active(l);
		}
		n = DS_MIN((uint64_t)len, (uint64_t)SPOOL_CHUNK_MAX);
		n = DS_MIN(n, (seg_left(l) - SPOOL_REC_HDR_SIZE) & ~(uint64_t)(SPOOL_REC_ALIGN - 1));
		total = spool_rec_total(n);
		DS_ASSERT(total <= ring_free(l) && total <= seg_left(l));
		off = seg_file_off(s, l->head);
		dst = l->ring + (l->head % l->ring_size);
		memcpy(dst + SPOOL_REC_HDR_SIZE, p, n);
		spool_rec_encode(dst, SPOOL_REC_CHUNK, (uint32_t)n, t->id, s->epoch, durable_off_for(l, s));
		seg_sum_note(s, dst, l->head);
		l->head += total;
		if (!t->priv[P_FIRST_SEQ]) {
			t->priv[P_FIRST_SEQ] = s->seq;
			t->priv[P_FIRST_OFF] = off;
		}
		t->priv[P_COUNT_GEN]++;
		t->priv[P_LAST_POS] = l->head - total + 1;
		t->priv[P_LAST_LEN] = n;
		t->priv[P_BODY_LEN] += n;
		t->priv[P_CRC_STATE] =
			((uint64_t)TXN_OPEN << 32) | crc32c((uint32_t)t->priv[P_CRC_STATE], p, n);
		p += n;
		len -= n;
	}
	return 0;
}

static int txn_commit_kind(struct spool_lane *l, struct spool_txn *t, const struct ds_envelope *env,
			   uint64_t cookie, uint8_t kind);

int spool_txn_commit(struct spool_lane *l, struct spool_txn *t, const struct ds_envelope *env,
		     uint64_t cookie)
{
	return txn_commit_kind(l, t, env, cookie, Q_COMMIT);
}

static int txn_commit_kind(struct spool_lane *l, struct spool_txn *t, const struct ds_envelope *env,
			   uint64_t cookie, uint8_t kind)
{
	struct spool_commit c = {0};
	struct lane_seg *s;
	size_t size;
	uint64_t total;
	uint8_t *dst;
	int err = 0;

	if (txn_state(t) != TXN_OPEN) {
		err = t->priv[P_ERR] ? -(int)t->priv[P_ERR] : -EINVAL;
		goto fail;
	}
	if ((uint32_t)(t->priv[P_COUNT_GEN] >> 32) != l->gen) {
		err = -EIO;
		goto fail;
	}
	size = spool_commit_size(env);
	if (!size) {
		err = -EMSGSIZE;
		goto fail;
	}
	total = spool_rec_total(size);
	if (total > l->ring_size / 2) {
		/* Could wait for room forever: an envelope too big for this staging size. */
		err = -EMSGSIZE;
		goto fail;
	}
	/* Failed commits' aborts go first: their clients wait for the 451. */
	if (total > ring_free(l) || l->commit_count >= LANE_COMMITS_MAX || l->abort_count)
		return -EAGAIN;
	if (!seg_active(l) || seg_left(l) < total) {
		int rc;
		if (l->seg_count >= LANE_SEGS_MAX - 1)
			return -EAGAIN;
		rc = lane_roll(l);
		if (rc) {
			err = rc == -EAGAIN ? -EIO : rc;
			goto fail;
		}
	}
	s = seg_active(l);
	c.body_len = t->priv[P_BODY_LEN];
	c.body_crc = (uint32_t)t->priv[P_CRC_STATE];
	c.chunk_count = (uint32_t)t->priv[P_COUNT_GEN];
	c.first_seq = t->priv[P_FIRST_SEQ];
	c.first_off = t->priv[P_FIRST_OFF];
	dst = l->ring + (l->head % l->ring_size);
	spool_commit_encode(dst + SPOOL_REC_HDR_SIZE, &c, env);
	spool_rec_encode(dst, SPOOL_REC_COMMIT, (uint32_t)size, t->id, s->epoch, durable_off_for(l, s));
	seg_sum_note(s, dst, l->head);
	queue_push(l, &(struct lane_commit){.cookie = cookie,
					    .lend = l->head + total,
					    .id = t->id,
					    .seq = (uint32_t)s->seq,
					    .off = seg_file_off(s, l->head),
					    .rec_seq = (uint32_t)s->seq,
					    .chunk_seq = c.chunk_count ? (uint32_t)c.first_seq : 0,
					    .kind = kind});
	l->head += total;
	l->st.commits++;
	/* The chunk locator is no longer needed: the slots keep the commit's location. */
	t->priv[P_FIRST_SEQ] = s->seq;
	t->priv[P_FIRST_OFF] = seg_file_off(s, l->head - total);
	t->priv[P_CRC_STATE] = (uint64_t)TXN_COMMITTED << 32;
	return 0;
fail:
	/* Closed like an abort: the caller answers with err (the cookie was not taken). */
	if (txn_state(t) == TXN_OPEN)
		open_dec(l, id_seq(t->id));
	t->priv[P_CRC_STATE] = (uint64_t)TXN_CLOSED << 32;
	return err;
}

void spool_txn_abort(struct spool_lane *l, struct spool_txn *t)
{
	/* Chunks never committed are garbage: recovery and readers skip them. */
	if (txn_state(t) == TXN_OPEN)
		open_dec(l, id_seq(t->id));
	t->priv[P_CRC_STATE] = (uint64_t)TXN_CLOSED << 32;
}

int spool_txn_location(const struct spool_txn *t, uint64_t *seq, uint64_t *off)
{
	if (txn_state(t) != TXN_COMMITTED)
		return -EINVAL;
	*seq = t->priv[P_FIRST_SEQ];
	*off = t->priv[P_FIRST_OFF];
	return 0;
}

/*
 * Room for a record of size payload bytes in the active segment. On 0, *dst
 * is where its header goes (the caller encodes the payload at dst +
 * SPOOL_REC_HDR_SIZE, then record_push()) and *sp the segment.
 */
static int record_stage(struct spool_lane *l, size_t size, uint8_t **dst, struct lane_seg **sp)
{
	uint64_t total = spool_rec_total(size);
	int rc;

	/* Could wait for room forever: a record too big for this staging size or segment size. */
	if (total > l->ring_size / 2 || total > seg_cap_l(l))
		return -EMSGSIZE;
	if (total > ring_free(l) || l->commit_count >= LANE_COMMITS_MAX || l->abort_count)
		return -EAGAIN;
	rc = room_for_record(l, total);
	if (rc)
		return rc == -EAGAIN ? -EAGAIN : rc == -ENOSPC ? -ENOSPC : -EIO;
	*sp = seg_active(l);
	*dst = l->ring + (l->head % l->ring_size);
	return 0;
}

/* The record staged at dst (payload already there): header, queued to be flushed and settled. */
static void record_push(struct spool_lane *l, struct lane_seg *s, uint8_t *dst, uint32_t type, uint32_t size,
			uint64_t id, uint64_t off, uint8_t kind, uint64_t cookie)
{
	spool_rec_encode(dst, type, size, id, s->epoch, durable_off_for(l, s));
	seg_sum_note(s, dst, l->head);
	l->head += spool_rec_total(size);
	queue_push(l, &(struct lane_commit){.cookie = cookie,
					    .lend = l->head,
					    .id = id,
					    .off = off,
					    .rec_seq = (uint32_t)s->seq,
					    .kind = kind});
}

int spool_lane_outcome(struct spool_lane *l, const struct spool_outcome *o, uint64_t cookie)
{
	struct lane_seg *s;
	uint8_t *dst;
	size_t size;
	int rc;

	if (!o->rcpt_count || o->rcpt_count > SPOOL_OUTCOME_RCPTS_MAX)
		return -EMSGSIZE;
	size = spool_outcome_size(o);
	if (!size || !o->id)
		return -EINVAL;
	rc = record_stage(l, size, &dst, &s);
	if (rc)
		return rc;
	spool_outcome_encode(dst + SPOOL_REC_HDR_SIZE, o);
	record_push(l, s, dst, SPOOL_REC_OUTCOME, (uint32_t)size, o->id, o->dsn_id, Q_OUTCOME, cookie);
	l->st.outcomes++;
	return 0;
}

/* An operator record (spool.h): staged, flushed and settled exactly like an outcome record. */
int spool_lane_operator(struct spool_lane *l, const struct spool_operator *o, uint64_t cookie)
{
	struct lane_seg *s;
	uint8_t *dst;
	size_t size = spool_oprec_size(o);
	int rc;

	if (!size)
		return -EINVAL;
	rc = record_stage(l, size, &dst, &s);
	if (rc)
		return rc;
	spool_oprec_encode(dst + SPOOL_REC_HDR_SIZE, o);
	record_push(l, s, dst, SPOOL_REC_OPERATOR, (uint32_t)size, o->id, 0, Q_OPERATOR, cookie);
	return 0;
}

/* A gap record (issue 16): written like an operator record, about its message (H(M)). */
int spool_lane_gap(struct spool_lane *l, const struct spool_gap_rec *g, uint64_t cookie)
{
	struct lane_seg *s;
	uint8_t *dst;
	size_t size;
	int rc;

	if (!g->id || (g->kind != SPOOL_GAP_REC_AT_RISK && g->kind != SPOOL_GAP_REC_CLEARED))
		return -EINVAL;
	size = spool_gap_size(g);
	rc = record_stage(l, size, &dst, &s);
	if (rc)
		return rc;
	spool_gap_encode(dst + SPOOL_REC_HDR_SIZE, g);
	/* off: the keep's expiry for reclamation (AT_RISK), 0 ends it (CLEARED). */
	record_push(l, s, dst, SPOOL_REC_GAP, (uint32_t)size, g->id,
		    g->kind == SPOOL_GAP_REC_AT_RISK ? (uint64_t)g->expires_us : 0, Q_GAP, cookie);
	return 0;
}

/* ---- compaction (spool_compact.h): a copy of a message under its own id ---- */

int spool_txn_begin_moved(struct spool_lane *l, struct spool_txn *t, uint64_t id)
{
	struct lane_seg *s = seg_active(l);
	int rc;

	memset(t, 0, sizeof(*t));
	if (spool_id_lane(id) != l->lane_no || !id_seq(id))
		return -EINVAL;
	if (!s) {
		rc = lane_roll(l);
		if (rc)
			return rc == -EAGAIN ? -ENOSPC : rc;
		s = seg_active(l);
	}
	if (id_seq(id) >= s->seq)
		return -EINVAL; /* a copy goes to a later segment than its id names */
	t->id = id;
	t->priv[P_COUNT_GEN] = (uint64_t)l->gen << 32;
	t->priv[P_CRC_STATE] = (uint64_t)TXN_OPEN << 32;
	open_inc_older(l, id_seq(id));
	return 0;
}

int spool_txn_commit_moved(struct spool_lane *l, struct spool_txn *t, const struct ds_envelope *env,
			   uint64_t cookie)
{
	return txn_commit_kind(l, t, env, cookie, Q_MOVED);
}

/* Any record of format 3 about message id (payload copied), settled like an outcome record. */
int spool_lane_record(struct spool_lane *l, uint32_t type, uint64_t id, const void *payload, uint32_t len,
		      uint64_t cookie)
{
	struct lane_seg *s;
	uint8_t *dst;
	int rc;

	if ((type != SPOOL_REC_OUTCOME && type < SPOOL_REC_MOVED) || type > SPOOL_REC_TYPE_LAST || !id ||
	    !len)
		return -EINVAL;
	if (len > (type == SPOOL_REC_GAP       ? SPOOL_GAP_MAX
		   : type == SPOOL_REC_OUTCOME ? SPOOL_OUTCOME_MAX
					       : SPOOL_MOVED_MAX))
		return -EMSGSIZE;
	rc = record_stage(l, len, &dst, &s);
	if (rc)
		return rc;
	memcpy(dst + SPOOL_REC_HDR_SIZE, payload, len);
	/* About its message like an outcome record: H(M) for reclamation. */
	record_push(l, s, dst, type, len, id, 0, Q_OUTCOME, cookie);
	return 0;
}
