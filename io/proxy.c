/* SPDX-License-Identifier: MIT */
#include "proxy.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "ds_assert.h"

static const uint8_t io_proxy_v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char io_proxy_v1_prefix[] = "PROXY ";

#define IO_PROXY_V1_PREFIX_BYTES (sizeof(io_proxy_v1_prefix) - 1)

/* v2 command (low nibble of byte 12) and address family/protocol (byte 13). */
#define IO_PROXY_V2_CMD_LOCAL	  0x0
#define IO_PROXY_V2_CMD_PROXY	  0x1
#define IO_PROXY_V2_FAM_UNSPEC	  0x00
#define IO_PROXY_V2_FAM_TCP4	  0x11
#define IO_PROXY_V2_FAM_TCP6	  0x21
#define IO_PROXY_V2_INET_BYTES	  12
#define IO_PROXY_V2_INET6_BYTES	  36
#define IO_PROXY_V2_TLV_HDR_BYTES 3

static void io_proxy_result_local(struct io_proxy_result *res, int version)
{
	memset(res, 0, sizeof(*res));
	res->version = version;
	res->local = true;
	res->family = AF_UNSPEC;
}

/*
 * Parse a decimal port with no sign, no leading zero (except "0" itself) and
 * at most 5 digits, over exactly [s, s+n).
 */
static int io_proxy_port(const char *s, size_t n, uint16_t *port)
{
	uint32_t v = 0;

	if (n == 0 || n > 5)
		return -EINVAL;
	if (s[0] == '0' && n > 1)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint32_t)(s[i] - '0');
	}
	if (v > 65535)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* Parse [s, s+n) as an address of family af, store its canonical text. */
static int io_proxy_addr(int af, const char *s, size_t n, char out[IO_PROXY_ADDR_MAX])
{
	char tmp[IO_PROXY_ADDR_MAX];
	uint8_t bin[16];

	if (n == 0 || n >= sizeof(tmp))
		return -EINVAL;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	if (inet_pton(af, tmp, bin) != 1)
		return -EINVAL;
	if (!inet_ntop(af, bin, out, IO_PROXY_ADDR_MAX))
		return -EINVAL;
	return 0;
}

/*
 * Take the next space-terminated (or, for the last field, end-terminated)
 * field from the line [*pos, end). Fields are separated by exactly one space.
 */
static int io_proxy_field(const char *line, size_t end, size_t *pos, bool last, const char **f, size_t *n)
{
	size_t start = *pos;
	size_t i = start;

	while (i < end && line[i] != ' ')
		i++;
	if (i == start)
		return -EINVAL;
	if (last ? i != end : i == end)
		return -EINVAL;
	*f = line + start;
	*n = i - start;
	*pos = last ? i : i + 1;
	return 0;
}

/* line[0..n) is one complete v1 line without its CRLF, prefix already checked. */
static int io_proxy_v1_line(const char *line, size_t n, struct io_proxy_result *res)
{
	struct io_proxy_result r;
	size_t pos = IO_PROXY_V1_PREFIX_BYTES;
	const char *f;
	size_t fn;
	int af;

	/* UNKNOWN: the sender may append anything; the spec says ignore it. */
	if (n - pos >= 7 && memcmp(line + pos, "UNKNOWN", 7) == 0 && (n - pos == 7 || line[pos + 7] == ' ')) {
		io_proxy_result_local(res, 1);
		return 0;
	}
	if (n - pos < 5 || line[pos + 4] != ' ')
		return -EINVAL;
	if (memcmp(line + pos, "TCP4", 4) == 0)
		af = AF_INET;
	else if (memcmp(line + pos, "TCP6", 4) == 0)
		af = AF_INET6;
	else
		return -EINVAL;
	pos += 5;

	memset(&r, 0, sizeof(r));
	r.version = 1;
	r.family = af;
	if (io_proxy_field(line, n, &pos, false, &f, &fn) || io_proxy_addr(af, f, fn, r.src_addr))
		return -EINVAL;
	if (io_proxy_field(line, n, &pos, false, &f, &fn) || io_proxy_addr(af, f, fn, r.dst_addr))
		return -EINVAL;
	if (io_proxy_field(line, n, &pos, false, &f, &fn) || io_proxy_port(f, fn, &r.src_port))
		return -EINVAL;
	if (io_proxy_field(line, n, &pos, true, &f, &fn) || io_proxy_port(f, fn, &r.dst_port))
		return -EINVAL;
	*res = r;
	return 0;
}

static int io_proxy_v1(const uint8_t *buf, size_t len, struct io_proxy_result *res)
{
	size_t scan = DS_MIN(len, (size_t)IO_PROXY_V1_MAX_BYTES);
	size_t cmp = DS_MIN(len, IO_PROXY_V1_PREFIX_BYTES);

	/* Reject as early as possible: a wrong prefix never becomes right. */
	if (memcmp(buf, io_proxy_v1_prefix, cmp) != 0)
		return -EINVAL;

	for (size_t i = 0; i < scan; i++) {
		uint8_t c = buf[i];

		if (c == '\r') {
			if (i + 1 >= IO_PROXY_V1_MAX_BYTES)
				return -EINVAL; /* the LF would be past the limit */
			if (i + 1 >= len)
				return 0; /* the LF may still come */
			if (buf[i + 1] != '\n')
				return -EINVAL; /* bare CR */
			if (i < IO_PROXY_V1_PREFIX_BYTES)
				return -EINVAL;
			if (io_proxy_v1_line((const char *)buf, i, res))
				return -EINVAL;
			return (int)(i + 2);
		}
		/* Bare LF, NUL and other control bytes are never part of a header. */
		if (c < 0x20 || c > 0x7e)
			return -EINVAL;
	}
	if (len >= IO_PROXY_V1_MAX_BYTES)
		return -EINVAL; /* no CRLF within the limit */
	return 0;
}

/* Check that [p, p+n) is a sequence of whole TLVs; their contents are ignored. */
static int io_proxy_v2_tlvs(const uint8_t *p, size_t n)
{
	size_t pos = 0;

	while (pos < n) {
		size_t tlv_len;

		if (n - pos < IO_PROXY_V2_TLV_HDR_BYTES)
			return -EINVAL;
		tlv_len = ((size_t)p[pos + 1] << 8) | p[pos + 2];
		pos += IO_PROXY_V2_TLV_HDR_BYTES;
		if (tlv_len > n - pos)
			return -EINVAL;
		pos += tlv_len;
	}
	return 0;
}

/* The v2 address block of a TCP4 or TCP6 header: source and destination, addresses and ports. */
static int io_proxy_v2_addrs(const uint8_t *a, uint8_t fam, struct io_proxy_result *r)
{
	memset(r, 0, sizeof(*r));
	r->version = 2;
	if (fam == IO_PROXY_V2_FAM_TCP4) {
		r->family = AF_INET;
		if (!inet_ntop(AF_INET, a, r->src_addr, sizeof(r->src_addr)) ||
		    !inet_ntop(AF_INET, a + 4, r->dst_addr, sizeof(r->dst_addr)))
			return -EINVAL;
		a += 8;
	} else {
		r->family = AF_INET6;
		if (!inet_ntop(AF_INET6, a, r->src_addr, sizeof(r->src_addr)) ||
		    !inet_ntop(AF_INET6, a + 16, r->dst_addr, sizeof(r->dst_addr)))
			return -EINVAL;
		a += 32;
	}
	r->src_port = (uint16_t)((a[0] << 8) | a[1]);
	r->dst_port = (uint16_t)((a[2] << 8) | a[3]);
	return 0;
}

static int io_proxy_v2(const uint8_t *buf, size_t len, struct io_proxy_result *res)
{
	size_t cmp = DS_MIN(len, sizeof(io_proxy_v2_sig));
	struct io_proxy_result r;
	size_t body_len, total, addr_len;
	uint8_t cmd, fam;

	if (memcmp(buf, io_proxy_v2_sig, cmp) != 0)
		return -EINVAL;
	if (len > 12 && (buf[12] >> 4) != 0x2)
		return -EINVAL;
	if (len > 12 && (buf[12] & 0xf) > IO_PROXY_V2_CMD_PROXY)
		return -EINVAL;
	if (len < IO_PROXY_V2_HDR_BYTES)
		return 0;

	cmd = buf[12] & 0xf;
	fam = buf[13];
	body_len = ((size_t)buf[14] << 8) | buf[15];
	total = IO_PROXY_V2_HDR_BYTES + body_len;
	if (total > IO_PROXY_V2_MAX_BYTES)
		return -EINVAL;
	/* Family checks that need no more bytes come before waiting for them. */
	if (cmd == IO_PROXY_V2_CMD_PROXY) {
		if (fam == IO_PROXY_V2_FAM_TCP4)
			addr_len = IO_PROXY_V2_INET_BYTES;
		else if (fam == IO_PROXY_V2_FAM_TCP6)
			addr_len = IO_PROXY_V2_INET6_BYTES;
		else if (fam == IO_PROXY_V2_FAM_UNSPEC)
			addr_len = 0;
		else
			return -EINVAL; /* UNIX, DGRAM, undefined: not for an SMTP listener */
		if (body_len < addr_len)
			return -EINVAL;
	} else {
		addr_len = 0;
	}
	if (len < total)
		return 0;

	/*
	 * LOCAL (health checks from the proxy itself): the address block, if
	 * any, is to be ignored, so only the TLV part after a known block is
	 * checked when the family tells us its size.
	 */
	if (cmd == IO_PROXY_V2_CMD_LOCAL || fam == IO_PROXY_V2_FAM_UNSPEC) {
		io_proxy_result_local(&r, 2);
		*res = r;
		return (int)total;
	}

	if (io_proxy_v2_tlvs(buf + IO_PROXY_V2_HDR_BYTES + addr_len, body_len - addr_len))
		return -EINVAL;

	if (io_proxy_v2_addrs(buf + IO_PROXY_V2_HDR_BYTES, fam, &r))
		return -EINVAL;
	*res = r;
	return (int)total;
}

int io_proxy_parse(const uint8_t *buf, size_t len, struct io_proxy_result *res)
{
	int ret;

	DS_ASSERT(res != NULL);
	DS_ASSERT(buf != NULL || len == 0);
	if (len == 0)
		return 0;
	if (buf[0] == 'P')
		ret = io_proxy_v1(buf, len, res);
	else if (buf[0] == io_proxy_v2_sig[0])
		ret = io_proxy_v2(buf, len, res);
	else
		ret = -EINVAL;
	DS_ASSERT(ret <= 0 || (size_t)ret <= len);
	DS_ASSERT(ret != 0 || len < IO_PROXY_MAX_BYTES);
	return ret;
}
