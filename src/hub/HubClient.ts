/**
 * The few hub endpoints a pull needs, over Node's fetch:
 *
 *   GET  {endpoint}/api/models/{repo}/revision/{revision}?blobs=true  files, sizes, hashes, commit
 *   GET  {endpoint}/{repo}/resolve/{commit}/{file}                   contents (Range for resume)
 *   HEAD {endpoint}/{repo}/resolve/{commit}/{file}                   ETag and size, where the listing lacks them
 *
 * Redirects are followed by hand: the hub's own headers (X-Linked-Etag, X-Repo-Commit) are on the
 * first answer, and the token is not sent on to another host (the hub redirects LFS files to a CDN).
 */
import { VERSION } from "../version.js";
import { HubError, hubHttpError, isAbortError, networkReason, type HubRequestContext } from "./HubError.js";

/** One file of a repository as the hub lists it. */
export interface RemoteFile {
  path: string;
  size: number;
  /** Git blob sha1: the file's cache name (ETag) when it is not stored with LFS. */
  blobId?: string;
  /** LFS sha256 of the contents: the cache name of an LFS file. */
  sha256?: string;
}

export interface RepoListing {
  /** The commit the revision resolves to now. */
  commit: string;
  files: RemoteFile[];
}

/** An open download; read `body` to the end or call cancel(). */
export interface FileStream {
  /** Where the body starts in the file: the offset asked for (206) or 0 (the server sent it all). */
  start: number;
  body: AsyncIterable<Uint8Array>;
  /** The hub's ETag for the file (X-Linked-Etag for LFS files), unquoted, if it sent one. */
  etag?: string;
  cancel(): Promise<void>;
}

export interface HubClientOptions {
  /** Default: $HF_ENDPOINT or https://huggingface.co (resolved by the caller). */
  endpoint: string;
  /** Sent as `Authorization: Bearer <token>` to the endpoint's host only. */
  token?: string;
  /** For tests; default: the global fetch. */
  fetch?: typeof fetch;
}

const MAX_REDIRECTS = 10;

/** "W/\"abc\"" -> "abc" */
export function normalizeEtag(value: string | null): string | undefined {
  if (!value) return undefined;
  return value.replace(/^W\//, "").replace(/^"|"$/g, "") || undefined;
}

export class HubClient {
  readonly endpoint: string;
  private readonly token: string | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly origin: string;

  constructor(options: HubClientOptions) {
    this.endpoint = options.endpoint.replace(/\/+$/, "");
    this.token = options.token;
    this.fetchImpl = options.fetch ?? fetch;
    try {
      this.origin = new URL(this.endpoint).origin;
    } catch {
      throw new HubError("HUB_UNAVAILABLE", `HF_ENDPOINT "${this.endpoint}" is not a URL (expected something like https://huggingface.co)`);
    }
  }

  /** The files of `repoId` at `revision`, with sizes and hashes, and the commit it resolves to. */
  async listFiles(repoId: string, revision: string, signal?: AbortSignal): Promise<RepoListing> {
    const url = `${this.endpoint}/api/models/${repoId}/revision/${encodeURIComponent(revision)}?blobs=true`;
    const ctx = this.context(repoId, revision);
    const res = await this.request(url, "GET", {}, ctx, signal);
    let body: unknown;
    try {
      body = await res.json();
    } catch (err) {
      if (isAbortError(err)) throw err;
      throw new HubError("HUB_UNAVAILABLE", `${this.endpoint} answered the listing of ${repoId} with something that is not JSON; is HF_ENDPOINT a Hugging Face hub?`);
    }
    return parseListing(body, repoId, this.endpoint);
  }

  /** ETag and size of a file from a HEAD request (for hubs whose listing has no hashes). */
  async fileMetadata(repoId: string, commit: string, file: string, signal?: AbortSignal): Promise<{ etag?: string; size?: number }> {
    const res = await this.request(this.resolveUrl(repoId, commit, file), "HEAD", {}, this.context(repoId, commit, file), signal, (r) =>
      Boolean(r.headers.get("x-linked-etag") ?? r.headers.get("etag"))
    );
    const size = Number(res.headers.get("x-linked-size") ?? res.headers.get("content-length") ?? NaN);
    return { etag: normalizeEtag(res.headers.get("x-linked-etag") ?? res.headers.get("etag")), size: Number.isSafeInteger(size) ? size : undefined };
  }

  /** Opens `file` at `commit` from byte `offset` (a Range request when offset > 0). */
  async openFile(repoId: string, commit: string, file: string, offset: number, signal?: AbortSignal): Promise<FileStream> {
    const headers: Record<string, string> = offset > 0 ? { Range: `bytes=${offset}-` } : {};
    const ctx = this.context(repoId, commit, file);
    let etag: string | undefined;
    const res = await this.request(this.resolveUrl(repoId, commit, file), "GET", headers, ctx, signal, (r) => {
      etag ??= normalizeEtag(r.headers.get("x-linked-etag") ?? r.headers.get("etag"));
      return false;
    });
    let start = 0;
    if (res.status === 206) {
      const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      start = m ? Number(m[1]) : -1;
      if (start !== offset) {
        await res.body?.cancel().catch(() => {});
        throw new HubError("HUB_UNAVAILABLE", `the server answered a resume of ${file} at byte ${offset} with bytes from ${m ? start : "an unreadable Content-Range"}`, { retryable: true });
      }
    }
    const body = res.body;
    if (!body) throw new HubError("HUB_UNAVAILABLE", `${this.endpoint} sent no body for ${file}`, { retryable: true });
    return { start, body: body as unknown as AsyncIterable<Uint8Array>, etag, cancel: () => body.cancel().catch(() => {}) };
  }

  private resolveUrl(repoId: string, commit: string, file: string): string {
    return `${this.endpoint}/${repoId}/resolve/${encodeURIComponent(commit)}/${file.split("/").map(encodeURIComponent).join("/")}`;
  }

  private context(repoId: string, revision: string, file?: string): HubRequestContext {
    return { endpoint: this.endpoint, repoId, revision, file, hasToken: Boolean(this.token) };
  }

  /**
   * One request, redirects followed by hand; `stopAt` may end the chain early on a redirect whose
   * headers are what was wanted (HEAD). Error statuses become HubErrors; a 2xx is returned.
   */
  private async request(
    url: string,
    method: "GET" | "HEAD",
    extra: Record<string, string>,
    ctx: HubRequestContext,
    signal: AbortSignal | undefined,
    stopAt?: (res: Response) => boolean
  ): Promise<Response> {
    let current = url;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const headers: Record<string, string> = {
        "User-Agent": `moe-run/${VERSION}; node/${process.versions.node}`,
        // Sizes, hashes and Range offsets are of the file itself, never of a compressed encoding.
        "Accept-Encoding": "identity",
        ...extra,
      };
      if (this.token && new URL(current).origin === this.origin) headers.Authorization = `Bearer ${this.token}`;
      let res: Response;
      try {
        res = await this.fetchImpl(current, { method, headers, redirect: "manual", signal });
      } catch (err) {
        if (isAbortError(err) || signal?.aborted) throw signal?.reason ?? err;
        throw new HubError("HUB_UNAVAILABLE", `cannot reach ${this.endpoint} (${networkReason(err)}); check the network, or HF_ENDPOINT if it is set`, {
          retryable: true,
          cause: err,
        });
      }
      if (res.status >= 300 && res.status < 400 && res.headers.get("location")) {
        const enough = stopAt?.(res) ?? false;
        if (method === "HEAD" && enough) return res;
        await res.body?.cancel().catch(() => {});
        current = new URL(res.headers.get("location")!, current).toString();
        continue;
      }
      if (res.ok) {
        stopAt?.(res);
        return res;
      }
      await res.body?.cancel().catch(() => {});
      throw hubHttpError(res.status, res.headers, ctx);
    }
    throw new HubError("HUB_UNAVAILABLE", `${this.endpoint} redirected ${ctx.file ?? ctx.repoId} more than ${MAX_REDIRECTS} times`);
  }
}

/** The listing's JSON (`sha`, `siblings: [{rfilename, size, blobId, lfs: {sha256, size}}]`), checked. */
function parseListing(body: unknown, repoId: string, endpoint: string): RepoListing {
  const b = body as { sha?: unknown; siblings?: unknown } | null;
  const bad = (what: string) =>
    new HubError("HUB_UNAVAILABLE", `${endpoint}'s listing of ${repoId} ${what}; is HF_ENDPOINT a Hugging Face hub?`);
  if (!b || typeof b !== "object") throw bad("is not a JSON object");
  if (typeof b.sha !== "string" || !/^[0-9a-f]{40}$/.test(b.sha)) throw bad("has no commit hash (sha)");
  if (!Array.isArray(b.siblings)) throw bad("has no file list (siblings)");
  const files: RemoteFile[] = [];
  for (const s of b.siblings as Array<Record<string, unknown>>) {
    if (!s || typeof s.rfilename !== "string") throw bad("has a file without a name");
    const lfs = s.lfs as { sha256?: unknown; size?: unknown } | undefined | null;
    const size = typeof lfs?.size === "number" ? lfs.size : s.size;
    const file: RemoteFile = { path: s.rfilename, size: typeof size === "number" && Number.isSafeInteger(size) && size >= 0 ? size : -1 };
    if (typeof s.blobId === "string" && /^[0-9a-f]{40}$/.test(s.blobId)) file.blobId = s.blobId;
    if (typeof lfs?.sha256 === "string" && /^[0-9a-f]{64}$/.test(lfs.sha256)) file.sha256 = lfs.sha256;
    files.push(file);
  }
  return { commit: b.sha, files };
}
