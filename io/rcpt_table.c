/* SPDX-License-Identifier: MIT */
/*
 * The recipient table: parse, fingerprint, bucket, look up; the current
 * table behind an atomic pointer with hazard slots; the reload thread.
 * See rcpt_table.h for the form and why.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "metrics.h"
#include "rcpt_table.h"

#define RCPT_DROP_BYTES (16u << 20)

/* Normalized key: local part (<= 64 octets in RFC 5321, taken up to 255 here) '@' domain (<= 255). */
#define RCPT_KEY_MAX 512

struct io_rcpt_table {
	uint64_t seed[2];
	uint32_t bucket_shift; /* 64 - log2(buckets) */
	bool case_sensitive;
	uint32_t *dir; /* buckets + 1 offsets into fp */
	uint64_t *fp;  /* sorted within each bucket */
	struct io_rcpt_table_info info;
};

/* ---- keyed 64-bit fingerprint (wyhash-style multiply-fold) ---- */

static inline uint64_t mix(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t rd64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static uint64_t fingerprint(const uint64_t seed[2], const uint8_t *p, size_t len)
{
	uint64_t h = seed[0] ^ (len * 0x9E3779B97F4A7C15ull);
	size_t n = len;
	while (n > 16) {
		h = mix(rd64(p) ^ seed[1], rd64(p + 8) ^ h);
		p += 16;
		n -= 16;
	}
	uint8_t tail[16] = {0};
	memcpy(tail, p, n);
	uint64_t a = rd64(tail), b = rd64(tail + 8);
	return mix(seed[1] ^ 0xe7037ed1a0b428dbull ^ len, mix(a ^ seed[1], b ^ h));
}

/* ---- normalization ---- */

static inline uint8_t lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c | 0x20) : c;
}

/*
 * "local@domain" into key: domain lowered (ASCII), local part lowered
 * unless case_sensitive, one trailing dot of the domain dropped. The last
 * '@' splits (a quoted local part may hold one). With domain_only, the key
 * is "@domain". Returns the key's length, or -EINVAL.
 */
static int normalize(const char *addr, size_t len, bool case_sensitive, bool domain_only, uint8_t *key)
{
	const char *at = NULL;
	for (size_t i = len; i > 0; i--)
		if (addr[i - 1] == '@') {
			at = addr + i - 1;
			break;
		}
	size_t local_len = at ? (size_t)(at - addr) : len;
	size_t dom_len = at ? len - local_len - 1 : 0;
	const char *dom = at ? at + 1 : NULL;
	if (dom_len && dom[dom_len - 1] == '.')
		dom_len--;
	if (local_len > 255 || dom_len > 255)
		return -EINVAL;
	size_t k = 0;
	if (!domain_only) {
		for (size_t i = 0; i < local_len; i++)
			key[k++] = case_sensitive ? (uint8_t)addr[i] : lower((uint8_t)addr[i]);
	}
	if (at) {
		key[k++] = '@';
		for (size_t i = 0; i < dom_len; i++)
			key[k++] = lower((uint8_t)dom[i]);
	}
	return (int)k;
}

/* ---- build ---- */

struct fp_vec {
	uint64_t *v;
	size_t n, cap;
};

static int fp_push(struct fp_vec *f, uint64_t x)
{
	if (f->n == f->cap) {
		size_t ncap = f->cap ? f->cap * 2 : 4096;
		uint64_t *p = realloc(f->v, ncap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		f->v = p;
		f->cap = ncap;
	}
	f->v[f->n++] = x;
	return 0;
}

static int errf(char *err, size_t cap, int ret, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int errf(char *err, size_t cap, int ret, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	return ret;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/*
 * One line (no LF) into f. Blank and '#' lines are skipped; "<a@b>" is
 * taken as "a@b". Returns 0, or -EINVAL with why set.
 */
static int parse_line(struct io_rcpt_table *t, struct fp_vec *f, const char *s, size_t n, const char **why)
{
	uint8_t key[RCPT_KEY_MAX];
	while (n && is_space(*s))
		s++, n--;
	while (n && is_space(s[n - 1]))
		n--;
	if (n == 0 || s[0] == '#')
		return 0;
	/* "address value": a Postfix map's line (relay_recipient_maps); the value is not ours. */
	for (size_t i = 0; i < n; i++)
		if (s[i] == ' ' || s[i] == '\t') {
			n = i;
			break;
		}
	if (n >= 2 && s[0] == '<' && s[n - 1] == '>')
		s++, n -= 2;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 0x7f || c == '<' || c == '>') {
			*why = "a control or an angle bracket inside the address";
			return -EINVAL;
		}
	}
	const char *at = memrchr(s, '@', n);
	if (!at) {
		*why = "not an address (local@domain) nor a domain (@domain)";
		return -EINVAL;
	}
	size_t dom_len = n - (size_t)(at - s) - 1;
	if (dom_len == 0 || (dom_len == 1 && at[1] == '.')) {
		*why = "no domain after '@'";
		return -EINVAL;
	}
	if (memchr(at + 1, '[', dom_len) || memchr(at + 1, '"', dom_len)) {
		*why = "a domain literal or a quote in the domain";
		return -EINVAL;
	}
	bool domain_only = at == s;
	if (!domain_only && (size_t)(at - s) > 64) {
		*why = "local part longer than 64 octets (RFC 5321 4.5.3.1.1)";
		return -EINVAL;
	}
	int k = normalize(s, n, t->case_sensitive, domain_only, key);
	if (k < 0) {
		*why = "domain longer than 255 octets";
		return -EINVAL;
	}
	if (f->n >= IO_RCPT_TABLE_ENTRIES_MAX) {
		*why = "more entries than the table takes (IO_RCPT_TABLE_ENTRIES_MAX)";
		return -E2BIG;
	}
	if (domain_only)
		t->info.domains++;
	else
		t->info.addresses++;
	if (fp_push(f, fingerprint(t->seed, key, (size_t)k)) < 0) {
		*why = "out of memory";
		return -ENOMEM;
	}
	return 0;
}

/*
 * The table's arrays: a lookup touches two random places of them, so on
 * 4 KiB pages a large table costs a TLB miss (a page walk) on top of each
 * cache miss. Large arrays are asked for in transparent huge pages.
 */
#define RCPT_HUGE_BYTES (2u << 20)
static void *table_alloc(size_t bytes)
{
	if (bytes < 2 * RCPT_HUGE_BYTES)
		return malloc(bytes ? bytes : 1);
	size_t sz = (bytes + RCPT_HUGE_BYTES - 1) & ~(size_t)(RCPT_HUGE_BYTES - 1);
	void *p = aligned_alloc(RCPT_HUGE_BYTES, sz);
	if (p)
		madvise(p, sz, MADV_HUGEPAGE); /* advice only: without THP, plain pages */
	return p;
}

/* Sort a bucket's few fingerprints (a handful on average). */
static void insertion_sort(uint64_t *a, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		uint64_t x = a[i];
		size_t j = i;
		while (j > 0 && a[j - 1] > x) {
			a[j] = a[j - 1];
			j--;
		}
		a[j] = x;
	}
}

/*
 * Fingerprints into buckets by their top bits (a counting sort: two passes,
 * no comparison sort of millions), each bucket sorted and without
 * duplicates. About 4 fingerprints per bucket: a lookup reads one
 * directory word and one or two cache lines of fingerprints.
 */
static int bucketize(struct io_rcpt_table *t, struct fp_vec *f)
{
	uint32_t bits = 1;
	while (bits < 30 && (1ull << (bits + 2)) < f->n)
		bits++;
	size_t nb = (size_t)1 << bits;
	t->bucket_shift = 64 - bits;
	uint32_t *dir = table_alloc((nb + 1) * sizeof(*dir));
	uint64_t *out = table_alloc((f->n ? f->n : 1) * sizeof(*out));
	if (!dir || !out) {
		free(dir);
		free(out);
		return -ENOMEM;
	}
	memset(dir, 0, (nb + 1) * sizeof(*dir));
	for (size_t i = 0; i < f->n; i++)
		dir[(f->v[i] >> t->bucket_shift) + 1]++;
	for (size_t b = 0; b < nb; b++)
		dir[b + 1] += dir[b];
	/* dir[b] is now the start of bucket b; use a cursor per bucket in place. */
	uint32_t *cur = malloc(nb * sizeof(*cur));
	if (!cur) {
		free(dir);
		free(out);
		return -ENOMEM;
	}
	memcpy(cur, dir, nb * sizeof(*cur));
	for (size_t i = 0; i < f->n; i++)
		out[cur[f->v[i] >> t->bucket_shift]++] = f->v[i];
	free(cur);
	size_t f_n = f->n;
	free(f->v);
	f->v = NULL;
	/* Sort each bucket and squeeze out duplicates (a line given twice). */
	size_t w = 0;
	for (size_t b = 0; b < nb; b++) {
		size_t lo = dir[b], hi = dir[b + 1];
		insertion_sort(out + lo, hi - lo);
		dir[b] = (uint32_t)w;
		for (size_t i = lo; i < hi; i++)
			if (i == lo || out[i] != out[i - 1])
				out[w++] = out[i];
	}
	dir[nb] = (uint32_t)w;
	t->fp = out; /* duplicates are rare: not worth a copy to shrink (realloc would lose the huge pages) */
	t->dir = dir;
	t->info.entries = w;
	t->info.bytes = sizeof(*t) + (nb + 1) * sizeof(*dir) + f_n * sizeof(*out);
	return 0;
}

int io_rcpt_table_load(const char *path, bool case_sensitive, struct io_rcpt_table **out, char *err,
		       size_t errcap)
{
	struct fp_vec f = {0};
	struct stat st;
	int ret;

	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errf(err, errcap, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return errf(err, errcap, -EINVAL, "%s: not a regular file", path);
	}
	struct io_rcpt_table *t = calloc(1, sizeof(*t));
	if (!t) {
		close(fd);
		return errf(err, errcap, -ENOMEM, "%s: out of memory", path);
	}
	t->case_sensitive = case_sensitive;
	if (getrandom(t->seed, sizeof(t->seed), 0) != sizeof(t->seed)) {
		/* No entropy source: still a table, with a seed nobody outside knows in practice. */
		t->seed[0] = (uint64_t)ds_mono_us() * 0x9E3779B97F4A7C15ull;
		t->seed[1] = (uint64_t)getpid() ^ (uint64_t)ds_wall_us();
	}
	const char *map = NULL;
	size_t size = (size_t)st.st_size;
	if (size) {
		map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			ret = -errno;
			close(fd);
			free(t);
			return errf(err, errcap, ret, "%s: mmap: %s", path, strerror(-ret));
		}
		madvise((void *)map, size, MADV_SEQUENTIAL);
	}
	close(fd);
	/* A rough first guess of the entries (~25 bytes a line) saves the doublings. */
	f.cap = DS_MAX(size / 24, (size_t)4096);
	f.v = malloc(f.cap * sizeof(*f.v));
	ret = f.v ? 0 : -ENOMEM;
	uint64_t line = 0;
	size_t done = 0;
	const char *why = "out of memory";
	for (size_t pos = 0; ret == 0 && pos < size;) {
		const char *lf = memchr(map + pos, '\n', size - pos);
		size_t n = lf ? (size_t)(lf - (map + pos)) : size - pos;
		line++;
		if (n > IO_RCPT_LINE_MAX) {
			why = "line too long";
			ret = -EINVAL;
			break;
		}
		ret = parse_line(t, &f, map + pos, n, &why);
		pos += n + 1;
		/* Read once: let the parsed part of the file go, so a 10 M-line file never sits whole in RSS.
		 */
		if (pos - done > RCPT_DROP_BYTES) {
			size_t upto = pos & ~(size_t)4095;
			madvise((void *)(map + done), upto - done, MADV_DONTNEED);
			done = upto;
		}
	}
	if (map)
		munmap((void *)map, size);
	if (ret == 0)
		ret = bucketize(t, &f);
	if (ret < 0) {
		free(f.v);
		free(t->dir);
		free(t);
		if (line)
			return errf(err, errcap, ret, "%s:%llu: %s", path, (unsigned long long)line, why);
		return errf(err, errcap, ret, "%s: %s", path, strerror(-ret));
	}
	*out = t;
	return 0;
}

void io_rcpt_table_free(struct io_rcpt_table *t)
{
	if (!t)
		return;
	free(t->dir);
	free(t->fp);
	free(t);
}

void io_rcpt_table_info(const struct io_rcpt_table *t, struct io_rcpt_table_info *info)
{
	*info = t->info;
}

static bool has_fp(const struct io_rcpt_table *t, uint64_t h)
{
	uint64_t b = h >> t->bucket_shift;
	for (uint32_t i = t->dir[b], end = t->dir[b + 1]; i < end; i++)
		if (t->fp[i] >= h)
			return t->fp[i] == h;
	return false;
}

bool io_rcpt_table_has(const struct io_rcpt_table *t, const char *addr, size_t len)
{
	uint8_t key[RCPT_KEY_MAX];
	int k = normalize(addr, len, t->case_sensitive, false, key);
	if (k < 0)
		return false;
	if (has_fp(t, fingerprint(t->seed, key, (size_t)k)))
		return true;
	/* The domain's wildcard: "@domain" is the key's tail from its last '@'. */
	const uint8_t *at = memrchr(key, '@', (size_t)k);
	if (!at)
		return false;
	return has_fp(t, fingerprint(t->seed, at, (size_t)(key + k - at)));
}

/* ---- the current table ---- */

struct hazard_slot {
	_Alignas(64) _Atomic(struct io_rcpt_table *) p;
};

static struct {
	_Atomic(struct io_rcpt_table *) cur;
	atomic_bool enabled;
	struct hazard_slot hazard[IO_RCPT_READERS_MAX];
	atomic_uint readers;
	atomic_uint_fast64_t reloads_ok, reloads_failed;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool thread_started;
	bool stop;
	uint64_t asked, done; /* under lock */
	char path[4096];
	bool case_sensitive;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static _Thread_local int my_slot = -1;

static struct hazard_slot *slot_get(void)
{
	if (my_slot < 0) {
		unsigned i = atomic_fetch_add(&g.readers, 1);
		DS_ASSERT(i < IO_RCPT_READERS_MAX);
		my_slot = (int)i;
	}
	return &g.hazard[my_slot];
}

int io_rcpt_lookup(const char *addr, size_t len)
{
	if (!atomic_load_explicit(&g.enabled, memory_order_relaxed))
		return -ENOENT;
	struct hazard_slot *h = slot_get();
	struct io_rcpt_table *t;
	/* Hazard pointer: publish, then check the table is still current (seq_cst both). */
	do {
		t = atomic_load(&g.cur);
		atomic_store(&h->p, t);
	} while (atomic_load(&g.cur) != t);
	bool known = io_rcpt_table_has(t, addr, len);
	atomic_store_explicit(&h->p, NULL, memory_order_release);
	return known ? 1 : 0;
}

/* The old table is freed once no reader's slot holds it (readers hold it for one lookup). */
static void retire(struct io_rcpt_table *old)
{
	unsigned n = atomic_load(&g.readers);
	for (unsigned i = 0; i < n && i < IO_RCPT_READERS_MAX; i++)
		while (atomic_load(&g.hazard[i].p) == old) {
			struct timespec ts = {0, 50 * 1000};
			nanosleep(&ts, NULL);
		}
	io_rcpt_table_free(old);
}

/* The table in use and the reloads, for /metrics (only this module's threads change them). */
static void publish_metrics(void)
{
	struct io_rcpt_table_info in;
	io_rcpt_current_info(&in);
	obs_metrics_rcpt_table_set(in.entries, in.bytes, atomic_load(&g.reloads_ok),
				   atomic_load(&g.reloads_failed));
}

static void reload_once(void)
{
	char err[512];
	struct io_rcpt_table *t;
	int64_t t0 = ds_mono_us();
	int ret = io_rcpt_table_load(g.path, g.case_sensitive, &t, err, sizeof(err));
	if (ret < 0) {
		atomic_fetch_add(&g.reloads_failed, 1);
		publish_metrics();
		fprintf(stderr, "dotspool: recipients: reload failed, keeping the old table: %s\n", err);
		return;
	}
	struct io_rcpt_table *old = atomic_exchange(&g.cur, t);
	retire(old);
	atomic_fetch_add(&g.reloads_ok, 1);
	publish_metrics();
	fprintf(stderr,
		"dotspool: recipients: reloaded %s: %llu addresses, %llu domains, %llu bytes in %lld ms\n",
		g.path, (unsigned long long)t->info.addresses, (unsigned long long)t->info.domains,
		(unsigned long long)t->info.bytes, (long long)((ds_mono_us() - t0) / 1000));
}

static void *reload_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&g.lock);
	for (;;) {
		while (!g.stop && g.done == g.asked)
			pthread_cond_wait(&g.cond, &g.lock);
		if (g.stop)
			break;
		/* Requests that arrive during a load are served by the next one (coalesced). */
		uint64_t target = g.asked;
		pthread_mutex_unlock(&g.lock);
		reload_once();
		pthread_mutex_lock(&g.lock);
		g.done = target;
		pthread_cond_broadcast(&g.cond);
	}
	pthread_mutex_unlock(&g.lock);
	return NULL;
}

int io_rcpt_start(const char *path, bool case_sensitive, char *err, size_t errcap)
{
	struct io_rcpt_table *t;
	if (!path || !path[0])
		return 0;
	if (strlen(path) >= sizeof(g.path))
		return errf(err, errcap, -ENAMETOOLONG, "%s: path too long", path);
	int ret = io_rcpt_table_load(path, case_sensitive, &t, err, errcap);
	if (ret < 0)
		return ret;
	snprintf(g.path, sizeof(g.path), "%s", path);
	g.case_sensitive = case_sensitive;
	atomic_store(&g.cur, t);
	g.stop = false;
	g.asked = g.done = 0;
	ret = pthread_create(&g.thread, NULL, reload_main, NULL);
	if (ret) {
		atomic_store(&g.cur, NULL);
		io_rcpt_table_free(t);
		return errf(err, errcap, -ret, "recipients: reload thread: %s", strerror(ret));
	}
	g.thread_started = true;
	atomic_store(&g.enabled, true);
	publish_metrics();
	return 0;
}

void io_rcpt_reload(void)
{
	if (!g.thread_started)
		return;
	pthread_mutex_lock(&g.lock);
	g.asked++;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
}

uint64_t io_rcpt_reload_wait(void)
{
	if (!g.thread_started)
		return 0;
	pthread_mutex_lock(&g.lock);
	while (g.done != g.asked)
		pthread_cond_wait(&g.cond, &g.lock);
	uint64_t n = g.done;
	pthread_mutex_unlock(&g.lock);
	return n;
}

void io_rcpt_stop(void)
{
	if (!g.thread_started)
		return;
	pthread_mutex_lock(&g.lock);
	g.stop = true;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
	pthread_join(g.thread, NULL);
	g.thread_started = false;
	atomic_store(&g.enabled, false);
	/* The workers are gone (stop runs after they are joined): nobody holds it. */
	io_rcpt_table_free(atomic_exchange(&g.cur, NULL));
}

bool io_rcpt_enabled(void)
{
	return atomic_load_explicit(&g.enabled, memory_order_relaxed);
}

void io_rcpt_current_info(struct io_rcpt_table_info *info)
{
	memset(info, 0, sizeof(*info));
	if (!io_rcpt_enabled())
		return;
	struct hazard_slot *h = slot_get();
	struct io_rcpt_table *t;
	do {
		t = atomic_load(&g.cur);
		atomic_store(&h->p, t);
	} while (atomic_load(&g.cur) != t);
	if (t)
		*info = t->info;
	atomic_store_explicit(&h->p, NULL, memory_order_release);
}

uint64_t io_rcpt_reloads(bool failed)
{
	return failed ? atomic_load(&g.reloads_failed) : atomic_load(&g.reloads_ok);
}
