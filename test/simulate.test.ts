/**
 * Trace formats, the simulator and the routing-consistency metrics, plus the `moe-run simulate`
 * CLI: on a trace the project ships (bench/results) everywhere, and on the real Mixtral trace in the
 * shared folder (../shared/traces or $MOE_RUN_SHARED; read in place, never copied) where it is
 * present: its tests are skipped without it, unless MOE_RUN_REQUIRE_SHARED=1 (then they fail).
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { InvalidOptionError } from "../src/errors.js";
import { decodeCompactTrace, encodeCompactTrace } from "../src/profiling/compactTrace.js";
import { layerSequences, finishTrace, TraceInvalidError, TraceRecorder, type RoutingRecord, type RoutingTrace } from "../src/profiling/trace.js";
import { formatJsonlTrace, parseJsonlTrace } from "../src/profiling/jsonlTrace.js";
import { localRoutingConsistency, segmentCacheBestHitRate, segmentRoutingBestPerformance } from "../src/profiling/consistency.js";
import { detectTraceFormat, readTrace } from "../src/profiling/readTrace.js";
import { simulate } from "../src/profiling/simulate.js";
import { BUNDLED_TRACE, sharedTraceGate } from "./helpers.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MIXTRAL = sharedTraceGate("mixtral-8x7b-gsm8k.jsonl");
const CLI = path.join(ROOT, "dist", "cli", "cli.js");

/** ../shared/traces/README.md: one cache over all 256 (layer, expert) pairs, cold start. */
const REFERENCE: Record<"lru" | "lfu" | "belady", Record<number, number>> = {
  lru: { 64: 0.286, 96: 0.351, 128: 0.535, 192: 0.788 },
  lfu: { 64: 0.32, 96: 0.46, 128: 0.59, 192: 0.815 },
  belady: { 64: 0.588, 96: 0.718, 128: 0.81, 192: 0.926 },
};

let mixtral: RoutingTrace;
let TRACE: string;
/** The project's own trace (24 layers x 8 experts), for everything that is not a reference figure. */
let bundled: RoutingTrace;

beforeAll(() => {
  bundled = readTrace(BUNDLED_TRACE);
});

/** The trace's accesses: one per expert of each record. */
const accesses = (t: RoutingTrace) => t.records.reduce((n, r) => n + r.experts.length, 0);

/** Compact -> JSONL -> compact is byte-exact, and both formats keep what the trace has. */
function expectRoundTrip(trace: RoutingTrace): void {
  const jsonl = formatJsonlTrace(trace);
  expect(parseJsonlTrace(jsonl)).toEqual(trace);
  const bin = encodeCompactTrace(trace);
  expect(bin.length).toBeLessThan(Buffer.byteLength(jsonl));
  const back = decodeCompactTrace(bin);
  expect(back.meta).toEqual(trace.meta);
  expect(back.records.length).toBe(trace.records.length);
  back.records.forEach((r, i) => {
    const o = trace.records[i]!;
    expect([r.seq, r.token, r.layer, r.experts]).toEqual([o.seq, o.token, o.layer, o.experts]);
    expect(r.weights).toEqual(o.weights.map(Math.fround));
    if (o.probs) expect(r.probs).toEqual(o.probs.map(Math.fround));
  });
  // float32 from here on: compact -> JSONL -> compact is byte-exact.
  expect(encodeCompactTrace(parseJsonlTrace(formatJsonlTrace(back)))).toEqual(bin);
}

describe("the simulator on the project's trace", () => {
  it("reads the trace in access order with the header's shape", () => {
    expect(detectTraceFormat(fs.readFileSync(BUNDLED_TRACE))).toBe("moe-run");
    expect(bundled.meta).toMatchObject({ numLayers: 24, numExperts: 8 });
    expect(bundled.records.length).toBeGreaterThan(100);
    const r = bundled.records;
    for (let i = 1; i < r.length; i++) {
      const a = r[i - 1]!;
      const b = r[i]!;
      expect(a.seq < b.seq || (a.seq === b.seq && (a.token < b.token || (a.token === b.token && a.layer < b.layer)))).toBe(true);
    }
  });

  it("counts every access, charges each miss one expert's bytes, and no online policy beats Belady", () => {
    const total = bundled.meta.numLayers * bundled.meta.numExperts;
    const caps = [total / 4, total / 2, total].map(Math.floor);
    const policies = ["lru", "lfu", "layer-lru", "score", "shallow", "belady"] as const;
    for (const protectLayer of [false, true]) {
      const results = simulate(bundled, { capacities: caps, policies: [...policies], protectLayer });
      expect(results.length).toBe(caps.length * policies.length);
      for (const r of results) {
        expect(r.hits + r.misses).toBe(accesses(bundled));
        expect(r.hitRate).toBeCloseTo(r.hits / (r.hits + r.misses), 12);
        expect(r.bytesMoved).toBe(r.misses * bundled.meta.expertBytes!);
        expect(r.stallSeconds).toBeCloseTo(r.bytesMoved! / 16e9, 9);
      }
      for (const cap of caps) {
        const best = results.find((r) => r.policy === "belady" && r.capacity === cap)!.hits;
        for (const r of results.filter((x) => x.capacity === cap)) expect(r.hits).toBeLessThanOrEqual(best);
      }
      // A cache of every expert misses each one at most once (cold start).
      const distinct = new Set(bundled.records.flatMap((r) => r.experts.map((e) => r.layer * 0x10000 + e))).size;
      for (const r of results.filter((x) => x.capacity === total)) expect(r.misses).toBe(distinct);
    }
  });

  it("computes SRP and SCH per layer within [0, 1]", () => {
    const seqs = layerSequences(bundled);
    expect(seqs.length).toBe(bundled.meta.numLayers * new Set(bundled.records.map((r) => r.seq)).size);
    const c = localRoutingConsistency(bundled);
    expect(Object.keys(c.srp)).toEqual(["4", "16", "64", "256"]);
    for (const v of [...Object.values(c.srp), ...Object.values(c.sch)]) {
      if (v === null) continue;
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThanOrEqual(1);
    }
    expect(c.srp[4]).not.toBeNull();
  });

  it("SRP and SCH are 1 for perfectly consistent routing", () => {
    const same = [Array.from({ length: 20 }, () => [3, 1])];
    expect(segmentRoutingBestPerformance(same, 8, 4)).toBe(1);
    expect(segmentCacheBestHitRate(same, 4, 2)).toBe(1);
    const alternating = [Array.from({ length: 20 }, (_, t) => (t % 2 ? [0, 1] : [2, 3]))];
    expect(segmentRoutingBestPerformance(alternating, 4, 4)).toBeCloseTo(2 / 3); // best group: all four
  });
});

describe.skipIf(MIXTRAL.skip)(`Mixtral trace${MIXTRAL.note}`, () => {
  beforeAll(() => {
    if (!MIXTRAL.path) return;
    TRACE = MIXTRAL.path;
    mixtral = readTrace(TRACE);
  });
  // Absent but required (MOE_RUN_REQUIRE_SHARED=1): every test here fails, naming the path looked for.
  beforeEach(() => void MIXTRAL.require());

  it("is detected and read in access order (problem, token, layer)", () => {
    expect(detectTraceFormat(fs.readFileSync(TRACE))).toBe("mixtral");
    expect(mixtral.meta).toMatchObject({ numLayers: 32, numExperts: 8, topK: 2, model: "Mixtral-8x7B" });
    expect(mixtral.records.length).toBe(7889);
    const r = mixtral.records;
    for (let i = 1; i < r.length; i++) {
      const a = r[i - 1]!;
      const b = r[i]!;
      expect(a.seq < b.seq || (a.seq === b.seq && (a.token < b.token || (a.token === b.token && a.layer < b.layer)))).toBe(true);
    }
  });

  it("reproduces the reference LRU, LFU and Belady hit rates within 0.005", () => {
    const results = simulate(mixtral, { capacities: [64, 96, 128, 192], policies: ["lru", "lfu", "belady"] });
    expect(results.length).toBe(12);
    for (const r of results) {
      const ref = REFERENCE[r.policy as keyof typeof REFERENCE][r.capacity]!;
      expect(Math.abs(r.hitRate - ref), `${r.policy} at ${r.capacity}: ${r.hitRate.toFixed(4)} vs ${ref}`).toBeLessThanOrEqual(0.005);
      expect(r.hits + r.misses).toBe(15778);
      expect(r.bytesMoved).toBe(r.misses * 3 * 4096 * 14336);
      expect(r.stallSeconds).toBeCloseTo(r.bytesMoved! / 16e9, 9);
    }
  });

  it("every online policy stays at or below Belady, and the protected-layer mode runs", () => {
    const results = simulate(mixtral, { capacities: [64, 128], policies: ["lru", "lfu", "layer-lru", "score", "shallow", "belady"], protectLayer: true });
    for (const cap of [64, 128]) {
      const best = results.find((r) => r.policy === "belady" && r.capacity === cap)!.hits;
      for (const r of results.filter((x) => x.capacity === cap)) expect(r.hits).toBeLessThanOrEqual(best);
    }
  });

  it("SRP and SCH match the authors' algorithm (ljcleo/moe-lrc) on this trace", () => {
    const seqs = layerSequences(mixtral);
    expect(seqs.length).toBe(64); // 2 problems x 32 layers
    // SCH at C = 1..8 experts per layer, m = 4, from the reference stack algorithm run on this trace.
    const curve = [0.1593, 0.4319, 0.6099, 0.7398, 0.8246, 0.8919, 0.9506, 1.0];
    curve.forEach((v, i) => expect(segmentCacheBestHitRate(seqs, 4, i + 1)).toBeCloseTo(v, 4));
    const c = localRoutingConsistency(mixtral);
    expect(c.schCapacity).toBe(4);
    expect(c.sch[4]).toBeCloseTo(0.7398, 4);
    expect(c.sch[16]).toBeCloseTo(0.6989, 4);
    expect(c.sch[64]).toBeCloseTo(0.6704, 4);
    expect(c.sch[256]).toBeCloseTo(0.6648, 4);
    expect(c.srp[4]).toBeCloseTo(0.6202, 4);
    expect(c.srp[16]).toBeCloseTo(0.4911, 4);
    expect(c.srp[64]).toBeCloseTo(0.4475, 4);
    expect(c.srp[256]).toBeNull(); // no prompt has 256 decoded tokens
  });

  it("round-trips the Mixtral trace (float64 weights) through our JSONL and compact formats", () => {
    expectRoundTrip(mixtral);
    expect(encodeCompactTrace(mixtral).length * 4).toBeLessThan(Buffer.byteLength(formatJsonlTrace(mixtral))); // 21 bytes per top-2 record
  });
});

describe("trace formats", () => {
  it("round-trips the project's trace (with router probs) through our JSONL and compact formats", () => {
    expect(bundled.records.every((r) => r.probs?.length === bundled.meta.numExperts)).toBe(true);
    expectRoundTrip(bundled);
  });

  it("keeps probs and gate inputs, many prompts, wide expert ids and uneven top-k", () => {
    const records: RoutingRecord[] = [];
    for (let seq = 0; seq < 3; seq++) {
      for (let token = 0; token < 4; token++) {
        for (let layer = 0; layer < 2; layer++) {
          const experts = token === 3 ? [299] : [(seq * 7 + token) % 300, 280 + layer];
          records.push({ seq, token, layer, experts, weights: experts.map((_, k) => Math.fround(0.5 + k / 8)), probs: Array.from({ length: 300 }, (_, e) => Math.fround(e / 1000)), gate: [Math.fround(seq), Math.fround(-(token + 1) / 3)] });
        }
      }
    }
    const trace = finishTrace(records.reverse(), { model: "synthetic", expertBytes: 12345 }, "synthetic");
    expect(trace.meta).toEqual({ model: "synthetic", expertBytes: 12345, numLayers: 2, numExperts: 300, topK: 2 });
    expect(decodeCompactTrace(encodeCompactTrace(trace))).toEqual(trace);
    expect(parseJsonlTrace(formatJsonlTrace(trace))).toEqual(trace);
  });

  it("records the runtime's routing decisions", () => {
    const rec = new TraceRecorder({ numExperts: 4 });
    rec.observe(0, 10, 1, { tokens: 2, topK: 2, experts: Int32Array.from([3, 0, 1, 2]), weights: Float32Array.from([0.75, 0.25, 0.5, 0.5]) });
    rec.observe(0, 10, 0, { tokens: 1, topK: 2, experts: Int32Array.from([2, 1]), weights: Float32Array.from([0.5, 0.5]) });
    const t = rec.trace();
    expect(t.records.map((r) => [r.token, r.layer, ...r.experts])).toEqual([[10, 0, 2, 1], [10, 1, 3, 0], [11, 1, 1, 2]]);
    expect(t.meta).toMatchObject({ numLayers: 2, numExperts: 4, topK: 2 });
  });

  it("rejects damaged or inconsistent traces with the place and the reason", () => {
    const bin = encodeCompactTrace({ ...bundled, records: bundled.records.map(({ probs: _, ...r }) => r) });
    expect(() => decodeCompactTrace(bin.subarray(0, bin.length - 100))).toThrow(/truncated: the weights array runs past the end/);
    const withProbs = encodeCompactTrace(bundled);
    expect(() => decodeCompactTrace(withProbs.subarray(0, withProbs.length - 100))).toThrow(/truncated: the probs array runs past the end/);
    expect(() => decodeCompactTrace(Buffer.from("MOETRACE\x04\x00\x00\x00oops"))).toThrow(TraceInvalidError);
    const rec = '{"seq":0,"token":0,"layer":0,"experts":[1,2],"weights":[0.5,0.5]}';
    expect(() => parseJsonlTrace(`${rec}\n{"seq":0,"token":1,"layer":0,"experts":[1,2]`, "t.jsonl")).toThrow(/t\.jsonl:2: not JSON/);
    expect(() => parseJsonlTrace(`${rec}\n${rec}`, "t.jsonl")).toThrow(/appears twice/);
    expect(() => parseJsonlTrace(`${rec.replace("[0.5,0.5]", "[1]")}`, "t.jsonl")).toThrow(/2 experts but 1 weights/);
    expect(() => parseJsonlTrace(`{"format":"moe-run-trace","version":1,"numExperts":2}\n${rec}`)).toThrow(/expert 2 but the header says 2 experts/);
    expect(() => parseJsonlTrace(`${rec.replace('"layer":0', '"layer":-1')}`)).toThrow(/"layer" must be a whole number/);
    expect(() => parseJsonlTrace("")).toThrow(/no routing records/);
    expect(() => readTrace(path.join(os.tmpdir(), "no-such-trace.jsonl"))).toThrow(InvalidOptionError);
    expect(() => detectTraceFormat(Buffer.from('{"hello":1}\n'))).toThrow(/unknown trace format/);
  });
});

describe("moe-run simulate", () => {
  beforeAll(() => {
    // The CLI runs from dist/: rebuild when it is older than the sources it runs.
    const built = path.join(ROOT, "dist", "cli", "commands", "simulateCommand.js");
    const sources = ["src/cli/commands/simulateCommand.ts", "src/cache/ExpertCache.ts", "src/profiling/simulate.ts", "src/profiling/consistency.ts"].map((f) => fs.statSync(path.join(ROOT, f)).mtimeMs);
    if (!fs.existsSync(built) || fs.statSync(built).mtimeMs < Math.max(...sources)) {
      spawnSync(process.execPath, [path.join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", path.join(ROOT, "tsconfig.json")], { stdio: "ignore" });
    }
    expect(fs.statSync(built).mtimeMs).toBeGreaterThanOrEqual(Math.max(...sources));
  }, 180_000);

  const cli = (args: string[]) => spawnSync(process.execPath, [CLI, "simulate", ...args], { encoding: "utf8", timeout: 120_000 });

  it("prints a table and writes the JSON report for the project's trace", () => {
    const total = bundled.meta.numLayers * bundled.meta.numExperts;
    const caps = [total / 4, (total * 3) / 4];
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-sim-")), "sim.json");
    const r = cli([BUNDLED_TRACE, "--capacities", caps.join(","), "--policies", "lru,lfu,belady", "--bandwidth", "8", "--json", out]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/policy\s+capacity\s+hit rate\s+hits\s+misses/);
    expect(r.stdout).toMatch(new RegExp(`^belady\\s+${caps[1]} \\(75%\\)\\s+[01]\\.\\d{4}`, "m"));
    const report = JSON.parse(fs.readFileSync(out, "utf8"));
    expect(report.trace).toMatchObject({ records: bundled.records.length, accesses: accesses(bundled), numLayers: 24, numExperts: 8 });
    expect(report.results.map((x: { policy: string; capacity: number }) => `${x.policy}@${x.capacity}`)).toEqual(["lru", "lfu", "belady"].flatMap((p) => caps.map((c) => `${p}@${c}`)));
    const direct = simulate(bundled, { capacities: caps, policies: ["lru", "lfu", "belady"], bandwidthGBps: 8 });
    for (const x of report.results) {
      expect(Object.keys(x)).toEqual(expect.arrayContaining(["policy", "capacity", "hitRate", "hits", "misses", "bytesMoved", "stallSeconds"]));
      const same = direct.find((d) => d.policy === x.policy && d.capacity === x.capacity)!;
      expect([x.hits, x.misses, x.bytesMoved]).toEqual([same.hits, same.misses, same.bytesMoved]); // the CLI is the library
      expect(x.stallSeconds).toBeCloseTo(x.bytesMoved / 8e9, 6);
    }
    expect(Object.keys(report.consistency.srp)).toEqual(["4", "16", "64", "256"]);
  });

  it.skipIf(MIXTRAL.skip)(`prints a table and writes the JSON report with the reference hit rates for the Mixtral trace${MIXTRAL.note}`, () => {
    const TRACE = MIXTRAL.require();
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "moe-run-sim-")), "sim.json");
    const r = cli([TRACE, "--capacities", "64,192", "--policies", "lru,lfu,belady", "--bandwidth", "8", "--json", out]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/policy\s+capacity\s+hit rate\s+hits\s+misses/);
    expect(r.stdout).toMatch(/^belady\s+192 \(75%\)\s+0\.926\d/m);
    const report = JSON.parse(fs.readFileSync(out, "utf8"));
    expect(report.results.map((x: { policy: string; capacity: number }) => `${x.policy}@${x.capacity}`)).toEqual(["lru@64", "lru@192", "lfu@64", "lfu@192", "belady@64", "belady@192"]);
    for (const x of report.results) {
      expect(Object.keys(x)).toEqual(expect.arrayContaining(["policy", "capacity", "hitRate", "hits", "misses", "bytesMoved", "stallSeconds"]));
      const ref = REFERENCE[x.policy as keyof typeof REFERENCE][x.capacity]!;
      expect(Math.abs(x.hitRate - ref)).toBeLessThanOrEqual(0.005);
      expect(x.stallSeconds).toBeCloseTo(x.bytesMoved / 8e9, 6);
    }
    expect(Object.keys(report.consistency.srp)).toEqual(["4", "16", "64", "256"]);
    expect(report.consistency.srp["4"]).toBeCloseTo(0.6202, 4);
    expect(report.consistency.sch["16"]).toBeCloseTo(0.6989, 4);
    expect(report.consistency.srp["256"]).toBeNull();
  });

  it("fails cleanly on a bad policy, format or trace", () => {
    const bad = cli([BUNDLED_TRACE, "--policies", "lru,fifo"]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^moe-run: error: unknown cache policy "fifo"; known policies: lru, lfu/);
    const fmt = cli([BUNDLED_TRACE, "--format", "csv"]);
    expect(fmt.status).toBe(1);
    expect(fmt.stderr).toMatch(/--format must be one of auto, moe-run, mixtral/);
    const missing = cli([path.join(os.tmpdir(), "no-such-trace.jsonl")]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/cannot read trace .*no-such-trace\.jsonl: ENOENT/);
  });
});
