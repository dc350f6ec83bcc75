/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the delivery queue (deliver/dlv_queue.c). One case per
 * ctest test: test_dlv_queue CASE [N]. Run them under ASan too (leaks of
 * the pool and of recipient lists show there).
 *
 *   fifo           new line in arrival order, retry_now back to the head
 *   alternation    1000 deferred due + new mail arriving: every second pick new
 *   deferred_order due order, ties in defer order, nothing before its time
 *   backoff        retry_min * 2^(n-1) capped, jitter -0..25% over many seeds
 *   lifetime       0 from dlv_queue_backoff_us once the age is over the lifetime
 *   hops           failover in configured order, hop back-off doubling, one success clears
 *   next_due       the earliest time dlv_queue_next() hands something out
 *   rcpts          rcpt_open on add and on rcpt_state, inline and long lists, -EALREADY, -EINVAL
 *   pool           slots reused, no growth when refilled, stats and foreach
 *   assert_final   a final recipient given a state again aborts (forked child)
 *   model          N (10^5) random operations against a reference model
 *   bench          prints ns per add+next+done for N (10^6) messages; no timed assertion
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dlv_queue.h"
#include "spool.h"

_Static_assert((int)DLV_RCPT_PENDING == (int)SPOOL_RCPT_PENDING, "rcpt state values are the format's");
_Static_assert((int)DLV_RCPT_ATTEMPT == (int)SPOOL_RCPT_ATTEMPT, "rcpt state values are the format's");
_Static_assert((int)DLV_RCPT_DELIVERED == (int)SPOOL_RCPT_DELIVERED, "rcpt state values are the format's");
_Static_assert((int)DLV_RCPT_DEFERRED == (int)SPOOL_RCPT_DEFERRED, "rcpt state values are the format's");
_Static_assert((int)DLV_RCPT_FAILED == (int)SPOOL_RCPT_FAILED, "rcpt state values are the format's");
_Static_assert(DLV_QUEUE_RCPTS_MAX == SPOOL_OUTCOME_RCPTS_MAX, "recipient limit is the format's");

#define CHECK(cond)                                                                                          \
	do {                                                                                                 \
		if (!(cond)) {                                                                               \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);             \
			exit(1);                                                                             \
		}                                                                                            \
	} while (0)

#define S  1000000LL /* us */
#define T0 (1700000000LL * S)

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static struct dlv_queue *mkq(uint32_t hops, uint64_t seed)
{
	struct dlv_queue_config cfg;
	struct dlv_queue *q;

	dlv_queue_config_defaults(&cfg);
	cfg.hop_count = hops;
	cfg.seed = seed;
	CHECK(dlv_queue_create(&q, &cfg) == 0);
	return q;
}

static struct dlv_qmsg *add_new(struct dlv_queue *q, uint64_t id, int64_t recv)
{
	struct dlv_queue_add a = {.id = id, .size = 100 + id, .received_at_us = recv, .rcpt_count = 1};
	struct dlv_qmsg *m;

	CHECK(dlv_queue_add(q, &a, &m) == 0);
	CHECK(m && m->id == id && m->line == DLV_QLINE_NEW);
	return m;
}

static struct dlv_qmsg *add_deferred(struct dlv_queue *q, uint64_t id, int64_t recv, int64_t due,
				     uint32_t attempts)
{
	struct dlv_queue_add a = {.id = id,
				  .size = 100 + id,
				  .received_at_us = recv,
				  .rcpt_count = 1,
				  .attempts = attempts,
				  .due_us = due};
	struct dlv_qmsg *m;

	CHECK(dlv_queue_add(q, &a, &m) == 0);
	CHECK(m && m->id == id && m->line == DLV_QLINE_DEFERRED);
	return m;
}

static void finish(struct dlv_queue *q, struct dlv_qmsg *m)
{
	for (uint32_t i = 0; i < m->rcpt_count; i++)
		if (!DLV_RCPT_STATE_FINAL(m->rcpt_state[i]))
			dlv_queue_rcpt_state(q, m, i, DLV_RCPT_DELIVERED);
	CHECK(m->rcpt_open == 0);
	dlv_queue_done(q, m);
}

/* ---- cases ---- */

static void t_fifo(void)
{
	struct dlv_queue *q = mkq(1, 1);
	struct dlv_queue_stats st;

	CHECK(dlv_queue_next(q, T0) == NULL);
	for (uint64_t i = 1; i <= 100; i++)
		add_new(q, i, T0 + (int64_t)i);
	dlv_queue_stats(q, &st);
	CHECK(st.messages[DLV_QLINE_NEW] == 100 && st.messages[DLV_QLINE_DEFERRED] == 0);
	CHECK(st.rcpts_open == 100 && st.oldest_received_at_us == T0 + 1);
	for (uint64_t i = 1; i <= 100; i++) {
		struct dlv_qmsg *m = dlv_queue_next(q, T0);

		CHECK(m && m->id == i && m->line == DLV_QLINE_BUSY);
		if (i % 10 == 0) { /* not attempted after all: back to the head, next again */
			dlv_queue_retry_now(q, m);
			CHECK(m->line == DLV_QLINE_NEW && m->attempts == 0);
			struct dlv_qmsg *again = dlv_queue_next(q, T0);
			CHECK(again == m);
		}
		dlv_queue_attempt_begin(q, m);
		CHECK(m->attempts == 1);
		dlv_queue_stats(q, &st);
		CHECK(st.messages[DLV_QLINE_BUSY] == 1 && st.messages[DLV_QLINE_NEW] == 100 - i);
		CHECK(st.bytes[DLV_QLINE_BUSY] == 100 + i);
		finish(q, m);
	}
	CHECK(dlv_queue_next(q, T0) == NULL);
	dlv_queue_stats(q, &st);
	CHECK(st.messages[0] + st.messages[1] + st.messages[2] == 0 && st.rcpts_open == 0);
	CHECK(st.bytes[0] + st.bytes[1] + st.bytes[2] == 0);
	CHECK(st.oldest_received_at_us == INT64_MAX);
	dlv_queue_destroy(q);
	printf("fifo: 100 messages in order, retry_now to the head\n");
}

static void t_alternation(void)
{
	struct dlv_queue *q = mkq(1, 1);
	uint64_t next_new = 1000000, next_def = 1;
	int64_t now = T0;

	/* A backlog: 1000 deferred messages all due. */
	for (uint64_t i = 1; i <= 1000; i++)
		add_deferred(q, i, T0 - 3600 * S, T0 - 1000 * S + (int64_t)i, 3);
	/* A backlog of new mail too, and more arriving: both lines always have one due. */
	for (uint64_t i = 0; i < 500; i++)
		add_new(q, next_new + 10000 + i, now);
	unsigned picks = 0, picks_new = 0;
	int prev_new = -1;

	for (int k = 0; k < 1000; k++) {
		add_new(q, next_new + (uint64_t)k, now);
		for (int j = 0; j < 2 && picks < 2000; j++) {
			struct dlv_qmsg *m = dlv_queue_next(q, now);

			CHECK(m);
			int is_new = m->id >= 1000000;
			if (is_new) {
				picks_new++;
			} else { /* the deferred line in due order */
				CHECK(m->id == next_def);
				next_def++;
			}
			if (prev_new >= 0)
				CHECK(is_new != prev_new); /* strictly alternating */
			prev_new = is_new;
			picks++;
			finish(q, m);
		}
	}
	CHECK(picks == 2000 && picks_new == 1000);
	struct dlv_queue_stats st;
	dlv_queue_stats(q, &st);
	CHECK(st.messages[DLV_QLINE_NEW] == 500 && st.messages[DLV_QLINE_DEFERRED] == 0);
	for (uint64_t i = 0; i < 500; i++) {
		struct dlv_qmsg *m = dlv_queue_next(q, now);
		CHECK(m && m->id >= 1000000);
		finish(q, m);
	}

	/* Only one line due: it is drained without waiting for the other. */
	for (uint64_t i = 0; i < 50; i++)
		add_new(q, 2000000 + i, now);
	for (uint64_t i = 0; i < 50; i++) {
		struct dlv_qmsg *m = dlv_queue_next(q, now);
		CHECK(m && m->id == 2000000 + i);
		finish(q, m);
	}
	/* Deferred not due yet: new mail goes, deferred waits for its time. */
	add_deferred(q, 5, T0, now + 10 * S, 1);
	add_new(q, 3000000, now);
	struct dlv_qmsg *m = dlv_queue_next(q, now);
	CHECK(m && m->id == 3000000);
	finish(q, m);
	CHECK(dlv_queue_next(q, now + 10 * S - 1) == NULL);
	m = dlv_queue_next(q, now + 10 * S);
	CHECK(m && m->id == 5);
	finish(q, m);
	dlv_queue_destroy(q);
	printf("alternation: 2000 picks with backlogs on both lines (1000 deferred, 500+ new), %u new, "
	       "strictly alternating\n",
	       picks_new);
}

static void t_deferred_order(void)
{
	struct dlv_queue *q = mkq(1, 1);
	enum { N = 5000 };
	static int64_t due[N];

	/* Random due times with many ties; the heap must give (due, defer order). */
	for (uint64_t i = 0; i < N; i++) {
		due[i] = T0 + (int64_t)rnd_below(200) * S;
		add_deferred(q, i, T0 - S, due[i], 1);
	}
	int64_t now = T0 + 1000 * S;
	int64_t last_due = INT64_MIN;
	uint64_t last_id = 0;

	for (unsigned k = 0; k < N; k++) {
		CHECK(dlv_queue_next_due_us(q) <= now);
		struct dlv_qmsg *m = dlv_queue_next(q, now);
		CHECK(m && m->due_us == due[m->id]);
		CHECK(m->due_us >= last_due);
		if (m->due_us == last_due)
			CHECK(m->id > last_id); /* ties: in the order they were queued */
		last_due = m->due_us;
		last_id = m->id;
		finish(q, m);
	}
	CHECK(dlv_queue_next(q, now) == NULL);

	/* Nothing before its time; defer puts it back by its new due time. */
	struct dlv_qmsg *a = add_deferred(q, 1, T0, T0 + 50 * S, 1);
	struct dlv_qmsg *b = add_deferred(q, 2, T0, T0 + 60 * S, 1);
	CHECK(dlv_queue_next_due_us(q) == T0 + 50 * S);
	CHECK(dlv_queue_next(q, T0 + 49 * S) == NULL);
	CHECK(dlv_queue_next(q, T0 + 50 * S) == a);
	dlv_queue_attempt_begin(q, a);
	dlv_queue_defer(q, a, T0 + 70 * S);
	CHECK(a->line == DLV_QLINE_DEFERRED && a->attempts == 2);
	CHECK(dlv_queue_next_due_us(q) == T0 + 60 * S);
	/* retry_now on a deferred message: back in its old place, due now. */
	CHECK(dlv_queue_next(q, T0 + 80 * S) == b);
	dlv_queue_retry_now(q, b);
	CHECK(b->line == DLV_QLINE_DEFERRED && b->attempts == 1);
	CHECK(dlv_queue_next(q, T0 + 80 * S) == b);
	CHECK(dlv_queue_next(q, T0 + 80 * S) == a);
	finish(q, a);
	finish(q, b);
	/* A deferred message deleted while waiting (done on any line). */
	a = add_deferred(q, 3, T0, T0 + 5 * S, 1);
	b = add_deferred(q, 4, T0, T0 + 6 * S, 1);
	dlv_queue_done(q, a);
	CHECK(dlv_queue_next(q, T0 + 100 * S) == b);
	finish(q, b);
	dlv_queue_destroy(q);
	printf("deferred_order: %d random due times (ties in queue order), defer, retry_now, delete\n", N);
}

static void t_backoff(void)
{
	/* (min, max) pairs: defaults, min 0, a cap below 4/3 of min, min == max. */
	static const uint32_t cfgs[][2] = {{300, 4000}, {0, 1000}, {300, 320}, {60, 60}, {1, 86400}};
	unsigned long samples = 0;

	for (unsigned c = 0; c < sizeof(cfgs) / sizeof(cfgs[0]); c++) {
		uint32_t rmin = cfgs[c][0], rmax = cfgs[c][1];

		for (uint64_t seed = 0; seed < 300; seed++) {
			struct dlv_queue_config cfg;
			struct dlv_queue *q;
			struct dlv_qmsg *m;

			dlv_queue_config_defaults(&cfg);
			cfg.retry_min_s = rmin;
			cfg.retry_max_s = rmax;
			cfg.queue_lifetime_s = UINT32_MAX; /* 40 attempts at up to a day apart */
			cfg.seed = seed;
			CHECK(dlv_queue_create(&q, &cfg) == 0);
			m = add_new(q, 1, T0);
			CHECK(dlv_queue_next(q, T0) == m);
			int64_t now = T0 + S;

			for (uint32_t n = 1; n <= 40; n++) {
				dlv_queue_attempt_begin(q, m);
				CHECK(m->attempts == n);
				uint64_t base_s = n - 1 >= 32 ? rmax : (uint64_t)rmin << (n - 1);
				if (base_s > rmax)
					base_s = rmax;
				int64_t base = (int64_t)base_s * S;
				int64_t lo = base - base / 4;
				if (lo < (int64_t)rmin * S)
					lo = (int64_t)rmin * S;
				int64_t due = dlv_queue_backoff_us(q, m, now);
				int64_t wait = due - now;

				CHECK(due != 0);
				CHECK(wait >= lo && wait <= base);
				CHECK(wait >= (int64_t)rmin * S); /* never below retry_min */
				samples++;
				dlv_queue_defer(q, m, due);
				CHECK(dlv_queue_next(q, due - 1) == NULL);
				CHECK(dlv_queue_next(q, due) == m);
				now = due + S; /* the attempt took a second */
			}
			finish(q, m);
			dlv_queue_destroy(q);
		}
	}
	/*
	 * Jitter really spreads: at the default config, attempt 2 (600 s) over
	 * 1000 seeds covers 450..600 s. Attempt 1 is exactly retry_min: its
	 * base is retry_min and nothing goes below it.
	 */
	int64_t wmin = INT64_MAX, wmax = INT64_MIN;
	int64_t second_of_seed7 = 0;

	for (uint64_t seed = 0; seed < 1000; seed++) {
		struct dlv_queue *q = mkq(1, seed);
		struct dlv_qmsg *m = add_new(q, 1, T0);

		CHECK(dlv_queue_next(q, T0) == m);
		dlv_queue_attempt_begin(q, m);
		CHECK(dlv_queue_backoff_us(q, m, T0) - T0 == 300 * S);
		dlv_queue_attempt_begin(q, m);
		int64_t w = dlv_queue_backoff_us(q, m, T0) - T0;
		if (seed == 7)
			second_of_seed7 = w;
		wmin = w < wmin ? w : wmin;
		wmax = w > wmax ? w : wmax;
		finish(q, m);
		dlv_queue_destroy(q);
	}
	CHECK(wmin >= 450 * S && wmax <= 600 * S);
	CHECK(wmin < 455 * S && wmax > 595 * S);
	/* Same seed, same jitter. */
	struct dlv_queue *q = mkq(1, 7);
	struct dlv_qmsg *m = add_new(q, 1, T0);
	CHECK(dlv_queue_next(q, T0) == m);
	dlv_queue_attempt_begin(q, m);
	CHECK(dlv_queue_backoff_us(q, m, T0) - T0 == 300 * S);
	dlv_queue_attempt_begin(q, m);
	CHECK(dlv_queue_backoff_us(q, m, T0) - T0 == second_of_seed7);
	finish(q, m);
	dlv_queue_destroy(q);
	printf("backoff: %lu samples in bounds (5 configs x 300 seeds x 40 attempts); attempt 2 over 1000 "
	       "seeds: %.1f..%.1f s\n",
	       samples, (double)wmin / S, (double)wmax / S);
}

static void t_lifetime(void)
{
	struct dlv_queue_config cfg;
	struct dlv_queue *q;

	dlv_queue_config_defaults(&cfg);
	cfg.queue_lifetime_s = 3600;
	CHECK(dlv_queue_create(&q, &cfg) == 0);
	struct dlv_qmsg *m = add_new(q, 1, T0);
	CHECK(dlv_queue_next(q, T0) == m);
	dlv_queue_attempt_begin(q, m);
	CHECK(dlv_queue_backoff_us(q, m, T0 + 3600 * S) != 0);	   /* age == lifetime: not over */
	CHECK(dlv_queue_backoff_us(q, m, T0 + 3600 * S + 1) == 0); /* over */
	CHECK(dlv_queue_backoff_us(q, m, T0 + 86400 * S) == 0);
	/* The caller fails what is open, then forgets it. */
	dlv_queue_rcpt_state(q, m, 0, DLV_RCPT_FAILED);
	CHECK(m->rcpt_open == 0);
	dlv_queue_done(q, m);
	/* A recovered message received long ago expires on its first deferral. */
	m = add_deferred(q, 2, T0 - 7200 * S, T0, 4);
	CHECK(dlv_queue_next(q, T0) == m);
	dlv_queue_attempt_begin(q, m);
	CHECK(m->attempts == 5);
	CHECK(dlv_queue_backoff_us(q, m, T0) == 0);
	finish(q, m);
	dlv_queue_destroy(q);

	/* Lifetime 0: tried once (Postfix's maximal_queue_lifetime = 0). */
	cfg.queue_lifetime_s = 0;
	CHECK(dlv_queue_create(&q, &cfg) == 0);
	m = add_new(q, 1, T0);
	CHECK(dlv_queue_next(q, T0) == m);
	dlv_queue_attempt_begin(q, m);
	CHECK(dlv_queue_backoff_us(q, m, T0) != 0);
	CHECK(dlv_queue_backoff_us(q, m, T0 + 1) == 0);
	finish(q, m);
	dlv_queue_destroy(q);
	printf("lifetime: not expired at age == lifetime, expired 1 us later\n");
}

static void t_hops(void)
{
	struct dlv_queue_config cfg;
	struct dlv_queue *q;

	dlv_queue_config_defaults(&cfg);
	cfg.hop_count = 3;
	cfg.hop_backoff_min_s = 60;
	cfg.retry_max_s = 4000;
	CHECK(dlv_queue_create(&q, &cfg) == 0);
	int64_t now = T0;

	CHECK(dlv_queue_hop_pick(q, now) == 0);
	dlv_queue_hop_failed(q, 0, now);
	CHECK(!dlv_queue_hop_up(q, 0, now) && dlv_queue_hop_up(q, 1, now));
	CHECK(dlv_queue_hop_pick(q, now) == 1);
	dlv_queue_hop_failed(q, 1, now + 10 * S);
	CHECK(dlv_queue_hop_pick(q, now + 10 * S) == 2);
	dlv_queue_hop_failed(q, 2, now + 20 * S);
	CHECK(dlv_queue_hop_pick(q, now + 20 * S) == -1);
	/* Every hop down: nothing handed out, next_due says when hop 0 is back. */
	struct dlv_qmsg *m = add_new(q, 1, now);
	CHECK(dlv_queue_next(q, now + 20 * S) == NULL);
	CHECK(dlv_queue_next_due_us(q) == now + 60 * S);
	CHECK(dlv_queue_next(q, now + 60 * S - 1) == NULL);
	CHECK(dlv_queue_hop_pick(q, now + 60 * S) == 0); /* first configured hop up again */
	CHECK(dlv_queue_next(q, now + 60 * S) == m);
	finish(q, m);
	/* A failure while down (a connection begun before) changes nothing. */
	dlv_queue_hop_failed(q, 1, now + 30 * S);
	CHECK(dlv_queue_hop_up(q, 1, now + 70 * S) && !dlv_queue_hop_up(q, 1, now + 70 * S - 1));

	/* Consecutive failures double hop 0's back-off up to retry_max, exactly. */
	int64_t t = now + 60 * S;
	int64_t expect_s = 120;
	for (int k = 2; k <= 12; k++) {
		dlv_queue_hop_failed(q, 0, t);
		int64_t cap = expect_s < 4000 ? expect_s : 4000;
		CHECK(!dlv_queue_hop_up(q, 0, t + cap * S - 1));
		CHECK(dlv_queue_hop_up(q, 0, t + cap * S));
		t += cap * S;
		expect_s *= 2;
	}
	/* One success clears: the next failure backs off hop_backoff_min_s again. */
	dlv_queue_hop_ok(q, 0);
	CHECK(dlv_queue_hop_up(q, 0, t));
	dlv_queue_hop_failed(q, 0, t);
	CHECK(!dlv_queue_hop_up(q, 0, t + 60 * S - 1) && dlv_queue_hop_up(q, 0, t + 60 * S));
	CHECK(dlv_queue_hop_pick(q, t) == 1);
	dlv_queue_destroy(q);

	/* hop_backoff_min above retry_max: capped at retry_max. */
	dlv_queue_config_defaults(&cfg);
	cfg.hop_backoff_min_s = 100;
	cfg.retry_min_s = 10;
	cfg.retry_max_s = 50;
	CHECK(dlv_queue_create(&q, &cfg) == 0);
	dlv_queue_hop_failed(q, 0, T0);
	CHECK(!dlv_queue_hop_up(q, 0, T0 + 50 * S - 1) && dlv_queue_hop_up(q, 0, T0 + 50 * S));
	dlv_queue_destroy(q);

	/* Bad configs. */
	dlv_queue_config_defaults(&cfg);
	cfg.hop_count = 0;
	CHECK(dlv_queue_create(&q, &cfg) == -EINVAL && q == NULL);
	cfg.hop_count = DLV_QUEUE_HOPS_MAX + 1;
	CHECK(dlv_queue_create(&q, &cfg) == -EINVAL);
	dlv_queue_config_defaults(&cfg);
	cfg.retry_min_s = 5000;
	CHECK(dlv_queue_create(&q, &cfg) == -EINVAL);
	printf("hops: failover 0 -> 1 -> 2 -> none -> 0, back-off 60..4000 s doubling, cleared by one "
	       "success\n");
}

static void t_next_due(void)
{
	struct dlv_queue_config cfg;
	struct dlv_queue *q;

	dlv_queue_config_defaults(&cfg);
	cfg.hop_count = 2;
	cfg.hop_backoff_min_s = 60;
	CHECK(dlv_queue_create(&q, &cfg) == 0);
	int64_t now = T0;

	CHECK(dlv_queue_next_due_us(q) == INT64_MAX);
	struct dlv_qmsg *d = add_deferred(q, 1, now, now + 500 * S, 1);
	CHECK(dlv_queue_next_due_us(q) == now + 500 * S);
	struct dlv_qmsg *n = add_new(q, 2, now);
	CHECK(dlv_queue_next_due_us(q) <= now); /* new waiting, a hop up */
	/* Busy messages are on no line: with only busy ones, nothing is due. */
	CHECK(dlv_queue_next(q, now) == n);
	CHECK(dlv_queue_next_due_us(q) == now + 500 * S);
	dlv_queue_retry_now(q, n);
	/* Both hops down: the earliest hop back up. */
	dlv_queue_hop_failed(q, 0, now);	  /* up at +60 */
	dlv_queue_hop_failed(q, 1, now + 10 * S); /* up at +70 */
	CHECK(dlv_queue_next_due_us(q) == now + 60 * S);
	CHECK(dlv_queue_next(q, now + 60 * S - 1) == NULL);
	/* Only a deferred message, due after the hop is back: its due time (the later). */
	CHECK(dlv_queue_next(q, now + 60 * S) == n);
	finish(q, n);
	CHECK(dlv_queue_next_due_us(q) == now + 500 * S);
	/* Deferred due before any hop is back: the hop time, not a busy loop of NULL picks. */
	dlv_queue_hop_failed(q, 0, now + 400 * S); /* second failure: up at +520 */
	dlv_queue_hop_failed(q, 1, now + 400 * S); /* up at +520 */
	CHECK(dlv_queue_next_due_us(q) == now + 520 * S);
	CHECK(dlv_queue_next(q, now + 519 * S) == NULL);
	CHECK(dlv_queue_next(q, now + 520 * S) == d);
	finish(q, d);
	CHECK(dlv_queue_next_due_us(q) == INT64_MAX);
	dlv_queue_destroy(q);
	printf("next_due: empty, deferred, new, busy-only, every hop down (earlier and later than the "
	       "message)\n");
}

static void t_rcpts(void)
{
	struct dlv_queue *q = mkq(1, 1);
	struct dlv_queue_add a = {.id = 1, .received_at_us = T0, .rcpt_count = 5};
	uint8_t st5[5] = {DLV_RCPT_DELIVERED, DLV_RCPT_PENDING, DLV_RCPT_ATTEMPT, DLV_RCPT_FAILED,
			  DLV_RCPT_DEFERRED};
	struct dlv_qmsg *m;
	struct dlv_queue_stats st;

	a.rcpt_state = st5;
	a.attempts = 2;
	a.redelivery = true;
	CHECK(dlv_queue_add(q, &a, &m) == 0);
	CHECK(m->rcpt_open == 3 && m->redelivery && m->line == DLV_QLINE_DEFERRED);
	CHECK(memcmp(m->rcpt_state, st5, 5) == 0 && m->rcpt_state != st5);
	dlv_queue_stats(q, &st);
	CHECK(st.rcpts_open == 3);
	/* Recovered, never attempted, no due time: the new line. */
	a.id = 2;
	a.attempts = 0;
	a.rcpt_state = NULL;
	struct dlv_qmsg *m2;
	CHECK(dlv_queue_add(q, &a, &m2) == 0 && m2->line == DLV_QLINE_NEW && m2->rcpt_open == 5);
	/* Never attempted but with a due time: deferred. */
	a.id = 3;
	a.due_us = T0 + 5;
	struct dlv_qmsg *m3;
	CHECK(dlv_queue_add(q, &a, &m3) == 0 && m3->line == DLV_QLINE_DEFERRED);
	dlv_queue_done(q, m3);
	a.due_us = 0;

	/* All final: not queued. Bad inputs. */
	uint8_t fin[3] = {DLV_RCPT_DELIVERED, DLV_RCPT_FAILED, DLV_RCPT_DELIVERED};
	uint8_t bad[3] = {DLV_RCPT_PENDING, 5, DLV_RCPT_PENDING};
	a.rcpt_count = 3;
	a.rcpt_state = fin;
	CHECK(dlv_queue_add(q, &a, &m3) == -EALREADY && m3 == NULL);
	a.rcpt_state = bad;
	CHECK(dlv_queue_add(q, &a, NULL) == -EINVAL);
	a.rcpt_state = NULL;
	a.rcpt_count = 0;
	CHECK(dlv_queue_add(q, &a, NULL) == -EINVAL);
	a.rcpt_count = DLV_QUEUE_RCPTS_MAX + 1;
	CHECK(dlv_queue_add(q, &a, NULL) == -EINVAL);
	CHECK(dlv_queue_add(q, NULL, NULL) == -EINVAL);
	dlv_queue_stats(q, &st);
	CHECK(st.rcpts_open == 8 && st.messages[DLV_QLINE_NEW] == 1 && st.messages[DLV_QLINE_DEFERRED] == 1);

	/* The longest list (its own allocation), updated one recipient at a time. */
	a.id = 4;
	a.rcpt_count = DLV_QUEUE_RCPTS_MAX;
	struct dlv_qmsg *big;
	CHECK(dlv_queue_add(q, &a, &big) == 0 && big->rcpt_open == DLV_QUEUE_RCPTS_MAX);
	CHECK(dlv_queue_next(q, T0) == m2); /* new first */
	CHECK(dlv_queue_next(q, T0) == m);  /* then deferred (due 0) */
	CHECK(dlv_queue_next(q, T0) == big);
	dlv_queue_attempt_begin(q, big);
	for (uint32_t i = 0; i < DLV_QUEUE_RCPTS_MAX; i++)
		dlv_queue_rcpt_state(q, big, i, i % 3 == 0 ? DLV_RCPT_DEFERRED : DLV_RCPT_DELIVERED);
	CHECK(big->rcpt_open == DLV_QUEUE_RCPTS_MAX / 3 + 1);
	dlv_queue_stats(q, &st);
	CHECK(st.rcpts_open == 8 + DLV_QUEUE_RCPTS_MAX / 3 + 1);
	dlv_queue_defer(q, big, T0 + 10 * S);
	/* ATTEMPT and DEFERRED are not final: open stays. */
	dlv_queue_rcpt_state(q, m, 1, DLV_RCPT_ATTEMPT);
	dlv_queue_rcpt_state(q, m, 1, DLV_RCPT_DEFERRED);
	CHECK(m->rcpt_open == 3);
	dlv_queue_rcpt_state(q, m, 4, DLV_RCPT_FAILED);
	CHECK(m->rcpt_open == 2);
	/* done with open recipients (a deleted message) takes them out of the total. */
	dlv_queue_done(q, m);
	dlv_queue_stats(q, &st);
	CHECK(st.rcpts_open == 5 + DLV_QUEUE_RCPTS_MAX / 3 + 1);
	/* destroy with live messages, one with a long list: ASan would report a leak. */
	dlv_queue_destroy(q);
	printf("rcpts: open counts on add/state/done, %u-recipient list, -EALREADY, -EINVAL\n",
	       DLV_QUEUE_RCPTS_MAX);
}

struct walk {
	uint64_t n, id_sum;
	uint64_t stop_after;
};

static int walk_fn(void *ctx, const struct dlv_qmsg *m)
{
	struct walk *w = ctx;

	w->n++;
	w->id_sum += m->id;
	return w->stop_after && w->n == w->stop_after ? 42 : 0;
}

static void t_pool(void)
{
	struct dlv_queue *q = mkq(1, 1);
	enum { N = 10000 };
	static struct dlv_qmsg *ms[N];
	struct dlv_queue_stats st;

	for (int round = 0; round < 3; round++) {
		for (uint64_t i = 0; i < N; i++) {
			struct dlv_queue_add a = {.id = i + 1,
						  .size = 10,
						  .received_at_us = T0 + (int64_t)rnd_below(1000),
						  .rcpt_count = 1 + (uint32_t)(i % 12)};
			CHECK(dlv_queue_add(q, &a, &ms[i]) == 0);
		}
		dlv_queue_stats(q, &st);
		CHECK(st.pool_slots >= N && st.pool_slots < N + 8192);
		uint64_t slots = st.pool_slots;
		CHECK(st.messages[DLV_QLINE_NEW] == N && st.bytes[DLV_QLINE_NEW] == 10 * N);
		CHECK(st.oldest_received_at_us >= T0 && st.oldest_received_at_us < T0 + 1000);
		struct walk w = {0};
		CHECK(dlv_queue_foreach(q, walk_fn, &w) == 0);
		CHECK(w.n == N && w.id_sum == (uint64_t)N * (N + 1) / 2);
		w = (struct walk){.stop_after = 7};
		CHECK(dlv_queue_foreach(q, walk_fn, &w) == 42 && w.n == 7);
		/* oldest follows removals in any order */
		for (uint64_t i = 0; i < N; i++) {
			uint64_t j = i + rnd_below(N - i);
			struct dlv_qmsg *t = ms[i];
			ms[i] = ms[j];
			ms[j] = t;
		}
		for (uint64_t i = 0; i < N; i++) {
			int64_t oldest = INT64_MAX;
			if (i % 97 == 0) {
				for (uint64_t k = i; k < N; k++)
					oldest = ms[k]->received_at_us < oldest ? ms[k]->received_at_us
										: oldest;
				dlv_queue_stats(q, &st);
				CHECK(st.oldest_received_at_us == oldest);
			}
			dlv_queue_done(q, ms[i]);
		}
		dlv_queue_stats(q, &st);
		CHECK(st.pool_slots == slots); /* refilling never grew the pool */
		CHECK(st.messages[0] + st.messages[1] + st.messages[2] == 0 && st.rcpts_open == 0);
		w = (struct walk){0};
		CHECK(dlv_queue_foreach(q, walk_fn, &w) == 0 && w.n == 0);
	}
	dlv_queue_destroy(q);
	dlv_queue_destroy(NULL);
	printf("pool: 3 rounds of %d messages in the same slots, oldest exact under random removal\n", N);
}

static void t_assert_final(void)
{
	/* Each child breaks one rule; DS_ASSERT must abort it. */
	for (int which = 0; which < 3; which++) {
		pid_t pid = fork();

		CHECK(pid >= 0);
		if (pid == 0) {
			struct dlv_queue *q = mkq(1, 1);
			struct dlv_qmsg *m = add_new(q, 1, T0);

			CHECK(dlv_queue_next(q, T0) == m);
			if (!freopen("/dev/null", "w", stderr))
				_exit(3);
			if (which == 0) { /* a final recipient given a state again */
				dlv_queue_rcpt_state(q, m, 0, DLV_RCPT_DELIVERED);
				dlv_queue_rcpt_state(q, m, 0, DLV_RCPT_FAILED);
			} else if (which == 1) { /* deferring a message with nothing open */
				dlv_queue_rcpt_state(q, m, 0, DLV_RCPT_DELIVERED);
				dlv_queue_defer(q, m, T0 + S);
			} else { /* a message used after done */
				finish(q, m);
				dlv_queue_defer(q, m, T0 + S);
			}
			_exit(0);
		}
		int status;
		CHECK(waitpid(pid, &status, 0) == pid);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
	}
	printf("assert_final: 3 broken rules abort\n");
}

/* ---- random operations against a reference model ---- */

#define ML_MAX	   1500
#define M_RCPT_MAX 12

struct rmsg {
	bool live;
	uint64_t id;
	int line, from;
	int64_t due, recv;
	uint64_t tie, size;
	uint32_t attempts, count, open;
	uint8_t st[M_RCPT_MAX];
	struct dlv_qmsg *m;
};

static struct {
	struct rmsg msg[ML_MAX];
	int newq[ML_MAX]; /* FIFO of msg indexes */
	int nnew;
	uint64_t tie_next;
	int last_line;
	int64_t hop_down[DLV_QUEUE_HOPS_MAX];
	uint32_t hop_fails[DLV_QUEUE_HOPS_MAX];
	uint32_t hops, hop_min_s, rmin_s, rmax_s, life_s;
} md;

static int md_hop_pick(int64_t now)
{
	for (uint32_t h = 0; h < md.hops; h++)
		if (now >= md.hop_down[h])
			return (int)h;
	return -1;
}

static int md_def_min(void)
{
	int best = -1;

	for (int i = 0; i < ML_MAX; i++) {
		struct rmsg *r = &md.msg[i];
		if (!r->live || r->line != DLV_QLINE_DEFERRED)
			continue;
		if (best < 0 || r->due < md.msg[best].due ||
		    (r->due == md.msg[best].due && r->tie < md.msg[best].tie))
			best = i;
	}
	return best;
}

static int md_next(int64_t now)
{
	if (md_hop_pick(now) < 0)
		return -1;
	int d = md_def_min();
	bool has_new = md.nnew > 0, has_def = d >= 0 && md.msg[d].due <= now;
	if (!has_new && !has_def)
		return -1;
	int line = has_new && has_def ? (md.last_line == DLV_QLINE_NEW ? DLV_QLINE_DEFERRED : DLV_QLINE_NEW)
				      : (has_new ? DLV_QLINE_NEW : DLV_QLINE_DEFERRED);
	md.last_line = line;
	int i;
	if (line == DLV_QLINE_NEW) {
		i = md.newq[0];
		memmove(md.newq, md.newq + 1, (size_t)(md.nnew - 1) * sizeof(int));
		md.nnew--;
	} else {
		i = d;
	}
	md.msg[i].from = line;
	md.msg[i].line = DLV_QLINE_BUSY;
	return i;
}

static int64_t md_next_due(void)
{
	int64_t msg_due;
	int d = md_def_min();

	if (md.nnew > 0)
		msg_due = INT64_MIN;
	else if (d >= 0)
		msg_due = md.msg[d].due;
	else
		return INT64_MAX;
	int64_t hop = INT64_MAX;
	for (uint32_t h = 0; h < md.hops; h++)
		hop = md.hop_down[h] < hop ? md.hop_down[h] : hop;
	return msg_due > hop ? msg_due : hop;
}

static void md_newq_remove(int i)
{
	for (int k = 0; k < md.nnew; k++) {
		if (md.newq[k] == i) {
			memmove(md.newq + k, md.newq + k + 1, (size_t)(md.nnew - k - 1) * sizeof(int));
			md.nnew--;
			return;
		}
	}
	CHECK(0);
}

static int md_free_slot(void)
{
	for (int tries = 0; tries < 8; tries++) {
		int i = (int)rnd_below(ML_MAX);
		if (!md.msg[i].live)
			return i;
	}
	for (int i = 0; i < ML_MAX; i++)
		if (!md.msg[i].live)
			return i;
	return -1;
}

static int md_pick(int line) /* a random live message on line (-1 = any), or -1 */
{
	int start = (int)rnd_below(ML_MAX);

	for (int k = 0; k < ML_MAX; k++) {
		int i = (start + k) % ML_MAX;
		if (md.msg[i].live && (line < 0 || md.msg[i].line == line))
			return i;
	}
	return -1;
}

static void md_compare(struct dlv_queue *q, int64_t now)
{
	struct dlv_queue_stats st;
	uint64_t n[3] = {0}, b[3] = {0}, open = 0;
	int64_t oldest = INT64_MAX;

	for (int i = 0; i < ML_MAX; i++) {
		struct rmsg *r = &md.msg[i];
		if (!r->live)
			continue;
		n[r->line]++;
		b[r->line] += r->size;
		open += r->open;
		oldest = r->recv < oldest ? r->recv : oldest;
	}
	dlv_queue_stats(q, &st);
	for (int l = 0; l < 3; l++)
		CHECK(st.messages[l] == n[l] && st.bytes[l] == b[l]);
	CHECK(st.rcpts_open == open && st.oldest_received_at_us == oldest);
	CHECK(dlv_queue_next_due_us(q) == md_next_due());
	CHECK(dlv_queue_hop_pick(q, now) == md_hop_pick(now));
	for (uint32_t h = 0; h < md.hops; h++)
		CHECK(dlv_queue_hop_up(q, h, now) == (now >= md.hop_down[h]));
}

static int md_walk(void *ctx, const struct dlv_qmsg *m)
{
	uint64_t *count = ctx;
	bool found = false;

	for (int i = 0; i < ML_MAX; i++) {
		struct rmsg *r = &md.msg[i];
		if (r->live && r->m == m) {
			CHECK(r->id == m->id && r->line == m->line && r->attempts == m->attempts);
			CHECK(r->open == m->rcpt_open && r->count == m->rcpt_count);
			CHECK(memcmp(r->st, m->rcpt_state, r->count) == 0);
			if (r->line == DLV_QLINE_DEFERRED)
				CHECK(r->due == m->due_us);
			found = true;
			break;
		}
	}
	CHECK(found);
	(*count)++;
	return 0;
}

static void t_model(unsigned long ops)
{
	struct dlv_queue_config cfg;
	struct dlv_queue *q;
	int64_t now = T0;
	uint64_t next_id = 1;
	unsigned long n_add = 0, n_pick = 0, n_null = 0, n_defer = 0, n_expired = 0, n_retry = 0, n_done = 0,
		      n_delete = 0, n_hopfail = 0, n_einval = 0, n_already = 0;

	memset(&md, 0, sizeof(md));
	md.hops = 3;
	md.hop_min_s = 30;
	md.rmin_s = 60;
	md.rmax_s = 4000;
	md.life_s = 2 * 86400;
	md.last_line = DLV_QLINE_DEFERRED;
	dlv_queue_config_defaults(&cfg);
	cfg.hop_count = md.hops;
	cfg.hop_backoff_min_s = md.hop_min_s;
	cfg.retry_min_s = md.rmin_s;
	cfg.retry_max_s = md.rmax_s;
	cfg.queue_lifetime_s = md.life_s;
	cfg.seed = 12345;
	CHECK(dlv_queue_create(&q, &cfg) == 0);

	for (unsigned long op = 0; op < ops; op++) {
		unsigned r = (unsigned)rnd_below(100);

		if (r < 28) { /* add: new, recovered, all final, bad */
			int i = md_free_slot();
			if (i < 0)
				continue;
			struct rmsg *m = &md.msg[i];
			struct dlv_queue_add a = {.id = next_id,
						  .lane = (unsigned)rnd_below(4),
						  .size = rnd_below(100000),
						  .received_at_us = now,
						  .rcpt_count = 1 + (uint32_t)rnd_below(M_RCPT_MAX)};
			uint8_t st[M_RCPT_MAX];
			unsigned kind = (unsigned)rnd_below(10);
			uint32_t open = a.rcpt_count;

			if (kind >= 6) { /* recovered */
				open = 0;
				for (uint32_t k = 0; k < a.rcpt_count; k++) {
					st[k] = (uint8_t)rnd_below(5);
					open += !DLV_RCPT_STATE_FINAL(st[k]);
				}
				if (kind == 9 && rnd_below(4) == 0)
					st[rnd_below(a.rcpt_count)] = (uint8_t)(5 + rnd_below(250));
				a.rcpt_state = st;
				a.received_at_us = now - (int64_t)rnd_below(50000) * S;
				a.attempts = (uint32_t)rnd_below(6);
				if (a.attempts || rnd_below(2))
					a.due_us = now + ((int64_t)rnd_below(1200) - 600) * S;
				a.redelivery = rnd_below(2);
			}
			struct dlv_qmsg *qm = (struct dlv_qmsg *)1;
			int rc = dlv_queue_add(q, &a, &qm);
			bool bad = false;
			for (uint32_t k = 0; a.rcpt_state && k < a.rcpt_count; k++)
				bad |= a.rcpt_state[k] > DLV_RCPT_STATE_MAX;
			if (bad) {
				CHECK(rc == -EINVAL && qm == NULL);
				n_einval++;
				continue;
			}
			if (open == 0) {
				CHECK(rc == -EALREADY && qm == NULL);
				n_already++;
				continue;
			}
			CHECK(rc == 0 && qm);
			*m = (struct rmsg){.live = true,
					   .id = next_id++,
					   .due = a.due_us,
					   .recv = a.received_at_us,
					   .size = a.size,
					   .attempts = a.attempts,
					   .count = a.rcpt_count,
					   .open = open,
					   .from = -1,
					   .m = qm};
			if (a.rcpt_state)
				memcpy(m->st, a.rcpt_state, a.rcpt_count);
			else
				memset(m->st, 0, sizeof(m->st));
			if (a.attempts > 0 || a.due_us != 0) {
				m->line = DLV_QLINE_DEFERRED;
				m->tie = md.tie_next++;
			} else {
				m->line = DLV_QLINE_NEW;
				md.newq[md.nnew++] = i;
			}
			n_add++;
		} else if (r < 55) { /* next */
			struct dlv_qmsg *qm = dlv_queue_next(q, now);
			int i = md_next(now);
			if (i < 0) {
				CHECK(qm == NULL);
				n_null++;
			} else {
				CHECK(qm == md.msg[i].m && qm->id == md.msg[i].id);
				CHECK(qm->line == DLV_QLINE_BUSY);
				n_pick++;
			}
		} else if (r < 70) { /* an attempt of a busy message ends */
			int i = md_pick(DLV_QLINE_BUSY);
			if (i < 0)
				continue;
			struct rmsg *m = &md.msg[i];
			unsigned what = (unsigned)rnd_below(10);
			if (what < 2) { /* no connection after all */
				dlv_queue_retry_now(q, m->m);
				m->line = m->from;
				if (m->from == DLV_QLINE_NEW) {
					memmove(md.newq + 1, md.newq, (size_t)md.nnew * sizeof(int));
					md.newq[0] = i;
					md.nnew++;
				}
				n_retry++;
				continue;
			}
			dlv_queue_attempt_begin(q, m->m);
			m->attempts++;
			for (uint32_t k = 0; k < m->count; k++) {
				if (DLV_RCPT_STATE_FINAL(m->st[k]))
					continue;
				unsigned o = (unsigned)rnd_below(4);
				uint8_t s = o == 0   ? DLV_RCPT_DELIVERED
					    : o == 1 ? DLV_RCPT_FAILED
					    : o == 2 ? DLV_RCPT_DEFERRED
						     : DLV_RCPT_ATTEMPT;
				dlv_queue_rcpt_state(q, m->m, k, s);
				m->st[k] = s;
				m->open -= DLV_RCPT_STATE_FINAL(s);
				CHECK(m->m->rcpt_open == m->open);
			}
			if (m->open == 0) {
				dlv_queue_done(q, m->m);
				m->live = false;
				n_done++;
				continue;
			}
			int64_t due = dlv_queue_backoff_us(q, m->m, now);
			if (now - m->recv > (int64_t)md.life_s * S) {
				CHECK(due == 0);
				for (uint32_t k = 0; k < m->count; k++)
					if (!DLV_RCPT_STATE_FINAL(m->st[k]))
						dlv_queue_rcpt_state(q, m->m, k, DLV_RCPT_FAILED);
				CHECK(m->m->rcpt_open == 0);
				dlv_queue_done(q, m->m);
				m->live = false;
				n_expired++;
				continue;
			}
			uint64_t base_s =
				m->attempts - 1 >= 32 ? md.rmax_s : (uint64_t)md.rmin_s << (m->attempts - 1);
			if (base_s > md.rmax_s)
				base_s = md.rmax_s;
			int64_t base = (int64_t)base_s * S, wait = due - now;
			CHECK(wait <= base && wait >= base - base / 4 && wait >= (int64_t)md.rmin_s * S);
			dlv_queue_defer(q, m->m, due);
			m->line = DLV_QLINE_DEFERRED;
			m->due = due;
			m->tie = md.tie_next++;
			n_defer++;
		} else if (r < 74) { /* delete a waiting message */
			int i = md_pick((int)rnd_below(2));
			if (i < 0)
				continue;
			if (md.msg[i].line == DLV_QLINE_NEW)
				md_newq_remove(i);
			dlv_queue_done(q, md.msg[i].m);
			md.msg[i].live = false;
			n_delete++;
		} else if (r < 79) { /* a hop fails */
			unsigned h = (unsigned)rnd_below(md.hops);
			dlv_queue_hop_failed(q, h, now);
			if (now >= md.hop_down[h]) {
				md.hop_fails[h]++;
				uint32_t sh = md.hop_fails[h] - 1;
				uint64_t s = sh >= 32 ? md.rmax_s : (uint64_t)md.hop_min_s << sh;
				md.hop_down[h] = now + (int64_t)(s < md.rmax_s ? s : md.rmax_s) * S;
			}
			n_hopfail++;
		} else if (r < 82) { /* a hop works */
			unsigned h = (unsigned)rnd_below(md.hops);
			dlv_queue_hop_ok(q, h);
			md.hop_fails[h] = 0;
			md.hop_down[h] = 0;
		} else { /* time passes */
			now += rnd_below(16) == 0 ? (int64_t)rnd_below(3600) * S : (int64_t)rnd_below(20 * S);
		}
		md_compare(q, now);
		if (op % 997 == 0) {
			uint64_t count = 0, live = 0;
			CHECK(dlv_queue_foreach(q, md_walk, &count) == 0);
			for (int i = 0; i < ML_MAX; i++)
				live += md.msg[i].live;
			CHECK(count == live);
		}
	}
	/* Drain: everything ends, nothing is left behind, the pool did not leak slots. */
	struct dlv_queue_stats st;
	dlv_queue_stats(q, &st);
	uint64_t slots = st.pool_slots;
	for (int i = 0; i < ML_MAX; i++) {
		if (md.msg[i].live) {
			dlv_queue_done(q, md.msg[i].m);
			md.msg[i].live = false;
		}
	}
	dlv_queue_stats(q, &st);
	CHECK(st.messages[0] + st.messages[1] + st.messages[2] == 0 && st.rcpts_open == 0);
	CHECK(st.bytes[0] + st.bytes[1] + st.bytes[2] == 0 && st.oldest_received_at_us == INT64_MAX);
	CHECK(st.pool_slots == slots && slots <= 4096); /* at most ML_MAX live: one block */
	for (int i = 0; i < 4096; i++)
		add_new(q, (uint64_t)i, now);
	dlv_queue_stats(q, &st);
	CHECK(st.pool_slots == slots); /* every slot came back to the free list */
	dlv_queue_destroy(q);
	printf("model: %lu ops: %lu adds (%lu -EALREADY, %lu -EINVAL), %lu picks, %lu NULL, %lu defers, "
	       "%lu expired, %lu retry_now, %lu done, %lu deleted, %lu hop failures; %.1f days simulated\n",
	       ops, n_add, n_already, n_einval, n_pick, n_null, n_defer, n_expired, n_retry, n_done, n_delete,
	       n_hopfail, (double)(now - T0) / S / 86400);
	CHECK(n_pick > ops / 20 && n_defer > ops / 50 && n_expired > 0 && n_retry > 0 && n_null > 0);
}

/* ---- benchmark: prints, asserts only counts ---- */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void t_bench(unsigned long n)
{
	struct dlv_queue *q = mkq(1, 1);
	struct dlv_queue_stats st;
	int64_t now = T0;

	/* 1. Backlog: n new messages, then n picks, each delivered. */
	double t0 = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		struct dlv_queue_add a = {
			.id = i, .size = 4096, .received_at_us = now + (int64_t)i, .rcpt_count = 2};
		CHECK(dlv_queue_add(q, &a, NULL) == 0);
	}
	double t1 = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		struct dlv_qmsg *m = dlv_queue_next(q, now);
		CHECK(m && m->id == i);
		dlv_queue_rcpt_state(q, m, 0, DLV_RCPT_DELIVERED);
		dlv_queue_rcpt_state(q, m, 1, DLV_RCPT_DELIVERED);
		dlv_queue_done(q, m);
	}
	double t2 = now_ns();
	dlv_queue_stats(q, &st);
	CHECK(st.messages[0] + st.messages[1] + st.messages[2] == 0);
	printf("bench backlog %lu: add %.0f ns, next+done %.0f ns, total %.0f ns/message (%lu pool slots)\n",
	       n, (t1 - t0) / (double)n, (t2 - t1) / (double)n, (t2 - t0) / (double)n,
	       (unsigned long)st.pool_slots);

	/* 2. Warm steady state: 1000 in the queue, one in one out, n times (no allocation). */
	for (unsigned long i = 0; i < 1000; i++) {
		struct dlv_queue_add a = {.id = i, .size = 4096, .received_at_us = now, .rcpt_count = 1};
		CHECK(dlv_queue_add(q, &a, NULL) == 0);
	}
	t0 = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		struct dlv_queue_add a = {
			.id = i, .size = 4096, .received_at_us = now + (int64_t)i, .rcpt_count = 1};
		CHECK(dlv_queue_add(q, &a, NULL) == 0);
		struct dlv_qmsg *m = dlv_queue_next(q, now);
		CHECK(m);
		dlv_queue_rcpt_state(q, m, 0, DLV_RCPT_DELIVERED);
		dlv_queue_done(q, m);
	}
	t1 = now_ns();
	printf("bench steady (1000 queued) %lu: add+next+done %.0f ns/message\n", n, (t1 - t0) / (double)n);

	/* 3. Every message deferred once with jittered backoff (the deferred heap at n), then delivered. */
	struct dlv_queue *q2 = mkq(1, 2);
	for (unsigned long i = 0; i < n; i++) {
		struct dlv_queue_add a = {.id = i, .size = 4096, .received_at_us = now, .rcpt_count = 1};
		CHECK(dlv_queue_add(q2, &a, NULL) == 0);
	}
	t0 = now_ns();
	for (unsigned long i = 0; i < n; i++) {
		struct dlv_qmsg *m = dlv_queue_next(q2, now);
		CHECK(m);
		dlv_queue_attempt_begin(q2, m);
		dlv_queue_defer(q2, m, dlv_queue_backoff_us(q2, m, now));
	}
	t1 = now_ns();
	now += 3600 * S;
	unsigned long got = 0;
	struct dlv_qmsg *m;
	while ((m = dlv_queue_next(q2, now))) {
		dlv_queue_rcpt_state(q2, m, 0, DLV_RCPT_DELIVERED);
		dlv_queue_done(q2, m);
		got++;
	}
	t2 = now_ns();
	CHECK(got == n);
	printf("bench deferred %lu: next+backoff+defer %.0f ns, next+done from the heap %.0f ns/message\n", n,
	       (t1 - t0) / (double)n, (t2 - t1) / (double)n);
	dlv_queue_destroy(q2);
	dlv_queue_destroy(q);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s CASE [N]\n", argv[0]);
		return 2;
	}
	const char *c = argv[1];
	unsigned long n = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;

	if (!strcmp(c, "fifo"))
		t_fifo();
	else if (!strcmp(c, "alternation"))
		t_alternation();
	else if (!strcmp(c, "deferred_order"))
		t_deferred_order();
	else if (!strcmp(c, "backoff"))
		t_backoff();
	else if (!strcmp(c, "lifetime"))
		t_lifetime();
	else if (!strcmp(c, "hops"))
		t_hops();
	else if (!strcmp(c, "next_due"))
		t_next_due();
	else if (!strcmp(c, "rcpts"))
		t_rcpts();
	else if (!strcmp(c, "pool"))
		t_pool();
	else if (!strcmp(c, "assert_final"))
		t_assert_final();
	else if (!strcmp(c, "model"))
		t_model(n ? n : 100000);
	else if (!strcmp(c, "bench"))
		t_bench(n ? n : 1000000);
	else {
		fprintf(stderr, "unknown case %s\n", c);
		return 2;
	}
	return 0;
}
