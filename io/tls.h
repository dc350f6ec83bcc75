/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_TLS_H
#define DS_IO_TLS_H

/*
 * TLS for STARTTLS, driven entirely through memory buffers: the io layer
 * feeds received ciphertext in and sends the ciphertext this module
 * produces, so every socket operation stays on io_uring. The library types
 * stay inside io/tls.c (opaque structs here), so another mbedTLS version
 * only touches that file.
 *
 * Threading: a server and its connections belong to one worker thread.
 * Nothing here is shared between threads (each worker creates its own
 * server: the RNG state is not meant to be shared).
 *
 * Return convention: 0 or a count on success, -errno on failure:
 *   -EAGAIN      nothing more can be done until more ciphertext is fed, or
 *                until the pending output (io_tls_output) has been sent
 *   -EPROTO      the peer violated the protocol, or the handshake failed
 *                (an alert has been queued for sending when possible)
 *   -ECONNRESET  the peer sent a fatal alert or closed mid-handshake
 *   -ENOMEM      out of memory
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Bounded per-connection ciphertext buffers (besides the library's own two
 * 16.7 KiB record buffers). Input holds one maximal TLS 1.2 AEAD record
 * (5-byte header + 16 KiB + explicit nonce + tag), so a body record is fed
 * in one piece. Output is smaller: the server only sends replies (a few
 * hundred bytes) and its handshake flight (about 1.5-2 KiB with a
 * two-certificate chain); larger output is simply sent in several rounds.
 */
#define IO_TLS_IN_CAP_BYTES  (17 * 1024 + 5)
#define IO_TLS_OUT_CAP_BYTES (8 * 1024)

struct io_tls_server; /* cert chain + key + config + RNG; one per worker */
struct io_tls_conn;   /* one TLS session; allocated only when STARTTLS is accepted */

/*
 * Load a PEM certificate chain (leaf first, then intermediates) and its PEM
 * private key (RSA or EC, unencrypted) and build a server configuration:
 * TLS 1.2 only (the packaged mbedTLS 2.28 has no TLS 1.3), ECDHE with
 * AES-GCM or CHACHA20-POLY1305 only, renegotiation off, session tickets
 * (RFC 5077) for abbreviated handshakes.
 * conn_max bounds the live connections of this server (io_tls_conn_create
 * fails with -EMFILE beyond it). On failure, returns -errno and writes a
 * one-line reason into err (errcap bytes, NUL-terminated; err may be NULL).
 */
int io_tls_server_create(struct io_tls_server **out, const char *cert_pem_path, const char *key_pem_path,
			 uint32_t conn_max, char *err, size_t errcap);

/*
 * Replace the certificate and key (SIGHUP). Connections created afterwards
 * use the new ones; connections in progress keep the configuration they
 * started with (reference counted, freed with the last of them). Tickets
 * issued before the reload are no longer accepted. On failure
 * the old certificate stays in use and -errno is returned with a reason.
 */
int io_tls_server_reload(struct io_tls_server *s, const char *cert_pem_path, const char *key_pem_path,
			 char *err, size_t errcap);

/* Free the server. Every connection of it must have been destroyed first. */
void io_tls_server_destroy(struct io_tls_server *s);

/* Live connections of this server (for tests and statistics). */
uint32_t io_tls_server_conn_count(const struct io_tls_server *s);

/*
 * Start a server-side TLS session (after "220 Ready to start TLS" has been
 * queued). Allocates about IO_TLS_IN_CAP + IO_TLS_OUT_CAP + the library's
 * buffers (see io/tls.c for measured numbers). -EMFILE when the server's
 * conn_max is reached, -ENOMEM.
 */
int io_tls_conn_create(struct io_tls_conn **out, struct io_tls_server *s);

/* Free the session (no close_notify is sent: call io_tls_close_notify first for a clean close). */
void io_tls_conn_destroy(struct io_tls_conn *c);

/*
 * Ciphertext in: copy up to len bytes into the connection's bounded input
 * buffer. Returns the bytes taken (less than len when the buffer is full:
 * the caller keeps the rest, runs io_tls_handshake / io_tls_read to drain,
 * then feeds the rest).
 */
size_t io_tls_feed(struct io_tls_conn *c, const uint8_t *buf, size_t len);

/* Free room in the input buffer (0: drain with io_tls_handshake / io_tls_read first). */
size_t io_tls_feed_room(const struct io_tls_conn *c);

/*
 * Advance the handshake as far as the fed input allows, queuing the
 * records to send in the output buffer. 0: handshake complete (then use
 * io_tls_read; fed bytes after the client's Finished are kept for it).
 * -EAGAIN: feed more input, and/or send io_tls_output first and call again
 * once it has been consumed. -EPROTO / -ECONNRESET: failed (send any output,
 * then close). Idempotent once complete.
 */
int io_tls_handshake(struct io_tls_conn *c);

/*
 * Plaintext out: decrypt from the fed input. >0 bytes written to buf;
 * -EAGAIN no complete record yet (feed more); 0 the peer sent close_notify;
 * other <0 fatal. Call in a loop until -EAGAIN after every feed: one record
 * may yield more plaintext than cap.
 */
ssize_t io_tls_read(struct io_tls_conn *c, uint8_t *buf, size_t cap);

/*
 * Plaintext in: encrypt up to len bytes into records queued in the output
 * buffer. Returns the bytes taken (>0), -EAGAIN when the output buffer has
 * no room for a record (send io_tls_output first), other <0 fatal.
 * Only after the handshake is complete.
 */
ssize_t io_tls_write(struct io_tls_conn *c, const uint8_t *buf, size_t len);

/* Ciphertext to send: the pending bytes (NULL and *len 0 when none). Stays valid until consumed. */
const uint8_t *io_tls_output(struct io_tls_conn *c, size_t *len);

/*
 * n bytes of io_tls_output have been sent (n <= the pending length). May
 * append more output (the rest of a record that found no room, a deferred
 * close_notify): call io_tls_output again afterwards.
 */
void io_tls_output_consumed(struct io_tls_conn *c, size_t n);

/*
 * "TLSv1.2 TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" for ds_envelope.tls and
 * the Received: header. Returns the length written (NUL excluded) or
 * -EAGAIN before the handshake is complete, -ENOSPC if cap is too small.
 */
int io_tls_describe(const struct io_tls_conn *c, char *buf, size_t cap);

/*
 * Queue a close_notify alert in the output (after the handshake; deferred
 * to io_tls_output_consumed() if the output is full). Send io_tls_output
 * afterwards.
 */
void io_tls_close_notify(struct io_tls_conn *c);

/* ---- client side (delivery: STARTTLS to the next hop) ---- */

struct io_tls_client; /* config + CA chain + RNG; one per worker */

/*
 * Build a client configuration with the server's policy (TLS 1.2 only,
 * ECDHE with AES-GCM or CHACHA20-POLY1305, the same groups and hashes, no
 * renegotiation). ca_file: PEM trust anchors (one or more certificates);
 * NULL or "": none, the peer's certificate is then not verified at all and
 * io_tls_verify_result() reports -ENOKEY. The library's authmode is
 * OPTIONAL: a handshake with an unverifiable certificate completes, and the
 * caller decides with io_tls_verify_result() (delivery: `required` defers,
 * `opportunistic` goes on and logs). conn_max bounds the live client
 * sessions (-EMFILE beyond). On failure, -errno and a one-line reason in err.
 */
int io_tls_client_create(struct io_tls_client **out, const char *ca_file, uint32_t conn_max, char *err,
			 size_t errcap);

/* Free the client. Every session of it must have been destroyed first. */
void io_tls_client_destroy(struct io_tls_client *cl);

/* Live sessions of this client (for tests and statistics). */
uint32_t io_tls_client_conn_count(const struct io_tls_client *cl);

/*
 * Start a client-side TLS session (after the next hop's "220" to STARTTLS).
 * server_name (NULL: none) is sent as SNI and is the DNS name the
 * certificate must carry (mbedTLS 2.28 matches DNS names, not IP
 * addresses); without it only the chain is verified. Then drive it with the
 * same functions as a server session: call io_tls_handshake() at once (it
 * queues the ClientHello: send io_tls_output), feed the replies, call it
 * again until 0; then io_tls_write / io_tls_read / io_tls_close_notify /
 * io_tls_conn_destroy. -EMFILE at conn_max, -ENOMEM, -EINVAL (a name longer
 * than 255 bytes).
 */
int io_tls_conn_create_client(struct io_tls_conn **out, struct io_tls_client *cl, const char *server_name);

/*
 * The verification of the peer's certificate, after the client handshake
 * completed. 0: the chain verified against the CA file and, if a
 * server_name was given, the certificate carries that name. Otherwise a
 * one-line reason in why (cap bytes, NUL-terminated; why may be NULL) and:
 *   -ENOKEY   no CA file was configured (nothing verified)
 *   -EBADMSG  the certificate did not verify (untrusted, name mismatch,
 *             expired, wrong key usage, ...)
 *   -EAGAIN   the handshake is not complete (or failed)
 *   -EINVAL   a server session
 */
int io_tls_verify_result(const struct io_tls_conn *c, char *why, size_t cap);

#endif
