/**
 * A GGUF file (or split set) seen as the Hugging Face checkpoint the importer understands: the same
 * interface as HfCheckpoint, a config.json synthesized from the `general.architecture` metadata,
 * tensors under their Hugging Face names with Hugging Face shapes, and the tokenizer as the two
 * files a model directory holds. llama.cpp's conventions are undone on the way:
 *
 * - GGUF dims are innermost first: [ne0, ne1, ne2] is the PyTorch shape [ne2, ne1, ne0].
 * - Stacked experts `blk.N.ffn_{gate,up,down}_exps` [X, F, E] / [F, X, E] are split per expert
 *   (older files' per-expert `blk.N.ffn_gate.J.weight` are read too).
 * - Arch "llama" (Mixtral) stores q/k rows permuted for its adjacent-pair RoPE; they are put back in
 *   the half-split order of Hugging Face checkpoints. (qwen2moe, qwen3moe and olmoe use NEOX RoPE,
 *   which is Hugging Face's order already.)
 * - The router settings are llama.cpp's for the architecture (Mixtral and Qwen3-MoE renormalise
 *   the top-k weights, Qwen2-MoE and OLMoE do not), so moe-run computes what llama.cpp computes.
 *
 * - gpt-oss, glm4moe, granitemoe, phimoe and deepseek2 are mapped in their own files (ggufGptOss.ts,
 *   ggufGlm4Moe.ts, ggufGranite.ts, ggufPhimoe.ts, ggufDeepseek2.ts) through describeWith(); a tensor there may be
 *   derived from stored ones (gpt-oss MXFP4 blocks re-ordered into Hugging Face's `_blocks` /
 *   `_scales`, Granite's fused input_linear, DeepSeek-V2's kv_b_proj from the split attn_k_b / attn_v_b) by byte moves and transposes only.
 *
 * Tensors are decoded to fp32 for now (any type ggmlQuants.ts decodes).
 */
import * as path from "node:path";
import {
  CheckpointCorruptError,
  CheckpointMissingError,
  GgufMissingKeyError,
  GgufTensorShapeError,
  ShapeMismatchError,
  UnknownArchitectureError,
  UnsupportedConfigError,
} from "../errors.js";
import { vocabFromGguf, tokenizerConfigFromGguf } from "../tokenizer/ggufVocab.js";
import { canDequantize } from "./ggmlQuants.js";
import { GgufValueType } from "./gguf.js";
import { GgufFile, isGgufPath, type GgufTensor } from "./ggufReader.js";
import { describeDeepseek2 } from "./ggufDeepseek2.js";
import { describeGlm4Moe } from "./ggufGlm4Moe.js";
import { describeGraniteMoe } from "./ggufGranite.js";
import { describePhimoe } from "./ggufPhimoe.js";
import { describeGptOss, type ArchContext, type Derived } from "./ggufGptOss.js";
import { HfCheckpoint, type HfConfig } from "./HfCheckpoint.js";

type Part = "gate" | "up" | "down";

/** How one Hugging Face tensor is read from the GGUF file. */
interface Source {
  /** GGUF tensor name. */
  tensor: string;
  /** Hugging Face shape (row-major). */
  shape: number[];
  /** First row (of ne0 values) and row count, for one expert of a stacked tensor. */
  rows?: [first: number, count: number];
  /** Undo llama.cpp's q/k row permutation, with this many heads. */
  unpermuteHeads?: number;
  /** A tensor absent from the file that stands for zeros (optional q/k/v biases). */
  zeros?: boolean;
  /** A tensor computed from stored ones (ggufGptOss.ts): byte moves and transposes, no rounding. */
  derived?: Derived;
}

/** The llama.cpp architectures moe-run imports, and the Hugging Face model_type each becomes. */
const ARCHES: Record<string, { modelType: string; hfClass: string; normTopk: boolean; ropePermuted: boolean }> = {
  llama: { modelType: "mixtral", hfClass: "MixtralForCausalLM", normTopk: true, ropePermuted: true },
  qwen2moe: { modelType: "qwen2_moe", hfClass: "Qwen2MoeForCausalLM", normTopk: false, ropePermuted: false },
  qwen3moe: { modelType: "qwen3_moe", hfClass: "Qwen3MoeForCausalLM", normTopk: true, ropePermuted: false },
  olmoe: { modelType: "olmoe", hfClass: "OlmoeForCausalLM", normTopk: false, ropePermuted: false },
};

const PROJ: Record<Part, string> = { gate: "gate_proj", up: "up_proj", down: "down_proj" };
const MIXTRAL_W: Record<Part, string> = { gate: "w1", up: "w3", down: "w2" };

export interface GgufTokenizerFiles {
  json: Buffer;
  config: Buffer | null;
}

export class GgufCheckpoint {
  /** The GGUF file (first shard) the checkpoint was opened from. */
  readonly dir: string;
  readonly config: HfConfig;
  readonly file: GgufFile;
  private readonly sources: Map<string, Source>;
  private readonly tokenizer: GgufTokenizerFiles;

  private constructor(file: GgufFile, config: HfConfig, sources: Map<string, Source>, tokenizer: GgufTokenizerFiles) {
    this.dir = file.path;
    this.file = file;
    this.config = config;
    this.sources = sources;
    this.tokenizer = tokenizer;
  }

  /** Opens and validates a GGUF file (every tensor's type, shape and byte range) before anything is written. */
  static open(gguf: string): GgufCheckpoint {
    const file = GgufFile.open(gguf);
    try {
      const { config, sources } = describe(file);
      for (const [name, s] of sources) {
        if (s.zeros) continue;
        for (const tensor of s.derived?.tensors ?? [s.tensor]) {
          const t = file.tensors.get(tensor)!;
          if (!canDequantize(t.type.id)) {
            throw new UnsupportedConfigError(`${file.path}: tensor "${tensor}" (${name}) is ${t.type.name}, which moe-run cannot decode yet`);
          }
        }
      }
      const vocab = vocabFromGguf(file);
      if (vocab.tokens.length > (config["vocab_size"] as number)) {
        throw new CheckpointCorruptError(`${file.path}: the tokenizer has ${vocab.tokens.length} tokens but token_embd.weight has only ${config["vocab_size"]} rows`);
      }
      config["bos_token_id"] = vocab.bosId ?? undefined;
      config["eos_token_id"] = vocab.eogIds;
      const tokenizer = {
        json: Buffer.from(JSON.stringify(vocab)),
        config: Buffer.from(JSON.stringify(tokenizerConfigFromGguf(file, vocab), null, 1)),
      };
      return new GgufCheckpoint(file, config, sources, tokenizer);
    } catch (err) {
      file.close();
      throw err;
    }
  }

  has(name: string): boolean {
    return this.sources.has(name);
  }

  /** Shape and storage of a tensor under its Hugging Face name. */
  entry(name: string): { name: string; shape: number[]; dtype: string } {
    const s = this.source(name);
    return { name, shape: s.shape, dtype: s.zeros ? "F32" : (s.derived?.dtype ?? this.file.tensor(s.tensor).type.name) };
  }

  checkShape(name: string, expectedShape: readonly number[]): void {
    const s = this.source(name);
    if (s.shape.length !== expectedShape.length || s.shape.some((d, i) => d !== expectedShape[i])) {
      throw new ShapeMismatchError(name, expectedShape, s.shape, `${path.basename(this.file.path)} (GGUF tensor ${s.tensor})`);
    }
  }

  /** A tensor decoded to fp32 in Hugging Face layout; NaN or infinite values are refused. */
  readFloat32(name: string, expectedShape: readonly number[]): Float32Array {
    this.checkShape(name, expectedShape);
    const s = this.source(name);
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.zeros) return new Float32Array(n);
    if (s.derived) return this.finite(s, this.derivedFloats(name, s));
    let values = s.rows ? this.file.readFloat32(s.tensor, s.rows[0], s.rows[1]) : this.file.readFloat32(s.tensor);
    if (s.unpermuteHeads !== undefined) values = unpermuteRopeRows(values, s.unpermuteHeads, s.shape.length === 2 ? s.shape[1]! : 1);
    return this.finite(s, values);
  }

  /**
   * Sub-tensor `index` along the first Hugging Face dimension (one expert of an [E, ...] tensor) as
   * fp32, after checking the whole tensor's shape.
   */
  readFloat32Slice(name: string, expectedShape: readonly number[], index: number): Float32Array {
    this.checkShape(name, expectedShape);
    const s = this.source(name);
    if (s.zeros) return new Float32Array(s.shape.slice(1).reduce((a, b) => a * b, 1));
    if (s.derived) return this.finite(s, this.derivedFloats(name, s, index));
    const [first, count] = this.sliceRows(s, index);
    return this.finite(s, this.file.readFloat32(s.tensor, first, count));
  }

  /** Raw stored bytes (ggml blocks of the tensor's type) of sub-tensor `index` along the first dimension. */
  readSliceBytes(name: string, expectedShape: readonly number[], index: number): Uint8Array {
    this.checkShape(name, expectedShape);
    const s = this.source(name);
    if (s.zeros) throw new UnsupportedConfigError(`"${name}" is not stored in ${this.file.path}`);
    if (s.derived) {
      if (!s.derived.bytes || index < 0 || index >= (s.shape[0] ?? 1)) throw new UnsupportedConfigError(`"${name}" has no stored bytes of slice ${index} in ${this.file.path}`);
      return s.derived.bytes(this.file, index);
    }
    const [first, count] = this.sliceRows(s, index);
    const t = this.file.tensor(s.tensor);
    const rowBytes = ((t.dims[0] ?? 1) / t.type.blockSize) * t.type.typeSize;
    return this.file.readBytes(s.tensor, first * rowBytes, count * rowBytes);
  }

  /**
   * A tensor's stored ggml blocks, as they are in the file (for an expert of a stacked tensor, its
   * rows), with their type: for consumers that keep GGUF blocks instead of decoding them. Permuted
   * q/k matrices come back with their rows in Hugging Face order (blocks run along a row, so moving
   * whole rows is exact). Refused for tensors the view computes (absent biases, derived tensors).
   */
  readRaw(name: string, expectedShape: readonly number[]): { type: GgufTensor["type"]; bytes: Uint8Array } {
    this.checkShape(name, expectedShape);
    const s = this.source(name);
    if (s.zeros || s.derived || (s.unpermuteHeads !== undefined && s.shape.length !== 2)) throw new UnsupportedConfigError(`"${name}" is not stored as-is in ${this.file.path}`);
    const t = this.file.tensor(s.tensor);
    const rowBytes = ((t.dims[0] ?? 1) / t.type.blockSize) * t.type.typeSize;
    if (s.unpermuteHeads !== undefined) return { type: t.type, bytes: unpermuteRopeRows(this.file.readBytes(s.tensor), s.unpermuteHeads, rowBytes) };
    if (!s.rows) return { type: t.type, bytes: this.file.readBytes(s.tensor) };
    return { type: t.type, bytes: this.file.readBytes(s.tensor, s.rows[0] * rowBytes, s.rows[1] * rowBytes) };
  }

  private derivedFloats(name: string, s: Source, index?: number): Float32Array {
    if (!s.derived?.floats) throw new UnsupportedConfigError(`"${name}" in ${this.file.path} is stored as blocks, not values`);
    if (index !== undefined && (index < 0 || index >= (s.shape[0] ?? 1))) throw new RangeError(`slice ${index} of ${name} is out of range`);
    return s.derived.floats(this.file, index);
  }

  /** The GGUF rows (of ne0 values) holding slice `index` of a tensor's first dimension. */
  private sliceRows(s: Source, index: number): [number, number] {
    if (s.unpermuteHeads !== undefined) throw new UnsupportedConfigError(`slices of permuted q/k tensors are not supported`);
    const ne0 = this.file.tensor(s.tensor).dims[0] ?? 1;
    const perSlice = s.shape.slice(1).reduce((a, b) => a * b, 1);
    if (index < 0 || index >= (s.shape[0] ?? 1) || perSlice % ne0 !== 0) throw new RangeError(`slice ${index} of ${s.tensor} does not fall on whole rows`);
    const rows = perSlice / ne0;
    return [(s.rows?.[0] ?? 0) + index * rows, rows];
  }

  private finite(s: Source, values: Float32Array): Float32Array {
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (v - v !== 0) {
        throw new CheckpointCorruptError(
          `tensor "${s.tensor}" in ${path.basename(this.file.path)} holds ${Number.isNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"}; moe-run does not import non-finite weights`
        );
      }
    }
    return values;
  }

  /** The ggml types of the stored tensors, for the manifest. */
  dtypes(): string[] {
    return [...new Set([...this.file.tensors.values()].map((t) => t.type.name))].sort();
  }

  tensorNames(): string[] {
    return [...this.sources.keys()];
  }

  /** tokenizer.json (moe-run's gguf-vocab format) and tokenizer_config.json for the model directory. */
  tokenizerFiles(): GgufTokenizerFiles {
    return this.tokenizer;
  }

  close(): void {
    this.file.close();
  }

  private source(name: string): Source {
    const s = this.sources.get(name);
    if (!s) throw new CheckpointMissingError(`the GGUF file ${this.file.path} has no tensor for "${name}"`);
    return s;
  }
}

/**
 * The checkpoint `import` reads from: a .gguf file (or the first shard of a split one) through
 * GgufCheckpoint, which mirrors HfCheckpoint's public interface (checked below at compile time), or
 * a Hugging Face folder.
 */
export function openImportCheckpoint(source: string): HfCheckpoint {
  return isGgufPath(source) ? (GgufCheckpoint.open(source) as unknown as HfCheckpoint) : HfCheckpoint.open(source);
}

/** The tokenizer files of a checkpoint opened from GGUF (undefined for a Hugging Face folder). */
export function ggufTokenizerFiles(ckpt: object): GgufTokenizerFiles | undefined {
  return ckpt instanceof GgufCheckpoint ? ckpt.tokenizerFiles() : undefined;
}

// GgufCheckpoint has every public member of HfCheckpoint with a compatible type (entry() returns
// the shape and type name, not a safetensors byte range).
type Mirrored = Omit<{ [K in keyof HfCheckpoint]: HfCheckpoint[K] }, "entry">;
const mirrors = (g: GgufCheckpoint): Mirrored => g;
void mirrors;

/**
 * Inverse of llama.cpp's q/k permutation: GGUF row h*hd + 2j + s holds Hugging Face row
 * h*hd + s*hd/2 + j (s = 0, 1; j < hd/2). Rows are `cols` elements: values, or a row's bytes.
 */
export function unpermuteRopeRows<A extends Float32Array | Uint8Array>(w: A, heads: number, cols: number): A {
  const rows = w.length / cols;
  const hd = rows / heads;
  if (!Number.isInteger(hd) || hd % 2 !== 0) throw new UnsupportedConfigError(`q/k rows (${rows}) are not ${heads} heads of an even head size`);
  const half = hd / 2;
  const out = (w instanceof Float32Array ? new Float32Array(w.length) : new Uint8Array(w.length)) as A;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      for (let s = 0; s < 2; s++) {
        const src = (h * hd + 2 * j + s) * cols;
        out.set(w.subarray(src, src + cols), (h * hd + s * half + j) * cols);
      }
    }
  }
  return out;
}

/** The config.json and tensor map of a GGUF file. */
function describe(g: GgufFile): { config: HfConfig; sources: Map<string, Source> } {
  const arch = g.string("general.architecture");
  if (arch === "gpt-oss") return describeWith(g, arch, describeGptOss);
  if (arch === "glm4moe") return describeWith(g, arch, describeGlm4Moe);
  if (arch === "granitemoe") return describeWith(g, arch, describeGraniteMoe);
  if (arch === "phimoe") return describeWith(g, arch, describePhimoe);
  if (arch === "deepseek2") return describeWith(g, arch, describeDeepseek2);
  const spec = ARCHES[arch];
  if (!spec) {
    const err = new UnknownArchitectureError(arch, Object.keys(ARCHES));
    err.message = `${g.path}: GGUF architecture "${arch}" is not supported; moe-run imports llama (with experts, as Mixtral), qwen2moe, qwen3moe, olmoe, gpt-oss, glm4moe, granitemoe, phimoe and deepseek2`;
    throw err;
  }
  const key = (k: string) => `${arch}.${k}`;
  const uniform = (k: string, fallback?: number): number => {
    const v = g.metadata.get(key(k));
    if (v && v.type === GgufValueType.ARRAY) {
      // per-layer values
      const items = v.value.map(Number);
      if (items.length === 0 || items.some((x) => x !== items[0])) throw new UnsupportedConfigError(`${g.path}: ${key(k)} differs between layers, which moe-run does not support`);
      return items[0]!;
    }
    return g.number(key(k), fallback);
  };
  const L = uniform("block_count");
  const H = uniform("embedding_length");
  const heads = uniform("attention.head_count");
  const kvHeads = uniform("attention.head_count_kv", heads);
  const headDim = uniform("attention.key_length", H / heads);
  const vDim = uniform("attention.value_length", headDim);
  if (vDim !== headDim) throw new UnsupportedConfigError(`${g.path}: attention.value_length ${vDim} differs from key_length ${headDim}`);
  const rot = uniform("rope.dimension_count", headDim);
  if (rot !== headDim) throw new UnsupportedConfigError(`${g.path}: RoPE on ${rot} of ${headDim} head dimensions (partial rotary) is not supported yet`);
  const scaling = g.value(key("rope.scaling.type"));
  if (scaling !== undefined && scaling !== "none") throw new UnsupportedConfigError(`${g.path}: rope scaling "${String(scaling)}" is not supported yet; only plain RoPE`);
  const experts = uniform("expert_count", 0);
  if (experts <= 0) throw new UnsupportedConfigError(`${g.path} is a dense ${arch} model (no ${key("expert_count")}); moe-run runs mixture-of-experts models`);
  const topK = uniform("expert_used_count");
  const leadingDense = uniform("leading_dense_block_count", 0);
  if (leadingDense > 0) throw new UnsupportedConfigError(`${g.path}: ${leadingDense} dense leading layers are not supported yet`);
  const gating = g.value(key("expert_gating_func"));
  if (gating !== undefined && Number(gating) !== 1) throw new UnsupportedConfigError(`${g.path}: expert gating function ${String(gating)} (not softmax) is not supported yet`);
  const scale = g.value(key("expert_weights_scale"));
  if (scale !== undefined && Number(scale) !== 0 && Number(scale) !== 1) throw new UnsupportedConfigError(`${g.path}: expert_weights_scale ${String(scale)} is not supported yet`);

  const embed = required(g, "token_embd.weight");
  if (embed.dims.length !== 2 || embed.dims[0] !== H) {
    throw new GgufTensorShapeError(`${g.path}: tensor "token_embd.weight" has dims [${embed.dims.join(", ")}] but ${key("embedding_length")} is ${H}`);
  }
  const V = embed.dims[1]!;
  const ffn = uniform("feed_forward_length", 0);
  let F: number;
  let Fs = 0;
  if (arch === "llama" || arch === "olmoe") {
    F = ffn;
  } else {
    F = uniform("expert_feed_forward_length", 0) || (ffn ? ffn / topK : 0);
    if (arch === "qwen2moe") Fs = uniform("expert_shared_feed_forward_length", 0) || ffn;
  }
  if (!F) throw new GgufMissingKeyError(`${g.path} lacks the metadata key "${arch === "llama" || arch === "olmoe" ? key("feed_forward_length") : key("expert_feed_forward_length")}"`);

  const tied = !g.has("output.weight");
  const config: HfConfig = {
    architectures: [spec.hfClass],
    model_type: spec.modelType,
    vocab_size: V,
    hidden_size: H,
    num_hidden_layers: L,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    rms_norm_eps: g.number(key("attention.layer_norm_rms_epsilon")),
    rope_theta: g.number(key("rope.freq_base"), 10000),
    max_position_embeddings: g.number(key("context_length")),
    num_experts_per_tok: topK,
    norm_topk_prob: spec.normTopk,
    tie_word_embeddings: tied,
    // bos_token_id and eos_token_id (llama.cpp's end-of-generation tokens) come from the vocabulary
    gguf: { file: path.basename(g.path), architecture: arch, shards: g.paths.length },
  };
  if (arch === "llama") {
    config["num_local_experts"] = experts;
    config["intermediate_size"] = F;
  } else {
    config["num_experts"] = experts;
    if (arch === "olmoe") config["intermediate_size"] = F;
    else config["moe_intermediate_size"] = F;
    if (arch === "qwen2moe") {
      config["shared_expert_intermediate_size"] = Fs;
      config["intermediate_size"] = ffn;
    }
  }

  const sources = new Map<string, Source>();
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  const add = (name: string, tensor: string, shape: number[], extra: Partial<Source> = {}) => {
    const t = required(g, tensor);
    checkDims(g, tensor, t, extra.rows ? undefined : [...shape].reverse(), extra.rows ? shape : undefined);
    sources.set(name, { tensor, shape, ...extra });
  };
  add("model.embed_tokens.weight", "token_embd.weight", [V, H]);
  add("model.norm.weight", "output_norm.weight", [H]);
  if (!tied) add("lm_head.weight", "output.weight", [V, H]);
  const qRows = heads * headDim;
  const kvRows = kvHeads * headDim;
  let qkvBias = false;
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    add(hf(l, "input_layernorm.weight"), `${b}.attn_norm.weight`, [H]);
    add(hf(l, "post_attention_layernorm.weight"), `${b}.ffn_norm.weight`, [H]);
    const perm = (n: number) => (spec.ropePermuted ? { unpermuteHeads: n } : {});
    if (g.has(`${b}.attn_qkv.weight`)) {
      const rows = qRows + 2 * kvRows;
      checkDims(g, `${b}.attn_qkv.weight`, g.tensor(`${b}.attn_qkv.weight`), [H, rows]);
      sources.set(hf(l, "self_attn.q_proj.weight"), { tensor: `${b}.attn_qkv.weight`, shape: [qRows, H], rows: [0, qRows], ...perm(heads) });
      sources.set(hf(l, "self_attn.k_proj.weight"), { tensor: `${b}.attn_qkv.weight`, shape: [kvRows, H], rows: [qRows, kvRows], ...perm(kvHeads) });
      sources.set(hf(l, "self_attn.v_proj.weight"), { tensor: `${b}.attn_qkv.weight`, shape: [kvRows, H], rows: [qRows + kvRows, kvRows] });
    } else {
      add(hf(l, "self_attn.q_proj.weight"), `${b}.attn_q.weight`, [qRows, H], perm(heads));
      add(hf(l, "self_attn.k_proj.weight"), `${b}.attn_k.weight`, [kvRows, H], perm(kvHeads));
      add(hf(l, "self_attn.v_proj.weight"), `${b}.attn_v.weight`, [kvRows, H]);
    }
    add(hf(l, "self_attn.o_proj.weight"), `${b}.attn_output.weight`, [H, qRows]);
    const biases: [string, string, number, number | undefined][] = [
      ["q", "attn_q", qRows, spec.ropePermuted ? heads : undefined],
      ["k", "attn_k", kvRows, spec.ropePermuted ? kvHeads : undefined],
      ["v", "attn_v", kvRows, undefined],
    ];
    const hasBias = biases.some(([, t]) => g.has(`${b}.${t}.bias`));
    if (g.has(`${b}.attn_qkv.bias`)) throw new UnsupportedConfigError(`${g.path}: fused attn_qkv biases are not supported yet`);
    if (hasBias || arch === "qwen2moe") {
      qkvBias = true;
      for (const [p, t, n, h] of biases) {
        const name = hf(l, `self_attn.${p}_proj.bias`);
        if (g.has(`${b}.${t}.bias`)) add(name, `${b}.${t}.bias`, [n], h === undefined ? {} : { unpermuteHeads: h });
        else sources.set(name, { tensor: `${b}.${t}.bias`, shape: [n], zeros: true });
      }
    }
    if (arch === "qwen3moe" || arch === "olmoe") {
      const n = arch === "qwen3moe" ? headDim : 0;
      add(hf(l, "self_attn.q_norm.weight"), `${b}.attn_q_norm.weight`, [n || qRows]);
      add(hf(l, "self_attn.k_norm.weight"), `${b}.attn_k_norm.weight`, [n || kvRows]);
    }
    const router = arch === "llama" ? "block_sparse_moe.gate.weight" : "mlp.gate.weight";
    add(hf(l, router), `${b}.ffn_gate_inp.weight`, [experts, H]);
    const expertName = (j: number, p: Part) => (arch === "llama" ? `block_sparse_moe.experts.${j}.${MIXTRAL_W[p]}.weight` : `mlp.experts.${j}.${PROJ[p]}.weight`);
    for (const p of ["gate", "up", "down"] as const) {
      const shape = p === "down" ? [H, F] : [F, H];
      const stacked = `${b}.ffn_${p}_exps.weight`;
      if (g.has(stacked) || !g.has(`${b}.ffn_${p}.0.weight`)) {
        checkDims(g, stacked, required(g, stacked), [shape[1]!, shape[0]!, experts]);
        for (let j = 0; j < experts; j++) sources.set(hf(l, expertName(j, p)), { tensor: stacked, shape, rows: [j * shape[0]!, shape[0]!] });
      } else {
        // Older files: one tensor per expert.
        for (let j = 0; j < experts; j++) add(hf(l, expertName(j, p)), `${b}.ffn_${p}.${j}.weight`, shape);
      }
    }
    if (arch === "qwen2moe") {
      add(hf(l, "mlp.shared_expert.gate_proj.weight"), `${b}.ffn_gate_shexp.weight`, [Fs, H]);
      add(hf(l, "mlp.shared_expert.up_proj.weight"), `${b}.ffn_up_shexp.weight`, [Fs, H]);
      add(hf(l, "mlp.shared_expert.down_proj.weight"), `${b}.ffn_down_shexp.weight`, [H, Fs]);
      const gate = required(g, `${b}.ffn_gate_inp_shexp.weight`);
      checkDims(g, gate.name, gate, [H]);
      sources.set(hf(l, "mlp.shared_expert_gate.weight"), { tensor: gate.name, shape: [1, H] });
    }
  }
  if (arch !== "llama") config["attention_bias"] = qkvBias;
  return { config, sources };
}

/**
 * The architectures mapped in their own files: the settings and tensors every decoder has here,
 * the rest by `mapping` (config keys, per-layer tensors).
 */
function describeWith(
  g: GgufFile,
  arch: string,
  mapping: (c: ArchContext, config: HfConfig, dims: { L: number; H: number; V: number; heads: number; kvHeads: number; headDim: number; experts: number; topK: number }) => void
): { config: HfConfig; sources: Map<string, Source> } {
  const key = (k: string) => `${arch}.${k}`;
  const uniform = (k: string, fallback?: number): number => {
    const v = g.metadata.get(key(k));
    if (v && v.type === GgufValueType.ARRAY) {
      const items = v.value.map(Number);
      if (items.length === 0 || items.some((x) => x !== items[0])) throw new UnsupportedConfigError(`${g.path}: ${key(k)} differs between layers, which moe-run does not support`);
      return items[0]!;
    }
    return g.number(key(k), fallback);
  };
  const L = uniform("block_count");
  const H = uniform("embedding_length");
  const heads = uniform("attention.head_count");
  const kvHeads = uniform("attention.head_count_kv", heads);
  const headDim = uniform("attention.key_length", H / heads);
  const experts = uniform("expert_count");
  const topK = uniform("expert_used_count");
  const embed = required(g, "token_embd.weight");
  if (embed.dims.length !== 2 || embed.dims[0] !== H) {
    throw new GgufTensorShapeError(`${g.path}: tensor "token_embd.weight" has dims [${embed.dims.join(", ")}] but ${key("embedding_length")} is ${H}`);
  }
  const V = embed.dims[1]!;
  // Partial rotary (rope.dimension_count < key_length) is the mapping's to accept (GLM-4.5; DeepSeek-V2's MLA).
  const rot = uniform("rope.dimension_count", headDim);
  if (rot !== headDim && arch !== "glm4moe" && arch !== "deepseek2") throw new UnsupportedConfigError(`${g.path}: RoPE on ${rot} of ${headDim} head dimensions is not supported for ${arch}`);
  const tied = !g.has("output.weight");
  const config: HfConfig = {
    vocab_size: V,
    hidden_size: H,
    num_hidden_layers: L,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    rms_norm_eps: g.number(key("attention.layer_norm_rms_epsilon")),
    rope_theta: g.number(key("rope.freq_base"), 10000),
    max_position_embeddings: g.number(key("context_length")),
    num_experts_per_tok: topK,
    tie_word_embeddings: tied,
    gguf: { file: path.basename(g.path), architecture: arch, shards: g.paths.length },
  };
  const sources = new Map<string, Source>();
  const ctx: ArchContext = {
    g,
    uniform,
    key,
    required: (name) => required(g, name),
    add(name, tensor, shape) {
      checkDims(g, tensor, required(g, tensor), [...shape].reverse());
      sources.set(name, { tensor, shape });
    },
    addPermuted(name, tensor, shape, heads) {
      checkDims(g, tensor, required(g, tensor), [...shape].reverse());
      sources.set(name, { tensor, shape, unpermuteHeads: heads });
    },
    addRows(name, tensor, shape, first, count) {
      checkDims(g, tensor, required(g, tensor), undefined, shape);
      sources.set(name, { tensor, shape, rows: [first, count] });
    },
    derive(name, shape, derived) {
      for (const t of derived.tensors) required(g, t);
      sources.set(name, { tensor: derived.tensors[0]!, shape, derived });
    },
  };
  ctx.add("model.embed_tokens.weight", "token_embd.weight", [V, H]);
  ctx.add("model.norm.weight", "output_norm.weight", [H]);
  if (!tied) ctx.add("lm_head.weight", "output.weight", [V, H]);
  mapping(ctx, config, { L, H, V, heads, kvHeads, headDim, experts, topK });
  return { config, sources };
}

function required(g: GgufFile, name: string): GgufTensor {
  const t = g.tensors.get(name);
  if (!t) throw new CheckpointMissingError(`${g.path} lacks the tensor "${name}" that a ${String(g.value("general.architecture"))} model needs`);
  return t;
}

/** GGUF dims of a tensor must be `dims` (or, for row slices, hold `sliceShape` rows of ne0 values). */
function checkDims(g: GgufFile, name: string, t: GgufTensor, dims?: number[], sliceShape?: number[]): void {
  if (dims) {
    // A trailing 1 (e.g. [H, 1]) is the same tensor as [H].
    const a = [...t.dims];
    while (a.length > dims.length && a[a.length - 1] === 1) a.pop();
    if (a.length !== dims.length || a.some((d, i) => d !== dims[i])) {
      throw new GgufTensorShapeError(`${g.path}: tensor "${name}" has dims [${t.dims.join(", ")}] but the metadata implies [${dims.join(", ")}] (innermost first)`);
    }
  }
  if (sliceShape && t.dims[0] !== sliceShape[1]) {
    throw new GgufTensorShapeError(`${g.path}: tensor "${name}" has rows of ${t.dims[0]} values but the metadata implies ${sliceShape[1]}`);
  }
}
