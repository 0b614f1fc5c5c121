/**
 * `moe-run report` on the shared Mixtral trace (read in place from ../shared/traces) and on a trace
 * profiled from a bundled model; the HTML is rendered in headless Chromium to a PNG.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT, importFixture, runCli, tmpDir } from "./helpers.js";
import { ensureBuilt } from "./profilingHelpers.js";

const TRACE = path.resolve(ROOT, "..", "shared", "traces", "mixtral-8x7b-gsm8k.jsonl");
const CHROMIUM = "/usr/bin/chromium";

/** ../shared/traces/README.md: one cache over all 256 (layer, expert) pairs, cold start. */
const REFERENCE: Record<"lru" | "lfu" | "belady", Record<number, number>> = {
  lru: { 64: 0.286, 96: 0.351, 128: 0.535, 192: 0.788 },
  lfu: { 64: 0.32, 96: 0.46, 128: 0.59, 192: 0.815 },
  belady: { 64: 0.588, 96: 0.718, 128: 0.81, 192: 0.926 },
};

interface Row {
  capacity: number;
  share: number;
  hitRate: Record<string, number>;
  bestOnline: { policy: string; hitRate: number } | null;
  belady: number | null;
}

let work: string;
let html: string;
let report: { keyCapacities: Row[]; curve: Row[]; predictors?: { name: string; recall: (number | null)[][]; layers: number[] }[]; predictorNote?: string; usage: { counts: number[][] }; consistency: { srp: Record<string, number | null> } };
let stdout: string;

beforeAll(() => {
  if (!fs.existsSync(TRACE)) throw new Error(`the shared routing trace is missing: ${TRACE} (expected ../shared/traces next to the repository)`);
  ensureBuilt();
  work = tmpDir("moe-run-report-");
  const r = runCli(["report", TRACE, "--out", path.join(work, "mixtral.html"), "--json", path.join(work, "mixtral.json")]);
  expect(r.status, r.stderr).toBe(0);
  stdout = r.stdout;
  html = fs.readFileSync(path.join(work, "mixtral.html"), "utf8");
  report = JSON.parse(fs.readFileSync(path.join(work, "mixtral.json"), "utf8"));
}, 300_000);

describe("moe-run report on the Mixtral trace", () => {
  it("has the reference LRU, LFU and Belady hit rates, with the best online policy beside them", () => {
    expect(report.keyCapacities.map((k) => k.capacity)).toEqual([64, 96, 128, 192]);
    for (const k of report.keyCapacities) {
      for (const p of ["lru", "lfu", "belady"] as const) {
        const ref = REFERENCE[p][k.capacity]!;
        expect(Math.abs(k.hitRate[p]! - ref), `${p} at ${k.capacity}: ${k.hitRate[p]} vs ${ref}`).toBeLessThanOrEqual(0.005);
      }
      expect(k.belady).toBe(k.hitRate.belady);
      expect(k.bestOnline).not.toBeNull();
      expect(k.bestOnline!.policy).not.toBe("belady");
      const online = Object.entries(k.hitRate).filter(([p]) => p !== "belady").map(([, h]) => h);
      expect(k.bestOnline!.hitRate).toBe(Math.max(...online));
      expect(k.bestOnline!.hitRate).toBeLessThanOrEqual(k.belady!);
    }
    // The HTML table: each key capacity (25/37.5/50/75%) with LRU, LFU, Belady and the best online policy.
    for (const k of report.keyCapacities) {
      const row = new RegExp(`<tr data-capacity="${k.capacity}">(.*?)</tr>`).exec(html)?.[1];
      expect(row, `table row for capacity ${k.capacity}`).toBeDefined();
      for (const p of ["lru", "lfu", "belady"]) expect(row).toContain(`data-policy="${p}"${p === k.bestOnline!.policy ? ' class="best"' : p === "belady" ? ' class="opt"' : ""}>${k.hitRate[p]!.toFixed(3)}<`);
      expect(row).toContain(`data-policy="best-online">${k.bestOnline!.hitRate.toFixed(3)} <span class="muted">${k.bestOnline!.policy}</span>`);
    }
    for (const cap of [64, 128, 192]) expect(stdout).toMatch(new RegExp(`^${cap} \\(\\d+\\.\\d%\\)\\s.*\\s(lru|lfu|layer-lru|score|shallow) 0\\.\\d{3}\\s+0\\.\\d{3}\\s+0\\.\\d{3}$`, "m"));
  });

  it("has the curve, the usage heatmap, predictor recall and SRP/SCH", () => {
    expect(report.curve.length).toBeGreaterThanOrEqual(16);
    expect(report.curve.at(-1)!.capacity).toBe(256);
    for (const c of report.curve) for (const [p, h] of Object.entries(c.hitRate)) if (p !== "belady") expect(h).toBeLessThanOrEqual(c.hitRate.belady! + 1e-12);
    expect(report.usage.counts.length).toBe(32);
    expect(report.usage.counts.flat().reduce((a, b) => a + b, 0)).toBe(15778);
    expect(report.consistency.srp["4"]).toBeCloseTo(0.6202, 4);
    // Routing-only predictors of src/predict run on any trace; the gate needs gate inputs.
    expect(report.predictors!.map((p) => p.name)).toEqual(["reuse", "affinity"]);
    for (const p of report.predictors!) expect(p.layers).toEqual(Array.from({ length: 31 }, (_, i) => i + 1));
    expect(report.predictorNote).toMatch(/Not shown: gate \(the trace has no gate inputs/);
    // One chart per section, no external assets.
    expect(html.match(/<svg /g)!.length).toBe(3);
    expect(html).toContain("Belady MIN");
    expect(html).toMatch(/<title>layer 31 expert 7: [\d.]+% of selections/);
    expect(html).not.toMatch(/<script|<link|<img|\ssrc=|url\(/i);
    expect(html.replace(/xmlns="http:\/\/www\.w3\.org\/2000\/svg"/g, "")).not.toMatch(/https?:\/\//);
  });

  it("renders in headless Chromium to a non-trivial screenshot", () => {
    if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install it with \`apt-get update && apt-get install -y chromium\``);
    const png = path.join(work, "mixtral.png");
    const r = spawnSync(
      CHROMIUM,
      ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", `--user-data-dir=${path.join(work, "chromium")}`, `--screenshot=${png}`, "--window-size=1200,1600", `file://${path.join(work, "mixtral.html")}`],
      { encoding: "utf8", timeout: 90_000 }
    );
    expect(fs.existsSync(png), `chromium wrote no screenshot (status ${r.status}): ${r.stderr}`).toBe(true);
    const bytes = fs.readFileSync(png);
    expect(bytes.subarray(1, 4).toString("latin1")).toBe("PNG");
    expect([bytes.readUInt32BE(16), bytes.readUInt32BE(20)]).toEqual([1200, 1600]); // IHDR width, height
    expect(bytes.length).toBeGreaterThan(60_000); // charts, heatmap and tables, not a blank page
  }, 120_000);
});

describe("moe-run report on a profiled trace", () => {
  it("evaluates the cross-layer gate predictor with the model's routers, and shows a supplied predictor section", async () => {
    const dir = await importFixture("tiny-mixtral");
    const prompts = path.join(work, "prompts.txt");
    fs.writeFileSync(prompts, "The license\nPermission is hereby granted\n");
    const trace = path.join(work, "tiny.moetrace");
    const p = runCli(["profile", dir, "--prompts", prompts, "-n", "12", "--gate-inputs", "--out", trace, "--threads", "1"]);
    expect(p.status, p.stderr).toBe(0);
    const json = path.join(work, "tiny.json");
    const r = runCli(["report", trace, "--model-dir", dir, "--out", path.join(work, "tiny.html"), "--json", json]);
    expect(r.status, r.stderr).toBe(0);
    const rep = JSON.parse(fs.readFileSync(json, "utf8"));
    expect(rep.predictors.map((x: { name: string }) => x.name)).toEqual(["reuse", "affinity", "gate"]);
    const gate = rep.predictors[2];
    expect(gate.layers).toEqual([1]);
    expect(gate.recall[0][0]).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/^predictor gate: next-layer recall @2 0\.\d{3}/m);
    expect(rep.keyCapacities.map((k: { capacity: number }) => k.capacity)).toEqual([4, 6, 8, 12]);

    const supplied = path.join(work, "predictors.json");
    fs.writeFileSync(supplied, JSON.stringify({ predictors: [{ name: "my-predictor", label: "from elsewhere", ks: [2], layers: [1], recall: [[0.75]], mean: [0.75] }] }));
    const s = runCli(["report", trace, "--predictors", supplied, "--out", path.join(work, "supplied.html")]);
    expect(s.status, s.stderr).toBe(0);
    expect(s.stdout).toMatch(/^predictor my-predictor: next-layer recall @2 0\.750 \(from elsewhere\)/m);
    expect(fs.readFileSync(path.join(work, "supplied.html"), "utf8")).toContain("my-predictor @2");
    fs.writeFileSync(supplied, JSON.stringify({ predictors: [{ name: "x", ks: [2], layers: [1], recall: [[1.5]] }] }));
    const bad = runCli(["report", trace, "--predictors", supplied, "--out", path.join(work, "bad.html")]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/predictors\[0\] needs "name", "ks", "layers" and "recall"/);
  });
});
