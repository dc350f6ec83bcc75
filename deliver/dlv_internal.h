/* SPDX-License-Identifier: MIT */
#ifndef DS_DLV_INTERNAL_H
#define DS_DLV_INTERNAL_H

/*
 * Pieces of deliver/ shared between its files and its tests: the reply
 * line parser and the DATA encoder. Not used outside deliver/ and
 * tests/deliver/.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dlv_client.h"

/* ---- replies (dlv_reply.c) ---- */

struct dlv_reply_line {
	uint16_t code;
	bool last;	  /* "ddd " or "ddd": the reply ends here */
	const char *text; /* after "ddd-" / "ddd " (not NUL-terminated) */
	size_t text_len;
};

/*
 * Parse one reply line (without its line end). Returns 0, or -EPROTO when
 * it is not "ddd", "ddd text" or "ddd-text" with d1 in 2-5, d2 in 0-5.
 */
int dlv_reply_parse(const char *line, size_t len, struct dlv_reply_line *rl);

/*
 * Fill o->esc and o->text from a reply's first line text: an RFC 3463
 * code whose class matches the reply code's first digit is taken out,
 * the rest kept as printable ASCII (others become '?'), bounded.
 */
void dlv_reply_text(struct dlv_outcome *o, uint16_t code, const char *text, size_t len);

/* DLV_EXT_* bit of one EHLO line's text (keyword [params]); *size gets SIZE's value (0: none). */
uint32_t dlv_ehlo_keyword(const char *text, size_t len, uint64_t *size);

/* ---- DATA encoder (dlv_data.c) ---- */

struct dlv_data_enc {
	bool line_start; /* the next octet starts a line */
	bool cr;	 /* a CR is pending: CRLF, or a bare CR sent as CRLF */
	uint64_t fixed;	 /* bare CRs and bare LFs sent as CRLF */
};

#define DLV_DATA_FINISH_MAX 5 /* "\r\n.\r\n" */

void dlv_data_enc_init(struct dlv_data_enc *e);
/* Encode len octets into dst, which has room for 2 * len + 2. Returns octets written. */
size_t dlv_data_encode(struct dlv_data_enc *e, const uint8_t *src, size_t len, uint8_t *dst);
/* The end of data: a CRLF if the last line is open, then ".\r\n". Returns octets written (<= 5). */
size_t dlv_data_finish(struct dlv_data_enc *e, uint8_t *dst);

#endif
