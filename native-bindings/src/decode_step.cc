// decodeStep: one decode token through the layers of a model whose experts fit, in one call:
// dense layer (dense_layer.cc) -> router (router.cc, routing.ts's bits) -> the top-k experts
// (experts_forward) -> their weighted sum -> residual, layer after layer, until a layer routes to
// an expert not resident yet (evaluator/FusedDecode.ts goes on from there in the layer loop). It
// computes what ModelRunner's layer loop computes, in the same order of operations, so the bits
// are the same; what it saves is the JavaScript between the kernels: ~30 us a layer of small
// calls, promises and typed-array allocations, most of it cache misses after each layer's expert
// stream has swept the caches.
#include <node_api.h>

// Each multiply and add rounds on its own, as in JavaScript: no contraction into fused
// multiply-adds (GCC contracts across statements unless told; clang only within one expression).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "dense_layer.h"
#include "expert_kernels.h"
#include "napi_util.h"
#include "router.h"

namespace {

using moe::napi::array_length;
using moe::napi::kernel_isa_ok;
using moe::napi::num;
using moe::napi::typed_data;

napi_value fail(napi_env env, const std::string& msg) {
  napi_throw_range_error(env, nullptr, msg.c_str());
  return nullptr;
}

// Element i of a JS array; undefined when `v` is not an array or is too short.
napi_value element(napi_env env, napi_value v, uint32_t i) {
  napi_value out = nullptr;
  napi_get_element(env, v, i, &out);
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// What decodeStep computes with, checked once (decodePlan): per layer the dense spec and weights,
// every expert's record, the record encodings and the router's shape. It points into JS-owned
// native memory (the dense blobs, the resident records): FusedDecode keeps those alive and makes
// a new plan whenever the resident table changes, so a plan is never used past its buffers.
struct DecodePlan {
  std::vector<moe::DenseSpec> specs;                   // [L]
  std::vector<std::vector<moe::WeightRef>> weights;    // [L][kSectionCount]
  std::vector<const uint8_t*> records;                 // [L * E]; null: not resident
  std::vector<moe::RecordEncs> encs;                   // [L]
  moe::ExpertOptions opts;
  size_t L = 0, H = 0, E = 0, F = 0, K = 0, hd = 0;  // E: the routed layers' experts
  bool norm_topk = false;
  // The MLP's output times this before the residual add (Granite), a double as in JavaScript: the
  // product is taken in doubles and rounded to fp32 (Math.fround(x * rs)).
  double residual_scale = 1;
};

// decodePlan(specs: Float64Array[L], blobs: Uint8Array[L], sections: Float64Array[L] (denseLayer's
//            first three arguments per layer, the specs' kvF16 set), records: (Uint8Array|null)[L*E]
//            (layer l's expert e at l*E + e; null where it is not resident), encs: Float64Array [L] (record codes), F,
//            expertSpec?, topK, normTopkProb (0/1), residualScale) -> a plan for decodeStep.
// Layers route to E experts (with or without a shared expert) or are dense (E = 0: their MLP in
// the shared slot); no latent attention.
napi_value DecodePlanNew(napi_env env, napi_callback_info info) {
  if (!kernel_isa_ok(env)) return nullptr;
  size_t argc = 10;
  napi_value a[10];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 10) return fail(env, "decodePlan: 10 arguments expected");
  const int64_t n_layers = array_length(env, a[0]);
  if (n_layers <= 0 || array_length(env, a[1]) != n_layers || array_length(env, a[2]) != n_layers) return fail(env, "decodePlan: specs, blobs and sections must be arrays of one length (the layers)");
  const uint32_t L = uint32_t(n_layers);
  auto plan = std::make_unique<DecodePlan>();
  DecodePlan& p = *plan;
  p.L = L;
  p.specs.resize(L);
  p.weights.assign(L, std::vector<moe::WeightRef>(moe::kSectionCount));
  for (uint32_t l = 0; l < L; l++) {
    if (!moe::napi::dense_weights(env, element(env, a[0], l), element(env, a[1], l), element(env, a[2], l), "decodePlan", &p.specs[l], p.weights[l].data())) return nullptr;
    const moe::DenseSpec& s = p.specs[l];
    if (s.kv_rank > 0) return fail(env, "decodePlan: layer " + std::to_string(l) + " has latent attention");
    if (s.E == 0 && s.Fs == 0) return fail(env, "decodePlan: layer " + std::to_string(l) + " has neither experts nor an MLP");
    if (s.E > 0 && p.E == 0) p.E = s.E;
    if (s.H != p.specs[0].H || (s.E != 0 && s.E != p.E) || s.hd != p.specs[0].hd || s.kv_f16 != p.specs[0].kv_f16) return fail(env, "decodePlan: layers differ in hidden size, experts, head size or cache precision");
  }
  if (p.E == 0) return fail(env, "decodePlan: no layer routes to experts");
  p.H = p.specs[0].H;
  p.hd = p.specs[0].hd;
  p.residual_scale = num(env, a[9]);
  p.F = size_t(num(env, a[5]));
  p.K = size_t(num(env, a[7]));
  p.norm_topk = num(env, a[8]) == 1;
  if (p.K == 0 || p.K > p.E) return fail(env, "decodePlan: topK must be 1..E");
  if (!moe::napi::expert_options(env, a[6], "decodePlan", &p.opts)) return nullptr;
  void* enc_p;
  size_t enc_b;
  if (!typed_data(env, a[4], &enc_p, &enc_b) || enc_b != L * 8) return fail(env, "decodePlan: encs must be a Float64Array of one code per layer");
  for (uint32_t l = 0; l < L; l++) {
    moe::RecordEncs e(moe::Enc::F32);
    if (!moe::napi::record_encs(env, static_cast<const double*>(enc_p)[l], p.H, p.F, "decodePlan", &e)) return nullptr;
    p.encs.push_back(e);
  }
  if (array_length(env, a[3]) != int64_t(L * p.E)) return fail(env, "decodePlan: records must hold every layer's every expert (L * E)");
  p.records.resize(L * p.E);
  for (uint32_t i = 0; i < L * p.E; i++) {
    void* r = nullptr;
    size_t rb = 0;
    if (p.specs[i / p.E].E == 0) continue;  // a dense layer: no experts
    const napi_value v = element(env, a[3], i);
    napi_valuetype t;
    napi_typeof(env, v, &t);
    if (t == napi_null || t == napi_undefined) continue;  // not resident: the step stops at its layer
    if (!typed_data(env, v, &r, &rb) || rb != moe::expert_record_bytes(p.encs[i / p.E], p.H, p.F, p.opts.bias)) {
      return fail(env, "decodePlan: record " + std::to_string(i) + " is not a typed array the size of its layer's encoding");
    }
    p.records[i] = static_cast<const uint8_t*>(r);
  }
  napi_value out;
  if (napi_create_external(env, plan.get(), [](napi_env, void* data, void*) { delete static_cast<DecodePlan*>(data); }, nullptr, &out) != napi_ok) {
    return fail(env, "decodePlan: could not wrap the plan");
  }
  plan.release();
  return out;
}

// decodeStep(plan (decodePlan), kvK[L], kvV[L], capacity, past, cos [hd], sin [hd],
//            hidden: Float32Array [H] (the token's embedding in, the last layer's output out), threads,
//            outExperts: Int32Array [L*K], outWeights: Float32Array [L*K], outProbs: Float32Array [L*E],
//            outSeconds: Float64Array [3] (dense, routing and combining, experts; added to),
//            attnOut [H], moeIn [H], routerLogits [E], sharedOut [H]) -> the layers done
// The KV caches get position `past`. Where a layer routes to an expert the plan has no record for,
// the step stops after that layer's dense part: it returns the layer's index, with its outputs in
// attnOut, moeIn, routerLogits and sharedOut (as denseLayer gives them) for the caller to go on from.
napi_value DecodeStep(napi_env env, napi_callback_info info) {
  size_t argc = 17;
  napi_value a[17];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 17) return fail(env, "decodeStep: 17 arguments expected");
  void* plan_p = nullptr;
  napi_valuetype type;
  napi_typeof(env, a[0], &type);
  if (type != napi_external || napi_get_value_external(env, a[0], &plan_p) != napi_ok || !plan_p) return fail(env, "decodeStep: the first argument must be a decodePlan");
  const DecodePlan& p = *static_cast<const DecodePlan*>(plan_p);
  const size_t L = p.L, H = p.H, E = p.E, K = p.K;
  if (array_length(env, a[1]) != int64_t(L) || array_length(env, a[2]) != int64_t(L)) return fail(env, "decodeStep: kvK and kvV must hold one cache per layer");
  const size_t cap = size_t(num(env, a[3])), past = size_t(num(env, a[4]));
  const int threads = int(num(env, a[8]));
  std::vector<void*> kv_k(L), kv_v(L);
  for (uint32_t l = 0; l < L; l++) {
    const moe::DenseSpec& s = p.specs[l];
    size_t kb, vb;
    if (!typed_data(env, element(env, a[1], l), &kv_k[l], &kb) || !typed_data(env, element(env, a[2], l), &kv_v[l], &vb)) return fail(env, "decodeStep: kvK and kvV must hold typed arrays");
    const size_t need = s.Hkv * s.hd * cap * (s.kv_f16 ? 2 : 4);
    if (past + 1 > cap || kb < need || vb < need) return fail(env, "decodeStep: layer " + std::to_string(l) + "'s KV cache does not hold position " + std::to_string(past));
  }
  void *cos, *sin, *hidden_p, *ids_p, *wts_p, *probs_p, *secs_p, *attn_p, *moe_p, *logits_p, *shared_p;
  size_t cos_b, sin_b, hidden_b, ids_b, wts_b, probs_b, secs_b, attn_b, moe_b, logits_b, shared_b;
  if (!typed_data(env, a[5], &cos, &cos_b) || !typed_data(env, a[6], &sin, &sin_b) || !typed_data(env, a[7], &hidden_p, &hidden_b) ||
      !typed_data(env, a[9], &ids_p, &ids_b) || !typed_data(env, a[10], &wts_p, &wts_b) || !typed_data(env, a[11], &probs_p, &probs_b) ||
      !typed_data(env, a[12], &secs_p, &secs_b) || !typed_data(env, a[13], &attn_p, &attn_b) || !typed_data(env, a[14], &moe_p, &moe_b) ||
      !typed_data(env, a[15], &logits_p, &logits_b) || !typed_data(env, a[16], &shared_p, &shared_b)) {
    return fail(env, "decodeStep: cos, sin, hidden and the outputs must be typed arrays");
  }
  if (cos_b < p.hd * 4 || sin_b < p.hd * 4 || hidden_b < H * 4 || ids_b < L * K * 4 || wts_b < L * K * 4 || probs_b < L * E * 4 || secs_b < 3 * 8 || attn_b < H * 4 || moe_b < H * 4 || logits_b < E * 4 || shared_b < H * 4) {
    return fail(env, "decodeStep: buffer sizes do not match the plan");
  }
  if (!kernel_isa_ok(env)) return nullptr;

  float* hidden = static_cast<float*>(hidden_p);
  int32_t* ids = static_cast<int32_t*>(ids_p);
  float* wts = static_cast<float*>(wts_p);
  float* probs = static_cast<float*>(probs_p);
  double* secs = static_cast<double*>(secs_p);
  thread_local std::vector<float> scratch;  // attn_out [H], moe_in [H], moe_out [H], shared [H], logits [E], ys [K][H]
  scratch.resize(4 * H + E + K * H);
  float *attn_out = scratch.data(), *moe_in = attn_out + H, *moe_out = moe_in + H, *shared = moe_out + H, *logits = shared + H, *ys = logits + E;
  const double rs = p.residual_scale;
  std::vector<moe::ExpertCall> calls(K);
  std::vector<size_t> by_id(K);  // the picks in ascending expert id: groupByExpert's order, the sums'
  for (size_t l = 0; l < L; l++) {
    auto t0 = std::chrono::steady_clock::now();
    const moe::DenseSpec& s = p.specs[l];
    moe::layer_forward(s, p.weights[l].data(), hidden, 1, past, static_cast<const float*>(cos), static_cast<const float*>(sin), kv_k[l], kv_v[l], cap,
                       attn_out, moe_in, logits, s.Fs ? shared : nullptr, threads);
    secs[0] += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    if (s.E == 0) {  // a dense layer (ModelRunner): hidden = attn_out + mlp (times the residual scale)
      for (size_t h = 0; h < H; h++) {
        const float mlp = rs == 1 ? shared[h] : float(double(shared[h]) * rs);
        hidden[h] = attn_out[h] + mlp;
      }
      secs[1] += seconds_since(t0);
      continue;
    }
    int32_t* id = ids + l * K;
    float* wt = wts + l * K;
    moe::route_softmax(logits, E, K, p.norm_topk, id, wt, probs + l * E);
    bool resident = true;
    for (size_t k = 0; k < K; k++) resident = resident && p.records[l * E + size_t(id[k])] != nullptr;
    if (!resident) {  // the caller computes this layer's experts (loading the missing one) and the rest
      std::copy(attn_out, attn_out + H, static_cast<float*>(attn_p));
      std::copy(moe_in, moe_in + H, static_cast<float*>(moe_p));
      std::copy(logits, logits + E, static_cast<float*>(logits_p));
      if (s.Fs) std::copy(shared, shared + H, static_cast<float*>(shared_p));
      secs[1] += seconds_since(t0);
      napi_value done;
      napi_create_uint32(env, uint32_t(l), &done);
      return done;
    }
    for (size_t k = 0; k < K; k++) by_id[k] = k;
    std::sort(by_id.begin(), by_id.end(), [id](size_t x, size_t y) { return id[x] < id[y]; });
    for (size_t j = 0; j < K; j++) calls[j] = {p.records[l * E + size_t(id[by_id[j]])], moe_in, 1, ys + j * H};
    secs[1] += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    moe::experts_forward(p.encs[l], calls.data(), K, H, p.F, threads, p.opts);
    secs[2] += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    // ModelRunner: out = 0; per expert (ascending id) out += fround(y * w); out += shared; out *= the
    // residual scale; hidden = attn_out + out.
    std::fill(moe_out, moe_out + H, 0.f);
    for (size_t j = 0; j < K; j++) {
      const float w = wt[by_id[j]];
      const float* y = ys + j * H;
      for (size_t h = 0; h < H; h++) {
        const float prod = y[h] * w;
        moe_out[h] = moe_out[h] + prod;
      }
    }
    if (s.Fs)
      for (size_t h = 0; h < H; h++) moe_out[h] = moe_out[h] + shared[h];
    if (rs != 1)
      for (size_t h = 0; h < H; h++) moe_out[h] = float(double(moe_out[h]) * rs);
    for (size_t h = 0; h < H; h++) hidden[h] = attn_out[h] + moe_out[h];
    secs[1] += seconds_since(t0);
  }
  napi_value done;
  napi_create_uint32(env, uint32_t(L), &done);
  return done;
}

// routeSoftmax(logits: Float32Array [T*E], T, E, K, normTopkProb (0/1), experts: Int32Array [T*K],
//              weights: Float32Array [T*K], probs: Float32Array [T*E]): route_softmax per token
//              (tests compare it with routing.ts).
napi_value RouteSoftmax(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value a[8];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 8) return fail(env, "routeSoftmax: 8 arguments expected");
  void *lg, *ids, *wts, *probs;
  size_t lg_b, ids_b, wts_b, probs_b;
  if (!typed_data(env, a[0], &lg, &lg_b) || !typed_data(env, a[5], &ids, &ids_b) || !typed_data(env, a[6], &wts, &wts_b) || !typed_data(env, a[7], &probs, &probs_b)) {
    return fail(env, "routeSoftmax: typed arrays expected");
  }
  const size_t T = size_t(num(env, a[1])), E = size_t(num(env, a[2])), K = size_t(num(env, a[3]));
  if (K == 0 || K > E || lg_b < T * E * 4 || ids_b < T * K * 4 || wts_b < T * K * 4 || probs_b < T * E * 4) return fail(env, "routeSoftmax: sizes do not match T, E and K");
  for (size_t t = 0; t < T; t++) {
    moe::route_softmax(static_cast<const float*>(lg) + t * E, E, K, num(env, a[4]) == 1, static_cast<int32_t*>(ids) + t * K, static_cast<float*>(wts) + t * K,
                       static_cast<float*>(probs) + t * E);
  }
  return nullptr;
}

}  // namespace

namespace moe {

void register_decode(napi_env env, napi_value exports) {
  moe::napi::define_functions(env, exports, {
      {"decodePlan", DecodePlanNew},
      {"decodeStep", DecodeStep},
      {"routeSoftmax", RouteSoftmax},
  });
}

}  // namespace moe
