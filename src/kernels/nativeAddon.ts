/**
 * Loads the native addon built from native-bindings/ (see native-bindings/build.mjs). Absent when
 * the machine could not build it; callers fall back and say so.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** An opaque native decode plan (decodePlan). */
export type DecodePlanHandle = { readonly __brand: "DecodePlan" };

export interface NativeAddon {
  /**
   * out[T,H] for one encoded expert record: down(silu(gate x) * up x) by default; `spec`
   * (kernels/expertActivation.ts nativeExpertSpec) = [activation 0 silu | 1 clampedSwiglu, alpha,
   * limit, bias 0 | 1], with bias the record ends with fp32 biases gate [F], up [F], down [H].
   */
  expertForward(enc: number, record: Uint8Array, H: number, F: number, x: Float32Array, T: number, out: Float32Array, threads: number, spec?: Float64Array): void;
  /** expertForward for several experts of one layer at once: outs[k] is bit for bit expertForward's for records[k], xs[k] [Ts[k], H]. */
  expertsForward(
    enc: number,
    records: readonly Uint8Array[],
    H: number,
    F: number,
    xs: readonly Float32Array[],
    Ts: readonly number[],
    outs: readonly Float32Array[],
    threads: number,
    spec?: Float64Array
  ): void;
  /**
   * The instruction-set level the kernels run at: "scalar" (plain C++), "avx2" (AVX2+FMA+F16C),
   * "vnni" (avx2 plus AVX-VNNI / AVX512-VNNI integer dot products) or "avx512" (vnni's with
   * AVX512-VNNI, plus 512-bit attention and 512-bit int8 tiles that give vnni's bits). Chosen once
   * per process from the CPU (the last it runs); MOE_RUN_KERNEL_ISA=scalar|avx2|vnni|avx512 forces
   * one. Throws with code KERNEL_ISA_UNSUPPORTED (as expertForward does) when the forced level is
   * not one this CPU runs.
   */
  kernelIsa(): string;
  /** The levels this CPU can run, slowest first (always starts with "scalar"). */
  kernelIsas(): string[];
  encodeMatrix(enc: number, src: Float32Array, rows: number, cols: number, dst: Uint8Array): void;
  fileResidency(path: string): { fileBytes: number; residentBytes: number; pageSize: number };
  willNeed(path: string, offset: number, len: number): void;
  /** Sets the calling thread's nice value (higher = lower priority); inherited by its threads. */
  lowerThreadPriority(nice: number): void;
  /** Opens a file for readRange: O_DIRECT where the filesystem allows it; drops the file's cached pages. */
  openForReads(path: string): { fd: number; direct: boolean; size: number };
  closeFd(fd: number): void;
  /**
   * Reads [offset, offset+length) with `parallel` threads of 1 MiB preads into fresh aligned
   * memory (no page-cache copy left behind). Throws with code STORE_READ on a short read or I/O error.
   */
  readRange(fd: number, direct: boolean, fileSize: number, offset: number, length: number, parallel: number): Uint8Array;
  /** Frees a readRange/allocRange buffer now (detaching it: later use sees length 0); others are left to the GC. */
  releaseRange(view: Uint8Array): void;
  /** Fresh aligned memory that releaseRange frees. */
  allocRange(length: number): Uint8Array;
  /**
   * One layer's dense part (native-bindings/src/dense_layer.h): spec (18 numbers, dense_native.cc),
   * a weight blob with its section table [offset|-1, bytes, enc] per section, and the KV buffers
   * [Hkv, capacity, hd] (fp32, or halves when spec[17] is 1) holding `past` positions, to which
   * the T new ones are appended.
   */
  denseLayer(
    spec: Float64Array,
    blob: Uint8Array,
    sections: Float64Array,
    hidden: Float32Array,
    T: number,
    past: number,
    cos: Float32Array,
    sin: Float32Array,
    kvKeys: Float32Array | Uint16Array,
    kvValues: Float32Array | Uint16Array,
    capacity: number,
    attnOut: Float32Array,
    moeIn: Float32Array,
    routerLogits: Float32Array,
    sharedOut: Float32Array | null,
    threads: number
  ): void;
  /**
   * What decodeStep computes with (native-bindings/src/decode_step.cc), checked once: per layer l
   * denseLayer's spec (its kvF16 set), blob and sections; records[l * E + e] every expert's record
   * (null where not resident or the layer is dense); encs[l] its record code; residualScale the
   * MLP output's factor before the residual add. The plan points into those buffers: keep them
   * alive while it is used.
   */
  decodePlan(
    specs: readonly Float64Array[],
    blobs: readonly Uint8Array[],
    sections: readonly Float64Array[],
    records: readonly (Uint8Array | null)[],
    encs: Float64Array,
    F: number,
    spec: Float64Array | undefined,
    topK: number,
    normTopkProb: 0 | 1,
    residualScale: number
  ): DecodePlanHandle;
  /**
   * One decode token through every layer of `plan`: per layer denseLayer, the softmax router
   * (routing.ts's bits), the top-k experts (expertsForward) and their weighted sum into `hidden`
   * ([H]: the embedding in, the last layer's output out). Writes the routing (experts, weights
   * [L*K], probs [L*E]) and adds the seconds spent in the dense layers, in routing and combining,
   * and in the experts to seconds[0..2]. Returns the layers done: L, or the first layer that routed
   * to an expert the plan has no record for, its dense outputs in attnOut, moeIn, routerLogits
   * and (with a shared expert) sharedOut.
   */
  decodeStep(
    plan: DecodePlanHandle,
    kvKeys: readonly (Float32Array | Uint16Array)[],
    kvValues: readonly (Float32Array | Uint16Array)[],
    capacity: number,
    past: number,
    cos: Float32Array,
    sin: Float32Array,
    hidden: Float32Array,
    threads: number,
    experts: Int32Array,
    weights: Float32Array,
    probs: Float32Array,
    seconds: Float64Array,
    attnOut: Float32Array,
    moeIn: Float32Array,
    routerLogits: Float32Array,
    sharedOut: Float32Array
  ): number;
  /** decodeStep's router for T tokens of E logits (routeTokens' "softmax" rule, to the bit). */
  routeSoftmax(logits: Float32Array, T: number, E: number, K: number, normTopkProb: 0 | 1, experts: Int32Array, weights: Float32Array, probs: Float32Array): void;
  /** out[T,n] = x / sqrt(mean(x^2) + eps) * w per row. */
  rmsNorm(x: Float32Array, T: number, n: number, w: Float32Array, eps: number, out: Float32Array): void;
  layerNorm(x: Float32Array, T: number, n: number, w: Float32Array, b: Float32Array, eps: number, out: Float32Array): void;
  /** y[T,rows] = x[T,cols] . W^T for one encoded matrix. */
  matmul(enc: number, w: Uint8Array, rows: number, cols: number, x: Float32Array, T: number, y: Float32Array, threads: number): void;
  /** out[n,cols] = rows ids of an F32 (0) or F16 (1) matrix, as fp32. */
  gatherRows(enc: number, w: Uint8Array, rows: number, cols: number, ids: Int32Array, out: Float32Array): void;
  /** readRange on libuv's thread pool. */
  readRangeAsync(fd: number, direct: boolean, fileSize: number, offset: number, length: number, parallel: number): Promise<Uint8Array>;
}

let cached: { addon: NativeAddon | undefined; reason: string } | undefined;

/** The addon, or undefined with the reason it is not available. */
export function loadNativeAddon(): { addon: NativeAddon | undefined; reason: string } {
  if (cached) return cached;
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
  const file = path.join(root, "native-bindings", "build", "Release", "moe_native.node");
  if (process.env.MOE_RUN_NO_NATIVE === "1") {
    cached = { addon: undefined, reason: "disabled by MOE_RUN_NO_NATIVE=1" };
  } else if (!fs.existsSync(file)) {
    cached = { addon: undefined, reason: `not built (${file} missing; run \`node native-bindings/build.mjs\`)` };
  } else {
    try {
      cached = { addon: createRequire(import.meta.url)(file) as NativeAddon, reason: "loaded" };
    } catch (err) {
      cached = { addon: undefined, reason: `failed to load: ${err instanceof Error ? err.message : String(err)}` };
    }
  }
  return cached;
}
