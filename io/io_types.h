/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_TYPES_H
#define DS_IO_TYPES_H

/*
 * Private to io/: the types of a worker, its connections, its listeners and
 * its /metrics endpoint, shared by worker.c, conn.c and mserve.c. Types
 * only: each file's functions are declared in its own header (conn.h,
 * mserve.h), the worker's life cycle in io.h, the ring's primitives in
 * ring.h.
 */

#include <arpa/inet.h>
#include <pthread.h>

#include "io.h"
#include "log.h"
#include "metrics.h"
#include "ring.h"
#include "smtp.h"
#include "spool.h"
#include "throttle.h"
#include "tls.h"

/* Scratch for decrypted input, one per worker. */
#define IO_TLS_PT_BYTES 16384

enum io_conn_state {
	IO_CONN_FREE = 0,
	IO_CONN_PROXY,	 /* waiting for the PROXY header */
	IO_CONN_ACTIVE,	 /* session running */
	IO_CONN_CLOSING, /* shut down, waiting for ops in flight */
};

struct io_worker;
struct io_dlv;
struct io_verify;
struct io_gap_conn;
struct io_gap_worker;

struct io_conn {
	struct io_worker *w;
	int fd;
	uint32_t gen;
	uint32_t idx;
	uint8_t state;
	uint8_t listen_idx;
	bool recv_armed;  /* a multishot recv is outstanding */
	bool recv_cancel; /* cancel requested for it */
	bool busy;	  /* inside a CQE handler: freeing waits until it returns */
	bool send_inflight;
	bool commit_pending;	 /* spool owes us a settled() */
	bool txn_open;		 /* a spool txn is open (begun, not committed or aborted) */
	bool want_close;	 /* close once the output is sent */
	bool parked;		 /* on the wait-for-spool-room list */
	bool counted;		 /* holds a slot in the connection limits */
	bool bye_pending;	 /* send a 421 shutdown line once the session's output is out */
	bool tls_starting;	 /* STARTTLS accepted: 220 going out in plaintext, input dropped */
	bool tls_up;		 /* handshake done: input and output are TLS records */
	bool tls_failed;	 /* handshake failed: send the alert, then close */
	bool tls_closing;	 /* close_notify queued */
	bool hs_queued;		 /* on the worker's handshake queue */
	bool peer_eof;		 /* the client half-closed: finish its input and replies, then close */
	bool commit_retry;	 /* no room for the commit record in the lane: parked, then retried */
	bool trusted;		 /* --trusted-network: no throttle applies (issue 17) */
	bool rcpt_wait;		 /* the session waits for a policy answer on a RCPT (verification) */
	uint32_t unknown_rcpts;	 /* unknown recipients this session (--session-unknown-recipients-max) */
	const char *limit_note;	 /* the limit behind the refusal being queued, for its log line */
	struct io_client_key client; /* the client as the throttles see it (IPv6: its prefix) */
	uint32_t progress_bytes; /* data bytes since the deadline was last pushed out */
	uint16_t peer_port;
	uint32_t send_len;
	int64_t dot_us;		/* final dot of the message being committed */
	struct ds_envelope env; /* its envelope (strings live in the session until commit_done) */
	int64_t deadline_ms;
	uint8_t *pending; /* unread input, allocated only when needed */
	uint32_t pending_len;
	uint32_t pending_cap;
	struct sockaddr_storage peer;
	char peer_text[INET6_ADDRSTRLEN];
	struct spool_txn txn;
	uint64_t commit_seq, commit_off; /* where its commit record lies (delivery queue) */
	struct smtp_session *s;
	struct io_tls_conn *tls; /* only after STARTTLS */
	struct io_gap_conn *gap; /* gap dedup state (io/gap.h), allocated at the first DATA when on */
	struct io_conn *next_free;
	struct io_conn *next_parked;
	struct io_conn *next_hs;
};

#define IO_MSERVE_SLOTS 4

struct io_mslot {
	int fd;
	uint32_t gen;
	bool op_inflight;
	size_t req_len;
	uint8_t req[OBS_METRICS_HTTP_REQUEST_MAX];
	char *out;
	size_t out_len, out_off;
	int64_t deadline_ms;
};

struct io_mserve {
	int fd; /* listener, worker 0 only; -1 when off */
	bool armed;
	size_t out_cap;
	struct io_mslot slot[IO_MSERVE_SLOTS];
};

struct io_listener {
	int fd;
	enum io_listen_kind kind;
	bool armed;
};

struct io_worker {
	unsigned no;
	const struct io_config *cfg;
	struct io_shared *sh;
	pthread_t thread;
	bool started;
	struct io_ring ring; /* and its provided receive buffers */
	int wake_fd;
	uint64_t wake_buf;
	struct __kernel_timespec tick_ts;
	struct io_listener listeners[IO_LISTEN_MAX];
	uint32_t listener_count;
	/* connections */
	struct io_conn *conns;
	uint8_t *session_mem;
	size_t session_size;
	uint32_t conn_max;
	uint32_t conn_fresh; /* slots [0, conn_fresh) have been used at least once */
	size_t conns_bytes;
	uint32_t conn_active;
	struct io_conn *free_list;
	struct io_conn *parked;
	struct io_conn *hs_head, *hs_tail; /* TLS handshake steps to run after the turn's submit */
	/* configs the sessions point at */
	struct smtp_config smtp_cfg;
	struct smtp_config lmtp_cfg;
	struct spool_lane *lane;
	struct io_dlv *dlv; /* the delivery stage; NULL without --deliver-to */
	struct spool_compact *compact; /* the lane's compactor (issue 15); NULL unless reclaim + delivery */
	struct io_verify *verify; /* recipient verification (io/verify.h); NULL without --verify-recipients */
	struct io_gap_worker *gapw; /* gap dedup (io/gap.h); NULL when --gap-dedup-window-s is 0 */
	struct io_tls_server *tls; /* NULL without --tls-cert */
	uint8_t *tls_pt;	   /* scratch for decrypted input */
	unsigned tls_reload_gen;
	struct obs_metrics *m;	  /* ours; read by worker 0's /metrics */
	struct obs_log_ring *log; /* ours */
	struct io_mserve ms;
	int64_t statvfs_next_ms;
	struct spool_lane_stats lane_stats;
	bool stopping;
	int64_t stop_deadline_ms;
	int exit_code;
	uint64_t accept_pause_until_ms;
};

#endif
