/**
 * A local stand-in for the Hugging Face hub (never the network): the listing API, `resolve` URLs
 * that redirect LFS files to a "CDN" on another port (another origin, as the real hub's CDN is),
 * ETag / X-Linked-Etag / X-Repo-Commit headers, Range requests, and faults on demand: a
 * connection cut after N bytes, a stall, damaged bytes, a required token.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";

export interface HubFile {
  path: string;
  bytes: Buffer;
  lfs: boolean;
  sha256: string;
  gitSha1: string;
}

export interface HubRepo {
  id: string;
  commit: string;
  files: HubFile[];
}

export interface HubRequest {
  method: string;
  url: string;
  server: "hub" | "cdn";
  range?: string;
  authorization?: string;
  /** Body bytes sent. */
  bytes: number;
}

export interface HubFaults {
  /** file path -> cut the connection after this many body bytes (the next `times` requests). */
  cut: Map<string, { after: number; times: number }>;
  /** file path -> send this many bytes, then send nothing more (until the client goes away). */
  stall: Map<string, number>;
  /** Files served with one byte changed. */
  corrupt: Set<string>;
  /** When set, the hub answers 401 without `Authorization: Bearer <token>`. */
  token?: string;
  /** A listing with names only (as without ?blobs=true): sizes and hashes come from HEAD requests. */
  namesOnly?: boolean;
}

function hubFile(p: string, bytes: Buffer): HubFile {
  const lfs = p.endsWith(".safetensors") || p.endsWith(".bin");
  return {
    path: p,
    bytes,
    lfs,
    sha256: createHash("sha256").update(bytes).digest("hex"),
    gitSha1: createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex"),
  };
}

/** A repository made of a folder's files (plus extra ones), with a commit hash derived from its id. */
export function repoFromDir(id: string, dir: string, extra: Record<string, Buffer> = {}): HubRepo {
  const files = fs
    .readdirSync(dir)
    .filter((f) => fs.statSync(path.join(dir, f)).isFile())
    .map((f) => hubFile(f, fs.readFileSync(path.join(dir, f))));
  for (const [p, b] of Object.entries(extra)) files.push(hubFile(p, b));
  return { id, commit: createHash("sha1").update(`commit of ${id}`).digest("hex"), files };
}

export class TestHub {
  readonly requests: HubRequest[] = [];
  readonly faults: HubFaults = { cut: new Map(), stall: new Map(), corrupt: new Set() };
  private readonly repos = new Map<string, HubRepo>();
  private hub?: http.Server;
  private cdn?: http.Server;
  private cdnUrl = "";
  url = "";

  constructor(repos: HubRepo[]) {
    for (const r of repos) this.repos.set(r.id, r);
  }

  async start(): Promise<this> {
    this.cdn = await listen((req, res) => this.serveCdn(req, res));
    this.cdnUrl = `http://127.0.0.1:${(this.cdn.address() as AddressInfo).port}`;
    this.hub = await listen((req, res) => this.serveHub(req, res));
    this.url = `http://127.0.0.1:${(this.hub.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    for (const s of [this.hub, this.cdn]) {
      if (!s) continue;
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }

  repo(id: string): HubRepo {
    return this.repos.get(id)!;
  }

  /** Requests for a file's contents (resolve without a redirect, or the CDN). */
  contentRequests(file: string): HubRequest[] {
    return this.requests.filter((r) => r.bytes > 0 && decodeURIComponent(r.url).split("?")[0]!.endsWith(`/${file}`));
  }

  private log(req: http.IncomingMessage, server: "hub" | "cdn"): HubRequest {
    const entry: HubRequest = { method: req.method ?? "", url: req.url ?? "", server, range: req.headers.range, authorization: req.headers.authorization, bytes: 0 };
    this.requests.push(entry);
    return entry;
  }

  private authorized(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (!this.faults.token || req.headers.authorization === `Bearer ${this.faults.token}`) return true;
    res.writeHead(401, { "X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted." }).end();
    return false;
  }

  private serveHub(req: http.IncomingMessage, res: http.ServerResponse): void {
    const entry = this.log(req, "hub");
    const url = new URL(req.url ?? "/", this.url);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api) {
      const repo = this.repos.get(api[1]!);
      if (!repo) return void res.writeHead(404, { "X-Error-Code": "RepoNotFound" }).end();
      if (!this.authorized(req, res)) return;
      const rev = decodeURIComponent(api[2]!);
      if (rev !== "main" && rev !== repo.commit) return void res.writeHead(404, { "X-Error-Code": "RevisionNotFound" }).end();
      const blobs = url.searchParams.get("blobs") === "true" && !this.faults.namesOnly;
      const siblings = repo.files.map((f) =>
        blobs
          ? { rfilename: f.path, size: f.bytes.length, blobId: f.gitSha1, ...(f.lfs ? { lfs: { sha256: f.sha256, size: f.bytes.length, pointerSize: 134 } } : {}) }
          : { rfilename: f.path }
      );
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ id: repo.id, modelId: repo.id, sha: repo.commit, siblings }));
      return;
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (resolve) {
      const repo = this.repos.get(resolve[1]!);
      if (!repo) return void res.writeHead(404, { "X-Error-Code": "RepoNotFound" }).end();
      if (!this.authorized(req, res)) return;
      const rev = decodeURIComponent(resolve[2]!);
      if (rev !== "main" && rev !== repo.commit) return void res.writeHead(404, { "X-Error-Code": "RevisionNotFound" }).end();
      const file = repo.files.find((f) => f.path === decodeURIComponent(resolve[3]!));
      if (!file) return void res.writeHead(404, { "X-Error-Code": "EntryNotFound" }).end();
      if (file.lfs) {
        res.writeHead(302, {
          Location: `${this.cdnUrl}/repos/${file.sha256}/${encodeURIComponent(file.path)}?signed=1`,
          "X-Repo-Commit": repo.commit,
          "X-Linked-Etag": `"${file.sha256}"`,
          "X-Linked-Size": String(file.bytes.length),
          ETag: `"${file.gitSha1}"`,
        });
        res.end();
        return;
      }
      this.sendFile(req, res, file, entry, { "X-Repo-Commit": repo.commit, ETag: `"${file.gitSha1}"` });
      return;
    }
    res.writeHead(404).end();
  }

  private serveCdn(req: http.IncomingMessage, res: http.ServerResponse): void {
    const entry = this.log(req, "cdn");
    const m = /^\/repos\/([0-9a-f]{64})\/([^?]+)/.exec(req.url ?? "");
    const file = m && [...this.repos.values()].flatMap((r) => r.files).find((f) => f.sha256 === m[1]);
    if (!file) return void res.writeHead(404).end();
    this.sendFile(req, res, file, entry, { ETag: `"cdn-${file.sha256.slice(0, 8)}"` });
  }

  /** Sends a file (or the range asked for), applying the faults set for it. */
  private sendFile(req: http.IncomingMessage, res: http.ServerResponse, file: HubFile, entry: HubRequest, headers: Record<string, string>): void {
    let body = file.bytes;
    if (this.faults.corrupt.has(file.path)) {
      body = Buffer.from(body);
      body[Math.floor(body.length / 2)]! ^= 0xff;
    }
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range && Number(range[1]) < body.length) start = Number(range[1]);
    const part = body.subarray(start);
    const status = start > 0 ? 206 : 200;
    res.writeHead(status, {
      ...headers,
      "Content-Length": String(part.length),
      "Accept-Ranges": "bytes",
      ...(status === 206 ? { "Content-Range": `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
    });
    if (req.method === "HEAD") return void res.end();
    const cut = this.faults.cut.get(file.path);
    const stall = this.faults.stall.get(file.path);
    if (cut && cut.times > 0) {
      cut.times--;
      const n = Math.max(0, cut.after - start);
      entry.bytes = n;
      res.write(part.subarray(0, n), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    if (stall !== undefined) {
      entry.bytes = Math.min(stall, part.length);
      res.write(part.subarray(0, stall));
      return; // never ends: the client stops or goes away
    }
    entry.bytes = part.length;
    res.end(part);
  }
}

function listen(handler: http.RequestListener): Promise<http.Server> {
  return new Promise((resolve, reject) => {
    const s = http.createServer(handler);
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => resolve(s));
  });
}
