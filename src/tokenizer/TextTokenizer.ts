/**
 * Text <-> token ids with the model's own Hugging Face tokenizer files (@huggingface/tokenizers),
 * and its chat template (@huggingface/jinja).
 */
import * as fs from "node:fs";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { MoeRunError, TokenizerMissingError } from "../errors.js";

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

export class TextTokenizer {
  private readonly tokenizer: Tokenizer;
  private readonly config: TokenizerConfig;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;

  private constructor(tokenizer: Tokenizer, config: TokenizerConfig) {
    this.tokenizer = tokenizer;
    this.config = config;
    this.bosToken = tokenText(config["bos_token"]);
    this.eosToken = tokenText(config["eos_token"]);
  }

  static load(jsonPath: string, configPath: string | null): TextTokenizer {
    if (!fs.existsSync(jsonPath)) throw new TokenizerMissingError(`tokenizer file ${jsonPath} is missing; re-import the model`);
    const json = JSON.parse(fs.readFileSync(jsonPath, "utf8")) as object;
    const config = configPath && fs.existsSync(configPath) ? (JSON.parse(fs.readFileSync(configPath, "utf8")) as TokenizerConfig) : {};
    return new TextTokenizer(new Tokenizer(json, config), config);
  }

  /** Token ids of `text`; special tokens (e.g. BOS) are added as the tokenizer's post-processor says. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
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
    return this.tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? true });
  }

  tokenId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
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
    return new Template(source).render({
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      bos_token: this.bosToken ?? "",
      eos_token: this.eosToken ?? "",
    });
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
