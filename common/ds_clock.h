/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_CLOCK_H
#define DS_COMMON_CLOCK_H

/*
 * The clocks, read through the vDSO (no system call): monotonic for
 * durations and deadlines, wall (CLOCK_REALTIME) for timestamps that leave
 * the process (log lines, Received: headers, segment headers).
 */

#include <stdint.h>
#include <time.h>

static inline int64_t ds_clock_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t ds_mono_ns(void)
{
	return ds_clock_ns(CLOCK_MONOTONIC);
}

static inline int64_t ds_mono_us(void)
{
	return ds_mono_ns() / 1000;
}

static inline int64_t ds_mono_ms(void)
{
	return ds_mono_ns() / 1000000;
}

static inline int64_t ds_wall_ns(void)
{
	return ds_clock_ns(CLOCK_REALTIME);
}

static inline int64_t ds_wall_us(void)
{
	return ds_wall_ns() / 1000;
}

#endif
