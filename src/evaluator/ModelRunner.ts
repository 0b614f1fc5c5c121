/**
 * One forward pass over a sequence chunk: embedding -> per layer (attention graph, router top-k,
 * experts, combine) -> final norm + LM head. Experts come from an ExpertSource (the cache
 * manager's interface) and run on the shared expert graph, each expert once per chunk with all the
 * tokens routed to it.
 */
import * as path from "node:path";
import { OnnxSession, resolveDevice, type DeviceName, type ExecutionDevice, type HostTensor } from "../backends/onnx.js";
import type { ModelDims } from "../architectures/ModelDims.js";
import { invariant } from "../errors.js";
import { IO } from "../importer/modelGraphs.js";
import type { ModelManifest } from "../model/manifest.js";
import { createExpertKernel, type ExpertKernel, type ExpertKernelName } from "../kernels/expertKernels.js";
import type { CpuExpertPool } from "../scheduler/CpuExpertPool.js";
import type { HybridScheduler } from "../scheduler/HybridScheduler.js";
import type { KvCache } from "./KvCache.js";
import { causalMask, ropeTables } from "./rope.js";
import { groupByExpert, routeTokens, type Routing } from "./routing.js";

/** Where expert records come from; the cache manager implements this. */
export interface ExpertSource {
  /** (layer, expert) in the expert kernel's compute-ready form, held (not evicted) until release(). */
  acquire(layer: number, expert: number): unknown;
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
  log?: (line: string) => void;
}

export class ModelRunner {
  readonly dims: ModelDims;
  private readonly embed: OnnxSession;
  private readonly layers: OnnxSession[];
  private readonly head: OnnxSession;
  readonly kernel: ExpertKernel<unknown>;
  private experts: ExpertSource | undefined;
  /** The execution provider the dense graphs run on. */
  device: ExecutionDevice = "cpu";
  observers: RoutingObserver[] = [];
  /** Hybrid scheduling: which experts go to the CPU pool. Absent = all on the device side. */
  hybrid: { scheduler: HybridScheduler; pool: CpuExpertPool } | undefined;

  private constructor(dims: ModelDims, embed: OnnxSession, layers: OnnxSession[], head: OnnxSession, kernel: ExpertKernel<unknown>) {
    this.dims = dims;
    this.embed = embed;
    this.layers = layers;
    this.head = head;
    this.kernel = kernel;
  }

  /**
   * Opens the dense graphs on the resolved provider and the expert kernel. The cache that feeds
   * the kernel is built around the kernel (its resident form), then attach()ed.
   */
  static async create(modelDir: string, manifest: ModelManifest, options: ModelRunnerOptions = {}): Promise<ModelRunner> {
    const device = await resolveDevice(options.device ?? "cpu", path.join(modelDir, manifest.graphs.head), options.log ?? (() => {}));
    const open = (rel: string) => OnnxSession.create(path.join(modelDir, rel), { threads: options.threads ?? 1, device });
    const sessions: OnnxSession[] = [];
    try {
      const track = async (p: Promise<OnnxSession>) => {
        const s = await p;
        sessions.push(s);
        return s;
      };
      const embed = await track(open(manifest.graphs.embed));
      const head = await track(open(manifest.graphs.head));
      const layers: OnnxSession[] = [];
      for (const rel of manifest.graphs.layers) layers.push(await track(open(rel)));
      const kernel = await createExpertKernel(options.expertKernel ?? "auto", {
        encoding: manifest.precision.experts,
        hiddenSize: manifest.dims.hiddenSize,
        expertFfn: manifest.dims.expertFfn,
        threads: options.threads ?? 1,
        device,
        log: options.log,
      });
      const runner = new ModelRunner(manifest.dims, embed, layers, head, kernel);
      runner.device = device;
      return runner;
    } catch (err) {
      await Promise.all(sessions.map((s) => s.dispose()));
      throw err;
    }
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
    const past = kv.length;
    const { cos, sin } = ropeTables(past, T, d.headDim, d.ropeTheta);
    const mask = causalMask(past, T);
    const rope = { cos: { data: cos, dims: [T, d.headDim] }, sin: { data: sin, dims: [T, d.headDim] } };

    const emb = await this.embed.run({ [IO.embed.ids]: { data: BigInt64Array.from(ids, (i) => BigInt(i)), dims: [T] } });
    let hidden = emb[IO.embed.hidden]!; // [T, H]
    const L = IO.layer;
    const experts = this.source();
    for (let l = 0; l < d.numLayers; l++) {
      const out = await this.layers[l]!.run({
        [L.hidden]: hidden,
        [L.cos]: rope.cos,
        [L.sin]: rope.sin,
        [L.mask]: { data: mask, dims: [T, past + T] },
        [L.pastKey]: kv.keys[l]!,
        [L.pastValue]: kv.values[l]!,
      });
      kv.keys[l] = out[L.presentKey]!;
      kv.values[l] = out[L.presentValue]!;
      const moeIn = out[L.moeIn]!;
      const routing = routeTokens(out[L.routerLogits]!.data, T, d.numExperts, d.topK, d.normTopkProb);
      for (const observe of this.observers) observe(l, routing, moeIn);
      experts.onLayerRouted?.(l, routing, moeIn.data, out[L.attnOut]!.data);
      if (experts.observeRouting) {
        const E = d.numExperts;
        for (let t = 0; t < T; t++) experts.observeRouting(l, routing.probs.subarray(t * E, (t + 1) * E));
      }
      const moeOut = await this.runExperts(l, routing, moeIn.data);
      // Residual: attn_out + (sum of weighted experts [+ gated shared expert]), in fp32.
      const next = out[L.attnOut]!.data;
      const shared = out[L.sharedOut]?.data;
      if (shared) for (let i = 0; i < moeOut.length; i++) moeOut[i] = moeOut[i]! + shared[i]!;
      for (let i = 0; i < next.length; i++) next[i] = next[i]! + moeOut[i]!;
      hidden = { data: next, dims: [T, d.hiddenSize] };
    }
    kv.length = past + T;
    experts.endForward?.();
    const headIn = options.allLogits ? hidden : { data: hidden.data.subarray((T - 1) * d.hiddenSize), dims: [1, d.hiddenSize] };
    return (await this.head.run({ [IO.head.hidden]: headIn }))[IO.head.logits]!;
  }

  /** Weighted sum of the routed experts' outputs, [T, H]; each expert runs once on its tokens. */
  private async runExperts(layer: number, routing: Routing, x: Float32Array): Promise<Float32Array> {
    const H = this.dims.hiddenSize;
    const experts = this.source();
    const out = new Float32Array(routing.tokens * H);
    // Resident experts first: loads still in flight get that long to arrive.
    const groups = [...groupByExpert(routing)];
    const ready = (e: number) => (experts.isReady?.(layer, e) ?? true ? 0 : 1);
    groups.sort((a, b) => ready(a[0]) - ready(b[0]) || a[0] - b[0]);
    // Accumulating in a fixed expert order keeps the fp32 sums identical whatever the order of
    // computation, so offloading stays lossless.
    const outputs = new Map<number, Float32Array>();
    const gather = (rowsOf: number[]) => {
      const rows = new Float32Array(rowsOf.length * H); // [n, H] tokens routed to one expert
      rowsOf.forEach((t, i) => rows.set(x.subarray(t * H, (t + 1) * H), i * H));
      return rows;
    };
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
        await this.kernel.forward(resident, rows, n, y);
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
    for (const [e, group] of groupByExpert(routing)) {
      const n = group.rows.length;
      const y = outputs.get(e)!;
      for (let i = 0; i < n; i++) {
        const wt = group.weights[i]!;
        const base = group.rows[i]! * H;
        for (let h = 0; h < H; h++) out[base + h] = out[base + h]! + Math.fround(y[i * H + h]! * wt);
      }
    }
    return out;
  }

  async dispose(): Promise<void> {
    await Promise.all([this.embed, this.head, ...this.layers].map((s) => s.dispose()));
    await this.kernel.dispose();
  }
}
