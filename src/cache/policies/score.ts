/**
 * Router-score policy in the style of HybriMoE's score-aware caching: every expert of a layer
 * keeps a score decayed each time that layer's router runs, score = decay * score + p, where p is
 * the router probability the token gave the expert (0 when it is not in the observed top-k).
 * Evict the lowest score; ties by LRU. Needs observeRouting(); without it every score is 0 and the
 * policy degrades to LRU.
 */
import { expertOfKey, layerOfKey, type ExpertKey, type ReplacementPolicy } from "../types.js";

export interface ScoreOptions {
  /** Weight of the past per router step, in [0, 1). Default 0.8. */
  decay?: number;
}

export class ScorePolicy implements ReplacementPolicy {
  readonly name = "score";
  readonly offline = false;
  readonly decay: number;
  private readonly scores = new Map<number, Float64Array>(); // layer -> score per expert
  private readonly last = new Map<ExpertKey, number>(); // residents in LRU order

  constructor(options: ScoreOptions = {}) {
    this.decay = options.decay ?? 0.8;
    if (!(this.decay >= 0 && this.decay < 1)) throw new RangeError(`score decay must be in [0, 1), got ${this.decay}`);
  }

  observeRouting(layer: number, probs: Float32Array): void {
    let s = this.scores.get(layer);
    if (!s || s.length < probs.length) {
      const grown = new Float64Array(probs.length);
      if (s) grown.set(s);
      this.scores.set(layer, (s = grown));
    }
    for (let e = 0; e < s.length; e++) s[e] = this.decay * s[e]! + (probs[e] ?? 0);
  }

  score(key: ExpertKey): number {
    return this.scores.get(layerOfKey(key))?.[expertOfKey(key)] ?? 0;
  }

  onAccess(key: ExpertKey, clock: number, hit: boolean): void {
    if (hit) this.touch(key, clock);
  }

  onInsert(key: ExpertKey, clock: number): void {
    this.touch(key, clock);
  }

  onRemove(key: ExpertKey): void {
    this.last.delete(key);
  }

  chooseVictim(_incoming: ExpertKey, evictable: (key: ExpertKey) => boolean): ExpertKey | undefined {
    let best: ExpertKey | undefined;
    let bestScore = Infinity;
    for (const key of this.last.keys()) {
      if (!evictable(key)) continue;
      const s = this.score(key);
      if (s < bestScore) [best, bestScore] = [key, s]; // strict: ties keep the older (LRU) one
    }
    return best;
  }

  reset(): void {
    this.scores.clear();
    this.last.clear();
  }

  private touch(key: ExpertKey, clock: number): void {
    this.last.delete(key);
    this.last.set(key, clock);
  }
}
