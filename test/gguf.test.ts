/**
 * GGUF writer/reader and HF -> GGUF conversion, checked against the real llama.cpp (node-llama-cpp,
 * prebuilt CPU binaries): it loads our files, tokenizes like moe-run, and greedy decoding on the
 * same F16 weights gives the same token ids as moe-run.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel } from "node-llama-cpp";
import {
  GGML_TYPE,
  GgufValueType,
  dequantizeQ8_0,
  encodeGgml,
  gguf,
  ggmlTensorBytes,
  ggmlToFloat32,
  ggufValue,
  halfBitsToFloat,
  permuteRopeRows,
  quantizeQ8_0,
  readGgufHeader,
  readGgufTensorBytes,
  toFloat32,
  writeGguf,
  type GgufValue,
} from "../src/formats/gguf.js";
import { exportGguf, rewriteGgufMetadata } from "../src/formats/ggufExport.js";
import { GgufFile } from "../src/formats/ggufReader.js";
import { convertHfToGguf } from "../src/formats/hfToGguf.js";
import { HfCheckpoint } from "../src/formats/HfCheckpoint.js";
import { importModel } from "../src/importer/importModel.js";
import { loadModel, type LanguageModel } from "../src/index.js";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { vocabFromGguf } from "../src/tokenizer/ggufVocab.js";
import { LlamaCppTokenizer } from "../src/tokenizer/LlamaCppTokenizer.js";
import { MODELS, copyFixture, tmpDir } from "./helpers.js";

/** Q8_0 error bound in steps of amax/127: half a step, plus 127 times fp16's rounding of d (2^-11). */
const Q8_STEP_ERROR = 0.5 + 127 / 2048 + 1e-3;

describe("Q8_0 and RoPE permutation", () => {
  it("quantizes as quantize_row_q8_0_ref: d = amax/127 as fp16, q = roundf(x/d)", () => {
    const x = new Float32Array(64);
    // Block 0: amax 127 -> d 1, so q = roundf(x); halves round away from zero.
    const vals = [127, -127, 0.5, -0.5, 1.5, -1.5, 2.4999, -2.5001, 3, 0];
    vals.forEach((v, i) => (x[i] = v));
    // Block 1: all zero -> d 0, q 0.
    const q = quantizeQ8_0(x);
    expect(q.byteLength).toBe(2 * 34);
    const dv = new DataView(q.buffer);
    expect(halfBitsToFloat(dv.getUint16(0, true))).toBe(1);
    expect([...new Int8Array(q.buffer, 2, 10)]).toEqual([127, -127, 1, -1, 2, -2, 2, -3, 3, 0]);
    expect(dv.getUint16(34, true)).toBe(0);
    expect([...new Int8Array(q.buffer, 36, 32)].every((v) => v === 0)).toBe(true);
    // Round trip error is at most half a step (plus fp16 rounding of d).
    const r = new Float32Array(4096).map((_, i) => Math.sin(i * 0.37) * (1 + (i % 7)));
    const back = dequantizeQ8_0(quantizeQ8_0(r));
    for (let b = 0; b < r.length / 32; b++) {
      const blk = r.subarray(b * 32, b * 32 + 32);
      const amax = Math.max(...blk.map(Math.abs));
      for (let j = 0; j < 32; j++) expect(Math.abs(back[b * 32 + j]! - blk[j]!)).toBeLessThanOrEqual((amax / 127) * Q8_STEP_ERROR);
    }
  });

  it("permutes q/k rows from half-split to adjacent pairs per head", () => {
    // 2 heads x headDim 4, 1 column: rows = head*10 + index within head.
    const w = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
    expect([...permuteRopeRows(w, 2, 1)]).toEqual([0, 2, 1, 3, 10, 12, 11, 13]);
    const w2 = Float32Array.from([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]); // 4 rows x 2 cols
    expect([...permuteRopeRows(w2, 1, 2)]).toEqual([0, 0.5, 2, 2.5, 1, 1.5, 3, 3.5]);
  });
});

describe("GGUF header", () => {
  it("round-trips metadata of every type and tensor infos through the reader", () => {
    const file = path.join(tmpDir(), "rt.gguf");
    const f32 = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const meta: [string, Parameters<typeof writeGguf>[1][number][1]][] = [
      ["general.architecture", gguf.str("llama")],
      ["u8", { type: GgufValueType.UINT8, value: 200 }],
      ["i8", { type: GgufValueType.INT8, value: -5 }],
      ["u16", { type: GgufValueType.UINT16, value: 60000 }],
      ["i16", { type: GgufValueType.INT16, value: -300 }],
      ["u32", gguf.u32(4_000_000_000)],
      ["i32", gguf.i32(-7)],
      ["f32", gguf.f32(0.5)],
      ["f64", { type: GgufValueType.FLOAT64, value: Math.PI }],
      ["u64", { type: GgufValueType.UINT64, value: 2n ** 40n }],
      ["i64", { type: GgufValueType.INT64, value: -(2n ** 40n) }],
      ["bool", gguf.bool(true)],
      ["utf8", gguf.str("héllo ✓")],
      ["strs", gguf.strings(["a", "", "Ġb c"])],
      ["ints", gguf.i32s([1, -2, 3])],
    ];
    const res = writeGguf(file, meta, [
      { name: "a", dims: [3, 2], type: "F32", data: () => [new Uint8Array(f32.buffer)] },
      { name: "b", dims: [32], type: "Q8_0", data: () => [quantizeQ8_0(new Float32Array(32).fill(0.25))] },
      { name: "c", dims: [2], type: "F16", data: () => [new Uint8Array(new Uint16Array([0x3c00, 0xc000]).buffer)] },
    ]);
    expect(fs.statSync(file).size).toBe(res.bytes);
    const h = readGgufHeader(file);
    expect(h.version).toBe(3);
    expect(h.alignment).toBe(32);
    expect(h.dataOffset).toBe(res.dataOffset);
    expect(h.dataOffset % 32).toBe(0);
    expect([...h.metadata.keys()]).toEqual(meta.map(([k]) => k));
    for (const [k, v] of meta) expect(h.metadata.get(k)).toEqual(v.type === GgufValueType.FLOAT32 ? { ...v, value: Math.fround(v.value as number) } : v);
    expect(h.tensors.map((t) => [t.name, t.dims, t.type, t.offset % 32])).toEqual([
      ["a", [3, 2], GGML_TYPE.F32, 0],
      ["b", [32], GGML_TYPE.Q8_0, 0],
      ["c", [2], GGML_TYPE.F16, 0],
    ]);
    expect([...ggmlToFloat32(readGgufTensorBytes(file, h, "a"), GGML_TYPE.F32)]).toEqual([...f32]);
    for (const v of ggmlToFloat32(readGgufTensorBytes(file, h, "b"), GGML_TYPE.Q8_0)) expect(v).toBeCloseTo(0.25, 3);
    expect([...ggmlToFloat32(readGgufTensorBytes(file, h, "c"), GGML_TYPE.F16)]).toEqual([1, -2]);
  });

  it("writes F16, BF16, Q8_0, Q4_K and Q6_K tensors that the validating reader decodes to the encoded values", () => {
    const file = path.join(tmpDir(), "types.gguf");
    const x = Float32Array.from({ length: 512 * 2 }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)) * 0.01);
    const types = ["F16", "BF16", "Q8_0", "Q4_K", "Q6_K"] as const;
    writeGguf(
      file,
      [["general.architecture", gguf.str("llama")]],
      types.map((type) => ({ name: type, dims: [512, 2], type, data: () => [encodeGgml(x, type)] }))
    );
    const g = GgufFile.open(file);
    try {
      for (const type of types) {
        const t = g.tensor(type);
        expect(t.type.name).toBe(type);
        expect(t.byteLength).toBe(ggmlTensorBytes(type, [512, 2]));
        expect(t.offset % 32).toBe(0);
        expect([...g.readFloat32(type)]).toEqual([...ggmlToFloat32(encodeGgml(x, type), GGML_TYPE[type])]);
        expect([...g.readFloat32(type, 1, 1)]).toEqual([...g.readFloat32(type).subarray(512)]); // one row
      }
      const h = readGgufHeader(file);
      expect(h.tensors.map((t) => [t.name, t.type])).toEqual(types.map((t) => [t, GGML_TYPE[t]]));
    } finally {
      g.close();
    }
    expect(ggmlTensorBytes("Q4_K", [256, 3])).toBe(3 * 144);
    expect(ggmlTensorBytes("Q6_K", [512])).toBe(2 * 210);
    expect(() => ggmlTensorBytes("Q4_K", [192, 2])).toThrow(/Q4_K needs the innermost dimension to be a multiple of 256, got 192/);
  });

  it("refuses a file that is not GGUF, and a truncated header", () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "x.gguf"), "not a gguf file at all");
    expect(() => readGgufHeader(path.join(dir, "x.gguf"))).toThrow(/not a GGUF file/);
    const good = path.join(dir, "g.gguf");
    writeGguf(good, [["general.architecture", gguf.str("llama")], ["s", gguf.strings(["x".repeat(100)])]], []);
    fs.writeFileSync(path.join(dir, "t.gguf"), fs.readFileSync(good).subarray(0, 60));
    expect(() => readGgufHeader(path.join(dir, "t.gguf"))).toThrow(/truncated|ended early/);
  });
});

describe("HF -> GGUF refusals", () => {
  it("fails before writing when the checkpoint disagrees with config.json, and leaves no file", () => {
    const hf = copyFixture("tiny-mixtral");
    const cfgPath = path.join(hf, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, num_local_experts: cfg.num_local_experts + 1 }));
    const out = path.join(tmpDir(), "x.gguf");
    expect(() => convertHfToGguf(hf, out, { type: "F16" })).toThrow(/gate\.weight" has shape \[8, 64\] but config\.json implies \[9, 64\]/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.existsSync(out + ".tmp")).toBe(false);
  });

  it("refuses architectures other than Mixtral", () => {
    expect(() => convertHfToGguf(path.join(MODELS, "tiny-qwen3-moe"), path.join(tmpDir(), "q.gguf"), { type: "F16" })).toThrow(/mixtral/);
  });
});

/** A small Mixtral whose fp16 weights are exactly what both engines compute with. */
const SYNTH = { vocabSize: 512, hiddenSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, numExperts: 4, topK: 2, expertFfn: 256, maxPositions: 512, dtype: "F16" as const, seed: 7 };

describe("HF Mixtral -> GGUF, cross-checked with node-llama-cpp", () => {
  let dir: string;
  let hf: string;
  let f16: string;
  let q8: string;
  let moe: LanguageModel;
  let llama: Llama;
  let llamaF16: LlamaModel;

  beforeAll(async () => {
    dir = tmpDir("moe-run-gguf-");
    hf = path.join(dir, "hf");
    writeSyntheticCheckpoint(hf, { tokenizerFrom: path.join(MODELS, "tiny-mixtral"), ...SYNTH });
    f16 = path.join(dir, "m-f16.gguf");
    q8 = path.join(dir, "m-q8_0.gguf");
    convertHfToGguf(hf, f16, { type: "F16" });
    convertHfToGguf(hf, q8, { type: "Q8_0" });
    await importModel(hf, path.join(dir, "moe"), { progress: false, log: () => {} });
    moe = await loadModel(path.join(dir, "moe"), { threads: 1 });
    llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    llamaF16 = await llama.loadModel({ modelPath: f16 });
  });
  afterAll(async () => {
    await moe?.dispose();
    await llamaF16?.dispose();
    await llama?.dispose();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("writes llama-arch metadata, expert tensors with innermost-first dims, F32 norms and router", () => {
    const h = readGgufHeader(f16);
    expect(ggufValue(h, "general.architecture")).toBe("llama");
    expect(ggufValue(h, "llama.expert_count")).toBe(4);
    expect(ggufValue(h, "llama.expert_used_count")).toBe(2);
    expect(ggufValue(h, "llama.feed_forward_length")).toBe(256);
    expect(ggufValue(h, "llama.attention.head_count_kv")).toBe(2);
    expect(ggufValue(h, "tokenizer.ggml.model")).toBe("gpt2");
    expect((ggufValue(h, "tokenizer.ggml.tokens") as string[]).length).toBe(512);
    expect(ggufValue(h, "tokenizer.ggml.bos_token_id")).toBe(1);
    const t = new Map(h.tensors.map((x) => [x.name, x]));
    expect(h.tensors).toHaveLength(1 + 2 * 10 + 2);
    expect(t.get("token_embd.weight")).toMatchObject({ dims: [128, 512], type: GGML_TYPE.F16 });
    expect(t.get("blk.1.attn_q.weight")).toMatchObject({ dims: [128, 128], type: GGML_TYPE.F16 });
    expect(t.get("blk.1.attn_k.weight")).toMatchObject({ dims: [128, 64], type: GGML_TYPE.F16 });
    expect(t.get("blk.1.attn_output.weight")).toMatchObject({ dims: [128, 128] });
    expect(t.get("blk.1.ffn_gate_inp.weight")).toMatchObject({ dims: [128, 4], type: GGML_TYPE.F32 });
    expect(t.get("blk.1.ffn_gate_exps.weight")).toMatchObject({ dims: [128, 256, 4], type: GGML_TYPE.F16 });
    expect(t.get("blk.1.ffn_up_exps.weight")).toMatchObject({ dims: [128, 256, 4], type: GGML_TYPE.F16 });
    expect(t.get("blk.1.ffn_down_exps.weight")).toMatchObject({ dims: [256, 128, 4], type: GGML_TYPE.F16 });
    expect(t.get("blk.0.attn_norm.weight")).toMatchObject({ dims: [128], type: GGML_TYPE.F32 });
    expect(t.get("output.weight")).toMatchObject({ dims: [128, 512], type: GGML_TYPE.F16 });

    const hq = readGgufHeader(q8);
    const tq = new Map(hq.tensors.map((x) => [x.name, x]));
    expect(ggufValue(hq, "general.file_type")).toBe(7);
    expect(tq.get("blk.0.ffn_down_exps.weight")!.type).toBe(GGML_TYPE.Q8_0);
    expect(tq.get("blk.0.ffn_gate_inp.weight")!.type).toBe(GGML_TYPE.F32);
    expect(tq.get("output_norm.weight")!.type).toBe(GGML_TYPE.F32);
  });

  it("stores the checkpoint's exact fp16 weights: experts stacked, q/k permuted, Q8_0 within half a step", () => {
    const h = readGgufHeader(f16);
    const ck = HfCheckpoint.open(hf);
    try {
      const raw = (name: string) => readGgufTensorBytes(f16, h, name);
      const hfBytes = (name: string, shape: number[]) => ck.readFloat32(name, shape);
      const down = toFloat32(raw("blk.1.ffn_down_exps.weight"), "F16");
      const n = 128 * 256;
      const e2 = hfBytes("model.layers.1.block_sparse_moe.experts.2.w2.weight", [128, 256]);
      expect(down.subarray(2 * n, 3 * n)).toEqual(e2);
      const k = toFloat32(raw("blk.0.attn_k.weight"), "F16");
      expect(k).toEqual(permuteRopeRows(hfBytes("model.layers.0.self_attn.k_proj.weight", [64, 128]), 2, 128));
      const q = toFloat32(raw("blk.0.attn_q.weight"), "F16");
      expect(q).toEqual(permuteRopeRows(hfBytes("model.layers.0.self_attn.q_proj.weight", [128, 128]), 4, 128));
      const hq = readGgufHeader(q8);
      const up = dequantizeQ8_0(readGgufTensorBytes(q8, hq, "blk.0.ffn_up_exps.weight")).subarray(0, n);
      const ref = hfBytes("model.layers.0.block_sparse_moe.experts.0.w3.weight", [256, 128]);
      let worst = 0;
      for (let i = 0; i < n; i += 32) {
        const amax = Math.max(...ref.subarray(i, i + 32).map(Math.abs));
        for (let j = i; j < i + 32; j++) worst = Math.max(worst, Math.abs(up[j]! - ref[j]!) / (amax / 127));
      }
      expect(worst).toBeLessThan(Q8_STEP_ERROR);
    } finally {
      ck.close();
    }
  });

  it("node-llama-cpp's tokenizer on our GGUF gives moe-run's ids", () => {
    for (const text of ["The license", "Permission is hereby granted, free of charge", "  two  spaces\nand a newline", "don't 123 +-*/"]) {
      expect(llamaF16.tokenize(text)).toEqual(moe.tokenizer.encode(text, { addSpecialTokens: false }));
    }
    expect(llamaF16.tokens.bos).toBe(1);
    expect(llamaF16.tokens.eos).toBe(2);
  });

  it("greedy token ids of node-llama-cpp (F16 GGUF) and moe-run agree on the same weights", async () => {
    const prompt = "Permission is hereby granted";
    const steps = 24;
    const ids = moe.tokenize(prompt);
    const mine: number[] = [];
    const logits: Float32Array[] = [];
    for await (const _ of moe.generate(prompt, { maxTokens: steps, stopAtEos: false, onToken: (id) => mine.push(id), onLogits: (l) => logits.push(l.slice()) }));
    const ctx = await llamaF16.createContext({ contextSize: 256, threads: 1 });
    try {
      const theirs: number[] = [];
      for await (const t of ctx.getSequence().evaluate(ids, { temperature: 0, yieldEogToken: true })) {
        theirs.push(t);
        if (theirs.length >= steps) break;
      }
      // Both compute with the same fp16 weights but in different precision (llama.cpp rounds
      // activations to fp16 in its F16 matmuls): ids must agree unless moe-run's logits have a
      // near-tie between the two choices, after which the sequences may legitimately part.
      let agreed = 0;
      for (let i = 0; i < steps; i++) {
        if (mine[i] === theirs[i]) {
          agreed++;
          continue;
        }
        const l = logits[i]!;
        expect(Math.max(...l) - l[theirs[i]!]!, `step ${i}: moe-run ${mine[i]} vs llama.cpp ${theirs[i]}`).toBeLessThan(0.02);
        break;
      }
      expect(agreed).toBeGreaterThanOrEqual(8);
    } finally {
      await ctx.dispose();
    }
  });

  it("node-llama-cpp loads the Q8_0 file; its first greedy token is moe-run's or a near-tie", async () => {
    const model = await llama.loadModel({ modelPath: q8 });
    const ctx = await model.createContext({ contextSize: 256, threads: 1 });
    try {
      const prompt = "The license";
      const ids = moe.tokenize(prompt);
      let first = -1;
      for await (const t of ctx.getSequence().evaluate(ids, { temperature: 0, yieldEogToken: true })) {
        first = t;
        break;
      }
      const V = moe.dims.vocabSize;
      const l = (await moe.logits(ids)).data.subarray((ids.length - 1) * V, ids.length * V);
      expect(Math.max(...l) - l[first]!).toBeLessThan(0.1);
    } finally {
      await ctx.dispose();
      await model.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The tokenizer moe-run builds from GGUF metadata (LlamaCppTokenizer) against llama.cpp's

/** A small SentencePiece ("llama") vocabulary learned from text: specials, 256 byte tokens, characters, merges. */
function spmVocab(size: number, text: string): { tokens: string[]; types: number[]; scores: number[] } {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
    scores.push(0);
  }
  tokens.push("<|user|>");
  types.push(4); // user-defined: always split out
  scores.push(0);
  for (const c of "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:'\"!?-()") {
    tokens.push(c);
    types.push(1);
    scores.push(-1000);
  }
  const counts = new Map<string, number>();
  for (const w of text.replace(/\s+/g, " ").split(" ")) counts.set(`\u2581${w}`, (counts.get(`\u2581${w}`) ?? 0) + 1);
  let words = [...counts].map(([w, c]) => [Array.from(w), c] as [string[], number]);
  const have = new Set(tokens);
  for (let rank = 0; tokens.length < size; rank++) {
    const pairs = new Map<string, number>();
    for (const [s, c] of words) for (let i = 0; i + 1 < s.length; i++) pairs.set(`${s[i]}\u0000${s[i + 1]}`, (pairs.get(`${s[i]}\u0000${s[i + 1]}`) ?? 0) + c);
    let best = "";
    let bestCount = 0;
    for (const [k, c] of pairs) if (c > bestCount && !have.has(k.replace("\u0000", ""))) [best, bestCount] = [k, c];
    if (!best) break;
    const [a, b] = best.split("\u0000") as [string, string];
    tokens.push(a + b);
    types.push(1);
    scores.push(-rank);
    have.add(a + b);
    words = words.map(([s, c]) => {
      const o: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (s[i] === a && s[i + 1] === b) {
          o.push(a + b);
          i++;
        } else o.push(s[i]!);
      }
      return [o, c];
    });
  }
  return { tokens, types, scores };
}

const TEXTS = [
  "And the LORD spake unto Moses, saying,",
  "  two  spaces\nand a newline\n\n\nthree",
  "don't 123 +-*/ 4567.89 it's I'm we'll they've",
  "H\u00e9llo w\u00f6rld \u2014 \u00fcn\u00efcode \u2713 \u65e5\u672c\u8a9e \ud83d\ude42",
  "<s>special</s> inside <unk> <|user|>text",
  "tabs\tand\r\ncrlf   trailing   ",
  "",
  " ",
  "a\u00a0b\u3000c",
];


describe("GGUF vocabularies tokenize as llama.cpp tokenizes them", () => {
  let dir: string;
  let llama: Llama;
  let f16: string;
  let llamaF16: LlamaModel;
  let validation: string;
  beforeAll(async () => {
    dir = tmpDir("moe-run-gguf-tok-");
    validation = fs.readFileSync(path.join(MODELS, "moe-tiny-en", "validation.txt"), "utf8");
    f16 = path.join(dir, "moe-tiny-en-F16.gguf");
    exportGguf(path.join(MODELS, "moe-tiny-en"), f16, { type: "F16" });
    llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    llamaF16 = await llama.loadModel({ modelPath: f16 });
  });
  afterAll(async () => {
    await llamaF16?.dispose();
    await llama?.dispose();
  });

  it("tokenizes and detokenizes the gpt2 vocabulary as llama.cpp does (with and without special-token parsing)", () => {
    const g = GgufFile.open(f16);
    const tok = new LlamaCppTokenizer(vocabFromGguf(g));
    g.close();
    for (const text of [...TEXTS, validation.slice(0, 20000)]) {
      for (const special of [false, true]) {
        const ids = tok.encode(text, { addSpecial: false, parseSpecial: special });
        expect(ids, JSON.stringify(text.slice(0, 40))).toEqual(llamaF16.tokenize(text, special));
        expect(tok.decode(ids, { special })).toBe(llamaF16.detokenize(ids, special));
      }
    }
  });

  it("splits words as llama.cpp's pre-tokenizers do (llama3, qwen2, gpt-4o, deepseek-v3 and others)", async () => {
    const texts = [
      ...TEXTS,
      "DON'T Won't CamelCaseWord HTTPServer xmlHTTPRequest",
      "12345678901 3.14159 !!! ??? ... ,,,",
      "\n\n \n x  \ny \u0085 z",
      validation.slice(0, 4000),
    ];
    const pres = ["default", "llama-bpe", "qwen2", "qwen35", "starcoder", "falcon", "deepseek-v3", "gpt-4o", "tekken", "bailingmoe", "seed-coder", "olmo"];
    for (const pre of pres) {
      const file = path.join(dir, `pre-${pre}.gguf`);
      rewriteGgufMetadata(f16, file, (m) => m.map(([k, v]) => [k, k === "tokenizer.ggml.pre" ? gguf.str(pre) : v] as [string, GgufValue]));
      const g = GgufFile.open(file);
      const tok = new LlamaCppTokenizer(vocabFromGguf(g));
      g.close();
      const model = await llama.loadModel({ modelPath: file });
      try {
        for (const text of texts) expect(tok.encode(text, { addSpecial: false, parseSpecial: false }), `${pre}: ${JSON.stringify(text.slice(0, 40))}`).toEqual(model.tokenize(text, false));
      } finally {
        await model.dispose();
        fs.rmSync(file);
      }
    }
  });

  it("tokenizes a SentencePiece (llama) vocabulary with scores, byte fallback and user-defined tokens as llama.cpp does", async () => {
    const base = path.join(dir, "tiny-mixtral-F16.gguf");
    exportGguf(path.join(MODELS, "tiny-mixtral"), base, { type: "F16" });
    const v = spmVocab(512, validation.slice(0, 200_000));
    const spm = path.join(dir, "spm.gguf");
    rewriteGgufMetadata(base, spm, (m) => [
      ...m.filter(([k]) => !k.startsWith("tokenizer.")),
      ["tokenizer.ggml.model", gguf.str("llama")],
      ["tokenizer.ggml.tokens", gguf.strings(v.tokens)],
      ["tokenizer.ggml.scores", { type: 9, itemType: 6, value: v.scores } as GgufValue],
      ["tokenizer.ggml.token_type", gguf.i32s(v.types)],
      ["tokenizer.ggml.bos_token_id", gguf.u32(1)],
      ["tokenizer.ggml.eos_token_id", gguf.u32(2)],
      ["tokenizer.ggml.unknown_token_id", gguf.u32(0)],
    ]);
    const g = GgufFile.open(spm);
    const tok = new LlamaCppTokenizer(vocabFromGguf(g));
    g.close();
    const model = await llama.loadModel({ modelPath: spm });
    try {
      for (const text of [...TEXTS, "zzzz qqqq", validation.slice(0, 5000)]) {
        for (const special of [false, true]) {
          const ids = tok.encode(text, { addSpecial: false, parseSpecial: special });
          expect(ids, JSON.stringify(text.slice(0, 40))).toEqual(model.tokenize(text, special));
          expect(tok.decode(ids, { special })).toBe(model.detokenize(ids, special));
        }
      }
      // BOS as the vocabulary says (SPM: add_bos defaults to true)
      expect(tok.encode("Hello")[0]).toBe(1);
    } finally {
      await model.dispose();
    }
  });

});
