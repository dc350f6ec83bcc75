/* SPDX-License-Identifier: MIT */
/*
 * dotspool: command line, recovery, workers, signals.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ds_assert.h"
#include "io.h"

#define DS_VERSION "0.1.0"

enum {
	OPT_LISTEN = 256,
	OPT_LMTP_LISTEN,
	OPT_PROXY_LISTEN,
	OPT_SPOOL,
	OPT_ACCEPT_DOMAIN,
	OPT_HOSTNAME,
	OPT_THREADS,
	OPT_MAX_MESSAGE_SIZE,
	OPT_MAX_RECIPIENTS,
	OPT_MAX_CONNECTIONS,
	OPT_MAX_CONNECTIONS_PER_IP,
	OPT_MAX_CMD_LINE,
	OPT_MAX_TEXT_LINE,
	OPT_MAX_ERRORS,
	OPT_TIMEOUT_GREETING,
	OPT_TIMEOUT_COMMAND,
	OPT_TIMEOUT_DATA,
	OPT_TIMEOUT_COMMIT,
	OPT_SHUTDOWN_TIMEOUT,
	OPT_SEGMENT_SIZE,
	OPT_SPOOL_BUFFER,
	OPT_FLUSHES_IN_FLIGHT,
	OPT_NO_PREWRITE,
	OPT_RECV_BUFFERS,
	OPT_HELP,
	OPT_VERSION,
};

static const struct option long_opts[] = {
	{"listen", required_argument, NULL, OPT_LISTEN},
	{"lmtp-listen", required_argument, NULL, OPT_LMTP_LISTEN},
	{"proxy-listen", required_argument, NULL, OPT_PROXY_LISTEN},
	{"spool", required_argument, NULL, OPT_SPOOL},
	{"accept-domain", required_argument, NULL, OPT_ACCEPT_DOMAIN},
	{"hostname", required_argument, NULL, OPT_HOSTNAME},
	{"threads", required_argument, NULL, OPT_THREADS},
	{"max-message-size", required_argument, NULL, OPT_MAX_MESSAGE_SIZE},
	{"max-recipients", required_argument, NULL, OPT_MAX_RECIPIENTS},
	{"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
	{"max-connections-per-ip", required_argument, NULL, OPT_MAX_CONNECTIONS_PER_IP},
	{"max-command-line", required_argument, NULL, OPT_MAX_CMD_LINE},
	{"max-text-line", required_argument, NULL, OPT_MAX_TEXT_LINE},
	{"max-errors", required_argument, NULL, OPT_MAX_ERRORS},
	{"timeout-greeting-s", required_argument, NULL, OPT_TIMEOUT_GREETING},
	{"timeout-command-s", required_argument, NULL, OPT_TIMEOUT_COMMAND},
	{"timeout-data-s", required_argument, NULL, OPT_TIMEOUT_DATA},
	{"timeout-commit-s", required_argument, NULL, OPT_TIMEOUT_COMMIT},
	{"shutdown-timeout-s", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
	{"segment-size", required_argument, NULL, OPT_SEGMENT_SIZE},
	{"spool-buffer-size", required_argument, NULL, OPT_SPOOL_BUFFER},
	{"flushes-in-flight", required_argument, NULL, OPT_FLUSHES_IN_FLIGHT},
	{"no-prewrite", no_argument, NULL, OPT_NO_PREWRITE},
	{"recv-buffers", required_argument, NULL, OPT_RECV_BUFFERS},
	{"help", no_argument, NULL, OPT_HELP},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

static void usage(FILE *f, const struct io_config *d)
{
	fprintf(f,
		"Usage: dotspool [OPTIONS]\n"
		"SMTP/LMTP ingest server: answers the final dot with 250 once the message is durable.\n\n"
		"Listeners (repeatable; IPv6 as [::1]:2525):\n"
		"  --listen ADDR:PORT            SMTP listener (default 127.0.0.1:2525 if no listener is given)\n"
		"  --lmtp-listen ADDR:PORT       LMTP listener (RFC 2033)\n"
		"  --proxy-listen ADDR:PORT      SMTP listener behind a load balancer: PROXY v1/v2 header required\n"
		"Spool:\n"
		"  --spool DIR                   spool directory (default ./var/spool)\n"
		"  --segment-size BYTES          segment file size (default %llu)\n"
		"  --spool-buffer-size BYTES     staging memory per worker lane (default %u)\n"
		"  --flushes-in-flight N         flushes in flight per lane (default %u)\n"
		"  --no-prewrite                 fallocate segments only, no zero-fill (for measurements)\n"
		"Policy and limits:\n"
		"  --accept-domain D             accept mail for D; .D accepts every subdomain (repeatable;\n"
		"                                default localhost); all else gets 550 5.7.1\n"
		"  --hostname NAME               our name in the banner and Received: (default: gethostname)\n"
		"  --max-message-size BYTES      (default %llu)\n"
		"  --max-recipients N            per message (default %u)\n"
		"  --max-command-line BYTES      command line incl. CRLF (default %u)\n"
		"  --max-text-line BYTES         text line in data incl. CRLF (default %u)\n"
		"  --max-errors N                consecutive errors before 421 (default %u)\n"
		"  --max-connections N           whole server (default %u)\n"
		"  --max-connections-per-ip N    per client address (default %u)\n"
		"Timeouts (seconds):\n"
		"  --timeout-greeting-s S        wait for a PROXY header (default %u)\n"
		"  --timeout-command-s S         per command (default %u, RFC 5321 4.5.3.2)\n"
		"  --timeout-data-s S            per data block (default %u)\n"
		"  --timeout-commit-s S          spool wait shown as the commit deadline (default %u)\n"
		"  --shutdown-timeout-s S        SIGTERM/SIGINT: time for transactions in flight (default %u)\n"
		"Engine:\n"
		"  --threads N                   worker threads, one per core (default: number of cores)\n"
		"  --recv-buffers N              provided receive buffers per worker, power of 2 (default %u)\n"
		"  --help, --version\n",
		(unsigned long long)d->spool.segment_size, d->spool.buffer_size, d->spool.flushes_in_flight_max,
		(unsigned long long)d->smtp.max_message_size, d->smtp.max_recipients, d->smtp.max_cmd_line,
		d->smtp.max_text_line, d->smtp.max_errors, d->max_connections, d->max_connections_per_ip,
		d->timeout_greeting_s, d->timeout_command_s, d->timeout_data_s, d->timeout_commit_s,
		d->shutdown_timeout_s, d->recv_buffers);
}

int io_parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
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

static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *e;
	errno = 0;
	unsigned long long v = strtoull(s, &e, 10);
	/* Accept K/M/G suffixes for sizes. */
	if (*e == 'K' || *e == 'k')
		v <<= 10, e++;
	else if (*e == 'M' || *e == 'm')
		v <<= 20, e++;
	else if (*e == 'G' || *e == 'g')
		v <<= 30, e++;
	if (errno || *s == 0 || *s == '-' || *e || v < min || v > max) {
		fprintf(stderr, "dotspool: --%s: '%s' is not a number in [%llu, %llu]\n", opt, s,
			(unsigned long long)min, (unsigned long long)max);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int add_listen(struct io_config *cfg, enum io_listen_kind kind, const char *text)
{
	if (cfg->listen_count >= IO_LISTEN_MAX) {
		fprintf(stderr, "dotspool: at most %d listeners\n", IO_LISTEN_MAX);
		return -E2BIG;
	}
	struct io_listen_spec *l = &cfg->listen[cfg->listen_count];
	if (io_parse_addr(text, &l->addr, &l->addr_len) < 0) {
		fprintf(stderr, "dotspool: bad listen address '%s' (want IP:PORT or [IPv6]:PORT)\n", text);
		return -EINVAL;
	}
	l->kind = kind;
	snprintf(l->text, sizeof(l->text), "%s", text);
	cfg->listen_count++;
	return 0;
}

static void config_defaults(struct io_config *cfg)
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
	cfg->timeout_commit_s = 600;
	cfg->shutdown_timeout_s = 10;
	cfg->recv_buffers = 1024;
	cfg->recv_buffer_size = 4096;
	cfg->pending_input_max = 64 * 1024;
}

static int parse_args(struct io_config *cfg, int argc, char **argv)
{
	uint64_t v;
	int c;
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		const char *name = NULL;
		for (const struct option *o = long_opts; o->name; o++)
			if (o->val == c)
				name = o->name;
		switch (c) {
		case OPT_LISTEN:
			if (add_listen(cfg, IO_LISTEN_SMTP, optarg) < 0)
				return -EINVAL;
			break;
		case OPT_LMTP_LISTEN:
			if (add_listen(cfg, IO_LISTEN_LMTP, optarg) < 0)
				return -EINVAL;
			break;
		case OPT_PROXY_LISTEN:
			if (add_listen(cfg, IO_LISTEN_SMTP_PROXY, optarg) < 0)
				return -EINVAL;
			break;
		case OPT_SPOOL:
			if (strlen(optarg) >= sizeof(cfg->spool_dir) - 64) {
				fprintf(stderr, "dotspool: --spool: path too long\n");
				return -EINVAL;
			}
			snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s", optarg);
			break;
		case OPT_ACCEPT_DOMAIN:
			if (cfg->accept_domain_count >= IO_DOMAIN_MAX || !*optarg || strlen(optarg) > 255) {
				fprintf(stderr, "dotspool: --accept-domain: bad or too many (max %d)\n", IO_DOMAIN_MAX);
				return -EINVAL;
			}
			cfg->accept_domains[cfg->accept_domain_count++] = optarg;
			break;
		case OPT_HOSTNAME:
			if (!*optarg || strlen(optarg) >= sizeof(cfg->hostname) || strpbrk(optarg, " \r\n\t")) {
				fprintf(stderr, "dotspool: --hostname: bad name\n");
				return -EINVAL;
			}
			snprintf(cfg->hostname, sizeof(cfg->hostname), "%s", optarg);
			break;
		case OPT_THREADS:
			if (parse_u64(name, optarg, 1, IO_THREADS_MAX, &v) < 0)
				return -EINVAL;
			cfg->threads = (uint32_t)v;
			break;
		case OPT_MAX_MESSAGE_SIZE:
			if (parse_u64(name, optarg, 1024, 1ull << 40, &v) < 0)
				return -EINVAL;
			cfg->smtp.max_message_size = v;
			break;
		case OPT_MAX_RECIPIENTS:
			if (parse_u64(name, optarg, 1, 100000, &v) < 0)
				return -EINVAL;
			cfg->smtp.max_recipients = (uint32_t)v;
			break;
		case OPT_MAX_CONNECTIONS:
			if (parse_u64(name, optarg, 1, 1000000, &v) < 0)
				return -EINVAL;
			cfg->max_connections = (uint32_t)v;
			break;
		case OPT_MAX_CONNECTIONS_PER_IP:
			if (parse_u64(name, optarg, 1, 1000000, &v) < 0)
				return -EINVAL;
			cfg->max_connections_per_ip = (uint32_t)v;
			break;
		case OPT_MAX_CMD_LINE:
			if (parse_u64(name, optarg, 512, 65536, &v) < 0)
				return -EINVAL;
			cfg->smtp.max_cmd_line = (uint32_t)v;
			break;
		case OPT_MAX_TEXT_LINE:
			if (parse_u64(name, optarg, 1000, 1 << 20, &v) < 0)
				return -EINVAL;
			cfg->smtp.max_text_line = (uint32_t)v;
			break;
		case OPT_MAX_ERRORS:
			if (parse_u64(name, optarg, 1, 1000, &v) < 0)
				return -EINVAL;
			cfg->smtp.max_errors = (uint32_t)v;
			break;
		case OPT_TIMEOUT_GREETING:
		case OPT_TIMEOUT_COMMAND:
		case OPT_TIMEOUT_DATA:
		case OPT_TIMEOUT_COMMIT:
		case OPT_SHUTDOWN_TIMEOUT:
			if (parse_u64(name, optarg, c == OPT_SHUTDOWN_TIMEOUT ? 0 : 1, 86400, &v) < 0)
				return -EINVAL;
			if (c == OPT_TIMEOUT_GREETING)
				cfg->timeout_greeting_s = (uint32_t)v;
			else if (c == OPT_TIMEOUT_COMMAND)
				cfg->timeout_command_s = (uint32_t)v;
			else if (c == OPT_TIMEOUT_DATA)
				cfg->timeout_data_s = (uint32_t)v;
			else if (c == OPT_TIMEOUT_COMMIT)
				cfg->timeout_commit_s = (uint32_t)v;
			else
				cfg->shutdown_timeout_s = (uint32_t)v;
			break;
		case OPT_SEGMENT_SIZE:
			if (parse_u64(name, optarg, 1 << 20, 1ull << 40, &v) < 0)
				return -EINVAL;
			cfg->spool.segment_size = v;
			break;
		case OPT_SPOOL_BUFFER:
			if (parse_u64(name, optarg, 64 << 10, 1u << 30, &v) < 0)
				return -EINVAL;
			cfg->spool.buffer_size = (uint32_t)v;
			break;
		case OPT_FLUSHES_IN_FLIGHT:
			if (parse_u64(name, optarg, 1, 16, &v) < 0)
				return -EINVAL;
			cfg->spool.flushes_in_flight_max = (uint32_t)v;
			break;
		case OPT_NO_PREWRITE:
			cfg->spool.prewrite = false;
			break;
		case OPT_RECV_BUFFERS:
			if (parse_u64(name, optarg, 16, 32768, &v) < 0 || (v & (v - 1))) {
				fprintf(stderr, "dotspool: --recv-buffers: a power of 2 in [16, 32768]\n");
				return -EINVAL;
			}
			cfg->recv_buffers = (uint32_t)v;
			break;
		case OPT_HELP:
		case 'h': {
			struct io_config d;
			config_defaults(&d);
			usage(stdout, &d);
			exit(0);
		}
		case OPT_VERSION:
			printf("dotspool %s\n", DS_VERSION);
			exit(0);
		default:
			fprintf(stderr, "dotspool: see --help\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dotspool: unexpected argument '%s' (see --help)\n", argv[optind]);
		return -EINVAL;
	}
	if (cfg->listen_count == 0 && add_listen(cfg, IO_LISTEN_SMTP, "127.0.0.1:2525") < 0)
		return -EINVAL;
	if (cfg->accept_domain_count == 0)
		cfg->accept_domains[cfg->accept_domain_count++] = "localhost";
	if (!cfg->hostname[0] && gethostname(cfg->hostname, sizeof(cfg->hostname) - 1) < 0)
		snprintf(cfg->hostname, sizeof(cfg->hostname), "localhost");
	cfg->smtp.hostname = cfg->hostname;
	cfg->smtp.accept_domains = cfg->accept_domains;
	cfg->smtp.accept_domain_count = cfg->accept_domain_count;
	cfg->spool.dir = cfg->spool_dir;
	return 0;
}

static int mkdir_p(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void raise_nofile(uint32_t want)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t need = (rlim_t)want + 256;
	if (rl.rlim_cur >= need)
		return;
	rl.rlim_cur = DS_MIN(need, rl.rlim_max);
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < need)
		fprintf(stderr, "dotspool: warning: RLIMIT_NOFILE %llu is below --max-connections + 256\n",
			(unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
	static struct io_config cfg;
	config_defaults(&cfg);
	if (parse_args(&cfg, argc, argv) < 0)
		return 2;

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	/* Workers inherit the mask: only this thread takes the signals. */
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile(cfg.max_connections);

	int ret = mkdir_p(cfg.spool_dir);
	if (ret < 0) {
		fprintf(stderr, "dotspool: spool %s: %s\n", cfg.spool_dir, strerror(-ret));
		return 1;
	}
	struct spool_recovery_report rep;
	memset(&rep, 0, sizeof(rep));
	ret = spool_recover(&cfg.spool, &rep);
	if (ret < 0) {
		fprintf(stderr, "dotspool: spool recovery failed: %s\n", strerror(-ret));
		return 1;
	}
	fprintf(stderr,
		"dotspool: recovered %llu messages (%llu bytes) in %llu segments in %.3f s; "
		"torn tails %llu, quarantined %llu\n",
		(unsigned long long)rep.messages, (unsigned long long)rep.bytes, (unsigned long long)rep.segments,
		rep.elapsed_us / 1e6, (unsigned long long)rep.torn_tails, (unsigned long long)rep.quarantined);

	static struct io_shared sh;
	ret = io_iplimit_create(&sh.iplimit, cfg.max_connections);
	if (ret < 0)
		return 1;
	struct io_worker *workers[IO_THREADS_MAX] = {0};
	uint32_t started = 0;
	for (uint32_t i = 0; i < cfg.threads; i++) {
		ret = io_worker_create(&workers[i], &cfg, &sh, i);
		if (ret < 0)
			break;
		ret = io_worker_start(workers[i]);
		if (ret < 0)
			break;
		started++;
	}
	if (ret < 0) {
		fprintf(stderr, "dotspool: start-up failed: %s\n", strerror(-ret));
		atomic_store(&sh.stopping, true);
		for (uint32_t i = 0; i < started; i++)
			io_worker_stop(workers[i]);
		for (uint32_t i = 0; i < started; i++)
			io_worker_join(workers[i]);
		return 1;
	}
	for (uint32_t i = 0; i < cfg.listen_count; i++)
		fprintf(stderr, "dotspool: listening on %s (%s)\n", cfg.listen[i].text,
			cfg.listen[i].kind == IO_LISTEN_LMTP	     ? "lmtp"
			: cfg.listen[i].kind == IO_LISTEN_SMTP_PROXY ? "smtp+proxy"
								     : "smtp");
	fprintf(stderr, "dotspool: %u worker(s), spool %s, ready\n", cfg.threads, cfg.spool_dir);

	for (;;) {
		int sig = 0;
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP)
			continue; /* reload: nothing to reload yet */
		fprintf(stderr, "dotspool: %s: stopping (up to %u s for transactions in flight)\n",
			sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg.shutdown_timeout_s);
		break;
	}
	atomic_store(&sh.stopping, true);
	for (uint32_t i = 0; i < started; i++)
		io_worker_stop(workers[i]);
	int rc = 0;
	for (uint32_t i = 0; i < started; i++) {
		if (io_worker_join(workers[i]) != 0)
			rc = 1;
		io_worker_destroy(workers[i]);
	}
	io_iplimit_destroy(sh.iplimit);
	fprintf(stderr, "dotspool: stopped\n");
	return rc;
}
