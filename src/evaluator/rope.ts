/**
 * RoPE tables in Hugging Face's half-split layout: for position p and i < hd/2,
 * angle = p * theta^(-2i/hd); cos/sin rows are [cos(angle_0..angle_{h-1}), cos(angle_0..angle_{h-1})].
 * Values are rounded through fp32 at each step, as the reference computes them in fp32.
 */
export function ropeTables(start: number, count: number, headDim: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const invFreq = new Float32Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.fround(theta ** Math.fround((2 * i) / headDim));
  const cos = new Float32Array(count * headDim); // [T, hd]
  const sin = new Float32Array(count * headDim); // [T, hd]
  for (let t = 0; t < count; t++) {
    const p = start + t;
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(p * invFreq[i]!);
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[t * headDim + i] = c;
      cos[t * headDim + half + i] = c;
      sin[t * headDim + i] = s;
      sin[t * headDim + half + i] = s;
    }
  }
  return { cos, sin };
}

/** Additive causal mask [T, P+T]: token t (at position P+t) sees positions 0..P+t. */
export function causalMask(past: number, count: number): Float32Array {
  const total = past + count;
  const mask = new Float32Array(count * total); // [T, S]
  for (let t = 0; t < count; t++) mask.fill(-Infinity, t * total + past + t + 1, (t + 1) * total);
  return mask;
}
