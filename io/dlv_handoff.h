/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_DLV_HANDOFF_H
#define DS_IO_DLV_HANDOFF_H

/*
 * A per-message hand-off to a replicated log or queue (issue 18): the next
 * hop takes the whole message (every open recipient at once) and says, some
 * time later, whether it is durable on its side. RabbitMQ (io/dlv_amqp.c)
 * is the first backend; a Kafka or NATS JetStream one would implement the
 * same five calls.
 *
 * Threads: a backend's client library may block (librabbitmq does), so a
 * backend runs its own thread(s) and never blocks the caller. The worker
 * (io/dlv.c) calls submit() and kick() on its own thread, one job per
 * delivery slot it holds (never more than the backend's window, which it
 * learns from slots()); results come back through results(), drained on the
 * worker's thread after the backend's event_fd() became readable (an 8-byte
 * eventfd read armed on the worker's ring). Nothing else is shared.
 */

#include <stdbool.h>
#include <stdint.h>

#include "io_config.h"

/* One message handed over. The backend copies what it keeps (rcpt_idx). */
struct io_handoff_req {
	uint64_t cookie; /* the worker's job tag, given back in the result */
	uint64_t id;	 /* spool id: the message's stable identity (consumers dedupe on it) */
	unsigned lane;
	uint64_t seq, off; /* where the commit record is (spool_fetch_get) */
	uint32_t attempt;
	uint32_t rcpt_count;	  /* recipients this hand-off is for ... */
	const uint32_t *rcpt_idx; /* ... as indexes into the envelope's recipients */
};

/* enum dlv_class values (deliver/dlv_client.h): 1 delivered, 2 deferred, 3 failed. */
enum io_handoff_why {
	IO_HANDOFF_CONFIRMED = 0, /* broker ack */
	IO_HANDOFF_NACKED,	  /* broker nack */
	IO_HANDOFF_RETURNED,	  /* mandatory publish routed nowhere (basic.return) */
	IO_HANDOFF_TIMEOUT,	  /* no confirm within the confirm timeout */
	IO_HANDOFF_CONN_LOST,	  /* channel or connection closed with it unconfirmed */
	IO_HANDOFF_NO_CONN,	  /* never published: no connection */
	IO_HANDOFF_TOO_BIG,	  /* over the broker's max message size: failed */
	IO_HANDOFF_READ_ERROR,	  /* the message could not be read back from the spool */
	IO_HANDOFF_WHY_COUNT,
};

struct io_handoff_result {
	uint64_t cookie;
	uint8_t cls; /* enum dlv_class */
	uint8_t why; /* enum io_handoff_why */
	uint16_t code;
	char esc[12];
	char text[200];
	uint64_t confirm_us; /* publish -> broker confirm (CONFIRMED only) */
};

/* What the worker reads for its gauges and hop-down/hop-up log lines. */
struct io_handoff_state {
	bool connected;
	uint32_t in_flight;   /* published, not yet confirmed */
	uint64_t connects;    /* successful (re)connections so far */
	uint64_t losses;      /* connections lost (or failed while trying) so far */
	char last_error[200]; /* why the last connection ended or failed */
	char peer[80];	      /* IP:PORT of the broker connected to now ("" when down) */
};

struct io_handoff;

struct io_handoff_ops {
	const char *name;
	/* Start the backend for worker no (its thread, its connection). */
	int (*create)(struct io_handoff **out, const struct io_config *cfg, unsigned no);
	/* Jobs the worker may have in flight at once (the confirm window). */
	uint32_t (*slots)(const struct io_handoff *h);
	/* Queue one message: 0, or -ENOSPC (more than slots() outstanding: a caller bug). */
	int (*submit)(struct io_handoff *h, const struct io_handoff_req *r);
	/* End of a loop turn: wake the backend if submit() queued anything since the last kick. */
	void (*kick)(struct io_handoff *h);
	/* The fd that becomes readable (eventfd counter) when results or state changed. */
	int (*event_fd)(const struct io_handoff *h);
	/* Up to max results, oldest first; the count. */
	unsigned (*results)(struct io_handoff *h, struct io_handoff_result *out, unsigned max);
	void (*state)(struct io_handoff *h, struct io_handoff_state *out);
	/* Stop the thread (unconfirmed messages get no result: the caller has deferred them). */
	void (*destroy)(struct io_handoff *h);
};

extern const struct io_handoff_ops io_handoff_amqp;

#endif
