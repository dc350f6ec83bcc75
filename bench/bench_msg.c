/* SPDX-License-Identifier: MIT */
#include "bench_msg.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "ds_assert.h"

/* Body alphabet: includes '.', so some lines need stuffing and the scanner under test sees it. */
static const char msg_alphabet[] = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,-";

size_t bench_msg_wire_max(size_t size_bytes)
{
	/* Every line may gain one stuffed dot; lines are >= 3 bytes incl CRLF. */
	return BENCH_MSG_HEADER_MAX + size_bytes + size_bytes / 3 + 16;
}

size_t bench_msg_id(char *id, size_t cap, uint32_t pid, uint64_t seq)
{
	int n = snprintf(id, cap, "<bench.%u.%llu@dotspool-bench>", pid, (unsigned long long)seq);
	DS_ASSERT(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

static uint64_t msg_rand(uint64_t *x)
{
	/* xorshift64: cheap, deterministic per message. */
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/*
 * Random lines in wire form (stuffed), built once from a fixed seed, laid
 * out twice in a row so that any POOL_LINES consecutive lines from any start
 * are one contiguous run: a message body is mostly one memcpy from a
 * per-message start line. Generating every byte with xorshift and a modulo
 * cost the generator about half a core at 240 MB/s (the mix load), which
 * made the load generator, not the server, the bottleneck.
 */
enum { POOL_LINES = 16384 }; /* ~800 KiB of lines */

struct msg_pool {
	char *wire;
	uint32_t woff[2 * POOL_LINES + 1]; /* wire offset of line i */
	uint32_t uoff[2 * POOL_LINES + 1]; /* unstuffed offset of line i */
};

static struct msg_pool *pool;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* One random line of len characters plus CRLF at out; returns the wire bytes written. */
static size_t line_gen(char *out, size_t len, uint64_t *x)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++)
		out[i] = msg_alphabet[msg_rand(x) % (sizeof(msg_alphabet) - 1)];
	if (out[0] == '.') {
		memmove(out + 1, out, len);
		o++;
	}
	o += len;
	out[o++] = '\r';
	out[o++] = '\n';
	return o;
}

static void pool_init(void)
{
	struct msg_pool *p = calloc(1, sizeof(*p));
	char *w = malloc(2 * (size_t)POOL_LINES * (BENCH_MSG_LINE_MAX + 3));
	uint64_t x = 0x243F6A8885A308D3ull;
	size_t wo = 0, uo = 0;

	DS_ASSERT(p != NULL && w != NULL);
	for (unsigned i = 0; i < POOL_LINES; i++) {
		size_t len = 20 + msg_rand(&x) % (BENCH_MSG_LINE_MAX - 19);
		p->woff[i] = (uint32_t)wo;
		p->uoff[i] = (uint32_t)uo;
		wo += line_gen(w + wo, len, &x);
		uo += len + 2;
	}
	memcpy(w + wo, w, wo);
	for (unsigned i = 0; i < POOL_LINES; i++) {
		p->woff[POOL_LINES + i] = (uint32_t)(wo + p->woff[i]);
		p->uoff[POOL_LINES + i] = (uint32_t)(uo + p->uoff[i]);
	}
	p->woff[2 * POOL_LINES] = (uint32_t)(2 * wo);
	p->uoff[2 * POOL_LINES] = (uint32_t)(2 * uo);
	p->wire = w;
	pool = p;
}

/*
 * Copy whole pool lines from line s on, as many as fit in budget unstuffed
 * bytes (at most POOL_LINES); returns the wire bytes copied, *un the unstuffed.
 */
static size_t pool_copy(char *out, unsigned s, size_t budget, size_t *un)
{
	unsigned lo = s, hi = s + POOL_LINES; /* largest e in [lo, hi] with uoff[e] - uoff[s] <= budget */

	while (lo < hi) {
		unsigned mid = lo + (hi - lo + 1) / 2;
		if (pool->uoff[mid] - pool->uoff[s] <= budget)
			lo = mid;
		else
			hi = mid - 1;
	}
	*un = pool->uoff[lo] - pool->uoff[s];
	memcpy(out, pool->wire + pool->woff[s], pool->woff[lo] - pool->woff[s]);
	return pool->woff[lo] - pool->woff[s];
}

long bench_msg_build(char *buf, size_t cap, const struct bench_msg_params *p, size_t *msg_bytes)
{
	if (cap < bench_msg_wire_max(p->size_bytes))
		return -ENOSPC;
	pthread_once(&pool_once, pool_init);
	char id[BENCH_MSG_ID_MAX];
	bench_msg_id(id, sizeof(id), p->pid, p->seq);
	int hn = snprintf(buf, BENCH_MSG_HEADER_MAX,
			  "From: <%s>\r\nTo: <%s>\r\nSubject: dotspool-bench %llu\r\nMessage-ID: %s\r\n"
			  "Date: Thu, 1 Jan 1970 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
			  "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
			  p->from, p->to, (unsigned long long)p->seq, id);
	if (hn < 0 || hn >= BENCH_MSG_HEADER_MAX)
		return -ENOSPC;
	size_t out = (size_t)hn;
	size_t unstuffed = out; /* headers are never stuffed: they start with a letter */
	uint64_t x = (p->seq + 1) * 0x9E3779B97F4A7C15ull;
	/* The bulk from the pool, leaving a tail the line loop below cuts to the exact size. */
	enum { TAIL = 4 * (BENCH_MSG_LINE_MAX + 2) };
	while (p->size_bytes > unstuffed + TAIL) {
		size_t un = 0;
		out += pool_copy(buf + out, (unsigned)(msg_rand(&x) % POOL_LINES),
				 p->size_bytes - unstuffed - TAIL, &un);
		unstuffed += un;
		if (!un)
			break;
	}
	while (unstuffed < p->size_bytes) {
		size_t left = p->size_bytes - unstuffed;
		/* A line is 1..78 chars plus CRLF; the last one takes exactly what is left. */
		size_t len = 20 + msg_rand(&x) % (BENCH_MSG_LINE_MAX - 19);
		if (left <= BENCH_MSG_LINE_MAX + 2)
			len = left > 2 ? left - 2 : 1;
		else if (left - (len + 2) < 3)
			len = left - 3 - 2; /* leave room for a final line of >= 1 char */
		DS_ASSERT(len >= 1 && len <= BENCH_MSG_LINE_MAX);
		out += line_gen(buf + out, len, &x);
		unstuffed += len + 2;
		DS_ASSERT(out <= cap - 8);
	}
	memcpy(buf + out, ".\r\n", 3);
	out += 3;
	DS_ASSERT(out <= cap);
	if (msg_bytes)
		*msg_bytes = unstuffed;
	return (long)out;
}
