/**
 * One memory plan for a loaded model: what this process may use (its cgroup's limit, the
 * machine's available memory, a GPU's free memory), minus what the model needs besides experts
 * (dense graphs and runtime, measured as the process's RSS once they are loaded; the KV cache at
 * the chosen context; the expert kernel's and the reads' working memory; a margin), gives the
 * expert tiers' budgets. User budgets (--device-mem, --host-mem) override it.
 *
 * Expert bytes are held once: with the CPU kernels the device tier's form IS the record, so the
 * host tier gets nothing and the device tier everything; records are read with direct I/O, so the
 * page cache holds no second copy.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { InvalidOptionError } from "../errors.js";
import { formatBytes } from "../util/bytes.js";

export type LimitSource = "cgroup-v2" | "cgroup-v1" | "meminfo";

export interface MemoryLimits {
  /** The tightest limit on this process's memory, bytes. */
  limitBytes: number;
  /** What set it. */
  source: LimitSource;
  /** Bytes still free to this process now: MemAvailable, and the cgroup limit minus its anonymous use. */
  availableBytes: number;
  memTotalBytes: number;
  memAvailableBytes: number;
  cgroup?: { version: 1 | 2; dir: string; limitBytes: number; anonBytes: number };
}

/** Files the limits are read from; a test points this at a fake tree. */
export interface LimitFiles {
  /** Root of /proc and /sys (default "/"). */
  root?: string;
}

const UNLIMITED = 2 ** 60; // cgroup v1 writes ~2^63 for "no limit"

function read(root: string, file: string): string | undefined {
  try {
    return fs.readFileSync(path.join(root, file), "utf8");
  } catch {
    return undefined;
  }
}

function meminfo(root: string): { total: number; available: number } {
  const text = read(root, "proc/meminfo") ?? "";
  const kb = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text);
    return m ? Number(m[1]) * 1024 : undefined;
  };
  const total = kb("MemTotal") ?? 0;
  return { total, available: kb("MemAvailable") ?? kb("MemFree") ?? total };
}

function statField(text: string | undefined, names: string[]): number | undefined {
  for (const name of names) {
    const m = new RegExp(`^${name} (\\d+)$`, "m").exec(text ?? "");
    if (m) return Number(m[1]);
  }
  return undefined;
}

/**
 * The memory cgroup of this process and its tightest limit over the cgroup and its ancestors
 * (a parent's limit binds its children too). Paths in /proc/self/cgroup are relative to the
 * hierarchy's mount, usually /sys/fs/cgroup[/memory]; inside a container whose namespace hides the
 * outer path, the mount root itself is the process's cgroup.
 */
function cgroupLimit(root: string): MemoryLimits["cgroup"] | undefined {
  const lines = (read(root, "proc/self/cgroup") ?? "").split("\n").filter(Boolean);
  const v1 = lines.map((l) => l.split(":")).find((p) => p.length >= 3 && p[1]!.split(",").includes("memory"));
  const v2 = lines.map((l) => l.split(":")).find((p) => p.length >= 3 && p[0] === "0" && p[1] === "");
  const candidates: { version: 1 | 2; mount: string; rel: string }[] = [];
  if (v1) candidates.push({ version: 1, mount: "sys/fs/cgroup/memory", rel: v1.slice(2).join(":") });
  if (v2) candidates.push({ version: 2, mount: "sys/fs/cgroup", rel: v2.slice(2).join(":") }, { version: 2, mount: "sys/fs/cgroup/unified", rel: v2.slice(2).join(":") });
  for (const c of candidates) {
    const limitFile = c.version === 1 ? "memory.limit_in_bytes" : "memory.max";
    let rel = c.rel.replace(/^\/+/, "");
    if (read(root, path.join(c.mount, rel, limitFile)) === undefined) rel = ""; // namespaced: the mount root is ours
    if (read(root, path.join(c.mount, rel, limitFile)) === undefined) continue;
    const dir = path.join(c.mount, rel);
    let limit = Infinity;
    for (let d = rel; ; d = path.dirname(d)) {
      const text = read(root, path.join(c.mount, d === "." ? "" : d, limitFile))?.trim();
      if (text !== undefined && text !== "max") {
        const v = Number(text);
        if (Number.isFinite(v) && v > 0 && v < UNLIMITED) limit = Math.min(limit, v);
      }
      if (d === "" || d === "." || d === "/") break;
    }
    const stat = read(root, path.join(dir, "memory.stat"));
    const anon = c.version === 1 ? statField(stat, ["total_rss", "rss"]) : statField(stat, ["anon"]);
    const usage = Number(read(root, path.join(dir, c.version === 1 ? "memory.usage_in_bytes" : "memory.current"))?.trim() ?? "0");
    return { version: c.version, dir: "/" + dir, limitBytes: limit, anonBytes: anon ?? usage };
  }
  return undefined;
}

/** What this process may use: the cgroup's limit and MemAvailable, whichever binds. */
export function readMemoryLimits(files: LimitFiles = {}): MemoryLimits {
  const root = files.root ?? "/";
  const mem = meminfo(root);
  const cg = cgroupLimit(root);
  const cgBinding = cg && Number.isFinite(cg.limitBytes) && cg.limitBytes < mem.total;
  const limitBytes = cgBinding ? cg.limitBytes : mem.total;
  const source: LimitSource = cgBinding ? (cg.version === 1 ? "cgroup-v1" : "cgroup-v2") : "meminfo";
  const cgAvailable = cgBinding ? Math.max(0, cg.limitBytes - cg.anonBytes) : Infinity;
  return { limitBytes, source, availableBytes: Math.min(mem.available, cgAvailable), memTotalBytes: mem.total, memAvailableBytes: mem.available, cgroup: cg };
}

/**
 * Free memory of the first GPU, from `nvidia-smi` (MiB, "memory.free"); undefined where it cannot
 * be read (no NVIDIA driver, or another vendor's GPU: then the device tier is unlimited unless set).
 */
export function readGpuFreeBytes(run: () => string = () => execFileSync("nvidia-smi", ["--query-gpu=memory.free", "--format=csv,noheader,nounits"], { encoding: "utf8", timeout: 5000, stdio: ["ignore", "pipe", "ignore"] })): number | undefined {
  try {
    const first = run().split("\n")[0]?.trim() ?? "";
    const mib = Number(first);
    return first !== "" && Number.isFinite(mib) && mib >= 0 ? mib * 2 ** 20 : undefined;
  } catch {
    return undefined;
  }
}

export interface MemoryPlanInput {
  limits: MemoryLimits;
  /** RSS of the process with the dense graphs and runtime loaded (already outside availableBytes). */
  processBytes: number;
  /** Of processBytes, what loading the dense graphs and the expert kernel added. */
  denseBytes: number;
  /** KV cache at the chosen context, including the copy a step makes. */
  kvBytes: number;
  /** Expert kernel scratch plus record reads in flight. */
  workingBytes: number;
  /** All experts in the device tier's form, and as store records. */
  deviceFormTotalBytes: number;
  recordTotalBytes: number;
  /** The device tier's form is the record (CPU kernels): the host tier would hold the same bytes. */
  formIsRecord: boolean;
  /** Free GPU memory for a GPU provider, when it could be read. */
  gpuFreeBytes?: number;
  /** User budgets, already resolved to bytes. */
  deviceOverride?: number;
  hostOverride?: number;
}

export interface MemoryPlan {
  limitBytes: number;
  source: LimitSource;
  availableBytes: number;
  processBytes: number;
  denseBytes: number;
  kvBytes: number;
  workingBytes: number;
  marginBytes: number;
  /** Budgets of the tiers (bytes; Infinity = unlimited) and where each came from. */
  deviceBytes: number;
  hostBytes: number;
  deviceFrom: "plan" | "user";
  hostFrom: "plan" | "user";
  /** Every expert fits its tier: no expert is ever read twice. */
  allExpertsFit: boolean;
  gpuFreeBytes?: number;
}

/** Room kept free for the JS heap, allocator slack and what other processes start. */
export function marginFor(availableBytes: number): number {
  return Math.max(64 * 2 ** 20, Math.round(availableBytes * 0.1));
}

/** Sizes the tiers; throws when the automatic device budget cannot hold one token's experts. */
export function planMemory(i: MemoryPlanInput, minDeviceBytes: number): MemoryPlan {
  const marginBytes = marginFor(i.limits.availableBytes);
  const room = Math.max(0, i.limits.availableBytes - i.kvBytes - i.workingBytes - marginBytes);
  let deviceBytes: number;
  let hostBytes: number;
  if (i.formIsRecord) {
    // CPU: the device tier is the one copy in RAM.
    deviceBytes = i.deviceOverride ?? (room >= i.deviceFormTotalBytes ? Infinity : room);
    hostBytes = i.hostOverride ?? 0;
  } else {
    // GPU: experts in GPU memory; records evicted from it kept in RAM.
    const gpuRoom = i.gpuFreeBytes === undefined ? Infinity : Math.max(0, i.gpuFreeBytes - marginFor(i.gpuFreeBytes));
    deviceBytes = i.deviceOverride ?? (gpuRoom >= i.deviceFormTotalBytes ? Infinity : gpuRoom);
    hostBytes = i.hostOverride ?? (room >= i.recordTotalBytes ? Infinity : room);
  }
  const plan: MemoryPlan = {
    limitBytes: i.limits.limitBytes,
    source: i.limits.source,
    availableBytes: i.limits.availableBytes,
    processBytes: i.processBytes,
    denseBytes: i.denseBytes,
    kvBytes: i.kvBytes,
    workingBytes: i.workingBytes,
    marginBytes,
    deviceBytes,
    hostBytes,
    deviceFrom: i.deviceOverride === undefined ? "plan" : "user",
    hostFrom: i.hostOverride === undefined ? "plan" : "user",
    allExpertsFit: deviceBytes >= i.deviceFormTotalBytes,
    gpuFreeBytes: i.gpuFreeBytes,
  };
  if (plan.deviceFrom === "plan" && deviceBytes < minDeviceBytes) {
    throw new InvalidOptionError(
      `not enough memory to run this model: this process may use ${formatBytes(i.limits.availableBytes)} more (${i.limits.source} limit ${formatBytes(i.limits.limitBytes)}); ` +
        `after the KV cache (${formatBytes(i.kvBytes)}), working memory (${formatBytes(i.workingBytes)}) and a margin (${formatBytes(marginBytes)}) the experts get ${formatBytes(deviceBytes)}, ` +
        `below the minimum ${formatBytes(minDeviceBytes)} (${minDeviceBytes} bytes). Free memory, lower --context-size, or set --device-mem to at least the minimum`
    );
  }
  return plan;
}

/** The same plan as a one-line summary for logs and --stats. */
export function describePlan(p: MemoryPlan): string {
  const tier = (b: number, from: string) => `${formatBytes(b)}${from === "user" ? " (set)" : ""}`;
  return (
    `memory plan: limit ${formatBytes(p.limitBytes)} (${p.source}), available ${formatBytes(p.availableBytes)}; process ${formatBytes(p.processBytes)} ` +
    `(dense ${formatBytes(p.denseBytes)}), KV ${formatBytes(p.kvBytes)}, working ${formatBytes(p.workingBytes)}, margin ${formatBytes(p.marginBytes)} -> ` +
    `device tier ${tier(p.deviceBytes, p.deviceFrom)}, host tier ${tier(p.hostBytes, p.hostFrom)}${p.allExpertsFit ? " (all experts fit)" : ""}`
  );
}
