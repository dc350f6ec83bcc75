/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_CONFIG_H
#define DS_IO_CONFIG_H

/*
 * What the engine is told: listeners, limits, timeouts, buffers, and the
 * session's and the spool's settings it hands on. Types only; the daemon
 * fills it from flags and the config file (daemon/options.c).
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "smtp.h"
#include "spool.h"
#include "throttle.h"

#define IO_LISTEN_MAX  16
#define IO_DOMAIN_MAX  256
#define IO_THREADS_MAX 64
#define IO_DELIVER_HOPS_MAX 8

/* --deliver-to URL (issue 14). */
enum io_hop_kind {
	IO_HOP_SMTP = 1, /* smtp://HOST:PORT (HOST an IP literal, [::1] for IPv6) */
	IO_HOP_LMTP,	 /* lmtp://HOST:PORT or lmtp:/path/to/unix.socket */
	IO_HOP_PIPE,	 /* pipe:/path/to/program */
	IO_HOP_AMQP,	 /* amqp://... (issue 18; per message, never mixed with the others) */
};

struct io_hop_spec {
	enum io_hop_kind kind;
	struct sockaddr_storage addr; /* TCP (smtp, lmtp) or AF_UNIX (lmtp:/path); pipe: addr_len 0 */
	socklen_t addr_len;
	char path[4096]; /* pipe program, or the unix socket path; "" for TCP */
	char text[512];	 /* the URL as given (logs, metrics label); amqp: the password masked */
	/* amqp:// only (issue 18; io/dlv_amqp.c): "" when not in the URL */
	struct {
		char user[128], pass[128]; /* percent-decoded; --deliver-credentials when "" */
		char vhost[256];	   /* percent-decoded; "/" by default */
		char exchange[256];	   /* ?exchange=, "" = the default exchange */
		char routing_key[256];	   /* ?routing_key= */
		char host[64];		   /* the IP literal, for amqp_socket_open (no DNS) */
		uint16_t port;		   /* default 5672 */
	} amqp;
};

/* --deliver-starttls: the values of enum dlv_starttls (deliver/dlv_client.h), which io/ hands on. */
#define IO_DELIVER_STARTTLS_NEVER	  0
#define IO_DELIVER_STARTTLS_OPPORTUNISTIC 1 /* default: Postfix's smtp_tls_security_level = may */
#define IO_DELIVER_STARTTLS_REQUIRED	  2

struct io_deliver_config {
	struct io_hop_spec hop[IO_DELIVER_HOPS_MAX]; /* tried in order (fallback) */
	uint32_t hop_count;			     /* 0 = spool only (today's behaviour) */
	uint32_t connections_max;		     /* --deliver-connections, whole server; default 64 */
	uint32_t starttls;			     /* IO_DELIVER_STARTTLS_*; default opportunistic */
	/*
	 * --deliver-ca, PEM. With required and no --deliver-ca the daemon puts the
	 * system bundle here (/etc/ssl/certs/ca-certificates.crt), so required always
	 * has one; "" otherwise. Opportunistic never stops for a certificate
	 * (Postfix's may): with a CA file the result is only logged.
	 */
	char ca_file[4096];
	char tls_name[256]; /* --deliver-tls-name: a DNS name; "" = required verifies the chain only */
	uint32_t retry_min_s;			     /* default 300 */
	uint32_t retry_max_s;			     /* default 4000 */
	uint32_t queue_lifetime_s;		     /* default 432000 (5 days) */
	uint32_t timeout_connect_s;		     /* default 30 */
	uint32_t timeout_greeting_s;		     /* 300 */
	uint32_t timeout_command_s;		     /* 300 */
	uint32_t timeout_data_init_s;		     /* 120 */
	uint32_t timeout_data_block_s;		     /* 180 */
	uint32_t timeout_data_done_s;		     /* 600 */
	uint32_t timeout_pipe_s;		     /* --deliver-timeout-pipe-s: a pipe program's run time, 600 */
	uint32_t hop_backoff_min_s;		     /* --deliver-hop-backoff-min-s: default min(retry-min, 60) */
	bool hops_from_source;			     /* the current source (file, command line) set the hops */
	/* amqp:// (issue 18, io/dlv_amqp.c) */
	char credentials_file[4096]; /* --deliver-credentials: "user:password", mode 0600 or stricter */
	char amqp_user[128], amqp_pass[128]; /* read from it by the daemon; "" otherwise */
	uint32_t amqp_window;		     /* --amqp-window: unconfirmed publishes per worker, 256 */
	uint32_t timeout_confirm_s;	     /* --deliver-timeout-confirm-s: publish -> confirm, 30 */
	uint64_t amqp_max_message_bytes;     /* --amqp-max-message-size: the broker's max_message_size */
};

/*
 * The spool's high watermark (issue 15; io/watermark.h). Each limit is a
 * byte count, or a percentage of the spool's file system size when its
 * byte count is 0 (resolved at every sample, so a grown file system counts).
 */
struct io_watermark_config {
	uint64_t max_bytes;	 /* --spool-max-bytes SIZE; 0: max_pct */
	uint32_t max_pct;	 /* --spool-max-bytes N%; default 80 */
	uint64_t min_free_bytes; /* --spool-min-free-bytes SIZE (0 with min_free_pct 0: no floor) */
	uint32_t min_free_pct;	 /* --spool-min-free-bytes N% */
	bool min_free_auto;	 /* default: min(1 GiB, 5% of the file system) */
};

/* Ingress policy (issue 17): recipient table, throttles, trusted networks. */
#define IO_VERIFY_DOMAINS_MAX 64
struct io_policy_config {
	char recipients[4096];		    /* --recipients FILE; "" = no table (today's behaviour) */
	bool recipients_case_sensitive;	    /* local parts compare exactly (domains never do) */
	uint32_t rate_max[IO_THROTTLE_KINDS]; /* per client per minute; 0 = off (io/throttle.h) */
	uint32_t session_unknown_recipients_max; /* then 421 4.7.0 and close; 0 = off */
	uint32_t client_ipv6_prefix_length;	  /* an IPv6 client is its /N (default 64) */
	uint32_t client_table_size;		  /* entries of the throttle table (bounded memory) */
	struct io_cidr trusted[IO_TRUSTED_MAX];	  /* --trusted-network: no throttle applies */
	uint32_t trusted_count;
	bool trusted_from_source;
	/* --verify-recipients DOMAIN: ask the first SMTP/LMTP --deliver-to hop at RCPT (io/verify.h). */
	char verify_domains[IO_VERIFY_DOMAINS_MAX][256];
	uint32_t verify_domain_count;
	bool verify_from_source;
	uint32_t verify_timeout_s;	 /* no answer: 450 4.1.1 */
	uint32_t verify_positive_ttl_s;	 /* cache of 2xx answers; 0 = not cached */
	uint32_t verify_negative_ttl_s;	 /* cache of 5xx answers; 0 = not cached */
	uint32_t verify_cache_size;	 /* entries per worker */
};

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
	uint32_t ring_entries;		 /* io_uring submission queue entries per worker (io/ring.h) */
	struct smtp_config smtp;
	struct spool_config spool;
	struct io_deliver_config deliver;
	struct io_watermark_config watermark;
	struct io_policy_config policy;
	char spool_dir[4096];
	char tls_cert[4096]; /* PEM chain; STARTTLS is offered only with both */
	char tls_key[4096];
	char metrics_listen[80]; /* ADDR:PORT of /metrics, "" = off */
	char control_socket[108]; /* dotspool-ctl's socket (io/ctlsock.h); "" = SPOOL/control.sock */
	struct sockaddr_storage metrics_addr;
	socklen_t metrics_addr_len;
	char log_level[16];	  /* error, warn, info, debug */
	uint32_t log_ring_size;	  /* bytes of log buffer per worker */
	bool reclaim;		  /* --reclaim: delete segments whose messages are all final (spool_reclaim.h) */
	uint32_t compact_age_s;	  /* --compact-age-s: compact segments this old (spool_compact.h); 0 = off */
	/* --segment-recycle-max: free files kept per lane for reuse (FORMAT.md, Recycled segments); 0 = off */
	uint32_t segment_recycle_max;
	uint32_t compact_live_max_pct; /* --compact-live-max-pct: ... whose live bodies are at most this % */
	uint32_t gap_window_s;	  /* --gap-dedup-window-s: RFC 1047 gap dedup window, 0 = off (io/gap.h) */
	uint32_t gap_entries;	  /* --gap-dedup-entries: the server-wide set's bound */
	uint32_t gap_keep_s;	  /* --gap-dedup-keep-s: a delivered at-risk message kept at most (0: window) */
	bool gap_all;		  /* --gap-dedup-all: fingerprint every message, not only at-risk ones */
	bool listen_from_source;  /* the current source (file, command line) set the listeners */
	bool domains_from_source; /* ... the accepted domains */
};

#endif
