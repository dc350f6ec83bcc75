/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_RECLAIM_H
#define DS_SPOOL_RECLAIM_H

/*
 * Reclaiming whole segments (FORMAT.md, "Reclamation"). One table per
 * spool, shared by every lane and the delivery stage, one mutex: it is fed
 * per durable commit, per durable outcome/abort record, per final message
 * and per segment sealed (all cold next to the data path), and read by its
 * own thread, which unlinks the segments it finds reclaimable.
 *
 * For every message M on disk: its commit segment C(M) and H(M), the
 * OTHER segments holding records about it (chunks, outcome records, and
 * for a FAILED outcome the commit segment of its DSN, which recovery needs
 * to trust the FAILED). Per segment S: nonfinal(S) counts non-final
 * messages M with C(M)=S or S in H(M); waiting(S) counts final messages
 * still on disk with S in H(M). S is reclaimable iff it is known, sealed,
 * not pinned, not its lane's highest sequence, below every open txn's
 * first segment of its lane, and nonfinal(S) == waiting(S) == 0.
 * Reclaiming S: unlink, fsync of the lane directory, and only then every
 * M with C(M)=S is gone (waiting(T)-- for T in H(M)): a commit always goes
 * before the records that prove its state.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "spool.h"

struct spool_reclaim;

/*
 * Outcome record flags (offset 4 of the payload; older readers ignore them):
 * a summary restates the whole delivery state of its message as of its
 * at_us, written by compaction after a copy (spool_compact.h): an outcome
 * record about the message before it in the same lane's stream is
 * redundant (spool_reclaim_load does not keep its segment for it).
 */
#define SPOOL_OUTCOME_F_SUMMARY 1u

/* Storage the reclaimer uses (tests model crashes with it). 0 or -errno. */
struct spool_reclaim_ops {
	int (*unlink)(void *ctx, const char *path);
	int (*fsync_dir)(void *ctx, const char *path);
	/*
	 * Recycling (format 5): rename SEQ.seg to SEQ.free (its .sum removed
	 * first, as unlink does). NULL: segments are only ever unlinked.
	 */
	int (*rename)(void *ctx, const char *from, const char *to);
};

struct spool_reclaim_stats {
	uint64_t segments, bytes;	     /* segments on disk the table knows, their bytes */
	uint64_t reclaimed, reclaimed_bytes; /* unlinked so far */
	uint64_t messages, final_messages;   /* on disk (commit segment present), of which final */
	uint64_t pinned;		     /* segments never reclaimed by this process */
	uint64_t errors;		     /* failed unlinks / directory fsyncs (segment pinned) */
	/* Compaction (spool_compact.h): segments emptied of live messages, messages and bytes copied. */
	uint64_t compacted, compacted_messages, compacted_bytes;
	uint64_t kept_at_risk; /* final messages kept for a gap record's window (issue 16) */
	/*
	 * Recycling (format 5): reclaimed segments renamed to SEQ.free instead
	 * of unlinked (recycled, counted in reclaimed too), and the free files
	 * on disk now (every lane; their bytes are in bytes above as well).
	 */
	uint64_t recycled;
	uint64_t free_segments, free_bytes;
};

/*
 * What the table reports as it happens: each segment reclaimed (from the
 * thread that unlinked it: the reclamation thread, or the caller of
 * spool_reclaim_run at start-up), and after each pass that changed
 * something (st: the stats then). Never called with the table locked.
 */
enum spool_reclaim_ev_kind {
	SPOOL_RECLAIM_EV_RECLAIMED = 1, /* lane, seq, bytes, messages (whose commit it held) */
	SPOOL_RECLAIM_EV_PASS = 2,	/* st only */
};
struct spool_reclaim_event {
	enum spool_reclaim_ev_kind kind;
	unsigned lane;
	uint64_t seq, bytes, messages;
	const struct spool_reclaim_stats *st;
};

/* A table for spool directory dir; ops NULL = unlink(2) and fsync of the directory. */
int spool_reclaim_create(struct spool_reclaim **out, const char *dir, const struct spool_reclaim_ops *ops,
			 void *ops_ctx);
/*
 * Recycling (FORMAT.md, "Recycled segments"): while a lane has fewer than
 * max free files (SEQ.free), a reclaimed segment is renamed to one instead
 * of unlinked (0 = off, the default: unlink). Set before spool_reclaim_start.
 */
void spool_reclaim_set_recycle_max(struct spool_reclaim *r, uint32_t max);
uint32_t spool_reclaim_recycle_max(const struct spool_reclaim *r);
/*
 * The free files of lane changed by delta (count) and delta * bytes: taken
 * by the lane's spare (-1), removed (-1), counted at lane open (+n). Any
 * thread; the table's own renames count themselves.
 */
void spool_reclaim_free_note(struct spool_reclaim *r, unsigned lane, int delta, uint64_t bytes);
/*
 * Lane open: the lane's pool is n files of bytes each (what its sweep kept),
 * and from now on its reclaimed segments may be recycled (a lane not opened
 * in this process has no spare to take them: they are unlinked).
 */
void spool_reclaim_free_set(struct spool_reclaim *r, unsigned lane, uint32_t n, uint64_t bytes);
/*
 * The disk bound needs room (io/watermark.c): remove every free file of
 * every lane now (they go before anything else). Any thread. Files removed.
 */
unsigned spool_reclaim_free_drop(struct spool_reclaim *r);
/* Free files of lane now (the spare looks for one only when this is > 0). */
uint32_t spool_reclaim_free_count(struct spool_reclaim *r, unsigned lane);
/* Events (see struct spool_reclaim_event); set before spool_reclaim_start. */
void spool_reclaim_set_events(struct spool_reclaim *r,
			      void (*fn)(void *ctx, const struct spool_reclaim_event *ev), void *ctx);
/* Stops the thread if started. */
void spool_reclaim_destroy(struct spool_reclaim *r);

/*
 * Fill the table from a scan of the whole spool (start-up, before any lane
 * opens, beside recovery): every segment, message, outcome and abort
 * record; segments with a torn tail, a quarantined region or a bad header
 * are pinned. 0 or -errno.
 */
int spool_reclaim_load(struct spool_reclaim *r);

/* Reclaim what is reclaimable now (the thread calls this). Segments reclaimed, or -errno. */
int spool_reclaim_run(struct spool_reclaim *r);
/* A thread that runs spool_reclaim_run when something changed (at least once a second). */
int spool_reclaim_start(struct spool_reclaim *r);
void spool_reclaim_stop(struct spool_reclaim *r);

/* ---- fed by the lanes (spool_lane.c) ---- */
/* Segment (lane, seq) exists: the lane's new active one (sealed false) or one found on disk. */
void spool_reclaim_seg_add(struct spool_reclaim *r, unsigned lane, uint64_t seq, uint64_t bytes, bool sealed);
/* No byte will be written to it again and every record in it is durable and registered. */
void spool_reclaim_seg_sealed(struct spool_reclaim *r, unsigned lane, uint64_t seq);
/* Never reclaim it in this process (failed segment, abort record, damaged). */
void spool_reclaim_seg_pin(struct spool_reclaim *r, unsigned lane, uint64_t seq);
/* Chunks of the lane's open txns may lie at seq and above (UINT64_MAX: no open txn). */
void spool_reclaim_lane_low(struct spool_reclaim *r, unsigned lane, uint64_t seq);
/*
 * The commit record of message id is durable in segment commit_seq of lane;
 * its chunks lie in chunk_seq .. commit_seq of that lane (chunk_seq 0: no chunks).
 */
void spool_reclaim_msg_add(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t commit_seq,
			   uint64_t chunk_seq);
/*
 * A record about message id is durable in segment seq of lane (outcome
 * record; dsn_id its DSN or 0). Unknown ids are ignored (their commit is
 * gone: so is what the record says). A DSN that is not in the table (or is
 * being reclaimed) makes the message never final here: recovery would not
 * trust that FAILED either.
 */
void spool_reclaim_msg_record(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq,
			      uint64_t dsn_id);
/*
 * The same for a record compaction does not replace by its summary
 * (operator and gap records): its segment stays protected across a move of
 * the message, until the message is final.
 */
void spool_reclaim_msg_record_keep(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq);
/*
 * A gap record (type 7) about message id is durable in segment seq of lane:
 * kept like an operator record, and the keep of spool_reclaim_msg_keep
 * (expires_us: AT_RISK; 0: CLEARED), which a durable AT_RISK record makes
 * one compaction carries forward (a fresh AT_RISK record for the copy).
 */
void spool_reclaim_msg_record_gap(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq,
				  int64_t expires_us);
/*
 * Message id reached its final state, known from durable records only
 * (every recipient DELIVERED, or FAILED with its DSN durable).
 */
void spool_reclaim_msg_final(struct spool_reclaim *r, uint64_t id);
/*
 * The same, for a message delivered to the end (every recipient DELIVERED
 * or FAILED with its DSN durable), with its state: while a gap keep holds
 * its final state back, the table keeps this snapshot, which compaction
 * restates in a moved copy's summary (the delivery queue forgot the
 * message). Not for an operator DELETE (spool_reclaim_msg_final): a
 * summary cannot restate it, so such a kept message is never moved.
 */
struct spool_reclaim_final_state {
	uint64_t seq, off, size; /* its commit record, body bytes */
	uint32_t attempts, rcpt_count;
	const uint8_t *rcpt_state; /* rcpt_count x enum spool_rcpt_state */
};
void spool_reclaim_msg_final_state(struct spool_reclaim *r, uint64_t id,
				   const struct spool_reclaim_final_state *fs);
/*
 * Compaction: the snapshot of kept delivered message id (*states: a copy,
 * the caller frees it; fs->rcpt_state points at it). 0, -ENOENT (none: not
 * kept, not delivered, or a DELETE), -ENOMEM.
 */
int spool_reclaim_msg_snapshot(struct spool_reclaim *r, uint64_t id, struct spool_reclaim_final_state *fs,
			       uint8_t **states);
/* Compaction moved message id's copy to (seq, off) of its lane: its snapshot follows. */
void spool_reclaim_msg_relocated(struct spool_reclaim *r, uint64_t id, uint64_t seq, uint64_t off);

/*
 * Message id must stay on disk, final or not, until expires_us (wall clock):
 * a gap record (type 7, issue 16) keeps it for the dedup window. A final
 * state reached meanwhile counts once the window is over. Several calls:
 * the latest expiry stands; 0 clears (a CLEARED record).
 */
void spool_reclaim_msg_keep(struct spool_reclaim *r, uint64_t id, int64_t expires_us);
/*
 * Bound every gap keep to keep_max_us from when it is set (at load: from
 * the load), 0 = up to the record's expiry. Call before spool_reclaim_load.
 */
void spool_reclaim_set_keep_max(struct spool_reclaim *r, int64_t keep_max_us);
/* Compaction done with one segment: count it (stats, metrics). */
void spool_reclaim_count_compacted(struct spool_reclaim *r, uint64_t segments, uint64_t messages,
				   uint64_t bytes);

/*
 * Compaction (spool_compact.h; FORMAT.md "Moved records").
 *
 * compact_pick: the lowest sealed, unpinned segment of lane, not its
 * highest, created at least age_us before now_us and not deferred, whose
 * commits include messages not final (none moving; a message kept by a gap
 * window only with a durable AT_RISK record and, its delivery over, a
 * snapshot of its final state): the first max of their ids in ids, the segment in *seq, how many
 * there are and how many record segments they keep in *pk; returns the
 * number of ids, or -ENOENT. compact_defer: not picked again before until_us.
 *
 * msg_moving: a copy of message id (same id) is about to be written to its
 * lane's current segment, followed by a summary of its delivery state.
 * While it moves, the message is not final here (a final state waits for
 * the move to end), its copy's commit, once durable (the lane's msg_add),
 * is protected like its commit, and the records registered since are
 * marked. msg_moving returns 1 when the message is kept by a durable
 * AT_RISK record: the mover must write a fresh AT_RISK record (same expiry,
 * the copy's location) after the summary. msg_moved(commit): the copy is
 * the message from now on: its old commit, chunks and every record
 * registered before the move stop protecting it (the summary replaces
 * them; operator records stay, and gap records unless a fresh one was
 * written; a kept delivered message's operator records go as well: its
 * summary restates its final state); -EAGAIN if the copy (or the fresh
 * AT_RISK record) is not durable yet (nothing changes, the move ends).
 * msg_moved(!commit): the move is given up; a durable copy is a duplicate
 * nothing protects.
 */
struct spool_reclaim_pick {
	unsigned live; /* messages not final whose commit is in the segment (ids holds the first max) */
	unsigned refs; /* segments their records keep (counted per message): what moving them frees */
};
int spool_reclaim_compact_pick(struct spool_reclaim *r, unsigned lane, int64_t now_us, int64_t age_us,
			       uint64_t *seq, uint64_t *ids, unsigned max, struct spool_reclaim_pick *pk);
void spool_reclaim_compact_defer(struct spool_reclaim *r, unsigned lane, uint64_t seq, int64_t until_us);
int spool_reclaim_msg_moving(struct spool_reclaim *r,
			     uint64_t id); /* 0, 1, -ENOENT, -EBUSY (final, moving) */
int spool_reclaim_msg_moved(struct spool_reclaim *r, uint64_t id, bool commit);

void spool_reclaim_stats(struct spool_reclaim *r, struct spool_reclaim_stats *st);
/* One line per segment the table knows (operators, tests). */
void spool_reclaim_dump(struct spool_reclaim *r, FILE *f);

#endif
