/* SPDX-License-Identifier: MIT */
/*
 * Prints the /metrics HTTP response for a few workers with varied values,
 * for check_exposition.py. argv[1]: "body" (render only) or "http" (the
 * whole response to GET /metrics).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds_assert.h"
#include "metrics.h"

#define NW 4

int main(int argc, char **argv)
{
	static struct obs_metrics w[NW];
	const struct obs_metrics *pw[NW + 1];
	uint64_t x = 0x5eed2026;
	for (unsigned i = 0; i < NW; i++) {
		obs_metrics_init(&w[i]);
		pw[i] = &w[i];
		for (unsigned k = 0; k < 1000 * i; k++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			unsigned r = (unsigned)(x >> 33);
			obs_metrics_conn_open(&w[i]);
			if (r % 3)
				obs_metrics_conn_close(&w[i]);
			obs_metrics_conn_refused(&w[i], (enum obs_refuse_reason)(r % OBS_REFUSE_COUNT));
			obs_metrics_reply(&w[i], 200 + 100 * (r % 4) + r % 50);
			obs_metrics_message_accepted(&w[i], r % 100000, (uint64_t)1 << (r % 22));
			if (r % 7 == 0)
				obs_metrics_message_rejected(&w[i]);
			obs_metrics_tls_handshake(&w[i], r % 5 != 0);
			obs_metrics_flush_done(&w[i], (r >> 3) % 2000000, r % 700, r % 100 != 0);
			obs_metrics_spool_bytes(&w[i], r, ~(uint64_t)r);
		}
	}
	pw[NW] = NULL; /* a worker slot not in use */
	size_t cap = obs_metrics_render_bound(NW + 1) + OBS_METRICS_HTTP_HEADER_MAX;
	char *buf = malloc(cap);
	DS_ASSERT(buf);
	if (argc > 1 && !strcmp(argv[1], "http")) {
		static const char req[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
		size_t len;
		int r = obs_metrics_http((const uint8_t *)req, sizeof(req) - 1, pw, NW + 1, buf, cap, &len);
		DS_ASSERT(r == 200);
		fwrite(buf, 1, len, stdout);
	} else {
		size_t len = obs_metrics_render(pw, NW + 1, buf, cap);
		DS_ASSERT(len < cap);
		fwrite(buf, 1, len, stdout);
	}
	free(buf);
	return 0;
}
