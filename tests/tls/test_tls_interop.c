/* SPDX-License-Identifier: MIT */
/*
 * Interoperability: io/tls.c behind a real socket on 127.0.0.1 (plain
 * blocking I/O here, the shape of the io layer's loop) against OpenSSL
 * clients: Python's ssl module (full + resumed handshake, 100 KiB echo) and
 * `openssl s_client`. The server echoes each received line as "250 <line>".
 * Exits 77 (skip) if python3 or openssl is missing.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ds_assert.h"
#include "tls_testlib.h"

#define LINE_MAX_BYTES (128 * 1024)
#define IO_TIMEOUT_MS  10000

static int fails;
#define CHECK(cond)                                                                                          \
	do {                                                                                                 \
		if (!(cond)) {                                                                               \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                      \
			fails++;                                                                             \
		}                                                                                            \
	} while (0)

static int send_output(int fd, struct io_tls_conn *c)
{
	size_t n = 0;
	const uint8_t *p;
	while ((p = io_tls_output(c, &n)) != NULL) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0)
			return -errno;
		io_tls_output_consumed(c, (size_t)w);
	}
	return 0;
}

/* Write all of buf through TLS, sending as the output fills. */
static int tls_send_all(int fd, struct io_tls_conn *c, const uint8_t *buf, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t r = io_tls_write(c, buf + off, len - off);
		if (r == -EAGAIN) {
			if (send_output(fd, c) < 0)
				return -EIO;
			continue;
		}
		if (r < 0)
			return (int)r;
		off += (size_t)r;
	}
	return send_output(fd, c);
}

/* Serve one connection. Returns the number of lines echoed, or -1. */
static int serve_one(int lfd, struct io_tls_server *s, char *desc, size_t desc_cap)
{
	struct pollfd pfd = {.fd = lfd, .events = POLLIN};
	if (poll(&pfd, 1, IO_TIMEOUT_MS) != 1)
		return -1;
	int fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		return -1;
	struct io_tls_conn *c = NULL;
	DS_ASSERT(io_tls_conn_create(&c, s) == 0);
	static uint8_t line[LINE_MAX_BYTES];
	size_t line_len = 0;
	int lines = 0, result = -1;
	bool done = false;
	uint8_t rbuf[32 * 1024], pt[16 * 1024];
	for (;;) {
		pfd.fd = fd;
		if (poll(&pfd, 1, IO_TIMEOUT_MS) != 1)
			break;
		ssize_t got = recv(fd, rbuf, sizeof(rbuf), 0);
		if (got <= 0) {
			result = lines; /* peer gone */
			break;
		}
		size_t off = 0;
		bool closed = false, bad = false;
		while (off < (size_t)got && !closed && !bad) {
			off += io_tls_feed(c, rbuf + off, (size_t)got - off);
			if (!done) {
				int r = io_tls_handshake(c);
				if (r == 0) {
					done = true;
					CHECK(io_tls_describe(c, desc, desc_cap) > 0);
				} else if (r != -EAGAIN) {
					fprintf(stderr, "handshake: %d\n", r);
					bad = true;
				}
			}
			ssize_t r;
			while (done && (r = io_tls_read(c, pt, sizeof(pt))) > 0) {
				for (ssize_t i = 0; i < r; i++) {
					DS_ASSERT(line_len < sizeof(line));
					line[line_len++] = pt[i];
					if (pt[i] == '\n') {
						if (tls_send_all(fd, c, (const uint8_t *)"250 ", 4) < 0 ||
						    tls_send_all(fd, c, line, line_len) < 0)
							bad = true;
						line_len = 0;
						lines++;
					}
				}
			}
			if (done && r == 0)
				closed = true;
			else if (done && r != -EAGAIN)
				bad = true;
		}
		send_output(fd, c);
		if (closed) {
			io_tls_close_notify(c);
			send_output(fd, c);
			result = lines;
			break;
		}
		if (bad)
			break;
	}
	io_tls_conn_destroy(c);
	close(fd);
	return result;
}

static pid_t spawn(const char *cmd)
{
	pid_t pid = fork();
	DS_ASSERT(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static int wait_exit(pid_t pid)
{
	int st = 0;
	for (int i = 0; i < 200; i++) { /* 20 s */
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
		usleep(100 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return 124;
}

static void read_file(const char *path, char *buf, size_t cap)
{
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return;
	size_t n = fread(buf, 1, cap - 1, f);
	buf[n] = '\0';
	fclose(f);
}

int main(void)
{
	if (system("command -v python3 >/dev/null && command -v openssl >/dev/null") != 0) {
		fprintf(stderr, "SKIP: python3 or openssl missing\n");
		return 77;
	}
	char dir[64];
	if (tc_make_certs(dir, sizeof(dir)) != 0) {
		fprintf(stderr, "SKIP: cannot generate certificates\n");
		return 77;
	}
	char ca[128], cert[128], key[128], out[128], err[256], cmd[1024], text[4096], desc[128];
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	snprintf(out, sizeof(out), "%s/client.out", dir);

	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	DS_ASSERT(lfd >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	DS_ASSERT(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 8) == 0);
	socklen_t sl = sizeof(sa);
	DS_ASSERT(getsockname(lfd, (struct sockaddr *)&sa, &sl) == 0);
	int port = ntohs(sa.sin_port);

	static const char *const kinds[] = {"server", "server-rsa"};
	for (int k = 0; k < 2; k++) {
		snprintf(cert, sizeof(cert), "%s/%s.pem", dir, kinds[k]);
		snprintf(key, sizeof(key), "%s/%s.key", dir, kinds[k]);
		struct io_tls_server *s = NULL;
		DS_ASSERT(io_tls_server_create(&s, cert, key, 4, err, sizeof(err)) == 0);

		/* Python ssl: full handshake, then resumed with its ticket. */
		snprintf(cmd, sizeof(cmd), "python3 '%s' %d '%s' > '%s'", DS_INTEROP_PY, port, ca, out);
		pid_t pid = spawn(cmd);
		for (int i = 0; i < 2; i++) {
			int lines = serve_one(lfd, s, desc, sizeof(desc));
			CHECK(lines == 2);
			fprintf(stderr, "%s python conn %d: %s, %d lines\n", kinds[k], i, desc, lines);
		}
		CHECK(wait_exit(pid) == 0);
		read_file(out, text, sizeof(text));
		fprintf(stderr, "python client said:\n%s", text);
		const char *suite = k == 0 ? "ECDHE-ECDSA-AES128-GCM-SHA256" : "ECDHE-RSA-AES128-GCM-SHA256";
		char want[256];
		snprintf(want, sizeof(want), "TLSv1.2 %s full\nTLSv1.2 %s reused\n", suite, suite);
		CHECK(strcmp(text, want) == 0);

		/* openssl s_client, verifying the chain: one line echoed. */
		snprintf(cmd, sizeof(cmd),
			 "(printf 'EHLO s_client\\r\\n'; sleep 1) | openssl s_client -connect 127.0.0.1:%d "
			 "-CAfile '%s' -verify_return_error -verify_hostname localhost -servername localhost "
			 "-quiet -no_ign_eof > '%s' 2>/dev/null",
			 port, ca, out);
		pid = spawn(cmd);
		int lines = serve_one(lfd, s, desc, sizeof(desc));
		CHECK(lines == 1);
		CHECK(wait_exit(pid) == 0);
		read_file(out, text, sizeof(text));
		CHECK(strcmp(text, "250 EHLO s_client\r\n") == 0);
		fprintf(stderr, "%s s_client: %s, said %s", kinds[k], desc, text);

		CHECK(io_tls_server_conn_count(s) == 0);
		io_tls_server_destroy(s);
	}
	close(lfd);
	tc_remove_dir(dir);
	if (fails) {
		fprintf(stderr, "%d check(s) failed\n", fails);
		return 1;
	}
	fprintf(stderr, "interop OK\n");
	return 0;
}
