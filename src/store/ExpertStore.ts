/**
 * The LMDB store of expert weights, keyed by (layer, expert). It knows nothing about the model
 * beyond the byte layout of one record: gate [F,H], up [F,H], down [H,F], each encoded as
 * store/expertEncoding.ts describes, concatenated.
 * LMDB commits are atomic, and the importer only publishes a model directory once every record
 * is in, so a reader never sees a half-written store.
 */
import { createHash } from "node:crypto";
import { open, type Database, type RootDatabase } from "lmdb";
import { MoeRunError, invariant } from "../errors.js";
import { encodeMatrix, recordBytes, type ExpertEncoding } from "./expertEncoding.js";

export interface ExpertLayout {
  hiddenSize: number; // H
  expertFfn: number; // F
  encoding: ExpertEncoding;
}

/** One expert's fp32 weights, as read from a checkpoint. */
export interface ExpertWeights {
  gate: Float32Array; // [F, H]
  up: Float32Array; // [F, H]
  down: Float32Array; // [H, F]
}

export function expertRecordBytes(l: ExpertLayout): number {
  return recordBytes(l.encoding, l.hiddenSize, l.expertFfn);
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

  /** Opens for reading; without OS readahead, so a load faults in only the record's own pages. */
  static openReadOnly(path: string, layout: ExpertLayout): ExpertStore {
    return new ExpertStore(path, layout, open({ path, encoding: "binary", compression: false, readOnly: true, noReadAhead: true } as Parameters<typeof open>[0] & { noReadAhead: boolean }) as RootDatabase<Buffer, [number, number]>);
  }

  /** Encodes one expert's matrices into a store record. */
  static pack(layout: ExpertLayout, w: ExpertWeights): Uint8Array {
    const { hiddenSize: H, expertFfn: F, encoding } = layout;
    invariant(w.gate.length === F * H && w.up.length === F * H && w.down.length === F * H, "expert matrices must be F*H each");
    const parts = [encodeMatrix(encoding, w.gate, F, H), encodeMatrix(encoding, w.up, F, H), encodeMatrix(encoding, w.down, H, F)];
    const out = new Uint8Array(expertRecordBytes(layout));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.byteLength;
    }
    return out;
  }

  /**
   * Writes one record in its own synchronous transaction: durable when this returns, and a failed
   * commit (disk full) throws here rather than surfacing later as an unhandled rejection.
   */
  put(layer: number, expert: number, record: Uint8Array): void {
    invariant(record.byteLength === expertRecordBytes(this.layout), `record for (${layer}, ${expert}) has the wrong size`);
    const db = this.handle();
    db.transactionSync(() => db.putSync([layer, expert], Buffer.from(record.buffer, record.byteOffset, record.byteLength)));
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
