/* SPDX-License-Identifier: MIT */
/*
 * Connections per client address. Shared by all workers, so it takes a
 * mutex, but only at accept and close: never on the message path.
 * Memory is fixed at start-up: one node per possible connection.
 *
 * A client is what the rate limits call one (io/throttle.h): an IPv4
 * address, an IPv6 prefix (--client-ipv6-prefix-length, /64 by default),
 * since one IPv6 host owns a whole /64 and would otherwise get
 * max-connections-per-ip for each of its 2^64 addresses. The count is
 * exact across workers.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "iplimit.h"
#include "throttle.h"

struct io_ipnode {
	uint8_t key[16];
	uint32_t count;
	int32_t next; /* index into nodes, -1 ends the chain */
};

struct io_iplimit {
	pthread_mutex_t lock;
	uint32_t bucket_count;
	int32_t *buckets;
	struct io_ipnode *nodes;
	int32_t free_head;
	uint32_t v6_prefix;
};

static void ip_key(const struct io_iplimit *t, const struct sockaddr_storage *ss, uint8_t key[16])
{
	struct io_client_key k;
	io_client_key_of(ss, t->v6_prefix, &k);
	memcpy(key, k.b, 16);
}

static uint32_t ip_hash(const uint8_t key[16])
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 1099511628211ull;
	return (uint32_t)(h ^ (h >> 32));
}

int io_iplimit_create(struct io_iplimit **out, uint32_t buckets, uint32_t v6_prefix)
{
	struct io_iplimit *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->v6_prefix = v6_prefix ? v6_prefix : 128;
	t->bucket_count = buckets ? buckets : 1;
	t->buckets = malloc(sizeof(int32_t) * t->bucket_count);
	t->nodes = calloc(t->bucket_count, sizeof(struct io_ipnode));
	if (!t->buckets || !t->nodes) {
		io_iplimit_destroy(t);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < t->bucket_count; i++) {
		t->buckets[i] = -1;
		t->nodes[i].next = (i + 1 < t->bucket_count) ? (int32_t)(i + 1) : -1;
	}
	t->free_head = 0;
	pthread_mutex_init(&t->lock, NULL);
	*out = t;
	return 0;
}

void io_iplimit_destroy(struct io_iplimit *t)
{
	if (!t)
		return;
	free(t->buckets);
	free(t->nodes);
	free(t);
}

int io_iplimit_take(struct io_iplimit *t, const struct sockaddr_storage *addr, uint32_t max)
{
	uint8_t key[16];
	int ret = 0;

	ip_key(t, addr, key);
	uint32_t b = ip_hash(key) % t->bucket_count;
	pthread_mutex_lock(&t->lock);
	int32_t i = t->buckets[b];
	while (i >= 0 && memcmp(t->nodes[i].key, key, 16) != 0)
		i = t->nodes[i].next;
	if (i >= 0) {
		if (t->nodes[i].count >= max)
			ret = -EBUSY;
		else
			t->nodes[i].count++;
	} else if (max == 0 || t->free_head < 0) {
		ret = -EBUSY; /* more distinct addresses than connection slots */
	} else {
		i = t->free_head;
		t->free_head = t->nodes[i].next;
		memcpy(t->nodes[i].key, key, 16);
		t->nodes[i].count = 1;
		t->nodes[i].next = t->buckets[b];
		t->buckets[b] = i;
	}
	pthread_mutex_unlock(&t->lock);
	return ret;
}

void io_iplimit_put(struct io_iplimit *t, const struct sockaddr_storage *addr)
{
	uint8_t key[16];

	ip_key(t, addr, key);
	uint32_t b = ip_hash(key) % t->bucket_count;
	pthread_mutex_lock(&t->lock);
	int32_t *link = &t->buckets[b];
	while (*link >= 0 && memcmp(t->nodes[*link].key, key, 16) != 0)
		link = &t->nodes[*link].next;
	DS_ASSERT(*link >= 0);
	int32_t i = *link;
	DS_ASSERT(t->nodes[i].count > 0);
	if (--t->nodes[i].count == 0) {
		*link = t->nodes[i].next;
		t->nodes[i].next = t->free_head;
		t->free_head = i;
	}
	pthread_mutex_unlock(&t->lock);
}
