/* SPDX-License-Identifier: MIT */
#include "spool_format.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "ds_assert.h"
#include "ds_grow.h"
#include "ds_sort.h"

void spool_seg_hdr_encode(uint8_t out[SPOOL_SEG_HDR_SIZE], const struct spool_seg_hdr *h)
{
	memset(out, 0, SPOOL_SEG_HDR_SIZE);
	memcpy(out, SPOOL_SEG_MAGIC, 8);
	spool_put32(out + 8, h->version);
	spool_put32(out + 12, SPOOL_SEG_HDR_SIZE);
	spool_put32(out + 16, h->lane);
	spool_put32(out + 20, h->flags);
	spool_put64(out + 24, h->seq);
	spool_put64(out + 32, h->epoch);
	spool_put64(out + 40, (uint64_t)h->created_us);
	spool_put64(out + 48, h->segment_size);
	spool_put32(out + 56, h->reserved);
	spool_put32(out + 60, crc32c(0, out, 60));
}

int spool_seg_hdr_decode(const uint8_t *p, size_t n, struct spool_seg_hdr *h)
{
	static const uint8_t zero[SPOOL_SEG_HDR_SIZE];

	if (n < SPOOL_SEG_HDR_SIZE)
		return -EBADMSG;
	if (!memcmp(p, zero, SPOOL_SEG_HDR_SIZE))
		return -ENODATA;
	if (memcmp(p, SPOOL_SEG_MAGIC, 8) || spool_get32(p + 12) != SPOOL_SEG_HDR_SIZE ||
	    spool_get32(p + 60) != crc32c(0, p, 60))
		return -EBADMSG;
	h->version = spool_get32(p + 8);
	/* A newer writer's segment is not damage: never quarantined, refused by name. */
	if (h->version > SPOOL_FORMAT_VERSION)
		return -EPROTONOSUPPORT;
	/* Version 1 segments read as they are: they simply hold no delivery records. */
	if (h->version < SPOOL_FORMAT_VERSION_MIN)
		return -EBADMSG;
	h->lane = spool_get32(p + 16);
	/* Flags exist from format 5 on; older writers wrote 0 and meant nothing by it. */
	h->flags = h->version >= 5 ? spool_get32(p + 20) : 0;
	h->seq = spool_get64(p + 24);
	h->epoch = spool_get64(p + 32);
	h->created_us = (int64_t)spool_get64(p + 40);
	h->segment_size = spool_get64(p + 48);
	h->reserved = spool_get32(p + 56);
	return 0;
}

/*
 * Header layout: magic u32, type u16, flags u16, len u32, crc u32,
 * txn_id u64, epoch u64, durable_off u64.
 */
void spool_rec_encode(uint8_t *out, uint32_t type, uint32_t len, uint64_t txn_id, uint64_t epoch,
		      uint64_t durable_off)
{
	uint64_t total = spool_rec_total(len);
	uint32_t crc;

	spool_put32(out, SPOOL_REC_MAGIC);
	out[4] = (uint8_t)type;
	out[5] = 0;
	out[6] = 0;
	out[7] = 0;
	spool_put32(out + 8, len);
	spool_put32(out + 12, 0);
	spool_put64(out + 16, txn_id);
	spool_put64(out + 24, epoch);
	spool_put64(out + 32, durable_off);
	memset(out + SPOOL_REC_HDR_SIZE + len, 0, total - SPOOL_REC_HDR_SIZE - len);
	crc = crc32c(0, out, SPOOL_REC_HDR_SIZE);
	if (type != SPOOL_REC_CHUNK)
		crc = crc32c(crc, out + SPOOL_REC_HDR_SIZE, len);
	spool_put32(out + 12, crc);
}

/* Largest payload a record of this type may have; 0 for an unknown type. */
static uint32_t rec_len_max(uint32_t type)
{
	switch (type) {
	case SPOOL_REC_CHUNK:
		return SPOOL_CHUNK_MAX;
	case SPOOL_REC_COMMIT:
		return SPOOL_COMMIT_MAX;
	case SPOOL_REC_OUTCOME:
		return SPOOL_OUTCOME_MAX;
	case SPOOL_REC_ABORT:
		return SPOOL_ABORT_SIZE;
	case SPOOL_REC_MOVED:
		return SPOOL_MOVED_MAX;
	case SPOOL_REC_OPERATOR:
		return SPOOL_OPERATOR_MAX;
	case SPOOL_REC_GAP:
		return SPOOL_GAP_MAX;
	default:
		return 0;
	}
}

bool spool_rec_check(const uint8_t *map, uint64_t size, uint64_t epoch, uint64_t off, struct spool_rec *r)
{
	uint8_t hdr[SPOOL_REC_HDR_SIZE];
	const uint8_t *p;
	uint32_t crc, type, len;

	if (off < SPOOL_SEG_DATA_OFF || off + SPOOL_REC_HDR_SIZE > size || (off & (SPOOL_REC_ALIGN - 1)))
		return false;
	p = map + off;
	if (spool_get32(p) != SPOOL_REC_MAGIC)
		return false;
	type = p[4];
	len = spool_get32(p + 8);
	if (!rec_len_max(type) || p[5] || p[6] || p[7])
		return false;
	if (spool_get64(p + 24) != epoch)
		return false;
	if (len > rec_len_max(type))
		return false;
	if (spool_rec_total(len) > size - off)
		return false;
	memcpy(hdr, p, sizeof(hdr));
	spool_put32(hdr + 12, 0);
	crc = crc32c(0, hdr, sizeof(hdr));
	if (type != SPOOL_REC_CHUNK)
		crc = crc32c(crc, p + SPOOL_REC_HDR_SIZE, len);
	if (crc != spool_get32(p + 12))
		return false;
	r->off = off;
	r->type = type;
	r->len = len;
	r->txn_id = spool_get64(p + 16);
	r->durable_off = spool_get64(p + 32);
	r->payload = p + SPOOL_REC_HDR_SIZE;
	r->total = spool_rec_total(len);
	return true;
}

static size_t str_size(const char *s)
{
	return 4 + (s ? strlen(s) : 0) + 1;
}

/* Fixed part: body_len u64, body_crc u32, chunk_count u32, first_seq u64, first_off u64,
 * received_at_us i64, body_size u64, client_port u16, pad u16, rcpt_count u32. */
#define COMMIT_FIXED 56u

size_t spool_commit_size(const struct ds_envelope *env)
{
	size_t n = COMMIT_FIXED;

	if (env->rcpt_count > SPOOL_RCPT_MAX)
		return 0;
	n += str_size(env->client_addr) + str_size(env->helo) + str_size(env->proto) +
	     str_size(env->mail_from) + str_size(env->mail_params) + str_size(env->tls);
	for (uint32_t i = 0; i < env->rcpt_count; i++) {
		n += str_size(env->rcpt[i].addr) + str_size(env->rcpt[i].params);
		if (n > SPOOL_COMMIT_MAX)
			return 0;
	}
	return n > SPOOL_COMMIT_MAX ? 0 : n;
}

static uint8_t *put_str(uint8_t *p, const char *s)
{
	uint32_t n = s ? (uint32_t)strlen(s) : 0;

	spool_put32(p, n);
	if (n)
		memcpy(p + 4, s, n);
	p[4 + n] = 0;
	return p + 4 + n + 1;
}

void spool_commit_encode(uint8_t *out, const struct spool_commit *c, const struct ds_envelope *env)
{
	uint8_t *p = out;

	spool_put64(p, c->body_len);
	spool_put32(p + 8, c->body_crc);
	spool_put32(p + 12, c->chunk_count);
	spool_put64(p + 16, c->first_seq);
	spool_put64(p + 24, c->first_off);
	spool_put64(p + 32, (uint64_t)env->received_at_us);
	spool_put64(p + 40, env->body_size);
	p[48] = (uint8_t)env->client_port;
	p[49] = (uint8_t)(env->client_port >> 8);
	p[50] = 0;
	p[51] = 0;
	spool_put32(p + 52, env->rcpt_count);
	p += COMMIT_FIXED;
	p = put_str(p, env->client_addr);
	p = put_str(p, env->helo);
	p = put_str(p, env->proto);
	p = put_str(p, env->mail_from);
	p = put_str(p, env->mail_params);
	p = put_str(p, env->tls);
	for (uint32_t i = 0; i < env->rcpt_count; i++) {
		p = put_str(p, env->rcpt[i].addr);
		p = put_str(p, env->rcpt[i].params);
	}
	DS_ASSERT((size_t)(p - out) == spool_commit_size(env));
}

static int get_str(const uint8_t **pp, const uint8_t *end, const char **out)
{
	const uint8_t *p = *pp;
	uint32_t n;

	if (end - p < 5)
		return -EBADMSG;
	n = spool_get32(p);
	if ((size_t)(end - p) < 5 + (size_t)n || p[4 + n] != 0 || memchr(p + 4, 0, n))
		return -EBADMSG;
	*out = (const char *)p + 4;
	*pp = p + 4 + n + 1;
	return 0;
}

int spool_commit_decode(const uint8_t *p, size_t n, struct spool_commit *c, struct ds_rcpt *rcpt,
			uint32_t rcpt_cap)
{
	const uint8_t *end = p + n;
	struct ds_envelope *e = &c->env;
	int rc = 0;

	if (n < COMMIT_FIXED)
		return -EBADMSG;
	memset(c, 0, sizeof(*c));
	c->body_len = spool_get64(p);
	c->body_crc = spool_get32(p + 8);
	c->chunk_count = spool_get32(p + 12);
	c->first_seq = spool_get64(p + 16);
	c->first_off = spool_get64(p + 24);
	e->received_at_us = (int64_t)spool_get64(p + 32);
	e->body_size = spool_get64(p + 40);
	e->client_port = (uint16_t)(p[48] | (p[49] << 8));
	e->rcpt_count = spool_get32(p + 52);
	if (e->rcpt_count > SPOOL_RCPT_MAX)
		return -EBADMSG;
	if (e->rcpt_count > rcpt_cap)
		return -ENOBUFS;
	p += COMMIT_FIXED;
	rc |= get_str(&p, end, &e->client_addr);
	rc |= get_str(&p, end, &e->helo);
	rc |= get_str(&p, end, &e->proto);
	rc |= get_str(&p, end, &e->mail_from);
	rc |= get_str(&p, end, &e->mail_params);
	rc |= get_str(&p, end, &e->tls);
	for (uint32_t i = 0; i < e->rcpt_count && !rc; i++) {
		rc |= get_str(&p, end, &rcpt[i].addr);
		rc |= get_str(&p, end, &rcpt[i].params);
	}
	if (rc || p != end)
		return -EBADMSG;
	e->rcpt = rcpt;
	return 0;
}

/* ---- outcome (type 3) and abort (type 4) payloads ---- */

static uint32_t str_len_cut(const char *s, uint32_t max)
{
	return s ? (uint32_t)strnlen(s, max) : 0;
}

static uint8_t *put_str_cut(uint8_t *p, const char *s, uint32_t max)
{
	uint32_t n = str_len_cut(s, max);

	spool_put32(p, n);
	if (n)
		memcpy(p + 4, s, n);
	p[4 + n] = 0;
	return p + 4 + n + 1;
}

static bool rcpt_state_valid(uint8_t st)
{
	return st >= SPOOL_RCPT_ATTEMPT && st <= SPOOL_RCPT_FAILED;
}

size_t spool_outcome_size(const struct spool_outcome *o)
{
	size_t n = SPOOL_OUTCOME_FIXED + 5 + str_len_cut(o->hop, SPOOL_OUTCOME_HOP_MAX) + 4;

	if (!o->rcpt_count || o->rcpt_count > SPOOL_OUTCOME_RCPTS_MAX || !o->rcpt)
		return 0;
	for (uint32_t i = 0; i < o->rcpt_count; i++) {
		const struct spool_outcome_rcpt *e = &o->rcpt[i];
		if (!rcpt_state_valid(e->state) || e->idx >= SPOOL_RCPT_MAX)
			return 0;
		n += 8 + 5 + str_len_cut(e->esc, SPOOL_OUTCOME_ESC_MAX) + 5 +
		     str_len_cut(e->text, SPOOL_OUTCOME_TEXT_MAX);
	}
	DS_ASSERT(n <= SPOOL_OUTCOME_MAX);
	return n;
}

/*
 * attempt u32, flags u32 (0), at_us i64, next_attempt_us i64, dsn_id u64,
 * hop string, entry count u32; per entry: idx u32, state u8, flags u8
 * (bit 0 possible_duplicate), code u16, esc string, text string.
 */
void spool_outcome_encode(uint8_t *out, const struct spool_outcome *o)
{
	uint8_t *p = out;

	spool_put32(p, o->attempt);
	spool_put32(p + 4, 0);
	spool_put64(p + 8, (uint64_t)o->at_us);
	spool_put64(p + 16, (uint64_t)o->next_attempt_us);
	spool_put64(p + 24, o->dsn_id);
	p = put_str_cut(p + SPOOL_OUTCOME_FIXED, o->hop, SPOOL_OUTCOME_HOP_MAX);
	spool_put32(p, o->rcpt_count);
	p += 4;
	for (uint32_t i = 0; i < o->rcpt_count; i++) {
		const struct spool_outcome_rcpt *e = &o->rcpt[i];
		spool_put32(p, e->idx);
		p[4] = e->state;
		p[5] = e->possible_duplicate ? 1 : 0;
		p[6] = (uint8_t)e->code;
		p[7] = (uint8_t)(e->code >> 8);
		p = put_str_cut(p + 8, e->esc, SPOOL_OUTCOME_ESC_MAX);
		p = put_str_cut(p, e->text, SPOOL_OUTCOME_TEXT_MAX);
	}
	DS_ASSERT((size_t)(p - out) == spool_outcome_size(o));
}

/* A string of at most max bytes (get_str checks the NUL and that none is inside). */
static int get_str_max(const uint8_t **pp, const uint8_t *end, const char **out, uint32_t max)
{
	if (end - *pp >= 4 && spool_get32(*pp) > max)
		return -EBADMSG;
	return get_str(pp, end, out);
}

static int entry_parse(const uint8_t **pp, const uint8_t *end, struct spool_outcome_rcpt *e)
{
	const uint8_t *p = *pp;

	if (end - p < 8)
		return -EBADMSG;
	e->idx = spool_get32(p);
	e->state = p[4];
	e->possible_duplicate = p[5] & 1;
	e->code = (uint16_t)(p[6] | (p[7] << 8));
	if (e->idx >= SPOOL_RCPT_MAX || !rcpt_state_valid(e->state))
		return -EBADMSG;
	p += 8;
	if (get_str_max(&p, end, &e->esc, SPOOL_OUTCOME_ESC_MAX) ||
	    get_str_max(&p, end, &e->text, SPOOL_OUTCOME_TEXT_MAX))
		return -EBADMSG;
	*pp = p;
	return 0;
}

int spool_outcome_decode(const uint8_t *payload, uint32_t len, struct spool_outcome *o,
			 struct spool_outcome_iter *it)
{
	const uint8_t *p = payload, *end = payload + len;
	struct spool_outcome_rcpt e;

	memset(o, 0, sizeof(*o));
	memset(it, 0, sizeof(*it));
	if (len < SPOOL_OUTCOME_FIXED || len > SPOOL_OUTCOME_MAX)
		return -EBADMSG;
	o->attempt = spool_get32(p);
	o->at_us = (int64_t)spool_get64(p + 8);
	o->next_attempt_us = (int64_t)spool_get64(p + 16);
	o->dsn_id = spool_get64(p + 24);
	p += SPOOL_OUTCOME_FIXED;
	if (get_str_max(&p, end, &o->hop, SPOOL_OUTCOME_HOP_MAX) || end - p < 4)
		return -EBADMSG;
	o->rcpt_count = spool_get32(p);
	p += 4;
	if (!o->rcpt_count || o->rcpt_count > SPOOL_OUTCOME_RCPTS_MAX)
		return -EBADMSG;
	it->p = p;
	it->end = end;
	it->left = o->rcpt_count;
	/* Validate every entry now: the iterator then never meets a bad one. */
	for (uint32_t i = 0; i < o->rcpt_count; i++)
		if (entry_parse(&p, end, &e))
			return -EBADMSG;
	if (p != end)
		return -EBADMSG;
	return 0;
}

int spool_outcome_entry_next(struct spool_outcome_iter *it, struct spool_outcome_rcpt *e)
{
	int rc;

	if (!it->left)
		return 0;
	rc = entry_parse(&it->p, it->end, e);
	DS_ASSERT(rc == 0); /* validated by spool_outcome_decode */
	it->left--;
	return 1;
}

void spool_abort_encode(uint8_t out[SPOOL_ABORT_SIZE], const struct spool_abort *a)
{
	spool_put32(out, a->reason);
	spool_put32(out + 4, 0);
	spool_put64(out + 8, a->commit_seq);
	spool_put64(out + 16, a->commit_off);
}

int spool_abort_decode(const uint8_t *payload, uint32_t len, struct spool_abort *a)
{
	if (len != SPOOL_ABORT_SIZE)
		return -EBADMSG;
	a->reason = spool_get32(payload);
	a->commit_seq = spool_get64(payload + 8);
	a->commit_off = spool_get64(payload + 16);
	return 0;
}

void spool_op_fixed_encode(uint8_t out[SPOOL_OP_FIXED], const struct spool_op_fixed *f)
{
	spool_put32(out, f->action);
	spool_put32(out + 4, f->uid);
	spool_put64(out + 8, (uint64_t)f->at_us);
	spool_put32(out + 16, f->pid);
	spool_put32(out + 20, f->tail);
}

int spool_op_fixed_decode(const uint8_t *payload, uint32_t len, struct spool_op_fixed *f)
{
	if (len < SPOOL_OP_FIXED)
		return -EBADMSG;
	f->action = spool_get32(payload);
	f->uid = spool_get32(payload + 4);
	f->at_us = (int64_t)spool_get64(payload + 8);
	f->pid = spool_get32(payload + 16);
	f->tail = spool_get32(payload + 20);
	if (f->action < SPOOL_OP_HOLD || f->action > SPOOL_OP_RETRY || f->tail != len - SPOOL_OP_FIXED)
		return -EBADMSG;
	return 0;
}

void spool_gap_fixed_encode(uint8_t out[SPOOL_GAP_FIXED], const struct spool_gap_fixed *f)
{
	spool_put32(out, f->kind);
	spool_put32(out + 4, f->tail);
	spool_put64(out + 8, (uint64_t)f->expires_us);
	spool_put64(out + 16, 0);
}

int spool_gap_fixed_decode(const uint8_t *payload, uint32_t len, struct spool_gap_fixed *f)
{
	if (len < SPOOL_GAP_FIXED)
		return -EBADMSG;
	f->kind = spool_get32(payload);
	f->tail = spool_get32(payload + 4);
	f->expires_us = (int64_t)spool_get64(payload + 8);
	f->reserved = spool_get64(payload + 16);
	if ((f->kind != SPOOL_GAP_AT_RISK && f->kind != SPOOL_GAP_CLEARED) ||
	    f->tail != len - SPOOL_GAP_FIXED)
		return -EBADMSG;
	return 0;
}

static bool all_zero(const uint8_t *p, uint64_t n)
{
	static const uint8_t zero[4096];

	while (n) {
		uint64_t k = n < sizeof(zero) ? n : sizeof(zero);
		if (memcmp(p, zero, k))
			return false;
		p += k;
		n -= k;
	}
	return true;
}

int spool_seg_scan(const uint8_t *map, uint64_t size, uint64_t epoch, uint64_t start_off,
		   const struct spool_scan_ops *ops, void *ctx)
{
	uint64_t off = start_off;
	struct spool_rec r;

	while (off + SPOOL_REC_HDR_SIZE <= size) {
		uint64_t bad, next;
		int rc;

		if (spool_rec_check(map, size, epoch, off, &r)) {
			bool hand = r.type == SPOOL_REC_CHUNK || r.type == SPOOL_REC_COMMIT || ops->delivery;
			rc = ops->rec && hand ? ops->rec(ctx, &r) : 0;
			if (rc)
				return rc;
			off += r.total;
			continue;
		}
		/*
		 * Not a record. Either the end of what was written (zeros, a torn
		 * last write) or corruption followed by good records: look for
		 * the next valid record before deciding, so nothing after a bad
		 * spot is silently dropped. A zero run is skipped a page at a time.
		 */
		bad = off;
		next = 0;
		for (uint64_t o = off + SPOOL_REC_ALIGN; o + SPOOL_REC_HDR_SIZE <= size;
		     o += SPOOL_REC_ALIGN) {
			uint32_t m;
			memcpy(&m, map + o, 4);
			if (m != SPOOL_REC_MAGIC) {
				/* Fast path over zeroed space. */
				if (!(o & 4095) && o + 4096 <= size && all_zero(map + o, 4096))
					o += 4096 - SPOOL_REC_ALIGN;
				continue;
			}
			if (spool_rec_check(map, size, epoch, o, &r)) {
				next = o;
				break;
			}
		}
		if (!next) {
			if (ops->bad)
				ops->bad(ctx, bad, size, true, all_zero(map + bad, size - bad));
			return 0;
		}
		if (ops->bad)
			ops->bad(ctx, bad, next, false, all_zero(map + bad, next - bad));
		off = next;
	}
	return 0;
}

int spool_lane_dir_path(char *buf, size_t cap, const char *dir, unsigned lane)
{
	int n = snprintf(buf, cap, "%s/lane-%02u", dir, lane);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int spool_lane_file_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq, const char *ext)
{
	int n = snprintf(buf, cap, "%s/lane-%02u/%012llu.%s", dir, lane, (unsigned long long)seq, ext);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

uint64_t spool_lane_file_seq(const char *name, const char *ext)
{
	uint64_t v = 0;

	if (strlen(name) != 13 + strlen(ext) || name[12] != '.' || strcmp(name + 13, ext))
		return 0;
	for (int i = 0; i < 12; i++) {
		if (name[i] < '0' || name[i] > '9')
			return 0;
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	return v;
}

int spool_seg_path(char *buf, size_t cap, const char *dir, unsigned lane, uint64_t seq)
{
	return spool_lane_file_path(buf, cap, dir, lane, seq, "seg");
}

uint64_t spool_seg_name_seq(const char *name)
{
	return spool_lane_file_seq(name, "seg");
}

int spool_seg_list(const char *lane_dir, uint64_t **out)
{
	return spool_lane_file_list(lane_dir, "seg", out);
}

int spool_lane_file_list(const char *lane_dir, const char *ext, uint64_t **out)
{
	DIR *d = opendir(lane_dir);
	struct dirent *de;
	uint64_t *v = NULL;
	size_t n = 0, cap = 0;

	*out = NULL;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		uint64_t s = spool_lane_file_seq(de->d_name, ext);
		if (!s)
			continue;
		uint64_t *nv = ds_grow(v, &cap, n, sizeof(*v), 64);
		if (!nv) {
			free(v);
			closedir(d);
			return -ENOMEM;
		}
		v = nv;
		v[n++] = s;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), ds_u64_cmp);
	*out = v;
	return (int)n;
}

int spool_lane_list(const char *dir, unsigned *lanes)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	bool seen[SPOOL_LANES_MAX] = {0};
	int n = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		unsigned a, b;
		char extra;
		if (sscanf(de->d_name, "lane-%1u%1u%c", &a, &b, &extra) == 2 && strlen(de->d_name) == 7)
			seen[a * 10 + b] = true;
		else if (sscanf(de->d_name, "lane-%3u%c", &a, &extra) == 1 && strlen(de->d_name) == 8 &&
			 a < SPOOL_LANES_MAX && a >= 100)
			seen[a] = true;
	}
	closedir(d);
	for (unsigned i = 0; i < SPOOL_LANES_MAX; i++)
		if (seen[i])
			lanes[n++] = i;
	return n;
}
