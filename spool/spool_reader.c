/* SPDX-License-Identifier: MIT */
/*
 * The read-only reader (spool_reader.h): open a spool directory, list,
 * read, verify and summarize committed messages, over the scanning engine
 * of spool_scan.c.
 */
#include "spool_reader.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "ds_assert.h"
#include "ds_grow.h"
#include "spool_scan.h"
#include "spool_sum.h"

static int lane_load(struct spool_reader *r, struct rlane *rl, unsigned lane)
{
	char ldir[PATH_MAX];
	uint64_t *seqs;
	int n = 0;

	rl->lane = lane;
	if (spool_lane_dir_path(ldir, sizeof(ldir), r->dir, lane))
		return -ENAMETOOLONG;
	n = spool_seg_list(ldir, &seqs);
	if (n < 0)
		return n;
	rl->segs = calloc((size_t)n + 1, sizeof(*rl->segs));
	if (!rl->segs) {
		free(seqs);
		return -ENOMEM;
	}
	for (int i = 0; i < n; i++)
		rl->segs[rl->nsegs++] = (struct rseg){.seq = seqs[i], .state = RSEG_LISTED};
	free(seqs);
	return 0;
}

int spool_reader_open(struct spool_reader **out, const char *dir)
{
	unsigned lanes[SPOOL_LANES_MAX];
	struct spool_reader *r;
	int n, rc;

	*out = NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	if (snprintf(r->dir, sizeof(r->dir), "%s", dir) >= (int)sizeof(r->dir)) {
		free(r);
		return -ENAMETOOLONG;
	}
	r->rcpt = calloc(SPOOL_RCPT_MAX, sizeof(*r->rcpt));
	if (!r->rcpt) {
		free(r);
		return -ENOMEM;
	}
	n = spool_lane_list(dir, lanes);
	if (n < 0) {
		spool_reader_close(r);
		return n;
	}
	for (int i = 0; i < n; i++) {
		rc = lane_load(r, &r->lanes[r->nlanes], lanes[i]);
		if (rc) {
			spool_reader_close(r);
			return rc;
		}
		r->nlanes++;
	}
	*out = r;
	return 0;
}

bool spool_reader_changed(const struct spool_reader *r)
{
	for (unsigned i = 0; i < r->nlanes; i++)
		for (unsigned k = 0; k < r->lanes[i].nsegs; k++) {
			const struct rseg *s = &r->lanes[i].segs[k];
			struct spool_seg_hdr h;

			if (s->state != RSEG_MAPPED || !s->map || s->hdr_rc)
				continue;
			if (spool_seg_hdr_decode(s->map, s->map_size, &h) || h.seq != s->hdr.seq ||
			    h.epoch != s->hdr.epoch)
				return true;
		}
	return false;
}

void spool_reader_close(struct spool_reader *r)
{
	if (!r)
		return;
	for (unsigned i = 0; i < r->nlanes; i++) {
		for (unsigned k = 0; k < r->lanes[i].nsegs; k++)
			spool_scan_seg_close(&r->lanes[i].segs[k]);
		free(r->lanes[i].segs);
	}
	free(r->rcpt);
	free(r);
}

/* ---- foreach / read ---- */

struct fe_ctx {
	int (*fn)(void *ctx, const struct spool_msg *m);
	void *ctx;
};

static int fe_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct fe_ctx *f = ctx;
	return f->fn(f->ctx, m);
}

int spool_reader_foreach(struct spool_reader *r, int (*fn)(void *ctx, const struct spool_msg *m), void *ctx)
{
	struct fe_ctx f = {.fn = fn, .ctx = ctx};
	struct scan_cfg cfg = {.msg = fe_msg, .ctx = &f};

	return spool_scan_spool(r, &cfg, NULL);
}

struct fes_ctx {
	int (*fn)(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st);
	void *ctx;
};

static int fes_msg(void *ctx, struct rlane *rl, const struct spool_msg *m, const struct spool_msg_status *st)
{
	struct fes_ctx *f = ctx;
	return f->fn(f->ctx, m, st);
}

int spool_reader_foreach_status(struct spool_reader *r,
				int (*fn)(void *ctx, const struct spool_msg *m,
					  const struct spool_msg_status *st),
				void *ctx)
{
	struct fes_ctx f = {.fn = fn, .ctx = ctx};
	struct scan_cfg cfg = {.msg_status = fes_msg, .ctx = &f};

	return spool_scan_spool(r, &cfg, NULL);
}

struct find_ctx {
	uint64_t id;
	struct spool_msg m;
	struct rlane *rl;
};

static int find_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct find_ctx *f = ctx;

	if (m->id != f->id)
		return 0;
	f->m = *m;
	f->rl = rl;
	return 1;
}

/*
 * Where the records of txn id can start in its lane: the index of the first
 * segment with sequence >= the one encoded in the id. The id carries the
 * lane's active segment when the txn began (FORMAT.md, "Txn / queue ids");
 * the writer only appends, and sequences only grow, so every chunk and the
 * commit of that txn lie in that segment or a later one (a message may
 * continue, and a txn held open may commit, segments later). The id keeps
 * 32 bits of the sequence: if the lane holds a larger sequence (never
 * written by this format's writer) the shortcut is not safe and the whole
 * lane is scanned.
 */
static unsigned lane_id_first_seg(const struct rlane *rl, uint64_t id)
{
	uint64_t seq = (id >> SPOOL_ID_COUNTER_BITS) & ((1ull << SPOOL_ID_SEQ_BITS) - 1);

	if (rl->nsegs && rl->segs[rl->nsegs - 1].seq >> SPOOL_ID_SEQ_BITS)
		return 0;
	return spool_scan_seg_index(rl, seq);
}

int spool_reader_read(struct spool_reader *r, uint64_t id, int (*fn)(void *ctx, const void *buf, size_t len),
		      void *ctx)
{
	struct find_ctx f = {.id = id};
	struct scan_cfg cfg = {.msg = find_msg, .ctx = &f};
	unsigned lane = spool_id_lane(id);

	if (!id)
		return -ENOENT; /* txn ids are never 0 (and 0 means "no filter" to the scan) */
	for (unsigned i = 0; i < r->nlanes; i++) {
		struct rlane *rl = &r->lanes[i];

		if (rl->lane != lane)
			continue;
		/* The lane's segments from the id's own on, this txn's records only. */
		if (spool_scan_lane_from(r, rl, &cfg, lane_id_first_seg(rl, id), id) < 0)
			return -ENOMEM;
	}
	if (!f.rl)
		return -ENOENT;
	return spool_scan_body_walk(r, f.rl, &f.m, fn, ctx);
}

static int file_out(void *ctx, const void *buf, size_t len)
{
	return fwrite(buf, 1, len, ctx) == len ? 0 : -EIO;
}

int spool_reader_read_file(struct spool_reader *r, uint64_t id, FILE *f)
{
	return spool_reader_read(r, id, file_out, f);
}

/* ---- verify / stats ---- */

struct vctx {
	struct spool_verify_report *rep;
	FILE *log;
	const char *dir;
	uint64_t last_seq_lane[SPOOL_LANES_MAX];
};

static int v_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct vctx *v = ctx;
	v->rep->messages++;
	v->rep->bytes += m->size;
	return 0;
}

static void v_dropped(void *ctx, struct rlane *rl, const struct spool_msg *m, bool durable)
{
	struct vctx *v = ctx;
	char id[24];

	spool_id_format(m->id, id, sizeof(id));
	if (durable) {
		v->rep->bad_bodies++;
		if (v->log)
			fprintf(v->log,
				"lane %u segment %llu offset %llu: message %s: body missing or corrupt\n",
				rl->lane, (unsigned long long)m->seq, (unsigned long long)m->off, id);
	} else {
		v->rep->incomplete++;
	}
}

/*
 * A durable commit without its body whose every recipient is final: fine when
 * a segment its chunks lay in is gone (reclaimed before the commit's own, the
 * documented intermediate state). A body that is there but corrupt, or whose
 * segments are all present, is still damage.
 */
static bool v_dropped_final(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct vctx *v = ctx;
	bool gone = false;
	char id[24];

	if (!m->chunk_count || !m->first_seq)
		return false;
	for (uint64_t q = m->first_seq; q < m->seq && !gone; q++) {
		struct rseg *s = spool_scan_seg_find(rl, q);
		gone = !s || s->state != RSEG_MAPPED;
	}
	if (!gone)
		return false;
	v->rep->bodies_reclaimed++;
	spool_id_format(m->id, id, sizeof(id));
	if (v->log)
		fprintf(v->log,
			"lane %u segment %llu offset %llu: message %s: final, body reclaimed (not an "
			"error)\n",
			rl->lane, (unsigned long long)m->seq, (unsigned long long)m->off, id);
	return true;
}

static void v_aborted(void *ctx, struct rlane *rl, const struct spool_msg *m, bool kept)
{
	struct vctx *v = ctx;
	v->rep->aborted++; /* refused, as its client was told: neither a message nor damage */
}

static void v_bad(void *ctx, struct rlane *rl, struct rseg *s, uint64_t from, uint64_t to, bool tail,
		  bool zero, bool durable)
{
	struct vctx *v = ctx;

	/*
	 * Past the watermark: writes that were never flushed (crash), or that
	 * a live server has in flight and complete out of order.
	 */
	if (tail || !durable) {
		if (!zero)
			v->rep->torn_tails++;
		return;
	}
	v->rep->quarantined++;
	v->rep->quarantined_bytes += to - from;
	if (v->log)
		fprintf(v->log, "lane %u segment %llu: bad bytes [%llu, %llu) followed by valid records\n",
			rl->lane, (unsigned long long)s->seq, (unsigned long long)from,
			(unsigned long long)to);
}

/*
 * A seal summary recovery would use (CRC, structure, lane, sequence, epoch,
 * size and the segment's mtime all check: spool_sum_load) must be byte for
 * byte the one this segment builds: recovery replays it instead of reading
 * the segment, so a wrong one would hide or invent records.
 */
static void v_sum(struct vctx *v, struct rlane *rl, struct rseg *s)
{
	struct spool_sum *sum;
	uint8_t *ref = NULL;
	size_t reflen = 0;
	int rc;

	if (spool_sum_load(v->dir, rl->lane, &s->hdr, s->size, &sum))
		return; /* none, stale or damaged: recovery scans the segment whole */
	rc = spool_sum_build(s->map, s->size, &s->hdr, sum->flags, &sum->seg_mtime, &ref, &reflen);
	/* Not checked: no memory, or the segment's own would exceed the bound. */
	if (rc != -ENOMEM && rc != -E2BIG) {
		v->rep->summaries++;
		if (rc || reflen != sum->len || memcmp(ref, sum->buf, reflen)) {
			v->rep->bad_summaries++;
			if (v->log)
				fprintf(v->log,
					"lane %u segment %llu: its seal summary differs from the segment "
					"(%s); "
					"recovery would replay it: remove the .sum file so the segment is "
					"read "
					"whole\n",
					rl->lane, (unsigned long long)s->seq,
					rc ? "the segment has damage the summary does not show"
					   : "other records");
		}
	}
	free(ref);
	spool_sum_free(sum);
}

static void v_seg(void *ctx, struct rlane *rl, struct rseg *s)
{
	struct vctx *v = ctx;

	v->rep->segments++;
	if (!s->hdr_rc)
		v_sum(v, rl, s);
	if (s->hdr_rc == -ENODATA) {
		v->rep->empty_segments++;
	} else if (s->hdr_rc == -EPROTONOSUPPORT) {
		v->rep->bad_segment_headers++;
		if (v->log)
			fprintf(v->log, "lane %u segment %llu: written by a newer dotspool (format %u)\n",
				rl->lane, (unsigned long long)s->seq, s->hdr.version);
	} else if (s->hdr_rc) {
		v->rep->bad_segment_headers++;
		if (v->log)
			fprintf(v->log, "lane %u segment %llu: bad segment header\n", rl->lane,
				(unsigned long long)s->seq);
	}
}

int spool_reader_verify(struct spool_reader *r, struct spool_verify_report *rep, FILE *log)
{
	struct vctx v = {.rep = rep, .log = log, .dir = r->dir};
	struct scan_cfg cfg = {.check_all_bodies = true,
			       .msg = v_msg,
			       .dropped = v_dropped,
			       .bad = v_bad,
			       .seg = v_seg,
			       .aborted = v_aborted,
			       .dropped_final = v_dropped_final,
			       .ctx = &v};
	struct spool_scan_totals tot;
	int rc;

	memset(rep, 0, sizeof(*rep));
	rc = spool_scan_spool(r, &cfg, &tot);
	if (rc)
		return rc;
	rep->outcomes = tot.outcomes;
	return rep->bad_bodies || rep->quarantined || rep->bad_segment_headers || rep->bad_summaries
		       ? -EBADMSG
		       : 0;
}

struct sctx {
	struct spool_reader *r;
	struct spool_reader_stats *st;
};

static int s_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct sctx *c = ctx;
	struct spool_lane_summary *ls = &c->st->lane[rl - c->r->lanes];

	ls->messages++;
	ls->bytes += m->size;
	c->st->messages++;
	c->st->bytes += m->size;
	return 0;
}

int spool_reader_stats(struct spool_reader *r, struct spool_reader_stats *st)
{
	struct sctx c = {.r = r, .st = st};
	struct scan_cfg cfg = {.msg = s_msg, .ctx = &c};

	memset(st, 0, sizeof(*st));
	spool_scan_reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes; i++) {
		struct rlane *rl = &r->lanes[i];
		struct spool_lane_summary *ls = &st->lane[st->lanes++];

		ls->lane = rl->lane;
		ls->segments = rl->nsegs;
		if (rl->nsegs) {
			ls->first_seq = rl->segs[0].seq;
			ls->last_seq = rl->segs[rl->nsegs - 1].seq;
		}
		st->segments += rl->nsegs;
		for (unsigned k = 0; k < rl->nsegs; k++)
			st->segment_bytes += rl->segs[k].size;
	}
	return spool_scan_spool(r, &cfg, NULL);
}
