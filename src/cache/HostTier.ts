/**
 * The host tier: expert records in RAM, under their own byte budget, with a replacement policy of
 * the same family as the device tier, evicting one expert at a time. A miss reads the record from
 * the store's data file with direct reads (ExpertStore.readRecord): the page cache holds no second
 * copy, so the budget is the whole of what the host tier costs.
 *
 * When the device tier's form of an expert IS its record (the CPU kernels), the two tiers would
 * hold the same bytes: the memory plan then gives the host tier nothing, and the device tier is
 * the one resident copy. With a GPU provider the host tier keeps records that were evicted from
 * GPU memory, so that they come back at host-to-GPU speed instead of the disk's.
 */
import type { ExpertStore } from "../store/ExpertStore.js";
import { releaseRecord, retainRecord } from "../store/RecordFile.js";
import { ExpertCache } from "./ExpertCache.js";
import { parsePolicyName, type PolicyName } from "./policies/index.js";
import type { ExpertId, ReplacementPolicy } from "./types.js";

export interface HostTierStats {
  /** The budget in bytes (0 = no host tier: records go straight from the disk to the device tier). */
  budgetBytes: number;
  /** Always true: the tier's bytes are its own records, counted exactly. Kept for report consumers. */
  enforced: boolean;
  note?: string;
  /** Record bytes held now and at most. */
  residentBytes: number;
  residentBytesMax: number;
  hits: number;
  misses: number;
  evictions: number;
  /** Records read from the store file, their bytes, and the seconds those reads took (summed over reads in flight). */
  reads: number;
  bytesRead: number;
  readSeconds: number;
  /** Reads bypass the page cache (O_DIRECT); false on filesystems without it (pages dropped after each read). */
  directReads: boolean;
}

export class HostTier {
  private readonly cache: ExpertCache<Uint8Array> | undefined;
  private reads = 0;
  private bytesRead = 0;
  private readSeconds = 0;

  constructor(
    private readonly store: ExpertStore,
    private readonly budgetBytes: number,
    policy: PolicyName | ReplacementPolicy,
    numLayers: number
  ) {
    if (budgetBytes > 0) {
      this.cache = new ExpertCache<Uint8Array>({
        capacityBytes: Number.isFinite(budgetBytes) ? budgetBytes : Number.MAX_SAFE_INTEGER,
        policy: typeof policy === "string" ? parsePolicyName(policy) : policy,
        policyOptions: { numLayers },
        onEvict: (_id, record) => releaseRecord(record), // one record at a time, its memory freed now
      });
    }
  }

  /**
   * The record of `id`: from this tier, or read from the store (and kept when the policy admits
   * it). The caller owns one reference (releaseRecord when done, or hand it to a tier).
   */
  async record(id: ExpertId): Promise<Uint8Array> {
    const held = this.cache?.lookup(id);
    if (held) {
      retainRecord(held);
      return held;
    }
    const t0 = performance.now();
    const record = await this.store.readRecord(id.layer, id.expert);
    this.readSeconds += (performance.now() - t0) / 1000;
    this.reads++;
    this.bytesRead += record.byteLength;
    if (this.cache && !this.cache.has(id) && record.byteLength <= this.cache.capacityBytes) {
      try {
        if (this.cache.insert(id, record, record.byteLength).admitted) retainRecord(record);
      } catch {
        // CacheCapacityError: nothing evictable right now; the record is used once, not kept.
      }
    }
    return record;
  }

  /** Counts a record read by someone else (the CPU pool reads records itself). */
  countRead(bytes: number): void {
    this.reads++;
    this.bytesRead += bytes;
  }

  clear(): void {
    this.cache?.clear();
  }

  stats(): HostTierStats {
    const s = this.cache?.stats();
    return {
      budgetBytes: this.budgetBytes,
      enforced: true,
      note: this.cache ? undefined : "no host tier: records are read from the store straight into the device tier",
      residentBytes: s?.residentBytes ?? 0,
      residentBytesMax: s?.residentBytesMax ?? 0,
      hits: s?.hits ?? 0,
      misses: s?.misses ?? this.reads,
      evictions: s?.evictions ?? 0,
      reads: this.reads,
      bytesRead: this.bytesRead,
      readSeconds: this.readSeconds,
      directReads: this.store.directReads,
    };
  }
}
