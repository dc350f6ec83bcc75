/* SPDX-License-Identifier: MIT */
/*
 * spool_fetch (spool_fetch.h): messages read back by the location of their
 * commit record, as the delivery stage does. Checked here, on a spool of
 * two lanes of small segments written by the real lane (interleaved txns,
 * bodies up to 1.3 MB spanning several segments, aborts):
 *
 *  - every message, fetched by (lane, seq, off, id), has its envelope and
 *    reads back byte for byte in random read sizes; random seeks back and
 *    forth read the right bytes too;
 *  - several messages in progress at once, reads interleaved;
 *  - maps_max 2: a message spanning many segments reads whole; a second
 *    message needing a third map gets -EMFILE, and works after a put;
 *  - wrong id, offset, segment or lane: -ENOENT; a damaged commit record:
 *    -EBADMSG;
 *  - while a lane keeps writing (the active segment changes under the maps,
 *    a txn half written): every committed message fetched right after its
 *    commit settled reads back intact;
 *  - a flipped body byte: every read before the last piece succeeds, the
 *    last piece is never handed out (-EBADMSG), also on a second pass; a
 *    missing middle segment: -EBADMSG.
 * Prints the sequential read speed (a number, not a timed test).
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#include "spool.h"
#include "spool_fetch.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "spool_syncio.h"
#include "test_util.h"

#define LANES	 2
#define MSGS_MAX 256

static const unsigned lane_nos[LANES] = {1, 7};

struct msg {
	uint64_t id, idx, size;
	unsigned lane;
	bool committed;
	/* from the listing */
	bool listed;
	uint64_t seq, off, first_seq;
};

static struct msg msgs[MSGS_MAX];
static unsigned nmsgs;
static uint64_t n_settled;
static uint64_t rng_state = 7;

static uint64_t rnd(void)
{
	return tu_mix(rng_state++);
}

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

static uint64_t pick_size(void)
{
	static const uint64_t sizes[] = {0, 1, 77, 4000, 30000, 120000, 400000, 700000, 1300000};
	return sizes[rnd() % (sizeof(sizes) / sizeof(sizes[0]))];
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

static void w_open(struct wlane *w, const struct spool_config *cfg, unsigned lane)
{
	CHECK(spool_syncio_create(&w->sio, on_settled, NULL) == 0);
	CHECK(spool_lane_open(&w->l, cfg, lane, spool_syncio_ops(), w->sio) == 0);
	spool_syncio_attach(w->sio, w->l);
}

static void w_close(struct wlane *w)
{
	spool_syncio_run(w->sio);
	CHECK(!spool_lane_busy(w->l));
	spool_lane_close(w->l);
	spool_syncio_destroy(w->sio);
}

static void w_begin(struct wlane *w, unsigned lane, struct otx *o, uint64_t size)
{
	CHECK(nmsgs < MSGS_MAX);
	memset(o, 0, sizeof(*o));
	CHECK(spool_txn_begin(w->l, &o->t) == 0);
	o->m = &msgs[nmsgs];
	*o->m = (struct msg){.id = o->t.id, .idx = nmsgs, .size = size, .lane = lane};
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

static void w_commit(struct wlane *w, struct otx *o)
{
	struct tu_env e;
	int rc;

	CHECK(o->off == o->m->size);
	tu_env_make(&e, o->m->idx, o->m->size);
	while ((rc = spool_txn_commit(w->l, &o->t, &e.env, o->m->idx)) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
	o->m->committed = true;
	o->open = false;
}

/* Two txns open per lane, appended in random pieces; about one in 8 aborted. */
static void write_spool(const char *dir, unsigned per_lane)
{
	struct spool_config cfg;

	cfg_make(&cfg, dir);
	for (unsigned k = 0; k < LANES; k++) {
		struct wlane w;
		struct otx o[2] = {0};
		unsigned begun = 0;

		w_open(&w, &cfg, lane_nos[k]);
		for (;;) {
			bool busy = false;
			for (int j = 0; j < 2; j++) {
				if (!o[j].open && begun < per_lane) {
					w_begin(&w, lane_nos[k], &o[j], pick_size());
					begun++;
				}
				if (!o[j].open)
					continue;
				busy = true;
				w_append(&w, &o[j], 1 + rnd() % 40000);
				if (o[j].off == o[j].m->size) {
					if (rnd() % 8 == 0) {
						spool_txn_abort(w.l, &o[j].t);
						o[j].open = false;
					} else {
						w_commit(&w, &o[j]);
					}
				}
			}
			if (rnd() % 3 == 0)
				spool_syncio_run(w.sio);
			if (!busy)
				break;
		}
		w_close(&w);
	}
}

/* ---- locations (the listing) ---- */

static struct msg *msg_by_id(uint64_t id)
{
	for (unsigned i = 0; i < nmsgs; i++)
		if (msgs[i].id == id)
			return &msgs[i];
	return NULL;
}

static int list_cb(void *ctx, const struct spool_msg *sm)
{
	struct msg *m = msg_by_id(sm->id);

	CHECK(m && m->committed && sm->size == m->size);
	m->listed = true;
	m->seq = sm->seq;
	m->off = sm->off;
	m->first_seq = sm->chunk_count ? sm->first_seq : sm->seq;
	return 0;
}

static void locate(const char *dir)
{
	struct spool_reader *r;

	CHECK(spool_reader_open(&r, dir) == 0);
	CHECK(spool_reader_foreach(r, list_cb, NULL) == 0);
	spool_reader_close(r);
}

/* ---- reading ---- */

static bool body_equal(uint64_t idx, uint64_t off, const uint8_t *buf, size_t n)
{
	static uint8_t want[1 << 17];

	for (size_t done = 0; done < n;) {
		size_t k = DS_MIN(n - done, sizeof(want));
		tu_body(idx, off + done, want, k);
		if (memcmp(want, buf + done, k))
			return false;
		done += k;
	}
	return true;
}

static void env_check(const struct spool_fetch_msg *fm, const struct msg *m)
{
	char from[64];

	snprintf(from, sizeof(from), "t%llu@example.org", (unsigned long long)m->idx);
	CHECK(fm->m.id == m->id && fm->m.size == m->size && fm->m.lane == m->lane);
	CHECK(fm->m.seq == m->seq && fm->m.off == m->off);
	CHECK(!strcmp(fm->m.env.mail_from, from));
	CHECK(fm->m.env.rcpt_count == 2 && !strcmp(fm->m.env.rcpt[1].addr, "b@localhost") &&
	      !strcmp(fm->m.env.rcpt[1].params, "NOTIFY=NEVER"));
	CHECK(fm->m.env.received_at_us == 1700000000000000ll + (int64_t)m->idx);
}

static int get(struct spool_fetch *f, const struct msg *m, struct spool_fetch_msg *fm)
{
	return spool_fetch_get(f, m->lane, m->seq, m->off, m->id, fm);
}

/* Read the whole body from off on, in random sizes up to max_read; compare. */
static void read_all(struct spool_fetch *f, struct spool_fetch_msg *fm, const struct msg *m, uint64_t off,
		     size_t max_read)
{
	static uint8_t buf[1 << 17];
	int n;

	CHECK(max_read <= sizeof(buf));
	while ((n = spool_fetch_read(f, fm, off, buf, 1 + rnd() % max_read)) > 0) {
		CHECK(body_equal(m->idx, off, buf, (size_t)n));
		off += (uint64_t)n;
	}
	CHECK(n == 0 && off == m->size);
}

static unsigned fetch_all(const char *dir, unsigned maps_max)
{
	struct spool_fetch *f;
	unsigned done = 0;
	uint8_t buf[9000];

	CHECK(spool_fetch_open(&f, dir, maps_max) == 0);
	for (unsigned i = 0; i < nmsgs; i++) {
		struct msg *m = &msgs[i];
		struct spool_fetch_msg fm;

		if (!m->committed)
			continue;
		CHECK(m->listed);
		CHECK(get(f, m, &fm) == 0);
		env_check(&fm, m);
		read_all(f, &fm, m, 0, 1 + rnd() % 70000);
		/* Random seeks: back (restart of the walk) and forward (skipping chunks). */
		for (int k = 0; k < 6 && m->size; k++) {
			uint64_t off = rnd() % m->size;
			int n = spool_fetch_read(f, &fm, off, buf, sizeof(buf));
			CHECK(n > 0 && (uint64_t)n <= m->size - off);
			CHECK(body_equal(m->idx, off, buf, (size_t)n));
		}
		CHECK(spool_fetch_read(f, &fm, m->size, buf, sizeof(buf)) == 0);
		CHECK(spool_fetch_read(f, &fm, m->size + 1, buf, sizeof(buf)) == -EINVAL);
		spool_fetch_put(f, &fm);
		done++;
	}
	spool_fetch_close(f);
	return done;
}

/* Three messages in progress at once, reads interleaved piece by piece. */
static void fetch_interleaved(const char *dir)
{
	struct spool_fetch *f;
	struct spool_fetch_msg fm[3];
	struct msg *pick[3];
	uint64_t off[3] = {0};
	unsigned n = 0;
	static uint8_t buf[20000];

	for (unsigned i = 0; i < nmsgs && n < 3; i++)
		if (msgs[i].committed && msgs[i].size > 300000)
			pick[n++] = &msgs[i];
	CHECK(n == 3);
	CHECK(spool_fetch_open(&f, dir, 6) == 0);
	for (unsigned k = 0; k < 3; k++)
		CHECK(get(f, pick[k], &fm[k]) == 0);
	for (bool more = true; more;) {
		more = false;
		for (unsigned k = 0; k < 3; k++) {
			int rc = spool_fetch_read(f, &fm[k], off[k], buf, 1 + rnd() % sizeof(buf));
			CHECK(rc >= 0);
			CHECK(body_equal(pick[k]->idx, off[k], buf, (size_t)rc));
			off[k] += (uint64_t)rc;
			more |= rc > 0;
		}
	}
	for (unsigned k = 0; k < 3; k++) {
		CHECK(off[k] == pick[k]->size);
		env_check(&fm[k], pick[k]); /* envelope strings still valid after all that mapping */
		spool_fetch_put(f, &fm[k]);
	}
	spool_fetch_close(f);
}

/* The committed message whose body spans the most segments. */
static struct msg *widest(void)
{
	struct msg *best = NULL;

	for (unsigned i = 0; i < nmsgs; i++) {
		struct msg *m = &msgs[i];
		if (m->committed && m->size && (!best || m->seq - m->first_seq > best->seq - best->first_seq))
			best = m;
	}
	return best;
}

static void fetch_two_maps(const char *dir)
{
	struct spool_fetch *f;
	struct spool_fetch_msg fm, fm2;
	struct msg *w = widest(), *other = NULL;
	uint8_t b[100];

	CHECK(w && w->seq - w->first_seq >= 2); /* three segments or more */
	CHECK(spool_fetch_open(&f, dir, 1) == -EINVAL);
	CHECK(spool_fetch_open(&f, dir, 2) == 0);
	CHECK(get(f, w, &fm) == 0);
	read_all(f, &fm, w, 0, 100000);
	read_all(f, &fm, w, w->size / 3, 5000); /* step back */
	/* Now hold the commit's segment and (after a step back) the first chunk's. */
	CHECK(spool_fetch_read(f, &fm, 0, b, sizeof(b)) == (int)DS_MIN(w->size, sizeof(b)));
	for (unsigned i = 0; i < nmsgs; i++) {
		struct msg *m = &msgs[i];
		if (m->committed && m->lane == w->lane && m->seq != w->seq && m->seq != w->first_seq)
			other = m;
	}
	CHECK(other);
	CHECK(get(f, other, &fm2) == -EMFILE);
	spool_fetch_put(f, &fm2); /* a no-op after a failed get */
	spool_fetch_put(f, &fm);
	CHECK(get(f, other, &fm2) == 0);
	read_all(f, &fm2, other, 0, 30000);
	spool_fetch_put(f, &fm2);
	spool_fetch_close(f);
}

static void fetch_not_there(const char *dir)
{
	struct spool_fetch *f;
	struct spool_fetch_msg fm;
	struct msg *m = widest();

	CHECK(spool_fetch_open(&f, dir, 4) == 0);
	CHECK(spool_fetch_get(f, m->lane, m->seq, m->off, m->id + 1, &fm) == -ENOENT);
	CHECK(spool_fetch_get(f, m->lane, m->seq, m->off + 8, m->id, &fm) == -ENOENT);
	CHECK(spool_fetch_get(f, m->lane, m->seq, 0, m->id, &fm) == -ENOENT);
	CHECK(spool_fetch_get(f, m->lane, m->seq, 1ull << 40, m->id, &fm) == -ENOENT);
	CHECK(spool_fetch_get(f, m->lane, m->seq + 100000, m->off, m->id, &fm) == -ENOENT);
	CHECK(spool_fetch_get(f, 3, m->seq, m->off, m->id, &fm) == -ENOENT);
	CHECK(spool_fetch_get(f, 300, m->seq, m->off, m->id, &fm) == -ENOENT);
	/* A chunk's record is not a commit. */
	if (m->first_seq != m->seq)
		CHECK(spool_fetch_get(f, m->lane, m->first_seq, SPOOL_SEG_DATA_OFF, m->id, &fm) == -ENOENT);
	spool_fetch_close(f);
}

static void seg_file(char *path, size_t cap, const char *dir, unsigned lane, uint64_t seq)
{
	CHECK(spool_seg_path(path, cap, dir, lane, seq) == 0);
}

static void poke(const char *dir, unsigned lane, uint64_t seq, uint64_t off, uint8_t x)
{
	char path[512];
	uint8_t c;
	int fd;

	seg_file(path, sizeof(path), dir, lane, seq);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK(pread(fd, &c, 1, (off_t)off) == 1);
	c ^= x;
	CHECK(pwrite(fd, &c, 1, (off_t)off) == 1);
	close(fd);
}

/* A damaged commit record: -EBADMSG; repaired: fine again. */
static void fetch_bad_commit(const char *dir)
{
	struct spool_fetch *f;
	struct spool_fetch_msg fm;
	struct msg *m = widest();

	CHECK(spool_fetch_open(&f, dir, 4) == 0);
	poke(dir, m->lane, m->seq, m->off + SPOOL_REC_HDR_SIZE + 3, 0x40); /* envelope byte */
	CHECK(get(f, m, &fm) == -EBADMSG);
	poke(dir, m->lane, m->seq, m->off + SPOOL_REC_HDR_SIZE + 3, 0x40);
	CHECK(get(f, m, &fm) == 0);
	spool_fetch_put(f, &fm);
	spool_fetch_close(f);
}

/*
 * A flipped body byte in the first chunk of a multi-chunk message: every
 * read up to the last piece succeeds (those bytes are gone already), the
 * last piece is never handed out.
 */
static void fetch_bad_body(const char *dir)
{
	struct spool_fetch *f;
	struct spool_fetch_msg fm;
	struct msg *m = widest();
	static uint8_t buf[1 << 16];
	struct spool_msg sm;
	uint64_t off = 0;
	int rc;

	CHECK(spool_fetch_open(&f, dir, 4) == 0);
	CHECK(get(f, m, &fm) == 0);
	sm = fm.m;
	poke(dir, m->lane, sm.first_seq, sm.first_off + SPOOL_REC_HDR_SIZE + 5, 0x01);
	for (int pass = 0; pass < 2; pass++) {
		off = 0;
		while ((rc = spool_fetch_read(f, &fm, off, buf, 1 + rnd() % sizeof(buf))) > 0) {
			CHECK(off + (uint64_t)rc < m->size); /* never the last byte */
			off += (uint64_t)rc;
		}
		CHECK(rc == -EBADMSG);
		CHECK(off < m->size);
		/* A smaller read that stops short of the end still works; one reaching it does not. */
		if (m->size - off > 1) {
			CHECK(spool_fetch_read(f, &fm, off, buf, 1) == 1);
			CHECK(spool_fetch_read(f, &fm, m->size - 1, buf, 1) == -EBADMSG);
		}
	}
	spool_fetch_put(f, &fm);
	poke(dir, m->lane, sm.first_seq, sm.first_off + SPOOL_REC_HDR_SIZE + 5, 0x01);
	/* A missing middle segment: the body is not all there. */
	{
		char path[512], moved[600];
		struct msg *w = widest();

		seg_file(path, sizeof(path), dir, w->lane, w->first_seq + 1);
		snprintf(moved, sizeof(moved), "%s.away", path);
		CHECK(rename(path, moved) == 0);
		CHECK(get(f, w, &fm) == 0);
		off = 0;
		while ((rc = spool_fetch_read(f, &fm, off, buf, sizeof(buf))) > 0)
			off += (uint64_t)rc;
		CHECK(rc == -EBADMSG && off < w->size);
		spool_fetch_put(f, &fm);
		CHECK(rename(moved, path) == 0);
	}
	spool_fetch_close(f);
}

/*
 * Fetch while the lane writes: each message fetched right after its commit
 * settled (the location found by a fresh reader), while another txn of the
 * lane is half written and segments roll under the fetch's maps.
 */
static void fetch_live(const char *dir)
{
	struct spool_config cfg;
	struct spool_fetch *f;
	struct wlane w;
	struct otx side, o;
	unsigned fetched = 0;

	cfg_make(&cfg, dir);
	CHECK(spool_fetch_open(&f, dir, 3) == 0);
	w_open(&w, &cfg, 4);
	w_begin(&w, 4, &side, 1300000);
	for (unsigned i = 0; i < 24; i++) {
		struct spool_fetch_msg fm;
		uint64_t settled = n_settled;

		w_begin(&w, 4, &o, pick_size());
		while (o.off < o.m->size) {
			w_append(&w, &o, 1 + rnd() % 30000);
			w_append(&w, &side, 1 + rnd() % 9000);
			spool_syncio_run(w.sio);
		}
		w_commit(&w, &o);
		spool_syncio_run(w.sio);
		CHECK(n_settled == settled + 1);
		locate(dir);
		CHECK(o.m->listed);
		CHECK(get(f, o.m, &fm) == 0);
		env_check(&fm, o.m);
		read_all(f, &fm, o.m, 0, 50000);
		spool_fetch_put(f, &fm);
		fetched++;
	}
	while (side.off < side.m->size)
		w_append(&w, &side, 40000);
	w_commit(&w, &side);
	w_close(&w);
	locate(dir);
	{
		struct spool_fetch_msg fm;
		CHECK(get(f, side.m, &fm) == 0);
		read_all(f, &fm, side.m, 0, 65536);
		spool_fetch_put(f, &fm);
	}
	spool_fetch_close(f);
	CHECK(fetched == 24);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void speed(const char *dir)
{
	struct spool_fetch *f;
	static uint8_t buf[65536];
	uint64_t bytes = 0;
	double t0;

	CHECK(spool_fetch_open(&f, dir, 16) == 0);
	t0 = now_s();
	for (int rep = 0; rep < 3; rep++)
		for (unsigned i = 0; i < nmsgs; i++) {
			struct spool_fetch_msg fm;
			uint64_t off = 0;
			int n;

			if (!msgs[i].committed || msgs[i].lane == 4)
				continue;
			CHECK(get(f, &msgs[i], &fm) == 0);
			while ((n = spool_fetch_read(f, &fm, off, buf, sizeof(buf))) > 0)
				off += (uint64_t)n;
			CHECK(n == 0);
			bytes += off;
			spool_fetch_put(f, &fm);
		}
	printf("spool_fetch: sequential 64 KiB reads: %.0f MB/s (%llu bytes, page cache)\n",
	       (double)bytes / 1e6 / (now_s() - t0), (unsigned long long)bytes);
	spool_fetch_close(f);
}

int main(void)
{
	char dir[256];
	unsigned committed = 0, n;

	tu_tmpdir(dir, sizeof(dir), "fetch");
	write_spool(dir, 40);
	for (unsigned i = 0; i < nmsgs; i++)
		committed += msgs[i].committed;
	locate(dir);
	n = fetch_all(dir, 8);
	CHECK(n == committed && n > 40);
	CHECK(fetch_all(dir, 2) == committed);
	fetch_interleaved(dir);
	fetch_two_maps(dir);
	fetch_not_there(dir);
	fetch_bad_commit(dir);
	speed(dir);
	fetch_live(dir);
	fetch_bad_body(dir);
	printf("spool_fetch: %u messages (widest spans %llu segments): ok\n", committed,
	       (unsigned long long)(widest()->seq - widest()->first_seq + 1));
	tu_rmrf(dir);
	return 0;
}
