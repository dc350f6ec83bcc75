/* SPDX-License-Identifier: MIT */
/*
 * dotspool-logbench: the cost of one log call on a worker's hot path.
 *
 *   dotspool-logbench [ITERATIONS] [OUTPUT]   (default 1000000, /dev/null)
 *
 * Measures, in ns per call on the calling thread, with the logger thread
 * running and draining to OUTPUT:
 *   accepted      obs_log_accepted() of a typical message, the ring never full
 *                 (calls in batches of BATCH, then wait for the logger to
 *                 drain: only the calls are timed)
 *   filtered      the same call with the level set to warn (line skipped)
 *   flat-out      obs_log_accepted() back to back: the logger falls behind
 *                 and lines are dropped, never waited for
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ds_envelope.h"
#include "log.h"

#define BATCH 16384 /* lines of ~300 bytes: ~5 MB, fits the 16 MiB ring */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

/* CPU time of this thread: unlike wall time, not inflated when a busy machine preempts us. */
static uint64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
	const char *path = argc > 2 ? argv[2] : "/dev/null";
	if (iters < BATCH || iters > 1000000000ul) {
		fprintf(stderr, "usage: dotspool-logbench [ITERATIONS >= 16384] [OUTPUT]\n");
		return 2;
	}
	FILE *f = fopen(path, "w");
	if (!f) {
		perror(path);
		return 1;
	}
	struct obs_log *l;
	if (obs_log_create(&l, 1, 16u << 20, f, OBS_LOG_INFO) < 0 || obs_log_start(l) < 0) {
		fprintf(stderr, "dotspool-logbench: cannot start the logger\n");
		return 1;
	}
	struct obs_log_ring *r = obs_log_ring(l, 0);
	struct ds_rcpt rcpt[3] = {
		{"alice@example.com", ""}, {"bob@example.com", ""}, {"carol@example.com", ""}};
	struct ds_envelope env = {
		.client_addr = "203.0.113.45",
		.helo = "mail.sender.example",
		.mail_from = "newsletter-bounces+alice=example.com@sender.example",
		.rcpt = rcpt,
		.rcpt_count = 3,
		.tls = "TLSv1.2 TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256",
		.body_size = 48213,
	};

	/* accepted: never full. */
	uint64_t timed = 0, timed_cpu = 0, failed = 0;
	for (unsigned long i = 0; i < iters; i += BATCH) {
		uint64_t t0 = now_ns(), c0 = cpu_ns();
		for (unsigned k = 0; k < BATCH; k++)
			failed += obs_log_accepted(r, "00017f3a9c2e", &env, 412 + k) != 0;
		timed_cpu += cpu_ns() - c0;
		timed += now_ns() - t0;
		while (obs_log_written(l) < i + BATCH - failed) {
			struct timespec d = {0, 50000};
			nanosleep(&d, NULL);
		}
	}
	unsigned long n1 = (iters + BATCH - 1) / BATCH * BATCH;
	printf("accepted  %8.1f ns/call  (thread CPU %.1f ns/call; %lu calls, %llu dropped)\n",
	       (double)timed / (double)n1, (double)timed_cpu / (double)n1, n1, (unsigned long long)failed);

	/* filtered */
	obs_log_set_level(l, OBS_LOG_WARN);
	uint64_t t0 = now_ns();
	for (unsigned long i = 0; i < iters; i++)
		obs_log_accepted(r, "00017f3a9c2e", &env, 412);
	printf("filtered  %8.1f ns/call\n", (double)(now_ns() - t0) / (double)iters);
	obs_log_set_level(l, OBS_LOG_INFO);

	/* flat-out */
	uint64_t d0 = obs_log_dropped(l, 0);
	t0 = now_ns();
	for (unsigned long i = 0; i < iters; i++)
		obs_log_accepted(r, "00017f3a9c2e", &env, 412);
	uint64_t dt = now_ns() - t0;
	uint64_t dropped = obs_log_dropped(l, 0) - d0;
	printf("flat-out  %8.1f ns/call  (%lu calls, %llu dropped = %.1f%%)\n", (double)dt / (double)iters,
	       iters, (unsigned long long)dropped, 100.0 * (double)dropped / (double)iters);
	obs_log_stop(l);
	obs_log_destroy(l);
	fclose(f);
	return 0;
}
