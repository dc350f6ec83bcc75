/* SPDX-License-Identifier: MIT */
/*
 * One worker: one pinned thread, one io_uring, its own listeners, its own
 * connections and its own spool lane. The loop:
 *
 *   kick the spool lane (group commit: one write+flush for everything
 *   appended during the last turn), submit, wait, handle completions.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <sys/statvfs.h>
#include <sys/uio.h> /* RWF_DSYNC */

#include "ds_assert.h"
#include "ds_clock.h"
#include "conn.h"
#include "dlv.h"
#include "gap.h"
#include "io_types.h"
#include "mserve.h"
#include "ring.h"
#include "log.h"
#include "spool.h"
#include "spool_compact.h"
#include "verify.h"

/* ---- spool storage interface, implemented with io_uring ---- */

static int ops_write(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag)
{
	struct io_worker *w = ctx;
	DS_ASSERT(tag <= IO_TAG_MASK);
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_write(sqe, fd, buf, len, off);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_SPOOL, tag));
	return 0;
}

/*
 * A write and the fdatasync linked to it take their two SQEs in one go.
 * Taken one by one, a full SQ would make io_sqe() submit the write alone
 * as a dangling link head, and the fdatasync would go out later, unlinked,
 * free to complete before the write reached the page cache: a 250 for
 * bytes that were never flushed.
 */
static int ops_write_flush(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t wtag,
			   int flush_fd, uint64_t ftag)
{
	struct io_worker *w = ctx;
	DS_ASSERT(wtag <= IO_TAG_MASK && ftag <= IO_TAG_MASK);
	struct io_uring_sqe *wsqe, *fsqe;
	if (io_sqe_pair(&w->ring, &wsqe, &fsqe) < 0)
		return -EAGAIN; /* the kernel took nothing (-EBUSY): the lane tries again next turn */
	io_uring_prep_write(wsqe, fd, buf, len, off);
	wsqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(wsqe, io_ud(IO_OP_SPOOL, wtag));
	io_uring_prep_fsync(fsqe, flush_fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(fsqe, io_ud(IO_OP_SPOOL, ftag));
	return 0;
}

/* --spool-io direct: a block-aligned write to an O_DIRECT segment, durable when it completes. */
static int ops_write_dsync(void *ctx, int fd, const void *buf, uint32_t len, uint64_t off, uint64_t tag)
{
	struct io_worker *w = ctx;
	DS_ASSERT(tag <= IO_TAG_MASK);
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_write(sqe, fd, buf, len, off);
	sqe->rw_flags = RWF_DSYNC;
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_SPOOL, tag));
	return 0;
}

static int ops_flush(void *ctx, int fd, uint64_t tag)
{
	struct io_worker *w = ctx;
	DS_ASSERT(tag <= IO_TAG_MASK);
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_SPOOL, tag));
	return 0;
}

static void ops_settled(void *ctx, uint64_t cookie, int res)
{
	struct io_worker *w = ctx;
	if (!(cookie & (IO_DLV_COOKIE_BIT | IO_GAP_COOKIE_BIT)) && (cookie & SPOOL_COMPACT_COOKIE_BIT))
		spool_compact_settled(w->compact, cookie, res);
	else if (cookie & IO_DLV_COOKIE_BIT)
		io_dlv_settled(ctx, cookie, res);
	else if (cookie & IO_GAP_COOKIE_BIT)
		io_gap_settled(ctx, cookie, res);
	else
		io_conn_settled(ctx, cookie, res);
}

/* A spool completion; when it finished a flush, record its latency and batch (from the lane's stats). */
static void spool_complete(struct io_worker *w, uint64_t tag, int res)
{
	spool_lane_complete(w->lane, tag, res);
	struct spool_lane_stats st;
	spool_lane_stats(w->lane, &st);
	uint64_t n = st.flushes - w->lane_stats.flushes;
	if (n) {
		uint64_t us = (st.flush_latency_us_sum - w->lane_stats.flush_latency_us_sum) / n;
		uint64_t messages = st.commits_durable - w->lane_stats.commits_durable;
		for (uint64_t i = 0; i < n; i++)
			obs_metrics_flush_done(w->m, us, i == 0 ? messages : 0, true);
	}
	/* The lane counts failures apart from completed flushes (a failure never raises flushes). */
	for (uint64_t i = w->lane_stats.flush_errors; i < st.flush_errors; i++)
		obs_metrics_flush_failed(w->m);
	w->lane_stats = st;
}

/* Once a second: what the spool uses and what its file system has left. */
static void spool_gauges(struct io_worker *w, int64_t now_ms)
{
	if (now_ms < w->statvfs_next_ms)
		return;
	w->statvfs_next_ms = now_ms + 1000;
	struct statvfs vfs;
	uint64_t free_bytes = 0;
	if (statvfs(w->cfg->spool_dir, &vfs) == 0)
		free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	obs_metrics_spool_bytes(w->m, w->lane_stats.segments_opened * w->cfg->spool.segment_size, free_bytes);
	obs_counter_set(&w->m->spool_pad_bytes, w->lane_stats.pad_bytes);
	/* The spare thread's figures move while the lane is idle: read them now. */
	struct spool_lane_stats st;
	spool_lane_stats(w->lane, &st);
	obs_counter_set(&w->m->spool_segments_recycled, st.segments_recycled);
	obs_counter_set(&w->m->spool_segments_fresh, st.segments_fresh);
	obs_counter_set(&w->m->spool_segments_spare, st.spares_ready);
}

static const struct spool_io_ops io_spool_ops = {
	.write = ops_write,
	.flush = ops_flush,
	.write_flush = ops_write_flush,
	.write_dsync = ops_write_dsync,
	.settled = ops_settled,
};

/* ---- listeners ---- */

/*
 * A listening socket of this worker. SO_REUSEPORT is essential (one
 * listener per worker on the same address: the kernel spreads the
 * connections); SO_REUSEADDR (a restart need not wait out TIME_WAIT) and
 * IPV6_V6ONLY (an IPv6 listener leaves the IPv4 port alone) are not: a
 * warning, from worker 0 only (report).
 */
static int listener_open(const struct io_listen_spec *spec, bool report)
{
	int one = 1;
	int fd = socket(spec->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 && report)
		fprintf(stderr, "dotspool: warning: listen %s: SO_REUSEADDR: %s\n", spec->text,
			strerror(errno));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (spec->addr.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0 && report)
		fprintf(stderr, "dotspool: warning: listen %s: IPV6_V6ONLY: %s\n", spec->text,
			strerror(errno));
	if (bind(fd, (const struct sockaddr *)&spec->addr, spec->addr_len) < 0)
		goto fail;
	if (listen(fd, 4096) < 0)
		goto fail;
	return fd;
fail:;
	int err = -errno;
	close(fd);
	return err;
}

static void listener_arm(struct io_worker *w, uint32_t i)
{
	struct io_listener *l = &w->listeners[i];
	if (l->armed || l->fd < 0 || w->stopping)
		return;
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_ACCEPT, i));
	l->armed = true;
}

static void listeners_close(struct io_worker *w)
{
	for (uint32_t i = 0; i < w->listener_count; i++) {
		struct io_listener *l = &w->listeners[i];
		if (l->fd < 0)
			continue;
		if (l->armed) {
			struct io_uring_sqe *sqe = io_sqe(&w->ring);
			io_uring_prep_cancel64(sqe, io_ud(IO_OP_ACCEPT, i), 0);
			io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0));
		}
		/*
		 * The ring holds its own file reference until the cancel lands, and
		 * this worker may leave its loop before submitting it; a listening
		 * socket left in the SO_REUSEPORT group would take connections that
		 * nobody serves. shutdown() unhashes it now and resets its backlog.
		 */
		shutdown(l->fd, SHUT_RDWR);
		close(l->fd);
		l->fd = -1;
	}
}

/* ---- timers and wake-ups ---- */

static void tick_arm(struct io_worker *w)
{
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	w->tick_ts.tv_sec = 0;
	w->tick_ts.tv_nsec = 250 * 1000 * 1000;
	io_uring_prep_timeout(sqe, &w->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_TICK, 0));
}

static void wake_arm(struct io_worker *w)
{
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_WAKE, 0));
}

/* SIGHUP: new certificate and key for new sessions; live ones keep theirs. */
static void tls_reload(struct io_worker *w)
{
	char err[256];
	w->tls_reload_gen = atomic_load(&w->sh->reload_gen);
	int ret = io_tls_server_reload(w->tls, w->cfg->tls_cert, w->cfg->tls_key, err, sizeof(err));
	if (ret < 0)
		fprintf(stderr, "dotspool: worker %u: TLS reload failed, keeping the old certificate: %s\n",
			w->no, err);
	else if (w->no == 0)
		fprintf(stderr, "dotspool: TLS certificate and key reloaded\n");
}

static void begin_shutdown(struct io_worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	w->stop_deadline_ms = ds_mono_ms() + (int64_t)w->cfg->shutdown_timeout_s * 1000;
	listeners_close(w);
	io_mserve_stop(w);
	io_conns_shutdown(w);
	io_dlv_shutdown(w);
	if (w->compact)
		spool_compact_stop(w->compact);
}

static void on_tick(struct io_worker *w)
{
	int64_t now = ds_mono_ms();
	if (w->accept_pause_until_ms && now >= (int64_t)w->accept_pause_until_ms) {
		w->accept_pause_until_ms = 0;
		for (uint32_t i = 0; i < w->listener_count; i++)
			listener_arm(w, i);
	}
	io_conns_tick(w, now);
	io_mserve_tick(w, now);
	io_dlv_tick(w, now);
	io_verify_tick(w, now);
	spool_gauges(w, now);
	if (w->stopping && now >= w->stop_deadline_ms) {
		io_conns_close_all(w);
		io_dlv_close_all(w);
	}
	tick_arm(w);
}

static void dispatch(struct io_worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	enum io_op op = (enum io_op)(ud >> IO_OP_SHIFT);
	uint64_t low = ud & IO_TAG_MASK;

	switch (op) {
	case IO_OP_ACCEPT: {
		struct io_listener *l = &w->listeners[low];
		if (!(cqe->flags & IORING_CQE_F_MORE))
			l->armed = false;
		if (cqe->res >= 0) {
			io_conn_accept(w, cqe->res, (uint32_t)low);
		} else if (cqe->res == -EMFILE || cqe->res == -ENFILE || cqe->res == -ENOMEM ||
			   cqe->res == -ENOBUFS) {
			/* Out of descriptors: pause accepting instead of spinning on the error. */
			w->accept_pause_until_ms = ds_mono_ms() + 200;
			if (l->armed) {
				struct io_uring_sqe *sqe = io_sqe(&w->ring);
				io_uring_prep_cancel64(sqe, ud, 0);
				io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0));
			}
			return;
		}
		if (!l->armed && !w->accept_pause_until_ms)
			listener_arm(w, (uint32_t)low);
		return;
	}
	case IO_OP_RECV:
		io_conn_on_recv(w, low, cqe->res, cqe->flags);
		return;
	case IO_OP_SEND:
		io_conn_on_send(w, low, cqe->res);
		return;
	case IO_OP_SPOOL:
		spool_complete(w, low, cqe->res);
		return;
	case IO_OP_METRICS:
		io_mserve_complete(w, low, cqe->res, cqe->flags);
		return;
	case IO_OP_TICK:
		on_tick(w);
		return;
	case IO_OP_DLV:
		io_dlv_complete(w, low, cqe->res, cqe->flags);
		return;
	case IO_OP_VERIFY:
		io_verify_complete(w, low, cqe->res);
		return;
	case IO_OP_WAKE:
		if (w->tls && atomic_load(&w->sh->reload_gen) != w->tls_reload_gen)
			tls_reload(w);
		if (atomic_load(&w->sh->stopping))
			begin_shutdown(w);
		else
			wake_arm(w);
		return;
	case IO_OP_IGNORE:
		return;
	}
	DS_ASSERT(!"unknown io_uring completion");
}

static bool worker_done(struct io_worker *w)
{
	return w->stopping && w->conn_active == 0 && !io_dlv_busy(w) && !io_verify_busy(w) &&
	       !(w->compact && spool_compact_busy(w->compact)) &&
	       io_gap_quiesce(w) && !spool_lane_busy(w->lane);
}

/*
 * CPU for TLS handshake steps per loop turn. One step (a signature, 1.4-3 ms
 * with mbedTLS 2.28) always runs; further ones wait for the next turn so that
 * completions of other sessions are looked at in between.
 */
#define IO_HS_BUDGET_US 1000

/* Start-up failed in this worker: the whole server stops (main() sees workers_failed). */
static void *worker_failed(struct io_worker *w)
{
	w->exit_code = 1;
	atomic_store(&w->sh->stopping, true);
	atomic_fetch_add(&w->sh->workers_failed, 1);
	return NULL;
}

/*
 * The thread's own set-up: pinned to its core, its ring, its spool lane.
 * A worker that cannot start says why, tells the others to stop and leaves
 * what it set up (ring, buffers, connection table) to io_worker_destroy(),
 * which main() calls after joining every worker.
 */
/* ---- compaction (issue 15; spool/spool_compact.h): the lane's compactor, on this thread ---- */

static void compact_states(void *ctx, const uint64_t *ids, unsigned n, struct spool_compact_msgstate *st, int *rc)
{
	io_dlv_compact_states(ctx, ids, n, st, rc);
}

static void compact_moved(void *ctx, uint64_t id, uint64_t seq, uint64_t off)
{
	struct io_worker *w = ctx;
	io_dlv_relocate(ctx, id, seq, off);
	/* A kept (at-risk) message: its retries are compared with the copy from now on (issue 16). */
	if (w->sh->gap)
		io_gap_relocate(w->sh->gap, id, w->no, seq, off);
}

/* A kept message's AT_RISK record as the set knows it, restated for its copy (issue 16). */
static int compact_gap(void *ctx, uint64_t id, struct spool_gap_rec *g)
{
	struct io_worker *w = ctx;
	memset(g, 0, sizeof(*g));
	g->id = id;
	g->kind = SPOOL_GAP_REC_AT_RISK;
	return w->sh->gap ? io_gap_get(w->sh->gap, id, &g->fp, &g->expires_us) : -ENOENT;
}

/* One line per segment compacted (reclamation logs the segment's unlink later, event=reclaim). */
static void compact_done(void *ctx, uint64_t seq, uint32_t moved, uint64_t bytes)
{
	struct io_worker *w = ctx;
	if (obs_log_begin(w->log, OBS_LOG_INFO, "compact")) {
		obs_log_u64(w->log, "lane", w->no);
		obs_log_u64(w->log, "segment", seq);
		obs_log_u64(w->log, "messages", moved);
		obs_log_u64(w->log, "bytes", bytes);
		struct spool_compact_stats st;
		spool_compact_stats(w->compact, &st);
		/* Kept (at-risk) messages this worker moved so far, each with a fresh AT_RISK record. */
		obs_log_u64(w->log, "kept_moved_total", st.kept);
		obs_log_end(w->log);
	}
}

/* With reclamation and a delivery queue (the live messages' state is the queue's). */
static int compact_create(struct io_worker *w)
{
	const struct io_config *cfg = w->cfg;
	if (!cfg->spool.reclaim || !w->dlv || !cfg->compact_age_s)
		return 0;
	struct spool_compact_config cc = {.age_us = (int64_t)cfg->compact_age_s * 1000000,
					  .live_max_pct = cfg->compact_live_max_pct,
					  .segment_size = cfg->spool.segment_size};
	static const struct spool_compact_ops ops = {
		.states = compact_states, .moved = compact_moved, .gap = compact_gap, .done = compact_done};
	return spool_compact_create(&w->compact, w->lane, w->no, cfg->spool_dir, cfg->spool.reclaim, &cc, &ops, w);
}

static int worker_setup(struct io_worker *w)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if (ncpu > 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->no % (unsigned)ncpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	int ret = io_ring_init(&w->ring, w->cfg->ring_entries, w->cfg->recv_buffers, w->cfg->recv_buffer_size,
			       w->no == 0);
	if (ret < 0) {
		fprintf(stderr, "dotspool: worker %u: io_uring setup failed: %s\n", w->no, strerror(-ret));
		return ret;
	}
	if (w->no == 0)
		io_ring_probe(&w->ring);
	ret = spool_lane_open(&w->lane, &w->cfg->spool, w->no, &io_spool_ops, w);
	if (ret < 0) {
		char dir[4200];
		if (spool_lane_dir_path(dir, sizeof(dir), w->cfg->spool_dir, w->no) < 0)
			snprintf(dir, sizeof(dir), "%u", w->no);
		fprintf(stderr, "dotspool: worker %u: spool lane %s: %s\n", w->no, dir, strerror(-ret));
		return ret;
	}
	spool_lane_stats(w->lane, &w->lane_stats);
	ret = io_dlv_create(w);
	if (ret < 0) {
		fprintf(stderr, "dotspool: worker %u: delivery stage: %s\n", w->no, strerror(-ret));
		return ret;
	}
	ret = compact_create(w);
	if (ret < 0) {
		fprintf(stderr, "dotspool: worker %u: compaction: %s\n", w->no, strerror(-ret));
		return ret;
	}
	ret = io_verify_create(w, io_conn_rcpt_answer);
	if (ret < 0) {
		fprintf(stderr, "dotspool: worker %u: recipient verification: %s\n", w->no, strerror(-ret));
		return ret;
	}
	return 0;
}

/*
 * The loop: kick the lane (group commit), submit and wait, handle the
 * completions, then the TLS handshake steps that wait. Until shutdown has
 * closed every connection and the lane is idle.
 */
static void worker_loop(struct io_worker *w)
{
	while (!worker_done(w)) {
		spool_lane_kick(w->lane);
		/* Handshakes left over from the last turn: look at new completions, do not sleep. */
		int ret = w->hs_head ? io_uring_submit(&w->ring.uring)
				     : io_uring_submit_and_wait(&w->ring.uring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			fprintf(stderr, "dotspool: worker %u: io_uring_submit: %s\n", w->no, strerror(-ret));
			w->exit_code = 1;
			return;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&w->ring.uring, head, cqe)
		{
			dispatch(w, cqe);
			n++;
		}
		io_uring_cq_advance(&w->ring.uring, n);
		io_conns_resume_parked(w);
		io_dlv_run(w);
		if (w->compact)
			spool_compact_step(w->compact, ds_wall_us());
		if (w->hs_head) {
			/* This turn's commits and replies go to the kernel before the CPU-heavy part. */
			spool_lane_kick(w->lane);
			io_uring_submit(&w->ring.uring);
			io_conns_handshakes(w, IO_HS_BUDGET_US);
		}
	}
}

static void *worker_main(void *arg)
{
	struct io_worker *w = arg;
	if (worker_setup(w) < 0)
		return worker_failed(w);
	atomic_fetch_add(&w->sh->workers_ready, 1);
	io_mserve_arm(w);
	for (uint32_t i = 0; i < w->listener_count; i++)
		listener_arm(w, i);
	tick_arm(w);
	wake_arm(w);
	if (atomic_load(&w->sh->stopping))
		begin_shutdown(w);
	worker_loop(w);
	spool_compact_destroy(w->compact);
	w->compact = NULL;
	io_verify_destroy(w);
	io_dlv_destroy(w);
	if (spool_lane_busy(w->lane)) {
		/* Never close a lane with a flush in flight: its buffers belong to the kernel. */
		w->exit_code = 1;
	} else {
		spool_lane_close(w->lane);
		w->lane = NULL;
	}
	return NULL;
}

int io_worker_create(struct io_worker **out, const struct io_config *cfg, struct io_shared *sh, unsigned no)
{
	struct io_worker *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->no = no;
	w->cfg = cfg;
	w->sh = sh;
	w->m = sh->metrics[no];
	w->log = obs_log_ring(sh->log, no);
	DS_ASSERT(w->m != NULL && w->log != NULL);
	for (unsigned i = 0; i < IO_MSERVE_SLOTS; i++)
		w->ms.slot[i].fd = -1;
	w->ms.fd = -1;
	w->smtp_cfg = cfg->smtp;
	w->smtp_cfg.lmtp = false;
	w->lmtp_cfg = cfg->smtp;
	w->lmtp_cfg.lmtp = true;
	w->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (w->wake_fd < 0) {
		free(w);
		return -errno;
	}
	for (uint32_t i = 0; i < cfg->listen_count; i++) {
		int fd = listener_open(&cfg->listen[i], no == 0);
		if (fd < 0) {
			fprintf(stderr, "dotspool: listen %s: %s\n", cfg->listen[i].text, strerror(-fd));
			w->listener_count = i;
			io_worker_destroy(w);
			return fd;
		}
		w->listeners[i].fd = fd;
		w->listeners[i].kind = cfg->listen[i].kind;
		w->listener_count = i + 1;
	}
	int ret = io_conns_init(w);
	if (ret < 0) {
		io_worker_destroy(w);
		return ret;
	}
	ret = io_mserve_open(w);
	if (ret < 0) {
		fprintf(stderr, "dotspool: metrics %s: %s\n", cfg->metrics_listen, strerror(-ret));
		io_worker_destroy(w);
		return ret;
	}
	if (cfg->tls_cert[0]) {
		char err[256];
		w->tls_reload_gen = atomic_load(&sh->reload_gen);
		ret = io_tls_server_create(&w->tls, cfg->tls_cert, cfg->tls_key, cfg->max_connections, err,
					   sizeof(err));
		w->tls_pt = malloc(IO_TLS_PT_BYTES);
		if (ret < 0 || !w->tls_pt) {
			fprintf(stderr, "dotspool: TLS: %s\n", ret < 0 ? err : "out of memory");
			io_worker_destroy(w);
			return ret < 0 ? ret : -ENOMEM;
		}
	}
	*out = w;
	return 0;
}

int io_worker_start(struct io_worker *w)
{
	int ret = pthread_create(&w->thread, NULL, worker_main, w);
	if (ret)
		return -ret;
	w->started = true;
	return 0;
}

void io_worker_wake(struct io_worker *w)
{
	uint64_t one = 1;
	ssize_t n = write(w->wake_fd, &one, sizeof(one));
	(void)n;
}

int io_worker_join(struct io_worker *w)
{
	if (w->started)
		pthread_join(w->thread, NULL);
	w->started = false;
	return w->exit_code;
}

void io_worker_destroy(struct io_worker *w)
{
	if (!w)
		return;
	for (uint32_t i = 0; i < w->listener_count; i++)
		if (w->listeners[i].fd >= 0)
			close(w->listeners[i].fd);
	io_verify_destroy(w);
	spool_compact_destroy(w->compact); /* a worker that never reached its loop */
	w->compact = NULL;
	io_dlv_destroy(w);
	io_ring_fini(&w->ring);
	io_conns_fini(w);
	io_mserve_fini(w);
	if (w->tls)
		io_tls_server_destroy(w->tls);
	free(w->tls_pt);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	free(w);
}
