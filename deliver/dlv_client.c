/* SPDX-License-Identifier: MIT */
/*
 * The SMTP/LMTP client state machine (see dlv_client.h).
 *
 * Every command sent pushes its kind on a FIFO of expected replies; every
 * complete reply pops (and is dispatched on) the oldest. That one rule
 * covers PIPELINING (MAIL, RCPTs and DATA in flight together), stale
 * replies after a message is already settled (a refused MAIL with RCPTs
 * in flight), and an unsolicited reply (FIFO empty: the connection is
 * not in a state we understand, so it ends).
 *
 * Commands are emitted by pump() whenever the output buffer has room, so
 * input never blocks: a reply only changes state, pump() turns the state
 * into bytes. The body is pulled from the message's read() in pieces that
 * fit the output buffer after dot-stuffing (at most 2x), so its size
 * never matters.
 *
 * Memory: one fixed block (dlv_client_size()): the struct, the output
 * buffer, a scratch buffer for body pieces (out_cap / 2), one state octet
 * per recipient and the FIFO (max_rcpts + 8 octets). No heap.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ds_assert.h"
#include "dlv_internal.h"

#define DLV_CMD_MAX    2048 /* one command line; submit's limits keep MAIL and RCPT far below */
#define DLV_LINE_KEEP  512  /* octets of a reply line kept (the rest is only counted) */
#define DLV_READ_MIN   256  /* smallest body piece pulled, unless the body's end is nearer */
#define DLV_FIFO_EXTRA 8

enum conn_state {
	ST_CONNECT = 0,
	ST_GREETING,
	ST_HELLO,    /* EHLO/LHLO/HELO to send or its reply awaited */
	ST_STARTTLS, /* STARTTLS sent */
	ST_TLS,	     /* the caller runs the handshake */
	ST_READY,    /* transactions */
	ST_QUIT,     /* QUIT sent */
	ST_CLOSED,
};

/* Commands, as FIFO entries (what a reply answers). */
enum cmd_kind {
	K_NONE = 0,
	K_GREETING,
	K_EHLO,
	K_HELO,
	K_LHLO,
	K_STARTTLS,
	K_MAIL,
	K_RCPT,
	K_DATA,
	K_DOT,
	K_DOT_DISCARD, /* an empty message after a 354 nobody wanted */
	K_RSET,
	K_QUIT,
};

enum tx_phase { TX_NONE = 0, TX_ENVELOPE, TX_BODY, TX_DOT };

enum rcpt_state {
	R_PENDING = 0, /* no reply yet */
	R_ACCEPTED,    /* 2xx to RCPT */
	R_TENTATIVE,   /* PRDR: its own 2xx after the dot, the final reply still to come */
	R_FINAL,       /* rcpt_done() called */
};

struct dlv_client {
	const struct dlv_client_config *cfg;
	const struct dlv_client_ops *ops;
	void *ctx;

	uint8_t state;
	uint8_t tx;
	uint8_t pend;	    /* a simple command waiting for output room */
	uint8_t prdr_phase; /* after the dot: 0 first reply, 1 per recipient, 2 final */
	bool in_cb;
	bool tls;
	bool tls_signal; /* return DLV_STARTTLS from this input call */
	bool want_quit;
	bool srv_txn; /* the server may hold a transaction: RSET before the next MAIL */
	bool failed;  /* err holds why the connection ended */
	bool body_wait;
	bool dot_queued;
	bool mail_sent;
	bool data_sent;
	/* per message, decided at MAIL */
	bool m_prdr, m_dsn, m_size, m_8bit, m_utf8;

	/* the reply being read */
	uint32_t line_len; /* octets of the current line so far, without its LF */
	uint32_t line_keep;
	uint32_t reply_lines;
	uint32_t ext_pending;
	uint64_t size_pending;
	struct dlv_outcome reply; /* code, esc and text of the current reply's first line */

	/* the server */
	uint32_t ext;
	uint64_t size_max;

	/* expected replies, oldest first */
	uint32_t fifo_head, fifo_len, fifo_cap;
	uint8_t *fifo;

	/* the message */
	const struct dlv_msg *msg;
	uint8_t *rcpt; /* enum rcpt_state, max_rcpts */
	uint32_t n_final;
	uint32_t live; /* R_ACCEPTED + R_TENTATIVE */
	uint32_t next_rcpt;
	uint32_t rcpt_replied;
	uint32_t dot_cursor;
	uint64_t body_off;
	struct dlv_data_enc enc;
	uint32_t dot_unsent; /* output octets up to the end of the dot not yet consumed */

	struct dlv_outcome err;

	uint32_t out_start, out_len, out_cap, scratch_cap;
	uint8_t *out;
	uint8_t *scratch;
	char line[DLV_LINE_KEEP];
};

/* ---- configuration, names ---- */

void dlv_client_config_defaults(struct dlv_client_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->helo_name = "localhost";
	cfg->max_reply_line = 2048;
	cfg->max_reply_lines = 100;
	cfg->max_rcpts = 1000;
	cfg->out_cap = 16384;
	cfg->use_pipelining = cfg->use_dsn = cfg->use_prdr = true;
	cfg->use_8bitmime = cfg->use_smtputf8 = cfg->use_size = true;
	cfg->starttls = DLV_STARTTLS_NEVER;
}

int dlv_client_config_check(const struct dlv_client_config *cfg, const char **why)
{
	const char *w = NULL;
	size_t hl = cfg->helo_name ? strnlen(cfg->helo_name, 256) : 0;

	if (hl == 0 || hl > 255)
		w = "helo name must be 1..255 octets";
	for (size_t i = 0; !w && i < hl; i++)
		if ((unsigned char)cfg->helo_name[i] <= ' ' || (unsigned char)cfg->helo_name[i] >= 0x7f)
			w = "helo name must be printable ASCII without spaces";
	if (!w && (cfg->max_reply_line < 512 || cfg->max_reply_line > 65536))
		w = "max reply line must be 512..65536";
	if (!w && (cfg->max_reply_lines < 1 || cfg->max_reply_lines > 10000))
		w = "max reply lines must be 1..10000";
	if (!w && (cfg->max_rcpts < 1 || cfg->max_rcpts > 100000))
		w = "max recipients must be 1..100000";
	if (!w && (cfg->out_cap < 4096 || cfg->out_cap > (1u << 20)))
		w = "output buffer must be 4096..1048576 octets";
	if (!w && cfg->starttls > DLV_STARTTLS_REQUIRED)
		w = "bad starttls policy";
	if (why)
		*why = w;
	return w ? -EINVAL : 0;
}

const char *dlv_class_name(enum dlv_class cls)
{
	switch (cls) {
	case DLV_DELIVERED:
		return "delivered";
	case DLV_DEFERRED:
		return "deferred";
	case DLV_FAILED:
		return "failed";
	}
	return "?";
}

const char *dlv_stage_name(enum dlv_stage stage)
{
	static const char *const names[] = {
		[DLV_STAGE_NONE] = "NONE",	   [DLV_STAGE_CONNECT] = "CONNECT",
		[DLV_STAGE_GREETING] = "GREETING", [DLV_STAGE_HELLO] = "HELLO",
		[DLV_STAGE_STARTTLS] = "STARTTLS", [DLV_STAGE_TLS] = "TLS",
		[DLV_STAGE_SUBMIT] = "SUBMIT",	   [DLV_STAGE_MAIL] = "MAIL",
		[DLV_STAGE_RCPT] = "RCPT",	   [DLV_STAGE_DATA] = "DATA",
		[DLV_STAGE_BODY] = "BODY",	   [DLV_STAGE_DOT] = "DOT",
		[DLV_STAGE_RSET] = "RSET",	   [DLV_STAGE_QUIT] = "QUIT",
	};
	return (unsigned)stage < DS_ARRAY_SIZE(names) && names[stage] ? names[stage] : "?";
}

const char *dlv_timeout_name(enum dlv_timeout kind)
{
	static const char *const names[] = {
		[DLV_TIMEOUT_NONE] = "none",	       [DLV_TIMEOUT_CONNECT] = "connect",
		[DLV_TIMEOUT_GREETING] = "greeting",   [DLV_TIMEOUT_COMMAND] = "command",
		[DLV_TIMEOUT_DATA_INIT] = "data-init", [DLV_TIMEOUT_DATA_BLOCK] = "data-block",
		[DLV_TIMEOUT_DATA_DONE] = "data-done",
	};
	return (unsigned)kind < DS_ARRAY_SIZE(names) && names[kind] ? names[kind] : "?";
}

/* ---- memory, lifecycle ---- */

static size_t scratch_cap(const struct dlv_client_config *cfg)
{
	return cfg->out_cap / 2;
}

size_t dlv_client_size(const struct dlv_client_config *cfg)
{
	DS_ASSERT(dlv_client_config_check(cfg, NULL) == 0);
	return sizeof(struct dlv_client) + cfg->out_cap + scratch_cap(cfg) + cfg->max_rcpts +
	       (cfg->max_rcpts + DLV_FIFO_EXTRA);
}

struct dlv_client *dlv_client_init(void *mem, const struct dlv_client_config *cfg,
				   const struct dlv_client_ops *ops, void *ctx)
{
	struct dlv_client *c = mem;

	DS_ASSERT(dlv_client_config_check(cfg, NULL) == 0);
	DS_ASSERT(ops && ops->rcpt_done && ops->msg_done);
	memset(c, 0, sizeof(*c));
	c->cfg = cfg;
	c->ops = ops;
	c->ctx = ctx;
	c->state = ST_CONNECT;
	c->out_cap = cfg->out_cap;
	c->scratch_cap = (uint32_t)scratch_cap(cfg);
	c->fifo_cap = cfg->max_rcpts + DLV_FIFO_EXTRA;
	uint8_t *p = (uint8_t *)(c + 1);
	c->out = p;
	p += c->out_cap;
	c->scratch = p;
	p += c->scratch_cap;
	c->rcpt = p;
	p += cfg->max_rcpts;
	c->fifo = p;
	return c;
}

/* ---- output ---- */

/*
 * Room at the end of the output. Unsent bytes never move (a send may be in
 * flight from them); the buffer starts over once everything is consumed.
 */
static uint32_t out_free(const struct dlv_client *c)
{
	return c->out_cap - c->out_start - c->out_len;
}

/* Where the next n octets go; the caller adds what it wrote to out_len. */
static uint8_t *out_tail(struct dlv_client *c, size_t n)
{
	DS_ASSERT(n <= out_free(c));
	return c->out + c->out_start + c->out_len;
}

static void out_clear(struct dlv_client *c)
{
	c->out_start = c->out_len = 0;
}

const uint8_t *dlv_client_output(struct dlv_client *c, size_t *len)
{
	/* Closed: what is left is not worth sending (a send in flight may still complete). */
	*len = c->state == ST_CLOSED ? 0 : c->out_len;
	return c->out + c->out_start;
}

/* ---- expected replies ---- */

static void fifo_push(struct dlv_client *c, uint8_t kind)
{
	DS_ASSERT(c->fifo_len < c->fifo_cap);
	c->fifo[(c->fifo_head + c->fifo_len) % c->fifo_cap] = kind;
	c->fifo_len++;
}

static uint8_t fifo_peek(const struct dlv_client *c)
{
	return c->fifo_len ? c->fifo[c->fifo_head] : K_NONE;
}

static void fifo_pop(struct dlv_client *c)
{
	DS_ASSERT(c->fifo_len > 0);
	c->fifo_head = (c->fifo_head + 1) % c->fifo_cap;
	c->fifo_len--;
}

static enum dlv_stage kind_stage(uint8_t kind)
{
	switch (kind) {
	case K_GREETING:
		return DLV_STAGE_GREETING;
	case K_EHLO:
	case K_HELO:
	case K_LHLO:
		return DLV_STAGE_HELLO;
	case K_STARTTLS:
		return DLV_STAGE_STARTTLS;
	case K_MAIL:
		return DLV_STAGE_MAIL;
	case K_RCPT:
		return DLV_STAGE_RCPT;
	case K_DATA:
		return DLV_STAGE_DATA;
	case K_DOT:
	case K_DOT_DISCARD:
		return DLV_STAGE_DOT;
	case K_RSET:
		return DLV_STAGE_RSET;
	case K_QUIT:
		return DLV_STAGE_QUIT;
	}
	return DLV_STAGE_NONE;
}

/* What the machine waits for or does right now. */
static enum dlv_stage cur_stage(const struct dlv_client *c)
{
	switch (c->state) {
	case ST_CONNECT:
		return DLV_STAGE_CONNECT;
	case ST_TLS:
		return DLV_STAGE_TLS;
	case ST_CLOSED:
		return DLV_STAGE_NONE;
	}
	if (c->fifo_len)
		return kind_stage(fifo_peek(c));
	if (c->pend)
		return kind_stage(c->pend);
	switch (c->tx) {
	case TX_ENVELOPE:
		return c->mail_sent ? DLV_STAGE_RCPT : DLV_STAGE_MAIL;
	case TX_BODY:
		return DLV_STAGE_BODY;
	case TX_DOT:
		return DLV_STAGE_DOT;
	}
	return DLV_STAGE_NONE;
}

/* ---- outcomes ---- */

static void cb_enter(struct dlv_client *c)
{
	DS_ASSERT(!c->in_cb);
	c->in_cb = true;
}

static void cb_leave(struct dlv_client *c)
{
	c->in_cb = false;
}

static bool dot_sent(const struct dlv_client *c)
{
	return c->tx == TX_DOT && c->dot_queued && c->dot_unsent == 0;
}

static void msg_finish(struct dlv_client *c)
{
	const struct dlv_msg *m = c->msg;

	c->msg = NULL;
	c->tx = TX_NONE;
	c->live = 0;
	c->dot_queued = false;
	c->body_wait = false;
	cb_enter(c);
	c->ops->msg_done(c->ctx, m);
	cb_leave(c);
}

static void finalize(struct dlv_client *c, uint32_t idx, const struct dlv_outcome *o)
{
	const struct dlv_msg *m = c->msg;

	DS_ASSERT(m && idx < m->rcpt_count && c->rcpt[idx] != R_FINAL);
	/* Responsibility moves only on a 2xx from the next hop. */
	DS_ASSERT(o->cls != DLV_DELIVERED || (!o->local && o->code / 100 == 2));
	if (c->rcpt[idx] == R_ACCEPTED || c->rcpt[idx] == R_TENTATIVE) {
		DS_ASSERT(c->live > 0);
		c->live--;
	}
	c->rcpt[idx] = R_FINAL;
	c->n_final++;
	cb_enter(c);
	c->ops->rcpt_done(c->ctx, m, idx, o);
	cb_leave(c);
	if (c->n_final == m->rcpt_count)
		msg_finish(c);
}

/*
 * Every recipient not yet final (only_live: accepted at RCPT) gets o. lost:
 * no reply settles them, the connection did: those the final dot reached
 * may be at the next hop already (RFC 1047).
 */
static void finalize_rest(struct dlv_client *c, const struct dlv_outcome *o, bool only_live, bool lost)
{
	struct dlv_outcome x = *o;
	bool sent = lost && dot_sent(c);

	for (uint32_t i = 0; c->msg && i < c->msg->rcpt_count; i++) {
		uint8_t st = c->rcpt[i];
		if (st == R_FINAL || (only_live && st == R_PENDING))
			continue;
		x.possible_duplicate = sent && st != R_PENDING;
		finalize(c, i, &x);
	}
}

static struct dlv_outcome reply_outcome(const struct dlv_client *c, enum dlv_class cls, enum dlv_stage stage)
{
	struct dlv_outcome o = c->reply;

	o.cls = cls;
	o.stage = stage;
	o.local = false;
	o.possible_duplicate = false;
	return o;
}

__attribute__((format(printf, 5, 6))) static struct dlv_outcome
local_outcome(enum dlv_class cls, enum dlv_stage stage, uint16_t code, const char *esc, const char *fmt, ...)
{
	struct dlv_outcome o;
	va_list ap;

	memset(&o, 0, sizeof(o));
	o.cls = cls;
	o.stage = stage;
	o.code = code;
	o.local = true;
	snprintf(o.esc, sizeof(o.esc), "%s", esc);
	va_start(ap, fmt);
	vsnprintf(o.text, sizeof(o.text), fmt, ap);
	va_end(ap);
	return o;
}

static enum dlv_class refusal_class(uint16_t code)
{
	return code / 100 == 5 ? DLV_FAILED : DLV_DEFERRED;
}

static enum dlv_class final_class(uint16_t code)
{
	return code / 100 == 2 ? DLV_DELIVERED : refusal_class(code);
}

/*
 * The connection is done for: defer every recipient not yet final, keep
 * the first cause, forget every expected reply. quit: the server is in a
 * sane state (it answered), so say QUIT and wait for its reply; else the
 * connection is closed (DLV_CLOSE).
 */
static void conn_fail(struct dlv_client *c, const struct dlv_outcome *o, bool quit)
{
	struct dlv_outcome x = *o;

	x.cls = DLV_DEFERRED;
	if (!c->failed) {
		c->err = x;
		c->failed = true;
	}
	if (c->msg)
		finalize_rest(c, &x, false, true);
	DS_ASSERT(!c->msg);
	/* The output stays: a send may be in flight from it (QUIT goes after it). */
	c->fifo_head = c->fifo_len = 0;
	c->pend = K_NONE;
	c->tx = TX_NONE;
	c->srv_txn = false;
	c->state = quit ? ST_QUIT : ST_CLOSED;
	if (quit)
		c->pend = K_QUIT;
}

__attribute__((format(printf, 2, 3))) static void proto_fail(struct dlv_client *c, const char *fmt, ...)
{
	struct dlv_outcome o = local_outcome(DLV_DEFERRED, cur_stage(c), 451, "4.5.0", "%s", "");
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(o.text, sizeof(o.text), fmt, ap);
	va_end(ap);
	conn_fail(c, &o, false);
}

/* ---- commands ---- */

__attribute__((format(printf, 3, 4))) static bool emit(struct dlv_client *c, uint8_t kind, const char *fmt,
						       ...)
{
	char buf[DLV_CMD_MAX];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	/* Commands are built from validated, bounded strings: truncation is a bug. */
	DS_ASSERT(n > 0 && (size_t)n < sizeof(buf) - 2);
	buf[n++] = '\r';
	buf[n++] = '\n';
	if ((uint32_t)n > out_free(c))
		return false;
	memcpy(out_tail(c, (size_t)n), buf, (size_t)n);
	c->out_len += (uint32_t)n;
	fifo_push(c, kind);
	return true;
}

static bool emit_simple(struct dlv_client *c, uint8_t kind)
{
	switch (kind) {
	case K_EHLO:
		return emit(c, kind, "EHLO %s", c->cfg->helo_name);
	case K_HELO:
		return emit(c, kind, "HELO %s", c->cfg->helo_name);
	case K_LHLO:
		return emit(c, kind, "LHLO %s", c->cfg->helo_name);
	case K_STARTTLS:
		return emit(c, kind, "STARTTLS");
	case K_DATA:
		return emit(c, kind, "DATA");
	case K_DOT_DISCARD:
		return emit(c, kind, ".");
	case K_RSET:
		return emit(c, kind, "RSET");
	case K_QUIT:
		return emit(c, kind, "QUIT");
	}
	DS_ASSERT(0);
	return false;
}

static bool emit_mail(struct dlv_client *c)
{
	const struct dlv_msg *m = c->msg;
	char size[40] = "", ret[16] = "", envid[DLV_ENVID_MAX + 16] = "";

	if (c->m_size)
		snprintf(size, sizeof(size), " SIZE=%llu", (unsigned long long)m->body_size + 2);
	if (c->m_dsn && m->ret)
		snprintf(ret, sizeof(ret), " RET=%s", m->ret);
	if (c->m_dsn && m->envid)
		snprintf(envid, sizeof(envid), " ENVID=%s", m->envid);
	return emit(c, K_MAIL, "MAIL FROM:<%s>%s%s%s%s%s%s", m->mail_from, size,
		    c->m_8bit ? " BODY=8BITMIME" : "", c->m_utf8 ? " SMTPUTF8" : "", ret, envid,
		    c->m_prdr ? " PRDR" : "");
}

static bool emit_rcpt(struct dlv_client *c, uint32_t i)
{
	const struct dlv_rcpt *r = &c->msg->rcpt[i];
	bool notify = c->m_dsn && r->notify, orcpt = c->m_dsn && r->orcpt;

	return emit(c, K_RCPT, "RCPT TO:<%s>%s%s%s%s", r->addr, notify ? " NOTIFY=" : "",
		    notify ? r->notify : "", orcpt ? " ORCPT=" : "", orcpt ? r->orcpt : "");
}

/* ---- messages ---- */

static bool has_8bit(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

static void fail_all(struct dlv_client *c, const struct dlv_outcome *o)
{
	finalize_rest(c, o, false, false);
}

/* The connection is ready and m is next: our checks, then MAIL. */
static void msg_begin(struct dlv_client *c)
{
	const struct dlv_msg *m = c->msg;
	const struct dlv_client_config *cfg = c->cfg;
	bool needs_utf8 = has_8bit(m->mail_from);
	struct dlv_outcome o;

	for (uint32_t i = 0; i < m->rcpt_count && !needs_utf8; i++)
		needs_utf8 = has_8bit(m->rcpt[i].addr);
	bool utf8_ok = (c->ext & DLV_EXT_SMTPUTF8) && cfg->use_smtputf8;
	c->m_size = (c->ext & DLV_EXT_SIZE) && cfg->use_size;
	c->m_dsn = (c->ext & DLV_EXT_DSN) && cfg->use_dsn;
	c->m_8bit = m->body == DLV_BODY_8BITMIME && (c->ext & DLV_EXT_8BITMIME) && cfg->use_8bitmime;
	c->m_utf8 = (m->smtputf8 || needs_utf8) && utf8_ok;
	c->m_prdr = !cfg->lmtp && (c->ext & DLV_EXT_PRDR) && cfg->use_prdr && m->rcpt_count > 1;

	if (m->body == DLV_BODY_BINARYMIME) {
		o = local_outcome(DLV_FAILED, DLV_STAGE_SUBMIT, 554, "5.6.3",
				  "BODY=BINARYMIME needs CHUNKING, which this client does not support yet");
		fail_all(c, &o);
		return;
	}
	if (needs_utf8 && !utf8_ok) {
		o = local_outcome(DLV_FAILED, DLV_STAGE_SUBMIT, 553, "5.6.7",
				  "the envelope needs SMTPUTF8, which the next hop does not offer");
		fail_all(c, &o);
		return;
	}
	if (c->m_size && c->size_max && m->body_size + 2 > c->size_max) {
		o = local_outcome(DLV_FAILED, DLV_STAGE_SUBMIT, 552, "5.3.4",
				  "message size %llu exceeds the next hop's limit of %llu",
				  (unsigned long long)m->body_size, (unsigned long long)c->size_max);
		fail_all(c, &o);
		return;
	}
	c->tx = TX_ENVELOPE;
	c->mail_sent = c->data_sent = false;
	c->next_rcpt = c->rcpt_replied = 0;
	c->live = 0;
	c->dot_queued = false;
	c->dot_unsent = 0;
	c->body_wait = false;
}

static bool pipelining(const struct dlv_client *c)
{
	return (c->ext & DLV_EXT_PIPELINING) && c->cfg->use_pipelining;
}

/* Send the next envelope command if it is due and fits. True if one was sent. */
static bool envelope_step(struct dlv_client *c)
{
	bool pipe = pipelining(c);

	if (c->data_sent)
		return false;
	if (!c->mail_sent)
		return c->mail_sent = emit_mail(c);
	/* Without PIPELINING, one command at a time (RFC 5321 4.3). */
	if (!pipe && c->fifo_len)
		return false;
	if (c->next_rcpt < c->msg->rcpt_count) {
		if (!emit_rcpt(c, c->next_rcpt))
			return false;
		c->next_rcpt++;
		return true;
	}
	/* Every RCPT answered (or in flight with PIPELINING): DATA closes the group (RFC 2920 3.1). */
	if (!pipe && c->live == 0)
		return false;
	return c->data_sent = emit_simple(c, K_DATA);
}

/* Pull the body into the output buffer; at its end the final dot. */
static void body_pump(struct dlv_client *c)
{
	const struct dlv_msg *m = c->msg;

	while (c->tx == TX_BODY && !c->body_wait) {
		uint64_t left = m->body_size - c->body_off;
		if (left == 0) {
			if (out_free(c) < DLV_DATA_FINISH_MAX)
				return;
			c->out_len += (uint32_t)dlv_data_finish(&c->enc, out_tail(c, DLV_DATA_FINISH_MAX));
			c->dot_queued = true;
			c->dot_unsent = c->out_len;
			c->tx = TX_DOT;
			c->prdr_phase = 0;
			c->dot_cursor = 0;
			fifo_push(c, K_DOT);
			return;
		}
		uint32_t room = out_free(c);
		if (room < 4)
			return;
		size_t n = (size_t)DS_MIN(DS_MIN(left, (uint64_t)c->scratch_cap), (uint64_t)(room - 2) / 2);
		if (n < DLV_READ_MIN && n < left)
			return; /* wait for more room rather than pull crumbs */
		cb_enter(c);
		int r = m->read(m->read_ctx, c->body_off, c->scratch, n);
		cb_leave(c);
		if (r == -EAGAIN) {
			c->body_wait = true;
			return;
		}
		if (r <= 0 || (size_t)r > n) {
			struct dlv_outcome o = local_outcome(DLV_DEFERRED, DLV_STAGE_BODY, 451, "4.3.0",
							     "cannot read the message body: %s",
							     r < 0    ? strerror(-r)
							     : r == 0 ? "it ends before its recorded size"
								      : "bad read size");
			/* The server holds a half message: only closing takes it back. */
			conn_fail(c, &o, false);
			return;
		}
		size_t w = dlv_data_encode(&c->enc, c->scratch, (size_t)r, out_tail(c, 2 * (size_t)r + 2));
		c->out_len += (uint32_t)w;
		c->body_off += (uint64_t)r;
	}
}

/* Turn the state into bytes as far as the output buffer allows. */
static void pump(struct dlv_client *c)
{
	for (;;) {
		if (c->state == ST_CLOSED || c->state == ST_CONNECT || c->state == ST_TLS)
			return;
		if (c->pend) {
			if (!emit_simple(c, c->pend))
				return;
			c->pend = K_NONE;
			continue;
		}
		if (c->state != ST_READY)
			return;
		switch (c->tx) {
		case TX_NONE:
			if (c->fifo_len)
				return; /* stale replies of a settled message first */
			if (c->srv_txn) {
				c->srv_txn = false; /* RSET ends it, or its refusal ends the connection */
				c->pend = K_RSET;
				continue;
			}
			if (c->msg) {
				msg_begin(c);
				continue;
			}
			if (c->want_quit) {
				c->state = ST_QUIT;
				c->pend = K_QUIT;
				continue;
			}
			return;
		case TX_ENVELOPE:
			if (!envelope_step(c))
				return;
			continue;
		case TX_BODY:
			body_pump(c);
			if (c->tx == TX_BODY || c->state == ST_CLOSED)
				return;
			continue;
		default:
			return;
		}
	}
}

/* ---- replies ---- */

static void after_hello(struct dlv_client *c)
{
	if (!c->tls && c->cfg->starttls != DLV_STARTTLS_NEVER && (c->ext & DLV_EXT_STARTTLS)) {
		c->state = ST_STARTTLS;
		c->pend = K_STARTTLS;
		return;
	}
	if (!c->tls && c->cfg->starttls == DLV_STARTTLS_REQUIRED) {
		struct dlv_outcome o =
			local_outcome(DLV_DEFERRED, DLV_STAGE_HELLO, 451, "4.7.4",
				      "TLS is required, but the next hop does not offer STARTTLS");
		conn_fail(c, &o, true);
		return;
	}
	c->state = ST_READY;
}

static uint32_t next_accepted(const struct dlv_client *c, uint32_t from)
{
	while (from < c->msg->rcpt_count && c->rcpt[from] != R_ACCEPTED)
		from++;
	return from;
}

/* The reply(s) after the final dot. */
static void dot_reply(struct dlv_client *c)
{
	uint16_t code = c->reply.code;
	struct dlv_outcome o;

	if (c->tx != TX_DOT) {
		/* PRDR: every recipient refused on its own, the message is settled; this is the final reply.
		 */
		fifo_pop(c);
		c->srv_txn = false;
		return;
	}
	DS_ASSERT(c->msg);
	if (c->cfg->lmtp || (c->m_prdr && c->prdr_phase == 1)) {
		/* One reply per recipient accepted at RCPT, in RCPT order (RFC 2033 4.2). */
		uint32_t i = next_accepted(c, c->dot_cursor);
		DS_ASSERT(i < c->msg->rcpt_count);
		c->dot_cursor = i + 1;
		bool more = next_accepted(c, c->dot_cursor) < c->msg->rcpt_count;
		if (!more && c->cfg->lmtp) {
			fifo_pop(c);
			c->srv_txn = false;
		}
		if (!more && !c->cfg->lmtp)
			c->prdr_phase = 2;
		if (!c->cfg->lmtp && code / 100 == 2) {
			c->rcpt[i] = R_TENTATIVE; /* confirmed by the final reply */
			return;
		}
		o = reply_outcome(c, c->cfg->lmtp ? final_class(code) : refusal_class(code), DLV_STAGE_DOT);
		finalize(c, i, &o);
		return;
	}
	if (c->m_prdr && c->prdr_phase == 0 && code == 353) {
		c->prdr_phase = 1;
		return;
	}
	/* SMTP's one reply, a non-353 answer to a PRDR dot, or PRDR's final reply. */
	fifo_pop(c);
	c->srv_txn = false;
	o = reply_outcome(c, final_class(code), DLV_STAGE_DOT);
	finalize_rest(c, &o, true, false);
}

static void dispatch(struct dlv_client *c)
{
	uint16_t code = c->reply.code;
	uint8_t kind = fifo_peek(c);
	struct dlv_outcome o;

	if (kind == K_NONE) {
		/* Nothing was asked: a 421 on its way out, or a server out of step. */
		if (code == 421)
			o = reply_outcome(c, DLV_DEFERRED, cur_stage(c));
		else
			o = local_outcome(DLV_DEFERRED, cur_stage(c), 451, "4.5.0",
					  "unexpected reply from the next hop: %u %s", code, c->reply.text);
		conn_fail(c, &o, false);
		return;
	}
	if (code == 421 && kind != K_QUIT) {
		/* RFC 5321 3.8: the server closes. The reply answers its command; the rest is deferred. */
		if ((kind == K_MAIL || kind == K_RCPT || kind == K_DATA || kind == K_DOT) && c->msg) {
			if (kind == K_DOT && c->tx == TX_DOT)
				dot_reply(c);
			else if (kind == K_RCPT && c->tx == TX_ENVELOPE &&
				 c->rcpt[c->rcpt_replied] != R_FINAL) {
				o = reply_outcome(c, DLV_DEFERRED, DLV_STAGE_RCPT);
				finalize(c, c->rcpt_replied, &o);
			}
		}
		o = reply_outcome(c, DLV_DEFERRED, kind_stage(kind));
		conn_fail(c, &o, false);
		return;
	}
	switch (kind) {
	case K_GREETING:
		fifo_pop(c);
		if (code != 220) {
			/* RFC 5321 3.1: not now, not here; say QUIT and try elsewhere. */
			o = reply_outcome(c, DLV_DEFERRED, DLV_STAGE_GREETING);
			conn_fail(c, &o, true);
			return;
		}
		c->state = ST_HELLO;
		c->pend = c->cfg->lmtp ? K_LHLO : K_EHLO;
		return;
	case K_EHLO:
	case K_LHLO:
	case K_HELO:
		fifo_pop(c);
		if (code / 100 == 2) {
			c->ext = kind == K_HELO ? 0 : c->ext_pending;
			c->size_max = kind == K_HELO ? 0 : c->size_pending;
			after_hello(c);
			return;
		}
		if (kind == K_EHLO && code / 100 == 5 && !c->tls) {
			c->pend = K_HELO; /* RFC 5321 3.2: a server without extensions */
			return;
		}
		o = reply_outcome(c, DLV_DEFERRED, DLV_STAGE_HELLO);
		conn_fail(c, &o, true);
		return;
	case K_STARTTLS:
		fifo_pop(c);
		if (code == 220) {
			c->state = ST_TLS;
			c->tls_signal = true;
			return;
		}
		if (c->cfg->starttls == DLV_STARTTLS_REQUIRED) {
			o = reply_outcome(c, DLV_DEFERRED, DLV_STAGE_STARTTLS);
			conn_fail(c, &o, true);
			return;
		}
		c->state = ST_READY; /* opportunistic: go on in plaintext */
		return;
	case K_MAIL:
		fifo_pop(c);
		if (c->tx != TX_ENVELOPE)
			return;
		if (code / 100 == 2) {
			c->srv_txn = true;
			return;
		}
		o = reply_outcome(c, refusal_class(code), DLV_STAGE_MAIL);
		fail_all(c, &o);
		return;
	case K_RCPT: {
		fifo_pop(c);
		if (c->tx != TX_ENVELOPE)
			return; /* the message is settled already (MAIL refused) */
		uint32_t i = c->rcpt_replied++;
		DS_ASSERT(i < c->msg->rcpt_count && c->rcpt[i] == R_PENDING);
		if (code / 100 == 2) {
			c->rcpt[i] = R_ACCEPTED;
			c->live++;
			return;
		}
		o = reply_outcome(c, refusal_class(code), DLV_STAGE_RCPT);
		finalize(c, i, &o);
		return;
	}
	case K_DATA:
		fifo_pop(c);
		if (c->tx == TX_ENVELOPE && c->live > 0) {
			if (code == 354) {
				c->tx = TX_BODY;
				c->body_off = 0;
				dlv_data_enc_init(&c->enc);
				return;
			}
			o = reply_outcome(c, refusal_class(code), DLV_STAGE_DATA);
			finalize_rest(c, &o, true, false);
			return;
		}
		/* No recipient wants it; a server that says 354 anyway gets an empty message. */
		if (code == 354)
			c->pend = K_DOT_DISCARD;
		return;
	case K_DOT:
		dot_reply(c);
		return;
	case K_DOT_DISCARD:
		fifo_pop(c);
		c->srv_txn = false;
		return;
	case K_RSET:
		fifo_pop(c);
		if (code / 100 != 2) {
			o = reply_outcome(c, DLV_DEFERRED, DLV_STAGE_RSET);
			conn_fail(c, &o, true);
		}
		return;
	case K_QUIT:
		fifo_pop(c);
		c->state = ST_CLOSED;
		return;
	}
	DS_ASSERT(0);
}

/* One complete reply line: line[0..line_keep) is its start, line_len its length (CR stripped). */
static void on_line(struct dlv_client *c)
{
	struct dlv_reply_line rl;
	uint8_t kind = fifo_peek(c);

	if (dlv_reply_parse(c->line, c->line_keep, &rl)) {
		proto_fail(c, "malformed reply line from the next hop");
		return;
	}
	if (c->reply_lines == 0) {
		c->reply.code = rl.code;
		dlv_reply_text(&c->reply, rl.code, rl.text, rl.text_len);
		c->ext_pending = 0;
		c->size_pending = 0;
	} else if (rl.code != c->reply.code) {
		proto_fail(c, "multiline reply from the next hop mixes codes %u and %u", c->reply.code,
			   rl.code);
		return;
	}
	if (++c->reply_lines > c->cfg->max_reply_lines) {
		proto_fail(c, "reply from the next hop longer than %u lines", c->cfg->max_reply_lines);
		return;
	}
	if (c->reply_lines > 1 && (kind == K_EHLO || kind == K_LHLO)) {
		uint64_t size;
		uint32_t bit = dlv_ehlo_keyword(rl.text, rl.text_len, &size);
		c->ext_pending |= bit;
		if (bit == DLV_EXT_SIZE)
			c->size_pending = size;
	}
	if (!rl.last)
		return;
	c->reply_lines = 0;
	dispatch(c);
}

/* ---- entry points ---- */

static enum dlv_status status(struct dlv_client *c)
{
	if (c->state == ST_CLOSED)
		return DLV_CLOSE;
	if (c->tls_signal) {
		c->tls_signal = false;
		return DLV_STARTTLS;
	}
	return DLV_OK;
}

void dlv_client_connected(struct dlv_client *c)
{
	DS_ASSERT(!c->in_cb);
	DS_ASSERT(c->state == ST_CONNECT);
	c->state = ST_GREETING;
	fifo_push(c, K_GREETING);
}

enum dlv_status dlv_client_input(struct dlv_client *c, const uint8_t *buf, size_t len, size_t *used)
{
	size_t i = 0;

	DS_ASSERT(!c->in_cb);
	DS_ASSERT(c->state != ST_TLS); /* bytes during the handshake are TLS's */
	*used = 0;
	if (c->state == ST_CONNECT)
		dlv_client_connected(c);
	while (i < len && c->state != ST_CLOSED && c->state != ST_TLS) {
		const uint8_t *lf = memchr(buf + i, '\n', len - i);
		size_t n = lf ? (size_t)(lf - (buf + i)) : len - i;
		/* The limit counts the line end: a line without its LF yet needs at least one more octet. */
		if ((uint64_t)c->line_len + n + 1 > c->cfg->max_reply_line) {
			proto_fail(c, "reply line from the next hop longer than %u octets",
				   c->cfg->max_reply_line);
			break;
		}
		size_t k = DS_MIN(n, sizeof(c->line) - c->line_keep);
		memcpy(c->line + c->line_keep, buf + i, k);
		c->line_keep += (uint32_t)k;
		c->line_len += (uint32_t)n;
		i += n;
		if (!lf)
			break;
		i++;
		if (c->line_keep == c->line_len && c->line_keep > 0 && c->line[c->line_keep - 1] == '\r')
			c->line_keep--;
		on_line(c);
		c->line_len = c->line_keep = 0;
	}
	*used = i;
	pump(c);
	return status(c);
}

enum dlv_status dlv_client_output_consumed(struct dlv_client *c, size_t n)
{
	DS_ASSERT(!c->in_cb);
	if (c->state == ST_CLOSED)
		return DLV_CLOSE; /* a send that was in flight when the connection failed */
	DS_ASSERT(n <= c->out_len);
	c->out_start += (uint32_t)n;
	c->out_len -= (uint32_t)n;
	if (c->out_len == 0)
		c->out_start = 0;
	if (c->dot_queued)
		c->dot_unsent -= (uint32_t)DS_MIN((size_t)c->dot_unsent, n);
	pump(c);
	return status(c);
}

enum dlv_status dlv_client_body_ready(struct dlv_client *c)
{
	DS_ASSERT(!c->in_cb);
	c->body_wait = false;
	pump(c);
	return status(c);
}

enum dlv_status dlv_client_tls_done(struct dlv_client *c, int res)
{
	DS_ASSERT(!c->in_cb);
	if (c->state == ST_CLOSED)
		return DLV_CLOSE;
	DS_ASSERT(c->state == ST_TLS);
	if (res < 0) {
		struct dlv_outcome o =
			local_outcome(DLV_DEFERRED, DLV_STAGE_TLS, 451, "4.7.5",
				      "TLS handshake with the next hop failed: %s", strerror(-res));
		conn_fail(c, &o, false);
		return status(c);
	}
	/* RFC 3207 4.2: forget everything learnt in plaintext, say EHLO again. */
	c->tls = true;
	c->ext = 0;
	c->size_max = 0;
	c->state = ST_HELLO;
	c->pend = c->cfg->lmtp ? K_LHLO : K_EHLO;
	pump(c);
	return status(c);
}

static const char *stage_while(enum dlv_stage stage)
{
	switch (stage) {
	case DLV_STAGE_CONNECT:
		return "while connecting";
	case DLV_STAGE_GREETING:
		return "while waiting for the greeting";
	case DLV_STAGE_HELLO:
		return "during the EHLO/LHLO handshake";
	case DLV_STAGE_STARTTLS:
		return "after STARTTLS";
	case DLV_STAGE_TLS:
		return "during the TLS handshake";
	case DLV_STAGE_MAIL:
		return "after MAIL FROM";
	case DLV_STAGE_RCPT:
		return "after RCPT TO";
	case DLV_STAGE_DATA:
		return "after DATA";
	case DLV_STAGE_BODY:
		return "while sending the message body";
	case DLV_STAGE_DOT:
		return "after the end of data";
	case DLV_STAGE_RSET:
		return "after RSET";
	case DLV_STAGE_QUIT:
		return "after QUIT";
	default:
		return "while idle";
	}
}

enum dlv_status dlv_client_eof(struct dlv_client *c, int err)
{
	DS_ASSERT(!c->in_cb);
	if (c->state == ST_CLOSED)
		return DLV_CLOSE;
	if (c->state == ST_QUIT && !c->msg) {
		c->state = ST_CLOSED; /* the server did not wait for our QUIT's reply: fine */
		out_clear(c);
		return DLV_CLOSE;
	}
	enum dlv_stage stage = cur_stage(c);
	struct dlv_outcome o;
	if (stage == DLV_STAGE_CONNECT)
		o = local_outcome(DLV_DEFERRED, stage, 451, "4.4.1", "connect to the next hop failed: %s",
				  err ? strerror(-err) : "connection closed");
	else
		o = local_outcome(DLV_DEFERRED, stage, 451, "4.4.2",
				  "lost connection with the next hop %s%s%s", stage_while(stage),
				  err ? ": " : "", err ? strerror(-err) : "");
	conn_fail(c, &o, false);
	return DLV_CLOSE;
}

enum dlv_status dlv_client_timeout(struct dlv_client *c)
{
	DS_ASSERT(!c->in_cb);
	if (c->state == ST_CLOSED)
		return DLV_CLOSE;
	enum dlv_stage stage = cur_stage(c);
	struct dlv_outcome o =
		local_outcome(DLV_DEFERRED, stage, 451, stage == DLV_STAGE_CONNECT ? "4.4.1" : "4.4.2",
			      "conversation with the next hop timed out %s", stage_while(stage));
	conn_fail(c, &o, false);
	return DLV_CLOSE;
}

int dlv_client_quit(struct dlv_client *c)
{
	DS_ASSERT(!c->in_cb);
	if (c->msg)
		return -EBUSY;
	if (c->state == ST_CLOSED || c->state == ST_QUIT)
		return 0;
	if (c->state == ST_CONNECT) {
		c->state = ST_CLOSED;
		return 0;
	}
	c->want_quit = true;
	pump(c);
	return 0;
}

void dlv_client_fini(struct dlv_client *c)
{
	DS_ASSERT(!c->in_cb);
	if (c->msg) {
		struct dlv_outcome o = local_outcome(DLV_DEFERRED, cur_stage(c), 451, "4.4.2",
						     "delivery abandoned: the connection was closed locally");
		conn_fail(c, &o, false);
	}
	c->state = ST_CLOSED;
	out_clear(c);
}

static int check_str(const char *s, size_t max, bool param)
{
	size_t n = 0;

	if (!s)
		return -EINVAL;
	for (; s[n]; n++) {
		unsigned char ch = (unsigned char)s[n];
		if (ch < 0x20 || ch == 0x7f || (param && (ch == ' ' || ch >= 0x80)))
			return -EINVAL;
		if (n >= max)
			return -ENAMETOOLONG;
	}
	return param && n == 0 ? -EINVAL : 0;
}

int dlv_client_submit(struct dlv_client *c, const struct dlv_msg *m)
{
	int r;

	DS_ASSERT(!c->in_cb);
	if (c->state == ST_CLOSED || c->state == ST_QUIT || c->want_quit)
		return -EPIPE;
	if (c->msg)
		return -EBUSY;
	if (m->rcpt_count > c->cfg->max_rcpts)
		return -E2BIG;
	if (m->rcpt_count == 0 || !m->rcpt || !m->read || m->body > DLV_BODY_BINARYMIME)
		return -EINVAL;
	if ((r = check_str(m->mail_from, DLV_ADDR_MAX, false)))
		return r;
	if (m->ret && (r = check_str(m->ret, 8, true)))
		return r;
	if (m->envid && (r = check_str(m->envid, DLV_ENVID_MAX, true)))
		return r;
	for (uint32_t i = 0; i < m->rcpt_count; i++) {
		const struct dlv_rcpt *rc = &m->rcpt[i];
		if ((r = check_str(rc->addr, DLV_ADDR_MAX, false)))
			return r;
		if (rc->addr[0] == '\0')
			return -EINVAL;
		if (rc->notify && (r = check_str(rc->notify, DLV_NOTIFY_MAX, true)))
			return r;
		if (rc->orcpt && (r = check_str(rc->orcpt, DLV_ORCPT_MAX, true)))
			return r;
	}
	c->msg = m;
	c->n_final = 0;
	c->live = 0;
	memset(c->rcpt, R_PENDING, m->rcpt_count);
	pump(c);
	return 0;
}

/* ---- queries ---- */

enum dlv_timeout dlv_client_timeout_kind(const struct dlv_client *c)
{
	switch (c->state) {
	case ST_CONNECT:
		return DLV_TIMEOUT_CONNECT;
	case ST_GREETING:
		return DLV_TIMEOUT_GREETING;
	case ST_HELLO:
	case ST_STARTTLS:
	case ST_TLS:
	case ST_QUIT:
		return DLV_TIMEOUT_COMMAND;
	case ST_CLOSED:
		return DLV_TIMEOUT_NONE;
	}
	switch (fifo_peek(c)) {
	case K_DATA:
		return DLV_TIMEOUT_DATA_INIT;
	case K_DOT:
	case K_DOT_DISCARD:
		return DLV_TIMEOUT_DATA_DONE;
	case K_NONE:
		break;
	default:
		return DLV_TIMEOUT_COMMAND;
	}
	if (c->tx == TX_BODY)
		return DLV_TIMEOUT_DATA_BLOCK;
	if (c->pend || c->tx == TX_ENVELOPE)
		return DLV_TIMEOUT_COMMAND; /* a command waits for the output to drain */
	return DLV_TIMEOUT_NONE;
}

bool dlv_client_idle(const struct dlv_client *c)
{
	return c->state == ST_READY && !c->msg && !c->fifo_len && !c->pend && !c->srv_txn && !c->want_quit;
}

bool dlv_client_closed(const struct dlv_client *c)
{
	return c->state == ST_CLOSED;
}

uint32_t dlv_client_ext(const struct dlv_client *c)
{
	return c->ext;
}

bool dlv_client_tls_active(const struct dlv_client *c)
{
	return c->tls;
}

const struct dlv_outcome *dlv_client_error(const struct dlv_client *c)
{
	return c->failed ? &c->err : NULL;
}
