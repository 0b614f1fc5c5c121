/**
 * The bundled trained model (models/moe-tiny-en, recipe in models/tools/train.py): moe-run's
 * perplexity on the held-out text matches the training code's figure (eval.json) within 1%, and
 * it writes English-looking text. Parity with the training code's logits is in parity.test.ts.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { loadModel } from "../src/index.js";
import { MODELS, importFixture, runCli } from "./helpers.js";

const DIR = path.join(MODELS, "moe-tiny-en");

describe("the trained model", () => {
  let modelDir: string;
  beforeAll(async () => {
    modelDir = await importFixture("moe-tiny-en");
  }, 300_000);

  it("is a fine-grained Mixtral-architecture MoE within the size limit", () => {
    const cfg = JSON.parse(fs.readFileSync(path.join(DIR, "config.json"), "utf8"));
    expect(cfg.model_type).toBe("mixtral");
    expect(cfg.num_hidden_layers).toBeGreaterThanOrEqual(8);
    expect(cfg.num_local_experts).toBeGreaterThanOrEqual(16);
    expect(cfg.num_experts_per_tok).toBeGreaterThanOrEqual(2);
    const bytes = fs.readdirSync(DIR).reduce((a, f) => a + fs.statSync(path.join(DIR, f)).size, 0);
    expect(bytes).toBeLessThanOrEqual(40 * 1024 * 1024);
  });

  it("moe-run perplexity on the held-out text matches the training code within 1%", () => {
    const expected = JSON.parse(fs.readFileSync(path.join(DIR, "eval.json"), "utf8")) as { perplexity: number; tokens: number };
    const r = runCli(["perplexity", modelDir, path.join(DIR, "validation.txt"), "--json", "--window", "256"], { timeoutMs: 600_000 });
    expect(r.status, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout) as { perplexity: number; tokens: number };
    expect(got.tokens).toBe(expected.tokens);
    expect(Math.abs(got.perplexity - expected.perplexity) / expected.perplexity).toBeLessThan(0.01);
  }, 600_000);

  it("int8 and int4 weights keep perplexity within 1% and 5% of f32 (dense layers at int8 too)", async () => {
    // The first 20 KB of the held-out text: every layer, expert and the int-dot kernels take part.
    const text = fs.readFileSync(path.join(DIR, "validation.txt"), "utf8").slice(0, 20_000);
    const ppl = async (dir: string) => {
      const m = await loadModel(dir, { threads: 2, log: () => {} });
      try {
        expect(m.engineInfo().dense).toBe("native");
        return (await m.perplexity(text, { window: 256 })).perplexity;
      } finally {
        await m.dispose();
      }
    };
    const f32 = await ppl(modelDir);
    const int8 = await ppl(await importFixture("moe-tiny-en", { experts: "int8" }));
    const int4 = await ppl(await importFixture("moe-tiny-en", { experts: "int4" }));
    process.stderr.write(`[trained-model] perplexity on 20 KB of validation text: f32 ${f32.toFixed(3)}, int8 ${int8.toFixed(3)}, int4 ${int4.toFixed(3)}\n`);
    expect(Math.abs(int8 - f32) / f32).toBeLessThan(0.01);
    expect(Math.abs(int4 - f32) / f32).toBeLessThan(0.05);
  }, 600_000);

  it("continues simple prompts with English words", async () => {
    const model = await loadModel(modelDir, { threads: 2, log: () => {} });
    try {
      let text = "";
      for await (const piece of model.generate("The king said that", { maxTokens: 24, stopAtEos: false })) text += piece;
      const words = text.toLowerCase().match(/[a-z]+/g) ?? [];
      const common = new Set(["the", "and", "of", "to", "a", "in", "that", "is", "was", "he", "it", "his", "for", "with", "not", "be", "as", "i", "they", "him", "them", "unto", "shall", "all", "which", "you", "this", "have", "we", "but"]);
      expect(words.length).toBeGreaterThan(8);
      expect(words.filter((w) => common.has(w)).length).toBeGreaterThanOrEqual(3);
    } finally {
      await model.dispose();
    }
  });
});
