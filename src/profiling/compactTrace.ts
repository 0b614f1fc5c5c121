/**
 * Compact binary routing trace, for long traces (21 bytes per top-2 record, ~5x less than JSONL):
 *
 *   bytes 0-7    magic "MOETRACE"
 *   bytes 8-11   uint32 LE: H, the header's length in bytes (a multiple of 4)
 *   bytes 12..   header: UTF-8 JSON padded with spaces to H bytes:
 *                {"format":"moe-run-trace-compact","version":1,"records":N,"entries":M,
 *                 "numLayers","numExperts","topK","expertType":"u8"|"u16","hasProbs":bool,
 *                 "gateDim":G, "model"?, "expertBytes"?}
 *   then these arrays, little-endian, each starting at a multiple of 4 bytes (zero padding):
 *     seq Uint32[N], token Uint32[N], layer Uint16[N], count Uint8[N] (experts per record),
 *     experts Uint8[M] or Uint16[M] (u8 when numExperts <= 256), weights Float32[M],
 *     probs Float32[N * numExperts] if hasProbs, gate Float32[N * G] if G > 0.
 *
 * Records are stored in access order. Weights, probs and gate are float32: a JSONL trace written
 * from a compact one round-trips exactly, a float64 JSONL one to float32 precision.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import { finishTrace, TraceInvalidError, type RoutingRecord, type RoutingTrace, type TraceMeta } from "./trace.js";

export const COMPACT_MAGIC = "MOETRACE";
export const COMPACT_FORMAT = "moe-run-trace-compact";

interface CompactHeader {
  format: string;
  version: number;
  records: number;
  entries: number;
  numLayers: number;
  numExperts: number;
  topK: number;
  expertType: "u8" | "u16";
  hasProbs: boolean;
  gateDim: number;
  model?: string;
  expertBytes?: number;
}

const align4 = (n: number) => (n + 3) & ~3;

function assertLittleEndianHost(): void {
  // Typed arrays use the host byte order; every platform Node supports today is little-endian.
  if (os.endianness() !== "LE") throw new TraceInvalidError("compact traces can only be read and written on little-endian hosts");
}

export function isCompactTrace(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString("latin1") === COMPACT_MAGIC;
}

export function encodeCompactTrace(trace: RoutingTrace): Buffer {
  assertLittleEndianHost();
  const { meta, records } = trace;
  const n = records.length;
  const withProbs = records.filter((r) => r.probs).length;
  const withGate = records.filter((r) => r.gate).length;
  if (withProbs !== 0 && withProbs !== n) throw new TraceInvalidError(`only ${withProbs} of ${n} records have "probs"; the compact format stores probs for all records or none`);
  if (withGate !== 0 && withGate !== n) throw new TraceInvalidError(`only ${withGate} of ${n} records have "gate"; the compact format stores the gate input for all records or none`);
  const gateDim = withGate ? records[0]!.gate!.length : 0;
  if (records.some((r) => (r.gate?.length ?? 0) !== gateDim)) throw new TraceInvalidError(`records have gate inputs of different lengths`);
  let m = 0;
  for (const r of records) {
    if (r.experts.length > 255) throw new TraceInvalidError(`a record has ${r.experts.length} experts; the compact format stores at most 255 per record`);
    m += r.experts.length;
  }
  const expertType = meta.numExperts <= 256 ? "u8" : "u16";
  const header: CompactHeader = {
    format: COMPACT_FORMAT, version: 1, records: n, entries: m,
    numLayers: meta.numLayers, numExperts: meta.numExperts, topK: meta.topK,
    expertType, hasProbs: withProbs === n && n > 0, gateDim,
  };
  if (meta.model !== undefined) header.model = meta.model;
  if (meta.expertBytes !== undefined) header.expertBytes = meta.expertBytes;

  const seq = new Uint32Array(n);
  const token = new Uint32Array(n);
  const layer = new Uint16Array(n);
  const count = new Uint8Array(n);
  const experts = expertType === "u8" ? new Uint8Array(m) : new Uint16Array(m);
  const weights = new Float32Array(m);
  const probs = new Float32Array(header.hasProbs ? n * meta.numExperts : 0);
  const gate = new Float32Array(n * gateDim);
  let j = 0;
  records.forEach((r, i) => {
    seq[i] = r.seq;
    token[i] = r.token;
    layer[i] = r.layer;
    count[i] = r.experts.length;
    for (let k = 0; k < r.experts.length; k++, j++) {
      experts[j] = r.experts[k]!;
      weights[j] = r.weights[k]!;
    }
    if (header.hasProbs) probs.set(r.probs!, i * meta.numExperts);
    if (gateDim) gate.set(r.gate!, i * gateDim);
  });
  const headerText = JSON.stringify(header);
  const headerBytes = Buffer.from(headerText.padEnd(align4(Buffer.byteLength(headerText)), " "));
  const parts: Buffer[] = [Buffer.from(COMPACT_MAGIC, "latin1"), Buffer.alloc(4), headerBytes];
  parts[1]!.writeUInt32LE(headerBytes.length, 0);
  for (const a of [seq, token, layer, count, experts, weights, probs, gate]) {
    const b = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    parts.push(b, Buffer.alloc(align4(b.length) - b.length));
  }
  return Buffer.concat(parts);
}

export function decodeCompactTrace(bytes: Uint8Array, source = "trace"): RoutingTrace {
  assertLittleEndianHost();
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!isCompactTrace(buf)) throw new TraceInvalidError(`${source}: not a compact moe-run trace (no "${COMPACT_MAGIC}" magic)`);
  if (buf.length < 12) throw new TraceInvalidError(`${source}: truncated header`);
  const headerLen = buf.readUInt32LE(8);
  if (12 + headerLen > buf.length) throw new TraceInvalidError(`${source}: header length ${headerLen} runs past the end of the ${buf.length}-byte file`);
  let h: CompactHeader;
  try {
    h = JSON.parse(buf.subarray(12, 12 + headerLen).toString("utf8")) as CompactHeader;
  } catch (err) {
    throw new TraceInvalidError(`${source}: header is not JSON (${(err as Error).message})`);
  }
  if (h.format !== COMPACT_FORMAT || h.version !== 1) throw new TraceInvalidError(`${source}: header says format ${JSON.stringify(h.format)} version ${JSON.stringify(h.version)}; expected "${COMPACT_FORMAT}" version 1`);
  for (const f of ["records", "entries", "numLayers", "numExperts", "topK", "gateDim"] as const) {
    if (!Number.isInteger(h[f]) || h[f] < 0) throw new TraceInvalidError(`${source}: header field "${f}" must be a whole number, got ${JSON.stringify(h[f])}`);
  }
  const n = h.records;
  const m = h.entries;
  let off = 12 + headerLen;
  // Copy each section out so that typed-array alignment never depends on the file buffer.
  const take = <T>(make: (ab: ArrayBuffer) => T, byteLength: number, what: string): T => {
    if (off + byteLength > buf.length) throw new TraceInvalidError(`${source}: truncated: the ${what} array runs past the end of the file`);
    const ab = new ArrayBuffer(byteLength);
    new Uint8Array(ab).set(buf.subarray(off, off + byteLength));
    off = align4(off + byteLength);
    return make(ab);
  };
  const seq = take((ab) => new Uint32Array(ab), 4 * n, "seq");
  const token = take((ab) => new Uint32Array(ab), 4 * n, "token");
  const layer = take((ab) => new Uint16Array(ab), 2 * n, "layer");
  const count = take((ab) => new Uint8Array(ab), n, "count");
  const experts = h.expertType === "u16" ? take((ab) => new Uint16Array(ab), 2 * m, "experts") : take((ab) => new Uint8Array(ab), m, "experts");
  const weights = take((ab) => new Float32Array(ab), 4 * m, "weights");
  const probs = h.hasProbs ? take((ab) => new Float32Array(ab), 4 * n * h.numExperts, "probs") : undefined;
  const gate = h.gateDim > 0 ? take((ab) => new Float32Array(ab), 4 * n * h.gateDim, "gate") : undefined;
  let total = 0;
  for (let i = 0; i < n; i++) total += count[i]!;
  if (total !== m) throw new TraceInvalidError(`${source}: per-record counts add up to ${total} but the header says ${m} entries`);

  const records: RoutingRecord[] = new Array(n);
  let j = 0;
  for (let i = 0; i < n; i++) {
    const c = count[i]!;
    const r: RoutingRecord = { seq: seq[i]!, token: token[i]!, layer: layer[i]!, experts: Array.from(experts.subarray(j, j + c)), weights: Array.from(weights.subarray(j, j + c)) };
    if (probs) r.probs = Array.from(probs.subarray(i * h.numExperts, (i + 1) * h.numExperts));
    if (gate) r.gate = Array.from(gate.subarray(i * h.gateDim, (i + 1) * h.gateDim));
    records[i] = r;
    j += c;
  }
  const meta: TraceMeta = { numLayers: h.numLayers, numExperts: h.numExperts, topK: h.topK };
  if (typeof h.model === "string") meta.model = h.model;
  if (h.expertBytes !== undefined) meta.expertBytes = h.expertBytes;
  return finishTrace(records, meta, source);
}

export function readCompactTrace(file: string): RoutingTrace {
  return decodeCompactTrace(fs.readFileSync(file), file);
}

export function writeCompactTrace(file: string, trace: RoutingTrace): void {
  fs.writeFileSync(file, encodeCompactTrace(trace));
}
