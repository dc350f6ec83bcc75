/* SPDX-License-Identifier: MIT */
/*
 * Gap dedup (issue 16) on the ingest path: the streaming XXH3-128 every
 * message pays while gap dedup is on (io_gap_on_write), next to the
 * CRC32C the spool already computes over the same bytes; the set lookup
 * a transaction pays at DATA, empty (one relaxed load) and with entries.
 */
#include <string.h>

#include "crc32c.h"
#include "ds_clock.h"
#include "gap.h"
#include "micro.h"

static uint8_t micro_gap_buf[65536];

static void hash_msg(struct micro_state *st, size_t size, size_t piece)
{
	struct io_gap_hash h = {0};
	memset(micro_gap_buf, 'x', sizeof(micro_gap_buf));
	while (micro_keep_running(st)) {
		uint64_t lo, hi;
		io_gap_hash_reset(&h);
		for (size_t off = 0; off < size; off += piece)
			io_gap_hash_update(&h, micro_gap_buf, piece < size - off ? piece : size - off);
		io_gap_hash_final(&h, &lo, &hi);
		micro_do_not_optimize_u64(lo ^ hi);
	}
	io_gap_hash_free(&h);
	micro_set_bytes(st, micro_iterations(st) * (int64_t)size);
	micro_set_items(st, micro_iterations(st));
}

/* A 4 KiB message in the pieces the DATA scanner hands over (lines of ~80 octets). */
MICRO_BENCH(gap_xxh3_128_msg_4k_lines)
{
	hash_msg(st, 4096, 80);
}

MICRO_BENCH(gap_xxh3_128_msg_4k_whole)
{
	hash_msg(st, 4096, 4096);
}

MICRO_BENCH(gap_xxh3_128_msg_64k)
{
	hash_msg(st, 65536, 16384);
}

/* For scale: the CRC32C the spool computes over every body byte anyway. */
MICRO_BENCH(gap_ref_crc32c_4k_lines)
{
	memset(micro_gap_buf, 'x', sizeof(micro_gap_buf));
	while (micro_keep_running(st)) {
		uint32_t c = 0;
		for (size_t off = 0; off < 4096; off += 80)
			c = crc32c(c, micro_gap_buf, 80 < 4096 - off ? 80 : 4096 - off);
		micro_do_not_optimize_u64(c);
	}
	micro_set_bytes(st, micro_iterations(st) * 4096);
}

/* DATA with gap dedup on and nothing at risk: the whole cost is one relaxed load. */
MICRO_BENCH(gap_lookup_empty)
{
	struct io_gap *g;
	struct io_gap_cand c[IO_GAP_CAND_MAX];
	io_gap_create(&g, 1024);
	while (micro_keep_running(st))
		micro_do_not_optimize_u64(
			io_gap_lookup(g, &(struct spool_gap_fp){.rcpt_count = 1}, 0, c, IO_GAP_CAND_MAX));
	io_gap_destroy(g);
	micro_set_items(st, micro_iterations(st));
}

/* With 10000 entries (other envelopes): one mutex round trip and a short chain walk. */
MICRO_BENCH(gap_lookup_10k_miss)
{
	struct io_gap *g;
	struct io_gap_cand c[IO_GAP_CAND_MAX];
	int64_t exp = ds_wall_us() + 3600ll * 1000000;
	io_gap_create(&g, 16384);
	for (uint64_t i = 1; i <= 10000; i++) {
		struct spool_gap_fp fp = {.env_digest = i * 0x9e3779b97f4a7c15ull,
					  .sender_digest = i * 0x51ed27ull,
					  .rcpt_count = 1};
		io_gap_insert(g, i, &fp, exp, true);
	}
	uint64_t k = 0;
	while (micro_keep_running(st))
		micro_do_not_optimize_u64(io_gap_lookup(
			g, &(struct spool_gap_fp){.sender_digest = ++k * 0x3b9ull, .rcpt_count = 1}, 0, c,
			IO_GAP_CAND_MAX));
	io_gap_destroy(g);
	micro_set_items(st, micro_iterations(st));
}
