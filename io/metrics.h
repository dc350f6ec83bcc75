/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_METRICS_H
#define DS_IO_METRICS_H

/*
 * Per-worker metrics with no lock and no read-modify-write on the hot path.
 *
 * Each worker owns one struct io_metrics and is the only thread that writes
 * it. A counter update is a relaxed load plus a relaxed store of the same
 * variable (a plain add on x86-64: no LOCK prefix, no fence); any other
 * thread reads with relaxed loads. Values read while the worker writes are
 * each exact but not a snapshot of the whole struct, which is what
 * Prometheus expects of independent counters. Histograms store per-bucket
 * (non-cumulative) counts and no separate count: the renderer derives the
 * cumulative buckets and _count from the same loads, so +Inf == _count
 * holds even while the worker keeps observing.
 *
 * The struct is cache-line aligned so two workers' metrics never share a
 * line (no false sharing between cores).
 */

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Latency buckets in microseconds (the last, +Inf, is implicit). */
#define IO_METRICS_LAT_BUCKETS 14
/* Messages-per-flush buckets (the last, +Inf, is implicit). */
#define IO_METRICS_BATCH_BUCKETS 10

/* Upper bound of an HTTP request for /metrics, headers included. */
#define IO_METRICS_HTTP_REQUEST_MAX 8192
/* Room for the HTTP status line and headers ahead of the body. */
#define IO_METRICS_HTTP_HEADER_MAX 256

enum io_refuse_reason {
	IO_REFUSE_LIMIT_TOTAL,	/* --max-connections reached */
	IO_REFUSE_LIMIT_PER_IP, /* --max-connections-per-ip reached */
	IO_REFUSE_SHUTDOWN,	/* accepted while stopping: 421 */
	IO_REFUSE_PROXY_ERROR,	/* bad or missing PROXY header */
	IO_REFUSE_COUNT,
};

enum io_reply_class {
	IO_REPLY_2XX,
	IO_REPLY_3XX,
	IO_REPLY_4XX,
	IO_REPLY_5XX,
	IO_REPLY_COUNT,
};

typedef _Atomic uint64_t io_counter_t;

struct io_metrics_lat_hist {
	io_counter_t bucket[IO_METRICS_LAT_BUCKETS + 1]; /* non-cumulative; last is +Inf */
	io_counter_t sum_us;
};

struct io_metrics_batch_hist {
	io_counter_t bucket[IO_METRICS_BATCH_BUCKETS + 1];
	io_counter_t sum;
};

struct io_metrics {
	_Alignas(64) io_counter_t connections_current; /* gauge */
	io_counter_t connections_total;
	io_counter_t connections_refused[IO_REFUSE_COUNT];
	io_counter_t messages_accepted;
	io_counter_t bytes_accepted;
	io_counter_t messages_rejected; /* end of data answered 4xx/5xx (size, spool error, ...) */
	io_counter_t replies[IO_REPLY_COUNT];
	io_counter_t tls_handshakes_ok;
	io_counter_t tls_handshakes_failed;
	io_counter_t flushes;
	io_counter_t flush_errors;
	io_counter_t spool_pad_bytes;  /* --spool-io direct: block padding written (set from the lane) */
	io_counter_t spool_bytes_used; /* gauge, set by the worker from its spool lane */
	io_counter_t spool_bytes_free; /* gauge */
	struct io_metrics_batch_hist messages_per_flush;
	struct io_metrics_lat_hist sync_gap;	   /* final dot received -> 250 sent (RFC 1047 gap) */
	struct io_metrics_lat_hist flush_duration; /* flush submitted -> completed */
};

/* Bucket upper bounds, exported for tests. */
extern const uint64_t io_metrics_lat_bounds_us[IO_METRICS_LAT_BUCKETS];
extern const uint64_t io_metrics_batch_bounds[IO_METRICS_BATCH_BUCKETS];

void io_metrics_init(struct io_metrics *m);

/* ---- writer side: only the owning worker thread calls these ---- */

static inline void io_counter_add(io_counter_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline void io_counter_set(io_counter_t *c, uint64_t v)
{
	atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t io_counter_get(const io_counter_t *c)
{
	return atomic_load_explicit((io_counter_t *)c, memory_order_relaxed);
}

static inline unsigned io_metrics_bucket_of(const uint64_t *bounds, unsigned n, uint64_t v)
{
	unsigned i = 0;
	while (i < n && v > bounds[i])
		i++;
	return i; /* n means +Inf */
}

static inline void io_metrics_lat_observe(struct io_metrics_lat_hist *h, uint64_t us)
{
	io_counter_add(&h->bucket[io_metrics_bucket_of(io_metrics_lat_bounds_us, IO_METRICS_LAT_BUCKETS, us)],
		       1);
	io_counter_add(&h->sum_us, us);
}

/* A connection was accepted and is being served. */
static inline void io_metrics_conn_open(struct io_metrics *m)
{
	io_counter_add(&m->connections_current, 1);
	io_counter_add(&m->connections_total, 1);
}

/* A connection counted by io_metrics_conn_open() was closed. */
static inline void io_metrics_conn_close(struct io_metrics *m)
{
	io_counter_add(&m->connections_current, (uint64_t)-1); /* wraps back: unsigned decrement */
}

/* A connection was refused (closed with or without a 421) before a session. */
static inline void io_metrics_conn_refused(struct io_metrics *m, enum io_refuse_reason r)
{
	if ((unsigned)r < IO_REFUSE_COUNT)
		io_counter_add(&m->connections_refused[r], 1);
}

/* One reply (a multi-line reply counts once, LMTP counts each recipient reply). */
static inline void io_metrics_reply(struct io_metrics *m, unsigned code)
{
	unsigned c = code / 100;
	if (c >= 2 && c <= 5)
		io_counter_add(&m->replies[c - 2], 1);
}

/* 250 sent for a message: size_bytes of body, gap_us from the final dot to the 250. */
static inline void io_metrics_message_accepted(struct io_metrics *m, uint64_t size_bytes, uint64_t gap_us)
{
	io_counter_add(&m->messages_accepted, 1);
	io_counter_add(&m->bytes_accepted, size_bytes);
	io_metrics_lat_observe(&m->sync_gap, gap_us);
}

/* The end of data was answered 4xx/5xx. */
static inline void io_metrics_message_rejected(struct io_metrics *m)
{
	io_counter_add(&m->messages_rejected, 1);
}

static inline void io_metrics_tls_handshake(struct io_metrics *m, bool ok)
{
	io_counter_add(ok ? &m->tls_handshakes_ok : &m->tls_handshakes_failed, 1);
}

/* A group-commit flush completed (ok or not) covering `messages` commits, after duration_us. */
static inline void io_metrics_flush_done(struct io_metrics *m, uint64_t duration_us, uint64_t messages,
					 bool ok)
{
	io_counter_add(&m->flushes, 1);
	if (!ok)
		io_counter_add(&m->flush_errors, 1);
	io_metrics_lat_observe(&m->flush_duration, duration_us);
	io_counter_add(&m->messages_per_flush.bucket[io_metrics_bucket_of(
			       io_metrics_batch_bounds, IO_METRICS_BATCH_BUCKETS, messages)],
		       1);
	io_counter_add(&m->messages_per_flush.sum, messages);
}

static inline void io_metrics_spool_bytes(struct io_metrics *m, uint64_t used_bytes, uint64_t free_bytes)
{
	io_counter_set(&m->spool_bytes_used, used_bytes);
	io_counter_set(&m->spool_bytes_free, free_bytes);
}

/* ---- reader side: any thread ---- */

/*
 * Prometheus text exposition format 0.0.4 for n workers (NULL entries are
 * skipped). Returns the length of the full text, like snprintf: if it is
 * >= cap the output was truncated (still NUL-terminated when cap > 0).
 */
size_t io_metrics_render(const struct io_metrics *const *workers, unsigned n, char *buf, size_t cap);

/* A buffer of this size always holds io_metrics_render() of n workers (plus NUL). */
size_t io_metrics_render_bound(unsigned n);

/*
 * One HTTP/1.x request for the metrics endpoint, req[0..len) being all
 * bytes received so far on the connection. Returns:
 *   0            need more bytes (headers not complete, len < IO_METRICS_HTTP_REQUEST_MAX)
 *   200          GET or HEAD /metrics: a full response is in out[0..*out_len)
 *   400/404/405  error response in out[0..*out_len) (400 also for an oversized request)
 *   -ENOSPC      cap too small (use io_metrics_render_bound(n) + IO_METRICS_HTTP_HEADER_MAX)
 * Every response is HTTP/1.0 with Connection: close: the caller sends
 * out[0..*out_len) and closes.
 */
int io_metrics_http(const uint8_t *req, size_t len, const struct io_metrics *const *workers, unsigned n,
		    char *out, size_t cap, size_t *out_len);

#endif
