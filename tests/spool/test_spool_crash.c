/* SPDX-License-Identifier: MIT */
/*
 * Crash test: the same deterministic workload of interleaved txns (sizes
 * from empty to larger than the staging buffer and than a segment, aborts
 * mixed in) is run in a child process that "crashes" at completion event k
 * of the simulated storage, for every k. The parent then recovers and
 * checks: every txn settled with 0 is there byte for byte exactly once,
 * nothing never committed appears, nothing partial.
 *
 * argv: seed ntxn [fail_at [direct]]. With "direct" the lane runs the
 * direct write discipline (block-aligned DSYNC writes, durable on
 * completion, never a block written twice; the simulator aborts on a
 * rewrite) and a crash also tears the DSYNC writes in flight (sectors,
 * garbage first block); fail_at then fails the n-th write with -EIO.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sim_storage.h"
#include "spool_format.h"
#include "spool_sum.h"
#include "spool.h"
#include "spool_reader.h"
#include "spool_reclaim.h"
#include "spool_syncio.h"
#include "test_util.h"

#define NTXN	 60 /* maximum; argv[2] picks fewer */
#define NSESS	 5
#define RUNS_MAX 700

static int report_fd = -1;
static int ntxn = NTXN;
static uint32_t flushes_max = 2;
static uint32_t flush_fail_at; /* argv[3]: the n-th flush (direct: write) fails with -EIO */
static bool direct;	       /* argv[4] has "direct" */
/*
 * argv[4] has "recycle" (format 5): every run starts with free files in the
 * lane, copies of the segments of a run of the same workload (so their
 * stale records have valid magic and CRC, the same txn indexes and bodies,
 * another epoch), and the lane prepares its segments from them. Recovery
 * must never take a stale record for a message (check_msg: exactly once,
 * nothing never committed), never quarantine a stale tail, and the seal
 * summaries of recycled segments must be written and used.
 */
static bool recycle;
static char donor[300]; /* the segments the free files are copied from */

static void rep(char kind, uint64_t idx)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "%c %llu\n", kind, (unsigned long long)idx);
	CHECK(write(report_fd, line, (size_t)n) == n);
}

static void on_settled(void *ctx, uint64_t cookie, int res)
{

	rep(res == 0 ? 'A' : 'F', cookie);
}

static void cfg_make(struct spool_config *cfg, const char *dir)
{
	spool_config_defaults(cfg);
	cfg->dir = dir;
	cfg->segment_size = 512 * 1024;
	cfg->buffer_size = 256 * 1024;
	cfg->flushes_in_flight_max = flushes_max;
	cfg->io_mode = direct ? SPOOL_IO_DIRECT_NO_ODIRECT : SPOOL_IO_BUFFERED;
}

static uint64_t pick_size(uint64_t idx)
{
	uint64_t r = tu_mix(idx + 77);
	switch (r % 6) {
	case 0:
		return 0;
	case 1:
		return 1 + r % 200;
	case 2:
		return 1000 + r % 8000;
	case 3:
		return 20000 + r % 40000;
	case 4:
		return 300000 + r % 400000; /* > staging buffer, crosses segments */
	default:
		return 100 + r % 3000;
	}
}

struct sess {
	bool busy, committing;
	uint64_t idx, size, sent;
	struct spool_txn t;
};

static void workload(const char *dir, uint64_t crash_at, uint64_t seed, bool tear, bool scribble)
{
	struct sim_faults f = {.crash_at_event = crash_at,
			       .short_pct = direct ? 0 : 10, /* direct: a short write fails the segment */
			       .eagain_pct = 3,
			       .flush_fail_at = direct ? 0 : flush_fail_at,
			       .write_fail_at = direct ? flush_fail_at : 0};
	struct spool_config cfg;
	struct spool_lane *l;
	struct sess ss[NSESS] = {0};
	uint64_t next = 0, rng = seed | 1;
	struct sim *s = sim_create(seed, &f, on_settled, NULL);
	static uint8_t buf[16384];

	struct spool_reclaim *rt = NULL;
	cfg_make(&cfg, dir);
	if (recycle) {
		/* Only the pool of free files: the table is never run (nothing is reclaimed). */
		CHECK(spool_reclaim_create(&rt, dir, NULL, NULL) == 0);
		spool_reclaim_set_recycle_max(rt, 1024);
		cfg.reclaim = rt;
	}
	CHECK(spool_lane_open(&l, &cfg, 0, sim_ops(), s) == 0);
	sim_attach(s, l);
	{
		struct spool_lane_stats st;
		spool_lane_stats(l, &st);
		CHECK(st.direct == direct);
	}
	while (!sim_crashed(s)) {
		bool active = false;
		for (int i = 0; i < NSESS; i++) {
			struct sess *x = &ss[i];
			rng = tu_mix(rng);
			if (!x->busy) {
				if (next >= (uint64_t)ntxn)
					continue;
				CHECK(spool_txn_begin(l, &x->t) == 0);

				x->busy = true;
				x->committing = false;
				x->idx = next++;
				x->size = pick_size(x->idx);
				x->sent = 0;
			}
			active = true;
			if (x->sent < x->size) {
				size_t n = 1 + rng % sizeof(buf);
				size_t room = spool_lane_append_room(l);
				int rc;
				n = DS_MIN(n, (size_t)(x->size - x->sent));
				n = DS_MIN(n, room);
				if (!n)
					continue;
				tu_body(x->idx, x->sent, buf, n);
				rc = spool_txn_append(l, &x->t, buf, n);
				if (rc == -EAGAIN)
					continue;
				if (rc == -EIO && flush_fail_at) {
					/* Its bytes were in the retired segment: the session gives up (451).
					 */
					spool_txn_abort(l, &x->t);
					x->busy = false;
					continue;
				}
				CHECK(rc == 0);
				x->sent += n;
			} else if (x->idx % 9 == 4) {
				spool_txn_abort(l, &x->t);
				x->busy = false;
			} else {
				struct tu_env e;
				int rc;
				tu_env_make(&e, x->idx, x->size);
				if (!x->committing)
					rep('C', x->idx);
				x->committing = true;
				rc = spool_txn_commit(l, &x->t, &e.env, x->idx);
				if (rc == -EAGAIN)
					continue;
				if (rc < 0) {
					/* Refused at once (its bytes were in a retired segment): 451. */
					CHECK(rc == -EIO && flush_fail_at);
					rep('F', x->idx);
				}
				x->busy = false;
			}
		}
		spool_lane_kick(l);
		sim_step(s, (unsigned)(rng % 4));
		if (!active) {
			sim_drain(s);
			break;
		}
	}
	if (sim_crashed(s)) {
		sim_crash_apply(s, tear, scribble);
		if (sim_torn_blocks(s)) {
			char line[48];
			int n = snprintf(line, sizeof(line), "T %llu\n",
					 (unsigned long long)sim_torn_blocks(s));
			CHECK(write(report_fd, line, (size_t)n) == n);
		}
		_exit(0); /* the lane dies with the process, as in a crash */
	}
	CHECK(!spool_lane_busy(l));
	{
		struct spool_lane_stats st;
		char line[48];
		spool_lane_stats(l, &st);
		int n = snprintf(line, sizeof(line), "R %llu\n", (unsigned long long)st.segments_recycled);
		CHECK(write(report_fd, line, (size_t)n) == n);
	}
	spool_lane_close(l);
	spool_reclaim_destroy(rt);
	{
		char line[48];
		int n = snprintf(line, sizeof(line), "E %llu\n", (unsigned long long)sim_events(s));
		CHECK(write(report_fd, line, (size_t)n) == n);
	}
	sim_destroy(s);
	_exit(0);
}

struct expect {
	bool committed[NTXN], acked[NTXN], found[NTXN];
	uint64_t events, torn, recycled;
};

/* Recycle mode: the lane directory starts with the donor's segments as free files. */
static void free_files_make(const char *dir)
{
	char ldir[300], cmd[1024];

	if (!recycle)
		return;
	snprintf(ldir, sizeof(ldir), "%s/lane-00", dir);
	CHECK(mkdir(ldir, 0700) == 0 || errno == EEXIST);
	/*
	 * In reverse order (the donor's last, part-filled segment gets the lowest
	 * number, which the spare takes first): this run's segments then end
	 * where the old ones hold records, not zeros (a stale tail).
	 */
	uint64_t *seqs;
	int n = spool_seg_list(donor, &seqs);
	CHECK(n > 0);
	for (int i = 0; i < n; i++) {
		snprintf(cmd, sizeof(cmd), "cp '%s/%012llu.seg' '%s/%012llu.free'", donor,
			 (unsigned long long)seqs[i], ldir, (unsigned long long)seqs[n - 1 - i]);
		CHECK(system(cmd) == 0);
	}
	free(seqs);
}

static void run_child(const char *dir, const char *repfile, uint64_t crash_at, uint64_t seed, bool tear,
		      bool scribble)
{
	pid_t pid;
	int st;

	free_files_make(dir);
	report_fd = open(repfile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
	CHECK(report_fd >= 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		workload(dir, crash_at, seed, tear, scribble);
	close(report_fd);
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void read_report(const char *repfile, struct expect *ex)
{
	FILE *f = fopen(repfile, "r");
	char k;
	unsigned long long v;

	CHECK(f);
	memset(ex, 0, sizeof(*ex));
	while (fscanf(f, " %c %llu", &k, &v) == 2) {
		if (k == 'E') {
			ex->events = v;
			continue;
		}
		if (k == 'T') {
			ex->torn += v;
			continue;
		}
		if (k == 'R') {
			ex->recycled = v;
			continue;
		}
		CHECK(v < NTXN);
		if (k == 'C')
			ex->committed[v] = true;
		if (k == 'A')
			ex->acked[v] = true;
	}
	fclose(f);
}

struct cmp_ctx {
	uint8_t *want;
	uint64_t off;
	bool same;
};

static int cmp_cb(void *ctx, const void *buf, size_t len)
{
	struct cmp_ctx *c = ctx;
	if (memcmp(c->want + c->off, buf, len))
		c->same = false;
	c->off += len;
	return 0;
}

struct check_ctx {
	struct expect *ex;
	struct spool_reader *r;
	uint64_t n;
};

static int check_msg(void *ctx, const struct spool_msg *m)
{
	struct check_ctx *c = ctx;
	unsigned long long idx;
	struct cmp_ctx cc = {0};
	uint64_t size;

	CHECK(sscanf(m->env.mail_from, "t%llu@", &idx) == 1 && idx < NTXN);
	CHECK(c->ex->committed[idx]); /* nothing never committed */
	CHECK(!c->ex->found[idx]);    /* exactly once */
	c->ex->found[idx] = true;
	size = pick_size(idx);
	CHECK(m->size == size); /* nothing partial */
	CHECK(m->env.rcpt_count == 2 && !strcmp(m->env.rcpt[1].params, "NOTIFY=NEVER"));
	cc.want = malloc(size + 1);
	CHECK(cc.want);
	tu_body(idx, 0, cc.want, size);
	cc.same = true;
	CHECK(spool_reader_read(c->r, m->id, cmp_cb, &cc) == 0);
	CHECK(cc.same && cc.off == size);
	free(cc.want);
	c->n++;
	return 0;
}

static uint64_t summaries_used, summaries_torn;

/*
 * Format 4: a crash while a seal summary was being written leaves it torn
 * (it is written in place): cut the newest one short, as such a crash would.
 */
static void sum_tear_newest(const char *dir)
{
	char ldir[300], path[400];
	uint64_t *seqs;
	struct stat st;
	int n;

	snprintf(ldir, sizeof(ldir), "%s/lane-00", dir);
	n = spool_seg_list(ldir, &seqs);
	for (int i = n - 1; i >= 0; i--) {
		CHECK(spool_sum_path(path, sizeof(path), dir, 0, seqs[i]) == 0);
		if (stat(path, &st) == 0) {
			CHECK(truncate(path, st.st_size / 2) == 0);
			summaries_torn++;
			break;
		}
	}
	free(seqs);
}

static bool clean_recycled; /* verify_dir: the dry run of recycle mode (no crash, no failure) */

static uint64_t verify_dir(const char *dir, struct expect *ex, bool tear_sum)
{
	struct spool_config cfg;
	struct spool_recovery_report rr, full;
	struct check_ctx c = {.ex = ex};

	cfg_make(&cfg, dir);
	if (tear_sum)
		sum_tear_newest(dir);
	/* Recovery without the seal summaries (every segment read) is the reference. */
	setenv("DS_SPOOL_NO_SUMMARIES", "1", 1);
	CHECK(spool_recover(&cfg, &full) == 0);
	unsetenv("DS_SPOOL_NO_SUMMARIES");
	CHECK(spool_recover(&cfg, &rr) == 0);
	summaries_used += rr.summaries;
	CHECK(rr.segments == full.segments && rr.messages == full.messages && rr.bytes == full.bytes &&
	      rr.torn_tails == full.torn_tails && rr.quarantined == full.quarantined &&
	      rr.discarded == full.discarded && rr.aborted == full.aborted && rr.outcomes == full.outcomes &&
	      rr.queued == full.queued && full.summaries == 0);
	/* Unflushed writes of a crash are never mistaken for corruption of acknowledged data. */
	CHECK(rr.quarantined == 0);
	/* A clean run's recycled segments end in the old segments' bytes: their normal end, no torn tail. */
	CHECK(!clean_recycled || full.torn_tails == 0);
	CHECK(spool_reader_open(&c.r, dir) == 0);
	CHECK(spool_reader_foreach(c.r, check_msg, &c) == 0);
	spool_reader_close(c.r);
	CHECK(rr.messages == c.n);
	for (int i = 0; i < NTXN; i++)
		if (ex->acked[i] && !ex->found[i]) {
			fprintf(stderr, "acknowledged txn %d lost\n", i);
			exit(1);
		}
	return c.n;
}

static void settled_count(void *ctx, uint64_t cookie, int res)
{
	CHECK(res == 0);
	(*(int *)ctx)++;
}

/* Restart after the crash: the lane continues on a new segment and old messages stay. */
static void restart_check(const char *dir, uint64_t before)
{
	struct spool_config cfg;
	struct spool_recovery_report rr;
	struct spool_syncio *sio;
	struct spool_lane *l;
	struct spool_txn t;
	struct tu_env e;
	int n = 0;

	cfg_make(&cfg, dir);
	CHECK(spool_syncio_create(&sio, settled_count, &n) == 0);
	CHECK(spool_lane_open(&l, &cfg, 0, spool_syncio_ops(), sio) == 0);
	spool_syncio_attach(sio, l);
	CHECK(spool_txn_begin(l, &t) == 0);
	CHECK(spool_txn_append(l, &t, "hello\r\n", 7) == 0);
	tu_env_make(&e, 999, 7);
	CHECK(spool_txn_commit(l, &t, &e.env, 1) == 0);
	spool_syncio_run(sio);
	CHECK(n == 1);
	spool_lane_close(l);
	spool_syncio_destroy(sio);
	CHECK(spool_recover(&cfg, &rr) == 0);
	CHECK(rr.messages == before + 1);
}

int main(int argc, char **argv)
{
	char dir[256], repfile[300];
	struct expect ex;
	uint64_t total, stride, runs = 0, acked_total = 0, torn_total = 0;
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 1;

	if (argc > 2)
		ntxn = atoi(argv[2]);
	CHECK(ntxn > 0 && ntxn <= NTXN);
	if (argc > 3)
		flush_fail_at = (uint32_t)atoi(argv[3]);
	direct = argc > 4 && strstr(argv[4], "direct");
	recycle = argc > 4 && strstr(argv[4], "recycle");
	flushes_max = 1 + (uint32_t)(seed % 3); /* 1..3 flushes in flight */

	tu_tmpdir(dir, sizeof(dir), "crash");
	snprintf(repfile, sizeof(repfile), "%s.report", dir);
	if (recycle) {
		/* The donor: the same workload, uncrashed, its segments kept as stale content. */
		char cmd[2048];
		recycle = false;
		run_child(dir, repfile, 0, seed, false, false);
		snprintf(donor, sizeof(donor), "%s.donor", dir);
		snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir '%s' && cp '%s'/lane-00/*.seg '%s'/", donor,
			 donor, dir, donor);
		CHECK(system(cmd) == 0);
		tu_rmrf(dir);
		CHECK(mkdir(dir, 0700) == 0);
		recycle = true;
	}

	/* Dry run: no crash, everything must be acked and recovered. */
	run_child(dir, repfile, 0, seed, false, false);
	read_report(repfile, &ex);
	total = ex.events;
	CHECK(total > 10);
	for (int i = 0; i < ntxn; i++)
		CHECK(flush_fail_at ? (!ex.acked[i] || i % 9 != 4) : ex.acked[i] == (i % 9 != 4));
	clean_recycled = recycle && !flush_fail_at;
	verify_dir(dir, &ex, false);
	clean_recycled = false;
	/* Recycle mode: the segments really came from the free files (no zero-fill). */
	CHECK(!recycle || ex.recycled > 0);
	if (recycle)
		printf("recycle: %llu segments prepared from free files in the dry run\n",
		       (unsigned long long)ex.recycled);
	tu_rmrf(dir);
	stride = total / RUNS_MAX + 1;
	printf("workload: %d txns, %llu storage events, crash every %llu events\n", ntxn,
	       (unsigned long long)total, (unsigned long long)stride);

	for (uint64_t k = 1; k <= total; k += stride, runs++) {
		uint64_t found;
		CHECK(mkdir(dir, 0700) == 0);
		run_child(dir, repfile, k, seed, k % 2 == 0, k % 3 == 0);
		read_report(repfile, &ex);
		found = verify_dir(dir, &ex, k % 4 == 1);
		for (int i = 0; i < NTXN; i++)
			acked_total += ex.acked[i];
		torn_total += ex.torn;
		if (k % 11 == 1)
			restart_check(dir, found);
		tu_rmrf(dir);
	}
	unlink(repfile);
	if (recycle)
		tu_rmrf(donor);
	printf("crash points checked: %llu, acknowledged messages verified: %llu%s, torn blocks: %llu, "
	       "segments recovered from seal summaries: %llu (torn summaries: %llu), same result as a full "
	       "scan\n",
	       (unsigned long long)runs, (unsigned long long)acked_total, direct ? " (direct)" : "",
	       (unsigned long long)torn_total, (unsigned long long)summaries_used,
	       (unsigned long long)summaries_torn);
	CHECK(summaries_used > 0);
	CHECK(!direct || torn_total > 0);
	return 0;
}
