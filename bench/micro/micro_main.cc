// SPDX-License-Identifier: MIT
// Registers the C microbenchmarks (bench/micro/micro_*.c, written against
// micro.h) with Google Benchmark. This is the only C++ in the project.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>

#include "micro.h"

struct micro_state {
	benchmark::State *st;
};

namespace
{
constexpr int kMicroMax = 256;
struct micro_entry {
	const char *name;
	void (*fn)(struct micro_state *st);
};
micro_entry g_entries[kMicroMax];
int g_count;
} // namespace

extern "C" void micro_register(const char *name, void (*fn)(struct micro_state *st))
{
	// Called from constructors before main(): no allocation, fixed table.
	if (g_count >= kMicroMax) {
		std::fprintf(stderr, "dotspool-micro: more than %d benchmarks\n", kMicroMax);
		std::abort();
	}
	g_entries[g_count++] = micro_entry{name, fn};
}

extern "C" bool micro_keep_running(struct micro_state *ms)
{
	// KeepRunning() starts the timer on the first call and stops it on the last.
	return ms->st->KeepRunning();
}

extern "C" int64_t micro_iterations(struct micro_state *ms)
{
	return static_cast<int64_t>(ms->st->iterations());
}

extern "C" void micro_set_bytes(struct micro_state *ms, int64_t bytes)
{
	ms->st->SetBytesProcessed(bytes);
}

extern "C" void micro_set_items(struct micro_state *ms, int64_t items)
{
	ms->st->SetItemsProcessed(items);
}

extern "C" void micro_do_not_optimize_ptr(const void *p)
{
	benchmark::DoNotOptimize(p);
}

extern "C" void micro_do_not_optimize_u64(uint64_t v)
{
	benchmark::DoNotOptimize(v);
}

int main(int argc, char **argv)
{
	for (int i = 0; i < g_count; i++) {
		void (*fn)(struct micro_state *) = g_entries[i].fn;
		benchmark::RegisterBenchmark(g_entries[i].name, [fn](benchmark::State &st) {
			micro_state ms{&st};
			fn(&ms);
		});
	}
	benchmark::Initialize(&argc, argv);
	if (benchmark::ReportUnrecognizedArguments(argc, argv))
		return 1;
	benchmark::RunSpecifiedBenchmarks();
	benchmark::Shutdown();
	return 0;
}
