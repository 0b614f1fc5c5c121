// Internal: the fork-join thread pool behind matmul_rows (see kernel_pool.cc).
#pragma once
#include <cstddef>

namespace moe {

using ChunkFn = void (*)(const void* ctx, size_t chunk, size_t chunks);

// Runs fn(ctx, i, chunks) once for every chunk i in [0, chunks), on the calling thread and up to
// threads-1 pool workers, each taking the next chunk not yet taken (so a worker that is slow to
// wake costs nothing: the others take its chunks); returns when all are done. Calls from several
// threads are serialised; one made from inside a chunk runs its chunks on that thread. Workers
// still spinning after an earlier call join at once; sleeping ones are woken only when `wake` (a
// wake-up takes tens of microseconds: not worth it for a short call).
void pool_run(size_t threads, size_t chunks, ChunkFn fn, const void* ctx, bool wake = true);

// The most threads pool_run uses.
constexpr size_t kMaxThreads = 64;

}  // namespace moe
