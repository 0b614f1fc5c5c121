/** Response bodies in OpenAI's shapes: completions, chat completions, their stream chunks, usage. */
import { randomUUID } from "node:crypto";
import type { SequenceStats } from "../model/KvSequence.js";

export type FinishReason = "stop" | "length";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Prompt tokens taken from the KV cache of an earlier request (moe-run computes only the rest). */
  prompt_tokens_details: { cached_tokens: number };
}

/** What one generation produced, for the response. */
export interface CompletionResult {
  text: string;
  finishReason: FinishReason;
  stats: SequenceStats;
}

/** The id and creation time that every chunk of one response repeats. */
export interface ResponseHead {
  id: string;
  created: number;
  model: string;
}

export function responseHead(kind: "chat" | "text", model: string): ResponseHead {
  return { id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replaceAll("-", "")}`, created: Math.floor(Date.now() / 1000), model };
}

export function usage(stats: SequenceStats): Usage {
  return {
    prompt_tokens: stats.promptTokens,
    completion_tokens: stats.generatedTokens,
    total_tokens: stats.promptTokens + stats.generatedTokens,
    prompt_tokens_details: { cached_tokens: stats.reusedTokens },
  };
}

/** The whole response of a request that did not stream. */
export function completionBody(kind: "chat" | "text", head: ResponseHead, r: CompletionResult): object {
  if (kind === "chat") {
    return {
      ...head,
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: r.text, refusal: null }, logprobs: null, finish_reason: r.finishReason }],
      usage: usage(r.stats),
    };
  }
  return { ...head, object: "text_completion", choices: [{ index: 0, text: r.text, logprobs: null, finish_reason: r.finishReason }], usage: usage(r.stats) };
}

/**
 * One stream chunk: text (chat: the first chunk also names the role), or the end (finish reason,
 * no text).
 */
export function chunkBody(kind: "chat" | "text", head: ResponseHead, part: { text?: string; first?: boolean; finishReason?: FinishReason }): object {
  const finish = part.finishReason ?? null;
  if (kind === "chat") {
    const delta = finish ? {} : { ...(part.first ? { role: "assistant" } : {}), content: part.text ?? "" };
    return { ...head, object: "chat.completion.chunk", choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] };
  }
  return { ...head, object: "text_completion", choices: [{ index: 0, text: part.text ?? "", logprobs: null, finish_reason: finish }] };
}

/** The last chunk with `stream_options.include_usage`: no choices, the usage. */
export function usageChunkBody(kind: "chat" | "text", head: ResponseHead, stats: SequenceStats): object {
  return { ...head, object: kind === "chat" ? "chat.completion.chunk" : "text_completion", choices: [], usage: usage(stats) };
}
