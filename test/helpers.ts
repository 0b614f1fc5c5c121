import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { importModel, type ImportOptions } from "../src/importer/importModel.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const CLI = path.join(ROOT, "dist", "cli", "cli.js");
export const MODELS = path.join(ROOT, "models");

export function tmpDir(prefix = "moe-run-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

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
