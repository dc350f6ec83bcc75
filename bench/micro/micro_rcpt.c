/* SPDX-License-Identifier: MIT */
/*
 * The recipient table's lookup (issue 17), next to the command parser's
 * benchmarks: a 1 M-address table built once from a generated file, then
 * lookups of known and of unknown addresses (an unknown one also probes
 * its @domain), in a random order so that the table's cache misses count.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "micro.h"
#include "rcpt_table.h"

#define RCPT_MICRO_N	   1000000u
#define RCPT_MICRO_QUERIES 65536u

static struct io_rcpt_table *table;
static char queries[2][RCPT_MICRO_QUERIES][48];

static void addr_of(uint64_t i, char *buf, size_t cap)
{
	snprintf(buf, cap, "user.u%llx@dom%llu.example", (unsigned long long)(i * 2654435761u),
		 (unsigned long long)(i % 100));
}

static struct io_rcpt_table *table_get(void)
{
	if (table)
		return table;
	char path[64], a[64], err[256];
	snprintf(path, sizeof(path), "/tmp/micro-rcpt-%d.txt", (int)getpid());
	FILE *f = fopen(path, "w");
	if (!f)
		abort();
	for (uint64_t i = 0; i < RCPT_MICRO_N; i++) {
		addr_of(i, a, sizeof(a));
		fprintf(f, "%s\n", a);
	}
	fclose(f);
	if (io_rcpt_table_load(path, false, &table, err, sizeof(err)) < 0) {
		fprintf(stderr, "micro_rcpt: %s\n", err);
		abort();
	}
	unlink(path);
	uint64_t x = 12345;
	for (uint32_t i = 0; i < RCPT_MICRO_QUERIES; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		uint64_t k = (x >> 20) % RCPT_MICRO_N;
		addr_of(k, queries[0][i], sizeof(queries[0][i]));
		addr_of(RCPT_MICRO_N + k, queries[1][i], sizeof(queries[1][i]));
	}
	return table;
}

static void run(struct micro_state *st, int which)
{
	struct io_rcpt_table *t = table_get();
	uint64_t hits = 0, i = 0;
	while (micro_keep_running(st)) {
		const char *q = queries[which][i++ & (RCPT_MICRO_QUERIES - 1)];
		hits += io_rcpt_table_has(t, q, strlen(q));
	}
	micro_do_not_optimize_u64(hits);
	micro_set_items(st, micro_iterations(st));
}

MICRO_BENCH(rcpt_table_1m_known)
{
	run(st, 0);
}

MICRO_BENCH(rcpt_table_1m_unknown)
{
	run(st, 1);
}
