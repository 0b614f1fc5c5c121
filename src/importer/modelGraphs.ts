/**
 * The ONNX graphs of a model's dense (non-expert) parts and the one shared expert graph.
 * Activations are 2-D [T, H] (one sequence; T tokens), so weights keep Hugging Face's [out, in]
 * layout and are applied with Gemm(transB=1). The KV cache is [Hkv, S, hd] per layer.
 */
import type { ModelDims } from "../architectures/ModelDims.js";
import { GraphBuilder } from "../onnx/GraphBuilder.js";

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

export interface LayerWeights {
  inputNorm: Float32Array; // [H]
  q: Float32Array; // [Hq*hd, H]
  k: Float32Array; // [Hkv*hd, H]
  v: Float32Array; // [Hkv*hd, H]
  o: Float32Array; // [H, Hq*hd]
  qBias?: Float32Array; // [Hq*hd]
  kBias?: Float32Array; // [Hkv*hd]
  vBias?: Float32Array; // [Hkv*hd]
  qNorm?: Float32Array; // [hd] ("head") or [Hq*hd] ("full")
  kNorm?: Float32Array; // [hd] or [Hkv*hd]
  postAttnNorm: Float32Array; // [H]
  router: Float32Array; // [E, H]
  shared?: { gate: Float32Array; up: Float32Array; down: Float32Array; gateProj: Float32Array }; // [Fs,H] [Fs,H] [H,Fs] [1,H]
}

function rmsNorm(g: GraphBuilder, x: string, weight: string, eps: number): string {
  const ms = g.op("ReduceMean", [g.op("Mul", [x, x])], { axes: [-1], keepdims: 1 });
  const rms = g.op("Sqrt", [g.op("Add", [ms, g.constFloat([eps], [])])]);
  return g.op("Mul", [g.op("Div", [x, rms]), weight]);
}

function linear(g: GraphBuilder, x: string, w: string, bias?: string): string {
  return g.op("Gemm", bias ? [x, w, bias] : [x, w], { transB: 1 });
}

export function swiglu(g: GraphBuilder, x: string, gate: string, up: string, down: string): string {
  const a = linear(g, x, gate);
  const act = g.op("Mul", [g.op("Mul", [a, g.op("Sigmoid", [a])]), linear(g, x, up)]);
  return linear(g, act, down);
}

/** rotate_half as a constant [hd, hd] matrix: (x @ R)[:h] = -x[h:], (x @ R)[h:] = x[:h]. Exact in fp32. */
function rotateHalfMatrix(hd: number): Float32Array {
  const h = hd / 2;
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

export function buildHeadGraph(d: ModelDims, norm: Float32Array, lmHead: Float32Array): GraphBuilder {
  const g = new GraphBuilder("head");
  const x = g.input(IO.head.hidden, "float32", ["T", d.hiddenSize]);
  const normed = rmsNorm(g, x, g.weight("norm", norm, [d.hiddenSize]), d.rmsNormEps);
  const logits = linear(g, normed, g.weight("lm_head", lmHead, [d.vocabSize, d.hiddenSize]));
  g.output(logits, IO.head.logits, "float32", ["T", d.vocabSize]);
  return g;
}

/** One routed expert with its weights as inputs, so one session serves every expert. */
export function buildExpertGraph(d: ModelDims): GraphBuilder {
  const g = new GraphBuilder("expert");
  const x = g.input(IO.expert.x, "float32", ["T", d.hiddenSize]);
  const wg = g.input(IO.expert.gate, "float32", [d.expertFfn, d.hiddenSize]);
  const wu = g.input(IO.expert.up, "float32", [d.expertFfn, d.hiddenSize]);
  const wd = g.input(IO.expert.down, "float32", [d.hiddenSize, d.expertFfn]);
  g.output(swiglu(g, x, wg, wu, wd), IO.expert.y, "float32", ["T", d.hiddenSize]);
  return g;
}

export function buildLayerGraph(d: ModelDims, layer: number, w: LayerWeights): GraphBuilder {
  const { hiddenSize: H, numHeads: Hq, numKvHeads: Hkv, headDim: hd, numExperts: E } = d;
  const G = Hq / Hkv;
  const L = IO.layer;
  const g = new GraphBuilder(`layer_${layer}`);
  const hidden = g.input(L.hidden, "float32", ["T", H]);
  const cos = g.input(L.cos, "float32", ["T", hd]);
  const sin = g.input(L.sin, "float32", ["T", hd]);
  const mask = g.input(L.mask, "float32", ["T", "S"]);
  const pastK = g.input(L.pastKey, "float32", [Hkv, "P", hd]);
  const pastV = g.input(L.pastValue, "float32", [Hkv, "P", hd]);

  const x = rmsNorm(g, hidden, g.weight("input_norm", w.inputNorm, [H]), d.rmsNormEps);
  const bias = (name: string, b: Float32Array | undefined, n: number) => (b ? g.weight(name, b, [n]) : undefined);
  let q = linear(g, x, g.weight("q_proj", w.q, [Hq * hd, H]), bias("q_bias", w.qBias, Hq * hd));
  let k = linear(g, x, g.weight("k_proj", w.k, [Hkv * hd, H]), bias("k_bias", w.kBias, Hkv * hd));
  const v = linear(g, x, g.weight("v_proj", w.v, [Hkv * hd, H]), bias("v_bias", w.vBias, Hkv * hd));
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

  const rot = g.weight("rotate_half", rotateHalfMatrix(hd), [hd, hd]);
  const rope = (t: string) => g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [g.op("MatMul", [t, rot]), sin])]);
  q = rope(q);
  k = rope(k);

  const presentK = g.op("Concat", [pastK, k], { axis: 1 }); // [Hkv, S, hd]
  const presentV = g.op("Concat", [pastV, vh], { axis: 1 });
  const axis1 = g.constInt64([1]);
  const kT = g.op("Transpose", [g.op("Unsqueeze", [presentK, axis1])], { perm: [0, 1, 3, 2] }); // [Hkv, 1, hd, S]
  let scores = g.op("MatMul", [q, kT]); // [Hkv, G, T, S]
  scores = g.op("Add", [g.op("Mul", [scores, g.constFloat([1 / Math.sqrt(hd)], [])]), mask]);
  const probs = g.op("Softmax", [scores], { axis: -1 });
  const ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [presentV, axis1])]); // [Hkv, G, T, hd]
  const merged = g.op("Reshape", [g.op("Transpose", [ctx], { perm: [2, 0, 1, 3] }), g.constInt64([-1, Hq * hd])]);
  const attnOut = g.op("Add", [hidden, linear(g, merged, g.weight("o_proj", w.o, [H, Hq * hd]))]);

  const moeIn = rmsNorm(g, attnOut, g.weight("post_attention_norm", w.postAttnNorm, [H]), d.rmsNormEps);
  const routerLogits = linear(g, moeIn, g.weight("router", w.router, [E, H]));

  g.output(attnOut, L.attnOut, "float32", ["T", H]);
  g.output(moeIn, L.moeIn, "float32", ["T", H]);
  g.output(routerLogits, L.routerLogits, "float32", ["T", E]);
  g.output(presentK, L.presentKey, "float32", [Hkv, "S", hd]);
  g.output(presentV, L.presentValue, "float32", [Hkv, "S", hd]);
  if (w.shared) {
    const Fs = d.sharedExpertFfn;
    const s = w.shared;
    const out = swiglu(g, moeIn, g.weight("shared_gate", s.gate, [Fs, H]), g.weight("shared_up", s.up, [Fs, H]), g.weight("shared_down", s.down, [H, Fs]));
    const gate = g.op("Sigmoid", [linear(g, moeIn, g.weight("shared_expert_gate", s.gateProj, [1, H]))]);
    g.output(g.op("Mul", [out, gate]), L.sharedOut, "float32", ["T", H]);
  }
  return g;
}
