// The dense (non-expert) part of one decoder layer on the CPU, computing straight from weights in
// the store's encodings (expert_kernels.h), with the KV cache in caller-owned buffers that grow in
// place: nothing is copied per step. Mirrors the ONNX layer graph (src/importer/modelGraphs.ts):
//   x = norm(hidden) ; q,k,v = x W^T (+bias) ; q/k norm ; RoPE (half-split over the rotary dims) ;
//   append k,v ; causal softmax attention (GQA: q head h reads kv head h / (Hq/Hkv); optional
//   sliding window and sinks) ; attn_out = hidden + o (+bias) ; moe_in = norm(attn_out) ;
//   router_logits = moe_in R^T (+bias) ; shared expert (optional, sigmoid-gated).
// norm is RMSNorm, or LayerNorm with a bias section.
#pragma once
#include <cstddef>
#include <cstdint>

#include "expert_kernels.h"

namespace moe {

struct DenseSpec {
  size_t H;    // hidden size
  size_t Hq;   // query heads
  size_t Hkv;  // key/value heads
  size_t hd;   // head dim
  size_t E;    // routed experts (router rows); 0 in a dense layer
  size_t Fs;   // shared expert width (a dense layer: its MLP's), 0 = none
  float eps;   // norm epsilon
  int qk_norm; // 0 none, 1 per head over hd, 2 over all heads
  int norm;    // 0 RMSNorm, 1 LayerNorm (weight and bias)
  float attn_scale;  // softmax scale of scores (1/sqrt(hd) unless the family sets it)
  size_t rot;        // rotary dims per head (<= hd, even)
  size_t window;     // sliding window in positions (the query and window-1 before it); 0 = full
  // Multi-head latent attention (DeepSeek-V2) when kv_rank > 0: Hkv = 1 and hd = kv_rank + rope
  // (one latent row per position, no values), q_rank 0 = no q compression.
  size_t q_rank = 0, kv_rank = 0, nope = 0, rope_dim = 0, v_dim = 0;
  // The KV cache holds IEEE halves instead of fp32 (not with MLA): half the bytes a decode step
  // reads at long contexts, as llama.cpp's default F16 cache.
  bool kv_f16 = false;
};

// Sections of a layer's weight blob, in this order. Norms, biases, the router and the shared
// expert's gate vector are fp32; the projections are in the section's encoding.
enum Section : int {
  kInNorm,      // f32 [H]
  kQ,           // [Hq*hd, H]
  kK,           // [Hkv*hd, H]
  kV,           // [Hkv*hd, H]
  kO,           // [H, Hq*hd]
  kQBias,       // f32 [Hq*hd]     (optional)
  kKBias,       // f32 [Hkv*hd]    (optional)
  kVBias,       // f32 [Hkv*hd]    (optional)
  kQNorm,       // f32 [hd] or [Hq*hd]  (optional)
  kKNorm,       // f32 [hd] or [Hkv*hd] (optional)
  kPostNorm,    // f32 [H]
  kRouter,      // [E, H]
  kSharedGate,  // [Fs, H]         (optional)
  kSharedUp,    // [Fs, H]         (optional)
  kSharedDown,  // [H, Fs]         (optional)
  kSharedProj,  // f32 [H]: the shared expert's sigmoid gate (optional: absent = ungated)
  kInNormBias,  // f32 [H]  (LayerNorm)
  kOBias,       // f32 [H]          (optional)
  kSinks,       // f32 [Hq]         (optional) attention-sink logits
  kPostNormBias,  // f32 [H]  (LayerNorm)
  kRouterBias,  // f32 [E]          (optional)
  // MLA (instead of kQ/kK/kV; kO is [H, Hq*v_dim]):
  kMlaQA,       // [q_rank, H]      (optional: q compression)
  kMlaQABias,   // f32 [q_rank]     (optional)
  kMlaQANorm,   // f32 [q_rank]
  kMlaQB,       // [Hq*(nope+rope), q_rank or H]
  kMlaKvA,      // [kv_rank+rope, H]
  kMlaKvABias,  // f32 [kv_rank+rope] (optional)
  kMlaKvANorm,  // f32 [kv_rank]
  kMlaUkT,      // [Hq*kv_rank, nope]: per head W_uk^T (absorbs the nope query into the latent)
  kMlaUv,       // [Hq*v_dim, kv_rank]: per head W_uv (latent context -> value space)
  kSectionCount
};

struct WeightRef {
  const uint8_t* p = nullptr;  // null = absent
  Enc enc = Enc::F32;
};

// Buffers (fp32): hidden, attn_out, moe_in [T, H]; cos, sin [T, hd]; router_logits [T, E];
// shared_out [T, H] or null; kv_k, kv_v [Hkv, capacity, hd] (fp32, or uint16 halves with
// s.kv_f16) holding `past` positions, to which the T new positions are appended (past + T <= capacity).
void layer_forward(const DenseSpec& s, const WeightRef* w, const float* hidden, size_t T, size_t past, const float* cos,
                   const float* sin, void* kv_k, void* kv_v, size_t capacity, float* attn_out, float* moe_in,
                   float* router_logits, float* shared_out, int threads);

// out[T, n] = x / sqrt(mean(x^2) + eps) * w, per row of n.
void rms_norm(const float* x, size_t T, size_t n, const float* w, float eps, float* out);

// out[T, n] = (x - mean(x)) / sqrt(var(x) + eps) * w + b, per row of n (biased variance).
void layer_norm(const float* x, size_t T, size_t n, const float* w, const float* b, float eps, float* out);

// out[i, cols] = row ids[i] of W [rows, cols] decoded to fp32 (the embedding lookup).
void gather_rows(Enc enc, const uint8_t* w, size_t rows, size_t cols, const int32_t* ids, size_t n, float* out);

}  // namespace moe
