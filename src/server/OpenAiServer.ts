/**
 * An OpenAI-compatible HTTP server for one model (node:http): POST /v1/chat/completions and
 * /v1/completions (streamed as server-sent events or not), GET /v1/models, /v1/stats (moe-run's
 * extension: requests, KV cache reuse, the expert cache) and /health. The model computes one
 * sequence at a time: requests wait in a bounded FIFO queue and past it get 429. One KV cache is
 * kept across requests, so a request that repeats the previous conversation and adds to it
 * computes only what it adds. A client that disconnects aborts its generation; nothing a request
 * sends can crash the process.
 */
import { timingSafeEqual } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import type { ExpertCacheReport } from "../cache/TieredExpertSource.js";
import { MoeRunError } from "../errors.js";
import type { SequenceStats, TokenSequence } from "../model/KvSequence.js";
import { PromptContinuation } from "../model/PromptContinuation.js";
import type { TextTokenizer } from "../tokenizer/TextTokenizer.js";
import { parseChatRequest, parseCompletionRequest, type CompletionRequest } from "./completionRequest.js";
import { GenerationQueue, QueueFullError } from "./GenerationQueue.js";
import { HttpError } from "./HttpError.js";
import { chunkBody, completionBody, responseHead, usageChunkBody, type CompletionResult, type FinishReason, type ResponseHead } from "./openAiShapes.js";
import { readJsonBody } from "./readJsonBody.js";
import { StopMatcher } from "./StopMatcher.js";

/** What the server needs of a model: MoeModel and WorkerModel (recommended: compute off the HTTP thread) both are. */
export interface ServedModel {
  readonly contextSize: number;
  readonly tokenizer: TextTokenizer;
  readonly dims: { vocabSize: number };
  openSequence(): TokenSequence;
  cacheStats(): ExpertCacheReport | Promise<ExpertCacheReport>;
}

export interface OpenAiServerOptions {
  /** The model's name in responses and /v1/models. */
  modelId: string;
  /** Default 127.0.0.1 (this machine only). */
  host?: string;
  /** Default 8080; 0 picks a free port (see `port` once started). */
  port?: number;
  /** When set, /v1/* requests need `Authorization: Bearer <apiKey>` (/health does not). */
  apiKey?: string;
  /** Requests that may wait for the model; more get 429. Default 16. */
  maxQueue?: number;
  /** Largest request body. Default 1 MiB. */
  maxBodyBytes?: number;
  /** One line per request and notes. Default: none. */
  log?: (line: string) => void;
}

/** Why a generation was stopped from outside: its client left, or the server is closing. */
class Stopped extends Error {
  constructor(readonly why: "client" | "shutdown") {
    super(why === "client" ? "the client disconnected" : "the server is shutting down");
    this.name = "AbortError";
  }
}

export class OpenAiServer {
  private readonly queue: GenerationQueue;
  private readonly sequence: TokenSequence;
  private readonly chatPrompts: PromptContinuation;
  private readonly textPrompts: PromptContinuation;
  private readonly inFlight = new Set<AbortController>();
  private readonly handlers = new Set<Promise<void>>();
  private readonly counts = { completed: 0, refused: 0, disconnected: 0, failed: 0, promptTokens: 0, reusedTokens: 0, generatedTokens: 0 };
  private closing: Promise<void> | undefined;
  readonly host: string;
  port = 0;

  private constructor(
    private readonly model: ServedModel,
    private readonly options: OpenAiServerOptions,
    private readonly server: http.Server
  ) {
    this.host = options.host ?? "127.0.0.1";
    this.queue = new GenerationQueue(options.maxQueue ?? 16);
    this.sequence = model.openSequence();
    this.chatPrompts = new PromptContinuation((t) => model.tokenizer.encode(t, { addSpecialTokens: false }));
    this.textPrompts = new PromptContinuation((t) => model.tokenizer.encode(t));
  }

  /** Starts listening; resolves once the port is open. */
  static async start(model: ServedModel, options: OpenAiServerOptions): Promise<OpenAiServer> {
    const server = http.createServer();
    const s = new OpenAiServer(model, options, server);
    server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
      const done = s.handle(req, res).catch((err: unknown) => s.log(`internal error: ${(err as Error)?.message ?? err}`));
      s.handlers.add(done);
      void done.finally(() => s.handlers.delete(done));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 8080, s.host, () => {
        server.off("error", reject);
        resolve();
      });
    }).catch(async (err: NodeJS.ErrnoException) => {
      await s.sequence.dispose();
      const where = `${s.host}:${options.port ?? 8080}`;
      if (err.code === "EADDRINUSE") throw new MoeRunError("INVALID_OPTION", `cannot listen on ${where}: the port is in use; choose another with --port`);
      if (err.code === "EACCES") throw new MoeRunError("INVALID_OPTION", `cannot listen on ${where}: permission denied (ports below 1024 need privileges); choose another with --port`);
      if (err.code === "EADDRNOTAVAIL" || err.code === "ENOTFOUND") throw new MoeRunError("INVALID_OPTION", `cannot listen on ${where}: no such address on this machine; check --host`);
      throw err;
    });
    s.port = (server.address() as AddressInfo).port;
    return s;
  }

  /** The server's base URL, e.g. http://127.0.0.1:8080 (the API is under /v1). */
  get url(): string {
    return `http://${this.host.includes(":") ? `[${this.host}]` : this.host}:${this.port}`;
  }

  /**
   * Stops taking requests, refuses the waiting ones (503), stops the running generation (its
   * client gets an error), waits for every response to end, and frees the server's KV cache. The
   * model itself stays the caller's to dispose.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.queue.rejectWaiting(new HttpError(503, "the server is shutting down", "server_error"));
      for (const c of this.inFlight) c.abort(new Stopped("shutdown"));
      await Promise.all([...this.handlers]);
      this.server.closeAllConnections();
      await closed;
      await this.sequence.dispose();
    })();
    return this.closing;
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    res.on("error", () => {}); // a client that went away: nothing to tell it
    try {
      const url = new URL(req.url ?? "/", "http://localhost");
      const route = url.pathname.replace(/\/+$/, "") || "/";
      const method = req.method ?? "GET";
      if (this.closing) throw new HttpError(503, "the server is shutting down", "server_error");
      if (route === "/health") {
        allow(method, "GET");
        return sendJson(res, 200, { status: "ok", model: this.options.modelId, busy: this.queue.busy, waiting: this.queue.waitingCount });
      }
      if (route.startsWith("/v1/")) this.authorize(req);
      if (route === "/v1/models") {
        allow(method, "GET");
        return sendJson(res, 200, { object: "list", data: [this.modelCard()] });
      }
      if (route.startsWith("/v1/models/")) {
        allow(method, "GET");
        const id = decodeURIComponent(route.slice("/v1/models/".length));
        if (id !== this.options.modelId) throw new HttpError(404, `the model '${id}' does not exist here; this server serves '${this.options.modelId}'`, "invalid_request_error", "model", "model_not_found");
        return sendJson(res, 200, this.modelCard());
      }
      if (route === "/v1/stats") {
        allow(method, "GET");
        return sendJson(res, 200, await this.stats());
      }
      if (route === "/v1/chat/completions" || route === "/v1/completions") {
        allow(method, "POST");
        const body = await readJsonBody(req, this.options.maxBodyBytes ?? 1 << 20);
        const request = route === "/v1/chat/completions" ? parseChatRequest(body) : parseCompletionRequest(body);
        return await this.complete(request, res, `${method} ${route}`);
      }
      throw new HttpError(404, `no such endpoint: ${method} ${url.pathname}; moe-run serves /v1/chat/completions, /v1/completions, /v1/models, /v1/stats and /health`, "invalid_request_error", null, "not_found");
    } catch (err) {
      this.fail(res, err);
    }
  }

  private authorize(req: http.IncomingMessage): void {
    const key = this.options.apiKey;
    if (key === undefined) return;
    const given = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "")?.[1]?.trim() ?? "";
    const a = Buffer.from(given);
    const b = Buffer.from(key);
    if (a.length !== b.length || !timingSafeEqual(a, b)) {
      throw new HttpError(401, given ? "incorrect API key provided" : "an API key is required: send it as 'Authorization: Bearer <key>'", "invalid_request_error", null, "invalid_api_key");
    }
  }

  private modelCard(): object {
    return { id: this.options.modelId, object: "model", created: 0, owned_by: "moe-run", context_length: this.model.contextSize };
  }

  private async stats(): Promise<object> {
    const c = this.counts;
    return {
      model: this.options.modelId,
      context_size: this.model.contextSize,
      queue: { busy: this.queue.busy, waiting: this.queue.waitingCount, max_waiting: this.queue.maxWaiting },
      requests: { completed: c.completed, refused: c.refused, disconnected: c.disconnected, failed: c.failed },
      tokens: { prompt: c.promptTokens, reused_from_kv_cache: c.reusedTokens, generated: c.generatedTokens },
      experts: await this.model.cacheStats(),
    };
  }

  /** Answers a completion request: waits its turn, generates, streams or sends the result. */
  private async complete(r: CompletionRequest, res: http.ServerResponse, what: string): Promise<void> {
    const { ids, text } = this.promptOf(r);
    const room = this.model.contextSize - ids.length;
    if (room < 1) {
      throw new HttpError(400, `the prompt has ${ids.length} tokens but this model's context holds ${this.model.contextSize} (with room for 1 token to generate); shorten the messages`, "invalid_request_error", r.kind === "chat" ? "messages" : "prompt", "context_length_exceeded");
    }
    const maxTokens = Math.min(r.maxTokens ?? (r.kind === "chat" ? room : 16), room);
    const controller = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) controller.abort(new Stopped("client"));
    };
    res.on("close", onClose);
    this.inFlight.add(controller);
    let release: (() => void) | undefined;
    const started = performance.now();
    try {
      release = await this.queue.acquire(controller.signal);
      const head = responseHead(r.kind, this.options.modelId);
      const result = r.stream
        ? await this.stream(r, res, head, this.generate(r, ids, text, maxTokens, controller.signal))
        : await drain(this.generate(r, ids, text, maxTokens, controller.signal));
      if (!r.stream) sendJson(res, 200, completionBody(r.kind, head, result));
      const s = result.stats;
      this.counts.completed++;
      this.counts.promptTokens += s.promptTokens;
      this.counts.reusedTokens += s.reusedTokens;
      this.counts.generatedTokens += s.generatedTokens;
      this.log(`${what} 200: prompt ${s.promptTokens} tok (${s.reusedTokens} from the KV cache), generated ${s.generatedTokens} tok, ${result.finishReason}, ${((performance.now() - started) / 1000).toFixed(2)} s`);
    } catch (err) {
      if (err instanceof Stopped && err.why === "client") {
        this.counts.disconnected++;
        this.log(`${what}: the client disconnected; generation stopped`);
        return;
      }
      throw err;
    } finally {
      release?.();
      res.off("close", onClose);
      this.inFlight.delete(controller);
    }
  }

  /** The prompt's token ids, and its text when it has one (to continue from next time). */
  private promptOf(r: CompletionRequest): { ids: number[]; text: string | undefined } {
    if (r.kind === "chat") {
      if (!this.model.tokenizer.hasChatTemplate) throw new HttpError(400, "this model has no chat template (tokenizer_config.json); use /v1/completions with a plain prompt", "invalid_request_error", "messages");
      const text = this.model.tokenizer.applyChatTemplate(r.messages!, { addGenerationPrompt: true });
      return { ids: this.chatPrompts.encodeText(text), text };
    }
    if (typeof r.prompt === "string") return { ids: this.textPrompts.encodeText(r.prompt), text: r.prompt };
    const V = this.model.dims.vocabSize;
    const bad = r.prompt!.find((id) => id >= V);
    if (bad !== undefined) throw new HttpError(400, `prompt token id ${bad} is outside the model's vocabulary (0 to ${V - 1})`, "invalid_request_error", "prompt");
    return { ids: r.prompt!, text: undefined };
  }

  /** Generates on the server's sequence, applying stop sequences; yields text, returns the result. */
  private async *generate(r: CompletionRequest, ids: number[], promptText: string | undefined, maxTokens: number, signal: AbortSignal): AsyncGenerator<string, CompletionResult> {
    const matcher = new StopMatcher(r.stop);
    const generated: number[] = [];
    let stats: SequenceStats | undefined;
    let all = "";
    let text = "";
    // At a stop sequence the generation is aborted rather than left (break): it then ends on its
    // own thread before the next request's begins, and its statistics arrive.
    const stop = new AbortController();
    const gen = this.sequence.generate(ids, {
      maxTokens,
      temperature: r.temperature,
      topP: r.topP,
      topK: r.topK,
      seed: r.seed,
      signal: AbortSignal.any([signal, stop.signal]),
      onToken: (id) => void generated.push(id),
      onStats: (s) => void (stats = s),
    });
    try {
      for await (const piece of gen) {
        all += piece;
        if (stop.signal.aborted) continue;
        const out = matcher.push(piece);
        if (out.text) {
          text += out.text;
          yield out.text;
        }
        if (out.stopped) stop.abort(new DOMException("stop sequence reached", "AbortError"));
      }
      const rest = matcher.flush();
      if (rest) {
        text += rest;
        yield rest;
      }
    } catch (err) {
      if (!stop.signal.aborted || signal.aborted) throw err;
    } finally {
      // The next request may continue this conversation: remember what the cache now holds.
      if (stats && promptText !== undefined) (r.kind === "chat" ? this.chatPrompts : this.textPrompts).remember(promptText + all, [...ids, ...generated]);
    }
    const stopped = stop.signal.aborted;
    const finishReason: FinishReason = stopped || stats!.finishReason === "eos" ? "stop" : "length";
    return { text, finishReason, stats: stats! };
  }

  /** Sends a generation as server-sent events; resolves to its result. */
  private async stream(r: CompletionRequest, res: http.ServerResponse, head: ResponseHead, gen: AsyncGenerator<string, CompletionResult>): Promise<CompletionResult> {
    res.writeHead(200, { "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", Connection: "keep-alive", "X-Accel-Buffering": "no" });
    res.flushHeaders();
    if (r.kind === "chat") sse(res, chunkBody(r.kind, head, { first: true, text: "" }));
    let result: CompletionResult;
    for (;;) {
      const step = await gen.next();
      if (step.done) {
        result = step.value;
        break;
      }
      sse(res, chunkBody(r.kind, head, { text: step.value }));
    }
    sse(res, chunkBody(r.kind, head, { finishReason: result.finishReason }));
    if (r.includeUsage) sse(res, usageChunkBody(r.kind, head, result.stats));
    if (!res.destroyed) res.end("data: [DONE]\n\n");
    return result;
  }

  /** Answers an error: an OpenAI error object, or, once a stream has begun, an error event that ends it. */
  private fail(res: http.ServerResponse, err: unknown): void {
    const e = toHttpError(err);
    if (e.status === 429) this.counts.refused++;
    else if (e.status >= 500) this.counts.failed++;
    if (e.status >= 500 && !(err instanceof Stopped)) this.log(`error: ${e.message}`);
    if (res.destroyed || res.writableEnded) return;
    if (res.headersSent) {
      sse(res, e.body());
      res.end();
      return;
    }
    const headers: http.OutgoingHttpHeaders = {};
    if (e.status === 429) headers["Retry-After"] = "1";
    if (e.status === 401) headers["WWW-Authenticate"] = "Bearer";
    if (e.status === 413) headers["Connection"] = "close";
    sendJson(res, e.status, e.body(), headers);
  }
}

function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof QueueFullError) return new HttpError(429, err.message, "rate_limit_error", null, "rate_limit_exceeded");
  if (err instanceof Stopped) return new HttpError(503, err.message, "server_error");
  if (err instanceof MoeRunError) {
    if (err.code === "CONTEXT_OVERFLOW") return new HttpError(400, err.message, "invalid_request_error", null, "context_length_exceeded");
    if (err.code === "INVALID_OPTION") return new HttpError(400, err.message, "invalid_request_error");
    if (err.code === "DISPOSED") return new HttpError(503, "the server is shutting down", "server_error");
    return new HttpError(500, err.message, "server_error", null, err.code.toLowerCase());
  }
  return new HttpError(500, `internal error: ${err instanceof Error ? err.message : String(err)}`, "server_error");
}

function allow(method: string, expected: string): void {
  if (method !== expected) throw new HttpError(405, `use ${expected} for this endpoint, not ${method}`, "invalid_request_error", null, "method_not_allowed");
}

function sendJson(res: http.ServerResponse, status: number, body: object, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sse(res: http.ServerResponse, body: object): void {
  if (!res.destroyed && !res.writableEnded) res.write(`data: ${JSON.stringify(body)}\n\n`);
}

async function drain(gen: AsyncGenerator<string, CompletionResult>): Promise<CompletionResult> {
  for (;;) {
    const step = await gen.next();
    if (step.done) return step.value;
  }
}
