"""Independent fp32 PyTorch reference for decoder-only MoE LMs in Hugging Face layout.

Supported config.json model_type values (one parametrised module, architecture as flags):
  mixtral     RMSNorm, RoPE (rotate_half), GQA, softmax router -> top-k -> renormalise,
              experts block_sparse_moe.experts.J.{w1 (gate), w3 (up), w2 (down)}
  qwen2_moe   + q/k/v biases, norm_topk_prob flag, shared expert scaled by
              sigmoid(mlp.shared_expert_gate(x)); experts mlp.experts.J.{gate,up,down}_proj;
              decoder_sparse_step / mlp_only_layers select dense-MLP layers (mlp.{gate,up,down}_proj,
              intermediate_size)
  qwen3_moe   + per-head RMSNorm q_norm/k_norm (size head_dim) before RoPE, explicit head_dim;
              decoder_sparse_step / mlp_only_layers as qwen2_moe
  olmoe       + RMSNorm q_norm/k_norm over the full projected q (heads*hd) / k (kv_heads*hd)
              before splitting into heads, optional clip_qkv
  granitemoe  embedding/residual multipliers, attention scale = attention_multiplier, logits divided
              by logits_scaling; fused experts block_sparse_moe.input_linear.weight [E, 2F, H]
              (rows 0..F-1 gate, F..2F-1 up) and output_linear.weight [E, H, F]; router
              block_sparse_moe.router.layer.weight: softmax over the top-k logits
  glm4_moe    partial RoPE (first head_dim*partial_rotary_factor dims of each head, rotate_half
              inside them), q/k/v bias (no o bias), optional per-head q_norm/k_norm, first
              first_k_dense_replace layers dense; sigmoid router with e_score_correction_bias for
              selection only, group-limited (n_group/topk_group, group score = sum of its top-2),
              norm_topk_prob, routed_scaling_factor, shared_experts (moe_intermediate*n_shared)
  phimoe      LayerNorm (weight+bias) everywhere, q/k/v/o bias, lm_head bias, LongRoPE (long/short
              factors chosen by sequence length, cos/sin times long_mscale/short_mscale),
              "sparsemixer" top-2 routing as HF computes it in eval mode
  gpt_oss     q/k/v/o bias, per-head attention sinks, layer_types sliding/full with sliding_window,
              YaRN RoPE (truncate flag), router with bias (softmax over the top-k logits),
              MXFP4 experts (mlp.experts.{gate_up,down}_proj_{blocks,scales} U8 + bf16 biases),
              clamped SwiGLU with gate/up interleaved in the fused gate_up projection
  deepseek_v2 multi-head latent attention (q_lora_rank or q_proj, kv_a_proj_with_mqa, kv_a_layernorm,
              kv_b_proj), RoPE on the qk_rope_head_dim part with interleaved pairs, YaRN with
              mscale/mscale_all_dim and the mscale_all_dim^2 softmax-scale correction, softmax router
              greedy / group_limited_greedy, routed_scaling_factor, shared_experts, dense first layers

The nn.Module attribute tree mirrors the HF names, so `state_dict()` keys are exactly the HF
checkpoint tensor names (lm_head.weight is omitted when tie_word_embeddings is true).
All math is float32; f16/bf16 checkpoints are upcast on load. MXFP4 expert tensors stay uint8
buffers and are dequantized exactly (every MXFP4 value is exact in float32).

Also contains a minimal safetensors reader/writer (F32/F16/BF16/U8, per-tensor dtypes), sharded
checkpoints and `load_balancing_loss` (Switch-style aux loss over router logits, as HF computes it).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field, asdict
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SUPPORTED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
             "granitemoe", "glm4_moe", "phimoe", "gpt_oss", "deepseek_v2")


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------

@dataclass
class MoeConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    expert_intermediate_size: int
    num_experts: int
    num_experts_per_tok: int
    norm_topk_prob: bool
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str = "none"            # "none" | "head" (qwen3_moe, glm4_moe) | "full" (olmoe)
    shared_expert_intermediate_size: int = 0
    clip_qkv: Optional[float] = None
    max_position_embeddings: int = 4096
    # --- added for the dense-layer variants and the newer families (defaults = old behaviour) ---
    dense_layers: Tuple[int, ...] = ()   # layer indices with a dense MLP instead of the MoE block
    dense_intermediate_size: int = 0
    moe_kind: str = "softmax"        # softmax | granite | glm4 | deepseek | phimoe | gpt_oss
    norm_type: str = "rms"           # rms | layer (LayerNorm with bias)
    rotary_dim: int = 0              # 0 = head_dim (qk_rope_head_dim for MLA)
    rope_interleaved: bool = False   # rotate pairs (2i, 2i+1) instead of (i, i + d/2)
    rope_scaling: Optional[dict] = None
    original_max_position_embeddings: int = 0
    attention_scale: Optional[float] = None   # None = 1/sqrt(head_dim)
    sliding_window: Optional[int] = None
    layer_types: Optional[Tuple[str, ...]] = None
    attn_sinks: bool = False
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    lm_head_bias: bool = False
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "greedy"
    shared_experts_intermediate_size: int = 0  # unconditional shared experts (glm4_moe, deepseek_v2)
    router_jitter_eps: float = 0.0
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    attn_type: str = "mha"           # mha | mla
    q_lora_rank: Optional[int] = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    @property
    def moe_attr(self) -> str:
        return "block_sparse_moe" if self.model_type in ("mixtral", "granitemoe", "phimoe") else "mlp"

    @property
    def expert_names(self) -> Tuple[str, str, str]:
        """(gate, up, down) linear names inside one expert."""
        if self.model_type in ("mixtral", "phimoe"):
            return ("w1", "w3", "w2")
        return ("gate_proj", "up_proj", "down_proj")

    def is_dense(self, layer: int) -> bool:
        return layer in self.dense_layers

    @classmethod
    def from_hf(cls, c: dict) -> "MoeConfig":
        mt = c["model_type"]
        if mt not in SUPPORTED:
            raise ValueError(f"unsupported model_type {mt!r}")
        if mt in ("granitemoe", "glm4_moe", "phimoe", "gpt_oss", "deepseek_v2"):
            return _from_hf_new(cls, c)
        if c.get("rope_scaling"):
            raise ValueError("rope_scaling is not supported")
        hidden = c["hidden_size"]
        heads = c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or heads
        hd = c.get("head_dim") or hidden // heads
        common = dict(
            model_type=mt, vocab_size=c["vocab_size"], hidden_size=hidden,
            num_hidden_layers=c["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=kv, num_experts_per_tok=c["num_experts_per_tok"],
            rope_theta=float(c.get("rope_theta", 10000.0 if mt != "mixtral" else 1e6)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            max_position_embeddings=c.get("max_position_embeddings", 4096),
        )
        if mt in ("qwen2_moe", "qwen3_moe"):
            # HF: layer i is sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0
            step = c.get("decoder_sparse_step", 1)
            only = set(c.get("mlp_only_layers") or [])
            dense = tuple(i for i in range(c["num_hidden_layers"])
                          if i in only or c["num_experts"] <= 0 or (i + 1) % step != 0)
            if dense:
                common.update(dense_layers=dense, dense_intermediate_size=c["intermediate_size"])
        if mt == "mixtral":
            return cls(head_dim=hd, expert_intermediate_size=c["intermediate_size"],
                       num_experts=c["num_local_experts"], norm_topk_prob=True,
                       rms_norm_eps=c.get("rms_norm_eps", 1e-5), **common)
        if mt == "qwen2_moe":
            if hd != hidden // heads:
                raise ValueError("qwen2_moe has no explicit head_dim")
            return cls(head_dim=hd, expert_intermediate_size=c["moe_intermediate_size"],
                       num_experts=c["num_experts"], norm_topk_prob=bool(c.get("norm_topk_prob", False)),
                       rms_norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=True,
                       shared_expert_intermediate_size=c["shared_expert_intermediate_size"], **common)
        if mt == "qwen3_moe":
            return cls(head_dim=hd, expert_intermediate_size=c["moe_intermediate_size"],
                       num_experts=c["num_experts"], norm_topk_prob=bool(c.get("norm_topk_prob", False)),
                       rms_norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=bool(c.get("attention_bias", False)),
                       o_bias=bool(c.get("attention_bias", False)), qk_norm="head", **common)
        # olmoe
        if hd != hidden // heads:
            raise ValueError("olmoe has no explicit head_dim")
        return cls(head_dim=hd, expert_intermediate_size=c["intermediate_size"],
                   num_experts=c["num_experts"], norm_topk_prob=bool(c.get("norm_topk_prob", False)),
                   rms_norm_eps=c.get("rms_norm_eps", 1e-5), qkv_bias=bool(c.get("attention_bias", False)),
                   o_bias=bool(c.get("attention_bias", False)), qk_norm="full",
                   clip_qkv=c.get("clip_qkv"), **common)


def _rope_scaling_of(c: dict) -> Optional[dict]:
    rs = c.get("rope_scaling")
    if not rs:
        return None
    rs = dict(rs)
    rs["rope_type"] = rs.get("rope_type", rs.get("type"))
    if rs["rope_type"] in (None, "default"):
        return None
    if rs["rope_type"] not in ("yarn", "longrope"):
        raise ValueError(f"rope_scaling type {rs['rope_type']!r} is not supported")
    return rs


def _from_hf_new(cls, c: dict) -> "MoeConfig":
    mt = c["model_type"]
    hidden, heads, L = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    kv = c.get("num_key_value_heads") or heads
    rs = _rope_scaling_of(c)
    common = dict(
        model_type=mt, vocab_size=c["vocab_size"], hidden_size=hidden, num_hidden_layers=L,
        num_attention_heads=heads, num_key_value_heads=kv,
        num_experts_per_tok=c["num_experts_per_tok"], rope_theta=float(c.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=c.get("max_position_embeddings", 4096), rope_scaling=rs,
    )
    if rs is not None:
        common["original_max_position_embeddings"] = int(
            rs.get("original_max_position_embeddings") or c.get("original_max_position_embeddings")
            or c.get("max_position_embeddings"))
    if mt == "granitemoe":
        if c.get("head_dim") not in (None, hidden // heads):
            raise ValueError("granitemoe has no explicit head_dim")
        bias = bool(c.get("attention_bias", False))
        return cls(head_dim=hidden // heads, expert_intermediate_size=c["intermediate_size"],
                   num_experts=c["num_local_experts"], norm_topk_prob=True,
                   rms_norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=bias, o_bias=bias,
                   moe_kind="granite", attention_scale=float(c.get("attention_multiplier", 1.0)),
                   embedding_multiplier=float(c.get("embedding_multiplier", 1.0)),
                   residual_multiplier=float(c.get("residual_multiplier", 1.0)),
                   logits_scaling=float(c.get("logits_scaling", 1.0)), **common)
    if mt == "glm4_moe":
        hd = c.get("head_dim") or hidden // heads
        prf = float(c.get("partial_rotary_factor", 0.5))
        fk = int(c.get("first_k_dense_replace", 1))
        return cls(head_dim=hd, expert_intermediate_size=c["moe_intermediate_size"],
                   num_experts=c["n_routed_experts"], norm_topk_prob=bool(c.get("norm_topk_prob", True)),
                   rms_norm_eps=c.get("rms_norm_eps", 1e-5), qkv_bias=bool(c.get("attention_bias", False)),
                   o_bias=False, qk_norm="head" if c.get("use_qk_norm", False) else "none",
                   rotary_dim=int(hd * prf), moe_kind="glm4",
                   dense_layers=tuple(range(min(fk, L))), dense_intermediate_size=c["intermediate_size"],
                   routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
                   n_group=int(c.get("n_group", 1)), topk_group=int(c.get("topk_group", 1)),
                   shared_experts_intermediate_size=c["moe_intermediate_size"] * int(c.get("n_shared_experts", 1)),
                   **common)
    if mt == "phimoe":
        if c.get("head_dim") not in (None, hidden // heads):
            raise ValueError("phimoe has no explicit head_dim")
        if c["num_experts_per_tok"] != 2:
            raise ValueError("phimoe sparsemixer routing needs num_experts_per_tok == 2")
        if c.get("sliding_window") not in (None,) and c["sliding_window"] < c.get("max_position_embeddings", 0):
            raise ValueError("phimoe sliding_window below max_position_embeddings is not supported")
        if rs is not None and rs["rope_type"] != "longrope":
            raise ValueError("phimoe supports only longrope scaling")
        bias = bool(c.get("attention_bias", False))
        return cls(head_dim=hidden // heads, expert_intermediate_size=c["intermediate_size"],
                   num_experts=c["num_local_experts"], norm_topk_prob=False,
                   rms_norm_eps=c.get("rms_norm_eps", 1e-5), qkv_bias=bias, o_bias=bias,
                   moe_kind="phimoe", norm_type="layer", lm_head_bias=bool(c.get("lm_head_bias", False)),
                   router_jitter_eps=float(c.get("router_jitter_noise", 0.01)), **common)
    if mt == "gpt_oss":
        hd = c.get("head_dim") or hidden // heads
        L_types = tuple(c.get("layer_types") or
                        ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)])
        if rs is not None and rs["rope_type"] != "yarn":
            raise ValueError("gpt_oss supports only yarn scaling")
        qc = c.get("quantization_config")
        if qc is not None and qc.get("quant_method") != "mxfp4":
            raise ValueError("gpt_oss: only mxfp4 quantization_config is supported")
        return cls(head_dim=hd, expert_intermediate_size=c["intermediate_size"],
                   num_experts=c["num_local_experts"], norm_topk_prob=True,
                   rms_norm_eps=c.get("rms_norm_eps", 1e-5), qkv_bias=True, o_bias=True,
                   moe_kind="gpt_oss", sliding_window=c.get("sliding_window"), layer_types=L_types,
                   attn_sinks=True, swiglu_limit=float(c.get("swiglu_limit", 7.0)), **common)
    # deepseek_v2
    if kv != heads:
        raise ValueError("deepseek_v2 MLA needs num_key_value_heads == num_attention_heads")
    if rs is not None and rs["rope_type"] != "yarn":
        raise ValueError("deepseek_v2 supports only yarn scaling")
    method = c.get("topk_method", "greedy")
    if method not in ("greedy", "group_limited_greedy"):
        raise ValueError(f"deepseek_v2 topk_method {method!r} is not supported")
    fk = int(c.get("first_k_dense_replace", 0))
    qk_nope, qk_rope = c["qk_nope_head_dim"], c["qk_rope_head_dim"]
    scale = (qk_nope + qk_rope) ** -0.5
    if rs is not None and rs.get("mscale_all_dim"):
        m = _yarn_get_mscale(float(rs["factor"]), float(rs["mscale_all_dim"]))
        scale = scale * m * m
    bias = bool(c.get("attention_bias", False))
    return cls(head_dim=qk_nope + qk_rope, expert_intermediate_size=c["moe_intermediate_size"],
               num_experts=c["n_routed_experts"], norm_topk_prob=bool(c.get("norm_topk_prob", False)),
               rms_norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=bias, o_bias=bias, moe_kind="deepseek",
               rotary_dim=qk_rope, rope_interleaved=True, attention_scale=scale,
               dense_layers=tuple(range(min(fk, L))), dense_intermediate_size=c["intermediate_size"],
               routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
               n_group=int(c.get("n_group") or 1), topk_group=int(c.get("topk_group") or 1), topk_method=method,
               shared_experts_intermediate_size=c["moe_intermediate_size"] * int(c.get("n_shared_experts") or 0),
               attn_type="mla", q_lora_rank=c.get("q_lora_rank"), kv_lora_rank=c["kv_lora_rank"],
               qk_nope_head_dim=qk_nope, qk_rope_head_dim=qk_rope, v_head_dim=c["v_head_dim"], **common)


# ----------------------------------------------------------------------------------------------
# rotary embeddings
# ----------------------------------------------------------------------------------------------

def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [T, head_dim] in the half-split layout (freqs repeated twice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    ang = positions.float()[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]. Rotates pairs (i, i + D/2)."""
    d2 = x.shape[-1] // 2
    rot = torch.cat([-x[..., d2:], x[..., :d2]], dim=-1)
    return x * cos + rot * sin


def _yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(cfg: MoeConfig, dim: int, seq_len: int) -> Tuple[torch.Tensor, float]:
    """(inv_freq [dim/2] float32, factor multiplying cos and sin) as HF's rope init functions."""
    base = cfg.rope_theta
    rs = cfg.rope_scaling
    exps = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    if rs is None:
        return 1.0 / (base ** exps), 1.0
    orig = cfg.original_max_position_embeddings
    if rs["rope_type"] == "longrope":
        factor = cfg.max_position_embeddings / orig
        long = seq_len > orig
        ext = torch.tensor(rs["long_factor"] if long else rs["short_factor"], dtype=torch.float32)
        if ext.numel() != dim // 2:
            raise ValueError(f"longrope factor lists need {dim // 2} entries, got {ext.numel()}")
        inv_freq = 1.0 / (ext * base ** exps)
        mscale = rs.get("long_mscale") if long else rs.get("short_mscale")
        if mscale is None:  # HF fallback: the longrope attention factor
            mscale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        return inv_freq, float(mscale)
    # yarn
    factor = float(rs["factor"])
    af = rs.get("attention_factor")
    if af is None:
        if rs.get("mscale") and rs.get("mscale_all_dim"):
            af = _yarn_get_mscale(factor, float(rs["mscale"])) / _yarn_get_mscale(factor, float(rs["mscale_all_dim"]))
        else:
            af = _yarn_get_mscale(factor)
    beta_fast = float(rs.get("beta_fast") or 32)
    beta_slow = float(rs.get("beta_slow") or 1)

    def corr_dim(n_rot: float) -> float:
        return dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrap = 1.0 - ramp                                   # 1 = keep the original frequency
    pos_freqs = base ** exps
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrap) + (1.0 / pos_freqs) * extrap
    return inv_freq, float(af)


def rope_tables(cfg: MoeConfig, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, rotary_dim] (half-split layout: frequency i at columns i and i + rd/2),
    already multiplied by the rope attention factor."""
    rd = cfg.rotary_dim or cfg.head_dim
    if cfg.rope_scaling is None and rd == cfg.head_dim and not cfg.rope_interleaved:
        return rope_cos_sin(torch.arange(T), cfg.head_dim, cfg.rope_theta)
    inv_freq, af = rope_inv_freq(cfg, rd, T)
    ang = torch.arange(T).float()[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos(), ang.sin()
    if af != 1.0:
        cos, sin = cos * af, sin * af
    return cos, sin


def apply_rope_partial(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotates the first cos.shape[-1] dims of x [..., T, D]; the rest passes through.
    interleaved: pairs (2i, 2i+1) use frequency i (DeepSeek complex layout)."""
    rd = cos.shape[-1]
    xr, xp = x[..., :rd], x[..., rd:]
    if interleaved:
        h = rd // 2
        c, s = cos[..., :h], sin[..., :h]
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    else:
        out = apply_rope(xr, cos, sin)
    if xp.shape[-1] == 0:
        return out
    return torch.cat([out, xp], dim=-1)


# ----------------------------------------------------------------------------------------------
# MXFP4 (OCP microscaling FP4, as the openai/gpt-oss checkpoints and HF's mxfp4 integration)
# ----------------------------------------------------------------------------------------------

# E2M1 code -> value (bit 3 = sign): 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives
FP4_VALUES = [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks [..., G, 16] uint8, scales [..., G] uint8 -> float32 [..., G * 32].
    Byte j of a block holds element 2j in its low nibble and 2j+1 in its high nibble; each
    32-element block is multiplied by 2**(scale - 127) (E8M0)."""
    assert blocks.dtype == torch.uint8 and scales.dtype == torch.uint8
    assert blocks.shape[:-1] == scales.shape and blocks.shape[-1] == 16
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    b = blocks.long()
    vals = torch.stack([lut[b & 0x0F], lut[b >> 4]], dim=-1).flatten(-2)       # [..., G, 32]
    exp = scales.long() - 127
    vals = vals * torch.pow(2.0, exp.float())[..., None]
    return vals.flatten(-2)


def mxfp4_quantize(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float [..., K] (K % 32 == 0) -> (blocks [..., K/32, 16] uint8, scales [..., K/32] uint8).
    Per block: exponent e = ceil(log2(amax / 6)) (so |w| / 2**e <= 6), then round to the nearest
    E2M1 value (ties to the smaller magnitude code)."""
    a = w.detach().float().numpy().astype(np.float64)
    K = a.shape[-1]
    assert K % 32 == 0
    a = a.reshape(*a.shape[:-1], K // 32, 32)
    amax = np.abs(a).max(-1)
    e = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-300) / 6.0)), 0).astype(np.int64)
    e = np.clip(e, -127, 127)
    v = a / np.power(2.0, e)[..., None]
    mags = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    idx = np.abs(np.abs(v)[..., None] - mags).argmin(-1)                   # first minimum
    code = idx + np.where((v < 0) & (idx > 0), 8, 0)
    code = code.astype(np.uint8)
    packed = (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8)
    scales = (e + 127).astype(np.uint8)
    return torch.from_numpy(packed.copy()), torch.from_numpy(scales.copy())


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias (biased variance), as torch.nn.LayerNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), self.bias.float(), self.eps)


def make_norm(cfg: MoeConfig, dim: int) -> nn.Module:
    return LayerNorm(dim, cfg.rms_norm_eps) if cfg.norm_type == "layer" else RMSNorm(dim, cfg.rms_norm_eps)


def causal_mask(T: int, window: Optional[int] = None) -> torch.Tensor:
    """True = masked. Key j is visible from query i iff j <= i (and, with a window W, j > i - W,
    i.e. the last W keys including the current one -- HF's sliding_window_overlay)."""
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    if window is not None:
        mask = mask | torch.ones(T, T, dtype=torch.bool).tril(-window)
    return mask


class Attention(nn.Module):
    def __init__(self, cfg: MoeConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        h, hd, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
        self.q_proj = nn.Linear(cfg.hidden_size, h * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * hd, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm == "head":
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        elif cfg.qk_norm == "full":
            self.q_norm = RMSNorm(h * hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(kv * hd, cfg.rms_norm_eps)
        if cfg.attn_sinks:
            self.sinks = nn.Parameter(torch.zeros(h))
        self.window = None
        if cfg.layer_types is not None and cfg.layer_types[layer_idx] == "sliding_attention":
            self.window = cfg.sliding_window

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        h, hd, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if cfg.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.clip_qkv is not None:
            q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        q = q.view(B, T, h, hd)
        k = k.view(B, T, kv, hd)
        v = v.view(B, T, kv, hd)
        if cfg.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if cos.shape[-1] == hd and not cfg.rope_interleaved:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        else:
            q = apply_rope_partial(q, cos, sin, cfg.rope_interleaved)
            k = apply_rope_partial(k, cos, sin, cfg.rope_interleaved)
        rep = h // kv
        if rep > 1:  # query head i uses kv head i // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if cfg.attention_scale is None:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        else:
            scores = (q @ k.transpose(-1, -2)) * cfg.attention_scale
        mask = causal_mask(T, self.window) if self.window is not None else torch.ones(T, T, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        if cfg.attn_sinks:
            # one learned logit per head joins every row's softmax denominator, then is dropped
            sink = self.sinks.float().view(1, h, 1, 1).expand(B, h, T, 1)
            probs = torch.cat([scores, sink], dim=-1).softmax(-1)[..., :-1]
        else:
            probs = scores.softmax(-1)
        out = probs @ v                                    # [B, H, T, D]
        out = out.transpose(1, 2).reshape(B, T, h * hd)
        return self.o_proj(out)


class MLAttention(nn.Module):
    """DeepSeek-V2 multi-head latent attention (expanded form, as HF computes it)."""

    def __init__(self, cfg: MoeConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        H, nh = cfg.hidden_size, cfg.num_attention_heads
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(H, nh * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(H, cfg.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, 1e-6)       # HF: default eps, not rms_norm_eps
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, nh * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=cfg.qkv_bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, 1e-6)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(nh * cfg.v_head_dim, H, bias=cfg.o_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        nh, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if cfg.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, nh, dn + dr).transpose(1, 2)                      # [B, nh, T, dn+dr]
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        ckv = self.kv_a_proj_with_mqa(x)
        c, k_pe = ckv[..., :cfg.kv_lora_rank], ckv[..., cfg.kv_lora_rank:]
        kv = self.kv_b_proj(self.kv_a_layernorm(c)).view(B, T, nh, dn + dv).transpose(1, 2)
        k_nope, v = kv[..., :dn], kv[..., dn:]
        k_pe = k_pe.view(B, 1, T, dr)                                      # one rope key shared by all heads
        q_pe = apply_rope_partial(q_pe, cos, sin, cfg.rope_interleaved)
        k_pe = apply_rope_partial(k_pe, cos, sin, cfg.rope_interleaved)
        qs = torch.cat([q_nope, q_pe], dim=-1)
        ks = torch.cat([k_nope, k_pe.expand(B, nh, T, dr)], dim=-1)
        scores = (qs @ ks.transpose(-1, -2)) * cfg.attention_scale
        scores = scores.masked_fill(causal_mask(T), float("-inf"))
        out = scores.softmax(-1) @ v                                       # [B, nh, T, dv]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, nh * dv))


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with configurable attribute names."""

    def __init__(self, hidden: int, inter: int, names: Tuple[str, str, str]):
        super().__init__()
        self._names = names
        setattr(self, names[0], nn.Linear(hidden, inter, bias=False))
        setattr(self, names[1], nn.Linear(hidden, inter, bias=False))
        setattr(self, names[2], nn.Linear(inter, hidden, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u, d = (getattr(self, n) for n in self._names)
        return d(F.silu(g(x)) * u(x))


def _combine(x: torch.Tensor, sel: torch.Tensor, w: torch.Tensor, expert_fn: Callable[[int, torch.Tensor], torch.Tensor],
             num_experts: int) -> torch.Tensor:
    """sum_j w[n, j] * expert_{sel[n, j]}(x[n]) for every token n."""
    out = torch.zeros_like(x)
    for e in range(num_experts):
        tok, slot = (sel == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        out.index_add_(0, tok, expert_fn(e, x[tok]) * w[tok, slot, None])
    return out


class SparseMoe(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [GatedMLP(cfg.hidden_size, cfg.expert_intermediate_size, cfg.expert_names)
             for _ in range(cfg.num_experts)])
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = GatedMLP(cfg.hidden_size, cfg.shared_expert_intermediate_size,
                                          ("gate_proj", "up_proj", "down_proj"))
            self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        shape = x.shape
        x = x.reshape(-1, shape[-1])                        # [N, H]
        router_logits = self.gate(x)                        # [N, E]
        probs = router_logits.softmax(-1)
        w, sel = probs.topk(cfg.num_experts_per_tok, dim=-1)  # sorted descending
        if cfg.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(cfg.num_experts):
            tok, slot = (sel == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            y = self.experts[e](x[tok]) * w[tok, slot, None]
            out.index_add_(0, tok, y)
        if cfg.shared_expert_intermediate_size:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(shape), router_logits


# ---- granitemoe --------------------------------------------------------------------------------

class _GraniteRouter(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.layer = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)


class _ParallelExperts(nn.Module):
    def __init__(self, E: int, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(E, out_features, in_features))


class GraniteMoe(nn.Module):
    """router.layer logits -> top-k logits -> softmax over those k; expert e:
    h = input_linear[e] @ x (2F), out = output_linear[e] @ (silu(h[:F]) * h[F:])."""

    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        F_ = cfg.expert_intermediate_size
        self.input_linear = _ParallelExperts(cfg.num_experts, 2 * F_, cfg.hidden_size)
        self.output_linear = _ParallelExperts(cfg.num_experts, cfg.hidden_size, F_)
        self.router = _GraniteRouter(cfg)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        F_ = self.cfg.expert_intermediate_size
        h = x @ self.input_linear.weight[e].float().t()
        return (F.silu(h[:, :F_]) * h[:, F_:]) @ self.output_linear.weight[e].float().t()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router.layer(x)
        top, sel = logits.topk(self.cfg.num_experts_per_tok, dim=-1)
        w = top.softmax(-1)
        out = _combine(x, sel, w, self.expert, self.cfg.num_experts)
        return out.reshape(shape), logits


# ---- glm4_moe / deepseek_v2 --------------------------------------------------------------------

class GroupRouter(nn.Module):
    """mlp.gate of glm4_moe (sigmoid scores, e_score_correction_bias) and deepseek_v2 (softmax)."""

    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden_size))
        if cfg.moe_kind == "glm4":
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts))

    def select(self, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """logits [N, E] -> (sel [N, k], w [N, k], intermediates for margins)."""
        cfg = self.cfg
        N, E = logits.shape
        G, k = cfg.n_group, cfg.num_experts_per_tok
        if cfg.moe_kind == "glm4":
            scores = torch.sigmoid(logits)
            choice = scores + self.e_score_correction_bias.float()[None, :]
            group_scores = choice.view(N, G, E // G).topk(2, dim=-1).values.sum(-1)
            use_groups = True
        else:
            scores = logits.softmax(-1)
            choice = scores
            group_scores = scores.view(N, G, E // G).max(-1).values
            use_groups = cfg.topk_method == "group_limited_greedy"
        if use_groups:
            gidx = group_scores.topk(cfg.topk_group, dim=-1).indices
            gmask = torch.zeros(N, G, dtype=torch.bool)
            gmask.scatter_(1, gidx, True)
            emask = gmask[:, :, None].expand(N, G, E // G).reshape(N, E)
            masked = choice.masked_fill(~emask, 0.0)       # HF fills 0.0 (not -inf)
        else:
            masked = choice
        sel = masked.topk(k, dim=-1).indices
        w = scores.gather(1, sel)
        if cfg.norm_topk_prob and k > 1:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * cfg.routed_scaling_factor
        return sel, w, {"masked": masked, "group_scores": group_scores, "use_groups": torch.tensor(use_groups)}


class GroupMoe(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.experts = nn.ModuleList(
            [GatedMLP(cfg.hidden_size, cfg.expert_intermediate_size, ("gate_proj", "up_proj", "down_proj"))
             for _ in range(cfg.num_experts)])
        self.gate = GroupRouter(cfg)
        if cfg.shared_experts_intermediate_size:
            self.shared_experts = GatedMLP(cfg.hidden_size, cfg.shared_experts_intermediate_size,
                                           ("gate_proj", "up_proj", "down_proj"))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = x @ self.gate.weight.float().t()
        sel, w, _ = self.gate.select(logits)
        out = _combine(x, sel, w, lambda e, xe: self.experts[e](xe), self.cfg.num_experts)
        if self.cfg.shared_experts_intermediate_size:
            out = out + self.shared_experts(x)
        return out.reshape(shape), logits


# ---- phimoe ------------------------------------------------------------------------------------

def sparsemixer_eval(logits: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """HF phimoe sparsemixer in eval mode (top-2). logits s [N, E]:
      i1 = argmax s, m1 = s[i1]; keep1 = {j : (m1 - s_j) / max(|s_j|, m1) <= 2 eps}
      w1 = softmax over keep1 of s, taken at i1
      s' = s with s[i1] = -inf; i2 = argmax s', m2 = s'[i2]
      keep2 = {j != i1 : (m2 - s_j) / max(|s_j|, m2) <= 2 eps}; w2 = softmax over keep2 of s, at i2
    returns (sel [N, 2], w [N, 2])."""
    def stage(s_masked: torch.Tensor):
        m, idx = s_masked.max(dim=-1, keepdim=True)
        factor = logits.abs().clamp(min=m)
        drop = ((m - logits) / factor) > (2 * eps)
        g = s_masked.masked_fill(drop, float("-inf")).softmax(-1)
        return idx, g.gather(-1, idx)

    i1, w1 = stage(logits)
    s2 = logits.scatter(-1, i1, float("-inf"))
    i2, w2 = stage(s2)
    return torch.cat([i1, i2], dim=-1), torch.cat([w1, w2], dim=-1)


class PhimoeMoe(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [GatedMLP(cfg.hidden_size, cfg.expert_intermediate_size, ("w1", "w3", "w2"))
             for _ in range(cfg.num_experts)])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        sel, w = sparsemixer_eval(logits, self.cfg.router_jitter_eps)
        out = _combine(x, sel, w, lambda e, xe: self.experts[e](xe), self.cfg.num_experts)
        return out.reshape(shape), logits


# ---- gpt_oss -----------------------------------------------------------------------------------

class _GptOssRouter(nn.Linear):
    pass


class Mxfp4Experts(nn.Module):
    """mlp.experts of gpt_oss as stored in the MXFP4 checkpoint:
      gate_up_proj_blocks [E, 2F, H/32, 16] u8, gate_up_proj_scales [E, 2F, H/32] u8,
      gate_up_proj_bias [E, 2F], down_proj_blocks [E, H, F/32, 16], down_proj_scales [E, H, F/32],
      down_proj_bias [E, H].
    Dequantized gate_up row r is output feature r: even r = gate, odd r = up (interleaved)."""

    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        E, H, F_ = cfg.num_experts, cfg.hidden_size, cfg.expert_intermediate_size
        if H % 32 or F_ % 32:
            raise ValueError("MXFP4 experts need hidden_size and intermediate_size divisible by 32")
        self.register_buffer("gate_up_proj_blocks", torch.zeros(E, 2 * F_, H // 32, 16, dtype=torch.uint8))
        self.register_buffer("gate_up_proj_scales", torch.zeros(E, 2 * F_, H // 32, dtype=torch.uint8))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * F_))
        self.register_buffer("down_proj_blocks", torch.zeros(E, H, F_ // 32, 16, dtype=torch.uint8))
        self.register_buffer("down_proj_scales", torch.zeros(E, H, F_ // 32, dtype=torch.uint8))
        self.down_proj_bias = nn.Parameter(torch.zeros(E, H))

    def dequantized(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(W_gate_up [E, 2F, H], W_down [E, H, F]) in float32 (out_features x in_features)."""
        return (mxfp4_dequantize(self.gate_up_proj_blocks, self.gate_up_proj_scales),
                mxfp4_dequantize(self.down_proj_blocks, self.down_proj_scales))


class GptOssMoe(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.router = _GptOssRouter(cfg.hidden_size, cfg.num_experts, bias=True)
        self.experts = Mxfp4Experts(cfg)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        top, sel = logits.topk(cfg.num_experts_per_tok, dim=-1)
        w = top.softmax(-1)
        Wgu, Wd = self.experts.dequantized()
        bgu, bd = self.experts.gate_up_proj_bias.float(), self.experts.down_proj_bias.float()
        alpha, limit = cfg.swiglu_alpha, cfg.swiglu_limit

        def expert(e: int, xe: torch.Tensor) -> torch.Tensor:
            gu = xe @ Wgu[e].t() + bgu[e]
            gate, up = gu[:, 0::2], gu[:, 1::2]
            gate = gate.clamp(max=limit)
            up = up.clamp(min=-limit, max=limit)
            glu = gate * torch.sigmoid(gate * alpha)
            return ((up + 1) * glu) @ Wd[e].t() + bd[e]

        out = _combine(x, sel, w, expert, cfg.num_experts)
        return out.reshape(shape), logits


def make_moe(cfg: MoeConfig) -> nn.Module:
    return {"softmax": SparseMoe, "granite": GraniteMoe, "glm4": GroupMoe, "deepseek": GroupMoe,
            "phimoe": PhimoeMoe, "gpt_oss": GptOssMoe}[cfg.moe_kind](cfg)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoeConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        self.dense = cfg.is_dense(layer_idx)
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.self_attn = MLAttention(cfg, layer_idx) if cfg.attn_type == "mla" else Attention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg, cfg.hidden_size)
        if self.dense:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.dense_intermediate_size, ("gate_proj", "up_proj", "down_proj"))
        else:
            setattr(self, cfg.moe_attr, make_moe(cfg))

    def forward(self, x, cos, sin):
        rm = self.cfg.residual_multiplier
        a = self.self_attn(self.input_layernorm(x), cos, sin)
        x = x + (a * rm if rm != 1.0 else a)
        h = self.post_attention_layernorm(x)
        if self.dense:
            y, rl = self.mlp(h), None
        else:
            y, rl = getattr(self, self.cfg.moe_attr)(h)
        return x + (y * rm if rm != 1.0 else y), rl


class _Backbone(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = make_norm(cfg, cfg.hidden_size)


class MoeForCausalLM(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.lm_head_bias)

    def lm_head_weight(self) -> torch.Tensor:
        if self.cfg.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, input_ids: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """input_ids [T] -> (logits [T, V], [router_logits [T, E]] per MoE layer);
        input_ids [B, T] -> (logits [B, T, V], [router_logits [B*T, E]] per MoE layer).
        Dense-MLP layers contribute no router logits."""
        squeeze = input_ids.dim() == 1
        ids = input_ids[None] if squeeze else input_ids
        T = ids.shape[1]
        cos, sin = rope_tables(self.cfg, T)
        x = self.model.embed_tokens(ids).float()
        if self.cfg.embedding_multiplier != 1.0:
            x = x * self.cfg.embedding_multiplier
        router_logits = []
        for layer in self.model.layers:
            x, rl = layer(x, cos, sin)
            if rl is not None:
                router_logits.append(rl)
        x = self.model.norm(x)
        logits = x @ self.lm_head_weight().float().t()
        if self.cfg.lm_head_bias:
            logits = logits + self.lm_head.bias.float()
        if self.cfg.logits_scaling != 1.0:
            logits = logits / self.cfg.logits_scaling
        if squeeze:
            logits = logits[0]
        return logits, router_logits

    def moe_blocks(self) -> List[nn.Module]:
        return [getattr(l, self.cfg.moe_attr) for l in self.model.layers if not l.dense]

    @torch.no_grad()
    def routing_gaps(self, router_logits: List[torch.Tensor]) -> Tuple[float, float]:
        """(decision margin, probability/score gap) of the expert selection over all rows.

        softmax/granite/gpt_oss: router-logit gap l_k - l_(k+1) (= log(p_k/p_(k+1))) and the
            softmax probability gap p_k - p_(k+1).
        glm4: on the selection scores sigmoid(l) + e_score_correction_bias: min of the group-score gap
            at the topk_group boundary and the k-th minus (k+1)-th masked selection score; second value
            = the latter alone.
        deepseek: in logit space: group gap of the per-group max logits at the topk_group boundary
            (if group-limited) and the logit gap at the k boundary among the allowed experts; second
            value = probability gap at the k boundary of the masked probabilities.
        phimoe: logit gaps l1 - l2 and l2 - l3 and, for both sparsemixer stages and every expert j,
            the distance of j's threshold test from its boundary in logit units,
            |(m - s_j) - 2 eps max(|s_j|, m)|; second value = softmax probability gap p1 - p2."""
        cfg = self.cfg
        k = cfg.num_experts_per_tok
        lg = pg = float("inf")
        for rl, blk in zip(router_logits, self.moe_blocks()):
            if cfg.moe_kind in ("softmax", "granite", "gpt_oss"):
                s = rl.sort(-1, descending=True).values
                lg = min(lg, float((s[:, k - 1] - s[:, k]).min()))
                p = rl.softmax(-1).sort(-1, descending=True).values
                pg = min(pg, float((p[:, k - 1] - p[:, k]).min()))
            elif cfg.moe_kind == "glm4":
                _, _, info = blk.gate.select(rl)
                m = info["masked"].sort(-1, descending=True).values
                eg = float((m[:, k - 1] - m[:, k]).min())
                gs = info["group_scores"].sort(-1, descending=True).values
                gg = float((gs[:, cfg.topk_group - 1] - gs[:, cfg.topk_group]).min()) if cfg.n_group > 1 else float("inf")
                lg = min(lg, eg, gg)
                pg = min(pg, eg)
            elif cfg.moe_kind == "deepseek":
                N, E = rl.shape
                G = cfg.n_group
                allowed = torch.ones_like(rl, dtype=torch.bool)
                if cfg.topk_method == "group_limited_greedy" and G > 1:
                    gmax = rl.view(N, G, E // G).max(-1).values
                    gs = gmax.sort(-1, descending=True).values
                    lg = min(lg, float((gs[:, cfg.topk_group - 1] - gs[:, cfg.topk_group]).min()))
                    gidx = gmax.topk(cfg.topk_group, dim=-1).indices
                    gm = torch.zeros(N, G, dtype=torch.bool).scatter_(1, gidx, True)
                    allowed = gm[:, :, None].expand(N, G, E // G).reshape(N, E)
                s = rl.masked_fill(~allowed, float("-inf")).sort(-1, descending=True).values
                lg = min(lg, float((s[:, k - 1] - s[:, k]).min()))
                p = rl.softmax(-1).masked_fill(~allowed, 0.0).sort(-1, descending=True).values
                pg = min(pg, float((p[:, k - 1] - p[:, k]).min()))
            elif cfg.moe_kind == "phimoe":
                eps = cfg.router_jitter_eps
                s = rl.sort(-1, descending=True).values
                lg = min(lg, float((s[:, 0] - s[:, 1]).min()), float((s[:, 1] - s[:, 2]).min()))
                i1 = rl.argmax(-1, keepdim=True)
                for stage in range(2):
                    m = s[:, stage:stage + 1]
                    d = ((m - rl) - 2 * eps * rl.abs().clamp(min=m)).abs()
                    skip = torch.zeros_like(rl, dtype=torch.bool).scatter_(1, i1, True)
                    if stage == 1:
                        skip = skip | (rl == m)
                    lg = min(lg, float(d.masked_fill(skip, float("inf")).min()))
                p = rl.softmax(-1).sort(-1, descending=True).values
                pg = min(pg, float((p[:, 0] - p[:, 1]).min()))
            else:
                raise ValueError(cfg.moe_kind)
        return lg, pg

    @torch.no_grad()
    def greedy(self, ids: List[int], n: int) -> Tuple[List[int], List[torch.Tensor]]:
        """n greedy tokens (argmax, no EOS stop, full recompute); returns (tokens, logits per step)."""
        seq = list(ids)
        toks, logs = [], []
        for _ in range(n):
            logits, _ = self(torch.tensor(seq, dtype=torch.long))
            last = logits[-1]
            t = int(last.argmax())
            toks.append(t)
            logs.append(last.clone())
            seq.append(t)
        return toks, logs


def load_balancing_loss(router_logits: List[torch.Tensor], num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-Transformer aux loss over all layers' router logits (no padding mask), as in HF."""
    rl = torch.cat(router_logits, dim=0)
    probs = rl.softmax(-1)
    _, sel = probs.topk(top_k, dim=-1)
    mask = F.one_hot(sel, num_experts).float()             # [N, k, E]
    tokens_per_expert = mask.mean(0)                        # [k, E]
    prob_per_expert = probs.mean(0)                         # [E]
    return (tokens_per_expert * prob_per_expert[None]).sum() * num_experts


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}
_TORCH_DTYPE_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

DtypeSpec = Union[str, Dict[str, str]]


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a.astype(np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _encode(t: torch.Tensor, dtype: str) -> bytes:
    if dtype == "U8":
        if t.dtype != torch.uint8:
            raise ValueError("U8 tensors must be torch.uint8")
        return t.detach().contiguous().numpy().tobytes()
    a = t.detach().float().contiguous().numpy()
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError(dtype)


def _dtype_of(name: str, t: torch.Tensor, dtype: DtypeSpec) -> str:
    if t.dtype == torch.uint8:
        return "U8"
    return dtype if isinstance(dtype, str) else dtype[name]


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], dtype: DtypeSpec = "F32",
                      metadata: Optional[Dict[str, str]] = None) -> int:
    """Writes tensors (in sorted name order). dtype: one name for every float tensor, or a dict
    name -> dtype; torch.uint8 tensors are always written as U8. Returns the number of data bytes."""
    header: Dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs, off = [], 0
    for name in sorted(tensors):
        dt = _dtype_of(name, tensors[name], dtype)
        raw = _encode(tensors[name], dt)
        header[name] = {"dtype": dt, "shape": list(tensors[name].shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)  # pad header to 8-byte alignment (as HF does)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    return off


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """Reads F32/F16/BF16 tensors as float32 torch tensors and U8 tensors as torch.uint8."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = data[base + s: base + e]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        elif dt == "U8":
            a = np.frombuffer(raw, dtype=np.uint8)
        else:
            raise ValueError(f"{path}: unsupported dtype {dt} for {name}")
        if a.size != int(np.prod(info["shape"])):
            raise ValueError(f"{path}: size mismatch for {name}")
        if dt == "U8":
            out[name] = torch.from_numpy(a.reshape(info["shape"]).copy())
        else:
            out[name] = torch.from_numpy(a.astype(np.float32).reshape(info["shape"]).copy())
    return out


# ----------------------------------------------------------------------------------------------
# HF checkpoints
# ----------------------------------------------------------------------------------------------

def hf_state_dict(model: MoeForCausalLM) -> Dict[str, torch.Tensor]:
    return {k: (v.detach().float() if v.is_floating_point() else v.detach())
            for k, v in model.state_dict().items()}


def save_hf_checkpoint(model: MoeForCausalLM, cfg_dict: dict, out_dir: str, dtype: str = "F32",
                       shards: int = 1, dtype_overrides: Optional[Callable[[str], Optional[str]]] = None) -> List[str]:
    """Writes config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index).
    dtype is the checkpoint's float dtype (config torch_dtype); dtype_overrides(name) may return
    another dtype for single tensors; uint8 tensors (MXFP4 blocks/scales) are written as U8."""
    assert dtype in _TORCH_DTYPE_NAME
    os.makedirs(out_dir, exist_ok=True)
    cfg_dict = dict(cfg_dict)
    cfg_dict["torch_dtype"] = _TORCH_DTYPE_NAME[dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    sd = hf_state_dict(model)
    dts: Dict[str, str] = {}
    for n, t in sd.items():
        dts[n] = "U8" if t.dtype == torch.uint8 else ((dtype_overrides(n) if dtype_overrides else None) or dtype)
    for old in os.listdir(out_dir):
        if old.startswith("model") and (old.endswith(".safetensors") or old.endswith(".index.json")):
            os.remove(os.path.join(out_dir, old))
    single = len(set(dts.values())) == 1
    spec: DtypeSpec = dtype if single else dts
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), sd, spec)
        return ["model.safetensors"]
    names = sorted(sd)
    total = sum(sd[n].numel() * _ITEMSIZE[dts[n]] for n in names)
    target = total / shards
    groups: List[List[str]] = [[]]
    acc = 0
    for n in names:
        sz = sd[n].numel() * _ITEMSIZE[dts[n]]
        if acc >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(n)
        acc += sz
    while len(groups) < shards:  # degenerate tiny models: split the largest group
        big = max(range(len(groups)), key=lambda i: len(groups[i]))
        g = groups.pop(big)
        groups.insert(big, g[len(g) // 2:])
        groups.insert(big, g[:len(g) // 2])
    files, weight_map = [], {}
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out_dir, fn), {n: sd[n] for n in g},
                          spec if single else {n: dts[n] for n in g})
        files.append(fn)
        for n in g:
            weight_map[n] = fn
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    return files


def read_hf_tensors(ckpt_dir: str) -> Dict[str, torch.Tensor]:
    idx = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        out: Dict[str, torch.Tensor] = {}
        for fn in sorted(set(wm.values())):
            part = read_safetensors(os.path.join(ckpt_dir, fn))
            for n, t in part.items():
                if wm.get(n) != fn:
                    raise ValueError(f"{n} found in {fn} but weight_map says {wm.get(n)}")
                out[n] = t
        missing = set(wm) - set(out)
        if missing:
            raise ValueError(f"missing tensors: {sorted(missing)[:5]}")
        return out
    return read_safetensors(os.path.join(ckpt_dir, "model.safetensors"))


def load_hf_checkpoint(ckpt_dir: str) -> MoeForCausalLM:
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        cfg = MoeConfig.from_hf(json.load(f))
    model = MoeForCausalLM(cfg)
    tensors = read_hf_tensors(ckpt_dir)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    expected = set(model.state_dict())
    extra = set(tensors) - expected
    missing = expected - set(tensors)
    if extra or missing:
        raise ValueError(f"checkpoint mismatch: missing {sorted(missing)[:8]} unexpected {sorted(extra)[:8]}")
    sd = model.state_dict()
    for n, t in tensors.items():
        if (t.dtype == torch.uint8) != (sd[n].dtype == torch.uint8) or tuple(t.shape) != tuple(sd[n].shape):
            raise ValueError(f"{n}: checkpoint has {t.dtype} {tuple(t.shape)}, model expects "
                             f"{sd[n].dtype} {tuple(sd[n].shape)}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model
