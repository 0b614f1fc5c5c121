#!/usr/bin/env node
/**
 * Expert cache policies under device-memory budgets: decode tokens/s and hit rate per policy
 * (lru, lfu, layer-lru, score, shallow) at 25/50/75/100% of the model's expert bytes, beside
 * Belady's MIN at the same capacity, on
 *   (a) the trained model models/moe-tiny-en (or models/tiny-qwen3-moe while it is not there), and
 *   (b) a synthetic Mixtral-shaped model with >= 2 GB of expert bytes in the store.
 * Fixed prompt, greedy decoding, medians over --reps cold-cache generations per configuration.
 *
 * Method
 *   - One unlimited-budget run per model gives the reference tokens and the routing trace (via
 *     model.onRouting). The trace mirrors the runtime's cache accesses exactly: per forward and
 *     layer, the router probabilities of each token (observeRouting) and then each routed expert
 *     once, in expert-id order (prefill chunks are grouped by expert, as ModelRunner does).
 *   - Each (policy, budget) loads the model with { deviceMem: { percent }, policy }, warms up with
 *     a 2-token generation, then per repetition clears the device tier (cold start) and generates.
 *     Hit rates are model.cacheStats() over the whole generation (prefill + decode) and, from a
 *     snapshot at the first sampled token, over decode only.
 *   - simulate() replays the reference trace with capacity = floor(cache bytes / record bytes),
 *     cache bytes = budget - the kernel's working bytes (what the runtime's cache gets; at 100% the
 *     cache therefore holds all experts but one). Belady there is the optimum for that capacity; the
 *     demand policies' replays must equal the live counts (checked: it shows the trace is faithful).
 *   - Lossless: every generation's tokens must equal the reference; the routing of every run is
 *     hashed and compared too. Budget: the device tier's high-water mark must stay within budget.
 *   The store stays in the page cache (no host budget): misses cost a copy from RAM, not disk.
 *   --schedule device (default) runs every expert through the device tier, so the numbers are the
 *   replacement policy's; with auto, the hybrid scheduler computes some non-resident experts on
 *   the CPU pool straight from the store (counted as misses, never inserted).
 *
 *   npx tsc -p tsconfig.json && nice -n 5 node bench/cache-policies.mjs [--work DIR] [--reps 3]
 *       [--decode-tokens 64] [--synthetic-decode-tokens 16] [--models trained,synthetic] [--policies lru,lfu,layer-lru,score,shallow]
 *       [--percents 25,50,75,100] [--synthetic-shape 24L-1024H-3584F-8E-top2] [--synthetic-experts int8]
 *       [--threads N] [--schedule device|auto|cpu] [--allow-busy] [--out bench/results/cache-policies.json]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { loadModelOnThisThread, simulate, ExpertCache, createPolicy } from "../dist/index.js";
import { finishTrace, accessSequence, recordProbs } from "../dist/profiling/trace.js";
import { writeJsonlTrace } from "../dist/profiling/jsonlTrace.js";
import { beNice, checkDistFresh, checkoutInfo, machineInfo, median, mib, pct, requireQuietMachine, ROOT, table, writeJson } from "./lib/common.mjs";
import { syntheticModel, trainedModel } from "./lib/benchModels.mjs";

const { values: args } = parseArgs({
  options: {
    work: { type: "string", default: path.join(os.tmpdir(), "moe-run-cache-bench") },
    reps: { type: "string", default: "3" },
    "decode-tokens": { type: "string", default: "64" },
    "synthetic-decode-tokens": { type: "string", default: "16" },
    prompt: { type: "string", default: "Once upon a time, there was a little robot who wanted to see the sea." },
    models: { type: "string", default: "trained,synthetic" },
    policies: { type: "string", default: "lru,lfu,layer-lru,score,shallow" },
    percents: { type: "string", default: "25,50,75,100" },
    "synthetic-shape": { type: "string", default: "24L-1024H-3584F-8E-top2" },
    "synthetic-experts": { type: "string", default: "int8" },
    "keep-hf": { type: "boolean", default: false },
    threads: { type: "string", default: String(os.availableParallelism()) },
    schedule: { type: "string", default: "device" },
    "allow-busy": { type: "boolean", default: false },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "cache-policies.json") },
  },
});
const reps = Number(args.reps);
const threads = Number(args.threads);
const policies = args.policies.split(",").filter(Boolean);
const percents = args.percents.split(",").filter(Boolean).map(Number);
const log = (line) => process.stderr.write(line + "\n");

const nice = beNice(5);
const busy = requireQuietMachine(args["allow-busy"], log);
const dist = checkDistFresh(log);
fs.mkdirSync(args.work, { recursive: true });
const started = performance.now();

/** FNV-1a over the routing decisions of a run: equal hashes = identical routing. */
function hashRouting(h, layer, routing) {
  const mix = (x) => {
    h ^= x & 0xffff;
    h = Math.imul(h, 16777619) >>> 0;
    h ^= x >>> 16;
    h = Math.imul(h, 16777619) >>> 0;
  };
  mix(layer);
  mix(routing.tokens);
  for (const e of routing.experts) mix(e);
  return h;
}

/** Runs the generator to the end; returns { tokens, stats }. */
async function generate(model, maxTokens, extra = {}) {
  const tokens = [];
  const gen = model.generate(args.prompt, { maxTokens, temperature: 0, stopAtEos: false, ...extra, onToken: (id) => (extra.onToken?.(id, tokens.length), tokens.push(id)) });
  for (;;) {
    const n = await gen.next();
    if (n.done) return { tokens, stats: n.value };
  }
}

/**
 * One configuration: load, warm up, `reps` cold-cache generations. With `trace`, the first
 * repetition's routing is recorded as a trace in routing order (each forward and layer: the router
 * probabilities of each token, then each routed expert once, by expert id). Every configuration's
 * first repetition also records the device cache's actual calls (lookups and router observations,
 * in order) so that they can be replayed exactly.
 */
async function runConfig(dir, loadOptions, { trace = false, decodeTokens }) {
  const notes = [];
  // On this thread: onRouting records the trace and the cache is read between tokens.
  const model = await loadModelOnThisThread(dir, { threads, schedule: args.schedule, ...loadOptions, log: (l) => notes.push(l) });
  const E = model.dims.numExperts;
  let hash = 0;
  let recording;
  let eventIndex = 0;
  const unsubscribe = model.onRouting((layer, routing) => {
    hash = hashRouting(hash, layer, routing);
    if (!recording) return;
    const used = new Map();
    for (let i = 0; i < routing.tokens * routing.topK; i++) used.set(routing.experts[i], (used.get(routing.experts[i]) ?? 0) + routing.weights[i]);
    const experts = [...used.keys()].sort((a, b) => a - b);
    for (let t = 0; t < routing.tokens; t++) {
      const last = t === routing.tokens - 1;
      recording.push({
        seq: 0,
        token: eventIndex++,
        layer,
        experts: last ? experts : [],
        weights: last ? experts.map((e) => used.get(e)) : [],
        probs: Array.from(routing.probs.subarray(t * E, (t + 1) * E)),
      });
    }
  });
  // The device cache's own calls, as the runtime makes them (its order of experts within a layer
  // may depend on what is resident).
  const cache = model.experts.cache;
  let events;
  const lookup = cache.lookup.bind(cache);
  const observe = cache.observeRouting.bind(cache);
  cache.lookup = (id) => (events?.push({ layer: id.layer, expert: id.expert }), lookup(id));
  cache.observeRouting = (layer, probs) => (events?.push({ layer, probs: Float32Array.from(probs) }), observe(layer, probs));
  const runs = [];
  try {
    await generate(model, 2); // warm-up: JIT, onnxruntime first runs, page cache
    for (let r = 0; r < reps; r++) {
      cache.clear();
      const before = model.cacheStats();
      hash = 2166136261;
      if (r === 0) {
        events = [];
        if (trace) recording = [];
      }
      let prefill;
      let boundary;
      const { tokens, stats } = await generate(model, decodeTokens, {
        onToken: (_id, i) => {
          if (i === 0) {
            prefill = model.cacheStats().cache;
            boundary = events?.length;
          }
        },
      });
      const rep = model.cacheStats();
      const c = rep.cache;
      const dev = rep.tiers.device;
      const decodeHits = c.hits - prefill.hits;
      const decodeMisses = c.misses - prefill.misses;
      runs.push({
        tokens,
        routingHash: hash.toString(16),
        prefillTokPerS: stats.prefillTokensPerSecond,
        decodeTokPerS: stats.decodeTokensPerSecond,
        hits: c.hits,
        misses: c.misses,
        hitRate: c.hitRate,
        decodeHits,
        decodeMisses,
        decodeHitRate: decodeHits / (decodeHits + decodeMisses),
        evictions: dev.evictions,
        bypasses: dev.bypasses,
        bytesIn: dev.bytesIn,
        residentBytesMax: dev.residentBytesMax,
        stallSeconds: rep.stallSeconds - before.stallSeconds,
      });
      if (events) {
        runs.at(-1).events = { steps: events, boundary };
        events = undefined;
      }
      if (recording) {
        runs.at(-1).trace = recording;
        recording = undefined;
      }
    }
    const rep = model.cacheStats();
    return { runs, budgetBytes: rep.tiers.device.budgetBytes, workingBytes: rep.tiers.device.workingBytes, cacheBytes: rep.tiers.device.cacheBytes, kernel: model.expertKernel, notes };
  } finally {
    unsubscribe();
    await model.dispose();
  }
}

/**
 * Replays cache calls (router observations { layer, probs } and lookups { layer, expert }, a miss
 * inserting the expert) on an ExpertCache of `capacity` one-unit experts under `policy`. Returns
 * hits and misses, overall and from step `boundary` on (the decode part).
 */
function replaySteps(steps, policy, capacity, boundary, numLayers) {
  const future = policy === "belady" ? Int32Array.from(steps.filter((s) => s.expert !== undefined), (s) => s.layer * 0x10000 + s.expert) : undefined;
  const cache = new ExpertCache({ capacityBytes: capacity, policy: createPolicy(policy, { future, numLayers }), replay: true, layerStats: false });
  let atBoundary = { hits: 0, misses: 0 };
  steps.forEach((s, i) => {
    if (i === boundary) atBoundary = cache.stats();
    if (s.expert === undefined) cache.observeRouting(s.layer, s.probs);
    else if (cache.lookup(s) === undefined) cache.insert(s, true, 1);
  });
  const end = cache.stats();
  const dh = end.hits - atBoundary.hits;
  const dm = end.misses - atBoundary.misses;
  return { hits: end.hits, misses: end.misses, hitRate: end.hitRate, decodeHitRate: dh / (dh + dm) };
}

/** A routing trace as replay steps, as simulate() feeds them: observe, then the record's experts. */
function traceSteps(trace, prefillRecords) {
  const steps = [];
  let boundary = 0;
  trace.records.forEach((r, i) => {
    if (i === prefillRecords) boundary = steps.length;
    steps.push({ layer: r.layer, probs: recordProbs(r, trace.meta.numExperts) });
    for (const expert of r.experts) steps.push({ layer: r.layer, expert });
  });
  return { steps, boundary };
}

async function benchModel(info, decodeTokens) {
  log(`\n== ${info.name}: ${info.layers} layers, ${info.experts} experts x ${info.expertFfn} top-${info.topK}, hidden ${info.hidden}, ${info.encoding} records of ${mib(info.recordBytes)} MiB, expert bytes ${mib(info.expertBytes)} MiB, store ${mib(info.storeBytes)} MiB`);
  const t0 = performance.now();
  // Reference: unlimited device tier; records the routing trace.
  const ref = await runConfig(info.dir, {}, { trace: true, decodeTokens });
  const refRun = ref.runs[0];
  const refTokens = refRun.tokens;
  const trace = finishTrace(refRun.trace, { model: info.name, numLayers: info.layers, numExperts: info.experts, expertBytes: info.recordBytes }, `${info.name} trace`);
  delete refRun.trace;
  delete refRun.events;
  const prefillRecords = prefillRecordCount(trace, info.layers, decodeTokens);
  // The trace, for `moe-run simulate` (token = access step: prefill tokens first, then decode).
  const traceFile = path.join(path.dirname(args.out), `cache-policies.${info.name.replace(/[^\w.-]/g, "_")}.trace.jsonl`);
  writeJsonlTrace(traceFile, trace);
  const routingSteps = traceSteps(trace, prefillRecords);
  log(`reference (unlimited): decode ${median(ref.runs.map((r) => r.decodeTokPerS)).toFixed(1)} tok/s, ${trace.records.length} trace records (${prefillRecords} prefill), kernel ${ref.kernel}`);
  log(`reference tokens: ${JSON.stringify(refTokens)}`);

  const rows = [];
  const problems = [];
  const refHash = refRun.routingHash;
  if (!ref.runs.every((r) => r.tokens.join() === refTokens.join() && r.routingHash === refHash)) problems.push(`${info.name} unlimited: repetitions differ from the first repetition`);
  for (const percent of percents) {
    for (const policy of policies) {
      const t = performance.now();
      const res = await runConfig(info.dir, { deviceMem: { percent }, policy }, { decodeTokens });
      const capacity = Math.floor(res.cacheBytes / info.recordBytes);
      const live = res.runs[0];
      const { steps, boundary } = live.events;
      delete live.events;
      const lossless = res.runs.every((r) => r.tokens.join() === refTokens.join());
      const sameRouting = res.runs.every((r) => r.routingHash === refHash);
      const withinBudget = res.runs.every((r) => r.residentBytesMax <= res.cacheBytes && r.residentBytesMax + res.workingBytes <= res.budgetBytes);
      if (!lossless) problems.push(`${info.name} ${policy} ${percent}%: generated tokens differ from the unlimited run: ${res.runs.map((r) => JSON.stringify(r.tokens)).join(" / ")} vs ${JSON.stringify(refTokens)}`);
      if (!sameRouting) problems.push(`${info.name} ${policy} ${percent}%: routing differs from the unlimited run`);
      if (!withinBudget) problems.push(`${info.name} ${policy} ${percent}%: device tier high-water ${res.runs.map((r) => r.residentBytesMax).join(",")} B exceeds cache bytes ${res.cacheBytes} (budget ${res.budgetBytes})`);
      // The live calls replayed: must give the live counts (the stats are the policy's doing).
      const replayLive = replaySteps(steps, policy, capacity, boundary, info.layers);
      const replayMatchesLive = replayLive.hits === live.hits && replayLive.misses === live.misses;
      const repsAgree = res.runs.every((r) => r.hits === live.hits && r.misses === live.misses);
      // The routing trace (expert-id order within a layer) replayed, as simulate() does.
      const replayRouting = replaySteps(routingSteps.steps, policy, capacity, routingSteps.boundary, info.layers);
      // Belady on this run's own access sequence.
      const beladyLive = replaySteps(steps, "belady", capacity, boundary, info.layers);
      const accesses = steps.filter((s) => s.expert !== undefined).length;
      const sameAccessCount = accesses === routingSteps.steps.filter((s) => s.expert !== undefined).length;
      if (!replayMatchesLive) problems.push(`${info.name} ${policy} ${percent}%: live ${live.hits}/${live.misses} hits/misses != replay of the live cache calls ${replayLive.hits}/${replayLive.misses}`);
      if (!repsAgree) problems.push(`${info.name} ${policy} ${percent}%: repetitions disagree on hits/misses: ${res.runs.map((r) => `${r.hits}/${r.misses}`).join(", ")}`);
      if (!sameAccessCount) problems.push(`${info.name} ${policy} ${percent}%: ${accesses} live cache lookups vs ${accessSequence(trace).length} in the routing trace`);
      if (live.hits > beladyLive.hits) problems.push(`${info.name} ${policy} ${percent}%: live hits ${live.hits} exceed Belady's ${beladyLive.hits} on the same access sequence`);
      rows.push({
        policy,
        percent,
        budgetBytes: res.budgetBytes,
        cacheBytes: res.cacheBytes,
        capacityExperts: capacity,
        decodeTokPerS: median(res.runs.map((r) => r.decodeTokPerS)),
        prefillTokPerS: median(res.runs.map((r) => r.prefillTokPerS)),
        hitRate: median(res.runs.map((r) => r.hitRate)),
        decodeHitRate: median(res.runs.map((r) => r.decodeHitRate)),
        stallSeconds: median(res.runs.map((r) => r.stallSeconds)),
        bytesIn: median(res.runs.map((r) => r.bytesIn)),
        residentBytesMax: Math.max(...res.runs.map((r) => r.residentBytesMax)),
        lossless,
        sameRouting,
        withinBudget,
        replayLive,
        replayMatchesLive,
        replayRouting,
        beladyLive,
        kernel: res.kernel,
        notes: res.notes,
        runs: res.runs.map(({ tokens, ...r }) => r),
        seconds: (performance.now() - t) / 1000,
      });
      const row = rows.at(-1);
      log(
        `${percent}% ${policy}: decode ${row.decodeTokPerS.toFixed(1)} tok/s, hit ${pct(row.hitRate)}% (decode ${pct(row.decodeHitRate)}%), capacity ${capacity} experts; ` +
          `replay of live calls ${replayMatchesLive ? "=" : "!="} live; routing-order replay ${pct(replayRouting.hitRate)}%; belady ${pct(beladyLive.hitRate)}%; ${lossless && sameRouting ? "lossless" : "OUTPUT DIFFERS"} (${row.seconds.toFixed(1)} s)`
      );
    }
  }
  // Belady at each capacity, simulate() on the routing trace.
  const capacities = [...new Set(rows.map((r) => r.capacityExperts))].sort((a, b) => a - b);
  const sim = simulate(trace, { capacities, policies: ["belady", ...policies], policyOptions: { numLayers: info.layers } });
  const belady = capacities.map((capacity) => {
    const s = sim.find((x) => x.policy === "belady" && x.capacity === capacity);
    const split = replaySteps(routingSteps.steps, "belady", capacity, routingSteps.boundary, info.layers);
    if (split.hits !== s.hits) problems.push(`${info.name}: belady step replay ${split.hits} hits != simulate() ${s.hits} at capacity ${capacity}`);
    return { capacity, hitRate: s.hitRate, hits: s.hits, misses: s.misses, accesses: s.accesses, decodeHitRate: split.decodeHitRate };
  });
  for (const row of rows) {
    const s = sim.find((x) => x.policy === row.policy && x.capacity === row.capacityExperts);
    row.simulate = { hits: s.hits, misses: s.misses, hitRate: s.hitRate };
    if (s.hits !== row.replayRouting.hits) problems.push(`${info.name} ${row.policy} ${row.percent}%: simulate() ${s.hits} hits != step replay of the routing trace ${row.replayRouting.hits}`);
  }
  return {
    model: info,
    prompt: args.prompt,
    promptTokens: prefillRecords / info.layers,
    decodeTokens,
    reference: {
      tokens: refTokens,
      decodeTokPerS: median(ref.runs.map((r) => r.decodeTokPerS)),
      prefillTokPerS: median(ref.runs.map((r) => r.prefillTokPerS)),
      hitRate: refRun.hitRate,
      runs: ref.runs.map(({ tokens, events, ...r }) => r),
      kernel: ref.kernel,
    },
    trace: { file: path.relative(ROOT, traceFile), records: trace.records.length, prefillRecords, accesses: accessSequence(trace).length },
    rows,
    belady,
    lossless: rows.every((r) => r.lossless && r.sameRouting),
    problems,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Records of the first forward (the prompt): the prefill forward has one record per prompt token
 * per layer, each decode forward one per layer, and there are decodeTokens - 1 decode forwards.
 */
function prefillRecordCount(trace, layers, decodeTokens) {
  return trace.records.length - layers * (decodeTokens - 1);
}

function printModel(res) {
  const m = res.model;
  const lines = [];
  lines.push(`### ${m.name}${m.note ? ` (${m.note})` : ""}`);
  lines.push(
    `${m.layers} layers, ${m.experts} experts x ${m.expertFfn} top-${m.topK}, hidden ${m.hidden}; ${m.encoding} experts, ${mib(m.recordBytes)} MiB per expert, ` +
      `${mib(m.expertBytes)} MiB of experts, store ${mib(m.storeBytes)} MiB. Prompt ${res.promptTokens} tokens, ${res.decodeTokens} greedy decode tokens, median of ${reps}. ` +
      `Unlimited: decode ${res.reference.decodeTokPerS.toFixed(1)} tok/s, hit ${pct(res.reference.hitRate)}% (compulsory misses only).`
  );
  lines.push("");
  lines.push(
    "Columns: budget = deviceMem {percent} of the expert bytes; capacity = floor((budget - kernel working bytes) / record bytes) experts, what the runtime's cache holds. " +
      "Belady = simulate() of the recorded routing trace at that capacity (cold start, same accesses)."
  );
  lines.push("");
  lines.push("Decode tok/s / hit rate over the whole generation (prefill + decode):");
  lines.push("");
  const header = ["policy", ...percents.map((p) => { const r = res.rows.find((x) => x.percent === p); return `${p}% (${mib(r.budgetBytes)} MiB, ${r.capacityExperts} exp)`; })];
  const body = policies.map((pol) => [pol, ...percents.map((p) => { const r = res.rows.find((x) => x.percent === p && x.policy === pol); return `${r.decodeTokPerS.toFixed(1)} / ${pct(r.hitRate)}%`; })]);
  body.push(["belady (replay)", ...percents.map((p) => { const r = res.rows.find((x) => x.percent === p); const b = res.belady.find((x) => x.capacity === r.capacityExperts); return `- / ${pct(b.hitRate)}%`; })]);
  lines.push(table(header, body));
  lines.push("");
  lines.push("Decode-only hit rate (after the prompt), live / Belady at the same capacity:");
  lines.push("");
  const body2 = policies.map((pol) => [pol, ...percents.map((p) => { const r = res.rows.find((x) => x.percent === p && x.policy === pol); return `${pct(r.decodeHitRate)}%`; })]);
  body2.push(["belady (replay)", ...percents.map((p) => { const r = res.rows.find((x) => x.percent === p); const b = res.belady.find((x) => x.capacity === r.capacityExperts); return `${pct(b.decodeHitRate)}%`; })]);
  lines.push(table(header, body2));
  lines.push("");
  const gap = Math.max(...res.rows.map((r) => Math.abs(r.beladyLive.hitRate - res.belady.find((x) => x.capacity === r.capacityExperts).hitRate)));
  lines.push(`Belady on each run's own access order (the runtime computes resident experts first) differs from the routing-order figure by at most ${pct(gap)} points.`);
  lines.push(
    `Lossless (greedy tokens and routing identical to the unlimited run in all ${res.rows.length} configurations x ${reps} runs): ${res.lossless ? "yes" : "NO"}; ` +
      `budget kept (device high-water <= budget): ${res.rows.every((r) => r.withinBudget) ? "yes" : "NO"}; ` +
      `trace replay reproduces live hits/misses: ${res.rows.every((r) => r.replayMatchesLive) ? "yes" : "NO"}.`
  );
  return lines.join("\n");
}

const results = [];
const wanted = args.models.split(",").filter(Boolean);
for (const which of wanted) {
  const info =
    which === "trained"
      ? await trainedModel(args.work, { log })
      : which === "synthetic"
        ? await syntheticModel(args.work, { shape: args["synthetic-shape"], encoding: args["synthetic-experts"], keepHf: args["keep-hf"], log })
        : undefined;
  if (!info) throw new Error(`--models: unknown "${which}" (trained, synthetic)`);
  results.push(await benchModel(info, Number(which === "synthetic" ? args["synthetic-decode-tokens"] : args["decode-tokens"])));
}

const report = results.map(printModel).join("\n\n");
console.log(report);
const problems = results.flatMap((r) => r.problems);
if (problems.length) console.log(`\nPROBLEMS:\n${problems.map((p) => `- ${p}`).join("\n")}`);
writeJson(args.out, {
  bench: "cache-policies",
  date: new Date().toISOString(),
  command: process.argv.slice(1).join(" "),
  machine: machineInfo(),
  checkout: checkoutInfo(),
  dist,
  busy,
  nice,
  options: { schedule: args.schedule, reps, decodeTokens: Number(args["decode-tokens"]), syntheticDecodeTokens: Number(args["synthetic-decode-tokens"]), threads, policies, percents, prompt: args.prompt, syntheticShape: args["synthetic-shape"], syntheticExperts: args["synthetic-experts"], work: args.work },
  results,
  problems,
  seconds: (performance.now() - started) / 1000,
});
log(`wrote ${path.relative(process.cwd(), args.out)} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
if (problems.length) process.exitCode = 1;
