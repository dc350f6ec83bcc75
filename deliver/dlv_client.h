/* SPDX-License-Identifier: MIT */
#ifndef DS_DLV_CLIENT_H
#define DS_DLV_CLIENT_H

/*
 * deliver/: the SMTP/LMTP *client* (hand-off to the next hop) as a pure
 * state machine, the mirror image of core/'s server session.
 *
 * Server bytes in (dlv_client_input), command and message bytes out
 * (dlv_client_output), outcomes out through struct dlv_client_ops
 * callbacks, the message body pulled through struct dlv_msg's read().
 * No sockets, no files, no threads, no clocks, no heap: everything lives
 * in the dlv_client_size() bytes the caller provides.
 *
 * The io layer drives it:
 *
 *   c = dlv_client_init(mem, cfg, ops, ctx)      state: connecting
 *   dlv_client_submit(c, msg)                    may come at once: it waits for the handshake
 *   connect; dlv_client_connected(c)             (or dlv_client_eof(c, -errno) if it failed)
 *   loop:
 *     arm the timer dlv_client_timeout_kind(c) names (RFC 5321 4.5.3.2)
 *     st = dlv_client_input(c, buf, len, &used)   (every entry point returns a dlv_status)
 *     send dlv_client_output() bytes, then dlv_client_output_consumed(); the
 *        bytes stay in place until consumed (a send may be in flight from them)
 *     st == DLV_STARTTLS: drop the unread input (buf + used: it came in plaintext,
 *        RFC 3207 / CVE-2011-0411), handshake, then dlv_client_tls_done(c, res)
 *     st == DLV_CLOSE: close the connection (nothing more to send; the output is empty)
 *     ops->msg_done() ran and dlv_client_idle(c): submit the next message,
 *        or dlv_client_quit(c), or keep the connection for later
 *   a timer expired: dlv_client_timeout(c); the peer closed or an I/O error:
 *     dlv_client_eof(c, 0 or -errno); both return DLV_CLOSE
 *
 * Outcomes: every recipient of a submitted message gets exactly one
 * rcpt_done() for this attempt, then the message gets one msg_done(),
 * whatever happens to the connection (dlv_client_fini() included).
 * Responsibility moves only on the next hop's word: delivered means a 2xx
 * to the final dot (SMTP), that recipient's 2xx after the dot (LMTP), or
 * a per-recipient 2xx confirmed by a 2xx final reply (PRDR).
 *
 * Choices (where the RFCs leave room):
 * - Replies: lines end in LF; a CR before it is dropped, so bare-LF
 *   servers are understood (a reply cannot smuggle anything). A line is
 *   "ddd", "ddd text" or "ddd-text" with d1 2-5, d2 0-5; every line of a
 *   multiline reply carries the same code. Anything else is a protocol
 *   error: recipients not yet final are deferred and the connection closes.
 * - Body: sent with DATA, dot-stuffed, each bare CR or bare LF sent as CRLF
 *   (RFC 5321 2.3.8; core/ never stores them outside BINARYMIME), a CRLF
 *   added when the body does not end in one (BDAT bodies may not), then
 *   ".CRLF". SIZE= is the stored size + 2 (the possible added CRLF).
 * - CHUNKING/BDAT is not used (not yet supported): BODY=BINARYMIME
 *   messages fail with 554 5.6.3 (RFC 3030: they cannot go over DATA).
 * - BODY=8BITMIME is passed on when offered; to a server without 8BITMIME
 *   the body goes as it is (no MIME downgrade). SMTPUTF8 is passed on when
 *   offered; an envelope with 8-bit addresses to a server without it fails
 *   with 553 5.6.7; an all-ASCII envelope goes without the keyword.
 * - DSN parameters (RET, ENVID, NOTIFY, ORCPT) only when DSN is offered;
 *   otherwise dropped (the caller may send a "relayed" DSN: see
 *   dlv_client_ext()). SIZE only when offered; over the server's limit the
 *   message fails with 552 5.3.4 before MAIL.
 * - PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one flight; all
 *   RCPTs refused -> the DATA reply is an error (or, from a server that
 *   says 354 anyway, an empty message is sent and its reply ignored).
 * - RSET only when the server may hold a transaction (MAIL accepted, no
 *   data completed). EHLO refused with 5xx: HELO (SMTP only, before TLS).
 * - PRDR (draft-hall-prdr) when offered, enabled, SMTP, more than one
 *   recipient: a 353 after the dot, one reply per accepted recipient, a
 *   final reply; a recipient's 2xx counts only if the final reply is 2xx
 *   (else it takes the final reply's class; either way its outcome carries
 *   the final reply: per-recipient texts are not kept), a non-353 reply
 *   to the dot applies to all.
 * - 421 at any point: the reply applies to the command it answers, every
 *   other recipient not yet final is deferred, the connection closes.
 * - A greeting other than 220 (e.g. 554): defer, QUIT, close; the next hop
 *   as a whole is unusable (dlv_client_error()->stage says so).
 * - RFC 1047 gap: a recipient still waiting for its reply when the
 *   connection dies after the final dot left the output buffer (consumed)
 *   is deferred with possible_duplicate set: the next hop may have it.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what a message may carry (the stored values are far smaller). */
#define DLV_ADDR_MAX   512 /* octets of an address, without brackets */
#define DLV_ENVID_MAX  100 /* RFC 3461 4.4 */
#define DLV_ORCPT_MAX  500 /* RFC 3461 4.2 */
#define DLV_NOTIFY_MAX 32
#define DLV_TEXT_MAX   256 /* kept text of a reply's first line, with the NUL */
#define DLV_ESC_MAX    12  /* "5.123.123" with the NUL */

enum dlv_starttls {
	DLV_STARTTLS_NEVER = 0,
	DLV_STARTTLS_OPPORTUNISTIC, /* when offered; a refused STARTTLS goes on in plaintext */
	DLV_STARTTLS_REQUIRED,	    /* not offered or refused: defer everything, QUIT */
};

struct dlv_client_config {
	bool lmtp;		  /* LHLO, one reply per accepted recipient after the dot (RFC 2033) */
	const char *helo_name;	  /* our name in EHLO/HELO/LHLO: no spaces or controls, <= 255 */
	uint32_t max_reply_line;  /* octets incl. CRLF, 512..65536; default 2048 */
	uint32_t max_reply_lines; /* lines in one reply, 1..10000; default 100 */
	uint32_t max_rcpts;	  /* recipients per message, 1..100000; default 1000 */
	uint32_t out_cap;	  /* output buffer octets, 4096..1 MiB; default 16384 */
	/* Use the extension when the server offers it. Defaults: all true. */
	bool use_pipelining, use_dsn, use_prdr, use_8bitmime, use_smtputf8, use_size;
	enum dlv_starttls starttls; /* default NEVER */
};

void dlv_client_config_defaults(struct dlv_client_config *cfg);
/* 0, or -EINVAL with a static explanation in *why (may be NULL). */
int dlv_client_config_check(const struct dlv_client_config *cfg, const char **why);

enum dlv_body_type { DLV_BODY_7BIT = 0, DLV_BODY_8BITMIME, DLV_BODY_BINARYMIME };

struct dlv_rcpt {
	const char *addr;   /* forward-path without brackets (UTF-8 allowed) */
	const char *notify; /* RFC 3461 NOTIFY value as stored ("SUCCESS,FAILURE"), NULL if none */
	const char *orcpt;  /* ORCPT value as stored ("rfc822;a+40b"), NULL if none */
};

/*
 * One message. It and every string it points to stay valid, unchanged,
 * until ops->msg_done() for it.
 */
struct dlv_msg {
	const char *mail_from; /* reverse-path without brackets, "" for <> */
	enum dlv_body_type body;
	bool smtputf8;	   /* the client asked for SMTPUTF8 */
	const char *ret;   /* RFC 3461 RET value ("FULL", "HDRS"), NULL if none */
	const char *envid; /* ENVID value as stored (xtext), NULL if none */
	const struct dlv_rcpt *rcpt;
	uint32_t rcpt_count; /* 1..max_rcpts */
	uint64_t body_size;  /* octets read() yields: the stored header + data */
	/*
	 * Copy up to cap body octets at offset off into buf. Returns the count
	 * (> 0), 0 only at off == body_size, -EAGAIN when not ready yet (call
	 * dlv_client_body_ready() when it is), or -errno (the message is
	 * deferred and the connection closes: DATA cannot be taken back).
	 */
	int (*read)(void *ctx, uint64_t off, void *buf, size_t cap);
	void *read_ctx;
};

enum dlv_class {
	DLV_DELIVERED = 1, /* the next hop took responsibility */
	DLV_DEFERRED,	   /* try again later (4xx, or no word from the next hop) */
	DLV_FAILED,	   /* permanent (5xx): bounce */
};

/* What the reply answered, or what the machine was doing. */
enum dlv_stage {
	DLV_STAGE_NONE = 0,
	DLV_STAGE_CONNECT,
	DLV_STAGE_GREETING,
	DLV_STAGE_HELLO, /* EHLO, HELO or LHLO */
	DLV_STAGE_STARTTLS,
	DLV_STAGE_TLS,	  /* the handshake */
	DLV_STAGE_SUBMIT, /* our checks before MAIL (SIZE, SMTPUTF8, BINARYMIME) */
	DLV_STAGE_MAIL,
	DLV_STAGE_RCPT,
	DLV_STAGE_DATA,
	DLV_STAGE_BODY, /* sending the message */
	DLV_STAGE_DOT,	/* the reply(s) to the final dot */
	DLV_STAGE_RSET,
	DLV_STAGE_QUIT,
};

struct dlv_outcome {
	enum dlv_class cls;
	enum dlv_stage stage;
	uint16_t code;		 /* the reply code; a synthetic one when local */
	bool local;		 /* no reply said this: timeout, lost connection, our policy, spool read */
	bool possible_duplicate; /* lost after the final dot was sent, before its reply (RFC 1047) */
	char esc[DLV_ESC_MAX];	 /* RFC 3463 enhanced status code ("5.1.1"), "" if none */
	char text[DLV_TEXT_MAX]; /* first reply line after code and esc; printable ASCII, others '?' */
};

struct dlv_client_ops {
	/* Recipient idx of m has its outcome for this attempt (exactly once). */
	void (*rcpt_done)(void *ctx, const struct dlv_msg *m, uint32_t idx, const struct dlv_outcome *o);
	/* Every recipient of m had rcpt_done(); the machine forgets m. */
	void (*msg_done)(void *ctx, const struct dlv_msg *m);
};
/* The callbacks must not call back into the machine (asserted). */

enum dlv_status {
	DLV_OK = 0,   /* go on: send output, feed input when it arrives */
	DLV_STARTTLS, /* send the output, drop unread input, handshake, dlv_client_tls_done() */
	DLV_CLOSE,    /* close the connection; nothing is left to send */
};

/* Which RFC 5321 4.5.3.2 timer applies now. */
enum dlv_timeout {
	DLV_TIMEOUT_NONE = 0,	/* idle between messages, or closed: the caller's own idle limit */
	DLV_TIMEOUT_CONNECT,	/* connecting */
	DLV_TIMEOUT_GREETING,	/* waiting for the 220 */
	DLV_TIMEOUT_COMMAND,	/* a reply to EHLO, STARTTLS (and the handshake), MAIL, RCPT, RSET, QUIT */
	DLV_TIMEOUT_DATA_INIT,	/* the reply to DATA */
	DLV_TIMEOUT_DATA_BLOCK, /* sending the body: each send must progress within it */
	DLV_TIMEOUT_DATA_DONE,	/* the reply(s) to the final dot */
};

/* Extensions the server offered in its last EHLO/LHLO reply (dlv_client_ext()). */
#define DLV_EXT_PIPELINING   (1u << 0)
#define DLV_EXT_SIZE	     (1u << 1)
#define DLV_EXT_8BITMIME     (1u << 2)
#define DLV_EXT_SMTPUTF8     (1u << 3)
#define DLV_EXT_DSN	     (1u << 4)
#define DLV_EXT_PRDR	     (1u << 5)
#define DLV_EXT_STARTTLS     (1u << 6)
#define DLV_EXT_ENHANCEDCODE (1u << 7)
#define DLV_EXT_CHUNKING     (1u << 8)
#define DLV_EXT_BINARYMIME   (1u << 9)

struct dlv_client;

/* Bytes the caller provides for one client (pool them); the config must outlive the client. */
size_t dlv_client_size(const struct dlv_client_config *cfg);
/* cfg must pass dlv_client_config_check() (asserted). State: connecting. */
struct dlv_client *dlv_client_init(void *mem, const struct dlv_client_config *cfg,
				   const struct dlv_client_ops *ops, void *ctx);
/* A message still in progress is deferred ("delivery abandoned"), as if by dlv_client_eof(). */
void dlv_client_fini(struct dlv_client *c);

/* The connection is up: wait for the greeting. */
void dlv_client_connected(struct dlv_client *c);

/*
 * Hand over one message: 0, -EBUSY (one is in progress), -EPIPE (the
 * connection is closing or closed), -E2BIG (more than max_rcpts), -EINVAL
 * (no recipient, no read, a control octet in a string, a space in a
 * parameter), -ENAMETOOLONG (over the DLV_*_MAX limits). May run the
 * callbacks at once (e.g. 552 5.3.4 over the server's SIZE).
 */
int dlv_client_submit(struct dlv_client *c, const struct dlv_msg *m);

/* Server bytes; *used < len only with DLV_STARTTLS (the rest must be dropped) or DLV_CLOSE. */
enum dlv_status dlv_client_input(struct dlv_client *c, const uint8_t *buf, size_t len, size_t *used);

/*
 * Bytes to send (may be 0), and how many were sent (in order). They stay in
 * place until consumed. Sending pulls more of the body. After DLV_CLOSE the
 * output is empty and a late consumed() is ignored.
 */
const uint8_t *dlv_client_output(struct dlv_client *c, size_t *len);
enum dlv_status dlv_client_output_consumed(struct dlv_client *c, size_t n);

/* read() returned -EAGAIN before: it has data now. */
enum dlv_status dlv_client_body_ready(struct dlv_client *c);

/* The handshake after DLV_STARTTLS finished: res 0 -> EHLO again; res < 0 -> defer, DLV_CLOSE. */
enum dlv_status dlv_client_tls_done(struct dlv_client *c, int res);

/* The peer closed (err 0), or connect/read/write failed (-errno): defer what is not final. */
enum dlv_status dlv_client_eof(struct dlv_client *c, int err);
/* The timer dlv_client_timeout_kind() named expired: defer what is not final. */
enum dlv_status dlv_client_timeout(struct dlv_client *c);

/* Close politely: QUIT once idle (at once if idle now). -EBUSY with a message in progress. */
int dlv_client_quit(struct dlv_client *c);

enum dlv_timeout dlv_client_timeout_kind(const struct dlv_client *c);
/* Handshake done, no message, nothing outstanding: ready for dlv_client_submit() right now. */
bool dlv_client_idle(const struct dlv_client *c);
bool dlv_client_closed(const struct dlv_client *c);
/* DLV_EXT_* the server offered (0 before its EHLO/LHLO reply, after HELO). */
uint32_t dlv_client_ext(const struct dlv_client *c);
bool dlv_client_tls_active(const struct dlv_client *c);
/*
 * Why the connection failed (cls DLV_DEFERRED), NULL while it is fine or
 * after an orderly QUIT. A stage of CONNECT, GREETING, HELLO, STARTTLS or
 * TLS means the next hop as a whole: back it off, try the fallback.
 */
const struct dlv_outcome *dlv_client_error(const struct dlv_client *c);

const char *dlv_class_name(enum dlv_class cls);	     /* "delivered", "deferred", "failed" */
const char *dlv_stage_name(enum dlv_stage stage);    /* "RCPT", "DOT", ... */
const char *dlv_timeout_name(enum dlv_timeout kind); /* "data-done", ... */

#endif
