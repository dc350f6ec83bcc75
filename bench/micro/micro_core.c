/* SPDX-License-Identifier: MIT */
/* Microbenchmarks of core/: the command-line parser and the DATA scanner. */
#include <string.h>

#include "ds_assert.h"
#include "micro.h"
#include "smtp_internal.h"

static const char *const core_bench_lines[] = {
	"EHLO client.example.org\r\n",
	"MAIL FROM:<sender.name@example.org> SIZE=12345 BODY=8BITMIME\r\n",
	"RCPT TO:<recipient.one@example.com> NOTIFY=SUCCESS,FAILURE\r\n",
	"RCPT TO:<recipient.two@sub.example.net>\r\n",
	"DATA\r\n",
	"RSET\r\n",
	"NOOP\r\n",
	"QUIT\r\n",
};

/* Command line + path + parameters, as the session parses MAIL/RCPT. */
MICRO_BENCH(core_cmd_parse)
{
	size_t lens[DS_ARRAY_SIZE(core_bench_lines)];
	int64_t bytes = 0, cmds = 0;

	for (size_t i = 0; i < DS_ARRAY_SIZE(core_bench_lines); i++)
		lens[i] = strlen(core_bench_lines[i]);
	while (micro_keep_running(st)) {
		for (size_t i = 0; i < DS_ARRAY_SIZE(core_bench_lines); i++) {
			struct smtp_cmd c;
			int r = smtp_parse_command((const uint8_t *)core_bench_lines[i], lens[i], &c);
			if (r == 0 && (c.verb == SMTP_VERB_MAIL || c.verb == SMTP_VERB_RCPT)) {
				struct smtp_path p;
				size_t used;
				r = smtp_parse_path(c.arg, c.arg_len, false, &used, &p);
				if (r == 0 && used < c.arg_len) {
					struct smtp_mail_params mp;
					if (c.verb == SMTP_VERB_MAIL)
						r = smtp_parse_mail_params(c.arg + used + 1,
									   c.arg_len - used - 1, false, &mp);
					else
						r = smtp_parse_rcpt_params(c.arg + used + 1,
									   c.arg_len - used - 1, false);
				}
			}
			micro_do_not_optimize_u64((uint64_t)r + c.verb);
			bytes += (int64_t)lens[i];
		}
		cmds += (int64_t)DS_ARRAY_SIZE(core_bench_lines);
	}
	micro_set_bytes(st, bytes);
	micro_set_items(st, cmds);
}

/* 64 KiB body of 78-octet lines, every fourth one dot-stuffed, ending CRLF.CRLF. */
MICRO_BENCH(core_data_scan_64k)
{
	static uint8_t body[65536 + 64];
	size_t n = 0;

	for (int line = 0; n + 80 < 65536; line++) {
		if (line % 4 == 0)
			body[n++] = '.';
		while ((n % 80) != 78 && n + 2 < 65536) {
			body[n] = (uint8_t)('a' + (n % 26));
			n++;
		}
		body[n++] = '\r';
		body[n++] = '\n';
	}
	memcpy(body + n, ".\r\n", 3);
	n += 3;
	int64_t bytes = 0;
	while (micro_keep_running(st)) {
		struct smtp_data_scan sc;
		size_t pos = 0, out = 0;
		bool end = false;
		smtp_data_scan_init(&sc, false, true, 1000);
		while (pos < n && !end) {
			size_t emit;
			pos += smtp_data_scan(&sc, body + pos, n - pos, &emit, &end);
			out += emit;
		}
		micro_do_not_optimize_u64(out + sc.flags);
		bytes += (int64_t)n;
	}
	micro_set_bytes(st, bytes);
}

struct core_bench_sink {
	uint64_t bytes;
};

static int core_bench_begin(void *ctx, char *id, size_t cap)
{
	memcpy(id, "BENCH", 6);
	return 0;
}

static int core_bench_write(void *ctx, const void *buf, size_t len)
{
	((struct core_bench_sink *)ctx)->bytes += len;
	return 0;
}

static int core_bench_commit(void *ctx, const struct ds_envelope *env)
{
	return 0;
}

static void core_bench_abort(void *ctx)
{
}

static int64_t core_bench_now(void *ctx)
{
	return 1795000000000000LL;
}

/* A whole pipelined transaction through the session (commands, 4 KiB of data, replies). */
MICRO_BENCH(core_session_txn_4k)
{
	static const struct smtp_sink sink = {
		.data_begin = core_bench_begin,
		.data_write = core_bench_write,
		.data_commit = core_bench_commit,
		.data_abort = core_bench_abort,
		.now_us = core_bench_now,
	};
	static const char *const doms[] = {"example.com"};
	static uint8_t mem[4096];
	static uint8_t in[8192];
	struct smtp_config cfg;
	struct core_bench_sink bs = {0};
	size_t n = 0;

	smtp_config_defaults(&cfg);
	cfg.accept_domains = doms;
	const char *head = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n";
	memcpy(in, head, strlen(head));
	n = strlen(head);
	while (n < 4096) {
		memcpy(in + n, "The quick brown fox jumps over the lazy dog, again and again.\r\n", 63);
		n += 63;
	}
	memcpy(in + n, ".\r\n", 3);
	n += 3;
	struct smtp_session *s =
		smtp_session_init(mem, &cfg, &sink, &bs, &(struct smtp_peer){"127.0.0.1", 1});
	size_t len, used;
	smtp_session_input(s, (const uint8_t *)"EHLO x\r\n", 8, &used);
	smtp_session_output(s, &len);
	smtp_session_output_consumed(s, len);
	int64_t bytes = 0;
	while (micro_keep_running(st)) {
		enum smtp_status r = smtp_session_input(s, in, n, &used);
		if (r == SMTP_WAIT_COMMIT)
			smtp_session_commit_done(s, 0);
		smtp_session_output(s, &len);
		smtp_session_output_consumed(s, len);
		bytes += (int64_t)n;
	}
	smtp_session_fini(s);
	micro_do_not_optimize_u64(bs.bytes);
	micro_set_bytes(st, bytes);
	micro_set_items(st, micro_iterations(st));
}
