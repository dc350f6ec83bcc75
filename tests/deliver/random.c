/* SPDX-License-Identifier: MIT */
/*
 * Random-input test of deliver/ (no libFuzzer needed; run it under ASan).
 *
 * 1. The DATA encoder against a slow reference on random bodies of '.',
 *    CR, LF and letters, encoded in random pieces.
 * 2. Random sessions: random configs and messages, random server bytes
 *    (plausible replies, EHLO keywords, garbage, over-long lines, bare LF)
 *    in random pieces, random output draining, body reads that say -EAGAIN
 *    or fail, TLS results, EOF, timeouts, QUIT. Checked all along:
 *    - no heap allocation inside any dlv_* call (malloc is wrapped),
 *    - the output never exceeds out_cap,
 *    - every recipient of a submitted message gets exactly one outcome,
 *      then msg_done, also through eof/timeout/fini,
 *    - delivered only with a 2xx reply from the server, never local, and
 *      only once the final dot left the output; failed only with 5xx;
 *      possible_duplicate only once the final dot left the output,
 *    - outcome text is NUL-terminated printable ASCII.
 *
 * Usage: deliver_random [--iterations N] [--seed S]
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "dlv_client.h"
#include "dlv_internal.h"

/* ---- malloc accounting (linked with --wrap=malloc,calloc,realloc) ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t a, size_t b);
void *__real_realloc(void *p, size_t n);
static int in_machine;
static long machine_allocs;

void *__wrap_malloc(size_t n)
{
	machine_allocs += in_machine;
	return __real_malloc(n);
}

void *__wrap_calloc(size_t a, size_t b)
{
	machine_allocs += in_machine;
	return __real_calloc(a, b);
}

void *__wrap_realloc(void *p, size_t n)
{
	machine_allocs += in_machine;
	return __real_realloc(p, n);
}

#define CHECK(cond)                                                                                          \
	do {                                                                                                 \
		if (!(cond)) {                                                                               \
			fprintf(stderr, "CHECK failed: %s (line %d, iteration %lu)\n", #cond, __LINE__,      \
				g_iter);                                                                     \
			abort();                                                                             \
		}                                                                                            \
	} while (0)

static unsigned long g_iter;
static uint64_t rng_state;

static uint32_t rnd(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng_state >> 33);
}

static uint32_t rnd_below(uint32_t n)
{
	return n ? rnd() % n : 0;
}

/* ---- 1. the encoder ---- */

static size_t reference(const uint8_t *in, size_t len, uint8_t *out)
{
	static uint8_t norm[1 << 16];
	size_t n = 0, o = 0;

	for (size_t i = 0; i < len; i++) {
		if (in[i] == '\r') {
			norm[n++] = '\r';
			norm[n++] = '\n';
			if (i + 1 < len && in[i + 1] == '\n')
				i++;
		} else if (in[i] == '\n') {
			norm[n++] = '\r';
			norm[n++] = '\n';
		} else {
			norm[n++] = in[i];
		}
	}
	if (n > 0 && (n < 2 || norm[n - 2] != '\r' || norm[n - 1] != '\n')) {
		norm[n++] = '\r';
		norm[n++] = '\n';
	}
	bool start = true;
	for (size_t i = 0; i < n; i++) {
		if (start && norm[i] == '.')
			out[o++] = '.';
		out[o++] = norm[i];
		start = norm[i] == '\n';
	}
	memcpy(out + o, ".\r\n", 3);
	return o + 3;
}

static void test_encoder(unsigned long iterations)
{
	static const uint8_t alphabet[] = {'.', '\r', '\n', 'a', 'b', ' ', '.', '\r', '\n'};
	static uint8_t body[8192], want[1 << 16], got[1 << 16];

	for (g_iter = 0; g_iter < iterations; g_iter++) {
		size_t len = rnd_below(64) < 4 ? rnd_below(4) : rnd_below(sizeof(body));
		for (size_t i = 0; i < len; i++)
			body[i] = alphabet[rnd_below(sizeof(alphabet))];
		size_t wl = reference(body, len, want);
		struct dlv_data_enc e;
		size_t gl = 0, off = 0;
		dlv_data_enc_init(&e);
		while (off < len) {
			size_t piece = 1 + rnd_below(rnd_below(2) ? 7 : 900);
			piece = DS_MIN(piece, len - off);
			size_t w = dlv_data_encode(&e, body + off, piece, got + gl);
			CHECK(w <= 2 * piece + 2);
			gl += w;
			off += piece;
		}
		size_t w = dlv_data_finish(&e, got + gl);
		CHECK(w <= DLV_DATA_FINISH_MAX);
		gl += w;
		CHECK(gl == wl && !memcmp(got, want, wl));
	}
}

/* ---- 2. sessions ---- */

#define MAX_R 8

struct sess {
	struct dlv_client_config cfg;
	struct dlv_client *c;
	struct dlv_msg m;
	struct dlv_rcpt rcpt[MAX_R + 2];
	char addr[MAX_R + 2][64];
	uint8_t body[1 << 15];
	bool submitted, done;
	uint32_t got;	 /* bit per recipient */
	bool dot_queued; /* the final dot of this message is in the output (sent or not) */
	bool dot_left;	 /* ... and it left the output */
	uint8_t tail[4]; /* last octets drained */
	bool in_tls;
	bool closed;
	int read_eagain, read_fail;
	const uint8_t *prev_ptr; /* the output left after the last drain */
	size_t prev_len;
	uint8_t prev_copy[1 << 15];
	uint32_t noise; /* 1 in noise feeds is random server bytes when the script has nothing */
	/* the scripted server: it reads what the client sends and mostly answers sensibly */
	char srv_line[600];
	size_t srv_line_len;
	bool srv_data, srv_prdr;
	uint32_t srv_rcpts;
	uint8_t srv_out[1 << 16];
	size_t srv_out_len;
};

static struct sess S;
static unsigned long n_outcomes, n_delivered, n_dups, n_messages;

static void cb_rcpt(void *ctx, const struct dlv_msg *m, uint32_t idx, const struct dlv_outcome *o)
{
	struct sess *s = ctx;

	CHECK(m == &s->m && s->submitted && !s->done);
	CHECK(idx < m->rcpt_count && !(s->got & (1u << idx)));
	s->got |= 1u << idx;
	CHECK(o->cls == DLV_DELIVERED || o->cls == DLV_DEFERRED || o->cls == DLV_FAILED);
	if (o->cls == DLV_DELIVERED) {
		/* A reply may be read before the send of the dot is reported (io_uring CQE order). */
		CHECK(!o->local && o->code / 100 == 2 && s->dot_queued && !o->possible_duplicate);
		n_delivered++;
	}
	if (o->cls == DLV_FAILED)
		CHECK(o->code / 100 == 5);
	if (o->possible_duplicate) {
		CHECK(s->dot_left && o->cls == DLV_DEFERRED);
		n_dups++;
	}
	CHECK(memchr(o->text, 0, sizeof(o->text)) && memchr(o->esc, 0, sizeof(o->esc)));
	for (const char *p = o->text; *p; p++)
		CHECK(*p >= 0x20 && *p < 0x7f);
	n_outcomes++;
}

static void cb_done(void *ctx, const struct dlv_msg *m)
{
	struct sess *s = ctx;

	CHECK(m == &s->m && s->submitted && !s->done);
	CHECK(s->got == (1u << m->rcpt_count) - 1);
	s->done = true;
	n_messages++;
}

static const struct dlv_client_ops ops = {cb_rcpt, cb_done};

static int body_read(void *ctx, uint64_t off, void *buf, size_t cap)
{
	struct sess *s = ctx;

	CHECK(off <= s->m.body_size && cap > 0);
	if (s->read_eagain > 0) {
		s->read_eagain--;
		return -EAGAIN;
	}
	if (s->read_fail) {
		int e = s->read_fail;
		s->read_fail = 0;
		return e;
	}
	size_t n = DS_MIN(cap, (size_t)(s->m.body_size - off));
	if (n > 1 && rnd_below(4) == 0)
		n = 1 + rnd_below((uint32_t)n);
	memcpy(buf, s->body + off, n);
	return (int)n;
}

static void new_message(struct sess *s)
{
	static const char *const hosts[] = {"example.com", "b\xc3\xa9.example", "x.test"};

	memset(&s->m, 0, sizeof(s->m));
	s->m.mail_from = rnd_below(5) ? "sender@example.org" : "";
	s->m.rcpt_count = 1 + rnd_below(rnd_below(8) ? MAX_R : MAX_R + 2);
	for (uint32_t i = 0; i < s->m.rcpt_count; i++) {
		snprintf(s->addr[i], sizeof(s->addr[i]), "r%u@%s", i, hosts[rnd_below(8) ? 0 : rnd_below(3)]);
		s->rcpt[i].addr = s->addr[i];
		s->rcpt[i].notify = rnd_below(3) ? NULL : "SUCCESS,FAILURE";
		s->rcpt[i].orcpt = rnd_below(3) ? NULL : "rfc822;orig+40example.com";
	}
	s->m.rcpt = s->rcpt;
	s->m.body = (enum dlv_body_type)(rnd_below(10) ? rnd_below(2) : 2);
	s->m.smtputf8 = rnd_below(4) == 0;
	s->m.ret = rnd_below(3) ? NULL : "HDRS";
	s->m.envid = rnd_below(3) ? NULL : "id+2B1";
	size_t len = rnd_below(4) ? rnd_below(3000) : rnd_below(sizeof(s->body));
	static const uint8_t alphabet[] = "..\r\n\r\nabc xyz";
	for (size_t i = 0; i < len; i++)
		s->body[i] = rnd_below(16) ? alphabet[rnd_below(sizeof(alphabet) - 1)] : (uint8_t)rnd();
	s->m.body_size = len;
	s->m.read = body_read;
	s->m.read_ctx = s;
	s->got = 0;
	s->done = false;
	s->submitted = false;
	s->dot_left = s->dot_queued = false;
}

/* A random piece of what a server might say. */
static size_t gen_server(uint8_t *buf, size_t cap)
{
	static const uint16_t codes[] = {220, 250, 250, 250, 250, 354, 353, 421, 450, 451, 452,
					 550, 552, 554, 221, 251, 500, 502, 503, 530, 555};
	static const char *const words[] = {
		"PIPELINING", "SIZE 1000", "SIZE 99999999",	  "8BITMIME", "SMTPUTF8", "DSN",
		"PRDR",	      "STARTTLS",  "ENHANCEDSTATUSCODES", "CHUNKING", "2.1.5 ok", "5.1.1 <x> no",
		"4.2.2 full", "hello"};
	size_t n = 0;
	uint32_t kind = rnd_below(100);

	if (kind < 70) {
		/* A reply, possibly multiline. */
		uint16_t code = rnd_below(20) ? codes[rnd_below(DS_ARRAY_SIZE(codes))]
					      : (uint16_t)(200 + rnd_below(400));
		uint32_t lines = rnd_below(5) ? 1 : 1 + rnd_below(8);
		for (uint32_t l = 0; l < lines && n + 128 < cap; l++)
			n += (size_t)snprintf(
				(char *)buf + n, cap - n, "%u%c%s%s", code, l + 1 < lines ? '-' : ' ',
				words[rnd_below(DS_ARRAY_SIZE(words))], rnd_below(8) ? "\r\n" : "\n");
		return n;
	}
	if (kind < 80) {
		/* Garbage octets. */
		size_t len = rnd_below(64);
		len = DS_MIN(cap, len);
		for (size_t i = 0; i < len; i++)
			buf[n++] = (uint8_t)rnd();
		return n;
	}
	if (kind < 85) {
		/* An over-long line, sometimes without an end. */
		size_t len = 400 + rnd_below(3000);
		len = DS_MIN(cap - 2, len);
		memcpy(buf, "250 ", 4);
		for (n = 4; n < len; n++)
			buf[n] = 'x';
		if (rnd_below(2)) {
			buf[n++] = '\r';
			buf[n++] = '\n';
		}
		return n;
	}
	if (kind < 92) {
		/* Plausible but broken lines. */
		static const char *const bad[] = {"25\r\n", "250x\r\n",	      "2500 a\r\n",
						  "\r\n",   "ok\r\n",	      "250\r\n",
						  "354\n",  "250-a\r\n250 b", "250-a\r\n550 b\r\n"};
		const char *b = bad[rnd_below(DS_ARRAY_SIZE(bad))];
		n = DS_MIN(cap, strlen(b));
		memcpy(buf, b, n);
		return n;
	}
	/* A burst of 250s (LMTP per-recipient replies, pipelined RCPTs). */
	for (uint32_t l = 0, k = 1 + rnd_below(10); l < k && n + 32 < cap; l++)
		n += (size_t)snprintf((char *)buf + n, cap - n, "250 2.1.5 ok\r\n");
	return n;
}

static void srv_say(struct sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void srv_say(struct sess *s, const char *fmt, ...)
{
	va_list ap;
	size_t cap = sizeof(s->srv_out) - s->srv_out_len;

	if (cap < 1024)
		return;
	va_start(ap, fmt);
	int n = vsnprintf((char *)s->srv_out + s->srv_out_len, cap, fmt, ap);
	va_end(ap);
	if (n > 0 && (size_t)n < cap)
		s->srv_out_len += (size_t)n;
}

static const char *srv_pick(uint32_t ok_pct, const char *ok, const char *tmp, const char *perm)
{
	uint32_t x = rnd_below(100);
	return x < ok_pct ? ok : x < ok_pct + (100 - ok_pct) / 2 ? tmp : perm;
}

/* One complete line the client sent. */
static void srv_on_line(struct sess *s, const char *l)
{
	if (s->srv_data) {
		if (strcmp(l, "."))
			return;
		s->srv_data = false;
		if (s->cfg.lmtp) {
			for (uint32_t i = 0; i < s->srv_rcpts; i++)
				srv_say(s, "%s\r\n",
					srv_pick(80, "250 2.0.0 ok", "452 4.2.2 full", "550 5.1.1 no"));
		} else if (s->srv_prdr && rnd_below(4)) {
			srv_say(s, "353 go\r\n");
			for (uint32_t i = 0; i < s->srv_rcpts; i++)
				srv_say(s, "%s\r\n",
					srv_pick(80, "250 2.0.0 ok", "450 4.2.2 full", "550 5.1.1 no"));
			srv_say(s, "%s\r\n",
				srv_pick(85, "250 2.0.0 queued", "451 4.3.0 later", "554 5.6.0 no"));
		} else {
			srv_say(s, "%s\r\n",
				srv_pick(85, "250 2.0.0 queued", "452 4.3.1 full", "554 5.6.0 no"));
		}
		s->srv_rcpts = 0;
		return;
	}
	if (!strncmp(l, "EHLO", 4) || !strncmp(l, "LHLO", 4)) {
		static const char *const kw[] = {
			"PIPELINING", "SIZE 100000", "8BITMIME", "SMTPUTF8",
			"DSN",	      "PRDR",	     "STARTTLS", "ENHANCEDSTATUSCODES"};
		if (rnd_below(20) == 0) {
			srv_say(s, "%s\r\n", srv_pick(0, "", "421 4.3.2 bye", "502 5.5.1 no"));
			return;
		}
		srv_say(s, "250-mx.test\r\n");
		for (unsigned i = 0; i < DS_ARRAY_SIZE(kw); i++)
			if (rnd_below(3))
				srv_say(s, "250-%s\r\n", kw[i]);
		srv_say(s, "250 HELP\r\n");
	} else if (!strncmp(l, "HELO", 4)) {
		srv_say(s, "250 mx.test\r\n");
	} else if (!strncmp(l, "STARTTLS", 8)) {
		srv_say(s, "%s\r\n", srv_pick(85, "220 2.0.0 go", "454 4.7.0 no", "502 5.5.1 no"));
	} else if (!strncmp(l, "MAIL", 4)) {
		s->srv_prdr = strstr(l, " PRDR") != NULL;
		s->srv_rcpts = 0;
		srv_say(s, "%s\r\n", srv_pick(90, "250 2.1.0 ok", "451 4.3.0 later", "550 5.7.1 no"));
	} else if (!strncmp(l, "RCPT", 4)) {
		const char *r = srv_pick(70, "250 2.1.5 ok", "450 4.2.1 later", "550 5.1.1 unknown");
		s->srv_rcpts += r[0] == '2';
		srv_say(s, "%s\r\n", r);
	} else if (!strcmp(l, "DATA")) {
		const char *r = srv_pick(90, "354 go", "451 4.3.0 later", "554 5.5.1 no valid recipients");
		s->srv_data = r[0] == '3';
		srv_say(s, "%s\r\n", r);
	} else if (!strcmp(l, "RSET")) {
		srv_say(s, "250 2.0.0 ok\r\n");
	} else if (!strcmp(l, "QUIT")) {
		srv_say(s, "221 2.0.0 bye\r\n");
	} else {
		srv_say(s, "500 5.5.2 what\r\n");
	}
}

static void srv_feed(struct sess *s, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (b[i] != '\n') {
			if (s->srv_line_len < sizeof(s->srv_line) - 1)
				s->srv_line[s->srv_line_len++] = (char)b[i];
			continue;
		}
		if (s->srv_line_len && s->srv_line[s->srv_line_len - 1] == '\r')
			s->srv_line_len--;
		s->srv_line[s->srv_line_len] = '\0';
		srv_on_line(s, s->srv_line);
		s->srv_line_len = 0;
	}
}

static void status_of(struct sess *s, enum dlv_status st)
{
	if (st == DLV_CLOSE)
		s->closed = true;
	if (st == DLV_STARTTLS)
		s->in_tls = true;
	if (s->closed)
		CHECK(dlv_client_closed(s->c));
}

/* Is the final dot in the output now ("\n.\r\n" over the drained tail and what is left)? */
static void peek_dot(struct sess *s)
{
	uint8_t w[4];
	size_t len;
	const uint8_t *o = dlv_client_output(s->c, &len);

	memcpy(w, s->tail, 4);
	for (size_t i = 0; i < len && !s->dot_queued; i++) {
		memmove(w, w + 1, 3);
		w[3] = o[i];
		if (!memcmp(w, "\n.\r\n", 4) && s->submitted && !s->done)
			s->dot_queued = true;
	}
}

static void drain(struct sess *s, bool all)
{
	size_t len;
	const uint8_t *o;

	in_machine++;
	o = dlv_client_output(s->c, &len);
	in_machine--;
	CHECK(len <= s->cfg.out_cap);
	/* Unsent bytes never move or change (a send may be in flight from them). */
	if (!s->closed && s->prev_len) {
		CHECK(o == s->prev_ptr && len >= s->prev_len && !memcmp(o, s->prev_copy, s->prev_len));
	}
	s->prev_len = 0;
	if (len == 0)
		return;
	size_t n = all ? len : 1 + rnd_below((uint32_t)len);
	s->prev_ptr = o + n;
	s->prev_len = len - n;
	memcpy(s->prev_copy, o + n, len - n);
	srv_feed(s, o, n);
	/* The final dot: "\n.\r\n" across the drained bytes (stuffed body dots are "\n.."). */
	for (size_t i = 0; i < n; i++) {
		memmove(s->tail, s->tail + 1, 3);
		s->tail[3] = o[i];
		if (!memcmp(s->tail, "\n.\r\n", 4) && s->submitted && !s->done)
			s->dot_left = s->dot_queued = true;
	}
	in_machine++;
	enum dlv_status st = dlv_client_output_consumed(s->c, n);
	in_machine--;
	status_of(s, st);
}

static void session(void *mem, size_t mem_len)
{
	struct sess *s = &S;
	static uint8_t in[8192];

	memset(s, 0, offsetof(struct sess, body));
	s->submitted = s->done = s->dot_left = s->dot_queued = s->in_tls = s->closed = false;
	s->got = 0;
	s->read_eagain = s->read_fail = 0;
	s->srv_line_len = s->srv_out_len = 0;
	s->prev_len = 0;
	s->srv_data = s->srv_prdr = false;
	s->srv_rcpts = 0;
	s->noise = 1 + rnd_below(30);
	memset(s->tail, 0, sizeof(s->tail));
	dlv_client_config_defaults(&s->cfg);
	s->cfg.lmtp = rnd_below(3) == 0;
	s->cfg.helo_name = "relay.test";
	s->cfg.max_reply_line = 512 + rnd_below(2048);
	s->cfg.max_reply_lines = 1 + rnd_below(20);
	s->cfg.max_rcpts = 1 + rnd_below(MAX_R);
	s->cfg.out_cap = 4096 + rnd_below(8192);
	s->cfg.use_pipelining = rnd_below(4);
	s->cfg.use_dsn = rnd_below(4);
	s->cfg.use_prdr = rnd_below(4);
	s->cfg.use_8bitmime = rnd_below(4);
	s->cfg.use_smtputf8 = rnd_below(4);
	s->cfg.use_size = rnd_below(4);
	s->cfg.starttls = (enum dlv_starttls)rnd_below(3);
	CHECK(dlv_client_config_check(&s->cfg, NULL) == 0);
	CHECK(dlv_client_size(&s->cfg) <= mem_len);

	in_machine++;
	s->c = dlv_client_init(mem, &s->cfg, &ops, s);
	if (rnd_below(10))
		dlv_client_connected(s->c);
	in_machine--;
	srv_say(s, "%s\r\n", srv_pick(92, "220 mx.test ESMTP", "421 4.3.2 busy", "554 5.7.1 go away"));
	new_message(s);

	for (int step = 0; step < 300 && !s->closed; step++) {
		uint32_t a = rnd_below(100);
		enum dlv_status st = DLV_OK;
		if (s->in_tls) {
			in_machine++;
			st = dlv_client_tls_done(s->c, rnd_below(4) ? 0 : -EPROTO);
			in_machine--;
			s->in_tls = false;
			status_of(s, st);
			continue;
		}
		if (a < 45) {
			size_t len;
			if (s->srv_out_len && rnd_below(12)) {
				/* What the scripted server said, in one go or in part. */
				size_t want = rnd_below(3) ? s->srv_out_len : 1 + rnd_below(64);
				len = DS_MIN(DS_MIN(s->srv_out_len, want), sizeof(in));
				memcpy(in, s->srv_out, len);
				memmove(s->srv_out, s->srv_out + len, s->srv_out_len - len);
				s->srv_out_len -= len;
			} else if (rnd_below(s->noise)) {
				drain(s, true);
				continue;
			} else {
				len = gen_server(in, sizeof(in));
			}
			size_t off = 0;
			while (off < len && !s->closed && !s->in_tls) {
				size_t piece =
					rnd_below(3) ? len - off : 1 + rnd_below((uint32_t)(len - off));
				size_t used = 0;
				peek_dot(s);
				in_machine++;
				st = dlv_client_input(s->c, in + off, piece, &used);
				in_machine--;
				CHECK(used <= piece);
				CHECK(st != DLV_OK || used == piece);
				off += used;
				status_of(s, st);
				if (rnd_below(2))
					drain(s, rnd_below(2));
			}
		} else if (a < 75) {
			drain(s, rnd_below(3));
		} else if (a < 85) {
			if (!s->submitted || s->done) {
				if (s->done)
					new_message(s);
				s->submitted = true; /* the callbacks may run inside submit */
				in_machine++;
				int r = dlv_client_submit(s->c, &s->m);
				in_machine--;
				CHECK(r == 0 || r == -EPIPE || r == -E2BIG || r == -EBUSY);
				if (r != 0)
					s->submitted = false;
				if (r != 0)
					CHECK(!dlv_client_closed(s->c) || r == -EPIPE);
			}
		} else if (a < 89) {
			if (rnd_below(2))
				s->read_eagain = (int)rnd_below(3);
			else if (rnd_below(4) == 0)
				s->read_fail = -EIO;
			in_machine++;
			st = dlv_client_body_ready(s->c);
			in_machine--;
			status_of(s, st);
		} else if (a < 92) {
			in_machine++;
			int r = dlv_client_quit(s->c);
			in_machine--;
			CHECK(r == 0 || r == -EBUSY);
		} else if (a < 94) {
			in_machine++;
			st = dlv_client_eof(s->c, rnd_below(2) ? 0 : -ECONNRESET);
			in_machine--;
			CHECK(st == DLV_CLOSE);
			status_of(s, st);
		} else if (a < 96) {
			in_machine++;
			(void)dlv_client_timeout_kind(s->c);
			st = dlv_client_timeout(s->c);
			in_machine--;
			CHECK(st == DLV_CLOSE);
			status_of(s, st);
		} else {
			in_machine++;
			(void)dlv_client_timeout_kind(s->c);
			(void)dlv_client_idle(s->c);
			(void)dlv_client_error(s->c);
			in_machine--;
		}
	}
	if (s->closed && !s->in_tls) {
		/* Closed stays closed. */
		size_t used;
		in_machine++;
		CHECK(dlv_client_input(s->c, (const uint8_t *)"250 ok\r\n", 8, &used) == DLV_CLOSE);
		CHECK(dlv_client_submit(s->c, &s->m) == -EPIPE || (s->submitted && !s->done));
		in_machine--;
	}
	in_machine++;
	dlv_client_fini(s->c);
	in_machine--;
	CHECK(!s->submitted || s->done);
}

int main(int argc, char **argv)
{
	unsigned long iterations = 2000, seed = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--iterations") && i + 1 < argc)
			iterations = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoul(argv[++i], NULL, 0);
		else {
			fprintf(stderr, "usage: %s [--iterations N] [--seed S]\n", argv[0]);
			return 2;
		}
	}
	rng_state = seed;
	test_encoder(iterations);

	/* Config limits. */
	struct dlv_client_config bad;
	const char *why = NULL;
	dlv_client_config_defaults(&bad);
	CHECK(dlv_client_config_check(&bad, &why) == 0 && why == NULL);
	bad.helo_name = "two words";
	CHECK(dlv_client_config_check(&bad, &why) == -EINVAL && why);
	bad.helo_name = "";
	CHECK(dlv_client_config_check(&bad, &why) == -EINVAL);
	dlv_client_config_defaults(&bad);
	bad.max_reply_line = 511;
	CHECK(dlv_client_config_check(&bad, &why) == -EINVAL);
	dlv_client_config_defaults(&bad);
	bad.max_reply_lines = 0;
	CHECK(dlv_client_config_check(&bad, &why) == -EINVAL);
	dlv_client_config_defaults(&bad);
	bad.max_rcpts = 100001;
	CHECK(dlv_client_config_check(&bad, &why) == -EINVAL);
	dlv_client_config_defaults(&bad);
	bad.out_cap = 4095;
	CHECK(dlv_client_config_check(&bad, &why) == -EINVAL);

	struct dlv_client_config big;
	dlv_client_config_defaults(&big);
	big.max_rcpts = MAX_R;
	big.out_cap = 4096 + 8192;
	size_t mem_len = dlv_client_size(&big);
	void *mem = malloc(mem_len);
	unsigned long closed = 0;
	for (g_iter = 0; g_iter < iterations; g_iter++) {
		session(mem, mem_len);
		closed += S.closed;
	}
	free(mem);
	CHECK(machine_allocs == 0);
	printf("%lu sessions (%lu closed), %lu messages, %lu outcomes (%lu delivered, %lu possible "
	       "duplicates), "
	       "0 allocations inside the client\n",
	       iterations, closed, n_messages, n_outcomes, n_delivered, n_dups);
	return 0;
}
