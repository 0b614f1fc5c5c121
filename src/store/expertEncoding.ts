/**
 * Expert storage precision: how one expert record is encoded in the store and in the resident
 * tier. Kernels compute straight from these bytes.
 *
 * Record (expertRecordLayout): gate [F,H], up [F,H], down [H,F], each a matrix in the encoding
 * below, concatenated; with expert biases (ExpertKernelOptions.expertBias, e.g. gpt-oss) then
 * fp32 gate bias [F], up bias [F], down bias [H] (little-endian, right after the matrices; not
 * necessarily 4-byte aligned for f16 records of odd sizes). Without biases a record is exactly
 * the three matrices. Each matrix may have an encoding of its own (RecordEncodings: a GGUF file
 * that mixes expert types; store/recordEncodings.ts), and then each layer's records have their own size.
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
 *   q2_k  : GGUF's Q2_K super-blocks (block_q2_K: scales[16] (4-bit scale | 4-bit min << 4 per 16
 *           values), qs[64] (2-bit levels), fp16 d, dmin), 84 bytes per 256 values, rows as q4_k.
 *           x = fp32(d*sc) * q - fp32(dmin*m).
 *   q3_k  : GGUF's Q3_K super-blocks (block_q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit
 *           scales), fp16 d), 110 bytes per 256 values, rows as q4_k. x = fp32(d*(sc-32)) * q,
 *           q in -4..3.
 *   q4_1, q5_0, q5_1: GGUF's 32-value blocks as they are (block_q4_1 {fp16 d, m; qs[16]} 20 bytes,
 *           block_q5_0 {fp16 d; qh[4]; qs[16]} 22, block_q5_1 {fp16 d, m; qh[4]; qs[16]} 24): value
 *           j in the low nibble of qs[j], j+16 in the high one, fifth bit of value j = bit j of qh.
 *           q4_1/q5_1: x = d*q + m; q5_0: x = d*(q - 16). cols % 32 == 0.
 *           All of these encode and decode with src/formats/ggmlQuants.ts / ggmlKQuants.ts
 *           (llama.cpp's reference codec).
 * The same layouts are implemented in native-bindings/src/expert_kernels.cc (kernels) and encode_matrix.cc (encoders).
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
export const GGML_K_ENCODINGS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"] as const;
/**
 * GGUF 32-value blocks with a min or a 5-bit level kept as they are (Q4_1, Q5_0, Q5_1; Q4_0 and
 * Q8_0 become int4 / int8). A sibling of GGML_K_ENCODINGS, for the same reason not (yet) in
 * EXPERT_ENCODINGS: the suites over EXPERT_ENCODINGS have no numbers for them.
 */
export const GGML_BLOCK_ENCODINGS = ["q4_1", "q5_0", "q5_1"] as const;
export type KQuantEncoding = (typeof GGML_K_ENCODINGS)[number];
/** An encoding that holds a GGUF tensor's blocks byte for byte (decoded by llama.cpp's codec). */
export type GgmlBlockEncoding = KQuantEncoding | (typeof GGML_BLOCK_ENCODINGS)[number];
export type ExpertEncoding = (typeof EXPERT_ENCODINGS)[number] | GgmlBlockEncoding;
/** Every expert encoding: the CLI's and the manifest's choices. */
export const ALL_EXPERT_ENCODINGS: readonly ExpertEncoding[] = [...EXPERT_ENCODINGS, ...GGML_K_ENCODINGS, ...GGML_BLOCK_ENCODINGS];
export const BLOCK = 32;
/** Values per k-quant super-block (llama.cpp QK_K). */
export const QK_K = 256;
/** Bytes per (super-)block of the GGUF block encodings (32 values; k-quants 256). */
export const GGML_BLOCK_BYTES = { q2_k: 84, q3_k: 110, q4_k: 144, q5_k: 176, q6_k: 210, q4_1: 20, q5_0: 22, q5_1: 24 } as const;
const GGML_TYPE_OF = {
  q2_k: GgmlType.Q2_K,
  q3_k: GgmlType.Q3_K,
  q4_k: GgmlType.Q4_K,
  q5_k: GgmlType.Q5_K,
  q6_k: GgmlType.Q6_K,
  q4_1: GgmlType.Q4_1,
  q5_0: GgmlType.Q5_0,
  q5_1: GgmlType.Q5_1,
} as const;

/** Whether `enc` holds GGUF k-quant super-blocks (q2_k .. q6_k: rows of whole 256-value blocks). */
export function isKQuant(enc: ExpertEncoding): enc is KQuantEncoding {
  return (GGML_K_ENCODINGS as readonly string[]).includes(enc);
}

/** Whether `enc` holds GGUF blocks as they are (the k-quants, q4_1, q5_0, q5_1). */
export function isGgmlBlocks(enc: ExpertEncoding): enc is GgmlBlockEncoding {
  return isKQuant(enc) || (GGML_BLOCK_ENCODINGS as readonly string[]).includes(enc);
}

/** Values per block of a GGUF block encoding: a row must be whole blocks. */
export function ggmlBlockValues(enc: GgmlBlockEncoding): number {
  return isKQuant(enc) ? QK_K : BLOCK;
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
    case "q4_1":
      return 8;
    case "q5_0":
      return 9;
    case "q5_1":
      return 10;
    case "q2_k":
      return 11;
    case "q3_k":
      return 12;
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

export function parseEncoding(value: string): ExpertEncoding {
  if ((ALL_EXPERT_ENCODINGS as readonly string[]).includes(value)) return value as ExpertEncoding;
  throw new InvalidOptionError(`--experts must be one of ${ALL_EXPERT_ENCODINGS.join(", ")}, got "${value}"`);
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
    case "q2_k":
    case "q3_k":
    case "q4_k":
    case "q5_k":
    case "q6_k":
    case "q4_1":
    case "q5_0":
    case "q5_1":
      return (n / ggmlBlockValues(enc)) * GGML_BLOCK_BYTES[enc];
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

/**
 * The encodings of one record's three matrices, where they differ (a GGUF file that mixes expert
 * tensor types: store/recordEncodings.ts). Functions that take an ExpertEncoding for a record
 * take this too.
 */
export interface RecordEncodings {
  gate: ExpertEncoding;
  up: ExpertEncoding;
  down: ExpertEncoding;
}

/** One encoding for all three matrices, or each its own. */
export type RecordEncoding = ExpertEncoding | RecordEncodings;

/** The three matrices' encodings of `enc`. */
export function partEncodings(enc: RecordEncoding): RecordEncodings {
  return typeof enc === "string" ? { gate: enc, up: enc, down: enc } : enc;
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

export function expertRecordLayout(enc: RecordEncoding, hiddenSize: number, expertFfn: number, expertBias = false): ExpertRecordLayout {
  const p = partEncodings(enc);
  const gm = matrixBytes(p.gate, expertFfn, hiddenSize);
  const um = matrixBytes(p.up, expertFfn, hiddenSize);
  const dm = matrixBytes(p.down, hiddenSize, expertFfn);
  const l: ExpertRecordLayout = { gate: [0, gm], up: [gm, um], down: [gm + um, dm], bytes: gm + um + dm };
  if (expertBias) {
    l.gateBias = [l.bytes, 4 * expertFfn];
    l.upBias = [l.bytes + 4 * expertFfn, 4 * expertFfn];
    l.downBias = [l.bytes + 8 * expertFfn, 4 * hiddenSize];
    l.bytes += 4 * (2 * expertFfn + hiddenSize);
  }
  return l;
}

/** Bytes of one expert record: gate and up [F,H], down [H,F], and with expertBias their fp32 biases. */
export function recordBytes(enc: RecordEncoding, hiddenSize: number, expertFfn: number, expertBias = false): number {
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
  enc: RecordEncoding,
  hiddenSize: number,
  expertFfn: number,
  w: { gate: Float32Array; up: Float32Array; down: Float32Array },
  biases?: ExpertBiases
): Uint8Array {
  const H = hiddenSize;
  const F = expertFfn;
  const l = expertRecordLayout(enc, H, F, biases !== undefined);
  const p = partEncodings(enc);
  const out = new Uint8Array(l.bytes);
  out.set(encodeMatrix(p.gate, w.gate, F, H), l.gate[0]);
  out.set(encodeMatrix(p.up, w.up, F, H), l.up[0]);
  out.set(encodeMatrix(p.down, w.down, H, F), l.down[0]);
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
export function readExpertBiases(record: Uint8Array, enc: RecordEncoding, hiddenSize: number, expertFfn: number): ExpertBiases {
  const l = expertRecordLayout(enc, hiddenSize, expertFfn, true);
  if (record.byteLength !== l.bytes) {
    throw new InvalidOptionError(`expert record has ${record.byteLength} bytes, expected ${l.bytes} (${JSON.stringify(enc)} with biases)`);
  }
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
  if ((enc === "int8" || enc === "int4" || enc === "mxfp4" || isGgmlBlocks(enc)) && (hiddenSize % BLOCK !== 0 || expertFfn % BLOCK !== 0)) {
    throw new InvalidOptionError(`--experts ${enc} needs hidden size (${hiddenSize}) and expert size (${expertFfn}) divisible by ${BLOCK}; use f16 or f32`);
  }
}

/** Encodes a fp32 matrix [rows, cols]; native when available (fast), else the JS reference. */
export function encodeMatrix(enc: ExpertEncoding, src: Float32Array, rows: number, cols: number): Uint8Array {
  if (isGgmlBlocks(enc)) checkBlockRows(enc, cols);
  const dst = new Uint8Array(matrixBytes(enc, rows, cols));
  const { addon } = loadNativeAddon();
  // GGUF blocks: llama.cpp's reference quantizer (formats/ggmlQuants.ts, ggmlKQuants.ts), JS only.
  if (addon && !isGgmlBlocks(enc)) addon.encodeMatrix(encodingCode(enc), src, rows, cols, dst);
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
    case "q2_k":
    case "q3_k":
    case "q4_k":
    case "q5_k":
    case "q6_k":
    case "q4_1":
    case "q5_0":
    case "q5_1":
      checkBlockRows(enc, cols);
      dst.set(quantize(GGML_TYPE_OF[enc], n === src.length ? src : src.subarray(0, n)));
      return;
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}

function checkBlockRows(enc: GgmlBlockEncoding, cols: number): void {
  const k = ggmlBlockValues(enc);
  if (cols % k !== 0) throw new InvalidOptionError(`${enc} matrices hold rows of whole ${k}-value ${k === QK_K ? "super-blocks" : "blocks"}; a row of ${cols} values is not`);
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
    case "q2_k":
    case "q3_k":
    case "q4_k":
    case "q5_k":
    case "q6_k":
    case "q4_1":
    case "q5_0":
    case "q5_1":
      checkBlockRows(enc, cols);
      return dequantize(GGML_TYPE_OF[enc], bytes.subarray(0, matrixBytes(enc, rows, cols)), n);
    default: {
      const never: never = enc;
      throw new Error(`unknown encoding ${String(never)}`);
    }
  }
}
