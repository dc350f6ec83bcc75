/* SPDX-License-Identifier: MIT */
/*
 * Format 2 delivery records: the outcome and abort codecs (round trip,
 * limits and cuts, truncation, every flipped bit caught by the record CRC)
 * and version handling of segment headers.
 */
#include "spool.h"
#include "spool_format.h"
#include "test_util.h"

static uint8_t seg[8u << 20]; /* room for the largest outcome record */

static void test_codec_round_trip(void)
{
	struct spool_outcome_rcpt in[3] = {
		{.idx = 0, .state = SPOOL_RCPT_DELIVERED, .code = 250, .esc = "2.0.0", .text = "Ok: queued"},
		{.idx = 7, .state = SPOOL_RCPT_DEFERRED, .code = 451, .esc = "4.4.1", .text = "try later"},
		{.idx = 19999,
		 .state = SPOOL_RCPT_ATTEMPT,
		 .possible_duplicate = true,
		 .esc = NULL,
		 .text = ""},
	};
	struct spool_outcome o = {.id = 0x0100000001000003ull,
				  .attempt = 3,
				  .at_us = 1700000000123456ll,
				  .next_attempt_us = -5,
				  .dsn_id = 0x0200000005000001ull,
				  .hop = "lmtp:/run/x.sock",
				  .rcpt_count = 3,
				  .rcpt = in},
			     d;
	struct spool_outcome_iter it;
	struct spool_outcome_rcpt e;
	struct spool_rec r;
	uint64_t off = SPOOL_SEG_DATA_OFF;
	size_t n = spool_outcome_size(&o);

	CHECK(n > SPOOL_OUTCOME_FIXED);
	memset(seg, 0, 65536);
	spool_outcome_encode(seg + off + SPOOL_REC_HDR_SIZE, &o);
	spool_rec_encode(seg + off, SPOOL_REC_OUTCOME, (uint32_t)n, o.id, 999, 4096);
	CHECK(spool_rec_check(seg, 65536, 999, off, &r));
	CHECK(r.type == SPOOL_REC_OUTCOME && r.len == n && r.txn_id == o.id);
	CHECK(spool_outcome_decode(r.payload, r.len, &d, &it) == 0);
	CHECK(d.id == 0 && d.rcpt == NULL);
	CHECK(d.attempt == 3 && d.at_us == o.at_us && d.next_attempt_us == -5 && d.dsn_id == o.dsn_id);
	CHECK(!strcmp(d.hop, o.hop) && d.rcpt_count == 3);
	for (int i = 0; i < 3; i++) {
		CHECK(spool_outcome_entry_next(&it, &e) == 1);
		CHECK(e.idx == in[i].idx && e.state == in[i].state && e.code == in[i].code);
		CHECK(e.possible_duplicate == in[i].possible_duplicate);
		CHECK(!strcmp(e.esc, in[i].esc ? in[i].esc : "") && !strcmp(e.text, in[i].text));
	}
	CHECK(spool_outcome_entry_next(&it, &e) == 0);
	CHECK(spool_outcome_entry_next(&it, &e) == 0);

	/* Every flipped bit of header or payload fails the record CRC. */
	for (uint64_t bit = 0; bit < (SPOOL_REC_HDR_SIZE + n) * 8; bit++) {
		seg[off + bit / 8] ^= (uint8_t)(1u << (bit % 8));
		CHECK(!spool_rec_check(seg, 65536, 999, off, &r));
		seg[off + bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	/* Truncated payloads never decode; nor does one with a byte too many. */
	for (uint32_t k = 0; k < n; k++)
		CHECK(spool_outcome_decode(seg + off + SPOOL_REC_HDR_SIZE, k, &d, &it) == -EBADMSG);
	CHECK(spool_outcome_decode(seg + off + SPOOL_REC_HDR_SIZE, (uint32_t)n + 1, &d, &it) == -EBADMSG);
	/* A record cut by the segment end is not a record. */
	CHECK(!spool_rec_check(seg, off + SPOOL_REC_HDR_SIZE + n - 1, 999, off, &r));
	printf("outcome codec round trip, CRC, truncation: ok (%zu bytes)\n", n);
}

static void test_codec_limits(void)
{
	char longtext[1000], longesc[40];
	struct spool_outcome_rcpt e1 = {.idx = 1, .state = SPOOL_RCPT_FAILED, .code = 550};
	struct spool_outcome o = {.attempt = 1, .rcpt_count = 1, .rcpt = &e1}, d;
	struct spool_outcome_iter it;
	struct spool_outcome_rcpt e;
	static struct spool_outcome_rcpt many[SPOOL_OUTCOME_RCPTS_MAX + 1];
	static uint8_t buf[SPOOL_OUTCOME_MAX + 64];
	size_t n;

	memset(longtext, 'x', sizeof(longtext) - 1);
	longtext[sizeof(longtext) - 1] = 0;
	memset(longesc, '5', sizeof(longesc) - 1);
	longesc[sizeof(longesc) - 1] = 0;
	e1.text = longtext;
	e1.esc = longesc;
	o.hop = longtext;
	n = spool_outcome_size(&o);
	CHECK(n == SPOOL_OUTCOME_FIXED + 5 + SPOOL_OUTCOME_HOP_MAX + 4 + SPOOL_OUTCOME_ENTRY_MAX);
	spool_outcome_encode(buf, &o);
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == 0);
	CHECK(strlen(d.hop) == SPOOL_OUTCOME_HOP_MAX);
	CHECK(spool_outcome_entry_next(&it, &e) == 1);
	CHECK(strlen(e.text) == SPOOL_OUTCOME_TEXT_MAX && strlen(e.esc) == SPOOL_OUTCOME_ESC_MAX);

	/* Invalid input is refused by the encoder's size. */
	e1.state = SPOOL_RCPT_PENDING;
	CHECK(spool_outcome_size(&o) == 0);
	e1.state = 9;
	CHECK(spool_outcome_size(&o) == 0);
	e1.state = SPOOL_RCPT_FAILED;
	e1.idx = SPOOL_RCPT_MAX;
	CHECK(spool_outcome_size(&o) == 0);
	e1.idx = 0;
	o.rcpt_count = 0;
	CHECK(spool_outcome_size(&o) == 0);

	/* The largest record: every recipient, longest strings; one more is refused. */
	for (uint32_t i = 0; i <= SPOOL_OUTCOME_RCPTS_MAX; i++)
		many[i] = (struct spool_outcome_rcpt){.idx = i % SPOOL_RCPT_MAX,
						      .state = SPOOL_RCPT_DEFERRED,
						      .code = 421,
						      .esc = longesc,
						      .text = longtext};
	o.rcpt = many;
	o.rcpt_count = SPOOL_OUTCOME_RCPTS_MAX;
	n = spool_outcome_size(&o);
	CHECK(n == SPOOL_OUTCOME_MAX);
	spool_outcome_encode(buf, &o);
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == 0 &&
	      d.rcpt_count == SPOOL_OUTCOME_RCPTS_MAX);
	for (uint32_t i = 0; i < SPOOL_OUTCOME_RCPTS_MAX; i++)
		CHECK(spool_outcome_entry_next(&it, &e) == 1 && e.idx == i && e.code == 421);
	CHECK(spool_outcome_entry_next(&it, &e) == 0);
	o.rcpt_count = SPOOL_OUTCOME_RCPTS_MAX + 1;
	CHECK(spool_outcome_size(&o) == 0);

	/* A decoder refuses what an encoder never writes: bad state, long strings, zero entries. */
	o.rcpt_count = 1;
	o.hop = NULL;
	many[0].text = "t";
	many[0].esc = "";
	n = spool_outcome_size(&o);
	spool_outcome_encode(buf, &o);
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == 0);
	buf[SPOOL_OUTCOME_FIXED + 5 + 4 + 4] = SPOOL_RCPT_PENDING; /* hop "", count, idx, state */
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == -EBADMSG);
	buf[SPOOL_OUTCOME_FIXED + 5 + 4 + 4] = SPOOL_RCPT_DEFERRED;
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == 0);
	buf[SPOOL_OUTCOME_FIXED + 5] = 0; /* entry count 0 */
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == -EBADMSG);
	buf[SPOOL_OUTCOME_FIXED + 5] = 1;
	buf[SPOOL_OUTCOME_FIXED + 5 + 4 + 8] = 16; /* esc length above SPOOL_OUTCOME_ESC_MAX */
	CHECK(spool_outcome_decode(buf, (uint32_t)n, &d, &it) == -EBADMSG);
	printf("outcome limits (cuts, %u entries, %u bytes): ok\n", SPOOL_OUTCOME_RCPTS_MAX,
	       (unsigned)SPOOL_OUTCOME_MAX);
}

static void test_abort_codec(void)
{
	struct spool_abort a = {.reason = ENOSPC, .commit_seq = 12, .commit_off = 8192}, b;
	struct spool_rec r;
	uint64_t off = SPOOL_SEG_DATA_OFF;

	memset(seg, 0, 16384);
	spool_abort_encode(seg + off + SPOOL_REC_HDR_SIZE, &a);
	spool_rec_encode(seg + off, SPOOL_REC_ABORT, SPOOL_ABORT_SIZE, 0x42, 7, 0);
	CHECK(spool_rec_check(seg, 16384, 7, off, &r));
	CHECK(r.type == SPOOL_REC_ABORT && r.txn_id == 0x42);
	CHECK(spool_abort_decode(r.payload, r.len, &b) == 0);
	CHECK(b.reason == ENOSPC && b.commit_seq == 12 && b.commit_off == 8192);
	CHECK(spool_abort_decode(r.payload, r.len - 1, &b) == -EBADMSG);
	for (uint64_t bit = 0; bit < (SPOOL_REC_HDR_SIZE + SPOOL_ABORT_SIZE) * 8; bit++) {
		seg[off + bit / 8] ^= (uint8_t)(1u << (bit % 8));
		CHECK(!spool_rec_check(seg, 16384, 7, off, &r));
		seg[off + bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	/* An abort record longer than its payload is not one. */
	spool_rec_encode(seg + off, SPOOL_REC_ABORT, SPOOL_ABORT_SIZE + 8, 0x42, 7, 0);
	CHECK(!spool_rec_check(seg, 16384, 7, off, &r));
	/* Unknown types never parse. */
	spool_rec_encode(seg + off, 5, SPOOL_ABORT_SIZE, 0x42, 7, 0);
	CHECK(!spool_rec_check(seg, 16384, 7, off, &r));
	printf("abort codec: ok\n");
}

struct scan_count {
	unsigned chunks, commits, outcomes, aborts;
};

static int count_rec(void *ctx, const struct spool_rec *r)
{
	struct scan_count *c = ctx;

	c->chunks += r->type == SPOOL_REC_CHUNK;
	c->commits += r->type == SPOOL_REC_COMMIT;
	c->outcomes += r->type == SPOOL_REC_OUTCOME;
	c->aborts += r->type == SPOOL_REC_ABORT;
	return 0;
}

/* A scanner hands delivery records out only to those who ask; versions 1 and 2 read, 3 refused. */
static void test_scan_and_versions(void)
{
	struct spool_outcome_rcpt e1 = {.idx = 0, .state = SPOOL_RCPT_DELIVERED, .code = 250};
	struct spool_outcome o = {.attempt = 1, .rcpt_count = 1, .rcpt = &e1};
	struct spool_abort a = {.reason = EIO};
	struct spool_scan_ops old = {.rec = count_rec}, v2 = {.rec = count_rec, .delivery = true};
	struct scan_count c1 = {0}, c2 = {0};
	struct spool_seg_hdr h = {.lane = 1, .seq = 2, .epoch = 7, .segment_size = 1 << 20}, g;
	uint8_t hb[SPOOL_SEG_HDR_SIZE];
	uint64_t off = SPOOL_SEG_DATA_OFF;
	size_t n;

	memset(seg, 0, 65536);
	memcpy(seg + off + SPOOL_REC_HDR_SIZE, "body", 4);
	spool_rec_encode(seg + off, SPOOL_REC_CHUNK, 4, 0x42, 7, 0);
	off += spool_rec_total(4);
	n = spool_outcome_size(&o);
	spool_outcome_encode(seg + off + SPOOL_REC_HDR_SIZE, &o);
	spool_rec_encode(seg + off, SPOOL_REC_OUTCOME, (uint32_t)n, 0x41, 7, 0);
	off += spool_rec_total(n);
	spool_abort_encode(seg + off + SPOOL_REC_HDR_SIZE, &a);
	spool_rec_encode(seg + off, SPOOL_REC_ABORT, SPOOL_ABORT_SIZE, 0x40, 7, 0);
	CHECK(spool_seg_scan(seg, 65536, 7, SPOOL_SEG_DATA_OFF, &old, &c1) == 0);
	CHECK(c1.chunks == 1 && c1.outcomes == 0 && c1.aborts == 0);
	CHECK(spool_seg_scan(seg, 65536, 7, SPOOL_SEG_DATA_OFF, &v2, &c2) == 0);
	CHECK(c2.chunks == 1 && c2.outcomes == 1 && c2.aborts == 1);

	CHECK(SPOOL_FORMAT_VERSION == 2 && SPOOL_FORMAT_VERSION_MIN == 1);
	for (uint32_t v = 0; v <= 3; v++) {
		h.version = v;
		spool_seg_hdr_encode(hb, &h);
		int rc = spool_seg_hdr_decode(hb, sizeof(hb), &g);
		CHECK(rc == (v == 0 ? -EBADMSG : v <= 2 ? 0 : -EPROTONOSUPPORT));
		CHECK(rc || g.version == v);
	}
	printf("scan opt-in, segment versions 1 and 2 read, 3 refused: ok\n");
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	test_codec_round_trip();
	test_codec_limits();
	test_abort_codec();
	test_scan_and_versions();
	return 0;
}
