/* SPDX-License-Identifier: MIT */
#ifndef DS_DLV_DSN_H
#define DS_DLV_DSN_H

/*
 * deliver/: RFC 3464 delivery status notifications ("bounces"), pure code:
 * no clock, no randomness, no files; dlv_dsn_build() allocates nothing
 * (about 30 KiB of stack). The caller passes the
 * times, the Message-ID and a boundary seed, gives the original message
 * through a read callback and takes the bytes through a write callback.
 *
 * One DSN per original message, covering the recipients passed in whose
 * NOTIFY asks for it. The DSN's own envelope is fixed by RFC 3461/5321:
 * MAIL FROM:<> (the null reverse-path, so that it never bounces back), one
 * RCPT TO = the original sender (env.mail_from). A message whose sender is
 * <> never gets a DSN (-EDESTADDRREQ).
 *
 * The message built (CRLF lines, none over 998 octets):
 *
 *   Date, From: MAILER-DAEMON@<reporting_mta>, To: <sender>, Subject,
 *   Message-ID, Auto-Submitted: auto-replied (RFC 3834), MIME-Version,
 *   Content-Type: multipart/report; report-type=delivery-status; boundary=...
 *   1. text/plain: which recipients failed or were delayed, and why
 *   2. message/delivery-status (RFC 3464): Reporting-MTA, Original-Envelope-Id
 *      (ENVID, xtext-decoded), Received-From-MTA (when helo given), Arrival-Date;
 *      per recipient Original-Recipient (ORCPT, xtext-decoded; only when given),
 *      Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
 *      Last-Attempt-Date, Will-Retry-Until (delayed)
 *   3. the original: message/rfc822 (the whole message) or text/rfc822-headers
 *      (its header section)
 *
 * What is returned (decisions, as Postfix's bounce and Exim's do):
 *   - RET=FULL and no RET at all: the whole message, if it is at most
 *     orig_full_max bytes (default 64 KiB; Postfix's bounce_size_limit is
 *     50000) and "7-bit clean" (no octet >= 0x80, no NUL, no bare CR or LF,
 *     no line over 998 octets); else its header section only. RFC 3461 4.3
 *     leaves the default to the MTA; this is Postfix's.
 *   - RET=HDRS: the header section only.
 *   - A DSN reporting only delays: the header section only (Postfix's delay
 *     warnings do the same: the message is not lost, no need to send it back).
 *   - The header section is capped at orig_hdrs_max bytes (default 64 KiB),
 *     cut at a line end.
 *   - 8-bit originals: the DSN stays 7-bit so that it can be relayed to any
 *     next hop without 8BITMIME. A message with 8-bit content is returned as
 *     headers only, and a header section with 8-bit octets (SMTPUTF8 mail) or
 *     long lines goes into text/rfc822-headers with Content-Transfer-Encoding:
 *     quoted-printable (lossless; a text type allows it, message/rfc822 does not).
 *     With allow_8bit set, an 8-bit (or long-line) original under the size
 *     cap goes into message/rfc822 unchanged and the DSN is marked 8bit:
 *     the caller must then send it with BODY=8BITMIME (res->body_8bit).
 *   - A non-ASCII sender address appears raw in To: (RFC 6532); the DSN then
 *     needs SMTPUTF8 on delivery (res->smtputf8). Non-ASCII recipient
 *     addresses use address type utf-8 with RFC 6533 utf-8-addr-xtext
 *     (\x{HEX}) in message/delivery-status, and the text part becomes
 *     charset=utf-8, quoted-printable.
 *
 * Recipient filter (RFC 3461 4.1): NOTIFY=NEVER: never reported; an explicit
 * NOTIFY without FAILURE: not reported as failed; without DELAY: not reported
 * as delayed; no NOTIFY at all: reported both as failed and as delayed (the
 * caller decides whether it sends delay notices at all). Nothing left:
 * -ENODATA, nothing written.
 *
 * Bounds: at most DLV_DSN_RCPT_MAX recipients per call; a diagnostic text
 * is made printable US-ASCII (the CR LF of a multi-line reply, tabs and
 * runs of spaces become one space, other controls and 8-bit octets '?') and cut to diag_max octets (default
 * 1024,
 * "..." appended); every header field longer than 78 columns is folded at
 * spaces, and a run over 990 octets without any space (never in valid
 * input) is broken by inserting CRLF SP (so it unfolds with one extra
 * space). The output is at most orig_full_max (or orig_hdrs_max, x3 when
 * quoted-printable) + about 8 KiB per recipient.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ds_envelope.h"

#define DLV_DSN_RCPT_MAX	      1000	  /* per-recipient blocks in one DSN */
#define DLV_DSN_ORIG_FULL_MAX_DEFAULT (64 * 1024) /* whole original returned up to this size */
#define DLV_DSN_ORIG_HDRS_MAX_DEFAULT (64 * 1024) /* header section returned up to this size */
#define DLV_DSN_DIAG_MAX_DEFAULT      1024	  /* octets of one diagnostic text */
#define DLV_DSN_DIAG_MAX_LIMIT	      8192	  /* largest diag_max accepted */
#define DLV_DSN_NAME_MAX	      255	  /* reporting MTA, remote MTA, HELO */
#define DLV_DSN_MSGID_MAX	      250	  /* Message-ID including the angle brackets */
#define DLV_DSN_BOUNDARY_SEED_MAX     40	  /* bchars (RFC 2046), no space */

enum dlv_dsn_action {
	DLV_DSN_FAILED = 0, /* Action: failed (status class 5, or 4 when the queue lifetime ran out) */
	DLV_DSN_DELAYED,    /* Action: delayed (status class 4) */
};

/* NOTIFY= of a recipient's stored parameters (RFC 3461 4.1), as a bit set. */
#define DLV_DSN_NOTIFY_SUCCESS 0x1u
#define DLV_DSN_NOTIFY_FAILURE 0x2u
#define DLV_DSN_NOTIFY_DELAY   0x4u
#define DLV_DSN_NOTIFY_NEVER   0x8u
#define DLV_DSN_NOTIFY_ABSENT  0x10u /* no NOTIFY parameter */

struct dlv_dsn_rcpt {
	const char *addr;   /* final recipient: the RCPT TO address as stored (ds_rcpt.addr) */
	const char *params; /* the stored RCPT parameters (ds_rcpt.params): NOTIFY=, ORCPT=; may be NULL */
	enum dlv_dsn_action action; /* failed or delayed */
	const char *status;	    /* "5.1.1"; NULL or malformed: 5.0.0 (failed) / 4.0.0 (delayed) */
	const char *diag_type;	    /* Diagnostic-Code type: NULL = "smtp"; "x-unix" for a pipe */
	const char *diag;	    /* the reply as received ("550 5.1.1 <a@b>: no such user"); NULL: none */
	const char *remote_mta;	    /* Remote-MTA name ("192.0.2.1", "[::1]", "mx.example"); NULL: none */
	int64_t last_attempt_us;    /* Last-Attempt-Date; 0: none */
	int64_t retry_until_us;	    /* Will-Retry-Until (delayed only); 0: none */
};

/*
 * The original message's bytes, exactly as stored (trace header, then the
 * message; CRLF lines, header section, blank line, body). read fills buf
 * with up to cap bytes from offset off and returns how many (at least 1
 * while off < size; short reads are fine), or -errno. Only the first
 * max(orig_full_max, orig_hdrs_max + 2) bytes are ever read, at most
 * twice (one scan, one copy).
 */
struct dlv_dsn_source {
	uint64_t size;
	ssize_t (*read)(void *ctx, uint64_t off, void *buf, size_t cap);
	void *ctx;
};

struct dlv_dsn_input {
	const char *reporting_mta; /* our hostname: Reporting-MTA: dns; NAME, From: MAILER-DAEMON@NAME */
	const char *message_id;	   /* "<unique@NAME>", made by the caller */
	const char
		*boundary_seed; /* unique per DSN (e.g. queue id + attempt): the boundary is "=_ds_" SEED */
	int64_t now_us;		/* Date: (UTC), microseconds since the Unix epoch */
	/* The original envelope: mail_from, mail_params (RET=, ENVID=), received_at_us (Arrival-Date),
	 * client_addr and helo (Received-From-MTA, both optional: NULL or ""). rcpt, rcpt_count unused. */
	const struct ds_envelope *env;
	const struct dlv_dsn_rcpt *rcpt;
	uint32_t rcpt_count;
	struct dlv_dsn_source orig;
	uint64_t orig_full_max; /* 0: DLV_DSN_ORIG_FULL_MAX_DEFAULT */
	uint64_t orig_hdrs_max; /* 0: DLV_DSN_ORIG_HDRS_MAX_DEFAULT */
	uint32_t diag_max;	/* 0: DLV_DSN_DIAG_MAX_DEFAULT; at most DLV_DSN_DIAG_MAX_LIMIT */
	bool allow_8bit; /* return 8-bit originals whole (then res->body_8bit: send with BODY=8BITMIME) */
};

/* Where the bytes go: write returns 0 or -errno (which stops the build and is returned). */
struct dlv_dsn_sink {
	int (*write)(void *ctx, const void *buf, size_t len);
	void *ctx;
};

enum dlv_dsn_orig {
	DLV_DSN_ORIG_FULL = 0,	  /* message/rfc822 */
	DLV_DSN_ORIG_HEADERS,	  /* text/rfc822-headers, complete header section */
	DLV_DSN_ORIG_HEADERS_CUT, /* text/rfc822-headers, cut at orig_hdrs_max */
};

struct dlv_dsn_result {
	uint64_t size;		/* bytes written */
	uint32_t failed;	/* per-recipient blocks with Action: failed */
	uint32_t delayed;	/* ... with Action: delayed */
	enum dlv_dsn_orig orig; /* how the original was returned */
	bool body_8bit;		/* message/rfc822 carries 8-bit octets: deliver with BODY=8BITMIME */
	bool smtputf8;		/* the To: address is not ASCII: deliver with SMTPUTF8 */
	bool boundary_collided; /* the seed's boundary occurred in the original; a suffix was added */
};

/*
 * Build the DSN for in and write it to out. Returns 0 and fills *res (may be
 * NULL), or:
 *   -EDESTADDRREQ  the original sender is the null path <> (never a DSN for it)
 *   -ENODATA       no recipient left after the NOTIFY filter (nothing written)
 *   -EINVAL        bad input: missing or malformed reporting_mta, message_id,
 *                  boundary_seed, now_us <= 0, rcpt_count 0 or over
 *                  DLV_DSN_RCPT_MAX, a recipient without an address, diag_max
 *                  over the limit, no read callback
 *   -EIO           orig.read returned 0 before orig.size
 *   other -errno   from orig.read or out->write (output then incomplete)
 */
int dlv_dsn_build(const struct dlv_dsn_input *in, const struct dlv_dsn_sink *out, struct dlv_dsn_result *res);

/* NOTIFY= in a stored RCPT parameter string (NULL or ""): DLV_DSN_NOTIFY_* bits. */
unsigned dlv_dsn_notify(const char *params);

/* Whether a recipient with these stored parameters is reported for action a (the filter above). */
bool dlv_dsn_wanted(const char *params, enum dlv_dsn_action a);

/*
 * Decode RFC 3461 xtext (s, len): "+HH" (upper-case hex) -> that octet.
 * Writes at most cap - 1 bytes and a NUL; returns the decoded length, or
 * -EINVAL (malformed "+", or a decoded NUL), -ENOSPC (cap too small).
 */
ssize_t dlv_dsn_xtext_decode(const char *s, size_t len, char *out, size_t cap);

/*
 * Value of parameter key (case-insensitive, e.g. "ORCPT") in a stored
 * parameter string: *val and *len point into params. False when absent or
 * without "=".
 */
bool dlv_dsn_param(const char *params, const char *key, const char **val, size_t *len);

/* A growable memory sink with a hard cap: buf realloc'd up to max bytes, then -EFBIG. */
struct dlv_dsn_buf {
	char *data;
	size_t len, cap, max;
};
int dlv_dsn_buf_write(void *ctx, const void *buf, size_t len);
void dlv_dsn_buf_free(struct dlv_dsn_buf *b);

/* A dlv_dsn_source read over memory (ctx = struct dlv_dsn_mem). */
struct dlv_dsn_mem {
	const void *data;
	size_t len;
};
ssize_t dlv_dsn_mem_read(void *ctx, uint64_t off, void *buf, size_t cap);

#endif
