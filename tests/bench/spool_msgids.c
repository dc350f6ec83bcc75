/* SPDX-License-Identifier: MIT */
/*
 * bench_spool_msgids SPOOL: for every committed message of a spool (as
 * spool_reader_foreach, i.e. `dotspool-ctl list`, sees them), one line
 *
 *     ID MESSAGE-ID SIZE RECEIVED
 *
 * MESSAGE-ID: the first Message-ID: field of the header section ("-" if none);
 * SIZE: the stored body bytes; RECEIVED: the length of the leading Received:
 * field the server prepends (folded lines included; 0 if the body does not
 * start with one), so SIZE - RECEIVED is the data as the client sent it.
 *
 * Test helper for tests/bench/run_against_dotspool.py. dotspool-ctl can only
 * map a Message-ID to a queue id with one `cat` per message, and each `cat`
 * rescans the lane (quadratic: 30 s for 11k messages). Here the header bytes
 * are read from the message's first chunk records, located by the commit's
 * chunk locator (spool/FORMAT.md), with the spool's own record parser. Body
 * checksums are not checked here: `dotspool-ctl verify` does that, and the
 * test cross-checks a sample against `dotspool-ctl cat`.
 * Exit 0 ok, 1 error, 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "spool_format.h"
#include "spool_reader.h"

#define HDR_CAP 4096

struct seg {
	unsigned lane;
	uint64_t seq;
	const uint8_t *map;
	uint64_t size;
	uint64_t epoch;
};

struct ctx {
	const char *dir;
	struct seg *segs;
	size_t nsegs, cap;
	int errors;
	unsigned long long messages;
};

static const struct seg *seg_get(struct ctx *c, unsigned lane, uint64_t seq)
{
	char path[4096];
	struct spool_seg_hdr hdr;
	struct stat st;
	void *map;
	int fd;

	for (size_t i = c->nsegs; i-- > 0;)
		if (c->segs[i].lane == lane && c->segs[i].seq == seq)
			return c->segs[i].map ? &c->segs[i] : NULL;
	if (c->nsegs == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 64;
		struct seg *s = realloc(c->segs, cap * sizeof(*s));
		if (!s)
			return NULL;
		c->segs = s;
		c->cap = cap;
	}
	c->segs[c->nsegs] = (struct seg){.lane = lane, .seq = seq};
	if (spool_seg_path(path, sizeof(path), c->dir, lane, seq) < 0)
		goto out;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		goto out;
	if (fstat(fd, &st) || st.st_size < (off_t)SPOOL_SEG_DATA_OFF) {
		close(fd);
		goto out;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		goto out;
	if (spool_seg_hdr_decode(map, SPOOL_SEG_HDR_SIZE, &hdr)) {
		munmap(map, (size_t)st.st_size);
		goto out;
	}
	c->segs[c->nsegs].map = map;
	c->segs[c->nsegs].size = (uint64_t)st.st_size;
	c->segs[c->nsegs].epoch = hdr.epoch;
out:
	c->nsegs++;
	return c->segs[c->nsegs - 1].map ? &c->segs[c->nsegs - 1] : NULL;
}

struct walk {
	uint64_t id;
	uint32_t want, got;
	char buf[HDR_CAP];
	size_t len;
};

static int walk_rec(void *ctx, const struct spool_rec *r)
{
	struct walk *w = ctx;

	if (r->txn_id != w->id)
		return 0;
	if (r->type == SPOOL_REC_COMMIT)
		return 1;
	if (r->type == SPOOL_REC_CHUNK) {
		size_t n = r->len < HDR_CAP - w->len ? r->len : HDR_CAP - w->len;
		memcpy(w->buf + w->len, r->payload, n);
		w->len += n;
		w->got++;
		if (w->got == w->want || w->len == HDR_CAP)
			return 1;
	}
	return 0;
}

/* The value of the header section's first Message-ID: field, or NULL. */
static const char *message_id(const struct walk *w, size_t *outlen)
{
	const char *p = w->buf, *end = w->buf + w->len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l;
		if (!nl)
			return NULL;
		l = (size_t)(nl - p);
		if (l && p[l - 1] == '\r')
			l--;
		if (l == 0)
			return NULL; /* end of the header section */
		if (l > 11 && !strncasecmp(p, "Message-ID:", 11)) {
			const char *v = p + 11, *ve = p + l;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			*outlen = (size_t)(ve - v);
			return *outlen ? v : NULL;
		}
		p = nl + 1;
	}
	return NULL;
}

/* Length of the leading "Received:" field (with its folded lines), 0 if none. */
static size_t received_len(const struct walk *w)
{
	const char *p = w->buf, *end = w->buf + w->len;

	if (w->len < 9 || strncasecmp(p, "Received:", 9))
		return 0;
	for (;;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl || nl + 1 >= end)
			return 0;
		p = nl + 1;
		if (*p != ' ' && *p != '\t')
			return (size_t)(p - w->buf);
	}
}

static int each(void *vctx, const struct spool_msg *m)
{
	static const struct spool_scan_ops ops = {.rec = walk_rec};
	static struct walk w;
	struct ctx *c = vctx;
	char id[24];
	const char *mid;
	size_t mlen = 0;

	spool_id_format(m->id, id, sizeof(id));
	w.id = m->id;
	w.want = m->chunk_count;
	w.got = 0;
	w.len = 0;
	c->messages++;
	for (uint64_t seq = m->first_seq; m->chunk_count && seq <= m->seq; seq++) {
		const struct seg *s = seg_get(c, m->lane, seq);
		if (!s) {
			fprintf(stderr, "message %s: lane %u segment %llu unreadable\n", id, m->lane,
				(unsigned long long)seq);
			c->errors++;
			return 0;
		}
		if (spool_seg_scan(s->map, s->size, s->epoch,
				   seq == m->first_seq ? m->first_off : SPOOL_SEG_DATA_OFF, &ops, &w) > 0)
			break;
	}
	mid = message_id(&w, &mlen);
	if (mid)
		printf("%s %.*s %llu %zu\n", id, (int)mlen, mid, (unsigned long long)m->size,
		       received_len(&w));
	else
		printf("%s - %llu %zu\n", id, (unsigned long long)m->size, received_len(&w));
	return 0;
}

int main(int argc, char **argv)
{
	struct spool_reader *r;
	struct ctx c = {0};
	int rc;

	if (argc != 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: %s SPOOL\n", argv[0]);
		return 2;
	}
	c.dir = argv[1];
	rc = spool_reader_open(&r, c.dir);
	if (rc) {
		fprintf(stderr, "cannot open spool %s: %s\n", c.dir, strerror(-rc));
		return 1;
	}
	rc = spool_reader_foreach(r, each, &c);
	spool_reader_close(r);
	for (size_t i = 0; i < c.nsegs; i++)
		if (c.segs[i].map)
			munmap((void *)c.segs[i].map, c.segs[i].size);
	free(c.segs);
	if (rc) {
		fprintf(stderr, "listing failed: %s\n", strerror(rc < 0 ? -rc : EIO));
		return 1;
	}
	if (fflush(stdout))
		return 1;
	return c.errors ? 1 : 0;
}
