#!/usr/bin/env node
/**
 * Soak: one process generates 2,000 tokens (sequences of 200: the bundled model's context is 256), then runs 100 load / generate / dispose cycles on the
 * worker model, half of them disposed mid-generation. Prints RSS and open file descriptors after
 * warm-up and at the end (they must stay flat: no leak of records, sessions, workers or fds) and
 * writes bench/results/soak.json.
 *
 *   npx tsc -p tsconfig.json && node --expose-gc bench/soak.mjs [--model-dir DIR] [--cycles 100] [--tokens 2000]
 * RSS is sampled every 25 cycles; the slope over the second half separates a leak (steady growth
 * per cycle) from warm-up of the heap and allocator (flattens out).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: a } = parseArgs({ options: { "model-dir": { type: "string" }, cycles: { type: "string", default: "100" }, tokens: { type: "string", default: "2000" } } });
const { importModel, loadModel, loadModelOnThisThread } = await import(path.join(ROOT, "dist", "index.js"));

let dir = a["model-dir"];
if (!dir) {
  dir = path.join(os.tmpdir(), "moe-run-soak-model");
  if (!fs.existsSync(path.join(dir, "manifest.json"))) await importModel(path.join(ROOT, "models", "moe-tiny-en"), dir, { progress: false, log: () => {} });
}
const mb = (x) => x / 2 ** 20;
const fds = () => fs.readdirSync("/proc/self/fd").length;
// With --expose-gc, collect first: RSS then reflects live memory, not when the GC last ran.
const sample = (label, cycle) => {
  globalThis.gc?.();
  return { label, cycle, rssMiB: mb(process.memoryUsage().rss), fds: fds() };
};
const samples = [];
const log = (s) => process.stderr.write(`[soak] ${s.label}: RSS ${s.rssMiB.toFixed(0)} MiB, ${s.fds} open fds\n`);

// 1. A long generation in one model (tokens well past the warm-up), on this thread (comparable with earlier runs).
const model = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
let n = 0;
const tokens = Number(a.tokens);
const t0 = performance.now();
while (n < tokens) {
  for await (const _ of model.generate("And the LORD spake unto Moses, saying,", { maxTokens: Math.min(200, tokens - n), stopAtEos: false, temperature: 0.8, seed: n, onToken: () => n++ }));
  if (n === 400) samples.push(sample("after 400 tokens (warm)"));
}
const longSeconds = (performance.now() - t0) / 1000;
samples.push(sample(`after ${n} tokens`));
await model.dispose();

// 2. Load / generate / dispose cycles on the worker model (loadModel's default); odd cycles dispose mid-generation.
const cycles = Number(a.cycles);
let disposedMid = 0;
for (let i = 0; i < cycles; i++) {
  const m = await loadModel(dir, { threads: 1, log: () => {} });
  const gen = m.generate("The Lord is my shepherd", { maxTokens: 64, stopAtEos: false });
  if (i % 2 === 1) {
    await gen.next();
    const pending = (async () => {
      for (;;) if ((await gen.next()).done) return;
    })().catch((e) => e);
    await m.dispose();
    const r = await pending;
    if (r && r.code !== "DISPOSED") throw r;
    disposedMid++;
  } else {
    for await (const _ of gen);
    await m.dispose();
  }
  if (i === 9) samples.push(sample("after 10 cycles (warm)", 10));
  else if ((i + 1) % 25 === 0 && i + 1 < cycles) samples.push(sample(`after ${i + 1} cycles`, i + 1));
}
samples.push(sample(`after ${cycles} cycles`, cycles));
samples.forEach(log);

const warm = samples.find((s) => s.label.startsWith("after 10 cycles"));
const end = samples.at(-1);
// A leak grows RSS by a steady amount per cycle; allocator and heap warm-up flattens out. The
// least-squares slope over the second half of the cycles tells them apart.
const late = samples.filter((s) => s.cycle !== undefined && s.cycle >= cycles / 2);
// RSS wanders with the allocator and V8's heap; a leak also raises the peak: compare the highest
// sample of each half (after warm-up).
const early = samples.filter((s) => s.cycle !== undefined && s.cycle >= 10 && s.cycle < cycles / 2);
const maxOf = (xs) => (xs.length ? Math.max(...xs.map((s) => s.rssMiB)) : undefined);
const peakFirstHalf = maxOf(early);
const peakSecondHalf = maxOf(late);
const slopeKiBPerCycle = (() => {
  if (late.length < 2) return undefined;
  const mx = late.reduce((a, s) => a + s.cycle, 0) / late.length;
  const my = late.reduce((a, s) => a + s.rssMiB, 0) / late.length;
  const num = late.reduce((a, s) => a + (s.cycle - mx) * (s.rssMiB - my), 0);
  const den = late.reduce((a, s) => a + (s.cycle - mx) ** 2, 0);
  return den ? (num / den) * 1024 : undefined;
})();
const rows = [
  ["phase", "RSS MiB", "open fds"],
  ...samples.map((s) => [s.label, s.rssMiB.toFixed(0), String(s.fds)]),
];
console.log(rows.map((r, i) => `| ${r.join(" | ")} |` + (i === 0 ? `\n|${r.map(() => "---").join("|")}|` : "")).join("\n"));
console.log(`\nlong generation: ${n} tokens in ${longSeconds.toFixed(1)} s; cycles: ${cycles} (${disposedMid} disposed mid-generation); RSS growth after warm-up ${(end.rssMiB - warm.rssMiB).toFixed(0)} MiB, fds ${end.fds - warm.fds}; highest RSS in the first / second half of the cycles ${peakFirstHalf?.toFixed(0) ?? "–"} / ${peakSecondHalf?.toFixed(0) ?? "–"} MiB; RSS slope over the second half ${slopeKiBPerCycle?.toFixed(1) ?? "–"} KiB/cycle${globalThis.gc ? " (GC before each sample)" : " (run with --expose-gc for samples after a GC)"}`);
const out = path.join(ROOT, "bench", "results", "soak.json");
fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), model: dir, tokens: n, longSeconds, cycles, disposedMid, samples, rssGrowthAfterWarmMiB: end.rssMiB - warm.rssMiB, fdGrowthAfterWarm: end.fds - warm.fds, rssSlopeKiBPerCycleSecondHalf: slopeKiBPerCycle, rssPeakFirstHalfMiB: peakFirstHalf, rssPeakSecondHalfMiB: peakSecondHalf, gcBeforeSamples: Boolean(globalThis.gc) }, null, 2) + "\n");
process.stderr.write(`[soak] wrote ${path.relative(process.cwd(), out)}\n`);
