/**
 * Helpers shared by bench/cache-policies.mjs and bench/cgroup-run.mjs: medians, machine and
 * checkout facts for the JSON, politeness on a shared machine (lower priority, refuse to run beside
 * another heavy benchmark or a training run).
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

export const MiB = 1024 * 1024;
export const mib = (n) => (Number.isFinite(n) ? (n / MiB).toFixed(1) : "-");
export const pct = (x, digits = 1) => (Number.isFinite(x) ? (100 * x).toFixed(digits) : "-");

/** Lowers this process's priority (children inherit it) to at least `nice`. */
export function beNice(nice = 5) {
  try {
    if (os.getPriority() < nice) os.setPriority(nice);
  } catch {}
  return os.getPriority();
}

/** Pids of this process and its ancestors (the shell, `nice`, `npm` that started us). */
function ancestry() {
  const pids = new Set();
  let pid = process.pid;
  for (let i = 0; i < 64 && pid > 1; i++) {
    pids.add(pid);
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      pid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    } catch {
      break;
    }
  }
  return pids;
}

/**
 * Other processes that look like a benchmark or a training run (`ps` args matching bench|train),
 * excluding this process, its ancestors and its descendants.
 */
export function otherHeavyProcesses() {
  let out;
  try {
    out = execFileSync("ps", ["-eo", "pid=,ppid=,pcpu=,args="], { encoding: "utf8" });
  } catch {
    return [];
  }
  const mine = ancestry();
  const rows = out
    .split("\n")
    .filter(Boolean)
    .map((l) => {
      const m = /^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+(.*)$/.exec(l);
      return m && { pid: Number(m[1]), ppid: Number(m[2]), cpu: Number(m[3]), args: m[4] };
    })
    .filter(Boolean);
  // Descendants of this process (children we spawned) are ours too.
  const byPid = new Map(rows.map((x) => [x.pid, x]));
  for (const r of rows) {
    let cur = r;
    for (let i = 0; i < 64 && cur; i++) {
      if (cur.ppid === process.pid) {
        mine.add(r.pid);
        break;
      }
      cur = byPid.get(cur.ppid);
    }
  }
  return rows.filter((r) => !mine.has(r.pid) && /bench|train/.test(r.args) && !/^(ps|grep)\b/.test(r.args));
}

/** Refuses to start (exit 3) while another benchmark or training runs, unless allowed. */
export function requireQuietMachine(allowBusy, log = (l) => process.stderr.write(l + "\n")) {
  const others = otherHeavyProcesses();
  if (others.length === 0) return [];
  const lines = others.map((o) => `  pid ${o.pid} (${o.cpu}% cpu): ${o.args.slice(0, 160)}`);
  if (!allowBusy) {
    log(`another benchmark or training run is active; timings would be meaningless. Wait for it, or pass --allow-busy:\n${lines.join("\n")}`);
    process.exit(3);
  }
  log(`warning: running beside other heavy processes (--allow-busy); timings are not comparable:\n${lines.join("\n")}`);
  return others.map((o) => ({ pid: o.pid, args: o.args.slice(0, 200) }));
}

export function machineInfo() {
  return {
    cpu: os.cpus()[0]?.model,
    cpus: os.cpus().length,
    memTotalBytes: os.totalmem(),
    node: process.version,
    kernel: os.release(),
    loadAvgAtStart: os.loadavg(),
    nice: os.getPriority(),
  };
}

/** The checkout the numbers come from: commit and whether src/ had uncommitted changes. */
export function checkoutInfo() {
  const git = (...a) => {
    try {
      return execFileSync("git", a, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    } catch {
      return undefined;
    }
  };
  const dirty = git("status", "--porcelain", "--", "src", "native-bindings");
  return { commit: git("rev-parse", "HEAD"), srcDirty: dirty ? dirty.split("\n").map((l) => l.trim()) : [] };
}

/** dist/ must be built from the current src/ (`npx tsc -p tsconfig.json`): warn when older. */
export function checkDistFresh(log = (l) => process.stderr.write(l + "\n")) {
  const newest = (dir, ext) => {
    let t = 0;
    const walk = (d) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith(ext)) t = Math.max(t, fs.statSync(p).mtimeMs);
      }
    };
    walk(dir);
    return t;
  };
  if (!fs.existsSync(path.join(ROOT, "dist", "index.js"))) {
    log("dist/ is missing: run `npx tsc -p tsconfig.json` first");
    process.exit(2);
  }
  const src = newest(path.join(ROOT, "src"), ".ts");
  const dist = newest(path.join(ROOT, "dist"), ".js");
  if (src > dist) log("warning: src/ has changes newer than dist/; run `npx tsc -p tsconfig.json` to bench the current code");
  return { distOlderThanSrc: src > dist };
}

/** Writes JSON atomically (tmp + rename). */
export function writeJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = file + ".tmp";
  fs.writeFileSync(tmp, JSON.stringify(value, (_k, v) => (v === Infinity ? "Infinity" : v), 2) + "\n");
  fs.renameSync(tmp, file);
}

/** A markdown table from a header and rows of cells. */
export function table(header, rows) {
  const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`];
  for (const r of rows) lines.push(`| ${r.join(" | ")} |`);
  return lines.join("\n");
}
