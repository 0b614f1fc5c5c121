/**
 * MXFP4 (OCP Microscaling Formats v1.0, "MXFP4"): blocks of 32 values, each a 4-bit E2M1 code,
 * sharing one E8M0 scale byte. gpt-oss checkpoints store their experts this way, and GGUF's
 * MXFP4 type holds the same numbers in another byte order.
 *
 *   E2M1 code c (4 bits): bit 3 sign, bits 0-2 magnitude index into 0, 0.5, 1, 1.5, 2, 3, 4, 6.
 *   E8M0 scale byte e:    2^(e - 127); e = 255 is NaN (never written by our encoder).
 *   value = E2M1(c) * 2^(e - 127) = (2 * E2M1(c)) * 2^(e - 128), and 2 * E2M1(c) is an integer in
 *   -12..12 (MXFP4_X2), which is what the native kernels multiply with (exact int8 dot products).
 *
 * Our matrix layout (expertEncoding.ts "mxfp4"), for W [rows, cols], blocks of 32 along a row:
 *   uint8 e[rows * cols / 32]            the E8M0 scale of each block, row-major
 *   uint8 packed[rows * cols / 2]        element 2i in the low nibble of byte i, 2i+1 in the high
 * = Hugging Face's gpt-oss tensors as they are: `*_scales` [rows, cols/32] and `*_blocks`
 * [rows, cols/32, 16] (transformers integrations/mxfp4.py: lut[b & 0xF] -> element 2j,
 * lut[b >> 4] -> 2j+1, ldexp by e - 127), concatenated. GGUF's block_mxfp4 is {e, qs[16]} with
 * element j in the low nibble of qs[j] and j+16 in its high nibble (ggml-quants.c); it is
 * re-ordered on import (mxfp4MatrixFromGgml).
 *
 * Encoding floats (--experts mxfp4 from an f32/f16/bf16 checkpoint): the block's scale is
 * 2^(floor(log2(amax)) - 2) (the OCP spec's choice, as ggml's quantizer: the largest magnitude
 * lands in [4, 8) and 6 is the largest code), each value then rounds to the nearest E2M1 value,
 * ties to the even code (0, 1, 2, 4 over 0.5, 1.5, 3, 6), saturating at 6; a value that rounds to
 * zero gets code 0 (no negative zeros). Implemented identically in native-bindings/src/encode_matrix.cc.
 */
import { InvalidOptionError } from "../errors.js";

export const MX_BLOCK = 32;

/** Twice the E2M1 value of each 4-bit code: integers -12..12 (codes 0 and 8 are +0 and -0). */
export const MXFP4_X2: readonly number[] = Object.freeze([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]);
/** The E2M1 value of each code, -0 included (what decoding gives, as Hugging Face's table). */
const E2M1: readonly number[] = Object.freeze([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6]);

/** 2^(e - 127), the E8M0 scale (e = 255: NaN). Exact in fp32 for every other e. */
export function e8m0ToFloat(e: number): number {
  return e === 255 ? NaN : 2 ** (e - 127);
}

/** Bytes of an mxfp4 matrix [rows, cols] (cols % 32 == 0): scales, then nibbles. */
export function mxfp4MatrixBytes(rows: number, cols: number): number {
  const n = rows * cols;
  return n / MX_BLOCK + n / 2;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The scale byte for a block whose largest magnitude is amax (an fp32 value). */
function blockExponent(amax: number): number {
  f32[0] = amax;
  const biased = (u32[0]! >>> 23) & 0xff; // floor(log2(amax)) + 127 for a normal amax
  return biased === 0 ? 0 : Math.max(0, biased - 2);
}

/** The E2M1 code nearest to a (>= 0, already divided by the scale); ties to the even code. */
function magnitudeCode(a: number): number {
  if (a <= 0.25) return 0;
  if (a < 0.75) return 1;
  if (a <= 1.25) return 2;
  if (a < 1.75) return 3;
  if (a <= 2.5) return 4;
  if (a < 3.5) return 5;
  if (a <= 5) return 6;
  return 7;
}

/** The 4-bit code of x at a block scale of 1 / inv. */
function e2m1Code(x: number, inv: number): number {
  const m = magnitudeCode(Math.fround(Math.abs(x) * inv));
  return m !== 0 && x < 0 ? m | 8 : m;
}

/** Encodes fp32 src [rows, cols] into dst (mxfp4MatrixBytes). The JS reference of the native encoder. */
export function encodeMxfp4(src: Float32Array, rows: number, cols: number, dst: Uint8Array): void {
  const n = rows * cols;
  const nb = n / MX_BLOCK;
  for (let b = 0; b < nb; b++) {
    let amax = 0;
    for (let i = 0; i < MX_BLOCK; i++) amax = Math.max(amax, Math.abs(src[b * MX_BLOCK + i]!));
    const e = blockExponent(amax);
    dst[b] = e;
    const inv = 2 ** (127 - e); // dividing by a power of two: exact (a stays below 8)
    for (let i = 0; i < MX_BLOCK / 2; i++) {
      dst[nb + b * (MX_BLOCK / 2) + i] = e2m1Code(src[b * MX_BLOCK + 2 * i]!, inv) | (e2m1Code(src[b * MX_BLOCK + 2 * i + 1]!, inv) << 4);
    }
  }
}

/** Decodes an mxfp4 matrix to fp32 [rows, cols] (exact; -0 for code 8; 6 * 2^127 overflows to infinity). */
export function decodeMxfp4(bytes: Uint8Array, rows: number, cols: number, out: Float32Array): void {
  const n = rows * cols;
  const nb = n / MX_BLOCK;
  for (let b = 0; b < nb; b++) {
    const scale = e8m0ToFloat(bytes[b]!);
    for (let i = 0; i < MX_BLOCK / 2; i++) {
      const byte = bytes[nb + b * (MX_BLOCK / 2) + i]!;
      out[b * MX_BLOCK + 2 * i] = E2M1[byte & 15]! * scale;
      out[b * MX_BLOCK + 2 * i + 1] = E2M1[byte >> 4]! * scale;
    }
  }
}

// ---------------------------------------------------------------- lossless import ---------------

function need(ok: boolean, what: string): void {
  if (!ok) throw new InvalidOptionError(`mxfp4 import: ${what}`);
}

/**
 * Our mxfp4 matrix [rows, cols] from Hugging Face's tensors of one matrix: blocks uint8
 * [rows, cols/32, 16] and scales uint8 [rows, cols/32] (row-major bytes). No float is involved.
 */
export function mxfp4MatrixFromBlocks(blocks: Uint8Array, scales: Uint8Array, rows: number, cols: number): Uint8Array {
  need(cols % MX_BLOCK === 0, `${cols} columns are not whole blocks of ${MX_BLOCK}`);
  need(blocks.byteLength === (rows * cols) / 2, `blocks hold ${blocks.byteLength} bytes, expected ${(rows * cols) / 2} for [${rows}, ${cols / MX_BLOCK}, 16]`);
  need(scales.byteLength === (rows * cols) / MX_BLOCK, `scales hold ${scales.byteLength} bytes, expected ${(rows * cols) / MX_BLOCK} for [${rows}, ${cols / MX_BLOCK}]`);
  const out = new Uint8Array(mxfp4MatrixBytes(rows, cols));
  out.set(scales, 0);
  out.set(blocks, scales.byteLength);
  return out;
}

/**
 * Our mxfp4 matrix [rows, cols] from GGUF's MXFP4 data (block_mxfp4 {uint8 e; uint8 qs[16]},
 * 17 bytes per block of 32, row-major): the same numbers, nibbles re-ordered.
 */
export function mxfp4MatrixFromGgml(data: Uint8Array, rows: number, cols: number): Uint8Array {
  need(cols % MX_BLOCK === 0, `${cols} columns are not whole blocks of ${MX_BLOCK}`);
  const nb = (rows * cols) / MX_BLOCK;
  need(data.byteLength === nb * 17, `GGUF MXFP4 data holds ${data.byteLength} bytes, expected ${nb * 17}`);
  const out = new Uint8Array(mxfp4MatrixBytes(rows, cols));
  for (let b = 0; b < nb; b++) {
    const blk = data.subarray(b * 17, b * 17 + 17);
    out[b] = blk[0]!;
    // ggml element k: k < 16 low nibble of qs[k], else high nibble of qs[k - 16].
    const code = (k: number) => (k < 16 ? blk[1 + k]! & 15 : blk[1 + k - 16]! >> 4);
    for (let i = 0; i < MX_BLOCK / 2; i++) out[nb + b * (MX_BLOCK / 2) + i] = code(2 * i) | (code(2 * i + 1) << 4);
  }
  return out;
}

/** One gpt-oss expert as stored in its checkpoint (one expert's slice of each tensor). */
export interface GptOssExpertTensors {
  hiddenSize: number; // H
  expertFfn: number; // F (config.intermediate_size)
  /** gate_up_proj_blocks[e]: uint8 [2F, H/32, 16]; rows 2i are gate row i, rows 2i+1 up row i. */
  gateUpBlocks: Uint8Array;
  /** gate_up_proj_scales[e]: uint8 [2F, H/32]. */
  gateUpScales: Uint8Array;
  /** down_proj_blocks[e]: uint8 [H, F/32, 16]. */
  downBlocks: Uint8Array;
  /** down_proj_scales[e]: uint8 [H, F/32]. */
  downScales: Uint8Array;
  /** gate_up_proj_bias[e]: [2F], interleaved like the rows (gate 2i, up 2i+1). With downBias, or neither. */
  gateUpBias?: Float32Array;
  /** down_proj_bias[e]: [H]. */
  downBias?: Float32Array;
}
