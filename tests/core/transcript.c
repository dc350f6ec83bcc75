/* SPDX-License-Identifier: MIT */
/*
 * Transcript runner for core/: drives one smtp_session with a fake sink
 * from a readable scenario file.
 *
 *   # comment
 *   !config lmtp=1 tls=1 max_recipients=3 max_cmd_line=N max_text_line=N
 *           max_errors=N max_message_size=N domains=a.test,.b.test
 *   C: text        client bytes (escapes \r \n \t \\ \xHH); CRLF appended
 *                  unless the text contains a \r or \n escape
 *   S: text        next reply line, exact; a trailing '*' makes it a prefix
 *   !commit ok | !commit -28       the spool settles the pending commit
 *   !expect-stored text            message bytes after the Received: header
 *   !expect-header text            substring of the Received: header
 *   !expect-env key=value          mail_from, rcpt0.., params0.., mail_params, proto, tls, rcpt_count
 *   !expect-status ok|wait|close|starttls|blocked   last status of input
 *   !expect-discarded N            bytes left unread at SMTP_STARTTLS
 *   !expect-commits N / !expect-aborts N
 *   !expect-refused CODE sender=ADDR   the last refused() call of the session (sink hook)
 *   !expect-refusals N                 refused() calls so far
 * Always checked: replied() reports every reply the output holds, once, with
 * its class (final lines: "250 ...", not "250-...").
 *   !sink begin=-28 write=-5 commit=-28   make the next calls fail
 *   !sink mail=-28 | !sink mail=0   mail_ok() answers this from now on (after
 *                  the input so far is fed): a spool above its high watermark
 *   !expect-mail-asks N             mail_ok() calls so far
 *   !sink rcpt=N | !sink rcpt=wait   rcpt_ok() answers N (0, -2 unknown, -87
 *                  too many unknown, -16 rate, -110 verification timeout) or
 *                  -EINPROGRESS from now on; a local part starting "nobody"
 *                  is always -ENOENT (a table's unknown address)
 *   !rcpt N        the pending rcpt_ok() answer arrives (smtp_session_rcpt_done)
 *   !expect-rcpt-asked ADDR|DOMAIN  the last rcpt_ok() question
 *   !tls DESC | !timeout | !shutdown | !expect-idle 0|1
 *
 * Usage: transcript FILE...             normal run
 *        transcript --split FILE...     also every chunking (property test)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "smtp.h"

#define MAX_IN	  (1 << 20)
#define MAX_STORE (4 << 20)
#define MAX_OUT	  (1 << 20)

struct fake {
	/* what the sink saw */
	char store[MAX_STORE];
	size_t store_len;
	size_t header_len;
	int begins, commits, aborts;
	bool open;
	int fail_begin, fail_write, fail_commit;
	int mail_state; /* what mail_ok() answers (0 or -errno), until changed */
	int mail_asks;
	int rcpt_state; /* what rcpt_ok() answers, until changed */
	char rcpt_asked[600];
	int id_seq;
	char env_text[65536]; /* last envelope, "key=value\n" */
	bool commit_pending;
	int commit_ok_given;
	int queued_replies;
	uint64_t committed_hash; /* of every committed message's bytes */
	char refused[1024];	 /* last refused(): "CODE sender=ADDR" */
	int refusals;
	uint64_t replied[4]; /* replied() calls by class 2xx..5xx */
};

/*
 * The replies in bytes the session output, by class: a reply ends with its
 * final line ("250 ..." or "250\r\n"; "250-..." lines continue it). The
 * oracle for replied(): the same count, read back from the text.
 */
struct reply_scan {
	uint8_t col; /* bytes seen on the current line, saturating at 4 */
	uint8_t cls; /* first digit of the current line */
	bool final;  /* 4th byte was ' ' or CR */
	uint64_t count[4];
};

struct run {
	const char *file;
	int line;
	size_t chunk;  /* 0: whole pending buffer at once */
	unsigned seed; /* random chunk sizes when != 0 */
	long split_at; /* >= 0: split each feed into two at this offset */
	struct smtp_config cfg;
	const char *domains[8];
	char domain_buf[256];
	char hostname[64];
	struct fake fk;
	struct reply_scan rscan; /* of every output byte, since fk was reset */
	struct smtp_session *s;
	void *mem;
	uint8_t pending[MAX_IN];
	size_t pending_len;
	char out[MAX_OUT]; /* unread reply bytes */
	size_t out_len, out_pos;
	char all_out[MAX_OUT]; /* every reply byte, for the property test */
	size_t all_out_len;
	enum smtp_status last;
	bool waiting, closed, starttls;
	size_t discarded;
	int failures;
};

static void fail(struct run *r, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s:%d: ", r->file, r->line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	r->failures++;
}

static int fk_begin(void *ctx, char *id, size_t cap)
{
	struct fake *f = ctx;
	if (f->open || f->commit_pending) {
		fprintf(stderr, "sink: begin while open\n");
		abort();
	}
	if (f->fail_begin) {
		int e = f->fail_begin;
		f->fail_begin = 0;
		return e;
	}
	f->begins++;
	f->open = true;
	f->store_len = 0;
	f->header_len = 0;
	snprintf(id, cap, "Q%04d", ++f->id_seq);
	return 0;
}

static int fk_write(void *ctx, const void *buf, size_t len)
{
	struct fake *f = ctx;
	if (!f->open) {
		fprintf(stderr, "sink: write while not open\n");
		abort();
	}
	if (f->fail_write) {
		int e = f->fail_write;
		f->fail_write = 0;
		return e;
	}
	if (f->store_len + len > MAX_STORE)
		return -ENOSPC;
	memcpy(f->store + f->store_len, buf, len);
	if (f->header_len == 0)
		f->header_len = len;
	f->store_len += len;
	return 0;
}

static int fk_commit(void *ctx, const struct ds_envelope *env)
{
	struct fake *f = ctx;
	if (!f->open) {
		fprintf(stderr, "sink: commit while not open\n");
		abort();
	}
	f->open = false;
	for (size_t i = 0; i < f->store_len; i++)
		f->committed_hash = (f->committed_hash ^ (uint8_t)f->store[i]) * 1099511628211ull;
	if (env->body_size != f->store_len) {
		fprintf(stderr, "sink: body_size %llu != stored %zu\n", (unsigned long long)env->body_size,
			f->store_len);
		abort();
	}
	int n = snprintf(
		f->env_text, sizeof(f->env_text),
		"mail_from=%s\nmail_params=%s\nproto=%s\ntls=%s\nhelo=%s\nclient_addr=%s\nrcpt_count=%u\n",
		env->mail_from, env->mail_params, env->proto, env->tls, env->helo, env->client_addr,
		env->rcpt_count);
	for (uint32_t i = 0; i < env->rcpt_count && n < (int)sizeof(f->env_text) - 1024; i++)
		n += snprintf(f->env_text + n, sizeof(f->env_text) - (size_t)n, "rcpt%u=%s\nparams%u=%s\n", i,
			      env->rcpt[i].addr, i, env->rcpt[i].params);
	if (f->fail_commit) {
		int e = f->fail_commit;
		f->fail_commit = 0;
		return e;
	}
	f->commits++;
	f->commit_pending = true;
	return 0;
}

static void fk_abort(void *ctx)
{
	struct fake *f = ctx;
	if (!f->open) {
		fprintf(stderr, "sink: abort while not open\n");
		abort();
	}
	f->open = false;
	f->aborts++;
}

static int64_t fk_now(void *ctx)
{
	return 1795000000123456LL; /* Tue, 18 Nov 2026 */
}

static void fk_refused(void *ctx, unsigned code, const char *line, const char *helo, const char *mail_from)
{
	struct fake *f = ctx;
	if (code < 400 || code > 599 || (unsigned)(line[0] - '0') != code / 100 || !helo || !mail_from) {
		fprintf(stderr, "sink: bad refused(%u, \"%s\")\n", code, line);
		abort();
	}
	snprintf(f->refused, sizeof(f->refused), "%u sender=%s", code, mail_from);
	f->refusals++;
}

static void fk_replied(void *ctx, unsigned code)
{
	struct fake *f = ctx;
	if (code < 200 || code > 599) {
		fprintf(stderr, "sink: bad replied(%u)\n", code);
		abort();
	}
	f->replied[code / 100 - 2]++;
}

static int fk_mail_ok(void *ctx)
{
	struct fake *f = ctx;
	/* Asked only between transactions: nothing may be open or waiting for the spool. */
	if (f->open || f->commit_pending) {
		fprintf(stderr, "sink: mail_ok inside a transaction\n");
		abort();
	}
	f->mail_asks++;
	return f->mail_state;
}

static int fk_rcpt_ok(void *ctx, const char *mailbox, size_t len, const char *domain, size_t dlen)
{
	struct fake *f = ctx;
	if (strlen(mailbox) < len || (domain && (domain < mailbox || domain + dlen != mailbox + len))) {
		fprintf(stderr, "sink: rcpt_ok with a bad mailbox or domain\n");
		abort();
	}
	snprintf(f->rcpt_asked, sizeof(f->rcpt_asked), "%.*s|%.*s", (int)len, mailbox, (int)dlen,
		 domain ? domain : "");
	if (!strncmp(mailbox, "nobody", 6))
		return -ENOENT;
	return f->rcpt_state;
}

static const struct smtp_sink fake_sink = {fk_begin,   fk_write,   fk_commit,  fk_abort,  fk_now,
					   fk_refused, fk_replied, fk_mail_ok, fk_rcpt_ok};

static void reply_scan(struct reply_scan *st, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		uint8_t b = p[i];
		if (b == '\n') {
			if (st->final && st->cls >= '2' && st->cls <= '5')
				st->count[st->cls - '2']++;
			st->col = 0;
			st->final = false;
			continue;
		}
		if (st->col == 0)
			st->cls = b;
		else if (st->col == 3)
			st->final = b == ' ' || b == '\r';
		if (st->col < 4)
			st->col++;
	}
}

static void collect(struct run *r)
{
	size_t n;
	const uint8_t *o = smtp_session_output(r->s, &n);
	while (n > 0) {
		if (r->out_len + n > MAX_OUT || r->all_out_len + n > MAX_OUT) {
			fprintf(stderr, "output overflow\n");
			abort();
		}
		memcpy(r->out + r->out_len, o, n);
		memcpy(r->all_out + r->all_out_len, o, n);
		/* Invariant: a queued-as 250 only after commit_done(0). */
		for (size_t i = 0; i + 20 <= n; i++)
			if (!memcmp(o + i, "Ok: queued as", 13) && (i < 2 || o[i - 2] != '>'))
				r->fk.queued_replies++;
		reply_scan(&r->rscan, o, n);
		r->out_len += n;
		r->all_out_len += n;
		smtp_session_output_consumed(r->s, n);
		o = smtp_session_output(r->s, &n);
	}
	/* Every reply is queued whole: once the output is empty, each was reported. */
	if (memcmp(r->rscan.count, r->fk.replied, sizeof(r->fk.replied))) {
		fail(r,
		     "INVARIANT: replies in the output 2xx..5xx %llu/%llu/%llu/%llu, replied() "
		     "%llu/%llu/%llu/%llu",
		     (unsigned long long)r->rscan.count[0], (unsigned long long)r->rscan.count[1],
		     (unsigned long long)r->rscan.count[2], (unsigned long long)r->rscan.count[3],
		     (unsigned long long)r->fk.replied[0], (unsigned long long)r->fk.replied[1],
		     (unsigned long long)r->fk.replied[2], (unsigned long long)r->fk.replied[3]);
		abort();
	}
	if (r->fk.queued_replies > r->fk.commit_ok_given) {
		fail(r, "INVARIANT: %d queued replies but %d commit_done(0)", r->fk.queued_replies,
		     r->fk.commit_ok_given);
		abort();
	}
}

static size_t next_chunk(struct run *r, size_t avail, size_t fed_in_drive)
{
	if (r->split_at >= 0) {
		if (fed_in_drive < (size_t)r->split_at) {
			size_t c = (size_t)r->split_at - fed_in_drive;
			return c < avail ? c : avail;
		}
		return avail;
	}
	if (r->seed) {
		r->seed = r->seed * 1103515245u + 12345u;
		size_t c = 1 + (r->seed >> 16) % 37;
		return c < avail ? c : avail;
	}
	if (r->chunk)
		return r->chunk < avail ? r->chunk : avail;
	return avail;
}

static void drive(struct run *r)
{
	size_t pos = 0, fed = 0;
	int stuck = 0;

	collect(r);
	while (!r->closed && !r->waiting && !r->starttls && pos < r->pending_len) {
		size_t c = next_chunk(r, r->pending_len - pos, fed);
		size_t used = 0;
		enum smtp_status st = smtp_session_input(r->s, r->pending + pos, c, &used);
		if (used > c) {
			fail(r, "used %zu > len %zu", used, c);
			abort();
		}
		r->last = st;
		pos += used;
		fed += used;
		collect(r);
		switch (st) {
		case SMTP_OK:
			if (used != c)
				fail(r, "SMTP_OK but used %zu of %zu", used, c);
			break;
		case SMTP_WAIT_COMMIT:
		case SMTP_WAIT_RCPT:
			r->waiting = true;
			break;
		case SMTP_CLOSE:
			r->closed = true;
			break;
		case SMTP_STARTTLS:
			r->starttls = true;
			r->discarded = r->pending_len - pos;
			pos = r->pending_len;
			break;
		case SMTP_BLOCKED:
			if (used == 0 && ++stuck > 1000) {
				fail(r, "session stuck in SMTP_BLOCKED");
				abort();
			}
			break;
		}
	}
	memmove(r->pending, r->pending + pos, r->pending_len - pos);
	r->pending_len -= pos;
}

static size_t unescape(const char *in, uint8_t *out, size_t cap, bool *raw)
{
	size_t n = 0;

	*raw = false;
	for (const char *p = in; *p && n < cap; p++) {
		if (*p != '\\' || !p[1]) {
			out[n++] = (uint8_t)*p;
			continue;
		}
		p++;
		switch (*p) {
		case 'r':
			out[n++] = '\r';
			*raw = true;
			break;
		case 'n':
			out[n++] = '\n';
			*raw = true;
			break;
		case 't':
			out[n++] = '\t';
			break;
		case 'x': {
			unsigned v = 0;
			sscanf(p + 1, "%2x", &v);
			out[n++] = (uint8_t)v;
			p += 2;
			break;
		}
		default:
			out[n++] = (uint8_t)*p;
		}
	}
	return n;
}

static void session_start(struct run *r)
{
	if (r->s) {
		smtp_session_fini(r->s);
		free(r->mem);
	}
	r->mem = malloc(smtp_session_size(&r->cfg));
	struct smtp_peer peer = {"192.0.2.7", 40000};
	memset(&r->fk, 0, sizeof(r->fk));
	memset(&r->rscan, 0, sizeof(r->rscan));
	r->s = smtp_session_init(r->mem, &r->cfg, &fake_sink, &r->fk, &peer);
	r->out_len = r->out_pos = r->all_out_len = 0;
	r->pending_len = 0;
	r->waiting = r->closed = r->starttls = false;
}

static void apply_config(struct run *r, char *args)
{
	char *save1 = NULL, *save2 = NULL;

	for (char *tok = strtok_r(args, " ", &save1); tok; tok = strtok_r(NULL, " ", &save1)) {
		char *eq = strchr(tok, '=');
		if (!eq) {
			fail(r, "bad !config token %s", tok);
			continue;
		}
		*eq = '\0';
		const char *v = eq + 1;
		unsigned long long u = strtoull(v, NULL, 0);
		if (!strcmp(tok, "lmtp"))
			r->cfg.lmtp = u;
		else if (!strcmp(tok, "tls"))
			r->cfg.tls_available = u;
		else if (!strcmp(tok, "max_recipients"))
			r->cfg.max_recipients = (uint32_t)u;
		else if (!strcmp(tok, "max_cmd_line"))
			r->cfg.max_cmd_line = (uint32_t)u;
		else if (!strcmp(tok, "max_text_line"))
			r->cfg.max_text_line = (uint32_t)u;
		else if (!strcmp(tok, "max_errors"))
			r->cfg.max_errors = (uint32_t)u;
		else if (!strcmp(tok, "max_message_size"))
			r->cfg.max_message_size = u;
		else if (!strcmp(tok, "hostname"))
			snprintf(r->hostname, sizeof(r->hostname), "%s", v);
		else if (!strcmp(tok, "domains")) {
			snprintf(r->domain_buf, sizeof(r->domain_buf), "%s", v);
			r->cfg.accept_domain_count = 0;
			for (char *d = strtok_r(r->domain_buf, ",", &save2);
			     d && r->cfg.accept_domain_count < 8; d = strtok_r(NULL, ",", &save2))
				r->domains[r->cfg.accept_domain_count++] = d;
		} else
			fail(r, "unknown !config key %s", tok);
	}
	session_start(r);
}

static bool next_reply_line(struct run *r, char *line, size_t cap)
{
	char *start = r->out + r->out_pos;
	char *end = memmem(start, r->out_len - r->out_pos, "\r\n", 2);
	if (!end)
		return false;
	size_t n = (size_t)(end - start);
	if (n >= cap)
		n = cap - 1;
	memcpy(line, start, n);
	line[n] = '\0';
	r->out_pos = (size_t)(end - r->out) + 2;
	return true;
}

static int status_of(const char *s)
{
	static const char *names[] = {"ok", "wait", "blocked", "starttls", "close", "wait-rcpt"};
	for (int i = 0; i < 6; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

/* Runs one file; returns failures. Fills *out_hash for the property test. */
static int run_file(struct run *r, const char *file)
{
	FILE *fp = fopen(file, "r");
	char buf[70000];

	if (!fp) {
		perror(file);
		return 1;
	}
	r->file = file;
	r->line = 0;
	r->failures = 0;
	smtp_config_defaults(&r->cfg);
	snprintf(r->hostname, sizeof(r->hostname), "mx.test");
	r->cfg.hostname = r->hostname;
	r->domains[0] = "example.com";
	r->domains[1] = ".example.net";
	r->cfg.accept_domains = r->domains;
	r->cfg.accept_domain_count = 2;
	r->s = NULL;
	session_start(r);
	while (fgets(buf, sizeof(buf), fp)) {
		r->line++;
		size_t l = strlen(buf);
		while (l && (buf[l - 1] == '\n' || buf[l - 1] == '\r'))
			buf[--l] = '\0';
		if (l == 0 || buf[0] == '#')
			continue;
		if (!strncmp(buf, "C:", 2) || !strncmp(buf, "R:", 2)) {
			const char *t = buf[2] == ' ' ? buf + 3 : buf + 2;
			bool raw;
			size_t n =
				unescape(t, r->pending + r->pending_len, MAX_IN - r->pending_len - 2, &raw);
			r->pending_len += n;
			if (!raw && buf[0] == 'C') {
				r->pending[r->pending_len++] = '\r';
				r->pending[r->pending_len++] = '\n';
			}
		} else if (!strncmp(buf, "S:", 2)) {
			const char *want = buf[2] == ' ' ? buf + 3 : buf + 2;
			char got[4096];
			drive(r);
			if (!next_reply_line(r, got, sizeof(got))) {
				fail(r, "expected \"%s\", got no reply", want);
				break;
			}
			size_t wl = strlen(want);
			bool ok = (wl && want[wl - 1] == '*') ? !strncmp(got, want, wl - 1)
							      : !strcmp(got, want);
			if (!ok) {
				fail(r, "expected \"%s\"\n   got      \"%s\"", want, got);
				break;
			}
		} else if (!strncmp(buf, "!config ", 8)) {
			apply_config(r, buf + 8);
		} else if (!strncmp(buf, "!commit ", 8)) {
			drive(r);
			if (!r->waiting) {
				fail(r, "!commit but the session is not waiting for a commit");
				break;
			}
			int res = strcmp(buf + 8, "ok") ? atoi(buf + 8) : 0;
			if (res == 0)
				r->fk.commit_ok_given++;
			r->fk.commit_pending = false;
			r->waiting = false;
			r->last = smtp_session_commit_done(r->s, res);
			collect(r);
		} else if (!strncmp(buf, "!rcpt ", 6)) {
			drive(r);
			if (!r->waiting || r->last != SMTP_WAIT_RCPT) {
				fail(r, "!rcpt but the session is not waiting for a rcpt_ok() answer");
				break;
			}
			r->waiting = false;
			r->last = smtp_session_rcpt_done(r->s, atoi(buf + 6));
			if (r->last == SMTP_CLOSE)
				r->closed = true;
			collect(r);
		} else if (!strncmp(buf, "!expect-rcpt-asked ", 19)) {
			drive(r);
			if (strcmp(r->fk.rcpt_asked, buf + 19))
				fail(r, "rcpt_ok() last asked \"%s\", expected \"%s\"", r->fk.rcpt_asked, buf + 19);
		} else if (!strncmp(buf, "!expect-stored ", 15) || !strcmp(buf, "!expect-stored")) {
			static uint8_t want[MAX_IN];
			bool raw;
			drive(r);
			size_t n = unescape(buf + DS_MIN(l, 15), want, sizeof(want), &raw);
			size_t have = r->fk.store_len - r->fk.header_len;
			if (have != n || memcmp(r->fk.store + r->fk.header_len, want, n))
				fail(r, "stored %zu bytes \"%.*s\", expected %zu", have,
				     (int)DS_MIN(have, 200), r->fk.store + r->fk.header_len, n);
		} else if (!strncmp(buf, "!expect-header ", 15)) {
			static uint8_t pat[MAX_IN];
			bool raw;
			drive(r);
			size_t pn = unescape(buf + 15, pat, sizeof(pat), &raw);
			if (!memmem(r->fk.store, r->fk.header_len, pat, pn))
				fail(r, "header \"%.*s\" lacks \"%s\"", (int)r->fk.header_len, r->fk.store,
				     buf + 15);
		} else if (!strncmp(buf, "!expect-env ", 12)) {
			static char want[70100];
			drive(r);
			bool raw;
			want[0] = '\n';
			size_t wn = unescape(buf + 12, (uint8_t *)want + 1, sizeof(want) - 3, &raw);
			want[wn + 1] = '\n';
			want[wn + 2] = '\0';
			static char hay[65600];
			snprintf(hay, sizeof(hay), "\n%s", r->fk.env_text);
			if (!strstr(hay, want))
				fail(r, "envelope lacks \"%s\":\n%s", buf + 12, r->fk.env_text);
		} else if (!strncmp(buf, "!expect-status ", 15)) {
			drive(r);
			if ((int)r->last != status_of(buf + 15))
				fail(r, "status %d, expected %s", (int)r->last, buf + 15);
		} else if (!strncmp(buf, "!expect-discarded ", 18)) {
			drive(r);
			if (r->discarded != (size_t)atol(buf + 18))
				fail(r, "discarded %zu, expected %s", r->discarded, buf + 18);
		} else if (!strncmp(buf, "!expect-commits ", 16)) {
			drive(r);
			if (r->fk.commits != atoi(buf + 16))
				fail(r, "commits %d, expected %s", r->fk.commits, buf + 16);
		} else if (!strncmp(buf, "!expect-aborts ", 15)) {
			drive(r);
			if (r->fk.aborts != atoi(buf + 15))
				fail(r, "aborts %d, expected %s", r->fk.aborts, buf + 15);
		} else if (!strncmp(buf, "!expect-refused ", 16)) {
			drive(r);
			if (strcmp(r->fk.refused, buf + 16))
				fail(r, "last refusal \"%s\", expected \"%s\"", r->fk.refused, buf + 16);
		} else if (!strncmp(buf, "!expect-refusals ", 17)) {
			drive(r);
			if (r->fk.refusals != atoi(buf + 17))
				fail(r, "refusals %d, expected %s", r->fk.refusals, buf + 17);
		} else if (!strncmp(buf, "!expect-idle ", 13)) {
			drive(r);
			if (smtp_session_idle(r->s) != (bool)atoi(buf + 13))
				fail(r, "idle is %d", smtp_session_idle(r->s));
		} else if (!strncmp(buf, "!expect-mail-asks ", 18)) {
			drive(r);
			if (r->fk.mail_asks != atoi(buf + 18))
				fail(r, "mail_ok() asked %d times, expected %s", r->fk.mail_asks, buf + 18);
		} else if (!strncmp(buf, "!sink ", 6)) {
			char *p;
			if ((p = strstr(buf, "mail="))) {
				drive(r); /* the commands sent so far were asked under the old state */
				r->fk.mail_state = atoi(p + 5);
			}
			if ((p = strstr(buf, "rcpt="))) {
				drive(r);
				r->fk.rcpt_state = !strcmp(p + 5, "wait") ? -EINPROGRESS : atoi(p + 5);
			}
			if ((p = strstr(buf, "begin=")))
				r->fk.fail_begin = atoi(p + 6);
			if ((p = strstr(buf, "write=")))
				r->fk.fail_write = atoi(p + 6);
			if ((p = strstr(buf, "commit=")))
				r->fk.fail_commit = atoi(p + 7);
		} else if (!strncmp(buf, "!tls ", 5)) {
			drive(r);
			if (!r->starttls) {
				fail(r, "!tls but no SMTP_STARTTLS");
				break;
			}
			r->starttls = false;
			smtp_session_tls_started(r->s, buf + 5);
		} else if (!strcmp(buf, "!timeout")) {
			drive(r);
			r->last = smtp_session_timeout(r->s);
			r->closed = true;
			collect(r);
		} else if (!strcmp(buf, "!shutdown")) {
			drive(r);
			smtp_session_shutdown(r->s);
		} else {
			fail(r, "unknown line: %s", buf);
		}
		if (r->failures)
			break;
	}
	fclose(fp);
	if (!r->failures) {
		char got[4096];
		drive(r);
		while (next_reply_line(r, got, sizeof(got)))
			fail(r, "unexpected reply at end: \"%s\"", got);
	}
	smtp_session_fini(r->s);
	if (r->fk.open)
		fail(r, "sink left open after fini");
	free(r->mem);
	r->s = NULL;
	return r->failures;
}

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

static uint64_t run_hash(struct run *r)
{
	uint64_t h = fnv(r->all_out, r->all_out_len, 14695981039346656037ull);
	return fnv(&r->fk.committed_hash, sizeof(r->fk.committed_hash), h);
}

int main(int argc, char **argv)
{
	static struct run r;
	bool split = false;
	int fails = 0, runs = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--split")) {
			split = true;
			continue;
		}
		r.chunk = 0;
		r.seed = 0;
		r.split_at = -1;
		int f = run_file(&r, argv[i]);
		fails += f;
		runs++;
		if (!split || f)
			continue;
		uint64_t base = run_hash(&r);
		size_t total = r.all_out_len; /* bound for split positions: input size is similar */
		(void)total;
		/* Fixed chunk sizes, random chunkings, and a two-way split at every offset. */
		for (int mode = 0; mode < 16 + 40 + 600 && !fails; mode++) {
			r.chunk = 0;
			r.seed = 0;
			r.split_at = -1;
			if (mode < 16)
				r.chunk = (size_t)mode + 1;
			else if (mode < 56)
				r.seed = (unsigned)mode * 7919u;
			else
				r.split_at = mode - 56;
			int ff = run_file(&r, argv[i]);
			runs++;
			if (ff || run_hash(&r) != base) {
				fprintf(stderr,
					"%s: chunking mode %d (chunk %zu seed %u split %ld) differs\n",
					argv[i], mode, r.chunk, r.seed, r.split_at);
				fails++;
			}
		}
	}
	printf("%d runs, %d failures\n", runs, fails);
	return fails ? 1 : 0;
}
