/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_ASCII_H
#define DS_COMMON_ASCII_H

/*
 * ASCII case folding for protocol keywords (SMTP verbs, ESMTP and DSN
 * parameters): locale-free, so a Turkish or any other locale never changes
 * what a keyword matches. Shared by core/ and deliver/.
 */

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static inline char ds_ascii_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

/* a[0, alen) equals the NUL-terminated b, ignoring ASCII case. */
static inline bool ds_ascii_ieq(const char *a, size_t alen, const char *b)
{
	if (alen != strlen(b))
		return false;
	for (size_t i = 0; i < alen; i++)
		if (ds_ascii_lower(a[i]) != ds_ascii_lower(b[i]))
			return false;
	return true;
}

#endif
