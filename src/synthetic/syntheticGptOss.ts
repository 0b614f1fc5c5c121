/**
 * Writes a gpt-oss-shaped Hugging Face checkpoint with deterministic pseudo-random weights, its
 * experts stored as released (MXFP4 blocks and E8M0 scales, U8 tensors; everything else BF16),
 * for benchmarks at realistic width (gpt-oss-20b: hidden 2880, 64 heads of 64, 8 KV heads,
 * 32 experts of 2880, top-4, sliding window 128 on every other layer).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeSafetensors, type SafetensorsWriteEntry } from "../formats/safetensors.js";
import { encodeFromFloat32 } from "../util/dtype.js";

export interface SyntheticGptOssOptions {
  /** Folder whose tokenizer.json / tokenizer_config.json are copied (their vocab must fit). */
  tokenizerFrom: string;
  vocabSize: number;
  numLayers: number;
  /** Default 2880. */
  hiddenSize?: number;
  /** Default 64 query heads of headDim 64 over 8 KV heads. */
  numHeads?: number;
  numKvHeads?: number;
  headDim?: number;
  /** Default 32 experts of 2880, top-4. */
  numExperts?: number;
  topK?: number;
  expertFfn?: number;
  seed?: number;
}

/** xorshift32 stream of uint32. */
function stream(seed: number): () => number {
  let s = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>>= 0);
  };
}

export function writeSyntheticGptOss(dir: string, o: SyntheticGptOssOptions): void {
  fs.mkdirSync(dir, { recursive: true });
  const H = o.hiddenSize ?? 2880;
  const Hq = o.numHeads ?? 64;
  const Hkv = o.numKvHeads ?? 8;
  const hd = o.headDim ?? 64;
  const E = o.numExperts ?? 32;
  const F = o.expertFfn ?? 2880;
  const config = {
    architectures: ["GptOssForCausalLM"],
    model_type: "gpt_oss",
    vocab_size: o.vocabSize,
    hidden_size: H,
    intermediate_size: F,
    num_hidden_layers: o.numLayers,
    num_attention_heads: Hq,
    num_key_value_heads: Hkv,
    head_dim: hd,
    num_local_experts: E,
    num_experts_per_tok: o.topK ?? 4,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 150000,
    rope_scaling: { rope_type: "yarn", factor: 32.0, beta_fast: 32.0, beta_slow: 1.0, original_max_position_embeddings: 4096, truncate: false },
    sliding_window: 128,
    layer_types: Array.from({ length: o.numLayers }, (_, l) => (l % 2 === 0 ? "sliding_attention" : "full_attention")),
    attention_bias: true,
    swiglu_limit: 7.0,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    quantization_config: { quant_method: "mxfp4", modules_to_not_convert: ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"] },
    torch_dtype: "bfloat16",
  };
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    const src = path.join(o.tokenizerFrom, f);
    if (fs.existsSync(src)) fs.copyFileSync(src, path.join(dir, f));
  }

  type Entry = SafetensorsWriteEntry & { fill: "uniform" | "ones" | "codes" | "scales"; scale: number };
  const entries: Entry[] = [];
  const bf16 = (name: string, shape: number[], scale: number, fill: Entry["fill"] = "uniform") => entries.push({ name, dtype: "BF16", shape, scale, fill });
  const u8 = (name: string, shape: number[], fill: "codes" | "scales") => entries.push({ name, dtype: "U8", shape, scale: 0, fill });
  bf16("model.embed_tokens.weight", [o.vocabSize, H], 1);
  for (let l = 0; l < o.numLayers; l++) {
    const p = `model.layers.${l}`;
    const a = 1 / Math.sqrt(H);
    bf16(`${p}.input_layernorm.weight`, [H], 0, "ones");
    bf16(`${p}.self_attn.q_proj.weight`, [Hq * hd, H], a);
    bf16(`${p}.self_attn.q_proj.bias`, [Hq * hd], 0.02);
    bf16(`${p}.self_attn.k_proj.weight`, [Hkv * hd, H], a);
    bf16(`${p}.self_attn.k_proj.bias`, [Hkv * hd], 0.02);
    bf16(`${p}.self_attn.v_proj.weight`, [Hkv * hd, H], a);
    bf16(`${p}.self_attn.v_proj.bias`, [Hkv * hd], 0.02);
    bf16(`${p}.self_attn.o_proj.weight`, [H, Hq * hd], 1 / Math.sqrt(Hq * hd));
    bf16(`${p}.self_attn.o_proj.bias`, [H], 0.02);
    bf16(`${p}.self_attn.sinks`, [Hq], 1);
    bf16(`${p}.post_attention_layernorm.weight`, [H], 0, "ones");
    bf16(`${p}.mlp.router.weight`, [E, H], 2 * a);
    bf16(`${p}.mlp.router.bias`, [E], 0.1);
    u8(`${p}.mlp.experts.gate_up_proj_blocks`, [E, 2 * F, H / 32, 16], "codes");
    u8(`${p}.mlp.experts.gate_up_proj_scales`, [E, 2 * F, H / 32], "scales");
    bf16(`${p}.mlp.experts.gate_up_proj_bias`, [E, 2 * F], 0.02);
    u8(`${p}.mlp.experts.down_proj_blocks`, [E, H, F / 32, 16], "codes");
    u8(`${p}.mlp.experts.down_proj_scales`, [E, H, F / 32], "scales");
    bf16(`${p}.mlp.experts.down_proj_bias`, [E, H], 0.02);
  }
  bf16("model.norm.weight", [H], 0, "ones");
  bf16("lm_head.weight", [o.vocabSize, H], 2 / Math.sqrt(H));

  const next = stream(o.seed ?? 1);
  writeSafetensors(path.join(dir, "model.safetensors"), entries, (e) => {
    const src = entries.find((x) => x.name === e.name)!;
    const n = e.shape.reduce((x, y) => x * y, 1);
    if (src.fill === "codes") {
      const bytes = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) {
        const r = next();
        for (let k = 0; k < 4 && i + k < n; k++) bytes[i + k] = (r >>> (8 * k)) & 0xff;
      }
      return bytes;
    }
    if (src.fill === "scales") {
      // 2^(e-127) near 2^-8 (E2M1 values up to 6: weights of about 1/sqrt(2880)).
      const bytes = new Uint8Array(n);
      for (let i = 0; i < n; i++) bytes[i] = 117 + (next() % 4);
      return bytes;
    }
    const values = new Float32Array(n);
    if (src.fill === "ones") values.fill(1);
    else for (let i = 0; i < n; i++) values[i] = ((next() / 4294967296) * 2 - 1) * src.scale * Math.sqrt(3);
    return encodeFromFloat32(values, "BF16");
  });
}
