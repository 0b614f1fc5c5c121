/**
 * The LMDB store of expert weights, keyed by (layer, expert). It knows nothing about the model
 * beyond the byte layout of one record: gate [F,H], up [F,H], down [H,F], fp32, concatenated.
 * LMDB commits are atomic, and the importer only publishes a model directory once every record
 * is in, so a reader never sees a half-written store.
 */
import { createHash } from "node:crypto";
import { open, type Database, type RootDatabase } from "lmdb";
import { MoeRunError, invariant } from "../errors.js";

export interface ExpertLayout {
  hiddenSize: number; // H
  expertFfn: number; // F
}

export interface ExpertWeights {
  gate: Float32Array; // [F, H]
  up: Float32Array; // [F, H]
  down: Float32Array; // [H, F]
}

export function expertRecordBytes(l: ExpertLayout): number {
  return 3 * l.expertFfn * l.hiddenSize * 4;
}

/** A short content checksum for one expert record, kept in the manifest. */
export function expertChecksum(record: Uint8Array): string {
  return createHash("sha256").update(record).digest("hex").slice(0, 16);
}

export class ExpertStore {
  readonly path: string;
  readonly layout: ExpertLayout;
  private db: RootDatabase<Buffer, [number, number]> | undefined;

  private constructor(path: string, layout: ExpertLayout, db: RootDatabase<Buffer, [number, number]>) {
    this.path = path;
    this.layout = layout;
    this.db = db;
  }

  static create(path: string, layout: ExpertLayout): ExpertStore {
    return new ExpertStore(path, layout, open({ path, encoding: "binary", compression: false }) as RootDatabase<Buffer, [number, number]>);
  }

  static openReadOnly(path: string, layout: ExpertLayout): ExpertStore {
    return new ExpertStore(path, layout, open({ path, encoding: "binary", compression: false, readOnly: true }) as RootDatabase<Buffer, [number, number]>);
  }

  /** Packs one expert's matrices into a store record. */
  static pack(layout: ExpertLayout, w: ExpertWeights): Uint8Array {
    const n = layout.expertFfn * layout.hiddenSize;
    invariant(w.gate.length === n && w.up.length === n && w.down.length === n, "expert matrices must be F*H each");
    const out = new Float32Array(3 * n);
    out.set(w.gate, 0);
    out.set(w.up, n);
    out.set(w.down, 2 * n);
    return new Uint8Array(out.buffer);
  }

  /** Queues a record; durable once `flush()` resolves. */
  put(layer: number, expert: number, record: Uint8Array): void {
    invariant(record.byteLength === expertRecordBytes(this.layout), `record for (${layer}, ${expert}) has the wrong size`);
    void this.handle().put([layer, expert], Buffer.from(record.buffer, record.byteOffset, record.byteLength));
  }

  async flush(): Promise<void> {
    await this.handle().flushed;
  }

  /** The raw record of (layer, expert), checked for size; a fresh copy the caller owns. */
  getRecord(layer: number, expert: number): Uint8Array {
    const buf = this.handle().getBinary([layer, expert]);
    const expected = expertRecordBytes(this.layout);
    if (!buf) throw new MoeRunError("STORE_CORRUPT", `expert store ${this.path} lacks expert (${layer}, ${expert}); re-import the model`);
    if (buf.byteLength !== expected) {
      throw new MoeRunError("STORE_CORRUPT", `expert (${layer}, ${expert}) in ${this.path} has ${buf.byteLength} bytes, expected ${expected}; re-import the model`);
    }
    return buf.byteOffset % 4 === 0 ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : Uint8Array.from(buf);
  }

  /** Views of one expert's matrices over a fresh record. */
  get(layer: number, expert: number): ExpertWeights {
    const rec = this.getRecord(layer, expert);
    const n = this.layout.expertFfn * this.layout.hiddenSize;
    const all = new Float32Array(rec.buffer, rec.byteOffset, 3 * n);
    return { gate: all.subarray(0, n), up: all.subarray(n, 2 * n), down: all.subarray(2 * n, 3 * n) };
  }

  close(): void {
    const db = this.db;
    this.db = undefined;
    if (db) void db.close();
  }

  private handle(): Database<Buffer, [number, number]> {
    if (!this.db) throw new MoeRunError("DISPOSED", `expert store ${this.path} is closed`);
    return this.db;
  }
}
