/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_FORMAT_H
#define DS_SPOOL_FORMAT_H

/*
 * On-disk format, version 1 (see spool/FORMAT.md). Internal to spool/
 * (lane, recovery, reader, tests). All integers little-endian.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds_envelope.h"
#include "spool.h"
#include "spool_id.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "spool format encoding assumes a little-endian host"
#endif

#define SPOOL_FORMAT_VERSION 1u
#define SPOOL_SEG_MAGIC	     "DSPOOLSG"
#define SPOOL_SEG_HDR_SIZE   64u
#define SPOOL_SEG_DATA_OFF   4096u	 /* records start here: data writes stay page aligned */
#define SPOOL_REC_MAGIC	     0x52535344u /* "DSSR" */
#define SPOOL_REC_HDR_SIZE   40u
#define SPOOL_REC_ALIGN	     8u

/* Limits (explicit, documented in FORMAT.md; those io/ needs are in spool.h). */
#define SPOOL_CHUNK_MAX	 (1u << 20)    /* body payload per chunk record */
#define SPOOL_COMMIT_MAX (128u * 1024) /* encoded commit payload */
#define SPOOL_RCPT_MAX	 20000u

enum spool_rec_type {
	SPOOL_REC_CHUNK = 1,  /* body bytes of one txn; header CRC only (body CRC lives in the commit) */
	SPOOL_REC_COMMIT = 2, /* envelope + body length/CRC + chunk locator; CRC over header+payload */
};

struct spool_seg_hdr {
	uint32_t version;
	uint32_t lane;
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

static inline uint64_t spool_rec_total(uint64_t payload_len)
{
	return (SPOOL_REC_HDR_SIZE + payload_len + SPOOL_REC_ALIGN - 1) & ~(uint64_t)(SPOOL_REC_ALIGN - 1);
}

void spool_seg_hdr_encode(uint8_t out[SPOOL_SEG_HDR_SIZE], const struct spool_seg_hdr *h);
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

/* Segment scanning shared by recovery and the reader. */
struct spool_scan_ops {
	/* A valid record. Return non-zero to stop the scan (returned by spool_seg_scan). */
	int (*rec)(void *ctx, const struct spool_rec *r);
	/*
	 * Bytes [from, to) are not records. tail: nothing valid follows (torn or
	 * unwritten tail); zero: the region is all zero bytes.
	 */
	void (*bad)(void *ctx, uint64_t from, uint64_t to, bool tail, bool zero);
};
int spool_seg_scan(const uint8_t *map, uint64_t size, uint64_t epoch, uint64_t start_off,
		   const struct spool_scan_ops *ops, void *ctx);

/* Paths: DIR/lane-NN/SSSSSSSSSSSS.seg (spool_lane_dir_path: spool.h) */
int spool_seg_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq);
/* Parse "000000000012.seg" -> 12; 0 on anything else. */
uint64_t spool_seg_name_seq(const char *name);
/* Sorted list of segment seqs in a lane dir (malloc'd in *out); count or -errno. */
int spool_seg_list(const char *lane_dir, uint64_t **out);
/* Lanes present under dir as a bitmap count; fills lanes[] (cap SPOOL_LANES_MAX), returns count or -errno. */
int spool_lane_list(const char *dir, unsigned *lanes);

#endif
