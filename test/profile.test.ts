/**
 * `moe-run profile` and `moe-run plan` on a bundled tiny model: the recorded trace is exactly
 * what the runtime routed (checked against model.onRouting), both trace formats agree, and plan
 * predicts a positive decode speed within its physical bound.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadModelOnThisThread } from "../src/index.js";
import { parsePrompts, profilePrompts, PromptsInvalidError } from "../src/profiling/profileModel.js";
import { readTrace } from "../src/profiling/readTrace.js";
import { decodeHitRates } from "../src/profiling/plan.js";
import { ExpertCache } from "../src/cache/ExpertCache.js";
import { BUNDLED_TRACE, importFixture, runCli, tmpDir } from "./helpers.js";
import { ensureBuilt } from "./profilingHelpers.js";

const PROMPTS = ["Permission is hereby granted, free of charge,", "The license", "Once upon a time there was"];

let dir: string;
let work: string;

beforeAll(async () => {
  ensureBuilt();
  dir = await importFixture("tiny-qwen3-moe");
  work = tmpDir("moe-run-profile-");
  fs.writeFileSync(path.join(work, "prompts.txt"), PROMPTS.join("\n") + "\n\n");
  fs.writeFileSync(path.join(work, "prompts.jsonl"), PROMPTS.map((prompt) => JSON.stringify({ prompt })).join("\n") + "\n");
}, 300_000);

describe("profilePrompts", () => {
  it("records one record per token and layer whose experts match model.onRouting", async () => {
    const model = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
    try {
      const seen: { layer: number; experts: number[] }[] = [];
      const off = model.onRouting((layer, r) => {
        for (let t = 0; t < r.tokens; t++) seen.push({ layer, experts: Array.from(r.experts.subarray(t * r.topK, (t + 1) * r.topK)) });
      });
      const result = await profilePrompts(model, PROMPTS, { maxTokens: 10, gateInputs: true, stopAtEos: false });
      off();
      const { numLayers: L, numExperts: E, topK: K, hiddenSize: H } = model.dims;
      // Each prompt's last generated token is never fed back: prompt + generated - 1 forwards.
      expect(result.generatedTokens).toBe(10 * PROMPTS.length);
      expect(result.forwardedTokens).toBe(result.promptTokens + result.generatedTokens - PROMPTS.length);
      expect(result.trace.records.length).toBe(result.forwardedTokens * L);
      expect(seen.length).toBe(result.trace.records.length);
      expect(result.trace.meta).toMatchObject({ numLayers: L, numExperts: E, topK: K, model: "tiny-qwen3-moe", expertBytes: model.manifest.experts.recordBytes });
      // The observer sees (token, layer) per forward pass in layer order; records are sorted by
      // (seq, token, layer): compare as multisets per layer in token order.
      for (let l = 0; l < L; l++) {
        const observed = seen.filter((s) => s.layer === l).map((s) => s.experts);
        const recorded = result.trace.records.filter((r) => r.layer === l).map((r) => r.experts);
        expect(recorded).toEqual(observed);
      }
      for (const r of result.trace.records) {
        expect(r.experts.length).toBe(K);
        expect(r.probs!.length).toBe(E);
        expect(r.gate!.length).toBe(H);
        expect(r.probs![r.experts[0]!]).toBeCloseTo(Math.max(...r.probs!), 6);
      }
      const seqs = [...new Set(result.trace.records.map((r) => r.seq))];
      expect(seqs).toEqual([0, 1, 2]);
    } finally {
      await model.dispose();
    }
  });

  it("plan's decode-only hit rate equals a direct replay that counts decode accesses only", async () => {
    const model = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
    try {
      const r = await profilePrompts(model, PROMPTS, { maxTokens: 12, stopAtEos: false, probs: false });
      expect(r.promptTokensPerSeq.reduce((a, b) => a + b, 0)).toBe(r.promptTokens);
      for (const policy of ["lru", "lfu", "layer-lru"] as const) {
        const viaPlan = decodeHitRates(r.trace, r.promptTokensPerSeq, [5, 12, 20], policy)!;
        for (const capacity of [5, 12, 20]) {
          const cache = new ExpertCache<true>({ capacityBytes: capacity, policy, policyOptions: { numLayers: 2 }, replay: true, layerStats: false });
          let hits = 0;
          let accesses = 0;
          for (const rec of r.trace.records) {
            for (const expert of rec.experts) {
              const hit = cache.lookup({ layer: rec.layer, expert }) !== undefined;
              if (!hit) cache.insert({ layer: rec.layer, expert }, true, 1);
              if (rec.token >= r.promptTokensPerSeq[rec.seq]!) {
                accesses++;
                if (hit) hits++;
              }
            }
          }
          expect(viaPlan.get(capacity), `${policy} at ${capacity}`).toBeCloseTo(hits / accesses, 12);
        }
      }
    } finally {
      await model.dispose();
    }
  });

  it("reads prompt files: lines, or JSONL objects with a prompt", () => {
    expect(parsePrompts("a\n\n b \r\n", "p.txt")).toEqual(["a", " b "]);
    expect(parsePrompts('{"prompt":"x\\ny"}\n{"prompt":"z"}\n', "p.jsonl", true)).toEqual(["x\ny", "z"]);
    expect(() => parsePrompts('{"prompt":"x"}\n{"text":"y"}\n', "p.jsonl", true)).toThrow(/p\.jsonl:2: expected an object with a non-empty string "prompt"/);
    expect(() => parsePrompts("\n \n", "p.txt")).toThrow(PromptsInvalidError);
  });
});

describe("moe-run profile", () => {
  it("writes JSONL and compact traces that agree, and prints the summary", () => {
    const jsonl = path.join(work, "t.jsonl");
    const compact = path.join(work, "t.moetrace");
    const summary = path.join(work, "summary.json");
    const a = runCli(["profile", dir, "--prompts", path.join(work, "prompts.txt"), "-n", "8", "--out", jsonl, "--gate-inputs", "--threads", "1", "--json", summary]);
    expect(a.status, a.stderr).toBe(0);
    const b = runCli(["profile", dir, "--prompts", path.join(work, "prompts.jsonl"), "-n", "8", "--out", compact, "--gate-inputs", "--threads", "1"]);
    expect(b.status, b.stderr).toBe(0);
    expect(fs.readFileSync(compact).subarray(0, 8).toString()).toBe("MOETRACE");
    expect(fs.readFileSync(jsonl, "utf8").startsWith('{"format":"moe-run-trace"')).toBe(true);
    const tj = readTrace(jsonl);
    const tc = readTrace(compact);
    // Weights, probs and gate inputs are float32 in the runtime: both formats hold them exactly.
    expect(tc).toEqual(tj);
    expect(fs.statSync(compact).size).toBeLessThan(fs.statSync(jsonl).size);

    const s = JSON.parse(fs.readFileSync(summary, "utf8"));
    expect(s.records).toBe(tj.records.length);
    expect(s.records).toBe(s.tokens * 2);
    expect(s.layers.map((l: { layer: number }) => l.layer)).toEqual([0, 1]);
    for (const l of s.layers) expect(l.normalizedEntropy).toBeGreaterThan(0);
    expect(s.hitRates.map((h: { policy: string; capacity: number }) => `${h.policy}@${h.capacity}`)).toEqual(["lru@8", "lru@16", "lru@24", "lfu@8", "lfu@16", "lfu@24", "score@8", "score@16", "score@24", "belady@8", "belady@16", "belady@24"]);
    for (const cap of [8, 16, 24]) {
      const at = s.hitRates.filter((h: { capacity: number }) => h.capacity === cap);
      const belady = at.find((h: { policy: string }) => h.policy === "belady").hitRate;
      for (const h of at) expect(h.hitRate).toBeLessThanOrEqual(belady);
    }
    expect(a.stdout).toMatch(new RegExp(`^profiled ${s.tokens} tokens \\(3 prompts\\): ${s.records} records`, "m"));
    expect(a.stdout).toMatch(/layer\s+entropy\s+of max\s+top-1 != next layer's\s+top-1 != previous token's/);
    expect(a.stdout).toMatch(/capacity\s+lru\s+lfu\s+score\s+belady\n8 \(25%\)\s+0\.\d{3}/);
    expect(a.stdout).toMatch(/trace: .*t\.jsonl \(jsonl, \d+ bytes\)/);
  });

  it("fails cleanly on a bad prompt file", () => {
    const bad = path.join(work, "bad.jsonl");
    fs.writeFileSync(bad, "not json\n");
    const r = runCli(["profile", dir, "--prompts", bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^moe-run: error: .*bad\.jsonl:1: not JSON/);
    const missing = runCli(["profile", dir, "--prompts", path.join(work, "none.txt")]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/cannot read prompts .*none\.txt: ENOENT/);
  });
});

describe("moe-run plan", () => {
  it("predicts positive decode tokens/s at each budget, within the physical bound, and caches the machine", async () => {
    const machine = path.join(work, "machine.json");
    const out = path.join(work, "plan.json");
    const args = ["plan", dir, "--device-mem", "25%,50%,unlimited", "--host-mem", "64MiB", "--prompts", path.join(work, "prompts.txt"), "-n", "8", "--threads", "1", "--machine-file", machine, "--json", out];
    const r = runCli(args);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/device budget\s+capacity\s+hit rate\s+miss\/tok\s+tier\s+dense ms\s+experts ms\s+misses ms\s+pred tok\/s\s+bound tok\/s/);
    expect(r.stdout).toMatch(/^bounds: active bytes .* MiB\/token \/ memory .* GB\/s = .* ms\/token; missed bytes \/ tier bandwidth/m);
    expect(r.stdout).toMatch(/machine figures measured now, cached in .*machine\.json/);
    expect(r.stdout).toMatch(/note: miss rates over decode steps only/);
    const plan = JSON.parse(fs.readFileSync(out, "utf8"));
    expect(plan.rows.map((x: { budget: string }) => x.budget)).toEqual(["25%", "50%", "unlimited"]);
    expect(plan.machine.memoryReadGBps).toBeGreaterThan(0);
    expect(plan.machine.storeWarmGBps).toBeGreaterThan(0);
    expect(plan.machine.expertSeconds).toBeGreaterThan(0);
    expect(plan.machine.denseSecondsPerLayer).toBeGreaterThan(0);
    const record = plan.recordBytes;
    for (const row of plan.rows) {
      expect(row.tokensPerSecond).toBeGreaterThan(0);
      expect(row.tier).toBe("host"); // the whole store (0.75 MiB) fits 64 MiB
      expect(row.seconds.total).toBeCloseTo(row.seconds.dense + row.seconds.experts + row.seconds.misses, 12);
      expect(row.bounds.missedBytesPerToken).toBeCloseTo(row.missesPerToken * record, 6);
      // No prediction may beat the physical bound.
      expect(row.tokensPerSecond).toBeLessThanOrEqual(row.bounds.maxTokensPerSecond);
    }
    // The bound counts the dense bytes the runtime reads (native layers: at the experts' width), not the graphs' fp32.
    const model = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
    try {
      expect(plan.denseBytesPerToken).toBe(model.engineInfo().denseBytesPerToken);
      expect(plan.rows[0].bounds.activeBytesPerToken).toBe(plan.numLayers * plan.topK * record + plan.denseBytesPerToken);
    } finally {
      await model.dispose();
    }
    expect(plan.rows[0].capacity).toBe(7); // (25% of 32 experts' bytes - kernel scratch) / record
    expect(plan.rows[2].capacity).toBe(32);
    expect(plan.rows[0].hitRate).toBeLessThan(plan.rows[2].hitRate);
    expect(plan.rows[0].tokensPerSecond).toBeLessThan(plan.rows[2].tokensPerSecond);

    // Second run: figures from the cache; a host budget below the store sends misses to disk.
    const again = runCli(["plan", dir, "--device-mem", "25%", "--host-mem", "100KiB", "--trace", path.join(work, "t.jsonl"), "--threads", "1", "--machine-file", machine]);
    expect(again.status, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/machine figures from .*machine\.json \(--remeasure to refresh\)/);
    expect(again.stdout).toMatch(/^25%\s+7 \(22%\)\s+0\.\d{3}\s+\S+\s+disk /m);
  });

  it("refuses a trace of another model", () => {
    // The project's own trace of a 24-layer, 8-expert model; this model has 2 layers x 16 experts.
    const { numLayers, numExperts } = readTrace(BUNDLED_TRACE).meta;
    const r = runCli(["plan", dir, "--device-mem", "50%", "--threads", "1", "--machine-file", path.join(work, "machine.json"), "--trace", BUNDLED_TRACE]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`the trace has ${numLayers} layers x ${numExperts} experts but the model 2 x 16`);
  });
});
