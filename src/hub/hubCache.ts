/**
 * The Hugging Face hub cache, laid out as huggingface_hub lays it out, so files other tools
 * downloaded are reused and ours are theirs:
 *
 *   <cache>/models--<org>--<name>/blobs/<etag>            file contents (sha256 for LFS files, git sha1 otherwise)
 *   <cache>/models--<org>--<name>/blobs/<etag>.incomplete a download in progress (resumed from its size)
 *   <cache>/models--<org>--<name>/snapshots/<commit>/<file> relative symbolic link to ../../blobs/<etag>
 *   <cache>/models--<org>--<name>/refs/<revision>          the commit the revision pointed to
 *
 * `<cache>` is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isCommitHash } from "./repoId.js";

function expandHome(p: string): string {
  return p === "~" || p.startsWith("~/") ? path.join(os.homedir(), p.slice(1)) : p;
}

/** huggingface_hub's HF_HOME: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface. */
export function hfHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HOME) return path.resolve(expandHome(env.HF_HOME));
  const xdg = env.XDG_CACHE_HOME ? expandHome(env.XDG_CACHE_HOME) : path.join(os.homedir(), ".cache");
  return path.resolve(xdg, "huggingface");
}

/** The hub cache directory: $HF_HUB_CACHE (or the older $HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub. */
export function defaultHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE;
  return explicit ? path.resolve(expandHome(explicit)) : path.join(hfHome(env), "hub");
}

/** One model repository in the cache. Holds no open resources. */
export class HubRepoCache {
  /** models--<org>--<name> */
  readonly folderName: string;
  readonly dir: string;

  constructor(
    readonly cacheDir: string,
    readonly repoId: string
  ) {
    this.folderName = ["models", ...repoId.split("/")].join("--");
    this.dir = path.join(cacheDir, this.folderName);
  }

  blobPath(etag: string): string {
    return path.join(this.dir, "blobs", etag);
  }

  incompletePath(etag: string): string {
    return this.blobPath(etag) + ".incomplete";
  }

  snapshotDir(commit: string): string {
    return path.join(this.dir, "snapshots", commit);
  }

  /** moe-run's own lock name beside huggingface_hub's `.locks/<repo>/<etag>.lock` (a flock we cannot share). */
  lockPath(etag: string): string {
    return path.join(this.cacheDir, ".locks", this.folderName, `${etag}.moe-run-lock`);
  }

  /** The size of a finished blob, or null when it is absent (or not a regular file). */
  blobSize(etag: string): number | null {
    try {
      const st = fs.statSync(this.blobPath(etag));
      return st.isFile() ? st.size : null;
    } catch {
      return null;
    }
  }

  /** Bytes of an interrupted download of this blob (0 when there is none). */
  incompleteSize(etag: string): number {
    try {
      const st = fs.statSync(this.incompletePath(etag));
      return st.isFile() ? st.size : 0;
    } catch {
      return 0;
    }
  }

  /** The commit a revision resolved to on the last pull (a commit hash is its own), or null. */
  readRef(revision: string): string | null {
    if (isCommitHash(revision)) return revision;
    try {
      const commit = fs.readFileSync(path.join(this.dir, "refs", revision), "utf8").trim();
      return isCommitHash(commit) ? commit : null;
    } catch {
      return null;
    }
  }

  /** Records that `revision` is `commit` (written whole: a temporary file renamed into place). */
  writeRef(revision: string, commit: string): void {
    if (isCommitHash(revision)) return;
    const file = path.join(this.dir, "refs", revision);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, commit);
    fs.renameSync(tmp, file);
  }

  /**
   * Points snapshots/<commit>/<filename> at blobs/<etag> with a relative link (as huggingface_hub
   * does, so the cache can be moved). A file system without symbolic links gets a copy.
   */
  linkSnapshotFile(commit: string, filename: string, etag: string): void {
    const link = path.join(this.snapshotDir(commit), filename);
    const blob = this.blobPath(etag);
    const target = path.relative(path.dirname(link), blob);
    fs.mkdirSync(path.dirname(link), { recursive: true });
    try {
      if (fs.readlinkSync(link) === target) return;
    } catch {
      // absent, or not a link: replaced below
    }
    const tmp = `${link}.${process.pid}.tmp`;
    fs.rmSync(tmp, { force: true });
    try {
      fs.symlinkSync(target, tmp);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP") throw err;
      fs.copyFileSync(blob, tmp);
    }
    fs.renameSync(tmp, link);
  }

  /**
   * The snapshot of `revision` if the cache holds a complete model there (config.json, tokenizer.json
   * and every safetensors shard), else null. For working offline or when the hub cannot be reached.
   */
  completeSnapshot(revision: string): { commit: string; dir: string } | null {
    const commit = this.readRef(revision);
    if (!commit) return null;
    const dir = this.snapshotDir(commit);
    const present = (name: string) => {
      try {
        return fs.statSync(path.join(dir, name)).isFile();
      } catch {
        return false;
      }
    };
    if (!present("config.json") || !present("tokenizer.json")) return null;
    if (present("model.safetensors.index.json")) {
      try {
        const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8")) as { weight_map?: Record<string, string> };
        const shards = new Set(Object.values(index.weight_map ?? {}));
        return shards.size > 0 && [...shards].every((s) => typeof s === "string" && present(s)) ? { commit, dir } : null;
      } catch {
        return null;
      }
    }
    try {
      return fs.readdirSync(dir).some((f) => f.endsWith(".safetensors") && present(f)) ? { commit, dir } : null;
    } catch {
      return null;
    }
  }
}
