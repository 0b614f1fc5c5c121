/**
 * GGUF expert tensors whose blocks hold exactly what one of our expert encodings holds, converted
 * without loss (no float is rounded): a GGUF model's experts then run on our integer-dot kernels
 * as they were quantized. Block layouts from llama.cpp ggml-common.h / ggml-quants.c (the
 * dequantizers define the numbers):
 *
 *   Q8_0  {fp16 d; int8 qs[32]}        (34 bytes)  x_j = d * qs[j]
 *   Q4_0  {fp16 d; uint8 qs[16]}       (18 bytes)  x_j = d * ((qs[j] & 15) - 8), x_{j+16} = d * ((qs[j] >> 4) - 8)
 *   MXFP4 {uint8 e; uint8 qs[16]}      (17 bytes)  E2M1 codes, the same split halves (store/mxfp4.ts)
 *
 * -> int8 (fp32 scale = d, exact; the same int8 values), int4 (fp32 scale = d; nibbles re-ordered
 * to ours: element 2i low, 2i+1 high, both q + 8 as in Q4_0) and mxfp4 (nibbles re-ordered).
 * F32 and F16 tensors are our f32 and f16 bytes as they are, Q2_K..Q6_K super-blocks our q2_k..q6_k
 * bytes as they are (rows of whole 256-value blocks), Q4_1, Q5_0 and Q5_1 blocks our q4_1, q5_0 and
 * q5_1 bytes as they are (rows of whole 32-value blocks). Other types (IQ*, ...) have
 * no exact counterpart here: decode them to floats and encode (src/formats/ggmlQuants.ts dequantize).
 */
import { InvalidOptionError } from "../errors.js";
import { halfToFloat } from "../util/dtype.js";
import type { ExpertEncoding } from "./expertEncoding.js";
import { decodeMxfp4, mxfp4MatrixFromGgml } from "./mxfp4.js";

const QK = 32;

/** [values, bytes] per block of the GGUF types kept byte for byte (ggmlQuants.ts's type table). */
const AS_IS_BLOCKS = {
  q2_k: [256, 84],
  q3_k: [256, 110],
  q4_k: [256, 144],
  q5_k: [256, 176],
  q6_k: [256, 210],
  q4_1: [32, 20],
  q5_0: [32, 22],
  q5_1: [32, 24],
} as const;

/** ggml_type ids (gguf.ts / ggmlQuants.ts GgmlType) of the types converted here. */
export const GGML_LOSSLESS_EXPERT_TYPES = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, MXFP4: 39 } as const;

/** The expert encoding a ggml tensor type converts to without loss, if any. */
export function losslessExpertEncoding(ggmlType: number): ExpertEncoding | undefined {
  switch (ggmlType) {
    case GGML_LOSSLESS_EXPERT_TYPES.F32:
      return "f32";
    case GGML_LOSSLESS_EXPERT_TYPES.F16:
      return "f16";
    case GGML_LOSSLESS_EXPERT_TYPES.Q8_0:
      return "int8";
    case GGML_LOSSLESS_EXPERT_TYPES.Q4_0:
      return "int4";
    case GGML_LOSSLESS_EXPERT_TYPES.MXFP4:
      return "mxfp4";
    case GGML_LOSSLESS_EXPERT_TYPES.Q4_1:
      return "q4_1";
    case GGML_LOSSLESS_EXPERT_TYPES.Q5_0:
      return "q5_0";
    case GGML_LOSSLESS_EXPERT_TYPES.Q5_1:
      return "q5_1";
    case GGML_LOSSLESS_EXPERT_TYPES.Q2_K:
      return "q2_k";
    case GGML_LOSSLESS_EXPERT_TYPES.Q3_K:
      return "q3_k";
    case GGML_LOSSLESS_EXPERT_TYPES.Q4_K:
      return "q4_k";
    case GGML_LOSSLESS_EXPERT_TYPES.Q5_K:
      return "q5_k";
    case GGML_LOSSLESS_EXPERT_TYPES.Q6_K:
      return "q6_k";
    default:
      return undefined;
  }
}

function checkSize(name: string, data: Uint8Array, rows: number, cols: number, blockBytes: number, blockSize: number): number {
  if (cols % blockSize !== 0) throw new InvalidOptionError(`${name} rows of ${cols} values are not whole blocks of ${blockSize}`);
  const blocks = (rows * cols) / blockSize;
  if (data.byteLength !== blocks * blockBytes) throw new InvalidOptionError(`${name} data of [${rows}, ${cols}] holds ${data.byteLength} bytes, expected ${blocks * blockBytes}`);
  return blocks;
}

/** Q8_0 [rows, cols] -> our int8 matrix: fp32 scales [n/32], then the int8 values [n]. */
export function int8MatrixFromGgmlQ8_0(data: Uint8Array, rows: number, cols: number): Uint8Array {
  const nb = checkSize("Q8_0", data, rows, cols, 34, QK);
  const out = new Uint8Array(nb * 4 + nb * QK);
  const view = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    view.setFloat32(4 * b, halfToFloat(data[b * 34]! | (data[b * 34 + 1]! << 8)), true);
    out.set(data.subarray(b * 34 + 2, b * 34 + 34), nb * 4 + b * QK);
  }
  return out;
}

/** Q4_0 [rows, cols] -> our int4 matrix: fp32 scales [n/32], then nibbles (q + 8), element 2i low. */
export function int4MatrixFromGgmlQ4_0(data: Uint8Array, rows: number, cols: number): Uint8Array {
  const nb = checkSize("Q4_0", data, rows, cols, 18, QK);
  const out = new Uint8Array(nb * 4 + (nb * QK) / 2);
  const view = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    const blk = data.subarray(b * 18, b * 18 + 18);
    view.setFloat32(4 * b, halfToFloat(blk[0]! | (blk[1]! << 8)), true);
    // ggml element k: k < 16 the low nibble of qs[k], else the high nibble of qs[k - 16].
    const code = (k: number) => (k < 16 ? blk[2 + k]! & 15 : blk[2 + k - 16]! >> 4);
    for (let i = 0; i < QK / 2; i++) out[nb * 4 + b * (QK / 2) + i] = code(2 * i) | (code(2 * i + 1) << 4);
  }
  return out;
}

/**
 * One expert matrix [rows, cols] of a GGUF tensor in our encoding, losslessly: the encoding
 * (losslessExpertEncoding) and its bytes. Throws for types without an exact counterpart.
 */
export function expertMatrixFromGgml(ggmlType: number, data: Uint8Array, rows: number, cols: number): { encoding: ExpertEncoding; bytes: Uint8Array } {
  const encoding = losslessExpertEncoding(ggmlType);
  switch (encoding) {
    case "f32":
      checkSize("F32", data, rows, cols, 4, 1);
      return { encoding, bytes: data.slice() };
    case "f16":
      checkSize("F16", data, rows, cols, 2, 1);
      return { encoding, bytes: data.slice() };
    case "int8":
      return { encoding, bytes: int8MatrixFromGgmlQ8_0(data, rows, cols) };
    case "int4":
      return { encoding, bytes: int4MatrixFromGgmlQ4_0(data, rows, cols) };
    case "mxfp4":
      return { encoding, bytes: mxfp4MatrixFromGgml(data, rows, cols) };
    case "q2_k":
    case "q3_k":
    case "q4_k":
    case "q5_k":
    case "q6_k":
    case "q4_1":
    case "q5_0":
    case "q5_1":
      checkSize(encoding.toUpperCase(), data, rows, cols, AS_IS_BLOCKS[encoding][1], AS_IS_BLOCKS[encoding][0]);
      return { encoding, bytes: data.slice() };
    default:
      throw new InvalidOptionError(`ggml type ${ggmlType} has no lossless expert encoding; decode it to floats and encode`);
  }
}

/**
 * GGUF MXFP4 data (n values, whole blocks) -> fp32: the dequantizer src/formats/ggmlQuants.ts
 * asks for (registerGgmlDequantizer(GgmlType.MXFP4, dequantizeGgmlMxfp4)).
 */
export function dequantizeGgmlMxfp4(data: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  decodeMxfp4(mxfp4MatrixFromGgml(data, 1, n), 1, n, out);
  return out;
}
