/* SPDX-License-Identifier: MIT */
#ifndef DS_COMMON_ENVELOPE_H
#define DS_COMMON_ENVELOPE_H

/*
 * The envelope of one message, as the protocol core hands it to io/ at the
 * end of data and io/ hands it to the spool. A neutral type so that core/
 * and spool/ never include each other's headers.
 *
 * All strings are NUL-terminated, already validated by core/ (no CR, LF or
 * NUL inside), and owned by the caller for the duration of the call only:
 * the spool copies what it keeps.
 */

#include <stdint.h>

struct ds_rcpt {
	const char *addr;   /* forward-path without angle brackets, as received (UTF-8 allowed) */
	const char *params; /* ESMTP parameters as received, "" if none (NOTIFY=, ORCPT=) */
};

struct ds_envelope {
	const char *client_addr; /* textual IP of the client ("127.0.0.1", "::1") */
	uint16_t client_port;
	const char *helo;      /* HELO/EHLO/LHLO argument as received */
	const char *proto;     /* RFC 3848 "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPA, LMTP, ... */
	const char *mail_from; /* reverse-path without brackets; "" for the null path <> */
	/* MAIL parameters as received, "" if none (SIZE=, BODY=, RET=, ENVID=, SMTPUTF8) */
	const char *mail_params;
	const struct ds_rcpt *rcpt;
	uint32_t rcpt_count;
	/* "" for plaintext, else e.g. "TLSv1.2 TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" */
	const char *tls;
	/* wall clock when DATA/first BDAT started, microseconds since the Unix epoch */
	int64_t received_at_us;
	uint64_t body_size; /* bytes of message passed to the spool, trace header included */
};

#endif
