/* SPDX-License-Identifier: MIT */
/* Histogram percentiles against exact ones from sorted samples. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <errno.h>
#include <math.h>
#include <cmocka.h>

#include "hist.h"

#define N_SAMPLES 200000

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static double rnd01(void)
{
	return (double)(rnd() >> 11) / 9007199254740992.0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t exact_pct(const uint64_t *sorted, size_t n, double p)
{
	size_t rank = (size_t)ceil(p / 100.0 * (double)n);
	if (rank < 1)
		rank = 1;
	return sorted[rank - 1];
}

enum dist { D_UNIFORM, D_EXP, D_LOGNORMAL, D_BIMODAL, D_SMALL, D_PARETO };

static uint64_t sample(enum dist d)
{
	switch (d) {
	case D_UNIFORM:
		return rnd() % 10000000; /* 0..10 ms in ns */
	case D_EXP:
		return (uint64_t)(-log(1.0 - rnd01()) * 250000.0);
	case D_LOGNORMAL: {
		double u1 = rnd01() + 1e-12, u2 = rnd01();
		double z = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
		return (uint64_t)exp(13.0 + 1.5 * z);
	}
	case D_BIMODAL:
		return (rnd() % 100 < 97) ? 200000 + rnd() % 50000 : 40000000 + rnd() % 10000000;
	case D_SMALL:
		return rnd() % 300; /* exact range */
	case D_PARETO:
		return (uint64_t)(1000.0 / pow(1.0 - rnd01(), 1.0 / 1.2));
	}
	return 0;
}

static void check_dist(enum dist d)
{
	uint64_t *v = malloc(N_SAMPLES * sizeof(*v));
	assert_non_null(v);
	struct bench_hist h;
	assert_int_equal(bench_hist_init(&h, 3600ull * 1000000000ull, 7), 0);
	long double sum = 0;
	for (size_t i = 0; i < N_SAMPLES; i++) {
		v[i] = sample(d);
		if (v[i] > 3600ull * 1000000000ull)
			v[i] = 3600ull * 1000000000ull;
		sum += v[i];
		bench_hist_record(&h, v[i]);
	}
	qsort(v, N_SAMPLES, sizeof(*v), cmp_u64);
	const double ps[] = {0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
	for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
		uint64_t ex = exact_pct(v, N_SAMPLES, ps[i]);
		uint64_t got = bench_hist_percentile(&h, ps[i]);
		double err = ex ? fabs((double)got - (double)ex) / (double)ex : (double)got;
		if (err > 0.01)
			fail_msg("dist %d p%g: exact %llu got %llu (err %.4f)", d, ps[i],
				 (unsigned long long)ex, (unsigned long long)got, err);
	}
	assert_int_equal(bench_hist_min(&h), v[0]);
	assert_int_equal(bench_hist_max(&h), v[N_SAMPLES - 1]);
	assert_int_equal(bench_hist_count(&h), N_SAMPLES);
	double mean = (double)(sum / N_SAMPLES);
	assert_true(fabs(bench_hist_mean(&h) - mean) <= mean * 1e-9 + 1e-9);
	bench_hist_free(&h);
	free(v);
}

static void test_uniform(void **s)
{
	check_dist(D_UNIFORM);
}
static void test_exp(void **s)
{
	check_dist(D_EXP);
}
static void test_lognormal(void **s)
{
	check_dist(D_LOGNORMAL);
}
static void test_bimodal(void **s)
{
	check_dist(D_BIMODAL);
}
static void test_small_exact(void **s)
{
	check_dist(D_SMALL);
}
static void test_pareto(void **s)
{
	check_dist(D_PARETO);
}

/* Every value falls in a bucket whose bounds contain it and whose width is <= 2^-7 of it. */
static void test_index_bounds(void **s)
{
	struct bench_hist h;
	assert_int_equal(bench_hist_init(&h, UINT64_MAX, 7), 0);
	uint32_t prev = 0;
	for (uint64_t v = 0; v < 100000; v++) {
		uint32_t i = bench_hist_index(&h, v);
		assert_true(i >= prev);
		assert_true(i <= prev + 1);
		prev = i;
	}
	for (int k = 0; k < 100000; k++) {
		uint64_t v = rnd() >> (rnd() % 64);
		uint32_t i = bench_hist_index(&h, v);
		assert_true(i < h.bucket_count);
		uint64_t lo = bench_hist_bucket_low(&h, i), hi = bench_hist_bucket_high(&h, i);
		assert_true(lo <= v && v <= hi);
		assert_true((hi - lo) <= v / 128);
		if (i + 1 < h.bucket_count)
			assert_int_equal(bench_hist_bucket_low(&h, i + 1), hi + 1);
	}
	assert_int_equal(bench_hist_index(&h, UINT64_MAX), h.bucket_count - 1);
	bench_hist_free(&h);
}

static void test_merge_and_clamp(void **s)
{
	struct bench_hist a, b, all, other;
	assert_int_equal(bench_hist_init(&a, 1000000, 7), 0);
	assert_int_equal(bench_hist_init(&b, 1000000, 7), 0);
	assert_int_equal(bench_hist_init(&all, 1000000, 7), 0);
	assert_int_equal(bench_hist_init(&other, 2000000, 7), 0);
	for (int i = 0; i < 50000; i++) {
		uint64_t v = rnd() % 900000;
		bench_hist_record((i & 1) ? &a : &b, v);
		bench_hist_record(&all, v);
	}
	assert_int_equal(bench_hist_merge(&a, &b), 0);
	for (double p = 1; p <= 100; p += 1.5)
		assert_int_equal(bench_hist_percentile(&a, p), bench_hist_percentile(&all, p));
	assert_int_equal(bench_hist_count(&a), 50000);
	assert_int_equal(bench_hist_merge(&a, &other), -EINVAL);
	/* Clamping keeps the exact max and counts the clamp. */
	bench_hist_record(&a, 5000000);
	assert_int_equal(bench_hist_max(&a), 5000000);
	assert_int_equal(a.clamped_count, 1);
	assert_int_equal(bench_hist_percentile(&a, 100), 5000000);
	bench_hist_reset(&a);
	assert_int_equal(bench_hist_count(&a), 0);
	assert_int_equal(bench_hist_percentile(&a, 50), 0);
	assert_int_equal(bench_hist_min(&a), 0);
	bench_hist_free(&other);
	assert_int_equal(bench_hist_init(&other, 10, 0), -EINVAL);
	assert_null(other.counts);
	bench_hist_free(&a);
	bench_hist_free(&b);
	bench_hist_free(&all);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uniform),	     cmocka_unit_test(test_exp),
		cmocka_unit_test(test_lognormal),    cmocka_unit_test(test_bimodal),
		cmocka_unit_test(test_small_exact),  cmocka_unit_test(test_pareto),
		cmocka_unit_test(test_index_bounds), cmocka_unit_test(test_merge_and_clamp),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
