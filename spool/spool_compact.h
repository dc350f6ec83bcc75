/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_COMPACT_H
#define DS_SPOOL_COMPACT_H

/*
 * Compaction (FORMAT.md, "Moved records"; issue 15 point 2): a segment
 * kept on disk by a few long-deferred messages is emptied by copying them
 * forward, so reclamation can take it.
 *
 * One compactor per lane, driven by the lane's owner (the worker: the lane
 * is single-writer), step by step from its event loop. A round:
 *
 *  1. pick: the reclamation table names a sealed segment of this lane,
 *     older than age_us, whose commits include messages not final
 *     (spool_reclaim_compact_pick, at most 64 a round); the owner tells
 *     their delivery state and location (ops->states; busy ones wait for
 *     a later round); their bodies must be at most live_max_pct of the
 *     segment, or they must keep >= 2 record segments each on average
 *     (the chain of retries), else the segment waits another age_us;
 *  2. copy: per message, the table is told (spool_reclaim_msg_moving), then
 *     the lane gets a copy of the message under the SAME id
 *     (spool_txn_begin_moved: chunks read from the mapped old segment, at
 *     most step_bytes per step, and a commit record equal to the old one but
 *     for its chunk locator), then a summary outcome record after it (flag
 *     SPOOL_OUTCOME_F_SUMMARY: every recipient's folded state at the
 *     message's attempt count; DEFERRED with its due time): after the copy,
 *     so every record the table keeps for the copy lies at or after it;
 *     and for a message kept by a gap record (issue 16: an at-risk message,
 *     delivered or not) a fresh AT_RISK record naming the copy;
 *  3. when all are durable (settled 0), the owner relocates the message
 *     (ops->moved: deliveries read the copy from now on), the table commits
 *     the move (the old copy and every record about the message written
 *     before the move stop protecting it), and a MOVED record names the old
 *     copy as dead;
 *  4. the old segment now holds only final messages and goes by the rules
 *     of reclamation.
 *
 * A crash anywhere leaves one or two intact copies of each message; the
 * fold (spool_fold.c) hands out exactly one (the rule in FORMAT.md), and
 * every copy carries the same bytes and, through records by id, the same
 * delivery state.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "spool.h"

struct spool_reclaim;
struct spool_compact;

/* MOVED record payload (type 5): which copy of its message is dead, and where the live one is. */
#define SPOOL_MOVED_SIZE 40u
struct spool_moved {
	uint32_t lane;		     /* lane of both copies (the id's) */
	uint32_t flags;		     /* 0 */
	uint64_t dead_seq, dead_off; /* the old copy's commit record */
	uint64_t seq, off;	     /* the copy that is the message */
};

static inline void spool_moved_encode(uint8_t out[SPOOL_MOVED_SIZE], const struct spool_moved *m)
{
	memcpy(out, &m->lane, 4);
	memcpy(out + 4, &m->flags, 4);
	memcpy(out + 8, &m->dead_seq, 8);
	memcpy(out + 16, &m->dead_off, 8);
	memcpy(out + 24, &m->seq, 8);
	memcpy(out + 32, &m->off, 8);
}

/* 0 or -EBADMSG (length). */
static inline int spool_moved_decode(const uint8_t *p, uint32_t len, struct spool_moved *m)
{
	if (len != SPOOL_MOVED_SIZE)
		return -EBADMSG;
	memcpy(&m->lane, p, 4);
	memcpy(&m->flags, p + 4, 4);
	memcpy(&m->dead_seq, p + 8, 8);
	memcpy(&m->dead_off, p + 16, 8);
	memcpy(&m->seq, p + 24, 8);
	memcpy(&m->off, p + 32, 8);
	return 0;
}

/* SPOOL_OUTCOME_F_SUMMARY (the summary's outcome record flag): spool_reclaim.h. */

/* ---- lane entry points (spool_lane.c) ---- */

/*
 * Begin a copy of message id (of this lane, naming an older segment than
 * the active one) in the lane: appends and commit as for any txn, the
 * commit through spool_txn_commit_moved (a failed one owes no abort
 * record). 0, -EINVAL, -ENOSPC, -EIO.
 */
int spool_txn_begin_moved(struct spool_lane *l, struct spool_txn *t, uint64_t id);
int spool_txn_commit_moved(struct spool_lane *l, struct spool_txn *t, const struct ds_envelope *env,
			   uint64_t cookie);
/*
 * A record about message id, payload copied as is (an outcome record encoded
 * by the caller, or one of format 3, type 5..7); queued, flushed and settled
 * like an outcome record (same returns).
 */
int spool_lane_record(struct spool_lane *l, uint32_t type, uint64_t id, const void *payload, uint32_t len,
		      uint64_t cookie);

/* ---- the compactor ---- */

/* Cookies of the compactor's records: this bit set (the owner routes settled() by it). */
#define SPOOL_COMPACT_COOKIE_BIT (1ull << 61) /* 63: delivery, 62: gap records (io/) */
#define SPOOL_COMPACT_BATCH_MAX	 64u /* messages moved per round */

struct spool_compact_config {
	int64_t age_us;	       /* segments at least this old (0: compaction off) */
	unsigned live_max_pct; /* live body bytes at most this % of the segment (1..100) */
	uint64_t segment_size; /* the lane's segment size */
	uint32_t step_bytes;   /* body bytes copied per step (default 256 KiB) */
	int64_t pick_every_us; /* the table is asked at most this often (default 100 ms) */
};

/* What the owner knows of a live message (its delivery queue entry). */
struct spool_compact_msgstate {
	uint64_t seq, off; /* its commit record now */
	uint64_t size;	   /* body bytes */
	uint32_t attempts;
	int64_t due_us;		   /* deferred: next attempt (0 = due now) */
	uint32_t rcpt_count;	   /* of the envelope */
	const uint8_t *rcpt_state; /* rcpt_count x enum spool_rcpt_state; valid during the call only */
};

struct spool_compact_ops {
	/*
	 * The state of live messages ids[0, n) (ascending): per message rc[i] 0
	 * (st[i] filled), -EBUSY (a delivery attempt in flight, held, an
	 * operator record in flight: not this round), -ENOENT (not known).
	 */
	void (*states)(void *ctx, const uint64_t *ids, unsigned n, struct spool_compact_msgstate *st,
		       int *rc);
	/* Message id is read from (seq, off) of its lane from now on (called before the table lets go). */
	void (*moved)(void *ctx, uint64_t id, uint64_t seq, uint64_t off);
	/*
	 * Gap dedup (issue 16; NULL: none): message id is kept by a durable
	 * AT_RISK record; g: that record as the at-risk set knows it (its
	 * fingerprint and expiry), which the compactor restates for the copy
	 * after its summary (the location changed). 0 or -ENOENT (not in the
	 * set: the message is not moved, its segment waits for the window).
	 * moved() of such a message also relocates the set's entry.
	 */
	int (*gap)(void *ctx, uint64_t id, struct spool_gap_rec *g);
	/* A round ended: segment seq emptied of its live messages (moved of them, bytes copied). */
	void (*done)(void *ctx, uint64_t seq, uint32_t moved, uint64_t bytes);
};

struct spool_compact_stats {
	uint64_t rounds, segments, messages, bytes; /* segments emptied, messages and body bytes copied */
	uint64_t skipped;			    /* segments looked at and left (too live, busy) */
	uint64_t failed;			    /* copies given up (lane error, body damaged) */
	uint64_t kept; /* of the messages, kept ones moved with a fresh AT_RISK record (issue 16) */
};

int spool_compact_create(struct spool_compact **out, struct spool_lane *l, unsigned lane_no, const char *dir,
			 struct spool_reclaim *r, const struct spool_compact_config *cfg,
			 const struct spool_compact_ops *ops, void *ctx);
/* Gives up an unfinished round (copies not yet durable are abandoned). */
void spool_compact_destroy(struct spool_compact *c);
/*
 * One step (each event-loop turn; cheap while idle): pick, stage what fits
 * in the lane's staging memory, finish a round whose copies are settled.
 * Returns true when it staged records (the owner kicks the lane).
 */
bool spool_compact_step(struct spool_compact *c, int64_t now_us);
/* settled() of a cookie with SPOOL_COMPACT_COOKIE_BIT. */
void spool_compact_settled(struct spool_compact *c, uint64_t cookie, int res);
/* Stop starting rounds; copies not yet committed are abandoned (shutdown). */
void spool_compact_stop(struct spool_compact *c);
/* Records of the compactor not yet settled. */
bool spool_compact_busy(const struct spool_compact *c);
void spool_compact_stats(const struct spool_compact *c, struct spool_compact_stats *st);

#endif
