/* SPDX-License-Identifier: MIT */
/*
 * Recipient verification probes on the worker's ring and their caches
 * (see verify.h). One operation in flight per probe at a time (connect,
 * send or recv), so the probe's state says what a completion is for.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "io_types.h"
#include "ring.h"
#include "verify.h"

#define VERIFY_WAYS	4
#define VERIFY_ADDR_MAX 320
#define VERIFY_OUT_MAX	(VERIFY_ADDR_MAX + 300)
#define VERIFY_QUIT_MS	2000 /* after the answer: time for RSET's reply or QUIT to go out */
/*
 * A connection answers several questions (RSET between them) while idle
 * for at most VERIFY_IDLE_MS, then QUIT. Bounded so the hop's own error
 * counters (Postfix's smtpd_soft_error_limit 10 counts each 5xx, RSET does
 * not reset it) never slow or cut a probe: after VERIFY_REFUSED_MAX 5xx
 * answers or VERIFY_QUESTIONS_MAX questions the connection is closed.
 */
#define VERIFY_IDLE_MS	     30000
#define VERIFY_QUESTIONS_MAX 16
#define VERIFY_REFUSED_MAX   5

enum vstate {
	VS_FREE = 0,
	VS_CONNECT,
	VS_GREETING,
	VS_HELLO,
	VS_MAIL,
	VS_RCPT,
	VS_RSET,
	VS_IDLE, /* greeted and reset: the next question starts at MAIL */
	VS_QUIT,
};

enum vop { VOP_NONE = 0, VOP_CONNECT, VOP_SEND, VOP_RECV, VOP_CANCEL };

struct vprobe {
	uint32_t idx, gen;
	uint8_t state;
	uint8_t op; /* the one in flight */
	bool answered;
	bool dead;		     /* given up: close once the operation in flight completes */
	bool reused;		     /* this question runs on a connection that answered an earlier one */
	bool queued;		     /* VS_RSET: a question waits for the reply to start at MAIL */
	uint16_t questions, refused; /* on this connection */
	int fd;
	uint64_t key; /* the connection that asked */
	uint64_t fp;  /* cache key of addr */
	int64_t deadline_ms;
	char addr[VERIFY_ADDR_MAX];
	char out[VERIFY_OUT_MAX];
	uint32_t out_len, out_off;
	char in[IO_VERIFY_REPLY_MAX];
	uint32_t in_len;
};

struct vcache_entry {
	uint64_t fp; /* 0: free */
	int64_t expires_ms;
	bool known;
};

struct io_verify {
	struct io_worker *w;
	io_verify_done_fn done;
	const struct io_hop_spec *hop;
	bool lmtp;
	uint64_t seed;
	uint32_t sets; /* power of 2 */
	struct vcache_entry *cache;
	uint32_t busy;
	struct vprobe probe[IO_VERIFY_PROBES_MAX];
};

/* ---- cache ---- */

static uint64_t addr_fp(const struct io_verify *v, const char *addr, size_t len)
{
	/* FNV-1a over the address with its domain lowered (the hop decides about local parts). */
	const char *at = memrchr(addr, '@', len);
	uint64_t h = 1469598103934665603ull ^ v->seed;
	for (size_t i = 0; i < len; i++) {
		uint8_t c = (uint8_t)addr[i];
		if (at && addr + i > at && c >= 'A' && c <= 'Z')
			c |= 0x20;
		h = (h ^ c) * 1099511628211ull;
	}
	h ^= h >> 29;
	return h ? h : 1;
}

static struct vcache_entry *cache_set(struct io_verify *v, uint64_t fp)
{
	return v->cache + (size_t)(fp & (v->sets - 1)) * VERIFY_WAYS;
}

/* 1 known, 0 unknown, -1 not cached (or expired). */
static int cache_get(struct io_verify *v, uint64_t fp, int64_t now_ms)
{
	struct vcache_entry *s = cache_set(v, fp);
	for (int i = 0; i < VERIFY_WAYS; i++)
		if (s[i].fp == fp) {
			if (now_ms >= s[i].expires_ms) {
				s[i].fp = 0;
				return -1;
			}
			return s[i].known;
		}
	return -1;
}

static void cache_put(struct io_verify *v, uint64_t fp, bool known, int64_t now_ms)
{
	const struct io_policy_config *pc = &v->w->cfg->policy;
	uint32_t ttl_s = known ? pc->verify_positive_ttl_s : pc->verify_negative_ttl_s;
	if (ttl_s == 0)
		return;
	struct vcache_entry *s = cache_set(v, fp), *e = &s[0];
	for (int i = 0; i < VERIFY_WAYS; i++) {
		if (s[i].fp == fp || s[i].fp == 0) {
			e = &s[i];
			break;
		}
		if (s[i].expires_ms < e->expires_ms)
			e = &s[i]; /* the one that expires first goes */
	}
	e->fp = fp;
	e->known = known;
	e->expires_ms = now_ms + (int64_t)ttl_s * 1000;
}

/* ---- probes ---- */

static inline uint64_t vud(const struct vprobe *p)
{
	return ((uint64_t)p->idx << 32) | p->gen;
}

static void probe_free(struct io_verify *v, struct vprobe *p)
{
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
	p->state = VS_FREE;
	p->gen++;
	DS_ASSERT(v->busy > 0);
	v->busy--;
}

/* The session's answer, once: the cache learns from 2xx and 5xx only. */
static void probe_answer(struct io_verify *v, struct vprobe *p, int res)
{
	if (p->answered)
		return;
	p->answered = true;
	int64_t now = ds_mono_ms();
	if (res == 0 || res == -ENOENT)
		cache_put(v, p->fp, res == 0, now);
	obs_metrics_verify(v->w->m, res == 0	     ? OBS_VERIFY_KNOWN
				    : res == -ENOENT ? OBS_VERIFY_UNKNOWN
						     : OBS_VERIFY_TEMPFAIL);
	v->done(v->w, p->key, res);
}

/* Give up on the probe: answer 450 if not yet, cancel what is in flight, free when it is back. */
static void probe_abort(struct io_verify *v, struct vprobe *p)
{
	probe_answer(v, p, -ETIMEDOUT);
	if (p->op == VOP_NONE) {
		probe_free(v, p);
		return;
	}
	if (!p->dead) {
		p->dead = true;
		struct io_uring_sqe *sqe = io_sqe(&v->w->ring);
		io_uring_prep_cancel64(sqe, io_ud(IO_OP_VERIFY, vud(p)), 0);
		io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0));
		shutdown(p->fd, SHUT_RDWR);
	}
}

/* A new connection to the hop for p's question: 0, or -errno (nothing submitted). */
static int probe_connect(struct io_verify *v, struct vprobe *p)
{
	int fd = socket(v->hop->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (v->hop->addr.ss_family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	p->fd = fd;
	p->state = VS_CONNECT;
	p->reused = p->queued = false;
	p->questions = p->refused = 0;
	p->in_len = p->out_len = p->out_off = 0;
	struct io_uring_sqe *sqe = io_sqe(&v->w->ring);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&v->hop->addr, v->hop->addr_len);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_VERIFY, vud(p)));
	p->op = VOP_CONNECT;
	return 0;
}

/*
 * Something went wrong. On a reused connection before its MAIL was taken
 * (the hop closed it while idle, or said 421), the question is asked again
 * on a new connection; otherwise the probe is given up (450 4.1.1).
 */
static void probe_fail(struct io_verify *v, struct vprobe *p)
{
	if (p->reused && !p->answered && !p->dead && (p->state == VS_MAIL || p->state == VS_RSET) &&
	    p->op == VOP_NONE) {
		close(p->fd);
		p->fd = -1;
		if (probe_connect(v, p) == 0)
			return;
	}
	probe_abort(v, p);
}

static void probe_send(struct io_verify *v, struct vprobe *p)
{
	struct io_uring_sqe *sqe = io_sqe(&v->w->ring);
	io_uring_prep_send(sqe, p->fd, p->out + p->out_off, p->out_len - p->out_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_VERIFY, vud(p)));
	p->op = VOP_SEND;
}

static void probe_recv(struct io_verify *v, struct vprobe *p)
{
	struct io_uring_sqe *sqe = io_sqe(&v->w->ring);
	io_uring_prep_recv(sqe, p->fd, p->in + p->in_len, sizeof(p->in) - p->in_len, 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_VERIFY, vud(p)));
	p->op = VOP_RECV;
}

static void probe_cmd(struct io_verify *v, struct vprobe *p, enum vstate next, const char *fmt,
		      const char *arg)
{
	char line[VERIFY_OUT_MAX];
	int n = snprintf(line, sizeof(line), fmt, arg);
	DS_ASSERT(n > 0 && (size_t)n < sizeof(line));
	memcpy(p->out, line, (size_t)n);
	p->out_len = (uint32_t)n;
	p->out_off = 0;
	p->in_len = 0;
	p->state = (uint8_t)next;
	probe_send(v, p);
}

/*
 * A whole reply in p->in? Returns its code (200..599), 0 when more is
 * needed, -1 when it is not a reply.
 */
static int reply_code(const struct vprobe *p)
{
	const char *s = p->in, *end = p->in + p->in_len;
	while (s < end) {
		const char *lf = memchr(s, '\n', (size_t)(end - s));
		if (!lf)
			return 0;
		size_t n = (size_t)(lf - s);
		if (n && s[n - 1] == '\r')
			n--;
		if (n < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9')
			return -1;
		if (n == 3 || s[3] == ' ')
			return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
		if (s[3] != '-')
			return -1;
		s = lf + 1;
	}
	return 0;
}

static bool addr_8bit(const char *a)
{
	for (; *a; a++)
		if ((unsigned char)*a >= 0x80)
			return true;
	return false;
}

static void probe_reply(struct io_verify *v, struct vprobe *p, int code)
{
	switch (p->state) {
	case VS_GREETING:
		if (code / 100 != 2)
			break;
		probe_cmd(v, p, VS_HELLO, v->lmtp ? "LHLO %s\r\n" : "EHLO %s\r\n", v->w->cfg->hostname);
		return;
	case VS_HELLO:
		if (code / 100 != 2)
			break;
		/* An address with 8-bit octets needs SMTPUTF8 (RFC 6531); a hop without it refuses MAIL: 450.
		 */
		probe_cmd(v, p, VS_MAIL, "MAIL FROM:<>%s\r\n", addr_8bit(p->addr) ? " SMTPUTF8" : "");
		return;
	case VS_MAIL:
		if (code / 100 != 2)
			break;
		probe_cmd(v, p, VS_RCPT, "RCPT TO:<%s>\r\n", p->addr);
		return;
	case VS_RCPT:
		probe_answer(v, p, code / 100 == 2 ? 0 : code / 100 == 5 ? -ENOENT : -ETIMEDOUT);
		p->questions++;
		p->refused += code / 100 == 5;
		p->deadline_ms = ds_mono_ms() + VERIFY_QUIT_MS;
		if (code != 421 && p->questions < VERIFY_QUESTIONS_MAX && p->refused < VERIFY_REFUSED_MAX &&
		    !v->w->stopping)
			probe_cmd(v, p, VS_RSET, "RSET%s\r\n", "");
		else
			probe_cmd(v, p, VS_QUIT, "QUIT%s\r\n", "");
		return;
	case VS_RSET:
		if (code / 100 != 2)
			break;
		if (p->queued) {
			/* A question came while RSET was on its way (a client pipelining its RCPTs). */
			p->queued = false;
			probe_cmd(v, p, VS_MAIL, "MAIL FROM:<>%s\r\n", addr_8bit(p->addr) ? " SMTPUTF8" : "");
			return;
		}
		/* Kept for the next question; no operation in flight while idle. */
		p->state = VS_IDLE;
		p->in_len = 0;
		p->deadline_ms = ds_mono_ms() + VERIFY_IDLE_MS;
		return;
	default:
		break;
	}
	probe_fail(v, p);
}

void io_verify_complete(struct io_worker *w, uint64_t low, int res)
{
	struct io_verify *v = w->verify;
	uint32_t idx = (uint32_t)(low >> 32);
	DS_ASSERT(v && idx < IO_VERIFY_PROBES_MAX);
	struct vprobe *p = &v->probe[idx];
	DS_ASSERT(p->state != VS_FREE && p->gen == (uint32_t)low && p->op != VOP_NONE);
	enum vop op = (enum vop)p->op;
	p->op = VOP_NONE;
	if (p->dead) {
		probe_free(v, p);
		return;
	}
	if (op == VOP_CONNECT) {
		if (res < 0) {
			probe_fail(v, p);
			return;
		}
		p->state = VS_GREETING;
		p->in_len = 0;
		probe_recv(v, p);
		return;
	}
	if (op == VOP_SEND) {
		if (res <= 0) {
			probe_fail(v, p);
			return;
		}
		p->out_off += (uint32_t)res;
		if (p->out_off < p->out_len) {
			probe_send(v, p);
			return;
		}
		if (p->state == VS_QUIT) {
			probe_free(v, p); /* the answer is given; the hop's 221 is not needed */
			return;
		}
		probe_recv(v, p);
		return;
	}
	DS_ASSERT(op == VOP_RECV);
	if (res <= 0) {
		probe_fail(v, p);
		return;
	}
	p->in_len += (uint32_t)res;
	int code = reply_code(p);
	if (code < 0 || (code == 0 && p->in_len == sizeof(p->in))) {
		probe_fail(v, p); /* not SMTP, or a reply longer than we take */
		return;
	}
	if (code == 0) {
		probe_recv(v, p);
		return;
	}
	probe_reply(v, p, code);
}

int io_verify_ask(struct io_worker *w, const char *addr, size_t len, uint64_t key)
{
	struct io_verify *v = w->verify;
	if (!v || len >= VERIFY_ADDR_MAX)
		return -ETIMEDOUT;
	int64_t now = ds_mono_ms();
	uint64_t fp = addr_fp(v, addr, len);
	int c = cache_get(v, fp, now);
	if (c >= 0) {
		obs_metrics_verify(w->m, c ? OBS_VERIFY_CACHED_KNOWN : OBS_VERIFY_CACHED_UNKNOWN);
		return c ? 0 : -ENOENT;
	}
	/* An idle connection first, then one whose RSET is on its way, then a new one. */
	struct vprobe *p = NULL, *idle = NULL, *rset = NULL;
	for (uint32_t i = 0; i < IO_VERIFY_PROBES_MAX && !idle; i++) {
		struct vprobe *q = &v->probe[i];
		if (q->state == VS_IDLE)
			idle = q;
		else if (!rset && q->state == VS_RSET && !q->queued && !q->dead && q->answered)
			rset = q;
		else if (!p && q->state == VS_FREE)
			p = q;
	}
	if (!idle && rset) {
		rset->answered = false;
		rset->reused = true;
		rset->queued = true;
		rset->key = key;
		rset->fp = fp;
		memcpy(rset->addr, addr, len);
		rset->addr[len] = 0;
		rset->deadline_ms = now + (int64_t)w->cfg->policy.verify_timeout_s * 1000;
		return -EINPROGRESS;
	}
	if (idle)
		p = idle;
	if (!p) {
		/* Out of probes: try later, never a guess. */
		obs_metrics_verify(w->m, OBS_VERIFY_TEMPFAIL);
		return -ETIMEDOUT;
	}
	p->answered = p->dead = p->queued = false;
	p->key = key;
	p->fp = fp;
	memcpy(p->addr, addr, len);
	p->addr[len] = 0;
	p->deadline_ms = now + (int64_t)w->cfg->policy.verify_timeout_s * 1000;
	if (idle) {
		p->reused = true;
		probe_cmd(v, p, VS_MAIL, "MAIL FROM:<>%s\r\n", addr_8bit(p->addr) ? " SMTPUTF8" : "");
		return -EINPROGRESS;
	}
	if (probe_connect(v, p) < 0) {
		obs_metrics_verify(w->m, OBS_VERIFY_TEMPFAIL); /* out of descriptors */
		return -ETIMEDOUT;
	}
	v->busy++;
	return -EINPROGRESS;
}

void io_verify_tick(struct io_worker *w, int64_t now_ms)
{
	struct io_verify *v = w->verify;
	if (!v || v->busy == 0)
		return;
	for (uint32_t i = 0; i < IO_VERIFY_PROBES_MAX; i++) {
		struct vprobe *p = &v->probe[i];
		if (p->state == VS_FREE || p->dead || now_ms < p->deadline_ms)
			continue;
		if (p->state == VS_IDLE) {
			p->deadline_ms = now_ms + VERIFY_QUIT_MS;
			probe_cmd(v, p, VS_QUIT, "QUIT%s\r\n", "");
		} else {
			probe_abort(v, p);
		}
	}
}

/* A question or an operation under way (an idle connection is not: destroy closes it). */
bool io_verify_busy(const struct io_worker *w)
{
	const struct io_verify *v = w->verify;
	if (!v || v->busy == 0)
		return false;
	for (uint32_t i = 0; i < IO_VERIFY_PROBES_MAX; i++)
		if (v->probe[i].state != VS_FREE &&
		    (v->probe[i].state != VS_IDLE || v->probe[i].op != VOP_NONE))
			return true;
	return false;
}

bool io_verify_domain(const struct io_worker *w, const char *domain, size_t len)
{
	const struct io_policy_config *pc = &w->cfg->policy;
	for (uint32_t i = 0; i < pc->verify_domain_count; i++) {
		const char *d = pc->verify_domains[i];
		size_t n = strlen(d);
		if (d[0] == '.') {
			/* ".example.com": any subdomain, not example.com itself */
			if (len > n - 1 && !strncasecmp(domain + len - n, d, n))
				return true;
		} else if (len == n && !strncasecmp(domain, d, n)) {
			return true;
		}
	}
	return false;
}

int io_verify_create(struct io_worker *w, io_verify_done_fn done)
{
	const struct io_policy_config *pc = &w->cfg->policy;
	w->verify = NULL;
	if (pc->verify_domain_count == 0)
		return 0;
	const struct io_deliver_config *dc = &w->cfg->deliver;
	const struct io_hop_spec *hop = NULL;
	for (uint32_t i = 0; i < dc->hop_count && !hop; i++)
		if (dc->hop[i].kind == IO_HOP_SMTP || dc->hop[i].kind == IO_HOP_LMTP)
			hop = &dc->hop[i];
	if (!hop)
		return -EINVAL; /* daemon_config_finish() refuses this configuration */
	struct io_verify *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	uint32_t sets = 1;
	while ((uint64_t)sets * 2 * VERIFY_WAYS <= pc->verify_cache_size)
		sets *= 2;
	v->cache = calloc((size_t)sets * VERIFY_WAYS, sizeof(*v->cache));
	if (!v->cache) {
		free(v);
		return -ENOMEM;
	}
	v->sets = sets;
	v->w = w;
	v->done = done;
	v->hop = hop;
	v->lmtp = hop->kind == IO_HOP_LMTP;
	if (getrandom(&v->seed, sizeof(v->seed), 0) != sizeof(v->seed))
		v->seed = (uint64_t)ds_mono_us();
	for (uint32_t i = 0; i < IO_VERIFY_PROBES_MAX; i++) {
		v->probe[i].idx = i;
		v->probe[i].fd = -1;
	}
	w->verify = v;
	return 0;
}

void io_verify_destroy(struct io_worker *w)
{
	struct io_verify *v = w->verify;
	if (!v)
		return;
	if (io_verify_busy(w)) {
		/* An operation may still be in flight into a probe's buffers: leave it (the process ends). */
		w->verify = NULL;
		return;
	}
	for (uint32_t i = 0; i < IO_VERIFY_PROBES_MAX; i++)
		if (v->probe[i].fd >= 0)
			close(v->probe[i].fd);
	free(v->cache);
	free(v);
	w->verify = NULL;
}
