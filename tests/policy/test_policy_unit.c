/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the ingress policy's pieces (issue 17): the recipient
 * table (parse, normalize, lookup, errors with line numbers, the current
 * table and its reload), the throttle table (limits, windows, eviction,
 * keys), trusted networks and the IPv6 prefix key.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "rcpt_table.h"
#include "throttle.h"

static char tmp_path[64];

static const char *write_file(const char *text)
{
	snprintf(tmp_path, sizeof(tmp_path), "/tmp/ds-policy-unit-%d.txt", (int)getpid());
	FILE *f = fopen(tmp_path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return tmp_path;
}

static bool has(const struct io_rcpt_table *t, const char *a)
{
	return io_rcpt_table_has(t, a, strlen(a));
}

static void table_lookup(void **state)
{
	struct io_rcpt_table *t;
	char err[256];
	const char *p =
		write_file("# comment\n\nalice@Example.COM\n  <bob@example.com>  \r\n"
			   "\"q@x\"@example.com\n@Wild.Test\nalice@example.com\ndave@example.com\tOK\n"
			   "erin@example.com  550 no such user\n");
	assert_int_equal(io_rcpt_table_load(p, false, &t, err, sizeof(err)), 0);
	struct io_rcpt_table_info in;
	io_rcpt_table_info(t, &in);
	assert_int_equal(in.addresses, 6);
	assert_int_equal(in.domains, 1);
	assert_int_equal(in.entries, 6);	 /* alice twice: one entry */
	assert_true(has(t, "dave@example.com")); /* Postfix map lines: the value is ignored */
	assert_true(has(t, "erin@example.com"));
	assert_true(has(t, "alice@example.com"));
	assert_true(has(t, "ALICE@EXAMPLE.COM"));
	assert_true(has(t, "bob@example.com"));
	assert_true(has(t, "\"q@x\"@example.com"));
	assert_true(has(t, "anyone@wild.test"));
	assert_true(has(t, "x@WILD.TEST"));
	assert_false(has(t, "carol@example.com"));
	assert_false(has(t, "alice@example.org"));
	assert_false(has(t, "x@sub.wild.test")); /* @domain is that domain only */
	assert_false(has(t, "alice"));
	io_rcpt_table_free(t);

	p = write_file("Alice@example.com\n");
	assert_int_equal(io_rcpt_table_load(p, true, &t, err, sizeof(err)), 0);
	assert_true(has(t, "Alice@EXAMPLE.com"));
	assert_false(has(t, "alice@example.com"));
	io_rcpt_table_free(t);

	p = write_file("");
	assert_int_equal(io_rcpt_table_load(p, false, &t, err, sizeof(err)), 0);
	assert_false(has(t, "a@b"));
	io_rcpt_table_free(t);
	unlink(tmp_path);
}

static void table_errors(void **state)
{
	static const struct {
		const char *text;
		const char *want;
	} cases[] = {
		{"ok@a.test\nno-at-sign\n", ":2: not an address"},
		{"ok@a.test\n\n# c\nx@\n", ":4: no domain"},
		{"a b@c.test\n", ":1: not an address"},
		{"a\x01b@c.test\n", ":1: a control"},
		{"x@[192.0.2.1]\n", ":1: a domain literal"},
		{"0123456789012345678901234567890123456789012345678901234567890123456789@a.test\n",
		 ":1: local part longer"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct io_rcpt_table *t = (void *)1;
		char err[256] = "";
		const char *p = write_file(cases[i].text);
		assert_int_equal(io_rcpt_table_load(p, false, &t, err, sizeof(err)), -EINVAL);
		assert_null(t);
		if (!strstr(err, cases[i].want))
			fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].want);
	}
	char big[IO_RCPT_LINE_MAX + 10];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	struct io_rcpt_table *t;
	char err[256];
	const char *p = write_file(big);
	assert_int_equal(io_rcpt_table_load(p, false, &t, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, ":1: line too long"));
	assert_int_equal(io_rcpt_table_load("/nonexistent/x", false, &t, err, sizeof(err)), -ENOENT);
	unlink(tmp_path);
}

/* Many addresses: every one found, none of a disjoint set (with 64-bit fingerprints, a false hit is ~0). */
static void table_many(void **state)
{
	char path[64], a[64], err[256];
	snprintf(path, sizeof(path), "/tmp/ds-policy-many-%d.txt", (int)getpid());
	FILE *f = fopen(path, "w");
	for (int i = 0; i < 100000; i++)
		fprintf(f, "u%d@d%d.test\n", i, i % 7);
	fclose(f);
	struct io_rcpt_table *t;
	assert_int_equal(io_rcpt_table_load(path, false, &t, err, sizeof(err)), 0);
	for (int i = 0; i < 100000; i++) {
		snprintf(a, sizeof(a), "u%d@d%d.test", i, i % 7);
		assert_true(has(t, a));
		snprintf(a, sizeof(a), "u%d@d%d.test", i, (i + 1) % 7);
		assert_false(has(t, a));
	}
	io_rcpt_table_free(t);
	unlink(path);
}

/* The server's current table: lookups before, a failed reload keeps it, a good one replaces it. */
static void current_reload(void **state)
{
	char err[256];
	assert_int_equal(io_rcpt_lookup("a@b.test", 8), -ENOENT); /* no table configured */
	const char *p = write_file("a@b.test\n");
	assert_int_equal(io_rcpt_start(p, false, err, sizeof(err)), 0);
	assert_true(io_rcpt_enabled());
	assert_int_equal(io_rcpt_lookup("a@b.test", 8), 1);
	assert_int_equal(io_rcpt_lookup("c@b.test", 8), 0);
	write_file("a@b.test\nbroken\n");
	io_rcpt_reload();
	io_rcpt_reload_wait();
	assert_int_equal(io_rcpt_reloads(true), 1);
	assert_int_equal(io_rcpt_lookup("a@b.test", 8), 1);
	write_file("c@b.test\n");
	io_rcpt_reload();
	io_rcpt_reload_wait();
	assert_int_equal(io_rcpt_reloads(false), 1);
	assert_int_equal(io_rcpt_lookup("a@b.test", 8), 0);
	assert_int_equal(io_rcpt_lookup("c@b.test", 8), 1);
	io_rcpt_stop();
	assert_false(io_rcpt_enabled());
	assert_int_equal(io_rcpt_lookup("c@b.test", 8), -ENOENT);
	unlink(tmp_path);
}

/*
 * Readers look up without pause while the table is reloaded 40 times: every
 * answer is right (each file holds the probed address, none holds the
 * other), and no lookup ever reads a freed table (ASan in the sanitizer
 * build: freeing without waiting for the hazard slots is caught here).
 */
struct stress {
	volatile bool stop;
	unsigned long lookups, wrong;
};

static void *stress_reader(void *arg)
{
	struct stress *st = arg;
	while (!st->stop) {
		if (io_rcpt_lookup("keep@b.test", 11) != 1 || io_rcpt_lookup("never@b.test", 12) != 0)
			__atomic_add_fetch(&st->wrong, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&st->lookups, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void reload_stress(void **state)
{
	char err[256], path[64];
	snprintf(path, sizeof(path), "/tmp/ds-policy-stress-%d.txt", (int)getpid());
	FILE *f = fopen(path, "w");
	fprintf(f, "keep@b.test\n");
	for (int i = 0; i < 20000; i++)
		fprintf(f, "filler%d@b.test\n", i);
	fclose(f);
	assert_int_equal(io_rcpt_start(path, false, err, sizeof(err)), 0);
	struct stress st = {0};
	uint64_t before = io_rcpt_reloads(false);
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, stress_reader, &st), 0);
	for (int i = 0; i < 40; i++) {
		io_rcpt_reload();
		io_rcpt_reload_wait();
	}
	st.stop = true;
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(io_rcpt_reloads(false) - before, 40);
	assert_true(st.lookups > 0);
	assert_int_equal(st.wrong, 0);
	io_rcpt_stop();
	unlink(path);
}

static struct io_client_key key_of(const char *text)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (strchr(text, ':')) {
		ss.ss_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, text, &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
	} else {
		ss.ss_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, text, &((struct sockaddr_in *)&ss)->sin_addr), 1);
	}
	struct io_client_key k;
	io_client_key_of(&ss, 64, &k);
	return k;
}

static void throttle_limits(void **state)
{
	const uint32_t limits[IO_THROTTLE_KINDS] = {3, 2, 0};
	struct io_throttle *t;
	assert_int_equal(io_throttle_create(&t, 4096, limits), 0);
	struct io_client_key a = key_of("192.0.2.1"), b = key_of("192.0.2.2");
	int64_t now = 1000;
	for (int i = 0; i < 3; i++)
		assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_CONN, now), 0);
	assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_CONN, now), -EBUSY);
	assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_CONN, now + 59999), -EBUSY);
	assert_int_equal(io_throttle_hit(t, &b, IO_THROTTLE_CONN, now), 0); /* another client */
	assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_MSG, now), 0);  /* kinds count apart */
	assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_MSG, now), 0);
	assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_MSG, now), -EBUSY);
	for (int i = 0; i < 1000; i++) /* a limit of 0 is off */
		assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_RCPT, now), 0);
	/* The window is over: counting starts again. */
	assert_int_equal(io_throttle_hit(t, &a, IO_THROTTLE_CONN, now + IO_THROTTLE_WINDOW_MS), 0);
	/* IPv6: one /64 is one client. */
	struct io_client_key x = key_of("2001:db8::1"), y = key_of("2001:db8::ffff:2"),
			     z = key_of("2001:db8:0:1::1");
	assert_memory_equal(&x, &y, sizeof(x));
	assert_memory_not_equal(&x, &z, sizeof(x));
	for (int i = 0; i < 3; i++)
		assert_int_equal(io_throttle_hit(t, i & 1 ? &x : &y, IO_THROTTLE_CONN, now), 0);
	assert_int_equal(io_throttle_hit(t, &x, IO_THROTTLE_CONN, now), -EBUSY);
	assert_int_equal(io_throttle_hit(t, &z, IO_THROTTLE_CONN, now), 0);
	io_throttle_destroy(t);
}

/* Far more clients than entries: bounded memory, a busy client stays limited, none refused wrongly. */
static void throttle_eviction(void **state)
{
	const uint32_t limits[IO_THROTTLE_KINDS] = {1, 0, 0};
	struct io_throttle *t;
	assert_int_equal(io_throttle_create(&t, IO_THROTTLE_ENTRIES_MIN, limits), 0);
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_INET;
	int64_t now = 5000;
	struct io_client_key busy = key_of("198.51.100.1");
	assert_int_equal(io_throttle_hit(t, &busy, IO_THROTTLE_CONN, now), 0);
	for (uint32_t i = 0; i < 100000; i++) {
		((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(0x0a000000u + i);
		struct io_client_key k;
		io_client_key_of(&ss, 64, &k);
		/* Each new client's first connection is always taken, whatever was forgotten. */
		assert_int_equal(io_throttle_hit(t, &k, IO_THROTTLE_CONN, now + i / 100), 0);
		/* A client that keeps trying is the most recent in its set: never forgotten, stays limited.
		 */
		if (i % 10 == 0)
			assert_int_equal(io_throttle_hit(t, &busy, IO_THROTTLE_CONN, now + i / 100), -EBUSY);
	}
	io_throttle_destroy(t);
}

static void cidrs(void **state)
{
	struct io_cidr n[3];
	assert_int_equal(io_cidr_parse("127.0.0.0/8", &n[0]), 0);
	assert_int_equal(io_cidr_parse("2001:db8::/32", &n[1]), 0);
	assert_int_equal(io_cidr_parse("192.0.2.7", &n[2]), 0);
	assert_int_equal(io_cidr_parse("10.0.0.0/33", &n[2]), -EINVAL);
	assert_int_equal(io_cidr_parse("::/129", &n[2]), -EINVAL);
	assert_int_equal(io_cidr_parse("nope/8", &n[2]), -EINVAL);
	assert_int_equal(io_cidr_parse("10.0.0.0/", &n[2]), -EINVAL);
	assert_int_equal(io_cidr_parse("192.0.2.7", &n[2]), 0);
	static const struct {
		const char *a;
		bool in;
	} cases[] = {{"127.1.2.3", true},	{"128.0.0.1", false}, {"2001:db8:1::1", true},
		     {"2001:db9::1", false},	{"192.0.2.7", true},  {"192.0.2.8", false},
		     {"::ffff:127.0.0.1", true}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss;
		memset(&ss, 0, sizeof(ss));
		if (strchr(cases[i].a, ':')) {
			ss.ss_family = AF_INET6;
			inet_pton(AF_INET6, cases[i].a, &((struct sockaddr_in6 *)&ss)->sin6_addr);
		} else {
			ss.ss_family = AF_INET;
			inet_pton(AF_INET, cases[i].a, &((struct sockaddr_in *)&ss)->sin_addr);
		}
		uint8_t a16[16];
		io_client_addr16(&ss, a16);
		if (io_cidr_match(n, 3, a16) != cases[i].in)
			fail_msg("%s: match %d", cases[i].a, !cases[i].in);
	}
	/* A v4-mapped IPv6 peer is an IPv4 client: the whole address, not a /64. */
	struct io_client_key k1 = key_of("::ffff:192.0.2.1"), k2 = key_of("::ffff:192.0.2.2");
	assert_memory_not_equal(&k1, &k2, sizeof(k1));
	struct io_client_key k4 = key_of("192.0.2.1");
	assert_memory_equal(&k1, &k4, sizeof(k1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(table_lookup),	   cmocka_unit_test(table_errors),
		cmocka_unit_test(table_many),	   cmocka_unit_test(current_reload),
		cmocka_unit_test(throttle_limits), cmocka_unit_test(throttle_eviction),
		cmocka_unit_test(cidrs),	   cmocka_unit_test(reload_stress),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
