/**
 * Costs the scheduler plans with, measured on this machine for this expert shape and cached in
 * ~/.cache/moe-run/calibration.json (keyed by CPU, core count, kernel, provider, encoding and shape):
 *   device(T) = a + b T   engine-side expert kernel on a resident expert
 *   cpu(T)    = c + d T   CPU pool task: the worker's direct read of the record, then compute
 *                         (includes the message round trip)
 *   load                  reading a record from the store (direct reads) and making it resident
 * (v4 of the cache key: records are read from the store file, no longer from mapped pages.)
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ExecutionDevice } from "../backends/onnx.js";
import type { ExpertKernel } from "../kernels/expertKernels.js";
import type { ExpertStore } from "../store/ExpertStore.js";
import { freeResident, prepareOwned } from "../cache/residentRecords.js";
import type { CpuExpertPool } from "./CpuExpertPool.js";
import { describeExpertEncodings, type ExpertRecordShape } from "../store/recordEncodings.js";

export interface CostFigures {
  deviceFixed: number;
  devicePerToken: number;
  cpuFixed: number;
  cpuPerToken: number;
  loadSeconds: number;
  measuredAt: string;
}

export class CostModel {
  constructor(readonly figures: CostFigures) {}

  get loadSeconds(): number {
    return this.figures.loadSeconds;
  }
  deviceSeconds(tokens: number): number {
    return this.figures.deviceFixed + this.figures.devicePerToken * tokens;
  }
  cpuSeconds(tokens: number): number {
    return this.figures.cpuFixed + this.figures.cpuPerToken * tokens;
  }

  /** Cached figures for this machine and shape, or a fresh measurement (a few runs of each side). */
  static async calibrate(
    key: ExpertRecordShape & { numLayers: number; numExperts: number; layers?: readonly number[] },
    store: ExpertStore,
    kernel: ExpertKernel<unknown>,
    device: ExecutionDevice,
    pool: CpuExpertPool,
    options: { recalibrate?: boolean; cacheFile?: string } = {}
  ): Promise<CostModel> {
    const file = options.cacheFile ?? path.join(os.homedir(), ".cache", "moe-run", "calibration.json");
    // v3: figures measured over experts that do not fit in the CPU caches.
    const id = `v4|${os.cpus()[0]?.model ?? "cpu"}|${os.availableParallelism()}|${pool.threads}|${kernel.name}@${device}|${describeExpertEncodings(key)}|${key.hiddenSize}x${key.expertFfn}`;
    let cache: Record<string, CostFigures> = {};
    try {
      cache = JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, CostFigures>;
    } catch {
      cache = {};
    }
    if (!options.recalibrate && cache[id]) return new CostModel(cache[id]!);
    const H = key.hiddenSize;
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const time = async (f: () => unknown) => {
      const t0 = performance.now();
      await f();
      return (performance.now() - t0) / 1000;
    };
    // Rotate over experts totalling more than the CPU caches (~96 MiB, 8 to 32 experts), as a run
    // does: one expert measured again and again stays cached and makes both sides look faster
    // than they are (the pool's figures were ~35% low).
    const layers = key.layers ?? Array.from({ length: key.numLayers }, (_, l) => l); // those with experts
    const n = Math.min(layers.length * key.numExperts, 32, Math.max(8, Math.ceil((96 * 2 ** 20) / kernel.residentBytes)));
    const ids = Array.from({ length: n }, (_, i) => ({ layer: layers[i % layers.length]!, expert: Math.floor(i / layers.length) % key.numExperts }));
    const loads: number[] = [];
    // Records read here are released when done (their memory is freed at once, not at the next GC).
    const prepare = (layer: number, expert: number) => prepareOwned(kernel, store.getRecord(layer, expert), layer);
    const drop = (resident: unknown) => freeResident(kernel, resident);
    drop(await prepare(ids[0]!.layer, ids[0]!.expert)); // warm-up
    for (let i = 0; i < 2 * n; i++) {
      const { layer, expert } = ids[i % n]!;
      let resident: unknown;
      loads.push(await time(async () => (resident = await prepare(layer, expert))));
      drop(resident);
    }
    const residents: unknown[] = [];
    const measure = async (tokens: number) => {
      const x = new Float32Array(tokens * H).fill(0.01);
      const y = new Float32Array(tokens * H);
      const dev: number[] = [];
      const cpu: number[] = [];
      await kernel.forward(residents[0], x, tokens, y, ids[0]!.layer); // warm-up
      await pool.compute(ids[0]!.layer, ids[0]!.expert, x, tokens);
      for (let i = 0; i < 2 * n; i++) {
        const { layer, expert } = ids[i % n]!;
        dev.push(await time(() => kernel.forward(residents[i % n], x, tokens, y, layer)));
        cpu.push(await time(() => pool.compute(layer, expert, x, tokens)));
      }
      return { dev: median(dev), cpu: median(cpu) };
    };
    let one: { dev: number; cpu: number };
    let many: { dev: number; cpu: number };
    try {
      for (const { layer, expert } of ids) residents.push(await prepare(layer, expert));
      one = await measure(1);
      many = await measure(16);
    } finally {
      for (const r of residents) drop(r);
    }
    const figures: CostFigures = {
      devicePerToken: Math.max(0, (many.dev - one.dev) / 15),
      deviceFixed: one.dev - Math.max(0, (many.dev - one.dev) / 15),
      cpuPerToken: Math.max(0, (many.cpu - one.cpu) / 15),
      cpuFixed: one.cpu - Math.max(0, (many.cpu - one.cpu) / 15),
      loadSeconds: median(loads),
      measuredAt: new Date().toISOString(),
    };
    cache[id] = figures;
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, JSON.stringify(cache, null, 1));
    } catch {
      // An unwritable cache only costs a re-measurement next time.
    }
    return new CostModel(figures);
  }
}
