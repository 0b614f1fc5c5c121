/** Generation options shared by `run` and `chat`: length and sampling. */
import type { Command } from "commander";
import type { SamplingOptions } from "../evaluator/sampler.js";
import { parseFloatOption, parseIntOption } from "./parse.js";

export interface SamplingCliOptions {
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed?: number;
}

export function addSamplingOptions(cmd: Command, defaults: { maxTokens: number }): Command {
  return cmd
    .option("-n, --max-tokens <n>", "most tokens to generate", parseIntOption("max-tokens"), defaults.maxTokens)
    .option("-t, --temperature <t>", "sampling temperature; 0 = greedy", parseFloatOption("temperature", 0), 0)
    .option("--top-k <k>", "sample from the k most likely tokens; 0 = all", parseIntOption("top-k"), 0)
    .option("--top-p <p>", "nucleus sampling probability mass", parseFloatOption("top-p", 0, 1), 1)
    .option("--seed <s>", "sampling seed", parseIntOption("seed"));
}

export function samplingFrom(o: SamplingCliOptions): SamplingOptions & { maxTokens: number } {
  return { maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed };
}
