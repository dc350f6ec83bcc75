/* SPDX-License-Identifier: MIT */
#ifndef DS_CORE_SMTP_INTERNAL_H
#define DS_CORE_SMTP_INTERNAL_H

/*
 * Pieces of core/ shared between its files and its tests: the stateless
 * command-line, address and parameter parsers, and the DATA scanner. Not
 * used outside core/ and tests/core/.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp.h"

/* RFC 5321 4.5.3.1 */
#define SMTP_LOCAL_PART_MAX 64
#define SMTP_DOMAIN_MAX	    255
#define SMTP_PATH_MAX	    256 /* including the angle brackets */
#define SMTP_ENVID_MAX	    100 /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX	    500 /* RFC 3461 4.2 */

enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_LHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_HELP,
	SMTP_VERB_STARTTLS,
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg; /* after the verb (and after "FROM:"/"TO:" for MAIL/RCPT), leading spaces skipped */
	size_t arg_len;	 /* trailing spaces trimmed */
};

/*
 * Parse one complete command line (len bytes, ending in LF). Returns 0,
 * -EILSEQ for a bare CR or bare LF (the line does not end in CRLF, or has a
 * CR or LF inside: the session closes, since a peer may have split the
 * line there), -EBADMSG for a NUL, -EINVAL for MAIL/RCPT without FROM:/TO:.
 * An unknown verb is not an error here (verb = SMTP_VERB_UNKNOWN).
 */
int smtp_parse_command(const uint8_t *line, size_t len, struct smtp_cmd *cmd);

struct smtp_path {
	const char *mailbox; /* local@domain without brackets and source route; NULL for <> */
	size_t mailbox_len;
	const char *domain; /* inside mailbox; NULL when there is no domain (<postmaster>) */
	size_t domain_len;
	bool domain_literal; /* [1.2.3.4], [IPv6:...] */
	bool utf8;	     /* some octet >= 0x80 */
	bool null_path;	     /* <> */
};

/*
 * Parse "<path>" at the start of s; *consumed gets the bytes up to and
 * including '>'. Returns 0, -EINVAL (syntax), -ENAMETOOLONG (RFC 5321
 * 4.5.3.1 limits) or -EILSEQ (UTF-8 while allow_utf8 is false, or bad
 * UTF-8). A path without a domain is allowed only for postmaster.
 */
int smtp_parse_path(const char *s, size_t len, bool allow_utf8, size_t *consumed, struct smtp_path *p);

enum smtp_body { SMTP_BODY_7BIT = 0, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };

struct smtp_mail_params {
	uint64_t size; /* 0 when absent */
	bool has_size;
	enum smtp_body body;
	bool smtputf8;
	bool prdr;
	bool has_ret;
	bool has_envid;
};

/*
 * MAIL parameters: -EINVAL syntax (501), -EOVERFLOW absurd SIZE (501),
 * -ENOTSUP unknown or not offered (555), -EPROTO duplicated (501).
 */
int smtp_parse_mail_params(const char *s, size_t len, bool lmtp, struct smtp_mail_params *mp);
int smtp_parse_rcpt_params(const char *s, size_t len, bool allow_utf8);

bool smtp_xtext_valid(const char *s, size_t len);
/* Decimal digits only, no sign, no overflow, value <= max. Returns 0 or -EINVAL/-EOVERFLOW. */
int smtp_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out);
/* Well-formed UTF-8 (no overlong forms, no surrogates, <= U+10FFFF). */
bool smtp_utf8_valid(const char *s, size_t len);
bool smtp_domain_accepted(const struct smtp_config *cfg, const char *domain, size_t len);
bool smtp_helo_valid(const char *s, size_t len);

/* DATA / BDAT scanner state. */
enum smtp_scan_state {
	SMTP_SCAN_LINE_START = 0,
	SMTP_SCAN_MID,
	SMTP_SCAN_CR,
	SMTP_SCAN_DOT,
	SMTP_SCAN_DOT_CR,
};

#define SMTP_SCAN_BAD  0x1 /* bare CR, bare LF or NUL seen */
#define SMTP_SCAN_LONG 0x2 /* a line longer than max_line */

struct smtp_data_scan {
	uint8_t state;
	uint8_t flags;
	bool raw;   /* BDAT: no dot-unstuffing, no end marker */
	bool check; /* check bare CR/LF/NUL and line length (off for BINARYMIME) */
	uint32_t line_len;
	uint32_t max_line;
};

void smtp_data_scan_init(struct smtp_data_scan *sc, bool raw, bool check, uint32_t max_line);
/*
 * Scan buf; returns the bytes consumed. The first *emit_len bytes of buf
 * are message content (to pass on), the rest of the consumed bytes are a
 * stuffing dot or the end marker. *end is set when CRLF.CRLF was found
 * (never in raw mode). Call again with buf + consumed until len is used.
 */
size_t smtp_data_scan(struct smtp_data_scan *sc, const uint8_t *buf, size_t len, size_t *emit_len, bool *end);

/* End of a raw (BDAT) body: a trailing bare CR counts as bad. */
void smtp_data_scan_finish_raw(struct smtp_data_scan *sc);

#endif
