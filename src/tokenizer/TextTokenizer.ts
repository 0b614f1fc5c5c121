/**
 * Text <-> token ids with the model's own Hugging Face tokenizer files (@huggingface/tokenizers),
 * and its chat template (@huggingface/jinja).
 */
import * as fs from "node:fs";
import { Environment, Interpreter, Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { MoeRunError, TokenizerMissingError } from "../errors.js";
import { GGUF_VOCAB_FORMAT } from "./ggufVocab.js";
import { LlamaCppTokenizer } from "./LlamaCppTokenizer.js";

/**
 * Bounds on rendering a chat template, which is code that comes with the model: a template
 * that loops for ever or builds a huge string is stopped with a clear error, quickly enough that
 * Ctrl-C is not held up for long.
 */
export const CHAT_TEMPLATE_LIMITS = {
  /** Wall time of one render, ms. Real templates take well under 10 ms. */
  timeMs: 2000,
  /** Longest rendered text: this many characters plus 4x the messages' content. */
  baseChars: 1 << 20,
  /** Longest range() and longest list a template may build. */
  maxItems: 100_000,
};

interface RenderBudget {
  deadline: number;
  maxChars: number;
}

class ChatTemplateLimit extends Error {}

/** The render in progress on this thread (renders are synchronous, so one at a time). */
let budget: RenderBudget | undefined;

// @huggingface/jinja has no limits of its own: every node the interpreter evaluates goes through
// evaluate(), so time and sizes are checked there while a bounded render is in progress.
{
  type Value = { type?: string; value?: unknown } | undefined;
  const proto = Interpreter.prototype as unknown as { evaluate: (this: unknown, node: unknown, env: unknown) => Value };
  const evaluate = proto.evaluate;
  proto.evaluate = function (this: unknown, node: unknown, env: unknown): Value {
    const b = budget;
    if (b !== undefined && performance.now() > b.deadline) {
      throw new ChatTemplateLimit(`it ran for over ${CHAT_TEMPLATE_LIMITS.timeMs / 1000} s`);
    }
    const v = evaluate.call(this, node, env);
    if (b !== undefined && v !== undefined) {
      const x = v.value;
      if (typeof x === "string" && x.length > b.maxChars) throw new ChatTemplateLimit(`its output grew past ${b.maxChars} characters`);
      if (Array.isArray(x) && x.length > CHAT_TEMPLATE_LIMITS.maxItems) throw new ChatTemplateLimit(`it built a list of over ${CHAT_TEMPLATE_LIMITS.maxItems} items`);
    }
    return v;
  };
  // Its range() builds the whole list first (range(10**8): gigabytes before the loop starts):
  // while a bounded render is in progress, the global range is one that refuses long ranges.
  const envProto = Environment.prototype as unknown as { set: (this: unknown, name: string, value: unknown) => unknown };
  const set = envProto.set;
  envProto.set = function (this: unknown, name: string, value: unknown): unknown {
    return set.call(this, name, budget !== undefined && name === "range" ? boundedRange : value);
  };
}

/** Jinja's range(), refusing ranges longer than the limit before building them. */
function boundedRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) {
    stop = start;
    start = 0;
  }
  if (![start, stop, step].every((n) => typeof n === "number" && Number.isFinite(n))) throw new Error("range() takes numbers");
  if (step === 0) throw new Error("range() step must not be zero");
  const count = Math.max(0, Math.ceil((stop - start) / step));
  if (count > CHAT_TEMPLATE_LIMITS.maxItems) throw new ChatTemplateLimit(`it asked for range() of ${count} numbers (at most ${CHAT_TEMPLATE_LIMITS.maxItems})`);
  return Array.from({ length: count }, (_, i) => start + i * step);
}

function templateError(err: unknown): MoeRunError {
  if (err instanceof MoeRunError) return err;
  const what = err instanceof ChatTemplateLimit ? `was stopped: ${err.message}` : `failed: ${firstLine(err)}`;
  return new MoeRunError("CHAT_TEMPLATE_FAILED", `the model's chat template (tokenizer_config.json) ${what}; fix the template, or run without --chat`, { cause: err });
}

function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const line = text.split("\n").map((l) => l.trim()).find((l) => l !== "") ?? "unknown error";
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}

type TokenizerConfig = Record<string, unknown>;

function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return undefined;
}

/**
 * What TextTokenizer needs of a tokenizer: a Hugging Face tokenizer.json (@huggingface/tokenizers),
 * or a vocabulary imported from GGUF (LlamaCppTokenizer, which tokenizes as llama.cpp does).
 */
interface TokenizerCore {
  encode(text: string, addSpecialTokens: boolean): number[];
  decode(ids: number[], skipSpecialTokens: boolean): string;
  tokenId(token: string): number | undefined;
}

function huggingFaceCore(t: Tokenizer): TokenizerCore {
  return {
    encode: (text, add) => t.encode(text, { add_special_tokens: add }).ids,
    decode: (ids, skip) => t.decode(ids, { skip_special_tokens: skip }),
    tokenId: (token) => t.token_to_id(token),
  };
}

function llamaCppCore(t: LlamaCppTokenizer): TokenizerCore {
  return {
    encode: (text, add) => t.encode(text, { addSpecial: add, parseSpecial: true }),
    decode: (ids, skip) => t.decode(ids, { special: !skip }),
    tokenId: (token) => t.tokenId(token),
  };
}

export class TextTokenizer {
  private readonly tokenizer: TokenizerCore;
  private readonly config: TokenizerConfig;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;

  private constructor(tokenizer: TokenizerCore, config: TokenizerConfig) {
    this.tokenizer = tokenizer;
    this.config = config;
    this.bosToken = tokenText(config["bos_token"]);
    this.eosToken = tokenText(config["eos_token"]);
  }

  static load(jsonPath: string, configPath: string | null): TextTokenizer {
    if (!fs.existsSync(jsonPath)) throw new TokenizerMissingError(`tokenizer file ${jsonPath} is missing; re-import the model`);
    const readJson = (p: string): unknown => {
      try {
        return JSON.parse(fs.readFileSync(p, "utf8"));
      } catch (cause) {
        throw new MoeRunError("MODEL_DIR_INVALID", `${p} is not valid JSON (${firstLine(cause)}); re-import the model`, { cause });
      }
    };
    const json = readJson(jsonPath);
    if (json === null || typeof json !== "object") throw new MoeRunError("MODEL_DIR_INVALID", `${jsonPath} is not a tokenizer; re-import the model`);
    const rawConfig = configPath && fs.existsSync(configPath) ? readJson(configPath) : {};
    const config = (rawConfig !== null && typeof rawConfig === "object" ? rawConfig : {}) as TokenizerConfig;
    let tokenizer: TokenizerCore;
    try {
      tokenizer =
        (json as { format?: unknown }).format === GGUF_VOCAB_FORMAT ? llamaCppCore(LlamaCppTokenizer.fromJson(json)) : huggingFaceCore(new Tokenizer(json, config));
    } catch (cause) {
      throw new MoeRunError("MODEL_DIR_INVALID", `${jsonPath} cannot be read as a tokenizer (${firstLine(cause)}); re-import the model`, { cause });
    }
    return new TextTokenizer(tokenizer, config);
  }

  /** Token ids of `text`; special tokens (e.g. BOS) are added as the tokenizer's post-processor says. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, options.addSpecialTokens ?? true);
  }

  /**
   * Token ids of a prompt: plain text as the tokenizer's post-processor says (e.g. with BOS), or,
   * for messages or `chat`, the chat template's rendering (which carries its own specials).
   */
  encodePrompt(prompt: string | readonly ChatMessage[], chat = false): number[] {
    if (typeof prompt !== "string" || chat) {
      const messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
      return this.encode(this.applyChatTemplate(messages), { addSpecialTokens: false });
    }
    return this.encode(prompt);
  }

  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    return this.tokenizer.decode([...ids], options.skipSpecialTokens ?? true);
  }

  tokenId(token: string): number | undefined {
    return this.tokenizer.tokenId(token);
  }

  get hasChatTemplate(): boolean {
    return this.chatTemplateSource() !== undefined;
  }

  /** Renders messages with the model's chat template (the prompt text, specials included). */
  applyChatTemplate(messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    const source = this.chatTemplateSource();
    if (source === undefined) {
      throw new MoeRunError("INVALID_OPTION", "this model's tokenizer_config.json has no chat_template; run without --chat");
    }
    let contentChars = 0;
    for (const m of messages) contentChars += typeof m.content === "string" ? m.content.length : 0;
    const outer = budget;
    budget = { deadline: performance.now() + CHAT_TEMPLATE_LIMITS.timeMs, maxChars: CHAT_TEMPLATE_LIMITS.baseChars + 4 * contentChars };
    try {
      return new Template(source).render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
        bos_token: this.bosToken ?? "",
        eos_token: this.eosToken ?? "",
      });
    } catch (err) {
      throw templateError(err);
    } finally {
      budget = outer;
    }
  }

  private chatTemplateSource(): string | undefined {
    const t = this.config["chat_template"];
    if (typeof t === "string") return t;
    if (Array.isArray(t)) {
      const def = t.find((x: { name?: string }) => x.name === "default") ?? t[0];
      return typeof def?.template === "string" ? def.template : undefined;
    }
    return undefined;
  }
}
