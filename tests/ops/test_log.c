/* SPDX-License-Identifier: MIT */
/* Unit tests for obs/log.c: escaping, ring wrap-around, drops, many producers. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ds_envelope.h"
#include "log.h"

static void check_escape(const char *src, size_t len, const char *want)
{
	char out[128];
	size_t n = obs_log_escape(out, sizeof(out), src, len);
	if (strcmp(out, want) != 0)
		fail_msg("escape of '%.*s': got [%s] want [%s]", (int)len, src, out, want);
	assert_int_equal(n, strlen(want));
}

#define ESC(s, want) check_escape(s, sizeof(s) - 1, want)

static void test_escape(void **state)
{
	ESC("abc", "abc");
	ESC("user@example.com", "user@example.com");
	ESC("", "\"\"");
	ESC("a b", "\"a b\"");
	ESC("a\"b", "\"a\\\"b\"");
	ESC("a\\b", "\"a\\\\b\"");
	ESC("a=b", "\"a=b\"");
	ESC("x\r\n\t", "\"x\\r\\n\\t\"");
	ESC("\x01", "\"\\x01\"");
	ESC("\x7f", "\"\\x7f\"");
	ESC("caf\xc3\xa9", "\"caf\\xc3\\xa9\"");
	ESC("a\0b", "\"a\\x00b\"");
	ESC("[192.0.2.1]", "[192.0.2.1]");

	/* Truncation never splits an escape and always closes the quote. */
	char out[8];
	size_t n = obs_log_escape(out, sizeof(out), "\x01\x02", 2);
	assert_string_equal(out, "\"\\x01\"");
	assert_int_equal(n, 6);
	n = obs_log_escape(out, sizeof(out), "abcdefghij", 10);
	assert_string_equal(out, "abcdefg");
	n = obs_log_escape(out, sizeof(out), "abcdefgh ij", 11); /* long plain prefix, then quoting */
	assert_string_equal(out, "\"abcde\"");
	assert_int_equal(n, 7);
	n = obs_log_escape(out, sizeof(out), "abc\"", 4);
	assert_string_equal(out, "\"abc\\\"\"");
	n = obs_log_escape(out, sizeof(out), "abcd\"", 5); /* the escape does not fit: cut before it */
	assert_string_equal(out, "\"abcd\"");
	n = obs_log_escape(out, 2, "a b", 3);
	assert_string_equal(out, "");
	assert_int_equal(n, 0);
}

/* Inverse of the logfmt escaping, as a log reader would do it. */
static size_t unescape(const char *in, char *out)
{
	size_t n = strlen(in), o = 0;
	if (n == 0 || in[0] != '"') {
		memcpy(out, in, n);
		return n;
	}
	assert_true(n >= 2 && in[n - 1] == '"');
	for (size_t i = 1; i < n - 1; i++) {
		unsigned char c = (unsigned char)in[i];
		assert_true(c >= ' ' && c < 0x7f &&
			    c != '"'); /* nothing raw that a terminal or parser chokes on */
		if (c != '\\') {
			out[o++] = (char)c;
			continue;
		}
		c = (unsigned char)in[++i];
		if (c == 'n')
			out[o++] = '\n';
		else if (c == 'r')
			out[o++] = '\r';
		else if (c == 't')
			out[o++] = '\t';
		else if (c == 'x') {
			unsigned v;
			assert_int_equal(sscanf(in + i + 1, "%2x", &v), 1);
			out[o++] = (char)v;
			i += 2;
		} else {
			assert_true(c == '"' || c == '\\');
			out[o++] = (char)c;
		}
	}
	return o;
}

/* Random byte strings: the escaped form is printable, one token, and decodes back exactly. */
static void test_escape_roundtrip(void **state)
{
	uint64_t x = 0x5eed2026;
	char src[64], esc[64 * 4 + 3], back[64];
	for (int iter = 0; iter < 50000; iter++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		size_t len = (size_t)(x >> 58);
		for (size_t i = 0; i < len; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			/* Mostly printable, with every kind of special byte now and then. */
			unsigned r = (unsigned)(x >> 40);
			src[i] = (char)(r % 4 ? ' ' + r % 95 : r >> 8);
		}
		size_t n = obs_log_escape(esc, sizeof(esc), src, len);
		assert_int_equal(strlen(esc), n);
		assert_null(memchr(esc, ' ', esc[0] == '"' ? 0 : n)); /* unquoted: no space, so one token */
		assert_null(strchr(esc[0] == '"' ? "" : esc, '='));
		size_t m = unescape(esc, back);
		assert_int_equal(m, len);
		assert_memory_equal(back, src, len);
	}
}

/* Reads the whole tmpfile. */
static char *slurp(FILE *f)
{
	fflush(f);
	long len = ftell(f);
	assert_true(len >= 0);
	char *buf = malloc((size_t)len + 1);
	assert_non_null(buf);
	rewind(f);
	assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
	buf[len] = 0;
	return buf;
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void test_lines(void **state)
{
	FILE *f = tmpfile();
	assert_non_null(f);
	struct obs_log *l;
	assert_int_equal(obs_log_create(&l, 1, 8192, f, OBS_LOG_INFO), 0);
	struct obs_log_ring *r = obs_log_ring(l, 0);

	struct ds_rcpt rcpt[2] = {{"a@example.com", ""}, {"b@example.com", ""}};
	struct ds_envelope env = {
		.client_addr = "192.0.2.7",
		.helo = "evil host\r\n",
		.mail_from = "",
		.rcpt = rcpt,
		.rcpt_count = 2,
		.tls = "",
		.body_size = 1234,
	};
	assert_int_equal(obs_log_accepted(r, "0001a2b3", &env, 77), 0);
	env.tls = "TLSv1.3 TLS1-3-AES-128-GCM-SHA256";
	env.mail_from = "s@example.org";
	assert_int_equal(obs_log_accepted(r, "0001a2b4", &env, 5), 0);
	struct obs_log_refusal ref = {.reason = "limit_per_ip", .code = 421, .client = "::1"};
	assert_int_equal(obs_log_refused(r, &ref), 0);

	/* Filtered levels cost nothing and write nothing. */
	assert_false(obs_log_begin(r, OBS_LOG_DEBUG, "noise"));
	obs_log_set_level(l, OBS_LOG_WARN);
	assert_int_equal(obs_log_accepted(r, "filtered", &env, 1), 0);
	assert_true(obs_log_begin(r, OBS_LOG_ERROR, "boom"));
	obs_log_str(r, "err", "disk on fire");
	assert_int_equal(obs_log_end(r), 0);

	/* A line too long is cut at a field boundary and marked. */
	obs_log_set_level(l, OBS_LOG_DEBUG);
	char big[600];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	assert_true(obs_log_begin(r, OBS_LOG_DEBUG, "long"));
	for (int i = 0; i < 8; i++)
		obs_log_str(r, "v", big);
	assert_int_equal(obs_log_end(r), 0);

	obs_log_drain(l);
	char *out = slurp(f);
	assert_int_equal(count_lines(out), 5);
	char *line = strtok(out, "\n");
	/* ts=YYYY-MM-DDTHH:MM:SS.uuuuuuZ */
	assert_int_equal(strncmp(line, "ts=", 3), 0);
	assert_int_equal(line[13], 'T');
	assert_int_equal(line[29], 'Z');
	assert_string_equal(line + 30,
			    " level=info event=accepted queue_id=0001a2b3 client=192.0.2.7 "
			    "helo=\"evil host\\r\\n\" sender=\"\" rcpts=2 size=1234 tls=none gap_us=77");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=info event=accepted queue_id=0001a2b4 client=192.0.2.7 "
				       "helo=\"evil host\\r\\n\" sender=s@example.org rcpts=2 size=1234 "
				       "tls=\"TLSv1.3 TLS1-3-AES-128-GCM-SHA256\" gap_us=5");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=info event=refused reason=limit_per_ip code=421 client=::1 "
				       "helo=\"\" sender=\"\"");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=error event=boom err=\"disk on fire\"");
	line = strtok(NULL, "\n");
	assert_int_equal(strncmp(line + 30, " level=debug event=long v=xxxx", 30), 0);
	assert_true(strlen(line) - 30 - strlen(" level=debug ") <= OBS_LOG_LINE_MAX);
	assert_non_null(strstr(line, " truncated=true"));
	assert_int_equal(strlen(strstr(line, " truncated=true")), strlen(" truncated=true"));
	free(out);
	obs_log_destroy(l);
	fclose(f);
}

/* Producer and consumer in one thread, crossing the ring's end thousands of times. */
static void test_wrap(void **state)
{
	FILE *f = tmpfile();
	assert_non_null(f);
	struct obs_log *l;
	assert_int_equal(obs_log_create(&l, 1, 4096, f, OBS_LOG_INFO), 0);
	struct obs_log_ring *r = obs_log_ring(l, 0);
	char pad[200];
	memset(pad, 'p', sizeof(pad));
	unsigned written = 0;
	const unsigned total = 20000;
	for (unsigned i = 0; i < total; i++) {
		assert_true(obs_log_begin(r, OBS_LOG_INFO, "w"));
		obs_log_u64(r, "seq", i);
		obs_log_strn(r, "pad", pad, (i * 37) % sizeof(pad) + 1); /* every record size */
		assert_int_equal(obs_log_end(r), 0);
		written++;
		if (i % 7 == 6)
			obs_log_drain(l);
	}
	obs_log_drain(l);
	assert_int_equal(obs_log_dropped(l, 0), 0);
	assert_int_equal(obs_log_written(l), total);
	char *out = slurp(f);
	unsigned want = 0;
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		unsigned seq;
		char padtxt[256];
		assert_int_equal(sscanf(strstr(line, "event="), "event=w seq=%u pad=%255s", &seq, padtxt), 2);
		assert_int_equal(seq, want);
		assert_int_equal(strlen(padtxt), (seq * 37) % sizeof(pad) + 1);
		want++;
	}
	assert_int_equal(want, total);
	free(out);
	obs_log_destroy(l);
	fclose(f);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

/* A full ring drops lines at once, counts them, and recovers after a drain. */
static void test_full_drops(void **state)
{
	FILE *f = tmpfile();
	assert_non_null(f);
	struct obs_log *l;
	assert_int_equal(obs_log_create(&l, 2, 4096, f, OBS_LOG_INFO), 0);
	struct obs_log_ring *r = obs_log_ring(l, 1);
	unsigned ok = 0, dropped = 0;
	uint64_t t0 = now_ns();
	for (unsigned i = 0; i < 100000; i++) {
		assert_true(obs_log_begin(r, OBS_LOG_INFO, "fill"));
		obs_log_u64(r, "seq", i);
		int ret = obs_log_end(r);
		if (ret == 0) {
			assert_int_equal(dropped, 0); /* no success once full */
			ok++;
		} else {
			assert_int_equal(ret, -ENOBUFS);
			dropped++;
		}
	}
	uint64_t dt = now_ns() - t0;
	/* Never blocks: 100000 calls against a full ring well under a second even under ASan. */
	assert_true(dt < 1000000000ull);
	assert_true(ok > 50 && ok < 4096 / 16);
	assert_int_equal(obs_log_dropped(l, 1), dropped);
	assert_int_equal(obs_log_dropped(l, 0), 0);

	obs_log_drain(l);
	assert_int_equal(obs_log_written(l), ok);
	/* Room again. */
	assert_true(obs_log_begin(r, OBS_LOG_INFO, "after"));
	assert_int_equal(obs_log_end(r), 0);
	obs_log_drain(l);
	char *out = slurp(f);
	assert_int_equal(count_lines(out), ok + 2); /* + the log_dropped report */
	char want[64];
	snprintf(want, sizeof(want), "level=warn event=log_dropped ring=1 lines=%u\n", dropped);
	assert_non_null(strstr(out, want));
	assert_non_null(strstr(out, "event=fill seq=0\n"));
	assert_non_null(strstr(out, "event=after\n"));
	free(out);
	obs_log_destroy(l);
	fclose(f);
}

#define PRODUCERS    4
#define PER_PRODUCER 20000

struct prod {
	struct obs_log_ring *ring;
	unsigned id;
	unsigned retries;
};

static void *producer(void *arg)
{
	struct prod *p = arg;
	for (unsigned i = 0; i < PER_PRODUCER; i++) {
		for (;;) {
			assert_true(obs_log_begin(p->ring, OBS_LOG_INFO, "mp"));
			obs_log_u64(p->ring, "p", p->id);
			obs_log_u64(p->ring, "seq", i);
			obs_log_str(p->ring, "helo", "some client.example");
			if (obs_log_end(p->ring) == 0)
				break;
			/* Full: the test wants every line, so wait for the logger (a worker would not). */
			p->retries++;
			struct timespec d = {0, 100000};
			nanosleep(&d, NULL);
		}
	}
	return NULL;
}

static void test_multi_producer(void **state)
{
	FILE *f = tmpfile();
	assert_non_null(f);
	struct obs_log *l;
	assert_int_equal(obs_log_create(&l, PRODUCERS, 1 << 16, f, OBS_LOG_INFO), 0);
	assert_int_equal(obs_log_start(l), 0);
	pthread_t t[PRODUCERS];
	struct prod p[PRODUCERS];
	for (unsigned i = 0; i < PRODUCERS; i++) {
		p[i] = (struct prod){.ring = obs_log_ring(l, i), .id = i};
		assert_int_equal(pthread_create(&t[i], NULL, producer, &p[i]), 0);
	}
	for (unsigned i = 0; i < PRODUCERS; i++)
		pthread_join(t[i], NULL);
	obs_log_stop(l);
	assert_int_equal(obs_log_written(l), PRODUCERS * PER_PRODUCER);
	char *out = slurp(f);
	unsigned next[PRODUCERS] = {0};
	unsigned lines = 0, reports = 0;
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		if (strstr(line, "event=log_dropped")) {
			reports++;
			continue;
		}
		unsigned id, seq;
		assert_int_equal(sscanf(strstr(line, "event="),
					"event=mp p=%u seq=%u helo=\"some client.example\"", &id, &seq),
				 2);
		assert_true(id < PRODUCERS);
		assert_int_equal(seq, next[id]); /* in order, none lost, none twice */
		next[id]++;
		lines++;
	}
	for (unsigned i = 0; i < PRODUCERS; i++) {
		assert_int_equal(next[i], PER_PRODUCER);
		print_message("producer %u: %u retries on a full ring\n", i, p[i].retries);
	}
	assert_int_equal(lines, PRODUCERS * PER_PRODUCER);
	free(out);
	obs_log_destroy(l);
	fclose(f);
}

/* The delivery stage's lines (issue 14): exact text, derived outcome, levels, a long reply cut last. */
static void test_delivery_lines(void **state)
{
	FILE *f = tmpfile();
	assert_non_null(f);
	struct obs_log *l;
	assert_int_equal(obs_log_create(&l, 1, 16384, f, OBS_LOG_INFO), 0);
	struct obs_log_ring *r = obs_log_ring(l, 0);

	struct obs_log_delivery d = {
		.queue_id = "0001a2b3c4d5e6f7",
		.hop = "lmtp:/run/dovecot/lmtp",
		.attempt = 2,
		.rcpts = 3,
		.delivered = 1,
		.deferred = 1,
		.failed = 1,
		.code = 550,
		.esc = "5.1.1",
		.reply = "<b@example.com> User \"b\" unknown\r",
		.delay_ms = 301234,
		.duration_ms = 12,
		.dsn_id = "0001a2b3c4d5e700",
	};
	assert_string_equal(obs_log_delivery_outcome(&d), "mixed");
	assert_int_equal(obs_log_delivery(r, &d), 0);

	/* All delivered on a first attempt, NULL strings, after a restart: derived "delivered". */
	struct obs_log_delivery ok = {
		.queue_id = "00000000000000aa",
		.hop = "smtp://[::1]:2525",
		.attempt = 1,
		.rcpts = 2,
		.delivered = 2,
		.code = 250,
		.esc = "2.0.0",
		.reply = "Ok: queued as 4ABC",
		.delay_ms = 3,
		.duration_ms = 2,
		.redelivery = true,
	};
	assert_int_equal(obs_log_delivery(r, &ok), 0);
	/* No connection: nothing decided is "deferred"; a caller's outcome wins over the counts. */
	struct obs_log_delivery none = {.queue_id = "q",
					.hop = "smtp://192.0.2.1:25",
					.attempt = 5,
					.rcpts = 1,
					.reply = "connection refused",
					.possible_duplicate = true};
	assert_string_equal(obs_log_delivery_outcome(&none), "deferred");
	assert_int_equal(obs_log_delivery(r, &none), 0);
	struct obs_log_delivery one = {.deferred = 2};
	assert_string_equal(obs_log_delivery_outcome(&one), "deferred");
	one = (struct obs_log_delivery){.failed = 4};
	assert_string_equal(obs_log_delivery_outcome(&one), "failed");
	one.outcome = "delivered";
	assert_string_equal(obs_log_delivery_outcome(&one), "delivered");

	assert_int_equal(obs_log_dsn(r, "0001a2b3c4d5e6f7", "0001a2b3c4d5e700", 1), 0);
	assert_int_equal(obs_log_hop(r, "smtp://192.0.2.1:25", false, "connect: Connection refused"), 0);
	assert_int_equal(obs_log_hop(r, "smtp://192.0.2.1:25", true, NULL), 0);

	/* At warn only the hop going down is logged. */
	obs_log_set_level(l, OBS_LOG_WARN);
	assert_int_equal(obs_log_delivery(r, &d), 0);
	assert_int_equal(obs_log_dsn(r, "x", "y", 1), 0);
	assert_int_equal(obs_log_hop(r, "h2", true, "ok"), 0);
	assert_int_equal(obs_log_hop(r, "h2", false, "timeout"), 0);
	obs_log_set_level(l, OBS_LOG_INFO);

	/* A reply too long for the line is cut; every other field is whole (the reply comes last). */
	char longreply[OBS_LOG_LINE_MAX];
	memset(longreply, 'r', sizeof(longreply) - 1);
	longreply[sizeof(longreply) - 1] = 0;
	char longhop[OBS_LOG_VALUE_MAX];
	memset(longhop, 'h', sizeof(longhop) - 1);
	longhop[sizeof(longhop) - 1] = 0;
	struct obs_log_delivery big = d;
	big.hop = longhop;
	big.reply = longreply;
	assert_int_equal(obs_log_delivery(r, &big), 0);

	obs_log_drain(l);
	char *out = slurp(f);
	assert_int_equal(count_lines(out), 8);
	char *line = strtok(out, "\n");
	assert_string_equal(line + 30,
			    " level=info event=delivery queue_id=0001a2b3c4d5e6f7 hop=lmtp:/run/dovecot/lmtp "
			    "attempt=2 rcpts=3 delivered=1 deferred=1 failed=1 outcome=mixed code=550 "
			    "esc=5.1.1 delay_ms=301234 duration_ms=12 possible_duplicate=false "
			    "redelivery=false dsn_id=0001a2b3c4d5e700 "
			    "reply=\"<b@example.com> User \\\"b\\\" unknown\\r\"");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30,
			    " level=info event=delivery queue_id=00000000000000aa hop=smtp://[::1]:2525 "
			    "attempt=1 rcpts=2 delivered=2 deferred=0 failed=0 outcome=delivered code=250 "
			    "esc=2.0.0 delay_ms=3 duration_ms=2 possible_duplicate=false redelivery=true "
			    "dsn_id=\"\" reply=\"Ok: queued as 4ABC\"");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30,
			    " level=info event=delivery queue_id=q hop=smtp://192.0.2.1:25 attempt=5 "
			    "rcpts=1 delivered=0 deferred=0 failed=0 outcome=deferred code=0 esc=\"\" "
			    "delay_ms=0 duration_ms=0 possible_duplicate=true redelivery=false dsn_id=\"\" "
			    "reply=\"connection refused\"");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=info event=dsn_queued queue_id=0001a2b3c4d5e6f7 "
				       "dsn_id=0001a2b3c4d5e700 failed=1");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=warn event=hop_down hop=smtp://192.0.2.1:25 "
				       "reason=\"connect: Connection refused\"");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=info event=hop_up hop=smtp://192.0.2.1:25 reason=\"\"");
	line = strtok(NULL, "\n");
	assert_string_equal(line + 30, " level=warn event=hop_down hop=h2 reason=timeout");
	line = strtok(NULL, "\n");
	static const char big_start[] = " level=info event=delivery queue_id=0001a2b3c4d5e6f7 hop=hhhh";
	assert_int_equal(strncmp(line + 30, big_start, sizeof(big_start) - 1), 0);
	assert_non_null(strstr(line, " dsn_id=0001a2b3c4d5e700 reply=rrrr"));
	assert_non_null(strstr(line, " delay_ms=301234 duration_ms=12 "));
	assert_int_equal(strlen(strstr(line, " truncated=true")), strlen(" truncated=true"));
	assert_true(strlen(line) - 30 - strlen(" level=info ") <= OBS_LOG_LINE_MAX);
	free(out);
	obs_log_destroy(l);
	fclose(f);
}

static void test_create_limits(void **state)
{
	struct obs_log *l;
	assert_int_equal(obs_log_create(&l, 0, 4096, NULL, OBS_LOG_INFO), -EINVAL);
	assert_int_equal(obs_log_create(&l, 1, 4095, NULL, OBS_LOG_INFO), -EINVAL);
	assert_int_equal(obs_log_create(&l, 1, 6000, NULL, OBS_LOG_INFO), -EINVAL);
	assert_int_equal(obs_log_create(&l, 1, 2048, NULL, OBS_LOG_INFO), -EINVAL);
	assert_int_equal(obs_log_create(&l, OBS_LOG_RINGS_MAX + 1, 4096, NULL, OBS_LOG_INFO), -EINVAL);
	assert_null(l);
	enum obs_log_level lv;
	assert_int_equal(obs_log_level_parse("debug", &lv), 0);
	assert_int_equal(lv, OBS_LOG_DEBUG);
	assert_int_equal(obs_log_level_parse("warn", &lv), 0);
	assert_int_equal(lv, OBS_LOG_WARN);
	assert_int_equal(obs_log_level_parse("verbose", &lv), -EINVAL);
	assert_string_equal(obs_log_level_name(OBS_LOG_ERROR), "error");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape),	      cmocka_unit_test(test_escape_roundtrip),
		cmocka_unit_test(test_lines),	      cmocka_unit_test(test_wrap),
		cmocka_unit_test(test_full_drops),    cmocka_unit_test(test_multi_producer),
		cmocka_unit_test(test_create_limits), cmocka_unit_test(test_delivery_lines),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
