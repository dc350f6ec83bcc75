/* SPDX-License-Identifier: MIT */
#ifndef DS_TESTS_SPOOL_SIM_STORAGE_H
#define DS_TESTS_SPOOL_SIM_STORAGE_H

/*
 * Simulated storage behind struct spool_io_ops. Writes land in a volatile
 * list when they complete and reach the real segment file only when a
 * flush that covers them runs (a flush covers the writes completed when it
 * was submitted, plus the write of a write_flush pair). A flush runs and
 * its completion is delivered later, as separate events, in random order
 * among ops that may legally complete: two fsyncs finish in either order.
 * Faults: crash at event k, flush error, ENOSPC, short writes, -EAGAIN.
 *
 * Writeback errors follow Linux (errseq): a failed flush (flush_fail_at)
 * drops the writes it was writing back (a random sector-aligned prefix of
 * each may reach the file), bumps the file's error sequence, and every open
 * file description reports it once, on its next flush; descriptors open at
 * the time of the error see it, the one whose flush consumed it does not
 * see it again.
 *
 * DSYNC writes (write_dsync, the direct mode): durable the moment they
 * complete (persisted then, never volatile). The sim checks the direct
 * discipline: 4096-aligned buffer, offset and length, and no block written
 * by one DSYNC write (that may have reached the disk) is ever written by
 * another. A crash leaves each DSYNC write still in flight dropped, whole,
 * torn per 512-byte sector, or with garbage over its first block (a torn
 * block: what a partial-block rewrite would do to acknowledged bytes).
 */

#include <stdbool.h>
#include <stdint.h>

#include "spool.h"

struct sim;

struct sim_faults {
	uint64_t crash_at_event;  /* 0 = never: stop after this many completions */
	uint32_t flush_fail_at;	  /* n-th flush (1-based) completes with -EIO; 0 = never */
	uint32_t write_enospc_at; /* n-th write completes with -ENOSPC; 0 = never */
	uint32_t short_pct;	  /* % of writes completing short */
	uint32_t eagain_pct;	  /* % of writes completing with -EAGAIN */
	uint32_t write_fail_at;	  /* n-th write, if a DSYNC one, completes with -EIO; 0 = never */
};

struct sim *sim_create(uint64_t seed, const struct sim_faults *f,
		       void (*settled)(void *ctx, uint64_t cookie, int res), void *ctx);
void sim_destroy(struct sim *s);
const struct spool_io_ops *sim_ops(void);
void sim_attach(struct sim *s, struct spool_lane *l);
/* Complete up to n pending ops (random eligible). Returns how many; stops at the crash point. */
unsigned sim_step(struct sim *s, unsigned n);
/* Kick and complete everything (until the lane is idle or crashed). */
void sim_drain(struct sim *s);
bool sim_crashed(const struct sim *s);
uint64_t sim_events(const struct sim *s);
/*
 * After a crash: what an unflushed write leaves behind. Each volatile
 * write is dropped, or (randomly) persisted whole or as a torn prefix;
 * with scribble, random garbage lands inside one unflushed range.
 */
void sim_crash_apply(struct sim *s, bool tear, bool scribble);
/* DSYNC writes completed in full, and torn-block crashes applied, so far. */
uint64_t sim_dsync_writes(const struct sim *s);
uint64_t sim_torn_blocks(const struct sim *s);

#endif
