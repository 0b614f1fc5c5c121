/**
 * The bodies of POST /v1/chat/completions and /v1/completions, checked field by field: a field of
 * the wrong type or out of range is a 400 naming it, and so is a feature moe-run does not offer
 * (n > 1, tools, logprobs, penalties). Fields it does not know are ignored, as most
 * OpenAI-compatible servers do, so that clients sending newer fields keep working.
 */
import type { ChatMessage } from "../tokenizer/TextTokenizer.js";
import { badField, HttpError } from "./HttpError.js";

export interface CompletionRequest {
  kind: "chat" | "text";
  /** chat: the messages; text: undefined. */
  messages?: ChatMessage[];
  /** text: the prompt, as text or token ids. */
  prompt?: string | number[];
  model?: string;
  /** Undefined: the chat default (up to the context) or 16 for completions, as OpenAI's. */
  maxTokens?: number;
  temperature: number;
  topP: number;
  topK: number;
  seed?: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
}

type Body = Record<string, unknown>;

const ROLES = new Set(["system", "developer", "user", "assistant"]);

export function parseChatRequest(body: unknown): CompletionRequest {
  const b = object(body);
  const raw = b["messages"];
  if (raw === undefined) throw badField("messages", "messages is required: an array of {role, content}");
  if (!Array.isArray(raw) || raw.length === 0) throw badField("messages", "messages must be a non-empty array of {role, content}");
  const messages = raw.map((m, i) => message(m, i));
  for (const key of ["tools", "tool_choice", "functions", "function_call"]) unsupported(b, key, "tool calls are not supported");
  const format = b["response_format"];
  if (format !== undefined && format !== null) {
    if (typeof format !== "object" || (format as Body)["type"] !== "text") throw badField("response_format", 'response_format other than {"type": "text"} is not supported');
  }
  if (b["logprobs"] !== undefined && b["logprobs"] !== null && typeof b["logprobs"] !== "boolean") throw badField("logprobs", "logprobs must be a boolean");
  if (b["logprobs"] === true) throw badField("logprobs", "logprobs are not supported");
  unsupported(b, "top_logprobs", "logprobs are not supported");
  const maxTokens = optionalInt(b, "max_completion_tokens", 1) ?? optionalInt(b, "max_tokens", 1);
  return { kind: "chat", messages, ...common(b), maxTokens };
}

export function parseCompletionRequest(body: unknown): CompletionRequest {
  const b = object(body);
  let prompt = b["prompt"];
  if (prompt === undefined) throw badField("prompt", "prompt is required: a string (or an array of token ids)");
  if (Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === "string" || Array.isArray(prompt[0]))) prompt = prompt[0];
  if (Array.isArray(prompt)) {
    if (prompt.length === 0 || !prompt.every((t) => Number.isInteger(t) && t >= 0)) {
      throw badField("prompt", "prompt must be a string, or one prompt as an array of token ids (whole numbers >= 0); one prompt per request");
    }
  } else if (typeof prompt !== "string") {
    throw badField("prompt", "prompt must be a string");
  } else if (prompt === "") {
    throw badField("prompt", "prompt is empty");
  }
  if (b["echo"] !== undefined && b["echo"] !== null && typeof b["echo"] !== "boolean") throw badField("echo", "echo must be a boolean");
  if (b["echo"] === true) throw badField("echo", "echo is not supported");
  unsupported(b, "suffix", "suffix is not supported");
  const bestOf = optionalInt(b, "best_of", 1);
  if (bestOf !== undefined && bestOf !== 1) throw badField("best_of", "best_of other than 1 is not supported");
  const logprobs = optionalInt(b, "logprobs", 0);
  if (logprobs) throw badField("logprobs", "logprobs are not supported");
  return { kind: "text", prompt: prompt as string | number[], ...common(b), maxTokens: optionalInt(b, "max_tokens", 1) };
}

/** The fields both endpoints share. */
function common(b: Body): Omit<CompletionRequest, "kind" | "messages" | "prompt" | "maxTokens"> {
  const model = b["model"];
  if (model !== undefined && model !== null && typeof model !== "string") throw badField("model", "model must be a string");
  let temperature = optionalNumber(b, "temperature", 0, 2) ?? 1;
  const topP = optionalNumber(b, "top_p", 0, 1) ?? 1;
  // top_p 0 keeps only the most likely token: greedy.
  if (topP === 0) temperature = 0;
  const topK = optionalInt(b, "top_k", 0) ?? 0;
  const seed = optionalInt(b, "seed", Number.MIN_SAFE_INTEGER);
  const n = optionalInt(b, "n", 1);
  if (n !== undefined && n !== 1) throw badField("n", "n other than 1 is not supported: one choice per request");
  for (const key of ["frequency_penalty", "presence_penalty"]) {
    const v = optionalNumber(b, key, -2, 2);
    if (v !== undefined && v !== 0) throw badField(key, `${key} is not supported (only 0)`);
  }
  const bias = b["logit_bias"];
  if (bias !== undefined && bias !== null) {
    if (typeof bias !== "object" || Array.isArray(bias)) throw badField("logit_bias", "logit_bias must be an object");
    if (Object.keys(bias).length > 0) throw badField("logit_bias", "logit_bias is not supported");
  }
  if (b["user"] !== undefined && b["user"] !== null && typeof b["user"] !== "string") throw badField("user", "user must be a string");
  const stream = b["stream"] ?? false;
  if (typeof stream !== "boolean") throw badField("stream", "stream must be a boolean");
  const options = b["stream_options"];
  let includeUsage = false;
  if (options !== undefined && options !== null) {
    if (typeof options !== "object" || Array.isArray(options)) throw badField("stream_options", "stream_options must be an object");
    const u = (options as Body)["include_usage"];
    if (u !== undefined && u !== null && typeof u !== "boolean") throw badField("stream_options.include_usage", "stream_options.include_usage must be a boolean");
    includeUsage = u === true;
  }
  return { model: model ?? undefined, temperature, topP: topP === 0 ? 1 : topP, topK, seed, stop: stops(b["stop"]), stream, includeUsage };
}

function object(body: unknown): Body {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new HttpError(400, "the request body must be a JSON object");
  return body as Body;
}

function message(m: unknown, i: number): ChatMessage {
  const at = `messages[${i}]`;
  if (m === null || typeof m !== "object" || Array.isArray(m)) throw badField(at, `${at} must be an object {role, content}`);
  const { role, content, name } = m as Body;
  if (typeof role !== "string" || !ROLES.has(role)) throw badField(`${at}.role`, `${at}.role must be one of system, developer, user, assistant`);
  if (name !== undefined && typeof name !== "string") throw badField(`${at}.name`, `${at}.name must be a string`);
  if ((m as Body)["tool_calls"] !== undefined && (m as Body)["tool_calls"] !== null) throw badField(`${at}.tool_calls`, "tool calls are not supported");
  let text: string;
  if (typeof content === "string") {
    text = content;
  } else if (Array.isArray(content)) {
    text = content
      .map((part, j) => {
        const p = part as Body;
        if (p === null || typeof p !== "object" || p["type"] !== "text" || typeof p["text"] !== "string") {
          throw badField(`${at}.content[${j}]`, `${at}.content[${j}] must be a text part {"type": "text", "text": "..."}; only text is supported`);
        }
        return p["text"] as string;
      })
      .join("");
  } else {
    throw badField(`${at}.content`, `${at}.content must be a string or an array of text parts`);
  }
  // The chat templates know system, user and assistant; OpenAI's developer role is the system's.
  return { role: role === "developer" ? "system" : role, content: text };
}

function stops(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.length > 4 || !list.every((s) => typeof s === "string" && s !== "")) {
    throw badField("stop", "stop must be a non-empty string or an array of up to 4 non-empty strings");
  }
  return list as string[];
}

function unsupported(b: Body, key: string, why: string): void {
  const v = b[key];
  if (v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0)) throw badField(key, why);
}

function optionalNumber(b: Body, key: string, min: number, max: number): number | undefined {
  const v = b[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) throw badField(key, `${key} must be a number from ${min} to ${max}`);
  return v;
}

function optionalInt(b: Body, key: string, min: number): number | undefined {
  const v = b[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) throw badField(key, `${key} must be a whole number >= ${min}`);
  return v;
}
