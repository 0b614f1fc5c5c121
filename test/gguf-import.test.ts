/**
 * `moe-run import <file.gguf>`: the bundled checkpoints go to GGUF (F16, Q8_0, Q4_K, Q6_K, written
 * by the project's writer) and back; the GGUF view holds exactly the weights the writer encoded; the
 * import equals the Hugging Face import of the same weights; the tokenizer and greedy decoding equal
 * llama.cpp's (node-llama-cpp) on the same files; split files; and bad files get a one-line error
 * with nothing published.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel } from "node-llama-cpp";
import { MoeRunError } from "../src/errors.js";
import { GgmlType, dequantize, quantize } from "../src/formats/ggmlQuants.js";
import { GGML_TYPE, gguf, writeGguf, type GgmlTypeName, type GgufValue } from "../src/formats/gguf.js";
import { GgufCheckpoint } from "../src/formats/GgufCheckpoint.js";
import { exportGguf, fallbackType, q4KMTypeFor, rewriteGgufMetadata } from "../src/formats/ggufExport.js";
import { GgufFile } from "../src/formats/ggufReader.js";
import { HfCheckpoint } from "../src/formats/HfCheckpoint.js";
import { writeSafetensors } from "../src/formats/safetensors.js";
import { importModel } from "../src/importer/importModel.js";
import { loadModel, type LanguageModel } from "../src/index.js";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { encodeFromFloat32 } from "../src/util/dtype.js";
import { MODELS, greedyRun, runCli, sameBits, tmpDir } from "./helpers.js";

const quiet = { progress: false, log: () => {} };
const PROMPTS = ["And the LORD spake unto Moses, saying,", "Once upon a time there was", "It is a truth universally acknowledged"];

/** A Hugging Face checkpoint folder holding `weights` (F32 or F16) with the config and tokenizer of `from`. */
function hfCopy(from: string, out: string, names: string[], read: (name: string) => { values: Float32Array; shape: number[] }, dtype: "F32" | "F16"): string {
  fs.mkdirSync(out, { recursive: true });
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(from, f), path.join(out, f));
  const cache = new Map(names.map((n) => [n, read(n)]));
  writeSafetensors(path.join(out, "model.safetensors"), names.map((name) => ({ name, dtype, shape: cache.get(name)!.shape })), (e) => encodeFromFloat32(cache.get(e.name)!.values, dtype));
  return out;
}

/** The checkpoint with every tensor rounded to fp16 (what an F16 GGUF holds). */
function f16Copy(hfDir: string, out: string): string {
  const ck = HfCheckpoint.open(hfDir);
  try {
    const names = ck.tensorNames();
    return hfCopy(hfDir, out, names, (n) => ({ values: ck.readFloat32(n, ck.entry(n).shape), shape: ck.entry(n).shape }), "F16");
  } finally {
    ck.close();
  }
}

/** A Hugging Face checkpoint of exactly the weights a GGUF file holds (as fp32). */
function viewCopy(hfDir: string, ggufPath: string, out: string): string {
  const g = GgufCheckpoint.open(ggufPath);
  try {
    return hfCopy(hfDir, out, g.tensorNames(), (n) => ({ values: g.readFloat32(n, g.entry(n).shape), shape: g.entry(n).shape }), "F32");
  } finally {
    g.close();
  }
}

/** Bit-for-bit equality of two float arrays (fast; expect().toEqual is slow on large typed arrays). */
async function greedy(dir: string, prompt: string, n: number): Promise<number[]> {
  return (await greedyRun(dir, prompt, n)).ids;
}

describe("bundled checkpoints to GGUF and back", () => {
  const FIXTURES = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe"];
  const TYPES: GgmlTypeName[] = ["F16", "Q8_0", "Q4_K", "Q6_K"];
  let dir: string;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-import-");
  });

  it.each(FIXTURES)("%s: the GGUF view holds exactly the weights the writer encoded, in Hugging Face layout", (fx) => {
    const hf = HfCheckpoint.open(path.join(MODELS, fx));
    try {
      for (const type of ["F32", ...TYPES] as GgmlTypeName[]) {
        const file = path.join(dir, `${fx}-${type}.gguf`);
        const written = exportGguf(path.join(MODELS, fx), file, { type });
        const g = GgufCheckpoint.open(file);
        try {
          // The writer keeps norms and routers F32 and falls back where rows are not whole blocks.
          const typeOfRows = (cols: number) => GgmlType[fallbackType(type, cols)];
          for (const name of hf.tensorNames()) {
            const shape = hf.entry(name).shape;
            const want = hf.readFloat32(name, shape);
            const got = g.readFloat32(name, shape);
            const matrix = shape.length === 2 && !/gate\.weight$|shared_expert_gate/.test(name);
            const expected = matrix && type !== "F32" ? dequantize(typeOfRows(shape[1]!), quantize(typeOfRows(shape[1]!), want), want.length) : want;
            expect(sameBits(got, expected), `${fx} ${type} ${name}`).toBe(true);
          }
          expect([...written.types.values()].some((t) => t !== "F32")).toBe(type !== "F32");
          // An expert's stored blocks, as they are in the file, decode to what readFloat32 gives.
          const expert = fx === "tiny-mixtral" ? "model.layers.1.block_sparse_moe.experts.3.w2.weight" : "model.layers.1.mlp.experts.3.down_proj.weight";
          const raw = g.readRaw(expert, hf.entry(expert).shape);
          const n = hf.entry(expert).shape.reduce((a, b) => a * b, 1);
          expect(sameBits(dequantize(raw.type.id, raw.bytes, n), g.readFloat32(expert, hf.entry(expert).shape))).toBe(true);
        } finally {
          g.close();
        }
      }
    } finally {
      hf.close();
    }
  });

  it.each(FIXTURES)("%s: F16 GGUF imports to the greedy output of the Hugging Face import (fp16 weights)", async (fx) => {
    const gg = path.join(dir, `${fx}-F16.gguf`);
    if (!fs.existsSync(gg)) exportGguf(path.join(MODELS, fx), gg, { type: "F16" });
    const fromGguf = path.join(dir, `${fx}-f16-from-gguf`);
    const fromHf = path.join(dir, `${fx}-f16-from-hf`);
    const result = await importModel(gg, fromGguf, quiet);
    await importModel(f16Copy(path.join(MODELS, fx), path.join(dir, `${fx}-f16-hf`)), fromHf, quiet);
    expect(result.manifest.source.dtypes).toEqual(["F16", "F32"]);
    for (const prompt of PROMPTS.slice(0, 2)) expect(await greedy(fromGguf, prompt, 24), prompt).toEqual(await greedy(fromHf, prompt, 24));
  });

  it.each(FIXTURES)("%s: Q8_0, Q4_K and Q6_K GGUFs import to the output of the same weights imported from Hugging Face", async (fx) => {
    for (const type of ["Q8_0", "Q4_K", "Q6_K"]) {
      const gg = path.join(dir, `${fx}-${type}.gguf`);
      if (!fs.existsSync(gg)) exportGguf(path.join(MODELS, fx), gg, { type: type as GgmlTypeName });
      const a = path.join(dir, `${fx}-${type}-from-gguf`);
      const b = path.join(dir, `${fx}-${type}-from-hf`);
      // f32 on both sides (a Q8_0 file's experts would otherwise stay int8 blocks by default).
      await importModel(gg, a, { ...quiet, experts: "f32" });
      await importModel(viewCopy(path.join(MODELS, fx), gg, path.join(dir, `${fx}-${type}-hf`)), b, quiet);
      expect(await greedy(a, PROMPTS[0]!, 16), `${fx} ${type}`).toEqual(await greedy(b, PROMPTS[0]!, 16));
      for (const p of [a, b, path.join(dir, `${fx}-${type}-hf`)]) fs.rmSync(p, { recursive: true, force: true });
    }
  });

  it("real Q4_K and Q6_K blocks (rows of 256): the import equals the same weights imported from Hugging Face", async () => {
    const hf = path.join(dir, "synth256");
    writeSyntheticCheckpoint(hf, { tokenizerFrom: path.join(MODELS, "tiny-mixtral"), vocabSize: 512, hiddenSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, numExperts: 4, topK: 2, expertFfn: 256, dtype: "F32", seed: 5 });
    for (const type of ["Q4_K", "Q6_K"] as const) {
      const gg = path.join(dir, `synth256-${type}.gguf`);
      const written = exportGguf(hf, gg, { type });
      expect(written.types.get("blk.0.ffn_down_exps.weight")).toBe(type);
      expect(written.types.get("blk.1.attn_q.weight")).toBe(type);
      const a = path.join(dir, `synth-${type}-gguf`);
      const b = path.join(dir, `synth-${type}-hf`);
      // Experts decoded to f32 on both sides (a file of Q4_K / Q6_K experts (or Q2_K, Q3_K, Q4_1,
      // Q5_0, Q5_1) keeps them as blocks by default: test/expert-formats.test.ts checks that import).
      const r = await importModel(gg, a, { ...quiet, experts: "f32" });
      expect(r.manifest.source.dtypes).toEqual(["F32", type]);
      await importModel(viewCopy(hf, gg, path.join(dir, `synth-${type}-copy`)), b, quiet);
      expect(await greedy(a, "The license", 16)).toEqual(await greedy(b, "The license", 16));
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Against llama.cpp (node-llama-cpp) on the same files

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

describe("same numbers as llama.cpp (node-llama-cpp) on the same GGUF", () => {
  let dir: string;
  let llama: Llama;
  let f16: string;
  let q8: string;
  let mixed: string;
  let llamaF16: LlamaModel;
  let validation: string;
  beforeAll(async () => {
    dir = tmpDir("moe-run-gguf-llama-");
    validation = fs.readFileSync(path.join(MODELS, "moe-tiny-en", "validation.txt"), "utf8");
    f16 = path.join(dir, "moe-tiny-en-F16.gguf");
    q8 = path.join(dir, "moe-tiny-en-Q8_0.gguf");
    mixed = path.join(dir, "moe-tiny-en-Q4_K_M-style.gguf");
    exportGguf(path.join(MODELS, "moe-tiny-en"), f16, { type: "F16" });
    exportGguf(path.join(MODELS, "moe-tiny-en"), q8, { type: "Q8_0" });
    // Q4_K_M's recipe (q4KMTypeFor); moe-tiny-en's rows (192, 96 values) are not whole k-blocks,
    // so they fall back to Q8_0 and Q5_0 as llama-quantize's do.
    exportGguf(path.join(MODELS, "moe-tiny-en"), mixed, { type: "Q4_K", typeFor: q4KMTypeFor(8) });
    llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    llamaF16 = await llama.loadModel({ modelPath: f16 });
  });
  afterAll(async () => {
    await llamaF16?.dispose();
    await llama?.dispose();
  });

  it("F16: 32 greedy tokens on 3 prompts are node-llama-cpp's, and the import's tokenizer and chat template are the HF import's", async () => {
    const fromGguf = path.join(dir, "f16");
    const fromHf = path.join(dir, "hf");
    await importModel(f16, fromGguf, quiet);
    await importModel(path.join(MODELS, "moe-tiny-en"), fromHf, quiet);
    const moe = await loadModel(fromGguf, { threads: 1 });
    const ref = await loadModel(fromHf, { threads: 1 });
    const ctx = await llamaF16.createContext({ contextSize: 256, threads: 1 });
    try {
      for (const text of TEXTS) expect(moe.tokenizer.encode(text), JSON.stringify(text)).toEqual(ref.tokenizer.encode(text));
      const chat = [{ role: "system", content: "Be brief." }, { role: "user", content: "Who spake unto Moses?" }];
      expect(moe.tokenizer.applyChatTemplate(chat)).toBe(ref.tokenizer.applyChatTemplate(chat));
      expect(moe.eosIds()).toContain(2);
      for (const prompt of PROMPTS) {
        const ids = moe.tokenize(prompt);
        expect(ids).toEqual(ref.tokenize(prompt));
        const mine: number[] = [];
        for await (const _ of moe.generate(prompt, { maxTokens: 32, stopAtEos: false, onToken: (id) => mine.push(id) }));
        const hfIds: number[] = [];
        for await (const _ of ref.generate(prompt, { maxTokens: 32, stopAtEos: false, onToken: (id) => hfIds.push(id) }));
        const seq = ctx.getSequence();
        const theirs: number[] = [];
        for await (const t of seq.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
          theirs.push(t);
          if (theirs.length >= 32) break;
        }
        seq.dispose();
        expect(mine, `moe-run vs HF import: ${prompt}`).toEqual(hfIds);
        expect(mine, `moe-run vs node-llama-cpp: ${prompt}`).toEqual(theirs);
      }
    } finally {
      await ctx.dispose();
      await moe.dispose();
      await ref.dispose();
    }
  });

  it("Q8_0: the experts stay Q8_0 blocks (int8) and 32 greedy tokens on 3 prompts are node-llama-cpp's", async () => {
    const out = path.join(dir, "q8");
    const imported = await importModel(q8, out, quiet);
    // Q8_0 blocks become int8 records as they are; like llama.cpp, the kernels then compute from
    // activations rounded to 8 bits per block of 32.
    expect(imported.manifest.precision.experts).toBe("int8");
    const moe = await loadModel(out, { threads: 1 });
    const model = await llama.loadModel({ modelPath: q8 });
    const ctx = await model.createContext({ contextSize: 256, threads: 1 });
    try {
      let identical = 0;
      for (const prompt of PROMPTS) {
        const ids = moe.tokenize(prompt);
        const mine: number[] = [];
        const logits: Float32Array[] = [];
        for await (const _ of moe.generate(prompt, { maxTokens: 32, stopAtEos: false, onToken: (id) => mine.push(id), onLogits: (l) => logits.push(l.slice()) }));
        const seq = ctx.getSequence();
        const theirs: number[] = [];
        for await (const t of seq.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
          theirs.push(t);
          if (theirs.length >= 32) break;
        }
        seq.dispose();
        const at = mine.findIndex((id, i) => id !== theirs[i]);
        if (at < 0) {
          identical++;
          continue;
        }
        const l = logits[at]!;
        // The two engines' choices are within 0.01 in moe-run's logits: a tie llama.cpp's 8-bit activations broke.
        expect(Math.max(...l) - l[theirs[at]!]!, `${prompt}: step ${at}`).toBeLessThan(0.01);
      }
      expect(identical).toBe(PROMPTS.length);
    } finally {
      await ctx.dispose();
      await model.dispose();
      await moe.dispose();
    }
  });

  it("Q4_K_M-style mix: each layer's expert blocks kept; perplexity within 1% of llama.cpp's and top-1 agreement >= 95% under teacher forcing", async () => {
    const out = path.join(dir, "mixed");
    const imported = await importModel(mixed, out, quiet);
    // moe-tiny-en's rows are not whole k-blocks: Q5_0 and Q8_0 stand in for Q4_K and Q6_K. Each
    // layer's tensors keep their blocks (store/recordEncodings.ts), so the kernels compute what
    // llama.cpp's do.
    expect(imported.manifest.precision.experts).toBe("q5_0");
    const q8Layers = imported.manifest.precision.expertLayers!.flatMap((e, l) => (e.down === "int8" ? [l] : []));
    expect(q8Layers).toEqual([0, 3, 6, 7]); // Q8_0 blocks are int8 records as they are
    expect(imported.manifest.precision.expertLayers!.every((e) => e.gate === "q5_0" && e.up === "q5_0" && (e.down === "q5_0" || e.down === "int8"))).toBe(true);
    const moe = await loadModel(out, { threads: 1 });
    const model = await llama.loadModel({ modelPath: mixed });
    const ctx = await model.createContext({ contextSize: 256, threads: 1 });
    try {
      const all = moe.tokenizer.encode(validation, { addSpecialTokens: false });
      const V = moe.dims.vocabSize;
      let nllMoe = 0;
      let nllLlama = 0;
      let agree = 0;
      let n = 0;
      for (let w = 0; w < 4; w++) {
        const ids = [1, ...all.slice(w * 128, (w + 1) * 128)];
        const logits = (await moe.logits(ids)).data;
        const seq = ctx.getSequence();
        const res = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }] as [number, { generateNext: { probabilities: true } }]));
        seq.dispose();
        for (let i = 0; i + 1 < ids.length; i++) {
          const row = logits.subarray(i * V, (i + 1) * V);
          let max = -Infinity;
          let arg = 0;
          for (let j = 0; j < V; j++) if (row[j]! > max) [max, arg] = [row[j]!, j];
          let sum = 0;
          for (let j = 0; j < V; j++) sum += Math.exp(row[j]! - max);
          nllMoe -= row[ids[i + 1]!]! - max - Math.log(sum);
          const probs = res[i]!.next.probabilities!;
          nllLlama -= Math.log(probs.get(ids[i + 1]!) ?? 1e-30);
          if (probs.keys().next().value === arg) agree++;
          n++;
        }
      }
      const ratio = Math.exp(nllMoe / n) / Math.exp(nllLlama / n);
      expect(Math.abs(ratio - 1)).toBeLessThan(0.01);
      expect(agree / n).toBeGreaterThanOrEqual(0.95);
    } finally {
      await ctx.dispose();
      await model.dispose();
      await moe.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Split files, laziness, bad input

/** Splits a GGUF file into `count` shards as gguf-split does (metadata in the first; split.* in all). */
function splitGguf(src: string, prefix: string, count: number): string[] {
  const g = GgufFile.open(src);
  try {
    const all = [...g.tensors.values()];
    const per = Math.ceil(all.length / count);
    const paths: string[] = [];
    for (let k = 0; k < count; k++) {
      const p = `${prefix}-${String(k + 1).padStart(5, "0")}-of-${String(count).padStart(5, "0")}.gguf`;
      const split: [string, GgufValue][] = [
        ["split.no", { type: 2, value: k }],
        ["split.count", { type: 2, value: count }],
        ["split.tensors.count", gguf.i32(all.length)],
      ];
      const meta = k === 0 ? [...[...g.metadata].filter(([key]) => key !== "general.alignment"), ...split] : split;
      const part = all.slice(k * per, (k + 1) * per).map((t) => ({ name: t.name, dims: t.dims, type: t.type.name as GgmlTypeName, data: () => [g.readBytes(t.name)] }));
      writeGguf(p, meta, part);
      paths.push(p);
    }
    return paths;
  } finally {
    g.close();
  }
}

describe("split GGUF files", () => {
  it("imports a 3-shard split model to the single file's output, and names a missing shard or a non-first shard", async () => {
    const dir = tmpDir("moe-run-gguf-split-");
    const single = path.join(dir, "q3.gguf");
    exportGguf(path.join(MODELS, "tiny-qwen3-moe"), single, { type: "Q8_0" });
    const shards = splitGguf(single, path.join(dir, "q3"), 3);
    const g = GgufFile.open(shards[0]!);
    const whole = GgufFile.open(single);
    expect(g.paths).toEqual(shards);
    expect([...g.tensors.keys()].sort()).toEqual([...whole.tensors.keys()].sort());
    expect(Buffer.from(g.readBytes("output.weight")).equals(Buffer.from(whole.readBytes("output.weight")))).toBe(true);
    g.close();
    whole.close();
    await importModel(single, path.join(dir, "a"), quiet);
    await importModel(shards[0]!, path.join(dir, "b"), quiet);
    expect(await greedy(path.join(dir, "b"), "The license", 16)).toEqual(await greedy(path.join(dir, "a"), "The license", 16));
    // The shards follow llama.cpp's split layout: it loads them and computes what it computes on the single file.
    const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    try {
      const firstTokens = async (file: string) => {
        const model = await llama.loadModel({ modelPath: file });
        const ctx = await model.createContext({ contextSize: 128, threads: 1 });
        const out: number[] = [];
        for await (const t of ctx.getSequence().evaluate(model.tokenize("The license"), { temperature: 0, yieldEogToken: true })) if (out.push(t) >= 8) break;
        await ctx.dispose();
        await model.dispose();
        return out;
      };
      expect(await firstTokens(shards[0]!)).toEqual(await firstTokens(single));
    } finally {
      await llama.dispose();
    }

    await expect(importModel(shards[1]!, path.join(dir, "c"), quiet)).rejects.toThrow(/is shard 2 of 3 of a split model; pass its first shard \(q3-00001-of-00003\.gguf\)/);
    fs.rmSync(shards[2]!);
    await expect(importModel(shards[0]!, path.join(dir, "d"), quiet)).rejects.toThrow(/shard 3 of 3 of q3-00001-of-00003\.gguf is missing/);
    expect(fs.existsSync(path.join(dir, "c")) || fs.existsSync(path.join(dir, "d"))).toBe(false);
  });
});

describe("the reader reads tensor data lazily", () => {
  it("opens a 4 GiB file (sparse) and reads two rows without reading the rest", () => {
    const dir = tmpDir("moe-run-gguf-big-");
    const file = path.join(dir, "big.gguf");
    // One F16 tensor [4096, 8]; then the header says [4096, 524288] (4 GiB) and the file is extended.
    writeGguf(file, [["general.architecture", gguf.str("llama")]], [{ name: "big", dims: [4096, 8], type: "F16", data: () => [new Uint8Array(4096 * 8 * 2)] }]);
    const bytes = fs.readFileSync(file);
    const at = bytes.indexOf(Buffer.from("big")) + 3 + 4 + 8; // name, n_dims, ne0 -> ne1
    bytes.writeBigUInt64LE(524288n, at);
    fs.writeFileSync(file, bytes);
    const g0 = (() => {
      try {
        return GgufFile.open(file);
      } catch (err) {
        return err as Error;
      }
    })();
    expect(g0).toBeInstanceOf(MoeRunError);
    expect((g0 as Error).message).toMatch(/tensor "big" data \(bytes \d+\.\.\d+\) runs past the end of the file/);
    const dataOffset = bytes.length - 4096 * 8 * 2;
    fs.truncateSync(file, dataOffset + 4096 * 524288 * 2);
    const rssBefore = process.memoryUsage().rss;
    const g = GgufFile.open(file);
    try {
      expect(g.tensor("big").byteLength).toBe(2 ** 32);
      const rows = g.readFloat32("big", 524286, 2);
      expect(rows.length).toBe(8192);
      expect(rows.every((v) => v === 0)).toBe(true);
    } finally {
      g.close();
    }
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * 1024 * 1024);
  });
});

describe("bad GGUF input: a one-line error naming the problem, nothing published", () => {
  let good: Buffer;
  let dir: string;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-bad-");
    const file = path.join(dir, "good.gguf");
    exportGguf(path.join(MODELS, "tiny-mixtral"), file, { type: "Q8_0" });
    good = fs.readFileSync(file);
  });

  /** Byte offset just after a tensor name in the tensor infos (the last occurrence of the string). */
  const infoAt = (b: Buffer, name: string) => b.lastIndexOf(Buffer.from(name)) + name.length;

  async function expectRefused(bytes: Buffer | ((dir: string) => string), pattern: RegExp): Promise<void> {
    const file = typeof bytes === "function" ? bytes(dir) : path.join(dir, `bad-${Math.random().toString(36).slice(2)}.gguf`);
    if (typeof bytes !== "function") fs.writeFileSync(file, bytes);
    const parent = path.join(dir, `out-${Math.random().toString(36).slice(2)}`);
    const target = path.join(parent, "nested", "model");
    const err = await importModel(file, target, quiet).then(
      () => undefined,
      (e: unknown) => e as Error
    );
    expect(err, String(pattern)).toBeInstanceOf(MoeRunError);
    expect(err!.message).toMatch(pattern);
    expect(err!.message).not.toContain("\n");
    expect(fs.existsSync(target)).toBe(false);
    expect(fs.existsSync(parent)).toBe(false); // the folders mkdir -p made are gone too
  }

  it("wrong magic", async () => {
    const b = Buffer.from(good);
    b.write("GGUX", 0);
    await expectRefused(b, /is not a GGUF file: wrong magic "GGUX" \(expected "GGUF"\)/);
    await expectRefused(Buffer.from("PK\u0003\u0004 a zip file, not a model"), /wrong magic "PK\\x03\\x04"/);
  });

  it("unsupported version, big-endian file", async () => {
    const b = Buffer.from(good);
    b.writeUInt32LE(4, 4);
    await expectRefused(b, /is GGUF version 4; moe-run reads versions 2 and 3/);
    b.writeUInt32BE(3, 4);
    await expectRefused(b, /is a big-endian GGUF file/);
  });

  it("truncated header, and tensor data past the end", async () => {
    await expectRefused(good.subarray(0, 200), / is truncated/);
    await expectRefused(good.subarray(0, good.length - 1000), /tensor "output\.weight" data \(bytes \d+\.\.\d+\) runs past the end of the file/);
  });

  it("unknown metadata value type, unknown tensor type id, rows that are not whole blocks", async () => {
    const b = Buffer.from(good);
    const key = b.indexOf(Buffer.from("general.name")) + "general.name".length;
    b.writeUInt32LE(13, key);
    await expectRefused(b, /metadata key "general\.name" has unknown value type 13/);
    const c = Buffer.from(good);
    const q = infoAt(c, "blk.0.attn_q.weight");
    c.writeUInt32LE(77, q + 4 + 2 * 8); // n_dims, 2 dims, then the type
    await expectRefused(c, /tensor "blk\.0\.attn_q\.weight" has unknown tensor type id 77/);
    const d = Buffer.from(good);
    d.writeBigUInt64LE(48n, infoAt(d, "blk.0.attn_q.weight") + 4); // ne0 64 -> 48: not whole Q8_0 blocks
    await expectRefused(d, /tensor "blk\.0\.attn_q\.weight" of type Q8_0 has rows of 48 values, not a multiple of its block size 32/);
  });

  it("misaligned tensor offset", async () => {
    const b = Buffer.from(good);
    const q = infoAt(b, "blk.0.attn_q.weight");
    const off = q + 4 + 2 * 8 + 4;
    b.writeBigUInt64LE(b.readBigUInt64LE(off) + 16n, off);
    await expectRefused(b, /tensor "blk\.0\.attn_q\.weight" has misaligned offset \d+ \(not a multiple of the alignment 32\)/);
  });

  it("missing metadata keys and tensors, unsupported architecture", async () => {
    const without = (key: string) => (d: string) => {
      const p = path.join(d, `without-${key}.gguf`);
      rewriteGgufMetadata(path.join(d, "good.gguf"), p, (m) => m.filter(([k]) => k !== key));
      return p;
    };
    await expectRefused(without("llama.attention.layer_norm_rms_epsilon"), /lacks the metadata key "llama\.attention\.layer_norm_rms_epsilon"/);
    await expectRefused(without("tokenizer.ggml.tokens"), /lacks the metadata key "tokenizer\.ggml\.tokens"/);
    await expectRefused(without("llama.expert_count"), /is a dense llama model \(no llama\.expert_count\)/);
    await expectRefused((d) => {
      const p = path.join(d, "gemma.gguf");
      rewriteGgufMetadata(path.join(d, "good.gguf"), p, (m) => m.map(([k, v]) => [k, k === "general.architecture" ? gguf.str("gemma3") : v] as [string, GgufValue]));
      return p;
    }, /GGUF architecture "gemma3" is not supported/);
    const b = Buffer.from(good);
    const name = b.lastIndexOf(Buffer.from("blk.1.ffn_up_exps.weight"));
    b.write("blk.1.ffn_up_exps.weighX", name); // that tensor is now missing
    await expectRefused(b, /lacks the tensor "blk\.1\.ffn_up_exps\.weight"/);
  });

  it("the CLI prints the one-line error and exits non-zero", () => {
    const b = Buffer.from(good);
    b.write("GGUX", 0);
    const file = path.join(dir, "cli-bad.gguf");
    fs.writeFileSync(file, b);
    const out = path.join(dir, "cli-out");
    const r = runCli(["import", file, out, "--no-progress"]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/wrong magic "GGUX"/);
    expect(fs.existsSync(out)).toBe(false);
    const missing = runCli(["import", path.join(dir, "no-such.gguf"), out, "--no-progress"]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/GGUF file is missing: expected .*no-such\.gguf/);
  });
});

// Keeps the GGML_TYPE table of the writer and the codec table in step.
it("the writer's type ids are ggml's", () => {
  for (const [name, id] of Object.entries(GGML_TYPE)) expect(GgmlType[name as GgmlTypeName]).toBe(id);
});
