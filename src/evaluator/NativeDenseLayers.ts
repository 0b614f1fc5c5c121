/**
 * The dense layers on the native kernels, computing from weights at the experts' width: a token
 * reads as many dense bytes as llama.cpp's GGUF of the same precision. Weights are read from the
 * importer's graph files (fp32) once at load and encoded in memory, except the matrices a GGUF
 * import kept as the file stored them (manifest.denseBlocks: Q4_K, Q6_K, ... read as they are);
 * no onnxruntime session.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { layerWindow, modelFeatures, type ModelDims } from "../architectures/ModelDims.js";
import { invariant, MoeRunError } from "../errors.js";
import type { NativeAddon } from "../kernels/nativeAddon.js";
import type { DenseBlock, ModelManifest } from "../model/manifest.js";
import { readFloatInitializer, readGraph } from "../onnx/graphFile.js";
import { encodingCode, matrixBytes, BLOCK, type ExpertEncoding } from "../store/expertEncoding.js";
import type { DecodeLayers, DenseLayers, LayerOutputs, RopeTables } from "./DenseLayers.js";
import type { KvCache } from "./KvCache.js";

/** Section order of a layer blob; must match `enum Section` in native-bindings/src/dense_layer.h. */
const SECTIONS = [
  { name: "input_norm", matrix: false },
  { name: "q_proj", matrix: true },
  { name: "k_proj", matrix: true },
  { name: "v_proj", matrix: true },
  { name: "o_proj", matrix: true },
  { name: "q_bias", matrix: false },
  { name: "k_bias", matrix: false },
  { name: "v_bias", matrix: false },
  { name: "q_norm", matrix: false },
  { name: "k_norm", matrix: false },
  { name: "post_attention_norm", matrix: false },
  { name: "router", matrix: false }, // kept fp32: routing decisions should not move with precision
  { name: "shared_gate", matrix: true },
  { name: "shared_up", matrix: true },
  { name: "shared_down", matrix: true },
  { name: "shared_expert_gate", matrix: false },
  { name: "input_norm_bias", matrix: false },
  { name: "o_bias", matrix: false },
  { name: "sinks", matrix: false },
  { name: "post_attention_norm_bias", matrix: false },
  { name: "router_bias", matrix: false },
  // Multi-head latent attention (dense_layer.h kMla*); mla_uk is stored [Hq, nope, r] and
  // transposed here to per-head W_uk^T [Hq*r, nope].
  { name: "mla_q_a", matrix: true },
  { name: "mla_q_a_bias", matrix: false },
  { name: "mla_q_a_norm", matrix: false },
  { name: "mla_q_b", matrix: true },
  { name: "mla_kv_a", matrix: true },
  { name: "mla_kv_a_bias", matrix: false },
  { name: "mla_kv_a_norm", matrix: false },
  { name: "mla_uk", matrix: true },
  { name: "mla_uv", matrix: true },
] as const;

/** MLA up-projections are sliced per head by row: held at f32 or f16 (not block-quantised). */
const WHOLE_ROWS = new Set<string>(["mla_uk", "mla_uv"]);

const QK_NORM = { none: 0, head: 1, full: 2 } as const;
const F32 = encodingCode("f32");
/** Sections start at multiples of this (cache lines; SIMD loads stay aligned). */
const ALIGN = 64;

/**
 * The encoding a dense matrix with `cols` columns is held in: the experts' own, except that
 * int4 experts get int8 dense weights (attention is more sensitive to 4-bit error, and small),
 * and block-quantised encodings need whole blocks per row (else f16).
 */
export function denseEncoding(experts: ExpertEncoding, cols: number): ExpertEncoding {
  if (experts === "f32" || experts === "f16") return experts;
  return cols % BLOCK === 0 ? "int8" : "f16";
}

/** One encoded matrix or vector held in native memory. */
interface Held {
  enc: number;
  rows: number;
  cols: number;
  data: Uint8Array;
}

export class NativeDenseLayers implements DenseLayers {
  readonly name = "native" as const;
  readonly bytesPerToken: number;
  /**
   * Spec of each layer: [H, Hq, Hkv, hd, E, Fs, eps, qkNorm, norm, attnScale, rotaryDim, window,
   * qRank, kvRank, nope, ropeDim, vDim, kvF16] (dense_native.cc); kvF16 is set per call from the cache.
   */
  private readonly specs: Float64Array[];
  private disposed = false;
  private decodeArgs: DecodeLayers | undefined;

  private constructor(
    private readonly addon: NativeAddon,
    private readonly dims: ModelDims,
    private readonly threads: number,
    private readonly layerBlobs: { blob: Uint8Array; sections: Float64Array; bytesPerToken: number; experts: number; sharedFfn: number }[],
    private readonly embedding: Held,
    private readonly finalNorm: { weight: Float32Array; bias?: Float32Array },
    private readonly lmHead: Held,
    private readonly lmHeadBias: Float32Array | undefined
  ) {
    const d = dims;
    const f = modelFeatures(d);
    const scale = f.attentionScale || 1 / Math.sqrt(d.headDim);
    // Per layer: dense layers have no router (E = 0) and their MLP in the shared-expert slots.
    const m = f.mla;
    const mla = m ? [m.qLoraRank, m.kvLoraRank, m.nopeDim, m.ropeDim, m.vDim] : [0, 0, 0, 0, 0];
    this.specs = layerBlobs.map((b, l) =>
      Float64Array.from([d.hiddenSize, d.numHeads, d.numKvHeads, d.headDim, b.experts, b.sharedFfn, d.rmsNormEps, QK_NORM[d.qkNorm], f.norm === "layer" ? 1 : 0, scale, f.rope.rotaryDim, layerWindow(f, l), ...mla, 0])
    );
    this.bytesPerToken = layerBlobs.reduce((s, b) => s + b.bytesPerToken, 0) + lmHead.data.byteLength + finalNorm.weight.byteLength;
  }

  /**
   * Reads and encodes the dense weights at the experts' width (`experts`: the model's expert
   * encoding), or takes the matrices a GGUF file stored as they are (manifest.denseBlocks).
   */
  static create(modelDir: string, manifest: ModelManifest, addon: NativeAddon, threads: number): NativeDenseLayers {
    const d = manifest.dims;
    const experts = manifest.precision.experts;
    const held: Uint8Array[] = [];
    const alloc = (bytes: number) => {
      const a = addon.allocRange(Math.max(bytes, 1));
      held.push(a);
      return a;
    };
    const kept = manifest.denseBlocks;
    const keptFd = kept ? fs.openSync(path.join(modelDir, kept.file), "r") : undefined;
    // A kept matrix's bytes, read into `dst` (its size checked against the manifest at load).
    const readKept = (b: DenseBlock, dst: Uint8Array) => {
      const n = fs.readSync(keptFd!, dst, 0, b.bytes, b.offset);
      if (n !== b.bytes) throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${path.join(modelDir, kept!.file)} ends inside a matrix; re-import the model`);
    };
    try {
      const encode = (src: Float32Array, rows: number, cols: number, enc: ExpertEncoding): Held => {
        const bytes = matrixBytes(enc, rows, cols);
        const data = alloc(bytes).subarray(0, bytes);
        addon.encodeMatrix(encodingCode(enc), src, rows, cols, data);
        return { enc: encodingCode(enc), rows, cols, data };
      };
      const layerBlobs = manifest.graphs.layers.map((rel, l) => {
        const graph = readGraph(modelDir, rel);
        const parts: { offset: number; bytes: number; enc: number; src?: Float32Array; block?: DenseBlock; rows: number; cols: number }[] = [];
        let size = 0;
        let bytesPerToken = 0;
        for (const s of SECTIONS) {
          const init = graph.inits.get(s.name);
          if (!init) {
            parts.push({ offset: -1, bytes: 0, enc: F32, rows: 0, cols: 0 });
            continue;
          }
          const block = kept?.layers[l]?.[s.name];
          if (block) {
            size = Math.ceil(size / ALIGN) * ALIGN;
            parts.push({ offset: size, bytes: block.bytes, enc: encodingCode(block.encoding), block, rows: block.rows, cols: block.cols });
            size += block.bytes;
            bytesPerToken += block.bytes;
            continue;
          }
          // Matrices are [rows, cols]; vectors (e.g. sinks [Hkv, G, 1, 1]) are one row of all their values.
          let rows = init.dims.length === 2 ? init.dims[0]! : 1;
          let cols = init.dims.reduce((a, b) => a * b, 1) / rows;
          let src = readFloatInitializer(modelDir, rel, graph, s.name);
          if (s.name === "mla_uk") {
            const [nh, dn, r] = init.dims as [number, number, number];
            src = transposeHeads(src, nh, dn, r);
            [rows, cols] = [nh * r, dn];
          } else if (s.name === "mla_uv") {
            [rows, cols] = [init.dims[0]! * init.dims[1]!, init.dims[2]!];
          }
          const whole = experts === "f32" ? "f32" : "f16";
          const enc = WHOLE_ROWS.has(s.name) ? whole : s.matrix ? denseEncoding(experts, cols) : "f32";
          const bytes = matrixBytes(enc, rows, cols);
          size = Math.ceil(size / ALIGN) * ALIGN;
          parts.push({ offset: size, bytes, enc: encodingCode(enc), src, rows, cols });
          size += bytes;
          bytesPerToken += bytes;
        }
        const blob = alloc(size).subarray(0, size);
        const sections = new Float64Array(SECTIONS.length * 3);
        parts.forEach((p, i) => {
          sections.set([p.offset, p.bytes, p.enc], i * 3);
          if (p.offset < 0) return;
          const dst = blob.subarray(p.offset, p.offset + p.bytes);
          if (p.block) return readKept(p.block, dst);
          if (!p.src) return;
          if (p.enc === F32) dst.set(new Uint8Array(p.src.buffer, p.src.byteOffset, p.src.byteLength));
          else addon.encodeMatrix(p.enc, p.src, p.rows, p.cols, dst);
        });
        const dimsOf = (name: string) => graph.inits.get(name)?.dims;
        return { blob, sections, bytesPerToken, experts: dimsOf("router")?.[0] ?? 0, sharedFfn: dimsOf("shared_up")?.[0] ?? 0 };
      });
      const embedGraph = readGraph(modelDir, manifest.graphs.embed);
      const headGraph = readGraph(modelDir, manifest.graphs.head);
      const H = d.hiddenSize;
      // The embedding is looked up one row per token, so its width costs memory, not speed.
      const embedding = encode(readFloatInitializer(modelDir, manifest.graphs.embed, embedGraph, "embed_tokens"), d.vocabSize, H, experts === "f32" ? "f32" : "f16");
      const headInit = (name: string) => (headGraph.inits.has(name) ? readFloatInitializer(modelDir, manifest.graphs.head, headGraph, name) : undefined);
      const finalNorm = { weight: headInit("norm")!, bias: headInit("norm_bias") };
      const keptHead = kept?.lmHead;
      let lmHead: Held;
      if (keptHead) {
        const data = alloc(keptHead.bytes).subarray(0, keptHead.bytes);
        readKept(keptHead, data);
        lmHead = { enc: encodingCode(keptHead.encoding), rows: keptHead.rows, cols: keptHead.cols, data };
      } else {
        lmHead = encode(headInit("lm_head")!, d.vocabSize, H, denseEncoding(experts, H));
      }
      return new NativeDenseLayers(addon, d, threads, layerBlobs, embedding, finalNorm, lmHead, headInit("lm_head_bias"));
    } catch (err) {
      for (const a of held) addon.releaseRange(a);
      throw err;
    } finally {
      if (keptFd !== undefined) fs.closeSync(keptFd);
    }
  }

  reserve(kv: KvCache, T: number): void {
    kv.reserve(kv.length + T, (bytes) => this.addon.allocRange(Math.max(bytes, 1)));
  }

  async embed(ids: readonly number[]): Promise<Float32Array> {
    const e = this.embedding;
    const out = new Float32Array(ids.length * e.cols); // [T, H]
    this.addon.gatherRows(e.enc, e.data, e.rows, e.cols, Int32Array.from(ids), out);
    return out;
  }

  async layer(layer: number, hidden: Float32Array, T: number, kv: KvCache, rope: RopeTables): Promise<LayerOutputs> {
    invariant(!this.disposed, "NativeDenseLayers used after dispose()");
    const d = this.dims;
    const H = d.hiddenSize;
    invariant(kv.capacity >= kv.length + T, `KV cache holds ${kv.capacity} positions, needs ${kv.length + T}: reserve() first`);
    const { blob, sections, experts, sharedFfn } = this.layerBlobs[layer]!;
    const attnOut = new Float32Array(T * H); // [T, H]
    const moeIn = new Float32Array(T * H); // [T, H]
    const routerLogits = new Float32Array(T * experts); // [T, E]; empty in dense layers
    const sharedOut = sharedFfn > 0 ? new Float32Array(T * H) : undefined; // [T, H]
    const spec = this.specs[layer]!;
    spec[17] = kv.precision === "f16" ? 1 : 0;
    this.addon.denseLayer(spec, blob, sections, hidden, T, kv.length, rope.cos, rope.sin, kv.nativeKeys[layer]!, kv.nativeValues[layer]!, kv.capacity, attnOut, moeIn, routerLogits, sharedOut ?? null, this.threads);
    return { attnOut, moeIn, routerLogits, sharedOut };
  }

  decodeLayers(kv: KvCache): DecodeLayers | undefined {
    invariant(!this.disposed, "NativeDenseLayers used after dispose()");
    if (modelFeatures(this.dims).mla) return undefined;
    const f16 = kv.precision === "f16" ? 1 : 0;
    for (const s of this.specs) s[17] = f16;
    this.decodeArgs ??= { specs: this.specs, blobs: this.layerBlobs.map((b) => b.blob), sections: this.layerBlobs.map((b) => b.sections), shared: this.layerBlobs.map((b) => b.sharedFfn > 0) };
    return this.decodeArgs;
  }

  async head(hidden: Float32Array, T: number): Promise<Float32Array> {
    const d = this.dims;
    const normed = new Float32Array(T * d.hiddenSize); // [T, H]
    const norm = this.finalNorm;
    if (norm.bias) this.addon.layerNorm(hidden, T, d.hiddenSize, norm.weight, norm.bias, d.rmsNormEps, normed);
    else this.addon.rmsNorm(hidden, T, d.hiddenSize, norm.weight, d.rmsNormEps, normed);
    const logits = new Float32Array(T * d.vocabSize); // [T, V]
    const m = this.lmHead;
    this.addon.matmul(m.enc, m.data, m.rows, m.cols, normed, T, logits, this.threads);
    const bias = this.lmHeadBias;
    if (bias) for (let t = 0; t < T; t++) for (let v = 0; v < d.vocabSize; v++) logits[t * d.vocabSize + v] = logits[t * d.vocabSize + v]! + bias[v]!;
    return logits;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of this.layerBlobs) this.addon.releaseRange(b.blob);
    this.addon.releaseRange(this.embedding.data);
    this.addon.releaseRange(this.lmHead.data);
  }
}

/** [nh, a, b] -> [nh, b, a]: each head's matrix transposed. */
function transposeHeads(src: Float32Array, nh: number, a: number, b: number): Float32Array {
  const out = new Float32Array(src.length);
  for (let h = 0; h < nh; h++) for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) out[h * a * b + j * a + i] = src[h * a * b + i * b + j]!;
  return out;
}
