/* SPDX-License-Identifier: MIT */
#ifndef DS_CORE_SMTP_H
#define DS_CORE_SMTP_H

/*
 * core/: the SMTP/LMTP session as a pure state machine.
 *
 * Bytes in (smtp_session_input), reply bytes out (smtp_session_output),
 * message data out through struct smtp_sink callbacks. No sockets, no
 * files, no threads, no clocks except the one the sink provides.
 *
 * The io layer drives it:
 *
 *   smtp_session_init()            -> 220 greeting queued
 *   loop:
 *     st = smtp_session_input(s, buf, len, &used)
 *     send smtp_session_output() bytes, then smtp_session_output_consumed()
 *     st == SMTP_WAIT_COMMIT: stop feeding input; when the spool reports the
 *        commit durable (or failed) call smtp_session_commit_done(), send
 *        the output, then feed the rest (buf + used).
 *     st == SMTP_WAIT_RCPT: the same, until smtp_session_rcpt_done().
 *     st == SMTP_BLOCKED: output buffer full; send output, feed buf + used later.
 *     st == SMTP_STARTTLS: 220 queued; send it, drop any unread input
 *        (RFC 3207 / CVE-2011-0411: it was sent in plaintext), handshake,
 *        then smtp_session_tls_started().
 *     st == SMTP_CLOSE: send the output, then close.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds_envelope.h"

#define SMTP_QUEUE_ID_MAX 32 /* including the NUL */

struct smtp_config {
	const char *hostname;		   /* our name in the greeting and Received: */
	const char *const *accept_domains; /* "example.com" exact, ".example.com" any subdomain */
	uint32_t accept_domain_count;
	bool lmtp;		   /* LHLO instead of HELO/EHLO, per-recipient replies */
	bool tls_available;	   /* advertise STARTTLS */
	uint64_t max_message_size; /* bytes; SIZE advertised with this value */
	uint32_t max_recipients;   /* per message, default 1000 */
	uint32_t max_cmd_line;	   /* octets incl. CRLF, default 512 */
	uint32_t max_text_line;	   /* octets incl. CRLF, default 1000 */
	uint32_t max_errors;	   /* consecutive errors before 421, default 10 */
};

void smtp_config_defaults(struct smtp_config *cfg);

/* What the session calls. io/ implements these and forwards to the spool. */
struct smtp_sink {
	/*
	 * A transaction starts receiving data (DATA answered 354, or first BDAT).
	 * Fill id (NUL-terminated, at most SMTP_QUEUE_ID_MAX bytes with the NUL).
	 * Return 0, or -ENOSPC (-> 452 4.3.1), or another -errno (-> 451 4.3.0).
	 */
	int (*data_begin)(void *ctx, char *id, size_t id_cap);
	/*
	 * Message bytes in order: first the Received: header (in exactly one
	 * call, so io/ can tell it from the bytes as received), then the data
	 * with dot-stuffing removed. Return 0 or -errno; an error latches: the
	 * session reads on to the end of data, then replies 451/452 (never 250).
	 */
	int (*data_write)(void *ctx, const void *buf, size_t len);
	/*
	 * End of data, the session accepts the message: make it durable.
	 * Return 0 when queued: the session answers only when io calls
	 * smtp_session_commit_done(). Return -errno to fail it at once.
	 */
	int (*data_commit)(void *ctx, const struct ds_envelope *env);
	/* The transaction in data is abandoned (too big, refused, reset, closed). */
	void (*data_abort)(void *ctx);
	/* Wall clock, microseconds since the Unix epoch. */
	int64_t (*now_us)(void *ctx);
	/*
	 * Optional (may be NULL), for logs: a final 4xx/5xx reply line was
	 * queued. line has no CRLF; helo and mail_from are those of the
	 * session and of the transaction the reply answers ("" when none),
	 * taken before the reply resets anything (a refusal at the end of
	 * data still names its sender, also when pipelined commands follow).
	 * The strings are valid only during the call.
	 */
	void (*refused)(void *ctx, unsigned code, const char *line, const char *helo, const char *mail_from);
	/*
	 * Optional (may be NULL), for metrics: a reply with this code (200..599)
	 * was queued. Once per reply: a multi-line reply (EHLO) counts once,
	 * each LMTP per-recipient reply counts.
	 */
	void (*replied)(void *ctx, unsigned code);
	/*
	 * Optional (may be NULL: always yes): may a new transaction start now?
	 * Asked at MAIL once the command is valid (syntax, parameters, SIZE),
	 * before it is answered; the spool's transaction only starts at DATA,
	 * so this is the first point where new mail can be turned away for a
	 * server-wide condition (a spool above its high watermark). Return 0,
	 * or -ENOSPC (-> 452 4.3.1 Insufficient system storage), or -EBUSY
	 * (-> 450 4.7.1, a rate limit on the client), or another -errno
	 * (-> 451 4.3.0). Refused, no transaction starts; the session
	 * goes on (a later MAIL asks again) and the refusal does not count
	 * toward max_errors: it is the server's state, not the client's error.
	 */
	int (*mail_ok)(void *ctx);
	/*
	 * Optional (may be NULL: always yes): ingress policy for one recipient
	 * (issue 17), asked at RCPT once the command is valid and its domain
	 * accepted, before it is answered. mailbox is "local@domain" (domain
	 * NULL for <postmaster>), valid only during the call. Return
	 *   0            known: 250
	 *   -ENOENT      unknown: 550 5.1.1 <addr>: recipient unknown (counts
	 *                toward max_errors)
	 *   -EUSERS      unknown, and the client has had too many: 421 4.7.0
	 *                and close (a dictionary attack ends early)
	 *   -EBUSY       a rate limit: 450 4.7.1 (not the client's error)
	 *   -ETIMEDOUT   cannot tell now (verification timed out or failed):
	 *                450 4.1.1, never 250 on a guess
	 *   -EINPROGRESS the answer comes later: the session waits
	 *                (SMTP_WAIT_RCPT) until io calls smtp_session_rcpt_done()
	 *                with one of the answers above
	 *   other -errno 451 4.3.0
	 */
	int (*rcpt_ok)(void *ctx, const char *mailbox, size_t len, const char *domain, size_t domain_len);
};

enum smtp_status {
	SMTP_OK = 0,	  /* all input consumed; feed more when it arrives */
	SMTP_WAIT_COMMIT, /* waiting for smtp_session_commit_done() */
	SMTP_BLOCKED,	  /* output buffer full: send output, then feed the rest */
	SMTP_STARTTLS,	  /* start TLS after sending the output; discard unread input */
	SMTP_CLOSE,	  /* send the output, then close the connection */
	SMTP_WAIT_RCPT,	  /* waiting for smtp_session_rcpt_done() (rcpt_ok said -EINPROGRESS) */
};

struct smtp_peer {
	const char *addr; /* textual IP */
	uint16_t port;
};

struct smtp_session;

/* Bytes the io layer must provide for one session (it pools them). */
size_t smtp_session_size(const struct smtp_config *cfg);

/* Start a session in mem (smtp_session_size() bytes); queues the 220 greeting. */
struct smtp_session *smtp_session_init(void *mem, const struct smtp_config *cfg, const struct smtp_sink *sink,
				       void *sink_ctx, const struct smtp_peer *peer);
/* Release whatever the session holds (calls data_abort if in data). */
void smtp_session_fini(struct smtp_session *s);

enum smtp_status smtp_session_input(struct smtp_session *s, const uint8_t *buf, size_t len, size_t *used);

/* Pending reply bytes (may be 0). */
const uint8_t *smtp_session_output(struct smtp_session *s, size_t *len);
void smtp_session_output_consumed(struct smtp_session *s, size_t n);

/* The spool reports the commit durable (res 0) or failed (-ENOSPC -> 452 4.3.1, else 451 4.3.0). */
enum smtp_status smtp_session_commit_done(struct smtp_session *s, int res);
/*
 * Instead of commit_done (issue 16, gap dedup): the message is a retry of
 * one already queued as orig_id and was not stored; the reply is
 * "250 2.0.0 Ok: already queued as ORIG_ID" (LMTP: per recipient).
 */
enum smtp_status smtp_session_commit_dup(struct smtp_session *s, const char *orig_id);
/* The recipients of the transaction, in order (gap dedup fingerprints them at data_begin). */
void smtp_session_each_rcpt(const struct smtp_session *s, void (*fn)(void *ctx, const char *addr), void *ctx);

/*
 * The answer to a rcpt_ok() that said -EINPROGRESS (any of its other
 * answers). Returns like smtp_session_commit_done(); after a timeout or
 * fini the session is closed and this returns SMTP_CLOSE.
 */
enum smtp_status smtp_session_rcpt_done(struct smtp_session *s, int res);

/* TLS is up: reset to the post-greeting state (new EHLO required, no STARTTLS offered). */
void smtp_session_tls_started(struct smtp_session *s, const char *tls_desc);

/* A timer expired: queue 421 4.4.2, abort any transaction; returns SMTP_CLOSE. */
enum smtp_status smtp_session_timeout(struct smtp_session *s);

/* Server shutting down: finish the transaction in progress, answer 421 4.3.2 to anything new. */
void smtp_session_shutdown(struct smtp_session *s);

/* Phase, for the io layer's choice of timeout (RFC 5321 4.5.3.2). */
enum smtp_phase {
	SMTP_PHASE_COMMAND, /* waiting for a command */
	SMTP_PHASE_DATA,    /* inside DATA/BDAT */
	SMTP_PHASE_COMMIT,  /* waiting for the spool */
	SMTP_PHASE_CLOSED,
};
enum smtp_phase smtp_session_phase(const struct smtp_session *s);
/* True when no transaction is open (MAIL not given or finished): safe to close at shutdown. */
bool smtp_session_idle(const struct smtp_session *s);
/* For logs: the HELO/EHLO/LHLO argument ("" before it) and the current reverse-path ("" without MAIL). */
const char *smtp_session_helo(const struct smtp_session *s);
const char *smtp_session_mail_from(const struct smtp_session *s);

#endif
