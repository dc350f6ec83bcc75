/* SPDX-License-Identifier: MIT */
#ifndef DS_BENCH_SWEEP_H
#define DS_BENCH_SWEEP_H

#include <stdbool.h>

#include "bench.h"

#define SWEEP_STEPS_MAX 200

struct sweep_opts {
	double slo_p99_ms;
	double start_rate;
	double step_factor;
	double step_duration_s;
	double max_rate;
	double error_budget;
	const char *report_dir;
	uint32_t threads;
};

struct sweep_step {
	double rate_target;
	double rate_achieved; /* messages ok per second */
	double p50_ms;	      /* 'message' phase: from the scheduled time */
	double p99_ms;
	double final_dot_p99_ms;
	double error_frac;
	bool met;
};

/* Runs the sweep, writes the report; returns the exit status (0 a rate met the target, 1 none, 2 error). */
int bench_sweep(const struct bench_opts *base, const struct sweep_opts *sw, bool json);
/* Writes the SVG plot of the steps to f. */
void sweep_write_svg(FILE *f, const struct sweep_step *steps, int n, double slo_ms);

#endif
