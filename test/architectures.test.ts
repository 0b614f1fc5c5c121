/**
 * The architectures beyond the Mixtral baseline (granitemoe, phimoe, gpt_oss, ...) on their tiny
 * fixtures: parity with the PyTorch reference is test/parity.test.ts (every committed reference);
 * here the same greedy output on every dense backend, expert kernel, budget, predictor and
 * scheduler (routing is what the cache sees, whatever the router's rule), and config values the
 * runtime does not implement refused by name before anything is written.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { importModel } from "../src/importer/importModel.js";
import { loadModel } from "../src/index.js";
import { MODELS, copyFixture, greedyRun, importFixture, tmpDir } from "./helpers.js";

/** Fixtures of the families added after the baseline, each with what it exercises. */
const NEW_FIXTURES = ["tiny-granitemoe", "tiny-phimoe", "tiny-gpt-oss", "tiny-glm4-moe", "tiny-deepseek-v2", "tiny-deepseek-v2-lite", "tiny-qwen3-moe-dense"].filter((f) => fs.existsSync(path.join(MODELS, f, "config.json")));
const PROMPT = "Permission is hereby granted, free of charge, to any person";

it("has at least one fixture of a newer architecture", () => {
  expect(NEW_FIXTURES.length).toBeGreaterThan(0);
});

describe.each(NEW_FIXTURES)("%s", (fixture) => {
  let dir: string;
  let reference: number[];
  beforeAll(async () => {
    // gpt-oss: its MXFP4 experts and int8 dense weights compute from 8-bit activations on the
    // native kernels; backends agree exactly at f32 (the MXFP4 path is checked below).
    dir = await importFixture(fixture, fixture === "tiny-gpt-oss" ? { experts: "f32" } : {});
    reference = (await greedyRun(dir, PROMPT, 40, { dense: "native", expertKernel: "native", schedule: "device" })).ids;
  }, 120_000);

  it("native and onnxruntime dense layers, native and onnx expert kernels give the same greedy tokens", async () => {
    expect((await greedyRun(dir, PROMPT, 40, { dense: "onnx", expertKernel: "onnx", schedule: "device" })).ids).toEqual(reference);
    expect((await greedyRun(dir, PROMPT, 40, { dense: "native", expertKernel: "js", schedule: "device" })).ids).toEqual(reference);
  }, 120_000);

  it("offloading is lossless: the smallest budget, the gate predictor with prefetch, the CPU pool", async () => {
    // A fifth of the experts, or the minimum (one token's activated experts plus working memory).
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8")) as { dims: { topK: number; hiddenSize: number; expertFfn: number }; experts: { recordBytes: number; checksums: string[][] } };
    const { topK, hiddenSize: H, expertFfn: F } = manifest.dims;
    const experts = manifest.experts.checksums.flat().length;
    const deviceMem = Math.max(Math.ceil(0.2 * experts) * manifest.experts.recordBytes, topK * manifest.experts.recordBytes + (2 * F + H) * 4);
    const small = await greedyRun(dir, PROMPT, 40, { deviceMem, policy: "lfu", predictor: "gate", prefetch: true });
    expect(small.ids).toEqual(reference);
    expect(small.stats.cache.residentBytesMax).toBeLessThanOrEqual(small.stats.cache.budgetBytes);
    expect(small.stats.cache.misses).toBeGreaterThan(0);
    expect((await greedyRun(dir, PROMPT, 40, { schedule: "cpu", cpuThreads: 1 })).ids).toEqual(reference);
  }, 180_000);
});

describe.runIf(NEW_FIXTURES.includes("tiny-gpt-oss"))("gpt-oss's MXFP4 experts", () => {
  it("import as they are (no float in between) and agree with the exact f32 import on >= 90% of next tokens", async () => {
    const ref = JSON.parse(fs.readFileSync(path.join(MODELS, "..", "test", "reference", "tiny-gpt-oss.json"), "utf8")) as { prompts: { ids: number[]; greedy: number[] }[] };
    const mx = await loadModel(await importFixture("tiny-gpt-oss"), { threads: 1, log: () => {} });
    const exact = await loadModel(await importFixture("tiny-gpt-oss", { experts: "f32" }), { threads: 1, log: () => {} });
    try {
      expect(mx.manifest.precision.experts).toBe("mxfp4");
      // 4.25 bits per weight, plus the fp32 biases.
      expect(mx.manifest.experts.recordBytes).toBeLessThan(exact.manifest.experts.recordBytes / 6);
      let agree = 0;
      let n = 0;
      const V = mx.dims.vocabSize;
      const argmax = (l: Float32Array, t: number) => {
        let best = 0;
        for (let v = 1; v < V; v++) if (l[t * V + v]! > l[t * V + best]!) best = v;
        return best;
      };
      for (const p of ref.prompts) {
        const ids = [...p.ids, ...p.greedy];
        const a = (await mx.logits(ids)).data;
        const b = (await exact.logits(ids)).data;
        for (let t = p.ids.length - 1; t < ids.length - 1; t++, n++) if (argmax(a, t) === argmax(b, t)) agree++;
      }
      expect(agree / n).toBeGreaterThanOrEqual(0.9);
    } finally {
      await mx.dispose();
      await exact.dispose();
    }
  }, 120_000);
});

describe.runIf(NEW_FIXTURES.includes("tiny-phimoe"))("LongRoPE", () => {
  it("recomputes the cached keys when a generation crosses from the short to the long factors", async () => {
    const model = await loadModel(await importFixture("tiny-phimoe"), { threads: 1, log: () => {} });
    try {
      const prompt = model.tokenize("Permission"); // well under original_max_position_embeddings (16)
      expect(prompt.length).toBeLessThan(16);
      const ids: number[] = [];
      const steps: Float32Array[] = [];
      const gen = model.generate("Permission", { temperature: 0, maxTokens: 24, stopAtEos: false, onToken: (id) => ids.push(id), onLogits: (l) => steps.push(l.slice()) });
      for await (const _ of gen) void _;
      // The last step's logits equal one forward over the whole sequence (all in the long regime).
      const all = [...prompt, ...ids.slice(0, -1)];
      expect(all.length).toBeGreaterThan(16);
      const V = model.dims.vocabSize;
      const full = (await model.logits(all)).data.subarray((all.length - 1) * V);
      const last = steps[steps.length - 1]!;
      let worst = 0;
      for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(full[v]! - last[v]!));
      expect(worst).toBeLessThan(1e-4);
    } finally {
      await model.dispose();
    }
  }, 120_000);
});

describe("config values the runtime does not implement are refused by name", () => {
  const tryImport = async (fixture: string, edit: (c: Record<string, unknown>) => void) => {
    const src = copyFixture(fixture);
    const configPath = path.join(src, "config.json");
    const config = JSON.parse(fs.readFileSync(configPath, "utf8")) as Record<string, unknown>;
    edit(config);
    fs.writeFileSync(configPath, JSON.stringify(config));
    const target = path.join(tmpDir(), "model");
    await expect(importModel(src, target, { progress: false })).rejects.toThrow();
    const err = await importModel(src, target, { progress: false }).catch((e: Error) => e);
    expect(fs.existsSync(target)).toBe(false);
    return (err as Error).message;
  };

  it("an unknown rope_scaling type", async () => {
    expect(await tryImport("tiny-mixtral", (c) => (c["rope_scaling"] = { rope_type: "dynamic", factor: 2 }))).toMatch(/rope_scaling type "dynamic"/);
  });

  it("longrope factors of the wrong length", async () => {
    expect(await tryImport("tiny-mixtral", (c) => (c["rope_scaling"] = { rope_type: "longrope", short_factor: [1, 1], long_factor: [1, 1] }))).toMatch(/rope_scaling\.short_factor/);
  });

  it("an odd number of rotary dims", async () => {
    expect(await tryImport("tiny-mixtral", (c) => (c["partial_rotary_factor"] = 0.1))).toMatch(/partial_rotary_factor/);
  });

  it.runIf(NEW_FIXTURES.includes("tiny-gpt-oss"))("an unknown layer type", async () => {
    expect(await tryImport("tiny-gpt-oss", (c) => ((c["layer_types"] as string[])[0] = "chunked_attention"))).toMatch(/layer_types\[0\]="chunked_attention"/);
  });

  it.runIf(NEW_FIXTURES.includes("tiny-phimoe"))("sparsemixer with top-k other than 2", async () => {
    expect(await tryImport("tiny-phimoe", (c) => (c["num_experts_per_tok"] = 3))).toMatch(/num_experts_per_tok=3/);
  });

  it.runIf(NEW_FIXTURES.includes("tiny-glm4-moe"))("expert groups that do not divide the experts, an unknown topk_method", async () => {
    expect(await tryImport("tiny-glm4-moe", (c) => (c["n_group"] = 3))).toMatch(/n_group=3/);
    expect(await tryImport("tiny-glm4-moe", (c) => (c["topk_method"] = "sinkhorn"))).toMatch(/topk_method="sinkhorn"/);
  });

  it.runIf(NEW_FIXTURES.includes("tiny-deepseek-v2"))("an unknown DeepSeek top-k method or scoring function", async () => {
    expect(await tryImport("tiny-deepseek-v2", (c) => (c["topk_method"] = "noaux_tc"))).toMatch(/topk_method="noaux_tc"/);
    expect(await tryImport("tiny-deepseek-v2", (c) => (c["scoring_func"] = "sigmoid"))).toMatch(/scoring_func="sigmoid"/);
  });

  it.runIf(NEW_FIXTURES.includes("tiny-qwen3-moe-dense"))("dense-layer indices outside the model", async () => {
    expect(await tryImport("tiny-qwen3-moe-dense", (c) => (c["mlp_only_layers"] = [7]))).toMatch(/mlp_only_layers/);
  });

  it.runIf(NEW_FIXTURES.includes("tiny-granitemoe"))("a position embedding other than RoPE", async () => {
    expect(await tryImport("tiny-granitemoe", (c) => (c["position_embedding_type"] = "nope"))).toMatch(/position_embedding_type="nope"/);
  });
});
