/** Errors of talking to the hub, as one actionable line each, and whether trying again may help. */
import { MoeRunError, type MoeRunErrorCode } from "../errors.js";

export class HubError extends MoeRunError {
  /** A server error, rate limit or dropped connection: the same request may succeed later. */
  readonly retryable: boolean;
  constructor(code: MoeRunErrorCode, message: string, options: { retryable?: boolean; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause });
    this.name = "HubError";
    this.retryable = options.retryable ?? false;
  }
}

export interface HubRequestContext {
  endpoint: string;
  repoId: string;
  revision: string;
  /** The file asked for, when it was one. */
  file?: string;
  hasToken: boolean;
}

/** An HTTP error answer of the hub as a HubError (uses the hub's X-Error-Code / X-Error-Message headers). */
export function hubHttpError(status: number, headers: Headers, c: HubRequestContext): HubError {
  const code = headers.get("x-error-code") ?? "";
  const detail = (headers.get("x-error-message") ?? "").replace(/\s+/g, " ").trim();
  const page = `${c.endpoint}/${c.repoId}`;
  if (status === 401 && !c.hasToken) {
    return new HubError(
      "HUB_AUTH",
      `${c.repoId} needs a Hugging Face token (it is private or gated, or does not exist): create one at https://huggingface.co/settings/tokens, ` +
        `accept the model's conditions on ${page} if it asks, and set HF_TOKEN=<token>`
    );
  }
  if (status === 401) {
    return new HubError("HUB_AUTH", `the hub refused the token in HF_TOKEN for ${c.repoId} (invalid or expired, or the repository does not exist); check the token and the repository id`);
  }
  if (status === 403) {
    const gated = code === "GatedRepo" || /gated|restricted|access/i.test(detail);
    return new HubError(
      "HUB_AUTH",
      gated
        ? `${c.repoId} is gated and this token has no access yet: accept its conditions on ${page} (logged in as the token's user), then pull again`
        : `the hub denied access to ${c.repoId}${detail ? ` (${detail})` : ""}; set HF_TOKEN to a token with read access to it`
    );
  }
  if (status === 404) {
    if (code === "RevisionNotFound") return new HubError("HUB_NOT_FOUND", `${c.repoId} has no revision "${c.revision}" (a branch, tag or commit) on ${c.endpoint}`);
    if (code === "EntryNotFound" || (c.file && code !== "RepoNotFound")) {
      return new HubError("HUB_NOT_FOUND", `${c.file ?? "a file"} is listed in ${c.repoId} but the hub has no such file at ${c.revision}; pull again (the repository may have changed)`);
    }
    return new HubError("HUB_NOT_FOUND", `repository ${c.repoId} (revision ${c.revision}) was not found on ${c.endpoint}; check the id (org/name)`);
  }
  if (status === 429) return new HubError("HUB_UNAVAILABLE", `the hub is rate-limiting requests (HTTP 429); wait a minute and pull again`, { retryable: true });
  const what = c.file ? `${c.file} of ${c.repoId}` : c.repoId;
  if (status >= 500) return new HubError("HUB_UNAVAILABLE", `${c.endpoint} answered HTTP ${status} for ${what}${detail ? ` (${detail})` : ""}; try again later`, { retryable: true });
  return new HubError("HUB_UNAVAILABLE", `${c.endpoint} answered HTTP ${status} for ${what}${detail ? ` (${detail})` : ""}`);
}

const NETWORK_REASONS: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "the connection was reset",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "name lookup failed (no network?)",
  ETIMEDOUT: "timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EPIPE: "the connection was closed",
  UND_ERR_SOCKET: "the connection was closed",
  UND_ERR_CONNECT_TIMEOUT: "connecting timed out",
  UND_ERR_HEADERS_TIMEOUT: "no answer in time",
  UND_ERR_BODY_TIMEOUT: "the download stalled",
  ERR_INVALID_URL: "not a valid URL",
};

/** The reason a request failed below HTTP (fetch's "fetch failed" hides it in `cause`). */
export function networkReason(err: unknown): string {
  let e: unknown = err;
  let message = "";
  for (let depth = 0; depth < 4 && e; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && NETWORK_REASONS[code]) return NETWORK_REASONS[code]!;
    const m = e instanceof Error ? e.message : String(e);
    if (m && m !== "fetch failed" && m !== "terminated") message = m; // the innermost that says something
    e = (e as { cause?: unknown }).cause;
  }
  return message || "the connection failed";
}

/** Whether an error is an abort (Ctrl-C, or a sibling download failed), not a failure of its own. */
export function isAbortError(err: unknown): boolean {
  return (err instanceof DOMException || err instanceof Error) && err.name === "AbortError";
}
