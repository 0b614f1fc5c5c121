import * as fs from "node:fs";
import * as os from "node:os";
import type { Command } from "commander";
import { parsePolicyName, POLICY_NAMES, type PolicyName } from "../../cache/policies/index.js";
import { InvalidOptionError } from "../../errors.js";
import { readManifest } from "../../model/manifest.js";
import { machineFigures } from "../../profiling/machine.js";
import { formatPlan, planDecode, type DeviceBudget } from "../../profiling/plan.js";
import { profilePrompts, readPrompts } from "../../profiling/profileModel.js";
import { parseTraceFormat, readTrace, type TraceFormat } from "../../profiling/readTrace.js";
import type { RoutingTrace } from "../../profiling/trace.js";
import { formatBytes, parseByteSize, resolveByteSize, type ByteSize } from "../../util/bytes.js";
import { loadModelForCli } from "../modelOptions.js";
import { out } from "../output.js";
import { parseIntOption, parseOutputFile, parseThreadsOption } from "../parse.js";

interface PlanCliOptions {
  deviceMem: string;
  hostMem?: ByteSize;
  trace?: string;
  format: TraceFormat;
  prompts?: string;
  maxTokens: number;
  policy: PolicyName;
  threads?: number;
  machineFile?: string;
  remeasure: boolean;
  json?: string;
}

/** Used when neither --trace nor --prompts is given: short, generic English. */
const DEFAULT_PROMPTS = [
  "Once upon a time, in a small village by the sea,",
  "The most important thing to remember about programming is",
  "In the beginning God created the heaven and the earth.",
  "Whenever one person is found adequate to the discharge of a duty",
];

export function registerPlan(program: Command): void {
  program
    .command("plan")
    .description("predict decode tokens/s at memory budgets from measured machine figures and simulated cache miss rates")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .requiredOption("--device-mem <sizes>", "device-tier budget(s), comma-separated: 2GiB, 512MiB, 50% of expert bytes, or unlimited")
    .option("--host-mem <size>", "host-tier budget (store pages in RAM); default: the machine's memory", (v) => parseByteSize(v, "host-mem"))
    .option("--trace <file>", "routing trace to take miss rates from (default: profile --prompts now)")
    .option("--format <format>", "trace format: auto, moe-run, mixtral", parseTraceFormat, "auto")
    .option("--prompts <file>", "prompts to profile when no --trace is given (default: a few built-in sentences)")
    .option("-n, --max-tokens <n>", "tokens generated per prompt when profiling", parseIntOption("max-tokens", 1), 32)
    .option("--policy <name>", `cache policy to simulate: ${POLICY_NAMES.join(", ")}`, parsePolicyName, "lru")
    .option("--threads <n>", "compute threads (default: all cores)", parseThreadsOption("threads"))
    .option("--machine-file <file>", "where measured machine figures are cached (default: ~/.cache/moe-run/machine.json)")
    .option("--remeasure", "measure the machine again instead of using cached figures", false)
    .option("--json <file>", "also write the plan as JSON", parseOutputFile("json"))
    .action(async (modelDir: string, opts: PlanCliOptions) => {
      const threads = opts.threads ?? os.availableParallelism();
      // Measuring and profiling want every expert resident, but a model larger than memory must
      // not try: cap the device tier at half the free memory (load stalls are taken out anyway).
      const manifest = readManifest(modelDir);
      const all = manifest.dims.numLayers * manifest.dims.numExperts * manifest.experts.recordBytes;
      const cap = Math.floor(os.freemem() / 2);
      const model = await loadModelForCli(modelDir, { threads, log: () => {}, deviceMem: all <= cap ? undefined : Math.max(cap, 4 * manifest.dims.topK * manifest.experts.recordBytes) });
      let figures;
      let trace: RoutingTrace | undefined;
      let traceSource = "";
      let promptTokens: number[] | undefined;
      const notes: string[] = [];
      try {
        const d = model.dims;
        const totalExpertBytes = d.numLayers * d.numExperts * model.manifest.experts.recordBytes;
        const budgets: DeviceBudget[] = opts.deviceMem.split(",").map((s) => s.trim()).filter((s) => s !== "").map((label) => ({
          label,
          bytes: label.toLowerCase() === "unlimited" ? Infinity : resolveByteSize(parseByteSize(label, "device-mem"), totalExpertBytes),
        }));
        if (budgets.length === 0) throw new InvalidOptionError(`--device-mem needs at least one size, got "${opts.deviceMem}"`);
        if (opts.trace !== undefined) {
          trace = readTrace(opts.trace, opts.format);
          traceSource = opts.trace;
          if (trace.meta.numLayers !== d.numLayers || trace.meta.numExperts !== d.numExperts) {
            throw new InvalidOptionError(`the trace has ${trace.meta.numLayers} layers x ${trace.meta.numExperts} experts but the model ${d.numLayers} x ${d.numExperts}; profile this model (--prompts) or pass its own trace`);
          }
        }
        figures = await machineFigures(model, { threads, file: opts.machineFile, remeasure: opts.remeasure });
        if (opts.trace === undefined) {
          const prompts = opts.prompts !== undefined ? readPrompts(opts.prompts) : DEFAULT_PROMPTS;
          if (opts.prompts === undefined) notes.push(`miss rates from ${DEFAULT_PROMPTS.length} built-in prompts; pass --trace or --prompts for your workload`);
          process.stderr.write(`moe-run: profiling ${prompts.length} prompts (${opts.maxTokens} tokens each) for miss rates\n`);
          const profiled = await profilePrompts(model, prompts, { maxTokens: opts.maxTokens, probs: opts.policy === "score" });
          trace = profiled.trace;
          promptTokens = profiled.promptTokensPerSeq;
          traceSource = opts.prompts ?? "built-in prompts";
        }
        const hostBytes = opts.hostMem === undefined ? os.totalmem() : resolveByteSize(opts.hostMem, totalExpertBytes);
        if (opts.hostMem === undefined) notes.push(`host budget: the machine's memory (${formatBytes(hostBytes)}); pass --host-mem to plan for less`);
        if (opts.policy === "belady") notes.push("belady needs the future: an offline bound, not a policy the runtime can run");
        const plan = planDecode({ manifest: model.manifest, machine: figures.machine, figures: figures.model, trace: trace!, traceSource, budgets, hostBytes, policy: opts.policy, promptTokens, denseBytesPerToken: model.engineInfo().denseBytesPerToken });
        plan.notes.push(...notes, `machine figures ${figures.cached ? "from" : "measured now, cached in"} ${figures.file}${figures.cached ? " (--remeasure to refresh)" : ""}`);
        out(formatPlan(plan) + "\n");
        if (opts.json !== undefined) fs.writeFileSync(opts.json, JSON.stringify(plan, (_k, v) => (v === Infinity ? null : v), 2) + "\n");
      } finally {
        await model.dispose();
      }
    });
}
