/**
 * Supported architectures as data. Each entry says where a family keeps its config values and
 * tensors and which features it switches on; the importer and graph builder read only this table,
 * so adding a family is a table entry plus a fixture and a parity test.
 */
import { UnknownArchitectureError, UnsupportedConfigError } from "../errors.js";
import type { HfConfig } from "../formats/HfCheckpoint.js";
import type { ModelDims } from "./ModelDims.js";

type ExpertPart = "gate" | "up" | "down";

export interface ArchitectureSpec {
  modelType: string;
  /** config.json keys that differ between families. */
  keys: { numExperts: string; expertFfn: string; sharedExpertFfn?: string };
  /** Router renormalisation: fixed by the family, or read from config.json with a default. */
  normTopkProb: boolean | { key: string; default: boolean };
  qkvBias: boolean | { key: string; default: boolean };
  qkNorm: ModelDims["qkNorm"];
  /** Tensor names under model.layers.N. */
  names: {
    router: string;
    expert: (j: number, part: ExpertPart) => string;
    shared?: { expert: (part: ExpertPart) => string; gate: string };
  };
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
      expert: (j, p) => `block_sparse_moe.experts.${j}.${MIXTRAL_W[p]}.weight`,
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
      expert: (j, p) => `mlp.experts.${j}.${PROJ[p]}.weight`,
      shared: { expert: (p) => `mlp.shared_expert.${PROJ[p]}.weight`, gate: "mlp.shared_expert_gate.weight" },
    },
  },
  {
    modelType: "qwen3_moe",
    keys: { numExperts: "num_experts", expertFfn: "moe_intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: false },
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "head",
    names: { router: "mlp.gate.weight", expert: (j, p) => `mlp.experts.${j}.${PROJ[p]}.weight` },
  },
  {
    modelType: "olmoe",
    keys: { numExperts: "num_experts", expertFfn: "intermediate_size" },
    normTopkProb: { key: "norm_topk_prob", default: false },
    qkvBias: { key: "attention_bias", default: false },
    qkNorm: "full",
    names: { router: "mlp.gate.weight", expert: (j, p) => `mlp.experts.${j}.${PROJ[p]}.weight` },
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

/** Reads config.json into ModelDims, refusing settings the runtime would get wrong. */
export function readModelDims(config: HfConfig): { spec: ArchitectureSpec; dims: ModelDims } {
  const modelType = config["model_type"];
  if (typeof modelType !== "string") {
    throw new UnknownArchitectureError(String(modelType ?? "(missing model_type)"), supportedModelTypes());
  }
  const spec = getArchitecture(modelType);
  const num = (key: string, fallback?: number): number => {
    const v = config[key];
    if (typeof v === "number" && Number.isFinite(v)) return v;
    if (fallback !== undefined) return fallback;
    throw new UnsupportedConfigError(`config.json lacks the number "${key}" required for model_type "${modelType}"`);
  };
  const flag = (f: boolean | { key: string; default: boolean }): boolean =>
    typeof f === "boolean" ? f : typeof config[f.key] === "boolean" ? (config[f.key] as boolean) : f.default;

  const rope = config["rope_scaling"];
  if (rope !== undefined && rope !== null) {
    throw new UnsupportedConfigError(`rope_scaling ${JSON.stringify(rope)} is not supported yet; only plain RoPE`);
  }
  const sparseStep = config["decoder_sparse_step"];
  const mlpOnly = config["mlp_only_layers"];
  if ((typeof sparseStep === "number" && sparseStep !== 1) || (Array.isArray(mlpOnly) && mlpOnly.length > 0)) {
    throw new UnsupportedConfigError("models with dense (non-MoE) MLP layers (decoder_sparse_step != 1 or mlp_only_layers) are not supported yet");
  }
  if (config["clip_qkv"] !== undefined && config["clip_qkv"] !== null) {
    throw new UnsupportedConfigError("clip_qkv is not supported yet");
  }
  const hiddenSize = num("hidden_size");
  const numHeads = num("num_attention_heads");
  let maxPositions = num("max_position_embeddings");
  // Within the window, sliding-window attention is full attention: cap the context there.
  const window = config["sliding_window"];
  const windowUsed = config["use_sliding_window"] !== false;
  if (typeof window === "number" && windowUsed && window < maxPositions) maxPositions = window;

  const eos = config["eos_token_id"];
  const eosTokenIds = Array.isArray(eos) ? eos.map(Number) : typeof eos === "number" ? [eos] : [];
  const bos = config["bos_token_id"];
  const headDimRaw = config["head_dim"];
  const dims: ModelDims = {
    modelType,
    vocabSize: num("vocab_size"),
    hiddenSize,
    numLayers: num("num_hidden_layers"),
    numHeads,
    numKvHeads: num("num_key_value_heads", numHeads),
    headDim: typeof headDimRaw === "number" ? headDimRaw : hiddenSize / numHeads,
    numExperts: num(spec.keys.numExperts),
    topK: num("num_experts_per_tok"),
    expertFfn: num(spec.keys.expertFfn),
    sharedExpertFfn: spec.keys.sharedExpertFfn ? num(spec.keys.sharedExpertFfn) : 0,
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    maxPositions,
    tieEmbeddings: config["tie_word_embeddings"] === true,
    normTopkProb: flag(spec.normTopkProb),
    qkvBias: flag(spec.qkvBias),
    qkNorm: spec.qkNorm,
    bosTokenId: typeof bos === "number" ? bos : undefined,
    eosTokenIds,
  };
  // Sizes first, each naming its own config key (a negative expert count must not be blamed on top-k).
  const sizes: [string, number][] = [
    ["vocab_size", dims.vocabSize],
    ["hidden_size", dims.hiddenSize],
    ["num_hidden_layers", dims.numLayers],
    ["num_attention_heads", dims.numHeads],
    ["num_key_value_heads", dims.numKvHeads],
    [spec.keys.numExperts, dims.numExperts],
    [spec.keys.expertFfn, dims.expertFfn],
    ["max_position_embeddings", dims.maxPositions],
  ];
  for (const [key, v] of sizes) if (!Number.isInteger(v) || v < 1) throw new UnsupportedConfigError(`${key} in config.json must be a whole number >= 1, got ${v}`);
  if (!Number.isInteger(dims.headDim)) throw new UnsupportedConfigError(`hidden_size ${hiddenSize} is not divisible by ${numHeads} heads and no head_dim is given`);
  if (dims.numHeads % dims.numKvHeads !== 0) throw new UnsupportedConfigError(`num_attention_heads ${dims.numHeads} is not a multiple of num_key_value_heads ${dims.numKvHeads}`);
  if (dims.topK < 1 || dims.topK > dims.numExperts) throw new UnsupportedConfigError(`num_experts_per_tok ${dims.topK} must be between 1 and ${dims.numExperts}`);
  if (dims.headDim % 2 !== 0) throw new UnsupportedConfigError(`head_dim ${dims.headDim} must be even for RoPE`);
  return { spec, dims };
}
