/** moe-run's library entry point. */
export { loadModel, MoeModel, type LoadModelOptions, type GenerateOptions, type GenerationStats, type PerplexityResult } from "./model/MoeModel.js";
export { importModel, type ImportOptions, type ImportResult } from "./importer/importModel.js";
export { readManifest, type ModelManifest } from "./model/manifest.js";
export type { ModelDims } from "./architectures/ModelDims.js";
export { supportedModelTypes } from "./architectures/architectures.js";
export type { ChatMessage } from "./tokenizer/TextTokenizer.js";
export type { SamplingOptions } from "./evaluator/sampler.js";
export * from "./errors.js";
export { VERSION } from "./version.js";
