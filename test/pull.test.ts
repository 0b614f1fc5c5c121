/**
 * `moe-run pull` and `import org/name` (issue 14, part 4) against a local hub (test/hubServer.ts)
 * serving the bundled checkpoints: cache layout, reuse, resume after a cut connection and after
 * Ctrl-C, damaged files refused, tokens, HF_ENDPOINT, and a generation from what was pulled.
 * Nothing here reaches past 127.0.0.1.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { MoeRunError } from "../src/errors.js";
import { pullModel, type PullOptions } from "../src/hub/pullModel.js";
import { CLI, MODELS, greedyRun, importFixture, tmpDir } from "./helpers.js";
import { TestHub, repoFromDir } from "./hubServer.js";

const MIXTRAL = "moe-run-test/tiny-mixtral";
const QWEN = "moe-run-test/tiny-qwen2-moe";
const NO_SAFETENSORS = "moe-run-test/bin-only";

let hub: TestHub;

beforeAll(async () => {
  const binOnly = repoFromDir(NO_SAFETENSORS, path.join(MODELS, "tiny-mixtral"));
  binOnly.files = binOnly.files.filter((f) => !f.path.endsWith(".safetensors"));
  binOnly.files.push({ ...binOnly.files[0]!, path: "pytorch_model.bin", lfs: true });
  hub = await new TestHub([
    // Files a pull must leave on the hub: other weight formats, subfolders, a README.
    repoFromDir(MIXTRAL, path.join(MODELS, "tiny-mixtral"), {
      "pytorch_model.bin": Buffer.alloc(4096, 1),
      "onnx/model.onnx": Buffer.alloc(1024, 2),
      "README.md": Buffer.from("# tiny mixtral\n"),
    }),
    // Sharded: only the shards the index lists are fetched, not a stray consolidated file.
    repoFromDir(QWEN, path.join(MODELS, "tiny-qwen2-moe"), { "consolidated.safetensors": Buffer.alloc(2048, 3) }),
    binOnly,
  ]).start();
});

afterAll(async () => {
  await hub?.close();
});

beforeEach(() => {
  hub.requests.length = 0;
  hub.faults.cut.clear();
  hub.faults.stall.clear();
  hub.faults.corrupt.clear();
  hub.faults.token = undefined;
  hub.faults.namesOnly = false;
});

function quiet(cacheDir: string, extra: PullOptions = {}): PullOptions {
  return { endpoint: hub.url, cacheDir, token: null, progress: false, log: () => {}, retries: 0, ...extra };
}

async function pullError(repo: string, options: PullOptions): Promise<MoeRunError> {
  const err = await pullModel(repo, options).then(
    () => undefined,
    (e: unknown) => e
  );
  expect(err).toBeInstanceOf(MoeRunError);
  return err as MoeRunError;
}

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The CLI, asynchronously (the hub runs in this process), with the hub settings in its environment. */
function cli(args: string[], env: Record<string, string>, onStart?: (child: ReturnType<typeof spawn>) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(HF_|HUGGING_FACE_)/.test(k)));
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...clean, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("error", reject);
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
    onStart?.(child);
  });
}

function expectCleanFailure(r: Run, pattern: RegExp): void {
  expect(r.signal).toBeNull();
  expect(r.status).not.toBe(0);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

/** A local port nothing listens on (a server's, closed again). */
async function closedPort(): Promise<number> {
  const s = (await import("node:net")).createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

function repoDir(cacheDir: string, repoId: string): string {
  return path.join(cacheDir, `models--${repoId.replace("/", "--")}`);
}

describe("pull into the Hugging Face cache layout", () => {
  it("downloads config, tokenizer and safetensors as blobs with relative snapshot links and a ref, and nothing else", async () => {
    const cacheDir = tmpDir();
    const r = await pullModel(MIXTRAL, quiet(cacheDir));
    const repo = hub.repo(MIXTRAL);
    const dir = repoDir(cacheDir, MIXTRAL);
    expect(r.commit).toBe(repo.commit);
    expect(r.snapshotDir).toBe(path.join(dir, "snapshots", repo.commit));
    expect(r.files).toEqual(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    expect(fs.readFileSync(path.join(dir, "refs", "main"), "utf8")).toBe(repo.commit);
    for (const name of r.files) {
      const f = repo.files.find((x) => x.path === name)!;
      const link = path.join(r.snapshotDir, name);
      // LFS files are named by their sha256, the others by their git blob sha1 (huggingface_hub's names).
      expect(fs.readlinkSync(link)).toBe(`../../blobs/${f.lfs ? f.sha256 : f.gitSha1}`);
      expect(fs.readFileSync(link).equals(f.bytes)).toBe(true);
    }
    expect(fs.readdirSync(path.join(dir, "blobs")).filter((n) => n.endsWith(".incomplete"))).toEqual([]);
    const urls = hub.requests.map((q) => decodeURIComponent(q.url));
    for (const skipped of ["pytorch_model.bin", "onnx/model.onnx", "README.md"]) expect(urls.some((u) => u.includes(skipped))).toBe(false);
    // The LFS file came through the redirect to the CDN.
    expect(hub.contentRequests("model.safetensors").map((q) => q.server)).toEqual(["cdn"]);
    expect(r.downloadedBytes).toBe(r.files.reduce((s, n) => s + repo.files.find((x) => x.path === n)!.bytes.length, 0));
  });

  it("pull, import, generate: the same tokens as importing the bundled folder", async () => {
    const cacheDir = tmpDir();
    const r = await pullModel(QWEN, quiet(cacheDir));
    expect(r.files).toEqual(["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]);
    expect(hub.requests.some((q) => q.url.includes("consolidated"))).toBe(false);
    const pulled = path.join(tmpDir(), "pulled");
    const { importModel } = await import("../src/importer/importModel.js");
    await importModel(r.snapshotDir, pulled, { progress: false, log: () => {} });
    const direct = await importFixture("tiny-qwen2-moe");
    const a = await greedyRun(pulled, "Hello world", 6);
    const b = await greedyRun(direct, "Hello world", 6);
    expect(a.ids).toHaveLength(6);
    expect(a.ids).toEqual(b.ids);
  });

  it("a second pull downloads nothing: the cache is reused, also when another tool put the blobs there", async () => {
    const cacheDir = tmpDir();
    await pullModel(MIXTRAL, quiet(cacheDir));
    hub.requests.length = 0;
    const again = await pullModel(MIXTRAL, quiet(cacheDir));
    expect(again.downloadedBytes).toBe(0);
    expect(again.reusedBytes).toBeGreaterThan(1_000_000);
    expect(hub.requests.map((q) => q.url)).toEqual([`/api/models/${MIXTRAL}/revision/main?blobs=true`]);

    // Blobs without snapshot links (what's left when another tool's snapshot was deleted, say) are used as they are.
    fs.rmSync(path.join(repoDir(cacheDir, MIXTRAL), "snapshots"), { recursive: true });
    hub.requests.length = 0;
    const relinked = await pullModel(MIXTRAL, quiet(cacheDir));
    expect(relinked.downloadedBytes).toBe(0);
    expect(fs.readFileSync(path.join(relinked.snapshotDir, "config.json"), "utf8")).toContain("mixtral");
  });

  it("an interrupted download resumes with a Range request on the next pull", async () => {
    const cacheDir = tmpDir();
    const big = hub.repo(MIXTRAL).files.find((f) => f.path === "model.safetensors")!;
    hub.faults.cut.set("model.safetensors", { after: 600_000, times: 1 });
    const err = await pullError(MIXTRAL, quiet(cacheDir));
    expect(err.code).toBe("HUB_UNAVAILABLE");
    expect(err.message).toMatch(/model\.safetensors.*run the same command again to resume/);
    const partial = path.join(repoDir(cacheDir, MIXTRAL), "blobs", `${big.sha256}.incomplete`);
    expect(fs.statSync(partial).size).toBe(600_000);
    expect(fs.existsSync(path.join(repoDir(cacheDir, MIXTRAL), "blobs", big.sha256))).toBe(false);

    const r = await pullModel(MIXTRAL, quiet(cacheDir));
    const served = hub.contentRequests("model.safetensors");
    expect(served.map((q) => q.range)).toEqual([undefined, "bytes=600000-"]);
    const total = served.reduce((s, q) => s + q.bytes, 0);
    expect(total).toBe(big.bytes.length); // every byte once
    expect(total).toBeLessThan(2 * big.bytes.length);
    expect(r.downloadedBytes).toBeLessThan(big.bytes.length);
    expect(fs.readFileSync(path.join(r.snapshotDir, "model.safetensors")).equals(big.bytes)).toBe(true);
    expect(fs.existsSync(partial)).toBe(false);
  });

  it("a connection cut during a pull is retried at once, resuming", async () => {
    const cacheDir = tmpDir();
    hub.faults.cut.set("model.safetensors", { after: 300_000, times: 1 });
    const r = await pullModel(MIXTRAL, quiet(cacheDir, { retries: 2 }));
    expect(hub.contentRequests("model.safetensors").map((q) => q.range)).toEqual([undefined, "bytes=300000-"]);
    expect(fs.readFileSync(path.join(r.snapshotDir, "model.safetensors")).equals(hub.repo(MIXTRAL).files.find((f) => f.path === "model.safetensors")!.bytes)).toBe(true);
  });

  it("a damaged file is refused, naming it, and leaves no blob and no partial file", async () => {
    const cacheDir = tmpDir();
    hub.faults.corrupt.add("model.safetensors");
    const err = await pullError(MIXTRAL, quiet(cacheDir));
    expect(err.code).toBe("DOWNLOAD_CORRUPT");
    expect(err.message).toMatch(/model\.safetensors from moe-run-test\/tiny-mixtral is corrupt: its sha256 is [0-9a-f]{64} but the hub lists [0-9a-f]{64}; the download was deleted/);
    const blobs = fs.readdirSync(path.join(repoDir(cacheDir, MIXTRAL), "blobs"));
    const big = hub.repo(MIXTRAL).files.find((f) => f.path === "model.safetensors")!;
    expect(blobs.filter((b) => b.startsWith(big.sha256))).toEqual([]);
    // A damaged small (non-LFS) file is caught by its git blob sha1.
    hub.faults.corrupt.clear();
    hub.faults.corrupt.add("tokenizer.json");
    const err2 = await pullError(MIXTRAL, quiet(tmpDir()));
    expect(err2.message).toMatch(/tokenizer\.json .* is corrupt: its git blob sha1 is/);
  });

  it("sends the token as a Bearer header to the hub but not to the CDN; without one, 401 says to set HF_TOKEN", async () => {
    hub.faults.token = "hf_secret";
    const err = await pullError(MIXTRAL, quiet(tmpDir()));
    expect(err.code).toBe("HUB_AUTH");
    expect(err.message).toMatch(/moe-run-test\/tiny-mixtral needs a Hugging Face token.*set HF_TOKEN=<token>/);
    const wrong = await pullError(MIXTRAL, quiet(tmpDir(), { token: "hf_wrong" }));
    expect(wrong.message).toMatch(/refused the token in HF_TOKEN/);

    hub.requests.length = 0;
    const r = await pullModel(MIXTRAL, quiet(tmpDir(), { token: "hf_secret" }));
    expect(r.files).toContain("model.safetensors");
    const toHub = hub.requests.filter((q) => q.server === "hub");
    expect(toHub.length).toBeGreaterThan(0);
    for (const q of toHub) expect(q.authorization).toBe("Bearer hf_secret");
    const toCdn = hub.requests.filter((q) => q.server === "cdn");
    expect(toCdn.length).toBeGreaterThan(0);
    for (const q of toCdn) expect(q.authorization).toBeUndefined();
  });

  it("where the listing has no sizes or hashes, takes them from HEAD requests (ETag, X-Linked-Etag) and still checks them", async () => {
    hub.faults.namesOnly = true;
    const r = await pullModel(MIXTRAL, quiet(tmpDir()));
    expect(r.files).toHaveLength(4);
    expect(hub.requests.filter((q) => q.method === "HEAD")).toHaveLength(4);
    hub.faults.corrupt.add("model.safetensors");
    const err = await pullError(MIXTRAL, quiet(tmpDir()));
    expect(err.message).toMatch(/model\.safetensors .* is corrupt: its sha256/);
  });

  it("one writer per file: a second pull of a file being downloaded stops with a message; a dead process's lock is taken over", async () => {
    const cacheDir = tmpDir();
    const big = hub.repo(MIXTRAL).files.find((f) => f.path === "model.safetensors")!;
    const partial = path.join(repoDir(cacheDir, MIXTRAL), "blobs", `${big.sha256}.incomplete`);
    hub.faults.stall.set("model.safetensors", 100_000);
    const first = new AbortController();
    const running = pullModel(MIXTRAL, quiet(cacheDir, { signal: first.signal })).catch((e: unknown) => e);
    // Wait (however long a busy machine takes) until the first pull is inside model.safetensors.
    const stalled = () => fs.existsSync(partial) && fs.statSync(partial).size === 100_000;
    for (let i = 0; i < 2400 && !stalled(); i++) await new Promise((r) => setTimeout(r, 25));
    expect(stalled(), "the first pull reached its stall in model.safetensors").toBe(true);
    const second = await pullError(MIXTRAL, quiet(cacheDir));
    expect(second.code).toBe("DOWNLOAD_IN_PROGRESS");
    expect(second.message).toMatch(new RegExp(`another process \\(pid ${process.pid}\\) is downloading model\\.safetensors into the cache`));
    first.abort(new DOMException("stop", "AbortError"));
    expect(((await running) as Error).name).toBe("AbortError");
    expect(fs.statSync(partial).size).toBe(100_000);

    // A lock left by a process that is gone (killed) does not block the next pull.
    hub.faults.stall.clear();
    const lock = path.join(cacheDir, ".locks", `models--${MIXTRAL.replace("/", "--")}`, `${big.sha256}.moe-run-lock`);
    fs.writeFileSync(lock, JSON.stringify({ moeRunDownload: 1, pid: 2 ** 22 + 12345, host: (await import("node:os")).hostname(), start: null, token: "0123456789abcdef" }));
    const r = await pullModel(MIXTRAL, quiet(cacheDir));
    expect(fs.readFileSync(path.join(r.snapshotDir, "model.safetensors")).equals(big.bytes)).toBe(true);
    expect(fs.existsSync(lock)).toBe(false);
  });

  it("refuses what cannot be imported, and unknown repositories or revisions", async () => {
    const noWeights = await pullError(NO_SAFETENSORS, quiet(tmpDir()));
    expect(noWeights.message).toMatch(/bin-only has no \*\.safetensors weights .*it has pytorch_model\.bin/);
    const missing = await pullError("moe-run-test/nope", quiet(tmpDir()));
    expect(missing.code).toBe("HUB_NOT_FOUND");
    expect(missing.message).toMatch(/repository moe-run-test\/nope .* was not found/);
    const rev = await pullError(`${MIXTRAL}@no-such-branch`, quiet(tmpDir()));
    expect(rev.message).toMatch(/has no revision "no-such-branch"/);
    const bad = await pullError("not a repo", quiet(tmpDir()));
    expect(bad.code).toBe("INVALID_OPTION");
  });

  it("pulls a commit hash as its own snapshot, and with the hub gone uses a complete cached snapshot", async () => {
    const cacheDir = tmpDir();
    const commit = hub.repo(MIXTRAL).commit;
    const r = await pullModel(`${MIXTRAL}@${commit}`, quiet(cacheDir));
    expect(r.snapshotDir.endsWith(commit)).toBe(true);
    expect(fs.existsSync(path.join(repoDir(cacheDir, MIXTRAL), "refs", "main"))).toBe(false);
    await pullModel(MIXTRAL, quiet(cacheDir));
    const lines: string[] = [];
    const closed = await closedPort();
    const offline = await pullModel(MIXTRAL, { ...quiet(cacheDir), endpoint: `http://127.0.0.1:${closed}`, log: (l) => lines.push(l) });
    expect(offline.fromCache).toBe(true);
    expect(offline.snapshotDir).toBe(r.snapshotDir);
    expect(lines.join("\n")).toMatch(new RegExp(`cannot reach http://127\\.0\\.0\\.1:${closed} \\(connection refused\\).*using the cached snapshot`));
    const none = await pullError(QWEN, { ...quiet(cacheDir), offline: true });
    expect(none.message).toMatch(/offline \(HF_HUB_OFFLINE\), and the cache .* has no complete snapshot of moe-run-test\/tiny-qwen2-moe@main/);
  });
});

describe("the pull command and import <org/name>", () => {
  it("pull honours HF_ENDPOINT, HF_HUB_CACHE and HF_TOKEN, prints the snapshot folder; import org/name then uses the cache", async () => {
    const cacheDir = tmpDir();
    hub.faults.token = "hf_cli";
    const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cacheDir, HF_HOME: tmpDir(), HF_TOKEN: "hf_cli" };
    const r = await cli(["pull", MIXTRAL, "--no-progress"], env);
    expect(r.stderr).toMatch(new RegExp(`pulling ${MIXTRAL}@main \\(commit [0-9a-f]{12}\\) from http://127\\.0\\.0\\.1:\\d+: 4 files`));
    expect(r.status, r.stderr).toBe(0);
    const snapshot = path.join(repoDir(cacheDir, MIXTRAL), "snapshots", hub.repo(MIXTRAL).commit);
    expect(r.stdout).toBe(`${snapshot}\n`);
    expect(hub.requests.filter((q) => q.server === "hub").every((q) => q.authorization === "Bearer hf_cli")).toBe(true);

    // import org/name: offline, straight from the cache.
    const out = path.join(tmpDir(), "model");
    hub.requests.length = 0;
    const imp = await cli(["import", MIXTRAL, out, "--no-progress"], { ...env, HF_HUB_OFFLINE: "1" });
    expect(imp.status, imp.stderr).toBe(0);
    expect(imp.stderr).toMatch(/using the cached snapshot of moe-run-test\/tiny-mixtral@main/);
    expect(imp.stderr).toMatch(/imported mixtral/);
    expect(hub.requests).toEqual([]);
    expect((await greedyRun(out, "Hello", 3)).ids).toHaveLength(3);
  });

  it("import org/name@revision pulls first; a missing path that is not a repo id keeps its error; a 401 names HF_TOKEN", async () => {
    const cacheDir = tmpDir();
    const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cacheDir, HF_HOME: tmpDir() };
    const out = path.join(tmpDir(), "model");
    const imp = await cli(["import", `${QWEN}@main`, out, "--no-progress"], env);
    expect(imp.status, imp.stderr).toBe(0);
    expect(imp.stderr).toMatch(/pulled moe-run-test\/tiny-qwen2-moe@main: 6 files/);
    expect(fs.existsSync(path.join(out, "manifest.json"))).toBe(true);

    const missing = await cli(["import", path.join(tmpDir(), "nothing-here"), path.join(tmpDir(), "m"), "--no-progress"], env);
    expectCleanFailure(missing, /nothing-here is not a directory; pass the folder that holds config\.json/);

    hub.faults.token = "hf_x";
    const denied = await cli(["import", MIXTRAL, path.join(tmpDir(), "m"), "--no-progress"], env);
    expectCleanFailure(denied, /there is no folder moe-run-test\/tiny-mixtral here, and as a Hugging Face repository id: .*set HF_TOKEN/);
    expect(denied.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("Ctrl-C stops a pull cleanly, keeps the partial file, and the next pull resumes it", async () => {
    const cacheDir = tmpDir();
    const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cacheDir, HF_HOME: tmpDir() };
    const big = hub.repo(MIXTRAL).files.find((f) => f.path === "model.safetensors")!;
    const partial = path.join(repoDir(cacheDir, MIXTRAL), "blobs", `${big.sha256}.incomplete`);
    hub.faults.stall.set("model.safetensors", 500_000);
    const r = await cli(["pull", MIXTRAL], env, (child) => {
      const poll = setInterval(() => {
        let size = 0;
        try {
          size = fs.statSync(partial).size;
        } catch {
          // not yet
        }
        if (size === 500_000) {
          clearInterval(poll);
          child.kill("SIGINT");
        }
      }, 50);
      child.on("close", () => clearInterval(poll));
    });
    expect(r.signal).toBeNull();
    expect(r.status).toBe(130);
    expect(r.stderr).toMatch(/moe-run: interrupted\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stdout).toBe("");
    expect(fs.statSync(partial).size).toBe(500_000);

    hub.faults.stall.clear();
    hub.requests.length = 0;
    const again = await cli(["pull", MIXTRAL, "--no-progress"], env);
    expect(again.status, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/resuming after 488\.28 KiB/);
    expect(hub.contentRequests("model.safetensors").map((q) => q.range)).toEqual(["bytes=500000-"]);
    expect(fs.readFileSync(path.join(again.stdout.trim(), "model.safetensors")).equals(big.bytes)).toBe(true);
  });
});
