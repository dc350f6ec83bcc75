/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_SYNCIO_H
#define DS_SPOOL_SYNCIO_H

/*
 * A synchronous struct spool_io_ops: pwrite/fdatasync done at submit time,
 * completions queued and delivered by spool_syncio_run() (never from inside
 * a submit, as with io_uring). For tools and tests; not for the server.
 */

#include "spool.h"

struct spool_syncio;

/* settled is called for each settled commit. */
int spool_syncio_create(struct spool_syncio **out, void (*settled)(void *ctx, uint64_t cookie, int res),
			void *settled_ctx);
void spool_syncio_destroy(struct spool_syncio *s);
const struct spool_io_ops *spool_syncio_ops(void);
void spool_syncio_attach(struct spool_syncio *s, struct spool_lane *l);
/* Kick the lane and deliver completions until it is idle. */
void spool_syncio_run(struct spool_syncio *s);

#endif
