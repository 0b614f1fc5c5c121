/**
 * A validating GGUF reader (v2 and v3, little-endian), including split models
 * (`name-00001-of-0000N.gguf`, found through `split.no` / `split.count`). Everything is checked
 * before any tensor byte is read: the magic, the version, every metadata value type, each tensor's
 * type, dimensions, element count against its block size, offset alignment (general.alignment,
 * default 32) and byte range inside its file, and that no two tensors share bytes. A failure is a
 * typed GgufFormatError (errors.ts) whose one-line message names the file and what is wrong.
 *
 * Only the header is read at open; tensor data is read on demand, by offset, from the open file
 * descriptors (models are tens of GB).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import {
  CheckpointMissingError,
  GgufAlignmentError,
  GgufFormatError,
  GgufMagicError,
  GgufMissingKeyError,
  GgufSplitError,
  GgufTensorRangeError,
  GgufTensorShapeError,
  GgufTensorTypeError,
  GgufTruncatedError,
  GgufValueTypeError,
  GgufVersionError,
} from "../errors.js";
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufValueType, type GgufScalar, type GgufValue } from "./gguf.js";
import { dequantize, ggmlTypeInfo, type GgmlTypeInfo } from "./ggmlQuants.js";
import { openSourceFile, sourceReadError } from "./sourceFiles.js";

/** ggml's GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** llama.cpp's GGUF_MAX_STRING_LENGTH. */
const MAX_STRING_BYTES = 1 << 30;
const READ_CHUNK = 1 << 20;

export interface GgufTensor {
  name: string;
  /** ggml dims, innermost first (the reverse of the PyTorch shape). */
  dims: number[];
  type: GgmlTypeInfo;
  elements: number;
  byteLength: number;
  /** Index into GgufFile.paths of the shard holding the data. */
  shard: number;
  /** Absolute byte offset of the data in its shard. */
  offset: number;
}

interface ShardHeader {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensor[];
  alignment: number;
  dataOffset: number;
}

const VALUE_TYPE_NAMES: Record<number, string> = {
  0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string", 9: "array", 10: "u64", 11: "i64", 12: "f64",
};
/** Bytes of one scalar of each fixed-size type (strings: at least their 8-byte length). */
const MIN_VALUE_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 10: 8, 11: 8, 12: 8 };

/** Buffered little-endian reads from a file descriptor, with truncation reported as such. */
class HeaderCursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;
  /** What is being read, for the truncation message. */
  context = "the header";

  constructor(private readonly fd: number, readonly size: number, private readonly file: string) {}

  private need(n: number): number {
    if (this.pos + n <= this.bufStart + this.buf.length) return this.pos - this.bufStart;
    if (this.pos + n > this.size) {
      throw new GgufTruncatedError(`${this.file} is truncated: ${this.context} needs bytes up to ${this.pos + n} but the file has ${this.size}`);
    }
    const len = Math.min(this.size - this.pos, Math.max(n, READ_CHUNK));
    const b = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      let r: number;
      try {
        r = fs.readSync(this.fd, b, done, len - done, this.pos + done);
      } catch (err) {
        throw sourceReadError(this.file, "the GGUF file", err);
      }
      if (r === 0) break;
      done += r;
    }
    if (done < n) throw new GgufTruncatedError(`${this.file} is truncated: it ended at byte ${this.pos + done} while reading ${this.context}`);
    this.buf = b.subarray(0, done);
    this.bufStart = this.pos;
    return 0;
  }
  private take(n: number): number {
    const o = this.need(n);
    this.pos += n;
    return o;
  }
  u8() { const o = this.take(1); return this.buf.readUInt8(o); }
  i8() { const o = this.take(1); return this.buf.readInt8(o); }
  u16() { const o = this.take(2); return this.buf.readUInt16LE(o); }
  i16() { const o = this.take(2); return this.buf.readInt16LE(o); }
  u32() { const o = this.take(4); return this.buf.readUInt32LE(o); }
  i32() { const o = this.take(4); return this.buf.readInt32LE(o); }
  f32() { const o = this.take(4); return this.buf.readFloatLE(o); }
  f64() { const o = this.take(8); return this.buf.readDoubleLE(o); }
  u64big() { const o = this.take(8); return this.buf.readBigUInt64LE(o); }
  i64big() { const o = this.take(8); return this.buf.readBigInt64LE(o); }
  /** A u64 count or offset; one that cannot fit in the file is reported as truncation/corruption. */
  count(what: string, maxPlausible: number): number {
    const v = this.u64big();
    if (v > BigInt(maxPlausible)) {
      throw new GgufTruncatedError(`${this.file} is truncated or corrupt: ${what} is ${v}, more than the ${this.size}-byte file can hold`);
    }
    return Number(v);
  }
  str(what: string): string {
    const n = this.count(`the length of ${what}`, Math.min(MAX_STRING_BYTES, this.size));
    const o = this.take(n);
    return this.buf.toString("utf8", o, o + n);
  }
  remaining(): number {
    return this.size - this.pos;
  }
}

function readScalar(c: HeaderCursor, type: number, key: string): number | bigint | boolean | string {
  switch (type) {
    case GgufValueType.UINT8: return c.u8();
    case GgufValueType.INT8: return c.i8();
    case GgufValueType.UINT16: return c.u16();
    case GgufValueType.INT16: return c.i16();
    case GgufValueType.UINT32: return c.u32();
    case GgufValueType.INT32: return c.i32();
    case GgufValueType.FLOAT32: return c.f32();
    case GgufValueType.FLOAT64: return c.f64();
    case GgufValueType.UINT64: return c.u64big();
    case GgufValueType.INT64: return c.i64big();
    case GgufValueType.BOOL: {
      const v = c.u8();
      return v !== 0;
    }
    case GgufValueType.STRING: return c.str(`the value of "${key}"`);
    default:
      throw new Error(`unreachable: value type ${type}`);
  }
}

const shown = (s: string) => JSON.stringify(s.length > 120 ? `${s.slice(0, 120)}...` : s);

/** Reads and validates the header of one GGUF file (one shard). */
function readShardHeader(file: string, fd: number, size: number, shard: number): ShardHeader {
  const c = new HeaderCursor(fd, size, file);
  if (size < 4) throw new GgufMagicError(`${file} is not a GGUF file: it has ${size} bytes, fewer than the 4-byte "GGUF" magic`);
  c.context = "the magic";
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(magic);
    const printable = [...bytes].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`)).join("");
    throw new GgufMagicError(`${file} is not a GGUF file: wrong magic "${printable}" (expected "GGUF")`);
  }
  c.context = "the version";
  const version = c.u32();
  if (version !== 2 && version !== 3) {
    const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
    if (swapped === 2 || swapped === 3) throw new GgufVersionError(`${file} is a big-endian GGUF file; moe-run reads little-endian GGUF only`);
    throw new GgufVersionError(`${file} is GGUF version ${version}; moe-run reads versions 2 and 3${version === 1 ? " (convert it again with a current llama.cpp)" : ""}`);
  }
  c.context = "the tensor and metadata counts";
  // Each tensor info takes at least 25 bytes and each key/value at least 13.
  const tensorCount = c.count("the tensor count", Math.floor(size / 25));
  const kvCount = c.count("the metadata count", Math.floor(size / 13));

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    c.context = `metadata key ${i + 1} of ${kvCount}`;
    const key = c.str(`metadata key ${i + 1}`);
    if (key === "") throw new GgufFormatError("bad-value", `${file}: metadata key ${i + 1} of ${kvCount} is empty`);
    if (metadata.has(key)) throw new GgufFormatError("duplicate", `${file}: metadata key ${shown(key)} appears twice`);
    c.context = `the value of metadata key ${shown(key)}`;
    const type = c.u32();
    if (type === GgufValueType.ARRAY) {
      const itemType = c.u32();
      if (itemType === GgufValueType.ARRAY) throw new GgufValueTypeError(`${file}: metadata key ${shown(key)} is an array of arrays, which GGUF readers do not accept`);
      if (!(itemType in MIN_VALUE_BYTES)) throw new GgufValueTypeError(`${file}: metadata key ${shown(key)} is an array of unknown value type ${itemType}`);
      const n = c.count(`the length of array ${shown(key)}`, Math.floor(c.remaining() / MIN_VALUE_BYTES[itemType]!));
      const value: (number | bigint | boolean | string)[] = new Array(n);
      for (let j = 0; j < n; j++) value[j] = readScalar(c, itemType, key);
      metadata.set(key, { type, itemType, value } as GgufValue);
    } else {
      if (!(type in MIN_VALUE_BYTES)) throw new GgufValueTypeError(`${file}: metadata key ${shown(key)} has unknown value type ${type}`);
      metadata.set(key, { type, value: readScalar(c, type, key) } as GgufScalar);
    }
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const a = metadata.get("general.alignment");
  if (a) {
    if (a.type !== GgufValueType.UINT32) {
      throw new GgufAlignmentError(`${file}: general.alignment must be a u32, but it is ${a.type === GgufValueType.ARRAY ? "an array" : `a ${VALUE_TYPE_NAMES[a.type]}`}`);
    }
    alignment = a.value as number;
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0) throw new GgufAlignmentError(`${file}: general.alignment ${alignment} is not a power of 2`);
  }

  interface RawInfo { name: string; dims: number[]; typeId: number; offset: bigint }
  const infos: RawInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    c.context = `tensor info ${i + 1} of ${tensorCount}`;
    const name = c.str(`tensor name ${i + 1}`);
    if (names.has(name)) throw new GgufFormatError("duplicate", `${file}: tensor ${shown(name)} appears twice`);
    names.add(name);
    c.context = `the info of tensor ${shown(name)}`;
    const nd = c.u32();
    if (nd > MAX_DIMS) throw new GgufTensorShapeError(`${file}: tensor ${shown(name)} has ${nd} dimensions; ggml tensors have at most ${MAX_DIMS}`);
    const dims: number[] = [];
    for (let j = 0; j < nd; j++) {
      const d = c.u64big();
      if (d > BigInt(Number.MAX_SAFE_INTEGER)) throw new GgufTensorShapeError(`${file}: tensor ${shown(name)} dimension ${j} is ${d}, not a valid size`);
      dims.push(Number(d));
    }
    const typeId = c.u32();
    const offset = c.u64big();
    infos.push({ name, dims, typeId, offset });
  }
  const dataOffset = c.pos + ((alignment - (c.pos % alignment)) % alignment);

  const tensors: GgufTensor[] = [];
  for (const t of infos) {
    const type = ggmlTypeInfo(t.typeId);
    if (!type) throw new GgufTensorTypeError(`${file}: tensor ${shown(t.name)} has unknown tensor type id ${t.typeId}`);
    let elements = 1;
    for (const d of t.dims) elements *= d;
    if (!Number.isSafeInteger(elements)) throw new GgufTensorShapeError(`${file}: tensor ${shown(t.name)} dims [${t.dims.join(", ")}] have more elements than any file can hold`);
    const ne0 = t.dims[0] ?? 1;
    if (ne0 % type.blockSize !== 0) {
      throw new GgufTensorShapeError(
        `${file}: tensor ${shown(t.name)} of type ${type.name} has rows of ${ne0} values, not a multiple of its block size ${type.blockSize}`
      );
    }
    const byteLength = (elements / type.blockSize) * type.typeSize;
    if (t.offset % BigInt(alignment) !== 0n) {
      throw new GgufAlignmentError(`${file}: tensor ${shown(t.name)} has misaligned offset ${t.offset} (not a multiple of the alignment ${alignment})`);
    }
    const start = BigInt(dataOffset) + t.offset;
    const end = start + BigInt(byteLength);
    if (end > BigInt(size)) {
      throw new GgufTensorRangeError(
        `${file}: tensor ${shown(t.name)} data (bytes ${start}..${end}) runs past the end of the file (${size} bytes); the file is truncated or damaged`
      );
    }
    tensors.push({ name: t.name, dims: t.dims, type, elements, byteLength, shard, offset: Number(start) });
  }
  const spans = tensors.filter((t) => t.byteLength > 0).sort((x, y) => x.offset - y.offset);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1]!;
    const cur = spans[i]!;
    if (cur.offset < prev.offset + prev.byteLength) {
      throw new GgufTensorRangeError(`${file}: the data of tensors ${shown(prev.name)} and ${shown(cur.name)} overlap; the file is damaged`);
    }
  }
  return { version, metadata, tensors, alignment, dataOffset };
}

/** The shard names of a split model: `<prefix>-00001-of-00003.gguf` ... */
const SPLIT_NAME = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/;

export class GgufFile {
  /** The path given (the first shard of a split model). */
  readonly path: string;
  /** Every shard, in order (one entry for a single-file model). */
  readonly paths: readonly string[];
  readonly version: number;
  readonly alignment: number;
  /** Metadata of the first shard (where llama.cpp keeps all of it). */
  readonly metadata: ReadonlyMap<string, GgufValue>;
  readonly tensors: ReadonlyMap<string, GgufTensor>;
  private fds: (number | undefined)[];
  private readonly sizes: number[];

  private constructor(paths: string[], fds: number[], sizes: number[], first: ShardHeader, tensors: Map<string, GgufTensor>) {
    this.path = paths[0]!;
    this.paths = paths;
    this.fds = fds;
    this.sizes = sizes;
    this.version = first.version;
    this.alignment = first.alignment;
    this.metadata = first.metadata;
    this.tensors = tensors;
  }

  /** Opens and validates a GGUF file, or all shards of a split one given its first shard. */
  static open(file: string): GgufFile {
    const fds: number[] = [];
    try {
      const first = openShard(file, 0, fds);
      const paths = [file];
      const sizes = [first.size];
      const tensors = new Map(first.header.tensors.map((t) => [t.name, t]));
      const count = splitValue(file, first.header, "split.count");
      const no = splitValue(file, first.header, "split.no");
      if (no !== undefined && no !== 0) {
        const m = SPLIT_NAME.exec(path.basename(file));
        const firstName = m ? `${m[1]}-00001-of-${m[3]}.gguf` : "the -00001-of-... shard";
        throw new GgufSplitError(`${file} is shard ${no + 1}${count ? ` of ${count}` : ""} of a split model; pass its first shard (${firstName})`);
      }
      if (count !== undefined && count > 1) {
        const m = SPLIT_NAME.exec(path.basename(file));
        if (!m || Number(m[2]) !== 1 || Number(m[3]) !== count) {
          throw new GgufSplitError(`${file} is the first of ${count} shards, but its name does not end in -00001-of-${String(count).padStart(5, "0")}.gguf, so the others cannot be found`);
        }
        for (let k = 1; k < count; k++) {
          const p = path.join(path.dirname(file), `${m[1]}-${String(k + 1).padStart(5, "0")}-of-${m[3]}.gguf`);
          if (!fs.existsSync(p)) throw new GgufSplitError(`shard ${k + 1} of ${count} of ${path.basename(file)} is missing: expected ${p}`);
          const s = openShard(p, k, fds);
          const sNo = splitValue(p, s.header, "split.no");
          const sCount = splitValue(p, s.header, "split.count");
          if (sNo !== k || sCount !== count) {
            throw new GgufSplitError(`${p} says it is shard ${sNo === undefined ? "?" : sNo + 1} of ${sCount ?? "?"}, but its name makes it shard ${k + 1} of ${count}`);
          }
          for (const t of s.header.tensors) {
            if (tensors.has(t.name)) throw new GgufSplitError(`tensor ${shown(t.name)} is in two shards of ${path.basename(file)}: ${paths[tensors.get(t.name)!.shard]} and ${p}`);
            tensors.set(t.name, t);
          }
          paths.push(p);
          sizes.push(s.size);
        }
      }
      const total = first.header.metadata.get("split.tensors.count");
      if (count !== undefined && total && total.type !== GgufValueType.ARRAY && Number(total.value) !== tensors.size) {
        throw new GgufSplitError(`${file}: split.tensors.count says ${Number(total.value)} tensors but the ${count} shard(s) hold ${tensors.size}`);
      }
      return new GgufFile(paths, fds, sizes, first.header, tensors);
    } catch (err) {
      for (const fd of fds) fs.closeSync(fd);
      throw err;
    }
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  tensor(name: string): GgufTensor {
    const t = this.tensors.get(name);
    if (!t) throw new CheckpointMissingError(`${this.path} has no tensor ${shown(name)}`);
    return t;
  }

  /** A metadata value as a plain JS value (a scalar, or an array of scalars), or undefined. */
  value(key: string): unknown {
    return this.metadata.get(key)?.value;
  }

  /** A string-valued key; a missing or non-string one is a GgufMissingKeyError naming it. */
  string(key: string): string {
    const v = this.metadata.get(key);
    if (!v) throw new GgufMissingKeyError(`${this.path} lacks the metadata key "${key}"`);
    if (v.type !== GgufValueType.STRING) throw new GgufMissingKeyError(`${this.path}: metadata key "${key}" must be a string`);
    return v.value as string;
  }

  /** A numeric key (any integer or float type); absent: `fallback`, or a GgufMissingKeyError. */
  number(key: string, fallback?: number): number {
    const v = this.metadata.get(key);
    if (!v) {
      if (fallback !== undefined) return fallback;
      throw new GgufMissingKeyError(`${this.path} lacks the metadata key "${key}"`);
    }
    if (v.type === GgufValueType.ARRAY || v.type === GgufValueType.STRING || v.type === GgufValueType.BOOL) {
      throw new GgufMissingKeyError(`${this.path}: metadata key "${key}" must be a number`);
    }
    return Number(v.value);
  }

  /** An array-valued key's items, or undefined when absent; `itemTypes` restricts the item type. */
  array(key: string, itemTypes?: readonly GgufValueType[]): (number | bigint | boolean | string)[] | undefined {
    const v = this.metadata.get(key);
    if (!v) return undefined;
    if (v.type !== GgufValueType.ARRAY || (itemTypes && !itemTypes.includes(v.itemType))) {
      throw new GgufMissingKeyError(`${this.path}: metadata key "${key}" must be an array${itemTypes ? ` of ${itemTypes.map((t) => VALUE_TYPE_NAMES[t]).join(" or ")}` : ""}`);
    }
    return v.value;
  }

  /** Raw bytes [start, start+length) of a tensor's data, read from its shard. */
  readBytes(name: string, start = 0, length?: number): Uint8Array {
    const t = this.tensor(name);
    const len = length ?? t.byteLength - start;
    if (start < 0 || len < 0 || start + len > t.byteLength) throw new RangeError(`bytes ${start}..${start + len} of ${name} are outside its ${t.byteLength}`);
    const fd = this.fds[t.shard];
    if (fd === undefined) throw new Error(`${this.path} is closed`);
    const buf = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, done, len - done, t.offset + start + done);
      } catch (err) {
        throw sourceReadError(this.paths[t.shard]!, "the GGUF file", err);
      }
      if (n === 0) throw new GgufTensorRangeError(`${this.paths[t.shard]} ended early while reading tensor ${shown(name)} (did it shrink while being read?)`);
      done += n;
    }
    return buf;
  }

  /**
   * A tensor (or the rows [firstRow, firstRow + rows) of it, a row being ne0 values) decoded to
   * fp32, row-major with ne0 fastest.
   */
  readFloat32(name: string, firstRow = 0, rows?: number): Float32Array {
    const t = this.tensor(name);
    const ne0 = t.dims[0] ?? 1;
    const totalRows = ne0 === 0 ? 0 : t.elements / ne0;
    const n = rows ?? totalRows - firstRow;
    const rowBytes = (ne0 / t.type.blockSize) * t.type.typeSize;
    return dequantize(t.type.id, this.readBytes(name, firstRow * rowBytes, n * rowBytes), n * ne0);
  }

  /** Bytes in all shards. */
  totalBytes(): number {
    return this.sizes.reduce((a, b) => a + b, 0);
  }

  close(): void {
    for (const fd of this.fds) if (fd !== undefined) fs.closeSync(fd);
    this.fds = this.fds.map(() => undefined);
  }
}

function openShard(file: string, shard: number, fds: number[]): { header: ShardHeader; size: number } {
  const { fd, size } = openSourceFile(file, "GGUF file");
  fds.push(fd);
  return { header: readShardHeader(file, fd, size, shard), size };
}

function splitValue(file: string, h: ShardHeader, key: string): number | undefined {
  const v = h.metadata.get(key);
  if (!v) return undefined;
  if (v.type === GgufValueType.ARRAY || typeof v.value === "string" || typeof v.value === "boolean") {
    throw new GgufSplitError(`${file}: metadata key "${key}" must be an integer`);
  }
  return Number(v.value);
}

/** Whether a path names a GGUF file (by its extension, as the importer dispatches). */
export function isGgufPath(p: string): boolean {
  return p.toLowerCase().endsWith(".gguf");
}
