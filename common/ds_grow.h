/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_GROW_H
#define DS_COMMON_GROW_H

#include <stddef.h>
#include <stdlib.h>

/*
 * Room for one more element in a growing array of n elements of elem bytes
 * with *cap slots: arr itself while n < *cap, else arr reallocated to twice
 * the slots (first when it has none) and *cap updated. NULL when that
 * allocation fails: arr and *cap are then untouched (the caller still owns
 * arr). Only for cold paths (readers, recovery, directory scans).
 */
static inline void *ds_grow(void *arr, size_t *cap, size_t n, size_t elem, size_t first)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return arr;
	ncap = *cap ? *cap * 2 : first;
	p = realloc(arr, ncap * elem);
	if (p)
		*cap = ncap;
	return p;
}

#endif
