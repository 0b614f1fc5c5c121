/**
 * Shallow-favouring LRU, after Fate's shallow-favouring expert cache: experts of the first layers
 * are the hardest to prefetch in time (little compute ahead of them in the token to hide a load
 * behind, least accurate cross-layer predictions), so the cache should spend its room on them and
 * leave deeper layers to the prefetcher. The victim maximises
 *
 *     (now - lastUse + 1) * (1 + depthWeight * layer / (numLayers - 1))
 *
 * with time counted in accesses and insertions: the deepest layer ages (1 + depthWeight) times
 * faster than layer 0. Within a layer this is exactly LRU; across layers a deep expert goes first
 * at equal age, but a shallow expert unused long enough still goes. depthWeight 0 is plain LRU.
 * Without a prefetcher (a plain trace replay) it loses to LRU at small capacities, by design.
 */
import { layerOfKey, type ExpertKey, type ReplacementPolicy } from "../types.js";

export interface ShallowOptions {
  /** Layers in the model; default: one more than the deepest layer seen so far. */
  numLayers?: number;
  /** Extra ageing of the deepest layer relative to layer 0. Default 1. */
  depthWeight?: number;
}

export class ShallowPolicy implements ReplacementPolicy {
  readonly name = "shallow";
  readonly offline = false;
  private readonly depthWeight: number;
  private numLayers: number;
  private readonly fixedLayers: boolean;
  private readonly last = new Map<ExpertKey, number>(); // residents in LRU order: last use
  private tick = 0;

  constructor(options: ShallowOptions = {}) {
    this.depthWeight = options.depthWeight ?? 1;
    if (!(this.depthWeight >= 0)) throw new RangeError(`shallow depthWeight must be >= 0, got ${this.depthWeight}`);
    this.fixedLayers = options.numLayers !== undefined;
    this.numLayers = options.numLayers ?? 1;
  }

  onAccess(key: ExpertKey, _clock: number, hit: boolean): void {
    this.see(key);
    this.tick++;
    if (hit) this.touch(key);
  }

  onInsert(key: ExpertKey): void {
    this.see(key);
    this.tick++;
    this.touch(key);
  }

  onRemove(key: ExpertKey): void {
    this.last.delete(key);
  }

  chooseVictim(_incoming: ExpertKey, evictable: (key: ExpertKey) => boolean): ExpertKey | undefined {
    const span = Math.max(1, this.numLayers - 1);
    let best: ExpertKey | undefined;
    let bestAge = -Infinity;
    for (const [key, last] of this.last) {
      if (!evictable(key)) continue;
      const age = (this.tick + 1 - last) * (1 + (this.depthWeight * layerOfKey(key)) / span);
      if (age > bestAge) [best, bestAge] = [key, age]; // strict: ties keep the older one
    }
    return best;
  }

  reset(): void {
    this.last.clear();
    this.tick = 0;
    if (!this.fixedLayers) this.numLayers = 1;
  }

  private see(key: ExpertKey): void {
    if (!this.fixedLayers) this.numLayers = Math.max(this.numLayers, layerOfKey(key) + 1);
  }

  private touch(key: ExpertKey): void {
    this.last.delete(key);
    this.last.set(key, this.tick);
  }
}
