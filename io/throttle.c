/* SPDX-License-Identifier: MIT */
/*
 * Per-client rate limits (see throttle.h): a set-associative table in
 * shards, each shard under its own mutex.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "throttle.h"

/* Shards: enough that workers rarely meet on one mutex; a power of 2. */
#define THROTTLE_SHARDS 64

struct throttle_entry {
	struct io_client_key key;
	int64_t window_start_ms; /* 0: free */
	int64_t last_ms;	 /* for eviction: the least recently seen goes */
	uint32_t count[IO_THROTTLE_KINDS];
};

struct throttle_shard {
	_Alignas(64) pthread_mutex_t lock;
	struct throttle_entry *sets; /* sets_per_shard * IO_THROTTLE_WAYS */
};

struct io_throttle {
	uint32_t limits[IO_THROTTLE_KINDS];
	uint32_t sets_per_shard; /* power of 2 */
	uint64_t seed;
	struct throttle_shard shard[THROTTLE_SHARDS];
};

static uint64_t key_hash(const struct io_throttle *t, const struct io_client_key *k)
{
	uint64_t a, b;
	memcpy(&a, k->b, 8);
	memcpy(&b, k->b + 8, 8);
	__uint128_t r = (__uint128_t)(a ^ t->seed ^ 0x9E3779B97F4A7C15ull) * (b ^ 0xe7037ed1a0b428dbull);
	uint64_t h = (uint64_t)r ^ (uint64_t)(r >> 64);
	r = (__uint128_t)h * 0xbf58476d1ce4e5b9ull;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

int io_throttle_create(struct io_throttle **out, uint32_t entries, const uint32_t limits[IO_THROTTLE_KINDS])
{
	struct io_throttle *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	memcpy(t->limits, limits, sizeof(t->limits));
	entries = entries < IO_THROTTLE_ENTRIES_MIN ? IO_THROTTLE_ENTRIES_MIN : entries;
	entries = entries > IO_THROTTLE_ENTRIES_MAX ? IO_THROTTLE_ENTRIES_MAX : entries;
	uint32_t sets = 1;
	while ((uint64_t)sets * 2 * IO_THROTTLE_WAYS * THROTTLE_SHARDS <= entries)
		sets *= 2;
	t->sets_per_shard = sets;
	t->seed = (uint64_t)(uintptr_t)t * 0x9E3779B97F4A7C15ull;
	for (int i = 0; i < THROTTLE_SHARDS; i++) {
		pthread_mutex_init(&t->shard[i].lock, NULL);
		t->shard[i].sets = calloc((size_t)sets * IO_THROTTLE_WAYS, sizeof(struct throttle_entry));
		if (!t->shard[i].sets) {
			io_throttle_destroy(t);
			return -ENOMEM;
		}
	}
	*out = t;
	return 0;
}

void io_throttle_destroy(struct io_throttle *t)
{
	if (!t)
		return;
	for (int i = 0; i < THROTTLE_SHARDS; i++) {
		free(t->shard[i].sets);
		if (t->shard[i].sets)
			pthread_mutex_destroy(&t->shard[i].lock);
	}
	free(t);
}

/* Which entry of a full set goes: a free one, then one whose window is over, then the least recent. */
static int64_t evict_rank(const struct throttle_entry *e, int64_t now_ms)
{
	if (e->window_start_ms == 0)
		return -2;
	if (now_ms - e->window_start_ms >= IO_THROTTLE_WINDOW_MS)
		return -1;
	return e->last_ms;
}

int io_throttle_hit(struct io_throttle *t, const struct io_client_key *key, enum io_throttle_kind kind,
		    int64_t now_ms)
{
	DS_ASSERT((unsigned)kind < IO_THROTTLE_KINDS);
	uint32_t limit = t->limits[kind];
	if (limit == 0)
		return 0;
	if (now_ms <= 0)
		now_ms = 1; /* 0 marks a free entry */
	uint64_t h = key_hash(t, key);
	struct throttle_shard *sh = &t->shard[h & (THROTTLE_SHARDS - 1)];
	struct throttle_entry *set = sh->sets + ((h >> 32) & (t->sets_per_shard - 1)) * IO_THROTTLE_WAYS;
	int ret = 0;

	pthread_mutex_lock(&sh->lock);
	struct throttle_entry *e = NULL, *victim = &set[0];
	for (int i = 0; i < IO_THROTTLE_WAYS; i++) {
		if (set[i].window_start_ms && !memcmp(&set[i].key, key, sizeof(*key))) {
			e = &set[i];
			break;
		}
		if (evict_rank(&set[i], now_ms) < evict_rank(victim, now_ms))
			victim = &set[i];
	}
	if (!e) {
		e = victim;
		memset(e, 0, sizeof(*e));
		e->key = *key;
		e->window_start_ms = now_ms;
	} else if (now_ms - e->window_start_ms >= IO_THROTTLE_WINDOW_MS) {
		memset(e->count, 0, sizeof(e->count));
		e->window_start_ms = now_ms;
	}
	e->last_ms = now_ms;
	if (e->count[kind] >= limit)
		ret = -EBUSY;
	else
		e->count[kind]++;
	pthread_mutex_unlock(&sh->lock);
	return ret;
}

void io_client_addr16(const struct sockaddr_storage *addr, uint8_t out[16])
{
	memset(out, 0, 16);
	if (addr->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
		out[10] = 0xff;
		out[11] = 0xff;
		memcpy(out + 12, &in->sin_addr, 4);
	} else if (addr->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
		memcpy(out, &in6->sin6_addr, 16);
	}
}

static void mask_bits(uint8_t a[16], uint32_t bits)
{
	for (uint32_t i = 0; i < 16; i++) {
		uint32_t lo = i * 8;
		if (bits >= lo + 8)
			continue;
		a[i] = bits <= lo ? 0 : (uint8_t)(a[i] & (0xff << (8 - (bits - lo))));
	}
}

void io_client_key_of(const struct sockaddr_storage *addr, uint32_t v6_prefix, struct io_client_key *key)
{
	io_client_addr16(addr, key->b);
	/* An IPv4-mapped IPv6 peer (dual-stack socket) is an IPv4 client: whole address. */
	static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	if (addr->ss_family == AF_INET6 && memcmp(key->b, v4mapped, 12) != 0)
		mask_bits(key->b, v6_prefix);
}

int io_cidr_parse(const char *text, struct io_cidr *out)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(text, '/');
	size_t hl = slash ? (size_t)(slash - text) : strlen(text);
	if (hl == 0 || hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, text, hl);
	host[hl] = 0;
	memset(out, 0, sizeof(*out));
	uint32_t max;
	struct in_addr a4;
	if (inet_pton(AF_INET, host, &a4) == 1) {
		out->addr[10] = out->addr[11] = 0xff;
		memcpy(out->addr + 12, &a4, 4);
		max = 32;
	} else if (inet_pton(AF_INET6, host, out->addr) == 1) {
		max = 128;
	} else {
		return -EINVAL;
	}
	uint32_t bits = max;
	if (slash) {
		char *end;
		unsigned long v = strtoul(slash + 1, &end, 10);
		if (!slash[1] || *end || v > max)
			return -EINVAL;
		bits = (uint32_t)v;
	}
	out->bits = (uint8_t)(max == 32 ? bits + 96 : bits);
	mask_bits(out->addr, out->bits);
	return 0;
}

bool io_cidr_match(const struct io_cidr *nets, uint32_t n, const uint8_t addr16[16])
{
	for (uint32_t i = 0; i < n; i++) {
		uint8_t a[16];
		memcpy(a, addr16, 16);
		mask_bits(a, nets[i].bits);
		if (!memcmp(a, nets[i].addr, 16))
			return true;
	}
	return false;
}
