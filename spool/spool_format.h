/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_FORMAT_H
#define DS_SPOOL_FORMAT_H

/*
 * On-disk format, version 3 (see spool/FORMAT.md). Internal to spool/
 * (lane, recovery, reader, tests). All integers little-endian. Version 2
 * adds the delivery records (outcome, abort), version 3 the lifecycle
 * records (moved, operator, gap); a reader reads every older version
 * (they hold fewer record types), an older binary refuses a newer
 * segment by name.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ds_envelope.h"
#include "spool.h"
#include "spool_id.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "spool format encoding assumes a little-endian host"
#endif

#define SPOOL_FORMAT_VERSION	 5u /* written into new segments */
#define SPOOL_FORMAT_VERSION_MIN 1u /* oldest version read */
#define SPOOL_SEG_MAGIC		 "DSPOOLSG"
#define SPOOL_SEG_HDR_SIZE	 64u
#define SPOOL_SEG_DATA_OFF	 4096u	     /* records start here: data writes stay page aligned */
#define SPOOL_REC_MAGIC		 0x52535344u /* "DSSR" */
#define SPOOL_REC_HDR_SIZE	 40u
#define SPOOL_REC_ALIGN		 8u

/* Limits (explicit, documented in FORMAT.md; those io/ needs are in spool.h). */
#define SPOOL_CHUNK_MAX	 (1u << 20)    /* body payload per chunk record */
#define SPOOL_COMMIT_MAX (128u * 1024) /* encoded commit payload */
#define SPOOL_RCPT_MAX	 20000u

/* Outcome records (format 2). Strings longer than their limit are cut when encoded. */
#define SPOOL_OUTCOME_ESC_MAX	15u /* enhanced status code "5.123.123" fits */
#define SPOOL_OUTCOME_FIXED	32u /* attempt .. dsn_id, before the hop string */
#define SPOOL_OUTCOME_ENTRY_MAX (8u + (5u + SPOOL_OUTCOME_ESC_MAX) + (5u + SPOOL_OUTCOME_TEXT_MAX))
/* Largest outcome payload: every recipient with the longest strings (about 5.5 MiB). */
#define SPOOL_OUTCOME_MAX                                                                                    \
	(SPOOL_OUTCOME_FIXED + 5u + SPOOL_OUTCOME_HOP_MAX + 4u +                                             \
	 SPOOL_OUTCOME_RCPTS_MAX * SPOOL_OUTCOME_ENTRY_MAX)
#define SPOOL_ABORT_SIZE 24u /* abort payload */

enum spool_rec_type {
	SPOOL_REC_CHUNK = 1,   /* body bytes of one txn; header CRC only (body CRC lives in the commit) */
	SPOOL_REC_COMMIT = 2,  /* envelope + body length/CRC + chunk locator; CRC over header+payload */
	SPOOL_REC_OUTCOME = 3, /* delivery outcome of some recipients of message txn_id; CRC over all */
	SPOOL_REC_ABORT = 4,   /* message txn_id was refused (451/452) after all; CRC over all */
	/* Format 3. Handed out by spool_seg_scan() like outcome/abort (delivery set). */
	SPOOL_REC_MOVED = 5,	/* compaction: message txn_id now lives at a later commit (FORMAT.md) */
	SPOOL_REC_OPERATOR = 6, /* operator action on message txn_id: hold, release, delete, ... */
	SPOOL_REC_GAP = 7,	/* gap dedup: at-risk / confirmed fingerprints (issue 16) */
};
#define SPOOL_REC_TYPE_LAST SPOOL_REC_GAP
/* Payload limits of the format 3 records (each owner's codec keeps within it). */
#define SPOOL_MOVED_MAX	   4096u
#define SPOOL_OPERATOR_MAX 4096u
#define SPOOL_GAP_MAX	   (1u << 20)

/*
 * Segment header flags (format 5). RECYCLED: the file held an earlier
 * segment (renamed to SEQ.free at its reclamation and stamped again), so
 * the bytes after the last record are that file's, not zeros: a tail that
 * does not parse is the normal end (FORMAT.md, "Recycled segments").
 */
#define SPOOL_SEG_F_RECYCLED 1u

struct spool_seg_hdr {
	uint32_t version;
	uint32_t lane;
	uint32_t flags;	   /* SPOOL_SEG_F_* (format 5; 0 before, and read as 0) */
	uint32_t reserved; /* offset 56, 0 (kept so the struct has no padding) */
	uint64_t seq;
	uint64_t epoch;
	int64_t created_us;
	uint64_t segment_size;
};

struct spool_rec {
	uint64_t off; /* file offset of the record header */
	uint32_t type;
	uint32_t len; /* payload bytes */
	uint64_t txn_id;
	uint64_t durable_off;
	const uint8_t *payload;
	uint64_t total; /* header + payload + padding */
};

/* Little-endian fields at any alignment (the spool is written on little-endian hosts: FORMAT.md). */
static inline uint32_t spool_get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static inline uint64_t spool_get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static inline void spool_put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static inline void spool_put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static inline uint64_t spool_rec_total(uint64_t payload_len)
{
	return (SPOOL_REC_HDR_SIZE + payload_len + SPOOL_REC_ALIGN - 1) & ~(uint64_t)(SPOOL_REC_ALIGN - 1);
}

void spool_seg_hdr_encode(uint8_t out[SPOOL_SEG_HDR_SIZE], const struct spool_seg_hdr *h);
/* Header flags say the bytes after the last record may be an earlier segment's (format 5). */
static inline bool spool_seg_recycled(const struct spool_seg_hdr *h)
{
	return h->version >= 5 && (h->flags & SPOOL_SEG_F_RECYCLED);
}
/* 0, -ENODATA (all zero: never initialised), -EBADMSG (corrupt or foreign). */
int spool_seg_hdr_decode(const uint8_t *p, size_t n, struct spool_seg_hdr *h);

/*
 * Encode a record header at out[0, SPOOL_REC_HDR_SIZE). The payload must
 * already be at out + SPOOL_REC_HDR_SIZE (the CRC of a commit covers it);
 * padding bytes up to spool_rec_total() are zeroed here.
 */
void spool_rec_encode(uint8_t *out, uint32_t type, uint32_t len, uint64_t txn_id, uint64_t epoch,
		      uint64_t durable_off);
/* Validate the record at off of a mapped segment; true and *r filled if valid. */
bool spool_rec_check(const uint8_t *map, uint64_t size, uint64_t epoch, uint64_t off, struct spool_rec *r);

/* Commit payload. */
struct spool_commit {
	uint64_t body_len;
	uint32_t body_crc;
	uint32_t chunk_count;
	uint64_t first_seq; /* segment of the first chunk (0 if no chunks) */
	uint64_t first_off; /* file offset of the first chunk's record */
	struct ds_envelope env;
};
/* Encoded payload size for env, or 0 if it exceeds SPOOL_COMMIT_MAX / SPOOL_RCPT_MAX. */
size_t spool_commit_size(const struct ds_envelope *env);
/* Encode into out (spool_commit_size() bytes). c->env is ignored; env is encoded. */
void spool_commit_encode(uint8_t *out, const struct spool_commit *c, const struct ds_envelope *env);
/*
 * Decode; strings point into p (NUL terminated in the format). rcpt must
 * have room for SPOOL_RCPT_MAX or for rcpt_cap entries (-ENOBUFS if short).
 */
int spool_commit_decode(const uint8_t *p, size_t n, struct spool_commit *c, struct ds_rcpt *rcpt,
			uint32_t rcpt_cap);

/*
 * Outcome payload (type 3). Decoding allocates nothing: strings point into
 * the payload (NUL terminated in the format), the entries are read with an
 * iterator over the same bytes.
 *
 * Encode: spool_outcome_size(o) is the payload size (strings cut at their
 * limits), or 0 if o is invalid (rcpt_count 0 or above
 * SPOOL_OUTCOME_RCPTS_MAX, an entry with state PENDING or unknown, an idx
 * >= SPOOL_RCPT_MAX); spool_outcome_encode() writes exactly that many bytes.
 * o->id is not part of the payload: it is the record header's txn id.
 */
size_t spool_outcome_size(const struct spool_outcome *o);
void spool_outcome_encode(uint8_t *out, const struct spool_outcome *o);

struct spool_outcome_iter {
	const uint8_t *p, *end;
	uint32_t left; /* entries not yet returned */
};
/*
 * Decode a whole outcome payload (the record's payload and len, e.g. a
 * struct spool_rec from spool_seg_scan). Every entry is validated here, so
 * the iterator cannot fail later. Fills o (o->id = 0: the caller takes it
 * from the record header; o->rcpt = NULL: entries come from the iterator)
 * and sets *it to the first entry. 0 or -EBADMSG. The payload must stay
 * mapped while o, *it and the entries' strings are used.
 */
int spool_outcome_decode(const uint8_t *payload, uint32_t len, struct spool_outcome *o,
			 struct spool_outcome_iter *it);
/* The next entry: 1 and *e filled, or 0 at the end (after o->rcpt_count entries). */
int spool_outcome_entry_next(struct spool_outcome_iter *it, struct spool_outcome_rcpt *e);

/*
 * Abort payload (type 4), SPOOL_ABORT_SIZE bytes: why the message's client
 * was refused (positive errno: EIO or ENOSPC) and where its commit record
 * was written (segment sequence, file offset; the refused copy). The record
 * header's txn id is the refused message's id.
 */
struct spool_abort {
	uint32_t reason;
	uint64_t commit_seq, commit_off;
};
void spool_abort_encode(uint8_t out[SPOOL_ABORT_SIZE], const struct spool_abort *a);
/* 0 or -EBADMSG (wrong length). */
int spool_abort_decode(const uint8_t *payload, uint32_t len, struct spool_abort *a);

/*
 * Format 3 fixed prefixes. Each record type 5..7 starts with a fixed part
 * that recovery, reclamation and compaction read without knowing the rest
 * (its owner's codec appends what follows; the record's CRC covers all).
 * The record header's txn id is always the message the record is about.
 */

/* Operator record (type 6): what an operator did to message txn_id, when, as whom. */
enum spool_op_action {
	SPOOL_OP_HOLD = 1,    /* not delivered until released */
	SPOOL_OP_RELEASE = 2, /* undoes HOLD */
	SPOOL_OP_DELETE = 3,  /* final: never delivered, no DSN (the record is the proof) */
	SPOOL_OP_BOUNCE = 4,  /* remaining recipients fail now with a DSN (FAILED outcomes follow) */
	SPOOL_OP_RETRY = 5,   /* due now (clears backoff; not a final state) */
};
#define SPOOL_OP_FIXED 24u
struct spool_op_fixed {
	uint32_t action; /* enum spool_op_action */
	uint32_t uid;	 /* peer uid of the operator (SO_PEERCRED) */
	int64_t at_us;	 /* wall clock, microseconds since the Unix epoch */
	uint32_t pid;	 /* peer pid */
	uint32_t tail;	 /* bytes following the fixed part (owner-defined), <= SPOOL_OPERATOR_MAX - 24 */
};
void spool_op_fixed_encode(uint8_t out[SPOOL_OP_FIXED], const struct spool_op_fixed *f);
/* 0 or -EBADMSG (short payload, unknown action, tail not matching len). */
int spool_op_fixed_decode(const uint8_t *payload, uint32_t len, struct spool_op_fixed *f);

/* Gap record (type 7): message txn_id is at risk (its 250 may be lost) until expires_us, or cleared. */
enum spool_gap_kind {
	SPOOL_GAP_AT_RISK = 1, /* keep the message (and this record) until expires_us */
	SPOOL_GAP_CLEARED = 2, /* the 250 was confirmed read after all: no longer at risk */
};
#define SPOOL_GAP_FIXED 24u
struct spool_gap_fixed {
	uint32_t kind;	    /* enum spool_gap_kind */
	uint32_t tail;	    /* bytes following the fixed part (fingerprint, owner-defined) */
	int64_t expires_us; /* AT_RISK: end of the dedup window (wall clock); CLEARED: 0 */
	uint64_t reserved;  /* 0 */
};
void spool_gap_fixed_encode(uint8_t out[SPOOL_GAP_FIXED], const struct spool_gap_fixed *f);
/* 0 or -EBADMSG. */
int spool_gap_fixed_decode(const uint8_t *payload, uint32_t len, struct spool_gap_fixed *f);

/* Segment scanning shared by recovery and the reader. */
struct spool_scan_ops {
	/*
	 * A valid record. Return non-zero to stop the scan (returned by
	 * spool_seg_scan). Outcome and abort records (format 2) are handed out
	 * only with delivery set; without it they are validated and skipped, so
	 * a scanner written for chunks and commits only never sees them.
	 */
	int (*rec)(void *ctx, const struct spool_rec *r);
	bool delivery;
	/*
	 * Bytes [from, to) are not records. tail: nothing valid follows (torn or
	 * unwritten tail); zero: the region is all zero bytes.
	 */
	void (*bad)(void *ctx, uint64_t from, uint64_t to, bool tail, bool zero);
};
int spool_seg_scan(const uint8_t *map, uint64_t size, uint64_t epoch, uint64_t start_off,
		   const struct spool_scan_ops *ops, void *ctx);

/* Paths: DIR/lane-NN/SSSSSSSSSSSS.EXT, EXT "seg", "sum" or "free" (spool_lane_dir_path: spool.h) */
int spool_lane_file_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq,
			 const char *ext);
/* Parse "000000000012.EXT" -> 12; 0 on anything else. */
uint64_t spool_lane_file_seq(const char *name, const char *ext);
int spool_seg_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq);
uint64_t spool_seg_name_seq(const char *name);
/* Sorted list of segment seqs in a lane dir (malloc'd in *out); count or -errno. */
int spool_seg_list(const char *lane_dir, uint64_t **out);
/* The same for the lane's files SSSSSSSSSSSS.ext ("free": recycled segments waiting, format 5). */
int spool_lane_file_list(const char *lane_dir, const char *ext, uint64_t **out);
/* Lanes present under dir as a bitmap count; fills lanes[] (cap SPOOL_LANES_MAX), returns count or -errno. */
int spool_lane_list(const char *dir, unsigned *lanes);

#endif
