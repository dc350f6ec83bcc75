/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_H
#define DS_IO_H

/*
 * io/: one pinned thread per core, one io_uring each. Each worker owns its
 * listeners (SO_REUSEPORT), its connections, and its spool lane; nothing on
 * the message path is shared between workers. This is what the daemon
 * (daemon/main.c) runs: what the workers share, and their life cycle.
 */

#include <stdatomic.h>

#include "io_config.h"

struct obs_metrics;
struct obs_log;
struct io_iplimit;
struct io_throttle;
struct io_dlv_backlog;
struct io_gap;

/* Shared between workers; touched at accept/close only, never per message. */
struct io_shared {
	atomic_uint connections;
	atomic_bool stopping;
	atomic_uint reload_gen; /* bumped on SIGHUP: workers reload TLS */
	atomic_uint workers_ready;
	atomic_uint workers_failed;
	struct obs_metrics *metrics[IO_THREADS_MAX]; /* one per worker, written only by it */
	unsigned metrics_count;
	struct obs_log *log;
	struct io_iplimit *iplimit;
	struct io_throttle *throttle; /* per-client rates (issue 17); NULL when every limit is off */
	/* Messages recovery found still owed, one list per worker (io/dlv.h); NULL when none. */
	struct io_dlv_backlog *backlog;
	/* Gap dedup (io/gap.h): the server-wide set of at-risk fingerprints; NULL when off. */
	struct io_gap *gap;
};

struct io_worker;

int io_worker_create(struct io_worker **out, const struct io_config *cfg, struct io_shared *sh, unsigned no);
int io_worker_start(struct io_worker *w); /* spawns and pins the thread */
/* Async: the worker looks at the shared flags (stopping: graceful shutdown; reload_gen: TLS). */
void io_worker_wake(struct io_worker *w);
int io_worker_join(struct io_worker *w); /* 0 when it ended cleanly */
void io_worker_destroy(struct io_worker *w);

#endif
