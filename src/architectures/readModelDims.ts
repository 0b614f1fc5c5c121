/** config.json -> ModelDims for the families in the architecture table. */
import { UnknownArchitectureError, UnsupportedConfigError } from "../errors.js";
import type { HfConfig } from "../formats/HfCheckpoint.js";
import { getArchitecture, supportedModelTypes, type ArchitectureSpec } from "./architectures.js";
import { ConfigValues, NO_FOLDS, type WeightFolds } from "./familyFeatures.js";
import type { ModelDims, RopeSpec } from "./ModelDims.js";

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
  if (values.has("rope_scaling") || values.has("partial_rotary_factor")) features.rope = ropeSpec(values, dims.headDim, dims.ropeTheta);
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

/** rope_theta, partial_rotary_factor and rope_scaling as the runtime's RopeSpec; unknown kinds refused by name. */
export function ropeSpec(c: ConfigValues, headDim: number, theta: number): RopeSpec {
  const partial = c.number("partial_rotary_factor", 1);
  const rotaryDim = Math.floor(headDim * partial);
  if (!(partial > 0 && partial <= 1) || rotaryDim % 2 !== 0 || rotaryDim < 2) {
    throw new UnsupportedConfigError(`partial_rotary_factor=${partial} in config.json gives ${rotaryDim} rotary dims of head_dim ${headDim}; moe-run needs an even number >= 2`);
  }
  const raw = c.config["rope_scaling"];
  if (raw === undefined || raw === null) return { theta, rotaryDim, scaling: { type: "none" } };
  if (typeof raw !== "object" || Array.isArray(raw)) throw new UnsupportedConfigError(`rope_scaling in config.json must be an object, got ${JSON.stringify(raw)}`);
  const r = raw as Record<string, unknown>;
  const type = r["rope_type"] ?? r["type"];
  const num = (key: string, fallback?: number): number => {
    const v = r[key];
    if (typeof v === "number" && Number.isFinite(v)) return v;
    if ((v === undefined || v === null) && fallback !== undefined) return fallback;
    throw new UnsupportedConfigError(`rope_scaling.${key} in config.json must be a number, got ${JSON.stringify(v)}`);
  };
  const maxPositions = c.number("max_position_embeddings");
  switch (type) {
    case "default":
      return { theta, rotaryDim, scaling: { type: "none" } };
    case "linear":
      return { theta, rotaryDim, scaling: { type: "linear", factor: num("factor") } };
    case "yarn": {
      const factor = num("factor");
      const originalMax = num("original_max_position_embeddings", maxPositions);
      const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      const m = r["mscale"];
      const mAll = r["mscale_all_dim"];
      let attentionFactor = num("attention_factor", Number.NaN);
      if (Number.isNaN(attentionFactor)) {
        attentionFactor = typeof m === "number" && m && typeof mAll === "number" && mAll ? mscale(factor, m) / mscale(factor, mAll) : mscale(factor);
      }
      const truncate = r["truncate"] ?? true;
      if (typeof truncate !== "boolean") throw new UnsupportedConfigError(`rope_scaling.truncate in config.json must be true or false, got ${JSON.stringify(truncate)}`);
      return {
        theta,
        rotaryDim,
        scaling: { type: "yarn", factor, originalMax, betaFast: num("beta_fast", 32) || 32, betaSlow: num("beta_slow", 1) || 1, truncate, attentionFactor },
      };
    }
    case "longrope": {
      const list = (key: string): number[] => {
        const v = r[key];
        if (!Array.isArray(v) || v.length !== rotaryDim / 2 || v.some((x) => typeof x !== "number" || !(x > 0))) {
          throw new UnsupportedConfigError(`rope_scaling.${key} in config.json must be ${rotaryDim / 2} positive numbers (one per rotary frequency)`);
        }
        return v as number[];
      };
      // Phi-3 style: a top-level original_max_position_embeddings fixes the factor as the ratio.
      let originalMax: number;
      let factor: number;
      if (c.has("original_max_position_embeddings")) {
        originalMax = c.positive("original_max_position_embeddings");
        factor = maxPositions / originalMax;
      } else {
        originalMax = maxPositions;
        factor = num("factor", 1);
      }
      let attentionFactor = num("attention_factor", Number.NaN);
      if (Number.isNaN(attentionFactor)) attentionFactor = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(originalMax));
      const mscale = (key: string) => (r[key] === undefined || r[key] === null ? undefined : num(key));
      return {
        theta,
        rotaryDim,
        scaling: { type: "longrope", short: list("short_factor"), long: list("long_factor"), originalMax, attentionFactor, shortMscale: mscale("short_mscale"), longMscale: mscale("long_mscale") },
      };
    }
    default:
      throw new UnsupportedConfigError(`rope_scaling type ${JSON.stringify(type)} in config.json is not supported; moe-run implements default, linear, yarn and longrope`);
  }
}
