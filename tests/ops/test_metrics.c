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
#include <time.h>

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

static void set_test_hops(void);

/* One writer thread, one reader rendering: +Inf == _count and counts never go backwards. */
static atomic_bool writer_stop;

static void *writer(void *arg)
{
	struct obs_metrics *m = arg;
	uint64_t i = 0;
	while (!atomic_load(&writer_stop)) {
		obs_metrics_message_accepted(m, 100, i % 3000);
		obs_metrics_flush_done(m, i % 500, i % 20, true);
		obs_metrics_dlv_latency(m, (i * 7919) % 200000000000ull);
		obs_metrics_dlv_outcome(m, i % 3, 1 + i % 3, 1);
		i++;
	}
	return NULL;
}

static void test_concurrent_render(void **state)
{
	struct obs_metrics *w[1] = {alloc_metrics()};
	pthread_t t;
	set_test_hops();
	atomic_store(&writer_stop, false);
	assert_int_equal(pthread_create(&t, NULL, writer, w[0]), 0);
	size_t cap = obs_metrics_render_bound(1);
	char *buf = malloc(cap);
	assert_non_null(buf);
	long long last = 0, dlast = 0;
	for (int k = 0; k < 2000; k++) {
		obs_metrics_render((const struct obs_metrics *const *)w, 1, buf, cap);
		long long inf = sample(buf, "dotspool_sync_gap_seconds_bucket{worker=\"0\",le=\"+Inf\"}");
		long long cnt = sample(buf, "dotspool_sync_gap_seconds_count{worker=\"0\"}");
		assert_int_equal(inf, cnt);
		assert_true(cnt >= last);
		last = cnt;
		long long dinf = sample(buf, "dotspool_delivery_latency_seconds_bucket{le=\"+Inf\"}");
		long long dcnt = sample(buf, "dotspool_delivery_latency_seconds_count");
		assert_int_equal(dinf, dcnt);
		assert_true(dcnt >= dlast);
		dlast = dcnt;
	}
	obs_metrics_set_hops(NULL, 0);
	atomic_store(&writer_stop, true);
	pthread_join(t, NULL);
	assert_true(last > 0);
	free(buf);
	free(w[0]);
}

/* ---- the delivery stage (issue 14) ---- */

#define NOW_US 1800000000000000LL /* a fixed wall clock for render_at */

static char long_hop[6 + 300 + 1];
static const char *hop_names[3];
static char want_label[3][600];

/* Three hops: plain, one needing every escape, one over OBS_METRICS_HOP_NAME_MAX. */
static void set_test_hops(void)
{
	memcpy(long_hop, "pipe:/", 6);
	memset(long_hop + 6, 'x', 300);
	long_hop[306] = 0;
	hop_names[0] = "smtp://[::1]:2525";
	hop_names[1] = "lmtp:/run/a\"b\\c\n\xc3\xa9";
	hop_names[2] = long_hop;
	obs_metrics_set_hops(hop_names, 3);
	strcpy(want_label[0], "smtp://[::1]:2525");
	strcpy(want_label[1], "lmtp:/run/a\\\"b\\\\c\\n??");
	snprintf(want_label[2], sizeof(want_label[2]), "%.*s...#2", OBS_METRICS_HOP_NAME_MAX, long_hop);
}

static void fill_dlv_a(struct obs_metrics *m)
{
	const uint64_t msgs[3] = {5, 2, 1}, bytes[3] = {5000, 2000, 100};
	obs_metrics_dlv_queue(m, msgs, bytes, 9, NOW_US - 90 * 1000000LL);
	obs_metrics_dlv_outcome(m, 0, OBS_DLV_DELIVERED, 3);
	obs_metrics_dlv_outcome(m, 0, OBS_DLV_DEFERRED, 1);
	obs_metrics_dlv_outcome(m, 1, OBS_DLV_FAILED, 2);
	obs_metrics_dlv_attempt(m, 0);
	obs_metrics_dlv_attempt(m, 0);
	obs_metrics_dlv_latency(m, 500);
	obs_metrics_dlv_latency(m, 1000); /* le is inclusive: still the 1 ms bucket */
	obs_metrics_dlv_latency(m, 1001);
	obs_metrics_dlv_redelivery(m, 2);
	obs_metrics_dlv_possible_duplicate(m, 1);
	obs_metrics_dlv_dsn(m);
	obs_metrics_dlv_record(m, true);
	obs_metrics_dlv_record(m, true);
	obs_metrics_dlv_record(m, true);
	obs_metrics_dlv_record(m, false);
	obs_metrics_dlv_conn_open(m, 0);
	obs_metrics_dlv_conn_open(m, 0);
	obs_metrics_dlv_conn_close(m, 0);
	obs_metrics_dlv_conn_failed(m, 1);
	obs_metrics_dlv_conn_failed(m, 1);
	obs_metrics_dlv_conn_failed(m, 1);
	obs_metrics_dlv_hop_up(m, 1, false);
}

static void fill_dlv_b(struct obs_metrics *m)
{
	const uint64_t msgs[3] = {1, 0, 3}, bytes[3] = {10, 0, 30};
	obs_metrics_dlv_queue(m, msgs, bytes, 4, NOW_US - 120500000LL);
	obs_metrics_dlv_outcome(m, 0, OBS_DLV_DELIVERED, 4);
	obs_metrics_dlv_outcome(m, 2, OBS_DLV_DEFERRED, 5);
	obs_metrics_dlv_attempt(m, 0);
	obs_metrics_dlv_attempt(m, 2);
	obs_metrics_dlv_latency(m, 3600000000ull);   /* exactly the 3600 s bound */
	obs_metrics_dlv_latency(m, 100000000000ull); /* beyond a day: +Inf */
	obs_metrics_dlv_latency(m, 0);
	obs_metrics_dlv_redelivery(m, 1);
	obs_metrics_dlv_dsn(m);
	obs_metrics_dlv_dsn(m);
	obs_metrics_dlv_record(m, true);
	obs_metrics_dlv_record(m, true);
	obs_metrics_dlv_conn_open(m, 0);
	obs_metrics_dlv_hop_up(m, 1, true);
	obs_metrics_dlv_hop_up(m, 2, false);
	obs_metrics_dlv_hop_up(m, 2, true);
}

/* Value of name{hop="<label of h>"<more>}. */
static long long hop_sample(const char *text, const char *name, unsigned h, const char *more)
{
	char series[1024];
	snprintf(series, sizeof(series), "%s{hop=\"%s\"%s}", name, want_label[h], more);
	return sample(text, series);
}

/*
 * The delivery latency histogram as rendered: the le bounds in order
 * ending in +Inf, cumulative, +Inf == _count; returns the non-cumulative
 * counts in got[] (OBS_METRICS_DLV_LAT_BUCKETS + 1).
 */
static void check_dlv_hist(const char *text, uint64_t *got)
{
	const char *p = text;
	uint64_t prev = 0;
	for (unsigned b = 0; b <= OBS_METRICS_DLV_LAT_BUCKETS; b++) {
		p = strstr(p, "\ndotspool_delivery_latency_seconds_bucket{le=\"");
		assert_non_null(p);
		p += strlen("\ndotspool_delivery_latency_seconds_bucket{le=\"");
		if (b == OBS_METRICS_DLV_LAT_BUCKETS) {
			assert_int_equal(strncmp(p, "+Inf\"} ", 7), 0);
		} else {
			/* The label is the bound in seconds. */
			double le = strtod(p, NULL);
			double want = (double)obs_metrics_dlv_lat_bounds_us[b] / 1e6;
			assert_true(le > want * 0.999999 && le < want * 1.000001);
		}
		uint64_t cum = strtoull(strstr(p, "} ") + 2, NULL, 10);
		assert_true(cum >= prev);
		got[b] = cum - prev;
		prev = cum;
	}
	assert_int_equal(sample(text, "dotspool_delivery_latency_seconds_count"), (long long)prev);
}

static void test_dlv_counters(void **state)
{
	struct obs_metrics *m = alloc_metrics();
	assert_int_equal((int64_t)obs_counter_get(&m->dlv.queue_oldest_us), INT64_MAX); /* empty */
	fill_dlv_a(m);
	assert_int_equal(obs_counter_get(&m->dlv.queue_messages[OBS_QUEUE_DEFERRED]), 2);
	assert_int_equal(obs_counter_get(&m->dlv.queue_bytes[OBS_QUEUE_NEW]), 5000);
	assert_int_equal(obs_counter_get(&m->dlv.hop[0].outcomes[OBS_DLV_DELIVERED - 1]), 3);
	assert_int_equal(obs_counter_get(&m->dlv.hop[1].outcomes[OBS_DLV_FAILED - 1]), 2);
	assert_int_equal(obs_counter_get(&m->dlv.hop[0].conns_current), 1);
	assert_int_equal(obs_counter_get(&m->dlv.hop[0].conns_total), 2);
	assert_int_equal(obs_counter_get(&m->dlv.hop[1].down), 1);
	assert_int_equal(obs_counter_get(&m->dlv.latency.bucket[0]), 2);
	assert_int_equal(obs_counter_get(&m->dlv.latency.bucket[1]), 1);
	assert_int_equal(obs_counter_get(&m->dlv.latency.sum_us), 2501);
	assert_int_equal(obs_counter_get(&m->dlv.record_errors), 1);
	/* The writer's queue update replaces, it does not add. */
	const uint64_t zero[3] = {0, 0, 0};
	obs_metrics_dlv_queue(m, zero, zero, 0, INT64_MAX);
	assert_int_equal(obs_counter_get(&m->dlv.queue_messages[OBS_QUEUE_NEW]), 0);
	assert_int_equal((int64_t)obs_counter_get(&m->dlv.queue_oldest_us), INT64_MAX);
	/* Each worker's struct starts on its own cache line. */
	assert_int_equal(_Alignof(struct obs_metrics), 64);
	assert_int_equal(sizeof(struct obs_metrics) % 64, 0);
	free(m);
}

static void test_dlv_render(void **state)
{
	set_test_hops();
	struct obs_metrics *w[NW] = {alloc_metrics(), NULL, alloc_metrics()};
	fill(w[0]);
	fill(w[2]);
	fill_dlv_a(w[0]);
	fill_dlv_b(w[2]);
	size_t cap = obs_metrics_render_bound(NW);
	char *buf = malloc(cap);
	assert_non_null(buf);
	size_t len = obs_metrics_render_at((const struct obs_metrics *const *)w, NW, buf, cap, NOW_US);
	assert_true(len > 0 && len < cap);
	assert_int_equal(strlen(buf), len);

	/* Queue: sums over the two workers; the age is the older one's, at render time. */
	assert_int_equal(sample(buf, "dotspool_queue_messages{state=\"new\"}"), 6);
	assert_int_equal(sample(buf, "dotspool_queue_messages{state=\"deferred\"}"), 2);
	assert_int_equal(sample(buf, "dotspool_queue_messages{state=\"active\"}"), 4);
	assert_int_equal(sample(buf, "dotspool_queue_bytes{state=\"new\"}"), 5010);
	assert_int_equal(sample(buf, "dotspool_queue_bytes{state=\"deferred\"}"), 2000);
	assert_int_equal(sample(buf, "dotspool_queue_bytes{state=\"active\"}"), 130);
	assert_int_equal(sample(buf, "dotspool_queue_recipients_open"), 13);
	assert_non_null(strstr(buf, "\ndotspool_queue_oldest_message_age_seconds 120.500000\n"));

	/* Per hop, summed over workers; hop labels escaped and cut as promised. */
	assert_int_equal(hop_sample(buf, "dotspool_deliveries_total", 0, ",outcome=\"delivered\""), 7);
	assert_int_equal(hop_sample(buf, "dotspool_deliveries_total", 0, ",outcome=\"deferred\""), 1);
	assert_int_equal(hop_sample(buf, "dotspool_deliveries_total", 0, ",outcome=\"failed\""), 0);
	assert_int_equal(hop_sample(buf, "dotspool_deliveries_total", 1, ",outcome=\"failed\""), 2);
	assert_int_equal(hop_sample(buf, "dotspool_deliveries_total", 1, ",outcome=\"delivered\""), 0);
	assert_int_equal(hop_sample(buf, "dotspool_deliveries_total", 2, ",outcome=\"deferred\""), 5);
	assert_int_equal(hop_sample(buf, "dotspool_delivery_attempts_total", 0, ""), 3);
	assert_int_equal(hop_sample(buf, "dotspool_delivery_attempts_total", 1, ""), 0);
	assert_int_equal(hop_sample(buf, "dotspool_delivery_attempts_total", 2, ""), 1);
	assert_int_equal(hop_sample(buf, "dotspool_deliver_connections", 0, ""), 2);
	assert_int_equal(hop_sample(buf, "dotspool_deliver_connections_total", 0, ""), 3);
	assert_int_equal(hop_sample(buf, "dotspool_deliver_connect_failures_total", 1, ""), 3);
	assert_int_equal(hop_sample(buf, "dotspool_deliver_connect_failures_total", 0, ""), 0);
	assert_int_equal(hop_sample(buf, "dotspool_deliver_hop_up", 0, ""), 1); /* nobody said down */
	assert_int_equal(hop_sample(buf, "dotspool_deliver_hop_up", 1, ""), 0); /* one worker says down */
	assert_int_equal(hop_sample(buf, "dotspool_deliver_hop_up", 2, ""), 1); /* down, then up again */
	assert_null(strstr(buf, "hop=\"lmtp:/run/a\"b")); /* never a raw quote inside a label */
	assert_null(strstr(buf, "\xc3"));
	/* No series for hops not registered. */
	assert_null(strstr(buf, "...#3"));
	char line4[64];
	snprintf(line4, sizeof(line4), "\ndotspool_deliver_hop_up{");
	unsigned hops_seen = 0;
	for (const char *p = buf; (p = strstr(p, line4)) != NULL; p++)
		hops_seen++;
	assert_int_equal(hops_seen, 3);

	/* Latency histogram: the promised bounds, cumulative, +Inf == _count, sum in seconds. */
	uint64_t got[OBS_METRICS_DLV_LAT_BUCKETS + 1];
	check_dlv_hist(buf, got);
	uint64_t want[OBS_METRICS_DLV_LAT_BUCKETS + 1] = {0};
	want[0] = 3;  /* 500, 1000, 0 us */
	want[1] = 1;  /* 1001 us */
	want[16] = 1; /* 3600 s */
	want[OBS_METRICS_DLV_LAT_BUCKETS] = 1;
	assert_memory_equal(got, want, sizeof(want));
	assert_int_equal(obs_metrics_dlv_lat_bounds_us[16], 3600000000ull);
	assert_int_equal(sample(buf, "dotspool_delivery_latency_seconds_bucket{le=\"0.001\"}"), 3);
	assert_int_equal(sample(buf, "dotspool_delivery_latency_seconds_bucket{le=\"86400\"}"), 5);
	assert_int_equal(sample(buf, "dotspool_delivery_latency_seconds_bucket{le=\"+Inf\"}"), 6);
	assert_int_equal(sample(buf, "dotspool_delivery_latency_seconds_count"), 6);
	assert_non_null(strstr(buf, "\ndotspool_delivery_latency_seconds_sum 103600.002501\n"));

	assert_int_equal(sample(buf, "dotspool_redeliveries_total"), 3);
	assert_int_equal(sample(buf, "dotspool_delivery_possible_duplicates_total"), 1);
	assert_int_equal(sample(buf, "dotspool_dsn_total"), 3);
	assert_int_equal(sample(buf, "dotspool_outcome_records_total"), 5);
	assert_int_equal(sample(buf, "dotspool_outcome_record_errors_total"), 1);

	/* Every family has its HELP and TYPE. */
	static const char *const fams[][2] = {
		{"dotspool_queue_messages", "gauge"},
		{"dotspool_queue_bytes", "gauge"},
		{"dotspool_queue_recipients_open", "gauge"},
		{"dotspool_queue_oldest_message_age_seconds", "gauge"},
		{"dotspool_deliveries_total", "counter"},
		{"dotspool_delivery_attempts_total", "counter"},
		{"dotspool_delivery_latency_seconds", "histogram"},
		{"dotspool_redeliveries_total", "counter"},
		{"dotspool_delivery_possible_duplicates_total", "counter"},
		{"dotspool_deliver_connections", "gauge"},
		{"dotspool_deliver_connections_total", "counter"},
		{"dotspool_deliver_connect_failures_total", "counter"},
		{"dotspool_deliver_hop_up", "gauge"},
		{"dotspool_dsn_total", "counter"},
		{"dotspool_outcome_records_total", "counter"},
		{"dotspool_outcome_record_errors_total", "counter"},
	};
	for (size_t i = 0; i < sizeof(fams) / sizeof(fams[0]); i++) {
		char t[160];
		snprintf(t, sizeof(t), "\n# HELP %s ", fams[i][0]);
		if (!strstr(buf, t))
			fail_msg("no HELP for %s", fams[i][0]);
		snprintf(t, sizeof(t), "\n# TYPE %s %s\n", fams[i][0], fams[i][1]);
		if (!strstr(buf, t))
			fail_msg("no TYPE %s for %s", fams[i][1], fams[i][0]);
	}

	/* The age: 0 when every queue is empty or the clock went back; it grows between scrapes. */
	len = obs_metrics_render_at((const struct obs_metrics *const *)w, NW, buf, cap, NOW_US + 1000000);
	assert_non_null(strstr(buf, "\ndotspool_queue_oldest_message_age_seconds 121.500000\n"));
	len = obs_metrics_render_at((const struct obs_metrics *const *)w, NW, buf, cap, NOW_US - 200000000LL);
	assert_non_null(strstr(buf, "\ndotspool_queue_oldest_message_age_seconds 0.000000\n"));
	const uint64_t zero[3] = {0, 0, 0};
	obs_metrics_dlv_queue(w[0], zero, zero, 0, INT64_MAX);
	obs_metrics_dlv_queue(w[2], zero, zero, 0, INT64_MAX);
	len = obs_metrics_render_at((const struct obs_metrics *const *)w, NW, buf, cap, NOW_US);
	assert_non_null(strstr(buf, "\ndotspool_queue_oldest_message_age_seconds 0.000000\n"));
	assert_int_equal(sample(buf, "dotspool_queue_messages{state=\"new\"}"), 0);
	/* The real clock: a message received a minute ago is about a minute old. */
	const uint64_t one[3] = {1, 0, 0};
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	obs_metrics_dlv_queue(w[0], one, one, 1, (int64_t)ts.tv_sec * 1000000 - 60000000);
	obs_metrics_render((const struct obs_metrics *const *)w, NW, buf, cap);
	const char *age = strstr(buf, "\ndotspool_queue_oldest_message_age_seconds ");
	assert_non_null(age);
	double a = strtod(age + strlen("\ndotspool_queue_oldest_message_age_seconds "), NULL);
	assert_true(a >= 59.0 && a < 70.0);

	/* Without hops (no --deliver-to) there is no delivery family at all, as before issue 14. */
	obs_metrics_set_hops(NULL, 0);
	size_t len0 = obs_metrics_render_at((const struct obs_metrics *const *)w, NW, buf, cap, NOW_US);
	assert_true(len0 < len);
	assert_null(strstr(buf, "dotspool_queue_"));
	assert_null(strstr(buf, "deliver"));
	assert_null(strstr(buf, "dotspool_dsn_total"));
	assert_int_equal(obs_metrics_render_bound(NW), cap); /* the bound does not depend on the hops */
	free(buf);
	free(w[0]);
	free(w[2]);
}

/* The bound with every hop at its longest label, every counter at UINT64_MAX and many workers. */
static void test_dlv_render_bound(void **state)
{
	enum { MAXW = 64 };
	static char names[OBS_METRICS_HOPS_MAX][OBS_METRICS_HOP_NAME_MAX + 2];
	const char *pn[OBS_METRICS_HOPS_MAX];
	for (unsigned h = 0; h < OBS_METRICS_HOPS_MAX; h++) {
		/* All quotes: every byte escaped, and cut. */
		memset(names[h], '"', sizeof(names[h]) - 1);
		names[h][sizeof(names[h]) - 1] = 0;
		pn[h] = names[h];
	}
	size_t before = obs_metrics_render_bound(MAXW);
	obs_metrics_set_hops(pn, OBS_METRICS_HOPS_MAX);
	/* A /metrics buffer sized before the hops were registered still fits. */
	assert_int_equal(obs_metrics_render_bound(MAXW), before);
	struct obs_metrics *w[MAXW];
	for (unsigned i = 0; i < MAXW; i++) {
		w[i] = alloc_metrics();
		memset(w[i], 0xff, sizeof(*w[i]));
	}
	size_t cap = obs_metrics_render_bound(MAXW);
	size_t len =
		obs_metrics_render_at((const struct obs_metrics *const *)w, MAXW, NULL, 0, INT64_MAX - 1);
	print_message("render of %u workers and %u hops at UINT64_MAX: %zu bytes, bound %zu\n", MAXW,
		      OBS_METRICS_HOPS_MAX, len, cap);
	assert_true(len < cap);
	for (unsigned n = 1; n <= 2; n++)
		assert_true(obs_metrics_render_at((const struct obs_metrics *const *)w, n, NULL, 0,
						  INT64_MIN) < obs_metrics_render_bound(n));
	/* Two names cut to the same 256 bytes stay two series. */
	char *buf = malloc(cap);
	assert_non_null(buf);
	obs_metrics_render_at((const struct obs_metrics *const *)w, 1, buf, cap, 0);
	char label[2 * OBS_METRICS_HOP_NAME_MAX + 32];
	char *p = label;
	for (unsigned k = 0; k < OBS_METRICS_HOP_NAME_MAX; k++)
		*p++ = '\\', *p++ = '"';
	strcpy(p, "...#7\"} ");
	assert_non_null(strstr(buf, label));
	strcpy(p, "...#0\"} ");
	assert_non_null(strstr(buf, label));
	obs_metrics_set_hops(NULL, 0);
	free(buf);
	for (unsigned i = 0; i < MAXW; i++)
		free(w[i]);
}

/*
 * test_ops_metrics body|http: the render of two workers with every
 * delivery series set and a NULL slot, for check_exposition.py --exe --dlv.
 */
static int dump(const char *what)
{
	set_test_hops();
	struct obs_metrics *w[NW] = {alloc_metrics(), NULL, alloc_metrics()};
	fill(w[0]);
	fill(w[2]);
	fill_dlv_a(w[0]);
	fill_dlv_b(w[2]);
	size_t cap = obs_metrics_render_bound(NW) + OBS_METRICS_HTTP_HEADER_MAX;
	char *buf = malloc(cap);
	assert_non_null(buf);
	size_t len;
	if (!strcmp(what, "http")) {
		static const char req[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
		if (obs_metrics_http((const uint8_t *)req, sizeof(req) - 1,
				     (const struct obs_metrics *const *)w, NW, buf, cap, &len) != 200)
			return 1;
	} else {
		len = obs_metrics_render((const struct obs_metrics *const *)w, NW, buf, cap);
		if (len >= cap)
			return 1;
	}
	fwrite(buf, 1, len, stdout);
	free(buf);
	free(w[0]);
	free(w[2]);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && (!strcmp(argv[1], "body") || !strcmp(argv[1], "http")))
		return dump(argv[1]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counters),	  cmocka_unit_test(test_render),
		cmocka_unit_test(test_render_bound),	  cmocka_unit_test(test_http),
		cmocka_unit_test(test_concurrent_render), cmocka_unit_test(test_dlv_counters),
		cmocka_unit_test(test_dlv_render),	  cmocka_unit_test(test_dlv_render_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
