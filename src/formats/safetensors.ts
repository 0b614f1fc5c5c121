/**
 * Reader and writer for the safetensors format: an 8-byte little-endian header length, a JSON
 * header {name: {dtype, shape, data_offsets: [begin, end]}}, then the raw tensor bytes. The reader
 * validates the whole header against the file size before anything is read, so a truncated or
 * corrupt file is reported by name instead of producing garbage weights.
 */
import * as fs from "node:fs";
import { CheckpointCorruptError } from "../errors.js";
import { BYTES_PER_ELEMENT, decodeToFloat32, type FloatDType } from "../util/dtype.js";
import { openSourceFile } from "./sourceFiles.js";

/** Stored element types: floats, and U8 for quantized blocks (gpt-oss's MXFP4 blocks and scales). */
export type TensorDType = FloatDType | "U8";
const ELEMENT_BYTES: Record<TensorDType, number> = { ...BYTES_PER_ELEMENT, U8: 1 };

export interface SafetensorsEntry {
  name: string;
  dtype: TensorDType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

const SUPPORTED_DTYPES = new Set<string>(["F32", "F16", "BF16", "U8"]);
/** Headers larger than this are not plausible and would only exhaust memory. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsFile {
  readonly path: string;
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
  readonly metadata: Record<string, string>;
  private fd: number | undefined;

  private constructor(path: string, fd: number, entries: Map<string, SafetensorsEntry>, metadata: Record<string, string>) {
    this.path = path;
    this.fd = fd;
    this.entries = entries;
    this.metadata = metadata;
  }

  /** Opens and validates a safetensors file; throws CheckpointCorruptError naming the problem. */
  static open(path: string): SafetensorsFile {
    // A regular file, checked before anything is read (a link to /dev/zero or a FIFO is refused).
    const { fd, size: fileSize } = openSourceFile(path, "safetensors file");
    try {
      if (fileSize < 8) throw new CheckpointCorruptError(`${path} is truncated: ${fileSize} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      readFully(fd, lenBuf, 0, path);
      const headerLen = Number(lenBuf.readBigUInt64LE(0));
      if (headerLen < 2 || headerLen > MAX_HEADER_BYTES) {
        // No number from the file in the message: it may not be a safetensors file at all.
        throw new CheckpointCorruptError(`${path} is not a safetensors file (its first 8 bytes are not a plausible header length)`);
      }
      if (8 + headerLen > fileSize) {
        throw new CheckpointCorruptError(
          `${path} is truncated or not a safetensors file: header claims ${headerLen} bytes but the file has ${fileSize}`
        );
      }
      const headerBuf = Buffer.alloc(headerLen);
      readFully(fd, headerBuf, 8, path);
      let header: Record<string, unknown>;
      try {
        header = JSON.parse(headerBuf.toString("utf8")) as Record<string, unknown>;
      } catch (cause) {
        throw new CheckpointCorruptError(`${path} has a corrupt safetensors header (not valid JSON)`, { cause });
      }
      if (header === null || typeof header !== "object" || Array.isArray(header)) {
        throw new CheckpointCorruptError(`${path} has a corrupt safetensors header (not a JSON object)`);
      }
      const dataStart = 8 + headerLen;
      const entries = new Map<string, SafetensorsEntry>();
      let metadata: Record<string, string> = {};
      for (const [name, raw] of Object.entries(header)) {
        if (name === "__metadata__") {
          metadata = (raw ?? {}) as Record<string, string>;
          continue;
        }
        const info = (raw ?? {}) as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        if (typeof info.dtype !== "string" || !Array.isArray(info.shape) || !Array.isArray(info.data_offsets) || info.data_offsets.length !== 2) {
          throw new CheckpointCorruptError(`${path}: header entry "${name}" lacks dtype, shape or data_offsets`);
        }
        if (!SUPPORTED_DTYPES.has(info.dtype)) {
          throw new CheckpointCorruptError(`${path}: tensor "${name}" has dtype ${info.dtype}; moe-run imports F32, F16 and BF16 checkpoints (and U8 quantized blocks)`);
        }
        const dtype = info.dtype as TensorDType;
        const isCount = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
        if (!info.shape.every(isCount) || !info.data_offsets.every(isCount)) {
          throw new CheckpointCorruptError(`${path}: tensor "${name}" has a shape or data_offsets that are not whole numbers >= 0`);
        }
        const shape = info.shape as number[];
        const [begin, end] = info.data_offsets as [number, number];
        const elements = shape.reduce((a, b) => a * b, 1);
        if (!(end >= begin) || end - begin !== elements * ELEMENT_BYTES[dtype]) {
          throw new CheckpointCorruptError(
            `${path}: tensor "${name}" header mismatch: shape [${shape.join(", ")}] ${dtype} needs ` +
              `${elements * ELEMENT_BYTES[dtype]} bytes but data_offsets span ${end - begin}`
          );
        }
        if (dataStart + end > fileSize) {
          throw new CheckpointCorruptError(
            `${path} is truncated: tensor "${name}" needs bytes up to ${dataStart + end} but the file has ${fileSize}`
          );
        }
        entries.set(name, { name, dtype, shape, offset: dataStart + begin, byteLength: end - begin });
      }
      checkNoOverlap(path, entries);
      return new SafetensorsFile(path, fd, entries, metadata);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** Raw bytes of one tensor, as stored (or `length` bytes from byte `start` within it). */
  readBytes(name: string, start = 0, length?: number): Uint8Array {
    const entry = this.entry(name);
    const bytes = length ?? entry.byteLength - start;
    if (start < 0 || bytes < 0 || start + bytes > entry.byteLength) throw new Error(`bytes ${start}..${start + bytes} lie outside tensor "${name}" (${entry.byteLength} bytes)`);
    const buf = new Uint8Array(bytes);
    let done = 0;
    while (done < bytes) {
      const n = fs.readSync(this.handle(), buf, done, bytes - done, entry.offset + start + done);
      if (n === 0) throw new CheckpointCorruptError(`${this.path} ended early while reading "${name}"`);
      done += n;
    }
    return buf;
  }

  /**
   * Sub-tensor `index` along the first dimension (e.g. one expert of a fused [E, ...] tensor),
   * as stored: the slices of a row-major tensor are contiguous.
   */
  readSliceBytes(name: string, index: number): Uint8Array {
    const entry = this.entry(name);
    const count = entry.shape[0] ?? 0;
    if (!Number.isInteger(index) || index < 0 || index >= count) throw new Error(`slice ${index} of tensor "${name}" with first dimension ${count}`);
    const bytes = entry.byteLength / count;
    return this.readBytes(name, index * bytes, bytes);
  }

  /** One tensor decoded to fp32 (row-major, shape as in the header). */
  readFloat32(name: string): Float32Array {
    return decodeToFloat32(this.readBytes(name), this.floatDType(name));
  }

  private floatDType(name: string): FloatDType {
    const dtype = this.entry(name).dtype;
    if (dtype === "U8") throw new CheckpointCorruptError(`${this.path}: tensor "${name}" holds U8 (quantized blocks), not floats`);
    return dtype;
  }

  /** Sub-tensor `index` along the first dimension, decoded to fp32. */
  readSliceFloat32(name: string, index: number): Float32Array {
    return decodeToFloat32(this.readSliceBytes(name, index), this.floatDType(name));
  }

  entry(name: string): SafetensorsEntry {
    const entry = this.entries.get(name);
    if (!entry) throw new CheckpointCorruptError(`${this.path} has no tensor "${name}"`);
    return entry;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private handle(): number {
    if (this.fd === undefined) throw new Error(`${this.path} is closed`);
    return this.fd;
  }
}

function readFully(fd: number, buf: Buffer, position: number, path: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw new CheckpointCorruptError(`${path} ended early while reading its header`);
    done += n;
  }
}

/**
 * Two tensors may not share bytes: a file whose header points two names at one range would import
 * one tensor's data as another's. (Empty tensors take no bytes and cannot overlap.)
 */
function checkNoOverlap(path: string, entries: ReadonlyMap<string, SafetensorsEntry>): void {
  const spans = [...entries.values()].filter((e) => e.byteLength > 0).sort((a, b) => a.offset - b.offset || a.byteLength - b.byteLength);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1]!;
    const cur = spans[i]!;
    if (cur.offset < prev.offset + prev.byteLength) {
      throw new CheckpointCorruptError(
        `${path}: tensors "${prev.name}" and "${cur.name}" overlap (their data_offsets share bytes); the file is damaged or was not written by a safetensors writer`
      );
    }
  }
}

export interface SafetensorsWriteEntry {
  name: string;
  dtype: TensorDType;
  shape: number[];
}

/**
 * Writes a safetensors file tensor by tensor: `data(name)` is called once per entry, in order, so
 * multi-gigabyte synthetic checkpoints never need to be in memory at once.
 */
export function writeSafetensors(
  path: string,
  entries: readonly SafetensorsWriteEntry[],
  data: (entry: SafetensorsWriteEntry) => Uint8Array,
  metadata: Record<string, string> = { format: "pt" }
): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const e of entries) {
    const bytes = e.shape.reduce((a, b) => a * b, 1) * ELEMENT_BYTES[e.dtype];
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // keeps tensor data 8-byte aligned
  const headerBytes = Buffer.from(json, "utf8");
  const fd = fs.openSync(path, "w");
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(headerBytes.length));
    fs.writeSync(fd, len);
    fs.writeSync(fd, headerBytes);
    for (const e of entries) {
      const bytes = data(e);
      const expected = e.shape.reduce((a, b) => a * b, 1) * ELEMENT_BYTES[e.dtype];
      if (bytes.byteLength !== expected) throw new Error(`writeSafetensors: ${e.name} has ${bytes.byteLength} bytes, expected ${expected}`);
      fs.writeSync(fd, bytes);
    }
  } finally {
    fs.closeSync(fd);
  }
}
