/**
 * Profiling a model on prompts: each prompt runs greedily through the real model while a routing
 * observer records, per token and layer, the chosen experts and router weights (plus the router
 * probabilities over all experts and, when asked, the gate inputs) into a RoutingTrace that the
 * trace writers save (compact binary for *.moetrace, JSONL otherwise).
 *
 * Prompt files: one prompt per line (blank lines skipped), or, for *.jsonl / *.ndjson files, one
 * JSON object per line with a string "prompt" (the way to give prompts that contain newlines).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InvalidOptionError, MoeRunError } from "../errors.js";
import type { MoeModel } from "../model/MoeModel.js";
import { writeCompactTrace } from "./compactTrace.js";
import { writeJsonlTrace } from "./jsonlTrace.js";
import { TraceRecorder, type RoutingTrace } from "./trace.js";

export class PromptsInvalidError extends MoeRunError {
  constructor(message: string) {
    super("PROMPTS_INVALID", message);
    this.name = "PromptsInvalidError";
  }
}

/** Prompts from text: JSONL of {"prompt": "..."} when `jsonl`, else one per non-blank line. */
export function parsePrompts(text: string, source = "prompts", jsonl = false): string[] {
  const prompts: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/\r$/, "");
    if (line.trim() === "") return;
    if (!jsonl) {
      prompts.push(line);
      return;
    }
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch (err) {
      throw new PromptsInvalidError(`${source}:${i + 1}: not JSON (${(err as Error).message}); a .jsonl prompt file holds one {"prompt": "..."} object per line`);
    }
    const p = typeof o === "object" && o !== null ? (o as { prompt?: unknown }).prompt : undefined;
    if (typeof p !== "string" || p === "") throw new PromptsInvalidError(`${source}:${i + 1}: expected an object with a non-empty string "prompt"`);
    prompts.push(p);
  });
  if (prompts.length === 0) throw new PromptsInvalidError(`${source}: no prompts (the file is empty or blank)`);
  return prompts;
}

export function readPrompts(file: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new InvalidOptionError(`cannot read prompts ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parsePrompts(text, file, /\.(jsonl|ndjson)$/i.test(file));
}

/** Writes a trace in the format its file name asks for: compact for *.moetrace, else JSONL. */
export function writeRoutingTrace(file: string, trace: RoutingTrace): "compact" | "jsonl" {
  if (/\.moetrace$/i.test(file)) {
    writeCompactTrace(file, trace);
    return "compact";
  }
  writeJsonlTrace(file, trace);
  return "jsonl";
}

export interface ProfileOptions {
  /** Most tokens generated per prompt. Default 32. */
  maxTokens?: number;
  /** Record each token's gate (router) input [H]. Default false (H floats per record). */
  gateInputs?: boolean;
  /** Record the router probabilities over all experts (score policies use them). Default true. */
  probs?: boolean;
  /** Stop a prompt at end-of-sequence. Default true. */
  stopAtEos?: boolean;
  chat?: boolean;
  signal?: AbortSignal;
  /** Called after each prompt. */
  onPrompt?: (index: number, promptTokens: number, generatedTokens: number) => void;
}

export interface ProfileResult {
  trace: RoutingTrace;
  prompts: number;
  promptTokens: number;
  /** Per prompt (trace seq): its prompt tokens; tokens from there on are decode steps. */
  promptTokensPerSeq: number[];
  generatedTokens: number;
  /** Tokens that went through the model (one record per layer each). */
  forwardedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
  /** Over all prompts: decoded tokens after each prompt's first / decode seconds. */
  decodeTokensPerSecond: number;
}

/** Runs every prompt greedily through `model`, recording its routing. */
export async function profilePrompts(model: MoeModel, prompts: readonly string[], options: ProfileOptions = {}): Promise<ProfileResult> {
  if (prompts.length === 0) throw new PromptsInvalidError("no prompts to profile");
  const d = model.dims;
  const E = d.numExperts;
  const H = d.hiddenSize;
  const recorder = new TraceRecorder({
    model: path.basename(model.manifest.source.dir),
    numLayers: d.numLayers,
    numExperts: E,
    topK: d.topK,
    expertBytes: model.manifest.experts.recordBytes,
  });
  // TraceRecorder keeps experts and weights; probs and gate inputs ride alongside, keyed by record.
  const extras = new Map<number, { probs?: number[]; gate?: number[] }>();
  const keyOf = (seq: number, token: number, layer: number) => (seq * 65536 + token) * 65536 + layer;
  const wantProbs = options.probs ?? true;
  let seq = 0;
  let position = 0; // of the first token of the current forward pass
  const off = model.onRouting((layer, routing, gateInput) => {
    recorder.observe(seq, position, layer, routing);
    if (wantProbs || options.gateInputs) {
      for (let t = 0; t < routing.tokens; t++) {
        const x: { probs?: number[]; gate?: number[] } = {};
        if (wantProbs) x.probs = Array.from(routing.probs.subarray(t * E, (t + 1) * E));
        if (options.gateInputs) x.gate = Array.from(gateInput.data.subarray(t * H, (t + 1) * H));
        extras.set(keyOf(seq, position + t, layer), x);
      }
    }
    if (layer === d.numLayers - 1) position += routing.tokens;
  });
  const promptTokensPerSeq: number[] = [];
  const totals = { promptTokens: 0, generatedTokens: 0, forwardedTokens: 0, prefillSeconds: 0, decodeSeconds: 0, decoded: 0 };
  try {
    for (; seq < prompts.length; seq++) {
      position = 0;
      const run = model.generate(prompts[seq]!, { maxTokens: options.maxTokens ?? 32, temperature: 0, stopAtEos: options.stopAtEos, chat: options.chat, signal: options.signal });
      let r = await run.next();
      while (!r.done) r = await run.next();
      const s = r.value;
      totals.promptTokens += s.promptTokens;
      promptTokensPerSeq.push(s.promptTokens);
      totals.generatedTokens += s.generatedTokens;
      totals.forwardedTokens += position;
      totals.prefillSeconds += s.prefillSeconds;
      totals.decodeSeconds += s.decodeSeconds;
      totals.decoded += Math.max(0, s.generatedTokens - 1);
      options.onPrompt?.(seq, s.promptTokens, s.generatedTokens);
    }
  } finally {
    off();
  }
  const trace = recorder.trace();
  if (extras.size > 0) {
    for (const rec of trace.records) {
      const x = extras.get(keyOf(rec.seq, rec.token, rec.layer));
      if (x?.probs) rec.probs = x.probs;
      if (x?.gate) rec.gate = x.gate;
    }
  }
  return {
    trace,
    prompts: prompts.length,
    promptTokens: totals.promptTokens,
    promptTokensPerSeq,
    generatedTokens: totals.generatedTokens,
    forwardedTokens: totals.forwardedTokens,
    prefillSeconds: totals.prefillSeconds,
    decodeSeconds: totals.decodeSeconds,
    decodeTokensPerSecond: totals.decodeSeconds > 0 ? totals.decoded / totals.decodeSeconds : 0,
  };
}
