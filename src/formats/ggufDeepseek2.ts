/**
 * llama.cpp's `deepseek2` GGUF files (DeepSeek-V2 / V2-Lite) seen as a Hugging Face
 * DeepseekV2ForCausalLM checkpoint. Names and keys as convert_hf_to_gguf.py (DeepseekV2Model) writes
 * them and llama-model.cpp reads them:
 *
 *   blk.N.attn_norm / ffn_norm .weight                  input_layernorm / post_attention_layernorm
 *   blk.N.attn_q_a, attn_q_a_norm, attn_q_b .weight      self_attn.q_a_proj, q_a_layernorm, q_b_proj
 *   blk.N.attn_q.weight                                  self_attn.q_proj (no q_lora_rank: V2-Lite)
 *   blk.N.attn_kv_a_mqa, attn_kv_a_norm .weight          self_attn.kv_a_proj_with_mqa, kv_a_layernorm
 *   blk.N.attn_kv_b.weight [r, nh*(dn+dv)]               self_attn.kv_b_proj (files before the split), or
 *   blk.N.attn_k_b.weight [dn, r, nh] (transposed)       kv_b_proj rebuilt from the newer split
 *   blk.N.attn_v_b.weight [r, dv, nh]                    (k rows of head h: k_b[h] transposed; v rows: v_b[h])
 *   blk.N.attn_output.weight                             self_attn.o_proj
 *   blk.N.ffn_{gate,up,down}.weight                      mlp.*_proj of the leading dense layers
 *   blk.N.ffn_gate_inp.weight                            mlp.gate.weight
 *   blk.N.ffn_{gate,up,down}_exps.weight                 mlp.experts.J.* (stacked, split per expert)
 *   blk.N.ffn_{gate,up,down}_shexp.weight                mlp.shared_experts.*
 *
 * RoPE: llama.cpp's deepseek2 uses LLAMA_ROPE_TYPE_NORM (adjacent pairs), which is DeepSeek's own
 * interleaved order, and the converter writes q / kv_a rows as the checkpoint has them: no
 * permutation to undo (the importer's mlaWeights.ts permutes to half-split itself).
 *
 * Keys: attention.q_lora_rank (absent: no q LoRA), attention.kv_lora_rank; key_length_mla (dn + dr)
 * and value_length_mla (dv), with key_length / value_length then r + dr / r (MLA seen as MQA); files
 * written before the _mla keys have key_length dn + dr and value_length dv. rope.dimension_count
 * (dr), leading_dense_block_count, feed_forward_length (dense), expert_feed_forward_length,
 * expert_shared_count, expert_weights_scale (absent: 1), expert_weights_norm (absent: false),
 * expert_gating_func (absent: softmax, llama.cpp's default for V2 files; sigmoid is V3, refused),
 * expert_group_count / expert_group_used_count, rope.scaling.{type yarn, factor,
 * original_context_length, yarn_log_multiplier = 0.1 * mscale_all_dim, yarn_beta_fast/slow}.
 *
 * What the format cannot say, and what the import therefore sets:
 * - YaRN `mscale`: only 0.1 * mscale_all_dim is stored, and llama.cpp takes mscale = mscale_all_dim
 *   for deepseek2 (its rope attention factor is then 1, as in DeepSeek-V2's own configs); the config
 *   says so (mscale = mscale_all_dim). llama.cpp rounds YaRN's correction range to whole dims
 *   (truncate: true, as DeepSeek's modeling code does). A YaRN file without yarn_log_multiplier is
 *   computed by llama.cpp with YaRN's 1 + 0.1 ln(factor) on the rotated q / k and its square on the
 *   softmax: attention_factor and mscale_all_dim 1 in the config (checked against node-llama-cpp).
 * - Expert groups: llama.cpp routes with groups when expert_group_count > 1, but scores a group by
 *   the sum of its best two experts (DeepSeek-V3's rule), while DeepSeek-V2's group_limited_greedy
 *   scores it by its best expert. moe-run's deepseek_v2 implements V2's rule, so a file with groups
 *   imports as group_limited_greedy with n_group / topk_group: it computes the Hugging Face model,
 *   which differs from llama.cpp wherever the two group rankings differ. Without group keys both
 *   route greedily over all experts.
 * - Attention biases (V2-Lite-style q/kv_a/o_proj biases) have no deepseek2 tensors: a file with
 *   such tensors is refused.
 */
import { GgufTensorShapeError, UnsupportedConfigError } from "../errors.js";
import type { ArchContext } from "./ggufGptOss.js";
import type { GgufFile } from "./ggufReader.js";
import type { HfConfig } from "./HfCheckpoint.js";

type Part = "gate" | "up" | "down";
const PROJ: Record<Part, string> = { gate: "gate_proj", up: "up_proj", down: "down_proj" };

/** The mscale_all_dim whose 0.1x rounds to the stored fp32 yarn_log_multiplier, shortest decimal first. */
export function mscaleFromLogMultiplier(v: number): number {
  for (let p = 1; p <= 17; p++) {
    const m = Number((v / 0.1).toPrecision(p));
    if (Math.fround(0.1 * m) === Math.fround(v)) return m;
  }
  return v / 0.1;
}

export function describeDeepseek2(c: ArchContext, config: HfConfig, dims: { L: number; H: number; V: number; heads: number; kvHeads: number; headDim: number; experts: number; topK: number }): void {
  const { g } = c;
  const { L, H, heads: nh, experts: E } = dims;
  const gating = g.value(c.key("expert_gating_func"));
  if (gating !== undefined && Number(gating) !== 1) throw new UnsupportedConfigError(`${g.path}: deepseek2 expert gating function ${String(gating)} (not softmax; DeepSeek-V3's sigmoid router) is not supported`);
  if (g.has("blk.0.exp_probs_b.bias") || [...g.tensors.keys()].some((n) => n.endsWith(".exp_probs_b.bias"))) {
    throw new UnsupportedConfigError(`${g.path}: deepseek2 expert selection biases (exp_probs_b, DeepSeek-V3) are not supported`);
  }
  const biased = [...g.tensors.keys()].find((n) => /^blk\.\d+\.attn_[a-z_]+\.bias$/.test(n));
  if (biased) throw new UnsupportedConfigError(`${g.path}: tensor "${biased}": llama.cpp's deepseek2 has no attention biases, and this file's are not imported`);

  const dr = c.uniform("rope.dimension_count");
  const r = c.uniform("attention.kv_lora_rank");
  const qr = c.uniform("attention.q_lora_rank", 0);
  let dn: number;
  let dv: number;
  if (g.value(c.key("attention.key_length_mla")) !== undefined) {
    dn = c.uniform("attention.key_length_mla") - dr;
    dv = c.uniform("attention.value_length_mla");
  } else {
    // Files written before MLA was kept compressed: key_length = dn + dr, value_length = dv.
    dn = c.uniform("attention.key_length") - dr;
    dv = c.uniform("attention.value_length");
  }
  if (!(dn > 0) || !(dv > 0) || !(r > 0) || !(dr > 0) || dr % 2) throw new UnsupportedConfigError(`${g.path}: deepseek2 head sizes (nope ${dn}, rope ${dr}, v ${dv}, kv_lora_rank ${r}) are not valid`);
  const F = c.uniform("expert_feed_forward_length");
  const dense = c.uniform("leading_dense_block_count", 0);
  const Fd = dense > 0 ? c.uniform("feed_forward_length") : c.uniform("feed_forward_length", 0);
  const shared = c.uniform("expert_shared_count", 0);
  const nGroup = c.uniform("expert_group_count", 1) || 1;
  const topkGroup = nGroup > 1 ? c.uniform("expert_group_used_count") : 1;

  const rs: Record<string, unknown> | null = ropeScaling(c, g);
  const qLora = g.has("blk.0.attn_q_a.weight");
  if (qLora && !qr) throw new UnsupportedConfigError(`${g.path}: blk.0.attn_q_a.weight is stored but ${c.key("attention.q_lora_rank")} is missing`);

  delete config["head_dim"];
  Object.assign(config, {
    architectures: ["DeepseekV2ForCausalLM"],
    model_type: "deepseek_v2",
    num_key_value_heads: nh,
    hidden_act: "silu",
    q_lora_rank: qLora ? qr : null,
    kv_lora_rank: r,
    qk_nope_head_dim: dn,
    qk_rope_head_dim: dr,
    v_head_dim: dv,
    intermediate_size: Fd || F,
    moe_intermediate_size: F,
    n_routed_experts: E,
    n_shared_experts: shared,
    first_k_dense_replace: dense,
    moe_layer_freq: 1,
    routed_scaling_factor: g.number(c.key("expert_weights_scale"), 1) || 1,
    norm_topk_prob: Boolean(g.value(c.key("expert_weights_norm")) ?? false),
    scoring_func: "softmax",
    topk_method: nGroup > 1 ? "group_limited_greedy" : "greedy",
    n_group: nGroup,
    topk_group: topkGroup,
    attention_bias: false,
    rope_scaling: rs,
  });

  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  const qRows = nh * (dn + dr);
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    c.add(hf(l, "input_layernorm.weight"), `${b}.attn_norm.weight`, [H]);
    c.add(hf(l, "post_attention_layernorm.weight"), `${b}.ffn_norm.weight`, [H]);
    if (qLora) {
      c.add(hf(l, "self_attn.q_a_proj.weight"), `${b}.attn_q_a.weight`, [qr, H]);
      c.add(hf(l, "self_attn.q_a_layernorm.weight"), `${b}.attn_q_a_norm.weight`, [qr]);
      c.add(hf(l, "self_attn.q_b_proj.weight"), `${b}.attn_q_b.weight`, [qRows, qr]);
    } else {
      c.add(hf(l, "self_attn.q_proj.weight"), `${b}.attn_q.weight`, [qRows, H]);
    }
    c.add(hf(l, "self_attn.kv_a_proj_with_mqa.weight"), `${b}.attn_kv_a_mqa.weight`, [r + dr, H]);
    c.add(hf(l, "self_attn.kv_a_layernorm.weight"), `${b}.attn_kv_a_norm.weight`, [r]);
    const kvB = hf(l, "self_attn.kv_b_proj.weight");
    if (g.has(`${b}.attn_kv_b.weight`)) {
      c.add(kvB, `${b}.attn_kv_b.weight`, [nh * (dn + dv), r]);
    } else {
      const kb = c.required(`${b}.attn_k_b.weight`);
      const vb = c.required(`${b}.attn_v_b.weight`);
      const same = (a: readonly number[], e: number[]) => a.length === e.length && a.every((x, i) => x === e[i]);
      if (!same(kb.dims, [dn, r, nh])) throw new GgufTensorShapeError(`${g.path}: tensor "${kb.name}" has dims [${kb.dims.join(", ")}] but the metadata implies [${dn}, ${r}, ${nh}] (innermost first)`);
      if (!same(vb.dims, [r, dv, nh])) throw new GgufTensorShapeError(`${g.path}: tensor "${vb.name}" has dims [${vb.dims.join(", ")}] but the metadata implies [${r}, ${dv}, ${nh}] (innermost first)`);
      c.derive(kvB, [nh * (dn + dv), r], {
        tensors: [kb.name, vb.name],
        dtype: kb.type.name === vb.type.name ? kb.type.name : "F32",
        floats: (file: GgufFile, index?: number) => {
          if (index !== undefined) throw new UnsupportedConfigError(`slices of ${kvB} are not supported`);
          return kvBFromSplit(file.readFloat32(kb.name), file.readFloat32(vb.name), nh, dn, dv, r);
        },
      });
    }
    c.add(hf(l, "self_attn.o_proj.weight"), `${b}.attn_output.weight`, [H, nh * dv]);
    const shape = (p: Part, rows: number) => (p === "down" ? [H, rows] : [rows, H]);
    if (l < dense) {
      for (const p of ["gate", "up", "down"] as const) c.add(hf(l, `mlp.${PROJ[p]}.weight`), `${b}.ffn_${p}.weight`, shape(p, Fd));
      continue;
    }
    c.add(hf(l, "mlp.gate.weight"), `${b}.ffn_gate_inp.weight`, [E, H]);
    for (const p of ["gate", "up", "down"] as const) {
      const s = shape(p, F);
      const stacked = `${b}.ffn_${p}_exps.weight`;
      const t = c.required(stacked);
      if (t.dims.length !== 3 || t.dims[0] !== s[1] || t.dims[1] !== s[0] || t.dims[2] !== E) {
        throw new GgufTensorShapeError(`${g.path}: tensor "${stacked}" has dims [${t.dims.join(", ")}] but the metadata implies [${s[1]}, ${s[0]}, ${E}] (innermost first)`);
      }
      for (let j = 0; j < E; j++) c.addRows(hf(l, `mlp.experts.${j}.${PROJ[p]}.weight`), stacked, s, j * s[0]!, s[0]!);
      if (shared > 0) c.add(hf(l, `mlp.shared_experts.${PROJ[p]}.weight`), `${b}.ffn_${p}_shexp.weight`, shape(p, shared * F));
    }
  }
}

/** kv_b_proj [nh*(dn+dv), r] from k_b [nh][r][dn] (transposed per head) and v_b [nh][dv][r]. */
export function kvBFromSplit(kb: Float32Array, vb: Float32Array, nh: number, dn: number, dv: number, r: number): Float32Array {
  const out = new Float32Array(nh * (dn + dv) * r);
  for (let h = 0; h < nh; h++) {
    const base = h * (dn + dv);
    for (let i = 0; i < dn; i++) for (let c = 0; c < r; c++) out[(base + i) * r + c] = kb[(h * r + c) * dn + i]!;
    out.set(vb.subarray(h * dv * r, (h + 1) * dv * r), (base + dn) * r);
  }
  return out;
}

function ropeScaling(c: ArchContext, g: GgufFile): Record<string, unknown> | null {
  const type = g.value(c.key("rope.scaling.type"));
  if (type === undefined || type === "none") return null;
  if (type !== "yarn") throw new UnsupportedConfigError(`${g.path}: rope scaling "${String(type)}" is not supported for deepseek2; only YaRN`);
  const factor = g.number(c.key("rope.scaling.factor"));
  const logMul = g.number(c.key("rope.scaling.yarn_log_multiplier"), 0);
  const rs: Record<string, unknown> = {
    type: "yarn",
    factor,
    original_max_position_embeddings: g.number(c.key("rope.scaling.original_context_length")),
    beta_fast: g.number(c.key("rope.scaling.yarn_beta_fast"), 32) || 32,
    beta_slow: g.number(c.key("rope.scaling.yarn_beta_slow"), 1) || 1,
    truncate: true,
  };
  if (logMul) {
    const m = mscaleFromLogMultiplier(logMul);
    rs["mscale"] = m;
    rs["mscale_all_dim"] = m;
  } else if (factor > 1) {
    // No multiplier stored: llama.cpp's deepseek2 scales both the rotated q / k (YaRN's
    // 1 + 0.1 ln factor) and the softmax (the same factor squared, as mscale_all_dim 1 would).
    rs["attention_factor"] = 1 + 0.1 * Math.log(factor);
    rs["mscale_all_dim"] = 1;
  }
  return rs;
}
