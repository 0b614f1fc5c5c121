/**
 * Hugging Face MoE checkpoint (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) -> GGUF with llama.cpp's
 * architecture names and tensor layout (arch llama with experts, qwen2moe, qwen3moe, olmoe), in any
 * tensor type the writer encodes. Matrices get the requested type; a matrix whose rows are not
 * whole blocks of it falls back as llama-quantize does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
 * Q2_K/Q3_K -> Q4_0, then F16); norms, biases and routers stay F32. Quantized tensors are encoded
 * as llama.cpp's reference quantizers do, so the bytes equal llama-quantize's (without imatrix)
 * from the same F32 values. Used by tests and the bench to get GGUF files of the bundled models;
 * hfToGguf.ts is the Mixtral converter the llama.cpp bench was built on.
 */
import * as path from "node:path";
import { readModelDims } from "../architectures/readModelDims.js";
import type { ModelDims } from "../architectures/ModelDims.js";
import { UnsupportedConfigError } from "../errors.js";
import {
  FILE_TYPE,
  GGML_TYPE,
  GGUF_DEFAULT_ALIGNMENT,
  gguf,
  ggmlTypeFits,
  permuteRopeRows,
  writeGguf,
  type GgmlTypeName,
  type GgufTensorSpec,
  type GgufValue,
  type GgufWriteResult,
} from "./gguf.js";
import { GgufFile } from "./ggufReader.js";
import { HfCheckpoint } from "./HfCheckpoint.js";
import { ggufTensorList } from "./ggufTensorList.js";
import { exportDeepseek2 } from "./ggufExportDeepseek2.js";
import { exportGlm4Moe } from "./ggufExportGlm4Moe.js";
import { exportGraniteMoe } from "./ggufExportGranite.js";
import { exportPhimoe } from "./ggufExportPhimoe.js";
import { exportGptOss } from "./ggufExportGptOss.js";
import { readGgufVocab } from "./hfToGguf.js";

export interface GgufExportOptions {
  /** Type of the matrices (embedding, attention, experts, LM head). */
  type: GgmlTypeName;
  /** Per-tensor override (GGUF name and dims) -> type; undefined: `type` with fallback. */
  typeFor?: (name: string, dims: readonly number[]) => GgmlTypeName | undefined;
  /** gpt-oss: the experts' type; default MXFP4 (the checkpoint's blocks as they are), else decoded and re-encoded. */
  gptOssExperts?: "MXFP4" | GgmlTypeName;
  /** general.name; default: the checkpoint folder's name. */
  name?: string;
}

export interface GgufExportResult extends GgufWriteResult {
  arch: string;
  /** GGUF tensor name -> the type written. */
  types: Map<string, GgmlTypeName>;
}

const FALLBACK: Partial<Record<GgmlTypeName, GgmlTypeName>> = { Q2_K: "Q4_0", Q3_K: "Q4_0", Q4_K: "Q5_0", Q5_K: "Q5_1", Q6_K: "Q8_0" };

/** The type a matrix with rows of `cols` values gets when `type` is asked for (llama-quantize's fallback). */
export function fallbackType(type: GgmlTypeName, cols: number): GgmlTypeName {
  if (ggmlTypeFits(type, cols)) return type;
  const next = FALLBACK[type];
  if (next && ggmlTypeFits(next, cols)) return next;
  return "F16";
}

/**
 * llama-quantize's Q4_K_M recipe, as `typeFor` with `type: "Q4_K"` (llama.cpp llama-quant.cpp,
 * use_more_bits): Q6_K for output.weight, and for attn_v and ffn_down(_exps) of the first and last
 * eighth of the layers and every third layer between; Q4_K elsewhere. Rows that are not whole
 * super-blocks fall back as llama-quantize's do (Q6_K -> Q8_0, Q4_K -> Q5_0).
 */
export function q4KMTypeFor(numLayers: number): (name: string, dims: readonly number[]) => GgmlTypeName | undefined {
  const moreBits = (l: number) => l < numLayers / 8 || l >= (7 * numLayers) / 8 || (l - numLayers / 8) % 3 === 2;
  return (name, dims) => {
    const m = /^blk\.(\d+)\.(attn_v|ffn_down_exps|ffn_down)\./.exec(name);
    if (name === "output.weight" || (m && moreBits(Number(m[1])))) return fallbackType("Q6_K", dims[0]!);
    return undefined;
  };
}

const ARCH: Record<string, string> = { mixtral: "llama", qwen2_moe: "qwen2moe", qwen3_moe: "qwen3moe", olmoe: "olmoe" };

export function exportGguf(hfDir: string, outPath: string, options: GgufExportOptions): GgufExportResult {
  const ckpt = HfCheckpoint.open(hfDir);
  try {
    const { dims: d } = readModelDims(ckpt.config);
    if (d.modelType === "gpt_oss") return exportGptOss(ckpt, hfDir, d, outPath, options, tokenizerMetadata(hfDir, d));
    if (d.modelType === "granitemoe") return exportGraniteMoe(ckpt, hfDir, d, outPath, options, tokenizerMetadata(hfDir, d), fallbackType);
    if (d.modelType === "phimoe") return exportPhimoe(ckpt, hfDir, d, outPath, options, tokenizerMetadata(hfDir, d), fallbackType);
    if (d.modelType === "deepseek_v2") return exportDeepseek2(ckpt, hfDir, d, outPath, options, tokenizerMetadata(hfDir, d), fallbackType);
    if (d.modelType === "glm4_moe") return exportGlm4Moe(ckpt, hfDir, d, outPath, options, tokenizerMetadata(hfDir, d), fallbackType);
    const arch = ARCH[d.modelType];
    if (!arch) throw new UnsupportedConfigError(`GGUF export supports ${Object.keys(ARCH).join(", ")}, not model_type "${d.modelType}"`);
    const H = d.hiddenSize;
    const V = d.vocabSize;
    const F = d.expertFfn;
    const E = d.numExperts;
    const qRows = d.numHeads * d.headDim;
    const kvRows = d.numKvHeads * d.headDim;
    const list = ggufTensorList(ckpt, hfDir, (name, dims) => options.typeFor?.(name, dims) ?? fallbackType(options.type, dims[0]!));
    const { types, tensors, read } = list;
    const vector = (name: string, hf: string, n: number, shape: number[] = [n]) => list.f32(name, [n], read(hf, shape));
    /** A matrix or a stack of them: `parts` read row-major [rows, cols] blocks written one after another. */
    const matrix = (name: string, dims: number[], parts: (() => Float32Array)[], keepF32 = false) => list.matrix(name, dims, parts, keepF32 ? "F32" : undefined);
    const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
    const permuted = (get: () => Float32Array, heads: number, cols: number) => (arch === "llama" ? () => permuteRopeRows(get(), heads, cols) : get);

    matrix("token_embd.weight", [H, V], [read("model.embed_tokens.weight", [V, H])]);
    for (let l = 0; l < d.numLayers; l++) {
      const b = `blk.${l}`;
      vector(`${b}.attn_norm.weight`, hf(l, "input_layernorm.weight"), H);
      matrix(`${b}.attn_q.weight`, [H, qRows], [permuted(read(hf(l, "self_attn.q_proj.weight"), [qRows, H]), d.numHeads, H)]);
      matrix(`${b}.attn_k.weight`, [H, kvRows], [permuted(read(hf(l, "self_attn.k_proj.weight"), [kvRows, H]), d.numKvHeads, H)]);
      matrix(`${b}.attn_v.weight`, [H, kvRows], [read(hf(l, "self_attn.v_proj.weight"), [kvRows, H])]);
      matrix(`${b}.attn_output.weight`, [qRows, H], [read(hf(l, "self_attn.o_proj.weight"), [H, qRows])]);
      if (d.qkvBias) {
        for (const [p, n] of [["q", qRows], ["k", kvRows], ["v", kvRows]] as const) {
          if (ckpt.has(hf(l, `self_attn.${p}_proj.bias`))) vector(`${b}.attn_${p}.bias`, hf(l, `self_attn.${p}_proj.bias`), n);
        }
      }
      if (d.qkNorm !== "none") {
        const head = d.qkNorm === "head";
        vector(`${b}.attn_q_norm.weight`, hf(l, "self_attn.q_norm.weight"), head ? d.headDim : qRows);
        vector(`${b}.attn_k_norm.weight`, hf(l, "self_attn.k_norm.weight"), head ? d.headDim : kvRows);
      }
      vector(`${b}.ffn_norm.weight`, hf(l, "post_attention_layernorm.weight"), H);
      const router = arch === "llama" ? "block_sparse_moe.gate.weight" : "mlp.gate.weight";
      matrix(`${b}.ffn_gate_inp.weight`, [H, E], [read(hf(l, router), [E, H])], true);
      const expert = (j: number, p: "gate" | "up" | "down") =>
        arch === "llama" ? `block_sparse_moe.experts.${j}.${{ gate: "w1", up: "w3", down: "w2" }[p]}.weight` : `mlp.experts.${j}.${p}_proj.weight`;
      const stack = (p: "gate" | "up" | "down", shape: number[]) => Array.from({ length: E }, (_, j) => read(hf(l, expert(j, p)), shape));
      matrix(`${b}.ffn_gate_exps.weight`, [H, F, E], stack("gate", [F, H]));
      matrix(`${b}.ffn_down_exps.weight`, [F, H, E], stack("down", [H, F]));
      matrix(`${b}.ffn_up_exps.weight`, [H, F, E], stack("up", [F, H]));
      if (arch === "qwen2moe") {
        const Fs = d.sharedExpertFfn;
        vector(`${b}.ffn_gate_inp_shexp.weight`, hf(l, "mlp.shared_expert_gate.weight"), H, [1, H]);
        matrix(`${b}.ffn_gate_shexp.weight`, [H, Fs], [read(hf(l, "mlp.shared_expert.gate_proj.weight"), [Fs, H])]);
        matrix(`${b}.ffn_down_shexp.weight`, [Fs, H], [read(hf(l, "mlp.shared_expert.down_proj.weight"), [H, Fs])]);
        matrix(`${b}.ffn_up_shexp.weight`, [H, Fs], [read(hf(l, "mlp.shared_expert.up_proj.weight"), [Fs, H])]);
      }
    }
    vector("output_norm.weight", "model.norm.weight", H);
    // llama.cpp's olmoe and qwen2moe need output.weight even when the checkpoint ties it to the embedding.
    if (ckpt.has("lm_head.weight")) matrix("output.weight", [H, V], [read("lm_head.weight", [V, H])]);
    else if (arch === "olmoe" || arch === "qwen2moe") matrix("output.weight", [H, V], [read("model.embed_tokens.weight", [V, H])]);

    const metadata = archMetadata(arch, d, options.name ?? path.basename(path.resolve(hfDir)), options.type);
    metadata.push(...tokenizerMetadata(hfDir, d));
    return { ...writeGguf(outPath, metadata, tensors), arch, types };
  } finally {
    ckpt.close();
  }
}

/** The tokenizer as GGUF metadata (llama.cpp "gpt2" byte-level BPE). */
export function tokenizerMetadata(hfDir: string, d: ModelDims): [string, GgufValue][] {
  const v = readGgufVocab(hfDir, d);
  const m: [string, GgufValue][] = [
    ["tokenizer.ggml.model", gguf.str("gpt2")],
    ["tokenizer.ggml.pre", gguf.str("gpt-2")],
    ["tokenizer.ggml.tokens", gguf.strings(v.tokens)],
    ["tokenizer.ggml.token_type", gguf.i32s(v.tokenTypes)],
    ["tokenizer.ggml.merges", gguf.strings(v.merges)],
  ];
  if (v.bosId !== undefined) m.push(["tokenizer.ggml.bos_token_id", gguf.u32(v.bosId)]);
  if (v.eosId !== undefined) m.push(["tokenizer.ggml.eos_token_id", gguf.u32(v.eosId)]);
  if (v.unkId !== undefined) m.push(["tokenizer.ggml.unknown_token_id", gguf.u32(v.unkId)]);
  m.push(["tokenizer.ggml.add_bos_token", gguf.bool(v.addBos)], ["tokenizer.ggml.add_eos_token", gguf.bool(false)]);
  if (v.chatTemplate !== undefined) m.push(["tokenizer.chat_template", gguf.str(v.chatTemplate)]);
  return m;
}

function archMetadata(arch: string, d: ModelDims, name: string, type: GgmlTypeName): [string, GgufValue][] {
  const k = (key: string) => `${arch}.${key}`;
  const m: [string, GgufValue][] = [
    ["general.architecture", gguf.str(arch)],
    ["general.name", gguf.str(name)],
    ["general.file_type", gguf.u32(FILE_TYPE[type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    [k("vocab_size"), gguf.u32(d.vocabSize)],
    [k("context_length"), gguf.u32(d.maxPositions)],
    [k("embedding_length"), gguf.u32(d.hiddenSize)],
    [k("block_count"), gguf.u32(d.numLayers)],
    [k("attention.head_count"), gguf.u32(d.numHeads)],
    [k("attention.head_count_kv"), gguf.u32(d.numKvHeads)],
    [k("attention.key_length"), gguf.u32(d.headDim)],
    [k("attention.value_length"), gguf.u32(d.headDim)],
    [k("rope.dimension_count"), gguf.u32(d.headDim)],
    [k("rope.freq_base"), gguf.f32(d.ropeTheta)],
    [k("attention.layer_norm_rms_epsilon"), gguf.f32(d.rmsNormEps)],
    [k("expert_count"), gguf.u32(d.numExperts)],
    [k("expert_used_count"), gguf.u32(d.topK)],
  ];
  if (arch === "llama" || arch === "olmoe") m.push([k("feed_forward_length"), gguf.u32(d.expertFfn)]);
  else m.push([k("expert_feed_forward_length"), gguf.u32(d.expertFfn)]);
  if (arch === "qwen2moe") m.push([k("expert_shared_feed_forward_length"), gguf.u32(d.sharedExpertFfn)]);
  return m;
}

/**
 * Writes a copy of a GGUF file with its metadata edited and its tensors copied as stored (one at a
 * time). For tools and tests: retagging a tokenizer, dropping or changing a key.
 */
export function rewriteGgufMetadata(src: string, dst: string, edit: (metadata: [string, GgufValue][]) => [string, GgufValue][]): GgufWriteResult {
  const g = GgufFile.open(src);
  try {
    const tensors: GgufTensorSpec[] = [...g.tensors.values()].map((t) => {
      if (!(t.type.name in GGML_TYPE)) throw new UnsupportedConfigError(`tensor "${t.name}" is ${t.type.name}, which the GGUF writer does not copy`);
      return { name: t.name, dims: t.dims, type: t.type.name as GgmlTypeName, data: () => [g.readBytes(t.name)] };
    });
    const alignment = g.alignment;
    return writeGguf(dst, edit([...g.metadata].filter(([k]) => k !== "general.alignment")), tensors, { alignment });
  } finally {
    g.close();
  }
}
