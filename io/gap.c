/* SPDX-License-Identifier: MIT */
/*
 * Synchronization-gap dedup (issue 16): the server-wide set of
 * fingerprints, the fingerprint helpers, and the per-connection glue
 * (gap.h has the rules).
 *
 * The set: one array of entries allocated at start-up (calloc: pages are
 * touched only as entries are used), chained by envelope digest, one
 * mutex. Transactions read it once, at data_begin, and only after one
 * relaxed load of the live count says it is not empty: with no message at
 * risk (the normal state) the ingest path takes no lock. Inserts and
 * removals happen per at-risk message and per confirmed retry (rare), and
 * per message with --gap-dedup-all (documented cost: one short critical
 * section per message at DATA and one at its 250).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "gap.h"
#include "io_types.h"
#include "spool_reclaim.h"

/* ---- the set ---- */

struct gap_entry {
	uint64_t id; /* 0: free */
	int64_t expires_us;
	uint64_t age; /* insertion order, for eviction of --gap-dedup-all entries */
	struct spool_gap_fp fp;
	uint32_t next; /* chain by digest, slot + 1 (0 ends) */
	bool at_risk;
};

struct io_gap {
	pthread_mutex_t mu;
	atomic_uint_fast64_t live; /* read without the lock: the empty fast path */
	uint32_t cap;
	uint32_t nbuckets;  /* power of 2 */
	uint32_t *bucket;   /* slot + 1, 0 empty */
	uint32_t free_head; /* slot + 1 */
	uint32_t fresh;	    /* slots [0, fresh) have been used */
	uint64_t age;
	uint64_t at_risk, full, evicted;
	struct gap_entry *e;
	/* AT_RISK records recovery owes the lanes (a crash's tail), taken by the workers. */
	struct spool_gap_rec *owed;
	size_t nowed, owed_cap;
};

int io_gap_create(struct io_gap **out, uint32_t entries_max)
{
	if (entries_max == 0 || entries_max > IO_GAP_ENTRIES_MAX)
		return -EINVAL;
	struct io_gap *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->cap = entries_max;
	g->nbuckets = 16;
	while (g->nbuckets < entries_max)
		g->nbuckets *= 2;
	g->bucket = calloc(g->nbuckets, sizeof(*g->bucket));
	g->e = calloc(entries_max, sizeof(*g->e));
	if (!g->bucket || !g->e) {
		free(g->bucket);
		free(g->e);
		free(g);
		return -ENOMEM;
	}
	pthread_mutex_init(&g->mu, NULL);
	*out = g;
	return 0;
}

void io_gap_destroy(struct io_gap *g)
{
	if (!g)
		return;
	pthread_mutex_destroy(&g->mu);
	free(g->owed);
	free(g->bucket);
	free(g->e);
	free(g);
}

static uint32_t bucket_of(const struct io_gap *g, uint64_t digest)
{
	return (uint32_t)(digest ^ (digest >> 29)) & (g->nbuckets - 1);
}

/* Entries are chained by sender and head: a retry to a subset of the recipients must find them. */
static uint64_t key_of(const struct spool_gap_fp *fp)
{
	return fp->sender_digest ^ (fp->head_hash * 0x9e3779b97f4a7c15ull);
}

/* Unlink and free slot i (locked). */
static void slot_drop(struct io_gap *g, uint32_t i)
{
	struct gap_entry *e = &g->e[i];
	uint32_t *pp = &g->bucket[bucket_of(g, key_of(&e->fp))];

	while (*pp && *pp != i + 1)
		pp = &g->e[*pp - 1].next;
	DS_ASSERT(*pp == i + 1);
	*pp = e->next;
	if (e->at_risk)
		g->at_risk--;
	memset(e, 0, sizeof(*e));
	e->next = g->free_head;
	g->free_head = i + 1;
	atomic_fetch_sub_explicit(&g->live, 1, memory_order_relaxed);
}

static void expire_locked(struct io_gap *g, int64_t now_us)
{
	for (uint32_t i = 0; i < g->fresh; i++)
		if (g->e[i].id && g->e[i].expires_us <= now_us)
			slot_drop(g, i);
}

/* A free slot, making room if it must (locked): slot + 1, or 0 when full of live at-risk entries. */
static uint32_t slot_get(struct io_gap *g, int64_t now_us)
{
	if (!g->free_head && g->fresh < g->cap) {
		g->e[g->fresh].next = 0;
		return ++g->fresh;
	}
	if (!g->free_head)
		expire_locked(g, now_us);
	if (!g->free_head) {
		/* Evict the oldest --gap-dedup-all entry: an at-risk one is never pushed out. */
		uint32_t victim = 0;
		for (uint32_t i = 0; i < g->fresh; i++)
			if (g->e[i].id && !g->e[i].at_risk && (!victim || g->e[i].age < g->e[victim - 1].age))
				victim = i + 1;
		if (!victim)
			return 0;
		slot_drop(g, victim - 1);
		g->evicted++;
	}
	uint32_t s = g->free_head;
	g->free_head = g->e[s - 1].next;
	return s;
}

int io_gap_insert(struct io_gap *g, uint64_t id, const struct spool_gap_fp *fp, int64_t expires_us,
		  bool at_risk)
{
	int64_t now = ds_wall_us();
	int ret = 0;

	if (!id || expires_us <= now)
		return -EINVAL;
	pthread_mutex_lock(&g->mu);
	uint32_t b = bucket_of(g, key_of(fp));
	for (uint32_t s = g->bucket[b]; s; s = g->e[s - 1].next) {
		struct gap_entry *e = &g->e[s - 1];
		if (e->id != id)
			continue;
		/* Known (--gap-dedup-all, or recovery and a live connection): upgrade. */
		if (at_risk && !e->at_risk)
			g->at_risk++;
		e->at_risk |= at_risk;
		e->expires_us = DS_MAX(e->expires_us, expires_us);
		goto out;
	}
	uint32_t s = slot_get(g, now);
	if (!s) {
		g->full++;
		ret = -ENOSPC;
		goto out;
	}
	struct gap_entry *e = &g->e[s - 1];
	e->id = id;
	e->expires_us = expires_us;
	e->age = ++g->age;
	e->fp = *fp;
	e->at_risk = at_risk;
	e->next = g->bucket[b];
	g->bucket[b] = s;
	g->at_risk += at_risk;
	atomic_fetch_add_explicit(&g->live, 1, memory_order_relaxed);
out:
	pthread_mutex_unlock(&g->mu);
	return ret;
}

/*
 * By id (compaction moving a kept message: rare, at most 64 a round): a walk
 * over the used slots under the lock, like expiry.
 */
static struct gap_entry *find_id_locked(struct io_gap *g, uint64_t id)
{
	for (uint32_t i = 0; i < g->fresh; i++)
		if (g->e[i].id == id)
			return &g->e[i];
	return NULL;
}

int io_gap_get(struct io_gap *g, uint64_t id, struct spool_gap_fp *fp, int64_t *expires_us)
{
	int ret = -ENOENT;

	if (!id)
		return -ENOENT;
	pthread_mutex_lock(&g->mu);
	const struct gap_entry *e = find_id_locked(g, id);
	if (e && e->at_risk) {
		*fp = e->fp;
		*expires_us = e->expires_us;
		ret = 0;
	}
	pthread_mutex_unlock(&g->mu);
	return ret;
}

void io_gap_relocate(struct io_gap *g, uint64_t id, unsigned lane, uint64_t seq, uint64_t off)
{
	/* Every message compaction moves comes here: nothing to do (no lock) while the set is empty. */
	if (!id || !atomic_load_explicit(&g->live, memory_order_relaxed))
		return;
	pthread_mutex_lock(&g->mu);
	struct gap_entry *e = find_id_locked(g, id);
	if (e) {
		/* Not part of the chain key (sender, head): the entry stays where it is. */
		e->fp.lane = lane;
		e->fp.seq = seq;
		e->fp.off = off;
	}
	pthread_mutex_unlock(&g->mu);
}

/* Every recipient of the retry (hashes q, nq) is one of the entry's: a retry to those that saw no reply. */
static bool rcpt_subset(const struct spool_gap_fp *e, const uint64_t *q, uint32_t nq)
{
	if (!e->nrh || !nq || nq > e->nrh)
		return false;
	for (uint32_t i = 0; i < nq; i++) {
		bool found = false;
		for (uint32_t k = 0; k < e->nrh && !found; k++)
			found = e->rcpt_h[k] == q[i];
		if (!found)
			return false;
	}
	return true;
}

unsigned io_gap_lookup(struct io_gap *g, const struct spool_gap_fp *q, int64_t now_us,
		       struct io_gap_cand *out, unsigned cap)
{
	unsigned n = 0, total = 0;

	if (!g || atomic_load_explicit(&g->live, memory_order_relaxed) == 0)
		return 0;
	pthread_mutex_lock(&g->mu);
	for (uint32_t s = g->bucket[bucket_of(g, key_of(q))]; s; s = g->e[s - 1].next) {
		const struct gap_entry *e = &g->e[s - 1];
		if (e->fp.sender_digest != q->sender_digest || e->fp.head_hash != q->head_hash ||
		    e->expires_us <= now_us)
			continue;
		if (!(e->fp.env_digest == q->env_digest && e->fp.rcpt_count == q->rcpt_count) &&
		    !rcpt_subset(&e->fp, q->rcpt_h, q->nrh))
			continue;
		/* Newest first: keep the cap most recent (a retry follows its original closely). */
		struct io_gap_cand c = {.slot = s - 1, .id = e->id, .at_risk = e->at_risk, .fp = e->fp};
		total++;
		unsigned k = n < cap ? n++ : cap;
		while (k > 0 && out[k - 1].fp.received_at_us < c.fp.received_at_us) {
			if (k < cap)
				out[k] = out[k - 1];
			k--;
		}
		if (k < cap)
			out[k] = c;
	}
	pthread_mutex_unlock(&g->mu);
	return total;
}

bool io_gap_remove(struct io_gap *g, uint32_t slot, uint64_t id)
{
	bool done = false;

	pthread_mutex_lock(&g->mu);
	if (slot < g->fresh && g->e[slot].id == id) {
		slot_drop(g, slot);
		done = true;
	}
	pthread_mutex_unlock(&g->mu);
	return done;
}

unsigned io_gap_remove_id(struct io_gap *g, uint64_t id)
{
	unsigned n = 0;

	pthread_mutex_lock(&g->mu);
	for (uint32_t i = 0; i < g->fresh; i++)
		if (g->e[i].id == id) {
			slot_drop(g, i);
			n++;
		}
	pthread_mutex_unlock(&g->mu);
	return n;
}

void io_gap_expire(struct io_gap *g, int64_t now_us)
{
	pthread_mutex_lock(&g->mu);
	expire_locked(g, now_us);
	pthread_mutex_unlock(&g->mu);
}

void io_gap_stats(struct io_gap *g, struct io_gap_stats *st)
{
	pthread_mutex_lock(&g->mu);
	st->entries = atomic_load_explicit(&g->live, memory_order_relaxed);
	st->at_risk = g->at_risk;
	st->full = g->full;
	st->evicted = g->evicted;
	st->capacity = g->cap;
	pthread_mutex_unlock(&g->mu);
}

int io_gap_owe(struct io_gap *g, const struct spool_gap_rec *rec)
{
	int ret = 0;
	pthread_mutex_lock(&g->mu);
	if (g->nowed == g->owed_cap) {
		size_t cap = g->owed_cap ? g->owed_cap * 2 : 64;
		struct spool_gap_rec *v = realloc(g->owed, cap * sizeof(*v));
		if (!v) {
			ret = -ENOMEM;
			goto out;
		}
		g->owed = v;
		g->owed_cap = cap;
	}
	g->owed[g->nowed++] = *rec;
out:
	pthread_mutex_unlock(&g->mu);
	return ret;
}

/* The owed records of lanes worker `no` of `threads` writes (lane % threads == no). */
static unsigned owed_take(struct io_gap *g, unsigned no, unsigned threads, struct spool_gap_rec *out,
			  unsigned cap)
{
	unsigned n = 0;
	pthread_mutex_lock(&g->mu);
	for (size_t i = 0; i < g->nowed && n < cap;) {
		if (g->owed[i].fp.lane % threads == no) {
			out[n++] = g->owed[i];
			g->owed[i] = g->owed[--g->nowed];
		} else {
			i++;
		}
	}
	pthread_mutex_unlock(&g->mu);
	return n;
}

/* ---- fingerprints ---- */

uint64_t io_gap_rcpt_hash(const char *addr)
{
	return XXH3_64bits_withSeed(addr, strlen(addr), 0x9e3779b97f4a7c15ull);
}

uint64_t io_gap_env_digest(const char *mail_from, uint64_t rcpt_sum, uint32_t rcpt_count)
{
	uint64_t v[3] = {io_gap_sender_digest(mail_from), rcpt_sum, rcpt_count};
	return XXH3_64bits(v, sizeof(v));
}

uint64_t io_gap_sender_digest(const char *mail_from)
{
	return XXH3_64bits(mail_from, strlen(mail_from));
}

int io_gap_hash_reset(struct io_gap_hash *h)
{
	if (!h->st) {
		h->st = XXH3_createState();
		if (!h->st)
			return -ENOMEM;
	}
	h->size = 0;
	return XXH3_128bits_reset(h->st) == XXH_OK ? 0 : -EINVAL;
}

void io_gap_hash_update(struct io_gap_hash *h, const void *buf, size_t len)
{
	XXH3_128bits_update(h->st, buf, len);
	h->size += len;
}

void io_gap_hash_final(const struct io_gap_hash *h, uint64_t *lo, uint64_t *hi)
{
	XXH128_hash_t r = XXH3_128bits_digest(h->st);
	*lo = r.low64;
	*hi = r.high64;
}

void io_gap_hash_free(struct io_gap_hash *h)
{
	if (h->st)
		XXH3_freeState(h->st);
	h->st = NULL;
}

/* Length of our Received: header at the start of a stored copy (folded lines), 0 if none. */
static size_t trace_header_len(const uint8_t *p, size_t n)
{
	if (n < 9 || memcmp(p, "Received:", 9))
		return 0;
	for (size_t i = 0; i + 1 < n; i++)
		if (p[i] == '\r' && p[i + 1] == '\n' && (i + 2 >= n || (p[i + 2] != ' ' && p[i + 2] != '\t')))
			return i + 2;
	return 0;
}

int io_gap_fp_stored(struct spool_fetch *f, unsigned lane, uint64_t seq, uint64_t off, uint64_t id,
		     uint8_t *scratch, size_t cap, struct spool_gap_fp *out)
{
	struct spool_fetch_msg fm;
	struct io_gap_hash h = {0};
	int ret = spool_fetch_get(f, lane, seq, off, id, &fm);

	if (ret < 0)
		return ret;
	uint64_t sum = 0, rh[8];
	for (uint32_t i = 0; i < fm.m.env.rcpt_count; i++) {
		uint64_t h1 = io_gap_rcpt_hash(fm.m.env.rcpt[i].addr);
		sum += h1;
		if (i < 8)
			rh[i] = h1;
	}
	*out = (struct spool_gap_fp){.env_digest =
					     io_gap_env_digest(fm.m.env.mail_from, sum, fm.m.env.rcpt_count),
				     .rcpt_count = fm.m.env.rcpt_count,
				     .lane = lane,
				     .seq = seq,
				     .off = off,
				     .received_at_us = fm.m.received_at_us};
	out->sender_digest = io_gap_sender_digest(fm.m.env.mail_from);
	out->nrh = fm.m.env.rcpt_count <= 8 ? fm.m.env.rcpt_count : 0;
	memcpy(out->rcpt_h, rh, sizeof(uint64_t) * out->nrh);
	/* The header is at most a few hundred bytes: read enough of the start to find its end. */
	size_t head = 0, want = (size_t)DS_MIN(fm.m.size, (uint64_t)DS_MIN(cap, (size_t)4096));
	while (head < want) {
		int r = spool_fetch_read(f, &fm, head, scratch + head, want - head);
		if (r <= 0) {
			ret = r < 0 ? r : -EBADMSG;
			goto out;
		}
		head += (size_t)r;
	}
	size_t hl = trace_header_len(scratch, head);
	if (!hl || (ret = io_gap_hash_reset(&h)) < 0) {
		ret = ret < 0 ? ret : -EBADMSG;
		goto out;
	}
	out->hdr_len = (uint32_t)hl;
	if (fm.m.size - hl > head - hl && head - hl < IO_GAP_HEAD_BYTES) {
		ret = -EBADMSG; /* cannot happen: the header is far shorter than what was read */
		goto out;
	}
	out->head_hash = XXH3_64bits(scratch + hl, DS_MIN(head - hl, (size_t)IO_GAP_HEAD_BYTES));
	io_gap_hash_update(&h, scratch + hl, head - hl);
	for (uint64_t pos = head; pos < fm.m.size;) {
		int r = spool_fetch_read(f, &fm, pos, scratch, cap);
		if (r <= 0) {
			ret = r < 0 ? r : -EBADMSG;
			goto out;
		}
		io_gap_hash_update(&h, scratch, (size_t)r);
		pos += (uint64_t)r;
	}
	out->size = h.size;
	io_gap_hash_final(&h, &out->hash_lo, &out->hash_hi);
	ret = 0;
out:
	io_gap_hash_free(&h);
	spool_fetch_put(f, &fm);
	return ret;
}

/* ---- per worker ---- */

#define GAP_SCRATCH_BYTES 65536

/* How long a stopping worker keeps trying to write its last watermark (ticks every 250 ms). */
#define IO_GAP_QUIESCE_MS 3000

struct io_gap_worker {
	struct io_gap *set;
	struct spool_fetch *fetch; /* the stored copies compared with */
	uint8_t *scratch;
	int64_t window_us;
	bool all;
	struct spool_gap_rec pend[IO_GAP_PEND_MAX]; /* records that found no lane room yet */
	unsigned npend;
	uint64_t cookies;
	int64_t expire_next_ms;
	/* The lane's watermark (FORMAT.md, "Gap records"): the last one written. */
	int64_t wm_next_ms;
	bool wm_written, wm_all, wm_final;
	uint64_t wm_seq, wm_off, wm_commits;
	int64_t quiesce_until_ms; /* stopping: give up the last watermark after this (0: not yet) */
	bool owed_done;		  /* recovery's owed records for our lanes taken */
};

int io_gap_worker_init(struct io_worker *w)
{
	if (!w->sh->gap || w->cfg->gap_window_s == 0)
		return 0;
	struct io_gap_worker *gw = calloc(1, sizeof(*gw));
	if (!gw)
		return -ENOMEM;
	gw->set = w->sh->gap;
	gw->window_us = (int64_t)w->cfg->gap_window_s * 1000000;
	gw->all = w->cfg->gap_all;
	gw->scratch = malloc(GAP_SCRATCH_BYTES);
	int ret = gw->scratch ? spool_fetch_open(&gw->fetch, w->cfg->spool_dir, 2 * IO_GAP_CAND_MAX + 2)
			      : -ENOMEM;
	if (ret < 0) {
		free(gw->scratch);
		free(gw);
		return ret;
	}
	w->gapw = gw;
	return 0;
}

void io_gap_worker_fini(struct io_worker *w)
{
	struct io_gap_worker *gw = w->gapw;
	if (!gw)
		return;
	spool_fetch_close(gw->fetch);
	free(gw->scratch);
	free(gw);
	w->gapw = NULL;
}

static void log_gap(struct io_worker *w, const char *event, uint64_t id, const struct io_conn *c,
		    const char *why)
{
	char idt[32];
	if (!obs_log_begin(w->log, OBS_LOG_INFO, event))
		return;
	spool_id_format(id, idt, sizeof(idt));
	obs_log_str(w->log, "queue_id", idt);
	if (c)
		obs_log_str(w->log, "client", c->peer_text);
	if (why)
		obs_log_str(w->log, "why", why);
	obs_log_end(w->log);
}

/* Stage a gap record in the worker's lane, or keep it for the next tick. */
static void record_put(struct io_worker *w, const struct spool_gap_rec *g)
{
	struct io_gap_worker *gw = w->gapw;
	int ret = spool_lane_gap(w->lane, g, IO_GAP_COOKIE_BIT | (++gw->cookies & 0xffffffffffull));
	if (ret == 0)
		return;
	if (ret == -EAGAIN && gw->npend < IO_GAP_PEND_MAX) {
		gw->pend[gw->npend++] = *g;
		return;
	}
	/* The entry still works in memory; only a restart forgets it (never a wrong suppression). */
	obs_metrics_gap_record_error(w->m);
}

void io_gap_settled(struct io_worker *w, uint64_t cookie, int res)
{
	if (res < 0)
		obs_metrics_gap_record_error(w->m);
}

static bool pos_lt(uint64_t s1, uint64_t o1, uint64_t s2, uint64_t o2)
{
	return s1 < s2 || (s1 == s2 && o1 < o2);
}

/*
 * The lane's watermark: the lowest commit of this lane whose 250's fate is
 * open (commit not settled yet, or 250 queued and not confirmed, in any of
 * our connections), or "every commit before this record" when none is.
 * Written when it moved, at most once a second, and only once every
 * AT_RISK record owed so far is staged before it (so it is durable first).
 */
static int watermark_put(struct io_worker *w, bool force)
{
	struct io_gap_worker *gw = w->gapw;
	uint64_t ms = UINT64_MAX, mo = UINT64_MAX;
	bool open = false;

	if (gw->npend)
		return -EAGAIN;
	for (uint32_t i = 0; i < w->conn_fresh; i++) {
		const struct io_conn *c = &w->conns[i];
		if (c->state == IO_CONN_FREE)
			continue;
		if (c->commit_pending && !c->commit_retry && !io_gap_dup_id(c) &&
		    pos_lt(c->commit_seq, c->commit_off, ms, mo)) {
			ms = c->commit_seq, mo = c->commit_off;
			open = true;
		}
		for (unsigned k = 0; c->gap && k < c->gap->nacks; k++) {
			const struct io_gap_ack_ent *a = &c->gap->acks[k];
			if (!a->dup && pos_lt(a->fp.seq, a->fp.off, ms, mo)) {
				ms = a->fp.seq, mo = a->fp.off;
				open = true;
			}
		}
	}
	struct spool_lane_stats st;
	spool_lane_stats(w->lane, &st);
	if (!force && gw->wm_written &&
	    (open ? !gw->wm_all && gw->wm_seq == ms && gw->wm_off == mo
		  : gw->wm_all && gw->wm_commits == st.commits))
		return 0;
	struct spool_gap_rec g = {.id = ((uint64_t)w->no << 56) | 1, /* the lane's padding id: no message */
				  .kind = SPOOL_GAP_REC_CLEARED,
				  .watermark = true,
				  .wm_all = !open,
				  .wm_seq = open ? ms : 0,
				  .wm_off = open ? mo : 0,
				  .wm_at_us = ds_wall_us()};
	int ret = spool_lane_gap(w->lane, &g, IO_GAP_COOKIE_BIT | (++gw->cookies & 0xffffffffffull));
	if (ret < 0)
		return ret;
	gw->wm_written = true;
	gw->wm_all = !open;
	gw->wm_seq = ms;
	gw->wm_off = mo;
	gw->wm_commits = st.commits;
	return 0;
}

bool io_gap_quiesce(struct io_worker *w)
{
	struct io_gap_worker *gw = w->gapw;
	if (!gw || gw->wm_final)
		return true;
	/* Stopping, every connection gone: a last watermark, so a clean restart has no tail at risk. */
	int ret = watermark_put(w, true);
	if (ret == 0) {
		gw->wm_final = true;
		return true;
	}
	/*
	 * A lane that cannot take the record (full disk, failed segments) must not
	 * keep the server from stopping (seen: it_watermark hung on a full file
	 * system). Without a last watermark the next start treats the tail after
	 * the previous one as at risk (FORMAT.md), and records still pending are
	 * lost: their retries are stored, never suppressed on a guess.
	 */
	int64_t now = ds_mono_ms();
	if (!gw->quiesce_until_ms)
		gw->quiesce_until_ms = now + IO_GAP_QUIESCE_MS;
	if (now < gw->quiesce_until_ms)
		return false;
	if (obs_log_begin(w->log, OBS_LOG_WARN, "gap_final_watermark_lost")) {
		obs_log_u64(w->log, "worker", w->no);
		obs_log_str(w->log, "error", strerror(-ret));
		obs_log_u64(w->log, "records_pending", gw->npend);
		obs_log_end(w->log);
	}
	gw->wm_final = true;
	return true;
}

void io_gap_tick(struct io_worker *w, int64_t now_ms)
{
	struct io_gap_worker *gw = w->gapw;
	if (!gw)
		return;
	if (!gw->owed_done) {
		/* Recovery's at-risk tail of our lanes, recorded before our first watermark. */
		struct spool_gap_rec v[64];
		unsigned k;
		while ((k = owed_take(gw->set, w->no, w->cfg->threads, v, 64)) > 0)
			for (unsigned i = 0; i < k; i++)
				record_put(w, &v[i]);
		gw->owed_done = true;
	}
	unsigned n = gw->npend;
	gw->npend = 0;
	for (unsigned i = 0; i < n; i++)
		record_put(w, &gw->pend[i]);
	if (now_ms >= gw->wm_next_ms && watermark_put(w, false) == 0)
		gw->wm_next_ms = now_ms + 1000;
	if (now_ms >= gw->expire_next_ms) {
		gw->expire_next_ms = now_ms + 1000;
		io_gap_expire(gw->set, ds_wall_us());
		if (w->no == 0) {
			/* Server-wide gauges: worker 0 sets them, the others' stay 0 (the render sums). */
			struct io_gap_stats st;
			io_gap_stats(gw->set, &st);
			obs_metrics_gap_set(w->m, st.entries, st.at_risk, st.full);
		}
	}
}

/* ---- per connection ---- */

static struct io_gap_conn *gc_get(struct io_conn *c)
{
	if (!c->w->gapw)
		return NULL;
	if (!c->gap) {
		c->gap = calloc(1, sizeof(*c->gap));
		if (c->gap)
			c->gap->match = -1;
	}
	return c->gap;
}

static void cand_release(struct io_conn *c, struct io_gap_conn *gc)
{
	for (unsigned i = 0; i < gc->ncand; i++)
		if (gc->cand_open[i]) {
			spool_fetch_put(c->w->gapw->fetch, &gc->fm[i]);
			gc->cand_open[i] = false;
		}
	gc->ncand = 0;
}

static void rcpt_add(void *ctx, const char *addr)
{
	struct io_gap_conn *gc = ctx;
	uint64_t h = io_gap_rcpt_hash(addr);
	gc->rcpt_sum += h;
	if (gc->rcpt_count < 8)
		gc->rcpt_h[gc->rcpt_count] = h;
	gc->rcpt_count++;
}

void io_gap_on_begin(struct io_conn *c)
{
	struct io_gap_conn *gc = gc_get(c);
	if (!gc)
		return;
	cand_release(c, gc);
	gc->match = -1;
	gc->cur_ok = false;
	gc->in_data = io_gap_hash_reset(&gc->hash) == 0;
	gc->hdr_seen = false;
	gc->hdr_len = 0;
	gc->rcpt_sum = 0;
	gc->rcpt_count = 0;
	smtp_session_each_rcpt(c->s, rcpt_add, gc);
	gc->env_digest = io_gap_env_digest(smtp_session_mail_from(c->s), gc->rcpt_sum, gc->rcpt_count);
	gc->sender_digest = io_gap_sender_digest(smtp_session_mail_from(c->s));
	gc->head_len = 0;
	gc->looked_up = false;
}

static bool cand_cmp(struct io_conn *c, struct io_gap_conn *gc, unsigned i, uint64_t pos, const uint8_t *buf,
		     size_t len);

/*
 * The first IO_GAP_HEAD_BYTES of the message (or all of a shorter one) are
 * in: look the set up on envelope + head hash (almost every transaction
 * stops here: an empty set, or no entry with this envelope and head), open
 * the stored copies of the candidates and compare the head with them.
 */
static void head_lookup(struct io_conn *c, struct io_gap_conn *gc)
{
	struct io_gap_worker *gw = c->w->gapw;
	gc->looked_up = true;
	gc->head_hash = XXH3_64bits(gc->head, gc->head_len);
	struct spool_gap_fp q = {.env_digest = gc->env_digest,
				 .rcpt_count = gc->rcpt_count,
				 .head_hash = gc->head_hash,
				 .sender_digest = gc->sender_digest,
				 .nrh = gc->rcpt_count <= 8 ? gc->rcpt_count : 0};
	memcpy(q.rcpt_h, gc->rcpt_h, sizeof(uint64_t) * q.nrh);
	unsigned n = io_gap_lookup(gw->set, &q, ds_wall_us(), gc->cand, IO_GAP_CAND_MAX);
	gc->ncand = DS_MIN(n, IO_GAP_CAND_MAX);
	for (unsigned i = 0; i < gc->ncand; i++) {
		const struct spool_gap_fp *fp = &gc->cand[i].fp;
		/* Unreadable (reclaimed, damaged): compared with nothing, so never a match. */
		gc->cand_open[i] = spool_fetch_get(gw->fetch, fp->lane, fp->seq, fp->off, gc->cand[i].id,
						   &gc->fm[i]) == 0 &&
				   gc->fm[i].m.size == (uint64_t)fp->hdr_len + fp->size;
		gc->cand_same[i] = gc->cand_open[i] && cand_cmp(c, gc, i, 0, gc->head, gc->head_len);
	}
}

/* Compare buf with stored copy i at message offset pos (after its header). */
static bool cand_cmp(struct io_conn *c, struct io_gap_conn *gc, unsigned i, uint64_t pos, const uint8_t *buf,
		     size_t len)
{
	struct io_gap_worker *gw = c->w->gapw;
	const struct spool_gap_fp *fp = &gc->cand[i].fp;
	if (pos + len > fp->size)
		return false;
	while (len) {
		size_t k = DS_MIN(len, (size_t)GAP_SCRATCH_BYTES);
		int r = spool_fetch_read(gw->fetch, &gc->fm[i], fp->hdr_len + pos, gw->scratch, k);
		if (r <= 0)
			return false; /* -EBADMSG (its CRC), gone: never suppress on a guess */
		if (memcmp(gw->scratch, buf, (size_t)r))
			return false;
		buf += r;
		len -= (size_t)r;
		pos += (uint64_t)r;
	}
	return true;
}

void io_gap_on_write(struct io_conn *c, const void *buf, size_t len)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc || !gc->in_data)
		return;
	if (!gc->hdr_seen) {
		/* Our Received: header (smtp.h: exactly the first data_write): not the client's bytes. */
		gc->hdr_seen = true;
		gc->hdr_len = (uint32_t)len;
		return;
	}
	const uint8_t *p = buf;
	uint64_t pos = gc->hash.size;
	io_gap_hash_update(&gc->hash, buf, len);
	if (!gc->looked_up) {
		size_t k = DS_MIN(len, (size_t)(IO_GAP_HEAD_BYTES - gc->head_len));
		memcpy(gc->head + gc->head_len, p, k);
		gc->head_len += (uint32_t)k;
		if (gc->head_len < IO_GAP_HEAD_BYTES)
			return;
		head_lookup(c, gc);
		p += k;
		len -= k;
		pos += k;
	}
	for (unsigned i = 0; i < gc->ncand && len; i++)
		if (gc->cand_same[i] && !cand_cmp(c, gc, i, pos, p, len))
			gc->cand_same[i] = false;
}

bool io_gap_on_commit(struct io_conn *c, const struct ds_envelope *env)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc)
		return false;
	gc->cur_ok = false;
	if (!gc->in_data)
		return false;
	gc->in_data = false;
	if (!gc->looked_up)
		head_lookup(c, gc); /* a message shorter than the head: all of it is in gc->head */
	gc->cur = (struct spool_gap_fp){.env_digest = gc->env_digest,
					.head_hash = gc->head_hash,
					.sender_digest = gc->sender_digest,
					.nrh = gc->rcpt_count <= 8 ? gc->rcpt_count : 0,
					.rcpt_count = gc->rcpt_count,
					.hdr_len = gc->hdr_len,
					.size = gc->hash.size,
					.lane = c->w->no,
					.received_at_us = env->received_at_us};
	memcpy(gc->cur.rcpt_h, gc->rcpt_h, sizeof(uint64_t) * gc->cur.nrh);
	io_gap_hash_final(&gc->hash, &gc->cur.hash_lo, &gc->cur.hash_hi);
	gc->match = -1;
	for (unsigned i = 0; i < gc->ncand && gc->match < 0; i++) {
		const struct spool_gap_fp *fp = &gc->cand[i].fp;
		/* Every byte compared equal, the same length, and (belt and braces) the same hash. */
		if (gc->cand_same[i] && fp->size == gc->cur.size && fp->hash_lo == gc->cur.hash_lo &&
		    fp->hash_hi == gc->cur.hash_hi &&
		    spool_fetch_read(c->w->gapw->fetch, &gc->fm[i], fp->hdr_len + fp->size,
				     c->w->gapw->scratch, 1) == 0)
			gc->match = (int)i;
		else if (gc->cand_open[i])
			obs_metrics_gap_compare_miss(c->w->m);
	}
	if (gc->match >= 0) {
		const struct io_gap_cand *m = &gc->cand[gc->match];
		char orig[32], txn[32];
		spool_id_format(m->id, orig, sizeof(orig));
		spool_id_format(c->txn.id, txn, sizeof(txn));
		obs_metrics_gap_suppressed(c->w->m);
		if (obs_log_begin(c->w->log, OBS_LOG_INFO, "gap_retry_suppressed")) {
			obs_log_str(c->w->log, "queue_id", orig);
			obs_log_str(c->w->log, "retry_id", txn);
			obs_log_str(c->w->log, "client", c->peer_text);
			obs_log_str(c->w->log, "sender", env->mail_from);
			obs_log_u64(c->w->log, "rcpts", env->rcpt_count);
			obs_log_u64(c->w->log, "size", gc->cur.size);
			obs_log_bool(c->w->log, "at_risk", m->at_risk);
			obs_log_end(c->w->log);
		}
	}
	gc->cur_ok = true;
	cand_release(c, gc);
	return gc->match >= 0;
}

uint64_t io_gap_dup_id(const struct io_conn *c)
{
	const struct io_gap_conn *gc = c->gap;
	return gc && gc->match >= 0 ? gc->cand[gc->match].id : 0;
}

void io_gap_on_abort(struct io_conn *c)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc)
		return;
	gc->in_data = false;
	cand_release(c, gc);
}

/* A 250 is queued: remember it until the client shows it read it. */
static void ack_push(struct io_conn *c, struct io_gap_conn *gc, const struct io_gap_ack_ent *a)
{
	if (gc->nacks == IO_GAP_ACKS_MAX) {
		/*
		 * More unconfirmed 250s than we track (pipelined BDAT transactions):
		 * forget the oldest. Forgetting errs toward a duplicate, never
		 * toward suppressing a message that was not at risk.
		 */
		memmove(&gc->acks[0], &gc->acks[1], sizeof(gc->acks[0]) * (IO_GAP_ACKS_MAX - 1));
		gc->nacks--;
	}
	gc->acks[gc->nacks++] = *a;
}

void io_gap_on_acked(struct io_conn *c, uint64_t id, uint64_t seq, uint64_t off)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc || !gc->cur_ok)
		return;
	gc->cur_ok = false;
	struct io_gap_ack_ent a = {.state = IO_GAP_ACK_QUEUED, .id = id, .fp = gc->cur};
	a.fp.seq = seq;
	a.fp.off = off;
	ack_push(c, gc, &a);
	struct io_gap_worker *gw = c->w->gapw;
	/*
	 * --reclaim: a message delivered before its fate is known would be final
	 * and gone before an AT_RISK record could keep it. Keep it provisionally
	 * until the client confirms (then released) or the connection ends (the
	 * AT_RISK record extends it to the window); a client silent for longer
	 * than this loses the protection (its retry is stored: a duplicate, never
	 * a loss).
	 */
	if (c->w->cfg->spool.reclaim)
		spool_reclaim_msg_keep(c->w->cfg->spool.reclaim, id,
				       ds_wall_us() + IO_GAP_KEEP_PROVISIONAL_US);
	if (gw->all)
		io_gap_insert(gw->set, id, &a.fp, ds_wall_us() + gw->window_us, false);
}

void io_gap_on_dup_replied(struct io_conn *c)
{
	struct io_gap_conn *gc = c->gap;
	DS_ASSERT(gc && gc->match >= 0);
	const struct io_gap_cand *m = &gc->cand[gc->match];
	struct io_gap_ack_ent a = {.state = IO_GAP_ACK_QUEUED,
				   .dup = true,
				   .cand_at_risk = m->at_risk,
				   .id = m->id,
				   .slot = m->slot,
				   .fp = m->fp};
	gc->match = -1;
	gc->cur_ok = false;
	ack_push(c, gc, &a);
}

void io_gap_on_sent(struct io_conn *c)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc)
		return;
	for (unsigned i = 0; i < gc->nacks; i++)
		if (gc->acks[i].state == IO_GAP_ACK_QUEUED)
			gc->acks[i].state = IO_GAP_ACK_SENT;
}

void io_gap_on_input(struct io_conn *c)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc || gc->nacks == 0)
		return;
	unsigned keep = 0;
	for (unsigned i = 0; i < gc->nacks; i++) {
		struct io_gap_ack_ent *a = &gc->acks[i];
		if (a->state != IO_GAP_ACK_SENT) {
			gc->acks[keep++] = *a; /* not out yet when these bytes were sent: proves nothing */
			continue;
		}
		/* Confirmed: an original stored here no longer needs keeping for the gap. */
		if (!a->dup && c->w->cfg->spool.reclaim)
			spool_reclaim_msg_keep(c->w->cfg->spool.reclaim, a->id, 0);
		/* A retry we answered "already queued": the original is safe, the entry goes. */
		if (a->dup && a->cand_at_risk && io_gap_remove(c->w->gapw->set, a->slot, a->id)) {
			struct spool_gap_rec g = {.id = a->id, .kind = SPOOL_GAP_REC_CLEARED};
			record_put(c->w, &g);
			log_gap(c->w, "gap_cleared", a->id, c, "retry_confirmed");
		}
	}
	gc->nacks = keep;
}

void io_gap_on_close(struct io_conn *c)
{
	struct io_gap_conn *gc = c->gap;
	if (!gc)
		return;
	cand_release(c, gc);
	struct io_gap_worker *gw = c->w->gapw;
	for (unsigned i = 0; i < gc->nacks; i++) {
		const struct io_gap_ack_ent *a = &gc->acks[i];
		/* A retry's unconfirmed "already queued": its original's entry simply stays. */
		if (a->dup)
			continue;
		int64_t exp = ds_wall_us() + gw->window_us;
		int ret = io_gap_insert(gw->set, a->id, &a->fp, exp, true);
		obs_metrics_gap_at_risk(c->w->m);
		log_gap(c->w, "gap_at_risk", a->id, c,
			a->state == IO_GAP_ACK_QUEUED ? "closed_before_250_sent"
						      : "closed_before_client_spoke");
		if (ret == 0) {
			struct spool_gap_rec g = {
				.id = a->id, .kind = SPOOL_GAP_REC_AT_RISK, .expires_us = exp, .fp = a->fp};
			record_put(c->w, &g);
		}
	}
	gc->nacks = 0;
}

void io_gap_conn_free(struct io_conn *c)
{
	if (!c->gap)
		return;
	io_gap_hash_free(&c->gap->hash);
	free(c->gap);
	c->gap = NULL;
}
