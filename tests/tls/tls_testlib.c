/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "tls_testlib.h"

static int tc_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct tc_client *tc = ctx;
	size_t room = sizeof(tc->out) - tc->out_len;
	if (room == 0)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	size_t n = DS_MIN(room, len);
	memcpy(tc->out + tc->out_len, buf, n);
	tc->out_len += n;
	return (int)n;
}

static int tc_recv(void *ctx, unsigned char *buf, size_t len)
{
	struct tc_client *tc = ctx;
	if (tc->in_len == 0)
		return MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = DS_MIN(tc->in_len, len);
	memcpy(buf, tc->in + tc->in_head, n);
	tc->in_head += n;
	tc->in_len -= n;
	if (tc->in_len == 0)
		tc->in_head = 0;
	return (int)n;
}

struct tc_client *tc_client_new(const struct tc_opts *o)
{
	struct tc_client *tc = calloc(1, sizeof(*tc));
	DS_ASSERT(tc != NULL);
	mbedtls_entropy_init(&tc->ent);
	mbedtls_ctr_drbg_init(&tc->drbg);
	mbedtls_x509_crt_init(&tc->ca);
	mbedtls_ssl_config_init(&tc->conf);
	mbedtls_ssl_init(&tc->ssl);
	DS_ASSERT(mbedtls_ctr_drbg_seed(&tc->drbg, mbedtls_entropy_func, &tc->ent,
					(const unsigned char *)"tc", 2) == 0);
	DS_ASSERT(mbedtls_ssl_config_defaults(&tc->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
					      MBEDTLS_SSL_PRESET_DEFAULT) == 0);
	mbedtls_ssl_conf_rng(&tc->conf, mbedtls_ctr_drbg_random, &tc->drbg);
	if (o->ca_path) {
		DS_ASSERT(mbedtls_x509_crt_parse_file(&tc->ca, o->ca_path) == 0);
		mbedtls_ssl_conf_ca_chain(&tc->conf, &tc->ca, NULL);
		mbedtls_ssl_conf_authmode(&tc->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
	} else {
		mbedtls_ssl_conf_authmode(&tc->conf, MBEDTLS_SSL_VERIFY_NONE);
	}
	if (o->suites)
		mbedtls_ssl_conf_ciphersuites(&tc->conf, o->suites);
	if (o->renegotiation)
		mbedtls_ssl_conf_renegotiation(&tc->conf, MBEDTLS_SSL_RENEGOTIATION_ENABLED);
	if (o->groups)
		mbedtls_ssl_conf_curves(&tc->conf, o->groups);
	if (o->max_minor)
		mbedtls_ssl_conf_max_version(&tc->conf, MBEDTLS_SSL_MAJOR_VERSION_3, o->max_minor);
	DS_ASSERT(mbedtls_ssl_setup(&tc->ssl, &tc->conf) == 0);
	if (o->hostname)
		DS_ASSERT(mbedtls_ssl_set_hostname(&tc->ssl, o->hostname) == 0);
	mbedtls_ssl_set_bio(&tc->ssl, tc, tc_send, tc_recv, NULL);
	return tc;
}

void tc_client_reset(struct tc_client *tc)
{
	DS_ASSERT(mbedtls_ssl_session_reset(&tc->ssl) == 0);
	tc->done = false;
	tc->err = 0;
	tc->from_server_bytes = 0;
	tc->in_head = tc->in_len = 0;
	tc->out_len = 0;
}

void tc_client_free(struct tc_client *tc)
{
	if (tc == NULL)
		return;
	mbedtls_ssl_free(&tc->ssl);
	mbedtls_ssl_config_free(&tc->conf);
	mbedtls_x509_crt_free(&tc->ca);
	mbedtls_ctr_drbg_free(&tc->drbg);
	mbedtls_entropy_free(&tc->ent);
	free(tc);
}

size_t tc_to_client(struct io_tls_conn *c, struct tc_client *tc)
{
	size_t n = 0;
	const uint8_t *p = io_tls_output(c, &n);
	if (n == 0)
		return 0;
	if (tc->in_head > 0) {
		memmove(tc->in, tc->in + tc->in_head, tc->in_len);
		tc->in_head = 0;
	}
	size_t room = sizeof(tc->in) - tc->in_len;
	n = DS_MIN(n, room);
	memcpy(tc->in + tc->in_len, p, n);
	tc->in_len += n;
	tc->from_server_bytes += n;
	io_tls_output_consumed(c, n);
	return n;
}

size_t tc_to_server(struct io_tls_conn *c, struct tc_client *tc, size_t chunk)
{
	size_t off = 0;
	while (off < tc->out_len) {
		size_t want = DS_MIN(chunk, tc->out_len - off);
		size_t took = io_tls_feed(c, tc->out + off, want);
		DS_ASSERT(took <= want);
		off += took;
		if (took < want)
			break; /* the server's input buffer is full */
	}
	memmove(tc->out, tc->out + off, tc->out_len - off);
	tc->out_len -= off;
	return off;
}

int tc_pump_handshake(struct io_tls_conn *c, struct tc_client *tc, size_t chunk, int steps)
{
	int sr = -EAGAIN;
	for (int i = 0; i < steps; i++) {
		if (!tc->done && tc->err == 0) {
			int r = mbedtls_ssl_handshake(&tc->ssl);
			if (r == 0)
				tc->done = true;
			else if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE)
				tc->err = r;
		}
		/* Small chunks: call the server after every piece, as an io layer would per recv. */
		do {
			tc_to_server(c, tc, chunk);
			sr = io_tls_handshake(c);
		} while (sr == -EAGAIN && tc->out_len > 0 && io_tls_feed_room(c) > 0);
		tc_to_client(c, tc);
		if (sr != 0 && sr != -EAGAIN)
			return sr;
		if (tc->err != 0 && tc->out_len == 0)
			return sr;
		if (sr == 0 && tc->done)
			return 0;
	}
	return sr;
}

int tc_make_certs(char *dir, size_t cap)
{
	DS_ASSERT(cap >= 64);
	snprintf(dir, cap, "/tmp/dotspool-tls-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "sh '%s' '%s' >/dev/null", DS_GEN_CERT_SCRIPT, dir);
	if (system(cmd) != 0) {
		tc_remove_dir(dir);
		return -1;
	}
	return 0;
}

void tc_remove_dir(const char *dir)
{
	char cmd[256];
	DS_ASSERT(strncmp(dir, "/tmp/dotspool-tls-", 18) == 0);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}
