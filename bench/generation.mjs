#!/usr/bin/env node
/**
 * Prefill and decode tokens/s on the bundled models (and optionally synthetic ones), with the
 * bytes each keeps resident. Prints a table, writes bench/results/generation.json. Medians over
 * --reps runs.
 *
 *   node bench/generation.mjs [--reps 5] [--prompt-tokens 64] [--decode-tokens 64] [--threads N]
 *                              [--models tiny-mixtral,moe-tiny-en] [--synthetic]
 *                              [--gpt-oss [--gpt-oss-layers 4]]
 *
 * --gpt-oss: a gpt-oss-shaped model at gpt-oss-20b's width (hidden 2880, 64 heads / 8 KV of 64,
 * 32 experts x 2880 top-4, sliding window 128 on every other layer, YaRN, sinks, biases), fewer
 * layers, its experts stored as MXFP4 blocks like the released checkpoint and imported as they
 * are (no float in between).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { importModel, loadModelOnThisThread } from "../dist/index.js";
import { writeSyntheticCheckpoint } from "../dist/synthetic/syntheticCheckpoint.js";
import { writeSyntheticGptOss } from "../dist/synthetic/syntheticGptOss.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "5" },
    "prompt-tokens": { type: "string", default: "64" },
    "decode-tokens": { type: "string", default: "64" },
    threads: { type: "string", default: String(os.availableParallelism()) },
    models: { type: "string", default: "" },
    synthetic: { type: "boolean", default: false },
    "gpt-oss": { type: "boolean", default: false },
    "gpt-oss-layers": { type: "string", default: "4" },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "generation.json") },
  },
});
const reps = Number(args.reps);
const promptTokens = Number(args["prompt-tokens"]);
const decodeTokens = Number(args["decode-tokens"]);
const threads = Number(args.threads);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const work = fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-bench-"));
const candidates = args.models ? args.models.split(",") : ["tiny-mixtral", "moe-tiny-en"];
const sources = candidates.filter((m) => fs.existsSync(path.join(ROOT, "models", m, "config.json"))).map((m) => ({ name: m, hf: path.join(ROOT, "models", m) }));
if (args.synthetic) {
  const hf = path.join(work, "synthetic-hf");
  process.stderr.write("writing synthetic model (8 layers, hidden 512, 8 experts x 1408, top-2)...\n");
  writeSyntheticCheckpoint(hf, {
    tokenizerFrom: path.join(ROOT, "models", "tiny-mixtral"),
    vocabSize: 512, hiddenSize: 512, numLayers: 8, numHeads: 8, numKvHeads: 2, numExperts: 8, topK: 2, expertFfn: 1408, dtype: "BF16", seed: 1,
  });
  sources.push({ name: "synthetic-8x1408", hf });
}
if (args["gpt-oss"]) {
  const hf = path.join(work, "gpt-oss-hf");
  const layers = Number(args["gpt-oss-layers"]);
  process.stderr.write(`writing a gpt-oss-shaped model (${layers} layers, hidden 2880, 32 experts x 2880 top-4, MXFP4 experts)...\n`);
  writeSyntheticGptOss(hf, { tokenizerFrom: path.join(ROOT, "models", "tiny-mixtral"), vocabSize: 512, numLayers: layers, seed: 1 });
  sources.push({ name: `gpt-oss-shaped-${layers}L`, hf });
}

const rows = [];
for (const src of sources) {
  const dir = path.join(work, src.name);
  await importModel(src.hf, dir, { progress: false });
  // On this thread: compute speed without the worker's message per token, comparable with earlier
  // results (bench/responsiveness.mjs measures what the worker is for).
  const model = await loadModelOnThisThread(dir, { threads });
  // A prompt of exactly promptTokens ids: the tokenizer's text of a repeated sentence, cut.
  const base = model.tokenize("The quick brown fox jumps over the lazy dog. ".repeat(64)).slice(0, promptTokens);
  const promptText = model.tokenizer.decode(base);
  const prefill = [];
  const decode = [];
  for (let r = 0; r <= reps; r++) {
    let stats;
    const gen = model.generate(promptText, { maxTokens: decodeTokens, stopAtEos: false });
    for (;;) {
      const n = await gen.next();
      if (n.done) {
        stats = n.value;
        break;
      }
    }
    if (r === 0) continue; // warm-up
    prefill.push(stats.prefillTokensPerSecond);
    decode.push(stats.decodeTokensPerSecond);
  }
  const d = model.dims;
  const cache = await model.cacheStats();
  const engine = model.engineInfo();
  rows.push({
    model: src.name,
    layers: d.numLayers,
    experts: `${d.numExperts}x${d.expertFfn} top-${d.topK}`,
    promptTokens: model.tokenize(promptText).length,
    decodeTokens,
    threads,
    prefillTokPerS: median(prefill),
    decodeTokPerS: median(decode),
    prefillRuns: prefill,
    decodeRuns: decode,
    expertEncoding: model.manifest.precision.experts,
    expertRecordBytes: model.manifest.experts.recordBytes,
    expertResidentBytes: cache.cache.residentBytesMax,
    denseBytesPerToken: engine.denseBytesPerToken,
    rssBytes: process.memoryUsage().rss,
  });
  await model.dispose();
}
fs.rmSync(work, { recursive: true, force: true });

const mib = (b) => (b / 2 ** 20).toFixed(1);
console.log("| model | layers | experts (encoding) | prompt tok | prefill tok/s (median) | decode tok/s (median) | expert record MiB | experts resident MiB | dense MiB/token | RSS MiB |");
console.log("|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(
    `| ${r.model} | ${r.layers} | ${r.experts} (${r.expertEncoding}) | ${r.promptTokens} | ${r.prefillTokPerS.toFixed(1)} | ${r.decodeTokPerS.toFixed(1)} | ` +
      `${mib(r.expertRecordBytes)} | ${mib(r.expertResidentBytes)} | ${mib(r.denseBytesPerToken)} | ${mib(r.rssBytes)} |`
  );
}
fs.mkdirSync(path.dirname(args.out), { recursive: true });
fs.writeFileSync(args.out, JSON.stringify({ bench: "generation", date: new Date().toISOString(), machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version }, reps, rows }, null, 2) + "\n");
process.stderr.write(`wrote ${path.relative(process.cwd(), args.out)}\n`);
