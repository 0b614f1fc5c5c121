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
 * the loader's overhead is a thread hop; a second condition keeps prefetch off where the disk is
 * the bottleneck and compute too short to hide reads behind (prefetchPays below).
 */
import type { ExpertKernel } from "../kernels/expertKernels.js";
import type { ExpertStore } from "../store/ExpertStore.js";
import { releaseRecord } from "../store/RecordFile.js";
import { ExpertLoader } from "./ExpertLoader.js";

export interface PrefetchPayoff {
  /** Median seconds to read one record on the compute thread (what a demand miss stalls). */
  readSeconds: number;
  /** Median seconds for the same read through the loader, round trip included. */
  loaderSeconds: number;
  /** Median seconds of one layer's activated experts computed for one token (what a prefetch can hide behind). */
  layerComputeSeconds: number;
  pays: boolean;
  /** Why it does not pay, when it does not. */
  reason?: string;
}

/**
 * Share of prefetches that read an expert the layer then does not use. The cross-layer gate
 * measured 69% precision on the 2.2 GB synthetic model (31% wrong); real models route more
 * predictably, so this is a conservative figure.
 */
export const WRONG_PREDICTION_SHARE = 0.3;

/**
 * The rule, apart from the measurement: (1) a read must exceed four times the loader's overhead
 * (records in RAM: loading ahead only adds overhead); (2) a layer's compute must be able to hide
 * more read time than wrong predictions add. When the disk is the bottleneck (every byte read
 * is time), a prefetch saves at most the compute it overlaps, and each wrong one costs a whole
 * read that demand reads queue behind, besides evicting an expert that would have hit. Measured
 * on the 2.2 GB f16 synthetic model in half its size (decode, 2 cores, 17 MB experts, ~2 ms of
 * compute per layer vs ~13-27 ms a read): gate prefetch read 32% more records and decoded at
 * 0.82x of no prefetch.
 */
export function prefetchPays(readSeconds: number, loaderSeconds: number, layerComputeSeconds = Infinity, topK = 1): boolean {
  return prefetchVerdict(readSeconds, loaderSeconds, layerComputeSeconds, topK) === undefined;
}

function prefetchVerdict(readSeconds: number, loaderSeconds: number, layerComputeSeconds: number, topK: number): string | undefined {
  const us = (s: number) => `${Math.round(s * 1e6)} us`;
  if (!(readSeconds > 4 * Math.max(0, loaderSeconds - readSeconds))) {
    return `an expert reads in ${us(readSeconds)}, not over four times the loader's overhead (${us(loaderSeconds)} round trip), so loading ahead would only slow decode`;
  }
  if (!(layerComputeSeconds >= WRONG_PREDICTION_SHARE * topK * readSeconds)) {
    return (
      `reads are the bottleneck: a layer computes in ${us(layerComputeSeconds)} while its ${topK} experts read in ${us(topK * readSeconds)}, ` +
      `so wrong predictions (~${Math.round(WRONG_PREDICTION_SHARE * 100)}%) would cost more disk time than prefetch hides`
    );
  }
  return undefined;
}

/**
 * Measures reads (on this thread and through the loader) and, with `compute`, one layer's expert
 * compute for one token, then applies the rule.
 */
export async function measurePrefetchPayoff(
  store: ExpertStore,
  /** The layers that have experts (all, unless the model has dense layers). */
  layers: readonly number[],
  numExperts: number,
  compute?: { topK: number; hiddenSize: number; kernel: ExpertKernel<unknown> }
): Promise<PrefetchPayoff> {
  const loader = new ExpertLoader((l, e) => store.readRecord(l, e), 1);
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const reads: number[] = [];
  const loads: number[] = [];
  const computes: number[] = [];
  // Different experts each time, so neither side reads a record the other has just touched.
  const id = (i: number) => ({ layer: layers[Math.floor(i / numExperts) % layers.length]!, expert: i % numExperts });
  const release = (r: Uint8Array | undefined) => r && releaseRecord(r);
  release(await loader.load(id(0).layer, id(0).expert)); // warm-up
  const H = compute?.hiddenSize ?? 0;
  const x = new Float32Array(H).fill(0.01); // [1, H]
  const y = new Float32Array(H); // [1, H]
  for (let i = 1; i <= 9; i++) {
    const a = id(2 * i);
    let t0 = performance.now();
    const record = store.getRecord(a.layer, a.expert);
    reads.push((performance.now() - t0) / 1000);
    if (compute) {
      const resident = await compute.kernel.prepare(record, a.layer);
      t0 = performance.now();
      await compute.kernel.forward(resident, x, 1, y, a.layer);
      computes.push((performance.now() - t0) / 1000);
      compute.kernel.free(resident);
    }
    release(record);
    const b = id(2 * i + 1);
    t0 = performance.now();
    release(await loader.load(b.layer, b.expert));
    loads.push((performance.now() - t0) / 1000);
  }
  await loader.close();
  const readSeconds = median(reads);
  const loaderSeconds = median(loads);
  const layerComputeSeconds = compute ? median(computes) * compute.topK : Infinity;
  const reason = prefetchVerdict(readSeconds, loaderSeconds, layerComputeSeconds, compute?.topK ?? 1);
  return { readSeconds, loaderSeconds, layerComputeSeconds, pays: reason === undefined, reason };
}
