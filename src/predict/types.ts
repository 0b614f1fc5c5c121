/**
 * Predictors of upcoming layers' experts. After layer l's router runs, a predictor sees that
 * layer's gate input, residual and routing, and scores every expert of layers l+1..l+depth for
 * each of the T tokens. The prefetcher loads the best-scored experts of the last token ahead of
 * their layer; the evaluator compares the scores with the routing that really happens.
 */
import type { Routing } from "../evaluator/routing.js";

export const PREDICTOR_NAMES = ["gate", "pregate", "affinity", "reuse", "none", "oracle"] as const;
export type PredictorName = (typeof PREDICTOR_NAMES)[number];

export interface LayerObservation {
  layer: number;
  tokens: number; // T
  routing: Routing;
  gateInput: Float32Array; // [T, H] this layer's post-attention norm output (its router's input)
  residual: Float32Array; // [T, H] the residual stream after this layer's attention
}

export interface ExpertPredictor {
  readonly name: PredictorName;
  /**
   * Scores for layers l+1..l+depth (fewer near the last layer): element k-1 is [T, E] for layer
   * l+k, higher = more likely routed. Also the moment to learn from `obs`.
   */
  observe(obs: LayerObservation, depth: number): Float32Array[];
  /** A new sequence starts (KV cache reset). */
  reset(): void;
  /** Persists what the predictor learned (affinity statistics); called on dispose. */
  save?(): void;
}

/** Softmax of one row in place (router scores become probabilities). */
export function softmaxInPlace(row: Float32Array): void {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]!);
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += row[i] = Math.exp(row[i]! - max);
  for (let i = 0; i < row.length; i++) row[i] = row[i]! / sum;
}

/** The k best-scored expert ids of one row, best first. */
export function topIds(row: Float32Array, k: number): number[] {
  return Array.from(row.keys())
    .sort((a, b) => row[b]! - row[a]! || a - b)
    .slice(0, k);
}
