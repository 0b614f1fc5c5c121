/** Least recently used: evict the resident expert whose last access is oldest. */
import type { ExpertKey, ReplacementPolicy } from "../types.js";

export class LruPolicy implements ReplacementPolicy {
  readonly name: string = "lru";
  readonly offline = false;
  /** Residents in recency order, least recent first (Map keeps insertion order). */
  protected readonly order = new Map<ExpertKey, number>();

  onAccess(key: ExpertKey, clock: number, hit: boolean): void {
    if (hit) this.touch(key, clock);
  }

  onInsert(key: ExpertKey, clock: number): void {
    this.touch(key, clock);
  }

  onRemove(key: ExpertKey): void {
    this.order.delete(key);
  }

  chooseVictim(_incoming: ExpertKey, evictable: (key: ExpertKey) => boolean): ExpertKey | undefined {
    for (const key of this.order.keys()) if (evictable(key)) return key;
    return undefined;
  }

  reset(): void {
    this.order.clear();
  }

  private touch(key: ExpertKey, clock: number): void {
    this.order.delete(key);
    this.order.set(key, clock);
  }
}
