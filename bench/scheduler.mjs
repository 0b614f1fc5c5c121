#!/usr/bin/env node
/**
 * Hybrid scheduler vs everything on one side: prefill and decode tokens/s with --schedule auto,
 * device and cpu, at full and reduced device budgets, on a synthetic Mixtral-shaped model.
 * Prints a table, writes bench/results/scheduler.json. Medians over --reps; engines alternate.
 *
 *   node bench/scheduler.mjs [--reps 3] [--prompt-tokens 64] [--decode-tokens 32] [--budgets 100,25] [--device cpu|webgpu|cuda]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { importModel, loadModelOnThisThread } from "../dist/index.js";
import { writeSyntheticCheckpoint } from "../dist/synthetic/syntheticCheckpoint.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "3" },
    "prompt-tokens": { type: "string", default: "64" },
    "decode-tokens": { type: "string", default: "32" },
    budgets: { type: "string", default: "100,25" },
    device: { type: "string", default: "cpu" },
    work: { type: "string", default: path.join(os.tmpdir(), "moe-run-bench-scheduler") },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "scheduler.json") },
  },
});
const reps = Number(args.reps);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const dims = { vocabSize: 512, hiddenSize: 512, numLayers: 8, numHeads: 8, numKvHeads: 2, numExperts: 8, topK: 2, expertFfn: 1408 };
const hf = path.join(args.work, "hf");
const dir = path.join(args.work, "model-f16");
if (!fs.existsSync(path.join(dir, "manifest.json"))) {
  process.stderr.write("writing and importing the synthetic model...\n");
  writeSyntheticCheckpoint(hf, { tokenizerFrom: path.join(ROOT, "models", "tiny-mixtral"), dtype: "BF16", seed: 11, ...dims });
  await importModel(hf, dir, { experts: "f16", progress: false, force: true });
}

const prompt = "The quick brown fox jumps over the lazy dog. ".repeat(40);
const rows = [];
const outputs = new Map();
let resolvedDevice = "cpu"; // what the requested provider resolved to (it falls back to the CPU where missing)
for (const budget of args.budgets.split(",").map(Number)) {
  const runs = { auto: [], device: [], cpu: [] };
  for (let r = 0; r <= reps; r++) {
    for (const schedule of ["auto", "device", "cpu"]) {
      // On this thread: compute speed comparable with earlier results, placement read synchronously.
      const model = await loadModelOnThisThread(dir, { schedule, device: args.device, deviceMem: budget >= 100 ? undefined : { percent: budget }, log: () => {} });
      const ids = model.tokenize(prompt).slice(0, Number(args["prompt-tokens"]));
      const text = model.tokenizer.decode(ids);
      let stats;
      const out = [];
      const gen = model.generate(text, { maxTokens: Number(args["decode-tokens"]), stopAtEos: false, onToken: (t) => out.push(t) });
      for (;;) {
        const n = await gen.next();
        if (n.done) {
          stats = n.value;
          break;
        }
      }
      resolvedDevice = model.device;
      const placement = model.scheduleStats().layers.reduce((a, l) => ({ device: a.device + l.device, cpu: a.cpu + l.cpu }), { device: 0, cpu: 0 });
      await model.dispose();
      outputs.set(`${budget}/${schedule}`, out.join(","));
      if (r > 0) runs[schedule].push({ prefill: stats.prefillTokensPerSecond, decode: stats.decodeTokensPerSecond, placement });
    }
  }
  for (const schedule of ["auto", "device", "cpu"]) {
    const rs = runs[schedule];
    rows.push({
      budgetPercent: budget,
      schedule,
      prefillTokPerS: median(rs.map((x) => x.prefill)),
      decodeTokPerS: median(rs.map((x) => x.decode)),
      expertsOnDevice: rs.at(-1).placement.device,
      expertsOnCpu: rs.at(-1).placement.cpu,
      prefillRuns: rs.map((x) => x.prefill),
      decodeRuns: rs.map((x) => x.decode),
    });
  }
}
const identical = new Set(outputs.values()).size === 1;
console.log("| device budget | schedule | prefill tok/s | decode tok/s | prefill vs device | decode vs device | experts device/cpu (last run) |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  const base = rows.find((x) => x.budgetPercent === r.budgetPercent && x.schedule === "device");
  console.log(`| ${r.budgetPercent}% | ${r.schedule} | ${r.prefillTokPerS.toFixed(1)} | ${r.decodeTokPerS.toFixed(1)} | ${(r.prefillTokPerS / base.prefillTokPerS).toFixed(2)}x | ${(r.decodeTokPerS / base.decodeTokPerS).toFixed(2)}x | ${r.expertsOnDevice}/${r.expertsOnCpu} |`);
}
console.log(`greedy output identical across schedules and budgets: ${identical}; device ${resolvedDevice} (requested ${args.device})`);
fs.mkdirSync(path.dirname(args.out), { recursive: true });
fs.writeFileSync(args.out, JSON.stringify({ bench: "scheduler", date: new Date().toISOString(), machine: { cpus: os.availableParallelism(), cpu: os.cpus()[0]?.model, node: process.version }, model: { ...dims, experts: "f16" }, device: resolvedDevice, requestedDevice: args.device, reps, identical, rows }, null, 2) + "\n");
process.stderr.write(`wrote ${path.relative(process.cwd(), args.out)}\n`);
