/* SPDX-License-Identifier: MIT */
/* The lane scanning engine shared by the reader and recovery: see spool_scan.h. */
#include "spool_scan.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "ds_assert.h"
#include "ds_grow.h"
#include "spool_sum.h"

/*
 * Open, map and check one segment file: the header (magic, size, CRC,
 * version) must name this lane and sequence, or s->hdr_rc says why not
 * (-ENODATA: too short or never finished, -EBADMSG, -EPROTONOSUPPORT).
 * 0 with s->state RSEG_MAPPED, or -errno from open/mmap (the file is not
 * there for this reader). The map is read-only and shared: it sees what a
 * live lane writes.
 */
int spool_scan_seg_open(const char *dir, unsigned lane, struct rseg *s)
{
	char path[PATH_MAX];
	struct stat stt;
	int fd, rc;
	void *m;

	s->map = NULL;
	s->size = 0;
	if (spool_seg_path(path, sizeof(path), dir, lane, s->seq))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno; /* removed meanwhile, or never there */
	if (fstat(fd, &stt) || stt.st_size < (off_t)SPOOL_SEG_DATA_OFF) {
		close(fd);
		s->hdr_rc = -ENODATA;
		s->state = RSEG_MAPPED;
		return 0;
	}
	m = mmap(NULL, (size_t)stt.st_size, PROT_READ, MAP_SHARED, fd, 0);
	rc = m == MAP_FAILED ? -errno : 0;
	close(fd);
	if (rc)
		return rc;
	s->map = m;
	s->size = (uint64_t)stt.st_size;
	s->map_size = s->size;
	s->hdr_rc = spool_seg_hdr_decode(s->map, s->size, &s->hdr);
	if (!s->hdr_rc && (s->hdr.seq != s->seq || s->hdr.lane != lane))
		s->hdr_rc = -EBADMSG;
	if (!s->hdr_rc && s->hdr.segment_size < s->size)
		s->size = s->hdr.segment_size;
	s->state = RSEG_MAPPED;
	return 0;
}

void spool_scan_seg_close(struct rseg *s)
{
	spool_sum_free(s->sum);
	s->sum = NULL;
	s->sealed_to = 0;
	if (s->map)
		munmap((void *)s->map, s->map_size);
	s->map = NULL;
	s->size = s->map_size = 0;
	s->state = RSEG_LISTED;
}

/*
 * Open and map one listed segment. Returns false if it is gone (removed
 * since it was listed, or not mappable): such a segment does not exist for
 * the reader.
 */
bool spool_scan_seg_map(struct spool_reader *r, struct rlane *rl, struct rseg *s)
{
	if (s->state != RSEG_LISTED)
		return s->state == RSEG_MAPPED;
	if (spool_scan_seg_open(r->dir, rl->lane, s)) {
		s->state = RSEG_GONE;
		return false;
	}
	return true;
}

/* Map every listed segment of the lane, in order; segments that are gone are dropped from the list. */
void spool_scan_lane_map_all(struct spool_reader *r, struct rlane *rl)
{
	unsigned n = 0;

	if (rl->all_mapped)
		return;
	for (unsigned i = 0; i < rl->nsegs; i++)
		if (spool_scan_seg_map(r, rl, &rl->segs[i]))
			rl->segs[n++] = rl->segs[i];
	rl->nsegs = n;
	rl->all_mapped = true;
}

/*
 * Recovery's preparation of a lane (use_sums): its segments mapped (the
 * header page read) and the summaries read. Segments without one are not
 * read ahead here: measured on 10 GiB (bench/sizes/startup.py), reading
 * them ahead from two threads before the scan made a cold start slower
 * (11.3 s against 9.4 s for the serial scan alone).
 */
static void lane_prepare(struct spool_reader *r, struct rlane *rl)
{
	spool_scan_lane_map_all(r, rl);
	for (unsigned i = 0; i < rl->nsegs; i++) {
		struct rseg *s = &rl->segs[i];

		if (s->hdr_rc || s->sum)
			continue;
		int rc = spool_sum_load(r->dir, rl->lane, &s->hdr, s->size, &s->sum);
		if (!rc) {
			s->sealed_to = s->sum->flags & SPOOL_SUM_F_SEALED ? s->sum->end : 0;
			continue;
		}
		/* Torn or another segment's: removed, so the lane writes it again (spool_sumw.h). */
		if (rc == -EBADMSG || rc == -ESTALE)
			spool_sum_unlink_seq(r->dir, rl->lane, s->seq);
	}
}

struct prep_pool {
	struct spool_reader *r;
	pthread_mutex_t mu;
	unsigned next;
};

static void *prep_thread(void *arg)
{
	struct prep_pool *pp = arg;

	for (;;) {
		unsigned i;
		pthread_mutex_lock(&pp->mu);
		i = pp->next++;
		pthread_mutex_unlock(&pp->mu);
		if (i >= pp->r->nlanes)
			return NULL;
		lane_prepare(pp->r, &pp->r->lanes[i]);
	}
}

#define PREP_THREADS_MAX 16

/*
 * Whole-spool operations (foreach, verify, stats, recovery) see every
 * segment listed at open. With use_sums, lanes are prepared in parallel:
 * a thread per lane up to the CPU count (at least 2: the work is mostly
 * waiting on the disk), each reading summaries and segments of its lanes.
 * The scan after it is the same serial scan, so its results do not depend
 * on the threads.
 */
void spool_scan_reader_map_all(struct spool_reader *r)
{
	struct prep_pool pp = {.r = r};
	pthread_t th[PREP_THREADS_MAX];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = 0, want;

	if (!r->use_sums || r->nlanes == 0) {
		for (unsigned i = 0; i < r->nlanes; i++)
			spool_scan_lane_map_all(r, &r->lanes[i]);
		return;
	}
	want = (unsigned)DS_MIN((long)r->nlanes, DS_MAX(cpus, 2L));
	want = DS_MIN(want, (unsigned)PREP_THREADS_MAX);
	pthread_mutex_init(&pp.mu, NULL);
	for (; n < want; n++)
		if (pthread_create(&th[n], NULL, prep_thread, &pp))
			break;
	if (n == 0)
		prep_thread(&pp);
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&pp.mu);
}

/* List the lane's segments; they are mapped when first needed (spool_scan_seg_map). */
/* ---- chunk table: txn id -> chunks seen (open addressing) ---- */

struct ctab_ent {
	uint64_t id; /* 0 = empty; txn ids are never 0 (segment seqs start at 1) */
	uint64_t bytes;
	uint32_t count;
};

struct ctab {
	struct ctab_ent *e;
	uint64_t cap, n;
};

static uint64_t ctab_hash(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

static int ctab_grow(struct ctab *t)
{
	uint64_t ncap = t->cap ? t->cap * 2 : 1024;
	struct ctab_ent *ne = calloc(ncap, sizeof(*ne));

	if (!ne)
		return -ENOMEM;
	for (uint64_t i = 0; i < t->cap; i++) {
		uint64_t h;
		if (!t->e[i].id)
			continue;
		for (h = ctab_hash(t->e[i].id) & (ncap - 1); ne[h].id; h = (h + 1) & (ncap - 1))
			;
		ne[h] = t->e[i];
	}
	free(t->e);
	t->e = ne;
	t->cap = ncap;
	return 0;
}

static struct ctab_ent *ctab_get(struct ctab *t, uint64_t id, bool create)
{
	uint64_t h;

	if (create && (t->n + 1) * 2 > t->cap && ctab_grow(t))
		return NULL;
	if (!t->cap)
		return NULL;
	for (h = ctab_hash(id) & (t->cap - 1); t->e[h].id; h = (h + 1) & (t->cap - 1))
		if (t->e[h].id == id)
			return &t->e[h];
	if (!create)
		return NULL;
	t->e[h].id = id;
	t->n++;
	return &t->e[h];
}

static void ctab_del(struct ctab *t, struct ctab_ent *e)
{
	uint64_t i = (uint64_t)(e - t->e), j = i;

	/* Backward-shift deletion keeps probe chains intact without tombstones. */
	for (;;) {
		uint64_t k;
		j = (j + 1) & (t->cap - 1);
		if (!t->e[j].id)
			break;
		k = ctab_hash(t->e[j].id) & (t->cap - 1);
		if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
			t->e[i] = t->e[j];
			i = j;
		}
	}
	memset(&t->e[i], 0, sizeof(t->e[i]));
	t->n--;
}

/* ---- body walk ---- */

struct next_chunk {
	uint64_t id;
	struct spool_rec *out;
};

static int next_chunk_rec(void *ctx, const struct spool_rec *rec)
{
	struct next_chunk *nc = ctx;

	if (rec->type != SPOOL_REC_CHUNK || rec->txn_id != nc->id)
		return 0;
	*nc->out = *rec;
	return 1;
}

int spool_scan_chunk_next(const struct spool_msg *m, struct spool_chunk_pos *pos,
			  int (*seg)(void *ctx, uint64_t seq, const struct rseg **out), void *ctx,
			  struct spool_rec *out)
{
	static const struct spool_scan_ops nops = {.rec = next_chunk_rec};
	struct next_chunk nc = {.id = m->id, .out = out};

	DS_ASSERT(pos->seq >= m->first_seq);
	for (; pos->seq <= m->seq; pos->seq++, pos->off = SPOOL_SEG_DATA_OFF) {
		const struct rseg *s = NULL;
		uint64_t end;
		int rc = seg(ctx, pos->seq, &s);

		/*
		 * No file of that number: it was never created (writers up to
		 * a9238e9 skipped a number when a segment failed to be
		 * prepared), so none of the body is there. A missing piece shows
		 * in the chunk count, length and CRC. The segments of the first
		 * chunk and of the commit must be there.
		 */
		if (rc == -ENOENT && pos->seq != m->first_seq && pos->seq != m->seq)
			continue;
		if (rc == -ENOENT || (!rc && s->hdr_rc))
			return -EBADMSG;
		if (rc)
			return rc;
		/* Chunks precede their commit in the lane's stream. */
		end = pos->seq == m->seq ? DS_MIN(s->size, m->off) : s->size;
		if (pos->off < end && spool_seg_scan(s->map, end, s->hdr.epoch, pos->off, &nops, &nc) == 1) {
			pos->off = out->off + out->total;
			return 0;
		}
	}
	return -ENOENT;
}

struct walk_segs {
	struct spool_reader *r;
	struct rlane *rl;
};

static int walk_seg(void *ctx, uint64_t seq, const struct rseg **out)
{
	struct walk_segs *w = ctx;
	struct rseg *s = spool_scan_seg_find(w->rl, seq);

	if (!s || !spool_scan_seg_map(w->r, w->rl, s))
		return -ENOENT;
	*out = s;
	return 0;
}

unsigned spool_scan_seg_index(const struct rlane *rl, uint64_t seq)
{
	unsigned lo = 0, hi = rl->nsegs;

	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (rl->segs[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct rseg *spool_scan_seg_find(struct rlane *rl, uint64_t seq)
{
	unsigned i = spool_scan_seg_index(rl, seq);

	return i < rl->nsegs && rl->segs[i].seq == seq ? &rl->segs[i] : NULL;
}

/*
 * Walk the chunks of a commit, from its first chunk record up to the
 * commit record. 0 if all chunks were found with the right total length
 * and CRC, -EBADMSG if not, or fn's non-zero return.
 */
int spool_scan_body_walk(struct spool_reader *r, struct rlane *rl, const struct spool_msg *m,
			 int (*fn)(void *, const void *, size_t), void *ctx)
{
	struct walk_segs ws = {.r = r, .rl = rl};
	struct spool_chunk_pos pos = {.seq = m->first_seq, .off = m->first_off};
	uint64_t bytes = 0;
	uint32_t got = 0, crc = 0;

	if (m->chunk_count == 0)
		return m->size == 0 ? 0 : -EBADMSG;
	while (got < m->chunk_count) {
		struct spool_rec rec;
		int rc = spool_scan_chunk_next(m, &pos, walk_seg, &ws, &rec);

		if (rc == -ENOENT)
			break;
		if (rc)
			return rc;
		got++;
		bytes += rec.len;
		crc = crc32c(crc, rec.payload, rec.len);
		if (fn && (rc = fn(ctx, rec.payload, rec.len)))
			return rc;
	}
	if (got != m->chunk_count || bytes != m->size || crc != m->body_crc)
		return -EBADMSG;
	return 0;
}

/* ---- lane scan engine ---- */

struct chunk_seen {
	uint64_t txn_id;
	uint64_t len;
};

struct pend_commit {
	uint64_t off, end;
	uint64_t txn_id;
	const uint8_t *payload;
	uint32_t len;
	bool chunks_ok;
};

#define BAD_REGIONS_MAX 4096

struct bad_region {
	uint64_t from, to;
	bool tail, zero;
};

struct seg_scan {
	struct bad_region bad[BAD_REGIONS_MAX];
	struct spool_rec *dl; /* outcome and abort records of the segment (format 2) */
	size_t ndl, capdl;
	unsigned nbad;
	struct spool_reader *r;
	struct rlane *rl;
	struct rseg *s;
	const struct scan_cfg *cfg;
	struct ctab *tab;
	uint64_t only_id; /* non-zero: keep only this txn's chunks and commit (spool_reader_read) */
	uint64_t watermark;
	struct pend_commit *pc;
	size_t npc, cap;
	struct chunk_seen *ch;
	size_t nch, capch;
	int err;
};

static int seg_rec(void *ctx, const struct spool_rec *rec)
{
	struct seg_scan *ss = ctx;

	/* What spool_seg_scan() hands out was validated: the format's promises hold. */
	DS_ASSERT(rec->type >= SPOOL_REC_CHUNK && rec->type <= SPOOL_REC_TYPE_LAST);
	DS_ASSERT(rec->off >= SPOOL_SEG_DATA_OFF && rec->off % SPOOL_REC_ALIGN == 0);
	DS_ASSERT(rec->type != SPOOL_REC_CHUNK || rec->len <= SPOOL_CHUNK_MAX);
	DS_ASSERT(rec->type != SPOOL_REC_COMMIT || rec->len <= SPOOL_COMMIT_MAX);
	DS_ASSERT(rec->total == spool_rec_total(rec->len));
	/* Every record, delivery records too, vouches for the bytes below its watermark. */
	ss->watermark = DS_MAX(ss->watermark, rec->durable_off);
	if (ss->only_id && rec->txn_id != ss->only_id)
		return 0; /* still counted in the watermark above: the verdict on only_id needs it */
	if (rec->type != SPOOL_REC_CHUNK && rec->type != SPOOL_REC_COMMIT) {
		struct spool_rec *dl;

		if (ss->only_id || !ss->cfg->delivery)
			return 0;
		dl = ds_grow(ss->dl, &ss->capdl, ss->ndl, sizeof(*dl), 64);
		if (!dl) {
			ss->err = -ENOMEM;
			return 1;
		}
		ss->dl = dl;
		ss->dl[ss->ndl++] = *rec;
		return 0;
	}
	if (rec->type == SPOOL_REC_CHUNK) {
		/* Counted into the lane's table only once the segment's scan is accepted. */
		struct chunk_seen *ch = ds_grow(ss->ch, &ss->capch, ss->nch, sizeof(*ch), 1024);
		if (!ch) {
			ss->err = -ENOMEM;
			return 1;
		}
		ss->ch = ch;
		ss->ch[ss->nch++] = (struct chunk_seen){rec->txn_id, rec->len};
		return 0;
	}
	struct pend_commit *pc = ds_grow(ss->pc, &ss->cap, ss->npc, sizeof(*pc), 256);
	if (!pc) {
		ss->err = -ENOMEM;
		return 1;
	}
	ss->pc = pc;
	ss->pc[ss->npc++] = (struct pend_commit){.off = rec->off,
						 .end = rec->off + rec->total,
						 .txn_id = rec->txn_id,
						 .payload = rec->payload,
						 .len = rec->len};
	return 0;
}

static void seg_bad(void *ctx, uint64_t from, uint64_t to, bool tail, bool zero)
{
	struct seg_scan *ss = ctx;

	DS_ASSERT(from < to && from >= SPOOL_SEG_DATA_OFF);
	/*
	 * A recycled segment (format 5) ends in the bytes of the file's earlier
	 * segment, not zeros: they never parse (another epoch), and when no
	 * valid record follows they are the normal end, exactly as a zero tail
	 * (never a torn tail: nothing pins or quarantines it). A bad region
	 * followed by valid records is classified as in any segment.
	 */
	if (tail && !zero && spool_seg_recycled(&ss->s->hdr))
		zero = true;
	/* Classified after the scan, once the segment's watermark is known. */
	if (ss->nbad < BAD_REGIONS_MAX)
		ss->bad[ss->nbad++] = (struct bad_region){from, to, tail, zero};
	else
		ss->bad[BAD_REGIONS_MAX - 1].to = to;
}

/*
 * Scan the lane's segments from index first on. only_id != 0 restricts the
 * scan to that txn: other txns' chunks and commits are skipped (not decoded,
 * not checked), every record still counts for the segment's watermark. The
 * verdict on only_id's commit is the same as in a scan from the lane's first
 * segment provided no segment before first holds a record of only_id (see
 * spool_reader_read).
 */
/*
 * Scan segment s into ssp (records, chunks, bad regions). A server may be
 * writing this segment: a record that was not there when the scan passed
 * may have landed before a later record that vouches for it (watermark).
 * If a "durable" bad region parses now, it was a write in progress: scan
 * again (a few times at most).
 */
static void seg_scan_stable(struct seg_scan *ssp, struct rseg *s)
{
	static const struct spool_scan_ops sops = {.rec = seg_rec, .bad = seg_bad, .delivery = true};

	ssp->s = s;
	if (s->sum) {
		/* Sealed, never written again: the summary is the scan (spool_sum.h). */
		ssp->watermark = 0;
		ssp->npc = ssp->nbad = 0;
		ssp->nch = ssp->ndl = 0;
		spool_sum_replay(s->sum, &sops, ssp);
		ssp->watermark = DS_MAX(ssp->watermark, s->sum->watermark);
		return;
	}
	for (int attempt = 0;; attempt++) {
		bool moved = false;

		ssp->watermark = 0;
		ssp->npc = 0;
		ssp->nbad = 0;
		ssp->nch = 0;
		ssp->ndl = 0;
		spool_seg_scan(s->map, s->size, s->hdr.epoch, SPOOL_SEG_DATA_OFF, &sops, ssp);
		if (ssp->err)
			return;
		for (unsigned k = 0; k < ssp->nbad && !moved; k++) {
			struct spool_rec probe;
			moved = ssp->bad[k].from < ssp->watermark &&
				spool_rec_check(s->map, s->size, s->hdr.epoch, ssp->bad[k].from, &probe);
		}
		if (!moved || attempt == 4)
			return;
	}
}

/* Count the segment's chunks into the lane's table (txn id -> count, bytes). */
static int seg_count_chunks(struct seg_scan *ssp, struct ctab *tab)
{
	for (size_t k = 0; k < ssp->nch; k++) {
		/*
		 * Segment sequence 0 is never used: such a chunk is padding
		 * (--spool-io direct) and belongs to no message. It must not be
		 * counted, least of all under id 0, the empty-slot mark.
		 */
		if (!((ssp->ch[k].txn_id >> SPOOL_ID_COUNTER_BITS) & 0xffffffffull))
			continue;
		struct ctab_ent *e = ctab_get(tab, ssp->ch[k].txn_id, true);
		if (!e)
			return -ENOMEM;
		e->count++;
		e->bytes += ssp->ch[k].len;
	}
	return 0;
}

/* Decode a commit payload into m (envelope strings in the map, recipients in r->rcpt). */
static int commit_msg(struct spool_reader *r, struct rlane *rl, struct rseg *s, uint64_t off, uint64_t id,
		      const uint8_t *payload, uint32_t len, struct spool_msg *m)
{
	struct spool_commit c;

	if (spool_commit_decode(payload, len, &c, r->rcpt, SPOOL_RCPT_MAX))
		return -EBADMSG;
	memset(m, 0, sizeof(*m));
	m->id = id;
	m->lane = rl->lane;
	m->seq = s->seq;
	m->off = off;
	m->size = c.body_len;
	m->body_crc = c.body_crc;
	m->chunk_count = c.chunk_count;
	m->first_seq = c.first_seq;
	m->first_off = c.first_off;
	m->received_at_us = c.env.received_at_us;
	m->env = c.env;
	return 0;
}

int spool_scan_commit_msg(struct spool_reader *r, struct rlane *rl, struct rseg *s, uint64_t off,
			  struct spool_msg *m)
{
	const uint8_t *p;
	uint32_t magic, len;
	uint64_t id;

	/* Validated (CRC included) by the scan; the map is read-only: only the bounds again. */
	if (!s->map || s->hdr_rc || off < SPOOL_SEG_DATA_OFF || off + SPOOL_REC_HDR_SIZE > s->size)
		return -ENOENT;
	/* From the summary's copy when there is one: the segment's page is not read. */
	p = s->sum ? spool_sum_rec_at(s->sum, off) : s->map + off;
	if (!p)
		return -ENOENT;
	memcpy(&magic, p, 4);
	memcpy(&len, p + 8, 4);
	memcpy(&id, p + 16, 8);
	if (magic != SPOOL_REC_MAGIC || p[4] != SPOOL_REC_COMMIT || len > SPOOL_COMMIT_MAX ||
	    spool_rec_total(len) > s->size - off)
		return -ENOENT;
	return commit_msg(r, rl, s, off, id, p + SPOOL_REC_HDR_SIZE, len, m) ? -ENOENT : 0;
}

/* One commit of segment s: kept (cfg->msg) if its whole body is there, else dropped. */
static int seg_commit(struct seg_scan *ssp, struct ctab *tab, struct rseg *s, const struct pend_commit *pc)
{
	struct spool_reader *r = ssp->r;
	struct rlane *rl = ssp->rl;
	const struct scan_cfg *cfg = ssp->cfg;
	struct spool_msg m;
	struct ctab_ent *e;
	bool durable, ok;

	if (commit_msg(r, rl, s, pc->off, pc->txn_id, pc->payload, pc->len, &m))
		return 0; /* CRC matched but not decodable: not written by this format */
	DS_ASSERT(pc->end > pc->off && pc->end <= s->size);
	e = ctab_get(tab, pc->txn_id, false);
	ok = m.chunk_count == 0 ? m.size == 0 : (e && e->count == m.chunk_count && e->bytes == m.size);
	if (e)
		ctab_del(tab, e);
	durable = pc->end <= ssp->watermark;
	if (ok && (cfg->check_all_bodies || (!durable && pc->end > s->sealed_to) ||
		   (m.chunk_count && m.first_seq != s->seq)))
		ok = spool_scan_body_walk(r, rl, &m, NULL, NULL) == 0;
	else if (!ok && (durable || m.chunk_count))
		/*
		 * A live writer may have added chunks after this lane's scan passed them; and
		 * since format 3 an id may have had an earlier copy (compaction) whose commit
		 * segment was reclaimed while chunks of it are still counted: the walk from this
		 * commit's own first chunk decides.
		 */
		ok = spool_scan_body_walk(r, rl, &m, NULL, NULL) == 0;
	if (!ok) {
		if (cfg->dropped)
			cfg->dropped(cfg->ctx, rl, &m, durable);
		return 0;
	}
	return cfg->msg ? cfg->msg(cfg->ctx, rl, &m) : 0;
}

int spool_scan_lane_from(struct spool_reader *r, struct rlane *rl, const struct scan_cfg *cfg, unsigned first,
			 uint64_t only_id)
{
	struct ctab tab = {0};
	struct seg_scan *ssp = calloc(1, sizeof(*ssp));
	int rc = 0;

	if (!ssp)
		return -ENOMEM;
	ssp->r = r;
	ssp->rl = rl;
	ssp->cfg = cfg;
	ssp->tab = &tab;
	ssp->only_id = only_id;
	for (unsigned i = first; i < rl->nsegs && !rc; i++) {
		struct rseg *s = &rl->segs[i];

		if (!spool_scan_seg_map(r, rl, s))
			continue; /* gone: as if never listed (whole-lane scans map all first) */
		if (cfg->seg)
			cfg->seg(cfg->ctx, rl, s);
		if (s->hdr_rc)
			continue;
		seg_scan_stable(ssp, s);
		rc = ssp->err ? ssp->err : seg_count_chunks(ssp, &tab);
		if (rc)
			break;
		for (unsigned k = 0; k < ssp->nbad && cfg->bad; k++)
			cfg->bad(cfg->ctx, rl, s, ssp->bad[k].from, ssp->bad[k].to, ssp->bad[k].tail,
				 ssp->bad[k].zero, ssp->bad[k].from < ssp->watermark);
		for (size_t k = 0; k < ssp->ndl && cfg->delivery; k++)
			cfg->delivery(cfg->ctx, rl, s, &ssp->dl[k]);
		/* Chunk counts first (above): a later commit may not see chunks of an earlier one. */
		for (size_t k = 0; k < ssp->npc && !rc; k++)
			rc = seg_commit(ssp, &tab, s, &ssp->pc[k]);
	}
	free(ssp->pc);
	free(ssp->ch);
	free(ssp->dl);
	free(ssp);
	free(tab.e);
	return rc;
}

int spool_scan_lane(struct spool_reader *r, struct rlane *rl, const struct scan_cfg *cfg)
{
	spool_scan_lane_map_all(r, rl);
	return spool_scan_lane_from(r, rl, cfg, 0, 0);
}
