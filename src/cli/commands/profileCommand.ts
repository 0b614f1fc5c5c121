import * as fs from "node:fs";
import type { Command } from "commander";
import { profilePrompts, readPrompts, writeRoutingTrace } from "../../profiling/profileModel.js";
import { formatSummary, summarizeTrace } from "../../profiling/profileSummary.js";
import { addModelOptions, loadModelForCli, loadOptions, reportStats, type ModelCliOptions } from "../modelOptions.js";
import { out } from "../output.js";
import { parseIntOption, parseOutputFile } from "../parse.js";

interface ProfileCliOptions extends ModelCliOptions {
  prompts: string;
  maxTokens: number;
  out?: string;
  gateInputs: boolean;
  probs: boolean;
  chat: boolean;
  json?: string;
}

export function registerProfile(program: Command): void {
  const cmd = program
    .command("profile")
    .description("run prompts greedily and record each token's routing per layer into a trace; print usage entropy, top-1 change rates and cache hit rates")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .requiredOption("--prompts <file>", "prompts: one per line, or *.jsonl with one {\"prompt\": \"...\"} per line")
    .option("-n, --max-tokens <n>", "most tokens to generate per prompt", parseIntOption("max-tokens"), 32)
    .option("--out <file>", "write the trace: *.moetrace = compact binary, anything else = JSONL", parseOutputFile("out"))
    .option("--gate-inputs", "also record each token's gate (router) input", false)
    .option("--no-probs", "do not record the router probabilities over all experts")
    .option("--chat", "apply the model's chat template to each prompt", false)
    .option("--json <file>", "write the summary as JSON", parseOutputFile("json"));
  addModelOptions(cmd).action(async (modelDir: string, opts: ProfileCliOptions) => {
    const prompts = readPrompts(opts.prompts);
    const model = await loadModelForCli(modelDir, loadOptions(opts));
    const controller = new AbortController();
    const onSigint = () => {
      if (!controller.signal.aborted) controller.abort(new DOMException("interrupted", "AbortError"));
    };
    process.on("SIGINT", onSigint);
    try {
      const result = await profilePrompts(model, prompts, {
        maxTokens: opts.maxTokens,
        gateInputs: opts.gateInputs,
        probs: opts.probs,
        chat: opts.chat,
        signal: controller.signal,
        onPrompt: (i, p, g) => process.stderr.write(`[moe-run] prompt ${i + 1}/${prompts.length}: ${p} + ${g} tokens\n`),
      });
      const format = opts.out !== undefined ? writeRoutingTrace(opts.out, result.trace) : undefined;
      const summary = summarizeTrace(result.trace);
      out(formatSummary(summary) + "\n");
      out(
        `\nprompt tokens ${result.promptTokens}, generated ${result.generatedTokens}; decode ${result.decodeTokensPerSecond.toFixed(1)} tok/s while recording\n` +
          (opts.out !== undefined ? `trace: ${opts.out} (${format}, ${fs.statSync(opts.out).size} bytes)\n` : "trace not saved (pass --out trace.jsonl or trace.moetrace)\n")
      );
      if (opts.json !== undefined) {
        const run = { prompts: result.prompts, promptTokens: result.promptTokens, generatedTokens: result.generatedTokens, forwardedTokens: result.forwardedTokens, decodeTokensPerSecond: result.decodeTokensPerSecond };
        fs.writeFileSync(opts.json, JSON.stringify({ ...summary, run, trace: opts.out ?? null, traceFormat: format ?? null }, null, 2) + "\n");
      }
      reportStats(model, opts);
    } finally {
      process.off("SIGINT", onSigint);
      await model.dispose();
    }
  });
}
