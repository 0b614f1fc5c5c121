/**
 * ggml tensor types: their block sizes, and codecs written from the published definitions
 * (llama.cpp ggml/src/ggml-common.h for the block layouts, ggml-quants.c for the reference
 * quantizers quantize_row_*_ref and the dequantizers). The quantizers reproduce llama.cpp's
 * reference results bit for bit (test/ggml-quants.test.ts compares them with libggml-base of the
 * pinned node-llama-cpp): every C `float` operation is done here as a double operation rounded
 * with Math.fround, which gives the same float for + - * / and sqrt.
 *
 * This file: the type table, F32/F16/BF16, the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0) and dispatch. The 256-element super-block types (Q2_K..Q6_K) are in ggmlKQuants.ts.
 */
import { InvalidOptionError } from "../errors.js";
import { HALF_TO_FLOAT, fp32ToBf16, fp32ToFp16, half, putHalf, u16 } from "./ggmlFloat.js";
import {
  dequantizeQ2_K,
  dequantizeQ3_K,
  dequantizeQ4_K,
  dequantizeQ5_K,
  dequantizeQ6_K,
  quantizeQ2_K,
  quantizeQ3_K,
  quantizeQ4_K,
  quantizeQ5_K,
  quantizeQ6_K,
} from "./ggmlKQuants.js";

/** ggml_type ids as stored in GGUF tensor infos. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
  NVFP4: 40,
  Q1_0: 41,
  Q2_0: 42,
} as const;
export { HALF_TO_FLOAT, fp32ToBf16, fp32ToFp16, nearestInt } from "./ggmlFloat.js";
export type GgmlTypeName = keyof typeof GgmlType;

export interface GgmlTypeInfo {
  id: number;
  name: GgmlTypeName;
  /** Elements per block (1 for the plain number types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/** Block sizes and bytes per block of every ggml type a GGUF file may hold (ggml.c type_traits). */
const TYPE_SIZES: Record<GgmlTypeName, [blockSize: number, typeSize: number]> = {
  F32: [1, 4],
  F16: [1, 2],
  Q4_0: [32, 18],
  Q4_1: [32, 20],
  Q5_0: [32, 22],
  Q5_1: [32, 24],
  Q8_0: [32, 34],
  Q8_1: [32, 36],
  Q2_K: [256, 84],
  Q3_K: [256, 110],
  Q4_K: [256, 144],
  Q5_K: [256, 176],
  Q6_K: [256, 210],
  Q8_K: [256, 292],
  IQ2_XXS: [256, 66],
  IQ2_XS: [256, 74],
  IQ3_XXS: [256, 98],
  IQ1_S: [256, 50],
  IQ4_NL: [32, 18],
  IQ3_S: [256, 110],
  IQ2_S: [256, 82],
  IQ4_XS: [256, 136],
  I8: [1, 1],
  I16: [1, 2],
  I32: [1, 4],
  I64: [1, 8],
  F64: [1, 8],
  IQ1_M: [256, 56],
  BF16: [1, 2],
  TQ1_0: [256, 54],
  TQ2_0: [256, 66],
  MXFP4: [32, 17],
  NVFP4: [64, 36],
  Q1_0: [128, 18],
  Q2_0: [64, 18],
};

const BY_ID = new Map<number, GgmlTypeInfo>(
  (Object.keys(GgmlType) as GgmlTypeName[]).map((name) => [GgmlType[name], { id: GgmlType[name], name, blockSize: TYPE_SIZES[name][0], typeSize: TYPE_SIZES[name][1] }])
);

/** The type with this id, or undefined for an id no ggml version has defined. */
export function ggmlTypeInfo(id: number): GgmlTypeInfo | undefined {
  return BY_ID.get(id);
}

export function ggmlTypeByName(name: GgmlTypeName): GgmlTypeInfo {
  return BY_ID.get(GgmlType[name])!;
}

/** Bytes of `elements` values of a type (whole blocks: the caller checks divisibility). */
export function ggmlByteSize(type: GgmlTypeInfo, elements: number): number {
  return (elements / type.blockSize) * type.typeSize;
}

const f = Math.fround;

/** C's (int) conversion of a float: toward zero. */
const trunc = Math.trunc;

// ---------------------------------------------------------------------------------------------
// Plain number types

function checkBlocks(bytes: Uint8Array, type: GgmlTypeInfo, n: number): void {
  if (n % type.blockSize !== 0) throw new InvalidOptionError(`${type.name} holds whole blocks of ${type.blockSize} values; ${n} values is not a multiple`);
  const need = ggmlByteSize(type, n);
  if (bytes.byteLength < need) throw new InvalidOptionError(`${type.name}: ${n} values need ${need} bytes, got ${bytes.byteLength}`);
}

function dequantizeF32(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  new Uint8Array(out.buffer).set(b.subarray(0, 4 * n));
  return out;
}

function dequantizeF16(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  if (b.byteOffset % 2 === 0) {
    const src = new Uint16Array(b.buffer, b.byteOffset, n);
    for (let i = 0; i < n; i++) out[i] = HALF_TO_FLOAT[src[i]!]!;
  } else {
    for (let i = 0; i < n; i++) out[i] = half(b, 2 * i);
  }
  return out;
}

function dequantizeBF16(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) bits[i] = u16(b, 2 * i) << 16;
  return out;
}

function quantizeF16(x: Float32Array): Uint8Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = fp32ToFp16(x[i]!);
  return new Uint8Array(out.buffer);
}

function quantizeBF16(x: Float32Array): Uint8Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = fp32ToBf16(x[i]!);
  return new Uint8Array(out.buffer);
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks. Q4_0: d (fp16), 16 bytes of nibbles (value j in the low nibble of byte j,
// value j+16 in its high nibble), q - 8. Q4_1: d, m, nibbles, q*d + m. Q5_0 / Q5_1: as Q4 with a
// u32 of fifth bits (bit j for value j). Q8_0: d, 32 int8.

function absMaxSigned(x: Float32Array, base: number, n: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[base + j]!;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

function minMax(x: Float32Array, base: number, n: number): [number, number] {
  let min = Infinity;
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const v = x[base + j]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  // FLT_MAX / -FLT_MAX as ggml starts them (an all-NaN block keeps them)
  return [min === Infinity ? 3.4028234663852886e38 : min, max === -Infinity ? -3.4028234663852886e38 : max];
}

function quantizeQ4_0(x: Float32Array): Uint8Array {
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 18);
  for (let i = 0; i < nb; i++) {
    const base = i * 32;
    const o = i * 18;
    const d = f(absMaxSigned(x, base, 32) / -8);
    const id = d ? f(1 / d) : 0;
    putHalf(out, o, d);
    for (let j = 0; j < 16; j++) {
      const x0 = f(x[base + j]! * id);
      const x1 = f(x[base + 16 + j]! * id);
      const q0 = Math.min(15, trunc(f(x0 + 8.5)));
      const q1 = Math.min(15, trunc(f(x1 + 8.5)));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

function dequantizeQ4_0(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n / 32; i++) {
    const o = i * 18;
    const d = half(b, o);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j]!;
      out[i * 32 + j] = ((q & 0x0f) - 8) * d;
      out[i * 32 + 16 + j] = ((q >> 4) - 8) * d;
    }
  }
  return out;
}

function quantizeQ4_1(x: Float32Array): Uint8Array {
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 20);
  for (let i = 0; i < nb; i++) {
    const base = i * 32;
    const o = i * 20;
    const [min, max] = minMax(x, base, 32);
    const d = f(f(max - min) / 15);
    const id = d ? f(1 / d) : 0;
    putHalf(out, o, d);
    putHalf(out, o + 2, min);
    for (let j = 0; j < 16; j++) {
      const x0 = f(f(x[base + j]! - min) * id);
      const x1 = f(f(x[base + 16 + j]! - min) * id);
      const q0 = Math.min(15, trunc(f(x0 + 0.5)));
      const q1 = Math.min(15, trunc(f(x1 + 0.5)));
      out[o + 4 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

function dequantizeQ4_1(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n / 32; i++) {
    const o = i * 20;
    const d = half(b, o);
    const m = half(b, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 4 + j]!;
      out[i * 32 + j] = f((q & 0x0f) * d) + m;
      out[i * 32 + 16 + j] = f((q >> 4) * d) + m;
    }
  }
  return out;
}

function quantizeQ5_0(x: Float32Array): Uint8Array {
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 22);
  for (let i = 0; i < nb; i++) {
    const base = i * 32;
    const o = i * 22;
    const d = f(absMaxSigned(x, base, 32) / -16);
    const id = d ? f(1 / d) : 0;
    putHalf(out, o, d);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const q0 = Math.min(31, trunc(f(f(x[base + j]! * id) + 16.5)));
      const q1 = Math.min(31, trunc(f(f(x[base + 16 + j]! * id) + 16.5)));
      out[o + 6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
      qh |= ((q0 & 0x10) >>> 4) << j;
      qh |= ((q1 & 0x10) >>> 4) << (j + 16);
    }
    out[o + 2] = qh & 0xff;
    out[o + 3] = (qh >>> 8) & 0xff;
    out[o + 4] = (qh >>> 16) & 0xff;
    out[o + 5] = (qh >>> 24) & 0xff;
  }
  return out;
}

function fifthBits(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function dequantizeQ5_0(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n / 32; i++) {
    const o = i * 22;
    const d = half(b, o);
    const qh = fifthBits(b, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 6 + j]!;
      const h0 = ((qh >>> j) & 1) << 4;
      const h1 = ((qh >>> (j + 16)) & 1) << 4;
      out[i * 32 + j] = (((q & 0x0f) | h0) - 16) * d;
      out[i * 32 + 16 + j] = (((q >> 4) | h1) - 16) * d;
    }
  }
  return out;
}

function quantizeQ5_1(x: Float32Array): Uint8Array {
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 24);
  for (let i = 0; i < nb; i++) {
    const base = i * 32;
    const o = i * 24;
    const [min, max] = minMax(x, base, 32);
    const d = f(f(max - min) / 31);
    const id = d ? f(1 / d) : 0;
    putHalf(out, o, d);
    putHalf(out, o + 2, min);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const q0 = trunc(f(f(f(x[base + j]! - min) * id) + 0.5)) & 0xff;
      const q1 = trunc(f(f(f(x[base + 16 + j]! - min) * id) + 0.5)) & 0xff;
      out[o + 8 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
      qh |= ((q0 & 0x10) >>> 4) << j;
      qh |= ((q1 & 0x10) >>> 4) << (j + 16);
    }
    out[o + 4] = qh & 0xff;
    out[o + 5] = (qh >>> 8) & 0xff;
    out[o + 6] = (qh >>> 16) & 0xff;
    out[o + 7] = (qh >>> 24) & 0xff;
  }
  return out;
}

function dequantizeQ5_1(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n / 32; i++) {
    const o = i * 24;
    const d = half(b, o);
    const m = half(b, o + 2);
    const qh = fifthBits(b, o + 4);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 8 + j]!;
      const h0 = ((qh >>> j) & 1) << 4;
      const h1 = ((qh >>> (j + 16)) & 1) << 4;
      out[i * 32 + j] = f(((q & 0x0f) | h0) * d) + m;
      out[i * 32 + 16 + j] = f(((q >> 4) | h1) * d) + m;
    }
  }
  return out;
}

/** Q8_0 as quantize_row_q8_0_ref: d = amax/127 (stored fp16), q = roundf(x * (1/d)), half away from zero. */
function quantizeQ8_0(x: Float32Array): Uint8Array {
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 34);
  const q = new Int8Array(out.buffer);
  for (let i = 0; i < nb; i++) {
    const base = i * 32;
    const o = i * 34;
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[base + j]!));
    const d = f(amax / 127);
    const id = d ? f(1 / d) : 0;
    putHalf(out, o, d);
    for (let j = 0; j < 32; j++) {
      const v = f(x[base + j]! * id);
      q[o + 2 + j] = v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5);
    }
  }
  return out;
}

function dequantizeQ8_0(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const q = new Int8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n / 32; i++) {
    const o = i * 34;
    const d = half(b, o);
    for (let j = 0; j < 32; j++) out[i * 32 + j] = q[o + 2 + j]! * d;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Dispatch

type Dequantizer = (bytes: Uint8Array, n: number) => Float32Array;
type Quantizer = (values: Float32Array) => Uint8Array;

const DEQUANTIZERS = new Map<number, Dequantizer>([
  [GgmlType.F32, dequantizeF32],
  [GgmlType.F16, dequantizeF16],
  [GgmlType.BF16, dequantizeBF16],
  [GgmlType.Q4_0, dequantizeQ4_0],
  [GgmlType.Q4_1, dequantizeQ4_1],
  [GgmlType.Q5_0, dequantizeQ5_0],
  [GgmlType.Q5_1, dequantizeQ5_1],
  [GgmlType.Q8_0, dequantizeQ8_0],
  [GgmlType.Q2_K, dequantizeQ2_K],
  [GgmlType.Q3_K, dequantizeQ3_K],
  [GgmlType.Q4_K, dequantizeQ4_K],
  [GgmlType.Q5_K, dequantizeQ5_K],
  [GgmlType.Q6_K, dequantizeQ6_K],
]);

const QUANTIZERS = new Map<number, Quantizer>([
  [GgmlType.F32, (x) => new Uint8Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength))],
  [GgmlType.F16, quantizeF16],
  [GgmlType.BF16, quantizeBF16],
  [GgmlType.Q4_0, quantizeQ4_0],
  [GgmlType.Q4_1, quantizeQ4_1],
  [GgmlType.Q5_0, quantizeQ5_0],
  [GgmlType.Q5_1, quantizeQ5_1],
  [GgmlType.Q8_0, quantizeQ8_0],
  [GgmlType.Q2_K, quantizeQ2_K],
  [GgmlType.Q3_K, quantizeQ3_K],
  [GgmlType.Q4_K, quantizeQ4_K],
  [GgmlType.Q5_K, quantizeQ5_K],
  [GgmlType.Q6_K, quantizeQ6_K],
]);

/**
 * Hook for codecs that live elsewhere. MXFP4 (gpt-oss experts) is owned by
 * src/store/expertEncoding.ts: TODO(issue 16) register its GGUF block decoder here with
 * `registerGgmlDequantizer(GgmlType.MXFP4, ...)` (block: one E8M0 exponent byte, then 16 bytes of
 * E2M1 nibbles, value j in the low nibble of byte j and value j+16 in the high nibble), after
 * which GGUF files with MXFP4 tensors import like any other type.
 */
export function registerGgmlDequantizer(type: number, dequantize: Dequantizer): void {
  DEQUANTIZERS.set(type, dequantize);
}

/** Whether moe-run can decode tensors of this type. */
export function canDequantize(type: number): boolean {
  return DEQUANTIZERS.has(type);
}

export function canQuantize(type: number): boolean {
  return QUANTIZERS.has(type);
}

function info(type: number): GgmlTypeInfo {
  const t = ggmlTypeInfo(type);
  if (!t) throw new InvalidOptionError(`unknown ggml tensor type id ${type}`);
  return t;
}

/** `n` values of a ggml type (whole blocks, in order) -> fp32. */
export function dequantize(type: number, bytes: Uint8Array, n: number): Float32Array {
  const t = info(type);
  const fn = DEQUANTIZERS.get(type);
  if (!fn) throw new InvalidOptionError(`ggml type ${t.name} cannot be decoded by moe-run yet`);
  checkBlocks(bytes, t, n);
  return fn(bytes, n);
}

/** fp32 -> a ggml type, as llama.cpp's reference quantizer (quantize_row_*_ref) encodes it. */
export function quantize(type: number, values: Float32Array): Uint8Array {
  const t = info(type);
  const fn = QUANTIZERS.get(type);
  if (!fn) throw new InvalidOptionError(`ggml type ${t.name} cannot be encoded by moe-run`);
  if (values.length % t.blockSize !== 0) {
    throw new InvalidOptionError(`${t.name} holds whole blocks of ${t.blockSize} values; ${values.length} values is not a multiple`);
  }
  return fn(values);
}
