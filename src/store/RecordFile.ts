/**
 * Reads byte ranges of the expert store's data file the way the disk is fastest: large aligned
 * reads, several in flight, no second copy left in the page cache (O_DIRECT, or a buffered read
 * whose pages are dropped afterwards). Not through LMDB's memory map: its 4 KiB page faults cost
 * ~15x what the disk allows, a damaged file kills the process by SIGBUS, and mapped pages would
 * hold every expert byte a second time. Usable from worker threads (each opens its own).
 * Without the native addon, plain fs reads (page cache used).
 */
import * as fs from "node:fs";
import { MoeRunError } from "../errors.js";
import { loadNativeAddon, type NativeAddon } from "../kernels/nativeAddon.js";

/**
 * Threads per record read, each issuing 1 MiB preads: this disk reaches its ceiling (~1.3 GB/s)
 * with 1 MiB reads or with 4+ in flight (design.md, fio); several records in flight add more.
 * MOE_RUN_READ_PARALLEL overrides it (1-64) for measuring other disks; 2, 8 and 16 measured no
 * better here (0.5-0.8 GB/s either way, within this virtual disk's noise).
 */
export const READ_PARALLEL = readParallel();

function readParallel(): number {
  const v = Number(process.env.MOE_RUN_READ_PARALLEL);
  return Number.isInteger(v) && v >= 1 && v <= 64 ? v : 4;
}

/**
 * Records are big (MBs) and churn (every miss reads one, every eviction drops one): left to the
 * GC, dropped records pile up until a collection and a process under a memory limit overshoots
 * it. So a record read here has an owner count: the reader owns it (1); a tier that keeps it
 * retains it; each owner releases it when done, and the last release frees its memory at once
 * (the buffer is detached: a use after that sees an empty array, never freed memory). Buffers not
 * made here (the JS fallback, copies) are left to the GC.
 */
const owners = new WeakMap<ArrayBufferLike, number>();

function adopt(record: Uint8Array): Uint8Array {
  owners.set(record.buffer, 1);
  return record;
}

/** One more owner of `record` (no-op for buffers not made by RecordFile). */
export function retainRecord(record: Uint8Array): void {
  const n = owners.get(record.buffer);
  if (n !== undefined) owners.set(record.buffer, n + 1);
}

/** One owner fewer; the last frees the memory now. */
export function releaseRecord(record: Uint8Array): void {
  const n = owners.get(record.buffer);
  if (n === undefined) return;
  if (n > 1) {
    owners.set(record.buffer, n - 1);
    return;
  }
  owners.delete(record.buffer);
  loadNativeAddon().addon?.releaseRange(record);
}

/** A copy of `bytes` in memory that releaseRecord frees (for records that arrive from elsewhere). */
export function copyRecord(bytes: Uint8Array): Uint8Array {
  const addon = loadNativeAddon().addon;
  if (!addon) return bytes.slice();
  const out = adopt(addon.allocRange(bytes.byteLength));
  out.set(bytes);
  return out;
}

export class RecordFile {
  readonly path: string;
  /** Bytes of the file when opened. */
  readonly size: number;
  /** Reads bypass the page cache (O_DIRECT). */
  readonly direct: boolean;
  private fd: number | undefined;
  private readonly addon: NativeAddon | undefined;

  constructor(file: string) {
    this.path = file;
    this.addon = loadNativeAddon().addon;
    try {
      if (this.addon) {
        const f = this.addon.openForReads(file);
        this.fd = f.fd;
        this.direct = f.direct;
        this.size = f.size; // (opening also dropped pages an import left in the page cache)
      } else {
        this.fd = fs.openSync(file, "r");
        this.direct = false;
        this.size = fs.fstatSync(this.fd).size;
      }
    } catch (err) {
      throw new MoeRunError("STORE_CORRUPT", `cannot open the expert store ${file}: ${err instanceof Error ? err.message : String(err)}; re-import the model`);
    }
  }

  /** [offset, offset+length) in memory of its own (4-byte aligned view); the caller owns it (releaseRecord). */
  read(offset: number, length: number): Uint8Array {
    const fd = this.handle();
    this.check(offset, length);
    try {
      if (this.addon) return adopt(this.addon.readRange(fd, this.direct, this.size, offset, length, READ_PARALLEL));
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, out, done, length - done, offset + done);
        if (n === 0) throw new Error(`short read at byte ${offset + done}: the file ended early`);
        done += n;
      }
      return out;
    } catch (err) {
      throw this.readError(offset, length, err);
    }
  }

  /** read() off the calling thread (libuv's pool); several may be in flight. */
  async readAsync(offset: number, length: number): Promise<Uint8Array> {
    const fd = this.handle();
    this.check(offset, length);
    try {
      if (this.addon) return adopt(await this.addon.readRangeAsync(fd, this.direct, this.size, offset, length, READ_PARALLEL));
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await new Promise<{ bytesRead: number }>((resolve, reject) =>
          fs.read(fd, out, done, length - done, offset + done, (err, bytesRead) => (err ? reject(err) : resolve({ bytesRead })))
        );
        if (bytesRead === 0) throw new Error(`short read at byte ${offset + done}: the file ended early`);
        done += bytesRead;
      }
      return out;
    } catch (err) {
      throw this.readError(offset, length, err);
    }
  }

  close(): void {
    const fd = this.fd;
    this.fd = undefined;
    if (fd === undefined) return;
    if (this.addon) this.addon.closeFd(fd);
    else fs.closeSync(fd);
  }

  private check(offset: number, length: number): void {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.size)) {
      throw new MoeRunError("STORE_CORRUPT", `the expert store ${this.path} is damaged: a record at bytes ${offset}..${offset + length} lies outside the file (${this.size} bytes); re-import the model`);
    }
  }

  private readError(offset: number, length: number, err: unknown): MoeRunError {
    const why = err instanceof Error ? err.message : String(err);
    return new MoeRunError("STORE_CORRUPT", `reading the expert store ${this.path} (bytes ${offset}..${offset + length}) failed: ${why}; check the disk, or re-import the model`);
  }

  private handle(): number {
    if (this.fd === undefined) throw new MoeRunError("DISPOSED", `expert store ${this.path} is closed`);
    return this.fd;
  }
}
