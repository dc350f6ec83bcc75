/* SPDX-License-Identifier: MIT */
/*
 * deliver/dlv_dsn.c: RFC 3464 bounces.
 *
 *   test_dsn               the cmocka tests
 *   test_dsn --write DIR   writes every sample DSN as DIR/NAME.eml, the original it carries as
 *                          DIR/NAME.orig and one JSON line per sample to DIR/manifest.jsonl, for
 *                          check_dsn.py (Python's email package parses them).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dlv_dsn.h"

#define T0_US	 1700000000000000ll /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define SEED	 "q1234.a1"
#define BOUNDARY "=_ds_" SEED
#define OUT_MAX	 (4u << 20)
#define MSG_HDR                                                                                              \
	"Received: from c.example ([127.0.0.1]) by mx.test with ESMTP id q1234;\r\n\tTue, 14 Nov 2023 "      \
	"22:13:00 +0000\r\nFrom: <a@example.org>\r\nTo: <b@example.net>\r\nSubject: hello\r\nMessage-ID: "   \
	"<m1@example.org>\r\n"
#define MSG_SMALL MSG_HDR "\r\nHello world.\r\n.. dot line\r\n"

/* ---- a sample: input, output ---- */

struct sample {
	const char *name;
	struct ds_envelope env;
	struct dlv_dsn_rcpt rcpt[8];
	uint32_t rcpt_count;
	const char *orig;
	size_t orig_len;
	uint64_t full_max, hdrs_max;
	uint32_t diag_max;
	bool allow_8bit;
	bool short_reads;
	/* results */
	int rc;
	struct dlv_dsn_buf out;
	struct dlv_dsn_result res;
};

struct short_src {
	const char *data;
	size_t len;
};

static ssize_t read_one(void *ctx, uint64_t off, void *buf, size_t cap)
{
	struct short_src *s = ctx;
	if (off >= s->len)
		return 0;
	((char *)buf)[0] = s->data[off];
	return 1;
}

static ssize_t read_fail(void *ctx, uint64_t off, void *buf, size_t cap)
{
	if (off >= 2)
		return -ENXIO;
	((char *)buf)[0] = 'x';
	return 1;
}

static void sample_init(struct sample *s, const char *name)
{
	memset(s, 0, sizeof(*s));
	s->name = name;
	s->env.client_addr = "127.0.0.1";
	s->env.helo = "c.example";
	s->env.proto = "ESMTP";
	s->env.mail_from = "a@example.org";
	s->env.mail_params = "";
	s->env.tls = "";
	s->env.received_at_us = T0_US - 20 * 1000000ll;
	s->orig = MSG_SMALL;
	s->orig_len = strlen(MSG_SMALL);
}

static struct dlv_dsn_rcpt *add_rcpt(struct sample *s, const char *addr, const char *params,
				     enum dlv_dsn_action a, const char *status, const char *diag)
{
	struct dlv_dsn_rcpt *r = &s->rcpt[s->rcpt_count++];
	assert_true(s->rcpt_count <= 8);
	r->addr = addr;
	r->params = params;
	r->action = a;
	r->status = status;
	r->diag = diag;
	r->remote_mta = "192.0.2.25";
	r->last_attempt_us = T0_US - 1000000;
	if (a == DLV_DSN_DELAYED)
		r->retry_until_us = T0_US + 5ll * 86400 * 1000000;
	return r;
}

static int sample_build(struct sample *s)
{
	struct dlv_dsn_mem mem = {s->orig, s->orig_len};
	struct short_src ss = {s->orig, s->orig_len};
	struct dlv_dsn_input in = {
		.reporting_mta = "mx.test",
		.message_id = "<dsn.q1234.1@mx.test>",
		.boundary_seed = SEED,
		.now_us = T0_US,
		.env = &s->env,
		.rcpt = s->rcpt,
		.rcpt_count = s->rcpt_count,
		.orig = {.size = s->orig_len,
			 .read = s->short_reads ? read_one : dlv_dsn_mem_read,
			 .ctx = s->short_reads ? (void *)&ss : (void *)&mem},
		.orig_full_max = s->full_max,
		.orig_hdrs_max = s->hdrs_max,
		.diag_max = s->diag_max,
		.allow_8bit = s->allow_8bit,
	};
	struct dlv_dsn_sink sink = {dlv_dsn_buf_write, &s->out};

	s->out.max = OUT_MAX;
	s->rc = dlv_dsn_build(&in, &sink, &s->res);
	if (s->rc == 0) {
		assert_int_equal(s->res.size, s->out.len);
		assert_true(dlv_dsn_buf_write(&s->out, "", 1) == 0); /* NUL-terminate for strstr */
		s->out.len--;
	}
	return s->rc;
}

static void sample_free(struct sample *s)
{
	dlv_dsn_buf_free(&s->out);
}

static bool has(const struct sample *s, const char *needle)
{
	return s->out.data && strstr(s->out.data, needle) != NULL;
}

static size_t count(const struct sample *s, const char *needle)
{
	size_t n = 0;
	for (const char *p = s->out.data; p && (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

/* CRLF only, no line over 998 octets, 7-bit unless the result says otherwise. */
static void check_wellformed(const struct sample *s)
{
	const unsigned char *d = (const unsigned char *)s->out.data;
	size_t n = s->out.len, col = 0, hdr_end;
	const char *he = strstr(s->out.data, "\r\n\r\n");

	assert_non_null(he);
	hdr_end = (size_t)(he - s->out.data);
	assert_true(n >= 2 && d[n - 2] == '\r' && d[n - 1] == '\n');
	for (size_t i = 0; i < n; i++) {
		if (d[i] == '\r') {
			assert_true(i + 1 < n && d[i + 1] == '\n');
			i++;
			col = 0;
			continue;
		}
		assert_true(d[i] != '\n');
		assert_true(d[i] != 0);
		if (d[i] >= 0x80) {
			if (i < hdr_end)
				assert_true(s->res.smtputf8);
			else
				assert_true(s->res.body_8bit);
		}
		col++;
		assert_true(col <= 998);
	}
	assert_true(has(
		s,
		"\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"" BOUNDARY
		"\"\r\n"));
	assert_int_equal(count(s, "\r\n--" BOUNDARY "\r\n"), 3);
	assert_int_equal(count(s, "\r\n--" BOUNDARY "--\r\n"), 1);
	assert_true(has(s, "\r\nAuto-Submitted: auto-replied\r\n"));
	assert_true(has(s, "\r\nFrom: MAILER-DAEMON@mx.test (Mail Delivery System)\r\n"));
	assert_true(has(s, "\r\nMessage-ID: <dsn.q1234.1@mx.test>\r\n"));
	assert_true(strncmp(s->out.data, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n", 39) == 0);
	assert_true(has(s, "\r\nReporting-MTA: dns; mx.test\r\n"));
	assert_true(has(s, "\r\nArrival-Date: Tue, 14 Nov 2023 22:13:00 +0000\r\n"));
}

/* The part after the third boundary: its header block and its content. */
static const char *orig_part(const struct sample *s, const char **content, size_t *clen)
{
	const char *p = s->out.data;
	for (int i = 0; i < 3; i++) {
		p = strstr(p, "\r\n--" BOUNDARY "\r\n");
		assert_non_null(p);
		p += strlen("\r\n--" BOUNDARY "\r\n");
	}
	const char *c = strstr(p, "\r\n\r\n");
	const char *end = strstr(p, "\r\n--" BOUNDARY "--\r\n");
	assert_non_null(c);
	assert_non_null(end);
	*content = c + 4;
	*clen = (size_t)(end - (c + 4));
	return p;
}

/* ---- the samples (shared by the tests and --write) ---- */

static void s_one_failed(struct sample *s)
{
	sample_init(s, "one_failed");
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1",
		 "550 5.1.1 <b@example.net>: Recipient address rejected: User unknown");
}

static void s_mixed(struct sample *s)
{
	sample_init(s, "mixed");
	add_rcpt(s, "b@example.net", "NOTIFY=FAILURE,DELAY", DLV_DSN_FAILED, "5.2.2",
		 "552 5.2.2 mailbox full");
	add_rcpt(s, "c@example.net", "", DLV_DSN_DELAYED, "4.4.1",
		 "connect to 192.0.2.25 port 25: Connection refused")
		->diag_type = "x-unix";
	add_rcpt(s, "d@example.net", "", DLV_DSN_FAILED, "4.4.7",
		 "450 4.2.0 try later (queue lifetime over)");
	add_rcpt(s, "e@example.net", "", DLV_DSN_DELAYED, "bogus", NULL)->remote_mta = NULL;
}

static void s_delayed_only(struct sample *s)
{
	sample_init(s, "delayed_only");
	add_rcpt(s, "c@example.net", "NOTIFY=DELAY", DLV_DSN_DELAYED, "4.2.0", "451 4.2.0 greylisted");
}

static void s_orcpt(struct sample *s)
{
	sample_init(s, "orcpt");
	add_rcpt(s, "b@example.net", "NOTIFY=FAILURE ORCPT=rfc822;B+2Bx+3Dy@Example.Net", DLV_DSN_FAILED,
		 "5.1.1", "550 no");
	add_rcpt(s, "c@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
	add_rcpt(s, "d@example.net", "ORCPT=utf-8;j\xc3\xb6rg@example.net", DLV_DSN_FAILED, "5.1.1",
		 "550 no");
	add_rcpt(s, "e@example.net", "ORCPT=rfc822;evil+0D+0ABcc:x@y", DLV_DSN_FAILED, "5.1.1", "550 no");
	add_rcpt(s, "f@example.net", "ORCPT=rfc822;bad+2", DLV_DSN_FAILED, "5.1.1", "550 no");
	add_rcpt(s, "g@example.net", "ORCPT=rfc822;g+C3+A9@example.net", DLV_DSN_FAILED, "5.1.1", "550 no");
}

static void s_envid_hdrs(struct sample *s)
{
	sample_init(s, "envid_hdrs");
	s->env.mail_params = "SIZE=100 RET=HDRS ENVID=QQ+2B314";
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 5.1.1 no such user");
}

static void s_ret_full(struct sample *s)
{
	sample_init(s, "ret_full");
	s->env.mail_params = "RET=FULL ENVID=abc";
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 5.1.1 no such user");
}

static void s_notify(struct sample *s)
{
	sample_init(s, "notify");
	add_rcpt(s, "never@example.net", "NOTIFY=NEVER", DLV_DSN_FAILED, "5.1.1", "550 a");
	add_rcpt(s, "delayonly@example.net", "NOTIFY=DELAY", DLV_DSN_FAILED, "5.1.1", "550 b");
	add_rcpt(s, "delayed@example.net", "NOTIFY=delay,success", DLV_DSN_DELAYED, "4.2.1", "450 c");
	add_rcpt(s, "failonly@example.net", "NOTIFY=FAILURE", DLV_DSN_DELAYED, "4.2.1", "450 d");
	add_rcpt(s, "failed@example.net", "NOTIFY=SUCCESS,FAILURE", DLV_DSN_FAILED, "5.7.1", "554 e");
}

static char long_diag[6000], nospace_diag[3000];

static void s_long_diag(struct sample *s)
{
	size_t n = 0;
	sample_init(s, "long_diag");
	n += (size_t)snprintf(long_diag, sizeof(long_diag), "550-5.7.1 first line\r\n550-5.7.1 ");
	while (n < 5000)
		n += (size_t)snprintf(long_diag + n, sizeof(long_diag) - n, "word%zu\t ", n);
	memset(nospace_diag, 'x', sizeof(nospace_diag) - 1);
	memcpy(nospace_diag, "550 ", 4);
	nospace_diag[100] = '\x01';
	nospace_diag[101] = '\xe9';
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.7.1", long_diag);
	add_rcpt(s, "c@example.net", "", DLV_DSN_FAILED, "5.7.1", nospace_diag);
	s->diag_max = 4000;
}

static char *big_orig;

static void s_big(struct sample *s)
{
	size_t n = 0, cap = 200 * 1024 + 4096;
	sample_init(s, "big");
	if (!big_orig) {
		big_orig = malloc(cap);
		assert_non_null(big_orig);
		n = (size_t)snprintf(big_orig, cap, "%s\r\n", MSG_HDR);
		while (n < 200 * 1024)
			n += (size_t)snprintf(big_orig + n, cap - n, "line %zu of a big body\r\n", n);
	}
	s->orig = big_orig;
	s->orig_len = strlen(big_orig);
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.3.4", "552 5.3.4 message too big");
}

static char *long_hdr_orig;

static void s_big_headers(struct sample *s)
{
	size_t n = 0, cap = 40000;
	sample_init(s, "big_headers");
	if (!long_hdr_orig) {
		long_hdr_orig = malloc(cap);
		assert_non_null(long_hdr_orig);
		n = (size_t)snprintf(long_hdr_orig, cap, "%s", MSG_HDR);
		for (int i = 0; n < 30000; i++)
			n += (size_t)snprintf(long_hdr_orig + n, cap - n, "X-Filler-%d: %s\r\n", i,
					      "some text that fills a header line with words, many of them");
		n += (size_t)snprintf(long_hdr_orig + n, cap - n, "\r\nbody\r\n");
	}
	s->orig = long_hdr_orig;
	s->orig_len = strlen(long_hdr_orig);
	s->hdrs_max = 8192;
	s->full_max = 16384;
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.3.4", "552 5.3.4 message too big");
}

#define MSG_8BIT                                                                                             \
	"Received: by mx.test\r\nSubject: caf\xc3\xa9 =?x?=  \r\nFrom: <a@example.org>\r\n\r\nBody with "    \
	"\xe9 octets.\r\n"

static void s_8bit(struct sample *s)
{
	sample_init(s, "eightbit");
	s->orig = MSG_8BIT;
	s->orig_len = strlen(MSG_8BIT);
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.6.7", "553 5.6.7 8-bit not accepted");
}

static void s_8bit_allowed(struct sample *s)
{
	s_8bit(s);
	s->name = "eightbit_allowed";
	s->allow_8bit = true;
}

#define MSG_COLLIDE "Subject: x\r\n\r\nbefore\r\n--" BOUNDARY "\r\nafter\r\n"

static void s_collide(struct sample *s)
{
	sample_init(s, "collide");
	s->orig = MSG_COLLIDE;
	s->orig_len = strlen(MSG_COLLIDE);
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
}

static void s_utf8(struct sample *s)
{
	sample_init(s, "utf8");
	s->env.mail_from = "j\xc3\xb6rg@example.org";
	s->env.mail_params = "SMTPUTF8 BODY=8BITMIME";
	add_rcpt(s, "\xe5\x8f\x97+x=y@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 5.1.1 unknown");
}

static void s_bare_lf(struct sample *s)
{
	static const char m[] = "Subject: bare\nX-A: b\r\n\r\nbody\n";
	sample_init(s, "bare_lf");
	s->orig = m;
	s->orig_len = sizeof(m) - 1;
	s->short_reads = true;
	add_rcpt(s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
}

static void (*const samples[])(struct sample *) = {
	s_one_failed, s_mixed,	      s_delayed_only, s_orcpt, s_envid_hdrs,
	s_ret_full,   s_notify,	      s_long_diag,    s_big,   s_big_headers,
	s_8bit,	      s_8bit_allowed, s_collide,      s_utf8,  s_bare_lf,
};

/* ---- tests ---- */

static void test_one_failed(void **state)
{
	struct sample s;
	const char *c;
	size_t cl;

	s_one_failed(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.failed, 1);
	assert_int_equal(s.res.delayed, 0);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_FULL);
	assert_false(s.res.body_8bit);
	assert_false(s.res.smtputf8);
	assert_true(has(&s, "\r\nTo: <a@example.org>\r\n"));
	assert_true(has(&s, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
	assert_true(has(&s, "\r\nReceived-From-MTA: dns; c.example ([127.0.0.1])\r\n"));
	assert_true(has(
		&s, "\r\n\r\nFinal-Recipient: rfc822; b@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
		    "Remote-MTA: dns; 192.0.2.25\r\n"
		    "Diagnostic-Code: smtp; 550 5.1.1 <b@example.net>: Recipient address rejected:\r\n"
		    " User unknown\r\nLast-Attempt-Date: Tue, 14 Nov 2023 22:13:19 +0000\r\n"));
	assert_false(has(&s, "Original-Recipient"));
	assert_false(has(&s, "Original-Envelope-Id"));
	assert_false(has(&s, "Will-Retry-Until"));
	assert_true(has(&s, "\r\n<b@example.net>\r\n    Status 5.1.1, reported by 192.0.2.25\r\n"
			    "    550 5.1.1 <b@example.net>: Recipient address rejected: User unknown\r\n"));
	assert_true(has(&s, "Content-Type: message/rfc822\r\n\r\n" MSG_SMALL "\r\n--" BOUNDARY "--\r\n"));
	orig_part(&s, &c, &cl);
	assert_int_equal(cl, strlen(MSG_SMALL));
	assert_memory_equal(c, MSG_SMALL, cl);
	sample_free(&s);
}

static void test_mixed(void **state)
{
	struct sample s;

	s_mixed(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.failed, 2);
	assert_int_equal(s.res.delayed, 2);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_FULL);
	assert_true(has(&s, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
	assert_int_equal(count(&s, "\r\nAction: failed\r\n"), 2);
	assert_int_equal(count(&s, "\r\nAction: delayed\r\n"), 2);
	assert_true(has(&s, "Final-Recipient: rfc822; c@example.net\r\nAction: delayed\r\nStatus: 4.4.1\r\n"
			    "Remote-MTA: dns; 192.0.2.25\r\n"
			    "Diagnostic-Code: x-unix; connect to 192.0.2.25 port 25: Connection refused\r\n"
			    "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:19 +0000\r\n"
			    "Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"));
	/* failed with a 4.x.x status (lifetime over) is kept; a malformed status gets the default */
	assert_true(has(&s, "Final-Recipient: rfc822; d@example.net\r\nAction: failed\r\nStatus: 4.4.7\r\n"));
	assert_true(has(&s, "Final-Recipient: rfc822; e@example.net\r\nAction: delayed\r\nStatus: 4.0.0\r\n"
			    "Last-Attempt-Date:"));
	assert_true(has(&s, "still being retried"));
	sample_free(&s);
}

static void test_delayed_only(void **state)
{
	struct sample s;
	const char *c;
	size_t cl;

	s_delayed_only(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.failed, 0);
	assert_int_equal(s.res.delayed, 1);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS);
	assert_true(has(&s, "\r\nSubject: Delayed Mail (still being retried)\r\n"));
	assert_true(has(&s, "Content-Type: text/rfc822-headers\r\n\r\n"));
	orig_part(&s, &c, &cl);
	assert_int_equal(cl, strlen(MSG_HDR));
	assert_memory_equal(c, MSG_HDR, cl);
	sample_free(&s);
}

static void test_orcpt(void **state)
{
	struct sample s;

	s_orcpt(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.failed, 6);
	assert_true(has(&s, "\r\n\r\nOriginal-Recipient: rfc822; B+x=y@Example.Net\r\n"
			    "Final-Recipient: rfc822; b@example.net\r\n"));
	assert_true(has(&s, "\r\n\r\nFinal-Recipient: rfc822; c@example.net\r\n"));
	assert_true(has(&s, "\r\n\r\nOriginal-Recipient: utf-8; j\\x{F6}rg@example.net\r\n"
			    "Final-Recipient: rfc822; d@example.net\r\n"));
	/* decodes to CR LF: left out, never a header injection */
	assert_true(has(&s, "\r\n\r\nFinal-Recipient: rfc822; e@example.net\r\n"));
	assert_false(has(&s, "Bcc"));
	assert_true(has(&s, "\r\n\r\nFinal-Recipient: rfc822; f@example.net\r\n"));
	/* rfc822 ORCPT with 8-bit octets after decoding: downgraded to utf-8-addr-xtext */
	assert_true(has(&s, "\r\n\r\nOriginal-Recipient: utf-8; g\\x{E9}@example.net\r\n"
			    "Final-Recipient: rfc822; g@example.net\r\n"));
	assert_int_equal(count(&s, "Original-Recipient:"), 3);
	sample_free(&s);
}

static void test_envid_ret_hdrs(void **state)
{
	struct sample s;
	const char *c;
	size_t cl;

	s_envid_hdrs(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_true(has(&s,
			"message/delivery-status\r\n\r\nOriginal-Envelope-Id: QQ+314\r\nReporting-MTA: dns; "
			"mx.test\r\n"));
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS);
	assert_true(has(&s, "Content-Type: text/rfc822-headers\r\n\r\n"));
	assert_false(has(&s, "Hello world."));
	assert_true(has(&s, "you asked for headers only"));
	orig_part(&s, &c, &cl);
	assert_int_equal(cl, strlen(MSG_HDR));
	assert_memory_equal(c, MSG_HDR, cl);
	sample_free(&s);

	s_ret_full(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_true(has(&s, "\r\nOriginal-Envelope-Id: abc\r\n"));
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_FULL);
	assert_true(has(&s, "Hello world."));
	assert_true(has(&s, "Your message is attached."));
	sample_free(&s);
}

static void test_notify(void **state)
{
	struct sample s;

	s_notify(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.failed, 1);
	assert_int_equal(s.res.delayed, 1);
	assert_false(has(&s, "never@"));
	assert_false(has(&s, "delayonly@"));
	assert_false(has(&s, "failonly@"));
	assert_true(has(&s, "Final-Recipient: rfc822; delayed@example.net\r\nAction: delayed\r\n"));
	assert_true(has(&s, "Final-Recipient: rfc822; failed@example.net\r\nAction: failed\r\n"));
	sample_free(&s);

	/* nothing left: no DSN, nothing written */
	sample_init(&s, "none");
	add_rcpt(&s, "never@example.net", "NOTIFY=NEVER", DLV_DSN_FAILED, "5.1.1", "550 a");
	add_rcpt(&s, "x@example.net", "NOTIFY=SUCCESS", DLV_DSN_FAILED, "5.1.1", "550 a");
	add_rcpt(&s, "y@example.net", "NOTIFY=FAILURE", DLV_DSN_DELAYED, "4.1.1", "450 a");
	assert_int_equal(sample_build(&s), -ENODATA);
	assert_int_equal(s.out.len, 0);
	sample_free(&s);

	assert_int_equal(dlv_dsn_notify(NULL), DLV_DSN_NOTIFY_ABSENT);
	assert_int_equal(dlv_dsn_notify("ORCPT=rfc822;a@b"), DLV_DSN_NOTIFY_ABSENT);
	assert_int_equal(dlv_dsn_notify("notify=Failure,Delay"),
			 DLV_DSN_NOTIFY_FAILURE | DLV_DSN_NOTIFY_DELAY);
	assert_int_equal(dlv_dsn_notify("X=1  NOTIFY=NEVER"), DLV_DSN_NOTIFY_NEVER);
	assert_true(dlv_dsn_wanted("", DLV_DSN_DELAYED));
	assert_true(dlv_dsn_wanted(NULL, DLV_DSN_FAILED));
	assert_false(dlv_dsn_wanted("NOTIFY=SUCCESS", DLV_DSN_FAILED));
}

static void test_null_sender_and_bad_input(void **state)
{
	struct sample s;

	sample_init(&s, "null");
	s.env.mail_from = "";
	add_rcpt(&s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
	assert_int_equal(sample_build(&s), -EDESTADDRREQ);
	assert_int_equal(s.out.len, 0);
	sample_free(&s);

	sample_init(&s, "norcpt");
	assert_int_equal(sample_build(&s), -EINVAL);
	sample_free(&s);

	sample_init(&s, "ctl");
	add_rcpt(&s, "b@exa\r\nmple.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
	assert_int_equal(sample_build(&s), -EINVAL);
	sample_free(&s);

	sample_init(&s, "sender_ctl");
	s.env.mail_from = "a@b\nBcc: c";
	add_rcpt(&s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
	assert_int_equal(sample_build(&s), -EINVAL);
	sample_free(&s);

	sample_init(&s, "diag_max");
	s.diag_max = DLV_DSN_DIAG_MAX_LIMIT + 1;
	add_rcpt(&s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
	assert_int_equal(sample_build(&s), -EINVAL);
	sample_free(&s);

	/* bad message id, boundary seed, host, clock */
	struct ds_envelope env = {.mail_from = "a@b", .mail_params = ""};
	struct dlv_dsn_rcpt r = {.addr = "b@c", .action = DLV_DSN_FAILED};
	struct dlv_dsn_mem mem = {"x\r\n", 3};
	struct dlv_dsn_buf b = {.max = OUT_MAX};
	struct dlv_dsn_sink sink = {dlv_dsn_buf_write, &b};
	struct dlv_dsn_input in = {.reporting_mta = "mx.test",
				   .message_id = "<a@b>",
				   .boundary_seed = "s1",
				   .now_us = T0_US,
				   .env = &env,
				   .rcpt = &r,
				   .rcpt_count = 1,
				   .orig = {3, dlv_dsn_mem_read, &mem}};
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), 0);
	dlv_dsn_buf_free(&b);
	in.message_id = "a@b";
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.message_id = "<a b@c>";
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.message_id = "<a@b>";
	in.boundary_seed = "s 1";
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.boundary_seed = "s\"1";
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.boundary_seed = "s1";
	in.reporting_mta = "";
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.reporting_mta = "mx.test";
	in.now_us = 0;
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.now_us = T0_US;
	in.rcpt_count = DLV_DSN_RCPT_MAX + 1;
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EINVAL);
	in.rcpt_count = 1;
	assert_int_equal(b.len, 0);

	/* errors of the source and of the sink are returned */
	in.orig.size = 200;
	in.orig.read = read_fail;
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -ENXIO);
	in.orig.read = dlv_dsn_mem_read;
	in.orig.size = 10; /* longer than the memory: read returns 0 early */
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EIO);
	in.orig.size = 3;
	b.max = 100;
	b.len = 0;
	assert_int_equal(dlv_dsn_build(&in, &sink, NULL), -EFBIG);
	dlv_dsn_buf_free(&b);
}

/* Unfold a header field starting at p: its value without CRLF (continuations joined). */
static size_t unfold(const char *p, char *out, size_t cap)
{
	size_t n = 0;
	for (;;) {
		const char *e = strstr(p, "\r\n");
		assert_non_null(e);
		assert_true(n + (size_t)(e - p) < cap);
		memcpy(out + n, p, (size_t)(e - p));
		n += (size_t)(e - p);
		if (e[2] != ' ' && e[2] != '\t')
			break;
		p = e + 2;
	}
	out[n] = '\0';
	return n;
}

static void test_long_diag(void **state)
{
	struct sample s;
	static char v[16384];
	const char *p;
	size_t n;

	s_long_diag(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	p = strstr(s.out.data, "Diagnostic-Code: smtp; 550-5.7.1 first line 550-5.7.1 word");
	assert_non_null(p);
	n = unfold(p, v, sizeof(v));
	/* 4000 octets of text kept (less a trailing space), "..." appended, CR LF and tabs made single spaces
	 */
	assert_true(n <= strlen("Diagnostic-Code: smtp; ") + 4000 + 3);
	assert_true(n >= strlen("Diagnostic-Code: smtp; ") + 3990);
	assert_string_equal(v + n - 3, "...");
	assert_null(strchr(v, '\t'));
	assert_null(strstr(v, "  "));
	/* folded at spaces: every physical line of this field is short */
	for (const char *q = p;; q += 2) {
		const char *e = strstr(q, "\r\n");
		assert_true(e - q <= 78);
		q = e;
		if (q[2] != ' ')
			break;
	}

	p = strstr(s.out.data, "Diagnostic-Code: smtp; 550\r\n xxx");
	assert_non_null(p);
	n = unfold(p, v, sizeof(v));
	/* a run of 2996 octets without spaces: broken three times at 990 columns by CRLF SP (each unfolds
	 * with one added space); not cut (diag_max 4000) */
	assert_int_equal(n, strlen("Diagnostic-Code: smtp; ") + 2999 + 3);
	assert_non_null(strstr(v, "x??x")); /* the control character and the 8-bit octet */
	sample_free(&s);

	/* the default bound */
	struct sample d;
	sample_init(&d, "long_default");
	add_rcpt(&d, "b@example.net", "", DLV_DSN_FAILED, "5.7.1", nospace_diag);
	assert_int_equal(sample_build(&d), 0);
	check_wellformed(&d);
	p = strstr(d.out.data, "Diagnostic-Code: ");
	n = unfold(p, v, sizeof(v));
	assert_true(n <= strlen("Diagnostic-Code: smtp; ") + DLV_DSN_DIAG_MAX_DEFAULT + 3 + 2);
	sample_free(&d);
}

static void test_big(void **state)
{
	struct sample s;
	const char *c;
	size_t cl;

	s_big(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS);
	assert_true(s.out.len < 16 * 1024);
	assert_true(has(&s, "too large"));
	orig_part(&s, &c, &cl);
	assert_int_equal(cl, strlen(MSG_HDR));
	assert_memory_equal(c, MSG_HDR, cl);
	sample_free(&s);

	/* header section over orig_hdrs_max: cut at a line end */
	s_big_headers(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS_CUT);
	orig_part(&s, &c, &cl);
	assert_true(cl <= 8192 && cl > 8000);
	assert_memory_equal(c, s.orig, cl);
	assert_true(c[cl - 2] == '\r' && c[cl - 1] == '\n');
	sample_free(&s);

	/* one line longer than orig_hdrs_max and no line end: cut mid-line, quoted-printable */
	static char one_line[3000];
	memset(one_line, 'h', sizeof(one_line));
	sample_init(&s, "one_line");
	s.orig = one_line;
	s.orig_len = sizeof(one_line);
	s.hdrs_max = 1000;
	s.full_max = 1000;
	add_rcpt(&s, "b@example.net", "", DLV_DSN_FAILED, "5.1.1", "550 no");
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS_CUT);
	assert_true(has(
		&s, "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n"));
	sample_free(&s);
}

static void test_8bit(void **state)
{
	struct sample s;
	const char *c;
	size_t cl;

	s_8bit(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS);
	assert_false(s.res.body_8bit);
	assert_true(has(
		&s, "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
		    "Received: by mx.test\r\nSubject: caf=C3=A9 =3D?x?=3D =20\r\nFrom: <a@example.org>\r\n"
		    "\r\n--" BOUNDARY "--\r\n"));
	assert_true(has(&s, "8-bit"));
	assert_true(has(&s, "\r\nContent-Transfer-Encoding: 7bit\r\n"));
	sample_free(&s);

	s_8bit_allowed(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_FULL);
	assert_true(s.res.body_8bit);
	assert_true(has(&s, "\r\nContent-Transfer-Encoding: 8bit\r\n"));
	assert_true(has(&s, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"));
	orig_part(&s, &c, &cl);
	assert_int_equal(cl, strlen(MSG_8BIT));
	assert_memory_equal(c, MSG_8BIT, cl);
	sample_free(&s);
}

static void test_collide_utf8_barelf(void **state)
{
	struct sample s;

	s_collide(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_true(s.res.boundary_collided);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS);
	assert_false(has(&s, "before"));
	sample_free(&s);

	s_utf8(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_true(s.res.smtputf8);
	assert_false(s.res.body_8bit);
	assert_true(has(&s, "\r\nTo: <j\xc3\xb6rg@example.org>\r\n"));
	assert_true(has(&s, "\r\nFinal-Recipient: utf-8; \\x{53D7}\\x{2B}x\\x{3D}y@example.net\r\n"));
	assert_true(has(
		&s,
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"));
	assert_true(has(&s, "<=E5=8F=97+x=3Dy@example.net>"));
	sample_free(&s);

	s_bare_lf(&s);
	assert_int_equal(sample_build(&s), 0);
	check_wellformed(&s);
	assert_int_equal(s.res.orig, DLV_DSN_ORIG_HEADERS);
	assert_true(has(&s, "quoted-printable\r\n\r\nSubject: bare=0AX-A: b\r\n\r\n--"));
	sample_free(&s);
}

static void test_xtext(void **state)
{
	char out[16];

	assert_int_equal(dlv_dsn_xtext_decode("a+2Bb", 5, out, sizeof(out)), 3);
	assert_string_equal(out, "a+b");
	assert_int_equal(dlv_dsn_xtext_decode("+3D", 3, out, sizeof(out)), 1);
	assert_string_equal(out, "=");
	assert_int_equal(dlv_dsn_xtext_decode("a+2", 3, out, sizeof(out)), -EINVAL);
	assert_int_equal(dlv_dsn_xtext_decode("a+", 2, out, sizeof(out)), -EINVAL);
	assert_int_equal(dlv_dsn_xtext_decode("a+2b", 4, out, sizeof(out)), -EINVAL);
	assert_int_equal(dlv_dsn_xtext_decode("+00", 3, out, sizeof(out)), -EINVAL);
	assert_int_equal(dlv_dsn_xtext_decode("abcd", 4, out, 4), -ENOSPC);
	assert_int_equal(dlv_dsn_xtext_decode("abc", 3, out, 4), 3);
	assert_int_equal(dlv_dsn_xtext_decode("", 0, out, 1), 0);

	const char *v;
	size_t vl;
	assert_true(dlv_dsn_param("NOTIFY=NEVER orcpt=rfc822;x@y", "ORCPT", &v, &vl));
	assert_int_equal(vl, strlen("rfc822;x@y"));
	assert_false(dlv_dsn_param("XORCPT=1 ORCPTX=2", "ORCPT", &v, &vl));
	assert_false(dlv_dsn_param(NULL, "ORCPT", &v, &vl));
}

/* The same DSN whatever the read sizes; and every sample is deterministic. */
static void test_short_reads_deterministic(void **state)
{
	for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		struct sample a, b;
		samples[i](&a);
		samples[i](&b);
		b.short_reads = !a.short_reads;
		assert_int_equal(sample_build(&a), 0);
		assert_int_equal(sample_build(&b), 0);
		check_wellformed(&a);
		assert_int_equal(a.out.len, b.out.len);
		assert_memory_equal(a.out.data, b.out.data, a.out.len);
		sample_free(&a);
		sample_free(&b);
	}
}

/* ---- --write DIR ---- */

static int write_file(const char *dir, const char *name, const char *ext, const void *data, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.%s", dir, name, ext);
	f = fopen(path, "wb");
	if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		return 1;
	}
	return 0;
}

static int write_samples(const char *dir)
{
	static const char *const orig_names[] = {"full", "headers", "headers_cut"};
	char path[4096];
	FILE *m;

	snprintf(path, sizeof(path), "%s/manifest.jsonl", dir);
	m = fopen(path, "w");
	if (!m) {
		perror(path);
		return 1;
	}
	for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		struct sample s;
		samples[i](&s);
		if (sample_build(&s) != 0) {
			fprintf(stderr, "%s: %s\n", s.name, strerror(-s.rc));
			return 1;
		}
		if (write_file(dir, s.name, "eml", s.out.data, s.out.len) ||
		    write_file(dir, s.name, "orig", s.orig, s.orig_len))
			return 1;
		fprintf(m,
			"{\"name\": \"%s\", \"boundary\": \"%s\", \"failed\": %u, \"delayed\": %u, \"orig\": "
			"\"%s\", "
			"\"body_8bit\": %s, \"smtputf8\": %s}\n",
			s.name, BOUNDARY, s.res.failed, s.res.delayed, orig_names[s.res.orig],
			s.res.body_8bit ? "true" : "false", s.res.smtputf8 ? "true" : "false");
		sample_free(&s);
	}
	return fclose(m) != 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--write") == 0)
		return write_samples(argv[2]);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_failed),
		cmocka_unit_test(test_mixed),
		cmocka_unit_test(test_delayed_only),
		cmocka_unit_test(test_orcpt),
		cmocka_unit_test(test_envid_ret_hdrs),
		cmocka_unit_test(test_notify),
		cmocka_unit_test(test_null_sender_and_bad_input),
		cmocka_unit_test(test_long_diag),
		cmocka_unit_test(test_big),
		cmocka_unit_test(test_8bit),
		cmocka_unit_test(test_collide_utf8_barelf),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_short_reads_deterministic),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	free(big_orig);
	free(long_hdr_orig);
	return r;
}
