/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_VERIFY_H
#define DS_IO_VERIFY_H

/*
 * Recipient verification by the next hop (issue 17, --verify-recipients
 * DOMAIN): before RCPT is answered for a recipient of such a domain, the
 * first SMTP/LMTP --deliver-to hop is asked with a probe that never sends
 * data (greeting, EHLO/LHLO, MAIL FROM:<>, RCPT TO:<addr>, then RSET and
 * the connection kept idle for the next question, up to 16 questions, 5
 * refusals or 30 s, then QUIT), on the worker's ring (IO_OP_VERIFY); the
 * session waits for the answer as it waits for a commit (SMTP_WAIT_RCPT),
 * the worker never blocks. A question on an idle connection the hop has
 * closed meanwhile is asked again on a new one.
 *
 *   hop 2xx at RCPT -> known (250), cached --verify-positive-ttl-s
 *   hop 5xx at RCPT -> unknown (550 5.1.1), cached --verify-negative-ttl-s
 *   anything else (4xx, a failure before RCPT, no answer within
 *   --verify-timeout-s, no free probe) -> 450 4.1.1, not cached: never
 *   250 on a guess.
 *
 * Per worker: the probes (at most IO_VERIFY_PROBES_MAX at a time) and the
 * caches (--verify-cache-size entries, 4-way, fixed memory), no lock. An
 * address may so be probed once per worker; the next hop sees at most
 * threads probes per address and TTL.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IO_VERIFY_PROBES_MAX 64
#define IO_VERIFY_REPLY_MAX  2048 /* one reply of the next hop; more is a failed probe */

struct io_worker;

/* The answer for the session whose connection key asked (io_conn_rcpt_answer). */
typedef void (*io_verify_done_fn)(struct io_worker *w, uint64_t key, int res);

/* On the worker's thread; nothing is created without --verify-recipients. */
int io_verify_create(struct io_worker *w, io_verify_done_fn done);
void io_verify_destroy(struct io_worker *w);
/* Is domain one of --verify-recipients (exact, or ".d" for its subdomains; case-insensitive)? */
bool io_verify_domain(const struct io_worker *w, const char *domain, size_t len);
/*
 * Ask about addr (local@domain) for connection key: 0 or -ENOENT from the
 * cache, -ETIMEDOUT when no probe can start, else -EINPROGRESS and done()
 * is called later (always, exactly once, unless the worker stops first).
 */
int io_verify_ask(struct io_worker *w, const char *addr, size_t len, uint64_t key);
void io_verify_complete(struct io_worker *w, uint64_t low, int res);
void io_verify_tick(struct io_worker *w, int64_t now_ms);
bool io_verify_busy(const struct io_worker *w);

#endif
