#include "expert_kernels.h"

#include <immintrin.h>

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moe {

// A small fork-join pool whose idle threads sleep (no spinning: onnxruntime shares the cores).
// Calls are serialised; the calling thread takes a share of the work too.
class Pool {
 public:
  void run(int threads, size_t n, const std::function<void(size_t, size_t)>& fn) {
    std::lock_guard<std::mutex> call(call_mutex_);
    ensure(threads - 1);
    const size_t parts = size_t(threads);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      parts_ = parts;
      pending_ = parts - 1;
      generation_++;
    }
    cv_.notify_all();
    fn(0, n / parts);  // share 0
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [&] { return pending_ == 0; });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      generation_++;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void ensure(int count) {
    while (int(workers_.size()) < count) {
      const size_t index = workers_.size() + 1;
      workers_.emplace_back([this, index] { loop(index); });
    }
  }
  void loop(size_t index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(size_t, size_t)>* fn;
      size_t begin, end;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index >= parts_) continue;  // not needed this round
        fn = fn_;
        begin = n_ * index / parts_;
        end = n_ * (index + 1) / parts_;
      }
      (*fn)(begin, end);
      std::lock_guard<std::mutex> lk(m_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
  std::mutex call_mutex_, m_;
  std::condition_variable cv_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t n_ = 0, parts_ = 1, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

static Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: worker threads may outlive static teardown
  return *p;
}

// Below this many multiply-adds a call stays on one thread: waking others costs more.
constexpr size_t kParallelMacs = size_t(1) << 20;

static inline float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; exp--; }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xff, mant = x & 0x7fffff;
  if (exp == 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  int e = int(exp) - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    int shift = 14 - e;
    uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return sign | half;
  }
  uint32_t half = (uint32_t(e) << 10) | (mant >> 13), rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
  return sign | half;
}

size_t matrix_bytes(Enc enc, size_t rows, size_t cols) {
  size_t n = rows * cols;
  switch (enc) {
    case Enc::F32: return n * 4;
    case Enc::F16: return n * 2;
    case Enc::Q8: return (n / kBlock) * 4 + n;
    case Enc::Q4: return (n / kBlock) * 4 + n / 2;
  }
  return 0;
}

// Decodes row r of W into buf[cols] (fp32).
static inline void decode_row(Enc enc, const uint8_t* w, size_t rows, size_t cols, size_t r, float* buf) {
  switch (enc) {
    case Enc::F32:
      std::memcpy(buf, w + r * cols * 4, cols * 4);
      return;
    case Enc::F16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(w) + r * cols;
      size_t c = 0;
#if defined(__F16C__)
      for (; c + 8 <= cols; c += 8) _mm256_storeu_ps(buf + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c))));
#endif
      for (; c < cols; c++) buf[c] = half_to_float(p[c]);
      return;
    }
    case Enc::Q8: {
      const float* scales = reinterpret_cast<const float*>(w) + r * (cols / kBlock);
      const int8_t* q = reinterpret_cast<const int8_t*>(w + rows * (cols / kBlock) * 4) + r * cols;
      for (size_t b = 0; b < cols / kBlock; b++) {
        const float d = scales[b];
        for (int i = 0; i < kBlock; i++) buf[b * kBlock + i] = d * float(q[b * kBlock + i]);
      }
      return;
    }
    case Enc::Q4: {
      const float* scales = reinterpret_cast<const float*>(w) + r * (cols / kBlock);
      const uint8_t* q = w + rows * (cols / kBlock) * 4 + r * cols / 2;
      for (size_t b = 0; b < cols / kBlock; b++) {
        const float d = scales[b];
        const uint8_t* qb = q + b * kBlock / 2;
        float* o = buf + b * kBlock;
        for (int i = 0; i < kBlock / 2; i++) {
          o[2 * i] = d * float(int(qb[i] & 15) - 8);
          o[2 * i + 1] = d * float(int(qb[i] >> 4) - 8);
        }
      }
      return;
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
// Sum over one block of 32 int8 values times x (8 lanes), not yet scaled.
static inline __m256 block_q8(const int8_t* q, const float* x) {
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)))), _mm256_loadu_ps(x));
  for (int k = 8; k < kBlock; k += 8)
    v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k)))), _mm256_loadu_ps(x + k), v);
  return v;
}
#endif

// dot(row r of W, x) without materialising the row: the decode-bound path for one token.
static inline float dot_row(Enc enc, const uint8_t* w, size_t rows, size_t cols, size_t r, const float* x) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  switch (enc) {
    case Enc::F32: {
      const float* p = reinterpret_cast<const float*>(w) + r * cols;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;
      size_t c = 0;
      for (; c + 16 <= cols; c += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p + c), _mm256_loadu_ps(x + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + c + 8), _mm256_loadu_ps(x + c + 8), a1);
      }
      float acc = hsum(_mm256_add_ps(a0, a1));
      for (; c < cols; c++) acc += p[c] * x[c];
      return acc;
    }
    case Enc::F16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(w) + r * cols;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;
      size_t c = 0;
      for (; c + 16 <= cols; c += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c))), _mm256_loadu_ps(x + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c + 8))), _mm256_loadu_ps(x + c + 8), a1);
      }
      float acc = hsum(_mm256_add_ps(a0, a1));
      for (; c < cols; c++) acc += half_to_float(p[c]) * x[c];
      return acc;
    }
    case Enc::Q8: {
      const float* scales = reinterpret_cast<const float*>(w) + r * (cols / kBlock);
      const int8_t* q = reinterpret_cast<const int8_t*>(w + rows * (cols / kBlock) * 4) + r * cols;
      __m256 acc = _mm256_setzero_ps();
      for (size_t b = 0; b < cols / kBlock; b++)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scales[b]), block_q8(q + b * kBlock, x + b * kBlock), acc);
      return hsum(acc);
    }
    case Enc::Q4: {
      const float* scales = reinterpret_cast<const float*>(w) + r * (cols / kBlock);
      const uint8_t* q = w + rows * (cols / kBlock) * 4 + r * cols / 2;
      const __m128i mask = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
      alignas(32) int8_t unpacked[kBlock];
      __m256 acc = _mm256_setzero_ps();
      for (size_t b = 0; b < cols / kBlock; b++) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * kBlock / 2));
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
        // Element 2i is byte i's low nibble, 2i+1 its high nibble: interleave back into order.
        _mm_store_si128(reinterpret_cast<__m128i*>(unpacked), _mm_unpacklo_epi8(lo, hi));
        _mm_store_si128(reinterpret_cast<__m128i*>(unpacked + 16), _mm_unpackhi_epi8(lo, hi));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scales[b]), block_q8(unpacked, x + b * kBlock), acc);
      }
      return hsum(acc);
    }
  }
  return 0.f;
#else
  std::vector<float> buf(cols);
  decode_row(enc, w, rows, cols, r, buf.data());
  float acc = 0.f;
  for (size_t c = 0; c < cols; c++) acc += buf[c] * x[c];
  return acc;
#endif
}

void matmul_rows(Enc enc, const uint8_t* w, size_t rows, size_t cols, const float* x, size_t T, float* y, int threads) {
  // Rows split across threads; each row is decoded once into L1 and dotted with all T tokens,
  // so prefill reads the weights once per chunk.
  // Few tokens: fused decode+dot per token (weights are read T times, but from cache for T<4).
  if (T < 4) {
    auto fused = [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; r++)
        for (size_t t = 0; t < T; t++) y[t * rows + r] = dot_row(enc, w, rows, cols, r, x + t * cols);
    };
    if (threads <= 1 || rows * cols * T < kParallelMacs) fused(0, rows);
    else pool().run(threads, rows, fused);
    return;
  }
  auto work = [&](size_t begin, size_t end) {
    std::vector<float> buf(cols);
    for (size_t r = begin; r < end; r++) {
      decode_row(enc, w, rows, cols, r, buf.data());
      size_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
      // Four tokens at a time: each weight load feeds four FMAs.
      for (; t + 4 <= T && cols % 8 == 0; t += 4) {
        const float* x0 = x + t * cols;
        const float* x1 = x0 + cols;
        const float* x2 = x1 + cols;
        const float* x3 = x2 + cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t c = 0; c < cols; c += 8) {
          const __m256 wv = _mm256_loadu_ps(buf.data() + c);
          a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + c), a0);
          a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + c), a1);
          a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + c), a2);
          a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + c), a3);
        }
        y[t * rows + r] = hsum(a0);
        y[(t + 1) * rows + r] = hsum(a1);
        y[(t + 2) * rows + r] = hsum(a2);
        y[(t + 3) * rows + r] = hsum(a3);
      }
#endif
      for (; t < T; t++) {
        const float* xt = x + t * cols;
        float acc = 0.f;
        for (size_t c = 0; c < cols; c++) acc += buf[c] * xt[c];
        y[t * rows + r] = acc;
      }
    }
  };
  if (threads <= 1 || rows * cols * T < kParallelMacs) {
    work(0, rows);
    return;
  }
  pool().run(threads, rows, work);
}

void expert_forward(Enc enc, const uint8_t* record, size_t H, size_t F, const float* x, size_t T, float* out, int threads) {
  const size_t gate_bytes = matrix_bytes(enc, F, H);
  const uint8_t* gate = record;
  const uint8_t* up = record + gate_bytes;
  const uint8_t* down = up + gate_bytes;
  std::vector<float> g(T * F), u(T * F);  // [T, F]
  matmul_rows(enc, gate, F, H, x, T, g.data(), threads);
  matmul_rows(enc, up, F, H, x, T, u.data(), threads);
  for (size_t i = 0; i < T * F; i++) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  matmul_rows(enc, down, H, F, g.data(), T, out, threads);
}

void encode_matrix(Enc enc, const float* src, size_t rows, size_t cols, uint8_t* dst) {
  const size_t n = rows * cols;
  switch (enc) {
    case Enc::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case Enc::F16: {
      uint16_t* o = reinterpret_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; i++) o[i] = float_to_half(src[i]);
      return;
    }
    case Enc::Q8: {
      float* scales = reinterpret_cast<float*>(dst);
      int8_t* q = reinterpret_cast<int8_t*>(dst + (n / kBlock) * 4);
      for (size_t b = 0; b < n / kBlock; b++) {
        float amax = 0.f;
        for (int i = 0; i < kBlock; i++) amax = std::fmax(amax, std::fabs(src[b * kBlock + i]));
        const float d = amax / 127.f, id = d ? 1.f / d : 0.f;
        scales[b] = d;
        for (int i = 0; i < kBlock; i++) q[b * kBlock + i] = int8_t(std::lrintf(src[b * kBlock + i] * id));
      }
      return;
    }
    case Enc::Q4: {
      float* scales = reinterpret_cast<float*>(dst);
      uint8_t* q = dst + (n / kBlock) * 4;
      for (size_t b = 0; b < n / kBlock; b++) {
        // The value of largest magnitude maps to -8, so the whole signed range is used.
        float m = 0.f;
        for (int i = 0; i < kBlock; i++)
          if (std::fabs(src[b * kBlock + i]) > std::fabs(m)) m = src[b * kBlock + i];
        const float d = m / -8.f, id = d ? 1.f / d : 0.f;
        scales[b] = d;
        for (int i = 0; i < kBlock / 2; i++) {
          int lo = int(std::lrintf(src[b * kBlock + 2 * i] * id)) + 8;
          int hi = int(std::lrintf(src[b * kBlock + 2 * i + 1] * id)) + 8;
          lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
          hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
          q[b * kBlock / 2 + i] = uint8_t(lo | (hi << 4));
        }
      }
      return;
    }
  }
}

}  // namespace moe
