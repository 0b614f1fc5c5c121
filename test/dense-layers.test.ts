/**
 * The native dense layers (attention, router, shared expert, LM head in native code, weights at
 * the experts' width, KV cache appended in place) against onnxruntime's graphs on the same
 * inputs, for every bundled architecture: llama.cpp's test-backend-ops idea applied to the dense
 * half of the model. Also the per-step time breakdown and the native binding's input checks.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { importModel, loadModel, type LanguageModel } from "../src/index.js";
import { KvCache } from "../src/evaluator/KvCache.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import { ROOT, copyFixture, importFixture, greedyRun } from "./helpers.js";

const addon = loadNativeAddon().addon;
const FIXTURES = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe", "moe-tiny-en", "tiny-granitemoe", "tiny-phimoe", "tiny-gpt-oss", "tiny-glm4-moe", "tiny-deepseek-v2", "tiny-qwen3-moe-dense"];
const PROMPT = "The quick brown fox jumps over the lazy dog, and then";

describe.skipIf(!addon)("native dense layers", () => {
  for (const name of FIXTURES) {
    describe(name, () => {
      let dir: string;
      let native: LanguageModel;
      let onnx: LanguageModel;
      beforeAll(async () => {
        // gpt-oss imports MXFP4 experts (with int8 dense weights) by default: compare at f32.
        dir = await importFixture(name, name === "tiny-gpt-oss" ? { experts: "f32" } : {});
        // The fp32 cache: compared with onnxruntime's fp32 graphs at 1e-4 (the f16 default: below).
        native = await loadModel(dir, { threads: 1, dense: "native", kvCache: "f32", log: () => {} });
        onnx = await loadModel(dir, { threads: 1, dense: "onnx", log: () => {} });
      }, 120_000);
      afterAll(async () => {
        await native?.dispose();
        await onnx?.dispose();
      });

      it("uses the dense layers asked for", () => {
        expect(native.engineInfo().dense).toBe("native");
        expect(onnx.engineInfo().dense).toBe("onnx");
      });

      it("gives the logits onnxruntime gives at every prompt position (fp32, within 1e-4)", async () => {
        const ids = native.tokenize(PROMPT);
        const a = (await native.logits(ids)).data;
        const b = (await onnx.logits(ids)).data;
        expect(a.length).toBe(b.length);
        let worst = 0;
        for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
        expect(worst).toBeLessThan(1e-4);
      });

      it("decodes the same greedy tokens through KV-cache growth (past 64 and 128 positions)", async () => {
        const run = async (m: LanguageModel) => {
          const ids: number[] = [];
          for await (const _ of m.generate(PROMPT, { maxTokens: 140, stopAtEos: false, onToken: (id) => ids.push(id) })) void _;
          return ids;
        };
        const a = await run(native);
        expect(a.length).toBe(140);
        expect(a).toEqual(await run(onnx));
      }, 120_000);

      it("continues after the KV cache is cut back to a common prefix as an empty cache would", async () => {
        const greedy = { maxTokens: 6, stopAtEos: false };
        const base = native.tokenize(PROMPT);
        const forked = [...base.slice(0, 5), ...native.tokenizer.encode(" a different ending", { addSpecialTokens: false })];
        for (const m of [native, onnx]) {
          const take = async (seq: ReturnType<LanguageModel["openSequence"]>, ids: number[]) => {
            const out: number[] = [];
            const it = seq.generate(ids, { ...greedy, onToken: (id) => out.push(id) });
            let r = await it.next();
            while (!r.done) r = await it.next();
            return { out, reused: r.value.reusedTokens };
          };
          const seq = m.openSequence();
          await take(seq, base);
          const cut = await take(seq, forked);
          expect(cut.reused).toBe(5);
          const fresh = m.openSequence();
          expect(cut.out).toEqual((await take(fresh, forked)).out);
          await seq.dispose();
          await fresh.dispose();
        }
      }, 120_000);
    });
  }

  it("gives onnxruntime's logits at every kernel level this CPU runs (attention and matmuls per level)", async () => {
    const dir = await importFixture("tiny-qwen3-moe");
    const ids = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 200);
    const onnx = await loadModel(dir, { threads: 1, dense: "onnx", log: () => {} });
    const want = (await onnx.logits(ids)).data;
    await onnx.dispose();
    const script = `import { loadModel } from ${JSON.stringify(path.join(ROOT, "dist", "index.js"))};
const m = await loadModel(${JSON.stringify(dir)}, { threads: 2, dense: "native", kvCache: "f32", log: () => {} });
const l = (await m.logits(${JSON.stringify(ids)})).data;
await m.dispose();
process.stdout.write(JSON.stringify(Array.from(l)));`;
    for (const isa of addon!.kernelIsas()) {
      // loadModel's worker must start whatever Node options the app runs with (these two are
      // refused by worker threads when passed on).
      const r = spawnSync(process.execPath, ["--expose-gc", "--input-type=module", "-e", script], { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", maxBuffer: 1 << 26 });
      expect(r.status, `${isa}: ${r.stderr}`).toBe(0);
      const got = JSON.parse(r.stdout) as number[];
      expect(got.length).toBe(want.length);
      let worst = 0;
      for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      expect(worst, isa).toBeLessThan(1e-4);
    }
  }, 120_000);

  it("keeps greedy output of f16 weights (experts and dense) equal to f32 on the trained model", async () => {
    const f32 = await importFixture("moe-tiny-en");
    const f16 = await importFixture("moe-tiny-en", { experts: "f16" });
    const a = await greedyRun(f32, "The king said that", 48);
    const b = await greedyRun(f16, "The king said that", 48);
    expect(b.ids).toEqual(a.ids);
  }, 300_000);

  it("reports where decode steps spend their time", async () => {
    const dir = await importFixture("tiny-mixtral");
    const model = await loadModel(dir, { threads: 1, log: () => {} });
    try {
      const it = model.generate(PROMPT, { maxTokens: 20, stopAtEos: false });
      let r = await it.next();
      while (!r.done) r = await it.next();
      const s = r.value;
      expect(s.prefillBreakdown.forwards).toBe(1);
      expect(s.prefillBreakdown.tokens).toBe(s.promptTokens);
      // Every generated token after the first took one forward of one token.
      expect(s.decodeBreakdown.forwards).toBe(s.generatedTokens - 1);
      expect(s.decodeBreakdown.tokens).toBe(s.generatedTokens - 1);
      const parts = Object.values(s.decodeBreakdown.seconds);
      for (const p of parts) expect(p).toBeGreaterThanOrEqual(0);
      expect(s.decodeBreakdown.seconds.dense).toBeGreaterThan(0);
      expect(s.decodeBreakdown.seconds.experts).toBeGreaterThan(0);
      // The parts are measured inside the decode time, so they cannot add up to more.
      expect(parts.reduce((x, y) => x + y, 0)).toBeLessThanOrEqual(s.decodeSeconds + 1e-6);
      // 64 positions are reserved at first; the prompt and 20 tokens fit, so nothing was copied.
      expect(s.decodeBreakdown.kvCopiedBytes).toBe(0);
    } finally {
      await model.dispose();
    }
  }, 120_000);

  it("refuses a weight blob that does not match the layer's shapes, and token ids outside the vocabulary", () => {
    const a = addon!;
    // [H, Hq, Hkv, hd, E, Fs, eps, qkNorm, norm, attnScale, rotaryDim, window, 5 x MLA, kvF16]; 30 sections (dense_layer.h)
    const spec = Float64Array.from([64, 4, 2, 16, 4, 0, 1e-5, 0, 0, 0.25, 16, 0, 0, 0, 0, 0, 0, 0]);
    const sections = new Float64Array(30 * 3).fill(-1);
    const f = (n: number) => new Float32Array(n);
    expect(() => a.denseLayer(spec, new Uint8Array(16), sections, f(64), 1, 0, f(16), f(16), f(2 * 16 * 4), f(2 * 16 * 4), 4, f(64), f(64), f(4), null, 1)).toThrow(
      /section 0 is missing/
    );
    sections.set([0, 999_999, 0], 0);
    expect(() => a.denseLayer(spec, new Uint8Array(16), sections, f(64), 1, 0, f(16), f(16), f(2 * 16 * 4), f(2 * 16 * 4), 4, f(64), f(64), f(4), null, 1)).toThrow(
      /does not match its shape or lies outside the blob/
    );
    expect(() => a.gatherRows(0, new Uint8Array(4 * 8 * 4), 4, 8, Int32Array.from([1, 4]), f(16))).toThrow(/token id 4 outside the vocabulary/);
    expect(() => a.denseLayer(spec.subarray(0, 17), new Uint8Array(16), sections, f(64), 1, 0, f(16), f(16), f(128), f(128), 4, f(64), f(64), f(4), null, 1)).toThrow(
      /spec or section table has the wrong length/
    );
    // A half cache of 4 positions is [2, 4, 16] halves; one short of that is refused, not overrun.
    const half = Float64Array.from(spec);
    half[17] = 1;
    const blobBytes = 4096;
    const ok = new Float64Array(30 * 3).fill(-1);
    expect(() => a.denseLayer(half, new Uint8Array(blobBytes), ok, f(64), 1, 0, f(16), f(16), new Uint16Array(2 * 4 * 16 - 1), new Uint16Array(2 * 4 * 16), 4, f(64), f(64), f(4), null, 1)).toThrow(
      /section 0 is missing|buffer sizes do not match/
    );
    const mla = Float64Array.from([64, 4, 1, 24, 4, 0, 1e-5, 0, 0, 0.25, 8, 0, 0, 16, 16, 8, 16, 1]);
    expect(() => a.denseLayer(mla, new Uint8Array(16), sections, f(64), 1, 0, f(24), f(24), f(4 * 24), f(0), 4, f(64), f(64), f(4), null, 1)).toThrow(/MLA latent cache is fp32 only/);
  });

  describe("f16 KV cache", () => {
    // Halves of every cached key and value: logits move by rounding (2^-11 relative per value), and
    // only by that; a latent (MLA) cache is kept fp32, so there nothing moves.
    for (const name of FIXTURES) {
      it(`${name}: logits within half-precision rounding of the fp32 cache's at every position`, async () => {
        const dir = await importFixture(name, name === "tiny-gpt-oss" ? { experts: "f32" } : {});
        const exact = await loadModel(dir, { threads: 1, dense: "native", kvCache: "f32", log: () => {} });
        const half = await loadModel(dir, { threads: 1, dense: "native", log: () => {} }); // the default
        try {
          const mla = name.startsWith("tiny-deepseek-v2");
          expect(half.engineInfo().kvCache).toBe(mla ? "f32" : "f16");
          expect(exact.engineInfo().kvCache).toBe("f32");
          const ids = exact.tokenize(`${PROMPT} ${PROMPT} ${PROMPT}`);
          const a = (await exact.logits(ids)).data;
          const b = (await half.logits(ids)).data;
          let worst = 0;
          let scale = 0;
          for (let i = 0; i < a.length; i++) {
            worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
            scale = Math.max(scale, Math.abs(a[i]!));
          }
          if (mla) expect(worst).toBe(0);
          else {
            expect(worst).toBeGreaterThan(0);
            expect(worst).toBeLessThan(5e-3 * scale);
          }
        } finally {
          await exact.dispose();
          await half.dispose();
        }
      }, 120_000);
    }

    it("keeps greedy output of the trained model equal to the fp32 cache's", async () => {
      const dir = await importFixture("moe-tiny-en");
      const a = await greedyRun(dir, "The king said that", 64, { kvCache: "f32" });
      const b = await greedyRun(dir, "The king said that", 64);
      expect(b.ids).toEqual(a.ids);
    }, 300_000);

    it("reads halves at every kernel level this CPU runs, within their rounding of the exact logits", async () => {
      // Levels round the same fp32 keys to halves, but their keys differ in the last fp32 bits, so
      // a value near a rounding boundary may land on the neighbouring half: compare each level with
      // the exact (onnx, fp32 cache) logits at half-precision tolerance, not with each other.
      const dir = await importFixture("tiny-qwen3-moe");
      const ids = Array.from({ length: 70 }, (_, i) => (i * 37 + 11) % 200);
      const onnx = await loadModel(dir, { threads: 1, dense: "onnx", log: () => {} });
      const want = (await onnx.logits(ids)).data;
      await onnx.dispose();
      const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      const script = `import { loadModel } from ${JSON.stringify(path.join(ROOT, "dist", "index.js"))};
const m = await loadModel(${JSON.stringify(dir)}, { threads: 2, dense: "native", kvCache: "f16", log: () => {} });
const l = (await m.logits(${JSON.stringify(ids)})).data;
await m.dispose();
process.stdout.write(JSON.stringify(Array.from(l)));`;
      for (const isa of addon!.kernelIsas()) {
        const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", maxBuffer: 1 << 26 });
        expect(r.status, `${isa}: ${r.stderr}`).toBe(0);
        const got = JSON.parse(r.stdout) as number[];
        expect(got.length).toBe(want.length);
        let worst = 0;
        for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
        expect(worst, isa).toBeGreaterThan(0);
        expect(worst, isa).toBeLessThan(5e-3 * scale);
      }
    }, 120_000);

    it("grows past its capacity by copying halves, continuing as a cache filled at once would", async () => {
      const dir = await importFixture("tiny-mixtral");
      const model = await loadModel(dir, { threads: 1, kvCache: "f16", log: () => {} });
      try {
        const take = async (seq: ReturnType<LanguageModel["openSequence"]>, ids: number[]) => {
          const out: number[] = [];
          const it = seq.generate(ids, { maxTokens: 8, stopAtEos: false, onToken: (id) => out.push(id) });
          let r = await it.next();
          while (!r.done) r = await it.next();
          return { out, stats: r.value };
        };
        const first = model.tokenize(PROMPT);
        const longer = [...first, ...Array.from({ length: 150 }, (_, i) => (i * 13 + 5) % 400)];
        const grown = model.openSequence();
        await take(grown, first); // capacity 64: the prompt and 8 tokens
        const second = await take(grown, longer); // past 64 positions: the halves are copied into a larger cache
        expect(second.stats.reusedTokens).toBe(first.length);
        const fresh = model.openSequence();
        expect(second.out).toEqual((await take(fresh, longer)).out);
        await grown.dispose();
        await fresh.dispose();
      } finally {
        await model.dispose();
      }
    }, 120_000);

    it("keeps every layer's keys and values in one native block, and growing it keeps what was cached", () => {
      // 3 layers, 2 KV heads, keys 4 wide, values 3 wide (KvCache allows the two widths to differ).
      const kv = new KvCache(3, 2, 4, 3, "f16");
      const blocks: Uint8Array[] = [];
      const allocate = (bytes: number) => {
        const b = addon!.allocRange(bytes).subarray(0, bytes);
        blocks.push(b);
        return b;
      };
      kv.reserve(10, allocate);
      expect(kv.capacity).toBe(64); // at least 64 positions at first
      expect(blocks).toHaveLength(1);
      expect(blocks[0]!.byteLength).toBe(3 * 2 * 64 * (4 + 3) * 2);
      const views = [...kv.nativeKeys, ...kv.nativeValues];
      for (const v of views) expect(v.buffer).toBe(blocks[0]!.buffer);
      // The views tile the block without overlapping: writing each one's index shows up once.
      views.forEach((v, i) => v.fill(i + 1));
      const seen = new Map<number, number>();
      for (const x of new Uint16Array(blocks[0]!.buffer, blocks[0]!.byteOffset, blocks[0]!.byteLength / 2)) seen.set(x, (seen.get(x) ?? 0) + 1);
      views.forEach((v, i) => expect(seen.get(i + 1)).toBe(v.length));
      // 20 positions cached, then grown past 64: the cached rows of every head move to the new stride.
      kv.length = 20;
      const key = (l: number, g: number, p: number, i: number) => (l * 1000 + g * 100 + p * 4 + i) % 65536;
      for (let l = 0; l < 3; l++) for (let g = 0; g < 2; g++) for (let p = 0; p < 20; p++) for (let i = 0; i < 4; i++) kv.nativeKeys[l]![(g * 64 + p) * 4 + i] = key(l, g, p, i);
      kv.reserve(100, allocate);
      expect(kv.capacity).toBe(128);
      expect(blocks).toHaveLength(2);
      expect(kv.nativeKeys[2]!.buffer).toBe(blocks[1]!.buffer);
      for (let l = 0; l < 3; l++) for (let g = 0; g < 2; g++) for (let p = 0; p < 20; p++) for (let i = 0; i < 4; i++) expect(kv.nativeKeys[l]![(g * 128 + p) * 4 + i]).toBe(key(l, g, p, i));
      expect(kv.copiedBytes).toBe(3 * 2 * 20 * (4 + 3) * 2);
    });

    it("refuses a KV cache precision it does not have", async () => {
      const dir = await importFixture("tiny-mixtral");
      await expect(loadModel(dir, { kvCache: "f8" as never, log: () => {} })).rejects.toThrow(/kvCache must be "f32" or "f16", got "f8"/);
    });

    it("plans the default context with the precision the cache is kept in (fp32 in the onnx graphs)", async () => {
      // tiny-mixtral allowed 131072 positions: its KV cache (2 layers x 2 heads x (16 + 16), past and
      // present) takes 512 bytes a position in halves, 1024 in fp32; with 256 MiB available the
      // default gives it an eighth, 32 MiB.
      const src = copyFixture("tiny-mixtral");
      const config = JSON.parse(fs.readFileSync(path.join(src, "config.json"), "utf8"));
      fs.writeFileSync(path.join(src, "config.json"), JSON.stringify({ ...config, max_position_embeddings: 131072 }));
      const dir = path.join(path.dirname(src), "tiny-mixtral-long");
      await importModel(src, dir, { progress: false, log: () => {} });
      const MiB = 2 ** 20;
      const memoryLimits = { limitBytes: 256 * MiB, source: "cgroup-v1" as const, availableBytes: 256 * MiB, memTotalBytes: 256 * MiB, memAvailableBytes: 256 * MiB };
      const logs: string[] = [];
      const half = await loadModel(dir, { threads: 1, dense: "native", memoryLimits, log: (l) => logs.push(l) });
      const full = await loadModel(dir, { threads: 1, dense: "onnx", memoryLimits, log: (l) => logs.push(l) });
      try {
        expect(half.engineInfo().kvCache).toBe("f16");
        expect(full.engineInfo().kvCache).toBe("f32");
        expect(half.contextSize).toBe(65536);
        expect(full.contextSize).toBe(32768);
        expect(logs.filter((l) => /context size \d+ \(the model allows 131072/.test(l))).toHaveLength(2);
      } finally {
        await half.dispose();
        await full.dispose();
      }
    }, 120_000);
  });

  it("holds the dense weights of an int8 model at int8 (about a quarter of the fp32 graphs)", async () => {
    const dir = await importFixture("moe-tiny-en", { experts: "int8" });
    const model = await loadModel(dir, { threads: 1, log: () => {} });
    try {
      const dense = { bytesPerToken: model.engineInfo().denseBytesPerToken };
      const graphBytes = fs
        .readdirSync(path.join(dir, "graphs"))
        .filter((f) => /^(layer_\d+|head)\.onnx\.data$/.test(f))
        .reduce((s, f) => s + fs.statSync(path.join(dir, "graphs", f)).size, 0);
      expect(dense.bytesPerToken).toBeLessThan(0.4 * graphBytes);
      expect(dense.bytesPerToken).toBeGreaterThan(0.2 * graphBytes);
    } finally {
      await model.dispose();
    }
  }, 120_000);
});

