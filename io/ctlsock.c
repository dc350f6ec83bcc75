/* SPDX-License-Identifier: MIT */
/*
 * The control socket (ctlsock.h): one thread, one client at a time. A
 * client sends one request line and reads the answer (deliver/README.md,
 * "Operator commands"); operator commands are rare, so serving them one
 * after another keeps this simple and never touches the workers' hot path:
 * a worker only looks at an atomic flag per loop turn.
 */
#include "ctlsock.h"

#include <errno.h>
#include <stdarg.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "ds_sort.h"
#include "log.h"
#include "spool.h"
#include "spool_id.h"

/* A request line: IO_CTL_IDS_MAX ids of 16 hex digits and a space each, the command, slack. */
#define CTL_LINE_MAX	   (IO_CTL_IDS_MAX * 17u + 256u)
#define CTL_READ_TIMEOUT_S 10
/* How long a command may take before the client is told "timeout" (records still settle). */
#define CTL_WAIT_S 60
/* Ids named in the log line (a value holds 256 bytes); the rest are counted. */
#define CTL_LOG_IDS 14

struct io_ctl_cmd {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned left; /* batches not done */
	unsigned refs; /* the thread + batches handed out */
	unsigned nb;
	char user[64];	  /* the operator's login name: the batches point here (they may outlive serve()) */
	char reason[256]; /* --reason, decoded */
	struct io_ctl_batch b[]; /* one per worker */
};

static struct {
	pthread_t thread;
	bool running;
	int lfd, stop_fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const struct io_config *cfg;
	struct io_worker *const *workers;
	unsigned n;
	struct obs_log_ring *log;
	pthread_mutex_t mbox_mu;
	struct io_ctl_batch *mbox[IO_THREADS_MAX];
	atomic_bool mbox_flag[IO_THREADS_MAX];
	atomic_bool stop;
	atomic_bool ready; /* every worker runs (io_ctlsock_ready) */
} g = {.lfd = -1, .stop_fd = -1, .mbox_mu = PTHREAD_MUTEX_INITIALIZER};

static void cmd_unref_locked(struct io_ctl_cmd *c, bool *freed)
{
	*freed = --c->refs == 0;
}

static void cmd_free(struct io_ctl_cmd *c)
{
	for (unsigned i = 0; i < c->nb; i++) {
		free(c->b[i].ids);
		free(c->b[i].res);
	}
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
}

static void cmd_unref(struct io_ctl_cmd *c)
{
	bool freed;

	pthread_mutex_lock(&c->mu);
	cmd_unref_locked(c, &freed);
	pthread_mutex_unlock(&c->mu);
	if (freed)
		cmd_free(c);
}

/* ---- worker side ---- */

struct io_ctl_batch *io_ctlsock_take(unsigned no)
{
	struct io_ctl_batch *b;

	if (no >= IO_THREADS_MAX || !atomic_load_explicit(&g.mbox_flag[no], memory_order_acquire))
		return NULL;
	pthread_mutex_lock(&g.mbox_mu);
	b = g.mbox[no];
	g.mbox[no] = NULL;
	atomic_store(&g.mbox_flag[no], false);
	pthread_mutex_unlock(&g.mbox_mu);
	return b;
}

void io_ctlsock_batch_done(struct io_ctl_batch *b)
{
	struct io_ctl_cmd *c = b->cmd;
	bool freed;

	pthread_mutex_lock(&c->mu);
	DS_ASSERT(c->left > 0);
	c->left--;
	pthread_cond_signal(&c->cv);
	cmd_unref_locked(c, &freed);
	pthread_mutex_unlock(&c->mu);
	if (freed)
		cmd_free(c);
}

/* ---- the thread ---- */

static void reply(int fd, const char *s)
{
	size_t len = strlen(s);

	while (len) {
		ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

static void __attribute__((format(printf, 2, 3))) replyf(int fd, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	reply(fd, buf);
}

static void user_name(uint32_t uid, char *buf, size_t cap)
{
	struct passwd pw, *res = NULL;
	char tmp[1024];

	if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res)
		snprintf(buf, cap, "%s", res->pw_name);
	else
		snprintf(buf, cap, "%u", uid);
}

static const char *const action_names[] = {"?", "hold", "release", "delete", "bounce", "retry"};

static const char *action_name(int a)
{
	return a >= SPOOL_OPERATOR_HOLD && a <= SPOOL_OPERATOR_RETRY ? action_names[a] : "?";
}

static int action_of(const char *w)
{
	const char *const *names = action_names;

	for (int i = SPOOL_OPERATOR_HOLD; i <= SPOOL_OPERATOR_RETRY; i++)
		if (!strcmp(w, names[i]))
			return i;
	return -1;
}

static const char *res_word(uint8_t r)
{
	switch (r) {
	case IO_CTL_OK:
		return "ok";
	case IO_CTL_UNKNOWN:
		return "unknown";
	case IO_CTL_BUSY:
		return "busy";
	case IO_CTL_ERROR:
		return "error";
	default:
		return "timeout";
	}
}

/* Read one line (up to '\n') into buf; its length, or -1. */
static ssize_t read_line(int fd, char *buf, size_t cap)
{
	size_t len = 0;

	int64_t deadline = ds_mono_ms() + CTL_READ_TIMEOUT_S * 1000;

	while (len < cap - 1) {
		/* A client that sends nothing holds the one thread: bounded, and a stop cuts it short. */
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = g.stop_fd, .events = POLLIN}};
		int64_t left = deadline - ds_mono_ms();
		if (left <= 0 || poll(p, 2, (int)left) <= 0 || p[1].revents)
			return -1;
		ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		char *nl = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
		if (nl) {
			*nl = 0;
			if (nl > buf && nl[-1] == '\r')
				nl[-1] = 0;
			return nl - buf;
		}
	}
	return -1;
}

static void log_action(const char *action, const struct ucred *cr, const char *user, const char *reason,
		       char **tok, unsigned ntok, unsigned ok, unsigned failed)
{
	char ids[CTL_LOG_IDS * 17 + 1];
	size_t len = 0;

	ids[0] = 0;
	for (unsigned i = 0; i < ntok && i < CTL_LOG_IDS; i++)
		len += (size_t)snprintf(ids + len, sizeof(ids) - len, "%s%.16s", i ? "," : "", tok[i]);
	if (!obs_log_begin(g.log, OBS_LOG_INFO, "operator"))
		return;
	obs_log_str(g.log, "action", action);
	obs_log_u64(g.log, "uid", cr->uid);
	obs_log_u64(g.log, "pid", (uint64_t)cr->pid);
	obs_log_str(g.log, "user", user);
	if (reason && *reason)
		obs_log_str(g.log, "reason", reason);
	obs_log_str(g.log, "ids", ids);
	if (ntok > CTL_LOG_IDS)
		obs_log_u64(g.log, "ids_more", ntok - CTL_LOG_IDS);
	obs_log_u64(g.log, "ok", ok);
	obs_log_u64(g.log, "failed", failed);
	obs_log_end(g.log);
}

/* A changing command: split by owning worker, hand out, wait, answer per id in the order asked. */
static void run_command(int fd, int action, char **tok, unsigned ntok, const struct ucred *cr,
			const char *user, const char *reason)
{
	unsigned n = g.n, ok = 0, failed = 0;
	bool all = ntok == 1 && !strcmp(tok[0], "--all");
	struct io_ctl_cmd *c;
	uint64_t *ids = NULL;

	if (all && action != SPOOL_OPERATOR_RETRY) {
		reply(fd, "ERR --all is for retry only\n");
		return;
	}
	if (!ntok) {
		reply(fd, "ERR no message ids\n");
		return;
	}
	c = calloc(1, sizeof(*c) + n * sizeof(c->b[0]));
	ids = calloc(ntok, sizeof(*ids));
	if (!c || !ids) {
		free(c);
		free(ids);
		reply(fd, "ERR out of memory\n");
		return;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	c->nb = n;
	c->refs = 1;
	snprintf(c->user, sizeof(c->user), "%.63s", user);
	snprintf(c->reason, sizeof(c->reason), "%.255s", reason);
	int64_t now = ds_wall_us();
	for (unsigned i = 0; i < n; i++)
		c->b[i] = (struct io_ctl_batch){.cmd = c,
						.action = (uint32_t)action,
						.uid = cr->uid,
						.pid = (uint32_t)cr->pid,
						.user = c->user,
						.reason = c->reason,
						.at_us = now,
						.all = all};
	/* Count per worker, then fill. An id that does not parse is answered "invalid". */
	for (unsigned i = 0; !all && i < ntok; i++) {
		/* Exactly the 16 hex digits dotspool prints: a shorter number would name another message. */
		if (strlen(tok[i]) != 16 || spool_id_parse(tok[i], &ids[i]) || !ids[i]) {
			ids[i] = 0;
			continue;
		}
		c->b[(ids[i] >> 56) % n].n++;
	}
	bool oom = false;
	for (unsigned i = 0; i < n; i++) {
		struct io_ctl_batch *b = &c->b[i];
		uint32_t cap = all ? 1 : b->n;
		b->ids = calloc(cap ? cap : 1, sizeof(*b->ids));
		b->res = calloc(cap ? cap : 1, 1);
		oom |= !b->ids || !b->res;
		b->n = 0;
	}
	if (oom) {
		cmd_free(c);
		free(ids);
		reply(fd, "ERR out of memory\n");
		return;
	}
	for (unsigned i = 0; !all && i < ntok; i++)
		if (ids[i]) {
			struct io_ctl_batch *b = &c->b[(ids[i] >> 56) % n];
			b->ids[b->n++] = ids[i];
		}
	/* Sorted and without repeats: one pass over the worker's queue finds them all. */
	for (unsigned i = 0; i < n; i++) {
		struct io_ctl_batch *b = &c->b[i];
		uint32_t k = 0;
		qsort(b->ids, b->n, sizeof(*b->ids), ds_u64_cmp);
		for (uint32_t j = 0; j < b->n; j++)
			if (!k || b->ids[k - 1] != b->ids[j])
				b->ids[k++] = b->ids[j];
		b->n = k;
	}
	/* Hand out: a batch with nothing to do is not sent (but retry --all goes to everyone). */
	pthread_mutex_lock(&c->mu);
	pthread_mutex_lock(&g.mbox_mu);
	for (unsigned i = 0; i < n; i++) {
		struct io_ctl_batch *b = &c->b[i];
		if (!b->n && !all)
			continue;
		c->left++;
		c->refs++;
		b->next = g.mbox[i];
		g.mbox[i] = b;
		atomic_store_explicit(&g.mbox_flag[i], true, memory_order_release);
	}
	pthread_mutex_unlock(&g.mbox_mu);
	for (unsigned i = 0; i < n; i++)
		if (c->b[i].n || all)
			io_worker_wake(g.workers[i]);
	int64_t deadline = ds_mono_ms() + CTL_WAIT_S * 1000;
	while (c->left && !atomic_load(&g.stop) && ds_mono_ms() < deadline) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&c->cv, &c->mu, &ts);
	}
	/* Answer from a snapshot under the lock: a worker still busy may write res[] later. */
	char line[64];
	if (all) {
		uint64_t made_due = 0;
		for (unsigned i = 0; i < n; i++)
			made_due += c->b[i].all_count;
		snprintf(line, sizeof(line), "OK retry --all %llu%s\n", (unsigned long long)made_due,
			 c->left ? " (some workers did not answer)" : "");
		ok = c->left ? 0 : 1;
		failed = c->left ? 1 : 0;
		pthread_mutex_unlock(&c->mu);
		reply(fd, line);
	} else {
		uint8_t *res = calloc(ntok, 1);
		for (unsigned i = 0; res && i < ntok; i++) {
			if (!ids[i]) {
				res[i] = 0xff;
				continue;
			}
			struct io_ctl_batch *b = &c->b[(ids[i] >> 56) % n];
			const uint64_t *hit = bsearch(&ids[i], b->ids, b->n, sizeof(*b->ids), ds_u64_cmp);
			res[i] = hit ? b->res[hit - b->ids] : IO_CTL_ERROR;
		}
		pthread_mutex_unlock(&c->mu);
		for (unsigned i = 0; res && i < ntok; i++) {
			if (res[i] == IO_CTL_OK)
				ok++;
			else
				failed++;
			snprintf(line, sizeof(line), "%.16s %s\n", tok[i],
				 res[i] == 0xff ? "invalid" : res_word(res[i]));
			reply(fd, line);
		}
		if (!res)
			reply(fd, "ERR out of memory\n");
		free(res);
	}
	replyf(fd, "END ok=%u failed=%u\n", ok, failed);
	log_action(all ? "retry_all" : action_name(action), cr, user, reason, tok, ntok, ok, failed);
	free(ids);
	cmd_unref(c);
}

static int hexval(char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				      : -1;
}

/* Percent-decode s into out (cap bytes with the NUL); NUL bytes are refused. 0 or -EINVAL. */
static int pct_decode(const char *s, char *out, size_t cap)
{
	size_t n = 0;

	for (; *s; s++) {
		int c = (unsigned char)*s;
		if (c == '%') {
			int h = hexval(s[1]), l = h < 0 ? -1 : hexval(s[2]);
			if (h < 0 || l < 0 || (h == 0 && l == 0))
				return -EINVAL;
			c = h << 4 | l;
			s += 2;
		}
		if (n + 1 >= cap)
			return -EINVAL;
		out[n++] = (char)c;
	}
	out[n] = 0;
	return 0;
}

static void serve(int fd)
{
	struct ucred cr;
	socklen_t crlen = sizeof(cr);
	char user[128];

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 || crlen != sizeof(cr)) {
		reply(fd, "ERR cannot read peer credentials\n");
		return;
	}
	user_name(cr.uid, user, sizeof(user));
	/* The server's own user or root: the spool is theirs; the socket's mode says the same. */
	if (cr.uid != 0 && cr.uid != geteuid()) {
		replyf(fd,
		       "ERR permission denied: uid %u (%s) may not use the control socket (uid %u and root "
		       "only)\n",
		       cr.uid, user, (unsigned)geteuid());
		if (obs_log_begin(g.log, OBS_LOG_WARN, "operator_refused")) {
			obs_log_u64(g.log, "uid", cr.uid);
			obs_log_u64(g.log, "pid", (uint64_t)cr.pid);
			obs_log_str(g.log, "user", user);
			obs_log_end(g.log);
		}
		return;
	}
	struct timeval tv = {.tv_sec = CTL_READ_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char *line = malloc(CTL_LINE_MAX);
	char **tok = calloc(IO_CTL_IDS_MAX + 2, sizeof(*tok));
	if (!line || !tok) {
		reply(fd, "ERR out of memory\n");
		goto out;
	}
	if (read_line(fd, line, CTL_LINE_MAX) < 0) {
		reply(fd, "ERR no request line (or longer than the limit)\n");
		goto out;
	}
	unsigned ntok = 0;
	for (char *save = NULL, *t = strtok_r(line, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
		if (ntok >= IO_CTL_IDS_MAX + 1) {
			replyf(fd, "ERR more than %u ids in one request\n", IO_CTL_IDS_MAX);
			goto out;
		}
		tok[ntok++] = t;
	}
	if (!ntok) {
		reply(fd, "ERR empty request\n");
		goto out;
	}
	/* A command that came in while the workers were starting waits for them (or the stop). */
	for (int64_t until = ds_mono_ms() + CTL_WAIT_S * 1000; !atomic_load(&g.ready);) {
		struct pollfd p = {.fd = g.stop_fd, .events = POLLIN};
		if (ds_mono_ms() >= until || poll(&p, 1, 10) > 0) {
			reply(fd, "ERR the server is starting or stopping: try again\n");
			goto out;
		}
	}
	if (!strcmp(tok[0], "reload")) {
		/* Exactly what SIGHUP does: main()'s signal thread takes it. */
		kill(getpid(), SIGHUP);
		reply(fd, "OK reload\nEND ok=1 failed=0\n");
		log_action("reload", &cr, user, NULL, NULL, 0, 1, 0);
		goto out;
	}
	int action = action_of(tok[0]);
	if (action < 0) {
		replyf(fd, "ERR unknown command '%.64s'\n", tok[0]);
		goto out;
	}
	if (!g.cfg->deliver.hop_count) {
		reply(fd, "ERR this server has no delivery stage (--deliver-to): nothing is queued here\n");
		goto out;
	}
	/* --reason=TEXT (percent-encoded by dotspool-ctl: %XX for spaces, controls, '%', 8-bit) */
	char reason[256] = "";
	unsigned first = 1;
	if (ntok > 1 && !strncmp(tok[1], "--reason=", 9)) {
		if (pct_decode(tok[1] + 9, reason, sizeof(reason)) < 0) {
			reply(fd, "ERR --reason: bad percent-encoding or longer than 255 bytes\n");
			goto out;
		}
		first = 2;
	}
	run_command(fd, action, tok + first, ntok - first, &cr, user, reason);
out:
	free(line);
	free(tok);
}

static void *ctl_main(void *arg)
{
	(void)arg;
	while (!atomic_load(&g.stop)) {
		struct pollfd p[2] = {{.fd = g.lfd, .events = POLLIN}, {.fd = g.stop_fd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int fd = accept4(g.lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(fd);
		close(fd);
	}
	return NULL;
}

int io_ctlsock_start(const struct io_config *cfg, struct io_worker *const *workers, unsigned n,
		     struct obs_log_ring *log)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int ret;

	DS_ASSERT(n > 0 && n <= IO_THREADS_MAX);
	g.cfg = cfg;
	g.workers = workers;
	g.n = n;
	g.log = log;
	atomic_store(&g.stop, false);
	if (cfg->control_socket[0])
		ret = snprintf(g.path, sizeof(g.path), "%s", cfg->control_socket);
	else
		ret = snprintf(g.path, sizeof(g.path), "%s/%s", cfg->spool_dir, IO_CTL_SOCKET_NAME);
	if (ret < 0 || (size_t)ret >= sizeof(g.path)) {
		fprintf(stderr,
			"dotspool: warning: spool path too long for a control socket (%zu bytes max): "
			"dotspool-ctl's changing commands are not available\n",
			sizeof(g.path) - sizeof(IO_CTL_SOCKET_NAME) - 1);
		g.path[0] = 0;
		return 0;
	}
	memcpy(sa.sun_path, g.path, strlen(g.path) + 1);
	/* We hold the spool lock: a socket file left there is a dead server's. */
	unlink(g.path);
	g.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (g.lfd < 0)
		return -errno;
	if (bind(g.lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(g.path, 0600) < 0 ||
	    listen(g.lfd, 16) < 0) {
		ret = -errno;
		fprintf(stderr, "dotspool: control socket %s: %s\n", g.path, strerror(-ret));
		close(g.lfd);
		g.lfd = -1;
		unlink(g.path);
		return ret;
	}
	g.stop_fd = eventfd(0, EFD_CLOEXEC);
	if (g.stop_fd < 0 || (ret = pthread_create(&g.thread, NULL, ctl_main, NULL)) != 0) {
		ret = g.stop_fd < 0 ? -errno : -ret;
		if (g.stop_fd >= 0)
			close(g.stop_fd);
		g.stop_fd = -1;
		close(g.lfd);
		g.lfd = -1;
		unlink(g.path);
		return ret;
	}
	g.running = true;
	return 0;
}

void io_ctlsock_ready(void)
{
	atomic_store(&g.ready, true);
}

void io_ctlsock_stop(void)
{
	uint64_t one = 1;

	if (!g.running)
		return;
	atomic_store(&g.stop, true);
	if (write(g.stop_fd, &one, sizeof(one)) < 0)
		fprintf(stderr, "dotspool: control socket: cannot stop its thread: %s\n", strerror(errno));
	pthread_join(g.thread, NULL);
	g.running = false;
	close(g.lfd);
	close(g.stop_fd);
	g.lfd = g.stop_fd = -1;
	unlink(g.path);
}

void io_ctlsock_fini(void)
{
	for (unsigned i = 0; i < IO_THREADS_MAX; i++) {
		struct io_ctl_batch *b = io_ctlsock_take(i);
		while (b) {
			struct io_ctl_batch *next = b->next;
			io_ctlsock_batch_done(b);
			b = next;
		}
	}
}
