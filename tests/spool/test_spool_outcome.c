/* SPDX-License-Identifier: MIT */
/*
 * Format 2 delivery records: the outcome and abort codecs (round trip,
 * limits and cuts, truncation, every flipped bit caught by the record CRC)
 * and version handling of segment headers; then the lane writing them
 * through the storage simulator, buffered and direct: outcomes settled
 * once and readable, -EAGAIN when staging is full, spool_txn_location;
 * abort records after a failed flush (or DSYNC write), durable before the
 * failed commit is settled; crashes at every write boundary with commits
 * and outcomes interleaved.
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sim_storage.h"
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
	spool_rec_encode(seg + off, SPOOL_REC_TYPE_LAST + 1, SPOOL_ABORT_SIZE, 0x42, 7, 0);
	CHECK(!spool_rec_check(seg, 16384, 7, off, &r));
	printf("abort codec: ok\n");
}

static void test_fixed_v3(void)
{
	uint8_t b[64];
	struct spool_op_fixed o = {.action = SPOOL_OP_DELETE,
				   .uid = 0,
				   .at_us = 1234567,
				   .pid = 42,
				   .tail = 8},
			      p;
	struct spool_gap_fixed g = {.kind = SPOOL_GAP_AT_RISK, .tail = 40, .expires_us = 99}, h;

	spool_op_fixed_encode(b, &o);
	CHECK(spool_op_fixed_decode(b, SPOOL_OP_FIXED + 8, &p) == 0);
	CHECK(p.action == o.action && p.at_us == o.at_us && p.pid == 42 && p.tail == 8);
	CHECK(spool_op_fixed_decode(b, SPOOL_OP_FIXED + 7, &p) == -EBADMSG); /* tail mismatch */
	CHECK(spool_op_fixed_decode(b, SPOOL_OP_FIXED - 1, &p) == -EBADMSG);
	o.action = 9;
	spool_op_fixed_encode(b, &o);
	CHECK(spool_op_fixed_decode(b, SPOOL_OP_FIXED + 8, &p) == -EBADMSG);
	spool_gap_fixed_encode(b, &g);
	CHECK(spool_gap_fixed_decode(b, SPOOL_GAP_FIXED + 40, &h) == 0);
	CHECK(h.kind == SPOOL_GAP_AT_RISK && h.expires_us == 99 && h.tail == 40 && h.reserved == 0);
	CHECK(spool_gap_fixed_decode(b, SPOOL_GAP_FIXED, &h) == -EBADMSG);
	printf("format 3 fixed parts: ok\n");
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

	CHECK(SPOOL_FORMAT_VERSION == 5 && SPOOL_FORMAT_VERSION_MIN == 1);
	for (uint32_t v = 0; v <= 6; v++) {
		h.version = v;
		h.flags = SPOOL_SEG_F_RECYCLED;
		spool_seg_hdr_encode(hb, &h);
		int rc = spool_seg_hdr_decode(hb, sizeof(hb), &g);
		CHECK(rc == (v == 0 ? -EBADMSG : v <= 5 ? 0 : -EPROTONOSUPPORT));
		CHECK(rc || g.version == v);
		/* Flags mean something from format 5 on (RECYCLED); before, the field is read as 0. */
		CHECK(rc || g.flags == (v >= 5 ? SPOOL_SEG_F_RECYCLED : 0));
		CHECK(rc || spool_seg_recycled(&g) == (v >= 5));
	}
	printf("scan opt-in, segment versions 1 to 5 read (flags from 5), 6 refused: ok\n");
}

/* ---- the lane, through the simulator ---- */

#define NMSG	     120
#define OUT_COOKIE   100000u /* outcome j has cookie OUT_COOKIE + j */
#define NOUT_MAX     4000u
#define SETTLED_NONE 1

static bool direct_mode;
static bool expect_lost; /* failed commits may be settled without an abort record */
static char cur_dir[256];

struct lane_log {
	int commit_res[NMSG], out_res[NOUT_MAX];
	uint64_t id[NMSG];
	bool abort_seen_at_settle[NMSG];
	uint32_t commits_ok, commits_err, outs_ok, outs_err;
};
static struct lane_log lg;
static int report_fd = -1; /* crash runs: the child reports here */

static void cfg_make(struct spool_config *cfg, const char *dir)
{
	spool_config_defaults(cfg);
	cfg->dir = dir;
	cfg->segment_size = 512 * 1024;
	cfg->buffer_size = 256 * 1024;
	cfg->flushes_in_flight_max = 2;
	cfg->io_mode = direct_mode ? SPOOL_IO_DIRECT_NO_ODIRECT : SPOOL_IO_BUFFERED;
}

/* Every valid record of every segment of lane 0, as the files are now (the sim: what is durable). */
static void scan_lane(const char *dir, const struct spool_scan_ops *ops, void *ctx)
{
	char lane_dir[300], path[400];
	uint64_t *seqs;
	int n;

	CHECK(spool_lane_dir_path(lane_dir, sizeof(lane_dir), dir, 0) == 0);
	n = spool_seg_list(lane_dir, &seqs);
	CHECK(n >= 0);
	for (int i = 0; i < n; i++) {
		struct spool_seg_hdr h;
		struct stat st;
		uint8_t *map;
		int fd;

		CHECK(spool_seg_path(path, sizeof(path), dir, 0, seqs[i]) == 0);
		fd = open(path, O_RDONLY);
		CHECK(fd >= 0 && fstat(fd, &st) == 0);
		if (st.st_size < SPOOL_SEG_DATA_OFF) {
			/* The spare thread is creating it (or died doing so): no records yet. */
			close(fd);
			continue;
		}
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		CHECK(map != MAP_FAILED);
		if (spool_seg_hdr_decode(map, (size_t)st.st_size, &h) == 0) {
			CHECK(h.version == SPOOL_FORMAT_VERSION && h.seq == seqs[i]);
			CHECK(spool_seg_scan(map, (uint64_t)st.st_size, h.epoch, SPOOL_SEG_DATA_OFF, ops,
					     ctx) == 0);
		}
		munmap(map, (size_t)st.st_size);
		close(fd);
	}
	free(seqs);
}

struct find_abort {
	uint64_t id;
	struct spool_abort a;
	unsigned n;
};

static int find_abort_rec(void *ctx, const struct spool_rec *r)
{
	struct find_abort *f = ctx;

	if (r->type == SPOOL_REC_ABORT && r->txn_id == f->id) {
		CHECK(spool_abort_decode(r->payload, r->len, &f->a) == 0);
		f->n++;
	}
	return 0;
}

/* Is an abort record for id in the files (durable, in the simulator's model)? */
static unsigned abort_on_disk(const char *dir, uint64_t id, struct spool_abort *a)
{
	static const struct spool_scan_ops ops = {.rec = find_abort_rec, .delivery = true};
	struct find_abort f = {.id = id};

	scan_lane(dir, &ops, &f);
	if (a)
		*a = f.a;
	return f.n;
}

static void rep_line(const char *fmt, unsigned long long a, unsigned long long b, unsigned long long c,
		     unsigned long long d)
{
	char line[128];
	int n = snprintf(line, sizeof(line), fmt, a, b, c, d);

	if (report_fd >= 0)
		CHECK(write(report_fd, line, (size_t)n) == n);
}

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	(void)ctx;
	if (cookie >= OUT_COOKIE) {
		uint64_t j = cookie - OUT_COOKIE;
		CHECK(j < NOUT_MAX && lg.out_res[j] == SETTLED_NONE); /* exactly once */
		lg.out_res[j] = res;
		res ? lg.outs_err++ : lg.outs_ok++;
		if (!res)
			rep_line("O %llu %llu %llu %llu\n", j, 0, 0, 0);
		return;
	}
	CHECK(cookie < NMSG && lg.commit_res[cookie] == SETTLED_NONE);
	lg.commit_res[cookie] = res;
	if (res) {
		/* The 451 goes out only once the refusal is durable. */
		lg.abort_seen_at_settle[cookie] = abort_on_disk(cur_dir, lg.id[cookie], NULL) > 0;
		CHECK(lg.abort_seen_at_settle[cookie] || expect_lost);
		lg.commits_err++;
		rep_line("F %llu %llu %llu %llu\n", cookie, 0, 0, 0);
	} else {
		lg.commits_ok++;
		rep_line("A %llu %llu %llu %llu\n", cookie, 0, 0, 0);
	}
}

/* Outcome j of message id: attempt j + 1 (unique), entries and texts derived from j. */
struct out_buf {
	struct spool_outcome_rcpt e[3];
	char text[3][64], hop[32];
	struct spool_outcome o;
};

static void out_make(struct out_buf *b, uint32_t j, uint64_t id)
{
	uint32_t n = 1 + j % 3;

	snprintf(b->hop, sizeof(b->hop), "lmtp:/run/h%u.sock", j % 7);
	for (uint32_t k = 0; k < n; k++) {
		snprintf(b->text[k], sizeof(b->text[k]), "reply %u/%u", j, k);
		b->e[k] = (struct spool_outcome_rcpt){.idx = k,
						      .state = (uint8_t)(SPOOL_RCPT_ATTEMPT + (j + k) % 4),
						      .possible_duplicate = (j + k) % 5 == 0,
						      .code = (uint16_t)(200 + j % 400),
						      .esc = (j + k) % 2 ? "4.4.1" : "",
						      .text = b->text[k]};
	}
	b->o = (struct spool_outcome){.id = id,
				      .attempt = j + 1,
				      .at_us = 1700000000000000ll + j,
				      .next_attempt_us = j % 2 ? 1700000000300000ll + j : 0,
				      .dsn_id = j % 4 == 3 ? id + 1 : 0,
				      .hop = b->hop,
				      .rcpt_count = n,
				      .rcpt = b->e};
}

struct out_found {
	bool *found;	  /* [NOUT_MAX] */
	uint64_t *out_id; /* message id of outcome j, 0 = unknown */
	unsigned n;
};

static int check_outcome_rec(void *ctx, const struct spool_rec *r)
{
	struct out_found *f = ctx;
	struct spool_outcome o;
	struct spool_outcome_iter it;
	struct spool_outcome_rcpt e;
	struct out_buf want;
	uint32_t j;

	if (r->type != SPOOL_REC_OUTCOME)
		return 0;
	CHECK(spool_outcome_decode(r->payload, r->len, &o, &it) == 0);
	CHECK(o.attempt >= 1 && o.attempt <= NOUT_MAX);
	j = o.attempt - 1;
	CHECK(!f->out_id || f->out_id[j] == r->txn_id);
	out_make(&want, j, r->txn_id);
	CHECK(o.at_us == want.o.at_us && o.next_attempt_us == want.o.next_attempt_us);
	CHECK(o.dsn_id == want.o.dsn_id && !strcmp(o.hop, want.hop) && o.rcpt_count == want.o.rcpt_count);
	for (uint32_t k = 0; k < o.rcpt_count; k++) {
		CHECK(spool_outcome_entry_next(&it, &e) == 1);
		CHECK(e.idx == want.e[k].idx && e.state == want.e[k].state && e.code == want.e[k].code);
		CHECK(e.possible_duplicate == want.e[k].possible_duplicate);
		CHECK(!strcmp(e.esc, want.e[k].esc) && !strcmp(e.text, want.e[k].text));
	}
	CHECK(spool_outcome_entry_next(&it, &e) == 0);
	f->found[j] = true;
	f->n++;
	return 0;
}

/* The record at (seq, off) of lane 0 is the commit of id. */
static void check_commit_at(const char *dir, uint64_t id, uint64_t seq, uint64_t off)
{
	char path[400];
	struct spool_seg_hdr h;
	struct spool_rec r;
	struct stat st;
	uint8_t *map;
	int fd;

	CHECK(spool_seg_path(path, sizeof(path), dir, 0, seq) == 0);
	fd = open(path, O_RDONLY);
	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED);
	CHECK(spool_seg_hdr_decode(map, (size_t)st.st_size, &h) == 0);
	CHECK(spool_rec_check(map, (uint64_t)st.st_size, h.epoch, off, &r));
	CHECK(r.type == SPOOL_REC_COMMIT && r.txn_id == id);
	munmap(map, (size_t)st.st_size);
	close(fd);
}

static size_t msg_size(uint64_t i)
{
	uint64_t r = tu_mix(i + 5);
	return r % 4 == 0 ? 0 : r % 4 == 1 ? 40000 + r % 30000 : 1 + r % 3000;
}

/*
 * The workload: NMSG messages over 3 sessions, an outcome record after each
 * commit (for the message committed before), stepping the simulator at
 * random. -EAGAIN: step and retry. Returns the number of outcomes queued.
 */
struct wl {
	struct sim *s;
	struct spool_lane *l;
	uint64_t seq[NMSG], off[NMSG];
	bool located[NMSG], refused[NMSG];
	uint32_t nout;
	uint64_t out_id[NOUT_MAX];
	uint32_t eagain_out, eagain_commit;
};

static void wl_run(struct wl *w, uint64_t seed, bool flush_fail)
{
	static uint8_t buf[8192];
	uint64_t rng = seed | 1;

	for (uint64_t i = 0; i < NMSG && !sim_crashed(w->s); i++) {
		struct spool_txn t;
		struct tu_env e;
		size_t size = msg_size(i), sent = 0;
		int rc;

		rc = spool_txn_begin(w->l, &t);
		CHECK(rc == 0);
		lg.id[i] = t.id;
		CHECK(spool_txn_location(&t, &w->seq[i], &w->off[i]) == -EINVAL); /* no commit yet */
		while (sent < size && !sim_crashed(w->s)) {
			size_t n = DS_MIN(sizeof(buf), size - sent);
			tu_body(i, sent, buf, n);
			rc = spool_txn_append(w->l, &t, buf, n);
			if (rc == -EAGAIN) {
				spool_lane_kick(w->l);
				sim_step(w->s, 2);
				continue;
			}
			if (rc == -EIO && flush_fail)
				break;
			CHECK(rc == 0);
			sent += n;
		}
		if (sim_crashed(w->s))
			break;
		if (sent < size) {
			spool_txn_abort(w->l, &t);
			CHECK(spool_txn_location(&t, &w->seq[i], &w->off[i]) == -EINVAL);
			w->refused[i] = true;
			continue;
		}
		tu_env_make(&e, i, size);
		for (;;) {
			rc = spool_txn_commit(w->l, &t, &e.env, i);
			if (rc != -EAGAIN || sim_crashed(w->s))
				break;
			w->eagain_commit++;
			spool_lane_kick(w->l);
			sim_step(w->s, 2);
		}
		if (rc == -EAGAIN)
			break;
		if (rc) {
			CHECK(rc == -EIO && flush_fail);
			w->refused[i] = true;
		} else {
			CHECK(spool_txn_location(&t, &w->seq[i], &w->off[i]) == 0);
			w->located[i] = true;
			rep_line("L %llu %llu %llu %llu\n", i, t.id, w->seq[i], w->off[i]);
		}
		/* Outcomes for an earlier message (it may live anywhere: only its id counts). */
		for (uint32_t k = 0; k < 1 + rng % 3 && i && w->nout < NOUT_MAX && !sim_crashed(w->s); k++) {
			struct out_buf b;
			uint64_t mid = lg.id[tu_mix(rng + k) % i];

			out_make(&b, w->nout, mid);
			rc = spool_lane_outcome(w->l, &b.o, OUT_COOKIE + w->nout);
			if (rc == -EAGAIN) {
				w->eagain_out++;
				spool_lane_kick(w->l);
				sim_step(w->s, 2);
				continue;
			}
			CHECK(rc == 0);
			w->out_id[w->nout] = mid;
			rep_line("Q %llu %llu %llu %llu\n", w->nout, mid, 0, 0);
			w->nout++;
		}
		rng = tu_mix(rng);
		spool_lane_kick(w->l);
		sim_step(w->s, (unsigned)(rng % 4));
	}
	if (!sim_crashed(w->s))
		sim_drain(w->s);
}

static void lg_reset(void)
{
	memset(&lg, 0, sizeof(lg));
	for (int i = 0; i < NMSG; i++)
		lg.commit_res[i] = SETTLED_NONE;
	for (uint32_t j = 0; j < NOUT_MAX; j++)
		lg.out_res[j] = SETTLED_NONE;
}

static void test_lane_outcomes(bool direct)
{
	static bool found[NOUT_MAX];
	struct sim_faults f = {.short_pct = direct ? 0 : 10, .eagain_pct = 3};
	struct spool_config cfg;
	struct spool_lane_stats st;
	struct wl w = {0};
	struct out_found of = {.found = found, .out_id = w.out_id};
	struct spool_scan_ops ops = {.rec = check_outcome_rec, .delivery = true};
	uint32_t fill = 0;
	int rc;

	direct_mode = direct;
	lg_reset();
	tu_tmpdir(cur_dir, sizeof(cur_dir), "outcome");
	cfg_make(&cfg, cur_dir);
	w.s = sim_create(11, &f, on_settled, NULL);
	CHECK(spool_lane_open(&w.l, &cfg, 0, sim_ops(), w.s) == 0);
	sim_attach(w.s, w.l);
	wl_run(&w, 11, false);
	CHECK(!spool_lane_busy(w.l));
	CHECK(lg.commits_ok == NMSG && lg.commits_err == 0);
	CHECK(lg.outs_ok == w.nout && lg.outs_err == 0 && w.nout > NMSG);
	for (uint32_t j = 0; j < w.nout; j++)
		CHECK(lg.out_res[j] == 0);

	/* Staging full: outcomes queue until -EAGAIN (nothing written meanwhile), then all settle. */
	for (;;) {
		struct out_buf b;
		CHECK(w.nout < NOUT_MAX);
		out_make(&b, w.nout, lg.id[w.nout % NMSG]);
		rc = spool_lane_outcome(w.l, &b.o, OUT_COOKIE + w.nout);
		if (rc == -EAGAIN)
			break;
		CHECK(rc == 0);
		w.out_id[w.nout++] = b.o.id;
		fill++;
	}
	CHECK(fill > 100);
	sim_drain(w.s);
	CHECK(lg.outs_ok == w.nout);

	/* Refused at once: over the limits (too big for this staging), invalid, a PENDING entry. */
	{
		static struct spool_outcome_rcpt many[SPOOL_OUTCOME_RCPTS_MAX + 1];
		struct spool_outcome o = {.id = lg.id[0], .attempt = 1, .rcpt = many};
		for (uint32_t i = 0; i <= SPOOL_OUTCOME_RCPTS_MAX; i++)
			many[i] =
				(struct spool_outcome_rcpt){.idx = i % SPOOL_RCPT_MAX,
							    .state = SPOOL_RCPT_DEFERRED,
							    .code = 451,
							    .esc = "4.4.1",
							    .text = "a reply text of some length, repeated"};
		o.rcpt_count = SPOOL_OUTCOME_RCPTS_MAX + 1;
		CHECK(spool_lane_outcome(w.l, &o, 1) == -EMSGSIZE);
		o.rcpt_count = 0;
		CHECK(spool_lane_outcome(w.l, &o, 1) == -EMSGSIZE);
		o.rcpt_count = SPOOL_OUTCOME_RCPTS_MAX; /* 1 MiB+: over half of a 256 KiB staging ring */
		CHECK(spool_lane_outcome(w.l, &o, 1) == -EMSGSIZE);
		o.rcpt_count = 1;
		many[0].state = SPOOL_RCPT_PENDING;
		CHECK(spool_lane_outcome(w.l, &o, 1) == -EINVAL);
		CHECK(!spool_lane_busy(w.l));
	}

	spool_lane_stats(w.l, &st);
	CHECK(st.direct == direct);
	CHECK(st.outcomes == w.nout && st.outcomes_durable == w.nout && st.outcome_errors == 0);
	CHECK(st.commits_durable == NMSG && st.aborts == 0 && st.aborts_lost == 0);
	CHECK(st.segments_opened >= 3);
	spool_lane_close(w.l);
	sim_destroy(w.s);

	/* Every commit at its location; every outcome on disk, decoding to what was queued. */
	for (int i = 0; i < NMSG; i++) {
		CHECK(w.located[i]);
		check_commit_at(cur_dir, lg.id[i], w.seq[i], w.off[i]);
	}
	memset(found, 0, sizeof(found));
	scan_lane(cur_dir, &ops, &of);
	CHECK(of.n == w.nout);
	for (uint32_t j = 0; j < w.nout; j++)
		CHECK(found[j]);
	tu_rmrf(cur_dir);
	printf("lane outcomes (%s): %u outcomes, %u commits, staging filled with %u, -EAGAIN seen "
	       "%u/%u: ok\n",
	       direct ? "direct" : "buffered", w.nout, NMSG, fill, w.eagain_out, w.eagain_commit);
}

/*
 * A flush (direct: a DSYNC write) fails: every commit it carried is settled
 * with -EIO only after an abort record naming it is durable in another
 * segment (checked inside settled(), on the files), and the abort points
 * at the refused commit record.
 */
static void test_lane_aborts(bool direct, uint32_t fail_at)
{
	struct sim_faults f = {.flush_fail_at = direct ? 0 : fail_at, .write_fail_at = direct ? fail_at : 0};
	struct spool_config cfg;
	struct spool_lane_stats st;
	struct wl w = {0};
	uint32_t refused_now = 0;

	direct_mode = direct;
	lg_reset();
	tu_tmpdir(cur_dir, sizeof(cur_dir), "aborts");
	cfg_make(&cfg, cur_dir);
	w.s = sim_create(fail_at, &f, on_settled, NULL);
	CHECK(spool_lane_open(&w.l, &cfg, 0, sim_ops(), w.s) == 0);
	sim_attach(w.s, w.l);
	wl_run(&w, fail_at, true);
	CHECK(!spool_lane_busy(w.l));
	spool_lane_stats(w.l, &st);
	CHECK(st.flush_errors == 1);
	CHECK(lg.commits_err > 0 && st.aborts_durable == lg.commits_err && st.aborts == lg.commits_err);
	CHECK(st.aborts_lost == 0);
	CHECK(lg.outs_ok + lg.outs_err == w.nout && st.outcome_errors == lg.outs_err);
	for (int i = 0; i < NMSG; i++) {
		struct spool_abort a;
		refused_now += w.refused[i];
		if (!w.located[i]) {
			CHECK(w.refused[i] && lg.commit_res[i] == SETTLED_NONE);
			continue;
		}
		CHECK(lg.commit_res[i] == 0 || lg.commit_res[i] == -EIO);
		if (lg.commit_res[i] == 0) {
			check_commit_at(cur_dir, lg.id[i], w.seq[i], w.off[i]);
			CHECK(abort_on_disk(cur_dir, lg.id[i], NULL) == 0);
			continue;
		}
		CHECK(lg.abort_seen_at_settle[i]);
		CHECK(abort_on_disk(cur_dir, lg.id[i], &a) == 1);
		CHECK(a.reason == EIO && a.commit_seq == w.seq[i] && a.commit_off == w.off[i]);
	}
	spool_lane_close(w.l);
	sim_destroy(w.s);
	tu_rmrf(cur_dir);
	printf("aborts (%s, failure %u): %u commits refused after a durable abort, %u refused at once, "
	       "%u outcomes failed: ok\n",
	       direct ? "direct" : "buffered", fail_at, lg.commits_err, refused_now, lg.outs_err);
}

/*
 * No segment can be prepared after the failure (a one-segment quota): the
 * aborts cannot be made durable. The failed commits are still settled, with
 * their error, after ABORT_TRIES_MAX preparations, and counted aborts_lost.
 */
static void test_aborts_lost(bool direct)
{
	struct sim_faults f = {.flush_fail_at = direct ? 0 : 2, .write_fail_at = direct ? 2 : 0};
	struct spool_config cfg;
	struct spool_lane_stats st;
	struct spool_lane *l;
	struct sim *s;
	uint64_t id = 0;
	uint8_t body[500];

	direct_mode = direct;
	expect_lost = true;
	lg_reset();
	tu_tmpdir(cur_dir, sizeof(cur_dir), "lost");
	cfg_make(&cfg, cur_dir);
	cfg.lane_bytes_max = cfg.segment_size;
	s = sim_create(3, &f, on_settled, NULL);
	CHECK(spool_lane_open(&l, &cfg, 0, sim_ops(), s) == 0);
	sim_attach(s, l);
	for (uint64_t g = 0; g < 2; g++) {
		for (uint64_t i = g * 4; i < g * 4 + 4; i++) {
			struct spool_txn t;
			struct tu_env e;
			CHECK(spool_txn_begin(l, &t) == 0);
			lg.id[i] = t.id;
			tu_body(i, 0, body, sizeof(body));
			CHECK(spool_txn_append(l, &t, body, sizeof(body)) == 0);
			tu_env_make(&e, i, sizeof(body));
			CHECK(spool_txn_commit(l, &t, &e.env, i) == 0);
			id = t.id;
		}
		sim_drain(s);
	}
	CHECK(!spool_lane_busy(l));
	spool_lane_stats(l, &st);
	CHECK(lg.commits_ok == 4 && lg.commits_err == 4);
	CHECK(st.aborts_lost == 4 && st.aborts_durable == 0 && st.aborts == 0);
	for (int i = 4; i < 8; i++)
		CHECK(lg.commit_res[i] == -EIO && !lg.abort_seen_at_settle[i]);
	/* The lane stays usable: no segment, so new mail is refused (452 at MAIL). */
	{
		struct spool_txn t;
		CHECK(spool_txn_begin(l, &t) == -ENOSPC);
	}
	(void)id;
	spool_lane_close(l);
	sim_destroy(s);
	tu_rmrf(cur_dir);
	expect_lost = false;
	printf("aborts lost (%s, no segment to write them to): %llu settled with -EIO, counted: ok\n",
	       direct ? "direct" : "buffered", (unsigned long long)st.aborts_lost);
}

/* ---- crashes at every write boundary, commits and outcomes interleaved ---- */

#define CRASH_RUNS_MAX 220

static void crash_child(uint64_t crash_at, uint64_t seed, uint32_t fail_at, bool tear, bool scribble)
{
	struct sim_faults f = {.crash_at_event = crash_at,
			       .short_pct = direct_mode ? 0 : 10,
			       .eagain_pct = 3,
			       .flush_fail_at = direct_mode ? 0 : fail_at,
			       .write_fail_at = direct_mode ? fail_at : 0};
	struct spool_config cfg;
	static struct wl w;

	memset(&w, 0, sizeof(w));
	lg_reset();
	cfg_make(&cfg, cur_dir);
	w.s = sim_create(seed, &f, on_settled, NULL);
	CHECK(spool_lane_open(&w.l, &cfg, 0, sim_ops(), w.s) == 0);
	sim_attach(w.s, w.l);
	wl_run(&w, seed, fail_at != 0);
	if (sim_crashed(w.s)) {
		sim_crash_apply(w.s, tear, scribble);
		_exit(0); /* the lane dies with the process */
	}
	CHECK(!spool_lane_busy(w.l));
	spool_lane_close(w.l);
	rep_line("E %llu %llu %llu %llu\n", sim_events(w.s), 0, 0, 0);
	sim_destroy(w.s);
	_exit(0);
}

struct crash_expect {
	uint64_t id[NMSG], seq[NMSG], off[NMSG];
	bool located[NMSG], acked[NMSG], failed[NMSG], out_acked[NOUT_MAX];
	uint64_t out_id[NOUT_MAX];
	uint64_t events;
};

static void crash_run(const char *repfile, uint64_t k, uint64_t seed, uint32_t fail_at,
		      struct crash_expect *ex)
{
	unsigned long long a, b, c, d;
	char kind;
	FILE *fp;
	pid_t pid;
	int st;

	report_fd = open(repfile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
	CHECK(report_fd >= 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		crash_child(k, seed, fail_at, k % 2 == 0, k % 3 == 0);
	close(report_fd);
	report_fd = -1;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0); /* the child checked the aborts at each settle */
	memset(ex, 0, sizeof(*ex));
	fp = fopen(repfile, "r");
	CHECK(fp);
	while (fscanf(fp, " %c %llu %llu %llu %llu", &kind, &a, &b, &c, &d) == 5) {
		if (kind == 'E') {
			ex->events = a;
			continue;
		}
		CHECK(a < (kind == 'O' || kind == 'Q' ? NOUT_MAX : NMSG));
		if (kind == 'L') {
			ex->located[a] = true;
			ex->id[a] = b;
			ex->seq[a] = c;
			ex->off[a] = d;
		} else if (kind == 'A') {
			ex->acked[a] = true;
		} else if (kind == 'F') {
			ex->failed[a] = true;
		} else if (kind == 'Q') {
			ex->out_id[a] = b;
		} else if (kind == 'O') {
			ex->out_acked[a] = true;
		}
	}
	fclose(fp);
}

/* After the crash: every acknowledged commit at its location, every settled outcome decodes, every refusal
 * durable. */
static uint64_t crash_verify(const struct crash_expect *ex)
{
	static bool found[NOUT_MAX];
	struct out_found of = {.found = found, .out_id = (uint64_t *)ex->out_id};
	struct spool_scan_ops ops = {.rec = check_outcome_rec, .delivery = true};
	uint64_t n = 0;

	memset(found, 0, sizeof(found));
	scan_lane(cur_dir, &ops, &of);
	for (uint32_t j = 0; j < NOUT_MAX; j++) {
		if (ex->out_acked[j] && !found[j]) {
			fprintf(stderr, "acknowledged outcome %u lost\n", j);
			exit(1);
		}
		n += ex->out_acked[j];
	}
	for (int i = 0; i < NMSG; i++) {
		if (ex->acked[i]) {
			CHECK(ex->located[i]);
			check_commit_at(cur_dir, ex->id[i], ex->seq[i], ex->off[i]);
			n++;
		}
		if (ex->failed[i] && ex->located[i])
			CHECK(abort_on_disk(cur_dir, ex->id[i], NULL) == 1);
	}
	return n;
}

static int crash_main(bool direct, uint32_t fail_at, uint64_t seed)
{
	char repfile[300];
	static struct crash_expect ex;
	uint64_t total, stride, runs = 0, verified = 0;

	direct_mode = direct;
	tu_tmpdir(cur_dir, sizeof(cur_dir), "ocrash");
	snprintf(repfile, sizeof(repfile), "%s.report", cur_dir);
	crash_run(repfile, 0, seed, fail_at, &ex);
	total = ex.events;
	CHECK(total > 100);
	crash_verify(&ex);
	if (fail_at) {
		/* The failure really refused commits (each checked for its durable abort in the child). */
		int refused = 0;
		for (int i = 0; i < NMSG; i++)
			refused += ex.failed[i] && ex.located[i];
		CHECK(refused > 0);
	}
	tu_rmrf(cur_dir);
	stride = total / CRASH_RUNS_MAX + 1;
	for (uint64_t k = 1; k <= total; k += stride, runs++) {
		CHECK(mkdir(cur_dir, 0700) == 0);
		crash_run(repfile, k, seed, fail_at, &ex);
		verified += crash_verify(&ex);
		tu_rmrf(cur_dir);
	}
	unlink(repfile);
	printf("crash points (%s%s): %llu of %llu events, acknowledged commits and outcomes verified: "
	       "%llu\n",
	       direct ? "direct" : "buffered", fail_at ? ", one failed flush/write" : "",
	       (unsigned long long)runs, (unsigned long long)total, (unsigned long long)verified);
	return 0;
}

/* argv: none (codecs, lane, aborts) or "crash buffered|direct FAIL_AT SEED". */
int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "crash"))
		return crash_main(!strcmp(argv[2], "direct"), (uint32_t)atoi(argv[3]),
				  strtoull(argv[4], NULL, 0));
	CHECK(argc == 1);
	test_codec_round_trip();
	test_codec_limits();
	test_abort_codec();
	test_fixed_v3();
	test_scan_and_versions();
	test_lane_outcomes(false);
	test_lane_outcomes(true);
	for (uint32_t k = 2; k <= 8; k += 3) {
		test_lane_aborts(false, k);
		test_lane_aborts(true, k);
	}
	test_aborts_lost(false);
	test_aborts_lost(true);
	return 0;
}
