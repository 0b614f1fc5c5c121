/**
 * Expert storage precision: how one expert record (gate [F,H], up [F,H], down [H,F]) is encoded
 * in the store and in the resident tier. Kernels compute straight from these bytes.
 *   f32  : float32
 *   f16  : IEEE half
 *   int8 : per block of 32 along a row, fp32 scale; scales[rows*cols/32] then int8[rows*cols]
 *   int4 : per block of 32, fp32 scale; scales then packed nibbles (q + 8), low nibble first
 * The same layout is implemented in native-bindings/src/expert_kernels.cc.
 */
import { InvalidOptionError } from "../errors.js";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import { floatToHalf, halfToFloat } from "../util/dtype.js";

export const EXPERT_ENCODINGS = ["f32", "f16", "int8", "int4"] as const;
export type ExpertEncoding = (typeof EXPERT_ENCODINGS)[number];
export const BLOCK = 32;

/** The numeric code the native kernels use. */
export function encodingCode(enc: ExpertEncoding): number {
  switch (enc) {
    case "f32":
      return 0;
    case "f16":
      return 1;
    case "int8":
      return 2;
    case "int4":
      return 3;
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

export function parseEncoding(value: string): ExpertEncoding {
  if ((EXPERT_ENCODINGS as readonly string[]).includes(value)) return value as ExpertEncoding;
  throw new InvalidOptionError(`--experts must be one of ${EXPERT_ENCODINGS.join(", ")}, got "${value}"`);
}

export function matrixBytes(enc: ExpertEncoding, rows: number, cols: number): number {
  const n = rows * cols;
  switch (enc) {
    case "f32":
      return n * 4;
    case "f16":
      return n * 2;
    case "int8":
      return (n / BLOCK) * 4 + n;
    case "int4":
      return (n / BLOCK) * 4 + n / 2;
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

/** Bytes of one expert record: gate and up [F,H], down [H,F]. */
export function recordBytes(enc: ExpertEncoding, hiddenSize: number, expertFfn: number): number {
  return 2 * matrixBytes(enc, expertFfn, hiddenSize) + matrixBytes(enc, hiddenSize, expertFfn);
}

export function checkEncodable(enc: ExpertEncoding, hiddenSize: number, expertFfn: number): void {
  if ((enc === "int8" || enc === "int4") && (hiddenSize % BLOCK !== 0 || expertFfn % BLOCK !== 0)) {
    throw new InvalidOptionError(`--experts ${enc} needs hidden size (${hiddenSize}) and expert size (${expertFfn}) divisible by ${BLOCK}; use f16 or f32`);
  }
}

/** Encodes a fp32 matrix [rows, cols]; native when available (fast), else the JS reference. */
export function encodeMatrix(enc: ExpertEncoding, src: Float32Array, rows: number, cols: number): Uint8Array {
  const dst = new Uint8Array(matrixBytes(enc, rows, cols));
  const { addon } = loadNativeAddon();
  if (addon) addon.encodeMatrix(encodingCode(enc), src, rows, cols, dst);
  else encodeMatrixJs(enc, src, rows, cols, dst);
  return dst;
}

/** The JS reference encoder (exported for tests; encodeMatrix prefers the native one). */
export function encodeMatrixJs(enc: ExpertEncoding, src: Float32Array, rows: number, cols: number, dst: Uint8Array): void {
  const n = rows * cols;
  const view = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  switch (enc) {
    case "f32":
      dst.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
      return;
    case "f16":
      for (let i = 0; i < n; i++) view.setUint16(2 * i, floatToHalf(src[i]!), true);
      return;
    case "int8": {
      const q = new Int8Array(dst.buffer, dst.byteOffset + (n / BLOCK) * 4, n);
      for (let b = 0; b < n / BLOCK; b++) {
        let amax = 0;
        for (let i = 0; i < BLOCK; i++) amax = Math.max(amax, Math.abs(src[b * BLOCK + i]!));
        // amax * fp32(1/127), as the native encoder computes it (reciprocal math).
        const d = Math.fround(amax * Math.fround(1 / 127));
        const id = d ? Math.fround(1 / d) : 0;
        view.setFloat32(4 * b, d, true);
        for (let i = 0; i < BLOCK; i++) q[b * BLOCK + i] = roundHalfEven(Math.fround(src[b * BLOCK + i]! * id));
      }
      return;
    }
    case "int4": {
      const base = (n / BLOCK) * 4;
      for (let b = 0; b < n / BLOCK; b++) {
        let m = 0;
        for (let i = 0; i < BLOCK; i++) if (Math.abs(src[b * BLOCK + i]!) > Math.abs(m)) m = src[b * BLOCK + i]!;
        const d = Math.fround(m / -8);
        const id = d ? Math.fround(1 / d) : 0;
        view.setFloat32(4 * b, d, true);
        for (let i = 0; i < BLOCK / 2; i++) {
          const lo = Math.min(15, Math.max(0, roundHalfEven(Math.fround(src[b * BLOCK + 2 * i]! * id)) + 8));
          const hi = Math.min(15, Math.max(0, roundHalfEven(Math.fround(src[b * BLOCK + 2 * i + 1]! * id)) + 8));
          dst[base + b * (BLOCK / 2) + i] = lo | (hi << 4);
        }
      }
      return;
    }
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

/** lrintf's default rounding: to nearest, ties to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Decodes an encoded matrix back to fp32 (for kernels that need fp32 weights). */
export function decodeMatrix(enc: ExpertEncoding, bytes: Uint8Array, rows: number, cols: number): Float32Array {
  const n = rows * cols;
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (enc) {
    case "f32":
      new Uint8Array(out.buffer).set(bytes.subarray(0, n * 4));
      return out;
    case "f16":
      for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    case "int8": {
      const q = new Int8Array(bytes.buffer, bytes.byteOffset + (n / BLOCK) * 4, n);
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * Math.floor(i / BLOCK), true) * q[i]!;
      return out;
    }
    case "int4": {
      const base = (n / BLOCK) * 4;
      for (let i = 0; i < n; i++) {
        const byte = bytes[base + (i >> 1)]!;
        const nib = i & 1 ? byte >> 4 : byte & 15;
        out[i] = view.getFloat32(4 * Math.floor(i / BLOCK), true) * (nib - 8);
      }
      return out;
    }
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}
