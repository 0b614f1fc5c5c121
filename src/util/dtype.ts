/** Conversions between the float formats found in checkpoints and the fp32 the runtime computes in. */

export type FloatDType = "F32" | "F16" | "BF16";

export const BYTES_PER_ELEMENT: Record<FloatDType, number> = { F32: 4, F16: 2, BF16: 2 };

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits -> number. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** number -> IEEE binary16 bits, round to nearest even. */
export function floatToHalf(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** Decodes raw little-endian bytes of the given dtype into a fresh Float32Array. */
export function decodeToFloat32(bytes: Uint8Array, dtype: FloatDType): Float32Array {
  const n = bytes.byteLength / BYTES_PER_ELEMENT[dtype];
  switch (dtype) {
    case "F32": {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    case "BF16": {
      const out = new Float32Array(n);
      const outBits = new Uint32Array(out.buffer);
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let i = 0; i < n; i++) outBits[i] = view.getUint16(2 * i, true) << 16;
      return out;
    }
    case "F16": {
      const out = new Float32Array(n);
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    }
    default: {
      const never: never = dtype;
      throw new Error(`unhandled dtype ${String(never)}`);
    }
  }
}

/** Encodes fp32 values as little-endian bytes of the given dtype (round to nearest even). */
export function encodeFromFloat32(values: Float32Array, dtype: FloatDType): Uint8Array {
  switch (dtype) {
    case "F32":
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength).slice();
    case "BF16": {
      const out = new Uint8Array(values.length * 2);
      const view = new DataView(out.buffer);
      const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
      for (let i = 0; i < values.length; i++) {
        const x = bits[i]!;
        const rounded = ((x >>> 16) & 0x7f80) === 0x7f80 ? x >>> 16 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
        view.setUint16(2 * i, rounded & 0xffff, true);
      }
      return out;
    }
    case "F16": {
      const out = new Uint8Array(values.length * 2);
      const view = new DataView(out.buffer);
      for (let i = 0; i < values.length; i++) view.setUint16(2 * i, floatToHalf(values[i]!), true);
      return out;
    }
    default: {
      const never: never = dtype;
      throw new Error(`unhandled dtype ${String(never)}`);
    }
  }
}
