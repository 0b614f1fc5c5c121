/** config.json -> ModelDims for the families in the architecture table. */
import { UnknownArchitectureError, UnsupportedConfigError } from "../errors.js";
import type { HfConfig } from "../formats/HfCheckpoint.js";
import { getArchitecture, supportedModelTypes, type ArchitectureSpec } from "./architectures.js";
import { ConfigValues, NO_FOLDS, type WeightFolds } from "./familyFeatures.js";
import type { ModelDims } from "./ModelDims.js";
import { ropeSpec } from "./ropeSpec.js";

/**
 * Reads config.json into ModelDims, refusing settings the runtime would get wrong. `folds` are the
 * constant factors the importer multiplies into weights (Granite's multipliers).
 */
export function readModelDims(config: HfConfig): { spec: ArchitectureSpec; dims: ModelDims; folds: WeightFolds } {
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

  if (config["clip_qkv"] !== undefined && config["clip_qkv"] !== null) {
    throw new UnsupportedConfigError("clip_qkv is not supported yet");
  }
  const hiddenSize = num("hidden_size");
  const numHeads = num("num_attention_heads");
  let maxPositions = num("max_position_embeddings");
  // Within the window, sliding-window attention is full attention: cap the context there, unless
  // the family gives each layer its own window (layer_types), which the runtime implements.
  const window = config["sliding_window"];
  const windowUsed = config["use_sliding_window"] !== false && !Array.isArray(config["layer_types"]);
  if (typeof window === "number" && windowUsed && window < maxPositions) maxPositions = window;

  const eos = config["eos_token_id"];
  const eosTokenIds = Array.isArray(eos) ? eos.map(Number) : typeof eos === "number" ? [eos] : [];
  const bos = config["bos_token_id"];
  const headDimRaw = config["head_dim"];
  const values = new ConfigValues(config, modelType);
  const family = spec.features?.(values) ?? { features: {} };
  const folds: WeightFolds = { ...NO_FOLDS, ...family.folds };
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
    ...family.dims,
  };
  const features = { ...family.features };
  // RoPE of every family: rope_scaling and partial_rotary_factor (validated in ropeSpec).
  if (!features.rope && (values.has("rope_scaling") || values.has("partial_rotary_factor"))) features.rope = ropeSpec(values, dims.headDim, dims.ropeTheta);
  if (Object.keys(features).length > 0) dims.features = features;
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
  return { spec, dims, folds };
}

