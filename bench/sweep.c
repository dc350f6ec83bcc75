/* SPDX-License-Identifier: MIT */
#include "sweep.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ds_assert.h"

static double log10_clamped(double v)
{
	return log10(v > 1e-3 ? v : 1e-3);
}

void sweep_write_svg(FILE *f, const struct sweep_step *steps, int n, double slo_ms)
{
	const double W = 720, H = 440, L = 70, R = 20, T = 40, B = 60;
	double xmax = 1, ymin = slo_ms, ymax = slo_ms;
	for (int i = 0; i < n; i++) {
		xmax = fmax(xmax, steps[i].rate_achieved);
		ymin = fmin(ymin, fmin(steps[i].p50_ms, steps[i].p99_ms));
		ymax = fmax(ymax, fmax(steps[i].p50_ms, steps[i].p99_ms));
	}
	xmax *= 1.1;
	/* Log y axis on whole decades. */
	double d0 = floor(log10_clamped(ymin)), d1 = ceil(log10_clamped(ymax));
	if (d1 <= d0)
		d1 = d0 + 1;
	double pw = W - L - R, ph = H - T - B;
#define SX(x) (L + (x) / xmax * pw)
#define SY(y) (T + ph - (log10_clamped(y) - d0) / (d1 - d0) * ph)
	fprintf(f,
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
		"font-family=\"sans-serif\" font-size=\"12\">\n",
		W, H);
	fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
	fprintf(f,
		"<text x=\"%.0f\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">dotspool-bench sweep: "
		"latency from scheduled send vs throughput</text>\n",
		W / 2);
	fprintf(f,
		"<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
		"stroke=\"black\"/>\n",
		L, T, pw, ph);
	for (double d = d0; d <= d1; d++) {
		double y = SY(pow(10, d));
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, y,
			L + pw, y);
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g ms</text>\n", L - 4, y + 4,
			pow(10, d));
	}
	for (int i = 0; i <= 5; i++) {
		double xv = xmax * i / 5, x = SX(xv);
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x, T,
			x, T + ph);
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n", x, T + ph + 16,
			xv);
	}
	fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">throughput (messages/s)</text>\n",
		L + pw / 2, H - 20);
	fprintf(f,
		"<text x=\"16\" y=\"%.0f\" text-anchor=\"middle\" transform=\"rotate(-90 16 %.0f)\">latency "
		"(ms, log)</text>\n",
		T + ph / 2, T + ph / 2);
	double ys = SY(slo_ms);
	fprintf(f,
		"<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"red\" stroke-dasharray=\"6 "
		"4\"/>\n",
		L, ys, L + pw, ys);
	fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"red\" text-anchor=\"end\">p99 target %g ms</text>\n",
		L + pw - 4, ys - 4, slo_ms);
	const char *colors[2] = {"#1f77b4", "#d62728"};
	const char *names[2] = {"p50", "p99"};
	for (int k = 0; k < 2; k++) {
		fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", colors[k]);
		for (int i = 0; i < n; i++)
			fprintf(f, "%.1f,%.1f ", SX(steps[i].rate_achieved),
				SY(k ? steps[i].p99_ms : steps[i].p50_ms));
		fprintf(f, "\"/>\n");
		for (int i = 0; i < n; i++)
			fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
				SX(steps[i].rate_achieved), SY(k ? steps[i].p99_ms : steps[i].p50_ms),
				colors[k]);
		fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s</text>\n", L + 10, T + 16 + 14 * k,
			colors[k], names[k]);
	}
#undef SX
#undef SY
	fprintf(f, "</svg>\n");
}

static int write_report(const struct sweep_opts *sw, const struct bench_opts *o,
			const struct sweep_step *steps, int n, int best)
{
	if (mkdir(sw->report_dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	char path[4096];
	snprintf(path, sizeof(path), "%s/sweep.md", sw->report_dir);
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return -errno;
	fprintf(f,
		"# dotspool-bench sweep\n\nserver %s, %s, %u connections, %u recipient(s), pipelining %s, "
		"%.1f s per step, p99 target %g ms, error budget %g\n\n",
		o->server, o->lmtp ? "LMTP" : "SMTP", o->connections, o->rcpts, o->pipelining ? "on" : "off",
		sw->step_duration_s, sw->slo_p99_ms, sw->error_budget);
	fprintf(f, "Latency is the 'message' phase: from the scheduled send time to the final reply.\n\n");
	fprintf(f, "| target msg/s | achieved msg/s | p50 ms | p99 ms | final-dot p99 ms | errors | met |\n");
	fprintf(f, "|---:|---:|---:|---:|---:|---:|:---:|\n");
	for (int i = 0; i < n; i++)
		fprintf(f, "| %.1f | %.1f | %.3f | %.3f | %.3f | %.4f%% | %s |\n", steps[i].rate_target,
			steps[i].rate_achieved, steps[i].p50_ms, steps[i].p99_ms, steps[i].final_dot_p99_ms,
			steps[i].error_frac * 100, steps[i].met ? "yes" : "no");
	if (best >= 0)
		fprintf(f, "\nHighest rate meeting the target: **%.1f msg/s** (p99 %.3f ms)\n",
			steps[best].rate_target, steps[best].p99_ms);
	else
		fprintf(f, "\nNo rate met the target.\n");
	if (fclose(f) != 0)
		return -errno;
	snprintf(path, sizeof(path), "%s/sweep.svg", sw->report_dir);
	f = fopen(path, "w");
	if (f == NULL)
		return -errno;
	sweep_write_svg(f, steps, n, sw->slo_p99_ms);
	if (fclose(f) != 0)
		return -errno;
	return 0;
}

int bench_sweep(const struct bench_opts *base, const struct sweep_opts *sw, bool json)
{
	static struct sweep_step steps[SWEEP_STEPS_MAX];
	int n = 0, best = -1;
	uint64_t id_next = base->id_base;
	struct bench_result r;
	if (bench_result_init(&r) < 0)
		return 2;
	for (double rate = sw->start_rate; rate <= sw->max_rate * 1.000001 && n < SWEEP_STEPS_MAX;
	     rate *= sw->step_factor) {
		struct bench_opts o = *base;
		o.rate_per_s = rate;
		o.messages = 0;
		o.duration_s = sw->step_duration_s;
		o.id_base = id_next; /* every step's Message-IDs are new (and --ack-log lists them all) */
		bench_result_free(&r);
		if (bench_result_init(&r) < 0)
			return 2;
		int rc = bench_run_threads(&o, sw->threads, &r);
		if (rc < 0) {
			fprintf(stderr, "dotspool-bench sweep: %s\n", strerror(-rc));
			bench_result_free(&r);
			return 2;
		}
		id_next = DS_MAX(id_next, r.id_next);
		struct sweep_step *s = &steps[n++];
		uint64_t total = r.messages_ok + r.messages_failed;
		s->rate_target = rate;
		s->rate_achieved = r.elapsed_s > 0 ? (double)r.messages_ok / r.elapsed_s : 0;
		s->p50_ms = (double)bench_hist_percentile(&r.hist[BENCH_PH_MESSAGE], 50) / 1e6;
		s->p99_ms = (double)bench_hist_percentile(&r.hist[BENCH_PH_MESSAGE], 99) / 1e6;
		s->final_dot_p99_ms = (double)bench_hist_percentile(&r.hist[BENCH_PH_FINAL_DOT], 99) / 1e6;
		s->error_frac = total ? (double)r.messages_failed / (double)total : 1.0;
		s->met =
			r.messages_ok > 0 && s->p99_ms <= sw->slo_p99_ms && s->error_frac <= sw->error_budget;
		if (!json)
			fprintf(stderr,
				"sweep: rate %.1f -> %.1f msg/s, p50 %.3f ms, p99 %.3f ms, errors %.4f%% "
				"%s\n",
				rate, s->rate_achieved, s->p50_ms, s->p99_ms, s->error_frac * 100,
				s->met ? "ok" : "BROKEN");
		if (!s->met)
			break;
		best = n - 1;
	}
	bench_result_free(&r);
	int rc = write_report(sw, base, steps, n, best);
	if (rc < 0) {
		fprintf(stderr, "dotspool-bench sweep: writing report to %s: %s\n", sw->report_dir,
			strerror(-rc));
		return 2;
	}
	if (json) {
		printf("{\"slo_p99_ms\":%g,\"best_rate\":%.3f,\"steps\":[", sw->slo_p99_ms,
		       best >= 0 ? steps[best].rate_target : 0.0);
		for (int i = 0; i < n; i++)
			printf("%s{\"rate_target\":%.3f,\"rate_achieved\":%.3f,\"p50_ms\":%.4f,\"p99_ms\":%."
			       "4f,"
			       "\"final_dot_p99_ms\":%.4f,\"error_frac\":%.6f,\"met\":%s}",
			       i ? "," : "", steps[i].rate_target, steps[i].rate_achieved, steps[i].p50_ms,
			       steps[i].p99_ms, steps[i].final_dot_p99_ms, steps[i].error_frac,
			       steps[i].met ? "true" : "false");
		printf("]}\n");
	} else if (best >= 0) {
		printf("highest rate meeting p99 <= %g ms: %.1f msg/s (report in %s)\n", sw->slo_p99_ms,
		       steps[best].rate_target, sw->report_dir);
	} else {
		printf("no rate met p99 <= %g ms (report in %s)\n", sw->slo_p99_ms, sw->report_dir);
	}
	return best >= 0 ? 0 : 1;
}
