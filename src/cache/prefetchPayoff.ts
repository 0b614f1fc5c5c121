/**
 * Whether prefetching pays on this machine for this model: a prefetch saves the compute thread
 * the time a demand read would stall it, and costs it the loader's round trip (queueing, the
 * worker's message, the transfer). When a record reads from memory in less time than twice that
 * overhead (small experts in RAM: measured ~20 us read vs ~60 us round trip), prefetch only slows
 * decode (measured on the trained model: 175 -> 98 tok/s), so the default ("auto") turns it off
 * and keeps scoring the predictor.
 */
import type { ExpertStore } from "../store/ExpertStore.js";
import type { ExpertLoader } from "./ExpertLoader.js";

export interface PrefetchPayoff {
  /** Median seconds to read one record on the compute thread (what a demand miss stalls). */
  readSeconds: number;
  /** Median seconds for the same read through the loader worker, round trip included. */
  loaderSeconds: number;
  pays: boolean;
}

/** The rule, apart from the measurement: the read must exceed twice the loader's overhead. */
export function prefetchPays(readSeconds: number, loaderSeconds: number): boolean {
  return readSeconds > 2 * Math.max(0, loaderSeconds - readSeconds);
}

export async function measurePrefetchPayoff(store: ExpertStore, loader: ExpertLoader, recordBytes: number, numLayers: number, numExperts: number): Promise<PrefetchPayoff> {
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const reads: number[] = [];
  const loads: number[] = [];
  // Different experts each time, so neither side reads a record the other has just touched.
  const id = (i: number) => ({ layer: Math.floor(i / numExperts) % numLayers, expert: i % numExperts });
  await loader.load(id(0).layer, id(0).expert, recordBytes); // starts the worker and opens the store there
  for (let i = 1; i <= 7; i++) {
    const a = id(2 * i);
    let t0 = performance.now();
    store.getRecord(a.layer, a.expert);
    reads.push((performance.now() - t0) / 1000);
    const b = id(2 * i + 1);
    t0 = performance.now();
    await loader.load(b.layer, b.expert, recordBytes);
    loads.push((performance.now() - t0) / 1000);
  }
  const readSeconds = median(reads);
  const loaderSeconds = median(loads);
  return { readSeconds, loaderSeconds, pays: prefetchPays(readSeconds, loaderSeconds) };
}
