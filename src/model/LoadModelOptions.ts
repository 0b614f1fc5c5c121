/**
 * Options of loadModel() and loadModelOnThisThread(): threads, context, budgets, cache policy,
 * predictor, scheduler, kernels. loadModel() sends them to its compute thread, so they are plain
 * data there, `log` aside (its lines come back to the caller's thread).
 */
import type { DeviceName } from "../backends/onnx.js";
import type { PolicyName } from "../cache/policies/index.js";
import type { ExpertId } from "../cache/types.js";
import type { DenseLayersName } from "../evaluator/DenseLayers.js";
import type { ExpertKernelName } from "../kernels/expertKernels.js";
import type { RoutingLog } from "../predict/OraclePredictor.js";
import type { PredictorName } from "../predict/types.js";
import type { ScheduleName } from "../scheduler/HybridScheduler.js";
import type { ByteSize } from "../util/bytes.js";
import type { KvCachePrecision } from "../evaluator/KvCache.js";
import type { MemoryLimits } from "./memoryPlan.js";

export interface LoadModelOptions {
  /** onnxruntime intra-op threads. Default: the machine's available parallelism. */
  threads?: number;
  /** Longest sequence (prompt + generated). Default and maximum: the model's max positions. */
  contextSize?: number;
  /** Check every file's sha256 against the manifest before loading. Default false (sizes only). */
  verify?: boolean;
  /**
   * Budget of the device tier (resident, compute-ready experts): bytes, or { percent } of all
   * experts' bytes. Default: the memory plan's (model/memoryPlan.ts): what this process may use
   * (cgroup limit, available RAM) minus the dense graphs, KV cache, working memory and a margin;
   * unlimited when every expert fits. The minimum is one token's activated experts of a layer
   * plus the expert kernel's working memory; less is refused with the minimum in the message.
   */
  deviceMem?: ByteSize;
  /**
   * Budget of the host tier (expert records kept in RAM): bytes, or { percent } of all records.
   * Default: the memory plan's: 0 with the CPU kernels (the device tier already holds the records
   * in RAM), the room left in RAM with a GPU provider.
   */
  hostMem?: ByteSize;
  /** The memory limits to plan with, instead of reading them from this machine (tests, embedding apps). */
  memoryLimits?: MemoryLimits;
  /** Replacement policy of the device tier. Default "lru". */
  policy?: PolicyName;
  /** Experts never evicted once loaded. */
  pin?: ExpertId[];
  /**
   * Predictor of upcoming layers' experts: "gate" (cross-layer gate, Fate), "pregate",
   * "affinity" (learned inter-layer statistics), "reuse" (previous token), "oracle" (needs
   * `oracleLog`), "none", or "auto" (the default): "gate" when the experts do not all fit the
   * memory plan and prefetching pays on this machine (see `prefetch`), else "none".
   */
  predictor?: PredictorName | "auto";
  /**
   * Load predicted experts ahead of their layer: true, false, or "auto" (the default with a
   * predictor): only when a record's read takes over four times the loader's overhead and a
   * layer's compute can hide more read time than wrong predictions add, measured at load
   * (cache/prefetchPayoff.ts); otherwise the predictor is only scored.
   */
  prefetch?: boolean | "auto";
  /** Layers ahead to predict and prefetch. Default 1. */
  prefetchDepth?: number;
  /** Minimum predicted probability to prefetch. Default 0.05. */
  prefetchThreshold?: number;
  /**
   * For the oracle predictor: the routing of a previous identical run (see onRouting).
   * loadModelOnThisThread() only: loadModel() refuses it and predictor "oracle".
   */
  oracleLog?: RoutingLog;
  /**
   * Where activated experts run: "auto" splits each layer between the device side and a CPU
   * worker pool by a cost model measured on this machine; "device" or "cpu" put all on one side.
   * Default "auto" when the native kernels are built, else "device".
   */
  schedule?: ScheduleName;
  /**
   * Execution provider for the dense graphs: "auto" (CUDA, else WebGPU, else CPU), "cpu",
   * "webgpu" or "cuda"; one this machine lacks falls back to the CPU with a note. Default "cpu".
   */
  device?: DeviceName;
  /** Threads of the CPU expert pool. Default: cores - 1 (at least 1). */
  cpuThreads?: number;
  /** Measure the scheduler's cost model again instead of using the cached figures. */
  recalibrate?: boolean;
  /** Expert kernel. Default "auto": native when built, else onnxruntime. */
  expertKernel?: ExpertKernelName | "auto";
  /**
   * Dense layers (attention, router, LM head). Default "auto": "native" on the CPU when the
   * native kernels are built (weights at the experts' width, KV cache appended in place), else
   * "onnx" (onnxruntime, fp32 weights).
   */
  dense?: DenseLayersName | "auto";
  /**
   * KV cache precision of the native dense layers. Default "f16": half the bytes attention reads
   * per token, which is what decode at long contexts is bound by (llama.cpp's default cache type);
   * logits move by half-precision rounding only. "f32" is exact (greedy output equals an fp32
   * reference's). The onnx dense layers and latent (MLA) caches keep fp32.
   */
  kvCache?: KvCachePrecision;
  /**
   * Decode steps of a model whose experts all fit in the device budget run in native code, with
   * no JavaScript between the layers, as far as the experts they route to are resident (the same
   * bits: evaluator/FusedDecode.ts), where the model's shape allows (native dense layers and
   * kernel, the softmax router, no latent attention). Default true; false keeps the
   * per-layer loop (for comparisons and profiling).
   */
  fusedDecode?: boolean;
  /** Where notes (fallbacks, warnings) go. Default: stderr. */
  log?: (line: string) => void;
}
