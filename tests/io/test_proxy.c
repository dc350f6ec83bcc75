/* SPDX-License-Identifier: MIT */
/* Unit tests for the PROXY protocol v1/v2 parser (io/proxy.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "proxy.h"

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"

/* Parse a copy in an exactly sized heap buffer so ASan sees any overread. */
static int parse_exact(const void *data, size_t len, struct io_proxy_result *res)
{
	uint8_t *copy = malloc(len ? len : 1);
	int ret;

	assert_non_null(copy);
	memcpy(copy, data, len);
	ret = io_proxy_parse(copy, len, res);
	free(copy);
	return ret;
}

/*
 * Feed the header byte by byte: every proper prefix must say "need more" (or,
 * for a malformed header, at some point -EINVAL that then stays), and the
 * whole header, also with trailing SMTP bytes, must give the same answer.
 */
static int parse_all_ways(const void *data, size_t len, struct io_proxy_result *res)
{
	struct io_proxy_result r;
	int ret = 0;
	size_t i;
	char tail[600];

	for (i = 0; i <= len; i++) {
		ret = parse_exact(data, i, &r);
		if (ret != 0)
			break;
	}
	if (ret == -EINVAL) {
		/* Once malformed, longer input never makes it valid. */
		for (; i <= len; i++)
			assert_int_equal(parse_exact(data, i, &r), -EINVAL);
		return -EINVAL;
	}
	if (ret == 0)
		return 0;
	assert_int_equal(i, (size_t)ret);
	assert_true((size_t)ret <= len);
	/* Bytes after the header (the SMTP stream) are not consumed. */
	assert_true(len + 6 <= sizeof(tail));
	memcpy(tail, data, len);
	memcpy(tail + len, "EHLO\r\n", 6);
	assert_int_equal(parse_exact(tail, len + 6, res), ret);
	return ret;
}

#define PARSE_STR(s, res) parse_all_ways((s), sizeof(s) - 1, (res))

static void test_v1_tcp4(void **state)
{
	struct io_proxy_result r;
	const char h[] = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n";

	assert_int_equal(PARSE_STR(h, &r), (int)sizeof(h) - 1);
	assert_int_equal(r.version, 1);
	assert_false(r.local);
	assert_int_equal(r.family, AF_INET);
	assert_string_equal(r.src_addr, "192.0.2.7");
	assert_string_equal(r.dst_addr, "198.51.100.1");
	assert_int_equal(r.src_port, 56324);
	assert_int_equal(r.dst_port, 25);
}

static void test_v1_tcp4_port_bounds(void **state)
{
	struct io_proxy_result r;

	assert_true(PARSE_STR("PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n", &r) > 0);
	assert_int_equal(r.src_port, 0);
	assert_int_equal(r.dst_port, 65535);
}

static void test_v1_tcp6(void **state)
{
	struct io_proxy_result r;
	const char h[] = "PROXY TCP6 2001:DB8::1 ::1 1111 2222\r\n";

	assert_int_equal(PARSE_STR(h, &r), (int)sizeof(h) - 1);
	assert_int_equal(r.family, AF_INET6);
	assert_false(r.local);
	/* Canonical form, whatever case the proxy sent. */
	assert_string_equal(r.src_addr, "2001:db8::1");
	assert_string_equal(r.dst_addr, "::1");
	assert_int_equal(r.src_port, 1111);
	assert_int_equal(r.dst_port, 2222);
}

static void test_v1_tcp6_longest(void **state)
{
	struct io_proxy_result r;
	const char h[] = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";

	assert_int_equal(PARSE_STR(h, &r), (int)sizeof(h) - 1);
	assert_string_equal(r.src_addr, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
}

static void test_v1_unknown(void **state)
{
	struct io_proxy_result r;

	assert_int_equal(PARSE_STR("PROXY UNKNOWN\r\n", &r), 15);
	assert_true(r.local);
	assert_int_equal(r.family, AF_UNSPEC);
	assert_int_equal(r.version, 1);
	assert_string_equal(r.src_addr, "");
}

static void test_v1_unknown_longest(void **state)
{
	struct io_proxy_result r;
	/* The 107-byte worst case of the spec: accepted, the rest ignored. */
	const char h[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";

	assert_int_equal(sizeof(h) - 1, IO_PROXY_V1_MAX_BYTES);
	assert_int_equal(PARSE_STR(h, &r), IO_PROXY_V1_MAX_BYTES);
	assert_true(r.local);
}

static void test_v1_malformed(void **state)
{
	static const char *const bad[] = {
		"GET / HTTP/1.0\r\n",
		"EHLO x\r\n",
		"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY\r\n",
		"PROXY \r\n",
		"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY TCP4\r\n",
		"PROXY TCP4 \r\n",
		"PROXY UNKNOWNX\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
		"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8.9 1 2\r\n",
		"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
		"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
		"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
		"PROXY TCP6 ::g ::1 1 2\r\n",
		"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1a 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",	/* bare LF */
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", /* CR CR LF */
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",	/* bare CR */
		"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",	/* tab */
		"PROXY UNKNOWN\n",
		"PROXY TCP4 1.2.3.4 5.6.7.\xc3\xa9 1 2\r\n", /* 8-bit */
	};
	struct io_proxy_result r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int ret = parse_all_ways(bad[i], strlen(bad[i]), &r);

		if (ret != -EINVAL)
			fail_msg("accepted malformed v1 header #%zu: %s (ret %d)", i, bad[i], ret);
	}
	/* Embedded NULs, with the real length. */
	static const char nul1[] = "PROXY TCP4 1.2.3.4\0005.6.7.8 1 2\r\n";
	static const char nul2[] = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\000\n";
	assert_int_equal(parse_all_ways(nul1, sizeof(nul1) - 1, &r), -EINVAL);
	assert_int_equal(parse_all_ways(nul2, sizeof(nul2) - 1, &r), -EINVAL);
}

static void test_v1_too_long(void **state)
{
	struct io_proxy_result r;
	char h[IO_PROXY_V1_MAX_BYTES + 10];

	/* 107 bytes without CRLF: no valid header can be that long. */
	memset(h, 'x', sizeof(h));
	memcpy(h, "PROXY UNKNOWN ", 14);
	assert_int_equal(parse_exact(h, IO_PROXY_V1_MAX_BYTES - 1, &r), 0);
	assert_int_equal(parse_exact(h, IO_PROXY_V1_MAX_BYTES, &r), -EINVAL);
	/* CRLF at 107..108: one byte too long. */
	h[IO_PROXY_V1_MAX_BYTES - 1] = '\r';
	h[IO_PROXY_V1_MAX_BYTES] = '\n';
	assert_int_equal(parse_exact(h, IO_PROXY_V1_MAX_BYTES, &r), -EINVAL);
	assert_int_equal(parse_exact(h, IO_PROXY_V1_MAX_BYTES + 1, &r), -EINVAL);
	/* CRLF at 105..106: exactly the limit. */
	h[IO_PROXY_V1_MAX_BYTES - 2] = '\r';
	h[IO_PROXY_V1_MAX_BYTES - 1] = '\n';
	assert_int_equal(parse_all_ways(h, IO_PROXY_V1_MAX_BYTES, &r), IO_PROXY_V1_MAX_BYTES);
}

static void test_empty_and_garbage(void **state)
{
	struct io_proxy_result r;

	assert_int_equal(io_proxy_parse(NULL, 0, &r), 0);
	assert_int_equal(parse_exact("P", 1, &r), 0);
	assert_int_equal(parse_exact("PROX", 4, &r), 0);
	assert_int_equal(parse_exact("PRX", 3, &r), -EINVAL);
	assert_int_equal(parse_exact("\r", 1, &r), 0);
	assert_int_equal(parse_exact("\r\n\r\n\0\r", 6, &r), 0);
	assert_int_equal(parse_exact("\r\n\r\n\1", 5, &r), -EINVAL);
	assert_int_equal(parse_exact("\0", 1, &r), -EINVAL);
	assert_int_equal(parse_exact("E", 1, &r), -EINVAL);
}

/* ---- v2 ---- */

static size_t v2_build(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const void *body, uint16_t body_len)
{
	memcpy(out, V2SIG, 12);
	out[12] = ver_cmd;
	out[13] = fam;
	out[14] = (uint8_t)(body_len >> 8);
	out[15] = (uint8_t)body_len;
	if (body_len)
		memcpy(out + 16, body, body_len);
	return 16u + body_len;
}

static const uint8_t v2_inet_body[12] = {192, 0, 2, 7, 127, 0, 0, 1, 0xdc, 0x04, 0x00, 0x19};

static void test_v2_tcp4(void **state)
{
	struct io_proxy_result r;
	uint8_t h[64];
	size_t n = v2_build(h, 0x21, 0x11, v2_inet_body, sizeof(v2_inet_body));

	assert_int_equal(parse_all_ways(h, n, &r), (int)n);
	assert_int_equal(r.version, 2);
	assert_false(r.local);
	assert_int_equal(r.family, AF_INET);
	assert_string_equal(r.src_addr, "192.0.2.7");
	assert_string_equal(r.dst_addr, "127.0.0.1");
	assert_int_equal(r.src_port, 56324);
	assert_int_equal(r.dst_port, 25);
}

static void test_v2_tcp6(void **state)
{
	struct io_proxy_result r;
	uint8_t body[36] = {0x20, 0x01, 0x0d, 0xb8};
	uint8_t h[64];
	size_t n;

	body[15] = 1; /* src 2001:db8::1 */
	body[31] = 1; /* dst ::1 */
	body[32] = 0xff;
	body[33] = 0xff;
	body[35] = 25;
	n = v2_build(h, 0x21, 0x21, body, sizeof(body));
	assert_int_equal(parse_all_ways(h, n, &r), (int)n);
	assert_int_equal(r.family, AF_INET6);
	assert_string_equal(r.src_addr, "2001:db8::1");
	assert_string_equal(r.dst_addr, "::1");
	assert_int_equal(r.src_port, 65535);
	assert_int_equal(r.dst_port, 25);
}

static void test_v2_local(void **state)
{
	struct io_proxy_result r;
	uint8_t h[64];
	size_t n;

	n = v2_build(h, 0x20, 0x00, NULL, 0);
	assert_int_equal(parse_all_ways(h, n, &r), 16);
	assert_true(r.local);
	assert_int_equal(r.version, 2);
	assert_int_equal(r.family, AF_UNSPEC);
	/* LOCAL with an address block (haproxy health checks may send one): ignored. */
	n = v2_build(h, 0x20, 0x11, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), (int)n);
	assert_true(r.local);
	assert_string_equal(r.src_addr, "");
	/* PROXY with AF_UNSPEC: use the real endpoints. */
	n = v2_build(h, 0x21, 0x00, "\1\2\3", 3);
	assert_int_equal(parse_all_ways(h, n, &r), (int)n);
	assert_true(r.local);
}

static void test_v2_tlvs(void **state)
{
	struct io_proxy_result r;
	uint8_t body[IO_PROXY_V2_MAX_BYTES];
	uint8_t h[IO_PROXY_V2_MAX_BYTES + 16];
	size_t off = sizeof(v2_inet_body), n;

	memcpy(body, v2_inet_body, off);
	/* PP2_TYPE_ALPN "smtp" */
	memcpy(body + off, "\x01\x00\x04smtp", 7);
	off += 7;
	/* PP2_TYPE_NOOP with empty value */
	memcpy(body + off, "\x04\x00\x00", 3);
	off += 3;
	/* PP2_TYPE_UNIQUE_ID 5 bytes */
	memcpy(body + off, "\x05\x00\x05hello", 8);
	off += 8;
	n = v2_build(h, 0x21, 0x11, body, (uint16_t)off);
	assert_int_equal(parse_all_ways(h, n, &r), (int)n);
	assert_string_equal(r.src_addr, "192.0.2.7");

	/* Largest accepted: one NOOP TLV filling up to 536 bytes total. */
	off = sizeof(v2_inet_body);
	size_t tlv_len = IO_PROXY_V2_MAX_BYTES - 16 - off - 3;
	body[off] = 0x04;
	body[off + 1] = (uint8_t)(tlv_len >> 8);
	body[off + 2] = (uint8_t)tlv_len;
	memset(body + off + 3, 0, tlv_len);
	off += 3 + tlv_len;
	n = v2_build(h, 0x21, 0x11, body, (uint16_t)off);
	assert_int_equal(n, IO_PROXY_V2_MAX_BYTES);
	assert_int_equal(parse_all_ways(h, n, &r), IO_PROXY_V2_MAX_BYTES);
}

static void test_v2_malformed(void **state)
{
	struct io_proxy_result r;
	uint8_t body[64];
	uint8_t h[700];
	size_t n;

	/* Bad signature byte at each position. */
	for (size_t i = 0; i < 12; i++) {
		n = v2_build(h, 0x21, 0x11, v2_inet_body, sizeof(v2_inet_body));
		h[i] ^= 0x40;
		assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	}
	/* Version 1 or 3 in the binary format. */
	n = v2_build(h, 0x11, 0x11, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	n = v2_build(h, 0x31, 0x11, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	/* Unknown command. */
	n = v2_build(h, 0x22, 0x11, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	/* Wrong family / protocol: UDP over IPv4, UNIX stream, undefined 0x4. */
	n = v2_build(h, 0x21, 0x12, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	memset(body, 'a', sizeof(body));
	n = v2_build(h, 0x21, 0x31, body, sizeof(body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	n = v2_build(h, 0x21, 0x41, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	n = v2_build(h, 0x21, 0x10, v2_inet_body, sizeof(v2_inet_body));
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	/* Length too small for the family. */
	n = v2_build(h, 0x21, 0x11, v2_inet_body, 11);
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	n = v2_build(h, 0x21, 0x21, body, 35);
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	/* Length too large: rejected from the 16-byte header alone. */
	n = v2_build(h, 0x21, 0x11, v2_inet_body, sizeof(v2_inet_body));
	h[14] = 0x02;
	h[15] = 0x09; /* 521 + 16 = 537 */
	assert_int_equal(parse_exact(h, 16, &r), -EINVAL);
	h[14] = 0xff;
	h[15] = 0xff;
	assert_int_equal(parse_exact(h, 16, &r), -EINVAL);
	/* Truncated TLV header and TLV length past the end. */
	memcpy(body, v2_inet_body, 12);
	memcpy(body + 12, "\x01\x00", 2);
	n = v2_build(h, 0x21, 0x11, body, 14);
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
	memcpy(body + 12, "\x01\x00\x05smt", 6);
	n = v2_build(h, 0x21, 0x11, body, 18);
	assert_int_equal(parse_all_ways(h, n, &r), -EINVAL);
}

static void test_v2_truncated(void **state)
{
	struct io_proxy_result r;
	uint8_t h[64];
	size_t n = v2_build(h, 0x21, 0x11, v2_inet_body, sizeof(v2_inet_body));

	for (size_t i = 0; i < n; i++)
		assert_int_equal(parse_exact(h, i, &r), 0);
	assert_int_equal(parse_exact(h, n, &r), (int)n);
}

/* A v1 header split at every point, and then SMTP data in the same buffer. */
static void test_byte_by_byte(void **state)
{
	const char h[] = "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nEHLO a\r\n";
	struct io_proxy_result r;
	size_t hdr = strlen("PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n");

	for (size_t i = 0; i < sizeof(h) - 1; i++) {
		int ret = parse_exact(h, i, &r);

		if (i < hdr)
			assert_int_equal(ret, 0);
		else
			assert_int_equal(ret, (int)hdr);
	}
	assert_string_equal(r.src_addr, "10.0.0.1");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1_tcp4),		  cmocka_unit_test(test_v1_tcp4_port_bounds),
		cmocka_unit_test(test_v1_tcp6),		  cmocka_unit_test(test_v1_tcp6_longest),
		cmocka_unit_test(test_v1_unknown),	  cmocka_unit_test(test_v1_unknown_longest),
		cmocka_unit_test(test_v1_malformed),	  cmocka_unit_test(test_v1_too_long),
		cmocka_unit_test(test_empty_and_garbage), cmocka_unit_test(test_v2_tcp4),
		cmocka_unit_test(test_v2_tcp6),		  cmocka_unit_test(test_v2_local),
		cmocka_unit_test(test_v2_tlvs),		  cmocka_unit_test(test_v2_malformed),
		cmocka_unit_test(test_v2_truncated),	  cmocka_unit_test(test_byte_by_byte),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
