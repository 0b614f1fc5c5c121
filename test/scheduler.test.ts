/**
 * The hybrid scheduler and execution backends: output is the same whatever the split, placement
 * is reported, the cost-model plan behaves, and a device provider this machine lacks falls back
 * to the CPU with a note (or, where it exists, matches the CPU).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { resolveDevice } from "../src/backends/onnx.js";
import { loadModel, type LoadModelOptions } from "../src/index.js";
import { CostModel } from "../src/scheduler/CostModel.js";
import { HybridScheduler } from "../src/scheduler/HybridScheduler.js";
import { importFixture, runCli, tmpDir } from "./helpers.js";

async function greedy(dir: string, options: LoadModelOptions) {
  const model = await loadModel(dir, { threads: 1, log: () => {}, ...options });
  try {
    const ids: number[] = [];
    for await (const _ of model.generate("Permission is hereby granted, free of charge", { maxTokens: 30, stopAtEos: false, onToken: (t) => ids.push(t) })) void _;
    return { ids, placement: await model.scheduleStats(), cache: await model.cacheStats() };
  } finally {
    await model.dispose();
  }
}

describe("hybrid scheduling is lossless and reported", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await importFixture("tiny-qwen3-moe");
  });

  it("greedy output is identical with every schedule and budget", async () => {
    const ref = await greedy(dir, { schedule: "device" });
    for (const schedule of ["auto", "cpu", "device"] as const) {
      for (const deviceMem of [undefined, { percent: 30 }]) {
        const r = await greedy(dir, { schedule, deviceMem });
        expect(r.ids, `${schedule} ${JSON.stringify(deviceMem)}`).toEqual(ref.ids);
        const placed = r.placement.layers.reduce((a, l) => a + l.device + l.cpu, 0);
        if (schedule !== "device") expect(placed).toBe(r.cache.cache.hits + r.cache.cache.misses);
        if (schedule === "cpu") expect(r.placement.layers.every((l) => l.device === 0 && l.cpu > 0)).toBe(true);
      }
    }
  });

  it("--stats-json carries the placement per layer", () => {
    const out = path.join(tmpDir(), "s.json");
    const r = runCli(["run", dir, "--prompt", "hi", "-n", "6", "--schedule", "cpu", "--stats", "--stats-json", out]);
    expect(r.status).toBe(0);
    const s = JSON.parse(fs.readFileSync(out, "utf8"));
    expect(s.scheduler.schedule).toBe("cpu");
    expect(s.scheduler.layers).toHaveLength(2);
    expect(s.scheduler.layers[0].cpu).toBeGreaterThan(0);
    expect(s.scheduler.layers[0].cpuSeconds).toBeGreaterThan(0);
  });
});

describe("the cost-model plan", () => {
  const cost = (f: Partial<ConstructorParameters<typeof CostModel>[0]>) =>
    new CostModel({ deviceFixed: 1e-3, devicePerToken: 0, cpuFixed: 1e-3, cpuPerToken: 0, loadSeconds: 0, measuredAt: "", ...f });

  it("computes missing experts on the CPU pool when loading them costs more", () => {
    const s = new HybridScheduler("auto", cost({ loadSeconds: 10e-3 }), 1);
    const cpu = s.plan([
      { expert: 0, tokens: 1, resident: true },
      { expert: 1, tokens: 1, resident: false },
    ]);
    expect([...cpu]).toEqual([1]);
  });

  it("keeps resident experts on the device when it shares the CPU with the pool", () => {
    const s = new HybridScheduler("auto", cost({}), 1, true);
    expect(s.plan([0, 1, 2, 3].map((expert) => ({ expert, tokens: 1, resident: true }))).size).toBe(0);
  });

  it("with a separate device, splits resident experts across both sides to finish the layer sooner", () => {
    const s = new HybridScheduler("auto", cost({}), 1, false);
    const cpu = s.plan([0, 1, 2, 3].map((expert) => ({ expert, tokens: 1, resident: true })));
    expect(cpu.size).toBe(2);
  });

  it("keeps everything on the device when the pool is much slower", () => {
    const s = new HybridScheduler("auto", cost({ cpuFixed: 50e-3, loadSeconds: 1e-4 }), 1, false);
    expect(s.plan([0, 1].map((expert) => ({ expert, tokens: 1, resident: false }))).size).toBe(0);
    const shared = new HybridScheduler("auto", cost({ cpuFixed: 50e-3, loadSeconds: 1e-4 }), 1, true);
    expect(shared.plan([0, 1].map((expert) => ({ expert, tokens: 1, resident: false }))).size).toBe(0);
  });

  it("on a shared CPU, a chunk of many tokens goes to the pool when its workers run experts side by side faster", () => {
    // Device side: one multi-threaded call per expert (0.2 ms/token); pool: 2 workers at 0.3 ms/token
    // each plus a 0.5 ms round trip.
    const c = cost({ deviceFixed: 0.1e-3, devicePerToken: 0.2e-3, cpuFixed: 0.5e-3, cpuPerToken: 0.3e-3, loadSeconds: 1e-4 });
    const s = new HybridScheduler("auto", c, 1, true, 2);
    const prefill = [0, 1, 2, 3].map((expert) => ({ expert, tokens: 32, resident: true }));
    expect(s.plan(prefill).size).toBe(4);
    // One token per expert, resident: device 0.3 ms each (0.6) beats the pool's 0.8 ms per pair.
    const decode = [0, 1].map((expert) => ({ expert, tokens: 1, resident: true }));
    expect(s.plan(decode).size).toBe(0);
    // With one worker the pool cannot overlap experts: the device side keeps the chunk.
    expect(new HybridScheduler("auto", c, 1, true, 1).plan(prefill).size).toBe(0);
  });

  it("a pool expert that would be promoted is costed with its record copy", () => {
    // Load 3 ms, device 1 ms, pool 2 ms: the pool wins a miss, unless it must also copy the record out.
    const c = cost({ deviceFixed: 1e-3, cpuFixed: 2e-3, loadSeconds: 3e-3 });
    const s = new HybridScheduler("auto", c, 1, true, 1);
    expect(s.plan([{ expert: 0, tokens: 1, resident: false }]).size).toBe(1);
    expect(s.plan([{ expert: 0, tokens: 1, resident: false, promote: true }]).size).toBe(0);
  });

  it("missing experts go to the pool on a shared CPU when loading costs more than computing there", () => {
    const s = new HybridScheduler("auto", cost({ loadSeconds: 10e-3 }), 1, true);
    expect([...s.plan([0, 1].map((expert) => ({ expert, tokens: 1, resident: expert === 0 })))]).toEqual([1]);
  });

  it("calibration is measured once per machine and shape, then cached", async () => {
    const dir = await importFixture("tiny-mixtral");
    const cacheFile = path.join(tmpDir(), "calibration.json");
    const { ExpertStore } = await import("../src/store/ExpertStore.js");
    const { CpuExpertPool } = await import("../src/scheduler/CpuExpertPool.js");
    const { createExpertKernel } = await import("../src/kernels/expertKernels.js");
    const layout = { hiddenSize: 64, expertFfn: 96, encoding: "f32" as const };
    const store = ExpertStore.openReadOnly(path.join(dir, "experts.mdb"), layout);
    const kernel = await createExpertKernel("native", { ...layout, threads: 1 });
    const pool = new CpuExpertPool(store, { ...layout, recordBytes: 3 * 64 * 96 * 4 }, 1);
    try {
      const a = await CostModel.calibrate({ ...layout, numLayers: 2, numExperts: 8 }, store, kernel, "cpu", pool, { cacheFile });
      expect(a.deviceSeconds(1)).toBeGreaterThan(0);
      expect(a.cpuSeconds(1)).toBeGreaterThan(0);
      const saved = JSON.parse(fs.readFileSync(cacheFile, "utf8"));
      expect(Object.keys(saved)[0]).toContain(os.availableParallelism().toString());
      const b = await CostModel.calibrate({ ...layout, numLayers: 2, numExperts: 8 }, store, kernel, "cpu", pool, { cacheFile });
      expect(b.figures).toEqual(a.figures);
    } finally {
      await pool.close();
      store.close();
    }
  });
});

describe("execution providers", () => {
  for (const device of ["webgpu", "cuda"] as const) {
    it(`${device}: used where present, else a clear fallback to the CPU`, async () => {
      const dir = await importFixture("tiny-mixtral");
      const notes: string[] = [];
      const got = await resolveDevice(device, path.join(dir, "graphs", "head.onnx"), (l) => notes.push(l));
      if (got === "cpu") {
        expect(notes.join("\n")).toMatch(new RegExp(`device ${device} is not available on this machine \\(.+\\); using the CPU`));
        console.warn(`skipped: ${device} execution provider not available here`);
        const r = runCli(["run", dir, "--prompt", "hi", "-n", "3", "--device", device]);
        expect(r.status).toBe(0);
        expect(r.stderr).toMatch(/is not available on this machine/);
        return;
      }
      // A machine with the provider: it must match the CPU reference on the same inputs.
      const ids = [1, 80, 300, 47];
      const cpu = await loadModel(dir, { threads: 1, device: "cpu", log: () => {} });
      const dev = await loadModel(dir, { threads: 1, device, log: () => {} });
      const a = (await cpu.logits(ids)).data;
      const b = (await dev.logits(ids)).data;
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
      expect(worst).toBeLessThan(1e-3);
      await cpu.dispose();
      await dev.dispose();
    });
  }
});

describe("promotion of CPU-served experts", () => {
  it("the pool hands back the record it read; the device tier admits it into free room and never evicts for it", async () => {
    const dir = await importFixture("tiny-mixtral");
    const { ExpertStore } = await import("../src/store/ExpertStore.js");
    const { CpuExpertPool } = await import("../src/scheduler/CpuExpertPool.js");
    const { TieredExpertSource } = await import("../src/cache/TieredExpertSource.js");
    const { createExpertKernel } = await import("../src/kernels/expertKernels.js");
    const layout = { hiddenSize: 64, expertFfn: 96, encoding: "f32" as const };
    const store = ExpertStore.openReadOnly(path.join(dir, "experts.mdb"), layout);
    const kernel = await createExpertKernel("native", { ...layout, threads: 1 });
    const recordBytes = kernel.residentBytes;
    const pool = new CpuExpertPool(store, { ...layout, recordBytes }, 1);
    // Room for exactly two experts.
    const source = new TieredExpertSource(store, { form: kernel, deviceBudgetBytes: 2 * recordBytes, workingBytes: 0, hostBytes: Infinity, policy: "lru", numLayers: 2, topK: 2 });
    try {
      const x = Float32Array.from({ length: 64 }, (_, i) => Math.cos(i));
      for (const expert of [0, 1, 2]) {
        const promote = source.recordAccess(0, expert);
        expect(promote, `expert ${expert}`).toBe(expert < 2); // the third finds no free room: no eviction
        const r = await pool.computeAndRead(0, expert, x, 1, promote);
        const want = new Float32Array(64);
        kernel.forward(store.getRecord(0, expert), x, 1, want, 0);
        expect([...r.y]).toEqual([...want]);
        if (promote) {
          expect([...r.record!]).toEqual([...store.getRecord(0, expert)]);
          await source.admit(0, expert, r.record);
        } else expect(r.record).toBeUndefined();
      }
      expect(source.isReady(0, 0) && source.isReady(0, 1) && !source.isReady(0, 2)).toBe(true);
      const s = source.report();
      expect(s.tiers.device.residentBytes).toBe(2 * recordBytes);
      expect(s.tiers.device.evictions).toBe(0);
      expect(s.cache.misses).toBe(3);
      // Resident now: served from the device tier, and no second promotion.
      expect(source.recordAccess(0, 0)).toBe(false);
      expect(source.report().cache.hits).toBe(1);
    } finally {
      await pool.close();
      store.close();
    }
  });
});
