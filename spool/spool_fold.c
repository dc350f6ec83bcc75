/* SPDX-License-Identifier: MIT */
/*
 * The whole spool with its delivery state (spool_scan_spool, spool_scan.h).
 *
 * Outcome and abort records (format 2) name a message by id and may lie in
 * any lane, before or after its commit (a worker drains other lanes'
 * messages after a restart with fewer threads; a DSN is a message of its
 * own). So nothing is handed out while lanes are scanned: every lane is
 * scanned first (the commits' locations, the intact delivery records
 * collected; bad regions and segments reported as they come), then a hash
 * of the commits by id, sized from the scan, applies the aborts and folds
 * the outcomes (the rule in spool.h, order-independent: a maximum per
 * recipient), and only then is each commit handed out, in lane then commit
 * order, decoded again from its map. Recovery, list, verify and stats all
 * go through here, so they agree on what is a message.
 *
 * Memory: per commit about 48 bytes, per outcome record about 80, per
 * recipient of a message with outcome records 24; the maps stay mapped
 * (the reader's) so records are referenced in place, never copied.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "ds_grow.h"
#include "spool_compact.h"
#include "spool_scan.h"

#define FOLD_NONE UINT32_MAX

struct fmsg {
	uint64_t id;
	uint64_t seq, off; /* its commit record */
	uint64_t size;	   /* body bytes */
	int64_t received_at_us;
	uint32_t lane_idx;   /* in r->lanes */
	uint32_t rcpt_count; /* from the envelope */
	uint32_t fold;	     /* first of rcpt_count entries in folds[]; FOLD_NONE: no outcome applies */
	uint32_t attempts;   /* highest attempt number of the records applied */
	uint32_t outcome_recs;
	uint8_t kept;	 /* whole body there */
	uint8_t durable; /* not kept: the commit was below its segment's watermark */
	uint8_t aborted; /* an abort record names it */
	uint8_t dead;	 /* a MOVED record names this copy (format 3): another copy is the message */
	/* Operator records (format 3): deleted, bounced; the winning HOLD/RELEASE and last RETRY. */
	uint8_t deleted, bounced;
	uint32_t hold_op, retry_op; /* index in opref; FOLD_NONE: none */
};

/* One operator record (type 6): where it lies orders HOLD/RELEASE records of equal time. */
struct opref {
	uint64_t id;
	int64_t at_us;
	uint64_t seq, off;
	uint32_t lane;
	uint32_t action;
};

/* One intact outcome record, decoded once (its entries validated by the decode). */
struct oref {
	uint64_t id;
	struct spool_outcome_iter it; /* its first entry */
	const char *hop;
	int64_t at_us, next_attempt_us;
	uint64_t dsn_id;
	uint32_t attempt;
};

/* A recipient's winning entry so far. */
struct rfold {
	const uint8_t *entry; /* in its record's payload; NULL: none (PENDING) */
	uint32_t rec;	      /* its record, index in orefs */
	uint32_t attempt;
	uint8_t state;
};

struct fold {
	struct spool_reader *r;
	const struct scan_cfg *user;
	unsigned lane_idx;
	struct fmsg *msgs;
	size_t nmsgs, capmsgs;
	struct oref *orefs;
	size_t norefs, caporefs;
	uint64_t *aborts;
	size_t naborts, capaborts;
	struct spool_moved *moved; /* MOVED records (format 3): copies that are dead */
	size_t nmoved, capmoved;
	struct opref *ops;
	size_t nops, capops;
	uint32_t *hash; /* index + 1 into msgs, 0 = empty */
	uint64_t hmask;
	struct rfold *folds;
	size_t nfolds, capfolds;
	struct spool_rcpt_status *st; /* SPOOL_RCPT_MAX, for msg_status */
	struct spool_scan_totals tot;
	int err;
};

/* ---- phase 1: the scan ---- */

static int commit_add(struct fold *f, const struct spool_msg *m, bool kept, bool durable)
{
	struct fmsg *nm;

	if (f->nmsgs >= FOLD_NONE - 1u)
		return f->err = -ENOMEM; /* the hash keeps 32-bit indices */
	nm = ds_grow(f->msgs, &f->capmsgs, f->nmsgs, sizeof(*nm), 1024);
	if (!nm)
		return f->err = -ENOMEM;
	f->msgs = nm;
	f->msgs[f->nmsgs++] = (struct fmsg){.id = m->id,
					    .seq = m->seq,
					    .off = m->off,
					    .size = m->size,
					    .received_at_us = m->received_at_us,
					    .lane_idx = f->lane_idx,
					    .rcpt_count = m->env.rcpt_count,
					    .fold = FOLD_NONE,
					    .hold_op = FOLD_NONE,
					    .retry_op = FOLD_NONE,
					    .kept = kept,
					    .durable = durable};
	return 0;
}

static int f_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	return commit_add(ctx, m, true, false);
}

static void f_dropped(void *ctx, struct rlane *rl, const struct spool_msg *m, bool durable)
{
	commit_add(ctx, m, false, durable);
}

static void f_bad(void *ctx, struct rlane *rl, struct rseg *s, uint64_t from, uint64_t to, bool tail,
		  bool zero, bool durable)
{
	struct fold *f = ctx;

	if (f->user->bad)
		f->user->bad(f->user->ctx, rl, s, from, to, tail, zero, durable);
}

static void f_seg(void *ctx, struct rlane *rl, struct rseg *s)
{
	struct fold *f = ctx;

	if (f->user->seg)
		f->user->seg(f->user->ctx, rl, s);
}

static void f_delivery(void *ctx, struct rlane *rl, struct rseg *s, const struct spool_rec *rec)
{
	struct fold *f = ctx;

	/* The caller's own look at every outcome and abort record (spool_reclaim_load). */
	if (f->user->delivery)
		f->user->delivery(f->user->ctx, rl, s, rec);
	if (rec->type == SPOOL_REC_MOVED) {
		struct spool_moved mv, *nm;

		if (spool_moved_decode(rec->payload, rec->len, &mv))
			return;
		nm = ds_grow(f->moved, &f->capmoved, f->nmoved, sizeof(*nm), 64);
		if (!nm) {
			f->err = -ENOMEM;
			return;
		}
		f->moved = nm;
		f->moved[f->nmoved++] = mv;
		return;
	}
	if (rec->type == SPOOL_REC_ABORT) {
		struct spool_abort a;
		uint64_t *na;

		if (spool_abort_decode(rec->payload, rec->len, &a))
			return;
		na = ds_grow(f->aborts, &f->capaborts, f->naborts, sizeof(*na), 64);
		if (!na) {
			f->err = -ENOMEM;
			return;
		}
		f->aborts = na;
		f->aborts[f->naborts++] = rec->txn_id;
		f->tot.aborts++;
		return;
	}
	if (rec->type == SPOOL_REC_OPERATOR) {
		struct spool_op_fixed op;
		struct opref *np;

		if (spool_op_fixed_decode(rec->payload, rec->len, &op))
			return;
		np = ds_grow(f->ops, &f->capops, f->nops, sizeof(*np), 64);
		if (!np) {
			f->err = -ENOMEM;
			return;
		}
		f->ops = np;
		f->ops[f->nops++] = (struct opref){.id = rec->txn_id,
						   .at_us = op.at_us,
						   .seq = s->seq,
						   .off = rec->off,
						   .lane = rl->lane,
						   .action = op.action};
		return;
	}
	if (rec->type == SPOOL_REC_OUTCOME) {
		struct spool_outcome o;
		struct spool_outcome_iter it;
		struct oref *no;

		/* A record that does not decode exactly is not valid, CRC or not (FORMAT.md). */
		if (spool_outcome_decode(rec->payload, rec->len, &o, &it)) {
			f->tot.outcomes_bad++;
			return;
		}
		no = ds_grow(f->orefs, &f->caporefs, f->norefs, sizeof(*no), 256);
		if (!no) {
			f->err = -ENOMEM;
			return;
		}
		f->orefs = no;
		f->orefs[f->norefs++] = (struct oref){.id = rec->txn_id,
						      .it = it,
						      .hop = o.hop,
						      .at_us = o.at_us,
						      .next_attempt_us = o.next_attempt_us,
						      .dsn_id = o.dsn_id,
						      .attempt = o.attempt};
		f->tot.outcomes++;
	}
}

/* ---- phase 2: the hash, aborts, the fold ---- */

static uint64_t id_hash(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

/*
 * Which copy of an id is the message (FORMAT.md, "Moved records"): a copy
 * with its whole body beats one without; then a copy no MOVED record names
 * beats a named one; then the first in lane, segment, offset order.
 */
static unsigned copy_rank(const struct fmsg *m)
{
	return (unsigned)m->kept * 2 + !m->dead;
}

static int hash_build(struct fold *f)
{
	uint64_t cap = 16;

	while (cap < 2 * (uint64_t)f->nmsgs)
		cap *= 2;
	f->hash = calloc(cap, sizeof(*f->hash));
	if (!f->hash)
		return -ENOMEM;
	f->hmask = cap - 1;
	for (size_t i = 0; i < f->nmsgs; i++) {
		uint64_t h = id_hash(f->msgs[i].id) & f->hmask;

		for (; f->hash[h]; h = (h + 1) & f->hmask)
			if (f->msgs[f->hash[h] - 1].id == f->msgs[i].id)
				break; /* the same id twice: copies of compaction (format 3) */
		if (!f->hash[h] || copy_rank(&f->msgs[i]) > copy_rank(&f->msgs[f->hash[h] - 1]))
			f->hash[h] = (uint32_t)i + 1;
	}
	return 0;
}

/* Copies MOVED records name are dead (their id's other copy is the message). */
static void moved_apply(struct fold *f)
{
	for (size_t k = 0; k < f->nmoved; k++) {
		const struct spool_moved *mv = &f->moved[k];
		for (size_t i = 0; i < f->nmsgs; i++) {
			struct fmsg *m = &f->msgs[i];
			if (m->seq == mv->dead_seq && m->off == mv->dead_off &&
			    f->r->lanes[m->lane_idx].lane == mv->lane)
				m->dead = 1;
		}
	}
}

/* Not the copy of its id that is the message: handed out to nobody. */
static bool copy_other(const struct fold *f, const struct fmsg *fm)
{
	for (uint64_t h = id_hash(fm->id) & f->hmask; f->hash[h]; h = (h + 1) & f->hmask)
		if (f->msgs[f->hash[h] - 1].id == fm->id)
			return &f->msgs[f->hash[h] - 1] != fm;
	return false;
}

static struct fmsg *msg_find(const struct fold *f, uint64_t id)
{
	for (uint64_t h = id_hash(id) & f->hmask; f->hash[h]; h = (h + 1) & f->hmask)
		if (f->msgs[f->hash[h] - 1].id == id)
			return &f->msgs[f->hash[h] - 1];
	return NULL;
}

/* A message a DSN id may name: its body all there, not refused. */
static bool msg_durable(const struct fold *f, uint64_t id)
{
	const struct fmsg *m = msg_find(f, id);

	return m && m->kept && !m->aborted;
}

/*
 * The fold rule's order: a final state (DELIVERED, FAILED) beats anything
 * else, then the higher attempt number, then an outcome beats an ATTEMPT.
 */
static uint64_t fold_key(uint8_t state, uint32_t attempt)
{
	return (uint64_t)SPOOL_RCPT_STATE_FINAL(state) << 40 | (uint64_t)attempt << 1 |
	       (state != SPOOL_RCPT_ATTEMPT);
}

static int fold_record(struct fold *f, uint32_t ri)
{
	const struct oref *o = &f->orefs[ri];
	struct fmsg *m = msg_find(f, o->id);
	struct spool_outcome_iter it = o->it;
	struct spool_outcome_rcpt e;
	bool dsn_ok;

	if (!m || !m->kept || m->aborted) {
		f->tot.outcomes_lost++; /* reclaimed, refused, or its commit never made it */
		/*
		 * A durable commit without its body is still folded when a caller asks
		 * (verify): a final message whose chunk segment was reclaimed first is the
		 * documented intermediate state of reclamation, not damage.
		 */
		if (!m || m->aborted || m->kept || !m->durable || !f->user->dropped_final)
			return 0;
	}
	m->outcome_recs++;
	m->attempts = DS_MAX(m->attempts, o->attempt);
	if (!m->rcpt_count)
		return 0;
	if (m->fold == FOLD_NONE) {
		struct rfold *nf;

		/* Grow to hold this message's recipients, then claim them. */
		while (f->capfolds - f->nfolds < m->rcpt_count) {
			nf = ds_grow(f->folds, &f->capfolds, f->capfolds, sizeof(*nf), 1024);
			if (!nf)
				return -ENOMEM;
			f->folds = nf;
		}
		if ((uint64_t)f->nfolds >= FOLD_NONE)
			return -ENOMEM;
		memset(&f->folds[f->nfolds], 0, m->rcpt_count * sizeof(*f->folds));
		m->fold = (uint32_t)f->nfolds;
		f->nfolds += m->rcpt_count;
	}
	/* FAILED without its DSN durable does not count: tried again, failed again, with a DSN. */
	dsn_ok = !o->dsn_id || msg_durable(f, o->dsn_id);
	for (;;) {
		const uint8_t *at = it.p;
		struct rfold *rf;

		if (!spool_outcome_entry_next(&it, &e))
			break;
		if (e.idx >= m->rcpt_count || (e.state == SPOOL_RCPT_FAILED && !dsn_ok))
			continue;
		rf = &f->folds[m->fold + e.idx];
		if (rf->entry) {
			uint64_t kn = fold_key(e.state, o->attempt), kc = fold_key(rf->state, rf->attempt);
			/* Equal keys (the same attempt recorded twice): the later record. */
			if (kn < kc || (kn == kc && o->at_us <= f->orefs[rf->rec].at_us))
				continue;
		}
		*rf = (struct rfold){.entry = at, .rec = ri, .attempt = o->attempt, .state = e.state};
	}
	return 0;
}

/* Record order of operator records: time, then lane, segment, offset (FORMAT.md). */
static bool op_later(const struct opref *a, const struct opref *b)
{
	if (a->at_us != b->at_us)
		return a->at_us > b->at_us;
	if (a->lane != b->lane)
		return a->lane > b->lane;
	if (a->seq != b->seq)
		return a->seq > b->seq;
	return a->off > b->off;
}

static void fold_operator(struct fold *f, uint32_t oi)
{
	const struct opref *o = &f->ops[oi];
	struct fmsg *m = msg_find(f, o->id);

	if (!m || !m->kept || m->aborted)
		return;
	switch (o->action) {
	case SPOOL_OP_DELETE:
		m->deleted = 1;
		break;
	case SPOOL_OP_BOUNCE:
		m->bounced = 1;
		break;
	case SPOOL_OP_RETRY:
		if (m->retry_op == FOLD_NONE || op_later(o, &f->ops[m->retry_op]))
			m->retry_op = oi;
		break;
	default: /* HOLD, RELEASE: the last one wins */
		if (m->hold_op == FOLD_NONE || op_later(o, &f->ops[m->hold_op]))
			m->hold_op = oi;
	}
}

/* ---- phase 3: hand out ---- */

static void status_make(struct fold *f, const struct fmsg *fm, struct spool_msg_status *st)
{
	bool due_now = false;
	int64_t next = INT64_MAX;
	uint64_t dsn_key = 0;

	memset(st, 0, sizeof(*st));
	st->rcpt_count = fm->rcpt_count;
	st->rcpt = f->st;
	st->attempts = fm->attempts;
	st->outcome_records = fm->outcome_recs;
	for (uint32_t i = 0; i < fm->rcpt_count; i++) {
		struct spool_rcpt_status *rs = &f->st[i];
		const struct rfold *rf = fm->fold == FOLD_NONE ? NULL : &f->folds[fm->fold + i];

		*rs = (struct spool_rcpt_status){
			.state = SPOOL_RCPT_PENDING, .esc = "", .text = "", .hop = ""};
		if (rf && rf->entry) {
			const struct oref *o = &f->orefs[rf->rec];
			struct spool_outcome_iter it = {.p = rf->entry, .end = o->it.end, .left = 1};
			struct spool_outcome_rcpt e;

			DS_ASSERT(spool_outcome_entry_next(&it, &e) == 1 && e.state == rf->state);
			rs->state = rf->state;
			rs->possible_duplicate = e.possible_duplicate;
			rs->code = e.code;
			rs->attempt = rf->attempt;
			rs->esc = e.esc;
			rs->text = e.text;
			rs->hop = o->hop;
			rs->at_us = o->at_us;
			rs->next_attempt_us = o->next_attempt_us;
			if (rs->state == SPOOL_RCPT_FAILED && o->dsn_id) {
				uint64_t k = (uint64_t)rf->attempt << 32 | 1;
				rs->dsn_id = o->dsn_id;
				if (k >= dsn_key) {
					dsn_key = k;
					st->dsn_id = o->dsn_id;
				}
			}
		}
		switch (rs->state) {
		case SPOOL_RCPT_DELIVERED:
		case SPOOL_RCPT_FAILED:
			st->final_rcpts++;
			break;
		case SPOOL_RCPT_ATTEMPT:
			st->in_flight = true;
			due_now = true;
			break;
		case SPOOL_RCPT_DEFERRED:
			next = DS_MIN(next, rs->next_attempt_us);
			break;
		default:
			due_now = true;
		}
	}
	st->done = st->final_rcpts == st->rcpt_count;
	/*
	 * A RETRY, or the RELEASE that ended a hold, newer than every record
	 * that deferred a recipient makes it due now (as it was in the run
	 * that recorded it).
	 */
	int64_t nudge_us = INT64_MIN;
	if (fm->retry_op != FOLD_NONE)
		nudge_us = f->ops[fm->retry_op].at_us;
	if (fm->hold_op != FOLD_NONE && f->ops[fm->hold_op].action == SPOOL_OP_RELEASE)
		nudge_us = DS_MAX(nudge_us, f->ops[fm->hold_op].at_us);
	if (nudge_us != INT64_MIN && next != INT64_MAX) {
		bool newer = true;
		for (uint32_t i = 0; i < fm->rcpt_count && newer; i++)
			if (f->st[i].state == SPOOL_RCPT_DEFERRED && f->st[i].at_us > nudge_us)
				newer = false;
		if (newer)
			due_now = true;
	}
	st->held = fm->hold_op != FOLD_NONE && f->ops[fm->hold_op].action == SPOOL_OP_HOLD;
	st->bounced = fm->bounced;
	/* DELETE is final: never delivered, no DSN, whatever its recipients say. */
	st->deleted = fm->deleted;
	if (fm->deleted)
		st->done = true;
	st->next_attempt_us = st->done || due_now || next == INT64_MAX ? 0 : next;
}

static int hand_out(struct fold *f)
{
	const struct scan_cfg *u = f->user;

	for (size_t i = 0; i < f->nmsgs; i++) {
		const struct fmsg *fm = &f->msgs[i];
		struct rlane *rl = &f->r->lanes[fm->lane_idx];
		struct rseg *s = spool_scan_seg_find(rl, fm->seq);
		struct spool_msg m;
		int rc = 0;

		if (copy_other(f, fm)) {
			f->tot.copies++;
			continue;
		}
		if (u->no_env) {
			m = (struct spool_msg){.id = fm->id,
					       .lane = rl->lane,
					       .seq = fm->seq,
					       .off = fm->off,
					       .size = fm->size,
					       .received_at_us = fm->received_at_us};
			m.env.rcpt_count = fm->rcpt_count;
		} else if (!s || spool_scan_commit_msg(f->r, rl, s, fm->off, &m) || m.id != fm->id) {
			continue; /* the map has not changed since the scan: never taken */
		}
		if (fm->aborted) {
			if (u->aborted)
				u->aborted(u->ctx, rl, &m, fm->kept);
			continue;
		}
		if (!fm->kept) {
			if (u->dropped_final && fm->durable) {
				struct spool_msg_status st;
				status_make(f, fm, &st);
				if (st.done && u->dropped_final(u->ctx, rl, &m))
					continue;
			}
			if (u->dropped)
				u->dropped(u->ctx, rl, &m, fm->durable);
			continue;
		}
		if (u->msg)
			rc = u->msg(u->ctx, rl, &m);
		if (!rc && u->msg_status) {
			struct spool_msg_status st;
			status_make(f, fm, &st);
			rc = u->msg_status(u->ctx, rl, &m, &st);
		}
		if (rc)
			return rc;
	}
	return 0;
}

int spool_scan_spool(struct spool_reader *r, const struct scan_cfg *cfg, struct spool_scan_totals *tot)
{
	struct fold *f = calloc(1, sizeof(*f));
	struct scan_cfg sc = {.check_all_bodies = cfg->check_all_bodies,
			      .msg = f_msg,
			      .dropped = f_dropped,
			      .bad = f_bad,
			      .seg = f_seg,
			      .delivery = f_delivery};
	int rc = 0;

	if (!f)
		return -ENOMEM;
	f->r = r;
	f->user = cfg;
	sc.ctx = f;
	spool_scan_reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes && !rc; i++) {
		f->lane_idx = i;
		rc = spool_scan_lane(r, &r->lanes[i], &sc);
		if (!rc)
			rc = f->err;
	}
	if (!rc && f->nmoved)
		moved_apply(f);
	if (!rc)
		rc = hash_build(f);
	for (size_t i = 0; i < f->naborts && !rc; i++) {
		struct fmsg *m = msg_find(f, f->aborts[i]);
		if (m)
			m->aborted = 1;
	}
	for (size_t i = 0; i < f->norefs && !rc; i++)
		rc = fold_record(f, (uint32_t)i);
	for (size_t i = 0; i < f->nops && !rc; i++)
		fold_operator(f, (uint32_t)i);
	if (!rc && (cfg->msg_status || cfg->dropped_final)) {
		f->st = calloc(SPOOL_RCPT_MAX, sizeof(*f->st));
		if (!f->st)
			rc = -ENOMEM;
	}
	f->tot.commits = f->nmsgs;
	if (!rc)
		rc = hand_out(f);
	if (tot)
		*tot = f->tot;
	free(f->st);
	free(f->folds);
	free(f->hash);
	free(f->aborts);
	free(f->moved);
	free(f->ops);
	free(f->orefs);
	free(f->msgs);
	free(f);
	return rc;
}
