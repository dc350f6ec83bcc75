/* SPDX-License-Identifier: MIT */
#ifndef DS_IO_CONN_H
#define DS_IO_CONN_H

#include "worker.h"

int io_conns_init(struct io_worker *w);
void io_conns_fini(struct io_worker *w);
void io_conn_accept(struct io_worker *w, int fd, uint32_t listen_idx);
void io_conn_on_recv(struct io_worker *w, uint64_t key, int res, uint32_t flags);
void io_conn_on_send(struct io_worker *w, uint64_t key, int res);
void io_conn_settled(struct io_worker *w, uint64_t cookie, int res);
void io_conns_tick(struct io_worker *w, int64_t now_ms);
void io_conns_shutdown(struct io_worker *w);
void io_conns_close_all(struct io_worker *w);
void io_conns_end_of_turn(struct io_worker *w);
void io_conns_resume_parked(struct io_worker *w);
/* Runs queued TLS handshake steps for up to budget_us; true if some are left. */
bool io_conns_handshakes(struct io_worker *w, int64_t budget_us);

struct io_uring_sqe *io_sqe(struct io_worker *w);
void io_rbuf_return(struct io_worker *w, uint16_t bid);
void io_listener_arm(struct io_worker *w, uint32_t i);

#endif
