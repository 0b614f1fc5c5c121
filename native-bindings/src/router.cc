#include "router.h"

// Each multiply and add rounds on its own, as in JavaScript: no contraction into fused
// multiply-adds (GCC contracts across statements unless told; clang only within one expression).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstring>
#include <limits>

namespace moe {

namespace {
uint32_t high_word(double x) {
  uint64_t b;
  std::memcpy(&b, &x, 8);
  return uint32_t(b >> 32);
}
uint32_t low_word(double x) {
  uint64_t b;
  std::memcpy(&b, &x, 8);
  return uint32_t(b);
}
// 2^k for -1022 <= k <= 1023, exactly (the exponent field set directly).
double pow2(int32_t k) {
  const uint64_t b = uint64_t(0x3ff + k) << 52;
  double x;
  std::memcpy(&x, &b, 8);
  return x;
}
}  // namespace

// Plain double arithmetic, each step rounded on its own (see the pragma above): the engine's bits.
double js_exp(double x) {
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10, kInvLn2 = 1.44269504088896338700e+00;
  constexpr double P1 = 1.66666666666666019037e-01, P2 = -2.77777777770155933842e-03, P3 = 6.61375632143793436117e-05,
                   P4 = -1.65339022054652515390e-06, P5 = 4.13813679705723846039e-08;
  constexpr double kOverflow = 7.09782712893383973096e+02, kUnderflow = -7.45133219101941108420e+02;
  const uint32_t sign = high_word(x) >> 31;
  const uint32_t hx = high_word(x) & 0x7fffffff;
  if (hx >= 0x40862E42) {  // |x| >= 709.78: overflow, underflow, inf or NaN
    if (hx >= 0x7ff00000) {
      if (((hx & 0xfffff) | low_word(x)) != 0) return x + x;  // NaN
      return sign ? 0.0 : x;                                   // exp(-inf) = 0, exp(+inf) = inf
    }
    if (x > kOverflow) return std::numeric_limits<double>::infinity();
    if (x < kUnderflow) return 0.0;
  }
  double hi = 0, lo = 0;
  int32_t k = 0;
  if (hx > 0x3fd62e42) {    // |x| > 0.5 ln 2: x = k ln 2 + r, |r| <= 0.5 ln 2
    if (hx < 0x3FF0A2B2) {  // |x| < 1.5 ln 2: k = +-1
      hi = sign ? x + kLn2Hi : x - kLn2Hi;
      lo = sign ? -kLn2Lo : kLn2Lo;
      k = sign ? -1 : 1;
    } else {
      k = int32_t(kInvLn2 * x + (sign ? -0.5 : 0.5));
      const double t = k;
      hi = x - t * kLn2Hi;
      lo = t * kLn2Lo;
    }
    x = hi - lo;
  } else if (hx < 0x3e300000) {  // |x| < 2^-28: exp(x) = 1 + x (inexact)
    return 1.0 + x;
  }
  const double t = x * x;
  const double c = x - t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))));
  if (k == 0) return 1.0 - ((x * c) / (c - 2.0) - x);
  const double y = 1.0 - ((lo - (x * c) / (2.0 - c)) - hi);
  if (k >= -1021) {
    if (k == 1024) return y * 2.0 * 8.98846567431157953865e307;  // 2^1023
    return y * pow2(k);
  }
  return y * pow2(k + 1000) * 9.33263618503218878990e-302;  // 2^-1000
}

void route_softmax(const float* logits, size_t E, size_t K, bool norm_topk, int32_t* experts, float* weights, float* probs) {
  // Math.max over the logits: NaN if any is NaN.
  double max = -std::numeric_limits<double>::infinity();
  for (size_t e = 0; e < E; e++) {
    const double v = logits[e];
    if (v != v || max != max) max = std::numeric_limits<double>::quiet_NaN();
    else if (v > max) max = v;
  }
  // routing.ts: sum += probs[e] = Math.exp(row[e] - max), the sum taking the double, the array
  // its fp32 rounding; then probs[e] = probs[e] / sum, in doubles, rounded to fp32.
  double sum = 0;
  for (size_t e = 0; e < E; e++) {
    const double v = js_exp(double(logits[e]) - max);
    probs[e] = float(v);
    sum += v;
  }
  for (size_t e = 0; e < E; e++) probs[e] = float(double(probs[e]) / sum);
  // The first K of the order (probs[b] - probs[a] || a - b): higher probability first, then lower id.
  double top_sum = 0;
  for (size_t k = 0; k < K; k++) {
    int32_t best = -1;
    for (size_t e = 0; e < E; e++) {
      bool taken = false;
      for (size_t j = 0; j < k; j++) taken = taken || experts[j] == int32_t(e);
      if (taken) continue;
      if (best < 0 || probs[e] > probs[best]) best = int32_t(e);
    }
    experts[k] = best;
    top_sum += double(probs[best]);
  }
  for (size_t k = 0; k < K; k++) weights[k] = norm_topk ? float(double(probs[experts[k]]) / top_sum) : probs[experts[k]];
}

}  // namespace moe
