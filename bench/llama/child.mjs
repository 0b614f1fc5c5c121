#!/usr/bin/env node
/**
 * One engine, one model, in its own process (so its peak RSS and disk reads are its own):
 * load, optional warm-up, then one measured greedy generation from the given prompt token ids.
 *
 *   node bench/llama/child.mjs '<json job>'
 *
 * job: { engine: "moe-run" | "node-llama-cpp", model: dir or .gguf, promptText, promptIds,
 *        decodeTokens, threads, warmup, loadOptions?, shortPrompt?: { text, ids }, shortFirst? }
 * With shortPrompt (the long-context scenarios) the same process also decodes decodeTokens after
 * that short prompt, just before or after the measured run (shortFirst), and reports its decode
 * tok/s as decodeTokPerSShort: long against short context seconds apart, on the same machine state.
 * stdout: "@@EVENT {json}" lines as it goes (phase, tokens so far) and "@@RESULT {json}" at the end.
 */
import { procReadBytes, procStatus } from "./system.mjs";

const job = JSON.parse(process.argv[2]);
const emit = (tag, obj) => process.stdout.write(`@@${tag} ${JSON.stringify(obj)}\n`);
const now = () => performance.now() / 1000;
// Token events (n, t: seconds since the measurement began, taken at the token) go out in batches,
// at most every kTokenFlushS and at the end: a write per token woke the parent on one of the two
// cores mid-token, which stalls a 2-thread decode (moe-run's 600m int8 decode outside its kernels
// 5% without the writes, 8-11% with them, same process). A run killed mid-decode loses at most
// the last kTokenFlushS of events (its partial decode speed comes from those that arrived).
const kTokenFlushS = 0.25;
let pendingTokens = "";
let lastFlush = 0;
function tokenEvent(n, t) {
  pendingTokens += `@@EVENT ${JSON.stringify({ phase: "token", n, t })}\n`;
  if (now() - lastFlush >= kTokenFlushS) flushTokens();
}
function flushTokens() {
  if (pendingTokens) process.stdout.write(pendingTokens);
  pendingTokens = "";
  lastFlush = now();
}

async function runMoeRun() {
  // On this thread, as before loadModel() moved compute to a worker: the numbers stay comparable.
  const { loadModelOnThisThread } = await import("../../dist/index.js");
  const t0 = now();
  const model = await loadModelOnThisThread(job.model, { threads: job.threads, ...(job.loadOptions ?? {}) });
  const loadSeconds = now() - t0;
  emit("EVENT", { phase: "loaded", loadSeconds });
  const ids = model.tokenize(job.promptText);
  if (ids.join() !== job.promptIds.join()) throw new Error(`moe-run tokenizes the prompt differently: ${ids.join()} vs ${job.promptIds.join()}`);
  const gen = async (maxTokens, onToken, text = job.promptText) => {
    let stats;
    const it = model.generate(text, { maxTokens, stopAtEos: false, onToken, onStats: (s) => (stats = s) });
    for await (const _ of it);
    return stats;
  };
  if (job.warmup) await gen(4, () => {});
  const short = async () => (job.shortPrompt ? (await gen(job.decodeTokens, () => {}, job.shortPrompt.text)).decodeTokensPerSecond : undefined);
  let decodeTokPerSShort = job.shortFirst ? await short() : undefined;
  emit("EVENT", { phase: "measuring" });
  const out = [];
  const tStart = now();
  // Cache counters at the first token (prefill done) and at the end: their difference is decode's.
  let atFirst;
  const stats = await gen(job.decodeTokens, (id) => {
    out.push(id);
    if (out.length === 1) atFirst = cacheStats(model);
    tokenEvent(out.length, now() - tStart);
  });
  flushTokens();
  const atEnd = cacheStats(model);
  if (!job.shortFirst) decodeTokPerSShort = await short();
  const extra = {
    manifestPrecision: model.manifest?.precision,
    ...cacheSummary(atFirst, atEnd),
    // Which dense layers / kernel ran, and where decode and prefill time went (evaluator/StepTimes.ts).
    engineInfo: model.engineInfo?.(),
    decodeBreakdown: stats.decodeBreakdown,
    prefillBreakdown: stats.prefillBreakdown,
  };
  await model.dispose();
  return {
    loadSeconds,
    ids: out,
    promptTokens: stats.promptTokens,
    prefillSeconds: stats.prefillSeconds,
    decodeSeconds: stats.decodeSeconds,
    prefillTokPerS: stats.prefillTokensPerSecond,
    decodeTokPerS: stats.decodeTokensPerSecond,
    decodeTokPerSShort,
    ...extra,
  };
}

function cacheStats(model) {
  try {
    return model.cacheStats();
  } catch {
    return undefined;
  }
}

/** A few figures of moe-run's cache report (the full one has per-layer rows): decode's hit rate and the run's totals. */
function cacheSummary(first, end) {
  if (!end) return {};
  const out = {
    cacheStats: {
      hits: end.cache.hits,
      misses: end.cache.misses,
      hitRate: end.cache.hitRate,
      stallSeconds: end.stallSeconds,
      stallSecondsPerForward: end.stalls?.secondsPerForward,
      hostReads: end.tiers?.host?.reads,
      hostBytesRead: end.tiers?.host?.bytesRead,
      hostReadSeconds: end.tiers?.host?.readSeconds,
      directReads: end.tiers?.host?.directReads,
      memoryPlan: end.memoryPlan,
      prefetch: end.prefetch,
    },
  };
  if (first) {
    const hits = end.cache.hits - first.cache.hits;
    const misses = end.cache.misses - first.cache.misses;
    out.decodeHitRate = hits + misses > 0 ? hits / (hits + misses) : undefined;
    out.decodeCache = {
      hits,
      misses,
      hostBytesRead: (end.tiers?.host?.bytesRead ?? 0) - (first.tiers?.host?.bytesRead ?? 0),
      stallSeconds: end.stallSeconds - first.stallSeconds,
    };
  }
  return out;
}

async function runLlama() {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const t0 = now();
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: job.threads });
  const model = await llama.loadModel({ modelPath: job.model, gpuLayers: 0, useMmap: true });
  const contextSize = Math.min(model.trainContextSize, job.promptIds.length + job.decodeTokens + 8);
  const context = await model.createContext({ contextSize, threads: { ideal: job.threads, min: job.threads }, batchSize: Math.max(job.promptIds.length, 1) });
  const sequence = context.getSequence();
  const loadSeconds = now() - t0;
  emit("EVENT", { phase: "loaded", loadSeconds });
  const gen = async (maxTokens, onToken, promptIds = job.promptIds) => {
    await sequence.clearHistory();
    const times = [];
    const ids = [];
    const start = now();
    // Greedy (temperature 0), no repeat penalty; keep going past end-of-sequence like moe-run's stopAtEos: false.
    for await (const t of sequence.evaluate(promptIds, { temperature: 0, yieldEogToken: true })) {
      ids.push(t);
      times.push(now() - start);
      onToken(t, times.at(-1));
      if (ids.length >= maxTokens) break;
    }
    return { ids, times };
  };
  if (job.warmup) await gen(4, () => {});
  const decodeRate = (r) => (r.ids.length > 1 ? (r.ids.length - 1) / (r.times.at(-1) - r.times[0]) : undefined);
  const short = async () => (job.shortPrompt ? decodeRate(await gen(job.decodeTokens, () => {}, job.shortPrompt.ids)) : undefined);
  let decodeTokPerSShort = job.shortFirst ? await short() : undefined;
  emit("EVENT", { phase: "measuring" });
  let n = 0;
  const { ids, times } = await gen(job.decodeTokens, (_id, t) => tokenEvent(++n, t));
  flushTokens();
  if (!job.shortFirst) decodeTokPerSShort = await short();
  // Same definitions as moe-run's stats: prefill = prompt evaluation (until the first token);
  // decode = the tokens after the first, each one forward of one token.
  const prefillSeconds = times[0];
  const decodeSeconds = times.at(-1) - times[0];
  const result = {
    loadSeconds,
    ids,
    promptTokens: job.promptIds.length,
    prefillSeconds,
    decodeSeconds,
    prefillTokPerS: job.promptIds.length / prefillSeconds,
    decodeTokPerS: decodeRate({ ids, times }) ?? 0,
    decodeTokPerSShort,
    llamaThreads: context.currentThreads,
  };
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  return result;
}

try {
  const r = job.engine === "moe-run" ? await runMoeRun() : await runLlama();
  emit("RESULT", { ok: true, ...r, ...procStatus(), readBytes: procReadBytes(), maxRssBytes: process.resourceUsage().maxRSS * 1024 });
  process.exit(0);
} catch (err) {
  emit("RESULT", { ok: false, error: String(err?.stack ?? err), ...procStatus(), readBytes: procReadBytes() });
  process.exit(1);
}
