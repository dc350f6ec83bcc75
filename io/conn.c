/* SPDX-License-Identifier: MIT */
/*
 * Connections of one worker: accept, receive, feed the session, send its
 * replies, and glue the session's data to the worker's spool lane.
 *
 * Rules that keep this simple and bounded:
 *  - one send in flight per connection, and the session is not fed while
 *    it is in flight (its output buffer stays put under the kernel);
 *  - input the session cannot take yet (waiting for the spool, output
 *    full) is kept in a per-connection buffer allocated only then, and
 *    receiving stops when that buffer is full: a client that does not read
 *    its replies stops being read;
 *  - a connection is freed only when nothing is in flight for it: no recv,
 *    no send, no commit the spool still owes an answer for.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "ds_assert.h"
#include "ds_clock.h"
#include "iplimit.h"
#include "proxy.h"
#include "rcpt_table.h"
#include "throttle.h"
#include "verify.h"
#include "dlv.h"
#include "gap.h"
#include "ring.h"
#include "watermark.h"

/* Room the trace header may take in the spool on top of the input bytes. */
#define IO_SPOOL_SLACK_BYTES 4096
/* A slow sender must deliver this much data to push its deadline out. */
#define IO_DATA_PROGRESS_BYTES 1024

static const char io_bye[] = "421 4.3.2 Service shutting down, closing transmission channel\r\n";

static inline uint64_t conn_key(const struct io_conn *c)
{
	return ((uint64_t)c->idx << 32) | c->gen;
}

static struct io_conn *conn_lookup(struct io_worker *w, uint64_t key)
{
	uint32_t idx = (uint32_t)(key >> 32);
	if (idx >= w->conn_fresh)
		return NULL;
	struct io_conn *c = &w->conns[idx];
	if (c->state == IO_CONN_FREE || c->gen != (uint32_t)key)
		return NULL;
	return c;
}

static void conn_close(struct io_conn *c);
static void conn_resume(struct io_conn *c);

/* Wait for room in the spool lane's staging memory (io_conns_resume_parked). */
static void conn_park(struct io_conn *c)
{
	if (c->parked)
		return;
	c->parked = true;
	c->next_parked = c->w->parked;
	c->w->parked = c;
}

/* The client sent its last byte and every byte of it has been dealt with. */
static bool conn_input_done(const struct io_conn *c)
{
	return c->peer_eof && c->pending_len == 0 && !c->commit_pending && !c->parked;
}

/* Textual IP of a peer ("127.0.0.1", "::1"); its port. */
static uint16_t addr_text(const struct sockaddr_storage *ss, char *text, size_t cap)
{
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, text, (socklen_t)cap);
		return ntohs(in6->sin6_port);
	}
	const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
	inet_ntop(AF_INET, &in->sin_addr, text, (socklen_t)cap);
	return ntohs(in->sin_port);
}

/* Send n bytes at p (valid until the completion): plaintext replies or TLS records. */
static void conn_send(struct io_conn *c, const uint8_t *p, size_t n)
{
	struct io_uring_sqe *sqe = io_sqe(&c->w->ring);
	io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_SEND, conn_key(c)));
	c->send_inflight = true;
}

static void log_refusal(struct io_worker *w, const char *reason, unsigned code, const char *client)
{
	struct obs_log_refusal f = {.reason = reason, .code = code, .client = client};
	obs_log_refused(w->log, &f);
}

/* io's own goodbye line (421 at shutdown) left: count and log it like the session's refusals. */
static void conn_bye_out(struct io_conn *c)
{
	char reason[sizeof(io_bye)];
	obs_metrics_reply(c->w->m, 421);
	snprintf(reason, sizeof(reason), "%.*s", (int)(sizeof(io_bye) - 7), io_bye + 4);
	struct obs_log_refusal f = {.reason = reason,
				    .code = 421,
				    .client = c->peer_text,
				    .helo = c->s ? smtp_session_helo(c->s) : NULL,
				    .sender = c->s ? smtp_session_mail_from(c->s) : NULL};
	obs_log_refused(c->w->log, &f);
}

/* ---- ingress policy (issue 17) ---- */

_Static_assert((int)OBS_THROTTLE_CONNECTION_RATE == (int)IO_THROTTLE_CONN &&
		       (int)OBS_THROTTLE_MESSAGE_RATE == (int)IO_THROTTLE_MSG &&
		       (int)OBS_THROTTLE_RECIPIENT_RATE == (int)IO_THROTTLE_RCPT,
	       "the metrics' limits follow io/throttle.h's kinds");

static const char *const throttle_key[IO_THROTTLE_KINDS] = {
	"client_connection_rate_max", "client_message_rate_max", "client_recipient_rate_max"};

/* The client as the limits see it: its key, and whether a trusted network holds it. */
static void conn_client_set(struct io_conn *c)
{
	const struct io_policy_config *pc = &c->w->cfg->policy;
	uint8_t a16[16];
	io_client_key_of(&c->peer, pc->client_ipv6_prefix_length, &c->client);
	io_client_addr16(&c->peer, a16);
	c->trusted = io_cidr_match(pc->trusted, pc->trusted_count, a16);
}

/* One event of kind for the client: -EBUSY over its limit (counted, named for the log line). */
static int conn_throttle(struct io_conn *c, enum io_throttle_kind kind)
{
	struct io_throttle *t = c->w->sh->throttle;
	if (!t || c->trusted)
		return 0;
	if (io_throttle_hit(t, &c->client, kind, ds_mono_ms()) == 0)
		return 0;
	obs_metrics_throttled(c->w->m, (enum obs_throttle_limit)kind);
	c->limit_note = throttle_key[kind];
	return -EBUSY;
}

/* ---- the session's sink: spool calls ---- */

static int sink_data_begin(void *ctx, char *id, size_t id_cap)
{
	struct io_conn *c = ctx;
	DS_ASSERT(!c->txn_open);
	int ret = spool_txn_begin(c->w->lane, &c->txn);
	if (ret < 0)
		return ret;
	c->txn_open = true;
	spool_id_format(c->txn.id, id, id_cap);
	io_gap_on_begin(c);
	return 0;
}

static int sink_data_write(void *ctx, const void *buf, size_t len)
{
	struct io_conn *c = ctx;
	if (!c->txn_open)
		return -EIO;
	c->progress_bytes += (uint32_t)DS_MIN(len, UINT32_MAX / 2);
	io_gap_on_write(c, buf, len);
	return spool_txn_append(c->w->lane, &c->txn, buf, len);
}

static int sink_data_commit(void *ctx, const struct ds_envelope *env)
{
	struct io_conn *c = ctx;
	if (!c->txn_open)
		return -EIO;
	c->txn_open = false;
	c->env = *env; /* its strings stay in the session until commit_done */
	c->dot_us = ds_mono_us();
	if (io_gap_on_commit(c, env)) {
		/* A proven retry of a message already queued (io/gap.h): store nothing, answer in conn_feed. */
		spool_txn_abort(c->w->lane, &c->txn);
		c->commit_pending = true;
		return 0;
	}
	int ret = spool_txn_commit(c->w->lane, &c->txn, env, conn_key(c));
	if (ret == 0)
		spool_txn_location(&c->txn, &c->commit_seq, &c->commit_off);
	if (ret < 0 && ret != -EAGAIN) {
		/* Not taken (the txn failed earlier): the session answers 451/452 now. */
		obs_metrics_message_rejected(c->w->m);
		return ret;
	}
	c->commit_pending = true;
	if (ret == -EAGAIN) {
		/*
		 * No room for the commit record in the lane's staging memory
		 * right now (a large envelope behind a lot of staged data): the
		 * session waits for commit_done as usual, and the commit is
		 * retried from c->env once writes have freed room.
		 */
		c->commit_retry = true;
		conn_park(c);
	}
	return 0;
}

static void sink_data_abort(void *ctx)
{
	struct io_conn *c = ctx;
	io_gap_on_abort(c);
	if (c->txn_open) {
		spool_txn_abort(c->w->lane, &c->txn);
		c->txn_open = false;
	}
}

static int64_t sink_now_us(void *ctx)
{
	return ds_wall_us();
}

/* One log line per final 4xx/5xx reply the session queues, with its transaction's sender. */
static void sink_refused(void *ctx, unsigned code, const char *line, const char *helo, const char *mail_from)
{
	struct io_conn *c = ctx;
	char reason[400]; /* the text without "NNN ", and the policy limit behind it */
	if (c->limit_note)
		snprintf(reason, sizeof(reason), "%s (limit %s)", line + 4, c->limit_note);
	else
		snprintf(reason, sizeof(reason), "%s", line + 4);
	c->limit_note = NULL;
	struct obs_log_refusal f = {
		.reason = reason, .code = code, .client = c->peer_text, .helo = helo, .sender = mail_from};
	obs_log_refused(c->w->log, &f);
}

/* Replies are counted by class as the session queues them. */
static void sink_replied(void *ctx, unsigned code)
{
	struct io_conn *c = ctx;
	obs_metrics_reply(c->w->m, code);
}

/*
 * MAIL: no new transaction while the spool is above its high watermark
 * (io/watermark.c). One relaxed load of the server-wide flag, no lock;
 * transactions already past MAIL are not asked again and finish.
 */
static int sink_mail_ok(void *ctx)
{
	struct io_conn *c = ctx;
	if (io_watermark_high())
		return -ENOSPC;
	return conn_throttle(c, IO_THROTTLE_MSG) < 0 ? -EBUSY : 0;
}

/* An unknown recipient: -ENOENT (550), or -EUSERS past --session-unknown-recipients-max (421, close). */
static int conn_unknown(struct io_conn *c)
{
	const struct io_policy_config *pc = &c->w->cfg->policy;
	obs_metrics_recipient_unknown(c->w->m);
	c->unknown_rcpts++;
	if (!c->trusted && pc->session_unknown_recipients_max &&
	    c->unknown_rcpts > pc->session_unknown_recipients_max) {
		obs_metrics_throttled(c->w->m, OBS_THROTTLE_UNKNOWN_MAX);
		c->limit_note = "session_unknown_recipients_max";
		return -EUSERS;
	}
	return -ENOENT;
}

/*
 * RCPT (issue 17): the client's recipient rate, then the recipient table
 * for a recipient of an accepted domain (the session asks only for
 * those); <postmaster> without a domain is always taken (RFC 5321 4.5.1).
 * Unknown recipients count toward --session-unknown-recipients-max:
 * past it, 421 and close. Trusted networks skip the limits, not the table.
 */
static int sink_rcpt_ok(void *ctx, const char *mailbox, size_t len, const char *domain, size_t domain_len)
{
	struct io_conn *c = ctx;
	if (conn_throttle(c, IO_THROTTLE_RCPT) < 0)
		return -EBUSY;
	if (!domain)
		return 0;
	if (c->w->verify && io_verify_domain(c->w, domain, domain_len)) {
		/* The next hop's word (io/verify.h): cached, or the session waits for the probe. */
		int r = io_verify_ask(c->w, mailbox, len, conn_key(c));
		return r == -ENOENT ? conn_unknown(c) : r;
	}
	int known = io_rcpt_lookup(mailbox, len);
	if (known != 0)
		return 0; /* known, or no table (-ENOENT): today's behaviour */
	return conn_unknown(c);
}

static const struct smtp_sink io_sink = {
	.data_begin = sink_data_begin,
	.data_write = sink_data_write,
	.data_commit = sink_data_commit,
	.data_abort = sink_data_abort,
	.now_us = sink_now_us,
	.refused = sink_refused,
	.replied = sink_replied,
	.mail_ok = sink_mail_ok,
	.rcpt_ok = sink_rcpt_ok,
};

/* ---- pool ---- */

int io_conns_init(struct io_worker *w)
{
	w->conn_max = w->cfg->max_connections;
	size_t a = smtp_session_size(&w->smtp_cfg), b = smtp_session_size(&w->lmtp_cfg);
	w->session_size = (DS_MAX(a, b) + 63) & ~(size_t)63;
	/*
	 * Both reserved at start-up for the whole-server limit (a worker may
	 * get any share of the connections), but untouched: a page becomes
	 * memory only when a connection first uses a slot on it, so a worker
	 * costs what its peak concurrency needs, not max-connections.
	 */
	w->conns_bytes = (size_t)w->conn_max * sizeof(*w->conns);
	void *conns = mmap(NULL, w->conns_bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (conns == MAP_FAILED)
		return -ENOMEM;
	w->conns = conns;
	void *mem = mmap(NULL, (size_t)w->conn_max * w->session_size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	w->session_mem = mem;
	w->conn_fresh = 0;
	return io_gap_worker_init(w);
}

/* A free slot: a reused one, else the next never-used one. NULL when all are taken. */
static struct io_conn *conn_slot_get(struct io_worker *w)
{
	struct io_conn *c = w->free_list;
	if (c) {
		w->free_list = c->next_free;
		return c;
	}
	if (w->conn_fresh >= w->conn_max)
		return NULL;
	c = &w->conns[w->conn_fresh];
	c->idx = w->conn_fresh++;
	return c;
}

void io_conns_fini(struct io_worker *w)
{
	if (w->conns) {
		for (uint32_t i = 0; i < w->conn_fresh; i++) {
			struct io_conn *c = &w->conns[i];
			if (c->state != IO_CONN_FREE && c->fd >= 0)
				close(c->fd);
			if (c->tls)
				io_tls_conn_destroy(c->tls);
			c->tls = NULL;
			free(c->pending);
			io_gap_conn_free(c);
		}
		munmap(w->conns, w->conns_bytes);
	}
	if (w->session_mem)
		munmap(w->session_mem, (size_t)w->conn_max * w->session_size);
	io_gap_worker_fini(w);
	w->conns = NULL;
	w->session_mem = NULL;
}

/* ---- receive side ---- */

static void conn_arm_recv(struct io_conn *c)
{
	struct io_worker *w = c->w;
	if (c->recv_armed || c->peer_eof || (c->state != IO_CONN_ACTIVE && c->state != IO_CONN_PROXY))
		return;
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_RECV, conn_key(c)));
	c->recv_armed = true;
	c->recv_cancel = false;
}

static void conn_pause_recv(struct io_conn *c)
{
	if (!c->recv_armed || c->recv_cancel)
		return;
	struct io_uring_sqe *sqe = io_sqe(&c->w->ring);
	io_uring_prep_cancel64(sqe, io_ud(IO_OP_RECV, conn_key(c)), 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0));
	c->recv_cancel = true;
}

/* Keep bytes the session cannot take yet. Returns -ENOBUFS past the hard cap. */
static int pending_append(struct io_conn *c, const uint8_t *buf, size_t len)
{
	const struct io_config *cfg = c->w->cfg;
	/*
	 * Past pending_input_max the recv is cancelled (conn_pause_recv), but
	 * completions the kernel had already posted still arrive: those are
	 * kept, and they are bounded by the worker's provided buffers. Only
	 * input beyond that means a broken state.
	 */
	size_t hard_cap =
		(size_t)cfg->pending_input_max + (size_t)c->w->ring.rbuf_count * c->w->ring.rbuf_size;
	if (c->tls)
		hard_cap += IO_TLS_IN_CAP_BYTES; /* ciphertext already fed is decrypted whole */
	size_t need = (size_t)c->pending_len + len;
	if (need > hard_cap)
		return -ENOBUFS;
	if (need > c->pending_cap) {
		size_t cap = DS_MAX((size_t)c->pending_cap * 2, (size_t)4096);
		while (cap < need)
			cap *= 2;
		cap = DS_MIN(cap, hard_cap);
		uint8_t *p = realloc(c->pending, cap);
		if (!p)
			return -ENOMEM;
		c->pending = p;
		c->pending_cap = (uint32_t)cap;
	}
	memcpy(c->pending + c->pending_len, buf, len);
	c->pending_len += (uint32_t)len;
	if (c->pending_len >= cfg->pending_input_max)
		conn_pause_recv(c);
	return 0;
}

static void pending_drop(struct io_conn *c, size_t n)
{
	DS_ASSERT(n <= c->pending_len);
	memmove(c->pending, c->pending + n, c->pending_len - n);
	c->pending_len -= (uint32_t)n;
	if (c->pending_len == 0 && c->pending_cap > 65536) {
		/* Do not let one burst pin memory for the life of an idle connection. */
		free(c->pending);
		c->pending = NULL;
		c->pending_cap = 0;
	}
}

static bool conn_can_feed(const struct io_conn *c)
{
	return c->state == IO_CONN_ACTIVE && !c->send_inflight && !c->commit_pending && !c->want_close &&
	       !c->parked && !c->bye_pending && !c->rcpt_wait;
}

static void conn_push_deadline(struct io_conn *c, bool replied)
{
	const struct io_config *cfg = c->w->cfg;
	enum smtp_phase ph = smtp_session_phase(c->s);
	int64_t now = ds_mono_ms();
	if (ph == SMTP_PHASE_DATA) {
		/* Per data block, but a trickle does not count as progress. */
		if (replied || c->progress_bytes >= IO_DATA_PROGRESS_BYTES) {
			c->deadline_ms = now + (int64_t)cfg->timeout_data_s * 1000;
			c->progress_bytes = 0;
		}
	} else if (ph == SMTP_PHASE_COMMAND && replied) {
		/* A command's clock starts when we have answered the previous one. */
		c->deadline_ms = now + (int64_t)cfg->timeout_command_s * 1000;
	}
}

/*
 * STARTTLS was accepted and its 220 is queued (RFC 3207). Everything the
 * client sent after the STARTTLS line, in this read, in c->pending or in
 * reads that complete before the 220 has gone out, was sent before the
 * client could have seen the 220: it is dropped, never executed
 * (CVE-2011-0411). The session has already reset itself to the
 * post-greeting state.
 */
static void conn_starttls(struct io_conn *c)
{
	int ret = c->w->tls ? io_tls_conn_create(&c->tls, c->w->tls) : -EOPNOTSUPP;
	if (ret < 0) {
		/* Out of TLS sessions on this worker: the client retries later. */
		c->want_close = true;
		return;
	}
	c->tls_starting = true;
	c->pending_len = 0;
}

/* A proven retry (io/gap.h): nothing was stored, the client hears the original's id. */
static void conn_gap_dup(struct io_conn *c)
{
	char id[32];
	spool_id_format(io_gap_dup_id(c), id, sizeof(id));
	c->commit_pending = false;
	enum smtp_status st = smtp_session_commit_dup(c->s, id);
	io_gap_on_dup_replied(c);
	if (st == SMTP_CLOSE)
		c->want_close = true;
	if (c->w->stopping && smtp_session_idle(c->s))
		c->bye_pending = true;
	c->deadline_ms = ds_mono_ms() + (int64_t)c->w->cfg->timeout_command_s * 1000;
}

/*
 * Hand bytes to the session until it stops taking them. Returns how many
 * it took.
 */
static size_t conn_feed(struct io_conn *c, const uint8_t *buf, size_t len)
{
	struct io_worker *w = c->w;
	size_t off = 0;

	while (off < len && conn_can_feed(c)) {
		size_t room = spool_lane_append_room(w->lane);
		if (room <= IO_SPOOL_SLACK_BYTES) {
			/* The lane's staging memory is full of writes in flight: wait for them. */
			conn_park(c);
			break;
		}
		size_t n = DS_MIN(len - off, room - IO_SPOOL_SLACK_BYTES);
		size_t used = 0, out_before = 0;
		smtp_session_output(c->s, &out_before);
		enum smtp_status st = smtp_session_input(c->s, buf + off, n, &used);
		DS_ASSERT(used <= n);
		off += used;
		size_t out_after = 0;
		smtp_session_output(c->s, &out_after);
		conn_push_deadline(c, out_after > out_before);

		switch (st) {
		case SMTP_OK:
			if (used == 0 && n > 0 && off < len)
				return off; /* defensive: never spin */
			break;
		case SMTP_WAIT_COMMIT:
			DS_ASSERT(c->commit_pending);
			if (io_gap_dup_id(c)) {
				conn_gap_dup(c);
				return off;
			}
			/*
			 * No client clock runs while we wait for our own flush: the
			 * spool always settles and a commit is never abandoned (a 451
			 * for a message that then becomes durable would be sent
			 * twice). The command clock starts at the reply
			 * (io_conn_settled).
			 */
			c->deadline_ms = 0;
			return off;
		case SMTP_WAIT_RCPT:
			/* A policy answer that comes later (verification): bounded by its own timeout. */
			c->rcpt_wait = true;
			c->deadline_ms = 0;
			return off;
		case SMTP_BLOCKED:
			return off;
		case SMTP_STARTTLS:
			conn_starttls(c);
			return len; /* never trust the plaintext after it */
		case SMTP_CLOSE:
			c->want_close = true;
			return len; /* nothing after QUIT/421 is read */
		}
	}
	return off;
}

/* TLS: move the session's replies into records, then send the ciphertext. */
static void conn_flush_tls(struct io_conn *c)
{
	size_t len = 0;
	if (c->tls_up && !c->tls_failed && !c->tls_closing) {
		for (;;) {
			const uint8_t *out = smtp_session_output(c->s, &len);
			if (len == 0 && c->bye_pending) {
				if (io_tls_write(c->tls, (const uint8_t *)io_bye, sizeof(io_bye) - 1) > 0) {
					conn_bye_out(c);
					c->bye_pending = false;
					c->want_close = true;
				}
				break;
			}
			if (len == 0)
				break;
			ssize_t r = io_tls_write(c->tls, out, len);
			if (r == -EAGAIN)
				break; /* the record buffer is full: after this send */
			if (r < 0) {
				c->tls_failed = true;
				c->want_close = true;
				break;
			}
			smtp_session_output_consumed(c->s, (size_t)r);
		}
		smtp_session_output(c->s, &len);
		if (c->want_close && len == 0 && !c->bye_pending) {
			io_tls_close_notify(c->tls);
			c->tls_closing = true;
		}
	}
	size_t n = 0;
	const uint8_t *p = io_tls_output(c->tls, &n);
	if (n == 0) {
		if (c->want_close && (c->tls_closing || c->tls_failed || !c->tls_up))
			conn_close(c);
		else if (conn_input_done(c) && len == 0 && !c->bye_pending)
			conn_close(c); /* half-closed and answered */
		return;
	}
	c->send_len = (uint32_t)n;
	conn_send(c, p, n);
}

static void conn_flush_output(struct io_conn *c)
{
	struct io_worker *w = c->w;
	if (c->send_inflight || c->state != IO_CONN_ACTIVE)
		return;
	if (c->tls && !c->tls_starting) {
		conn_flush_tls(c);
		return;
	}
	size_t len = 0;
	const uint8_t *out = c->s ? smtp_session_output(c->s, &len) : NULL;
	if (len == 0 && c->bye_pending && !c->tls_starting) {
		out = (const uint8_t *)io_bye;
		len = sizeof(io_bye) - 1;
		c->bye_pending = false;
		c->want_close = true;
		c->send_len = 0; /* marks the static line: nothing to consume in the session */
	} else if (len == 0) {
		if (c->want_close || (conn_input_done(c) && !c->tls_starting))
			conn_close(c);
		return;
	} else {
		c->send_len = (uint32_t)len;
	}
	conn_send(c, out, len);
	if (c->deadline_ms == 0)
		c->deadline_ms = ds_mono_ms() + (int64_t)w->cfg->timeout_command_s * 1000;
}

static void conn_try_free(struct io_conn *c)
{
	struct io_worker *w = c->w;
	if (c->state != IO_CONN_CLOSING || c->busy || c->hs_queued || c->recv_armed || c->send_inflight ||
	    c->commit_pending || c->parked)
		return;
	io_gap_on_close(c); /* an unconfirmed 250 makes its message at risk */
	if (c->s) {
		smtp_session_fini(c->s); /* aborts the transaction in data, if any */
		c->s = NULL;
	}
	sink_data_abort(c);
	io_gap_conn_free(c);
	if (c->tls) {
		io_tls_conn_destroy(c->tls);
		c->tls = NULL;
	}
	close(c->fd);
	c->fd = -1;
	if (c->counted) {
		atomic_fetch_sub(&w->sh->connections, 1);
		io_iplimit_put(w->sh->iplimit, &c->peer);
		c->counted = false;
	}
	free(c->pending);
	c->pending = NULL;
	c->pending_len = c->pending_cap = 0;
	c->state = IO_CONN_FREE;
	c->gen++;
	obs_metrics_conn_close(w->m);
	c->next_free = w->free_list;
	w->free_list = c;
	DS_ASSERT(w->conn_active > 0);
	w->conn_active--;
}

static void conn_close(struct io_conn *c)
{
	if (c->state == IO_CONN_CLOSING || c->state == IO_CONN_FREE)
		return;
	c->state = IO_CONN_CLOSING;
	/* Ends the multishot recv and any send stuck on a client that does not read. */
	shutdown(c->fd, SHUT_RDWR);
	conn_pause_recv(c);
	conn_try_free(c);
}

static void conn_start_session(struct io_conn *c)
{
	struct io_worker *w = c->w;
	const struct smtp_config *cfg =
		w->listeners[c->listen_idx].kind == IO_LISTEN_LMTP ? &w->lmtp_cfg : &w->smtp_cfg;
	struct smtp_peer peer = {.addr = c->peer_text, .port = c->peer_port};
	c->s = smtp_session_init(w->session_mem + (size_t)c->idx * w->session_size, cfg, &io_sink, c, &peer);
	DS_ASSERT(c->s != NULL);
	c->state = IO_CONN_ACTIVE;
	c->deadline_ms = ds_mono_ms() + (int64_t)w->cfg->timeout_command_s * 1000;
	if (w->stopping) {
		smtp_session_shutdown(c->s);
		c->bye_pending = true;
	}
	conn_flush_output(c);
}

static const char line_per_ip[] = "421 4.7.0 Too many connections from your address\r\n";
static const char line_conn_rate[] =
	"421 4.7.0 Error: too many connections from your address, try again later\r\n";

/* --client-connection-rate-max behind PROXY, for the client the header named: 0, or -EBUSY. */
static int conn_rate_check(struct io_conn *c)
{
	if (conn_throttle(c, IO_THROTTLE_CONN) == 0)
		return 0;
	c->limit_note = NULL;
	log_refusal(c->w, "client_connection_rate_max", 421, c->peer_text);
	return -EBUSY;
}

/*
 * Behind a PROXY listener the client is the header's source: the per-address
 * connection slot moves from the load balancer's address to it, and the
 * connection rate is the client's. Returns the 421 line to close with, or NULL.
 */
static const char *conn_proxy_client(struct io_conn *c, const struct io_proxy_result *res)
{
	struct io_worker *w = c->w;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (res->family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(res->src_port);
		if (inet_pton(AF_INET, res->src_addr, &in->sin_addr) != 1)
			return NULL;
	} else if (res->family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(res->src_port);
		if (inet_pton(AF_INET6, res->src_addr, &in6->sin6_addr) != 1)
			return NULL;
	} else {
		return NULL;
	}
	DS_ASSERT(c->counted);
	io_iplimit_put(w->sh->iplimit, &c->peer);
	c->peer = ss;
	conn_client_set(c);
	if (io_iplimit_take(w->sh->iplimit, &c->peer, w->cfg->max_connections_per_ip) < 0) {
		atomic_fetch_sub(&w->sh->connections, 1);
		c->counted = false;
		obs_metrics_conn_refused(w->m, OBS_REFUSE_LIMIT_PER_IP);
		log_refusal(w, "limit_per_ip", 421, c->peer_text);
		return line_per_ip;
	}
	return conn_rate_check(c) < 0 ? line_conn_rate : NULL;
}

/* PROXY listener: the header must come first and whole, before our banner. */
static void conn_proxy_input(struct io_conn *c, const uint8_t *buf, size_t len)
{
	if (pending_append(c, buf, len) < 0) {
		conn_close(c);
		return;
	}
	struct io_proxy_result res;
	int r = io_proxy_parse(c->pending, c->pending_len, &res);
	if (r == 0 && c->pending_len < IO_PROXY_MAX_BYTES)
		return;
	if (r <= 0) {
		obs_metrics_conn_refused(c->w->m, OBS_REFUSE_PROXY_ERROR);
		log_refusal(c->w, "proxy_error", 0, c->peer_text);
		conn_close(c);
		return;
	}
	if (!res.local) {
		snprintf(c->peer_text, sizeof(c->peer_text), "%s", res.src_addr);
		c->peer_port = res.src_port;
		/* The limits are the client's, not the load balancer's (issue 17). */
		const char *line = conn_proxy_client(c, &res);
		if (line) {
			send(c->fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
			conn_close(c);
			return;
		}
	}
	pending_drop(c, (size_t)r);
	conn_start_session(c);
}

static void conn_resume(struct io_conn *c)
{
	if (!conn_can_feed(c)) {
		conn_flush_output(c);
		return;
	}
	if (c->pending_len) {
		size_t used = conn_feed(c, c->pending, c->pending_len);
		if (c->want_close || used > c->pending_len)
			used = c->pending_len; /* QUIT, or STARTTLS emptied it */
		pending_drop(c, used);
	}
	conn_flush_output(c);
	if (c->state == IO_CONN_ACTIVE && !c->recv_armed && !c->want_close &&
	    c->pending_len < c->w->cfg->pending_input_max / 2)
		conn_arm_recv(c);
}

static void conn_input_plain(struct io_conn *c, const uint8_t *buf, size_t len)
{
	io_gap_on_input(c); /* after our 250 went out: the client read it */
	if (c->state != IO_CONN_ACTIVE || c->want_close || c->tls_starting)
		return;
	size_t used = 0;
	if (c->pending_len == 0 && conn_can_feed(c))
		used = conn_feed(c, buf, len);
	if (c->want_close || c->tls_starting)
		used = len;
	if (used < len && pending_append(c, buf + used, len - used) < 0) {
		/* The client keeps sending while refusing our replies: drop it. */
		log_refusal(c->w, "input_flood", 0, c->peer_text);
		conn_close(c);
		return;
	}
}

static void conn_tls_handshake(struct io_conn *c)
{
	int r = io_tls_handshake(c->tls);
	if (r == -EAGAIN)
		return;
	if (r < 0) {
		c->tls_failed = true; /* send the alert, then close */
		c->want_close = true;
		obs_metrics_tls_handshake(c->w->m, false);
		log_refusal(c->w, "tls_handshake_failed", 0, c->peer_text);
		return;
	}
	obs_metrics_tls_handshake(c->w->m, true);
	char desc[96];
	if (io_tls_describe(c->tls, desc, sizeof(desc)) < 0)
		snprintf(desc, sizeof(desc), "TLS");
	c->tls_up = true;
	smtp_session_tls_started(c->s, desc);
	c->deadline_ms = ds_mono_ms() + (int64_t)c->w->cfg->timeout_command_s * 1000;
}

/* Decrypted input into the plaintext path, until no whole record is left. */
static void conn_tls_drain(struct io_conn *c)
{
	struct io_worker *w = c->w;
	ssize_t r;
	while ((r = io_tls_read(c->tls, w->tls_pt, IO_TLS_PT_BYTES)) > 0) {
		conn_input_plain(c, w->tls_pt, (size_t)r);
		if (c->state != IO_CONN_ACTIVE)
			return;
	}
	if (r != -EAGAIN) {
		c->want_close = true; /* close_notify or a bad record */
		c->tls_failed = r < 0;
	}
}

/*
 * A handshake step is the one expensive thing a session does (a signature
 * or an ECDH, 0.6-3 ms). It never runs inside the completion loop: the
 * connection is queued and io_conns_handshakes() runs the queue after the
 * turn's commits have been handed to the spool and submitted, so the CPU
 * it takes overlaps the group-commit flush instead of delaying it.
 */
static void conn_hs_queue(struct io_conn *c)
{
	struct io_worker *w = c->w;
	if (c->hs_queued)
		return;
	c->hs_queued = true;
	c->next_hs = NULL;
	if (w->hs_tail)
		w->hs_tail->next_hs = c;
	else
		w->hs_head = c;
	w->hs_tail = c;
}

/* Ciphertext in: handshake (deferred), then decrypt into the plaintext path. */
static void conn_tls_input(struct io_conn *c, const uint8_t *buf, size_t len)
{
	size_t off = 0;
	for (;;) {
		off += io_tls_feed(c->tls, buf + off, len - off);
		if (!c->tls_up) {
			/*
			 * A client flight fits the input buffer; bytes it could not
			 * take mean a client that does not wait for our flight.
			 */
			if (off < len) {
				c->tls_failed = true;
				c->want_close = true;
				return;
			}
			conn_hs_queue(c);
			return;
		}
		conn_tls_drain(c);
		if (c->state != IO_CONN_ACTIVE || c->want_close || off == len)
			return;
	}
}

static void conn_input(struct io_conn *c, const uint8_t *buf, size_t len)
{
	if (c->state == IO_CONN_PROXY) {
		conn_proxy_input(c, buf, len);
		return;
	}
	if (c->state != IO_CONN_ACTIVE || c->want_close || c->tls_starting)
		return;
	if (c->tls)
		conn_tls_input(c, buf, len);
	else
		conn_input_plain(c, buf, len);
	conn_flush_output(c);
}

void io_conn_on_recv(struct io_worker *w, uint64_t key, int res, uint32_t flags)
{
	struct io_conn *c = conn_lookup(w, key);
	DS_ASSERT(c != NULL); /* a connection is never freed with a recv armed */
	bool more = flags & IORING_CQE_F_MORE;
	if (!more)
		c->recv_armed = false;
	/* conn_input() may close the connection; it must not be freed under us. */
	c->busy = true;
	if (res > 0) {
		DS_ASSERT(flags & IORING_CQE_F_BUFFER);
		uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
		conn_input(c, io_rbuf(&w->ring, bid), (size_t)res);
		io_rbuf_return(&w->ring, bid);
	} else if (res == 0 && c->state == IO_CONN_ACTIVE) {
		/*
		 * Half-close (printf ... | nc -N): the client may still read.
		 * Finish its pipelined commands and send every reply, the 250
		 * of a message it ended with included, then close.
		 */
		c->peer_eof = true;
		conn_flush_output(c);
	} else if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
		conn_close(c); /* EOF before a session, or an error */
	}
	c->busy = false;
	if (c->state == IO_CONN_CLOSING) {
		conn_try_free(c);
		return;
	}
	if (!c->recv_armed) {
		/*
		 * The multishot recv ended. After our own cancel (input was
		 * over pending_input_max), conn_resume() re-arms once pending
		 * drains below half of it, but it may already have drained while
		 * the cancel was in flight (recv_armed still set then): decide
		 * from the state now, or the connection is never read again.
		 */
		bool was_cancel = c->recv_cancel || res == -ECANCELED;
		uint32_t limit = was_cancel ? w->cfg->pending_input_max / 2 : w->cfg->pending_input_max;
		c->recv_cancel = false;
		if (c->pending_len < limit && !c->want_close)
			conn_arm_recv(c);
	}
}

void io_conn_on_send(struct io_worker *w, uint64_t key, int res)
{
	struct io_conn *c = conn_lookup(w, key);
	DS_ASSERT(c != NULL && c->send_inflight);
	c->send_inflight = false;
	if (c->state == IO_CONN_CLOSING) {
		conn_try_free(c);
		return;
	}
	if (res <= 0) {
		conn_close(c);
		return;
	}
	c->busy = true;
	if (c->tls && !c->tls_starting) {
		DS_ASSERT((uint32_t)res <= c->send_len);
		io_tls_output_consumed(c->tls, (size_t)res);
		if (!c->tls_up && !c->tls_failed)
			conn_hs_queue(c); /* it may have stopped on a full output buffer */
	} else if (c->send_len) {
		DS_ASSERT((uint32_t)res <= c->send_len);
		smtp_session_output_consumed(c->s, (size_t)res);
		size_t left = 0;
		smtp_session_output(c->s, &left);
		if (c->tls_starting && left == 0) {
			/* The 220 is out: from now on the socket carries TLS records. */
			c->tls_starting = false;
			c->pending_len = 0;
		}
	} else if ((size_t)res < sizeof(io_bye) - 1) {
		c->busy = false;
		conn_close(c); /* a short send of the goodbye line: give up on it */
		return;
	} else {
		conn_bye_out(c);
	}
	conn_flush_output(c);
	if (!c->send_inflight)
		io_gap_on_sent(c); /* every reply queued so far is out */
	if (!c->send_inflight && c->state == IO_CONN_ACTIVE)
		conn_resume(c);
	c->busy = false;
	if (c->state == IO_CONN_CLOSING)
		conn_try_free(c);
}

/* The spool's answer for a commit it took: 250 (res 0) or 451/452. */
static void conn_commit_done(struct io_conn *c, int res)
{
	struct io_worker *w = c->w;
	DS_ASSERT(c->commit_pending);
	c->commit_pending = false;
	uint64_t gap_us = (uint64_t)DS_MAX(ds_mono_us() - c->dot_us, 0);
	if (res == 0) {
		char id[32];
		spool_id_format(c->txn.id, id, sizeof(id));
		obs_metrics_message_accepted(w->m, c->env.body_size, gap_us);
		io_dlv_committed(w, c->txn.id, c->commit_seq, c->commit_off, &c->env);
		io_gap_on_acked(c, c->txn.id, c->commit_seq, c->commit_off);
		/* Also when the client has gone: this is the message it may send again. */
		obs_log_accepted(w->log, id, &c->env, gap_us);
	} else {
		obs_metrics_message_rejected(w->m);
	}
	if (c->state == IO_CONN_CLOSING) {
		conn_try_free(c);
		return;
	}
	enum smtp_status st = smtp_session_commit_done(c->s, res);
	if (st == SMTP_CLOSE)
		c->want_close = true;
	if (w->stopping && smtp_session_idle(c->s))
		c->bye_pending = true;
	c->deadline_ms = ds_mono_ms() + (int64_t)w->cfg->timeout_command_s * 1000;
	conn_flush_output(c);
}

/*
 * The answer to a RCPT the session waits on (SMTP_WAIT_RCPT): one of
 * rcpt_ok()'s answers (core/smtp.h). A connection that went away in the
 * meantime is not held for it: the key no longer finds it.
 */
void io_conn_rcpt_answer(struct io_worker *w, uint64_t key, int res)
{
	struct io_conn *c = conn_lookup(w, key);
	if (!c || !c->rcpt_wait)
		return;
	c->rcpt_wait = false;
	if (c->state != IO_CONN_ACTIVE)
		return;
	if (res == -ENOENT)
		res = conn_unknown(c);
	c->busy = true;
	if (smtp_session_rcpt_done(c->s, res) == SMTP_CLOSE)
		c->want_close = true;
	c->deadline_ms = ds_mono_ms() + (int64_t)w->cfg->timeout_command_s * 1000;
	conn_flush_output(c);
	if (!c->send_inflight && c->state == IO_CONN_ACTIVE)
		conn_resume(c);
	c->busy = false;
	if (c->state == IO_CONN_CLOSING)
		conn_try_free(c);
}

void io_conn_settled(struct io_worker *w, uint64_t cookie, int res)
{
	struct io_conn *c = conn_lookup(w, cookie);
	DS_ASSERT(c != NULL);
	conn_commit_done(c, res);
}

static void log_setsockopt_failed(struct io_worker *w, const struct sockaddr_storage *ss, const char *option,
				  int err)
{
	char text[INET6_ADDRSTRLEN] = "";
	addr_text(ss, text, sizeof(text));
	if (!obs_log_begin(w->log, OBS_LOG_WARN, "setsockopt_failed"))
		return;
	obs_log_str(w->log, "option", option);
	obs_log_str(w->log, "client", text);
	obs_log_str(w->log, "error", strerror(err));
	obs_log_end(w->log);
}

static void conn_log_refused_fd(struct io_worker *w, const struct sockaddr_storage *ss, const char *reason)
{
	char text[INET6_ADDRSTRLEN] = "";
	addr_text(ss, text, sizeof(text));
	log_refusal(w, reason, 421, text);
}

static void refuse(int fd, const char *line)
{
	ssize_t n = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	/*
	 * Closing with unread input makes the kernel send RST, which can
	 * destroy the 421 before the client reads it: take what a client that
	 * talked first has already sent (bounded, never waiting).
	 */
	uint8_t sink[4096];
	for (int i = 0; i < 4 && n > 0; i++)
		if (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) <= 0)
			break;
	close(fd);
}

/* --client-connection-rate-max at accept: 0, or -EBUSY (counted and logged). */
static int accept_rate_check(struct io_worker *w, const struct sockaddr_storage *ss)
{
	const struct io_policy_config *pc = &w->cfg->policy;
	struct io_client_key k;
	uint8_t a16[16];
	if (!w->sh->throttle)
		return 0;
	io_client_addr16(ss, a16);
	if (io_cidr_match(pc->trusted, pc->trusted_count, a16))
		return 0;
	io_client_key_of(ss, pc->client_ipv6_prefix_length, &k);
	if (io_throttle_hit(w->sh->throttle, &k, IO_THROTTLE_CONN, ds_mono_ms()) == 0)
		return 0;
	obs_metrics_throttled(w->m, OBS_THROTTLE_CONNECTION_RATE);
	conn_log_refused_fd(w, ss, "client_connection_rate_max");
	return -EBUSY;
}

void io_conn_accept(struct io_worker *w, int fd, uint32_t listen_idx)
{
	const struct io_config *cfg = w->cfg;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (w->stopping) {
		obs_metrics_conn_refused(w->m, OBS_REFUSE_SHUTDOWN);
		refuse(fd, io_bye);
		return;
	}
	memset(&ss, 0, sizeof(ss));
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) {
		close(fd);
		return;
	}
	if (atomic_fetch_add(&w->sh->connections, 1) >= cfg->max_connections ||
	    (!w->free_list && w->conn_fresh >= w->conn_max)) {
		atomic_fetch_sub(&w->sh->connections, 1);
		obs_metrics_conn_refused(w->m, OBS_REFUSE_LIMIT_TOTAL);
		conn_log_refused_fd(w, &ss, "limit_total");
		refuse(fd, "421 4.7.0 Too many connections, try again later\r\n");
		return;
	}
	if (io_iplimit_take(w->sh->iplimit, &ss, cfg->max_connections_per_ip) < 0) {
		atomic_fetch_sub(&w->sh->connections, 1);
		obs_metrics_conn_refused(w->m, OBS_REFUSE_LIMIT_PER_IP);
		conn_log_refused_fd(w, &ss, "limit_per_ip");
		refuse(fd, line_per_ip);
		return;
	}
	if (w->listeners[listen_idx].kind != IO_LISTEN_SMTP_PROXY && accept_rate_check(w, &ss) < 0) {
		/* Behind PROXY the client is known only once its header is read (conn_proxy_client). */
		atomic_fetch_sub(&w->sh->connections, 1);
		io_iplimit_put(w->sh->iplimit, &ss);
		refuse(fd, line_conn_rate);
		return;
	}
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		log_setsockopt_failed(w, &ss, "TCP_NODELAY", errno); /* replies may wait for Nagle */

	struct io_conn *c = conn_slot_get(w);
	DS_ASSERT(c != NULL);
	w->conn_active++;
	obs_metrics_conn_open(w->m);
	uint32_t gen = c->gen;
	uint32_t idx = c->idx;
	memset(c, 0, sizeof(*c));
	c->w = w;
	c->idx = idx;
	c->gen = gen;
	c->fd = fd;
	c->counted = true;
	c->listen_idx = (uint8_t)listen_idx;
	c->peer = ss;
	c->peer_port = addr_text(&ss, c->peer_text, sizeof(c->peer_text));
	conn_client_set(c);
	if (w->listeners[listen_idx].kind == IO_LISTEN_SMTP_PROXY) {
		c->state = IO_CONN_PROXY;
		c->deadline_ms = ds_mono_ms() + (int64_t)cfg->timeout_greeting_s * 1000;
	} else {
		conn_start_session(c);
	}
	conn_arm_recv(c);
}

void io_conns_tick(struct io_worker *w, int64_t now_ms)
{
	io_gap_tick(w, now_ms);
	for (uint32_t i = 0; i < w->conn_fresh && w->conn_active; i++) {
		struct io_conn *c = &w->conns[i];
		if (c->state == IO_CONN_FREE || c->state == IO_CONN_CLOSING)
			continue;
		if (c->deadline_ms == 0 || now_ms < c->deadline_ms)
			continue;
		if (c->state == IO_CONN_PROXY || c->send_inflight) {
			/* No header in time, or a client that does not read its replies. */
			conn_close(c);
			continue;
		}
		if (c->commit_pending)
			continue; /* the spool always settles; a flush is never abandoned */
		smtp_session_timeout(c->s);
		c->want_close = true;
		c->deadline_ms = now_ms + 5000; /* for the 421 itself */
		conn_flush_output(c);
	}
}

void io_conns_shutdown(struct io_worker *w)
{
	for (uint32_t i = 0; i < w->conn_fresh && w->conn_active; i++) {
		struct io_conn *c = &w->conns[i];
		if (c->state == IO_CONN_PROXY) {
			conn_close(c);
		} else if (c->state == IO_CONN_ACTIVE) {
			smtp_session_shutdown(c->s);
			if (smtp_session_idle(c->s) && !c->commit_pending) {
				c->bye_pending = true;
				conn_flush_output(c);
			}
		}
	}
}

void io_conns_close_all(struct io_worker *w)
{
	for (uint32_t i = 0; i < w->conn_fresh && w->conn_active; i++) {
		struct io_conn *c = &w->conns[i];
		if (c->state == IO_CONN_PROXY || c->state == IO_CONN_ACTIVE)
			conn_close(c);
	}
}

void io_conns_resume_parked(struct io_worker *w)
{
	if (!w->parked || spool_lane_append_room(w->lane) <= IO_SPOOL_SLACK_BYTES)
		return;
	struct io_conn *list = w->parked;
	w->parked = NULL;
	while (list) {
		struct io_conn *c = list;
		list = c->next_parked;
		c->next_parked = NULL;
		c->parked = false;
		if (c->commit_retry && c->state == IO_CONN_CLOSING) {
			/* The client has gone before the message was committed: drop it. */
			spool_txn_abort(w->lane, &c->txn);
			c->commit_retry = false;
			c->commit_pending = false;
		}
		if (c->state == IO_CONN_CLOSING) {
			conn_try_free(c);
		} else if (c->commit_retry) {
			c->commit_retry = false;
			/* 0: queued, settled() follows; -EAGAIN: still no room; else failed now. */
			int ret = spool_txn_commit(w->lane, &c->txn, &c->env, conn_key(c));
			if (ret == 0)
				spool_txn_location(&c->txn, &c->commit_seq, &c->commit_off);
			if (ret == -EAGAIN) {
				c->commit_retry = true;
				conn_park(c);
			} else if (ret < 0) {
				conn_commit_done(c, ret);
			}
		} else {
			conn_resume(c);
		}
	}
}

/* Run queued handshake steps: at most budget_us of them in one turn. */
void io_conns_handshakes(struct io_worker *w, int64_t budget_us)
{
	int64_t t0 = ds_mono_us(), spent = 0;
	while (w->hs_head && spent < budget_us) {
		struct io_conn *c = w->hs_head;
		w->hs_head = c->next_hs;
		if (!w->hs_head)
			w->hs_tail = NULL;
		c->hs_queued = false;
		c->next_hs = NULL;
		if (c->state == IO_CONN_ACTIVE && c->tls && !c->tls_up && !c->tls_failed) {
			c->busy = true;
			conn_tls_handshake(c);
			if (c->tls_up)
				conn_tls_drain(c); /* the client's first commands may be here already */
			conn_flush_output(c);
			if (!c->send_inflight && c->state == IO_CONN_ACTIVE && c->tls_up)
				conn_resume(c);
			c->busy = false;
		}
		if (c->state == IO_CONN_CLOSING)
			conn_try_free(c);
		spent = ds_mono_us() - t0;
	}
}
