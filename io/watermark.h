/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_WATERMARK_H
#define DS_IO_WATERMARK_H

/*
 * Back-pressure before the disk is full (issue 15 point 3).
 *
 * One sampler thread for the whole server measures, every
 * IO_WATERMARK_PERIOD_MS, the spool directory's files on disk (allocated
 * bytes of every regular file in the spool directory and its lane
 * directories: what `du` says, and a figure that goes down when segments
 * are deleted) and the free space of its file system (statvfs f_bavail).
 * It goes high when
 *     bytes >= max_bytes          (--spool-max-bytes)   reason spool_max
 *  or free  <  min_free_bytes     (--spool-min-free-bytes) reason min_free
 * and back low only when both are clear by a margin (hysteresis):
 *     bytes <  resume_bytes      = max_bytes - max_bytes / 10   (90%)
 * and free  >= resume_free_bytes = min_free_bytes + min_free_bytes / 10.
 * While high, every session's MAIL gets 452 4.3.1 (smtp_sink.mail_ok):
 * a shared atomic flag, one relaxed load per MAIL, no lock. Transactions
 * already past MAIL finish; the spool's own -ENOSPC (segment preparation
 * failing) still answers 452 at DATA or at the final dot, never 250.
 * Each change is one log line (event=spool_watermark) and the metrics
 * block obs_metrics_watermark is refreshed at every sample.
 */

#include <stdbool.h>
#include <stdint.h>

#include "io_config.h"

struct obs_log_ring;

#define IO_WATERMARK_PERIOD_MS 250
/* Defaults: 80% of the file system; floor min(1 GiB, 5% of it). */
#define IO_WATERMARK_MAX_PCT_DEFAULT	 80u
#define IO_WATERMARK_FLOOR_PCT_DEFAULT	 5u
#define IO_WATERMARK_FLOOR_BYTES_DEFAULT (1ull << 30)

/* The limits in force for a file system of fs_bytes. */
struct io_watermark_limits {
	uint64_t max_bytes, resume_bytes;
	uint64_t min_free_bytes, resume_free_bytes;
};

void io_watermark_limits(const struct io_watermark_config *c, uint64_t fs_bytes,
			 struct io_watermark_limits *l);

/*
 * The next state from the current one and a sample (pure; tests). *reason
 * (may be NULL) is set when the answer is high: "spool_max", "min_free" or
 * "spool_max+min_free".
 */
bool io_watermark_next(bool high, uint64_t bytes, uint64_t free_bytes, const struct io_watermark_limits *l,
		       const char **reason);

/* Allocated bytes of the regular files in dir and its subdirectories (one level). 0 or -errno. */
int io_watermark_spool_bytes(const char *dir, uint64_t *out);

/*
 * Take a first sample now (a restart on a full spool refuses from the
 * first MAIL), print the limits, start the sampler. log: a ring no other
 * thread produces into. One server per process: start once, stop once.
 */
int io_watermark_start(const struct io_config *cfg, struct obs_log_ring *log);
/* Stop and join the sampler (no-op when not started). The flag keeps its last value. */
void io_watermark_stop(void);

/* Is the spool above its high watermark? Any thread, any time: one relaxed load. */
bool io_watermark_high(void);

#endif
