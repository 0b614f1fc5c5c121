/**
 * RoPE tables in Hugging Face's half-split layout over the rotary dims: for position p and
 * i < r/2 (r = rotaryDim), angle = p * invFreq[i]; a row of cos is
 * [cos(angle_0..angle_{r/2-1}), cos(angle_0..angle_{r/2-1}), 1 x (hd - r)] and sin the same with 0
 * for the dims that do not rotate, all times the scaling's attention factor. Values are rounded
 * through fp32 at each step, as the references compute them in fp32.
 */
import type { RopeSpec } from "../architectures/ModelDims.js";

/** The inverse frequencies [r/2] and the cos/sin factor for a forward whose last position is `lastPosition`. */
export function ropeFrequencies(rope: RopeSpec, lastPosition: number): { invFreq: Float32Array; attentionFactor: number } {
  const r = rope.rotaryDim;
  const half = r / 2;
  // base^(2i/r) in fp32, as torch computes `base ** (arange(0, r, 2) / r)`.
  const posFreq = new Float32Array(half);
  for (let i = 0; i < half; i++) posFreq[i] = Math.fround(rope.theta ** Math.fround((2 * i) / r));
  const invFreq = new Float32Array(half);
  const s = rope.scaling;
  switch (s.type) {
    case "none":
      for (let i = 0; i < half; i++) invFreq[i] = 1 / posFreq[i]!;
      return { invFreq, attentionFactor: 1 };
    case "linear":
      for (let i = 0; i < half; i++) invFreq[i] = Math.fround(1 / posFreq[i]!) / s.factor;
      return { invFreq, attentionFactor: 1 };
    case "yarn": {
      // Dims below `low` keep their frequency (extrapolation), above `high` are divided by the
      // factor (interpolation), linear in between.
      const correctionDim = (rotations: number) => (r * Math.log(s.originalMax / (rotations * 2 * Math.PI))) / (2 * Math.log(rope.theta));
      let low = correctionDim(s.betaFast);
      let high = correctionDim(s.betaSlow);
      if (s.truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, r - 1);
      if (low === high) high += 0.001;
      for (let i = 0; i < half; i++) {
        const ramp = Math.min(1, Math.max(0, Math.fround(Math.fround(i - low) / Math.fround(high - low))));
        const extrapolation = Math.fround(1 - ramp);
        const inter = Math.fround(1 / Math.fround(s.factor * posFreq[i]!));
        const extra = Math.fround(1 / posFreq[i]!);
        invFreq[i] = Math.fround(Math.fround(inter * Math.fround(1 - extrapolation)) + Math.fround(extra * extrapolation));
      }
      return { invFreq, attentionFactor: s.attentionFactor };
    }
    case "longrope": {
      const long = lastPosition + 1 > s.originalMax;
      const factors = long ? s.long : s.short;
      for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.fround(Math.fround(factors[i]!) * posFreq[i]!);
      return { invFreq, attentionFactor: (long ? s.longMscale : s.shortMscale) ?? s.attentionFactor };
    }
    default: {
      const never: never = s;
      throw new Error(`unknown rope scaling ${JSON.stringify(never)}`);
    }
  }
}

/**
 * Which frequencies a forward ending at `lastPosition` rotates with: LongRoPE switches from its
 * short to its long factors past originalMax ("" for every other scaling). Keys cached under one
 * regime are not valid under the other (Hugging Face recomputes the cache there too).
 */
export function ropeRegime(rope: RopeSpec, lastPosition: number): string {
  return rope.scaling.type === "longrope" ? (lastPosition + 1 > rope.scaling.originalMax ? "long" : "short") : "";
}

/** cos/sin [count, headDim] for positions start..start+count-1. */
export function ropeTables(start: number, count: number, headDim: number, rope: RopeSpec): { cos: Float32Array; sin: Float32Array } {
  const r = rope.rotaryDim;
  const half = r / 2;
  const { invFreq, attentionFactor } = ropeFrequencies(rope, start + count - 1);
  const cos = new Float32Array(count * headDim); // [T, hd]
  const sin = new Float32Array(count * headDim); // [T, hd]
  for (let t = 0; t < count; t++) {
    const p = start + t;
    const row = t * headDim;
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(p * invFreq[i]!);
      const c = Math.fround(Math.fround(Math.cos(angle)) * attentionFactor);
      const s = Math.fround(Math.fround(Math.sin(angle)) * attentionFactor);
      cos[row + i] = c;
      cos[row + half + i] = c;
      sin[row + i] = s;
      sin[row + half + i] = s;
    }
    cos.fill(1, row + r, row + headDim);
  }
  return { cos, sin };
}

/**
 * Additive causal mask [T, P+T]: token t (at position P+t) sees positions 0..P+t, or with a
 * sliding window only the last `window` of them (itself included).
 */
export function causalMask(past: number, count: number, window = 0): Float32Array {
  const total = past + count;
  const mask = new Float32Array(count * total); // [T, S]
  for (let t = 0; t < count; t++) {
    mask.fill(-Infinity, t * total + past + t + 1, (t + 1) * total);
    if (window > 0) mask.fill(-Infinity, t * total, t * total + Math.max(0, past + t + 1 - window));
  }
  return mask;
}
