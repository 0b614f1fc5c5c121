#!/usr/bin/env node
/**
 * Expert compute on the CPU, measured: moe-run's native kernels on a decode-sized expert (SwiGLU,
 * gate/up [F,H], down [H,F]) per storage encoding, per kernel instruction-set level this CPU can
 * run (each in its own process: MOE_RUN_KERNEL_ISA is read once per process), at 1 and 2 threads
 * (in turn, so drift hits both alike), 1 token (decode) and 16 tokens (prefill).
 * GB/s = record bytes / time (the weights are read once per call).
 * --copies N: each call takes the next of N copies of the record, held the way moe-run holds
 * experts (native blocks, huge pages): with N large enough (64 x a 9 MiB int8 expert) the weights
 * come from memory, not from the cache, as in decoding; 1 (the default) measures a cache-hot expert.
 * With --onnx also onnxruntime with the weights as graph inputs / as initializers (the choice the
 * native kernels were written against).
 * Prints a table (medians; with the cores other processes kept busy meanwhile, from /proc/stat)
 * and writes bench/results/kernels.json.
 *
 * q2_k .. q6_k (GGUF k-quant super-blocks) need --hidden and --ffn multiples of 256 (else skipped);
 * q4_1 / q5_0 / q5_1 (GGUF 32-value blocks) multiples of 32.
 *
 *   node bench/kernels.mjs [--hidden 1024] [--ffn 2816] [--reps 40] [--tokens 1,16] [--isa avx2] [--encodings int4,q4_k] [--copies 64] [--onnx]
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    hidden: { type: "string", default: "1024" },
    ffn: { type: "string", default: "2816" },
    reps: { type: "string", default: "40" },
    copies: { type: "string", default: "1" },
    tokens: { type: "string", default: "1,16" },
    encodings: { type: "string", default: "f32,f16,int8,int4,mxfp4,q4_1,q5_0,q5_1,q2_k,q3_k,q4_k,q6_k" },
    isa: { type: "string" },
    onnx: { type: "boolean", default: false },
    child: { type: "boolean", default: false },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "kernels.json") },
  },
});
const H = Number(args.hidden);
const F = Number(args.ffn);
const reps = Number(args.reps);
const copies = Number(args.copies);
if (!Number.isInteger(copies) || copies < 1) throw new Error(`--copies must be a whole number >= 1, got ${args.copies}`);
const tokenCounts = args.tokens.split(",").map(Number);
const ENCODINGS = args.encodings.split(",").filter((e) => !/_k$/.test(e) || (H % 256 === 0 && F % 256 === 0));
const THREADS = [1, 2];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const addonFile = path.join(ROOT, "native-bindings", "build", "Release", "moe_native.node");

let seed = 1;
const rand = (n, scale) => Float32Array.from({ length: n }, () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale);
const weights = { gate: rand(F * H, 0.1), up: rand(F * H, 0.1), down: rand(H * F, 0.1) };
const inputs = Object.fromEntries(tokenCounts.map((T) => [T, rand(T * H, 1)]));

async function pack(enc) {
  const { ExpertStore } = await import("../dist/store/ExpertStore.js");
  return ExpertStore.pack({ hiddenSize: H, expertFfn: F, encoding: enc }, weights);
}

/**
 * Median ms of fns[i] for each i, in rounds: each fn runs BLOCK calls back to back, then the next
 * fn (so drift hits all alike). The first call of a block is "cold" (a 2-thread call's worker has
 * gone to sleep during the other fn's calls and must be woken); the others are the steady state of
 * back-to-back calls, as when decoding a token (~100 kernel calls in a row).
 */
const BLOCK = 5;
async function timeRounds(fns) {
  const hot = fns.map(() => []);
  const cold = fns.map(() => []);
  const rounds = Math.max(2, Math.ceil(reps / (BLOCK - 1)));
  for (let round = -1; round < rounds; round++) {
    for (let i = 0; i < fns.length; i++) {
      for (let k = 0; k < BLOCK; k++) {
        const t0 = performance.now();
        await fns[i]();
        const ms = performance.now() - t0;
        if (round >= 0) (k === 0 ? cold : hot)[i].push(ms);
      }
    }
  }
  return { hot: hot.map(median), cold: cold.map(median) };
}

/** Busy cores of the whole machine (Linux /proc/stat), to tell what else ran during a measurement. */
function cpuTicks() {
  try {
    const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    return { idle: f[3] + f[4], total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return undefined;
  }
}

/** Cores used by other processes while fn ran (undefined where /proc/stat is not there). */
async function otherLoad(fn) {
  const s0 = cpuTicks();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await fn();
  const wallMs = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const s1 = cpuTicks();
  if (!s0 || !s1 || s1.total === s0.total) return { result, other: undefined };
  const busyCores = (1 - (s1.idle - s0.idle) / (s1.total - s0.total)) * os.availableParallelism();
  return { result, other: Math.max(0, busyCores - (c.user + c.system) / 1000 / wallMs) };
}

/** In a child process (MOE_RUN_KERNEL_ISA set by the parent): the native rows for this level. */
async function nativeRows() {
  const addon = createRequire(import.meta.url)(addonFile);
  const { encodingCode } = await import("../dist/store/expertEncoding.js");
  const rows = [];
  for (const enc of ENCODINGS) {
    const rec = await pack(enc);
    // The copies in native blocks (allocRange: huge pages from 2 MiB), called in turn.
    const ring = Array.from({ length: copies }, () => {
      const r = addon.allocRange(rec.byteLength).subarray(0, rec.byteLength);
      r.set(rec);
      return r;
    });
    let next = 0;
    const take = () => ring[next++ % copies];
    for (const T of tokenCounts) {
      const out = new Float32Array(T * H);
      const fns = THREADS.map((th) => () => addon.expertForward(encodingCode(enc), take(), H, F, inputs[T], T, out, th));
      const { result: ms, other } = await otherLoad(() => timeRounds(fns));
      rows.push({ isa: addon.kernelIsa(), encoding: enc, tokens: T, recordBytes: rec.byteLength, copies, ms1: ms.hot[0], ms2: ms.hot[1], ms2Cold: ms.cold[1], otherLoad: other });
    }
    for (const r of ring) addon.releaseRange(r);
  }
  return rows;
}

/** onnxruntime for comparison (in the parent; f32 initializers and per-encoding graph inputs). */
async function onnxRows() {
  const ort = await import("onnxruntime-node");
  const { GraphBuilder } = await import("../dist/onnx/GraphBuilder.js");
  const { buildExpertGraph } = await import("../dist/importer/modelGraphs.js");
  const { createExpertKernel } = await import("../dist/kernels/expertKernels.js");
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-kernels-"));
  const rows = [];
  try {
    const expertGraph = path.join(work, "expert.onnx");
    buildExpertGraph({ hiddenSize: H, expertFfn: F }).save(expertGraph);
    for (const enc of ENCODINGS) {
      const rec = await pack(enc);
      const ks = await Promise.all(THREADS.map((threads) => createExpertKernel("onnx", { encoding: enc, hiddenSize: H, expertFfn: F, threads, expertGraph })));
      for (const T of tokenCounts) {
        const ms = await timeRounds(ks.map((k) => () => k.forward(rec, inputs[T], T, new Float32Array(T * H), 0)));
        rows.push({ isa: "onnxruntime (weights as inputs)", encoding: enc, tokens: T, recordBytes: rec.byteLength, ms1: ms.hot[0], ms2: ms.hot[1], ms2Cold: ms.cold[1] });
      }
      for (const k of ks) await k.dispose();
    }
    const g = new GraphBuilder("expert_init");
    const x = g.input("x", "float32", ["T", H]);
    const lin = (v, w) => g.op("Gemm", [v, w], { transB: 1 });
    const a = lin(x, g.weight("wg", weights.gate, [F, H]));
    const h = g.op("Mul", [g.op("Mul", [a, g.op("Sigmoid", [a])]), lin(x, g.weight("wu", weights.up, [F, H]))]);
    g.output(lin(h, g.weight("wd", weights.down, [H, F])), "y", "float32", ["T", H]);
    const file = path.join(work, "expert_init.onnx");
    g.save(file);
    const sessions = await Promise.all(THREADS.map((n) => ort.InferenceSession.create(file, { intraOpNumThreads: n, graphOptimizationLevel: "all" })));
    for (const T of tokenCounts) {
      const ms = await timeRounds(sessions.map((s) => () => s.run({ x: new ort.Tensor("float32", inputs[T], [T, H]) })));
      rows.push({ isa: "onnxruntime (initializers)", encoding: "f32", tokens: T, recordBytes: 3 * F * H * 4, ms1: ms.hot[0], ms2: ms.hot[1], ms2Cold: ms.cold[1] });
    }
    for (const s of sessions) await s.release();
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return rows;
}

if (args.child) {
  process.stdout.write(JSON.stringify(await nativeRows()) + "\n");
  process.exit(0);
}

const addon = createRequire(import.meta.url)(addonFile);
const isas = args.isa ? args.isa.split(",") : addon.kernelIsas();
const rows = [];
for (const isa of isas) {
  const argv = [fileURLToPath(import.meta.url), "--child", "--hidden", String(H), "--ffn", String(F), "--reps", String(reps), "--tokens", args.tokens, "--encodings", args.encodings, "--copies", String(copies)];
  const r = spawnSync(process.execPath, argv, { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  if (r.status !== 0) throw new Error(`kernel level ${isa}: the child process failed (status ${r.status})`);
  rows.push(...JSON.parse(r.stdout.trim().split("\n").pop()));
}
if (args.onnx) rows.push(...(await onnxRows()));

const gbs = (r, ms) => (r.recordBytes / ms / 1e6).toFixed(1);
const from = copies === 1 ? "one record (cache-hot)" : `${copies} copies of the record in turn (from memory once they outgrow the cache)`;
console.log(`expert ${H}x${F} (SwiGLU), ${os.cpus()[0]?.model ?? "?"} x${os.availableParallelism()}, medians of ~${reps} back-to-back calls (blocks of ${BLOCK - 1} after a cold one, 1 and 2 threads in turn), ${from}`);
console.log("| kernels | weights | record MB | tokens | 1 thread ms | 2 threads ms | 2/1 speedup | GB/s 1 thread | GB/s 2 threads | 2 threads, cold ms | other load (cores) |");
console.log("|---|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows) {
  const other = r.otherLoad === undefined ? "-" : r.otherLoad.toFixed(2);
  console.log(`| ${r.isa} | ${r.encoding} | ${(r.recordBytes / 1e6).toFixed(1)} | ${r.tokens} | ${r.ms1.toFixed(3)} | ${r.ms2.toFixed(3)} | ${(r.ms1 / r.ms2).toFixed(2)}x | ${gbs(r, r.ms1)} | ${gbs(r, r.ms2)} | ${r.ms2Cold.toFixed(3)} | ${other} |`);
}
console.log("cold: the first 2-thread call after 1-thread ones (its worker asleep). other load: cores busy with other processes meanwhile (a busy machine makes 2 threads look worse)");
fs.mkdirSync(path.dirname(args.out), { recursive: true });
const machine = { cpus: os.availableParallelism(), cpu: os.cpus()[0]?.model, kernelIsas: addon.kernelIsas() };
fs.writeFileSync(args.out, JSON.stringify({ bench: "kernels", date: new Date().toISOString(), machine, hidden: H, ffn: F, reps, copies, rows }, null, 2) + "\n");
process.stderr.write(`wrote ${path.relative(process.cwd(), args.out)}\n`);
