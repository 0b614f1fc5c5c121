#!/usr/bin/env node
/**
 * How late the caller's timers fire while a model generates, for both entry points: loadModel()
 * (the default: compute on a worker thread) and loadModelOnThisThread() (compute on the caller's
 * thread, which onnxruntime and the native kernels block for a forward pass at a time). A 5 ms
 * interval runs during each generation; its lateness (time since the previous tick minus 5 ms) is
 * the event loop's delay. Each round runs each entry point in a child process of its own (the
 * native kernels' thread pool is per process: sharing one would mix the two), warm first; rounds
 * alternate so that a burst of load on a shared machine hits both. Also the same timer with
 * nothing computing (the machine's own noise). Prints a table, writes
 * bench/results/responsiveness.json: the worst delay (median over --reps rounds), the p99 delay
 * (over every tick of every round), and the prefill and per-token compute times.
 *
 *   node bench/responsiveness.mjs [--model moe-tiny-en] [--reps 3] [--prompt-tokens 160]
 *                                 [--decode-tokens 64] [--threads N] [--interval-ms 5]
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { importModel, loadModel, loadModelOnThisThread } from "../dist/index.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: "moe-tiny-en" },
    reps: { type: "string", default: "3" },
    "prompt-tokens": { type: "string", default: "160" },
    "decode-tokens": { type: "string", default: "64" },
    // The library's default: every core computes, and the worker's lower priority leaves the caller its turn.
    threads: { type: "string", default: String(os.availableParallelism()) },
    "interval-ms": { type: "string", default: "5" },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "responsiveness.json") },
    // Internal: run one entry point on this model directory and print its figures as JSON.
    child: { type: "string" },
    dir: { type: "string" },
  },
});
const reps = Number(args.reps);
const promptTokens = Number(args["prompt-tokens"]);
const decodeTokens = Number(args["decode-tokens"]);
const threads = Number(args.threads);
const intervalMs = Number(args["interval-ms"]);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : 0;
};

/** Runs `work` under a `intervalMs` interval; returns every tick's lateness (ms) and work's value. */
async function timerDelays(work) {
  const delays = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    delays.push(Math.max(0, now - last - intervalMs));
    last = now;
  }, intervalMs);
  try {
    const value = await work();
    return { delays, value };
  } finally {
    clearInterval(timer);
  }
}

async function generate(model, prompt) {
  const gen = model.generate(prompt, { maxTokens: decodeTokens, stopAtEos: false });
  for (;;) {
    const r = await gen.next();
    if (r.done) return r.value;
  }
}

if (args.child) {
  // One entry point: a warm-up generation, then one measured.
  const load = args.child === "worker" ? loadModel : loadModelOnThisThread;
  const model = await load(args.dir, { threads, log: () => {} });
  const ids = model.tokenize("And the LORD spake unto Moses, saying, Speak unto the children of Israel. ".repeat(40)).slice(1, promptTokens);
  const prompt = model.tokenizer.decode(ids); // the tokenizer adds BOS again
  await generate(model, prompt);
  const t0 = performance.now();
  const { delays, value } = await timerDelays(() => generate(model, prompt));
  const seconds = (performance.now() - t0) / 1000;
  await model.dispose();
  process.stdout.write(JSON.stringify({ delays, seconds, stats: value }) + "\n");
  process.exit(0);
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-bench-resp-"));
const dir = path.join(work, args.model);
await importModel(path.join(ROOT, "models", args.model), dir, { progress: false, log: () => {} });
const self = fileURLToPath(import.meta.url);
const childArgs = ["--threads", String(threads), "--prompt-tokens", String(promptTokens), "--decode-tokens", String(decodeTokens), "--interval-ms", String(intervalMs), "--dir", dir];
const entries = [
  { entry: "loadModel (worker thread, default)", child: "worker", runs: [] },
  { entry: "loadModelOnThisThread", child: "inline", runs: [] },
  { entry: "nothing computing (the machine's noise)", runs: [] },
];
for (let r = 0; r < reps; r++) {
  for (const e of entries.slice(0, 2)) {
    const out = execFileSync(process.execPath, [self, "--child", e.child, ...childArgs], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    e.runs.push(JSON.parse(out.trim().split("\n").at(-1)));
  }
  const seconds = entries[0].runs.at(-1).seconds;
  const { delays } = await timerDelays(() => new Promise((resolve) => setTimeout(resolve, 1000 * seconds)));
  entries[2].runs.push({ delays, seconds });
}
fs.rmSync(work, { recursive: true, force: true });

const rows = entries.map((e) => {
  const stats = e.runs.map((x) => x.stats).filter(Boolean);
  return {
    entry: e.entry,
    worstDelayMs: median(e.runs.map((x) => Math.max(0, ...x.delays))),
    p99DelayMs: quantile(e.runs.flatMap((x) => x.delays), 0.99),
    worstDelayRunsMs: e.runs.map((x) => Math.max(0, ...x.delays)),
    ticks: e.runs.reduce((n, x) => n + x.delays.length, 0),
    promptTokens: stats[0]?.promptTokens,
    generatedTokens: stats[0]?.generatedTokens,
    prefillMs: stats.length ? median(stats.map((s) => 1000 * s.prefillSeconds)) : undefined,
    decodeMsPerToken: stats.length ? median(stats.map((s) => (1000 * s.decodeSeconds) / Math.max(1, s.generatedTokens - 1))) : undefined,
  };
});

const ms = (x, digits = 1) => (x === undefined ? "-" : x.toFixed(digits));
console.log(`| ${args.model}, ${threads} thread(s), ${rows[0].promptTokens}-token prompt + ${decodeTokens} tokens, ${intervalMs} ms timer | worst delay ms (median of ${reps}) | p99 delay ms | prefill ms | decode ms/token |`);
console.log("|---|---|---|---|---|");
for (const r of rows) console.log(`| ${r.entry} | ${ms(r.worstDelayMs)} | ${ms(r.p99DelayMs)} | ${ms(r.prefillMs)} | ${ms(r.decodeMsPerToken, 2)} |`);
fs.mkdirSync(path.dirname(args.out), { recursive: true });
const settings = { model: args.model, reps, promptTokens, decodeTokens, threads, intervalMs };
fs.writeFileSync(args.out, JSON.stringify({ bench: "responsiveness", date: new Date().toISOString(), machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, loadavg: os.loadavg() }, settings, rows }, null, 2) + "\n");
process.stderr.write(`wrote ${path.relative(process.cwd(), args.out)}\n`);
