/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_ID_H
#define DS_SPOOL_ID_H

/*
 * Txn (queue) ids: lane (8 bits) | segment seq at begin (32 bits) |
 * counter in that segment (24 bits). Unique across lanes and restarts
 * because a lane's segment sequences never repeat (FORMAT.md, "Txn /
 * queue ids"). Printed as 16 uppercase hex digits.
 */

#include <stddef.h>
#include <stdint.h>

#define SPOOL_ID_COUNTER_BITS 24
#define SPOOL_ID_SEQ_BITS     32

static inline uint64_t spool_id_make(unsigned lane, uint64_t seq, uint32_t counter)
{
	return ((uint64_t)lane << 56) | ((seq & 0xffffffffull) << SPOOL_ID_COUNTER_BITS) | counter;
}

static inline unsigned spool_id_lane(uint64_t id)
{
	return (unsigned)(id >> 56);
}

/* Printable queue id ([0-9A-F], NUL-terminated) of a txn id; returns its length. cap >= 17. */
int spool_id_format(uint64_t id, char *buf, size_t cap);
/* Inverse of spool_id_format (hex, either case): 0 or -EINVAL. */
int spool_id_parse(const char *s, uint64_t *id);

#endif
