/**
 * A decode step computed in native code (native-bindings/src/decode_step.cc): for a model whose
 * experts all fit, one call runs every layer's dense part, router, experts and residual, where
 * ModelRunner's loop crosses into JavaScript three times a layer. Same operations
 * in the same order, so the same bits (test/fused-decode.test.ts); what it saves is the per-layer
 * JavaScript (small calls, promises, typed-array allocations, each a cache miss after a layer's
 * expert stream has swept the caches): ~30 us a layer. 600m int8, in-process A/B against the loop
 * (alternating 64-token decodes): 1.05x at 1 thread, 1.06x at 2. What is left around the call:
 * ~15 us to enter it, ~25 us of bookkeeping after it (a token).
 *
 * It applies when the model's shape allows (create(): native dense layers and expert kernel, the
 * softmax router with no correction bias, no latent attention; shared experts, dense layers and a
 * residual scale come along) and, per step (run()), when nothing outside it needs the layers one
 * at a time: no routing observers, no hybrid scheduling, and the expert source's residentTable()
 * (a budget that holds every expert, nothing loading or prefetched). A layer that routes to an expert not
 * resident yet (not used before) ends the native part: the loop goes on from that layer's dense
 * outputs and loads it. Each layer done natively is handed to the source as the loop would:
 * observeRouting, then a hit per routed expert in ascending id.
 */
import { isMoeLayer, modelFeatures, type ModelDims } from "../architectures/ModelDims.js";
import type { ExpertKernel } from "../kernels/expertKernels.js";
import type { DecodePlanHandle, NativeAddon } from "../kernels/nativeAddon.js";
import type { DecodeLayers, DenseLayers, LayerOutputs, RopeTables } from "./DenseLayers.js";
import type { KvCache } from "./KvCache.js";
import type { ExpertSource } from "./ModelRunner.js";

export class FusedDecode {
  /** Per layer l, its routing of the last step: experts and weights [L, K], probs [L, E]. */
  private readonly experts: Int32Array;
  private readonly weights: Float32Array;
  private readonly probs: Float32Array;
  /** [K] scratch: one layer's picks in ascending id. */
  private readonly picked: Int32Array;
  /** [H], [H], [E], [H] scratch: the dense outputs of a layer the step stops at (an expert not resident). */
  private readonly stopOutputs: { attnOut: Float32Array; moeIn: Float32Array; routerLogits: Float32Array; sharedOut: Float32Array };
  /** Seconds the last step spent in the dense layers, in routing and combining, in the experts. */
  readonly seconds = new Float64Array(3);
  /**
   * The native plan and what it points into: the resident table it was made from (a new table
   * from the source = experts moved: a new plan) and the dense layers' arguments.
   */
  private plan: { handle: DecodePlanHandle; table: readonly unknown[]; layers: DecodeLayers } | undefined;

  private constructor(
    private readonly addon: NativeAddon,
    private readonly dims: ModelDims,
    private readonly dense: DenseLayers,
    private readonly call: { codes: Float64Array; spec: Float64Array | undefined },
    private readonly threads: number
  ) {
    const d = dims;
    this.experts = new Int32Array(d.numLayers * d.topK);
    this.weights = new Float32Array(d.numLayers * d.topK);
    this.probs = new Float32Array(d.numLayers * d.numExperts);
    this.picked = new Int32Array(d.topK);
    const H = d.hiddenSize;
    this.stopOutputs = { attnOut: new Float32Array(H), moeIn: new Float32Array(H), routerLogits: new Float32Array(d.numExperts), sharedOut: new Float32Array(H) };
  }

  /** The fused step for this model, or undefined where its shape needs the layer loop. */
  static create(addon: NativeAddon | undefined, dims: ModelDims, dense: DenseLayers, kernel: ExpertKernel<unknown>, threads: number): FusedDecode | undefined {
    const d = dims;
    const f = modelFeatures(d);
    if (!addon || !dense.decodeLayers || !kernel.nativeDecodeCall) return undefined;
    if (f.router !== "softmax" || f.grouped.correctionBias || f.mla) return undefined;
    let routed = false;
    for (let l = 0; l < d.numLayers; l++) routed = routed || isMoeLayer(d, l);
    if (!routed) return undefined;
    return new FusedDecode(addon, d, dense, kernel.nativeDecodeCall(d.numLayers), threads);
  }

  /**
   * One token (hidden: its embedding [H], overwritten with each layer's output) at position
   * kv.length, as far as resident experts allow: undefined, with nothing computed, where this step
   * needs the layer loop from the start; else the layers done (all of them, or up to a layer that
   * needs an expert not resident yet, with that layer's dense outputs for the loop to go on from).
   */
  run(hidden: Float32Array, kv: KvCache, rope: RopeTables, source: ExpertSource, observed: boolean): { layersDone: number; next?: LayerOutputs } | undefined {
    const d = this.dims;
    if (observed || !source.residentTable || !source.noteResidentUse) return undefined;
    const table = source.residentTable(d.numExperts);
    const layers = table && this.dense.decodeLayers!(kv);
    if (!table || !layers) return undefined;
    if (this.plan?.table !== table || this.plan.layers.specs[0]![17] !== layers.specs[0]![17]) {
      // Specs are shared arrays: a changed cache precision shows in them, and the plan needs it anew.
      const handle = this.addon.decodePlan(layers.specs, layers.blobs, layers.sections, table as readonly (Uint8Array | null)[], this.call.codes, d.expertFfn, this.call.spec, d.topK, d.normTopkProb ? 1 : 0, modelFeatures(d).residualScale);
      this.plan = { handle, table, layers: { ...layers, specs: layers.specs.map((x) => Float64Array.from(x)) } };
    }
    this.seconds.fill(0);
    const next = this.stopOutputs;
    const a = this.addon;
    const p = this.plan.handle;
    const done = a.decodeStep(p, kv.nativeKeys, kv.nativeValues, kv.capacity, kv.length, rope.cos, rope.sin, hidden, this.threads, this.experts, this.weights, this.probs, this.seconds, next.attnOut, next.moeIn, next.routerLogits, next.sharedOut);
    // The loop's bookkeeping, layer by layer: the policy sees the probabilities, then the hits.
    const E = d.numExperts;
    const K = d.topK;
    const picked = this.picked;
    for (let l = 0; l < done; l++) {
      if (!isMoeLayer(d, l)) continue; // a dense layer: nothing routed, nothing acquired
      source.observeRouting?.(l, this.probs.subarray(l * E, (l + 1) * E));
      // The layer's picks in ascending id (insertion sort: K is small), the order acquire() goes in.
      for (let k = 0; k < K; k++) {
        const e = this.experts[l * K + k]!;
        let j = k;
        for (; j > 0 && picked[j - 1]! > e; j--) picked[j] = picked[j - 1]!;
        picked[j] = e;
      }
      for (let k = 0; k < K; k++) source.noteResidentUse(l, picked[k]!);
    }
    if (done === d.numLayers) return { layersDone: done };
    // Copies: the loop keeps them (attnOut becomes the hidden state), the scratch is reused.
    const shared = layers.shared[done] ? next.sharedOut.slice() : undefined;
    return { layersDone: done, next: { attnOut: next.attnOut.slice(), moeIn: next.moeIn.slice(), routerLogits: next.routerLogits.slice(), ...(shared ? { sharedOut: shared } : {}) } };
  }
}
