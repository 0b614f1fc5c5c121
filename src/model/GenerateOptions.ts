/** Options and results of generation and perplexity. */
import type { StepTimesSnapshot } from "../evaluator/StepTimes.js";
import type { SamplingOptions } from "../evaluator/sampler.js";

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 128. */
  maxTokens?: number;
  /** Treat the prompt as a user message and apply the model's chat template. Default false. */
  chat?: boolean;
  /** Stop at the model's end-of-sequence token. Default true. */
  stopAtEos?: boolean;
  /** Aborts generation; the iterator then throws the signal's reason. */
  signal?: AbortSignal;
  /** Receives timings once generation ends (also on abort). */
  onStats?: (stats: GenerationStats) => void;
  /** Receives each generated token id. */
  onToken?: (id: number) => void;
  /** Receives the logits [V] each sampled token was drawn from (valid during the call only). */
  onLogits?: (logits: Float32Array) => void;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
  prefillTokensPerSecond: number;
  /** Decode speed over the tokens after the first (each needs one forward of one token). */
  decodeTokensPerSecond: number;
  finishReason: "eos" | "length" | "context" | "abort";
  /** Where the decode steps (after the first token) spent their time; see evaluator/StepTimes.ts. */
  decodeBreakdown: StepTimesSnapshot;
  /** The same for the prompt's forward pass. */
  prefillBreakdown: StepTimesSnapshot;
}

export interface PerplexityResult {
  perplexity: number;
  /** Total negative log-likelihood, nats. */
  nll: number;
  /** Tokens predicted. */
  tokens: number;
}
