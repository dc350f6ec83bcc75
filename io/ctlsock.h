/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_CTLSOCK_H
#define DS_IO_CTLSOCK_H

/*
 * The control socket (issue 15 point 4): DIR/control.sock, AF_UNIX
 * SOCK_STREAM, mode 0600, made at start and removed at stop, served by one
 * thread of its own. Peers are checked with SO_PEERCRED: the server's own
 * uid or root, anyone else is refused (told so, and logged). A request is
 * one line; the protocol is in deliver/README.md ("Operator commands").
 *
 * Changing commands (hold, release, delete, bounce, retry) are split by
 * the worker that owns each message (lane % threads) and handed to that
 * worker as a batch through a locked mailbox it looks at every loop turn
 * (a wake through its eventfd makes the turn happen): the worker writes an
 * operator record per message through its own lane's group commit and only
 * then acts on its delivery queue; the batch is answered when every record
 * has settled. Workers never block on this thread: they take the mailbox
 * with a trylock-free swap under a mutex held for a pointer exchange, and
 * the answer goes back under the command's own mutex.
 */

#include <stdbool.h>
#include <stdint.h>

#include "io.h"

#define IO_CTL_IDS_MAX	   10000u /* ids in one request */
#define IO_CTL_SOCKET_NAME "control.sock"

/* Per-id result codes of a batch (also the reply words, deliver/README.md). */
enum io_ctl_res {
	IO_CTL_PENDING = 0,
	IO_CTL_OK,
	IO_CTL_UNKNOWN, /* no such message still owed by this server */
	IO_CTL_BUSY,	/* a delivery attempt or another operator action is under way: try again */
	IO_CTL_ERROR,	/* the operator record could not be written */
};

struct io_ctl_cmd;

/* One worker's share of one command. Owned by the command; the worker fills res[] and calls done. */
struct io_ctl_batch {
	struct io_ctl_cmd *cmd;
	uint32_t action; /* enum spool_operator_action */
	uint32_t uid, pid;
	const char *user;   /* the operator's login name */
	const char *reason; /* dotspool-ctl --reason TEXT, "" if none */
	int64_t at_us;
	bool all;   /* retry --all: every deferred message, nothing recorded */
	uint32_t n; /* ids (sorted ascending) */
	uint64_t *ids;
	uint8_t *res;	    /* enum io_ctl_res per id */
	uint32_t all_count; /* retry --all: messages made due */
	uint32_t left;	    /* worker-private: records not yet settled */
	struct io_ctl_batch *next;
};

struct obs_log_ring;
struct io_worker;

/*
 * Start the thread and the socket (after recovery, before the workers take
 * mail; workers[0, n) are filled by the time io_ctlsock_ready() is called).
 * log: a ring no other thread uses. A spool path too long for a socket
 * address: warning, no socket (0). 0 or -errno.
 */
int io_ctlsock_start(const struct io_config *cfg, struct io_worker *const *workers, unsigned n,
		     struct obs_log_ring *log);
/* Every worker runs: commands are handed out from now on (until then they wait). */
void io_ctlsock_ready(void);
/* Stop answering, remove the socket, join the thread (before the workers stop). */
void io_ctlsock_stop(void);
/* After the workers are joined: free what no worker took. */
void io_ctlsock_fini(void);

/* Worker side: the batches waiting for worker no (NULL if none; cheap when none). */
struct io_ctl_batch *io_ctlsock_take(unsigned no);
/* Worker side: every id of b has its result. b must not be touched afterwards. */
void io_ctlsock_batch_done(struct io_ctl_batch *b);

#endif
