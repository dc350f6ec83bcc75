/* SPDX-License-Identifier: MIT */
#ifndef DS_BENCH_H
#define DS_BENCH_H

/*
 * dotspool-bench engine: one io_uring, one thread, N SMTP/LMTP client
 * connections. bench_run() performs one complete run (warm-up connects,
 * closed or open loop, drain, QUIT) and fills a bench_result.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "bench_sched.h"
#include "hist.h"

#define BENCH_CONN_MAX	  10000
#define BENCH_THREADS_MAX 64
#define BENCH_RCPT_MAX	  100
#define BENCH_ADDR_MAX	  256
#define BENCH_SIZE_MAX	  (64u << 20)
#define BENCH_SIZES_MAX	  (1u << 20)
#define BENCH_PENDING_MAX (1u << 20)   /* open loop: due messages waiting for a connection */
#define BENCH_MEM_MAX	  (2ull << 30) /* message buffers over all connections */
#define BENCH_HIST_MAX_NS (3600ull * 1000000000ull)

enum bench_phase {
	BENCH_PH_CONNECT,
	BENCH_PH_BANNER,
	BENCH_PH_EHLO,
	BENCH_PH_STARTTLS, /* STARTTLS sent -> TLS handshake complete */
	BENCH_PH_MAIL,
	BENCH_PH_RCPT,
	BENCH_PH_DATA,
	BENCH_PH_FINAL_DOT, /* final dot sent -> (last) reply to it: the RFC 1047 gap */
	BENCH_PH_MESSAGE,   /* scheduled start (open loop) or MAIL sent (closed loop) -> last final reply */
	BENCH_PH_COUNT,
};

extern const char *const bench_phase_names[BENCH_PH_COUNT];

/* Errors that are not SMTP reply codes. */
enum bench_err {
	BENCH_ERR_CONNECT,
	BENCH_ERR_TIMEOUT,
	BENCH_ERR_CLOSED,   /* server closed or reset the connection mid-message */
	BENCH_ERR_PROTOCOL, /* unparseable reply */
	BENCH_ERR_QUEUE,    /* open loop: too many due messages waiting, message dropped */
	BENCH_ERR_TLS,	    /* STARTTLS not offered or the TLS handshake/record layer failed */
	BENCH_ERR_COUNT,
};

extern const char *const bench_err_names[BENCH_ERR_COUNT];

struct bench_opts {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char server[128];
	uint32_t connections;
	uint64_t messages; /* 0: run for duration_s */
	double duration_s;
	double rate_per_s; /* 0: closed loop */
	bool pipelining;
	bool lmtp;
	bool new_conn_per_msg;
	bool starttls;	     /* TLS 1.2 via mbedTLS; the server certificate is not verified */
	bool progress;	     /* one-line progress on stderr once per second */
	const size_t *sizes; /* sampled per message */
	uint32_t size_count;
	uint32_t rcpts;
	const char *from;
	const char *to_pattern; /* "%d" replaced by a recipient number */
	const char *helo;
	FILE *ack_log;	     /* Message-ID of every message with a 2xx final reply */
	uint32_t timeout_ms; /* per step: connect, each reply */
	/* --threads: this engine is thread_index of thread_count; Message-IDs stay unique. */
	uint32_t thread_index;
	uint32_t thread_count;
	uint64_t id_base; /* first Message-ID number (sweep: past the previous steps', so IDs never repeat) */
	double rate_total_per_s; /* open loop: the whole client's rate, to phase-shift this thread's schedule
				  */
};

struct bench_result {
	struct bench_hist hist[BENCH_PH_COUNT];
	uint64_t messages_ok;
	uint64_t messages_failed;
	uint64_t bytes_ok; /* unstuffed message bytes of messages_ok */
	uint64_t rcpts_ok;
	uint64_t rcpts_failed;
	uint64_t code_counts[1000]; /* unexpected reply codes */
	uint64_t err_counts[BENCH_ERR_COUNT];
	bool server_pipelining; /* the server advertised PIPELINING */
	double elapsed_s;
	uint64_t id_next; /* one past the highest Message-ID number used (merge: the maximum) */
};

int bench_result_init(struct bench_result *r);
void bench_result_free(struct bench_result *r);
/* Returns 0, or -errno when the run could not be set up at all. */
int bench_run(const struct bench_opts *o, struct bench_result *r);
/* Adds src into dst (histograms merged, counters summed, elapsed the longer). */
int bench_result_merge(struct bench_result *dst, const struct bench_result *src);
/*
 * Splits o over thread_count engines (connections, messages and rate divided),
 * runs them on their own threads and merges the results into r.
 */
int bench_run_threads(const struct bench_opts *o, uint32_t thread_count, struct bench_result *r);

#endif
