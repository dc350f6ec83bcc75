/* SPDX-License-Identifier: MIT */
/*
 * The SMTP/LMTP session state machine: commands, transaction state,
 * policy and limits, DATA/BDAT, the Received: header and the replies.
 *
 * Memory: the session itself is fixed size (smtp_session_size()); the
 * envelope (MAIL/RCPT strings) lives in a heap arena created at the first
 * MAIL, capped by max_recipients and max_cmd_line, and freed when the
 * transaction ends, so idle sessions hold nothing but the fixed part.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds_assert.h"
#include "smtp_internal.h"

#define SMTP_OUT_CAP	   1024
#define SMTP_REPLY_RESERVE 512 /* every step emits at most this much before checking again */
#define SMTP_TLS_DESC_MAX  96
#define SMTP_ARENA_MIN	   1024

enum smtp_state {
	ST_COMMAND = 0,
	ST_DATA,	/* after 354, scanning to CRLF.CRLF */
	ST_BDAT,	/* reading a BDAT chunk */
	ST_WAIT_COMMIT, /* data_commit queued, waiting for commit_done */
	ST_WAIT_RCPT,	/* rcpt_ok said -EINPROGRESS, waiting for rcpt_done */
	ST_STARTTLS,	/* 220 queued, waiting for tls_started */
	ST_CLOSED,
};

enum smtp_helo { HELO_NONE = 0, HELO_HELO, HELO_EHLO, HELO_LHLO };

/* Why a message in data is refused; the first cause wins. */
enum smtp_data_err {
	DERR_NONE = 0,
	DERR_BAD,     /* bare CR/LF/NUL */
	DERR_WRITE,   /* data_write failed: 451/452 */
	DERR_SIZE,    /* over max_message_size */
	DERR_LONG,    /* text line over max_text_line */
	DERR_BEGIN,   /* data_begin failed (BDAT): 451/452 */
	DERR_NOTRANS, /* BDAT without a valid transaction: 503 */
};

/* Replies generated after the data, one per recipient (LMTP, PRDR). */
enum smtp_gen { GEN_NONE = 0, GEN_LMTP, GEN_PRDR };

struct smtp_session {
	const struct smtp_config *cfg;
	const struct smtp_sink *sink;
	void *ctx;

	uint8_t state;
	uint8_t helo_kind;
	uint8_t data_err;
	uint8_t gen;
	bool tls;
	bool shutting_down;
	bool cmd_overflow; /* discarding the rest of an over-long command line */
	bool cmd_prev_cr;  /* ... whose last byte so far is a CR */
	bool cmd_bare;	   /* ... which has a bare CR or bare LF */
	bool mail_given;
	bool sink_open; /* data_begin called, neither commit nor abort yet */
	bool bdat_started;
	bool bdat_last;
	bool prdr;
	bool smtputf8;
	bool binary;
	bool gen_prdr_head; /* 353 still to send */
	bool bdat_discard;  /* BDAT chunk without a transaction: read and drop */
	bool dup;	    /* gap dedup: the retry of a message queued as queue_id (issue 16) */
	int data_errno;
	const char *gen_text;

	uint32_t errors;
	uint32_t rcpt_count;
	uint32_t cmd_len;
	uint32_t gen_left;
	uint32_t gen_off;
	uint64_t body_bytes; /* message bytes after unstuffing, header excluded */
	uint64_t written;    /* all bytes passed to data_write */
	uint64_t bdat_left;
	uint64_t bdat_chunk;
	uint64_t declared_size;
	int64_t received_at_us;
	struct smtp_data_scan scan;

	/* [mail_from\0][mail_params\0]{[rcpt\0][rcpt_params\0]}* */
	char *arena;
	uint32_t arena_len;
	uint32_t arena_alloc;
	uint32_t rcpt_off;
	uint32_t rcpt_pending_off; /* ST_WAIT_RCPT: where the recipient being asked about starts */

	uint16_t out_start;
	uint16_t out_len;
	uint16_t client_port;

	char queue_id[SMTP_QUEUE_ID_MAX];
	char client_addr[48];
	char helo[SMTP_DOMAIN_MAX + 1];
	char tls_desc[SMTP_TLS_DESC_MAX];
	uint8_t out[SMTP_OUT_CAP];
	uint8_t cmd[]; /* cfg->max_cmd_line */
};

void smtp_config_defaults(struct smtp_config *cfg)
{
	static const char *const def_domains[] = {"localhost"};

	memset(cfg, 0, sizeof(*cfg));
	cfg->hostname = "localhost";
	cfg->accept_domains = def_domains;
	cfg->accept_domain_count = 1;
	cfg->max_message_size = 50ull << 20;
	cfg->max_recipients = 1000;
	cfg->max_cmd_line = 512;
	cfg->max_text_line = 1000;
	cfg->max_errors = 10;
}

static uint32_t cmd_cap(const struct smtp_config *cfg)
{
	/* RFC 5321 4.5.3.1.4: at least 512; bounded so a config error cannot blow the pool. */
	uint32_t n = cfg->max_cmd_line ? cfg->max_cmd_line : 512;
	return DS_MIN(DS_MAX(n, 64u), 65536u);
}

size_t smtp_session_size(const struct smtp_config *cfg)
{
	return sizeof(struct smtp_session) + cmd_cap(cfg);
}

/* ---- output ---- */

static size_t out_free(const struct smtp_session *s)
{
	return SMTP_OUT_CAP - s->out_len;
}

static void out_put(struct smtp_session *s, const char *buf, size_t n)
{
	DS_ASSERT(n <= out_free(s));
	if (s->out_start + s->out_len + n > SMTP_OUT_CAP) {
		memmove(s->out, s->out + s->out_start, s->out_len);
		s->out_start = 0;
	}
	memcpy(s->out + s->out_start + s->out_len, buf, n);
	s->out_len = (uint16_t)(s->out_len + n);
}

/* A reply with this code was queued: tell the sink (metrics count replies by class). */
static void note_replied(const struct smtp_session *s, unsigned code)
{
	if (s->sink->replied)
		s->sink->replied(s->ctx, code);
}

/*
 * One reply line (NUL-terminated, no CRLF) is about to be queued: a final
 * line ("250 ..." or a bare "250") is one reply; a 4xx/5xx one is also a
 * refusal, for the logs.
 */
static void note_reply(const struct smtp_session *s, const char *line, int n)
{
	DS_ASSERT(n >= 3 && line[0] >= '2' && line[0] <= '5');
	if (n > 3 && line[3] != ' ')
		return; /* "250-..." continues */
	unsigned code =
		(unsigned)(line[0] - '0') * 100 + (unsigned)(line[1] - '0') * 10 + (unsigned)(line[2] - '0');
	note_replied(s, code);
	if (s->sink->refused && code >= 400 && n > 3)
		s->sink->refused(s->ctx, code, line, s->helo, s->mail_given ? s->arena : "");
}

/* Queue one reply line: fmt is the line without CRLF. */
static void vreply(struct smtp_session *s, const char *fmt, va_list ap)
{
	char buf[SMTP_REPLY_RESERVE];
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);

	/* Replies are built from bounded, validated strings: truncation is a bug. */
	DS_ASSERT(n > 0 && (size_t)n < sizeof(buf) - 2);
	note_reply(s, buf, n);
	buf[n++] = '\r';
	buf[n++] = '\n';
	out_put(s, buf, (size_t)n);
}

__attribute__((format(printf, 2, 3))) static void reply(struct smtp_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
}

const uint8_t *smtp_session_output(struct smtp_session *s, size_t *len)
{
	*len = s->out_len;
	return s->out + s->out_start;
}

static void gen_run(struct smtp_session *s);

void smtp_session_output_consumed(struct smtp_session *s, size_t n)
{
	DS_ASSERT(n <= s->out_len);
	s->out_start = (uint16_t)(s->out_start + n);
	s->out_len = (uint16_t)(s->out_len - n);
	if (s->out_len == 0)
		s->out_start = 0;
	/* Room again: continue per-recipient replies. */
	if (s->gen != GEN_NONE)
		gen_run(s);
}

/* ---- transaction / arena ---- */

static uint64_t arena_limit(const struct smtp_session *s)
{
	uint64_t line = cmd_cap(s->cfg);
	return 2 * line + (uint64_t)s->cfg->max_recipients * (line + sizeof(struct ds_rcpt)) + 64;
}

static int arena_reserve(struct smtp_session *s, size_t need)
{
	uint64_t want = (uint64_t)s->arena_len + need;

	if (want <= s->arena_alloc)
		return 0;
	if (want > arena_limit(s) || want > UINT32_MAX / 2)
		return -ENOMEM;
	uint64_t n = DS_MAX((uint64_t)s->arena_alloc * 2, (uint64_t)SMTP_ARENA_MIN);
	while (n < want)
		n *= 2;
	n = DS_MIN(n, arena_limit(s));
	char *p = realloc(s->arena, n);
	if (!p)
		return -ENOMEM;
	s->arena = p;
	s->arena_alloc = (uint32_t)n;
	return 0;
}

static void arena_put(struct smtp_session *s, const char *str, size_t n)
{
	DS_ASSERT(s->arena_len + n + 1 <= s->arena_alloc);
	memcpy(s->arena + s->arena_len, str, n);
	s->arena[s->arena_len + n] = '\0';
	s->arena_len += (uint32_t)n + 1;
}

static void sink_abort(struct smtp_session *s)
{
	if (s->sink_open) {
		s->sink_open = false;
		s->sink->data_abort(s->ctx);
	}
}

static void txn_reset(struct smtp_session *s)
{
	sink_abort(s);
	free(s->arena);
	s->arena = NULL;
	s->arena_len = s->arena_alloc = s->rcpt_off = 0;
	s->mail_given = false;
	s->bdat_started = s->bdat_last = false;
	s->prdr = s->smtputf8 = s->binary = false;
	s->rcpt_count = 0;
	s->data_err = DERR_NONE;
	s->data_errno = 0;
	s->body_bytes = s->written = 0;
	s->declared_size = 0;
	s->received_at_us = 0;
	s->queue_id[0] = '\0';
	s->gen = GEN_NONE;
	s->dup = false;
}

/* ---- session lifecycle ---- */

static void greeting(struct smtp_session *s)
{
	reply(s, "220 %s %s dotspool", s->cfg->hostname, s->cfg->lmtp ? "LMTP" : "ESMTP");
}

struct smtp_session *smtp_session_init(void *mem, const struct smtp_config *cfg, const struct smtp_sink *sink,
				       void *sink_ctx, const struct smtp_peer *peer)
{
	struct smtp_session *s = mem;

	DS_ASSERT(cfg && sink && cfg->hostname);
	DS_ASSERT(strlen(cfg->hostname) <= SMTP_DOMAIN_MAX);
	memset(s, 0, sizeof(*s));
	s->cfg = cfg;
	s->sink = sink;
	s->ctx = sink_ctx;
	if (peer && peer->addr) {
		size_t n = strnlen(peer->addr, sizeof(s->client_addr) - 1);
		memcpy(s->client_addr, peer->addr, n);
		s->client_addr[n] = '\0';
		s->client_port = peer->port;
	}
	greeting(s);
	return s;
}

void smtp_session_fini(struct smtp_session *s)
{
	/* A commit in flight stays the spool's: it may become durable, and that is fine. */
	txn_reset(s);
	s->state = ST_CLOSED;
}

enum smtp_phase smtp_session_phase(const struct smtp_session *s)
{
	switch (s->state) {
	case ST_DATA:
	case ST_BDAT:
		return SMTP_PHASE_DATA;
	case ST_WAIT_COMMIT:
	case ST_WAIT_RCPT:
		return SMTP_PHASE_COMMIT;
	case ST_CLOSED:
		return SMTP_PHASE_CLOSED;
	default:
		return SMTP_PHASE_COMMAND;
	}
}

const char *smtp_session_helo(const struct smtp_session *s)
{
	return s->helo;
}

const char *smtp_session_mail_from(const struct smtp_session *s)
{
	return s->mail_given ? s->arena : "";
}

bool smtp_session_idle(const struct smtp_session *s)
{
	return (s->state == ST_COMMAND || s->state == ST_CLOSED || s->state == ST_STARTTLS) &&
	       !s->mail_given && s->gen == GEN_NONE;
}

/* ---- per-recipient replies after the data ---- */

static const char *err_text(int res)
{
	return res == -ENOSPC ? "452 4.3.1 Insufficient system storage"
			      : "451 4.3.0 Error: queue file write error";
}

/* gen_text NULL: success replies; else every recipient gets that (static) refusal text. */
static void gen_run(struct smtp_session *s)
{
	while (s->gen != GEN_NONE && out_free(s) >= SMTP_REPLY_RESERVE) {
		if (s->gen_prdr_head) {
			reply(s, "353 PRDR content analysis beginning");
			s->gen_prdr_head = false;
			continue;
		}
		if (s->gen_left > 0) {
			const char *addr = s->arena + s->gen_off;
			s->gen_off += (uint32_t)strlen(addr) + 1;
			s->gen_off += (uint32_t)strlen(s->arena + s->gen_off) + 1;
			s->gen_left--;
			if (!s->gen_text && s->gen == GEN_LMTP)
				reply(s, "250 2.1.5 <%s> Ok: %squeued as %s", addr, s->dup ? "already " : "",
				      s->queue_id);
			else if (!s->gen_text)
				reply(s, "250 2.1.5 <%s> Ok", addr);
			else
				reply(s, "%s <%s>", s->gen_text, addr);
			continue;
		}
		if (s->gen == GEN_PRDR)
			reply(s, "250 2.0.0 Ok: %squeued as %s", s->dup ? "already " : "", s->queue_id);
		txn_reset(s);
	}
}

static void gen_start(struct smtp_session *s, enum smtp_gen kind, const char *text)
{
	s->gen = kind;
	s->gen_text = text;
	s->gen_left = s->rcpt_count;
	s->gen_off = s->rcpt_off;
	s->gen_prdr_head = kind == GEN_PRDR;
	gen_run(s);
}

/* Final replies for a commit that became durable (res 0) or failed. */
static void finish_commit(struct smtp_session *s, int res)
{
	DS_ASSERT(!s->sink_open);
	if (s->cfg->lmtp) {
		gen_start(s, GEN_LMTP, res ? err_text(res) : NULL);
		return;
	}
	/* PRDR on failure: one message-level reply instead of 353 (draft-hall-prdr 4.3). */
	if (res == 0 && s->prdr) {
		gen_start(s, GEN_PRDR, NULL);
		return;
	}
	if (res == 0)
		reply(s, "250 2.0.0 Ok: %squeued as %s", s->dup ? "already " : "", s->queue_id);
	else
		reply(s, "%s", err_text(res));
	txn_reset(s);
}

/* A refused message: one reply (SMTP) or one per recipient (LMTP). */
static void refuse_message(struct smtp_session *s, const char *text, bool per_rcpt)
{
	sink_abort(s);
	if (per_rcpt && s->cfg->lmtp && s->rcpt_count > 0) {
		gen_start(s, GEN_LMTP, text);
		return;
	}
	reply(s, "%s", text);
	txn_reset(s);
}

enum smtp_status smtp_session_commit_done(struct smtp_session *s, int res)
{
	/* After a timeout or fini the session is gone for the client: nothing to say. */
	if (s->state == ST_CLOSED)
		return SMTP_CLOSE;
	DS_ASSERT(s->state == ST_WAIT_COMMIT);
	DS_ASSERT(res <= 0);
	s->state = ST_COMMAND;
	finish_commit(s, res);
	return s->gen != GEN_NONE ? SMTP_BLOCKED : SMTP_OK;
}

static size_t sanitize(char *dst, size_t cap, const char *src, const char *extra_ok, bool utf8);

/*
 * Gap dedup (issue 16): the message just ended is a retry of one already
 * queued as orig_id, proven byte for byte by io/. Nothing was stored for
 * it (io aborted the spool txn); the client hears the original's id.
 */
enum smtp_status smtp_session_commit_dup(struct smtp_session *s, const char *orig_id)
{
	if (s->state == ST_CLOSED)
		return SMTP_CLOSE;
	DS_ASSERT(s->state == ST_WAIT_COMMIT);
	char id[SMTP_QUEUE_ID_MAX];
	sanitize(id, sizeof(id), orig_id, ".-_", false);
	memcpy(s->queue_id, id, sizeof(id));
	s->dup = true;
	s->state = ST_COMMAND;
	finish_commit(s, 0);
	return s->gen != GEN_NONE ? SMTP_BLOCKED : SMTP_OK;
}

void smtp_session_each_rcpt(const struct smtp_session *s, void (*fn)(void *ctx, const char *addr), void *ctx)
{
	uint32_t p = s->rcpt_off;

	if (!s->mail_given)
		return;
	for (uint32_t i = 0; i < s->rcpt_count; i++) {
		fn(ctx, s->arena + p);
		p += (uint32_t)strlen(s->arena + p) + 1;
		p += (uint32_t)strlen(s->arena + p) + 1;
	}
}

/* ---- data ---- */

static const char txt_bad[] = "550 5.6.0 Error: bare CR, bare LF or NUL in message data";
static const char txt_long[] = "550 5.6.0 Error: text line too long";
static const char txt_size[] = "552 5.3.4 Error: message size exceeds fixed limit";

static const char *proto_name(const struct smtp_session *s)
{
	if (s->cfg->lmtp)
		return s->smtputf8 ? (s->tls ? "UTF8LMTPS" : "UTF8LMTP") : (s->tls ? "LMTPS" : "LMTP");
	if (s->smtputf8)
		return s->tls ? "UTF8SMTPS" : "UTF8SMTP";
	if (s->tls)
		return "ESMTPS";
	return s->helo_kind == HELO_HELO ? "SMTP" : "ESMTP";
}

/*
 * Copy src into dst keeping only octets that cannot break the header's
 * structure: no CR/LF/NUL (already refused), no comment or angle
 * delimiters, no controls; 8-bit only when the message is SMTPUTF8.
 */
static size_t sanitize(char *dst, size_t cap, const char *src, const char *extra_ok, bool utf8)
{
	size_t n = 0;

	for (; *src && n + 1 < cap; src++) {
		unsigned char c = (unsigned char)*src;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  (c < 0x80 && c >= ' ' && strchr(extra_ok, c)) || (c >= 0x80 && utf8);
		dst[n++] = ok ? (char)c : '_';
	}
	dst[n] = '\0';
	return n;
}

static void format_date(char *buf, size_t cap, int64_t now_us)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)(now_us / 1000000);
	struct tm tm;

	if (now_us < 0 || !gmtime_r(&t, &tm))
		memset(&tm, 0, sizeof(tm)), tm.tm_mday = 1, tm.tm_year = 70, tm.tm_wday = 4;
	snprintf(buf, cap, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
		 months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void data_emit(struct smtp_session *s, const uint8_t *buf, size_t n);

static void write_received(struct smtp_session *s)
{
	char helo[SMTP_DOMAIN_MAX + 1], addr[48], host[SMTP_DOMAIN_MAX + 1], tls[SMTP_TLS_DESC_MAX];
	char rcpt[SMTP_PATH_MAX + 1], date[128];
	char hdr[1400];

	sanitize(helo, sizeof(helo), s->helo, ".-:[]_", false);
	sanitize(addr, sizeof(addr), s->client_addr[0] ? s->client_addr : "unknown", ".:", false);
	sanitize(host, sizeof(host), s->cfg->hostname, ".-_", false);
	sanitize(tls, sizeof(tls), s->tls_desc, ".-_/ ", false);
	format_date(date, sizeof(date), s->received_at_us);
	int n = snprintf(hdr, sizeof(hdr),
			 "Received: from %s ([%s%s])\r\n\tby %s (dotspool) with %s%s%s%s id %s\r\n", helo,
			 strchr(addr, ':') ? "IPv6:" : "", addr, host, proto_name(s), s->tls ? " (" : "",
			 s->tls ? tls : "", s->tls ? ")" : "", s->queue_id);
	DS_ASSERT(n > 0 && (size_t)n < sizeof(hdr));
	if (s->rcpt_count == 1) {
		sanitize(rcpt, sizeof(rcpt), s->arena + s->rcpt_off, ".-_+=@!#$%&'*/?^`{|}~[]:", s->smtputf8);
		n += snprintf(hdr + n, sizeof(hdr) - (size_t)n, "\tfor <%s>;", rcpt);
	} else {
		n += snprintf(hdr + n, sizeof(hdr) - (size_t)n, "\t;");
	}
	DS_ASSERT((size_t)n < sizeof(hdr));
	n += snprintf(hdr + n, sizeof(hdr) - (size_t)n, " %s\r\n", date);
	DS_ASSERT((size_t)n < sizeof(hdr));
	/* The header is not message data: it does not count against the size limit. */
	int r = s->sink->data_write(s->ctx, hdr, (size_t)n);
	if (r) {
		s->data_err = DERR_WRITE;
		s->data_errno = r;
		return;
	}
	s->written += (uint64_t)n;
}

static int data_start(struct smtp_session *s)
{
	s->received_at_us = s->sink->now_us(s->ctx);
	s->queue_id[0] = '\0';
	int r = s->sink->data_begin(s->ctx, s->queue_id, sizeof(s->queue_id));
	if (r)
		return r < 0 ? r : -EIO;
	s->queue_id[sizeof(s->queue_id) - 1] = '\0';
	/* The id goes into replies and the header: keep it to a safe alphabet. */
	char id[SMTP_QUEUE_ID_MAX];
	sanitize(id, sizeof(id), s->queue_id, ".-_", false);
	memcpy(s->queue_id, id, sizeof(id));
	s->sink_open = true;
	s->data_err = DERR_NONE;
	s->body_bytes = s->written = 0;
	write_received(s);
	return 0;
}

static void data_emit(struct smtp_session *s, const uint8_t *buf, size_t n)
{
	if (s->data_err != DERR_NONE || n == 0)
		return;
	if (s->body_bytes + n > s->cfg->max_message_size) {
		/* Stop storing now; keep reading to the end of data to stay in sync. */
		s->data_err = DERR_SIZE;
		sink_abort(s);
		return;
	}
	s->body_bytes += n;
	int r = s->sink->data_write(s->ctx, buf, n);
	if (r) {
		s->data_err = DERR_WRITE;
		s->data_errno = r < 0 ? r : -EIO;
		return;
	}
	s->written += n;
}

static void data_check_scan(struct smtp_session *s)
{
	if (s->data_err != DERR_NONE)
		return;
	if (s->scan.flags & SMTP_SCAN_BAD)
		s->data_err = DERR_BAD;
	else if (s->scan.flags & SMTP_SCAN_LONG)
		s->data_err = DERR_LONG;
	else
		return;
	sink_abort(s);
}

static const char *data_err_text(const struct smtp_session *s)
{
	switch (s->data_err) {
	case DERR_BAD:
		return txt_bad;
	case DERR_LONG:
		return txt_long;
	case DERR_SIZE:
		return txt_size;
	case DERR_WRITE:
	case DERR_BEGIN:
		return err_text(s->data_errno);
	default:
		DS_ASSERT(0);
	}
	return NULL;
}

/* End of DATA or BDAT LAST: refuse, or hand the message to the spool. */
static enum smtp_status data_end(struct smtp_session *s)
{
	s->state = ST_COMMAND;
	data_check_scan(s);
	if (s->data_err != DERR_NONE) {
		refuse_message(s, data_err_text(s), true);
		return s->gen != GEN_NONE ? SMTP_BLOCKED : SMTP_OK;
	}
	DS_ASSERT(s->sink_open);
	size_t off = ((size_t)s->arena_len + 7) & ~(size_t)7;
	int r = arena_reserve(s, off - s->arena_len + (size_t)s->rcpt_count * sizeof(struct ds_rcpt));
	if (r) {
		sink_abort(s);
		finish_commit(s, r);
		return s->gen != GEN_NONE ? SMTP_BLOCKED : SMTP_OK;
	}
	struct ds_rcpt *rc = (struct ds_rcpt *)(void *)(s->arena + off);
	uint32_t p = s->rcpt_off;
	for (uint32_t i = 0; i < s->rcpt_count; i++) {
		rc[i].addr = s->arena + p;
		p += (uint32_t)strlen(s->arena + p) + 1;
		rc[i].params = s->arena + p;
		p += (uint32_t)strlen(s->arena + p) + 1;
	}
	const char *mail_from = s->arena;
	struct ds_envelope env = {
		.client_addr = s->client_addr,
		.client_port = s->client_port,
		.helo = s->helo,
		.proto = proto_name(s),
		.mail_from = mail_from,
		.mail_params = mail_from + strlen(mail_from) + 1,
		.rcpt = rc,
		.rcpt_count = s->rcpt_count,
		.tls = s->tls ? s->tls_desc : "",
		.received_at_us = s->received_at_us,
		.body_size = s->written,
	};
	s->sink_open = false;
	r = s->sink->data_commit(s->ctx, &env);
	if (r) {
		finish_commit(s, r < 0 ? r : -EIO);
		return s->gen != GEN_NONE ? SMTP_BLOCKED : SMTP_OK;
	}
	/* Nothing is acknowledged before the spool says durable. */
	s->state = ST_WAIT_COMMIT;
	return SMTP_WAIT_COMMIT;
}

static size_t data_input(struct smtp_session *s, const uint8_t *buf, size_t len, enum smtp_status *st)
{
	size_t pos = 0;

	*st = SMTP_OK;
	while (pos < len) {
		size_t emit;
		bool end;
		size_t n = smtp_data_scan(&s->scan, buf + pos, len - pos, &emit, &end);
		DS_ASSERT(n > 0 && emit <= n);
		data_emit(s, buf + pos, emit);
		pos += n;
		data_check_scan(s);
		if (end) {
			*st = data_end(s);
			break;
		}
	}
	return pos;
}

static enum smtp_status cmd_fail(struct smtp_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static enum smtp_status chunk_end(struct smtp_session *s)
{
	s->state = ST_COMMAND;
	if (s->bdat_discard) {
		s->bdat_discard = false;
		return cmd_fail(s, "503 5.5.1 Error: need MAIL and RCPT before BDAT");
	}
	data_check_scan(s);
	if (s->bdat_last) {
		smtp_data_scan_finish_raw(&s->scan);
		return data_end(s);
	}
	if (s->data_err != DERR_NONE) {
		/* A failed chunk ends the transaction; later chunks get 503. */
		refuse_message(s, data_err_text(s), false);
		return SMTP_OK;
	}
	reply(s, "250 2.0.0 %llu octets received", (unsigned long long)s->bdat_chunk);
	return SMTP_OK;
}

static size_t bdat_input(struct smtp_session *s, const uint8_t *buf, size_t len, enum smtp_status *st)
{
	size_t k = (size_t)DS_MIN((uint64_t)len, s->bdat_left);

	*st = SMTP_OK;
	if (!s->bdat_discard && s->data_err != DERR_BEGIN) {
		size_t emit;
		bool end;
		size_t n = smtp_data_scan(&s->scan, buf, k, &emit, &end);
		DS_ASSERT(n == k && emit == k && !end);
		data_emit(s, buf, k);
		data_check_scan(s);
	}
	s->bdat_left -= k;
	if (s->bdat_left == 0)
		*st = chunk_end(s);
	return k;
}

/* ---- commands ---- */

static enum smtp_status cmd_fail(struct smtp_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
	if (++s->errors >= s->cfg->max_errors && s->cfg->max_errors > 0) {
		reply(s, "421 4.7.0 %s Error: too many errors, closing", s->cfg->hostname);
		txn_reset(s);
		s->state = ST_CLOSED;
		return SMTP_CLOSE;
	}
	return SMTP_OK;
}

static enum smtp_status cmd_ok(struct smtp_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static enum smtp_status cmd_ok(struct smtp_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
	s->errors = 0;
	return SMTP_OK;
}

static enum smtp_status do_helo(struct smtp_session *s, const struct smtp_cmd *c)
{
	if (s->cfg->lmtp != (c->verb == SMTP_VERB_LHLO)) {
		if (c->verb == SMTP_VERB_LHLO)
			return cmd_fail(s, "500 5.5.2 Error: command not recognized");
		return cmd_fail(s, "500 5.5.1 Error: this is LMTP, use LHLO");
	}
	if (!smtp_helo_valid(c->arg, c->arg_len))
		return cmd_fail(s, "501 5.5.4 Syntax: %s hostname",
				c->verb == SMTP_VERB_HELO   ? "HELO"
				: c->verb == SMTP_VERB_EHLO ? "EHLO"
							    : "LHLO");
	/* RFC 5321 4.1.4: HELO/EHLO in a transaction resets it. */
	txn_reset(s);
	memcpy(s->helo, c->arg, c->arg_len);
	s->helo[c->arg_len] = '\0';
	s->helo_kind = c->verb == SMTP_VERB_HELO   ? HELO_HELO
		       : c->verb == SMTP_VERB_EHLO ? HELO_EHLO
						   : HELO_LHLO;
	s->errors = 0;
	if (c->verb == SMTP_VERB_HELO) {
		reply(s, "250 %s", s->cfg->hostname);
		return SMTP_OK;
	}
	char buf[SMTP_REPLY_RESERVE];
	int n = snprintf(buf, sizeof(buf),
			 "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
			 "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-BINARYMIME\r\n%s%s\r\n%s",
			 s->cfg->hostname, (unsigned long long)s->cfg->max_message_size,
			 s->cfg->tls_available && !s->tls ? "250-STARTTLS\r\n" : "",
			 s->cfg->lmtp ? "250 DSN" : "250-DSN", s->cfg->lmtp ? "" : "250 PRDR\r\n");
	DS_ASSERT(n > 0 && (size_t)n < sizeof(buf));
	out_put(s, buf, (size_t)n);
	note_replied(s, 250); /* one reply of many lines */
	return SMTP_OK;
}

/* After the path: end of line, or one or more spaces then parameters. */
static bool split_params(const struct smtp_cmd *c, size_t used, const char **params, size_t *plen)
{
	if (used == c->arg_len) {
		*params = c->arg + used;
		*plen = 0;
		return true;
	}
	if (c->arg[used] != ' ')
		return false;
	while (used < c->arg_len && c->arg[used] == ' ')
		used++;
	*params = c->arg + used;
	*plen = c->arg_len - used;
	return true;
}

static enum smtp_status do_mail(struct smtp_session *s, const struct smtp_cmd *c)
{
	struct smtp_path p;
	struct smtp_mail_params mp;
	const char *params;
	size_t used, plen;

	if (s->helo_kind == HELO_NONE)
		return cmd_fail(s, "503 5.5.1 Error: send %s first", s->cfg->lmtp ? "LHLO" : "HELO/EHLO");
	if (s->mail_given)
		return cmd_fail(s, "503 5.5.1 Error: nested MAIL command");
	int r = smtp_parse_path(c->arg, c->arg_len, true, &used, &p);
	if (r == -ENAMETOOLONG)
		return cmd_fail(s, "501 5.1.7 Error: sender address too long");
	if (r || !split_params(c, used, &params, &plen))
		return cmd_fail(s, "501 5.1.7 Syntax: MAIL FROM:<address>");
	if (plen && s->helo_kind == HELO_HELO)
		return cmd_fail(s, "555 5.5.4 Error: parameters need EHLO");
	r = smtp_parse_mail_params(params, plen, s->cfg->lmtp, &mp);
	if (r == -ENOTSUP)
		return cmd_fail(s, "555 5.5.4 Error: unsupported MAIL parameter");
	if (r)
		return cmd_fail(s, "501 5.5.4 Error: bad MAIL parameter syntax");
	if (p.utf8 && !mp.smtputf8)
		return cmd_fail(s, "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
	if (mp.has_size && mp.size > s->cfg->max_message_size)
		return cmd_fail(s, "552 5.3.4 Error: message size exceeds fixed limit");
	if (s->sink->mail_ok) {
		r = s->sink->mail_ok(s->ctx);
		/* Not cmd_fail(): the server's state is not the client's error (max_errors). */
		if (r == -ENOSPC) {
			reply(s, "452 4.3.1 Insufficient system storage");
			return SMTP_OK;
		}
		if (r == -EBUSY) {
			/* A rate limit on the client (issue 17): its pace, not its error. */
			reply(s, "450 4.7.1 Error: rate limit exceeded, try again later");
			return SMTP_OK;
		}
		if (r < 0) {
			reply(s, "451 4.3.0 Error: local error, try again later");
			return SMTP_OK;
		}
		DS_ASSERT(r == 0);
	}
	DS_ASSERT(s->arena == NULL);
	if (arena_reserve(s, p.mailbox_len + plen + 2))
		return cmd_fail(s, "452 4.3.1 Error: insufficient resources");
	arena_put(s, p.null_path ? "" : p.mailbox, p.null_path ? 0 : p.mailbox_len);
	arena_put(s, params, plen);
	s->rcpt_off = s->arena_len;
	s->mail_given = true;
	s->smtputf8 = mp.smtputf8;
	s->prdr = mp.prdr;
	s->binary = mp.body == SMTP_BODY_BINARYMIME;
	s->declared_size = mp.size;
	return cmd_ok(s, "250 2.1.0 Ok");
}

/*
 * The policy's word on the recipient at rcpt_pending_off (smtp.h,
 * rcpt_ok): keep it (250) or take it back out of the arena and say why.
 * The refusal's text is formatted from the arena before anything can
 * free it (only txn_reset does, after the reply).
 */
static enum smtp_status rcpt_answer(struct smtp_session *s, int res)
{
	const char *addr = s->arena + s->rcpt_pending_off;

	if (res == 0) {
		s->rcpt_count++;
		return cmd_ok(s, "250 2.1.5 Ok");
	}
	s->arena_len = s->rcpt_pending_off;
	switch (res) {
	case -ENOENT:
		return cmd_fail(s, "550 5.1.1 <%s>: recipient unknown", addr);
	case -EUSERS:
		reply(s, "421 4.7.0 %s Error: too many unknown recipients, closing", s->cfg->hostname);
		txn_reset(s);
		s->state = ST_CLOSED;
		return SMTP_CLOSE;
	case -EBUSY:
		/* A rate limit is the client's pace, not a protocol error (max_errors). */
		reply(s, "450 4.7.1 <%s>: Error: rate limit exceeded, try again later", addr);
		return SMTP_OK;
	case -ETIMEDOUT:
	case -EAGAIN:
		reply(s, "450 4.1.1 <%s>: Error: recipient address verification unavailable, try again later",
		      addr);
		return SMTP_OK;
	default:
		reply(s, "451 4.3.0 Error: local error, try again later");
		return SMTP_OK;
	}
}

static enum smtp_status do_rcpt(struct smtp_session *s, const struct smtp_cmd *c)
{
	struct smtp_path p;
	const char *params;
	size_t used, plen;

	if (!s->mail_given)
		return cmd_fail(s, "503 5.5.1 Error: need MAIL command");
	if (s->bdat_started)
		return cmd_fail(s, "503 5.5.1 Error: RCPT after BDAT");
	int r = smtp_parse_path(c->arg, c->arg_len, s->smtputf8, &used, &p);
	if (r == -EILSEQ)
		return cmd_fail(s, "553 5.6.7 Error: non-ASCII address needs SMTPUTF8");
	if (r == -ENAMETOOLONG)
		return cmd_fail(s, "501 5.1.3 Error: recipient address too long");
	if (r || p.null_path || !split_params(c, used, &params, &plen))
		return cmd_fail(s, "501 5.1.3 Syntax: RCPT TO:<address>");
	if (plen && s->helo_kind == HELO_HELO)
		return cmd_fail(s, "555 5.5.4 Error: parameters need EHLO");
	r = smtp_parse_rcpt_params(params, plen, s->smtputf8);
	if (r == -ENOTSUP)
		return cmd_fail(s, "555 5.5.4 Error: unsupported RCPT parameter");
	if (r)
		return cmd_fail(s, "501 5.5.4 Error: bad RCPT parameter syntax");
	if (p.domain && !smtp_domain_accepted(s->cfg, p.domain, p.domain_len))
		return cmd_fail(s, "550 5.7.1 Error: relaying denied");
	if (s->rcpt_count >= s->cfg->max_recipients) {
		/* Not a client error (RFC 5321 4.5.3.1.10): it sends the rest later. */
		reply(s, "452 4.5.3 Error: too many recipients");
		return SMTP_OK;
	}
	if (arena_reserve(s, p.mailbox_len + plen + 2))
		return cmd_fail(s, "452 4.3.1 Error: insufficient resources");
	/* In the arena first: the policy's answer may come later, and a refusal takes it back. */
	s->rcpt_pending_off = s->arena_len;
	arena_put(s, p.mailbox, p.mailbox_len);
	arena_put(s, params, plen);
	r = 0;
	if (s->sink->rcpt_ok) {
		const char *mbox = s->arena + s->rcpt_pending_off;
		r = s->sink->rcpt_ok(s->ctx, mbox, p.mailbox_len, p.domain ? mbox + (p.domain - p.mailbox) : NULL,
				     p.domain ? p.domain_len : 0);
		if (r == -EINPROGRESS) {
			s->state = ST_WAIT_RCPT;
			return SMTP_WAIT_RCPT;
		}
	}
	return rcpt_answer(s, r);
}

enum smtp_status smtp_session_rcpt_done(struct smtp_session *s, int res)
{
	if (s->state == ST_CLOSED)
		return SMTP_CLOSE;
	DS_ASSERT(s->state == ST_WAIT_RCPT);
	DS_ASSERT(res != -EINPROGRESS && res <= 0);
	s->state = ST_COMMAND;
	return rcpt_answer(s, res);
}

static enum smtp_status do_data(struct smtp_session *s, const struct smtp_cmd *c)
{
	if (c->arg_len)
		return cmd_fail(s, "501 5.5.4 Syntax: DATA");
	if (!s->mail_given)
		return cmd_fail(s, "503 5.5.1 Error: need MAIL command");
	if (s->rcpt_count == 0)
		return cmd_fail(s, "503 5.5.1 Error: need RCPT command");
	if (s->bdat_started)
		return cmd_fail(s, "503 5.5.1 Error: DATA after BDAT");
	if (s->binary)
		return cmd_fail(s, "503 5.5.1 Error: BODY=BINARYMIME needs BDAT");
	int r = data_start(s);
	if (r) {
		reply(s, "%s", err_text(r));
		return SMTP_OK;
	}
	smtp_data_scan_init(&s->scan, false, true, s->cfg->max_text_line);
	s->state = ST_DATA;
	return cmd_ok(s, "354 End data with <CR><LF>.<CR><LF>");
}

static enum smtp_status do_bdat(struct smtp_session *s, const struct smtp_cmd *c)
{
	const char *sp = memchr(c->arg, ' ', c->arg_len);
	size_t nlen = sp ? (size_t)(sp - c->arg) : c->arg_len;
	uint64_t size;
	bool last = false;

	int r = smtp_parse_u64(c->arg, nlen, UINT64_MAX, &size);
	if (!r && sp) {
		const char *t = sp;
		while (t < c->arg + c->arg_len && *t == ' ')
			t++;
		size_t tl = (size_t)(c->arg + c->arg_len - t);
		if (tl == 4 && (t[0] | 32) == 'l' && (t[1] | 32) == 'a' && (t[2] | 32) == 's' &&
		    (t[3] | 32) == 't')
			last = true;
		else
			r = -EINVAL;
	}
	/* Without a valid size we cannot tell data from commands: close rather than guess. */
	if (r) {
		reply(s, "501 5.5.4 Syntax: BDAT size [LAST], closing");
		txn_reset(s);
		s->state = ST_CLOSED;
		return SMTP_CLOSE;
	}
	if (size > s->cfg->max_message_size) {
		reply(s, "552 5.3.4 Error: chunk exceeds message size limit, closing");
		txn_reset(s);
		s->state = ST_CLOSED;
		return SMTP_CLOSE;
	}
	s->bdat_left = size;
	s->bdat_chunk = size;
	s->bdat_last = last;
	s->bdat_discard = !s->mail_given || s->rcpt_count == 0;
	if (!s->bdat_discard && !s->bdat_started) {
		s->bdat_started = true;
		r = data_start(s);
		if (r) {
			s->data_err = DERR_BEGIN;
			s->data_errno = r;
		}
		smtp_data_scan_init(&s->scan, true, !s->binary, s->cfg->max_text_line);
	}
	s->state = ST_BDAT;
	if (size == 0)
		return chunk_end(s);
	return SMTP_OK;
}

static bool shutdown_allows(const struct smtp_session *s, enum smtp_verb v)
{
	if (v == SMTP_VERB_QUIT)
		return true;
	return s->mail_given && (v == SMTP_VERB_RCPT || v == SMTP_VERB_DATA || v == SMTP_VERB_BDAT);
}

/*
 * A bare CR or bare LF in a command line: another program on the path may
 * have ended the line there and seen what follows as the next command
 * (SMTP smuggling). Answer once and close; never run the bytes after it.
 * Like Postfix's smtpd_forbid_bare_newline.
 */
static enum smtp_status bare_close(struct smtp_session *s)
{
	reply(s, "500 5.5.2 Error: bare CR or bare LF in command line (lines end with CRLF), closing");
	txn_reset(s);
	s->state = ST_CLOSED;
	return SMTP_CLOSE;
}

/* An over-long command line is dropped unparsed; still note a bare CR or bare LF in it. */
static void overflow_scan(struct smtp_session *s, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s->cmd_prev_cr != (p[i] == '\n'))
			s->cmd_bare = true;
		s->cmd_prev_cr = p[i] == '\r';
	}
}

static enum smtp_status overflow_end(struct smtp_session *s)
{
	bool bare = s->cmd_bare;

	s->cmd_overflow = false;
	s->cmd_prev_cr = false;
	s->cmd_bare = false;
	if (bare)
		return bare_close(s);
	return cmd_fail(s, "500 5.5.2 Error: line too long");
}

static enum smtp_status process_line(struct smtp_session *s, const uint8_t *line, size_t len)
{
	struct smtp_cmd c;
	int r = smtp_parse_command(line, len, &c);

	if (r == -EILSEQ)
		return bare_close(s);
	if (r == -EBADMSG)
		return cmd_fail(s, "500 5.5.2 Error: NUL in command");
	if (s->shutting_down && !shutdown_allows(s, c.verb)) {
		reply(s, "421 4.3.2 %s Service shutting down, closing", s->cfg->hostname);
		txn_reset(s);
		s->state = ST_CLOSED;
		return SMTP_CLOSE;
	}
	if (r)
		return cmd_fail(s, "501 5.5.4 Syntax: %s",
				c.verb == SMTP_VERB_MAIL ? "MAIL FROM:<address>" : "RCPT TO:<address>");
	switch (c.verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
	case SMTP_VERB_LHLO:
		return do_helo(s, &c);
	case SMTP_VERB_MAIL:
		return do_mail(s, &c);
	case SMTP_VERB_RCPT:
		return do_rcpt(s, &c);
	case SMTP_VERB_DATA:
		return do_data(s, &c);
	case SMTP_VERB_BDAT:
		return do_bdat(s, &c);
	case SMTP_VERB_RSET:
		if (c.arg_len)
			return cmd_fail(s, "501 5.5.4 Syntax: RSET");
		txn_reset(s);
		return cmd_ok(s, "250 2.0.0 Ok");
	case SMTP_VERB_NOOP:
		return cmd_ok(s, "250 2.0.0 Ok");
	case SMTP_VERB_QUIT:
		reply(s, "221 2.0.0 Bye");
		txn_reset(s);
		s->state = ST_CLOSED;
		return SMTP_CLOSE;
	case SMTP_VERB_VRFY:
		if (!c.arg_len)
			return cmd_fail(s, "501 5.5.4 Syntax: VRFY address");
		/* No user enumeration (RFC 5321 3.5.3). */
		return cmd_ok(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
	case SMTP_VERB_EXPN:
		return cmd_fail(s, "502 5.5.1 Error: command not implemented");
	case SMTP_VERB_HELP:
		return cmd_ok(s, "214 2.0.0 Commands: %s MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP%s",
			      s->cfg->lmtp ? "LHLO" : "HELO EHLO", s->cfg->tls_available ? " STARTTLS" : "");
	case SMTP_VERB_STARTTLS:
		if (c.arg_len)
			return cmd_fail(s, "501 5.5.4 Syntax: STARTTLS");
		if (s->tls)
			return cmd_fail(s, "503 5.5.1 Error: TLS already active");
		if (!s->cfg->tls_available)
			return cmd_fail(s, "502 5.5.1 Error: command not implemented");
		txn_reset(s);
		reply(s, "220 2.0.0 Ready to start TLS");
		s->state = ST_STARTTLS;
		return SMTP_STARTTLS;
	default:
		return cmd_fail(s, "500 5.5.2 Error: command not recognized");
	}
}

/*
 * Command bytes: one line, or the part of it that has arrived (kept in
 * s->cmd until its LF). Returns the bytes consumed.
 */
static size_t command_input(struct smtp_session *s, const uint8_t *buf, size_t len, enum smtp_status *st)
{
	*st = SMTP_OK;
	/* Replies go out in order: no new command while earlier replies are pending. */
	if (s->gen != GEN_NONE)
		gen_run(s);
	if (s->gen != GEN_NONE || out_free(s) < SMTP_REPLY_RESERVE) {
		*st = SMTP_BLOCKED;
		return 0;
	}
	const uint8_t *lf = memchr(buf, '\n', len);
	size_t n = lf ? (size_t)(lf - buf) + 1 : len;
	if (s->cmd_overflow) {
		overflow_scan(s, buf, n);
		if (lf)
			*st = overflow_end(s);
		return n;
	}
	if ((uint64_t)s->cmd_len + n > cmd_cap(s->cfg)) {
		/* Over-long: drop it all, up to and including its LF; never parse the rest. */
		s->cmd_overflow = true;
		s->cmd_prev_cr = false;
		s->cmd_bare = false;
		overflow_scan(s, s->cmd, s->cmd_len);
		overflow_scan(s, buf, n);
		s->cmd_len = 0;
		if (lf)
			*st = overflow_end(s);
		return n;
	}
	if (!lf) {
		memcpy(s->cmd + s->cmd_len, buf, n);
		s->cmd_len += (uint32_t)n;
		return n;
	}
	if (s->cmd_len == 0) {
		/* Whole line in the input: parse it in place. */
		*st = process_line(s, buf, n);
		return n;
	}
	memcpy(s->cmd + s->cmd_len, buf, n);
	size_t l = s->cmd_len + n;
	s->cmd_len = 0;
	*st = process_line(s, s->cmd, l);
	return n;
}

enum smtp_status smtp_session_input(struct smtp_session *s, const uint8_t *buf, size_t len, size_t *used)
{
	enum smtp_status st = SMTP_OK;
	size_t pos = 0;

	*used = 0;
	switch (s->state) {
	case ST_CLOSED:
		return SMTP_CLOSE;
	case ST_WAIT_COMMIT:
		return SMTP_WAIT_COMMIT;
	case ST_WAIT_RCPT:
		return SMTP_WAIT_RCPT;
	case ST_STARTTLS:
		return SMTP_STARTTLS;
	default:
		break;
	}
	if (s->gen != GEN_NONE)
		gen_run(s);
	while (pos < len && st == SMTP_OK) {
		if (s->state == ST_DATA) {
			pos += data_input(s, buf + pos, len - pos, &st);
		} else if (s->state == ST_BDAT) {
			pos += bdat_input(s, buf + pos, len - pos, &st);
		} else {
			DS_ASSERT(s->state == ST_COMMAND);
			pos += command_input(s, buf + pos, len - pos, &st);
		}
	}
	*used = pos;
	if (st == SMTP_OK && s->gen != GEN_NONE)
		st = SMTP_BLOCKED;
	return st;
}

void smtp_session_tls_started(struct smtp_session *s, const char *tls_desc)
{
	DS_ASSERT(s->state == ST_STARTTLS);
	/* RFC 3207 4.2: forget everything learned before TLS. */
	txn_reset(s);
	s->helo_kind = HELO_NONE;
	s->helo[0] = '\0';
	s->tls = true;
	s->cmd_len = 0;
	s->cmd_overflow = false;
	s->cmd_prev_cr = false;
	s->cmd_bare = false;
	size_t n = 0;
	for (const char *p = tls_desc ? tls_desc : ""; *p && n + 1 < sizeof(s->tls_desc); p++)
		s->tls_desc[n++] = (*p > ' ' && *p < 127) || *p == ' ' ? *p : '_';
	s->tls_desc[n] = '\0';
	s->state = ST_COMMAND;
}

enum smtp_status smtp_session_timeout(struct smtp_session *s)
{
	if (s->state != ST_CLOSED && out_free(s) >= SMTP_REPLY_RESERVE / 2)
		reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cfg->hostname);
	txn_reset(s);
	s->state = ST_CLOSED;
	return SMTP_CLOSE;
}

void smtp_session_shutdown(struct smtp_session *s)
{
	s->shutting_down = true;
}
