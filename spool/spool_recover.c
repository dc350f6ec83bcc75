/* SPDX-License-Identifier: MIT */
/*
 * Start-up recovery of a whole spool directory (spool_recover, spool.h):
 * every lane scanned with the engine of spool_scan.c; torn tails counted,
 * corrupt regions below a segment's durable watermark quarantined and
 * noted beside the segment, commits whose body is not all there discarded.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "spool_gap.h"
#include "spool_scan.h"
#include "spool_sum.h"

struct rctx {
	struct spool_recovery_report *rep;
	const char *dir;
	FILE *note;
	struct rseg *note_seg;
	unsigned note_lane;
	bool newer; /* a segment of a newer format: recovery fails, nothing is touched */
	int (*fn)(void *ctx, const struct spool_queue_entry *e);
	void *fn_ctx;
	uint8_t *rcpt_state; /* SPOOL_RCPT_MAX, for fn */
	const struct spool_recover_gap_ops *gap;
};

/* Gap records (issue 16) to the caller; the rest of the delivery records are the fold's. */
static void r_delivery(void *ctx, struct rlane *rl, struct rseg *s, const struct spool_rec *rec)
{
	struct rctx *c = ctx;
	struct spool_gap_rec g;

	if (rec->type != SPOOL_REC_GAP || !c->gap || !c->gap->rec)
		return;
	if (spool_gap_decode(rec->payload, rec->len, rec->txn_id, &g) == 0) {
		g.rec_lane = rl->lane;
		g.rec_seq = s->seq;
		g.rec_off = rec->off;
		c->gap->rec(c->gap->ctx, &g);
	}
}

/*
 * A message: counted, and if some recipient is still owed, handed to fn
 * with its folded state.
 */
static int r_msg(void *ctx, struct rlane *rl, const struct spool_msg *m, const struct spool_msg_status *st)
{
	struct rctx *c = ctx;
	struct spool_queue_entry e;

	if (c->newer)
		return -EPROTONOSUPPORT; /* recovery fails: nothing is handed out */
	c->rep->messages++;
	c->rep->bytes += m->size;
	if (c->gap && c->gap->msg)
		c->gap->msg(c->gap->ctx, m->id, m->lane, m->seq, m->off, m->received_at_us);
	if (st->done)
		return 0;
	c->rep->queued++;
	c->rep->queued_rcpts += st->rcpt_count - st->final_rcpts;
	c->rep->in_flight += st->in_flight;
	if (!c->fn)
		return 0;
	for (uint32_t i = 0; i < st->rcpt_count; i++)
		c->rcpt_state[i] = st->rcpt[i].state;
	e = (struct spool_queue_entry){.id = m->id,
				       .lane = m->lane,
				       .seq = m->seq,
				       .off = m->off,
				       .size = m->size,
				       .received_at_us = m->received_at_us,
				       .rcpt_count = st->rcpt_count,
				       .rcpt_state = c->rcpt_state,
				       .attempts = st->attempts,
				       .next_attempt_us = st->next_attempt_us,
				       .in_flight = st->in_flight,
				       .held = st->held,
				       .bounce = st->bounced};
	return c->fn(c->fn_ctx, &e);
}

static void r_aborted(void *ctx, struct rlane *rl, const struct spool_msg *m, bool kept)
{
	struct rctx *c = ctx;
	c->rep->aborted++;
}

static void r_dropped(void *ctx, struct rlane *rl, const struct spool_msg *m, bool durable)
{
	struct rctx *c = ctx;
	c->rep->discarded++;
}

static void note_close(struct rctx *c)
{
	if (c->note) {
		fflush(c->note);
		fsync(fileno(c->note));
		fclose(c->note);
		c->note = NULL;
	}
	c->note_seg = NULL;
}

/*
 * Quarantine: the segment itself is never written again (the lane always
 * moves to a new segment at start-up), so it stays as the copy; a sidecar
 * note SEQ.seg.quarantine lists the bad regions for the operator.
 */
static void r_note(struct rctx *c, struct rlane *rl, struct rseg *s, const char *fmt, uint64_t a, uint64_t b)
{
	char path[PATH_MAX];

	if (c->note_seg != s) {
		note_close(c);
		if (spool_seg_path(path, sizeof(path) - 16, c->dir, rl->lane, s->seq))
			return;
		strcat(path, ".quarantine");
		c->note = fopen(path, "w");
		c->note_seg = s;
	}
	if (c->note)
		fprintf(c->note, fmt, (unsigned long long)a, (unsigned long long)b);
	fprintf(stderr, "dotspool: spool lane %u segment %llu: ", rl->lane, (unsigned long long)s->seq);
	fprintf(stderr, fmt, (unsigned long long)a, (unsigned long long)b);
}

static void r_bad(void *ctx, struct rlane *rl, struct rseg *s, uint64_t from, uint64_t to, bool tail,
		  bool zero, bool durable)
{
	struct rctx *c = ctx;

	/* Unflushed writes of a crash (torn, reordered): not corruption. */
	if (tail || !durable) {
		if (!zero)
			c->rep->torn_tails++;
		return;
	}
	c->rep->quarantined++;
	r_note(c, rl, s, "quarantined bad region [%llu, %llu) followed by valid records\n", from, to);
}

static void r_seg(void *ctx, struct rlane *rl, struct rseg *s)
{
	struct rctx *c = ctx;

	c->rep->segments++;
	c->rep->summaries += s->sum != NULL;
	if (s->hdr_rc == -EPROTONOSUPPORT) {
		/* Written by a newer dotspool: left exactly as it is, and we do not start. */
		if (!c->newer)
			fprintf(stderr,
				"spool: %s/lane-%02u/%012llu.seg was written by a newer dotspool (segment "
				"format %u; this binary reads up to %u): refusing to use this spool\n",
				c->dir, rl->lane, (unsigned long long)s->seq, s->hdr.version,
				SPOOL_FORMAT_VERSION);
		c->newer = true;
	} else if (s->hdr_rc && s->hdr_rc != -ENODATA) {
		c->rep->quarantined++;
		r_note(c, rl, s, "quarantined segment: bad header (size %llu, seq %llu)\n", s->size, s->seq);
	}
}

/*
 * Every lane scanned, then the delivery records folded across all of them
 * (spool_scan_spool): a commit refused by an abort record anywhere is no
 * message, an outcome record counts only when intact (a torn one is as if
 * never written: that delivery happens again, at least once).
 */
int spool_recover_queue(const struct spool_config *cfg, struct spool_recovery_report *rep,
			int (*fn)(void *ctx, const struct spool_queue_entry *e), void *ctx)
{
	return spool_recover_queue_gap(cfg, rep, fn, ctx, NULL);
}

int spool_recover_queue_gap(const struct spool_config *cfg, struct spool_recovery_report *rep,
			    int (*fn)(void *ctx, const struct spool_queue_entry *e), void *ctx,
			    const struct spool_recover_gap_ops *gap)
{
	struct spool_reader *r;
	struct rctx c = {.rep = rep, .dir = cfg->dir, .fn = fn, .fn_ctx = ctx, .gap = gap};
	struct scan_cfg sc = {.msg_status = r_msg,
			      .dropped = r_dropped,
			      .aborted = r_aborted,
			      .bad = r_bad,
			      .seg = r_seg,
			      .no_env = true,
			      .delivery = gap ? r_delivery : NULL,
			      .ctx = &c};
	struct spool_scan_totals tot = {0};
	int64_t t0 = ds_mono_us();
	int rc;

	memset(rep, 0, sizeof(*rep));
	/* Summaries whose segment is gone (a crash between the two unlinks): harmless, removed. */
	spool_sum_sweep(cfg->dir);
	rc = spool_reader_open(&r, cfg->dir);
	if (rc == -ENOENT) {
		rep->elapsed_us = (uint64_t)(ds_mono_us() - t0);
		return 0; /* nothing spooled yet */
	}
	if (rc)
		return rc;
	if (fn) {
		c.rcpt_state = malloc(SPOOL_RCPT_MAX);
		if (!c.rcpt_state) {
			spool_reader_close(r);
			return -ENOMEM;
		}
	}
	rep->lanes = r->nlanes;
	r->use_sums = !getenv("DS_SPOOL_NO_SUMMARIES"); /* the variable: measurements, tests */
	rc = spool_scan_spool(r, &sc, &tot);
	rep->outcomes = tot.outcomes;
	note_close(&c);
	if ((!rc || rc == -EPROTONOSUPPORT) && c.newer)
		rc = -EPROTONOSUPPORT;
	free(c.rcpt_state);
	spool_reader_close(r);
	rep->elapsed_us = (uint64_t)(ds_mono_us() - t0);
	return rc;
}

int spool_recover(const struct spool_config *cfg, struct spool_recovery_report *rep)
{
	return spool_recover_queue(cfg, rep, NULL, NULL);
}

void spool_recovery_report_print(const struct spool_recovery_report *rep, FILE *f)
{
	fprintf(f,
		"spool recovery: %llu lanes, %llu segments, %llu messages (%llu body bytes), %llu torn "
		"tails, "
		"%llu quarantined, %llu unacknowledged commits discarded, %llu refused commits (abort "
		"records), %llu outcome records, %llu messages queued (%llu recipients, %llu cut short "
		"in delivery), %llu ms, %llu segments from seal summaries\n",
		(unsigned long long)rep->lanes, (unsigned long long)rep->segments,
		(unsigned long long)rep->messages, (unsigned long long)rep->bytes,
		(unsigned long long)rep->torn_tails, (unsigned long long)rep->quarantined,
		(unsigned long long)rep->discarded, (unsigned long long)rep->aborted,
		(unsigned long long)rep->outcomes, (unsigned long long)rep->queued,
		(unsigned long long)rep->queued_rcpts, (unsigned long long)rep->in_flight,
		(unsigned long long)(rep->elapsed_us / 1000), (unsigned long long)rep->summaries);
}
