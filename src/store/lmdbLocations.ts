/**
 * Finds where each expert record lies in the LMDB data file written by lmdb-js, by reading the
 * B-tree with plain preads (fs.readSync at a position): no mmap and no lmdb-js at run time, so a
 * damaged or truncated file raises STORE_CORRUPT instead of SIGBUS/SIGSEGV. The caller can then
 * read each record with large O_DIRECT preads.
 *
 * Layout: lmdb-js 3.5's bundled LMDB (dependencies/lmdb/libraries/liblmdb/mdb.c, "mdb.master3",
 * MDB_DATA_VERSION 2) on a 64-bit little-endian host. All integers are little-endian; pgno_t,
 * txnid_t and mdb_size_t are 64-bit. open({ path: "<dir>/experts.mdb" }) has an extension, so
 * lmdb-js sets MDB_NOSUBDIR: the data file is exactly `path`, the lock file `path + "-lock"`.
 */
import * as fs from "node:fs";
import { readKey } from "ordered-binary";
import { MoeRunError } from "../errors.js";

export interface RecordLocation { layer: number; expert: number; offset: number; length: number }

// MDB_page_header: mh_p.p_pgno u64 @0, mh_txnid u64 @8, mh_pad u16 @16, mh_flags u16 @18,
// mh_pb: { pb_lower u16 @20, pb_upper u16 @22 } or pb_pages u32 @20 (overflow pages).
const PAGEHDRSZ = 24; // sizeof(MDB_page_header); PAGEBASE == PAGEHDRSZ, so NUMKEYS(p) = mp_lower >> 1
const H_PGNO = 0, H_FLAGS = 18, H_LOWER = 20, H_UPPER = 22, H_PAGES = 20;
const P_BRANCH = 0x01, P_LEAF = 0x02, P_OVERFLOW = 0x04, P_META = 0x08, P_LEAF2 = 0x20, P_SUBP = 0x40;
// MDB_meta, at PAGEHDRSZ in pages 0 and 1: mm_magic u32 @0, mm_version u32 @4, mm_address @8,
// mm_mapsize @16, mm_dbs[FREE_DBI] @24, mm_dbs[MAIN_DBI] @72, mm_last_pg @120, mm_txnid @128,
// boot_id @136; sizeof = 144. (With overlappingSync lmdb-js also keeps a "flushed" copy without
// magic at psize/2 + PAGEHDRSZ in page 0; like mdb_env_pick_meta without PREVSNAPSHOT, we ignore it.)
const M_MAGIC = 0, M_VERSION = 4, M_FREE_DB = 24, M_MAIN_DB = 72, M_TXNID = 128, META_SIZE = 144;
const MDB_MAGIC = 0xbeefc0de, MDB_DATA_VERSION = 2;
// MDB_db (48 bytes): md_pad u32 @0 (mm_psize for FREE_DBI), md_flags u16 @4 (mm_flags for
// FREE_DBI), md_depth u16 @6, branch/leaf/overflow page counts u64 @8/@16/@24, md_entries @32, md_root @40.
const D_PAD = 0, D_FLAGS = 4, D_DEPTH = 6, D_ROOT = 40;
const MDB_ENCRYPT = 0x2000, MDB_DUPSORT = 0x04, MDB_DUPFIXED = 0x10;
const P_INVALID = 0xffffffffffffffffn; // md_root of an empty tree
const CURSOR_STACK = 32; // mdb.c's maximum tree depth
// MDB_node: mn_lo u16 @0, mn_hi u16 @2 (data size on leaves; pgno bits 0-31 on branches),
// mn_flags u16 @4 (pgno bits 32-47 on branches), mn_ksize u16 @6, key then data @NODESIZE.
const NODESIZE = 8;
const F_BIGDATA = 0x01; // leaf data is an MDB_ovpage: op_pgno u64 @0, op_txnid u64 @8, op_pages u64 @16
const OVPAGE_SIZE = 24;

function corrupt(file: string, what: string): MoeRunError {
  return new MoeRunError("STORE_CORRUPT", `expert store ${file} is damaged: ${what}; re-import the model`);
}

/** pread of exactly `length` bytes (fewer only at end of file); returns the bytes actually read. */
function pread(fd: number, position: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return buf.subarray(0, done);
}

interface Meta { psize: number; txnid: bigint; root: bigint; depth: number; dbFlags: number }

/** Parses the meta page held in `page` (index 0 or 1); returns a reason string when invalid. */
function parseMeta(page: Buffer, index: number, expectPsize?: number): Meta | string {
  if (page.length < PAGEHDRSZ + META_SIZE) return `meta page ${index} is cut off`;
  const m = PAGEHDRSZ;
  if (page.readBigUInt64LE(H_PGNO) !== BigInt(index)) return `meta page ${index} has page number ${page.readBigUInt64LE(H_PGNO)}`;
  if (!(page.readUInt16LE(H_FLAGS) & P_META)) return `meta page ${index} lacks the P_META flag`;
  if (page.readUInt32LE(m + M_MAGIC) !== MDB_MAGIC) return `meta page ${index} has a bad magic number`;
  const version = page.readUInt32LE(m + M_VERSION) & 0xffff;
  if (version !== MDB_DATA_VERSION) return `meta page ${index} has data version ${version}, expected ${MDB_DATA_VERSION}`;
  const psize = page.readUInt32LE(m + M_FREE_DB + D_PAD); // mm_psize
  if (psize < 256 || psize > 0x10000 || (psize & (psize - 1)) !== 0) return `meta page ${index} has page size ${psize}`;
  if (expectPsize !== undefined && psize !== expectPsize) return `meta page ${index} has page size ${psize}, not ${expectPsize}`;
  if (page.readUInt16LE(m + M_FREE_DB + D_FLAGS) & MDB_ENCRYPT) return `meta page ${index} says the store is encrypted (unsupported)`;
  const db = m + M_MAIN_DB;
  return { psize, txnid: page.readBigUInt64LE(m + M_TXNID), root: page.readBigUInt64LE(db + D_ROOT), depth: page.readUInt16LE(db + D_DEPTH), dbFlags: page.readUInt16LE(db + D_FLAGS) };
}

/** Picks the valid meta page with the higher txnid, as mdb_env_pick_meta does. */
function pickMeta(file: string, fd: number, fileBytes: number): Meta {
  if (fileBytes < PAGEHDRSZ + META_SIZE) throw corrupt(file, `the data file is ${fileBytes} bytes, too short to hold a meta page`);
  const head = pread(fd, 0, Math.min(fileBytes, 0x10000 + PAGEHDRSZ + META_SIZE));
  const meta0 = parseMeta(head, 0);
  let meta1: Meta | string = "meta page 1 was not found";
  // Page 1 starts at psize. When meta 0 is unreadable its psize is unknown: try every legal size.
  const sizes = typeof meta0 === "object" ? [meta0.psize] : [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
  for (const ps of sizes) {
    const m = parseMeta(head.subarray(ps), 1, ps);
    if (typeof m === "object" || sizes.length === 1) meta1 = m;
    if (typeof m === "object") break;
  }
  if (typeof meta0 === "string" && typeof meta1 === "string") throw corrupt(file, `no valid meta page (${meta0}; ${meta1})`);
  if (typeof meta0 === "string") return meta1 as Meta;
  if (typeof meta1 === "string") return meta0;
  return meta1.txnid > meta0.txnid ? meta1 : meta0;
}

export function locateRecords(file: string): { pageSize: number; fileBytes: number; records: RecordLocation[]; txnId: number } {
  const fd = fs.openSync(file, "r");
  try {
    const fileBytes = fs.fstatSync(fd).size;
    const meta = pickMeta(file, fd, fileBytes);
    const psize = meta.psize;
    const filePages = Math.floor(fileBytes / psize);
    if (meta.txnid > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(file, `meta txnid ${meta.txnid} is absurd`);
    const txnId = Number(meta.txnid);
    const records: RecordLocation[] = [];
    const result = { pageSize: psize, fileBytes, records, txnId };
    if (meta.root === P_INVALID) return result; // empty main DB
    if (meta.dbFlags & (MDB_DUPSORT | MDB_DUPFIXED)) throw corrupt(file, `the main DB has flags 0x${meta.dbFlags.toString(16)} (dupsort), which moe-run never writes`);
    if (meta.depth < 1 || meta.depth > CURSOR_STACK) throw corrupt(file, `the main DB has depth ${meta.depth}`);
    // Page ranges in use ([first, end) page numbers), checked for overlaps at the end.
    const used: [number, number, string][] = [];
    const checkPgno = (pgno: bigint, what: string): number => {
      if (pgno < 2n || pgno >= BigInt(filePages)) throw corrupt(file, `${what} points to page ${pgno}, outside pages 2..${filePages - 1} of the file`);
      return Number(pgno);
    };
    const seen = new Set<number>();
    const walk = (pgno: number, level: number): void => {
      if (seen.has(pgno)) throw corrupt(file, `page ${pgno} is reached twice in the tree (a cycle or shared subtree)`);
      seen.add(pgno);
      const page = pread(fd, pgno * psize, psize);
      if (page.length !== psize) throw corrupt(file, `page ${pgno} is cut off`);
      used.push([pgno, pgno + 1, `tree page ${pgno}`]);
      if (page.readBigUInt64LE(H_PGNO) !== BigInt(pgno)) throw corrupt(file, `page ${pgno} (offset ${pgno * psize}) says it is page ${page.readBigUInt64LE(H_PGNO)}`);
      const flags = page.readUInt16LE(H_FLAGS);
      const isLeaf = level === meta.depth;
      const want = isLeaf ? P_LEAF : P_BRANCH;
      if ((flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP)) !== want) {
        throw corrupt(file, `page ${pgno} at depth ${level} of ${meta.depth} has flags 0x${flags.toString(16)}, expected a ${isLeaf ? "leaf" : "branch"} page`);
      }
      const lower = page.readUInt16LE(H_LOWER), upper = page.readUInt16LE(H_UPPER);
      if (lower & 1 || lower > upper || PAGEHDRSZ + upper > psize || lower === 0) throw corrupt(file, `page ${pgno} has bad bounds lower=${lower} upper=${upper}`);
      const nkeys = lower >> 1;
      for (let i = 0; i < nkeys; i++) {
        const node = PAGEHDRSZ + page.readUInt16LE(PAGEHDRSZ + 2 * i); // NODEPTR(p, i) = p + mp_ptrs[i] + PAGEBASE
        const where = `node ${i} of page ${pgno}`;
        if (node < PAGEHDRSZ + upper || node + NODESIZE > psize) throw corrupt(file, `${where} lies at bad offset ${node}`);
        const lo = page.readUInt16LE(node), hi = page.readUInt16LE(node + 2), nflags = page.readUInt16LE(node + 4), ksize = page.readUInt16LE(node + 6);
        const keyStart = node + NODESIZE, keyEnd = keyStart + ksize;
        if (keyEnd > psize) throw corrupt(file, `${where} has a key of ${ksize} bytes running past the page`);
        if (!isLeaf) { // NODEPGNO: mn_lo | mn_hi << 16 | mn_flags << 32
          walk(checkPgno(BigInt(lo) | (BigInt(hi) << 16n) | (BigInt(nflags) << 32n), where), level + 1);
          continue;
        }
        let key: unknown;
        try { key = readKey(page, keyStart, keyEnd); } catch { key = undefined; }
        if (!Array.isArray(key) || key.length !== 2 || !key.every((k) => Number.isSafeInteger(k) && k >= 0)) {
          throw corrupt(file, `${where} has key ${page.subarray(keyStart, keyEnd).toString("hex")}, which is not [layer, expert]`);
        }
        const [layer, expert] = key as [number, number];
        const prev = records[records.length - 1];
        if (prev && (prev.layer > layer || (prev.layer === layer && prev.expert >= expert))) {
          throw corrupt(file, `${where} key [${layer}, ${expert}] is out of order after [${prev.layer}, ${prev.expert}]`);
        }
        const length = lo + hi * 0x10000; // NODEDSZ: mn_lo | mn_hi << 16
        const dataStart = keyEnd;
        if (nflags & ~F_BIGDATA) throw corrupt(file, `${where} has node flags 0x${nflags.toString(16)} (sub-DB or duplicates)`);
        if (!(nflags & F_BIGDATA)) { // inline value inside the leaf page
          if (dataStart + length > psize) throw corrupt(file, `${where} has an inline value of ${length} bytes running past the page`);
          records.push({ layer, expert, offset: pgno * psize + dataStart, length });
          continue;
        }
        if (dataStart + OVPAGE_SIZE > psize) throw corrupt(file, `${where} has its overflow reference running past the page`);
        const ovWhat = `the value of [${layer}, ${expert}] (${where})`;
        const ovPgno = checkPgno(page.readBigUInt64LE(dataStart), ovWhat); // op_pgno
        const opPages = page.readBigUInt64LE(dataStart + 16); // op_pages
        const hdr = pread(fd, ovPgno * psize, PAGEHDRSZ);
        if (hdr.length !== PAGEHDRSZ) throw corrupt(file, `overflow page ${ovPgno} of ${ovWhat} is cut off`);
        if (hdr.readBigUInt64LE(H_PGNO) !== BigInt(ovPgno)) throw corrupt(file, `overflow page ${ovPgno} (offset ${ovPgno * psize}) of ${ovWhat} says it is page ${hdr.readBigUInt64LE(H_PGNO)}`);
        const ovFlags = hdr.readUInt16LE(H_FLAGS);
        if ((ovFlags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP)) !== P_OVERFLOW) throw corrupt(file, `overflow page ${ovPgno} of ${ovWhat} has flags 0x${ovFlags.toString(16)}, not P_OVERFLOW`);
        const pages = hdr.readUInt32LE(H_PAGES); // mp_pages
        if (BigInt(pages) !== opPages) throw corrupt(file, `overflow page ${ovPgno} of ${ovWhat} spans ${pages} pages but the leaf says ${opPages}`);
        if (pages * psize < PAGEHDRSZ + length) throw corrupt(file, `overflow page ${ovPgno} of ${ovWhat} spans ${pages} pages, too few for ${length} bytes`);
        const offset = ovPgno * psize + PAGEHDRSZ; // METADATA(omp)
        if (offset + length > fileBytes) throw corrupt(file, `${ovWhat} needs bytes ${offset}..${offset + length} but the file has ${fileBytes}`);
        used.push([ovPgno, ovPgno + Math.ceil((PAGEHDRSZ + length) / psize), `overflow page ${ovPgno} of [${layer}, ${expert}]`]);
        records.push({ layer, expert, offset, length });
      }
    };
    walk(checkPgno(meta.root, "the main DB root"), 1);
    // Each page is reachable once: a page with two owners means a tree or overflow pointer is corrupt.
    used.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < used.length; i++) {
      if (used[i]![0] < used[i - 1]![1]) throw corrupt(file, `${used[i]![2]} overlaps ${used[i - 1]![2]}`);
    }
    return result;
  } finally {
    fs.closeSync(fd);
  }
}
