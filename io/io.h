/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_H
#define DS_IO_H

/*
 * io/: one pinned thread per core, one io_uring each. Each worker owns its
 * listeners (SO_REUSEPORT), its connections, and its spool lane; nothing on
 * the message path is shared between workers.
 */

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "smtp.h"
#include "spool.h"

struct io_metrics;
struct io_log;

#define IO_LISTEN_MAX  16
#define IO_DOMAIN_MAX  256
#define IO_THREADS_MAX 64
/* io_uring submission queue per worker (--ring-entries); the kernel's limit is 32768. */
#define IO_RING_ENTRIES_MIN 4
#define IO_RING_ENTRIES_MAX 32768
/* Completion queue: at least this, and at least 2 x the submission queue. */
#define IO_RING_CQ_ENTRIES_MIN 16384

enum io_listen_kind {
	IO_LISTEN_SMTP,
	IO_LISTEN_LMTP,
	IO_LISTEN_SMTP_PROXY, /* SMTP behind a load balancer: PROXY v1/v2 header first */
};

struct io_listen_spec {
	enum io_listen_kind kind;
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char text[80]; /* as given on the command line */
};

struct io_config {
	struct io_listen_spec listen[IO_LISTEN_MAX];
	uint32_t listen_count;
	const char *accept_domains[IO_DOMAIN_MAX];
	uint32_t accept_domain_count;
	char hostname[256];
	uint32_t threads;
	uint32_t max_connections;	 /* whole server */
	uint32_t max_connections_per_ip; /* whole server, per client address */
	uint32_t timeout_greeting_s;	 /* PROXY header wait before the banner */
	uint32_t timeout_command_s;	 /* RFC 5321 4.5.3.2: 5 minutes */
	uint32_t timeout_data_s;	 /* per data block: 3 minutes */
	uint32_t shutdown_timeout_s;	 /* SIGTERM: how long transactions in flight may take */
	uint32_t recv_buffers;		 /* provided buffers per worker */
	uint32_t recv_buffer_size;	 /* bytes each */
	uint32_t pending_input_max;	 /* per-connection unread input bytes before recv stops */
	uint32_t ring_entries;		 /* io_uring submission queue entries per worker */
	struct smtp_config smtp;
	struct spool_config spool;
	char spool_dir[4096];
	char tls_cert[4096]; /* PEM chain; STARTTLS is offered only with both */
	char tls_key[4096];
	char metrics_listen[80]; /* ADDR:PORT of /metrics, "" = off */
	struct sockaddr_storage metrics_addr;
	socklen_t metrics_addr_len;
	char log_level[16];	  /* error, warn, info, debug */
	uint32_t log_ring_size;	  /* bytes of log buffer per worker */
	bool listen_from_source;  /* the current source (file, command line) set the listeners */
	bool domains_from_source; /* ... the accepted domains */
};

/* io/options.c: one table for flags and config keys. */
void io_config_defaults(struct io_config *cfg);
void io_config_begin_source(struct io_config *cfg);
bool io_option_known(const char *name);
bool io_option_takes_value(const char *name);
int io_option_apply(struct io_config *cfg, const char *name, const char *value, char *err, size_t errcap);
int io_config_finish(struct io_config *cfg, char *err, size_t errcap);
void io_options_usage(FILE *f);
size_t io_options_count(void);
const char *io_option_name(size_t i);
/* io/config_file.c: INI file (libinih). err gets "FILE:LINE: message". */
int io_config_load_file(struct io_config *cfg, const char *path, char *err, size_t errcap);

/* Shared between workers; touched at accept/close only, never per message. */
struct io_shared {
	atomic_uint connections;
	atomic_bool stopping;
	atomic_uint reload_gen; /* bumped on SIGHUP: workers reload TLS */
	atomic_uint workers_ready;
	atomic_uint workers_failed;
	struct io_metrics *metrics[IO_THREADS_MAX]; /* one per worker, written only by it */
	unsigned metrics_count;
	struct io_log *log;
	struct io_iplimit *iplimit;
};

struct io_worker;

int io_worker_create(struct io_worker **out, const struct io_config *cfg, struct io_shared *sh, unsigned no);
int io_worker_start(struct io_worker *w); /* spawns and pins the thread */
void io_worker_stop(struct io_worker *w); /* async: begin graceful shutdown */
void io_worker_wake(struct io_worker *w); /* async: look at the shared flags (reload) */
int io_worker_join(struct io_worker *w);  /* 0 when it ended cleanly */
void io_worker_destroy(struct io_worker *w);

/* Per-client-address connection counts (io/iplimit.c). */
struct io_iplimit;
int io_iplimit_create(struct io_iplimit **out, uint32_t buckets);
void io_iplimit_destroy(struct io_iplimit *t);
/* Take a slot for addr; -EBUSY when the address already holds max. */
int io_iplimit_take(struct io_iplimit *t, const struct sockaddr_storage *addr, uint32_t max);
void io_iplimit_put(struct io_iplimit *t, const struct sockaddr_storage *addr);

int io_parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len);

#endif
