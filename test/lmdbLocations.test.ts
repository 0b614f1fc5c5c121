import * as fs from "node:fs";
import * as path from "node:path";
import { open } from "lmdb";
import { afterAll, describe, expect, it } from "vitest";
import { MoeRunError } from "../src/errors.js";
import { locateRecords } from "../src/store/lmdbLocations.js";
import { tmpDir } from "./helpers.js";

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Deterministic bytes that differ per (layer, expert) and per position. */
function recordBytes(layer: number, expert: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let s = (layer * 1000 + expert + 1) * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    b[i] = s >>> 24;
  }
  return b;
}

/** Writes a store with lmdb-js the way the importer does and returns the data file's path. */
async function makeStore(layers: number, experts: number, size: (l: number, e: number) => number, rewriteFirst = false): Promise<{ file: string; data: Map<string, Buffer> }> {
  const dir = tmpDir("moe-run-lmdbloc-");
  dirs.push(dir);
  const file = path.join(dir, "experts.mdb");
  const db = open({ path: file, encoding: "binary", compression: false });
  const data = new Map<string, Buffer>();
  db.transactionSync(() => {
    for (let l = 0; l < layers; l++) {
      for (let e = 0; e < experts; e++) {
        const v = recordBytes(l, e, size(l, e));
        data.set(`${l}:${e}`, v);
        db.putSync([l, e], v);
      }
    }
  });
  // A second commit rewriting one record with the same bytes: meta page 1 then still describes
  // the complete first commit, whose pages LMDB has not reused.
  if (rewriteFirst) db.transactionSync(() => db.putSync([0, 0], data.get("0:0")!));
  await db.close();
  return { file, data };
}

function expectRecordsMatch(file: string, data: Map<string, Buffer>, layers: number, experts: number): void {
  const loc = locateRecords(file);
  expect(loc.fileBytes).toBe(fs.statSync(file).size);
  expect(loc.records.length).toBe(layers * experts);
  // Key order: layer-major, expert-minor.
  expect(loc.records.map((r) => [r.layer, r.expert])).toEqual(
    Array.from({ length: layers * experts }, (_, i) => [Math.floor(i / experts), i % experts])
  );
  const fd = fs.openSync(file, "r");
  try {
    for (const r of loc.records) {
      const want = data.get(`${r.layer}:${r.expert}`)!;
      expect(r.length).toBe(want.length);
      const got = Buffer.alloc(r.length);
      expect(fs.readSync(fd, got, 0, r.length, r.offset)).toBe(r.length);
      expect(got.equals(want), `record [${r.layer}, ${r.expert}] at ${r.offset}`).toBe(true);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function expectCorrupt(file: string, pattern?: RegExp): MoeRunError {
  let caught: unknown;
  try {
    locateRecords(file);
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MoeRunError);
  const err = caught as MoeRunError;
  expect(err.code).toBe("STORE_CORRUPT");
  expect(err.message).toMatch(/re-import the model/);
  if (pattern) expect(err.message).toMatch(pattern);
  return err;
}

const SIZES = [100_000, 3_000_000, 200, 150_000, 1_200_000];

describe("locateRecords", () => {
  it("finds every record (overflow and inline) in a store written by lmdb-js", async () => {
    const { file, data } = await makeStore(3, 5, (l, e) => SIZES[(l + e) % SIZES.length]!);
    expect(fs.existsSync(`${file}-lock`)).toBe(true); // noSubdir: data file is the path itself
    const loc = locateRecords(file);
    expect(loc.pageSize).toBeGreaterThanOrEqual(256);
    expect(loc.txnId).toBeGreaterThan(0);
    // The 200-byte record is inline in a leaf page; the others start just after an overflow page header.
    const small = loc.records.find((r) => r.length === 200)!;
    expect(small.offset % loc.pageSize).not.toBe(24);
    for (const r of loc.records.filter((x) => x.length > loc.pageSize)) expect(r.offset % loc.pageSize).toBe(24);
    expectRecordsMatch(file, data, 3, 5);
  });

  it("walks branch pages in a store with thousands of records", async () => {
    const { file, data } = await makeStore(40, 64, (l, e) => 5000 + ((l * 64 + e) % 7) * 100);
    expectRecordsMatch(file, data, 40, 64);
  });

  it("reports an empty store as having no records", async () => {
    const { file } = await makeStore(0, 0, () => 0);
    expect(locateRecords(file).records).toEqual([]);
  });

  it("rejects a truncated file", async () => {
    const { file } = await makeStore(3, 5, (l, e) => SIZES[(l + e) % SIZES.length]!);
    fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
    expectCorrupt(file);
  });

  it("rejects a zero-length file", () => {
    const dir = tmpDir("moe-run-lmdbloc-");
    dirs.push(dir);
    const file = path.join(dir, "experts.mdb");
    fs.writeFileSync(file, "");
    expectCorrupt(file, /too short/);
  });

  it("falls back to the other meta page when the newer one is damaged, and fails when both are", async () => {
    const { file, data } = await makeStore(3, 5, (l, e) => SIZES[(l + e) % SIZES.length]!, true);
    const buf = fs.readFileSync(file);
    const { pageSize, txnId } = locateRecords(file);
    const xor200 = (at: number) => {
      for (let i = at; i < at + 200; i++) buf[i]! ^= 0xff;
    };
    // Transaction N writes meta page N % 2. Damage the first 200 bytes of each meta page in turn:
    // the other one is used (with page 0 gone, the page size must be found by probing for page 1).
    for (const damaged of [0, 1]) {
      xor200(damaged * pageSize);
      fs.writeFileSync(file, buf);
      const loc = locateRecords(file);
      expect(loc.txnId % 2).toBe(1 - damaged);
      expect(loc.txnId).toBe(damaged === txnId % 2 ? txnId - 1 : txnId);
      expectRecordsMatch(file, data, 3, 5);
      xor200(damaged * pageSize); // undo
    }
    xor200(0);
    xor200(pageSize);
    fs.writeFileSync(file, buf);
    expectCorrupt(file, /no valid meta page/);
  });

  it("rejects a garbage overflow page header", async () => {
    const { file } = await makeStore(3, 5, (l, e) => SIZES[(l + e) % SIZES.length]!);
    const loc = locateRecords(file);
    const big = loc.records.find((r) => r.length > loc.pageSize)!;
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, Buffer.alloc(24, 0xa5), 0, 24, big.offset - 24);
    fs.closeSync(fd);
    expectCorrupt(file, /overflow page \d+/);
  });

  it("rejects garbage in a leaf page without crashing", async () => {
    const { file } = await makeStore(3, 5, (l, e) => SIZES[(l + e) % SIZES.length]!);
    const loc = locateRecords(file);
    const small = loc.records.find((r) => r.length === 200)!;
    const leafStart = small.offset - (small.offset % loc.pageSize);
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, recordBytes(9, 9, loc.pageSize - 24), 0, loc.pageSize - 24, leafStart + 24);
    fs.closeSync(fd);
    expectCorrupt(file);
  });
});
