"""Reference logits for the tiny MoE fixtures, from the independent PyTorch forward pass.

For every fixture models/<name>/ (loaded from disk with moe_reference.load_hf_checkpoint, so
f16/bf16 fixtures are evaluated with exactly the rounded weights that are committed) and each of
PROMPTS, writes test/reference/<name>.json:

  {"model": name, "format": 1, "prompts": [
     {"text", "ids" (BOS included, from bpe.BpeTokenizer), "logits" ([V] per prompt position),
      "greedy" (32 argmax tokens, no EOS stop), "greedyLogits" ([V] that produced each greedy token),
      "minMargin" (smallest top1-top2 logit gap over the greedy steps),
      "minRouterGap" (smallest routing-decision margin over all MoE layers and all positions of
                      prompt+greedy: for softmax-over-logits routers the router-logit gap
                      l_k - l_(k+1) = log(p_k/p_(k+1)) between the k-th and (k+1)-th expert; for the
                      other routers see MoeForCausalLM.routing_gaps -- glm4_moe: selection-score gaps,
                      deepseek_v2: group and expert logit gaps, phimoe: sparsemixer logit and
                      threshold distances),
      "minRouterProbGap" (the same boundary as an absolute probability (or sigmoid score) gap)}]}

Floats keep at least 6 significant digits and an absolute error <= 5e-6.

  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/make_reference.py [fixture-name ...]
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bpe import BpeTokenizer  # noqa: E402
from moe_reference import MoeForCausalLM, load_hf_checkpoint  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MODELS = os.path.join(REPO, "models")
REF_DIR = os.path.join(REPO, "test", "reference")
FIXTURES = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe",
            "tiny-granitemoe", "tiny-glm4-moe", "tiny-phimoe", "tiny-gpt-oss", "tiny-deepseek-v2",
            "tiny-deepseek-v2-lite", "tiny-qwen3-moe-dense"]
N_GREEDY = 32

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! It is 3:45 pm on 12 May 2024. Is 2 + 2 = 4, and is 10/5 = 2? Yes; both are true.",
    " Un café au lait, s'il vous plaît.",
]


def fmt(x: float) -> float:
    a = abs(x)
    digits = 6 if a < 10 else (7 if a < 100 else 8)
    return float(format(x, f".{digits}g"))


def rows(t: torch.Tensor) -> List[List[float]]:
    return [[fmt(v) for v in r] for r in t.tolist()]


def router_gaps(model: MoeForCausalLM, router_logits: List[torch.Tensor]):
    """(min routing-decision margin, min probability gap) over all rows (MoeForCausalLM.routing_gaps).
    For softmax routers the margin is the logit gap between the k-th and (k+1)-th expert, which equals
    the log-probability gap, i.e. the *relative* gap p_k/p_(k+1); it is what decides whether float
    rounding can flip the top-k selection."""
    return model.routing_gaps(router_logits)


@torch.no_grad()
def evaluate(model: MoeForCausalLM, tok: BpeTokenizer, prompts=PROMPTS, n_greedy: int = N_GREEDY) -> Dict:
    out = []
    for text in prompts:
        ids = tok.encode(text, add_bos=True)
        logits, _ = model(torch.tensor(ids, dtype=torch.long))
        greedy, glogits = model.greedy(ids, n_greedy)
        margins = []
        for g in glogits:
            top = g.topk(2).values
            margins.append(float(top[0] - top[1]))
        _, rl = model(torch.tensor(ids + greedy, dtype=torch.long))
        lg, pg = router_gaps(model, rl)
        out.append({
            "text": text, "ids": ids, "logits": logits, "greedy": greedy,
            "greedyLogits": torch.stack(glogits), "minMargin": min(margins),
            "minRouterGap": lg, "minRouterProbGap": pg, "distinct": len(set(greedy)),
        })
    return {"prompts": out,
            "minMargin": min(p["minMargin"] for p in out),
            "minRouterGap": min(p["minRouterGap"] for p in out),
            "minRouterProbGap": min(p["minRouterProbGap"] for p in out),
            "minDistinct": min(p["distinct"] for p in out)}


def write_reference(name: str, res: Dict, path: str) -> None:
    doc = {"model": name, "format": 1, "prompts": []}
    for p in res["prompts"]:
        doc["prompts"].append({
            "text": p["text"], "ids": p["ids"], "logits": rows(p["logits"]), "greedy": p["greedy"],
            "greedyLogits": rows(p["greedyLogits"]), "minMargin": fmt(p["minMargin"]),
            "minRouterGap": fmt(p["minRouterGap"]), "minRouterProbGap": fmt(p["minRouterProbGap"]),
        })
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main(names: List[str]) -> None:
    torch.set_num_threads(1)
    for name in names or FIXTURES:
        d = os.path.join(MODELS, name)
        model = load_hf_checkpoint(d)
        tok = BpeTokenizer.from_file(os.path.join(d, "tokenizer.json"))
        res = evaluate(model, tok)
        path = os.path.join(REF_DIR, f"{name}.json")
        write_reference(name, res, path)
        print(f"{name}: minMargin {res['minMargin']:.4g} minRouterGap(logit) {res['minRouterGap']:.4g} "
              f"minRouterProbGap {res['minRouterProbGap']:.3g} "
              f"distinct greedy tokens >= {res['minDistinct']} -> {os.path.relpath(path, REPO)} "
              f"({os.path.getsize(path) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
