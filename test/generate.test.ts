/** The library API: streaming, sampling, abort, chat template, dispose, KV-cache consistency. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModel, MoeRunError, type GenerateOptions, type LanguageModel } from "../src/index.js";
import { importFixture } from "./helpers.js";

async function collect(model: LanguageModel, prompt: string, options: GenerateOptions) {
  const ids: number[] = [];
  let text = "";
  const gen = model.generate(prompt, { ...options, onToken: (id) => ids.push(id) });
  for (;;) {
    const r = await gen.next();
    if (r.done) return { ids, text, stats: r.value };
    text += r.value;
  }
}

describe("generate()", () => {
  let model: LanguageModel;
  beforeAll(async () => {
    model = await loadModel(await importFixture("tiny-mixtral"), { threads: 1 });
  });
  afterAll(async () => model?.dispose());

  it("streams pieces that add up to the decoded tokens, and reports stats", async () => {
    const r = await collect(model, "The license", { maxTokens: 24, stopAtEos: false });
    expect(r.ids).toHaveLength(24);
    expect(r.text).toBe(model.tokenizer.decode(r.ids));
    expect(r.stats.generatedTokens).toBe(24);
    expect(r.stats.finishReason).toBe("length");
    expect(r.stats.promptTokens).toBe(model.tokenize("The license").length);
    expect(r.stats.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(r.stats.prefillTokensPerSecond).toBeGreaterThan(0);
  });

  it("streams pieces that add up to the decoded tokens over long sampled generations, for every tokenizer kind", async () => {
    // Pieces are decoded a window at a time (the last piece's tokens as context): their
    // concatenation must still be the whole decode, with byte-level BPE, SentencePiece (leading
    // spaces, byte fallback) and multi-token UTF-8 characters among sampled tokens (a character
    // left incomplete at the end is held back, as the stream always did).
    for (const name of ["tiny-mixtral", "tiny-qwen3-moe", "moe-tiny-en", "tiny-gpt-oss"]) {
      const m = name === "tiny-mixtral" ? model : await loadModel(await importFixture(name), { threads: 1, log: () => {} });
      try {
        for (const seed of [1, 2, 3]) {
          const r = await collect(m, "The license", { maxTokens: 120, stopAtEos: false, temperature: 1.5, seed });
          expect(r.ids, name).toHaveLength(120);
          expect(r.text, `${name} seed ${seed}`).toBe(m.tokenizer.decode(r.ids).replace(/\uFFFD+$/, ""));
        }
      } finally {
        if (m !== model) await m.dispose();
      }
    }
  }, 120_000);

  it("samples reproducibly with a seed, and differently with other seeds", async () => {
    const opts = { maxTokens: 16, temperature: 1, topP: 0.95, stopAtEos: false };
    const a = await collect(model, "Copyright", { ...opts, seed: 1 });
    const b = await collect(model, "Copyright", { ...opts, seed: 1 });
    expect(a.ids).toEqual(b.ids);
    const others = await Promise.all([2, 3, 4].map((seed) => collect(model, "Copyright", { ...opts, seed })));
    expect(others.some((o) => o.ids.join() !== a.ids.join())).toBe(true);
  });

  it("top-k 1 sampling equals greedy", async () => {
    const greedy = await collect(model, "Permission is", { maxTokens: 12, stopAtEos: false });
    const topk1 = await collect(model, "Permission is", { maxTokens: 12, temperature: 0.8, topK: 1, seed: 5, stopAtEos: false });
    expect(topk1.ids).toEqual(greedy.ids);
  });

  it("stops at the end-of-sequence token when sampling reaches it", async () => {
    const eos = model.eosIds();
    expect(eos.length).toBeGreaterThan(0);
    // Find a seed whose sampled continuation contains EOS, then check generation stops there.
    for (let seed = 0; seed < 200; seed++) {
      const free = await collect(model, "The", { maxTokens: 40, temperature: 1.5, seed, stopAtEos: false });
      const at = free.ids.findIndex((id) => eos.includes(id));
      if (at < 0) continue;
      const stopped = await collect(model, "The", { maxTokens: 40, temperature: 1.5, seed });
      expect(stopped.ids).toEqual(free.ids.slice(0, at));
      expect(stopped.stats.finishReason).toBe("eos");
      return;
    }
    throw new Error("no seed produced EOS within 40 tokens");
  });

  it("honours an AbortSignal between tokens", async () => {
    const controller = new AbortController();
    let finish = "";
    const ids: number[] = [];
    const run = (async () => {
      for await (const _ of model.generate("The license", {
        maxTokens: 200,
        stopAtEos: false,
        signal: controller.signal,
        onToken: (id) => {
          ids.push(id);
          if (ids.length === 3) controller.abort();
        },
        onStats: (s) => (finish = s.finishReason),
      }))
        void _;
    })();
    await expect(run).rejects.toThrow(/abort/i);
    expect(ids).toHaveLength(3);
    expect(finish).toBe("abort");
  });

  it("applies the chat template with --chat", async () => {
    const chatIds = model.tokenize("hello", true);
    const rendered = model.tokenizer.applyChatTemplate([{ role: "user", content: "hello" }]);
    expect(rendered).toContain("<|user|>");
    expect(rendered).toContain("<|assistant|>");
    expect(chatIds).toEqual(model.tokenizer.encode(rendered, { addSpecialTokens: false }));
    expect(chatIds[0]).toBe(model.dims.bosTokenId);
    const r = await collect(model, "hello", { chat: true, maxTokens: 4, stopAtEos: false });
    expect(r.stats.promptTokens).toBe(chatIds.length);
  });

  it("decoding with the KV cache gives the logits of a full recompute", async () => {
    const ids = model.tokenize("Permission is hereby granted, free of charge");
    const full = (await model.logits(ids)).data;
    const steps: Float32Array[] = [];
    const gen = model.generate("Permission is hereby granted, free of charge", { maxTokens: 1, onLogits: (l) => steps.push(l.slice()) });
    for await (const _ of gen) void _;
    const V = model.dims.vocabSize;
    const last = full.subarray((ids.length - 1) * V, ids.length * V);
    let worst = 0;
    for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(last[v]! - steps[0]![v]!));
    expect(worst).toBeLessThan(1e-4);
  });

  it("refuses to generate after dispose", async () => {
    const m = await loadModel(await importFixture("tiny-mixtral"), { threads: 1 });
    await m.dispose();
    const gen = m.generate("hi", { maxTokens: 2 });
    await expect(gen.next()).rejects.toBeInstanceOf(MoeRunError);
  });
});
