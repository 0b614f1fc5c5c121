import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll } from "vitest";
import { importModel, type ImportOptions } from "../src/importer/importModel.js";
import { createExpertKernel, type ExpertKernelName, type ExpertKernelOptions } from "../src/kernels/expertKernels.js";
import { loadModel } from "../src/model/loadModel.js";
import type { LoadModelOptions } from "../src/model/MoeModel.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const CLI = path.join(ROOT, "dist", "cli", "cli.js");
export const MODELS = path.join(ROOT, "models");

/** Folders tmpDir() made for the test file being run; removed when the file is done. */
const madeDirs: string[] = [];

export function tmpDir(prefix = "moe-run-test-"): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  madeDirs.push(dir);
  return dir;
}

// Imported models are hundreds of MB each: without this a test run leaves gigabytes in the temp
// folder (vitest evaluates this module once per test file, so the hook is per file).
afterAll(() => {
  for (const dir of madeDirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], options: { timeoutMs?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: options.timeoutMs ?? 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Starts the CLI without waiting; for tests that interrupt it. */
export function startCli(args: string[]) {
  return spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
}

/** Imports a bundled fixture into a fresh temp dir (quietly) and returns the model dir. */
export async function importFixture(name: string, options: ImportOptions = {}): Promise<string> {
  const out = path.join(tmpDir(), name);
  await importModel(path.join(MODELS, name), out, { progress: false, log: () => {}, ...options });
  return out;
}

/** Copies a bundled checkpoint so a test can damage it. */
export function copyFixture(name: string): string {
  const dst = path.join(tmpDir(), name);
  fs.cpSync(path.join(MODELS, name), dst, { recursive: true });
  return dst;
}

/** Deterministic pseudo-random values in [-scale, scale) (a linear congruential generator). */
export function rand(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

/** Largest absolute difference relative to the reference's largest magnitude. */
export function maxRelErr(a: Float32Array, ref: Float32Array): number {
  let err = 0;
  let mag = 0;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - ref[i]!));
    mag = Math.max(mag, Math.abs(ref[i]!));
  }
  return err / mag;
}

/**
 * The shared folder next to the project (not part of the repository, and never copied into it: its
 * traces carry no licence): $MOE_RUN_SHARED (a directory that contains traces/), else ../shared
 * beside the repository root.
 */
export function sharedDir(): string {
  return process.env.MOE_RUN_SHARED ? path.resolve(process.env.MOE_RUN_SHARED) : path.resolve(ROOT, "..", "shared");
}

/** The path of a trace in the shared folder's traces/, or undefined when it is not there. */
export function sharedTrace(name: string): string | undefined {
  const file = path.join(sharedDir(), "traces", name);
  return fs.existsSync(file) ? file : undefined;
}

/**
 * For tests that need a shared trace: `describe.skipIf(t.skip)(`title${t.note}`, ...)` (or
 * it.skipIf) reading `t.path` when set, with `t.require()` in a beforeEach (or the test). When the
 * trace is absent the tests are skipped, with the reason in their title; with
 * MOE_RUN_REQUIRE_SHARED=1 (CI) they run instead and each fails on require(), which names the path
 * that was looked for.
 */
export function sharedTraceGate(name: string): { path: string | undefined; skip: boolean; note: string; require: () => string } {
  const found = sharedTrace(name);
  const wanted = path.join(sharedDir(), "traces", name);
  const shown = process.env.MOE_RUN_SHARED ? wanted : `../shared/traces/${name}`;
  const required = process.env.MOE_RUN_REQUIRE_SHARED === "1";
  return {
    path: found,
    skip: !found && !required,
    note: found || required ? "" : ` (skipped: ${shown} not found; set MOE_RUN_SHARED to a folder with traces/)`,
    require: () => {
      if (found) return found;
      throw new Error(
        `the shared routing trace is missing: ${wanted} (MOE_RUN_REQUIRE_SHARED=1 makes it required; ` +
          `put the shared folder at ../shared beside the repository or set MOE_RUN_SHARED to a directory that contains traces/)`
      );
    },
  };
}

/**
 * A routing trace the project itself ships (recorded by bench/cache-policies.mjs from a synthetic
 * 24-layer, 8-expert, top-2 model), for trace tests that must run on a fresh clone.
 */
export const BUNDLED_TRACE = path.join(ROOT, "bench", "results", "cache-policies.synthetic-24L-1024H-3584F-8E-top2-int8.trace.jsonl");

/** Greedy token ids of `tokens` generated tokens (end-of-sequence ignored), and the cache stats after. */
export async function greedyRun(modelDir: string, prompt: string, tokens: number, options: LoadModelOptions = {}) {
  const model = await loadModel(modelDir, { threads: 1, log: () => {}, ...options });
  try {
    const ids: number[] = [];
    for await (const _ of model.generate(prompt, { maxTokens: tokens, stopAtEos: false, onToken: (id) => ids.push(id) })) void _;
    return { ids, stats: await model.cacheStats() };
  } finally {
    await model.dispose();
  }
}

/** y[T, rows] = x[T, cols] . W^T in fp64 (a reference for the kernels, on decoded weights). */
export function matmulRef(W: ArrayLike<number>, rows: number, cols: number, x: ArrayLike<number>, T: number): Float64Array {
  const y = new Float64Array(T * rows);
  for (let t = 0; t < T; t++)
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += W[r * cols + c]! * x[t * cols + c]!;
      y[t * rows + r] = s;
    }
  return y;
}

/** One expert's output [tokens, H] from `record` (of `layer`) with the kernel `name`, which is made and disposed here. */
export async function expertOutput(name: ExpertKernelName, options: ExpertKernelOptions, record: Uint8Array, x: Float32Array, tokens: number, layer = 0): Promise<Float32Array> {
  const kernel = await createExpertKernel(name, options);
  try {
    const resident = await kernel.prepare(record, layer);
    const out = new Float32Array(tokens * options.hiddenSize);
    await kernel.forward(resident, x, tokens, out, layer);
    kernel.free(resident);
    return out;
  } finally {
    await kernel.dispose();
  }
}

/** Two fp32 arrays hold the same bits (NaN payloads and signed zeros included). */
export function sameBits(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}
