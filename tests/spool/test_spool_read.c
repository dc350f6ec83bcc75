/* SPDX-License-Identifier: MIT */
/*
 * spool_reader_read (dotspool-ctl cat) finds a message from its id: it scans
 * only the id's lane, from the segment the id names on. Checked here:
 *
 *  - every message of a multi-lane, multi-segment spool (interleaved txns,
 *    messages spanning segments, a txn held open across several segments,
 *    aborts, a restart) reads back byte for byte, through a reader opened
 *    per message (as `cat`) and through one shared reader;
 *  - unknown ids fail with -ENOENT: an unused counter in an existing segment,
 *    an aborted txn (chunks, no commit), a segment past the lane's end, a
 *    lane that does not exist, id 0;
 *  - equivalence with the whole-lane scan under damage (flipped bytes in
 *    records and bodies, a garbage tail, a deleted segment): a read finds a
 *    message exactly when spool_reader_foreach lists it, and what it returns
 *    with 0 is the body as written;
 *  - a reader while a lane writes (torn records at the active segment's
 *    tail): every message one reader listed, a new reader reads back intact.
 */
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

#include "spool.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "spool_syncio.h"
#include "test_util.h"

#define LANES	 3
#define MSGS_MAX 512
#define OPEN_MAX 4

static const unsigned lane_nos[LANES] = {0, 3, 12};

struct msg {
	uint64_t id, idx, size;
	unsigned lane;
	bool committed, aborted;
};

static struct msg msgs[MSGS_MAX];
static unsigned nmsgs;
static unsigned held_idx[2 * LANES], nheld; /* txns held open over a whole run */
static uint64_t n_settled;

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	CHECK(res == 0);
	n_settled++;
}

static void cfg_make(struct spool_config *cfg, const char *dir)
{
	spool_config_defaults(cfg);
	cfg->dir = dir;
	cfg->segment_size = 512 * 1024;
	cfg->buffer_size = 256 * 1024;
}

static uint64_t id_seq(uint64_t id)
{
	return (id >> SPOOL_ID_COUNTER_BITS) & 0xffffffffull;
}

/* ---- writing ---- */

struct wlane {
	struct spool_lane *l;
	struct spool_syncio *sio;
};

struct otx {
	struct spool_txn t;
	struct msg *m;
	uint64_t off;
	bool open;
};

static uint64_t rng_state = 1;

static uint64_t rnd(void)
{
	return tu_mix(rng_state++);
}

static uint64_t pick_size(void)
{
	static const uint64_t sizes[] = {0, 1, 77, 4000, 30000, 120000, 400000, 700000, 1300000};
	return sizes[rnd() % (sizeof(sizes) / sizeof(sizes[0]))];
}

static void w_begin(struct wlane *w, unsigned lane, struct otx *o)
{
	CHECK(nmsgs < MSGS_MAX);
	memset(o, 0, sizeof(*o));
	CHECK(spool_txn_begin(w->l, &o->t) == 0);
	o->m = &msgs[nmsgs];
	*o->m = (struct msg){.id = o->t.id, .idx = nmsgs, .size = pick_size(), .lane = lane};
	nmsgs++;
	o->open = true;
}

static void w_append(struct wlane *w, struct otx *o, uint64_t n)
{
	static uint8_t buf[49152];
	int rc;

	n = DS_MIN(n, DS_MIN(o->m->size - o->off, (uint64_t)sizeof(buf)));
	if (!n)
		return;
	tu_body(o->m->idx, o->off, buf, n);
	while ((rc = spool_txn_append(w->l, &o->t, buf, n)) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
	o->off += n;
}

static void w_finish(struct wlane *w, struct otx *o, bool abort)
{
	struct tu_env e;
	int rc;

	if (abort) {
		spool_txn_abort(w->l, &o->t);
		o->m->aborted = true;
	} else {
		CHECK(o->off == o->m->size);
		tu_env_make(&e, o->m->idx, o->m->size);
		while ((rc = spool_txn_commit(w->l, &o->t, &e.env, o->m->idx)) == -EAGAIN)
			spool_syncio_run(w->sio);
		CHECK(rc == 0);
		o->m->committed = true;
	}
	o->open = false;
}

/*
 * One run of all lanes: up to OPEN_MAX txns open per lane, appends in
 * random pieces to random open txns, about one txn in 10 aborted (after
 * some of its chunks were written). One txn per lane stays open for the
 * whole run, gets its first byte only halfway (after several rolls) and
 * commits last.
 */
static void write_run(const char *dir, unsigned per_lane)
{
	struct spool_config cfg;
	struct wlane w[LANES];
	struct otx open[LANES][OPEN_MAX], held[LANES];
	unsigned begun[LANES] = {0};

	cfg_make(&cfg, dir);
	for (unsigned k = 0; k < LANES; k++) {
		CHECK(spool_syncio_create(&w[k].sio, on_settled, NULL) == 0);
		CHECK(spool_lane_open(&w[k].l, &cfg, lane_nos[k], spool_syncio_ops(), w[k].sio) == 0);
		spool_syncio_attach(w[k].sio, w[k].l);
		memset(open[k], 0, sizeof(open[k]));
		w_begin(&w[k], lane_nos[k], &held[k]);
		while (held[k].m->size < 100000)
			held[k].m->size = pick_size();
		CHECK(nheld < 2 * LANES);
		held_idx[nheld++] = (unsigned)held[k].m->idx;
	}
	for (;;) {
		bool busy = false;

		for (unsigned k = 0; k < LANES; k++) {
			for (unsigned j = 0; j < OPEN_MAX; j++) {
				struct otx *o = &open[k][j];

				if (!o->open && begun[k] < per_lane) {
					w_begin(&w[k], lane_nos[k], o);
					begun[k]++;
				}
				if (!o->open)
					continue;
				busy = true;
				if (rnd() % 3 == 0)
					continue; /* let the others interleave */
				w_append(&w[k], o, 1 + rnd() % 40000);
				if (o->off == o->m->size || (o->off && rnd() % 40 == 0))
					w_finish(&w[k], o, o->off != o->m->size || rnd() % 10 == 0);
			}
			if (begun[k] >= per_lane / 2)
				w_append(&w[k], &held[k], 1 + rnd() % 20000);
			if (rnd() % 4 == 0)
				spool_syncio_run(w[k].sio);
		}
		if (!busy)
			break;
	}
	for (unsigned k = 0; k < LANES; k++) {
		while (held[k].off < held[k].m->size)
			w_append(&w[k], &held[k], 40000);
		w_finish(&w[k], &held[k], false);
		spool_syncio_run(w[k].sio);
		CHECK(!spool_lane_busy(w[k].l));
		spool_lane_close(w[k].l);
		spool_syncio_destroy(w[k].sio);
	}
}

/* ---- reading ---- */

struct cmp {
	uint64_t idx, off;
	bool same;
};

static int cmp_cb(void *ctx, const void *buf, size_t len)
{
	struct cmp *c = ctx;
	static uint8_t want[65536];

	for (size_t done = 0; done < len;) {
		size_t n = DS_MIN(len - done, sizeof(want));
		tu_body(c->idx, c->off + done, want, n);
		if (memcmp(want, (const uint8_t *)buf + done, n))
			c->same = false;
		done += n;
	}
	c->off += len;
	return 0;
}

/* spool_reader_read of m->id; with rc 0 the bytes must be the body as written. */
static int read_check(struct spool_reader *r, const struct msg *m)
{
	struct cmp c = {.idx = m->idx, .same = true};
	int rc = spool_reader_read(r, m->id, cmp_cb, &c);

	if (rc == 0)
		CHECK(c.same && c.off == m->size);
	return rc;
}

static int read_fresh(const char *dir, const struct msg *m)
{
	struct spool_reader *r;
	int rc;

	CHECK(spool_reader_open(&r, dir) == 0);
	rc = read_check(r, m);
	spool_reader_close(r);
	return rc;
}

static struct msg *msg_by_id(uint64_t id)
{
	for (unsigned i = 0; i < nmsgs; i++)
		if (msgs[i].id == id)
			return &msgs[i];
	return NULL;
}

struct listing {
	bool listed[MSGS_MAX];
	unsigned n, later_commit, spans, late_first_chunk, multi_chunk;
};

static int list_cb(void *ctx, const struct spool_msg *sm)
{
	struct listing *ls = ctx;
	struct msg *m = msg_by_id(sm->id);

	CHECK(m && m->committed && !ls->listed[m->idx]);
	CHECK(sm->size == m->size && sm->lane == m->lane);
	ls->listed[m->idx] = true;
	ls->n++;
	if (sm->seq != id_seq(sm->id))
		ls->later_commit++;
	if (sm->chunk_count && sm->first_seq != sm->seq)
		ls->spans++;
	if (sm->chunk_count && sm->first_seq != id_seq(sm->id))
		ls->late_first_chunk++;
	if (sm->chunk_count > 1)
		ls->multi_chunk++;
	return 0;
}

static void listing_get(const char *dir, struct listing *ls)
{
	struct spool_reader *r;

	memset(ls, 0, sizeof(*ls));
	CHECK(spool_reader_open(&r, dir) == 0);
	CHECK(spool_reader_foreach(r, list_cb, ls) == 0);
	spool_reader_close(r);
}

/* Segment sequences of a lane, as listed on disk. */
static int lane_seqs(const char *dir, unsigned lane, uint64_t **seqs)
{
	char ldir[512];

	CHECK(spool_lane_dir_path(ldir, sizeof(ldir), dir, lane) == 0);
	return spool_seg_list(ldir, seqs);
}

/* Ids that name no committed message. */
static unsigned unknown_ids(const char *dir, uint64_t *out, unsigned cap)
{
	unsigned n = 0;

	for (unsigned k = 0; k < LANES; k++) {
		uint64_t *seqs;
		int ns = lane_seqs(dir, lane_nos[k], &seqs);

		CHECK(ns > 0);
		for (int i = 0; i < ns && n + 1 < cap; i++) {
			/* Existing segment, counter never reached in it; and a neighbour of a real id. */
			out[n++] = spool_id_make(lane_nos[k], seqs[i], (1u << SPOOL_ID_COUNTER_BITS) - 2);
			out[n++] = spool_id_make(lane_nos[k], seqs[i], 1000);
		}
		/* Past the lane's last segment, before its first one (sequence 0). */
		if (n + 3 < cap) {
			out[n++] = spool_id_make(lane_nos[k], seqs[ns - 1] + 1, 0);
			out[n++] = spool_id_make(lane_nos[k], seqs[ns - 1] + 100000, 5);
			out[n++] = spool_id_make(lane_nos[k], 0, 0);
		}
		free(seqs);
	}
	/* A lane that does not exist; id 0. */
	out[n++] = spool_id_make(200, 1, 0);
	out[n++] = spool_id_make(1, 1, 0);
	out[n++] = 0;
	CHECK(n <= cap);
	return n;
}

static void test_read_all(const char *dir)
{
	struct spool_reader *shared;
	struct listing ls;
	uint64_t unk[1024];
	unsigned committed = 0, aborted = 0, nunk;
	char tmpl[] = "/tmp/dsread-XXXXXX";
	int fd;

	listing_get(dir, &ls);
	for (unsigned i = 0; i < nmsgs; i++) {
		committed += msgs[i].committed;
		aborted += msgs[i].aborted;
		if (msgs[i].committed)
			CHECK(ls.listed[i]);
	}
	CHECK(ls.n == committed);
	/* The workload covers what the shortcut must handle. */
	printf("read: %u messages (%u commit in a later segment than the id's, %u span segments, %u first "
	       "chunk after the id's segment, %u multi-chunk), %u aborted\n",
	       ls.n, ls.later_commit, ls.spans, ls.late_first_chunk, ls.multi_chunk, aborted);
	CHECK(ls.later_commit >= 5 && ls.spans >= 5 && ls.late_first_chunk >= LANES && ls.multi_chunk >= 5);
	CHECK(aborted >= 3);

	/* As `cat`: a reader per message (maps only what the read needs). */
	for (unsigned i = 0; i < nmsgs; i++)
		CHECK(read_fresh(dir, &msgs[i]) == (msgs[i].committed ? 0 : -ENOENT));
	/* One reader for all, reverse order, then again once foreach mapped everything. */
	CHECK(spool_reader_open(&shared, dir) == 0);
	for (unsigned i = nmsgs; i-- > 0;)
		CHECK(read_check(shared, &msgs[i]) == (msgs[i].committed ? 0 : -ENOENT));
	CHECK(spool_reader_foreach(shared, list_cb, &(struct listing){0}) == 0);
	for (unsigned i = 0; i < nmsgs; i++)
		CHECK(read_check(shared, &msgs[i]) == (msgs[i].committed ? 0 : -ENOENT));

	/* Unknown ids: in existing segments, past the end, in no lane. */
	nunk = unknown_ids(dir, unk, 1024);
	for (unsigned i = 0; i < nunk; i++) {
		struct msg m = {.id = unk[i]};
		CHECK(!msg_by_id(unk[i]));
		CHECK(read_check(shared, &m) == -ENOENT);
		CHECK(read_fresh(dir, &m) == -ENOENT);
	}

	/* read_file writes the same bytes. */
	fd = mkstemp(tmpl);
	CHECK(fd >= 0);
	for (unsigned i = 0; i < nmsgs; i++) {
		FILE *f;
		uint8_t *got, *want;

		if (!msgs[i].committed || msgs[i].size < 400000)
			continue;
		f = fopen(tmpl, "w+b");
		CHECK(f && spool_reader_read_file(shared, msgs[i].id, f) == 0);
		CHECK((uint64_t)ftell(f) == msgs[i].size);
		got = malloc(msgs[i].size);
		want = malloc(msgs[i].size);
		rewind(f);
		CHECK(fread(got, 1, msgs[i].size, f) == msgs[i].size);
		tu_body(msgs[i].idx, 0, want, msgs[i].size);
		CHECK(!memcmp(got, want, msgs[i].size));
		free(got);
		free(want);
		fclose(f);
	}
	close(fd);
	unlink(tmpl);
	spool_reader_close(shared);
	printf("read: every message byte for byte, %u unknown ids not found: ok\n", nunk);
}

/* ---- damage: same verdicts as the whole-lane scan ---- */

static void flip(const char *dir, unsigned lane, uint64_t seq, uint64_t off)
{
	char path[512];
	uint8_t b;
	int fd;

	CHECK(spool_seg_path(path, sizeof(path), dir, lane, seq) == 0);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK(pread(fd, &b, 1, (off_t)off) == 1);
	b ^= (uint8_t)(1 + rnd() % 255);
	CHECK(pwrite(fd, &b, 1, (off_t)off) == 1);
	close(fd);
}

struct locs {
	struct {
		unsigned lane;
		uint64_t seq, off, first_seq, first_off;
	} m[MSGS_MAX];
	unsigned n;
};

static int locs_cb(void *ctx, const struct spool_msg *sm)
{
	struct locs *l = ctx;

	if (l->n < MSGS_MAX)
		l->m[l->n++] = (typeof(l->m[0])){sm->lane, sm->seq, sm->off, sm->first_seq, sm->first_off};
	return 0;
}

/* Every id read must agree with foreach: found exactly when listed; with 0, the body as written. */
static unsigned oracle_check(const char *dir, const uint64_t *unk, unsigned nunk, unsigned *found)
{
	struct listing ls;
	struct spool_reader *r;
	unsigned badmsg = 0;

	listing_get(dir, &ls);
	CHECK(spool_reader_open(&r, dir) == 0);
	for (unsigned i = 0; i < nmsgs; i++) {
		int rc = read_check(r, &msgs[i]);
		CHECK(rc == 0 || rc == -ENOENT || rc == -EBADMSG);
		CHECK((rc != -ENOENT) == ls.listed[i]);
		if (i % 7 == 0)
			CHECK(read_fresh(dir, &msgs[i]) == rc);
		badmsg += rc == -EBADMSG;
		*found += rc != -ENOENT;
	}
	for (unsigned i = 0; i < nunk; i++) {
		struct msg m = {.id = unk[i]};
		CHECK(read_check(r, &m) == -ENOENT);
	}
	spool_reader_close(r);
	return badmsg;
}

struct held_ctx {
	const struct msg *held;
	bool *first_elsewhere;
};

static int held_cb(void *ctx, const struct spool_msg *sm)
{
	struct held_ctx *h = ctx;

	if (sm->id == h->held->id)
		*h->first_elsewhere = sm->first_seq > id_seq(sm->id) && sm->seq > id_seq(sm->id);
	return 0;
}

static void test_damage(const char *dir)
{
	uint64_t unk[1024], *seqs;
	unsigned nunk = unknown_ids(dir, unk, 1024), found = 0, badmsg = 0, rounds = 40;
	struct msg *held = NULL;
	struct spool_reader *r;
	char path[512];
	int ns, fd;
	bool first_elsewhere = false;

	/*
	 * The segment a txn began in may be gone (removed by hand): the read
	 * starts at the next one. The last txn of lane 0 was held open from
	 * its first segment and its chunks all lie in later ones.
	 */
	for (unsigned i = 0; i < nheld; i++)
		if (msgs[held_idx[i]].lane == lane_nos[0])
			held = &msgs[held_idx[i]];
	CHECK(held && held->committed && held->size >= 100000);
	CHECK(spool_reader_open(&r, dir) == 0);
	CHECK(spool_reader_foreach(r, held_cb, &(struct held_ctx){held, &first_elsewhere}) == 0);
	spool_reader_close(r);
	CHECK(first_elsewhere); /* no record of it in its own segment */
	CHECK(spool_seg_path(path, sizeof(path), dir, held->lane, id_seq(held->id)) == 0);
	CHECK(unlink(path) == 0);
	CHECK(read_fresh(dir, held) == 0);
	badmsg += oracle_check(dir, unk, nunk, &found);

	/* Garbage at the tail of the last segment of each lane (a torn write). */
	for (unsigned k = 0; k < LANES; k++) {
		uint8_t junk[700];
		struct stat st;

		ns = lane_seqs(dir, lane_nos[k], &seqs);
		CHECK(ns > 0);
		CHECK(spool_seg_path(path, sizeof(path), dir, lane_nos[k], seqs[ns - 1]) == 0);
		free(seqs);
		fd = open(path, O_RDWR);
		CHECK(fd >= 0 && fstat(fd, &st) == 0);
		for (size_t i = 0; i < sizeof(junk); i++)
			junk[i] = (uint8_t)rnd();
		CHECK(pwrite(fd, junk, sizeof(junk), st.st_size - 8192) == (ssize_t)sizeof(junk));
		close(fd);
	}
	badmsg += oracle_check(dir, unk, nunk, &found);

	/* Flipped bytes: in commit records, in first chunk records, anywhere. */
	for (unsigned round = 0; round < rounds; round++) {
		struct locs *l = calloc(1, sizeof(*l));

		CHECK(l && spool_reader_open(&r, dir) == 0);
		CHECK(spool_reader_foreach(r, locs_cb, l) == 0);
		spool_reader_close(r);
		for (int f = 0; f < 3 && l->n; f++) {
			unsigned j = (unsigned)(rnd() % l->n);
			switch (rnd() % 3) {
			case 0: /* commit header or payload */
				flip(dir, l->m[j].lane, l->m[j].seq, l->m[j].off + rnd() % 120);
				break;
			case 1: /* first chunk header, or its first body bytes */
				if (l->m[j].first_seq && (ns = lane_seqs(dir, l->m[j].lane, &seqs)) > 0) {
					for (int i = 0; i < ns; i++)
						if (seqs[i] == l->m[j].first_seq)
							flip(dir, l->m[j].lane, l->m[j].first_seq,
							     l->m[j].first_off + rnd() % 80);
					free(seqs);
				}
				break;
			default: /* somewhere in the records of the commit's segment */
				flip(dir, l->m[j].lane, l->m[j].seq,
				     SPOOL_SEG_DATA_OFF + rnd() % (l->m[j].off - SPOOL_SEG_DATA_OFF + 1));
			}
		}
		free(l);
		badmsg += oracle_check(dir, unk, nunk, &found);
	}
	printf("damage: %u rounds, reads agree with the whole-lane scan (%u found, %u body checksum "
	       "mismatches): ok\n",
	       rounds + 2, found, badmsg);
}

/* ---- a reader while a lane writes ---- */

static volatile int live_done;
static struct msg live_msgs[400];
static unsigned live_begun; /* live_msgs[0, live_begun) are filled in (release/acquire) */

static void *live_writer(void *arg)
{
	const char *dir = arg;
	struct spool_config cfg;
	struct spool_syncio *sio;
	struct spool_lane *l;
	uint64_t n = 0;

	cfg_make(&cfg, dir);
	CHECK(spool_syncio_create(&sio, on_settled, NULL) == 0);
	CHECK(spool_lane_open(&l, &cfg, 2, spool_syncio_ops(), sio) == 0);
	spool_syncio_attach(sio, l);
	while (n < 400) {
		struct spool_txn t[2];
		uint64_t idx[2], size[2];
		struct tu_env e;
		int rc;

		/* Two txns interleaved, bodies appended in pieces; sizes up to more than a segment. */
		for (int j = 0; j < 2; j++) {
			idx[j] = 100000 + n + (uint64_t)j;
			size[j] = (tu_mix(idx[j]) % 4 == 0) ? 600000 : tu_mix(idx[j]) % 60000;
			CHECK(spool_txn_begin(l, &t[j]) == 0);
			live_msgs[n + (uint64_t)j] =
				(struct msg){.id = t[j].id, .idx = idx[j], .size = size[j]};
		}
		__atomic_store_n(&live_begun, (unsigned)n + 2, __ATOMIC_RELEASE);
		for (uint64_t off = 0; off < DS_MAX(size[0], size[1]); off += 20000) {
			static uint8_t buf[20000];
			for (int j = 0; j < 2; j++) {
				uint64_t k = off < size[j] ? DS_MIN(size[j] - off, sizeof(buf)) : 0;
				if (!k)
					continue;
				tu_body(idx[j], off, buf, k);
				while ((rc = spool_txn_append(l, &t[j], buf, k)) == -EAGAIN)
					spool_syncio_run(sio);
				CHECK(rc == 0);
			}
		}
		for (int j = 1; j >= 0; j--) {
			tu_env_make(&e, idx[j], size[j]);
			while ((rc = spool_txn_commit(l, &t[j], &e.env, idx[j])) == -EAGAIN)
				spool_syncio_run(sio);
			CHECK(rc == 0);
		}
		n += 2;
		if (n % 6 == 0)
			spool_syncio_run(sio);
	}
	spool_syncio_run(sio);
	spool_lane_close(l);
	spool_syncio_destroy(sio);
	__atomic_store_n(&live_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

struct live_seen {
	uint64_t id[400], idx[400], size[400];
	unsigned n;
};

static int live_list(void *ctx, const struct spool_msg *m)
{
	struct live_seen *s = ctx;
	unsigned long long idx;

	CHECK(s->n < 400);
	CHECK(sscanf(m->env.mail_from, "t%llu@", &idx) == 1);
	s->id[s->n] = m->id;
	s->idx[s->n] = idx;
	s->size[s->n] = m->size;
	s->n++;
	return 0;
}

static void test_live(void)
{
	char dir[256];
	pthread_t th;
	unsigned rounds = 0, reads = 0, last = 0;
	struct live_seen *seen = calloc(1, sizeof(*seen));

	tu_tmpdir(dir, sizeof(dir), "readlive");
	live_done = 0;
	CHECK(seen && pthread_create(&th, NULL, live_writer, dir) == 0);
	for (;;) {
		int done = __atomic_load_n(&live_done, __ATOMIC_ACQUIRE);
		struct spool_reader *r;
		int rc = spool_reader_open(&r, dir);

		if (rc == -ENOENT)
			continue;
		CHECK(rc == 0);
		seen->n = 0;
		CHECK(spool_reader_foreach(r, live_list, seen) == 0);
		spool_reader_close(r);
		CHECK(seen->n >= last);
		last = seen->n;
		/* Listed once: a reader opened later reads it back intact (newest ones and a sample). */
		for (unsigned i = 0; i < seen->n; i++) {
			struct msg m = {.id = seen->id[i], .idx = seen->idx[i], .size = seen->size[i]};
			if (i + 8 < seen->n && i % 13 != rounds % 13)
				continue;
			CHECK(read_fresh(dir, &m) == 0);
			reads++;
		}
		/* Ids not committed yet (or never): not found, whatever the tail holds. */
		for (unsigned i = seen->n, nb = __atomic_load_n(&live_begun, __ATOMIC_ACQUIRE);
		     i < nb && i < seen->n + 4; i++) {
			int rc2 = read_fresh(dir, &live_msgs[i]);
			CHECK(rc2 == 0 || rc2 == -ENOENT);
		}
		rounds++;
		if (done)
			break;
	}
	CHECK(pthread_join(th, NULL) == 0);
	CHECK(last == 400);
	for (unsigned i = 0; i < 400; i++)
		CHECK(read_fresh(dir, &live_msgs[i]) == 0);
	tu_rmrf(dir);
	free(seen);
	printf("read during writes: ok (%u rounds, %u reads)\n", rounds, reads);
}

static int count_cb(void *ctx, const struct spool_msg *sm)
{
	(void)sm;
	(*(unsigned *)ctx)++;
	return 0;
}

/*
 * Format 5: a segment a reader mapped is reclaimed, renamed to a free file
 * and stamped again as another segment (new sequence, new epoch) under the
 * map. spool_reader_changed() (dotspool-ctl runs the command again on it)
 * must see it; a reader whose segments are unchanged must not.
 */
static void test_changed(const char *dir)
{
	struct spool_reader *r;
	struct spool_seg_hdr h;
	uint8_t hb[SPOOL_SEG_HDR_SIZE];
	char path[512];
	uint64_t *seqs;
	unsigned n = 0;
	int fd, ns = lane_seqs(dir, lane_nos[0], &seqs);

	CHECK(ns > 0);
	CHECK(spool_reader_open(&r, dir) == 0);
	CHECK(spool_reader_foreach(r, count_cb, &n) == 0 && n > 0);
	CHECK(!spool_reader_changed(r));
	CHECK(spool_seg_path(path, sizeof(path), dir, lane_nos[0], seqs[0]) == 0);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0 && pread(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb));
	CHECK(spool_seg_hdr_decode(hb, sizeof(hb), &h) == 0);
	/* What the spare does to a free file (spool_segment.c): a new header, RECYCLED. */
	struct spool_seg_hdr nh = h;
	nh.version = SPOOL_FORMAT_VERSION;
	nh.seq = seqs[ns - 1] + 7;
	nh.epoch = h.epoch ^ 0x5a5a5a5a5a5a5a5aull;
	nh.flags = SPOOL_SEG_F_RECYCLED;
	uint8_t nb[SPOOL_SEG_HDR_SIZE];
	spool_seg_hdr_encode(nb, &nh);
	CHECK(pwrite(fd, nb, sizeof(nb), 0) == (ssize_t)sizeof(nb));
	CHECK(spool_reader_changed(r));
	/* Put it back (the damage test below wants the spool as written). */
	CHECK(pwrite(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb));
	CHECK(!spool_reader_changed(r));
	close(fd);
	spool_reader_close(r);
	free(seqs);
	printf("reader sees a segment stamped again under its map (recycled): ok\n");
}

int main(void)
{
	char dir[256];

	tu_tmpdir(dir, sizeof(dir), "read");
	write_run(dir, 40);
	write_run(dir, 30); /* restart: lanes continue on new segments, old ids stay valid */
	test_read_all(dir);
	test_changed(dir);
	test_damage(dir);
	tu_rmrf(dir);
	test_live();
	return 0;
}
