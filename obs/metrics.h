/* SPDX-License-Identifier: MIT */
#ifndef DS_OBS_METRICS_H
#define DS_OBS_METRICS_H

/*
 * Per-worker metrics with no lock and no read-modify-write on the hot path.
 *
 * Each worker owns one struct obs_metrics and is the only thread that writes
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

#include "ds_assert.h"

/* Latency buckets in microseconds (the last, +Inf, is implicit). */
#define OBS_METRICS_LAT_BUCKETS 14
/* Messages-per-flush buckets (the last, +Inf, is implicit). */
#define OBS_METRICS_BATCH_BUCKETS 10
/* Delivery latency buckets, 1 ms .. 1 day (the last, +Inf, is implicit). */
#define OBS_METRICS_DLV_LAT_BUCKETS 19

/* Next hops (--deliver-to) with their own series; same limit as IO_DELIVER_HOPS_MAX. */
#define OBS_METRICS_HOPS_MAX 8
/*
 * Raw bytes of a hop's label value (its URL); a longer one is cut and ends
 * in "...#<index>" so two cut names stay distinct series.
 */
#define OBS_METRICS_HOP_NAME_MAX 256

/* Index of the queue gauges' arrays: the lines of deliver/dlv_queue.h (enum dlv_qline). */
enum obs_queue_state {
	OBS_QUEUE_NEW,	    /* state="new" */
	OBS_QUEUE_DEFERRED, /* state="deferred" */
	OBS_QUEUE_ACTIVE,   /* state="active": an attempt is under way */
	OBS_QUEUE_STATE_COUNT,
};

/* Outcome of a recipient; the values of enum dlv_class (deliver/dlv_client.h). */
enum obs_dlv_outcome {
	OBS_DLV_DELIVERED = 1,
	OBS_DLV_DEFERRED = 2,
	OBS_DLV_FAILED = 3,
};

/* Operator actions with their own series (hold, release, delete, bounce, retry: spool.h's 1..5). */
#define OBS_OPERATOR_ACTIONS 5

/* Upper bound of an HTTP request for /metrics, headers included. */
#define OBS_METRICS_HTTP_REQUEST_MAX 8192
/* Room for the HTTP status line and headers ahead of the body. */
#define OBS_METRICS_HTTP_HEADER_MAX 256

enum obs_refuse_reason {
	OBS_REFUSE_LIMIT_TOTAL,	 /* --max-connections reached */
	OBS_REFUSE_LIMIT_PER_IP, /* --max-connections-per-ip reached */
	OBS_REFUSE_SHUTDOWN,	 /* accepted while stopping: 421 */
	OBS_REFUSE_PROXY_ERROR,	 /* bad or missing PROXY header */
	OBS_REFUSE_COUNT,
};

/* Recipient verification by the next hop (issue 17): what answered RCPT. */
enum obs_verify_result {
	OBS_VERIFY_KNOWN,	   /* probe: 2xx */
	OBS_VERIFY_UNKNOWN,	   /* probe: 5xx */
	OBS_VERIFY_TEMPFAIL,	   /* probe: 4xx, failure, timeout, no free probe */
	OBS_VERIFY_CACHED_KNOWN,   /* positive cache */
	OBS_VERIFY_CACHED_UNKNOWN, /* negative cache */
	OBS_VERIFY_COUNT,
};

/* Ingress policy limits (issue 17): the limit a refusal names; the order of io/throttle.h's kinds first. */
enum obs_throttle_limit {
	OBS_THROTTLE_CONNECTION_RATE, /* --client-connection-rate-max: 421 4.7.0 at connect */
	OBS_THROTTLE_MESSAGE_RATE,    /* --client-message-rate-max: 450 4.7.1 at MAIL */
	OBS_THROTTLE_RECIPIENT_RATE,  /* --client-recipient-rate-max: 450 4.7.1 at RCPT */
	OBS_THROTTLE_UNKNOWN_MAX,     /* --session-unknown-recipients-max: 421 4.7.0 and close */
	OBS_THROTTLE_COUNT,
};

enum obs_reply_class {
	OBS_REPLY_2XX,
	OBS_REPLY_3XX,
	OBS_REPLY_4XX,
	OBS_REPLY_5XX,
	OBS_REPLY_COUNT,
};

typedef _Atomic uint64_t obs_counter_t;

struct obs_metrics_lat_hist {
	obs_counter_t bucket[OBS_METRICS_LAT_BUCKETS + 1]; /* non-cumulative; last is +Inf */
	obs_counter_t sum_us;
};

struct obs_metrics_batch_hist {
	obs_counter_t bucket[OBS_METRICS_BATCH_BUCKETS + 1];
	obs_counter_t sum;
};

struct obs_metrics_dlv_lat_hist {
	obs_counter_t bucket[OBS_METRICS_DLV_LAT_BUCKETS + 1]; /* non-cumulative; last is +Inf */
	obs_counter_t sum_us;
};

/* One next hop as one worker saw it. */
struct obs_metrics_hop {
	obs_counter_t outcomes[3];   /* recipients, by enum obs_dlv_outcome - 1 */
	obs_counter_t attempts;	     /* message attempts */
	obs_counter_t conns_current; /* gauge */
	obs_counter_t conns_total;
	obs_counter_t conn_failures;
	obs_counter_t down; /* gauge 0/1: this worker's view says down (0, up, until told) */
};

/* The delivery stage of one worker (issue 14). */
struct obs_metrics_dlv {
	obs_counter_t queue_messages[OBS_QUEUE_STATE_COUNT]; /* gauges */
	obs_counter_t queue_bytes[OBS_QUEUE_STATE_COUNT];    /* gauges */
	obs_counter_t queue_rcpts_open;			     /* gauge */
	obs_counter_t queue_oldest_us;	   /* int64 wall-clock received_at of the oldest; INT64_MAX none */
	obs_counter_t redeliveries;	   /* recipients */
	obs_counter_t possible_duplicates; /* recipients */
	obs_counter_t dsns;
	obs_counter_t records;
	obs_counter_t record_errors;
	struct obs_metrics_dlv_lat_hist latency;
	struct obs_metrics_hop hop[OBS_METRICS_HOPS_MAX];
	/* Operator commands (issue 15 point 4): held messages, actions recorded by enum spool_operator_action. */
	obs_counter_t queue_held; /* gauge */
	obs_counter_t operator_actions[OBS_OPERATOR_ACTIONS + 1];
};

/*
 * Per-message hand-off to a broker (amqp://, issue 18; io/dlv_handoff.h):
 * one worker's hand-off thread as the worker saw it. result[] is indexed by
 * enum io_handoff_why (confirmed, nacked, returned, timeout, connection_lost,
 * no_connection, too_big, read_error).
 */
#define OBS_HANDOFF_RESULTS 8
struct obs_metrics_handoff {
	obs_counter_t results[OBS_HANDOFF_RESULTS];
	obs_counter_t unconfirmed;	/* gauge: published, not yet confirmed */
	obs_counter_t connected;	/* gauge 0/1 */
	obs_counter_t connection_losses;
	struct obs_metrics_dlv_lat_hist accepted_to_confirm; /* received_at -> broker confirm */
	struct obs_metrics_dlv_lat_hist publish_to_confirm;  /* publish -> broker confirm */
};

struct obs_metrics {
	_Alignas(64) obs_counter_t connections_current; /* gauge */
	obs_counter_t connections_total;
	obs_counter_t connections_refused[OBS_REFUSE_COUNT];
	obs_counter_t messages_accepted;
	obs_counter_t bytes_accepted;
	obs_counter_t messages_rejected; /* end of data answered 4xx/5xx (size, spool error, ...) */
	obs_counter_t replies[OBS_REPLY_COUNT];
	obs_counter_t tls_handshakes_ok;
	obs_counter_t tls_handshakes_failed;
	obs_counter_t flushes;
	obs_counter_t flush_errors;
	obs_counter_t spool_pad_bytes; /* --spool-io direct: block padding written (set from the lane) */
	/* Segments the lane's spare prepared from a free file (recycled) and from a new, zero-filled file. */
	obs_counter_t spool_segments_recycled, spool_segments_fresh;
	obs_counter_t spool_segments_spare; /* gauge: prepared segments ready (--segment-spares) */
	obs_counter_t spool_bytes_used; /* gauge, set by the worker from its spool lane */
	obs_counter_t spool_bytes_free; /* gauge */
	struct obs_metrics_batch_hist messages_per_flush;
	struct obs_metrics_lat_hist sync_gap;	    /* final dot received -> 250 sent (RFC 1047 gap) */
	struct obs_metrics_lat_hist flush_duration; /* flush submitted -> completed */
	obs_counter_t throttled[OBS_THROTTLE_COUNT]; /* refusals by the limit that made them */
	obs_counter_t recipients_unknown;	      /* RCPT answered 550 5.1.1 (or 421 past the limit) */
	obs_counter_t verify[OBS_VERIFY_COUNT];	      /* recipient verification answers */
	struct obs_metrics_dlv dlv;
	/* Gap dedup (issue 16). The set's gauges are server-wide: worker 0 sets them, the others stay 0. */
	obs_counter_t gap_at_risk_total;    /* messages marked at risk */
	obs_counter_t gap_suppressed_total; /* retries answered "already queued", not stored */
	obs_counter_t gap_compare_miss;	    /* candidates (same envelope) whose bytes differed */
	obs_counter_t gap_record_errors;    /* gap records that could not be made durable */
	obs_counter_t gap_set_entries;	    /* gauge */
	obs_counter_t gap_set_at_risk;	    /* gauge */
	obs_counter_t gap_set_full;	    /* inserts the set refused, full (its own count) */
	struct obs_metrics_handoff handoff;
};

/* Bucket upper bounds, exported for tests. */
extern const uint64_t obs_metrics_lat_bounds_us[OBS_METRICS_LAT_BUCKETS];
extern const uint64_t obs_metrics_batch_bounds[OBS_METRICS_BATCH_BUCKETS];
extern const uint64_t obs_metrics_dlv_lat_bounds_us[OBS_METRICS_DLV_LAT_BUCKETS];

void obs_metrics_init(struct obs_metrics *m);

/*
 * The next hops' label values, names[i] for hop index i (the --deliver-to
 * URLs as given; n <= OBS_METRICS_HOPS_MAX). A process-wide table: call it
 * once at start-up before any worker or renderer runs; read-only after.
 * n == 0 (the default) means no delivery stage: the render then has no
 * delivery families at all, as before issue 14. Bytes outside printable
 * ASCII are shown as '?', backslash, quote and newline are escaped per the
 * exposition format.
 */
void obs_metrics_set_hops(const char *const *names, unsigned n);

/* ---- writer side: only the owning worker thread calls these ---- */

static inline void obs_counter_add(obs_counter_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline void obs_counter_set(obs_counter_t *c, uint64_t v)
{
	atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t obs_counter_get(const obs_counter_t *c)
{
	return atomic_load_explicit((obs_counter_t *)c, memory_order_relaxed);
}

static inline unsigned obs_metrics_bucket_of(const uint64_t *bounds, unsigned n, uint64_t v)
{
	unsigned i = 0;
	while (i < n && v > bounds[i])
		i++;
	return i; /* n means +Inf */
}

static inline void obs_metrics_lat_observe(struct obs_metrics_lat_hist *h, uint64_t us)
{
	obs_counter_add(
		&h->bucket[obs_metrics_bucket_of(obs_metrics_lat_bounds_us, OBS_METRICS_LAT_BUCKETS, us)], 1);
	obs_counter_add(&h->sum_us, us);
}

/* A connection was accepted and is being served. */
static inline void obs_metrics_conn_open(struct obs_metrics *m)
{
	obs_counter_add(&m->connections_current, 1);
	obs_counter_add(&m->connections_total, 1);
}

/* A connection counted by obs_metrics_conn_open() was closed. */
static inline void obs_metrics_conn_close(struct obs_metrics *m)
{
	obs_counter_add(&m->connections_current, (uint64_t)-1); /* wraps back: unsigned decrement */
}

/* A connection was refused (closed with or without a 421) before a session. */
static inline void obs_metrics_conn_refused(struct obs_metrics *m, enum obs_refuse_reason r)
{
	if ((unsigned)r < OBS_REFUSE_COUNT)
		obs_counter_add(&m->connections_refused[r], 1);
}

/* A client went over one of the ingress policy's limits. */
static inline void obs_metrics_throttled(struct obs_metrics *m, enum obs_throttle_limit l)
{
	if ((unsigned)l < OBS_THROTTLE_COUNT)
		obs_counter_add(&m->throttled[l], 1);
}

/* A recipient verification answer (probe or cache). */
static inline void obs_metrics_verify(struct obs_metrics *m, enum obs_verify_result r)
{
	if ((unsigned)r < OBS_VERIFY_COUNT)
		obs_counter_add(&m->verify[r], 1);
}

/* A recipient the table (or the next hop) does not know. */
static inline void obs_metrics_recipient_unknown(struct obs_metrics *m)
{
	obs_counter_add(&m->recipients_unknown, 1);
}

/* One reply (a multi-line reply counts once, LMTP counts each recipient reply). */
static inline void obs_metrics_reply(struct obs_metrics *m, unsigned code)
{
	unsigned c = code / 100;
	if (c >= 2 && c <= 5)
		obs_counter_add(&m->replies[c - 2], 1);
}

/* 250 sent for a message: size_bytes of body, gap_us from the final dot to the 250. */
static inline void obs_metrics_message_accepted(struct obs_metrics *m, uint64_t size_bytes, uint64_t gap_us)
{
	obs_counter_add(&m->messages_accepted, 1);
	obs_counter_add(&m->bytes_accepted, size_bytes);
	obs_metrics_lat_observe(&m->sync_gap, gap_us);
}

/* The end of data was answered 4xx/5xx. */
static inline void obs_metrics_message_rejected(struct obs_metrics *m)
{
	obs_counter_add(&m->messages_rejected, 1);
}

static inline void obs_metrics_tls_handshake(struct obs_metrics *m, bool ok)
{
	obs_counter_add(ok ? &m->tls_handshakes_ok : &m->tls_handshakes_failed, 1);
}

/* A group-commit flush completed (ok or not) covering `messages` commits, after duration_us. */
static inline void obs_metrics_flush_done(struct obs_metrics *m, uint64_t duration_us, uint64_t messages,
					  bool ok)
{
	obs_counter_add(&m->flushes, 1);
	if (!ok)
		obs_counter_add(&m->flush_errors, 1);
	obs_metrics_lat_observe(&m->flush_duration, duration_us);
	obs_counter_add(&m->messages_per_flush.bucket[obs_metrics_bucket_of(
				obs_metrics_batch_bounds, OBS_METRICS_BATCH_BUCKETS, messages)],
			1);
	obs_counter_add(&m->messages_per_flush.sum, messages);
}

/* A flush (or a write the group depended on) failed: its segment was retired, its group got 451. */
static inline void obs_metrics_flush_failed(struct obs_metrics *m)
{
	obs_counter_add(&m->flushes, 1);
	obs_counter_add(&m->flush_errors, 1);
}

static inline void obs_metrics_spool_bytes(struct obs_metrics *m, uint64_t used_bytes, uint64_t free_bytes)
{
	obs_counter_set(&m->spool_bytes_used, used_bytes);
	obs_counter_set(&m->spool_bytes_free, free_bytes);
}

/* ---- writer side, the delivery stage (issue 14): the owning worker only ---- */

/*
 * The worker's queue now (dlv_queue_stats()): messages and bytes indexed by
 * enum obs_queue_state, recipients without a final outcome, and the
 * wall-clock received_at of the oldest message (INT64_MAX when empty); the
 * render computes its age at scrape time, so it keeps growing between
 * updates.
 */
static inline void obs_metrics_dlv_queue(struct obs_metrics *m, const uint64_t messages[3],
					 const uint64_t bytes[3], uint64_t rcpts_open,
					 int64_t oldest_received_at_us)
{
	for (unsigned i = 0; i < OBS_QUEUE_STATE_COUNT; i++) {
		obs_counter_set(&m->dlv.queue_messages[i], messages[i]);
		obs_counter_set(&m->dlv.queue_bytes[i], bytes[i]);
	}
	obs_counter_set(&m->dlv.queue_rcpts_open, rcpts_open);
	obs_counter_set(&m->dlv.queue_oldest_us, (uint64_t)oldest_received_at_us);
}

/* rcpts recipients reached outcome cls (enum obs_dlv_outcome == enum dlv_class) at hop. */
static inline void obs_metrics_dlv_outcome(struct obs_metrics *m, unsigned hop, unsigned cls, uint64_t rcpts)
{
	DS_ASSERT(hop < OBS_METRICS_HOPS_MAX && cls >= OBS_DLV_DELIVERED && cls <= OBS_DLV_FAILED);
	obs_counter_add(&m->dlv.hop[hop].outcomes[cls - 1], rcpts);
}

/* Messages on hold in this worker's queue now. */
static inline void obs_metrics_queue_held(struct obs_metrics *m, uint64_t held)
{
	obs_counter_set(&m->dlv.queue_held, held);
}

/* One operator action recorded on one message (action: 1 hold .. 5 retry). */
static inline void obs_metrics_operator_action(struct obs_metrics *m, unsigned action)
{
	if (action >= 1 && action <= OBS_OPERATOR_ACTIONS)
		obs_counter_add(&m->dlv.operator_actions[action], 1);
}

/* One attempt of one message at hop (however many recipients). */
static inline void obs_metrics_dlv_attempt(struct obs_metrics *m, unsigned hop)
{
	DS_ASSERT(hop < OBS_METRICS_HOPS_MAX);
	obs_counter_add(&m->dlv.hop[hop].attempts, 1);
}

/*
 * Commit (the durable 250 of ingest) to the next hop's accept, us: once per
 * message per attempt that delivered at least one recipient.
 */
static inline void obs_metrics_dlv_latency(struct obs_metrics *m, uint64_t us)
{
	struct obs_metrics_dlv_lat_hist *h = &m->dlv.latency;
	obs_counter_add(&h->bucket[obs_metrics_bucket_of(obs_metrics_dlv_lat_bounds_us,
							 OBS_METRICS_DLV_LAT_BUCKETS, us)],
			1);
	obs_counter_add(&h->sum_us, us);
}

/* rcpts recipients delivered again after a restart cut an earlier attempt short (possible duplicates). */
static inline void obs_metrics_dlv_redelivery(struct obs_metrics *m, uint64_t rcpts)
{
	obs_counter_add(&m->dlv.redeliveries, rcpts);
}

/* The connection was lost after the final dot was sent, before the reply: rcpts may be delivered twice. */
static inline void obs_metrics_dlv_possible_duplicate(struct obs_metrics *m, uint64_t rcpts)
{
	obs_counter_add(&m->dlv.possible_duplicates, rcpts);
}

/* A connection to hop is being opened (connect submitted: one that then fails counts here too). */
static inline void obs_metrics_dlv_conn_open(struct obs_metrics *m, unsigned hop)
{
	DS_ASSERT(hop < OBS_METRICS_HOPS_MAX);
	obs_counter_add(&m->dlv.hop[hop].conns_current, 1);
	obs_counter_add(&m->dlv.hop[hop].conns_total, 1);
}

/* A connection counted by obs_metrics_dlv_conn_open() was closed. */
static inline void obs_metrics_dlv_conn_close(struct obs_metrics *m, unsigned hop)
{
	DS_ASSERT(hop < OBS_METRICS_HOPS_MAX);
	obs_counter_add(&m->dlv.hop[hop].conns_current, (uint64_t)-1); /* unsigned decrement */
}

/* A connection to hop could not be had (refused, timed out, greeting/hello/TLS failed). */
static inline void obs_metrics_dlv_conn_failed(struct obs_metrics *m, unsigned hop)
{
	DS_ASSERT(hop < OBS_METRICS_HOPS_MAX);
	obs_counter_add(&m->dlv.hop[hop].conn_failures, 1);
}

/* A hand-off result (enum io_handoff_why); latencies only for a confirm (0 otherwise). */
static inline void obs_metrics_handoff_result(struct obs_metrics *m, unsigned why, uint64_t accepted_us,
					      uint64_t publish_us)
{
	struct obs_metrics_handoff *h = &m->handoff;
	if (why >= OBS_HANDOFF_RESULTS)
		return;
	obs_counter_add(&h->results[why], 1);
	if (why != 0)
		return;
	obs_counter_add(&h->accepted_to_confirm.bucket[obs_metrics_bucket_of(
				obs_metrics_dlv_lat_bounds_us, OBS_METRICS_DLV_LAT_BUCKETS, accepted_us)],
			1);
	obs_counter_add(&h->accepted_to_confirm.sum_us, accepted_us);
	obs_counter_add(&h->publish_to_confirm.bucket[obs_metrics_bucket_of(
				obs_metrics_dlv_lat_bounds_us, OBS_METRICS_DLV_LAT_BUCKETS, publish_us)],
			1);
	obs_counter_add(&h->publish_to_confirm.sum_us, publish_us);
}

/* The hand-off thread's state now: connected, unconfirmed publishes, connection losses so far. */
static inline void obs_metrics_handoff_state(struct obs_metrics *m, bool connected, uint64_t unconfirmed,
					     uint64_t losses)
{
	obs_counter_set(&m->handoff.connected, connected ? 1 : 0);
	obs_counter_set(&m->handoff.unconfirmed, unconfirmed);
	obs_counter_set(&m->handoff.connection_losses, losses);
}

/* This worker's view of hop (dlv_queue_hop_up()); a hop is up until a worker says otherwise. */
static inline void obs_metrics_dlv_hop_up(struct obs_metrics *m, unsigned hop, bool up)
{
	DS_ASSERT(hop < OBS_METRICS_HOPS_MAX);
	obs_counter_set(&m->dlv.hop[hop].down, up ? 0 : 1);
}

/* A delivery status notification (bounce) was spooled. */
static inline void obs_metrics_dlv_dsn(struct obs_metrics *m)
{
	obs_counter_add(&m->dlv.dsns, 1);
}

/* A delivery outcome record was written to the spool (ok) or could not be (not ok). */
static inline void obs_metrics_dlv_record(struct obs_metrics *m, bool ok)
{
	obs_counter_add(ok ? &m->dlv.records : &m->dlv.record_errors, 1);
}

/* ---- the spool's high watermark (issue 15): server-wide, one writer ---- */

/*
 * One process-wide block, not per worker: the spool's bytes on disk and its
 * file system are the server's. Written by one thread only (io/watermark.c's
 * sampler, every IO_WATERMARK_PERIOD_MS), read by the renderer; each value
 * exact, not a snapshot of the whole block.
 */
struct obs_metrics_watermark {
	obs_counter_t high;	      /* gauge 0/1: new transactions get 452 4.3.1 at MAIL */
	obs_counter_t bytes;	      /* gauge: the spool's files on disk (allocated bytes) */
	obs_counter_t max_bytes;      /* gauge: the high watermark on bytes in force */
	obs_counter_t resume_bytes;   /* gauge: the low watermark on bytes */
	obs_counter_t free_bytes;     /* gauge: free on the spool's file system (f_bavail) */
	obs_counter_t min_free_bytes; /* gauge: the free-space floor in force */
	obs_counter_t highs;	      /* counter: times it went high */
	obs_counter_t samples;	      /* counter: samples taken (0: no sampler, the gauges mean nothing) */
};

/* The sampler's write of one sample; went_high counts a change to high. */
void obs_metrics_watermark_set(bool high, bool went_high, uint64_t bytes, uint64_t max_bytes,
			       uint64_t resume_bytes, uint64_t free_bytes, uint64_t min_free_bytes);
/* The block the renderer reads (tests). */
const struct obs_metrics_watermark *obs_metrics_watermark(void);

/* ---- spool reclamation and compaction (issue 15): server-wide, one writer ---- */

/*
 * Written by the reclamation thread after each pass (spool_reclaim.c's
 * table: what it knows of the spool), read by the renderer; each value exact.
 */
struct obs_metrics_reclaim {
	obs_counter_t on;		  /* gauge 0/1: reclamation runs (the families mean something) */
	obs_counter_t segments;		  /* gauge: segment files on disk */
	obs_counter_t bytes;		  /* gauge: their bytes (segment size each) */
	obs_counter_t reclaimed;	  /* counter: segments reclaimed (unlinked) */
	obs_counter_t reclaimed_bytes;	  /* counter */
	obs_counter_t compacted;	  /* counter: segments whose live messages were copied forward */
	obs_counter_t compacted_messages; /* counter: messages copied */
	obs_counter_t compacted_bytes;	  /* counter: body bytes copied */
	obs_counter_t segments_free;	  /* gauge: free files (recycled segments waiting, format 5) */
	obs_counter_t recycled;		  /* counter: reclaimed segments renamed to free files */
};
void obs_metrics_reclaim_set(uint64_t segments, uint64_t bytes, uint64_t reclaimed, uint64_t reclaimed_bytes,
			     uint64_t compacted, uint64_t compacted_messages, uint64_t compacted_bytes);
const struct obs_metrics_reclaim *obs_metrics_reclaim(void);
void obs_metrics_recycle_set(uint64_t segments_free, uint64_t recycled);

/* The recipient table (issue 17, io/rcpt_table.c): server-wide, one writer (its loader). */
struct obs_metrics_rcpt_table {
	obs_counter_t on;	      /* 1 once --recipients has loaded: the families are shown */
	obs_counter_t entries;	      /* gauge: distinct entries of the table in use */
	obs_counter_t bytes;	      /* gauge: its memory */
	obs_counter_t reloads_ok;     /* counter */
	obs_counter_t reloads_failed; /* counter: the old table was kept */
};
void obs_metrics_rcpt_table_set(uint64_t entries, uint64_t bytes, uint64_t reloads_ok, uint64_t reloads_failed);

/* ---- reader side: any thread ---- */

/*
 * Prometheus text exposition format 0.0.4 for n workers (NULL entries are
 * skipped). Returns the length of the full text, like snprintf: if it is
 * >= cap the output was truncated (still NUL-terminated when cap > 0).
 */
size_t obs_metrics_render(const struct obs_metrics *const *workers, unsigned n, char *buf, size_t cap);
/* The same with the wall clock's now given (the oldest message's age is computed from it); for tests. */
size_t obs_metrics_render_at(const struct obs_metrics *const *workers, unsigned n, char *buf, size_t cap,
			     int64_t now_wall_us);

/* A buffer of this size always holds obs_metrics_render() of n workers (plus NUL), with any hops. */
size_t obs_metrics_render_bound(unsigned n);

/*
 * One HTTP/1.x request for the metrics endpoint, req[0..len) being all
 * bytes received so far on the connection. Returns:
 *   0            need more bytes (headers not complete, len < OBS_METRICS_HTTP_REQUEST_MAX)
 *   200          GET or HEAD /metrics: a full response is in out[0..*out_len)
 *   400/404/405  error response in out[0..*out_len) (400 also for an oversized request)
 *   -ENOSPC      cap too small (use obs_metrics_render_bound(n) + OBS_METRICS_HTTP_HEADER_MAX)
 * Every response is HTTP/1.0 with Connection: close: the caller sends
 * out[0..*out_len) and closes.
 */
int obs_metrics_http(const uint8_t *req, size_t len, const struct obs_metrics *const *workers, unsigned n,
		     char *out, size_t cap, size_t *out_len);

/* ---- gap dedup (issue 16) ---- */
static inline void obs_metrics_gap_at_risk(struct obs_metrics *m)
{
	obs_counter_add(&m->gap_at_risk_total, 1);
}
static inline void obs_metrics_gap_suppressed(struct obs_metrics *m)
{
	obs_counter_add(&m->gap_suppressed_total, 1);
}
static inline void obs_metrics_gap_compare_miss(struct obs_metrics *m)
{
	obs_counter_add(&m->gap_compare_miss, 1);
}
static inline void obs_metrics_gap_record_error(struct obs_metrics *m)
{
	obs_counter_add(&m->gap_record_errors, 1);
}
static inline void obs_metrics_gap_set(struct obs_metrics *m, uint64_t entries, uint64_t at_risk, uint64_t full)
{
	obs_counter_set(&m->gap_set_entries, entries);
	obs_counter_set(&m->gap_set_at_risk, at_risk);
	obs_counter_set(&m->gap_set_full, full);
}

#endif
