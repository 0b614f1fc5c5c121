"""Independent fp32 PyTorch reference for decoder-only MoE LMs in Hugging Face layout.

Supported config.json model_type values (one parametrised module, architecture as flags):
  mixtral    RMSNorm, RoPE (rotate_half), GQA, softmax router -> top-k -> renormalise,
             experts block_sparse_moe.experts.J.{w1 (gate), w3 (up), w2 (down)}
  qwen2_moe  + q/k/v biases, norm_topk_prob flag, shared expert scaled by
             sigmoid(mlp.shared_expert_gate(x)); experts mlp.experts.J.{gate,up,down}_proj
  qwen3_moe  + per-head RMSNorm q_norm/k_norm (size head_dim) before RoPE, explicit head_dim
  olmoe      + RMSNorm q_norm/k_norm over the full projected q (heads*hd) / k (kv_heads*hd)
             before splitting into heads, optional clip_qkv

The nn.Module attribute tree mirrors the HF names, so `state_dict()` keys are exactly the HF
checkpoint tensor names (lm_head.weight is omitted when tie_word_embeddings is true).
All math is float32; f16/bf16 checkpoints are upcast on load.

Also contains a minimal safetensors reader/writer (F32/F16/BF16), sharded checkpoints and
`load_balancing_loss` (Switch-style aux loss over router logits, as HF computes it).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field, asdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SUPPORTED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


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
    qk_norm: str = "none"            # "none" | "head" (qwen3_moe) | "full" (olmoe)
    shared_expert_intermediate_size: int = 0
    clip_qkv: Optional[float] = None
    max_position_embeddings: int = 4096

    @property
    def moe_attr(self) -> str:
        return "block_sparse_moe" if self.model_type == "mixtral" else "mlp"

    @property
    def expert_names(self) -> Tuple[str, str, str]:
        """(gate, up, down) linear names inside one expert."""
        if self.model_type == "mixtral":
            return ("w1", "w3", "w2")
        return ("gate_proj", "up_proj", "down_proj")

    @classmethod
    def from_hf(cls, c: dict) -> "MoeConfig":
        mt = c["model_type"]
        if mt not in SUPPORTED:
            raise ValueError(f"unsupported model_type {mt!r}")
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
            if c.get("decoder_sparse_step", 1) != 1 or c.get("mlp_only_layers"):
                raise ValueError("only decoder_sparse_step=1 and mlp_only_layers=[] are supported")
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


class Attention(nn.Module):
    def __init__(self, cfg: MoeConfig):
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
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = h // kv
        if rep > 1:  # query head i uses kv head i // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        out = scores.softmax(-1) @ v                       # [B, H, T, D]
        out = out.transpose(1, 2).reshape(B, T, h * hd)
        return self.o_proj(out)


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


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        setattr(self, cfg.moe_attr, SparseMoe(cfg))

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        y, rl = getattr(self, self.cfg.moe_attr)(self.post_attention_layernorm(x))
        return x + y, rl


class _Backbone(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MoeForCausalLM(nn.Module):
    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def lm_head_weight(self) -> torch.Tensor:
        if self.cfg.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, input_ids: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """input_ids [T] -> (logits [T, V], [router_logits [T, E]] per layer);
        input_ids [B, T] -> (logits [B, T, V], [router_logits [B*T, E]] per layer)."""
        squeeze = input_ids.dim() == 1
        ids = input_ids[None] if squeeze else input_ids
        T = ids.shape[1]
        cos, sin = rope_cos_sin(torch.arange(T), self.cfg.head_dim, self.cfg.rope_theta)
        x = self.model.embed_tokens(ids).float()
        router_logits = []
        for layer in self.model.layers:
            x, rl = layer(x, cos, sin)
            router_logits.append(rl)
        x = self.model.norm(x)
        logits = x @ self.lm_head_weight().float().t()
        if squeeze:
            logits = logits[0]
        return logits, router_logits

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

_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


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
    a = t.detach().float().contiguous().numpy()
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], dtype: str = "F32",
                      metadata: Optional[Dict[str, str]] = None) -> int:
    """Writes tensors (in sorted name order). Returns the number of data bytes."""
    header: Dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs, off = [], 0
    for name in sorted(tensors):
        raw = _encode(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [off, off + len(raw)]}
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
    """Reads F32/F16/BF16 tensors, returned as float32 torch tensors."""
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
        else:
            raise ValueError(f"{path}: unsupported dtype {dt} for {name}")
        if a.size != int(np.prod(info["shape"])):
            raise ValueError(f"{path}: size mismatch for {name}")
        out[name] = torch.from_numpy(a.astype(np.float32).reshape(info["shape"]).copy())
    return out


# ----------------------------------------------------------------------------------------------
# HF checkpoints
# ----------------------------------------------------------------------------------------------

def hf_state_dict(model: MoeForCausalLM) -> Dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def save_hf_checkpoint(model: MoeForCausalLM, cfg_dict: dict, out_dir: str, dtype: str = "F32",
                       shards: int = 1) -> List[str]:
    """Writes config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index)."""
    assert dtype in _ITEMSIZE
    os.makedirs(out_dir, exist_ok=True)
    cfg_dict = dict(cfg_dict)
    cfg_dict["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    sd = hf_state_dict(model)
    for old in os.listdir(out_dir):
        if old.startswith("model") and (old.endswith(".safetensors") or old.endswith(".index.json")):
            os.remove(os.path.join(out_dir, old))
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), sd, dtype)
        return ["model.safetensors"]
    names = sorted(sd)
    total = sum(sd[n].numel() for n in names) * _ITEMSIZE[dtype]
    target = total / shards
    groups: List[List[str]] = [[]]
    acc = 0
    for n in names:
        sz = sd[n].numel() * _ITEMSIZE[dtype]
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
        write_safetensors(os.path.join(out_dir, fn), {n: sd[n] for n in g}, dtype)
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
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model
