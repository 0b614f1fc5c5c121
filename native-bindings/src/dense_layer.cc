#include "dense_layer.h"

#include "kernels_isa.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace moe {

void rms_norm(const float* x, size_t T, size_t n, const float* w, float eps, float* out) {
  for (size_t t = 0; t < T; t++) {
    const float* xr = x + t * n;
    float* o = out + t * n;
    double ss = 0;  // double: the mean of squares of a few thousand values, rounded once
    for (size_t i = 0; i < n; i++) ss += double(xr[i]) * xr[i];
    const float rms = std::sqrt(float(ss / double(n)) + eps);
    for (size_t i = 0; i < n; i++) o[i] = xr[i] / rms * w[i];
  }
}

void layer_norm(const float* x, size_t T, size_t n, const float* w, const float* b, float eps, float* out) {
  for (size_t t = 0; t < T; t++) {
    const float* xr = x + t * n;
    float* o = out + t * n;
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += xr[i];
    const float mean = float(sum / double(n));
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += double(xr[i] - mean) * double(xr[i] - mean);
    const float sd = std::sqrt(float(ss / double(n)) + eps);
    for (size_t i = 0; i < n; i++) o[i] = (xr[i] - mean) / sd * w[i] + b[i];
  }
}

void gather_rows(Enc enc, const uint8_t* w, size_t rows, size_t cols, const int32_t* ids, size_t n, float* out) {
  (void)rows;
  for (size_t i = 0; i < n; i++) {
    const size_t r = size_t(ids[i]);
    if (enc == Enc::F16) {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(w) + r * cols;
      for (size_t c = 0; c < cols; c++) out[i * cols + c] = half_to_float(p[c]);
    } else {
      std::memcpy(out + i * cols, w + r * cols * 4, cols * 4);
    }
  }
}

static inline const float* f32(const WeightRef& r) { return reinterpret_cast<const float*>(r.p); }

// RoPE, half-split layout over the first `rot` dims, in place on [T, heads, hd] rows:
// x' = x*cos + rotate_half(x)*sin; dims from rot on pass through. cos/sin are [T, table] (table
// = hd unless given: MLA rotates sub-rows of a wider head).
static void rope(float* x, size_t T, size_t heads, size_t hd, size_t rot, const float* cos, const float* sin, size_t table = 0) {
  const size_t h = rot / 2;
  if (!table) table = hd;
  std::vector<float> tmp(rot);
  for (size_t t = 0; t < T; t++) {
    const float* c = cos + t * table;
    const float* s = sin + t * table;
    for (size_t k = 0; k < heads; k++) {
      float* v = x + (t * heads + k) * hd;
      for (size_t i = 0; i < h; i++) {
        tmp[i] = v[i] * c[i] + (-v[i + h]) * s[i];
        tmp[i + h] = v[i + h] * c[i + h] + v[i] * s[i + h];
      }
      std::memcpy(v, tmp.data(), rot * 4);
    }
  }
}

// Asks for the first cached keys and values of every kv head of this layer before its q/k/v
// projections run, so attention finds them in cache. The expert stream of the layer before has
// evicted them; the attention kernel prefetches four blocks ahead of itself, but its first blocks
// come from memory one dependent miss after another. Up to kKvWarmBytes a layer (the kernel's own
// prefetch covers the rest of a long context). 600m int8 decode at ~120 positions, 1 thread:
// attention 19.9 -> 15.7 us a layer in one instrumented run, unchanged in a later one; in-process
// A/B 1.014x (10 rounds, none slower). A small gain: a cold layer's attention takes ~15 us against
// 4.3 hot, and touching the cache first costs ~8 us by itself (8 short streams).
constexpr size_t kKvWarmBytes = size_t(128) << 10;

static void warm_kv(const DenseSpec& s, const void* kv_k, const void* kv_v, size_t capacity, size_t past) {
  const size_t el = s.kv_f16 ? 2 : 4, row = s.hd * el;
  const size_t first = s.window && past > s.window ? past - s.window : 0;
  const size_t n = std::min(past - first, kKvWarmBytes / (2 * row * s.Hkv));  // positions per head
  for (size_t g = 0; g < s.Hkv; g++) {
    const char* k = static_cast<const char*>(kv_k) + (g * capacity + first) * row;
    const char* v = static_cast<const char*>(kv_v) + (g * capacity + first) * row;
    for (size_t off = 0; off < n * row; off += 64) {
      __builtin_prefetch(k + off, 0, 3);
      __builtin_prefetch(v + off, 0, 3);
    }
  }
}

// ctx[T, Hq*hd] from q [T, Hq*hd] and the cache's first past+T positions (causal).
static void attention(const DenseSpec& s, const float* q, const void* kv_k, const void* kv_v, size_t capacity, size_t past,
                      size_t T, const float* sinks, float* ctx, int threads) {
  const size_t hd = s.hd, G = s.Hq / s.Hkv;
  const float scale = s.attn_scale;
  const KernelTable* k = active_kernels();
  // One task per (kv head, token): the G query heads sharing a kv head read its cache once.
  // Heads of a group are adjacent in q and ctx (head h reads kv head h / G).
  auto work = [&](size_t begin, size_t end) {
    std::vector<float> scores(G * (past + T));  // [G, S] scratch
    for (size_t task = begin; task < end; task++) {
      const size_t g = task / T, t = task % T;
      // Keys [first, past + t]: all before the query, or the last `window` of them.
      const size_t seen = past + t + 1, first = s.window && seen > s.window ? seen - s.window : 0;
      const size_t row = (g * capacity + first) * hd, el = s.kv_f16 ? 2 : 4;  // the first key's offset, in elements
      k->attend(q + t * s.Hq * hd + g * G * hd, G, static_cast<const uint8_t*>(kv_k) + row * el, static_cast<const uint8_t*>(kv_v) + row * el,
                s.kv_f16, seen - first, hd, scale, sinks ? sinks + g * G : nullptr, scores.data(), ctx + t * s.Hq * hd + g * G * hd);
    }
  };
  parallel_for(threads, s.Hkv * T, work);
}

// Multi-head latent attention over the latent cache kv_k [capacity, kv_rank + rope] (hd = that
// width): x [T, H] normed input -> ctx [T, Hq*v_dim]. Per head h: q_lat = [W_uk[h]^T q_nope[h],
// rope(q_pe[h])], scores against the cached rows [c, rope(k_pe)], the softmax's average of the
// rows' c parts mapped back through W_uv[h]. The latent norms use eps 1e-6, as DeepSeek's do.
static void mla_attention(const DenseSpec& s, const WeightRef* w, const float* x, size_t T, size_t past, const float* cos, const float* sin,
                          float* kv_k, size_t capacity, float* ctx, int threads) {
  const size_t H = s.H, nh = s.Hq, r = s.kv_rank, dn = s.nope, dr = s.rope_dim, dv = s.v_dim, L = r + dr, qk = dn + dr;
  const auto add_bias = [T](float* y, size_t n, const WeightRef& b) {
    if (!b.p) return;
    for (size_t t = 0; t < T; t++)
      for (size_t i = 0; i < n; i++) y[t * n + i] += f32(b)[i];
  };
  std::vector<float> q(T * nh * qk), kva(T * L);  // [T, nh*(dn+dr)], [T, r+dr]
  if (s.q_rank) {
    std::vector<float> qa(T * s.q_rank);  // [T, q_rank]
    const MatmulJob a[2] = {{w[kMlaQA].enc, w[kMlaQA].p, s.q_rank, H, x, T, qa.data()}, {w[kMlaKvA].enc, w[kMlaKvA].p, L, H, x, T, kva.data()}};
    matmul_rows_batch(a, 2, threads);
    add_bias(qa.data(), s.q_rank, w[kMlaQABias]);
    rms_norm(qa.data(), T, s.q_rank, f32(w[kMlaQANorm]), 1e-6f, qa.data());
    matmul_rows(w[kMlaQB].enc, w[kMlaQB].p, nh * qk, s.q_rank, qa.data(), T, q.data(), threads);
  } else {
    const MatmulJob a[2] = {{w[kMlaQB].enc, w[kMlaQB].p, nh * qk, H, x, T, q.data()}, {w[kMlaKvA].enc, w[kMlaKvA].p, L, H, x, T, kva.data()}};
    matmul_rows_batch(a, 2, threads);
  }
  add_bias(kva.data(), L, w[kMlaKvABias]);
  // The new latent rows: [rms(c), rope(k_pe)], appended to the cache.
  for (size_t t = 0; t < T; t++) {
    float* row = kva.data() + t * L;
    rms_norm(row, 1, r, f32(w[kMlaKvANorm]), 1e-6f, row);
  }
  rope(kva.data() + r, T, 1, L, dr, cos, sin, L);  // rows of stride L: the rope part only
  for (size_t t = 0; t < T; t++) std::memcpy(kv_k + (past + t) * L, kva.data() + t * L, L * 4);
  // Queries in latent space [T, nh, L]: absorbed nope part, rotated rope part.
  std::vector<float> qlat(T * nh * L), qn(T * dn);  // qn: one head's nope queries [T, dn]
  rope(q.data() + dn, T, nh, qk, dr, cos, sin, L);
  for (size_t h = 0; h < nh; h++) {
    for (size_t t = 0; t < T; t++) std::memcpy(qn.data() + t * dn, q.data() + (t * nh + h) * qk, dn * 4);
    std::vector<float> qa(T * r);  // [T, r]
    matmul_rows(w[kMlaUkT].enc, w[kMlaUkT].p + matrix_bytes(w[kMlaUkT].enc, h * r, dn), r, dn, qn.data(), T, qa.data(), threads);
    for (size_t t = 0; t < T; t++) {
      std::memcpy(qlat.data() + (t * nh + h) * L, qa.data() + t * r, r * 4);
      std::memcpy(qlat.data() + (t * nh + h) * L + r, q.data() + (t * nh + h) * qk + dn, dr * 4);
    }
  }
  // Attention of all heads over the latent rows (values = the rows; their c part is used), in
  // groups of at most 16 heads (the SIMD kernel's register budget).
  const KernelTable* k = active_kernels();
  std::vector<float> lat(T * nh * L);  // [T, nh, L] latent contexts
  auto work = [&](size_t begin, size_t end) {
    std::vector<float> scores(16 * (past + T));
    for (size_t task = begin; task < end; task++) {
      const size_t t = task;
      const size_t seen = past + t + 1, first = s.window && seen > s.window ? seen - s.window : 0;
      for (size_t h0 = 0; h0 < nh; h0 += 16) {
        const size_t G = nh - h0 < 16 ? nh - h0 : 16;
        k->attend(qlat.data() + (t * nh + h0) * L, G, kv_k + first * L, kv_k + first * L, false, seen - first, L, s.attn_scale, nullptr,
                  scores.data(), lat.data() + (t * nh + h0) * L);
      }
    }
  };
  parallel_for(threads, T, work);
  // Back to value space per head: ctx[t, h] = W_uv[h] lat[t, h, :r].
  std::vector<float> lc(T * r), vo(T * dv);  // one head's latent contexts [T, r] and values [T, dv]
  for (size_t h = 0; h < nh; h++) {
    for (size_t t = 0; t < T; t++) std::memcpy(lc.data() + t * r, lat.data() + (t * nh + h) * L, r * 4);
    matmul_rows(w[kMlaUv].enc, w[kMlaUv].p + matrix_bytes(w[kMlaUv].enc, h * dv, r), dv, r, lc.data(), T, vo.data(), threads);
    for (size_t t = 0; t < T; t++) std::memcpy(ctx + (t * nh + h) * dv, vo.data() + t * dv, dv * 4);
  }
}

void layer_forward(const DenseSpec& s, const WeightRef* w, const float* hidden, size_t T, size_t past, const float* cos,
                   const float* sin, void* kv_k, void* kv_v, size_t capacity, float* attn_out, float* moe_in,
                   float* router_logits, float* shared_out, int threads) {
  const size_t H = s.H, hd = s.hd, nq = s.Hq * hd, nkv = s.Hkv * hd;
  std::vector<float> x(T * H), q(T * nq), k(T * nkv), v(T * nkv), ctx(T * nq);  // [T, *] activations
  const auto norm = [&](const float* in, int weight, int bias, float* out) {
    if (s.norm == 1) layer_norm(in, T, H, f32(w[weight]), f32(w[bias]), s.eps, out);
    else rms_norm(in, T, H, f32(w[weight]), s.eps, out);
  };
  norm(hidden, kInNorm, kInNormBias, x.data());
  const auto add_bias = [T](float* y, size_t n, const WeightRef& b) {
    if (!b.p) return;
    for (size_t t = 0; t < T; t++)
      for (size_t i = 0; i < n; i++) y[t * n + i] += f32(b)[i];
  };
  if (s.kv_rank) {
    std::vector<float> mctx(T * s.Hq * s.v_dim);  // [T, Hq*v_dim]
    mla_attention(s, w, x.data(), T, past, cos, sin, static_cast<float*>(kv_k), capacity, mctx.data(), threads);
    matmul_rows(w[kO].enc, w[kO].p, H, s.Hq * s.v_dim, mctx.data(), T, attn_out, threads);
  } else {
  if (past > 0) warm_kv(s, kv_k, kv_v, capacity, past);
  const MatmulJob qkv[3] = {
      {w[kQ].enc, w[kQ].p, nq, H, x.data(), T, q.data()},
      {w[kK].enc, w[kK].p, nkv, H, x.data(), T, k.data()},
      {w[kV].enc, w[kV].p, nkv, H, x.data(), T, v.data()},
  };
  matmul_rows_batch(qkv, 3, threads);
  add_bias(q.data(), nq, w[kQBias]);
  add_bias(k.data(), nkv, w[kKBias]);
  add_bias(v.data(), nkv, w[kVBias]);
  if (s.qk_norm == 2) {
    rms_norm(q.data(), T, nq, f32(w[kQNorm]), s.eps, q.data());
    rms_norm(k.data(), T, nkv, f32(w[kKNorm]), s.eps, k.data());
  } else if (s.qk_norm == 1) {
    rms_norm(q.data(), T * s.Hq, hd, f32(w[kQNorm]), s.eps, q.data());
    rms_norm(k.data(), T * s.Hkv, hd, f32(w[kKNorm]), s.eps, k.data());
  }
  rope(q.data(), T, s.Hq, hd, s.rot, cos, sin);
  rope(k.data(), T, s.Hkv, hd, s.rot, cos, sin);
  for (size_t t = 0; t < T; t++)
    for (size_t g = 0; g < s.Hkv; g++) {
      const size_t at = (g * capacity + past + t) * hd;
      const float* kr = k.data() + (t * s.Hkv + g) * hd;
      const float* vr = v.data() + (t * s.Hkv + g) * hd;
      if (s.kv_f16) {
        uint16_t* kh = static_cast<uint16_t*>(kv_k) + at;
        uint16_t* vh = static_cast<uint16_t*>(kv_v) + at;
        for (size_t i = 0; i < hd; i++) {
          kh[i] = float_to_half(kr[i]);
          vh[i] = float_to_half(vr[i]);
        }
      } else {
        std::memcpy(static_cast<float*>(kv_k) + at, kr, hd * 4);
        std::memcpy(static_cast<float*>(kv_v) + at, vr, hd * 4);
      }
    }
  attention(s, q.data(), kv_k, kv_v, capacity, past, T, w[kSinks].p ? f32(w[kSinks]) : nullptr, ctx.data(), threads);
  matmul_rows(w[kO].enc, w[kO].p, H, nq, ctx.data(), T, attn_out, threads);
  }
  add_bias(attn_out, H, w[kOBias]);
  for (size_t i = 0; i < T * H; i++) attn_out[i] += hidden[i];
  norm(attn_out, kPostNorm, kPostNormBias, moe_in);
  if (s.E > 0) {  // dense layers have no router
    matmul_rows(w[kRouter].enc, w[kRouter].p, s.E, H, moe_in, T, router_logits, threads);
    add_bias(router_logits, s.E, w[kRouterBias]);
  }
  if (s.Fs && shared_out) {
    std::vector<float> g(T * s.Fs), u(T * s.Fs);  // [T, Fs]
    const MatmulJob gu[2] = {
        {w[kSharedGate].enc, w[kSharedGate].p, s.Fs, H, moe_in, T, g.data()},
        {w[kSharedUp].enc, w[kSharedUp].p, s.Fs, H, moe_in, T, u.data()},
    };
    matmul_rows_batch(gu, 2, threads);
    active_kernels()->silu_mul(g.data(), u.data(), T * s.Fs);
    matmul_rows(w[kSharedDown].enc, w[kSharedDown].p, H, s.Fs, g.data(), T, shared_out, threads);
    const float* gp = f32(w[kSharedProj]);  // null: ungated (GLM/DeepSeek shared experts, dense MLPs)
    for (size_t t = 0; gp && t < T; t++) {
      float a = 0.f;
      for (size_t i = 0; i < H; i++) a += moe_in[t * H + i] * gp[i];
      const float gate = 1.f / (1.f + std::exp(-a));
      for (size_t i = 0; i < H; i++) shared_out[t * H + i] *= gate;
    }
  }
}

}  // namespace moe
