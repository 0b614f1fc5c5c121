/**
 * CPU pool worker: computes an expert straight from the store's pages in host memory (no copy into
 * the device tier). Each worker opens the LMDB store itself; the OS shares the map.
 */
import { open, type RootDatabase } from "lmdb";
import { move } from "piscina";
import { loadNativeAddon } from "../kernels/nativeAddon.js";

export interface ExpertTask {
  store: string;
  encoding: number; // native encoding code
  hiddenSize: number; // H
  expertFfn: number; // F
  recordBytes: number;
  layer: number;
  expert: number;
  x: Float32Array; // [T, H]
  tokens: number;
  /** Also hand back a copy of the record (the device tier promotes it without a second read). */
  returnRecord?: boolean;
}

/** One transferred buffer: y fp32 [T, H], then the record's bytes when asked for. */
export type ExpertResult = ArrayBuffer;

const stores = new Map<string, RootDatabase<Buffer, [number, number]>>();

export default function compute(task: ExpertTask): ExpertResult {
  const { addon, reason } = loadNativeAddon();
  if (!addon) throw new Error(`the CPU expert pool needs the native kernels: ${reason}`);
  let db = stores.get(task.store);
  if (!db) {
    db = open({ path: task.store, encoding: "binary", compression: false, readOnly: true, noReadAhead: true } as Parameters<typeof open>[0]) as RootDatabase<Buffer, [number, number]>;
    stores.set(task.store, db);
  }
  // getBinaryFast: lmdb-js's reused buffer (valid until the next read on this thread, which is
  // after the kernel); the value's size is in db.lastSize.
  const fast = db.getBinaryFast([task.layer, task.expert]);
  const size = (db as unknown as { lastSize: number }).lastSize;
  const rec = fast && fast.subarray(0, size);
  if (!rec || rec.byteLength !== task.recordBytes) throw new Error(`expert (${task.layer}, ${task.expert}) is missing from ${task.store} or has the wrong size; re-import the model`);
  const yBytes = task.tokens * task.hiddenSize * 4;
  // The record is copied out of lmdb-js's reused read buffer; the whole result is moved, not cloned.
  const result = new ArrayBuffer(yBytes + (task.returnRecord ? rec.byteLength : 0));
  const out = new Float32Array(result, 0, task.tokens * task.hiddenSize);
  addon.expertForward(task.encoding, rec, task.hiddenSize, task.expertFfn, task.x, task.tokens, out, 1);
  if (task.returnRecord) new Uint8Array(result, yBytes).set(rec);
  return move(result) as ExpertResult;
}
