/**
 * `moe-run pull`: a Hugging Face model repository into the hub cache (hubCache.ts), the files a
 * moe-run import needs (selectFiles.ts), several at a time, each resumable and checked against
 * the hub's listing (downloadBlob.ts). Resolves to the snapshot directory, which `import` reads.
 *
 * Files already in the cache (from an earlier pull, or from any tool that uses huggingface_hub's
 * layout) are not downloaded again. Offline ($HF_HUB_OFFLINE) or with the hub unreachable, a
 * complete snapshot already in the cache is used as it is.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { MoeRunError } from "../errors.js";
import { formatBytes } from "../util/bytes.js";
import { downloadBlob, type BlobJob } from "./downloadBlob.js";
import { DownloadProgress } from "./DownloadProgress.js";
import { HubClient, type RemoteFile } from "./HubClient.js";
import { defaultHubCacheDir, HubRepoCache } from "./hubCache.js";
import { HubError, isAbortError } from "./HubError.js";
import { offlineFromEnv, resolveEndpoint, resolveToken } from "./hubSettings.js";
import { parseRepoRef } from "./repoId.js";
import { INDEX_FILE, selectMetadataFiles, selectWeightFiles } from "./selectFiles.js";

export interface PullOptions {
  /** Branch, tag or commit. Default "main" (or what follows "@" in the repo id). */
  revision?: string;
  /** Default: $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Default: $HF_TOKEN, else the token `hf auth login` saved; null sends none. */
  token?: string | null;
  /** Default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** Progress bar on stderr. Default true. */
  progress?: boolean;
  /** Aborting stops the downloads; what arrived stays in `.incomplete` files for the next pull. */
  signal?: AbortSignal;
  /** Where log lines go. Default: stderr. */
  log?: (line: string) => void;
  /** Files downloaded at once. Default 4. */
  concurrency?: number;
  /** Tries again after a dropped connection or a server error, resuming. Default 3. */
  retries?: number;
  /** Use the cache only. Default: $HF_HUB_OFFLINE. */
  offline?: boolean;
}

export interface PullResult {
  repoId: string;
  revision: string;
  commit: string;
  /** `<cache>/models--<org>--<name>/snapshots/<commit>`: a checkpoint folder `import` reads. */
  snapshotDir: string;
  /** The files in the snapshot. */
  files: string[];
  /** Bytes this pull downloaded (0 when everything was in the cache). */
  downloadedBytes: number;
  /** Bytes of the snapshot that were already in the cache. */
  reusedBytes: number;
  /** True when the hub was not asked (offline) or could not be reached and the cache had the snapshot. */
  fromCache: boolean;
  seconds: number;
}

const SAFE_ETAG = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;

export async function pullModel(repo: string, options: PullOptions = {}): Promise<PullResult> {
  const started = performance.now();
  const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const { repoId, revision: given } = parseRepoRef(repo, options.revision);
  const revision = given ?? "main";
  const endpoint = (options.endpoint ?? resolveEndpoint()).replace(/\/+$/, "");
  const token = options.token === null ? undefined : (options.token ?? resolveToken());
  const cacheDir = path.resolve(options.cacheDir ?? defaultHubCacheDir());
  const cache = new HubRepoCache(cacheDir, repoId);
  const signal = options.signal ?? new AbortController().signal;
  const retries = options.retries ?? 3;
  signal.throwIfAborted();

  const fromCache = (why: string): PullResult => {
    const snap = cache.completeSnapshot(revision);
    if (!snap) {
      throw new HubError("HUB_UNAVAILABLE", `${why}, and the cache ${cacheDir} has no complete snapshot of ${repoId}@${revision}; pull it once with the hub reachable`);
    }
    log(`${why}: using the cached snapshot of ${repoId}@${revision} (commit ${snap.commit.slice(0, 12)})`);
    const files = fs.readdirSync(snap.dir).sort();
    return { repoId, revision, commit: snap.commit, snapshotDir: snap.dir, files, downloadedBytes: 0, reusedBytes: 0, fromCache: true, seconds: secondsSince(started) };
  };
  if (options.offline ?? offlineFromEnv()) return fromCache("offline (HF_HUB_OFFLINE)");

  const client = new HubClient({ endpoint, token });
  let listing;
  try {
    listing = await retrying(() => client.listFiles(repoId, revision, signal), retries, signal, log);
  } catch (err) {
    if (err instanceof HubError && err.retryable && cache.completeSnapshot(revision)) return fromCache(err.message);
    throw err;
  }
  const { commit } = listing;
  const pull = { repoId, commit };

  try {
    fs.mkdirSync(path.join(cache.dir, "blobs"), { recursive: true });
    const metadata = await Promise.all(selectMetadataFiles(repoId, listing.files).map((f) => jobFor(client, pull, f, signal)));
    // The index first (small), so every shard is known before the progress bar starts.
    const indexJob = metadata.find((j) => j.file === INDEX_FILE);
    let weightMap: Record<string, unknown> | undefined;
    let early = { downloaded: 0, fetched: new Set<string>() };
    if (indexJob) {
      early = await downloadAll(client, cache, [indexJob], { ...options, signal, retries, log, progress: false });
      weightMap = readWeightMap(cache.blobPath(indexJob.etag), repoId);
    }
    const weights = await Promise.all(selectWeightFiles(repoId, listing.files, weightMap).map((f) => jobFor(client, pull, f, signal)));
    const jobs = [...metadata, ...weights];
    const { downloaded, reused } = await downloadAll(client, cache, jobs, {
      ...options,
      signal,
      retries,
      log,
      announce: `${repoId}@${revision} (commit ${commit.slice(0, 12)}) from ${endpoint}`,
      early,
    });

    for (const job of jobs) cache.linkSnapshotFile(commit, job.file, job.etag);
    cache.writeRef(revision, commit);
    const snapshotDir = cache.snapshotDir(commit);
    const result: PullResult = {
      repoId,
      revision,
      commit,
      snapshotDir,
      files: jobs.map((j) => j.file).sort(),
      downloadedBytes: downloaded,
      reusedBytes: reused,
      fromCache: false,
      seconds: secondsSince(started),
    };
    log(
      `pulled ${repoId}@${revision}: ${jobs.length} files, ${formatBytes(downloaded)} downloaded, ${formatBytes(reused)} already in the cache, ` +
        `in ${result.seconds.toFixed(1)} s -> ${snapshotDir}`
    );
    return result;
  } catch (err) {
    throw cacheWriteError(err, cacheDir);
  }
}

interface DownloadAllOptions extends PullOptions {
  signal: AbortSignal;
  retries: number;
  log: (line: string) => void;
  /** Says what is being pulled and how much is to come (absent: quiet). */
  announce?: string;
  /** Blobs an earlier phase of this pull downloaded: counted as downloaded, not as found in the cache. */
  early?: { downloaded: number; fetched: Set<string> };
}

/** Downloads the jobs whose blobs the cache lacks, `concurrency` at a time. */
async function downloadAll(
  client: HubClient,
  cache: HubRepoCache,
  jobs: readonly BlobJob[],
  o: DownloadAllOptions
): Promise<{ downloaded: number; reused: number; fetched: Set<string> }> {
  const unique = [...new Map(jobs.map((j) => [j.etag, j])).values()];
  const todo: BlobJob[] = [];
  let reused = 0;
  let present = 0;
  for (const job of unique) {
    const have = cache.blobSize(job.etag);
    if (have === job.size) {
      present += job.size;
      if (!o.early?.fetched.has(job.etag)) reused += job.size;
    } else {
      // A blob of the wrong size is not what the listing names: fetch it again.
      if (have !== null) fs.rmSync(cache.blobPath(job.etag), { force: true });
      todo.push(job);
    }
  }
  const total = todo.reduce((s, j) => s + j.size, 0);
  const resumed = todo.reduce((s, j) => s + Math.min(j.size, cache.incompleteSize(j.etag)), 0);
  if (o.announce) {
    // The index, fetched a moment ago to learn the shards, counts as downloaded by this pull.
    const early = unique.filter((j) => o.early?.fetched.has(j.etag));
    const cached = unique.length - todo.length - early.length;
    const toFetch = total - resumed + (o.early?.downloaded ?? 0);
    o.log(
      `pulling ${o.announce}: ${jobs.length} files, ${formatBytes(total + present)}; ` +
        (cached === unique.length
          ? "all already in the cache"
          : `${todo.length + early.length} to download (${formatBytes(toFetch)}${resumed > 0 ? `, resuming after ${formatBytes(resumed)}` : ""}), ${cached} already in the cache`)
    );
  }
  const earlyBytes = o.early?.downloaded ?? 0;
  if (todo.length === 0) return { downloaded: earlyBytes, reused, fetched: new Set() };
  checkFreeSpace(cache, total - resumed);

  const progress = new DownloadProgress(total, resumed, Boolean(o.announce) && (o.progress ?? true));
  const concurrency = Math.max(1, Math.floor(o.concurrency ?? 4));
  const retryDelayMs = 500;
  await runPool(todo, concurrency, o.signal, (job, signal) => downloadBlob(client, cache, job, { signal, progress, retries: o.retries, retryDelayMs, log: o.log }));
  if (o.announce) progress.finish(`${todo.length} files, ${formatBytes(progress.downloaded)} at ${formatBytes(progress.rate())}/s`);
  return { downloaded: earlyBytes + progress.downloaded, reused, fetched: new Set(todo.map((j) => j.etag)) };
}

/**
 * Runs `run` over the jobs, `concurrency` at a time. The first failure stops the others (their
 * partial files stay for resuming); all of them have stopped, files closed, before it is thrown.
 */
async function runPool<T>(jobs: readonly T[], concurrency: number, outer: AbortSignal, run: (job: T, signal: AbortSignal) => Promise<void>): Promise<void> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(outer.reason);
  outer.addEventListener("abort", onAbort, { once: true });
  let next = 0;
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (!controller.signal.aborted && next < jobs.length) {
      const job = jobs[next++]!;
      try {
        await run(job, controller.signal);
      } catch (err) {
        // Keep the first real failure over the aborts it caused.
        if (!failure || (isAbortError(failure.err) && !isAbortError(err))) failure = { err };
        if (!controller.signal.aborted) controller.abort(new DOMException("another download failed", "AbortError"));
        return;
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, worker));
  } finally {
    outer.removeEventListener("abort", onAbort);
  }
  if (outer.aborted) throw outer.reason;
  if (failure) throw failure.err;
}

/** What to download for a listed file, and how to check it; asks the hub (HEAD) where the listing lacks hashes. */
async function jobFor(client: HubClient, pull: { repoId: string; commit: string }, f: RemoteFile, signal: AbortSignal): Promise<BlobJob> {
  const base = { repoId: pull.repoId, commit: pull.commit, file: f.path };
  if (f.sha256 && f.size >= 0) return { ...base, etag: f.sha256, size: f.size, check: { algorithm: "sha256", hex: f.sha256 } };
  if (f.blobId && f.size >= 0) return { ...base, etag: f.blobId, size: f.size, check: { algorithm: "git-sha1", hex: f.blobId } };
  const head = await client.fileMetadata(pull.repoId, pull.commit, f.path, signal);
  const size = f.size >= 0 ? f.size : head.size;
  if (!head.etag || !SAFE_ETAG.test(head.etag) || head.etag.endsWith(".incomplete") || size === undefined) {
    throw new HubError("HUB_UNAVAILABLE", `${client.endpoint} gives no usable ETag or size for ${f.path} of ${pull.repoId}; is HF_ENDPOINT a Hugging Face hub?`);
  }
  const check: BlobJob["check"] = /^[0-9a-f]{64}$/.test(head.etag)
    ? { algorithm: "sha256", hex: head.etag }
    : /^[0-9a-f]{40}$/.test(head.etag)
      ? { algorithm: "git-sha1", hex: head.etag }
      : undefined;
  return { ...base, etag: head.etag, size, check };
}

function readWeightMap(blob: string, repoId: string): Record<string, unknown> {
  try {
    const index = JSON.parse(fs.readFileSync(blob, "utf8")) as { weight_map?: unknown };
    if (index.weight_map && typeof index.weight_map === "object" && !Array.isArray(index.weight_map)) return index.weight_map as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new MoeRunError("CHECKPOINT_CORRUPT", `${repoId}'s ${INDEX_FILE} has no weight_map; the repository's index is damaged`);
}

/** Retries a request that failed for a reason that may pass (network, server error), with backoff. */
async function retrying<T>(fn: () => Promise<T>, retries: number, signal: AbortSignal, log: (line: string) => void): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof HubError && err.retryable) || attempt >= retries || signal.aborted) throw err;
      const wait = 500 * 2 ** attempt;
      log(`${err.message}; trying again in ${(wait / 1000).toFixed(1)} s`);
      await sleep(wait, undefined, { signal });
    }
  }
}

function checkFreeSpace(cache: HubRepoCache, needed: number): void {
  let free: number;
  try {
    const s = fs.statfsSync(path.join(cache.dir, "blobs"));
    free = s.bavail * s.bsize;
  } catch {
    return;
  }
  if (free < needed) {
    throw new MoeRunError(
      "DISK_FULL",
      `the download needs ${formatBytes(needed)} but the disk holding ${cache.cacheDir} has ${formatBytes(free)} free; free space, or set HF_HUB_CACHE to a directory on a larger disk`
    );
  }
}

/** File system errors of the cache as one actionable line (where, and what to do). */
function cacheWriteError(err: unknown, cacheDir: string): unknown {
  if (err instanceof MoeRunError || isAbortError(err)) return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.code === "ENOSPC" || e?.code === "EDQUOT") {
    return new MoeRunError("DISK_FULL", `the disk holding the Hugging Face cache ${cacheDir} is full; free space and pull again (the download resumes), or set HF_HUB_CACHE to another disk`, { cause: err });
  }
  if (e?.code === "EACCES" || e?.code === "EPERM" || e?.code === "EROFS") {
    return new MoeRunError("NOT_WRITABLE", `cannot write to the Hugging Face cache ${cacheDir} (${e.path ?? ""}: ${e.code}); set HF_HUB_CACHE to a writable directory`, { cause: err });
  }
  return err;
}

function secondsSince(started: number): number {
  return (performance.now() - started) / 1000;
}
