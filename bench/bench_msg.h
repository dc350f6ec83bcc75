/* SPDX-License-Identifier: MIT */
#ifndef DS_BENCH_MSG_H
#define DS_BENCH_MSG_H

/*
 * Test message generator: headers with a unique Message-ID, then a body of
 * printable lines (CRLF, at most 78 characters) padded to the requested
 * size. The output is already in DATA wire form: lines starting with '.'
 * are dot-stuffed and the terminating CRLF.CRLF is appended.
 */

#include <stddef.h>
#include <stdint.h>

#define BENCH_MSG_LINE_MAX   78
#define BENCH_MSG_ID_MAX     128
#define BENCH_MSG_HEADER_MAX 1024

struct bench_msg_params {
	uint64_t seq;
	uint32_t pid;
	size_t size_bytes; /* unstuffed size of headers + body, before the final dot */
	const char *from;
	const char *to; /* first recipient, for the To: header */
};

/* Worst case wire size for a message of size_bytes (dot-stuffing + terminator). */
size_t bench_msg_wire_max(size_t size_bytes);
/* Writes the Message-ID (with angle brackets) into id; returns its length. */
size_t bench_msg_id(char *id, size_t cap, uint32_t pid, uint64_t seq);
/*
 * Builds the message into buf; returns the wire length or -ENOSPC when cap
 * is smaller than bench_msg_wire_max(size_bytes). *msg_bytes (if not NULL)
 * gets the message's real size: headers + body before dot-stuffing, without
 * the final dot, i.e. what the server receives as the message. It equals
 * size_bytes except when size_bytes is too small for the headers (then the
 * headers alone, a few hundred bytes) or leaves a 1-2 byte tail after them
 * (the shortest body line is 3 bytes).
 */
long bench_msg_build(char *buf, size_t cap, const struct bench_msg_params *p, size_t *msg_bytes);

#endif
