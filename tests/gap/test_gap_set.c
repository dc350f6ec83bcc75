/* SPDX-License-Identifier: MIT */
/*
 * The pure parts of gap dedup (issue 16): the server-wide set (io/gap.c:
 * insert, lookup newest first, remove, expiry, the bound and what happens
 * at it), the envelope digest, the streaming hash, and the gap record's
 * tail codec (spool/spool_gap.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_clock.h"
#include "gap.h"
#include "spool_format.h"
#include "spool_gap.h"

static int failures;
#define CHECK(x)                                                                                             \
	do {                                                                                                 \
		if (!(x)) {                                                                                  \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #x);                \
			failures++;                                                                          \
		}                                                                                            \
	} while (0)

static struct spool_gap_fp fp_of(uint64_t digest, int64_t at)
{
	return (struct spool_gap_fp){.env_digest = digest,
				     .sender_digest = digest,
				     .rcpt_count = 1,
				     .size = 10,
				     .received_at_us = at};
}

/* A lookup for envelope digest d (sender digest d), rcpt count n, head h. */
static unsigned look(struct io_gap *g, uint64_t d, uint32_t n, uint64_t h, int64_t now, struct io_gap_cand *c)
{
	struct spool_gap_fp q = {.env_digest = d, .sender_digest = d, .rcpt_count = n, .head_hash = h};
	return io_gap_lookup(g, &q, now, c, IO_GAP_CAND_MAX);
}

static void test_set(void)
{
	struct io_gap *g;
	struct io_gap_cand c[IO_GAP_CAND_MAX];
	struct io_gap_stats st;
	int64_t now = ds_wall_us(), exp = now + 60 * 1000000ll;

	CHECK(io_gap_create(&g, 0) == -EINVAL);
	CHECK(io_gap_create(&g, 8) == 0);
	/* Empty: the lock-free path. */
	CHECK(look(g, 42, 1, 0, now, c) == 0);
	CHECK(io_gap_insert(g, 1,
			    &(struct spool_gap_fp){.env_digest = 42, .sender_digest = 42, .rcpt_count = 1},
			    now - 1, true) == -EINVAL); /* already expired */
	for (uint64_t id = 1; id <= 6; id++) {
		struct spool_gap_fp fp = fp_of(42, (int64_t)id);
		CHECK(io_gap_insert(g, id, &fp, exp, true) == 0);
	}
	struct spool_gap_fp other = fp_of(43, 0);
	CHECK(io_gap_insert(g, 7, &other, exp, true) == 0);
	/* Same envelope, another head (the message's first 1024 bytes): no candidate. */
	CHECK(look(g, 42, 1, 7, now, c) == 0);
	/* Same digest, other recipient count: no candidate. */
	CHECK(look(g, 42, 2, 0, now, c) == 0);
	/* Six candidates, the newest IO_GAP_CAND_MAX handed out, newest first. */
	unsigned n = look(g, 42, 1, 0, now, c);
	CHECK(n == 6);
	CHECK(c[0].id == 6 && c[1].id == 5 && c[2].id == 4 && c[3].id == 3);
	CHECK(c[0].at_risk);
	/* Remove by (slot, id); a stale slot does nothing. */
	CHECK(io_gap_remove(g, c[0].slot, 6));
	CHECK(!io_gap_remove(g, c[0].slot, 6));
	CHECK(look(g, 42, 1, 0, now, c) == 5);
	/* Re-insert of a known id upgrades, never duplicates. */
	struct spool_gap_fp fp5 = fp_of(42, 5);
	CHECK(io_gap_insert(g, 5, &fp5, exp + 1, true) == 0);
	io_gap_stats(g, &st);
	CHECK(st.entries == 6 && st.at_risk == 6 && st.capacity == 8);
	/* Fill to the bound with at-risk entries: the next is refused, never evicts one. */
	struct spool_gap_fp f8 = fp_of(44, 0), f9 = fp_of(45, 0), f10 = fp_of(46, 0);
	CHECK(io_gap_insert(g, 8, &f8, exp, true) == 0);
	CHECK(io_gap_insert(g, 9, &f9, exp, true) == 0);
	CHECK(io_gap_insert(g, 10, &f10, exp, true) == -ENOSPC);
	io_gap_stats(g, &st);
	CHECK(st.entries == 8 && st.full == 1);
	/* --gap-dedup-all entries are evicted (oldest first) to make room for at-risk ones. */
	CHECK(io_gap_remove_id(g, 9) == 1);
	CHECK(io_gap_insert(g, 11, &f9, exp, false) == 0);
	CHECK(io_gap_insert(g, 10, &f10, exp, true) == 0);
	io_gap_stats(g, &st);
	CHECK(st.evicted == 1 && st.entries == 8 && st.at_risk == 8);
	CHECK(look(g, 45, 1, 0, now, c) == 0);
	/* Expiry: lookups ignore them at once; expire frees them. */
	CHECK(look(g, 42, 1, 0, exp + 10, c) == 0);
	io_gap_expire(g, exp + 10);
	io_gap_stats(g, &st);
	CHECK(st.entries == 0 && st.at_risk == 0);
	io_gap_destroy(g);
}

static void test_subset(void)
{
	struct io_gap *g;
	struct io_gap_cand c[IO_GAP_CAND_MAX];
	int64_t now = ds_wall_us(), exp = now + 60 * 1000000ll;
	struct spool_gap_fp e = {.env_digest = 1,
				 .sender_digest = 7,
				 .head_hash = 9,
				 .rcpt_count = 3,
				 .nrh = 3,
				 .rcpt_h = {100, 200, 300}};
	CHECK(io_gap_create(&g, 16) == 0);
	CHECK(io_gap_insert(g, 5, &e, exp, true) == 0);
	struct spool_gap_fp q = {.env_digest = 2,
				 .sender_digest = 7,
				 .head_hash = 9,
				 .rcpt_count = 2,
				 .nrh = 2,
				 .rcpt_h = {300, 100}};
	CHECK(io_gap_lookup(g, &q, now, c, IO_GAP_CAND_MAX) == 1 && c[0].id == 5); /* a subset */
	q.rcpt_h[1] = 400;
	CHECK(io_gap_lookup(g, &q, now, c, IO_GAP_CAND_MAX) == 0); /* one recipient is new */
	q.rcpt_h[1] = 100;
	q.head_hash = 8;
	CHECK(io_gap_lookup(g, &q, now, c, IO_GAP_CAND_MAX) == 0); /* another head */
	q.head_hash = 9;
	q.sender_digest = 6;
	CHECK(io_gap_lookup(g, &q, now, c, IO_GAP_CAND_MAX) == 0); /* another sender */
	struct spool_gap_fp sup = {.env_digest = 3,
				   .sender_digest = 7,
				   .head_hash = 9,
				   .rcpt_count = 4,
				   .nrh = 4,
				   .rcpt_h = {100, 200, 300, 400}};
	CHECK(io_gap_lookup(g, &sup, now, c, IO_GAP_CAND_MAX) == 0); /* a superset */
	io_gap_destroy(g);
}

static void test_digest(void)
{
	const char *r1 = "a@x", *r2 = "b@y";
	uint64_t s12 = io_gap_rcpt_hash(r1) + io_gap_rcpt_hash(r2);
	uint64_t s21 = io_gap_rcpt_hash(r2) + io_gap_rcpt_hash(r1);
	CHECK(io_gap_env_digest("s@z", s12, 2) == io_gap_env_digest("s@z", s21, 2));
	CHECK(io_gap_env_digest("s@z", s12, 2) != io_gap_env_digest("t@z", s12, 2));
	CHECK(io_gap_env_digest("s@z", io_gap_rcpt_hash(r1), 1) !=
	      io_gap_env_digest("s@z", io_gap_rcpt_hash(r2), 1));
	CHECK(io_gap_env_digest("", s12, 2) != io_gap_env_digest("s@z", s12, 2));

	/* Streaming hash: the split does not matter, the bytes do. */
	struct io_gap_hash a = {0}, b = {0};
	uint64_t lo1, hi1, lo2, hi2;
	static const char msg[] = "Subject: x\r\n\r\nbody\r\n";
	CHECK(io_gap_hash_reset(&a) == 0 && io_gap_hash_reset(&b) == 0);
	io_gap_hash_update(&a, msg, sizeof(msg) - 1);
	io_gap_hash_update(&b, msg, 5);
	io_gap_hash_update(&b, msg + 5, sizeof(msg) - 6);
	io_gap_hash_final(&a, &lo1, &hi1);
	io_gap_hash_final(&b, &lo2, &hi2);
	CHECK(lo1 == lo2 && hi1 == hi2 && a.size == b.size && a.size == sizeof(msg) - 1);
	CHECK(io_gap_hash_reset(&b) == 0);
	io_gap_hash_update(&b, "Subject: y\r\n\r\nbody\r\n", sizeof(msg) - 1);
	io_gap_hash_final(&b, &lo2, &hi2);
	CHECK(lo1 != lo2 || hi1 != hi2);
	io_gap_hash_free(&a);
	io_gap_hash_free(&b);
}

static void test_codec(void)
{
	uint8_t buf[256];
	struct spool_gap_rec g = {.id = 0x0100000001000007ull,
				  .kind = SPOOL_GAP_REC_AT_RISK,
				  .expires_us = 1234567,
				  .fp = {.env_digest = 1,
					 .rcpt_count = 3,
					 .hdr_len = 150,
					 .size = 4096,
					 .hash_lo = 5,
					 .hash_hi = 6,
					 .lane = 1,
					 .seq = 7,
					 .off = 8192,
					 .received_at_us = 99,
					 .head_hash = 0x1234,
					 .sender_digest = 0x5678,
					 .nrh = 3,
					 .rcpt_h = {1, 2, 3}}};
	struct spool_gap_rec d;
	struct spool_gap_fixed f;
	size_t n = spool_gap_size(&g);
	CHECK(n == SPOOL_GAP_FIXED + SPOOL_GAP_TAIL_V1 + 3 * 8);
	spool_gap_encode(buf, &g);
	/* The fixed prefix reclamation and compaction read. */
	CHECK(spool_gap_fixed_decode(buf, (uint32_t)n, &f) == 0);
	CHECK(f.kind == SPOOL_GAP_AT_RISK && f.tail == SPOOL_GAP_TAIL_V1 + 24 && f.expires_us == 1234567);
	CHECK(spool_gap_decode(buf, (uint32_t)n, g.id, &d) == 0);
	CHECK(memcmp(&d.fp, &g.fp, sizeof(g.fp)) == 0 && d.id == g.id && d.expires_us == g.expires_us);
	/* Bad: unknown tail version, short, recipient count 0. */
	buf[SPOOL_GAP_FIXED] = 2;
	CHECK(spool_gap_decode(buf, (uint32_t)n, g.id, &d) == -EBADMSG);
	buf[SPOOL_GAP_FIXED] = 1;
	CHECK(spool_gap_decode(buf, (uint32_t)n - 1, g.id, &d) == -EBADMSG);
	struct spool_gap_rec c = {.id = 9, .kind = SPOOL_GAP_REC_CLEARED};
	CHECK(spool_gap_size(&c) == SPOOL_GAP_FIXED);
	spool_gap_encode(buf, &c);
	CHECK(spool_gap_decode(buf, SPOOL_GAP_FIXED, 9, &d) == 0 && d.kind == SPOOL_GAP_REC_CLEARED &&
	      d.expires_us == 0);
}

int main(void)
{
	test_set();
	test_subset();
	test_digest();
	test_codec();
	if (failures) {
		fprintf(stderr, "test_gap_set: %d failure(s)\n", failures);
		return 1;
	}
	printf("test_gap_set: ok\n");
	return 0;
}
