/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_READER_H
#define DS_SPOOL_READER_H

/*
 * Read-only access to the committed messages of a spool directory
 * (dotspool-ctl, consumers). Opens every file O_RDONLY and maps it shared,
 * so it is safe while a server appends: a record that is not complete yet
 * (torn, unwritten, or a commit whose chunks have not landed) is simply
 * not there yet. A reader sees the segments listed at open time; each is
 * opened and mapped when first needed (foreach, verify and stats map them
 * all; spool_reader_read only the ones it scans). A segment removed after
 * open but before it was mapped is treated as absent.
 *
 * Not for concurrent use from several threads (one decode space).
 *
 * Order: lane by lane (ascending), and within a lane in commit order.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ds_envelope.h"
#include "spool.h"

struct spool_reader;

struct spool_msg {
	uint64_t id;
	unsigned lane;
	uint64_t seq;	   /* segment holding the commit record */
	uint64_t off;	   /* file offset of the commit record */
	uint64_t size;	   /* body bytes */
	uint32_t body_crc; /* CRC32C of the body */
	uint32_t chunk_count;
	uint64_t first_seq, first_off; /* first chunk record */
	int64_t received_at_us;
	struct ds_envelope env; /* strings valid only during the callback */
};

/*
 * Delivery state of one recipient (format 2), folded from every outcome
 * record of every lane by the rule in spool.h. The strings point into the
 * reader's maps and are valid during the callback only.
 */
struct spool_rcpt_status {
	uint8_t state;		 /* enum spool_rcpt_state */
	bool possible_duplicate; /* of the winning entry */
	uint16_t code;		 /* reply code of the winning entry; 0 if none */
	uint32_t attempt;	 /* attempt number of the winning entry; 0 = never attempted */
	const char *esc;	 /* enhanced status code, "" if none */
	const char *text;	 /* reply text, "" if none */
	const char *hop;	 /* next hop of the winning record, "" if none */
	int64_t at_us;		 /* wall clock of the winning record; 0 if none */
	int64_t next_attempt_us; /* of the winning record (DEFERRED: due then); 0 if none */
	uint64_t dsn_id;	 /* FAILED: the DSN spooled for it, 0 = none owed */
};

struct spool_msg_status {
	uint32_t rcpt_count;
	const struct spool_rcpt_status *rcpt; /* rcpt_count entries, in envelope order */
	uint32_t attempts;		      /* highest attempt number recorded, 0 = never */
	uint32_t final_rcpts;		      /* recipients DELIVERED or FAILED */
	bool done;			      /* every recipient final */
	bool in_flight;			      /* some recipient in ATTEMPT (cut short by a crash) */
	/*
	 * When the message is due: 0 (now) if a recipient is PENDING or in
	 * ATTEMPT, else the earliest next attempt of its DEFERRED recipients;
	 * 0 when done.
	 */
	int64_t next_attempt_us;
	uint64_t dsn_id;	  /* the DSN of the latest record with a counted FAILED entry; 0 = none */
	uint64_t outcome_records; /* outcome records naming it */
	/* Operator records (format 3; spool.h, "Operator records"). */
	bool held;    /* the last HOLD/RELEASE is a HOLD: not delivered until released */
	bool deleted; /* DELETE: final (done is true), never delivered, no DSN */
	bool bounced; /* BOUNCE: the open recipients fail now with a DSN (done once they have) */
};

int spool_reader_open(struct spool_reader **out, const char *dir);
void spool_reader_close(struct spool_reader *r);
/*
 * Did a segment this reader mapped change identity since (format 5: it was
 * reclaimed, renamed to a free file and stamped again as another segment,
 * so its pages now hold another segment's header and, later, records)?
 * Compares every mapped segment's header with the one read at map time.
 * The header is stamped before any of the new segment's records is
 * written, so false after a command means every byte it read was the old
 * segment's; true: run the command again on a fresh reader (dotspool-ctl).
 */
bool spool_reader_changed(const struct spool_reader *r);

/*
 * Calls fn for each committed message; fn returns non-zero to stop
 * (returned). A commit refused by an abort record (format 2: its client
 * got 451/452) is not a message and is skipped; since such a record may be
 * in any lane, every lane is scanned before the first call.
 */
int spool_reader_foreach(struct spool_reader *r, int (*fn)(void *ctx, const struct spool_msg *m), void *ctx);
/* The same, with each message's delivery state folded from the outcome records of every lane. */
int spool_reader_foreach_status(struct spool_reader *r,
				int (*fn)(void *ctx, const struct spool_msg *m,
					  const struct spool_msg_status *st),
				void *ctx);

/*
 * Stream the stored body of message id to fn (in chunk-sized pieces).
 * 0, -ENOENT (no such committed message), -EBADMSG (body CRC mismatch,
 * detected at the end: bytes already streamed), or fn's non-zero return.
 *
 * Found exactly when spool_reader_foreach would list id, but without the
 * whole-spool scan: only id's lane, from the segment the id names (where
 * the txn began) up to the one holding its commit, and only id's records
 * there (FORMAT.md, "Txn / queue ids"). An id that names no existing
 * segment or lane fails at once; an unknown id in an existing segment
 * costs a scan of its lane from that segment to the end.
 */
int spool_reader_read(struct spool_reader *r, uint64_t id, int (*fn)(void *ctx, const void *buf, size_t len),
		      void *ctx);
int spool_reader_read_file(struct spool_reader *r, uint64_t id, FILE *f);

struct spool_verify_report {
	uint64_t segments, empty_segments, bad_segment_headers;
	uint64_t messages, bytes;
	uint64_t bad_bodies; /* durable (below watermark) commit with missing/corrupt body */
	uint64_t incomplete; /* commit past the durable watermark whose body is not all there */
	uint64_t quarantined, quarantined_bytes; /* bad regions followed by valid records */
	uint64_t torn_tails;			 /* non-zero garbage at a segment's end (crash) */
	uint64_t aborted;  /* commits refused by an abort record (not messages, not a problem) */
	uint64_t outcomes; /* outcome records (format 2) */
	/*
	 * Durable commits of final messages (every recipient delivered or failed)
	 * whose body lay in a segment already reclaimed: reclamation's intermediate
	 * state (FORMAT.md, "Reclamation"), not a problem.
	 */
	uint64_t bodies_reclaimed;
	/*
	 * Seal summaries recovery would use, each rebuilt from its segment and
	 * compared byte for byte; those that differ (a problem: recovery trusts
	 * them instead of reading the segment).
	 */
	uint64_t summaries, bad_summaries;
};
/* Check every record and every body CRC. 0 if consistent, -EBADMSG if not; problems printed to log (may be
 * NULL). */
int spool_reader_verify(struct spool_reader *r, struct spool_verify_report *rep, FILE *log);

struct spool_lane_summary {
	unsigned lane;
	uint64_t segments, messages, bytes, first_seq, last_seq;
};
struct spool_reader_stats {
	uint64_t lanes, segments, messages, bytes, segment_bytes;
	struct spool_lane_summary lane[SPOOL_LANES_MAX];
};
int spool_reader_stats(struct spool_reader *r, struct spool_reader_stats *st);

/* Print a recovery report (one line) as the server logs it. */
void spool_recovery_report_print(const struct spool_recovery_report *rep, FILE *f);

#endif
