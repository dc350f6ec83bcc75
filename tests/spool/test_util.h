/* SPDX-License-Identifier: MIT */
#ifndef DS_TESTS_SPOOL_TEST_UTIL_H
#define DS_TESTS_SPOOL_TEST_UTIL_H

#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_envelope.h"
#include "spool.h"

#define CHECK(cond)                                                                                          \
	do {                                                                                                 \
		if (!(cond)) {                                                                               \
			fprintf(stderr, "CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);            \
			exit(1);                                                                             \
		}                                                                                            \
	} while (0)

static inline uint64_t tu_mix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

/* Deterministic body bytes of message idx. */
static inline void tu_body(uint64_t idx, uint64_t off, uint8_t *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t o = off + i;
		buf[i] = (uint8_t)(tu_mix(idx * 1000003ull + o / 8) >> ((o % 8) * 8));
	}
}

static int tu_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static inline void tu_rmrf(const char *dir)
{
	nftw(dir, tu_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A scratch directory, in RAM when possible (crash tests create many segments). */
static inline void tu_tmpdir(char *buf, size_t cap, const char *tag)
{
	const char *base =
		access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	snprintf(buf, cap, "%s/dsspool-%s-XXXXXX", base, tag);
	CHECK(mkdtemp(buf));
}

struct tu_env {
	char from[64];
	struct ds_rcpt rcpt[2];
	struct ds_envelope env;
};

static inline void tu_env_make(struct tu_env *e, uint64_t idx, uint64_t size)
{
	snprintf(e->from, sizeof(e->from), "t%llu@example.org", (unsigned long long)idx);
	e->rcpt[0] = (struct ds_rcpt){"a@localhost", ""};
	e->rcpt[1] = (struct ds_rcpt){"b@localhost", "NOTIFY=NEVER"};
	e->env = (struct ds_envelope){.client_addr = "127.0.0.1",
				      .client_port = 40000,
				      .helo = "client.example",
				      .proto = "ESMTP",
				      .mail_from = e->from,
				      .mail_params = "SIZE=100",
				      .rcpt = e->rcpt,
				      .rcpt_count = 2,
				      .tls = "",
				      .received_at_us = 1700000000000000ll + (int64_t)idx,
				      .body_size = size};
}

/*
 * One message of size bytes (body tu_body(cookie), envelope tu_env_make):
 * begin, append in 4 KiB pieces, commit with cookie. *id (if not NULL)
 * gets its id. 0 or the failing call's -errno (the txn is then aborted).
 */
static inline int tu_put(struct spool_lane *l, uint64_t cookie, size_t size, uint64_t *id)
{
	struct spool_txn t;
	struct tu_env e;
	uint8_t buf[4096];
	int rc = spool_txn_begin(l, &t);

	if (rc)
		return rc;
	if (id)
		*id = t.id;
	for (size_t off = 0; off < size;) {
		size_t n = DS_MIN(sizeof(buf), size - off);
		tu_body(cookie, off, buf, n);
		rc = spool_txn_append(l, &t, buf, n);
		if (rc) {
			spool_txn_abort(l, &t);
			return rc;
		}
		off += n;
	}
	tu_env_make(&e, cookie, size);
	return spool_txn_commit(l, &t, &e.env, cookie);
}

#endif
