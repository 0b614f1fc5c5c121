#!/usr/bin/env node
/**
 * How to compute a quantized expert on the CPU, measured: onnxruntime with the weights as graph
 * inputs (fp32; other precisions must be decoded first, every call), onnxruntime with the weights
 * as initializers (prepacked at session creation: fast runs, slow creation, one session per
 * expert), and moe-run's native kernels reading the store's encoding directly.
 * Prints a table (median ms per expert call, 1 and 16 tokens) and writes bench/results/kernels.json.
 *
 *   node bench/kernels.mjs [--hidden 1024] [--ffn 2816] [--reps 20] [--threads 2]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-node";
import { GraphBuilder } from "../dist/onnx/GraphBuilder.js";
import { buildExpertGraph } from "../dist/importer/modelGraphs.js";
import { createExpertKernel } from "../dist/kernels/expertKernels.js";
import { ExpertStore } from "../dist/store/ExpertStore.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    hidden: { type: "string", default: "1024" },
    ffn: { type: "string", default: "2816" },
    reps: { type: "string", default: "20" },
    threads: { type: "string", default: String(os.availableParallelism()) },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "kernels.json") },
  },
});
const H = Number(args.hidden);
const F = Number(args.ffn);
const reps = Number(args.reps);
const threads = Number(args.threads);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const work = fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-kernels-"));

let seed = 1;
const rand = (n, scale) => Float32Array.from({ length: n }, () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale);
const weights = { gate: rand(F * H, 0.1), up: rand(F * H, 0.1), down: rand(H * F, 0.1) };
const inputs = { 1: rand(H, 1), 16: rand(16 * H, 1) };

async function timeIt(fn) {
  await fn();
  await fn();
  const xs = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    xs.push(performance.now() - t0);
  }
  return median(xs);
}

const rows = [];
const expertGraph = path.join(work, "expert.onnx");
buildExpertGraph({ hiddenSize: H, expertFfn: F }).save(expertGraph);

// 1. onnxruntime, weights as inputs (what a shared expert graph does), per encoding.
for (const enc of ["f32", "f16", "int8", "int4"]) {
  const k = await createExpertKernel("onnx", { encoding: enc, hiddenSize: H, expertFfn: F, threads, expertGraph });
  const rec = ExpertStore.pack({ hiddenSize: H, expertFfn: F, encoding: enc }, weights);
  const row = { method: "onnxruntime, weights as inputs", encoding: enc, recordBytes: rec.byteLength, createMs: 0 };
  for (const T of [1, 16]) row[`ms${T}`] = await timeIt(() => k.forward(rec, inputs[T], T, new Float32Array(T * H)));
  rows.push(row);
  await k.dispose();
}

// 2. onnxruntime, weights as initializers (prepacked once per session), fp32.
{
  const g = new GraphBuilder("expert_init");
  const x = g.input("x", "float32", ["T", H]);
  const lin = (v, w) => g.op("Gemm", [v, w], { transB: 1 });
  const a = lin(x, g.weight("wg", weights.gate, [F, H]));
  const h = g.op("Mul", [g.op("Mul", [a, g.op("Sigmoid", [a])]), lin(x, g.weight("wu", weights.up, [F, H]))]);
  g.output(lin(h, g.weight("wd", weights.down, [H, F])), "y", "float32", ["T", H]);
  const file = path.join(work, "expert_init.onnx");
  g.save(file);
  const t0 = performance.now();
  const s = await ort.InferenceSession.create(file, { intraOpNumThreads: threads, graphOptimizationLevel: "all" });
  const createMs = performance.now() - t0;
  const row = { method: "onnxruntime, weights as initializers", encoding: "f32", recordBytes: 3 * F * H * 4, createMs };
  for (const T of [1, 16]) row[`ms${T}`] = await timeIt(() => s.run({ x: new ort.Tensor("float32", inputs[T], [T, H]) }));
  rows.push(row);
  await s.release();
}

// 3. native kernels on the store's encoding.
for (const enc of ["f32", "f16", "int8", "int4"]) {
  const k = await createExpertKernel("native", { encoding: enc, hiddenSize: H, expertFfn: F, threads, expertGraph });
  const rec = ExpertStore.pack({ hiddenSize: H, expertFfn: F, encoding: enc }, weights);
  const row = { method: "native kernel (moe-run)", encoding: enc, recordBytes: rec.byteLength, createMs: 0 };
  for (const T of [1, 16]) row[`ms${T}`] = await timeIt(() => k.forward(rec, inputs[T], T, new Float32Array(T * H)));
  rows.push(row);
}
fs.rmSync(work, { recursive: true, force: true });

console.log(`expert ${H}x${F} (SwiGLU), ${threads} threads, median of ${reps}`);
console.log("| method | weights | record MB | session create ms | 1 token ms | 16 tokens ms | GB/s at 1 token |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) console.log(`| ${r.method} | ${r.encoding} | ${(r.recordBytes / 1e6).toFixed(1)} | ${r.createMs ? r.createMs.toFixed(0) : "-"} | ${r.ms1.toFixed(3)} | ${r.ms16.toFixed(3)} | ${(r.recordBytes / r.ms1 / 1e6).toFixed(1)} |`);
fs.mkdirSync(path.dirname(args.out), { recursive: true });
fs.writeFileSync(args.out, JSON.stringify({ bench: "kernels", date: new Date().toISOString(), machine: { cpus: os.availableParallelism(), cpu: os.cpus()[0]?.model }, hidden: H, ffn: F, threads, reps, rows }, null, 2) + "\n");
process.stderr.write(`wrote ${path.relative(process.cwd(), args.out)}\n`);
