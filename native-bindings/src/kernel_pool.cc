// A fork-join pool for the kernels. A token's forward pass makes ~100 short calls (tens to hundreds
// of microseconds each), so waking workers through a condition variable every call costs as much
// as the work: instead a worker spins (with a pause) for a short while after each call, catching
// the next one within a fraction of a microsecond, and sleeps on the condition variable only when
// no call came for kWorkerSpin (so idle workers give the cores back: onnxruntime and the app share
// them). A short call does not wake sleeping workers at all (see pool_run). The caller likewise
// spins briefly for the last chunks to finish before it sleeps.
// Work is handed out in chunks from a shared counter: whoever is running takes the next one, so
// a worker that is still waking up (or descheduled) delays nobody.
#include "kernel_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moe {
namespace {

// Set while a thread runs a chunk: a pool_run from inside one (a matmul inside a parallel_for)
// runs its chunks on that thread instead of waiting for the pool it is part of.
thread_local bool tl_in_chunk = false;

// 500 us rather than 50: a decode step has gaps of 50-300 us between calls (the JS between
// tokens, the end of an expert phase), and a worker asleep at the next call joins it tens of
// microseconds late. 600m int8 at 2 threads: 0.25 -> 0.06 sleeps a layer, q/k/v calls p90 55 ->
// 32 us, dense layers 0.705 -> 0.621 ms a token (in-process A/B).
constexpr auto kWorkerSpin = std::chrono::microseconds(500);
constexpr auto kCallerSpin = std::chrono::microseconds(100);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until done() or `limit` has passed; true if done.
template <class Done>
bool spin_until(Done done, std::chrono::microseconds limit) {
  const auto start = std::chrono::steady_clock::now();
  for (unsigned i = 1;; i++) {
    if (done()) return true;
    cpu_relax();
    if ((i & 15) == 0 && std::chrono::steady_clock::now() - start > limit) return done();
  }
}

class Pool {
 public:
  void run(size_t threads, size_t chunks, ChunkFn fn, const void* ctx, bool wake) {
    std::lock_guard<std::mutex> call(call_mutex_);
    ensure(threads - 1);
    fn_ = fn;
    ctx_ = ctx;
    chunks_ = chunks;
    done_.store(0);
    const uint64_t seq = (state_.load() >> 8) + 1;
    // Chunks are claimed by counting `next_` down; its high half names the call, so a worker that
    // wakes late for an earlier call can claim nothing of this one.
    next_.store(uint64_t(uint32_t(seq)) << 32 | chunks);
    state_.store(seq << 8 | threads);  // wakes the spinning workers; `threads`: who takes part
    if (wake && sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lk(m_);
      wake_.notify_all();
    }
    work(uint32_t(seq));
    const auto finished = [&] { return done_.load(std::memory_order_acquire) == chunks; };
    if (spin_until(finished, kCallerSpin)) return;
    std::unique_lock<std::mutex> lk(m_);
    caller_waiting_.store(true);
    all_done_.wait(lk, finished);
    caller_waiting_.store(false);
  }

 private:
  void ensure(size_t count) {
    while (workers_.size() < count) {
      const size_t index = workers_.size() + 1;
      const uint64_t seq = state_.load() >> 8;  // the calls before this one are not its business
      workers_.emplace_back([this, index, seq] { loop(index, seq); });
      workers_.back().detach();  // the pool lives as long as the process
    }
  }

  // Takes and runs chunks of call `seq` until none is left.
  void work(uint32_t seq) {
    uint64_t v = next_.load();
    for (;;) {
      if (uint32_t(v >> 32) != seq || uint32_t(v) == 0) return;
      if (!next_.compare_exchange_weak(v, v - 1)) continue;
      // Claimed: the caller waits for this chunk, so the call's fields stay as they are.
      const size_t chunks = chunks_;
      tl_in_chunk = true;
      fn_(ctx_, size_t(uint32_t(v)) - 1, chunks);
      tl_in_chunk = false;
      if (done_.fetch_add(1) + 1 == chunks && caller_waiting_.load()) {
        std::lock_guard<std::mutex> lk(m_);
        all_done_.notify_one();
      }
      v = next_.load();
    }
  }

  void loop(size_t index, uint64_t seen) {
    for (;;) {
      uint64_t st = 0;
      const auto changed = [&] {
        st = state_.load(std::memory_order_acquire);
        return (st >> 8) != seen;
      };
      if (!spin_until(changed, kWorkerSpin)) {
        std::unique_lock<std::mutex> lk(m_);
        sleepers_.fetch_add(1);  // the caller reads this after publishing (both sequentially consistent)
        wake_.wait(lk, changed);
        sleepers_.fetch_sub(1);
      }
      seen = st >> 8;
      if (index < (st & 0xff)) work(uint32_t(seen));
    }
  }

  std::mutex call_mutex_, m_;
  std::condition_variable wake_, all_done_;
  std::vector<std::thread> workers_;
  ChunkFn fn_ = nullptr;
  const void* ctx_ = nullptr;
  size_t chunks_ = 0;
  std::atomic<uint64_t> state_{0};  // call sequence << 8 | threads taking part
  std::atomic<uint64_t> next_{0};   // uint32(call sequence) << 32 | chunks not yet claimed
  std::atomic<size_t> done_{0};     // chunks finished in this call
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_waiting_{false};
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: worker threads may outlive static teardown
  return *p;
}

}  // namespace

void pool_run(size_t threads, size_t chunks, ChunkFn fn, const void* ctx, bool wake) {
  if (threads > kMaxThreads) threads = kMaxThreads;
  if (chunks > 0xffffffffu) chunks = 0xffffffffu;
  if (threads <= 1 || chunks <= 1 || tl_in_chunk) {
    for (size_t i = 0; i < chunks; i++) fn(ctx, i, chunks);
    return;
  }
  pool().run(threads, chunks, fn, ctx, wake);
}

}  // namespace moe
