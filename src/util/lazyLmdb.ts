/**
 * lmdb-js, loaded on first use: importing it costs ~13 MiB of RSS (its native binding and shared
 * buffers), which a run that only reads experts (direct reads, store/RecordFile.ts) never needs.
 * Writers (the importer, the affinity predictor's statistics) load it when they open a database.
 */
import { createRequire } from "node:module";

let lmdb: typeof import("lmdb") | undefined;

export function lmdbModule(): typeof import("lmdb") {
  lmdb ??= createRequire(import.meta.url)("lmdb") as typeof import("lmdb");
  return lmdb;
}
