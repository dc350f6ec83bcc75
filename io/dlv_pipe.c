/* SPDX-License-Identifier: MIT */
/*
 * The pipe: transport (see dlv_pipe.h): the message goes to a program's
 * stdin by io_uring writes, its output is read by io_uring reads, and its
 * exit is seen through a pidfd polled on the ring, so nothing here blocks
 * the worker but the posix_spawn itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dlv_pipe.h"
#include "ds_assert.h"
#include "ds_clock.h"

extern char **environ;

#define DLV_PIPE_LINE_MAX 200

struct dlv_pipe {
	struct io_ring *ring;
	pid_t pid;
	int in_fd, out_fd, pidfd;
	bool write_armed, read_armed, poll_armed;
	bool in_closed, out_eof, exited, killed, read_error;
	int wstatus;
	int64_t exit_ms;
	uint64_t body_off, body_size;
	uint32_t buf_len, buf_off;
	int (*read)(void *ctx, uint64_t off, void *buf, size_t cap);
	void *read_ctx;
	dlv_pipe_ud_fn ud;
	void *ud_ctx;
	uint32_t line_len;
	bool line_done;
	char line[DLV_PIPE_LINE_MAX + 1];
	uint8_t out[512];
	uint8_t buf[DLV_PIPE_BUF_BYTES];
};

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* argv and envp of the run, in one allocation freed right after the spawn. */
static char **pipe_argv(const char *program, const struct ds_envelope *env)
{
	size_t n = 5 + env->rcpt_count;
	char **argv = calloc(n, sizeof(*argv));
	if (!argv)
		return NULL;
	size_t i = 0;
	argv[i++] = (char *)program;
	argv[i++] = "-f";
	argv[i++] = (char *)env->mail_from;
	argv[i++] = "--";
	for (uint32_t r = 0; r < env->rcpt_count; r++)
		argv[i++] = (char *)env->rcpt[r].addr;
	argv[i] = NULL;
	return argv;
}

static char *env_var(const char *name, const char *value)
{
	size_t len = strlen(name) + strlen(value) + 2;
	char *s = malloc(len);
	if (s)
		snprintf(s, len, "%s=%s", name, value);
	return s;
}

/* DS_QUEUE_ID, DS_SENDER, DS_RECIPIENTS, DS_SIZE, DS_CLIENT_ADDR, DS_HELO, DS_RECEIVED_AT, DS_ATTEMPT */
#define PIPE_ENV_OWN 8

static char **pipe_envp(const struct ds_envelope *env, const char *queue_id, uint32_t attempt)
{
	size_t base = 0;
	while (environ && environ[base])
		base++;
	char **envp = calloc(base + PIPE_ENV_OWN + 1, sizeof(*envp));
	if (!envp)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < base; i++)
		if (strncmp(environ[i], "DS_QUEUE_ID=", 12) && strncmp(environ[i], "DS_SENDER=", 10) &&
		    strncmp(environ[i], "DS_RECIPIENTS=", 14))
			envp[k++] = environ[i];
	size_t rl = 1;
	for (uint32_t r = 0; r < env->rcpt_count; r++)
		rl += strlen(env->rcpt[r].addr) + 1;
	char *rcpts = malloc(rl);
	if (!rcpts) {
		free(envp);
		return NULL;
	}
	rcpts[0] = 0;
	for (uint32_t r = 0; r < env->rcpt_count; r++) {
		if (r)
			strcat(rcpts, " ");
		strcat(rcpts, env->rcpt[r].addr);
	}
	char num[3][32];
	snprintf(num[0], sizeof(num[0]), "%llu", (unsigned long long)env->body_size);
	snprintf(num[1], sizeof(num[1]), "%lld", (long long)(env->received_at_us / 1000000));
	snprintf(num[2], sizeof(num[2]), "%u", attempt);
	size_t first = k;
	envp[k++] = env_var("DS_QUEUE_ID", queue_id);
	envp[k++] = env_var("DS_SENDER", env->mail_from);
	envp[k++] = env_var("DS_RECIPIENTS", rcpts);
	envp[k++] = env_var("DS_SIZE", num[0]);
	envp[k++] = env_var("DS_CLIENT_ADDR", env->client_addr ? env->client_addr : "");
	envp[k++] = env_var("DS_HELO", env->helo ? env->helo : "");
	envp[k++] = env_var("DS_RECEIVED_AT", num[1]);
	envp[k++] = env_var("DS_ATTEMPT", num[2]);
	DS_ASSERT(k - first == PIPE_ENV_OWN);
	envp[k] = NULL;
	free(rcpts);
	for (size_t i = first; i < k; i++)
		if (!envp[i]) {
			for (size_t f = first; f < k; f++)
				free(envp[f]);
			free(envp);
			return NULL;
		}
	return envp;
}

/* The server's environment is borrowed; the last PIPE_ENV_OWN entries are ours. */
static void envp_free(char **envp)
{
	if (!envp)
		return;
	size_t n = 0;
	while (envp[n])
		n++;
	DS_ASSERT(n >= PIPE_ENV_OWN);
	for (size_t i = n - PIPE_ENV_OWN; i < n; i++)
		free(envp[i]);
	free(envp);
}

int dlv_pipe_start(struct dlv_pipe **out, struct io_ring *ring, const char *program,
		   const struct ds_envelope *env, const char *queue_id, uint32_t attempt, uint64_t body_size,
		   int (*read)(void *ctx, uint64_t off, void *buf, size_t cap), void *read_ctx,
		   dlv_pipe_ud_fn ud, void *ud_ctx)
{
	struct dlv_pipe *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	*p = (struct dlv_pipe){.ring = ring,
			       .pid = -1,
			       .in_fd = -1,
			       .out_fd = -1,
			       .pidfd = -1,
			       .body_size = body_size,
			       .read = read,
			       .read_ctx = read_ctx,
			       .ud = ud,
			       .ud_ctx = ud_ctx};
	int in[2] = {-1, -1}, outp[2] = {-1, -1};
	char **argv = pipe_argv(program, env);
	char **envp = pipe_envp(env, queue_id, attempt);
	posix_spawn_file_actions_t fa;
	int ret = -ENOMEM;
	if (!argv || !envp)
		goto fail;
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(outp, O_CLOEXEC) < 0) {
		ret = -errno;
		goto fail;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
	posix_spawn_file_actions_adddup2(&fa, outp[1], 2);
	/* The worker blocks SIGTERM/INT/HUP (main takes them): the program starts with none blocked. */
	posix_spawnattr_t attr;
	posix_spawnattr_init(&attr);
	sigset_t none, dfl;
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	int err = posix_spawn(&p->pid, program, &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (err) {
		ret = -err;
		p->pid = -1;
		goto fail;
	}
	close(in[0]);
	close(outp[1]);
	in[0] = outp[1] = -1;
	p->in_fd = in[1];
	p->out_fd = outp[0];
	p->pidfd = pidfd_open_(p->pid);
	if (p->pidfd < 0) {
		ret = -errno;
		goto fail;
	}
	free(argv);
	envp_free(envp);
	*out = p;
	return 0;
fail:
	free(argv);
	envp_free(envp);
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (outp[i] >= 0)
			close(outp[i]);
	}
	p->in_fd = p->out_fd = -1;
	dlv_pipe_free(p);
	return ret;
}

unsigned dlv_pipe_pump(struct dlv_pipe *p)
{
	unsigned armed = 0;
	if (!p->in_closed && !p->write_armed) {
		if (p->buf_off == p->buf_len) {
			int n = p->read(p->read_ctx, p->body_off, p->buf, sizeof(p->buf));
			if (n <= 0) {
				/* The end, or the body cannot be read: close stdin; a read error defers. */
				p->read_error = n < 0;
				if (n < 0 && p->pid > 0)
					dlv_pipe_kill(p);
				close(p->in_fd);
				p->in_fd = -1;
				p->in_closed = true;
			} else {
				p->buf_off = 0;
				p->buf_len = (uint32_t)n;
				p->body_off += (uint64_t)n;
			}
		}
		if (!p->in_closed) {
			struct io_uring_sqe *sqe = io_sqe(p->ring);
			io_uring_prep_write(sqe, p->in_fd, p->buf + p->buf_off, p->buf_len - p->buf_off, 0);
			io_uring_sqe_set_data64(sqe, p->ud(p->ud_ctx, DLV_PIPE_WRITE));
			p->write_armed = true;
			armed++;
		}
	}
	if (!p->out_eof && !p->read_armed) {
		struct io_uring_sqe *sqe = io_sqe(p->ring);
		io_uring_prep_read(sqe, p->out_fd, p->out, sizeof(p->out), 0);
		io_uring_sqe_set_data64(sqe, p->ud(p->ud_ctx, DLV_PIPE_READ));
		p->read_armed = true;
		armed++;
	}
	if (!p->exited && !p->poll_armed) {
		struct io_uring_sqe *sqe = io_sqe(p->ring);
		io_uring_prep_poll_add(sqe, p->pidfd, POLLIN);
		io_uring_sqe_set_data64(sqe, p->ud(p->ud_ctx, DLV_PIPE_POLL));
		p->poll_armed = true;
		armed++;
	}
	return armed;
}

static void line_take(struct dlv_pipe *p, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n && !p->line_done; i++) {
		uint8_t ch = b[i];
		if (ch == '\n') {
			if (p->line_len)
				p->line_done = true;
			continue;
		}
		if (ch == '\r')
			continue;
		if (p->line_len < DLV_PIPE_LINE_MAX)
			p->line[p->line_len++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	p->line[p->line_len] = 0;
}

void dlv_pipe_complete(struct dlv_pipe *p, enum dlv_pipe_op op, int res)
{
	switch (op) {
	case DLV_PIPE_WRITE:
		p->write_armed = false;
		if (res <= 0) {
			/* EPIPE: the program stopped reading; its exit status decides. */
			close(p->in_fd);
			p->in_fd = -1;
			p->in_closed = true;
		} else {
			p->buf_off += (uint32_t)res;
		}
		return;
	case DLV_PIPE_READ:
		p->read_armed = false;
		if (res <= 0)
			p->out_eof = true;
		else
			line_take(p, p->out, (size_t)res);
		return;
	case DLV_PIPE_POLL: {
		p->poll_armed = false;
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid((idtype_t)3 /* P_PIDFD */, (id_t)p->pidfd, &si, WEXITED | WNOHANG) == 0 &&
		    si.si_pid) {
			p->exited = true;
			p->exit_ms = ds_mono_ms();
			p->wstatus = si.si_code == CLD_EXITED ? (si.si_status & 0xff) : -si.si_status;
			p->pid = -1;
		}
		return;
	}
	}
}

bool dlv_pipe_done(const struct dlv_pipe *p, int64_t now_ms)
{
	return p->exited && (p->out_eof || now_ms >= p->exit_ms + 1000);
}

static void outcome_set(struct dlv_outcome *o, enum dlv_class cls, uint16_t code, const char *esc,
			const char *fmt, const char *line, int num)
{
	memset(o, 0, sizeof(*o));
	o->cls = cls;
	o->stage = DLV_STAGE_DOT;
	o->code = code;
	snprintf(o->esc, sizeof(o->esc), "%s", esc);
	snprintf(o->text, sizeof(o->text), fmt, num, line);
}

void dlv_pipe_outcome(const struct dlv_pipe *p, struct dlv_outcome *o)
{
	const char *line = p->line_len ? p->line : "no output";
	if (p->killed)
		outcome_set(o, DLV_DEFERRED, 451, "4.3.0",
			    "pipe program over its time limit, killed (%d): %s", line, SIGKILL);
	else if (p->read_error)
		outcome_set(o, DLV_DEFERRED, 451, "4.3.0", "spool read error, program killed (%d): %s", line,
			    SIGKILL);
	else if (p->wstatus == 0)
		outcome_set(o, DLV_DELIVERED, 250, "2.0.0", "pipe program exit %d: %s", line, 0);
	else if (p->wstatus == 75)
		outcome_set(o, DLV_DEFERRED, 451, "4.3.0", "pipe program exit %d (EX_TEMPFAIL): %s", line,
			    75);
	else if (p->wstatus < 0)
		outcome_set(o, DLV_FAILED, 554, "5.3.0", "pipe program killed by signal %d: %s", line,
			    -p->wstatus);
	else
		outcome_set(o, DLV_FAILED, 554, "5.3.0", "pipe program exit %d: %s", line, p->wstatus);
}

void dlv_pipe_kill(struct dlv_pipe *p)
{
	if (p->exited || p->pidfd < 0)
		return;
	p->killed = true;
	syscall(SYS_pidfd_send_signal, p->pidfd, SIGKILL, NULL, 0);
}

void dlv_pipe_free(struct dlv_pipe *p)
{
	if (!p)
		return;
	DS_ASSERT(!p->write_armed && !p->read_armed && !p->poll_armed);
	if (p->pid > 0) {
		kill(p->pid, SIGKILL);
		waitpid(p->pid, NULL, 0);
	}
	if (p->in_fd >= 0)
		close(p->in_fd);
	if (p->out_fd >= 0)
		close(p->out_fd);
	if (p->pidfd >= 0)
		close(p->pidfd);
	free(p);
}
