/**
 * GGUF v3 (llama.cpp's model format): a streaming writer, a header reader and the ggml tensor
 * types it writes (F32, F16, BF16, Q8_0, Q4_0/Q4_1/Q5_0/Q5_1 and the k-quants Q2_K..Q6_K, encoded
 * as llama.cpp's reference quantizers do: ggmlQuants.ts). The Mixtral converter that uses them is
 * hfToGguf.ts; the validating reader the importer uses is ggufReader.ts.
 *
 * File layout: "GGUF", u32 version 3, u64 tensor count, u64 metadata count, the metadata
 * key/values, the tensor infos (name, dims innermost-first, ggml type, offset into the data
 * section), padding to `general.alignment` (default 32), then each tensor's data at its offset.
 * A ggml tensor with dims [ne0, ne1, ne2] holds the same bytes as a row-major PyTorch tensor of
 * shape [ne2, ne1, ne0]; quantized types store each row of ne0 values as ne0 / blockSize blocks.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CheckpointCorruptError, MoeRunError, invariant } from "../errors.js";
import { floatToHalf, type FloatDType } from "../util/dtype.js";
import { HALF_TO_FLOAT } from "./ggmlFloat.js";
import { GgmlType, dequantize, ggmlTypeInfo, quantize } from "./ggmlQuants.js";

// ---------------------------------------------------------------------------------------------
// Types and constants

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** Metadata value types (gguf_type). */
export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** The ggml tensor types this module writes (ggml_type ids). */
export const GGML_TYPE = {
  F32: GgmlType.F32,
  F16: GgmlType.F16,
  BF16: GgmlType.BF16,
  Q8_0: GgmlType.Q8_0,
  Q4_0: GgmlType.Q4_0,
  Q4_1: GgmlType.Q4_1,
  Q5_0: GgmlType.Q5_0,
  Q5_1: GgmlType.Q5_1,
  Q2_K: GgmlType.Q2_K,
  Q3_K: GgmlType.Q3_K,
  Q4_K: GgmlType.Q4_K,
  Q5_K: GgmlType.Q5_K,
  Q6_K: GgmlType.Q6_K,
} as const;
export type GgmlTypeName = keyof typeof GGML_TYPE;

/**
 * llama_ftype of a file whose matrices are mostly of this type ("general.file_type"; informative:
 * llama.cpp reads each tensor's own type). A k-quant file is labelled as llama-quantize's "_M" mix.
 */
export const FILE_TYPE: Record<GgmlTypeName, number> = {
  F32: 0,
  F16: 1,
  BF16: 32,
  Q8_0: 7,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 8,
  Q5_1: 9,
  Q2_K: 10,
  Q3_K: 12,
  Q4_K: 15,
  Q5_K: 17,
  Q6_K: 18,
};

/** Q8_0: blocks of 32 weights, an fp16 scale then 32 int8 quants. */
export const Q8_0_BLOCK = 32;
export const Q8_0_BLOCK_BYTES = 34;

/** Token types of tokenizer.ggml.token_type (llama_token_type). */
export const GGUF_TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export type GgufScalar = { type: Exclude<GgufValueType, GgufValueType.ARRAY>; value: number | bigint | boolean | string };
export type GgufArray = { type: GgufValueType.ARRAY; itemType: Exclude<GgufValueType, GgufValueType.ARRAY>; value: (number | bigint | boolean | string)[] };
export type GgufValue = GgufScalar | GgufArray;

/** Helpers to build typed metadata values. */
export const gguf = {
  u32: (value: number): GgufValue => ({ type: GgufValueType.UINT32, value }),
  i32: (value: number): GgufValue => ({ type: GgufValueType.INT32, value }),
  f32: (value: number): GgufValue => ({ type: GgufValueType.FLOAT32, value }),
  bool: (value: boolean): GgufValue => ({ type: GgufValueType.BOOL, value }),
  str: (value: string): GgufValue => ({ type: GgufValueType.STRING, value }),
  strings: (value: string[]): GgufValue => ({ type: GgufValueType.ARRAY, itemType: GgufValueType.STRING, value }),
  i32s: (value: number[]): GgufValue => ({ type: GgufValueType.ARRAY, itemType: GgufValueType.INT32, value }),
};

export interface GgufTensorSpec {
  name: string;
  /** ggml dims, innermost (contiguous) first: the reverse of the PyTorch shape. */
  dims: number[];
  type: GgmlTypeName;
  /**
   * The tensor's bytes in order (ne0 fastest), in one or more chunks. Called once, when the
   * writer reaches this tensor, so only one tensor (or one chunk) is in memory at a time.
   */
  data: () => Iterable<Uint8Array>;
}

export function ggmlTensorBytes(type: GgmlTypeName, dims: readonly number[]): number {
  const n = dims.reduce((a, b) => a * b, 1);
  const t = ggmlTypeInfo(GGML_TYPE[type])!;
  if ((dims[0] ?? 1) % t.blockSize !== 0) {
    throw new MoeRunError("INVALID_OPTION", `${type} needs the innermost dimension to be a multiple of ${t.blockSize}, got ${dims[0]}`);
  }
  return (n / t.blockSize) * t.typeSize;
}

/**
 * fp32 values (whole rows, ne0 fastest) encoded as a ggml type the way llama.cpp's reference
 * quantizer does (byte for byte; F16 and BF16 round to nearest even).
 */
export function encodeGgml(values: Float32Array, type: GgmlTypeName): Uint8Array {
  return quantize(GGML_TYPE[type], values);
}

/** Whether a matrix whose rows have `cols` values can be stored as `type` (whole blocks per row). */
export function ggmlTypeFits(type: GgmlTypeName, cols: number): boolean {
  return cols % ggmlTypeInfo(GGML_TYPE[type])!.blockSize === 0;
}

const pad = (n: number, a: number) => (a - (n % a)) % a;

// ---------------------------------------------------------------------------------------------
// Writer

class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private ensure(n: number) {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u8(v: number) { this.ensure(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number) { this.ensure(1); this.buf.writeInt8(v, this.length); this.length += 1; }
  u16(v: number) { this.ensure(2); this.buf.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number) { this.ensure(2); this.buf.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number) { this.ensure(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number) { this.ensure(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  f32(v: number) { this.ensure(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number) { this.ensure(8); this.buf.writeDoubleLE(v, this.length); this.length += 8; }
  u64(v: number | bigint) { this.ensure(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: number | bigint) { this.ensure(8); this.buf.writeBigInt64LE(BigInt(v), this.length); this.length += 8; }
  str(s: string) {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.ensure(b.length);
    b.copy(this.buf, this.length);
    this.length += b.length;
  }
  zeros(n: number) { this.ensure(n); this.buf.fill(0, this.length, this.length + n); this.length += n; }
  bytes(): Buffer { return this.buf.subarray(0, this.length); }
}

function writeScalar(s: ByteSink, type: GgufValueType, v: number | bigint | boolean | string, key: string): void {
  const num = () => {
    if (typeof v !== "number") throw new Error(`gguf: ${key} needs a number, got ${typeof v}`);
    return v;
  };
  switch (type) {
    case GgufValueType.UINT8: return s.u8(num());
    case GgufValueType.INT8: return s.i8(num());
    case GgufValueType.UINT16: return s.u16(num());
    case GgufValueType.INT16: return s.i16(num());
    case GgufValueType.UINT32: return s.u32(num());
    case GgufValueType.INT32: return s.i32(num());
    case GgufValueType.FLOAT32: return s.f32(num());
    case GgufValueType.FLOAT64: return s.f64(num());
    case GgufValueType.UINT64: return s.u64(typeof v === "bigint" ? v : num());
    case GgufValueType.INT64: return s.i64(typeof v === "bigint" ? v : num());
    case GgufValueType.BOOL: return s.u8(v ? 1 : 0);
    case GgufValueType.STRING:
      if (typeof v !== "string") throw new Error(`gguf: ${key} needs a string`);
      return s.str(v);
    default:
      throw new Error(`gguf: ${key} has unsupported value type ${type}`);
  }
}

export interface GgufWriteResult {
  path: string;
  bytes: number;
  /** Byte offset of the data section. */
  dataOffset: number;
}

/**
 * Writes a GGUF v3 file: metadata in the given order, tensors in the given order. The file is
 * written to `<path>.tmp` and renamed into place when complete.
 */
export function writeGguf(
  outPath: string,
  metadata: ReadonlyArray<readonly [string, GgufValue]>,
  tensors: readonly GgufTensorSpec[],
  options: { alignment?: number } = {}
): GgufWriteResult {
  invariant(os.endianness() === "LE", "GGUF writing assumes a little-endian machine");
  const alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const kvs = [...metadata];
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !kvs.some(([k]) => k === "general.alignment")) kvs.push(["general.alignment", gguf.u32(alignment)]);
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`gguf: duplicate tensor ${t.name}`);
    names.add(t.name);
  }

  const h = new ByteSink();
  h.u32(GGUF_MAGIC);
  h.u32(GGUF_VERSION);
  h.u64(tensors.length);
  h.u64(kvs.length);
  for (const [key, v] of kvs) {
    h.str(key);
    h.u32(v.type);
    if (v.type === GgufValueType.ARRAY) {
      h.u32(v.itemType);
      h.u64(v.value.length);
      for (const x of v.value) writeScalar(h, v.itemType, x, key);
    } else {
      writeScalar(h, v.type, v.value, key);
    }
  }
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    h.str(t.name);
    h.u32(t.dims.length);
    for (const d of t.dims) h.u64(d);
    h.u32(GGML_TYPE[t.type]);
    h.u64(offset);
    const size = ggmlTensorBytes(t.type, t.dims);
    sizes.push(size);
    offset += size + pad(size, alignment);
  }
  h.zeros(pad(h.length, alignment));
  const dataOffset = h.length;

  const tmp = outPath + ".tmp";
  const fd = fs.openSync(tmp, "w");
  try {
    writeAll(fd, h.bytes());
    const zeros = Buffer.alloc(alignment);
    tensors.forEach((t, i) => {
      let written = 0;
      for (const chunk of t.data()) {
        writeAll(fd, chunk);
        written += chunk.byteLength;
      }
      if (written !== sizes[i]) throw new Error(`gguf: tensor ${t.name} produced ${written} bytes, expected ${sizes[i]}`);
      const p = pad(written, alignment);
      if (p) writeAll(fd, zeros.subarray(0, p));
    });
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, outPath);
  return { path: outPath, bytes: dataOffset + offset, dataOffset };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += fs.writeSync(fd, bytes, done, bytes.byteLength - done);
}

// ---------------------------------------------------------------------------------------------
// Reader (header only, plus raw tensor bytes for tests)

export interface GgufTensorInfo {
  name: string;
  dims: number[];
  /** ggml type id. */
  type: number;
  /** Offset relative to the data section. */
  offset: number;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute byte offset of the data section. */
  dataOffset: number;
}

class FdCursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;
  constructor(private readonly fd: number, private readonly size: number, private readonly file: string) {}
  private need(n: number) {
    if (this.pos + n <= this.bufStart + this.buf.length) return;
    if (this.pos + n > this.size) throw new CheckpointCorruptError(`${this.file} is truncated: the GGUF header runs past the end of the file`);
    const len = Math.min(this.size - this.pos, Math.max(n, 1 << 20));
    const b = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      const r = fs.readSync(this.fd, b, done, len - done, this.pos + done);
      if (r === 0) break;
      done += r;
    }
    this.buf = b.subarray(0, done);
    this.bufStart = this.pos;
    if (done < n) throw new CheckpointCorruptError(`${this.file} ended early while reading the GGUF header`);
  }
  private at(n: number): number {
    this.need(n);
    const o = this.pos - this.bufStart;
    this.pos += n;
    return o;
  }
  u8() { const o = this.at(1); return this.buf.readUInt8(o); }
  i8() { const o = this.at(1); return this.buf.readInt8(o); }
  u16() { const o = this.at(2); return this.buf.readUInt16LE(o); }
  i16() { const o = this.at(2); return this.buf.readInt16LE(o); }
  u32() { const o = this.at(4); return this.buf.readUInt32LE(o); }
  i32() { const o = this.at(4); return this.buf.readInt32LE(o); }
  f32() { const o = this.at(4); return this.buf.readFloatLE(o); }
  f64() { const o = this.at(8); return this.buf.readDoubleLE(o); }
  u64big() { const o = this.at(8); return this.buf.readBigUInt64LE(o); }
  i64big() { const o = this.at(8); return this.buf.readBigInt64LE(o); }
  u64() {
    const v = this.u64big();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CheckpointCorruptError(`${this.file}: implausible 64-bit count ${v} in the GGUF header`);
    return Number(v);
  }
  str() {
    const n = this.u64();
    if (n > this.size) throw new CheckpointCorruptError(`${this.file}: string length ${n} exceeds the file size`);
    const o = this.at(n);
    return this.buf.toString("utf8", o, o + n);
  }
}

function readScalar(c: FdCursor, type: GgufValueType): number | bigint | boolean | string {
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
    case GgufValueType.BOOL: return c.u8() !== 0;
    case GgufValueType.STRING: return c.str();
    default:
      throw new CheckpointCorruptError(`unknown GGUF value type ${type}`);
  }
}

/** Reads a GGUF v2/v3 header: metadata and tensor infos (no tensor data). */
export function readGgufHeader(file: string): GgufHeader {
  const fd = fs.openSync(file, "r");
  try {
    const size = fs.fstatSync(fd).size;
    const c = new FdCursor(fd, size, file);
    if (c.u32() !== GGUF_MAGIC) throw new CheckpointCorruptError(`${file} is not a GGUF file (bad magic)`);
    const version = c.u32();
    if (version < 2 || version > 3) throw new CheckpointCorruptError(`${file} is GGUF version ${version}; only 2 and 3 are read`);
    const tensorCount = c.u64();
    const kvCount = c.u64();
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < kvCount; i++) {
      const key = c.str();
      const type = c.u32() as GgufValueType;
      if (type === GgufValueType.ARRAY) {
        const itemType = c.u32() as Exclude<GgufValueType, GgufValueType.ARRAY>;
        const n = c.u64();
        const value: (number | bigint | boolean | string)[] = new Array(n);
        for (let j = 0; j < n; j++) value[j] = readScalar(c, itemType);
        metadata.set(key, { type, itemType, value });
      } else {
        metadata.set(key, { type, value: readScalar(c, type) } as GgufScalar);
      }
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < tensorCount; i++) {
      const name = c.str();
      const nd = c.u32();
      const dims: number[] = [];
      for (let j = 0; j < nd; j++) dims.push(c.u64());
      const type = c.u32();
      const offset = c.u64();
      tensors.push({ name, dims, type, offset });
    }
    const a = metadata.get("general.alignment");
    const alignment = a && a.type !== GgufValueType.ARRAY ? Number(a.value) : GGUF_DEFAULT_ALIGNMENT;
    const dataOffset = c.pos + pad(c.pos, alignment);
    return { version, metadata, tensors, alignment, dataOffset };
  } finally {
    fs.closeSync(fd);
  }
}

/** The raw bytes of one tensor of a GGUF file (any ggml type; see ggufReader.ts for validation). */
export function readGgufTensorBytes(file: string, header: GgufHeader, name: string): Uint8Array {
  const t = header.tensors.find((x) => x.name === name);
  if (!t) throw new CheckpointCorruptError(`${file} has no tensor ${name}`);
  const info = ggmlTypeInfo(t.type);
  if (!info) throw new MoeRunError("INVALID_OPTION", `tensor ${name} has unknown ggml type id ${t.type}`);
  const bytes = Buffer.alloc((t.dims.reduce((a, b) => a * b, 1) / info.blockSize) * info.typeSize);
  const fd = fs.openSync(file, "r");
  try {
    let done = 0;
    while (done < bytes.length) {
      const r = fs.readSync(fd, bytes, done, bytes.length - done, header.dataOffset + t.offset + done);
      if (r === 0) throw new CheckpointCorruptError(`${file} ended early while reading ${name}`);
      done += r;
    }
  } finally {
    fs.closeSync(fd);
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}

/** A metadata value as a plain JS value (scalars, or arrays of them). */
export function ggufValue(header: GgufHeader, key: string): unknown {
  return header.metadata.get(key)?.value;
}

// ---------------------------------------------------------------------------------------------
// Number formats


/** Raw little-endian bytes of a float dtype -> fp32 (table-driven for F16). */
export function toFloat32(bytes: Uint8Array, dtype: FloatDType): Float32Array {
  switch (dtype) {
    case "F32": {
      const out = new Float32Array(bytes.byteLength / 4);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    case "F16": {
      const n = bytes.byteLength / 2;
      const src = bytes.byteOffset % 2 === 0 ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint16Array(bytes.slice().buffer);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = HALF_TO_FLOAT[src[i]!]!;
      return out;
    }
    case "BF16": {
      const n = bytes.byteLength / 2;
      const src = bytes.byteOffset % 2 === 0 ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint16Array(bytes.slice().buffer);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i]! << 16;
      return out;
    }
  }
}

/** fp32 -> IEEE half bits (round to nearest even), as little-endian bytes. */
export function toFloat16Bytes(values: Float32Array): Uint8Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatToHalf(values[i]!);
  return new Uint8Array(out.buffer);
}

/** The value an fp16 bit pattern stands for. */
export function halfBitsToFloat(h: number): number {
  return HALF_TO_FLOAT[h & 0xffff]!;
}

/**
 * Q8_0 as llama.cpp's quantize_row_q8_0_ref: per block of 32, d = amax / 127 (fp32), stored as
 * fp16; q = roundf(x * (1/d)) (round half away from zero), with 1/d taken as 0 when d is 0.
 */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % Q8_0_BLOCK !== 0) throw new MoeRunError("INVALID_OPTION", `Q8_0 needs a multiple of 32 values, got ${x.length}`);
  return quantize(GgmlType.Q8_0, x);
}

/** Q8_0 bytes -> fp32 (d * q). */
export function dequantizeQ8_0(bytes: Uint8Array): Float32Array {
  const nb = bytes.byteLength / Q8_0_BLOCK_BYTES;
  invariant(Number.isInteger(nb), "Q8_0 data must be whole blocks");
  return dequantize(GgmlType.Q8_0, bytes, nb * Q8_0_BLOCK);
}

/** Any decodable ggml tensor's bytes -> fp32 (for tests and tools). */
export function ggmlToFloat32(bytes: Uint8Array, type: number): Float32Array {
  const t = ggmlTypeInfo(type);
  if (!t) throw new MoeRunError("INVALID_OPTION", `ggml type ${type} is not supported here`);
  return dequantize(type, bytes, (bytes.byteLength / t.typeSize) * t.blockSize);
}

/**
 * Reorders the rows of a q or k projection [heads * headDim, cols] from the half-split RoPE
 * layout (rows i and i + headDim/2 of a head form a pair) to the adjacent-pair layout (rows 2j
 * and 2j+1), as llama.cpp's converter does: new row h*hd + 2j + s = old row h*hd + s*hd/2 + j.
 */
export function permuteRopeRows(w: Float32Array, heads: number, cols: number): Float32Array {
  const rows = w.length / cols;
  invariant(Number.isInteger(rows) && rows % heads === 0 && (rows / heads) % 2 === 0, "q/k rows must be heads * even headDim");
  const hd = rows / heads;
  const half = hd / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      for (let s = 0; s < 2; s++) {
        const src = (h * hd + s * half + j) * cols;
        out.set(w.subarray(src, src + cols), (h * hd + 2 * j + s) * cols);
      }
    }
  }
  return out;
}
