/**
 * Scores a predictor against the routing that really happens: for each token and layer, the
 * next-layer prediction made one layer earlier is compared with the actual top-k.
 *   recall@k  = |predicted top-k  ∩ actual| / k
 *   precision = |predicted above the confidence threshold (at most k) ∩ actual| / |those predicted|
 */
import type { Routing } from "../evaluator/routing.js";
import { topIds } from "./types.js";

export interface LayerPredictionStats {
  layer: number; // the predicted layer
  tokens: number;
  recall: number;
  precision: number;
}

export interface PredictionReport {
  name: string;
  /** Aggregate next-layer recall@k over all predicted layers and tokens. */
  recall: number;
  precision: number;
  layers: LayerPredictionStats[];
}

export class PredictionTracker {
  private readonly pending: (number[][] | undefined)[]; // per layer: per token the predicted ids
  private readonly hitsTopK: number[];
  private readonly hitsSelected: number[];
  private readonly selected: number[];
  private readonly tokens: number[];

  constructor(
    private readonly name: string,
    private readonly numLayers: number,
    private readonly topK: number,
    private readonly threshold: number
  ) {
    this.pending = new Array(numLayers).fill(undefined);
    this.hitsTopK = new Array(numLayers).fill(0);
    this.hitsSelected = new Array(numLayers).fill(0);
    this.selected = new Array(numLayers).fill(0);
    this.tokens = new Array(numLayers).fill(0);
  }

  /** The next-layer scores [T, E] predicted for `layer`. */
  predicted(layer: number, scores: Float32Array, tokens: number): void {
    const E = scores.length / tokens;
    const sets: number[][] = [];
    for (let t = 0; t < tokens; t++) sets.push(topIds(scores.subarray(t * E, (t + 1) * E), this.topK).map((e) => (scores[t * E + e]! >= this.threshold ? e : -1 - e)));
    this.pending[layer] = sets;
  }

  /** The routing that happened at `layer`. */
  actual(layer: number, routing: Routing): void {
    const sets = this.pending[layer];
    this.pending[layer] = undefined;
    if (!sets || sets.length !== routing.tokens) return;
    for (let t = 0; t < routing.tokens; t++) {
      const actual = new Set(routing.experts.subarray(t * routing.topK, (t + 1) * routing.topK));
      for (const coded of sets[t]!) {
        const e = coded >= 0 ? coded : -1 - coded;
        const hit = actual.has(e);
        if (hit) this.hitsTopK[layer]!++;
        if (coded >= 0) {
          this.selected[layer]!++;
          if (hit) this.hitsSelected[layer]!++;
        }
      }
      this.tokens[layer]!++;
    }
  }

  reset(): void {
    this.pending.fill(undefined);
  }

  report(): PredictionReport {
    const layers: LayerPredictionStats[] = [];
    let hits = 0;
    let total = 0;
    let selHits = 0;
    let sel = 0;
    for (let l = 0; l < this.numLayers; l++) {
      if (this.tokens[l] === 0) continue;
      layers.push({
        layer: l,
        tokens: this.tokens[l]!,
        recall: this.hitsTopK[l]! / (this.tokens[l]! * this.topK),
        precision: this.selected[l]! > 0 ? this.hitsSelected[l]! / this.selected[l]! : 0,
      });
      hits += this.hitsTopK[l]!;
      total += this.tokens[l]! * this.topK;
      selHits += this.hitsSelected[l]!;
      sel += this.selected[l]!;
    }
    return { name: this.name, recall: total ? hits / total : 0, precision: sel ? selHits / sel : 0, layers };
  }
}
