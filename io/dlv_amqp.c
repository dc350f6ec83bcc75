/* SPDX-License-Identifier: MIT */
/*
 * amqp:// hand-off (issue 18): one message per spooled message, published
 * to a RabbitMQ exchange (a quorum queue bound to it) and final only on the
 * broker's publisher confirm. The io/dlv_handoff.h backend for RabbitMQ.
 *
 * Threads. librabbitmq (rabbitmq-c 0.11) blocks in every call, so each
 * worker has its own hand-off thread with its own connection and channel
 * (channel 1, confirm mode). Nothing is shared between workers, so one
 * worker's backlog never waits behind another's, and the confirm window is
 * per worker (--amqp-window). Between the worker and its thread:
 *
 *   worker --submit()--> request ring (mutex) --kick(): eventfd write--> thread
 *   thread --result ring (mutex)-- eventfd write --> read armed on the worker's ring
 *
 * Both rings hold at most 2 x window entries; the worker never has more
 * than window jobs (its delivery slots), so neither can fill. The mutex is
 * held only to copy an entry in or out; the worker takes it once per loop
 * turn that has results or submissions, never on the ingest path.
 *
 * The thread. poll() on the socket and its wake eventfd (250 ms at most),
 * then: (re)connect when down (one node of the --deliver-to list per try,
 * in order; back-off 0.5 s doubling to 30 s once every node failed), publish
 * what was submitted while the window has room, read every frame buffered
 * (basic.ack/nack with `multiple`, basic.return + its content, channel or
 * connection close), expire confirms older than --deliver-timeout-confirm-s.
 *
 * Confirms. Delivery tags count publishes on the channel from 1; an
 * unconfirmed publish sits in win[tag % window] (a publish waits while its
 * slot is taken, so the window is also the largest tag distance). A
 * mandatory publish that no queue takes comes back as basic.return (no
 * delivery tag; matched by message_id = the spool id, unique among the
 * publishes in flight) BEFORE the basic.ack for the same publish: that ack
 * then means "handled", not "stored", and the message is deferred.
 * basic.nack, a channel/connection close and the confirm timeout defer what
 * they cover; a late ack for a timed-out tag finds its slot empty and is
 * ignored (the message may then arrive twice: at least once, deduplicated
 * by consumers on message_id).
 *
 * Blocking: a broker under a memory or disk alarm stops reading the socket
 * (connection.blocked); amqp_basic_publish then blocks this thread (never a
 * worker), the worker keeps accepting and spooling, and destroy() shuts the
 * socket down to get the thread out.
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dlv_client.h" /* enum dlv_class */
#include "dlv_handoff.h"
#include "ds_assert.h"
#include "ds_clock.h"
#include "spool_fetch.h"
#include "spool_id.h"

#define AMQP_CHANNEL	    1
#define AMQP_FRAME_MAX	    131072
#define AMQP_HEARTBEAT_S    30
#define AMQP_POLL_MS	    250
#define AMQP_BACKOFF_MIN_MS 500
#define AMQP_BACKOFF_MAX_MS 30000
#define AMQP_FETCH_MAPS	    64
#define AMQP_HEADERS_MAX    16
#define AMQP_PUBLISH_BATCH  64 /* publishes between two reads of the socket */

struct inflight {
	bool used, returned;
	uint64_t tag, cookie, id;
	int64_t published_ms;
	uint64_t published_us;
	char why[120]; /* the basic.return's reply */
};

struct queued {
	struct io_handoff_req r;
	uint32_t *idx; /* copy of r.rcpt_idx */
	int64_t queued_ms;
};

struct io_handoff {
	const struct io_config *cfg;
	const struct io_deliver_config *dc;
	unsigned no;
	uint32_t window;
	int wake_fd;  /* worker -> thread */
	int event_fd; /* thread -> worker */
	pthread_t thread;
	bool thread_started;
	bool kick_owed; /* worker only */

	pthread_mutex_t mu; /* guards: the two rings, st, stop, sock_fd */
	struct queued *rq;
	uint32_t rq_cap, rq_head, rq_len;
	struct io_handoff_result *res;
	uint32_t res_cap, res_head, res_len;
	struct io_handoff_state st;
	bool stop;
	int sock_fd; /* the connection's socket while up, for destroy()'s shutdown */

	/* thread only */
	amqp_connection_state_t conn;
	bool up;
	uint64_t next_tag;
	struct inflight *win;
	uint32_t in_flight;
	struct spool_fetch *fetch;
	uint8_t *body;
	size_t body_cap;
	int64_t next_connect_ms, backoff_ms;
	unsigned node, nodes_failed;
	bool notify_owed;
	amqp_field_value_t *rcpt_vals, *param_vals;
	uint32_t vals_cap;
};

/* ---- the rings ---- */

static void post(struct io_handoff *h, uint64_t cookie, enum io_handoff_why why, uint64_t confirm_us,
		 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void post(struct io_handoff *h, uint64_t cookie, enum io_handoff_why why, uint64_t confirm_us,
		 const char *fmt, ...)
{
	struct io_handoff_result r = {.cookie = cookie, .why = (uint8_t)why, .confirm_us = confirm_us};
	switch (why) {
	case IO_HANDOFF_CONFIRMED:
		r.cls = DLV_DELIVERED, r.code = 250;
		snprintf(r.esc, sizeof(r.esc), "2.0.0");
		break;
	case IO_HANDOFF_TOO_BIG:
		r.cls = DLV_FAILED, r.code = 554;
		snprintf(r.esc, sizeof(r.esc), "5.3.4");
		break;
	default:
		r.cls = DLV_DEFERRED, r.code = 451;
		snprintf(r.esc, sizeof(r.esc), why == IO_HANDOFF_RETURNED ? "4.4.0" : "4.4.2");
		break;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r.text, sizeof(r.text), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&h->mu);
	if (h->res_len < h->res_cap) {
		h->res[(h->res_head + h->res_len) % h->res_cap] = r;
		h->res_len++;
	} else {
		/* Cannot happen (the worker has at most window jobs): the job stays until shutdown. */
		fprintf(stderr, "dotspool: worker %u: amqp result ring full, result dropped\n", h->no);
	}
	pthread_mutex_unlock(&h->mu);
	h->notify_owed = true;
}

static void notify(struct io_handoff *h)
{
	if (!h->notify_owed)
		return;
	h->notify_owed = false;
	pthread_mutex_lock(&h->mu);
	h->st.in_flight = h->in_flight;
	pthread_mutex_unlock(&h->mu);
	uint64_t one = 1;
	ssize_t r = write(h->event_fd, &one, sizeof(one));
	(void)r; /* an eventfd only refuses at 2^64-2: the worker reads it every turn */
}

static bool take(struct io_handoff *h, struct queued *out)
{
	bool got = false;
	pthread_mutex_lock(&h->mu);
	if (h->rq_len) {
		*out = h->rq[h->rq_head];
		h->rq_head = (h->rq_head + 1) % h->rq_cap;
		h->rq_len--;
		got = true;
	}
	pthread_mutex_unlock(&h->mu);
	return got;
}

/* ---- the connection ---- */

static const struct io_hop_spec *node_spec(const struct io_handoff *h, unsigned i)
{
	return &h->dc->hop[i % h->dc->hop_count];
}

static void rpc_text(amqp_rpc_reply_t r, char *buf, size_t cap)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		snprintf(buf, cap, "ok");
		break;
	case AMQP_RESPONSE_NONE:
		snprintf(buf, cap, "no reply");
		break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(buf, cap, "%s", amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			const amqp_connection_close_t *c = r.reply.decoded;
			snprintf(buf, cap, "connection closed by broker: %u %.*s", c->reply_code,
				 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			const amqp_channel_close_t *c = r.reply.decoded;
			snprintf(buf, cap, "channel closed by broker: %u %.*s", c->reply_code,
				 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
		} else {
			snprintf(buf, cap, "broker error (method 0x%08x)", r.reply.id);
		}
		break;
	}
}

static void conn_drop(struct io_handoff *h)
{
	pthread_mutex_lock(&h->mu);
	h->sock_fd = -1;
	pthread_mutex_unlock(&h->mu);
	if (h->conn)
		amqp_destroy_connection(h->conn); /* closes the socket; no close handshake on a dead link */
	h->conn = NULL;
	h->up = false;
}

static void state_down(struct io_handoff *h, const char *why)
{
	pthread_mutex_lock(&h->mu);
	bool was = h->st.connected;
	h->st.connected = false;
	h->st.peer[0] = 0;
	/* An outage counts once (not each failed retry); so does a broker never reached at start. */
	if (was || (h->st.connects == 0 && h->st.losses == 0))
		h->st.losses++;
	snprintf(h->st.last_error, sizeof(h->st.last_error), "%s", why);
	pthread_mutex_unlock(&h->mu);
	h->notify_owed = true;
}

/* The connection is gone: every unconfirmed publish is deferred (it may have reached the broker). */
static void lost(struct io_handoff *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void lost(struct io_handoff *h, const char *fmt, ...)
{
	char why[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	for (uint32_t i = 0; i < h->window; i++) {
		struct inflight *p = &h->win[i];
		if (!p->used)
			continue;
		p->used = false;
		post(h, p->cookie, IO_HANDOFF_CONN_LOST, 0,
		     "unconfirmed when the broker connection was lost: %s", why);
	}
	h->in_flight = 0;
	conn_drop(h);
	state_down(h, why);
	h->backoff_ms = AMQP_BACKOFF_MIN_MS;
	h->next_connect_ms = ds_mono_ms() + h->backoff_ms;
}

static int try_connect(struct io_handoff *h)
{
	const struct io_hop_spec *s = node_spec(h, h->node);
	const char *user = s->amqp.user[0] ? s->amqp.user : h->dc->amqp_user;
	const char *pass = s->amqp.user[0] ? s->amqp.pass : h->dc->amqp_pass;
	char why[200];
	h->conn = amqp_new_connection();
	amqp_socket_t *sock = h->conn ? amqp_tcp_socket_new(h->conn) : NULL;
	if (!sock) {
		snprintf(why, sizeof(why), "out of memory");
		goto fail;
	}
	struct timeval tv = {.tv_sec = (time_t)DS_MAX(h->dc->timeout_connect_s, 1u)};
	/* An IP literal (daemon/hop_url.c): getaddrinfo parses it, no DNS query. */
	int r = amqp_socket_open_noblock(sock, s->amqp.host, s->amqp.port, &tv);
	if (r != AMQP_STATUS_OK) {
		snprintf(why, sizeof(why), "connect %s:%u: %s", s->amqp.host, s->amqp.port,
			 amqp_error_string2(r));
		goto fail;
	}
	amqp_set_handshake_timeout(h->conn, &tv);
	amqp_set_rpc_timeout(h->conn, &tv);
	amqp_rpc_reply_t rr = amqp_login(h->conn, s->amqp.vhost, 0, AMQP_FRAME_MAX, AMQP_HEARTBEAT_S,
					 AMQP_SASL_METHOD_PLAIN, user, pass);
	if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
		char t[160];
		rpc_text(rr, t, sizeof(t));
		snprintf(why, sizeof(why), "login %s:%u vhost %s: %s", s->amqp.host, s->amqp.port,
			 s->amqp.vhost, t);
		goto fail;
	}
	amqp_channel_open(h->conn, AMQP_CHANNEL);
	rr = amqp_get_rpc_reply(h->conn);
	if (rr.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_confirm_select(h->conn, AMQP_CHANNEL);
		rr = amqp_get_rpc_reply(h->conn);
	}
	if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
		char t[160];
		rpc_text(rr, t, sizeof(t));
		snprintf(why, sizeof(why), "channel/confirm.select on %s:%u: %s", s->amqp.host, s->amqp.port,
			 t);
		goto fail;
	}
	/* Publishes wait for confirms, not for replies: a blocked send is bounded by destroy(). */
	amqp_set_rpc_timeout(h->conn, NULL);
	h->up = true;
	h->next_tag = 1;
	h->nodes_failed = 0;
	h->backoff_ms = AMQP_BACKOFF_MIN_MS;
	pthread_mutex_lock(&h->mu);
	h->sock_fd = amqp_get_sockfd(h->conn);
	h->st.connected = true;
	h->st.connects++;
	snprintf(h->st.peer, sizeof(h->st.peer), "%s:%u", s->amqp.host, s->amqp.port);
	pthread_mutex_unlock(&h->mu);
	h->notify_owed = true;
	return 0;
fail:
	conn_drop(h);
	state_down(h, why);
	/* The next node at once; once every node failed, back off. */
	h->node++;
	if (++h->nodes_failed >= h->dc->hop_count) {
		h->nodes_failed = 0;
		h->next_connect_ms = ds_mono_ms() + h->backoff_ms;
		h->backoff_ms = DS_MIN(h->backoff_ms * 2, (int64_t)AMQP_BACKOFF_MAX_MS);
	} else {
		h->next_connect_ms = ds_mono_ms();
	}
	return -ECONNREFUSED;
}

/* ---- publishing ---- */

static amqp_bytes_t bytes_of(const char *s)
{
	return (amqp_bytes_t){.len = strlen(s), .bytes = (void *)(uintptr_t)s};
}

static int vals_size(struct io_handoff *h, uint32_t n)
{
	if (n <= h->vals_cap)
		return 0;
	void *a = realloc(h->rcpt_vals, n * sizeof(*h->rcpt_vals));
	if (!a)
		return -ENOMEM;
	h->rcpt_vals = a;
	if (!(a = realloc(h->param_vals, n * sizeof(*h->param_vals))))
		return -ENOMEM;
	h->param_vals = a;
	h->vals_cap = n;
	return 0;
}

static void hdr_str(amqp_table_entry_t *e, unsigned *n, const char *key, const char *v)
{
	e[*n] = (amqp_table_entry_t){.key = bytes_of(key),
				     .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = bytes_of(v)}};
	(*n)++;
}

static void hdr_i64(amqp_table_entry_t *e, unsigned *n, const char *key, int64_t v)
{
	e[*n] = (amqp_table_entry_t){.key = bytes_of(key),
				     .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = v}};
	(*n)++;
}

/*
 * Read the message back (this thread's own spool_fetch: the worker's is
 * single-threaded) and publish it. 0 (published: in the window), or a
 * result was posted (not published), or -EPIPE (the connection failed:
 * the caller runs lost()).
 */
static int publish(struct io_handoff *h, const struct queued *q)
{
	const struct io_hop_spec *s = node_spec(h, h->node);
	struct spool_fetch_msg fm;
	int ret = spool_fetch_get(h->fetch, q->r.lane, q->r.seq, q->r.off, q->r.id, &fm);
	if (ret < 0) {
		post(h, q->r.cookie, IO_HANDOFF_READ_ERROR, 0, "message not read back from the spool: %s",
		     strerror(-ret));
		return 1;
	}
	const struct ds_envelope *env = &fm.m.env;
	if (fm.m.size > h->dc->amqp_max_message_bytes) {
		spool_fetch_put(h->fetch, &fm);
		post(h, q->r.cookie, IO_HANDOFF_TOO_BIG, 0,
		     "message of %" PRIu64 " bytes is over the broker's max_message_size (%" PRIu64 ")",
		     fm.m.size, h->dc->amqp_max_message_bytes);
		return 1;
	}
	if (fm.m.size > h->body_cap) {
		size_t cap = DS_MAX((size_t)fm.m.size, (size_t)65536);
		void *b = realloc(h->body, cap);
		if (!b) {
			spool_fetch_put(h->fetch, &fm);
			post(h, q->r.cookie, IO_HANDOFF_READ_ERROR, 0, "out of memory for the body");
			return 1;
		}
		h->body = b;
		h->body_cap = cap;
	}
	for (uint64_t off = 0; off < fm.m.size;) {
		ret = spool_fetch_read(h->fetch, &fm, off, h->body + off, (size_t)(fm.m.size - off));
		if (ret <= 0) {
			spool_fetch_put(h->fetch, &fm);
			post(h, q->r.cookie, IO_HANDOFF_READ_ERROR, 0,
			     "body not read back from the spool: %s", ret ? strerror(-ret) : "short");
			return 1;
		}
		off += (uint64_t)ret;
	}
	if (vals_size(h, DS_MAX(q->r.rcpt_count, 1u)) < 0) {
		spool_fetch_put(h->fetch, &fm);
		post(h, q->r.cookie, IO_HANDOFF_READ_ERROR, 0, "out of memory for the headers");
		return 1;
	}
	uint32_t nr = 0;
	for (uint32_t i = 0; i < q->r.rcpt_count; i++) {
		uint32_t k = q->idx[i];
		if (k >= env->rcpt_count)
			continue;
		h->rcpt_vals[nr] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
							.value.bytes = bytes_of(env->rcpt[k].addr)};
		h->param_vals[nr] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
							 .value.bytes = bytes_of(env->rcpt[k].params)};
		nr++;
	}
	char id[32];
	spool_id_format(q->r.id, id, sizeof(id));
	amqp_table_entry_t e[AMQP_HEADERS_MAX];
	unsigned n = 0;
	/* doc/amqp.md lists these; consumers rely on the names. */
	hdr_str(e, &n, "envelope-from", env->mail_from);
	e[n++] = (amqp_table_entry_t){
		.key = bytes_of("envelope-to"),
		.value = {.kind = AMQP_FIELD_KIND_ARRAY,
			  .value.array = {.num_entries = (int)nr, .entries = h->rcpt_vals}}};
	hdr_str(e, &n, "mail-params", env->mail_params);
	e[n++] = (amqp_table_entry_t){
		.key = bytes_of("rcpt-params"),
		.value = {.kind = AMQP_FIELD_KIND_ARRAY,
			  .value.array = {.num_entries = (int)nr, .entries = h->param_vals}}};
	hdr_str(e, &n, "client-addr", env->client_addr);
	hdr_i64(e, &n, "client-port", env->client_port);
	hdr_str(e, &n, "helo", env->helo);
	hdr_str(e, &n, "proto", env->proto);
	hdr_str(e, &n, "tls", env->tls);
	hdr_i64(e, &n, "received-at-us", fm.m.received_at_us);
	hdr_i64(e, &n, "size", (int64_t)fm.m.size);
	hdr_i64(e, &n, "attempt", q->r.attempt);
	hdr_str(e, &n, "accepted-by", h->cfg->hostname);
	DS_ASSERT(n <= AMQP_HEADERS_MAX);
	amqp_basic_properties_t props = {
		._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
			  AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG |
			  AMQP_BASIC_APP_ID_FLAG,
		.content_type = bytes_of("message/rfc822"),
		.delivery_mode = AMQP_DELIVERY_PERSISTENT,
		.message_id = bytes_of(id),
		.timestamp = (uint64_t)(fm.m.received_at_us / 1000000),
		.headers = {.num_entries = (int)n, .entries = e},
		.app_id = bytes_of("dotspool"),
	};
	amqp_bytes_t body = {.len = (size_t)fm.m.size, .bytes = h->body};
	uint64_t t0 = (uint64_t)ds_wall_us();
	ret = amqp_basic_publish(h->conn, AMQP_CHANNEL, bytes_of(s->amqp.exchange),
				 bytes_of(s->amqp.routing_key), 1 /* mandatory */, 0, &props, body);
	spool_fetch_put(h->fetch, &fm);
	if (ret != AMQP_STATUS_OK) {
		post(h, q->r.cookie, IO_HANDOFF_CONN_LOST, 0, "publish failed: %s", amqp_error_string2(ret));
		return -EPIPE;
	}
	struct inflight *p = &h->win[h->next_tag % h->window];
	DS_ASSERT(!p->used);
	*p = (struct inflight){.used = true,
			       .tag = h->next_tag,
			       .cookie = q->r.cookie,
			       .id = q->r.id,
			       .published_ms = ds_mono_ms(),
			       .published_us = t0};
	h->next_tag++;
	h->in_flight++;
	return 0;
}

static void publish_queued(struct io_handoff *h)
{
	struct queued q;
	for (unsigned i = 0; i < AMQP_PUBLISH_BATCH && h->up; i++) {
		if (h->win[h->next_tag % h->window].used)
			return; /* the window is full (or its oldest slot still waits) */
		if (!take(h, &q))
			return;
		int ret = publish(h, &q);
		free(q.idx);
		if (ret == -EPIPE)
			lost(h, "publish failed");
	}
}

/*
 * While down: what was queued goes back at once (the worker starts nothing new while it sees
 * no connection, and puts these back in its queue until the reconnection; holding them here
 * would only keep its slots, and its shutdown, waiting).
 */
static void fail_queued(struct io_handoff *h)
{
	struct queued q;
	while (take(h, &q)) {
		post(h, q.r.cookie, IO_HANDOFF_NO_CONN, 0, "no connection to the broker: %s",
		     h->st.last_error);
		free(q.idx);
	}
}

/* ---- confirms ---- */

static void settle_one(struct io_handoff *h, struct inflight *p, bool ack)
{
	p->used = false;
	DS_ASSERT(h->in_flight > 0);
	h->in_flight--;
	uint64_t now = (uint64_t)ds_wall_us();
	if (!ack)
		post(h, p->cookie, IO_HANDOFF_NACKED, 0, "nacked by the broker (delivery tag %" PRIu64 ")",
		     p->tag);
	else if (p->returned)
		post(h, p->cookie, IO_HANDOFF_RETURNED, 0, "returned by the broker: %s", p->why);
	else
		post(h, p->cookie, IO_HANDOFF_CONFIRMED, now > p->published_us ? now - p->published_us : 0,
		     "confirmed by the broker (delivery tag %" PRIu64 ")", p->tag);
}

static void settle(struct io_handoff *h, uint64_t tag, bool multiple, bool ack)
{
	if (!multiple) {
		struct inflight *p = &h->win[tag % h->window];
		if (p->used && p->tag == tag)
			settle_one(h, p, ack);
		return; /* not ours any more: timed out */
	}
	/* Every tag up to this one, oldest first (a consumer may see the results in order). */
	uint64_t lo = h->next_tag > h->window ? h->next_tag - h->window : 1;
	for (uint64_t t = lo; t <= tag && t < h->next_tag; t++) {
		struct inflight *p = &h->win[t % h->window];
		if (p->used && p->tag == t)
			settle_one(h, p, ack);
	}
}

/* basic.return: its content follows (header, body); the message_id says which publish. */
static int on_return(struct io_handoff *h, const amqp_frame_t *f)
{
	const amqp_basic_return_t *rt = f->payload.method.decoded;
	char why[120];
	snprintf(why, sizeof(why), "%u %.*s (exchange '%.*s', routing key '%.*s')", rt->reply_code,
		 (int)rt->reply_text.len, (const char *)rt->reply_text.bytes, (int)rt->exchange.len,
		 (const char *)rt->exchange.bytes, (int)rt->routing_key.len,
		 (const char *)rt->routing_key.bytes);
	amqp_message_t msg;
	amqp_rpc_reply_t rr = amqp_read_message(h->conn, f->channel, &msg, 0);
	if (rr.reply_type != AMQP_RESPONSE_NORMAL)
		return -EPROTO;
	uint64_t id = 0;
	bool have = false;
	if (msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
		char text[32];
		size_t n = DS_MIN(msg.properties.message_id.len, sizeof(text) - 1);
		memcpy(text, msg.properties.message_id.bytes, n);
		text[n] = 0;
		have = spool_id_parse(text, &id) == 0;
	}
	amqp_destroy_message(&msg);
	for (uint32_t i = 0; have && i < h->window; i++) {
		struct inflight *p = &h->win[i];
		if (p->used && p->id == id) {
			p->returned = true;
			snprintf(p->why, sizeof(p->why), "%s", why);
			break;
		}
	}
	return 0;
}

static void read_frames(struct io_handoff *h)
{
	while (h->up) {
		amqp_frame_t f;
		struct timeval tv = {0, 0};
		int r = amqp_simple_wait_frame_noblock(h->conn, &f, &tv);
		if (r == AMQP_STATUS_TIMEOUT)
			return;
		if (r != AMQP_STATUS_OK) {
			lost(h, "%s", amqp_error_string2(r));
			return;
		}
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		switch (f.payload.method.id) {
		case AMQP_BASIC_ACK_METHOD: {
			const amqp_basic_ack_t *a = f.payload.method.decoded;
			settle(h, a->delivery_tag, a->multiple, true);
			break;
		}
		case AMQP_BASIC_NACK_METHOD: {
			const amqp_basic_nack_t *a = f.payload.method.decoded;
			settle(h, a->delivery_tag, a->multiple, false);
			break;
		}
		case AMQP_BASIC_RETURN_METHOD:
			if (on_return(h, &f) < 0) {
				lost(h, "reading a basic.return failed");
				return;
			}
			break;
		case AMQP_CHANNEL_CLOSE_METHOD: {
			const amqp_channel_close_t *c = f.payload.method.decoded;
			char why[160];
			snprintf(why, sizeof(why), "channel closed by broker: %u %.*s", c->reply_code,
				 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
			amqp_channel_close_ok_t ok = {0};
			amqp_send_method(h->conn, AMQP_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
			lost(h, "%s", why);
			return;
		}
		case AMQP_CONNECTION_CLOSE_METHOD: {
			const amqp_connection_close_t *c = f.payload.method.decoded;
			char why[160];
			snprintf(why, sizeof(why), "connection closed by broker: %u %.*s", c->reply_code,
				 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
			amqp_connection_close_ok_t ok = {0};
			amqp_send_method(h->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
			lost(h, "%s", why);
			return;
		}
		default:
			break; /* connection.blocked/unblocked and the like: nothing to do */
		}
		amqp_maybe_release_buffers(h->conn);
	}
}

/* Unconfirmed for longer than --deliver-timeout-confirm-s: deferred; a late ack is ignored. */
static void expire_confirms(struct io_handoff *h, int64_t now_ms)
{
	int64_t limit_ms = (int64_t)h->dc->timeout_confirm_s * 1000;
	for (uint32_t i = 0; h->in_flight && i < h->window; i++) {
		struct inflight *p = &h->win[i];
		if (!p->used || now_ms - p->published_ms < limit_ms)
			continue;
		p->used = false;
		h->in_flight--;
		post(h, p->cookie, IO_HANDOFF_TIMEOUT, 0, "no confirm from the broker within %u s",
		     h->dc->timeout_confirm_s);
	}
}

/* ---- the thread ---- */

static bool stopping(struct io_handoff *h)
{
	pthread_mutex_lock(&h->mu);
	bool s = h->stop;
	pthread_mutex_unlock(&h->mu);
	return s;
}

static void *thread_main(void *arg)
{
	struct io_handoff *h = arg;
	char name[16];
	snprintf(name, sizeof(name), "amqp-%u", h->no);
	pthread_setname_np(pthread_self(), name);
	while (!stopping(h)) {
		int64_t now = ds_mono_ms();
		if (!h->up && now >= h->next_connect_ms)
			try_connect(h);
		if (h->up) {
			read_frames(h);
			publish_queued(h);
			read_frames(h);
		}
		now = ds_mono_ms();
		if (h->up)
			expire_confirms(h, now);
		else
			fail_queued(h);
		notify(h);
		int timeout = AMQP_POLL_MS;
		if (!h->up)
			timeout = (int)DS_MAX(DS_MIN(h->next_connect_ms - now, (int64_t)AMQP_POLL_MS),
					      (int64_t)0);
		else if (amqp_frames_enqueued(h->conn) || amqp_data_in_buffer(h->conn))
			timeout = 0;
		struct pollfd p[2] = {{.fd = h->wake_fd, .events = POLLIN},
				      {.fd = h->up ? amqp_get_sockfd(h->conn) : -1, .events = POLLIN}};
		if (poll(p, 2, timeout) > 0 && (p[0].revents & POLLIN)) {
			uint64_t v;
			ssize_t r = read(h->wake_fd, &v, sizeof(v));
			(void)r;
		}
	}
	if (h->up) {
		/* Unconfirmed ones get no result: the worker recorded them deferred at its stop deadline. */
		amqp_channel_close(h->conn, AMQP_CHANNEL, AMQP_REPLY_SUCCESS);
		amqp_connection_close(h->conn, AMQP_REPLY_SUCCESS);
	}
	conn_drop(h);
	return NULL;
}

/* ---- the worker's side ---- */

static int amqp_create(struct io_handoff **out, const struct io_config *cfg, unsigned no)
{
	struct io_handoff *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	*out = h;
	h->cfg = cfg;
	h->dc = &cfg->deliver;
	h->no = no;
	h->window = DS_MAX(cfg->deliver.amqp_window, 1u);
	h->wake_fd = h->event_fd = h->sock_fd = -1;
	h->backoff_ms = AMQP_BACKOFF_MIN_MS;
	h->node = no; /* workers start on different nodes of the list: the load spreads */
	pthread_mutex_init(&h->mu, NULL);
	h->rq_cap = h->res_cap = 2 * h->window;
	h->rq = calloc(h->rq_cap, sizeof(*h->rq));
	h->res = calloc(h->res_cap, sizeof(*h->res));
	h->win = calloc(h->window, sizeof(*h->win));
	if (!h->rq || !h->res || !h->win)
		return -ENOMEM;
	h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	h->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->wake_fd < 0 || h->event_fd < 0)
		return -errno;
	int ret = spool_fetch_open(&h->fetch, cfg->spool_dir, AMQP_FETCH_MAPS);
	if (ret < 0)
		return ret;
	ret = -pthread_create(&h->thread, NULL, thread_main, h);
	if (ret < 0)
		return ret;
	h->thread_started = true;
	return 0;
}

static uint32_t amqp_slots(const struct io_handoff *h)
{
	return h->window;
}

static int amqp_submit(struct io_handoff *h, const struct io_handoff_req *r)
{
	uint32_t *idx = malloc(DS_MAX(r->rcpt_count, 1u) * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	memcpy(idx, r->rcpt_idx, r->rcpt_count * sizeof(*idx));
	int ret = 0;
	pthread_mutex_lock(&h->mu);
	if (h->rq_len < h->rq_cap) {
		struct queued *q = &h->rq[(h->rq_head + h->rq_len) % h->rq_cap];
		*q = (struct queued){.r = *r, .idx = idx, .queued_ms = ds_mono_ms()};
		q->r.rcpt_idx = NULL;
		h->rq_len++;
	} else {
		ret = -ENOSPC;
	}
	pthread_mutex_unlock(&h->mu);
	if (ret < 0)
		free(idx);
	else
		h->kick_owed = true;
	return ret;
}

static void amqp_kick(struct io_handoff *h)
{
	if (!h->kick_owed)
		return;
	h->kick_owed = false;
	uint64_t one = 1;
	ssize_t r = write(h->wake_fd, &one, sizeof(one));
	(void)r;
}

static int amqp_event_fd(const struct io_handoff *h)
{
	return h->event_fd;
}

static unsigned amqp_results(struct io_handoff *h, struct io_handoff_result *out, unsigned max)
{
	unsigned n = 0;
	pthread_mutex_lock(&h->mu);
	while (n < max && h->res_len) {
		out[n++] = h->res[h->res_head];
		h->res_head = (h->res_head + 1) % h->res_cap;
		h->res_len--;
	}
	pthread_mutex_unlock(&h->mu);
	return n;
}

static void amqp_state(struct io_handoff *h, struct io_handoff_state *out)
{
	pthread_mutex_lock(&h->mu);
	*out = h->st;
	pthread_mutex_unlock(&h->mu);
}

static void amqp_destroy(struct io_handoff *h)
{
	if (!h)
		return;
	if (h->thread_started) {
		pthread_mutex_lock(&h->mu);
		h->stop = true;
		/* A publish blocked by a broker that stopped reading (alarm) returns now. */
		if (h->sock_fd >= 0)
			shutdown(h->sock_fd, SHUT_RDWR);
		pthread_mutex_unlock(&h->mu);
		uint64_t one = 1;
		ssize_t r = write(h->wake_fd, &one, sizeof(one));
		(void)r;
		pthread_join(h->thread, NULL);
	}
	for (uint32_t i = 0; h->rq && i < h->rq_len; i++)
		free(h->rq[(h->rq_head + i) % h->rq_cap].idx);
	if (h->fetch)
		spool_fetch_close(h->fetch);
	if (h->wake_fd >= 0)
		close(h->wake_fd);
	if (h->event_fd >= 0)
		close(h->event_fd);
	pthread_mutex_destroy(&h->mu);
	free(h->rq);
	free(h->res);
	free(h->win);
	free(h->body);
	free(h->rcpt_vals);
	free(h->param_vals);
	free(h);
}

const struct io_handoff_ops io_handoff_amqp = {
	.name = "amqp",
	.create = amqp_create,
	.slots = amqp_slots,
	.submit = amqp_submit,
	.kick = amqp_kick,
	.event_fd = amqp_event_fd,
	.results = amqp_results,
	.state = amqp_state,
	.destroy = amqp_destroy,
};
