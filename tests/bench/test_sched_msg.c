/* SPDX-License-Identifier: MIT */
/* Open-loop arrival schedule and message generator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bench_msg.h"
#include "bench_sched.h"

static void test_sched_times(void **s)
{
	struct bench_sched sc;
	assert_int_equal(bench_sched_init(&sc, 1000, 0.0, 10), -EINVAL);
	assert_int_equal(bench_sched_init(&sc, 1000, 1000.0, 100000000), 0);
	assert_int_equal(bench_sched_time_ns(&sc, 0), 1000);
	assert_int_equal(bench_sched_time_ns(&sc, 1), 1000 + 1000000);
	/* No drift: message k is at exactly k ms even far out. */
	assert_int_equal(bench_sched_time_ns(&sc, 99999999), 1000 + 99999999ull * 1000000ull);
	/* Non-integer interval: 3 per second -> 333333333.3 ns, rounded per k, never accumulated. */
	assert_int_equal(bench_sched_init(&sc, 0, 3.0, 1000000), 0);
	assert_int_equal(bench_sched_time_ns(&sc, 1), 333333333);
	assert_int_equal(bench_sched_time_ns(&sc, 2), 666666667);
	assert_int_equal(bench_sched_time_ns(&sc, 3), 1000000000);
	assert_int_equal(bench_sched_time_ns(&sc, 300000), 100000000000000ull);
	for (uint64_t k = 1; k < 10000; k++)
		assert_true(bench_sched_time_ns(&sc, k) > bench_sched_time_ns(&sc, k - 1));
}

static void test_sched_release(void **s)
{
	struct bench_sched sc;
	uint64_t first;
	assert_int_equal(bench_sched_init(&sc, 1000000, 100.0, 50), 0); /* every 10 ms from t=1 ms */
	assert_int_equal(bench_sched_next_ns(&sc), 1000000);
	assert_int_equal(bench_sched_release(&sc, 999999, UINT64_MAX, &first), 0);
	assert_int_equal(bench_sched_release(&sc, 1000000, UINT64_MAX, &first), 1);
	assert_int_equal(first, 0);
	assert_int_equal(bench_sched_next_ns(&sc), 11000000);
	/* A stalled caller (woke 95 ms late) gets everything due at once, nothing skipped. */
	assert_int_equal(bench_sched_release(&sc, 96000000, UINT64_MAX, &first), 9);
	assert_int_equal(first, 1);
	assert_int_equal(bench_sched_release(&sc, 200000000, 3, &first), 3);
	assert_int_equal(first, 10);
	assert_int_equal(bench_sched_release(&sc, 10000000000ull, UINT64_MAX, &first), 37);
	assert_int_equal(first, 13);
	assert_int_equal(bench_sched_next_ns(&sc), UINT64_MAX);
	assert_int_equal(bench_sched_release(&sc, UINT64_MAX, UINT64_MAX, &first), 0);
}

/* Unstuffs wire bytes and checks the message's form. Returns the unstuffed size. */
static size_t check_wire(const char *w, size_t n)
{
	assert_true(n >= 5);
	assert_memory_equal(w + n - 3, ".\r\n", 3);
	assert_memory_equal(w + n - 5, "\r\n", 2);
	size_t unstuffed = 0;
	size_t pos = 0;
	while (pos < n - 3) {
		const char *nl = memchr(w + pos, '\n', n - 3 - pos);
		assert_non_null(nl);
		size_t len = (size_t)(nl - (w + pos)) + 1;
		assert_true(len >= 2);
		assert_int_equal(w[pos + len - 2], '\r');
		assert_null(memchr(w + pos, '\r', len - 2));
		size_t content = len - 2;
		if (w[pos] == '.') {
			/* Stuffed: the original line started with '.', so it must have 2 dots now. */
			assert_true(content >= 2);
			assert_int_equal(w[pos + 1], '.');
			content--;
		}
		assert_true(content <= BENCH_MSG_LINE_MAX);
		unstuffed += content + 2;
		pos += len;
	}
	return unstuffed;
}

static void test_msg_form(void **s)
{
	const size_t sizes[] = {1, 100, 300, 301, 302, 303, 400, 1000, 4096, 65536, 1000000};
	size_t cap = bench_msg_wire_max(1000000);
	char *buf = malloc(cap);
	assert_non_null(buf);
	int stuffed_seen = 0;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		for (uint64_t seq = 0; seq < 20; seq++) {
			struct bench_msg_params p = {
				.seq = seq, .pid = 42, .size_bytes = sizes[i], .from = "a@b", .to = "c@d"};
			size_t msg_bytes = 0;
			long n = bench_msg_build(buf, cap, &p, &msg_bytes);
			assert_true(n > 0);
			size_t un = check_wire(buf, (size_t)n);
			/* The size reported (bytes_ok counts it) is the message as sent, before stuffing. */
			assert_int_equal(msg_bytes, un);
			/* Exact size once past the headers (a 1-byte tail may need 3 bytes). */
			if (sizes[i] >= 400)
				assert_int_equal(un, sizes[i]);
			else
				assert_true(un >= sizes[i]); /* never less: the headers alone may be more */
			char id[BENCH_MSG_ID_MAX], hdr[BENCH_MSG_ID_MAX + 16];
			bench_msg_id(id, sizeof(id), 42, seq);
			snprintf(hdr, sizeof(hdr), "\r\nMessage-ID: %s\r\n", id);
			assert_non_null(memmem(buf, (size_t)n, hdr, strlen(hdr)));
			if (memmem(buf, (size_t)n, "\r\n..", 4) != NULL)
				stuffed_seen++;
		}
	}
	assert_true(stuffed_seen > 0); /* the alphabet includes '.', stuffing is exercised */
	struct bench_msg_params p = {.seq = 1, .pid = 1, .size_bytes = 5000, .from = "a@b", .to = "c@d"};
	assert_int_equal(bench_msg_build(buf, 100, &p, NULL), -ENOSPC);
	char a[BENCH_MSG_ID_MAX], b[BENCH_MSG_ID_MAX];
	bench_msg_id(a, sizeof(a), 7, 1);
	bench_msg_id(b, sizeof(b), 7, 2);
	assert_string_not_equal(a, b);
	assert_string_equal(a, "<bench.7.1@dotspool-bench>");
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sched_times),
		cmocka_unit_test(test_sched_release),
		cmocka_unit_test(test_msg_form),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
