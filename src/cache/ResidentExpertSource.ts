/**
 * The simplest ExpertSource: read each expert from the LMDB store on first use and keep it
 * resident. Unbounded; the budgeted cache manager replaces it when memory is short.
 */
import type { ExpertSource } from "../evaluator/ModelRunner.js";
import type { ExpertStore } from "../store/ExpertStore.js";

export class ResidentExpertSource implements ExpertSource {
  hits = 0;
  misses = 0;
  private readonly resident = new Map<string, Uint8Array>();

  constructor(private readonly store: ExpertStore) {}

  acquire(layer: number, expert: number): Uint8Array {
    const key = `${layer}:${expert}`;
    let w = this.resident.get(key);
    if (w) {
      this.hits++;
      return w;
    }
    this.misses++;
    w = this.store.getRecord(layer, expert);
    this.resident.set(key, w);
    return w;
  }

  get residentBytes(): number {
    let n = 0;
    for (const w of this.resident.values()) n += w.byteLength;
    return n;
  }
}
