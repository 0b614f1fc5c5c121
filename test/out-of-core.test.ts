/**
 * Models larger than memory: the store is read with direct I/O (no page-cache copy), greedy output
 * is identical at every budget, host-tier size, predictor and plan; the automatic memory plan keeps
 * a run inside a cgroup limit smaller than the model (skipped, with the reason, where cgroups
 * cannot be made); a damaged store is a clear error, never a signal.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
// @ts-expect-error plain ES module shared with the benches (no type declarations)
import { createMemoryCgroup, ownMemoryCgroup, probeCgroupV1 } from "../bench/lib/cgroup.mjs";
import { loadModel, type LoadModelOptions } from "../src/index.js";
import { importModel } from "../src/importer/importModel.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import type { MemoryLimits } from "../src/model/memoryPlan.js";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { ExpertStore } from "../src/store/ExpertStore.js";
import { releaseRecord, retainRecord } from "../src/store/RecordFile.js";
import { CLI, MODELS, greedyRun, importFixture, runCli, tmpDir } from "./helpers.js";
import { spawnSync } from "node:child_process";

const MiB = 2 ** 20;
const PROMPT = "And God said, Let there be light";

/** Greedy ids of PROMPT (32 tokens by default) with these options, and the cache stats. */
function greedy(dir: string, options: LoadModelOptions, tokens = 32) {
  return greedyRun(dir, PROMPT, tokens, options);
}

/** Limits as if this process could use only `availableBytes` more. */
function limitsOf(availableBytes: number): MemoryLimits {
  return { limitBytes: availableBytes, source: "cgroup-v1", availableBytes, memTotalBytes: availableBytes, memAvailableBytes: availableBytes };
}

describe("out-of-core decode from the store on disk", () => {
  let dir: string;
  let reference: number[];
  let expertBytes: number;
  let recordBytes: number;
  beforeAll(async () => {
    dir = await importFixture("moe-tiny-en");
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
    recordBytes = manifest.experts.recordBytes;
    expertBytes = recordBytes * manifest.dims.numLayers * manifest.dims.numExperts;
    reference = (await greedy(dir, {})).ids;
  });

  it("records are read with direct I/O and are not left in the page cache", async () => {
    const addon = loadNativeAddon().addon!;
    const r = await greedy(dir, { deviceMem: { percent: 25 } });
    expect(r.ids).toEqual(reference);
    const host = r.stats.tiers.host;
    expect(host.reads).toBeGreaterThan(0);
    // O_DIRECT on this filesystem (ext4, xfs, ...); tmpfs has none and falls back to dropped buffered reads.
    const fsHasDirect = spawnSync("dd", [`if=${path.join(dir, "experts.mdb")}`, "of=/dev/null", "bs=4096", "count=1", "iflag=direct"]).status === 0;
    expect(host.directReads).toBe(fsHasDirect);
    const store = path.join(dir, "experts.mdb");
    expect(addon.fileResidency(store).residentBytes).toBeLessThan(0.05 * fs.statSync(store).size);
  });

  it("greedy output is identical at every budget, host tier, predictor and prefetch setting", async () => {
    const cases: [string, LoadModelOptions][] = [
      ["25% device, no host tier", { deviceMem: { percent: 25 }, hostMem: 0 }],
      ["10% device, 50% host", { deviceMem: { percent: 10 }, hostMem: { percent: 50 } }],
      ["minimum device, gate prefetch forced", { deviceMem: { percent: 1 }, predictor: "gate", prefetch: true, prefetchDepth: 2 }],
      ["50% device, lfu, reuse prefetch", { deviceMem: { percent: 50 }, policy: "lfu", predictor: "reuse", prefetch: true }],
      ["planned from a small limit, cpu schedule", { memoryLimits: limitsOf(64 * MiB + 40 * recordBytes), schedule: "cpu" }],
    ];
    for (const [name, options] of cases) {
      let r: Awaited<ReturnType<typeof greedy>>;
      try {
        r = await greedy(dir, options);
      } catch (err) {
        // 1% may be below the minimum: then the minimum itself is what the case means.
        if (!/below the minimum .*\((\d+) bytes\)/.test(String(err))) throw err;
        const min = Number(/\((\d+) bytes\)/.exec(String(err))![1]);
        r = await greedy(dir, { ...options, deviceMem: min });
      }
      expect(r.ids, name).toEqual(reference);
      expect(r.stats.cache.residentBytesMax, name).toBeLessThanOrEqual(r.stats.cache.budgetBytes);
      expect(r.stats.tiers.host.residentBytesMax, name).toBeLessThanOrEqual(r.stats.tiers.host.budgetBytes);
      expect(r.stats.cache.misses, name).toBeGreaterThan(0);
    }
  });

  it("the automatic plan sizes the device tier from the limit and reports itself", async () => {
    const available = 64 * MiB + 40 * recordBytes; // room for ~(40 - 4 in flight) records past the margin
    const r = await greedy(dir, { memoryLimits: limitsOf(available) });
    expect(r.ids).toEqual(reference);
    const plan = r.stats.memoryPlan!;
    expect(plan.source).toBe("cgroup-v1");
    expect(plan.deviceFrom).toBe("plan");
    expect(plan.allExpertsFit).toBe(false);
    expect(plan.deviceBytes).toBeLessThan(expertBytes);
    expect(plan.deviceBytes + plan.kvBytes + plan.workingBytes + plan.marginBytes).toBeLessThanOrEqual(available);
    expect(plan.hostBytes).toBe(0); // CPU kernels: the device tier is the one copy of a record
    expect(r.stats.cache.budgetBytes).toBe(plan.deviceBytes);
    expect(r.stats.cache.hitRate).toBeLessThan(1);
    // Everything fits: no budget, every expert read once.
    const all = await greedy(dir, { memoryLimits: limitsOf(16 * 2 ** 30) });
    expect(all.stats.memoryPlan!.allExpertsFit).toBe(true);
    expect(all.stats.tiers.host.bytesRead).toBeLessThanOrEqual(expertBytes);
  });

  it("a record's memory is freed when its last owner releases it, not at the next GC", () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
    const d = manifest.dims;
    const store = ExpertStore.openReadOnly(path.join(dir, "experts.mdb"), { hiddenSize: d.hiddenSize, expertFfn: d.expertFfn, encoding: manifest.precision.experts });
    try {
      const a = store.getRecord(0, 1);
      const copy = a.slice();
      retainRecord(a); // a second owner (a tier)
      releaseRecord(a);
      expect(a).toEqual(copy); // still owned: intact
      releaseRecord(a);
      expect(a.byteLength).toBe(0); // freed: the buffer is detached, a later use cannot reach freed memory
      expect(store.getRecord(0, 1)).toEqual(copy);
    } finally {
      store.close();
    }
  });

  it.skipIf(!loadNativeAddon().addon)("blocks of 2 MiB and more (huge-page aligned, tail in small pages) hold every byte and give all of it back at release", () => {
    const addon = loadNativeAddon().addon!;
    // Sizes around the 2 MiB boundary and an expert-like odd size (a 9.3 MiB record).
    const sizes = [2 * MiB - 4096, 2 * MiB, 2 * MiB + 4096, 4 * MiB, 9_751_552 + 3, 16 * MiB + 12345];
    const blocks: Uint8Array[] = [];
    for (let round = 0; round < 4; round++) for (const n of sizes) blocks.push(addon.allocRange(n).subarray(0, n));
    const total = blocks.reduce((s, b) => s + b.byteLength, 0);
    const rssFull = () => process.memoryUsage().rss;
    // Each block written end to end with its own pattern, then read back: no two overlap.
    blocks.forEach((b, i) => b.fill((i * 37 + 11) & 255));
    const rssTouched = rssFull();
    blocks.forEach((b, i) => {
      expect(b[0], `block ${i} start`).toBe((i * 37 + 11) & 255);
      expect(b[b.byteLength - 1], `block ${i} end`).toBe((i * 37 + 11) & 255);
      for (let at = 0; at < b.byteLength; at += 4096) if (b[at] !== ((i * 37 + 11) & 255)) expect.fail(`block ${i}: byte ${at} was overwritten`);
    });
    for (const b of blocks) addon.releaseRange(b);
    for (const b of blocks) expect(b.byteLength).toBe(0);
    // munmap gives the pages back at once: at least 90% of what was written leaves the RSS.
    expect(rssTouched - rssFull()).toBeGreaterThan(0.9 * total);
  });

  it("too little memory is refused with the minimum named", async () => {
    await expect(loadModel(dir, { threads: 1, log: () => {}, memoryLimits: limitsOf(20 * MiB) })).rejects.toThrow(/not enough memory to run this model: .*below the minimum [\d.]+ (KiB|MiB) \(\d+ bytes\)/);
  });
});

describe("a damaged expert store is an error, not a signal", () => {
  let base: string;
  beforeAll(async () => {
    base = await importFixture("tiny-mixtral");
  });
  const damage: [string, (file: string) => void][] = [
    ["truncated to half", (f) => fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2))],
    ["truncated to 4096 bytes", (f) => fs.truncateSync(f, 4096)],
    ["truncated to 0 bytes", (f) => fs.truncateSync(f, 0)],
    [
      "meta pages XORed",
      (f) => {
        const fd = fs.openSync(f, "r+");
        const buf = Buffer.alloc(8192);
        fs.readSync(fd, buf, 0, buf.length, 0);
        for (let i = 0; i < 200; i++) buf[i] ^= 0xff;
        for (let i = 4096; i < 4096 + 200; i++) buf[i] ^= 0xff;
        fs.writeSync(fd, buf, 0, buf.length, 0);
        fs.closeSync(fd);
      },
    ],
  ];
  for (const [name, apply] of damage) {
    it(name, () => {
      const dir = path.join(tmpDir(), "m");
      fs.cpSync(base, dir, { recursive: true });
      apply(path.join(dir, "experts.mdb"));
      for (const extra of [[], ["--verify"]]) {
        const r = runCli(["run", dir, "--prompt", "hi", "-n", "4", ...extra]);
        expect(r.status, `${name} ${extra.join(" ")}: ${r.stderr}`).toBe(1);
        expect(r.stderr).toMatch(/expert store|experts\.mdb|re-import/);
        expect(r.stderr).not.toMatch(/^\s+at /m); // one clear line, no stack trace
      }
    });
  }
});

describe("a model larger than its cgroup memory limit, default options", () => {
  const parent = ownMemoryCgroup();
  const probe = parent ? probeCgroupV1(parent) : { ok: false, reason: "this process is in no cgroup v1 memory group" };
  it.skipIf(!probe.ok)(`completes inside the limit with the same output${probe.ok ? "" : ` (skipped: ${probe.reason})`}`, async () => {
    const hf = path.join(tmpDir(), "oversize-hf");
    // 8 layers x 16 experts x 3 MiB (f16) = 384 MiB of experts.
    writeSyntheticCheckpoint(hf, {
      tokenizerFrom: path.join(MODELS, "tiny-mixtral"),
      vocabSize: 512,
      hiddenSize: 512,
      numLayers: 8,
      numHeads: 8,
      numKvHeads: 2,
      numExperts: 16,
      topK: 2,
      expertFfn: 1024,
      maxPositions: 256,
      dtype: "BF16",
      seed: 11,
    });
    const dir = path.join(tmpDir(), "oversize");
    await importModel(hf, dir, { experts: "f16", progress: false, log: () => {} });
    fs.rmSync(hf, { recursive: true, force: true });
    const files = fs.readdirSync(dir, { recursive: true }).map((f) => path.join(dir, String(f))).filter((f) => fs.statSync(f).isFile());
    const modelBytes = files.reduce((a, f) => a + fs.statSync(f).size, 0);
    const args = [CLI, "run", dir, "--prompt", PROMPT, "-n", "12", "--threads", "1", "--stats"];
    const free = spawnSync(process.execPath, args, { encoding: "utf8", timeout: 300_000 });
    expect(free.status, free.stderr).toBe(0);
    const limit = 320 * MiB;
    expect(modelBytes).toBeGreaterThan(limit);
    const cg = createMemoryCgroup(parent, `moe-run-cache-test-${process.pid}`, limit);
    try {
      const r = spawnSync("sh", ["-c", `echo $$ > "${cg.procs}" && exec "$0" "$@"`, process.execPath, ...args], { encoding: "utf8", timeout: 300_000 });
      const s = cg.stats();
      expect(r.signal, r.stderr).toBeNull();
      expect(r.status, r.stderr).toBe(0);
      expect(s.oomKills || 0).toBe(0);
      expect(r.stdout).toBe(free.stdout);
      expect(r.stderr).toMatch(/memory plan: limit 320\.00 MiB \(cgroup-v1\)/);
      expect(s.maxUsageBytes).toBeLessThanOrEqual(limit);
    } finally {
      cg.remove();
    }
  });
});
