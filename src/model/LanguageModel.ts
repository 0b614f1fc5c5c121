/**
 * What every loaded model offers, whichever thread computes: WorkerModel (loadModel(), the
 * default: compute on a worker thread) and MoeModel (loadModelOnThisThread(): compute on the
 * caller's thread) both implement it, so code written against it runs on either and the compiler
 * checks that the two stay the same. Statistics kept where the compute runs may come back as a
 * promise (from the worker): `await` them, which works for both.
 */
import type { KvCachePrecision } from "../evaluator/KvCache.js";
import type { ModelDims } from "../architectures/ModelDims.js";
import type { ExecutionDevice } from "../backends/onnx.js";
import type { ExpertCacheReport } from "../cache/TieredExpertSource.js";
import type { DenseLayersName } from "../evaluator/DenseLayers.js";
import type { HybridScheduler } from "../scheduler/HybridScheduler.js";
import type { ChatMessage, TextTokenizer } from "../tokenizer/TextTokenizer.js";
import type { ChatSession, ChatSessionOptions } from "./ChatSession.js";
import type { GenerateOptions, GenerationStats, PerplexityResult } from "./GenerateOptions.js";
import type { TokenSequence } from "./KvSequence.js";
import type { ModelManifest } from "./manifest.js";

/** Which implementations run a model, and the dense bytes one decode token reads (fixed at load). */
export interface EngineInfo {
  dense: DenseLayersName;
  denseBytesPerToken: number;
  expertKernel: string;
  /** The experts' encoding as stored, e.g. "q4_k" or "q4_k; ffn_down q6_k in layers 0, 3, 6-7" (store/recordEncodings.ts). */
  experts: string;
  threads: number;
  /** How the KV cache holds keys and values (LoadModelOptions.kvCache; fp32 where f16 does not apply). */
  kvCache: KvCachePrecision;
  /** Whether decode steps can run in native code (LoadModelOptions.fusedDecode and the model's shape allow it); each step also needs a budget that holds every expert. */
  fusedDecode: boolean;
}

/** Where experts ran, per layer, and the cost figures the scheduler planned with. */
export type ScheduleStats = ReturnType<HybridScheduler["stats"]> | { schedule: "device"; layers: [] };

export interface LanguageModel {
  readonly manifest: ModelManifest;
  readonly dims: ModelDims;
  /** Tokenization runs on the caller's thread either way. */
  readonly tokenizer: TextTokenizer;
  readonly contextSize: number;
  /** The expert kernel in use ("native", "onnx" or "js"). */
  readonly expertKernel: string;
  /** The execution provider the dense graphs run on. */
  readonly device: ExecutionDevice;

  /** Prompt text -> token ids (chat template applied when asked). */
  tokenize(prompt: string | readonly ChatMessage[], chat?: boolean): number[];
  /** The token ids that end a generation. */
  eosIds(): number[];
  /** Streams generated text pieces; the generator's return value is the run's stats. */
  generate(prompt: string | readonly ChatMessage[], options?: GenerateOptions): AsyncGenerator<string, GenerationStats>;
  /** Logits for every position of `ids`, from an empty cache: [T, V]. */
  logits(ids: readonly number[]): Promise<{ data: Float32Array; dims: readonly number[] }>;
  perplexity(text: string, options?: { window?: number; signal?: AbortSignal }): Promise<PerplexityResult>;
  /** Feeds `ids` through the decode path one token at a time (profiling routing, cache, predictor). */
  teacherForce(ids: readonly number[], options?: { signal?: AbortSignal }): Promise<void>;
  cacheStats(): ExpertCacheReport | Promise<ExpertCacheReport>;
  scheduleStats(): ScheduleStats | Promise<ScheduleStats>;
  engineInfo(): EngineInfo;
  /** A conversation whose KV cache persists between turns (see ChatSession). */
  createChatSession(options?: ChatSessionOptions): ChatSession;
  /** A token sequence whose KV cache persists between generations (see KvSequence). */
  openSequence(): TokenSequence;
  /** Frees everything the model holds; safe while a generation runs (it ends with DISPOSED). */
  dispose(): Promise<void>;
}
