/* SPDX-License-Identifier: MIT */
/*
 * Reader and recovery: one scanning engine over the mapped segments of a
 * lane. Recovery skips body bytes where it can: a commit whose record ends
 * below the durable watermark of its segment (the writer stamps in every
 * record how far a completed flush had reached) has all its chunks durable,
 * so chunk headers are enough. Commits past the watermark, or whose chunks
 * sit in another segment, get their body CRC checked.
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
#include "spool_format.h"

_Static_assert(SPOOL_LANES_MAX_PUBLIC == SPOOL_LANES_MAX, "lane limits agree");

enum rseg_state {
	RSEG_LISTED, /* name seen at open, file not opened yet */
	RSEG_MAPPED, /* opened and mapped (or too short to hold records: hdr_rc -ENODATA) */
	RSEG_GONE,   /* could not be opened or mapped when first needed (removed meanwhile) */
};

struct rseg {
	uint64_t seq;
	const uint8_t *map;
	uint64_t size;
	int hdr_rc; /* 0, -ENODATA (unused), -EBADMSG */
	enum rseg_state state;
	struct spool_seg_hdr hdr;
};

struct rlane {
	unsigned lane;
	struct rseg *segs;
	unsigned nsegs;
	bool all_mapped;
};

struct spool_reader {
	char dir[PATH_MAX];
	struct rlane lanes[SPOOL_LANES_MAX];
	unsigned nlanes;
	struct ds_rcpt *rcpt; /* decode space, SPOOL_RCPT_MAX */
};

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * Open and map one listed segment. Returns false if it is gone (removed
 * since it was listed, or not mappable): such a segment does not exist for
 * the reader.
 */
static bool seg_map(struct spool_reader *r, struct rlane *rl, struct rseg *s)
{
	char path[PATH_MAX];
	struct stat stt;
	int fd;
	void *m;

	if (s->state != RSEG_LISTED)
		return s->state == RSEG_MAPPED;
	s->state = RSEG_GONE;
	if (spool_seg_path(path, sizeof(path), r->dir, rl->lane, s->seq))
		return false;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false; /* removed meanwhile */
	if (fstat(fd, &stt) || stt.st_size < (off_t)SPOOL_SEG_DATA_OFF) {
		close(fd);
		s->hdr_rc = -ENODATA;
		s->state = RSEG_MAPPED;
		return true;
	}
	m = mmap(NULL, (size_t)stt.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return false;
	s->map = m;
	s->size = (uint64_t)stt.st_size;
	s->hdr_rc = spool_seg_hdr_decode(s->map, s->size, &s->hdr);
	if (!s->hdr_rc && (s->hdr.seq != s->seq || s->hdr.lane != rl->lane))
		s->hdr_rc = -EBADMSG;
	if (!s->hdr_rc && s->hdr.segment_size < s->size)
		s->size = s->hdr.segment_size;
	s->state = RSEG_MAPPED;
	return true;
}

/* Map every listed segment of the lane, in order; segments that are gone are dropped from the list. */
static void lane_map_all(struct spool_reader *r, struct rlane *rl)
{
	unsigned n = 0;

	if (rl->all_mapped)
		return;
	for (unsigned i = 0; i < rl->nsegs; i++)
		if (seg_map(r, rl, &rl->segs[i]))
			rl->segs[n++] = rl->segs[i];
	rl->nsegs = n;
	rl->all_mapped = true;
}

/* Whole-spool operations (foreach, verify, stats, recovery) see every segment listed at open. */
static void reader_map_all(struct spool_reader *r)
{
	for (unsigned i = 0; i < r->nlanes; i++)
		lane_map_all(r, &r->lanes[i]);
}

/* List the lane's segments; they are mapped when first needed (seg_map). */
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

void spool_reader_close(struct spool_reader *r)
{
	if (!r)
		return;
	for (unsigned i = 0; i < r->nlanes; i++) {
		for (unsigned k = 0; k < r->lanes[i].nsegs; k++)
			if (r->lanes[i].segs[k].map)
				munmap((void *)r->lanes[i].segs[k].map, r->lanes[i].segs[k].size);
		free(r->lanes[i].segs);
	}
	free(r->rcpt);
	free(r);
}

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

struct walk {
	uint64_t id;
	uint32_t want, got;
	uint64_t bytes;
	uint32_t crc;
	int (*fn)(void *ctx, const void *buf, size_t len);
	void *ctx;
	int fn_rc;
};

static int walk_rec(void *ctx, const struct spool_rec *rec)
{
	struct walk *w = ctx;

	if (rec->type != SPOOL_REC_CHUNK || rec->txn_id != w->id)
		return 0;
	w->got++;
	w->bytes += rec->len;
	w->crc = crc32c(w->crc, rec->payload, rec->len);
	if (w->fn) {
		w->fn_rc = w->fn(w->ctx, rec->payload, rec->len);
		if (w->fn_rc)
			return 1;
	}
	return w->got == w->want ? 1 : 0;
}

static struct rseg *lane_seg_find(struct rlane *rl, uint64_t seq)
{
	unsigned lo = 0, hi = rl->nsegs;

	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (rl->segs[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < rl->nsegs && rl->segs[lo].seq == seq ? &rl->segs[lo] : NULL;
}

/*
 * Walk the chunks of a commit, from its first chunk record up to the
 * commit's segment. 0 if all chunks were found with the right total length
 * and CRC, -EBADMSG if not, or fn's non-zero return.
 */
static int body_walk(struct spool_reader *r, struct rlane *rl, const struct spool_msg *m,
		     int (*fn)(void *, const void *, size_t), void *ctx)
{
	static const struct spool_scan_ops wops = {.rec = walk_rec};
	struct walk w = {.id = m->id, .want = m->chunk_count, .fn = fn, .ctx = ctx};

	if (m->chunk_count == 0)
		return m->size == 0 ? 0 : -EBADMSG;
	for (uint64_t seq = m->first_seq; seq <= m->seq && w.got < w.want; seq++) {
		struct rseg *s = lane_seg_find(rl, seq);
		/*
		 * No file of that number: it was never created (writers up to
		 * a9238e9 skipped a number when a segment failed to be
		 * prepared), so none of the body is there. A missing piece shows
		 * in the chunk count, length and CRC below.
		 */
		if (!s && seq != m->first_seq && seq != m->seq)
			continue;
		if (!s || !seg_map(r, rl, s) || s->hdr_rc)
			return -EBADMSG;
		spool_seg_scan(s->map, s->size, s->hdr.epoch,
			       seq == m->first_seq ? m->first_off : SPOOL_SEG_DATA_OFF, &wops, &w);
		if (w.fn_rc)
			return w.fn_rc;
	}
	if (w.got != w.want || w.bytes != m->size || w.crc != m->body_crc)
		return -EBADMSG;
	return 0;
}

/* ---- lane scan engine ---- */

struct scan_cfg {
	bool check_all_bodies;
	int (*msg)(void *ctx, struct rlane *rl, const struct spool_msg *m);
	/* A commit whose body is not there: durable says it was below the watermark. */
	void (*dropped)(void *ctx, struct rlane *rl, const struct spool_msg *m, bool durable);
	/*
	 * Bytes [from, to) of a segment are not records. tail: nothing valid
	 * follows. durable: the region starts below the segment's durable
	 * watermark, so it held acknowledged data: corruption, not a crash.
	 */
	void (*bad)(void *ctx, struct rlane *rl, struct rseg *s, uint64_t from, uint64_t to, bool tail,
		    bool zero, bool durable);
	void (*seg)(void *ctx, struct rlane *rl, struct rseg *s);
	void *ctx;
};

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

	ss->watermark = DS_MAX(ss->watermark, rec->durable_off);
	if (ss->only_id && rec->txn_id != ss->only_id)
		return 0; /* still counted in the watermark above: the verdict on only_id needs it */
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
static int lane_scan_from(struct spool_reader *r, struct rlane *rl, const struct scan_cfg *cfg,
			  unsigned first, uint64_t only_id)
{
	static const struct spool_scan_ops sops = {.rec = seg_rec, .bad = seg_bad};
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

		if (!seg_map(r, rl, s))
			continue; /* gone: as if never listed (whole-lane scans map all first) */

		if (cfg->seg)
			cfg->seg(cfg->ctx, rl, s);
		if (s->hdr_rc)
			continue;
		ssp->s = s;
		for (int attempt = 0;; attempt++) {
			bool moved = false;

			ssp->watermark = 0;
			ssp->npc = 0;
			ssp->nbad = 0;
			ssp->nch = 0;
			spool_seg_scan(s->map, s->size, s->hdr.epoch, SPOOL_SEG_DATA_OFF, &sops, ssp);
			if (ssp->err)
				break;
			/*
			 * A server may be writing this segment: a record that was not
			 * there when the scan passed may have landed before a later
			 * record that vouches for it (watermark). If a "durable" bad
			 * region parses now, it was a write in progress: scan again.
			 */
			for (unsigned k = 0; k < ssp->nbad && !moved; k++) {
				struct spool_rec probe;
				moved = ssp->bad[k].from < ssp->watermark &&
					spool_rec_check(s->map, s->size, s->hdr.epoch, ssp->bad[k].from,
							&probe);
			}
			if (!moved || attempt == 4)
				break;
		}
		if (ssp->err) {
			rc = ssp->err;
			break;
		}
		for (size_t k = 0; k < ssp->nch; k++) {
			/*
			 * Segment sequence 0 is never used: such a chunk is padding
			 * (--spool-io direct) and belongs to no message. It must not
			 * be counted, least of all under id 0, the empty-slot mark.
			 */
			if (!((ssp->ch[k].txn_id >> SPOOL_ID_COUNTER_BITS) & 0xffffffffull))
				continue;
			struct ctab_ent *e = ctab_get(&tab, ssp->ch[k].txn_id, true);
			if (!e) {
				rc = -ENOMEM;
				break;
			}
			e->count++;
			e->bytes += ssp->ch[k].len;
		}
		if (rc)
			break;
		for (unsigned k = 0; k < ssp->nbad && cfg->bad; k++)
			cfg->bad(cfg->ctx, rl, s, ssp->bad[k].from, ssp->bad[k].to, ssp->bad[k].tail,
				 ssp->bad[k].zero, ssp->bad[k].from < ssp->watermark);
		/* Match chunk counts first: a later commit may not see chunks of an earlier one. */
		for (size_t k = 0; k < ssp->npc && !rc; k++) {
			struct pend_commit *pc = &ssp->pc[k];
			struct spool_commit c;
			struct spool_msg m;
			struct ctab_ent *e;
			bool durable, ok;

			if (spool_commit_decode(pc->payload, pc->len, &c, r->rcpt, SPOOL_RCPT_MAX))
				continue; /* CRC matched but not decodable: not written by this format */
			memset(&m, 0, sizeof(m));
			m.id = pc->txn_id;
			m.lane = rl->lane;
			m.seq = s->seq;
			m.off = pc->off;
			m.size = c.body_len;
			m.body_crc = c.body_crc;
			m.chunk_count = c.chunk_count;
			m.first_seq = c.first_seq;
			m.first_off = c.first_off;
			m.received_at_us = c.env.received_at_us;
			m.env = c.env;
			e = ctab_get(&tab, pc->txn_id, false);
			ok = c.chunk_count == 0 ? c.body_len == 0
						: (e && e->count == c.chunk_count && e->bytes == c.body_len);
			if (e)
				ctab_del(&tab, e);
			durable = pc->end <= ssp->watermark;
			if (ok &&
			    (cfg->check_all_bodies || !durable || (c.chunk_count && c.first_seq != s->seq)))
				ok = body_walk(r, rl, &m, NULL, NULL) == 0;
			else if (!ok && durable)
				/* A live writer may have added chunks after this lane's scan passed them. */
				ok = body_walk(r, rl, &m, NULL, NULL) == 0;
			if (!ok) {
				if (cfg->dropped)
					cfg->dropped(cfg->ctx, rl, &m, durable);
				continue;
			}
			rc = cfg->msg ? cfg->msg(cfg->ctx, rl, &m) : 0;
		}
	}
	free(ssp->pc);
	free(ssp->ch);
	free(ssp);
	free(tab.e);
	return rc;
}

static int lane_scan(struct spool_reader *r, struct rlane *rl, const struct scan_cfg *cfg)
{
	lane_map_all(r, rl);
	return lane_scan_from(r, rl, cfg, 0, 0);
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

	reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes; i++) {
		int rc = lane_scan(r, &r->lanes[i], &cfg);
		if (rc)
			return rc;
	}
	return 0;
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
	unsigned lo = 0, hi = rl->nsegs;

	if (rl->nsegs && rl->segs[rl->nsegs - 1].seq >> SPOOL_ID_SEQ_BITS)
		return 0;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (rl->segs[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
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
		if (lane_scan_from(r, rl, &cfg, lane_id_first_seg(rl, id), id) < 0)
			return -ENOMEM;
	}
	if (!f.rl)
		return -ENOENT;
	return body_walk(r, f.rl, &f.m, fn, ctx);
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

static void v_seg(void *ctx, struct rlane *rl, struct rseg *s)
{
	struct vctx *v = ctx;

	v->rep->segments++;
	if (s->hdr_rc == -ENODATA) {
		v->rep->empty_segments++;
	} else if (s->hdr_rc) {
		v->rep->bad_segment_headers++;
		if (v->log)
			fprintf(v->log, "lane %u segment %llu: bad segment header\n", rl->lane,
				(unsigned long long)s->seq);
	}
}

int spool_reader_verify(struct spool_reader *r, struct spool_verify_report *rep, FILE *log)
{
	struct vctx v = {.rep = rep, .log = log};
	struct scan_cfg cfg = {.check_all_bodies = true,
			       .msg = v_msg,
			       .dropped = v_dropped,
			       .bad = v_bad,
			       .seg = v_seg,
			       .ctx = &v};

	memset(rep, 0, sizeof(*rep));
	reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes; i++) {
		int rc = lane_scan(r, &r->lanes[i], &cfg);
		if (rc)
			return rc;
	}
	return rep->bad_bodies || rep->quarantined || rep->bad_segment_headers ? -EBADMSG : 0;
}

struct sctx {
	struct spool_reader_stats *st;
	struct spool_lane_summary *cur;
};

static int s_msg(void *ctx, struct rlane *rl, const struct spool_msg *m)
{
	struct sctx *c = ctx;
	c->cur->messages++;
	c->cur->bytes += m->size;
	c->st->messages++;
	c->st->bytes += m->size;
	return 0;
}

int spool_reader_stats(struct spool_reader *r, struct spool_reader_stats *st)
{
	struct sctx c = {.st = st};
	struct scan_cfg cfg = {.msg = s_msg, .ctx = &c};

	memset(st, 0, sizeof(*st));
	reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes; i++) {
		struct rlane *rl = &r->lanes[i];
		int rc;

		c.cur = &st->lane[st->lanes++];
		c.cur->lane = rl->lane;
		c.cur->segments = rl->nsegs;
		if (rl->nsegs) {
			c.cur->first_seq = rl->segs[0].seq;
			c.cur->last_seq = rl->segs[rl->nsegs - 1].seq;
		}
		st->segments += rl->nsegs;
		for (unsigned k = 0; k < rl->nsegs; k++)
			st->segment_bytes += rl->segs[k].size;
		rc = lane_scan(r, rl, &cfg);
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- recovery ---- */

struct rctx {
	struct spool_recovery_report *rep;
	const char *dir;
	FILE *note;
	struct rseg *note_seg;
	unsigned note_lane;
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
	if (s->hdr_rc && s->hdr_rc != -ENODATA) {
		c->rep->quarantined++;
		r_note(c, rl, s, "quarantined segment: bad header (size %llu, seq %llu)\n", s->size, s->seq);
	}
}

int spool_recover(const struct spool_config *cfg, struct spool_recovery_report *rep)
{
	struct spool_reader *r;
	struct rctx c = {.rep = rep, .dir = cfg->dir};
	struct scan_cfg sc = {.msg = r_msg, .dropped = r_dropped, .bad = r_bad, .seg = r_seg, .ctx = &c};
	int64_t t0 = mono_us();
	int rc;

	memset(rep, 0, sizeof(*rep));
	rc = spool_reader_open(&r, cfg->dir);
	if (rc == -ENOENT) {
		rep->elapsed_us = (uint64_t)(mono_us() - t0);
		return 0; /* nothing spooled yet */
	}
	if (rc)
		return rc;
	rep->lanes = r->nlanes;
	reader_map_all(r);
	for (unsigned i = 0; i < r->nlanes && !rc; i++)
		rc = lane_scan(r, &r->lanes[i], &sc);
	note_close(&c);
	spool_reader_close(r);
	rep->elapsed_us = (uint64_t)(mono_us() - t0);
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
