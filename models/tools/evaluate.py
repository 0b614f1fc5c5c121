#!/usr/bin/env python3
"""Evaluate a trained MoE LM from its committed bf16 checkpoint (as moe_reference loads it).

  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/evaluate.py --model models/moe-tiny-en

Writes MODEL/eval.json:
  perplexity / nll / tokens / validationLoss on MODEL/validation.txt with the runtime's protocol:
    ids = tokenizer.encode(text) with BOS prepended; W = 256;
    for s in 0, W, 2W, ... while s + 1 < len(ids): chunk = ids[s : s+W+1];
      logits = model(chunk[:-1]) from scratch (no cache between windows);
      nll += -log softmax(logits)[chunk[1:]]
    perplexity = exp(nll / predicted tokens)
  unigramPerplexity: unigram model fitted on the train split token ids (add-one smoothing over
    the vocabulary), evaluated on the same predicted validation tokens
  routing: per layer expert usage (fraction of top-k assignments and of top-1 choices), its
    entropy in bits (max log2(E)), and the share of tokens whose top-1 expert index differs
    between adjacent layers, with the share expected if the two layers' top-1 choices were
    independent (1 - sum_e p_l(e) p_{l+1}(e)). Experts of different layers are different
    experts; the index comparison only measures how (in)dependent the routing decisions are.
  samples: greedy and sampled (temperature 0.8, top-k 40, fixed seed) continuations.
and test/reference/NAME.json (parity reference logits, same format as make_reference.py).
"""
import argparse
import json
import math
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_reference as mr  # noqa: E402
import bpe  # noqa: E402
import make_reference  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
W = 256
REF_PROMPTS = [
    "In the beginning God created the heaven and the earth.",
    "The function returns a list of",
    "A friend in need is",
]
SAMPLE_PROMPTS = [
    "The man said",
    "And the LORD spake unto Moses, saying,",
    "This module provides",
    "The best way to learn a language is",
    "Once upon a time,",
    "If the file does not exist,",
]


def entropy_bits(p):
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@torch.no_grad()
def validation(model, ids, E, k):
    L = model.cfg.num_hidden_layers
    nll, n = 0.0, 0
    topk_counts = np.zeros((L, E))
    top1_counts = np.zeros((L, E))
    changes = np.zeros(L - 1)
    pair_tokens = 0
    router_ent = np.zeros(L)
    s = 0
    while s + 1 < len(ids):
        chunk = torch.tensor(ids[s:s + W + 1], dtype=torch.long)
        logits, rls = model(chunk[:-1])
        nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        n += len(chunk) - 1
        top1 = []
        for li, rl in enumerate(rls):
            p = rl.softmax(-1)
            sel = p.topk(k, -1).indices
            topk_counts[li] += np.bincount(sel.reshape(-1).numpy(), minlength=E)
            t1 = sel[:, 0].numpy()
            top1_counts[li] += np.bincount(t1, minlength=E)
            top1.append(t1)
            router_ent[li] += float(-(p * p.clamp_min(1e-30).log2()).sum())
        for li in range(L - 1):
            changes[li] += float((top1[li] != top1[li + 1]).sum())
        pair_tokens += len(top1[0])
        s += W
    load = topk_counts / topk_counts.sum(1, keepdims=True)
    load1 = top1_counts / top1_counts.sum(1, keepdims=True)
    per_layer = []
    for li in range(L):
        per_layer.append({
            "layer": li,
            "usageEntropyBits": round(entropy_bits(load[li]), 4),
            "top1UsageEntropyBits": round(entropy_bits(load1[li]), 4),
            "meanRouterEntropyBits": round(router_ent[li] / pair_tokens, 4),
            "maxLoad": round(float(load[li].max()), 4),
            "minLoad": round(float(load[li].min()), 4),
            "load": [round(float(x), 4) for x in load[li]],
        })
    adj = []
    for li in range(L - 1):
        indep = 1.0 - float((load1[li] * load1[li + 1]).sum())
        adj.append({"layers": [li, li + 1], "top1ChangedShare": round(changes[li] / pair_tokens, 4),
                    "expectedIfIndependent": round(indep, 4)})
    return nll, n, {"maxEntropyBits": round(math.log2(E), 4), "perLayer": per_layer,
                    "adjacentTop1Change": adj,
                    "meanTop1ChangedShare": round(float(changes.sum() / (pair_tokens * (L - 1))), 4),
                    "note": "load = fraction of top-k assignments per expert on validation; "
                            "experts in different layers are different experts, the top-1 "
                            "index change rate is compared with the rate expected if adjacent "
                            "layers' top-1 choices were independent"}


@torch.no_grad()
def generate(model, tok, prompt, n, temperature=0.0, top_k=40, gen=None):
    ids = tok.encode(prompt, add_bos=True)
    out = []
    for _ in range(n):
        logits, _ = model(torch.tensor(ids[-W:], dtype=torch.long))
        last = logits[-1]
        if temperature <= 0:
            t = int(last.argmax())
        else:
            v, ix = (last / temperature).topk(top_k)
            t = int(ix[torch.multinomial(v.softmax(-1), 1, generator=gen)])
        if t == tok.vocab.get("</s>"):
            break
        ids.append(t)
        out.append(t)
    return tok.decode(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/moe-tiny-en")
    ap.add_argument("--corpus", default="models/.corpus")
    ap.add_argument("--reference", default=None, help="default test/reference/NAME.json")
    ap.add_argument("--max-ref-mb", type=float, default=3.0)
    ap.add_argument("--gen-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    name = os.path.basename(os.path.normpath(a.model))
    model = mr.load_hf_checkpoint(a.model)
    cfg = model.cfg
    tok = bpe.BpeTokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    V, E, k = cfg.vocab_size, cfg.num_experts, cfg.num_experts_per_tok
    with open(os.path.join(a.model, "validation.txt"), encoding="utf-8") as f:
        val_ids = tok.encode(f.read(), add_bos=True)

    nll, n, routing = validation(model, val_ids, E, k)

    # unigram baseline (add-one), fitted on the train split
    train_ids_path = os.path.join(a.corpus, "train_ids.npy")
    if os.path.exists(train_ids_path):
        train_ids = np.load(train_ids_path)
    else:
        with open(os.path.join(a.corpus, "train.txt"), encoding="utf-8") as f:
            train_ids = np.array(tok.encode(f.read(), add_bos=True))
    counts = np.bincount(train_ids, minlength=V).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    predicted = []
    s = 0
    while s + 1 < len(val_ids):
        predicted.extend(val_ids[s + 1:s + W + 1])
        s += W
    uni_nll = float(-logp[np.array(predicted)].sum())
    assert len(predicted) == n

    gen = torch.Generator().manual_seed(a.seed)
    samples = []
    for p in SAMPLE_PROMPTS:
        samples.append({"prompt": p,
                        "greedy": generate(model, tok, p, a.gen_tokens),
                        "sampled": generate(model, tok, p, a.gen_tokens, 0.8, 40, gen)})

    res = {
        "model": name,
        "checkpoint": "model.safetensors (bf16) loaded with moe_reference.load_hf_checkpoint, fp32 math",
        "protocol": "BOS + encode(validation.txt); windows of W=256 at s=0,W,2W,... while s+1<len; "
                    "chunk=ids[s:s+W+1]; logits=model(chunk[:-1]) from scratch; nll over chunk[1:]",
        "window": W,
        "perplexity": math.exp(nll / n),
        "tokens": n,
        "nll": nll,
        "validationLoss": nll / n,
        "unigramPerplexity": math.exp(uni_nll / n),
        "unigramLoss": uni_nll / n,
        "unigramNote": "unigram over train split token ids (BOS included), add-one smoothing over V, "
                       "evaluated on the same predicted validation tokens",
        "routing": routing,
        "samples": samples,
        "sampling": {"greedy": "argmax", "sampled": f"temperature 0.8, top-k 40, torch seed {a.seed}",
                     "maxNewTokens": a.gen_tokens, "context": "last 256 tokens, full recompute"},
    }
    with open(os.path.join(a.model, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # parity reference logits (same format as make_reference.py)
    ref = make_reference.evaluate(model, tok, REF_PROMPTS, make_reference.N_GREEDY)
    ref_path = a.reference or os.path.join(REPO, "test", "reference", f"{name}.json")
    make_reference.write_reference(name, ref, ref_path)
    if os.path.getsize(ref_path) > a.max_ref_mb * 1e6:
        for p in ref["prompts"]:
            p["logits"] = p["logits"][-1:]
        make_reference.write_reference(name, ref, ref_path)
        with open(ref_path, encoding="utf-8") as f:
            doc = json.load(f)
        doc["note"] = ("logits holds only the LAST prompt position (one [V] row per prompt) to keep "
                       "the file small; greedyLogits holds every greedy step")
        with open(ref_path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
    print(json.dumps({k_: v for k_, v in res.items() if k_ not in ("routing",)}, indent=1,
                     ensure_ascii=False))
    print("routing entropy bits per layer:",
          [l["usageEntropyBits"] for l in routing["perLayer"]], "max", routing["maxEntropyBits"])
    print("adjacent top1 change:", [(x["top1ChangedShare"], x["expectedIfIndependent"])
                                    for x in routing["adjacentTop1Change"]])
    print(f"reference: {ref_path} {os.path.getsize(ref_path)/1e6:.2f} MB, minMargin {ref['minMargin']:.4g}, "
          f"minRouterGap {ref['minRouterGap']:.4g}")


if __name__ == "__main__":
    main()
