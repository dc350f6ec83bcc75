/* SPDX-License-Identifier: MIT */
/*
 * Operator records (format 3, type 6; spool/spool_oprec.c and the fold in
 * spool_fold.c), written by the real lane (spool_lane_operator through the
 * synchronous ops) in three lanes:
 *
 *  - codec: round trip, strings cut at their limits, a tail of 0 bytes,
 *    a tail with bytes left over or an unknown action refused;
 *  - fold: the last HOLD/RELEASE wins by time whatever the lane, equal
 *    times by lane; DELETE is final (not queued, listed done and deleted);
 *    BOUNCE queues with the bounce flag; RETRY or the winning RELEASE
 *    newer than the deferral makes the message due now, an older one does
 *    not; an operator record naming no message is ignored.
 */
#include "spool.h"
#include "spool_format.h"
#include "spool_oprec.h"
#include "spool_reader.h"
#include "spool_syncio.h"
#include "test_util.h"

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	(void)ctx;
	(void)cookie;
	CHECK(res == 0);
}

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

static uint64_t put_msg(struct wl *w)
{
	struct ds_rcpt r = {"r@x", ""};
	struct ds_envelope e = {.client_addr = "127.0.0.1",
				.helo = "h",
				.proto = "ESMTP",
				.mail_from = "s@x",
				.mail_params = "",
				.rcpt = &r,
				.rcpt_count = 1,
				.tls = "",
				.received_at_us = 1700000000000000ll,
				.body_size = 5};
	struct spool_txn t;
	int rc;

	CHECK(spool_txn_begin(w->l, &t) == 0);
	CHECK(spool_txn_append(w->l, &t, "hello", 5) == 0);
	while ((rc = spool_txn_commit(w->l, &t, &e, 1)) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
	spool_syncio_run(w->sio);
	return t.id;
}

static void put_op(struct wl *w, uint64_t id, uint32_t action, int64_t at_us)
{
	struct spool_operator o = {.id = id,
				   .action = action,
				   .uid = 0,
				   .pid = 42,
				   .at_us = at_us,
				   .name = "root",
				   .reason = ""};
	int rc;

	while ((rc = spool_lane_operator(w->l, &o, 7)) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
	spool_syncio_run(w->sio);
}

static void put_deferred(struct wl *w, uint64_t id, int64_t at_us, int64_t next_us)
{
	struct spool_outcome_rcpt e = {
		.idx = 0, .state = SPOOL_RCPT_DEFERRED, .code = 450, .esc = "4.2.0", .text = "later"};
	struct spool_outcome o = {.id = id,
				  .attempt = 1,
				  .at_us = at_us,
				  .next_attempt_us = next_us,
				  .hop = "h",
				  .rcpt_count = 1,
				  .rcpt = &e};
	int rc;

	while ((rc = spool_lane_outcome(w->l, &o, 8)) == -EAGAIN)
		spool_syncio_run(w->sio);
	CHECK(rc == 0);
	spool_syncio_run(w->sio);
}

static void codec(void)
{
	uint8_t buf[SPOOL_OPERATOR_MAX];
	char longname[200];
	struct spool_operator o = {.id = 5,
				   .action = SPOOL_OPERATOR_BOUNCE,
				   .uid = 1000,
				   .pid = 77,
				   .at_us = -3,
				   .name = "alice",
				   .reason = "spam run"},
			      d;
	size_t n = spool_oprec_size(&o);

	CHECK(n == SPOOL_OP_FIXED + 10 + 5 + 8);
	spool_oprec_encode(buf, &o);
	CHECK(spool_oprec_decode(buf, (uint32_t)n, &d) == 0);
	CHECK(d.action == SPOOL_OPERATOR_BOUNCE && d.uid == 1000 && d.pid == 77 && d.at_us == -3);
	CHECK(!strcmp(d.name, "alice") && !strcmp(d.reason, "spam run"));
	CHECK(spool_oprec_decode(buf, (uint32_t)n - 1, &d) == -EBADMSG);
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	o.name = longname;
	n = spool_oprec_size(&o);
	CHECK(n == SPOOL_OP_FIXED + 10 + SPOOL_OP_NAME_MAX + 8);
	spool_oprec_encode(buf, &o);
	CHECK(spool_oprec_decode(buf, (uint32_t)n, &d) == 0 && strlen(d.name) == SPOOL_OP_NAME_MAX);
	/* bytes left over: not valid */
	struct spool_op_fixed f = {.action = SPOOL_OP_HOLD, .tail = (uint32_t)(n - SPOOL_OP_FIXED + 8)};
	spool_op_fixed_encode(buf, &f);
	memset(buf + n, 0, 8);
	CHECK(spool_oprec_decode(buf, (uint32_t)n + 8, &d) == -EBADMSG);
	/* tail of 0 bytes */
	f.tail = 0;
	spool_op_fixed_encode(buf, &f);
	CHECK(spool_oprec_decode(buf, SPOOL_OP_FIXED, &d) == 0 && !*d.name && !*d.reason);
	o.action = 9;
	CHECK(spool_oprec_size(&o) == 0);
	o.action = SPOOL_OPERATOR_HOLD;
	o.id = 0;
	CHECK(spool_oprec_size(&o) == 0);
}

enum { A, B, C, D, E, F, G, H, I, NM };
static uint64_t ids[NM];

struct seen {
	bool queued, held, bounce;
	int64_t next_us;
	bool listed, done, deleted, lheld;
};
static struct seen seen[NM];

static int which(uint64_t id)
{
	for (int i = 0; i < NM; i++)
		if (ids[i] == id)
			return i;
	CHECK(!"unknown id");
	return -1;
}

static int q_fn(void *ctx, const struct spool_queue_entry *e)
{
	struct seen *s = &seen[which(e->id)];

	(void)ctx;
	s->queued = true;
	s->held = e->held;
	s->bounce = e->bounce;
	s->next_us = e->next_attempt_us;
	return 0;
}

static int st_fn(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	struct seen *s = &seen[which(m->id)];

	(void)ctx;
	s->listed = true;
	s->done = st->done;
	s->deleted = st->deleted;
	s->lheld = st->held;
	return 0;
}

static void fold(const char *dir)
{
	struct wl w[3];
	const int64_t far = 4000000000000000ll;

	for (unsigned i = 0; i < 3; i++)
		wl_open(&w[i], dir, i);
	for (int i = 0; i < NM; i++)
		ids[i] = put_msg(&w[i % 3]);
	/* A: hold, release, hold (three lanes, increasing time): held */
	put_op(&w[0], ids[A], SPOOL_OPERATOR_HOLD, 100);
	put_op(&w[1], ids[A], SPOOL_OPERATOR_RELEASE, 200);
	put_op(&w[2], ids[A], SPOOL_OPERATOR_HOLD, 300);
	/* B: the later hold in a lower lane... written first in time order reversed: time wins */
	put_op(&w[0], ids[B], SPOOL_OPERATOR_RELEASE, 400);
	put_op(&w[2], ids[B], SPOOL_OPERATOR_HOLD, 500);
	put_op(&w[1], ids[B], SPOOL_OPERATOR_RELEASE, 450);
	/* C: deferred, then deleted: final */
	put_deferred(&w[0], ids[C], 1000, far);
	put_op(&w[1], ids[C], SPOOL_OPERATOR_DELETE, 1100);
	/* D: deferred, retry later: due now. E: retry older than the deferral: not due */
	put_deferred(&w[0], ids[D], 1000, far);
	put_op(&w[2], ids[D], SPOOL_OPERATOR_RETRY, 2000);
	put_deferred(&w[1], ids[E], 3000, far);
	put_op(&w[0], ids[E], SPOOL_OPERATOR_RETRY, 2000);
	/* F: bounced */
	put_op(&w[1], ids[F], SPOOL_OPERATOR_BOUNCE, 600);
	/* G: deferred, held, released later: due now, not held */
	put_deferred(&w[2], ids[G], 1000, far);
	put_op(&w[0], ids[G], SPOOL_OPERATOR_HOLD, 1500);
	put_op(&w[1], ids[G], SPOOL_OPERATOR_RELEASE, 5000);
	/* H: equal times, hold in lane 1, release in lane 0: lane 1 is later: held. I: the other way */
	put_op(&w[1], ids[H], SPOOL_OPERATOR_HOLD, 700);
	put_op(&w[0], ids[H], SPOOL_OPERATOR_RELEASE, 700);
	put_op(&w[0], ids[I], SPOOL_OPERATOR_HOLD, 700);
	put_op(&w[2], ids[I], SPOOL_OPERATOR_RELEASE, 700);
	/* naming nothing */
	put_op(&w[0], 0x0200000099000001ull, SPOOL_OPERATOR_DELETE, 800);
	for (unsigned i = 0; i < 3; i++)
		wl_close(&w[i]);

	struct spool_config cfg;
	struct spool_recovery_report rep;
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	CHECK(spool_recover_queue(&cfg, &rep, q_fn, NULL) == 0);
	CHECK(rep.messages == NM && rep.queued == NM - 1);
	struct spool_reader *r;
	CHECK(spool_reader_open(&r, dir) == 0);
	CHECK(spool_reader_foreach_status(r, st_fn, NULL) == 0);
	spool_reader_close(r);

	CHECK(seen[A].queued && seen[A].held && seen[A].lheld);
	CHECK(seen[B].queued && seen[B].held);
	CHECK(!seen[C].queued && seen[C].listed && seen[C].done && seen[C].deleted);
	CHECK(seen[D].queued && seen[D].next_us == 0 && !seen[D].held);
	CHECK(seen[E].queued && seen[E].next_us == far);
	CHECK(seen[F].queued && seen[F].bounce && !seen[F].held);
	CHECK(seen[G].queued && !seen[G].held && seen[G].next_us == 0);
	CHECK(seen[H].queued && seen[H].held);
	CHECK(seen[I].queued && !seen[I].held);
	for (int i = 0; i < NM; i++)
		CHECK(i == C || !seen[i].deleted);
}

int main(void)
{
	char dir[256];

	codec();
	tu_tmpdir(dir, sizeof(dir), "oprec-fold");
	fold(dir);
	tu_rmrf(dir);
	printf("spool_oprec: ok\n");
	return 0;
}
