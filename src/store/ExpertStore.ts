/**
 * The LMDB store of expert weights, keyed by (layer, expert). It knows nothing about the model
 * beyond the byte layout of one record: gate [F,H], up [F,H], down [H,F], each encoded as
 * store/expertEncoding.ts describes, concatenated.
 * LMDB commits are atomic, and the importer only publishes a model directory once every record
 * is in, so a reader never sees a half-written store.
 *
 * Writing goes through lmdb-js. Reading does not: at open, where each record lies in the data file
 * is resolved once by walking LMDB's B-tree with plain reads (store/lmdbLocations.ts, which checks
 * every page it follows), and records are then read with large direct reads (RecordFile). So a
 * damaged file is an error, never a SIGBUS, and no record is also held as mapped file pages.
 */
import { createHash } from "node:crypto";
import type { Database, RootDatabase } from "lmdb";
import { lmdbModule } from "../util/lazyLmdb.js";
import { expertKey } from "../cache/types.js";
import { MoeRunError, invariant } from "../errors.js";
import { encodeExpertRecord, type ExpertBiases } from "./expertEncoding.js";
import { encodingsOf, largestRecordBytes, layerRecordBytes, type ExpertRecordShape } from "./recordEncodings.js";
import { locateRecords } from "./lmdbLocations.js";
import { RecordFile } from "./RecordFile.js";

/** The records' byte form: H, F, the encoding (per layer where a GGUF file mixed types), biases. */
export type ExpertLayout = ExpertRecordShape;

/** One expert's fp32 weights, as read from a checkpoint. */
export interface ExpertWeights {
  gate: Float32Array; // [F, H]
  up: Float32Array; // [F, H]
  down: Float32Array; // [H, F]
  biases?: ExpertBiases;
}

/** Bytes of the largest record (of every record unless layers differ in encoding: store/recordEncodings.ts). */
export function expertRecordBytes(l: ExpertLayout): number {
  return largestRecordBytes(l);
}

/** A short content checksum for one expert record, kept in the manifest. */
export function expertChecksum(record: Uint8Array): string {
  return createHash("sha256").update(record).digest("hex").slice(0, 16);
}

/** Where one record lies in the store's data file. */
export interface RecordSpan {
  offset: number;
  length: number;
}

export class ExpertStore {
  readonly path: string;
  readonly layout: ExpertLayout;
  /** Writer (import) only. */
  private db: RootDatabase<Buffer, [number, number]> | undefined;
  /** Reader only: the data file and each record's span in it, by expertKey(layer, expert). */
  private file: RecordFile | undefined;
  private readonly spans = new Map<number, RecordSpan>();

  private constructor(path: string, layout: ExpertLayout, db: RootDatabase<Buffer, [number, number]> | undefined) {
    this.path = path;
    this.layout = layout;
    this.db = db;
  }

  static create(path: string, layout: ExpertLayout): ExpertStore {
    return new ExpertStore(path, layout, lmdbModule().open({ path, encoding: "binary", compression: false }) as RootDatabase<Buffer, [number, number]>);
  }

  /**
   * Opens for reading: resolves every record's place in the data file and checks it (size, pages,
   * inside the file); with `experts`, also that every expert of those layers is there.
   */
  static openReadOnly(path: string, layout: ExpertLayout, experts?: { layers: readonly number[]; numExperts: number }): ExpertStore {
    const store = new ExpertStore(path, layout, undefined);
    const located = locateRecords(path);
    for (const r of located.records) {
      if (r.layer > 0xffff || r.expert > 0xffff) {
        throw new MoeRunError("STORE_CORRUPT", `expert store ${path} holds a record keyed (${r.layer}, ${r.expert}), beyond any model's layers and experts; re-import the model`);
      }
      const expected = layerRecordBytes(layout, r.layer);
      if (r.length !== expected) {
        throw new MoeRunError("STORE_CORRUPT", `expert (${r.layer}, ${r.expert}) in ${path} has ${r.length} bytes, expected ${expected}; re-import the model`);
      }
      store.spans.set(expertKey(r.layer, r.expert), { offset: r.offset, length: r.length });
    }
    if (experts) {
      for (const l of experts.layers) {
        for (let e = 0; e < experts.numExperts; e++) {
          if (!store.spans.has(expertKey(l, e))) throw new MoeRunError("STORE_CORRUPT", `expert store ${path} lacks expert (${l}, ${e}); re-import the model`);
        }
      }
    }
    store.file = new RecordFile(path);
    return store;
  }

  /** Where (layer, expert)'s record lies in the data file (for readers on other threads). */
  span(layer: number, expert: number): RecordSpan {
    const s = this.spans.get(expertKey(layer, expert));
    if (!s) throw new MoeRunError("STORE_CORRUPT", `expert store ${this.path} lacks expert (${layer}, ${expert}); re-import the model`);
    return s;
  }

  /** The data file's reads bypass the page cache. */
  get directReads(): boolean {
    return this.reader().direct;
  }

  /** Encodes one expert's matrices into a store record (of `layer`, which a mixed layout needs). */
  static pack(layout: ExpertLayout, w: ExpertWeights, layer?: number): Uint8Array {
    invariant(!layout.layerEncodings || layer !== undefined, "packing a record of a model whose layers differ in encoding needs the layer");
    const { hiddenSize: H, expertFfn: F } = layout;
    invariant(w.gate.length === F * H && w.up.length === F * H && w.down.length === F * H, "expert matrices must be F*H each");
    invariant((w.biases !== undefined) === (layout.expertBias ?? false), "expert biases must be given exactly when the layout has them");
    const out = encodeExpertRecord(encodingsOf(layout, layer ?? 0), H, F, w, w.biases);
    invariant(out.byteLength === layerRecordBytes(layout, layer ?? 0), "encoded expert record has the layout's size");
    return out;
  }

  /**
   * Writes one record in its own synchronous transaction: durable when this returns, and a failed
   * commit (disk full) throws here rather than surfacing later as an unhandled rejection.
   */
  put(layer: number, expert: number, record: Uint8Array): void {
    invariant(record.byteLength === layerRecordBytes(this.layout, layer), `record for (${layer}, ${expert}) has the wrong size`);
    const db = this.handle();
    db.transactionSync(() => db.putSync([layer, expert], Buffer.from(record.buffer, record.byteOffset, record.byteLength)));
  }

  /** The raw record of (layer, expert), read now on this thread; memory of its own the caller owns. */
  getRecord(layer: number, expert: number): Uint8Array {
    const s = this.span(layer, expert);
    return this.reader().read(s.offset, s.length);
  }

  /** getRecord() off this thread; several reads may be in flight. */
  readRecord(layer: number, expert: number): Promise<Uint8Array> {
    const s = this.span(layer, expert);
    return this.reader().readAsync(s.offset, s.length);
  }

  close(): void {
    const db = this.db;
    this.db = undefined;
    if (db) void db.close();
    this.file?.close();
    this.file = undefined;
  }

  private reader(): RecordFile {
    if (!this.file) throw new MoeRunError("DISPOSED", `expert store ${this.path} is closed or not opened for reading`);
    return this.file;
  }

  private handle(): Database<Buffer, [number, number]> {
    if (!this.db) throw new MoeRunError("DISPOSED", `expert store ${this.path} is closed`);
    return this.db;
  }
}
