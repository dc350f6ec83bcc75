/* SPDX-License-Identifier: MIT */
#include "bench_sched.h"

#include <errno.h>
#include <math.h>
#include <time.h>

#include "ds_assert.h"
#include "ds_clock.h"

int bench_sched_init(struct bench_sched *s, uint64_t start_ns, double rate_per_s, uint64_t limit)
{
	if (!(rate_per_s > 0.0) || !isfinite(rate_per_s))
		return -EINVAL;
	s->start_ns = start_ns;
	s->rate_per_s = rate_per_s;
	s->limit = limit;
	s->next = 0;
	return 0;
}

uint64_t bench_sched_time_ns(const struct bench_sched *s, uint64_t k)
{
	/* long double keeps ns precision for k up to ~1e18/rate. */
	long double off = (long double)k * 1e9L / (long double)s->rate_per_s;
	return s->start_ns + (uint64_t)llroundl(off);
}

uint64_t bench_sched_release(struct bench_sched *s, uint64_t now_ns, uint64_t max_release, uint64_t *first)
{
	uint64_t n = 0;
	*first = s->next;
	while (n < max_release && s->next < s->limit && bench_sched_time_ns(s, s->next) <= now_ns) {
		s->next++;
		n++;
	}
	DS_ASSERT(s->next <= s->limit);
	return n;
}

uint64_t bench_sched_next_ns(const struct bench_sched *s)
{
	if (s->next >= s->limit)
		return UINT64_MAX;
	return bench_sched_time_ns(s, s->next);
}

uint64_t bench_now_ns(void)
{
	return (uint64_t)ds_mono_ns();
}
