/* SPDX-License-Identifier: MIT */
/*
 * The client side of io/tls.c (delivery's STARTTLS to the next hop) against
 * the server side, both ends io_tls_conn sessions driven with the same
 * functions, ciphertext shuttled between their buffers in memory (no
 * sockets). Certificates come from scripts/gen-test-cert.sh, run twice: the
 * second run's root is "a different CA". Checks: handshakes (ECDSA and RSA
 * chains, whole flights and 1-byte pieces), data both ways, close_notify
 * both ways, io_tls_verify_result() for the right CA with and without a
 * name, a wrong name, another CA, no CA; a next hop that answers with
 * garbage, plaintext or a fatal alert; limits. Prints (does not assert) the
 * client's CPU time per full handshake.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ds_assert.h"
#include "tls_testlib.h"

static char certdir[64], otherdir[64];
static char ca_path[128], other_ca[128], ec_cert[128], ec_key[128], rsa_cert[128], rsa_key[128];

#define SUITE_ECDSA "TLSv1.2 TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"
#define SUITE_RSA   "TLSv1.2 TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256"

static struct io_tls_server *new_server(const char *cert, const char *key)
{
	struct io_tls_server *s = NULL;
	char err[256];
	int r = io_tls_server_create(&s, cert, key, 8, err, sizeof(err));
	if (r != 0)
		fprintf(stderr, "server create: %d %s\n", r, err);
	assert_int_equal(r, 0);
	return s;
}

static struct io_tls_client *new_client(const char *ca)
{
	struct io_tls_client *cl = NULL;
	char err[256];
	int r = io_tls_client_create(&cl, ca, 8, err, sizeof(err));
	if (r != 0)
		fprintf(stderr, "client create: %d %s\n", r, err);
	assert_int_equal(r, 0);
	assert_non_null(cl);
	return cl;
}

/* Ciphertext from -> to, in pieces of at most chunk bytes, as much as to takes. Returns bytes moved. */
static size_t shuttle(struct io_tls_conn *from, struct io_tls_conn *to, size_t chunk)
{
	size_t moved = 0;
	for (;;) {
		size_t n = 0;
		const uint8_t *p = io_tls_output(from, &n);
		if (n == 0)
			break;
		size_t took = io_tls_feed(to, p, DS_MIN(n, chunk));
		if (took == 0)
			break;
		io_tls_output_consumed(from, took);
		moved += took;
		if (chunk < 16)
			break; /* tiny pieces: let the receiver run after each */
	}
	return moved;
}

static int64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct hs_cost {
	int64_t cli_ns, srv_ns; /* CPU in io_tls_handshake calls of each side */
	int64_t cli_max_call_ns;
	int cli_calls;
};

/*
 * Both handshakes to the end or the first failure. *cr / *sr: the last
 * io_tls_handshake() result of each side. The client speaks first.
 */
static void pump_handshake(struct io_tls_conn *cli, struct io_tls_conn *srv, size_t chunk, int *cr, int *sr,
			   struct hs_cost *cost)
{
	*cr = -EAGAIN;
	*sr = -EAGAIN;
	for (int i = 0; i < 200000; i++) {
		if (*cr == -EAGAIN) {
			int64_t t0 = cpu_ns();
			*cr = io_tls_handshake(cli);
			int64_t dt = cpu_ns() - t0;
			if (cost) {
				cost->cli_ns += dt;
				cost->cli_max_call_ns = DS_MAX(cost->cli_max_call_ns, dt);
				cost->cli_calls++;
			}
		}
		size_t moved = shuttle(cli, srv, chunk);
		if (*sr == -EAGAIN) {
			int64_t t0 = cpu_ns();
			*sr = io_tls_handshake(srv);
			if (cost)
				cost->srv_ns += cpu_ns() - t0;
		}
		moved += shuttle(srv, cli, chunk);
		if (*cr == 0 && *sr == 0)
			return;
		bool cdead = *cr != 0 && *cr != -EAGAIN, sdead = *sr != 0 && *sr != -EAGAIN;
		if ((cdead || sdead) && moved == 0)
			return;
	}
	fail_msg("handshake did not finish: client %d server %d", *cr, *sr);
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

/* total bytes from -> to through io_tls_write / io_tls_read, fed in chunk pieces. */
static void transfer(struct io_tls_conn *from, struct io_tls_conn *to, size_t total, size_t chunk)
{
	uint8_t *data = malloc(total), *got = malloc(total + 1);
	assert_non_null(data);
	assert_non_null(got);
	fill_pattern(data, total, (uint32_t)total);
	size_t sent = 0, recvd = 0;
	int eagain = 0;
	for (int i = 0; recvd < total && i < 1000000; i++) {
		for (int k = 0; k < 4 && sent < total; k++) {
			ssize_t w = io_tls_write(from, data + sent, total - sent);
			if (w == -EAGAIN) {
				eagain++;
				break;
			}
			assert_true(w > 0 && (size_t)w <= total - sent);
			sent += (size_t)w;
		}
		shuttle(from, to, chunk);
		ssize_t r;
		while ((r = io_tls_read(to, got + recvd, DS_MIN((size_t)1000, total - recvd + 1))) > 0)
			recvd += (size_t)r;
		assert_int_equal(r, -EAGAIN);
	}
	assert_int_equal(recvd, total);
	assert_memory_equal(data, got, total);
	if (total > 2 * IO_TLS_OUT_CAP_BYTES)
		assert_true(eagain > 0); /* the bounded output was exercised */
	free(data);
	free(got);
}

/*
 * A whole session: handshake, verification as expected, describe on both
 * sides, an SMTP-sized exchange and bulk both ways, close_notify both ways.
 */
static void session(const char *cert, const char *key, const char *ca, const char *name, size_t chunk,
		    int want_verify, const char *want_why, const char *want_desc)
{
	struct io_tls_server *s = new_server(cert, key);
	struct io_tls_client *cl = new_client(ca);
	struct io_tls_conn *srv = NULL, *cli = NULL;
	assert_int_equal(io_tls_conn_create(&srv, s), 0);
	assert_int_equal(io_tls_conn_create_client(&cli, cl, name), 0);
	assert_int_equal(io_tls_client_conn_count(cl), 1);

	char why[512];
	assert_int_equal(io_tls_verify_result(cli, why, sizeof(why)), -EAGAIN);
	int cr, sr;
	pump_handshake(cli, srv, chunk, &cr, &sr, NULL);
	assert_int_equal(cr, 0);
	assert_int_equal(sr, 0);
	assert_int_equal(io_tls_handshake(cli), 0); /* idempotent */

	int v = io_tls_verify_result(cli, why, sizeof(why));
	if (v != want_verify)
		fprintf(stderr, "verify %d: %s\n", v, why);
	assert_int_equal(v, want_verify);
	if (want_verify == 0)
		assert_string_equal(why, "");
	else {
		printf("  verify %d (%s): %s\n", v, name ? name : "no name", why);
		assert_non_null(strstr(why, want_why));
		assert_null(strchr(why, '\n')); /* one line, for the log */
	}
	assert_int_equal(io_tls_verify_result(srv, why, sizeof(why)), -EINVAL);

	char d1[128], d2[128];
	assert_true(io_tls_describe(cli, d1, sizeof(d1)) > 0);
	assert_true(io_tls_describe(srv, d2, sizeof(d2)) > 0);
	assert_string_equal(d1, want_desc);
	assert_string_equal(d2, want_desc);

	/* The EHLO after STARTTLS and its reply, then a message body each way. */
	transfer(cli, srv, 21, chunk);
	transfer(srv, cli, 200, chunk);
	transfer(cli, srv, 300 * 1000, chunk < 16 ? 4096 : chunk);
	transfer(srv, cli, 40 * 1000, chunk < 16 ? 4096 : chunk);

	/* Client QUIT + close_notify: the server reads 0; and back. */
	uint8_t buf[64];
	io_tls_close_notify(cli);
	assert_true(shuttle(cli, srv, 4096) > 0);
	assert_int_equal(io_tls_read(srv, buf, sizeof(buf)), 0);
	io_tls_close_notify(srv);
	assert_true(shuttle(srv, cli, 4096) > 0);
	assert_int_equal(io_tls_read(cli, buf, sizeof(buf)), 0);

	io_tls_conn_destroy(cli);
	io_tls_conn_destroy(srv);
	assert_int_equal(io_tls_client_conn_count(cl), 0);
	io_tls_client_destroy(cl);
	io_tls_server_destroy(s);
}

static void test_verified_ecdsa(void **state)
{
	session(ec_cert, ec_key, ca_path, "localhost", 4096, 0, "", SUITE_ECDSA);
}

static void test_verified_rsa(void **state)
{
	session(rsa_cert, rsa_key, ca_path, "localhost", 4096, 0, "", SUITE_RSA);
}

static void test_verified_tiny_chunks(void **state)
{
	/* Every handshake byte fed on its own, both directions. */
	session(ec_cert, ec_key, ca_path, "localhost", 1, 0, "", SUITE_ECDSA);
}

static void test_chain_only(void **state)
{
	/* --deliver-ca without --deliver-tls-name: the chain alone is checked. */
	session(ec_cert, ec_key, ca_path, NULL, 4096, 0, "", SUITE_ECDSA);
	session(ec_cert, ec_key, ca_path, "", 4096, 0, "", SUITE_ECDSA);
}

static void test_wrong_name(void **state)
{
	/* The handshake completes (opportunistic carries on); required would defer on -EBADMSG. */
	session(ec_cert, ec_key, ca_path, "mx.example.org", 4096, -EBADMSG, "CN", SUITE_ECDSA);
	session(rsa_cert, rsa_key, ca_path, "mx.example.org", 4096, -EBADMSG, "subject", SUITE_RSA);
	/* An IP literal as the name: mbedTLS 2.28 matches DNS names only (why --deliver-tls-name exists). */
	session(ec_cert, ec_key, ca_path, "127.0.0.1", 4096, -EBADMSG, "CN", SUITE_ECDSA);
}

static void test_other_ca(void **state)
{
	session(ec_cert, ec_key, other_ca, "localhost", 4096, -EBADMSG, "trusted CA", SUITE_ECDSA);
	session(ec_cert, ec_key, other_ca, NULL, 4096, -EBADMSG, "trusted CA", SUITE_ECDSA);
}

static void test_no_ca(void **state)
{
	session(ec_cert, ec_key, NULL, "localhost", 4096, -ENOKEY, "no CA file", SUITE_ECDSA);
	session(rsa_cert, rsa_key, "", NULL, 4096, -ENOKEY, "no CA file", SUITE_RSA);
}

/* The ClientHello comes from the first io_tls_handshake(), and carries SNI only when a name is given. */
static void test_client_hello(void **state)
{
	struct io_tls_client *cl = new_client(ca_path);
	for (int named = 0; named < 2; named++) {
		struct io_tls_conn *cli = NULL;
		assert_int_equal(io_tls_conn_create_client(&cli, cl, named ? "mx1.example.net" : NULL), 0);
		size_t n = 0;
		assert_null(io_tls_output(cli, &n));
		assert_int_equal(io_tls_handshake(cli), -EAGAIN);
		const uint8_t *p = io_tls_output(cli, &n);
		assert_non_null(p);
		assert_true(n > 50 && n < 1024);
		assert_int_equal(p[0], 0x16); /* handshake record */
		assert_int_equal(p[5], 0x01); /* ClientHello */
		bool has_sni = memmem(p, n, "mx1.example.net", 15) != NULL;
		assert_int_equal(has_sni, named);
		/* Nothing more until the server answers. */
		io_tls_output_consumed(cli, n);
		assert_int_equal(io_tls_handshake(cli), -EAGAIN);
		assert_null(io_tls_output(cli, &n));
		io_tls_conn_destroy(cli);
	}
	io_tls_client_destroy(cl);
}

/* A next hop that answers the ClientHello with bytes that are not a ServerHello. */
static void bad_server_reply(const uint8_t *reply, size_t len, int want)
{
	struct io_tls_client *cl = new_client(ca_path);
	struct io_tls_conn *cli = NULL;
	assert_int_equal(io_tls_conn_create_client(&cli, cl, "localhost"), 0);
	assert_int_equal(io_tls_handshake(cli), -EAGAIN);
	size_t n = 0;
	io_tls_output(cli, &n);
	io_tls_output_consumed(cli, n);
	assert_int_equal(io_tls_feed(cli, reply, len), len);
	int r = io_tls_handshake(cli);
	assert_int_equal(r, want);
	assert_int_equal(io_tls_handshake(cli), want); /* latched */
	uint8_t buf[16];
	assert_int_equal(io_tls_read(cli, buf, sizeof(buf)), want);
	char why[128];
	assert_int_equal(io_tls_verify_result(cli, why, sizeof(why)), -EAGAIN);
	io_tls_close_notify(cli); /* a no-op on a dead session, must not crash */
	io_tls_conn_destroy(cli);
	io_tls_client_destroy(cl);
}

static void test_server_garbage(void **state)
{
	uint8_t junk[3000];
	fill_pattern(junk, sizeof(junk), 99);
	junk[0] = 0xff; /* not a record type */
	bad_server_reply(junk, sizeof(junk), -EPROTO);
	/* A next hop that did not switch to TLS after all: an SMTP reply in plaintext. */
	static const char plain[] = "454 4.7.0 TLS not available due to temporary reason\r\n";
	bad_server_reply((const uint8_t *)plain, strlen(plain), -EPROTO);
	/* A handshake record header announcing more than a record may hold. */
	static const uint8_t huge[] = {0x16, 0x03, 0x03, 0xff, 0xff, 0x02, 0x00, 0x00};
	bad_server_reply(huge, sizeof(huge), -EPROTO);
	/* A well-formed record of the wrong handshake type (a ClientHello back). */
	static const uint8_t wrong[] = {0x16, 0x03, 0x03, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00};
	bad_server_reply(wrong, sizeof(wrong), -EPROTO);
	/* The peer refuses: fatal handshake_failure alert. */
	static const uint8_t alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28};
	bad_server_reply(alert, sizeof(alert), -ECONNRESET);
}

/* Garbage from the server after the handshake, in place of a record. */
static void test_server_garbage_after_handshake(void **state)
{
	struct io_tls_server *s = new_server(ec_cert, ec_key);
	struct io_tls_client *cl = new_client(ca_path);
	struct io_tls_conn *srv = NULL, *cli = NULL;
	assert_int_equal(io_tls_conn_create(&srv, s), 0);
	assert_int_equal(io_tls_conn_create_client(&cli, cl, "localhost"), 0);
	int cr, sr;
	pump_handshake(cli, srv, 4096, &cr, &sr, NULL);
	assert_int_equal(cr, 0);
	assert_int_equal(sr, 0);
	/* A record that fails authentication (a valid header, a random body). */
	uint8_t rec[5 + 64] = {0x17, 0x03, 0x03, 0x00, 64};
	fill_pattern(rec + 5, 64, 5);
	assert_int_equal(io_tls_feed(cli, rec, sizeof(rec)), sizeof(rec));
	uint8_t buf[64];
	assert_int_equal(io_tls_read(cli, buf, sizeof(buf)), -EPROTO);
	assert_int_equal(io_tls_write(cli, buf, 8), -EPROTO);
	io_tls_conn_destroy(cli);
	io_tls_conn_destroy(srv);
	io_tls_client_destroy(cl);
	io_tls_server_destroy(s);
}

static void test_limits_and_errors(void **state)
{
	char err[256];
	struct io_tls_client *cl = NULL;
	assert_int_equal(io_tls_client_create(&cl, ca_path, 0, err, sizeof(err)), -EINVAL);
	assert_null(cl);
	assert_int_equal(io_tls_client_create(&cl, "/nonexistent/ca.pem", 4, err, sizeof(err)), -EINVAL);
	assert_null(cl);
	assert_non_null(strstr(err, "/nonexistent/ca.pem"));
	/* A key is not a certificate. */
	assert_int_equal(io_tls_client_create(&cl, ec_key, 4, err, sizeof(err)), -EINVAL);
	assert_null(cl);
	assert_non_null(strstr(err, "CA file"));
	/* err may be NULL. */
	assert_int_equal(io_tls_client_create(&cl, "/nonexistent", 4, NULL, 0), -EINVAL);

	assert_int_equal(io_tls_client_create(&cl, ca_path, 2, err, sizeof(err)), 0);
	struct io_tls_conn *a = NULL, *b = NULL, *c = NULL;
	assert_int_equal(io_tls_conn_create_client(&a, cl, NULL), 0);
	assert_int_equal(io_tls_conn_create_client(&b, cl, "localhost"), 0);
	assert_int_equal(io_tls_conn_create_client(&c, cl, NULL), -EMFILE);
	assert_null(c);
	io_tls_conn_destroy(b);
	char longname[300];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(io_tls_conn_create_client(&b, cl, longname), -EINVAL);
	assert_null(b);
	assert_int_equal(io_tls_client_conn_count(cl), 1);
	/* Destroyed mid-handshake, with output pending. */
	assert_int_equal(io_tls_handshake(a), -EAGAIN);
	io_tls_conn_destroy(a);
	io_tls_conn_destroy(NULL);
	assert_int_equal(io_tls_client_conn_count(cl), 0);
	io_tls_client_destroy(cl);
	io_tls_client_destroy(NULL);
}

/* Mean CPU of the client's side of full handshakes (and the server's, for scale). */
static void measure(const char *label, const char *cert, const char *key, const char *ca, const char *name,
		    int rounds)
{
	struct io_tls_server *s = new_server(cert, key);
	struct io_tls_client *cl = new_client(ca);
	struct hs_cost cost = {0};
	for (int i = 0; i < rounds; i++) {
		struct io_tls_conn *srv = NULL, *cli = NULL;
		assert_int_equal(io_tls_conn_create(&srv, s), 0);
		assert_int_equal(io_tls_conn_create_client(&cli, cl, name), 0);
		int cr, sr;
		pump_handshake(cli, srv, 1 << 20, &cr, &sr, &cost);
		assert_int_equal(cr, 0);
		assert_int_equal(sr, 0);
		io_tls_conn_destroy(cli);
		io_tls_conn_destroy(srv);
	}
	printf("client handshake %-34s %6.2f ms CPU mean (max one call %5.2f ms, %d calls), server %5.2f "
	       "ms\n",
	       label, (double)cost.cli_ns / rounds / 1e6, (double)cost.cli_max_call_ns / 1e6,
	       cost.cli_calls / rounds, (double)cost.srv_ns / rounds / 1e6);
	io_tls_client_destroy(cl);
	io_tls_server_destroy(s);
}

static void test_handshake_cpu(void **state)
{
	int rounds = 20;
	const char *e = getenv("DS_TLS_CLIENT_ROUNDS");
	if (e != NULL)
		rounds = DS_MAX(1, atoi(e));
	measure("ECDSA P-256, CA + name", ec_cert, ec_key, ca_path, "localhost", rounds);
	measure("ECDSA P-256, no CA", ec_cert, ec_key, NULL, NULL, rounds);
	measure("RSA-2048, CA + name", rsa_cert, rsa_key, ca_path, "localhost", rounds);
	measure("RSA-2048, no CA", rsa_cert, rsa_key, NULL, NULL, rounds);
}

int main(void)
{
	if (tc_make_certs(certdir, sizeof(certdir)) != 0 || tc_make_certs(otherdir, sizeof(otherdir)) != 0) {
		fprintf(stderr, "cannot generate test certificates (openssl missing?)\n");
		if (certdir[0])
			tc_remove_dir(certdir);
		return 77;
	}
	snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", certdir);
	snprintf(other_ca, sizeof(other_ca), "%s/ca.pem", otherdir);
	snprintf(ec_cert, sizeof(ec_cert), "%s/server.pem", certdir);
	snprintf(ec_key, sizeof(ec_key), "%s/server.key", certdir);
	snprintf(rsa_cert, sizeof(rsa_cert), "%s/server-rsa.pem", certdir);
	snprintf(rsa_key, sizeof(rsa_key), "%s/server-rsa.key", certdir);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verified_ecdsa),
		cmocka_unit_test(test_verified_rsa),
		cmocka_unit_test(test_verified_tiny_chunks),
		cmocka_unit_test(test_chain_only),
		cmocka_unit_test(test_wrong_name),
		cmocka_unit_test(test_other_ca),
		cmocka_unit_test(test_no_ca),
		cmocka_unit_test(test_client_hello),
		cmocka_unit_test(test_server_garbage),
		cmocka_unit_test(test_server_garbage_after_handshake),
		cmocka_unit_test(test_limits_and_errors),
		cmocka_unit_test(test_handshake_cpu),
	};
	int fails = cmocka_run_group_tests(tests, NULL, NULL);
	tc_remove_dir(certdir);
	tc_remove_dir(otherdir);
	return fails == 0 ? 0 : 1;
}
