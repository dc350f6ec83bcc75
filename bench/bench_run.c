/* SPDX-License-Identifier: MIT */
#include "bench.h"

#include <errno.h>
#include <liburing.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_nofile.h"
#include "bench_msg.h"
#include "bench_sched.h"

const char *const bench_phase_names[BENCH_PH_COUNT] = {
	"connect", "banner", "ehlo", "starttls", "mail", "rcpt", "data", "final_dot", "message",
};

const char *const bench_err_names[BENCH_ERR_COUNT] = {
	"connect", "timeout", "closed", "protocol", "queue_full", "tls",
};

#define RBUF_BYTES	 16384
#define REPLY_LINE_MAX	 1024
#define CBUF_BYTES	 (BENCH_RCPT_MAX * (BENCH_ADDR_MAX + 16) + 2 * (BENCH_ADDR_MAX + 64))
#define OP_CONNECT	 1u
#define OP_RECV		 2u
#define OP_SEND		 3u
#define OP_SEND_TLS	 4u
#define TLS_BUF_BYTES	 65536 /* ciphertext each way: room for several 16 KiB records */
#define TLS_WRITE_MAX	 16384
#define TICK_NS		 100000000ull
#define CONNECT_RETRY_NS 10000000ull
#define QUIT_DRAIN_NS	 2000000000ull

enum conn_state {
	CS_FREE, /* no socket */
	CS_CONNECTING,
	CS_BANNER,
	CS_EHLO,
	CS_STARTTLS,  /* STARTTLS sent, then the handshake */
	CS_IDLE,      /* connected, no message */
	CS_CMDS,      /* MAIL/RCPT/DATA replies outstanding */
	CS_BODY,      /* final dot sent, final reply(s) outstanding */
	CS_ABORT_DOT, /* got 354 for a message we gave up on: sent an empty body */
	CS_RSET,
	CS_QUIT,
	CS_CLOSING, /* shut down, waiting for outstanding operations */
};

struct send_seg {
	const char *buf;
	size_t len;
	size_t off;
	bool is_body;
};

struct conn {
	uint32_t idx;
	uint32_t gen; /* bumped when the socket is released: stale parsing stops */
	int fd;
	enum conn_state st;
	uint32_t inflight; /* SQEs not yet completed */
	bool recv_posted;
	bool send_posted;
	bool in_avail;
	bool pipelining_ok;
	/* STARTTLS: once tls_on, all bytes go through ssl and the cin/cout ciphertext buffers */
	bool tls_on;
	bool tls_hs;
	bool cout_has_body; /* cout holds the end of a message body: its send times the final dot */
	mbedtls_ssl_context *ssl;
	unsigned char *cin;
	size_t cin_len;
	size_t cin_off;
	unsigned char *cout;
	size_t cout_len;
	size_t cout_off;
	uint64_t retry_at_ns;
	uint64_t deadline_ns; /* 0: not waiting */
	uint64_t t_phase;     /* send time of the step whose reply we wait for */
	char *rbuf;
	size_t rlen;
	char *cbuf;
	size_t clen;
	char *mbuf;
	size_t mlen;
	struct send_seg segs[2];
	uint32_t seg_count;
	/* current message */
	bool has_msg;
	bool msg_started; /* MAIL sent */
	bool msg_failed;
	uint64_t seq;
	uint64_t sched_ns;
	size_t msg_bytes;
	uint32_t reply_next; /* 0 = MAIL, 1..rcpts = RCPT, rcpts+1 = DATA */
	uint32_t cmds_sent;  /* replies expected before the body */
	uint32_t rcpt_accepted;
	uint32_t finals_expected;
	uint32_t finals_got;
	uint32_t finals_ok;
	uint64_t t_cmd[BENCH_RCPT_MAX + 2];
	uint64_t t_dot;
};

struct engine {
	const struct bench_opts *o;
	struct bench_result *r;
	struct io_uring ring;
	struct conn *conns;
	/*
	 * Connections with no message, oldest first: a FIFO ring of connection
	 * indexes (a connection is on it at most once, so connections slots
	 * suffice). The connection idle the longest takes the next message, as
	 * one of many independent senders would; a stack handed nearly every
	 * message to the few most recently freed connections.
	 */
	uint32_t *avail;
	uint32_t avail_head;
	uint32_t avail_len;
	/* open loop FIFO of due messages */
	uint64_t *pend_seq;
	uint64_t *pend_ns;
	uint32_t pend_cap;
	uint32_t pend_head;
	uint32_t pend_len;
	struct bench_sched sched;
	bool open_loop;
	bool started; /* warm-up over */
	bool stopping;
	uint64_t start_ns;
	uint64_t end_ns; /* closed loop with duration: stop issuing at */
	uint64_t issued;
	uint64_t last_done_ns;
	uint64_t in_flight; /* messages assigned to a connection */
	uint64_t next_tick_ns;
	uint64_t last_progress_ns;
	uint32_t pid;
	bool tls_ready;
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_ssl_config tls_conf;
	size_t mcap; /* bytes of each connection's message buffer */
};

int bench_result_init(struct bench_result *r)
{
	memset(r, 0, sizeof(*r));
	for (int i = 0; i < BENCH_PH_COUNT; i++) {
		int rc = bench_hist_init(&r->hist[i], BENCH_HIST_MAX_NS, BENCH_HIST_SUB_BITS_DEFAULT);
		if (rc < 0) {
			for (int j = 0; j < i; j++)
				bench_hist_free(&r->hist[j]);
			return rc;
		}
	}
	return 0;
}

void bench_result_free(struct bench_result *r)
{
	for (int i = 0; i < BENCH_PH_COUNT; i++)
		bench_hist_free(&r->hist[i]);
}

static struct io_uring_sqe *eng_sqe(struct engine *e)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
	if (sqe == NULL) {
		io_uring_submit(&e->ring);
		sqe = io_uring_get_sqe(&e->ring);
	}
	DS_ASSERT(sqe != NULL);
	return sqe;
}

static void conn_post(struct engine *e, struct conn *c, struct io_uring_sqe *sqe, uint32_t op)
{
	io_uring_sqe_set_data64(sqe, ((uint64_t)c->idx << 3) | op);
	c->inflight++;
}

static void conn_post_recv(struct engine *e, struct conn *c)
{
	if (c->recv_posted || c->st == CS_CLOSING || c->fd < 0)
		return;
	struct io_uring_sqe *sqe = eng_sqe(e);
	if (c->tls_on) {
		if (c->cin_off > 0) {
			memmove(c->cin, c->cin + c->cin_off, c->cin_len - c->cin_off);
			c->cin_len -= c->cin_off;
			c->cin_off = 0;
		}
		DS_ASSERT(c->cin_len < TLS_BUF_BYTES);
		io_uring_prep_recv(sqe, c->fd, c->cin + c->cin_len, TLS_BUF_BYTES - c->cin_len, 0);
	} else {
		DS_ASSERT(c->rlen < RBUF_BYTES);
		io_uring_prep_recv(sqe, c->fd, c->rbuf + c->rlen, RBUF_BYTES - c->rlen, 0);
	}
	conn_post(e, c, sqe, OP_RECV);
	c->recv_posted = true;
}

static void conn_close(struct engine *e, struct conn *c, int err);

/* mbedTLS BIO callbacks: ciphertext moves through cin/cout, io_uring moves those. */
static int tls_send_cb(void *ctx, const unsigned char *buf, size_t len)
{
	struct conn *c = ctx;
	size_t space = TLS_BUF_BYTES - c->cout_len;
	if (space == 0)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	size_t n = DS_MIN(len, space);
	memcpy(c->cout + c->cout_len, buf, n);
	c->cout_len += n;
	return (int)n;
}

static int tls_recv_cb(void *ctx, unsigned char *buf, size_t len)
{
	struct conn *c = ctx;
	size_t avail = c->cin_len - c->cin_off;
	if (avail == 0)
		return MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = DS_MIN(len, avail);
	memcpy(buf, c->cin + c->cin_off, n);
	c->cin_off += n;
	if (c->cin_off == c->cin_len)
		c->cin_off = c->cin_len = 0;
	return (int)n;
}

/* TLS: encrypt queued plaintext into cout (not during the handshake) and send cout. */
static void conn_kick_send_tls(struct engine *e, struct conn *c)
{
	bool body = false;
	while (!c->tls_hs && c->seg_count > 0) {
		struct send_seg *s = &c->segs[0];
		body |= s->is_body;
		size_t chunk = DS_MIN(s->len - s->off, (size_t)TLS_WRITE_MAX);
		int n = mbedtls_ssl_write(c->ssl, (const unsigned char *)s->buf + s->off, chunk);
		if (n == MBEDTLS_ERR_SSL_WANT_WRITE)
			break; /* cout full: retried with the same arguments once it drained */
		if (n < 0) {
			conn_close(e, c, BENCH_ERR_TLS);
			return;
		}
		s->off += (size_t)n;
		if (s->off == s->len) {
			c->segs[0] = c->segs[1];
			c->seg_count--;
		}
	}
	if (body)
		c->cout_has_body = true;
	if (c->cout_len == c->cout_off)
		return;
	if (c->cout_has_body)
		c->t_dot = bench_now_ns();
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_send(sqe, c->fd, c->cout + c->cout_off, c->cout_len - c->cout_off, MSG_NOSIGNAL);
	conn_post(e, c, sqe, OP_SEND_TLS);
	c->send_posted = true;
}

static void conn_kick_send(struct engine *e, struct conn *c)
{
	if (c->send_posted || c->st == CS_CLOSING)
		return;
	if (c->tls_on) {
		conn_kick_send_tls(e, c);
		return;
	}
	if (c->seg_count == 0)
		return;
	struct send_seg *s = &c->segs[0];
	DS_ASSERT(s->off < s->len);
	if (s->is_body)
		c->t_dot = bench_now_ns(); /* this send carries the final dot */
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_send(sqe, c->fd, s->buf + s->off, s->len - s->off, MSG_NOSIGNAL);
	conn_post(e, c, sqe, OP_SEND);
	c->send_posted = true;
}

static void conn_queue(struct engine *e, struct conn *c, const char *buf, size_t len, bool is_body)
{
	DS_ASSERT(c->seg_count < DS_ARRAY_SIZE(c->segs));
	DS_ASSERT(len > 0);
	c->segs[c->seg_count++] = (struct send_seg){.buf = buf, .len = len, .off = 0, .is_body = is_body};
	conn_kick_send(e, c);
}

static void conn_deadline(struct engine *e, struct conn *c)
{
	c->deadline_ns = bench_now_ns() + (uint64_t)e->o->timeout_ms * 1000000ull;
}

static void result_code(struct engine *e, int code)
{
	DS_ASSERT(code >= 0 && code < 1000);
	e->r->code_counts[code]++;
}

/* Message bookkeeping --------------------------------------------------- */

/* Process-wide message number: threads interleave, so Message-IDs never collide. */
static uint64_t msg_gid(const struct engine *e, const struct conn *c)
{
	uint32_t n = e->o->thread_count ? e->o->thread_count : 1;
	return e->o->id_base + c->seq * n + e->o->thread_index;
}

static void msg_finish(struct engine *e, struct conn *c, bool ok)
{
	DS_ASSERT(c->has_msg);
	uint64_t now = bench_now_ns();
	if (ok) {
		e->r->messages_ok++;
		e->r->bytes_ok += c->msg_bytes;
	} else {
		e->r->messages_failed++;
	}
	DS_ASSERT(e->in_flight > 0);
	e->in_flight--;
	e->last_done_ns = now;
	c->has_msg = false;
	c->msg_started = false;
}

static void msg_fail_err(struct engine *e, struct conn *c, enum bench_err err)
{
	e->r->err_counts[err]++;
	if (c->has_msg)
		msg_finish(e, c, false);
}

static void conn_release_slot(struct engine *e, struct conn *c);

static void conn_close(struct engine *e, struct conn *c, int err)
{
	if (c->st == CS_CLOSING || c->st == CS_FREE)
		return;
	if (c->has_msg) {
		if (err >= 0)
			msg_fail_err(e, c, (enum bench_err)err);
		else
			msg_finish(e, c, false);
	} else if (err >= 0 && err != BENCH_ERR_CLOSED && c->st != CS_QUIT) {
		/* An idle connection closed by the server is not an error; a failed connect is. */
		e->r->err_counts[err]++;
	}
	shutdown(c->fd, SHUT_RDWR);
	c->st = CS_CLOSING;
	c->deadline_ns = 0;
	c->seg_count = 0;
	if (c->inflight == 0)
		conn_release_slot(e, c);
}

/* Closed loop: may this connection take another message? */
static bool closed_loop_more(struct engine *e)
{
	if (e->stopping)
		return false;
	if (e->o->messages > 0)
		return e->issued < e->o->messages;
	return bench_now_ns() < e->end_ns;
}

static void conn_start_msg(struct engine *e, struct conn *c);
static void conn_connect(struct engine *e, struct conn *c);

static bool take_msg(struct engine *e, struct conn *c)
{
	if (!e->started)
		return false;
	if (e->open_loop) {
		if (e->pend_len == 0)
			return false;
		c->seq = e->pend_seq[e->pend_head];
		c->sched_ns = e->pend_ns[e->pend_head];
		e->pend_head = (e->pend_head + 1) % e->pend_cap;
		e->pend_len--;
	} else {
		if (!closed_loop_more(e))
			return false;
		c->seq = e->issued;
		c->sched_ns = 0;
	}
	e->issued += e->open_loop ? 0 : 1;
	e->in_flight++;
	c->has_msg = true;
	c->msg_started = false;
	c->msg_failed = false;
	return true;
}

/* Park c at the tail of the avail FIFO. */
static void avail_push(struct engine *e, struct conn *c)
{
	DS_ASSERT(!c->in_avail && e->avail_len < e->o->connections);
	e->avail[(e->avail_head + e->avail_len) % e->o->connections] = c->idx;
	e->avail_len++;
	c->in_avail = true;
}

/* The connection idle the longest, off the head of the avail FIFO. */
static struct conn *avail_pop(struct engine *e)
{
	DS_ASSERT(e->avail_len > 0);
	struct conn *c = &e->conns[e->avail[e->avail_head]];
	e->avail_head = (e->avail_head + 1) % e->o->connections;
	e->avail_len--;
	DS_ASSERT(c->in_avail);
	c->in_avail = false;
	return c;
}

/* A connection with no message: give it one, or park it on the avail FIFO. */
static void conn_ready(struct engine *e, struct conn *c)
{
	DS_ASSERT(!c->has_msg);
	DS_ASSERT(c->st == CS_IDLE || c->st == CS_FREE);
	if (c->st == CS_FREE && c->retry_at_ns > bench_now_ns())
		return; /* the tick retries it */
	if (take_msg(e, c)) {
		if (c->st == CS_IDLE)
			conn_start_msg(e, c);
		else
			conn_connect(e, c);
		return;
	}
	if (!c->in_avail)
		avail_push(e, c);
}

static void conn_release_slot(struct engine *e, struct conn *c)
{
	DS_ASSERT(c->inflight == 0);
	close(c->fd);
	c->fd = -1;
	c->gen++;
	c->st = CS_FREE;
	c->recv_posted = false;
	c->send_posted = false;
	c->seg_count = 0;
	c->rlen = 0;
	c->deadline_ns = 0;
	c->pipelining_ok = false;
	if (!e->stopping && !c->in_avail)
		conn_ready(e, c);
}

static void conn_connect(struct engine *e, struct conn *c)
{
	DS_ASSERT(c->st == CS_FREE);
	int fd = socket(e->o->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
	if (fd < 0) {
		c->retry_at_ns = bench_now_ns() + CONNECT_RETRY_NS;
		msg_fail_err(e, c, BENCH_ERR_CONNECT);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->st = CS_CONNECTING;
	c->rlen = 0;
	c->tls_on = false;
	c->tls_hs = false;
	c->cin_len = c->cin_off = 0;
	c->cout_len = c->cout_off = 0;
	c->cout_has_body = false;
	c->t_phase = bench_now_ns();
	conn_deadline(e, c);
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&e->o->addr, e->o->addr_len);
	conn_post(e, c, sqe, OP_CONNECT);
}

/* Appends "CMD<addr>\r\n" to the command buffer. */
static void cbuf_add(struct conn *c, const char *s)
{
	size_t n = strlen(s);
	DS_ASSERT(c->clen + n <= CBUF_BYTES);
	memcpy(c->cbuf + c->clen, s, n);
	c->clen += n;
}

static void rcpt_addr(struct engine *e, struct conn *c, uint32_t i, char *out, size_t cap)
{
	/* "%d" -> a recipient number that varies across messages (0..999). */
	const char *pat = e->o->to_pattern;
	const char *pd = strstr(pat, "%d");
	if (pd == NULL) {
		snprintf(out, cap, "%s", pat);
		return;
	}
	unsigned num = (unsigned)((c->seq * e->o->rcpts + i) % 1000);
	snprintf(out, cap, "%.*s%u%s", (int)(pd - pat), pat, num, pd + 2);
}

static void cmd_mail(struct engine *e, struct conn *c)
{
	char line[BENCH_ADDR_MAX + 64];
	snprintf(line, sizeof(line), "MAIL FROM:<%s>\r\n", e->o->from);
	cbuf_add(c, line);
}

static void cmd_rcpt(struct engine *e, struct conn *c, uint32_t i)
{
	char addr[BENCH_ADDR_MAX + 16];
	char line[BENCH_ADDR_MAX + 64];
	rcpt_addr(e, c, i, addr, sizeof(addr));
	snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", addr);
	cbuf_add(c, line);
}

static void conn_send_cbuf(struct engine *e, struct conn *c)
{
	conn_queue(e, c, c->cbuf, c->clen, false);
	conn_deadline(e, c);
}

static void conn_start_msg(struct engine *e, struct conn *c)
{
	DS_ASSERT(c->st == CS_IDLE && c->has_msg);
	const struct bench_opts *o = e->o;
	uint64_t now = bench_now_ns();
	if (!e->open_loop)
		c->sched_ns = now;
	size_t size = o->sizes[0];
	if (o->size_count > 1) {
		/* xorshift keyed by seq: the same run yields the same size sequence. */
		uint64_t x = (c->seq + 1) * 0x2545F4914F6CDD1Dull;
		x ^= x >> 33;
		size = o->sizes[x % o->size_count];
	}
	char to0[BENCH_ADDR_MAX + 16];
	rcpt_addr(e, c, 0, to0, sizeof(to0));
	struct bench_msg_params p = {
		.seq = msg_gid(e, c), .pid = e->pid, .size_bytes = size, .from = o->from, .to = to0};
	e->r->id_next = DS_MAX(e->r->id_next, p.seq + 1);
	/* bytes_ok counts what is sent: below the header size that is more than asked for. */
	long n = bench_msg_build(c->mbuf, e->mcap, &p, &c->msg_bytes);
	DS_ASSERT(n > 0);
	c->mlen = (size_t)n;
	c->msg_started = true;
	c->reply_next = 0;
	c->rcpt_accepted = 0;
	c->finals_got = 0;
	c->finals_ok = 0;
	c->clen = 0;
	c->st = CS_CMDS;
	cmd_mail(e, c);
	c->t_cmd[0] = now;
	c->cmds_sent = 1;
	if (o->pipelining && c->pipelining_ok) {
		for (uint32_t i = 0; i < o->rcpts; i++) {
			cmd_rcpt(e, c, i);
			c->t_cmd[1 + i] = now;
		}
		cbuf_add(c, "DATA\r\n");
		c->t_cmd[1 + o->rcpts] = now;
		c->cmds_sent = o->rcpts + 2;
	}
	conn_send_cbuf(e, c);
}

static void conn_send_simple(struct engine *e, struct conn *c, const char *cmd, enum conn_state st)
{
	c->clen = 0;
	cbuf_add(c, cmd);
	c->st = st;
	c->t_phase = bench_now_ns();
	conn_send_cbuf(e, c);
}

static void conn_msg_done(struct engine *e, struct conn *c, bool ok)
{
	msg_finish(e, c, ok);
	if (e->o->new_conn_per_msg) {
		conn_send_simple(e, c, "QUIT\r\n", CS_QUIT);
		return;
	}
	c->st = CS_IDLE;
	c->deadline_ns = 0;
	conn_ready(e, c);
}

/* Gives up on the current message after a failed MAIL/RCPT/DATA: RSET. */
static void conn_msg_abort(struct engine *e, struct conn *c)
{
	msg_finish(e, c, false);
	conn_send_simple(e, c, "RSET\r\n", CS_RSET);
}

static void ack_log(struct engine *e, struct conn *c)
{
	if (e->o->ack_log == NULL)
		return;
	char id[BENCH_MSG_ID_MAX];
	bench_msg_id(id, sizeof(id), e->pid, msg_gid(e, c));
	fprintf(e->o->ack_log, "%s\n", id);
}

static void on_cmd_reply(struct engine *e, struct conn *c, int code, uint64_t now)
{
	const struct bench_opts *o = e->o;
	uint32_t k = c->reply_next++;
	bool ok = code >= 200 && code < 300;
	if (k == 0) {
		bench_hist_record(&e->r->hist[BENCH_PH_MAIL], now - c->t_cmd[0]);
		if (!ok) {
			result_code(e, code);
			c->msg_failed = true;
		}
	} else if (k <= o->rcpts) {
		bench_hist_record(&e->r->hist[BENCH_PH_RCPT], now - c->t_cmd[k]);
		if (ok) {
			c->rcpt_accepted++;
			e->r->rcpts_ok++;
		} else {
			if (!c->msg_failed)
				result_code(e, code);
			e->r->rcpts_failed++;
		}
	} else {
		DS_ASSERT(k == o->rcpts + 1);
		bench_hist_record(&e->r->hist[BENCH_PH_DATA], now - c->t_cmd[k]);
		if (code == 354) {
			if (c->msg_failed || c->rcpt_accepted == 0) {
				/* Server accepted DATA although nothing is deliverable: end it empty. */
				conn_send_simple(e, c, ".\r\n", CS_ABORT_DOT);
				return;
			}
			c->st = CS_BODY;
			c->finals_expected = o->lmtp ? c->rcpt_accepted : 1;
			conn_queue(e, c, c->mbuf, c->mlen, true);
			conn_deadline(e, c);
			return;
		}
		if (!c->msg_failed && c->rcpt_accepted > 0)
			result_code(e, code);
		conn_msg_abort(e, c);
		return;
	}
	if (c->reply_next < c->cmds_sent)
		return; /* pipelined: more replies queued */
	/* Not pipelined: send the next command, or stop. */
	if (c->msg_failed || (k == o->rcpts && c->rcpt_accepted == 0)) {
		if (k == o->rcpts && c->rcpt_accepted == 0 && !c->msg_failed)
			c->msg_failed = true;
		conn_msg_abort(e, c);
		return;
	}
	uint64_t t = bench_now_ns();
	c->clen = 0;
	if (k < o->rcpts)
		cmd_rcpt(e, c, k);
	else
		cbuf_add(c, "DATA\r\n");
	c->t_cmd[k + 1] = t;
	c->cmds_sent++;
	conn_send_cbuf(e, c);
}

static void tls_handshake(struct engine *e, struct conn *c)
{
	int rc = mbedtls_ssl_handshake(c->ssl);
	if (rc == 0) {
		c->tls_hs = false;
		uint64_t now = bench_now_ns();
		bench_hist_record(&e->r->hist[BENCH_PH_STARTTLS], now - c->t_phase);
		c->t_phase = now;
		/* RFC 3207: forget what the server said before TLS and greet again. */
		char line[BENCH_ADDR_MAX + 16];
		snprintf(line, sizeof(line), "%s %s\r\n", e->o->lmtp ? "LHLO" : "EHLO", e->o->helo);
		c->clen = 0;
		cbuf_add(c, line);
		c->st = CS_EHLO;
		conn_send_cbuf(e, c);
		conn_post_recv(e, c);
		return;
	}
	if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
		conn_close(e, c, BENCH_ERR_TLS);
		return;
	}
	conn_kick_send(e, c);
	conn_post_recv(e, c);
}

static void tls_begin(struct engine *e, struct conn *c)
{
	c->tls_on = true;
	c->tls_hs = true;
	c->rlen = 0;
	c->gen++; /* stop conn_parse: rbuf now fills from the TLS layer */
	c->cin_len = c->cin_off = 0;
	c->cout_len = c->cout_off = 0;
	c->cout_has_body = false;
	if (mbedtls_ssl_session_reset(c->ssl) != 0) {
		conn_close(e, c, BENCH_ERR_TLS);
		return;
	}
	tls_handshake(e, c);
}

#define EXT_PIPELINING 1u
#define EXT_STARTTLS   2u

/* The banner: EHLO (LHLO) next. */
static void on_banner_reply(struct engine *e, struct conn *c, int code, uint64_t now)
{
	bench_hist_record(&e->r->hist[BENCH_PH_BANNER], now - c->t_phase);
	if (code != 220) {
		result_code(e, code);
		conn_close(e, c, -1);
		return;
	}
	char line[BENCH_ADDR_MAX + 16];
	snprintf(line, sizeof(line), "%s %s\r\n", e->o->lmtp ? "LHLO" : "EHLO", e->o->helo);
	conn_send_simple(e, c, line, CS_EHLO);
}

/* The EHLO reply: STARTTLS next if asked for, else the connection is ready for messages. */
static void on_ehlo_reply(struct engine *e, struct conn *c, int code, unsigned ext, uint64_t now)
{
	bool saw_pipelining = ext & EXT_PIPELINING;
	bench_hist_record(&e->r->hist[BENCH_PH_EHLO], now - c->t_phase);
	if (code != 250) {
		result_code(e, code);
		conn_close(e, c, -1);
		return;
	}
	if (e->o->starttls && !c->tls_on) {
		if (!(ext & EXT_STARTTLS)) {
			conn_close(e, c, BENCH_ERR_TLS);
			return;
		}
		conn_send_simple(e, c, "STARTTLS\r\n", CS_STARTTLS);
		return;
	}
	c->pipelining_ok = saw_pipelining;
	if (saw_pipelining)
		e->r->server_pipelining = true;
	c->st = CS_IDLE;
	c->deadline_ns = 0;
	if (c->has_msg)
		conn_start_msg(e, c);
	else
		conn_ready(e, c);
}

/* A reply to the final dot (LMTP: one per recipient); the message is done after the last. */
static void on_final_reply(struct engine *e, struct conn *c, int code, uint64_t now)
{
	bool ok = code >= 200 && code < 300;
	c->finals_got++;
	if (ok) {
		if (c->finals_ok == 0)
			ack_log(e, c);
		c->finals_ok++;
	} else {
		result_code(e, code);
	}
	if (c->finals_got < c->finals_expected)
		return;
	bench_hist_record(&e->r->hist[BENCH_PH_FINAL_DOT], now - c->t_dot);
	bench_hist_record(&e->r->hist[BENCH_PH_MESSAGE], now - c->sched_ns);
	conn_msg_done(e, c, c->finals_ok == c->finals_expected);
}

static void on_reply(struct engine *e, struct conn *c, int code, unsigned ext)
{
	uint64_t now = bench_now_ns();
	if (code == 421 && c->st != CS_QUIT) {
		result_code(e, code);
		conn_close(e, c, -1);
		return;
	}
	switch (c->st) {
	case CS_BANNER:
		on_banner_reply(e, c, code, now);
		return;
	case CS_EHLO:
		on_ehlo_reply(e, c, code, ext, now);
		return;
	case CS_STARTTLS:
		if (code != 220 || c->tls_on) {
			result_code(e, code);
			conn_close(e, c, -1);
			return;
		}
		tls_begin(e, c);
		return;
	case CS_CMDS:
		on_cmd_reply(e, c, code, now);
		return;
	case CS_BODY:
		on_final_reply(e, c, code, now);
		return;
	case CS_ABORT_DOT:
		conn_msg_abort(e, c);
		return;
	case CS_RSET:
		c->st = CS_IDLE;
		c->deadline_ns = 0;
		conn_ready(e, c);
		return;
	case CS_QUIT:
		conn_close(e, c, -1);
		return;
	default:
		/* A reply nobody asked for. */
		e->r->err_counts[BENCH_ERR_PROTOCOL]++;
		conn_close(e, c, -1);
		return;
	}
}

/* Parses complete replies out of rbuf. Returns false if the connection was closed. */
static bool conn_parse(struct engine *e, struct conn *c)
{
	size_t pos = 0;
	unsigned ext = 0;
	size_t reply_start = 0;
	while (pos < c->rlen) {
		char *nl = memchr(c->rbuf + pos, '\n', c->rlen - pos);
		if (nl == NULL)
			break;
		size_t len = (size_t)(nl - (c->rbuf + pos)) + 1;
		const char *line = c->rbuf + pos;
		if (len < 5 || len > REPLY_LINE_MAX || line[0] < '2' || line[0] > '5' || line[1] < '0' ||
		    line[1] > '9' || line[2] < '0' || line[2] > '9' ||
		    (line[3] != ' ' && line[3] != '-' && line[3] != '\r')) {
			conn_close(e, c, BENCH_ERR_PROTOCOL);
			return false;
		}
		int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (len >= 14 && strncasecmp(line + 4, "PIPELINING", 10) == 0)
			ext |= EXT_PIPELINING;
		if (len >= 12 && strncasecmp(line + 4, "STARTTLS", 8) == 0)
			ext |= EXT_STARTTLS;
		pos += len;
		if (line[3] == '-')
			continue;
		reply_start = pos;
		uint32_t gen = c->gen;
		on_reply(e, c, code, ext);
		ext = 0;
		if (c->gen != gen || c->st == CS_CLOSING)
			return false;
	}
	/* Keep an incomplete reply (including earlier lines of a multi-line one). */
	if (reply_start > 0) {
		memmove(c->rbuf, c->rbuf + reply_start, c->rlen - reply_start);
		c->rlen -= reply_start;
	}
	if (c->rlen >= RBUF_BYTES) {
		conn_close(e, c, BENCH_ERR_PROTOCOL);
		return false;
	}
	return true;
}

/* Decrypts what arrived and parses the replies. */
static void tls_read(struct engine *e, struct conn *c)
{
	for (;;) {
		if (c->rlen >= RBUF_BYTES) {
			conn_close(e, c, BENCH_ERR_PROTOCOL);
			return;
		}
		int n = mbedtls_ssl_read(c->ssl, (unsigned char *)c->rbuf + c->rlen, RBUF_BYTES - c->rlen);
		if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE)
			break;
		if (n <= 0) {
			bool eof = n == 0 || n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY;
			conn_close(e, c, c->st == CS_QUIT ? -1 : eof ? BENCH_ERR_CLOSED : BENCH_ERR_TLS);
			return;
		}
		c->rlen += (size_t)n;
		if (!conn_parse(e, c))
			return;
	}
	conn_kick_send(e, c);
	conn_post_recv(e, c);
}

/* The connect completed: wait for the banner. */
static void on_connected(struct engine *e, struct conn *c, int res, uint64_t now)
{
	DS_ASSERT(c->st == CS_CONNECTING);
	if (res < 0) {
		if (!e->open_loop)
			c->retry_at_ns = now + CONNECT_RETRY_NS;
		conn_close(e, c, BENCH_ERR_CONNECT);
		return;
	}
	bench_hist_record(&e->r->hist[BENCH_PH_CONNECT], now - c->t_phase);
	c->st = CS_BANNER;
	c->t_phase = now;
	conn_deadline(e, c);
	conn_post_recv(e, c);
}

/* res bytes arrived: replies (through TLS when it is on). */
static void on_received(struct engine *e, struct conn *c, int res)
{
	if (res <= 0) {
		conn_close(e, c, c->st == CS_QUIT ? -1 : BENCH_ERR_CLOSED);
		return;
	}
	if (c->tls_on) {
		c->cin_len += (size_t)res;
		if (c->tls_hs)
			tls_handshake(e, c);
		else
			tls_read(e, c);
		return;
	}
	c->rlen += (size_t)res;
	if (!conn_parse(e, c))
		return;
	conn_post_recv(e, c);
}

/* A send completed: res bytes of TLS records (tls) or of the plaintext segments left. */
static void on_sent(struct engine *e, struct conn *c, int res, bool tls)
{
	if (res <= 0) {
		conn_close(e, c, BENCH_ERR_CLOSED);
		return;
	}
	if (tls) {
		c->cout_off += (size_t)res;
		DS_ASSERT(c->cout_off <= c->cout_len);
		if (c->cout_off == c->cout_len) {
			c->cout_off = c->cout_len = 0;
			c->cout_has_body = false;
		}
		if (c->tls_hs)
			tls_handshake(e, c);
		else
			conn_kick_send(e, c);
		return;
	}
	DS_ASSERT(c->seg_count > 0);
	struct send_seg *s = &c->segs[0];
	s->off += (size_t)res;
	DS_ASSERT(s->off <= s->len);
	if (s->off == s->len) {
		c->segs[0] = c->segs[1];
		c->seg_count--;
	}
	conn_kick_send(e, c);
}

static void on_cqe(struct engine *e, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	uint32_t op = (uint32_t)(ud & 7);
	struct conn *c = &e->conns[ud >> 3];
	int res = cqe->res;
	DS_ASSERT(c->inflight > 0);
	c->inflight--;
	if (op == OP_RECV)
		c->recv_posted = false;
	if (op == OP_SEND || op == OP_SEND_TLS)
		c->send_posted = false;
	if (c->st == CS_CLOSING) {
		if (c->inflight == 0)
			conn_release_slot(e, c);
		return;
	}
	switch (op) {
	case OP_CONNECT:
		on_connected(e, c, res, bench_now_ns());
		return;
	case OP_RECV:
		on_received(e, c, res);
		return;
	case OP_SEND_TLS:
	case OP_SEND:
		on_sent(e, c, res, op == OP_SEND_TLS);
		return;
	default:
		DS_ASSERT(false && "unknown op");
	}
}

static void eng_release_due(struct engine *e, uint64_t now)
{
	if (!e->open_loop || !e->started)
		return;
	uint64_t first;
	uint64_t n = bench_sched_release(&e->sched, now, UINT64_MAX, &first);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t seq = first + i;
		uint64_t due = bench_sched_time_ns(&e->sched, seq);
		if (e->pend_len == e->pend_cap) {
			e->r->err_counts[BENCH_ERR_QUEUE]++;
			e->r->messages_failed++;
			continue;
		}
		uint32_t slot = (e->pend_head + e->pend_len) % e->pend_cap;
		e->pend_seq[slot] = seq;
		e->pend_ns[slot] = due;
		e->pend_len++;
	}
	/* Hand due messages to free connections. */
	while (e->pend_len > 0 && e->avail_len > 0)
		conn_ready(e, avail_pop(e));
}

static void eng_tick(struct engine *e, uint64_t now)
{
	for (uint32_t i = 0; i < e->o->connections; i++) {
		struct conn *c = &e->conns[i];
		if (c->deadline_ns != 0 && now > c->deadline_ns && c->st != CS_CLOSING && c->st != CS_FREE) {
			conn_close(e, c, BENCH_ERR_TIMEOUT);
			continue;
		}
		if (c->st == CS_FREE && !c->in_avail && !c->has_msg && c->retry_at_ns != 0 &&
		    now >= c->retry_at_ns && !e->stopping) {
			c->retry_at_ns = 0;
			conn_ready(e, c);
		}
	}
	/* Closed loop: connections parked because no message was available yet. */
	if (!e->open_loop && e->started) {
		while (e->avail_len > 0 && closed_loop_more(e))
			conn_ready(e, avail_pop(e));
	}
}

static void eng_progress(struct engine *e, uint64_t now)
{
	if (!e->o->progress || !e->started || now < e->last_progress_ns + 1000000000ull)
		return;
	e->last_progress_ns = now;
	double el = (double)(now - e->start_ns) / 1e9;
	uint64_t errs = 0;
	for (int i = 0; i < 1000; i++)
		errs += e->r->code_counts[i];
	for (int i = 0; i < BENCH_ERR_COUNT; i++)
		errs += e->r->err_counts[i];
	fprintf(stderr,
		"\r[%6.1fs] ok %llu failed %llu  %.0f msg/s  final-dot p99 %.2f ms  message p99 %.2f ms  "
		"errors %llu   ",
		el, (unsigned long long)e->r->messages_ok, (unsigned long long)e->r->messages_failed,
		el > 0 ? (double)e->r->messages_ok / el : 0.0,
		(double)bench_hist_percentile(&e->r->hist[BENCH_PH_FINAL_DOT], 99.0) / 1e6,
		(double)bench_hist_percentile(&e->r->hist[BENCH_PH_MESSAGE], 99.0) / 1e6,
		(unsigned long long)errs);
}

static bool eng_warm(struct engine *e)
{
	for (uint32_t i = 0; i < e->o->connections; i++) {
		enum conn_state st = e->conns[i].st;
		if (st == CS_CONNECTING || st == CS_BANNER || st == CS_EHLO || st == CS_STARTTLS ||
		    st == CS_CLOSING)
			return false;
	}
	return true;
}

static bool eng_work_left(struct engine *e, uint64_t now)
{
	if (e->in_flight > 0)
		return true;
	if (e->open_loop)
		return e->pend_len > 0 || bench_sched_next_ns(&e->sched) != UINT64_MAX;
	return closed_loop_more(e);
}

static void eng_start(struct engine *e)
{
	e->started = true;
	e->start_ns = bench_now_ns();
	e->last_done_ns = e->start_ns;
	e->last_progress_ns = e->start_ns;
	if (e->o->messages == 0)
		e->end_ns = e->start_ns + (uint64_t)(e->o->duration_s * 1e9);
	if (e->open_loop) {
		uint64_t limit = e->o->messages;
		if (limit == 0)
			limit = (uint64_t)(e->o->duration_s * e->o->rate_per_s);
		/* Thread t of n starts t/R_total later: together the threads keep one fixed interval. */
		uint64_t shift_ns = 0;
		if (e->o->thread_count > 1 && e->o->rate_total_per_s > 0)
			shift_ns = (uint64_t)((double)e->o->thread_index * 1e9 / e->o->rate_total_per_s);
		DS_ASSERT(bench_sched_init(&e->sched, e->start_ns + shift_ns, e->o->rate_per_s, limit) == 0);
	} else {
		/* conn_ready() re-parks a connection when no message is left: loop on closed_loop_more(). */
		while (e->avail_len > 0 && closed_loop_more(e))
			conn_ready(e, avail_pop(e));
	}
}

static int eng_alloc(struct engine *e)
{
	const struct bench_opts *o = e->o;
	size_t size_max = 0;
	for (uint32_t i = 0; i < o->size_count; i++)
		size_max = DS_MAX(size_max, o->sizes[i]);
	size_t mcap = bench_msg_wire_max(size_max);
	e->mcap = mcap;
	if ((uint64_t)mcap * o->connections > BENCH_MEM_MAX)
		return -E2BIG;
	if (o->starttls) {
		/* Benchmark client: encryption cost without certificate checks (VERIFY_NONE). */
		mbedtls_entropy_init(&e->entropy);
		mbedtls_ctr_drbg_init(&e->drbg);
		mbedtls_ssl_config_init(&e->tls_conf);
		e->tls_ready = true;
		static const char pers[] = "dotspool-bench";
		if (mbedtls_ctr_drbg_seed(&e->drbg, mbedtls_entropy_func, &e->entropy,
					  (const unsigned char *)pers, sizeof(pers) - 1) != 0 ||
		    mbedtls_ssl_config_defaults(&e->tls_conf, MBEDTLS_SSL_IS_CLIENT,
						MBEDTLS_SSL_TRANSPORT_STREAM,
						MBEDTLS_SSL_PRESET_DEFAULT) != 0)
			return -EIO;
		mbedtls_ssl_conf_authmode(&e->tls_conf, MBEDTLS_SSL_VERIFY_NONE);
		mbedtls_ssl_conf_rng(&e->tls_conf, mbedtls_ctr_drbg_random, &e->drbg);
	}
	e->conns = calloc(o->connections, sizeof(*e->conns));
	e->avail = calloc(o->connections, sizeof(*e->avail));
	if (e->conns == NULL || e->avail == NULL)
		return -ENOMEM;
	for (uint32_t i = 0; i < o->connections; i++) {
		struct conn *c = &e->conns[i];
		c->idx = i;
		c->fd = -1;
		c->rbuf = malloc(RBUF_BYTES);
		c->cbuf = malloc(CBUF_BYTES);
		c->mbuf = malloc(mcap);
		if (c->rbuf == NULL || c->cbuf == NULL || c->mbuf == NULL)
			return -ENOMEM;
		if (o->starttls) {
			c->cin = malloc(TLS_BUF_BYTES);
			c->cout = malloc(TLS_BUF_BYTES);
			c->ssl = malloc(sizeof(*c->ssl));
			if (c->cin == NULL || c->cout == NULL || c->ssl == NULL)
				return -ENOMEM;
			mbedtls_ssl_init(c->ssl);
			if (mbedtls_ssl_setup(c->ssl, &e->tls_conf) != 0)
				return -ENOMEM;
			mbedtls_ssl_set_bio(c->ssl, c, tls_send_cb, tls_recv_cb, NULL);
		}
	}
	if (e->open_loop) {
		e->pend_cap = BENCH_PENDING_MAX;
		e->pend_seq = calloc(e->pend_cap, sizeof(*e->pend_seq));
		e->pend_ns = calloc(e->pend_cap, sizeof(*e->pend_ns));
		if (e->pend_seq == NULL || e->pend_ns == NULL)
			return -ENOMEM;
	}
	return 0;
}

static void eng_free(struct engine *e)
{
	if (e->conns != NULL) {
		for (uint32_t i = 0; i < e->o->connections; i++) {
			struct conn *c = &e->conns[i];
			if (c->fd >= 0)
				close(c->fd);
			free(c->rbuf);
			free(c->cbuf);
			free(c->mbuf);
			if (c->ssl != NULL)
				mbedtls_ssl_free(c->ssl);
			free(c->ssl);
			free(c->cin);
			free(c->cout);
		}
	}
	free(e->conns);
	free(e->avail);
	free(e->pend_seq);
	free(e->pend_ns);
	if (e->tls_ready) {
		mbedtls_ssl_config_free(&e->tls_conf);
		mbedtls_ctr_drbg_free(&e->drbg);
		mbedtls_entropy_free(&e->entropy);
	}
}

static void eng_wait(struct engine *e, uint64_t now)
{
	uint64_t wake = now + TICK_NS / 10;
	if (e->open_loop && e->started) {
		uint64_t nx = bench_sched_next_ns(&e->sched);
		if (nx < wake)
			wake = nx;
	}
	uint64_t wait_ns = wake > now ? wake - now : 0;
	struct __kernel_timespec ts = {.tv_sec = (long long)(wait_ns / 1000000000ull),
				       .tv_nsec = (long long)(wait_ns % 1000000000ull)};
	struct io_uring_cqe *cqe;
	if (wait_ns > 0)
		io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, &ts, NULL); /* -ETIME is normal */
	else
		io_uring_submit(&e->ring);
	unsigned head;
	unsigned n = 0;
	io_uring_for_each_cqe(&e->ring, head, cqe)
	{
		on_cqe(e, cqe);
		n++;
	}
	io_uring_cq_advance(&e->ring, n);
}

/* Until the run's work is done: release due messages, tick, send, wait. */
static void eng_run(struct engine *e)
{
	uint64_t now = bench_now_ns();
	e->next_tick_ns = now + TICK_NS;
	for (;;) {
		now = bench_now_ns();
		if (!e->started && eng_warm(e))
			eng_start(e);
		if (e->started && !eng_work_left(e, now))
			break;
		eng_release_due(e, now);
		if (now >= e->next_tick_ns) {
			eng_tick(e, now);
			e->next_tick_ns = now + TICK_NS;
		}
		eng_progress(e, now);
		eng_wait(e, now);
	}
}

/* QUIT every connection, bounded: what has not closed after QUIT_DRAIN_NS is closed. */
static void eng_drain(struct engine *e)
{
	const struct bench_opts *o = e->o;
	e->stopping = true;
	for (uint32_t i = 0; i < o->connections; i++) {
		struct conn *c = &e->conns[i];
		if (c->st == CS_IDLE)
			conn_send_simple(e, c, "QUIT\r\n", CS_QUIT);
		else if (c->st != CS_FREE && c->st != CS_QUIT)
			conn_close(e, c, -1);
	}
	uint64_t drain_end = bench_now_ns() + QUIT_DRAIN_NS;
	for (;;) {
		uint64_t now = bench_now_ns();
		bool busy = false;
		for (uint32_t i = 0; i < o->connections; i++)
			busy |= e->conns[i].st != CS_FREE;
		if (!busy)
			break;
		if (now > drain_end) {
			for (uint32_t i = 0; i < o->connections; i++)
				conn_close(e, &e->conns[i], -1);
			if (now > drain_end + QUIT_DRAIN_NS)
				break; /* operations that never complete: give up, exit closes them */
		}
		eng_wait(e, now);
	}
}

int bench_run(const struct bench_opts *o, struct bench_result *r)
{
	DS_ASSERT(o->connections >= 1 && o->connections <= BENCH_CONN_MAX);
	DS_ASSERT(o->rcpts >= 1 && o->rcpts <= BENCH_RCPT_MAX);
	DS_ASSERT(o->size_count >= 1);
	struct engine eng = {0};
	struct engine *e = &eng;
	e->o = o;
	e->r = r;
	e->open_loop = o->rate_per_s > 0;
	e->pid = (uint32_t)getpid();
	ds_raise_nofile((uint64_t)o->connections + 64);
	int rc = eng_alloc(e);
	if (rc < 0) {
		eng_free(e);
		return rc;
	}
	struct io_uring_params p = {0};
	p.flags = IORING_SETUP_CQSIZE;
	p.cq_entries = DS_MIN(4 * o->connections + 64, 65536u);
	rc = io_uring_queue_init_params(DS_MIN(2 * o->connections + 32, 4096u), &e->ring, &p);
	if (rc < 0) {
		eng_free(e);
		return rc;
	}
	/* Warm-up: open the connections (unless each message opens its own). */
	for (uint32_t i = 0; i < o->connections; i++) {
		struct conn *c = &e->conns[i];
		if (o->new_conn_per_msg)
			avail_push(e, c);
		else
			conn_connect(e, c);
	}
	eng_run(e);
	r->elapsed_s = (double)(e->last_done_ns - e->start_ns) / 1e9;
	eng_drain(e);
	if (o->progress)
		fprintf(stderr, "\n");
	if (o->ack_log != NULL)
		fflush(o->ack_log);
	io_uring_queue_exit(&e->ring);
	eng_free(e);
	return 0;
}

int bench_result_merge(struct bench_result *dst, const struct bench_result *src)
{
	for (int i = 0; i < BENCH_PH_COUNT; i++) {
		int rc = bench_hist_merge(&dst->hist[i], &src->hist[i]);
		if (rc < 0)
			return rc;
	}
	dst->messages_ok += src->messages_ok;
	dst->messages_failed += src->messages_failed;
	dst->bytes_ok += src->bytes_ok;
	dst->rcpts_ok += src->rcpts_ok;
	dst->rcpts_failed += src->rcpts_failed;
	for (int i = 0; i < 1000; i++)
		dst->code_counts[i] += src->code_counts[i];
	for (int i = 0; i < BENCH_ERR_COUNT; i++)
		dst->err_counts[i] += src->err_counts[i];
	dst->server_pipelining |= src->server_pipelining;
	dst->elapsed_s = DS_MAX(dst->elapsed_s, src->elapsed_s);
	dst->id_next = DS_MAX(dst->id_next, src->id_next);
	return 0;
}

struct bench_thread {
	pthread_t tid;
	struct bench_opts o;
	struct bench_result r;
	int rc;
};

static void *bench_thread_main(void *arg)
{
	struct bench_thread *t = arg;
	t->rc = bench_run(&t->o, &t->r);
	return NULL;
}

int bench_run_threads(const struct bench_opts *o, uint32_t n, struct bench_result *r)
{
	if (n <= 1)
		return bench_run(o, r);
	if (n > BENCH_THREADS_MAX || n > o->connections)
		return -EINVAL;
	struct bench_thread *th = calloc(n, sizeof(*th));
	if (th == NULL)
		return -ENOMEM;
	int rc = 0;
	uint32_t started = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct bench_thread *t = &th[i];
		t->o = *o;
		t->o.thread_index = i;
		t->o.thread_count = n;
		t->o.connections = o->connections / n + (i < o->connections % n ? 1 : 0);
		if (o->messages > 0) {
			t->o.messages = o->messages / n + (i < o->messages % n ? 1 : 0);
			if (t->o.messages == 0)
				t->o.messages = 1; /* fewer messages than threads: a few extra */
		}
		t->o.rate_total_per_s = o->rate_per_s;
		t->o.rate_per_s = o->rate_per_s / n;
		t->o.progress = o->progress && i == 0; /* one line: thread 0's share */
		if (bench_result_init(&t->r) < 0) {
			rc = -ENOMEM;
			break;
		}
		if (pthread_create(&t->tid, NULL, bench_thread_main, t) != 0) {
			bench_result_free(&t->r);
			rc = -EAGAIN;
			break;
		}
		started++;
	}
	for (uint32_t i = 0; i < started; i++) {
		pthread_join(th[i].tid, NULL);
		if (th[i].rc < 0 && rc == 0)
			rc = th[i].rc;
		if (rc == 0)
			rc = bench_result_merge(r, &th[i].r);
		bench_result_free(&th[i].r);
	}
	free(th);
	return rc;
}
