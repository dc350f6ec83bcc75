/* SPDX-License-Identifier: MIT */
/*
 * A stand-in for the workers' /metrics listener, so real HTTP clients
 * (Python's urllib, curl) can be pointed at obs_metrics_http(): listens on
 * 127.0.0.1 (port 0 = any; the port is printed on stdout), answers
 * `requests` connections one at a time, then exits 0.
 *
 *   ops_metrics_serve REQUESTS
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ds_assert.h"
#include "metrics.h"

#define NW 2

int main(int argc, char **argv)
{
	long requests = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
	if (requests < 1 || requests > 1000)
		return 2;
	static struct obs_metrics w[NW];
	const struct obs_metrics *pw[NW] = {&w[0], &w[1]};
	for (unsigned i = 0; i < NW; i++) {
		obs_metrics_init(&w[i]);
		for (unsigned k = 0; k < 100 * (i + 1); k++) {
			obs_metrics_conn_open(&w[i]);
			obs_metrics_reply(&w[i], 250);
			obs_metrics_message_accepted(&w[i], 1000 + k, 30 * k);
			obs_metrics_flush_done(&w[i], 200 * k, k % 9, true);
		}
	}
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	DS_ASSERT(ls >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 16) < 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &alen) < 0) {
		perror("ops_metrics_serve");
		return 1;
	}
	printf("%u\n", ntohs(a.sin_port));
	fflush(stdout);

	size_t cap = obs_metrics_render_bound(NW) + OBS_METRICS_HTTP_HEADER_MAX;
	char *out = malloc(cap);
	uint8_t *req = malloc(OBS_METRICS_HTTP_REQUEST_MAX);
	DS_ASSERT(out && req);
	for (long n = 0; n < requests; n++) {
		int c = accept(ls, NULL, NULL);
		if (c < 0)
			return 1;
		struct timeval tv = {.tv_sec = 5};
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		size_t len = 0, out_len = 0;
		int r = 0;
		/* Same shape as a worker: append what arrived, ask again until there is a verdict. */
		while (r == 0) {
			ssize_t got = recv(c, req + len, OBS_METRICS_HTTP_REQUEST_MAX - len, 0);
			if (got <= 0)
				break;
			len += (size_t)got;
			r = obs_metrics_http(req, len, pw, NW, out, cap, &out_len);
		}
		if (r > 0) {
			for (size_t off = 0; off < out_len;) {
				ssize_t s = send(c, out + off, out_len - off, MSG_NOSIGNAL);
				if (s <= 0)
					break;
				off += (size_t)s;
			}
		}
		fprintf(stderr, "ops_metrics_serve: request %ld: %d\n", n, r);
		/*
		 * Lingering close: closing with unread request bytes (an oversized
		 * request) would send a RST that can destroy the response in flight.
		 */
		shutdown(c, SHUT_WR);
		while (recv(c, req, OBS_METRICS_HTTP_REQUEST_MAX, 0) > 0)
			;
		close(c);
	}
	close(ls);
	free(out);
	free(req);
	return 0;
}
