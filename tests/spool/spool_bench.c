/* SPDX-License-Identifier: MIT */
/*
 * Not a test: measurements for the spool.
 *   spool_bench recover DIR SIZE_MIB [--cold|--warm] [MSG_BYTES]   fill a spool (4 KiB messages by default),
 * time spool_recover() spool_bench flush DIR N                     per-commit flush latency, pre-written vs
 * fallocate-only
 *   spool_bench cat DIR IDFILE                                      time spool_reader_read of every id
 * in IDFILE (one per line), with a reader opened per id (as dotspool-ctl cat) and with one shared reader
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spool.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "spool_syncio.h"
#include "test_util.h"

static uint64_t n_ok;

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	CHECK(res == 0);
	n_ok++;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(struct spool_lane *l, struct spool_syncio *sio, uint64_t count, size_t size, unsigned batch)
{
	static uint8_t body[65536];
	struct tu_env e;
	struct spool_txn t;

	tu_body(1, 0, body, sizeof(body));
	for (uint64_t i = 0; i < count; i++) {
		CHECK(spool_txn_begin(l, &t) == 0);
		int rc;
		while ((rc = spool_txn_append(l, &t, body, size)) == -EAGAIN)
			spool_syncio_run(sio);
		CHECK(rc == 0);
		tu_env_make(&e, i, size);
		while (spool_txn_commit(l, &t, &e.env, i) == -EAGAIN)
			spool_syncio_run(sio);
		if ((i + 1) % batch == 0)
			spool_syncio_run(sio);
	}
	spool_syncio_run(sio);
}

static void drop_cache(const char *dir)
{
	char ldir[512], path[600];
	uint64_t *seqs;
	int n;

	snprintf(ldir, sizeof(ldir), "%s/lane-00", dir);
	n = spool_seg_list(ldir, &seqs);
	for (int i = 0; i < n; i++) {
		int fd;
		snprintf(path, sizeof(path), "%s/%012llu.seg", ldir, (unsigned long long)seqs[i]);
		fd = open(path, O_RDONLY);
		if (fd >= 0) {
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			close(fd);
		}
	}
	free(seqs);
}

int main(int argc, char **argv)
{
	struct spool_config cfg;
	struct spool_syncio *sio;
	struct spool_lane *l;

	if (argc < 4)
		return 2;
	if (!strcmp(argv[1], "cat")) {
		FILE *f = fopen(argv[3], "r");
		char line[64];
		uint64_t *ids = NULL;
		size_t n = 0, cap = 0;
		struct spool_reader *r;
		double t0, t_each, t_shared;

		CHECK(f);
		while (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\r\n")] = 0;
			if (n == cap) {
				cap = cap ? cap * 2 : 1024;
				ids = realloc(ids, cap * sizeof(*ids));
				CHECK(ids);
			}
			CHECK(spool_id_parse(line, &ids[n]) == 0);
			n++;
		}
		fclose(f);
		CHECK(n > 0);
		t0 = now_s();
		for (size_t i = 0; i < n; i++) {
			FILE *out = fopen("/dev/null", "w");
			CHECK(spool_reader_open(&r, argv[2]) == 0);
			CHECK(spool_reader_read_file(r, ids[i], out) == 0);
			spool_reader_close(r);
			fclose(out);
		}
		t_each = now_s() - t0;
		CHECK(spool_reader_open(&r, argv[2]) == 0);
		t0 = now_s();
		for (size_t i = 0; i < n; i++) {
			FILE *out = fopen("/dev/null", "w");
			CHECK(spool_reader_read_file(r, ids[i], out) == 0);
			fclose(out);
		}
		t_shared = now_s() - t0;
		spool_reader_close(r);
		printf("cat %zu messages: reader per message %.3f s (%.3f ms each), one reader %.3f s "
		       "(%.3f ms each)\n",
		       n, t_each, t_each * 1e3 / (double)n, t_shared, t_shared * 1e3 / (double)n);
		return 0;
	}
	spool_config_defaults(&cfg);
	cfg.dir = argv[2];
	if (!strcmp(argv[1], "recover")) {
		size_t msg = argc > 5 ? (size_t)strtoul(argv[5], NULL, 0) : 4096;
		uint64_t mib = strtoull(argv[3], NULL, 0), count;
		struct spool_recovery_report rr;
		double t0, t1;

		CHECK(spool_syncio_create(&sio, on_settled, NULL) == 0);
		CHECK(spool_lane_open(&l, &cfg, 0, spool_syncio_ops(), sio) == 0);
		spool_syncio_attach(sio, l);
		CHECK(msg > 0 && msg <= 65536);
		count = mib * 1024 * 1024 / (msg + 200);
		t0 = now_s();
		fill(l, sio, count, msg, 512);
		t1 = now_s();
		spool_lane_close(l);
		printf("filled %llu messages of %zu bytes in %.2f s\n", (unsigned long long)n_ok, msg,
		       t1 - t0);
		for (int round = 0; round < 2; round++) {
			bool cold = argc > 4 && !strcmp(argv[4], "--cold");
			if (cold)
				drop_cache(cfg.dir);
			t0 = now_s();
			CHECK(spool_recover(&cfg, &rr) == 0);
			t1 = now_s();
			CHECK(rr.messages == n_ok);
			spool_recovery_report_print(&rr, stdout);
			printf("recovery %s: %.3f s, %.0f MiB/s of segments, %.0f messages/s\n",
			       cold ? "cold" : "warm", t1 - t0, (double)rr.segments * 64.0 / (t1 - t0),
			       (double)rr.messages / (t1 - t0));
		}
		return 0;
	}
	if (!strcmp(argv[1], "flush")) {
		unsigned n = (unsigned)strtoul(argv[3], NULL, 0);
		for (int pre = 1; pre >= 0; pre--) {
			char d[600];
			struct spool_lane_stats st;
			snprintf(d, sizeof(d), "%s/%s", argv[2], pre ? "prewritten" : "fallocated");
			cfg.dir = d;
			cfg.prewrite = pre;
			CHECK(spool_syncio_create(&sio, on_settled, NULL) == 0);
			CHECK(spool_lane_open(&l, &cfg, 0, spool_syncio_ops(), sio) == 0);
			spool_syncio_attach(sio, l);
			sleep(3); /* let the background thread finish the spare: measure flushes alone */
			fill(l, sio, n, 4096, 1);
			spool_lane_stats(l, &st);
			printf("%s segment: %llu flushes, mean %.0f us, max %llu us\n",
			       pre ? "pre-written " : "fallocate-only", (unsigned long long)st.flushes,
			       (double)st.flush_latency_us_sum / (double)st.flushes,
			       (unsigned long long)st.flush_latency_us_max);
			spool_lane_close(l);
			spool_syncio_destroy(sio);
		}
		return 0;
	}
	return 2;
}
