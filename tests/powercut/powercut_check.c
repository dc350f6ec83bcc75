/* SPDX-License-Identifier: MIT */
/*
 * ds-powercut-check: compares a spool with what dotspool-bench sent.
 *
 *   ds-powercut-check scan SPOOL SIZES FROM TO
 *       one line per committed message (spool_reader_foreach order, i.e. what
 *       `dotspool-ctl list` lists), its body read with spool_reader_read (what
 *       `dotspool-ctl cat` prints):
 *           ID LANE SEGMENT OFFSET MESSAGE-ID STATUS
 *       (LANE, SEGMENT, OFFSET: where its commit record is)
 *       STATUS "ok": the stored data after the server's Received: header is
 *       byte for byte the message dotspool-bench generates for that
 *       Message-ID (<bench.PID.SEQ@dotspool-bench>); otherwise a word saying
 *       what is wrong (no-received, no-message-id, not-bench, differs@OFF,
 *       read-error). Exit 0 if the spool could be read, 1 if not.
 *   ds-powercut-check gen SIZES FROM TO PID SEQ
 *       writes the data the bench sends for that message (before dot-stuffing,
 *       without the final dot) to stdout, to compare with `dotspool-ctl cat`.
 *
 * SIZES is the bench's --size-file as a comma list (or one --size); FROM the
 * bench's --from; TO its --to, which must not contain %d. The bench must run
 * with --threads 1 (not sweep), so that a message's sequence number is the
 * one its size was drawn with: the size choice below is the one of
 * bench/bench_run.c conn_start_msg(); the message bytes come from the
 * bench's own generator (bench_msg_build).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench_msg.h"
#include "spool.h"
#include "spool_reader.h"

#define SIZES_MAX 64

static size_t sizes[SIZES_MAX];
static unsigned nsizes;
static const char *from, *to;

static int parse_sizes(const char *s)
{
	char *end;
	while (*s && nsizes < SIZES_MAX) {
		unsigned long long v = strtoull(s, &end, 10);
		if (end == s || !v)
			return -1;
		sizes[nsizes++] = (size_t)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -1;
	}
	return nsizes ? 0 : -1;
}

/* bench_run.c conn_start_msg(): the size of message seq. */
static size_t size_of(uint64_t seq)
{
	if (nsizes == 1)
		return sizes[0];
	uint64_t x = (seq + 1) * 0x2545F4914F6CDD1Dull;
	x ^= x >> 33;
	return sizes[x % nsizes];
}

/* The bench's message pid.seq as the server receives it: dot-stuffing undone, no final dot. */
static char *expected(uint32_t pid, uint64_t seq, size_t *len)
{
	struct bench_msg_params p = {
		.seq = seq, .pid = pid, .size_bytes = size_of(seq), .from = from, .to = to};
	size_t cap = bench_msg_wire_max(p.size_bytes);
	char *wire = malloc(cap), *out = malloc(cap);
	if (!wire || !out) {
		free(wire);
		free(out);
		return NULL;
	}
	long n = bench_msg_build(wire, cap, &p, NULL);
	if (n < 3) {
		free(wire);
		free(out);
		return NULL;
	}
	size_t o = 0;
	bool bol = true;
	for (long i = 0; i < n - 3; i++) { /* without the final ".\r\n" */
		if (bol && wire[i] == '.') {
			bol = false;
			continue; /* a stuffed dot */
		}
		out[o++] = wire[i];
		bol = wire[i] == '\n';
	}
	free(wire);
	*len = o;
	return out;
}

struct buf {
	char *p;
	size_t len, cap;
};

static int buf_add(void *ctx, const void *data, size_t len)
{
	struct buf *b = ctx;
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
		while (cap < b->len + len)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	return 0;
}

struct loc {
	uint64_t id, seq, off;
	unsigned lane;
};

struct ids {
	struct loc *v;
	size_t n, cap;
};

static int collect(void *ctx, const struct spool_msg *m)
{
	struct ids *ids = ctx;
	if (ids->n == ids->cap) {
		size_t cap = ids->cap ? 2 * ids->cap : 1024;
		struct loc *v = realloc(ids->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		ids->v = v;
		ids->cap = cap;
	}
	ids->v[ids->n++] = (struct loc){.id = m->id, .seq = m->seq, .off = m->off, .lane = m->lane};
	return 0;
}

/* End of the Received: field the server prepends (folded lines included), or 0. */
static size_t received_len(const char *p, size_t n)
{
	if (n < 9 || memcmp(p, "Received:", 9))
		return 0;
	size_t i = 0;
	for (;;) {
		const char *e = memmem(p + i, n - i, "\r\n", 2);
		if (!e)
			return 0;
		i = (size_t)(e - p) + 2;
		if (i >= n || (p[i] != ' ' && p[i] != '\t'))
			return i;
	}
}

/* The first "Message-ID: <...>" of the header section: its value with brackets into id. */
static int message_id(const char *p, size_t n, char *id, size_t cap)
{
	size_t i = 0;
	while (i < n) {
		const char *e = memmem(p + i, n - i, "\r\n", 2);
		size_t end = e ? (size_t)(e - p) : n;
		if (end == i)
			return -1; /* end of the header section */
		if (end - i > 12 && !strncasecmp(p + i, "Message-ID:", 11)) {
			size_t v = i + 11;
			while (v < end && (p[v] == ' ' || p[v] == '\t'))
				v++;
			if (end - v >= cap)
				return -1;
			memcpy(id, p + v, end - v);
			id[end - v] = 0;
			return 0;
		}
		i = end + 2;
	}
	return -1;
}

static int scan(const char *dir)
{
	struct spool_reader *r;
	struct ids ids = {0};
	int rc = spool_reader_open(&r, dir);
	if (rc) {
		fprintf(stderr, "ds-powercut-check: %s: %s\n", dir, strerror(-rc));
		return 1;
	}
	rc = spool_reader_foreach(r, collect, &ids);
	if (rc) {
		fprintf(stderr, "ds-powercut-check: list: %s\n", strerror(rc < 0 ? -rc : EIO));
		spool_reader_close(r);
		return 1;
	}
	struct buf b = {0};
	for (size_t k = 0; k < ids.n; k++) {
		char idtxt[96], mid[256];
		const struct loc *lc = &ids.v[k];
		spool_id_format(lc->id, idtxt, 32);
		/* where its commit record is: lane, segment, file offset */
		snprintf(idtxt + strlen(idtxt), sizeof(idtxt) - strlen(idtxt), " %u %" PRIu64 " %" PRIu64,
			 lc->lane, lc->seq, lc->off);
		b.len = 0;
		rc = spool_reader_read(r, lc->id, buf_add, &b);
		if (rc) {
			printf("%s - read-error:%d\n", idtxt, rc);
			continue;
		}
		size_t rl = received_len(b.p, b.len);
		if (!rl) {
			printf("%s - no-received\n", idtxt);
			continue;
		}
		const char *data = b.p + rl;
		size_t dlen = b.len - rl;
		if (message_id(data, dlen, mid, sizeof(mid))) {
			printf("%s - no-message-id\n", idtxt);
			continue;
		}
		unsigned pid;
		unsigned long long seq;
		char tail[64];
		if (sscanf(mid, "<bench.%u.%llu@%63[^>]>", &pid, &seq, tail) != 3 ||
		    strcmp(tail, "dotspool-bench")) {
			printf("%s %s not-bench\n", idtxt, mid);
			continue;
		}
		size_t elen;
		char *want = expected(pid, seq, &elen);
		if (!want) {
			printf("%s %s gen-error\n", idtxt, mid);
			continue;
		}
		if (elen == dlen && !memcmp(want, data, dlen)) {
			printf("%s %s ok\n", idtxt, mid);
		} else {
			size_t i = 0;
			while (i < elen && i < dlen && want[i] == data[i])
				i++;
			printf("%s %s differs@%zu(stored:%zu,sent:%zu)\n", idtxt, mid, i, dlen, elen);
		}
		free(want);
	}
	free(b.p);
	free(ids.v);
	spool_reader_close(r);
	return fflush(stdout) ? 1 : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: ds-powercut-check scan SPOOL SIZES FROM TO\n"
			"       ds-powercut-check gen SIZES FROM TO PID SEQ\n");
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "scan")) {
		if (parse_sizes(argv[3]))
			return usage(), 2;
		from = argv[4];
		to = argv[5];
		return scan(argv[2]);
	}
	if (argc == 7 && !strcmp(argv[1], "gen")) {
		if (parse_sizes(argv[2]))
			return usage(), 2;
		from = argv[3];
		to = argv[4];
		size_t len;
		char *m = expected((uint32_t)strtoul(argv[5], NULL, 10), strtoull(argv[6], NULL, 10), &len);
		if (!m)
			return 1;
		int rc = fwrite(m, 1, len, stdout) == len && !fflush(stdout) ? 0 : 1;
		free(m);
		return rc;
	}
	usage();
	return 2;
}
