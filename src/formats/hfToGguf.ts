/**
 * Hugging Face Mixtral checkpoint -> GGUF (arch "llama" with experts), so moe-run can be compared
 * with llama.cpp on the same weights. Follows llama.cpp's convert_hf_to_gguf.py for Mixtral: q/k
 * rows are permuted from the half-split RoPE layout of HF checkpoints into GGUF's adjacent-pair
 * layout, the experts of a layer are stacked into one [X, F, E]-shaped tensor per projection
 * (w1 -> ffn_gate_exps, w3 -> ffn_up_exps, w2 -> ffn_down_exps), norms and the router stay F32.
 * It streams tensor by tensor (one expert at a time), so the output may be far larger than memory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { COMMON_NAMES } from "../architectures/architectures.js";
import { readModelDims } from "../architectures/readModelDims.js";
import type { ModelDims } from "../architectures/ModelDims.js";
import { CheckpointCorruptError, TokenizerMissingError, UnsupportedConfigError } from "../errors.js";
import type { FloatDType } from "../util/dtype.js";
import {
  FILE_TYPE,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_TOKEN_TYPE,
  Q8_0_BLOCK,
  gguf,
  permuteRopeRows,
  quantizeQ8_0,
  toFloat16Bytes,
  toFloat32,
  writeGguf,
  type GgmlTypeName,
  type GgufTensorSpec,
  type GgufValue,
  type GgufWriteResult,
} from "./gguf.js";
import { HfCheckpoint } from "./HfCheckpoint.js";
import { SafetensorsFile } from "./safetensors.js";

export type GgufFileType = "F32" | "F16" | "Q8_0";

export interface HfToGgufOptions {
  /** Type of the matrices (embedding, attention, experts, LM head). Norms and router stay F32. */
  type: GgufFileType;
  /** general.name; default: the checkpoint folder's name. */
  name?: string;
  /** Receives one line per written tensor group. */
  log?: (line: string) => void;
}

export interface HfToGgufResult extends GgufWriteResult {
  tensors: number;
  seconds: number;
  dims: ModelDims;
}

interface TensorSource {
  file: SafetensorsFile;
  dtype: FloatDType;
  shape: number[];
}

/** Converts a Mixtral checkpoint directory to a GGUF file llama.cpp loads (arch "llama" + experts). */
export function convertHfToGguf(hfDir: string, outPath: string, options: HfToGgufOptions): HfToGgufResult {
  const started = performance.now();
  const ckpt = HfCheckpoint.open(hfDir); // validates config.json, the shards and the index
  const files: SafetensorsFile[] = [];
  try {
    const { dims: d } = readModelDims(ckpt.config);
    if (d.modelType !== "mixtral") {
      throw new UnsupportedConfigError(`GGUF conversion supports model_type "mixtral" (llama.cpp arch "llama" with experts), not "${d.modelType}"`);
    }
    // Raw access to each tensor's bytes (HfCheckpoint decodes to fp32 only).
    const sources = new Map<string, TensorSource>();
    for (const shard of shardNames(hfDir)) {
      const f = SafetensorsFile.open(path.join(hfDir, shard));
      files.push(f);
      for (const e of f.entries.values()) if (e.dtype !== "U8") sources.set(e.name, { file: f, dtype: e.dtype, shape: e.shape });
    }
    const src = (name: string, shape: number[]): TensorSource => {
      const s = sources.get(name);
      if (!s) throw new CheckpointCorruptError(`the checkpoint in ${hfDir} has no tensor "${name}"`);
      if (s.shape.length !== shape.length || s.shape.some((x, i) => x !== shape[i])) {
        throw new CheckpointCorruptError(`tensor "${name}" has shape [${s.shape.join(", ")}] but config.json implies [${shape.join(", ")}]`);
      }
      return s;
    };
    const f32 = (name: string, shape: number[]) => {
      const s = src(name, shape);
      return toFloat32(s.file.readBytes(name), s.dtype);
    };
    const matType = (cols: number): GgmlTypeName => (options.type === "Q8_0" && cols % Q8_0_BLOCK !== 0 ? "F16" : options.type);
    /** Encodes fp32 rows of `cols` values as `type`. */
    const encode = (values: Float32Array, type: GgmlTypeName): Uint8Array => {
      if (type === "F32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      if (type === "F16") return toFloat16Bytes(values);
      return quantizeQ8_0(values);
    };
    /**
     * One matrix (q/k with RoPE rows permuted), raw bytes passed through when nothing changes. The
     * tensor is looked up and its shape checked now, so a bad checkpoint fails before writing starts.
     */
    const matrix = (name: string, shape: [number, number], type: GgmlTypeName, ropeHeads?: number) => {
      const s = src(name, shape);
      return () => {
        if (ropeHeads === undefined && s.dtype === type) return [s.file.readBytes(name)];
        let v = toFloat32(s.file.readBytes(name), s.dtype);
        if (ropeHeads !== undefined) v = permuteRopeRows(v, ropeHeads, shape[1]);
        return [encode(v, type)];
      };
    };
    const vector = (name: string, shape: number[]) => {
      src(name, shape);
      return () => [encode(f32(name, shape), "F32")];
    };
    const norm = (name: string, n: number) => vector(name, [n]);

    const H = d.hiddenSize;
    const V = d.vocabSize;
    const F = d.expertFfn;
    const E = d.numExperts;
    const qRows = d.numHeads * d.headDim;
    const kvRows = d.numKvHeads * d.headDim;
    const L = (l: number, rest: string) => COMMON_NAMES.layer(l, rest);
    const tensors: GgufTensorSpec[] = [];
    const embType = matType(H);
    tensors.push({ name: "token_embd.weight", dims: [H, V], type: embType, data: matrix(COMMON_NAMES.embed, [V, H], embType) });
    for (let l = 0; l < d.numLayers; l++) {
      const b = `blk.${l}`;
      tensors.push({ name: `${b}.attn_norm.weight`, dims: [H], type: "F32", data: norm(L(l, COMMON_NAMES.inputNorm), H) });
      const tH = matType(H);
      tensors.push({ name: `${b}.attn_q.weight`, dims: [H, qRows], type: tH, data: matrix(L(l, `${COMMON_NAMES.q}.weight`), [qRows, H], tH, d.numHeads) });
      tensors.push({ name: `${b}.attn_k.weight`, dims: [H, kvRows], type: tH, data: matrix(L(l, `${COMMON_NAMES.k}.weight`), [kvRows, H], tH, d.numKvHeads) });
      tensors.push({ name: `${b}.attn_v.weight`, dims: [H, kvRows], type: tH, data: matrix(L(l, `${COMMON_NAMES.v}.weight`), [kvRows, H], tH) });
      const tO = matType(qRows);
      tensors.push({ name: `${b}.attn_output.weight`, dims: [qRows, H], type: tO, data: matrix(L(l, `${COMMON_NAMES.o}.weight`), [H, qRows], tO) });
      tensors.push({ name: `${b}.ffn_norm.weight`, dims: [H], type: "F32", data: norm(L(l, COMMON_NAMES.postAttnNorm), H) });
      tensors.push({ name: `${b}.ffn_gate_inp.weight`, dims: [H, E], type: "F32", data: vector(L(l, "block_sparse_moe.gate.weight"), [E, H]) });
      const experts = (w: string, shape: [number, number], type: GgmlTypeName) => {
        const parts = Array.from({ length: E }, (_, j) => matrix(L(l, `block_sparse_moe.experts.${j}.${w}.weight`), shape, type));
        return function* () {
          for (const part of parts) yield* part();
        };
      };
      const tG = matType(H);
      const tD = matType(F);
      tensors.push({ name: `${b}.ffn_gate_exps.weight`, dims: [H, F, E], type: tG, data: experts("w1", [F, H], tG) });
      tensors.push({ name: `${b}.ffn_down_exps.weight`, dims: [F, H, E], type: tD, data: experts("w2", [H, F], tD) });
      tensors.push({ name: `${b}.ffn_up_exps.weight`, dims: [H, F, E], type: tG, data: experts("w3", [F, H], tG) });
    }
    tensors.push({ name: "output_norm.weight", dims: [H], type: "F32", data: norm(COMMON_NAMES.finalNorm, H) });
    if (sources.has(COMMON_NAMES.lmHead)) {
      tensors.push({ name: "output.weight", dims: [H, V], type: embType, data: matrix(COMMON_NAMES.lmHead, [V, H], embType) });
    } else if (!d.tieEmbeddings) {
      throw new CheckpointCorruptError(`the checkpoint in ${hfDir} has no "${COMMON_NAMES.lmHead}" and does not tie embeddings`);
    }

    const metadata = llamaMetadata(d, options.name ?? path.basename(path.resolve(hfDir)), options.type, readGgufVocab(hfDir, d));
    // Log progress per layer without holding anything.
    const logged = tensors.map((t) => {
      const m = /^blk\.(\d+)\.ffn_up_exps/.exec(t.name);
      if (!m || !options.log) return t;
      return { ...t, data: () => { options.log!(`gguf: layer ${Number(m[1]) + 1}/${d.numLayers}`); return t.data(); } };
    });
    const written = writeGguf(outPath, metadata, logged);
    return { ...written, tensors: tensors.length, seconds: (performance.now() - started) / 1000, dims: d };
  } finally {
    for (const f of files) f.close();
    ckpt.close();
  }
}

/** The safetensors files of a checkpoint: the index's shards, else every *.safetensors in the folder. */
function shardNames(dir: string): string[] {
  const indexPath = path.join(dir, "model.safetensors.index.json");
  if (fs.existsSync(indexPath)) {
    const index = JSON.parse(fs.readFileSync(indexPath, "utf8")) as { weight_map: Record<string, string> };
    return [...new Set(Object.values(index.weight_map))].sort();
  }
  return fs.readdirSync(dir).filter((x) => x.endsWith(".safetensors")).sort();
}

export interface GgufVocab {
  tokens: string[];
  tokenTypes: number[];
  merges: string[];
  bosId: number | undefined;
  eosId: number | undefined;
  unkId: number | undefined;
  addBos: boolean;
  chatTemplate: string | undefined;
}

/**
 * The byte-level BPE tokenizer of tokenizer.json as llama.cpp's "gpt2" vocabulary: tokens by id
 * (gaps up to vocab_size padded as [PAD<i>], type UNUSED), added tokens CONTROL when special else
 * USER_DEFINED, merges as "a b" strings.
 */
export function readGgufVocab(hfDir: string, d: ModelDims): GgufVocab {
  const tjPath = path.join(hfDir, "tokenizer.json");
  if (!fs.existsSync(tjPath)) throw new TokenizerMissingError(`tokenizer.json is missing from ${hfDir}; GGUF conversion needs it`);
  const tj = JSON.parse(fs.readFileSync(tjPath, "utf8")) as {
    model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
    pre_tokenizer?: { type?: string; pretokenizers?: { type?: string }[] } | null;
    added_tokens?: { id: number; content: string; special?: boolean }[];
  };
  const pre = tj.pre_tokenizer;
  const byteLevel = pre?.type === "ByteLevel" || (pre?.type === "Sequence" && (pre.pretokenizers ?? []).some((p) => p.type === "ByteLevel"));
  if (tj.model?.type !== "BPE" || !tj.model.vocab || !byteLevel) {
    throw new UnsupportedConfigError(`GGUF conversion supports byte-level BPE tokenizers (llama.cpp "gpt2"); ${tjPath} is ${tj.model?.type ?? "unknown"}`);
  }
  const vocab = tj.model.vocab;
  let n = d.vocabSize;
  for (const id of Object.values(vocab)) n = Math.max(n, id + 1);
  for (const t of tj.added_tokens ?? []) n = Math.max(n, t.id + 1);
  if (n !== d.vocabSize) {
    throw new UnsupportedConfigError(`tokenizer.json has ids up to ${n - 1} but config.json says vocab_size ${d.vocabSize}`);
  }
  const tokens: (string | undefined)[] = new Array(n);
  const tokenTypes: number[] = new Array(n).fill(GGUF_TOKEN_TYPE.NORMAL);
  for (const [tok, id] of Object.entries(vocab)) tokens[id] = tok;
  for (const t of tj.added_tokens ?? []) {
    tokens[t.id] = t.content;
    tokenTypes[t.id] = t.special ? GGUF_TOKEN_TYPE.CONTROL : GGUF_TOKEN_TYPE.USER_DEFINED;
  }
  for (let i = 0; i < n; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      tokenTypes[i] = GGUF_TOKEN_TYPE.UNUSED;
    }
  }
  const merges = (tj.model.merges ?? []).map((m) => (typeof m === "string" ? m : `${m[0]} ${m[1]}`));

  let tc: Record<string, unknown> = {};
  const tcPath = path.join(hfDir, "tokenizer_config.json");
  if (fs.existsSync(tcPath)) tc = JSON.parse(fs.readFileSync(tcPath, "utf8")) as Record<string, unknown>;
  const idOf = (v: unknown): number | undefined => {
    const s = typeof v === "string" ? v : v && typeof v === "object" ? (v as { content?: string }).content : undefined;
    if (s === undefined) return undefined;
    const i = tokens.indexOf(s);
    return i >= 0 ? i : undefined;
  };
  const bosId = d.bosTokenId ?? idOf(tc["bos_token"]);
  const eosId = d.eosTokenIds[0] ?? idOf(tc["eos_token"]);
  const unkId = idOf(tc["unk_token"]);
  const addBos = typeof tc["add_bos_token"] === "boolean" ? (tc["add_bos_token"] as boolean) : bosId !== undefined && JSON.stringify((tj as { post_processor?: unknown }).post_processor ?? null).includes(JSON.stringify(tokens[bosId]));
  const chatTemplate = typeof tc["chat_template"] === "string" ? (tc["chat_template"] as string) : undefined;
  return { tokens: tokens as string[], tokenTypes, merges, bosId, eosId, unkId, addBos, chatTemplate };
}

function llamaMetadata(d: ModelDims, name: string, type: GgufFileType, v: GgufVocab): [string, GgufValue][] {
  const m: [string, GgufValue][] = [
    ["general.architecture", gguf.str("llama")],
    ["general.name", gguf.str(name)],
    ["general.file_type", gguf.u32(FILE_TYPE[type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    ["llama.vocab_size", gguf.u32(d.vocabSize)],
    ["llama.context_length", gguf.u32(d.maxPositions)],
    ["llama.embedding_length", gguf.u32(d.hiddenSize)],
    ["llama.block_count", gguf.u32(d.numLayers)],
    ["llama.feed_forward_length", gguf.u32(d.expertFfn)],
    ["llama.attention.head_count", gguf.u32(d.numHeads)],
    ["llama.attention.head_count_kv", gguf.u32(d.numKvHeads)],
    ["llama.attention.key_length", gguf.u32(d.headDim)],
    ["llama.attention.value_length", gguf.u32(d.headDim)],
    ["llama.rope.dimension_count", gguf.u32(d.headDim)],
    ["llama.rope.freq_base", gguf.f32(d.ropeTheta)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(d.rmsNormEps)],
    ["llama.expert_count", gguf.u32(d.numExperts)],
    ["llama.expert_used_count", gguf.u32(d.topK)],
    ["tokenizer.ggml.model", gguf.str("gpt2")],
    ["tokenizer.ggml.pre", gguf.str("gpt-2")],
    ["tokenizer.ggml.tokens", gguf.strings(v.tokens)],
    ["tokenizer.ggml.token_type", gguf.i32s(v.tokenTypes)],
    ["tokenizer.ggml.merges", gguf.strings(v.merges)],
  ];
  if (v.bosId !== undefined) m.push(["tokenizer.ggml.bos_token_id", gguf.u32(v.bosId)]);
  if (v.eosId !== undefined) m.push(["tokenizer.ggml.eos_token_id", gguf.u32(v.eosId)]);
  if (v.unkId !== undefined) m.push(["tokenizer.ggml.unknown_token_id", gguf.u32(v.unkId)]);
  m.push(["tokenizer.ggml.add_bos_token", gguf.bool(v.addBos)]);
  m.push(["tokenizer.ggml.add_eos_token", gguf.bool(false)]);
  if (v.chatTemplate !== undefined) m.push(["tokenizer.chat_template", gguf.str(v.chatTemplate)]);
  return m;
}
