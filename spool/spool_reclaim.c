/* SPDX-License-Identifier: MIT */
/*
 * Segment reclamation: the table of which segment holds what about which
 * message, and the unlinking. The rule and its safety argument:
 * spool_reclaim.h and FORMAT.md, "Reclamation".
 *
 * Entries live in two pools addressed by index (indices stay valid when a
 * pool grows); chained hashes find messages by id and segments by
 * (lane, seq). A message's refs are the indices of the segments of H(M).
 */
#include "spool_reclaim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_sort.h"
#include "spool_format.h"
#include "spool_scan.h"
#include "spool_sum.h"
#include "spool_segment.h"

#define NIL	      UINT32_MAX
#define RECLAIM_BATCH 64 /* segments unlinked per pass before the table is looked at again */

struct rc_seg {
	uint64_t key;	      /* lane << 40 | seq */
	uint32_t hnext, msgs; /* hash chain; messages whose commit is here (list through rc_msg.snext) */
	uint32_t nonfinal, waiting;
	uint64_t bytes;
	int64_t created_us;	 /* compaction: how old it is (header's creation time, or when first seen) */
	int64_t compact_next_us; /* compaction: not looked at again before */
	bool used, known, sealed, pinned, reclaiming;
};

struct rc_msg {
	uint64_t id;
	uint32_t hnext, snext;
	uint32_t cseg;	   /* C(M) */
	uint64_t chunk_lo; /* chunks lie in chunk_lo .. C(M) of its lane (0: none before C(M)) */
	uint32_t nref, cap;
	uint32_t *ref;	       /* H(M), without C(M), no duplicates */
	int64_t keep_until_us; /* gap window (spool_reclaim_msg_keep): not final before */
	bool used, final, dsn_lost;
	bool final_wanted; /* final by its records, held back by keep_until_us or a move */
	/*
	 * Compaction (spool_reclaim_msg_moving): a copy is being written. Refs
	 * ref[mark, nref) were registered since the move began (records the copy's
	 * summary does not cover: they stay); new_cseg/new_chunk_lo: the copy's
	 * commit segment once durable (NIL before), protected like C(M) until the
	 * move is committed.
	 */
	bool moving;
	uint32_t mark, new_cseg;
	uint64_t new_chunk_lo;
	/*
	 * Segments of records a move does not replace (operator, gap: their
	 * owners fold them, the summary does not restate them): kept in H(M)
	 * across moves; keep_cseg: one of them lies in C(M) itself. Each entry
	 * and keep_cseg carry KEEP_OP / KEEP_GAP: which kind of record it is (a
	 * move that writes a fresh AT_RISK record lets the old gap records go).
	 */
	uint32_t *keep, nkeep, capkeep;
	uint32_t keep_cseg;
	/*
	 * Gap dedup (issue 16): gap_rec: a durable, not cleared AT_RISK record
	 * keeps it (not only the provisional keep of an unconfirmed 250); only
	 * such a message is moved while kept. move_gap: this move writes a fresh
	 * AT_RISK record for the copy (it commits only once that one is
	 * registered: gap_since_move). snap: the final state of a kept message
	 * whose delivery is over (the owner's queue forgot it), what the copy's
	 * summary restates.
	 */
	bool gap_rec, move_gap, gap_since_move;
	struct rc_snap *snap;
};

#define KEEP_OP	 (1u << 31) /* an operator record lies in the segment */
#define KEEP_GAP (1u << 30) /* a gap record lies in the segment */
#define KEEP_SEG (KEEP_GAP - 1u)

/* The final state of a kept delivered message (spool_reclaim_msg_final_state). */
struct rc_snap {
	uint64_t seq, off, size;
	uint32_t attempts, rcpt_count;
	uint8_t st[]; /* rcpt_count x enum spool_rcpt_state */
};

struct spool_reclaim {
	int64_t keep_max_us; /* a gap keep lasts at most this from when it is set (0: its expiry) */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thr;
	bool started, stop, dirty;
	char dir[PATH_MAX];
	struct spool_reclaim_ops ops;
	void *ops_ctx;

	struct rc_seg *segs;
	uint32_t nsegs, segs_cap, seg_free; /* free list through hnext */
	uint32_t *seg_hash, seg_hash_n;	    /* power of two */
	struct rc_msg *msgs;
	uint32_t nmsgs, msgs_cap, msg_free;
	uint32_t *msg_hash, msg_hash_n;
	uint32_t seg_live, msg_live;

	uint64_t lane_top[SPOOL_LANES_MAX];  /* highest sequence a lane ever had: never reclaimed */
	uint64_t lane_low[SPOOL_LANES_MAX];  /* open txns' chunks may lie here and above */
	uint32_t recycle_max;		     /* free files per lane kept for reuse (0: unlink only) */
	uint32_t lane_free[SPOOL_LANES_MAX]; /* free files per lane (under mu) */
	/*
	 * The lane is open in this process (spool_reclaim_free_set): only then is
	 * there a spare to reuse its free files. A lane no worker opens (a restart
	 * with fewer threads drains it) gets its segments unlinked, as does the
	 * start-up pass before the lanes open.
	 */
	bool lane_recycling[SPOOL_LANES_MAX];

	struct spool_reclaim_stats st;
	uint32_t kept; /* messages with final_wanted set (a pass looks at them only if any) */
	void (*ev_fn)(void *ctx, const struct spool_reclaim_event *ev);
	void *ev_ctx;
};

/* Debugging: DS_RECLAIM_TRACE=ID (hex) prints every change of that message (tests). */
static uint64_t trace_id(void)
{
	static int done;
	static uint64_t id;
	if (!done) {
		const char *e = getenv("DS_RECLAIM_TRACE");
		id = e ? strtoull(e, NULL, 16) : 0;
		done = 1;
	}
	return id;
}
#define TRACE(r, m, fmt, ...)                                                                                \
	do {                                                                                                 \
		if (trace_id() && (m)->id == trace_id())                                                     \
			fprintf(stderr, "trace %016llx C %llu: " fmt "\n", (unsigned long long)(m)->id,      \
				(unsigned long long)((r)->segs[(m)->cseg].key & ((1ull << 40) - 1)),         \
				__VA_ARGS__);                                                                \
	} while (0)

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * A gap keep (the at-risk message's stored copy, for the retry's byte
 * compare) is bounded by keep_max_us when the operator asks for it
 * (--gap-dedup-keep-s; default 0: the record's expiry, the window).
 * Compaction carries kept messages forward (FORMAT.md, "Kept messages and
 * compaction"), so a kept message no longer pins its segment.
 */
static int64_t keep_cap(const struct spool_reclaim *r, int64_t expires_us, int64_t now_us)
{
	if (r->keep_max_us > 0 && expires_us > now_us + r->keep_max_us)
		return now_us + r->keep_max_us;
	return expires_us;
}

static int sys_unlink(void *ctx, const char *path)
{
	(void)ctx;
	/* Its seal summary first (format 4): a crash between the two leaves no orphan. */
	spool_sum_unlink_for(path);
	return unlink(path) ? -errno : 0;
}

static int sys_rename(void *ctx, const char *from, const char *to)
{
	(void)ctx;
	/* As sys_unlink: the summary goes first, it describes the segment being retired. */
	spool_sum_unlink_for(from);
	return rename(from, to) ? -errno : 0;
}

static int sys_fsync_dir(void *ctx, const char *path)
{
	(void)ctx;
	return spool_fsync_dir(path);
}

static uint64_t seg_key(unsigned lane, uint64_t seq)
{
	return (uint64_t)lane << 40 | seq;
}

static uint32_t hash64(uint64_t k, uint32_t n)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (uint32_t)k & (n - 1);
}

/* ---- pools and hashes ---- */

static int grow(void **p, uint32_t *cap, size_t elem)
{
	uint32_t ncap = *cap ? *cap * 2 : 1024;
	void *np;

	if (*cap >= (1u << 30))
		return -ENOMEM;
	np = realloc(*p, (size_t)ncap * elem);
	if (!np)
		return -ENOMEM;
	memset((char *)np + (size_t)*cap * elem, 0, (size_t)(ncap - *cap) * elem);
	*p = np;
	*cap = ncap;
	return 0;
}

/* Hash heads for n live entries; chains rebuilt from the pool. */
static uint32_t *hash_new(uint32_t *hn, uint32_t want)
{
	uint32_t nn = *hn ? *hn : 1024, *h;

	while (nn < want * 2)
		nn *= 2;
	h = malloc((size_t)nn * sizeof(*h));
	if (!h)
		return NULL;
	memset(h, 0xff, (size_t)nn * sizeof(*h));
	*hn = nn;
	return h;
}

static int seg_rehash(struct spool_reclaim *r, uint32_t want)
{
	uint32_t hn = r->seg_hash_n, *h = hash_new(&hn, want);

	if (!h)
		return -ENOMEM;
	for (uint32_t i = 0; i < r->nsegs; i++) {
		uint32_t b;
		if (!r->segs[i].used)
			continue;
		b = hash64(r->segs[i].key, hn);
		r->segs[i].hnext = h[b];
		h[b] = i;
	}
	free(r->seg_hash);
	r->seg_hash = h;
	r->seg_hash_n = hn;
	return 0;
}

static int msg_rehash(struct spool_reclaim *r, uint32_t want)
{
	uint32_t hn = r->msg_hash_n, *h = hash_new(&hn, want);

	if (!h)
		return -ENOMEM;
	for (uint32_t i = 0; i < r->nmsgs; i++) {
		uint32_t b;
		if (!r->msgs[i].used)
			continue;
		b = hash64(r->msgs[i].id, hn);
		r->msgs[i].hnext = h[b];
		h[b] = i;
	}
	free(r->msg_hash);
	r->msg_hash = h;
	r->msg_hash_n = hn;
	return 0;
}

static uint32_t seg_find(struct spool_reclaim *r, unsigned lane, uint64_t seq)
{
	uint64_t k = seg_key(lane, seq);

	if (!r->seg_hash_n)
		return NIL;
	for (uint32_t i = r->seg_hash[hash64(k, r->seg_hash_n)]; i != NIL; i = r->segs[i].hnext)
		if (r->segs[i].key == k)
			return i;
	return NIL;
}

/* The entry of (lane, seq), created unknown if missing; NIL only without memory. */
static uint32_t seg_get(struct spool_reclaim *r, unsigned lane, uint64_t seq)
{
	uint32_t i = seg_find(r, lane, seq), b;
	struct rc_seg *s;

	if (i != NIL)
		return i;
	if (r->seg_free != NIL) {
		i = r->seg_free;
		r->seg_free = r->segs[i].hnext;
	} else {
		if (r->nsegs == r->segs_cap && grow((void **)&r->segs, &r->segs_cap, sizeof(*r->segs)))
			return NIL;
		i = r->nsegs++;
	}
	if (r->seg_live + 1 > r->seg_hash_n / 2 && seg_rehash(r, r->seg_live + 1)) {
		r->segs[i].hnext = r->seg_free;
		r->seg_free = i;
		return NIL;
	}
	s = &r->segs[i];
	memset(s, 0, sizeof(*s));
	s->key = seg_key(lane, seq);
	s->used = true;
	s->msgs = NIL;
	b = hash64(s->key, r->seg_hash_n);
	s->hnext = r->seg_hash[b];
	r->seg_hash[b] = i;
	r->seg_live++;
	return i;
}

static void seg_drop(struct spool_reclaim *r, uint32_t i)
{
	uint32_t *pp = &r->seg_hash[hash64(r->segs[i].key, r->seg_hash_n)];

	while (*pp != i)
		pp = &r->segs[*pp].hnext;
	*pp = r->segs[i].hnext;
	r->segs[i].used = false;
	r->segs[i].hnext = r->seg_free;
	r->seg_free = i;
	r->seg_live--;
}

static uint32_t msg_find(struct spool_reclaim *r, uint64_t id)
{
	if (!r->msg_hash_n)
		return NIL;
	for (uint32_t i = r->msg_hash[hash64(id, r->msg_hash_n)]; i != NIL; i = r->msgs[i].hnext)
		if (r->msgs[i].id == id)
			return i;
	return NIL;
}

static uint32_t msg_new(struct spool_reclaim *r, uint64_t id)
{
	uint32_t i, b;
	struct rc_msg *m;

	if (r->msg_free != NIL) {
		i = r->msg_free;
		r->msg_free = r->msgs[i].hnext;
	} else {
		if (r->nmsgs == r->msgs_cap && grow((void **)&r->msgs, &r->msgs_cap, sizeof(*r->msgs)))
			return NIL;
		i = r->nmsgs++;
	}
	if (r->msg_live + 1 > r->msg_hash_n / 2 && msg_rehash(r, r->msg_live + 1)) {
		r->msgs[i].hnext = r->msg_free;
		r->msg_free = i;
		return NIL;
	}
	m = &r->msgs[i];
	memset(m, 0, sizeof(*m));
	m->id = id;
	m->used = true;
	b = hash64(id, r->msg_hash_n);
	m->hnext = r->msg_hash[b];
	r->msg_hash[b] = i;
	r->msg_live++;
	return i;
}

static void msg_drop(struct spool_reclaim *r, uint32_t i)
{
	uint32_t *pp = &r->msg_hash[hash64(r->msgs[i].id, r->msg_hash_n)];

	while (*pp != i)
		pp = &r->msgs[*pp].hnext;
	*pp = r->msgs[i].hnext;
	free(r->msgs[i].ref);
	r->msgs[i].ref = NULL;
	free(r->msgs[i].keep);
	r->msgs[i].keep = NULL;
	r->msgs[i].nkeep = r->msgs[i].capkeep = 0;
	r->msgs[i].keep_cseg = 0;
	free(r->msgs[i].snap);
	r->msgs[i].snap = NULL;
	r->msgs[i].gap_rec = r->msgs[i].move_gap = r->msgs[i].gap_since_move = false;
	if (r->msgs[i].final_wanted)
		r->kept--;
	r->msgs[i].final_wanted = false;
	r->msgs[i].used = false;
	r->msgs[i].hnext = r->msg_free;
	r->msg_free = i;
	r->msg_live--;
}

/*
 * Add segment si to H(m) (not C(m), no duplicates), counted as m stands.
 * Without memory the message can never be final here (nothing is lost).
 */
static void msg_ref(struct spool_reclaim *r, struct rc_msg *m, uint32_t si)
{
	if (si == NIL) {
		m->dsn_lost = true;
		return;
	}
	if (si == m->cseg || (m->moving && si == m->new_cseg))
		return;
	for (uint32_t k = 0; k < m->nref; k++)
		if (m->ref[k] == si) {
			/* Registered again during a move: a record the copy's summary may not cover. */
			if (m->moving && k < m->mark) {
				m->ref[k] = m->ref[m->mark - 1];
				m->ref[m->mark - 1] = si;
				m->mark--;
			}
			return;
		}
	if (m->nref == m->cap) {
		uint32_t ncap = m->cap ? m->cap * 2 : 4;
		uint32_t *n = realloc(m->ref, ncap * sizeof(*n));
		if (!n) {
			m->dsn_lost = true;
			return;
		}
		m->ref = n;
		m->cap = ncap;
	}
	m->ref[m->nref++] = si;
	TRACE(r, m, "ref + %llu (final %d moving %d)",
	      (unsigned long long)(r->segs[si].key & ((1ull << 40) - 1)), m->final, m->moving);
	if (m->final)
		r->segs[si].waiting++;
	else
		r->segs[si].nonfinal++;
}

/* ---- life cycle ---- */

int spool_reclaim_create(struct spool_reclaim **out, const char *dir, const struct spool_reclaim_ops *ops,
			 void *ops_ctx)
{
	struct spool_reclaim *r = calloc(1, sizeof(*r));

	*out = NULL;
	if (!r)
		return -ENOMEM;
	if (snprintf(r->dir, sizeof(r->dir), "%s", dir) >= (int)sizeof(r->dir)) {
		free(r);
		return -ENAMETOOLONG;
	}
	r->ops = ops ? *ops
		     : (struct spool_reclaim_ops){
			       .unlink = sys_unlink, .fsync_dir = sys_fsync_dir, .rename = sys_rename};
	r->ops_ctx = ops_ctx;
	r->seg_free = r->msg_free = NIL;
	for (unsigned i = 0; i < SPOOL_LANES_MAX; i++)
		r->lane_low[i] = UINT64_MAX;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	*out = r;
	return 0;
}

void spool_reclaim_destroy(struct spool_reclaim *r)
{
	if (!r)
		return;
	spool_reclaim_stop(r);
	for (uint32_t i = 0; i < r->nmsgs; i++) {
		free(r->msgs[i].ref);
		free(r->msgs[i].keep);
		free(r->msgs[i].snap);
	}
	free(r->msgs);
	free(r->segs);
	free(r->msg_hash);
	free(r->seg_hash);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
}

/* ---- feeding ---- */

static void seg_add_locked(struct spool_reclaim *r, unsigned lane, uint64_t seq, uint64_t bytes, bool sealed)
{
	uint32_t i = seg_get(r, lane, seq);

	DS_ASSERT(lane < SPOOL_LANES_MAX);
	if (seq > r->lane_top[lane])
		r->lane_top[lane] = seq;
	if (i == NIL)
		return; /* unknown to the table: never reclaimed */
	if (!r->segs[i].known) {
		r->segs[i].known = true;
		r->segs[i].bytes = bytes;
		r->segs[i].created_us = wall_us();
		r->st.segments++;
		r->st.bytes += bytes;
	}
	if (sealed)
		r->segs[i].sealed = true;
}

void spool_reclaim_seg_add(struct spool_reclaim *r, unsigned lane, uint64_t seq, uint64_t bytes, bool sealed)
{
	pthread_mutex_lock(&r->mu);
	seg_add_locked(r, lane, seq, bytes, sealed);
	r->dirty |= sealed;
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_seg_sealed(struct spool_reclaim *r, unsigned lane, uint64_t seq)
{
	pthread_mutex_lock(&r->mu);
	uint32_t i = seg_find(r, lane, seq);
	if (i != NIL) {
		r->segs[i].sealed = true;
		r->dirty = true;
	}
	pthread_mutex_unlock(&r->mu);
}

static void seg_pin_locked(struct spool_reclaim *r, unsigned lane, uint64_t seq)
{
	uint32_t i = seg_get(r, lane, seq);

	if (i != NIL && !r->segs[i].pinned) {
		r->segs[i].pinned = true;
		r->st.pinned++;
	}
}

void spool_reclaim_seg_pin(struct spool_reclaim *r, unsigned lane, uint64_t seq)
{
	pthread_mutex_lock(&r->mu);
	seg_pin_locked(r, lane, seq);
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_lane_low(struct spool_reclaim *r, unsigned lane, uint64_t seq)
{
	DS_ASSERT(lane < SPOOL_LANES_MAX);
	pthread_mutex_lock(&r->mu);
	r->lane_low[lane] = seq;
	r->dirty = true;
	pthread_mutex_unlock(&r->mu);
}

static void msg_add_locked(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t commit_seq,
			   uint64_t chunk_seq)
{
	uint32_t mi, ci;
	struct rc_msg *m;

	mi = msg_find(r, id);
	if (mi != NIL) {
		/* Registered already (a commit is durable once), unless this is a moving message's copy. */
		m = &r->msgs[mi];
		if (m->moving && m->new_cseg == NIL && (ci = seg_get(r, lane, commit_seq)) != NIL &&
		    ci != m->cseg) {
			m->new_cseg = ci;
			TRACE(r, m, "copy durable in %llu chunks from %llu", (unsigned long long)commit_seq,
			      (unsigned long long)chunk_seq);
			r->segs[ci].nonfinal++;
			m->new_chunk_lo = chunk_seq && chunk_seq < commit_seq ? chunk_seq : 0;
			for (uint64_t s = m->new_chunk_lo ? m->new_chunk_lo : commit_seq; s < commit_seq;
			     s++) {
				uint32_t si = seg_get(r, lane, s);
				if (si == NIL) {
					m->dsn_lost = true; /* never final here: nothing is released */
					continue;
				}
				r->segs[si].nonfinal++;
			}
		}
		return;
	}
	ci = seg_get(r, lane, commit_seq);
	if (ci == NIL) {
		/* Without memory: pin what holds it (it is never reclaimed, nothing is lost). */
		return;
	}
	mi = msg_new(r, id);
	if (mi == NIL) {
		r->segs[ci].pinned = true;
		for (uint64_t s = chunk_seq ? chunk_seq : commit_seq; s < commit_seq; s++)
			seg_pin_locked(r, lane, s);
		return;
	}
	m = &r->msgs[mi];
	m->cseg = ci;
	TRACE(r, m, "added, chunks from %llu", (unsigned long long)chunk_seq);
	m->snext = r->segs[ci].msgs;
	r->segs[ci].msgs = mi;
	r->segs[ci].nonfinal++;
	r->st.messages++;
	/*
	 * Chunks protect the message only while it is not final: a final message whose body
	 * went first is "a commit without its body", never a message (not resurrected), and
	 * chunks are the one ref that points back in a lane (a body spanning S1..S2 while S2
	 * holds records of S1's messages would make each wait for the other).
	 */
	for (uint64_t s = chunk_seq ? chunk_seq : commit_seq; s < commit_seq; s++) {
		uint32_t si = seg_get(r, lane, s);
		if (si == NIL) {
			m->dsn_lost = true; /* never final here: nothing is released */
			continue;
		}
		r->segs[si].nonfinal++;
	}
	m->chunk_lo = chunk_seq && chunk_seq < commit_seq ? chunk_seq : 0;
}

void spool_reclaim_msg_add(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t commit_seq,
			   uint64_t chunk_seq)
{
	pthread_mutex_lock(&r->mu);
	msg_add_locked(r, id, lane, commit_seq, chunk_seq);
	pthread_mutex_unlock(&r->mu);
}

static void msg_record_locked(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq,
			      uint64_t dsn_id)
{
	uint32_t mi = msg_find(r, id);
	struct rc_msg *m;

	if (mi == NIL)
		return;
	m = &r->msgs[mi];
	msg_ref(r, m, seg_get(r, lane, seq));
	if (dsn_id) {
		uint32_t di = msg_find(r, dsn_id);
		/* The DSN must outlive this message's records: recovery trusts FAILED only while it exists.
		 */
		if (di == NIL || r->segs[r->msgs[di].cseg].reclaiming)
			m->dsn_lost = true;
		else
			msg_ref(r, m, r->msgs[di].cseg);
	}
}

void spool_reclaim_msg_record(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq,
			      uint64_t dsn_id)
{
	pthread_mutex_lock(&r->mu);
	msg_record_locked(r, id, lane, seq, dsn_id);
	pthread_mutex_unlock(&r->mu);
}

static void msg_keep_locked(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq, uint32_t kind)
{
	uint32_t mi = msg_find(r, id), si;
	struct rc_msg *m;

	if (mi == NIL)
		return;
	m = &r->msgs[mi];
	si = seg_get(r, lane, seq);
	msg_ref(r, m, si);
	if (si == NIL)
		return;
	DS_ASSERT(si <= KEEP_SEG);
	if (si == m->cseg) {
		m->keep_cseg |= kind;
		return;
	}
	for (uint32_t k = 0; k < m->nkeep; k++)
		if ((m->keep[k] & KEEP_SEG) == si) {
			m->keep[k] |= kind;
			return;
		}
	if (m->nkeep == m->capkeep) {
		uint32_t ncap = m->capkeep ? m->capkeep * 2 : 2;
		uint32_t *n = realloc(m->keep, ncap * sizeof(*n));
		if (!n) {
			m->dsn_lost = true; /* never final here, never moved: nothing is released */
			return;
		}
		m->keep = n;
		m->capkeep = ncap;
	}
	m->keep[m->nkeep++] = si | kind;
}

void spool_reclaim_msg_record_keep(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq)
{
	pthread_mutex_lock(&r->mu);
	msg_keep_locked(r, id, lane, seq, KEEP_OP);
	pthread_mutex_unlock(&r->mu);
}

static void msg_final_locked(struct spool_reclaim *r, uint64_t id)
{
	uint32_t mi = msg_find(r, id);
	struct rc_msg *m;

	if (mi == NIL)
		return;
	m = &r->msgs[mi];
	if (m->final || m->dsn_lost)
		return;
	if (m->moving || (m->keep_until_us && m->keep_until_us > wall_us())) {
		/* A gap record's window: kept (byte for byte comparison of a retry) until it ends. */
		if (!m->final_wanted) {
			m->final_wanted = true;
			r->kept++;
			r->st.kept_at_risk++;
		}
		return;
	}
	if (m->final_wanted) {
		m->final_wanted = false;
		r->kept--;
		r->st.kept_at_risk--;
	}
	free(m->snap); /* final for good: never moved again */
	m->snap = NULL;
	m->final = true;
	TRACE(r, m, "final%s", "");
	r->st.final_messages++;
	DS_ASSERT(r->segs[m->cseg].nonfinal > 0);
	r->segs[m->cseg].nonfinal--;
	if (m->chunk_lo) {
		unsigned lane = (unsigned)(r->segs[m->cseg].key >> 40);
		uint64_t cseq = r->segs[m->cseg].key & ((1ull << 40) - 1);
		for (uint64_t q = m->chunk_lo; q < cseq; q++) {
			uint32_t si = seg_find(r, lane, q);
			DS_ASSERT(si != NIL && r->segs[si].nonfinal > 0);
			r->segs[si].nonfinal--;
		}
	}
	for (uint32_t k = 0; k < m->nref; k++) {
		struct rc_seg *s = &r->segs[m->ref[k]];
		DS_ASSERT(s->nonfinal > 0);
		s->nonfinal--;
		s->waiting++;
	}
	r->dirty = true;
}

void spool_reclaim_msg_final(struct spool_reclaim *r, uint64_t id)
{
	pthread_mutex_lock(&r->mu);
	msg_final_locked(r, id);
	if (r->dirty)
		pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* A snapshot of fs (NULL without memory: the message is then not moved while kept). */
static struct rc_snap *snap_new(const struct spool_reclaim_final_state *fs)
{
	struct rc_snap *sn;

	if (fs->rcpt_count > SPOOL_RCPT_MAX)
		return NULL;
	sn = malloc(sizeof(*sn) + fs->rcpt_count);
	if (!sn)
		return NULL;
	*sn = (struct rc_snap){.seq = fs->seq,
			       .off = fs->off,
			       .size = fs->size,
			       .attempts = fs->attempts,
			       .rcpt_count = fs->rcpt_count};
	memcpy(sn->st, fs->rcpt_state, fs->rcpt_count);
	return sn;
}

void spool_reclaim_msg_final_state(struct spool_reclaim *r, uint64_t id,
				   const struct spool_reclaim_final_state *fs)
{
	pthread_mutex_lock(&r->mu);
	uint32_t mi = msg_find(r, id);
	/* Only a message the final state is held back for needs it (kept: compaction moves it). */
	if (mi != NIL && !r->msgs[mi].final && r->msgs[mi].keep_until_us > wall_us()) {
		free(r->msgs[mi].snap);
		r->msgs[mi].snap = snap_new(fs);
	}
	msg_final_locked(r, id);
	if (r->dirty)
		pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

int spool_reclaim_msg_snapshot(struct spool_reclaim *r, uint64_t id, struct spool_reclaim_final_state *fs,
			       uint8_t **states)
{
	int rc = -ENOENT;

	*states = NULL;
	pthread_mutex_lock(&r->mu);
	uint32_t mi = msg_find(r, id);
	const struct rc_snap *sn = mi == NIL ? NULL : r->msgs[mi].snap;
	if (sn && r->msgs[mi].final_wanted) {
		*states = malloc(sn->rcpt_count ? sn->rcpt_count : 1);
		rc = *states ? 0 : -ENOMEM;
		if (!rc) {
			memcpy(*states, sn->st, sn->rcpt_count);
			*fs = (struct spool_reclaim_final_state){.seq = sn->seq,
								 .off = sn->off,
								 .size = sn->size,
								 .attempts = sn->attempts,
								 .rcpt_count = sn->rcpt_count,
								 .rcpt_state = *states};
		}
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

void spool_reclaim_msg_relocated(struct spool_reclaim *r, uint64_t id, uint64_t seq, uint64_t off)
{
	pthread_mutex_lock(&r->mu);
	uint32_t mi = msg_find(r, id);
	if (mi != NIL && r->msgs[mi].snap) {
		r->msgs[mi].snap->seq = seq;
		r->msgs[mi].snap->off = off;
	}
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_set_keep_max(struct spool_reclaim *r, int64_t keep_max_us)
{
	pthread_mutex_lock(&r->mu);
	r->keep_max_us = keep_max_us;
	pthread_mutex_unlock(&r->mu);
}

static void msg_keep_until_locked(struct spool_reclaim *r, uint64_t id, int64_t expires_us, bool rec)
{
	expires_us = expires_us ? keep_cap(r, expires_us, wall_us()) : 0;
	uint32_t mi = msg_find(r, id);
	/* A final message is past keeping (its window was not open when it became final). */
	if (mi != NIL && !r->msgs[mi].final) {
		struct rc_msg *m = &r->msgs[mi];
		m->keep_until_us = expires_us ? DS_MAX(m->keep_until_us, expires_us) : 0;
		/* A CLEARED record (or a confirmed 250) ends the durable keep too. */
		if (!expires_us)
			m->gap_rec = false;
		else if (rec)
			m->gap_rec = true;
		if (!expires_us && m->final_wanted)
			msg_final_locked(r, id);
	}
}

void spool_reclaim_msg_keep(struct spool_reclaim *r, uint64_t id, int64_t expires_us)
{
	pthread_mutex_lock(&r->mu);
	msg_keep_until_locked(r, id, expires_us, false);
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_msg_record_gap(struct spool_reclaim *r, uint64_t id, unsigned lane, uint64_t seq,
				  int64_t expires_us)
{
	pthread_mutex_lock(&r->mu);
	uint32_t mi = msg_find(r, id);
	msg_keep_locked(r, id, lane, seq, KEEP_GAP);
	/*
	 * The fresh AT_RISK record of a copy being moved (spool_compact.c) is durable: it
	 * restates the keep, it does not extend it (--gap-dedup-keep-s counts from the first).
	 */
	if (mi != NIL && r->msgs[mi].moving && r->msgs[mi].move_gap && expires_us)
		r->msgs[mi].gap_since_move = true;
	else
		msg_keep_until_locked(r, id, expires_us, true);
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_count_compacted(struct spool_reclaim *r, uint64_t segments, uint64_t messages,
				   uint64_t bytes)
{
	pthread_mutex_lock(&r->mu);
	r->st.compacted += segments;
	r->st.compacted_messages += messages;
	r->st.compacted_bytes += bytes;
	r->dirty = true;
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_set_events(struct spool_reclaim *r,
			      void (*fn)(void *ctx, const struct spool_reclaim_event *ev), void *ctx)
{
	r->ev_fn = fn;
	r->ev_ctx = ctx;
}

/* Held-back finals whose window is over become final (under the lock). */
static void kept_expire_locked(struct spool_reclaim *r)
{
	int64_t now;

	if (!r->kept)
		return;
	now = wall_us();
	for (uint32_t i = 0; i < r->nmsgs && r->kept; i++) {
		struct rc_msg *m = &r->msgs[i];
		if (m->used && m->final_wanted && m->keep_until_us <= now)
			msg_final_locked(r, m->id);
	}
}

/* ---- compaction (spool_compact.h) ---- */

/*
 * A kept message moves with its gap record only when that record is durable
 * (the provisional keep of an unconfirmed 250 has none to carry: the
 * segment waits, at most IO_GAP_KEEP_PROVISIONAL_US), and, its delivery
 * over, with the snapshot of its final state (an operator DELETE has none:
 * a summary cannot restate it).
 */
static bool movable_kept(const struct rc_msg *m, int64_t now_us)
{
	if (m->final)
		return true;
	if (m->final_wanted)
		return m->snap && m->gap_rec && m->keep_until_us > now_us;
	return m->keep_until_us <= now_us || m->gap_rec;
}

int spool_reclaim_compact_pick(struct spool_reclaim *r, unsigned lane, int64_t now_us, int64_t age_us,
			       uint64_t *seq, uint64_t *ids, unsigned max, struct spool_reclaim_pick *pk)
{
	uint32_t bi = NIL;
	unsigned n = 0;

	/* Gap keeps end by the wall clock (spool_reclaim_msg_keep), whatever clock picks the age. */
	int64_t wall = wall_us();

	memset(pk, 0, sizeof(*pk));
	pthread_mutex_lock(&r->mu);
	for (uint32_t i = 0; i < r->nsegs; i++) {
		struct rc_seg *s = &r->segs[i];
		uint64_t q = s->key & ((1ull << 40) - 1);
		unsigned live = 0;
		bool ok = true;

		if (!s->used || (unsigned)(s->key >> 40) != lane || !s->known || !s->sealed || s->pinned ||
		    s->reclaiming || q >= r->lane_top[lane] || s->created_us > now_us - age_us ||
		    s->compact_next_us > now_us || !s->nonfinal ||
		    (bi != NIL && q > (r->segs[bi].key & ((1ull << 40) - 1))))
			continue;
		for (uint32_t mi = s->msgs; mi != NIL && ok; mi = r->msgs[mi].snext) {
			const struct rc_msg *m = &r->msgs[mi];
			ok = !m->moving && !m->dsn_lost && movable_kept(m, wall);
			live += !m->final;
		}
		if (ok && live)
			bi = i;
	}
	if (bi != NIL) {
		*seq = r->segs[bi].key & ((1ull << 40) - 1);
		for (uint32_t mi = r->segs[bi].msgs; mi != NIL; mi = r->msgs[mi].snext) {
			const struct rc_msg *m = &r->msgs[mi];
			if (m->final)
				continue;
			pk->live++;
			pk->refs += m->nref;
			if (n < max)
				ids[n++] = m->id;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return bi == NIL ? -ENOENT : (int)n;
}

void spool_reclaim_compact_defer(struct spool_reclaim *r, unsigned lane, uint64_t seq, int64_t until_us)
{
	pthread_mutex_lock(&r->mu);
	uint32_t i = seg_find(r, lane, seq);
	if (i != NIL)
		r->segs[i].compact_next_us = until_us;
	pthread_mutex_unlock(&r->mu);
}

int spool_reclaim_msg_moving(struct spool_reclaim *r, uint64_t id)
{
	int rc = 0;

	pthread_mutex_lock(&r->mu);
	uint32_t mi = msg_find(r, id);
	int64_t now = wall_us();
	if (mi == NIL || r->msgs[mi].final || r->msgs[mi].moving || r->msgs[mi].dsn_lost ||
	    !movable_kept(&r->msgs[mi], now)) {
		rc = mi == NIL ? -ENOENT : -EBUSY;
	} else {
		struct rc_msg *m = &r->msgs[mi];
		TRACE(r, m, "moving (nref %u)", m->nref);
		m->moving = true;
		m->mark = m->nref;
		m->new_cseg = NIL;
		m->new_chunk_lo = 0;
		/* Kept by a durable AT_RISK record: the copy gets a fresh one (spool_compact.c). */
		m->move_gap = m->gap_rec && m->keep_until_us > now;
		m->gap_since_move = false;
		rc = m->move_gap;
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/* Segments of a copy's chunk range (lo .. cseg's seq - 1; lo 0: none): nonfinal by d. */
static void chunks_count(struct spool_reclaim *r, uint32_t cseg, uint64_t lo, int d)
{
	unsigned lane = (unsigned)(r->segs[cseg].key >> 40);
	uint64_t cseq = r->segs[cseg].key & ((1ull << 40) - 1);

	for (uint64_t q = lo; lo && q < cseq; q++) {
		uint32_t si = seg_find(r, lane, q);
		if (si == NIL)
			continue; /* never counted (no memory): the message never goes final here */
		DS_ASSERT(d > 0 || r->segs[si].nonfinal > 0);
		r->segs[si].nonfinal += (uint32_t)d;
	}
}

static void seg_unlist(struct spool_reclaim *r, uint32_t si, uint32_t mi)
{
	uint32_t *pp = &r->segs[si].msgs;

	while (*pp != mi) {
		DS_ASSERT(*pp != NIL);
		pp = &r->msgs[*pp].snext;
	}
	*pp = r->msgs[mi].snext;
}

int spool_reclaim_msg_moved(struct spool_reclaim *r, uint64_t id, bool commit)
{
	int rc = 0;

	pthread_mutex_lock(&r->mu);
	uint32_t mi = msg_find(r, id);
	struct rc_msg *m = mi == NIL ? NULL : &r->msgs[mi];
	if (!m || !m->moving) {
		pthread_mutex_unlock(&r->mu);
		return -ENOENT;
	}
	if (commit && (m->new_cseg == NIL || (m->move_gap && !m->gap_since_move)))
		commit = false, rc = -EAGAIN; /* the copy (or its gap record) is not durable: nothing moves */
	TRACE(r, m, "moved commit %d new_cseg %llu", commit,
	      m->new_cseg == NIL ? 0ull
				 : (unsigned long long)(r->segs[m->new_cseg].key & ((1ull << 40) - 1)));
	if (commit) {
		/* The copy with its summary is durable: the old copy and the records before the move go. */
		uint32_t old_cseg = m->cseg;
		DS_ASSERT(r->segs[m->cseg].nonfinal > 0);
		r->segs[m->cseg].nonfinal--;
		chunks_count(r, m->cseg, m->chunk_lo, -1);
		seg_unlist(r, m->cseg, mi);
		m->cseg = m->new_cseg;
		m->chunk_lo = m->new_chunk_lo;
		m->snext = r->segs[m->cseg].msgs;
		r->segs[m->cseg].msgs = mi;
		/*
		 * Records the move replaces: outcome records before it (the summary);
		 * with a fresh AT_RISK record, the gap records before it; for a kept
		 * message whose delivery is over, operator records too (the summary
		 * restates its final state; a DELETEd one is never moved).
		 */
		uint32_t gone = m->move_gap ? (m->final_wanted ? KEEP_OP | KEEP_GAP : KEEP_GAP) : 0;
		uint32_t n = 0;
		for (uint32_t k = 0; k < m->nref; k++) {
			uint32_t kind = 0;
			for (uint32_t j = 0; j < m->nkeep && !kind; j++)
				if ((m->keep[j] & KEEP_SEG) == m->ref[k])
					kind = m->keep[j] & ~KEEP_SEG;
			DS_ASSERT(r->segs[m->ref[k]].nonfinal > 0);
			if ((k < m->mark && (!kind || !(kind & ~gone))) || m->ref[k] == m->cseg)
				r->segs[m->ref[k]].nonfinal--;
			else
				m->ref[n++] = m->ref[k]; /* the order no longer matters: the move is over */
		}
		m->nref = n;
		/* Keep entries whose segment is no longer a ref go with it (C(M)'s: keep_cseg). */
		uint32_t cs_kind = m->keep_cseg & ~gone, nk = 0;
		m->keep_cseg = 0;
		for (uint32_t j = 0; j < m->nkeep; j++) {
			bool still = false;
			for (uint32_t k = 0; k < m->nref && !still; k++)
				still = m->ref[k] == (m->keep[j] & KEEP_SEG);
			if (still)
				m->keep[nk++] = m->keep[j];
			else if ((m->keep[j] & KEEP_SEG) == m->cseg)
				m->keep_cseg |= m->keep[j] & ~KEEP_SEG;
		}
		m->nkeep = nk;
		if (cs_kind && old_cseg != m->cseg) {
			/* An operator or gap record in the old commit segment: it stays, a ref now. */
			msg_keep_locked(r, m->id, (unsigned)(r->segs[old_cseg].key >> 40),
					r->segs[old_cseg].key & ((1ull << 40) - 1), cs_kind);
		}
	} else if (m->new_cseg != NIL) {
		/* Given up after the copy was durable: it is a duplicate nothing protects. */
		r->segs[m->new_cseg].nonfinal--;
		chunks_count(r, m->new_cseg, m->new_chunk_lo, -1);
	}
	m->moving = false;
	m->move_gap = m->gap_since_move = false;
	m->new_cseg = NIL;
	m->mark = 0;
	r->dirty = true;
	pthread_cond_signal(&r->cv); /* the old copy's segment may go now */
	if (m->final_wanted)
		msg_final_locked(r, id);
	pthread_mutex_unlock(&r->mu);
	return rc;
}

void spool_reclaim_stats(struct spool_reclaim *r, struct spool_reclaim_stats *st)
{
	pthread_mutex_lock(&r->mu);
	*st = r->st;
	/* Free files occupy the disk like segments (FORMAT.md, "Recycled segments"). */
	st->bytes += st->free_bytes;
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_set_recycle_max(struct spool_reclaim *r, uint32_t max)
{
	pthread_mutex_lock(&r->mu);
	r->recycle_max = max;
	pthread_mutex_unlock(&r->mu);
}

uint32_t spool_reclaim_recycle_max(const struct spool_reclaim *r)
{
	return __atomic_load_n(&r->recycle_max, __ATOMIC_RELAXED);
}

void spool_reclaim_free_note(struct spool_reclaim *r, unsigned lane, int delta, uint64_t bytes)
{
	DS_ASSERT(lane < SPOOL_LANES_MAX);
	pthread_mutex_lock(&r->mu);
	/*
	 * The counts follow the directory closely, not exactly (the spare may
	 * take a file whose rename this table has not counted yet): never below 0.
	 */
	int64_t n = (int64_t)r->lane_free[lane] + delta;
	int64_t fs = (int64_t)r->st.free_segments + delta;
	int64_t fb = (int64_t)r->st.free_bytes + delta * (int64_t)bytes;
	r->lane_free[lane] = n > 0 ? (uint32_t)n : 0;
	r->st.free_segments = fs > 0 ? (uint64_t)fs : 0;
	r->st.free_bytes = fb > 0 ? (uint64_t)fb : 0;
	pthread_mutex_unlock(&r->mu);
}

void spool_reclaim_free_set(struct spool_reclaim *r, unsigned lane, uint32_t n, uint64_t bytes)
{
	DS_ASSERT(lane < SPOOL_LANES_MAX);
	pthread_mutex_lock(&r->mu);
	r->st.free_segments = r->st.free_segments - DS_MIN(r->st.free_segments, r->lane_free[lane]) + n;
	r->st.free_bytes = r->st.free_bytes - DS_MIN(r->st.free_bytes, (uint64_t)r->lane_free[lane] * bytes) +
			   (uint64_t)n * bytes;
	r->lane_free[lane] = n;
	r->lane_recycling[lane] = true;
	pthread_mutex_unlock(&r->mu);
}

unsigned spool_reclaim_free_drop(struct spool_reclaim *r)
{
	unsigned removed = 0;

	for (unsigned lane = 0; lane < SPOOL_LANES_MAX; lane++) {
		char ldir[PATH_MAX];
		uint64_t *fseqs, bytes;
		int n;

		pthread_mutex_lock(&r->mu);
		n = (int)r->lane_free[lane];
		bytes = n ? r->st.free_bytes / DS_MAX(r->st.free_segments, 1) : 0;
		pthread_mutex_unlock(&r->mu);
		if (!n || spool_lane_dir_path(ldir, sizeof(ldir), r->dir, lane))
			continue;
		n = spool_lane_file_list(ldir, "free", &fseqs);
		for (int i = 0; i < n; i++) {
			char path[PATH_MAX];
			/* The spare may take one meanwhile: whoever removes a name counts it out. */
			if (!spool_lane_file_path(path, sizeof(path), r->dir, lane, fseqs[i], "free") &&
			    !unlink(path)) {
				spool_reclaim_free_note(r, lane, -1, bytes);
				removed++;
			}
		}
		free(fseqs);
	}
	return removed;
}

uint32_t spool_reclaim_free_count(struct spool_reclaim *r, unsigned lane)
{
	uint32_t n;

	DS_ASSERT(lane < SPOOL_LANES_MAX);
	pthread_mutex_lock(&r->mu);
	n = r->lane_free[lane];
	pthread_mutex_unlock(&r->mu);
	return n;
}

/* ---- reclaiming ---- */

static bool reclaimable(const struct spool_reclaim *r, const struct rc_seg *s)
{
	unsigned lane = (unsigned)(s->key >> 40);
	uint64_t seq = s->key & ((1ull << 40) - 1);

	return s->used && s->known && s->sealed && !s->pinned && !s->reclaiming && !s->nonfinal &&
	       !s->waiting && seq < r->lane_top[lane] && seq < r->lane_low[lane];
}

/* S is gone from the disk (its unlink is durable): so is every message whose commit it held. */
static void seg_gone_locked(struct spool_reclaim *r, uint32_t si)
{
	struct rc_seg *s = &r->segs[si];

	for (uint32_t mi = s->msgs, next; mi != NIL; mi = next) {
		struct rc_msg *m = &r->msgs[mi];
		next = m->snext;
		DS_ASSERT(m->final);
		for (uint32_t k = 0; k < m->nref; k++) {
			DS_ASSERT(r->segs[m->ref[k]].waiting > 0);
			r->segs[m->ref[k]].waiting--;
		}
		r->st.messages--;
		r->st.final_messages--;
		msg_drop(r, mi);
	}
	s = &r->segs[si];
	s->msgs = NIL;
	r->st.segments--;
	r->st.bytes -= s->bytes;
	r->st.reclaimed++;
	r->st.reclaimed_bytes += s->bytes;
	seg_drop(r, si);
}

int spool_reclaim_run(struct spool_reclaim *r)
{
	int total = 0;

	for (;;) {
		uint32_t batch[RECLAIM_BATCH];
		unsigned n = 0;

		pthread_mutex_lock(&r->mu);
		r->dirty = false;
		kept_expire_locked(r);
		for (uint32_t i = 0; i < r->nsegs && n < RECLAIM_BATCH; i++)
			if (reclaimable(r, &r->segs[i])) {
				r->segs[i].reclaiming = true;
				batch[n++] = i;
			}
		pthread_mutex_unlock(&r->mu);
		if (!n) {
			if (r->ev_fn) {
				struct spool_reclaim_stats st;
				spool_reclaim_stats(r, &st);
				r->ev_fn(r->ev_ctx, &(struct spool_reclaim_event){
							    .kind = SPOOL_RECLAIM_EV_PASS, .st = &st});
			}
			return total;
		}
		for (unsigned k = 0; k < n; k++) {
			uint32_t si = batch[k];
			uint64_t key = r->segs[si].key; /* stable: only this thread drops entries */
			unsigned lane = (unsigned)(key >> 40);
			uint64_t seq = key & ((1ull << 40) - 1);
			char path[PATH_MAX], ldir[PATH_MAX], fpath[PATH_MAX];
			int rc = spool_seg_path(path, sizeof(path), r->dir, lane, seq);
			bool recycle = false;

			if (!rc)
				rc = spool_lane_dir_path(ldir, sizeof(ldir), r->dir, lane);
			pthread_mutex_lock(&r->mu);
			/* Only this thread adds free files: the pool stays at most recycle_max. */
			recycle = r->ops.rename && r->lane_recycling[lane] &&
				  r->lane_free[lane] < r->recycle_max;
			pthread_mutex_unlock(&r->mu);
			if (!rc && recycle &&
			    !spool_lane_file_path(fpath, sizeof(fpath), r->dir, lane, seq, "free")) {
				/* Recycled (format 5): SEQ.seg becomes SEQ.free, reused by the lane's spare.
				 */
				rc = r->ops.rename(r->ops_ctx, path, fpath);
				if (rc) {
					/* Gone already (ENOENT), or not renamed: unlink as without recycling.
					 */
					recycle = false;
					rc = 0;
				}
			} else {
				recycle = false;
			}
			if (!rc && !recycle) {
				rc = r->ops.unlink(r->ops_ctx, path);
				if (rc == -ENOENT)
					rc = 0;
			}
			/*
			 * The unlink or rename must be durable before anything it held
			 * loses its protection (a rename before this fsync may show
			 * either name after a crash: the old one is the segment still).
			 */
			if (!rc)
				rc = r->ops.fsync_dir(r->ops_ctx, ldir);
			struct spool_reclaim_event ev = {
				.kind = SPOOL_RECLAIM_EV_RECLAIMED, .lane = lane, .seq = seq};
			pthread_mutex_lock(&r->mu);
			if (rc) {
				/* Unknown whether it is gone: keep everything as if it were there. */
				r->segs[si].reclaiming = false;
				seg_pin_locked(r, lane, seq);
				r->st.errors++;
			} else {
				ev.bytes = r->segs[si].bytes;
				for (uint32_t mi = r->segs[si].msgs; mi != NIL; mi = r->msgs[mi].snext)
					ev.messages++;
				if (recycle) {
					/* Counted only now: the spare takes what is durably free. */
					r->lane_free[lane]++;
					r->st.free_segments++;
					r->st.free_bytes += ev.bytes;
					r->st.recycled++;
				}
				seg_gone_locked(r, si);
				total++;
			}
			pthread_mutex_unlock(&r->mu);
			if (!rc && r->ev_fn)
				r->ev_fn(r->ev_ctx, &ev);
		}
	}
}

static void *reclaim_main(void *arg)
{
	struct spool_reclaim *r = arg;

	pthread_mutex_lock(&r->mu);
	while (!r->stop) {
		if (!r->dirty) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&r->cv, &r->mu, &ts);
			/* Held-back finals are looked at once a second (their windows end). */
			if (!r->dirty && !r->kept)
				continue;
		}
		pthread_mutex_unlock(&r->mu);
		spool_reclaim_run(r);
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

int spool_reclaim_start(struct spool_reclaim *r)
{
	int rc;

	if (r->started)
		return 0;
	rc = -pthread_create(&r->thr, NULL, reclaim_main, r);
	if (!rc)
		r->started = true;
	return rc;
}

void spool_reclaim_stop(struct spool_reclaim *r)
{
	if (!r->started)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = true;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thr, NULL);
	r->started = false;
}

/* ---- start-up: the table from a scan of the whole spool ---- */

struct rc_rec {
	uint64_t id, seq, dsn_id;
	unsigned lane;
	int64_t at_us; /* outcome records: their time (older than a summary: redundant) */
	bool summary;  /* an outcome record of compaction (SPOOL_OUTCOME_F_SUMMARY) */
	bool outcome;
	bool superseded; /* an outcome record older than a summary of its message: not a ref */
	bool keep;	 /* an operator or gap record: outlives a move (msg_keep_locked) */
	bool gap;	 /* ... a gap record (KEEP_GAP) */
	bool moved;	 /* a MOVED record (type 5): a hint, superseded by a later summary like an outcome */
	/* Gap records (type 7): kind, expiry, where (a CLEARED after an AT_RISK in its lane ends it). */
	uint32_t gap_kind;
	uint64_t off;
	int64_t expires_us;
};

struct load_ctx {
	struct spool_reclaim *r;
	struct rc_rec *recs;
	size_t nrecs, cap;
	uint64_t *finals;
	size_t nfinals, fcap;
	/* Ids with an AT_RISK record still open, sorted (built at the first message: records come first). */
	uint64_t *risk;
	size_t nrisk;
	bool risk_built;
	int err;
};

/* Message id has an AT_RISK record whose window is open (it may be kept: snapshot its final state). */
static bool l_at_risk(struct load_ctx *c, uint64_t id)
{
	if (!c->risk_built) {
		int64_t now = wall_us();
		c->risk_built = true;
		for (size_t i = 0; i < c->nrecs; i++)
			c->nrisk += c->recs[i].gap_kind == SPOOL_GAP_AT_RISK && c->recs[i].expires_us > now;
		c->risk = c->nrisk ? malloc(c->nrisk * sizeof(*c->risk)) : NULL;
		if (!c->risk) {
			c->nrisk = 0; /* no snapshots: kept delivered messages are not moved (they stay) */
			return false;
		}
		c->nrisk = 0;
		for (size_t i = 0; i < c->nrecs; i++)
			if (c->recs[i].gap_kind == SPOOL_GAP_AT_RISK && c->recs[i].expires_us > now)
				c->risk[c->nrisk++] = c->recs[i].id;
		qsort(c->risk, c->nrisk, sizeof(*c->risk), ds_u64_cmp);
	}
	return c->nrisk && bsearch(&id, c->risk, c->nrisk, sizeof(id), ds_u64_cmp);
}

static void l_seg(void *ctx, struct rlane *rl, struct rseg *s)
{
	struct load_ctx *c = ctx;

	seg_add_locked(c->r, rl->lane, s->seq, s->size, true);
	if (!s->hdr_rc) {
		uint32_t i = seg_find(c->r, rl->lane, s->seq);
		if (i != NIL)
			c->r->segs[i].created_us = s->hdr.created_us;
	}
	/* A bad header (not merely unused), or a newer format: exactly as found. */
	if (s->hdr_rc && s->hdr_rc != -ENODATA)
		seg_pin_locked(c->r, rl->lane, s->seq);
}

static void l_bad(void *ctx, struct rlane *rl, struct rseg *s, uint64_t from, uint64_t to, bool tail,
		  bool zero, bool durable)
{
	struct load_ctx *c = ctx;

	(void)from;
	(void)to;
	(void)tail;
	(void)durable;
	/* Torn tails and quarantined regions: FORMAT.md promises such segments stay as found. */
	if (!zero)
		seg_pin_locked(c->r, rl->lane, s->seq);
}

static void l_delivery(void *ctx, struct rlane *rl, struct rseg *s, const struct spool_rec *rec)
{
	struct load_ctx *c = ctx;
	struct rc_rec e = {.id = rec->txn_id,
			   .seq = s->seq,
			   .off = rec->off,
			   .lane = rl->lane,
			   .keep = rec->type == SPOOL_REC_OPERATOR || rec->type == SPOOL_REC_GAP,
			   .gap = rec->type == SPOOL_REC_GAP,
			   .moved = rec->type == SPOOL_REC_MOVED};

	if (rec->type == SPOOL_REC_OUTCOME) {
		struct spool_outcome o;
		struct spool_outcome_iter it;
		if (spool_outcome_decode(rec->payload, rec->len, &o, &it))
			return; /* not a record: recovery ignores it too */
		uint32_t flags;
		memcpy(&flags, rec->payload + 4, 4);
		e.dsn_id = o.dsn_id;
		e.at_us = o.at_us;
		e.off = rec->off;
		e.outcome = true;
		e.summary = flags & SPOOL_OUTCOME_F_SUMMARY;
	} else if (rec->type == SPOOL_REC_GAP) {
		struct spool_gap_fixed g;
		if (spool_gap_fixed_decode(rec->payload, rec->len, &g))
			return;
		e.gap_kind = g.kind;
		e.expires_us = g.expires_us;
		e.off = rec->off;
	}
	if (c->nrecs == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 1024;
		struct rc_rec *n = realloc(c->recs, ncap * sizeof(*n));
		if (!n) {
			c->err = -ENOMEM;
			return;
		}
		c->recs = n;
		c->cap = ncap;
	}
	c->recs[c->nrecs++] = e;
}

static int l_final(struct load_ctx *c, uint64_t id)
{
	if (c->nfinals == c->fcap) {
		size_t ncap = c->fcap ? c->fcap * 2 : 1024;
		uint64_t *n = realloc(c->finals, ncap * sizeof(*n));
		if (!n)
			return c->err = -ENOMEM;
		c->finals = n;
		c->fcap = ncap;
	}
	c->finals[c->nfinals++] = id;
	return 0;
}

static int l_msg(void *ctx, struct rlane *rl, const struct spool_msg *m, const struct spool_msg_status *st)
{
	struct load_ctx *c = ctx;

	msg_add_locked(c->r, m->id, rl->lane, m->seq, m->chunk_count ? m->first_seq : 0);
	if (st->done && !st->deleted && st->rcpt_count <= SPOOL_RCPT_MAX && l_at_risk(c, m->id)) {
		/* Kept past its delivery (a gap record): what a moved copy's summary restates. */
		uint32_t mi = msg_find(c->r, m->id);
		uint8_t *stt = malloc(st->rcpt_count ? st->rcpt_count : 1);
		if (mi != NIL && stt && !c->r->msgs[mi].snap) {
			for (uint32_t i = 0; i < st->rcpt_count; i++)
				stt[i] = st->rcpt[i].state;
			c->r->msgs[mi].snap =
				snap_new(&(struct spool_reclaim_final_state){.seq = m->seq,
									     .off = m->off,
									     .size = m->size,
									     .attempts = st->attempts,
									     .rcpt_count = st->rcpt_count,
									     .rcpt_state = stt});
		}
		free(stt);
	}
	if (st->done)
		l_final(c, m->id);
	return 0;
}

static void l_aborted(void *ctx, struct rlane *rl, const struct spool_msg *m, bool kept)
{
	struct load_ctx *c = ctx;

	(void)kept;
	/* Not a message; final, but its commit must go before its abort record (H). */
	msg_add_locked(c->r, m->id, rl->lane, m->seq, m->chunk_count ? m->first_seq : 0);
	l_final(c, m->id);
}

static void l_dropped(void *ctx, struct rlane *rl, const struct spool_msg *m, bool durable)
{
	(void)ctx;
	(void)rl;
	(void)m;
	(void)durable;
	/* Never acknowledged: garbage, like chunks without a commit. */
}

/*
 * Compaction's summaries (SPOOL_OUTCOME_F_SUMMARY): an outcome record about
 * a message older than its latest summary says nothing the summary does not
 * (FORMAT.md, "Moved records"), so its segment does not wait for the
 * message. Without this a copy moved forward would point back at the
 * segments of its old records, and two such messages could keep each
 * other's segments forever. The summary itself, and records as old as it
 * or newer, count as before.
 */
static int summaries_locked(struct spool_reclaim *r, struct load_ctx *c)
{
	struct sum {
		uint64_t id, seq, off;
		unsigned lane;
	} *h = NULL;
	size_t n = 0, cap = 16;

	(void)r;
	for (size_t i = 0; i < c->nrecs; i++)
		n += c->recs[i].summary;
	if (!n)
		return 0;
	while (cap < 2 * n)
		cap *= 2;
	h = calloc(cap, sizeof(*h));
	if (!h)
		return -ENOMEM; /* every record counts: nothing is released early */
	/* The latest summary of each message in its lane's stream (a copy is moved in its id's lane). */
	for (size_t i = 0; i < c->nrecs; i++) {
		const struct rc_rec *e = &c->recs[i];
		if (!e->summary)
			continue;
		for (size_t k = hash64(e->id, (uint32_t)cap);; k = (k + 1) & (cap - 1)) {
			if (!h[k].id || h[k].id == e->id) {
				if (!h[k].id ||
				    (e->lane == h[k].lane &&
				     (e->seq > h[k].seq || (e->seq == h[k].seq && e->off > h[k].off))))
					h[k] = (struct sum){e->id, e->seq, e->off, e->lane};
				break;
			}
		}
	}
	/*
	 * Superseded: an outcome record before the summary in the same lane's stream, an older
	 * summary and an older MOVED record too (a message moved twice: else its copy would point
	 * back at the first move's records, and two such messages could keep each other's segments
	 * forever). A record of another lane is not ordered against it (clocks are not trusted
	 * here): it counts.
	 */
	for (size_t i = 0; i < c->nrecs; i++) {
		struct rc_rec *e = &c->recs[i];
		if (!e->outcome && !e->moved)
			continue;
		for (size_t k = hash64(e->id, (uint32_t)cap); h[k].id; k = (k + 1) & (cap - 1))
			if (h[k].id == e->id) {
				e->superseded =
					e->lane == h[k].lane &&
					(e->seq < h[k].seq || (e->seq == h[k].seq && e->off < h[k].off));
				break;
			}
	}
	free(h);
	return 0;
}

/*
 * Gap records: a message with an AT_RISK record whose window has not ended,
 * and no CLEARED record after it in the same lane's stream, is kept until
 * the window ends (FORMAT.md, "Gap records"). A CLEARED record in another
 * lane is not ordered against it: the message is kept (the safe side).
 */
static int gap_rec_cmp(const void *pa, const void *pb)
{
	const struct rc_rec *a = *(const struct rc_rec *const *)pa, *b = *(const struct rc_rec *const *)pb;
	if (a->id != b->id)
		return a->id < b->id ? -1 : 1;
	if (a->lane != b->lane)
		return a->lane < b->lane ? -1 : 1;
	if (a->seq != b->seq)
		return a->seq < b->seq ? -1 : 1;
	return a->off < b->off ? -1 : a->off > b->off;
}

/*
 * Compaction writes a fresh AT_RISK record for a kept message's copy (same
 * expiry, the copy's location) in the id's lane: an AT_RISK record before
 * a later AT_RISK record of its message in the same lane's stream says
 * nothing that one does not, so its segment does not wait for the message
 * (as outcome records before a summary; a CLEARED between them cannot be:
 * a message is moved as kept only while no CLEARED record ended its keep).
 */
static void gaps_superseded(struct load_ctx *c)
{
	struct rc_rec **g;
	size_t ng = 0;

	for (size_t i = 0; i < c->nrecs; i++)
		ng += c->recs[i].gap_kind == SPOOL_GAP_AT_RISK;
	if (ng < 2 || !(g = malloc(ng * sizeof(*g))))
		return; /* every record counts: nothing is released early */
	ng = 0;
	for (size_t i = 0; i < c->nrecs; i++)
		if (c->recs[i].gap_kind == SPOOL_GAP_AT_RISK)
			g[ng++] = &c->recs[i];
	qsort(g, ng, sizeof(*g), gap_rec_cmp);
	for (size_t i = 0; i + 1 < ng; i++)
		g[i]->superseded = g[i + 1]->id == g[i]->id && g[i + 1]->lane == g[i]->lane;
	free(g);
}

/*
 * The gap records of the load: an AT_RISK record not yet expired and not
 * followed by a CLEARED of its message in its lane keeps the message (up
 * to keep_max_us from now). Sorted by message, lane and position, walked
 * backwards per message: n log n in the gap records (every record of the
 * spool may be one of the at-risk set's 65536 and their watermarks).
 */
static void load_gaps_locked(struct spool_reclaim *r, struct load_ctx *c)
{
	int64_t now = wall_us();
	const struct rc_rec **g;
	size_t ng = 0;

	for (size_t i = 0; i < c->nrecs; i++)
		ng += c->recs[i].gap_kind != 0;
	if (!ng)
		return;
	g = malloc(ng * sizeof(*g));
	if (!g) {
		/* Without the sort: keep every unexpired AT_RISK (never less than the rule keeps). */
		for (size_t i = 0; i < c->nrecs; i++) {
			const struct rc_rec *a = &c->recs[i];
			uint32_t mi = a->gap_kind == SPOOL_GAP_AT_RISK && a->expires_us > now
					      ? msg_find(r, a->id)
					      : NIL;
			if (mi != NIL) {
				r->msgs[mi].keep_until_us =
					DS_MAX(r->msgs[mi].keep_until_us, keep_cap(r, a->expires_us, now));
				r->msgs[mi].gap_rec = true;
			}
		}
		return;
	}
	ng = 0;
	for (size_t i = 0; i < c->nrecs; i++)
		if (c->recs[i].gap_kind)
			g[ng++] = &c->recs[i];
	qsort(g, ng, sizeof(*g), gap_rec_cmp);
	bool cleared_later = false;
	for (size_t i = ng; i-- > 0;) {
		const struct rc_rec *a = g[i];
		if (i + 1 == ng || g[i + 1]->id != a->id || g[i + 1]->lane != a->lane)
			cleared_later = false; /* a new (message, lane): nothing after it yet */
		if (a->gap_kind == SPOOL_GAP_CLEARED) {
			cleared_later = true;
			continue;
		}
		if (a->gap_kind != SPOOL_GAP_AT_RISK || a->expires_us <= now || cleared_later)
			continue;
		uint32_t mi = msg_find(r, a->id);
		if (mi != NIL) {
			r->msgs[mi].keep_until_us =
				DS_MAX(r->msgs[mi].keep_until_us, keep_cap(r, a->expires_us, now));
			r->msgs[mi].gap_rec = true;
		}
	}
	free(g);
}

int spool_reclaim_load(struct spool_reclaim *r)
{
	struct load_ctx c = {.r = r};
	struct scan_cfg sc = {.msg_status = l_msg,
			      .aborted = l_aborted,
			      .dropped = l_dropped,
			      .bad = l_bad,
			      .seg = l_seg,
			      .delivery = l_delivery,
			      .ctx = &c};
	struct spool_reader *rd;
	int rc;

	rc = spool_reader_open(&rd, r->dir);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	rd->use_sums = !getenv("DS_SPOOL_NO_SUMMARIES"); /* format 4: sealed segments from summaries */
	pthread_mutex_lock(&r->mu);
	rc = spool_scan_spool(rd, &sc, NULL);
	if (!rc)
		rc = c.err;
	if (!rc) {
		/* Records after every commit is known (a DSN may be in any lane), finals last. */
		summaries_locked(r, &c);
		gaps_superseded(&c);
		for (size_t i = 0; i < c.nrecs; i++) {
			const struct rc_rec *e = &c.recs[i];
			if (e->keep && !e->superseded)
				msg_keep_locked(r, e->id, e->lane, e->seq, e->gap ? KEEP_GAP : KEEP_OP);
			else if (!e->keep && !e->superseded)
				msg_record_locked(r, e->id, e->lane, e->seq, e->dsn_id);
		}
		load_gaps_locked(r, &c);
		for (size_t i = 0; i < c.nfinals; i++)
			msg_final_locked(r, c.finals[i]);
	}
	r->dirty = true;
	pthread_mutex_unlock(&r->mu);
	spool_reader_close(rd);
	free(c.recs);
	free(c.finals);
	free(c.risk);
	return rc;
}

void spool_reclaim_dump(struct spool_reclaim *r, FILE *f)
{
	pthread_mutex_lock(&r->mu);
	for (uint32_t i = 0; i < r->nmsgs && getenv("DS_RECLAIM_DUMP_MSGS"); i++) {
		const struct rc_msg *m = &r->msgs[i];
		if (!m->used)
			continue;
		fprintf(f, "msg %016llx C %llu final %d moving %d kept %d gap %d snap %d lost %d refs",
			(unsigned long long)m->id,
			(unsigned long long)(r->segs[m->cseg].key & ((1ull << 40) - 1)), m->final, m->moving,
			m->final_wanted, m->gap_rec, m->snap != NULL, m->dsn_lost);
		for (uint32_t k = 0; k < m->nref; k++)
			fprintf(f, " %llu",
				(unsigned long long)(r->segs[m->ref[k]].key & ((1ull << 40) - 1)));
		fputc('\n', f);
	}
	for (uint32_t i = 0; i < r->nsegs; i++) {
		const struct rc_seg *s = &r->segs[i];
		unsigned lane = (unsigned)(s->key >> 40);
		if (!s->used)
			continue;
		fprintf(f,
			"lane %u seq %llu: known %d sealed %d pinned %d nonfinal %u waiting %u (top %llu low "
			"%llu)%s\n",
			lane, (unsigned long long)(s->key & ((1ull << 40) - 1)), s->known, s->sealed,
			s->pinned, s->nonfinal, s->waiting, (unsigned long long)r->lane_top[lane],
			(unsigned long long)r->lane_low[lane], reclaimable(r, s) ? " reclaimable" : "");
	}
	pthread_mutex_unlock(&r->mu);
}
