// The router's softmax rule in native code, to the bit of src/evaluator/routing.ts (routeTokens,
// kind "softmax"), so a decode step routed here (decode_step.cc) picks and weighs the experts
// exactly as one routed in TypeScript: the same doubles, the same roundings to fp32, the same
// order of additions, and Math.exp's own algorithm (js_exp).
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

// exp(x) as JavaScript engines compute Math.exp (V8: fdlibm's __ieee754_exp; argument reduction
// by ln 2 in a high and a low part, a degree-5 polynomial in r^2). glibc's exp differs from it
// in the last bit for ~10% of arguments; test/native-routing.test.ts compares the two routers.
double js_exp(double x);

// One token: probs[E] = the softmax over all E logits (fp32, rounded from doubles as routing.ts
// stores them); experts[K] = the K most probable, highest first (ties: lower id first);
// weights[K] = their probabilities, divided by their sum (in doubles) when norm_topk.
void route_softmax(const float* logits, size_t E, size_t K, bool norm_topk, int32_t* experts, float* weights, float* probs);

}  // namespace moe
