/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_OPREC_H
#define DS_SPOOL_OPREC_H

/*
 * Operator records (type 6, format 3; FORMAT.md "Operator records"): the
 * whole payload, the fixed 24-byte prefix of spool_format.h followed by
 * the tail this codec owns: the operator's login name and a reason, each a
 * string as in the commit record (u32 length, bytes, NUL). Internal to
 * spool/ (the lane writes it, the fold and dotspool-ctl read it).
 */

#include <stddef.h>
#include <stdint.h>

#include "spool.h"
#include "spool_format.h"

#define SPOOL_OP_NAME_MAX   64u	 /* login name kept, octets (longer: cut) */
#define SPOOL_OP_REASON_MAX 255u /* reason kept, octets (longer: cut) */

_Static_assert(SPOOL_OP_FIXED + 2 * 5 + SPOOL_OP_NAME_MAX + SPOOL_OP_REASON_MAX <= SPOOL_OPERATOR_MAX,
	       "an operator record fits its limit");

/* Payload bytes for o (strings cut at their limits); 0 if o is invalid (unknown action, id 0). */
size_t spool_oprec_size(const struct spool_operator *o);
/* Write exactly spool_oprec_size(o) bytes. */
void spool_oprec_encode(uint8_t *out, const struct spool_operator *o);
/*
 * Decode a whole payload; o->id = 0 (the record header's txn id names the
 * message), strings point into the payload. 0 or -EBADMSG (the fixed part
 * does not decode, a string over its limit, bytes left over). A tail of 0
 * bytes (a writer that keeps no name) decodes with "" strings.
 */
int spool_oprec_decode(const uint8_t *payload, uint32_t len, struct spool_operator *o);

const char *spool_operator_action_name(uint32_t action); /* "hold", ...; "?" if unknown */

#endif
