#!/usr/bin/env node
/**
 * Expert predictors and the prefetch pipeline (issue "Cross-layer gate predictor and prefetch
 * pipeline"), on the trained model models/moe-tiny-en (or models/tiny-qwen3-moe while it is not
 * there, with the reason recorded):
 *
 *   1. Accuracy. Held-out text (the model's validation.txt) is tokenized with model.tokenize and fed
 *      through the decode path one token at a time with model.teacherForce (the KV cache restarts
 *      when the context is full). Each predictor runs in its own session with prefetch: false and
 *      an unlimited device budget, so only prediction is measured; cacheStats().predictor gives
 *      next-layer recall@k (predicted top-k vs routed top-k) and precision (predicted top-k with
 *      p >= the prefetch threshold, 0.05) per predicted layer and in aggregate.
 *      Affinity learns online and persists its counts in <model>/routing-stats.mdb, so it is
 *      measured three ways on the same evaluation tokens:
 *        cold           fresh import, no statistics (it still learns as it goes);
 *        warm-same      a second session over the same text (statistics include the test text);
 *        warm-disjoint  statistics from a first session over other held-out tokens (disjoint from
 *                       the evaluation tokens and from the prompts of part 2), then the evaluation.
 *   2. Speed under budgets. For each budget ({percent} of all experts' bytes) and predictor
 *      (none, gate, pregate, affinity, reuse, oracle), policy lru, prefetch on (depth 1, threshold
 *      0.05): greedy generation of --decode-tokens tokens from --prompts held-out prompts. Every run
 *      is a fresh loadModelOnThisThread (affinity's statistics file is restored to the warm-disjoint snapshot
 *      first, so no run learns from another; the oracle gets the routing log of the reference run of
 *      its prompt), a 2-token warm-up on an unrelated text, then the device tier is drained and
 *      cleared (cold start) and the prompt is generated. One repetition = all prompts; decode tok/s
 *      and hit rates pool the prompts; the tables show medians over --reps repetitions (the
 *      configurations are interleaved within a repetition so drift hits all of them alike).
 *      Belady: the reference run's routing (unlimited budget, no predictor), one record per forward
 *      and layer with the experts the runtime fetches (the union over the chunk's tokens), replayed
 *      per prompt with simulate() at capacity = floor(cache bytes / record bytes), cold start. It is
 *      the demand-paging optimum; prefetching can beat it (a prefetched expert counts as a hit).
 *      Checks: the greedy tokens and the routing of every run equal the reference; the device tier's
 *      high-water mark stays within the cache bytes.
 *      The runtime's hybrid scheduler (default "auto" with native kernels) may compute missing experts
 *      on its CPU pool instead of loading them; each run records where its experts ran.
 *      --predict-only adds rows with the predictor on and prefetch off (prediction cost alone).
 *      Where time goes: expert kernel, waiting in acquire (stall: demand reads + late prefetches),
 *      the routing hook (predictor + scoring + prefetch issue), the rest (attention graphs, head,
 *      JS), measured by wrapping those calls.
 *
 *   npx tsc -p tsconfig.json && nice -n 5 node bench/predictors.mjs [--reps 3] [--decode-tokens 128]
 *       [--prompts 3] [--prompt-tokens 32] [--eval-tokens 2048] [--affinity-train-tokens 4096]
 *       [--percents 25,50] [--predictors none,gate,pregate,affinity,reuse,oracle] [--predict-only gate]
 *       [--threads N] [--schedule auto|device|cpu]
 *       [--model models/moe-tiny-en] [--skip-accuracy] [--skip-speed] [--allow-busy]
 *       [--out bench/results/predictors.json]
 *
 * This file parses the flags, imports the model, picks the held-out tokens and prompts, and prints
 * and writes the results; part 1 lives in bench/lib/predictorAccuracy.mjs, part 2 in
 * bench/lib/predictorSpeed.mjs.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { importModel, loadModelOnThisThread, readManifest } from "../dist/index.js";
import { recordBytes } from "../dist/store/expertEncoding.js";
import { beNice, checkDistFresh, checkoutInfo, machineInfo, mib, otherHeavyProcesses, pct, requireQuietMachine, ROOT, table, writeJson } from "./lib/common.mjs";
import { affinityStats, measureAccuracy, trainAffinity } from "./lib/predictorAccuracy.mjs";
import { measureSpeed } from "./lib/predictorSpeed.mjs";

const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: path.join(ROOT, "models", "moe-tiny-en") },
    fallback: { type: "string", default: path.join(ROOT, "models", "tiny-qwen3-moe") },
    text: { type: "string", default: path.join(ROOT, "models", "moe-tiny-en", "validation.txt") },
    work: { type: "string", default: "" },
    reps: { type: "string", default: "3" },
    "decode-tokens": { type: "string", default: "128" },
    prompts: { type: "string", default: "3" },
    "prompt-tokens": { type: "string", default: "32" },
    "eval-tokens": { type: "string", default: "2048" },
    "affinity-train-tokens": { type: "string", default: "4096" },
    percents: { type: "string", default: "25,50" },
    predictors: { type: "string", default: "none,gate,pregate,affinity,reuse,oracle" },
    // Predictors also run with prefetch off (prediction and scoring only): isolates the hook's cost.
    "predict-only": { type: "string", default: "gate" },
    threshold: { type: "string", default: "0.05" },
    threads: { type: "string", default: String(os.availableParallelism()) },
    // Where experts run (auto | device | cpu); default: the runtime's own default.
    schedule: { type: "string", default: "" },
    "skip-accuracy": { type: "boolean", default: false },
    "skip-speed": { type: "boolean", default: false },
    "allow-busy": { type: "boolean", default: false },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "predictors.json") },
  },
});
const reps = Number(args.reps);
const decodeTokens = Number(args["decode-tokens"]);
const numPrompts = Number(args.prompts);
const promptTokens = Number(args["prompt-tokens"]);
const evalTokens = Number(args["eval-tokens"]);
const affinityTrainTokens = Number(args["affinity-train-tokens"]);
const percents = args.percents.split(",").filter(Boolean).map(Number);
const predictors = args.predictors.split(",").filter(Boolean);
const predictOnly = args["predict-only"].split(",").filter(Boolean);
const threshold = Number(args.threshold);
const threads = Number(args.threads);
const schedule = args.schedule || undefined;
const log = (line) => process.stderr.write(line + "\n");
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "-");

const nice = beNice(5);
const machine = machineInfo(); // at start: its load average is the one before this run
const busy = requireQuietMachine(args["allow-busy"], log);
const dist = checkDistFresh(log);
const started = performance.now();
const problems = [];
/** Heavy processes (benchmarks, training) seen while this one ran: their timings are suspect. */
const busyDuring = new Map();
function noteBusy(when) {
  for (const o of otherHeavyProcesses()) if (!busyDuring.has(o.pid)) busyDuring.set(o.pid, { pid: o.pid, args: o.args.slice(0, 200), firstSeen: when });
}

// ---------------------------------------------------------------------------------------------
// Model: a fresh import into a temporary directory (so affinity starts cold).

let hf = path.resolve(args.model);
let modelNote;
const complete = (d) => fs.existsSync(path.join(d, "config.json")) && fs.existsSync(d) && fs.readdirSync(d).some((f) => f.endsWith(".safetensors"));
if (!complete(hf)) {
  modelNote = `${path.relative(ROOT, hf)} has no complete checkpoint (config.json + *.safetensors); used ${path.relative(ROOT, args.fallback)} instead`;
  log(`NOTE: ${modelNote}`);
  hf = path.resolve(args.fallback);
}
const work = args.work ? path.resolve(args.work) : fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-predictors-"));
fs.mkdirSync(work, { recursive: true });
const dir = path.join(work, "model");
const t0 = performance.now();
await importModel(hf, dir, { progress: false, force: true, log });
const importSeconds = (performance.now() - t0) / 1000;
const manifest = readManifest(dir);
const d = manifest.dims;
const recBytes = recordBytes(manifest.precision.experts, d.hiddenSize, d.expertFfn);
const stats = affinityStats(dir, path.join(work, "affinity-snapshot"));
const modelInfo = {
  source: path.relative(ROOT, hf),
  note: modelNote,
  modelType: d.modelType,
  layers: d.numLayers,
  experts: d.numExperts,
  topK: d.topK,
  hidden: d.hiddenSize,
  expertFfn: d.expertFfn,
  contextSize: d.maxPositions,
  encoding: manifest.precision.experts,
  recordBytes: recBytes,
  expertBytes: recBytes * d.numExperts * d.numLayers,
  importSeconds,
};
log(
  `model ${modelInfo.source}: ${d.modelType}, ${d.numLayers} layers, ${d.numExperts} experts x ${d.expertFfn} top-${d.topK}, hidden ${d.hiddenSize}, ` +
    `${mib(recBytes)} MiB per expert, ${mib(modelInfo.expertBytes)} MiB of experts (imported in ${importSeconds.toFixed(1)} s)`
);

// ---------------------------------------------------------------------------------------------
// Held-out text: evaluation tokens first, then affinity's training tokens, prompts after both.

const text = fs.readFileSync(args.text, "utf8");
let tokenizerModel = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
const allIds = tokenizerModel.tokenize(text);
const evalIds = allIds.slice(0, evalTokens);
const trainIds = allIds.slice(evalTokens, evalTokens + affinityTrainTokens);
if (evalIds.length < evalTokens || trainIds.length < affinityTrainTokens) throw new Error(`${args.text} has ${allIds.length} tokens; need ${evalTokens} + ${affinityTrainTokens} + prompts`);
// Prompts: paragraphs starting after the text those tokens cover (plus a margin), evenly spaced.
const usedChars = tokenizerModel.tokenizer.decode(allIds.slice(0, evalTokens + affinityTrainTokens)).length;
const paragraphs = [];
{
  const re = /\n\s*\n/g;
  let at = 0;
  for (;;) {
    const m = re.exec(text);
    const end = m ? m.index : text.length;
    const p = text.slice(at, end).trim();
    if (at > usedChars * 1.05 + 2000 && p.length > 0) {
      const ids = tokenizerModel.tokenize(p);
      if (ids.length > promptTokens) paragraphs.push({ at, ids });
    }
    if (!m) break;
    at = m.index + m[0].length;
  }
}
if (paragraphs.length < numPrompts) throw new Error(`only ${paragraphs.length} paragraphs of > ${promptTokens} tokens after the evaluation and training text`);
const prompts = Array.from({ length: numPrompts }, (_, i) => {
  const p = paragraphs[Math.floor(((i + 0.5) * paragraphs.length) / numPrompts)];
  const promptText = tokenizerModel.tokenizer.decode(p.ids.slice(0, promptTokens));
  return { text: promptText, charOffset: p.at, tokens: tokenizerModel.tokenize(promptText).length };
});
await tokenizerModel.dispose();
tokenizerModel = undefined;
log(`held-out text: ${allIds.length} tokens; evaluation ${evalIds.length}, affinity training ${trainIds.length} (disjoint), ${prompts.length} prompts from char offset ${prompts[0].charOffset}+ (text covered by the tokens above: ${usedChars} chars)`);

// ---------------------------------------------------------------------------------------------
// Part 1: prediction accuracy (teacher forcing, prefetch off, unlimited budget).

const session = { dir, threads, threshold, schedule, problems, log };
const accuracyCtx = { ...session, topK: d.topK, evalIds, trainIds, stats };
let accuracy = [];
if (!args["skip-accuracy"]) accuracy = await measureAccuracy(accuracyCtx);
else if (predictors.includes("affinity")) await trainAffinity(accuracyCtx);

// ---------------------------------------------------------------------------------------------
// Part 2: decode speed and hit rate under budgets, prefetch on.

let speed = { rows: [], belady: [], reference: [] };
if (!args["skip-speed"]) {
  speed = await measureSpeed({
    ...session,
    decodeTokens,
    reps,
    percents,
    predictors,
    predictOnly,
    prompts,
    dims: d,
    recBytes,
    modelSource: modelInfo.source,
    restoreStats: stats.restoreStats,
    noteBusy,
    started,
    log,
  });
}

// ---------------------------------------------------------------------------------------------
// Report.

const lines = [];
lines.push(
  `### Predictors on ${modelInfo.source}${modelNote ? ` (${modelNote})` : ""}`,
  `${d.modelType}, ${d.numLayers} layers, ${d.numExperts} experts x ${d.expertFfn} top-${d.topK}, hidden ${d.hiddenSize}; ${manifest.precision.experts} experts, ` +
    `${mib(recBytes)} MiB each, ${mib(modelInfo.expertBytes)} MiB in all. ${threads} threads, nice ${nice}` +
    (speed.rows.length ? `, expert kernel ${speed.rows[0].kernel}.` : "."),
  ""
);
if (accuracy.length) {
  lines.push(
    `#### Next-layer prediction accuracy (${evalIds.length} held-out tokens, teacher-forced through the decode path, prefetch off, unlimited budget)`,
    "",
    `recall@${d.topK} = |predicted top-${d.topK} ∩ routed top-${d.topK}| / ${d.topK}; precision = share of predicted top-${d.topK} with p >= ${threshold} that were routed. ` +
      `Layers 1..${d.numLayers - 1} are predicted from the layer before. Chance: recall ${pct(d.topK / d.numExperts)}%.`,
    ""
  );
  lines.push(
    table(
      ["predictor", "statistics", `recall@${d.topK}`, "precision", "min / max layer recall", "tok/s"],
      accuracy.map((a) => [
        a.key,
        a.state,
        `${pct(a.recall)}%`,
        `${pct(a.precision)}%`,
        `${pct(Math.min(...a.layers.map((l) => l.recall)))}% / ${pct(Math.max(...a.layers.map((l) => l.recall)))}%`,
        fmt(a.tokPerS, 0),
      ])
    ),
    ""
  );
  lines.push("Per predicted layer, recall@k / precision:", "");
  const layerIds = accuracy[0].layers.map((l) => l.layer);
  lines.push(
    table(
      ["layer", ...accuracy.map((a) => a.key)],
      layerIds.map((l) => [String(l), ...accuracy.map((a) => { const x = a.layers.find((y) => y.layer === l); return x ? `${pct(x.recall)} / ${pct(x.precision)}` : "-"; })])
    ),
    ""
  );
}
if (speed.rows.length) {
  const unl = speed.rows.find((r) => r.unlimited);
  lines.push(
    `#### Decode under device budgets, prefetch on (depth 1, threshold ${threshold}), policy lru`,
    "",
    `${prompts.length} held-out prompts (${prompts.map((p) => p.tokens).join(", ")} tokens), ${decodeTokens} greedy tokens each, cold cache per generation; ` +
      `medians over ${reps} repetitions, each pooling all prompts. Unlimited budget, no predictor: ${fmt(unl.decodeTokPerS)} tok/s. ` +
      `hit = over the whole generation; decode hit = after the prompt. Belady = simulate() of the reference routing at the same capacity (demand paging, no prefetch).`,
    ""
  );
  for (const percent of percents) {
    const rows = speed.rows.filter((r) => r.percent === percent && !r.unlimited);
    const b = speed.belady.find((x) => x.percent === percent);
    const none = rows.find((r) => r.predictor === "none");
    lines.push(`${percent}% budget: ${mib(rows[0].budgetBytes)} MiB, cache ${mib(rows[0].cacheBytes)} MiB = ${rows[0].capacityExperts} of ${d.numLayers * d.numExperts} experts`, "");
    const body = rows.map((r) => {
      const p = r.prefetch;
      return [
        r.label,
        `${fmt(r.decodeTokPerS)} (${fmt(Math.min(...r.decodeTokPerSRuns), 0)}-${fmt(Math.max(...r.decodeTokPerSRuns), 0)})`,
        none ? `${r.decodeTokPerS >= none.decodeTokPerS ? "+" : ""}${fmt((100 * (r.decodeTokPerS - none.decodeTokPerS)) / none.decodeTokPerS)}%` : "-",
        `${pct(r.hitRate)}%`,
        `${pct(r.decodeHitRate)}%`,
        r.liveRecall !== undefined ? `${pct(r.liveRecall)}%` : "-",
        p ? String(p.issued) : "-",
        p ? String(p.used) : "-",
        p ? String(p.wasted) : "-",
        p ? `${p.dropped} / ${p.late}` : "-",
        fmt(r.decodeSeconds, 2),
        fmt(r.decodeStallSeconds, 2),
        fmt(r.hookSeconds, 2),
        fmt(r.kernelSeconds, 2),
        fmt(r.otherSeconds, 2),
        r.identical && r.sameRouting ? "yes" : "NO",
      ];
    });
    const dash = (n) => new Array(n).fill("-");
    body.push(["belady (simulate, id order)", "-", "-", `${pct(b.belady.hitRate)}%`, `${pct(b.belady.decodeHitRate)}%`, ...dash(11)]);
    if (b.liveOrder) body.push(["belady (runtime order)", "-", "-", `${pct(b.liveOrder.beladyHitRate)}%`, `${pct(b.liveOrder.beladyDecodeHitRate)}%`, ...dash(11)]);
    lines.push(
      table(
        ["predictor", "decode tok/s (min-max)", "vs none", "hit", "decode hit", "live recall", "prefetch issued", "used", "wasted", "dropped / late", "decode s", "stall s", "hook s", "kernel s", "other s", "identical"],
        body
      ),
      ""
    );
    if (b.liveOrder) {
      lines.push(
        `Trace check (lru, no predictor): live ${pct(b.liveOrder.liveHits / b.liveOrder.liveAccesses)}%, replay of the live lookups ${pct(b.liveOrder.lruHitRate)}%, ` +
          `simulate() of the routing in expert-id order ${pct(b.simulateLru.hitRate)}% (the runtime computes resident experts first, which LRU rewards).`,
        ""
      );
    }
  }
  lines.push(
    "Decode time, summed over the prompts of a repetition (median repetition): decode s = wall time after the first sampled token; stall s = inside acquire " +
      "(demand reads from the store, waits for prefetches in flight, and whatever else runs meanwhile, e.g. GC); hook s = the per-layer routing hook on the main thread " +
      "(predictor, scoring, prefetch issue); kernel s = expert kernel; other s = the rest (attention and head graphs, routing, JS, GC outside acquire). " +
      "Prefetch counts are per repetition (all prompts, prompt forwards included); tok/s min-max over repetitions.",
    ""
  );
  const allRuns = speed.rows.flatMap((r) => r.runs.flat());
  const schedules = [...new Set(allRuns.map((r) => r.placement.schedule))].join(", ");
  const cpuPlaced = allRuns.reduce((a, r) => a + r.placement.cpu, 0);
  lines.push(
    `Schedule ${schedules}: ${cpuPlaced} expert computations of all runs went to the CPU pool ` +
      `(${cpuPlaced === 0 ? "all ran on the device side through the cache, so hit rates and stalls cover every expert" : "those bypass the device tier's acquire; see placement in the JSON"}).`,
    ""
  );
  const allIdentical = speed.rows.every((r) => r.identical && r.sameRouting);
  lines.push(
    `Greedy output identical to the reference (unlimited, no predictor) in every configuration, prompt and repetition: ${allIdentical ? "yes" : "NO"}; ` +
      `routing identical: ${speed.rows.every((r) => r.sameRouting) ? "yes" : "NO"}; device tier within budget: ${speed.rows.every((r) => r.withinBudget) ? "yes" : "NO"}.`
  );
}
noteBusy("end");
if (busyDuring.size) {
  const list = [...busyDuring.values()];
  lines.push("", `WARNING: other heavy processes ran during this benchmark; its timings are not comparable:`, ...list.map((o) => `- pid ${o.pid} (first seen ${o.firstSeen}): ${o.args}`));
  problems.push(`other heavy processes ran during the benchmark: ${list.map((o) => o.pid).join(", ")}`);
}
const report = lines.join("\n");
console.log(report);
if (problems.length) console.log(`\nPROBLEMS:\n${problems.map((p) => `- ${p}`).join("\n")}`);

writeJson(args.out, {
  bench: "predictors",
  date: new Date().toISOString(),
  command: process.argv.slice(1).join(" "),
  machine,
  checkout: checkoutInfo(),
  dist,
  busy,
  busyDuring: [...busyDuring.values()],
  nice,
  options: { schedule: schedule ?? "(runtime default)", reps, decodeTokens, prompts: numPrompts, promptTokens, evalTokens, affinityTrainTokens, percents, predictors, predictOnly, threshold, threads, policy: "lru", prefetchDepth: 1, text: path.relative(ROOT, args.text) },
  model: modelInfo,
  heldOut: { totalTokens: allIds.length, evalTokens: evalIds.length, affinityTrainTokens: trainIds.length, prompts },
  accuracy: accuracy.map((a) => ({ ...a, chanceRecall: d.topK / d.numExperts })),
  speed,
  problems,
  loadAvgAtEnd: os.loadavg(),
  seconds: (performance.now() - started) / 1000,
});
log(`wrote ${path.relative(process.cwd(), args.out)} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
if (!args.work) fs.rmSync(work, { recursive: true, force: true });
