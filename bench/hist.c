/* SPDX-License-Identifier: MIT */
#include "hist.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"

static uint32_t hist_msb(uint64_t v)
{
	DS_ASSERT(v != 0);
	return 63u - (uint32_t)__builtin_clzll(v);
}

/*
 * Index layout: values < 2^(S+1) map to themselves. For v >= 2^(S+1) with
 * top bit m, the S bits below the top bit select one of 2^S buckets of the
 * octave, and octave m starts at index (m - S + 1) * 2^S. Octave S would
 * start at 2^S too, which is why the exact range and the first log octave
 * join without a gap.
 */
static uint32_t hist_index_raw(uint32_t sub_bits, uint64_t v)
{
	if (v < (2ull << sub_bits))
		return (uint32_t)v;
	uint32_t m = hist_msb(v);
	uint32_t shift = m - sub_bits;
	uint64_t mantissa = v >> shift; /* in [2^S, 2^(S+1)) */
	return (uint32_t)(((uint64_t)(m - sub_bits + 1) << sub_bits) + (mantissa - (1ull << sub_bits)));
}

uint32_t bench_hist_index(const struct bench_hist *h, uint64_t value)
{
	return hist_index_raw(h->sub_bits, value);
}

uint64_t bench_hist_bucket_low(const struct bench_hist *h, uint32_t index)
{
	uint32_t s = h->sub_bits;
	if (index < (2u << s))
		return index;
	uint32_t octave = index >> s; /* = m - S + 1 */
	uint64_t mantissa = (1ull << s) + (index & ((1u << s) - 1));
	uint32_t shift = octave - 1;
	return mantissa << shift;
}

uint64_t bench_hist_bucket_high(const struct bench_hist *h, uint32_t index)
{
	uint32_t s = h->sub_bits;
	if (index < (2u << s))
		return index;
	uint32_t shift = (index >> s) - 1;
	return bench_hist_bucket_low(h, index) + ((1ull << shift) - 1);
}

int bench_hist_init(struct bench_hist *h, uint64_t max_value, uint32_t sub_bits)
{
	memset(h, 0, sizeof(*h));
	if (sub_bits < BENCH_HIST_SUB_BITS_MIN || sub_bits > BENCH_HIST_SUB_BITS_MAX || max_value == 0)
		return -EINVAL;
	h->sub_bits = sub_bits;
	h->max_value = max_value;
	h->bucket_count = hist_index_raw(sub_bits, max_value) + 1;
	h->counts = calloc(h->bucket_count, sizeof(h->counts[0]));
	if (h->counts == NULL)
		return -ENOMEM;
	h->min_value = UINT64_MAX;
	return 0;
}

void bench_hist_free(struct bench_hist *h)
{
	free(h->counts);
	h->counts = NULL;
	h->bucket_count = 0;
}

void bench_hist_reset(struct bench_hist *h)
{
	memset(h->counts, 0, h->bucket_count * sizeof(h->counts[0]));
	h->total_count = 0;
	h->clamped_count = 0;
	h->min_value = UINT64_MAX;
	h->max_seen = 0;
	h->sum = 0;
}

void bench_hist_record_n(struct bench_hist *h, uint64_t value, uint64_t n)
{
	if (n == 0)
		return;
	if (value < h->min_value)
		h->min_value = value;
	if (value > h->max_seen)
		h->max_seen = value;
	h->sum += (unsigned __int128)value * n;
	h->total_count += n;
	uint64_t v = value;
	if (v > h->max_value) {
		v = h->max_value;
		h->clamped_count += n;
	}
	uint32_t i = hist_index_raw(h->sub_bits, v);
	DS_ASSERT(i < h->bucket_count);
	h->counts[i] += n;
}

void bench_hist_record(struct bench_hist *h, uint64_t value)
{
	bench_hist_record_n(h, value, 1);
}

int bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src)
{
	if (dst->sub_bits != src->sub_bits || dst->max_value != src->max_value)
		return -EINVAL;
	DS_ASSERT(dst->bucket_count == src->bucket_count);
	for (uint32_t i = 0; i < src->bucket_count; i++)
		dst->counts[i] += src->counts[i];
	dst->total_count += src->total_count;
	dst->clamped_count += src->clamped_count;
	dst->sum += src->sum;
	if (src->min_value < dst->min_value)
		dst->min_value = src->min_value;
	if (src->max_seen > dst->max_seen)
		dst->max_seen = src->max_seen;
	return 0;
}

uint64_t bench_hist_percentile(const struct bench_hist *h, double p)
{
	if (h->total_count == 0)
		return 0;
	if (!(p > 0.0))
		return h->min_value;
	if (p >= 100.0)
		return h->max_seen;
	/* rank = ceil(p/100 * n), at least 1: the nearest-rank definition. */
	uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->total_count);
	if (rank < 1)
		rank = 1;
	if (rank > h->total_count)
		rank = h->total_count;
	uint64_t seen = 0;
	for (uint32_t i = 0; i < h->bucket_count; i++) {
		seen += h->counts[i];
		if (seen >= rank) {
			uint64_t lo = bench_hist_bucket_low(h, i);
			uint64_t hi = bench_hist_bucket_high(h, i);
			uint64_t v = lo + (hi - lo) / 2;
			if (v < h->min_value)
				v = h->min_value;
			if (v > h->max_seen)
				v = h->max_seen;
			return v;
		}
	}
	DS_ASSERT(false && "histogram counts do not add up to total_count");
	return 0;
}

uint64_t bench_hist_min(const struct bench_hist *h)
{
	return h->total_count ? h->min_value : 0;
}

uint64_t bench_hist_max(const struct bench_hist *h)
{
	return h->max_seen;
}

double bench_hist_mean(const struct bench_hist *h)
{
	if (h->total_count == 0)
		return 0.0;
	return (double)h->sum / (double)h->total_count;
}

uint64_t bench_hist_count(const struct bench_hist *h)
{
	return h->total_count;
}
