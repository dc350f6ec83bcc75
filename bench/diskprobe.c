/* SPDX-License-Identifier: MIT */
/*
 * dotspool-diskprobe: the disk's own flush latency in a directory, so a
 * server's final-dot latency can be read against what the disk allows.
 *
 * Modes (each on its own file, removed afterwards):
 *   prewritten  file zero-filled and fsynced first; loop: pwrite + fdatasync
 *   fallocate   file only fallocate'd (unwritten extents); loop: pwrite + fdatasync
 *   odirect     prewritten file opened O_DIRECT|O_DSYNC; loop: pwrite
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "ds_assert.h"
#include "hist.h"

#define PROBE_ALIGN	4096
#define PROBE_BLOCK_MAX (16u << 20)
#define PROBE_FILE_MAX	(4ull << 30)
#define PROBE_COUNT_MAX 10000000ull

enum probe_mode { MODE_PREWRITTEN, MODE_FALLOCATE, MODE_ODIRECT, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"prewritten", "fallocate", "odirect"};

struct probe_opts {
	const char *dir;
	size_t block_bytes;
	uint64_t file_bytes;
	uint64_t count;
	uint32_t rounds;
	double duration_s;
	bool modes[MODE_COUNT];
	bool json;
};

struct probe_result {
	struct bench_hist hist;
	uint64_t flushes;
	double elapsed_s;
	int error; /* 0 or -errno */
};

static int prefill(int fd, uint64_t file_bytes, char *buf, size_t buf_bytes)
{
	memset(buf, 0, buf_bytes);
	for (uint64_t off = 0; off < file_bytes; off += buf_bytes) {
		size_t n = (size_t)DS_MIN((uint64_t)buf_bytes, file_bytes - off);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			return -errno ? -errno : -EIO;
	}
	return fsync(fd) < 0 ? -errno : 0;
}

static int probe_mode(const struct probe_opts *o, enum probe_mode m, struct probe_result *res)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/.dotspool-diskprobe.%d.%s", o->dir, (int)getpid(), mode_names[m]);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int rc = 0;
	char *buf = NULL;
	size_t fill_bytes = 1u << 20;
	if (posix_memalign((void **)&buf, PROBE_ALIGN, DS_MAX(fill_bytes, o->block_bytes)) != 0) {
		rc = -ENOMEM;
		goto out;
	}
	if (m == MODE_FALLOCATE) {
		if (fallocate(fd, 0, 0, (off_t)o->file_bytes) < 0) {
			rc = -errno;
			goto out;
		}
		if (fsync(fd) < 0) {
			rc = -errno;
			goto out;
		}
	} else {
		rc = prefill(fd, o->file_bytes, buf, fill_bytes);
		if (rc < 0)
			goto out;
	}
	if (m == MODE_ODIRECT) {
		int dfd = open(path, O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
		if (dfd < 0) {
			rc = -errno;
			goto out;
		}
		close(fd);
		fd = dfd;
	}
	memset(buf, 'x', o->block_bytes);
	uint64_t blocks = o->file_bytes / o->block_bytes;
	uint64_t start = bench_now_ns();
	uint64_t end = o->duration_s > 0 ? start + (uint64_t)(o->duration_s * 1e9) : UINT64_MAX;
	uint64_t i;
	for (i = 0; i < o->count; i++) {
		uint64_t t0 = bench_now_ns();
		if (t0 >= end)
			break;
		/* Sequential appends inside the file, wrapping: like a spool segment being filled. */
		off_t off = (off_t)((i % blocks) * o->block_bytes);
		if (pwrite(fd, buf, o->block_bytes, off) != (ssize_t)o->block_bytes) {
			rc = errno ? -errno : -EIO;
			break;
		}
		if (m != MODE_ODIRECT && fdatasync(fd) < 0) {
			rc = -errno;
			break;
		}
		bench_hist_record(&res->hist, bench_now_ns() - t0);
	}
	res->flushes = i;
	res->elapsed_s = (double)(bench_now_ns() - start) / 1e9;
out:
	free(buf);
	close(fd);
	unlink(path);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dotspool-diskprobe [options]\n"
		   "Measures write + flush latency of the disk holding DIR.\n"
		   "  --dir DIR            directory to probe (default .)\n"
		   "  --mode MODE          prewritten | fallocate | odirect | all (default all; repeatable)\n"
		   "                       prewritten: file zero-filled + fsynced, then pwrite + fdatasync\n"
		   "                       fallocate:  file fallocate'd only, then pwrite + fdatasync\n"
		   "                       odirect:    prewritten file, O_DIRECT|O_DSYNC pwrite\n"
		   "  --block BYTES        bytes written per flush (default 4096; multiple of 4096)\n"
		   "  --file-mb MB         size of the probe file (default 64)\n"
		   "  --count N            flushes per mode (default 1000)\n"
		   "  --rounds R           split each mode into R interleaved rounds (default 1)\n"
		   "  --duration SEC       at most SEC seconds per mode (default 10)\n"
		   "  --json               one JSON object\n"
		   "  --help\n");
}

/*
 * Rounds interleave the modes (A B C A B C ...) so that a noisy neighbour
 * on a shared disk hits every mode alike, not just one. Returns 1 if a mode
 * failed (it says why), else 0.
 */
static int probe_rounds(const struct probe_opts *o, struct probe_result *res)
{
	int status = 0;
	struct probe_opts ro = *o;
	ro.count = DS_MAX(o->count / o->rounds, 1ull);
	ro.duration_s = o->duration_s / o->rounds;
	for (uint32_t round = 0; round < o->rounds; round++) {
		for (int i = 0; i < MODE_COUNT; i++) {
			if (!o->modes[i] || res[i].error < 0)
				continue;
			struct probe_result one = res[i];
			res[i].error = probe_mode(&ro, (enum probe_mode)i, &one);
			res[i].hist = one.hist; /* same buckets, updated count/min/max/sum */
			res[i].flushes += one.flushes;
			res[i].elapsed_s += one.elapsed_s;
			if (res[i].error < 0) {
				fprintf(stderr, "dotspool-diskprobe: %s: %s\n", mode_names[i],
					strerror(-res[i].error));
				status = 1;
			}
		}
	}
	return status;
}

/* One JSON object (--json) or a table. */
static void print_results(const struct probe_opts *o, const struct probe_result *res)
{
	if (o->json) {
		printf("{\"dir\":\"%s\",\"block_bytes\":%zu,\"modes\":{", o->dir, o->block_bytes);
		const char *sep = "";
		for (int i = 0; i < MODE_COUNT; i++) {
			if (!o->modes[i])
				continue;
			const struct bench_hist *h = &res[i].hist;
			printf("%s\"%s\":{\"ok\":%s,\"flushes\":%llu,\"flushes_per_s\":%.1f,\"p50_us\":%.1f,"
			       "\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f}",
			       sep, mode_names[i], res[i].error ? "false" : "true",
			       (unsigned long long)res[i].flushes,
			       res[i].elapsed_s > 0 ? (double)res[i].flushes / res[i].elapsed_s : 0,
			       (double)bench_hist_percentile(h, 50) / 1e3,
			       (double)bench_hist_percentile(h, 99) / 1e3, (double)bench_hist_max(h) / 1e3,
			       bench_hist_mean(h) / 1e3);
			sep = ",";
		}
		printf("}}\n");
	} else {
		printf("dotspool-diskprobe: %s, %zu-byte writes\n", o->dir, o->block_bytes);
		printf("%-12s %9s %12s %10s %10s %10s   (microseconds)\n", "mode", "flushes", "flushes/s",
		       "p50", "p99", "max");
		for (int i = 0; i < MODE_COUNT; i++) {
			if (!o->modes[i] || res[i].error)
				continue;
			const struct bench_hist *h = &res[i].hist;
			printf("%-12s %9llu %12.1f %10.1f %10.1f %10.1f\n", mode_names[i],
			       (unsigned long long)res[i].flushes,
			       res[i].elapsed_s > 0 ? (double)res[i].flushes / res[i].elapsed_s : 0,
			       (double)bench_hist_percentile(h, 50) / 1e3,
			       (double)bench_hist_percentile(h, 99) / 1e3, (double)bench_hist_max(h) / 1e3);
		}
	}
}

int main(int argc, char **argv)
{
	struct probe_opts o = {.dir = ".",
			       .block_bytes = 4096,
			       .file_bytes = 64ull << 20,
			       .count = 1000,
			       .rounds = 1,
			       .duration_s = 10};
	bool any_mode = false;
	static const struct option lo[] = {
		{"dir", required_argument, NULL, 'd'},	 {"mode", required_argument, NULL, 'm'},
		{"block", required_argument, NULL, 'b'}, {"file-mb", required_argument, NULL, 'f'},
		{"count", required_argument, NULL, 'n'}, {"duration", required_argument, NULL, 't'},
		{"json", no_argument, NULL, 'j'},	 {"rounds", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},	 {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		char *end = NULL;
		switch (c) {
		case 'd':
			o.dir = optarg;
			break;
		case 'm':
			any_mode = true;
			if (strcmp(optarg, "all") == 0) {
				for (int i = 0; i < MODE_COUNT; i++)
					o.modes[i] = true;
				break;
			}
			for (int i = 0; i < MODE_COUNT; i++)
				if (strcmp(optarg, mode_names[i]) == 0) {
					o.modes[i] = true;
					goto next;
				}
			fprintf(stderr, "dotspool-diskprobe: unknown mode %s\n", optarg);
			return 2;
		case 'b': {
			unsigned long long v = strtoull(optarg, &end, 10);
			if (*end || v == 0 || v % PROBE_ALIGN || v > PROBE_BLOCK_MAX) {
				fprintf(stderr,
					"dotspool-diskprobe: --block must be a multiple of 4096 <= 16 MiB\n");
				return 2;
			}
			o.block_bytes = (size_t)v;
			break;
		}
		case 'f': {
			unsigned long long v = strtoull(optarg, &end, 10);
			if (*end || v == 0 || (v << 20) > PROBE_FILE_MAX) {
				fprintf(stderr, "dotspool-diskprobe: --file-mb must be 1..4096\n");
				return 2;
			}
			o.file_bytes = v << 20;
			break;
		}
		case 'n': {
			unsigned long long v = strtoull(optarg, &end, 10);
			if (*end || v == 0 || v > PROBE_COUNT_MAX) {
				fprintf(stderr, "dotspool-diskprobe: --count must be 1..%llu\n",
					PROBE_COUNT_MAX);
				return 2;
			}
			o.count = v;
			break;
		}
		case 't':
			o.duration_s = strtod(optarg, &end);
			if (*end || !(o.duration_s > 0) || o.duration_s > 86400) {
				fprintf(stderr, "dotspool-diskprobe: bad --duration\n");
				return 2;
			}
			break;
		case 'r': {
			unsigned long long v = strtoull(optarg, &end, 10);
			if (*end || v == 0 || v > 1000) {
				fprintf(stderr, "dotspool-diskprobe: --rounds must be 1..1000\n");
				return 2;
			}
			o.rounds = (uint32_t)v;
			break;
		}
		case 'j':
			o.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	next:;
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (!any_mode)
		for (int i = 0; i < MODE_COUNT; i++)
			o.modes[i] = true;
	if (o.file_bytes < o.block_bytes) {
		fprintf(stderr, "dotspool-diskprobe: file smaller than one block\n");
		return 2;
	}
	struct probe_result res[MODE_COUNT] = {0};
	for (int i = 0; i < MODE_COUNT; i++)
		if (o.modes[i] &&
		    bench_hist_init(&res[i].hist, BENCH_HIST_MAX_NS, BENCH_HIST_SUB_BITS_DEFAULT) < 0)
			return 2;
	int status = probe_rounds(&o, res);
	print_results(&o, res);
	for (int i = 0; i < MODE_COUNT; i++)
		if (o.modes[i])
			bench_hist_free(&res[i].hist);
	return status;
}
