/* SPDX-License-Identifier: MIT */
/*
 * dotspool-tlsbench: server-side TLS handshake cost of io/tls.c, in memory
 * (no sockets), one thread, against an mbedTLS client in the same thread.
 *
 *   dotspool-tlsbench [--seconds S] [--dir CERTDIR]
 *
 * Without --dir, certificates are generated with scripts/gen-test-cert.sh.
 * For ECDSA P-256 and RSA-2048 leaf certificates it prints:
 *  - server CPU per full handshake (thread CPU time spent inside the server
 *    calls only: conn create, feed, handshake, output, destroy) and the
 *    resulting handshakes/s per core;
 *  - the longest single io_tls_handshake() call: the most one handshake can
 *    hold up the other sessions of its core at once;
 *  - heap bytes per connection (mallinfo2) mid-handshake and established.
 */
#include <errno.h>
#include <stdbool.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds_assert.h"
#include "tls_testlib.h"

static double now_s(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

struct bench_res {
	unsigned long handshakes;
	double server_cpu_s;
	double client_cpu_s;
	double wall_s;
	double max_call_s;
	double call_s[2]; /* io_tls_handshake CPU: the ClientHello call, the ClientKeyExchange call */
};

/* One full handshake; server-side calls timed with the thread CPU clock. */
static int one_handshake(struct io_tls_server *s, struct tc_client *tc, const mbedtls_ssl_session *resume,
			 struct bench_res *res)
{
	const clockid_t clk = CLOCK_THREAD_CPUTIME_ID;
	double t0 = now_s(clk);
	struct io_tls_conn *c = NULL;
	if (io_tls_conn_create(&c, s) != 0)
		return -1;
	res->server_cpu_s += now_s(clk) - t0;
	tc_client_reset(tc);
	if (resume)
		DS_ASSERT(mbedtls_ssl_set_session(&tc->ssl, resume) == 0);
	int sr = -EAGAIN;
	for (int i = 0; i < 50; i++) {
		t0 = now_s(clk);
		if (!tc->done) {
			int r = mbedtls_ssl_handshake(&tc->ssl);
			if (r == 0)
				tc->done = true;
			else if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE)
				break;
		}
		double t1 = now_s(clk);
		res->client_cpu_s += t1 - t0;
		tc_to_server(c, tc, 1 << 20);
		double t2 = now_s(clk);
		sr = io_tls_handshake(c);
		double t3 = now_s(clk);
		tc_to_client(c, tc);
		double t4 = now_s(clk);
		res->server_cpu_s += t4 - t1;
		if (i < 2)
			res->call_s[i] += t3 - t2;
		if (t3 - t2 > res->max_call_s)
			res->max_call_s = t3 - t2;
		if (sr != 0 && sr != -EAGAIN)
			break;
		if (sr == 0 && tc->done)
			break;
	}
	t0 = now_s(clk);
	io_tls_conn_destroy(c);
	res->server_cpu_s += now_s(clk) - t0;
	return sr == 0 && tc->done ? 0 : -1;
}

static int bench_cert(const char *name, const char *cert, const char *key, const mbedtls_ecp_group_id *groups,
		      double seconds, bool resumed, bool mem)
{
	struct io_tls_server *s = NULL;
	char err[256];
	if (io_tls_server_create(&s, cert, key, 256, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", name, err);
		return -1;
	}
	struct tc_opts o = {.groups = groups};
	struct tc_client *tc = tc_client_new(&o);
	struct bench_res res = {0};
	mbedtls_ssl_session sess;
	mbedtls_ssl_session_init(&sess);
	if (one_handshake(s, tc, NULL, &res) != 0) { /* warm-up, and the ticket for resumed runs */
		fprintf(stderr, "%s: handshake failed\n", name);
		return -1;
	}
	DS_ASSERT(mbedtls_ssl_get_session(&tc->ssl, &sess) == 0);
	memset(&res, 0, sizeof(res));
	double w0 = now_s(CLOCK_MONOTONIC);
	while (now_s(CLOCK_MONOTONIC) - w0 < seconds) {
		if (one_handshake(s, tc, resumed ? &sess : NULL, &res) != 0) {
			fprintf(stderr, "%s: handshake failed\n", name);
			return -1;
		}
		res.handshakes++;
	}
	res.wall_s = now_s(CLOCK_MONOTONIC) - w0;
	double per_us = res.server_cpu_s / (double)res.handshakes * 1e6;
	printf("%-18s %6lu handshakes  server CPU %7.0f us/handshake = %6.0f handshakes/s/core"
	       "  longest io_tls_handshake call %6.0f us  (client CPU %6.0f us/handshake)\n",
	       name, res.handshakes, per_us, 1e6 / per_us, res.max_call_s * 1e6,
	       res.client_cpu_s / (double)res.handshakes * 1e6);
	printf("%-18s   per io_tls_handshake call (mean): ClientHello %6.0f us, ClientKeyExchange/Finished "
	       "%6.0f us\n",
	       name, res.call_s[0] / (double)res.handshakes * 1e6,
	       res.call_s[1] / (double)res.handshakes * 1e6);

	mbedtls_ssl_session_free(&sess);
	if (!mem) {
		tc_client_free(tc);
		io_tls_server_destroy(s);
		return 0;
	}
	/* Memory: conns held mid-handshake (after the server flight), then established. */
	enum { N = 64 };
	struct io_tls_conn *cs[N];
	struct tc_client *tcs[N];
	for (int i = 0; i < N; i++) {
		tcs[i] = tc_client_new(&o);
		cs[i] = NULL;
	}
	size_t h1 = heap_in_use(); /* clients' own start-up state excluded */
	for (int i = 0; i < N; i++)
		DS_ASSERT(io_tls_conn_create(&cs[i], s) == 0);
	size_t h_created = heap_in_use();
	for (int i = 0; i < N; i++)
		DS_ASSERT(tc_pump_handshake(cs[i], tcs[i], 1 << 20, 1) == -EAGAIN);
	size_t h_mid = heap_in_use();
	for (int i = 0; i < N; i++)
		DS_ASSERT(tc_pump_handshake(cs[i], tcs[i], 1 << 20, 50) == 0);
	size_t h_est = heap_in_use();
	for (int i = 0; i < N; i++)
		io_tls_conn_destroy(cs[i]);
	size_t h_srv_gone = heap_in_use();
	/* What remains above h1 is what the clients grew during their handshakes. */
	size_t cli_growth = h_srv_gone > h1 ? h_srv_gone - h1 : 0;
	double created = (double)(h_created - h1) / N;
	/* Mid-handshake clients have grown little yet: their growth is only subtracted when established. */
	double mid = ((double)h_mid - (double)h1) / N;
	double est = ((double)h_est - (double)h1 - (double)cli_growth) / N;
	printf("%-18s memory per TLS conn: %.1f KiB created, %.1f KiB mid-handshake, %.1f KiB established"
	       " (client-side growth %.1f KiB subtracted)\n",
	       name, created / 1024, mid / 1024, est / 1024, (double)cli_growth / N / 1024);
	for (int i = 0; i < N; i++)
		tc_client_free(tcs[i]);
	tc_client_free(tc);
	io_tls_server_destroy(s);
	return 0;
}

int main(int argc, char **argv)
{
	double seconds = 2.0;
	const char *dir = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
			dir = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--seconds S] [--dir CERTDIR]\n", argv[0]);
			return 2;
		}
	}
	if (seconds <= 0 || seconds > 600)
		seconds = 2.0;
	char tmpdir[64] = "";
	if (dir == NULL) {
		if (tc_make_certs(tmpdir, sizeof(tmpdir)) != 0) {
			fprintf(stderr, "SKIP: cannot generate certificates\n");
			return 77;
		}
		dir = tmpdir;
	}
	/* TLS 1.2: the groups list also admits the certificate's curve, so P-256 is offered after X25519. */
	static const mbedtls_ecp_group_id x25519[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
						      MBEDTLS_ECP_DP_NONE};
	static const mbedtls_ecp_group_id p256[] = {MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE};
	char cert[256], key[256], ecert[256], ekey[256];
	int rc = 0;
	snprintf(ecert, sizeof(ecert), "%s/server.pem", dir);
	snprintf(ekey, sizeof(ekey), "%s/server.key", dir);
	snprintf(cert, sizeof(cert), "%s/server-rsa.pem", dir);
	snprintf(key, sizeof(key), "%s/server-rsa.key", dir);
	/* The key exchange group is the client's choice: X25519 is what OpenSSL-based clients offer first. */
	rc |= bench_cert("ecdsa-p256/x25519", ecert, ekey, x25519, seconds, false, false);
	rc |= bench_cert("ecdsa-p256/p256", ecert, ekey, p256, seconds, false, false);
	rc |= bench_cert("rsa-2048/x25519", cert, key, x25519, seconds, false, false);
	rc |= bench_cert("rsa-2048/p256", cert, key, p256, seconds, false, true);
	rc |= bench_cert("ecdsa-p256/resumed", ecert, ekey, x25519, seconds, true, false);
	rc |= bench_cert("rsa-2048/resumed", cert, key, x25519, seconds, true, false);
	if (tmpdir[0])
		tc_remove_dir(tmpdir);
	return rc ? 1 : 0;
}
