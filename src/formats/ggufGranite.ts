/**
 * llama.cpp's `granitemoe` GGUF files seen as a Hugging Face GraniteMoeForCausalLM checkpoint.
 * convert_hf_to_gguf.py (GraniteMoeModel, a LlamaModel) writes:
 *
 *   blk.N.attn_norm / ffn_norm .weight                 input_layernorm / post_attention_layernorm
 *   blk.N.attn_{q,k}.weight                            q/k rows permuted for llama.cpp's adjacent-pair
 *                                                      RoPE (undone here), attn_v, attn_output
 *   blk.N.ffn_gate_inp.weight                          block_sparse_moe.router.layer.weight
 *   blk.N.ffn_{gate,up}_exps.weight [H, F, E]          input_linear [E, 2F, H]: gate rows, then up rows
 *   blk.N.ffn_down_exps.weight [F, H, E]               output_linear [E, H, F] as stored
 *
 * and Granite's multipliers as attention.scale, embedding_scale, residual_scale and logit_scale.
 * GraniteMoeShared files (expert_shared_feed_forward_length) are refused: moe-run's granitemoe
 * family has no shared expert.
 */
import { UnsupportedConfigError } from "../errors.js";
import type { ArchContext } from "./ggufGptOss.js";
import type { HfConfig } from "./HfCheckpoint.js";

export function describeGraniteMoe(c: ArchContext, config: HfConfig, dims: { L: number; H: number; V: number; heads: number; kvHeads: number; headDim: number; experts: number; topK: number }): void {
  const { g } = c;
  const { L, H, heads, kvHeads, headDim, experts: E } = dims;
  if (g.has(c.key("expert_shared_feed_forward_length"))) throw new UnsupportedConfigError(`${g.path}: GraniteMoeShared (a shared expert) is not supported`);
  const scaling = g.value(c.key("rope.scaling.type"));
  if (scaling !== undefined && scaling !== "none") throw new UnsupportedConfigError(`${g.path}: rope scaling "${String(scaling)}" is not supported for granitemoe yet`);
  const F = c.uniform("expert_feed_forward_length", 0) || c.uniform("feed_forward_length");
  const bias = g.has("blk.0.attn_q.bias");
  Object.assign(config, {
    architectures: ["GraniteMoeForCausalLM"],
    model_type: "granitemoe",
    hidden_act: "silu",
    num_local_experts: E,
    intermediate_size: F,
    attention_bias: bias,
    attention_multiplier: g.number(c.key("attention.scale"), 1 / Math.sqrt(headDim)),
    embedding_multiplier: g.number(c.key("embedding_scale"), 1),
    residual_multiplier: g.number(c.key("residual_scale"), 1),
    logits_scaling: g.number(c.key("logit_scale"), 1),
  });
  const qRows = heads * headDim;
  const kvRows = kvHeads * headDim;
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    c.add(hf(l, "input_layernorm.weight"), `${b}.attn_norm.weight`, [H]);
    c.add(hf(l, "post_attention_layernorm.weight"), `${b}.ffn_norm.weight`, [H]);
    c.addPermuted(hf(l, "self_attn.q_proj.weight"), `${b}.attn_q.weight`, [qRows, H], heads);
    c.addPermuted(hf(l, "self_attn.k_proj.weight"), `${b}.attn_k.weight`, [kvRows, H], kvHeads);
    c.add(hf(l, "self_attn.v_proj.weight"), `${b}.attn_v.weight`, [kvRows, H]);
    c.add(hf(l, "self_attn.o_proj.weight"), `${b}.attn_output.weight`, [H, qRows]);
    if (bias) {
      // Biases are permuted like their rows; llama.cpp's Granite files have none (attention_bias false).
      throw new UnsupportedConfigError(`${g.path}: granitemoe attention biases are not supported yet`);
    }
    c.add(hf(l, "block_sparse_moe.router.layer.weight"), `${b}.ffn_gate_inp.weight`, [E, H]);
    const gate = `${b}.ffn_gate_exps.weight`;
    const up = `${b}.ffn_up_exps.weight`;
    for (const t of [gate, up]) {
      const d = c.required(t).dims;
      if (d.length !== 3 || d[0] !== H || d[1] !== F || d[2] !== E) throw new UnsupportedConfigError(`${g.path}: tensor "${t}" has dims [${d.join(", ")}] but the metadata implies [${H}, ${F}, ${E}] (innermost first)`);
    }
    c.derive(hf(l, "block_sparse_moe.input_linear.weight"), [E, 2 * F, H], {
      tensors: [gate, up],
      dtype: c.required(gate).type.name,
      floats(gg, index) {
        const one = (j: number) => {
          const out = new Float32Array(2 * F * H);
          out.set(gg.readFloat32(gate, j * F, F), 0);
          out.set(gg.readFloat32(up, j * F, F), F * H);
          return out;
        };
        if (index !== undefined) return one(index);
        const all = new Float32Array(E * 2 * F * H);
        for (let j = 0; j < E; j++) all.set(one(j), j * 2 * F * H);
        return all;
      },
    });
    c.add(hf(l, "block_sparse_moe.output_linear.weight"), `${b}.ffn_down_exps.weight`, [E, H, F]);
  }
}
