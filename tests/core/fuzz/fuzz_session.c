/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness over the whole session: the first byte picks a
 * configuration and failure injections, the rest is client bytes fed in
 * pseudo-random chunks. Commits settle at once (alternating ok / ENOSPC /
 * EIO), STARTTLS completes at once.
 *
 * Invariants (abort on violation):
 *  - sink calls pair up: begin, then writes, then exactly one commit or abort;
 *  - data_commit's body_size equals the bytes written;
 *  - no 2xx "queued as" reply unless commit_done(0) was just called;
 *  - replies are well-formed ("ddd" + ' ' or '-') and output stays bounded;
 *  - *used never exceeds the input length; SMTP_OK consumes everything;
 *  - refused() gets a 4xx/5xx code matching its line and readable strings;
 *  - mail_ok() is asked only between transactions (nothing open or pending).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp.h"

struct fz {
	bool open, pending;
	uint64_t written;
	int fail_every;
	unsigned calls;
};

#define CHECK(c)                                                                                             \
	do {                                                                                                 \
		if (!(c)) {                                                                                  \
			fprintf(stderr, "invariant failed: %s line %d\n", #c, __LINE__);                     \
			abort();                                                                             \
		}                                                                                            \
	} while (0)

static bool inject(struct fz *f)
{
	return f->fail_every && (++f->calls % (unsigned)f->fail_every) == 0;
}

static int z_begin(void *ctx, char *id, size_t cap)
{
	struct fz *f = ctx;
	CHECK(!f->open && !f->pending);
	if (inject(f))
		return -ENOSPC;
	f->open = true;
	f->written = 0;
	snprintf(id, cap, "FZ%u", f->calls);
	return 0;
}

static int z_write(void *ctx, const void *buf, size_t len)
{
	struct fz *f = ctx;
	CHECK(f->open);
	CHECK(len > 0);
	(void)*(volatile const char *)buf;
	(void)*((volatile const char *)buf + len - 1);
	if (inject(f))
		return -EIO;
	f->written += len;
	return 0;
}

static int z_commit(void *ctx, const struct ds_envelope *env)
{
	struct fz *f = ctx;
	CHECK(f->open);
	f->open = false;
	CHECK(env->body_size == f->written);
	CHECK(env->rcpt_count > 0);
	CHECK(env->mail_from && env->mail_params && env->helo && env->proto && env->tls);
	for (uint32_t i = 0; i < env->rcpt_count; i++) {
		CHECK(env->rcpt[i].addr[0] != '\0');
		CHECK(!strpbrk(env->rcpt[i].addr, "\r\n"));
		(void)strlen(env->rcpt[i].params);
	}
	if (inject(f))
		return -EIO;
	f->pending = true;
	return 0;
}

static void z_abort(void *ctx)
{
	struct fz *f = ctx;
	CHECK(f->open);
	f->open = false;
}

static int64_t z_now(void *ctx)
{
	return 1795000000000000LL;
}

static void z_refused(void *ctx, unsigned code, const char *line, const char *helo, const char *mail_from)
{
	(void)ctx;
	CHECK(code >= 400 && code <= 599 && line[3] == ' ');
	CHECK((unsigned)(line[0] - '0') == code / 100);
	CHECK(helo != NULL && mail_from != NULL);
	(void)strlen(helo);
	(void)strlen(mail_from);
}

static void z_replied(void *ctx, unsigned code)
{
	(void)ctx;
	CHECK(code >= 200 && code <= 599);
}

/* MAIL asks between transactions only; injected refusals stand for a spool above its watermark. */
static int z_mail_ok(void *ctx)
{
	struct fz *f = ctx;
	CHECK(!f->open && !f->pending);
	return inject(f) ? -ENOSPC : 0;
}

/* RCPT policy (issue 17): every answer, the asynchronous one included, chosen by the address. */
static int z_rcpt_ok(void *ctx, const char *mailbox, size_t len, const char *domain, size_t dlen)
{
	static const int answers[] = {0, 0, -ENOENT, -EBUSY, -ETIMEDOUT, -EINPROGRESS, -EUSERS, 0};
	(void)ctx;
	CHECK(strlen(mailbox) >= len);
	CHECK(!domain || (domain > mailbox && domain + dlen == mailbox + len));
	return answers[len % 8];
}

static const struct smtp_sink sink = {z_begin,	 z_write,   z_commit,  z_abort,	 z_now,
				      z_refused, z_replied, z_mail_ok, z_rcpt_ok};

/* Drain output; check reply lines; count "queued as". */
static void drain(struct smtp_session *s, bool queued_ok)
{
	size_t n;
	const uint8_t *o;

	while ((o = smtp_session_output(s, &n)), n > 0) {
		CHECK(n <= 1024);
		size_t ls = 0;
		for (size_t i = 0; i + 1 < n; i++) {
			if (o[i] == '\r' && o[i + 1] == '\n') {
				CHECK(i - ls >= 4 && i - ls < 512);
				CHECK(o[ls] >= '2' && o[ls] <= '5' && (o[ls + 3] == ' ' || o[ls + 3] == '-'));
				/* A positive reply saying "queued" only right after commit_done(0). */
				if (!queued_ok && o[ls] == '2')
					CHECK(!memmem(o + ls, i - ls, "queued as", 9));
				ls = i + 2;
			}
		}
		CHECK(ls == n); /* output holds whole lines only */
		smtp_session_output_consumed(s, n);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const doms[] = {"example.com", ".example.net"};
	static uint8_t mem[16384];
	struct smtp_config cfg;
	struct fz f = {0};

	if (size < 1)
		return 0;
	uint8_t ctl = data[0];
	data++;
	size--;
	smtp_config_defaults(&cfg);
	cfg.hostname = "mx.fuzz";
	cfg.accept_domains = doms;
	cfg.accept_domain_count = 2;
	cfg.lmtp = ctl & 1;
	cfg.tls_available = ctl & 2;
	if (ctl & 4) {
		cfg.max_recipients = 3;
		cfg.max_cmd_line = 64;
		cfg.max_text_line = 40;
		cfg.max_message_size = 200;
		cfg.max_errors = 5;
	}
	f.fail_every = (ctl >> 3) & 7;
	CHECK(smtp_session_size(&cfg) <= sizeof(mem));
	CHECK(smtp_session_size(&cfg) < 2048 + cfg.max_cmd_line);
	struct smtp_peer peer = {"2001:db8::1", 25};
	struct smtp_session *s = smtp_session_init(mem, &cfg, &sink, &f, &peer);
	drain(s, false);

	uint32_t rng = (uint32_t)size * 2654435761u + ctl;
	size_t pos = 0;
	unsigned commits = 0, loops = 0;
	bool closed = false;
	while (pos < size && !closed) {
		CHECK(++loops < 10 * size + 1000);
		rng = rng * 1103515245u + 12345u;
		size_t c = (rng >> 16) % 3 == 0 ? size - pos : 1 + (rng >> 8) % 64;
		if (c > size - pos)
			c = size - pos;
		size_t used = 0;
		enum smtp_status st = smtp_session_input(s, data + pos, c, &used);
		CHECK(used <= c);
		if (st == SMTP_OK)
			CHECK(used == c);
		pos += used;
		drain(s, false);
		switch (st) {
		case SMTP_WAIT_COMMIT: {
			CHECK(f.pending);
			CHECK(smtp_session_phase(s) == SMTP_PHASE_COMMIT);
			f.pending = false;
			int res = (commits++ % 3) == 2 ? -ENOSPC : 0;
			smtp_session_commit_done(s, res);
			drain(s, res == 0);
			break;
		}
		case SMTP_WAIT_RCPT:
			CHECK(smtp_session_phase(s) == SMTP_PHASE_COMMIT);
			if (smtp_session_rcpt_done(s, (ctl & 1) ? 0 : -ENOENT) == SMTP_CLOSE)
				closed = true;
			drain(s, false);
			break;
		case SMTP_STARTTLS:
			pos = size > pos + 3 ? pos + 3 : size; /* drop some unread plaintext */
			smtp_session_tls_started(s, "TLSv1.3 TLS_AES_128_GCM_SHA256");
			break;
		case SMTP_CLOSE:
			closed = true;
			break;
		default:
			CHECK(!f.pending);
			break;
		}
	}
	if (!closed && (ctl & 0x40))
		smtp_session_timeout(s);
	if (!closed && (ctl & 0x80))
		smtp_session_shutdown(s);
	drain(s, false);
	smtp_session_fini(s);
	CHECK(!f.open);
	return 0;
}
