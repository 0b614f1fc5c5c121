/**
 * The memory plan: limits read from cgroup v1 and v2 files and /proc/meminfo (fake trees), the
 * tiers sized from them, user overrides, and a refusal naming the minimum.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { planMemory, readGpuFreeBytes, readMemoryLimits, type MemoryLimits, type MemoryPlanInput } from "../src/model/memoryPlan.js";
import { tmpDir } from "./helpers.js";

const MiB = 2 ** 20;
const GiB = 2 ** 30;

function fakeRoot(files: Record<string, string>): string {
  const root = tmpDir("moe-run-memplan-");
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.join(root, path.dirname(rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), text);
  }
  return root;
}

const MEMINFO = `MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20480000 kB\n`;

describe("readMemoryLimits", () => {
  it("cgroup v1: the tightest limit of the cgroup and its ancestors, minus its anonymous memory", () => {
    const root = fakeRoot({
      "proc/meminfo": MEMINFO,
      "proc/self/cgroup": "5:devices:/\n4:memory:/outer/inner\n0::/\n",
      "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
      "sys/fs/cgroup/memory/outer/memory.limit_in_bytes": String(2 * GiB),
      "sys/fs/cgroup/memory/outer/inner/memory.limit_in_bytes": String(3 * GiB),
      "sys/fs/cgroup/memory/outer/inner/memory.usage_in_bytes": String(900 * MiB),
      "sys/fs/cgroup/memory/outer/inner/memory.stat": `cache 400\nrss 100\ntotal_rss ${300 * MiB}\ntotal_cache ${600 * MiB}\n`,
    });
    const l = readMemoryLimits({ root });
    expect(l.source).toBe("cgroup-v1");
    expect(l.limitBytes).toBe(2 * GiB);
    // Page cache is reclaimable: only anonymous memory counts against the room left.
    expect(l.availableBytes).toBe(2 * GiB - 300 * MiB);
    expect(l.cgroup).toMatchObject({ version: 1, dir: "/sys/fs/cgroup/memory/outer/inner" });
  });

  it("cgroup v2: memory.max, 'max' meaning no limit at that level", () => {
    const root = fakeRoot({
      "proc/meminfo": MEMINFO,
      "proc/self/cgroup": "0::/user.slice/app\n",
      "sys/fs/cgroup/memory.max": "max\n",
      "sys/fs/cgroup/user.slice/memory.max": "max\n",
      "sys/fs/cgroup/user.slice/app/memory.max": String(1536 * MiB),
      "sys/fs/cgroup/user.slice/app/memory.current": String(200 * MiB),
      "sys/fs/cgroup/user.slice/app/memory.stat": `anon ${100 * MiB}\nfile ${100 * MiB}\n`,
    });
    const l = readMemoryLimits({ root });
    expect(l).toMatchObject({ source: "cgroup-v2", limitBytes: 1536 * MiB, availableBytes: 1436 * MiB });
  });

  it("a namespaced cgroup (its path hidden) is the mount root; no limit anywhere falls back to MemAvailable", () => {
    const ns = fakeRoot({
      "proc/meminfo": MEMINFO,
      "proc/self/cgroup": "0::/hidden/outside/path\n",
      "sys/fs/cgroup/memory.max": String(4 * GiB),
      "sys/fs/cgroup/memory.stat": `anon ${GiB}\n`,
    });
    expect(readMemoryLimits({ root: ns })).toMatchObject({ source: "cgroup-v2", limitBytes: 4 * GiB, availableBytes: 3 * GiB });
    const none = fakeRoot({ "proc/meminfo": MEMINFO, "proc/self/cgroup": "4:memory:/\n", "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n" });
    expect(readMemoryLimits({ root: none })).toMatchObject({ source: "meminfo", limitBytes: 24576000 * 1024, availableBytes: 20480000 * 1024 });
  });

  it("a cgroup limit above the machine's RAM does not bind", () => {
    const root = fakeRoot({ "proc/meminfo": MEMINFO, "proc/self/cgroup": "4:memory:/big\n", "sys/fs/cgroup/memory/big/memory.limit_in_bytes": String(64 * GiB) });
    expect(readMemoryLimits({ root }).source).toBe("meminfo");
  });

  it("reads this machine without throwing", () => {
    const l = readMemoryLimits();
    expect(l.limitBytes).toBeGreaterThan(0);
    expect(l.availableBytes).toBeGreaterThan(0);
    expect(l.availableBytes).toBeLessThanOrEqual(l.memTotalBytes);
  });
});

describe("readGpuFreeBytes", () => {
  it("parses nvidia-smi's free MiB of the first GPU; anything else is unknown", () => {
    expect(readGpuFreeBytes(() => "80543\n40000\n")).toBe(80543 * MiB);
    expect(readGpuFreeBytes(() => "")).toBeUndefined();
    expect(readGpuFreeBytes(() => "[N/A]")).toBeUndefined();
    expect(
      readGpuFreeBytes(() => {
        throw new Error("spawnSync nvidia-smi ENOENT");
      })
    ).toBeUndefined();
  });
});

describe("planMemory", () => {
  const limits = (available: number): MemoryLimits => ({ limitBytes: available, source: "cgroup-v1", availableBytes: available, memTotalBytes: 24 * GiB, memAvailableBytes: 20 * GiB });
  const base = (available: number, o: Partial<MemoryPlanInput> = {}): MemoryPlanInput => ({
    limits: limits(available),
    processBytes: 150 * MiB,
    denseBytes: 60 * MiB,
    kvBytes: 32 * MiB,
    workingBytes: 20 * MiB,
    deviceFormTotalBytes: 2 * GiB,
    recordTotalBytes: 2 * GiB,
    formIsRecord: true,
    ...o,
  });

  it("everything fits: an unlimited device tier and no host tier (the records are the device tier)", () => {
    const p = planMemory(base(8 * GiB), 10 * MiB);
    expect(p.deviceBytes).toBe(Infinity);
    expect(p.hostBytes).toBe(0);
    expect(p.allExpertsFit).toBe(true);
  });

  it("a model larger than memory: the device tier gets what is left after KV, working memory and the margin", () => {
    const p = planMemory(base(1 * GiB), 10 * MiB);
    expect(p.deviceBytes).toBe(1 * GiB - 32 * MiB - 20 * MiB - p.marginBytes);
    expect(p.marginBytes).toBeGreaterThanOrEqual(64 * MiB);
    expect(p.hostBytes).toBe(0);
    expect(p.allExpertsFit).toBe(false);
    expect(p.deviceBytes + p.kvBytes + p.workingBytes + p.marginBytes).toBeLessThanOrEqual(p.availableBytes);
  });

  it("a GPU form: device from the GPU's free memory, records in the RAM that is left", () => {
    const p = planMemory(base(1 * GiB, { formIsRecord: false, gpuFreeBytes: 512 * MiB }), 10 * MiB);
    expect(p.deviceBytes).toBeLessThan(512 * MiB);
    expect(p.hostBytes).toBe(1 * GiB - 32 * MiB - 20 * MiB - p.marginBytes);
  });

  it("user budgets override the plan", () => {
    const p = planMemory(base(1 * GiB, { deviceOverride: 300 * MiB, hostOverride: 100 * MiB }), 10 * MiB);
    expect(p).toMatchObject({ deviceBytes: 300 * MiB, hostBytes: 100 * MiB, deviceFrom: "user", hostFrom: "user" });
  });

  it("too little memory is refused, naming the minimum and what to do", () => {
    expect(() => planMemory(base(120 * MiB), 80 * MiB)).toThrow(/not enough memory to run this model: .* below the minimum 80\.00 MiB \(83886080 bytes\).*--device-mem/);
    // An explicit budget is the user's call (a warning is logged by loadModel instead).
    expect(planMemory(base(120 * MiB, { deviceOverride: 80 * MiB }), 80 * MiB).deviceBytes).toBe(80 * MiB);
  });
});
