/* SPDX-License-Identifier: MIT */
/*
 * dotspool-ctl queue commands (ctl_queue.h). The listing folds the spool
 * exactly as recovery does (spool_reader_foreach_status), so what it shows
 * as queued is what a restart would queue. The changing commands talk to
 * the server: one request line, one answer line per id, END (the protocol
 * is in deliver/README.md, "Operator commands").
 */
#include "ctl_queue.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <regex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ds_clock.h"
#include "spool.h"
#include "spool_id.h"
#include "spool_reader.h"

#define CTL_SOCKET_NAME "control.sock"
#define CTL_IDS_MAX	10000 /* the server's limit per request (io/ctlsock.h) */
/* A message an attempt or another action holds is answered "busy": asked again this often. */
#define CTL_BUSY_TRIES	  40
#define CTL_BUSY_SLEEP_MS 250

/* qshape's doubling buckets, in minutes: [0,5) [5,10) [10,20) ... [320, inf). */
#define AGE_BUCKETS 8
static const unsigned age_bucket_min[AGE_BUCKETS] = {0, 5, 10, 20, 40, 80, 160, 320};

enum qstate { QS_NEW, QS_DEFERRED, QS_ACTIVE, QS_HELD, QS_COUNT };
static const char *const qstate_name[QS_COUNT] = {"new", "deferred", "active", "held"};

void ctl_queue_usage(FILE *f)
{
	fprintf(f,
		"  queue [--json] [--state S] [--older-than T] [--sender RE] [--recipient RE]\n"
		"                  every message not yet final: id, age, size, sender, state (new: never\n"
		"                  attempted; deferred; active: an attempt was cut short or is running;\n"
		"                  held), attempts, next attempt, last reply, then one line per recipient\n"
		"                  with its state and last reply. T: seconds, or with s/m/h/d. RE: POSIX\n"
		"                  extended, case-insensitive (--recipient: any recipient matches).\n"
		"                  Read-only, safe beside a running server (like list).\n"
		"  queue --summary [--json]\n"
		"                  messages and bytes by state and by age (minutes: 0-5, 5-10, 10-20, "
		"20-40,\n"
		"                  40-80, 80-160, 160-320, 320+; qshape's doubling buckets)\n"
		"  retry ID...|--all, hold ID..., release ID..., delete ID..., bounce ID...\n"
		"                  sent to the running server over DIR/control.sock (its user and root\n"
		"                  only); each change is recorded in the spool before it is confirmed.\n"
		"                  hold: not delivered until released; release: due now; delete: gone, no\n"
		"                  delivery, no DSN; bounce: the open recipients fail now with a DSN;\n"
		"                  retry: due now (--all: every deferred message, not recorded). One line\n"
		"                  per id: ok, unknown (not queued in this server), busy (asked again for\n"
		"                  10 s), error. Without a running server these commands refuse (exit 1):\n"
		"                  start it (offline changes are not supported).\n"
		"                  --reason TEXT (first, before the ids): kept in each record and logged\n"
		"  reload          what SIGHUP does, through the control socket\n"
		"                  (--socket PATH after the command: the server's --control-socket)\n");
}

bool ctl_queue_is_command(const char *cmd)
{
	static const char *const cmds[] = {"queue", "retry", "hold", "release", "delete", "bounce", "reload"};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i]))
			return true;
	return false;
}

/* ---- the listing ---- */

struct qctx {
	FILE *out; /* the listing goes to memory first: printed once the scan finished (SIGBUS guard) */
	bool json, summary;
	int state; /* -1: any */
	int64_t older_than_us;
	bool has_sender, has_rcpt;
	regex_t sender, rcpt;
	int64_t now_us;
	uint64_t count[QS_COUNT], bytes[QS_COUNT];
	uint64_t age_count[AGE_BUCKETS], age_bytes[AGE_BUCKETS];
	uint64_t total, total_bytes;
};

static enum qstate msg_qstate(const struct spool_msg_status *st)
{
	if (st->held)
		return QS_HELD;
	if (st->in_flight)
		return QS_ACTIVE;
	if (st->attempts > 0 || st->next_attempt_us)
		return QS_DEFERRED;
	return QS_NEW;
}

const char *ctl_rcpt_state_name(uint8_t s)
{
	switch (s) {
	case SPOOL_RCPT_ATTEMPT:
		return "attempt";
	case SPOOL_RCPT_DELIVERED:
		return "delivered";
	case SPOOL_RCPT_DEFERRED:
		return "deferred";
	case SPOOL_RCPT_FAILED:
		return "failed";
	default:
		return "pending";
	}
}

void ctl_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		case '\b':
			fputs("\\b", f);
			break;
		case '\f':
			fputs("\\f", f);
			break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(f, "\\u%04x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('"', f);
}

static void rfc3339(int64_t us, char *buf, size_t cap)
{
	time_t s = (time_t)(us / 1000000);
	struct tm tm;

	gmtime_r(&s, &tm);
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void age_text(int64_t us, char *buf, size_t cap)
{
	int64_t s = us > 0 ? us / 1000000 : 0;

	if (s < 3600)
		snprintf(buf, cap, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
	else if (s < 86400)
		snprintf(buf, cap, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
	else
		snprintf(buf, cap, "%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

/* The latest reply among the open recipients: the message's "last reply". */
static const struct spool_rcpt_status *last_reply(const struct spool_msg_status *st)
{
	const struct spool_rcpt_status *best = NULL;

	for (uint32_t i = 0; i < st->rcpt_count; i++) {
		const struct spool_rcpt_status *rs = &st->rcpt[i];
		if (SPOOL_RCPT_STATE_FINAL(rs->state) || !rs->code)
			continue;
		if (!best || rs->at_us > best->at_us)
			best = rs;
	}
	return best;
}

static int q_msg(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	struct qctx *q = ctx;
	enum qstate qs;
	int64_t age_us;
	char id[24], ts[40], age[32];

	if (st->done)
		return 0; /* final: delivered, failed with its DSN, or deleted */
	qs = msg_qstate(st);
	age_us = q->now_us - m->received_at_us;
	if (q->state >= 0 && (int)qs != q->state)
		return 0;
	if (q->older_than_us && age_us < q->older_than_us)
		return 0;
	if (q->has_sender && regexec(&q->sender, m->env.mail_from, 0, NULL, 0))
		return 0;
	if (q->has_rcpt) {
		bool hit = false;
		for (uint32_t i = 0; i < m->env.rcpt_count && !hit; i++)
			hit = !regexec(&q->rcpt, m->env.rcpt[i].addr, 0, NULL, 0);
		if (!hit)
			return 0;
	}
	q->total++;
	q->total_bytes += m->size;
	q->count[qs]++;
	q->bytes[qs] += m->size;
	unsigned b = 0;
	while (b + 1 < AGE_BUCKETS && age_us >= (int64_t)age_bucket_min[b + 1] * 60 * 1000000)
		b++;
	q->age_count[b]++;
	q->age_bytes[b] += m->size;
	if (q->summary)
		return 0;

	const struct spool_rcpt_status *lr = last_reply(st);
	spool_id_format(m->id, id, sizeof(id));
	rfc3339(m->received_at_us, ts, sizeof(ts));
	age_text(age_us, age, sizeof(age));
	if (q->json) {
		fprintf(q->out,
			"{\"id\":\"%s\",\"lane\":%u,\"received_at\":\"%s\",\"age_s\":%lld,\"size\":%llu,"
			"\"sender\":",
			id, m->lane, ts, (long long)(age_us > 0 ? age_us / 1000000 : 0),
			(unsigned long long)m->size);
		ctl_json_str(q->out, m->env.mail_from);
		fprintf(q->out, ",\"state\":\"%s\",\"held\":%s,\"bounced\":%s,\"attempts\":%u",
			qstate_name[qs], st->held ? "true" : "false", st->bounced ? "true" : "false",
			st->attempts);
		if (st->next_attempt_us)
			fprintf(q->out, ",\"next_attempt\":%lld", (long long)(st->next_attempt_us / 1000000));
		if (lr) {
			fprintf(q->out, ",\"last_reply\":{\"code\":%u,\"esc\":", lr->code);
			ctl_json_str(q->out, lr->esc);
			fprintf(q->out, ",\"text\":");
			ctl_json_str(q->out, lr->text);
			fprintf(q->out, "}");
		}
		fprintf(q->out, ",\"recipients\":[");
		for (uint32_t i = 0; i < m->env.rcpt_count && i < st->rcpt_count; i++) {
			const struct spool_rcpt_status *rs = &st->rcpt[i];
			fprintf(q->out, "%s{\"addr\":", i ? "," : "");
			ctl_json_str(q->out, m->env.rcpt[i].addr);
			fprintf(q->out, ",\"state\":\"%s\",\"attempts\":%u", ctl_rcpt_state_name(rs->state),
				rs->attempt);
			if (rs->code) {
				fprintf(q->out, ",\"code\":%u,\"esc\":", rs->code);
				ctl_json_str(q->out, rs->esc);
				fprintf(q->out, ",\"reply\":");
				ctl_json_str(q->out, rs->text);
			}
			if (rs->state == SPOOL_RCPT_DEFERRED && rs->next_attempt_us)
				fprintf(q->out, ",\"next_attempt\":%lld",
					(long long)(rs->next_attempt_us / 1000000));
			fprintf(q->out, "}");
		}
		fprintf(q->out, "]}\n");
		return 0;
	}
	char next[40] = "now";
	if (st->held)
		snprintf(next, sizeof(next), "never (held)");
	else if (st->next_attempt_us)
		rfc3339(st->next_attempt_us, next, sizeof(next));
	fprintf(q->out, "%s %s age %s size %llu attempts %u next %s from <%s>\n", id, qstate_name[qs], age,
		(unsigned long long)m->size, st->attempts, next, m->env.mail_from);
	if (lr)
		fprintf(q->out, "    last reply: %u %s%s%s\n", lr->code, lr->esc, lr->esc[0] ? " " : "",
			lr->text);
	for (uint32_t i = 0; i < m->env.rcpt_count && i < st->rcpt_count; i++) {
		const struct spool_rcpt_status *rs = &st->rcpt[i];
		fprintf(q->out, "    <%s> %s", m->env.rcpt[i].addr, ctl_rcpt_state_name(rs->state));
		if (rs->code)
			fprintf(q->out, " %u %s%s%s", rs->code, rs->esc, rs->esc[0] ? " " : "", rs->text);
		fputc('\n', q->out);
	}
	return 0;
}

static void summary_print(const struct qctx *q)
{
	if (q->json) {
		fprintf(q->out, "{\"messages\":%llu,\"bytes\":%llu,\"by_state\":{",
			(unsigned long long)q->total, (unsigned long long)q->total_bytes);
		for (int s = 0; s < QS_COUNT; s++)
			fprintf(q->out, "%s\"%s\":{\"messages\":%llu,\"bytes\":%llu}", s ? "," : "",
				qstate_name[s], (unsigned long long)q->count[s],
				(unsigned long long)q->bytes[s]);
		fprintf(q->out, "},\"by_age_minutes\":[");
		for (int b = 0; b < AGE_BUCKETS; b++) {
			fprintf(q->out, "%s{\"from\":%u,", b ? "," : "", age_bucket_min[b]);
			if (b + 1 < AGE_BUCKETS)
				fprintf(q->out, "\"to\":%u,", age_bucket_min[b + 1]);
			fprintf(q->out, "\"messages\":%llu,\"bytes\":%llu}",
				(unsigned long long)q->age_count[b], (unsigned long long)q->age_bytes[b]);
		}
		fprintf(q->out, "]}\n");
		return;
	}
	fprintf(q->out, "%-10s %10s %14s\n", "state", "messages", "bytes");
	for (int s = 0; s < QS_COUNT; s++)
		fprintf(q->out, "%-10s %10llu %14llu\n", qstate_name[s], (unsigned long long)q->count[s],
			(unsigned long long)q->bytes[s]);
	fprintf(q->out, "%-10s %10llu %14llu\n", "total", (unsigned long long)q->total,
		(unsigned long long)q->total_bytes);
	fprintf(q->out, "\n%-10s %10s %14s\n", "age (min)", "messages", "bytes");
	for (int b = 0; b < AGE_BUCKETS; b++) {
		char label[24];
		if (b + 1 < AGE_BUCKETS)
			snprintf(label, sizeof(label), "%u-%u", age_bucket_min[b], age_bucket_min[b + 1]);
		else
			snprintf(label, sizeof(label), "%u+", age_bucket_min[b]);
		fprintf(q->out, "%-10s %10llu %14llu\n", label, (unsigned long long)q->age_count[b],
			(unsigned long long)q->age_bytes[b]);
	}
}

static int duration_us(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	double mult = 1;

	if (errno || end == s || v < 0)
		return -EINVAL;
	switch (*end) {
	case 0:
	case 's':
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1])
		return -EINVAL;
	*out = (int64_t)(v * mult * 1e6);
	return 0;
}

/*
 * SIGBUS guard, as list has (ctl.c): the reader maps segments a running
 * server owns; one reclaimed or unreadable under the map turns a load into
 * SIGBUS. The listing is built in memory; on SIGBUS it is dropped and the
 * scan runs again on a fresh reader (segments listed anew), at most
 * Q_BUS_TRIES times; only a finished scan is printed.
 */
#define Q_BUS_TRIES 5
static sigjmp_buf q_jmp;
static volatile sig_atomic_t q_armed;

static void q_sigbus(int sig)
{
	if (q_armed) {
		q_armed = 0;
		siglongjmp(q_jmp, 1);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static int guarded_scan(const char *dir, struct qctx *q)
{
	static struct spool_reader *volatile cur;
	static char *buf;
	static size_t len;
	static volatile int tries;
	const struct qctx start = *q;
	struct sigaction sa = {.sa_handler = q_sigbus};
	struct spool_reader *r;
	int rc;

	sigaction(SIGBUS, &sa, NULL);
	int jumped = sigsetjmp(q_jmp, 1);
	if (jumped) {
		if (cur)
			spool_reader_close(cur);
		cur = NULL;
		fclose(q->out);
		free(buf);
		buf = NULL;
		fprintf(stderr, "dotspool-ctl: a segment changed under the reader (%s); reading again\n",
			jumped == 1 ? "SIGBUS" : "recycled");
		if (++tries >= Q_BUS_TRIES) {
			fprintf(stderr, "dotspool-ctl: gave up after %d tries\n", Q_BUS_TRIES);
			return -EIO;
		}
	}
	*q = start;
	q->out = open_memstream(&buf, &len);
	if (!q->out)
		return -ENOMEM;
	rc = spool_reader_open(&r, dir);
	if (rc) {
		fclose(q->out);
		free(buf);
		buf = NULL;
		fprintf(stderr, "dotspool-ctl: cannot open spool %s: %s\n", dir, strerror(-rc));
		return rc;
	}
	cur = r;
	q_armed = 1;
	rc = spool_reader_foreach_status(r, q_msg, q);
	/* A segment reclaimed and stamped again as another meanwhile (format 5): read again. */
	if (spool_reader_changed(r)) {
		q_armed = 0;
		siglongjmp(q_jmp, 2);
	}
	q_armed = 0;
	cur = NULL;
	spool_reader_close(r);
	if (!rc && q->summary)
		summary_print(q);
	fclose(q->out);
	q->out = NULL;
	if (!rc && len && fwrite(buf, 1, len, stdout) != len)
		rc = -EIO;
	free(buf);
	buf = NULL;
	return rc;
}

static int queue_cmd(const char *dir, bool json, int argc, char **argv)
{
	struct qctx q = {.json = json, .state = -1, .now_us = ds_wall_us()};
	int rc;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		bool has_val = i + 1 < argc;
		if (!strcmp(a, "--json")) {
			q.json = true;
		} else if (!strcmp(a, "--summary")) {
			q.summary = true;
		} else if (!strcmp(a, "--state") && has_val) {
			const char *v = argv[++i];
			for (int s = 0; s < QS_COUNT; s++)
				if (!strcmp(v, qstate_name[s]))
					q.state = s;
			if (q.state < 0) {
				fprintf(stderr,
					"dotspool-ctl: --state: one of new, deferred, active, held\n");
				return 2;
			}
		} else if (!strcmp(a, "--older-than") && has_val) {
			if (duration_us(argv[++i], &q.older_than_us)) {
				fprintf(stderr, "dotspool-ctl: --older-than: seconds, or a number with s, m, "
						"h or d\n");
				return 2;
			}
		} else if ((!strcmp(a, "--sender") || !strcmp(a, "--recipient")) && has_val) {
			bool snd = !strcmp(a, "--sender");
			regex_t *re = snd ? &q.sender : &q.rcpt;
			int e = regcomp(re, argv[++i], REG_EXTENDED | REG_ICASE | REG_NOSUB);
			if (e) {
				char msg[256];
				regerror(e, re, msg, sizeof(msg));
				fprintf(stderr, "dotspool-ctl: %s '%s': %s\n", a, argv[i], msg);
				return 2;
			}
			if (snd)
				q.has_sender = true;
			else
				q.has_rcpt = true;
		} else {
			fprintf(stderr, "dotspool-ctl: queue: unexpected '%s' (see --help)\n", a);
			return 2;
		}
	}
	rc = guarded_scan(dir, &q);
	if (q.has_sender)
		regfree(&q.sender);
	if (q.has_rcpt)
		regfree(&q.rcpt);
	if (fflush(stdout))
		rc = -EIO;
	if (rc) {
		fprintf(stderr, "dotspool-ctl: queue: %s\n", strerror(-rc));
		return 1;
	}
	return 0;
}

/* ---- the changing commands: the control socket ---- */

/* Why no server answers: its lock tells running from stopped. */
static void no_server(const char *dir, const char *path, int err)
{
	char lock[PATH_MAX];
	int fd;

	if (err == EACCES || err == EPERM) {
		fprintf(stderr,
			"dotspool-ctl: permission denied on %s: the control socket is open to the server's "
			"user "
			"and root only\n",
			path);
		return;
	}
	snprintf(lock, sizeof(lock), "%s/dotspool.lock", dir);
	fd = open(lock, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && flock(fd, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK)
		fprintf(stderr,
			"dotspool-ctl: the server holds the spool lock but its control socket %s does not "
			"answer (%s)\n",
			path, strerror(err));
	else
		fprintf(stderr,
			"dotspool-ctl: server not running (no control socket at %s: %s); changing commands "
			"are "
			"applied by the running server only: start it (offline changes are not supported)\n",
			path, strerror(err));
	if (fd >= 0)
		close(fd);
}

static const char *socket_path; /* --socket PATH, else DIR/control.sock */

static int ctl_connect(const char *dir, char *path, size_t cap)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, n;

	if (socket_path)
		n = snprintf(path, cap, "%s", socket_path);
	else
		n = snprintf(path, cap, "%s/%s", dir, CTL_SOCKET_NAME);
	if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
		fprintf(stderr, "dotspool-ctl: spool path too long for its control socket\n");
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, (size_t)n + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = errno;
		close(fd);
		no_server(dir, path, err);
		return -err;
	}
	return fd;
}

/* One request; prints the answer's id lines (busy ones kept in *busy for another go). 0 all ok, 1 not. */
static int ctl_request(const char *dir, const char *cmd, char **ids, int n, char ***busy, int *nbusy,
		       bool last)
{
	char path[PATH_MAX];
	size_t len = strlen(cmd) + 2;
	int fd, rc = 0;

	for (int i = 0; i < n; i++)
		len += strlen(ids[i]) + 1;
	char *req = malloc(len + 1);
	if (!req)
		return 1;
	strcpy(req, cmd);
	for (int i = 0; i < n; i++) {
		strcat(req, " ");
		strcat(req, ids[i]);
	}
	strcat(req, "\n");
	fd = ctl_connect(dir, path, sizeof(path));
	if (fd < 0) {
		free(req);
		return 1;
	}
	for (size_t off = 0, l = strlen(req); off < l;) {
		ssize_t w = send(fd, req + off, l - off, MSG_NOSIGNAL);
		if (w <= 0 && (errno == EPIPE || errno == ECONNRESET))
			break; /* the server answered before reading (a refusal): read what it said */
		if (w <= 0) {
			fprintf(stderr, "dotspool-ctl: control socket: %s\n", strerror(errno));
			free(req);
			close(fd);
			return 1;
		}
		off += (size_t)w;
	}
	free(req);
	FILE *f = fdopen(fd, "r");
	char line[1024];
	bool end = false;
	*nbusy = 0;
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (!strncmp(line, "ERR ", 4)) {
			fprintf(stderr, "dotspool-ctl: %s\n", line + 4);
			rc = 1;
			end = true;
			break;
		}
		if (!strncmp(line, "END ", 4)) {
			end = true;
			break;
		}
		if (!strncmp(line, "OK ", 3)) {
			printf("%s\n", line + 3);
			continue;
		}
		char *sp = strchr(line, ' ');
		if (sp && !strcmp(sp + 1, "busy") && !last) {
			*sp = 0;
			for (int i = 0; i < n; i++)
				if (!strcasecmp(ids[i], line)) {
					(*busy)[(*nbusy)++] = ids[i];
					break;
				}
			continue;
		}
		printf("%s\n", line);
		if (!sp || strcmp(sp + 1, "ok"))
			rc = 1;
	}
	if (!end) {
		fprintf(stderr, "dotspool-ctl: the server closed the control socket without an answer\n");
		rc = 1;
	}
	if (f)
		fclose(f);
	else
		close(fd);
	return rc;
}

/* cmd --reason=TEXT, TEXT percent-encoded (spaces, controls, '%', 8-bit): one token on the wire. */
static const char *with_reason(const char *cmd, const char *reason)
{
	static char out[32 + 3 * 255 + 1];
	char *p = out;

	if (strlen(reason) > 255 || strlen(cmd) > 16)
		return NULL;
	p += sprintf(p, "%s --reason=", cmd);
	for (const unsigned char *s = (const unsigned char *)reason; *s; s++)
		p += *s <= ' ' || *s == '%' || *s >= 0x7f ? sprintf(p, "%%%02X", *s) : sprintf(p, "%c", *s);
	return out;
}

static int change_cmd(const char *dir, const char *cmd0, int argc, char **argv)
{
	const char *cmd = cmd0;
	int rc = 0;

	if (argc >= 2 && !strcmp(argv[0], "--reason") && strcmp(cmd0, "reload")) {
		cmd = with_reason(cmd0, argv[1]);
		if (!cmd) {
			fprintf(stderr, "dotspool-ctl: --reason: at most 255 bytes\n");
			return 2;
		}
		argv += 2;
		argc -= 2;
	}

	if (!strcmp(cmd0, "reload")) {
		if (argc) {
			fprintf(stderr, "dotspool-ctl: reload takes no arguments\n");
			return 2;
		}
		char **none = NULL;
		int nb = 0;
		return ctl_request(dir, cmd, NULL, 0, &none, &nb, true);
	}
	if (!argc) {
		fprintf(stderr, "dotspool-ctl: %s: message ids needed%s\n", cmd0,
			strcmp(cmd0, "retry") ? "" : " (or --all)");
		return 2;
	}
	if (!strcmp(argv[0], "--all")) {
		if (strcmp(cmd0, "retry") || argc != 1) {
			fprintf(stderr, "dotspool-ctl: --all is for retry alone\n");
			return 2;
		}
		char **none = NULL;
		int nb = 0;
		return ctl_request(dir, cmd, argv, 1, &none, &nb, true);
	}
	if (argc > CTL_IDS_MAX) {
		fprintf(stderr, "dotspool-ctl: at most %d ids in one command\n", CTL_IDS_MAX);
		return 2;
	}
	char **busy = calloc((size_t)argc, sizeof(*busy)), **todo = calloc((size_t)argc, sizeof(*todo));
	int n = argc;
	if (!busy || !todo) {
		free(busy);
		free(todo);
		return 1;
	}
	memcpy(todo, argv, (size_t)argc * sizeof(*todo));
	for (int tries = 1;; tries++) {
		int nb = 0;
		rc |= ctl_request(dir, cmd, todo, n, &busy, &nb, tries >= CTL_BUSY_TRIES);
		if (!nb)
			break;
		/* Busy: an attempt or another action holds them now; asked again shortly. */
		memcpy(todo, busy, (size_t)nb * sizeof(*todo));
		n = nb;
		struct timespec ts = {0, CTL_BUSY_SLEEP_MS * 1000000L};
		nanosleep(&ts, NULL);
	}
	free(busy);
	free(todo);
	return rc ? 1 : 0;
}

int ctl_queue_main(const char *dir, const char *cmd, bool json, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--socket"))
			continue;
		if (i + 1 >= argc) {
			fprintf(stderr, "dotspool-ctl: --socket needs a PATH\n");
			return 2;
		}
		socket_path = argv[i + 1];
		memmove(&argv[i], &argv[i + 2], (size_t)(argc - i - 2) * sizeof(*argv));
		argc -= 2;
		i--;
	}
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			ctl_queue_usage(stdout);
			return 0;
		}
	if (!strcmp(cmd, "queue"))
		return queue_cmd(dir, json, argc, argv);
	return change_cmd(dir, cmd, argc, argv);
}
