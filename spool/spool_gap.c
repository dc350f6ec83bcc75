/* SPDX-License-Identifier: MIT */
/*
 * Gap record payloads (FORMAT.md, "Gap records"): the fixed prefix that
 * recovery, reclamation and compaction read (spool_gap_fixed_*), then the
 * fingerprint a retry is matched on. A CLEARED record has no tail.
 */
#include <errno.h>
#include <string.h>

#include "ds_assert.h"
#include "spool_format.h"
#include "spool_gap.h"

size_t spool_gap_size(const struct spool_gap_rec *g)
{
	if (g->kind == SPOOL_GAP_REC_AT_RISK)
		return SPOOL_GAP_FIXED + SPOOL_GAP_TAIL_V1 + 8u * DS_MIN(g->fp.nrh, 8u);
	return SPOOL_GAP_FIXED + (g->watermark ? SPOOL_GAP_TAIL_WM : 0);
}

void spool_gap_encode(uint8_t *out, const struct spool_gap_rec *g)
{
	bool risk = g->kind == SPOOL_GAP_REC_AT_RISK;
	struct spool_gap_fixed f = {.kind = risk ? SPOOL_GAP_AT_RISK : SPOOL_GAP_CLEARED,
				    .tail = risk ? (uint32_t)(spool_gap_size(g) - SPOOL_GAP_FIXED) : 0,
				    .expires_us = risk ? g->expires_us : 0};
	if (!risk && g->watermark)
		f.tail = SPOOL_GAP_TAIL_WM;
	spool_gap_fixed_encode(out, &f);
	if (!risk) {
		if (g->watermark) {
			uint8_t *p = out + SPOOL_GAP_FIXED;
			spool_put32(p, 2); /* tail version 2: a lane's watermark */
			spool_put32(p + 4, g->wm_all ? 1 : 0);
			spool_put64(p + 8, g->wm_seq);
			spool_put64(p + 16, g->wm_off);
			spool_put64(p + 24, (uint64_t)g->wm_at_us);
		}
		return;
	}
	uint8_t *p = out + SPOOL_GAP_FIXED;
	const struct spool_gap_fp *fp = &g->fp;
	spool_put32(p, 1); /* tail version */
	spool_put32(p + 4, fp->rcpt_count);
	spool_put64(p + 8, fp->env_digest);
	spool_put64(p + 16, fp->size);
	spool_put64(p + 24, fp->hash_lo);
	spool_put64(p + 32, fp->hash_hi);
	spool_put32(p + 40, fp->hdr_len);
	spool_put32(p + 44, fp->lane);
	spool_put64(p + 48, fp->seq);
	spool_put64(p + 56, fp->off);
	spool_put64(p + 64, (uint64_t)fp->received_at_us);
	spool_put64(p + 72, fp->head_hash);
	spool_put64(p + 80, fp->sender_digest);
	uint32_t nrh = fp->nrh <= 8 ? fp->nrh : 0;
	spool_put32(p + 88, nrh);
	spool_put32(p + 92, 0);
	for (uint32_t i = 0; i < nrh; i++)
		spool_put64(p + 96 + 8 * i, fp->rcpt_h[i]);
}

int spool_gap_decode(const uint8_t *payload, uint32_t len, uint64_t id, struct spool_gap_rec *g)
{
	struct spool_gap_fixed f;

	memset(g, 0, sizeof(*g));
	if (spool_gap_fixed_decode(payload, len, &f))
		return -EBADMSG;
	g->id = id;
	g->kind = f.kind == SPOOL_GAP_AT_RISK ? SPOOL_GAP_REC_AT_RISK : SPOOL_GAP_REC_CLEARED;
	g->expires_us = f.expires_us;
	if (f.kind == SPOOL_GAP_CLEARED) {
		const uint8_t *p = payload + SPOOL_GAP_FIXED;
		if (f.tail >= SPOOL_GAP_TAIL_WM && spool_get32(p) == 2) {
			g->watermark = true;
			g->wm_all = spool_get32(p + 4) & 1;
			g->wm_seq = spool_get64(p + 8);
			g->wm_off = spool_get64(p + 16);
			g->wm_at_us = (int64_t)spool_get64(p + 24);
		}
		return 0; /* other tails are ignored */
	}
	/* An at-risk record must carry a fingerprint we understand: else it matches nothing. */
	const uint8_t *p = payload + SPOOL_GAP_FIXED;
	if (f.tail < SPOOL_GAP_TAIL_V1 || spool_get32(p) != 1)
		return -EBADMSG;
	struct spool_gap_fp *fp = &g->fp;
	fp->rcpt_count = spool_get32(p + 4);
	fp->env_digest = spool_get64(p + 8);
	fp->size = spool_get64(p + 16);
	fp->hash_lo = spool_get64(p + 24);
	fp->hash_hi = spool_get64(p + 32);
	fp->hdr_len = spool_get32(p + 40);
	fp->lane = spool_get32(p + 44);
	fp->seq = spool_get64(p + 48);
	fp->off = spool_get64(p + 56);
	fp->received_at_us = (int64_t)spool_get64(p + 64);
	fp->head_hash = spool_get64(p + 72);
	fp->sender_digest = spool_get64(p + 80);
	fp->nrh = spool_get32(p + 88);
	if (fp->nrh > 8 || f.tail != SPOOL_GAP_TAIL_V1 + 8 * fp->nrh ||
	    (fp->nrh && fp->nrh != fp->rcpt_count))
		return -EBADMSG;
	for (uint32_t i = 0; i < fp->nrh; i++)
		fp->rcpt_h[i] = spool_get64(p + 96 + 8 * i);
	if (fp->lane >= SPOOL_LANES_MAX || fp->rcpt_count == 0 || fp->rcpt_count > SPOOL_RCPT_MAX)
		return -EBADMSG;
	return 0;
}
