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
  // getBinaryFast: lmdb-js's reused read buffer (its value size in db.lastSize), copied once into
  // the buffer that is moved to the caller (getBinary would allocate and copy a second time).
  const fast = db.getBinaryFast([task.layer, task.expert]);
  const size = fast ? (db as unknown as { lastSize: number }).lastSize : 0;
  if (!fast || size !== task.bytes) {
    throw new Error(`expert (${task.layer}, ${task.expert}) in ${task.store} is missing or has ${size} bytes, expected ${task.bytes}; re-import the model`);
  }
  const out = new Uint8Array(task.bytes);
  out.set(fast.subarray(0, size));
  return move(out.buffer) as ArrayBuffer;
}
