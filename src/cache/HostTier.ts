/**
 * The host tier: the expert store's pages in the OS page cache. Its budget is kept with the
 * native addon: mincore measures how much of the store file is resident, and when the next load
 * could push it past the budget, the file's pages are dropped (madvise DONTNEED on LMDB's own
 * mapping, then posix_fadvise DONTNEED). The tracked figure is an upper bound: it adds every
 * loaded record's size, resident before or not, and is re-measured after each drop.
 * Without the addon the tier only reports that it cannot enforce the budget.
 */
import * as fs from "node:fs";
import { loadNativeAddon, type NativeAddon } from "../kernels/nativeAddon.js";

const PAGE = 4096;
/** Branch and leaf pages a lookup may touch besides the value's overflow pages. */
const TREE_PAGES = 4;

export interface HostTierStats {
  /** The budget in bytes; Infinity when none was set. */
  budgetBytes: number;
  enforced: boolean;
  /** Why the budget is not enforced, when it is not. */
  note?: string;
  /** Upper bound of the store's resident bytes, now and at most (sampled at loads and drops). */
  residentBytes: number;
  residentBytesMax: number;
  /** Times the store's pages were dropped to keep the budget. */
  drops: number;
  /** Bytes read from the store (copied into the device tier or computed from). */
  bytesRead: number;
}

/** Address ranges where this process maps `file` (LMDB maps its data file once, read-only). */
function mappingsOf(file: string): { start: number; length: number }[] {
  const real = fs.realpathSync(file);
  const out: { start: number; length: number }[] = [];
  for (const line of fs.readFileSync("/proc/self/maps", "utf8").split("\n")) {
    if (!line.endsWith(real)) continue;
    const [range] = line.split(" ");
    const [a, b] = range!.split("-").map((h) => parseInt(h, 16));
    out.push({ start: a!, length: b! - a! });
  }
  return out;
}

export class HostTier {
  private readonly addon: NativeAddon | undefined;
  private readonly stats_: HostTierStats;

  constructor(
    private readonly storeFile: string,
    budgetBytes: number,
    private readonly log: (line: string) => void = () => {}
  ) {
    const { addon, reason } = loadNativeAddon();
    const wanted = Number.isFinite(budgetBytes);
    this.addon = wanted ? addon : undefined;
    this.stats_ = { budgetBytes, enforced: wanted && addon !== undefined, residentBytes: 0, residentBytesMax: 0, drops: 0, bytesRead: 0 };
    if (wanted && !addon) {
      this.stats_.note = `host budget not enforced: native addon ${reason}`;
      this.log(`moe-run: ${this.stats_.note}`);
    }
    if (this.addon) {
      // A fresh import leaves the whole store in the page cache: start within the budget.
      if ((this.measure() ?? 0) > budgetBytes) this.drop();
      this.stats_.drops = 0;
      this.stats_.residentBytesMax = this.stats_.residentBytes;
    }
  }

  /** Call before reading `bytes` of a record from the store. */
  beforeRead(bytes: number): void {
    const s = this.stats_;
    s.bytesRead += bytes;
    if (!this.addon) return;
    // Pages the read can fault in: the record's pages, one more for misalignment, and the
    // B-tree pages on the way to it (the store is opened without readahead).
    const pages = Math.ceil(bytes / PAGE) + 1 + TREE_PAGES;
    const cost = pages * PAGE;
    if (s.residentBytes + cost > s.budgetBytes) this.drop();
    s.residentBytes += cost;
    s.residentBytesMax = Math.max(s.residentBytesMax, s.residentBytes);
  }

  /** Resident bytes of the store file right now (mincore), when measurable. */
  measure(): number | undefined {
    if (!this.addon) return undefined;
    const r = this.addon.fileResidency(this.storeFile).residentBytes;
    this.stats_.residentBytes = r;
    this.stats_.residentBytesMax = Math.max(this.stats_.residentBytesMax, r);
    return r;
  }

  private drop(): void {
    const addon = this.addon!;
    const maps = mappingsOf(this.storeFile);
    if (maps.length === 0) addon.dropFileCache(this.storeFile, 0, 0);
    for (const m of maps) addon.dropFileCache(this.storeFile, m.start, m.length);
    this.stats_.drops++;
    this.measure();
  }

  stats(): HostTierStats {
    return { ...this.stats_ };
  }
}
