/* SPDX-License-Identifier: MIT */
/*
 * dotspool: command line, recovery, workers, signals.
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "ds_grow.h"
#include "ds_nofile.h"
#include "ds_sort.h"
#include "ctlsock.h"
#include "dlv.h"
#include "gap.h"
#include "io.h"
#include "iplimit.h"
#include "log.h"
#include "metrics.h"
#include "options.h"
#include "rcpt_table.h"
#include "throttle.h"
#include "spool.h"
#include "spool_reader.h"
#include "spool_reclaim.h"
#include "watermark.h"

#define DS_VERSION "0.1.0"

/* --check-config FILE: load and check FILE alone, say so, exit 0 or 1. */
static void check_config_and_exit(struct io_config *cfg, const char *path)
{
	char err[768];
	if (daemon_config_load_file(cfg, path, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotspool: %s\n", err);
		exit(1);
	}
	/* A constraint between keys has no line to blame: name the file. */
	if (daemon_config_finish(cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotspool: %s: %s\n", path, err);
		exit(1);
	}
	printf("dotspool: %s: OK\n", path);
	daemon_config_print_deliver(stdout, cfg);
	exit(0);
}

/*
 * First pass: the arguments that act before any option (--help, --version,
 * --check-config exit here). Returns 0 with *config the --config FILE (or
 * NULL), or -EINVAL.
 */
static int scan_special_args(struct io_config *cfg, int argc, char **argv, const char **config)
{
	*config = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			daemon_options_usage(stdout);
			exit(0);
		}
		if (!strcmp(a, "--version")) {
			printf("dotspool %s\n", DS_VERSION);
			exit(0);
		}
		if (!strcmp(a, "--check-config") || !strcmp(a, "--config")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "dotspool: %s needs a FILE\n", a);
				return -EINVAL;
			}
			*config = argv[++i];
			if (!strcmp(a, "--check-config"))
				check_config_and_exit(cfg, *config);
		}
	}
	return 0;
}

/* One --name value or --name=value at argv[*i]; *i moves past its value. */
static int apply_arg(struct io_config *cfg, int argc, char **argv, int *i)
{
	char err[768];
	const char *a = argv[*i];
	if (strncmp(a, "--", 2) != 0) {
		fprintf(stderr, "dotspool: unexpected argument '%s' (see --help)\n", a);
		return -EINVAL;
	}
	char name[64];
	const char *value = NULL;
	const char *eq = strchr(a + 2, '=');
	size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
	if (n >= sizeof(name)) {
		fprintf(stderr, "dotspool: unknown option '%s' (see --help)\n", a);
		return -EINVAL;
	}
	memcpy(name, a + 2, n);
	name[n] = 0;
	if (!daemon_option_known(name)) {
		fprintf(stderr, "dotspool: unknown option '%s' (see --help)\n", a);
		return -EINVAL;
	}
	if (eq) {
		value = eq + 1;
	} else if (daemon_option_takes_value(name)) {
		if (*i + 1 >= argc) {
			fprintf(stderr, "dotspool: --%s needs a value\n", name);
			return -EINVAL;
		}
		value = argv[++*i];
	}
	if (daemon_option_apply(cfg, name, value, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotspool: --%s\n", err);
		return -EINVAL;
	}
	return 0;
}

/*
 * Command line: --name value or --name=value for every option of
 * daemon/options.c, plus --config FILE, --check-config FILE, --help, --version.
 * The file is read first, then the command line overrides it.
 */
static int parse_args(struct io_config *cfg, int argc, char **argv)
{
	char err[768];
	const char *config;
	if (scan_special_args(cfg, argc, argv, &config) < 0)
		return -EINVAL;
	if (config && daemon_config_load_file(cfg, config, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotspool: %s\n", err);
		return -EINVAL;
	}
	daemon_config_begin_source(cfg);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config")) {
			i++;
			continue;
		}
		if (apply_arg(cfg, argc, argv, &i) < 0)
			return -EINVAL;
	}
	if (daemon_config_finish(cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "dotspool: %s\n", err);
		return -EINVAL;
	}
	return 0;
}

/* Every connection is a descriptor; 256 more for segments, listeners, rings and the rest. */
static void raise_nofile(uint32_t max_connections)
{
	uint64_t need = (uint64_t)max_connections + 256;
	uint64_t have = ds_raise_nofile(need);
	if (have < need)
		fprintf(stderr, "dotspool: warning: RLIMIT_NOFILE %llu is below --max-connections + 256\n",
			(unsigned long long)have);
}

/*
 * Stop, join and destroy workers[0, n): the started ones are told to stop and
 * joined, then every created one is destroyed (ring, provided buffers,
 * connection table, listeners). Used by the normal shutdown and by every
 * start-up failure, so that nothing a worker set up outlives the process.
 * Returns 1 if any worker ended uncleanly, else 0.
 */
static int workers_teardown(struct io_shared *sh, struct io_worker **workers, uint32_t n)
{
	atomic_store(&sh->stopping, true);
	for (uint32_t i = 0; i < n; i++)
		if (workers[i])
			io_worker_wake(workers[i]); /* it sees stopping */
	int rc = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (!workers[i])
			continue;
		if (io_worker_join(workers[i]) != 0)
			rc = 1;
		io_worker_destroy(workers[i]);
		workers[i] = NULL;
	}
	return rc;
}

/* What main() shares with the workers: after they are gone. */
static void shared_destroy(struct io_shared *sh)
{
	io_iplimit_destroy(sh->iplimit);
	sh->iplimit = NULL;
	io_throttle_destroy(sh->throttle);
	sh->throttle = NULL;
	io_rcpt_stop(); /* its reload thread; the workers are gone */
	if (sh->log) {
		obs_log_stop(sh->log);
		obs_log_destroy(sh->log);
		sh->log = NULL;
	}
	for (uint32_t i = 0; i < IO_THREADS_MAX; i++) {
		free(sh->metrics[i]);
		sh->metrics[i] = NULL;
	}
	io_dlv_backlog_free(sh);
	io_gap_destroy(sh->gap);
	sh->gap = NULL;
}

/* A message recovery found still owed: to the worker that drains its lane. */
static int backlog_add(void *ctx, const struct spool_queue_entry *e)
{
	struct io_shared *sh = ctx;
	return io_dlv_backlog_add(sh, sh->metrics_count, e);
}

/*
 * Gap records recovery found (issue 16): AT_RISK ones go into the set after
 * the scan, minus every message a CLEARED record names (it may lie in an
 * earlier lane than the AT_RISK it clears) and those whose window is over.
 */
/* A running worker writes a watermark within about a second of any change (io/gap.c). */
#define GAP_WM_SLACK_US (60ll * 1000000)

struct gap_tail {
	uint64_t id, seq, off;
	unsigned lane;
	int64_t received_at_us;
};

struct gap_load {
	struct spool_gap_rec *v;
	size_t n, cap;
	bool oom;
	/* Per lane: its last watermark record and the position from which commits are at risk. */
	bool wm[SPOOL_LANES_MAX];
	uint64_t wm_rec_seq[SPOOL_LANES_MAX], wm_rec_off[SPOOL_LANES_MAX];
	uint64_t thr_seq[SPOOL_LANES_MAX], thr_off[SPOOL_LANES_MAX];
	int64_t wm_at_us[SPOOL_LANES_MAX];
	int64_t fate_open_us; /* the longest a 250's fate stays open: command timeout + slack */
	struct gap_tail *tail;
	size_t ntail, tail_cap;
	/*
	 * Where recovery's fold found each message an AT_RISK record names
	 * (compaction may have moved it since the record was written: the
	 * record's location is only a hint). risk: those ids, sorted, built at
	 * the first message (recovery hands out records before messages).
	 */
	uint64_t *risk;
	size_t nrisk;
	bool risk_built;
	struct gap_tail *loc;
	size_t nloc, loc_cap;
};

static int gap_loc_cmp(const void *pa, const void *pb)
{
	const struct gap_tail *a = pa, *b = pb;
	return a->id < b->id ? -1 : a->id > b->id;
}

/* The fold's copy of a message some AT_RISK record names (its location at this start). */
static void gap_loc_note(struct gap_load *gl, uint64_t id, unsigned lane, uint64_t seq, uint64_t off)
{
	if (!gl->risk_built) {
		gl->risk_built = true;
		gl->risk = gl->n ? malloc(gl->n * sizeof(*gl->risk)) : NULL;
		for (size_t i = 0; gl->risk && i < gl->n; i++)
			if (gl->v[i].kind == SPOOL_GAP_REC_AT_RISK)
				gl->risk[gl->nrisk++] = gl->v[i].id;
		if (gl->nrisk)
			qsort(gl->risk, gl->nrisk, sizeof(*gl->risk), ds_u64_cmp);
		else if (gl->n)
			gl->oom |= !gl->risk;
	}
	if (!gl->nrisk || !bsearch(&id, gl->risk, gl->nrisk, sizeof(id), ds_u64_cmp))
		return;
	struct gap_tail *v = ds_grow(gl->loc, &gl->loc_cap, gl->nloc, sizeof(*v), 64);
	if (!v) {
		gl->oom = true;
		return;
	}
	gl->loc = v;
	gl->loc[gl->nloc++] = (struct gap_tail){.id = id, .seq = seq, .off = off, .lane = lane};
}

static bool gap_pos_lt(uint64_t s1, uint64_t o1, uint64_t s2, uint64_t o2)
{
	return s1 < s2 || (s1 == s2 && o1 < o2);
}

static void gap_collect(void *ctx, const struct spool_gap_rec *g)
{
	struct gap_load *gl = ctx;
	if (g->watermark) {
		unsigned l = g->rec_lane;
		if (l < SPOOL_LANES_MAX &&
		    (!gl->wm[l] || gap_pos_lt(gl->wm_rec_seq[l], gl->wm_rec_off[l], g->rec_seq, g->rec_off))) {
			gl->wm[l] = true;
			gl->wm_rec_seq[l] = g->rec_seq;
			gl->wm_rec_off[l] = g->rec_off;
			gl->thr_seq[l] = g->wm_all ? g->rec_seq : g->wm_seq;
			gl->thr_off[l] = g->wm_all ? g->rec_off : g->wm_off;
			gl->wm_at_us[l] = g->wm_at_us;
		}
		return;
	}
	struct spool_gap_rec *v = ds_grow(gl->v, &gl->cap, gl->n, sizeof(*v), 256);
	if (!v) {
		gl->oom = true;
		return;
	}
	gl->v = v;
	gl->v[gl->n++] = *g;
}

/* A message of a lane at or after its watermark's threshold: its 250's fate is unknown (a crash). */
static void gap_msg(void *ctx, uint64_t id, unsigned lane, uint64_t seq, uint64_t off, int64_t received_at_us)
{
	struct gap_load *gl = ctx;
	gap_loc_note(gl, id, lane, seq, off);
	if (lane >= SPOOL_LANES_MAX || !gl->wm[lane] || gap_pos_lt(seq, off, gl->thr_seq[lane], gl->thr_off[lane]))
		return;
	/*
	 * Received long after the lane's last watermark: no worker was writing
	 * watermarks then (a run with gap dedup off), so nothing is known of it.
	 */
	if (received_at_us > gl->wm_at_us[lane] + GAP_WM_SLACK_US)
		return;
	/*
	 * Received so long before the lane's last watermark that its 250's fate
	 * was settled when that watermark was written (the client had sent a
	 * byte or been timed out), and a fate settled at risk had its AT_RISK
	 * record staged before it: a copy that compaction wrote past the
	 * threshold since is not at risk. Errs only towards storing a retry (a
	 * duplicate, e.g. after a longer timeout in the last run), never
	 * towards suppressing a legitimate resend.
	 */
	if (received_at_us + gl->fate_open_us < gl->wm_at_us[lane])
		return;
	struct gap_tail *v = ds_grow(gl->tail, &gl->tail_cap, gl->ntail, sizeof(*v), 64);
	if (!v) {
		gl->oom = true;
		return;
	}
	gl->tail = v;
	gl->tail[gl->ntail++] = (struct gap_tail){
		.id = id, .seq = seq, .off = off, .lane = lane, .received_at_us = received_at_us};
}

/*
 * The crash's tail (FORMAT.md, "Gap records"): every message after its
 * lane's last watermark that no gap record names is at risk from its
 * receipt for the window, fingerprinted from the stored copy, and owed an
 * AT_RISK record (its lane's worker writes it before its first watermark).
 */
static size_t gap_tail_apply(const struct io_config *cfg, struct io_shared *sh, struct gap_load *gl, int64_t now)
{
	struct spool_fetch *f = NULL;
	size_t n = 0;
	uint8_t *scratch = malloc(65536);
	if (!scratch || spool_fetch_open(&f, cfg->spool_dir, 4) < 0) {
		free(scratch);
		return 0;
	}
	for (size_t i = 0; i < gl->ntail; i++) {
		const struct gap_tail *t = &gl->tail[i];
		int64_t exp = t->received_at_us + (int64_t)cfg->gap_window_s * 1000000;
		bool named = false;
		for (size_t k = 0; k < gl->n && !named; k++)
			named = gl->v[k].id == t->id;
		struct spool_gap_rec g = {.id = t->id, .kind = SPOOL_GAP_REC_AT_RISK, .expires_us = exp};
		if (named || exp <= now ||
		    io_gap_fp_stored(f, t->lane, t->seq, t->off, t->id, scratch, 65536, &g.fp) < 0)
			continue;
		if (io_gap_insert(sh->gap, t->id, &g.fp, exp, true) == 0 && io_gap_owe(sh->gap, &g) == 0)
			n++;
	}
	spool_fetch_close(f);
	free(scratch);
	return n;
}

static void gap_load_apply(const struct io_config *cfg, struct io_shared *sh, struct gap_load *gl)
{
	int64_t now = ds_wall_us();
	size_t at_risk = 0, cleared = 0, full = 0;
	/*
	 * The stored copy a retry is compared with is the one recovery hands out
	 * (the one reclamation keeps), whatever copy the record names: after a
	 * crash in a compaction the newest record can name a copy that lost.
	 */
	if (gl->nloc)
		qsort(gl->loc, gl->nloc, sizeof(*gl->loc), gap_loc_cmp);
	for (size_t i = 0; i < gl->n && gl->nloc; i++) {
		struct spool_gap_rec *g = &gl->v[i];
		const struct gap_tail *t = g->kind == SPOOL_GAP_REC_AT_RISK
						   ? bsearch(&(struct gap_tail){.id = g->id}, gl->loc,
							     gl->nloc, sizeof(*gl->loc), gap_loc_cmp)
						   : NULL;
		if (t) {
			g->fp.lane = t->lane;
			g->fp.seq = t->seq;
			g->fp.off = t->off;
		}
	}
	for (size_t i = 0; i < gl->n; i++)
		if (gl->v[i].kind == SPOOL_GAP_REC_AT_RISK && gl->v[i].expires_us > now) {
			if (io_gap_insert(sh->gap, gl->v[i].id, &gl->v[i].fp, gl->v[i].expires_us, true) == 0)
				at_risk++;
			else
				full++;
		}
	for (size_t i = 0; i < gl->n; i++)
		if (gl->v[i].kind == SPOOL_GAP_REC_CLEARED)
			cleared += io_gap_remove_id(sh->gap, gl->v[i].id);
	size_t tail = gap_tail_apply(cfg, sh, gl, now);
	fprintf(stderr,
		"dotspool: gap dedup: %zu gap record(s), %zu at-risk message(s) loaded, %zu cleared, %zu not "
		"taken (set full), %zu at risk from a crash (after their lane's watermark)%s\n",
		gl->n, at_risk - cleared, cleared, full, tail,
		gl->oom ? ", some records not read (out of memory)" : "");
	free(gl->v);
	free(gl->tail);
	free(gl->risk);
	free(gl->loc);
}

/*
 * The spool directory, locked and recovered. One server per spool: a second
 * one would recover the first one's open segments and race it for segment
 * numbers. The lock lives as long as the process (the descriptor is never
 * closed); dotspool-ctl only reads and does not take it.
 */

static int spool_prepare(const struct io_config *cfg, struct io_shared *sh)
{
	int ret = spool_dir_create(cfg->spool_dir);
	if (ret < 0) {
		fprintf(stderr, "dotspool: spool %s: %s\n", cfg->spool_dir, strerror(-ret));
		return ret;
	}
	char lock_path[4200];
	snprintf(lock_path, sizeof(lock_path), "%s/dotspool.lock", cfg->spool_dir);
	int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		int err = errno;
		fprintf(stderr, "dotspool: spool %s: %s\n", cfg->spool_dir,
			err == EWOULDBLOCK ? "in use by another dotspool (lock held on dotspool.lock)"
					   : strerror(err));
		return -err;
	}
	struct spool_recovery_report rep;
	memset(&rep, 0, sizeof(rep));
	/* With delivery on, every message still owed (any lane, any earlier thread count) is queued. */
	struct gap_load gl = {.fate_open_us = (int64_t)cfg->timeout_command_s * 1000000 + GAP_WM_SLACK_US};
	if (cfg->gap_window_s) {
		ret = io_gap_create(&sh->gap, cfg->gap_entries);
		if (ret < 0) {
			fprintf(stderr, "dotspool: gap dedup set: %s\n", strerror(-ret));
			return ret;
		}
	}
	struct spool_recover_gap_ops gops = {.rec = gap_collect, .msg = gap_msg, .ctx = &gl};
	ret = spool_recover_queue_gap(&cfg->spool, &rep, cfg->deliver.hop_count ? backlog_add : NULL, sh,
				      sh->gap ? &gops : NULL);
	if (ret < 0) {
		free(gl.v);
		free(gl.tail);
		free(gl.risk);
		free(gl.loc);
		fprintf(stderr, "dotspool: spool recovery failed: %s\n", strerror(-ret));
		return ret;
	}
	fputs("dotspool: ", stderr);
	spool_recovery_report_print(&rep, stderr);
	if (sh->gap)
		gap_load_apply(cfg, sh, &gl);
	return 0;
}

/*
 * --reclaim: the table of what every segment holds, from a scan beside
 * recovery; what is reclaimable now goes before the lanes open (start-up
 * stays flat), the rest as messages become final (its own thread).
 */
/*
 * Reclamation's events: one log line per segment reclaimed (event=reclaim),
 * the metrics block after every pass. Called from one thread at a time (the
 * main thread at start-up, then the reclamation thread), which owns the log
 * ring after the watermark sampler's.
 */
static void reclaim_event(void *ctx, const struct spool_reclaim_event *ev)
{
	struct obs_log_ring *ring = ctx;

	if (ev->kind == SPOOL_RECLAIM_EV_RECLAIMED) {
		if (ring && obs_log_begin(ring, OBS_LOG_INFO, "reclaim")) {
			obs_log_u64(ring, "lane", ev->lane);
			obs_log_u64(ring, "segment", ev->seq);
			obs_log_u64(ring, "bytes", ev->bytes);
			obs_log_u64(ring, "messages", ev->messages);
			obs_log_end(ring);
		}
		return;
	}
	obs_metrics_reclaim_set(ev->st->segments, ev->st->bytes, ev->st->reclaimed, ev->st->reclaimed_bytes,
				ev->st->compacted, ev->st->compacted_messages, ev->st->compacted_bytes);
	obs_metrics_recycle_set(ev->st->free_segments, ev->st->recycled);
}

static int reclaim_start(struct io_config *cfg, struct obs_log_ring *ring)
{
	if (!cfg->reclaim)
		return 0;
	struct spool_reclaim *rc;
	int ret = spool_reclaim_create(&rc, cfg->spool_dir, NULL, NULL);
	if (ret == 0) {
		spool_reclaim_set_events(rc, reclaim_event, ring);
		spool_reclaim_set_keep_max(rc, (int64_t)cfg->gap_keep_s * 1000000);
		spool_reclaim_set_recycle_max(rc, cfg->segment_recycle_max);
	}
	if (ret == 0 && (ret = spool_reclaim_load(rc)) < 0)
		spool_reclaim_destroy(rc);
	if (ret < 0) {
		fprintf(stderr, "dotspool: spool reclamation: %s\n", strerror(-ret));
		return ret;
	}
	int n = spool_reclaim_run(rc);
	struct spool_reclaim_stats st;
	spool_reclaim_stats(rc, &st);
	fprintf(stderr, "dotspool: spool reclamation: %d segment(s) reclaimed at start-up, %llu on disk\n",
		n < 0 ? 0 : n, (unsigned long long)st.segments);
	ret = spool_reclaim_start(rc);
	if (ret < 0) {
		spool_reclaim_destroy(rc);
		return ret;
	}
	cfg->spool.reclaim = rc;
	return 0;
}

/* --recipients: the table is there before any worker takes a connection; a bad file stops start-up. */
static int recipients_start(const struct io_config *cfg)
{
	char err[600];
	if (!cfg->policy.recipients[0])
		return 0;
	int64_t t0 = ds_mono_us();
	int ret = io_rcpt_start(cfg->policy.recipients, cfg->policy.recipients_case_sensitive, err, sizeof(err));
	if (ret < 0) {
		fprintf(stderr, "dotspool: recipients: %s\n", err);
		return ret;
	}
	struct io_rcpt_table_info in;
	io_rcpt_current_info(&in);
	fprintf(stderr, "dotspool: recipients: %s: %llu addresses, %llu domains, %llu bytes, loaded in %lld ms\n",
		cfg->policy.recipients, (unsigned long long)in.addresses, (unsigned long long)in.domains,
		(unsigned long long)in.bytes, (long long)((ds_mono_us() - t0) / 1000));
	return 0;
}

/* What the workers share: the per-address limits, one metrics block each, the log. */
static int shared_create(struct io_shared *sh, const struct io_config *cfg)
{
	int ret = io_iplimit_create(&sh->iplimit, cfg->max_connections, cfg->policy.client_ipv6_prefix_length);
	const uint32_t *rates = cfg->policy.rate_max;
	if (ret == 0 && (rates[IO_THROTTLE_CONN] || rates[IO_THROTTLE_MSG] || rates[IO_THROTTLE_RCPT]))
		ret = io_throttle_create(&sh->throttle, cfg->policy.client_table_size, rates);
	if (ret < 0) {
		fprintf(stderr, "dotspool: start-up failed: %s\n", strerror(-ret));
		return ret;
	}
	for (uint32_t i = 0; i < cfg->threads; i++) {
		/* Cache-line aligned: two workers' counters never share a line. */
		sh->metrics[i] = aligned_alloc(64, (sizeof(struct obs_metrics) + 63) & ~(size_t)63);
		if (!sh->metrics[i]) {
			fprintf(stderr, "dotspool: start-up failed: %s\n", strerror(ENOMEM));
			return -ENOMEM;
		}
		obs_metrics_init(sh->metrics[i]);
	}
	sh->metrics_count = cfg->threads;
	if (cfg->deliver.hop_count) {
		const char *names[IO_DELIVER_HOPS_MAX];
		for (uint32_t i = 0; i < cfg->deliver.hop_count; i++)
			names[i] = cfg->deliver.hop[i].text;
		obs_metrics_set_hops(names, cfg->deliver.hop_count);
	}
	enum obs_log_level level = OBS_LOG_INFO;
	obs_log_level_parse(cfg->log_level, &level);
	/* A ring per worker, then the watermark sampler's, reclamation's, the control socket's. */
	ret = obs_log_create(&sh->log, cfg->threads + 3, cfg->log_ring_size, stderr, level);
	if (ret == 0)
		ret = obs_log_start(sh->log);
	if (ret < 0) {
		fprintf(stderr, "dotspool: log: %s\n", strerror(-ret));
		return ret;
	}
	return 0;
}

/*
 * Create and start every worker, and wait until each has its ring and its
 * spool lane. On failure the caller tears down workers[0, *created).
 */
static int workers_start(struct io_shared *sh, const struct io_config *cfg, struct io_worker **workers,
			 uint32_t *created, uint32_t *started)
{
	int ret = 0;
	for (uint32_t i = 0; i < cfg->threads; i++) {
		ret = io_worker_create(&workers[i], cfg, sh, i);
		if (ret < 0)
			break;
		++*created;
		ret = io_worker_start(workers[i]);
		if (ret < 0)
			break;
		++*started;
	}
	if (ret < 0) {
		/* Worker `started` is the one that could not be created or started. */
		fprintf(stderr, "dotspool: start-up failed: worker %u: %s\n", *started, strerror(-ret));
		return ret;
	}
	/* "ready" only once every worker has its ring and its spool lane. */
	while (atomic_load(&sh->workers_ready) + atomic_load(&sh->workers_failed) < *started) {
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	unsigned failed = atomic_load(&sh->workers_failed);
	if (failed) {
		fprintf(stderr, "dotspool: start-up failed: %u of %u worker(s) could not start\n", failed,
			*started);
		return -EIO;
	}
	return 0;
}

static void announce_ready(const struct io_config *cfg)
{
	for (uint32_t i = 0; i < cfg->listen_count; i++)
		fprintf(stderr, "dotspool: listening on %s (%s)\n", cfg->listen[i].text,
			cfg->listen[i].kind == IO_LISTEN_LMTP	      ? "lmtp"
			: cfg->listen[i].kind == IO_LISTEN_SMTP_PROXY ? "smtp+proxy"
								      : "smtp");
	if (cfg->metrics_listen[0])
		fprintf(stderr, "dotspool: metrics on http://%s/metrics\n", cfg->metrics_listen);
	if (cfg->tls_cert[0])
		fprintf(stderr, "dotspool: STARTTLS offered (TLS 1.2, %s)\n", cfg->tls_cert);
	fprintf(stderr, "dotspool: %u worker(s), spool %s, ready\n", cfg->threads, cfg->spool_dir);
}

/*
 * What SIGHUP does (TLS certificate and key, recipient table), for callers
 * that are not a signal (dotspool-ctl reload through the control socket):
 * the signal itself, so there is one path, taken by the main thread's sigwait.
 * Safe from any thread; returns at once.
 */
void daemon_reload(void)
{
	kill(getpid(), SIGHUP);
}

/* Until SIGTERM or SIGINT; SIGHUP makes every worker reload the TLS certificate and key. */
static void wait_for_stop(const sigset_t *sigs, struct io_shared *sh, const struct io_config *cfg,
			  struct io_worker **workers, uint32_t started)
{
	for (;;) {
		int sig = 0;
		if (sigwait(sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			/* Workers reload the TLS certificate and key from their own loops. */
			fprintf(stderr, "dotspool: SIGHUP: reloading\n");
			/* The recipient table is rebuilt on its own thread and swapped in (io/rcpt_table.h). */
			io_rcpt_reload();
			atomic_fetch_add(&sh->reload_gen, 1);
			for (uint32_t i = 0; i < started; i++)
				io_worker_wake(workers[i]);
			continue;
		}
		fprintf(stderr, "dotspool: %s: stopping (up to %u s for transactions in flight)\n",
			sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->shutdown_timeout_s);
		return;
	}
}

int main(int argc, char **argv)
{
	static struct io_config cfg;
	daemon_config_defaults(&cfg);
	if (parse_args(&cfg, argc, argv) < 0)
		return 2;

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	/* Workers inherit the mask: only this thread takes the signals. */
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile(cfg.max_connections);
	static struct io_shared sh;
	if (shared_create(&sh, &cfg) < 0 || recipients_start(&cfg) < 0) {
		shared_destroy(&sh);
		return 1;
	}
	if (spool_prepare(&cfg, &sh) < 0 || reclaim_start(&cfg, obs_log_ring(sh.log, cfg.threads + 1)) < 0) {
		shared_destroy(&sh);
		return 1;
	}
	/*
	 * The spool's watermark sampler serves every worker's sessions: its first
	 * sample is taken before any worker arms a listener. It logs through the
	 * ring after the workers' (obs_log_create makes threads + 1 rings; no
	 * other thread uses the last).
	 */
	int wret = io_watermark_start(&cfg, obs_log_ring(sh.log, cfg.threads));
	if (wret < 0) {
		fprintf(stderr, "dotspool: spool watermark: cannot start its sampler: %s\n", strerror(-wret));
		if (cfg.spool.reclaim)
			spool_reclaim_destroy(cfg.spool.reclaim);
		shared_destroy(&sh);
		return 1;
	}
	/*
	 * Every start-up failure from here on goes through workers_teardown():
	 * workers already running are stopped and joined, and every worker
	 * created is destroyed, so a failed start leaks nothing.
	 */
	struct io_worker *workers[IO_THREADS_MAX] = {0};
	uint32_t created = 0, started = 0;
	/*
	 * The control socket (dotspool-ctl's changing commands) exists before
	 * any listener takes mail, so a client that sees the server answer
	 * finds it; commands wait until every worker runs (io_ctlsock_ready).
	 */
	int cret = io_ctlsock_start(&cfg, workers, cfg.threads, obs_log_ring(sh.log, cfg.threads + 2));
	if (cret < 0)
		fprintf(stderr, "dotspool: warning: no control socket: %s\n", strerror(-cret));
	if (workers_start(&sh, &cfg, workers, &created, &started) < 0) {
		io_ctlsock_stop();
		workers_teardown(&sh, workers, created);
		io_ctlsock_fini();
		io_watermark_stop();
		if (cfg.spool.reclaim)
			spool_reclaim_destroy(cfg.spool.reclaim);
		shared_destroy(&sh);
		return 1;
	}
	io_ctlsock_ready();
	announce_ready(&cfg);
	wait_for_stop(&sigs, &sh, &cfg, workers, started);
	io_ctlsock_stop();
	int rc = workers_teardown(&sh, workers, created);
	io_ctlsock_fini();
	io_watermark_stop();
	if (cfg.spool.reclaim)
		spool_reclaim_destroy(cfg.spool.reclaim);
	shared_destroy(&sh);
	fprintf(stderr, "dotspool: stopped\n");
	return rc;
}
