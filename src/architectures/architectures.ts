/**
 * Supported architectures as data. Each entry says where a family keeps its config values and
 * tensors and which features it switches on; the importer and graph builder read only this table,
 * so adding a family is a table entry plus a fixture and a parity test.
 */
import { UnknownArchitectureError } from "../errors.js";
import { fusedGateUpExperts, gptOssExperts, separateExperts, type CheckpointExperts, type ExpertPart } from "./expertLayouts.js";
import { familyFeatures, type FamilyFeatures } from "./familyFeatures.js";
import type { ModelDims } from "./ModelDims.js";

export interface ArchitectureSpec {
  modelType: string;
  /** config.json keys that differ between families. */
  keys: { numExperts: string; expertFfn: string; sharedExpertFfn?: string };
  /** Router renormalisation: fixed by the family, or read from config.json with a default. */
  normTopkProb: boolean | { key: string; default: boolean };
  qkvBias: boolean | { key: string; default: boolean };
  qkNorm: ModelDims["qkNorm"];
  /** Tensor names under model.layers.N (normBias.final and lmHeadBias: top level). */
  names: {
    router: string;
    routerBias?: string;
    /** e_score_correction_bias [E] of the grouped routers (selection only). */
    routerCorrectionBias?: string;
    experts: CheckpointExperts;
    /** The shared expert; `gate` [1, H] scales it by a sigmoid when the family has one. */
    shared?: { expert: (part: ExpertPart) => string; gate?: string };
    /** The MLP of dense layers (ModelFeatures.denseLayers). */
    denseMlp?: (part: ExpertPart) => string;
    /** LayerNorm families: the bias beside each norm weight. */
    normBias?: { input: string; postAttn: string; final: string };
    oBias?: string;
    sinks?: string;
    lmHeadBias?: string;
  };
  /** What the family adds to the baseline, read from config.json (familyFeatures.ts). */
  features?: FamilyFeatures;
}

const PROJ: Record<ExpertPart, string> = { gate: "gate_proj", up: "up_proj", down: "down_proj" };
const MIXTRAL_W: Record<ExpertPart, string> = { gate: "w1", up: "w3", down: "w2" };

const ARCHITECTURES: readonly ArchitectureSpec[] = [
  {
    modelType: "mixtral",
    keys: { numExperts: "num_local_experts", expertFfn: "intermediate_size" },
    normTopkProb: true,
    qkvBias: false,
    qkNorm: "none",
    names: {
      router: "block_sparse_moe.gate.weight",
      experts: separateExperts((j, p) => `block_sparse_moe.experts.${j}.${MIXTRAL_W[p]}.weight`),
    },
  },
  {
    modelType: "qwen2_moe",
    keys: { numExperts: "num_experts", expertFfn: "moe_intermediate_size", sharedExpertFfn: "shared_expert_intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: false },
    qkvBias: true,
    qkNorm: "none",
    names: {
      router: "mlp.gate.weight",
      experts: separateExperts((j, p) => `mlp.experts.${j}.${PROJ[p]}.weight`),
      shared: { expert: (p) => `mlp.shared_expert.${PROJ[p]}.weight`, gate: "mlp.shared_expert_gate.weight" },
      denseMlp: (p) => `mlp.${PROJ[p]}.weight`,
    },
    features: familyFeatures.qwen2_moe,
  },
  {
    modelType: "qwen3_moe",
    keys: { numExperts: "num_experts", expertFfn: "moe_intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: false },
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "head",
    names: { router: "mlp.gate.weight", experts: separateExperts((j, p) => `mlp.experts.${j}.${PROJ[p]}.weight`), denseMlp: (p) => `mlp.${PROJ[p]}.weight` },
    features: familyFeatures.qwen3_moe,
  },
  {
    modelType: "olmoe",
    keys: { numExperts: "num_experts", expertFfn: "intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: false },
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "full",
    names: { router: "mlp.gate.weight", experts: separateExperts((j, p) => `mlp.experts.${j}.${PROJ[p]}.weight`) },
  },
  {
    // Granite: multipliers on the embedding, residual branches, attention scores and logits;
    // experts fused in two tensors; router softmax over the top-k logits (= renormalised).
    modelType: "granitemoe",
    keys: { numExperts: "num_local_experts", expertFfn: "intermediate_size" },
    normTopkProb: true,
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "none",
    names: {
      router: "block_sparse_moe.router.layer.weight",
      experts: fusedGateUpExperts("block_sparse_moe.input_linear.weight", "block_sparse_moe.output_linear.weight"),
    },
    features: familyFeatures.granitemoe,
  },
  {
    // Phi-MoE: LayerNorm with biases, attention and LM-head biases, LongRoPE, sparsemixer top-2.
    modelType: "phimoe",
    keys: { numExperts: "num_local_experts", expertFfn: "intermediate_size" },
    normTopkProb: false,
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "none",
    names: {
      router: "block_sparse_moe.gate.weight",
      experts: separateExperts((j, p) => `block_sparse_moe.experts.${j}.${MIXTRAL_W[p]}.weight`),
      normBias: { input: "input_layernorm.bias", postAttn: "post_attention_layernorm.bias", final: "model.norm.bias" },
      oBias: "self_attn.o_proj.bias",
      lmHeadBias: "lm_head.bias",
    },
    features: familyFeatures.phimoe,
  },
  {
    // gpt-oss: attention sinks, alternating sliding/full attention, biases on attention and the
    // router, YaRN, clamped-SwiGLU experts with biases, stored fused (MXFP4 or bf16).
    modelType: "gpt_oss",
    keys: { numExperts: "num_local_experts", expertFfn: "intermediate_size" },
    normTopkProb: true,
    qkvBias: { key: "attention_bias", default: true },
    qkNorm: "none",
    names: {
      router: "mlp.router.weight",
      routerBias: "mlp.router.bias",
      experts: gptOssExperts("mlp.experts"),
      oBias: "self_attn.o_proj.bias",
      sinks: "self_attn.sinks",
    },
    features: familyFeatures.gpt_oss,
  },
  {
    // GLM-4.5: sigmoid router with a selection-only correction bias, group-limited top-k, routed
    // scaling, an ungated shared expert, first dense layers, partial rotary, optional QK-norm.
    modelType: "glm4_moe",
    keys: { numExperts: "n_routed_experts", expertFfn: "moe_intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: true },
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "head",
    names: {
      router: "mlp.gate.weight",
      routerCorrectionBias: "mlp.gate.e_score_correction_bias",
      experts: separateExperts((j, p) => `mlp.experts.${j}.${PROJ[p]}.weight`),
      shared: { expert: (p) => `mlp.shared_experts.${PROJ[p]}.weight` },
      denseMlp: (p) => `mlp.${PROJ[p]}.weight`,
    },
    features: familyFeatures.glm4_moe,
  },
  {
    // DeepSeek-V2: multi-head latent attention (the cache holds the compressed latent), softmax
    // router with greedy or group-limited top-k and routed scaling, ungated shared experts, first
    // dense layers, YaRN with mscale. The rope part rotates interleaved pairs; the importer
    // permutes those rows into the half-split order the runtime rotates (scores are unchanged).
    modelType: "deepseek_v2",
    keys: { numExperts: "n_routed_experts", expertFfn: "moe_intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: false },
    qkvBias: false,
    qkNorm: "none",
    names: {
      router: "mlp.gate.weight",
      experts: separateExperts((j, p) => `mlp.experts.${j}.${PROJ[p]}.weight`),
      shared: { expert: (p) => `mlp.shared_experts.${PROJ[p]}.weight` },
      denseMlp: (p) => `mlp.${PROJ[p]}.weight`,
      oBias: "self_attn.o_proj.bias",
    },
    features: familyFeatures.deepseek_v2,
  },
];

export function supportedModelTypes(): string[] {
  return ARCHITECTURES.map((a) => a.modelType);
}

export function getArchitecture(modelType: string): ArchitectureSpec {
  const spec = ARCHITECTURES.find((a) => a.modelType === modelType);
  if (!spec) throw new UnknownArchitectureError(modelType, supportedModelTypes());
  return spec;
}

/** Tensor names shared by every supported family (Llama-style decoder). */
export const COMMON_NAMES = {
  embed: "model.embed_tokens.weight",
  finalNorm: "model.norm.weight",
  lmHead: "lm_head.weight",
  layer: (l: number, rest: string) => `model.layers.${l}.${rest}`,
  inputNorm: "input_layernorm.weight",
  postAttnNorm: "post_attention_layernorm.weight",
  q: "self_attn.q_proj",
  k: "self_attn.k_proj",
  v: "self_attn.v_proj",
  o: "self_attn.o_proj",
  qNorm: "self_attn.q_norm.weight",
  kNorm: "self_attn.k_norm.weight",
} as const;

