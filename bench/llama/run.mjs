#!/usr/bin/env node
/**
 * moe-run vs node-llama-cpp (llama.cpp) on the same weights.
 *
 *   npx tsc -p tsconfig.json && node bench/llama/run.mjs [options]
 *
 *   --scenarios bundled,600m,oversize   which to run (default: bundled,600m); oversize runs once
 *                          per --oversize-ratios entry, oversize-3x runs just that ratio
 *   --reps N               measured runs per engine and thread count, engines alternating (default 3)
 *   --oversize-reps N      the same for the oversize scenario (default 1)
 *   --threads N[,M..]      threads for both engines (default: available parallelism); a list such as
 *                          1,2 runs every engine at each count in one invocation, interleaved: in each
 *                          rep, each engine's runs at the listed counts come one after the other
 *                          (engine order and thread order alternate between reps), one row per
 *                          (engine, weights, threads)
 *   --prompt-tokens N      prompt length in tokens (default 64; oversize 32)
 *   --decode-tokens N      generated tokens per run (default 64; oversize 16)
 *   --formats F16,Q8_0     GGUF types for node-llama-cpp (also Q4_K_M: llama-quantize's mix,
 *                          Q6_K ffn_down/attn_v in some layers; written by formats/ggufExport.ts)
 *   --moe-run-experts f16,int8   moe-run expert precisions (import --experts), each paired with
 *                          the GGUF type of the same width (f32/f16 -> F16, int8/int4 -> Q8_0);
 *                          gguf-Q8_0 (gguf-Q4_K_M, ...): moe-run imports the GGUF node-llama-cpp runs
 *   --moe-run-options JSON extra loadModel options for moe-run (default {}: moe-run sizes its
 *                          caches itself, from the cgroup limit in oversize runs)
 *   --seed S --dtype BF16|F16   synthetic weights (default seed 1, BF16)
 *   --oversize-experts N   experts per layer of the oversize model (default 16: ~1.1 B params)
 *   --oversize-ratios R,.. model-to-limit ratios of the oversize runs (default 2,4): each moe-run/
 *                          node-llama-cpp pair runs under a limit of its GGUF's size / R (F16 for
 *                          moe-run f16 and GGUF F16, Q8_0 for moe-run int8 and GGUF Q8_0)
 *   --oversize-limit-mb N  one memory limit for every engine instead of the ratios
 *   --timeout-s N          per-run time limit (default 600; oversize 150); a run past it is killed
 *                          and counts as not finished
 *   --work DIR             generated models, reused between runs (default $TMPDIR/moe-run-bench-llama)
 *   --no-warmup            measure the first generation (default: one short warm-up first, except oversize)
 *   --thread-pairs N       with --threads listing 1 and 2: after the reps, each moe-run precision also
 *                          runs pairs of 1- and 2-thread decodes in one process (bench/llama/
 *                          threadPairs.mjs), the memory read at 1 and 2 threads before each pair and
 *                          after each decode, until N "quiet" pairs (default 8; 0: none)
 *   --quiet-memory-scaling X   a pair is quiet when its slowest 2-thread memory reading is >= X times
 *                          its fastest 1-thread one (default 1.8)
 *   --thread-pairs-seconds S   at most S seconds of pairs per precision (default 150)
 *   --report-only          rewrite bench/RESULTS.md from bench/results/latest.json, run nothing
 *   --disk-only            measure the disk and moe-run's read path (3 alternating rounds) and stop
 *
 * Each engine+model+rep runs in a child process (bench/llama/child.mjs) so peak RSS (VmHWM) and
 * bytes read from storage (/proc/<pid>/io read_bytes) are its own. Oversize runs go into a fresh
 * cgroup v1 memory group (page cache counted) after the model files are evicted from the page cache.
 * Memory read bandwidth drifts minute to minute on a shared machine, so it is measured right before
 * every child run outside oversize (membw: 512 MiB in huge pages, best of 3, at the child's thread
 * count; about half a second): a row's decode bound is the median of its per-rep bounds, its
 * fraction of the bound the median of its per-rep fractions. The start-of-run figure (1 GiB, best
 * of 6, the better of 4 KiB and huge pages, at each listed thread count and 1) stays in latest.json
 * beside them (memoryBandwidthStartOfRunBytesPerS, fractionOfBoundStartOfRun); oversize bounds use
 * it. With --threads 1,2 the report's two-vs-one-thread figure pairs rep i at 1 thread with rep i
 * at 2 threads (threadScalingPerRep, memoryScalingPerRep on the 2-thread rows).
 * Disk and read path are measured once, on the first model with a file over 256 MB: the disk's
 * sequential direct-I/O bandwidth (dd iflag=direct) and moe-run's own read path (every expert
 * record through ExpertStore.readRecord, 4 in flight).
 * Writes bench/results/latest.json (merged with earlier results of scenarios not run now) and
 * bench/RESULTS.md.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { ROOT, activeBytesGguf, activeBytesMoeRun, makePrompt, paramCounts, prepareModel, scenarioModels } from "./models.mjs";
import { markdown, writeReports } from "./report.mjs";
import { median, scenarioRows } from "./rows.mjs";
import { createMemoryCgroup, evictFromPageCache, machineInfo, measureDiskBandwidth, measureMemoryBandwidth, measureReadPath, procReadBytes, procStatus } from "./system.mjs";

const { values: a } = parseArgs({
  options: {
    scenarios: { type: "string", default: "bundled,600m" },
    reps: { type: "string", default: "3" },
    "oversize-reps": { type: "string", default: "1" },
    threads: { type: "string", default: String(os.availableParallelism()) },
    "prompt-tokens": { type: "string" },
    "decode-tokens": { type: "string" },
    formats: { type: "string", default: "F16,Q8_0" },
    "moe-run-experts": { type: "string", default: "f16,int8" },
    "moe-run-options": { type: "string", default: "{}" },
    seed: { type: "string", default: "1" },
    dtype: { type: "string", default: "BF16" },
    "oversize-experts": { type: "string", default: "16" },
    "oversize-ratios": { type: "string", default: "2,4" },
    "oversize-limit-mb": { type: "string" },
    "timeout-s": { type: "string" },
    work: { type: "string", default: path.join(os.tmpdir(), "moe-run-bench-llama") },
    "no-warmup": { type: "boolean", default: false },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "latest.json") },
    md: { type: "string", default: path.join(ROOT, "bench", "RESULTS.md") },
    "thread-pairs": { type: "string", default: "8" },
    "quiet-memory-scaling": { type: "string", default: "1.8" },
    "thread-pairs-seconds": { type: "string", default: "150" },
    "report-only": { type: "boolean", default: false },
    "disk-only": { type: "boolean", default: false },
  },
});
if (a["report-only"]) {
  // Regenerate RESULTS.md from latest.json without running anything.
  fs.writeFileSync(a.md, markdown(JSON.parse(fs.readFileSync(a.out, "utf8"))));
  process.stderr.write(`wrote ${a.md}\n`);
  process.exit(0);
}
const args = {
  scenarios: a.scenarios.split(",").filter(Boolean),
  threads: [...new Set(a.threads.split(",").filter(Boolean).map(Number))],
  formats: a.formats.split(",").filter(Boolean),
  moeRunExperts: a["moe-run-experts"].split(",").filter(Boolean),
  moeRunOptions: JSON.parse(a["moe-run-options"]),
  seed: Number(a.seed),
  dtype: a.dtype,
  oversizeExperts: Number(a["oversize-experts"]),
  oversizeRatios: a["oversize-ratios"].split(",").filter(Boolean).map(Number),
  oversizeLimitMb: a["oversize-limit-mb"] ? Number(a["oversize-limit-mb"]) : undefined,
  work: a.work,
  threadPairs: Number(a["thread-pairs"]),
  quietMemoryScaling: Number(a["quiet-memory-scaling"]),
  threadPairsSeconds: Number(a["thread-pairs-seconds"]),
};
if (!(Number.isInteger(args.threadPairs) && args.threadPairs >= 0)) throw new Error(`--thread-pairs must be a whole number >= 0, got ${a["thread-pairs"]}`);
if (!(args.quietMemoryScaling > 1 && args.threadPairsSeconds > 0)) throw new Error(`--quiet-memory-scaling must be > 1 and --thread-pairs-seconds > 0`);
if (!args.threads.length || !args.threads.every((t) => Number.isInteger(t) && t > 0)) throw new Error(`--threads must be positive integers, got ${a.threads}`);
if (!args.oversizeRatios.every((r) => Number.isFinite(r) && r > 0)) throw new Error(`--oversize-ratios must be positive numbers, got ${a["oversize-ratios"]}`);
// What runs: "oversize" once per ratio (labelled oversize-2x, ...), or once at the fixed limit.
const plan = [];
for (const s of args.scenarios) {
  const one = /^oversize-(\d+(?:\.\d+)?)x$/.exec(s);
  // "600m-p2048": the 600m model with a 2048-token prompt (long-context decode, prefill at length).
  const long = /^(600m)-p(\d+)$/.exec(s);
  let items = [long ? { scenario: s, kind: long[1], promptTokens: Number(long[2]) } : { scenario: s, kind: s }];
  if (s === "oversize" || one) {
    if (args.oversizeLimitMb) items = [{ scenario: `oversize-${args.oversizeLimitMb}MiB`, kind: "oversize" }];
    else items = (one ? [Number(one[1])] : args.oversizeRatios).map((r) => ({ scenario: `oversize-${r}x`, kind: "oversize", ratio: r }));
  }
  for (const it of items) if (!plan.some((x) => x.scenario === it.scenario)) plan.push(it);
}
const PAIR = { f32: "F16", f16: "F16", int8: "Q8_0", int4: "Q8_0" };
/** The GGUF type a moe-run precision is compared with ("gguf-Q8_0": moe-run imported that very file). */
const pairOf = (enc) => (enc.startsWith("gguf-") ? enc.slice(5) : PAIR[enc]);
const log = (line) => process.stderr.write(`[bench:llama] ${line}\n`);
const gb = (bps) => `${(bps / 1e9).toFixed(1)} GB/s`;

// Long, CPU-heavy work on a shared 2-core machine: be nice (children inherit it).
try {
  os.setPriority(0, Math.max(os.getPriority(0), 10));
} catch {}
fs.mkdirSync(args.work, { recursive: true });
const date = new Date().toISOString();
const git = gitInfo();
const machine = machineInfo();
const nodeLlamaCppVersion = JSON.parse(fs.readFileSync(path.join(ROOT, "node_modules", "node-llama-cpp", "package.json"), "utf8")).version;
const llamaCppRelease = (() => {
  try {
    return JSON.parse(fs.readFileSync(path.join(ROOT, "node_modules", "node-llama-cpp", "llama", "binariesGithubRelease.json"), "utf8")).release;
  } catch {
    return undefined;
  }
})();

if (os.loadavg()[0] > 0.5) {
  log(`load average ${os.loadavg().map((x) => x.toFixed(1)).join(" ")}: other processes use the CPU, so timings will be noisy (and multi-threaded llama.cpp suffers most; compare with --threads 1)`);
}
// Start of run, at each listed thread count and 1: oversize bounds use it, other rows keep it beside
// their per-rep figures. A row at t threads uses the better of t and 1 thread (as before lists).
const memThreads = [...new Set([...args.threads, 1])].sort((x, y) => y - x);
log(`memory read bandwidth at the start (threads ${memThreads.join(", ")})...`);
const startMem = new Map(memThreads.map((t) => [t, measureMemoryBandwidth(args.work, t, log)]));
const startBandwidth = (t) => Math.max(startMem.get(t).bytesPerSecond, startMem.get(1).bytesPerSecond);
log(`memory read bandwidth at the start: ${memThreads.map((t) => `${gb(startMem.get(t).bytesPerSecond)} (${t} thread${t > 1 ? "s" : ""})`).join(", ")}`);
const roofline = {
  memory: { nThreads: startMem.get(memThreads[0]), oneThread: startMem.get(1), byThreads: Object.fromEntries(startMem), bytesPerSecond: startBandwidth(memThreads[0]) },
  disk: undefined,
  readPath: undefined,
};

/** Runs one child; never throws for a failed/killed child (that is a result). */
function runChild(job, { cgroup, timeoutS }) {
  return new Promise((resolve) => {
    const childArgs = [path.join(ROOT, "bench", "llama", "child.mjs"), JSON.stringify(job)];
    const [cmd, argv] = cgroup ? cgroup.wrap([process.execPath, ...childArgs]) : [process.execPath, childArgs];
    const started = performance.now();
    const child = spawn(cmd, argv, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let result;
    let stderr = "";
    let last = {};
    const tokens = [];
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith("@@RESULT ")) result = JSON.parse(line.slice(9));
        else if (line.startsWith("@@EVENT ")) {
          const e = JSON.parse(line.slice(8));
          last = e;
          if (e.phase === "token") tokens.push(e.t);
          if (e.phase === "loaded") last.loadSeconds = e.loadSeconds;
        }
      }
    });
    child.stderr.on("data", (d) => {
      stderr = (stderr + d).slice(-4000);
    });
    // Sample the child's peak RSS and disk reads, so a killed child still has numbers.
    const sampled = { vmHwm: 0, readBytes: 0 };
    const sample = () => {
      const s = procStatus(child.pid);
      if (s.vmHwm) sampled.vmHwm = Math.max(sampled.vmHwm, s.vmHwm);
      const r = procReadBytes(child.pid);
      if (r !== undefined) sampled.readBytes = Math.max(sampled.readBytes, r);
    };
    const sampler = setInterval(sample, 200);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      sample();
      child.kill("SIGKILL");
    }, timeoutS * 1000);
    child.on("close", (code, signal) => {
      clearInterval(sampler);
      clearTimeout(timer);
      const wallSeconds = (performance.now() - started) / 1000;
      const cg = cgroup?.stats();
      const finished = !!result?.ok && code === 0;
      let reason;
      if (!finished) {
        const during = ` during ${finishedPhase(result, last)}`;
        if (timedOut) reason = `time limit ${timeoutS} s${during}`;
        else if (cg?.oomKills > 0) reason = `killed by the OOM killer (cgroup memory limit)${during}`;
        else if (signal) reason = `killed by ${signal}`;
        else reason = result?.error?.split("\n")[0] ?? `exit ${code}: ${stderr.trim().split("\n").slice(-3).join(" | ")}`;
      }
      // Partial decode speed from the token events when the run did not finish.
      const partialDecode = tokens.length > 2 ? (tokens.length - 1) / (tokens.at(-1) - tokens[0]) : undefined;
      resolve({
        finished,
        reason,
        exitCode: code,
        signal,
        wallSeconds,
        lastPhase: finishedPhase(result, last),
        loadSeconds: result?.loadSeconds ?? last.loadSeconds,
        promptTokens: result?.promptTokens ?? job.promptIds.length,
        generatedTokens: result?.ids?.length ?? tokens.length,
        prefillTokPerS: result?.prefillTokPerS ?? (tokens.length ? job.promptIds.length / tokens[0] : undefined),
        decodeTokPerS: result?.ok ? result.decodeTokPerS : partialDecode,
        decodeTokPerSShort: result?.decodeTokPerSShort,
        peakRssBytes: Math.max(result?.vmHwm ?? 0, sampled.vmHwm) || undefined,
        maxRssBytes: result?.maxRssBytes,
        rssAnonEndBytes: result?.rssAnon,
        rssFileEndBytes: result?.rssFile,
        readBytes: result?.readBytes ?? (sampled.readBytes || undefined),
        decodeHitRate: result?.decodeHitRate,
        decodeCache: result?.decodeCache,
        cacheStats: result?.cacheStats,
        engineInfo: result?.engineInfo,
        decodeBreakdown: result?.decodeBreakdown,
        prefillBreakdown: result?.prefillBreakdown,
        ids: result?.ids,
        cgroup: cg,
        stderrTail: finished ? undefined : stderr.trim().split("\n").slice(-5).join("\n"),
      });
    });
  });
}

const newRuns = [];
const scenarioInfo = [];
for (const { scenario, kind, ratio, promptTokens: fixedPrompt } of plan) {
  const oversize = kind === "oversize";
  const reps = Number(oversize ? a["oversize-reps"] : a.reps);
  const promptTokens = fixedPrompt ?? Number(a["prompt-tokens"] ?? (oversize ? 32 : 64));
  const decodeTokens = Number(a["decode-tokens"] ?? (oversize ? 16 : fixedPrompt ? 32 : 64));
  const timeoutS = Number(a["timeout-s"] ?? (oversize ? 150 : 600));
  const warmup = !a["no-warmup"] && !oversize;
  for (const m of scenarioModels(kind, args)) {
    if (m.skipped) {
      log(`${scenario}/${m.id}: skipped: ${m.skipped}`);
      for (const threads of args.threads) scenarioInfo.push({ scenario, model: m.id, skipped: m.skipped, date, threads });
      continue;
    }
    const t0 = performance.now();
    const p = await prepareModel(m, args, log);
    log(`${scenario}/${m.id}: ready in ${((performance.now() - t0) / 1000).toFixed(0)} s (${p.dir})`);
    const maxPos = p.config.max_position_embeddings ?? 4096;
    const prompt = makePrompt(p.hfDir, Math.min(promptTokens, maxPos - decodeTokens - 1));
    // Long-context scenarios also decode after the default 64-token prompt in the same child
    // (child.mjs shortPrompt): the long-vs-short ratio from one process, seconds apart.
    const shortPrompt = fixedPrompt && fixedPrompt > 64 ? makePrompt(p.hfDir, 64) : undefined;
    const counts = paramCounts(p.config);

    if (!roofline.disk) {
      const biggest = Object.values(p.gguf).sort((x, y) => y.bytes - x.bytes)[0];
      if (biggest && biggest.bytes > 256e6) {
        // This (virtual) disk's speed drifts by 2-3x within minutes: measure the disk and the read
        // path alternately, three rounds, and take the median of each and of the per-round ratios.
        const mm = p.moe.f16 ?? Object.values(p.moe)[0];
        const rounds = [];
        for (let r = 0; r < 3; r++) {
          const disk = measureDiskBandwidth(biggest.path, { passes: 1 });
          let rp;
          try {
            rp = mm ? await measureReadPath(mm.dir, { inFlight: 4, passes: 1 }) : undefined;
          } catch (err) {
            rp = { error: String(err?.message ?? err) };
          }
          rounds.push({ disk, rp });
        }
        const mid = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
        const diskBps = mid(rounds.map((x) => x.disk.bytesPerSecond));
        roofline.disk = { date, ...rounds[0].disk, bytesPerSecond: diskBps, rounds: rounds.map((x) => x.disk.bytesPerSecond), method: `${rounds[0].disk.method}; median of 3 rounds alternating with the read path` };
        log(`disk read bandwidth: ${(roofline.disk.bytesPerSecond / 1e9).toFixed(2)} GB/s (${roofline.disk.method}, ${(roofline.disk.bytes / 1e9).toFixed(2)} GB file)`);
        // moe-run's misses come through this path; it should get most of what the disk gives sequentially.
        if (mm) {
          try {
            const failed = rounds.find((x) => x.rp?.error);
            if (failed) throw new Error(failed.rp.error);
            const ratios = rounds.map((x) => x.rp.bytesPerSecond / x.disk.bytesPerSecond);
            const rp = { ...rounds[0].rp, bytesPerSecond: mid(rounds.map((x) => x.rp.bytesPerSecond)), rounds: rounds.map((x) => x.rp.bytesPerSecond) };
            roofline.readPath = { date, ...rp, diskBytesPerSecond: roofline.disk.bytesPerSecond, fractionOfDisk: mid(ratios), fractionOfDiskPerRound: ratios };
            log(`read path ${(rp.bytesPerSecond / 1e9).toFixed(2)} GB/s = ${(roofline.readPath.fractionOfDisk * 100).toFixed(0)}% of the disk's sequential ${(roofline.disk.bytesPerSecond / 1e9).toFixed(2)} GB/s (${rp.encoding} store, ${rp.records} records, direct reads ${rp.directReads}; target >= 80%)`);
          } catch (err) {
            roofline.readPath = { date, error: String(err?.message ?? err) };
            log(`read path: not measured (${roofline.readPath.error})`);
          }
        }
      }
    }

    if (a["disk-only"]) continue; // the disk and read-path figures only

    const engines = [];
    for (const enc of args.moeRunExperts) {
      const mm = p.moe[enc];
      engines.push({ engine: "moe-run", format: enc, model: mm.dir, fileBytes: mm.bytes, precision: mm.manifest.precision, ...activeBytesMoeRun(mm.manifest), pair: pairOf(enc) });
    }
    for (const fmt of args.formats) {
      const g = p.gguf[fmt];
      engines.push({ engine: "node-llama-cpp", format: fmt, model: g.path, fileBytes: g.bytes, ...activeBytesGguf(g.header, p.config) });
    }

    // Each pair's limit is its GGUF's size / ratio, so both engines of a pair see the same limit and
    // every model is about `ratio` times it (moe-run's directory is a little larger than the GGUF).
    const limits = new Map();
    let cgroupError;
    if (oversize) {
      for (const e of engines) {
        const fmt = e.engine === "moe-run" ? e.pair : e.format;
        const basis = args.oversizeLimitMb ? undefined : p.gguf[fmt] ? `${fmt} GGUF / ${ratio}` : `own files / ${ratio} (no ${fmt} GGUF in --formats)`;
        const bytes = args.oversizeLimitMb ? args.oversizeLimitMb * 2 ** 20 : (p.gguf[fmt]?.bytes ?? e.fileBytes) / ratio;
        limits.set(e, { bytes: Math.floor(bytes / 4096) * 4096, basis: basis ?? "--oversize-limit-mb" });
      }
      const probe = createMemoryCgroup(`moe-run-bench-probe-${process.pid}`, Math.min(...[...limits.values()].map((x) => x.bytes)));
      if (probe.error) cgroupError = probe.error;
      else probe.remove();
      if (cgroupError) log(`oversize: ${cgroupError}; the oversize runs are recorded as not run`);
    }
    const info = {
      scenario,
      model: p.id,
      date,
      config: p.config,
      synthetic: p.synth ?? null,
      params: counts.params,
      activeParams: counts.activeParams,
      promptTokens: prompt.ids.length,
      decodeTokens,
      reps,
      warmup,
      oversizeRatio: ratio,
      memoryLimitBytes: args.oversizeLimitMb && oversize ? limits.get(engines[0]).bytes : undefined,
      memoryLimits: oversize ? Object.fromEntries(engines.map((e) => [`${e.engine}:${e.format}`, limits.get(e).bytes])) : undefined,
      cgroupError,
      files: Object.fromEntries(engines.map((e) => [`${e.engine}:${e.format}`, e.fileBytes])),
      prepareTimings: p.timings,
    };
    for (const threads of args.threads) scenarioInfo.push({ ...info, threads });

    // One row per (engine, thread count); within a rep an engine's thread counts run back to back,
    // so rep i at 1 and at 2 threads saw about the same machine (rows.mjs pairs them).
    const units = engines.flatMap((engine) => args.threads.map((threads) => ({ engine, threads })));
    const samples = new Map(units.map((u) => [u, []]));
    const unit = (e, t) => units.find((u) => u.engine === e && u.threads === t);
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? engines : [...engines].reverse();
      const threadOrder = rep % 2 === 0 ? args.threads : [...args.threads].reverse();
      for (const e of order) {
        for (const threads of threadOrder) {
          const out = samples.get(unit(e, threads));
          const limitBytes = limits.get(e)?.bytes;
          const job = {
            engine: e.engine,
            model: e.model,
            promptText: prompt.text,
            promptIds: prompt.ids,
            decodeTokens,
            threads,
            warmup,
            loadOptions: e.engine === "moe-run" ? args.moeRunOptions : undefined,
            // The short-context decode before the measured run in odd reps, after it in even ones.
            ...(shortPrompt ? { shortPrompt: { text: shortPrompt.text, ids: shortPrompt.ids }, shortFirst: rep % 2 === 1 } : {}),
          };
          let cgroup;
          let mem;
          if (oversize) {
            if (cgroupError) {
              out.push({ finished: false, reason: `not run: ${cgroupError}` });
              continue;
            }
            // Start cold: every model file of this scenario out of the page cache, a fresh group.
            evictFromPageCache(engines.map((x) => x.model));
            cgroup = createMemoryCgroup(`moe-run-bench-${process.pid}-${scenario}-${rep}-${e.engine}-${e.format}-${threads}t`, limitBytes);
            if (cgroup.error) {
              out.push({ finished: false, reason: `not run: ${cgroup.error}` });
              continue;
            }
          } else {
            // This run's own bandwidth, at its thread count, just before it.
            mem = measureMemoryBandwidth(args.work, threads, log, { quick: true });
          }
          const where = oversize ? ` (memory limit ${(limitBytes / 2 ** 20).toFixed(0)} MiB, model ${(e.fileBytes / limitBytes).toFixed(1)}x it)` : ` (memory ${gb(mem.bytesPerSecond)}, measured in ${mem.seconds.toFixed(2)} s)`;
          log(`${scenario}/${p.id}: rep ${rep + 1}/${reps} ${e.engine} ${e.format}, ${threads} thread${threads > 1 ? "s" : ""}${where}...`);
          const s = await runChild(job, { cgroup, timeoutS });
          cgroup?.remove();
          if (mem) s.memoryBandwidthBytesPerS = mem.bytesPerSecond;
          log(
            `  ${s.finished ? "done" : `NOT FINISHED (${s.reason})`}: prefill ${fmt(s.prefillTokPerS)} tok/s, decode ${fmt(s.decodeTokPerS)} tok/s, ` +
              `peak RSS ${mb(s.peakRssBytes)}, read ${mb(s.readBytes)}${s.cgroup ? `, cgroup max ${mb(s.cgroup.maxUsageBytes)}` : ""}` +
              `${s.decodeHitRate !== undefined ? `, decode hit rate ${(s.decodeHitRate * 100).toFixed(0)}%` : ""}`
          );
          out.push(s);
        }
      }
    }

    // Aggregate per engine and thread count, then compare.
    const rows = scenarioRows({ units, samples, p, prompt, decodeTokens, oversize, limits, ratio, scenario, date, git, roofline, startBandwidth, pairOf });
    // Two threads vs one in one process, pair by pair next to the memory's own scaling.
    if (!oversize && !fixedPrompt && args.threadPairs > 0 && args.threads.includes(1) && args.threads.includes(2))
      for (const e of engines.filter((x) => x.engine === "moe-run")) {
        const row = rows.find((r) => r.engine === "moe-run" && r.format === e.format && r.threads === 2);
        if (row) row.threadPairs = runThreadPairs(e, prompt, decodeTokens, `${scenario}/${p.id}`);
      }
    newRuns.push(...rows);
  }
}

const text = writeReports({ out: a.out, md: a.md, date, machine, moeRun: git, nodeLlamaCppVersion, llamaCppRelease, roofline, newRuns, scenarioInfo, args: { ...args, argv: process.argv.slice(2) } });
const lines = text.split("\n");
// The results table and the targets on stdout (tables kept apart by a blank line).
const table = lines.filter((l, i) => l.startsWith("|") || (l === "" && lines[i - 1]?.startsWith("|")));
const tStart = lines.indexOf("## Targets");
console.log([...table, "", ...lines.slice(tStart, lines.indexOf("## How it is measured"))].join("\n").trim());
log(`wrote ${path.relative(process.cwd(), a.out)} and ${path.relative(process.cwd(), a.md)}`);

/** bench/llama/threadPairs.mjs for one moe-run precision: its pairs, or { error }. */
function runThreadPairs(e, prompt, decodeTokens, where) {
  log(`${where}: moe-run ${e.format}, 1 vs 2 threads in one process, until ${args.threadPairs} pairs with the memory's own 2-vs-1 >= ${args.quietMemoryScaling}x (at most ${args.threadPairsSeconds} s)...`);
  const job = { model: e.model, promptText: prompt.text, decodeTokens, work: args.work, quietScaling: args.quietMemoryScaling, quietPairs: args.threadPairs, maxPairs: 4 * args.threadPairs + 8, maxSeconds: args.threadPairsSeconds };
  const r = spawnSync(process.execPath, [path.join(ROOT, "bench", "llama", "threadPairs.mjs"), JSON.stringify(job)], { cwd: ROOT, encoding: "utf8", timeout: (args.threadPairsSeconds + 300) * 1000 });
  const line = (r.stdout ?? "").split("\n").find((l) => l.startsWith("@@RESULT "));
  const res = line ? JSON.parse(line.slice(9)) : { ok: false, error: `exit ${r.status ?? r.signal}: ${(r.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}` };
  if (!res.ok) {
    log(`  thread pairs failed: ${res.error.split("\n")[0]}`);
    return { error: res.error.split("\n")[0] };
  }
  const quiet = res.pairs.filter((x) => x.quiet);
  const m = (xs) => median(xs.map((x) => x.ratio));
  log(`  ${res.pairs.length} pairs in ${res.seconds.toFixed(0)} s, ${quiet.length} quiet: 2 vs 1 thread median ${m(quiet)?.toFixed(2) ?? "-"}x over the quiet ones, ${m(res.pairs)?.toFixed(2) ?? "-"}x over all`);
  return { quietMemoryScaling: args.quietMemoryScaling, decodeTokens, pairs: res.pairs, quietPairs: quiet.length, quietMedian: m(quiet), allMedian: m(res.pairs), seconds: res.seconds };
}

function gitInfo() {
  try {
    const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no", "--", "src"], { cwd: ROOT, encoding: "utf8" }).trim() !== "";
    return { commit, dirty };
  } catch {
    return undefined;
  }
}

function finishedPhase(result, last) {
  if (result?.ok) return "done";
  if (!last.phase) return "loading";
  if (last.phase === "loaded") return "warm-up";
  if (last.phase === "measuring") return "prefill";
  return `decode (after ${last.n} tokens)`;
}

function fmt(x) {
  return x === undefined || !Number.isFinite(x) ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1);
}
function mb(x) {
  return x === undefined || !Number.isFinite(x) ? "-" : `${(x / 2 ** 20).toFixed(0)} MiB`;
}
