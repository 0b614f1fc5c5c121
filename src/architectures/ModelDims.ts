/** The architecture-independent description of a model that the importer and runtime work from. */
export interface ModelDims {
  /** Hugging Face model_type, e.g. "mixtral". */
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** Per-head dimension; may differ from hiddenSize / numHeads (Qwen3-MoE). */
  headDim: number;
  numExperts: number;
  /** Experts activated per token. */
  topK: number;
  /** Intermediate size of one routed expert. */
  expertFfn: number;
  /** Intermediate size of the shared expert; 0 when the architecture has none. */
  sharedExpertFfn: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Longest sequence the model supports (sliding window applied, if any). */
  maxPositions: number;
  tieEmbeddings: boolean;
  /** Renormalise the top-k router probabilities to sum to 1. */
  normTopkProb: boolean;
  qkvBias: boolean;
  /** "head": RMSNorm per head over headDim (Qwen3-MoE); "full": over all heads' q/k (OLMoE). */
  qkNorm: "none" | "head" | "full";
  bosTokenId: number | undefined;
  eosTokenIds: number[];
}

/** Parameters of one routed expert: gate and up [F,H], down [H,F]. */
export function expertParamCount(d: ModelDims): number {
  return 3 * d.expertFfn * d.hiddenSize;
}
