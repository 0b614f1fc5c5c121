// Node-API glue for the native dense layer (dense_layer.h). Like the rest of the addon, nothing
// keeps a reference to JS memory after a call returns.
#include <node_api.h>

#include <string>

#include "dense_layer.h"
#include "napi_util.h"

namespace {

using moe::napi::kernel_isa_ok;
using moe::napi::num;
using moe::napi::typed_data;

napi_value fail(napi_env env, const std::string& msg) {
  napi_throw_range_error(env, nullptr, msg.c_str());
  return nullptr;
}

}  // namespace

namespace moe::napi {

// A layer's spec (Float64Array [H,Hq,Hkv,hd,E,Fs,eps,qkNorm,norm,attnScale,rot,window,qRank,kvRank,
// nope,ropeDim,vDim (MLA when kvRank > 0),kvF16]) and its weights: the blob and its section table
// (Float64Array [kSectionCount*3: offset (-1 absent), bytes, enc]), each section checked against
// the shape the spec gives it. False: thrown (`fn` names the call).
bool dense_weights(napi_env env, napi_value spec_v, napi_value blob_v, napi_value sec_v, const char* fn, moe::DenseSpec* out, moe::WeightRef* w) {
  void *spec_p, *blob_p, *sec_p;
  size_t spec_b, blob_b, sec_b;
  if (!typed_data(env, spec_v, &spec_p, &spec_b) || !typed_data(env, blob_v, &blob_p, &blob_b) || !typed_data(env, sec_v, &sec_p, &sec_b)) {
    napi_throw_type_error(env, nullptr, (std::string(fn) + ": spec, blob and sections must be typed arrays").c_str());
    return false;
  }
  const double* sp = static_cast<const double*>(spec_p);
  if (spec_b != 18 * 8 || sec_b != moe::kSectionCount * 3 * 8) return fail(env, std::string(fn) + ": spec or section table has the wrong length"), false;
  moe::DenseSpec s{size_t(sp[0]), size_t(sp[1]), size_t(sp[2]),  size_t(sp[3]),  size_t(sp[4]),  size_t(sp[5]),
                   float(sp[6]),  int(sp[7]),     int(sp[8]),      float(sp[9]),   size_t(sp[10]), size_t(sp[11]),
                   size_t(sp[12]), size_t(sp[13]), size_t(sp[14]), size_t(sp[15]), size_t(sp[16]), sp[17] == 1};
  const bool mla = s.kv_rank > 0;
  if (mla && s.kv_f16) return fail(env, std::string(fn) + ": an MLA latent cache is fp32 only"), false;
  if (mla && (s.Hkv != 1 || s.hd != s.kv_rank + s.rope_dim || s.rot != s.rope_dim || s.rope_dim % 2)) return fail(env, std::string(fn) + ": inconsistent MLA spec"), false;
  if (s.Hkv == 0 || s.Hq % s.Hkv || s.hd % 2 || s.rot % 2 || s.rot > s.hd || s.norm < 0 || s.norm > 1 || !(s.attn_scale > 0))
    return fail(env, std::string(fn) + ": inconsistent spec"), false;
  const size_t H = s.H, nq = s.Hq * s.hd, nkv = s.Hkv * s.hd;
  // Each section's expected shape: the blob must hold it whole, in the stated encoding.
  struct Shape { size_t rows, cols; bool required; };
  const bool has_shared = s.Fs > 0;
  const size_t qn = s.qk_norm == 1 ? s.hd : nq, kn = s.qk_norm == 1 ? s.hd : nkv;
  const size_t nv = mla ? s.Hq * s.v_dim : nq, qk = s.nope + s.rope_dim, L = s.kv_rank + s.rope_dim;
  const Shape shapes[moe::kSectionCount] = {
      {1, H, true}, {nq, H, !mla}, {nkv, H, !mla}, {nkv, H, !mla}, {H, nv, true},
      {1, nq, false}, {1, nkv, false}, {1, nkv, false}, {1, qn, s.qk_norm != 0}, {1, kn, s.qk_norm != 0},
      {1, H, true}, {s.E, H, s.E > 0}, {s.Fs, H, has_shared}, {s.Fs, H, has_shared}, {H, s.Fs, has_shared}, {1, H, false},
      {1, H, s.norm == 1}, {1, H, false}, {1, s.Hq, false}, {1, H, s.norm == 1}, {1, s.E, false},
      {s.q_rank, H, mla && s.q_rank > 0}, {1, s.q_rank, false}, {1, s.q_rank, mla && s.q_rank > 0},
      {s.Hq * qk, s.q_rank ? s.q_rank : H, mla}, {L, H, mla}, {1, L, false}, {1, s.kv_rank, mla},
      {s.Hq * s.kv_rank, s.nope, mla}, {s.Hq * s.v_dim, s.kv_rank, mla},
  };
  const double* sec = static_cast<const double*>(sec_p);
  for (int i = 0; i < moe::kSectionCount; i++) {
    const double off = sec[i * 3], bytes = sec[i * 3 + 1];
    const int enc = int(sec[i * 3 + 2]);
    w[i] = moe::WeightRef{};
    if (off < 0) {
      if (shapes[i].required) return fail(env, std::string(fn) + ": section " + std::to_string(i) + " is missing"), false;
      continue;
    }
    if (enc < 0 || enc >= moe::kEncCount) return fail(env, std::string(fn) + ": bad encoding in section " + std::to_string(i)), false;
    const auto e = static_cast<moe::Enc>(enc);
    // Matrices go through matmul_rows in any encoding (rows of whole blocks); the rest are read as fp32.
    const bool matrix = i == moe::kQ || i == moe::kK || i == moe::kV || i == moe::kO || i == moe::kRouter || i == moe::kSharedGate || i == moe::kSharedUp ||
                        i == moe::kSharedDown || i == moe::kMlaQA || i == moe::kMlaQB || i == moe::kMlaKvA || i == moe::kMlaUkT || i == moe::kMlaUv;
    if (matrix ? shapes[i].cols % moe::enc_row_multiple(e) != 0 : e != moe::Enc::F32) {
      return fail(env, std::string(fn) + ": section " + std::to_string(i) + (matrix ? " has rows that are not whole blocks of its encoding" : " must be F32")), false;
    }
    // Per-head slices of the MLA up-projections are taken by row offset: whole-row encodings only.
    if ((i == moe::kMlaUkT || i == moe::kMlaUv) && e != moe::Enc::F32 && e != moe::Enc::F16) return fail(env, std::string(fn) + ": MLA up-projections must be F32 or F16"), false;
    if (size_t(bytes) != moe::matrix_bytes(e, shapes[i].rows, shapes[i].cols) || off + bytes > double(blob_b)) {
      return fail(env, std::string(fn) + ": section " + std::to_string(i) + " does not match its shape or lies outside the blob"), false;
    }
    w[i].p = static_cast<const uint8_t*>(blob_p) + size_t(off);
    w[i].enc = e;
  }
  *out = s;
  return true;
}

}  // namespace moe::napi

namespace {

// denseLayer(spec, blob, sections (dense_weights), hidden, T, past, cos, sin, kvK, kvV, capacity,
//            attnOut, moeIn, routerLogits, sharedOut|null, threads); kvK/kvV are Uint16Array halves
//            when the spec's kvF16 is 1.
napi_value DenseLayer(napi_env env, napi_callback_info info) {
  if (!kernel_isa_ok(env)) return nullptr;
  size_t argc = 16;
  napi_value a[16];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 16) return fail(env, "denseLayer: 16 arguments expected");
  moe::DenseSpec s{};
  moe::WeightRef w[moe::kSectionCount];
  if (!moe::napi::dense_weights(env, a[0], a[1], a[2], "denseLayer", &s, w)) return nullptr;
  void *hidden, *cos, *sin, *kv_k, *kv_v, *attn_out, *moe_in, *logits, *shared = nullptr;
  size_t hidden_b, cos_b, sin_b, kvk_b, kvv_b, attn_b, moe_b, logits_b, shared_b = 0;
  if (!typed_data(env, a[3], &hidden, &hidden_b) || !typed_data(env, a[6], &cos, &cos_b) || !typed_data(env, a[7], &sin, &sin_b) ||
      !typed_data(env, a[8], &kv_k, &kvk_b) || !typed_data(env, a[9], &kv_v, &kvv_b) || !typed_data(env, a[11], &attn_out, &attn_b) ||
      !typed_data(env, a[12], &moe_in, &moe_b) || !typed_data(env, a[13], &logits, &logits_b)) {
    napi_throw_type_error(env, nullptr, "denseLayer: buffers must be typed arrays");
    return nullptr;
  }
  typed_data(env, a[14], &shared, &shared_b);  // null when the model has no shared expert
  const size_t T = size_t(num(env, a[4])), past = size_t(num(env, a[5])), cap = size_t(num(env, a[10]));
  const int threads = int(num(env, a[15]));
  if (T == 0) return fail(env, "denseLayer: inconsistent spec");
  const bool mla = s.kv_rank > 0, has_shared = s.Fs > 0;
  const size_t H = s.H, nkv = s.Hkv * s.hd, el = s.kv_f16 ? 2 : 4;  // el: bytes per cached value
  if (hidden_b < T * H * 4 || attn_b < T * H * 4 || moe_b < T * H * 4 || logits_b < T * s.E * 4 || cos_b < T * s.hd * 4 || sin_b < T * s.hd * 4 ||
      past + T > cap || kvk_b < nkv * cap * el || (!mla && kvv_b < nkv * cap * el) || (has_shared && shared && shared_b < T * H * 4)) {
    return fail(env, "denseLayer: buffer sizes do not match the spec, T and the cache capacity");
  }
  moe::layer_forward(s, w, static_cast<const float*>(hidden), T, past, static_cast<const float*>(cos), static_cast<const float*>(sin),
                     kv_k, kv_v, cap, static_cast<float*>(attn_out), static_cast<float*>(moe_in),
                     static_cast<float*>(logits), has_shared ? static_cast<float*>(shared) : nullptr, threads);
  return nullptr;
}

// rmsNorm(x: Float32Array [T,n], T, n, w: Float32Array [n], eps, out: Float32Array [T,n])
napi_value RmsNorm(napi_env env, napi_callback_info info) {
  if (!kernel_isa_ok(env)) return nullptr;
  size_t argc = 6;
  napi_value a[6];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 6) return fail(env, "rmsNorm: 6 arguments expected");
  void *x, *w, *out;
  size_t xb, wb, ob;
  if (!typed_data(env, a[0], &x, &xb) || !typed_data(env, a[3], &w, &wb) || !typed_data(env, a[5], &out, &ob)) return fail(env, "rmsNorm: typed arrays expected");
  const size_t T = size_t(num(env, a[1])), n = size_t(num(env, a[2]));
  if (xb < T * n * 4 || ob < T * n * 4 || wb < n * 4) return fail(env, "rmsNorm: buffer sizes do not match T and n");
  moe::rms_norm(static_cast<const float*>(x), T, n, static_cast<const float*>(w), float(num(env, a[4])), static_cast<float*>(out));
  return nullptr;
}

// layerNorm(x: Float32Array [T,n], T, n, w: Float32Array [n], b: Float32Array [n], eps, out: Float32Array [T,n])
napi_value LayerNorm(napi_env env, napi_callback_info info) {
  if (!kernel_isa_ok(env)) return nullptr;
  size_t argc = 7;
  napi_value a[7];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 7) return fail(env, "layerNorm: 7 arguments expected");
  void *x, *w, *b, *out;
  size_t xb, wb, bb, ob;
  if (!typed_data(env, a[0], &x, &xb) || !typed_data(env, a[3], &w, &wb) || !typed_data(env, a[4], &b, &bb) || !typed_data(env, a[6], &out, &ob))
    return fail(env, "layerNorm: typed arrays expected");
  const size_t T = size_t(num(env, a[1])), n = size_t(num(env, a[2]));
  if (xb < T * n * 4 || ob < T * n * 4 || wb < n * 4 || bb < n * 4) return fail(env, "layerNorm: buffer sizes do not match T and n");
  moe::layer_norm(static_cast<const float*>(x), T, n, static_cast<const float*>(w), static_cast<const float*>(b), float(num(env, a[5])),
                  static_cast<float*>(out));
  return nullptr;
}

// matmul(enc, w: Uint8Array [rows,cols] encoded, rows, cols, x: Float32Array [T,cols], T, y: Float32Array [T,rows], threads)
napi_value Matmul(napi_env env, napi_callback_info info) {
  if (!kernel_isa_ok(env)) return nullptr;
  size_t argc = 8;
  napi_value a[8];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 8) return fail(env, "matmul: 8 arguments expected");
  void *w, *x, *y;
  size_t wb, xb, yb;
  if (!typed_data(env, a[1], &w, &wb) || !typed_data(env, a[4], &x, &xb) || !typed_data(env, a[6], &y, &yb)) return fail(env, "matmul: typed arrays expected");
  const int enc = int(num(env, a[0]));
  const size_t rows = size_t(num(env, a[2])), cols = size_t(num(env, a[3])), T = size_t(num(env, a[5]));
  if (enc < 0 || enc >= moe::kEncCount) return fail(env, "matmul: bad encoding");
  const auto e = static_cast<moe::Enc>(enc);
  if (cols % moe::enc_row_multiple(e) || wb != moe::matrix_bytes(e, rows, cols) || xb < T * cols * 4 || yb < T * rows * 4) {
    return fail(env, "matmul: buffer sizes do not match rows, cols, T and the encoding");
  }
  moe::matmul_rows(e, static_cast<const uint8_t*>(w), rows, cols, static_cast<const float*>(x), T, static_cast<float*>(y), int(num(env, a[7])));
  return nullptr;
}

// gatherRows(enc (F32 or F16), w: Uint8Array [rows,cols], rows, cols, ids: Int32Array [n], out: Float32Array [n,cols])
napi_value GatherRows(napi_env env, napi_callback_info info) {
  if (!kernel_isa_ok(env)) return nullptr;
  size_t argc = 6;
  napi_value a[6];
  if (napi_get_cb_info(env, info, &argc, a, nullptr, nullptr) != napi_ok || argc < 6) return fail(env, "gatherRows: 6 arguments expected");
  void *w, *ids, *out;
  size_t wb, ib, ob;
  if (!typed_data(env, a[1], &w, &wb) || !typed_data(env, a[4], &ids, &ib) || !typed_data(env, a[5], &out, &ob)) return fail(env, "gatherRows: typed arrays expected");
  const int enc = int(num(env, a[0]));
  const size_t rows = size_t(num(env, a[2])), cols = size_t(num(env, a[3])), n = ib / 4;
  if (enc != 0 && enc != 1) return fail(env, "gatherRows: F32 or F16 rows only");
  const auto e = static_cast<moe::Enc>(enc);
  if (wb != moe::matrix_bytes(e, rows, cols) || ob < n * cols * 4) return fail(env, "gatherRows: buffer sizes do not match rows, cols and ids");
  const int32_t* id = static_cast<const int32_t*>(ids);
  for (size_t i = 0; i < n; i++)
    if (id[i] < 0 || size_t(id[i]) >= rows) return fail(env, "gatherRows: token id " + std::to_string(id[i]) + " outside the vocabulary");
  moe::gather_rows(e, static_cast<const uint8_t*>(w), rows, cols, id, n, static_cast<float*>(out));
  return nullptr;
}

}  // namespace

namespace moe {

void register_dense(napi_env env, napi_value exports) {
  moe::napi::define_functions(env, exports, {
      {"denseLayer", DenseLayer},
      {"rmsNorm", RmsNorm},
      {"layerNorm", LayerNorm},
      {"matmul", Matmul},
      {"gatherRows", GatherRows},
  });
}

}  // namespace moe
