/**
 * Expert storage formats from other tools, checked against their definitions: MXFP4 (OCP; gpt-oss
 * checkpoints' blocks and scales, GGUF's block_mxfp4) decoded from hand-derived blocks, encoded
 * with the OCP scale rule, imported from gpt-oss tensors without floats; and GGUF Q8_0 / Q4_0 /
 * MXFP4 expert tensors converted to our int8 / int4 / mxfp4 without loss (compared with
 * src/formats/ggmlQuants.ts, an independent codec of llama.cpp's reference).
 */
import { describe, expect, it } from "vitest";
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
  type ExpertBiases,
} from "../src/store/expertEncoding.js";
import { rand } from "./helpers.js";



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
    expect(losslessExpertEncoding(GgmlType.Q4_K)).toBeUndefined();
    expect(() => expertMatrixFromGgml(GgmlType.Q6_K, new Uint8Array(210), 1, 256)).toThrow(/no lossless expert encoding/);
    expect(() => int8MatrixFromGgmlQ8_0(new Uint8Array(33), 1, 32)).toThrow(/holds 33 bytes, expected 34/);
  });
});

