/**
 * Cross-layer gate predictors: apply the routers of layers l+1..l+d to what layer l already has.
 *   gate    (Fate): router_{l+k}(gate input of layer l), the post-attention-norm hidden state.
 *   pregate (Pre-gated MoE's formulation without its training): router_{l+k} applied to the
 *            residual stream after layer l's attention, normalised with layer l+k's own
 *            post-attention RMSNorm, i.e. the input layer l+k's router would see if nothing in
 *            between changed it.
 */
import type { ExpertPredictor, LayerObservation } from "./types.js";
import { softmaxInPlace } from "./types.js";

export interface RouterWeights {
  numLayers: number;
  numExperts: number; // E
  hiddenSize: number; // H
  routers: Float32Array; // [L, E, H]
  postNorms: Float32Array; // [L, H] post-attention RMSNorm weights
  rmsNormEps: number;
  /** Layers with a dense MLP: never routed, so nothing is predicted for them. */
  denseLayers?: readonly number[];
}

export class GatePredictor implements ExpertPredictor {
  constructor(
    readonly name: "gate" | "pregate",
    private readonly w: RouterWeights
  ) {}

  observe(obs: LayerObservation, depth: number): Float32Array[] {
    const { numLayers: L, numExperts: E, hiddenSize: H } = this.w;
    const out: Float32Array[] = [];
    for (let k = 1; k <= depth && obs.layer + k < L; k++) {
      const target = obs.layer + k;
      const router = this.w.routers.subarray(target * E * H, (target + 1) * E * H);
      const scores = new Float32Array(obs.tokens * E); // [T, E]
      if (this.w.denseLayers?.includes(target)) {
        out.push(scores); // all zero: below any prefetch threshold
        continue;
      }
      const x = new Float32Array(H);
      for (let t = 0; t < obs.tokens; t++) {
        if (this.name === "gate") x.set(obs.gateInput.subarray(t * H, (t + 1) * H));
        else this.normalise(obs.residual.subarray(t * H, (t + 1) * H), target, x);
        const row = scores.subarray(t * E, (t + 1) * E);
        for (let e = 0; e < E; e++) {
          let acc = 0;
          const r = e * H;
          for (let i = 0; i < H; i++) acc += router[r + i]! * x[i]!;
          row[e] = acc;
        }
        softmaxInPlace(row);
      }
      out.push(scores);
    }
    return out;
  }

  private normalise(h: Float32Array, layer: number, out: Float32Array): void {
    const H = this.w.hiddenSize;
    let ms = 0;
    for (let i = 0; i < H; i++) ms += h[i]! * h[i]!;
    const inv = 1 / Math.sqrt(ms / H + this.w.rmsNormEps);
    const norm = this.w.postNorms.subarray(layer * H, (layer + 1) * H);
    for (let i = 0; i < H; i++) out[i] = h[i]! * inv * norm[i]!;
  }

  reset(): void {}
}
