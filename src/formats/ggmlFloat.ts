/**
 * The float helpers the ggml codecs share: fp16 and bf16 as ggml converts them (round to nearest
 * even), and llama.cpp's nearest_int.
 */

const f = Math.fround;

/** fp16 bits -> float, for all 65536 patterns (IEEE binary16; subnormals, inf and NaN included). */
export const HALF_TO_FLOAT = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    t[h] = exp === 0 ? sign * frac * 2 ** -24 : exp === 0x1f ? (frac ? NaN : sign * Infinity) : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return t;
})();

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** float -> fp16 bits, round to nearest even (ggml's GGML_FP32_TO_FP16). */
export function fp32ToFp16(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | (mant ? 0x7e00 : 0x7c00); // NaN as ggml writes it: quiet, no payload
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++; // a carry into the exponent is right (and reaches inf)
  return sign | half;
}

/** float -> bf16 bits as ggml rounds (nearest even; NaN kept quiet). */
export function fp32ToBf16(value: number): number {
  scratchF32[0] = value;
  const u = scratchU32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 64) & 0xffff;
  return ((u + (0x7fff + ((u >>> 16) & 1))) >>> 16) & 0xffff;
}

export const u16 = (b: Uint8Array, o: number) => b[o]! | (b[o + 1]! << 8);
export const half = (b: Uint8Array, o: number) => HALF_TO_FLOAT[b[o]! | (b[o + 1]! << 8)]!;
export const putU16 = (b: Uint8Array, o: number, v: number) => {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
};
/** Stores a float as fp16 and returns the value the fp16 stands for (what ggml reads back). */
export const putHalf = (b: Uint8Array, o: number, v: number): number => {
  const h = fp32ToFp16(v);
  putU16(b, o, h);
  return HALF_TO_FLOAT[h]!;
};

/** llama.cpp's nearest_int: round half to even (the 1.5*2^23 trick), for |v| <= 2^22. */
export function nearestInt(v: number): number {
  return f(v + 12582912) - 12582912;
}

