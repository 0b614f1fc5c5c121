/** Previous-token reuse: layer l+k will route like it did for the previous token. */
import type { ExpertPredictor, LayerObservation } from "./types.js";

export class ReusePredictor implements ExpertPredictor {
  readonly name = "reuse" as const;
  /** Per layer: routing weights [E] of the latest token seen at that layer. */
  private last: (Float32Array | undefined)[];

  constructor(
    private readonly numLayers: number,
    private readonly numExperts: number
  ) {
    this.last = new Array(numLayers).fill(undefined);
  }

  observe(obs: LayerObservation, depth: number): Float32Array[] {
    const E = this.numExperts;
    const { tokens: T, routing: r } = obs;
    const out: Float32Array[] = [];
    for (let k = 1; k <= depth && obs.layer + k < this.numLayers; k++) {
      const prev = this.last[obs.layer + k];
      const scores = new Float32Array(T * E); // [T, E]
      // Token t's prediction for layer l+k is token t-1's routing there; the first token of this
      // chunk uses the last token of the previous chunk. Only layer l+k's last chunk is known:
      // within a chunk, tokens before t are routed at l+k only later, so use what is known.
      for (let t = 0; t < T; t++) if (prev) scores.set(prev, t * E);
      out.push(scores);
    }
    const mine = new Float32Array(E);
    for (let k = 0; k < r.topK; k++) mine[r.experts[(T - 1) * r.topK + k]!] = r.weights[(T - 1) * r.topK + k]!;
    this.last[obs.layer] = mine;
    return out;
  }

  reset(): void {
    this.last = new Array(this.numLayers).fill(undefined);
  }
}
