/**
 * One forward pass over a sequence chunk: embedding -> per layer (dense layer, router top-k,
 * experts, combine) -> final norm + LM head. Experts come from an ExpertSource (the cache
 * manager's interface) and run on the shared expert graph, each expert once per chunk with all the
 * tokens routed to it.
 */
import * as path from "node:path";
import { resolveDevice, type DeviceName, type ExecutionDevice, type HostTensor } from "../backends/onnx.js";
import { isMoeLayer, kvShape, modelFeatures, type ModelDims, type ModelFeatures } from "../architectures/ModelDims.js";
import { readFloatInitializer, readGraph } from "../onnx/graphFile.js";
import { InvalidOptionError, invariant } from "../errors.js";
import { expertShape, type ModelManifest } from "../model/manifest.js";
import { createExpertKernel, type ExpertKernel, type ExpertKernelName } from "../kernels/expertKernels.js";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import type { CpuExpertPool } from "../scheduler/CpuExpertPool.js";
import type { HybridScheduler } from "../scheduler/HybridScheduler.js";
import type { DenseLayers, DenseLayersName } from "./DenseLayers.js";
import { newKvCache, type KvCache, type KvCachePrecision } from "./KvCache.js";
import { NativeDenseLayers } from "./NativeDenseLayers.js";
import { OnnxDenseLayers } from "./OnnxDenseLayers.js";
import { ropeRegime, ropeTables } from "./rope.js";
import { FusedDecode } from "./FusedDecode.js";
import { StepTimes } from "./StepTimes.js";
import { groupByExpert, routeTokens, type Routing } from "./routing.js";

/** Where expert records come from; the cache manager implements this. */
export interface ExpertSource {
  /** (layer, expert) in the expert kernel's compute-ready form, held (not evicted) until release(). */
  acquire(layer: number, expert: number): unknown;
  /** acquire() without waiting when the expert is resident now; undefined otherwise. */
  acquireNow?(layer: number, expert: number): unknown;
  release?(layer: number, expert: number): void;
  /** The router's probabilities over all experts of `layer` for one token. */
  observeRouting?(layer: number, probs: Float32Array): void;
  /** Layer `layer` has routed (predictors and prefetch hook in here). */
  onLayerRouted?(layer: number, routing: Routing, gateInput: Float32Array, residual: Float32Array): void;
  /** The layer about to compute needs these experts: start loading the missing ones together. */
  request?(layer: number, experts: readonly number[]): void;
  /** One forward pass is done (stall-per-token accounting). */
  endForward?(): void;
  /** Whether the expert is resident now (resident experts are computed first). */
  isReady?(layer: number, expert: number): boolean;
  /**
   * The expert is computed elsewhere (CPU pool) this time: count the access. True = hand the
   * record the pool read to admit() (promotion into the device tier).
   */
  recordAccess?(layer: number, expert: number): boolean;
  admit?(layer: number, expert: number, record: Uint8Array | undefined): Promise<void>;
  /** Whether recordAccess() would promote this expert now (the scheduler costs the record copy). */
  wouldPromote?(layer: number, expert: number): boolean;
  /**
   * Every expert in its resident form, null where not resident yet (layer * numExperts + expert),
   * while none can be evicted and nothing is loading; else undefined. With it a decode step may
   * run in native code (FusedDecode) up to the first layer that needs an expert not resident.
   */
  residentTable?(numExperts: number): readonly unknown[] | undefined;
  /** An expert of residentTable() was used: the hit acquireNow() + release() would count. */
  noteResidentUse?(layer: number, expert: number): void;
}

/** Called once per layer per forward with the router's decision; profilers and predictors listen here. */
export type RoutingObserver = (layer: number, routing: Routing, gateInput: HostTensor) => void;

export interface ModelRunnerOptions {
  /** Intra-op threads per onnxruntime session and for the expert kernel. Default 1. */
  threads?: number;
  /** Expert kernel by name. Default "auto" (native when built, else onnx). */
  expertKernel?: ExpertKernelName | "auto";
  /** Execution provider of the dense graphs. Default "cpu". */
  device?: DeviceName;
  /**
   * Dense layers by name. Default "auto": native on the CPU when the native kernels are built
   * (weights at the experts' width, KV cache appended in place), else onnx.
   */
  dense?: DenseLayersName | "auto";
  /** KV cache precision of the native dense layers (onnx: always fp32). Default "f16". */
  kvCache?: KvCachePrecision;
  /**
   * Decode steps of a model whose experts all fit in the budget run in native code, layer after
   * layer while the experts they route to are resident (evaluator/FusedDecode.ts: the same bits,
   * without JavaScript between the layers), where the model's shape allows. Default true; false
   * keeps the layer loop (for comparisons).
   */
  fusedDecode?: boolean;
  log?: (line: string) => void;
}

export class ModelRunner {
  readonly dims: ModelDims;
  private readonly features: ModelFeatures;
  readonly dense: DenseLayers;
  readonly kernel: ExpertKernel<unknown>;
  private experts: ExpertSource | undefined;
  /** The execution provider the dense graphs run on. */
  device: ExecutionDevice = "cpu";
  observers: RoutingObserver[] = [];
  /** Hybrid scheduling: which experts go to the CPU pool. Absent = all on the device side. */
  hybrid: { scheduler: HybridScheduler; pool: CpuExpertPool } | undefined;
  /** Where forward passes spend their time, summed since creation. */
  readonly times = new StepTimes();
  /**
   * Outputs [n, H] of forwardMany's experts, kept between calls (filled and consumed with no await
   * between, so sequences sharing the runner never see each other's). A fresh Float32Array per
   * expert and layer made V8 sweep array buffers on its background threads, which on two cores
   * stalled the kernel threads: 600m int8 decode at 2 threads 1.04-1.06x faster reusing them
   * (in-process A/B, 8 alternating rounds, twice).
   */
  private expertOutputs: Float32Array[] = [];
  /** Per layer: the grouped router's selection-only correction bias [E] (else undefined). */
  private correctionBiases: (Float32Array | undefined)[] = [];
  /** The whole-step native decode where this model's shape allows it (else undefined). */
  private fused: FusedDecode | undefined;

  /** Whether decode steps may run in native code (FusedDecode; per step it also needs a budget that holds every expert). */
  get fusedDecode(): boolean {
    return this.fused !== undefined;
  }

  /** The precision newKvCache() gives native caches. */
  readonly kvPrecision: KvCachePrecision;

  private constructor(dims: ModelDims, dense: DenseLayers, kernel: ExpertKernel<unknown>, readonly threads: number, kvCache: KvCachePrecision) {
    // fp32 where halves do not apply: onnx graphs take fp32 caches, a latent (MLA) cache stays fp32.
    this.kvPrecision = dense.name === "native" && kvShape(dims).valueDim > 0 ? kvCache : "f32";
    this.dims = dims;
    this.features = modelFeatures(dims);
    this.dense = dense;
    this.kernel = kernel;
  }

  /**
   * Opens the dense layers on the resolved provider and the expert kernel. The cache that feeds
   * the kernel is built around the kernel (its resident form), then attach()ed.
   */
  static async create(modelDir: string, manifest: ModelManifest, options: ModelRunnerOptions = {}): Promise<ModelRunner> {
    const log = options.log ?? (() => {});
    const device = await resolveDevice(options.device ?? "cpu", path.join(modelDir, manifest.graphs.head), log);
    const threads = options.threads ?? 1;
    const dense = await createDenseLayers(options.dense ?? "auto", modelDir, manifest, { threads, device, log });
    try {
      const kernel = await createExpertKernel(options.expertKernel ?? "auto", {
        ...expertShape(manifest),
        activation: modelFeatures(manifest.dims).expertActivation,
        threads,
        device,
        log: options.log,
      });
      const runner = new ModelRunner(manifest.dims, dense, kernel, threads, options.kvCache ?? "f16");
      runner.device = device;
      if (options.fusedDecode !== false) runner.fused = FusedDecode.create(loadNativeAddon().addon, manifest.dims, dense, kernel, threads);
      if (runner.features.grouped.correctionBias) {
        runner.correctionBiases = manifest.graphs.layers.map((rel) => {
          const graph = readGraph(modelDir, rel);
          return graph.inits.has("router_correction_bias") ? readFloatInitializer(modelDir, rel, graph, "router_correction_bias") : undefined;
        });
      }
      return runner;
    } catch (err) {
      await dense.dispose();
      throw err;
    }
  }

  /** An empty KV cache in the form this runner's dense layers compute with. */
  newKvCache(): KvCache {
    return newKvCache(this.dims, this.kvPrecision);
  }

  /** The source of experts forward() computes with. */
  attach(experts: ExpertSource): void {
    this.experts = experts;
  }

  private source(): ExpertSource {
    invariant(this.experts !== undefined, "ModelRunner.forward before attach(experts)");
    return this.experts;
  }

  /**
   * Runs `ids` (T tokens) at positions kv.length.., appends to the KV cache, and returns logits:
   * [T, V] with `allLogits`, else [1, V] for the last token.
   */
  async forward(ids: readonly number[], kv: KvCache, options: { allLogits?: boolean } = {}): Promise<HostTensor> {
    const d = this.dims;
    const T = ids.length;
    invariant(T > 0, "forward needs at least one token");
    const times = this.times;
    let mark = performance.now();
    const lap = (key: keyof StepTimes["seconds"]) => {
      const now = performance.now();
      times.seconds[key] += (now - mark) / 1000;
      mark = now;
    };
    const f = this.features;
    const regime = ropeRegime(f.rope, kv.length + T - 1);
    if (kv.length > 0 && regime !== kv.ropeRegime) {
      // LongRoPE crossed to its other factors: the cached keys were rotated with the old ones.
      // Recompute the whole sequence (as Hugging Face does), then hand back this chunk's rows.
      const all = [...kv.tokens, ...ids];
      kv.reset();
      const out = await this.forward(all, kv, options);
      const rows = options.allLogits ? T : 1;
      return { data: out.data.subarray(out.data.length - rows * d.vocabSize), dims: [rows, d.vocabSize] };
    }
    kv.ropeRegime = regime;
    const { cos, sin } = ropeTables(kv.length, T, d.headDim, f.rope);
    const rule = { kind: f.router, normTopkProb: d.normTopkProb, jitterEps: f.jitterEps, grouped: f.grouped };
    const rs = f.residualScale;
    const copied = kv.copiedBytes;
    this.dense.reserve?.(kv, T);
    times.kvCopiedBytes += kv.copiedBytes - copied;
    lap("kv");
    let hidden = await this.dense.embed(ids); // [T, H]
    lap("embed");
    const experts = this.source();
    const fused = T === 1 ? this.fused?.run(hidden, kv, { cos, sin }, experts, this.observers.length > 0 || this.hybrid !== undefined) : undefined;
    if (fused) {
      const [dense, , expertSeconds] = this.fused!.seconds;
      times.seconds.dense += dense!;
      times.seconds.experts += expertSeconds!;
      // The rest of the call (routing, combining, the call itself and the bookkeeping after it).
      times.seconds.routing += (performance.now() - mark) / 1000 - dense! - expertSeconds!;
      if (!fused.next) times.fusedTokens++;
      mark = performance.now();
    }
    for (let l = fused?.layersDone ?? 0; l < d.numLayers; l++) {
      // A layer the native step stopped at (an expert not resident yet) has its dense part done.
      const out = fused?.next && l === fused.layersDone ? fused.next : await this.dense.layer(l, hidden, T, kv, { cos, sin });
      lap("dense");
      if (!isMoeLayer(d, l)) {
        // A dense layer: its MLP ran with the dense weights (in the shared-expert slot).
        const next = out.attnOut;
        const mlp = out.sharedOut!;
        for (let i = 0; i < next.length; i++) next[i] = next[i]! + (rs === 1 ? mlp[i]! : Math.fround(mlp[i]! * rs));
        hidden = next;
        continue;
      }
      const moeIn: HostTensor = { data: out.moeIn, dims: [T, d.hiddenSize] };
      const routing = routeTokens(out.routerLogits, T, d.numExperts, d.topK, { ...rule, correctionBias: this.correctionBiases[l] });
      for (const observe of this.observers) observe(l, routing, moeIn);
      experts.onLayerRouted?.(l, routing, out.moeIn, out.attnOut);
      if (experts.observeRouting) {
        const E = d.numExperts;
        for (let t = 0; t < T; t++) experts.observeRouting(l, routing.probs.subarray(t * E, (t + 1) * E));
      }
      lap("routing");
      const moeOut = await this.runExperts(l, routing, out.moeIn);
      mark = performance.now();
      // Residual: attn_out + (sum of weighted experts [+ gated shared expert]) [* residual scale], in fp32.
      const next = out.attnOut;
      const shared = out.sharedOut;
      if (shared) for (let i = 0; i < moeOut.length; i++) moeOut[i] = moeOut[i]! + shared[i]!;
      if (rs !== 1) for (let i = 0; i < moeOut.length; i++) moeOut[i] = Math.fround(moeOut[i]! * rs);
      for (let i = 0; i < next.length; i++) next[i] = next[i]! + moeOut[i]!;
      hidden = next;
      lap("routing");
    }
    kv.length += T;
    for (const id of ids) kv.tokens.push(id);
    experts.endForward?.();
    const rows = options.allLogits ? T : 1;
    const logits = await this.dense.head(options.allLogits ? hidden : hidden.subarray((T - 1) * d.hiddenSize), rows);
    lap("head");
    times.forwards++;
    times.tokens += T;
    return { data: logits, dims: [rows, d.vocabSize] };
  }

  /** Weighted sum of the routed experts' outputs, [T, H]; each expert runs once on its tokens. */
  private async runExperts(layer: number, routing: Routing, x: Float32Array): Promise<Float32Array> {
    const start = performance.now();
    try {
      return await this.runExpertsTimed(layer, routing, x);
    } finally {
      this.times.seconds.experts += (performance.now() - start) / 1000;
    }
  }

  private async runExpertsTimed(layer: number, routing: Routing, x: Float32Array): Promise<Float32Array> {
    const H = this.dims.hiddenSize;
    const experts = this.source();
    const out = new Float32Array(routing.tokens * H);
    const byExpert = groupByExpert(routing);
    if (!this.hybrid && experts.acquireNow && [...byExpert.keys()].every((e) => experts.isReady?.(layer, e) ?? true)) {
      await this.runResidentExperts(layer, byExpert, x, out, experts);
      return out;
    }
    // Resident experts first: loads still in flight get that long to arrive.
    const groups = [...byExpert];
    const ready = (e: number) => (experts.isReady?.(layer, e) ?? true ? 0 : 1);
    groups.sort((a, b) => ready(a[0]) - ready(b[0]) || a[0] - b[0]);
    // Accumulating in a fixed expert order keeps the fp32 sums identical whatever the order of
    // computation, so offloading stays lossless.
    const outputs = new Map<number, Float32Array>();
    const gather = (rowsOf: number[]) => gatherRows(x, rowsOf, H, new Float32Array(rowsOf.length * H));
    // The CPU pool's share starts first and runs while the device side computes.
    const hybrid = this.hybrid;
    const toCpu = hybrid ? hybrid.scheduler.plan(groups.map(([e, g]) => ({ expert: e, tokens: g.rows.length, resident: ready(e) === 0, promote: experts.wouldPromote?.(layer, e) ?? false }))) : new Set<number>();
    const cpuStart = performance.now();
    const cpuDone = Promise.all(
      groups
        .filter(([e]) => toCpu.has(e))
        .map(async ([e, g]) => {
          const promote = experts.recordAccess?.(layer, e) ?? false;
          let result: { y: Float32Array; record?: Uint8Array } | undefined;
          try {
            result = await hybrid!.pool.computeAndRead(layer, e, gather(g.rows), g.rows.length, promote);
          } finally {
            if (promote) await experts.admit!(layer, e, result?.record);
          }
          outputs.set(e, result.y);
        })
    ).then(() => (performance.now() - cpuStart) / 1000);
    experts.request?.(layer, groups.filter(([e]) => !toCpu.has(e) && ready(e) === 1).map(([e]) => e));
    const deviceStart = performance.now();
    for (const [e, group] of groups) {
      if (toCpu.has(e)) continue;
      const n = group.rows.length;
      const rows = gather(group.rows);
      const resident = await experts.acquire(layer, e);
      const y = new Float32Array(n * H); // [n, H] expert output
      try {
        await this.kernel.forward(resident, rows, n, y, layer);
      } finally {
        experts.release?.(layer, e);
      }
      outputs.set(e, y);
    }
    const deviceSeconds = (performance.now() - deviceStart) / 1000;
    const cpuSeconds = await cpuDone;
    if (hybrid) {
      hybrid.scheduler.record(layer, "device", groups.length - toCpu.size, deviceSeconds);
      if (toCpu.size) hybrid.scheduler.record(layer, "cpu", toCpu.size, cpuSeconds);
    }
    for (const [e, group] of byExpert) addWeighted(out, outputs.get(e)!, group, H);
    return out;
  }

  /**
   * Every routed expert resident, nothing on the CPU pool (a model that fits, decoding): each
   * expert computed as it is acquired, in expert order, its weighted output added at once (the
   * order runExpertsTimed's sums take, so the bits are the same), without a promise per expert
   * where the kernel is synchronous; a kernel with forwardMany gets them all in one call. An
   * expert still settling (a load of it in flight) is acquire()d, which waits for it.
   */
  private async runResidentExperts(layer: number, groups: Map<number, { rows: number[]; weights: number[] }>, x: Float32Array, out: Float32Array, experts: ExpertSource): Promise<void> {
    const H = this.dims.hiddenSize;
    const held: [number, unknown][] = [];
    try {
      for (const e of groups.keys()) held.push([e, experts.acquireNow!(layer, e) ?? (await experts.acquire(layer, e))]);
    } catch (err) {
      for (const [h] of held) experts.release?.(layer, h);
      throw err;
    }
    if (this.kernel.forwardMany) {
      // All of them in one call (threads take whole experts: see experts_forward), then the same
      // weighted sums in the same order.
      const gs = held.map(([e]) => groups.get(e)!);
      try {
        // [n, H] tokens routed to each expert (a decode step's one token: x itself) and its output.
        const xs = gs.map((g) => (g.rows.length === 1 && x.length === H ? x : gatherRows(x, g.rows, H, new Float32Array(g.rows.length * H))));
        const ys = gs.map((g, k) => {
          const n = g.rows.length * H;
          if ((this.expertOutputs[k]?.length ?? 0) < n) this.expertOutputs[k] = new Float32Array(n);
          const y = this.expertOutputs[k]!;
          return y.length === n ? y : y.subarray(0, n);
        });
        this.kernel.forwardMany(held.map(([, r]) => r), xs, gs.map((g) => g.rows.length), ys, layer);
        gs.forEach((g, k) => addWeighted(out, ys[k]!, g, H));
      } finally {
        for (const [e] of held) experts.release?.(layer, e);
      }
      return;
    }
    // Input rows and output [n, H] of one expert, sized for the largest group; this call's own
    // (another sequence's forward may run while an asynchronous kernel is awaited).
    const most = Math.max(...[...groups.values()].map((g) => g.rows.length));
    const rows = most === 1 && x.length === H ? x : new Float32Array(most * H);
    const y = new Float32Array(most * H);
    try {
      for (const [e, resident] of held) {
        const group = groups.get(e)!;
        const n = group.rows.length;
        // [n, H] tokens routed to the expert (a decode step's one token: x itself).
        if (rows !== x) gatherRows(x, group.rows, H, rows);
        const pending = this.kernel.forward(resident, rows, n, y, layer);
        if (pending) await pending;
        addWeighted(out, y, group, H);
      }
    } finally {
      for (const [e] of held) experts.release?.(layer, e);
    }
  }

  async dispose(): Promise<void> {
    await this.dense.dispose();
    await this.kernel.dispose();
  }
}

/** rows [n, H] = the tokens `rowsOf` of x [T, H], in that order (into `into`, returned). */
function gatherRows(x: Float32Array, rowsOf: readonly number[], H: number, into: Float32Array): Float32Array {
  rowsOf.forEach((t, i) => into.set(x.subarray(t * H, (t + 1) * H), i * H));
  return into;
}

/** out[t] += fp32(y[i] * weight) for each token t = group.rows[i]: one expert's weighted output, in fp32. */
function addWeighted(out: Float32Array, y: Float32Array, group: { rows: readonly number[]; weights: readonly number[] }, H: number): void {
  for (let i = 0; i < group.rows.length; i++) {
    const wt = group.weights[i]!;
    const base = group.rows[i]! * H;
    for (let h = 0; h < H; h++) out[base + h] = out[base + h]! + Math.fround(y[i * H + h]! * wt);
  }
}

/** Resolves the dense layers by name ("auto": native on the CPU when built, else onnx). */
async function createDenseLayers(
  name: DenseLayersName | "auto",
  modelDir: string,
  manifest: ModelManifest,
  o: { threads: number; device: ExecutionDevice; log: (line: string) => void }
): Promise<DenseLayers> {
  switch (name) {
    case "auto": {
      if (o.device !== "cpu") return OnnxDenseLayers.create(modelDir, manifest, o);
      const { addon, reason } = loadNativeAddon();
      if (addon) return NativeDenseLayers.create(modelDir, manifest, addon, o.threads);
      o.log(`native dense layers unavailable (${reason}); using onnxruntime's`);
      return OnnxDenseLayers.create(modelDir, manifest, o);
    }
    case "native": {
      const { addon, reason } = loadNativeAddon();
      if (!addon) throw new InvalidOptionError(`dense "native" needs the native kernels, which are ${reason}`);
      if (o.device !== "cpu") throw new InvalidOptionError(`dense "native" runs on the CPU; the dense layers were asked to run on ${o.device}`);
      return NativeDenseLayers.create(modelDir, manifest, addon, o.threads);
    }
    case "onnx":
      return OnnxDenseLayers.create(modelDir, manifest, o);
    default: {
      const never: never = name;
      throw new InvalidOptionError(`unknown dense layers "${String(never)}": use auto, native or onnx`);
    }
  }
}
