/**
 * Worker side of ExpertLoader: reads expert records from the LMDB store off the main thread and
 * hands them back as transferred buffers. Each worker opens the store once (the OS shares the
 * map between threads).
 */
import { open, type RootDatabase } from "lmdb";
import { move } from "piscina";

const stores = new Map<string, RootDatabase<Buffer, [number, number]>>();

export interface LoadTask {
  store: string;
  layer: number;
  expert: number;
  bytes: number;
}

export default function load(task: LoadTask): ArrayBuffer {
  let db = stores.get(task.store);
  if (!db) {
    db = open({ path: task.store, encoding: "binary", compression: false, readOnly: true, noReadAhead: true } as Parameters<typeof open>[0]) as RootDatabase<Buffer, [number, number]>;
    stores.set(task.store, db);
  }
  const buf = db.getBinary([task.layer, task.expert]);
  if (!buf || buf.byteLength !== task.bytes) {
    throw new Error(`expert (${task.layer}, ${task.expert}) in ${task.store} is missing or has ${buf?.byteLength ?? 0} bytes, expected ${task.bytes}; re-import the model`);
  }
  const out = new Uint8Array(task.bytes);
  out.set(buf);
  return move(out.buffer) as ArrayBuffer;
}
