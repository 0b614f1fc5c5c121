/**
 * A Hugging Face GLM-4.5 (glm4_moe) checkpoint -> GGUF as llama.cpp's convert_hf_to_gguf.py
 * (Glm4MoeModel) writes it: arch `glm4moe`, post_attention_layernorm as post_attention_norm, the
 * router's e_score_correction_bias as exp_probs_b.bias, experts stacked, shared experts as *_shexp,
 * and its keys (leading_dense_block_count, expert_shared_count, expert_weights_scale/norm, sigmoid
 * gating, rope.dimension_count of the rotary part). Like the converter it writes no expert-group
 * keys: llama.cpp routes GLM-4.5 without groups.
 */
import * as path from "node:path";
import type { ModelDims } from "../architectures/ModelDims.js";
import { FILE_TYPE, GGUF_DEFAULT_ALIGNMENT, gguf, writeGguf, type GgmlTypeName, type GgufValue } from "./gguf.js";
import type { GgufExportOptions, GgufExportResult } from "./ggufExport.js";
import type { HfCheckpoint } from "./HfCheckpoint.js";
import { ggufTensorList } from "./ggufTensorList.js";

type Part = "gate" | "up" | "down";
const PROJ: Record<Part, string> = { gate: "gate_proj", up: "up_proj", down: "down_proj" };

export function exportGlm4Moe(
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
  const dense = Number(c["first_k_dense_replace"] ?? 0);
  const Fd = Number(c["intermediate_size"]);
  const shared = Number(c["n_shared_experts"] ?? 0);
  const Fs = shared * F;
  const rot = Math.floor(d.headDim * Number(c["partial_rotary_factor"] ?? 0.5));
  const { types, tensors, read, f32, matrix } = ggufTensorList(ckpt, hfDir, (name, dims) => options.typeFor?.(name, dims) ?? fallback(options.type, dims[0]!));
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  const shape = (p: Part, rows: number) => (p === "down" ? [H, rows] : [rows, H]);
  const gdims = (p: Part, rows: number) => (p === "down" ? [rows, H] : [H, rows]);
  matrix("token_embd.weight", [H, V], [read("model.embed_tokens.weight", [V, H])]);
  for (let l = 0; l < d.numLayers; l++) {
    const b = `blk.${l}`;
    f32(`${b}.attn_norm.weight`, [H], read(hf(l, "input_layernorm.weight"), [H]));
    for (const [p, t, rows] of [["q", "attn_q", qRows], ["k", "attn_k", kvRows], ["v", "attn_v", kvRows]] as const) {
      matrix(`${b}.${t}.weight`, [H, rows], [read(hf(l, `self_attn.${p}_proj.weight`), [rows, H])]);
      if (d.qkvBias) f32(`${b}.${t}.bias`, [rows], read(hf(l, `self_attn.${p}_proj.bias`), [rows]));
    }
    matrix(`${b}.attn_output.weight`, [qRows, H], [read(hf(l, "self_attn.o_proj.weight"), [H, qRows])]);
    if (d.qkNorm === "head") {
      f32(`${b}.attn_q_norm.weight`, [d.headDim], read(hf(l, "self_attn.q_norm.weight"), [d.headDim]));
      f32(`${b}.attn_k_norm.weight`, [d.headDim], read(hf(l, "self_attn.k_norm.weight"), [d.headDim]));
    }
    f32(`${b}.post_attention_norm.weight`, [H], read(hf(l, "post_attention_layernorm.weight"), [H]));
    if (l < dense) {
      for (const p of ["gate", "up", "down"] as const) matrix(`${b}.ffn_${p}.weight`, gdims(p, Fd), [read(hf(l, `mlp.${PROJ[p]}.weight`), shape(p, Fd))]);
      continue;
    }
    f32(`${b}.ffn_gate_inp.weight`, [H, E], read(hf(l, "mlp.gate.weight"), [E, H]));
    f32(`${b}.exp_probs_b.bias`, [E], read(hf(l, "mlp.gate.e_score_correction_bias"), [E]));
    for (const p of ["gate", "up", "down"] as const) {
      matrix(`${b}.ffn_${p}_exps.weight`, [...gdims(p, F), E], Array.from({ length: E }, (_, j) => read(hf(l, `mlp.experts.${j}.${PROJ[p]}.weight`), shape(p, F))));
      if (Fs > 0) matrix(`${b}.ffn_${p}_shexp.weight`, gdims(p, Fs), [read(hf(l, `mlp.shared_experts.${PROJ[p]}.weight`), shape(p, Fs))]);
    }
  }
  f32("output_norm.weight", [H], read("model.norm.weight", [H]));
  if (ckpt.has("lm_head.weight")) matrix("output.weight", [H, V], [read("lm_head.weight", [V, H])]);

  const k = (key: string) => `glm4moe.${key}`;
  const metadata: [string, GgufValue][] = [
    ["general.architecture", gguf.str("glm4moe")],
    ["general.name", gguf.str(options.name ?? path.basename(path.resolve(hfDir)))],
    ["general.file_type", gguf.u32(FILE_TYPE[options.type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    [k("block_count"), gguf.u32(d.numLayers)],
    [k("context_length"), gguf.u32(d.maxPositions)],
    [k("embedding_length"), gguf.u32(H)],
    [k("feed_forward_length"), gguf.u32(Fd)],
    [k("attention.head_count"), gguf.u32(d.numHeads)],
    [k("attention.head_count_kv"), gguf.u32(d.numKvHeads)],
    [k("rope.freq_base"), gguf.f32(d.ropeTheta)],
    [k("attention.layer_norm_rms_epsilon"), gguf.f32(d.rmsNormEps)],
    [k("expert_used_count"), gguf.u32(d.topK)],
    [k("attention.key_length"), gguf.u32(d.headDim)],
    [k("attention.value_length"), gguf.u32(d.headDim)],
    [k("rope.dimension_count"), gguf.u32(rot)],
    [k("expert_count"), gguf.u32(E)],
    [k("expert_feed_forward_length"), gguf.u32(F)],
    [k("expert_shared_count"), gguf.u32(shared)],
    [k("leading_dense_block_count"), gguf.u32(dense)],
    [k("expert_gating_func"), gguf.u32(2)],
    [k("expert_weights_scale"), gguf.f32(Number(c["routed_scaling_factor"] ?? 1))],
    [k("expert_weights_norm"), gguf.bool(d.normTopkProb)],
    [k("nextn_predict_layers"), gguf.u32(0)],
    ...tokenizer,
  ];
  return { ...writeGguf(outPath, metadata, tensors), arch: "glm4moe", types };
}
