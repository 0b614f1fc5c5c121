/**
 * The entry points that load an imported model directory (see `moe-run import`).
 *
 * loadModel() is the default: the model computes on a worker thread, so the caller's event loop
 * stays responsive while it generates (onnxruntime's run() and the native kernels are synchronous:
 * on the caller's thread every forward pass would freeze it, ~100 ms a token on a large model).
 * loadModelOnThisThread() computes on the caller's thread instead: for profilers and tools that
 * need what cannot cross threads (onRouting observers, the oracle predictor, the cache objects)
 * or that measure compute without a message hop per token. Both give the LanguageModel API.
 */
import { WorkerModel } from "../engine/WorkerModel.js";
import type { LoadModelOptions } from "./LoadModelOptions.js";
import { MoeModel } from "./MoeModel.js";

/** Loads a model whose compute runs on a worker thread (the default; the caller's event loop stays free). */
export function loadModel(modelDir: string, options: LoadModelOptions = {}): Promise<WorkerModel> {
  return WorkerModel.load(modelDir, options);
}

/** Loads a model that computes on the caller's thread (profilers, tools: onRouting, the oracle predictor). */
export function loadModelOnThisThread(modelDir: string, options: LoadModelOptions = {}): Promise<MoeModel> {
  return MoeModel.load(modelDir, options);
}

/**
 * The same as loadModel(), kept for code written when the worker was the opt-in.
 * @deprecated use loadModel(), which computes on a worker thread by default.
 */
export const loadModelInWorker: typeof loadModel = loadModel;
