/**
 * The BPE pre-tokenizers of llama.cpp (src/llama-vocab.cpp, per `tokenizer.ggml.pre`): the regular
 * expressions that split text into words before merges, applied one after another (each splits the
 * pieces the previous one made; text between matches stays a piece of its own). They are written
 * here as JavaScript regular expressions with llama.cpp's whitespace set (its \s), and for the
 * expressions llama.cpp rewrites (case-insensitive contractions, the lookahead forms of the gpt-4o
 * and tekken patterns) in llama.cpp's form, so words split as llama.cpp splits them.
 */

/** llama.cpp's whitespace code points (unicode_set_whitespace). */
const WS = String.raw`\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000`;

/** Compiles a pattern written with \s and \S, giving them llama.cpp's whitespace set. */
function rx(pattern: string): RegExp {
  let out = "";
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "\\" && i + 1 < pattern.length) {
      const n = pattern[i + 1]!;
      if (n === "s") out += inClass ? WS : `[${WS}]`;
      else if (n === "S") {
        if (inClass) throw new Error("\\S inside a class is not used by any pre-tokenizer");
        out += `[^${WS}]`;
      } else out += c + n;
      i++;
      continue;
    }
    if (c === "[" && !inClass) inClass = true;
    else if (c === "]" && inClass) inClass = false;
    out += c;
  }
  return new RegExp(out, "gu");
}

const CONTRACTIONS = String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])`;
/** GPT-2's pattern; llama.cpp's own implementation of it also splits off any leftover whitespace. */
const GPT2 = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
const LLAMA3 = CONTRACTIONS + String.raw`|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN2 = CONTRACTIONS + String.raw`|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN35 = CONTRACTIONS + String.raw`|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
// Upper-then-lower case runs, as llama.cpp matches them: any letter that is not ASCII a-z counts as
// upper case, any that is not A-Z as lower case.
const UPPER = String.raw`((?=[\p{L}])([^a-z]))`;
const LOWER = String.raw`((?=[\p{L}])([^A-Z]))`;
const GPT4O =
  String.raw`[^\r\n\p{L}\p{N}]?${UPPER}*${LOWER}+${CONTRACTIONS}?|[^\r\n\p{L}\p{N}]?${UPPER}+${LOWER}*${CONTRACTIONS}?` +
  String.raw`|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const TEKKEN = String.raw`[^\r\n\p{L}\p{N}]?${UPPER}*${LOWER}+|[^\r\n\p{L}\p{N}]?${UPPER}+${LOWER}*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const DEEPSEEK3 = [
  String.raw`\p{N}{1,3}`,
  "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
  String.raw`[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_${"`"}{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
];

interface PreTokenizer {
  patterns: string[];
  /** A word that is itself a token is not merged (llama.cpp's ignore_merges). */
  ignoreMerges: boolean;
}

const groups: [names: string[], pre: PreTokenizer][] = [
  [["default"], { patterns: [String.raw`[\p{P}\$\+<=>\^~\|]+`, GPT2, String.raw`\p{N}+`, "[0-9][0-9][0-9]"], ignoreMerges: false }],
  [
    ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe"],
    { patterns: [GPT2], ignoreMerges: false },
  ],
  [["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"], { patterns: [LLAMA3], ignoreMerges: true }],
  [["dbrx", "smaug-bpe", "glm4", "chatglm-bpe"], { patterns: [LLAMA3], ignoreMerges: false }],
  [["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open"], { patterns: [QWEN2], ignoreMerges: false }],
  [["qwen35"], { patterns: [QWEN35], ignoreMerges: false }],
  [["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"], { patterns: [String.raw`\p{N}`, GPT2], ignoreMerges: false }],
  [["falcon"], { patterns: [String.raw`[\p{P}\$\+<=>\^~\|${"`"}]+`, GPT2, "[0-9][0-9][0-9]"], ignoreMerges: false }],
  [["deepseek-v3", "hunyuan-dense", "joyai-llm"], { patterns: DEEPSEEK3, ignoreMerges: false }],
  [["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], { patterns: [GPT4O], ignoreMerges: false }],
  [["tekken"], { patterns: [TEKKEN], ignoreMerges: true }],
  [["seed-coder"], { patterns: [CONTRACTIONS + String.raw`|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+`], ignoreMerges: false }],
  [["grok-2"], { patterns: [QWEN2], ignoreMerges: false }],
  [
    ["bailingmoe", "bailingmoe2", "llada-moe"],
    { patterns: [String.raw`'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+`], ignoreMerges: false },
  ],
];

const BY_NAME = new Map<string, PreTokenizer>();
for (const [names, pre] of groups) for (const n of names) BY_NAME.set(n, pre);

/** The tokenizer.ggml.pre values moe-run reproduces. */
export const SUPPORTED_PRE: readonly string[] = [...BY_NAME.keys()];

export interface CompiledPreTokenizer {
  split(text: string): string[];
  ignoreMerges: boolean;
}

const compiled = new Map<string, CompiledPreTokenizer>();

/** The pre-tokenizer named `pre`, or undefined when moe-run does not know it. */
export function preTokenizer(pre: string): CompiledPreTokenizer | undefined {
  const hit = compiled.get(pre);
  if (hit) return hit;
  const spec = BY_NAME.get(pre);
  if (!spec) return undefined;
  const regexes = spec.patterns.map(rx);
  const c: CompiledPreTokenizer = {
    ignoreMerges: spec.ignoreMerges,
    split(text: string): string[] {
      let pieces = [text];
      for (const re of regexes) {
        const next: string[] = [];
        for (const piece of pieces) {
          let last = 0;
          re.lastIndex = 0;
          for (let m = re.exec(piece); m; m = re.exec(piece)) {
            if (m[0].length === 0) {
              re.lastIndex++;
              continue;
            }
            if (m.index > last) next.push(piece.slice(last, m.index));
            next.push(m[0]);
            last = m.index + m[0].length;
          }
          if (last < piece.length) next.push(piece.slice(last));
        }
        pieces = next;
      }
      return pieces;
    },
  };
  compiled.set(pre, c);
  return c;
}
