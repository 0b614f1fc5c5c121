/**
 * The decode step run whole in native code (evaluator/FusedDecode.ts, native-bindings/src/
 * decode_step.cc) against the per-layer loop it replaces: its router gives routing.ts's bits on
 * random logits (ties, large and tiny values included), and on real models every decode step's
 * logits, the greedy ids and the cache's statistics are the loop's exactly, at 1 and 2 threads,
 * including steps that go on in the loop from a layer whose expert was not resident yet.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { routeTokens } from "../src/evaluator/routing.js";
import { loadNativeAddon, type DecodePlanHandle } from "../src/kernels/nativeAddon.js";
import { loadModel } from "../src/index.js";
import { importModel } from "../src/importer/importModel.js";
import * as path from "node:path";
import { MODELS, importFixture, runCli, tmpDir } from "./helpers.js";

const addon = loadNativeAddon().addon;
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe.skipIf(!addon)("native softmax router", () => {
  it("picks and weighs as routeTokens does, to the bit", () => {
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    let cases = 0;
    for (const [E, K] of [[8, 2], [8, 1], [60, 4], [64, 8], [128, 8], [3, 3]] as const) {
      for (const norm of [true, false]) {
        for (const spread of [0.01, 1, 8, 60, 400]) {
          const T = 64;
          const logits = new Float32Array(T * E);
          for (let i = 0; i < logits.length; i++) logits[i] = (rnd() - 0.5) * spread;
          // Ties (the lower id wins) and repeated maxima in some tokens.
          for (let t = 0; t < T; t += 4) logits[t * E + 1] = logits[t * E + 2] = logits[t * E]!;
          for (let t = 1; t < T; t += 8) logits.fill(0.25, t * E, (t + 1) * E);
          const ref = routeTokens(logits, T, E, K, { kind: "softmax", normTopkProb: norm, jitterEps: 0 });
          const experts = new Int32Array(T * K);
          const weights = new Float32Array(T * K);
          const probs = new Float32Array(T * E);
          addon!.routeSoftmax(logits, T, E, K, norm ? 1 : 0, experts, weights, probs);
          const where = `E ${E} K ${K} norm ${norm} spread ${spread}`;
          expect(Array.from(experts), where).toEqual(Array.from(ref.experts));
          expect(bits(weights), where).toEqual(bits(ref.weights));
          expect(bits(probs), where).toEqual(bits(ref.probs));
          cases++;
        }
      }
    }
    expect(cases).toBe(60);
  });

  it("refuses arguments that do not fit, with the call's name", () => {
    const f = new Float32Array(8);
    expect(() => addon!.routeSoftmax(f, 1, 8, 9, 1, new Int32Array(9), new Float32Array(9), new Float32Array(8))).toThrow(/routeSoftmax: sizes do not match/);
    const none = {} as unknown as DecodePlanHandle;
    const out = [new Int32Array(2), new Float32Array(2), new Float32Array(8), new Float64Array(3), f, f, f, f] as const;
    expect(() => addon!.decodeStep(none, [], [], 1, 0, f, f, f, 1, ...out)).toThrow(/decodeStep: the first argument must be a decodePlan/);
    expect(() => addon!.decodePlan([], [], [], [], new Float64Array(0), 8, undefined, 2, 1, 1)).toThrow(/decodePlan: specs, blobs and sections/);
  });
});

/** Greedy generation with every step's logits, decode breakdown and cache statistics. */
async function run(dir: string, threads: number, fusedDecode: boolean, kvCache: "f16" | "f32" = "f16") {
  const model = await loadModel(dir, { threads, fusedDecode, kvCache, log: () => {} });
  try {
    const ids: number[] = [];
    const logits: number[][] = [];
    let fusedTokens = 0;
    let decodeTokens = 0;
    // A long prompt: the fused step starts once every expert has been used (and so is resident).
    const prompt = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software. ".repeat(3);
    for await (const _ of model.generate(prompt, {
      maxTokens: 32,
      stopAtEos: false,
      onToken: (id) => ids.push(id),
      onLogits: (l) => logits.push(bits(l)),
      onStats: (s) => {
        fusedTokens = s.decodeBreakdown.fusedTokens;
        decodeTokens = s.decodeBreakdown.tokens;
      },
    }))
      void _;
    const c = await model.cacheStats();
    return { ids, logits, fusedTokens, decodeTokens, eligible: model.engineInfo().fusedDecode, cache: { hits: c.cache.hits, misses: c.cache.misses, layers: c.layers.map((l) => [l.hits, l.misses]) } };
  } finally {
    await model.dispose();
  }
}

// The bundled models whose shape the fused step takes (the softmax router, no latent attention);
// the others keep the loop (checked below).
// gpt-oss brings the router's bias, attention sinks, sliding windows, expert biases and its
// clamped SwiGLU along; Qwen2-MoE its gated shared expert; Granite its residual scale; the
// Qwen3-MoE variant its dense (unrouted) layers.
const FUSED = ["moe-tiny-en", "tiny-mixtral", "tiny-qwen3-moe", "tiny-olmoe", "tiny-gpt-oss", "tiny-qwen2-moe", "tiny-granitemoe", "tiny-qwen3-moe-dense"];
// Phi-MoE's sparsemixer, DeepSeek's latent attention and grouped router, GLM's grouped router.
const LOOP = ["tiny-phimoe", "tiny-deepseek-v2-lite", "tiny-glm4-moe"];

describe.skipIf(!addon)("fused decode step", () => {
  describe.each(FUSED)("%s", (fixture) => {
    let dir: string;
    beforeAll(async () => {
      dir = await importFixture(fixture);
    });
    it.each([1, 2])("gives the layer loop's logits to the bit at %i thread(s), with the same cache statistics", async (threads) => {
      const loop = await run(dir, threads, false);
      const fused = await run(dir, threads, true);
      expect(loop.eligible).toBe(false);
      expect(loop.fusedTokens).toBe(0);
      expect(fused.eligible).toBe(true);
      // Steps fuse whole once their layers' picks are resident: in most of these short runs all
      // are; moe-tiny-en (32 experts a layer, trained) still meets experts it has not used, and
      // those steps go on in the loop from the layer that needs one (the continuation is tested).
      expect(fused.fusedTokens).toBeGreaterThanOrEqual(fused.decodeTokens / 2);
      if (fixture === "moe-tiny-en") expect(fused.fusedTokens).toBeLessThan(fused.decodeTokens);
      else expect(fused.fusedTokens).toBe(fused.decodeTokens);
      expect(fused.ids).toEqual(loop.ids);
      expect(fused.logits.length).toBe(loop.logits.length);
      for (let i = 0; i < loop.logits.length; i++) expect(fused.logits[i], `step ${i}`).toEqual(loop.logits[i]);
      expect(fused.cache).toEqual(loop.cache);
    });
  });

  it("runs int8 and f16 experts as the loop does", async () => {
    const hf = path.join(MODELS, "tiny-mixtral");
    for (const enc of ["int8", "f16"] as const) {
      const dir = path.join(tmpDir(), enc);
      await importModel(hf, dir, { experts: enc, progress: false });
      const loop = await run(dir, 2, false);
      const fused = await run(dir, 2, true);
      expect(fused.fusedTokens, enc).toBe(fused.decodeTokens);
      expect(fused.logits, enc).toEqual(loop.logits);
    }
  });

  it("holds with an fp32 KV cache", async () => {
    const dir = await importFixture("tiny-qwen3-moe");
    const loop = await run(dir, 1, false, "f32");
    const fused = await run(dir, 1, true, "f32");
    expect(fused.fusedTokens).toBe(fused.decodeTokens);
    expect(fused.logits).toEqual(loop.logits);
  });

  it.each(LOOP)("keeps the layer loop for %s (its shape needs it)", async (fixture) => {
    const r = await run(await importFixture(fixture), 1, true);
    expect(r.eligible).toBe(false);
    expect(r.fusedTokens).toBe(0);
  });

  it("stays out of the way of eviction: at a budget that holds only some experts, every step is the loop's", async () => {
    const dir = await importFixture("tiny-mixtral");
    const model = await loadModel(dir, { threads: 1, deviceMem: { percent: 50 }, log: () => {} });
    try {
      let fused = -1;
      for await (const _ of model.generate("The license", { maxTokens: 16, stopAtEos: false, onStats: (s) => (fused = s.decodeBreakdown.fusedTokens) })) void _;
      expect(model.engineInfo().fusedDecode).toBe(true);
      expect(fused).toBe(0);
    } finally {
      await model.dispose();
    }
  });

  it("the CLI prints the same text with --no-fused-decode, and --stats says how many tokens fused", async () => {
    const dir = await importFixture("tiny-mixtral");
    const fused = runCli(["run", dir, "--prompt", "The license", "-n", "24", "--stats"]);
    const loop = runCli(["run", dir, "--prompt", "The license", "-n", "24", "--stats", "--no-fused-decode"]);
    expect(fused.status, fused.stderr).toBe(0);
    expect(loop.status, loop.stderr).toBe(0);
    expect(fused.stdout).toBe(loop.stdout);
    expect(fused.stdout.length).toBeGreaterThan(0);
    expect(fused.stderr).toMatch(/decode per forward \(ms\):.*; \d+ of \d+ tokens in one native call each/);
    expect(loop.stderr).not.toMatch(/in one native call/);
  });
});
