/* SPDX-License-Identifier: MIT */
/*
 * dotspool-ctl: read-only spool inspector. Safe while the server runs
 * (opens files O_RDONLY, maps them shared, treats unfinished records as
 * not there yet).
 */
#include <errno.h>
#include <getopt.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ctl_queue.h"
#include "spool.h"
#include "spool_reader.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dotspool-ctl --spool DIR COMMAND [ARGS]\n"
		"\n"
		"Spool inspector (list, cat, verify, stats, queue: read-only, safe while the server runs)\n"
		"and the operator's queue commands (through the running server).\n"
		"\n"
		"commands:\n"
		"  list [--json]   one line per committed message, its delivery state last (queued while\n"
		"                  a recipient is not final, else done); --json: one JSON object per line\n"
		"                  with id, lane, mail_from, rcpt_to, rcpt_params, size, received_at (RFC\n"
		"                  3339 UTC), helo, client_addr, client_port, tls, proto, mail_params,\n"
		"                  state, attempts, next_attempt (unix s, when deferred), dsn_id (when a\n"
		"                  DSN was spooled), recipients: [{addr, state (pending, attempt,\n"
		"                  delivered, deferred, failed), attempts, code, esc, reply, next_attempt,\n"
		"                  hop, possible_duplicate}] (fields present when known)\n"
		"                  Commits refused by an abort record (client got 451/452) are not listed.\n"
		"  cat ID          write the exact stored bytes of message ID to stdout\n"
		"  verify          check every record and body checksum; exit 0 only if consistent\n"
		"  stats           segments, messages, bytes, per lane\n");
	ctl_queue_usage(f);
	fprintf(f, "\n"
		   "options:\n"
		   "  --spool DIR     spool directory (default ./var/spool)\n"
		   "  --json          JSON lines output for list\n"
		   "  -h, --help      this help\n"
		   "\n"
		   "exit status: 0 ok, 1 not found / inconsistent / error, 2 usage\n");
}

/*
 * The SIGBUS guard. The reader maps segment files a running server owns: a
 * segment reclaimed, or one a FUSE or network file system cannot read any
 * more (seen once in CI on the power-cut file system), turns a load from
 * the map into SIGBUS. The whole command runs with stdout and stderr sent
 * to memory files; on SIGBUS the half-done output is dropped and the
 * command runs again on a fresh reader (segments listed anew), at most
 * CTL_BUS_TRIES times; only a finished run's output reaches the caller.
 */
#define CTL_BUS_TRIES 5
static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_armed;

static void on_sigbus(int sig)
{
	if (bus_armed) {
		bus_armed = 0;
		siglongjmp(bus_jmp, 1);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Copy memory file fd (from 0) to out_fd. */
static int fd_copy(int fd, int out_fd)
{
	char buf[65536];
	off_t at = 0;

	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), at), w;
		if (n < 0)
			return -errno;
		if (!n)
			return 0;
		at += n;
		for (ssize_t k = 0; k < n; k += w) {
			w = write(out_fd, buf + k, (size_t)(n - k));
			if (w < 0)
				return -errno;
		}
	}
}

static void rfc3339(int64_t us, char *buf, size_t cap)
{
	time_t s = (time_t)(us / 1000000);
	long frac = (long)(us % 1000000);
	struct tm tm;

	if (frac < 0) {
		frac += 1000000;
		s--;
	}
	gmtime_r(&s, &tm);
	snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

/* Delivery state of a message: queued while some recipient is not final. */
static const char *msg_state(const struct spool_msg_status *st)
{
	return st->done ? "done" : "queued";
}

/* The plain line as before, with the message's state as a last word (recipients stay in <>). */
static int list_plain(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	char id[24], ts[48];

	spool_id_format(m->id, id, sizeof(id));
	rfc3339(m->received_at_us, ts, sizeof(ts));
	printf("%s %s %llu <%s> ->", id, ts, (unsigned long long)m->size, m->env.mail_from);
	for (uint32_t i = 0; i < m->env.rcpt_count; i++)
		printf(" <%s>", m->env.rcpt[i].addr);
	printf(" %s\n", msg_state(st));
	return 0;
}

/* Unix seconds of a microsecond wall clock (rounded down). */
static long long unix_s(int64_t us)
{
	return (long long)(us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000));
}

/* One recipient object of "recipients": address, folded state, and what the last word was. */
static void json_rcpt(const struct ds_rcpt *r, const struct spool_rcpt_status *rs)
{
	printf("{\"addr\":");
	ctl_json_str(stdout, r->addr);
	printf(",\"state\":\"%s\"", ctl_rcpt_state_name(rs->state));
	if (rs->attempt)
		printf(",\"attempts\":%u", rs->attempt);
	if (rs->code)
		printf(",\"code\":%u", rs->code);
	if (rs->esc && *rs->esc) {
		printf(",\"esc\":");
		ctl_json_str(stdout, rs->esc);
	}
	if (rs->text && *rs->text) {
		printf(",\"reply\":");
		ctl_json_str(stdout, rs->text);
	}
	if (rs->state == SPOOL_RCPT_DEFERRED && rs->next_attempt_us)
		printf(",\"next_attempt\":%lld", unix_s(rs->next_attempt_us));
	if (rs->hop && *rs->hop) {
		printf(",\"hop\":");
		ctl_json_str(stdout, rs->hop);
	}
	if (rs->possible_duplicate)
		printf(",\"possible_duplicate\":true");
	putchar('}');
}

static int list_json(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	char id[24], ts[48];

	spool_id_format(m->id, id, sizeof(id));
	rfc3339(m->received_at_us, ts, sizeof(ts));
	printf("{\"id\":\"%s\",\"lane\":%u,\"size\":%llu,\"received_at\":\"%s\",\"mail_from\":", id, m->lane,
	       (unsigned long long)m->size, ts);
	ctl_json_str(stdout, m->env.mail_from);
	printf(",\"rcpt_to\":[");
	for (uint32_t i = 0; i < m->env.rcpt_count; i++) {
		if (i)
			putchar(',');
		ctl_json_str(stdout, m->env.rcpt[i].addr);
	}
	printf("],\"rcpt_params\":[");
	for (uint32_t i = 0; i < m->env.rcpt_count; i++) {
		if (i)
			putchar(',');
		ctl_json_str(stdout, m->env.rcpt[i].params);
	}
	printf("],\"mail_params\":");
	ctl_json_str(stdout, m->env.mail_params);
	printf(",\"helo\":");
	ctl_json_str(stdout, m->env.helo);
	printf(",\"client_addr\":");
	ctl_json_str(stdout, m->env.client_addr);
	printf(",\"client_port\":%u,\"tls\":", m->env.client_port);
	ctl_json_str(stdout, m->env.tls);
	printf(",\"proto\":");
	ctl_json_str(stdout, m->env.proto);
	/* Delivery state (format 2), after every field older scripts read. */
	printf(",\"state\":\"%s\",\"attempts\":%u", msg_state(st), st->attempts);
	if (!st->done && st->next_attempt_us)
		printf(",\"next_attempt\":%lld", unix_s(st->next_attempt_us));
	if (st->dsn_id) {
		spool_id_format(st->dsn_id, id, sizeof(id));
		printf(",\"dsn_id\":\"%s\"", id);
	}
	printf(",\"recipients\":[");
	for (uint32_t i = 0; i < m->env.rcpt_count && i < st->rcpt_count; i++) {
		if (i)
			putchar(',');
		json_rcpt(&m->env.rcpt[i], &st->rcpt[i]);
	}
	printf("]}\n");
	return 0;
}

static int ctl_run(const char *dir, const char *cmd, bool json, const char *arg);

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"spool", required_argument, NULL, 's'},
					     {"json", no_argument, NULL, 'j'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *dir = "./var/spool", *cmd;
	bool json = false;
	int c;

	while ((c = getopt_long(argc, argv, "+s:jh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			dir = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind++];
	/* Queue commands (ctl_queue.c) take their own options. */
	if (ctl_queue_is_command(cmd))
		return ctl_queue_main(dir, cmd, json, argc - optind, argv + optind);
	/* Options after the command (list --json). */
	for (int i = optind; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
			memmove(&argv[i], &argv[i + 1], (size_t)(argc - i - 1) * sizeof(*argv));
			argc--;
			i--;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
	}
	if (strcmp(cmd, "list") && strcmp(cmd, "cat") && strcmp(cmd, "verify") && strcmp(cmd, "stats")) {
		fprintf(stderr, "dotspool-ctl: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	if ((!strcmp(cmd, "cat") && argc - optind != 1) || (strcmp(cmd, "cat") && argc - optind != 0)) {
		usage(stderr);
		return 2;
	}
	return ctl_run(dir, cmd, json, argc - optind == 1 ? argv[optind] : NULL);
}

/* One command on a fresh reader, again after a SIGBUS (see on_sigbus). */
static int ctl_run(const char *dir, const char *cmd, bool json, const char *arg)
{
	struct spool_reader *r;
	int rc;

	/* Output to memory files until the command finished without SIGBUS (on_sigbus). */
	static struct spool_reader *volatile cur;
	volatile int tries = 0;
	int out_fd = dup(1), err_fd = dup(2);
	int mem_out = memfd_create("dotspool-ctl-out", MFD_CLOEXEC);
	int mem_err = memfd_create("dotspool-ctl-err", MFD_CLOEXEC);
	struct sigaction sa = {.sa_handler = on_sigbus};

	if (out_fd < 0 || err_fd < 0 || mem_out < 0 || mem_err < 0) {
		perror("dotspool-ctl");
		return 1;
	}
	sigaction(SIGBUS, &sa, NULL);
	int jumped = sigsetjmp(bus_jmp, 1);
	if (jumped) {
		/* Drop what the interrupted run wrote; its maps are let go with its reader. */
		__fpurge(stdout);
		__fpurge(stderr);
		if (cur)
			spool_reader_close(cur);
		cur = NULL;
		if (ftruncate(mem_out, 0) || ftruncate(mem_err, 0))
			return 1;
		dprintf(err_fd, "dotspool-ctl: a segment changed under the reader (%s); reading again\n",
			jumped == 1 ? "SIGBUS" : "recycled");
		if (++tries >= CTL_BUS_TRIES) {
			dprintf(err_fd, "dotspool-ctl: gave up after %d tries\n", CTL_BUS_TRIES);
			return 1;
		}
	}
	fflush(stdout);
	fflush(stderr);
	if (dup2(mem_out, 1) < 0 || dup2(mem_err, 2) < 0)
		return 1;
	lseek(mem_out, 0, SEEK_SET);
	lseek(mem_err, 0, SEEK_SET);
	bus_armed = 1;
	rc = spool_reader_open(&r, dir);
	cur = r;
	if (rc) {
		bus_armed = 0;
		fprintf(stderr, "dotspool-ctl: cannot open spool %s: %s\n", dir, strerror(-rc));
		fflush(stderr);
		dup2(err_fd, 2);
		fd_copy(mem_err, 2);
		return 1;
	}
	if (!strcmp(cmd, "list")) {
		rc = spool_reader_foreach_status(r, json ? list_json : list_plain, NULL);
		if (fflush(stdout))
			rc = -EIO;
	} else if (!strcmp(cmd, "cat")) {
		uint64_t id;
		if (spool_id_parse(arg, &id)) {
			fprintf(stderr, "dotspool-ctl: bad message id '%s'\n", arg);
			rc = -EINVAL;
		} else {
			rc = spool_reader_read_file(r, id, stdout);
			if (!rc && fflush(stdout))
				rc = -EIO;
			if (rc == -ENOENT)
				fprintf(stderr, "dotspool-ctl: message %s not found\n", arg);
			else if (rc)
				fprintf(stderr, "dotspool-ctl: message %s: %s\n", arg,
					rc == -EBADMSG ? "body checksum mismatch" : strerror(-rc));
		}
	} else if (!strcmp(cmd, "verify")) {
		struct spool_verify_report v;
		rc = spool_reader_verify(r, &v, stderr);
		printf("verify: %s: %llu segments (%llu unused), %llu messages, %llu bytes, %llu bad bodies, "
		       "%llu quarantined regions (%llu bytes), %llu bad segment headers, %llu torn tails, "
		       "%llu incomplete (unacknowledged) commits, %llu refused commits (abort records), "
		       "%llu outcome records, %llu final commits with body reclaimed\n",
		       rc == 0 ? "OK" : "INCONSISTENT", (unsigned long long)v.segments,
		       (unsigned long long)v.empty_segments, (unsigned long long)v.messages,
		       (unsigned long long)v.bytes, (unsigned long long)v.bad_bodies,
		       (unsigned long long)v.quarantined, (unsigned long long)v.quarantined_bytes,
		       (unsigned long long)v.bad_segment_headers, (unsigned long long)v.torn_tails,
		       (unsigned long long)v.incomplete, (unsigned long long)v.aborted,
		       (unsigned long long)v.outcomes, (unsigned long long)v.bodies_reclaimed);
		/* A line of its own: scripts read the line above to its end. */
		printf("verify: seal summaries: %llu checked, %llu differing from their segment\n",
		       (unsigned long long)v.summaries, (unsigned long long)v.bad_summaries);
	} else {
		struct spool_reader_stats *st = calloc(1, sizeof(*st));
		if (!st) {
			rc = -ENOMEM;
		} else {
			rc = spool_reader_stats(r, st);
			printf("lanes %llu segments %llu segment_bytes %llu messages %llu bytes %llu\n",
			       (unsigned long long)st->lanes, (unsigned long long)st->segments,
			       (unsigned long long)st->segment_bytes, (unsigned long long)st->messages,
			       (unsigned long long)st->bytes);
			for (uint64_t i = 0; i < st->lanes; i++)
				printf("lane %u segments %llu (seq %llu..%llu) messages %llu bytes %llu\n",
				       st->lane[i].lane, (unsigned long long)st->lane[i].segments,
				       (unsigned long long)st->lane[i].first_seq,
				       (unsigned long long)st->lane[i].last_seq,
				       (unsigned long long)st->lane[i].messages,
				       (unsigned long long)st->lane[i].bytes);
			free(st);
		}
	}
	/* Tests: a SIGBUS at the end of the first run (its output must never show). */
	if (!tries && getenv("DOTSPOOL_CTL_TEST_SIGBUS"))
		raise(SIGBUS);
	/*
	 * A segment read may have been reclaimed and stamped again as another
	 * (recycled, format 5: unlike an unlinked file, its pages change):
	 * drop this run's output and read again, as after a SIGBUS.
	 */
	if (spool_reader_changed(r) || (!tries && getenv("DOTSPOOL_CTL_TEST_RECYCLED"))) {
		bus_armed = 0;
		siglongjmp(bus_jmp, 2);
	}
	bus_armed = 0;
	spool_reader_close(r);
	cur = NULL;
	fflush(stdout);
	fflush(stderr);
	if (dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
		return 1;
	if (fd_copy(mem_err, 2) || fd_copy(mem_out, 1)) {
		perror("dotspool-ctl: output");
		return 1;
	}
	return rc ? 1 : 0;
}
