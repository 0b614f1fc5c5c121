/**
 * llama.cpp's `glm4moe` GGUF files (GLM-4.5) seen as a Hugging Face Glm4MoeForCausalLM checkpoint.
 * Names and keys as convert_hf_to_gguf.py (Glm4MoeModel) writes them and llama-model.cpp reads them:
 *
 *   blk.N.attn_norm / post_attention_norm .weight      input_layernorm / post_attention_layernorm
 *   blk.N.attn_{q,k,v}.{weight,bias}, attn_output       self_attn.* (NEOX RoPE on the first
 *   blk.N.attn_{q,k}_norm.weight [head_dim]             rope.dimension_count dims: no permutation)
 *   blk.N.ffn_{gate,up,down}.weight                     mlp.*_proj of the leading dense layers
 *   blk.N.ffn_gate_inp.weight, exp_probs_b.bias         mlp.gate.weight, e_score_correction_bias
 *   blk.N.ffn_{gate,up,down}_exps.weight                mlp.experts.J.* (stacked, split per expert)
 *   blk.N.ffn_{gate,up,down}_shexp.weight               mlp.shared_experts.*
 *
 * Keys: leading_dense_block_count, expert_feed_forward_length, expert_shared_count,
 * expert_weights_scale, expert_weights_norm, expert_gating_func (sigmoid), nextn_predict_layers
 * (block_count counts the MTP layers, which are not imported). llama.cpp routes GLM-4.5 without
 * expert groups unless the file says otherwise (expert_group_count / expert_group_used_count), so
 * n_group / topk_group are 1 when those keys are absent: the import computes what llama.cpp does.
 */
import { UnsupportedConfigError } from "../errors.js";
import type { ArchContext } from "./ggufGptOss.js";
import type { HfConfig } from "./HfCheckpoint.js";

type Part = "gate" | "up" | "down";
const PROJ: Record<Part, string> = { gate: "gate_proj", up: "up_proj", down: "down_proj" };

export function describeGlm4Moe(c: ArchContext, config: HfConfig, dims: { L: number; H: number; V: number; heads: number; kvHeads: number; headDim: number; experts: number; topK: number }): void {
  const { g } = c;
  const { H, heads, kvHeads, headDim, experts: E } = dims;
  const nextn = c.uniform("nextn_predict_layers", 0);
  const L = dims.L - nextn;
  const gating = g.value(c.key("expert_gating_func"));
  if (gating !== undefined && Number(gating) !== 2) throw new UnsupportedConfigError(`${g.path}: glm4moe expert gating function ${String(gating)} (not sigmoid) is not supported`);
  const F = c.uniform("expert_feed_forward_length");
  const dense = c.uniform("leading_dense_block_count", 0);
  const Fd = dense > 0 ? c.uniform("feed_forward_length") : 0;
  const shared = c.uniform("expert_shared_count", 0);
  const rot = c.uniform("rope.dimension_count", headDim);
  const scaling = g.value(c.key("rope.scaling.type"));
  if (scaling !== undefined && scaling !== "none") throw new UnsupportedConfigError(`${g.path}: rope scaling "${String(scaling)}" is not supported for glm4moe yet`);
  const bias = g.has("blk.0.attn_q.bias");
  const qkNorm = g.has("blk.0.attn_q_norm.weight");
  Object.assign(config, {
    architectures: ["Glm4MoeForCausalLM"],
    model_type: "glm4_moe",
    num_hidden_layers: L,
    hidden_act: "silu",
    partial_rotary_factor: rot / headDim,
    intermediate_size: Fd || F,
    moe_intermediate_size: F,
    n_routed_experts: E,
    n_shared_experts: shared,
    first_k_dense_replace: dense,
    routed_scaling_factor: g.number(c.key("expert_weights_scale"), 1),
    norm_topk_prob: Boolean(g.value(c.key("expert_weights_norm")) ?? false),
    n_group: c.uniform("expert_group_count", 1),
    topk_group: c.uniform("expert_group_used_count", 1),
    topk_method: "noaux_tc",
    attention_bias: bias,
    use_qk_norm: qkNorm,
    num_nextn_predict_layers: 0,
  });
  const qRows = heads * headDim;
  const kvRows = kvHeads * headDim;
  const Fs = shared * F;
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    c.add(hf(l, "input_layernorm.weight"), `${b}.attn_norm.weight`, [H]);
    c.add(hf(l, "post_attention_layernorm.weight"), `${b}.post_attention_norm.weight`, [H]);
    for (const [p, t, rows] of [["q", "attn_q", qRows], ["k", "attn_k", kvRows], ["v", "attn_v", kvRows]] as const) {
      c.add(hf(l, `self_attn.${p}_proj.weight`), `${b}.${t}.weight`, [rows, H]);
      if (bias) c.add(hf(l, `self_attn.${p}_proj.bias`), `${b}.${t}.bias`, [rows]);
    }
    c.add(hf(l, "self_attn.o_proj.weight"), `${b}.attn_output.weight`, [H, qRows]);
    if (qkNorm) {
      c.add(hf(l, "self_attn.q_norm.weight"), `${b}.attn_q_norm.weight`, [headDim]);
      c.add(hf(l, "self_attn.k_norm.weight"), `${b}.attn_k_norm.weight`, [headDim]);
    }
    const shape = (p: Part, rows: number) => (p === "down" ? [H, rows] : [rows, H]);
    if (l < dense) {
      for (const p of ["gate", "up", "down"] as const) c.add(hf(l, `mlp.${PROJ[p]}.weight`), `${b}.ffn_${p}.weight`, shape(p, Fd));
      continue;
    }
    c.add(hf(l, "mlp.gate.weight"), `${b}.ffn_gate_inp.weight`, [E, H]);
    c.add(hf(l, "mlp.gate.e_score_correction_bias"), `${b}.exp_probs_b.bias`, [E]);
    for (const p of ["gate", "up", "down"] as const) {
      const s = shape(p, F);
      const stacked = `${b}.ffn_${p}_exps.weight`;
      const t = c.required(stacked);
      if (t.dims.length !== 3 || t.dims[0] !== s[1] || t.dims[1] !== s[0] || t.dims[2] !== E) {
        throw new UnsupportedConfigError(`${g.path}: tensor "${stacked}" has dims [${t.dims.join(", ")}] but the metadata implies [${s[1]}, ${s[0]}, ${E}] (innermost first)`);
      }
      for (let j = 0; j < E; j++) c.addRows(hf(l, `mlp.experts.${j}.${PROJ[p]}.weight`), stacked, s, j * s[0]!, s[0]!);
      if (Fs > 0) c.add(hf(l, `mlp.shared_experts.${PROJ[p]}.weight`), `${b}.ffn_${p}_shexp.weight`, shape(p, Fs));
    }
  }
}
