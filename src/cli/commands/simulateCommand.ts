import * as fs from "node:fs";
import type { Command } from "commander";
import { InvalidOptionError } from "../../errors.js";
import { parsePolicyName, POLICY_NAMES, type PolicyName } from "../../cache/policies/index.js";
import { localRoutingConsistency, SEGMENT_LENGTHS } from "../../profiling/consistency.js";
import { parseTraceFormat, readTrace, type TraceFormat } from "../../profiling/readTrace.js";
import { DEFAULT_BANDWIDTH_GBPS, simulate, type SimulationResult } from "../../profiling/simulate.js";
import { countAccesses } from "../../profiling/trace.js";
import { out } from "../output.js";
import { parseFloatOption, parseIntOption, parseOutputFile } from "../parse.js";

interface SimulateCliOptions {
  capacities?: number[];
  policies: PolicyName[];
  format: TraceFormat;
  bandwidth: number;
  expertBytes?: number;
  protectLayer: boolean;
  segments: number[];
  schCapacity?: number;
  json?: string;
}

function parseIntList(name: string, min: number): (value: string) => number[] {
  return (value) => {
    const items = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
    if (items.length === 0) throw new InvalidOptionError(`--${name} needs a comma-separated list, got "${value}"`);
    return items.map((s) => parseIntOption(name, min)(s));
  };
}

function parsePolicyList(value: string): PolicyName[] {
  const names = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.length === 0) throw new InvalidOptionError(`--policies needs a comma-separated list of ${POLICY_NAMES.join(", ")}`);
  return [...new Set(names.map(parsePolicyName))];
}

export function registerSimulate(program: Command): void {
  program
    .command("simulate")
    .description("replay a routing trace through the expert cache: hit rates per policy and capacity, stall estimates, routing consistency (SRP/SCH)")
    .argument("<trace>", "routing trace: moe-run JSONL or compact binary, or the Mixtral trace format")
    .option("--capacities <list>", "cache capacities in experts, comma-separated (default: 25%,37.5%,50%,75% of all experts)", parseIntList("capacities", 1))
    .option("--policies <list>", `policies, comma-separated, from ${POLICY_NAMES.join(", ")}`, parsePolicyList, [...POLICY_NAMES])
    .option("--format <format>", "trace format: auto, moe-run, mixtral", parseTraceFormat, "auto")
    .option("--bandwidth <GBps>", "bandwidth of the tier misses load from, GB/s", parseFloatOption("bandwidth", Number.MIN_VALUE), DEFAULT_BANDWIDTH_GBPS)
    .option("--expert-bytes <n>", "bytes per expert (default: from the trace, if it says)", parseIntOption("expert-bytes", 1))
    .option("--protect-layer", "protect a record's experts while it is served, as the runtime does", false)
    .option("--segments <list>", "segment lengths for SRP/SCH", parseIntList("segments", 1), [...SEGMENT_LENGTHS])
    .option("--sch-capacity <n>", "experts per layer in SCH's cache (default: 2 x top-k)", parseIntOption("sch-capacity", 1))
    .option("--json <file>", "also write the results as JSON to this file", parseOutputFile("json"))
    .action((file: string, opts: SimulateCliOptions) => {
      const trace = readTrace(file, opts.format);
      const { meta } = trace;
      const total = meta.numLayers * meta.numExperts;
      const capacities = opts.capacities ?? [...new Set([0.25, 0.375, 0.5, 0.75].map((f) => Math.max(1, Math.round(f * total))))];
      const expertBytes = opts.expertBytes ?? meta.expertBytes;
      const results = simulate(trace, { capacities, policies: opts.policies, expertBytes, bandwidthGBps: opts.bandwidth, protectLayer: opts.protectLayer });
      const consistency = localRoutingConsistency(trace, { segmentLengths: opts.segments, schCapacity: opts.schCapacity });
      const accesses = countAccesses(trace);

      out(
        `trace ${file}: ${trace.records.length} records, ${accesses} expert accesses, ${meta.numLayers} layers x ${meta.numExperts} experts, top-${meta.topK}` +
          `${meta.model ? ` (${meta.model})` : ""}\n` +
          (expertBytes !== undefined ? `expert size ${(expertBytes / 2 ** 20).toFixed(1)} MiB, bandwidth ${opts.bandwidth} GB/s\n` : `expert size unknown (pass --expert-bytes for bytes and stall time)\n`)
      );
      out(formatTable(results, total) + "\n");
      const fmt = (v: number | null) => (v === null ? "n/a" : v.toFixed(4));
      out(`routing consistency (per layer; SCH with ${consistency.schCapacity} experts per layer):\n`);
      out(`  segment  ${opts.segments.map((m) => String(m).padStart(7)).join("")}\n`);
      out(`  SRP      ${opts.segments.map((m) => fmt(consistency.srp[m] ?? null).padStart(7)).join("")}\n`);
      out(`  SCH      ${opts.segments.map((m) => fmt(consistency.sch[m] ?? null).padStart(7)).join("")}\n`);

      if (opts.json !== undefined) {
        const report = {
          trace: { file, records: trace.records.length, accesses, ...meta },
          bandwidthGBps: opts.bandwidth,
          expertBytes: expertBytes ?? null,
          protectLayer: opts.protectLayer,
          results,
          consistency,
        };
        fs.writeFileSync(opts.json, JSON.stringify(report, null, 2) + "\n");
      }
    });
}

function formatTable(results: SimulationResult[], totalExperts: number): string {
  const head = ["policy", "capacity", "hit rate", "hits", "misses", "moved GiB", "stall s"];
  const rows = results.map((r) => [
    r.policy,
    `${r.capacity} (${Math.round((100 * r.capacity) / totalExperts)}%)`,
    r.hitRate.toFixed(4),
    String(r.hits),
    String(r.misses),
    r.bytesMoved === null ? "n/a" : (r.bytesMoved / 2 ** 30).toFixed(2),
    r.stallSeconds === null ? "n/a" : r.stallSeconds.toFixed(2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(head), ...rows.map(line)].join("\n");
}
