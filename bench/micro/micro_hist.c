/* SPDX-License-Identifier: MIT */
#include <stdint.h>

#include "ds_assert.h"
#include "hist.h"
#include "micro.h"

/* Histogram record: on the load generator's hot path once per reply. */
MICRO_BENCH(hist_record)
{
	static struct bench_hist h;
	if (h.counts == NULL)
		DS_ASSERT(bench_hist_init(&h, 3600ull * 1000000000ull, BENCH_HIST_SUB_BITS_DEFAULT) == 0);
	uint64_t x = 88172645463325252ull;
	while (micro_keep_running(st)) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		bench_hist_record(&h, x >> 36); /* 0..~268 ms in ns */
	}
	micro_do_not_optimize_u64(h.total_count);
	micro_set_items(st, micro_iterations(st));
}

MICRO_BENCH(hist_percentile)
{
	static struct bench_hist h;
	if (h.counts == NULL) {
		DS_ASSERT(bench_hist_init(&h, 3600ull * 1000000000ull, BENCH_HIST_SUB_BITS_DEFAULT) == 0);
		for (uint64_t i = 1; i <= 100000; i++)
			bench_hist_record(&h, i * 997);
	}
	while (micro_keep_running(st))
		micro_do_not_optimize_u64(bench_hist_percentile(&h, 99.9));
	micro_set_items(st, micro_iterations(st));
}
