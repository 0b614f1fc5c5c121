/** Messages between WorkerModel (the caller's thread) and engineWorker (the compute thread). */
import type { ModelDims } from "../architectures/ModelDims.js";
import type { ExecutionDevice } from "../backends/onnx.js";
import type { ExpertCacheReport } from "../cache/TieredExpertSource.js";
import type { GenerateOptions, GenerationStats, LoadModelOptions, PerplexityResult } from "../model/MoeModel.js";
import type { EngineInfo, ScheduleStats } from "../model/LanguageModel.js";
import type { ModelManifest } from "../model/manifest.js";
import type { SequenceStats } from "../model/KvSequence.js";
import type { ChatMessage } from "../tokenizer/TextTokenizer.js";

/** Generate options that can cross threads (callbacks are re-attached on the caller's side). */
export type WireGenerateOptions = Omit<GenerateOptions, "signal" | "onStats" | "onToken" | "onLogits"> & { wantLogits?: boolean };

/** What the worker answers to "load": everything about the model that is fixed once it is loaded. */
export interface LoadInfo {
  dims: ModelDims;
  contextSize: number;
  manifest: ModelManifest;
  device: ExecutionDevice;
  engine: EngineInfo;
  eosIds: number[];
}

export type Request =
  | { id: number; method: "load"; dir: string; options: Omit<LoadModelOptions, "log" | "oracleLog"> }
  | { id: number; method: "generate"; prompt: string | ChatMessage[]; options: WireGenerateOptions }
  /** Stops the generation, perplexity or teacherForce that request `target` started. */
  | { id: number; method: "abort"; target: number }
  /** A KvSequence on the worker, known by this request's id. */
  | { id: number; method: "sequenceOpen" }
  | { id: number; method: "sequenceGenerate"; sequence: number; ids: number[]; options: WireGenerateOptions }
  | { id: number; method: "sequenceReset"; sequence: number }
  | { id: number; method: "sequenceClose"; sequence: number }
  | { id: number; method: "logits"; ids: number[] }
  | { id: number; method: "perplexity"; text: string; window?: number }
  | { id: number; method: "teacherForce"; ids: number[] }
  | { id: number; method: "cacheStats" }
  | { id: number; method: "scheduleStats" }
  | { id: number; method: "dispose" };

export interface WireError {
  name: string;
  code?: string;
  message: string;
}

export type Response =
  | { id: number; type: "result"; value?: unknown }
  | { id: number; type: "error"; error: WireError }
  | { id: number; type: "piece"; text: string }
  | { id: number; type: "token"; token: number; logits?: Float32Array }
  | { id: number; type: "stats"; stats: GenerationStats | SequenceStats }
  | { id: number; type: "log"; line: string };

export type { ExpertCacheReport, GenerationStats, PerplexityResult, ScheduleStats, SequenceStats };
