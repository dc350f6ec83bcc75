/* SPDX-License-Identifier: MIT */
/*
 * The Prometheus endpoint (--metrics ADDR:PORT), served by worker 0 from
 * its own io_uring loop: no extra thread, no lock. A scrape reads every
 * worker's counters with relaxed loads (obs/metrics.h).
 *
 * Bounded: IO_MSERVE_SLOTS scrapes at once (more are closed at accept),
 * one request of at most OBS_METRICS_HTTP_REQUEST_MAX bytes each, and
 * IO_MSERVE_TIMEOUT_MS from accept to the last byte sent. Each slot's
 * buffers are allocated at start-up.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mserve.h"

#include "ds_assert.h"
#include "ds_clock.h"
#include "ring.h"

#define IO_MSERVE_TIMEOUT_MS 5000

enum { MS_ACCEPT, MS_RECV, MS_SEND };

static inline uint64_t ms_tag(unsigned kind, unsigned slot, uint32_t gen)
{
	return (uint64_t)kind | ((uint64_t)slot << 2) | ((uint64_t)gen << 8);
}

static int ms_listen(const struct io_config *cfg)
{
	int fd = socket(cfg->metrics_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		fprintf(stderr, "dotspool: warning: metrics %s: SO_REUSEADDR: %s\n", cfg->metrics_listen,
			strerror(errno));
	if (bind(fd, (const struct sockaddr *)&cfg->metrics_addr, cfg->metrics_addr_len) < 0 ||
	    listen(fd, 16) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int io_mserve_open(struct io_worker *w)
{
	struct io_mserve *m = &w->ms;
	m->fd = -1;
	for (unsigned i = 0; i < IO_MSERVE_SLOTS; i++)
		m->slot[i].fd = -1;
	if (!w->cfg->metrics_listen[0] || w->no != 0)
		return 0;
	size_t cap = obs_metrics_render_bound(w->sh->metrics_count) + OBS_METRICS_HTTP_HEADER_MAX;
	for (unsigned i = 0; i < IO_MSERVE_SLOTS; i++) {
		m->slot[i].out = malloc(cap);
		if (!m->slot[i].out)
			return -ENOMEM;
	}
	m->out_cap = cap;
	int fd = ms_listen(w->cfg);
	if (fd < 0)
		return fd;
	m->fd = fd;
	return 0;
}

void io_mserve_arm(struct io_worker *w)
{
	struct io_mserve *m = &w->ms;
	if (m->fd < 0 || m->armed || w->stopping)
		return;
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_multishot_accept(sqe, m->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_METRICS, ms_tag(MS_ACCEPT, 0, 0)));
	m->armed = true;
}

static void ms_recv(struct io_worker *w, unsigned i)
{
	struct io_mslot *s = &w->ms.slot[i];
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_recv(sqe, s->fd, s->req + s->req_len, sizeof(s->req) - s->req_len, 0);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_METRICS, ms_tag(MS_RECV, i, s->gen)));
	s->op_inflight = true;
}

static void ms_send(struct io_worker *w, unsigned i)
{
	struct io_mslot *s = &w->ms.slot[i];
	struct io_uring_sqe *sqe = io_sqe(&w->ring);
	io_uring_prep_send(sqe, s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, io_ud(IO_OP_METRICS, ms_tag(MS_SEND, i, s->gen)));
	s->op_inflight = true;
}

static void ms_free(struct io_mslot *s)
{
	DS_ASSERT(!s->op_inflight);
	close(s->fd);
	s->fd = -1;
	s->gen++;
}

static void ms_accept(struct io_worker *w, int fd)
{
	struct io_mserve *m = &w->ms;
	for (unsigned i = 0; i < IO_MSERVE_SLOTS; i++) {
		struct io_mslot *s = &m->slot[i];
		if (s->fd >= 0)
			continue;
		s->fd = fd;
		s->req_len = 0;
		s->out_len = s->out_off = 0;
		s->deadline_ms = ds_mono_ms() + IO_MSERVE_TIMEOUT_MS;
		ms_recv(w, i);
		return;
	}
	close(fd); /* every slot busy: the scraper retries */
}

static void ms_on_recv(struct io_worker *w, unsigned i, int res)
{
	struct io_mslot *s = &w->ms.slot[i];
	if (res <= 0) {
		ms_free(s);
		return;
	}
	s->req_len += (size_t)res;
	int r = obs_metrics_http(s->req, s->req_len, (const struct obs_metrics *const *)w->sh->metrics,
				 w->sh->metrics_count, s->out, w->ms.out_cap, &s->out_len);
	if (r == 0 && s->req_len < sizeof(s->req)) {
		ms_recv(w, i);
		return;
	}
	if (r <= 0) {
		ms_free(s);
		return;
	}
	s->out_off = 0;
	ms_send(w, i);
}

static void ms_on_send(struct io_worker *w, unsigned i, int res)
{
	struct io_mslot *s = &w->ms.slot[i];
	if (res <= 0) {
		ms_free(s);
		return;
	}
	s->out_off += (size_t)res;
	if (s->out_off < s->out_len) {
		ms_send(w, i);
		return;
	}
	shutdown(s->fd, SHUT_WR);
	ms_free(s);
}

void io_mserve_complete(struct io_worker *w, uint64_t tag, int res, uint32_t flags)
{
	struct io_mserve *m = &w->ms;
	unsigned kind = tag & 3, i = (tag >> 2) & 63;
	uint32_t gen = (uint32_t)(tag >> 8);
	if (kind == MS_ACCEPT) {
		if (!(flags & IORING_CQE_F_MORE))
			m->armed = false;
		if (res >= 0)
			ms_accept(w, res);
		io_mserve_arm(w);
		return;
	}
	DS_ASSERT(i < IO_MSERVE_SLOTS);
	struct io_mslot *s = &m->slot[i];
	DS_ASSERT(s->fd >= 0 && s->gen == gen && s->op_inflight);
	s->op_inflight = false;
	if (kind == MS_RECV)
		ms_on_recv(w, i, res);
	else
		ms_on_send(w, i, res);
}

void io_mserve_tick(struct io_worker *w, int64_t now_ms)
{
	for (unsigned i = 0; i < IO_MSERVE_SLOTS; i++) {
		struct io_mslot *s = &w->ms.slot[i];
		/* A slow or silent scraper: shutdown() completes its recv/send at once. */
		if (s->fd >= 0 && now_ms >= s->deadline_ms)
			shutdown(s->fd, SHUT_RDWR);
	}
}

void io_mserve_stop(struct io_worker *w)
{
	struct io_mserve *m = &w->ms;
	if (m->fd < 0)
		return;
	shutdown(m->fd, SHUT_RDWR);
	close(m->fd);
	m->fd = -1;
}

void io_mserve_fini(struct io_worker *w)
{
	struct io_mserve *m = &w->ms;
	io_mserve_stop(w);
	for (unsigned i = 0; i < IO_MSERVE_SLOTS; i++) {
		if (m->slot[i].fd >= 0)
			close(m->slot[i].fd);
		m->slot[i].fd = -1;
		free(m->slot[i].out);
		m->slot[i].out = NULL;
	}
}
