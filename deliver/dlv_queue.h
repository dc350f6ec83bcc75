/* SPDX-License-Identifier: MIT */
#ifndef DS_DLV_QUEUE_H
#define DS_DLV_QUEUE_H

/*
 * deliver/: one worker's delivery queue, pure (no clock: every call gets
 * `now_us`, wall-clock microseconds, the time base of the spool's outcome
 * records; no randomness but a seeded xorshift for jitter; no I/O). Heap
 * memory grows in blocks as the backlog grows and is reused, never per
 * message on the hot path once warm.
 *
 * What it decides (Postfix qmgr's choices where the issue is silent):
 * - Order: two lines, "new" (never attempted in this run and never
 *   deferred: FIFO) and "deferred" (ordered by due time). dlv_queue_next()
 *   takes from them in turn when both have a message due (one new, one
 *   deferred, like qmgr), so a backlog of deferred mail never starves new
 *   mail and the other way round.
 * - Backoff per message: attempt n (n >= 1 attempts made) waits
 *   min(retry_max, retry_min * 2^(n-1)), jittered by -0..25% (never below
 *   retry_min unless retry_min is 0), from the end of the attempt.
 * - Lifetime: a message whose age (now - received_at) is over
 *   queue_lifetime when an attempt ends deferred is expired: the caller
 *   fails its remaining recipients (DSN) instead of deferring.
 * - Next hops: a hop that refused the connection, timed out, or failed
 *   its greeting/hello/TLS is down as a whole: first for hop_backoff_min_s,
 *   doubling per consecutive failure up to retry_max; one success clears
 *   it. Each worker keeps its own view of the hops. dlv_queue_hop_pick() gives the
 *   first configured hop that is up (fallback in configured order). While
 *   every hop is down dlv_queue_next() hands out nothing and
 *   dlv_queue_next_due_us() says when the first one comes back.
 */

#include <stdbool.h>
#include <stdint.h>

#define DLV_QUEUE_HOPS_MAX  8
#define DLV_QUEUE_RCPTS_MAX 20000u     /* recipients of one message (SPOOL_OUTCOME_RCPTS_MAX) */
#define DLV_QUEUE_MSGS_MAX  (1u << 30) /* messages one queue holds (beyond: -ENOMEM) */

/*
 * Recipient states: the values of spool/spool.h's enum spool_rcpt_state
 * (fixed by the format; tests/deliver/test_queue.c asserts they match),
 * mirrored so deliver/ does not include spool/.
 */
enum dlv_rcpt_state {
	DLV_RCPT_PENDING = 0,
	DLV_RCPT_ATTEMPT = 1,
	DLV_RCPT_DELIVERED = 2, /* final */
	DLV_RCPT_DEFERRED = 3,
	DLV_RCPT_FAILED = 4, /* final */
};
#define DLV_RCPT_STATE_MAX	4u
#define DLV_RCPT_STATE_FINAL(s) ((s) == DLV_RCPT_DELIVERED || (s) == DLV_RCPT_FAILED)

struct dlv_queue_config {
	uint32_t retry_min_s;	    /* default 300 */
	uint32_t retry_max_s;	    /* default 4000 */
	uint32_t queue_lifetime_s;  /* default 5 days */
	uint32_t hop_backoff_min_s; /* first back-off of a failed hop; default min(retry_min_s, 60) */
	uint32_t hop_count;	    /* 1..DLV_QUEUE_HOPS_MAX */
	uint64_t seed;		    /* jitter */
};
void dlv_queue_config_defaults(struct dlv_queue_config *cfg);

enum dlv_qline { DLV_QLINE_NEW = 0, DLV_QLINE_DEFERRED = 1, DLV_QLINE_BUSY = 2 };

/*
 * One queued message. The queue owns it (a slot of its block pool;
 * recipient states of up to 8 recipients live in the slot, more in one
 * allocation of their own); pointers stay valid until dlv_queue_done().
 * Read-only for the caller: change it through the calls below.
 */
struct dlv_qmsg {
	uint64_t id;
	unsigned lane;
	uint64_t seq, off; /* commit record */
	uint64_t size;
	int64_t received_at_us;
	int64_t due_us;	   /* deferred: next attempt */
	uint32_t attempts; /* attempts made, all runs */
	uint32_t rcpt_count;
	uint32_t rcpt_open;  /* recipients not final */
	uint8_t *rcpt_state; /* rcpt_count x enum dlv_rcpt_state (= spool_rcpt_state, 0..4) */
	bool redelivery;     /* recovered with an attempt cut short: a delivery counts as a re-delivery */
	bool held;	     /* operator hold: on the deferred line, never due, until released */
	uint8_t mark;	     /* the caller's own (io/dlv.c: an operator record in flight); 0 when added */
	uint8_t line;	     /* enum dlv_qline */
	uint32_t priv[6];    /* the queue's links */
};

struct dlv_queue;

int dlv_queue_create(struct dlv_queue **out, const struct dlv_queue_config *cfg); /* 0, -EINVAL, -ENOMEM */
void dlv_queue_destroy(struct dlv_queue *q);

struct dlv_queue_add {
	uint64_t id;
	unsigned lane;
	uint64_t seq, off, size;
	int64_t received_at_us;
	uint32_t rcpt_count;	   /* 1..DLV_QUEUE_RCPTS_MAX */
	const uint8_t *rcpt_state; /* NULL = all PENDING; copied */
	uint32_t attempts;
	int64_t due_us; /* 0 = now */
	bool redelivery;
	bool held; /* an operator held it (recovery): never due until dlv_queue_hold(.., false) */
};
/*
 * Queue a message: from a commit that just became durable (attempts 0:
 * the new line), or from recovery (attempts > 0 or due_us set: the
 * deferred line; a recovered message never attempted goes to the new
 * line). Recipients already final are not delivered again; a message with
 * none open is not queued (-EALREADY). 0, -ENOMEM, -EINVAL (rcpt_count
 * out of range, a state over DLV_RCPT_STATE_MAX). out may be NULL.
 */
int dlv_queue_add(struct dlv_queue *q, const struct dlv_queue_add *a, struct dlv_qmsg **out);

/*
 * The next message to attempt now (alternating lines as above), or NULL.
 * It moves to the busy line until dlv_queue_defer(), dlv_queue_retry_now()
 * or dlv_queue_done().
 */
struct dlv_qmsg *dlv_queue_next(struct dlv_queue *q, int64_t now_us);
/*
 * The earliest time dlv_queue_next() returns a message if nothing else
 * changes (no add, no hop news): the later of "a message is due" (new
 * waiting: now; else the deferred line's first due time) and "a hop is up"
 * (the earliest time one comes back). <= now when a new message waits and
 * a hop is up; INT64_MAX when neither line holds a message. The later, not
 * the earlier: while every hop is down a due message must not wake the
 * worker into a loop of NULL picks.
 */
int64_t dlv_queue_next_due_us(const struct dlv_queue *q);

/* Attempt number for the next attempt of m (attempts + 1); the caller records it, then calls this. */
void dlv_queue_attempt_begin(struct dlv_queue *q, struct dlv_qmsg *m);
/*
 * Recipient idx of a busy message reached a state (the record saying so is
 * durable). A final recipient never changes again (asserted): rcpt_open
 * drops exactly once per recipient.
 */
void dlv_queue_rcpt_state(struct dlv_queue *q, struct dlv_qmsg *m, uint32_t idx, uint8_t state);
/*
 * When a deferred message of this attempt should be tried again: the
 * absolute time now_us + the jittered backoff for m->attempts attempts
 * made (the value to record and pass to dlv_queue_defer()), or 0 when the
 * message is past its lifetime (then the caller fails the open recipients
 * instead). Advances the jitter generator.
 */
int64_t dlv_queue_backoff_us(struct dlv_queue *q, const struct dlv_qmsg *m, int64_t now_us);
/* Back to the deferred line, due at due_us (the value recorded); some recipient must be open. */
void dlv_queue_defer(struct dlv_queue *q, struct dlv_qmsg *m, int64_t due_us);
/*
 * Not attempted after all (no connection could be had): back where it was
 * (head of the new line, or its old place on the deferred line: it was
 * due, so it is due now), attempts unchanged.
 */
void dlv_queue_retry_now(struct dlv_queue *q, struct dlv_qmsg *m);
/*
 * Operator hold (issue 15): a held message sits on the deferred line and is
 * never due (dlv_queue_next() skips it, next_due ignores it) until released;
 * a busy one is held when it comes back (defer, retry_now). Release makes
 * it due now (as `postqueue -f` would). Counted in stats held too.
 */
void dlv_queue_hold(struct dlv_queue *q, struct dlv_qmsg *m, bool held);
/* Operator retry: a deferred (not held, not busy) message is due now; anything else is left alone. */
void dlv_queue_due_now(struct dlv_queue *q, struct dlv_qmsg *m);
/*
 * Take a message that is not busy off its line for the caller (an operator
 * bounce): busy from now on, as if dlv_queue_next() had picked it (its
 * hold is cleared); give it back with defer/retry_now/done.
 */
void dlv_queue_take(struct dlv_queue *q, struct dlv_qmsg *m);
/*
 * Every message whose id is in ids[0, n) (sorted ascending): found[i] the
 * message of ids[i] or NULL. One pass over the pool, O(pool * log n).
 */
void dlv_queue_find(const struct dlv_queue *q, const uint64_t *ids, uint32_t n, struct dlv_qmsg **found);

/* Every recipient final (or the message deleted; any line): forget it. m is invalid afterwards. */
void dlv_queue_done(struct dlv_queue *q, struct dlv_qmsg *m);
/* Compaction moved m's commit record (same id, same lane): it is read from (seq, off) from now on. */
void dlv_queue_relocate(struct dlv_queue *q, struct dlv_qmsg *m, uint64_t seq, uint64_t off);

/* Next hops. hop indexes the configured --deliver-to list. */
int dlv_queue_hop_pick(const struct dlv_queue *q, int64_t now_us); /* first hop up, or -1 */
/*
 * A connection to hop failed as a whole. Ignored while the hop is already
 * down: the other connections begun before it went down fail too, and one
 * outage must not double the back-off once per connection.
 */
void dlv_queue_hop_failed(struct dlv_queue *q, unsigned hop, int64_t now_us);
void dlv_queue_hop_ok(struct dlv_queue *q, unsigned hop);
bool dlv_queue_hop_up(const struct dlv_queue *q, unsigned hop, int64_t now_us);

struct dlv_queue_stats {
	uint64_t messages[3]; /* by line */
	uint64_t bytes[3];
	uint64_t rcpts_open;
	uint64_t held; /* messages on hold (also counted in their line) */
	int64_t oldest_received_at_us; /* INT64_MAX if empty */
	uint64_t pool_slots; /* message slots allocated (used + free), about 160 B each; never shrinks */
};
void dlv_queue_stats(const struct dlv_queue *q, struct dlv_queue_stats *st);

/* Walk every message (dotspool-ctl and metrics need no more); fn non-zero stops. */
int dlv_queue_foreach(const struct dlv_queue *q, int (*fn)(void *ctx, const struct dlv_qmsg *m), void *ctx);

#endif
