/**
 * `import` never loses the user's files, never publishes a corrupt model and answers bad input
 * with one line (issue 17, items 2, 3, 7, 8, 9 and 10 on the import side). These run the real CLI
 * (dist/, built by `pretest`) on copies of the bundled checkpoints, with real files, links, FIFOs,
 * small file systems and processes killed with SIGKILL.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { importModel } from "../src/importer/importModel.js";
import { loadModel } from "../src/model/loadModel.js";
import { CLI, MODELS, copyFixture, importFixture, tmpDir } from "./helpers.js";

// ---------------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------------

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The real CLI, with an optional working directory and user (for permission tests as root). */
function cli(args: string[], o: { cwd?: string; uid?: number; gid?: number; timeoutMs?: number } = {}): Run {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: "utf8",
    timeout: o.timeoutMs ?? 120_000,
    cwd: o.cwd,
    uid: o.uid,
    gid: o.gid,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t0 };
}

/** A failure as the project promises it: non-zero exit (not a signal), one line on stderr, no stack. */
function expectCleanFailure(r: Run, pattern: RegExp): void {
  expect(r.signal, `killed by ${r.signal}; stderr: ${r.stderr}`).toBeNull();
  expect(r.status).not.toBe(0);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(r.stderr.trim().split("\n"), r.stderr).toHaveLength(1);
}

/** Every file under `root` (links not followed): relative path -> type, size and sha256. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    const p = path.join(root, rel);
    const st = fs.lstatSync(p);
    if (st.isSymbolicLink()) out[rel] = `link -> ${fs.readlinkSync(p)}`;
    else if (st.isDirectory()) {
      out[rel] = "dir";
      for (const name of fs.readdirSync(p)) walk(path.join(rel, name));
    } else if (st.isFile()) out[rel] = `file ${st.size} ${createHash("sha256").update(fs.readFileSync(p)).digest("hex")}`;
    else out[rel] = "special";
  };
  walk("");
  return out;
}

/** A safetensors file's header and data (the bytes after the header). */
function readSafetensors(file: string): { header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; data: Buffer } {
  const bytes = fs.readFileSync(file);
  const len = Number(bytes.readBigUInt64LE(0));
  return { header: JSON.parse(bytes.subarray(8, 8 + len).toString("utf8")), data: bytes.subarray(8 + len) };
}

function writeSafetensorsRaw(file: string, header: object, data: Buffer): void {
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), data]));
}

/** Overwrites element `index` of tensor `name` in a safetensors file with raw little-endian bits. */
function pokeElement(file: string, name: string, index: number, bits: number): void {
  const { header, data } = readSafetensors(file);
  const e = header[name]!;
  expect(e, `${name} in ${file}`).toBeDefined();
  const width = e.dtype === "F32" ? 4 : 2;
  const at = e.data_offsets[0] + index * width;
  if (width === 4) data.writeUInt32LE(bits >>> 0, at);
  else data.writeUInt16LE(bits & 0xffff, at);
  writeSafetensorsRaw(file, header, data);
}

function sha256(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/** A model directory passes the strictest check the runtime has (every file's sha256, every expert). */
async function expectVerifies(dir: string): Promise<void> {
  const model = await loadModel(dir, { verify: true, threads: 1, log: () => {} });
  await model.dispose();
}

function manifestOf(dir: string): { precision: { experts: string } } {
  return JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode as NodeJS.Signals | null });
    else child.once("exit", (code, signal) => resolve({ code, signal }));
  });
}

function startImport(args: string[]): { child: ChildProcess; stderr: () => string; done: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const child = spawn(process.execPath, [CLI, "import", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const done = exitOf(child);
  return { child, stderr: () => err, done };
}

function until(cond: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const timer = setInterval(() => {
      if (cond()) {
        clearInterval(timer);
        resolve();
      } else if (Date.now() - t0 > timeoutMs) {
        clearInterval(timer);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, 5);
  });
}

/** Mounts a tmpfs of `size` (root only); undefined where this machine does not allow it. */
function mountTmpfs(size: string, extra = ""): string | undefined {
  const mnt = tmpDir("moe-run-tmpfs-");
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size}${extra}`, "tmpfs", mnt]);
  if (r.status !== 0) {
    console.warn(`skipped: cannot mount a tmpfs here (${r.stderr?.toString().trim()})`);
    return undefined;
  }
  return mnt;
}

const TINY = path.join(MODELS, "tiny-mixtral");
const EN = path.join(MODELS, "moe-tiny-en");

// ---------------------------------------------------------------------------------------------
// Item 2: two imports into one directory; killed importers
// ---------------------------------------------------------------------------------------------

describe("one import at a time into a model directory", () => {
  it("a second importer stops with a clear message and leaves the first one's work alone", async () => {
    const parent = tmpDir();
    const out = path.join(parent, "cc");
    const first = startImport([EN, out]); // progress on: it prints once the lock is held and work started
    await until(() => /import \d+%/.test(first.stderr()) || first.child.exitCode !== null, "the first import's progress");
    expect(first.child.exitCode).toBeNull();
    // Stopped (not killed) while it holds the lock, so the second one surely meets it at work.
    first.child.kill("SIGSTOP");
    let second: Run;
    try {
      second = cli(["import", EN, out, "--experts", "int8", "--no-progress"]);
    } finally {
      first.child.kill("SIGCONT");
    }
    expectCleanFailure(second, new RegExp(`another import into .*cc is running \\(pid ${first.child.pid}\\)`));
    const r = await first.done;
    expect(r.code, first.stderr()).toBe(0);
    expect(fs.readdirSync(parent)).toEqual(["cc"]);
    expect(manifestOf(out).precision.experts).toBe("f32");
    await expectVerifies(out);
  }, 180_000);

  it("two imports in one process: the second is refused, the first publishes", async () => {
    const parent = tmpDir();
    const out = path.join(parent, "m");
    const a = importModel(TINY, out, { progress: false, log: () => {} });
    const b = importModel(TINY, out, { progress: false, log: () => {}, experts: "int8" });
    const [ra, rb] = await Promise.allSettled([a, b]);
    expect(ra.status).toBe("fulfilled");
    expect(rb.status).toBe("rejected");
    expect((rb as PromiseRejectedResult).reason).toMatchObject({ code: "IMPORT_IN_PROGRESS" });
    expect(String((rb as PromiseRejectedResult).reason.message)).toMatch(new RegExp(`another import into .*m is running \\(pid ${process.pid}\\)`));
    expect(fs.readdirSync(parent)).toEqual(["m"]);
    await expectVerifies(out);
  });

  it("a stale lock left by a killed importer is taken over; a lock that is not moe-run's is not", () => {
    const parent = tmpDir();
    const out = path.join(parent, "m");
    const dead = spawnSync("true").pid; // exited: its pid is free
    fs.writeFileSync(`${out}.import-lock`, JSON.stringify({ moeRunImport: 1, pid: dead, host: os.hostname(), start: null, token: "0123456789abcdef" }));
    const r = cli(["import", TINY, out, "--no-progress"]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readdirSync(parent)).toEqual(["m"]);

    const other = path.join(parent, "n");
    fs.writeFileSync(`${other}.import-lock`, "user notes\n");
    expectCleanFailure(cli(["import", TINY, other, "--no-progress"]), /n\.import-lock exists but is not a moe-run import lock/);
    expect(fs.readFileSync(`${other}.import-lock`, "utf8")).toBe("user notes\n");
    expect(fs.existsSync(other)).toBe(false);
  });

  it("fault test: SIGKILL at random points and concurrent importers never publish a bad model", async () => {
    const seed = Number(process.env.MOE_RUN_FAULT_SEED ?? Date.now() % 1_000_000);
    let s = seed || 1;
    const random = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    const note = `(seed ${seed}; MOE_RUN_FAULT_SEED=${seed} repeats it)`;
    const source = snapshot(EN);
    const parent = tmpDir();
    const out = path.join(parent, "m");
    const allowedAfterKill = /^m(\.importing|\.import-lock|\.import-lock\.\d+\.[0-9a-f]{16}\.tmp|\.import-lock\.stale-\d+-[0-9a-f]{16}|\.replaced-\d+)?$/;
    const precisions = ["f32", "int8", "f16"];

    const t0 = performance.now();
    const full = startImport([EN, out, "--no-progress"]);
    expect((await full.done).code, full.stderr()).toBe(0);
    const fullMs = performance.now() - t0;

    let published = 0;
    for (let i = 0; i < 5; i++) {
      const delay = 30 + random() * fullMs;
      const run = startImport([EN, out, "--force", "--no-progress", "--experts", precisions[i % 3]!]);
      await new Promise((r) => setTimeout(r, delay));
      run.child.kill("SIGKILL");
      const r = await run.done;
      expect(r.code === 0 || r.signal === "SIGKILL", `kill ${i} at ${delay.toFixed(0)} ms ${note}: ${run.stderr()}`).toBe(true);
      for (const name of fs.readdirSync(parent)) expect(name, `kill ${i} at ${delay.toFixed(0)} ms ${note}`).toMatch(allowedAfterKill);
      if (fs.existsSync(out)) {
        published++;
        await expectVerifies(out);
      }
    }

    for (let i = 0; i < 3; i++) {
      const pa = precisions[i % 3]!;
      const pb = precisions[(i + 1) % 3]!;
      const a = startImport([EN, out, "--force", "--no-progress", "--experts", pa]);
      const b = startImport([EN, out, "--force", "--no-progress", "--experts", pb]);
      const [ra, rb] = await Promise.all([a.done, b.done]);
      const results = [
        { r: ra, err: a.stderr(), precision: pa },
        { r: rb, err: b.stderr(), precision: pb },
      ];
      for (const x of results) {
        if (x.r.code !== 0) {
          expect(x.r.signal, x.err).toBeNull();
          expect(x.err, `round ${i} ${note}`).toMatch(/another import into .* is running \(pid \d+\)/);
          expect(x.err.trim().split("\n")).toHaveLength(1);
        }
      }
      const winners = results.filter((x) => x.r.code === 0);
      expect(winners.length, `round ${i} ${note}: ${a.stderr()} / ${b.stderr()}`).toBeGreaterThanOrEqual(1);
      expect(fs.readdirSync(parent), `round ${i} ${note}`).toEqual(["m"]);
      expect(winners.map((w) => w.precision)).toContain(manifestOf(out).precision.experts);
      await expectVerifies(out);
      published++;
    }
    expect(published).toBeGreaterThanOrEqual(3);
    expect(snapshot(EN), `the checkpoint was touched ${note}`).toEqual(source);
  }, 300_000);
});

// ---------------------------------------------------------------------------------------------
// Item 3: --force replaces only a moe-run model directory
// ---------------------------------------------------------------------------------------------

describe("import --force replaces only a moe-run model directory", () => {
  it("refuses the checkpoint's parent (and keeps the checkpoint and the file beside it)", () => {
    const par = tmpDir();
    const hf = path.join(par, "hf");
    fs.cpSync(TINY, hf, { recursive: true });
    fs.writeFileSync(path.join(par, "notes.txt"), "mine\n");
    const before = snapshot(par);
    expectCleanFailure(cli(["import", hf, par, "--force", "--no-progress"]), /refusing to replace .*: it holds the checkpoint being imported/);
    expect(snapshot(par)).toEqual(before);
  });

  it("refuses the checkpoint itself (import X X --force)", () => {
    const hf = copyFixture("tiny-mixtral");
    const before = snapshot(hf);
    expectCleanFailure(cli(["import", hf, hf, "--force", "--no-progress"]), /refusing to replace .*: it is the checkpoint being imported/);
    expect(snapshot(hf)).toEqual(before);
    expect(fs.readdirSync(path.dirname(hf))).toEqual([path.basename(hf)]);
  });

  it("refuses the current directory, even when it is a moe-run model", async () => {
    const d = tmpDir();
    fs.writeFileSync(path.join(d, "keep.txt"), "mine\n");
    const before = snapshot(d);
    expectCleanFailure(cli(["import", TINY, ".", "--force", "--no-progress"], { cwd: d }), /refusing to replace \.: it is the current directory/);
    expect(snapshot(d)).toEqual(before);

    const model = await importFixture("tiny-mixtral");
    const modelBefore = snapshot(model);
    expectCleanFailure(cli(["import", TINY, ".", "--force", "--no-progress"], { cwd: model }), /it is the current directory/);
    expectCleanFailure(cli(["import", TINY, "..", "--force", "--no-progress"], { cwd: path.join(model, "graphs") }), /refusing to replace \.\.: it holds the current directory/);
    expect(snapshot(model)).toEqual(modelBefore);
  });

  it("refuses a directory without a moe-run manifest, a file, a link, and a model holding the user's files", async () => {
    const base = tmpDir();
    const plain = path.join(base, "plain");
    fs.mkdirSync(plain);
    fs.writeFileSync(path.join(plain, "thesis.tex"), "x");
    const file = path.join(base, "file.bin");
    fs.writeFileSync(file, "data");
    const model = await importFixture("tiny-mixtral");
    const link = path.join(base, "link");
    fs.symlinkSync(model, link);
    const before = snapshot(base);
    const modelBefore = snapshot(model);

    expectCleanFailure(cli(["import", TINY, plain, "--force", "--no-progress"]), /refusing to replace .*plain: it is not a moe-run model directory/);
    expectCleanFailure(cli(["import", TINY, plain, "--no-progress"]), /plain already exists and is not a moe-run model directory/);
    expectCleanFailure(cli(["import", TINY, file, "--force", "--no-progress"]), /refusing to replace .*file\.bin: it is not a directory/);
    expectCleanFailure(cli(["import", TINY, link, "--force", "--no-progress"]), /refusing to replace .*link: it is a symbolic link/);
    expect(snapshot(base)).toEqual(before);
    expect(snapshot(model)).toEqual(modelBefore);

    fs.writeFileSync(path.join(model, "my-notes.txt"), "mine\n");
    const withNotes = snapshot(model);
    expectCleanFailure(cli(["import", TINY, model, "--force", "--no-progress"]), /it holds my-notes\.txt, which is not part of a moe-run model/);
    expect(snapshot(model)).toEqual(withNotes);
  });

  it("replaces a moe-run model directory, and refuses a staging name the user owns", async () => {
    const model = await importFixture("tiny-mixtral");
    const r = cli(["import", EN, model, "--force", "--no-progress", "--experts", "int8"]);
    expect(r.status, r.stderr).toBe(0);
    expect(manifestOf(model).precision.experts).toBe("int8");
    expect(fs.readdirSync(path.dirname(model))).toEqual([path.basename(model)]);
    await expectVerifies(model);

    const out = path.join(tmpDir(), "m");
    fs.mkdirSync(`${out}.importing`);
    fs.writeFileSync(path.join(`${out}.importing`, "draft.txt"), "mine\n");
    expectCleanFailure(cli(["import", TINY, out, "--no-progress"]), /m\.importing exists and is not an interrupted moe-run import \(the import writes there first\); move it away/);
    expect(fs.readFileSync(path.join(`${out}.importing`, "draft.txt"), "utf8")).toBe("mine\n");
    expect(fs.existsSync(out)).toBe(false);
  });

  it("an importer killed between moving the old model aside and publishing: the next import restores it first", async () => {
    const model = await importFixture("tiny-mixtral");
    const parent = path.dirname(model);
    const dead = spawnSync("true").pid!;
    fs.renameSync(model, `${model}.replaced-${dead}`); // what a kill at that point leaves
    const r = cli(["import", TINY, model, "--no-progress"]);
    // The old model is back (said on a line of its own), and is not replaced without --force.
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^restored .*${path.basename(model)} from an interrupted replace \\(${path.basename(model)}\\.replaced-${dead}\\)\n`));
    expect(r.stderr.trim().split("\n")).toHaveLength(2);
    expect(r.stderr).toMatch(/already exists; pass --force to replace it\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(fs.readdirSync(parent)).toEqual([path.basename(model)]);
    await expectVerifies(model);
  });
});

// ---------------------------------------------------------------------------------------------
// Item 7: unbounded reads (file types and sizes are checked before reading)
// ---------------------------------------------------------------------------------------------

describe("import checks file types and sizes before reading", () => {
  for (const name of ["tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"]) {
    it(`${name} linked to /dev/zero is refused at once`, () => {
      const hf = copyFixture("tiny-mixtral");
      fs.rmSync(path.join(hf, name));
      fs.symlinkSync("/dev/zero", path.join(hf, name));
      const out = path.join(tmpDir(), "m");
      const r = cli(["import", hf, out, "--no-progress"], { timeoutMs: 30_000 });
      expectCleanFailure(r, new RegExp(`${name.replace(".", "\\.")}.* is a character device, not a regular file; refusing to read it`));
      expect(r.ms).toBeLessThan(20_000);
      expect(fs.readdirSync(path.dirname(out))).toEqual([]);
    });
  }

  it("model.safetensors.index.json linked to /dev/zero, a FIFO as tokenizer.json, a huge sparse tokenizer.json", () => {
    const sharded = copyFixture("tiny-qwen2-moe");
    fs.rmSync(path.join(sharded, "model.safetensors.index.json"));
    fs.symlinkSync("/dev/zero", path.join(sharded, "model.safetensors.index.json"));
    const out = path.join(tmpDir(), "m");
    expectCleanFailure(cli(["import", sharded, out, "--no-progress"], { timeoutMs: 30_000 }), /model\.safetensors\.index\.json.* is a character device/);

    const fifo = copyFixture("tiny-mixtral");
    fs.rmSync(path.join(fifo, "tokenizer.json"));
    expect(spawnSync("mkfifo", [path.join(fifo, "tokenizer.json")]).status).toBe(0);
    expectCleanFailure(cli(["import", fifo, out, "--no-progress"], { timeoutMs: 30_000 }), /tokenizer\.json.* is a named pipe, not a regular file/);

    const huge = copyFixture("tiny-mixtral");
    fs.truncateSync(path.join(huge, "tokenizer.json"), 600 * 1024 * 1024); // sparse: no disk used
    const r = cli(["import", huge, out, "--no-progress"], { timeoutMs: 30_000 });
    expectCleanFailure(r, /tokenizer\.json .* has 600\.00 MiB, more than the 512\.00 MiB such a file may have/);
    expect(fs.readdirSync(path.dirname(out))).toEqual([]);
  });

  it("a checkpoint whose files are links to regular files elsewhere (the Hugging Face cache layout) imports", () => {
    const cache = tmpDir();
    const blobs = path.join(cache, "blobs");
    const snap = path.join(cache, "snapshots", "rev");
    fs.mkdirSync(blobs);
    fs.mkdirSync(snap, { recursive: true });
    for (const name of fs.readdirSync(path.join(MODELS, "tiny-qwen2-moe"))) {
      const blob = path.join(blobs, sha256(path.join(MODELS, "tiny-qwen2-moe", name)));
      fs.copyFileSync(path.join(MODELS, "tiny-qwen2-moe", name), blob);
      fs.symlinkSync(path.relative(snap, blob), path.join(snap, name));
    }
    const out = path.join(tmpDir(), "m");
    const r = cli(["import", snap, out, "--no-progress"]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.lstatSync(path.join(out, "tokenizer.json")).isFile()).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// Item 8: shard names must stay inside the checkpoint directory
// ---------------------------------------------------------------------------------------------

describe("shard names in model.safetensors.index.json resolve inside the checkpoint", () => {
  function shardedWith(rewrite: (shard: string) => string, tensors = (_t: string) => true): { hf: string; out: string } {
    const root = tmpDir();
    const hf = path.join(root, "hf");
    fs.cpSync(path.join(MODELS, "tiny-qwen2-moe"), hf, { recursive: true });
    const indexPath = path.join(hf, "model.safetensors.index.json");
    const index = JSON.parse(fs.readFileSync(indexPath, "utf8"));
    for (const [t, shard] of Object.entries(index.weight_map as Record<string, string>)) if (tensors(t)) index.weight_map[t] = rewrite(shard);
    fs.writeFileSync(indexPath, JSON.stringify(index));
    return { hf, out: path.join(root, "out") };
  }

  it("a shard under ../ (a real safetensors file outside) is refused, not imported", () => {
    const { hf, out } = shardedWith((shard) => (shard.startsWith("model-00002") ? `../outside/${shard}` : shard));
    const outside = path.join(path.dirname(hf), "outside");
    fs.mkdirSync(outside);
    const shard2 = fs.readdirSync(hf).find((f) => f.startsWith("model-00002"))!;
    fs.renameSync(path.join(hf, shard2), path.join(outside, shard2));
    const r = cli(["import", hf, out, "--no-progress"]);
    expectCleanFailure(r, /names the shard "\.\.\/outside\/model-00002-of-00002\.safetensors", which lies outside the checkpoint folder; refusing to read it/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("/etc/passwd by a relative or an absolute name is refused and none of its bytes are printed", () => {
    const passwd = fs.existsSync("/etc/passwd") ? fs.readFileSync("/etc/passwd") : Buffer.from("root:x:0:0:root");
    const asNumber = String(Number(passwd.readBigUInt64LE(0)));
    for (const name of ["../../../../../../../../../etc/passwd", "/etc/passwd"]) {
      const { hf, out } = shardedWith(() => name, (t) => t.endsWith("lm_head.weight"));
      const r = cli(["import", hf, out, "--no-progress"]);
      expectCleanFailure(r, /which lies outside the checkpoint folder; refusing to read it/);
      expect(r.stderr).not.toContain(asNumber);
      expect(r.stderr).not.toContain(passwd.subarray(0, 8).toString("latin1"));
      expect(r.stderr).not.toMatch(/header claims/);
    }
  });

  it("a shard in a linked folder that leads outside is refused", () => {
    const { hf, out } = shardedWith((shard) => (shard.startsWith("model-00002") ? `sub/${shard}` : shard));
    const outside = path.join(path.dirname(hf), "elsewhere");
    fs.mkdirSync(outside);
    const shard2 = fs.readdirSync(hf).find((f) => f.startsWith("model-00002"))!;
    fs.renameSync(path.join(hf, shard2), path.join(outside, shard2));
    fs.symlinkSync(outside, path.join(hf, "sub"));
    expectCleanFailure(cli(["import", hf, out, "--no-progress"]), /names the shard "sub\/model-00002-of-00002\.safetensors", which lies outside the checkpoint folder/);
  });

  it("a shard name that is not a .safetensors file is refused", () => {
    const { hf, out } = shardedWith(() => "config.json", (t) => t.endsWith("lm_head.weight"));
    expectCleanFailure(cli(["import", hf, out, "--no-progress"]), /names the shard "config\.json", which is not a \.safetensors file/);
  });
});

// ---------------------------------------------------------------------------------------------
// Item 9: non-finite weights and overlapping tensors
// ---------------------------------------------------------------------------------------------

describe("import refuses silent bad numbers", () => {
  it("a NaN in an expert weight (f32) is refused, naming the tensor", () => {
    const hf = copyFixture("tiny-mixtral");
    const name = "model.layers.1.block_sparse_moe.experts.2.w1.weight";
    pokeElement(path.join(hf, "model.safetensors"), name, 17, 0x7fc00000);
    const out = path.join(tmpDir(), "m");
    const r = cli(["import", hf, out, "--no-progress"]);
    expectCleanFailure(r, new RegExp(`tensor "${name.replace(/\./g, "\\.")}" in model\\.safetensors holds NaN \\(element 17\\)`));
    expect(fs.readdirSync(path.dirname(out))).toEqual([]);
  });

  it("an infinity in a dense weight (bf16, sharded) is refused, naming the tensor and its shard", () => {
    const hf = copyFixture("tiny-qwen2-moe");
    const name = "model.layers.0.self_attn.q_proj.weight";
    const shard = JSON.parse(fs.readFileSync(path.join(hf, "model.safetensors.index.json"), "utf8")).weight_map[name] as string;
    pokeElement(path.join(hf, shard), name, 3, 0xff80); // bf16 -Inf
    const out = path.join(tmpDir(), "m");
    expectCleanFailure(cli(["import", hf, out, "--no-progress"]), new RegExp(`tensor "${name.replace(/\./g, "\\.")}" in ${shard.replace(/\./g, "\\.")} holds -Inf`));
    expect(fs.readdirSync(path.dirname(out))).toEqual([]);
  });

  it("two tensors whose byte ranges overlap are refused", () => {
    for (const partial of [false, true]) {
      const hf = copyFixture("tiny-mixtral");
      const file = path.join(hf, "model.safetensors");
      const { header, data } = readSafetensors(file);
      const a = header["model.layers.0.block_sparse_moe.experts.0.w1.weight"]!;
      const b = header["model.layers.0.block_sparse_moe.experts.0.w3.weight"]!;
      b.data_offsets = partial ? [a.data_offsets[0] + 4, a.data_offsets[1] + 4] : [...a.data_offsets];
      writeSafetensorsRaw(file, header, data);
      const out = path.join(tmpDir(), "m");
      expectCleanFailure(cli(["import", hf, out, "--no-progress"]), /model\.safetensors: tensors ".+" and ".+" overlap \(their data_offsets share bytes\)/);
      expect(fs.readdirSync(path.dirname(out))).toEqual([]);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Item 10 (import side): unwritable output, read-only and full file systems
// ---------------------------------------------------------------------------------------------

describe("import into a place it cannot write: one line, nothing half-written", () => {
  it("output directory not writable (EACCES)", () => {
    const base = tmpDir();
    fs.chmodSync(base, 0o755);
    const ro = path.join(base, "ro");
    fs.mkdirSync(ro, { mode: 0o555 });
    fs.chmodSync(ro, 0o555);
    // Root ignores permissions: run the CLI as nobody there (models/ and dist/ are world-readable).
    const asUser = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
    for (const out of [path.join(ro, "model"), path.join(ro, "deeper", "model")]) {
      const r = cli(["import", TINY, out, "--no-progress"], asUser);
      expectCleanFailure(r, /cannot write .*model: permission denied on .*ro; import into a directory you can write to/);
    }
    expect(fs.readdirSync(ro)).toEqual([]);
  });

  it("a path through a file (ENOTDIR)", () => {
    const base = tmpDir();
    fs.writeFileSync(path.join(base, "f"), "x");
    expectCleanFailure(cli(["import", TINY, path.join(base, "f", "model"), "--no-progress"]), /cannot write .*: a part of the path is not a directory/);
    expect(fs.readFileSync(path.join(base, "f"), "utf8")).toBe("x");
  });

  it("a read-only file system (EROFS)", () => {
    const mnt = mountTmpfs("1m", ",ro");
    if (!mnt) return;
    try {
      expectCleanFailure(cli(["import", TINY, path.join(mnt, "m"), "--no-progress"]), /cannot write .*: the file system is read-only/);
      expect(fs.readdirSync(mnt)).toEqual([]);
    } finally {
      spawnSync("umount", [mnt]);
    }
  });

  it("disk full during the expert store's write: DISK_FULL, the partial import removed, non-zero exit", () => {
    // moe-tiny-en's graphs fit in 12 MiB but its 56 MiB of f32 experts do not: the failure comes
    // from the LMDB writes, with several MiB still free before the partial import is removed.
    const mnt = mountTmpfs("12m");
    if (!mnt) return;
    try {
      const out = path.join(mnt, "model");
      const r = cli(["import", EN, out]);
      expectCleanFailure({ ...r, stderr: r.stderr.split("\n").filter((l) => !/^import \d+%/.test(l)).join("\n") }, /no space left on the device while importing into .*model; the partial import was removed\. Free about [\d.]+ MiB/);
      expect(r.stderr).toMatch(/import \d+% embedding, head/); // it failed in the expert store, after the graphs
      expect(fs.readdirSync(mnt)).toEqual([]);
    } finally {
      spawnSync("umount", [mnt]);
    }
  });
});
