/* SPDX-License-Identifier: MIT */
/*
 * dotspool-bench: SMTP/LMTP load generator measuring final-dot-to-reply
 * latency without coordinated omission. See bench/README.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "ds_assert.h"
#include "sweep.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dotspool-bench --server HOST:PORT [options]\n"
		"       dotspool-bench sweep --server HOST:PORT --slo-p99-ms MS --report DIR [options]\n"
		"\n"
		"Drives any SMTP or LMTP server over loopback or network with one io_uring and\n"
		"reports latency percentiles per protocol step (log-linear histograms, <1%% error).\n"
		"\n"
		"Load:\n"
		"  --server HOST:PORT        IPv4 literal (1.2.3.4:25) or IPv6 literal ([::1]:25); required\n"
		"  --connections N           concurrent connections (default 32, max %d)\n"
		"  --messages N              number of messages to send (default 1000 unless --duration)\n"
		"  --duration SEC            run for SEC seconds instead of a message count\n"
		"  --rate R                  open loop: R messages/s on a fixed schedule; latency of the\n"
		"                            'message' phase counts from the scheduled time, so waiting for\n"
		"                            a free connection is included (no coordinated omission).\n"
		"                            Without --rate: closed loop, each connection sends back to "
		"back\n"
		"  --new-connection-per-message  connect, EHLO, one message, QUIT, for every message\n"
		"  --threads N               N threads, each with its own io_uring and a share of the\n"
		"                            connections, messages and rate (default 1, max %d)\n"
		"  --timeout-ms MS           give up on a connection waiting longer than MS for a reply\n"
		"                            (default 30000)\n"
		"Protocol:\n"
		"  --pipelining              send MAIL, RCPT..., DATA in one write if the server\n"
		"                            advertises PIPELINING (RFC 2920)\n"
		"  --lmtp                    speak LMTP (RFC 2033): LHLO, one final reply per recipient\n"
		"  --starttls                upgrade every connection with STARTTLS (RFC 3207) before\n"
		"                            the first message (TLS 1.2, mbedTLS). The server's certificate\n"
		"                            is NOT verified: a benchmark, not a secure client\n"
		"  --helo NAME               EHLO/LHLO argument (default dotspool-bench)\n"
		"Messages:\n"
		"  --size BYTES              message size, headers included (default 4096, max %u);\n"
		"                            below the generated headers (about 220 bytes with the\n"
		"                            default addresses) the headers alone are sent; bytes_ok\n"
		"                            counts the bytes sent (before dot-stuffing)\n"
		"  --size-file FILE          one size per line; each message samples one\n"
		"  --rcpts N                 recipients per message (default 1, max %d)\n"
		"  --from ADDR               envelope sender (default bench@localhost)\n"
		"  --to PATTERN              recipient pattern, %%d becomes a number 0..999\n"
		"                            (default user%%d@localhost)\n"
		"Output:\n"
		"  --json                    print one JSON object instead of the text table\n"
		"  --ack-log FILE            write the Message-ID of every message that got a 2xx\n"
		"                            final reply (LMTP: at least one recipient), one per line\n"
		"  --quiet                   no progress line and no text report (errors still shown)\n"
		"  --help                    this text\n"
		"Progress: one line on stderr each second when stderr is a terminal.\n"
		"\n"
		"sweep options (steps the open-loop rate up until the target breaks):\n"
		"  --slo-p99-ms MS           latency target for p99 of the 'message' phase (required)\n"
		"  --start-rate R            first rate (default 100 msg/s)\n"
		"  --step-factor F           multiply the rate by F each step (default 1.5)\n"
		"  --step-duration SEC       length of each step (default 5)\n"
		"  --max-rate M              stop after this rate (default 1000000)\n"
		"  --error-budget FRAC       highest tolerated failed fraction (default 0.001)\n"
		"  --report DIR              write DIR/sweep.md and DIR/sweep.svg (required)\n"
		"\n"
		"Exit status: 0 ok (sweep: a rate met the target), 1 some messages failed (sweep: none met\n"
		"the target), 2 usage or setup error.\n",
		BENCH_CONN_MAX, BENCH_THREADS_MAX, BENCH_SIZE_MAX, BENCH_RCPT_MAX);
}

static int parse_server(const char *s, struct bench_opts *o)
{
	char host[128];
	const char *colon = strrchr(s, ':');
	if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end != 0 || port < 1 || port > 65535)
		return -EINVAL;
	char *h = host;
	size_t hl = strlen(h);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h[hl - 1] = 0;
		h++;
	}
	memset(&o->addr, 0, sizeof(o->addr));
	struct sockaddr_in *a4 = (struct sockaddr_in *)&o->addr;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&o->addr;
	if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		o->addr_len = sizeof(*a4);
	} else if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		o->addr_len = sizeof(*a6);
	} else {
		return -EINVAL;
	}
	snprintf(o->server, sizeof(o->server), "%s", s);
	return 0;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || *end != 0 || s[0] == '-' || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_double(const char *s, double min, double max, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno != 0 || *end != 0 || !(v >= min) || !(v <= max))
		return -EINVAL;
	*out = v;
	return 0;
}

static int load_sizes(const char *path, size_t **sizes, uint32_t *count)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -errno;
	size_t *v = calloc(BENCH_SIZES_MAX, sizeof(*v));
	if (v == NULL) {
		fclose(f);
		return -ENOMEM;
	}
	char line[64];
	uint32_t n = 0;
	int rc = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strlen(line);
		if (len > 0 && line[len - 1] != '\n' && !feof(f)) {
			/* Longer than the buffer: a comment (skip the rest), else no valid size. */
			int ch;
			while ((ch = fgetc(f)) != EOF && ch != '\n')
				;
			if (line[0] == '#')
				continue;
			rc = -EINVAL;
			break;
		}
		line[strcspn(line, "\r\n")] = 0;
		if (line[0] == 0 || line[0] == '#')
			continue;
		uint64_t x;
		if (n >= BENCH_SIZES_MAX || parse_u64(line, 1, BENCH_SIZE_MAX, &x) < 0) {
			rc = -EINVAL;
			break;
		}
		v[n++] = (size_t)x;
	}
	fclose(f);
	if (rc == 0 && n == 0)
		rc = -EINVAL;
	if (rc < 0) {
		free(v);
		return rc;
	}
	*sizes = v;
	*count = n;
	return 0;
}

static bool valid_addr(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= BENCH_ADDR_MAX - 8)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] == '<' || s[i] == '>' || (unsigned char)s[i] >= 127)
			return false;
	return true;
}

static bool valid_pattern(const char *s)
{
	/* At most one "%d", no other conversion. */
	int convs = 0;
	for (const char *p = s; *p; p++) {
		if (*p != '%')
			continue;
		if (p[1] != 'd')
			return false;
		convs++;
		p++;
	}
	return convs <= 1 && valid_addr(s);
}

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

static uint64_t total_errors(const struct bench_result *r)
{
	uint64_t n = 0;
	for (int i = 0; i < 1000; i++)
		n += r->code_counts[i];
	for (int i = 0; i < BENCH_ERR_COUNT; i++)
		n += r->err_counts[i];
	return n;
}

static void print_text(const struct bench_opts *o, const struct bench_result *r)
{
	double mps = r->elapsed_s > 0 ? (double)r->messages_ok / r->elapsed_s : 0;
	double mbs = r->elapsed_s > 0 ? (double)r->bytes_ok / 1e6 / r->elapsed_s : 0;
	printf("dotspool-bench: %s %s%s %s connections=%u rcpts=%u pipelining=%s%s\n", o->server,
	       o->lmtp ? "lmtp" : "smtp", o->starttls ? "+starttls" : "",
	       o->rate_per_s > 0 ? "open-loop" : "closed-loop", o->connections, o->rcpts,
	       o->pipelining ? (r->server_pipelining ? "yes" : "not-advertised") : "no",
	       o->new_conn_per_msg ? " new-connection-per-message" : "");
	if (o->rate_per_s > 0)
		printf("target rate: %.1f msg/s\n", o->rate_per_s);
	printf("messages: ok %llu failed %llu  elapsed %.3f s  %.1f msg/s  %.3f MB/s\n",
	       (unsigned long long)r->messages_ok, (unsigned long long)r->messages_failed, r->elapsed_s, mps,
	       mbs);
	printf("%-10s %10s %10s %10s %10s %10s %10s %10s   (microseconds)\n", "phase", "count", "p50", "p90",
	       "p99", "p99.9", "max", "mean");
	for (int i = 0; i < BENCH_PH_COUNT; i++) {
		const struct bench_hist *h = &r->hist[i];
		printf("%-10s %10llu %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f\n", bench_phase_names[i],
		       (unsigned long long)bench_hist_count(h), us(bench_hist_percentile(h, 50)),
		       us(bench_hist_percentile(h, 90)), us(bench_hist_percentile(h, 99)),
		       us(bench_hist_percentile(h, 99.9)), us(bench_hist_max(h)),
		       bench_hist_mean(h) / 1000.0);
	}
	if (total_errors(r) == 0) {
		printf("errors: none\n");
		return;
	}
	printf("errors:");
	for (int i = 0; i < 1000; i++)
		if (r->code_counts[i])
			printf(" %03d=%llu", i, (unsigned long long)r->code_counts[i]);
	for (int i = 0; i < BENCH_ERR_COUNT; i++)
		if (r->err_counts[i])
			printf(" %s=%llu", bench_err_names[i], (unsigned long long)r->err_counts[i]);
	printf("\n");
}

static void print_json(const struct bench_opts *o, const struct bench_result *r)
{
	double mps = r->elapsed_s > 0 ? (double)r->messages_ok / r->elapsed_s : 0;
	double mbs = r->elapsed_s > 0 ? (double)r->bytes_ok / 1e6 / r->elapsed_s : 0;
	printf("{\"server\":\"%s\",\"protocol\":\"%s\",\"mode\":\"%s\",\"connections\":%u,\"rcpts\":%u,"
	       "\"threads\":%u,\"rate_target\":%.3f,\"starttls\":%s,\"pipelining\":%s,\"server_pipelining\":%"
	       "s,"
	       "\"new_connection_per_message\":%s,",
	       o->server, o->lmtp ? "lmtp" : "smtp", o->rate_per_s > 0 ? "open" : "closed", o->connections,
	       o->rcpts, o->thread_count ? o->thread_count : 1, o->rate_per_s, o->starttls ? "true" : "false",
	       o->pipelining ? "true" : "false", r->server_pipelining ? "true" : "false",
	       o->new_conn_per_msg ? "true" : "false");
	printf("\"messages_ok\":%llu,\"messages_failed\":%llu,\"bytes_ok\":%llu,\"rcpts_ok\":%llu,"
	       "\"rcpts_failed\":%llu,\"elapsed_s\":%.6f,\"messages_per_s\":%.3f,\"mb_per_s\":%.6f,",
	       (unsigned long long)r->messages_ok, (unsigned long long)r->messages_failed,
	       (unsigned long long)r->bytes_ok, (unsigned long long)r->rcpts_ok,
	       (unsigned long long)r->rcpts_failed, r->elapsed_s, mps, mbs);
	printf("\"errors_by_code\":{");
	const char *sep = "";
	for (int i = 0; i < 1000; i++) {
		if (r->code_counts[i]) {
			printf("%s\"%03d\":%llu", sep, i, (unsigned long long)r->code_counts[i]);
			sep = ",";
		}
	}
	for (int i = 0; i < BENCH_ERR_COUNT; i++) {
		if (r->err_counts[i]) {
			printf("%s\"%s\":%llu", sep, bench_err_names[i],
			       (unsigned long long)r->err_counts[i]);
			sep = ",";
		}
	}
	printf("},\"latency_us\":{");
	for (int i = 0; i < BENCH_PH_COUNT; i++) {
		const struct bench_hist *h = &r->hist[i];
		printf("%s\"%s\":{\"count\":%llu,\"min\":%.1f,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,"
		       "\"p99\":%.1f,"
		       "\"p999\":%.1f,\"max\":%.1f}",
		       i ? "," : "", bench_phase_names[i], (unsigned long long)bench_hist_count(h),
		       us(bench_hist_min(h)), bench_hist_mean(h) / 1000.0, us(bench_hist_percentile(h, 50)),
		       us(bench_hist_percentile(h, 90)), us(bench_hist_percentile(h, 99)),
		       us(bench_hist_percentile(h, 99.9)), us(bench_hist_max(h)));
	}
	printf("}}\n");
}

enum {
	OPT_SERVER = 256,
	OPT_CONNECTIONS,
	OPT_MESSAGES,
	OPT_DURATION,
	OPT_RATE,
	OPT_PIPELINING,
	OPT_SIZE,
	OPT_SIZE_FILE,
	OPT_RCPTS,
	OPT_FROM,
	OPT_TO,
	OPT_LMTP,
	OPT_STARTTLS,
	OPT_NEWCONN,
	OPT_JSON,
	OPT_ACKLOG,
	OPT_QUIET,
	OPT_HELP,
	OPT_TIMEOUT,
	OPT_HELO,
	OPT_SLO,
	OPT_START_RATE,
	OPT_STEP_FACTOR,
	OPT_STEP_DURATION,
	OPT_MAX_RATE,
	OPT_ERROR_BUDGET,
	OPT_REPORT,
	OPT_THREADS,
};

static const struct option long_opts[] = {
	{"server", required_argument, NULL, OPT_SERVER},
	{"connections", required_argument, NULL, OPT_CONNECTIONS},
	{"messages", required_argument, NULL, OPT_MESSAGES},
	{"duration", required_argument, NULL, OPT_DURATION},
	{"rate", required_argument, NULL, OPT_RATE},
	{"pipelining", no_argument, NULL, OPT_PIPELINING},
	{"size", required_argument, NULL, OPT_SIZE},
	{"size-file", required_argument, NULL, OPT_SIZE_FILE},
	{"rcpts", required_argument, NULL, OPT_RCPTS},
	{"from", required_argument, NULL, OPT_FROM},
	{"to", required_argument, NULL, OPT_TO},
	{"lmtp", no_argument, NULL, OPT_LMTP},
	{"starttls", no_argument, NULL, OPT_STARTTLS},
	{"new-connection-per-message", no_argument, NULL, OPT_NEWCONN},
	{"json", no_argument, NULL, OPT_JSON},
	{"ack-log", required_argument, NULL, OPT_ACKLOG},
	{"quiet", no_argument, NULL, OPT_QUIET},
	{"help", no_argument, NULL, OPT_HELP},
	{"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
	{"helo", required_argument, NULL, OPT_HELO},
	{"slo-p99-ms", required_argument, NULL, OPT_SLO},
	{"start-rate", required_argument, NULL, OPT_START_RATE},
	{"step-factor", required_argument, NULL, OPT_STEP_FACTOR},
	{"step-duration", required_argument, NULL, OPT_STEP_DURATION},
	{"max-rate", required_argument, NULL, OPT_MAX_RATE},
	{"error-budget", required_argument, NULL, OPT_ERROR_BUDGET},
	{"report", required_argument, NULL, OPT_REPORT},
	{"threads", required_argument, NULL, OPT_THREADS},
	{NULL, 0, NULL, 0},
};

/* --size-file contents; freed at exit so early usage errors do not leak. */
static size_t *file_sizes;

static void free_sizes(void)
{
	free(file_sizes);
	file_sizes = NULL;
}

static int bad(const char *what)
{
	fprintf(stderr, "dotspool-bench: invalid %s (see --help)\n", what);
	return 2;
}

int main(int argc, char **argv)
{
	atexit(free_sizes);
	bool sweep = argc > 1 && strcmp(argv[1], "sweep") == 0;
	if (sweep) {
		argv++;
		argc--;
	}
	struct bench_opts o = {0};
	struct sweep_opts sw = {.start_rate = 100,
				.step_factor = 1.5,
				.step_duration_s = 5,
				.max_rate = 1e6,
				.error_budget = 0.001};
	o.connections = 32;
	o.rcpts = 1;
	o.from = "bench@localhost";
	o.to_pattern = "user%d@localhost";
	o.helo = "dotspool-bench";
	o.timeout_ms = 30000;
	static size_t default_size = 4096;
	size_t one_size = default_size;
	bool json = false, quiet = false, have_server = false, have_messages = false;
	const char *ack_path = NULL;
	uint64_t u;
	double d;
	uint32_t threads = 1;
	int c;
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_SERVER:
			if (parse_server(optarg, &o) < 0)
				return bad("--server (want IPv4:PORT or [IPv6]:PORT)");
			have_server = true;
			break;
		case OPT_CONNECTIONS:
			if (parse_u64(optarg, 1, BENCH_CONN_MAX, &u) < 0)
				return bad("--connections");
			o.connections = (uint32_t)u;
			break;
		case OPT_MESSAGES:
			if (parse_u64(optarg, 1, UINT64_MAX / 2, &u) < 0)
				return bad("--messages");
			o.messages = u;
			have_messages = true;
			break;
		case OPT_DURATION:
			if (parse_double(optarg, 0.001, 86400 * 365, &d) < 0)
				return bad("--duration");
			o.duration_s = d;
			break;
		case OPT_RATE:
			if (parse_double(optarg, 0.001, 1e8, &d) < 0)
				return bad("--rate");
			o.rate_per_s = d;
			break;
		case OPT_PIPELINING:
			o.pipelining = true;
			break;
		case OPT_SIZE:
			if (parse_u64(optarg, 1, BENCH_SIZE_MAX, &u) < 0)
				return bad("--size");
			one_size = (size_t)u;
			break;
		case OPT_SIZE_FILE: {
			int rc = load_sizes(optarg, &file_sizes, &o.size_count);
			if (rc < 0) {
				fprintf(stderr, "dotspool-bench: --size-file %s: %s\n", optarg,
					rc == -EINVAL ? "want one size (1..67108864) per line"
						      : strerror(-rc));
				return 2;
			}
			break;
		}
		case OPT_RCPTS:
			if (parse_u64(optarg, 1, BENCH_RCPT_MAX, &u) < 0)
				return bad("--rcpts");
			o.rcpts = (uint32_t)u;
			break;
		case OPT_FROM:
			if (!valid_addr(optarg))
				return bad("--from");
			o.from = optarg;
			break;
		case OPT_TO:
			if (!valid_pattern(optarg))
				return bad("--to (one %d at most, no spaces or <>)");
			o.to_pattern = optarg;
			break;
		case OPT_LMTP:
			o.lmtp = true;
			break;
		case OPT_STARTTLS:
			o.starttls = true;
			break;
		case OPT_NEWCONN:
			o.new_conn_per_msg = true;
			break;
		case OPT_JSON:
			json = true;
			break;
		case OPT_ACKLOG:
			ack_path = optarg;
			break;
		case OPT_QUIET:
			quiet = true;
			break;
		case OPT_HELP:
			usage(stdout);
			return 0;
		case OPT_TIMEOUT:
			if (parse_u64(optarg, 1, 3600000, &u) < 0)
				return bad("--timeout-ms");
			o.timeout_ms = (uint32_t)u;
			break;
		case OPT_HELO:
			if (!valid_addr(optarg))
				return bad("--helo");
			o.helo = optarg;
			break;
		case OPT_SLO:
			if (parse_double(optarg, 0.001, 1e7, &sw.slo_p99_ms) < 0)
				return bad("--slo-p99-ms");
			break;
		case OPT_START_RATE:
			if (parse_double(optarg, 0.001, 1e8, &sw.start_rate) < 0)
				return bad("--start-rate");
			break;
		case OPT_STEP_FACTOR:
			if (parse_double(optarg, 1.01, 100, &sw.step_factor) < 0)
				return bad("--step-factor");
			break;
		case OPT_STEP_DURATION:
			if (parse_double(optarg, 0.01, 86400, &sw.step_duration_s) < 0)
				return bad("--step-duration");
			break;
		case OPT_MAX_RATE:
			if (parse_double(optarg, 0.001, 1e8, &sw.max_rate) < 0)
				return bad("--max-rate");
			break;
		case OPT_ERROR_BUDGET:
			if (parse_double(optarg, 0, 1, &sw.error_budget) < 0)
				return bad("--error-budget");
			break;
		case OPT_REPORT:
			sw.report_dir = optarg;
			break;
		case OPT_THREADS:
			if (parse_u64(optarg, 1, BENCH_THREADS_MAX, &u) < 0)
				return bad("--threads");
			threads = (uint32_t)u;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc)
		return bad("argument");
	if (!have_server)
		return bad("or missing --server");
	if (have_messages && o.duration_s > 0)
		return bad("combination: --messages and --duration");
	if (!have_messages && o.duration_s == 0 && !sweep)
		o.messages = 1000;
	if (file_sizes != NULL) {
		o.sizes = file_sizes;
	} else {
		o.sizes = &one_size;
		o.size_count = 1;
	}
	o.progress = !quiet && !json && isatty(STDERR_FILENO);
	o.thread_count = threads;
	if (sweep && (sw.slo_p99_ms <= 0 || sw.report_dir == NULL))
		return bad("sweep: --slo-p99-ms and --report are required");
	if (threads > o.connections)
		return bad("--threads (more threads than connections)");
	if (ack_path != NULL) {
		o.ack_log = fopen(ack_path, "w");
		if (o.ack_log == NULL) {
			fprintf(stderr, "dotspool-bench: --ack-log %s: %s\n", ack_path, strerror(errno));
			return 2;
		}
	}
	if (sweep) {
		sw.threads = threads;
		int st = bench_sweep(&o, &sw, json);
		if (o.ack_log != NULL && fclose(o.ack_log) != 0) {
			fprintf(stderr, "dotspool-bench: --ack-log: %s\n", strerror(errno));
			return 2;
		}
		return st;
	}
	struct bench_result r;
	if (bench_result_init(&r) < 0)
		return 2;
	int rc = bench_run_threads(&o, threads, &r);
	if (rc < 0) {
		fprintf(stderr, "dotspool-bench: %s\n",
			rc == -E2BIG ? "message buffers exceed 2 GiB: fewer connections or smaller sizes"
				     : strerror(-rc));
		bench_result_free(&r);
		if (o.ack_log != NULL)
			fclose(o.ack_log);
		return 2;
	}
	if (json)
		print_json(&o, &r);
	else if (!quiet)
		print_text(&o, &r);
	if (o.ack_log != NULL && fclose(o.ack_log) != 0) {
		fprintf(stderr, "dotspool-bench: --ack-log: %s\n", strerror(errno));
		rc = -EIO;
	}
	int status = (r.messages_failed > 0 || r.messages_ok == 0 || rc < 0) ? 1 : 0;
	bench_result_free(&r);
	return status;
}
