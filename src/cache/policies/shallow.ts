/**
 * Shallow-favouring LRU (after Fate's observation that experts of shallow layers are the hardest
 * to prefetch, because fewer layers ahead of them give a signal, while deeper ones can be
 * predicted and loaded in time): the victim maximises
 *
 *     (clock - lastUse + 1) * (1 + depthWeight * layer / (numLayers - 1))
 *
 * i.e. an expert of the deepest layer ages (1 + depthWeight) times faster than one of layer 0.
 * Within a layer this is exactly LRU; across layers a deep expert goes first at equal age, but a
 * shallow expert unused for long enough still goes. depthWeight 0 is plain LRU.
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
  private readonly last = new Map<ExpertKey, number>(); // residents in LRU order

  constructor(options: ShallowOptions = {}) {
    this.depthWeight = options.depthWeight ?? 1;
    if (!(this.depthWeight >= 0)) throw new RangeError(`shallow depthWeight must be >= 0, got ${this.depthWeight}`);
    this.fixedLayers = options.numLayers !== undefined;
    this.numLayers = options.numLayers ?? 1;
  }

  onAccess(key: ExpertKey, clock: number, hit: boolean): void {
    this.see(key);
    if (hit) this.touch(key, clock);
  }

  onInsert(key: ExpertKey, clock: number): void {
    this.see(key);
    this.touch(key, clock);
  }

  onRemove(key: ExpertKey): void {
    this.last.delete(key);
  }

  chooseVictim(_incoming: ExpertKey, evictable: (key: ExpertKey) => boolean, clock: number): ExpertKey | undefined {
    const span = Math.max(1, this.numLayers - 1);
    let best: ExpertKey | undefined;
    let bestAge = -Infinity;
    for (const [key, last] of this.last) {
      if (!evictable(key)) continue;
      const age = (clock - last + 1) * (1 + (this.depthWeight * layerOfKey(key)) / span);
      if (age > bestAge) [best, bestAge] = [key, age]; // strict: ties keep the older one
    }
    return best;
  }

  reset(): void {
    this.last.clear();
    if (!this.fixedLayers) this.numLayers = 1;
  }

  private see(key: ExpertKey): void {
    if (!this.fixedLayers) this.numLayers = Math.max(this.numLayers, layerOfKey(key) + 1);
  }

  private touch(key: ExpertKey, clock: number): void {
    this.last.delete(key);
    this.last.set(key, clock);
  }
}
