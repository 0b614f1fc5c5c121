#!/usr/bin/env python3
"""Prepare an English training corpus from text that Debian packages ship.

Sources (install with: apt-get install -y bible-kjv bible-kjv-text python3.11-doc fortunes):
  * King James Version of the Bible (package bible-kjv-text, dumped with the `bible`
    program from package bible-kjv). The KJV text is public domain (copyright expired);
    the Debian packaging is GPL-2+.
  * Python 3.11 documentation, reStructuredText sources
    (/usr/share/doc/python3.11/html/_sources, package python3.11-doc), PSF License v2.
    Markup, code blocks and doctest lines are stripped; prose is kept.
  * fortune cookie files (/usr/share/games/fortunes, package fortunes), BSD licence for
    the collection as packaged by Debian (see /usr/share/doc/fortunes/copyright).
    ascii-art / art files are skipped.

Documents are split deterministically into train / validation by a hash of the document
id (no randomness); validation is capped per source so validation.txt stays commit-sized.

Usage:
  /usr/bin/python3 models/tools/corpus.py --out models/.corpus --validation models/moe-tiny-en/validation.txt
Writes OUT/train.txt, OUT/validation.txt (same as --validation), OUT/sources.json.
Documents are separated by a blank line.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import subprocess

PY_DOC_DIR = "/usr/share/doc/python3.11/html/_sources"
FORTUNE_DIR = "/usr/share/games/fortunes"
FORTUNE_SKIP = {"art", "ascii-art", "translate-me"}

SOURCES = [
    {"name": "kjv", "package": "bible-kjv-text (+ bible-kjv for the `bible` reader)",
     "licence": "Public domain text (KJV); Debian packaging GPL-2+"},
    {"name": "python-docs", "package": "python3.11-doc (reST sources)",
     "licence": "PSF License Version 2 (Python documentation)"},
    {"name": "fortunes", "package": "fortunes",
     "licence": "BSD (as packaged by Debian, see /usr/share/doc/fortunes/copyright)"},
]
# validation budget per source, characters
VAL_BUDGET = {"kjv": 45000, "python-docs": 75000, "fortunes": 30000}
VAL_MOD = 40  # a document goes to validation when hash % VAL_MOD == 0 (until budget is used)


def norm_ws(s):
    s = s.replace("\r", "")
    s = re.sub(r"[ \t]+", " ", s)
    return s.strip()


def kjv_docs():
    out = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                         check=True).stdout
    docs = []
    cur_title, cur = None, []
    for line in out.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^(\S.*\S) (\d+)$", line)
        if m and not line.startswith(" "):
            if cur_title is not None:
                docs.append((cur_title, cur))
            cur_title, cur = line.strip(), []
            continue
        m = re.match(r"^\s*(\d+) (.*)$", line)
        if m:
            cur.append(m.group(2).strip())
        elif cur:
            cur[-1] += " " + line.strip()
    if cur_title is not None:
        docs.append((cur_title, cur))
    res = []
    for title, verses in docs:
        text = " ".join(verses)
        text = re.sub(r"\s+", " ", text).strip()
        res.append(("kjv/" + title, title + "\n\n" + text))
    return res


ROLE_RE = re.compile(r":[\w:+-]+:`([^`]*)`")
def _role(m):
    t = m.group(1)
    m2 = re.match(r"^(.*?)\s*<[^>]*>$", t, re.S)
    if m2 and m2.group(1):
        t = m2.group(1)
    t = t.lstrip("~!")
    return t


def inline(t):
    t = ROLE_RE.sub(_role, t)
    t = re.sub(r"``([^`]*)``", r"\1", t)
    t = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", t)
    t = re.sub(r"`([^`]*)`_*", r"\1", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"\1", t)
    t = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", t)
    t = t.replace("\\ ", "")
    return t


def clean_rst(src):
    lines = src.replace("\t", "    ").split("\n")
    out = []
    skip_indent = None  # skip block indented more than this
    pending_literal = False
    for raw in lines:
        line = raw.rstrip()
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if pending_literal:
            if not stripped:
                continue
            pending_literal = False
            if indent > last_indent:
                skip_indent = last_indent
                continue
        if not stripped:
            out.append("")
            continue
        if re.match(r"^([=\-~^\"'`#*+.:_])\1{3,}$", stripped):
            continue  # heading underline / overline
        if stripped.startswith(".. "):
            m = re.match(r"^\.\. (\w[\w:-]*)::\s*(.*)$", stripped)
            keep_body = m is not None and m.group(1) in (
                "note", "warning", "versionadded", "versionchanged", "deprecated",
                "seealso", "tip", "important", "impl-detail", "attention", "caution",
                "hint", "admonition", "function", "method", "class", "attribute", "data",
                "exception", "decorator", "describe", "classmethod", "staticmethod",
                "abstractmethod", "c:function", "c:macro", "c:type", "c:member", "c:var",
                "opcode", "cmdoption", "envvar", "option", "productionlist")
            if keep_body and m.group(1) not in ("productionlist",):
                # drop the directive line, keep its (dedented) body, drop option lines
                continue
            skip_indent = indent
            continue
        if re.match(r"^:[\w-]+:( |$)", stripped):
            continue  # field / option lines
        if stripped.startswith(">>>") or stripped.startswith("... ") or stripped == "...":
            continue
        if stripped.startswith("|") or stripped.startswith("+-") or stripped.startswith("+="):
            continue  # tables
        t = stripped
        if t.endswith("::"):
            pending_literal = True
            last_indent = indent
            t = t[:-2].rstrip()
            if t.endswith(":") is False and t:
                t = t + ":"
            if not t or t == ":":
                continue
        if re.match(r"^[*\-] ", t) or re.match(r"^\d+\. ", t) or re.match(r"^#\. ", t):
            out.append("")  # list items become their own paragraph
            t = re.sub(r"^(#\.|[*\-]) ", "", t)
        out.append(t)
    # join paragraph lines
    paras, cur = [], []
    for l in out:
        if l == "":
            if cur:
                paras.append(" ".join(cur))
                cur = []
        else:
            cur.append(l)
    if cur:
        paras.append(" ".join(cur))
    good = []
    for p in paras:
        p = re.sub(r"\s+", " ", p).strip()
        p = inline(p)
        if len(p) < 3:
            continue
        letters = sum(c.isalpha() or c == " " for c in p)
        if letters < 0.7 * len(p):
            continue  # mostly symbols: code remnants
        good.append(p)
    return "\n\n".join(good)


def python_docs():
    res = []
    for path in sorted(glob.glob(os.path.join(PY_DOC_DIR, "**", "*.txt"), recursive=True)):
        rel = os.path.relpath(path, PY_DOC_DIR)
        with open(path, encoding="utf-8", errors="replace") as f:
            text = clean_rst(f.read())
        if len(text) < 200:
            continue
        res.append(("python-docs/" + rel, text))
    return res


def fortune_docs():
    res = []
    for path in sorted(glob.glob(os.path.join(FORTUNE_DIR, "*"))):
        name = os.path.basename(path)
        if "." in name or name in FORTUNE_SKIP or os.path.islink(path) or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            items = f.read().split("\n%\n")
        for i, it in enumerate(items):
            it = it.strip("%\n ").replace("\t", "    ")
            it = "\n".join(l.rstrip() for l in it.split("\n"))
            if len(it) < 10:
                continue
            res.append((f"fortunes/{name}/{i}", it))
    return res


def h(s):
    return int(hashlib.sha1(s.encode()).hexdigest()[:12], 16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/.corpus")
    ap.add_argument("--validation", default="models/moe-tiny-en/validation.txt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    groups = {"kjv": kjv_docs(), "python-docs": python_docs(), "fortunes": fortune_docs()}
    train, val = [], []
    stats = {}
    for src, docs in groups.items():
        used = 0
        nval = 0
        for doc_id, text in docs:
            if h(doc_id) % VAL_MOD == 0 and used + len(text) <= VAL_BUDGET[src]:
                val.append((doc_id, text))
                used += len(text)
                nval += 1
            else:
                train.append((doc_id, text))
        stats[src] = {"documents": len(docs), "validationDocuments": nval,
                      "chars": sum(len(t) for _, t in docs), "validationChars": used}
    # deterministic interleaving: order by hash so sources are mixed in the stream
    train.sort(key=lambda d: h("order:" + d[0]))
    val.sort(key=lambda d: h("order:" + d[0]))
    train_text = "\n\n".join(t for _, t in train) + "\n"
    val_text = "\n\n".join(t for _, t in val) + "\n"
    with open(os.path.join(args.out, "train.txt"), "w", encoding="utf-8") as f:
        f.write(train_text)
    with open(os.path.join(args.out, "validation.txt"), "w", encoding="utf-8") as f:
        f.write(val_text)
    os.makedirs(os.path.dirname(os.path.abspath(args.validation)), exist_ok=True)
    with open(args.validation, "w", encoding="utf-8") as f:
        f.write(val_text)
    meta = {"sources": SOURCES, "stats": stats, "trainChars": len(train_text),
            "validationChars": len(val_text),
            "trainSha1": hashlib.sha1(train_text.encode()).hexdigest(),
            "validationSha1": hashlib.sha1(val_text.encode()).hexdigest(),
            "validationDocuments": [d for d, _ in val]}
    with open(os.path.join(args.out, "sources.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps({k: v for k, v in meta.items() if k != "validationDocuments"}, indent=1))


if __name__ == "__main__":
    main()
