/* SPDX-License-Identifier: MIT */
#ifndef DS_TESTS_TLS_TESTLIB_H
#define DS_TESTS_TLS_TESTLIB_H

/*
 * Test-side helpers shared by the TLS unit tests and dotspool-tlsbench: an
 * mbedTLS *client* driven through memory buffers, a pump that moves
 * ciphertext between it and an io_tls_conn, and certificate generation
 * with scripts/gen-test-cert.sh into a temporary directory.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "tls.h"

#define TC_BUF_BYTES (256 * 1024)

struct tc_client {
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_x509_crt ca;
	mbedtls_ssl_config conf;
	mbedtls_ssl_context ssl;
	bool done;		  /* client handshake complete */
	int err;		  /* first fatal client error (mbedTLS code), 0 if none */
	size_t from_server_bytes; /* ciphertext received since the last reset */
	/* Ciphertext from the server, not yet read by the client library. */
	uint8_t in[TC_BUF_BYTES];
	size_t in_head, in_len;
	/* Ciphertext from the client, not yet fed to the server. */
	uint8_t out[TC_BUF_BYTES];
	size_t out_len;
};

struct tc_opts {
	const char *ca_path;		    /* NULL: no verification */
	const char *hostname;		    /* SNI + name check, NULL for none */
	const int *suites;		    /* NULL: library defaults */
	int max_minor;			    /* 0: library default, else MBEDTLS_SSL_MINOR_VERSION_x */
	const mbedtls_ecp_group_id *groups; /* NULL: library defaults, else NONE-terminated */
	bool renegotiation;		    /* let the client ask for renegotiation */
};

/* Returns a calloc'd client or NULL; aborts the process on setup errors. */
struct tc_client *tc_client_new(const struct tc_opts *o);
void tc_client_free(struct tc_client *tc);
/* Start over for a new handshake with the same config. */
void tc_client_reset(struct tc_client *tc);

/* Move all server output into the client's input. Returns bytes moved. */
size_t tc_to_client(struct io_tls_conn *c, struct tc_client *tc);
/* Feed client output to the server in pieces of at most chunk bytes, as much as it takes. */
size_t tc_to_server(struct io_tls_conn *c, struct tc_client *tc, size_t chunk);

/*
 * Run both handshakes to the end (or to the first failure). Returns the
 * server's last io_tls_handshake result (0 on success); tc->done/tc->err
 * tell the client's side. chunk: feed granularity. steps: bound on rounds.
 */
int tc_pump_handshake(struct io_tls_conn *c, struct tc_client *tc, size_t chunk, int steps);

/*
 * Make a temp dir with certificates (scripts/gen-test-cert.sh). Returns 0,
 * or -1 if openssl/the script is unavailable. dir must hold 64 bytes.
 */
int tc_make_certs(char *dir, size_t cap);
void tc_remove_dir(const char *dir);

#endif
