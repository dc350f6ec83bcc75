/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_NOFILE_H
#define DS_COMMON_NOFILE_H

#include <stdint.h>
#include <sys/resource.h>

/*
 * Raise the soft RLIMIT_NOFILE to need descriptors, at most to the hard
 * limit. Returns the soft limit in force afterwards (UINT64_MAX when it
 * cannot be read): below need, the caller says so.
 */
static inline uint64_t ds_raise_nofile(uint64_t need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return UINT64_MAX;
	if (rl.rlim_cur >= need)
		return rl.rlim_cur;
	rlim_t cur = rl.rlim_cur;
	rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return cur;
	return rl.rlim_cur;
}

#endif
