/**
 * Whether prefetching pays on this machine for this model: a prefetch saves the compute thread
 * the time a demand read would stall it, and costs the loader's round trip (queueing, the
 * worker's read and message, the transfer), while the loader's thread competes with compute for
 * the cores. Measured on 2 cores with the store in RAM, prefetch slowed decode both for small
 * experts (trained model, 221 KB: 175 -> 98 tok/s) and for large ones (4.3 MB f16: 30 -> 12
 * tok/s, demand reads waiting on slower loads). So the default ("auto") loads ahead only when a
 * read costs more than four times the loader's overhead (cold pages on disk), and otherwise keeps
 * scoring the predictor without loading. Records are now read from the store file with direct
 * reads on libuv's threads (no worker, no page cache), so a read costs what the disk does and
 * the loader's overhead is a thread hop: the rule turns prefetch on wherever the store is on disk.
 */
import type { ExpertStore } from "../store/ExpertStore.js";
import { releaseRecord } from "../store/RecordFile.js";
import { ExpertLoader } from "./ExpertLoader.js";

export interface PrefetchPayoff {
  /** Median seconds to read one record on the compute thread (what a demand miss stalls). */
  readSeconds: number;
  /** Median seconds for the same read through the loader worker, round trip included. */
  loaderSeconds: number;
  pays: boolean;
}

/** The rule, apart from the measurement: the read must exceed four times the loader's overhead. */
export function prefetchPays(readSeconds: number, loaderSeconds: number): boolean {
  return readSeconds > 4 * Math.max(0, loaderSeconds - readSeconds);
}

export async function measurePrefetchPayoff(store: ExpertStore, numLayers: number, numExperts: number): Promise<PrefetchPayoff> {
  const loader = new ExpertLoader((l, e) => store.readRecord(l, e), 1);
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const reads: number[] = [];
  const loads: number[] = [];
  // Different experts each time, so neither side reads a record the other has just touched.
  const id = (i: number) => ({ layer: Math.floor(i / numExperts) % numLayers, expert: i % numExperts });
  const release = (r: Uint8Array | undefined) => r && releaseRecord(r);
  release(await loader.load(id(0).layer, id(0).expert)); // warm-up
  for (let i = 1; i <= 9; i++) {
    const a = id(2 * i);
    let t0 = performance.now();
    release(store.getRecord(a.layer, a.expert));
    reads.push((performance.now() - t0) / 1000);
    const b = id(2 * i + 1);
    t0 = performance.now();
    release(await loader.load(b.layer, b.expert));
    loads.push((performance.now() - t0) / 1000);
  }
  const readSeconds = median(reads);
  const loaderSeconds = median(loads);
  return { readSeconds, loaderSeconds, pays: prefetchPays(readSeconds, loaderSeconds) };
}
