/* SPDX-License-Identifier: MIT */
/* Unit tests for obs/metrics.c: counters, rendering, the /metrics HTTP front. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include <cmocka.h>

#include "metrics.h"

#define NW 3

static struct obs_metrics *alloc_metrics(void)
{
	struct obs_metrics *m = aligned_alloc(64, sizeof(*m));
	assert_non_null(m);
	obs_metrics_init(m);
	return m;
}

/* Value of one exact sample line "name{labels} value" in text; -1 when absent. */
static long long sample(const char *text, const char *series)
{
	size_t n = strlen(series);
	const char *p = text;
	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtoll(p + n + 1, NULL, 10);
		p += n;
	}
	return -1;
}

static void fill(struct obs_metrics *m)
{
	obs_metrics_conn_open(m);
	obs_metrics_conn_open(m);
	obs_metrics_conn_open(m);
	obs_metrics_conn_close(m);
	obs_metrics_conn_refused(m, OBS_REFUSE_LIMIT_PER_IP);
	obs_metrics_conn_refused(m, OBS_REFUSE_SHUTDOWN);
	obs_metrics_conn_refused(m, OBS_REFUSE_SHUTDOWN);
	obs_metrics_conn_refused(m, OBS_REFUSE_COUNT); /* ignored */
	obs_metrics_reply(m, 220);
	obs_metrics_reply(m, 250);
	obs_metrics_reply(m, 354);
	obs_metrics_reply(m, 451);
	obs_metrics_reply(m, 554);
	obs_metrics_reply(m, 999);			/* ignored */
	obs_metrics_message_accepted(m, 1000, 10);	/* <= 25us */
	obs_metrics_message_accepted(m, 2000, 25);	/* <= 25us: le is inclusive */
	obs_metrics_message_accepted(m, 3000, 26);	/* <= 50us */
	obs_metrics_message_accepted(m, 4000, 2000000); /* +Inf */
	obs_metrics_message_rejected(m);
	obs_metrics_tls_handshake(m, true);
	obs_metrics_tls_handshake(m, false);
	obs_metrics_flush_done(m, 800, 1, true);
	obs_metrics_flush_done(m, 1200, 3, true);
	obs_metrics_flush_done(m, 300000, 1000, false);
	obs_metrics_spool_bytes(m, 12345, 67890);
}

static void test_counters(void **state)
{
	struct obs_metrics *m = alloc_metrics();
	fill(m);
	assert_int_equal(obs_counter_get(&m->connections_current), 2);
	assert_int_equal(obs_counter_get(&m->connections_total), 3);
	assert_int_equal(obs_counter_get(&m->connections_refused[OBS_REFUSE_SHUTDOWN]), 2);
	assert_int_equal(obs_counter_get(&m->replies[OBS_REPLY_2XX]), 2);
	assert_int_equal(obs_counter_get(&m->bytes_accepted), 10000);
	assert_int_equal(obs_counter_get(&m->sync_gap.bucket[0]), 2);
	assert_int_equal(obs_counter_get(&m->sync_gap.bucket[1]), 1);
	assert_int_equal(obs_counter_get(&m->sync_gap.bucket[OBS_METRICS_LAT_BUCKETS]), 1);
	assert_int_equal(obs_counter_get(&m->flush_errors), 1);
	assert_int_equal(obs_counter_get(&m->messages_per_flush.bucket[0]), 1);
	assert_int_equal(obs_counter_get(&m->messages_per_flush.bucket[2]), 1); /* 3 <= 4 */
	assert_int_equal(obs_counter_get(&m->messages_per_flush.bucket[OBS_METRICS_BATCH_BUCKETS]), 1);
	free(m);
}

static void test_render(void **state)
{
	struct obs_metrics *w[NW] = {alloc_metrics(), NULL, alloc_metrics()};
	fill(w[0]);
	fill(w[2]);
	obs_metrics_conn_open(w[2]);
	size_t cap = obs_metrics_render_bound(NW);
	char *buf = malloc(cap);
	assert_non_null(buf);
	size_t len = obs_metrics_render((const struct obs_metrics *const *)w, NW, buf, cap);
	assert_true(len > 0 && len < cap);
	assert_int_equal(strlen(buf), len);
	assert_int_equal(buf[len - 1], '\n');

	assert_int_equal(sample(buf, "dotspool_connections_current{worker=\"0\"}"), 2);
	assert_int_equal(sample(buf, "dotspool_connections_current{worker=\"2\"}"), 3);
	assert_int_equal(sample(buf, "dotspool_connections_current{worker=\"1\"}"), -1); /* NULL worker */
	assert_int_equal(sample(buf, "dotspool_server_connections_current"), 5);
	assert_int_equal(sample(buf, "dotspool_connections_refused_total{worker=\"0\",reason=\"shutdown\"}"),
			 2);
	assert_int_equal(
		sample(buf, "dotspool_connections_refused_total{worker=\"0\",reason=\"limit_total\"}"), 0);
	assert_int_equal(sample(buf, "dotspool_replies_total{worker=\"2\",class=\"4xx\"}"), 1);
	assert_int_equal(sample(buf, "dotspool_tls_handshakes_total{worker=\"0\",result=\"failed\"}"), 1);
	assert_int_equal(sample(buf, "dotspool_spool_free_bytes{worker=\"2\"}"), 67890);
	assert_int_equal(sample(buf, "dotspool_sync_gap_seconds_bucket{worker=\"0\",le=\"0.000025\"}"), 2);
	assert_int_equal(sample(buf, "dotspool_sync_gap_seconds_bucket{worker=\"0\",le=\"0.00005\"}"), 3);
	assert_int_equal(sample(buf, "dotspool_sync_gap_seconds_bucket{worker=\"0\",le=\"1\"}"), 3);
	assert_int_equal(sample(buf, "dotspool_sync_gap_seconds_bucket{worker=\"0\",le=\"+Inf\"}"), 4);
	assert_int_equal(sample(buf, "dotspool_sync_gap_seconds_count{worker=\"0\"}"), 4);
	assert_non_null(strstr(buf, "\ndotspool_sync_gap_seconds_sum{worker=\"0\"} 2.000061\n"));
	assert_int_equal(sample(buf, "dotspool_server_sync_gap_seconds_bucket{le=\"+Inf\"}"), 8);
	assert_non_null(strstr(buf, "\ndotspool_server_sync_gap_seconds_sum 4.000122\n"));
	assert_int_equal(sample(buf, "dotspool_messages_per_flush_bucket{worker=\"2\",le=\"4\"}"), 2);
	assert_int_equal(sample(buf, "dotspool_messages_per_flush_sum{worker=\"2\"}"), 1004);
	assert_int_equal(sample(buf, "dotspool_flush_duration_seconds_count{worker=\"2\"}"), 3);
	assert_non_null(strstr(buf, "# TYPE dotspool_sync_gap_seconds histogram\n"));
	assert_non_null(strstr(buf, "# HELP dotspool_messages_accepted_total "));

	/* snprintf-like truncation: same length reported, NUL-terminated prefix. */
	char small[100];
	size_t len2 = obs_metrics_render((const struct obs_metrics *const *)w, NW, small, sizeof(small));
	assert_int_equal(len2, len);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_memory_equal(small, buf, sizeof(small) - 1);
	assert_int_equal(obs_metrics_render((const struct obs_metrics *const *)w, NW, NULL, 0), len);
	free(buf);
	free(w[0]);
	free(w[2]);
}

/* The bound holds with every counter at its widest value and the most workers. */
static void test_render_bound(void **state)
{
	enum { MAXW = 64 };
	struct obs_metrics *w[MAXW];
	for (unsigned i = 0; i < MAXW; i++) {
		w[i] = alloc_metrics();
		memset(w[i], 0xff, sizeof(*w[i]));
	}
	size_t cap = obs_metrics_render_bound(MAXW);
	size_t len = obs_metrics_render((const struct obs_metrics *const *)w, MAXW, NULL, 0);
	print_message("render of %u workers at UINT64_MAX: %zu bytes, bound %zu\n", MAXW, len, cap);
	assert_true(len < cap);
	assert_true(obs_metrics_render((const struct obs_metrics *const *)w, 1, NULL, 0) <
		    obs_metrics_render_bound(1));
	for (unsigned i = 0; i < MAXW; i++)
		free(w[i]);
}

struct http_case {
	const char *req;
	int want;
	const char *want_prefix;
};

static int http(const char *req, size_t len, char *out, size_t cap, size_t *out_len, struct obs_metrics **w,
		unsigned n)
{
	/* Exactly sized heap copy so ASan sees any overread. */
	uint8_t *copy = malloc(len ? len : 1);
	assert_non_null(copy);
	memcpy(copy, req, len);
	int r = obs_metrics_http(copy, len, (const struct obs_metrics *const *)w, n, out, cap, out_len);
	free(copy);
	return r;
}

static void test_http(void **state)
{
	struct obs_metrics *w[1] = {alloc_metrics()};
	fill(w[0]);
	size_t cap = obs_metrics_render_bound(1) + OBS_METRICS_HTTP_HEADER_MAX;
	char *out = malloc(cap);
	assert_non_null(out);
	size_t out_len;
	static const struct http_case cases[] = {
		{"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n", 200,
		 "HTTP/1.0 200 OK\r\n"},
		{"GET /metrics HTTP/1.0\r\n\r\n", 200, "HTTP/1.0 200 OK\r\n"},
		{"GET /metrics?name[]=x HTTP/1.1\n\n", 200, "HTTP/1.0 200 OK\r\n"},
		{"HEAD /metrics HTTP/1.1\r\n\r\n", 200, "HTTP/1.0 200 OK\r\n"},
		{"GET / HTTP/1.1\r\n\r\n", 404, "HTTP/1.0 404 Not Found\r\n"},
		{"GET /metricsx HTTP/1.1\r\n\r\n", 404, "HTTP/1.0 404 Not Found\r\n"},
		{"GET /metric HTTP/1.1\r\n\r\n", 404, "HTTP/1.0 404 Not Found\r\n"},
		{"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405,
		 "HTTP/1.0 405 Method Not Allowed\r\n"},
		{"DELETE /metrics HTTP/1.1\r\n\r\n", 405, "HTTP/1.0 405 Method Not Allowed\r\n"},
		{"GET /metrics HTTP/2.0\r\n\r\n", 400, "HTTP/1.0 400 Bad Request\r\n"},
		{"GET /metrics\r\n\r\n", 400, "HTTP/1.0 400 Bad Request\r\n"},
		{"GET  /metrics HTTP/1.1\r\n\r\n", 400, "HTTP/1.0 400 Bad Request\r\n"},
		{"get /metrics HTTP/1.1\r\n\r\n", 400, "HTTP/1.0 400 Bad Request\r\n"},
		{"\r\n\r\n", 400, "HTTP/1.0 400 Bad Request\r\n"},
		{"GET /metrics HTTP/1.1\r\nHost: x\r\n", 0, NULL},
		{"GET /metrics HTTP/1.1\r\n\r", 0, NULL},
		{"GET /metr", 0, NULL},
		{"", 0, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct http_case *c = &cases[i];
		int r = http(c->req, strlen(c->req), out, cap, &out_len, w, 1);
		if (r != c->want)
			fail_msg("case %zu (%s): got %d want %d", i, c->req, r, c->want);
		if (!c->want_prefix) {
			assert_int_equal(out_len, 0);
			continue;
		}
		assert_true(out_len > strlen(c->want_prefix));
		assert_memory_equal(out, c->want_prefix, strlen(c->want_prefix));
		/* Content-Length must match the body actually sent (HEAD: no body). */
		char *hend = memmem(out, out_len, "\r\n\r\n", 4);
		assert_non_null(hend);
		char *cl = strstr(out, "Content-Length: ");
		assert_true(cl && cl < hend);
		size_t body = out_len - (size_t)(hend + 4 - out);
		bool head = !strncmp(c->req, "HEAD", 4);
		unsigned long long clen = strtoull(cl + 16, NULL, 10);
		if (head) {
			/* HEAD: the length of the body a GET would get, and no body. */
			assert_int_equal(body, 0);
			assert_true(clen > 1000);
		} else {
			assert_int_equal(clen, body);
		}
		if (c->want == 200) {
			assert_non_null(strstr(out, "Content-Type: text/plain; version=0.0.4"));
			assert_non_null(memmem(out, out_len, "Connection: close\r\n", 19));
			if (!head)
				assert_non_null(
					strstr(hend, "\ndotspool_connections_total{worker=\"0\"} 3\n"));
		}
		if (c->want == 405)
			assert_non_null(strstr(out, "Allow: GET, HEAD\r\n"));
	}

	/* Oversized header block: need-more until the bound, then 400. */
	size_t big = OBS_METRICS_HTTP_REQUEST_MAX + 10;
	char *req = malloc(big);
	assert_non_null(req);
	memcpy(req, "GET /metrics HTTP/1.1\r\nX: ", 26);
	memset(req + 26, 'a', big - 26);
	assert_int_equal(http(req, OBS_METRICS_HTTP_REQUEST_MAX - 1, out, cap, &out_len, w, 1), 0);
	assert_int_equal(http(req, OBS_METRICS_HTTP_REQUEST_MAX, out, cap, &out_len, w, 1), 400);
	assert_int_equal(http(req, big, out, cap, &out_len, w, 1), 400);
	/* The end of headers beyond the bound does not count. */
	memcpy(req + big - 4, "\r\n\r\n", 4);
	assert_int_equal(http(req, big, out, cap, &out_len, w, 1), 400);
	free(req);

	/* Every prefix of a good request is need-more, never a wrong verdict. */
	const char *good = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	for (size_t n = 0; n < strlen(good); n++)
		assert_int_equal(http(good, n, out, cap, &out_len, w, 1), 0);

	/* Output buffer too small. */
	assert_int_equal(http(good, strlen(good), out, 300, &out_len, w, 1), -ENOSPC);
	assert_int_equal(http(good, strlen(good), out, 100, &out_len, w, 1), -ENOSPC);
	free(out);
	free(w[0]);
}

/* One writer thread, one reader rendering: +Inf == _count and counts never go backwards. */
static atomic_bool writer_stop;

static void *writer(void *arg)
{
	struct obs_metrics *m = arg;
	uint64_t i = 0;
	while (!atomic_load(&writer_stop)) {
		obs_metrics_message_accepted(m, 100, i % 3000);
		obs_metrics_flush_done(m, i % 500, i % 20, true);
		i++;
	}
	return NULL;
}

static void test_concurrent_render(void **state)
{
	struct obs_metrics *w[1] = {alloc_metrics()};
	pthread_t t;
	atomic_store(&writer_stop, false);
	assert_int_equal(pthread_create(&t, NULL, writer, w[0]), 0);
	size_t cap = obs_metrics_render_bound(1);
	char *buf = malloc(cap);
	assert_non_null(buf);
	long long last = 0;
	for (int k = 0; k < 2000; k++) {
		obs_metrics_render((const struct obs_metrics *const *)w, 1, buf, cap);
		long long inf = sample(buf, "dotspool_sync_gap_seconds_bucket{worker=\"0\",le=\"+Inf\"}");
		long long cnt = sample(buf, "dotspool_sync_gap_seconds_count{worker=\"0\"}");
		assert_int_equal(inf, cnt);
		assert_true(cnt >= last);
		last = cnt;
	}
	atomic_store(&writer_stop, true);
	pthread_join(t, NULL);
	assert_true(last > 0);
	free(buf);
	free(w[0]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counters),	  cmocka_unit_test(test_render),
		cmocka_unit_test(test_render_bound),	  cmocka_unit_test(test_http),
		cmocka_unit_test(test_concurrent_render),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
