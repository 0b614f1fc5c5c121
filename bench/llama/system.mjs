/**
 * Machine-level helpers for the llama.cpp comparison bench: memory and disk read bandwidth (the
 * roofline), page-cache eviction of given files, cgroup v1 memory limits, and /proc readers.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
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

/**
 * Memory read bandwidth with `threads` threads: a C/OpenMP array sum when gcc is there, else JS.
 * Default: 1 GiB, best of 6, the better of 4 KiB and huge pages (the start-of-run figure).
 * `quick`: 512 MiB in huge pages only, best of 3 (about half a second: taken before each rep).
 */
export function measureMemoryBandwidth(workDir, threads, log, { quick = false } = {}) {
  const [mebibytes, passes] = quick ? [512, 3] : [1024, 6];
  const started = performance.now();
  try {
    const bin = membwBinary(workDir);
    const out = execFileSync("nice", ["-n", "5", bin, String(threads), String(mebibytes), String(passes), ...(quick ? ["huge"] : [])], { encoding: "utf8" });
    const r = JSON.parse(out);
    const seconds = (performance.now() - started) / 1000;
    if (quick) return { method: "C OpenMP sum of 512 MiB of doubles in huge pages, best of 3", threads, bytesPerSecond: r.hugePages, seconds };
    // The better of 4 KiB pages and transparent huge pages (moe-run's weights are in huge pages).
    return { method: "C OpenMP sum of 1 GiB of doubles, best of 6, the better of 4 KiB and huge pages", threads, bytesPerSecond: r.bytesPerSecond, smallPagesBytesPerSecond: r.smallPages, hugePagesBytesPerSecond: r.hugePages, seconds };
  } catch (err) {
    log?.(`membw: C path unavailable (${String(err.message ?? err).split("\n")[0]}); using a JS Float64Array sum`);
    const a = new Float64Array((mebibytes * 2 ** 20) / 8);
    for (let i = 0; i < a.length; i++) a[i] = i & 1023;
    let best = 0;
    for (let p = 0; p < Math.min(passes, 4); p++) {
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
    const seconds = (performance.now() - started) / 1000;
    return { method: `JS Float64Array sum of ${mebibytes} MiB, 1 thread, best of ${Math.min(passes, 4)} (a lower bound of the hardware's)`, threads: 1, bytesPerSecond: best, seconds };
  }
}

/**
 * The membw binary for this membw.c, built once. Its name carries a hash of the source, so
 * checkouts with different membw.c sharing one --work dir each run their own; built to a temporary
 * name and renamed, so a concurrent run never executes a half-written file.
 */
function membwBinary(workDir) {
  const src = path.join(HERE, "membw.c");
  const hash = createHash("sha256").update(fs.readFileSync(src)).digest("hex").slice(0, 10);
  const bin = path.join(workDir, `membw-${hash}`);
  if (!fs.existsSync(bin)) {
    const tmp = `${bin}.${process.pid}.tmp`;
    execFileSync("gcc", ["-O3", "-march=native", "-ffast-math", "-funroll-loops", "-fopenmp", src, "-o", tmp], { stdio: "pipe" });
    fs.renameSync(tmp, bin);
  }
  return bin;
}

/**
 * Sequential read bandwidth of `file` from storage the way moe-run reads its experts: direct I/O
 * (no page cache), 4 MiB blocks (the block layer splits each into several requests in flight), via
 * `dd iflag=direct`; best of `passes`. Where O_DIRECT is refused (tmpfs, some overlays), buffered
 * 8 MiB reads of the file evicted from the page cache instead (`direct: false`).
 */
export function measureDiskBandwidth(file, { passes = 2 } = {}) {
  spawnSync("sync"); // writes still being flushed would share the disk with these reads
  const left = evictFromPageCache([file]);
  let best;
  for (let i = 0; i < passes; i++) {
    const t0 = performance.now();
    // LC_ALL=C: dd's summary line uses the locale's decimal separator otherwise.
    const r = spawnSync("dd", [`if=${file}`, "of=/dev/null", "bs=4M", "iflag=direct"], { encoding: "utf8", env: { ...process.env, LC_ALL: "C" } });
    const wall = (performance.now() - t0) / 1000;
    if (r.status !== 0) {
      best = undefined;
      break;
    }
    // "2264924160 bytes (2.3 GB, 2.1 GiB) copied, 1.71234 s, 1.3 GB/s"
    const m = /^(\d+) bytes .*copied, ([\d.]+) s/m.exec(r.stderr);
    const bytes = m ? Number(m[1]) : fs.statSync(file).size;
    const seconds = m ? Number(m[2]) : wall;
    if (!best || bytes / seconds > best.bytesPerSecond) best = { bytes, seconds, bytesPerSecond: bytes / seconds };
  }
  if (best) {
    return { method: `dd bs=4M iflag=direct (direct I/O, no page cache), best of ${passes}`, direct: true, file, ...best, residentBeforeBytes: left };
  }
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
  return { method: "sequential 8 MiB buffered reads of a file evicted from the page cache (dd iflag=direct failed here)", direct: false, file, bytes: pos, seconds, bytesPerSecond: pos / seconds, residentBeforeBytes: left };
}

/**
 * moe-run's own read path: every record of a model's expert store read with
 * ExpertStore.readRecord (direct reads where the native addon has them), `inFlight` records at
 * once, in (layer, expert) order; best of `passes`. What the cache's misses cost when they come
 * from disk, to compare with measureDiskBandwidth's sequential figure.
 */
export async function measureReadPath(modelDir, { inFlight = 4, passes = 2 } = {}) {
  // Imported here, not at the top: child.mjs imports this module and must not load the store for nothing.
  const { ExpertStore } = await import("../../dist/store/ExpertStore.js");
  const { releaseRecord } = await import("../../dist/store/RecordFile.js");
  // Writes still being flushed (a model just imported) would share the disk with these reads.
  spawnSync("sync");
  const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, "manifest.json"), "utf8"));
  const d = manifest.dims;
  const file = path.join(modelDir, manifest.experts.store);
  const store = ExpertStore.openReadOnly(file, { hiddenSize: d.hiddenSize, expertFfn: d.expertFfn, encoding: manifest.precision.experts }, { layers: Array.from({ length: d.numLayers }, (_, l) => l), numExperts: d.numExperts });
  const ids = [];
  for (let l = 0; l < d.numLayers; l++) for (let e = 0; e < d.numExperts; e++) ids.push([l, e]);
  let best;
  try {
    for (let p = 0; p < passes; p++) {
      // Direct reads skip the page cache, but a buffered fallback would not: start cold either way.
      evictFromPageCache([file]);
      let next = 0;
      let bytes = 0;
      const worker = async () => {
        while (next < ids.length) {
          const [l, e] = ids[next++];
          const record = await store.readRecord(l, e);
          bytes += record.byteLength;
          releaseRecord(record); // as the cache does on eviction: memory freed at once
        }
      };
      const t0 = performance.now();
      await Promise.all(Array.from({ length: Math.min(inFlight, ids.length) }, worker));
      const seconds = (performance.now() - t0) / 1000;
      if (!best || bytes / seconds > best.bytesPerSecond) best = { bytes, seconds, bytesPerSecond: bytes / seconds };
    }
    return {
      method: `ExpertStore.readRecord of every record, ${inFlight} in flight, best of ${passes}`,
      model: modelDir,
      encoding: manifest.precision.experts,
      records: ids.length,
      recordBytes: manifest.experts.recordBytes,
      inFlight,
      directReads: store.directReads,
      ...best,
    };
  } finally {
    store.close();
    evictFromPageCache([file]);
  }
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
