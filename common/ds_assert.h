/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_ASSERT_H
#define DS_COMMON_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

/*
 * Always-on assertion: invariants are checked in release builds too
 * (TIGER_STYLE). A broken invariant in a mail server must stop it, not
 * let it acknowledge mail it may have lost.
 */
__attribute__((noreturn, cold)) static inline void ds_assert_fail(const char *expr, const char *file,
								  int line, const char *func)
{
	fprintf(stderr, "dotspool: assertion failed: %s (%s:%d %s)\n", expr, file, line, func);
	abort();
}

#define DS_ASSERT(cond)                                                                                      \
	do {                                                                                                 \
		if (__builtin_expect(!(cond), 0))                                                            \
			ds_assert_fail(#cond, __FILE__, __LINE__, __func__);                                 \
	} while (0)

#define DS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DS_MIN(a, b)	 ((a) < (b) ? (a) : (b))
#define DS_MAX(a, b)	 ((a) > (b) ? (a) : (b))

#endif
