/* SPDX-License-Identifier: MIT */
/*
 * The delivery stage of one worker: mail leaves the spool (issue 14).
 *
 *   queue (deliver/dlv_queue) -> a message is due and a next hop is up
 *   -> an idle connection to that hop, or a new one (this worker's share
 *      of --deliver-connections)
 *   -> ATTEMPT record on the worker's lane; once durable, the message goes
 *      to the client machine (deliver/dlv_client) on that connection; the
 *      body is read back from the segments (spool_fetch)
 *   -> every recipient has its outcome: the DSN for the failed ones is
 *      spooled (a commit on the worker's lane) and an outcome record
 *      written after it; once both are durable the queue learns the new
 *      states (done, or deferred until the backoff says).
 *
 * The ATTEMPT record is what makes re-deliveries countable: a recipient
 * recovery finds in ATTEMPT was handed to a next hop by a run that did not
 * live to record the outcome, so delivering it again may duplicate it
 * (the RFC 1047 gap on our client side), and is counted.
 *
 * Everything runs on the worker's ring: connect, send, recv are io_uring
 * ops tagged IO_OP_DLV; timeouts are deadlines looked at on the worker's
 * 250 ms tick (the RFC 5321 timeouts are minutes).
 */
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ctlsock.h"
#include "dlv.h"
#include "dlv_client.h"
#include "dlv_dsn.h"
#include "dlv_handoff.h"
#include "dlv_pipe.h"
#include "dlv_queue.h"
#include "ds_assert.h"
#include "ds_clock.h"
#include "ds_grow.h"
#include "ds_sort.h"
#include "io_types.h"
#include "log.h"
#include "metrics.h"
#include "ring.h"
#include "spool_compact.h"
#include "spool_fetch.h"
#include "spool_id.h"
#include "spool_reclaim.h" /* H12: segment reclamation (issue 15) */
#include "tls.h"

_Static_assert(IO_DELIVER_STARTTLS_NEVER == DLV_STARTTLS_NEVER &&
		       IO_DELIVER_STARTTLS_OPPORTUNISTIC == DLV_STARTTLS_OPPORTUNISTIC &&
		       IO_DELIVER_STARTTLS_REQUIRED == DLV_STARTTLS_REQUIRED,
	       "io_config's starttls values are deliver/'s");

/* An idle connection is kept this long for the next message, then QUIT (Postfix keeps 2 s). */
#define DLV_IDLE_MS    5000
#define DLV_RBUF_BYTES 8192
/* One send takes at most this much of the client's output. */
#define DLV_SEND_MAX_BYTES (256u * 1024)
/* Attempts started in one loop turn: the rest waits for the next turn. */
#define DLV_STARTS_PER_TURN 64
/* Segments a worker keeps mapped for reading bodies. */
#define DLV_FETCH_MAPS 512
/* A DSN (bounce) is at most this big: originals are cut at 64 KiB, diagnostics at 1 KiB. */
#define DLV_DSN_MAX_BYTES (4u * 1024 * 1024)

enum dud_kind { UD_CONNECT = 1, UD_RECV, UD_SEND, UD_PWRITE, UD_PREAD, UD_PPOLL, UD_HANDOFF };
enum dck_kind { CK_ATTEMPT = 1, CK_OUTCOME, CK_DSN, CK_OPERATOR };
enum dconn_state { DC_FREE = 0, DC_CONNECTING, DC_UP, DC_CLOSING };
enum djob_phase { J_FREE = 0, J_ATTEMPT, J_SENDING, J_RECORD };

struct dconn;

struct djob {
	struct io_dlv *d;
	uint32_t idx, gen;
	uint8_t phase;
	struct dlv_qmsg *qm;
	struct dconn *c;
	unsigned hop;
	uint32_t attempt;
	struct spool_fetch_msg fm;
	bool fetched;
	bool client_done; /* msg_done() ran: every recipient has its outcome */
	bool op_bounce;	  /* an operator bounce: no attempt, every open recipient FAILED with a DSN */
	bool hop_failed;  /* the connection failed before MAIL: the hop as a whole */
	bool wait_room;	  /* on the wait list: a record found no room in the lane */
	bool attempt_settled, outcome_taken, outcome_settled, dsn_taken, dsn_settled;
	int outcome_res, dsn_res;
	struct dlv_msg msg;
	/* per recipient of this attempt (n of them) */
	uint32_t n;
	size_t cap;
	struct dlv_rcpt *rcpt;
	uint32_t *map; /* index in the envelope */
	struct dlv_outcome *out;
	uint8_t *state; /* what the outcome record says (enum spool_rcpt_state) */
	uint8_t *was;	/* the state before this attempt */
	struct spool_outcome_rcpt *rec;
	char *arena;
	size_t arena_len, arena_cap;
	int64_t start_ms, due_us;
	uint64_t dsn_id, dsn_seq, dsn_off;
	struct ds_envelope dsn_env;
	struct ds_rcpt dsn_rcpt;
	struct spool_txn dsn_txn;
	struct dlv_dsn_buf dsn_buf;
	uint32_t dsn_failed;
	struct djob *next;
};

struct dconn {
	struct io_dlv *d;
	uint32_t idx, gen;
	uint8_t state;
	uint8_t hop;
	int fd;
	unsigned ops; /* io_uring ops in flight */
	bool recv_armed, send_armed, reached_mail;
	bool idle; /* on d->idle[hop] */
	int64_t deadline_ms;
	struct dlv_pipe *pipe;	 /* pipe: transport (cl is NULL), once the program runs */
	struct io_tls_conn *tls; /* after STARTTLS: every byte in and out is a TLS record */
	bool tls_hs;		 /* the handshake is running */
	struct dlv_client *cl;
	struct djob *job;
	struct dconn *next_idle;
	uint8_t rbuf[DLV_RBUF_BYTES];
};

/* One operator record in flight (io/ctlsock.h): its message is frozen (held, marked) meanwhile. */
struct dop {
	struct io_ctl_batch *b;
	struct dop *base; /* the batch's array (freed with the batch) */
	uint32_t i;	  /* index in b->ids */
	struct dlv_qmsg *qm;
	bool was_held;
	struct dop *next_wait;
};

struct io_dlv {
	struct io_worker *w;
	const struct io_deliver_config *cfg;
	struct dlv_queue *q;
	struct spool_fetch *fetch;
	struct dlv_client_config ccfg[2]; /* smtp, lmtp */
	uint32_t conn_max;
	struct dconn *conns;
	uint8_t *client_mem;
	size_t client_size;
	uint32_t conns_open;
	struct dconn *idle[IO_DELIVER_HOPS_MAX];
	struct djob *jobs;
	struct djob *job_free;
	struct djob *wait_head;		    /* jobs whose record waits for room in the lane */
	struct dop *op_wait;		    /* operator records waiting for room in the lane */
	uint64_t *bounce;		    /* messages an operator bounced: a bounce job each, when one is free */
	size_t nbounce, capbounce;
	uint32_t all_count; /* retry --all: made due so far */
	bool hop_down[IO_DELIVER_HOPS_MAX]; /* hop_down logged, hop_up not yet */
	bool stopping;
	int64_t next_gauges_ms;
	struct io_tls_client *tls; /* NULL with --deliver-starttls never */
	/* amqp:// (issue 18): the per-message hand-off backend (io/dlv_handoff.h); NULL otherwise */
	const struct io_handoff_ops *ho;
	struct io_handoff *hoff;
	struct io_handoff_state ho_st; /* as last read */
	uint64_t ho_ev;		       /* buffer of the event_fd read armed on the ring */
	uint8_t tls_pt[16384];	   /* decrypted input */
};

/* ---- tags ---- */

static inline uint64_t dud(enum dud_kind k, uint32_t idx, uint32_t gen)
{
	DS_ASSERT(idx < (1u << 24));
	return ((uint64_t)k << 56) | ((uint64_t)idx << 32) | gen;
}

static inline uint64_t dcookie(enum dck_kind k, const struct djob *j)
{
	return IO_DLV_COOKIE_BIT | ((uint64_t)k << 56) | ((uint64_t)j->idx << 32) | j->gen;
}

static int64_t timeout_ms(const struct io_dlv *d, enum dlv_timeout k)
{
	const struct io_deliver_config *c = d->cfg;
	uint32_t s;
	switch (k) {
	case DLV_TIMEOUT_CONNECT:
		s = c->timeout_connect_s;
		break;
	case DLV_TIMEOUT_GREETING:
		s = c->timeout_greeting_s;
		break;
	case DLV_TIMEOUT_COMMAND:
		s = c->timeout_command_s;
		break;
	case DLV_TIMEOUT_DATA_INIT:
		s = c->timeout_data_init_s;
		break;
	case DLV_TIMEOUT_DATA_BLOCK:
		s = c->timeout_data_block_s;
		break;
	case DLV_TIMEOUT_DATA_DONE:
		s = c->timeout_data_done_s;
		break;
	default:
		return DLV_IDLE_MS;
	}
	return (int64_t)(s ? s : 300) * 1000;
}

static bool hop_is_lmtp(const struct io_dlv *d, unsigned hop)
{
	return d->cfg->hop[hop].kind == IO_HOP_LMTP;
}

/* ---- the backlog recovery hands over ---- */

struct io_dlv_backlog {
	struct dlv_queue_add *v;
	size_t n, cap;
	uint64_t *bounce; /* bounced by an operator, recipients still open: bounced at start */
	size_t nbounce, capbounce;
	uint8_t *states;
	size_t states_len, states_cap;
};

int io_dlv_backlog_add(struct io_shared *sh, unsigned threads, const struct spool_queue_entry *e)
{
	DS_ASSERT(threads > 0 && threads <= IO_THREADS_MAX);
	if (!sh->backlog) {
		sh->backlog = calloc(IO_THREADS_MAX, sizeof(struct io_dlv_backlog));
		if (!sh->backlog)
			return -ENOMEM;
	}
	struct io_dlv_backlog *b = &sh->backlog[e->lane % threads];
	void *p = ds_grow(b->v, &b->cap, b->n, sizeof(*b->v), 1024);
	if (!p)
		return -ENOMEM;
	b->v = p;
	while (b->states_len + e->rcpt_count > b->states_cap) {
		size_t ncap = b->states_cap ? b->states_cap * 2 : 65536;
		p = realloc(b->states, ncap);
		if (!p)
			return -ENOMEM;
		b->states = p;
		b->states_cap = ncap;
	}
	memcpy(b->states + b->states_len, e->rcpt_state, e->rcpt_count);
	b->v[b->n++] = (struct dlv_queue_add){
		.id = e->id,
		.lane = e->lane,
		.seq = e->seq,
		.off = e->off,
		.size = e->size,
		.received_at_us = e->received_at_us,
		.rcpt_count = e->rcpt_count,
		.rcpt_state = (const uint8_t *)(uintptr_t)b->states_len, /* offset until adopted */
		.attempts = e->attempts,
		.due_us = e->next_attempt_us,
		.redelivery = e->in_flight,
		/* A bounced message waits, frozen like a held one, for its bounce job. */
		.held = e->held || e->bounce,
	};
	b->states_len += e->rcpt_count;
	if (e->bounce) {
		p = ds_grow(b->bounce, &b->capbounce, b->nbounce, sizeof(*b->bounce), 64);
		if (!p)
			return -ENOMEM;
		b->bounce = p;
		b->bounce[b->nbounce++] = e->id;
	}
	return 0;
}

void io_dlv_backlog_free(struct io_shared *sh)
{
	if (!sh->backlog)
		return;
	for (unsigned i = 0; i < IO_THREADS_MAX; i++) {
		free(sh->backlog[i].v);
		free(sh->backlog[i].states);
		free(sh->backlog[i].bounce);
	}
	free(sh->backlog);
	sh->backlog = NULL;
}

static int backlog_adopt(struct io_dlv *d)
{
	struct io_worker *w = d->w;
	if (!w->sh->backlog)
		return 0;
	struct io_dlv_backlog *b = &w->sh->backlog[w->no];
	for (size_t i = 0; i < b->n; i++) {
		struct dlv_queue_add a = b->v[i];
		a.rcpt_state = b->states + (uintptr_t)a.rcpt_state;
		int ret = dlv_queue_add(d->q, &a, NULL);
		if (ret < 0 && ret != -EALREADY)
			return ret;
	}
	/* The bounce list is adopted whole: the owed bounces start from io_dlv_run. */
	d->bounce = b->bounce;
	d->nbounce = b->nbounce;
	d->capbounce = b->capbounce;
	free(b->v);
	free(b->states);
	memset(b, 0, sizeof(*b));
	return 0;
}

/* ---- jobs ---- */

static struct djob *job_get(struct io_dlv *d)
{
	struct djob *j = d->job_free;
	if (!j)
		return NULL;
	d->job_free = j->next;
	j->next = NULL;
	j->phase = J_ATTEMPT;
	j->qm = NULL;
	j->c = NULL;
	j->fetched = j->client_done = j->hop_failed = j->wait_room = j->op_bounce = false;
	j->attempt_settled = j->outcome_taken = j->outcome_settled = j->dsn_taken = j->dsn_settled = false;
	j->outcome_res = j->dsn_res = 0;
	j->n = 0;
	j->arena_len = 0;
	j->dsn_id = 0;
	j->dsn_failed = 0;
	j->due_us = 0;
	memset(&j->dsn_buf, 0, sizeof(j->dsn_buf));
	return j;
}

static void job_put(struct io_dlv *d, struct djob *j)
{
	if (j->fetched)
		spool_fetch_put(d->fetch, &j->fm);
	j->fetched = false;
	dlv_dsn_buf_free(&j->dsn_buf);
	j->phase = J_FREE;
	j->gen++;
	j->next = d->job_free;
	d->job_free = j;
}

static struct djob *job_lookup(struct io_dlv *d, uint64_t cookie)
{
	uint32_t idx = (uint32_t)((cookie >> 32) & 0xffffff);
	if (idx >= d->conn_max)
		return NULL;
	struct djob *j = &d->jobs[idx];
	return j->phase != J_FREE && j->gen == (uint32_t)cookie ? j : NULL;
}

static char *arena_str(struct djob *j, const char *s, size_t len)
{
	if (j->arena_len + len + 1 > j->arena_cap)
		return NULL;
	char *p = j->arena + j->arena_len;
	memcpy(p, s, len);
	p[len] = 0;
	j->arena_len += len + 1;
	return p;
}

/* A parameter's value (NOTIFY=, ORCPT=, RET=, ENVID=) as a C string, or NULL. */
static const char *param_dup(struct djob *j, const char *params, const char *key)
{
	const char *v;
	size_t len;
	if (!params || !dlv_dsn_param(params, key, &v, &len))
		return NULL;
	return arena_str(j, v, len);
}

static bool param_word(const char *params, const char *word)
{
	size_t wl = strlen(word);
	for (const char *p = params; p && *p;) {
		while (*p == ' ')
			p++;
		size_t l = strcspn(p, " =");
		if (l == wl && strncasecmp(p, word, wl) == 0)
			return true;
		p += strcspn(p, " ");
	}
	return false;
}

static int job_size(struct djob *j, uint32_t n, size_t arena)
{
	if (n > j->cap) {
		size_t cap = DS_MAX((size_t)n, j->cap * 2);
		void *a = realloc(j->rcpt, cap * sizeof(*j->rcpt));
		if (!a)
			return -ENOMEM;
		j->rcpt = a;
		if (!(a = realloc(j->map, cap * sizeof(*j->map))))
			return -ENOMEM;
		j->map = a;
		if (!(a = realloc(j->out, cap * sizeof(*j->out))))
			return -ENOMEM;
		j->out = a;
		if (!(a = realloc(j->state, cap)))
			return -ENOMEM;
		j->state = a;
		if (!(a = realloc(j->was, cap)))
			return -ENOMEM;
		j->was = a;
		if (!(a = realloc(j->rec, cap * sizeof(*j->rec))))
			return -ENOMEM;
		j->rec = a;
		j->cap = cap;
	}
	if (arena > j->arena_cap) {
		void *a = realloc(j->arena, arena);
		if (!a)
			return -ENOMEM;
		j->arena = a;
		j->arena_cap = arena;
	}
	return 0;
}

static int body_read(void *ctx, uint64_t off, void *buf, size_t cap)
{
	struct djob *j = ctx;
	return spool_fetch_read(j->d->fetch, &j->fm, off, buf, cap);
}

/*
 * The message as the client machine wants it: envelope from the commit
 * record, only the recipients still open, DSN parameters as stored.
 */
static int job_build(struct io_dlv *d, struct djob *j)
{
	struct dlv_qmsg *qm = j->qm;
	int ret = spool_fetch_get(d->fetch, qm->lane, qm->seq, qm->off, qm->id, &j->fm);
	if (ret < 0)
		return ret;
	j->fetched = true;
	const struct ds_envelope *env = &j->fm.m.env;
	if (env->rcpt_count != qm->rcpt_count)
		return -EBADMSG;
	size_t arena = 256 + strlen(env->mail_params);
	for (uint32_t i = 0; i < env->rcpt_count; i++)
		arena += strlen(env->rcpt[i].params) + 2;
	ret = job_size(j, qm->rcpt_open, arena);
	if (ret < 0)
		return ret;
	uint32_t n = 0;
	for (uint32_t i = 0; i < qm->rcpt_count; i++) {
		if (SPOOL_RCPT_STATE_FINAL(qm->rcpt_state[i]))
			continue;
		DS_ASSERT(n < qm->rcpt_open);
		j->map[n] = i;
		j->was[n] = qm->rcpt_state[i];
		j->state[n] = SPOOL_RCPT_ATTEMPT;
		memset(&j->out[n], 0, sizeof(j->out[n]));
		j->rcpt[n] = (struct dlv_rcpt){
			.addr = env->rcpt[i].addr,
			.notify = param_dup(j, env->rcpt[i].params, "NOTIFY"),
			.orcpt = param_dup(j, env->rcpt[i].params, "ORCPT"),
		};
		n++;
	}
	DS_ASSERT(n == qm->rcpt_open);
	j->n = n;
	const char *body = param_dup(j, env->mail_params, "BODY");
	enum dlv_body_type bt = DLV_BODY_7BIT;
	if (body && !strcasecmp(body, "8BITMIME"))
		bt = DLV_BODY_8BITMIME;
	else if (body && !strcasecmp(body, "BINARYMIME"))
		bt = DLV_BODY_BINARYMIME;
	j->msg = (struct dlv_msg){
		.mail_from = env->mail_from,
		.body = bt,
		.smtputf8 = param_word(env->mail_params, "SMTPUTF8"),
		.ret = param_dup(j, env->mail_params, "RET"),
		.envid = param_dup(j, env->mail_params, "ENVID"),
		.rcpt = j->rcpt,
		.rcpt_count = n,
		.body_size = j->fm.m.size,
		.read = body_read,
		.read_ctx = j,
	};
	return 0;
}

static void job_wait_room(struct io_dlv *d, struct djob *j)
{
	if (j->wait_room)
		return;
	j->wait_room = true;
	j->next = d->wait_head;
	d->wait_head = j;
}

/* The ATTEMPT record: every recipient of this attempt, before the message goes out. */
static int job_write_attempt(struct io_dlv *d, struct djob *j)
{
	for (uint32_t i = 0; i < j->n; i++)
		j->rec[i] = (struct spool_outcome_rcpt){
			.idx = j->map[i], .state = SPOOL_RCPT_ATTEMPT, .esc = "", .text = ""};
	struct spool_outcome o = {
		.id = j->qm->id,
		.attempt = j->attempt,
		.at_us = ds_wall_us(),
		.hop = d->cfg->hop[j->hop].text,
		.rcpt_count = j->n,
		.rcpt = j->rec,
	};
	return spool_lane_outcome(d->w->lane, &o, dcookie(CK_ATTEMPT, j));
}

/*
 * Every recipient without an outcome yet gets a local deferral (451, esc,
 * the text): the attempt ended before the next hop said anything about it.
 */
static void __attribute__((format(printf, 4, 5)))
job_defer_open(struct djob *j, enum dlv_stage stage, const char *esc, const char *fmt, ...)
{
	for (uint32_t i = 0; i < j->n; i++) {
		struct dlv_outcome *o = &j->out[i];
		if (o->cls)
			continue;
		*o = (struct dlv_outcome){.cls = DLV_DEFERRED, .stage = stage, .code = 451, .local = true};
		snprintf(o->esc, sizeof(o->esc), "%s", esc);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(o->text, sizeof(o->text), fmt, ap);
		va_end(ap);
	}
}

static void conn_pump(struct dconn *c);
static void conn_close(struct dconn *c);
static void job_abandon(struct io_dlv *d, struct djob *j);
static void pipe_run(struct io_dlv *d, struct djob *j);
static void handoff_run(struct io_dlv *d, struct djob *j);
static void pipe_check(struct dconn *c, int64_t now_ms);
static enum dlv_status conn_tls_start(struct dconn *c);
static enum dlv_status conn_tls_encrypt(struct dconn *c);
static void conn_status(struct dconn *c, enum dlv_status st);
static const struct dlv_client_ops client_ops;
static void job_records(struct io_dlv *d, struct djob *j);
static void job_end(struct io_dlv *d, struct djob *j);

/* Give the job to its connection's client machine (its ATTEMPT record is durable). */
static void job_submit(struct io_dlv *d, struct djob *j)
{
	struct dconn *c = j->c;
	j->phase = J_SENDING;
	if (!c) { /* the connection failed while the record was flushed: job_end has the outcomes */
		job_end(d, j);
		return;
	}
	if (d->hoff) {
		handoff_run(d, j);
		return;
	}
	if (!c->cl) {
		pipe_run(d, j);
		return;
	}
	int ret = dlv_client_submit(c->cl, &j->msg);
	if (ret < 0) {
		/* -EPIPE: closing; anything else: the message cannot go (limits): defer all. */
		job_defer_open(j, DLV_STAGE_SUBMIT, "4.3.0", "not submitted: %s", strerror(-ret));
		j->client_done = true;
		c->job = NULL;
		j->c = NULL;
		job_end(d, j);
		conn_pump(c);
		return;
	}
	conn_pump(c);
}

/* ---- connections ---- */

static void conn_sqe_recv(struct dconn *c)
{
	struct io_uring_sqe *sqe = io_sqe(&c->d->w->ring);
	io_uring_prep_recv(sqe, c->fd, c->rbuf, sizeof(c->rbuf), 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_DLV, dud(UD_RECV, c->idx, c->gen)));
	c->recv_armed = true;
	c->ops++;
}

static void conn_sqe_send(struct dconn *c, const uint8_t *p, size_t n)
{
	struct io_uring_sqe *sqe = io_sqe(&c->d->w->ring);
	io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_DLV, dud(UD_SEND, c->idx, c->gen)));
	c->send_armed = true;
	c->ops++;
}

static void conn_deadline(struct dconn *c)
{
	c->deadline_ms = ds_mono_ms() + timeout_ms(c->d, dlv_client_timeout_kind(c->cl));
}

static void conn_idle(struct dconn *c)
{
	struct io_dlv *d = c->d;
	if (c->idle)
		return;
	c->next_idle = d->idle[c->hop];
	d->idle[c->hop] = c;
	c->idle = true;
}

static void conn_unidle(struct dconn *c)
{
	struct io_dlv *d = c->d;
	if (!c->idle)
		return;
	for (struct dconn **p = &d->idle[c->hop]; *p; p = &(*p)->next_idle)
		if (*p == c) {
			*p = c->next_idle;
			break;
		}
	c->next_idle = NULL;
	c->idle = false;
}

/* The connection failed before a transaction could start: the next hop as a whole is at fault. */
static bool conn_hop_failure(const struct dconn *c)
{
	const struct dlv_outcome *e = c->cl ? dlv_client_error(c->cl) : NULL;
	return e && e->stage != DLV_STAGE_NONE && e->stage <= DLV_STAGE_TLS;
}

/*
 * The connection got through greeting and hello: the hop is up now, not
 * when this connection closes (an idle one lives DLV_IDLE_MS, a busy one
 * much longer), so the gauge, the hop_up line and the back-off reset
 * follow the hop's recovery at once.
 */
static void conn_hop_reached(struct dconn *c)
{
	struct io_dlv *d = c->d;
	c->reached_mail = true;
	dlv_queue_hop_ok(d->q, c->hop);
	obs_metrics_dlv_hop_up(d->w->m, c->hop, true);
	if (d->hop_down[c->hop]) {
		d->hop_down[c->hop] = false;
		obs_log_hop(d->w->log, d->cfg->hop[c->hop].text, true, "");
	}
}

/* The job's client finished with it (msg_done): the job moves on, the connection is free again. */
static void conn_job_check(struct dconn *c)
{
	struct djob *j = c->job;
	if (!j || !j->client_done)
		return;
	c->job = NULL;
	j->c = NULL;
	j->hop_failed = conn_hop_failure(c);
	job_end(c->d, j);
}

/* ---- STARTTLS (the io/tls client: records through memory buffers, sockets stay on the ring) ---- */

static enum dlv_status conn_tls_handshake(struct dconn *c)
{
	struct io_dlv *d = c->d;
	int ret = io_tls_handshake(c->tls);
	if (ret == -EAGAIN)
		return DLV_OK;
	c->tls_hs = false;
	if (ret < 0)
		return dlv_client_tls_done(c->cl, ret);
	char why[256];
	int v = io_tls_verify_result(c->tls, why, sizeof(why));
	if (v < 0) {
		bool required = d->cfg->starttls == DLV_STARTTLS_REQUIRED;
		/* Opportunistic without --deliver-ca verifies nothing: nothing to say about it. */
		if ((required || v != -ENOKEY) &&
		    obs_log_begin(d->w->log, required ? OBS_LOG_WARN : OBS_LOG_INFO, "tls_unverified")) {
			obs_log_str(d->w->log, "hop", d->cfg->hop[c->hop].text);
			obs_log_str(d->w->log, "action", required ? "deferred" : "continued");
			obs_log_str(d->w->log, "reason", why);
			obs_log_end(d->w->log);
		}
		if (required)
			return dlv_client_tls_done(c->cl, -EBADMSG);
	}
	return dlv_client_tls_done(c->cl, 0);
}

/* The machine's STARTTLS got its 220: the handshake begins (ClientHello in the output). */
static enum dlv_status conn_tls_start(struct dconn *c)
{
	struct io_dlv *d = c->d;
	if (!d->tls)
		return dlv_client_tls_done(c->cl, -EPROTONOSUPPORT);
	int ret = io_tls_conn_create_client(&c->tls, d->tls, d->cfg->tls_name[0] ? d->cfg->tls_name : NULL);
	if (ret < 0)
		return dlv_client_tls_done(c->cl, ret);
	c->tls_hs = true;
	return conn_tls_handshake(c);
}

/* Ciphertext in: the handshake, then plaintext to the machine. */
static enum dlv_status conn_tls_input(struct dconn *c, const uint8_t *buf, size_t len)
{
	struct io_dlv *d = c->d;
	enum dlv_status st = DLV_OK;
	while (st == DLV_OK) {
		size_t n = io_tls_feed(c->tls, buf, len);
		buf += n;
		len -= n;
		if (c->tls_hs) {
			st = conn_tls_handshake(c);
			if (c->tls_hs) {
				if (len && n == 0)
					return dlv_client_eof(c->cl, -EPROTO);
				if (!len)
					return st;
				continue;
			}
		}
		for (; st == DLV_OK;) {
			ssize_t r = io_tls_read(c->tls, d->tls_pt, sizeof(d->tls_pt));
			if (r == -EAGAIN)
				break;
			if (r <= 0)
				return dlv_client_eof(c->cl, r == 0 ? 0 : -EPROTO);
			size_t used = 0;
			st = dlv_client_input(c->cl, d->tls_pt, (size_t)r, &used);
		}
		if (!len)
			break;
		if (n == 0 && io_tls_feed_room(c->tls) == 0)
			return dlv_client_eof(c->cl, -EPROTO);
	}
	return st;
}

/* Plaintext the machine has: into TLS records (copied: consumed at once). */
static enum dlv_status conn_tls_encrypt(struct dconn *c)
{
	enum dlv_status st = DLV_OK;
	if (c->tls_hs)
		return st;
	size_t len;
	const uint8_t *out = dlv_client_output(c->cl, &len);
	while (len && st == DLV_OK) {
		ssize_t n = io_tls_write(c->tls, out, len);
		if (n == -EAGAIN)
			break;
		if (n < 0)
			return dlv_client_eof(c->cl, -EPROTO);
		st = dlv_client_output_consumed(c->cl, (size_t)n);
		out = dlv_client_output(c->cl, &len);
	}
	return st;
}

/* After every event: send what the machine has, keep a receive armed, the deadline, the idle list. */
static void conn_pump(struct dconn *c)
{
	if (c->state == DC_CLOSING || c->state == DC_FREE)
		return;
	if (!c->cl) {
		pipe_check(c, ds_mono_ms());
		return;
	}
	conn_job_check(c);
	if (!c->job && c->d->stopping && dlv_client_idle(c->cl)) {
		conn_unidle(c);
		dlv_client_quit(c->cl);
	}
	if (dlv_client_closed(c->cl)) {
		conn_close(c);
		return;
	}
	if (!c->reached_mail &&
	    (dlv_client_idle(c->cl) || dlv_client_timeout_kind(c->cl) >= DLV_TIMEOUT_DATA_INIT))
		conn_hop_reached(c);
	if (c->state == DC_UP) {
		if (!c->send_armed) {
			size_t len;
			const uint8_t *out;
			if (c->tls) {
				enum dlv_status st = conn_tls_encrypt(c);
				if (st == DLV_CLOSE) {
					conn_status(c, st);
					return;
				}
				out = io_tls_output(c->tls, &len);
			} else {
				out = dlv_client_output(c->cl, &len);
			}
			if (len)
				conn_sqe_send(c, out, DS_MIN(len, DLV_SEND_MAX_BYTES));
		}
		if (!c->recv_armed)
			conn_sqe_recv(c);
	}
	conn_deadline(c);
	if (!c->job && dlv_client_idle(c->cl) && !c->d->stopping) {
		conn_idle(c);
	}
}

static void conn_status(struct dconn *c, enum dlv_status st)
{
	if (st == DLV_CLOSE) {
		conn_job_check(c);
		conn_close(c);
		return;
	}
	if (st == DLV_STARTTLS) {
		st = conn_tls_start(c);
		if (st == DLV_CLOSE) {
			conn_job_check(c);
			conn_close(c);
			return;
		}
	}
	conn_pump(c);
}

static void conn_free(struct dconn *c)
{
	struct io_dlv *d = c->d;
	DS_ASSERT(c->ops == 0);
	conn_unidle(c);
	if (c->job && c->job->phase == J_ATTEMPT) {
		/* Its ATTEMPT record is still flushing: job_submit() finds no connection and ends it. */
		struct djob *j = c->job;
		const struct dlv_outcome *e = c->cl ? dlv_client_error(c->cl) : NULL;
		j->hop_failed = conn_hop_failure(c);
		for (uint32_t i = 0; e && i < j->n; i++)
			j->out[i] = *e;
		j->c = NULL;
		c->job = NULL;
	}
	if (c->cl) {
		/* A message still in progress gets its outcomes (deferred) now. */
		dlv_client_fini(c->cl);
		conn_job_check(c);
		c->cl = NULL;
	}
	if (c->job) { /* a pipe run that ended without an outcome (shutdown): nothing recorded */
		struct djob *j = c->job;
		DS_ASSERT(!c->cl);
		c->job = NULL;
		j->c = NULL;
		job_defer_open(j, DLV_STAGE_NONE, "4.3.0", "pipe run abandoned");
		j->client_done = true;
		job_end(d, j);
	}
	dlv_pipe_free(c->pipe);
	c->pipe = NULL;
	if (c->tls)
		io_tls_conn_destroy(c->tls);
	c->tls = NULL;
	c->tls_hs = false;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	obs_metrics_dlv_conn_close(d->w->m, c->hop);
	c->state = DC_FREE;
	c->gen++;
	DS_ASSERT(d->conns_open > 0);
	d->conns_open--;
}

static void conn_close(struct dconn *c)
{
	struct io_dlv *d = c->d;
	if (c->state == DC_CLOSING || c->state == DC_FREE)
		return;
	const struct dlv_outcome *e = c->cl ? dlv_client_error(c->cl) : NULL;
	if (conn_hop_failure(c)) {
		dlv_queue_hop_failed(d->q, c->hop, ds_wall_us());
		if (c->state == DC_CONNECTING)
			obs_metrics_dlv_conn_failed(d->w->m, c->hop);
		obs_metrics_dlv_hop_up(d->w->m, c->hop, false);
		/* Once per outage: the probes after each back-off fail again without a new line. */
		if (!d->hop_down[c->hop]) {
			d->hop_down[c->hop] = true;
			obs_log_hop(d->w->log, d->cfg->hop[c->hop].text, false, e->text);
		}
	}
	conn_unidle(c);
	c->state = DC_CLOSING;
	if (c->pipe)
		dlv_pipe_kill(c->pipe);
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
	if (c->ops == 0)
		conn_free(c);
}

static struct dconn *conn_open(struct io_dlv *d, unsigned hop)
{
	if (d->conns_open >= d->conn_max)
		return NULL;
	struct dconn *c = NULL;
	for (uint32_t i = 0; i < d->conn_max; i++)
		if (d->conns[i].state == DC_FREE) {
			c = &d->conns[i];
			break;
		}
	if (!c)
		return NULL;
	const struct io_hop_spec *h = &d->cfg->hop[hop];
	int fd = socket(h->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	if (h->addr.ss_family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	c->fd = fd;
	c->hop = (uint8_t)hop;
	c->state = DC_CONNECTING;
	c->recv_armed = c->send_armed = c->reached_mail = false;
	c->job = NULL;
	c->next_idle = NULL;
	c->cl = dlv_client_init(d->client_mem + (size_t)c->idx * d->client_size,
				&d->ccfg[hop_is_lmtp(d, hop)], &client_ops, c);
	d->conns_open++;
	obs_metrics_dlv_conn_open(d->w->m, hop);
	struct io_uring_sqe *sqe = io_sqe(&d->w->ring);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&h->addr, h->addr_len);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_DLV, dud(UD_CONNECT, c->idx, c->gen)));
	c->ops++;
	conn_deadline(c);
	return c;
}

/* ---- the pipe: transport ---- */

static uint64_t pipe_ud(void *ctx, enum dlv_pipe_op op)
{
	struct dconn *c = ctx;
	return io_ud(IO_OP_DLV, dud((enum dud_kind)(UD_PWRITE + op), c->idx, c->gen));
}

/* A slot for one program run (spawned once the ATTEMPT record is durable). */
static struct dconn *pipe_conn_open(struct io_dlv *d, unsigned hop)
{
	if (d->conns_open >= d->conn_max)
		return NULL;
	for (uint32_t i = 0; i < d->conn_max; i++) {
		struct dconn *c = &d->conns[i];
		if (c->state != DC_FREE)
			continue;
		c->fd = -1;
		c->hop = (uint8_t)hop;
		c->state = DC_UP;
		c->cl = NULL;
		c->pipe = NULL;
		c->job = NULL;
		c->next_idle = NULL;
		c->recv_armed = c->send_armed = c->reached_mail = false;
		c->deadline_ms = INT64_MAX;
		d->conns_open++;
		obs_metrics_dlv_conn_open(d->w->m, hop);
		return c;
	}
	return NULL;
}

static void pipe_run(struct io_dlv *d, struct djob *j)
{
	struct dconn *c = j->c;
	char id[32];
	spool_id_format(j->qm->id, id, sizeof(id));
	struct ds_envelope env = j->fm.m.env;
	/* Only the recipients this attempt is for. */
	struct ds_rcpt *r = calloc(j->n ? j->n : 1, sizeof(*r));
	int ret = -ENOMEM;
	if (r) {
		for (uint32_t i = 0; i < j->n; i++)
			r[i] = j->fm.m.env.rcpt[j->map[i]];
		env.rcpt = r;
		env.rcpt_count = j->n;
		ret = dlv_pipe_start(&c->pipe, &d->w->ring, d->cfg->hop[j->hop].path, &env, id, j->attempt,
				     j->fm.m.size, body_read, j, pipe_ud, c);
		free(r);
	}
	if (ret < 0) {
		job_defer_open(j, DLV_STAGE_NONE, "4.3.0", "cannot run %s: %s", d->cfg->hop[j->hop].path,
			       strerror(-ret));
		j->client_done = true;
		c->job = NULL;
		j->c = NULL;
		conn_close(c);
		job_end(d, j);
		return;
	}
	c->deadline_ms = ds_mono_ms() + (int64_t)DS_MAX(d->cfg->timeout_pipe_s, 1u) * 1000;
	pipe_check(c, ds_mono_ms());
}

/* Arm what the run needs; once the program has exited and said its piece, the outcome. */
static void pipe_check(struct dconn *c, int64_t now_ms)
{
	if (!c->pipe || c->state != DC_UP)
		return;
	c->ops += dlv_pipe_pump(c->pipe);
	if (!dlv_pipe_done(c->pipe, now_ms))
		return;
	struct djob *j = c->job;
	if (j) {
		for (uint32_t i = 0; i < j->n; i++)
			dlv_pipe_outcome(c->pipe, &j->out[i]);
		j->client_done = true;
		c->job = NULL;
		j->c = NULL;
		job_end(c->d, j);
	}
	conn_close(c);
}

/* ---- client machine callbacks ---- */

static void cb_rcpt_done(void *ctx, const struct dlv_msg *m, uint32_t idx, const struct dlv_outcome *o)
{
	struct dconn *c = ctx;
	struct djob *j = c->job;
	DS_ASSERT(j && m == &j->msg && idx < j->n);
	j->out[idx] = *o;
}

static void cb_msg_done(void *ctx, const struct dlv_msg *m)
{
	struct dconn *c = ctx;
	struct djob *j = c->job;
	DS_ASSERT(j && m == &j->msg);
	j->client_done = true;
}

static const struct dlv_client_ops client_ops = {
	.rcpt_done = cb_rcpt_done,
	.msg_done = cb_msg_done,
};

/* ---- outcomes ---- */

static enum spool_rcpt_state state_of(enum dlv_class cls)
{
	return cls == DLV_DELIVERED ? SPOOL_RCPT_DELIVERED
	       : cls == DLV_FAILED  ? SPOOL_RCPT_FAILED
				    : SPOOL_RCPT_DEFERRED;
}

static ssize_t dsn_orig_read(void *ctx, uint64_t off, void *buf, size_t cap)
{
	struct djob *j = ctx;
	return spool_fetch_read(j->d->fetch, &j->fm, off, buf, cap);
}

/*
 * The bounce for this attempt's failed recipients (those whose NOTIFY asks
 * for it; never for <>): built in memory, then spooled as a new message
 * from <> to the sender, on this worker's lane. 0 when nothing is owed or
 * it is queued (j->dsn_taken), -EAGAIN when the lane has no room, -errno.
 */
static int job_dsn(struct io_dlv *d, struct djob *j)
{
	const struct ds_envelope *env = &j->fm.m.env;
	if (!j->dsn_buf.data) {
		struct dlv_dsn_rcpt *r = calloc(j->n, sizeof(*r));
		char(*diag)[DLV_TEXT_MAX + 32] = calloc(j->n, sizeof(*diag));
		if (!r || !diag) {
			free(r);
			free(diag);
			return -ENOMEM;
		}
		uint32_t k = 0;
		int64_t now = ds_wall_us();
		for (uint32_t i = 0; i < j->n; i++) {
			if (j->state[i] != SPOOL_RCPT_FAILED)
				continue;
			const struct dlv_outcome *o = &j->out[i];
			snprintf(diag[k], sizeof(diag[k]), "%u %s%s%s", o->code, o->esc, o->esc[0] ? " " : "",
				 o->text);
			r[k] = (struct dlv_dsn_rcpt){
				.addr = env->rcpt[j->map[i]].addr,
				.params = env->rcpt[j->map[i]].params,
				.action = DLV_DSN_FAILED,
				.status = o->code >= 400 && o->code < 500 ? "4.4.7" /* expired */
					  : o->esc[0]			  ? o->esc
									  : NULL,
				/* An operator bounce says so (x-dotspool: no remote reply to quote). */
				.diag_type = j->op_bounce ? "x-dotspool" : NULL,
				.diag = j->op_bounce ? o->text : o->local ? NULL : diag[k],
				.remote_mta = NULL,
				.last_attempt_us = now,
			};
			k++;
		}
		char idtext[32], msgid[320], seed[40];
		spool_id_format(j->qm->id, idtext, sizeof(idtext));
		snprintf(msgid, sizeof(msgid), "<%s.%u.dsn@%s>", idtext, j->attempt, d->w->cfg->hostname);
		snprintf(seed, sizeof(seed), "%s.%u", idtext, j->attempt);
		struct dlv_dsn_input in = {
			.reporting_mta = d->w->cfg->hostname,
			.message_id = msgid,
			.boundary_seed = seed,
			.now_us = now,
			.env = env,
			.rcpt = r,
			.rcpt_count = DS_MIN(k, (uint32_t)DLV_DSN_RCPT_MAX),
			.orig = {.size = j->fm.m.size, .read = dsn_orig_read, .ctx = j},
		};
		j->dsn_buf.max = DLV_DSN_MAX_BYTES;
		struct dlv_dsn_result res;
		int ret = k ? dlv_dsn_build(&in, &(struct dlv_dsn_sink){dlv_dsn_buf_write, &j->dsn_buf}, &res)
			    : -ENODATA;
		free(r);
		free(diag);
		if (ret == -ENODATA || ret == -EDESTADDRREQ) {
			dlv_dsn_buf_free(&j->dsn_buf);
			return 0; /* nothing owed: FAILED stands without a DSN */
		}
		if (ret < 0) {
			dlv_dsn_buf_free(&j->dsn_buf);
			return ret;
		}
		j->dsn_failed = res.failed;
		j->dsn_rcpt = (struct ds_rcpt){.addr = env->mail_from, .params = ""};
		j->dsn_env = (struct ds_envelope){
			.client_addr = "",
			.helo = d->w->cfg->hostname,
			.proto = "LOCAL",
			.mail_from = "",
			.mail_params = res.body_8bit
					       ? (res.smtputf8 ? "BODY=8BITMIME SMTPUTF8" : "BODY=8BITMIME")
					       : (res.smtputf8 ? "SMTPUTF8" : ""),
			.rcpt = &j->dsn_rcpt,
			.rcpt_count = 1,
			.tls = "",
			.received_at_us = now,
			.body_size = j->dsn_buf.len,
		};
	}
	if (!j->dsn_buf.data)
		return 0;
	struct spool_lane *l = d->w->lane;
	if (spool_lane_append_room(l) < j->dsn_buf.len + 65536)
		return -EAGAIN;
	int ret = spool_txn_begin(l, &j->dsn_txn);
	if (ret < 0)
		return ret;
	ret = spool_txn_append(l, &j->dsn_txn, j->dsn_buf.data, j->dsn_buf.len);
	if (ret < 0) {
		spool_txn_abort(l, &j->dsn_txn);
		return ret;
	}
	/* A commit that fails (not -EAGAIN) has closed the txn; -EAGAIN leaves it open. */
	ret = spool_txn_commit(l, &j->dsn_txn, &j->dsn_env, dcookie(CK_DSN, j));
	if (ret == -EAGAIN)
		spool_txn_abort(l, &j->dsn_txn);
	if (ret < 0)
		return ret;
	spool_txn_location(&j->dsn_txn, &j->dsn_seq, &j->dsn_off);
	j->dsn_id = j->dsn_txn.id;
	j->dsn_taken = true;
	return 0;
}

static int job_write_outcome(struct io_dlv *d, struct djob *j)
{
	for (uint32_t i = 0; i < j->n; i++) {
		const struct dlv_outcome *o = &j->out[i];
		j->rec[i] = (struct spool_outcome_rcpt){
			.idx = j->map[i],
			.state = j->state[i],
			.possible_duplicate = o->possible_duplicate,
			.code = o->code,
			.esc = o->esc,
			.text = o->text,
		};
	}
	struct spool_outcome rec = {
		.id = j->qm->id,
		.attempt = j->attempt,
		.at_us = ds_wall_us(),
		.next_attempt_us = j->due_us,
		.dsn_id = j->dsn_id,
		.hop = j->op_bounce ? "" : d->cfg->hop[j->hop].text,
		.rcpt_count = j->n,
		.rcpt = j->rec,
	};
	return spool_lane_outcome(d->w->lane, &rec, dcookie(CK_OUTCOME, j));
}

/* The DSN (if owed) then the outcome record, as room in the lane allows. */
static void job_records(struct io_dlv *d, struct djob *j)
{
	int ret = 0;
	if (!j->dsn_taken && !j->outcome_taken) {
		ret = job_dsn(d, j);
		if (ret == -EAGAIN) {
			job_wait_room(d, j);
			return;
		}
		if (ret < 0) {
			/* No DSN could be spooled: the failed recipients stay open, tried (and failed) again.
			 */
			fprintf(stderr, "dotspool: worker %u: DSN not spooled: %s\n", d->w->no,
				strerror(-ret));
			for (uint32_t i = 0; i < j->n; i++)
				if (j->state[i] == SPOOL_RCPT_FAILED)
					j->state[i] = SPOOL_RCPT_DEFERRED;
			if (!j->due_us)
				j->due_us = ds_wall_us() + (int64_t)d->cfg->retry_min_s * 1000000;
		}
	}
	if (!j->outcome_taken) {
		ret = job_write_outcome(d, j);
		if (ret == -EAGAIN) {
			job_wait_room(d, j);
			return;
		}
		if (ret < 0) {
			/* The lane cannot write: nothing is recorded, the message is tried again (at least
			 * once). */
			j->outcome_settled = true;
			j->outcome_res = ret;
			job_end(d, j);
			return;
		}
		j->outcome_taken = true;
	}
}

static void job_log(struct io_dlv *d, struct djob *j, uint32_t delivered, uint32_t deferred, uint32_t failed)
{
	char id[32], dsn[32] = "";
	spool_id_format(j->qm->id, id, sizeof(id));
	if (j->dsn_id && j->dsn_settled && j->dsn_res == 0)
		spool_id_format(j->dsn_id, dsn, sizeof(dsn));
	/* The reply to show: the first recipient's that is not delivered, else the first. */
	const struct dlv_outcome *o = &j->out[0];
	bool dup = false, redelivery = false;
	for (uint32_t i = 0; i < j->n; i++) {
		if (j->out[i].cls != DLV_DELIVERED && o->cls == DLV_DELIVERED)
			o = &j->out[i];
		dup |= j->out[i].possible_duplicate;
		redelivery |= j->was[i] == SPOOL_RCPT_ATTEMPT && j->state[i] == SPOOL_RCPT_DELIVERED;
	}
	const char *outcome = delivered == j->n	 ? "delivered"
			      : deferred == j->n ? "deferred"
			      : failed == j->n	 ? "failed"
						 : "mixed";
	struct obs_log_delivery l = {
		.queue_id = id,
		.hop = j->op_bounce ? "operator" : d->cfg->hop[j->hop].text, /* an operator bounce tried no hop */
		.attempt = j->attempt,
		.rcpts = j->n,
		.delivered = delivered,
		.deferred = deferred,
		.failed = failed,
		.outcome = outcome,
		.code = o->code,
		.esc = o->esc,
		.reply = o->text,
		.delay_ms = (uint64_t)DS_MAX(ds_wall_us() - j->qm->received_at_us, 0) / 1000,
		.duration_ms = (uint64_t)DS_MAX(ds_mono_ms() - j->start_ms, 0),
		.possible_duplicate = dup,
		.redelivery = redelivery,
		.dsn_id = dsn,
	};
	obs_log_delivery(d->w->log, &l);
}

/* Both records settled: the queue learns the new states. */
static void job_apply(struct io_dlv *d, struct djob *j)
{
	struct dlv_qmsg *qm = j->qm;
	struct obs_metrics *m = d->w->m;
	bool durable = j->outcome_res == 0;
	bool dsn_ok = !j->dsn_taken || j->dsn_res == 0;
	uint32_t cnt[4] = {0};
	if (j->dsn_taken && j->dsn_res == 0) {
		struct dlv_queue_add a = {
			.id = j->dsn_id,
			.lane = d->w->no,
			.seq = j->dsn_seq,
			.off = j->dsn_off,
			.size = j->dsn_env.body_size,
			.received_at_us = j->dsn_env.received_at_us,
			.rcpt_count = 1,
		};
		if (dlv_queue_add(d->q, &a, NULL) < 0)
			fprintf(stderr,
				"dotspool: worker %u: delivery queue full: the DSN goes out after a "
				"restart\n",
				d->w->no);
		obs_metrics_dlv_dsn(m);
		char id[32], dsn[32];
		spool_id_format(qm->id, id, sizeof(id));
		spool_id_format(j->dsn_id, dsn, sizeof(dsn));
		obs_log_dsn(d->w->log, id, dsn, j->dsn_failed);
	}
	obs_metrics_dlv_record(m, durable);
	for (uint32_t i = 0; i < j->n; i++) {
		uint8_t s = j->state[i];
		if (!durable)
			/* Nothing recorded: tried again. One the next hop took is marked as a restart
			 * would find it (ATTEMPT), so that its delivery again counts as a re-delivery. */
			s = s == SPOOL_RCPT_DELIVERED ? SPOOL_RCPT_ATTEMPT : SPOOL_RCPT_DEFERRED;
		else if (s == SPOOL_RCPT_FAILED && !dsn_ok)
			s = SPOOL_RCPT_DEFERRED; /* the DSN did not make it: recovery would not count FAILED
						    either */
		dlv_queue_rcpt_state(d->q, qm, j->map[i], s);
		DS_ASSERT(j->out[i].cls >= DLV_DELIVERED && j->out[i].cls <= DLV_FAILED);
		cnt[j->out[i].cls]++;
		if (j->state[i] == SPOOL_RCPT_DELIVERED && j->was[i] == SPOOL_RCPT_ATTEMPT)
			obs_metrics_dlv_redelivery(m, 1);
		if (j->out[i].possible_duplicate)
			obs_metrics_dlv_possible_duplicate(m, 1);
	}
	for (unsigned k = 1; k <= 3 && !j->op_bounce; k++)
		if (cnt[k])
			obs_metrics_dlv_outcome(m, j->hop, k, cnt[k]);
	if (cnt[DLV_DELIVERED])
		obs_metrics_dlv_latency(m, (uint64_t)DS_MAX(ds_wall_us() - qm->received_at_us, 0));
	job_log(d, j, cnt[DLV_DELIVERED], cnt[DLV_DEFERRED], cnt[DLV_FAILED]);
	if (qm->rcpt_open == 0) {
		/*
		 * H12 (issue 15): final from durable records only (not durable -> DEFERRED above,
		 * FAILED without its DSN -> DEFERRED): its segments may be reclaimed.
		 */
		if (d->w->cfg->spool.reclaim)
			/* With its state: a kept (at-risk) message is moved by compaction (issue 16). */
			spool_reclaim_msg_final_state(
				d->w->cfg->spool.reclaim, qm->id,
				&(struct spool_reclaim_final_state){.seq = qm->seq,
								    .off = qm->off,
								    .size = qm->size,
								    .attempts = qm->attempts,
								    .rcpt_count = qm->rcpt_count,
								    .rcpt_state = qm->rcpt_state});
		dlv_queue_done(d->q, qm);
	} else {
		int64_t due = j->due_us;
		if (!durable || !dsn_ok || !due)
			due = ds_wall_us() + (int64_t)d->cfg->retry_min_s * 1000000;
		dlv_queue_defer(d->q, qm, due);
	}
	job_put(d, j);
}

/*
 * The attempt is over (every recipient has an outcome in j->out), or it
 * never reached a connection. Decide the states, then the records.
 */
static void job_end(struct io_dlv *d, struct djob *j)
{
	if (j->phase == J_RECORD) {
		/* Records in progress: finish once everything taken has settled. */
		if ((j->outcome_taken && !j->outcome_settled) || (j->dsn_taken && !j->dsn_settled))
			return;
		if (j->outcome_taken || j->outcome_settled)
			job_apply(d, j);
		return;
	}
	if (j->phase == J_ATTEMPT && !j->attempt_settled)
		return; /* the ATTEMPT record is still flushing: job_submit comes back here */
	int64_t now = ds_wall_us();
	if (j->hop_failed && dlv_queue_hop_pick(d->q, now) >= 0) {
		/* The hop failed as a whole and a fallback is up: try it now, nothing to record. */
		dlv_queue_retry_now(d->q, j->qm);
		job_put(d, j);
		return;
	}
	j->phase = J_RECORD;
	/* Those that never reached the machine: the connection failed first. */
	job_defer_open(j, DLV_STAGE_CONNECT, "4.4.1", "no connection to the next hop");
	bool deferred = false;
	for (uint32_t i = 0; i < j->n; i++) {
		j->state[i] = state_of(j->out[i].cls);
		deferred |= j->state[i] == SPOOL_RCPT_DEFERRED;
	}
	if (deferred) {
		j->due_us = dlv_queue_backoff_us(d->q, j->qm, now);
		if (j->due_us == 0) {
			/*
			 * Past --queue-lifetime-s: what is still deferred fails now, with a DSN.
			 * The outcome keeps the last real reply (a FAILED entry with a 4xx code
			 * is an expiry); the DSN says Status 4.4.7 with that reply as its
			 * Diagnostic-Code, as Postfix does.
			 */
			for (uint32_t i = 0; i < j->n; i++) {
				if (j->state[i] != SPOOL_RCPT_DEFERRED)
					continue;
				j->out[i].cls = DLV_FAILED;
				j->state[i] = SPOOL_RCPT_FAILED;
			}
		}
	}
	job_records(d, j);
}

/* ---- starting attempts ---- */

/*
 * Its ATTEMPT record could not be made durable: nothing was handed over,
 * nothing is recorded. The message goes back to the queue (due now) and the
 * connection, if any, to the next message.
 */
static void job_abandon(struct io_dlv *d, struct djob *j)
{
	struct dconn *c = j->c;
	if (c) {
		c->job = NULL;
		j->c = NULL;
	}
	dlv_queue_retry_now(d->q, j->qm);
	job_put(d, j);
	if (c)
		conn_pump(c);
}

static struct dconn *conn_for(struct io_dlv *d, unsigned hop)
{
	if (d->cfg->hop[hop].kind == IO_HOP_PIPE || d->hoff)
		return pipe_conn_open(d, hop); /* amqp: a slot of the confirm window, no socket */
	struct dconn *c = d->idle[hop];
	if (c) {
		conn_unidle(c);
		return c;
	}
	return conn_open(d, hop);
}

static bool job_start(struct io_dlv *d, int64_t now)
{
	int hop = dlv_queue_hop_pick(d->q, now);
	if (hop < 0 || !d->job_free)
		return false;
	if (!d->idle[hop] && d->conns_open >= d->conn_max)
		return false;
	if (d->hoff && !d->ho_st.connected)
		return false; /* amqp: the broker is away; messages wait, undeferred, until it is back */
	struct dlv_qmsg *qm = dlv_queue_next(d->q, now);
	if (!qm)
		return false;
	struct djob *j = job_get(d);
	j->qm = qm;
	j->hop = (unsigned)hop;
	j->start_ms = ds_mono_ms();
	int ret = job_build(d, j);
	if (ret < 0) {
		char id[32];
		spool_id_format(qm->id, id, sizeof(id));
		fprintf(stderr, "dotspool: worker %u: message %s cannot be read for delivery: %s\n", d->w->no,
			id, strerror(-ret));
		dlv_queue_defer(d->q, qm, ds_wall_us() + (int64_t)DS_MAX(d->cfg->retry_min_s, 1u) * 1000000);
		job_put(d, j);
		return true;
	}
	struct dconn *c = conn_for(d, (unsigned)hop);
	if (!c) {
		dlv_queue_retry_now(d->q, qm);
		job_put(d, j);
		return false;
	}
	dlv_queue_attempt_begin(d->q, qm);
	j->attempt = qm->attempts;
	j->c = c;
	c->job = j;
	obs_metrics_dlv_attempt(d->w->m, (unsigned)hop);
	ret = job_write_attempt(d, j);
	if (ret == -EAGAIN) {
		job_wait_room(d, j);
	} else if (ret < 0) {
		/* The lane cannot record: do not hand anything over that could not be accounted for. */
		job_abandon(d, j);
		return false;
	}
	return true;
}

/* ---- operator commands (issue 15 point 4; io/ctlsock.h, deliver/README.md) ---- */

#define DLV_OP_REASON "bounced by the operator"

static uint64_t op_cookie(const struct dop *op)
{
	uintptr_t p = (uintptr_t)op;

	DS_ASSERT(p < (1ull << 56));
	return IO_DLV_COOKIE_BIT | ((uint64_t)CK_OPERATOR << 56) | p;
}

static void op_batch_step(struct io_dlv *d, struct dop *op)
{
	struct io_ctl_batch *b = op->b;

	(void)d;
	DS_ASSERT(b->left > 0);
	if (--b->left == 0) {
		free(op->base);
		io_ctlsock_batch_done(b);
	}
}

/*
 * The operator record of op settled (res 0: durable) or could not be
 * written: the queue acts only now, so a confirmed command is on disk.
 */
static void op_resolve(struct io_dlv *d, struct dop *op, int res)
{
	struct io_ctl_batch *b = op->b;
	struct dlv_qmsg *qm = op->qm;

	qm->mark = 0;
	if (res < 0) {
		dlv_queue_hold(d->q, qm, op->was_held); /* as it was: nothing happened */
		b->res[op->i] = IO_CTL_ERROR;
		op_batch_step(d, op);
		return;
	}
	b->res[op->i] = IO_CTL_OK;
	obs_metrics_operator_action(d->w->m, b->action);
	switch (b->action) {
	case SPOOL_OPERATOR_HOLD:
		break; /* frozen is held */
	case SPOOL_OPERATOR_RELEASE:
		dlv_queue_hold(d->q, qm, false); /* due now */
		break;
	case SPOOL_OPERATOR_RETRY:
		if (!op->was_held)
			dlv_queue_hold(d->q, qm, false); /* due now; a held message stays held */
		break;
	case SPOOL_OPERATOR_DELETE:
		/* Final from its durable record: never delivered, no DSN; its segments may go. */
		if (d->w->cfg->spool.reclaim)
			spool_reclaim_msg_final(d->w->cfg->spool.reclaim, qm->id);
		dlv_queue_done(d->q, qm);
		break;
	case SPOOL_OPERATOR_BOUNCE: {
		/* Stays frozen until a bounce job takes it (io_dlv_run). */
		uint64_t *nb = ds_grow(d->bounce, &d->capbounce, d->nbounce, sizeof(*nb), 64);
		if (nb) {
			d->bounce = nb;
			d->bounce[d->nbounce++] = qm->id;
		} else {
			fprintf(stderr, "dotspool: worker %u: out of memory: the bounce goes out after a restart\n",
				d->w->no);
		}
		break;
	}
	}
	op_batch_step(d, op);
}

static void op_write(struct io_dlv *d, struct dop *op)
{
	const struct io_ctl_batch *b = op->b;
	struct spool_operator o = {.id = b->ids[op->i],
				   .action = b->action,
				   .uid = b->uid,
				   .pid = b->pid,
				   .at_us = b->at_us,
				   .name = b->user,
				   .reason = b->reason ? b->reason : ""};
	int ret = spool_lane_operator(d->w->lane, &o, op_cookie(op));

	if (ret == -EAGAIN) {
		op->next_wait = d->op_wait;
		d->op_wait = op;
	} else if (ret < 0) {
		op_resolve(d, op, ret);
	}
}

/* retry --all: every deferred message not held is due now (in memory, like postqueue -f). */
static int op_due_now(void *ctx, const struct dlv_qmsg *m)
{
	struct io_dlv *d = ctx;

	if (m->line == DLV_QLINE_DEFERRED && !m->held && !m->mark) {
		dlv_queue_due_now(d->q, (struct dlv_qmsg *)m);
		d->all_count++;
	}
	return 0;
}

/* A batch from the control socket: look every id up, freeze what is there, write the records. */
static void op_batch(struct io_dlv *d, struct io_ctl_batch *b)
{
	if (b->all) {
		d->all_count = 0;
		dlv_queue_foreach(d->q, op_due_now, d);
		b->all_count = d->all_count;
		io_ctlsock_batch_done(b);
		return;
	}
	struct dlv_qmsg **found = calloc(b->n ? b->n : 1, sizeof(*found));
	struct dop *ops = calloc(b->n ? b->n : 1, sizeof(*ops));
	if (!found || !ops) {
		for (uint32_t i = 0; i < b->n; i++)
			b->res[i] = IO_CTL_ERROR;
		free(found);
		free(ops);
		io_ctlsock_batch_done(b);
		return;
	}
	dlv_queue_find(d->q, b->ids, b->n, found);
	b->left = 1; /* held until every id is looked at */
	for (uint32_t i = 0; i < b->n; i++) {
		struct dlv_qmsg *qm = found[i];
		if (!qm) {
			b->res[i] = IO_CTL_UNKNOWN;
			continue;
		}
		if (qm->line == DLV_QLINE_BUSY || qm->mark) {
			b->res[i] = IO_CTL_BUSY; /* an attempt or another action under way: asked again */
			continue;
		}
		/* Frozen (held and marked) until its record settles: never picked, never freed meanwhile. */
		ops[i] = (struct dop){.b = b, .base = ops, .i = i, .qm = qm, .was_held = qm->held};
		qm->mark = 1;
		dlv_queue_hold(d->q, qm, true);
		b->left++;
		op_write(d, &ops[i]);
	}
	free(found);
	op_batch_step(d, &(struct dop){.b = b, .base = ops});
}

/* Every id still on the bounce list whose message can be taken now gets its bounce job. */
static void job_bounce(struct io_dlv *d, struct dlv_qmsg *qm)
{
	struct djob *j = job_get(d);
	j->qm = qm;
	j->hop = 0;
	j->op_bounce = true;
	j->start_ms = ds_mono_ms();
	dlv_queue_take(d->q, qm);
	int ret = job_build(d, j);
	if (ret < 0) {
		char id[32];
		spool_id_format(qm->id, id, sizeof(id));
		fprintf(stderr, "dotspool: worker %u: message %s cannot be read to bounce it: %s\n", d->w->no, id,
			strerror(-ret));
		dlv_queue_defer(d->q, qm, ds_wall_us() + (int64_t)DS_MAX(d->cfg->retry_min_s, 1u) * 1000000);
		job_put(d, j);
		return;
	}
	j->attempt = DS_MAX(qm->attempts, 1u);
	j->attempt_settled = true;
	j->phase = J_RECORD;
	for (uint32_t i = 0; i < j->n; i++) {
		j->out[i] = (struct dlv_outcome){.cls = DLV_FAILED, .stage = DLV_STAGE_NONE, .code = 550, .local = true};
		snprintf(j->out[i].esc, sizeof(j->out[i].esc), "5.0.0");
		snprintf(j->out[i].text, sizeof(j->out[i].text), "%s", DLV_OP_REASON);
		j->state[i] = SPOOL_RCPT_FAILED;
	}
	job_records(d, j);
}

static void bounces_run(struct io_dlv *d)
{
	if (!d->nbounce || !d->job_free)
		return;
	qsort(d->bounce, d->nbounce, sizeof(*d->bounce), ds_u64_cmp);
	size_t k = 0;
	for (size_t i = 0; i < d->nbounce; i++)
		if (!k || d->bounce[k - 1] != d->bounce[i])
			d->bounce[k++] = d->bounce[i];
	d->nbounce = k;
	struct dlv_qmsg **found = calloc(d->nbounce, sizeof(*found));
	if (!found)
		return;
	dlv_queue_find(d->q, d->bounce, (uint32_t)d->nbounce, found);
	k = 0;
	for (size_t i = 0; i < d->nbounce; i++) {
		struct dlv_qmsg *qm = found[i];
		if (!qm)
			continue; /* gone (deleted, or final meanwhile) */
		if (qm->line == DLV_QLINE_BUSY || qm->mark || !d->job_free) {
			d->bounce[k++] = d->bounce[i];
			continue;
		}
		job_bounce(d, qm);
	}
	d->nbounce = k;
	free(found);
}

/* Operator records that found no room, new batches from the control socket, owed bounces. */
static void ops_run(struct io_dlv *d)
{
	struct dop *list = d->op_wait;
	d->op_wait = NULL;
	while (list) {
		struct dop *op = list;
		list = op->next_wait;
		op->next_wait = NULL;
		op_write(d, op);
	}
	for (struct io_ctl_batch *b = io_ctlsock_take(d->w->no); b;) {
		struct io_ctl_batch *next = b->next;
		op_batch(d, b);
		b = next;
	}
	if (!d->stopping)
		bounces_run(d); /* else owed: bounced at the next start (the BOUNCE record says so) */
}

void io_dlv_run(struct io_worker *w)
{
	struct io_dlv *d = w->dlv;
	if (!d)
		return;
	if (d->hoff)
		d->ho->kick(d->hoff); /* what the settled ATTEMPT records handed off this turn */
	/* Records that found no room last time. */
	struct djob *list = d->wait_head;
	d->wait_head = NULL;
	while (list) {
		struct djob *j = list;
		list = j->next;
		j->next = NULL;
		j->wait_room = false;
		if (j->phase == J_ATTEMPT) {
			int ret = job_write_attempt(d, j);
			if (ret == -EAGAIN) {
				job_wait_room(d, j);
			} else if (ret < 0) {
				job_abandon(d, j);
			}
		} else {
			job_records(d, j);
		}
	}
	ops_run(d);
	if (d->stopping)
		return;
	int64_t now = ds_wall_us();
	for (int i = 0; i < DLV_STARTS_PER_TURN; i++)
		if (!job_start(d, now))
			break;
}

/* ---- per-message hand-off: amqp:// (issue 18; io/dlv_handoff.h, io/dlv_amqp.c) ---- */

static void handoff_arm(struct io_dlv *d)
{
	struct io_uring_sqe *sqe = io_sqe(&d->w->ring);
	io_uring_prep_read(sqe, d->ho->event_fd(d->hoff), &d->ho_ev, sizeof(d->ho_ev), 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_DLV, dud(UD_HANDOFF, 0, 0)));
}

/* The ATTEMPT record is durable: the message goes to the hand-off thread (its slot stays taken). */
static void handoff_run(struct io_dlv *d, struct djob *j)
{
	struct io_handoff_req r = {
		.cookie = dcookie(CK_ATTEMPT, j),
		.id = j->qm->id,
		.lane = j->qm->lane,
		.seq = j->qm->seq,
		.off = j->qm->off,
		.attempt = j->attempt,
		.rcpt_count = j->n,
		.rcpt_idx = j->map,
	};
	int ret = d->ho->submit(d->hoff, &r);
	if (ret < 0) {
		struct dconn *c = j->c;
		job_defer_open(j, DLV_STAGE_SUBMIT, "4.3.0", "not handed off: %s", strerror(-ret));
		j->client_done = true;
		c->job = NULL;
		j->c = NULL;
		conn_close(c);
		job_end(d, j);
	}
}

/* The broker's word on one message: the same outcome for every recipient of the attempt. */
static void handoff_result(struct io_dlv *d, const struct io_handoff_result *r)
{
	struct djob *j = job_lookup(d, r->cookie);
	if (!j || j->phase != J_SENDING || !j->c) {
		/* Abandoned at the stop deadline (recorded deferred already): nothing to do. */
		obs_metrics_handoff_result(d->w->m, r->why, 0, r->confirm_us);
		return;
	}
	uint64_t accepted_us = (uint64_t)DS_MAX(ds_wall_us() - j->qm->received_at_us, 0);
	obs_metrics_handoff_result(d->w->m, r->why, accepted_us, r->confirm_us);
	struct dconn *c = j->c;
	/*
	 * Not taken, and the broker (not the message) is the cause: the connection (lost, or
	 * none for a while), or the broker refusing or stalling as a whole (nack: e.g. a quorum
	 * queue electing a new leader; no confirm in time). Such a message is not deferred by
	 * its own back-off (retry-min-s: minutes) but goes back to the queue at once, nothing
	 * recorded (job_end's hop-failure path, as SMTP's before MAIL): the connection causes
	 * wait for the reconnection (job_start), the others back every amqp hop off
	 * (--deliver-hop-backoff-min-s, doubling; a confirm clears it). Published and then no
	 * word: the broker may hold it, a possible duplicate.
	 */
	bool conn_cause = r->why == IO_HANDOFF_CONN_LOST || r->why == IO_HANDOFF_NO_CONN;
	bool broker_cause = r->why == IO_HANDOFF_NACKED || r->why == IO_HANDOFF_TIMEOUT;
	j->hop_failed = conn_cause || broker_cause;
	if (r->why == IO_HANDOFF_CONN_LOST || r->why == IO_HANDOFF_TIMEOUT)
		obs_metrics_dlv_possible_duplicate(d->w->m, j->n);
	for (uint32_t i = 0; i < j->n; i++) {
		struct dlv_outcome *o = &j->out[i];
		*o = (struct dlv_outcome){
			.cls = (enum dlv_class)r->cls,
			.stage = DLV_STAGE_DOT,
			.code = r->code,
			/* the broker said it (ack, nack, return, too big) or we decided (the rest) */
			.local = r->why != IO_HANDOFF_CONFIRMED && r->why != IO_HANDOFF_NACKED &&
				 r->why != IO_HANDOFF_RETURNED && r->why != IO_HANDOFF_TOO_BIG,
			/* published, and then no word: the broker may hold it (at least once) */
			.possible_duplicate = r->why == IO_HANDOFF_TIMEOUT || r->why == IO_HANDOFF_CONN_LOST,
		};
		snprintf(o->esc, sizeof(o->esc), "%s", r->esc);
		snprintf(o->text, sizeof(o->text), "%s", r->text);
	}
	j->client_done = true;
	c->job = NULL;
	j->c = NULL;
	conn_close(c);
	job_end(d, j); /* j may be gone */
	for (unsigned h = 0; h < d->cfg->hop_count; h++) {
		if (broker_cause)
			dlv_queue_hop_failed(d->q, h, ds_wall_us());
		else if (r->why == IO_HANDOFF_CONFIRMED)
			dlv_queue_hop_ok(d->q, h);
	}
}

static void handoff_log(struct io_dlv *d, bool up, const struct io_handoff_state *s)
{
	struct obs_log_ring *log = d->w->log;
	if (!obs_log_begin(log, up ? OBS_LOG_INFO : OBS_LOG_WARN, up ? "hop_up" : "hop_down"))
		return;
	obs_log_str(log, "hop", d->cfg->hop[0].text);
	obs_log_str(log, up ? "broker" : "reason", up ? s->peer : s->last_error);
	obs_log_u64(log, "unconfirmed", s->in_flight);
	obs_log_end(log);
}

/* The thread's state: connection loss and recovery (a log line each), gauges. */
static void handoff_state(struct io_dlv *d)
{
	struct io_handoff_state s;
	d->ho->state(d->hoff, &s);
	if (s.losses != d->ho_st.losses)
		handoff_log(d, false, &s);
	if (s.connects != d->ho_st.connects && s.connected)
		handoff_log(d, true, &s);
	int64_t now = ds_wall_us();
	for (unsigned h = 0; h < d->cfg->hop_count; h++) /* down: no connection, or backed off (nack) */
		obs_metrics_dlv_hop_up(d->w->m, h, s.connected && dlv_queue_hop_up(d->q, h, now));
	d->hop_down[0] = !s.connected;
	obs_metrics_handoff_state(d->w->m, s.connected, s.in_flight, s.losses);
	d->ho_st = s;
}

static void handoff_complete(struct io_dlv *d)
{
	struct io_handoff_result r[32];
	unsigned n;
	while ((n = d->ho->results(d->hoff, r, DS_ARRAY_SIZE(r))) > 0)
		for (unsigned i = 0; i < n; i++)
			handoff_result(d, &r[i]);
	handoff_state(d);
	handoff_arm(d);
}

/* ---- completions ---- */

void io_dlv_complete(struct io_worker *w, uint64_t low, int res, uint32_t flags)
{
	struct io_dlv *d = w->dlv;
	(void)flags;
	DS_ASSERT(d != NULL);
	enum dud_kind k = (enum dud_kind)(low >> 56);
	if (k == UD_HANDOFF) {
		handoff_complete(d);
		return;
	}
	uint32_t idx = (uint32_t)((low >> 32) & 0xffffff);
	DS_ASSERT(idx < d->conn_max);
	struct dconn *c = &d->conns[idx];
	DS_ASSERT(c->gen == (uint32_t)low && c->ops > 0);
	c->ops--;
	if (k == UD_RECV)
		c->recv_armed = false;
	if (k == UD_SEND)
		c->send_armed = false;
	if (k >= UD_PWRITE && c->state == DC_CLOSING)
		dlv_pipe_complete(c->pipe, (enum dlv_pipe_op)(k - UD_PWRITE), res);
	if (c->state == DC_CLOSING) {
		if (c->ops == 0)
			conn_free(c);
		return;
	}
	if (k >= UD_PWRITE) {
		dlv_pipe_complete(c->pipe, (enum dlv_pipe_op)(k - UD_PWRITE), res);
		pipe_check(c, ds_mono_ms());
		return;
	}
	enum dlv_status st = DLV_OK;
	switch (k) {
	case UD_CONNECT:
		if (res < 0) {
			st = dlv_client_eof(c->cl, res);
			break;
		}
		c->state = DC_UP;
		dlv_client_connected(c->cl);
		break;
	case UD_RECV:
		if (res <= 0) {
			st = dlv_client_eof(c->cl, res);
			break;
		}
		size_t used = 0;
		if (c->tls)
			st = conn_tls_input(c, c->rbuf, (size_t)res);
		else
			st = dlv_client_input(c->cl, c->rbuf, (size_t)res, &used);
		break;
	case UD_SEND:
		if (res < 0) {
			st = dlv_client_eof(c->cl, res);
			break;
		}
		if (c->tls)
			io_tls_output_consumed(c->tls, (size_t)res);
		else
			st = dlv_client_output_consumed(c->cl, (size_t)res);
		break;
	default:
		DS_ASSERT(!"unknown delivery completion");
	}
	conn_status(c, st);
}

void io_dlv_settled(struct io_worker *w, uint64_t cookie, int res)
{
	struct io_dlv *d = w->dlv;
	DS_ASSERT(d != NULL);
	if (((cookie >> 56) & 0x7f) == CK_OPERATOR) {
		op_resolve(d, (struct dop *)(uintptr_t)(cookie & ((1ull << 56) - 1)), res);
		return;
	}
	struct djob *j = job_lookup(d, cookie);
	DS_ASSERT(j != NULL);
	switch ((enum dck_kind)((cookie >> 56) & 0x7f)) {
	case CK_ATTEMPT:
		j->attempt_settled = true;
		if (res < 0) {
			/* Not durable: nothing may go out on its account. */
			job_abandon(d, j);
			return;
		}
		job_submit(d, j);
		return;
	case CK_OUTCOME:
		j->outcome_settled = true;
		j->outcome_res = res;
		break;
	case CK_DSN:
		j->dsn_settled = true;
		j->dsn_res = res;
		break;
	case CK_OPERATOR:
		DS_ASSERT(!"operator cookies are handled above");
	}
	job_end(d, j);
}

void io_dlv_committed(struct io_worker *w, uint64_t id, uint64_t seq, uint64_t off,
		      const struct ds_envelope *env)
{
	struct io_dlv *d = w->dlv;
	if (!d)
		return;
	struct dlv_queue_add a = {
		.id = id,
		.lane = w->no,
		.seq = seq,
		.off = off,
		.size = env->body_size,
		.received_at_us = env->received_at_us,
		.rcpt_count = env->rcpt_count,
	};
	int ret = dlv_queue_add(d->q, &a, NULL);
	if (ret < 0 && ret != -EALREADY)
		fprintf(stderr, "dotspool: worker %u: delivery queue: %s (delivered after a restart)\n",
			w->no, strerror(-ret));
}

/* ---- timers, gauges, shutdown ---- */

static void gauges(struct io_dlv *d, int64_t now_ms)
{
	if (now_ms < d->next_gauges_ms)
		return;
	d->next_gauges_ms = now_ms + 1000;
	struct dlv_queue_stats st;
	dlv_queue_stats(d->q, &st);
	obs_metrics_dlv_queue(d->w->m, st.messages, st.bytes, st.rcpts_open, st.oldest_received_at_us);
	obs_metrics_queue_held(d->w->m, st.held);
}

void io_dlv_tick(struct io_worker *w, int64_t now_ms)
{
	struct io_dlv *d = w->dlv;
	if (!d)
		return;
	for (uint32_t i = 0; i < d->conn_max; i++) {
		struct dconn *c = &d->conns[i];
		if (c->state == DC_FREE || c->state == DC_CLOSING)
			continue;
		if (!c->cl) { /* a pipe run: over its time, or exited with a child still holding its output */
			if (c->pipe && now_ms >= c->deadline_ms)
				dlv_pipe_kill(c->pipe);
			pipe_check(c, now_ms);
			continue;
		}
		if (now_ms < c->deadline_ms)
			continue;
		if (!c->job && dlv_client_idle(c->cl)) {
			/* Idle too long (or shutting down): QUIT politely. */
			conn_unidle(c);
			dlv_client_quit(c->cl);
			conn_pump(c);
			c->deadline_ms = now_ms + timeout_ms(d, DLV_TIMEOUT_COMMAND);
			continue;
		}
		conn_status(c, dlv_client_timeout(c->cl));
	}
	if (d->hoff)
		handoff_state(d);
	gauges(d, now_ms);
}

void io_dlv_shutdown(struct io_worker *w)
{
	struct io_dlv *d = w->dlv;
	if (!d)
		return;
	d->stopping = true;
	for (unsigned h = 0; h < IO_DELIVER_HOPS_MAX; h++)
		while (d->idle[h]) {
			struct dconn *c = d->idle[h];
			conn_unidle(c);
			if (dlv_client_quit(c->cl) == 0)
				conn_pump(c);
			else
				conn_close(c);
		}
}

void io_dlv_close_all(struct io_worker *w)
{
	struct io_dlv *d = w->dlv;
	if (!d)
		return;
	for (uint32_t i = 0; i < d->conn_max; i++)
		if (d->conns[i].state != DC_FREE)
			conn_close(&d->conns[i]);
}

bool io_dlv_busy(const struct io_worker *w)
{
	const struct io_dlv *d = w->dlv;
	if (!d)
		return false;
	if (d->conns_open || d->op_wait)
		return true;
	for (uint32_t i = 0; i < d->conn_max; i++)
		if (d->jobs[i].phase != J_FREE)
			return true;
	return false;
}

/* ---- set-up ---- */

static uint32_t conn_share(const struct io_config *cfg, unsigned no)
{
	uint32_t total = DS_MAX(cfg->deliver.connections_max, 1u);
	uint32_t share = total / cfg->threads + (no < total % cfg->threads);
	return DS_MAX(share, 1u);
}

int io_dlv_create(struct io_worker *w)
{
	const struct io_config *cfg = w->cfg;
	if (cfg->deliver.hop_count == 0)
		return 0;
	struct io_dlv *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	w->dlv = d;
	d->w = w;
	d->cfg = &cfg->deliver;
	d->conn_max = conn_share(cfg, w->no);
	struct dlv_queue_config qc;
	dlv_queue_config_defaults(&qc);
	qc.retry_min_s = cfg->deliver.retry_min_s;
	qc.retry_max_s = cfg->deliver.retry_max_s;
	qc.queue_lifetime_s = cfg->deliver.queue_lifetime_s;
	qc.hop_backoff_min_s = cfg->deliver.hop_backoff_min_s;
	qc.hop_count = cfg->deliver.hop_count;
	qc.seed = (uint64_t)ds_wall_ns() ^ ((uint64_t)w->no << 48) ^ 0x9e3779b97f4a7c15ull;
	int ret = dlv_queue_create(&d->q, &qc);
	if (ret < 0)
		return ret;
	ret = spool_fetch_open(&d->fetch, cfg->spool_dir, DLV_FETCH_MAPS);
	if (ret < 0)
		return ret;
	if (cfg->deliver.hop[0].kind == IO_HOP_AMQP) {
		/* amqp:// (issue 18): a hand-off thread per worker; a slot per confirm-window entry. */
		d->ho = &io_handoff_amqp;
		ret = d->ho->create(&d->hoff, cfg, w->no);
		if (ret < 0)
			return ret;
		d->conn_max = d->ho->slots(d->hoff);
	}
	for (int lmtp = 0; lmtp < 2; lmtp++) {
		struct dlv_client_config *cc = &d->ccfg[lmtp];
		dlv_client_config_defaults(cc);
		cc->lmtp = lmtp;
		cc->helo_name = cfg->hostname;
		cc->max_rcpts = 20000;
		cc->out_cap = 64 * 1024;
		cc->starttls = (enum dlv_starttls)cfg->deliver.starttls;
		const char *why = NULL;
		if (dlv_client_config_check(cc, &why) < 0) {
			fprintf(stderr, "dotspool: delivery client config: %s\n", why ? why : "invalid");
			return -EINVAL;
		}
	}
	if (cfg->deliver.starttls != DLV_STARTTLS_NEVER && !d->hoff) {
		char err[256];
		ret = io_tls_client_create(&d->tls, cfg->deliver.ca_file, d->conn_max, err, sizeof(err));
		if (ret < 0) {
			fprintf(stderr, "dotspool: delivery TLS: %s\n", err);
			return ret;
		}
	}
	d->client_size = DS_MAX(dlv_client_size(&d->ccfg[0]), dlv_client_size(&d->ccfg[1]));
	d->client_size = (d->client_size + 63) & ~(size_t)63;
	d->conns = calloc(d->conn_max, sizeof(*d->conns));
	d->jobs = calloc(d->conn_max, sizeof(*d->jobs));
	d->client_mem = aligned_alloc(64, d->client_size * (d->hoff ? 1 : d->conn_max));
	if (!d->conns || !d->jobs || !d->client_mem)
		return -ENOMEM;
	for (uint32_t i = 0; i < d->conn_max; i++) {
		d->conns[i] = (struct dconn){.d = d, .idx = i, .fd = -1};
		d->jobs[i] = (struct djob){.d = d, .idx = i, .next = d->job_free};
		d->job_free = &d->jobs[i];
	}
	for (unsigned h = 0; h < cfg->deliver.hop_count; h++)
		obs_metrics_dlv_hop_up(w->m, h, true);
	if (d->hoff)
		handoff_arm(d);
	return backlog_adopt(d);
}

void io_dlv_destroy(struct io_worker *w)
{
	struct io_dlv *d = w->dlv;
	if (!d)
		return;
	if (d->hoff) /* first: its thread reads the spool and posts results */
		d->ho->destroy(d->hoff);
	d->hoff = NULL;
	if (d->conns)
		for (uint32_t i = 0; i < d->conn_max; i++) {
			struct dconn *c = &d->conns[i];
			if (c->state != DC_FREE && c->ops == 0)
				conn_free(c);
		}
	if (d->jobs)
		for (uint32_t i = 0; i < d->conn_max; i++) {
			struct djob *j = &d->jobs[i];
			if (j->fetched)
				spool_fetch_put(d->fetch, &j->fm);
			j->fetched = false;
			dlv_dsn_buf_free(&j->dsn_buf);
			free(j->rcpt);
			free(j->map);
			free(j->out);
			free(j->state);
			free(j->was);
			free(j->rec);
			free(j->arena);
		}
	if (d->fetch)
		spool_fetch_close(d->fetch);
	if (d->tls)
		io_tls_client_destroy(d->tls);
	if (d->q)
		dlv_queue_destroy(d->q);
	free(d->conns);
	free(d->jobs);
	free(d->client_mem);
	free(d->bounce);
	free(d);
	w->dlv = NULL;
}

/* ---- compaction (issue 15): what the queue knows of a message, and where it moved ---- */

void io_dlv_compact_states(struct io_worker *w, const uint64_t *ids, unsigned n, struct spool_compact_msgstate *st,
			   int *rc)
{
	struct io_dlv *d = w->dlv;
	struct dlv_qmsg *found[SPOOL_COMPACT_BATCH_MAX];

	DS_ASSERT(d && n <= SPOOL_COMPACT_BATCH_MAX);
	dlv_queue_find(d->q, ids, n, found);
	for (unsigned i = 0; i < n; i++) {
		const struct dlv_qmsg *qm = found[i];
		rc[i] = !qm ? -ENOENT : qm->line == DLV_QLINE_BUSY || qm->held || qm->mark ? -EBUSY : 0;
		if (rc[i])
			continue;
		st[i] = (struct spool_compact_msgstate){
			.seq = qm->seq,
			.off = qm->off,
			.size = qm->size,
			.attempts = qm->attempts,
			.due_us = qm->line == DLV_QLINE_DEFERRED ? qm->due_us : 0,
			.rcpt_count = qm->rcpt_count,
			.rcpt_state = qm->rcpt_state, /* enum dlv_rcpt_state = enum spool_rcpt_state */
		};
	}
}

void io_dlv_relocate(struct io_worker *w, uint64_t id, uint64_t seq, uint64_t off)
{
	struct io_dlv *d = w->dlv;
	struct dlv_qmsg *qm = NULL;

	DS_ASSERT(d != NULL);
	dlv_queue_find(d->q, &id, 1, &qm);
	if (qm)
		dlv_queue_relocate(d->q, qm, seq, off);
}
