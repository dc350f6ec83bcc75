/* SPDX-License-Identifier: MIT */
/* cmocka unit tests of the core/ parser pieces. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "smtp_internal.h"

static int path(const char *s, bool utf8, struct smtp_path *p)
{
	size_t used = 0;
	int r = smtp_parse_path(s, strlen(s), utf8, &used, p);
	if (r == 0)
		assert_int_equal(used, strlen(s));
	return r;
}

static void test_paths(void **st)
{
	struct smtp_path p;

	assert_int_equal(path("<a@example.com>", false, &p), 0);
	assert_int_equal(p.mailbox_len, 13);
	assert_int_equal(p.domain_len, 11);
	assert_false(p.domain_literal);
	assert_int_equal(path("<>", false, &p), 0);
	assert_true(p.null_path);
	assert_int_equal(path("<postmaster>", false, &p), 0);
	assert_null(p.domain);
	assert_int_equal(path("<user>", false, &p), -EINVAL);
	assert_int_equal(path("<\"x y\\\"z\"@example.com>", false, &p), 0);
	assert_int_equal(path("<\"unterminated@example.com>", false, &p), -EINVAL);
	assert_int_equal(path("<@a.test,@b.test:u@example.com>", false, &p), 0);
	assert_int_equal(p.mailbox_len, strlen("u@example.com"));
	assert_int_equal(path("<u@[192.0.2.1]>", false, &p), 0);
	assert_true(p.domain_literal);
	assert_int_equal(path("<u@[IPv6:::1]>", false, &p), 0);
	assert_int_equal(path("<u@[IPv6:zz]>", false, &p), -EINVAL);
	assert_int_equal(path("<u@[x-tag:abc]>", false, &p), 0);
	assert_int_equal(path("<u@[1.2.3]>", false, &p), -EINVAL);
	assert_int_equal(path("a@example.com", false, &p), -EINVAL);
	assert_int_equal(path("<a@example.com", false, &p), -EINVAL);
	assert_int_equal(path("<a.@example.com>", false, &p), -EINVAL);
	assert_int_equal(path("<a@example-.com>", false, &p), -EINVAL);
	assert_int_equal(path("<a@.example.com>", false, &p), -EINVAL);
	/* UTF-8 only when allowed, and only well-formed. */
	assert_int_equal(path("<\xc3\xbc@example.com>", false, &p), -EILSEQ);
	assert_int_equal(path("<\xc3\xbc@example.com>", true, &p), 0);
	assert_true(p.utf8);
	assert_int_equal(path("<\xc0\xaf@example.com>", true, &p), -EILSEQ);
	assert_int_equal(path("<\xed\xa0\x80@example.com>", true, &p), -EILSEQ);
}

static void test_path_limits(void **st)
{
	char buf[600];
	struct smtp_path p;

	/* local part 64 ok, 65 too long */
	memset(buf, 0, sizeof(buf));
	buf[0] = '<';
	memset(buf + 1, 'a', 64);
	strcpy(buf + 65, "@example.com>");
	assert_int_equal(path(buf, false, &p), 0);
	buf[0] = '<';
	memset(buf + 1, 'a', 65);
	strcpy(buf + 66, "@example.com>");
	assert_int_equal(path(buf, false, &p), -ENAMETOOLONG);
	/* path over 256 octets with valid labels */
	strcpy(buf, "<a@");
	for (int i = 0; i < 5; i++)
		strcat(buf, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.");
	strcat(buf, "com>");
	assert_int_equal(path(buf, false, &p), -ENAMETOOLONG);
	/* label over 63 */
	strcpy(buf, "<a@");
	memset(buf + 3, 'c', 64);
	strcpy(buf + 67, ".com>");
	assert_int_equal(path(buf, false, &p), -EINVAL);
}

static void test_u64(void **st)
{
	uint64_t v;

	assert_int_equal(smtp_parse_u64("0", 1, 10, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(smtp_parse_u64("18446744073709551615", 20, UINT64_MAX, &v), 0);
	assert_true(v == UINT64_MAX);
	assert_int_equal(smtp_parse_u64("18446744073709551616", 20, UINT64_MAX, &v), -EOVERFLOW);
	assert_int_equal(smtp_parse_u64("99999999999999999999999", 23, UINT64_MAX, &v), -EOVERFLOW);
	assert_int_equal(smtp_parse_u64("11", 2, 10, &v), -EOVERFLOW);
	assert_int_equal(smtp_parse_u64("-1", 2, 10, &v), -EINVAL);
	assert_int_equal(smtp_parse_u64("", 0, 10, &v), -EINVAL);
	assert_int_equal(smtp_parse_u64("1a", 2, 10, &v), -EINVAL);
}

static int mparams(const char *s, struct smtp_mail_params *mp)
{
	return smtp_parse_mail_params(s, strlen(s), false, mp);
}

static void test_mail_params(void **st)
{
	struct smtp_mail_params mp;

	assert_int_equal(mparams("", &mp), 0);
	assert_int_equal(mparams("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x+2By PRDR", &mp), 0);
	assert_true(mp.has_size && mp.size == 1000 && mp.smtputf8 && mp.prdr &&
		    mp.body == SMTP_BODY_8BITMIME);
	assert_int_equal(mparams("size=9223372036854775807", &mp), 0);
	assert_int_equal(mparams("SIZE=9223372036854775808", &mp), -EOVERFLOW);
	assert_int_equal(mparams("SIZE=-5", &mp), -EINVAL);
	assert_int_equal(mparams("SIZE", &mp), -EINVAL);
	assert_int_equal(mparams("SIZE=1 SIZE=1", &mp), -EPROTO);
	assert_int_equal(mparams("BODY=BINARYMIME", &mp), 0);
	assert_int_equal(mp.body, SMTP_BODY_BINARYMIME);
	assert_int_equal(mparams("BODY=X", &mp), -EINVAL);
	assert_int_equal(mparams("SMTPUTF8=yes", &mp), -EINVAL);
	assert_int_equal(mparams("XYZ=1", &mp), -ENOTSUP);
	assert_int_equal(mparams("=1", &mp), -EINVAL);
	assert_int_equal(smtp_parse_mail_params("PRDR", 4, true, &mp), -ENOTSUP);
	char envid[120];
	memset(envid, 'a', sizeof(envid));
	memcpy(envid, "ENVID=", 6);
	envid[6 + 101] = '\0';
	assert_int_equal(mparams(envid, &mp), -EINVAL);
	envid[6 + 100] = '\0';
	assert_int_equal(mparams(envid, &mp), 0);
}

static void test_rcpt_params(void **st)
{
	const char *ok[] = {"", "NOTIFY=NEVER", "NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;a+40b",
			    "NOTIFY=DELAY ORCPT=rfc822;x@y"};
	const char *bad[] = {
		"NOTIFY=",  "NOTIFY=NEVER,SUCCESS", "NOTIFY=SUCCESS,SUCCESS", "ORCPT=rfc822",
		"ORCPT=;x", "ORCPT=rfc822;a+4",	    "ORCPT=rfc822;a=b",	      "NOTIFY=DELAY NOTIFY=DELAY"};

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		assert_int_equal(smtp_parse_rcpt_params(ok[i], strlen(ok[i]), false), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_true(smtp_parse_rcpt_params(bad[i], strlen(bad[i]), false) < 0);
	assert_int_equal(smtp_parse_rcpt_params("X=1", 3, false), -ENOTSUP);
}

static void test_xtext(void **st)
{
	assert_true(smtp_xtext_valid("abc", 3));
	assert_true(smtp_xtext_valid("a+2Bb", 5));
	assert_false(smtp_xtext_valid("a+2b", 4));
	assert_false(smtp_xtext_valid("a+2", 3));
	assert_false(smtp_xtext_valid("a+", 2));
	assert_false(smtp_xtext_valid("a=b", 3));
	assert_false(smtp_xtext_valid("a b", 3));
	assert_false(smtp_xtext_valid("\x7f", 1));
}

static void test_session_size(void **st)
{
	struct smtp_config cfg;

	smtp_config_defaults(&cfg);
	/* Fixed per-session memory: small, whatever the client sends. */
	assert_true(smtp_session_size(&cfg) < 2048 + cfg.max_cmd_line);
	cfg.max_cmd_line = 1u << 30;
	assert_true(smtp_session_size(&cfg) < 2048 + 65536);
}

static void test_domains(void **st)
{
	const char *doms[] = {"example.com", ".example.net"};
	struct smtp_config cfg;

	smtp_config_defaults(&cfg);
	cfg.accept_domains = doms;
	cfg.accept_domain_count = 2;
#define ACC(d) smtp_domain_accepted(&cfg, d, strlen(d))
	assert_true(ACC("example.com"));
	assert_true(ACC("EXAMPLE.COM"));
	assert_false(ACC("a.example.com"));
	assert_false(ACC("xexample.com"));
	assert_true(ACC("a.example.net"));
	assert_true(ACC("a.b.EXAMPLE.net"));
	assert_false(ACC("example.net"));
	assert_false(ACC("aexample.net"));
	assert_false(ACC("[192.0.2.1]"));
	assert_false(ACC(""));
}

static void test_command(void **st)
{
	struct smtp_cmd c;
#define CMD(s) smtp_parse_command((const uint8_t *)(s), strlen(s), &c)
	assert_int_equal(CMD("mail from:<a@b>  SIZE=1  \r\n"), 0);
	assert_int_equal(c.verb, SMTP_VERB_MAIL);
	assert_int_equal(c.arg_len, strlen("<a@b>  SIZE=1"));
	assert_int_equal(CMD("MAIL FROM: <a@b>\r\n"), 0);
	assert_int_equal(CMD("MAIL  FROM:<a@b>\r\n"), -EINVAL);
	assert_int_equal(CMD("RCPT TO:<a@b>\r\n"), 0);
	assert_int_equal(c.verb, SMTP_VERB_RCPT);
	assert_int_equal(CMD("NOOP\n"), -EILSEQ);
	assert_int_equal(CMD("NO\rOP\r\n"), -EILSEQ);
	assert_int_equal(CMD("NO\nOP\r\n"), -EILSEQ);
	assert_int_equal(smtp_parse_command((const uint8_t *)"NO\0P\r\n", 6, &c), -EBADMSG);
	assert_int_equal(smtp_parse_command((const uint8_t *)"NO\0P\r\r\n", 7, &c), -EILSEQ);
	assert_int_equal(CMD("NOOP\r\r\n"), -EILSEQ);
	assert_int_equal(CMD("XYZZY\r\n"), 0);
	assert_int_equal(c.verb, SMTP_VERB_UNKNOWN);
	assert_int_equal(CMD("STARTTLS\r\n"), 0);
	assert_int_equal(c.verb, SMTP_VERB_STARTTLS);
	assert_int_equal(CMD("\r\n"), 0);
	assert_int_equal(c.verb, SMTP_VERB_UNKNOWN);
}

static void scan_all(const char *in, size_t n, char *out, size_t *out_len, bool *end, uint8_t *flags)
{
	struct smtp_data_scan sc;
	size_t pos = 0;

	smtp_data_scan_init(&sc, false, true, 1000);
	*out_len = 0;
	*end = false;
	while (pos < n && !*end) {
		size_t emit;
		size_t c = smtp_data_scan(&sc, (const uint8_t *)in + pos, n - pos, &emit, end);
		memcpy(out + *out_len, in + pos, emit);
		*out_len += emit;
		pos += c;
	}
	*flags = sc.flags;
}

static void test_data_scan(void **st)
{
	char out[256];
	size_t n;
	bool end;
	uint8_t flags;
	const char *m = "a\r\n..b\r\n.c\r\n.\r\nTRAILING";

	scan_all(m, strlen(m), out, &n, &end, &flags);
	assert_true(end);
	assert_int_equal(flags, 0);
	assert_int_equal(n, strlen("a\r\n.b\r\nc\r\n"));
	assert_memory_equal(out, "a\r\n.b\r\nc\r\n", n);
	const char *smuggle[] = {"a\n.\nb",   "a\r.\rb",   "a\r\n.\rb",
				 "a\r\n.\nb", "a\n.\r\nb", "a\r\r\n.\r\r\nb"};
	for (size_t i = 0; i < sizeof(smuggle) / sizeof(smuggle[0]); i++) {
		scan_all(smuggle[i], strlen(smuggle[i]), out, &n, &end, &flags);
		assert_false(end);
		assert_true(flags & SMTP_SCAN_BAD);
	}
	scan_all("a\r\n\0.\r\n", 7, out, &n, &end, &flags);
	assert_false(end);
	assert_true(flags & SMTP_SCAN_BAD);
}

/*
 * Whole-buffer scans (SIMD path, the 64-octet block path over whole lines,
 * and the CRLF fast path in MID that needs two octets of lookahead) equal
 * one-octet-at-a-time scans, on random bodies, DATA and BDAT (raw) alike:
 * octet soup, and mail-like lines (0-150 octets against a 100-octet limit,
 * some dot-stuffed, a rare bare CR, LF or NUL, now and then the end marker).
 * The content passed on must match only for a message that is not bad: a
 * bad one is refused at its end and never stored (and ".\r" followed by
 * another octet in the next call drops that CR, where one buffer keeps it).
 */
static size_t mail_lines(uint8_t *in, size_t cap, uint32_t *rng)
{
	static const uint8_t odd[] = "\r\n\0";
	size_t n = 0;

	while (n + 160 < cap) {
		*rng = *rng * 1103515245u + 12345u;
		uint32_t r = *rng >> 8, len = r % 151;
		if (r % 7 == 0)
			in[n++] = '.';
		for (uint32_t k = 0; k < len; k++) {
			*rng = *rng * 1103515245u + 12345u;
			uint32_t q = *rng >> 8;
			in[n++] = q % 20000 ? (uint8_t)('a' + q % 26) : odd[(q >> 9) % 3];
		}
		if (r % 500 == 1) {
			memcpy(in + n, "\r\n.", 3);
			n += 3;
		}
		in[n++] = '\r';
		in[n++] = '\n';
	}
	while (n < cap)
		in[n++] = 'z';
	return n;
}

static void test_data_scan_chunking(void **st)
{
	static const uint8_t alphabet[] = "ab.\r\n\r\n..\0xyz";
	static uint8_t in[4096], out1[4096], out2[4096];
	uint32_t rng = 12345;
	int clean = 0;

	for (int round = 0; round < 1500; round++) {
		bool raw = round & 1;
		size_t n = 0;
		if (round % 3 == 2)
			n = mail_lines(in, sizeof(in), &rng);
		while (n < sizeof(in)) {
			rng = rng * 1103515245u + 12345u;
			uint32_t r = rng >> 16;
			/* Mostly plain runs, sometimes a special octet. */
			in[n++] = (r % 8) ? (uint8_t)('a' + r % 26)
					  : alphabet[(r >> 4) % (sizeof(alphabet) - 1)];
		}
		struct smtp_data_scan a, b;
		size_t pa = 0, pb = 0, na = 0, nb = 0;
		bool ea = false, eb = false;
		smtp_data_scan_init(&a, raw, true, 100);
		smtp_data_scan_init(&b, raw, true, 100);
		while (pa < n && !ea) {
			size_t e;
			size_t c = smtp_data_scan(&a, in + pa, n - pa, &e, &ea);
			memcpy(out1 + na, in + pa, e);
			na += e;
			pa += c;
		}
		while (pb < n && !eb) {
			size_t e;
			size_t c = smtp_data_scan(&b, in + pb, 1, &e, &eb);
			memcpy(out2 + nb, in + pb, e);
			nb += e;
			pb += c;
		}
		assert_int_equal(pa, pb);
		assert_int_equal(ea, eb);
		assert_int_equal(a.flags, b.flags);
		if (a.flags & SMTP_SCAN_BAD)
			continue;
		clean++;
		assert_int_equal(na, nb);
		assert_memory_equal(out1, out2, na);
	}
	/* The mail-like rounds are mostly clean: content is compared in most of them. */
	assert_true(clean >= 250);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_paths),
		cmocka_unit_test(test_path_limits),
		cmocka_unit_test(test_u64),
		cmocka_unit_test(test_mail_params),
		cmocka_unit_test(test_rcpt_params),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_command),
		cmocka_unit_test(test_data_scan),
		cmocka_unit_test(test_session_size),
		cmocka_unit_test(test_data_scan_chunking),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
