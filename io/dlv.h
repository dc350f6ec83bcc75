/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_DLV_H
#define DS_IO_DLV_H

/*
 * The delivery stage of one worker (io/dlv.c): its queue, its connections to
 * the next hops (driving deliver/'s client machine on the worker's own ring),
 * the pipe transport, outcome records and bounces written to the worker's
 * own spool lane. Exists only with --deliver-to (w->dlv NULL otherwise).
 */

#include <stdbool.h>
#include <stdint.h>

#include "spool.h"

struct io_worker;
struct io_shared;

/* Spool cookies with this bit belong to the delivery stage (conn cookies never have it). */
#define IO_DLV_COOKIE_BIT (1ull << 63)

/*
 * Messages recovery found still owed, handed from main() to the worker that
 * drains their lane (lane % threads) before the workers start.
 */
struct io_dlv_backlog;
int io_dlv_backlog_add(struct io_shared *sh, unsigned threads, const struct spool_queue_entry *e);
void io_dlv_backlog_free(struct io_shared *sh);

int io_dlv_create(struct io_worker *w);	  /* on the worker's thread, after the lane is open */
void io_dlv_destroy(struct io_worker *w); /* after the loop: closes what is left */

/* A commit became durable (its 250 goes out now): queue it for delivery. */
void io_dlv_committed(struct io_worker *w, uint64_t id, uint64_t seq, uint64_t off,
		      const struct ds_envelope *env);
/* IO_OP_DLV completion. */
void io_dlv_complete(struct io_worker *w, uint64_t low, int res, uint32_t flags);
/* spool settled() of a delivery cookie (IO_DLV_COOKIE_BIT set). */
void io_dlv_settled(struct io_worker *w, uint64_t cookie, int res);
/* Every loop turn, after the completions: start what is due. */
void io_dlv_run(struct io_worker *w);
void io_dlv_tick(struct io_worker *w, int64_t now_ms);
/* Shutdown: start nothing new; attempts in progress may finish until the stop deadline. */
void io_dlv_shutdown(struct io_worker *w);
/* Stop deadline: abandon attempts (no outcome recorded: the next start retries them). */
void io_dlv_close_all(struct io_worker *w);
/* Ops in flight or records unsettled: the worker may not leave its loop. */
bool io_dlv_busy(const struct io_worker *w);

/*
 * Compaction (issue 15; spool/spool_compact.h) asks the queue: per id of
 * ids[0, n) (ascending, n <= SPOOL_COMPACT_BATCH_MAX), rc[i] 0 and st[i]
 * (location, size, attempts, due time, recipient states; the states point
 * into the queue, valid until the next queue call), -EBUSY (an attempt in
 * flight, held, frozen for an operator record) or -ENOENT (not queued:
 * final, or not this worker's). And tells it: message id was moved.
 */
struct spool_compact_msgstate;
void io_dlv_compact_states(struct io_worker *w, const uint64_t *ids, unsigned n, struct spool_compact_msgstate *st,
			   int *rc);
void io_dlv_relocate(struct io_worker *w, uint64_t id, uint64_t seq, uint64_t off);

#endif
