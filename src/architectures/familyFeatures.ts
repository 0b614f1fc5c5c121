/**
 * Family-specific config.json values beyond the Llama/Mixtral baseline. Each reader returns the
 * runtime features (ModelDims.features) and the constant factors the importer folds into weights
 * (so both dense backends see them without an extra op); a value the runtime does not implement is
 * refused, naming its key.
 */
import { UnsupportedConfigError } from "../errors.js";
import { gptOssActivation } from "../kernels/expertActivation.js";
import type { HfConfig } from "../formats/HfCheckpoint.js";
import type { ModelDims, ModelFeatures } from "./ModelDims.js";
import { ropeSpec, yarnMscale } from "./ropeSpec.js";

/** Factors the importer multiplies into weights. */
export interface WeightFolds {
  /** Embedding rows (the embedding graph's copy only; a tied LM head keeps the unscaled rows). */
  embedding: number;
  /** LM head rows (and bias). */
  logits: number;
  /** o_proj (and its bias): the attention branch's residual multiplier. */
  attnOut: number;
}

export const NO_FOLDS: WeightFolds = { embedding: 1, logits: 1, attnOut: 1 };

export type FamilyFeatures = (config: ConfigValues) => {
  features: Partial<ModelFeatures>;
  folds?: Partial<WeightFolds>;
  /** Dims the family computes from several keys (GLM-4.5's shared expert width, its optional QK-norm). */
  dims?: Partial<Pick<ModelDims, "sharedExpertFfn" | "qkNorm" | "numKvHeads" | "headDim">>;
};

/**
 * Qwen2/3-MoE: layer l has experts unless it is in mlp_only_layers or (l + 1) is not a multiple of
 * decoder_sparse_step; the others have a dense MLP of intermediate_size.
 */
export function qwenDenseLayers(c: ConfigValues): Partial<ModelFeatures> {
  const layers = c.number("num_hidden_layers");
  const step = c.number("decoder_sparse_step", 1);
  if (!Number.isInteger(step) || step < 1) throw new UnsupportedConfigError(`decoder_sparse_step in config.json must be a whole number >= 1, got ${step}`);
  const only = c.config["mlp_only_layers"] ?? [];
  if (!Array.isArray(only) || only.some((l) => !Number.isInteger(l) || l < 0 || l >= layers)) {
    throw new UnsupportedConfigError(`mlp_only_layers in config.json must list layer indices below ${layers}, got ${JSON.stringify(only)}`);
  }
  const denseLayers = Array.from({ length: layers }, (_, l) => l).filter((l) => (only as number[]).includes(l) || (l + 1) % step !== 0);
  if (denseLayers.length === 0) return {};
  if (denseLayers.length === layers) throw new UnsupportedConfigError("every layer is dense (mlp_only_layers / decoder_sparse_step): this is not a mixture-of-experts model");
  return { denseLayers, denseFfn: c.positive("intermediate_size") };
}

/** DeepSeek / GLM-4.5: the first first_k_dense_replace layers have a dense MLP of intermediate_size. */
function firstDenseLayers(c: ConfigValues): Partial<ModelFeatures> {
  const k = c.number("first_k_dense_replace", 0);
  const layers = c.number("num_hidden_layers");
  if (!Number.isInteger(k) || k < 0 || k >= layers) throw new UnsupportedConfigError(`first_k_dense_replace in config.json must be a whole number below num_hidden_layers ${layers}, got ${k}`);
  return k === 0 ? {} : { denseLayers: Array.from({ length: k }, (_, l) => l), denseFfn: c.positive("intermediate_size") };
}

/** Typed access to config.json that names the key in its errors. */
export class ConfigValues {
  constructor(
    readonly config: HfConfig,
    private readonly modelType: string
  ) {}

  has(key: string): boolean {
    return this.config[key] !== undefined && this.config[key] !== null;
  }

  number(key: string, fallback?: number): number {
    const v = this.config[key];
    if (typeof v === "number" && Number.isFinite(v)) return v;
    if ((v === undefined || v === null) && fallback !== undefined) return fallback;
    if (v === undefined || v === null) throw new UnsupportedConfigError(`config.json lacks the number "${key}" required for model_type "${this.modelType}"`);
    throw new UnsupportedConfigError(`${key} in config.json must be a finite number, got ${JSON.stringify(v)}`);
  }

  positive(key: string, fallback?: number): number {
    const v = this.number(key, fallback);
    if (!(v > 0)) throw new UnsupportedConfigError(`${key} in config.json must be > 0, got ${v}`);
    return v;
  }

  flag(key: string, fallback: boolean): boolean {
    const v = this.config[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "boolean") throw new UnsupportedConfigError(`${key} in config.json must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  string(key: string, fallback: string): string {
    const v = this.config[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "string") throw new UnsupportedConfigError(`${key} in config.json must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** Refuses a value other than `allowed` (the only one the runtime implements). */
  only(key: string, allowed: unknown, why: string): void {
    const v = this.config[key];
    if (v === undefined || v === null || v === allowed) return;
    throw new UnsupportedConfigError(`${key}=${JSON.stringify(v)} in config.json is not supported (${why}); moe-run implements ${JSON.stringify(allowed)}`);
  }
}

export const familyFeatures = {
  granitemoe: (c: ConfigValues) => {
    c.only("position_embedding_type", "rope", "Granite's alternative to RoPE");
    c.only("hidden_act", "silu", "the experts' activation");
    const residual = c.number("residual_multiplier", 1);
    return {
      features: { attentionScale: c.positive("attention_multiplier"), residualScale: residual },
      folds: { embedding: c.number("embedding_multiplier", 1), logits: 1 / c.positive("logits_scaling", 1), attnOut: residual },
    };
  },
  phimoe: (c: ConfigValues) => {
    c.only("hidden_act", "silu", "the experts' activation");
    const topK = c.number("num_experts_per_tok");
    if (topK !== 2) throw new UnsupportedConfigError(`num_experts_per_tok=${topK} in config.json is not supported: Phi-MoE's sparsemixer routing is defined for top-2`);
    return { features: { norm: "layer" as const, oBias: c.flag("attention_bias", false), lmHeadBias: c.flag("lm_head_bias", false), router: "sparsemixer" as const, jitterEps: c.number("router_jitter_noise", 0.01) } };
  },
  qwen2_moe: (c: ConfigValues) => ({ features: qwenDenseLayers(c) }),
  qwen3_moe: (c: ConfigValues) => ({ features: qwenDenseLayers(c) }),
  glm4_moe: (c: ConfigValues) => {
    c.only("hidden_act", "silu", "the experts' activation");
    c.only("topk_method", "noaux_tc", "GLM-4.5's router");
    const nGroup = c.number("n_group", 1);
    const topkGroup = c.number("topk_group", 1);
    const E = c.number("n_routed_experts");
    if (!Number.isInteger(nGroup) || nGroup < 1 || E % nGroup !== 0) throw new UnsupportedConfigError(`n_group=${nGroup} in config.json must divide n_routed_experts ${E}`);
    if (!Number.isInteger(topkGroup) || topkGroup < 1 || topkGroup > nGroup) throw new UnsupportedConfigError(`topk_group=${topkGroup} in config.json must be between 1 and n_group ${nGroup}`);
    if (nGroup > 1 && E / nGroup < 2) throw new UnsupportedConfigError(`n_group=${nGroup} leaves fewer than 2 experts per group, which GLM-4.5's group score (best two) needs`);
    const shared = c.number("n_shared_experts", 0);
    return {
      features: {
        router: "grouped" as const,
        grouped: { score: "sigmoid" as const, nGroup, topkGroup, groupScore: "top2sum" as const, routedScale: c.number("routed_scaling_factor", 1), correctionBias: true },
        sharedGate: false,
        ...firstDenseLayers(c),
      },
      dims: { sharedExpertFfn: shared > 0 ? shared * c.positive("moe_intermediate_size") : 0, qkNorm: c.flag("use_qk_norm", false) ? ("head" as const) : ("none" as const) },
    };
  },
  deepseek_v2: (c: ConfigValues) => {
    c.only("hidden_act", "silu", "the experts' activation");
    c.only("scoring_func", "softmax", "DeepSeek-V2's router");
    c.only("moe_layer_freq", 1, "MoE layers other than every layer after first_k_dense_replace");
    const method = c.string("topk_method", "greedy");
    if (method !== "greedy" && method !== "group_limited_greedy") {
      throw new UnsupportedConfigError(`topk_method=${JSON.stringify(method)} in config.json is not supported; moe-run implements greedy and group_limited_greedy`);
    }
    const E = c.number("n_routed_experts");
    const nGroup = method === "greedy" ? 1 : c.number("n_group", 1);
    const topkGroup = method === "greedy" ? 1 : c.number("topk_group", 1);
    if (!Number.isInteger(nGroup) || nGroup < 1 || E % nGroup !== 0) throw new UnsupportedConfigError(`n_group=${nGroup} in config.json must divide n_routed_experts ${E}`);
    if (!Number.isInteger(topkGroup) || topkGroup < 1 || topkGroup > nGroup) throw new UnsupportedConfigError(`topk_group=${topkGroup} in config.json must be between 1 and n_group ${nGroup}`);
    const whole = (key: string, fallback?: number) => {
      const v = c.number(key, fallback);
      if (!Number.isInteger(v) || v < 0) throw new UnsupportedConfigError(`${key} in config.json must be a whole number >= 0, got ${v}`);
      return v;
    };
    const q = c.config["q_lora_rank"];
    const mla = { qLoraRank: q === null || q === undefined ? 0 : whole("q_lora_rank"), kvLoraRank: whole("kv_lora_rank"), nopeDim: whole("qk_nope_head_dim"), ropeDim: whole("qk_rope_head_dim"), vDim: whole("v_head_dim") };
    if (mla.kvLoraRank < 1 || mla.ropeDim < 2 || mla.ropeDim % 2 || mla.vDim < 1) throw new UnsupportedConfigError(`kv_lora_rank, qk_rope_head_dim (even) and v_head_dim in config.json must be >= 1`);
    // Softmax scale (nope + rope)^-0.5, times YaRN's mscale(factor, mscale_all_dim)^2.
    let scale = 1 / Math.sqrt(mla.nopeDim + mla.ropeDim);
    const rs = c.config["rope_scaling"] as Record<string, unknown> | null | undefined;
    const mAll = rs?.["mscale_all_dim"];
    const factor = rs?.["factor"];
    if (typeof mAll === "number" && mAll && typeof factor === "number") scale *= yarnMscale(factor, mAll) ** 2;
    const shared = c.number("n_shared_experts", 0);
    return {
      features: {
        router: "grouped" as const,
        grouped: { score: "softmax" as const, nGroup, topkGroup, groupScore: "max" as const, routedScale: c.number("routed_scaling_factor", 1), correctionBias: false },
        sharedGate: false,
        oBias: c.flag("attention_bias", false),
        mla,
        attentionScale: scale,
        rope: ropeSpec(c, mla.ropeDim, c.number("rope_theta", 10000), mla.ropeDim),
        ...firstDenseLayers(c),
      },
      dims: { sharedExpertFfn: shared > 0 ? shared * c.positive("moe_intermediate_size") : 0, numKvHeads: 1, headDim: mla.kvLoraRank + mla.ropeDim },
    };
  },
  gpt_oss: (c: ConfigValues) => {
    // layer_types: each layer full or sliding-window attention.
    const types = c.config["layer_types"];
    const layers = c.number("num_hidden_layers");
    let layerWindows: number[] = [];
    if (types !== undefined && types !== null) {
      if (!Array.isArray(types) || types.length !== layers) throw new UnsupportedConfigError(`layer_types in config.json must list ${layers} layer types`);
      const window = c.number("sliding_window", 0);
      layerWindows = types.map((t, l) => {
        if (t === "full_attention") return 0;
        if (t === "sliding_attention") {
          if (!Number.isInteger(window) || window < 1) throw new UnsupportedConfigError(`sliding_window in config.json must be a whole number >= 1 for layer ${l}'s sliding attention, got ${window}`);
          return window;
        }
        throw new UnsupportedConfigError(`layer_types[${l}]=${JSON.stringify(t)} in config.json is not supported; moe-run implements full_attention and sliding_attention`);
      });
    }
    const bias = c.flag("attention_bias", true);
    return {
      features: {
        sinks: true,
        oBias: bias,
        routerBias: true,
        layerWindows,
        expertActivation: gptOssActivation(c.positive("swiglu_limit", 7)),
        expertBias: true,
      },
    };
  },
} satisfies Record<string, FamilyFeatures>;
