/* SPDX-License-Identifier: MIT */
#include "bench_msg.h"

#include <errno.h>
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

long bench_msg_build(char *buf, size_t cap, const struct bench_msg_params *p, size_t *msg_bytes)
{
	if (cap < bench_msg_wire_max(p->size_bytes))
		return -ENOSPC;
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
	while (unstuffed < p->size_bytes) {
		size_t left = p->size_bytes - unstuffed;
		/* A line is 1..78 chars plus CRLF; the last one takes exactly what is left. */
		size_t len = 20 + msg_rand(&x) % (BENCH_MSG_LINE_MAX - 19);
		if (left <= BENCH_MSG_LINE_MAX + 2)
			len = left > 2 ? left - 2 : 1;
		else if (left - (len + 2) < 3)
			len = left - 3 - 2; /* leave room for a final line of >= 1 char */
		DS_ASSERT(len >= 1 && len <= BENCH_MSG_LINE_MAX);
		char *line = buf + out;
		for (size_t i = 0; i < len; i++)
			line[i] = msg_alphabet[msg_rand(&x) % (sizeof(msg_alphabet) - 1)];
		if (line[0] == '.') {
			memmove(line + 1, line, len);
			out++;
		}
		out += len;
		buf[out++] = '\r';
		buf[out++] = '\n';
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
