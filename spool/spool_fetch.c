/* SPDX-License-Identifier: MIT */
/*
 * Reading messages back by location (spool_fetch.h): a small cache of
 * read-only shared segment maps, the commit record decoded in place, the
 * body streamed through the scan engine's chunk walker
 * (spool_scan_chunk_next) with a cursor so sequential reads never rescan.
 */
#include "spool_fetch.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "ds_assert.h"
#include "spool_scan.h"

/* A segment map of the cache. The rseg's state is RSEG_MAPPED while the slot is used. */
struct fslot {
	struct rseg s;
	unsigned lane;
	uint32_t refs;	   /* messages in progress holding it (commit segment, cursor segment) */
	uint64_t last_use; /* LRU stamp */
	bool used;
};

/* Recipient decode space of one message in progress; reused through a free list. */
struct rcpt_block {
	struct rcpt_block *next;
	uint32_t cap;
	struct ds_rcpt rcpt[];
};

struct spool_fetch {
	char dir[PATH_MAX];
	unsigned maps_max;
	uint64_t clock;
	uint64_t msgs; /* messages in progress (get without put) */
	struct rcpt_block *free_blocks;
	struct fslot slot[];
};

#define FM_MAGIC  0x46455443u /* "FETC": a message between get and put */
#define SLOT_NONE UINT32_MAX

/* The bookkeeping of one message in progress, kept in spool_fetch_msg.priv. */
struct fm_priv {
	uint32_t magic;
	uint32_t commit_slot; /* the commit's segment: the envelope strings point into it */
	uint32_t cur_slot;    /* the segment of the walk's position (SLOT_NONE: none held) */
	uint32_t got;	      /* chunks taken, the current one included */
	uint32_t crc;	      /* CRC32C of the body up to the end of the current chunk */
	uint32_t cur_len;     /* payload bytes of the current chunk (0: none yet) */
	uint64_t cur_rec_off; /* file offset of the current chunk record in segment cur_seq */
	uint64_t cur_seq;
	uint64_t cur_body_off;	    /* body offset of the current chunk's first byte */
	struct spool_chunk_pos pos; /* where the next chunk is looked for */
	struct rcpt_block *rb;
};
_Static_assert(sizeof(struct fm_priv) <= sizeof(((struct spool_fetch_msg *)0)->priv),
	       "fm_priv does not fit spool_fetch_msg.priv");

static struct fm_priv *fm_priv(struct spool_fetch_msg *fm)
{
	return (struct fm_priv *)(void *)fm->priv;
}

#define FETCH_MAPS_MAX 65536u

int spool_fetch_open(struct spool_fetch **out, const char *dir, unsigned maps_max)
{
	struct spool_fetch *f;

	*out = NULL;
	/* A message in progress holds up to two maps: its commit's segment and the one it reads. */
	if (maps_max < 2 || maps_max > FETCH_MAPS_MAX)
		return -EINVAL;
	f = calloc(1, sizeof(*f) + (size_t)maps_max * sizeof(f->slot[0]));
	if (!f)
		return -ENOMEM;
	if (snprintf(f->dir, sizeof(f->dir), "%s", dir) >= (int)sizeof(f->dir)) {
		free(f);
		return -ENAMETOOLONG;
	}
	f->maps_max = maps_max;
	*out = f;
	return 0;
}

void spool_fetch_close(struct spool_fetch *f)
{
	if (!f)
		return;
	DS_ASSERT(f->msgs == 0); /* every message put back */
	for (unsigned i = 0; i < f->maps_max; i++) {
		DS_ASSERT(f->slot[i].refs == 0);
		if (f->slot[i].used)
			spool_scan_seg_close(&f->slot[i].s);
	}
	while (f->free_blocks) {
		struct rcpt_block *b = f->free_blocks;
		f->free_blocks = b->next;
		free(b);
	}
	free(f);
}

/* ---- the map cache ---- */

/*
 * Segment seq of lane, mapped and held (refs + 1) in *idx: 0, -ENOENT (no
 * such file), -EMFILE (every slot held), -errno from open/mmap.
 */
static int slot_get(struct spool_fetch *f, unsigned lane, uint64_t seq, uint32_t *idx)
{
	struct fslot *victim = NULL;
	int rc;

	for (unsigned i = 0; i < f->maps_max; i++) {
		struct fslot *sl = &f->slot[i];

		if (sl->used && sl->lane == lane && sl->s.seq == seq) {
			sl->refs++;
			sl->last_use = ++f->clock;
			*idx = i;
			return 0;
		}
		if (sl->refs)
			continue;
		if (!victim || (victim->used && (!sl->used || sl->last_use < victim->last_use)))
			victim = sl;
	}
	if (!victim)
		return -EMFILE;
	if (victim->used)
		spool_scan_seg_close(&victim->s);
	memset(victim, 0, sizeof(*victim));
	victim->s.seq = seq;
	rc = spool_scan_seg_open(f->dir, lane, &victim->s);
	if (rc) {
		memset(victim, 0, sizeof(*victim));
		return rc;
	}
	victim->used = true;
	victim->lane = lane;
	victim->refs = 1;
	victim->last_use = ++f->clock;
	*idx = (uint32_t)(victim - f->slot);
	return 0;
}

static void slot_put(struct spool_fetch *f, uint32_t idx)
{
	DS_ASSERT(idx < f->maps_max && f->slot[idx].used && f->slot[idx].refs > 0);
	f->slot[idx].refs--;
}

/* ---- recipients' decode space ---- */

static struct rcpt_block *rcpt_block_get(struct spool_fetch *f, uint32_t count)
{
	struct rcpt_block **pp, *b;
	uint32_t cap = 16;

	for (pp = &f->free_blocks; *pp; pp = &(*pp)->next)
		if ((*pp)->cap >= count) {
			b = *pp;
			*pp = b->next;
			return b;
		}
	while (cap < count)
		cap *= 2;
	b = malloc(sizeof(*b) + (size_t)cap * sizeof(b->rcpt[0]));
	if (b)
		b->cap = cap;
	return b;
}

static void rcpt_block_put(struct spool_fetch *f, struct rcpt_block *b)
{
	if (!b)
		return;
	b->next = f->free_blocks;
	f->free_blocks = b;
}

/* ---- get / put ---- */

/* Offsets of the commit payload and record header this file reads before decoding (FORMAT.md). */
#define COMMIT_RCPT_COUNT_OFF 52u
#define REC_TXN_ID_OFF	      16u

/*
 * Not a valid record at off: damage to the commit of id (its header still
 * names it) is -EBADMSG; anything else means that commit is not there.
 */
static int not_a_record(const struct rseg *s, uint64_t off, uint64_t id)
{
	const uint8_t *p = s->map + off;

	if (off < SPOOL_SEG_DATA_OFF || off + SPOOL_REC_HDR_SIZE > s->size || off % SPOOL_REC_ALIGN)
		return -ENOENT;
	if (spool_get32(p) == SPOOL_REC_MAGIC && p[4] == SPOOL_REC_COMMIT &&
	    spool_get64(p + REC_TXN_ID_OFF) == id)
		return -EBADMSG;
	return -ENOENT;
}

static int commit_decode(struct spool_fetch *f, const struct rseg *s, uint64_t off, uint64_t id,
			 struct spool_fetch_msg *out, struct rcpt_block **rbp)
{
	struct spool_commit c;
	struct spool_rec rec;
	struct spool_msg *m = &out->m;
	uint32_t count;
	int rc;

	if (s->hdr_rc)
		return s->hdr_rc == -ENODATA ? -ENOENT : -EBADMSG;
	if (!spool_rec_check(s->map, s->size, s->hdr.epoch, off, &rec))
		return not_a_record(s, off, id);
	if (rec.type != SPOOL_REC_COMMIT || rec.txn_id != id)
		return -ENOENT;
	if (rec.len < COMMIT_RCPT_COUNT_OFF + 4)
		return -EBADMSG;
	count = spool_get32(rec.payload + COMMIT_RCPT_COUNT_OFF);
	if (count > SPOOL_RCPT_MAX)
		return -EBADMSG;
	*rbp = rcpt_block_get(f, count);
	if (!*rbp)
		return -ENOMEM;
	rc = spool_commit_decode(rec.payload, rec.len, &c, (*rbp)->rcpt, (*rbp)->cap);
	if (rc)
		return -EBADMSG;
	/* The chunk locator must point before the commit (chunks precede it in the lane's stream). */
	if (c.chunk_count ? c.first_seq == 0 || c.first_seq > s->seq ||
				    (c.first_seq == s->seq && c.first_off >= off)
			  : c.body_len != 0)
		return -EBADMSG;
	memset(m, 0, sizeof(*m));
	m->id = id;
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

int spool_fetch_get(struct spool_fetch *f, unsigned lane, uint64_t seq, uint64_t off, uint64_t id,
		    struct spool_fetch_msg *out)
{
	struct fm_priv *p = fm_priv(out);
	struct rcpt_block *rb = NULL;
	uint32_t idx;
	int rc;

	memset(out, 0, sizeof(*out));
	if (lane >= SPOOL_LANES_MAX || !seq || !id)
		return -ENOENT;
	rc = slot_get(f, lane, seq, &idx);
	if (rc)
		return rc;
	rc = commit_decode(f, &f->slot[idx].s, off, id, out, &rb);
	if (rc) {
		rcpt_block_put(f, rb);
		slot_put(f, idx);
		memset(out, 0, sizeof(*out));
		return rc;
	}
	/* The id names the lane it was begun in; the message is in that lane (FORMAT.md). */
	out->m.lane = lane;
	*p = (struct fm_priv){.magic = FM_MAGIC, .commit_slot = idx, .cur_slot = SLOT_NONE, .rb = rb};
	f->msgs++;
	return 0;
}

void spool_fetch_put(struct spool_fetch *f, struct spool_fetch_msg *fm)
{
	struct fm_priv *p = fm_priv(fm);

	if (p->magic != FM_MAGIC)
		return; /* not got (or put already) */
	if (p->cur_slot != SLOT_NONE)
		slot_put(f, p->cur_slot);
	slot_put(f, p->commit_slot);
	rcpt_block_put(f, p->rb);
	DS_ASSERT(f->msgs > 0);
	f->msgs--;
	memset(fm, 0, sizeof(*fm));
}

/* ---- body ---- */

struct seg_ctx {
	struct spool_fetch *f;
	struct fm_priv *p;
	unsigned lane;
};

/* The walker's segment source: the cursor holds the segment it is in (and only that one). */
static int fetch_seg(void *ctx, uint64_t seq, const struct rseg **out)
{
	struct seg_ctx *c = ctx;
	struct fm_priv *p = c->p;
	uint32_t idx;
	int rc;

	if (p->cur_slot != SLOT_NONE) {
		struct fslot *sl = &c->f->slot[p->cur_slot];
		if (sl->s.seq == seq) {
			*out = &sl->s;
			return 0;
		}
		/* Let go first: with two maps a message can read any number of segments. */
		slot_put(c->f, p->cur_slot);
		p->cur_slot = SLOT_NONE;
	}
	rc = slot_get(c->f, c->lane, seq, &idx);
	if (rc)
		return rc;
	p->cur_slot = idx;
	*out = &c->f->slot[idx].s;
	return 0;
}

static void cursor_restart(struct spool_fetch *f, struct spool_fetch_msg *fm)
{
	struct fm_priv *p = fm_priv(fm);

	p->got = 0;
	p->crc = 0;
	p->cur_len = 0;
	p->cur_rec_off = 0;
	p->cur_seq = 0;
	p->cur_body_off = 0;
	p->pos = (struct spool_chunk_pos){.seq = fm->m.first_seq, .off = fm->m.first_off};
}

/* Move the cursor to the next chunk of the message (its CRC folded in). */
static int cursor_next(struct spool_fetch *f, struct spool_fetch_msg *fm)
{
	struct fm_priv *p = fm_priv(fm);
	struct seg_ctx c = {.f = f, .p = p, .lane = fm->m.lane};
	struct spool_rec rec;
	uint64_t body_off = p->cur_body_off + p->cur_len;
	int rc;

	if (p->got >= fm->m.chunk_count)
		return -EBADMSG; /* the chunks end before the body does */
	rc = spool_scan_chunk_next(&fm->m, &p->pos, fetch_seg, &c, &rec);
	if (rc)
		return rc == -ENOENT ? -EBADMSG : rc;
	if (rec.len > fm->m.size - body_off)
		return -EBADMSG;
	DS_ASSERT(p->cur_slot != SLOT_NONE && f->slot[p->cur_slot].s.seq == p->pos.seq);
	p->got++;
	p->crc = crc32c(p->crc, rec.payload, rec.len);
	p->cur_seq = p->pos.seq;
	p->cur_rec_off = rec.off;
	p->cur_len = rec.len;
	p->cur_body_off = body_off;
	return 0;
}

int spool_fetch_read(struct spool_fetch *f, struct spool_fetch_msg *fm, uint64_t off, void *buf, size_t cap)
{
	struct fm_priv *p = fm_priv(fm);
	const struct fslot *sl;
	uint64_t n;
	int rc;

	DS_ASSERT(p->magic == FM_MAGIC);
	if (off > fm->m.size || !cap)
		return -EINVAL;
	if (off == fm->m.size)
		return 0;
	if (!p->cur_rec_off || off < p->cur_body_off)
		cursor_restart(f, fm); /* a step back (or the first read): walk from the first chunk */
	while (off >= p->cur_body_off + p->cur_len) {
		rc = cursor_next(f, fm);
		if (rc) {
			/* Position lost (or never found): the next read walks from the start. */
			p->cur_rec_off = 0;
			return rc;
		}
	}
	n = DS_MIN((uint64_t)cap, p->cur_body_off + p->cur_len - off);
	n = DS_MIN(n, (uint64_t)INT_MAX);
	/* The last bytes go out only with the whole body proven: count, length, CRC. */
	if (off + n == fm->m.size && (p->got != fm->m.chunk_count ||
				      p->cur_body_off + p->cur_len != fm->m.size || p->crc != fm->m.body_crc))
		return -EBADMSG;
	DS_ASSERT(p->cur_slot != SLOT_NONE);
	sl = &f->slot[p->cur_slot];
	DS_ASSERT(sl->s.seq == p->cur_seq);
	memcpy(buf, sl->s.map + p->cur_rec_off + SPOOL_REC_HDR_SIZE + (off - p->cur_body_off), n);
	return (int)n;
}
