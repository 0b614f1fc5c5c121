import type { ExpertActivation } from "../kernels/expertActivation.js";

/** The architecture-independent description of a model that the importer and runtime work from. */
export interface ModelDims {
  /** Hugging Face model_type, e.g. "mixtral". */
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** Per-head dimension; may differ from hiddenSize / numHeads (Qwen3-MoE). */
  headDim: number;
  numExperts: number;
  /** Experts activated per token. */
  topK: number;
  /** Intermediate size of one routed expert. */
  expertFfn: number;
  /** Intermediate size of the shared expert; 0 when the architecture has none. */
  sharedExpertFfn: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Longest sequence the model supports (sliding window applied, if any). */
  maxPositions: number;
  tieEmbeddings: boolean;
  /** Renormalise the top-k router probabilities to sum to 1. */
  normTopkProb: boolean;
  qkvBias: boolean;
  /** "head": RMSNorm per head over headDim (Qwen3-MoE); "full": over all heads' q/k (OLMoE). */
  qkNorm: "none" | "head" | "full";
  bosTokenId: number | undefined;
  eosTokenIds: number[];
  /** What the architecture adds to the Llama/Mixtral baseline; absent in models imported before. */
  features?: Partial<ModelFeatures>;
}

/**
 * RoPE: the first `rotaryDim` dims of each head rotate in Hugging Face's half-split layout (pairs
 * i, i + rotaryDim/2); the rest pass through. `scaling` changes the frequencies and multiplies
 * cos/sin by an attention factor.
 */
export interface RopeSpec {
  theta: number;
  rotaryDim: number;
  scaling: RopeScaling;
}

export type RopeScaling =
  | { type: "none" }
  | { type: "linear"; factor: number }
  /** YaRN: frequencies blend interpolation and extrapolation over a ramp of dims [low, high]. */
  | { type: "yarn"; factor: number; originalMax: number; betaFast: number; betaSlow: number; truncate: boolean; attentionFactor: number }
  /** LongRoPE: per-frequency divisors, `long` once a forward's last position is past originalMax. */
  /** Phi-3 / Phi-MoE's short_mscale / long_mscale, when given, replace attentionFactor for the factor set in use. */
  | { type: "longrope"; short: number[]; long: number[]; originalMax: number; attentionFactor: number; shortMscale?: number; longMscale?: number };

/** How router logits become the top-k experts and their combine weights. */
export type RouterKind =
  /** softmax over all experts, top-k, renormalised when normTopkProb (Mixtral, Qwen, OLMoE, Granite, gpt-oss). */
  | "softmax"
  /** Phi-MoE's top-2 sparsemixer at inference: each pick's weight is a softmax over the logits within jitterEps of it. */
  | "sparsemixer"
  /**
   * DeepSeek / GLM-4.5 style: scores = softmax or sigmoid of the logits; selection on scores (+ a
   * per-expert correction bias, selection only) limited to the best `topkGroup` of `nGroup`
   * groups; weights = the picks' scores (renormalised when normTopkProb) x routedScale.
   */
  | "grouped";

/** Parameters of the "grouped" router. */
export interface GroupedRouter {
  score: "softmax" | "sigmoid";
  nGroup: number;
  topkGroup: number;
  /** A group's score: its best expert's ("max", DeepSeek-V2) or the sum of its best two ("top2sum", GLM-4.5 / DeepSeek-V3). */
  groupScore: "max" | "top2sum";
  routedScale: number;
  /** Layers carry e_score_correction_bias [E], added to the scores for selection only. */
  correctionBias: boolean;
}

export interface ModelFeatures {
  /** "rms": RMSNorm (weight); "layer": LayerNorm (weight and bias), Phi-MoE. */
  norm: "rms" | "layer";
  /** o_proj has a bias. */
  oBias: boolean;
  /** lm_head has a bias. */
  lmHeadBias: boolean;
  /** The router has a bias (gpt-oss). */
  routerBias: boolean;
  /** Softmax scale of attention scores; 0 = 1/sqrt(headDim). */
  attentionScale: number;
  /** Residual branches (attention and MoE) are multiplied by this before the add (Granite). */
  residualScale: number;
  rope: RopeSpec;
  /** A learned per-head logit joins each softmax denominator (gpt-oss attention sinks). */
  sinks: boolean;
  /** Sliding window per layer in positions (a query sees itself and window-1 before it); 0 = full. Empty = all full. */
  layerWindows: number[];
  router: RouterKind;
  /** Sparsemixer's jitter epsilon. */
  jitterEps: number;
  /** What each routed expert computes between its matrices (gpt-oss: clamped SwiGLU). */
  expertActivation: ExpertActivation;
  /** Routed experts carry biases (gate, up, down) in their records. */
  expertBias: boolean;
  grouped: GroupedRouter;
  /**
   * Decoder layers whose MLP is dense (first_k_dense_replace, mlp_only_layers): they have no
   * router and no experts; their MLP of width denseFfn runs with the dense weights.
   */
  denseLayers: number[];
  denseFfn: number;
  /** The shared expert's output is scaled by sigmoid(x . w) (Qwen2-MoE); false: added as is. */
  sharedGate: boolean;
  /** Multi-head latent attention (DeepSeek-V2); absent: grouped-query attention. */
  mla: MlaSpec | undefined;
}

/**
 * Multi-head latent attention. The KV cache holds one latent row per position: the normalised
 * compressed KV [kvLoraRank] and the rotated shared rope key [ropeDim] (dims.numKvHeads = 1,
 * dims.headDim = kvLoraRank + ropeDim). Each head's nope query is absorbed into the latent space
 * (W_uk^T q), its output read back through W_uv: the per-head keys and values are never formed.
 */
export interface MlaSpec {
  /** 0: q = x Wq; else q = rms(x Wqa) Wqb. */
  qLoraRank: number;
  kvLoraRank: number;
  nopeDim: number;
  ropeDim: number;
  vDim: number;
}

/** The features of `d`, with the baseline's values where the manifest has none. */
export function modelFeatures(d: ModelDims): ModelFeatures {
  const f = d.features ?? {};
  return {
    norm: f.norm ?? "rms",
    oBias: f.oBias ?? false,
    lmHeadBias: f.lmHeadBias ?? false,
    routerBias: f.routerBias ?? false,
    attentionScale: f.attentionScale ?? 0,
    residualScale: f.residualScale ?? 1,
    rope: f.rope ?? { theta: d.ropeTheta, rotaryDim: d.headDim, scaling: { type: "none" } },
    sinks: f.sinks ?? false,
    layerWindows: f.layerWindows ?? [],
    router: f.router ?? "softmax",
    jitterEps: f.jitterEps ?? 0,
    expertActivation: f.expertActivation ?? { kind: "silu" },
    expertBias: f.expertBias ?? false,
    grouped: f.grouped ?? { score: "softmax", nGroup: 1, topkGroup: 1, groupScore: "max", routedScale: 1, correctionBias: false },
    denseLayers: f.denseLayers ?? [],
    denseFfn: f.denseFfn ?? 0,
    sharedGate: f.sharedGate ?? true,
    mla: f.mla,
  };
}

/** Heads and row widths of the KV cache: keys [heads, S, keyDim], values [heads, S, valueDim] (MLA: no values). */
export function kvShape(d: ModelDims): { heads: number; keyDim: number; valueDim: number } {
  return { heads: d.numKvHeads, keyDim: d.headDim, valueDim: d.features?.mla ? 0 : d.headDim };
}

/** Whether decoder layer `layer` has routed experts (else its MLP is dense). */
export function isMoeLayer(d: ModelDims, layer: number): boolean {
  return !(d.features?.denseLayers ?? []).includes(layer);
}

/** The decoder layers that have routed experts, ascending. */
export function moeLayers(d: ModelDims): number[] {
  return Array.from({ length: d.numLayers }, (_, l) => l).filter((l) => isMoeLayer(d, l));
}

/** The sliding window of `layer` in positions, 0 = full attention. */
export function layerWindow(f: ModelFeatures, layer: number): number {
  return f.layerWindows[layer] ?? 0;
}

/** Parameters of one routed expert: gate and up [F,H], down [H,F]. */
export function expertParamCount(d: ModelDims): number {
  return 3 * d.expertFfn * d.hiddenSize;
}
