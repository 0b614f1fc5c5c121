/**
 * The oracle: the true routing of the run, known in advance from a recorded trace of the same
 * prompt (greedy decoding is deterministic and offloading is lossless, so a second run routes
 * exactly as the first). For profiling: the upper bound of what prediction can give.
 */
import type { ExpertPredictor, LayerObservation } from "./types.js";

/** Per forward pass, per layer: the routing's expert ids and weights [T, K]. */
export type RoutingLog = { experts: Int32Array; weights: Float32Array; tokens: number; topK: number }[][];

export class OraclePredictor implements ExpertPredictor {
  readonly name = "oracle" as const;
  private pass = -1;

  constructor(
    private readonly log: RoutingLog,
    private readonly numLayers: number,
    private readonly numExperts: number
  ) {}

  observe(obs: LayerObservation, depth: number): Float32Array[] {
    if (obs.layer === 0) this.pass++;
    const E = this.numExperts;
    const out: Float32Array[] = [];
    for (let k = 1; k <= depth && obs.layer + k < this.numLayers; k++) {
      const r = this.log[this.pass]?.[obs.layer + k];
      const scores = new Float32Array(obs.tokens * E);
      if (r && r.tokens === obs.tokens) for (let i = 0; i < r.tokens * r.topK; i++) scores[Math.floor(i / r.topK) * E + r.experts[i]!] = Math.max(r.weights[i]!, 1e-6);
      out.push(scores);
    }
    return out;
  }

  reset(): void {
    this.pass = -1;
  }
}
