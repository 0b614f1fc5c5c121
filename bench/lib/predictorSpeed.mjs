/**
 * Part 2 of bench/predictors.mjs: decode speed and hit rate under device budgets with prefetch on.
 * Each generation is a fresh load, a warm-up, a cold device tier, then greedy decoding, with the
 * expert kernel, the routing hook and the predictor's observe timed by wrapping those calls. Runs
 * are checked against a reference (unlimited budget, no predictor): same tokens, same routing,
 * device tier within budget. Belady is the reference routing replayed with simulate() at the same
 * capacity, plus a replay of the runtime's own lookup order.
 */
import { createPolicy, ExpertCache, loadModelOnThisThread, simulate } from "../../dist/index.js";
import { expertKey } from "../../dist/cache/types.js";
import { finishTrace } from "../../dist/profiling/trace.js";
import { median } from "./common.mjs";

const WARMUP_TEXT = "The quick brown fox jumps over the lazy dog.";


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
 * ctx: { dir, threads, threshold, schedule, decodeTokens }.
 */
async function generationRun(ctx, prompt, loadOptions, { record = false, lookups = false } = {}) {
  const { dir, threads, threshold, schedule, decodeTokens } = ctx;
  const notes = [];
  // On this thread: the runner, the cache and onRouting are instrumented directly; the oracle needs it too.
  const model = await loadModelOnThisThread(dir, { threads, policy: "lru", prefetchThreshold: threshold, schedule, ...loadOptions, log: (l) => notes.push(l) });
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
function replayKeys(keys, policy, capacity, numLayers) {
  const cache = new ExpertCache({ capacityBytes: capacity, policy: createPolicy(policy, { future: policy === "belady" ? keys : undefined, numLayers }), replay: true, layerStats: false });
  for (const k of keys) {
    const id = { layer: k >>> 16, expert: k & 0xffff };
    if (cache.lookup(id) === undefined) cache.insert(id, true, 1);
  }
  return cache.stats();
}

/**
 * References, then every budget x predictor configuration for `reps` repetitions (interleaved),
 * medians over repetitions, and Belady per capacity. Returns { rows, belady, reference }.
 * ctx: { dir, threads, threshold, schedule, decodeTokens, reps, percents, predictors, predictOnly,
 * prompts, dims, recBytes, modelSource, restoreStats, noteBusy, problems, started, log }.
 */
export async function measureSpeed(ctx) {
  const { decodeTokens, reps, percents, predictors, predictOnly, prompts, dims: d, recBytes, modelSource, restoreStats, noteBusy, problems, started, log } = ctx;
  const speed = { rows: [], belady: [], reference: [] };
  log(`\n== speed: ${prompts.length} prompts (${prompts.map((p) => p.tokens).join(", ")} tokens), ${decodeTokens} greedy tokens, ${reps} reps, budgets ${percents.join("/")}%, policy lru, prefetch on`);
  // References: unlimited budget, no predictor; the tokens every run must reproduce, the oracle's
  // log, the Belady trace.
  const refs = [];
  for (const [i, prompt] of prompts.entries()) {
    const r = await generationRun(ctx, prompt, {}, { record: true });
    refs.push(r);
    const trace = finishTrace(r.records, { model: modelSource, numLayers: d.numLayers, numExperts: d.numExperts, expertBytes: recBytes }, `prompt ${i} trace`);
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
        const { run } = await generationRun(ctx, prompt, options, { lookups: rep === 0 && cfg.predictor === "none" && !cfg.unlimited });
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
        const lru = replayKeys(keys, "lru", capacity, d.numLayers);
        const bel = replayKeys(keys, "belady", capacity, d.numLayers);
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
  return speed;
}
