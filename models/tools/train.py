#!/usr/bin/env python3
"""Train a small Mixtral-architecture MoE language model on CPU (fp32, one thread).

Recipe used for models/moe-tiny-en (see its README.md):

  apt-get install -y bible-kjv bible-kjv-text python3.11-doc fortunes
  /usr/bin/python3 models/tools/corpus.py --out models/.corpus --validation models/moe-tiny-en/validation.txt
  /usr/bin/python3 models/tools/bpe.py --vocab-size 4096 --out models/moe-tiny-en \
      --model-max-length 256 models/.corpus/train.txt
  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/train.py --out models/moe-tiny-en --max-steps 2235
  cp models/.corpus/ckpt-moe-tiny-en.pt models/.corpus/ckpt-phase1.pt
  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/train.py --out models/moe-tiny-en \
      --init-from models/.corpus/ckpt-phase1.pt --revive-dead 0.005 --max-steps 506 \
      --lr 1e-3 --warmup 30 --aux-coef 0.02 --seed 99 --eval-minutes 4
  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/evaluate.py --model models/moe-tiny-en

The model is moe_reference.MoeForCausalLM (so parameter names are the HF Mixtral tensor
names); only the sparse-MoE forward is replaced during training by a mathematically
identical grouped version (tokens sorted by expert, one contiguous slice per expert, one
index_add_), which is much faster on CPU than one nonzero()/index per expert.

Loss = next-token cross entropy + aux_coef * Switch/Mixtral load-balancing loss
(E * sum_e f_e * P_e over all layers, moe_reference.load_balancing_loss).
AdamW, linear warm-up then cosine decay to 10% of the peak LR. The total number of steps
is fixed after the first timed steps so that the run fits in --minutes, and the cosine
progress is max(step progress, wall-clock progress) so a slowed-down run still anneals; a resumable
checkpoint (fp32 weights + optimizer) is written to --ckpt every --ckpt-minutes.
Use --minutes N instead of --max-steps to size a run to a wall-clock budget (the model was
trained that way: --minutes 68, then --minutes 14, which gave 2235 and 506 steps).
At the end the bf16 HF checkpoint (config.json + model.safetensors) is written to --out.
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_reference as mr  # noqa: E402
import bpe  # noqa: E402


# ------------------------------------------------------------------------------------------
# fast grouped MoE forward (training only; same math as moe_reference.SparseMoe.forward)
# ------------------------------------------------------------------------------------------

def grouped_moe_forward(self, x):
    cfg = self.cfg
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    router_logits = self.gate(x)
    probs = router_logits.softmax(-1)
    w, sel = probs.topk(cfg.num_experts_per_tok, dim=-1)
    if cfg.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    k = cfg.num_experts_per_tok
    flat_sel = sel.reshape(-1)
    order = torch.argsort(flat_sel, stable=True)
    tok = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat_sel, minlength=cfg.num_experts).tolist()
    xs = x.index_select(0, tok)
    ws = w.reshape(-1).index_select(0, order)
    outs = []
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        ex = self.experts[e]
        xe = xs[start:start + c]
        outs.append(ex.w2(F.silu(ex.w1(xe)) * ex.w3(xe)))
        start += c
    y = torch.cat(outs, 0) * ws[:, None]
    out = torch.zeros_like(x).index_add_(0, tok, y)
    return out.reshape(shape), router_logits


@torch.no_grad()
def expert_loads(model, train_ids, a, rng, n_seq=16):
    starts = rng.integers(0, len(train_ids) - a.ctx - 1, size=n_seq)
    batch = torch.from_numpy(np.stack([train_ids[s:s + a.ctx] for s in starts]).astype(np.int64))
    _, rls = model(batch)
    loads = []
    for rl in rls:
        sel = rl.softmax(-1).topk(a.topk, -1).indices.reshape(-1)
        c = torch.bincount(sel, minlength=a.experts).float()
        loads.append(c / c.sum())
    return loads


@torch.no_grad()
def revive_dead_experts(model, train_ids, a, rng):
    """Expert splitting: every dead expert (load < a.revive_dead) gets a copy of one of the most
    loaded experts' weights; the two router rows get +/- a random perturbation so the donor's
    tokens are split between the two copies, which then diverge during further training."""
    loads = expert_loads(model, train_ids, a, rng)
    report = []
    for li, layer in enumerate(model.model.layers):
        moe = layer.block_sparse_moe
        ld = loads[li]
        dead = [int(e) for e in torch.nonzero(ld < a.revive_dead).flatten()]
        live = [int(e) for e in torch.argsort(ld, descending=True) if ld[e] >= a.revive_dead]
        pairs = []
        for i, d in enumerate(dead):
            donor = live[i % len(live)]
            for nm in ("w1", "w2", "w3"):
                getattr(moe.experts[d], nm).weight.copy_(getattr(moe.experts[donor], nm).weight)
            g = moe.gate.weight
            noise = torch.randn(g.shape[1], generator=torch.Generator().manual_seed(a.seed * 1000 + li * 64 + d))
            noise = noise * (g[donor].norm() / noise.norm()) * 0.5
            g[d] = g[donor] + noise
            g[donor] = g[donor] - noise
            pairs.append([d, donor])
        report.append({"layer": li, "dead": dead, "pairs": pairs,
                       "loadBefore": [round(float(x), 4) for x in ld]})
    after = expert_loads(model, train_ids, a, rng)
    for li, r in enumerate(report):
        r["loadAfter"] = [round(float(x), 4) for x in after[li]]
    print("revived:", [(r["layer"], len(r["dead"])) for r in report], flush=True)
    return {"threshold": a.revive_dead, "layers": report}


def hf_config(a, vocab_size):
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": vocab_size,
        "hidden_size": a.hidden,
        "intermediate_size": a.ffn,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden // a.heads,
        "num_local_experts": a.experts,
        "num_experts_per_tok": a.topk,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": a.ctx,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "output_router_logits": False,
        "router_aux_loss_coef": a.aux_coef,
        "router_jitter_noise": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
    }


def init_weights(model, n_layers):
    for name, p in model.named_parameters():
        if p.dim() == 1:
            continue  # RMSNorm weights stay 1
        std = 0.02
        if name.endswith("o_proj.weight") or name.endswith("w2.weight"):
            std = 0.02 / math.sqrt(2 * n_layers)
        torch.nn.init.normal_(p, 0.0, std)


def load_ids(tok, text_path, cache_path):
    st = os.stat(text_path)
    tok_sig = f"{st.st_size}:{len(tok.vocab)}:{len(tok.ranks)}"
    if os.path.exists(cache_path) and os.path.exists(cache_path + ".sig"):
        with open(cache_path + ".sig") as f:
            if f.read() == tok_sig:
                return np.load(cache_path)
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    t0 = time.time()
    ids = np.array(tok.encode(text, add_bos=True), dtype=np.int32)
    print(f"tokenized {text_path}: {len(text)} chars -> {len(ids)} tokens in {time.time()-t0:.1f}s",
          flush=True)
    np.save(cache_path, ids)
    with open(cache_path + ".sig", "w") as f:
        f.write(tok_sig)
    return ids


@torch.no_grad()
def eval_loss(model, ids, W, max_windows=None):
    """Validation protocol (windows of W from s = 0, W, 2W...; fresh context each window)."""
    tot, n = 0.0, 0
    starts = list(range(0, len(ids) - 1, W))
    if max_windows:
        starts = starts[:max_windows]
    for s in starts:
        chunk = torch.tensor(ids[s:s + W + 1], dtype=torch.long)
        logits, _ = model(chunk[:-1])
        tot += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        n += len(chunk) - 1
    return tot / n, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/moe-tiny-en")
    ap.add_argument("--corpus", default="models/.corpus")
    ap.add_argument("--ckpt", default=None, help="resumable checkpoint path (default CORPUS/ckpt-NAME.pt)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--minutes", type=float, default=65.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0, help="fixed step count (overrides --minutes sizing)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=96, help="expert intermediate size")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--eval-minutes", type=float, default=5.0)
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--init-from", default=None,
                    help="start from the fp32 weights of a checkpoint written by this script "
                         "(fresh optimizer and schedule; the training log is appended to)")
    ap.add_argument("--revive-dead", type=float, default=0.0,
                    help="with --init-from: experts whose share of top-k assignments on a training "
                         "sample is below this are replaced by a split of the most loaded expert")
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps and exit")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    name = os.path.basename(os.path.normpath(a.out))
    ckpt_path = a.ckpt or os.path.join(a.corpus, f"ckpt-{name}.pt")
    tok = bpe.BpeTokenizer.from_file(os.path.join(a.out, "tokenizer.json"))
    V = len(tok.vocab)
    train_ids = load_ids(tok, os.path.join(a.corpus, "train.txt"), os.path.join(a.corpus, "train_ids.npy"))
    with open(os.path.join(a.out, "validation.txt"), encoding="utf-8") as f:
        val_ids = tok.encode(f.read(), add_bos=True)

    cfg_dict = hf_config(a, V)
    cfg = mr.MoeConfig.from_hf(cfg_dict)
    model = mr.MoeForCausalLM(cfg)
    init_weights(model, a.layers)
    mr.SparseMoe.forward = grouped_moe_forward
    n_params = sum(p.numel() for p in model.parameters())
    active = n_params - a.layers * (a.experts - a.topk) * 3 * a.hidden * a.ffn - V * a.hidden
    print(f"params {n_params/1e6:.2f}M (active per token excl. embedding {active/1e6:.2f}M), "
          f"train tokens {len(train_ids)}, val tokens {len(val_ids)}", flush=True)

    decay = [p for n_, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n_]
    no_decay = [p for n_, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n_)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(a.seed)
    log_path = os.path.join(a.out, "training_log.jsonl")
    state = {"step": 0, "tokens": 0, "total_steps": a.max_steps or None, "elapsed": 0.0}
    revived = None
    if a.init_from:
        model.load_state_dict(torch.load(a.init_from)["model"])
        if a.revive_dead > 0:
            revived = revive_dead_experts(model, train_ids, a, np.random.default_rng(a.seed + 1))
    if a.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        rng = np.random.default_rng()
        rng.bit_generator.state = ck["rng"]
        print(f"resumed from {ckpt_path} at step {state['step']}", flush=True)
    else:
        with open(log_path, "a" if a.init_from else "w") as f:
            f.write(json.dumps({"event": "config", "hf_config": cfg_dict, "args": vars(a),
                                "params": n_params, "trainTokens": int(len(train_ids)),
                                "valTokens": len(val_ids),
                                "phase": 2 if a.init_from else 1}) + "\n")
            if revived is not None:
                f.write(json.dumps({"event": "revive", **revived}) + "\n")

    def log(rec):
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    def save_ckpt():
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                    "rng": rng.bit_generator.state, "cfg": cfg_dict}, tmp)
        os.replace(tmp, ckpt_path)

    T, B = a.ctx, a.batch
    budget = a.minutes * 60.0
    t_start = time.time() - state["elapsed"]
    last_eval = time.time()
    last_ckpt = time.time()
    ema = None
    model.train()
    while True:
        step = state["step"]
        if state["total_steps"] is not None and step >= state["total_steps"]:
            break
        if a.bench and step >= a.bench:
            break
        # lr schedule
        total = state["total_steps"] or 10 ** 9
        if step < a.warmup:
            lr = a.lr * (step + 1) / a.warmup
        else:
            prog = (step - a.warmup) / max(1, total - a.warmup)
            if not a.max_steps:  # time-aware: CPU shared with others may slow steps down
                prog = max(prog, (state["elapsed"] - state.get("warm_elapsed", 0.0)) /
                           max(1.0, budget * 0.98 - state.get("warm_elapsed", 0.0)))
            prog = min(1.0, prog)
            lr = a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(train_ids) - T - 1, size=B)
        batch = torch.from_numpy(np.stack([train_ids[s:s + T + 1] for s in starts]).astype(np.int64))
        logits, rls = model(batch[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, V), batch[:, 1:].reshape(-1))
        aux = mr.load_balancing_loss(rls, a.experts, a.topk)
        loss = ce + a.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        state["tokens"] += B * T
        state["elapsed"] = time.time() - t_start
        ema = ce.item() if ema is None else 0.95 * ema + 0.05 * ce.item()
        if state["step"] == 20 and state["total_steps"] is None and not a.bench:
            per_step = state["elapsed"] / 20
            # leave ~4% for periodic evals / checkpoints
            state["total_steps"] = max(a.warmup + 10, int(budget * 0.96 / per_step))
            log({"event": "sized", "secPerStep": round(per_step, 3), "totalSteps": state["total_steps"],
                 "tokensPerSec": round(B * T / per_step, 1)})
        if state["step"] % 10 == 0 or a.bench:
            log({"event": "train", "step": state["step"], "tokens": state["tokens"],
                 "loss": round(ce.item(), 4), "lossEma": round(ema, 4), "aux": round(aux.item(), 4),
                 "lr": round(lr, 6), "gradNorm": round(float(gn), 3),
                 "elapsedSec": round(state["elapsed"], 1),
                 "tokensPerSec": round(state["tokens"] / max(state["elapsed"], 1e-9), 1)})
        if time.time() - last_eval > a.eval_minutes * 60:
            model.eval()
            vl, vn = eval_loss(model, val_ids, T, a.eval_windows)
            model.train()
            log({"event": "eval", "step": state["step"], "tokens": state["tokens"],
                 "trainLossEma": round(ema, 4), "valLoss": round(vl, 4), "valTokens": vn,
                 "note": f"first {a.eval_windows} validation windows"})
            last_eval = time.time()
        if time.time() - last_ckpt > a.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = time.time()
        if state["step"] == a.warmup:
            state["warm_elapsed"] = state["elapsed"]
        if not a.max_steps and state["elapsed"] > budget * 0.98:
            log({"event": "stop", "reason": "time budget", "step": state["step"]})
            break
    if a.bench:
        return
    save_ckpt()
    model.eval()
    mr.save_hf_checkpoint(model, cfg_dict, a.out, dtype="BF16")
    # reload exactly what the runtime sees and evaluate the full validation text
    m2 = mr.load_hf_checkpoint(a.out)
    vl, vn = eval_loss(m2, val_ids, T)
    # expert load per layer on validation (fraction of top-k assignments per expert)
    loads = []
    with torch.no_grad():
        counts = torch.zeros(a.layers, a.experts)
        for s in range(0, len(val_ids) - 1, T):
            chunk = torch.tensor(val_ids[s:s + T], dtype=torch.long)
            _, rls = m2(chunk)
            for li, rl in enumerate(rls):
                sel = rl.softmax(-1).topk(a.topk, -1).indices.reshape(-1)
                counts[li] += torch.bincount(sel, minlength=a.experts).float()
        loads = (counts / counts.sum(1, keepdim=True)).tolist()
    log({"event": "final", "step": state["step"], "tokens": state["tokens"], "trainLossEma": round(ema, 4),
         "valLoss": round(vl, 4), "valTokens": vn, "checkpoint": "bf16 model.safetensors",
         "elapsedSec": round(state["elapsed"], 1),
         "expertLoad": [[round(x, 4) for x in row] for row in loads]})


if __name__ == "__main__":
    main()
