/* SPDX-License-Identifier: MIT */
/*
 * deliver/dlv_queue.c: one worker's delivery queue (dlv_queue.h). Pure:
 * libc only, no clock, no I/O, no threads.
 *
 * Memory: messages live in slots of a block pool (QBLOCK slots a block,
 * blocks never move, so a struct dlv_qmsg * stays valid); a freed slot goes
 * on a LIFO free list and is the next one reused (still warm in cache).
 * Recipient states of up to QRCPT_INLINE recipients live in the slot. The
 * two heaps are sized to the pool whenever it grows, so nothing but
 * dlv_queue_add() (a new block, a long recipient list) ever allocates and
 * defer/retry/done cannot fail.
 *
 * Lines: the new line is a doubly linked FIFO through priv[]; the deferred
 * line an indexed binary heap keyed (due_us, tie), tie a sequence number
 * so equal due times leave in the order they were deferred (recovery
 * hands many messages the same due time); busy messages are on neither.
 * A second indexed heap keyed by received_at_us gives the oldest message
 * for the stats in O(1) and costs O(log n) per add/done (O(1) for the
 * usual add: the newest message sits at the bottom). Heap elements carry
 * their key, so sifting reads the heap array only, not the slots.
 */
#include "dlv_queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"

#define QBLOCK_SHIFT 12u
#define QBLOCK	     (1u << QBLOCK_SHIFT) /* slots per pool block */
#define QRCPT_INLINE 8u			  /* recipient states kept in the slot */
#define QNIL	     UINT32_MAX
#define QLINE_FREE   0xffu
#define US_PER_S     1000000

_Static_assert(DLV_QUEUE_MSGS_MAX < QNIL, "slot index must not reach QNIL");
_Static_assert(DLV_QUEUE_MSGS_MAX % QBLOCK == 0, "whole blocks");

/* priv[] of struct dlv_qmsg */
enum { P_SELF, P_NEXT, P_PREV, P_DPOS, P_APOS, P_FROM };

struct qslot {
	struct dlv_qmsg m; /* first: a struct dlv_qmsg * is its struct qslot * */
	uint32_t tie;	   /* deferred line order among equal due_us */
	uint8_t rcpt_inline[QRCPT_INLINE];
};

struct qheap_ent {
	int64_t key;
	uint32_t idx; /* slot */
	uint32_t tie;
};

struct qheap {
	struct qheap_ent *v;
	uint32_t n, cap;
	unsigned pos; /* priv[] index holding an element's position */
};

struct qhop {
	uint32_t fails;	       /* consecutive */
	int64_t down_until_us; /* up from then on */
};

struct dlv_queue {
	struct dlv_queue_config cfg;
	uint64_t rng; /* xorshift64 state, never 0 */
	struct qslot **blocks;
	uint32_t nblocks, blocks_cap;
	uint32_t free_head;
	uint32_t new_head, new_tail;
	struct qheap deferred, age;
	uint32_t tie_next;
	uint8_t last_line; /* line of the last pick: the other goes first when both have one due */
	struct qhop hops[DLV_QUEUE_HOPS_MAX];
	uint64_t msgs[3], bytes[3], rcpts_open;
	uint64_t held;
};

static inline struct qslot *slot(const struct dlv_queue *q, uint32_t idx)
{
	DS_ASSERT(idx < q->nblocks * QBLOCK);
	return &q->blocks[idx >> QBLOCK_SHIFT][idx & (QBLOCK - 1)];
}

/* A message handed in by the caller: one of ours, not freed. */
static inline struct qslot *own(const struct dlv_queue *q, const struct dlv_qmsg *m)
{
	struct qslot *s = (struct qslot *)m;

	DS_ASSERT(m->line <= DLV_QLINE_BUSY);
	DS_ASSERT(slot(q, m->priv[P_SELF]) == s);
	return s;
}

void dlv_queue_config_defaults(struct dlv_queue_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->retry_min_s = 300;
	cfg->retry_max_s = 4000;
	cfg->queue_lifetime_s = 5 * 86400;
	cfg->hop_backoff_min_s = 60; /* min(retry_min_s, 60) */
	cfg->hop_count = 1;
	cfg->seed = 1;
}

/* ---- indexed binary heaps ---- */

static inline bool hless(const struct qheap_ent *a, const struct qheap_ent *b)
{
	if (a->key != b->key)
		return a->key < b->key;
	/* Wrapping sequence: exact unless 2^31 defers lie between two equal keys. */
	return (int32_t)(a->tie - b->tie) < 0;
}

static inline void hset(struct dlv_queue *q, struct qheap *h, uint32_t i, const struct qheap_ent *e)
{
	h->v[i] = *e;
	slot(q, e->idx)->m.priv[h->pos] = i;
}

static void hsift_up(struct dlv_queue *q, struct qheap *h, uint32_t i)
{
	struct qheap_ent e = h->v[i];

	while (i > 0) {
		uint32_t p = (i - 1) / 2;

		if (!hless(&e, &h->v[p]))
			break;
		hset(q, h, i, &h->v[p]);
		i = p;
	}
	hset(q, h, i, &e);
}

static void hsift_down(struct dlv_queue *q, struct qheap *h, uint32_t i)
{
	struct qheap_ent e = h->v[i];

	for (;;) {
		uint64_t c = 2 * (uint64_t)i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && hless(&h->v[c + 1], &h->v[c]))
			c++;
		if (!hless(&h->v[c], &e))
			break;
		hset(q, h, i, &h->v[c]);
		i = (uint32_t)c;
	}
	hset(q, h, i, &e);
}

static void hpush(struct dlv_queue *q, struct qheap *h, int64_t key, uint32_t idx, uint32_t tie)
{
	/* The heaps are grown with the pool: a push never allocates. */
	DS_ASSERT(h->n < h->cap);
	h->v[h->n] = (struct qheap_ent){.key = key, .idx = idx, .tie = tie};
	h->n++;
	hsift_up(q, h, h->n - 1);
}

static void hremove(struct dlv_queue *q, struct qheap *h, uint32_t i)
{
	DS_ASSERT(i < h->n);
	struct qslot *s = slot(q, h->v[i].idx);

	DS_ASSERT(s->m.priv[h->pos] == i);
	s->m.priv[h->pos] = QNIL;
	h->n--;
	if (i == h->n)
		return;
	h->v[i] = h->v[h->n];
	if (i > 0 && hless(&h->v[i], &h->v[(i - 1) / 2]))
		hsift_up(q, h, i);
	else
		hsift_down(q, h, i);
}

static int hreserve(struct qheap *h, uint32_t need)
{
	if (need <= h->cap)
		return 0;
	uint64_t cap = DS_MAX((uint64_t)need, 2 * (uint64_t)h->cap);
	cap = DS_MIN(cap, (uint64_t)DLV_QUEUE_MSGS_MAX);
	struct qheap_ent *v = realloc(h->v, cap * sizeof(*v));

	if (!v)
		return -ENOMEM;
	h->v = v;
	h->cap = (uint32_t)cap;
	return 0;
}

/* ---- the new line (FIFO) ---- */

static void fifo_push_back(struct dlv_queue *q, struct qslot *s)
{
	uint32_t idx = s->m.priv[P_SELF];

	s->m.priv[P_NEXT] = QNIL;
	s->m.priv[P_PREV] = q->new_tail;
	if (q->new_tail == QNIL)
		q->new_head = idx;
	else
		slot(q, q->new_tail)->m.priv[P_NEXT] = idx;
	q->new_tail = idx;
}

static void fifo_push_front(struct dlv_queue *q, struct qslot *s)
{
	uint32_t idx = s->m.priv[P_SELF];

	s->m.priv[P_PREV] = QNIL;
	s->m.priv[P_NEXT] = q->new_head;
	if (q->new_head == QNIL)
		q->new_tail = idx;
	else
		slot(q, q->new_head)->m.priv[P_PREV] = idx;
	q->new_head = idx;
}

static void fifo_unlink(struct dlv_queue *q, struct qslot *s)
{
	uint32_t next = s->m.priv[P_NEXT], prev = s->m.priv[P_PREV];

	if (prev == QNIL) {
		DS_ASSERT(q->new_head == s->m.priv[P_SELF]);
		q->new_head = next;
	} else {
		slot(q, prev)->m.priv[P_NEXT] = next;
	}
	if (next == QNIL) {
		DS_ASSERT(q->new_tail == s->m.priv[P_SELF]);
		q->new_tail = prev;
	} else {
		slot(q, next)->m.priv[P_PREV] = prev;
	}
	s->m.priv[P_NEXT] = s->m.priv[P_PREV] = QNIL;
}

/* ---- the pool ---- */

static int pool_grow(struct dlv_queue *q)
{
	uint64_t slots = ((uint64_t)q->nblocks + 1) * QBLOCK;

	if (slots > DLV_QUEUE_MSGS_MAX)
		return -ENOMEM;
	if (q->nblocks == q->blocks_cap) {
		uint32_t cap = q->blocks_cap ? 2 * q->blocks_cap : 16;
		struct qslot **b = realloc(q->blocks, cap * sizeof(*b));

		if (!b)
			return -ENOMEM;
		q->blocks = b;
		q->blocks_cap = cap;
	}
	if (hreserve(&q->deferred, (uint32_t)slots) || hreserve(&q->age, (uint32_t)slots))
		return -ENOMEM;
	struct qslot *blk = malloc(QBLOCK * sizeof(*blk));

	if (!blk)
		return -ENOMEM;
	uint32_t base = q->nblocks * QBLOCK;

	q->blocks[q->nblocks++] = blk;
	/* Chained in index order: a fresh block is handed out front to back. */
	for (uint32_t i = 0; i < QBLOCK; i++) {
		memset(&blk[i], 0, sizeof(blk[i]));
		blk[i].m.line = QLINE_FREE;
		blk[i].m.priv[P_SELF] = base + i;
		blk[i].m.priv[P_NEXT] = i + 1 < QBLOCK ? base + i + 1 : q->free_head;
	}
	q->free_head = base;
	return 0;
}

int dlv_queue_create(struct dlv_queue **out, const struct dlv_queue_config *cfg)
{
	*out = NULL;
	if (!cfg || cfg->hop_count < 1 || cfg->hop_count > DLV_QUEUE_HOPS_MAX ||
	    cfg->retry_min_s > cfg->retry_max_s)
		return -EINVAL;
	struct dlv_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->cfg = *cfg;
	/* splitmix64 of the seed: neighbouring seeds give unrelated jitter; xorshift needs a non-zero state.
	 */
	uint64_t z = cfg->seed + 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	q->rng = z ? z : 0x9e3779b97f4a7c15ull;
	q->free_head = q->new_head = q->new_tail = QNIL;
	q->deferred.pos = P_DPOS;
	q->age.pos = P_APOS;
	q->last_line = DLV_QLINE_DEFERRED; /* the first tie goes to new mail */
	*out = q;
	return 0;
}

void dlv_queue_destroy(struct dlv_queue *q)
{
	if (!q)
		return;
	for (uint32_t b = 0; b < q->nblocks; b++) {
		for (uint32_t i = 0; i < QBLOCK; i++) {
			struct qslot *s = &q->blocks[b][i];

			if (s->m.line != QLINE_FREE && s->m.rcpt_state != s->rcpt_inline)
				free(s->m.rcpt_state);
		}
		free(q->blocks[b]);
	}
	free(q->blocks);
	free(q->deferred.v);
	free(q->age.v);
	free(q);
}

/* ---- messages ---- */

static void count_in(struct dlv_queue *q, const struct dlv_qmsg *m)
{
	q->msgs[m->line]++;
	q->bytes[m->line] += m->size;
}

static void count_out(struct dlv_queue *q, const struct dlv_qmsg *m)
{
	DS_ASSERT(q->msgs[m->line] > 0 && q->bytes[m->line] >= m->size);
	q->msgs[m->line]--;
	q->bytes[m->line] -= m->size;
}

static void defer_push(struct dlv_queue *q, struct qslot *s)
{
	s->m.line = DLV_QLINE_DEFERRED;
	/* A held message is never due: the heap's last place (its due_us is kept for the listing). */
	hpush(q, &q->deferred, s->m.held ? INT64_MAX : s->m.due_us, s->m.priv[P_SELF], s->tie);
	count_in(q, &s->m);
}

int dlv_queue_add(struct dlv_queue *q, const struct dlv_queue_add *a, struct dlv_qmsg **out)
{
	if (out)
		*out = NULL;
	if (!a || a->rcpt_count < 1 || a->rcpt_count > DLV_QUEUE_RCPTS_MAX)
		return -EINVAL;
	uint32_t open = a->rcpt_count;

	if (a->rcpt_state) {
		open = 0;
		for (uint32_t i = 0; i < a->rcpt_count; i++) {
			if (a->rcpt_state[i] > DLV_RCPT_STATE_MAX)
				return -EINVAL;
			open += !DLV_RCPT_STATE_FINAL(a->rcpt_state[i]);
		}
	}
	if (open == 0)
		return -EALREADY;
	uint8_t *ext = NULL;

	if (a->rcpt_count > QRCPT_INLINE && !(ext = malloc(a->rcpt_count)))
		return -ENOMEM;
	if (q->free_head == QNIL && pool_grow(q)) {
		free(ext);
		return -ENOMEM;
	}
	struct qslot *s = slot(q, q->free_head);

	DS_ASSERT(s->m.line == QLINE_FREE);
	q->free_head = s->m.priv[P_NEXT];

	struct dlv_qmsg *m = &s->m;
	m->id = a->id;
	m->lane = a->lane;
	m->seq = a->seq;
	m->off = a->off;
	m->size = a->size;
	m->received_at_us = a->received_at_us;
	m->due_us = a->due_us;
	m->attempts = a->attempts;
	m->rcpt_count = a->rcpt_count;
	m->rcpt_open = open;
	m->rcpt_state = ext ? ext : s->rcpt_inline;
	if (a->rcpt_state)
		memcpy(m->rcpt_state, a->rcpt_state, a->rcpt_count);
	else
		memset(m->rcpt_state, DLV_RCPT_PENDING, a->rcpt_count);
	m->redelivery = a->redelivery;
	m->held = a->held;
	q->held += a->held;
	m->priv[P_NEXT] = m->priv[P_PREV] = m->priv[P_DPOS] = m->priv[P_APOS] = QNIL;
	m->priv[P_FROM] = QLINE_FREE;

	hpush(q, &q->age, m->received_at_us, m->priv[P_SELF], 0);
	q->rcpts_open += open;
	if (a->attempts > 0 || a->due_us != 0 || a->held) {
		s->tie = q->tie_next++;
		defer_push(q, s);
	} else {
		m->line = DLV_QLINE_NEW;
		fifo_push_back(q, s);
		count_in(q, m);
	}
	if (out)
		*out = m;
	return 0;
}

struct dlv_qmsg *dlv_queue_next(struct dlv_queue *q, int64_t now_us)
{
	if (dlv_queue_hop_pick(q, now_us) < 0)
		return NULL;
	bool has_new = q->new_head != QNIL;
	bool has_def = q->deferred.n > 0 && q->deferred.v[0].key <= now_us && q->deferred.v[0].key != INT64_MAX;

	if (!has_new && !has_def)
		return NULL;
	uint8_t line;

	if (has_new && has_def)
		line = q->last_line == DLV_QLINE_NEW ? DLV_QLINE_DEFERRED : DLV_QLINE_NEW;
	else
		line = has_new ? DLV_QLINE_NEW : DLV_QLINE_DEFERRED;
	q->last_line = line;

	struct qslot *s;
	if (line == DLV_QLINE_NEW) {
		s = slot(q, q->new_head);
		fifo_unlink(q, s);
	} else {
		s = slot(q, q->deferred.v[0].idx);
		hremove(q, &q->deferred, 0);
	}
	DS_ASSERT(s->m.line == line);
	count_out(q, &s->m);
	s->m.priv[P_FROM] = line;
	s->m.line = DLV_QLINE_BUSY;
	count_in(q, &s->m);
	return &s->m;
}

int64_t dlv_queue_next_due_us(const struct dlv_queue *q)
{
	int64_t msg_due;

	if (q->new_head != QNIL)
		msg_due = INT64_MIN;
	else if (q->deferred.n > 0 && q->deferred.v[0].key != INT64_MAX)
		msg_due = q->deferred.v[0].key;
	else
		return INT64_MAX; /* nothing, or only held messages */
	int64_t hop_up = INT64_MAX;

	for (uint32_t h = 0; h < q->cfg.hop_count; h++)
		hop_up = DS_MIN(hop_up, q->hops[h].down_until_us);
	return DS_MAX(msg_due, hop_up);
}

void dlv_queue_attempt_begin(struct dlv_queue *q, struct dlv_qmsg *m)
{
	own(q, m);
	DS_ASSERT(m->line == DLV_QLINE_BUSY);
	DS_ASSERT(m->attempts < UINT32_MAX);
	m->attempts++;
}

void dlv_queue_rcpt_state(struct dlv_queue *q, struct dlv_qmsg *m, uint32_t idx, uint8_t state)
{
	own(q, m);
	DS_ASSERT(m->line == DLV_QLINE_BUSY);
	DS_ASSERT(idx < m->rcpt_count);
	DS_ASSERT(state <= DLV_RCPT_STATE_MAX);
	/* A final recipient is never attempted again, so it never gets news. */
	DS_ASSERT(!DLV_RCPT_STATE_FINAL(m->rcpt_state[idx]));
	m->rcpt_state[idx] = state;
	if (DLV_RCPT_STATE_FINAL(state)) {
		DS_ASSERT(m->rcpt_open > 0 && q->rcpts_open > 0);
		m->rcpt_open--;
		q->rcpts_open--;
	}
}

static uint64_t xorshift64(struct dlv_queue *q)
{
	uint64_t x = q->rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	q->rng = x;
	return x;
}

/* min(cap_s, base_s * 2^(n-1)) for n >= 1, in seconds, without overflow. */
static uint64_t doubling_s(uint32_t base_s, uint32_t n, uint32_t cap_s)
{
	uint32_t shift = n > 0 ? n - 1 : 0;

	if (shift >= 32)
		return cap_s;
	return DS_MIN((uint64_t)base_s << shift, (uint64_t)cap_s);
}

int64_t dlv_queue_backoff_us(struct dlv_queue *q, const struct dlv_qmsg *m, int64_t now_us)
{
	own(q, m);
	if (now_us - m->received_at_us > (int64_t)q->cfg.queue_lifetime_s * US_PER_S)
		return 0;
	int64_t base_us = (int64_t)doubling_s(q->cfg.retry_min_s, m->attempts, q->cfg.retry_max_s) * US_PER_S;
	/* -0..25%: spreads the retries of a burst deferred together. */
	int64_t wait_us = base_us - (int64_t)(xorshift64(q) % ((uint64_t)base_us / 4 + 1));
	int64_t min_us = (int64_t)q->cfg.retry_min_s * US_PER_S;

	wait_us = DS_MAX(wait_us, min_us);
	int64_t due = now_us + wait_us;

	return due != 0 ? due : 1; /* 0 says "expired": only at now_us 0 with no wait */
}

void dlv_queue_defer(struct dlv_queue *q, struct dlv_qmsg *m, int64_t due_us)
{
	struct qslot *s = own(q, m);

	DS_ASSERT(m->line == DLV_QLINE_BUSY);
	DS_ASSERT(m->rcpt_open > 0);
	count_out(q, m);
	m->due_us = due_us;
	m->priv[P_FROM] = QLINE_FREE;
	s->tie = q->tie_next++;
	defer_push(q, s);
}

void dlv_queue_retry_now(struct dlv_queue *q, struct dlv_qmsg *m)
{
	struct qslot *s = own(q, m);
	uint32_t from = m->priv[P_FROM];

	DS_ASSERT(m->line == DLV_QLINE_BUSY);
	DS_ASSERT(from == DLV_QLINE_NEW || from == DLV_QLINE_DEFERRED);
	count_out(q, m);
	m->priv[P_FROM] = QLINE_FREE;
	if (from == DLV_QLINE_NEW && !m->held) {
		m->line = DLV_QLINE_NEW;
		fifo_push_front(q, s);
		count_in(q, m);
	} else {
		defer_push(q, s); /* its old due_us and tie: its old place */
	}
}

void dlv_queue_hold(struct dlv_queue *q, struct dlv_qmsg *m, bool held)
{
	struct qslot *s = own(q, m);

	if (m->held == held)
		return;
	q->held = held ? q->held + 1 : q->held - 1;
	if (m->line == DLV_QLINE_NEW) {
		DS_ASSERT(held);
		fifo_unlink(q, s);
		count_out(q, m);
		m->held = true;
		s->tie = q->tie_next++;
		defer_push(q, s);
		return;
	}
	if (m->line == DLV_QLINE_DEFERRED) {
		hremove(q, &q->deferred, m->priv[P_DPOS]);
		count_out(q, m);
		m->held = held;
		if (!held)
			m->due_us = 0; /* released: due now */
		s->tie = q->tie_next++;
		defer_push(q, s);
		return;
	}
	m->held = held; /* busy: applies when it comes back */
	if (!held)
		m->due_us = 0;
}

void dlv_queue_due_now(struct dlv_queue *q, struct dlv_qmsg *m)
{
	struct qslot *s = own(q, m);

	if (m->line != DLV_QLINE_DEFERRED || m->held)
		return;
	hremove(q, &q->deferred, m->priv[P_DPOS]);
	count_out(q, m);
	m->due_us = 0;
	s->tie = q->tie_next++;
	defer_push(q, s);
}

void dlv_queue_take(struct dlv_queue *q, struct dlv_qmsg *m)
{
	struct qslot *s = own(q, m);

	DS_ASSERT(m->line != DLV_QLINE_BUSY);
	if (m->held) {
		m->held = false;
		q->held--;
	}
	if (m->line == DLV_QLINE_NEW)
		fifo_unlink(q, s);
	else
		hremove(q, &q->deferred, m->priv[P_DPOS]);
	count_out(q, m);
	m->priv[P_FROM] = DLV_QLINE_DEFERRED;
	m->line = DLV_QLINE_BUSY;
	count_in(q, m);
}

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void dlv_queue_find(const struct dlv_queue *q, const uint64_t *ids, uint32_t n, struct dlv_qmsg **found)
{
	for (uint32_t i = 0; i < n; i++)
		found[i] = NULL;
	for (uint32_t b = 0; b < q->nblocks && n; b++)
		for (uint32_t i = 0; i < QBLOCK; i++) {
			struct dlv_qmsg *m = &q->blocks[b][i].m;
			const uint64_t *hit;

			if (m->line == QLINE_FREE)
				continue;
			hit = bsearch(&m->id, ids, n, sizeof(*ids), id_cmp);
			if (hit)
				found[hit - ids] = m;
		}
}

void dlv_queue_done(struct dlv_queue *q, struct dlv_qmsg *m)
{
	struct qslot *s = own(q, m);

	if (m->held)
		q->held--;

	if (m->line == DLV_QLINE_NEW)
		fifo_unlink(q, s);
	else if (m->line == DLV_QLINE_DEFERRED)
		hremove(q, &q->deferred, m->priv[P_DPOS]);
	hremove(q, &q->age, m->priv[P_APOS]);
	count_out(q, m);
	DS_ASSERT(q->rcpts_open >= m->rcpt_open);
	q->rcpts_open -= m->rcpt_open;
	if (m->rcpt_state != s->rcpt_inline)
		free(m->rcpt_state);
	uint32_t idx = m->priv[P_SELF];

	memset(s, 0, sizeof(*s));
	m->line = QLINE_FREE;
	m->priv[P_SELF] = idx;
	m->priv[P_NEXT] = q->free_head;
	q->free_head = idx;
}

/* ---- next hops ---- */

int dlv_queue_hop_pick(const struct dlv_queue *q, int64_t now_us)
{
	for (uint32_t h = 0; h < q->cfg.hop_count; h++)
		if (now_us >= q->hops[h].down_until_us)
			return (int)h;
	return -1;
}

bool dlv_queue_hop_up(const struct dlv_queue *q, unsigned hop, int64_t now_us)
{
	DS_ASSERT(hop < q->cfg.hop_count);
	return now_us >= q->hops[hop].down_until_us;
}

void dlv_queue_hop_failed(struct dlv_queue *q, unsigned hop, int64_t now_us)
{
	DS_ASSERT(hop < q->cfg.hop_count);
	struct qhop *h = &q->hops[hop];

	if (now_us < h->down_until_us)
		return;
	if (h->fails < UINT32_MAX)
		h->fails++;
	h->down_until_us =
		now_us +
		(int64_t)doubling_s(q->cfg.hop_backoff_min_s, h->fails, q->cfg.retry_max_s) * US_PER_S;
}

void dlv_queue_hop_ok(struct dlv_queue *q, unsigned hop)
{
	DS_ASSERT(hop < q->cfg.hop_count);
	q->hops[hop].fails = 0;
	q->hops[hop].down_until_us = 0;
}

/* ---- reporting ---- */

void dlv_queue_stats(const struct dlv_queue *q, struct dlv_queue_stats *st)
{
	memset(st, 0, sizeof(*st));
	for (unsigned l = 0; l < 3; l++) {
		st->messages[l] = q->msgs[l];
		st->bytes[l] = q->bytes[l];
	}
	st->rcpts_open = q->rcpts_open;
	st->held = q->held;
	st->oldest_received_at_us = q->age.n ? q->age.v[0].key : INT64_MAX;
	st->pool_slots = (uint64_t)q->nblocks * QBLOCK;
}

int dlv_queue_foreach(const struct dlv_queue *q, int (*fn)(void *ctx, const struct dlv_qmsg *m), void *ctx)
{
	for (uint32_t b = 0; b < q->nblocks; b++) {
		for (uint32_t i = 0; i < QBLOCK; i++) {
			const struct dlv_qmsg *m = &q->blocks[b][i].m;

			if (m->line == QLINE_FREE)
				continue;
			int rc = fn(ctx, m);

			if (rc)
				return rc;
		}
	}
	return 0;
}

void dlv_queue_relocate(struct dlv_queue *q, struct dlv_qmsg *m, uint64_t seq, uint64_t off)
{
	(void)q;
	m->seq = seq;
	m->off = off;
}
