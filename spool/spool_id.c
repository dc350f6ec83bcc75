/* SPDX-License-Identifier: MIT */
#include "spool_id.h"

#include <errno.h>
#include <string.h>

#include "ds_assert.h"

int spool_id_format(uint64_t id, char *buf, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";

	DS_ASSERT(cap >= 17);
	for (int i = 0; i < 16; i++)
		buf[i] = hex[(id >> (60 - 4 * i)) & 0xf];
	buf[16] = 0;
	return 16;
}

int spool_id_parse(const char *s, uint64_t *id)
{
	uint64_t v = 0;
	size_t n = strlen(s);

	if (n == 0 || n > 16)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return -EINVAL;
		v = v << 4 | d;
	}
	*id = v;
	return 0;
}
