/**
 * cgroup v1 memory limits for benchmarks (page cache is charged to the group, so a limit below a
 * model's file size simulates a machine whose RAM is smaller than the model), page-cache eviction
 * of files, and /proc readers. Groups are named moe-run-cache-*; by default they are created under
 * this process's own memory cgroup, so that the machine's other groups are left alone.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

export const CGROUP_V1_MEMORY = "/sys/fs/cgroup/memory";

/** This process's memory cgroup directory (cgroup v1), or undefined. */
export function ownMemoryCgroup() {
  try {
    for (const line of fs.readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
      const [, controllers, rel] = line.split(":");
      if (controllers?.split(",").includes("memory")) return path.join(CGROUP_V1_MEMORY, rel ?? "/");
    }
  } catch {}
  return undefined;
}

/**
 * Whether a cgroup v1 memory group can be created under `parent`: { ok: true } or
 * { ok: false, reason } saying what is missing (no v1 memory hierarchy, not writable, ...).
 */
export function probeCgroupV1(parent) {
  if (!fs.existsSync(CGROUP_V1_MEMORY)) {
    const v2 = fs.existsSync("/sys/fs/cgroup/cgroup.controllers");
    return { ok: false, reason: `${CGROUP_V1_MEMORY} does not exist: no cgroup v1 memory controller${v2 ? " (this machine uses cgroup v2 only)" : ""}` };
  }
  if (!fs.existsSync(path.join(parent, "memory.limit_in_bytes"))) return { ok: false, reason: `${parent} is not a cgroup v1 memory group (no memory.limit_in_bytes)` };
  const probe = path.join(parent, `moe-run-cache-probe-${process.pid}`);
  try {
    fs.mkdirSync(probe);
    fs.writeFileSync(path.join(probe, "memory.limit_in_bytes"), String(256 * 1024 * 1024));
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `cannot create and limit a memory cgroup under ${parent}: ${err.message}` };
  } finally {
    try {
      fs.rmdirSync(probe);
    } catch {}
  }
}

/**
 * A fresh memory cgroup `parent/name`; limitBytes undefined leaves it unlimited (still measured).
 * Returns { dir, limitBytes, procs, stats(), remove() }.
 */
export function createMemoryCgroup(parent, name, limitBytes) {
  if (!/^moe-run-cache-[\w.-]+$/.test(name)) throw new Error(`cgroup names must start with moe-run-cache-, got ${name}`);
  const dir = path.join(parent, name);
  if (fs.existsSync(dir)) fs.rmdirSync(dir);
  fs.mkdirSync(dir);
  const file = (f) => path.join(dir, f);
  if (limitBytes !== undefined) fs.writeFileSync(file("memory.limit_in_bytes"), String(limitBytes));
  try {
    fs.writeFileSync(file("memory.swappiness"), "0");
  } catch {}
  const read = (f) => {
    try {
      return fs.readFileSync(file(f), "utf8");
    } catch {
      return undefined;
    }
  };
  return {
    dir,
    limitBytes: Number(read("memory.limit_in_bytes")),
    procs: file("cgroup.procs"),
    stats() {
      const oom = read("memory.oom_control") ?? "";
      const stat = Object.fromEntries(
        (read("memory.stat") ?? "")
          .split("\n")
          .filter(Boolean)
          .map((l) => l.split(" "))
          .map(([k, v]) => [k, Number(v)])
      );
      return {
        limitBytes: Number(read("memory.limit_in_bytes")),
        maxUsageBytes: Number(read("memory.max_usage_in_bytes")),
        usageBytes: Number(read("memory.usage_in_bytes")),
        failcnt: Number(read("memory.failcnt")),
        oomKills: Number(/oom_kill (\d+)/.exec(oom)?.[1] ?? NaN),
        underOom: Number(/under_oom (\d+)/.exec(oom)?.[1] ?? NaN),
        stat: { cache: stat.total_cache ?? stat.cache, rss: stat.total_rss ?? stat.rss, mappedFile: stat.total_mapped_file ?? stat.mapped_file, pgmajfault: stat.total_pgmajfault ?? stat.pgmajfault },
      };
    },
    remove() {
      for (let i = 0; i < 50; i++) {
        try {
          fs.rmdirSync(dir);
          return true;
        } catch (err) {
          if (err.code === "ENOENT") return true;
          spawnSync("sleep", ["0.1"]);
        }
      }
      return false;
    },
  };
}

/** Files under `p` (recursively). */
export function listFiles(p) {
  if (!fs.existsSync(p)) return [];
  const st = fs.statSync(p);
  if (st.isFile()) return [p];
  if (!st.isDirectory()) return [];
  return fs.readdirSync(p).flatMap((f) => listFiles(path.join(p, f)));
}

/** Resident page-cache bytes of `files` (fincore), or undefined when fincore is missing. */
export function residentBytes(files) {
  const r = spawnSync("fincore", ["--bytes", "--noheadings", "--output", "RES", ...files], { encoding: "utf8" });
  if (r.status !== 0) return undefined;
  return r.stdout
    .split("\n")
    .filter(Boolean)
    .reduce((a, l) => a + Number(l.trim()), 0);
}

/** Drops the files' clean pages from the page cache (POSIX_FADV_DONTNEED via dd); returns what stays resident. */
export function evictFromPageCache(files) {
  for (const f of files) {
    spawnSync("dd", [`if=${f}`, "iflag=nocache", "count=0", "status=none"]);
  }
  return residentBytes(files);
}

/** Fields of /proc/<pid>/io and /proc/<pid>/status (VmHWM, VmRSS, RssAnon, RssFile), bytes. */
export function procIo(pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/io`, "utf8");
    const get = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? NaN);
    return { readBytes: get("read_bytes"), rchar: get("rchar"), writeBytes: get("write_bytes") };
  } catch {
    return undefined;
  }
}

export function procStatus(pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? NaN) * 1024;
    return { vmHwm: kb("VmHWM"), vmRss: kb("VmRSS"), rssAnon: kb("RssAnon"), rssFile: kb("RssFile") };
  } catch {
    return undefined;
  }
}

/** Children pids of `pid` (its main thread's). */
export function childrenOf(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
