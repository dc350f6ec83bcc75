/* SPDX-License-Identifier: MIT */
/*
 * TLS for STARTTLS on mbedTLS (Debian's 2.28), driven through memory.
 *
 * What the packaged library offers: TLS 1.0-1.2 (we allow 1.2 only); TLS
 * 1.3 is compiled out (MBEDTLS_SSL_PROTO_TLS1_3_EXPERIMENTAL is off in the
 * Debian build). Suites: ECDHE-ECDSA and ECDHE-RSA with AES-128/256-GCM and
 * CHACHA20-POLY1305, groups X25519, P-256, P-384, signatures with SHA-256/
 * 384/512. No renegotiation. Resumption with session tickets only (RFC 5077,
 * key per worker and per certificate generation, rotated hourly); no
 * server-side session cache (it would be memory per client, unbounded
 * in time). Tickets are per worker: a client landing on another worker
 * (SO_REUSEPORT) just gets a full handshake.
 *
 * Memory per TLS connection, measured by dotspool-tlsbench (mallinfo2, 64
 * connections): 61.8 KiB once created (struct io_tls_conn: 17 KiB input +
 * 8 KiB output ciphertext buffers + the ssl context; plus the library's two
 * record buffers, MBEDTLS_SSL_IN/OUT_CONTENT_LEN = 16 KiB each + record
 * overhead = 16.7 KiB each), 63.5 KiB mid-handshake (handshake state), 60.4
 * KiB established (handshake state freed, keys and GCM contexts kept).
 * Allocated only when STARTTLS is accepted (io_tls_conn_create) and freed
 * with the connection: plaintext sessions never pay it. conn_max bounds the
 * total per worker (e.g. 4096 TLS conns = 256 MiB).
 *
 * Handshake CPU (server side only, dotspool-tlsbench --seconds 3, this
 * 2-core VM while other builds ran): ECDSA P-256 certificate 2.0-2.4 ms per
 * full handshake = 420-500 handshakes/s/core; RSA-2048 3.3-3.9 ms = 250-300
 * handshakes/s/core; resumed with a ticket 42 us = about 23,000/s/core.
 * mbedTLS 2.28's elliptic-curve code is far slower than OpenSSL's (3.6's
 * optional p256-m driver would help).
 *
 * How a handshake is bounded so it never holds up other sessions on the
 * same core for more than its own CPU cost:
 *  - nothing here blocks or waits: the library's transport callbacks only
 *    copy between its record buffers and our two memory buffers and return
 *    WANT_READ / WANT_WRITE when those are empty / full;
 *  - io_tls_handshake() runs only on the bytes already fed and stops at the
 *    first step that needs more input or output room. A server handshake
 *    has two expensive points, and each falls in a different call because
 *    each needs a new flight from the client: the ClientHello call (ECDHE key
 *    generation + the certificate-key signature: the RSA-2048 or ECDSA
 *    signing) and the ClientKeyExchange call (the ECDH shared secret). So one
 *    call costs at most one signature + one key generation, or one ECDH
 *    computation, and the io layer runs every other ready session's
 *    completions between two calls. Measured mean per call: ClientHello
 *    1.4-1.6 ms (ECDSA P-256) or 2.7-3.1 ms (RSA-2048), ClientKeyExchange +
 *    Finished 0.6-0.8 ms; a resumed handshake 31 us + 5 us. Finer slicing
 *    is not possible with this build: the signature is one library step and
 *    restartable ECC (MBEDTLS_ECP_RESTARTABLE) is compiled out. A client
 *    that sends its second flight without waiting makes one call do both
 *    points: still no more than its own handshake's cost;
 *  - handshake time in wall clock (a client that stops half-way) is the io
 *    layer's timer: the usual command timeout applies from STARTTLS to the
 *    end of the handshake; memory stays bounded by the fixed buffers.
 *
 * How io/conn.c drives it (every socket operation stays on the ring):
 *  - start-up: each worker creates its own server (io_worker_create) when
 *    --tls-cert/--tls-key are set; SIGHUP: each reloads its own, from its
 *    own thread, and keeps the old one on error;
 *  - SMTP_STARTTLS from the session (its 220 queued): io_tls_conn_create()
 *    (on failure the connection closes; the client retries later), then
 *    every plaintext byte received before that 220 has been sent is dropped
 *    (conn_starttls: CVE-2011-0411, RFC 3207);
 *  - ciphertext in: io_tls_feed(); handshake steps are queued and run after
 *    the turn's commits were submitted, within a CPU budget per turn
 *    (io_conns_handshakes), so their cost overlaps the group-commit flush;
 *    then io_tls_read() into one per-worker scratch buffer feeds the
 *    plaintext path, exactly as without TLS;
 *  - replies: io_tls_write() copies the session's output into records
 *    (consumed at once); io_tls_output() is sent, one send in flight, and
 *    io_tls_output_consumed() on its completion;
 *  - QUIT or 421: io_tls_close_notify() after the reply, then close; the
 *    usual command timeout covers STARTTLS to the end of the handshake.
 *
 * The client side (delivery's STARTTLS to the next hop) is the same
 * io_tls_conn with the same buffers and functions; only creation differs
 * (io_tls_client per worker: policy, CA chain, RNG). Verification is the
 * library's OPTIONAL mode, so the handshake completes with any certificate
 * and io_tls_verify_result() tells the caller, whose policy decides
 * (--deliver-starttls required defers, opportunistic logs). Without a CA
 * file the chain is not checked at all (VERIFY_NONE: no signature checks
 * for a certain "untrusted"). No session resumption: delivery keeps its
 * connections and reuses them, so the client does not ask for tickets.
 * Client CPU per full handshake (test_tls_client, Release, 100 rounds, this
 * 2-core VM shared with other builds): ECDSA P-256 leaf, chain verified
 * against the root + name 5.5-5.9 ms, not verified (no CA) 2.6-2.8 ms;
 * RSA-2048 leaf (EC intermediate and root) verified 4.2-4.6 ms, no CA
 * 1.3-1.4 ms (the server side meanwhile: 1.9-2.1 / 3.1-3.4 ms). Nearly
 * all of it falls in one call: the one that receives the server's flight
 * (chain verification: two ECDSA verifications, the ServerKeyExchange
 * signature check, our ECDHE key and the shared secret) and answers it.
 * The library could be stepped finer (mbedtls_ssl_handshake_step), but
 * delivery's handshake rate is bounded by --deliver-connections and
 * connection reuse, so one call of a few ms is accepted.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h> /* mbedtls_ssl_flush_output(): see lib_flush() */
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#include "ds_assert.h"
#include "tls.h"

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#error "io/tls.c is written for mbedTLS 2.28; port the few version-specific calls (pk parsing, groups) for 3.x"
#endif

/*
 * Ticket validity, and how often the ticket key rotates (the library keeps
 * the current and the previous key). Bounds how long a stolen worker memory
 * image can decrypt recorded sessions: forward secrecy is per hour, not per
 * connection, for resumed sessions.
 */
#define IO_TLS_TICKET_LIFETIME_S 3600

/* A certificate + key + config generation: shared by the conns made with it. */
struct io_tls_cfg {
	uint32_t refs; /* the server's (while current) + one per live conn */
	mbedtls_x509_crt chain;
	mbedtls_pk_context key;
	mbedtls_ssl_config conf;
	/*
	 * Session tickets (RFC 5077) for abbreviated handshakes: the key lives
	 * with the certificate generation, so a reload also invalidates every
	 * ticket issued before it (a replaced certificate may mean a
	 * compromised key).
	 */
	mbedtls_ssl_ticket_context ticket;
};

struct io_tls_server {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	struct io_tls_cfg *cur;
	uint32_t conn_count;
	uint32_t conn_max;
};

/*
 * The delivery side: one per worker, like the server. A single
 * configuration for the worker's life (the CA file is read at start-up), so
 * no generations or reference counts.
 */
struct io_tls_client {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_x509_crt ca;
	bool has_ca; /* a CA file was given: verify against it */
	mbedtls_ssl_config conf;
	uint32_t conn_count;
	uint32_t conn_max;
};

struct io_tls_conn {
	/* Exactly one of srv (with cfg) and cli is set: the session's side. */
	struct io_tls_server *srv;
	struct io_tls_cfg *cfg;
	struct io_tls_client *cli;
	mbedtls_ssl_context ssl;
	int failed; /* latched -errno once the session is dead */
	bool hs_done;
	bool peer_closed; /* close_notify received */
	bool has_name;	  /* client: a server name was set (SNI + the name check) */
	/*
	 * The library holds the tail of a record our output buffer had no room
	 * for (its out_left != 0): set when bio_send takes less than it was
	 * offered, cleared when it takes a whole remainder.
	 */
	bool lib_pending;
	bool close_wanted; /* close_notify requested while lib_pending */
	/* Ciphertext received, not yet taken by the library: in[in_head, in_head + in_len). */
	uint32_t in_head, in_len;
	/* Ciphertext to send: out[out_head, out_head + out_len); appended behind, never moved. */
	uint32_t out_head, out_len;
	uint8_t in[IO_TLS_IN_CAP_BYTES];
	uint8_t out[IO_TLS_OUT_CAP_BYTES];
};

/* Server preference order: AES-GCM first (AES-NI), ChaCha for clients without it. */
static const int io_tls_suites[] = {
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	0,
};

static const mbedtls_ecp_group_id io_tls_groups[] = {
	MBEDTLS_ECP_DP_CURVE25519,
	MBEDTLS_ECP_DP_SECP256R1,
	MBEDTLS_ECP_DP_SECP384R1,
	MBEDTLS_ECP_DP_NONE,
};

static const int io_tls_sig_hashes[] = {
	MBEDTLS_MD_SHA256,
	MBEDTLS_MD_SHA384,
	MBEDTLS_MD_SHA512,
	MBEDTLS_MD_NONE,
};

static void set_err(char *err, size_t errcap, const char *what, const char *path, int mbed_ret)
{
	if (err == NULL || errcap == 0)
		return;
	char lib[128] = "";
	if (mbed_ret != 0)
		mbedtls_strerror(mbed_ret, lib, sizeof(lib));
	snprintf(err, errcap, "%s%s%s%s%s", what, path ? " " : "", path ? path : "", lib[0] ? ": " : "", lib);
}

static void cfg_put(struct io_tls_cfg *cfg)
{
	DS_ASSERT(cfg->refs > 0);
	if (--cfg->refs > 0)
		return;
	mbedtls_ssl_config_free(&cfg->conf);
	mbedtls_ssl_ticket_free(&cfg->ticket);
	mbedtls_pk_free(&cfg->key);
	mbedtls_x509_crt_free(&cfg->chain);
	free(cfg);
}

/*
 * The certificate chain and its key: both parse, the key is the leaf's, and
 * it is RSA or ECDSA. 0, or non-zero (the failing mbedTLS code, or 1) with
 * err set.
 */
static int cfg_load_pair(struct io_tls_cfg *cfg, const char *cert_path, const char *key_path, char *err,
			 size_t errcap)
{
	int r = mbedtls_x509_crt_parse_file(&cfg->chain, cert_path);
	if (r != 0) {
		/* >0: some certificates of the file did not parse: refuse a half-read chain. */
		set_err(err, errcap, "tls: cannot load certificate chain", cert_path, r < 0 ? r : 0);
		return r;
	}
	r = mbedtls_pk_parse_keyfile(&cfg->key, key_path, NULL);
	if (r != 0) {
		set_err(err, errcap, "tls: cannot load private key", key_path, r);
		return r;
	}
	/* The first certificate of the file is the leaf: the key must be its. */
	r = mbedtls_pk_check_pair(&cfg->chain.pk, &cfg->key);
	if (r != 0) {
		set_err(err, errcap, "tls: private key does not match the first certificate of", cert_path,
			r);
		return r;
	}
	if (!mbedtls_pk_can_do(&cfg->key, MBEDTLS_PK_ECDSA) &&
	    !mbedtls_pk_can_do(&cfg->key, MBEDTLS_PK_RSA)) {
		set_err(err, errcap, "tls: key is neither RSA nor ECDSA:", key_path, 0);
		return 1;
	}
	return 0;
}

/*
 * Seed a worker's RNG, personalised with the address of its state: distinct
 * per worker and per side. 0 or the failing mbedTLS code.
 */
static int rng_seed(mbedtls_entropy_context *ent, mbedtls_ctr_drbg_context *drbg, const char *side,
		    const void *owner)
{
	char pers[64];
	int pn = snprintf(pers, sizeof(pers), "dotspool-tls %s %p", side, owner);
	return mbedtls_ctr_drbg_seed(drbg, mbedtls_entropy_func, ent, (const unsigned char *)pers,
				     (size_t)pn);
}

/*
 * The policy both sides share: TLS 1.2 only, our suites, groups and hashes,
 * no renegotiation. 0, or the failing mbedTLS code with err set.
 */
static int conf_policy(mbedtls_ssl_config *conf, int endpoint, mbedtls_ctr_drbg_context *drbg, char *err,
		       size_t errcap)
{
	int r = mbedtls_ssl_config_defaults(conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
					    MBEDTLS_SSL_PRESET_DEFAULT);
	if (r != 0) {
		set_err(err, errcap, "tls: config defaults", NULL, r);
		return r;
	}
	mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, drbg);
	mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_ciphersuites(conf, io_tls_suites);
	mbedtls_ssl_conf_curves(conf, io_tls_groups);
	mbedtls_ssl_conf_sig_hashes(conf, io_tls_sig_hashes);
	mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
	return 0;
}

/*
 * The server configuration: the shared policy, no client certificates,
 * session tickets, our certificate. 0, or the failing mbedTLS code with err
 * set.
 */
static int cfg_setup_conf(struct io_tls_server *s, struct io_tls_cfg *cfg, char *err, size_t errcap)
{
	int r = conf_policy(&cfg->conf, MBEDTLS_SSL_IS_SERVER, &s->drbg, err, errcap);
	if (r != 0)
		return r;
	mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_NONE); /* no client certificates */
	r = mbedtls_ssl_ticket_setup(&cfg->ticket, mbedtls_ctr_drbg_random, &s->drbg,
				     MBEDTLS_CIPHER_AES_256_GCM, IO_TLS_TICKET_LIFETIME_S);
	if (r != 0) {
		set_err(err, errcap, "tls: session ticket key", NULL, r);
		return r;
	}
	mbedtls_ssl_conf_session_tickets_cb(&cfg->conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse,
					    &cfg->ticket);
	r = mbedtls_ssl_conf_own_cert(&cfg->conf, &cfg->chain, &cfg->key);
	if (r != 0)
		set_err(err, errcap, "tls: own certificate", NULL, r);
	return r;
}

static int cfg_create(struct io_tls_server *s, const char *cert_path, const char *key_path,
		      struct io_tls_cfg **out, char *err, size_t errcap)
{
	struct io_tls_cfg *cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL) {
		set_err(err, errcap, "tls: out of memory", NULL, 0);
		return -ENOMEM;
	}
	cfg->refs = 1;
	mbedtls_x509_crt_init(&cfg->chain);
	mbedtls_pk_init(&cfg->key);
	mbedtls_ssl_config_init(&cfg->conf);
	mbedtls_ssl_ticket_init(&cfg->ticket);

	int r = cfg_load_pair(cfg, cert_path, key_path, err, errcap);
	if (r == 0)
		r = cfg_setup_conf(s, cfg, err, errcap);
	if (r == 0) {
		*out = cfg;
		return 0;
	}
	cfg_put(cfg);
	if (r == MBEDTLS_ERR_SSL_ALLOC_FAILED || r == MBEDTLS_ERR_X509_ALLOC_FAILED ||
	    r == MBEDTLS_ERR_PK_ALLOC_FAILED)
		return -ENOMEM;
	return -EINVAL;
}

int io_tls_server_create(struct io_tls_server **out, const char *cert_pem_path, const char *key_pem_path,
			 uint32_t conn_max, char *err, size_t errcap)
{
	DS_ASSERT(out != NULL && cert_pem_path != NULL && key_pem_path != NULL);
	if (err && errcap)
		err[0] = '\0';
	*out = NULL;
	if (conn_max == 0) {
		set_err(err, errcap, "tls: conn_max must be > 0", NULL, 0);
		return -EINVAL;
	}
	struct io_tls_server *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		set_err(err, errcap, "tls: out of memory", NULL, 0);
		return -ENOMEM;
	}
	s->conn_max = conn_max;
	mbedtls_entropy_init(&s->entropy);
	mbedtls_ctr_drbg_init(&s->drbg);
	int r = rng_seed(&s->entropy, &s->drbg, "server", s);
	if (r != 0) {
		set_err(err, errcap, "tls: seeding the RNG", NULL, r);
		mbedtls_ctr_drbg_free(&s->drbg);
		mbedtls_entropy_free(&s->entropy);
		free(s);
		return -EIO;
	}
	int rc = cfg_create(s, cert_pem_path, key_pem_path, &s->cur, err, errcap);
	if (rc < 0) {
		mbedtls_ctr_drbg_free(&s->drbg);
		mbedtls_entropy_free(&s->entropy);
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int io_tls_server_reload(struct io_tls_server *s, const char *cert_pem_path, const char *key_pem_path,
			 char *err, size_t errcap)
{
	DS_ASSERT(s != NULL && s->cur != NULL);
	if (err && errcap)
		err[0] = '\0';
	struct io_tls_cfg *cfg = NULL;
	int rc = cfg_create(s, cert_pem_path, key_pem_path, &cfg, err, errcap);
	if (rc < 0)
		return rc; /* the old certificate stays */
	cfg_put(s->cur);   /* freed now, or with its last conn */
	s->cur = cfg;
	return 0;
}

void io_tls_server_destroy(struct io_tls_server *s)
{
	if (s == NULL)
		return;
	/* The conns point at the server's RNG: they must be gone first. */
	DS_ASSERT(s->conn_count == 0);
	cfg_put(s->cur);
	mbedtls_ctr_drbg_free(&s->drbg);
	mbedtls_entropy_free(&s->entropy);
	free(s);
}

uint32_t io_tls_server_conn_count(const struct io_tls_server *s)
{
	return s->conn_count;
}

/* ---- the library's transport: memory only ---- */

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct io_tls_conn *c = ctx;
	size_t tail = (size_t)c->out_head + c->out_len;
	DS_ASSERT(tail <= sizeof(c->out));
	size_t room = sizeof(c->out) - tail;
	c->lib_pending = room < len;
	if (room == 0)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	size_t n = DS_MIN(room, len);
	memcpy(c->out + tail, buf, n);
	c->out_len += (uint32_t)n;
	return (int)n;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
	struct io_tls_conn *c = ctx;
	if (c->in_len == 0)
		return MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = DS_MIN((size_t)c->in_len, len);
	memcpy(buf, c->in + c->in_head, n);
	c->in_head += (uint32_t)n;
	c->in_len -= (uint32_t)n;
	if (c->in_len == 0)
		c->in_head = 0;
	return (int)n;
}

/* A session on conf, either side; the caller attaches it to its owner. NULL on -ENOMEM / setup failure (*rc).
 */
static struct io_tls_conn *conn_new(const mbedtls_ssl_config *conf, int *rc)
{
	struct io_tls_conn *c = malloc(sizeof(*c));
	if (c == NULL) {
		*rc = -ENOMEM;
		return NULL;
	}
	/* The buffers need no clearing: only [head, head + len) is ever read. */
	c->srv = NULL;
	c->cfg = NULL;
	c->cli = NULL;
	c->failed = 0;
	c->hs_done = false;
	c->peer_closed = false;
	c->has_name = false;
	c->lib_pending = false;
	c->close_wanted = false;
	c->in_head = c->in_len = 0;
	c->out_head = c->out_len = 0;
	mbedtls_ssl_init(&c->ssl);
	int r = mbedtls_ssl_setup(&c->ssl, conf);
	if (r != 0) {
		mbedtls_ssl_free(&c->ssl);
		free(c);
		*rc = r == MBEDTLS_ERR_SSL_ALLOC_FAILED ? -ENOMEM : -EPROTO;
		return NULL;
	}
	mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
	return c;
}

int io_tls_conn_create(struct io_tls_conn **out, struct io_tls_server *s)
{
	DS_ASSERT(out != NULL && s != NULL);
	*out = NULL;
	if (s->conn_count >= s->conn_max)
		return -EMFILE;
	int rc = 0;
	struct io_tls_conn *c = conn_new(&s->cur->conf, &rc);
	if (c == NULL)
		return rc;
	c->srv = s;
	c->cfg = s->cur;
	c->cfg->refs++;
	s->conn_count++;
	*out = c;
	return 0;
}

int io_tls_conn_create_client(struct io_tls_conn **out, struct io_tls_client *cl, const char *server_name)
{
	DS_ASSERT(out != NULL && cl != NULL);
	*out = NULL;
	if (cl->conn_count >= cl->conn_max)
		return -EMFILE;
	int rc = 0;
	struct io_tls_conn *c = conn_new(&cl->conf, &rc);
	if (c == NULL)
		return rc;
	if (server_name != NULL && server_name[0] != '\0') {
		/* SNI and the name verification checks against the certificate's DNS names / CN. */
		int r = mbedtls_ssl_set_hostname(&c->ssl, server_name);
		if (r != 0) {
			mbedtls_ssl_free(&c->ssl);
			free(c);
			return r == MBEDTLS_ERR_SSL_ALLOC_FAILED ? -ENOMEM : -EINVAL;
		}
		c->has_name = true;
	}
	c->cli = cl;
	cl->conn_count++;
	*out = c;
	return 0;
}

void io_tls_conn_destroy(struct io_tls_conn *c)
{
	if (c == NULL)
		return;
	DS_ASSERT((c->srv == NULL) != (c->cli == NULL));
	mbedtls_ssl_free(&c->ssl);
	if (c->cli != NULL) {
		DS_ASSERT(c->cli->conn_count > 0);
		c->cli->conn_count--;
	} else {
		DS_ASSERT(c->srv->conn_count > 0);
		c->srv->conn_count--;
		cfg_put(c->cfg);
	}
	free(c);
}

size_t io_tls_feed_room(const struct io_tls_conn *c)
{
	return sizeof(c->in) - c->in_len;
}

size_t io_tls_feed(struct io_tls_conn *c, const uint8_t *buf, size_t len)
{
	size_t tail = (size_t)c->in_head + c->in_len;
	if (len > sizeof(c->in) - tail && c->in_head > 0) {
		/* Nobody outside holds a pointer into the input: compact it. */
		memmove(c->in, c->in + c->in_head, c->in_len);
		c->in_head = 0;
		tail = c->in_len;
	}
	size_t n = DS_MIN(len, sizeof(c->in) - tail);
	memcpy(c->in + tail, buf, n);
	c->in_len += (uint32_t)n;
	return n;
}

/*
 * Move the rest of a record the library still holds into our output (0,
 * or MBEDTLS_ERR_SSL_WANT_WRITE while there is no room). Needed because
 * mbedtls_ssl_write() and mbedtls_ssl_close_notify(), finding such a tail
 * (e.g. of an alert written by mbedtls_ssl_read()), only flush it and
 * report success without doing their own work. 2.28 exports the flush in
 * ssl_internal.h; a 3.x port needs an equivalent (3.6: same function,
 * private header), or must call the operation that left the tail again.
 */
static int lib_flush(struct io_tls_conn *c)
{
	if (!c->lib_pending)
		return 0;
	int r = mbedtls_ssl_flush_output(&c->ssl);
	DS_ASSERT(r == 0 || r == MBEDTLS_ERR_SSL_WANT_WRITE); /* our bio_send fails no other way */
	DS_ASSERT(r != 0 || !c->lib_pending);
	return r;
}

/* Map a library error to -errno and latch it: the session is dead. */
static int conn_fail(struct io_tls_conn *c, int r)
{
	int e;
	switch (r) {
	case MBEDTLS_ERR_SSL_ALLOC_FAILED:
		e = -ENOMEM;
		break;
	case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
	case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
	case MBEDTLS_ERR_SSL_CONN_EOF:
		e = -ECONNRESET;
		break;
	default:
		e = -EPROTO;
		break;
	}
	c->failed = e;
	return e;
}

int io_tls_handshake(struct io_tls_conn *c)
{
	if (c->failed)
		return c->failed;
	if (c->hs_done)
		return 0;
	/*
	 * Runs the library's steps until one needs input that has not been
	 * fed, or output room: one client flight is processed per call (see
	 * the note at the top of this file).
	 */
	int r = mbedtls_ssl_handshake(&c->ssl);
	if (r == 0) {
		c->hs_done = true;
		return 0;
	}
	if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
		return -EAGAIN;
	return conn_fail(c, r);
}

ssize_t io_tls_read(struct io_tls_conn *c, uint8_t *buf, size_t cap)
{
	if (c->peer_closed)
		return 0;
	if (!c->hs_done || c->failed) {
		int r = io_tls_handshake(c);
		if (r != 0)
			return r;
	}
	if (cap == 0)
		return -EAGAIN;
	int r = mbedtls_ssl_read(&c->ssl, buf, cap);
	if (r > 0)
		return r;
	if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
		return -EAGAIN;
	if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
		/* Orderly end of the peer's stream; nothing more will be read. */
		c->peer_closed = true;
		return 0;
	}
	return conn_fail(c, r);
}

ssize_t io_tls_write(struct io_tls_conn *c, const uint8_t *buf, size_t len)
{
	if (c->failed)
		return c->failed;
	DS_ASSERT(c->hs_done);
	if (len == 0)
		return 0;
	if (lib_flush(c) != 0)
		return -EAGAIN;
	int exp = mbedtls_ssl_get_record_expansion(&c->ssl);
	int max_payload = mbedtls_ssl_get_max_out_record_payload(&c->ssl);
	DS_ASSERT(exp > 0 && max_payload > 0);
	if (c->out_len == 0)
		c->out_head = 0;
	size_t room = sizeof(c->out) - ((size_t)c->out_head + c->out_len);
	if (room <= (size_t)exp)
		return -EAGAIN;
	/*
	 * Encrypt only what fits whole in the output buffer: the library then
	 * never sees WANT_WRITE halfway through a record, which would oblige
	 * the caller to repeat the call with the same arguments.
	 */
	size_t n = DS_MIN(len, room - (size_t)exp);
	n = DS_MIN(n, (size_t)max_payload);
	int r = mbedtls_ssl_write(&c->ssl, buf, n);
	DS_ASSERT(r != MBEDTLS_ERR_SSL_WANT_WRITE && r != MBEDTLS_ERR_SSL_WANT_READ);
	if (r > 0) {
		DS_ASSERT((size_t)r <= n);
		return r;
	}
	return conn_fail(c, r);
}

const uint8_t *io_tls_output(struct io_tls_conn *c, size_t *len)
{
	*len = c->out_len;
	return c->out_len ? c->out + c->out_head : NULL;
}

void io_tls_output_consumed(struct io_tls_conn *c, size_t n)
{
	DS_ASSERT(n <= c->out_len);
	c->out_head += (uint32_t)n;
	c->out_len -= (uint32_t)n;
	if (c->out_len == 0)
		c->out_head = 0; /* nothing in flight any more: start over at the front */
	/* Room again: let a record the library still holds follow at once. */
	if (lib_flush(c) == 0 && c->close_wanted) {
		c->close_wanted = false;
		(void)mbedtls_ssl_close_notify(&c->ssl);
	}
}

int io_tls_describe(const struct io_tls_conn *c, char *buf, size_t cap)
{
	if (!c->hs_done)
		return -EAGAIN;
	const char *ver = mbedtls_ssl_get_version(&c->ssl);
	const char *suite = mbedtls_ssl_get_ciphersuite(&c->ssl);
	int n = snprintf(buf, cap, "%s %s", ver ? ver : "unknown", suite ? suite : "unknown");
	if (n < 0 || (size_t)n >= cap)
		return -ENOSPC;
	return n;
}

void io_tls_close_notify(struct io_tls_conn *c)
{
	if (!c->hs_done || c->failed == -EPROTO || c->failed == -ENOMEM)
		return;
	/*
	 * An alert record is 31 bytes at most; what finds no room follows
	 * from io_tls_output_consumed().
	 */
	if (lib_flush(c) != 0) {
		c->close_wanted = true;
		return;
	}
	(void)mbedtls_ssl_close_notify(&c->ssl);
}

/* ---- client side ---- */

int io_tls_client_create(struct io_tls_client **out, const char *ca_file, uint32_t conn_max, char *err,
			 size_t errcap)
{
	DS_ASSERT(out != NULL);
	if (err && errcap)
		err[0] = '\0';
	*out = NULL;
	if (conn_max == 0) {
		set_err(err, errcap, "tls: conn_max must be > 0", NULL, 0);
		return -EINVAL;
	}
	struct io_tls_client *cl = calloc(1, sizeof(*cl));
	if (cl == NULL) {
		set_err(err, errcap, "tls: out of memory", NULL, 0);
		return -ENOMEM;
	}
	cl->conn_max = conn_max;
	mbedtls_entropy_init(&cl->entropy);
	mbedtls_ctr_drbg_init(&cl->drbg);
	mbedtls_x509_crt_init(&cl->ca);
	mbedtls_ssl_config_init(&cl->conf);
	int rc = -EINVAL;
	int r = rng_seed(&cl->entropy, &cl->drbg, "client", cl);
	if (r != 0) {
		set_err(err, errcap, "tls: seeding the RNG", NULL, r);
		rc = -EIO;
		goto fail;
	}
	if (ca_file != NULL && ca_file[0] != '\0') {
		r = mbedtls_x509_crt_parse_file(&cl->ca, ca_file);
		if (r != 0) {
			/* >0: some certificates did not parse: a half-read trust list would defer at random.
			 */
			set_err(err, errcap, "tls: cannot load CA file", ca_file, r < 0 ? r : 0);
			rc = r == MBEDTLS_ERR_X509_ALLOC_FAILED ? -ENOMEM : -EINVAL;
			goto fail;
		}
		cl->has_ca = true;
	}
	r = conf_policy(&cl->conf, MBEDTLS_SSL_IS_CLIENT, &cl->drbg, err, errcap);
	if (r != 0)
		goto fail;
	if (cl->has_ca) {
		mbedtls_ssl_conf_ca_chain(&cl->conf, &cl->ca, NULL);
		/*
		 * OPTIONAL: an unverifiable certificate does not fail the
		 * handshake; io_tls_verify_result() reports it and the caller's
		 * policy decides (required: defer, opportunistic: log and go on).
		 */
		mbedtls_ssl_conf_authmode(&cl->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
	} else {
		/*
		 * Nothing to verify against: skip the chain's signature checks
		 * (each an ECDSA/RSA verification) rather than pay for a
		 * certain "not trusted".
		 */
		mbedtls_ssl_conf_authmode(&cl->conf, MBEDTLS_SSL_VERIFY_NONE);
	}
	/*
	 * Sessions are not resumed (delivery keeps its connections open and
	 * reuses them): no ticket to ask for, so the server spends nothing on
	 * one.
	 */
	mbedtls_ssl_conf_session_tickets(&cl->conf, MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
	*out = cl;
	return 0;
fail:
	mbedtls_ssl_config_free(&cl->conf);
	mbedtls_x509_crt_free(&cl->ca);
	mbedtls_ctr_drbg_free(&cl->drbg);
	mbedtls_entropy_free(&cl->entropy);
	free(cl);
	return rc;
}

void io_tls_client_destroy(struct io_tls_client *cl)
{
	if (cl == NULL)
		return;
	/* The sessions point at the client's config, CA chain and RNG. */
	DS_ASSERT(cl->conn_count == 0);
	mbedtls_ssl_config_free(&cl->conf);
	mbedtls_x509_crt_free(&cl->ca);
	mbedtls_ctr_drbg_free(&cl->drbg);
	mbedtls_entropy_free(&cl->entropy);
	free(cl);
}

uint32_t io_tls_client_conn_count(const struct io_tls_client *cl)
{
	return cl->conn_count;
}

/* Append to why[*len, cap) (snprintf semantics, truncating). */
static void why_add(char *why, size_t cap, size_t *len, const char *s)
{
	if (why == NULL || *len + 1 >= cap)
		return;
	int n = snprintf(why + *len, cap - *len, "%s", s);
	if (n > 0)
		*len = DS_MIN(*len + (size_t)n, cap - 1);
}

int io_tls_verify_result(const struct io_tls_conn *c, char *why, size_t cap)
{
	if (why && cap)
		why[0] = '\0';
	if (c->cli == NULL) {
		why_add(why, cap, &(size_t){0}, "not a client session");
		return -EINVAL;
	}
	if (!c->hs_done || c->failed) {
		why_add(why, cap, &(size_t){0}, "handshake not complete");
		return -EAGAIN;
	}
	if (!c->cli->has_ca) {
		why_add(why, cap, &(size_t){0}, "certificate not verified: no CA file");
		return -ENOKEY;
	}
	uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
	if (flags == 0)
		return 0;
	size_t len = 0;
	why_add(why, cap, &len, "certificate not verified: ");
	/*
	 * The library's text, one line per flag, joined into one line for the
	 * delivery log (e.g. "The certificate Common Name (CN) does not match
	 * with the expected CN").
	 */
	char info[512];
	int n = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
	if (n <= 0) {
		char hex[32];
		snprintf(hex, sizeof(hex), "flags 0x%08x", (unsigned)flags);
		why_add(why, cap, &len, hex);
	} else {
		/* Not strtok(): workers run this concurrently. */
		char *p = info;
		for (bool first = true; *p != '\0'; first = false) {
			char *nl = strchr(p, '\n');
			if (nl != NULL)
				*nl = '\0';
			if (!first)
				why_add(why, cap, &len, "; ");
			why_add(why, cap, &len, p);
			if (nl == NULL)
				break;
			p = nl + 1;
		}
	}
	/* Who it was: the leaf's subject, for the operator reading the log. */
	const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&c->ssl);
	if (peer != NULL) {
		char dn[160];
		if (mbedtls_x509_dn_gets(dn, sizeof(dn), &peer->subject) > 0) {
			why_add(why, cap, &len, " (subject ");
			why_add(why, cap, &len, dn);
			why_add(why, cap, &len, ")");
		}
	}
	return -EBADMSG;
}
