"""Deterministically generate the tiny MoE test fixtures models/tiny-*/ and their reference logits.

  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/make_fixtures.py

1. Trains one shared byte-level BPE tokenizer (vocab 512 = 3 specials + 256 bytes + 253 merges)
   on the licence texts in /usr/share/common-licenses/ (Debian `base-files`; regular files only,
   symlinks skipped, sorted by name: Apache-2.0 Artistic BSD CC0-1.0 GFDL-1.2 GFDL-1.3 GPL-1 GPL-2
   GPL-3 LGPL-2 LGPL-2.1 LGPL-3 MPL-1.1 MPL-2.0).
2. For each fixture, initialises random weights from a fixed seed, writes the HF checkpoint in
   the fixture's dtype/sharding, reloads it from disk and checks that greedy decoding has no
   near-ties (top1-top2 logit margin >= MIN_MARGIN at every greedy step), that routing is
   decisive (router-logit gap l_k - l_(k+1) >= MIN_MARGIN at every position and layer; this is
   the log of the probability ratio p_k/p_(k+1), i.e. a relative gap -- absolute probability
   gaps between two small tail probabilities are always tiny somewhere) and that
   the greedy continuations are varied; otherwise it tries the next seed.
3. Writes test/reference/<fixture>.json via make_reference.py.
"""
from __future__ import annotations

import glob
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bpe import BpeTokenizer, train_bpe, write_tokenizer_files  # noqa: E402
from moe_reference import MoeConfig, MoeForCausalLM, load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
import make_reference  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MODELS = os.path.join(REPO, "models")
CORPUS_GLOB = "/usr/share/common-licenses/*"
SPECIALS = ["<unk>", "<s>", "</s>"]
BOS, EOS = "<s>", "</s>"
VOCAB = 512
MIN_MARGIN = 5e-3         # required: top1-top2 greedy logit margin and router-logit gap (brief: >= 1e-3)
MIN_DISTINCT = 6          # distinct tokens among the 32 greedy tokens of every prompt
MAX_TRIES = 400

COMMON = {
    "vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 256,
    "initializer_range": 0.02, "use_cache": True, "attention_dropout": 0.0,
    "output_router_logits": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
    "transformers_version": "4.46.0",
}

FIXTURES = {
    "tiny-mixtral": dict(dtype="F32", shards=1, seed=1000, config={
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **COMMON,
        "intermediate_size": 96, "num_local_experts": 8, "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": None,
        "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0, "tie_word_embeddings": False,
    }),
    "tiny-qwen2-moe": dict(dtype="BF16", shards=2, seed=2000, config={
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", **COMMON,
        "intermediate_size": 128, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128,
        "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": False,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 256,
        "max_window_layers": 2, "router_aux_loss_coef": 0.001, "tie_word_embeddings": False,
    }),
    "tiny-qwen3-moe": dict(dtype="F16", shards=1, seed=3000, config={
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", **COMMON,
        "head_dim": 32, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_experts": 16, "num_experts_per_tok": 4, "norm_topk_prob": True,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "attention_bias": False,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 2, "router_aux_loss_coef": 0.001,
        "tie_word_embeddings": False,
    }),
    "tiny-olmoe": dict(dtype="F32", shards=1, seed=4000, config={
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", **COMMON,
        "intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": False,
        "attention_bias": False, "clip_qkv": None, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01, "tie_word_embeddings": True,
    }),
}


def corpus_files():
    return [p for p in sorted(glob.glob(CORPUS_GLOB)) if os.path.isfile(p) and not os.path.islink(p)]


def train_tokenizer():
    texts = []
    for p in corpus_files():
        with open(p, encoding="utf-8") as f:
            texts.append(f.read())
    return train_bpe(texts, VOCAB, SPECIALS)


@torch.no_grad()
def init_weights(model: MoeForCausalLM, seed: int) -> None:
    """Normal init scaled per fan-in so activations stay O(1); router and lm_head are scaled up
    so routing and next-token choices are decisive. With tied embeddings the token embedding is
    kept small and the residual branches (o_proj, expert down projections) larger, otherwise
    logits = norm(x) . E is dominated by the current token's own embedding and greedy decoding
    repeats one token forever."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    H = cfg.hidden_size

    def normal_(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    for name, p in model.named_parameters():
        leaf = name.split(".")[-2] if name.endswith(".weight") or name.endswith(".bias") else name
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith(".bias"):
            normal_(p, 0.2)
        elif name == "model.embed_tokens.weight":
            normal_(p, 0.3 if cfg.tie_word_embeddings else 1.0)
        elif name == "lm_head.weight":
            normal_(p, 0.6)
        elif leaf == "gate" and ".experts." not in name:          # router
            normal_(p, 5.0 / math.sqrt(H))
        elif leaf == "shared_expert_gate":
            normal_(p, 1.0 / math.sqrt(H))
        else:                                                     # 2-D projections
            fan_in = p.shape[1]
            branch_out = leaf in ("o_proj", "down_proj", "w2")
            gain = 2.0 if (branch_out and cfg.tie_word_embeddings) else 1.0
            normal_(p, gain / math.sqrt(fan_in))


def build(name: str, spec: dict, tok: BpeTokenizer, verbose: bool = True):
    out_dir = os.path.join(MODELS, name)
    cfg = MoeConfig.from_hf(spec["config"])
    for t in range(MAX_TRIES):
        seed = spec["seed"] + t
        model = MoeForCausalLM(cfg)
        init_weights(model, seed)
        save_hf_checkpoint(model, spec["config"], out_dir, dtype=spec["dtype"], shards=spec["shards"])
        reloaded = load_hf_checkpoint(out_dir)
        res = make_reference.evaluate(reloaded, tok)
        ok = (res["minMargin"] >= MIN_MARGIN and res["minRouterGap"] >= MIN_MARGIN
              and res["minDistinct"] >= MIN_DISTINCT)
        if verbose:
            print(f"  {name} seed {seed}: minMargin {res['minMargin']:.4g} minRouterGap "
                  f"{res['minRouterGap']:.4g} (prob {res['minRouterProbGap']:.3g}) minDistinct {res['minDistinct']} {'OK' if ok else 'retry'}",
                  flush=True)
        if ok:
            return seed, res
    raise RuntimeError(f"{name}: no acceptable seed in {MAX_TRIES} tries")


def main() -> None:
    torch.set_num_threads(1)
    vocab, merges = train_tokenizer()
    only = sys.argv[1:]
    for name, spec in FIXTURES.items():
        if only and name not in only:
            continue
        out_dir = os.path.join(MODELS, name)
        os.makedirs(out_dir, exist_ok=True)
        write_tokenizer_files(out_dir, vocab, merges, SPECIALS, BOS, EOS,
                              model_max_length=COMMON["max_position_embeddings"])
        tok = BpeTokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
        seed, _ = build(name, spec, tok)
        size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        print(f"{name}: seed {seed}, {spec['dtype']}, {spec['shards']} shard(s), {size / 1e6:.2f} MB", flush=True)
    make_reference.main(only)


if __name__ == "__main__":
    main()
