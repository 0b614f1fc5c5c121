/**
 * A Hugging Face DeepSeek-V2 (deepseek_v2) checkpoint -> GGUF as llama.cpp's convert_hf_to_gguf.py
 * (DeepseekV2Model) writes it: arch `deepseek2`, MLA seen as MQA (head_count_kv 1, key_length
 * kv_lora_rank + rope dims, value_length kv_lora_rank, key_length_mla / value_length_mla the real
 * head sizes), kv_b_proj split into attn_k_b (per head, transposed) and attn_v_b (the converter no
 * longer writes attn_kv_b), q / kv_a rows as the checkpoint has them (deepseek2's RoPE is the
 * adjacent-pair one, DeepSeek's own), experts stacked, shared experts as *_shexp, and the keys the
 * converter writes (n_group / topk_group as expert_group_count / expert_group_used_count, YaRN's
 * mscale_all_dim as yarn_log_multiplier = 0.1 * mscale_all_dim). YaRN's `mscale` has no key.
 * Attention biases (tiny-deepseek-v2-lite) have no deepseek2 tensor: refused.
 */
import * as path from "node:path";
import type { ModelDims } from "../architectures/ModelDims.js";
import { CheckpointCorruptError, UnsupportedConfigError } from "../errors.js";
import { FILE_TYPE, GGUF_DEFAULT_ALIGNMENT, gguf, writeGguf, type GgmlTypeName, type GgufValue } from "./gguf.js";
import type { GgufExportOptions, GgufExportResult } from "./ggufExport.js";
import type { HfCheckpoint } from "./HfCheckpoint.js";
import { ggufTensorList } from "./ggufTensorList.js";

type Part = "gate" | "up" | "down";
const PROJ: Record<Part, string> = { gate: "gate_proj", up: "up_proj", down: "down_proj" };

export function exportDeepseek2(
  ckpt: HfCheckpoint,
  hfDir: string,
  d: ModelDims,
  outPath: string,
  options: GgufExportOptions,
  tokenizer: [string, GgufValue][],
  fallback: (type: GgmlTypeName, cols: number) => GgmlTypeName
): GgufExportResult {
  const c = ckpt.config;
  const num = (k: string, dflt?: number): number => {
    const v = c[k];
    if (typeof v === "number") return v;
    if (dflt !== undefined) return dflt;
    throw new CheckpointCorruptError(`config.json in ${hfDir} lacks "${k}"`);
  };
  if (c["attention_bias"] === true || ckpt.tensorNames().some((n) => /self_attn\.[a-z_]+\.bias$/.test(n))) {
    throw new UnsupportedConfigError(`${hfDir}: DeepSeek-V2 attention biases (attention_bias) have no tensor in llama.cpp's deepseek2; not exported`);
  }
  const H = d.hiddenSize;
  const V = d.vocabSize;
  const L = d.numLayers;
  const nh = d.numHeads;
  const E = num("n_routed_experts");
  const F = num("moe_intermediate_size");
  const Fd = num("intermediate_size");
  const dense = num("first_k_dense_replace", 0);
  const shared = num("n_shared_experts", 0);
  const qr = c["q_lora_rank"] === null || c["q_lora_rank"] === undefined ? 0 : num("q_lora_rank");
  const r = num("kv_lora_rank");
  const dn = num("qk_nope_head_dim");
  const dr = num("qk_rope_head_dim");
  const dv = num("v_head_dim");
  const { types, tensors, read, f32, matrix } = ggufTensorList(ckpt, hfDir, (name, dims) => options.typeFor?.(name, dims) ?? fallback(options.type, dims[0]!));
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  const shape = (p: Part, rows: number) => (p === "down" ? [H, rows] : [rows, H]);
  const gdims = (p: Part, rows: number) => (p === "down" ? [rows, H] : [H, rows]);
  const qRows = nh * (dn + dr);
  matrix("token_embd.weight", [H, V], [read("model.embed_tokens.weight", [V, H])]);
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    f32(`${b}.attn_norm.weight`, [H], read(hf(l, "input_layernorm.weight"), [H]));
    if (qr) {
      matrix(`${b}.attn_q_a.weight`, [H, qr], [read(hf(l, "self_attn.q_a_proj.weight"), [qr, H])]);
      f32(`${b}.attn_q_a_norm.weight`, [qr], read(hf(l, "self_attn.q_a_layernorm.weight"), [qr]));
      matrix(`${b}.attn_q_b.weight`, [qr, qRows], [read(hf(l, "self_attn.q_b_proj.weight"), [qRows, qr])]);
    } else {
      matrix(`${b}.attn_q.weight`, [H, qRows], [read(hf(l, "self_attn.q_proj.weight"), [qRows, H])]);
    }
    matrix(`${b}.attn_kv_a_mqa.weight`, [H, r + dr], [read(hf(l, "self_attn.kv_a_proj_with_mqa.weight"), [r + dr, H])]);
    f32(`${b}.attn_kv_a_norm.weight`, [r], read(hf(l, "self_attn.kv_a_layernorm.weight"), [r]));
    const kvB = read(hf(l, "self_attn.kv_b_proj.weight"), [nh * (dn + dv), r]);
    // k_b: kv_b.view(nh, dn + dv, r)[:, :dn].transpose(1, 2) -> [nh, r, dn]; v_b: [:, dn:] -> [nh, dv, r].
    matrix(`${b}.attn_k_b.weight`, [dn, r, nh], [() => kvBSplit(kvB(), nh, dn, dv, r).kb]);
    matrix(`${b}.attn_v_b.weight`, [r, dv, nh], [() => kvBSplit(kvB(), nh, dn, dv, r).vb]);
    matrix(`${b}.attn_output.weight`, [nh * dv, H], [read(hf(l, "self_attn.o_proj.weight"), [H, nh * dv])]);
    f32(`${b}.ffn_norm.weight`, [H], read(hf(l, "post_attention_layernorm.weight"), [H]));
    if (l < dense) {
      for (const p of ["gate", "up", "down"] as const) matrix(`${b}.ffn_${p}.weight`, gdims(p, Fd), [read(hf(l, `mlp.${PROJ[p]}.weight`), shape(p, Fd))]);
      continue;
    }
    f32(`${b}.ffn_gate_inp.weight`, [H, E], read(hf(l, "mlp.gate.weight"), [E, H]));
    for (const p of ["gate", "up", "down"] as const) {
      matrix(`${b}.ffn_${p}_exps.weight`, [...gdims(p, F), E], Array.from({ length: E }, (_, j) => read(hf(l, `mlp.experts.${j}.${PROJ[p]}.weight`), shape(p, F))));
      if (shared > 0) matrix(`${b}.ffn_${p}_shexp.weight`, gdims(p, shared * F), [read(hf(l, `mlp.shared_experts.${PROJ[p]}.weight`), shape(p, shared * F))]);
    }
  }
  f32("output_norm.weight", [H], read("model.norm.weight", [H]));
  if (ckpt.has("lm_head.weight")) matrix("output.weight", [H, V], [read("lm_head.weight", [V, H])]);

  const k = (key: string) => `deepseek2.${key}`;
  const metadata: [string, GgufValue][] = [
    ["general.architecture", gguf.str("deepseek2")],
    ["general.name", gguf.str(options.name ?? path.basename(path.resolve(hfDir)))],
    ["general.file_type", gguf.u32(FILE_TYPE[options.type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    [k("block_count"), gguf.u32(L)],
    [k("context_length"), gguf.u32(d.maxPositions)],
    [k("embedding_length"), gguf.u32(H)],
    [k("feed_forward_length"), gguf.u32(Fd)],
    [k("attention.head_count"), gguf.u32(nh)],
    // MLA as MQA with larger heads: one kv head of kv_lora_rank + rope dims.
    [k("attention.head_count_kv"), gguf.u32(1)],
    [k("rope.freq_base"), gguf.f32(d.ropeTheta)],
    [k("attention.layer_norm_rms_epsilon"), gguf.f32(d.rmsNormEps)],
    [k("expert_count"), gguf.u32(E)],
    [k("expert_used_count"), gguf.u32(d.topK)],
  ];
  // convert_hf_to_gguf (TextModel) writes n_group / topk_group as they are, whatever topk_method says.
  if (c["n_group"] !== undefined && c["n_group"] !== null) metadata.push([k("expert_group_count"), gguf.u32(num("n_group"))]);
  if (c["topk_group"] !== undefined && c["topk_group"] !== null) metadata.push([k("expert_group_used_count"), gguf.u32(num("topk_group"))]);
  metadata.push([k("expert_gating_func"), gguf.u32(1)]);
  metadata.push(
    [k("leading_dense_block_count"), gguf.u32(dense)],
    [k("vocab_size"), gguf.u32(V)],
  );
  if (qr) metadata.push([k("attention.q_lora_rank"), gguf.u32(qr)]);
  metadata.push(
    [k("attention.kv_lora_rank"), gguf.u32(r)],
    [k("attention.key_length"), gguf.u32(r + dr)],
    [k("attention.value_length"), gguf.u32(r)],
    [k("attention.key_length_mla"), gguf.u32(dn + dr)],
    [k("attention.value_length_mla"), gguf.u32(dv)],
    [k("expert_feed_forward_length"), gguf.u32(F)],
    [k("expert_shared_count"), gguf.u32(shared)],
    [k("expert_weights_scale"), gguf.f32(num("routed_scaling_factor", 1))],
  );
  if (d.normTopkProb) metadata.push([k("expert_weights_norm"), gguf.bool(true)]);
  metadata.push([k("rope.dimension_count"), gguf.u32(dr)]);
  const rs = c["rope_scaling"] as Record<string, unknown> | null | undefined;
  if (rs && (rs["type"] ?? rs["rope_type"]) === "yarn") {
    metadata.push(
      [k("rope.scaling.type"), gguf.str("yarn")],
      [k("rope.scaling.factor"), gguf.f32(Number(rs["factor"]))],
      [k("rope.scaling.original_context_length"), gguf.u32(Number(rs["original_max_position_embeddings"]))],
    );
    if (typeof rs["beta_fast"] === "number") metadata.push([k("rope.scaling.yarn_beta_fast"), gguf.f32(rs["beta_fast"])]);
    if (typeof rs["beta_slow"] === "number") metadata.push([k("rope.scaling.yarn_beta_slow"), gguf.f32(rs["beta_slow"])]);
    if (typeof rs["mscale_all_dim"] === "number") metadata.push([k("rope.scaling.yarn_log_multiplier"), gguf.f32(0.1 * rs["mscale_all_dim"])]);
  } else if (rs) {
    throw new UnsupportedConfigError(`${hfDir}: rope_scaling ${JSON.stringify(rs["type"] ?? rs["rope_type"])} is not exported for deepseek2; only YaRN`);
  }
  metadata.push(...tokenizer);
  return { ...writeGguf(outPath, metadata, tensors), arch: "deepseek2", types };
}

/** kv_b_proj [nh*(dn+dv), r] -> k_b [nh][r][dn] (per head transposed) and v_b [nh][dv][r]. */
export function kvBSplit(kvB: Float32Array, nh: number, dn: number, dv: number, r: number): { kb: Float32Array; vb: Float32Array } {
  const kb = new Float32Array(nh * r * dn);
  const vb = new Float32Array(nh * dv * r);
  for (let h = 0; h < nh; h++) {
    const base = h * (dn + dv);
    for (let i = 0; i < dn; i++) for (let c = 0; c < r; c++) kb[(h * r + c) * dn + i] = kvB[(base + i) * r + c]!;
    vb.set(kvB.subarray((base + dn) * r, (base + dn + dv) * r), h * dv * r);
  }
  return { kb, vb };
}
