/**
 * A Hugging Face GraniteMoe checkpoint -> GGUF as llama.cpp's convert_hf_to_gguf.py
 * (GraniteMoeModel) writes it: arch `granitemoe`, q/k rows permuted as LlamaModel does,
 * input_linear split into ffn_gate_exps (first F rows) and ffn_up_exps, output_linear as
 * ffn_down_exps, the router as ffn_gate_inp, and the multipliers as attention.scale,
 * embedding_scale, residual_scale and logit_scale.
 */
import * as path from "node:path";
import type { ModelDims } from "../architectures/ModelDims.js";
import { UnsupportedConfigError } from "../errors.js";
import { FILE_TYPE, GGUF_DEFAULT_ALIGNMENT, gguf, permuteRopeRows, writeGguf, type GgmlTypeName, type GgufValue } from "./gguf.js";
import type { GgufExportOptions, GgufExportResult } from "./ggufExport.js";
import type { HfCheckpoint } from "./HfCheckpoint.js";
import { ggufTensorList } from "./ggufTensorList.js";

export function exportGraniteMoe(
  ckpt: HfCheckpoint,
  hfDir: string,
  d: ModelDims,
  outPath: string,
  options: GgufExportOptions,
  tokenizer: [string, GgufValue][],
  fallback: (type: GgmlTypeName, cols: number) => GgmlTypeName
): GgufExportResult {
  const c = ckpt.config;
  if (c["attention_bias"] === true || c["shared_intermediate_size"]) throw new UnsupportedConfigError(`granitemoe GGUF export supports checkpoints without attention biases or a shared expert`);
  const H = d.hiddenSize;
  const V = d.vocabSize;
  const F = d.expertFfn;
  const E = d.numExperts;
  const qRows = d.numHeads * d.headDim;
  const kvRows = d.numKvHeads * d.headDim;
  const { types, tensors, read, f32, matrix } = ggufTensorList(ckpt, hfDir, (name, dims) => options.typeFor?.(name, dims) ?? fallback(options.type, dims[0]!));
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  matrix("token_embd.weight", [H, V], [read("model.embed_tokens.weight", [V, H])]);
  for (let l = 0; l < d.numLayers; l++) {
    const b = `blk.${l}`;
    f32(`${b}.attn_norm.weight`, [H], read(hf(l, "input_layernorm.weight"), [H]));
    const q = read(hf(l, "self_attn.q_proj.weight"), [qRows, H]);
    const k = read(hf(l, "self_attn.k_proj.weight"), [kvRows, H]);
    matrix(`${b}.attn_q.weight`, [H, qRows], [() => permuteRopeRows(q(), d.numHeads, H)]);
    matrix(`${b}.attn_k.weight`, [H, kvRows], [() => permuteRopeRows(k(), d.numKvHeads, H)]);
    matrix(`${b}.attn_v.weight`, [H, kvRows], [read(hf(l, "self_attn.v_proj.weight"), [kvRows, H])]);
    matrix(`${b}.attn_output.weight`, [qRows, H], [read(hf(l, "self_attn.o_proj.weight"), [H, qRows])]);
    f32(`${b}.ffn_norm.weight`, [H], read(hf(l, "post_attention_layernorm.weight"), [H]));
    f32(`${b}.ffn_gate_inp.weight`, [H, E], read(hf(l, "block_sparse_moe.router.layer.weight"), [E, H]));
    const gu = hf(l, "block_sparse_moe.input_linear.weight");
    ckpt.checkShape(gu, [E, 2 * F, H]);
    const half = (s: 0 | 1) => Array.from({ length: E }, (_, j) => () => ckpt.readFloat32Slice(gu, [E, 2 * F, H], j).subarray(s * F * H, (s + 1) * F * H));
    matrix(`${b}.ffn_gate_exps.weight`, [H, F, E], half(0));
    matrix(`${b}.ffn_up_exps.weight`, [H, F, E], half(1));
    const down = hf(l, "block_sparse_moe.output_linear.weight");
    ckpt.checkShape(down, [E, H, F]);
    matrix(`${b}.ffn_down_exps.weight`, [F, H, E], Array.from({ length: E }, (_, j) => () => ckpt.readFloat32Slice(down, [E, H, F], j)));
  }
  f32("output_norm.weight", [H], read("model.norm.weight", [H]));
  if (ckpt.has("lm_head.weight")) matrix("output.weight", [H, V], [read("lm_head.weight", [V, H])]);

  const key = (x: string) => `granitemoe.${x}`;
  const num = (k: string, fallbackValue: number) => (typeof c[k] === "number" ? (c[k] as number) : fallbackValue);
  const metadata: [string, GgufValue][] = [
    ["general.architecture", gguf.str("granitemoe")],
    ["general.name", gguf.str(options.name ?? path.basename(path.resolve(hfDir)))],
    ["general.file_type", gguf.u32(FILE_TYPE[options.type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    [key("vocab_size"), gguf.u32(V)],
    [key("context_length"), gguf.u32(d.maxPositions)],
    [key("embedding_length"), gguf.u32(H)],
    [key("block_count"), gguf.u32(d.numLayers)],
    [key("feed_forward_length"), gguf.u32(F)],
    [key("attention.head_count"), gguf.u32(d.numHeads)],
    [key("attention.head_count_kv"), gguf.u32(d.numKvHeads)],
    [key("rope.freq_base"), gguf.f32(d.ropeTheta)],
    [key("attention.layer_norm_rms_epsilon"), gguf.f32(d.rmsNormEps)],
    [key("expert_count"), gguf.u32(E)],
    [key("expert_used_count"), gguf.u32(d.topK)],
    [key("rope.dimension_count"), gguf.u32(d.headDim)],
    [key("attention.scale"), gguf.f32(num("attention_multiplier", 1 / Math.sqrt(d.headDim)))],
    [key("embedding_scale"), gguf.f32(num("embedding_multiplier", 1))],
    [key("residual_scale"), gguf.f32(num("residual_multiplier", 1))],
    [key("logit_scale"), gguf.f32(num("logits_scaling", 1))],
    ...tokenizer,
  ];
  return { ...writeGguf(outPath, metadata, tensors), arch: "granitemoe", types };
}
