/* SPDX-License-Identifier: MIT */
/*
 * Seal summaries (format 4, spool/spool_sum.h):
 *  - codec: a hand-built segment (chunks, padding, commit, outcome, abort,
 *    moved records, zero tail) summarised, parsed and replayed equals the
 *    scan of the segment, record by record; damaged, truncated, foreign
 *    summaries are refused; a damaged segment or one over the bound gets none;
 *  - property (random spools written through two lanes: messages of random
 *    size spanning segments, aborted txns, outcomes, operator, gap and moved
 *    records): recovery from the summaries equals recovery from the segments
 *    (every report counter, every queued message with its folded state,
 *    every gap record), and the summaries were really there and used;
 *  - fallback: corrupted, truncated, mismatched and orphan .sum files give
 *    the same recovery; the orphan is swept.
 * Usage: test_spool_sum [seeds]
 */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "crc32c.h"
#include "spool.h"
#include "spool_compact.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "spool_scan.h"
#include "spool_sum.h"
#include "spool_syncio.h"
#include "test_util.h"

/* ---- codec ---- */

struct cap {
	struct spool_rec r[256];
	unsigned n;
	uint64_t bad_from, bad_to;
	unsigned nbad;
	bool tail, zero;
};

static int cap_rec(void *ctx, const struct spool_rec *r)
{
	struct cap *c = ctx;
	CHECK(c->n < 256);
	c->r[c->n++] = *r;
	return 0;
}

static void cap_bad(void *ctx, uint64_t from, uint64_t to, bool tail, bool zero)
{
	struct cap *c = ctx;
	c->nbad++;
	c->bad_from = from;
	c->bad_to = to;
	c->tail = tail;
	c->zero = zero;
}

#define SEG   65536u
#define EPOCH 0x1234567890abcdefull

static uint64_t put(uint8_t *seg, uint64_t off, uint32_t type, uint64_t id, const void *payload, uint32_t len,
		    uint64_t durable)
{
	if (payload)
		memcpy(seg + off + SPOOL_REC_HDR_SIZE, payload, len);
	spool_rec_encode(seg + off, type, len, id, EPOCH, durable);
	return off + spool_rec_total(len);
}

static uint64_t hand_segment(uint8_t *seg, struct spool_seg_hdr *h)
{
	uint8_t body[3000], cp[SPOOL_COMMIT_MAX], ab[SPOOL_ABORT_SIZE], mv[SPOOL_MOVED_SIZE];
	struct tu_env e;
	struct spool_commit c = {0};
	struct spool_abort a = {.reason = 5, .commit_seq = 3, .commit_off = 4096};
	struct spool_moved m = {.lane = 1, .dead_seq = 2, .dead_off = 4096, .seq = 3, .off = 8192};
	uint64_t off = SPOOL_SEG_DATA_OFF, id = 1ull << 56 | 3ull << 24 | 1, first;
	size_t n;

	memset(seg, 0, SEG);
	*h = (struct spool_seg_hdr){.version = SPOOL_FORMAT_VERSION,
				    .lane = 1,
				    .seq = 3,
				    .epoch = EPOCH,
				    .created_us = 1,
				    .segment_size = SEG};
	spool_seg_hdr_encode(seg, h);
	tu_body(1, 0, body, sizeof(body));
	first = off;
	off = put(seg, off, SPOOL_REC_CHUNK, id, body, 1000, 0);
	off = put(seg, off, SPOOL_REC_CHUNK, 1ull << 56 | 1, NULL, 64, 0); /* padding */
	off = put(seg, off, SPOOL_REC_CHUNK, id, body + 1000, 2000, 4096);
	tu_env_make(&e, 1, 3000);
	c = (struct spool_commit){.body_len = 3000,
				  .body_crc = crc32c(0, body, 3000),
				  .chunk_count = 2,
				  .first_seq = 3,
				  .first_off = first,
				  .env = e.env};
	n = spool_commit_size(&e.env);
	spool_commit_encode(cp, &c, &e.env);
	off = put(seg, off, SPOOL_REC_COMMIT, id, cp, (uint32_t)n, 8192);
	spool_abort_encode(ab, &a);
	off = put(seg, off, SPOOL_REC_ABORT, id + 1, ab, SPOOL_ABORT_SIZE, 8192);
	spool_moved_encode(mv, &m);
	off = put(seg, off, SPOOL_REC_MOVED, id + 2, mv, SPOOL_MOVED_SIZE, off);
	return off;
}

static const struct timespec mt = {.tv_sec = 1700000000, .tv_nsec = 5};

static void test_codec(void)
{
	static uint8_t seg[SEG];
	static const struct spool_scan_ops ops = {.rec = cap_rec, .bad = cap_bad, .delivery = true};
	struct spool_seg_hdr h;
	struct cap a = {0}, b = {0};
	struct spool_sum *s;
	uint8_t *buf, *copy;
	size_t len;
	uint64_t end = hand_segment(seg, &h), wm = 0;

	CHECK(spool_sum_build(seg, SEG, &h, SPOOL_SUM_F_SEALED, &mt, &buf, &len) == 0);
	CHECK(spool_seg_scan(seg, SEG, EPOCH, SPOOL_SEG_DATA_OFF, &ops, &a) == 0);
	copy = malloc(len);
	memcpy(copy, buf, len);
	CHECK(spool_sum_parse(buf, len, &s) == 0);
	CHECK(s->end == end && s->lane == 1 && s->seq == 3 && s->epoch == EPOCH && s->segment_size == SEG);
	for (unsigned i = 0; i < a.n; i++)
		wm = DS_MAX(wm, a.r[i].durable_off);
	CHECK(s->watermark == wm && wm > 0);
	CHECK(spool_sum_replay(s, &ops, &b) == 0);
	/* The padding chunk is left out; everything else is the scan's stream. */
	CHECK(a.n == 6 && b.n == 5);
	for (unsigned i = 0, k = 0; i < a.n; i++) {
		if (a.r[i].txn_id == (1ull << 56 | 1))
			continue;
		CHECK(a.r[i].off == b.r[k].off && a.r[i].type == b.r[k].type && a.r[i].len == b.r[k].len &&
		      a.r[i].txn_id == b.r[k].txn_id && a.r[i].total == b.r[k].total);
		if (a.r[i].type != SPOOL_REC_CHUNK) {
			CHECK(a.r[i].durable_off == b.r[k].durable_off);
			CHECK(!memcmp(a.r[i].payload, b.r[k].payload, a.r[i].len));
			CHECK(spool_sum_rec_at(s, a.r[i].off) &&
			      !memcmp(spool_sum_rec_at(s, a.r[i].off), seg + a.r[i].off, a.r[i].total));
		} else {
			CHECK(!b.r[k].payload && spool_sum_rec_at(s, a.r[i].off) == NULL);
		}
		k++;
	}
	CHECK(a.nbad == 1 && b.nbad == 1 && a.bad_from == b.bad_from && a.bad_to == b.bad_to && a.tail &&
	      b.tail && a.zero && b.zero);
	spool_sum_free(s);

	/* Every single flipped byte and every truncation is refused. */
	for (size_t i = 0; i < len; i += 7) {
		uint8_t *d = malloc(len);
		memcpy(d, copy, len);
		d[i] ^= 0x40;
		CHECK(spool_sum_parse(d, len, &s) == -EBADMSG);
		free(d);
	}
	for (size_t l = 0; l < len; l += 13) {
		uint8_t *d = malloc(len);
		memcpy(d, copy, len);
		CHECK(spool_sum_parse(d, l, &s) == -EBADMSG);
		free(d);
	}
	free(copy);

	/* A segment with a damaged record followed by good ones: no summary (scanned whole). */
	seg[SPOOL_SEG_DATA_OFF + 20] ^= 1;
	CHECK(spool_sum_build(seg, SEG, &h, SPOOL_SUM_F_SEALED, &mt, &buf, &len) == -EBADMSG);
	/* Non-zero bytes after the last record: no summary either. */
	hand_segment(seg, &h);
	seg[end + 100] = 1;
	CHECK(spool_sum_build(seg, SEG, &h, SPOOL_SUM_F_SEALED, &mt, &buf, &len) == -EBADMSG);
	/* Over the bound (a quarter of the segment): none. */
	hand_segment(seg, &h);
	{
		uint8_t ab[SPOOL_ABORT_SIZE] = {0};
		uint64_t off = end;
		while (off + 200 < SEG / 2)
			off = put(seg, off, SPOOL_REC_ABORT, 77, ab, SPOOL_ABORT_SIZE, 0);
		CHECK(spool_sum_build(seg, SEG, &h, SPOOL_SUM_F_SEALED, &mt, &buf, &len) == -E2BIG);
	}
	/* An empty segment: a summary of no records, the whole data area a zero tail. */
	hand_segment(seg, &h);
	memset(seg + SPOOL_SEG_DATA_OFF, 0, SEG - SPOOL_SEG_DATA_OFF);
	CHECK(spool_sum_build(seg, SEG, &h, SPOOL_SUM_F_SEALED, &mt, &buf, &len) == 0);
	CHECK(spool_sum_parse(buf, len, &s) == 0 && s->entries == 0 && s->end == SPOOL_SEG_DATA_OFF);
	memset(&b, 0, sizeof(b));
	CHECK(spool_sum_replay(s, &ops, &b) == 0 && b.n == 0 && b.nbad == 1 &&
	      b.bad_from == SPOOL_SEG_DATA_OFF);
	spool_sum_free(s);
	/* Names. */
	CHECK(spool_sum_name_seq("000000000012.sum") == 12 && spool_sum_name_seq("000000000012.seg") == 0);
	printf("codec: replay == scan, damage refused, no summary for damaged / oversized segments: ok\n");
}

/* ---- random spools ---- */

static uint64_t rng;
static uint64_t rnd(uint64_t n)
{
	rng = tu_mix(rng);
	return n ? rng % n : 0;
}

static int settled_bad;
static void on_settled(void *ctx, uint64_t cookie, int res)
{
	if (res)
		settled_bad++;
}

#define IDS_MAX 4096
struct written {
	uint64_t id[IDS_MAX];
	unsigned lane[IDS_MAX];
	uint64_t seq[IDS_MAX], off[IDS_MAX];
	unsigned n;
};

/* Two lanes of small segments on synchronous I/O (cfg must outlive them). */
static void lanes_open(const char *dir, struct spool_config *cfg, struct spool_syncio *sio[2],
		       struct spool_lane *l[2])
{
	spool_config_defaults(cfg);
	cfg->dir = dir;
	cfg->segment_size = 512 * 1024;
	cfg->buffer_size = 256 * 1024;
	for (unsigned k = 0; k < 2; k++) {
		CHECK(spool_syncio_create(&sio[k], on_settled, NULL) == 0);
		CHECK(spool_lane_open(&l[k], cfg, k, spool_syncio_ops(), sio[k]) == 0);
		spool_syncio_attach(sio[k], l[k]);
	}
}

static void write_spool(const char *dir, uint64_t seed, struct written *w)
{
	struct spool_config cfg;
	struct spool_syncio *sio[2];
	struct spool_lane *l[2];
	static uint8_t body[700000];
	uint64_t cookie = 1;

	rng = seed;
	lanes_open(dir, &cfg, sio, l);
	w->n = 0;
	for (unsigned op = 0; op < 400; op++) {
		unsigned k = (unsigned)rnd(2);
		uint64_t r = rnd(100);

		if (r < 55 || w->n == 0) {
			struct spool_txn t;
			struct tu_env e;
			size_t len = rnd(10) == 0 ? rnd(sizeof(body)) : rnd(60000);
			size_t done = 0;

			CHECK(spool_txn_begin(l[k], &t) == 0);
			tu_body(t.id, 0, body, len);
			while (done < len) {
				size_t n = DS_MIN(len - done, 1 + rnd(40000));
				int rc = spool_txn_append(l[k], &t, body + done, n);
				if (rc == -EAGAIN) {
					spool_syncio_run(sio[k]);
					continue;
				}
				CHECK(rc == 0);
				done += n;
			}
			if (rnd(20) == 0) {
				spool_txn_abort(l[k], &t);
			} else {
				tu_env_make(&e, op, len);
				e.env.rcpt_count = 1 + (uint32_t)rnd(2);
				while (spool_txn_commit(l[k], &t, &e.env, cookie) == -EAGAIN)
					spool_syncio_run(sio[k]);
				cookie++;
				if (w->n < IDS_MAX) {
					CHECK(spool_txn_location(&t, &w->seq[w->n], &w->off[w->n]) == 0);
					w->id[w->n] = t.id;
					w->lane[w->n++] = k;
				}
			}
		} else if (r < 80) {
			struct spool_outcome_rcpt rc[2];
			uint32_t n = 1 + (uint32_t)rnd(2);
			struct spool_outcome o = {.id = w->id[rnd(w->n)],
						  .attempt = 1 + (uint32_t)rnd(3),
						  .at_us = 1700000000000000ll + (int64_t)op,
						  .next_attempt_us = rnd(2) ? 1800000000000000ll : 0,
						  .hop = "lmtp:/x",
						  .rcpt_count = n,
						  .rcpt = rc};
			for (uint32_t i = 0; i < n; i++)
				rc[i] = (struct spool_outcome_rcpt){.idx = i,
								    .state = (uint8_t)(1 + rnd(3)),
								    .code = 250,
								    .esc = "2.0.0",
								    .text = "ok"};
			while (spool_lane_outcome(l[k], &o, cookie) == -EAGAIN)
				spool_syncio_run(sio[k]);
			cookie++;
		} else if (r < 88) {
			struct spool_operator o = {.id = w->id[rnd(w->n)],
						   .action = 1 + (uint32_t)rnd(5),
						   .at_us = 1700000000000000ll + (int64_t)op,
						   .name = "op",
						   .reason = "test"};
			while (spool_lane_operator(l[k], &o, cookie) == -EAGAIN)
				spool_syncio_run(sio[k]);
			cookie++;
		} else if (r < 94) {
			unsigned i = (unsigned)rnd(w->n);
			struct spool_gap_rec g = {.id = w->id[i],
						  .kind = rnd(2) ? SPOOL_GAP_REC_AT_RISK
								 : SPOOL_GAP_REC_CLEARED};
			if (g.kind == SPOOL_GAP_REC_AT_RISK) {
				g.expires_us = 4000000000000000ll;
				g.fp = (struct spool_gap_fp){
					.env_digest = rnd(1000), .rcpt_count = 1, .lane = w->lane[i]};
			}
			while (spool_lane_gap(l[k], &g, cookie) == -EAGAIN)
				spool_syncio_run(sio[k]);
			cookie++;
		} else {
			/* A second copy of a message of this lane, and a MOVED record naming the first. */
			unsigned i = (unsigned)rnd(w->n);
			struct spool_txn t;
			struct tu_env e;
			uint64_t seq0, off0, seq1, off1;
			uint8_t mv[SPOOL_MOVED_SIZE];
			struct spool_moved m;

			if (w->lane[i] != k)
				continue;
			spool_syncio_run(sio[k]);
			if (spool_txn_begin_moved(l[k], &t, w->id[i]) == -EINVAL)
				continue; /* its id names the active segment: a copy must go later */
			tu_body(w->id[i], 0, body, 100);
			CHECK(spool_txn_append(l[k], &t, body, 100) == 0);
			tu_env_make(&e, op, 100);
			while (spool_txn_commit_moved(l[k], &t, &e.env, cookie) == -EAGAIN)
				spool_syncio_run(sio[k]);
			cookie++;
			CHECK(spool_txn_location(&t, &seq1, &off1) == 0);
			seq0 = w->seq[i];
			off0 = w->off[i];
			m = (struct spool_moved){
				.lane = k, .dead_seq = seq0, .dead_off = off0, .seq = seq1, .off = off1};
			spool_moved_encode(mv, &m);
			while (spool_lane_record(l[k], SPOOL_REC_MOVED, w->id[i], mv, SPOOL_MOVED_SIZE,
						 cookie) == -EAGAIN)
				spool_syncio_run(sio[k]);
			cookie++;
		}
		spool_syncio_run(sio[k]);
	}
	for (unsigned k = 0; k < 2; k++) {
		spool_syncio_run(sio[k]);
		spool_lane_close(l[k]);
		spool_syncio_destroy(sio[k]);
	}
}

/* ---- recovery digest ---- */

struct dig {
	FILE *f;
	char *buf;
	size_t len;
};

static int dig_msg(void *ctx, const struct spool_queue_entry *e)
{
	struct dig *d = ctx;
	fprintf(d->f, "q %016llx %u %llu %llu %llu %lld %u %u %lld %d %d %d:", (unsigned long long)e->id,
		e->lane, (unsigned long long)e->seq, (unsigned long long)e->off, (unsigned long long)e->size,
		(long long)e->received_at_us, e->rcpt_count, e->attempts, (long long)e->next_attempt_us,
		e->in_flight, e->held, e->bounce);
	for (uint32_t i = 0; i < e->rcpt_count; i++)
		fprintf(d->f, " %u", e->rcpt_state[i]);
	fputc('\n', d->f);
	return 0;
}

static void dig_gap(void *ctx, const struct spool_gap_rec *g)
{
	struct dig *d = ctx;
	fprintf(d->f, "g %016llx %u %lld %u %llu %llu\n", (unsigned long long)g->id, g->kind,
		(long long)g->expires_us, g->rec_lane, (unsigned long long)g->rec_seq,
		(unsigned long long)g->rec_off);
}

static void dig_gmsg(void *ctx, uint64_t id, unsigned lane, uint64_t seq, uint64_t off,
		     int64_t received_at_us)
{
	struct dig *d = ctx;
	fprintf(d->f, "k %016llx %u %llu %llu %lld\n", (unsigned long long)id, lane, (unsigned long long)seq,
		(unsigned long long)off, (long long)received_at_us);
}

static uint64_t last_summaries;

static char *recover_digest(const char *dir, bool sums)
{
	struct spool_config cfg;
	struct spool_recovery_report rep;
	struct dig d = {0};
	struct spool_recover_gap_ops gops = {.rec = dig_gap, .msg = dig_gmsg, .ctx = &d};

	spool_config_defaults(&cfg);
	cfg.dir = dir;
	if (!sums)
		setenv("DS_SPOOL_NO_SUMMARIES", "1", 1);
	d.f = open_memstream(&d.buf, &d.len);
	CHECK(d.f);
	CHECK(spool_recover_queue_gap(&cfg, &rep, dig_msg, &d, &gops) == 0);
	unsetenv("DS_SPOOL_NO_SUMMARIES");
	fprintf(d.f,
		"rep segs %llu msgs %llu bytes %llu torn %llu quar %llu disc %llu lanes %llu abort %llu out "
		"%llu "
		"queued %llu rcpts %llu inflight %llu\n",
		(unsigned long long)rep.segments, (unsigned long long)rep.messages,
		(unsigned long long)rep.bytes, (unsigned long long)rep.torn_tails,
		(unsigned long long)rep.quarantined, (unsigned long long)rep.discarded,
		(unsigned long long)rep.lanes, (unsigned long long)rep.aborted,
		(unsigned long long)rep.outcomes, (unsigned long long)rep.queued,
		(unsigned long long)rep.queued_rcpts, (unsigned long long)rep.in_flight);
	fclose(d.f);
	CHECK(rep.messages > 0);
	CHECK(sums || rep.summaries == 0);
	last_summaries = rep.summaries;
	return d.buf;
}

/* Every .sum of the spool: checked against its segment's header. Returns how many (all valid). */
static unsigned sums_check(const char *dir, char names[][1024], unsigned cap)
{
	unsigned n = 0;

	for (unsigned lane = 0; lane < 2; lane++) {
		char ldir[512];
		struct dirent *de;
		DIR *dd;

		snprintf(ldir, sizeof(ldir), "%s/lane-%02u", dir, lane);
		CHECK((dd = opendir(ldir)));
		while ((de = readdir(dd))) {
			uint64_t seq = spool_sum_name_seq(de->d_name);
			struct rseg s = {.seq = seq};
			struct spool_sum *sum;

			if (!seq)
				continue;
			CHECK(spool_scan_seg_open(dir, lane, &s) == 0 && s.hdr_rc == 0);
			CHECK(spool_sum_load(dir, lane, &s.hdr, s.size, &sum) == 0);
			spool_sum_free(sum);
			spool_scan_seg_close(&s);
			if (n < cap)
				snprintf(names[n], 1024, "%s/%s", ldir, de->d_name);
			n++;
		}
		closedir(dd);
	}
	return n;
}

/* dotspool-ctl verify's summary check: summaries checked, and those that differ; the verify result. */
static int verify_sums(const char *dir, uint64_t *checked, uint64_t *bad)
{
	struct spool_reader *rd;
	struct spool_verify_report vr;
	int rc;

	CHECK(spool_reader_open(&rd, dir) == 0);
	rc = spool_reader_verify(rd, &vr, stderr);
	spool_reader_close(rd);
	*checked = vr.summaries;
	*bad = vr.bad_summaries;
	return rc;
}

/* The offset of name's first chunk entry (its bytes read into buf, *len of them), or 0. */
static size_t first_chunk_entry(const char *name, uint8_t *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(name, "rb");
	size_t off = SPOOL_SUM_HDR_SIZE;

	CHECK(f);
	*len = fread(buf, 1, cap, f);
	fclose(f);
	CHECK(*len >= SPOOL_SUM_HDR_SIZE + 8);
	while (off + 24 <= *len - 8) {
		if (spool_get32(buf + off) == SPOOL_SUM_CHUNK)
			return off;
		off += spool_get32(buf + off) == SPOOL_SUM_RECORD ? 16 + spool_get32(buf + off + 4) : 24;
	}
	return 0;
}

/*
 * A summary with a valid CRC that lies: one chunk entry names another txn.
 * Recovery would replay it; verify must say so. The bytes are put back after.
 */
static void verify_lying_summary(const char *dir, char names[][1024], unsigned nsums)
{
	static uint8_t orig[1 << 20], b[1 << 20];
	uint64_t checked, bad;
	size_t len = 0, off = 0;
	unsigned k;
	FILE *f;

	for (k = 0; k < nsums && k < 256 && !off; k++)
		off = first_chunk_entry(names[k], orig, sizeof(orig), &len);
	CHECK(off && len < sizeof(orig)); /* sealed segments of this spool hold chunks */
	k--;
	memcpy(b, orig, len);
	spool_put64(b + off + 16, spool_get64(b + off + 16) + 1);
	spool_put32(b + len - 4, crc32c(0, b, len - 4));
	CHECK((f = fopen(names[k], "wb")) && fwrite(b, 1, len, f) == len && fclose(f) == 0);
	CHECK(verify_sums(dir, &checked, &bad) == -EBADMSG && checked == nsums && bad == 1);
	CHECK((f = fopen(names[k], "wb")) && fwrite(orig, 1, len, f) == len && fclose(f) == 0);
	CHECK(verify_sums(dir, &checked, &bad) == 0 && checked == nsums && bad == 0);
}

static void test_random(uint64_t seed)
{
	static struct written w;
	static char names[256][1024];
	char dir[256], path[4096];
	char *a, *b, *c;
	unsigned nsums;
	struct stat st;

	tu_tmpdir(dir, sizeof(dir), "sum");
	write_spool(dir, seed, &w);
	nsums = sums_check(dir, names, 256);
	CHECK(nsums >= 4); /* sealed segments got summaries (the active ones have none) */
	if (seed % 2) {
		/*
		 * A restart: the lanes' last segments (active until the close, never
		 * sealed) get theirs in the background (flushed first, not marked sealed).
		 */
		struct spool_config cfg;
		struct spool_lane *l[2];
		struct spool_syncio *sio[2];
		unsigned before = nsums;

		/* As after a crash: the lanes' last segments have no summary (a clean close writes them). */
		for (unsigned k = 0; k < 2; k++) {
			char ldir[300];
			uint64_t *seqs;
			int n;
			snprintf(ldir, sizeof(ldir), "%s/lane-%02u", dir, k);
			n = spool_seg_list(ldir, &seqs);
			CHECK(n > 0);
			spool_sum_unlink_seq(dir, k, seqs[n - 1]);
			free(seqs);
		}
		CHECK(sums_check(dir, names, 256) == before - 2);

		lanes_open(dir, &cfg, sio, l);
		/* The backfill writes them again in the background. */
		for (int i = 0; i < 1000 && (nsums = sums_check(dir, names, 256)) < before; i++)
			usleep(10000);
		CHECK(nsums == before);
		for (unsigned k = 0; k < 2; k++) {
			spool_lane_close(l[k]);
			spool_syncio_destroy(sio[k]);
		}
		nsums = sums_check(dir, names, 256);
		CHECK(nsums == before + 2); /* and the close the new active ones */
	}
	a = recover_digest(dir, true);
	CHECK(last_summaries == nsums); /* every summary was taken */
	b = recover_digest(dir, false);
	if (strcmp(a, b)) {
		fprintf(stderr, "seed %llu: with summaries:\n%s\nwithout:\n%s\n", (unsigned long long)seed, a,
			b);
		CHECK(!"recovery differs with summaries");
	}
	/* dotspool-ctl verify rebuilds every summary recovery would use and compares. */
	{
		uint64_t checked, bad;
		CHECK(verify_sums(dir, &checked, &bad) == 0 && checked == nsums && bad == 0);
		verify_lying_summary(dir, names, nsums);
	}
	/* Damage: a flipped byte, a truncation, another segment's summary, an orphan. */
	{
		int fd = open(names[0], O_RDWR);
		uint8_t x;
		CHECK(fd >= 0 && fstat(fd, &st) == 0 && pread(fd, &x, 1, st.st_size / 2) == 1);
		x ^= 0x10;
		CHECK(pwrite(fd, &x, 1, st.st_size / 2) == 1);
		close(fd);
		CHECK(truncate(names[1], 100) == 0);
		snprintf(path, sizeof(path), "cp '%s' '%s'", names[2], names[3]);
		CHECK(system(path) == 0);
		snprintf(path, sizeof(path), "cp '%s' '%s/lane-00/000009999999.sum'", names[2], dir);
		CHECK(system(path) == 0);
	}
	c = recover_digest(dir, true);
	CHECK(last_summaries == nsums - 3); /* the flipped, truncated and foreign ones were not */
	if (strcmp(c, b)) {
		fprintf(stderr, "seed %llu: damaged summaries:\n%s\nwithout:\n%s\n", (unsigned long long)seed,
			c, b);
		CHECK(!"recovery differs with damaged summaries");
	}
	snprintf(path, sizeof(path), "%s/lane-00/000009999999.sum", dir);
	CHECK(stat(path, &st) == -1 && errno == ENOENT); /* swept */
	/* Reclamation removes a segment's summary with it (spool_sum_unlink_for, before the .seg). */
	{
		char seg[1100];
		size_t n = strlen(names[4]);
		memcpy(seg, names[4], n + 1);
		memcpy(seg + n - 4, ".seg", 4);
		CHECK(stat(names[4], &st) == 0);
		spool_sum_unlink_for(seg);
		CHECK(stat(names[4], &st) == -1 && errno == ENOENT && stat(seg, &st) == 0);
	}
	printf("seed %llu: %u summaries, recovery from them == full scan (%zu bytes of results), damaged "
	       "summaries fall back: ok\n",
	       (unsigned long long)seed, nsums, strlen(b));
	free(a);
	free(b);
	free(c);
	tu_rmrf(dir);
}

int main(int argc, char **argv)
{
	unsigned seeds = argc > 1 ? (unsigned)atoi(argv[1]) : 6;

	test_codec();
	for (unsigned s = 1; s <= seeds; s++)
		test_random(s * 7919);
	return settled_bad ? 1 : 0;
}
