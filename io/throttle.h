/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_THROTTLE_H
#define DS_IO_THROTTLE_H

/*
 * Rate limits per client (issue 17), like Postfix's anvil: connections,
 * messages (MAIL) and recipients (RCPT) per client per minute. A client is
 * an IPv4 address or an IPv6 prefix (/64 by default); behind a PROXY
 * listener, the address the PROXY header gives.
 *
 * One table shared by every worker, so a limit is exact across workers
 * (no per-worker split of the budget): it is striped in shards, each under
 * its own mutex, taken once per connect, MAIL or RCPT of an untrusted
 * client, never per data byte. Memory is fixed at start-up: a set-
 * associative table of --client-table-size entries (8 ways per set). A
 * client is forgotten when its set is full and every entry in it is more
 * recent than it, so with more distinct clients active within one
 * window than the table holds, limits become approximate and err on the
 * side of accepting (fail open), never refusing a client for another's
 * counts. Windows are fixed minutes starting at a client's first event
 * (anvil's time unit): a client may do up to twice a limit across a
 * window boundary, never more.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define IO_THROTTLE_WAYS	8
#define IO_THROTTLE_WINDOW_MS	60000
#define IO_THROTTLE_ENTRIES_MIN 1024
#define IO_THROTTLE_ENTRIES_MAX (16u << 20)
#define IO_TRUSTED_MAX		64

/* What the limits count; the order of the metrics' labels (obs_metrics). */
enum io_throttle_kind {
	IO_THROTTLE_CONN = 0, /* --client-connection-rate-max */
	IO_THROTTLE_MSG,      /* --client-message-rate-max */
	IO_THROTTLE_RCPT,     /* --client-recipient-rate-max */
	IO_THROTTLE_KINDS,
};

/* A client as the limits see it: 16 bytes, IPv4 mapped (::ffff:a.b.c.d), IPv6 cut to its prefix. */
struct io_client_key {
	uint8_t b[16];
};

/* A --trusted-network: addr (IPv4 mapped into ::ffff:0:0/96) and prefix bits of the 128. */
struct io_cidr {
	uint8_t addr[16];
	uint8_t bits;
};

struct io_throttle;

/* limits[kind] per minute, 0 = that limit off. */
int io_throttle_create(struct io_throttle **out, uint32_t entries, const uint32_t limits[IO_THROTTLE_KINDS]);
void io_throttle_destroy(struct io_throttle *t);
/*
 * Count one event of kind for the client at now_ms. Returns 0, or -EBUSY
 * when it is over the limit (a refused event is not counted: a client that
 * keeps trying is not punished beyond the window).
 */
int io_throttle_hit(struct io_throttle *t, const struct io_client_key *key, enum io_throttle_kind kind,
		    int64_t now_ms);

/* The key of addr (AF_INET, AF_INET6; anything else: all zero), IPv6 cut to v6_prefix bits. */
void io_client_key_of(const struct sockaddr_storage *addr, uint32_t v6_prefix, struct io_client_key *key);
/* Full 16-byte form of addr (IPv4 mapped), for the trusted-network match. */
void io_client_addr16(const struct sockaddr_storage *addr, uint8_t out[16]);
/* "a.b.c.d/n" or "x::y/n" (no /n: a single address). Returns 0 or -EINVAL. */
int io_cidr_parse(const char *text, struct io_cidr *out);
bool io_cidr_match(const struct io_cidr *nets, uint32_t n, const uint8_t addr16[16]);

#endif
