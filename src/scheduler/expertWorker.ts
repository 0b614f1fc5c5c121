/**
 * CPU pool worker: reads an expert's record from the store's data file (direct reads, as the
 * main thread does; nothing left in the page cache) and computes it. Each worker opens the file
 * once.
 */
import { move } from "piscina";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import { RecordFile, releaseRecord } from "../store/RecordFile.js";

export interface ExpertTask {
  store: string;
  encoding: number; // native code of the layer's record (store/recordEncodings.ts nativeRecordCode)
  hiddenSize: number; // H
  expertFfn: number; // F
  recordBytes: number;
  layer: number;
  expert: number;
  /** Where the record lies in the data file (ExpertStore.span). */
  offset: number;
  x: Float32Array; // [T, H]
  tokens: number;
  /** Also hand back a copy of the record (the device tier promotes it without a second read). */
  returnRecord?: boolean;
  /** The expert's activation and biases (kernels/expertActivation.ts nativeExpertSpec); absent: silu, no biases. */
  spec?: number[];
}

/** One transferred buffer: y fp32 [T, H], then the record's bytes when asked for. */
export type ExpertResult = ArrayBuffer;

const files = new Map<string, RecordFile>();

export default function compute(task: ExpertTask): ExpertResult {
  const { addon, reason } = loadNativeAddon();
  if (!addon) throw new Error(`the CPU expert pool needs the native kernels: ${reason}`);
  let file = files.get(task.store);
  if (!file) {
    file = new RecordFile(task.store);
    files.set(task.store, file);
  }
  const rec = file.read(task.offset, task.recordBytes);
  const yBytes = task.tokens * task.hiddenSize * 4;
  // The whole result is moved, not cloned.
  const result = new ArrayBuffer(yBytes + (task.returnRecord ? rec.byteLength : 0));
  const out = new Float32Array(result, 0, task.tokens * task.hiddenSize);
  addon.expertForward(task.encoding, rec, task.hiddenSize, task.expertFfn, task.x, task.tokens, out, 1, task.spec ? Float64Array.from(task.spec) : undefined);
  if (task.returnRecord) new Uint8Array(result, yBytes).set(rec);
  releaseRecord(rec); // freed now: a worker's GC runs rarely
  return move(result) as ExpertResult;
}
