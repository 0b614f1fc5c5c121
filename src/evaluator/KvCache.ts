/**
 * Per-layer attention keys and values of one sequence, in the form the dense layers compute
 * with: onnx keeps the tensors its graphs return ([Hkv, S, hd] fp32, copied in and out of
 * onnxruntime each step); native keeps buffers [Hkv, capacity, hd] (fp32, or IEEE halves) that
 * the layer appends to in place and that grow by doubling or to the planned length (the only
 * copies, counted in copiedBytes).
 */
import type { HostTensor } from "../backends/onnx.js";
import { kvShape, type ModelDims } from "../architectures/ModelDims.js";

/**
 * How the native dense layers hold cached keys and values: "f16" halves the bytes attention reads
 * per token at long contexts (llama.cpp's default cache type), "f32" keeps them exact.
 */
export type KvCachePrecision = "f32" | "f16";
export const KV_CACHE_PRECISIONS: readonly KvCachePrecision[] = ["f32", "f16"];

/**
 * An empty cache shaped for the model (multi-head latent attention: latent rows, no values).
 * `precision` applies to the native buffers (ModelRunner.kvPrecision says which applies).
 */
export function newKvCache(d: ModelDims, precision: KvCachePrecision = "f32"): KvCache {
  const s = kvShape(d);
  return new KvCache(d.numLayers, s.heads, s.keyDim, s.valueDim, precision);
}

export class KvCache {
  /** Number of positions held. */
  length = 0;
  /** onnx: [Hkv, length, hd] per layer. */
  readonly keys: HostTensor[] = [];
  readonly values: HostTensor[] = [];
  /** native: [Hkv, capacity, hd] per layer, fp32 or (precision f16) IEEE halves. */
  readonly nativeKeys: (Float32Array | Uint16Array)[] = [];
  readonly nativeValues: (Float32Array | Uint16Array)[] = [];
  /** Positions the native buffers hold room for. */
  capacity = 0;
  /**
   * Positions the sequence is expected to reach (prompt + tokens to generate): the first growth
   * goes straight there, so a long prompt's cache is not copied again by the first decode step.
   */
  plannedLength = 0;
  /** Bytes copied by growing the native buffers (the KV handling cost outside the kernels). */
  copiedBytes = 0;
  /** The token ids of the cached positions (to recompute them when the RoPE regime changes). */
  readonly tokens: number[] = [];
  /** The RoPE regime the cached keys were rotated in (rope.ts ropeRegime). */
  ropeRegime = "";

  /** valueDim: the width of value rows (0: no values, multi-head latent attention keeps only its latent rows as keys). */
  constructor(
    readonly numLayers: number,
    private readonly numKvHeads: number,
    private readonly headDim: number,
    private readonly valueDim = headDim,
    readonly precision: KvCachePrecision = "f32"
  ) {
    this.reset();
  }

  /** Empties the cache (native buffers are kept for reuse). */
  reset(): void {
    this.length = 0;
    this.tokens.length = 0;
    this.ropeRegime = "";
    const empty = (width: number): HostTensor => ({ data: new Float32Array(0), dims: [this.numKvHeads, 0, width] });
    this.keys.length = 0;
    this.values.length = 0;
    for (let l = 0; l < this.numLayers; l++) {
      this.keys.push(empty(this.headDim));
      this.values.push(empty(this.valueDim));
    }
  }

  /** Forgets every position from `positions` on (the earlier ones stay valid and are reused). */
  truncate(positions: number): void {
    if (!Number.isInteger(positions) || positions < 0 || positions > this.length) throw new RangeError(`cannot truncate a KV cache of ${this.length} positions to ${positions}`);
    if (positions === 0) return this.reset();
    const Hkv = this.numKvHeads;
    const cut = (t: HostTensor): HostTensor => {
      const S = t.dims[1]!;
      const hd = t.dims[2]!;
      if (S <= positions) return t;
      const data = new Float32Array(Hkv * positions * hd); // [Hkv, positions, hd]
      for (let g = 0; g < Hkv; g++) data.set(t.data.subarray(g * S * hd, (g * S + positions) * hd), g * positions * hd);
      return { data, dims: [Hkv, positions, hd] };
    };
    for (let l = 0; l < this.keys.length; l++) {
      this.keys[l] = cut(this.keys[l]!);
      this.values[l] = cut(this.values[l]!);
    }
    // Native buffers: positions past `length` are simply overwritten by the next tokens.
    this.length = positions;
    this.tokens.length = positions;
  }

  /**
   * Makes the native buffers hold at least `positions` positions, keeping their contents:
   * capacity at least doubles, so appending N tokens one by one copies O(N) positions in all.
   * `allocate` (the native layers give one) returns zeroed memory for all layers' keys and values
   * in one block, in huge pages where the system gives them: the hardware prefetcher stops at
   * every 4 KiB page, and a plain read of the 600m model's 2,048-position cache (16.8 MB) ran at
   * 8.5 GB/s in 4 KiB pages against 12.7 in huge ones. Without it each buffer is an ordinary
   * typed array.
   */
  reserve(positions: number, allocate?: (bytes: number) => Uint8Array): void {
    if (positions <= this.capacity) return;
    const Hkv = this.numKvHeads;
    const next = Math.max(positions, 2 * this.capacity, 64, this.plannedLength);
    const Rows = this.precision === "f16" ? Uint16Array : Float32Array;
    const el = Rows.BYTES_PER_ELEMENT;
    // Per layer, keys then values: [Hkv, next, headDim] and [Hkv, next, valueDim] elements.
    const layerBytes = Hkv * next * (this.headDim + this.valueDim) * el;
    const block = allocate?.(this.numLayers * layerBytes);
    let offset = 0;
    const grow = (old: Float32Array | Uint16Array | undefined, hd: number): Float32Array | Uint16Array => {
      const n = Hkv * next * hd;
      const fresh = block ? new Rows(block.buffer as ArrayBuffer, block.byteOffset + offset, n) : new Rows(n); // [Hkv, next, hd]
      offset += n * el;
      if (old && this.length > 0) {
        for (let g = 0; g < Hkv; g++) fresh.set(old.subarray(g * this.capacity * hd, (g * this.capacity + this.length) * hd), g * next * hd);
        this.copiedBytes += Hkv * this.length * hd * el;
      }
      return fresh;
    };
    for (let l = 0; l < this.numLayers; l++) {
      this.nativeKeys[l] = grow(this.nativeKeys[l], this.headDim);
      this.nativeValues[l] = grow(this.nativeValues[l], this.valueDim);
    }
    this.capacity = next;
  }
}
