/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_PROXY_H
#define DS_IO_PROXY_H

/*
 * HAProxy PROXY protocol (v1 text and v2 binary) header parser.
 *
 * Pure and incremental: the caller appends received bytes to a buffer and
 * calls io_proxy_parse() on the whole buffer each time. No allocation, no
 * I/O, never reads beyond len. A listener configured for PROXY must see a
 * complete, valid header before any SMTP byte; anything else closes the
 * connection (-EINVAL).
 */

#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* v1: "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n" is 107 bytes (spec). */
#define IO_PROXY_V1_MAX_BYTES 107
/* v2: 16 byte fixed part; we accept at most 520 bytes of addresses + TLVs. */
#define IO_PROXY_V2_HDR_BYTES 16
#define IO_PROXY_V2_MAX_BYTES 536
/* The most bytes a caller ever has to buffer before getting a verdict. */
#define IO_PROXY_MAX_BYTES IO_PROXY_V2_MAX_BYTES
#define IO_PROXY_ADDR_MAX  INET6_ADDRSTRLEN

struct io_proxy_result {
	int version; /* 1 or 2 */
	/*
	 * true for v1 "UNKNOWN", v2 LOCAL, v2 PROXY with AF_UNSPEC: the
	 * connection's own endpoints are to be used, addresses below are empty.
	 */
	bool local;
	int family;			  /* AF_INET, AF_INET6, or AF_UNSPEC when local */
	char src_addr[IO_PROXY_ADDR_MAX]; /* canonical text (inet_ntop) */
	char dst_addr[IO_PROXY_ADDR_MAX];
	uint16_t src_port;
	uint16_t dst_port;
};

/*
 * Parse a PROXY header at the start of buf[0..len).
 * Returns > 0: header complete, that many bytes consumed, *res filled;
 *         0: need more bytes (len < IO_PROXY_MAX_BYTES guaranteed then);
 *         -EINVAL: malformed, close the connection.
 * *res is only written on success.
 */
int io_proxy_parse(const uint8_t *buf, size_t len, struct io_proxy_result *res);

#endif
