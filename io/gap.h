/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_GAP_H
#define DS_IO_GAP_H

/*
 * Synchronization-gap dedup (RFC 1047; issue 16).
 *
 * A message is AT RISK when its 250 was queued but the client never showed
 * that it read it: the connection closed, reset or timed out before the
 * client sent one more byte after the 250 had gone out (bytes that arrived
 * before the send completed prove nothing). Its fingerprint (envelope
 * sender, recipients, size, XXH3-128 of the bytes as received) goes into
 * one server-wide set and, durably, into an AT_RISK gap record in the
 * worker's lane. A later transaction on any worker whose envelope matches
 * is compared byte for byte with the stored copy as its data arrives; a
 * full match (same length, same bytes, same hash) is answered
 * "250 2.0.0 Ok: already queued as ORIGINAL" and not stored. When that
 * reply is confirmed read, a CLEARED record ends the entry.
 *
 * Two parts: the set and the fingerprint helpers (pure, unit-tested:
 * tests/gap/test_gap_set.c), and the glue conn.c calls (io_gap_on_*).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"
#include "spool_fetch.h"

#define IO_GAP_ENTRIES_DEFAULT 65536u /* --gap-dedup-entries */
#define IO_GAP_ENTRIES_MAX     (1u << 24)
#define IO_GAP_CAND_MAX	       4u	    /* stored copies one transaction is compared with at once */
#define IO_GAP_PEND_MAX	       256u	    /* gap records per worker waiting for lane room */
#define IO_GAP_HEAD_BYTES      1024u	    /* the message's first bytes, hashed into the set's key */
#define IO_GAP_COOKIE_BIT      (1ull << 62) /* settled() of a gap record (conn cookies stay below) */
/* --reclaim: a message is kept this long after its 250 is queued, until its fate is known. */
#define IO_GAP_KEEP_PROVISIONAL_US (600ll * 1000000)

/* ---- the server-wide set ---- */

struct io_gap;

struct io_gap_cand {
	uint32_t slot; /* where it is in the set (io_gap_remove) */
	uint64_t id;   /* the original message */
	bool at_risk;  /* false: --gap-dedup-all entry (its 250 was confirmed) */
	struct spool_gap_fp fp;
};

struct io_gap_stats {
	uint64_t entries;  /* live entries */
	uint64_t at_risk;  /* of which at risk */
	uint64_t full;	   /* inserts refused: the set was full of live at-risk entries */
	uint64_t evicted;  /* --gap-dedup-all entries dropped to make room */
	uint64_t capacity; /* entries_max */
};

/* entries_max: 1 .. IO_GAP_ENTRIES_MAX. 0 or -errno. Memory: 192 bytes per entry, touched as used. */
int io_gap_create(struct io_gap **out, uint32_t entries_max);
void io_gap_destroy(struct io_gap *g);
/*
 * Insert message id (or upgrade its entry: at_risk wins, the later expiry
 * wins). When full: expired entries go, then the oldest --gap-dedup-all
 * entry; if every entry is a live at-risk one, -ENOSPC and nothing is
 * inserted (that message is simply never suppressed against: store, never
 * guess).
 */
int io_gap_insert(struct io_gap *g, uint64_t id, const struct spool_gap_fp *fp, int64_t expires_us,
		  bool at_risk);
/*
 * Entries that a new message with fingerprint q (sender_digest,
 * head_hash, env_digest, rcpt_count, rcpt_h/nrh) may be a retry of, not
 * expired at now_us: same sender and head, and the same recipients, or
 * (both with at most 8 recipients) q's recipients a subset of the
 * entry's (an LMTP client retries those it saw no reply for). Returns
 * how many there are; the newest min(that, cap) are copied to out,
 * newest first. Lock-free (one relaxed load) when the set is empty: the
 * ingest path's only cost then.
 */
unsigned io_gap_lookup(struct io_gap *g, const struct spool_gap_fp *q, int64_t now_us,
		       struct io_gap_cand *out, unsigned cap);
/* Drop entry (slot, id) if it is still that one: true when dropped. */
bool io_gap_remove(struct io_gap *g, uint32_t slot, uint64_t id);
/* Drop every entry of message id (recovery applying CLEARED records): count dropped. */
unsigned io_gap_remove_id(struct io_gap *g, uint64_t id);
void io_gap_expire(struct io_gap *g, int64_t now_us);
/*
 * Compaction moving a kept message (spool_compact.h, ops->gap and moved):
 * get the at-risk entry of message id (its fingerprint and expiry: 0 or
 * -ENOENT), and point its stored copy at (lane, seq, off). Connections
 * comparing a retry with the old copy hold it mapped (spool_fetch), so
 * they finish on it even after its segment is reclaimed.
 */
int io_gap_get(struct io_gap *g, uint64_t id, struct spool_gap_fp *fp, int64_t *expires_us);
void io_gap_relocate(struct io_gap *g, uint64_t id, unsigned lane, uint64_t seq, uint64_t off);
void io_gap_stats(struct io_gap *g, struct io_gap_stats *st);

/* ---- fingerprint helpers ---- */

/*
 * Envelope digest: XXH3-64 of the sender combined with the recipients as
 * an order-independent sum (a retry may list them in another order) and
 * their count. Exact octets: a retry sends the same strings.
 */
uint64_t io_gap_rcpt_hash(const char *addr);
uint64_t io_gap_env_digest(const char *mail_from, uint64_t rcpt_sum, uint32_t rcpt_count);
uint64_t io_gap_sender_digest(const char *mail_from);

/* Streaming XXH3-128 of the bytes as received. */
struct io_gap_hash {
	void *st; /* XXH3_state_t, allocated once per connection */
	uint64_t size;
};
int io_gap_hash_reset(struct io_gap_hash *h);
void io_gap_hash_update(struct io_gap_hash *h, const void *buf, size_t len);
void io_gap_hash_final(const struct io_gap_hash *h, uint64_t *lo, uint64_t *hi);
void io_gap_hash_free(struct io_gap_hash *h);

/* ---- glue for io/conn.c (per connection, per worker) ---- */

struct io_worker;
struct io_conn;
struct ds_envelope;

enum io_gap_ack {
	IO_GAP_ACK_NONE = 0, /* nothing owed, or confirmed */
	IO_GAP_ACK_QUEUED,   /* a 250 for a stored message (or a retry) is queued, not all sent */
	IO_GAP_ACK_SENT,     /* ... sent: the next byte from the client confirms it */
};

#define IO_GAP_ACKS_MAX 4u /* unconfirmed 250s tracked per connection (pipelined BDAT) */

struct io_gap_ack_ent {
	uint8_t state;	   /* enum io_gap_ack */
	bool dup;	   /* it said "already queued as" id (set entry slot) */
	bool cand_at_risk; /* ... and that entry was an at-risk one */
	uint64_t id;
	uint32_t slot;
	struct spool_gap_fp fp;
};

struct io_gap_conn {
	struct io_gap_hash hash;
	bool in_data;
	bool hdr_seen;	/* the first data_write (our Received: header) went by */
	bool looked_up; /* the head is complete and the set was asked */
	uint32_t hdr_len;
	uint32_t head_len;
	uint64_t head_hash;
	uint8_t head[IO_GAP_HEAD_BYTES]; /* the first bytes as received, kept until the lookup */
	uint64_t rcpt_sum;
	uint32_t rcpt_count;
	uint64_t rcpt_h[8]; /* the first 8 recipients' hashes (all of them when there are <= 8) */
	uint64_t env_digest;
	uint64_t sender_digest;
	unsigned ncand;
	struct io_gap_cand cand[IO_GAP_CAND_MAX];
	bool cand_same[IO_GAP_CAND_MAX]; /* bytes equal so far */
	bool cand_open[IO_GAP_CAND_MAX]; /* fm holds the stored copy */
	struct spool_fetch_msg fm[IO_GAP_CAND_MAX];
	int match;		 /* candidate a finished message matched, -1 none */
	struct spool_gap_fp cur; /* the message in commit */
	bool cur_ok;		 /* cur is the fingerprint of the message being committed */
	/* 250s of this connection not confirmed read yet, oldest first. */
	struct io_gap_ack_ent acks[IO_GAP_ACKS_MAX];
	unsigned nacks;
};

/* The worker's part; NULL (everything a no-op) when the feature is off. */
int io_gap_worker_init(struct io_worker *w);
void io_gap_worker_fini(struct io_worker *w);

void io_gap_on_begin(struct io_conn *c);
void io_gap_on_write(struct io_conn *c, const void *buf, size_t len);
/* End of data: true when it is a proven retry (the caller stores nothing and answers with io_gap_dup_id). */
bool io_gap_on_commit(struct io_conn *c, const struct ds_envelope *env);
uint64_t io_gap_dup_id(const struct io_conn *c);
void io_gap_on_abort(struct io_conn *c);
/* The commit is durable: its 250 is queued now (or never sent: the connection is closing). */
void io_gap_on_acked(struct io_conn *c, uint64_t id, uint64_t seq, uint64_t off);
/* The "already queued" reply of a proven retry is queued. */
void io_gap_on_dup_replied(struct io_conn *c);
/* Every reply queued so far has been handed to the kernel. */
void io_gap_on_sent(struct io_conn *c);
/* Bytes from the client arrived (not bytes kept from before). */
void io_gap_on_input(struct io_conn *c);
/* The connection goes away: an unconfirmed 250 makes its message at risk. */
void io_gap_on_close(struct io_conn *c);
void io_gap_conn_free(struct io_conn *c);

void io_gap_settled(struct io_worker *w, uint64_t cookie, int res);
/* Stopping with no connection left: the last watermark staged (true), or not yet possible (false). */
bool io_gap_quiesce(struct io_worker *w);
/* Recovery: an AT_RISK record the worker of its lane writes at its first tick. 0 or -ENOMEM. */
int io_gap_owe(struct io_gap *g, const struct spool_gap_rec *rec);
/*
 * The fingerprint of a stored message (recovery's at-risk tail): envelope
 * from its commit record, our trace header skipped, XXH3-128 of the rest.
 * scratch: cap >= 4096 bytes. 0, -EBADMSG, or spool_fetch's errors.
 */
int io_gap_fp_stored(struct spool_fetch *f, unsigned lane, uint64_t seq, uint64_t off, uint64_t id,
		     uint8_t *scratch, size_t cap, struct spool_gap_fp *out);
/* Once per tick: records waiting for lane room, expiry, gauges. */
void io_gap_tick(struct io_worker *w, int64_t now_ms);

#endif
