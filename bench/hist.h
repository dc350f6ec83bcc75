/* SPDX-License-Identifier: MIT */
#ifndef DS_BENCH_HIST_H
#define DS_BENCH_HIST_H

/*
 * Log-linear (HDR-style) histogram of non-negative integer values (the
 * benchmark records nanoseconds).
 *
 * Values below 2^(sub_bits+1) are kept exactly. Above that, each power of
 * two [2^m, 2^(m+1)) is split into 2^sub_bits equal buckets, so a bucket is
 * at most 2^-sub_bits of the values it holds wide: with sub_bits = 7 any
 * reported percentile is within 1/128 (< 0.8%) of the exact one.
 *
 * Memory is allocated once by bench_hist_init(); recording never allocates
 * and is a handful of instructions. Values above max_value are clamped to
 * max_value (and counted in clamped_count); min/max/mean stay exact.
 */

#include <stdbool.h>
#include <stdint.h>

#define BENCH_HIST_SUB_BITS_MIN	    1
#define BENCH_HIST_SUB_BITS_MAX	    14
#define BENCH_HIST_SUB_BITS_DEFAULT 7

struct bench_hist {
	uint64_t *counts;
	uint32_t bucket_count;
	uint32_t sub_bits;
	uint64_t max_value; /* largest value recorded without clamping */
	uint64_t total_count;
	uint64_t clamped_count;
	uint64_t min_value;    /* exact; UINT64_MAX when empty */
	uint64_t max_seen;     /* exact; 0 when empty */
	unsigned __int128 sum; /* exact sum for the mean */
};

/* Allocates the buckets. Returns 0 or -EINVAL / -ENOMEM. */
int bench_hist_init(struct bench_hist *h, uint64_t max_value, uint32_t sub_bits);
void bench_hist_free(struct bench_hist *h);
void bench_hist_reset(struct bench_hist *h);

void bench_hist_record(struct bench_hist *h, uint64_t value);
void bench_hist_record_n(struct bench_hist *h, uint64_t value, uint64_t n);

/* Adds src into dst. Both must have the same max_value and sub_bits: -EINVAL otherwise. */
int bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src);

/*
 * Value at percentile p (0..100): the smallest recorded value v such that at
 * least p% of the recorded values are <= v, reported as the middle of v's
 * bucket (clamped to the exact min and max). 0 when empty.
 */
uint64_t bench_hist_percentile(const struct bench_hist *h, double p);
uint64_t bench_hist_min(const struct bench_hist *h);
uint64_t bench_hist_max(const struct bench_hist *h);
double bench_hist_mean(const struct bench_hist *h);
uint64_t bench_hist_count(const struct bench_hist *h);

/* Internal mapping, exposed for tests. */
uint32_t bench_hist_index(const struct bench_hist *h, uint64_t value);
uint64_t bench_hist_bucket_low(const struct bench_hist *h, uint32_t index);
uint64_t bench_hist_bucket_high(const struct bench_hist *h, uint32_t index); /* inclusive */

#endif
