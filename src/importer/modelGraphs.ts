/**
 * The ONNX graphs of a model's dense (non-expert) parts and the one shared expert graph.
 * Activations are 2-D [T, H] (one sequence; T tokens), so weights keep Hugging Face's [out, in]
 * layout and are applied with Gemm(transB=1). The KV cache is [Hkv, S, hd] per layer.
 */
import { modelFeatures, type ModelDims } from "../architectures/ModelDims.js";
import { GraphBuilder } from "../onnx/GraphBuilder.js";
import type { ExpertActivation } from "../kernels/expertActivation.js";

/** Names of graph inputs and outputs, shared with the runtime that feeds them. */
export const IO = {
  embed: { ids: "input_ids", hidden: "hidden" },
  layer: {
    hidden: "hidden", // [T, H] residual stream in
    cos: "cos", // [T, hd] RoPE cosines for the T positions
    sin: "sin", // [T, hd]
    mask: "mask", // [T, S] additive attention mask, S = P + T
    pastKey: "past_key", // [Hkv, P, hd]
    pastValue: "past_value", // [Hkv, P, hd]
    attnOut: "attn_out", // [T, H] residual after attention
    moeIn: "moe_in", // [T, H] post-attention norm: the experts' and router's input (gate input)
    routerLogits: "router_logits", // [T, E]
    presentKey: "present_key", // [Hkv, S, hd]
    presentValue: "present_value",
    sharedOut: "shared_out", // [T, H] gated shared-expert output (only when the model has one)
  },
  head: { hidden: "hidden", logits: "logits" },
  expert: { x: "x", gate: "w_gate", up: "w_up", down: "w_down", y: "y" },
} as const;

/** Multi-head latent attention weights (ModelFeatures.mla), rope rows already in half-split order. */
export interface MlaWeights {
  qA?: Float32Array; // [rq, H]
  qABias?: Float32Array; // [rq]
  qANorm?: Float32Array; // [rq]
  qB: Float32Array; // [Hq*(dn+dr), rq or H]
  kvA: Float32Array; // [r+dr, H]
  kvABias?: Float32Array; // [r+dr]
  kvANorm: Float32Array; // [r]
  uk: Float32Array; // [Hq, dn, r]: per head W_uk (kv_b_proj's key rows)
  uv: Float32Array; // [Hq, dv, r]: per head W_uv (kv_b_proj's value rows)
}

export interface LayerWeights {
  inputNorm: Float32Array; // [H]
  inputNormBias?: Float32Array; // [H] (LayerNorm models)
  q?: Float32Array; // [Hq*hd, H] (absent with MLA)
  k?: Float32Array; // [Hkv*hd, H]
  v?: Float32Array; // [Hkv*hd, H]
  o: Float32Array; // [H, Hq*hd] (MLA: [H, Hq*dv])
  mla?: MlaWeights;
  qBias?: Float32Array; // [Hq*hd]
  kBias?: Float32Array; // [Hkv*hd]
  vBias?: Float32Array; // [Hkv*hd]
  qNorm?: Float32Array; // [hd] ("head") or [Hq*hd] ("full")
  kNorm?: Float32Array; // [hd] or [Hkv*hd]
  oBias?: Float32Array; // [H]
  sinks?: Float32Array; // [Hq] attention-sink logits
  postAttnNorm: Float32Array; // [H]
  postAttnNormBias?: Float32Array; // [H]
  router?: Float32Array; // [E, H]; absent in dense layers
  routerBias?: Float32Array; // [E]
  /** [E] added to the router's scores for selection only (grouped routers); read by the runtime, not the graph. */
  routerCorrectionBias?: Float32Array;
  /** Shared expert [Fs,H] [Fs,H] [H,Fs], gated by sigmoid(x . gateProj [1,H]) when gateProj is given; a dense layer's MLP. */
  shared?: { gate: Float32Array; up: Float32Array; down: Float32Array; gateProj?: Float32Array };
}

function rmsNorm(g: GraphBuilder, x: string, weight: string, eps: number): string {
  const ms = g.op("ReduceMean", [g.op("Mul", [x, x])], { axes: [-1], keepdims: 1 });
  const rms = g.op("Sqrt", [g.op("Add", [ms, g.constFloat([eps], [])])]);
  return g.op("Mul", [g.op("Div", [x, rms]), weight]);
}

/** The model's norm over the last axis: RMSNorm, or LayerNorm (weight and bias) when `bias` is given. */
function norm(g: GraphBuilder, x: string, weight: string, bias: string | undefined, eps: number): string {
  if (!bias) return rmsNorm(g, x, weight, eps);
  return g.op("LayerNormalization", [x, weight, bias], { axis: -1, epsilon: { float: eps } });
}

function linear(g: GraphBuilder, x: string, w: string, bias?: string): string {
  return g.op("Gemm", bias ? [x, w, bias] : [x, w], { transB: 1 });
}

export function swiglu(g: GraphBuilder, x: string, gate: string, up: string, down: string): string {
  const a = linear(g, x, gate);
  const act = g.op("Mul", [g.op("Mul", [a, g.op("Sigmoid", [a])]), linear(g, x, up)]);
  return linear(g, act, down);
}

/**
 * rotate_half over the first r dims as a constant [hd, hd] matrix: (x @ R)[:h] = -x[h:r],
 * (x @ R)[h:r] = x[:h] with h = r/2, and 0 for the dims that do not rotate. Exact in fp32.
 */
function rotateHalfMatrix(hd: number, rotaryDim: number): Float32Array {
  const h = rotaryDim / 2;
  const r = new Float32Array(hd * hd);
  for (let i = 0; i < h; i++) {
    r[(i + h) * hd + i] = -1; // out[i] = -x[i+h]
    r[i * hd + (i + h)] = 1; // out[i+h] = x[i]
  }
  return r;
}

export function buildEmbeddingGraph(d: ModelDims, embed: Float32Array): GraphBuilder {
  const g = new GraphBuilder("embed");
  const ids = g.input(IO.embed.ids, "int64", ["T"]);
  const w = g.weight("embed_tokens", embed, [d.vocabSize, d.hiddenSize]);
  g.output(g.op("Gather", [w, ids], { axis: 0 }), IO.embed.hidden, "float32", ["T", d.hiddenSize]);
  return g;
}

export function buildHeadGraph(d: ModelDims, w: { norm: Float32Array; normBias?: Float32Array; lmHead: Float32Array; lmHeadBias?: Float32Array }): GraphBuilder {
  const g = new GraphBuilder("head");
  const x = g.input(IO.head.hidden, "float32", ["T", d.hiddenSize]);
  const normBias = w.normBias ? g.weight("norm_bias", w.normBias, [d.hiddenSize]) : undefined;
  const normed = norm(g, x, g.weight("norm", w.norm, [d.hiddenSize]), normBias, d.rmsNormEps);
  const lmBias = w.lmHeadBias ? g.weight("lm_head_bias", w.lmHeadBias, [d.vocabSize]) : undefined;
  const logits = linear(g, normed, g.weight("lm_head", w.lmHead, [d.vocabSize, d.hiddenSize]), lmBias);
  g.output(logits, IO.head.logits, "float32", ["T", d.vocabSize]);
  return g;
}

/** One routed expert with its weights as inputs, so one session serves every expert. */
export function buildExpertGraph(d: ModelDims, o: { activation?: ExpertActivation; expertBias?: boolean } = {}): GraphBuilder {
  const g = new GraphBuilder("expert");
  const x = g.input(IO.expert.x, "float32", ["T", d.hiddenSize]);
  const wg = g.input(IO.expert.gate, "float32", [d.expertFfn, d.hiddenSize]);
  const wu = g.input(IO.expert.up, "float32", [d.expertFfn, d.hiddenSize]);
  const wd = g.input(IO.expert.down, "float32", [d.hiddenSize, d.expertFfn]);
  // With expert biases, three more inputs: b_gate [F], b_up [F], b_down [H].
  const bias = o.expertBias
    ? { gate: g.input("b_gate", "float32", [d.expertFfn]), up: g.input("b_up", "float32", [d.expertFfn]), down: g.input("b_down", "float32", [d.hiddenSize]) }
    : undefined;
  g.output(expertMlp(g, x, { gate: wg, up: wu, down: wd }, { activation: o.activation, bias }), IO.expert.y, "float32", ["T", d.hiddenSize]);
  return g;
}

/**
 * One expert on x [T, H] (kernels/expertActivation.ts): gate and up [F, H], down [H, F], biases
 * [F], [F], [H] when given. Silu without biases is swiglu() itself (the same graph as always).
 */
export function expertMlp(
  g: GraphBuilder,
  x: string,
  w: { gate: string; up: string; down: string },
  o: { activation?: ExpertActivation; bias?: { gate: string; up: string; down: string } } = {}
): string {
  const act = o.activation ?? { kind: "silu" };
  if (act.kind === "silu" && !o.bias) return swiglu(g, x, w.gate, w.up, w.down);
  let a = linear(g, x, w.gate, o.bias?.gate);
  let u = linear(g, x, w.up, o.bias?.up);
  let h: string;
  if (act.kind === "silu") h = g.op("Mul", [g.op("Mul", [a, g.op("Sigmoid", [a])]), u]);
  else {
    // gpt-oss: g = min(g, limit), u = clamp(u, -limit, limit), h = (u + 1) * g * sigmoid(alpha g).
    const limit = g.constFloat([act.limit], []);
    a = g.op("Min", [a, limit]);
    u = g.op("Clip", [u, g.constFloat([-act.limit], []), limit]);
    const glu = g.op("Mul", [a, g.op("Sigmoid", [g.op("Mul", [a, g.constFloat([act.alpha], [])])])]);
    h = g.op("Mul", [g.op("Add", [u, g.constFloat([1], [])]), glu]);
  }
  return linear(g, h, w.down, o.bias?.down);
}

interface AttentionInputs {
  cos: string; // [T, hd]
  sin: string; // [T, hd]
  mask: string; // [T, S]
  pastK: string; // [Hkv, P, hd]
}

/** Grouped-query attention: the heads' outputs [T, Hq*hd] (o_proj's input) and the updated cache. */
function gqaAttention(
  g: GraphBuilder,
  d: ModelDims,
  w: LayerWeights,
  x: string,
  bias: (name: string, b: Float32Array | undefined, n: number) => string | undefined,
  ins: AttentionInputs & { pastV: string }
): { merged: string; width: number; presentK: string; presentV: string } {
  const { hiddenSize: H, numHeads: Hq, numKvHeads: Hkv, headDim: hd } = d;
  const G = Hq / Hkv;
  const f = modelFeatures(d);
  const { cos, sin, mask, pastK, pastV } = ins;
  let q = linear(g, x, g.weight("q_proj", w.q!, [Hq * hd, H]), bias("q_bias", w.qBias, Hq * hd));
  let k = linear(g, x, g.weight("k_proj", w.k!, [Hkv * hd, H]), bias("k_bias", w.kBias, Hkv * hd));
  const v = linear(g, x, g.weight("v_proj", w.v!, [Hkv * hd, H]), bias("v_bias", w.vBias, Hkv * hd));
  if (d.qkNorm === "full") {
    q = rmsNorm(g, q, g.weight("q_norm", w.qNorm!, [Hq * hd]), d.rmsNormEps);
    k = rmsNorm(g, k, g.weight("k_norm", w.kNorm!, [Hkv * hd]), d.rmsNormEps);
  }
  // Head h of q uses kv head h / G (Hugging Face's repeat_kv order): [T, Hkv, G, hd].
  q = g.op("Reshape", [q, g.constInt64([-1, Hkv, G, hd])]);
  k = g.op("Reshape", [k, g.constInt64([-1, Hkv, hd])]);
  if (d.qkNorm === "head") {
    q = rmsNorm(g, q, g.weight("q_norm", w.qNorm!, [hd]), d.rmsNormEps);
    k = rmsNorm(g, k, g.weight("k_norm", w.kNorm!, [hd]), d.rmsNormEps);
  }
  q = g.op("Transpose", [q], { perm: [1, 2, 0, 3] }); // [Hkv, G, T, hd]
  k = g.op("Transpose", [k], { perm: [1, 0, 2] }); // [Hkv, T, hd]
  const vh = g.op("Transpose", [g.op("Reshape", [v, g.constInt64([-1, Hkv, hd])])], { perm: [1, 0, 2] });

  const rot = g.weight("rotate_half", rotateHalfMatrix(hd, f.rope.rotaryDim), [hd, hd]);
  const rope = (t: string) => g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [g.op("MatMul", [t, rot]), sin])]);
  q = rope(q);
  k = rope(k);

  const presentK = g.op("Concat", [pastK, k], { axis: 1 }); // [Hkv, S, hd]
  const presentV = g.op("Concat", [pastV, vh], { axis: 1 });
  const axis1 = g.constInt64([1]);
  const kT = g.op("Transpose", [g.op("Unsqueeze", [presentK, axis1])], { perm: [0, 1, 3, 2] }); // [Hkv, 1, hd, S]
  let scores = g.op("MatMul", [q, kT]); // [Hkv, G, T, S]
  const scale = f.attentionScale || 1 / Math.sqrt(hd);
  scores = g.op("Add", [g.op("Mul", [scores, g.constFloat([scale], [])]), mask]);
  let probs: string;
  if (w.sinks) {
    // Sinks: one more logit per head in each denominator, e^(s - m) / (sum e^(s' - m) + e^(sink - m)).
    const sink = g.weight("sinks", w.sinks, [Hkv, G, 1, 1]);
    const m = g.op("Max", [g.op("ReduceMax", [scores], { axes: [-1], keepdims: 1 }), sink]); // [Hkv, G, T, 1]
    const e = g.op("Exp", [g.op("Sub", [scores, m])]);
    const denom = g.op("Add", [g.op("ReduceSum", [e, g.constInt64([-1])], { keepdims: 1 }), g.op("Exp", [g.op("Sub", [sink, m])])]);
    probs = g.op("Div", [e, denom]);
  } else {
    probs = g.op("Softmax", [scores], { axis: -1 });
  }
  const ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [presentV, axis1])]); // [Hkv, G, T, hd]
  const merged = g.op("Reshape", [g.op("Transpose", [ctx], { perm: [2, 0, 1, 3] }), g.constInt64([-1, Hq * hd])]);
  return { merged, width: Hq * hd, presentK, presentV };
}

/**
 * Multi-head latent attention (DeepSeek-V2), absorbed: the cache holds rows [rms(c), rope(k_pe)]
 * [1, S, r + dr]; head h's query is [W_uk[h]^T q_nope[h], rope(q_pe[h])] and its output
 * W_uv[h] (softmax . rows)[:r]. Returns the heads' outputs [T, Hq*dv] and the updated cache.
 */
function mlaAttention(g: GraphBuilder, d: ModelDims, m: MlaWeights, x: string, ins: AttentionInputs): { merged: string; width: number; presentK: string; presentV?: string } {
  const f = modelFeatures(d);
  const spec = f.mla!;
  const { hiddenSize: H, numHeads: nh } = d;
  const { kvLoraRank: r, nopeDim: dn, ropeDim: dr, vDim: dv, qLoraRank: rq } = spec;
  const qk = dn + dr;
  const slice = (t: string, from: number, to: number, axis: number) => g.op("Slice", [t, g.constInt64([from]), g.constInt64([to]), g.constInt64([axis])]);
  const vec = (name: string, v: Float32Array | undefined, n: number) => (v ? g.weight(name, v, [n]) : undefined);
  let q: string;
  if (rq > 0) {
    const qa = rmsNorm(g, linear(g, x, g.weight("mla_q_a", m.qA!, [rq, H]), vec("mla_q_a_bias", m.qABias, rq)), g.weight("mla_q_a_norm", m.qANorm!, [rq]), 1e-6);
    q = linear(g, qa, g.weight("mla_q_b", m.qB, [nh * qk, rq]));
  } else {
    q = linear(g, x, g.weight("mla_q_b", m.qB, [nh * qk, H]));
  }
  q = g.op("Transpose", [g.op("Reshape", [q, g.constInt64([-1, nh, qk])])], { perm: [1, 0, 2] }); // [nh, T, qk]
  const kva = linear(g, x, g.weight("mla_kv_a", m.kvA, [r + dr, H]), vec("mla_kv_a_bias", m.kvABias, r + dr)); // [T, r + dr]
  const c = rmsNorm(g, slice(kva, 0, r, 1), g.weight("mla_kv_a_norm", m.kvANorm, [r]), 1e-6); // [T, r]
  // RoPE on the dr-dim parts (half-split: the importer permuted the interleaved rows).
  const cos = slice(ins.cos, 0, dr, 1);
  const sin = slice(ins.sin, 0, dr, 1);
  const rot = g.weight("mla_rotate_half", rotateHalfMatrix(dr, dr), [dr, dr]);
  const rope = (t: string) => g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [g.op("MatMul", [t, rot]), sin])]);
  const kpe = rope(slice(kva, r, r + dr, 1)); // [T, dr]
  const rows = g.op("Unsqueeze", [g.op("Concat", [c, kpe], { axis: 1 }), g.constInt64([0])]); // [1, T, r + dr]
  const presentK = g.op("Concat", [ins.pastK, rows], { axis: 1 }); // [1, S, r + dr]
  const qabs = g.op("MatMul", [slice(q, 0, dn, 2), g.weight("mla_uk", m.uk, [nh, dn, r])]); // [nh, T, r]
  const qlat = g.op("Concat", [qabs, rope(slice(q, dn, qk, 2))], { axis: 2 }); // [nh, T, r + dr]
  let scores = g.op("MatMul", [qlat, g.op("Transpose", [presentK], { perm: [0, 2, 1] })]); // [nh, T, S]
  scores = g.op("Add", [g.op("Mul", [scores, g.constFloat([f.attentionScale], [])]), ins.mask]);
  const lat = g.op("MatMul", [g.op("Softmax", [scores], { axis: -1 }), presentK]); // [nh, T, r + dr]
  const uvT = g.op("Transpose", [g.weight("mla_uv", m.uv, [nh, dv, r])], { perm: [0, 2, 1] }); // [nh, r, dv]
  const out = g.op("MatMul", [slice(lat, 0, r, 2), uvT]); // [nh, T, dv]
  const merged = g.op("Reshape", [g.op("Transpose", [out], { perm: [1, 0, 2] }), g.constInt64([-1, nh * dv])]);
  return { merged, width: nh * dv, presentK };
}

export function buildLayerGraph(d: ModelDims, layer: number, w: LayerWeights): GraphBuilder {
  const { hiddenSize: H, numHeads: Hq, numKvHeads: Hkv, headDim: hd, numExperts: E } = d;
  const G = Hq / Hkv;
  const f = modelFeatures(d);
  const L = IO.layer;
  const g = new GraphBuilder(`layer_${layer}`);
  const hidden = g.input(L.hidden, "float32", ["T", H]);
  const cos = g.input(L.cos, "float32", ["T", hd]);
  const sin = g.input(L.sin, "float32", ["T", hd]);
  const mask = g.input(L.mask, "float32", ["T", "S"]);
  const pastK = g.input(L.pastKey, "float32", [Hkv, "P", hd]);
  // Multi-head latent attention keeps only latent rows (as keys): no values.
  const pastV = w.mla ? undefined : g.input(L.pastValue, "float32", [Hkv, "P", hd]);

  const bias = (name: string, b: Float32Array | undefined, n: number) => (b ? g.weight(name, b, [n]) : undefined);
  const x = norm(g, hidden, g.weight("input_norm", w.inputNorm, [H]), bias("input_norm_bias", w.inputNormBias, H), d.rmsNormEps);
  const att = w.mla ? mlaAttention(g, d, w.mla, x, { cos, sin, mask, pastK }) : gqaAttention(g, d, w, x, bias, { cos, sin, mask, pastK, pastV: pastV! });
  const attnOut = g.op("Add", [hidden, linear(g, att.merged, g.weight("o_proj", w.o, [H, att.width]), bias("o_bias", w.oBias, H))]);

  const moeIn = norm(g, attnOut, g.weight("post_attention_norm", w.postAttnNorm, [H]), bias("post_attention_norm_bias", w.postAttnNormBias, H), d.rmsNormEps);
  g.output(attnOut, L.attnOut, "float32", ["T", H]);
  g.output(moeIn, L.moeIn, "float32", ["T", H]);
  if (w.router) {
    const routerLogits = linear(g, moeIn, g.weight("router", w.router, [E, H]), bias("router_bias", w.routerBias, E));
    g.output(routerLogits, L.routerLogits, "float32", ["T", E]);
    if (w.routerCorrectionBias) g.weight("router_correction_bias", w.routerCorrectionBias, [E]);
  }
  g.output(att.presentK, L.presentKey, "float32", [Hkv, "S", hd]);
  if (att.presentV) g.output(att.presentV, L.presentValue, "float32", [Hkv, "S", hd]);
  if (w.shared) {
    // The shared expert, or a dense layer's MLP (then of denseFfn and never gated).
    const s = w.shared;
    const Fs = s.up.length / H;
    let out = swiglu(g, moeIn, g.weight("shared_gate", s.gate, [Fs, H]), g.weight("shared_up", s.up, [Fs, H]), g.weight("shared_down", s.down, [H, Fs]));
    if (s.gateProj) out = g.op("Mul", [out, g.op("Sigmoid", [linear(g, moeIn, g.weight("shared_expert_gate", s.gateProj, [1, H]))])]);
    g.output(out, L.sharedOut, "float32", ["T", H]);
  }
  return g;
}
