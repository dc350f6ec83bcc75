/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness: arbitrary client bytes into a server io_tls_conn.
 * The first byte of the input picks the feed piece size, so records are
 * also split at odd points. Certificates are generated once at start-up
 * with scripts/gen-test-cert.sh (needs openssl).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "tls_testlib.h"

static struct io_tls_server *srv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char dir[64], cert[128], key[128], err[256];
	if (tc_make_certs(dir, sizeof(dir)) != 0) {
		fprintf(stderr, "fuzz_tls_server: cannot generate certificates\n");
		exit(1);
	}
	snprintf(cert, sizeof(cert), "%s/server.pem", dir);
	snprintf(key, sizeof(key), "%s/server.key", dir);
	if (io_tls_server_create(&srv, cert, key, 1, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz_tls_server: %s\n", err);
		exit(1);
	}
	tc_remove_dir(dir);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	size_t piece = 1 + data[0] % 64 * 16;
	data++;
	size--;
	struct io_tls_conn *c = NULL;
	DS_ASSERT(io_tls_conn_create(&c, srv) == 0);
	size_t off = 0;
	uint8_t pt[512];
	int r = -EAGAIN;
	while (off < size) {
		off += io_tls_feed(c, data + off, DS_MIN(piece, size - off));
		r = io_tls_handshake(c);
		size_t n = 0;
		io_tls_output(c, &n);
		io_tls_output_consumed(c, n);
		if (r == 0) {
			ssize_t k;
			while ((k = io_tls_read(c, pt, sizeof(pt))) > 0)
				(void)io_tls_write(c, pt, (size_t)k); /* echo: may be -EAGAIN when full */
		} else if (r != -EAGAIN) {
			break;
		}
	}
	DS_ASSERT(r == 0 || r == -EAGAIN || r == -EPROTO || r == -ECONNRESET);
	io_tls_conn_destroy(c);
	DS_ASSERT(io_tls_server_conn_count(srv) == 0);
	return 0;
}
