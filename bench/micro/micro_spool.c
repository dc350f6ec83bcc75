/* SPDX-License-Identifier: MIT */
/* Microbenchmarks of spool/: CRC32C throughput and commit-record encoding. */
#include <string.h>

#include "crc32c.h"
#include "micro.h"
#include "spool_format.h"

static uint8_t micro_spool_buf[65536];

MICRO_BENCH(spool_crc32c_4k)
{
	uint32_t c = 0;
	while (micro_keep_running(st))
		micro_do_not_optimize_u64(c = crc32c(c, micro_spool_buf, 4096));
	micro_set_bytes(st, micro_iterations(st) * 4096);
}

MICRO_BENCH(spool_crc32c_64k)
{
	uint32_t c = 0;
	while (micro_keep_running(st))
		micro_do_not_optimize_u64(c = crc32c(c, micro_spool_buf, 65536));
	micro_set_bytes(st, micro_iterations(st) * 65536);
}

MICRO_BENCH(spool_crc32c_sw_4k)
{
	uint32_t c = 0;
	while (micro_keep_running(st))
		micro_do_not_optimize_u64(c = crc32c_sw(c, micro_spool_buf, 4096));
	micro_set_bytes(st, micro_iterations(st) * 4096);
}

/* A typical envelope: one recipient, ESMTP, plaintext; header + payload + record CRC. */
MICRO_BENCH(spool_commit_encode)
{
	static uint8_t rec[4096];
	struct ds_rcpt rc[] = {{"user@example.org", ""}};
	struct ds_envelope env = {.client_addr = "192.0.2.17",
				  .client_port = 40000,
				  .helo = "mail.example.net",
				  .proto = "ESMTP",
				  .mail_from = "sender@example.net",
				  .mail_params = "SIZE=4096",
				  .rcpt = rc,
				  .rcpt_count = 1,
				  .tls = "",
				  .received_at_us = 1700000000000000ll,
				  .body_size = 4096};
	struct spool_commit c = {
		.body_len = 4096, .body_crc = 1, .chunk_count = 1, .first_seq = 1, .first_off = 4096};
	while (micro_keep_running(st)) {
		size_t n = spool_commit_size(&env);
		spool_commit_encode(rec + SPOOL_REC_HDR_SIZE, &c, &env);
		spool_rec_encode(rec, SPOOL_REC_COMMIT, (uint32_t)n, 42, 7, 4096);
		micro_do_not_optimize_ptr(rec);
	}
	micro_set_items(st, micro_iterations(st));
}
