/* SPDX-License-Identifier: MIT */
/*
 * Operator record codec (spool_oprec.h): the fixed prefix is
 * spool_op_fixed_encode's, the tail is two strings.
 */
#include "spool_oprec.h"

#include <errno.h>
#include <string.h>

_Static_assert((int)SPOOL_OPERATOR_HOLD == (int)SPOOL_OP_HOLD &&
		       (int)SPOOL_OPERATOR_RELEASE == (int)SPOOL_OP_RELEASE &&
		       (int)SPOOL_OPERATOR_DELETE == (int)SPOOL_OP_DELETE &&
		       (int)SPOOL_OPERATOR_BOUNCE == (int)SPOOL_OP_BOUNCE &&
		       (int)SPOOL_OPERATOR_RETRY == (int)SPOOL_OP_RETRY,
	       "spool.h's operator actions are the format's");

static size_t cut(const char *s, size_t max)
{
	return s ? strnlen(s, max) : 0;
}

size_t spool_oprec_size(const struct spool_operator *o)
{
	if (!o->id || o->action < SPOOL_OP_HOLD || o->action > SPOOL_OP_RETRY)
		return 0;
	return SPOOL_OP_FIXED + 5 + cut(o->name, SPOOL_OP_NAME_MAX) + 5 + cut(o->reason, SPOOL_OP_REASON_MAX);
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t n)
{
	uint32_t len = (uint32_t)n;

	memcpy(p, &len, 4);
	if (n)
		memcpy(p + 4, s, n);
	p[4 + n] = 0;
	return p + 5 + n;
}

void spool_oprec_encode(uint8_t *out, const struct spool_operator *o)
{
	size_t nn = cut(o->name, SPOOL_OP_NAME_MAX), nr = cut(o->reason, SPOOL_OP_REASON_MAX);
	struct spool_op_fixed f = {.action = o->action,
				   .uid = o->uid,
				   .at_us = o->at_us,
				   .pid = o->pid,
				   .tail = (uint32_t)(10 + nn + nr)};
	uint8_t *p;

	spool_op_fixed_encode(out, &f);
	p = put_str(out + SPOOL_OP_FIXED, o->name, nn);
	put_str(p, o->reason, nr);
}

static int get_str(const uint8_t **p, const uint8_t *end, uint32_t max, const char **out)
{
	uint32_t len;

	if (end - *p < 5)
		return -EBADMSG;
	memcpy(&len, *p, 4);
	if (len > max || (size_t)(end - *p) < 5u + len || (*p)[4 + len] != 0 || memchr(*p + 4, 0, len))
		return -EBADMSG;
	*out = (const char *)*p + 4;
	*p += 5 + len;
	return 0;
}

int spool_oprec_decode(const uint8_t *payload, uint32_t len, struct spool_operator *o)
{
	struct spool_op_fixed f;
	const uint8_t *p, *end = payload + len;

	if (spool_op_fixed_decode(payload, len, &f))
		return -EBADMSG;
	*o = (struct spool_operator){
		.action = f.action, .uid = f.uid, .pid = f.pid, .at_us = f.at_us, .name = "", .reason = ""};
	if (f.tail == 0)
		return 0;
	p = payload + SPOOL_OP_FIXED;
	if (get_str(&p, end, SPOOL_OP_NAME_MAX, &o->name) ||
	    get_str(&p, end, SPOOL_OP_REASON_MAX, &o->reason) || p != end)
		return -EBADMSG;
	return 0;
}

const char *spool_operator_action_name(uint32_t action)
{
	static const char *const names[] = {"?", "hold", "release", "delete", "bounce", "retry"};

	return action <= SPOOL_OP_RETRY ? names[action] : "?";
}
