/**
 * Measured machine figures for `moe-run plan`, cached per machine in
 * ~/.cache/moe-run/machine.json ($XDG_CACHE_HOME respected): memory read bandwidth, and per model
 * shape (dims, encoding, threads, kernel) the store's read bandwidth cold and warm, the time of one
 * expert on one token, and the dense time per layer. The cache is dropped when the machine's
 * fingerprint (host, CPU, cores, memory, Node) changes.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { modelFeatures, moeLayers } from "../architectures/ModelDims.js";
import { createExpertKernel, type ExpertKernelName } from "../kernels/expertKernels.js";
import { expertShape } from "../model/manifest.js";
import type { MoeModel } from "../model/MoeModel.js";
import { ExpertStore } from "../store/ExpertStore.js";
import { releaseRecord } from "../store/RecordFile.js";
import { describeExpertEncodings } from "../store/recordEncodings.js";

export interface ModelFigures {
  key: string;
  measuredAt: string;
  threads: number;
  kernel: string;
  recordBytes: number;
  /** Store reads (ExpertStore.getRecord) with the pages in the page cache, GB/s. */
  storeWarmGBps: number;
  /** The same after the store's pages were dropped; null when they could not be dropped. */
  storeColdGBps: number | null;
  storeColdNote?: string;
  /** One expert, one token, record resident: the expert kernel alone. */
  expertSeconds: number;
  /** Decode time per token without misses (measured on the real model, load stalls taken out). */
  tokenSeconds: number;
  /** (tokenSeconds - layers x topK x expertSeconds) / layers: attention graph, routing, combine, and the embed/head share. */
  denseSecondsPerLayer: number;
}

export interface MachineFigures {
  version: 1;
  fingerprint: string;
  measuredAt: string;
  /** One thread scanning two 128 MiB typed arrays with memcmp (Buffer.compare), GB/s. */
  memoryReadGBps: number;
  models: Record<string, ModelFigures>;
}

export function defaultMachineFile(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(base, "moe-run", "machine.json");
}

export function machineFingerprint(): string {
  const cpus = os.cpus();
  return [os.hostname(), cpus[0]?.model ?? "cpu", cpus.length, os.totalmem(), process.version].join("|");
}

export function modelKey(model: MoeModel, threads: number): string {
  const d = model.dims;
  return `${d.modelType} L${d.numLayers} E${d.numExperts} K${d.topK} H${d.hiddenSize} F${d.expertFfn} V${d.vocabSize} ${describeExpertEncodings(expertShape(model.manifest))} t${threads} ${model.expertKernel}`;
}

function readCache(file: string): MachineFigures | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(file, "utf8")) as MachineFigures;
    return m.version === 1 && m.fingerprint === machineFingerprint() && m.memoryReadGBps > 0 ? m : undefined;
  } catch {
    return undefined; // absent or unreadable: measure again
  }
}

function writeCache(file: string, m: MachineFigures, log: (line: string) => void): void {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file + ".tmp", JSON.stringify(m, null, 2) + "\n");
    fs.renameSync(file + ".tmp", file);
  } catch (err) {
    log(`moe-run: could not cache machine figures in ${file}: ${(err as Error).message}`);
  }
}

/** Memory read bandwidth: memcmp over two equal 128 MiB arrays reads 256 MiB; best of 3. */
export function measureMemoryBandwidth(bytes = 256 * 2 ** 20): number {
  const a = Buffer.alloc(bytes / 2, 1);
  const b = Buffer.alloc(bytes / 2, 1);
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    if (Buffer.compare(a, b) !== 0) throw new Error("memory scan mismatch");
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return bytes / best / 1e9;
}

/** Deterministic shuffle, so cold reads hit the store in no particular order, as misses do. */
function shuffled<T>(xs: T[], seed = 12345): T[] {
  let s = seed;
  for (let i = xs.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const j = s % (i + 1);
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

/**
 * Store read bandwidth: cold = ExpertStore.getRecord (direct reads from the file, what a miss
 * costs: the page cache keeps no copy); warm = copying records already in RAM (the host tier).
 */
export function measureStore(model: MoeModel, maxBytes = 128 * 2 ** 20): Pick<ModelFigures, "storeWarmGBps" | "storeColdGBps" | "storeColdNote"> {
  const m = model.manifest;
  const d = model.dims;
  const record = m.experts.recordBytes;
  const ids: [number, number][] = [];
  for (const l of moeLayers(d)) for (let e = 0; e < d.numExperts; e++) ids.push([l, e]);
  const sample = shuffled(ids).slice(0, Math.max(1, Math.floor(maxBytes / record)));
  const store = ExpertStore.openReadOnly(path.join(model.dir, m.experts.store), expertShape(m));
  try {
    const records: Uint8Array[] = [];
    let t0 = performance.now();
    for (const [l, e] of sample) records.push(store.getRecord(l, e));
    const storeColdGBps = (sample.length * record) / ((performance.now() - t0) / 1000) / 1e9;
    const storeColdNote = store.directReads ? undefined : "buffered reads (this filesystem has no O_DIRECT): pages may come from the page cache";
    // Small samples take microseconds a pass: repeat for at least 100 ms and average.
    let passes = 0;
    t0 = performance.now();
    while (passes < 2 || performance.now() - t0 < 100) {
      for (const r of records) r.slice();
      passes++;
    }
    const storeWarmGBps = (passes * sample.length * record) / ((performance.now() - t0) / 1000) / 1e9;
    for (const r of records) releaseRecord(r);
    return storeColdNote === undefined ? { storeWarmGBps, storeColdGBps } : { storeWarmGBps, storeColdGBps, storeColdNote };
  } finally {
    store.close();
  }
}

/** One expert on one token with the model's kernel, over resident records (up to 64 MiB of them). */
export async function measureExpertCompute(model: MoeModel, threads: number): Promise<number> {
  const m = model.manifest;
  const d = model.dims;
  const store = ExpertStore.openReadOnly(path.join(model.dir, m.experts.store), expertShape(m));
  const records: { layer: number; record: Uint8Array }[] = [];
  try {
    const n = Math.max(1, Math.min(d.numLayers * d.numExperts, Math.floor((64 * 2 ** 20) / m.experts.recordBytes)));
    for (let i = 0; i < n; i++) {
      const layer = Math.floor(i / d.numExperts) % d.numLayers;
      const r = store.getRecord(layer, i % d.numExperts);
      records.push({ layer, record: Uint8Array.from(r) });
      releaseRecord(r);
    }
  } finally {
    store.close();
  }
  const kernel = await createExpertKernel(model.expertKernel as ExpertKernelName, {
    ...expertShape(m),
    activation: modelFeatures(d).expertActivation,
    threads,
    device: model.device,
  });
  const residents: { layer: number; resident: unknown }[] = [];
  try {
    for (const { layer, record } of records) residents.push({ layer, resident: await kernel.prepare(record, layer) });
    const x = Float32Array.from({ length: d.hiddenSize }, (_, i) => Math.sin(i) * 0.1);
    const out = new Float32Array(d.hiddenSize);
    for (const r of residents.slice(0, 8)) await kernel.forward(r.resident, x, 1, out, r.layer); // warm-up
    let calls = 0;
    const t0 = performance.now();
    while (calls < 32 || performance.now() - t0 < 200) {
      const r = residents[calls++ % residents.length]!;
      await kernel.forward(r.resident, x, 1, out, r.layer);
    }
    return (performance.now() - t0) / 1000 / calls;
  } finally {
    for (const r of residents) kernel.free(r.resident);
    await kernel.dispose();
  }
}

/**
 * Decode seconds per token without cache misses: median of 3 greedy runs after a warm-up. Time
 * spent waiting for expert loads during decode (the cache's stall counter) is taken out, so a
 * device tier too small for the prompt's experts does not inflate it.
 */
export async function measureTokenTime(model: MoeModel, tokens = 24): Promise<number> {
  const prompt = "The quick brown fox jumps over the lazy dog, and then";
  const times: number[] = [];
  for (let run = 0; run < 4; run++) {
    let stallAtFirst: number | undefined;
    const it = model.generate(prompt, { maxTokens: tokens, temperature: 0, stopAtEos: false, onToken: () => (stallAtFirst ??= model.cacheStats().stallSeconds) });
    let r = await it.next();
    while (!r.done) r = await it.next();
    const stall = model.cacheStats().stallSeconds - (stallAtFirst ?? 0);
    if (run > 0) times.push(Math.max(0, r.value.decodeSeconds - stall) / Math.max(1, r.value.generatedTokens - 1));
  }
  return times.sort((a, b) => a - b)[1]!;
}

export interface MachineOptions {
  threads: number;
  file?: string;
  remeasure?: boolean;
  log?: (line: string) => void;
}

/**
 * The figures for this machine and `model` (best loaded with a device tier that holds the experts
 * a short prompt uses, so decode after the warm-up is all hits): from the cache, or measured now.
 */
export async function machineFigures(model: MoeModel, options: MachineOptions): Promise<{ machine: MachineFigures; model: ModelFigures; cached: boolean; file: string }> {
  const file = options.file ?? defaultMachineFile();
  const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
  let machine = options.remeasure ? undefined : readCache(file);
  let cached = true;
  if (!machine) {
    cached = false;
    log("moe-run: measuring memory read bandwidth");
    machine = { version: 1, fingerprint: machineFingerprint(), measuredAt: new Date().toISOString(), memoryReadGBps: measureMemoryBandwidth(), models: {} };
  }
  const key = modelKey(model, options.threads);
  let figures = options.remeasure ? undefined : machine.models[key];
  if (!figures) {
    cached = false;
    log(`moe-run: measuring store reads, expert compute and dense time (${key})`);
    const d = model.dims;
    const store = measureStore(model);
    const expertSeconds = await measureExpertCompute(model, options.threads);
    const tokenSeconds = await measureTokenTime(model);
    const experts = d.numLayers * d.topK * expertSeconds;
    // Noise can make the expert share exceed the token; keep dense at least 5% of the token.
    const denseSecondsPerLayer = Math.max(0.05 * tokenSeconds, tokenSeconds - experts) / d.numLayers;
    figures = { key, measuredAt: new Date().toISOString(), threads: options.threads, kernel: model.expertKernel, recordBytes: model.manifest.experts.recordBytes, ...store, expertSeconds, tokenSeconds, denseSecondsPerLayer };
    machine.models[key] = figures;
    writeCache(file, machine, log);
  }
  return { machine, model: figures, cached, file };
}
