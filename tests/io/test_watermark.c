/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for io/watermark.c: the limits (defaults, sizes, percentages),
 * the hysteresis, the directory sum, and the sampler thread against a real
 * directory whose files grow and are deleted (what reclamation will do).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "metrics.h"
#include "watermark.h"

#define GiB (1ull << 30)
#define MiB (1ull << 20)

static struct io_watermark_config defaults(void)
{
	struct io_watermark_config c = {.max_pct = IO_WATERMARK_MAX_PCT_DEFAULT, .min_free_auto = true};
	return c;
}

static void test_limits(void **state)
{
	(void)state;
	struct io_watermark_limits l;
	struct io_watermark_config c = defaults();

	/* 100 GiB: 80% = 80 GiB; floor min(1 GiB, 5 GiB) = 1 GiB. */
	io_watermark_limits(&c, 100 * GiB, &l);
	assert_int_equal(l.max_bytes, 80 * GiB);
	assert_int_equal(l.resume_bytes, 72 * GiB);
	assert_int_equal(l.min_free_bytes, GiB);
	assert_int_equal(l.resume_free_bytes, GiB + GiB / 10);
	/* 10 GiB: floor 5% = 512 MiB, under the 1 GiB cap. */
	io_watermark_limits(&c, 10 * GiB, &l);
	assert_int_equal(l.max_bytes, 8 * GiB);
	assert_int_equal(l.min_free_bytes, 512 * MiB);
	/* No overflow on the largest file systems. */
	io_watermark_limits(&c, UINT64_MAX, &l);
	assert_true(l.max_bytes > UINT64_MAX / 100 * 79);
	/* Explicit sizes win; a percentage floor; no floor. */
	c.max_bytes = 4 * MiB;
	c.min_free_auto = false;
	c.min_free_pct = 10;
	io_watermark_limits(&c, 100 * GiB, &l);
	assert_int_equal(l.max_bytes, 4 * MiB);
	assert_int_equal(l.min_free_bytes, 10 * GiB);
	c.min_free_pct = 0;
	io_watermark_limits(&c, 100 * GiB, &l);
	assert_int_equal(l.min_free_bytes, 0);
	assert_int_equal(l.resume_free_bytes, 0);
	c.min_free_bytes = 3 * MiB;
	io_watermark_limits(&c, 100 * GiB, &l);
	assert_int_equal(l.min_free_bytes, 3 * MiB);
}

static void test_hysteresis(void **state)
{
	(void)state;
	struct io_watermark_limits l = {
		.max_bytes = 1000, .resume_bytes = 900, .min_free_bytes = 100, .resume_free_bytes = 110};
	const char *why = NULL;

	/* Low stays low below both limits, goes high at either. */
	assert_false(io_watermark_next(false, 999, 100, &l, &why));
	assert_true(io_watermark_next(false, 1000, 5000, &l, &why));
	assert_string_equal(why, "spool_max");
	assert_true(io_watermark_next(false, 10, 99, &l, &why));
	assert_string_equal(why, "min_free");
	assert_true(io_watermark_next(false, 1000, 99, &l, &why));
	assert_string_equal(why, "spool_max+min_free");
	/* High stays high between the watermarks. */
	assert_true(io_watermark_next(true, 999, 5000, &l, NULL));
	assert_true(io_watermark_next(true, 900, 5000, &l, NULL));
	assert_true(io_watermark_next(true, 10, 100, &l, &why));
	assert_string_equal(why, "min_free");
	assert_true(io_watermark_next(true, 10, 109, &l, NULL));
	assert_true(io_watermark_next(true, 950, 109, &l, &why));
	assert_string_equal(why, "spool_max+min_free");
	/* Low again only with both clear. */
	assert_false(io_watermark_next(true, 899, 110, &l, NULL));
	assert_false(io_watermark_next(true, 0, UINT64_MAX, &l, NULL));
	/* No floor: free space never matters. */
	struct io_watermark_limits nf = {.max_bytes = 1000, .resume_bytes = 900};
	assert_false(io_watermark_next(false, 0, 0, &nf, NULL));
	assert_false(io_watermark_next(true, 0, 0, &nf, NULL));
}

static char dir[] = "/tmp/ds-test-watermark-XXXXXX";

static void write_file(const char *rel, size_t bytes, bool sparse)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	if (sparse) {
		assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
	} else {
		static char buf[64 * 1024];
		memset(buf, 'x', sizeof(buf));
		for (size_t done = 0; done < bytes; done += sizeof(buf))
			assert_int_equal(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
		assert_int_equal(fsync(fd), 0);
	}
	close(fd);
}

static void rm(const char *rel)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	assert_int_equal(unlink(path), 0);
}

static void test_spool_bytes(void **state)
{
	(void)state;
	uint64_t b = 1;
	char sub[256];
	assert_int_equal(io_watermark_spool_bytes(dir, &b), 0);
	assert_int_equal(b, 0);
	snprintf(sub, sizeof(sub), "%s/lane-00", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	snprintf(sub, sizeof(sub), "%s/lane-00/deeper", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	write_file("lane-00/000000000001.seg", MiB, false);
	write_file("dotspool.lock", 0, false);
	write_file("lane-00/sparse.seg", 64 * MiB, true); /* allocated bytes count, not the size */
	write_file("lane-00/deeper/not-counted", MiB, false);
	assert_int_equal(io_watermark_spool_bytes(dir, &b), 0);
	/* du's figure: the 1 MiB file, perhaps a block of metadata more, never the sparse 64 MiB. */
	assert_true(b >= MiB && b < MiB + 64 * 1024);
	rm("lane-00/deeper/not-counted");
	rm("lane-00/sparse.seg");
	assert_int_equal(io_watermark_spool_bytes("/nonexistent-ds-dir", &b), -ENOENT);
}

static void wait_high(bool want)
{
	for (int i = 0; i < 200 && io_watermark_high() != want; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(io_watermark_high(), want);
}

/* The sampler: a file pushes the spool over 2 MiB, deleting it brings it back (reclamation). */
static void test_sampler(void **state)
{
	(void)state;
	static struct io_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	snprintf(cfg.spool_dir, sizeof(cfg.spool_dir), "%s", dir);
	cfg.watermark.max_bytes = 2 * MiB;
	/* lane-00/000000000001.seg (1 MiB) is left by test_spool_bytes. */
	assert_int_equal(io_watermark_start(&cfg, NULL), 0);
	assert_false(io_watermark_high());
	uint64_t highs = obs_counter_get(&obs_metrics_watermark()->highs);
	write_file("lane-00/000000000002.seg", 2 * MiB, false);
	wait_high(true);
	assert_int_equal(obs_counter_get(&obs_metrics_watermark()->high), 1);
	assert_true(obs_counter_get(&obs_metrics_watermark()->bytes) >= 3 * MiB);
	assert_int_equal(obs_counter_get(&obs_metrics_watermark()->max_bytes), 2 * MiB);
	/* 1 MiB + 960 KiB: under the limit but above the resume mark (1.8 MiB): still high. */
	write_file("lane-00/000000000003.seg", MiB - 64 * 1024, false);
	rm("lane-00/000000000002.seg");
	struct timespec ts = {0, 600 * 1000 * 1000};
	nanosleep(&ts, NULL);
	assert_true(io_watermark_high());
	rm("lane-00/000000000003.seg");
	wait_high(false);
	assert_int_equal(obs_counter_get(&obs_metrics_watermark()->high), 0);
	assert_int_equal(obs_counter_get(&obs_metrics_watermark()->highs), highs + 1);
	io_watermark_stop();
	io_watermark_stop(); /* twice: no-op */
	rm("lane-00/000000000001.seg");
	rm("dotspool.lock");
}

static int setup(void **state)
{
	(void)state;
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_hysteresis),
		cmocka_unit_test(test_spool_bytes),
		cmocka_unit_test(test_sampler),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
