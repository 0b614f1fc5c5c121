// encode_matrix: fp32 rows to the F32, F16, Q8, Q4 and MX4 storage encodings (expert_kernels.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "expert_kernels.h"
#include "kernels_isa.h"

namespace moe {

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
        // amax * fp32(1/127): the stored format (the JS encoder computes exactly this).
        const float d = amax * (1.f / 127.f), id = d ? 1.f / d : 0.f;
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
    case Enc::MX4: {
      // src/store/mxfp4.ts documents (and implements in JS) the same rounding.
      uint8_t* e = dst;
      uint8_t* q = dst + n / kBlock;
      const auto magnitude = [](float a) -> int {  // nearest E2M1 value, ties to the even code
        return a <= 0.25f ? 0 : a < 0.75f ? 1 : a <= 1.25f ? 2 : a < 1.75f ? 3 : a <= 2.5f ? 4 : a < 3.5f ? 5 : a <= 5.f ? 6 : 7;
      };
      for (size_t b = 0; b < n / kBlock; b++) {
        float amax = 0.f;
        for (int i = 0; i < kBlock; i++) amax = std::fmax(amax, std::fabs(src[b * kBlock + i]));
        uint32_t bits;
        std::memcpy(&bits, &amax, 4);
        const int biased = int((bits >> 23) & 0xff);  // floor(log2(amax)) + 127 for a normal amax
        const int eb = biased == 0 ? 0 : std::max(0, biased - 2);
        e[b] = uint8_t(eb);
        const float inv = std::ldexp(1.f, 127 - eb);  // exact power of two
        const auto code = [&](float v) -> int {
          const int m = magnitude(std::fabs(v) * inv);
          return m != 0 && v < 0.f ? m | 8 : m;
        };
        for (int i = 0; i < kBlock / 2; i++) q[b * kBlock / 2 + i] = uint8_t(code(src[b * kBlock + 2 * i]) | (code(src[b * kBlock + 2 * i + 1]) << 4));
      }
      return;
    }
    case Enc::Q4K:
    case Enc::Q5K:
    case Enc::Q6K:
    case Enc::Q2K:
    case Enc::Q3K:
    case Enc::Q41:
    case Enc::Q50:
    case Enc::Q51:
      return;  // refused by the binding (see expert_kernels.h)
  }
}

}  // namespace moe
