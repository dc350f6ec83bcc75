/* SPDX-License-Identifier: MIT */
/*
 * Start-up recovery of a whole spool directory (spool_recover, spool.h):
 * every lane scanned with the engine of spool_scan.c; torn tails counted,
 * corrupt regions below a segment's durable watermark quarantined and
 * noted beside the segment, commits whose body is not all there discarded.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "spool_scan.h"

struct rctx {
	struct spool_recovery_report *rep;
	const char *dir;
	FILE *note;
	struct rseg *note_seg;
	unsigned note_lane;
	bool newer; /* a segment of a newer format: recovery fails, nothing is touched */
};

static int r_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct rctx *c = ctx;
	c->rep->messages++;
	c->rep->bytes += m->size;
	return 0;
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

int spool_recover(const struct spool_config *cfg, struct spool_recovery_report *rep)
{
	struct spool_reader *r;
	struct rctx c = {.rep = rep, .dir = cfg->dir};
	struct scan_cfg sc = {.msg = r_msg, .dropped = r_dropped, .bad = r_bad, .seg = r_seg, .ctx = &c};
	int64_t t0 = ds_mono_us();
	int rc;

	memset(rep, 0, sizeof(*rep));
	rc = spool_reader_open(&r, cfg->dir);
	if (rc == -ENOENT) {
		rep->elapsed_us = (uint64_t)(ds_mono_us() - t0);
		return 0; /* nothing spooled yet */
	}
	if (rc)
		return rc;
	rep->lanes = r->nlanes;
	spool_scan_reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes && !rc; i++)
		rc = spool_scan_lane(r, &r->lanes[i], &sc);
	note_close(&c);
	if (!rc && c.newer)
		rc = -EPROTONOSUPPORT;
	spool_reader_close(r);
	rep->elapsed_us = (uint64_t)(ds_mono_us() - t0);
	return rc;
}

void spool_recovery_report_print(const struct spool_recovery_report *rep, FILE *f)
{
	fprintf(f,
		"spool recovery: %llu lanes, %llu segments, %llu messages (%llu body bytes), %llu torn "
		"tails, "
		"%llu quarantined, %llu unacknowledged commits discarded, %llu ms\n",
		(unsigned long long)rep->lanes, (unsigned long long)rep->segments,
		(unsigned long long)rep->messages, (unsigned long long)rep->bytes,
		(unsigned long long)rep->torn_tails, (unsigned long long)rep->quarantined,
		(unsigned long long)rep->discarded, (unsigned long long)(rep->elapsed_us / 1000));
}
