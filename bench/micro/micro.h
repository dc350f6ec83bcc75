/* SPDX-License-Identifier: MIT */
#ifndef DS_BENCH_MICRO_H
#define DS_BENCH_MICRO_H

/*
 * Microbenchmarks are written in C against this header; one C++ file
 * (bench/micro/micro_main.cc) registers them with Google Benchmark.
 *
 *   MICRO_BENCH(crc32c_4k)
 *   {
 *           static uint8_t buf[4096];
 *           while (micro_keep_running(st))
 *                   micro_do_not_optimize_u64(crc32c(0, buf, sizeof(buf)));
 *           micro_set_bytes(st, micro_iterations(st) * sizeof(buf));
 *   }
 *
 * Files named bench/micro/micro_*.c are compiled straight into the
 * dotspool-micro executable (not through a static library, so the
 * constructor-based registration is never dropped by the linker).
 */

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct micro_state;

void micro_register(const char *name, void (*fn)(struct micro_state *st));
bool micro_keep_running(struct micro_state *st);
int64_t micro_iterations(struct micro_state *st);
void micro_set_bytes(struct micro_state *st, int64_t bytes);
void micro_set_items(struct micro_state *st, int64_t items);
void micro_do_not_optimize_ptr(const void *p);
void micro_do_not_optimize_u64(uint64_t v);

#define MICRO_BENCH(name)                                                  \
	static void micro_##name(struct micro_state *st);                  \
	__attribute__((constructor)) static void micro_reg_##name(void)    \
	{                                                                  \
		micro_register(#name, micro_##name);                       \
	}                                                                  \
	static void micro_##name(struct micro_state *st)

#ifdef __cplusplus
}
#endif

#endif
