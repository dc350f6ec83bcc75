/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_H
#define DS_SPOOL_H

/*
 * spool/: per-worker lanes of preallocated, pre-written segment files,
 * checksummed records, group commit, recovery and a read-only reader.
 *
 * The lane never touches the disk for data itself: it reaches it through
 * struct spool_io_ops (submit write, submit flush, completion), which io/
 * implements with io_uring and the tests with a simulator that can crash
 * at any write boundary. Segment files are opened/created/pre-written by
 * the spool with ordinary syscalls off the hot path.
 *
 * Single-threaded per lane: every call on one lane comes from its worker.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds_envelope.h"
#include "spool_id.h"

/* Limits a caller needs (all of them: FORMAT.md, "Limits"). */
#define SPOOL_SEGMENT_SIZE_MIN (512u * 1024)
#define SPOOL_SEGMENT_SIZE_MAX (1ull << 32)
#define SPOOL_BUFFER_SIZE_MIN  (256u * 1024)
#define SPOOL_LANES_MAX	       256u

struct spool_reclaim;

struct spool_config {
	const char *dir;		/* spool directory; created if missing */
	uint64_t segment_size;		/* bytes per segment file, default 64 MiB */
	uint32_t buffer_size;		/* staging memory per lane, default 8 MiB */
	uint32_t flushes_in_flight_max; /* default 2 */
	bool prewrite; /* zero-fill segments before use (default true; false = fallocate only, for
			  measurements) */
	/*
	 * Prepared segments a lane keeps ready (default 1; 1..64): zero-filled
	 * (or recycled) in the background ahead of use, so a burst of that many
	 * segments writes its data once and never waits for a preparation.
	 */
	uint32_t segment_spares;
	/* 0 = unlimited; else a lane refuses to create segments beyond this many bytes (tests). */
	uint64_t lane_bytes_max;
	/* How data reaches the disk (see FORMAT.md, "Write modes"). */
	enum spool_io_mode {
		SPOOL_IO_BUFFERED = 0,		/* write to the page cache, fdatasync per group (the
						   library's default; the daemon's is DIRECT) */
		SPOOL_IO_DIRECT = 1,		/* O_DIRECT segments, block-aligned RWF_DSYNC writes, never a
						   block written twice; falls back to buffered per lane when
						   O_DIRECT is refused (EINVAL, e.g. tmpfs) or ops has no write_dsync */
		SPOOL_IO_DIRECT_NO_ODIRECT = 2, /* the direct write discipline on ordinary file
						   descriptors (simulators, tests on tmpfs) */
	} io_mode;
	/*
	 * Segment reclamation (spool_reclaim.h; FORMAT.md, "Reclamation"): NULL = off. The
	 * lanes feed it every durable commit, outcome and abort record and every sealed segment.
	 */
	struct spool_reclaim *reclaim;
};
/*
 * Recycling (format 5) is set on the reclamation table
 * (spool_reclaim_set_recycle_max): the lanes reuse the free files it leaves.
 */

void spool_config_defaults(struct spool_config *cfg);

/* The storage interface. */
struct spool_io_ops {
	/*
	 * Submit a write of buf[0, len) at offset off of fd. buf stays valid
	 * until completion. Completion: spool_lane_complete(lane, tag, res)
	 * with bytes written or -errno. Tags always fit in 56 bits.
	 * Return 0 or -errno (nothing submitted).
	 */
	int (*write)(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag);
	/*
	 * Submit fdatasync(fd). Completion: spool_lane_complete(lane, tag, 0 or
	 * -errno). The lane never has two flushes in flight on one fd (Linux
	 * reports a writeback error once per open file).
	 */
	int (*flush)(void *ctx, int fd, uint64_t tag);
	/*
	 * A write (as above, tag wtag) and fdatasync(flush_fd) (tag ftag; another
	 * descriptor of the same file), submitted together: the flush runs only
	 * after the write completed in full (io_uring IOSQE_IO_LINK); a short or
	 * failed write cancels it (-ECANCELED). Both or neither: return 0, or
	 * -errno with nothing submitted.
	 */
	int (*write_flush)(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t wtag,
			   int flush_fd, uint64_t ftag);
	/*
	 * Optional (SPOOL_IO_DIRECT): submit a write of buf[0, len) at off that is
	 * durable when it completes (pwritev2 RWF_DSYNC; io_uring rw_flags). buf,
	 * len and off are multiples of 4096. Completion: spool_lane_complete(lane,
	 * tag, bytes written or -errno); anything but len fails the segment.
	 * Return 0 or -errno (nothing submitted).
	 */
	int (*write_dsync)(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag);
	/*
	 * A commit is settled: res 0 = durable (answer 250), -errno = failed
	 * (answer 451 4.3.0, or 452 4.3.1 for -ENOSPC). Called once per commit
	 * that spool_txn_commit() took (returned 0), from spool_lane_complete()
	 * or spool_lane_kick(); never from inside spool_txn_commit().
	 */
	void (*settled)(void *ctx, uint64_t cookie, int res);
};

struct spool_lane;

/* A message being received. Owned by the caller (one per session), opaque contents. */
struct spool_txn {
	uint64_t id;	  /* unique across lanes and restarts */
	uint64_t priv[8]; /* lane's bookkeeping */
};

/* Recovery of the whole spool directory. Run once at start-up before opening lanes. */
struct spool_recovery_report {
	uint64_t segments;
	uint64_t messages;    /* committed messages found */
	uint64_t bytes;	      /* their body bytes */
	uint64_t torn_tails;  /* segments whose torn tail was truncated/ignored */
	uint64_t quarantined; /* corrupt regions followed by valid records, reported */
	uint64_t elapsed_us;
	uint64_t discarded; /* commit records whose body was not all durable (never acknowledged) */
	uint64_t lanes;
	/* format 2 */
	uint64_t aborted;      /* commits refused by an abort record (their client got 451/452) */
	uint64_t outcomes;     /* outcome records read */
	uint64_t queued;       /* messages still owed to some recipient */
	uint64_t queued_rcpts; /* recipients not final */
	uint64_t in_flight;    /* messages with an attempt cut short by the crash */
	/* format 4 */
	uint64_t summaries; /* sealed segments taken from their seal summary, not read */
};
int spool_recover(const struct spool_config *cfg, struct spool_recovery_report *rep);

/*
 * One message recovery found that still owes delivery to some recipient
 * (every message of every lane whose recipients are not all final, and
 * that no abort record refused). Handed to the daemon, which gives it to
 * the worker that drains its lane (lane % threads).
 */
struct spool_queue_entry {
	uint64_t id;
	unsigned lane;
	uint64_t seq, off;	/* its commit record (spool_fetch_get) */
	uint64_t size;		/* body bytes */
	int64_t received_at_us; /* from the commit record */
	uint32_t rcpt_count;
	const uint8_t *rcpt_state; /* rcpt_count x enum spool_rcpt_state, folded; valid during the call */
	uint32_t attempts;	   /* highest attempt number recorded, 0 = never attempted */
	int64_t next_attempt_us;   /* of the record that deferred last; 0 = due now */
	bool in_flight;		   /* some recipient is in ATTEMPT: a delivery now may duplicate one */
	bool held;		   /* an operator held it (last HOLD/RELEASE record): not delivered */
	bool bounce;		   /* an operator bounced it: the open recipients fail now, with a DSN */
};

/*
 * spool_recover, and then fn for each message still owed (in lane, then
 * commit order). fn returns non-zero to stop (returned). A NULL fn is
 * spool_recover. Outcome records naming messages that do not exist (their
 * segment reclaimed) are ignored.
 */
int spool_recover_queue(const struct spool_config *cfg, struct spool_recovery_report *rep,
			int (*fn)(void *ctx, const struct spool_queue_entry *e), void *ctx);

int spool_lane_open(struct spool_lane **out, const struct spool_config *cfg, unsigned lane_no,
		    const struct spool_io_ops *ops, void *ops_ctx);
/* Close; all commits must be settled (spool_lane_busy() false). */
void spool_lane_close(struct spool_lane *l);

/* Bytes spool_txn_append() accepts right now without failing with -EAGAIN. */
size_t spool_lane_append_room(const struct spool_lane *l);

int spool_txn_begin(struct spool_lane *l, struct spool_txn *t); /* 0, -ENOSPC, -EIO */
int spool_txn_append(struct spool_lane *l, struct spool_txn *t, const void *buf,
		     size_t len); /* 0, -EAGAIN, -ENOSPC, -EIO */
/*
 * Queue the commit. Returns 0 once the cookie is taken: ops->settled(cookie,
 * res) follows, exactly once, when the group's flush completes; when it
 * fails, only once an abort record naming the commit is durable in a fresh
 * segment (FORMAT.md, "Abort rule": a failed commit whose bytes survive is
 * never a message), or the lane gave up on that (stats aborts_lost).
 * Returns -errno when the txn cannot be committed (it failed earlier:
 * segment error -EIO, disk full -ENOSPC; or its envelope is over the
 * format's limit: -EMSGSIZE): the cookie is not taken, settled() is not
 * called for it, the txn is closed, and the caller answers with the error.
 * Returns -EAGAIN (cookie not taken, nothing written, txn still open) when
 * staging memory or the commit queue is full, or abort records are still
 * owed: retry after the next completion.
 */
int spool_txn_commit(struct spool_lane *l, struct spool_txn *t, const struct ds_envelope *env,
		     uint64_t cookie);
void spool_txn_abort(struct spool_lane *l, struct spool_txn *t);

/*
 * Where the commit record of a txn lies (segment sequence, file offset):
 * valid after spool_txn_commit() returned 0, until settled() for it. The
 * delivery queue keeps this location, not the envelope: the envelope and
 * body are read back from the segment (spool_fetch.h). 0, or -EINVAL when
 * the txn has no queued commit.
 */
int spool_txn_location(const struct spool_txn *t, uint64_t *seq, uint64_t *off);

/*
 * Delivery state (format version 2): outcome records, appended to a lane
 * and group-committed exactly like commit records. Each names one message
 * (by id; the message may live in any lane: after a restart with fewer
 * --threads a worker drains other lanes too) and some of its recipients
 * (by index in the envelope). Recovery folds every outcome record of every
 * lane into each message's state (spool_recover_queue): per recipient, the
 * entry with the highest attempt number wins, an outcome (deferred,
 * delivered, failed) beats an ATTEMPT of the same number, and DELIVERED or
 * FAILED from any attempt is final. A FAILED entry of a record whose dsn_id
 * names no durable message does not count (the DSN did not make it: the
 * recipient is tried again, and fails again, with a DSN).
 */
enum spool_rcpt_state {
	SPOOL_RCPT_PENDING = 0,	  /* never attempted (no record) */
	SPOOL_RCPT_ATTEMPT = 1,	  /* handed to a next hop, no outcome recorded (a crash cut it short) */
	SPOOL_RCPT_DELIVERED = 2, /* final: the next hop took responsibility */
	SPOOL_RCPT_DEFERRED = 3,  /* try again at next_attempt_us */
	SPOOL_RCPT_FAILED = 4,	  /* final: permanent failure, DSN spooled as dsn_id (0: none owed) */
};
#define SPOOL_RCPT_STATE_FINAL(s) ((s) == SPOOL_RCPT_DELIVERED || (s) == SPOOL_RCPT_FAILED)

/* Limits of one outcome record (FORMAT.md). */
#define SPOOL_OUTCOME_RCPTS_MAX 20000u /* entries per record: a message's recipient limit */
#define SPOOL_OUTCOME_TEXT_MAX	255u   /* reply text kept per entry, octets (longer: cut) */
#define SPOOL_OUTCOME_HOP_MAX	255u   /* next-hop name, octets (longer: cut) */

struct spool_outcome_rcpt {
	uint32_t idx;		 /* recipient index in the message's envelope */
	uint8_t state;		 /* enum spool_rcpt_state, not PENDING */
	bool possible_duplicate; /* lost after the final dot (RFC 1047 gap on our client side) */
	uint16_t code;		 /* reply code (0 for ATTEMPT) */
	const char *esc;	 /* enhanced status code ("4.4.1"), "" if none */
	const char *text;	 /* reply text, "" if none */
};

struct spool_outcome {
	uint64_t id;		 /* the message */
	uint32_t attempt;	 /* attempt number of this message, from 1 */
	int64_t at_us;		 /* wall clock of the record */
	int64_t next_attempt_us; /* deferred entries are due then; 0 = none */
	uint64_t dsn_id;	 /* the DSN spooled for this record's FAILED entries; 0 = none */
	const char *hop;	 /* next hop as configured ("lmtp:/run/x.sock"), "" if none */
	uint32_t rcpt_count;	 /* 1..SPOOL_OUTCOME_RCPTS_MAX */
	const struct spool_outcome_rcpt *rcpt;
};

/*
 * Queue an outcome record on this lane. Same contract as spool_txn_commit:
 * 0 = cookie taken, ops->settled(cookie, res) follows exactly once when the
 * group's flush completes (res 0: the record is durable; only then may the
 * caller act on it); -EAGAIN = staging or queue full, nothing written,
 * retry after the next completion; -EMSGSIZE = over a record limit;
 * -EIO / -ENOSPC = the lane cannot write now. The strings are copied.
 * Cookies share settled() with commits: the caller tells its own apart.
 */
int spool_lane_outcome(struct spool_lane *l, const struct spool_outcome *o, uint64_t cookie);

/*
 * Operator records (format 3, type 6; FORMAT.md "Operator records"): what
 * an operator did to one message through dotspool-ctl, written to a lane
 * and group-committed like an outcome record (same contract as
 * spool_lane_outcome: 0 = cookie taken and settled() follows; -EAGAIN,
 * -EMSGSIZE, -EINVAL, -EIO, -ENOSPC). Recovery folds them per message:
 * the last HOLD/RELEASE (by at_us, then lane, segment, offset) says held;
 * DELETE makes the message final (never delivered, no DSN); BOUNCE owes
 * the recipients still open a FAILED outcome with a DSN; RETRY makes a
 * deferred message due now. Strings are copied (cut at their limits).
 */
enum spool_operator_action {
	SPOOL_OPERATOR_HOLD = 1,
	SPOOL_OPERATOR_RELEASE = 2,
	SPOOL_OPERATOR_DELETE = 3,
	SPOOL_OPERATOR_BOUNCE = 4,
	SPOOL_OPERATOR_RETRY = 5,
};
struct spool_operator {
	uint64_t id;	    /* the message acted on */
	uint32_t action;    /* enum spool_operator_action */
	uint32_t uid, pid;  /* the operator (control socket peer credentials) */
	int64_t at_us;	    /* wall clock, microseconds since the Unix epoch */
	const char *name;   /* operator's login name, "" if unknown (<= 64 octets kept) */
	const char *reason; /* free text, "" if none (<= 255 octets kept) */
};
int spool_lane_operator(struct spool_lane *l, const struct spool_operator *o, uint64_t cookie);

/*
 * Gap records (format 3, type 7; FORMAT.md "Gap records", issue 16): a
 * message whose 250 may never have been read (AT_RISK, with the
 * fingerprint a retry is matched on, until expires_us), or no longer at
 * risk (CLEARED). Same contract as spool_lane_outcome. spool_gap_fp is
 * the whole tail of an AT_RISK record; a CLEARED record has none.
 */
enum spool_gap_rec_kind { SPOOL_GAP_REC_AT_RISK = 1, SPOOL_GAP_REC_CLEARED = 2 };
struct spool_gap_fp {
	uint64_t env_digest; /* sender and recipients (order-independent), io/gap.c */
	uint32_t rcpt_count;
	uint32_t hdr_len;	   /* bytes of our trace header at the start of the stored copy */
	uint64_t size;		   /* message bytes as received (the stored copy minus hdr_len) */
	uint64_t hash_lo, hash_hi; /* XXH3-128 of those bytes */
	uint64_t head_hash;	   /* XXH3-64 of their first min(size, 1024) bytes (the set's key) */
	uint64_t sender_digest;	   /* XXH3-64 of the sender (the set's key) */
	uint32_t nrh;		   /* rcpt_h entries: rcpt_count when <= SPOOL_GAP_RCPT_HASHES, else 0 */
	uint64_t rcpt_h[8];	   /* io_gap_rcpt_hash of each recipient: a retry to a subset matches */
	uint32_t lane;		   /* the stored copy's commit record (spool_fetch_get) */
	uint64_t seq, off;
	int64_t received_at_us; /* of the original */
};
struct spool_gap_rec {
	uint64_t id; /* the message at risk; a watermark: the lane's padding id (lane << 56 | 1) */
	uint32_t kind;
	int64_t expires_us;	/* AT_RISK: end of the window; CLEARED: 0 */
	struct spool_gap_fp fp; /* AT_RISK only */
	/*
	 * A CLEARED record with a watermark tail: every commit of this lane
	 * before (wm_seq, wm_off) -- or, wm_all, before this record itself --
	 * had its 250 confirmed or its AT_RISK record staged before this one.
	 */
	bool watermark, wm_all;
	uint64_t wm_seq, wm_off;
	int64_t wm_at_us; /* when it was written (wall clock) */
	/* Where recovery found it (not encoded). */
	unsigned rec_lane;
	uint64_t rec_seq, rec_off;
};
int spool_lane_gap(struct spool_lane *l, const struct spool_gap_rec *g, uint64_t cookie);
/*
 * spool_recover_queue, and for gap dedup: rec(ctx, g) for every intact,
 * decodable gap record of every lane (lane, then segment order: a CLEARED
 * record may come before the AT_RISK it clears when they lie in different
 * lanes), all of them before the first msg(ctx, ...): one call per
 * message recovery keeps (final or not), with its commit's location.
 */
struct spool_recover_gap_ops {
	void (*rec)(void *ctx, const struct spool_gap_rec *g);
	void (*msg)(void *ctx, uint64_t id, unsigned lane, uint64_t seq, uint64_t off,
		    int64_t received_at_us);
	void *ctx;
};
int spool_recover_queue_gap(const struct spool_config *cfg, struct spool_recovery_report *rep,
			    int (*fn)(void *ctx, const struct spool_queue_entry *e), void *ctx,
			    const struct spool_recover_gap_ops *gap);

/* Once per event-loop turn: write what was appended and flush if commits are pending. */
void spool_lane_kick(struct spool_lane *l);
/* Completion of an op submitted through spool_io_ops. */
void spool_lane_complete(struct spool_lane *l, uint64_t tag, int res);
/* True while writes/flushes are in flight or commits unsettled. */
bool spool_lane_busy(const struct spool_lane *l);

/*
 * mkdir -p for the spool directory: every directory it creates is made
 * durable (fsync of its parent), so a spool made just before a crash is
 * still there after it. 0 or -errno.
 */
int spool_dir_create(const char *path);

/* DIR/lane-NN: the directory of one lane. 0 or -ENAMETOOLONG. */
int spool_lane_dir_path(char *buf, size_t cap, const char *dir, unsigned lane);

struct spool_lane_stats {
	uint64_t flushes, flush_errors, commits, bytes_written, segments_opened;
	uint64_t flush_latency_us_sum, flush_latency_us_max;
	/* Direct mode: padding written to keep every write on fresh blocks; the
	 * lane really runs the direct discipline. In direct mode `flushes` counts completed DSYNC
	 * writes (plus seals). */
	uint64_t pad_bytes;
	bool direct;
	uint64_t prepare_errors; /* failed segment preparations (disk full, EMFILE, EIO, quota) */
	/* Segments prepared from a free file (format 5: no zero-fill) and from a new file. */
	uint64_t segments_recycled, segments_fresh;
	uint32_t spares_ready; /* prepared segments ready now (gauge; segment_spares at most) */
	/* Commits settled durable, a running sum: its growth across one completion is
	 * the number of messages that flush (or direct-mode write) made durable. */
	uint64_t commits_durable;
	/* Format 2. Outcome records queued (spool_lane_outcome took the cookie), settled
	 * durable, settled with an error (their segment failed). */
	uint64_t outcomes, outcomes_durable, outcome_errors;
	/*
	 * Abort records (FORMAT.md, "Abort rule"): staged (one per failed commit, more if
	 * the segment an abort went to failed too), commits settled with their error after
	 * their abort record was durable, and commits settled with their error without one
	 * (no segment could be prepared, or the abort's segment failed ABORT_TRIES times).
	 */
	uint64_t aborts, aborts_durable, aborts_lost;
};
void spool_lane_stats(const struct spool_lane *l, struct spool_lane_stats *st);

/* Read-only access to committed messages (dotspool-ctl, consumers). See spool/spool_reader.h. */
#endif
