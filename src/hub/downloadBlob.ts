/**
 * One file from the hub into the cache's blobs/: streamed into `<etag>.incomplete` (resumed from
 * its size with a Range request), hashed as it arrives, checked against the hub's listing (size,
 * and the LFS sha256 or the git blob sha1), synced and renamed into place. A file that does not
 * match is deleted, never kept as a blob; an interrupted one (network, Ctrl-C) is kept to resume.
 */
import { createHash, type Hash } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { MoeRunError } from "../errors.js";
import { formatBytes } from "../util/bytes.js";
import { BlobLock } from "./BlobLock.js";
import type { DownloadProgress } from "./DownloadProgress.js";
import type { HubClient } from "./HubClient.js";
import type { HubRepoCache } from "./hubCache.js";
import { HubError, isAbortError, networkReason } from "./HubError.js";

export interface BlobJob {
  repoId: string;
  commit: string;
  /** Path in the repository (the URL, and what messages name). */
  file: string;
  /** Name of the blob in the cache. */
  etag: string;
  size: number;
  /** What the contents must hash to; absent: the size alone is checked. */
  check?: { algorithm: "sha256" | "git-sha1"; hex: string };
}

export interface BlobDownloadOptions {
  signal: AbortSignal;
  progress: DownloadProgress;
  /** Further tries after a dropped connection or a server error, each resuming where the last stopped. */
  retries: number;
  retryDelayMs: number;
  log: (line: string) => void;
}

function newHasher(job: BlobJob): Hash | undefined {
  if (!job.check) return undefined;
  if (job.check.algorithm === "sha256") return createHash("sha256");
  // A git blob id is the sha1 of "blob <size>\0" and the contents.
  return createHash("sha1").update(`blob ${job.size}\0`);
}

/** Downloads `job` into the cache unless its blob is already there (bytes arriving are counted in `o.progress`). */
export async function downloadBlob(client: HubClient, cache: HubRepoCache, job: BlobJob, o: BlobDownloadOptions): Promise<void> {
  const lock = BlobLock.acquire(cache.lockPath(job.etag), job.file);
  try {
    if (cache.blobSize(job.etag) === job.size) return; // another process finished it meanwhile
    fs.mkdirSync(path.dirname(cache.blobPath(job.etag)), { recursive: true });
    for (let attempt = 0; ; attempt++) {
      try {
        await fetchInto(client, cache, job, o);
        return;
      } catch (err) {
        if (isAbortError(err) || o.signal.aborted) throw o.signal.reason ?? err;
        if (!(err instanceof HubError && err.retryable) || attempt >= o.retries) {
          if (err instanceof HubError && err.retryable && cache.incompleteSize(job.etag) > 0) {
            throw new HubError(err.code, `${err.message}; run the same command again to resume (kept ${cache.incompletePath(job.etag)})`, { cause: err });
          }
          throw err;
        }
        const wait = o.retryDelayMs * 2 ** attempt;
        o.log(`${job.file}: ${err.message}; trying again in ${(wait / 1000).toFixed(1)} s`);
        await sleep(wait, undefined, { signal: o.signal });
      }
    }
  } finally {
    lock.release();
  }
}

async function fetchInto(client: HubClient, cache: HubRepoCache, job: BlobJob, o: BlobDownloadOptions): Promise<void> {
  const partial = cache.incompletePath(job.etag);
  let offset = cache.incompleteSize(job.etag);
  const fh = await fsp.open(partial, "a");
  let closed = false;
  try {
    if (offset > job.size) {
      // Not a prefix of this file: start over.
      await fh.truncate(0);
      o.progress.rewind(job.size); // counted as resumed up to the file's size
      offset = 0;
    }
    let hasher = newHasher(job);
    if (offset > 0 && hasher) for await (const chunk of fs.createReadStream(partial, { start: 0, end: offset - 1 })) hasher.update(chunk as Buffer);
    let written = offset;
    if (offset < job.size) {
      const stream = await client.openFile(job.repoId, job.commit, job.file, offset, o.signal);
      if (stream.etag && /^([0-9a-f]{40}|[0-9a-f]{64})$/.test(stream.etag) && stream.etag !== job.etag) {
        await stream.cancel();
        throw new MoeRunError(
          "DOWNLOAD_CORRUPT",
          `the hub serves ${job.file} of ${job.repoId} as ${stream.etag} but listed it as ${job.etag} (did the repository change during the pull?); pull again`
        );
      }
      if (stream.start === 0 && offset > 0) {
        // The server ignored the Range request and sends the whole file.
        await fh.truncate(0);
        o.progress.rewind(offset);
        hasher = newHasher(job);
        written = 0;
      }
      try {
        for await (const chunk of stream.body) {
          if (written + chunk.length > job.size) {
            throw new MoeRunError("DOWNLOAD_CORRUPT", `${job.file} from ${job.repoId} is longer than the ${formatBytes(job.size)} the hub lists`);
          }
          await fh.write(chunk);
          hasher?.update(chunk);
          written += chunk.length;
          o.progress.add(chunk.length);
        }
      } catch (err) {
        await stream.cancel();
        if (isAbortError(err) || o.signal.aborted) throw o.signal.reason ?? err;
        if (err instanceof MoeRunError) throw await discard(fh, partial, err);
        if (isWriteError(err)) throw err;
        throw new HubError("HUB_UNAVAILABLE", `the download of ${job.file} broke off at ${formatBytes(written)} of ${formatBytes(job.size)} (${networkReason(err)})`, {
          retryable: true,
          cause: err,
        });
      }
      if (written < job.size) {
        throw new HubError("HUB_UNAVAILABLE", `the connection closed during ${job.file} at ${formatBytes(written)} of ${formatBytes(job.size)}`, { retryable: true });
      }
    }
    const digest = hasher?.digest("hex");
    if (job.check && digest !== job.check.hex) {
      const name = job.check.algorithm === "sha256" ? "sha256" : "git blob sha1";
      throw await discard(
        fh,
        partial,
        new MoeRunError(
          "DOWNLOAD_CORRUPT",
          `${job.file} from ${job.repoId} is corrupt: its ${name} is ${digest} but the hub lists ${job.check.hex}; the download was deleted and nothing was ` +
            `kept in the cache; pull again (if this repeats, the server${process.env.HF_ENDPOINT ? " at HF_ENDPOINT" : ""} sends damaged data)`
        )
      );
    }
    await fh.sync();
    await fh.close();
    closed = true;
    fs.renameSync(partial, cache.blobPath(job.etag));
  } finally {
    if (!closed) await fh.close().catch(() => {});
  }
}

/** Deletes a download that is known bad (never resumed from) and returns `err` to throw. */
async function discard(fh: fsp.FileHandle, partial: string, err: MoeRunError): Promise<MoeRunError> {
  await fh.close().catch(() => {});
  fs.rmSync(partial, { force: true });
  return err;
}

function isWriteError(err: unknown): boolean {
  return typeof (err as NodeJS.ErrnoException)?.syscall === "string";
}
