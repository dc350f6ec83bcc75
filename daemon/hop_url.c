/* SPDX-License-Identifier: MIT */
/*
 * --deliver-to URL: one next hop, parsed into struct io_hop_spec. Literal
 * addresses only (dotspool makes no DNS lookups), so a bad URL is refused
 * at start-up and by --check-config, never found out at the first delivery.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ds_assert.h"
#include "options.h"

static int hop_fail(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A name rather than an address: letters, digits, dots and dashes with at least one letter. */
static bool looks_like_name(const char *host)
{
	bool letter = false;
	for (const char *p = host; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
			letter = true;
		else if (!((*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
			return false;
	}
	return letter;
}

/* PORT of smtp:// and lmtp://: 1..65535, digits only, required. */
static int parse_port(const char *url, const char *port, uint16_t *out, char *err, size_t cap)
{
	if (!*port)
		return hop_fail(err, cap, "'%s': no port (want %.4s://IP:PORT)", url, url);
	unsigned long p = 0;
	for (const char *c = port; *c; c++) {
		if (*c < '0' || *c > '9' || c - port >= 5)
			return hop_fail(err, cap, "'%s': bad port '%s' (1..65535)", url, port);
		p = p * 10 + (unsigned long)(*c - '0');
	}
	if (p < 1 || p > 65535)
		return hop_fail(err, cap, "'%s': bad port '%s' (1..65535)", url, port);
	*out = (uint16_t)p;
	return 0;
}

/* smtp://HOST:PORT, lmtp://HOST:PORT: HOST an IPv4 literal or [IPv6]. auth is what follows "//". */
static int parse_tcp(const char *url, const char *auth, struct io_hop_spec *h, char *err, size_t cap)
{
	char host[INET6_ADDRSTRLEN + 8];
	const char *port;
	if (strpbrk(auth, "/?#@"))
		return hop_fail(err, cap, "'%s': nothing but IP:PORT after '//' (no path, user or query)",
				url);
	if (auth[0] == '[') {
		const char *end = strchr(auth, ']');
		size_t n = end ? (size_t)(end - auth - 1) : 0;
		if (!end || n == 0 || n >= sizeof(host))
			return hop_fail(err, cap, "'%s': bad IPv6 literal (want [ADDR]:PORT)", url);
		memcpy(host, auth + 1, n);
		host[n] = 0;
		if (end[1] != ':')
			return hop_fail(err, cap, "'%s': no port (want %.4s://[IPv6]:PORT)", url, url);
		port = end + 2;
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&h->addr;
		if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
			return hop_fail(err, cap, "'%s': '%s' is not an IPv6 address", url, host);
		if (parse_port(url, port, &in6->sin6_port, err, cap) < 0)
			return -EINVAL;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(in6->sin6_port);
		h->addr_len = sizeof(*in6);
		return 0;
	}
	const char *colon = strchr(auth, ':');
	if (colon && strchr(colon + 1, ':'))
		return hop_fail(err, cap, "'%s': an IPv6 address goes in brackets (%.4s://[::1]:PORT)", url,
				url);
	size_t n = colon ? (size_t)(colon - auth) : strlen(auth);
	if (n == 0)
		return hop_fail(err, cap, "'%s': no host (want %.4s://IP:PORT)", url, url);
	if (n >= sizeof(host))
		return hop_fail(err, cap, "'%s': dotspool makes no DNS lookups: give an IP literal", url);
	memcpy(host, auth, n);
	host[n] = 0;
	struct sockaddr_in *in = (struct sockaddr_in *)&h->addr;
	if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
		if (looks_like_name(host))
			return hop_fail(err, cap,
					"'%s': '%s': dotspool makes no DNS lookups: give an IP literal", url,
					host);
		return hop_fail(err, cap, "'%s': '%s' is not an IPv4 address", url, host);
	}
	if (!colon)
		return hop_fail(err, cap, "'%s': no port (want %.4s://IP:PORT)", url, url);
	if (parse_port(url, colon + 1, &in->sin_port, err, cap) < 0)
		return -EINVAL;
	in->sin_family = AF_INET;
	in->sin_port = htons(in->sin_port);
	h->addr_len = sizeof(*in);
	return 0;
}

/* lmtp:/PATH: an absolute path that fits sun_path with its NUL. */
static int parse_unix(const char *url, const char *path, struct io_hop_spec *h, char *err, size_t cap)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&h->addr;
	size_t n = strlen(path);
	if (n >= sizeof(un->sun_path))
		return hop_fail(err, cap,
				"'%s': unix socket path is %zu bytes, longer than sun_path allows (%zu)", url,
				n, sizeof(un->sun_path) - 1);
	DS_ASSERT(n < sizeof(h->path));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, n + 1);
	h->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	memcpy(h->path, path, n + 1);
	return 0;
}

/*
 * pipe:/PROGRAM: an absolute path to an executable regular file, checked
 * now (by the user running the check: run --check-config as the service's
 * user). No arguments: the envelope goes to the program as arguments and
 * environment, the message on stdin.
 */
static int parse_pipe(const char *url, const char *path, struct io_hop_spec *h, char *err, size_t cap)
{
	struct stat st;
	size_t n = strlen(path);
	if (n >= sizeof(h->path))
		return hop_fail(err, cap, "'%s': program path too long", url);
	if (stat(path, &st) < 0)
		return hop_fail(err, cap, "'%s': %s: %s", url, path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return hop_fail(err, cap, "'%s': %s is not a regular file", url, path);
	if (access(path, X_OK) < 0 || !(st.st_mode & (S_IXUSR | S_IXGRP | S_IXOTH)))
		return hop_fail(err, cap, "'%s': %s is not executable", url, path);
	memcpy(h->path, path, n + 1);
	h->addr_len = 0;
	return 0;
}

/* The scheme, case-insensitively (RFC 3986 3.1): the length of the prefix, or 0. */
static size_t scheme_is(const char *url, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncasecmp(url, prefix, n) == 0 ? n : 0;
}

int daemon_hop_parse(const char *url, struct io_hop_spec *h, char *err, size_t cap)
{
	size_t n = strlen(url), k;
	memset(h, 0, sizeof(*h));
	if (n == 0 || n >= sizeof(h->text))
		return hop_fail(err, cap, "'%.64s': 1..%zu characters", url, sizeof(h->text) - 1);
	for (const char *p = url; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return hop_fail(err, cap, "'%s': no spaces or control characters", url);
	memcpy(h->text, url, n + 1);
	if ((k = scheme_is(url, "amqp://")) || (k = scheme_is(url, "amqps://"))) {
		/* Recognised so that the mix rule can be checked; the transport is issue 18's. */
		h->kind = IO_HOP_AMQP;
		return 0;
	}
	if ((k = scheme_is(url, "smtp://"))) {
		h->kind = IO_HOP_SMTP;
		return parse_tcp(url, url + k, h, err, cap);
	}
	if ((k = scheme_is(url, "lmtp://"))) {
		h->kind = IO_HOP_LMTP;
		return parse_tcp(url, url + k, h, err, cap);
	}
	if ((k = scheme_is(url, "lmtp:"))) {
		h->kind = IO_HOP_LMTP;
		if (url[k] != '/')
			return hop_fail(err, cap, "'%s': want lmtp:/ABSOLUTE/PATH or lmtp://IP:PORT", url);
		return parse_unix(url, url + k, h, err, cap);
	}
	if ((k = scheme_is(url, "pipe:"))) {
		h->kind = IO_HOP_PIPE;
		if (url[k] != '/' || url[k + 1] == '/')
			return hop_fail(err, cap, "'%s': want pipe:/ABSOLUTE/PATH/TO/PROGRAM", url);
		return parse_pipe(url, url + k, h, err, cap);
	}
	return hop_fail(
		err, cap,
		"'%s': not a next hop (want smtp://IP:PORT, lmtp://IP:PORT, lmtp:/PATH or pipe:/PATH)", url);
}

/* "kind=smtp addr=::1 port=25" and the like: what the URL was understood as. */
void daemon_hop_describe(const struct io_hop_spec *h, char *out, size_t cap)
{
	static const char *const kinds[] = {"?", "smtp", "lmtp", "pipe", "amqp"};
	const char *kind = (unsigned)h->kind < DS_ARRAY_SIZE(kinds) ? kinds[h->kind] : "?";
	char a[INET6_ADDRSTRLEN] = "";
	const struct sockaddr_in *in = (const struct sockaddr_in *)&h->addr;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&h->addr;
	if (h->kind == IO_HOP_PIPE)
		snprintf(out, cap, "kind=%s program=%s", kind, h->path);
	else if (h->addr_len && h->addr.ss_family == AF_UNIX)
		snprintf(out, cap, "kind=%s unix=%s", kind, h->path);
	else if (h->addr_len && h->addr.ss_family == AF_INET)
		snprintf(out, cap, "kind=%s addr=%s port=%u", kind,
			 inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a)) ? a : "?", ntohs(in->sin_port));
	else if (h->addr_len && h->addr.ss_family == AF_INET6)
		snprintf(out, cap, "kind=%s addr=%s port=%u", kind,
			 inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a)) ? a : "?", ntohs(in6->sin6_port));
	else
		snprintf(out, cap, "kind=%s", kind);
}
