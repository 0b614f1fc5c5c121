#!/usr/bin/env node
/**
 * A run inside a cgroup v1 memory limit smaller than the model's expert store completes.
 *
 * For each scenario, the model's files are evicted from the page cache, a memory cgroup
 * moe-run-cache-<pid>-<scenario> is created (page cache is charged to it, so the limit is what a
 * machine with that much RAM would offer), and
 *   node dist/cli/cli.js run <model> --prompt P --max-tokens N --temperature 0 [--device-mem X
 *        --host-mem Y] --stats-json F
 * runs inside it (a `sh` writes itself into cgroup.procs and then runs node; after node exits, the
 * sh reads its own /proc/<pid>/io, which by then includes node's counts). Recorded: whether it
 * finished (exit status, OOM kills), decode tokens/s, memory.max_usage_in_bytes, memory.failcnt,
 * read_bytes (bytes read from storage), node's peak RSS, and the stats JSON. Scenarios:
 *   unlimited          : same flags, no memory limit (still in a cgroup, to measure it);
 *   limited            : --limit, below the store's size;
 *   limited-no-budgets : --limit without --device-mem/--host-mem (expected to be OOM-killed:
 *                        the device tier then keeps every expert it loads).
 * The generated text of finished runs must be identical (greedy decoding is lossless).
 * Without a writable cgroup v1 memory controller, it says so and records it.
 *
 *   npx tsc -p tsconfig.json && nice -n 5 node bench/cgroup-run.mjs [--work DIR] [--model DIR]
 *       [--limit 50%|1GiB] [--device-mem 10%] [--host-mem 256MiB] [--max-tokens 16] [--threads N]
 *       [--schedule auto|device|cpu (default: the runtime's)]
 *       [--scenarios unlimited,limited,limited-no-budgets] [--cgroup-parent self|/sys/fs/cgroup/memory]
 *       [--timeout-s 300] [--allow-busy] [--out bench/results/cgroup-run.json]
 * The model defaults to bench/cache-policies.mjs's synthetic model in --work (made if missing).
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { parseByteSize, readManifest } from "../dist/index.js";
import { beNice, checkDistFresh, checkoutInfo, machineInfo, mib, requireQuietMachine, ROOT, table, writeJson } from "./lib/common.mjs";
import { syntheticModel, storeFiles } from "./lib/benchModels.mjs";
import { childrenOf, createMemoryCgroup, evictFromPageCache, listFiles, ownMemoryCgroup, probeCgroupV1, procIo, procStatus, residentBytes } from "./lib/cgroup.mjs";

const { values: args } = parseArgs({
  options: {
    work: { type: "string", default: path.join(os.tmpdir(), "moe-run-cache-bench") },
    model: { type: "string" },
    "synthetic-shape": { type: "string", default: "24L-1024H-3584F-8E-top2" },
    "synthetic-experts": { type: "string", default: "int8" },
    limit: { type: "string", default: "50%" },
    "device-mem": { type: "string", default: "10%" },
    "host-mem": { type: "string", default: "256MiB" },
    "max-tokens": { type: "string", default: "16" },
    prompt: { type: "string", default: "Once upon a time, there was a little robot who wanted to see the sea." },
    threads: { type: "string", default: String(os.availableParallelism()) },
    schedule: { type: "string" },
    scenarios: { type: "string", default: "unlimited,limited,limited-no-budgets" },
    "cgroup-parent": { type: "string", default: "self" },
    "timeout-s": { type: "string", default: "300" },
    "allow-busy": { type: "boolean", default: false },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "cgroup-run.json") },
  },
});
const log = (line) => process.stderr.write(line + "\n");
const nice = beNice(5);
const busy = requireQuietMachine(args["allow-busy"], log);
const dist = checkDistFresh(log);
const started = performance.now();

const parent = args["cgroup-parent"] === "self" ? ownMemoryCgroup() ?? "/sys/fs/cgroup/memory" : args["cgroup-parent"];
const probe = probeCgroupV1(parent);
const base = {
  bench: "cgroup-run",
  date: new Date().toISOString(),
  command: process.argv.slice(1).join(" "),
  machine: machineInfo(),
  checkout: checkoutInfo(),
  dist,
  busy,
  nice,
  cgroup: { version: "v1", parent, available: probe.ok, reason: probe.reason },
};
if (!probe.ok) {
  console.log(`cgroup v1 memory limits are NOT available here: ${probe.reason}\nNothing was run.`);
  writeJson(args.out, { ...base, scenarios: [] });
  process.exit(0);
}

const info = args.model
  ? { name: path.basename(args.model), dir: path.resolve(args.model) }
  : await syntheticModel(args.work, { shape: args["synthetic-shape"], encoding: args["synthetic-experts"], log });
const manifest = readManifest(info.dir);
const store = storeFiles(info.dir);
const storeBytes = store.reduce((a, f) => a + fs.statSync(f).size, 0);
const modelFiles = listFiles(info.dir);
const modelBytes = modelFiles.reduce((a, f) => a + fs.statSync(f).size, 0);
const limitSpec = parseByteSize(args.limit, "limit");
const limitBytes = typeof limitSpec === "number" ? limitSpec : Math.floor((limitSpec.percent / 100) * storeBytes);
if (limitBytes >= storeBytes) log(`warning: --limit ${mib(limitBytes)} MiB is not below the store's ${mib(storeBytes)} MiB`);
const maxTokens = Number(args["max-tokens"]);
const tag = `moe-run-cache-${process.pid}`;

const SCENARIOS = {
  unlimited: { limit: undefined, budgets: true },
  limited: { limit: limitBytes, budgets: true },
  "limited-no-budgets": { limit: limitBytes, budgets: false },
};

function runScenario(name) {
  const sc = SCENARIOS[name];
  if (!sc) throw new Error(`--scenarios: unknown "${name}" (${Object.keys(SCENARIOS).join(", ")})`);
  const residentBefore = residentBytes(modelFiles);
  const residentAfterEvict = evictFromPageCache(modelFiles);
  const cg = createMemoryCgroup(parent, `${tag}-${name}`, sc.limit);
  const statsFile = path.join(os.tmpdir(), `${tag}-${name}.stats.json`);
  const ioFile = path.join(os.tmpdir(), `${tag}-${name}.io`);
  fs.rmSync(statsFile, { force: true });
  fs.rmSync(ioFile, { force: true });
  const cli = [
    path.join(ROOT, "dist", "cli", "cli.js"), "run", info.dir,
    "--prompt", args.prompt, "--max-tokens", String(maxTokens), "--temperature", "0", "--threads", args.threads,
    "--stats-json", statsFile,
    ...(args.schedule ? ["--schedule", args.schedule] : []),
    ...(sc.budgets ? ["--device-mem", args["device-mem"], "--host-mem", args["host-mem"]] : []),
  ];
  // sh joins the group, runs node (a child, not exec: once node is reaped, sh's own /proc io
  // includes node's counts), then saves its io and passes node's status on.
  const script = `echo $$ > '${cg.procs}' || exit 90; "$@"; rc=$?; cat /proc/$$/io > '${ioFile}'; exit $rc`;
  log(`\n[${name}] limit ${sc.limit === undefined ? "none" : `${mib(cg.limitBytes)} MiB`} (store ${mib(storeBytes)} MiB), page cache of the model ${mib(residentBefore)} -> ${mib(residentAfterEvict)} MiB; ${sc.budgets ? `--device-mem ${args["device-mem"]} --host-mem ${args["host-mem"]}` : "no budgets"}`);
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn("/bin/sh", ["-c", script, "sh", process.execPath, ...cli], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    let peak = {};
    let nodePid;
    const poll = setInterval(() => {
      nodePid ??= childrenOf(child.pid)[0];
      const s = nodePid && procStatus(nodePid);
      if (s) peak = { vmHwm: Math.max(peak.vmHwm ?? 0, s.vmHwm || 0), rssAnonMax: Math.max(peak.rssAnonMax ?? 0, s.rssAnon || 0), rssFileMax: Math.max(peak.rssFileMax ?? 0, s.rssFile || 0) };
    }, 100);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {}
    }, Number(args["timeout-s"]) * 1000);
    child.on("close", (code, signal) => {
      clearInterval(poll);
      clearTimeout(timer);
      const wallSeconds = (performance.now() - t0) / 1000;
      const cgStats = cg.stats();
      let io;
      try {
        const text = fs.readFileSync(ioFile, "utf8");
        io = { readBytes: Number(/read_bytes:\s+(\d+)/.exec(text)?.[1]), rchar: Number(/rchar:\s+(\d+)/.exec(text)?.[1]) };
      } catch {
        io = procIo(child.pid);
      }
      let stats;
      try {
        stats = JSON.parse(fs.readFileSync(statsFile, "utf8"));
      } catch {}
      const m = /decode ([\d.]+) tok\/s/.exec(stderr);
      const finished = code === 0 && stats !== undefined;
      const removed = cg.remove();
      fs.rmSync(statsFile, { force: true });
      fs.rmSync(ioFile, { force: true });
      const exitCode = code;
      const result = {
        scenario: name,
        cgroup: cg.dir,
        cgroupRemoved: removed,
        limitBytes: sc.limit === undefined ? null : cgStats.limitBytes,
        budgets: sc.budgets ? { deviceMem: args["device-mem"], hostMem: args["host-mem"] } : null,
        finished,
        exitCode,
        signal,
        timedOut,
        killedByOom: cgStats.oomKills > 0 || exitCode === 137,
        wallSeconds,
        decodeTokPerS: stats?.generation?.decodeTokensPerSecond ?? (m ? Number(m[1]) : null),
        prefillTokPerS: stats?.generation?.prefillTokensPerSecond ?? null,
        generatedTokens: stats?.generation?.generatedTokens ?? null,
        maxUsageBytes: cgStats.maxUsageBytes,
        failcnt: cgStats.failcnt,
        oomKills: cgStats.oomKills,
        cgroupStatAfter: cgStats.stat,
        readBytes: io?.readBytes ?? null,
        rchar: io?.rchar ?? null,
        nodePeak: peak,
        pageCacheBeforeEvictBytes: residentBefore,
        pageCacheAfterEvictBytes: residentAfterEvict,
        text: stdout.replace(/\n$/, ""),
        stderrTail: stderr.split("\n").filter(Boolean).slice(-6),
        stats,
      };
      log(
        `[${name}] ${finished ? "finished" : `did NOT finish (exit ${code}${signal ? `, ${signal}` : ""}${result.killedByOom ? ", OOM-killed" : ""}${timedOut ? ", timed out" : ""})`} in ${wallSeconds.toFixed(1)} s; ` +
          `decode ${result.decodeTokPerS?.toFixed?.(2) ?? "-"} tok/s; max usage ${mib(result.maxUsageBytes)} MiB; read ${mib(result.readBytes)} MiB from storage`
      );
      resolve(result);
    });
  });
}

const scenarios = [];
for (const name of args.scenarios.split(",").filter(Boolean)) scenarios.push(await runScenario(name));

const finished = scenarios.filter((s) => s.finished);
const texts = new Set(finished.map((s) => s.text));
const lossless = finished.length < 2 ? null : texts.size === 1;
const limitedOk = scenarios.find((s) => s.scenario === "limited");
const problems = [];
if (limitedOk && !limitedOk.finished) problems.push(`the limited run (limit ${mib(limitedOk.limitBytes)} MiB, budgets ${args["device-mem"]} / ${args["host-mem"]}) did not finish: exit ${limitedOk.exitCode}, OOM kills ${limitedOk.oomKills}; stderr: ${limitedOk.stderrTail.join(" | ")}`);
if (lossless === false) problems.push(`finished runs generated different text: ${finished.map((s) => `${s.scenario}: ${JSON.stringify(s.text)}`).join(" / ")}`);
for (const s of finished) {
  const dev = s.stats?.tiers?.device;
  if (dev && Number.isFinite(dev.budgetBytes) && dev.residentBytesMax + dev.workingBytes > dev.budgetBytes) problems.push(`${s.scenario}: device tier high-water ${dev.residentBytesMax} + working ${dev.workingBytes} exceeds the budget ${dev.budgetBytes}`);
  const host = s.stats?.tiers?.host;
  if (host && Number.isFinite(host.budgetBytes) && host.enforced && host.residentBytesMax > host.budgetBytes) problems.push(`${s.scenario}: host tier high-water ${host.residentBytesMax} exceeds its budget ${host.budgetBytes}`);
}

const d = manifest.dims;
console.log(
  `### cgroup v1 memory limit below the model (${info.name}: ${d.numLayers} layers, ${d.numExperts} experts x ${d.expertFfn} top-${d.topK}, hidden ${d.hiddenSize}, ${manifest.precision.experts} experts; ` +
    `store ${mib(storeBytes)} MiB, model directory ${mib(modelBytes)} MiB)\n`
);
console.log(`cgroups under ${parent}; model files evicted from the page cache before each run; prompt ${JSON.stringify(args.prompt)}, ${maxTokens} greedy tokens, ${args.threads} threads.\n`);
console.log(
  table(
    ["scenario", "memory limit", "--device-mem / --host-mem", "finished", "decode tok/s", "cgroup max usage", "node peak RSS", "read from storage", "hit rate", "device high-water", "host drops"],
    scenarios.map((s) => [
      s.scenario,
      s.limitBytes === null ? "none" : `${mib(s.limitBytes)} MiB`,
      s.budgets ? `${s.budgets.deviceMem} (${mib(s.stats?.tiers?.device?.budgetBytes)} MiB) / ${s.budgets.hostMem}` : "none",
      s.finished ? "yes" : `no (exit ${s.exitCode}${s.killedByOom ? ", OOM kill" : ""}${s.timedOut ? ", timeout" : ""})`,
      s.decodeTokPerS !== null ? s.decodeTokPerS.toFixed(2) : "-",
      `${mib(s.maxUsageBytes)} MiB`,
      `${mib(s.nodePeak.vmHwm)} MiB`,
      `${mib(s.readBytes)} MiB`,
      s.stats ? `${(100 * s.stats.cache.hitRate).toFixed(1)}%` : "-",
      s.stats ? `${mib(s.stats.tiers.device.residentBytesMax)} MiB` : "-",
      s.stats ? String(s.stats.tiers.host.drops) : "-",
    ])
  )
);
console.log(`\nGenerated text identical across finished runs: ${lossless === null ? "n/a (fewer than 2 finished)" : lossless ? "yes" : "NO"}`);
if (problems.length) console.log(`\nPROBLEMS:\n${problems.map((p) => `- ${p}`).join("\n")}`);
writeJson(args.out, {
  ...base,
  model: { name: info.name, dir: info.dir, dims: d, experts: manifest.precision.experts, storeBytes, modelBytes },
  options: { schedule: args.schedule ?? "(runtime default)", limit: args.limit, limitBytes, deviceMem: args["device-mem"], hostMem: args["host-mem"], maxTokens, prompt: args.prompt, threads: Number(args.threads) },
  scenarios,
  lossless,
  problems,
  seconds: (performance.now() - started) / 1000,
});
log(`wrote ${path.relative(process.cwd(), args.out)}`);
if (problems.length) process.exitCode = 1;
