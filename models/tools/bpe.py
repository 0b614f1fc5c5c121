"""Byte-level BPE (GPT-2 style) trainer / tokenizer writing Hugging Face `tokenizers` files.

Layout of the vocabulary produced by `train_bpe`:
  ids 0..S-1        the special tokens, in the order given (e.g. "<unk>", "<s>", "</s>")
  ids S..S+255      the 256 byte tokens, in byte order 0x00..0xFF (GPT-2 bytes_to_unicode chars)
  ids S+256..       one token per merge, in merge order

Pre-tokenisation is the exact GPT-2 regex (as used by HF's ByteLevel pre-tokenizer with
use_regex=true, add_prefix_space=false). Encoding applies merges by rank (lowest first,
leftmost first), which is what HF tokenizers / tokenizers.js do with ignore_merges=false.

Usage as a script (train on files, write tokenizer.json + tokenizer_config.json):
  OMP_NUM_THREADS=1 /usr/bin/python3 models/tools/bpe.py --vocab-size 4096 --out DIR FILE...
"""
from __future__ import annotations

import heapq
import json
import os
import sys
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PRETOKENIZE = regex.compile(GPT2_PATTERN)

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
            + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def pretokenize(text: str) -> List[str]:
    return _PRETOKENIZE.findall(text)


def to_byte_chars(piece: str) -> str:
    return "".join(BYTE_ENCODER[b] for b in piece.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str],
              min_frequency: int = 2, verbose: bool = False) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Train byte-level BPE. Returns (vocab token->id, merges list of (left, right)).

    Incremental: a word-frequency table, global pair counts, and an index pair -> words
    containing it; each merge only touches the words that contain the merged pair. The best
    pair is taken from a lazy max-heap (ties broken by the lexicographically smallest pair,
    so results are deterministic).
    """
    vocab: Dict[str, int] = {}
    for tok in special_tokens:
        if tok in vocab:
            raise ValueError(f"duplicate special token {tok!r}")
        vocab[tok] = len(vocab)
    for b in range(256):
        ch = BYTE_ENCODER[b]
        if ch in vocab:
            raise ValueError(f"special token {ch!r} collides with a byte token")
        vocab[ch] = len(vocab)
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} < {len(vocab)} (specials + 256 bytes)")

    word_freq: Counter = Counter()
    for text in texts:
        # specials inside training text are not learned from
        for part in _split_on(text, special_tokens):
            if part in special_tokens:
                continue
            word_freq.update(pretokenize(part))

    words: List[List[str]] = []
    freqs: List[int] = []
    for w, f in word_freq.items():
        words.append(list(to_byte_chars(w)))
        freqs.append(f)

    pair_count: Dict[Tuple[str, str], int] = defaultdict(int)
    where: Dict[Tuple[str, str], set] = defaultdict(set)
    for i, (sym, f) in enumerate(zip(words, freqs)):
        for a, b in zip(sym, sym[1:]):
            pair_count[(a, b)] += f
            where[(a, b)].add(i)

    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    merges: List[Tuple[str, str]] = []
    while len(vocab) < vocab_size and heap:
        negc, pair = heapq.heappop(heap)
        cur = pair_count.get(pair, 0)
        if cur != -negc:
            continue  # stale entry (a fresher one was pushed when the count changed)
        if cur < min_frequency:
            break
        a, b = pair
        new = a + b
        merges.append(pair)
        if new not in vocab:
            vocab[new] = len(vocab)
        changed = {}
        for wi in where.pop(pair, ()):
            sym = words[wi]
            # quick reject: stale index entry
            ok = False
            for j in range(len(sym) - 1):
                if sym[j] == a and sym[j + 1] == b:
                    ok = True
                    break
            if not ok:
                continue
            f = freqs[wi]
            for p in zip(sym, sym[1:]):
                pair_count[p] -= f
                changed[p] = True
            out = []
            j = 0
            n = len(sym)
            while j < n:
                if j < n - 1 and sym[j] == a and sym[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(sym[j])
                    j += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                changed[p] = True
                where[p].add(wi)
        pair_count.pop(pair, None)
        for p in changed:
            if p == pair:
                continue
            c = pair_count.get(p, 0)
            if c <= 0:
                pair_count.pop(p, None)
            else:
                heapq.heappush(heap, (-c, p))
        if verbose and len(merges) % 500 == 0:
            print(f"  {len(merges)} merges, vocab {len(vocab)}", file=sys.stderr)
    return vocab, merges


# ----------------------------------------------------------------------------------------------
# HF files
# ----------------------------------------------------------------------------------------------

def _added_token(tid: int, content: str) -> dict:
    return {"id": tid, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def build_tokenizer_json(vocab: Dict[str, int], merges: Sequence[Tuple[str, str]],
                         special_tokens: Sequence[str], bos: str) -> dict:
    if bos not in vocab:
        raise ValueError("bos token not in vocab")
    bos_id = vocab[bos]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(vocab[t], t) for t in special_tokens],
        "normalizer": None,
        "pre_tokenizer": dict(byte_level),
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        },
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": [[a, b] for a, b in merges],
        },
    }


def write_tokenizer_files(out_dir: str, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]],
                          special_tokens: Sequence[str], bos: str, eos: str,
                          chat_template: Optional[str] = None, model_max_length: int = 256,
                          unk: Optional[str] = "<unk>") -> None:
    os.makedirs(out_dir, exist_ok=True)
    tj = build_tokenizer_json(vocab, merges, special_tokens, bos)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk if unk in vocab else None,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE,
        "added_tokens_decoder": {str(vocab[t]): {k: v for k, v in _added_token(vocab[t], t).items() if k != "id"}
                                 for t in special_tokens},
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# encoding / decoding
# ----------------------------------------------------------------------------------------------

def _split_on(text: str, specials: Sequence[str]) -> List[str]:
    """Split text around occurrences of special tokens (longest match first, left to right)."""
    if not specials:
        return [text]
    pat = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))
    out, pos = [], 0
    for m in pat.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        out.append(m.group(0))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


class BpeTokenizer:
    def __init__(self, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]],
                 special_tokens: Sequence[str], bos: Optional[str]):
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.special_tokens = list(special_tokens)
        self.special_ids = {self.vocab[t] for t in self.special_tokens}
        self.bos = bos
        self.bos_id = self.vocab[bos] if bos is not None else None
        self._cache: Dict[str, List[int]] = {}

    @classmethod
    def from_file(cls, tokenizer_json_path: str) -> "BpeTokenizer":
        with open(tokenizer_json_path, encoding="utf-8") as f:
            tj = json.load(f)
        model = tj["model"]
        assert model["type"] == "BPE"
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
        vocab = dict(model["vocab"])
        specials = []
        for at in tj.get("added_tokens", []):
            vocab[at["content"]] = at["id"]
            specials.append(at["content"])
        bos = None
        pp = tj.get("post_processor")
        if pp and pp.get("type") == "TemplateProcessing":
            first = pp["single"][0]
            if "SpecialToken" in first:
                bos = first["SpecialToken"]["id"]
        return cls(vocab, merges, specials, bos)

    def _bpe(self, piece: str) -> List[int]:
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        sym = list(to_byte_chars(piece))
        ranks = self.ranks
        while len(sym) > 1:
            best, best_i = None, -1
            for i in range(len(sym) - 1):
                r = ranks.get((sym[i], sym[i + 1]))
                if r is not None and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            a, b = sym[best_i], sym[best_i + 1]
            out, i = [], 0
            while i < len(sym):
                if i < len(sym) - 1 and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        ids = [self.vocab[s] for s in sym]
        if len(self._cache) < 100000:
            self._cache[piece] = ids
        return ids

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        ids: List[int] = [self.bos_id] if (add_bos and self.bos_id is not None) else []
        for part in _split_on(text, self.special_tokens):
            if part in self.vocab and part in self.special_tokens:
                ids.append(self.vocab[part])
                continue
            for piece in pretokenize(part):
                ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            tok = self.id_to_token[i]
            if i in self.special_ids:
                if skip_special_tokens:
                    continue
                out.extend(tok.encode("utf-8"))
            else:
                out.extend(BYTE_DECODER[c] for c in tok)
        return out.decode("utf-8", errors="replace")


def _main(argv: Sequence[str]) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--specials", default="<unk>,<s>,</s>")
    ap.add_argument("--bos", default="<s>")
    ap.add_argument("--eos", default="</s>")
    ap.add_argument("--model-max-length", type=int, default=4096)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    specials = args.specials.split(",")

    def texts():
        for p in args.files:
            with open(p, encoding="utf-8", errors="replace") as f:
                yield f.read()

    vocab, merges = train_bpe(texts(), args.vocab_size, specials, verbose=True)
    write_tokenizer_files(args.out, vocab, merges, specials, args.bos, args.eos,
                          model_max_length=args.model_max_length)
    print(f"wrote {args.out}: vocab {len(vocab)}, merges {len(merges)}")


if __name__ == "__main__":
    _main(sys.argv[1:])
