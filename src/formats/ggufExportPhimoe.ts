/**
 * A Hugging Face Phi-MoE checkpoint -> GGUF as llama.cpp's convert_hf_to_gguf.py (PhiMoeModel)
 * writes it: arch `phimoe`, LayerNorm weights and biases, q/k/v/o with biases, output.bias,
 * stacked experts, LongRoPE factors as rope_factors_short / rope_factors_long .weight, and
 * rope.scaling.original_context_length / attn_factor (the converter's sqrt(1 + ln(s) / ln(orig)),
 * s = max positions / original).
 */
import * as path from "node:path";
import type { ModelDims } from "../architectures/ModelDims.js";
import { UnsupportedConfigError } from "../errors.js";
import { FILE_TYPE, GGUF_DEFAULT_ALIGNMENT, gguf, writeGguf, type GgmlTypeName, type GgufValue } from "./gguf.js";
import type { GgufExportOptions, GgufExportResult } from "./ggufExport.js";
import type { HfCheckpoint } from "./HfCheckpoint.js";
import { ggufTensorList } from "./ggufTensorList.js";

const MIXTRAL_W = { gate: "w1", up: "w3", down: "w2" } as const;

export function exportPhimoe(
  ckpt: HfCheckpoint,
  hfDir: string,
  d: ModelDims,
  outPath: string,
  options: GgufExportOptions,
  tokenizer: [string, GgufValue][],
  fallback: (type: GgmlTypeName, cols: number) => GgmlTypeName
): GgufExportResult {
  const c = ckpt.config;
  const H = d.hiddenSize;
  const V = d.vocabSize;
  const F = d.expertFfn;
  const E = d.numExperts;
  const qRows = d.numHeads * d.headDim;
  const kvRows = d.numKvHeads * d.headDim;
  const { types, tensors, read, f32, matrix } = ggufTensorList(ckpt, hfDir, (name, dims) => options.typeFor?.(name, dims) ?? fallback(options.type, dims[0]!));
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  const rs = c["rope_scaling"] as Record<string, unknown> | null | undefined;
  const longrope = rs && (rs["rope_type"] ?? rs["type"]) === "longrope";
  if (rs && !longrope) throw new UnsupportedConfigError(`phimoe GGUF export supports LongRoPE or no rope scaling`);
  matrix("token_embd.weight", [H, V], [read("model.embed_tokens.weight", [V, H])]);
  if (longrope) {
    const half = d.headDim / 2;
    f32("rope_factors_long.weight", [half], () => Float32Array.from(rs["long_factor"] as number[]));
    f32("rope_factors_short.weight", [half], () => Float32Array.from(rs["short_factor"] as number[]));
  }
  for (let l = 0; l < d.numLayers; l++) {
    const b = `blk.${l}`;
    for (const p of ["weight", "bias"]) f32(`${b}.attn_norm.${p}`, [H], read(hf(l, `input_layernorm.${p}`), [H]));
    for (const [p, t, rows] of [["q", "attn_q", qRows], ["k", "attn_k", kvRows], ["v", "attn_v", kvRows]] as const) {
      matrix(`${b}.${t}.weight`, [H, rows], [read(hf(l, `self_attn.${p}_proj.weight`), [rows, H])]);
      f32(`${b}.${t}.bias`, [rows], read(hf(l, `self_attn.${p}_proj.bias`), [rows]));
    }
    matrix(`${b}.attn_output.weight`, [qRows, H], [read(hf(l, "self_attn.o_proj.weight"), [H, qRows])]);
    f32(`${b}.attn_output.bias`, [H], read(hf(l, "self_attn.o_proj.bias"), [H]));
    for (const p of ["weight", "bias"]) f32(`${b}.ffn_norm.${p}`, [H], read(hf(l, `post_attention_layernorm.${p}`), [H]));
    f32(`${b}.ffn_gate_inp.weight`, [H, E], read(hf(l, "block_sparse_moe.gate.weight"), [E, H]));
    for (const p of ["gate", "up", "down"] as const) {
      const shape = p === "down" ? [H, F] : [F, H];
      matrix(`${b}.ffn_${p}_exps.weight`, [shape[1]!, shape[0]!, E], Array.from({ length: E }, (_, j) => read(hf(l, `block_sparse_moe.experts.${j}.${MIXTRAL_W[p]}.weight`), shape)));
    }
  }
  for (const p of ["weight", "bias"]) f32(`output_norm.${p}`, [H], read(`model.norm.${p}`, [H]));
  matrix("output.weight", [H, V], [read("lm_head.weight", [V, H])]);
  if (ckpt.has("lm_head.bias")) f32("output.bias", [V], read("lm_head.bias", [V]));

  const key = (x: string) => `phimoe.${x}`;
  const metadata: [string, GgufValue][] = [
    ["general.architecture", gguf.str("phimoe")],
    ["general.name", gguf.str(options.name ?? path.basename(path.resolve(hfDir)))],
    ["general.file_type", gguf.u32(FILE_TYPE[options.type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    [key("context_length"), gguf.u32(d.maxPositions)],
    [key("embedding_length"), gguf.u32(H)],
    [key("feed_forward_length"), gguf.u32(F)],
    [key("block_count"), gguf.u32(d.numLayers)],
    [key("attention.head_count"), gguf.u32(d.numHeads)],
    [key("attention.head_count_kv"), gguf.u32(d.numKvHeads)],
    [key("attention.layer_norm_rms_epsilon"), gguf.f32(d.rmsNormEps)],
    [key("rope.dimension_count"), gguf.u32(d.headDim)],
    [key("rope.freq_base"), gguf.f32(d.ropeTheta)],
    [key("expert_count"), gguf.u32(E)],
    [key("expert_used_count"), gguf.u32(d.topK)],
  ];
  if (longrope) {
    const orig = Number(c["original_max_position_embeddings"] ?? rs["original_max_position_embeddings"]);
    const scale = d.maxPositions / orig;
    metadata.push([key("rope.scaling.original_context_length"), gguf.u32(orig)]);
    metadata.push([key("rope.scaling.attn_factor"), gguf.f32(scale <= 1 ? 1 : Math.sqrt(1 + Math.log(scale) / Math.log(orig)))]);
  }
  metadata.push(...tokenizer);
  return { ...writeGguf(outPath, metadata, tensors), arch: "phimoe", types };
}
