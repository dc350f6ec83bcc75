/* SPDX-License-Identifier: MIT */
/*
 * Every setting of the server, in one table: the command line (--name
 * value) and the configuration file (name = value) both go through
 * daemon_option_apply(), so a flag and its config key can never drift apart.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ds_assert.h"
#include "log.h"
#include "options.h"
#include "ring.h"
#include "spool.h"

enum opt_kind {
	OPT_U32,
	OPT_U64,
	OPT_BOOL,
	OPT_STR,      /* fixed char array in io_config */
	OPT_LISTEN,   /* repeatable */
	OPT_DOMAIN,   /* repeatable */
	OPT_FLAG_NEG, /* bool option whose presence sets the field false (--no-prewrite) */
};

struct opt_def {
	const char *name;
	enum opt_kind kind;
	size_t off; /* into struct io_config */
	uint64_t min, max;
	int listen_kind;
	const char *help;
};

#define CF(f) offsetof(struct io_config, f)

static const struct opt_def opts[] = {
	{"listen", OPT_LISTEN, 0, 0, 0, IO_LISTEN_SMTP,
	 "ADDR:PORT SMTP listener, repeatable (default 127.0.0.1:2525 when no listener is given)"},
	{"lmtp-listen", OPT_LISTEN, 0, 0, 0, IO_LISTEN_LMTP,
	 "ADDR:PORT LMTP listener (RFC 2033), repeatable"},
	{"proxy-listen", OPT_LISTEN, 0, 0, 0, IO_LISTEN_SMTP_PROXY,
	 "ADDR:PORT SMTP listener that requires a PROXY v1/v2 header (behind a load balancer)"},
	{"spool", OPT_STR, CF(spool_dir), 1, 4000, 0, "DIR spool directory (default ./var/spool)"},
	{"accept-domain", OPT_DOMAIN, 0, 0, 0, 0,
	 "D accept mail for D; .D accepts every subdomain; repeatable (default localhost)"},
	{"hostname", OPT_STR, CF(hostname), 1, 255, 0,
	 "NAME our name in the banner and Received: (default: host name)"},
	{"threads", OPT_U32, CF(threads), 1, IO_THREADS_MAX, 0,
	 "N worker threads, one per core (default: cores)"},
	{"max-message-size", OPT_U64, CF(smtp.max_message_size), 1024, 1ull << 40, 0,
	 "BYTES message size limit"},
	{"max-recipients", OPT_U32, CF(smtp.max_recipients), 1, 100000, 0, "N recipients per message"},
	{"max-command-line", OPT_U32, CF(smtp.max_cmd_line), 512, 65536, 0, "BYTES command line incl. CRLF"},
	{"max-text-line", OPT_U32, CF(smtp.max_text_line), 1000, 1 << 20, 0,
	 "BYTES text line in data incl. CRLF"},
	{"max-errors", OPT_U32, CF(smtp.max_errors), 1, 1000, 0, "N consecutive errors before 421"},
	{"max-connections", OPT_U32, CF(max_connections), 1, 1000000, 0, "N connections, whole server"},
	{"max-connections-per-ip", OPT_U32, CF(max_connections_per_ip), 1, 1000000, 0,
	 "N connections per client address"},
	{"timeout-greeting-s", OPT_U32, CF(timeout_greeting_s), 1, 86400, 0, "S wait for a PROXY header"},
	{"timeout-command-s", OPT_U32, CF(timeout_command_s), 1, 86400, 0,
	 "S per command (RFC 5321 4.5.3.2)"},
	{"timeout-data-s", OPT_U32, CF(timeout_data_s), 1, 86400, 0, "S per data block"},
	{"shutdown-timeout-s", OPT_U32, CF(shutdown_timeout_s), 0, 86400, 0,
	 "S on SIGTERM/SIGINT, time for transactions in flight"},
	{"segment-size", OPT_U64, CF(spool.segment_size), SPOOL_SEGMENT_SIZE_MIN, SPOOL_SEGMENT_SIZE_MAX, 0,
	 "BYTES spool segment file size (multiple of 4096)"},
	{"spool-buffer-size", OPT_U32, CF(spool.buffer_size), SPOOL_BUFFER_SIZE_MIN, 1u << 30, 0,
	 "BYTES staging memory per worker lane"},
	{"flushes-in-flight", OPT_U32, CF(spool.flushes_in_flight_max), 1, 16, 0,
	 "N flushes in flight per lane"},
	{"prewrite", OPT_BOOL, CF(spool.prewrite), 0, 1, 0, "BOOL zero-fill segments before use"},
	{"no-prewrite", OPT_FLAG_NEG, CF(spool.prewrite), 0, 1, 0,
	 "fallocate segments only (for measurements)"},
	{"spool-io", OPT_STR, CF(spool.io_mode), 1, 15, 0,
	 "MODE buffered (write + fdatasync per group, default) or direct (O_DIRECT segments, each group one "
	 "block-aligned RWF_DSYNC write; falls back to buffered where O_DIRECT is refused)"},
	{"tls-cert", OPT_STR, CF(tls_cert), 1, 4000, 0,
	 "FILE PEM certificate chain: offer STARTTLS (with --tls-key)"},
	{"tls-key", OPT_STR, CF(tls_key), 1, 4000, 0,
	 "FILE PEM private key of --tls-cert (reloaded on SIGHUP)"},
	{"metrics", OPT_STR, CF(metrics_listen), 1, 79, 0,
	 "ADDR:PORT serve Prometheus metrics at http://ADDR:PORT/metrics (default: off)"},
	{"log-level", OPT_STR, CF(log_level), 1, 15, 0,
	 "LEVEL error, warn, info (a line per accepted message and per refusal), debug (default info)"},
	{"log-buffer-size", OPT_U32, CF(log_ring_size), OBS_LOG_RING_MIN, OBS_LOG_RING_MAX, 0,
	 "BYTES log buffer per worker, a power of 2; lines beyond it are dropped and counted"},
	{"recv-buffers", OPT_U32, CF(recv_buffers), 16, 32768, 0,
	 "N provided receive buffers per worker (power of 2)"},
	{"pending-input-max", OPT_U32, CF(pending_input_max), 4096, 64 << 20, 0,
	 "BYTES unread input per connection before it stops being read"},
	{"ring-entries", OPT_U32, CF(ring_entries), IO_RING_ENTRIES_MIN, IO_RING_ENTRIES_MAX, 0,
	 "N io_uring submission queue entries per worker (completion queue: at least 16384 and 2 x N)"},
};

/*
 * Options that no longer do anything. Still accepted, as a flag and as a
 * key, so that existing configurations load; each use prints a warning.
 * Not in --help nor in dist/dotspool.conf.
 */
static const struct {
	const char *name;
	const char *why;
} obsolete_opts[] = {
	{"timeout-commit-s", "a commit is never abandoned (see dist/README.md)"},
};

static const char *obsolete_why(const char *name)
{
	for (size_t i = 0; i < DS_ARRAY_SIZE(obsolete_opts); i++)
		if (!strcmp(obsolete_opts[i].name, name))
			return obsolete_opts[i].why;
	return NULL;
}

static int fail(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

void daemon_config_defaults(struct io_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	smtp_config_defaults(&cfg->smtp);
	spool_config_defaults(&cfg->spool);
	snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "./var/spool");
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	cfg->threads = n > 0 ? (uint32_t)DS_MIN(n, IO_THREADS_MAX) : 1;
	cfg->max_connections = 16384;
	cfg->max_connections_per_ip = 16384;
	cfg->timeout_greeting_s = 30;
	cfg->timeout_command_s = 300;
	cfg->timeout_data_s = 180;
	cfg->shutdown_timeout_s = 10;
	cfg->recv_buffers = 1024;
	cfg->recv_buffer_size = 4096;
	cfg->pending_input_max = 64 * 1024;
	cfg->ring_entries = 2048;
	snprintf(cfg->log_level, sizeof(cfg->log_level), "info");
	cfg->log_ring_size = 1u << 20;
}

/* IP:PORT or [IPv6]:PORT, literal addresses only. */
static int parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *port;
	memset(ss, 0, sizeof(*ss));
	if (text[0] == '[') {
		const char *end = strchr(text, ']');
		if (!end || end[1] != ':' || (size_t)(end - text - 1) >= sizeof(host))
			return -EINVAL;
		memcpy(host, text + 1, (size_t)(end - text - 1));
		host[end - text - 1] = 0;
		port = end + 2;
	} else {
		const char *colon = strrchr(text, ':');
		if (!colon || (size_t)(colon - text) >= sizeof(host))
			return -EINVAL;
		memcpy(host, text, (size_t)(colon - text));
		host[colon - text] = 0;
		port = colon + 1;
	}
	char *e;
	unsigned long p = strtoul(port, &e, 10);
	if (*port == 0 || *e || p > 65535)
		return -EINVAL;
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	/* Literal addresses only: dotspool makes no DNS lookups. */
	if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)p);
		*len = sizeof(*in);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *e;
	errno = 0;
	if (*s == 0 || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	unsigned long long v = strtoull(s, &e, 10);
	if (errno)
		return -EINVAL;
	unsigned shift = 0;
	if (*e == 'K' || *e == 'k')
		shift = 10, e++;
	else if (*e == 'M' || *e == 'm')
		shift = 20, e++;
	else if (*e == 'G' || *e == 'g')
		shift = 30, e++;
	if (*e || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
		*out = true;
	else if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") ||
		 !strcasecmp(s, "off"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static const struct opt_def *opt_find(const char *name)
{
	for (size_t i = 0; i < DS_ARRAY_SIZE(opts); i++)
		if (!strcmp(opts[i].name, name))
			return &opts[i];
	return NULL;
}

bool daemon_option_takes_value(const char *name)
{
	const struct opt_def *d = opt_find(name);
	return (d && d->kind != OPT_FLAG_NEG) || obsolete_why(name);
}

bool daemon_option_known(const char *name)
{
	return opt_find(name) != NULL || obsolete_why(name) != NULL;
}

void daemon_config_begin_source(struct io_config *cfg)
{
	/* A new source (the command line after the file) replaces lists rather than extending them. */
	cfg->listen_from_source = false;
	cfg->domains_from_source = false;
}

/* OPT_U32, OPT_U64: a number in the option's range, with its further rules. */
static int apply_number(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	const char *name = d->name;
	uint8_t *base = (uint8_t *)cfg;
	uint64_t v;
	if (parse_u64(value, &v) < 0 || v < d->min || v > d->max)
		return fail(err, errcap, "'%s': '%s' is not a number in [%llu, %llu]", name, value,
			    (unsigned long long)d->min, (unsigned long long)d->max);
	if ((!strcmp(name, "recv-buffers") || !strcmp(name, "log-buffer-size")) && (v & (v - 1)))
		return fail(err, errcap, "'%s': '%s' is not a power of 2", name, value);
	if (!strcmp(name, "segment-size") && (v & 4095))
		return fail(err, errcap, "'%s': '%s' is not a multiple of 4096", name, value);
	if (d->kind == OPT_U32)
		*(uint32_t *)(base + d->off) = (uint32_t)v;
	else
		*(uint64_t *)(base + d->off) = v;
	return 0;
}

/* OPT_STR: a word, checked by what it names (an address, a write mode, a log level). */
static int apply_string(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	const char *name = d->name;
	uint8_t *base = (uint8_t *)cfg;
	size_t n = strlen(value);
	if (n < d->min || n > d->max || strpbrk(value, " \t\r\n"))
		return fail(err, errcap, "'%s': bad value '%s' (1..%llu characters, no spaces)", name, value,
			    (unsigned long long)d->max);
	if (!strcmp(name, "metrics") && parse_addr(value, &cfg->metrics_addr, &cfg->metrics_addr_len) < 0)
		return fail(err, errcap, "'%s': bad address '%s' (want IP:PORT or [IPv6]:PORT)", name, value);
	if (!strcmp(name, "spool-io")) {
		/* Not a string field: the spool's write mode. */
		enum spool_io_mode *mode = (enum spool_io_mode *)(base + d->off);
		if (!strcmp(value, "buffered"))
			*mode = SPOOL_IO_BUFFERED;
		else if (!strcmp(value, "direct"))
			*mode = SPOOL_IO_DIRECT;
		else
			return fail(err, errcap, "'%s': '%s' is not one of buffered, direct", name, value);
		return 0;
	}
	enum obs_log_level lvl;
	if (!strcmp(name, "log-level") && obs_log_level_parse(value, &lvl) < 0)
		return fail(err, errcap, "'%s': '%s' is not one of error, warn, info, debug", name, value);
	memcpy(base + d->off, value, n + 1);
	return 0;
}

/* A list option (listeners, domains): the first item of a source replaces the earlier source's. */
static void list_from_source(bool *from_source, uint32_t *count)
{
	if (!*from_source) {
		*count = 0;
		*from_source = true;
	}
}

/* OPT_LISTEN: one more listener. */
static int apply_listen(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	list_from_source(&cfg->listen_from_source, &cfg->listen_count);
	if (cfg->listen_count >= IO_LISTEN_MAX)
		return fail(err, errcap, "at most %d listeners", IO_LISTEN_MAX);
	struct io_listen_spec *l = &cfg->listen[cfg->listen_count];
	if (strlen(value) >= sizeof(l->text) || parse_addr(value, &l->addr, &l->addr_len) < 0)
		return fail(err, errcap, "'%s': bad address '%s' (want IP:PORT or [IPv6]:PORT)", d->name,
			    value);
	l->kind = (enum io_listen_kind)d->listen_kind;
	snprintf(l->text, sizeof(l->text), "%s", value);
	cfg->listen_count++;
	return 0;
}

/* OPT_DOMAIN: one more accepted domain. */
static int apply_domain(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	list_from_source(&cfg->domains_from_source, &cfg->accept_domain_count);
	size_t n = strlen(value);
	if (n == 0 || n > 255 || strpbrk(value, " \t\r\n@[]<>"))
		return fail(err, errcap, "'%s': bad domain '%s'", d->name, value);
	if (cfg->accept_domain_count >= IO_DOMAIN_MAX)
		return fail(err, errcap, "at most %d accepted domains", IO_DOMAIN_MAX);
	char *copy = strdup(value);
	if (!copy)
		return fail(err, errcap, "out of memory");
	cfg->accept_domains[cfg->accept_domain_count++] = copy;
	return 0;
}

int daemon_option_apply(struct io_config *cfg, const char *name, const char *value, char *err, size_t errcap)
{
	const struct opt_def *d = opt_find(name);
	const char *why = obsolete_why(name);
	if (why) {
		if (!value)
			return fail(err, errcap, "'%s' needs a value", name);
		fprintf(stderr, "dotspool: %s is obsolete and ignored: %s\n", name, why);
		return 0;
	}
	if (!d)
		return fail(err, errcap, "unknown option '%s'", name);
	if (d->kind != OPT_FLAG_NEG && !value)
		return fail(err, errcap, "'%s' needs a value", name);
	bool *flag = (bool *)((uint8_t *)cfg + d->off);
	switch (d->kind) {
	case OPT_U32:
	case OPT_U64:
		return apply_number(cfg, d, value, err, errcap);
	case OPT_BOOL:
		if (parse_bool(value, flag) < 0)
			return fail(err, errcap, "'%s': '%s' is not a boolean (true/false)", name, value);
		return 0;
	case OPT_FLAG_NEG:
		*flag = false;
		return 0;
	case OPT_STR:
		return apply_string(cfg, d, value, err, errcap);
	case OPT_LISTEN:
		return apply_listen(cfg, d, value, err, errcap);
	case OPT_DOMAIN:
		return apply_domain(cfg, d, value, err, errcap);
	}
	return fail(err, errcap, "internal: bad option kind");
}

int daemon_config_finish(struct io_config *cfg, char *err, size_t errcap)
{
	if (cfg->listen_count == 0) {
		bool saved = cfg->listen_from_source;
		int ret = daemon_option_apply(cfg, "listen", "127.0.0.1:2525", err, errcap);
		cfg->listen_from_source = saved;
		if (ret < 0)
			return ret;
	}
	if (cfg->accept_domain_count == 0)
		cfg->accept_domains[cfg->accept_domain_count++] = "localhost";
	if (!cfg->hostname[0] && gethostname(cfg->hostname, sizeof(cfg->hostname) - 1) < 0)
		snprintf(cfg->hostname, sizeof(cfg->hostname), "localhost");
	if (cfg->spool.segment_size < 4 * (uint64_t)cfg->spool.buffer_size)
		return fail(err, errcap, "segment-size must be at least 4 x spool-buffer-size");
	if (!cfg->tls_cert[0] != !cfg->tls_key[0])
		return fail(err, errcap, "tls-cert and tls-key go together: set both or neither");
	cfg->smtp.tls_available = cfg->tls_cert[0] != 0;
	cfg->smtp.hostname = cfg->hostname;
	cfg->smtp.accept_domains = cfg->accept_domains;
	cfg->smtp.accept_domain_count = cfg->accept_domain_count;
	cfg->spool.dir = cfg->spool_dir;
	return 0;
}

void daemon_options_usage(FILE *f)
{
	struct io_config d;
	daemon_config_defaults(&d);
	fprintf(f, "Usage: dotspool [--config FILE] [OPTIONS]\n"
		   "       dotspool --check-config FILE\n"
		   "SMTP/LMTP ingest server: answers the final dot with 250 once the message is durable.\n"
		   "Every option is also a key of the configuration file (name = value); the command line\n"
		   "overrides the file. IPv6 addresses as [::1]:2525.\n\n");
	for (size_t i = 0; i < DS_ARRAY_SIZE(opts); i++) {
		const struct opt_def *o = &opts[i];
		char def[64] = "";
		const uint8_t *base = (const uint8_t *)&d;
		if (o->kind == OPT_U32)
			snprintf(def, sizeof(def), " [default %u]", *(const uint32_t *)(base + o->off));
		else if (o->kind == OPT_U64)
			snprintf(def, sizeof(def), " [default %llu]",
				 (unsigned long long)*(const uint64_t *)(base + o->off));
		else if (o->kind == OPT_BOOL)
			snprintf(def, sizeof(def), " [default %s]",
				 *(const bool *)(base + o->off) ? "true" : "false");
		fprintf(f, "  --%-24s %s%s\n", o->name, o->help, def);
	}
	fprintf(f, "  --%-24s %s\n", "config FILE", "read settings from an INI file first");
	fprintf(f, "  --%-24s %s\n", "check-config FILE",
		"validate FILE, print the error (file:line: key), exit 0/1");
	fprintf(f, "  --%-24s %s\n", "help, --version", "");
	fprintf(f, "\nSizes accept K, M, G suffixes. Signals: SIGTERM/SIGINT stop gracefully.\n");
}
