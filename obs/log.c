/* SPDX-License-Identifier: MIT */
/*
 * Lock-free per-producer log rings drained by one logger thread (see log.h).
 *
 * Ring protocol (single producer, single consumer): head and tail are byte
 * positions that only grow; the producer alone stores head, the consumer
 * alone stores tail. A record is a 16-byte header and its payload, padded
 * to 16 bytes, always contiguous: when it does not fit before the end of
 * the buffer, the producer writes a pad header there and starts the record
 * at offset 0. Because everything is a multiple of 16, at least one whole
 * header always fits before the end. The producer publishes a record with
 * a release store of head after writing it; the consumer reads head with
 * acquire, so it never sees a half-written record, and releases tail after
 * it has copied a record out, so the producer never overwrites one being
 * read.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "ds_envelope.h"
#include "log.h"

#define REC_ALIGN 16
#define REC_PAD	  UINT32_MAX
/* The logger's output batch; one line with its prefix always fits after out_flush(). */
#define OUT_BYTES  (64 * 1024)
#define PREFIX_MAX 96
/* Room kept at the end of the line for " truncated=true". */
#define LINE_RESERVE 16

struct rec_hdr {
	uint32_t len;	/* payload bytes, or REC_PAD: skip to the buffer's end */
	uint32_t level; /* enum obs_log_level */
	int64_t ts_ns;	/* CLOCK_REALTIME */
};
_Static_assert(sizeof(struct rec_hdr) == REC_ALIGN, "record header is one alignment unit");

struct obs_log_ring {
	/* Producer's cache lines. */
	_Alignas(64) _Atomic uint64_t head;
	uint64_t tail_seen; /* producer's last view of tail: refreshed only when the ring looks full */
	_Atomic uint64_t dropped;
	const _Atomic int *level;
	bool active; /* between a successful obs_log_begin() and obs_log_end() */
	bool truncated;
	uint32_t line_level;
	int64_t line_ts_ns;
	size_t line_len;
	char line[OBS_LOG_LINE_MAX];

	/* Consumer's cache line. */
	_Alignas(64) _Atomic uint64_t tail;
	uint64_t dropped_reported;

	/* Read-only after creation. */
	_Alignas(64) uint8_t *data;
	size_t size;
};

struct obs_log {
	struct obs_log_ring *rings;
	unsigned ring_count;
	FILE *f;
	_Atomic int level;
	atomic_bool stop;
	bool started;
	pthread_t thread;
	_Atomic uint64_t written;
	/* Logger thread only: the formatted second of the last timestamp. */
	int64_t ts_sec_cached;
	char ts_text[32];
	/*
	 * Logger thread only: lines are gathered here and handed to stdio in
	 * one fwrite per pass, so an unbuffered stderr costs one write(2) per
	 * batch rather than several per line.
	 */
	size_t out_len;
	char out[OUT_BYTES];
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int obs_log_level_parse(const char *name, enum obs_log_level *out)
{
	for (unsigned i = 0; i < DS_ARRAY_SIZE(level_names); i++) {
		if (!strcmp(name, level_names[i])) {
			*out = (enum obs_log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *obs_log_level_name(enum obs_log_level level)
{
	return (unsigned)level < DS_ARRAY_SIZE(level_names) ? level_names[level] : "?";
}

int obs_log_create(struct obs_log **out, unsigned rings, size_t ring_bytes, FILE *f, enum obs_log_level level)
{
	*out = NULL;
	if (rings == 0 || rings > OBS_LOG_RINGS_MAX || ring_bytes < OBS_LOG_RING_MIN ||
	    ring_bytes > OBS_LOG_RING_MAX || (ring_bytes & (ring_bytes - 1)) ||
	    (unsigned)level > OBS_LOG_DEBUG)
		return -EINVAL;
	struct obs_log *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->rings = aligned_alloc(64, sizeof(struct obs_log_ring) * rings);
	if (!l->rings) {
		free(l);
		return -ENOMEM;
	}
	memset(l->rings, 0, sizeof(struct obs_log_ring) * rings);
	l->ring_count = rings;
	l->f = f ? f : stderr;
	atomic_init(&l->level, (int)level);
	l->ts_sec_cached = -1;
	for (unsigned i = 0; i < rings; i++) {
		struct obs_log_ring *r = &l->rings[i];
		r->data = aligned_alloc(64, ring_bytes);
		if (!r->data) {
			obs_log_destroy(l);
			return -ENOMEM;
		}
		r->size = ring_bytes;
		r->level = &l->level;
	}
	*out = l;
	return 0;
}

void obs_log_destroy(struct obs_log *l)
{
	if (!l)
		return;
	DS_ASSERT(!l->started);
	for (unsigned i = 0; i < l->ring_count; i++)
		free(l->rings[i].data);
	free(l->rings);
	free(l);
}

struct obs_log_ring *obs_log_ring(struct obs_log *l, unsigned i)
{
	DS_ASSERT(i < l->ring_count);
	return &l->rings[i];
}

void obs_log_set_level(struct obs_log *l, enum obs_log_level level)
{
	atomic_store_explicit(&l->level, (int)level, memory_order_relaxed);
}

uint64_t obs_log_dropped(const struct obs_log *l, unsigned i)
{
	DS_ASSERT(i < l->ring_count);
	return atomic_load_explicit(&l->rings[i].dropped, memory_order_relaxed);
}

uint64_t obs_log_written(const struct obs_log *l)
{
	return atomic_load_explicit(&((struct obs_log *)l)->written, memory_order_relaxed);
}

/* ---------------- producer ---------------- */

static inline size_t rec_size(size_t payload)
{
	return sizeof(struct rec_hdr) + ((payload + REC_ALIGN - 1) & ~(size_t)(REC_ALIGN - 1));
}

bool obs_log_begin(struct obs_log_ring *r, enum obs_log_level level, const char *event)
{
	DS_ASSERT(!r->active);
	if ((int)level > atomic_load_explicit(r->level, memory_order_relaxed))
		return false;
	int64_t now_ns = ds_wall_ns();
	r->active = true;
	r->truncated = false;
	r->line_level = (uint32_t)level;
	r->line_ts_ns = now_ns;
	r->line_len = 0;
	obs_log_str(r, "event", event);
	return true;
}

/* 0: written as is; 1: written as is but only inside quotes; 2: escaped inside quotes. */
static const uint8_t
	byte_class[256] =
		{
			[0 ... 0x1f] = 2,  [' '] = 1,		['!'] = 0,	   ['"'] = 2,
			['#' ... '<'] = 0, ['='] = 1,		['>' ... '['] = 0, ['\\'] = 2,
			[']' ... '~'] = 0, [0x7f ... 0xff] = 2,
};

static inline bool plain_byte(unsigned char c)
{
	return byte_class[c] == 0;
}

static inline bool quoted_byte(unsigned char c)
{
	return byte_class[c] < 2;
}

/*
 * Spans of ordinary bytes are copied with memcpy and only the bytes that
 * need it go through the escape switch: this runs for every field of
 * every line on the worker's thread.
 */
static size_t escape_into(char *dst, size_t cap, const char *src, size_t len, size_t *consumed)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *u = (const unsigned char *)src;
	DS_ASSERT(cap > 0);
	size_t k = 0;
	while (k < len && plain_byte(u[k]))
		k++;
	if (k == len && len > 0) {
		size_t n = DS_MIN(len, cap - 1);
		memcpy(dst, src, n);
		dst[n] = 0;
		*consumed = n;
		return n;
	}
	if (cap < 3) { /* not even "" fits */
		dst[0] = 0;
		*consumed = 0;
		return 0;
	}
	/* The first k bytes were checked already: they need no escape. */
	size_t i = DS_MIN(k, cap - 3);
	dst[0] = '"';
	memcpy(dst + 1, src, i);
	size_t o = 1 + i;
	bool full = i < k;
	while (i < len && !full) {
		size_t j = i;
		while (j < len && quoted_byte(u[j]))
			j++;
		size_t n = DS_MIN(j - i, cap - 2 - o); /* keep room for the closing quote and the NUL */
		memcpy(dst + o, src + i, n);
		o += n;
		i += n;
		if (i < j || i == len)
			break;
		unsigned char c = u[i];
		char esc[4] = {'\\', 0, 0, 0};
		size_t e = 2;
		if (c == '"' || c == '\\')
			esc[1] = (char)c;
		else if (c == '\n')
			esc[1] = 'n';
		else if (c == '\r')
			esc[1] = 'r';
		else if (c == '\t')
			esc[1] = 't';
		else
			esc[1] = 'x', esc[2] = hex[c >> 4], esc[3] = hex[c & 15], e = 4;
		if (o + e + 2 > cap)
			break;
		memcpy(dst + o, esc, e);
		o += e;
		i++;
	}
	dst[o++] = '"';
	dst[o] = 0;
	*consumed = i;
	return o;
}

size_t obs_log_escape(char *dst, size_t cap, const char *src, size_t len)
{
	size_t consumed;
	return escape_into(dst, cap, src, len, &consumed);
}

void obs_log_strn(struct obs_log_ring *r, const char *key, const char *value, size_t len)
{
	DS_ASSERT(r->active);
	if (r->truncated)
		return;
	if (!value)
		value = "", len = 0;
	bool cut = false;
	if (len > OBS_LOG_VALUE_MAX)
		len = OBS_LOG_VALUE_MAX, cut = true;
	size_t limit = OBS_LOG_LINE_MAX - LINE_RESERVE;
	size_t klen = strlen(key);
	size_t sep = r->line_len ? 1 : 0;
	if (r->line_len + sep + klen + 1 + 3 > limit) {
		r->truncated = true;
		return;
	}
	char *p = r->line + r->line_len;
	if (sep)
		*p++ = ' ';
	memcpy(p, key, klen);
	p += klen;
	*p++ = '=';
	size_t used = (size_t)(p - r->line);
	size_t consumed;
	size_t n = escape_into(p, limit - used, value, len, &consumed);
	r->line_len = used + n;
	if (consumed < len || cut)
		r->truncated = true;
}

void obs_log_str(struct obs_log_ring *r, const char *key, const char *value)
{
	obs_log_strn(r, key, value, value ? strlen(value) : 0);
}

void obs_log_u64(struct obs_log_ring *r, const char *key, uint64_t value)
{
	char num[24];
	char *p = num + sizeof(num);
	do {
		*--p = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	obs_log_strn(r, key, p, (size_t)(num + sizeof(num) - p));
}

void obs_log_bool(struct obs_log_ring *r, const char *key, bool value)
{
	obs_log_strn(r, key, value ? "true" : "false", value ? 4 : 5);
}

int obs_log_end(struct obs_log_ring *r)
{
	DS_ASSERT(r->active);
	r->active = false;
	if (r->truncated) {
		static const char mark[] = " truncated=true";
		DS_ASSERT(r->line_len + sizeof(mark) - 1 <= OBS_LOG_LINE_MAX);
		memcpy(r->line + r->line_len, mark, sizeof(mark) - 1);
		r->line_len += sizeof(mark) - 1;
	}
	size_t need = rec_size(r->line_len);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	size_t pos = (size_t)(head & (r->size - 1));
	size_t to_end = r->size - pos;
	size_t total = to_end < need ? to_end + need : need;
	if (head + total - r->tail_seen > r->size) {
		r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (head + total - r->tail_seen > r->size) {
			atomic_store_explicit(&r->dropped,
					      atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
					      memory_order_relaxed);
			return -ENOBUFS;
		}
	}
	if (to_end < need) {
		struct rec_hdr pad = {.len = REC_PAD};
		memcpy(r->data + pos, &pad, sizeof(pad));
		head += to_end;
		pos = 0;
	}
	struct rec_hdr h = {.len = (uint32_t)r->line_len, .level = r->line_level, .ts_ns = r->line_ts_ns};
	memcpy(r->data + pos, &h, sizeof(h));
	memcpy(r->data + pos + sizeof(h), r->line, r->line_len);
	atomic_store_explicit(&r->head, head + need, memory_order_release);
	return 0;
}

/* ---------------- consumer ---------------- */

static void out_flush(struct obs_log *l)
{
	if (l->out_len) {
		fwrite(l->out, 1, l->out_len, l->f);
		l->out_len = 0;
	}
	fflush(l->f);
}

/* Makes room for one more line (prefix + OBS_LOG_LINE_MAX + newline). */
static void out_reserve(struct obs_log *l)
{
	if (l->out_len + PREFIX_MAX + OBS_LOG_LINE_MAX + 1 > sizeof(l->out))
		out_flush(l);
}

static void out_prefix(struct obs_log *l, int64_t ts_ns, const char *level)
{
	int64_t sec = ts_ns / 1000000000;
	if (sec != l->ts_sec_cached) {
		time_t t = (time_t)sec;
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(l->ts_text, sizeof(l->ts_text), "%Y-%m-%dT%H:%M:%S", &tm);
		l->ts_sec_cached = sec;
	}
	int n = snprintf(l->out + l->out_len, PREFIX_MAX, "ts=%s.%06dZ level=%s ", l->ts_text,
			 (int)(ts_ns % 1000000000 / 1000), level);
	DS_ASSERT(n > 0 && n < PREFIX_MAX);
	l->out_len += (size_t)n;
}

/* Copies out every record published on r; returns how many lines were written. */
static unsigned drain_ring(struct obs_log *l, struct obs_log_ring *r, unsigned index)
{
	unsigned lines = 0;
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	while (tail < head) {
		size_t pos = (size_t)(tail & (r->size - 1));
		struct rec_hdr h;
		memcpy(&h, r->data + pos, sizeof(h));
		if (h.len == REC_PAD) {
			tail += r->size - pos;
			continue;
		}
		DS_ASSERT(h.len <= OBS_LOG_LINE_MAX && pos + rec_size(h.len) <= r->size);
		out_reserve(l);
		out_prefix(l, h.ts_ns, obs_log_level_name((enum obs_log_level)h.level));
		memcpy(l->out + l->out_len, r->data + pos + sizeof(h), h.len);
		l->out_len += h.len;
		l->out[l->out_len++] = '\n';
		tail += rec_size(h.len);
		/* Give the space back at once: the producer may be waiting for none, but it may be full. */
		atomic_store_explicit(&r->tail, tail, memory_order_release);
		lines++;
	}
	atomic_store_explicit(&r->tail, tail, memory_order_release);

	uint64_t dropped = atomic_load_explicit(&r->dropped, memory_order_relaxed);
	if (dropped != r->dropped_reported) {
		out_reserve(l);
		out_prefix(l, ds_wall_ns(), "warn");
		l->out_len +=
			(size_t)snprintf(l->out + l->out_len, 64, "event=log_dropped ring=%u lines=%llu\n",
					 index, (unsigned long long)(dropped - r->dropped_reported));
		r->dropped_reported = dropped;
	}
	return lines;
}

static unsigned drain_all(struct obs_log *l)
{
	unsigned lines = 0;
	for (unsigned i = 0; i < l->ring_count; i++)
		lines += drain_ring(l, &l->rings[i], i);
	if (l->out_len)
		out_flush(l);
	if (lines)
		atomic_fetch_add_explicit(&l->written, lines, memory_order_relaxed);
	return lines;
}

void obs_log_drain(struct obs_log *l)
{
	while (drain_all(l))
		;
	fflush(l->f);
}

static void *logger_main(void *arg)
{
	struct obs_log *l = arg;
	while (!atomic_load_explicit(&l->stop, memory_order_acquire)) {
		if (drain_all(l))
			continue;
		/* Nothing pending: poll again in OBS_LOG_POLL_MS (producers never make a syscall to wake us).
		 */
		struct timespec d = {.tv_sec = 0, .tv_nsec = OBS_LOG_POLL_MS * 1000000L};
		nanosleep(&d, NULL);
	}
	obs_log_drain(l);
	return NULL;
}

int obs_log_start(struct obs_log *l)
{
	DS_ASSERT(!l->started);
	atomic_store(&l->stop, false);
	int ret = pthread_create(&l->thread, NULL, logger_main, l);
	if (ret)
		return -ret;
	pthread_setname_np(l->thread, "dotspool-log");
	l->started = true;
	return 0;
}

void obs_log_stop(struct obs_log *l)
{
	if (!l->started)
		return;
	atomic_store_explicit(&l->stop, true, memory_order_release);
	pthread_join(l->thread, NULL);
	l->started = false;
}

/* ---------------- the lines of issue 8 ---------------- */

int obs_log_accepted(struct obs_log_ring *r, const char *queue_id, const struct ds_envelope *env,
		     uint64_t gap_us)
{
	if (!obs_log_begin(r, OBS_LOG_INFO, "accepted"))
		return 0;
	obs_log_str(r, "queue_id", queue_id);
	obs_log_str(r, "client", env->client_addr);
	obs_log_str(r, "helo", env->helo);
	obs_log_str(r, "sender", env->mail_from);
	obs_log_u64(r, "rcpts", env->rcpt_count);
	obs_log_u64(r, "size", env->body_size);
	obs_log_str(r, "tls", env->tls && env->tls[0] ? env->tls : "none");
	obs_log_u64(r, "gap_us", gap_us);
	return obs_log_end(r);
}

int obs_log_refused(struct obs_log_ring *r, const struct obs_log_refusal *f)
{
	if (!obs_log_begin(r, OBS_LOG_INFO, "refused"))
		return 0;
	obs_log_str(r, "reason", f->reason);
	obs_log_u64(r, "code", f->code);
	obs_log_str(r, "client", f->client);
	obs_log_str(r, "helo", f->helo);
	obs_log_str(r, "sender", f->sender);
	return obs_log_end(r);
}

/* ---------------- the lines of the delivery stage (issue 14) ---------------- */

const char *obs_log_delivery_outcome(const struct obs_log_delivery *d)
{
	if (d->outcome)
		return d->outcome;
	uint64_t total = (uint64_t)d->delivered + d->deferred + d->failed;
	if (total == 0)
		return "deferred"; /* nothing decided: the recipients stay queued */
	if (d->delivered == total)
		return "delivered";
	if (d->deferred == total)
		return "deferred";
	if (d->failed == total)
		return "failed";
	return "mixed";
}

int obs_log_delivery(struct obs_log_ring *r, const struct obs_log_delivery *d)
{
	if (!obs_log_begin(r, OBS_LOG_INFO, "delivery"))
		return 0;
	obs_log_str(r, "queue_id", d->queue_id);
	obs_log_str(r, "hop", d->hop);
	obs_log_u64(r, "attempt", d->attempt);
	obs_log_u64(r, "rcpts", d->rcpts);
	obs_log_u64(r, "delivered", d->delivered);
	obs_log_u64(r, "deferred", d->deferred);
	obs_log_u64(r, "failed", d->failed);
	obs_log_str(r, "outcome", obs_log_delivery_outcome(d));
	obs_log_u64(r, "code", d->code);
	obs_log_str(r, "esc", d->esc);
	obs_log_u64(r, "delay_ms", d->delay_ms);
	obs_log_u64(r, "duration_ms", d->duration_ms);
	obs_log_bool(r, "possible_duplicate", d->possible_duplicate);
	obs_log_bool(r, "redelivery", d->redelivery);
	obs_log_str(r, "dsn_id", d->dsn_id);
	obs_log_str(r, "reply", d->reply);
	return obs_log_end(r);
}

int obs_log_dsn(struct obs_log_ring *r, const char *queue_id, const char *dsn_id, uint32_t failed_rcpts)
{
	if (!obs_log_begin(r, OBS_LOG_INFO, "dsn_queued"))
		return 0;
	obs_log_str(r, "queue_id", queue_id);
	obs_log_str(r, "dsn_id", dsn_id);
	obs_log_u64(r, "failed", failed_rcpts);
	return obs_log_end(r);
}

int obs_log_hop(struct obs_log_ring *r, const char *hop, bool up, const char *why)
{
	/* Down is worth an operator's attention (mail waits); back up is the all-clear. */
	if (!obs_log_begin(r, up ? OBS_LOG_INFO : OBS_LOG_WARN, up ? "hop_up" : "hop_down"))
		return 0;
	obs_log_str(r, "hop", hop);
	obs_log_str(r, "reason", why);
	return obs_log_end(r);
}

int obs_log_watermark(struct obs_log_ring *r, const struct obs_log_watermark *w)
{
	/* High turns mail away: an operator must look. Low is the all-clear. */
	if (!obs_log_begin(r, w->high ? OBS_LOG_WARN : OBS_LOG_INFO, "spool_watermark"))
		return 0;
	obs_log_str(r, "state", w->high ? "high" : "low");
	obs_log_str(r, "reason", w->reason);
	obs_log_u64(r, "bytes", w->bytes);
	obs_log_u64(r, "max_bytes", w->max_bytes);
	obs_log_u64(r, "resume_bytes", w->resume_bytes);
	obs_log_u64(r, "free_bytes", w->free_bytes);
	obs_log_u64(r, "min_free_bytes", w->min_free_bytes);
	obs_log_u64(r, "resume_free_bytes", w->resume_free_bytes);
	return obs_log_end(r);
}
