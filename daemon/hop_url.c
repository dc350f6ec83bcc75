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

/* Percent-decode src[0..n) into out (cap with its NUL): 0, or -EINVAL (bad escape, NUL, too long). */
static int pct_decode(const char *src, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)src[i];
		if (c == '%') {
			unsigned v = 0;
			for (int k = 1; k <= 2; k++) {
				char h = i + (size_t)k < n ? src[i + (size_t)k] : 0;
				v <<= 4;
				if (h >= '0' && h <= '9')
					v |= (unsigned)(h - '0');
				else if ((h | 0x20) >= 'a' && (h | 0x20) <= 'f')
					v |= (unsigned)((h | 0x20) - 'a' + 10);
				else
					return -EINVAL;
			}
			if (v == 0)
				return -EINVAL;
			c = (unsigned char)v;
			i += 2;
		}
		if (o + 1 >= cap)
			return -EINVAL;
		out[o++] = (char)c;
	}
	out[o] = 0;
	return 0;
}

/*
 * amqp://[USER:PASS@]HOST[:PORT][/VHOST][?exchange=E&routing_key=K] (issue 18).
 * HOST an IPv4 literal or [IPv6] (librabbitmq's amqp_socket_open resolves
 * names, and dotspool makes no DNS lookups); PORT 5672 by default; VHOST
 * percent-decoded ("%2F" is "/"), "/" when absent or empty. h->text keeps
 * the URL with the password replaced by "***" (it is shown in logs and
 * metrics labels).
 */
static int parse_amqp(const char *url, const char *auth, struct io_hop_spec *h, char *err, size_t cap)
{
	const char *end = auth + strcspn(auth, "/?#");
	if (*end == '#')
		return hop_fail(err, cap, "'%s': no fragment (#) in an amqp:// URL", url);
	const char *at = memchr(auth, '@', (size_t)(end - auth));
	const char *hostport = auth;
	size_t user_off = 0, user_len = 0;
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));
		if (!colon)
			return hop_fail(err, cap, "'%s': want USER:PASSWORD@ before the host", url);
		if (pct_decode(auth, (size_t)(colon - auth), h->amqp.user, sizeof(h->amqp.user)) < 0 ||
		    !h->amqp.user[0])
			return hop_fail(err, cap, "'%s': bad user name", url);
		if (pct_decode(colon + 1, (size_t)(at - colon - 1), h->amqp.pass, sizeof(h->amqp.pass)) < 0)
			return hop_fail(err, cap, "'%s': bad password", url);
		user_off = (size_t)(auth - url);
		user_len = (size_t)(colon - auth);
		hostport = at + 1;
	}
	char hp[128];
	size_t n = (size_t)(end - hostport);
	if (n == 0)
		return hop_fail(err, cap, "'%s': no host (want amqp://IP:PORT/VHOST)", url);
	if (n >= sizeof(hp))
		return hop_fail(err, cap, "'%s': dotspool makes no DNS lookups: give an IP literal", url);
	memcpy(hp, hostport, n);
	hp[n] = 0;
	/* A missing port is 5672 (RabbitMQ's URI spec); parse_tcp wants one. */
	bool v6 = hp[0] == '[';
	const char *rb = v6 ? strchr(hp, ']') : NULL;
	bool has_port = v6 ? (rb && rb[1] == ':') : strchr(hp, ':') != NULL;
	if (!has_port && n + 6 < sizeof(hp))
		strcat(hp, ":5672");
	char tmp[160];
	snprintf(tmp, sizeof(tmp), "amqp://%s", hp);
	if (parse_tcp(tmp, tmp + 7, h, err, cap) < 0) {
		/* Say it about the URL as given (parse_tcp names "amqp://HOST:PORT"). */
		char why[400];
		snprintf(why, sizeof(why), "%s", err);
		const char *msg = strstr(why, "': ");
		return hop_fail(err, cap, "'%s': %s", url, msg ? msg + 3 : why);
	}
	const struct sockaddr_in *in = (const struct sockaddr_in *)&h->addr;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&h->addr;
	if (h->addr.ss_family == AF_INET) {
		inet_ntop(AF_INET, &in->sin_addr, h->amqp.host, sizeof(h->amqp.host));
		h->amqp.port = ntohs(in->sin_port);
	} else {
		inet_ntop(AF_INET6, &in6->sin6_addr, h->amqp.host, sizeof(h->amqp.host));
		h->amqp.port = ntohs(in6->sin6_port);
	}
	const char *q = strchr(end, '?');
	const char *path_end = q ? q : end + strlen(end);
	snprintf(h->amqp.vhost, sizeof(h->amqp.vhost), "/");
	if (*end == '/' && path_end > end + 1 &&
	    pct_decode(end + 1, (size_t)(path_end - end - 1), h->amqp.vhost, sizeof(h->amqp.vhost)) < 0)
		return hop_fail(err, cap, "'%s': bad virtual host (percent-encode '/' as %%2F)", url);
	if (*end == '/' && path_end > end + 1 && memchr(end + 1, '/', (size_t)(path_end - end - 1)))
		return hop_fail(err, cap, "'%s': one path segment only: the virtual host (%%2F for '/')",
				url);
	for (const char *p = q ? q + 1 : NULL; p && *p;) {
		size_t len = strcspn(p, "&");
		const char *eq = memchr(p, '=', len);
		if (!eq)
			return hop_fail(err, cap, "'%s': query items are KEY=VALUE", url);
		size_t kl = (size_t)(eq - p);
		char *dst;
		size_t dcap;
		if (kl == 8 && !strncmp(p, "exchange", 8)) {
			dst = h->amqp.exchange;
			dcap = sizeof(h->amqp.exchange);
		} else if (kl == 11 && !strncmp(p, "routing_key", 11)) {
			dst = h->amqp.routing_key;
			dcap = sizeof(h->amqp.routing_key);
		} else {
			return hop_fail(err, cap, "'%s': unknown query key '%.*s' (exchange, routing_key)",
					url, (int)kl, p);
		}
		if (pct_decode(eq + 1, len - kl - 1, dst, dcap) < 0)
			return hop_fail(err, cap, "'%s': bad value of '%.*s'", url, (int)kl, p);
		p += len;
		if (*p == '&')
			p++;
	}
	/* The text shown in logs and metrics: the password masked. */
	if (at)
		snprintf(h->text, sizeof(h->text), "%.*s%.*s:***%s", (int)user_off, url, (int)user_len,
			 url + user_off, at);
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
	if ((k = scheme_is(url, "amqps://"))) {
		h->kind = IO_HOP_AMQP;
		return hop_fail(err, cap,
				"'%s': amqps:// (TLS to the broker) is not supported yet: use amqp://", url);
	}
	if ((k = scheme_is(url, "amqp://"))) {
		h->kind = IO_HOP_AMQP;
		return parse_amqp(url, url + k, h, err, cap);
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
		"'%s': not a next hop (want smtp://IP:PORT, lmtp://IP:PORT, lmtp:/PATH, pipe:/PATH or "
		"amqp://USER:PASS@IP:PORT/VHOST?exchange=E&routing_key=K)",
		url);
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
	else if (h->kind == IO_HOP_AMQP)
		snprintf(out, cap, "kind=%s addr=%s port=%u vhost=%s exchange=%s routing_key=%s user=%s",
			 kind, h->amqp.host, h->amqp.port, h->amqp.vhost, h->amqp.exchange,
			 h->amqp.routing_key, h->amqp.user[0] ? h->amqp.user : "(credentials file)");
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
