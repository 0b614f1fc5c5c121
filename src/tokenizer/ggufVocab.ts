/**
 * A GGUF file's tokenizer (the `tokenizer.ggml.*` and `tokenizer.chat_template` metadata) as the
 * two files a moe-run model directory holds: `tokenizer.json` in moe-run's own "gguf vocab"
 * format (read by LlamaCppTokenizer, which tokenizes as llama.cpp does), and an HF-style
 * `tokenizer_config.json` (bos/eos token text, chat template) for TextTokenizer's chat support.
 */
import { GgufMissingKeyError, UnsupportedConfigError } from "../errors.js";
import type { GgufFile } from "../formats/ggufReader.js";
import { GgufValueType } from "../formats/gguf.js";
import { SUPPORTED_PRE } from "./preTokenizers.js";

export const GGUF_VOCAB_FORMAT = "moe-run-gguf-vocab";

/** llama_token_type values of tokenizer.ggml.token_type. */
export const TOKEN_TYPE = { UNDEFINED: 0, NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface GgufVocabData {
  format: typeof GGUF_VOCAB_FORMAT;
  version: 1;
  /** tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE with scores). */
  model: "gpt2" | "llama";
  /** tokenizer.ggml.pre (BPE pre-tokenizer), "default" when absent. */
  pre: string;
  tokens: string[];
  /** Per token llama_token_type; null: all NORMAL. */
  tokenTypes: number[] | null;
  /** Per token scores (SPM merge priority); null: all 0. */
  scores: number[] | null;
  /** BPE merges "left right", in rank order (gpt2 only). */
  merges: string[] | null;
  bosId: number | null;
  eosId: number | null;
  unkId: number | null;
  /** End-of-generation tokens as llama.cpp collects them (eos, eot, eom and known texts). */
  eogIds: number[];
  addBos: boolean;
  addEos: boolean;
  /** SPM: prepend a space to the text (llama.cpp's add_space_prefix, default true). */
  addSpacePrefix: boolean;
}

/** Token texts llama.cpp treats as end of generation (and as control tokens) wherever they occur. */
const EOG_TEXTS = new Set([
  "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
  "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
  "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
]);


function uint(v: unknown): number | null {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 ? v : typeof v === "bigint" && v >= 0n ? Number(v) : null;
}

/** Reads and checks the tokenizer metadata of a GGUF file. */
export function vocabFromGguf(g: GgufFile): GgufVocabData {
  if (!g.metadata.has("tokenizer.ggml.model")) {
    throw new GgufMissingKeyError(`${g.path} lacks the metadata key "tokenizer.ggml.model" (it carries no tokenizer; moe-run needs one)`);
  }
  const model = g.string("tokenizer.ggml.model");
  if (model !== "gpt2" && model !== "llama") {
    throw new UnsupportedConfigError(`${g.path} has tokenizer.ggml.model "${model}"; moe-run imports the "gpt2" (byte-level BPE) and "llama" (SentencePiece) tokenizers`);
  }
  const tokens = g.array("tokenizer.ggml.tokens", [GgufValueType.STRING]) as string[] | undefined;
  if (!tokens) throw new GgufMissingKeyError(`${g.path} lacks the metadata key "tokenizer.ggml.tokens"`);
  if (tokens.length === 0) throw new GgufMissingKeyError(`${g.path}: tokenizer.ggml.tokens is empty`);
  const n = tokens.length;
  // llama.cpp renames empty tokens so that every text maps to one id.
  const fixedTokens = tokens.map((t, i) => (t === "" ? `[EMPTY_${i}]` : t));
  const scoresRaw = g.array("tokenizer.ggml.scores", [GgufValueType.FLOAT32, GgufValueType.INT32]) as number[] | undefined;
  if (scoresRaw && scoresRaw.length < n) throw new GgufMissingKeyError(`${g.path}: tokenizer.ggml.scores has ${scoresRaw.length} entries for ${n} tokens`);
  const typesRaw = g.array("tokenizer.ggml.token_type", [GgufValueType.INT32]) as number[] | undefined;
  if (typesRaw && typesRaw.length < n) throw new GgufMissingKeyError(`${g.path}: tokenizer.ggml.token_type has ${typesRaw.length} entries for ${n} tokens`);
  let merges: string[] | null = null;
  let pre = "default";
  if (model === "gpt2") {
    const m = g.array("tokenizer.ggml.merges", [GgufValueType.STRING]) as string[] | undefined;
    if (!m) throw new GgufMissingKeyError(`${g.path} lacks the metadata key "tokenizer.ggml.merges" (a "gpt2" tokenizer needs its merges)`);
    merges = m;
    if (g.metadata.has("tokenizer.ggml.pre")) pre = g.string("tokenizer.ggml.pre");
    if (!SUPPORTED_PRE.includes(pre)) {
      throw new UnsupportedConfigError(`${g.path} has the BPE pre-tokenizer "${pre}", which moe-run does not reproduce yet; supported: ${SUPPORTED_PRE.join(", ")}`);
    }
  } else if (!scoresRaw) {
    throw new GgufMissingKeyError(`${g.path} lacks the metadata key "tokenizer.ggml.scores" (a "llama" tokenizer needs its scores)`);
  }
  const types = typesRaw ? typesRaw.slice(0, n) : null;

  // Defaults as llama.cpp's vocabulary loader sets them per model.
  const defaults = model === "llama" ? { bos: 1, eos: 2, unk: 0 } : { bos: 11, eos: 11, unk: null as number | null };
  const special = (key: string, fallback: number | null): number | null => {
    const fb = fallback !== null && fallback < n ? fallback : null;
    if (!g.metadata.has(key)) return fb;
    const v = uint(g.value(key));
    return v !== null && v < n ? v : fb;
  };
  const bosId = special("tokenizer.ggml.bos_token_id", defaults.bos);
  const eosId = special("tokenizer.ggml.eos_token_id", defaults.eos);
  const unkId = special("tokenizer.ggml.unknown_token_id", defaults.unk);
  const eotId = special("tokenizer.ggml.eot_token_id", null);
  const eomId = special("tokenizer.ggml.eom_token_id", null);
  const flag = (key: string, fallback: boolean): boolean => {
    const v = g.metadata.get(key);
    return v && v.type === GgufValueType.BOOL ? (v.value as boolean) : fallback;
  };
  let addBos = flag("tokenizer.ggml.add_bos_token", model === "llama" || ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"].includes(pre));
  const addEos = flag("tokenizer.ggml.add_eos_token", false);
  const addSpacePrefix = flag("tokenizer.ggml.add_space_prefix", model === "llama");
  if (addBos && bosId === null) addBos = false;

  const eog = new Set<number>();
  const anyEogText = fixedTokens.some((t) => EOG_TEXTS.has(t));
  const typesOut = types ? [...types] : anyEogText ? new Array<number>(n).fill(TOKEN_TYPE.NORMAL) : null;
  fixedTokens.forEach((t, id) => {
    if (EOG_TEXTS.has(t)) {
      eog.add(id);
      // llama.cpp marks such tokens control even when the file does not.
      if (typesOut) typesOut[id] = TOKEN_TYPE.CONTROL;
    }
  });
  for (const id of [eosId, eotId, eomId]) if (id !== null) eog.add(id);
  // A vocabulary with <|return|> and <|call|> (gpt-oss) ends a message, not generation, with <|end|>.
  const idOf = (text: string) => fixedTokens.indexOf(text);
  if (idOf("<|end|>") >= 0 && ((idOf("<|return|>") >= 0 && idOf("<|call|>") >= 0) || (idOf("<|calls|>") >= 0 && idOf("<|flush|>") >= 0))) {
    eog.delete(idOf("<|end|>"));
    if (typesOut) typesOut[idOf("<|end|>")] = TOKEN_TYPE.USER_DEFINED;
  }

  return {
    format: GGUF_VOCAB_FORMAT,
    version: 1,
    model,
    pre,
    tokens: fixedTokens,
    tokenTypes: typesOut,
    scores: scoresRaw ? scoresRaw.slice(0, n).map(Number) : null,
    merges,
    bosId,
    eosId,
    unkId,
    eogIds: [...eog].sort((a, b) => a - b),
    addBos,
    addEos,
    addSpacePrefix,
  };
}

/** HF-style tokenizer_config.json for TextTokenizer: special token texts and the chat template. */
export function tokenizerConfigFromGguf(g: GgufFile, v: GgufVocabData): Record<string, unknown> {
  const config: Record<string, unknown> = {
    tokenizer_class: "GgufVocab",
    add_bos_token: v.addBos,
    add_eos_token: v.addEos,
    bos_token: v.bosId !== null ? v.tokens[v.bosId] : null,
    eos_token: v.eosId !== null ? v.tokens[v.eosId] : null,
    unk_token: v.unkId !== null ? v.tokens[v.unkId] : null,
  };
  const t = g.metadata.get("tokenizer.chat_template");
  if (t && t.type === GgufValueType.STRING) config["chat_template"] = t.value;
  return config;
}
