/* SPDX-License-Identifier: MIT */
/*
 * Transcript runner for deliver/: drives one dlv_client against a scripted
 * next hop.
 *
 *   # comment
 *   !config lmtp=1 pipelining=0 dsn=0 prdr=0 8bitmime=0 smtputf8=0 size=0
 *           starttls=never|opportunistic|required max_reply_line=N
 *           max_reply_lines=N max_rcpts=N out_cap=N helo=NAME read_max=N
 *           connect=manual           (restarts the client; default: connected at once)
 *   !msg from=ADDR body=7bit|8bitmime|binarymime smtputf8=1 ret=HDRS envid=X
 *                  (a new message; from=<> or from= for the null sender)
 *   !rcpt ADDR notify=VALUE orcpt=VALUE
 *   !body TEXT     body bytes (escapes \r \n \t \\ \xHH); CRLF appended unless
 *                  the text contains a \r or \n escape
 *   !body-gen N    N generated lines, some starting with '.'
 *   !submit [RES]  dlv_client_submit() of the last message; RES (default 0)
 *   S: TEXT        bytes the server sends (escapes; CRLF appended as for !body)
 *   C: TEXT        the next line the client sends, exact; a trailing '*' makes it a prefix
 *   O: TEXT        the next recipient outcome: IDX CLASS STAGE CODE ESC|- FLAGS|- TEXT
 *                  (FLAGS: local, dup, local,dup; '*' as for C:)
 *   M: done        the next event is msg_done
 *   !expect-body   the client's next lines up to "." are the message body, dot-stuffed
 *   !connected | !eof [ERR] | !timeout | !tls ok|ERR | !quit [RES] | !body-ready
 *   !read eagain=N fail=ERR    the body reader's next calls: -EAGAIN N times / fail once
 *   !hold 1|0      stop/resume consuming the client's output
 *   !expect-status ok|starttls|close   !expect-timeout KIND   !expect-idle 0|1
 *   !expect-closed 0|1   !expect-discarded N   !expect-error OUTCOME|none
 *   !expect-ext NAME,NAME   !expect-tls 0|1
 *
 * Usage: transcript FILE...            normal run
 *        transcript --split FILE...    also every input chunking and output drain size
 *                                      must give the same bytes and events (property)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "dlv_client.h"

#define MAX_IN	   (1 << 20)
#define MAX_OUT	   (4 << 20)
#define MAX_BODY   (2 << 20)
#define MAX_EVENTS 4096
#define MAX_MSGS   32
#define MAX_RCPTS  64
#define EV_LEN	   600

struct tmsg {
	struct dlv_msg m;
	struct dlv_rcpt rcpt[MAX_RCPTS];
	char from[600], ret[16], envid[200];
	char addr[MAX_RCPTS][600], notify[MAX_RCPTS][64], orcpt[MAX_RCPTS][600];
	uint8_t *body; /* MAX_BODY octets, allocated by !msg */
	size_t body_len;
	bool done, submitted;
	uint64_t outcomes;
	struct run *r;
};

struct run {
	const char *file;
	int line;
	/* variation */
	size_t in_chunk;  /* 0: whole pending input at once */
	size_t out_chunk; /* 0: drain all output at once */
	unsigned seed;
	/* client */
	struct dlv_client_config cfg;
	char helo[256];
	bool manual_connect;
	size_t read_max;
	struct dlv_client *c;
	void *mem;
	/* messages */
	struct tmsg msgs[MAX_MSGS];
	int n_msgs;
	int read_eagain;
	int read_fail;
	/* bytes */
	uint8_t pending[MAX_IN];
	size_t pending_len;
	char out[MAX_OUT]; /* output not yet checked */
	size_t out_len, out_pos;
	uint64_t out_hash;
	bool hold, closed, starttls;
	enum dlv_status last;
	size_t discarded;
	/* events */
	char ev[MAX_EVENTS][EV_LEN];
	int n_ev, ev_pos;
	uint64_t ev_hash;
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

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

static void outcome_line(char *buf, size_t cap, const struct dlv_outcome *o)
{
	const char *flags = o->local ? (o->possible_duplicate ? "local,dup" : "local")
				     : (o->possible_duplicate ? "dup" : "-");
	snprintf(buf, cap, "%s %s %u %s %s %s", dlv_class_name(o->cls), dlv_stage_name(o->stage), o->code,
		 o->esc[0] ? o->esc : "-", flags, o->text);
}

static void add_event(struct run *r, const char *s)
{
	if (r->n_ev >= MAX_EVENTS) {
		fprintf(stderr, "too many events\n");
		abort();
	}
	snprintf(r->ev[r->n_ev++], EV_LEN, "%s", s);
	r->ev_hash = fnv(s, strlen(s) + 1, r->ev_hash);
}

static void cb_rcpt(void *ctx, const struct dlv_msg *m, uint32_t idx, const struct dlv_outcome *o)
{
	struct run *r = ctx;
	struct tmsg *t = (struct tmsg *)(void *)m;
	char line[EV_LEN], oc[EV_LEN - 16];

	if (t->done || idx >= m->rcpt_count || (t->outcomes & (1ull << idx))) {
		fprintf(stderr, "%s: bad rcpt_done (done %d idx %u)\n", r->file, t->done, idx);
		abort();
	}
	t->outcomes |= 1ull << idx;
	outcome_line(oc, sizeof(oc), o);
	snprintf(line, sizeof(line), "O: %u %s", idx, oc);
	add_event(r, line);
}

static void cb_done(void *ctx, const struct dlv_msg *m)
{
	struct run *r = ctx;
	struct tmsg *t = (struct tmsg *)(void *)m;

	if (t->done || t->outcomes != (m->rcpt_count >= 64 ? ~0ull : (1ull << m->rcpt_count) - 1)) {
		fprintf(stderr, "%s: msg_done without every outcome\n", r->file);
		abort();
	}
	t->done = true;
	add_event(r, "M: done");
}

static const struct dlv_client_ops ops = {cb_rcpt, cb_done};

static int body_read(void *ctx, uint64_t off, void *buf, size_t cap)
{
	struct tmsg *t = ctx;
	struct run *r = t->r;

	if (r->read_eagain > 0) {
		r->read_eagain--;
		return -EAGAIN;
	}
	if (r->read_fail) {
		int e = r->read_fail;
		r->read_fail = 0;
		return e;
	}
	if (off > t->body_len) {
		fprintf(stderr, "read past the end\n");
		abort();
	}
	size_t n = DS_MIN(cap, t->body_len - off);
	if (r->read_max)
		n = DS_MIN(n, r->read_max);
	memcpy(buf, t->body + off, n);
	return (int)n;
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

/* ---- driving ---- */

static void note_status(struct run *r, enum dlv_status st)
{
	r->last = st;
	if (st == DLV_CLOSE)
		r->closed = true;
	if (st == DLV_STARTTLS)
		r->starttls = true;
}

static bool collect(struct run *r)
{
	bool progress = false;
	size_t n;

	while (!r->hold) {
		const uint8_t *o = dlv_client_output(r->c, &n);
		if (n == 0)
			break;
		if (r->out_chunk && n > r->out_chunk)
			n = r->out_chunk;
		if (r->out_len + n > MAX_OUT) {
			fprintf(stderr, "output overflow\n");
			abort();
		}
		memcpy(r->out + r->out_len, o, n);
		r->out_len += n;
		r->out_hash = fnv(o, n, r->out_hash);
		enum dlv_status st = dlv_client_output_consumed(r->c, n);
		if (st != DLV_OK)
			note_status(r, st);
		progress = true;
	}
	return progress;
}

static size_t next_chunk(struct run *r, size_t avail)
{
	if (r->seed) {
		r->seed = r->seed * 1103515245u + 12345u;
		size_t c = 1 + (r->seed >> 16) % 23;
		return DS_MIN(c, avail);
	}
	if (r->in_chunk)
		return DS_MIN(r->in_chunk, avail);
	return avail;
}

static void drive(struct run *r)
{
	size_t pos = 0;

	for (;;) {
		bool progress = collect(r);
		if (!r->closed && !r->starttls && pos < r->pending_len) {
			size_t c = next_chunk(r, r->pending_len - pos);
			size_t used = 0;
			enum dlv_status st = dlv_client_input(r->c, r->pending + pos, c, &used);
			if (used > c || (st == DLV_OK && used != c)) {
				fail(r, "input used %zu of %zu, status %d", used, c, st);
				abort();
			}
			pos += used;
			note_status(r, st);
			if (st == DLV_STARTTLS) {
				r->discarded = r->pending_len - pos;
				pos = r->pending_len;
			}
			progress = true;
		}
		if (!progress)
			break;
	}
	memmove(r->pending, r->pending + pos, r->pending_len - pos);
	r->pending_len -= pos;
}

static bool next_out_line(struct run *r, char *line, size_t cap)
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

static bool match(const char *want, const char *got)
{
	size_t wl = strlen(want);
	return (wl && want[wl - 1] == '*') ? !strncmp(got, want, wl - 1) : !strcmp(got, want);
}

/* ---- set-up ---- */

static void client_start(struct run *r)
{
	if (r->c) {
		dlv_client_fini(r->c);
		free(r->mem);
	}
	const char *why;
	if (dlv_client_config_check(&r->cfg, &why)) {
		fail(r, "config: %s", why);
		dlv_client_config_defaults(&r->cfg);
	}
	r->mem = malloc(dlv_client_size(&r->cfg));
	r->c = dlv_client_init(r->mem, &r->cfg, &ops, r);
	if (!r->manual_connect)
		dlv_client_connected(r->c);
	r->pending_len = 0;
	r->closed = r->starttls = r->hold = false;
	r->last = DLV_OK;
}

static void apply_config(struct run *r, char *args)
{
	char *save = NULL;

	for (char *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
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
		else if (!strcmp(tok, "pipelining"))
			r->cfg.use_pipelining = u;
		else if (!strcmp(tok, "dsn"))
			r->cfg.use_dsn = u;
		else if (!strcmp(tok, "prdr"))
			r->cfg.use_prdr = u;
		else if (!strcmp(tok, "8bitmime"))
			r->cfg.use_8bitmime = u;
		else if (!strcmp(tok, "smtputf8"))
			r->cfg.use_smtputf8 = u;
		else if (!strcmp(tok, "size"))
			r->cfg.use_size = u;
		else if (!strcmp(tok, "starttls"))
			r->cfg.starttls = !strcmp(v, "required")	? DLV_STARTTLS_REQUIRED
					  : !strcmp(v, "opportunistic") ? DLV_STARTTLS_OPPORTUNISTIC
									: DLV_STARTTLS_NEVER;
		else if (!strcmp(tok, "max_reply_line"))
			r->cfg.max_reply_line = (uint32_t)u;
		else if (!strcmp(tok, "max_reply_lines"))
			r->cfg.max_reply_lines = (uint32_t)u;
		else if (!strcmp(tok, "max_rcpts"))
			r->cfg.max_rcpts = (uint32_t)u;
		else if (!strcmp(tok, "out_cap"))
			r->cfg.out_cap = (uint32_t)u;
		else if (!strcmp(tok, "read_max"))
			r->read_max = (size_t)u;
		else if (!strcmp(tok, "helo"))
			snprintf(r->helo, sizeof(r->helo), "%s", v);
		else if (!strcmp(tok, "connect"))
			r->manual_connect = !strcmp(v, "manual");
		else
			fail(r, "unknown !config key %s", tok);
	}
	client_start(r);
}

static struct tmsg *cur_msg(struct run *r)
{
	if (r->n_msgs == 0) {
		fail(r, "no !msg yet");
		return NULL;
	}
	return &r->msgs[r->n_msgs - 1];
}

static void new_msg(struct run *r, char *args)
{
	char *save = NULL;

	if (r->n_msgs >= MAX_MSGS) {
		fail(r, "too many messages");
		return;
	}
	struct tmsg *t = &r->msgs[r->n_msgs++];
	memset(t, 0, sizeof(*t));
	t->body = malloc(MAX_BODY);
	DS_ASSERT(t->body);
	t->r = r;
	t->m.mail_from = t->from;
	t->m.rcpt = t->rcpt;
	t->m.read = body_read;
	t->m.read_ctx = t;
	for (char *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq) {
			fail(r, "bad !msg token %s", tok);
			continue;
		}
		*eq = '\0';
		const char *v = eq + 1;
		if (!strcmp(tok, "from")) {
			bool raw;
			size_t n = unescape(strcmp(v, "<>") ? v : "", (uint8_t *)t->from, sizeof(t->from) - 1,
					    &raw);
			t->from[n] = '\0';
		} else if (!strcmp(tok, "envid")) {
			bool raw;
			size_t n = unescape(v, (uint8_t *)t->envid, sizeof(t->envid) - 1, &raw);
			t->envid[n] = '\0';
			t->m.envid = t->envid;
		} else if (!strcmp(tok, "body"))
			t->m.body = !strcmp(v, "8bitmime")     ? DLV_BODY_8BITMIME
				    : !strcmp(v, "binarymime") ? DLV_BODY_BINARYMIME
							       : DLV_BODY_7BIT;
		else if (!strcmp(tok, "smtputf8"))
			t->m.smtputf8 = atoi(v);
		else if (!strcmp(tok, "ret"))
			t->m.ret = strcpy(t->ret, v);
		else
			fail(r, "unknown !msg key %s", tok);
	}
}

static void add_rcpt(struct run *r, char *args)
{
	struct tmsg *t = cur_msg(r);
	char *save = NULL;

	if (!t)
		return;
	if (t->m.rcpt_count >= MAX_RCPTS) {
		fail(r, "too many recipients");
		return;
	}
	uint32_t i = t->m.rcpt_count++;
	bool raw;
	for (char *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (!strncmp(tok, "notify=", 7))
			t->rcpt[i].notify = strcpy(t->notify[i], tok + 7);
		else if (!strncmp(tok, "orcpt=", 6))
			t->rcpt[i].orcpt = strcpy(t->orcpt[i], tok + 6);
		else {
			size_t n = unescape(tok, (uint8_t *)t->addr[i], sizeof(t->addr[i]) - 1, &raw);
			t->addr[i][n] = '\0';
			t->rcpt[i].addr = t->addr[i];
		}
	}
}

static void body_add(struct run *r, const uint8_t *p, size_t n)
{
	struct tmsg *t = cur_msg(r);
	if (!t)
		return;
	if (t->body_len + n > MAX_BODY) {
		fail(r, "body too big");
		return;
	}
	memcpy(t->body + t->body_len, p, n);
	t->body_len += n;
	t->m.body_size = t->body_len;
}

/* Compare the client's next lines up to "." with the current message's body. */
static void expect_body(struct run *r)
{
	struct tmsg *t = cur_msg(r);
	static char got[MAX_BODY + 4], line[65536];
	size_t gl = 0;
	bool end = false;

	if (!t)
		return;
	while (next_out_line(r, line, sizeof(line))) {
		if (!strcmp(line, ".")) {
			end = true;
			break;
		}
		const char *l = line[0] == '.' ? line + 1 : line;
		size_t n = strlen(l);
		if (gl + n + 2 > sizeof(got)) {
			fail(r, "body too long");
			return;
		}
		memcpy(got + gl, l, n);
		gl += n;
		got[gl++] = '\r';
		got[gl++] = '\n';
	}
	if (!end) {
		fail(r, "no final dot in the client's output");
		return;
	}
	size_t want = t->body_len;
	bool add_crlf = want > 0 && (want < 2 || memcmp(t->body + want - 2, "\r\n", 2));
	if (gl != want + (add_crlf ? 2 : 0) || memcmp(got, t->body, want) ||
	    (add_crlf && memcmp(got + want, "\r\n", 2)))
		fail(r, "body sent (%zu octets) differs from the stored one (%zu octets)", gl, want);
}

static const char *ext_names(uint32_t ext, char *buf, size_t cap)
{
	static const char *names[] = {"PIPELINING", "SIZE",	 "8BITMIME", "SMTPUTF8",
				      "DSN",	    "PRDR",	 "STARTTLS", "ENHANCEDSTATUSCODES",
				      "CHUNKING",   "BINARYMIME"};
	size_t n = 0;
	buf[0] = '\0';
	for (unsigned i = 0; i < DS_ARRAY_SIZE(names); i++)
		if (ext & (1u << i))
			n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? "," : "", names[i]);
	return buf;
}

static int status_of(const char *s)
{
	if (!strcmp(s, "ok"))
		return DLV_OK;
	if (!strcmp(s, "starttls"))
		return DLV_STARTTLS;
	if (!strcmp(s, "close"))
		return DLV_CLOSE;
	return -1;
}

static int run_file(struct run *r, const char *file)
{
	static char buf[70000];
	FILE *fp = fopen(file, "r");

	if (!fp) {
		perror(file);
		return 1;
	}
	r->file = file;
	r->line = 0;
	r->failures = 0;
	r->n_msgs = 0;
	r->n_ev = r->ev_pos = 0;
	r->out_len = r->out_pos = 0;
	r->out_hash = r->ev_hash = 14695981039346656037ull;
	r->read_eagain = r->read_fail = 0;
	r->read_max = 0;
	r->manual_connect = false;
	r->discarded = 0;
	dlv_client_config_defaults(&r->cfg);
	snprintf(r->helo, sizeof(r->helo), "relay.test");
	r->cfg.helo_name = r->helo;
	r->c = NULL;
	client_start(r);
	while (fgets(buf, sizeof(buf), fp)) {
		r->line++;
		size_t l = strlen(buf);
		while (l && (buf[l - 1] == '\n' || buf[l - 1] == '\r'))
			buf[--l] = '\0';
		if (l == 0 || buf[0] == '#')
			continue;
		const char *arg = strchr(buf, ' ') ? strchr(buf, ' ') + 1 : "";
		bool raw;
		if (!strncmp(buf, "S:", 2)) {
			const char *t = buf[2] == ' ' ? buf + 3 : buf + 2;
			size_t n =
				unescape(t, r->pending + r->pending_len, MAX_IN - r->pending_len - 2, &raw);
			r->pending_len += n;
			if (!raw) {
				r->pending[r->pending_len++] = '\r';
				r->pending[r->pending_len++] = '\n';
			}
		} else if (!strncmp(buf, "C:", 2)) {
			static char got[65536], want[65536];
			size_t wn = unescape(buf[2] == ' ' ? buf + 3 : buf + 2, (uint8_t *)want,
					     sizeof(want) - 1, &raw);
			want[wn] = '\0';
			drive(r);
			if (!next_out_line(r, got, sizeof(got))) {
				fail(r, "expected the client to send \"%s\", it sent nothing", want);
				break;
			}
			if (!match(want, got)) {
				fail(r, "expected client \"%s\"\n   got             \"%s\"", want, got);
				break;
			}
		} else if (!strncmp(buf, "O:", 2) || !strncmp(buf, "M:", 2)) {
			drive(r);
			if (r->ev_pos >= r->n_ev) {
				fail(r, "expected event \"%s\", got none", buf);
				break;
			}
			const char *got = r->ev[r->ev_pos++];
			if (!match(buf, got)) {
				fail(r, "expected event \"%s\"\n   got            \"%s\"", buf, got);
				break;
			}
		} else if (!strncmp(buf, "!config ", 8)) {
			apply_config(r, buf + 8);
		} else if (!strncmp(buf, "!msg", 4)) {
			new_msg(r, buf + 4);
		} else if (!strncmp(buf, "!rcpt ", 6)) {
			add_rcpt(r, buf + 6);
		} else if (!strncmp(buf, "!body ", 6) || !strcmp(buf, "!body")) {
			static uint8_t tmp[MAX_IN];
			size_t n = unescape(buf + DS_MIN(l, 6), tmp, sizeof(tmp) - 2, &raw);
			if (!raw) {
				tmp[n++] = '\r';
				tmp[n++] = '\n';
			}
			body_add(r, tmp, n);
		} else if (!strncmp(buf, "!body-gen ", 10)) {
			long lines = atol(buf + 10);
			char tmp[128];
			for (long i = 0; i < lines; i++) {
				int n = snprintf(tmp, sizeof(tmp), "%sline %06ld of the generated body%s\r\n",
						 i % 7 == 3 ? "." : "", i, i % 5 == 0 ? " ........" : "");
				body_add(r, (uint8_t *)tmp, (size_t)n);
			}
		} else if (!strncmp(buf, "!submit", 7)) {
			struct tmsg *t = cur_msg(r);
			drive(r);
			int want = l > 8 ? atoi(buf + 8) : 0;
			int got = t ? dlv_client_submit(r->c, &t->m) : 0;
			if (t && got != want)
				fail(r, "submit returned %d, expected %d", got, want);
			if (t && got == 0)
				t->submitted = true;
		} else if (!strcmp(buf, "!expect-body")) {
			drive(r);
			expect_body(r);
		} else if (!strcmp(buf, "!connected")) {
			dlv_client_connected(r->c);
		} else if (!strncmp(buf, "!eof", 4)) {
			drive(r);
			note_status(r, dlv_client_eof(r->c, l > 5 ? atoi(buf + 5) : 0));
		} else if (!strcmp(buf, "!timeout")) {
			drive(r);
			note_status(r, dlv_client_timeout(r->c));
		} else if (!strncmp(buf, "!tls ", 5)) {
			drive(r);
			if (!r->starttls) {
				fail(r, "!tls but no DLV_STARTTLS");
				break;
			}
			r->starttls = false;
			note_status(r, dlv_client_tls_done(r->c, strcmp(arg, "ok") ? atoi(arg) : 0));
		} else if (!strncmp(buf, "!quit", 5)) {
			drive(r);
			int want = l > 6 ? atoi(buf + 6) : 0;
			int got = dlv_client_quit(r->c);
			if (got != want)
				fail(r, "quit returned %d, expected %d", got, want);
		} else if (!strcmp(buf, "!body-ready")) {
			drive(r);
			note_status(r, dlv_client_body_ready(r->c));
		} else if (!strncmp(buf, "!read ", 6)) {
			const char *p;
			if ((p = strstr(buf, "eagain=")))
				r->read_eagain = atoi(p + 7);
			if ((p = strstr(buf, "fail=")))
				r->read_fail = atoi(p + 5);
		} else if (!strncmp(buf, "!hold ", 6)) {
			drive(r);
			r->hold = atoi(arg);
		} else if (!strncmp(buf, "!expect-status ", 15)) {
			drive(r);
			if ((int)r->last != status_of(arg))
				fail(r, "status %d, expected %s", r->last, arg);
		} else if (!strncmp(buf, "!expect-timeout ", 16)) {
			drive(r);
			const char *k = dlv_timeout_name(dlv_client_timeout_kind(r->c));
			if (strcmp(k, arg))
				fail(r, "timeout kind %s, expected %s", k, arg);
		} else if (!strncmp(buf, "!expect-idle ", 13)) {
			drive(r);
			if (dlv_client_idle(r->c) != (bool)atoi(arg))
				fail(r, "idle is %d", dlv_client_idle(r->c));
		} else if (!strncmp(buf, "!expect-closed ", 15)) {
			drive(r);
			if (dlv_client_closed(r->c) != (bool)atoi(arg))
				fail(r, "closed is %d", dlv_client_closed(r->c));
		} else if (!strncmp(buf, "!expect-tls ", 12)) {
			drive(r);
			if (dlv_client_tls_active(r->c) != (bool)atoi(arg))
				fail(r, "tls is %d", dlv_client_tls_active(r->c));
		} else if (!strncmp(buf, "!expect-discarded ", 18)) {
			drive(r);
			if (r->discarded != (size_t)atol(arg))
				fail(r, "discarded %zu, expected %s", r->discarded, arg);
		} else if (!strncmp(buf, "!expect-error ", 14)) {
			char got[EV_LEN] = "none";
			drive(r);
			const struct dlv_outcome *o = dlv_client_error(r->c);
			if (o)
				outcome_line(got, sizeof(got), o);
			if (!match(arg, got))
				fail(r, "error \"%s\", expected \"%s\"", got, arg);
		} else if (!strncmp(buf, "!expect-ext ", 12)) {
			char got[256];
			drive(r);
			ext_names(dlv_client_ext(r->c), got, sizeof(got));
			if (!got[0])
				snprintf(got, sizeof(got), "none");
			if (strcmp(got, arg))
				fail(r, "ext %s, expected %s", got, arg);
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
		while (next_out_line(r, got, sizeof(got)))
			fail(r, "unexpected client line at the end: \"%s\"", got);
		while (r->ev_pos < r->n_ev)
			fail(r, "unexpected event at the end: \"%s\"", r->ev[r->ev_pos++]);
	}
	dlv_client_fini(r->c);
	for (int i = 0; i < r->n_msgs; i++)
		if (!r->failures && r->msgs[i].submitted && !r->msgs[i].done)
			fail(r, "message %d never finished", i);
	free(r->mem);
	r->c = NULL;
	for (int i = 0; i < r->n_msgs; i++)
		free(r->msgs[i].body);
	return r->failures;
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
		r.in_chunk = r.out_chunk = 0;
		r.seed = 0;
		int f = run_file(&r, argv[i]);
		fails += f;
		runs++;
		if (!split || f)
			continue;
		uint64_t out_hash = r.out_hash, ev_hash = r.ev_hash;
		/* Input chunk sizes 1..8, random chunkings, output drained 1..8 and 61 octets at a time. */
		for (int mode = 0; mode < 8 + 8 + 9 && !fails; mode++) {
			r.in_chunk = r.out_chunk = 0;
			r.seed = 0;
			if (mode < 8)
				r.in_chunk = (size_t)mode + 1;
			else if (mode < 16)
				r.seed = (unsigned)mode * 7919u;
			else
				r.out_chunk = mode == 24 ? 61 : (size_t)(mode - 15);
			int ff = run_file(&r, argv[i]);
			runs++;
			if (ff || r.out_hash != out_hash || r.ev_hash != ev_hash) {
				fprintf(stderr, "%s: chunking mode %d (in %zu seed %u out %zu) differs\n",
					argv[i], mode, r.in_chunk, r.seed, r.out_chunk);
				fails++;
			}
		}
	}
	printf("%d runs, %d failures\n", runs, fails);
	return fails ? 1 : 0;
}
