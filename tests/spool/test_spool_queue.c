/* SPDX-License-Identifier: MIT */
/*
 * Recovery's fold of the delivery records (spool_recover_queue, the rule in
 * spool.h), on spools written by the real lane (commits and
 * spool_lane_outcome records through the synchronous ops) plus abort
 * records and torn records appended by hand to a lane's last segment:
 *
 *  - hand cases: no record (PENDING), an attempt cut short (in flight), a
 *    mixed delivered/deferred/failed outcome, an outcome written in another
 *    lane before its ATTEMPT of the same number, a higher attempt in a third
 *    lane (an earlier run with more threads), final beats a later attempt,
 *    FAILED naming a DSN that is not there / that was refused / none owed
 *    (dsn_id 0), entries past the envelope's recipients, two deferrals of one
 *    attempt in two lanes (the later wins), an aborted commit (skipped by
 *    recovery, list and verify, not a problem for verify), outcomes naming
 *    no message, a torn last outcome record (as if never written);
 *  - a random model: 300 messages in 3 lanes, 2000 outcome records with
 *    random attempts, states, lanes and DSN ids, some aborts; recovery's
 *    fold equals a brute-force reference for every recipient;
 *  - a version 1 spool (segment headers of version 1, no delivery records):
 *    every message recovered, every recipient PENDING;
 *  - fn's non-zero return stops the walk and is returned.
 *
 * With "bench N" (not a ctest case): recovery time of N small messages,
 * without and with one outcome record per message. With "ctl-fixture DIR
 * OUT": the spool tests/spool/test_ctl.py lists (see ctl_fixture).
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "spool.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "spool_syncio.h"
#include "test_util.h"

#define MSGS_MAX  4096
#define RCPTS_MAX 6
#define RECS_MAX  8192

static uint64_t rng = 99;
static uint64_t rnd(void)
{
	return tu_mix(rng++);
}

static uint64_t n_settled;
static void on_settled(void *ctx, uint64_t cookie, int res)
{
	CHECK(res == 0);
	n_settled++;
}

/* ---- writing through the lane ---- */

struct wl {
	struct spool_lane *l;
	struct spool_syncio *sio;
	unsigned lane;
};

static void wl_open(struct wl *w, const char *dir, unsigned lane)
{
	struct spool_config cfg;

	spool_config_defaults(&cfg);
	cfg.dir = dir;
	cfg.segment_size = 1 << 20;
	cfg.buffer_size = 256 * 1024;
	w->lane = lane;
	CHECK(spool_syncio_create(&w->sio, on_settled, NULL) == 0);
	CHECK(spool_lane_open(&w->l, &cfg, lane, spool_syncio_ops(), w->sio) == 0);
	spool_syncio_attach(w->sio, w->l);
}

static void wl_close(struct wl *w)
{
	spool_syncio_run(w->sio);
	CHECK(!spool_lane_busy(w->l));
	spool_lane_close(w->l);
	spool_syncio_destroy(w->sio);
}

struct tmsg {
	uint64_t id;
	unsigned lane;
	uint64_t seq, off;
	uint32_t nrcpt;
	bool aborted;
	/* expected, from the reference fold */
	uint8_t state[RCPTS_MAX];
	uint32_t attempts;
	bool seen;
};

static struct tmsg msgs[MSGS_MAX];
static unsigned nmsgs;

static struct tmsg *put_msg(struct wl *w, uint32_t nrcpt, size_t body, bool run)
{
	static const char *addrs[RCPTS_MAX] = {"r0@x", "r1@x", "r2@x", "r3@x", "r4@x", "r5@x"};
	struct ds_rcpt r[RCPTS_MAX];
	struct ds_envelope e = {.client_addr = "127.0.0.1",
				.client_port = 1,
				.helo = "h",
				.proto = "ESMTP",
				.mail_from = "s@x",
				.mail_params = "",
				.rcpt = r,
				.rcpt_count = nrcpt,
				.tls = "",
				.received_at_us = 1700000000000000ll + nmsgs,
				.body_size = body};
	struct spool_txn t;
	struct tmsg *m;
	uint8_t buf[512];
	int rc;

	CHECK(nmsgs < MSGS_MAX && nrcpt <= RCPTS_MAX && body <= sizeof(buf));
	for (uint32_t i = 0; i < nrcpt; i++)
		r[i] = (struct ds_rcpt){addrs[i], ""};
	m = &msgs[nmsgs];
	*m = (struct tmsg){.lane = w->lane, .nrcpt = nrcpt};
	CHECK(spool_txn_begin(w->l, &t) == 0);
	tu_body(nmsgs, 0, buf, body);
	while (body && (rc = spool_txn_append(w->l, &t, buf, body)) == -EAGAIN)
		spool_syncio_run(w->sio);
	while ((rc = spool_txn_commit(w->l, &t, &e, nmsgs)) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
	CHECK(spool_txn_location(&t, &m->seq, &m->off) == 0);
	m->id = t.id;
	nmsgs++;
	if (run)
		spool_syncio_run(w->sio);
	return m;
}

struct ent {
	uint32_t idx;
	uint8_t state;
	uint16_t code;
};

/* An outcome record as written, for the reference fold. */
struct trec {
	uint64_t id, dsn_id;
	uint32_t attempt;
	int64_t at_us, next_us;
	uint32_t n;
	struct ent e[RCPTS_MAX + 2];
	bool torn; /* never intact on disk */
};

static struct trec recs[RECS_MAX];
static unsigned nrecs;
static int64_t at_clock = 1700000100000000ll;

static struct trec *rec_new(uint64_t id, uint32_t attempt, uint64_t dsn_id, int64_t next_us)
{
	struct trec *t;

	CHECK(nrecs < RECS_MAX);
	t = &recs[nrecs++];
	*t = (struct trec){
		.id = id, .dsn_id = dsn_id, .attempt = attempt, .at_us = at_clock++, .next_us = next_us};
	return t;
}

static void rec_ent(struct trec *t, uint32_t idx, uint8_t state)
{
	static const uint16_t codes[] = {0, 0, 250, 451, 550};

	CHECK(t->n < RCPTS_MAX + 2);
	t->e[t->n++] = (struct ent){idx, state, codes[state]};
}

static void outcome_fill(const struct trec *t, struct spool_outcome *o, struct spool_outcome_rcpt *r)
{
	for (uint32_t i = 0; i < t->n; i++)
		r[i] = (struct spool_outcome_rcpt){.idx = t->e[i].idx,
						   .state = t->e[i].state,
						   .code = t->e[i].code,
						   .esc = t->e[i].code >= 400 ? "4.0.0" : "",
						   .text = t->e[i].state == SPOOL_RCPT_DEFERRED ? "try later"
												: "ok"};
	*o = (struct spool_outcome){.id = t->id,
				    .attempt = t->attempt,
				    .at_us = t->at_us,
				    .next_attempt_us = t->next_us,
				    .dsn_id = t->dsn_id,
				    .hop = "lmtp:/run/x.sock",
				    .rcpt_count = t->n,
				    .rcpt = r};
}

static void put_rec(struct wl *w, const struct trec *t)
{
	struct spool_outcome_rcpt r[RCPTS_MAX + 2];
	struct spool_outcome o;
	int rc;

	outcome_fill(t, &o, r);
	while ((rc = spool_lane_outcome(w->l, &o, 1000000 + (uint64_t)(t - recs))) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
}

/* ---- records appended by hand after the lanes closed ---- */

/* The end of the last valid record of the lane's last segment; the segment's epoch. */
struct tail {
	char path[512];
	uint64_t end, epoch;
};

static int tail_rec(void *ctx, const struct spool_rec *r)
{
	struct tail *t = ctx;
	t->end = DS_MAX(t->end, r->off + r->total);
	return 0;
}

static void tail_find(const char *dir, unsigned lane, struct tail *t)
{
	static const struct spool_scan_ops ops = {.rec = tail_rec, .delivery = true};
	char ldir[512];
	uint64_t *seqs;
	struct spool_seg_hdr h;
	struct stat st;
	uint8_t *map;
	int n, fd;

	CHECK(spool_lane_dir_path(ldir, sizeof(ldir), dir, lane) == 0);
	n = spool_seg_list(ldir, &seqs);
	CHECK(n > 0);
	CHECK(spool_seg_path(t->path, sizeof(t->path), dir, lane, seqs[n - 1]) == 0);
	free(seqs);
	fd = open(t->path, O_RDONLY);
	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED);
	CHECK(spool_seg_hdr_decode(map, (size_t)st.st_size, &h) == 0);
	t->epoch = h.epoch;
	t->end = SPOOL_SEG_DATA_OFF;
	spool_seg_scan(map, (uint64_t)st.st_size, h.epoch, SPOOL_SEG_DATA_OFF, &ops, t);
	munmap(map, (size_t)st.st_size);
	close(fd);
}

/* Append one record (type, id, payload) at the end of the lane's records; its file offset. */
static uint64_t append_rec(const char *dir, unsigned lane, uint32_t type, uint64_t id, const void *payload,
			   uint32_t len)
{
	struct tail t;
	uint64_t total = spool_rec_total(len);
	uint8_t *buf = calloc(1, total);
	int fd;

	CHECK(buf);
	tail_find(dir, lane, &t);
	memcpy(buf + SPOOL_REC_HDR_SIZE, payload, len);
	spool_rec_encode(buf, type, len, id, t.epoch, t.end);
	fd = open(t.path, O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, buf, total, (off_t)t.end) == (ssize_t)total);
	close(fd);
	free(buf);
	return t.end;
}

static void append_abort(const char *dir, unsigned lane, const struct tmsg *m)
{
	uint8_t p[SPOOL_ABORT_SIZE];
	struct spool_abort a = {.reason = EIO, .commit_seq = m->seq, .commit_off = m->off};

	spool_abort_encode(p, &a);
	append_rec(dir, lane, SPOOL_REC_ABORT, m->id, p, sizeof(p));
}

/* An outcome record whose last payload byte is flipped: torn, never intact. */
static void append_torn_outcome(const char *dir, unsigned lane, struct trec *t)
{
	struct spool_outcome_rcpt r[RCPTS_MAX + 2];
	struct spool_outcome o;
	size_t n;
	uint8_t *p;
	uint64_t off;
	char path[512];
	struct tail tl;
	uint8_t c;
	int fd;

	outcome_fill(t, &o, r);
	n = spool_outcome_size(&o);
	p = malloc(n);
	CHECK(p && n);
	spool_outcome_encode(p, &o);
	off = append_rec(dir, lane, SPOOL_REC_OUTCOME, t->id, p, (uint32_t)n);
	free(p);
	tail_find(dir, lane, &tl);
	CHECK(tl.end > off); /* intact so far */
	snprintf(path, sizeof(path), "%s", tl.path);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK(pread(fd, &c, 1, (off_t)(off + SPOOL_REC_HDR_SIZE + n - 1)) == 1);
	c ^= 0x20;
	CHECK(pwrite(fd, &c, 1, (off_t)(off + SPOOL_REC_HDR_SIZE + n - 1)) == 1);
	close(fd);
	tail_find(dir, lane, &tl);
	CHECK(tl.end == off); /* no longer a record */
	t->torn = true;
}

/* ---- the reference fold ---- */

static struct tmsg *msg_find(uint64_t id)
{
	for (unsigned i = 0; i < nmsgs; i++)
		if (msgs[i].id == id)
			return &msgs[i];
	return NULL;
}

static uint64_t ref_key(uint8_t state, uint32_t attempt)
{
	return (uint64_t)SPOOL_RCPT_STATE_FINAL(state) << 40 | (uint64_t)attempt << 1 |
	       (state != SPOOL_RCPT_ATTEMPT);
}

struct expect {
	uint8_t state[RCPTS_MAX];
	uint32_t attempt[RCPTS_MAX];
	int64_t at[RCPTS_MAX], next[RCPTS_MAX];
	uint32_t attempts;
	unsigned outcomes;
};

static void ref_fold(const struct tmsg *m, struct expect *x)
{
	memset(x, 0, sizeof(*x));
	for (unsigned k = 0; k < nrecs; k++) {
		const struct trec *t = &recs[k];
		const struct tmsg *d;
		bool dsn_ok;

		if (t->torn || t->id != m->id)
			continue;
		x->attempts = DS_MAX(x->attempts, t->attempt);
		x->outcomes++;
		d = t->dsn_id ? msg_find(t->dsn_id) : NULL;
		dsn_ok = !t->dsn_id || (d && !d->aborted);
		for (uint32_t i = 0; i < t->n; i++) {
			const struct ent *e = &t->e[i];
			if (e->idx >= m->nrcpt || (e->state == SPOOL_RCPT_FAILED && !dsn_ok))
				continue;
			if (x->state[e->idx]) {
				uint64_t kn = ref_key(e->state, t->attempt),
					 kc = ref_key(x->state[e->idx], x->attempt[e->idx]);
				if (kn < kc || (kn == kc && t->at_us <= x->at[e->idx]))
					continue;
			}
			x->state[e->idx] = e->state;
			x->attempt[e->idx] = t->attempt;
			x->at[e->idx] = t->at_us;
			x->next[e->idx] = t->next_us;
		}
	}
}

/* ---- what recovery says ---- */

struct got {
	unsigned n, stop_after;
	uint64_t last_lane_key;
};

static int q_fn(void *ctx, const struct spool_queue_entry *e)
{
	struct got *g = ctx;
	struct tmsg *m = msg_find(e->id);
	struct expect x;
	bool due_now = false, in_flight = false, done = true;
	int64_t next = INT64_MAX;
	uint64_t key = (uint64_t)e->lane << 48 | e->seq << 24; /* lane, then segment order */

	CHECK(m && !m->aborted && !m->seen);
	CHECK(key >= g->last_lane_key);
	g->last_lane_key = key;
	m->seen = true;
	CHECK(e->lane == m->lane && e->seq == m->seq && e->off == m->off && e->rcpt_count == m->nrcpt);
	CHECK(e->received_at_us == 1700000000000000ll + (int64_t)(m - msgs));
	ref_fold(m, &x);
	for (uint32_t i = 0; i < m->nrcpt; i++) {
		CHECK(e->rcpt_state[i] == x.state[i]);
		if (!SPOOL_RCPT_STATE_FINAL(x.state[i]))
			done = false;
		if (x.state[i] == SPOOL_RCPT_PENDING || x.state[i] == SPOOL_RCPT_ATTEMPT)
			due_now = true;
		if (x.state[i] == SPOOL_RCPT_ATTEMPT)
			in_flight = true;
		if (x.state[i] == SPOOL_RCPT_DEFERRED)
			next = DS_MIN(next, x.next[i]);
	}
	CHECK(!done);
	CHECK(e->attempts == x.attempts && e->in_flight == in_flight);
	CHECK(e->next_attempt_us == (due_now ? 0 : next));
	g->n++;
	return g->stop_after && g->n == g->stop_after ? 77 : 0;
}

/* Recover dir and check every message against the reference. */
static void recover_check(const char *dir, struct spool_recovery_report *rep)
{
	struct spool_config cfg;
	struct got g = {0};
	unsigned queued = 0, done = 0, live = 0, in_flight = 0, outcomes = 0;
	uint64_t rcpts = 0;
	struct spool_recovery_report rep0;

	spool_config_defaults(&cfg);
	cfg.dir = dir;
	for (unsigned i = 0; i < nmsgs; i++)
		msgs[i].seen = false;
	CHECK(spool_recover_queue(&cfg, rep, q_fn, &g) == 0);
	for (unsigned i = 0; i < nmsgs; i++) {
		struct tmsg *m = &msgs[i];
		struct expect x;
		bool fin = true, att = false;

		if (m->aborted) {
			CHECK(!m->seen);
			continue;
		}
		live++;
		ref_fold(m, &x);
		outcomes += x.outcomes;
		for (uint32_t k = 0; k < m->nrcpt; k++) {
			fin &= SPOOL_RCPT_STATE_FINAL(x.state[k]);
			att |= x.state[k] == SPOOL_RCPT_ATTEMPT;
			rcpts += !SPOOL_RCPT_STATE_FINAL(x.state[k]);
		}
		CHECK(m->seen == !fin); /* handed out exactly when still owed */
		queued += !fin;
		done += fin;
		in_flight += att && !fin;
	}
	CHECK(g.n == queued);
	CHECK(rep->messages == live && rep->queued == queued && rep->queued_rcpts == rcpts);
	CHECK(rep->in_flight == in_flight);
	CHECK(rep->outcomes >= outcomes); /* plus records naming no message */
	CHECK(rep->discarded == 0 && rep->quarantined == 0);
	/* spool_recover is the same without fn. */
	CHECK(spool_recover(&cfg, &rep0) == 0);
	CHECK(rep0.messages == rep->messages && rep0.queued == rep->queued && rep0.aborted == rep->aborted &&
	      rep0.outcomes == rep->outcomes && rep0.queued_rcpts == rep->queued_rcpts);
	/* fn stops the walk. */
	if (queued > 1) {
		static bool seen[MSGS_MAX];

		for (unsigned i = 0; i < nmsgs; i++) {
			seen[i] = msgs[i].seen;
			msgs[i].seen = false;
		}
		g = (struct got){.stop_after = 1};
		CHECK(spool_recover_queue(&cfg, &rep0, q_fn, &g) == 77 && g.n == 1);
		for (unsigned i = 0; i < nmsgs; i++)
			msgs[i].seen = seen[i];
	}
}

/* The reader: list skips aborted commits, verify is clean and counts them apart. */
static unsigned n_listed;
static int list_fn(void *ctx, const struct spool_msg *m)
{
	struct tmsg *t = msg_find(m->id);
	CHECK(t && !t->aborted);
	n_listed++;
	return 0;
}

static int status_fn(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	struct tmsg *t = msg_find(m->id);
	struct expect x;
	bool done = true;

	CHECK(t && !t->aborted && st->rcpt_count == t->nrcpt);
	ref_fold(t, &x);
	for (uint32_t i = 0; i < t->nrcpt; i++) {
		const struct spool_rcpt_status *rs = &st->rcpt[i];
		CHECK(rs->state == x.state[i] && rs->attempt == x.attempt[i]);
		done &= SPOOL_RCPT_STATE_FINAL(x.state[i]);
		if (rs->state == SPOOL_RCPT_PENDING)
			CHECK(!rs->code && !*rs->text && !*rs->hop);
		else
			CHECK(!strcmp(rs->hop, "lmtp:/run/x.sock") && rs->at_us == x.at[i] &&
			      !strcmp(rs->text, rs->state == SPOOL_RCPT_DEFERRED ? "try later" : "ok"));
	}
	CHECK(st->done == done && st->attempts == x.attempts);
	n_listed++;
	return 0;
}

static void reader_check(const char *dir, unsigned aborted)
{
	struct spool_reader *r;
	struct spool_verify_report v;
	unsigned live = 0;

	for (unsigned i = 0; i < nmsgs; i++)
		live += !msgs[i].aborted;
	CHECK(spool_reader_open(&r, dir) == 0);
	n_listed = 0;
	CHECK(spool_reader_foreach(r, list_fn, NULL) == 0);
	CHECK(n_listed == live);
	n_listed = 0;
	CHECK(spool_reader_foreach_status(r, status_fn, NULL) == 0);
	CHECK(n_listed == live);
	CHECK(spool_reader_verify(r, &v, stderr) == 0);
	CHECK(v.messages == live && v.aborted == aborted && v.bad_bodies == 0);
	spool_reader_close(r);
}

/* ---- scenarios ---- */

static void reset(void)
{
	nmsgs = 0;
	nrecs = 0;
}

static struct trec *rec1(uint64_t id, uint32_t attempt, uint64_t dsn, int64_t next, uint8_t s0, uint8_t s1,
			 uint8_t s2)
{
	struct trec *t = rec_new(id, attempt, dsn, next);
	uint8_t s[3] = {s0, s1, s2};

	for (uint32_t i = 0; i < 3; i++)
		if (s[i])
			rec_ent(t, i, s[i]);
	return t;
}

enum {
	P = SPOOL_RCPT_PENDING,
	A = SPOOL_RCPT_ATTEMPT,
	OK = SPOOL_RCPT_DELIVERED,
	DEF = SPOOL_RCPT_DEFERRED,
	F = SPOOL_RCPT_FAILED
};

static void hand_cases(const char *dir)
{
	struct wl w1, w2, w3;
	struct tmsg *m[12], *dsn, *gone;
	struct spool_recovery_report rep;
	const int64_t T1 = 1800000000000000ll, T2 = 1800000500000000ll;
	unsigned qd;

	reset();
	wl_open(&w1, dir, 1);
	wl_open(&w2, dir, 2);
	wl_open(&w3, dir, 9); /* a lane of an earlier run with more threads */
	for (int i = 0; i < 12; i++)
		m[i] = put_msg(&w1, 3, 100 + (size_t)i, true);
	dsn = put_msg(&w2, 1, 300, true);
	gone = put_msg(&w2, 1, 10, true); /* aborted below: not a message, not a DSN */
	/* m0: nothing recorded. m1: an attempt cut short. */
	put_rec(&w1, rec1(m[1]->id, 1, 0, 0, A, A, A));
	/* m2: attempt then outcomes in another lane: delivered, deferred, failed with its DSN there. */
	put_rec(&w1, rec1(m[2]->id, 1, 0, 0, A, A, A));
	put_rec(&w2, rec1(m[2]->id, 1, dsn->id, T1, OK, DEF, F));
	/* m3: the outcome lands (lane 2) before its ATTEMPT (lane 1); r0 attempted again (lane 9). */
	put_rec(&w2, rec1(m[3]->id, 1, 0, T1, DEF, DEF, DEF));
	put_rec(&w1, rec1(m[3]->id, 1, 0, 0, A, A, A));
	put_rec(&w3, rec1(m[3]->id, 2, 0, 0, A, P, P));
	/* m4: delivered, then a stray later attempt: final stands. */
	put_rec(&w2, rec1(m[4]->id, 1, 0, 0, OK, OK, OK));
	put_rec(&w3, rec1(m[4]->id, 2, 0, 0, A, P, P));
	/* m5: FAILED naming a DSN that is not there: does not count; r1 deferred by another record. */
	put_rec(&w1, rec1(m[5]->id, 1, spool_id_make(2, 1, 0xfffff0), 0, F, F, F));
	put_rec(&w3, rec1(m[5]->id, 1, 0, T2, P, DEF, P));
	/* m6: FAILED with no DSN owed (dsn_id 0): final. */
	put_rec(&w2, rec1(m[6]->id, 3, 0, 0, F, F, F));
	/* m7: aborted (below). Its outcome records are ignored. */
	put_rec(&w2, rec1(m[7]->id, 1, 0, 0, OK, P, P));
	/* m8: entries past the envelope's 3 recipients are ignored. */
	{
		struct trec *t = rec1(m[8]->id, 1, 0, 0, OK, OK, P);
		rec_ent(t, 3, OK);
		rec_ent(t, 7, OK);
		put_rec(&w1, t);
	}
	/* m9: two deferrals of attempt 2 in two lanes: the later one's next attempt. */
	put_rec(&w1, rec1(m[9]->id, 2, 0, T2, DEF, DEF, DEF));
	put_rec(&w3, rec1(m[9]->id, 2, 0, T1, DEF, DEF, DEF));
	/* m10: FAILED naming the refused message as its DSN: does not count. */
	put_rec(&w2, rec1(m[10]->id, 1, gone->id, 0, F, OK, OK));
	/* m11: delivered in pieces over three attempts and two lanes: done. */
	put_rec(&w1, rec1(m[11]->id, 1, 0, T1, OK, DEF, DEF));
	put_rec(&w2, rec1(m[11]->id, 2, 0, T2, P, OK, DEF));
	put_rec(&w3, rec1(m[11]->id, 3, dsn->id, 0, P, P, F));
	/* Records naming no message (reclaimed): ignored. */
	put_rec(&w3, rec1(spool_id_make(1, 77, 5), 1, 0, 0, OK, OK, OK));
	wl_close(&w1);
	wl_close(&w2);
	wl_close(&w3);
	append_abort(dir, 9, m[7]);
	m[7]->aborted = true;
	append_abort(dir, 1, gone);
	gone->aborted = true;
	/* A torn last record: m0 delivered, never intact: m0 is still owed (delivered again). */
	append_torn_outcome(dir, 2, rec1(m[0]->id, 1, 0, 0, OK, OK, OK));

	recover_check(dir, &rep);
	CHECK(rep.aborted == 2 && rep.messages == 12 && rep.outcomes == 20);
	CHECK(rep.torn_tails == 1);
	/* Spelled out (the reference says the same): */
	{
		struct expect x;
		ref_fold(m[2], &x);
		CHECK(x.state[0] == OK && x.state[1] == DEF && x.state[2] == F);
		ref_fold(m[3], &x);
		CHECK(x.state[0] == A && x.state[1] == DEF && x.attempts == 2);
		ref_fold(m[5], &x);
		CHECK(x.state[0] == P && x.state[1] == DEF && x.attempts == 1);
		ref_fold(m[9], &x);
		CHECK(x.next[0] == T1);
		ref_fold(m[10], &x);
		CHECK(x.state[0] == P && x.state[1] == OK);
	}
	qd = 0;
	for (int i = 0; i < 12; i++)
		qd += m[i]->seen;
	/* Owed: m0 m1 m2 m3 m5 m8 m9 m10, and the DSN itself; done: m4 m6 m11; m7 refused. */
	CHECK(m[0]->seen && m[1]->seen && m[2]->seen && m[3]->seen && !m[4]->seen && m[5]->seen &&
	      !m[6]->seen && !m[7]->seen && m[8]->seen && m[9]->seen && m[10]->seen && !m[11]->seen);
	CHECK(qd == 8 && dsn->seen && rep.queued == 9 && rep.in_flight == 2);
	reader_check(dir, 2);
	spool_recovery_report_print(&rep, stdout);
}

/* 300 messages in 3 lanes, 2000 random records in random lanes, some aborts. */
static void random_model(const char *dir)
{
	static const unsigned lanes[3] = {0, 4, 11};
	struct wl w[3];
	struct spool_recovery_report rep;
	unsigned aborted = 0;

	reset();
	for (int k = 0; k < 3; k++)
		wl_open(&w[k], dir, lanes[k]);
	for (int i = 0; i < 300; i++)
		put_msg(&w[rnd() % 3], 1 + (uint32_t)(rnd() % RCPTS_MAX), (size_t)(rnd() % 500),
			rnd() % 4 == 0);
	for (int k = 0; k < 3; k++)
		spool_syncio_run(w[k].sio);
	for (int j = 0; j < 2000; j++) {
		struct tmsg *m = &msgs[rnd() % nmsgs];
		uint64_t dsn = 0;
		struct trec *t;
		uint32_t n;
		bool used[RCPTS_MAX + 2] = {0};

		switch (rnd() % 6) {
		case 0:
			dsn = msgs[rnd() % nmsgs].id; /* maybe aborted later */
			break;
		case 1:
			dsn = spool_id_make(4, 999, (uint32_t)j); /* not there */
			break;
		}
		t = rec_new(rnd() % 19 == 0 ? spool_id_make(0, 5000, (uint32_t)j) : m->id,
			    1 + (uint32_t)(rnd() % 4), dsn, (int64_t)(rnd() % 1000000) + 1);
		n = 1 + (uint32_t)(rnd() % (m->nrcpt + 1));
		for (uint32_t i = 0; i < n; i++) {
			uint32_t idx = (uint32_t)(rnd() % (m->nrcpt + 1)); /* now and then past the end */
			if (used[idx])
				continue;
			used[idx] = true;
			rec_ent(t, idx, (uint8_t)(1 + rnd() % 4));
		}
		if (!t->n)
			rec_ent(t, 0, SPOOL_RCPT_ATTEMPT);
		put_rec(&w[rnd() % 3], t);
		if (rnd() % 8 == 0)
			spool_syncio_run(w[rnd() % 3].sio);
	}
	for (int k = 0; k < 3; k++)
		wl_close(&w[k]);
	for (unsigned i = 0; i < nmsgs; i++)
		if (rnd() % 15 == 0) {
			append_abort(dir, lanes[rnd() % 3], &msgs[i]);
			msgs[i].aborted = true;
			aborted++;
		}
	recover_check(dir, &rep);
	CHECK(rep.aborted == aborted && rep.outcomes == 2000);
	reader_check(dir, aborted);
	printf("random model: %u messages, %u aborted, %llu queued (%llu recipients, %llu in flight), 2000 "
	       "outcome records: fold agrees\n",
	       nmsgs, aborted, (unsigned long long)rep.queued, (unsigned long long)rep.queued_rcpts,
	       (unsigned long long)rep.in_flight);
}

/* Rewrite every segment header of the spool as version 1 (what writers before format 2 wrote). */
static void make_v1(const char *dir, unsigned lane)
{
	char ldir[512], path[512];
	uint64_t *seqs;
	int n;

	CHECK(spool_lane_dir_path(ldir, sizeof(ldir), dir, lane) == 0);
	n = spool_seg_list(ldir, &seqs);
	CHECK(n > 0);
	for (int i = 0; i < n; i++) {
		uint8_t hb[SPOOL_SEG_HDR_SIZE];
		struct spool_seg_hdr h;
		int fd;

		CHECK(spool_seg_path(path, sizeof(path), dir, lane, seqs[i]) == 0);
		fd = open(path, O_RDWR);
		CHECK(fd >= 0 && pread(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb));
		CHECK(spool_seg_hdr_decode(hb, sizeof(hb), &h) == 0 && h.version == SPOOL_FORMAT_VERSION);
		h.version = 1;
		spool_seg_hdr_encode(hb, &h);
		CHECK(pwrite(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb));
		close(fd);
	}
	free(seqs);
}

static void version1(const char *dir)
{
	struct wl w;
	struct spool_recovery_report rep;

	reset();
	wl_open(&w, dir, 3);
	for (int i = 0; i < 50; i++)
		put_msg(&w, 2, (size_t)(rnd() % 400), true);
	wl_close(&w);
	make_v1(dir, 3);
	recover_check(dir, &rep);
	CHECK(rep.messages == 50 && rep.queued == 50 && rep.queued_rcpts == 100 && rep.outcomes == 0 &&
	      rep.in_flight == 0 && rep.aborted == 0);
	reader_check(dir, 0);
}

/*
 * For tests/spool/test_ctl.py: a spool with known delivery states, the ids
 * written to OUT in order A B C D E. A: 3 recipients, delivered / deferred
 * (due at 1800000000 s) / failed with DSN E; B: 2 recipients, attempt 2 cut
 * short; C: delivered (done); D: refused by an abort record; E: the DSN,
 * pending; F (in lane 2, not in OUT order): never attempted.
 */
static void ctl_fixture(const char *dir, const char *out)
{
	struct wl w, w2;
	struct tmsg *a, *b, *c, *d, *e;
	struct trec *t;
	FILE *f;
	char ids[5][24];

	reset();
	wl_open(&w, dir, 1);
	wl_open(&w2, dir, 2);
	a = put_msg(&w, 3, 100, true);
	b = put_msg(&w, 2, 0, true);
	c = put_msg(&w, 1, 10, true);
	d = put_msg(&w, 1, 10, true);
	e = put_msg(&w, 1, 400, true);
	put_msg(&w2, 2, 50, true);
	put_rec(&w, rec1(a->id, 1, 0, 0, A, A, A));
	t = rec1(a->id, 1, e->id, 1800000000000000ll, OK, DEF, F);
	t->e[0].code = 250;
	t->e[2].code = 550;
	put_rec(&w2, t);
	put_rec(&w, rec1(b->id, 1, 0, 1700000000000000ll, DEF, DEF, P));
	put_rec(&w2, rec1(b->id, 2, 0, 0, A, A, P));
	put_rec(&w, rec1(c->id, 1, 0, 0, OK, P, P));
	wl_close(&w);
	wl_close(&w2);
	append_abort(dir, 2, d);
	f = fopen(out, "w");
	CHECK(f);
	spool_id_format(a->id, ids[0], sizeof(ids[0]));
	spool_id_format(b->id, ids[1], sizeof(ids[1]));
	spool_id_format(c->id, ids[2], sizeof(ids[2]));
	spool_id_format(d->id, ids[3], sizeof(ids[3]));
	spool_id_format(e->id, ids[4], sizeof(ids[4]));
	fprintf(f, "%s %s %s %s %s\n", ids[0], ids[1], ids[2], ids[3], ids[4]);
	CHECK(fclose(f) == 0);
}

/* ---- bench ---- */

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int count_fn(void *ctx, const struct spool_queue_entry *e)
{
	(*(uint64_t *)ctx)++;
	return 0;
}

static void bench(unsigned n)
{
	char dir[256];
	struct spool_config cfg;
	struct spool_recovery_report rep;
	struct wl w;
	uint64_t ids_first = 0, cnt;
	static uint8_t body[200];
	struct ds_rcpt r[2] = {{"a@localhost", ""}, {"b@localhost", ""}};
	struct ds_envelope e = {"127.0.0.1",	    1,		 "h", "ESMTP", "s@example.org", "", r, 2, "",
				1700000000000000ll, sizeof(body)};
	uint64_t *ids = malloc((size_t)n * sizeof(*ids));
	int64_t t0;

	CHECK(ids);
	tu_tmpdir(dir, sizeof(dir), "qbench");
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	cfg.prewrite = false;
	wl_open(&w, dir, 0);
	for (unsigned i = 0; i < n; i++) {
		struct spool_txn t;
		int rc;
		CHECK(spool_txn_begin(w.l, &t) == 0);
		while ((rc = spool_txn_append(w.l, &t, body, sizeof(body))) == -EAGAIN)
			spool_syncio_run(w.sio);
		while ((rc = spool_txn_commit(w.l, &t, &e, i)) == -EAGAIN)
			spool_syncio_run(w.sio);
		CHECK(rc == 0);
		ids[i] = t.id;
		if (i % 512 == 511)
			spool_syncio_run(w.sio);
	}
	wl_close(&w);
	(void)ids_first;
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			/* One outcome record per message (half delivered, half deferred), in another lane. */
			wl_open(&w, dir, 1);
			for (unsigned i = 0; i < n; i++) {
				struct spool_outcome_rcpt rr[2] = {
					{.idx = 0,
					 .state = SPOOL_RCPT_DELIVERED,
					 .code = 250,
					 .esc = "2.0.0",
					 .text = "ok"},
					{.idx = 1,
					 .state = i % 2 ? SPOOL_RCPT_DELIVERED : SPOOL_RCPT_DEFERRED,
					 .code = i % 2 ? 250 : 451,
					 .esc = "4.0.0",
					 .text = "later"}};
				struct spool_outcome o = {.id = ids[i],
							  .attempt = 1,
							  .at_us = 1,
							  .next_attempt_us = 2,
							  .hop = "smtp://192.0.2.1:25",
							  .rcpt_count = 2,
							  .rcpt = rr};
				int rc;
				while ((rc = spool_lane_outcome(w.l, &o, i)) == -EAGAIN)
					spool_syncio_run(w.sio);
				CHECK(rc == 0);
				if (i % 512 == 511)
					spool_syncio_run(w.sio);
			}
			wl_close(&w);
		}
		cnt = 0;
		t0 = now_us();
		CHECK(spool_recover_queue(&cfg, &rep, count_fn, &cnt) == 0);
		printf("recovery of %u messages, %s: %.0f ms (%llu queued, %llu outcome records, %llu "
		       "segments)\n",
		       n, pass ? "one outcome record each" : "no outcome records",
		       (double)(now_us() - t0) / 1000.0, (unsigned long long)cnt,
		       (unsigned long long)rep.outcomes, (unsigned long long)rep.segments);
		CHECK(rep.messages == n && cnt == (pass ? n / 2 + n % 2 : n));
	}
	free(ids);
	tu_rmrf(dir);
}

int main(int argc, char **argv)
{
	char dir[256];

	if (argc == 4 && !strcmp(argv[1], "ctl-fixture")) {
		ctl_fixture(argv[2], argv[3]);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "bench")) {
		bench((unsigned)strtoul(argv[2], NULL, 10));
		return 0;
	}
	tu_tmpdir(dir, sizeof(dir), "queue-hand");
	hand_cases(dir);
	tu_rmrf(dir);
	tu_tmpdir(dir, sizeof(dir), "queue-model");
	random_model(dir);
	tu_rmrf(dir);
	tu_tmpdir(dir, sizeof(dir), "queue-v1");
	version1(dir);
	tu_rmrf(dir);
	printf("spool_queue: ok\n");
	return 0;
}
