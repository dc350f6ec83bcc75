/* SPDX-License-Identifier: MIT */
#ifndef DS_OBS_LOG_H
#define DS_OBS_LOG_H

/*
 * Structured logging (logfmt) that never blocks the hot path.
 *
 * Each producer (worker thread) owns one single-producer single-consumer
 * byte ring, allocated at start-up. A log call formats its line into the
 * ring's private scratch buffer and copies it into the ring: no lock, no
 * syscall, no allocation. When the ring is full the line is dropped and
 * the ring's dropped counter grows; the logger thread reports drops as a
 * warn line of its own. One logger thread drains every ring to a FILE*
 * (stderr by default), polling every OBS_LOG_POLL_MS when the rings are
 * empty, so a line appears at most ~10 ms after it was logged.
 *
 * Lines look like:
 *   ts=2026-11-23T19:15:52.123456Z level=info event=accepted queue_id=... client=192.0.2.1 ...
 * The timestamp is taken by the producer (clock_gettime, vDSO) and
 * formatted by the logger thread.
 */

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct ds_envelope;

#define OBS_LOG_LINE_MAX  1024 /* bytes of one line after the timestamp and level, truncated beyond */
#define OBS_LOG_VALUE_MAX 256  /* raw bytes of one value before escaping, truncated beyond */
#define OBS_LOG_RINGS_MAX 256
#define OBS_LOG_RING_MIN  4096
#define OBS_LOG_RING_MAX  (64u << 20)
#define OBS_LOG_POLL_MS	  10

enum obs_log_level {
	OBS_LOG_ERROR,
	OBS_LOG_WARN,
	OBS_LOG_INFO,
	OBS_LOG_DEBUG,
};

struct obs_log;
struct obs_log_ring;

/* "error", "warn", "info", "debug" -> level; -EINVAL otherwise. */
int obs_log_level_parse(const char *name, enum obs_log_level *out);
const char *obs_log_level_name(enum obs_log_level level);

/*
 * rings: one per producer thread (workers, main thread...); ring_bytes: a
 * power of 2 in [OBS_LOG_RING_MIN, OBS_LOG_RING_MAX]; out: where lines go
 * (NULL means stderr). The logger thread starts with obs_log_start().
 */
int obs_log_create(struct obs_log **out, unsigned rings, size_t ring_bytes, FILE *f,
		   enum obs_log_level level);
int obs_log_start(struct obs_log *l);
/* Drains every ring, then joins the logger thread. Producers must have stopped logging. */
void obs_log_stop(struct obs_log *l);
void obs_log_destroy(struct obs_log *l);
/* Producer i's ring (i < rings). Only one thread may log through it. */
struct obs_log_ring *obs_log_ring(struct obs_log *l, unsigned i);
/* Level change at run time (SIGHUP); any thread. */
void obs_log_set_level(struct obs_log *l, enum obs_log_level level);
/* Lines dropped on ring i because it was full. */
uint64_t obs_log_dropped(const struct obs_log *l, unsigned i);
/* Lines written by the logger thread so far (all rings). */
uint64_t obs_log_written(const struct obs_log *l);
/* Drain every ring once from the calling thread (tests, or without a logger thread). */
void obs_log_drain(struct obs_log *l);

/* ---- producer side: builder for one line ---- */

/* Starts a line with event=name; false when the level is filtered out (then skip the rest). */
bool obs_log_begin(struct obs_log_ring *r, enum obs_log_level level, const char *event);
/* key=value, value escaped (NULL is ""). */
void obs_log_str(struct obs_log_ring *r, const char *key, const char *value);
void obs_log_strn(struct obs_log_ring *r, const char *key, const char *value, size_t len);
void obs_log_u64(struct obs_log_ring *r, const char *key, uint64_t value);
void obs_log_bool(struct obs_log_ring *r, const char *key, bool value);
/* Publishes the line: 0, or -ENOBUFS when the ring was full (line dropped, counted). */
int obs_log_end(struct obs_log_ring *r);

/* logfmt escaping of one value into dst (cap > 0, NUL-terminated); returns bytes written. Exposed for tests.
 */
size_t obs_log_escape(char *dst, size_t cap, const char *src, size_t len);

/* ---- the lines issue 8 asks for ---- */

/*
 * One line per accepted message (after its 250 was sent): queue_id,
 * client, helo, sender, rcpts, size, tls, gap_us.
 */
int obs_log_accepted(struct obs_log_ring *r, const char *queue_id, const struct ds_envelope *env,
		     uint64_t gap_us);

/* One line per refused transaction or connection; any string may be NULL. */
struct obs_log_refusal {
	const char *reason; /* short token: limit_total, limit_per_ip, shutdown, proxy_error, spool_error,
			       too_big... */
	unsigned code;	    /* SMTP reply code sent, 0 when none (connection just closed) */
	const char *client; /* textual IP */
	const char *helo;
	const char *sender;
};
int obs_log_refused(struct obs_log_ring *r, const struct obs_log_refusal *f);

/* ---- the lines of the delivery stage (issue 14) ---- */

/*
 * One line per delivery attempt per message (level info, event=delivery):
 *   queue_id hop attempt rcpts delivered deferred failed outcome code esc
 *   delay_ms duration_ms possible_duplicate redelivery dsn_id reply
 * reply comes last: it is the longest field, so a line over
 * OBS_LOG_LINE_MAX loses it before anything else. Strings may be NULL
 * (logged as ""); outcome NULL is derived from the counts.
 */
struct obs_log_delivery {
	const char *queue_id;
	const char *hop;    /* the --deliver-to URL */
	uint32_t attempt;   /* 1 = first attempt, all runs */
	uint32_t rcpts;	    /* recipients in this attempt */
	uint32_t delivered; /* of which delivered, deferred, failed */
	uint32_t deferred;
	uint32_t failed;
	const char *outcome;	 /* "delivered", "deferred", "failed", "mixed" */
	uint16_t code;		 /* the deciding reply's code, 0 when none (no connection) */
	const char *esc;	 /* its enhanced status code ("4.2.0"), or "" */
	const char *reply;	 /* its first line's text, or why there was none ("connection refused") */
	uint64_t delay_ms;	 /* received_at to the end of this attempt */
	uint64_t duration_ms;	 /* this attempt */
	bool possible_duplicate; /* connection lost after the final dot */
	bool redelivery;	 /* a restart had cut an earlier attempt short */
	const char *dsn_id;	 /* the queue id of the bounce this attempt spooled, or "" */
};
int obs_log_delivery(struct obs_log_ring *r, const struct obs_log_delivery *d);

/* "delivered" when all rcpts were, "deferred"/"failed" likewise, "mixed" otherwise ("deferred" for none). */
const char *obs_log_delivery_outcome(const struct obs_log_delivery *d);

/* A bounce was spooled for queue_id (event=dsn_queued queue_id dsn_id failed). */
int obs_log_dsn(struct obs_log_ring *r, const char *queue_id, const char *dsn_id, uint32_t failed_rcpts);

/* A next hop went down (level warn, event=hop_down) or came back (info, event=hop_up): hop reason. */
int obs_log_hop(struct obs_log_ring *r, const char *hop, bool up, const char *why);

/* ---- the spool's high watermark (issue 15) ---- */

/*
 * The spool crossed its high watermark (level warn, state=high: new
 * transactions get 452 at MAIL) or fell below its low one (info,
 * state=low: accepting again). One line per change:
 *   event=spool_watermark state=high reason=spool_max bytes=... max_bytes=...
 *   resume_bytes=... free_bytes=... min_free_bytes=... resume_free_bytes=...
 * reason: spool_max (bytes >= max_bytes), min_free (free_bytes <
 * min_free_bytes), both; for state=low the reason it had gone high.
 */
struct obs_log_watermark {
	bool high;
	const char *reason;
	uint64_t bytes;		    /* the spool's files on disk */
	uint64_t max_bytes;	    /* high watermark on bytes */
	uint64_t resume_bytes;	    /* low watermark on bytes */
	uint64_t free_bytes;	    /* free on the spool's file system (for unprivileged users) */
	uint64_t min_free_bytes;    /* free-space floor */
	uint64_t resume_free_bytes; /* free needed to resume */
};
int obs_log_watermark(struct obs_log_ring *r, const struct obs_log_watermark *w);

#endif
