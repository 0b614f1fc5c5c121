// Compiles kernels_isa.inc once per instruction-set level. The file is built for baseline x86-64
// (or whatever the target architecture is); only the functions inside a target region may use
// AVX2/VNNI instructions, and they run only where expert_kernels.cc found the CPU features.
// Every standard header is included before any target region, so no inline library code is
// compiled for a level the CPU may lack.
#include "kernels_isa.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MOE_KISA_X86 1
#if defined(__has_include)
#if __has_include(<avxvnniintrin.h>)
#define MOE_KISA_VEX_VNNI 1
#endif
#if __has_include(<avx512vnnivlintrin.h>) || __has_include(<avx512vlvnniintrin.h>)  // gcc's name, clang's
#define MOE_KISA_EVEX_VNNI 1
#endif
#endif
#endif

#if defined(__clang__)
#define MOE_TARGET_BEGIN(features) _Pragma(MOE_STR(clang attribute push(__attribute__((target(features))), apply_to = function)))
#define MOE_TARGET_END _Pragma("clang attribute pop")
#else
#define MOE_TARGET_BEGIN(features) _Pragma("GCC push_options") _Pragma(MOE_STR(GCC target(features)))
#define MOE_TARGET_END _Pragma("GCC pop_options")
#endif
#define MOE_STR(x) #x

namespace moe {

namespace isa_scalar {
#define KISA_SIMD 0
#define KISA_VNNI 0
#define KISA_512 0
#include "kernels_isa.inc"
#include "attention_isa.inc"
#include "activation_isa.inc"
#undef KISA_SIMD
#undef KISA_512
#undef KISA_VNNI
const KernelTable table = {"scalar", rows_float, rows_quant, quantize, attend, silu_mul};
}  // namespace isa_scalar

const KernelTable* kernels_scalar() { return &isa_scalar::table; }

#if MOE_KISA_X86
MOE_TARGET_BEGIN("avx2,fma,f16c")
namespace isa_avx2 {
#define KISA_SIMD 1
#define KISA_VNNI 0
#define KISA_512 0
#include "kernels_isa.inc"
#include "attention_isa.inc"
#include "activation_isa.inc"
#undef KISA_SIMD
#undef KISA_512
#undef KISA_VNNI
}  // namespace isa_avx2
MOE_TARGET_END
const KernelTable* kernels_avx2() {
  static const KernelTable table = {"avx2", isa_avx2::rows_float, isa_avx2::rows_quant, isa_avx2::quantize, isa_avx2::attend, isa_avx2::silu_mul};
  return &table;
}
#else
const KernelTable* kernels_avx2() { return nullptr; }
#endif

#if MOE_KISA_X86 && MOE_KISA_VEX_VNNI
MOE_TARGET_BEGIN("avx2,fma,f16c,avxvnni")
namespace isa_vnni_vex {
#define KISA_SIMD 1
#define KISA_VNNI 1
#define KISA_512 0
#include "kernels_isa.inc"
#undef KISA_SIMD
#undef KISA_512
#undef KISA_VNNI
}  // namespace isa_vnni_vex
MOE_TARGET_END
const KernelTable* kernels_vnni_vex() {
  static const KernelTable table = {"vnni", isa_avx2::rows_float, isa_vnni_vex::rows_quant, isa_avx2::quantize, isa_avx2::attend, isa_avx2::silu_mul};
  return &table;
}
#else
const KernelTable* kernels_vnni_vex() { return nullptr; }
#endif

#if MOE_KISA_X86 && MOE_KISA_EVEX_VNNI
MOE_TARGET_BEGIN("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
namespace isa_vnni_evex {
#define KISA_SIMD 1
#define KISA_VNNI 2
#define KISA_512 0
#include "kernels_isa.inc"
#undef KISA_SIMD
#undef KISA_512
#undef KISA_VNNI
}  // namespace isa_vnni_evex
MOE_TARGET_END
const KernelTable* kernels_vnni_evex() {
  static const KernelTable table = {"vnni", isa_avx2::rows_float, isa_vnni_evex::rows_quant, isa_avx2::quantize, isa_avx2::attend, isa_avx2::silu_mul};
  return &table;
}
#else
const KernelTable* kernels_vnni_evex() { return nullptr; }
#endif

#if MOE_KISA_X86 && MOE_KISA_EVEX_VNNI
// 512-bit attention and Q8 tiles (the rest as the vnni level with its AVX512-VNNI integer dots).
// GCC 12's AVX-512 headers start some intrinsics from an undefined vector, which
// -Wmaybe-uninitialized / -Wuninitialized report at every use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
MOE_TARGET_BEGIN("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")
namespace isa_avx512 {
#define KISA_SIMD 1
#define KISA_VNNI 2
#define KISA_512 1
#include "kernels_isa.inc"
#undef KISA_SIMD
#undef KISA_VNNI
#undef KISA_512
using isa_avx2::hsum8x8;
using isa_avx2::kKvBlock;
using isa_avx2::kv_prefetch;
#include "attention_avx512.inc"
}  // namespace isa_avx512
MOE_TARGET_END
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
const KernelTable* kernels_avx512() {
  static const KernelTable table = {"avx512", isa_avx2::rows_float, isa_avx512::rows_quant, isa_avx2::quantize, isa_avx512::attend, isa_avx2::silu_mul};
  return &table;
}
#else
const KernelTable* kernels_avx512() { return nullptr; }
#endif

}  // namespace moe

// The E8M0 table the MX4 kernels use: 2^(e - 128), exact from the subnormal end to the top.
static_assert(moe::kE8m0Half.v[128] == 1.f && moe::kE8m0Half.v[127] == 0.5f && moe::kE8m0Half.v[254] == 0x1p126f, "E8M0 table");
static_assert(moe::kE8m0Half.v[0] == 0x1p-128f && moe::kE8m0Half.v[1] == 0x1p-127f, "E8M0 table (subnormal scales)");
static_assert(moe::kE8m0Half.v[255] != moe::kE8m0Half.v[255], "E8M0 255 is NaN");
