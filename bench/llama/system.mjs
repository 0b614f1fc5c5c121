/**
 * Machine-level helpers for the llama.cpp comparison bench: memory and disk read bandwidth (the
 * roofline), page-cache eviction of given files, cgroup v1 memory limits, and /proc readers.
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CGROUP_ROOT = "/sys/fs/cgroup/memory";

/** VmHWM / VmRSS / RssAnon / RssFile of a process, bytes (undefined where unreadable). */
export function procStatus(pid = "self") {
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (key) => {
      const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text);
      return m ? Number(m[1]) * 1024 : undefined;
    };
    return { vmHwm: kb("VmHWM"), vmRss: kb("VmRSS"), rssAnon: kb("RssAnon"), rssFile: kb("RssFile") };
  } catch {
    return {};
  }
}

/** read_bytes of /proc/<pid>/io: bytes this process caused to be read from storage. */
export function procReadBytes(pid = "self") {
  try {
    const m = /^read_bytes:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/io`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Files (recursively for folders) whose pages should leave the page cache. */
function listFiles(p) {
  if (!fs.existsSync(p)) return [];
  const st = fs.statSync(p);
  if (st.isFile()) return [p];
  return fs.readdirSync(p).flatMap((f) => listFiles(path.join(p, f)));
}

/**
 * Drops the given files' pages from the page cache (fsync, then POSIX_FADV_DONTNEED via
 * `dd iflag=nocache count=0`), without touching other processes' cached files. Returns the
 * bytes still resident according to fincore, when available.
 */
export function evictFromPageCache(paths) {
  const files = paths.flatMap(listFiles);
  for (const f of files) {
    spawnSync("sync", [f]);
    spawnSync("dd", [`if=${f}`, "iflag=nocache", "count=0", "status=none"]);
  }
  return residentBytes(files);
}

export function residentBytes(files) {
  try {
    const out = execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", ...files], { encoding: "utf8" });
    return out.split("\n").filter(Boolean).reduce((a, l) => a + Number(l.trim()), 0);
  } catch {
    return undefined;
  }
}

/** Memory read bandwidth with `threads` threads: a C/OpenMP array sum when gcc is there, else JS. */
export function measureMemoryBandwidth(workDir, threads, log) {
  const bin = path.join(workDir, "membw");
  try {
    if (!fs.existsSync(bin) || fs.statSync(bin).mtimeMs < fs.statSync(path.join(HERE, "membw.c")).mtimeMs) {
      execFileSync("gcc", ["-O3", "-march=native", "-ffast-math", "-funroll-loops", "-fopenmp", path.join(HERE, "membw.c"), "-o", bin], { stdio: "pipe" });
    }
    const out = execFileSync("nice", ["-n", "5", bin, String(threads), "1024", "6"], { encoding: "utf8" });
    const r = JSON.parse(out);
    return { method: "C OpenMP sum of 1 GiB of doubles, best of 6", threads, bytesPerSecond: r.bytesPerSecond };
  } catch (err) {
    log?.(`membw: C path unavailable (${String(err.message ?? err).split("\n")[0]}); using a JS Float64Array sum`);
    const a = new Float64Array(128 * 1024 * 1024); // 1 GiB
    for (let i = 0; i < a.length; i++) a[i] = i & 1023;
    let best = 0;
    for (let p = 0; p < 4; p++) {
      const t0 = performance.now();
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < a.length; i += 4) {
        s0 += a[i];
        s1 += a[i + 1];
        s2 += a[i + 2];
        s3 += a[i + 3];
      }
      const dt = (performance.now() - t0) / 1000;
      if (s0 + s1 + s2 + s3 < 0) log?.("impossible");
      best = Math.max(best, a.byteLength / dt);
    }
    return { method: "JS Float64Array sum, 1 thread, best of 4 (a lower bound of the hardware's)", threads: 1, bytesPerSecond: best };
  }
}

/** Sequential read bandwidth of `file` from storage: evict it, then read it in 8 MiB chunks. */
export function measureDiskBandwidth(file) {
  const left = evictFromPageCache([file]);
  const fd = fs.openSync(file, "r");
  const buf = Buffer.allocUnsafe(8 << 20);
  const size = fs.fstatSync(fd).size;
  const t0 = performance.now();
  let pos = 0;
  while (pos < size) {
    const n = fs.readSync(fd, buf, 0, buf.length, pos);
    if (n === 0) break;
    pos += n;
  }
  const seconds = (performance.now() - t0) / 1000;
  fs.closeSync(fd);
  evictFromPageCache([file]);
  return { method: "sequential 8 MiB reads of a file evicted from the page cache (fadvise DONTNEED)", file, bytes: pos, seconds, bytesPerSecond: pos / seconds, residentBeforeBytes: left };
}

/**
 * A fresh cgroup v1 memory group with a hard limit (page cache included). Returns
 * { name, dir, wrap(argv) -> argv that puts the command in the group, stats(), remove() },
 * or { error } when the memory controller is not writable here.
 */
export function createMemoryCgroup(name, limitBytes) {
  const dir = path.join(CGROUP_ROOT, name);
  try {
    if (!fs.existsSync(CGROUP_ROOT)) throw new Error(`${CGROUP_ROOT} does not exist (no cgroup v1 memory controller)`);
    if (fs.existsSync(dir)) fs.rmdirSync(dir);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "memory.limit_in_bytes"), String(limitBytes));
    const set = Number(fs.readFileSync(path.join(dir, "memory.limit_in_bytes"), "utf8"));
    try {
      // No swap here, but keep swap out of the picture where there is some.
      fs.writeFileSync(path.join(dir, "memory.swappiness"), "0");
    } catch {}
    const read = (f) => {
      try {
        return fs.readFileSync(path.join(dir, f), "utf8");
      } catch {
        return undefined;
      }
    };
    return {
      name,
      dir,
      limitBytes: set,
      /** sh puts itself into the group, then execs the command (same pid). */
      wrap: (argv) => ["/bin/sh", ["-c", `echo $$ > ${path.join(dir, "cgroup.procs")} && exec "$@"`, "sh", ...argv]],
      stats: () => {
        const oom = read("memory.oom_control") ?? "";
        const kills = /oom_kill (\d+)/.exec(oom);
        return {
          maxUsageBytes: Number(read("memory.max_usage_in_bytes") ?? NaN),
          failcnt: Number(read("memory.failcnt") ?? NaN),
          oomKills: kills ? Number(kills[1]) : undefined,
        };
      },
      remove: () => {
        for (let i = 0; i < 20; i++) {
          try {
            fs.rmdirSync(dir);
            return;
          } catch {
            spawnSync("sleep", ["0.1"]);
          }
        }
      },
    };
  } catch (err) {
    return { error: `could not create cgroup ${dir}: ${err.message}` };
  }
}

export function machineInfo() {
  return {
    cpu: os.cpus()[0]?.model,
    cpus: os.cpus().length,
    memTotalBytes: os.totalmem(),
    node: process.version,
    kernel: os.release(),
    loadAvgAtStart: os.loadavg(),
  };
}
