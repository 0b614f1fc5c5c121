/**
 * Tokenization as llama.cpp does it (src/llama-vocab.cpp) for the two vocabularies GGUF files of
 * MoE models carry, written from its behaviour:
 *
 * - Special tokens first: the text is cut at every occurrence of a control, user-defined or
 *   unknown token's text (longest tokens first); control and unknown ones only when parsing
 *   specials (user-defined always).
 * - "llama" (SentencePiece): spaces become U+2581, a space is prepended to a text piece at the start
 *   or after a special token (add_space_prefix), then adjacent symbols (UTF-8 characters) are merged
 *   by the highest score of the token they form (ties: leftmost); characters that are no token are
 *   emitted as <0xXX> byte tokens.
 * - "gpt2" (byte-level BPE): the pre-tokenizer's regexes split the text into words, each word's UTF-8
 *   bytes are mapped to GPT-2's printable byte characters, and adjacent symbols are merged by the
 *   lowest merge rank (ties: leftmost).
 *
 * Decoding concatenates llama.cpp's token pieces (control tokens only when asked for), dropping the
 * leading space of the first piece when a space prefix is added (llama_detokenize without its
 * clean-up of spaces before punctuation, so text streams as it is decoded).
 */
import { MoeRunError } from "../errors.js";
import { TOKEN_TYPE, type GgufVocabData } from "./ggufVocab.js";
import { preTokenizer, type CompiledPreTokenizer } from "./preTokenizers.js";

/** GPT-2's map of the 256 byte values to printable characters, and back. */
const BYTE_TO_CHAR: string[] = [];
const CHAR_TO_BYTE = new Map<string, number>();
{
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const ch = String.fromCodePoint(printable ? b : 256 + extra++);
    BYTE_TO_CHAR[b] = ch;
    CHAR_TO_BYTE.set(ch, b);
  }
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: false });

/** A min-heap ordered by a comparison function. */
class Heap<T> {
  private items: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}
  get size(): number {
    return this.items.length;
  }
  push(x: T): void {
    const a = this.items;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): T {
    const a = this.items;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

interface Sym {
  text: string;
  prev: number;
  next: number;
}

interface Bigram {
  left: number;
  right: number;
  text: string;
  /** SPM: the score of the token (higher first); BPE: the merge rank (lower first). */
  key: number;
}

type Fragment = string | number;

export class LlamaCppTokenizer {
  readonly vocab: GgufVocabData;
  private readonly ids = new Map<string, number>();
  private readonly types: Uint8Array;
  private readonly ranks = new Map<string, number>();
  private readonly pre: CompiledPreTokenizer | undefined;
  /** Control, user-defined and unknown tokens, longest text first (llama.cpp's special cache). */
  private readonly specials: number[];

  constructor(vocab: GgufVocabData) {
    this.vocab = vocab;
    const n = vocab.tokens.length;
    this.types = new Uint8Array(n).fill(TOKEN_TYPE.NORMAL);
    if (vocab.tokenTypes) for (let i = 0; i < n; i++) this.types[i] = vocab.tokenTypes[i]! & 0xff;
    vocab.tokens.forEach((t, i) => this.ids.set(t, i)); // a repeated text maps to its last id, as in llama.cpp
    if (vocab.model === "gpt2") {
      (vocab.merges ?? []).forEach((m, rank) => {
        const at = m.indexOf(" ", 1);
        const key = at < 0 ? "\u0000" : `${m.slice(0, at)}\u0000${m.slice(at + 1)}`;
        if (!this.ranks.has(key)) this.ranks.set(key, rank);
      });
      this.pre = preTokenizer(vocab.pre);
      if (!this.pre) throw new MoeRunError("MODEL_DIR_INVALID", `the tokenizer's pre-tokenizer "${vocab.pre}" is not known to this moe-run; re-import the model`);
    }
    const special: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = this.types[i]!;
      if (t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.USER_DEFINED || t === TOKEN_TYPE.UNKNOWN) special.push(i);
    }
    this.specials = special.sort((a, b) => vocab.tokens[b]!.length - vocab.tokens[a]!.length || a - b);
  }

  /** From a model directory's tokenizer.json in the gguf-vocab format (checked, not trusted). */
  static fromJson(json: unknown): LlamaCppTokenizer {
    const v = json as Partial<GgufVocabData>;
    const ids = (x: unknown) => x === null || (typeof x === "number" && Number.isInteger(x) && x >= 0);
    const nums = (x: unknown) => x === null || (Array.isArray(x) && x.every((e) => typeof e === "number"));
    const ok =
      v.version === 1 &&
      (v.model === "gpt2" || v.model === "llama") &&
      typeof v.pre === "string" &&
      Array.isArray(v.tokens) &&
      v.tokens.length > 0 &&
      v.tokens.every((t) => typeof t === "string") &&
      nums(v.tokenTypes) &&
      nums(v.scores) &&
      (v.merges === null || (Array.isArray(v.merges) && v.merges.every((m) => typeof m === "string"))) &&
      ids(v.bosId) &&
      ids(v.eosId) &&
      ids(v.unkId) &&
      Array.isArray(v.eogIds) &&
      typeof v.addBos === "boolean" &&
      typeof v.addEos === "boolean" &&
      typeof v.addSpacePrefix === "boolean";
    if (!ok) throw new Error("not a valid moe-run gguf vocabulary (version 1)");
    return new LlamaCppTokenizer(v as GgufVocabData);
  }

  get size(): number {
    return this.vocab.tokens.length;
  }

  tokenId(text: string): number | undefined {
    return this.ids.get(text);
  }

  isControl(id: number): boolean {
    const t = this.types[id];
    return t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.UNKNOWN;
  }

  /**
   * Token ids of `text` (llama_tokenize): BOS/EOS added as the vocabulary says when `addSpecial`;
   * special tokens' texts become those tokens when `parseSpecial` (user-defined tokens always).
   */
  encode(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean } = {}): number[] {
    const addSpecial = options.addSpecial ?? true;
    const parseSpecial = options.parseSpecial ?? true;
    const v = this.vocab;
    const out: number[] = [];
    const fragments = text === "" ? [] : this.partition(text, parseSpecial);
    if (addSpecial && v.addBos && v.bosId !== null) out.push(v.bosId);
    if (v.model === "llama") {
      let prevSpecial = true;
      for (const f of fragments) {
        if (typeof f === "number") {
          out.push(f);
          prevSpecial = true;
          continue;
        }
        const t = (v.addSpacePrefix && prevSpecial ? " " : "") + f;
        this.spm(t.replaceAll(" ", "\u2581"), out);
        prevSpecial = false;
      }
    } else {
      for (const f of fragments) {
        if (typeof f === "number") out.push(f);
        else for (const word of this.pre!.split(f)) this.bpe(word, out);
      }
    }
    if (addSpecial && v.addEos && v.eosId !== null) out.push(v.eosId);
    return out;
  }

  /** Cuts the text at special tokens (tokenizer_st_partition). */
  private partition(text: string, parseSpecial: boolean): Fragment[] {
    let frags: Fragment[] = [text];
    for (const id of this.specials) {
      const t = this.types[id]!;
      if (!parseSpecial && (t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.UNKNOWN)) continue;
      const s = this.vocab.tokens[id]!;
      if (s === "") continue;
      const next: Fragment[] = [];
      for (const f of frags) {
        if (typeof f === "number" || !f.includes(s)) {
          next.push(f);
          continue;
        }
        let from = 0;
        for (let at = f.indexOf(s, from); at >= 0; at = f.indexOf(s, from)) {
          if (at > from) next.push(f.slice(from, at));
          next.push(id);
          from = at + s.length;
        }
        if (from < f.length) next.push(f.slice(from));
      }
      frags = next;
    }
    return frags;
  }

  /** SentencePiece-style merging by token score (llm_tokenizer_spm). */
  private spm(text: string, out: number[]): void {
    const chars = Array.from(text);
    if (chars.length === 0) return;
    const syms: Sym[] = chars.map((c, i) => ({ text: c, prev: i - 1, next: i + 1 < chars.length ? i + 1 : -1 }));
    const scores = this.vocab.scores;
    // Highest score first; equal scores: leftmost first.
    const heap = new Heap<Bigram>((a, b) => a.key > b.key || (a.key === b.key && a.left < b.left));
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const t = syms[left]!.text + syms[right]!.text;
      const id = this.ids.get(t);
      if (id === undefined) return;
      heap.push({ left, right, text: t, key: scores ? scores[id]! : 0 });
    };
    for (let i = 1; i < syms.length; i++) tryAdd(i - 1, i);
    while (heap.size > 0) {
      const b = heap.pop();
      const l = syms[b.left]!;
      const r = syms[b.right]!;
      if (l.text === "" || r.text === "" || l.text + r.text !== b.text) continue;
      l.text = b.text;
      r.text = "";
      l.next = r.next;
      if (r.next >= 0) syms[r.next]!.prev = b.left;
      tryAdd(l.prev, b.left);
      tryAdd(b.left, l.next);
    }
    for (let i = 0; i !== -1; i = syms[i]!.next) {
      const s = syms[i]!.text;
      const id = this.ids.get(s);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const byte of utf8.encode(s)) {
        const hex = `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`;
        const bid = this.ids.get(hex) ?? this.ids.get(String.fromCharCode(byte));
        if (bid !== undefined) out.push(bid);
        else if (this.vocab.unkId !== null) out.push(this.vocab.unkId);
      }
    }
  }

  /** Byte-level BPE of one word (llm_tokenizer_bpe_session). */
  private bpe(word: string, out: number[]): void {
    let encoded = "";
    for (const byte of utf8.encode(word)) encoded += BYTE_TO_CHAR[byte]!;
    if (this.pre!.ignoreMerges) {
      const id = this.ids.get(encoded);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    const chars = Array.from(encoded);
    const syms: Sym[] = chars.map((c, i) => ({ text: c, prev: i - 1, next: i + 1 < chars.length ? i + 1 : -1 }));
    // Lowest rank first; equal ranks: leftmost first.
    const heap = new Heap<Bigram>((a, b) => a.key < b.key || (a.key === b.key && a.left < b.left));
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const rank = this.ranks.get(`${syms[left]!.text}\u0000${syms[right]!.text}`);
      if (rank === undefined) return;
      heap.push({ left, right, text: syms[left]!.text + syms[right]!.text, key: rank });
    };
    for (let i = 1; i < syms.length; i++) tryAdd(i - 1, i);
    while (heap.size > 0) {
      const b = heap.pop();
      const l = syms[b.left]!;
      const r = syms[b.right]!;
      if (l.text === "" || r.text === "" || l.text + r.text !== b.text) continue;
      l.text = b.text;
      r.text = "";
      l.next = r.next;
      if (r.next >= 0) syms[r.next]!.prev = b.left;
      tryAdd(l.prev, b.left);
      tryAdd(b.left, l.next);
    }
    for (const s of syms) {
      if (s.text === "") continue;
      const id = this.ids.get(s.text);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      // Not a token (a vocabulary without every byte): llama.cpp looks up each UTF-8 byte of the
      // symbol as a one-byte text, dropping those that are not tokens.
      for (const byte of utf8.encode(s.text)) {
        const bid = this.ids.get(String.fromCharCode(byte));
        if (bid !== undefined && byte < 0x80) out.push(bid);
      }
    }
  }

  /** The bytes one token stands for (llama_token_to_piece); control tokens give none unless `special`. */
  pieceBytes(id: number, special: boolean): Uint8Array {
    const text = this.vocab.tokens[id];
    if (text === undefined) return new Uint8Array(0);
    const t = this.types[id]!;
    if (t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.UNKNOWN) return special ? utf8.encode(text) : new Uint8Array(0);
    if (t === TOKEN_TYPE.USER_DEFINED) return utf8.encode(text);
    if (t === TOKEN_TYPE.BYTE) {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
      return m ? Uint8Array.of(parseInt(m[1]!, 16)) : new Uint8Array(0);
    }
    if (t !== TOKEN_TYPE.NORMAL) return new Uint8Array(0); // unused and undefined tokens print nothing
    if (this.vocab.model === "llama") return utf8.encode(text.replaceAll("\u2581", " "));
    const bytes: number[] = [];
    for (const ch of text) {
      const b = CHAR_TO_BYTE.get(ch);
      if (b !== undefined) bytes.push(b);
      else bytes.push(...utf8.encode(`[UNK_BYTE_${ch}]`));
    }
    return Uint8Array.from(bytes);
  }

  /**
   * Text of token ids: their pieces concatenated, control tokens included only when `special`;
   * with a space prefix (SPM), the first piece's leading space is dropped.
   */
  decode(ids: readonly number[], options: { special?: boolean } = {}): string {
    const parts: Uint8Array[] = [];
    let total = 0;
    let removeSpace = this.vocab.addSpacePrefix;
    for (const id of ids) {
      let p = this.pieceBytes(id, options.special ?? false);
      if (removeSpace && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
      removeSpace = false;
      parts.push(p);
      total += p.length;
    }
    const all = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.length;
    }
    return utf8Decoder.decode(all);
  }
}
