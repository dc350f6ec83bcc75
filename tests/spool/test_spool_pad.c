/* SPDX-License-Identifier: MIT */
/*
 * Padding chunks (--spool-io direct) on lane 0: a regression test at the
 * reader level, on segment files built byte by byte with the format's own
 * encoders (no writer, no timing: the same bytes every run).
 *
 * The bug: pad chunks on lane 0 carried txn id 0 (spool_id_make(0, 0, 0)),
 * and the reader's chunk table (spool/spool_reader.c) uses id 0 as its
 * empty-slot mark. Counting such a chunk left its count and bytes in an
 * "empty" slot; the next real txn to land on that slot inherited them, its
 * commit no longer matched its chunks and an acknowledged message vanished
 * from `dotspool-ctl list` (spool_reader_foreach) and from recovery
 * (spool_recover, run by daemon/main.c at start-up). The fix: writers use
 * spool_id_make(lane, 0, 1) and readers ignore every chunk whose id has
 * segment sequence 0 (FORMAT.md, "Padding"), old id-0 pads included.
 *
 * The segments here mix, on lanes 0 and 1, real messages (several chunks,
 * interleaved txns, an empty body, a body over two segments) with pad
 * chunks of both generations: id 0 / lane << 56 (old writers) and
 * spool_id_make(lane, 0, 1) (current), each group padded onto fresh 4 KiB
 * blocks as the direct writer does, one pad sitting between a message's
 * last body chunk and its commit. Checked: the reader lists exactly the
 * committed messages, each with its bytes, spool_reader_read returns them,
 * verify is clean, and recovery keeps them all with nothing discarded,
 * torn or quarantined (and writes no .quarantine note).
 *
 * The writer's half of the fix is checked too: a lane 0 in the direct
 * discipline (crash simulator, fixed seed) writes pads, and every chunk in
 * its segments carries a non-zero id, every segment-0 id being
 * spool_id_make(0, 0, 1).
 *
 * To make the old failure certain rather than likely, message H's id is
 * chosen so that it hashes to slot 0 of the table, where the first id-0
 * chunk of the lane lands, and its commit is in the last group of its
 * segment (above the durable watermark, so recovery does not rescue it by
 * walking its body). tbl_slot() mirrors ctab_hash() of spool_reader.c for
 * that purpose; the other checks do not depend on it.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "crc32c.h"
#include "sim_storage.h"
#include "spool.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "test_util.h"

#define BLOCK	    4096u
#define SEG_SIZE    (512u * 1024)
#define MSGS_MAX    32
#define CHUNKS_MAX  4
#define TABLE_SLOTS 1024u /* the reader's chunk table starts with this many slots */

/* ---- expected messages ---- */

struct tmsg {
	uint64_t id, idx, size;
	unsigned lane;
	uint32_t chunks;	       /* chunk records written so far */
	uint64_t first_seq, first_off; /* locator of the first chunk */
	uint64_t written;	       /* body bytes written so far */
	uint32_t crc;
	bool committed;
	bool seen; /* listed by the reader */
};

static struct tmsg msgs[MSGS_MAX];
static unsigned nmsgs;

static struct tmsg *msg_new(unsigned lane, uint64_t seq, uint32_t counter, uint64_t size)
{
	struct tmsg *m;

	CHECK(nmsgs < MSGS_MAX);
	m = &msgs[nmsgs];
	*m = (struct tmsg){.id = spool_id_make(lane, seq, counter), .idx = nmsgs, .size = size, .lane = lane};
	nmsgs++;
	return m;
}

/* Mirror of ctab_hash() in spool/spool_reader.c: the slot an id starts probing at. */
static uint64_t tbl_slot(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x & (TABLE_SLOTS - 1);
}

/* Smallest counter > after whose id on (lane, seq) starts at slot 0 (want0) or not. */
static uint32_t counter_pick(unsigned lane, uint64_t seq, uint32_t after, bool want0)
{
	for (uint32_t c = after + 1; c < (1u << SPOOL_ID_COUNTER_BITS); c++)
		if ((tbl_slot(spool_id_make(lane, seq, c)) == 0) == want0)
			return c;
	CHECK(!"no counter found");
	return 0;
}

/* ---- segment builder ---- */

struct segb {
	uint8_t *buf;
	unsigned lane;
	uint64_t seq, epoch;
	uint64_t off;	  /* next record */
	uint64_t durable; /* durable_off stamped into records: start of the current group */
};

static void seg_begin(struct segb *b, unsigned lane, uint64_t seq, uint64_t epoch)
{
	struct spool_seg_hdr h = {.version = SPOOL_FORMAT_VERSION,
				  .lane = lane,
				  .seq = seq,
				  .epoch = epoch,
				  .created_us = 1700000000000000ll,
				  .segment_size = SEG_SIZE};

	b->buf = calloc(1, SEG_SIZE);
	CHECK(b->buf);
	b->lane = lane;
	b->seq = seq;
	b->epoch = epoch;
	b->off = SPOOL_SEG_DATA_OFF;
	b->durable = SPOOL_SEG_DATA_OFF;
	spool_seg_hdr_encode(b->buf, &h);
}

/*
 * A group starts on a fresh block; its records carry how far the writer
 * knew the segment durable: everything before this group (DSYNC writes of
 * earlier groups completed).
 */
static void group_begin(struct segb *b)
{
	CHECK(b->off % BLOCK == 0);
	b->durable = b->off;
}

static uint8_t *rec_space(struct segb *b, uint32_t len)
{
	CHECK(b->off + spool_rec_total(len) <= SEG_SIZE);
	return b->buf + b->off;
}

/* A chunk of n body bytes of m. */
static void put_chunk(struct segb *b, struct tmsg *m, uint64_t n)
{
	uint8_t *p = rec_space(b, (uint32_t)n);

	CHECK(m->lane == b->lane && m->written + n <= m->size && m->chunks < CHUNKS_MAX);
	tu_body(m->idx, m->written, p + SPOOL_REC_HDR_SIZE, n);
	m->crc = crc32c(m->crc, p + SPOOL_REC_HDR_SIZE, n);
	spool_rec_encode(p, SPOOL_REC_CHUNK, (uint32_t)n, m->id, b->epoch, b->durable);
	if (!m->chunks) {
		m->first_seq = b->seq;
		m->first_off = b->off;
	}
	m->chunks++;
	m->written += n;
	b->off += spool_rec_total(n);
}

static void put_commit(struct segb *b, struct tmsg *m)
{
	struct tu_env e;
	struct spool_commit c;
	size_t len;
	uint8_t *p;

	CHECK(m->written == m->size);
	tu_env_make(&e, m->idx, m->size);
	len = spool_commit_size(&e.env);
	CHECK(len);
	c = (struct spool_commit){.body_len = m->size,
				  .body_crc = m->crc,
				  .chunk_count = m->chunks,
				  .first_seq = m->chunks ? m->first_seq : 0,
				  .first_off = m->chunks ? m->first_off : 0};
	p = rec_space(b, (uint32_t)len);
	spool_commit_encode(p + SPOOL_REC_HDR_SIZE, &c, &e.env);
	spool_rec_encode(p, SPOOL_REC_COMMIT, (uint32_t)len, m->id, b->epoch, b->durable);
	b->off += spool_rec_total(len);
	m->committed = true;
}

/* Pad to the next block boundary with a chunk of txn pad_id (zero payload), as dio_pad() does. */
static void put_pad(struct segb *b, uint64_t pad_id)
{
	uint64_t gap = ((b->off + BLOCK - 1) & ~(uint64_t)(BLOCK - 1)) - b->off;
	uint8_t *p;

	if (!gap)
		return;
	if (gap < SPOOL_REC_HDR_SIZE)
		gap += BLOCK;
	p = rec_space(b, (uint32_t)(gap - SPOOL_REC_HDR_SIZE));
	memset(p + SPOOL_REC_HDR_SIZE, 0, gap - SPOOL_REC_HDR_SIZE);
	spool_rec_encode(p, SPOOL_REC_CHUNK, (uint32_t)(gap - SPOOL_REC_HDR_SIZE), pad_id, b->epoch,
			 b->durable);
	CHECK(spool_rec_total(gap - SPOOL_REC_HDR_SIZE) == gap);
	b->off += gap;
	CHECK(b->off % BLOCK == 0);
}

static void seg_write(struct segb *b, const char *dir)
{
	char path[512];
	int fd;

	CHECK(spool_lane_dir_path(path, sizeof(path), dir, b->lane) == 0);
	CHECK(mkdir(path, 0755) == 0 || errno == EEXIST);
	CHECK(spool_seg_path(path, sizeof(path), dir, b->lane, b->seq) == 0);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, b->buf, SEG_SIZE) == (ssize_t)SEG_SIZE);
	CHECK(close(fd) == 0);
	free(b->buf);
	b->buf = NULL;
}

/* ---- the spool ---- */

/* Pad ids: the current writer's, and the one writers before the fix used (0 on lane 0). */
static uint64_t pad_new(unsigned lane)
{
	return spool_id_make(lane, 0, 1);
}

static uint64_t pad_old(unsigned lane)
{
	return spool_id_make(lane, 0, 0);
}

static void build_spool(const char *dir)
{
	struct segb b;
	struct tmsg *A, *B, *E, *H, *W, *X, *P, *Q, *R;
	uint32_t c = 0;

	/*
	 * Lane 0, segment 1. No id but H's starts at slot 0, so the first
	 * id-0 chunk (end of group 1) takes slot 0, and H's chunk after it
	 * would have claimed that slot with the pad's count and bytes.
	 */
	c = counter_pick(0, 1, c, false);
	A = msg_new(0, 1, c, 5000);
	c = counter_pick(0, 1, c, false);
	B = msg_new(0, 1, c, 9000);
	c = counter_pick(0, 1, c, false);
	E = msg_new(0, 1, c, 0);
	H = msg_new(0, 1, counter_pick(0, 1, 0, true), 3000);
	c = counter_pick(0, 1, c, false);
	W = msg_new(0, 1, c, 7000); /* begun in segment 1, finished in segment 2 */
	CHECK(tbl_slot(H->id) == 0 && tbl_slot(pad_old(0)) == 0);

	seg_begin(&b, 0, 1, 0x1111222233334444ull);
	group_begin(&b); /* group 1: A whole, B's first chunk, old-style pad (id 0) */
	put_chunk(&b, A, 2000);
	put_chunk(&b, B, 1000);
	put_chunk(&b, A, 3000);
	put_commit(&b, A);
	put_pad(&b, pad_old(0));
	group_begin(&b); /* group 2: B's last chunk, a pad, and B's commit only in group 3 */
	put_chunk(&b, B, 8000);
	put_pad(&b, pad_new(0));
	group_begin(&b); /* group 3: B's commit, an empty message, H's first chunk, both pads */
	put_commit(&b, B);
	put_commit(&b, E);
	put_chunk(&b, H, 1000);
	put_pad(&b, pad_new(0));
	put_pad(&b, pad_old(0)); /* gap 0 after the first pad: a no-op */
	group_begin(&b);	 /* group 4, the last one: old pad, H ends, W starts */
	put_chunk(&b, H, 1500);
	{
		/* An id-0 chunk between H's body chunks (a smaller, non-block-filling one). */
		uint8_t *p = rec_space(&b, 64);
		memset(p + SPOOL_REC_HDR_SIZE, 0, 64);
		spool_rec_encode(p, SPOOL_REC_CHUNK, 64, pad_old(0), b.epoch, b.durable);
		b.off += spool_rec_total(64);
	}
	put_chunk(&b, H, 500);
	put_pad(&b, pad_new(0)); /* between H's last body chunk and its commit */
	group_begin(&b);
	put_commit(&b, H);
	put_chunk(&b, W, 4000);
	put_pad(&b, pad_old(0));
	seg_write(&b, dir);

	/* Lane 0, segment 2: W continues and commits here; X whole. */
	c = 0;
	c = counter_pick(0, 2, c, false);
	X = msg_new(0, 2, c, 12000);
	seg_begin(&b, 0, 2, 0x5555666677778888ull);
	group_begin(&b);
	put_pad(&b, pad_old(0)); /* nothing to pad at a block boundary */
	put_chunk(&b, W, 3000);
	put_chunk(&b, X, 6000);
	put_pad(&b, pad_old(0));
	group_begin(&b);
	put_commit(&b, W);
	put_chunk(&b, X, 6000);
	put_pad(&b, pad_new(0));
	group_begin(&b);
	put_commit(&b, X);
	put_pad(&b, pad_new(0));
	seg_write(&b, dir);

	/* Lane 1, segment 1: both pad generations of lane 1 (lane << 56 and lane << 56 | 1). */
	P = msg_new(1, 1, 1, 4500);
	Q = msg_new(1, 1, 2, 100);
	R = msg_new(1, 1, 3, 2000); /* never committed (aborted): not listed */
	seg_begin(&b, 1, 1, 0x9999aaaabbbbccccull);
	group_begin(&b);
	put_chunk(&b, P, 4000);
	put_chunk(&b, R, 2000);
	put_pad(&b, pad_old(1));
	group_begin(&b);
	put_chunk(&b, Q, 100);
	put_pad(&b, pad_new(1));
	group_begin(&b);
	put_chunk(&b, P, 500);
	put_commit(&b, Q);
	put_pad(&b, pad_old(1));
	group_begin(&b);
	put_commit(&b, P);
	put_pad(&b, pad_new(1));
	seg_write(&b, dir);
}

/* ---- checks ---- */

static struct tmsg *msg_find(uint64_t id)
{
	for (unsigned i = 0; i < nmsgs; i++)
		if (msgs[i].id == id)
			return &msgs[i];
	return NULL;
}

static int on_msg(void *ctx, const struct spool_msg *sm)
{
	struct tmsg *m = msg_find(sm->id);
	char id[24];

	spool_id_format(sm->id, id, sizeof(id));
	if (!m || !m->committed || m->seen) {
		fprintf(stderr, "listed unexpectedly: %s\n", id);
		CHECK(!"unexpected message listed");
	}
	m->seen = true;
	CHECK(sm->lane == m->lane && sm->size == m->size && sm->chunk_count == m->chunks);
	CHECK(sm->body_crc == m->crc);
	CHECK(sm->env.rcpt_count == 2 && sm->env.body_size == m->size);
	return 0;
}

struct rbuf {
	uint8_t *p;
	size_t n, cap;
};

static int on_bytes(void *ctx, const void *buf, size_t len)
{
	struct rbuf *rb = ctx;

	CHECK(rb->n + len <= rb->cap);
	memcpy(rb->p + rb->n, buf, len);
	rb->n += len;
	return 0;
}

static void check_reader(const char *dir)
{
	struct spool_reader *r;
	struct spool_verify_report v;
	unsigned listed = 0, committed = 0;

	CHECK(spool_reader_open(&r, dir) == 0);
	for (unsigned i = 0; i < nmsgs; i++)
		msgs[i].seen = false;
	CHECK(spool_reader_foreach(r, on_msg, NULL) == 0);
	for (unsigned i = 0; i < nmsgs; i++) {
		char id[24];

		spool_id_format(msgs[i].id, id, sizeof(id));
		committed += msgs[i].committed;
		listed += msgs[i].seen;
		if (msgs[i].committed && !msgs[i].seen)
			fprintf(stderr, "committed message %s (lane %u) not listed\n", id, msgs[i].lane);
	}
	printf("reader: %u of %u committed messages listed\n", listed, committed);
	CHECK(listed == committed);

	/* Body bytes, through the id lookup `dotspool-ctl cat` uses. */
	for (unsigned i = 0; i < nmsgs; i++) {
		struct tmsg *m = &msgs[i];
		struct rbuf rb = {.p = malloc(m->size + 1), .cap = m->size};
		uint8_t *want = malloc(m->size + 1);
		int rc;

		CHECK(rb.p && want);
		rc = spool_reader_read(r, m->id, on_bytes, &rb);
		if (m->committed) {
			CHECK(rc == 0);
			CHECK(rb.n == m->size);
			tu_body(m->idx, 0, want, m->size);
			CHECK(memcmp(rb.p, want, m->size) == 0);
		} else {
			CHECK(rc == -ENOENT);
		}
		free(rb.p);
		free(want);
	}
	/* Pad ids are nobody's message. */
	for (unsigned lane = 0; lane < 2; lane++) {
		struct rbuf rb = {0};
		CHECK(spool_reader_read(r, pad_new(lane), on_bytes, &rb) == -ENOENT);
		CHECK(spool_reader_read(r, pad_old(lane), on_bytes, &rb) == -ENOENT);
	}

	CHECK(spool_reader_verify(r, &v, stderr) == 0);
	CHECK(v.messages == committed && v.bad_bodies == 0 && v.incomplete == 0);
	CHECK(v.quarantined == 0 && v.torn_tails == 0 && v.bad_segment_headers == 0);
	spool_reader_close(r);
}

static void check_recovery(const char *dir)
{
	struct spool_config cfg;
	struct spool_recovery_report rr;
	uint64_t want_msgs = 0, want_bytes = 0;
	char path[512];

	for (unsigned i = 0; i < nmsgs; i++)
		if (msgs[i].committed) {
			want_msgs++;
			want_bytes += msgs[i].size;
		}
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	CHECK(spool_recover(&cfg, &rr) == 0);
	spool_recovery_report_print(&rr, stdout);
	CHECK(rr.lanes == 2 && rr.segments == 3);
	CHECK(rr.messages == want_msgs && rr.bytes == want_bytes);
	CHECK(rr.discarded == 0 && rr.quarantined == 0 && rr.torn_tails == 0);
	/* No quarantine note next to any segment. */
	for (unsigned lane = 0; lane < 2; lane++)
		for (uint64_t seq = 1; seq <= 2; seq++) {
			CHECK(spool_seg_path(path, sizeof(path) - 16, dir, lane, seq) == 0);
			strcat(path, ".quarantine");
			CHECK(access(path, F_OK) != 0 && errno == ENOENT);
		}
}

/* ---- the writer ---- */

struct wscan {
	uint64_t chunks, pads;
};

static int wscan_rec(void *ctx, const struct spool_rec *rec)
{
	struct wscan *w = ctx;

	if (rec->type != SPOOL_REC_CHUNK)
		return 0;
	w->chunks++;
	CHECK(rec->txn_id != 0);
	if (!((rec->txn_id >> SPOOL_ID_COUNTER_BITS) & 0xffffffffull)) {
		CHECK(rec->txn_id == pad_new(0));
		w->pads++;
	}
	return 0;
}

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	unsigned *ok = ctx;

	CHECK(res == 0);
	(*ok)++;
}

static void check_writer_pad_ids(void)
{
	static const struct spool_scan_ops ops = {.rec = wscan_rec};
	char dir[256], path[512];
	struct spool_config cfg;
	struct spool_lane *l;
	struct spool_lane_stats st;
	struct spool_recovery_report rr;
	struct wscan w = {0};
	struct sim *s;
	uint64_t *seqs;
	unsigned ok = 0, n = 24;
	int nseg;

	tu_tmpdir(dir, sizeof(dir), "padw");
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	cfg.segment_size = SEG_SIZE;
	cfg.buffer_size = 256 * 1024;
	cfg.io_mode = SPOOL_IO_DIRECT_NO_ODIRECT;
	s = sim_create(7, NULL, on_settled, &ok);
	CHECK(spool_lane_open(&l, &cfg, 0, sim_ops(), s) == 0);
	sim_attach(s, l);
	for (unsigned i = 0; i < n; i++) {
		struct spool_txn t;
		struct tu_env e;
		uint8_t buf[3000];
		size_t size = 100 + (size_t)i * 997 % (sizeof(buf) - 100);

		CHECK(spool_txn_begin(l, &t) == 0);
		tu_body(i, 0, buf, size);
		CHECK(spool_txn_append(l, &t, buf, size) == 0);
		tu_env_make(&e, i, size);
		CHECK(spool_txn_commit(l, &t, &e.env, i) == 0);
		if (i % 3 == 2)
			sim_drain(s); /* groups of three */
	}
	sim_drain(s);
	spool_lane_stats(l, &st);
	CHECK(st.direct && st.pad_bytes > 0 && ok == n);
	spool_lane_close(l);
	sim_destroy(s);

	CHECK(spool_lane_dir_path(path, sizeof(path), dir, 0) == 0);
	nseg = spool_seg_list(path, &seqs);
	CHECK(nseg >= 1);
	for (int i = 0; i < nseg; i++) {
		struct spool_seg_hdr h;
		struct stat sb;
		uint8_t *map;
		int fd;

		CHECK(spool_seg_path(path, sizeof(path), dir, 0, seqs[i]) == 0);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		CHECK(fd >= 0 && fstat(fd, &sb) == 0);
		map = malloc((size_t)sb.st_size);
		CHECK(map && pread(fd, map, (size_t)sb.st_size, 0) == sb.st_size);
		close(fd);
		CHECK(spool_seg_hdr_decode(map, (size_t)sb.st_size, &h) == 0);
		spool_seg_scan(map, (uint64_t)sb.st_size, h.epoch, SPOOL_SEG_DATA_OFF, &ops, &w);
		free(map);
	}
	free(seqs);
	printf("writer: %llu chunk records, %llu pads, none with id 0\n", (unsigned long long)w.chunks,
	       (unsigned long long)w.pads);
	CHECK(w.pads > 0 && w.chunks >= n + w.pads);
	CHECK(spool_recover(&cfg, &rr) == 0);
	CHECK(rr.messages == n && rr.discarded == 0 && rr.quarantined == 0);
	tu_rmrf(dir);
}

int main(void)
{
	char dir[256];

	tu_tmpdir(dir, sizeof(dir), "pad");
	build_spool(dir);
	check_reader(dir);
	check_recovery(dir);
	/* Recovery leaves the spool as it found it: the reader still sees the same. */
	check_reader(dir);
	tu_rmrf(dir);
	check_writer_pad_ids();
	printf("spool_pad: ok (%u messages, lanes 0 and 1)\n", nmsgs);
	return 0;
}
