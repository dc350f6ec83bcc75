/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_GAP_H
#define DS_SPOOL_GAP_H

/*
 * Gap records (type 7) beyond their fixed prefix (spool_format.h): the
 * fingerprint tail of an AT_RISK record (FORMAT.md, "Gap records").
 * Internal to spool/ and its tests; io/ sees struct spool_gap_rec (spool.h).
 */

#include <stddef.h>
#include <stdint.h>

#include "spool.h"

#define SPOOL_GAP_TAIL_V1 96u /* bytes of an AT_RISK tail, before its recipient hashes (8 each) */
#define SPOOL_GAP_TAIL_WM 32u /* bytes of a watermark tail (CLEARED) */

/* Payload bytes of g (fixed prefix + tail). */
size_t spool_gap_size(const struct spool_gap_rec *g);
/* Encode the payload (spool_gap_size bytes) into out. */
void spool_gap_encode(uint8_t *out, const struct spool_gap_rec *g);
/* Decode a payload (id from the record header): 0 or -EBADMSG. */
int spool_gap_decode(const uint8_t *payload, uint32_t len, uint64_t id, struct spool_gap_rec *g);

#endif
