/**
 * Per-layer LRU: make room with the least recently used expert of the incoming expert's own layer
 * when one is resident and evictable, else with the global LRU expert. Keeps each layer's share of
 * the cache roughly stable, as per-layer expert slots do in mixtral-offloading.
 */
import { layerOfKey, type ExpertKey } from "../types.js";
import { LruPolicy } from "./lru.js";

export class LayerLruPolicy extends LruPolicy {
  override readonly name = "layer-lru";

  override chooseVictim(incoming: ExpertKey, evictable: (key: ExpertKey) => boolean): ExpertKey | undefined {
    const layer = layerOfKey(incoming);
    let global: ExpertKey | undefined;
    for (const key of this.order.keys()) {
      if (!evictable(key)) continue;
      if (layerOfKey(key) === layer) return key;
      global ??= key;
    }
    return global;
  }
}
