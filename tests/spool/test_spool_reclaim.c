/* SPDX-License-Identifier: MIT */
/*
 * Segment reclamation (spool_reclaim.h, FORMAT.md "Reclamation"): the crash
 * proof. A lane (through the storage simulator) with 512 KiB segments takes
 * messages of up to 3 recipients (bodies spanning segments), outcome
 * records (DELIVERED, DEFERRED, FAILED with a DSN spooled first, itself a
 * message), a txn held open across many rolls, and the reclaimer, fed by
 * the lane and by the test's "final" calls, runs between rounds. Every
 * reclaimer storage event (unlink, directory fsync) is a crash point: the
 * spool as it would be found (unlinks whose directory fsync completed are
 * gone, the pending one both ways) is recovered, and every acknowledged
 * message must be either owed with exactly its durable recipient states,
 * or final; a message finalized (and perhaps reclaimed) never comes back
 * as owed, a message never finalized is always there, no commit ever loses
 * its body (discarded 0). A restart from the last state then rebuilds the
 * table by spool_reclaim_load and reclaims down to the live segments.
 */
#include <limits.h>
#include <sys/stat.h>

#include "sim_storage.h"
#include "spool.h"
#include "spool_format.h"
#include "spool_reader.h"
#include "spool_reclaim.h"
#include "spool_segment.h"
#include "spool_sum.h"
#include "test_util.h"

#define MSGS_MAX   4096
#define RCPTS_MAX  3
#define EVENTS_MAX 4096

struct tmsg {
	uint64_t id;
	uint32_t rcpts;
	uint8_t st[RCPTS_MAX]; /* durable state per recipient */
	bool acked, final, is_dsn;
	uint32_t attempt;
};

static struct tmsg msgs[MSGS_MAX];
static unsigned nmsgs;
static int settled_res[1 << 16];
static bool settled_seen[1 << 16];

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	(void)ctx;
	CHECK(cookie < (1 << 16) && !settled_seen[cookie]);
	settled_seen[cookie] = true;
	settled_res[cookie] = res;
}

/*
 * Reclaimer storage events, for the crash points: unlink, rename (format 5
 * recycling: SEQ.seg to SEQ.free) and directory fsync. An unlink or rename
 * is durable once a directory fsync follows it; before that a crash may
 * show either name (both ways are checked).
 */
enum ev_kind { EV_UNLINK, EV_RENAME, EV_FSYNC_DIR };
struct ev {
	enum ev_kind kind;
	bool is_unlink; /* EV_UNLINK or EV_RENAME: a namespace change */
	char path[PATH_MAX], to[PATH_MAX];
};
static struct ev evs[EVENTS_MAX];
static unsigned nevs;

static int t_unlink(void *ctx, const char *path)
{
	(void)ctx;
	CHECK(nevs < EVENTS_MAX);
	evs[nevs].is_unlink = true;
	evs[nevs].kind = EV_UNLINK;
	snprintf(evs[nevs++].path, PATH_MAX, "%s", path);
	spool_sum_unlink_for(path); /* as the real one: the summary goes first */
	return unlink(path) ? -errno : 0;
}

static unsigned renames;

static int t_rename(void *ctx, const char *from, const char *to)
{
	(void)ctx;
	CHECK(nevs < EVENTS_MAX);
	evs[nevs].is_unlink = true;
	evs[nevs].kind = EV_RENAME;
	snprintf(evs[nevs].path, PATH_MAX, "%s", from);
	snprintf(evs[nevs++].to, PATH_MAX, "%s", to);
	renames++;
	spool_sum_unlink_for(from);
	return rename(from, to) ? -errno : 0;
}

static int t_fsync_dir(void *ctx, const char *path)
{
	(void)ctx;
	CHECK(nevs < EVENTS_MAX);
	evs[nevs].is_unlink = false;
	evs[nevs].kind = EV_FSYNC_DIR;
	snprintf(evs[nevs++].path, PATH_MAX, "%s", path);
	return spool_fsync_dir(path);
}

static char dir[256];
static uint64_t rng = 1;
static unsigned rnd(unsigned n)
{
	rng = tu_mix(rng);
	return (unsigned)(rng % n);
}

/* ---- checking one crash state ---- */

struct seen {
	uint64_t id;
	bool done;
	uint8_t st[RCPTS_MAX];
};
static struct seen seen[MSGS_MAX];
static unsigned nseen;

static int on_status(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	(void)ctx;
	CHECK(nseen < MSGS_MAX);
	seen[nseen].id = m->id;
	seen[nseen].done = st->done;
	for (uint32_t i = 0; i < st->rcpt_count && i < RCPTS_MAX; i++)
		seen[nseen].st[i] = st->rcpt[i].state;
	nseen++;
	return 0;
}

static void check_state(const char *d, const char *what)
{
	struct spool_config cfg;
	struct spool_recovery_report rep;
	struct spool_reader *r;

	spool_config_defaults(&cfg);
	cfg.dir = d;
	CHECK(spool_recover(&cfg, &rep) == 0);
	/*
	 * Everything in these states was durable before the reclaim run: no
	 * torn tail, no quarantine, also with recycled segments, whose tails
	 * hold an earlier segment's records (format 5).
	 */
	if (rep.torn_tails || rep.quarantined) {
		fprintf(stderr, "%s: %llu torn tails, %llu quarantined\n", what,
			(unsigned long long)rep.torn_tails, (unsigned long long)rep.quarantined);
		CHECK(0);
	}
	/* The reclamation load pins nothing either (a stale tail is a recycled segment's normal end). */
	{
		struct spool_reclaim *lt;
		struct spool_reclaim_stats lst;
		CHECK(spool_reclaim_create(&lt, d, NULL, NULL) == 0);
		CHECK(spool_reclaim_load(lt) == 0);
		spool_reclaim_stats(lt, &lst);
		if (lst.pinned) {
			fprintf(stderr, "%s: the reclamation load pinned %llu segments\n", what,
				(unsigned long long)lst.pinned);
			CHECK(0);
		}
		spool_reclaim_destroy(lt);
	}
	/*
	 * rep.discarded may count final messages whose chunk segment went before their commit
	 * segment (a crash between the two): not messages, never owed again. Every message
	 * not final must be there with its body (below).
	 */
	nseen = 0;
	CHECK(spool_reader_open(&r, d) == 0);
	CHECK(spool_reader_foreach_status(r, on_status, NULL) == 0);
	spool_reader_close(r);
	for (unsigned i = 0; i < nmsgs; i++) {
		struct tmsg *m = &msgs[i];
		struct seen *s = NULL;
		if (!m->acked)
			continue;
		for (unsigned k = 0; k < nseen; k++)
			if (seen[k].id == m->id)
				s = &seen[k];
		if (m->final) {
			/* Gone, or there and still final: never owed again. */
			if (s && !s->done) {
				fprintf(stderr, "%s: final message %016llx resurrected\n", what,
					(unsigned long long)m->id);
				CHECK(0);
			}
			continue;
		}
		if (!s) {
			fprintf(stderr, "%s: owed message %016llx lost\n", what, (unsigned long long)m->id);
			CHECK(0);
		}
		CHECK(!s->done);
		for (uint32_t k = 0; k < m->rcpts; k++)
			CHECK(s->st[k] == m->st[k]);
	}
}

static void sh(const char *fmt, const char *a, const char *b)
{
	char cmd[3 * PATH_MAX];
	snprintf(cmd, sizeof(cmd), fmt, a, b);
	CHECK(system(cmd) == 0);
}

/* Events [from, nevs) were one reclaim run on top of snapshot snap: try every crash point. */
static unsigned crash_points(const char *snap, unsigned from)
{
	char var[300], p[3 * PATH_MAX], what[64];
	unsigned points = 0;

	snprintf(var, sizeof(var), "%s.var", dir);
	for (unsigned k = from; k <= nevs; k++) {
		for (int pending_applied = 0; pending_applied < 2; pending_applied++) {
			bool pending = false;
			snprintf(p, sizeof(p), "rm -rf '%s' && cp -al '%s' '%s'", var, snap, var);
			CHECK(system(p) == 0);
			for (unsigned e = from; e < k; e++) {
				if (!evs[e].is_unlink)
					continue;
				bool durable = false;
				for (unsigned f = e + 1; f < k; f++)
					if (!evs[f].is_unlink)
						durable = true; /* its own lane directory's fsync follows it
								   at once */
				if (!durable) {
					pending = true;
					if (!pending_applied)
						continue;
				}
				snprintf(p, sizeof(p), "%s%s", var, evs[e].path + strlen(dir));
				if (evs[e].kind == EV_RENAME) {
					char to[3 * PATH_MAX];
					snprintf(to, sizeof(to), "%s%s", var, evs[e].to + strlen(dir));
					CHECK(rename(p, to) == 0);
				} else {
					CHECK(unlink(p) == 0);
				}
			}
			snprintf(what, sizeof(what), "crash at event %u%s", k,
				 pending ? pending_applied ? " (unlink/rename kept)" : " (unlink/rename lost)"
					 : "");
			check_state(var, what);
			points++;
			if (!pending)
				break;
		}
	}
	sh("rm -rf '%s' '%s'", var, snap);
	return points;
}

/*
 * Copy the spool (all durable: the lane drained). The lane's spare thread
 * may be preparing a segment meanwhile; with recycling it renames a free
 * file, and cp fails on a name listed before the rename: copy again.
 */
static void snapshot(const char *snap)
{
	char cmd[3 * PATH_MAX];
	int rc = -1;

	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s' 2>/dev/null", snap, dir, snap);
	for (int i = 0; i < 20 && rc; i++) {
		rc = system(cmd);
		if (rc)
			usleep(50000);
	}
	CHECK(rc == 0);
}

/* ---- the run ---- */

static struct spool_lane *lane;
static struct sim *sim;
static uint64_t next_cookie = 1;
static uint8_t body[200 << 10];

static uint64_t commit_msg(uint32_t rcpts, size_t size, bool is_dsn)
{
	struct ds_rcpt rc[RCPTS_MAX] = {{"a@x", ""}, {"b@x", ""}, {"c@x", ""}};
	struct ds_envelope env = {.client_addr = "127.0.0.1",
				  .helo = "h",
				  .proto = "ESMTP",
				  .mail_from = is_dsn ? "" : "s@x",
				  .mail_params = "",
				  .rcpt = rc,
				  .rcpt_count = rcpts,
				  .tls = "",
				  .received_at_us = 1,
				  .body_size = size};
	struct spool_txn t;
	uint64_t ck = next_cookie++;
	int rc2;

	CHECK(spool_txn_begin(lane, &t) == 0);
	tu_body(t.id, 0, body, size);
	for (size_t off = 0; off < size;) {
		size_t n = DS_MIN(size - off, (size_t)(1 + rnd(64 << 10)));
		while ((rc2 = spool_txn_append(lane, &t, body + off, n)) == -EAGAIN)
			sim_drain(sim);
		CHECK(rc2 == 0);
		off += n;
	}
	while ((rc2 = spool_txn_commit(lane, &t, &env, ck)) == -EAGAIN)
		sim_drain(sim);
	CHECK(rc2 == 0);
	sim_drain(sim);
	CHECK(settled_seen[ck] && settled_res[ck] == 0);
	CHECK(nmsgs < MSGS_MAX);
	msgs[nmsgs++] = (struct tmsg){.id = t.id, .rcpts = rcpts, .acked = true, .is_dsn = is_dsn};
	return t.id;
}

static void outcome(struct tmsg *m, bool settle)
{
	struct spool_outcome_rcpt e[RCPTS_MAX];
	uint32_t n = 0;
	uint64_t dsn = 0;
	uint64_t ck = next_cookie++;
	int rc;

	m->attempt++;
	for (uint32_t i = 0; i < m->rcpts; i++) {
		if (SPOOL_RCPT_STATE_FINAL(m->st[i]))
			continue;
		unsigned p = rnd(10);
		uint8_t s = p < 6 ? SPOOL_RCPT_DELIVERED : p < 9 ? SPOOL_RCPT_DEFERRED : SPOOL_RCPT_FAILED;
		if (settle && s == SPOOL_RCPT_DEFERRED)
			s = SPOOL_RCPT_DELIVERED;
		if (m->is_dsn && s == SPOOL_RCPT_FAILED)
			s = SPOOL_RCPT_DEFERRED;
		e[n++] =
			(struct spool_outcome_rcpt){.idx = i, .state = s, .code = 250, .esc = "", .text = ""};
	}
	if (!n)
		return;
	for (uint32_t i = 0; i < n; i++)
		if (e[i].state == SPOOL_RCPT_FAILED && !dsn)
			dsn = commit_msg(1, 2000 + rnd(8000),
					 true); /* the DSN is durable before the record */
	struct spool_outcome o = {.id = m->id,
				  .attempt = m->attempt,
				  .at_us = 2,
				  .next_attempt_us = 3,
				  .dsn_id = dsn,
				  .hop = "smtp://127.0.0.1:25",
				  .rcpt_count = n,
				  .rcpt = e};
	while ((rc = spool_lane_outcome(lane, &o, ck)) == -EAGAIN)
		sim_drain(sim);
	CHECK(rc == 0);
	sim_drain(sim);
	CHECK(settled_seen[ck] && settled_res[ck] == 0);
	for (uint32_t i = 0; i < n; i++)
		m->st[e[i].idx] = e[i].state;
}

static void finalize(struct spool_reclaim *rt)
{
	for (unsigned i = 0; i < nmsgs; i++) {
		struct tmsg *m = &msgs[i];
		bool fin = true;
		if (m->final)
			continue;
		for (uint32_t k = 0; k < m->rcpts; k++)
			fin &= SPOOL_RCPT_STATE_FINAL(m->st[k]);
		if (fin) {
			m->final = true;
			spool_reclaim_msg_final(rt, m->id);
		}
	}
}

static uint64_t seg_files(const char *d)
{
	char cmd[PATH_MAX + 64];
	FILE *f;
	unsigned long long n = 0;

	snprintf(cmd, sizeof(cmd), "ls '%s'/lane-*/ | grep -c '\\.seg$'", d);
	f = popen(cmd, "r");
	CHECK(f && fscanf(f, "%llu", &n) == 1);
	pclose(f);
	return n;
}

int main(int argc, char **argv)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
	unsigned rounds = argc > 2 ? (unsigned)atoi(argv[2]) : 6;
	/* argv[3] "recycle": reclaimed segments become free files (format 5) the lane reuses. */
	uint32_t recycle_max = argc > 3 && !strcmp(argv[3], "recycle") ? 2 : 0;
	struct spool_reclaim_ops ops = {.unlink = t_unlink, .fsync_dir = t_fsync_dir, .rename = t_rename};
	struct spool_reclaim *rt;
	struct spool_config cfg;
	struct sim_faults f = {0};
	struct spool_txn held;
	unsigned points = 0, reclaimed = 0;
	char snap[300];

	rng = seed;
	snprintf(dir, sizeof(dir), "/tmp/ds_reclaim_XXXXXX");
	CHECK(mkdtemp(dir));
	snprintf(snap, sizeof(snap), "%s.snap", dir);
	spool_config_defaults(&cfg);
	cfg.dir = dir;
	cfg.segment_size = SPOOL_SEGMENT_SIZE_MIN;
	cfg.buffer_size = 1u << 20;
	CHECK(spool_reclaim_create(&rt, dir, &ops, NULL) == 0);
	spool_reclaim_set_recycle_max(rt, recycle_max);
	CHECK(spool_reclaim_load(rt) == 0);
	cfg.reclaim = rt;
	sim = sim_create(seed, &f, on_settled, NULL);
	CHECK(spool_lane_open(&lane, &cfg, 0, sim_ops(), sim) == 0);
	sim_attach(sim, lane);

	for (unsigned round = 0; round < rounds; round++) {
		unsigned first = nmsgs, from;
		if (round == 2) {
			/* A txn held open across many rolls: its first chunks' segment must survive. */
			CHECK(spool_txn_begin(lane, &held) == 0);
			tu_body(held.id, 0, body, 5000);
			CHECK(spool_txn_append(lane, &held, body, 5000) == 0);
			sim_drain(sim);
		}
		for (unsigned i = 0; i < 30; i++)
			commit_msg(1 + rnd(RCPTS_MAX), 1 + rnd(i % 7 == 0 ? 180 << 10 : 20 << 10), false);
		for (unsigned i = 0; i < nmsgs * 2; i++) {
			struct tmsg *m = &msgs[rnd(nmsgs)];
			if (!m->final && (m - msgs >= (long)first || rnd(2)))
				outcome(m, false);
		}
		/*
		 * Older messages settle, but one message of round 1 stays deferred until the last rounds
		 * run: it pins its segment, and the segments its segment-mates' records went to.
		 */
		for (unsigned i = 0; i < first; i++)
			if (!msgs[i].final && (i != 35 || round >= rounds - 2))
				outcome(&msgs[i], true);
		if (round == rounds - 2) {
			struct ds_rcpt rc1 = {"h@x", ""};
			struct ds_envelope env = {.client_addr = "127.0.0.1",
						  .helo = "h",
						  .proto = "ESMTP",
						  .mail_from = "s@x",
						  .mail_params = "",
						  .rcpt = &rc1,
						  .rcpt_count = 1,
						  .tls = "",
						  .received_at_us = 1,
						  .body_size = 5000};
			uint64_t ck = next_cookie++;
			CHECK(spool_txn_commit(lane, &held, &env, ck) == 0);
			sim_drain(sim);
			CHECK(settled_seen[ck] && settled_res[ck] == 0);
			msgs[nmsgs++] = (struct tmsg){.id = held.id, .rcpts = 1, .acked = true};
		}
		finalize(rt);
		/* The crash points of this reclaim run, on the spool as it stands (all durable). */
		snapshot(snap);
		/* The held txn commits at last: its body is all there. */
		from = nevs;
		int n = spool_reclaim_run(rt);
		CHECK(n >= 0);
		if (getenv("DUMP"))
			spool_reclaim_dump(rt, stderr);
		reclaimed += (unsigned)n;
		points += crash_points(snap, from);
	}
	check_state(dir, "after the run");
	struct spool_reclaim_stats st;
	spool_reclaim_stats(rt, &st);
	uint64_t files_before = seg_files(dir);
	printf("seed %llu: %u messages, %u reclaimed in-run (%llu bytes), %u crash states checked, %llu "
	       "segment files, table: %llu segments, %llu messages (%llu final), %llu pinned\n",
	       (unsigned long long)seed, nmsgs, reclaimed, (unsigned long long)st.reclaimed_bytes, points,
	       (unsigned long long)files_before, (unsigned long long)st.segments,
	       (unsigned long long)st.messages, (unsigned long long)st.final_messages,
	       (unsigned long long)st.pinned);
	CHECK(reclaimed > 0 && points > 2 * reclaimed);
	{
		struct spool_lane_stats ls;
		spool_lane_stats(lane, &ls);
		printf("recycling (max %u per lane): %u renames to free files, %llu segments prepared from "
		       "them, %llu new, %llu free now\n",
		       recycle_max, renames, (unsigned long long)ls.segments_recycled,
		       (unsigned long long)ls.segments_fresh, (unsigned long long)st.free_segments);
		/* Recycling really ran: segments came from free files (no zero-fill), the pool stays bounded.
		 */
		CHECK(!recycle_max || (renames > 0 && ls.segments_recycled > 0));
		CHECK(recycle_max || (renames == 0 && ls.segments_recycled == 0));
		CHECK(st.free_segments <= recycle_max);
	}
	/* The table knows every segment file but the spare (not in use yet). */
	CHECK(st.segments == files_before || st.segments + 1 == files_before);

	/* Restart: everything delivered now; the table from the scan reclaims down to the live ones. */
	for (unsigned i = 0; i < nmsgs; i++)
		while (!msgs[i].final) {
			outcome(&msgs[i], true);
			finalize(rt);
		}
	sim_drain(sim);
	spool_lane_close(lane);
	sim_destroy(sim);
	spool_reclaim_destroy(rt);
	CHECK(spool_reclaim_create(&rt, dir, &ops, NULL) == 0);
	spool_reclaim_set_recycle_max(rt, recycle_max);
	CHECK(spool_reclaim_load(rt) == 0);
	snapshot(snap);
	unsigned from = nevs;
	int n = spool_reclaim_run(rt);
	CHECK(n > 0);
	points += crash_points(snap, from);
	spool_reclaim_stats(rt, &st);
	uint64_t files_after = seg_files(dir);
	printf("restart: %d reclaimed at start-up, %llu segment files left (of %llu), %u crash states in "
	       "all\n",
	       n, (unsigned long long)files_after, (unsigned long long)files_before, points);
	/* Every message is final: only the lane's highest segment stays (sequence numbers never repeat). */
	CHECK(files_after == 1);
	check_state(dir, "after restart");
	if (recycle_max) {
		/*
		 * The disk bound needs room (io/watermark.c): every free file goes first, and the
		 * counts follow (the lane's pool as its open would count it).
		 */
		char ldir[PATH_MAX];
		uint64_t *fseqs, top;
		CHECK(spool_lane_dir_path(ldir, sizeof(ldir), dir, 0) == 0);
		int nf = spool_free_sweep(ldir, cfg.segment_size, recycle_max, &top);
		CHECK(nf > 0);
		spool_reclaim_free_set(rt, 0, (uint32_t)nf, cfg.segment_size);
		spool_reclaim_stats(rt, &st);
		CHECK(st.free_segments == (uint64_t)nf &&
		      st.bytes == st.segments * cfg.segment_size + (uint64_t)nf * cfg.segment_size);
		CHECK(spool_reclaim_free_drop(rt) == (unsigned)nf);
		spool_reclaim_stats(rt, &st);
		CHECK(st.free_segments == 0 && st.free_bytes == 0);
		CHECK(spool_lane_file_list(ldir, "free", &fseqs) == 0);
		free(fseqs);
		printf("disk bound: %d free files removed first, pool counts 0\n", nf);
	}
	spool_reclaim_destroy(rt);
	sh("rm -rf '%s' '%s'", dir, snap);
	return 0;
}
