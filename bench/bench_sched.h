/* SPDX-License-Identifier: MIT */
#ifndef DS_BENCH_SCHED_H
#define DS_BENCH_SCHED_H

/*
 * Open-loop arrival schedule: message k (k = 0, 1, ...) is due at
 * start_ns + k * 1e9 / rate. Each time is computed from k, not by adding
 * an interval to the previous one, so no rounding drift accumulates over
 * millions of messages. The schedule never looks at the server: when the
 * server stalls, due messages pile up and their latency (measured from the
 * due time) shows the stall instead of hiding it (coordinated omission).
 */

#include <stdint.h>

struct bench_sched {
	uint64_t start_ns;
	double rate_per_s;
	uint64_t limit; /* number of messages in the schedule; UINT64_MAX = unbounded */
	uint64_t next;	/* next message not yet released */
};

/* Returns -EINVAL if rate_per_s is not > 0 and finite. */
int bench_sched_init(struct bench_sched *s, uint64_t start_ns, double rate_per_s, uint64_t limit);
/* Due time of message k. */
uint64_t bench_sched_time_ns(const struct bench_sched *s, uint64_t k);
/*
 * Releases every message due at or before now_ns, at most max_release:
 * returns how many were released; their indexes are [*first, *first + n).
 */
uint64_t bench_sched_release(struct bench_sched *s, uint64_t now_ns, uint64_t max_release, uint64_t *first);
/* Due time of the next unreleased message, UINT64_MAX when the schedule is exhausted. */
uint64_t bench_sched_next_ns(const struct bench_sched *s);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

#endif
