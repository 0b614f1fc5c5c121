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
 *      is a fresh loadModel (affinity's statistics file is restored to the warm-disjoint snapshot
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
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { createPolicy, ExpertCache, importModel, loadModel, readManifest, simulate } from "../dist/index.js";
import { expertKey } from "../dist/cache/types.js";
import { finishTrace } from "../dist/profiling/trace.js";
import { recordBytes } from "../dist/store/expertEncoding.js";
import { beNice, checkDistFresh, checkoutInfo, machineInfo, median, mib, otherHeavyProcesses, pct, requireQuietMachine, ROOT, table, writeJson } from "./lib/common.mjs";

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
const ACCURACY_PREDICTORS = ["gate", "pregate", "affinity", "reuse"];
const WARMUP_TEXT = "The quick brown fox jumps over the lazy dog.";
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
const statsFiles = () => fs.readdirSync(dir).filter((f) => f.startsWith("routing-stats.mdb"));
const clearStats = () => statsFiles().forEach((f) => fs.rmSync(path.join(dir, f), { recursive: true, force: true }));
const snapshotDir = path.join(work, "affinity-snapshot");
function snapshotStats() {
  fs.rmSync(snapshotDir, { recursive: true, force: true });
  fs.mkdirSync(snapshotDir);
  for (const f of statsFiles()) if (!f.endsWith("-lock")) fs.cpSync(path.join(dir, f), path.join(snapshotDir, f), { recursive: true });
}
function restoreStats() {
  clearStats();
  for (const f of fs.readdirSync(snapshotDir)) fs.cpSync(path.join(snapshotDir, f), path.join(dir, f), { recursive: true });
}
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
let tokenizerModel = await loadModel(dir, { threads: 1, log: () => {} });
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

async function accuracySession(predictor, ids) {
  const notes = [];
  const model = await loadModel(dir, { threads, predictor, prefetch: false, prefetchThreshold: threshold, schedule, log: (l) => notes.push(l) });
  try {
    const t = performance.now();
    await model.teacherForce(ids);
    const seconds = (performance.now() - t) / 1000;
    const s = model.cacheStats();
    if (s.prefetch !== undefined) problems.push(`accuracy ${predictor}: prefetch stats present although prefetch: false`);
    return { ...s.predictor, evalTokens: ids.length, seconds, tokPerS: ids.length / seconds, notes };
  } finally {
    await model.dispose(); // affinity saves its statistics here
  }
}

const accuracy = [];
if (!args["skip-accuracy"]) {
  log(`\n== accuracy: ${evalIds.length} teacher-forced tokens per session, prefetch off, unlimited budget`);
  const record = (key, predictor, state, r) => {
    accuracy.push({ key, predictor, state, ...r });
    log(`${key}: recall@${d.topK} ${pct(r.recall)}%, precision ${pct(r.precision)}% (${r.tokPerS.toFixed(0)} tok/s)`);
  };
  for (const p of ACCURACY_PREDICTORS) {
    if (p !== "affinity") {
      record(p, p, "stateless", await accuracySession(p, evalIds));
      continue;
    }
    if (statsFiles().length) problems.push(`a fresh import already has routing statistics: ${statsFiles().join(", ")}`);
    clearStats();
    record("affinity (cold)", p, "cold: fresh import, learns online", await accuracySession(p, evalIds));
    record("affinity (warm, same text)", p, "warm: second session over the same tokens (statistics include the test text)", await accuracySession(p, evalIds));
    clearStats();
    const train = await accuracySession(p, trainIds);
    snapshotStats(); // the statistics the speed runs start from
    record(
      "affinity (warm, disjoint)",
      p,
      `warm: statistics from a first session over ${trainIds.length} other held-out tokens, then the evaluation tokens`,
      await accuracySession(p, evalIds)
    );
    accuracy.at(-1).trainSession = { tokens: trainIds.length, recall: train.recall, precision: train.precision, seconds: train.seconds };
  }
} else if (predictors.includes("affinity")) {
  clearStats();
  await accuracySession("affinity", trainIds);
  snapshotStats();
}

// ---------------------------------------------------------------------------------------------
// Part 2: decode speed and hit rate under budgets, prefetch on.

/** FNV-1a over the routing decisions: equal hashes = identical routing. */
function mix(h, x) {
  h ^= x & 0xffff;
  h = Math.imul(h, 16777619) >>> 0;
  h ^= x >>> 16;
  return Math.imul(h, 16777619) >>> 0;
}

async function drive(model, prompt, maxTokens, onToken) {
  const tokens = [];
  const gen = model.generate(prompt, { maxTokens, temperature: 0, stopAtEos: false, onToken: (id) => (onToken?.(tokens.length), tokens.push(id)) });
  for (;;) {
    const n = await gen.next();
    if (n.done) return { tokens, stats: n.value };
  }
}

/** Recall@k of the predictions scored between two cumulative predictor reports. */
function recallSince(a, b, k) {
  let hits = 0;
  let tokens = 0;
  for (const l of b.layers) {
    const p = a?.layers.find((x) => x.layer === l.layer);
    const h0 = p ? Math.round(p.recall * p.tokens * k) : 0;
    hits += Math.round(l.recall * l.tokens * k) - h0;
    tokens += l.tokens - (p?.tokens ?? 0);
  }
  return tokens ? hits / (tokens * k) : NaN;
}

/**
 * One generation: fresh load, warm-up, cold cache, generate. With `record`, also returns the
 * routing log (for the oracle) and the trace records (for Belady).
 */
async function generationRun(prompt, loadOptions, { record = false, lookups = false } = {}) {
  const notes = [];
  const model = await loadModel(dir, { threads, policy: "lru", prefetchThreshold: threshold, schedule, ...loadOptions, log: (l) => notes.push(l) });
  const timing = { kernel: 0, acquire: 0, hook: 0, observe: 0 };
  let timed = false;
  const wrap = (obj, name, key) => {
    const orig = obj[name].bind(obj);
    obj[name] = (...a) => {
      if (!timed) return orig(...a);
      const t = performance.now();
      const r = orig(...a);
      if (r && typeof r.then === "function") return r.finally(() => (timing[key] += performance.now() - t));
      timing[key] += performance.now() - t;
      return r;
    };
  };
  // Instrumentation only (the same objects the runtime calls); no behaviour changes.
  wrap(model.experts, "onLayerRouted", "hook");
  if (model.predictor) wrap(model.predictor, "observe", "observe");
  const kernel = model.runner.kernel;
  wrap(kernel, "forward", "kernel");
  // The device cache's lookups in the runtime's own order (resident experts first within a layer).
  const lookupKeys = [];
  if (lookups) {
    const cache = model.experts.cache;
    const orig = cache.lookup.bind(cache);
    cache.lookup = (id) => (timed && lookupKeys.push(expertKey(id.layer, id.expert)), orig(id));
  }
  let hash = 2166136261;
  let forwardIndex = -1;
  const routingLog = [];
  const records = [];
  const stop = model.onRouting((layer, r) => {
    if (!timed) return;
    hash = mix(mix(hash, layer), r.tokens);
    for (const e of r.experts) hash = mix(hash, e);
    if (!record) return;
    if (layer === 0) {
      forwardIndex++;
      routingLog.push([]);
    }
    routingLog[routingLog.length - 1][layer] = { experts: r.experts.slice(), weights: r.weights.slice(), tokens: r.tokens, topK: r.topK };
    // What the runtime fetches for this forward and layer: each routed expert once.
    const w = new Map();
    for (let i = 0; i < r.experts.length; i++) w.set(r.experts[i], (w.get(r.experts[i]) ?? 0) + r.weights[i]);
    const experts = [...w.keys()].sort((a, b) => a - b);
    records.push({ seq: 0, token: forwardIndex, layer, experts, weights: experts.map((e) => w.get(e)) });
  });
  try {
    await drive(model, WARMUP_TEXT, 2); // JIT, onnxruntime's first runs of both shapes, page cache
    await model.experts.drain();
    model.experts.cache.clear();
    // Bench reset, not an API: prefetches of the warm-up that landed after their layer ran stay in
    // this map (never settled); cleared so the measured run's used/wasted count only its own.
    model.experts.prefetched?.clear();
    const before = model.cacheStats();
    // The acquire time is the runtime's own stall counter (time inside acquire).
    timed = true;
    let atPrefill;
    let timingAtPrefill;
    const t = performance.now();
    const { tokens, stats } = await drive(model, prompt.text, decodeTokens, (i) => {
      if (i === 0) {
        atPrefill = model.cacheStats();
        timingAtPrefill = { ...timing };
      }
    });
    const wall = (performance.now() - t) / 1000;
    timed = false;
    await model.experts.drain();
    const after = model.cacheStats();
    const c = after.cache;
    // Where the experts ran (the hybrid scheduler may give missing experts to the CPU pool).
    const sched = model.scheduleStats();
    const placement = { schedule: sched.schedule, device: 0, cpu: 0 };
    for (const l of sched.layers) {
      placement.device += l.device;
      placement.cpu += l.cpu;
    }
    const decodeHits = c.hits - atPrefill.cache.hits;
    const decodeMisses = c.misses - atPrefill.cache.misses;
    const pf = after.prefetch;
    const pf0 = before.prefetch;
    const pfAt = atPrefill.prefetch;
    const diff = (a, b) => (a && b ? Object.fromEntries(Object.keys(a).map((k) => [k, a[k] - b[k]])) : undefined);
    const run = {
      tokens,
      routingHash: hash.toString(16),
      promptTokens: stats.promptTokens,
      generatedTokens: stats.generatedTokens,
      prefillSeconds: stats.prefillSeconds,
      decodeSeconds: stats.decodeSeconds,
      decodeTokPerS: stats.decodeTokensPerSecond,
      wallSeconds: wall,
      hits: c.hits,
      misses: c.misses,
      decodeHits,
      decodeMisses,
      budgetBytes: after.tiers.device.budgetBytes,
      cacheBytes: after.tiers.device.cacheBytes,
      workingBytes: after.tiers.device.workingBytes,
      residentBytesMax: after.tiers.device.residentBytesMax,
      evictions: after.tiers.device.evictions,
      bytesIn: after.tiers.device.bytesIn,
      stallSeconds: after.stallSeconds - before.stallSeconds,
      decodeStallSeconds: after.stallSeconds - atPrefill.stallSeconds,
      prefetch: diff(pf, pf0),
      decodePrefetch: diff(pf, pfAt),
      // Next-layer recall over this generation only (the report is cumulative since load).
      predictor: after.predictor ? { recall: recallSince(before.predictor, after.predictor, model.dims.topK) } : undefined,
      // Decode only (after the first sampled token), like decodeSeconds.
      timing: {
        kernelSeconds: (timing.kernel - timingAtPrefill.kernel) / 1000,
        hookSeconds: (timing.hook - timingAtPrefill.hook) / 1000,
        observeSeconds: (timing.observe - timingAtPrefill.observe) / 1000,
      },
      kernel: model.expertKernel,
      placement,
      notes,
    };
    if (lookups) run.lookups = Int32Array.from(lookupKeys);
    return record ? { run, routingLog, records } : { run };
  } finally {
    stop();
    await model.dispose();
  }
}

/** Replays cache lookups (keys) on `capacity` one-unit experts; a miss inserts. Returns the stats. */
function replayKeys(keys, policy, capacity) {
  const cache = new ExpertCache({ capacityBytes: capacity, policy: createPolicy(policy, { future: policy === "belady" ? keys : undefined, numLayers: d.numLayers }), replay: true, layerStats: false });
  for (const k of keys) {
    const id = { layer: k >>> 16, expert: k & 0xffff };
    if (cache.lookup(id) === undefined) cache.insert(id, true, 1);
  }
  return cache.stats();
}

const speed = { rows: [], belady: [], reference: [] };
if (!args["skip-speed"]) {
  log(`\n== speed: ${prompts.length} prompts (${prompts.map((p) => p.tokens).join(", ")} tokens), ${decodeTokens} greedy tokens, ${reps} reps, budgets ${percents.join("/")}%, policy lru, prefetch on`);
  // References: unlimited budget, no predictor; the tokens every run must reproduce, the oracle's
  // log, the Belady trace.
  const refs = [];
  for (const [i, prompt] of prompts.entries()) {
    const r = await generationRun(prompt, {}, { record: true });
    refs.push(r);
    const trace = finishTrace(r.records, { model: modelInfo.source, numLayers: d.numLayers, numExperts: d.numExperts, expertBytes: recBytes }, `prompt ${i} trace`);
    r.trace = trace;
    r.prefillAccesses = trace.records.filter((x) => x.token === 0).reduce((a, x) => a + x.experts.length, 0);
    log(`reference prompt ${i} (${r.run.promptTokens} tokens): decode ${r.run.decodeTokPerS.toFixed(1)} tok/s unlimited, kernel ${r.run.kernel}; ${JSON.stringify(prompt.text.slice(0, 60))}...`);
  }
  speed.reference = refs.map((r, i) => ({ prompt: prompts[i], tokens: r.run.tokens, routingHash: r.run.routingHash, decodeTokPerS: r.run.decodeTokPerS }));

  const configs = [{ percent: 100, unlimited: true, predictor: "none" }];
  for (const percent of percents) {
    for (const predictor of predictors) configs.push({ percent, predictor, prefetch: predictor !== "none", label: predictor });
    for (const predictor of predictOnly) configs.push({ percent, predictor, prefetch: false, label: `${predictor} (predict only, prefetch off)` });
  }
  const runs = new Map(configs.map((c) => [c, []])); // config -> per rep: per prompt runs
  for (let rep = 0; rep < reps; rep++) {
    for (const cfg of configs) {
      noteBusy(`speed rep ${rep + 1}, ${cfg.unlimited ? "unlimited" : `${cfg.percent}% ${cfg.label}`}`);
      const perPrompt = [];
      for (const [i, prompt] of prompts.entries()) {
        if (cfg.predictor === "affinity") restoreStats();
        const options = cfg.unlimited ? {} : { deviceMem: { percent: cfg.percent } };
        if (cfg.predictor !== "none") Object.assign(options, { predictor: cfg.predictor, prefetch: cfg.prefetch, prefetchDepth: 1, oracleLog: refs[i].routingLog });
        const { run } = await generationRun(prompt, options, { lookups: rep === 0 && cfg.predictor === "none" && !cfg.unlimited });
        const ref = refs[i].run;
        run.identical = run.tokens.join() === ref.tokens.join();
        run.sameRouting = run.routingHash === ref.routingHash;
        run.withinBudget = run.residentBytesMax <= run.cacheBytes && (!Number.isFinite(run.budgetBytes) || run.residentBytesMax + run.workingBytes <= run.budgetBytes);
        const label = cfg.unlimited ? "unlimited none" : `${cfg.percent}% ${cfg.label}`;
        if (!run.identical) problems.push(`${label} prompt ${i} rep ${rep}: greedy tokens differ from the reference: ${JSON.stringify(run.tokens)} vs ${JSON.stringify(ref.tokens)}`);
        if (!run.sameRouting) problems.push(`${label} prompt ${i} rep ${rep}: routing differs from the reference`);
        if (!run.withinBudget) problems.push(`${label} prompt ${i} rep ${rep}: device high-water ${run.residentBytesMax} B exceeds cache bytes ${run.cacheBytes} (budget ${run.budgetBytes})`);
        const p = run.prefetch;
        if (p && p.used + p.wasted > p.issued) problems.push(`${label} prompt ${i} rep ${rep}: prefetch used ${p.used} + wasted ${p.wasted} > issued ${p.issued}`);
        delete run.tokens;
        if (run.lookups) {
          cfg.lookups ??= [];
          cfg.lookups[i] = run.lookups;
          delete run.lookups;
        }
        perPrompt.push(run);
      }
      runs.get(cfg).push(perPrompt);
    }
    noteBusy(`after speed rep ${rep + 1}`);
    log(`rep ${rep + 1}/${reps} done (${((performance.now() - started) / 1000).toFixed(0)} s)`);
  }

  // Per repetition, pool the prompts; then medians over repetitions.
  const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) ?? 0), 0);
  for (const cfg of configs) {
    const perRep = runs.get(cfg).map((rs) => {
      const decodeSteps = sum(rs, (r) => r.generatedTokens - 1);
      const decodeSeconds = sum(rs, (r) => r.decodeSeconds);
      const pfKeys = ["issued", "used", "wasted", "dropped", "late", "stallSavedSeconds"];
      const pf = rs[0].prefetch ? Object.fromEntries(pfKeys.map((k) => [k, sum(rs, (r) => r.prefetch[k])])) : undefined;
      return {
        decodeTokPerS: decodeSteps / decodeSeconds,
        decodeSeconds,
        hitRate: sum(rs, (r) => r.hits) / sum(rs, (r) => r.hits + r.misses),
        decodeHitRate: sum(rs, (r) => r.decodeHits) / sum(rs, (r) => r.decodeHits + r.decodeMisses),
        misses: sum(rs, (r) => r.misses),
        stallSeconds: sum(rs, (r) => r.stallSeconds),
        decodeStallSeconds: sum(rs, (r) => r.decodeStallSeconds),
        kernelSeconds: sum(rs, (r) => r.timing.kernelSeconds),
        hookSeconds: sum(rs, (r) => r.timing.hookSeconds),
        otherSeconds: sum(rs, (r) => r.decodeSeconds - r.decodeStallSeconds - r.timing.hookSeconds - r.timing.kernelSeconds),
        observeSeconds: sum(rs, (r) => r.timing.observeSeconds),
        prefillSeconds: sum(rs, (r) => r.prefillSeconds),
        wallSeconds: sum(rs, (r) => r.wallSeconds),
        prefetch: pf,
        recall: rs[0].predictor ? sum(rs, (r) => r.predictor.recall) / rs.length : undefined,
      };
    });
    const med = (f) => median(perRep.map(f));
    const all = runs.get(cfg).flat();
    speed.rows.push({
      percent: cfg.percent,
      unlimited: !!cfg.unlimited,
      predictor: cfg.predictor,
      label: cfg.label ?? cfg.predictor,
      prefetchOn: !!cfg.prefetch,
      budgetBytes: all[0].budgetBytes,
      cacheBytes: all[0].cacheBytes,
      capacityExperts: Number.isFinite(all[0].budgetBytes) ? Math.floor(all[0].cacheBytes / recBytes) : d.numLayers * d.numExperts,
      decodeTokPerS: med((r) => r.decodeTokPerS),
      decodeTokPerSRuns: perRep.map((r) => r.decodeTokPerS),
      hitRate: med((r) => r.hitRate),
      decodeHitRate: med((r) => r.decodeHitRate),
      stallSeconds: med((r) => r.stallSeconds),
      decodeStallSeconds: med((r) => r.decodeStallSeconds),
      kernelSeconds: med((r) => r.kernelSeconds),
      hookSeconds: med((r) => r.hookSeconds),
      otherSeconds: med((r) => r.otherSeconds),
      observeSeconds: med((r) => r.observeSeconds),
      decodeSeconds: med((r) => r.decodeSeconds),
      wallSeconds: med((r) => r.wallSeconds),
      prefetch: perRep[0].prefetch ? Object.fromEntries(Object.keys(perRep[0].prefetch).map((k) => [k, med((r) => r.prefetch[k])])) : undefined,
      liveRecall: perRep[0].recall !== undefined ? med((r) => r.recall) : undefined,
      identical: all.every((r) => r.identical),
      sameRouting: all.every((r) => r.sameRouting),
      withinBudget: all.every((r) => r.withinBudget),
      residentBytesMax: Math.max(...all.map((r) => r.residentBytesMax)),
      kernel: all[0].kernel,
      notes: [...new Set(all.flatMap((r) => r.notes))],
      perRep,
      runs: runs.get(cfg).map((rs) => rs.map(({ notes, ...r }) => r)),
    });
  }

  // Belady per capacity: simulate() of the reference routing (expert-id order within a layer), and
  // a replay of the live lookups of the "none" run at that budget (the runtime's own order, resident
  // experts first): lru on those must reproduce the live counts exactly, Belady on them is the
  // optimum for that order.
  for (const percent of percents) {
    const none = configs.find((c) => c.percent === percent && c.predictor === "none" && !c.unlimited);
    const capacity = speed.rows.find((r) => r.percent === percent && !r.unlimited).capacityExperts;
    const res = { percent, capacity, belady: { hits: 0, accesses: 0, decodeAccesses: 0 }, simulateLru: { hits: 0, accesses: 0 } };
    for (const ref of refs) {
      const sim = simulate(ref.trace, { capacities: [capacity], policies: ["belady", "lru"], policyOptions: { numLayers: d.numLayers } });
      const b = sim.find((s) => s.policy === "belady");
      const l = sim.find((s) => s.policy === "lru");
      res.belady.hits += b.hits;
      res.belady.accesses += b.accesses;
      // The prompt is one forward: every (layer, expert) is fetched once there, so all its
      // accesses miss under any policy and the decode hit rate is hits / decode accesses.
      res.belady.decodeAccesses += b.accesses - ref.prefillAccesses;
      res.simulateLru.hits += l.hits;
      res.simulateLru.accesses += l.accesses;
    }
    res.belady.hitRate = res.belady.hits / res.belady.accesses;
    res.belady.decodeHitRate = res.belady.hits / res.belady.decodeAccesses;
    res.simulateLru.hitRate = res.simulateLru.hits / res.simulateLru.accesses;
    if (none?.lookups) {
      const live = runs.get(none)[0]; // rep 0, per prompt
      const liveOrder = { lruHits: 0, beladyHits: 0, accesses: 0, liveHits: 0, liveAccesses: 0, decodeAccesses: 0 };
      none.lookups.forEach((keys, i) => {
        const lru = replayKeys(keys, "lru", capacity);
        const bel = replayKeys(keys, "belady", capacity);
        liveOrder.lruHits += lru.hits;
        liveOrder.beladyHits += bel.hits;
        liveOrder.accesses += keys.length;
        liveOrder.liveHits += live[i].hits;
        liveOrder.liveAccesses += live[i].hits + live[i].misses;
        liveOrder.decodeAccesses += keys.length - refs[i].prefillAccesses;
        if (lru.hits !== live[i].hits || keys.length !== live[i].hits + live[i].misses) {
          problems.push(`${percent}% prompt ${i}: replay of the live lookups under lru gives ${lru.hits}/${keys.length} hits, live ${live[i].hits}/${live[i].hits + live[i].misses}`);
        }
        if (keys.length !== refs[i].trace.records.reduce((a, r) => a + r.experts.length, 0)) problems.push(`${percent}% prompt ${i}: ${keys.length} live lookups vs ${refs[i].trace.records.reduce((a, r) => a + r.experts.length, 0)} in the routing trace`);
      });
      liveOrder.beladyHitRate = liveOrder.beladyHits / liveOrder.accesses;
      liveOrder.beladyDecodeHitRate = liveOrder.beladyHits / liveOrder.decodeAccesses;
      liveOrder.lruHitRate = liveOrder.lruHits / liveOrder.accesses;
      res.liveOrder = liveOrder;
      delete none.lookups;
    }
    speed.belady.push(res);
  }
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
