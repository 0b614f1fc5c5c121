#include "expert_kernels.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernel_pool.h"
#include "kernels_isa.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace moe {

// ---------------------------------------------------------------- instruction-set level ----------

namespace {

struct IsaChoice {
  const KernelTable* table;  // always runnable on this CPU
  std::string error;         // set when MOE_RUN_KERNEL_ISA asked for something else
};

struct CpuLevels {
  const KernelTable* avx2 = nullptr;
  const KernelTable* vnni = nullptr;
  const KernelTable* avx512 = nullptr;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The CPU's features from CPUID, and whether the OS saves the vector registers they use (XCR0).
// (Not __builtin_cpu_supports: clang's lacks "f16c" and "avxvnni".)
struct X86Features {
  bool avx2 = false, avxvnni = false, avx512vnni_vl = false, avx512 = false;
};

X86Features x86_features() {
  X86Features f;
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7 || !__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_saved = (xcr0_lo & 0x6) == 0x6, zmm_saved = (xcr0_lo & 0xe6) == 0xe6;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31),
             avx512vnni = c & (1u << 11);
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avx2 = ymm_saved && avx2 && fma && f16c;
  f.avxvnni = f.avx2 && (a1 & (1u << 4));
  f.avx512vnni_vl = f.avx2 && zmm_saved && avx512f && avx512vl && avx512vnni;
  f.avx512 = f.avx512vnni_vl && avx512bw && avx512dq;
  return f;
}
#endif

CpuLevels cpu_levels() {
  CpuLevels l;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const X86Features f = x86_features();
  if (f.avx2) l.avx2 = kernels_avx2();
  // AVX-VNNI first (VEX, no AVX-512 state needed), else AVX512-VNNI with 256-bit forms (VL).
  if (l.avx2 && f.avxvnni) l.vnni = kernels_vnni_vex();
  if (l.avx2 && !l.vnni && f.avx512vnni_vl) l.vnni = kernels_vnni_evex();
  if (l.avx2 && f.avx512) l.avx512 = kernels_avx512();
#endif
  return l;
}

std::string list(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

IsaChoice choose_isa() {
  const CpuLevels l = cpu_levels();
  const KernelTable* best = l.avx512 ? l.avx512 : l.vnni ? l.vnni : l.avx2 ? l.avx2 : kernels_scalar();
  const char* env = std::getenv("MOE_RUN_KERNEL_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") return {best, ""};
  const KernelTable* t = want == "scalar" ? kernels_scalar() : want == "avx2" ? l.avx2 : want == "vnni" ? l.vnni : want == "avx512" ? l.avx512 : nullptr;
  if (t) return {t, ""};
  const std::string has = list(kernel_isas());
  if (want != "scalar" && want != "avx2" && want != "vnni" && want != "avx512")
    return {best, "MOE_RUN_KERNEL_ISA=" + want + " is not a kernel level (use scalar, avx2, vnni, avx512 or auto); this CPU runs: " + has};
  const char* needs = want == "avx2"   ? "AVX2, FMA and F16C"
                      : want == "vnni" ? "AVX2, FMA, F16C and AVX-VNNI or AVX512-VNNI with AVX512VL"
                                       : "AVX2, FMA, F16C and AVX512F, BW, DQ, VL and VNNI";
  return {best, "MOE_RUN_KERNEL_ISA=" + want + ": this CPU cannot run the " + want + " kernels (they need " + needs + "); it runs: " + has};
}

const IsaChoice& isa() {
  static const IsaChoice choice = choose_isa();
  return choice;
}

}  // namespace

const KernelTable* active_kernels() { return isa().table; }

const char* kernel_isa() { return isa().table->name; }

std::vector<std::string> kernel_isas() {
  const CpuLevels l = cpu_levels();
  std::vector<std::string> out{"scalar"};
  if (l.avx2) out.push_back("avx2");
  if (l.vnni) out.push_back("vnni");
  if (l.avx512) out.push_back("avx512");
  return out;
}

bool kernel_isa_check(std::string* err) {
  if (isa().error.empty()) return true;
  if (err) *err = isa().error;
  return false;
}

// ---------------------------------------------------------------- matmuls ------------------------

namespace {

// Below this many multiply-adds a call stays on the calling thread: handing work to the pool costs
// more. Workers still spinning after a recent call take part within a microsecond; waking sleeping
// ones costs the caller a system call (~5-10 us here) and them tens of microseconds: done for a
// call from kWakeMacs on, or for any parallel call within kStream of the previous one (a stream of
// calls, such as a token's layers: after one wake-up the workers stay awake between the calls).
constexpr size_t kParallelMacs = size_t(1) << 17;
constexpr size_t kWakeMacs = size_t(1) << 21;
constexpr auto kStream = std::chrono::milliseconds(1);
// Chunks per thread: finer ones even out a thread that starts late or runs slower.
constexpr size_t kChunksPerThread = 3;

inline bool quantized(Enc enc) { return enc_quantized(enc); }
// Q4 and MX4 take their activations in Q4's block order (evens, then odds), with block sums.
inline bool split_order(Enc enc) { return enc == Enc::Q4 || enc == Enc::MX4; }

struct Batch {
  const KernelTable* k;
  const MatmulJob* jobs;
  const QuantRows* xq;  // per job (Q8/Q4/MX4)
  size_t n;
  uint64_t total;  // sum of rows * cost_per_row
};

inline uint64_t row_cost(const MatmulJob& j) { return uint64_t(j.cols) * j.T; }

// Rows [r0, r1) of one job, from its quantized input (Q8/Q4/MX4 and the GGUF blocks) or its floats.
inline void run_rows(const KernelTable* k, const MatmulJob& j, const QuantRows& xq, size_t r0, size_t r1) {
  if (quantized(j.enc)) k->rows_quant(j.enc, j.w, j.rows, j.cols, xq, j.T, j.y, r0, r1);
  else k->rows_float(j.enc, j.w, j.rows, j.cols, j.x, j.T, j.y, r0, r1);
}

// Bytes quantize_input takes for a quantized job's input, its 16-byte alignment included.
inline size_t quant_input_bytes(const MatmulJob& j) { return j.T * j.cols + 2 * 4 * (j.T * j.cols / kBlock) + 16; }

// Quantizes job's input x [T, cols] at the next 16-byte boundary from `at` (fp32 block scales d,
// block sums s, then the int8 values q) and moves `at` past it.
QuantRows quantize_input(const KernelTable* k, const MatmulJob& j, uint8_t*& at) {
  const size_t nbt = j.T * j.cols / kBlock;
  at += (16 - reinterpret_cast<uintptr_t>(at) % 16) % 16;
  float* d = reinterpret_cast<float*>(at);
  int32_t* s = reinterpret_cast<int32_t*>(d + nbt);
  int8_t* q = reinterpret_cast<int8_t*>(s + nbt);
  at = reinterpret_cast<uint8_t*>(q + j.T * j.cols);
  k->quantize(split_order(j.enc), j.x, j.T, j.cols, q, d, s);
  return QuantRows{q, d, s};
}

// Chunk `part` of `parts` takes the rows whose start lies in its share of the total cost (row
// boundaries rounded to multiples of 4, the kernels' row tiles).
void run_part(const void* ctx, size_t part, size_t parts) {
  const Batch& b = *static_cast<const Batch*>(ctx);
  const uint64_t lo = b.total * part / parts, hi = b.total * (part + 1) / parts;
  uint64_t start = 0;
  for (size_t i = 0; i < b.n; i++) {
    const MatmulJob& j = b.jobs[i];
    const uint64_t c = row_cost(j), end = start + c * j.rows;
    if (c && end > lo && start < hi) {
      const auto first = [&](uint64_t at) {
        const uint64_t r = at <= start ? 0 : (at - start + c - 1) / c;
        return size_t(std::min<uint64_t>(j.rows, (r + 3) / 4 * 4));
      };
      const size_t r0 = first(lo), r1 = first(hi);
      if (r0 < r1) run_rows(b.k, j, b.xq[i], r0, r1);
    }
    start = end;
  }
}

// Per-thread scratch for quantized activations (the calling thread quantizes; workers only read).
thread_local std::vector<uint8_t> scratch;
// Float activations copied to a 64-byte boundary (the calling thread copies; workers only read):
// the float kernels load x in 32-byte vectors once per row, and a vector split across two cache
// lines costs. An f16 expert from memory, 1 thread: 1.599 ms with x 16 bytes off a line (what a
// JS Float32Array or std::vector gets), 1.539 aligned. Small inputs only (decode, short chunks).
thread_local std::vector<float> aligned_x;
constexpr size_t kAlignCopyBytes = size_t(256) << 10;
inline bool line_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

// The last job before jobs[i] that reads the same input [T, cols] and passes `also` (its prepared
// input, a copy or a quantization, serves jobs[i] too); i where there is none.
template <class Also>
size_t earlier_same_input(const MatmulJob* jobs, size_t i, Also also) {
  size_t same = i;
  for (size_t p = 0; p < i; p++)
    if (jobs[p].x == jobs[i].x && jobs[p].T == jobs[i].T && jobs[p].cols == jobs[i].cols && also(jobs[p])) same = p;
  return same;
}

}  // namespace

void matmul_rows_batch(const MatmulJob* jobs, size_t n, int threads) {
  if (n == 0) return;
  const KernelTable* k = isa().table;
  // Quantize each distinct activation input once (gate and up share theirs).
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++)
    if (quantized(jobs[i].enc)) bytes += quant_input_bytes(jobs[i]);
  if (scratch.size() < bytes) scratch.resize(bytes);
  std::vector<QuantRows> xq(n, QuantRows{nullptr, nullptr, nullptr});
  uint8_t* at = scratch.data();
  // Float jobs whose x is not on a cache line read a copy that is (the same values: same results).
  const auto copies_x = [](const MatmulJob& j) { return !quantized(j.enc) && !line_aligned(j.x) && j.T * j.cols * 4 <= kAlignCopyBytes; };
  size_t floats = 0;
  for (size_t i = 0; i < n; i++)
    if (copies_x(jobs[i])) floats += jobs[i].T * jobs[i].cols + 16;
  std::vector<MatmulJob> local;  // the jobs with their x replaced, only when some job copies
  if (floats) {
    local.assign(jobs, jobs + n);
    if (aligned_x.size() < floats) aligned_x.resize(floats);
    float* fat = aligned_x.data();
    for (size_t i = 0; i < n; i++) {
      const MatmulJob& j = jobs[i];
      if (!copies_x(j)) continue;
      // An earlier float job on the same input was copied already (it satisfies copies_x too).
      const size_t same = earlier_same_input(jobs, i, [&](const MatmulJob& p) { return !quantized(p.enc); });
      if (same != i) {
        local[i].x = local[same].x;
        continue;
      }
      fat += (64 - reinterpret_cast<uintptr_t>(fat) % 64) % 64 / sizeof(float);
      std::memcpy(fat, j.x, j.T * j.cols * 4);
      local[i].x = fat;
      fat += j.T * j.cols;
    }
    jobs = local.data();
  }
  Batch b{k, jobs, xq.data(), n, 0};
  for (size_t i = 0; i < n; i++) {
    const MatmulJob& j = jobs[i];
    b.total += row_cost(j) * j.rows;
    if (!quantized(j.enc)) continue;
    const size_t same = earlier_same_input(jobs, i, [&](const MatmulJob& p) { return quantized(p.enc) && split_order(p.enc) == split_order(j.enc); });
    if (same != i) {
      xq[i] = xq[same];
      continue;
    }
    xq[i] = quantize_input(k, j, at);
  }
  const size_t use = b.total < kParallelMacs || threads < 1 ? 1 : std::min(size_t(threads), kMaxThreads);
  if (use == 1) {
    run_part(&b, 0, 1);
    return;
  }
  static std::atomic<int64_t> last_call{0};  // steady_clock ticks at the end of the last parallel call
  const auto now = [] { return int64_t(std::chrono::steady_clock::now().time_since_epoch().count()); };
  const bool wake = b.total >= kWakeMacs || now() - last_call.load(std::memory_order_relaxed) < int64_t(std::chrono::steady_clock::duration(kStream).count());
  pool_run(use, use * kChunksPerThread, run_part, &b, wake);
  last_call.store(now(), std::memory_order_relaxed);
}

void matmul_rows(Enc enc, const uint8_t* w, size_t rows, size_t cols, const float* x, size_t T, float* y, int threads) {
  const MatmulJob job{enc, w, rows, cols, x, T, y};
  matmul_rows_batch(&job, 1, threads);
}

namespace {
void split_for(int threads, size_t n, const std::function<void(size_t, size_t)>& fn, bool wake) {
  size_t parts = threads < 1 ? 1 : std::min(size_t(threads), kMaxThreads);
  if (parts > n) parts = n;
  if (parts <= 1) {
    if (n) fn(0, n);
    return;
  }
  struct Ctx {
    size_t n;
    const std::function<void(size_t, size_t)>* fn;
  } ctx{n, &fn};
  const auto chunk = [](const void* p, size_t part, size_t parts) {
    const Ctx& c = *static_cast<const Ctx*>(p);
    const size_t begin = c.n * part / parts, end = c.n * (part + 1) / parts;
    if (begin < end) (*c.fn)(begin, end);
  };
  pool_run(parts, parts, chunk, &ctx, wake);
}
}  // namespace

void parallel_for(int threads, size_t n, const std::function<void(size_t, size_t)>& fn) { split_for(threads, n, fn, true); }

size_t matrix_bytes(Enc enc, size_t rows, size_t cols) {
  size_t n = rows * cols;
  switch (enc) {
    case Enc::F32: return n * 4;
    case Enc::F16: return n * 2;
    case Enc::Q8: return (n / kBlock) * 4 + n;
    case Enc::Q4: return (n / kBlock) * 4 + n / 2;
    case Enc::MX4: return n / kBlock + n / 2;
    case Enc::Q4K: return n / kQK * kQ4KBytes;
    case Enc::Q5K: return n / kQK * kQ5KBytes;
    case Enc::Q6K: return n / kQK * kQ6KBytes;
    case Enc::Q2K: return n / kQK * kQ2KBytes;
    case Enc::Q3K: return n / kQK * kQ3KBytes;
    case Enc::Q41: return n / kBlock * kQ41Bytes;
    case Enc::Q50: return n / kBlock * kQ50Bytes;
    case Enc::Q51: return n / kBlock * kQ51Bytes;
  }
  return 0;
}

size_t expert_record_bytes(const RecordEncs& enc, size_t H, size_t F, bool bias) {
  return matrix_bytes(enc.gate, F, H) + matrix_bytes(enc.up, F, H) + matrix_bytes(enc.down, H, F) + (bias ? (2 * F + H) * 4 : 0);
}

namespace {

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// gpt-oss's clamped SwiGLU of one pre-activation pair (biases already added).
inline float clamped_swiglu(float g, float u, float alpha, float limit) {
  g = std::fmin(g, limit);
  u = std::fmax(std::fmin(u, limit), -limit);
  return (u + 1.f) * (g / (1.f + std::exp(-alpha * g)));
}

// One matrix multiply whose row chunks several threads take (experts_owned): its owner from the
// front, a thread with nothing of its own left from the back. The owner prepares the input
// (quantized, or copied to a cache line) into `input` once, a copy of the chunks' own: the owner's
// activations are gone when a late chunk runs. Every chunk is the same kernel call
// on kShareRows rows (whole row tiles), whoever runs it, so the bits never depend on who did.
constexpr size_t kShareRows = 32;
struct SharedMatmul {
  std::atomic<uint64_t> range{0};  // first chunk not taken << 32 | end of the chunks not taken
  std::atomic<bool> published{false};
  MatmulJob job{};
  QuantRows xq{nullptr, nullptr, nullptr};
  std::vector<uint8_t> input;  // [T, cols]: q, d, s (quantized weights) or fp32
};

void share(SharedMatmul& s, const KernelTable* k, const MatmulJob& job) {
  s.job = job;
  const size_t n = job.T * job.cols;
  if (quantized(job.enc)) {
    s.input.resize(quant_input_bytes(job));
    uint8_t* at = s.input.data();
    s.xq = quantize_input(k, job, at);
  } else {
    s.input.resize(4 * n + 64);
    float* f = reinterpret_cast<float*>(s.input.data() + (64 - reinterpret_cast<uintptr_t>(s.input.data()) % 64) % 64);
    std::memcpy(f, job.x, 4 * n);
    s.job.x = f;
  }
  s.range.store((job.rows + kShareRows - 1) / kShareRows);
  s.published.store(true, std::memory_order_release);
}

// Takes one chunk (the first left, or the last) and runs it; false when none was left.
bool run_shared_chunk(SharedMatmul& s, const KernelTable* k, bool last) {
  uint64_t v = s.range.load();
  for (;;) {
    const uint32_t first = uint32_t(v >> 32), end = uint32_t(v);
    if (first >= end) return false;
    const uint64_t rest = last ? (v - 1) : (v + (uint64_t(1) << 32));
    if (!s.range.compare_exchange_weak(v, rest)) continue;
    const size_t c = last ? end - 1 : first, r0 = c * kShareRows;
    run_rows(k, s.job, s.xq, r0, std::min(s.job.rows, r0 + kShareRows));
    return true;
  }
}

// n experts (no biases, as many tokens each), n / p whole ones to each of p threads: a thread
// streams each of its records from the first byte to the last (the hardware prefetcher keeps one
// long stream per core). The threads rarely finish together (600m int8 decode, 2 threads: 30 us
// apart on a 445 us layer), so each down projection is shared: a thread done with its own work
// takes the others' last row chunks until none is left. It waits only for experts whose owner has
// started (a part not started yet may be this thread's to run next).
void experts_owned(const RecordEncs& enc, const ExpertCall* calls, size_t n, size_t H, size_t F, size_t p, const ExpertOptions& o) {
  const KernelTable* k = isa().table;
  const size_t per = n / p, down_at = matrix_bytes(enc.gate, F, H) + matrix_bytes(enc.up, F, H);
  std::vector<SharedMatmul> downs(n);
  std::vector<std::atomic<int>> started(p);  // parts begun (their experts will all be shared)
  for (auto& a : started) a.store(0);
  parallel_for(int(p), p, [&](size_t part, size_t) {
    started[part].store(1);
    for (size_t e = part * per; e < (part + 1) * per; e++) {
      const ExpertCall& c = calls[e];
      std::vector<float> g(c.T * F), u(c.T * F);  // [T, F] each
      const MatmulJob gu[2] = {{enc.gate, c.record, F, H, c.x, c.T, g.data()},
                               {enc.up, c.record + matrix_bytes(enc.gate, F, H), F, H, c.x, c.T, u.data()}};
      matmul_rows_batch(gu, 2, 1);
      if (o.act == Activation::Silu) k->silu_mul(g.data(), u.data(), g.size());
      else
        for (size_t i = 0; i < g.size(); i++) g[i] = clamped_swiglu(g[i], u[i], o.alpha, o.limit);
      share(downs[e], k, {enc.down, c.record + down_at, H, F, g.data(), c.T, c.out});
      while (run_shared_chunk(downs[e], k, false)) {
      }
    }
    for (;;) {
      bool took = false, waiting = false;
      for (size_t e = 0; e < n; e++) {
        if (downs[e].published.load(std::memory_order_acquire)) took = run_shared_chunk(downs[e], k, true) || took;
        else waiting = waiting || started[e / per].load();
      }
      if (!took && !waiting) return;
      if (!took) spin_pause();
    }
  });
}

}  // namespace

void experts_forward(const RecordEncs& enc, const ExpertCall* calls, size_t n, size_t H, size_t F, int threads, const ExpertOptions& o) {
  if (n == 0) return;
  // Experts with as many tokens each, at least one per thread: whole experts to each thread, so a
  // thread streams a record from its first byte to its last with no hand-off on the way (the
  // hardware prefetcher keeps one long stream per core). Two int8 / f16 decode experts from memory
  // at 2 threads, in-process A/B: 1.08-1.15x two expert_forward calls that split each matrix.
  // The n % threads left over split across all threads below, as do small experts (the batches
  // keep work under kParallelMacs on this thread). Bits: an expert's output does not depend on the
  // thread count.
  const size_t p = threads < 1 ? 1 : std::min(size_t(threads), kMaxThreads);
  bool same_T = true;
  for (size_t k = 1; k < n; k++) same_T = same_T && calls[k].T == calls[0].T;
  if (p > 1 && n >= p && same_T && 3 * H * F * calls[0].T * n >= kParallelMacs) {
    const size_t whole = n / p * p;
    if (o.bias) {  // the down bias is added after the whole projection: no sharing of its rows
      parallel_for(int(p), whole, [&](size_t begin, size_t end) {
        for (size_t k = begin; k < end; k++) experts_forward(enc, calls + k, 1, H, F, 1, o);
      });
    } else {
      experts_owned(enc, calls, whole, H, F, p, o);
    }
    calls += whole;
    n -= whole;
    if (n == 0) return;
  }
  // One batch for every expert's gate and up, one for every down: two hand-offs to the pool per
  // call, not three per expert, and each thread streams long runs of rows. A row's sum never
  // depends on the batch (run_part splits rows, the kernels add each row in a fixed order), so
  // each expert's output is the one expert_forward gives it alone.
  std::vector<std::vector<float>> g(n), u(n);  // [T_k, F] each
  std::vector<MatmulJob> jobs;
  jobs.reserve(2 * n);
  size_t elems = 0;  // sum of T_k * F: the activation's work
  for (size_t k = 0; k < n; k++) {
    const ExpertCall& c = calls[k];
    g[k].resize(c.T * F);
    u[k].resize(c.T * F);
    elems += c.T * F;
    const uint8_t* up = c.record + matrix_bytes(enc.gate, F, H);
    // Both jobs of an input quantize it once between them when their encodings share an activation
    // form (and experts given the same x share it too).
    jobs.push_back({enc.gate, c.record, F, H, c.x, c.T, g[k].data()});
    jobs.push_back({enc.up, up, F, H, c.x, c.T, u[k].data()});
  }
  matmul_rows_batch(jobs.data(), jobs.size(), threads);
  const size_t down_at = matrix_bytes(enc.gate, F, H) + matrix_bytes(enc.up, F, H);
  // Biases: fp32 gate [F], up [F], down [H] after the matrices (possibly unaligned: copied).
  std::vector<float> bias(o.bias ? n * (2 * F + H) : 0);  // [n, 2F + H]
  if (o.bias)
    for (size_t k = 0; k < n; k++) std::memcpy(bias.data() + k * (2 * F + H), calls[k].record + down_at + matrix_bytes(enc.down, H, F), (2 * F + H) * 4);
  // Element i of the concatenated [T_k, F] blocks: expert k, column (i - start_k) % F.
  std::vector<size_t> starts(n + 1, 0);
  for (size_t k = 0; k < n; k++) starts[k + 1] = starts[k] + calls[k].T * F;
  const float alpha = o.alpha, limit = o.limit;
  const auto silu_mul = isa().table->silu_mul;
  const bool plain = !o.bias && o.act == Activation::Silu, clamped = o.act == Activation::ClampedSwiglu, has_bias = o.bias;
  const auto act = [&](size_t begin, size_t end) {
    size_t k = size_t(std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin()) - 1;
    for (size_t i = begin; i < end;) {
      while (i >= starts[k + 1]) k++;
      float* gp = g[k].data();
      const float* up_p = u[k].data();
      const float* bg = bias.data() + k * (2 * F + H);
      const float* bu = bg + F;
      const size_t stop = std::min(end, starts[k + 1]), base = starts[k];
      if (plain) {
        silu_mul(gp + (i - base), up_p + (i - base), stop - i);
        i = stop;
        continue;
      }
      for (size_t f = (i - base) % F; i < stop; i++, f = f + 1 == F ? 0 : f + 1) {
        float gi = gp[i - base], ui = up_p[i - base];
        if (has_bias) {
          gi += bg[f];
          ui += bu[f];
        }
        if (clamped) {
          gp[i - base] = clamped_swiglu(gi, ui, alpha, limit);
        } else {
          gp[i - base] = gi / (1.f + std::exp(-gi)) * ui;
        }
      }
    }
  };
  // Shared with the workers that are still awake after gate/up (none is woken for this).
  if (elems >= 1024) split_for(threads, elems, act, false);
  else act(0, elems);
  jobs.clear();
  for (size_t k = 0; k < n; k++) jobs.push_back({enc.down, calls[k].record + down_at, H, F, g[k].data(), calls[k].T, calls[k].out});
  matmul_rows_batch(jobs.data(), jobs.size(), threads);
  if (o.bias)
    for (size_t k = 0; k < n; k++) {
      const float* bd = bias.data() + k * (2 * F + H) + 2 * F;
      for (size_t t = 0; t < calls[k].T; t++)
        for (size_t h = 0; h < H; h++) calls[k].out[t * H + h] += bd[h];
    }
}

void expert_forward(const RecordEncs& enc, const uint8_t* record, size_t H, size_t F, const float* x, size_t T, float* out, int threads, const ExpertOptions& o) {
  const ExpertCall c{record, x, T, out};
  experts_forward(enc, &c, 1, H, F, threads, o);
}

}  // namespace moe
