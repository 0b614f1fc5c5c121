/** config.json's RoPE settings (rope_theta, partial_rotary_factor, rope_scaling) as the runtime's RopeSpec. */
import { UnsupportedConfigError } from "../errors.js";
import type { ConfigValues } from "./familyFeatures.js";
import type { RopeSpec } from "./ModelDims.js";

/** YaRN's magnitude correction for a context stretched `scale` times: 0.1 * m * ln(scale) + 1 (1 when not stretched). */
export function yarnMscale(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/** rope_theta, partial_rotary_factor and rope_scaling as the runtime's RopeSpec; unknown kinds refused by name. */
export function ropeSpec(c: ConfigValues, headDim: number, theta: number, rotaryDims?: number): RopeSpec {
  const partial = c.number("partial_rotary_factor", 1);
  const rotaryDim = rotaryDims ?? Math.floor(headDim * partial);
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
      const m = r["mscale"];
      const mAll = r["mscale_all_dim"];
      let attentionFactor = num("attention_factor", Number.NaN);
      if (Number.isNaN(attentionFactor)) {
        attentionFactor = typeof m === "number" && m && typeof mAll === "number" && mAll ? yarnMscale(factor, m) / yarnMscale(factor, mAll) : yarnMscale(factor);
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
