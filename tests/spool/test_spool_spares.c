/* SPDX-License-Identifier: MIT */
/*
 * --segment-spares (spool_config.segment_spares): a lane keeps N prepared
 * segments ready. The pool fills at open, is used in sequence order (no
 * number skipped: a body spanning a roll finds seq + 1), fills again once
 * the lane is quiet, its unused files go at close (no gap left), a crash
 * image with spares present recovers every message and the next lane
 * starts after them, and a quota stops the filling without a hang.
 */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#include "spool.h"
#include "spool_reader.h"
#include "spool_syncio.h"
#include "test_util.h"

#define MAXC	 512
#define SEG_SIZE (512u * 1024)

struct results {
	int n_ok, n_err;
};

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	struct results *r = ctx;
	(void)cookie;
	if (res)
		r->n_err++;
	else
		r->n_ok++;
}

struct slane {
	struct spool_config cfg;
	struct spool_syncio *sio;
	struct spool_lane *l;
	struct results r;
};

static int slane_open(struct slane *s, const char *dir, uint32_t spares, uint64_t lane_bytes_max)
{
	int rc;

	memset(&s->r, 0, sizeof(s->r));
	spool_config_defaults(&s->cfg);
	s->cfg.dir = dir;
	s->cfg.segment_size = SEG_SIZE;
	s->cfg.buffer_size = 256 * 1024;
	s->cfg.segment_spares = spares;
	s->cfg.lane_bytes_max = lane_bytes_max;
	CHECK(spool_syncio_create(&s->sio, on_settled, &s->r) == 0);
	rc = spool_lane_open(&s->l, &s->cfg, 0, spool_syncio_ops(), s->sio);
	if (rc) {
		spool_syncio_destroy(s->sio);
		return rc;
	}
	spool_syncio_attach(s->sio, s->l);
	return 0;
}

static void slane_close(struct slane *s)
{
	spool_syncio_run(s->sio);
	CHECK(!spool_lane_busy(s->l));
	spool_lane_close(s->l);
	spool_syncio_destroy(s->sio);
}

static struct spool_lane_stats stats(struct slane *s)
{
	struct spool_lane_stats st;

	spool_lane_stats(s->l, &st);
	return st;
}

/* Wait (bounded: 30 s) until the lane has want spares ready. */
static bool wait_spares(struct slane *s, uint32_t want)
{
	for (int i = 0; i < 3000; i++) {
		if (stats(s).spares_ready == want)
			return true;
		nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	}
	return false;
}

/* The lane's .seg sequence numbers: *n of them, *lo..*hi; true when they are contiguous. */
static bool seg_seqs(const char *dir, unsigned *n, uint64_t *lo, uint64_t *hi)
{
	char ldir[512];
	struct dirent *de;
	DIR *d;

	snprintf(ldir, sizeof(ldir), "%s/lane-00", dir);
	d = opendir(ldir);
	CHECK(d);
	*n = 0;
	*lo = UINT64_MAX;
	*hi = 0;
	while ((de = readdir(d))) {
		unsigned long long seq;
		char suffix[8];
		if (sscanf(de->d_name, "%12llu.%7s", &seq, suffix) != 2 || strcmp(suffix, "seg"))
			continue;
		(*n)++;
		*lo = DS_MIN(*lo, (uint64_t)seq);
		*hi = DS_MAX(*hi, (uint64_t)seq);
	}
	closedir(d);
	return *n == 0 || *hi - *lo + 1 == *n;
}

static uint64_t reader_messages(const char *dir)
{
	struct spool_reader *rd;
	struct spool_verify_report vr;

	CHECK(spool_reader_open(&rd, dir) == 0);
	CHECK(spool_reader_verify(rd, &vr, stderr) == 0);
	spool_reader_close(rd);
	return vr.messages;
}

/* Fill, use in order, refill, close without leftovers; a crash image recovers whole. */
static void test_pool(void)
{
	char dir[256], crash[300], cmd[700];
	struct slane s, s2;
	unsigned n;
	uint64_t lo, hi;
	int msgs = 0;

	tu_tmpdir(dir, sizeof(dir), "spares");
	CHECK(slane_open(&s, dir, 3, 0) == 0);
	/* Filled at open (the lane took the first at once; quiet since): active + 3. */
	CHECK(wait_spares(&s, 3));
	CHECK(seg_seqs(dir, &n, &lo, &hi) && n == 4 && lo == 1 && hi == 4);
	CHECK(stats(&s).segments_fresh == 4);
	/* About 2.5 segments of messages: two rolls, onto seq 2 and 3 in order. */
	for (; msgs < 40; msgs++) {
		CHECK(tu_put(s.l, (uint64_t)msgs, 30000, NULL) == 0);
		spool_syncio_run(s.sio);
	}
	CHECK(s.r.n_ok == msgs && s.r.n_err == 0);
	CHECK(stats(&s).segments_opened == 3);
	/* Topped up again once quiet; numbers stay contiguous (3 used + 3 spares). */
	CHECK(wait_spares(&s, 3));
	CHECK(seg_seqs(dir, &n, &lo, &hi) && n == 6 && lo == 1 && hi == 6);
	/* A crash image now: the spares are empty segments; every message is there. */
	snprintf(crash, sizeof(crash), "%s.crash", dir);
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", dir, crash);
	CHECK(system(cmd) == 0);
	CHECK(reader_messages(crash) == (uint64_t)msgs);
	/* A lane on the crash image starts after the spares and adds to it. */
	CHECK(slane_open(&s2, crash, 1, 0) == 0);
	CHECK(tu_put(s2.l, 1000, 5000, NULL) == 0);
	spool_syncio_run(s2.sio);
	CHECK(s2.r.n_ok == 1);
	slane_close(&s2);
	CHECK(seg_seqs(crash, &n, &lo, &hi) && lo == 1 && hi == 7);
	CHECK(reader_messages(crash) == (uint64_t)msgs + 1);
	/* A clean close removes the unused spares: segments 1..3 remain, nothing missing. */
	slane_close(&s);
	CHECK(seg_seqs(dir, &n, &lo, &hi) && n == 3 && lo == 1 && hi == 3);
	CHECK(reader_messages(dir) == (uint64_t)msgs);
	tu_rmrf(dir);
	tu_rmrf(crash);
	printf("spare pool: filled, used in order, topped up, removed at close; crash image whole: ok\n");
}

/* A quota below the pool: filling stops at it, messages go in until it is full, no hang. */
static void test_quota(void)
{
	char dir[256];
	struct slane s;
	int i, rc = 0;

	tu_tmpdir(dir, sizeof(dir), "sparesq");
	CHECK(slane_open(&s, dir, 8, 4ull * SEG_SIZE) == 0);
	/* Active + 3 spares fit the quota; the 4th spare fails and stops the filling. */
	for (int k = 0; k < 3000 && stats(&s).prepare_errors == 0; k++)
		nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	CHECK(stats(&s).prepare_errors >= 1 && stats(&s).spares_ready == 3);
	for (i = 0; i < MAXC; i++) {
		rc = tu_put(s.l, (uint64_t)i, 30000, NULL);
		spool_syncio_run(s.sio);
		if (rc)
			break;
	}
	CHECK(rc == -ENOSPC);
	CHECK(s.r.n_ok >= 3 * 15);
	slane_close(&s);
	CHECK(reader_messages(dir) == (uint64_t)s.r.n_ok);
	tu_rmrf(dir);
	printf("spare pool under a quota: %d messages, then ENOSPC: ok\n", s.r.n_ok);
}

static void test_limits(void)
{
	char dir[256];
	struct slane s;

	tu_tmpdir(dir, sizeof(dir), "sparesl");
	CHECK(slane_open(&s, dir, 65, 0) == -EINVAL);
	CHECK(slane_open(&s, dir, 64, 0) == 0);
	slane_close(&s);
	tu_rmrf(dir);
	printf("segment_spares bounds: ok\n");
}

int main(void)
{
	test_pool();
	test_quota();
	test_limits();
	return 0;
}
