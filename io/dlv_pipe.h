/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_DLV_PIPE_H
#define DS_IO_DLV_PIPE_H

/*
 * The pipe: transport (io/dlv_pipe.c), private to io/dlv.c: one program run
 * per message attempt, driven on the worker's ring. The program gets
 *
 *   argv:  PROGRAM -f SENDER -- RCPT...     (SENDER "" for <>)
 *   env:   the server's environment, plus DS_QUEUE_ID, DS_SENDER,
 *          DS_RECIPIENTS (space-separated), DS_SIZE, DS_CLIENT_ADDR,
 *          DS_HELO, DS_RECEIVED_AT (Unix seconds), DS_ATTEMPT
 *   stdin: the stored message (trace header + data, CRLF lines)
 *   stdout and stderr (one pipe): the first line is kept as the reason
 *
 * Exit 0: delivered to every recipient; 75 (EX_TEMPFAIL): deferred; any
 * other status, or killed by a signal: failed. A program that outlives its
 * run time (--deliver-timeout-pipe-s) is killed and the message deferred
 * (a slow program is not the message's fault; Exim's timeout_defer).
 */

#include <stdbool.h>
#include <stdint.h>

#include "dlv_client.h" /* struct dlv_outcome */
#include "ds_envelope.h"
#include "ring.h"

#define DLV_PIPE_BUF_BYTES (64u * 1024)

enum dlv_pipe_op { DLV_PIPE_WRITE = 0, DLV_PIPE_READ, DLV_PIPE_POLL };

struct dlv_pipe;

/* How the caller tags this run's ring ops. */
typedef uint64_t (*dlv_pipe_ud_fn)(void *ctx, enum dlv_pipe_op op);

/*
 * Spawn the program (posix_spawn: the worker pauses for the fork+exec,
 * about a millisecond). read() gives the body as dlv_msg's does. 0 or
 * -errno (nothing runs).
 */
int dlv_pipe_start(struct dlv_pipe **out, struct io_ring *ring, const char *program,
		   const struct ds_envelope *env, const char *queue_id, uint32_t attempt, uint64_t body_size,
		   int (*read)(void *ctx, uint64_t off, void *buf, size_t cap), void *read_ctx,
		   dlv_pipe_ud_fn ud, void *ud_ctx);
/* Arm what the run needs next; returns the number of ring ops armed. */
unsigned dlv_pipe_pump(struct dlv_pipe *p);
/* A completion of one of its ops. */
void dlv_pipe_complete(struct dlv_pipe *p, enum dlv_pipe_op op, int res);
/* The program has exited and its output is read (or 1 s passed since it exited: a child holds the pipe). */
bool dlv_pipe_done(const struct dlv_pipe *p, int64_t now_ms);
/* The outcome for every recipient (after dlv_pipe_done). */
void dlv_pipe_outcome(const struct dlv_pipe *p, struct dlv_outcome *o);
/* Time's up: SIGKILL (the outcome says deferred, timed out). */
void dlv_pipe_kill(struct dlv_pipe *p);
/* Free (no op in flight); a program still running is killed and reaped. */
void dlv_pipe_free(struct dlv_pipe *p);

#endif
