/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_IPLIMIT_H
#define DS_IO_IPLIMIT_H

/* Connections per client address, shared by the workers (io/iplimit.c). */

#include <stdint.h>
#include <sys/socket.h>

struct io_iplimit;

/* v6_prefix: an IPv6 client is its /v6_prefix (0 = the whole address). */
int io_iplimit_create(struct io_iplimit **out, uint32_t buckets, uint32_t v6_prefix);
void io_iplimit_destroy(struct io_iplimit *t);
/* Take a slot for addr; -EBUSY when the address already holds max. */
int io_iplimit_take(struct io_iplimit *t, const struct sockaddr_storage *addr, uint32_t max);
void io_iplimit_put(struct io_iplimit *t, const struct sockaddr_storage *addr);

#endif
