/**
 * llama.cpp's `phimoe` GGUF files seen as a Hugging Face PhiMoEForCausalLM checkpoint. The
 * converter (PhiMoeModel, a Phi3MiniModel) writes LayerNorms with biases (attn_norm / ffn_norm /
 * output_norm .weight and .bias), q/k/v/o with biases (NEOX RoPE: no permutation), the LM-head
 * bias as output.bias, experts stacked (ffn_{gate,up,down}_exps), and LongRoPE as the global
 * tensors rope_factors_short / rope_factors_long .weight [rotary_dim/2] with
 * rope.scaling.original_context_length and rope.scaling.attn_factor (one attention factor; the
 * Hugging Face short_mscale / long_mscale are not carried, so the factor becomes
 * rope_scaling.attention_factor). Routing stays Phi-MoE's sparsemixer (moe-run's phimoe family).
 */
import { UnsupportedConfigError } from "../errors.js";
import type { ArchContext } from "./ggufGptOss.js";
import type { HfConfig } from "./HfCheckpoint.js";

const MIXTRAL_W = { gate: "w1", up: "w3", down: "w2" } as const;

export function describePhimoe(c: ArchContext, config: HfConfig, dims: { L: number; H: number; V: number; heads: number; kvHeads: number; headDim: number; experts: number; topK: number }): void {
  const { g } = c;
  const { L, H, V, heads, kvHeads, headDim, experts: E } = dims;
  if (g.has("blk.0.attn_qkv.weight")) throw new UnsupportedConfigError(`${g.path}: fused attn_qkv in a phimoe file is not supported yet`);
  const F = c.uniform("expert_feed_forward_length", 0) || c.uniform("feed_forward_length");
  const eps = g.has(c.key("attention.layer_norm_epsilon")) ? g.number(c.key("attention.layer_norm_epsilon")) : g.number(c.key("attention.layer_norm_rms_epsilon"));
  Object.assign(config, {
    architectures: ["PhiMoEForCausalLM"],
    model_type: "phimoe",
    hidden_act: "silu",
    num_local_experts: E,
    intermediate_size: F,
    rms_norm_eps: eps,
    attention_bias: true,
    lm_head_bias: g.has("output.bias"),
  });
  if (g.has("rope_factors_long.weight") || g.has("rope_factors_short.weight")) {
    const long = c.required("rope_factors_long.weight");
    const short = c.required("rope_factors_short.weight");
    const orig = g.number(c.key("rope.scaling.original_context_length"));
    config["original_max_position_embeddings"] = orig;
    const rs: Record<string, unknown> = {
      type: "longrope",
      short_factor: [...g.readFloat32(short.name)],
      long_factor: [...g.readFloat32(long.name)],
      original_max_position_embeddings: orig,
    };
    if (g.has(c.key("rope.scaling.attn_factor"))) rs["attention_factor"] = g.number(c.key("rope.scaling.attn_factor"));
    config["rope_scaling"] = rs;
  } else {
    const scaling = g.value(c.key("rope.scaling.type"));
    if (scaling !== undefined && scaling !== "none") throw new UnsupportedConfigError(`${g.path}: rope scaling "${String(scaling)}" is not supported for phimoe`);
  }
  const qRows = heads * headDim;
  const kvRows = kvHeads * headDim;
  c.add("model.norm.bias", "output_norm.bias", [H]);
  if (g.has("output.bias")) c.add("lm_head.bias", "output.bias", [V]);
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    for (const p of ["weight", "bias"]) {
      c.add(hf(l, `input_layernorm.${p}`), `${b}.attn_norm.${p}`, [H]);
      c.add(hf(l, `post_attention_layernorm.${p}`), `${b}.ffn_norm.${p}`, [H]);
    }
    for (const [p, t, rows] of [["q", "attn_q", qRows], ["k", "attn_k", kvRows], ["v", "attn_v", kvRows]] as const) {
      c.add(hf(l, `self_attn.${p}_proj.weight`), `${b}.${t}.weight`, [rows, H]);
      c.add(hf(l, `self_attn.${p}_proj.bias`), `${b}.${t}.bias`, [rows]);
    }
    c.add(hf(l, "self_attn.o_proj.weight"), `${b}.attn_output.weight`, [H, qRows]);
    c.add(hf(l, "self_attn.o_proj.bias"), `${b}.attn_output.bias`, [H]);
    c.add(hf(l, "block_sparse_moe.gate.weight"), `${b}.ffn_gate_inp.weight`, [E, H]);
    for (const p of ["gate", "up", "down"] as const) {
      const shape = p === "down" ? [H, F] : [F, H];
      const stacked = `${b}.ffn_${p}_exps.weight`;
      const d = c.required(stacked).dims;
      if (d.length !== 3 || d[0] !== shape[1] || d[1] !== shape[0] || d[2] !== E) throw new UnsupportedConfigError(`${g.path}: tensor "${stacked}" has dims [${d.join(", ")}] but the metadata implies [${shape[1]}, ${shape[0]}, ${E}] (innermost first)`);
      for (let j = 0; j < E; j++) c.addRows(hf(l, `block_sparse_moe.experts.${j}.${MIXTRAL_W[p]}.weight`), stacked, shape, j * shape[0]!, shape[0]!);
    }
  }
}
