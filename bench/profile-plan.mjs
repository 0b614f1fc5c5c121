#!/usr/bin/env node
/**
 * Does `moe-run plan` predict decode speed? Profiles the trained model (models/moe-tiny-en, or
 * models/tiny-qwen3-moe while its checkpoint is not there) on held-out prompts, predicts decode
 * tokens/s at a few device budgets from the measured machine figures and the simulated LRU miss
 * rate, then measures decode tokens/s at those budgets on other held-out prompts.
 *
 * Method
 *   - Prompts: non-trivial lines of models/moe-tiny-en/validation.txt (held out from training).
 *     The first --profile-prompts lines are profiled (the trace plan's miss rates come from); the
 *     next --measure-prompts lines are generated for the measurement, so the prediction is
 *     out of sample.
 *   - Machine figures: machineFigures() (memory bandwidth, store reads, expert compute, dense time
 *     per layer), measured afresh unless --cached.
 *   - Measured: loadModelOnThisThread({ deviceMem: { percent }, policy }) per budget, greedy, --tokens per
 *     prompt (EOS ignored); decode tok/s = decoded tokens after each prompt's first / decode
 *     seconds, over all measure prompts; median of --reps repetitions (each from a fresh load:
 *     cold cache, as in the simulation). The store stays in the page cache (host tier).
 *
 *   npx tsc -p tsconfig.json && nice -n 5 node bench/profile-plan.mjs [--percents 25,50,100]
 *       [--threads 1] [--tokens 32] [--profile-prompts 12] [--measure-prompts 6] [--reps 3]
 *       [--policy lru] [--cached] [--work DIR] [--out bench/results/profile-plan.json]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { loadModelOnThisThread, parsePolicyName } from "../dist/index.js";
import { machineFigures } from "../dist/profiling/machine.js";
import { formatPlan, planDecode } from "../dist/profiling/plan.js";
import { profilePrompts } from "../dist/profiling/profileModel.js";
import { summarizeTrace } from "../dist/profiling/profileSummary.js";
import { beNice, checkDistFresh, checkoutInfo, machineInfo, median, otherHeavyProcesses, ROOT, table, writeJson } from "./lib/common.mjs";
import { trainedModel } from "./lib/benchModels.mjs";

const { values: args } = parseArgs({
  options: {
    percents: { type: "string", default: "25,50,100" },
    threads: { type: "string", default: "1" },
    tokens: { type: "string", default: "32" },
    "profile-prompts": { type: "string", default: "12" },
    "measure-prompts": { type: "string", default: "6" },
    reps: { type: "string", default: "3" },
    policy: { type: "string", default: "lru" },
    cached: { type: "boolean", default: false },
    work: { type: "string", default: path.join(os.tmpdir(), "moe-run-profile-plan") },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "profile-plan.json") },
  },
});
const log = (line) => process.stderr.write(line + "\n");
const threads = Number(args.threads);
const tokens = Number(args.tokens);
const reps = Number(args.reps);
const policy = parsePolicyName(args.policy);
const percents = args.percents.split(",").map(Number);

beNice(5);
const dist = checkDistFresh(log);
const busy = otherHeavyProcesses().map((o) => ({ pid: o.pid, args: o.args.slice(0, 200) }));
if (busy.length > 0) log(`warning: other heavy processes are running; timings share the CPU with them:\n${busy.map((b) => `  ${b.pid} ${b.args}`).join("\n")}`);

fs.mkdirSync(args.work, { recursive: true });
const info = await trainedModel(args.work, { log });
log(`model: ${info.name} (${info.layers} layers x ${info.experts} experts, top-${info.topK}, record ${(info.recordBytes / 1024).toFixed(0)} KiB)${info.note ? ` -- ${info.note}` : ""}`);

// Held-out prompts: validation lines with some substance, first few words of each.
const lines = fs
  .readFileSync(path.join(ROOT, "models", "moe-tiny-en", "validation.txt"), "utf8")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l.length >= 40 && /^[A-Za-z]/.test(l))
  .map((l) => l.split(/\s+/).slice(0, 24).join(" ")); // keeps prompt + generation inside the context
const nProfile = Number(args["profile-prompts"]);
const nMeasure = Number(args["measure-prompts"]);
const profileSet = lines.slice(0, nProfile);
const measureSet = lines.slice(nProfile, nProfile + nMeasure);

// 1. Machine figures and the profile, on a model with an unlimited device tier.
// On this thread: machineFigures and profilePrompts take a MoeModel, and the measured runs read the cache per token.
const reference = await loadModelOnThisThread(info.dir, { threads, log: () => {} });
let figures;
let profile;
try {
  figures = await machineFigures(reference, { threads, remeasure: !args.cached, log });
  profile = await profilePrompts(reference, profileSet, { maxTokens: tokens, stopAtEos: false, probs: policy === "score" });
} finally {
  await reference.dispose();
}
const summary = summarizeTrace(profile.trace);
log(`profiled ${summary.tokens} tokens (${profileSet.length} prompts)`);

// 2. The prediction.
const totalExpertBytes = info.expertBytes;
const budgets = percents.map((p) => ({ label: `${p}%`, bytes: p >= 100 ? Infinity : Math.floor((p / 100) * totalExpertBytes) }));
const plan = planDecode({
  manifest: reference.manifest,
  machine: figures.machine,
  figures: figures.model,
  trace: profile.trace,
  traceSource: `${profileSet.length} validation prompts`,
  budgets,
  hostBytes: os.totalmem(),
  policy,
  promptTokens: profile.promptTokensPerSeq,
});
log(formatPlan(plan));

// 3. The measurement.
async function measure(percent) {
  const deviceMem = percent >= 100 ? undefined : { percent };
  const model = await loadModelOnThisThread(info.dir, { threads, deviceMem, policy, log: () => {} });
  try {
    let decoded = 0;
    let seconds = 0;
    const decodeCache = { hits: 0, misses: 0 };
    for (const prompt of measureSet) {
      let atFirst; // cache counters once prefill is done: decode's hit rate is what comes after
      const onToken = () => (atFirst ??= model.cacheStats().cache);
      const it = model.generate(prompt, { maxTokens: tokens, temperature: 0, stopAtEos: false, onToken });
      let r = await it.next();
      while (!r.done) r = await it.next();
      const end = model.cacheStats().cache;
      decodeCache.hits += end.hits - atFirst.hits;
      decodeCache.misses += end.misses - atFirst.misses;
      decoded += Math.max(0, r.value.generatedTokens - 1);
      seconds += r.value.decodeSeconds;
    }
    return { tokensPerSecond: decoded / seconds, liveHitRate: decodeCache.hits / (decodeCache.hits + decodeCache.misses), stallSeconds: model.cacheStats().stallSeconds };
  } finally {
    await model.dispose();
  }
}
await measure(percents[0]); // warm up the JIT once, so the first measured budget is not penalised
const rows = [];
for (const [i, percent] of percents.entries()) {
  const runs = [];
  for (let r = 0; r < reps; r++) runs.push(await measure(percent));
  const measured = median(runs.map((x) => x.tokensPerSecond));
  const p = plan.rows[i];
  rows.push({
    budget: p.budget,
    capacity: p.capacity,
    simulatedHitRate: p.hitRate,
    liveHitRate: median(runs.map((x) => x.liveHitRate)),
    predictedTokensPerSecond: p.tokensPerSecond,
    measuredTokensPerSecond: measured,
    measuredRuns: runs.map((x) => x.tokensPerSecond),
    error: p.tokensPerSecond / measured - 1,
    boundTokensPerSecond: p.bounds.maxTokensPerSecond,
    predictedMs: p.seconds,
  });
  log(`${p.budget}: predicted ${p.tokensPerSecond.toFixed(1)} tok/s, measured ${measured.toFixed(1)} tok/s`);
}

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "-");
console.log(`\n${info.name}${info.note ? ` (${info.note})` : ""}: policy ${policy}, ${threads} thread(s), ${tokens} tokens per prompt, ${measureSet.length} measure prompts x ${reps} reps\n`);
console.log(
  table(
    ["device budget", "capacity", "decode hit rate (sim, profile prompts)", "decode hit rate (live, measure prompts)", "predicted tok/s", "measured tok/s", "error", "bound tok/s"],
    rows.map((r) => [r.budget, `${r.capacity}/${info.layers * info.experts}`, f(r.simulatedHitRate, 3), f(r.liveHitRate, 3), f(r.predictedTokensPerSecond), f(r.measuredTokensPerSecond), `${r.error >= 0 ? "+" : ""}${f(100 * r.error)}%`, f(r.boundTokensPerSecond, 0)])
  )
);
console.log(`\nhit rates replaying the profile trace (${summary.tokens} tokens):`);
console.log(
  table(
    ["capacity", "lru", "lfu", "score", "belady"],
    summary.capacities.map((c) => [`${c.capacity} (${Math.round(100 * c.share)}%)`, ...["lru", "lfu", "score", "belady"].map((pol) => f(summary.hitRates.find((h) => h.policy === pol && h.capacity === c.capacity)?.hitRate, 3))])
  )
);

writeJson(args.out, {
  bench: "profile-plan",
  date: new Date().toISOString(),
  machine: machineInfo(),
  checkout: checkoutInfo(),
  dist,
  busy,
  model: info,
  settings: { percents, threads, tokens, reps, policy, profilePrompts: profileSet.length, measurePrompts: measureSet.length },
  figures: { machine: { memoryReadGBps: figures.machine.memoryReadGBps }, model: figures.model, cached: figures.cached },
  plan,
  profileSummary: summary,
  rows,
});
log(`wrote ${path.relative(ROOT, args.out)}`);
