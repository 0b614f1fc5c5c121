// Internal: the per-instruction-set kernel tables behind matmul_rows (see expert_kernels.h).
// kernels_isa.cc compiles kernels_isa.inc once per level, each in its own namespace and target.
#pragma once
#include <cstddef>
#include <cstdint>

#include "expert_kernels.h"

namespace moe {

// Activation rows quantized for the integer-dot kernels: per token, per block of 32, int8 values,
// an fp32 scale and (Q4/MX4 only) the block's sum of values. Q8 keeps the values in order; Q4 and
// MX4 store each block's even elements first, then its odd ones (the order of the low and high
// nibbles of the block's 16 weight bytes, so the weights need no interleaving).
struct QuantRows {
  const int8_t* q;   // [T, cols]
  const float* d;    // [T, cols/32]
  const int32_t* s;  // [T, cols/32] (Q4/MX4)
};

struct KernelTable {
  const char* name;
  // y[t*rows + r] for r in [r0, r1), t in [0, T): F32 and F16 weights.
  void (*rows_float)(Enc enc, const uint8_t* w, size_t rows, size_t cols, const float* x, size_t T, float* y, size_t r0, size_t r1);
  // The same for Q8, Q4 and MX4 weights, from activations quantized by `quantize` (cols % 32 == 0).
  void (*rows_quant)(Enc enc, const uint8_t* w, size_t rows, size_t cols, const QuantRows& xq, size_t T, float* y, size_t r0, size_t r1);
  // Quantizes x [T, cols] into q [T*cols], d and s [T*cols/32], in Q4's block order when q4 (Q4, MX4).
  void (*quantize)(bool q4, const float* x, size_t T, size_t cols, int8_t* q, float* d, int32_t* s);
  // Softmax attention of G query heads q [G, hd] over one KV head's S cached rows K, V [S, hd]
  // (fp32, or IEEE half when kv_f16): out [G, hd]; sinks [G] or null joins the denominator;
  // scores [G, S] is scratch (attention_isa.inc).
  void (*attend)(const float* q, size_t G, const void* K, const void* V, bool kv_f16, size_t S, size_t hd, float scale, const float* sinks,
                 float* scores, float* out);
  // g[i] = silu(g[i]) * u[i] for i in [0, n) (activation_isa.inc): the same bits for an element
  // wherever it lies in [0, n).
  void (*silu_mul)(float* g, const float* u, size_t n);
};

// The table the kernels run with in this process (MOE_RUN_KERNEL_ISA or the best the CPU has).
const KernelTable* active_kernels();

const KernelTable* kernels_scalar();
// nullptr where the level was not compiled (not x86-64, or a compiler without the intrinsics).
const KernelTable* kernels_avx2();
const KernelTable* kernels_vnni_vex();   // AVX-VNNI
const KernelTable* kernels_vnni_evex();  // AVX512-VNNI + AVX512VL
const KernelTable* kernels_avx512();     // vnni_evex's plus 512-bit attention and Q8 tiles (AVX512F/BW/DQ/VL)

// 2^(e - 128): half the E8M0 scale 2^(e - 127), for MX4 blocks whose codes are read doubled
// (kMx4X2); e = 255 (NaN in the OCP format) gives NaN. Subnormal for e < 2 (exact).
inline float e8m0_half(uint8_t e) {
  const uint32_t bits = e == 255 ? 0x7fc00000u : e >= 2 ? uint32_t(e - 1) << 23 : 0x00200000u << e;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
// e8m0_half of every byte, computed by the compiler (powers of two are exact, subnormals too):
// one load per block in the kernels.
struct E8m0HalfTable {
  float v[256];
  constexpr E8m0HalfTable() : v() {
    for (int e = 0; e < 255; e++) {
      float p = 1.f;
      for (int i = e - 128; i > 0; i--) p *= 2.f;
      for (int i = e - 128; i < 0; i++) p *= 0.5f;
      v[e] = p;
    }
    v[255] = __builtin_nanf("");
  }
};
inline constexpr E8m0HalfTable kE8m0Half{};

// Q4_K's packed 12 bytes: the six-bit scale and min of sub-block j (llama.cpp get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// IEEE half to float, exact (subnormals, infinities and NaNs included).
inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (uint32_t(h & 0x7fffu) - 0x400u < 0x7800u) {  // normal (the usual case): rebias the exponent
    bits = sign | ((uint32_t(h & 0x7fffu) << 13) + ((127u - 15u) << 23));
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        exp--;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// Float to IEEE half, rounding to nearest even (overflow to infinity, subnormals kept).
inline uint16_t float_to_half(float f) {
  uint32_t x;
  __builtin_memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xff, mant = x & 0x7fffff;
  if (exp == 0xff) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  int e = int(exp) - 127 + 15;
  if (e >= 0x1f) return uint16_t(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return uint16_t(sign);
    mant |= 0x800000;
    int shift = 14 - e;
    uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return uint16_t(sign | half);
  }
  uint32_t half = (uint32_t(e) << 10) | (mant >> 13), rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
  return uint16_t(sign | half);
}

}  // namespace moe
