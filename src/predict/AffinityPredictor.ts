/**
 * Inter-layer affinity (ExFlow / MoETuner): P(expert j at layer l+1 | expert i at layer l),
 * counted from observed routing, from expert ids alone. A token's score for layer l+1 is
 * sum_i w_i P(j | i) over its routed experts i at layer l (router weights w); deeper layers chain
 * the transition matrices. Counts persist across sessions in the model directory's
 * routing-stats.mdb (LMDB), so a new session starts warm.
 */
import type { RootDatabase } from "lmdb";
import { lmdbModule } from "../util/lazyLmdb.js";
import type { ExpertPredictor, LayerObservation } from "./types.js";

export class AffinityPredictor implements ExpertPredictor {
  readonly name = "affinity" as const;
  /** counts[l]: [E, E], tokens routed to i at layer l and to j at layer l+1. */
  private readonly counts: Float64Array[];
  /** Per token of the current chunk, the experts and weights of the last observed layer. */
  private prev: { layer: number; routing: LayerObservation["routing"] } | undefined;

  constructor(
    private readonly numLayers: number,
    private readonly numExperts: number,
    private readonly statsPath?: string,
    private readonly log: (line: string) => void = () => {}
  ) {
    const E = numExperts;
    this.counts = Array.from({ length: Math.max(0, numLayers - 1) }, () => new Float64Array(E * E));
    if (statsPath) this.load(statsPath);
  }

  /** Tokens counted so far (over all layer pairs). */
  get observations(): number {
    let n = 0;
    for (const c of this.counts) for (let i = 0; i < c.length; i++) n += c[i]!;
    return n;
  }

  observe(obs: LayerObservation, depth: number): Float32Array[] {
    const E = this.numExperts;
    const r = obs.routing;
    if (this.prev && this.prev.layer === obs.layer - 1 && this.prev.routing.tokens === r.tokens) this.learn(obs.layer - 1, this.prev.routing, r);
    this.prev = { layer: obs.layer, routing: r };
    const out: Float32Array[] = [];
    // Distribution over this layer's experts per token, from its routing weights.
    let current: Float32Array = new Float32Array(r.tokens * E);
    for (let t = 0; t < r.tokens; t++) for (let k = 0; k < r.topK; k++) current[t * E + r.experts[t * r.topK + k]!] += r.weights[t * r.topK + k]!;
    for (let k = 1; k <= depth && obs.layer + k < this.numLayers; k++) {
      current = this.step(obs.layer + k - 1, current, r.tokens);
      out.push(current);
    }
    return out;
  }

  /** p_{l+1} = p_l . P_l, row-normalised counts (uniform for rows never seen). */
  private step(layer: number, p: Float32Array, tokens: number): Float32Array {
    const E = this.numExperts;
    const c = this.counts[layer]!;
    const next = new Float32Array(tokens * E);
    for (let i = 0; i < E; i++) {
      let rowSum = 0;
      for (let j = 0; j < E; j++) rowSum += c[i * E + j]!;
      for (let t = 0; t < tokens; t++) {
        const pi = p[t * E + i]!;
        if (pi === 0) continue;
        for (let j = 0; j < E; j++) next[t * E + j] += pi * (rowSum > 0 ? c[i * E + j]! / rowSum : 1 / E);
      }
    }
    return next;
  }

  private learn(layer: number, a: LayerObservation["routing"], b: LayerObservation["routing"]): void {
    const E = this.numExperts;
    const c = this.counts[layer]!;
    for (let t = 0; t < a.tokens; t++)
      for (let x = 0; x < a.topK; x++) for (let y = 0; y < b.topK; y++) c[a.experts[t * a.topK + x]! * E + b.experts[t * b.topK + y]!] += 1;
  }

  reset(): void {
    this.prev = undefined;
  }

  save(): void {
    if (!this.statsPath) return;
    try {
      const db = this.db(this.statsPath);
      db.transactionSync(() => {
        for (let l = 0; l < this.counts.length; l++) db.putSync(["affinity", this.numExperts, l], Buffer.from(this.counts[l]!.buffer));
      });
      void db.close();
    } catch (err) {
      this.log(`moe-run: could not save routing statistics to ${this.statsPath}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private load(path: string): void {
    try {
      const db = this.db(path);
      for (let l = 0; l < this.counts.length; l++) {
        const buf = db.getBinary(["affinity", this.numExperts, l]);
        if (buf && buf.byteLength === this.counts[l]!.byteLength) this.counts[l]!.set(new Float64Array(Uint8Array.from(buf).buffer));
      }
      void db.close();
    } catch (err) {
      this.log(`moe-run: could not read routing statistics from ${path}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private db(path: string): RootDatabase<Buffer, (string | number)[]> {
    return lmdbModule().open({ path, encoding: "binary", compression: false }) as RootDatabase<Buffer, (string | number)[]>;
  }
}
