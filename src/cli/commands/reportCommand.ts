import * as fs from "node:fs";
import type { Command } from "commander";
import { POLICY_NAMES, parsePolicyName, type PolicyName } from "../../cache/policies/index.js";
import { InvalidOptionError } from "../../errors.js";
import { readManifest } from "../../model/manifest.js";
import { parseTraceFormat, readTrace, type TraceFormat } from "../../profiling/readTrace.js";
import { buildReport, formatReport, readPredictors } from "../../profiling/report.js";
import { renderReportHtml } from "../../profiling/reportHtml.js";
import { out } from "../output.js";
import { parseOutputFile } from "../parse.js";

interface ReportCliOptions {
  modelDir?: string;
  out: string;
  json?: string;
  format: TraceFormat;
  predictors?: string;
  policies: PolicyName[];
}

function parsePolicyList(value: string): PolicyName[] {
  const names = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.length === 0) throw new InvalidOptionError(`--policies needs a comma-separated list of ${POLICY_NAMES.join(", ")}`);
  return [...new Set(names.map(parsePolicyName))];
}

export function registerReport(program: Command): void {
  program
    .command("report")
    .description("an HTML report of a routing trace: hit rate vs capacity per policy beside Belady, expert usage heatmap, predictor recall, SRP/SCH")
    .argument("<trace>", "routing trace: moe-run JSONL or compact binary, or the Mixtral trace format")
    .option("--model-dir <dir>", "the model the trace came from: expert size and name when the trace lacks them, routers for the gate predictor")
    .option("--out <file>", "the HTML report", parseOutputFile("out"), "report.html")
    .option("--json <file>", "also write the report data as JSON", parseOutputFile("json"))
    .option("--format <format>", "trace format: auto, moe-run, mixtral", parseTraceFormat, "auto")
    .option("--predictors <file>", "predictor evaluation JSON (a \"predictors\" array) to show recall per layer")
    .option("--policies <list>", "policies to plot (Belady is always added)", parsePolicyList, [...POLICY_NAMES])
    .action((file: string, opts: ReportCliOptions) => {
      const trace = readTrace(file, opts.format);
      let model: { dir: string; manifest: ReturnType<typeof readManifest> } | undefined;
      if (opts.modelDir !== undefined) {
        const m = readManifest(opts.modelDir);
        model = { dir: opts.modelDir, manifest: m };
        if (m.dims.numLayers !== trace.meta.numLayers || m.dims.numExperts !== trace.meta.numExperts) {
          throw new InvalidOptionError(`${file} has ${trace.meta.numLayers} layers x ${trace.meta.numExperts} experts but ${opts.modelDir} has ${m.dims.numLayers} x ${m.dims.numExperts}: not this model's trace`);
        }
        trace.meta.expertBytes ??= m.experts.recordBytes;
        trace.meta.model ??= m.source.dir.split(/[\\/]/).filter(Boolean).pop();
      }
      const predictors = opts.predictors !== undefined ? readPredictors(opts.predictors) : undefined;
      const report = buildReport(trace, { source: file, policies: opts.policies, predictors, model });
      fs.writeFileSync(opts.out, renderReportHtml(report));
      if (opts.json !== undefined) fs.writeFileSync(opts.json, JSON.stringify(report, null, 2) + "\n");
      out(formatReport(report) + `\n\nreport: ${opts.out}${opts.json !== undefined ? `, data: ${opts.json}` : ""}\n`);
    });
}
