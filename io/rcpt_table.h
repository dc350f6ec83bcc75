/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_RCPT_TABLE_H
#define DS_IO_RCPT_TABLE_H

/*
 * The recipient table (--recipients FILE, issue 17): which addresses of the
 * accepted domains exist. One address per line ("local@domain"), "@domain"
 * accepts every local part of a domain, '#' comments and blank lines;
 * whatever follows the address after a space or tab is ignored, so a
 * Postfix map's source file ("alice@example.com OK") loads as it is.
 * Domains compare case-insensitively (ASCII), local parts too unless
 * --recipients-case-sensitive.
 *
 * Form: a compact in-memory set of 64-bit keyed fingerprints built at load
 * (sorted by bucket, a directory of bucket offsets): ~9-10 bytes per
 * address, two cache misses per lookup, no file kept open. Only
 * fingerprints are kept, so an address not in the file is taken as known
 * with probability <= entries / 2^64 per lookup (1e-12 for 10 M entries);
 * the seed is random per load, so nobody outside can aim at a collision.
 * Such an address gets today's behaviour (accepted, bounced later), never
 * a wrong refusal: an address in the file is always found.
 *
 * Reload (SIGHUP, daemon_reload): a thread of this module builds the new
 * table off the workers and publishes it with one atomic pointer store;
 * readers protect the pointer they use with a per-thread hazard slot, and
 * the old table is freed once no slot holds it. A lookup sees the old or
 * the new table, never a half-built one. A file that does not load keeps
 * the old table and logs the line number.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Upper bounds: entries (addresses + domains), one line's bytes. */
#define IO_RCPT_TABLE_ENTRIES_MAX (256u << 20)
#define IO_RCPT_LINE_MAX	  1024
/* Threads that may look up at the same time (workers, tests, benchmarks). */
#define IO_RCPT_READERS_MAX 128

struct io_rcpt_table;

struct io_rcpt_table_info {
	uint64_t entries;   /* distinct fingerprints */
	uint64_t addresses; /* address lines */
	uint64_t domains;   /* @domain lines */
	uint64_t bytes;	    /* memory the table holds */
};

/*
 * Build a table from path. On a bad line: -EINVAL and err says
 * "PATH:LINE: why"; other failures -errno with err set.
 */
int io_rcpt_table_load(const char *path, bool case_sensitive, struct io_rcpt_table **out, char *err,
		       size_t errcap);
void io_rcpt_table_free(struct io_rcpt_table *t);
void io_rcpt_table_info(const struct io_rcpt_table *t, struct io_rcpt_table_info *info);
/*
 * Is "local@domain" (addr, len bytes; the last '@' splits it) known: its
 * address line, or an @domain line of its domain? An address without '@'
 * is looked up as it is.
 */
bool io_rcpt_table_has(const struct io_rcpt_table *t, const char *addr, size_t len);

/* ---- the server's current table ---- */

/* Load path now (false: no table, every lookup says "no table") and start the reload thread. */
int io_rcpt_start(const char *path, bool case_sensitive, char *err, size_t errcap);
/* Ask for a reload (async; returns at once). No-op without a table. */
void io_rcpt_reload(void);
/* Wait until every reload asked for so far has finished (tests, and stop). Returns reloads done. */
uint64_t io_rcpt_reload_wait(void);
void io_rcpt_stop(void);
bool io_rcpt_enabled(void);
/* 1 known, 0 unknown, -ENOENT no table configured. */
int io_rcpt_lookup(const char *addr, size_t len);
/* Figures for logs and metrics. */
void io_rcpt_current_info(struct io_rcpt_table_info *info);
uint64_t io_rcpt_reloads(bool failed);

#endif
