/**
 * Expert storage precision: how one expert record is encoded in the store and in the resident
 * tier. Kernels compute straight from these bytes.
 *
 * Record (expertRecordLayout): gate [F,H], up [F,H], down [H,F], each a matrix in the encoding
 * below, concatenated; with expert biases (ExpertKernelOptions.expertBias, e.g. gpt-oss) then
 * fp32 gate bias [F], up bias [F], down bias [H] (little-endian, right after the matrices; not
 * necessarily 4-byte aligned for f16 records of odd sizes). Without biases a record is exactly
 * the three matrices.
 *
 * Matrix [rows, cols], row-major, blocks of 32 along a row (cols % 32 == 0 for int8/int4/mxfp4):
 *   f32   : float32[rows*cols]
 *   f16   : IEEE half[rows*cols]
 *   int8  : fp32 scale per block; scales[rows*cols/32] then int8[rows*cols]        x = scale * q
 *   int4  : fp32 scale per block; scales then packed nibbles (q + 8), element 2i in the low
 *           nibble of byte i, 2i+1 in the high one                                  x = scale * q
 *   mxfp4 : OCP MXFP4 (store/mxfp4.ts): E8M0 scale byte per block; uint8 e[rows*cols/32] then
 *           packed E2M1 codes, nibble order as int4; x = E2M1(code) * 2^(e-127). Hugging Face's
 *           gpt-oss scales and blocks, concatenated as they are.
 *   q4_k  : GGUF's Q4_K super-blocks as they are (llama.cpp ggml-common.h block_q4_K: fp16 d, dmin;
 *           scales[12] (8 six-bit scales and mins); qs[128]), 144 bytes per 256 values, row-major
 *           (cols % 256 == 0: a row is whole super-blocks). x = fp32(d*sc_j) * q - fp32(dmin*m_j).
 *   q5_k  : GGUF's Q5_K super-blocks as they are (block_q5_K: q4_k's d, dmin, scales[12], then
 *           qh[32] (the fifth bits), qs[128]), 176 bytes per 256 values, rows as q4_k.
 *   q6_k  : GGUF's Q6_K super-blocks as they are (block_q6_K: ql[128], qh[64], int8 scales[16],
 *           fp16 d), 210 bytes per 256 values, rows as q4_k. x = fp32(d*sc_j) * (q - 32).
 *           Both encode and decode with src/formats/ggmlKQuants.ts (llama.cpp's reference codec).
 * The same layouts are implemented in native-bindings/src/expert_kernels.cc.
 */
import { InvalidOptionError } from "../errors.js";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import { floatToHalf, halfToFloat } from "../util/dtype.js";
import { GgmlType, dequantize, quantize, registerGgmlDequantizer } from "../formats/ggmlQuants.js";
import { dequantizeGgmlMxfp4 } from "./ggmlExpertBlocks.js";
import { decodeMxfp4, encodeMxfp4, mxfp4MatrixBytes, mxfp4MatrixFromBlocks, type GptOssExpertTensors } from "./mxfp4.js";

export { MXFP4_X2, e8m0ToFloat, mxfp4MatrixFromBlocks, mxfp4MatrixFromGgml, type GptOssExpertTensors } from "./mxfp4.js";
export { dequantizeGgmlMxfp4, expertMatrixFromGgml, int4MatrixFromGgmlQ4_0, int8MatrixFromGgmlQ8_0, losslessExpertEncoding } from "./ggmlExpertBlocks.js";

// GGUF tensors of type MXFP4 decode with this codec (the hook src/formats/ggmlQuants.ts offers).
registerGgmlDequantizer(GgmlType.MXFP4, dequantizeGgmlMxfp4);

export const EXPERT_ENCODINGS = ["f32", "f16", "int8", "int4", "mxfp4"] as const;
/**
 * GGUF k-quant super-blocks kept as they are (256 values per block: rows must be whole blocks,
 * checkEncodable). Not (yet) in EXPERT_ENCODINGS: the suites that loop over EXPERT_ENCODINGS at
 * sizes that are not multiples of 256 (test/backends.test.ts) would refuse them.
 */
export const GGML_K_ENCODINGS = ["q4_k", "q5_k", "q6_k"] as const;
export type ExpertEncoding = (typeof EXPERT_ENCODINGS)[number] | (typeof GGML_K_ENCODINGS)[number];
export const BLOCK = 32;
/** Values per k-quant super-block (llama.cpp QK_K). */
export const QK_K = 256;
/** Bytes per super-block of q4_k, q5_k and q6_k. */
export const K_BLOCK_BYTES = { q4_k: 144, q5_k: 176, q6_k: 210 } as const;
const K_GGML_TYPE = { q4_k: GgmlType.Q4_K, q5_k: GgmlType.Q5_K, q6_k: GgmlType.Q6_K } as const;

/** Whether `enc` holds GGUF k-quant super-blocks (q4_k, q5_k, q6_k). */
export function isKQuant(enc: ExpertEncoding): enc is (typeof GGML_K_ENCODINGS)[number] {
  return enc === "q4_k" || enc === "q5_k" || enc === "q6_k";
}

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
    case "mxfp4":
      return 4;
    case "q4_k":
      return 5;
    case "q6_k":
      return 6;
    case "q5_k":
      return 7;
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

export function parseEncoding(value: string): ExpertEncoding {
  const all: readonly string[] = [...EXPERT_ENCODINGS, ...GGML_K_ENCODINGS];
  if (all.includes(value)) return value as ExpertEncoding;
  throw new InvalidOptionError(`--experts must be one of ${all.join(", ")}, got "${value}"`);
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
    case "mxfp4":
      return mxfp4MatrixBytes(rows, cols);
    case "q4_k":
    case "q5_k":
    case "q6_k":
      return (n / QK_K) * K_BLOCK_BYTES[enc];
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

/** Where each part of an expert record lies: [byte offset, bytes]. Biases only with expertBias. */
export interface ExpertRecordLayout {
  gate: [number, number];
  up: [number, number];
  down: [number, number];
  /** fp32 [F], [F], [H] */
  gateBias?: [number, number];
  upBias?: [number, number];
  downBias?: [number, number];
  bytes: number;
}

export function expertRecordLayout(enc: ExpertEncoding, hiddenSize: number, expertFfn: number, expertBias = false): ExpertRecordLayout {
  const gm = matrixBytes(enc, expertFfn, hiddenSize);
  const dm = matrixBytes(enc, hiddenSize, expertFfn);
  const l: ExpertRecordLayout = { gate: [0, gm], up: [gm, gm], down: [2 * gm, dm], bytes: 2 * gm + dm };
  if (expertBias) {
    l.gateBias = [l.bytes, 4 * expertFfn];
    l.upBias = [l.bytes + 4 * expertFfn, 4 * expertFfn];
    l.downBias = [l.bytes + 8 * expertFfn, 4 * hiddenSize];
    l.bytes += 4 * (2 * expertFfn + hiddenSize);
  }
  return l;
}

/** Bytes of one expert record: gate and up [F,H], down [H,F], and with expertBias their fp32 biases. */
export function recordBytes(enc: ExpertEncoding, hiddenSize: number, expertFfn: number, expertBias = false): number {
  return expertRecordLayout(enc, hiddenSize, expertFfn, expertBias).bytes;
}

/** An expert's biases, fp32: gate [F], up [F], down [H]. */
export interface ExpertBiases {
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

/**
 * One expert record from fp32 matrices (gate, up [F,H], down [H,F]) and, when given, its biases
 * (the record then has expertBias's layout).
 */
export function encodeExpertRecord(
  enc: ExpertEncoding,
  hiddenSize: number,
  expertFfn: number,
  w: { gate: Float32Array; up: Float32Array; down: Float32Array },
  biases?: ExpertBiases
): Uint8Array {
  const H = hiddenSize;
  const F = expertFfn;
  const l = expertRecordLayout(enc, H, F, biases !== undefined);
  const out = new Uint8Array(l.bytes);
  out.set(encodeMatrix(enc, w.gate, F, H), l.gate[0]);
  out.set(encodeMatrix(enc, w.up, F, H), l.up[0]);
  out.set(encodeMatrix(enc, w.down, H, F), l.down[0]);
  if (biases) writeBiases(out, l, H, F, biases);
  return out;
}

function writeBiases(out: Uint8Array, l: ExpertRecordLayout, H: number, F: number, b: ExpertBiases): void {
  const check = (name: string, v: Float32Array, n: number) => {
    if (v.length !== n) throw new InvalidOptionError(`expert ${name} bias has ${v.length} values, expected ${n}`);
  };
  check("gate", b.gate, F);
  check("up", b.up, F);
  check("down", b.down, H);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const put = (at: number, v: Float32Array) => v.forEach((x, i) => view.setFloat32(at + 4 * i, x, true));
  put(l.gateBias![0], b.gate);
  put(l.upBias![0], b.up);
  put(l.downBias![0], b.down);
}

/** The fp32 biases of a record with expertBias's layout (copies). */
export function readExpertBiases(record: Uint8Array, enc: ExpertEncoding, hiddenSize: number, expertFfn: number): ExpertBiases {
  const l = expertRecordLayout(enc, hiddenSize, expertFfn, true);
  if (record.byteLength !== l.bytes) throw new InvalidOptionError(`expert record has ${record.byteLength} bytes, expected ${l.bytes} (${enc} with biases)`);
  const get = ([at, bytes]: [number, number]) => new Float32Array(record.slice(at, at + bytes).buffer);
  return { gate: get(l.gateBias!), up: get(l.upBias!), down: get(l.downBias!) };
}

/**
 * A gpt-oss expert's record in mxfp4, straight from its checkpoint's bytes (no float is
 * involved for the weights): gate_up's interleaved rows are split into gate (even rows) and up
 * (odd rows); with biases the record has expertBias's layout (gate_up bias split the same way).
 */
export function gptOssExpertRecord(t: GptOssExpertTensors): Uint8Array {
  const { hiddenSize: H, expertFfn: F } = t;
  const hasBias = t.gateUpBias !== undefined || t.downBias !== undefined;
  if (hasBias && !(t.gateUpBias && t.downBias)) throw new InvalidOptionError("mxfp4 import: gate_up and down biases come together");
  checkEncodable("mxfp4", H, F);
  const gateUp = mxfp4MatrixFromBlocks(t.gateUpBlocks, t.gateUpScales, 2 * F, H); // [2F, H], interleaved rows
  const down = mxfp4MatrixFromBlocks(t.downBlocks, t.downScales, H, F);
  const l = expertRecordLayout("mxfp4", H, F, hasBias);
  const out = new Uint8Array(l.bytes);
  const sb = H / BLOCK; // scale bytes per row
  const qb = H / 2; // nibble bytes per row
  const qBase = 2 * F * sb; // where gate_up's nibbles start
  for (const [m, parity] of [[l.gate, 0], [l.up, 1]] as const) {
    const at = m[0];
    for (let i = 0; i < F; i++) {
      const src = 2 * i + parity;
      out.set(gateUp.subarray(src * sb, (src + 1) * sb), at + i * sb);
      out.set(gateUp.subarray(qBase + src * qb, qBase + (src + 1) * qb), at + F * sb + i * qb);
    }
  }
  out.set(down, l.down[0]);
  if (hasBias) {
    const gu = t.gateUpBias!;
    if (gu.length !== 2 * F) throw new InvalidOptionError(`mxfp4 import: gate_up bias has ${gu.length} values, expected ${2 * F}`);
    const gate = new Float32Array(F);
    const up = new Float32Array(F);
    for (let i = 0; i < F; i++) {
      gate[i] = gu[2 * i]!;
      up[i] = gu[2 * i + 1]!;
    }
    writeBiases(out, l, H, F, { gate, up, down: t.downBias! });
  }
  return out;
}

export function checkEncodable(enc: ExpertEncoding, hiddenSize: number, expertFfn: number): void {
  if (isKQuant(enc) && (hiddenSize % QK_K !== 0 || expertFfn % QK_K !== 0)) {
    throw new InvalidOptionError(
      `--experts ${enc} holds rows of whole ${QK_K}-value super-blocks: hidden size (${hiddenSize}) and expert size (${expertFfn}) must be multiples of ${QK_K}; use int8, int4 or f16`
    );
  }
  if ((enc === "int8" || enc === "int4" || enc === "mxfp4") && (hiddenSize % BLOCK !== 0 || expertFfn % BLOCK !== 0)) {
    throw new InvalidOptionError(`--experts ${enc} needs hidden size (${hiddenSize}) and expert size (${expertFfn}) divisible by ${BLOCK}; use f16 or f32`);
  }
}

/** Encodes a fp32 matrix [rows, cols]; native when available (fast), else the JS reference. */
export function encodeMatrix(enc: ExpertEncoding, src: Float32Array, rows: number, cols: number): Uint8Array {
  if (isKQuant(enc)) checkKRows(enc, cols);
  const dst = new Uint8Array(matrixBytes(enc, rows, cols));
  const { addon } = loadNativeAddon();
  // k-quants: llama.cpp's reference quantizer (formats/ggmlKQuants.ts), JS only.
  if (addon && !isKQuant(enc)) addon.encodeMatrix(encodingCode(enc), src, rows, cols, dst);
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
    case "mxfp4":
      encodeMxfp4(src, rows, cols, dst);
      return;
    case "q4_k":
    case "q5_k":
    case "q6_k":
      checkKRows(enc, cols);
      dst.set(quantize(K_GGML_TYPE[enc], n === src.length ? src : src.subarray(0, n)));
      return;
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

function checkKRows(enc: ExpertEncoding, cols: number): void {
  if (cols % QK_K !== 0) throw new InvalidOptionError(`${enc} matrices hold rows of whole ${QK_K}-value super-blocks; a row of ${cols} values is not`);
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
    case "mxfp4":
      decodeMxfp4(bytes, rows, cols, out);
      return out;
    case "q4_k":
    case "q5_k":
    case "q6_k":
      checkKRows(enc, cols);
      return dequantize(K_GGML_TYPE[enc], bytes.subarray(0, matrixBytes(enc, rows, cols)), n);
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}
