/**
 * Expert storage formats from other tools, checked against their definitions: MXFP4 (OCP; gpt-oss
 * checkpoints' blocks and scales, GGUF's block_mxfp4) decoded from hand-derived blocks, encoded
 * with the OCP scale rule, imported from gpt-oss tensors without floats; and GGUF Q8_0 / Q4_0 /
 * MXFP4 expert tensors converted to our int8 / int4 / mxfp4 without loss (compared with
 * src/formats/ggmlQuants.ts, an independent codec of llama.cpp's reference); GGUF Q4_K / Q5_K /
 * Q6_K, Q2_K / Q3_K super-blocks and Q4_1 / Q5_0 / Q5_1 blocks kept as they are (q4_k .. q5_1),
 * every kernel and instruction-set level on them, and GGUFs of each such expert type imported
 * end to end.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type { ExpertKernelName } from "../src/kernels/expertKernels.js";
import { GgmlType, dequantize, quantize } from "../src/formats/ggmlQuants.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import {
  decodeMatrix,
  e8m0ToFloat,
  encodeExpertRecord,
  encodeMatrix,
  encodeMatrixJs,
  encodingCode,
  expertMatrixFromGgml,
  expertRecordLayout,
  gptOssExpertRecord,
  int4MatrixFromGgmlQ4_0,
  int8MatrixFromGgmlQ8_0,
  losslessExpertEncoding,
  matrixBytes,
  mxfp4MatrixFromBlocks,
  mxfp4MatrixFromGgml,
  readExpertBiases,
  recordBytes,
  checkEncodable,
  GGML_K_ENCODINGS,
  GGML_BLOCK_ENCODINGS,
  EXPERT_ENCODINGS,
  type GgmlBlockEncoding,
  type ExpertBiases,
  type ExpertEncoding,
} from "../src/store/expertEncoding.js";
import { exportGguf } from "../src/formats/ggufExport.js";
import { importModel } from "../src/importer/importModel.js";
import { loadModel } from "../src/index.js";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { MODELS, ROOT, expertOutput, greedyRun, matmulRef, maxRelErr, rand, tmpDir } from "./helpers.js";



/** Hugging Face's FP4_VALUES (transformers integrations/mxfp4.py), -0 included. */
const HF_FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

/** What transformers' convert_moe_packed_tensors computes for one matrix: blocks [rows, cols/32, 16], scales [rows, cols/32]. */
function hfDequant(blocks: Uint8Array, scales: Uint8Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < cols / 32; g++) {
      const exp = scales[r * (cols / 32) + g]! - 127;
      for (let j = 0; j < 16; j++) {
        const b = blocks[(r * (cols / 32) + g) * 16 + j]!;
        out[r * cols + g * 32 + 2 * j] = HF_FP4[b & 15]! * 2 ** exp;
        out[r * cols + g * 32 + 2 * j + 1] = HF_FP4[b >> 4]! * 2 ** exp;
      }
    }
  return out;
}

/** Random gpt-oss-style tensors [rows, cols/32, 16] and [rows, cols/32]; `canonical`: every block has a code of magnitude >= 4 and no -0. */
function hfTensors(rows: number, cols: number, seed: number, canonical: boolean) {
  let s = seed;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  const blocks = Uint8Array.from({ length: (rows * cols) / 2 }, () => next() & 0xff);
  const scales = Uint8Array.from({ length: (rows * cols) / 32 }, () => 110 + (next() % 26));
  if (canonical) {
    for (let i = 0; i < blocks.length; i++) {
      const fix = (c: number) => (c === 8 ? 0 : c);
      blocks[i] = fix(blocks[i]! & 15) | (fix(blocks[i]! >> 4) << 4);
    }
    for (let b = 0; b < scales.length; b++) {
      const at = b * 16 + (next() % 16);
      blocks[at] = (blocks[at]! & 0xf0) | 6 | (next() % 2) | ((next() % 2) << 3); // +-4 or +-6
    }
  }
  return { blocks, scales };
}

describe("MXFP4", () => {
  it("decodes hand-derived blocks (E2M1 codes, E8M0 scales)", () => {
    // Row 0: block 0 at e = 127 (x1): codes 0..15 then 15..0; block 1 at e = 130 (x8): codes 1, 7.
    // Row 1: block 0 at e = 120 (x2^-7): codes 9, 15; block 1 at e = 0 (2^-127): codes 7, 2, and e = 255 below.
    const scales = [127, 130, 120, 0];
    const nibbles = [
      [0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01],
      Array(16).fill(0x71),
      Array(16).fill(0xf9),
      Array(16).fill(0x27),
    ].flat();
    const bytes = Uint8Array.from([...scales, ...nibbles]);
    const got = decodeMatrix("mxfp4", bytes, 2, 64);
    const table = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
    expect(Array.from(got.subarray(0, 16))).toEqual(table);
    expect(Array.from(got.subarray(16, 32))).toEqual([-6, -4, -3, -2, -1.5, -1, -0.5, -0, 6, 4, 3, 2, 1.5, 1, 0.5, 0]);
    expect(Array.from(got.subarray(32, 36))).toEqual([4, 48, 4, 48]);
    expect(Array.from(got.subarray(64, 68))).toEqual([-0.00390625, -0.046875, -0.00390625, -0.046875]);
    expect(Array.from(got.subarray(96, 98))).toEqual([6 * 2 ** -127, 1 * 2 ** -127]);
    expect(Object.is(got[8], -0)).toBe(true); // code 8 is -0, as Hugging Face's table
    expect([e8m0ToFloat(0), e8m0ToFloat(127), e8m0ToFloat(254)]).toEqual([2 ** -127, 1, 2 ** 127]);
    expect(e8m0ToFloat(255)).toBeNaN();
    bytes[3] = 255;
    expect(decodeMatrix("mxfp4", bytes, 2, 64)[96]).toBeNaN();
    expect(matrixBytes("mxfp4", 2, 64)).toBe(4 + 64);
  });

  it("native matmul computes from the codes and scales exactly as decoded (one-hot activations)", () => {
    const { blocks, scales } = hfTensors(7, 96, 3, false);
    const w = mxfp4MatrixFromBlocks(blocks, scales, 7, 96);
    const W = decodeMatrix("mxfp4", w, 7, 96);
    // x = the identity [96, 96]: token t's block quantizes to 127 at t (scale fp32(1/127)), so y[t, r] = W[r, t] * 127 * fp32(1/127).
    const x = new Float32Array(96 * 96);
    for (let t = 0; t < 96; t++) x[t * 96 + t] = 1;
    const y = new Float32Array(96 * 7);
    loadNativeAddon().addon!.matmul(encodingCode("mxfp4"), w, 7, 96, x, 96, y, 2);
    for (let t = 0; t < 96; t++)
      for (let r = 0; r < 7; r++) expect(Math.abs(y[t * 7 + r]! - W[r * 96 + t]!), `${r},${t}`).toBeLessThanOrEqual(Math.abs(W[r * 96 + t]!) * 1e-6);
  });

  it("encodes with the OCP scale (2^(floor(log2 amax) - 2)) and nearest codes, ties to even, the same bytes natively and in JS", () => {
    const src = new Float32Array(4 * 32);
    src.set([6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.3, -0.1, -5.5, 0.74, 0.76], 0);
    src.set([7.9 * 2 ** -10, -(2 ** -10)], 32); // saturates at 6: e = 117
    // Block 2 all zero: e = 0. Block 3's largest is subnormal: e = 0 (the smallest scale, 2^-127).
    src[96] = 1e-40;
    const want = new Uint8Array(4 + 64);
    want.set([127, 117, 0, 0], 0);
    want.set([0x07, 0x22, 0x44, 0x66, 0x09, 0x1f, 0x02], 4);
    want[4 + 16] = 0x07 | (0x0a << 4); // 6 and -1 (x 2^-10 / 2^-10)
    // 1e-40 at scale 2^-127 (5.9e-39) is 0.017: code 0.
    const js = new Uint8Array(want.length);
    encodeMatrixJs("mxfp4", src, 1, 128, js);
    expect(Array.from(js)).toEqual(Array.from(want));
    expect(Array.from(encodeMatrix("mxfp4", src, 1, 128))).toEqual(Array.from(want));
  });

  it("imports gpt-oss blocks and scales without floats: the same numbers as transformers' dequantization, and byte for byte the encoding of them", () => {
    const Hs = 64;
    const Fs = 96;
    for (const canonical of [false, true]) {
      const gu = hfTensors(2 * Fs, Hs, 11 + Number(canonical), canonical);
      const dn = hfTensors(Hs, Fs, 21 + Number(canonical), canonical);
      const guBias = rand(2 * Fs, 5, 2);
      const dBias = rand(Hs, 6, 2);
      const record = gptOssExpertRecord({ hiddenSize: Hs, expertFfn: Fs, gateUpBlocks: gu.blocks, gateUpScales: gu.scales, downBlocks: dn.blocks, downScales: dn.scales, gateUpBias: guBias, downBias: dBias });
      expect(record.byteLength).toBe(recordBytes("mxfp4", Hs, Fs, true));
      // transformers: gate_up_proj [H, 2F] after its transpose; gate = [..., ::2], up = [..., 1::2]: rows 2i and 2i+1 here.
      const guF = hfDequant(gu.blocks, gu.scales, 2 * Fs, Hs);
      const gate = new Float32Array(Fs * Hs);
      const up = new Float32Array(Fs * Hs);
      for (let i = 0; i < Fs; i++) {
        gate.set(guF.subarray(2 * i * Hs, (2 * i + 1) * Hs), i * Hs);
        up.set(guF.subarray((2 * i + 1) * Hs, (2 * i + 2) * Hs), i * Hs);
      }
      const down = hfDequant(dn.blocks, dn.scales, Hs, Fs);
      const l = expertRecordLayout("mxfp4", Hs, Fs, true);
      const part = ([at, n]: [number, number]) => record.subarray(at, at + n);
      const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
      expect(same(decodeMatrix("mxfp4", part(l.gate), Fs, Hs), gate)).toBe(true);
      expect(same(decodeMatrix("mxfp4", part(l.up), Fs, Hs), up)).toBe(true);
      expect(same(decodeMatrix("mxfp4", part(l.down), Hs, Fs), down)).toBe(true);
      const b = readExpertBiases(record, "mxfp4", Hs, Fs);
      expect(Array.from(b.gate)).toEqual(Array.from(guBias.filter((_, i) => i % 2 === 0)));
      expect(Array.from(b.up)).toEqual(Array.from(guBias.filter((_, i) => i % 2 === 1)));
      expect(Array.from(b.down)).toEqual(Array.from(dBias));
      if (canonical) {
        // Blocks as an MXFP4 encoder writes them (largest code of magnitude 4 or 6, no -0): re-encoding the dequantized floats gives the same bytes.
        const biases: ExpertBiases = { gate: b.gate, up: b.up, down: b.down };
        const again = encodeExpertRecord("mxfp4", Hs, Fs, { gate, up, down }, biases);
        expect(Buffer.from(again).equals(Buffer.from(record))).toBe(true);
        const js = new Uint8Array(matrixBytes("mxfp4", Fs, Hs));
        encodeMatrixJs("mxfp4", gate, Fs, Hs, js);
        expect(Buffer.from(js).equals(Buffer.from(part(l.gate)))).toBe(true);
      }
    }
    expect(() => gptOssExpertRecord({ hiddenSize: Hs, expertFfn: Fs, gateUpBlocks: new Uint8Array(5), gateUpScales: new Uint8Array(0), downBlocks: new Uint8Array(0), downScales: new Uint8Array(0) })).toThrow(/blocks hold 5 bytes/);
  });

  it("reorders GGUF's block_mxfp4 (element j low nibble of qs[j], j+16 high) into the same matrix", () => {
    const { blocks, scales } = hfTensors(3, 64, 9, false);
    const ours = mxfp4MatrixFromBlocks(blocks, scales, 3, 64);
    const codes = (b: number) => Array.from({ length: 32 }, (_, k) => (k & 1 ? blocks[b * 16 + (k >> 1)]! >> 4 : blocks[b * 16 + (k >> 1)]! & 15));
    const ggml = new Uint8Array(6 * 17);
    for (let b = 0; b < 6; b++) {
      const c = codes(b);
      ggml[b * 17] = scales[b]!;
      for (let j = 0; j < 16; j++) ggml[b * 17 + 1 + j] = c[j]! | (c[j + 16]! << 4);
    }
    expect(Buffer.from(mxfp4MatrixFromGgml(ggml, 3, 64)).equals(Buffer.from(ours))).toBe(true);
    // GGUF MXFP4 tensors decode through formats/ggmlQuants.ts with this codec (registered by expertEncoding.ts).
    const viaGguf = dequantize(GgmlType.MXFP4, ggml, 3 * 64);
    const direct = decodeMatrix("mxfp4", ours, 3, 64);
    expect(viaGguf.every((v, i) => Object.is(v, direct[i]))).toBe(true);
    expect(expertMatrixFromGgml(GgmlType.MXFP4, ggml, 3, 64).encoding).toBe("mxfp4");
  });
});

describe("GGUF expert tensors converted without loss", () => {
  const rows = 5;
  const cols = 96;
  const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
  const values = rand(rows * cols, 17, 0.4);
  values.fill(0, 40, 72); // an all-zero block (d = 0)

  it.each([
    ["Q8_0", GgmlType.Q8_0, "int8"],
    ["Q4_0", GgmlType.Q4_0, "int4"],
  ] as const)("%s -> %s: the same numbers as llama.cpp's dequantization, and our kernels compute them", (_name, type, enc) => {
    const data = quantize(type, values); // llama.cpp's reference quantizer (formats/ggmlQuants.ts)
    const want = dequantize(type, data, rows * cols);
    expect(losslessExpertEncoding(type)).toBe(enc);
    const m = expertMatrixFromGgml(type, data, rows, cols);
    expect(m.encoding).toBe(enc);
    expect(Buffer.from(m.bytes).equals(Buffer.from(enc === "int8" ? int8MatrixFromGgmlQ8_0(data, rows, cols) : int4MatrixFromGgmlQ4_0(data, rows, cols)))).toBe(true);
    expect(m.bytes.byteLength).toBe(matrixBytes(enc, rows, cols));
    expect(same(decodeMatrix(enc, m.bytes, rows, cols), want)).toBe(true);
    // The native integer-dot kernel on the converted bytes: one-hot activations read the weights back.
    const x = new Float32Array(cols * cols);
    for (let t = 0; t < cols; t++) x[t * cols + t] = 1;
    const y = new Float32Array(cols * rows);
    loadNativeAddon().addon!.matmul(encodingCode(enc), m.bytes, rows, cols, x, cols, y, 1);
    for (let t = 0; t < cols; t++) for (let r = 0; r < rows; r++) expect(Math.abs(y[t * rows + r]! - want[r * cols + t]!)).toBeLessThanOrEqual(Math.abs(want[r * cols + t]!) * 1e-6);
  });

  it("F32 and F16 are our bytes as they are; other types are refused", () => {
    const f16 = encodeMatrix("f16", values, rows, cols);
    expect(Buffer.from(expertMatrixFromGgml(GgmlType.F16, f16, rows, cols).bytes).equals(Buffer.from(f16))).toBe(true);
    const f32 = new Uint8Array(values.buffer.slice(0));
    expect(expertMatrixFromGgml(GgmlType.F32, f32, rows, cols).encoding).toBe("f32");
    expect(losslessExpertEncoding(GgmlType.IQ4_NL)).toBeUndefined();
    expect(() => expertMatrixFromGgml(GgmlType.IQ4_NL, new Uint8Array(18), 1, 32)).toThrow(/no lossless expert encoding/);
    expect(() => int8MatrixFromGgmlQ8_0(new Uint8Array(33), 1, 32)).toThrow(/holds 33 bytes, expected 34/);
  });
});


// ---- GGUF blocks kept as they are: q2_k .. q6_k (Q2_K .. Q6_K), q4_1, q5_0, q5_1 -----------------

/**
 * Per encoding: the ggml type, values and bytes per block, the native code, and how close the
 * codec's floats come to kWeights' values (max relative error: 2-bit Q2_K is coarse).
 */
const BLOCK_INFO: Record<GgmlBlockEncoding, { type: number; values: number; bytes: number; code: number; codecErr: number }> = {
  q2_k: { type: GgmlType.Q2_K, values: 256, bytes: 84, code: 11, codecErr: 0.4 },
  q3_k: { type: GgmlType.Q3_K, values: 256, bytes: 110, code: 12, codecErr: 0.2 },
  q4_k: { type: GgmlType.Q4_K, values: 256, bytes: 144, code: 5, codecErr: 0.1 },
  q5_k: { type: GgmlType.Q5_K, values: 256, bytes: 176, code: 7, codecErr: 0.03 },
  q6_k: { type: GgmlType.Q6_K, values: 256, bytes: 210, code: 6, codecErr: 0.03 },
  q4_1: { type: GgmlType.Q4_1, values: 32, bytes: 20, code: 8, codecErr: 0.1 },
  q5_0: { type: GgmlType.Q5_0, values: 32, bytes: 22, code: 9, codecErr: 0.05 },
  q5_1: { type: GgmlType.Q5_1, values: 32, bytes: 24, code: 10, codecErr: 0.05 },
};

/** lrintf / cvtps2dq rounding. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The native kernels' arithmetic, emulated in fp64: activations quantized per block of 32 as the
 * kernels do (d = amax/127, q = round-half-even(x/d)), times the decoded weights. The kernels
 * compute the same sums with exact integer block dots (the weights' integer levels), so they
 * agree up to fp32 rounding.
 */
function quantActRef(W: Float32Array, rows: number, cols: number, x: Float32Array, T: number): Float64Array {
  const y = new Float64Array(T * rows);
  const xq = new Float64Array(cols);
  for (let t = 0; t < T; t++) {
    for (let b = 0; b < cols / 32; b++) {
      let amax = 0;
      for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(x[t * cols + b * 32 + i]!));
      const d = Math.fround(amax / 127);
      const id = d ? Math.fround(1 / d) : 0;
      for (let i = 0; i < 32; i++) xq[b * 32 + i] = d * roundHalfEven(Math.min(127, Math.max(-127, Math.fround(x[t * cols + b * 32 + i]! * id))));
    }
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += W[r * cols + c]! * xq[c]!;
      y[t * rows + r] = s;
    }
  }
  return y;
}

/** max |a - ref| / max |ref|. */
function relErr(a: Float32Array, ref: Float64Array): number {
  let err = 0;
  let mag = 0;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - ref[i]!));
    mag = Math.max(mag, Math.abs(ref[i]!));
  }
  return err / (mag || 1);
}

/** Expert matrices with some structure k-quants care about: an offset row, an all-zero super-block, a large outlier. */
function kWeights(rows: number, cols: number, seed: number, scale: number): Float32Array {
  const m = rand(rows * cols, seed, scale);
  for (let c = 0; c < cols; c++) m[c] = m[c]! * 0.5 + scale * 0.7; // row 0: all positive (mins matter)
  if (rows > 2) m.fill(0, cols, cols + 256); // row 1: a zero super-block
  m[rows * cols - 3] = scale * 6;
  return m;
}

describe.each([...GGML_K_ENCODINGS, ...GGML_BLOCK_ENCODINGS])("%s experts: GGUF blocks as they are", (enc) => {
  const { type, values: bv, bytes: bb, code, codecErr } = BLOCK_INFO[enc];
  const rows = 5;
  const cols = 512;
  const values = kWeights(rows, cols, 31, 0.3);

  it("a GGUF tensor's blocks are the record's bytes; encodeMatrix of the same floats gives them byte for byte; decode is ggml's dequantize exactly", () => {
    const data = quantize(type, values); // llama.cpp's reference quantizer (formats/ggmlKQuants.ts)
    expect(data.byteLength).toBe(matrixBytes(enc, rows, cols));
    expect(matrixBytes(enc, rows, cols)).toBe((rows * cols * bb) / bv);
    expect(losslessExpertEncoding(type)).toBe(enc);
    const m = expertMatrixFromGgml(type, data, rows, cols);
    expect(m.encoding).toBe(enc);
    expect(Buffer.from(m.bytes).equals(Buffer.from(data))).toBe(true);
    expect(Buffer.from(encodeMatrix(enc, values, rows, cols)).equals(Buffer.from(data))).toBe(true);
    const js = new Uint8Array(data.byteLength);
    encodeMatrixJs(enc, values, rows, cols, js);
    expect(Buffer.from(js).equals(Buffer.from(data))).toBe(true);
    const want = dequantize(type, data, rows * cols);
    const got = decodeMatrix(enc, m.bytes, rows, cols);
    expect(got.every((v, i) => Object.is(v, want[i]))).toBe(true);
    // The encoding is what the codec allows of these floats.
    expect(maxRelErr(got, values)).toBeLessThan(codecErr);
    expect(encodingCode(enc)).toBe(code);
    expect(() => expertMatrixFromGgml(type, data.subarray(1), rows, cols)).toThrow(/holds \d+ bytes, expected/);
  });

  it("the native kernel reads the blocks back as ggml dequantizes them (one-hot activations)", () => {
    const data = quantize(type, values);
    const W = dequantize(type, data, rows * cols);
    let wmax = 0;
    for (const v of W) wmax = Math.max(wmax, Math.abs(v));
    // x = the identity [cols, cols]: token t's block quantizes to 127 at t (scale fp32(1/127)).
    const x = new Float32Array(cols * cols);
    for (let t = 0; t < cols; t++) x[t * cols + t] = 1;
    const y = new Float32Array(cols * rows);
    loadNativeAddon().addon!.matmul(encodingCode(enc), data, rows, cols, x, cols, y, 2);
    let worst = 0;
    for (let t = 0; t < cols; t++) for (let r = 0; r < rows; r++) worst = Math.max(worst, Math.abs(y[t * rows + r]! - W[r * cols + t]!));
    expect(worst).toBeLessThanOrEqual(wmax * 1e-6);
  });

  it("rows must be whole blocks: refused with a clear message", () => {
    const addon = loadNativeAddon().addon!;
    if (bv === 256) {
      expect(() => checkEncodable(enc, 96, 512)).toThrow(new RegExp(`--experts ${enc} holds rows of whole 256-value super-blocks: hidden size \\(96\\)`));
      expect(() => encodeMatrix(enc, new Float32Array(2 * 128), 2, 128)).toThrow(/rows of whole 256-value super-blocks; a row of 128 values is not/);
      expect(() => addon.expertForward(encodingCode(enc), new Uint8Array(recordBytes("int8", 96, 256)), 96, 256, new Float32Array(96), 1, new Float32Array(96), 1)).toThrow(/multiples of 256/);
    } else {
      expect(() => checkEncodable(enc, 80, 512)).toThrow(new RegExp(`--experts ${enc} needs hidden size \\(80\\) and expert size \\(512\\) divisible by 32`));
      expect(() => checkEncodable(enc, 96, 160)).not.toThrow();
      expect(() => encodeMatrix(enc, new Float32Array(2 * 48), 2, 48)).toThrow(/rows of whole 32-value blocks; a row of 48 values is not/);
      expect(() => addon.expertForward(encodingCode(enc), new Uint8Array(recordBytes("f32", 80, 96)), 80, 96, new Float32Array(80), 1, new Float32Array(80), 1)).toThrow(/multiples of 32/);
    }
    expect(() => checkEncodable(enc, 512, 768)).not.toThrow();
    expect(() => addon.encodeMatrix(encodingCode(enc), new Float32Array(256), 1, 256, new Uint8Array(matrixBytes(enc, 1, 256)))).toThrow(/encoded in TypeScript/);
  });

  const H = 256;
  const F = 512;
  const weights = { gate: kWeights(F, H, 41, 0.2), up: kWeights(F, H, 42, 0.2), down: kWeights(H, F, 43, 0.15) };
  const record = encodeExpertRecord(enc, H, F, weights);

  const run = (name: ExpertKernelName, x: Float32Array, tokens: number, threads = 2) => expertOutput(name, { encoding: enc, hiddenSize: H, expertFfn: F, threads }, record, x, tokens);

  it("native (1 and 2 threads), onnx and js agree on an expert (1, 3 and 17 tokens)", async () => {
    expect(record.byteLength).toBe(recordBytes(enc, H, F));
    for (const tokens of [1, 3, 17]) {
      const x = rand(tokens * H, 50 + tokens, 1);
      const ref = await run("js", x, tokens);
      // The native kernel quantizes the activations to 8 bits (as for int8/int4): about 1% here.
      expect(maxRelErr(await run("native", x, tokens), ref), `native T=${tokens}`).toBeLessThan(2e-2);
      expect(maxRelErr(await run("native", x, tokens, 1), ref), `native 1 thread T=${tokens}`).toBeLessThan(2e-2);
      expect(maxRelErr(await run("onnx", x, tokens), ref), `onnx T=${tokens}`).toBeLessThan(1e-5);
    }
  });

  it("at every kernel instruction-set level this CPU runs: matmul equals the quantized-activation arithmetic, experts match fp64, bits independent of threads and of the other tokens", () => {
    const addon = loadNativeAddon().addon!;
    const isas = addon.kernelIsas();
    expect(isas[0]).toBe("scalar");
    const mr = 37;
    const mc = 768;
    const mw = kWeights(mr, mc, 61, 0.3);
    const mdata = encodeMatrix(enc, mw, mr, mc);
    const MW = decodeMatrix(enc, mdata, mr, mc);
    const BR = 512;
    const BC = 1024;
    const bdata = encodeMatrix(enc, kWeights(BR, BC, 62, 0.3), BR, BC);
    type Case = { kind: "matmul" | "expert"; rows?: number; cols?: number; H?: number; F?: number; T: number; threads: number; w: Uint8Array; x: Float32Array };
    const cases: Case[] = [];
    for (const T of [1, 3, 5, 17]) cases.push({ kind: "matmul", rows: mr, cols: mc, T, threads: 2, w: mdata, x: rand(T * mc, 70 + T, 1) });
    for (const T of [1, 5]) for (const threads of [1, 2]) cases.push({ kind: "matmul", rows: BR, cols: BC, T, threads, w: bdata, x: rand(T * BC, 80 + T, 1) });
    const ex = rand(17 * H, 90, 1);
    cases.push({ kind: "expert", H, F, T: 17, threads: 2, w: record, x: ex });
    cases.push({ kind: "expert", H, F, T: 1, threads: 2, w: record, x: ex.slice(0, H) });
    const dir = tmpDir("moe-run-kquant-isa-");
    try {
      const parts: Buffer[] = [];
      let at = 0;
      const put = (u8: Uint8Array) => {
        parts.push(Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength));
        at += u8.byteLength;
        return [at - u8.byteLength, u8.byteLength];
      };
      const meta = cases.map((c) => ({ ...c, enc: encodingCode(enc), w: put(c.w), x: put(new Uint8Array(c.x.buffer, c.x.byteOffset, c.x.byteLength)) }));
      fs.writeFileSync(path.join(dir, "in.bin"), Buffer.concat(parts));
      fs.writeFileSync(path.join(dir, "cases.json"), JSON.stringify(meta));
      const l = expertRecordLayout(enc, H, F);
      const part = ([o, n]: [number, number]) => record.subarray(o, o + n);
      const [G, U, D] = [decodeMatrix(enc, part(l.gate), F, H), decodeMatrix(enc, part(l.up), F, H), decodeMatrix(enc, part(l.down), H, F)];
      const expertRef = (x: Float32Array, T: number) => {
        const g = matmulRef(G, F, H, x, T);
        const u = matmulRef(U, F, H, x, T);
        const h = Float32Array.from(g, (v, i) => (v / (1 + Math.exp(-v))) * u[i]!);
        return matmulRef(D, H, F, h, T);
      };
      for (const isa of isas) {
        const r = spawnSync(process.execPath, [path.join(ROOT, "test", "kernel-isa-child.mjs"), dir], { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", timeout: 120_000 });
        expect(r.status, `${isa}: ${r.stderr}`).toBe(0);
        const res = JSON.parse(r.stdout) as { isa: string; outputs: [number, number][] };
        expect(res.isa).toBe(isa);
        const buf = fs.readFileSync(path.join(dir, "out.bin"));
        const out = res.outputs.map(([o, n]) => new Float32Array(buf.buffer.slice(buf.byteOffset + o, buf.byteOffset + o + 4 * n)));
        for (let i = 0; i < 4; i++) {
          const c = cases[i]!;
          expect(relErr(out[i]!, quantActRef(MW, mr, mc, c.x, c.T)), `${isa} matmul T=${c.T} (emulation)`).toBeLessThan(1e-5);
          expect(relErr(out[i]!, matmulRef(MW, mr, mc, c.x, c.T)), `${isa} matmul T=${c.T} (fp64)`).toBeLessThan(2e-2);
        }
        for (const [a, b] of [[4, 5], [6, 7]] as const) expect(Buffer.from(out[a]!.buffer).equals(Buffer.from(out[b]!.buffer)), `${isa} threads`).toBe(true);
        expect(relErr(out[8]!, expertRef(ex, 17)), `${isa} expert`).toBeLessThan(2e-2);
        expect(Buffer.from(out[9]!.buffer).equals(Buffer.from(out[8]!.slice(0, H).buffer)), `${isa} token alone`).toBe(true);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});

/**
 * End to end: a 256-wide synthetic model's GGUF of one expert type imports with its experts kept
 * as blocks (the default for a file whose experts are all one such type), against the f32 import
 * of the same file (the same weights, decoded). The native kernels quantize activations to 8 bits
 * (as llama.cpp does), for the dense matrices too (kept as the file's blocks:
 * importer/DenseBlocksWriter.ts), where the f32 import computes in fp32, so greedy text drifts at
 * near-ties of this random model; under teacher forcing the top-1 tokens agree >= 95%. Q2_K: >= 93%:
 * with its 2-bit weights this model meets near-ties more often; measured 121 of 128 (the same
 * file's experts re-encoded as int8, an older kernel with the same activation rounding: 123 of
 * 128; over 256 tokens 244 vs 246), every disagreement but one a logit gap under 0.05 of a range
 * of ~12. The kernels themselves equal the quantized-activation arithmetic (tests above).
 */
async function importsAsBlocks(types: readonly (keyof typeof GGUF_TYPE_ENCODING)[]): Promise<void> {
  const quiet = { progress: false, log: () => {} };
  const dir = tmpDir("moe-run-kquant-e2e-");
  const hf = path.join(dir, "synth256");
  writeSyntheticCheckpoint(hf, { tokenizerFrom: path.join(MODELS, "tiny-mixtral"), vocabSize: 512, hiddenSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, numExperts: 4, topK: 2, expertFfn: 256, dtype: "F32", seed: 5 });
  try {
    for (const type of types) {
      const gg = path.join(dir, `synth256-${type}.gguf`);
      const written = exportGguf(hf, gg, { type });
      expect(written.types.get("blk.0.ffn_gate_exps.weight")).toBe(type);
      const blocks = path.join(dir, `${type}-blocks`);
      const floats = path.join(dir, `${type}-f32`);
      const r = await importModel(gg, blocks, quiet);
      expect(r.manifest.precision.experts).toBe(GGUF_TYPE_ENCODING[type]);
      await importModel(gg, floats, { ...quiet, experts: "f32" });
      const ids = [1, ...(await greedyRun(floats, "The license", 127)).ids];
      const [a, b] = [await loadModel(blocks, { threads: 1, log: () => {} }), await loadModel(floats, { threads: 1, log: () => {} })];
      try {
        const la = (await a.logits(ids)).data;
        const lb = (await b.logits(ids)).data;
        const V = a.dims.vocabSize;
        const argmax = (l: Float32Array, i: number) => {
          let best = 0;
          for (let j = 1; j < V; j++) if (l[i * V + j]! > l[i * V + best]!) best = j;
          return best;
        };
        let agree = 0;
        for (let i = 0; i < ids.length; i++) if (argmax(la, i) === argmax(lb, i)) agree++;
        expect(agree / ids.length, `${type}: ${agree} of ${ids.length}`).toBeGreaterThanOrEqual(type === "Q2_K" ? 0.93 : 0.95);
      } finally {
        await a.dispose();
        await b.dispose();
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const GGUF_TYPE_ENCODING = { Q4_K: "q4_k", Q6_K: "q6_k", Q2_K: "q2_k", Q3_K: "q3_k", Q4_1: "q4_1", Q5_0: "q5_0", Q5_1: "q5_1" } as const;

it("a Q4_K / Q6_K GGUF imports with q4_k / q6_k experts: top-1 agreement >= 95% with the f32 import under teacher forcing", () => importsAsBlocks(["Q4_K", "Q6_K"]), 600_000);

it("a Q2_K / Q3_K GGUF imports with q2_k / q3_k experts: top-1 agreement >= 95% (Q2_K >= 93%) with the f32 import under teacher forcing", () => importsAsBlocks(["Q2_K", "Q3_K"]), 600_000);

it("a Q4_1 / Q5_0 / Q5_1 GGUF imports with q4_1 / q5_0 / q5_1 experts: top-1 agreement >= 95% with the f32 import under teacher forcing", () => importsAsBlocks(["Q4_1", "Q5_0", "Q5_1"]), 600_000);
