/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_CONN_H
#define DS_IO_CONN_H

/* Connections of one worker (io/conn.c): what the worker's loop calls. */

#include "io_types.h"

int io_conns_init(struct io_worker *w);
void io_conns_fini(struct io_worker *w);
void io_conn_accept(struct io_worker *w, int fd, uint32_t listen_idx);
void io_conn_on_recv(struct io_worker *w, uint64_t key, int res, uint32_t flags);
void io_conn_on_send(struct io_worker *w, uint64_t key, int res);
/* The spool settled the commit of connection `cookie` (spool_io_ops.settled). */
void io_conn_settled(struct io_worker *w, uint64_t cookie, int res);
/* A policy answer for connection `key`'s pending RCPT (SMTP_WAIT_RCPT; core/smtp.h rcpt_ok). */
void io_conn_rcpt_answer(struct io_worker *w, uint64_t key, int res);
void io_conns_tick(struct io_worker *w, int64_t now_ms);
void io_conns_shutdown(struct io_worker *w);
void io_conns_close_all(struct io_worker *w);
void io_conns_resume_parked(struct io_worker *w);
/* Runs queued TLS handshake steps for up to budget_us (the rest waits for the next turn). */
void io_conns_handshakes(struct io_worker *w, int64_t budget_us);

#endif
