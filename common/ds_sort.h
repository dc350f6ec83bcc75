/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_SORT_H
#define DS_COMMON_SORT_H

#include <stdint.h>

/* qsort/bsearch order of uint64_t values (ids, sequence numbers). */
static inline int ds_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

#endif
