/* SPDX-License-Identifier: MIT */
/*
 * LD_PRELOAD shim for tests: every open of a file with O_DIRECT fails with
 * EINVAL, as on a file system without O_DIRECT support (tmpfs before Linux
 * 6.6, some FUSE and network file systems). Everything else goes to the
 * next definition (libc, or a sanitizer's interceptor). The first refusal
 * is reported on stderr, so a test can tell that the shim was in effect.
 *
 * Used by tests/spool/test_odirect_fallback.py against the real server
 * (`dotspool --spool-io direct`).
 */
#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef O_TMPFILE
#define O_TMPFILE 0
#endif

static int refused_once;

static int refuse(const char *path)
{
	if (!__atomic_exchange_n(&refused_once, 1, __ATOMIC_RELAXED)) {
		char line[600];
		int n = snprintf(line, sizeof(line),
				 "odirect_einval shim: O_DIRECT open of %s refused (EINVAL)\n",
				 path ? path : "?");
		if (n > 0)
			(void)!write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
	}
	errno = EINVAL;
	return -1;
}

static bool needs_mode(int flags)
{
	return (flags & O_CREAT) || (O_TMPFILE && (flags & O_TMPFILE) == O_TMPFILE);
}

#define MODE_ARG(flags)                                                                                      \
	mode_t mode = 0;                                                                                     \
	if (needs_mode(flags)) {                                                                             \
		va_list ap;                                                                                  \
		va_start(ap, flags);                                                                         \
		mode = (mode_t)va_arg(ap, int);                                                              \
		va_end(ap);                                                                                  \
	}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

int open(const char *path, int flags, ...)
{
	static open_fn real;
	MODE_ARG(flags);
	if (flags & O_DIRECT)
		return refuse(path);
	if (!real)
		real = (open_fn)next("open");
	return real(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	static open_fn real;
	MODE_ARG(flags);
	if (flags & O_DIRECT)
		return refuse(path);
	if (!real)
		real = (open_fn)next("open64");
	return real(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	static openat_fn real;
	MODE_ARG(flags);
	if (flags & O_DIRECT)
		return refuse(path);
	if (!real)
		real = (openat_fn)next("openat");
	return real(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	static openat_fn real;
	MODE_ARG(flags);
	if (flags & O_DIRECT)
		return refuse(path);
	if (!real)
		real = (openat_fn)next("openat64");
	return real(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE builds call these for flags not known at compile time. */
int __open_2(const char *path, int flags)
{
	return (flags & O_DIRECT) ? refuse(path) : open(path, flags);
}

int __open64_2(const char *path, int flags)
{
	return (flags & O_DIRECT) ? refuse(path) : open64(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	return (flags & O_DIRECT) ? refuse(path) : openat(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	return (flags & O_DIRECT) ? refuse(path) : openat64(dirfd, path, flags);
}
