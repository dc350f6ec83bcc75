/* SPDX-License-Identifier: MIT */
/*
 * The compactor of one lane: see spool_compact.h for the round and
 * FORMAT.md "Moved records" for why a crash anywhere leaves exactly one
 * message per id.
 *
 * Everything runs on the lane owner's thread. Bodies are read from the
 * mapped old segment (spool_fetch), at most step_bytes per step and only
 * as much as the lane's staging memory takes without -EAGAIN, so a big
 * body never holds the owner's loop for long.
 */
#include "spool_compact.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "spool_fetch.h"
#include "spool_format.h"
#include "spool_reclaim.h"

enum cm_phase {
	CM_SUMMARY = 0,
	CM_BEGIN,
	CM_BODY,
	CM_COMMIT,
	CM_SUMMARY_REC,
	CM_GAP_REC,
	CM_WAIT,
	CM_MOVED_REC,
	CM_DONE,
	CM_FAILED
};
enum cm_ck { CK_SUMMARY = 1, CK_COMMIT = 2, CK_MOVED = 3, CK_GAP = 4 };

struct cmove {
	uint64_t id;
	struct spool_compact_msgstate st;
	uint8_t *rst; /* st.rcpt_state, owned */
	uint8_t phase;
	bool fetched, txn_open, moving;
	bool sum_taken, sum_settled, commit_taken, commit_settled;
	int sum_res, commit_res;
	/* Kept by a gap record (issue 16): the copy's fresh AT_RISK record (gap: the set's, relocated). */
	bool kept, gap_taken, gap_settled;
	int gap_res;
	struct spool_gap_rec gap;
	uint64_t body_off;
	uint64_t new_seq, new_off;
	struct spool_txn t;
	struct spool_fetch_msg fm;
};

struct spool_compact {
	struct spool_lane *l;
	unsigned lane_no;
	struct spool_reclaim *r;
	struct spool_fetch *fetch;
	struct spool_compact_config cfg;
	struct spool_compact_ops ops;
	void *ctx;
	bool stopping;
	int64_t next_pick_us;
	/* the round */
	bool active;
	uint16_t gen;
	uint64_t seq;
	bool whole; /* the round moves every live message of the segment */
	unsigned n, cur;
	uint64_t bytes;
	struct cmove mv[SPOOL_COMPACT_BATCH_MAX];
	struct spool_compact_stats st;
	uint8_t *buf; /* step_bytes */
};

static uint64_t cookie(const struct spool_compact *c, enum cm_ck k, unsigned i)
{
	return SPOOL_COMPACT_COOKIE_BIT | (uint64_t)c->gen << 40 | (uint64_t)k << 32 | i;
}

int spool_compact_create(struct spool_compact **out, struct spool_lane *l, unsigned lane_no, const char *dir,
			 struct spool_reclaim *r, const struct spool_compact_config *cfg,
			 const struct spool_compact_ops *ops, void *ctx)
{
	struct spool_compact *c;
	int rc;

	*out = NULL;
	if (!cfg->live_max_pct || cfg->live_max_pct > 100 || !cfg->segment_size)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->l = l;
	c->lane_no = lane_no;
	c->r = r;
	c->cfg = *cfg;
	if (!c->cfg.step_bytes)
		c->cfg.step_bytes = 256u << 10;
	if (!c->cfg.pick_every_us)
		c->cfg.pick_every_us = 100000; /* a look at the table (one mutex, a walk over its segments) */
	c->ops = *ops;
	c->ctx = ctx;
	c->buf = malloc(c->cfg.step_bytes);
	/* A message in progress holds two maps (spool_fetch.h); one message reads at a time. */
	rc = c->buf ? spool_fetch_open(&c->fetch, dir, 8) : -ENOMEM;
	if (rc) {
		free(c->buf);
		free(c);
		return rc;
	}
	*out = c;
	return 0;
}

/* The move of m ends without the copy being the message (before or after it was durable). */
static void mv_fail(struct spool_compact *c, struct cmove *m)
{
	if (m->txn_open)
		spool_txn_abort(c->l, &m->t);
	m->txn_open = false;
	if (m->fetched)
		spool_fetch_put(c->fetch, &m->fm);
	m->fetched = false;
	if (m->moving)
		spool_reclaim_msg_moved(c->r, m->id, false);
	m->moving = false;
	m->phase = CM_FAILED;
	c->st.failed++;
}

static void round_clear(struct spool_compact *c)
{
	for (unsigned i = 0; i < c->n; i++) {
		free(c->mv[i].rst);
		c->mv[i].rst = NULL;
	}
	c->active = false;
	c->n = c->cur = 0;
	c->bytes = 0;
	c->gen++;
}

void spool_compact_destroy(struct spool_compact *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->n; i++)
		if (c->mv[i].phase < CM_DONE)
			mv_fail(c, &c->mv[i]);
	round_clear(c);
	spool_fetch_close(c->fetch);
	free(c->buf);
	free(c);
}

void spool_compact_stop(struct spool_compact *c)
{
	c->stopping = true;
	/* Copies not committed yet are given up; those waiting for their flush finish normally. */
	for (unsigned i = c->cur; i < c->n; i++)
		if (c->mv[i].phase < CM_WAIT)
			mv_fail(c, &c->mv[i]);
	if (c->active)
		c->cur = c->n;
}

bool spool_compact_busy(const struct spool_compact *c)
{
	for (unsigned i = 0; i < c->n; i++) {
		const struct cmove *m = &c->mv[i];
		if ((m->sum_taken && !m->sum_settled) || (m->commit_taken && !m->commit_settled) ||
		    (m->gap_taken && !m->gap_settled))
			return true;
	}
	return false;
}

void spool_compact_stats(const struct spool_compact *c, struct spool_compact_stats *st)
{
	*st = c->st;
}

void spool_compact_settled(struct spool_compact *c, uint64_t ck, int res)
{
	unsigned i = (unsigned)(ck & 0xffffffffu);
	enum cm_ck k = (enum cm_ck)((ck >> 32) & 0xff);

	DS_ASSERT(ck & SPOOL_COMPACT_COOKIE_BIT);
	if (k == CK_MOVED || (uint16_t)(ck >> 40) != c->gen || i >= c->n)
		return; /* MOVED records are a hint (FORMAT.md); a round given up already */
	if (k == CK_SUMMARY) {
		c->mv[i].sum_settled = true;
		c->mv[i].sum_res = res;
	} else if (k == CK_GAP) {
		c->mv[i].gap_settled = true;
		c->mv[i].gap_res = res;
	} else {
		c->mv[i].commit_settled = true;
		c->mv[i].commit_res = res;
	}
}

/* ---- the round ---- */

static bool pick(struct spool_compact *c, int64_t now)
{
	uint64_t ids[SPOOL_COMPACT_BATCH_MAX], seq, live = 0;
	struct spool_compact_msgstate sts[SPOOL_COMPACT_BATCH_MAX];
	struct spool_reclaim_pick pk;
	int rcs[SPOOL_COMPACT_BATCH_MAX];
	int n, rc = 0;
	unsigned k = 0;

	c->next_pick_us = now + c->cfg.pick_every_us;
	n = spool_reclaim_compact_pick(c->r, c->lane_no, now, c->cfg.age_us, &seq, ids,
				       SPOOL_COMPACT_BATCH_MAX, &pk);
	if (n <= 0)
		return false;
	/* Ascending (the owner's batch lookup wants them so): insertion sort of at most 64. */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
			uint64_t t = ids[j];
			ids[j] = ids[j - 1];
			ids[j - 1] = t;
		}
	memset(sts, 0, sizeof(sts));
	c->ops.states(c->ctx, ids, (unsigned)n, sts, rcs);
	/*
	 * Unknown to the owner: a kept message whose delivery is over (issue 16)
	 * has its final state in the table (what its copy's summary restates).
	 */
	uint8_t *snaps[SPOOL_COMPACT_BATCH_MAX] = {0};
	for (int i = 0; i < n; i++) {
		struct spool_reclaim_final_state fs;
		if (rcs[i] != -ENOENT || spool_reclaim_msg_snapshot(c->r, ids[i], &fs, &snaps[i]))
			continue;
		sts[i] = (struct spool_compact_msgstate){.seq = fs.seq,
							 .off = fs.off,
							 .size = fs.size,
							 .attempts = fs.attempts,
							 .rcpt_count = fs.rcpt_count,
							 .rcpt_state = fs.rcpt_state};
		rcs[i] = 0;
	}
	/* Messages the owner cannot give now (an attempt in flight, held, ...) wait for a later round. */
	for (int i = 0; i < n; i++) {
		struct cmove *m = &c->mv[k];
		if (rcs[i])
			continue;
		memset(m, 0, sizeof(*m));
		m->id = ids[i];
		m->st = sts[i];
		m->rst = malloc(sts[i].rcpt_count ? sts[i].rcpt_count : 1);
		if (!m->rst) {
			rc = -ENOMEM;
			break;
		}
		memcpy(m->rst, sts[i].rcpt_state, sts[i].rcpt_count);
		m->st.rcpt_state = m->rst;
		live += m->st.size;
		k++;
	}
	for (int i = 0; i < n; i++)
		free(snaps[i]);
	c->n = k;
	if (!rc && !k)
		rc = -EBUSY;
	/*
	 * Worth it when the segment is mostly dead (its space comes back), or when its live
	 * messages keep other segments by their records (retries of a long-deferred message land
	 * in every later segment: moving it with its summary lets them go; the chain of issue 15).
	 * live bytes of all its live messages, estimated from the ones given.
	 */
	if (!rc) {
		uint64_t est = live * pk.live / k;
		if (est * 100 > (uint64_t)c->cfg.live_max_pct * c->cfg.segment_size && pk.refs < 2 * pk.live)
			rc = -E2BIG;
	}
	for (unsigned i = 0; i < k && !rc; i++) {
		struct cmove *m = &c->mv[i];
		rc = spool_reclaim_msg_moving(c->r, m->id);
		m->moving = rc >= 0;
		if (rc == 1) {
			/* Kept by its AT_RISK record: the copy gets a fresh one, the set's fingerprint. */
			m->kept = true;
			rc = c->ops.gap ? c->ops.gap(c->ctx, m->id, &m->gap) : -ENOENT;
			if (rc)
				rc = -ENOKEY; /* not in the set (it was full): waits for its window's end */
		}
	}
	if (rc) {
		for (unsigned i = 0; i < c->n; i++)
			if (c->mv[i].moving) {
				spool_reclaim_msg_moved(c->r, c->mv[i].id, false);
				c->mv[i].moving = false;
			}
		/* Too live: again when it has aged once more; busy or unknown: soon. */
		spool_reclaim_compact_defer(c->r, c->lane_no, seq,
					    now + (rc == -E2BIG || rc == -ENOKEY
							   ? DS_MAX(c->cfg.age_us, 16 * c->cfg.pick_every_us)
							   : 4 * c->cfg.pick_every_us));
		c->st.skipped++;
		round_clear(c);
		return false;
	}
	c->active = true;
	c->seq = seq;
	c->whole = k == pk.live;
	c->cur = 0;
	c->st.rounds++;
	return true;
}

/* The summary outcome record: every recipient's state as the owner folded it. */
static int stage_summary(struct spool_compact *c, struct cmove *m, int64_t now)
{
	struct spool_outcome_rcpt e[64], *rc = e;
	struct spool_outcome o = {.id = m->id,
				  .attempt = m->st.attempts ? m->st.attempts : 1,
				  .at_us = now,
				  .next_attempt_us = m->st.due_us,
				  .hop = ""};
	int ret;

	if (m->st.rcpt_count > 64) {
		rc = calloc(m->st.rcpt_count, sizeof(*rc));
		if (!rc)
			return -ENOMEM;
	}
	for (uint32_t i = 0; i < m->st.rcpt_count; i++) {
		uint8_t s = m->rst[i];
		if (s == SPOOL_RCPT_PENDING || s > SPOOL_RCPT_FAILED)
			continue;
		/* FAILED: its DSN is durable already (the owner learned FAILED from durable records). */
		rc[o.rcpt_count++] = (struct spool_outcome_rcpt){.idx = i, .state = s, .esc = "", .text = ""};
	}
	o.rcpt = rc;
	ret = 1; /* nothing to say: every recipient PENDING */
	if (o.rcpt_count) {
		size_t len = spool_outcome_size(&o);
		uint8_t *p = len ? malloc(len) : NULL;
		if (!p) {
			ret = -ENOMEM;
		} else {
			uint32_t flags = SPOOL_OUTCOME_F_SUMMARY;
			spool_outcome_encode(p, &o);
			memcpy(p + 4, &flags, 4);
			ret = spool_lane_record(c->l, SPOOL_REC_OUTCOME, m->id, p, (uint32_t)len,
						cookie(c, CK_SUMMARY, (unsigned)(m - c->mv)));
			free(p);
		}
	}
	if (rc != e)
		free(rc);
	return ret;
}

/* Stage what fits of message m; false when the lane has no room now (try next step). */
static bool stage(struct spool_compact *c, struct cmove *m, int64_t now, uint64_t *budget, bool *staged)
{
	int rc;

	switch (m->phase) {
	case CM_SUMMARY:
		/* The copy first, its summary after it: every record the table keeps for it points forward.
		 */
		m->phase = CM_BEGIN;
		/* fall through */
	case CM_BEGIN:
		rc = spool_fetch_get(c->fetch, c->lane_no, m->st.seq, m->st.off, m->id, &m->fm);
		if (rc == -EMFILE)
			return false;
		if (rc) {
			mv_fail(c, m);
			return true;
		}
		m->fetched = true;
		rc = spool_txn_begin_moved(c->l, &m->t, m->id);
		if (rc) {
			mv_fail(c, m);
			return true;
		}
		m->txn_open = true;
		m->phase = CM_BODY;
		/* fall through */
	case CM_BODY:
		while (m->body_off < m->fm.m.size) {
			size_t room = spool_lane_append_room(c->l), n;
			ssize_t got;
			if (!*budget || !room)
				return false;
			n = (size_t)DS_MIN(DS_MIN((uint64_t)room, *budget),
					   DS_MIN((uint64_t)c->cfg.step_bytes, m->fm.m.size - m->body_off));
			got = spool_fetch_read(c->fetch, &m->fm, m->body_off, c->buf, n);
			if (got == -EMFILE)
				return false;
			if (got <= 0) {
				mv_fail(c, m); /* damaged (CRC) or gone: the old copy stays the message */
				return true;
			}
			rc = spool_txn_append(c->l, &m->t, c->buf, (size_t)got);
			if (rc) {
				/* append_room promised it: only a lane error gets here */
				mv_fail(c, m);
				return true;
			}
			m->body_off += (uint64_t)got;
			*budget -= DS_MIN(*budget, (uint64_t)got);
			*staged = true;
		}
		m->phase = CM_COMMIT;
		/* fall through */
	case CM_COMMIT:
		rc = spool_txn_commit_moved(c->l, &m->t, &m->fm.m.env,
					    cookie(c, CK_COMMIT, (unsigned)(m - c->mv)));
		if (rc == -EAGAIN)
			return false;
		if (rc) {
			m->txn_open = false; /* closed by the failed commit */
			mv_fail(c, m);
			return true;
		}
		m->txn_open = false;
		m->commit_taken = true;
		spool_txn_location(&m->t, &m->new_seq, &m->new_off);
		spool_fetch_put(c->fetch, &m->fm);
		m->fetched = false;
		c->bytes += m->st.size;
		*staged = true;
		m->phase = CM_SUMMARY_REC;
		/* fall through */
	case CM_SUMMARY_REC:
		rc = stage_summary(c, m, now);
		if (rc == -EAGAIN)
			return false;
		if (rc < 0) {
			/* The copy may become durable: a duplicate the move never commits (finish). */
			m->sum_taken = m->sum_settled = true;
			m->sum_res = rc;
		} else {
			m->sum_taken = rc == 0;
			*staged |= rc == 0;
		}
		m->phase = CM_GAP_REC;
		/* fall through */
	case CM_GAP_REC:
		if (m->kept) {
			/* After the summary: the copy's AT_RISK record, same window, the copy's location. */
			struct spool_gap_rec g = m->gap;
			g.kind = SPOOL_GAP_REC_AT_RISK;
			g.fp.lane = c->lane_no;
			g.fp.seq = m->new_seq;
			g.fp.off = m->new_off;
			rc = spool_lane_gap(c->l, &g, cookie(c, CK_GAP, (unsigned)(m - c->mv)));
			if (rc == -EAGAIN)
				return false;
			m->gap_taken = true;
			if (rc) {
				m->gap_settled = true; /* the move never commits (finish) */
				m->gap_res = rc;
			}
			*staged |= rc == 0;
		}
		m->phase = CM_WAIT;
		return true;
	default:
		return true;
	}
}

/* Every copy of the round is settled: relocate, commit the moves, write the MOVED records. */
static bool finish(struct spool_compact *c, bool *staged)
{
	bool all = true;
	uint32_t moved = 0;

	for (unsigned i = 0; i < c->n; i++) {
		struct cmove *m = &c->mv[i];
		if (m->phase == CM_WAIT) {
			if ((m->sum_taken && !m->sum_settled) || !m->commit_settled ||
			    (m->gap_taken && !m->gap_settled))
				return false;
			if (m->commit_res || (m->sum_taken && m->sum_res) ||
			    (m->kept && (!m->gap_taken || m->gap_res))) {
				mv_fail(c, m);
				continue;
			}
			/* Deliveries read the copy first: the table may let the old one go right after. */
			c->ops.moved(c->ctx, m->id, m->new_seq, m->new_off);
			m->moving = false;
			if (spool_reclaim_msg_moved(c->r, m->id, true)) {
				m->phase = CM_FAILED;
				c->st.failed++;
				continue;
			}
			spool_reclaim_msg_relocated(c->r, m->id, m->new_seq, m->new_off);
			m->phase = CM_MOVED_REC;
		}
		if (m->phase == CM_MOVED_REC) {
			uint8_t p[SPOOL_MOVED_SIZE];
			spool_moved_encode(p, &(struct spool_moved){.lane = c->lane_no,
								    .dead_seq = m->st.seq,
								    .dead_off = m->st.off,
								    .seq = m->new_seq,
								    .off = m->new_off});
			int rc = spool_lane_record(c->l, SPOOL_REC_MOVED, m->id, p, SPOOL_MOVED_SIZE,
						   cookie(c, CK_MOVED, i));
			if (rc == -EAGAIN)
				return false; /* next step */
			*staged |= rc == 0;
			m->phase = CM_DONE;
			c->st.messages++;
			c->st.kept += m->kept;
		}
		moved += m->phase == CM_DONE;
		all &= m->phase == CM_DONE;
	}
	if (all) {
		/* A segment counts once all its live messages left (a big one takes several rounds). */
		c->st.segments += c->whole;
		c->st.bytes += c->bytes;
		spool_reclaim_count_compacted(c->r, c->whole, moved, c->bytes);
		if (c->ops.done && c->whole)
			c->ops.done(c->ctx, c->seq, moved, c->bytes);
	} else {
		c->st.skipped++;
		spool_reclaim_compact_defer(c->r, c->lane_no, c->seq,
					    c->next_pick_us + 4 * c->cfg.pick_every_us);
	}
	round_clear(c);
	return true;
}

bool spool_compact_step(struct spool_compact *c, int64_t now_us)
{
	uint64_t budget = c->cfg.step_bytes;
	bool staged = false;

	if (!c->active) {
		if (c->stopping || c->cfg.age_us <= 0 || now_us < c->next_pick_us || !pick(c, now_us))
			return false;
	}
	while (c->cur < c->n && stage(c, &c->mv[c->cur], now_us, &budget, &staged)) {
		if (c->mv[c->cur].phase >= CM_WAIT)
			c->cur++;
	}
	if (c->cur == c->n)
		finish(c, &staged);
	return staged;
}
