/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_MSERVE_H
#define DS_IO_MSERVE_H

/* The /metrics HTTP endpoint on worker 0's ring (types in io_types.h). */

#include "io_types.h"

int io_mserve_open(struct io_worker *w); /* binds --metrics (worker 0 only); -errno */
void io_mserve_arm(struct io_worker *w);
void io_mserve_complete(struct io_worker *w, uint64_t tag, int res, uint32_t flags);
void io_mserve_tick(struct io_worker *w, int64_t now_ms);
void io_mserve_stop(struct io_worker *w); /* stop accepting (shutdown) */
void io_mserve_fini(struct io_worker *w);

#endif
