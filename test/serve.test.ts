/**
 * `moe-run serve` (issue 14, part 3), tested as a real process with the official `openai` client:
 * chat completions and completions, streamed and not, stop sequences, the KV cache reused by a
 * conversation's next request, /v1/models, /v1/stats, /health; 400s in OpenAI's error shape for bad
 * JSON and fields of the wrong type, 413 for an oversized body, 401 with --api-key, 429 past the
 * queue; a client that disconnects stops its generation; a load test of 32 concurrent clients
 * (some leaving mid-stream) where every request is answered or refused cleanly and the server's
 * open files and memory come back; SIGTERM closes it with status 0.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModelOnThisThread } from "../src/index.js";
import { GenerationQueue, QueueFullError } from "../src/server/GenerationQueue.js";
import { StopMatcher } from "../src/server/StopMatcher.js";
import { CLI, importFixture } from "./helpers.js";

interface Server {
  child: ChildProcess;
  url: string;
  stderr: () => string;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

/** Starts `moe-run serve <dir> --port 0 ...args` and waits until it listens. */
async function startServer(dir: string, args: string[] = []): Promise<Server> {
  const child = spawn(process.execPath, [CLI, "serve", dir, "--port", "0", "--threads", "1", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (status) => resolve(status)));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setInterval(() => {
      const m = /at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(stderr);
      if (m) {
        clearInterval(t);
        resolve(m[1]!);
      } else if (child.exitCode !== null) {
        clearInterval(t);
        reject(new Error(`the server exited: ${stderr}`));
      }
    }, 20);
  });
  return {
    child,
    url,
    stderr: () => stderr,
    stop: async (signal = "SIGTERM") => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

function client(server: Server, apiKey = "unused"): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });
}

async function getJson(url: string, init?: RequestInit): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
}

function post(server: Server, path: string, body: string, headers: Record<string, string> = {}) {
  return getJson(`${server.url}${path}`, { method: "POST", body, headers: { "Content-Type": "application/json", ...headers } });
}

/** Polls `check` every 50 ms until it holds (or fails after `ms`). */
async function until(check: () => Promise<boolean> | boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The server process's resident memory (bytes) and open file descriptors. */
function processFigures(pid: number): { rss: number; fds: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
  return { rss, fds: fs.readdirSync(`/proc/${pid}/fd`).length };
}

const messages = [{ role: "user" as const, content: "What is a license?" }];

describe("the server's pieces", () => {
  it("stop sequences are found across pieces; text that may start one is held back, then released", () => {
    const m = new StopMatcher(["END", "\n\n"]);
    expect(m.push("Hello E")).toEqual({ text: "Hello ", stopped: false });
    expect(m.push("x")).toEqual({ text: "Ex", stopped: false });
    expect(m.push(" and E")).toEqual({ text: " and ", stopped: false });
    expect(m.push("NDmore")).toEqual({ text: "", stopped: true });
    const n = new StopMatcher(["\n\n"]);
    expect(n.push("a\n")).toEqual({ text: "a", stopped: false });
    expect(n.flush()).toBe("\n");
    expect(new StopMatcher([]).push("abc")).toEqual({ text: "abc", stopped: false });
  });

  it("the queue runs one at a time in order, refuses past its bound, and drops a waiter that aborts", async () => {
    const q = new GenerationQueue(2);
    const order: string[] = [];
    const first = await q.acquire();
    const controller = new AbortController();
    const b = q.acquire().then((release) => (order.push("b"), release));
    const c = q.acquire(controller.signal);
    await expect(q.acquire()).rejects.toBeInstanceOf(QueueFullError);
    controller.abort(new Error("gone"));
    await expect(c).rejects.toThrow("gone");
    expect(q.waitingCount).toBe(1);
    const d = q.acquire().then((release) => (order.push("d"), release));
    first();
    (await b)();
    (await d)();
    expect(order).toEqual(["b", "d"]);
    expect(q.busy).toBe(false);
  });
});

describe("moe-run serve with the openai client", () => {
  let dir: string;
  let server: Server;
  let openai: OpenAI;
  beforeAll(async () => {
    dir = await importFixture("tiny-mixtral");
    server = await startServer(dir);
    openai = client(server);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("lists the model and answers /health", async () => {
    const models = await openai.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["tiny-mixtral"]);
    expect((await openai.models.retrieve("tiny-mixtral")).id).toBe("tiny-mixtral");
    const health = await getJson(`${server.url}/health`);
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ status: "ok", model: "tiny-mixtral" });
  });

  it("chat completion, not streamed: the model's greedy reply with the chat template, in OpenAI's shape", async () => {
    const r = await openai.chat.completions.create({ model: "tiny-mixtral", messages, max_tokens: 8, temperature: 0 });
    expect(r.object).toBe("chat.completion");
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.message.role).toBe("assistant");
    expect(["stop", "length"]).toContain(r.choices[0]!.finish_reason);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
    // The same as generating in-process.
    const model = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
    let expected = "";
    try {
      for await (const p of model.generate(messages, { maxTokens: 8, chat: true })) expected += p;
    } finally {
      await model.dispose();
    }
    expect(r.choices[0]!.message.content).toBe(expected);
  });

  it("chat completion, streamed: the same text in chunks, then the usage, then [DONE]", async () => {
    const plain = await openai.chat.completions.create({ model: "m", messages, max_tokens: 8, temperature: 0 });
    const stream = await openai.chat.completions.create({ model: "m", messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.object).toBe("chat.completion.chunk");
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.delta.content ?? "";
        finish = c.finish_reason ?? finish;
      }
    }
    expect(chunks).toBeGreaterThan(2);
    expect(text).toBe(plain.choices[0]!.message.content);
    expect(finish).toBe(plain.choices[0]!.finish_reason);
    expect(usage!.completion_tokens).toBe(plain.usage!.completion_tokens);
  });

  it("the next request of a conversation reuses the KV cache (usage.prompt_tokens_details.cached_tokens)", async () => {
    const first = await openai.chat.completions.create({ model: "m", messages: [{ role: "user", content: "Tell me about software." }], max_tokens: 10, temperature: 0 });
    const reply = first.choices[0]!.message.content!;
    const second = await openai.chat.completions.create({
      model: "m",
      messages: [
        { role: "user", content: "Tell me about software." },
        { role: "assistant", content: reply },
        { role: "user", content: "And hardware?" },
      ],
      max_tokens: 4,
      temperature: 0,
    });
    // Earlier requests left the cache holding a conversation that shares at most the chat
    // template's leading tokens with this one: only that prefix can be reused.
    expect(first.usage!.prompt_tokens_details!.cached_tokens).toBeLessThan(first.usage!.prompt_tokens);
    expect(second.usage!.prompt_tokens_details!.cached_tokens).toBe(first.usage!.prompt_tokens + first.usage!.completion_tokens - 1);
    const stats = await getJson(`${server.url}/v1/stats`);
    expect(stats.body.tokens.reused_from_kv_cache).toBeGreaterThan(0);
    expect(stats.body.experts.cache.hits + stats.body.experts.cache.misses).toBeGreaterThan(0);
  });

  it("completions, streamed and not, with max_tokens, seed and stop sequences", async () => {
    const prompt = "Permission is hereby granted";
    const full = await openai.completions.create({ model: "m", prompt, max_tokens: 12, temperature: 0 });
    expect(full.object).toBe("text_completion");
    expect(full.usage!.completion_tokens).toBeLessThanOrEqual(12);
    const text = full.choices[0]!.text;
    expect(text.length).toBeGreaterThan(4);
    const stop = text.slice(2, 4);
    const cut = await openai.completions.create({ model: "m", prompt, max_tokens: 12, temperature: 0, stop: [stop, "\u0000never"] });
    expect(cut.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(cut.choices[0]!.finish_reason).toBe("stop");
    let streamed = "";
    for await (const chunk of await openai.completions.create({ model: "m", prompt, max_tokens: 12, temperature: 0, stop, stream: true })) streamed += chunk.choices[0]?.text ?? "";
    expect(streamed).toBe(cut.choices[0]!.text);
    // A seed reproduces sampling.
    const a = await openai.completions.create({ model: "m", prompt, max_tokens: 8, temperature: 1, top_p: 0.9, seed: 7 });
    const b = await openai.completions.create({ model: "m", prompt, max_tokens: 8, temperature: 1, top_p: 0.9, seed: 7 });
    expect(a.choices[0]!.text).toBe(b.choices[0]!.text);
  });

  it("bad requests get 400 with an OpenAI error object, naming the field; the process carries on", async () => {
    const bad = [
      ["{not json", null],
      ["[1, 2]", null],
      [JSON.stringify({ messages: "hello" }), "messages"],
      [JSON.stringify({ messages: [{ role: "user", content: 5 }] }), "messages[0].content"],
      [JSON.stringify({ messages: [{ role: "wizard", content: "hi" }] }), "messages[0].role"],
      [JSON.stringify({ messages, temperature: "hot" }), "temperature"],
      [JSON.stringify({ messages, max_tokens: -1 }), "max_tokens"],
      [JSON.stringify({ messages, stop: [1] }), "stop"],
      [JSON.stringify({ messages, stream: "yes" }), "stream"],
      [JSON.stringify({ messages, n: 2 }), "n"],
      [JSON.stringify({ messages, top_p: 3 }), "top_p"],
      [JSON.stringify({ messages, seed: 1.5 }), "seed"],
      [JSON.stringify({ messages: [{ role: "user", content: "x ".repeat(400) }] }), "messages"],
    ] as const;
    for (const [body, param] of bad) {
      const r = await post(server, "/v1/chat/completions", body);
      expect(r.status, body).toBe(400);
      expect(r.body.error.type, body).toBe("invalid_request_error");
      expect(typeof r.body.error.message).toBe("string");
      expect(r.body.error.param, body).toBe(param);
    }
    const r = await post(server, "/v1/completions", JSON.stringify({ prompt: 42 }));
    expect(r.status).toBe(400);
    expect(r.body.error.param).toBe("prompt");
    // The official client surfaces them as BadRequestError.
    await expect(openai.chat.completions.create({ model: "m", messages, temperature: "hot" as unknown as number })).rejects.toMatchObject({ status: 400 });
    const big = await post(server, "/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "x".repeat(1_100_000) }] }));
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe("request_too_large");
    expect((await getJson(`${server.url}/v1/nothing`)).status).toBe(404);
    expect((await getJson(`${server.url}/v1/chat/completions`)).status).toBe(405);
    expect((await getJson(`${server.url}/health`)).status).toBe(200);
  });

  it("load: 32 concurrent clients, some leaving mid-stream, are all answered or refused cleanly; open files and memory come back", async () => {
    const pid = server.child.pid!;
    const round = async () => {
      const outcomes = await Promise.all(
        Array.from({ length: 32 }, async (_, i) => {
          const body = { model: "m", messages: [{ role: "user" as const, content: `Request ${i} about the license.` }], max_tokens: 12, temperature: 0.7, seed: i };
          try {
            if (i % 3 === 2) {
              const r = await openai.chat.completions.create(body);
              return r.choices[0]!.finish_reason ? "ok" : "bad";
            }
            const controller = new AbortController();
            const stream = await openai.chat.completions.create({ ...body, stream: true }, { signal: controller.signal });
            let finish: string | null = null;
            for await (const chunk of stream) {
              finish = chunk.choices[0]?.finish_reason ?? finish;
              if (i % 4 === 1) controller.abort(); // leaves after its first chunk
            }
            // The client ends a stream it aborted quietly (no error).
            if (controller.signal.aborted) return "left";
            return finish ? "ok" : "bad";
          } catch (err) {
            if (err instanceof OpenAI.APIUserAbortError) return "left";
            if (err instanceof OpenAI.APIError && err.status === 429) return "refused";
            return `error: ${(err as Error).message}`;
          }
        })
      );
      const count = (o: string) => outcomes.filter((x) => x === o).length;
      expect(outcomes.filter((o) => !["ok", "left", "refused"].includes(o)), outcomes.join(", ")).toEqual([]);
      expect(count("ok")).toBeGreaterThan(0);
      // Settled: nothing running or waiting.
      await until(async () => {
        const s = (await getJson(`${server.url}/v1/stats`)).body;
        return !s.queue.busy && s.queue.waiting === 0;
      }, "the queue to empty");
      return outcomes;
    };
    await round(); // warm-up: the experts, buffers and the JIT
    const settle = async (fds: number) => until(() => processFigures(pid).fds <= fds, "connections to close", 20_000);
    // Keep-alive connections close after the server's 5 s idle timeout.
    await new Promise((r) => setTimeout(r, 6000));
    const before = processFigures(pid);
    const outcomes = [...(await round()), ...(await round())];
    expect(outcomes.filter((o) => o === "refused").length + outcomes.filter((o) => o === "ok").length + outcomes.filter((o) => o === "left").length).toBe(64);
    await settle(before.fds + 2);
    const after = processFigures(pid);
    expect(after.rss - before.rss, `RSS ${before.rss} -> ${after.rss}`).toBeLessThan(128 << 20);
    const health = await getJson(`${server.url}/health`);
    expect(health.body).toMatchObject({ status: "ok", busy: false, waiting: 0 });
    const stats = (await getJson(`${server.url}/v1/stats`)).body;
    expect(stats.requests.failed).toBe(0);
  }, 300_000);
});

describe("moe-run serve: queue, API key, disconnects, shutdown", () => {
  let server: Server;
  const key = "sk-test-123";
  beforeAll(async () => {
    // The trained model on the JS expert kernel and onnxruntime's dense layers: slow enough that a
    // generation is still running when the test looks (on a Zen 5 core the JS kernel with native
    // dense layers decodes it at ~280 tok/s, 200 tokens in 0.7 s; with onnx dense layers ~200).
    const dir = await importFixture("moe-tiny-en");
    server = await startServer(dir, ["--max-queue", "1", "--api-key", key, "--expert-kernel", "js", "--dense", "onnx", "--schedule", "device"]);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("--api-key: 401 without the key or with a wrong one; /health needs none", async () => {
    await expect(client(server, "wrong").models.list()).rejects.toMatchObject({ status: 401 });
    const r = await getJson(`${server.url}/v1/models`);
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe("invalid_api_key");
    expect((await getJson(`${server.url}/health`)).status).toBe(200);
    expect((await client(server, key).models.list()).data).toHaveLength(1);
  });

  it("past the queue, 429; a client that disconnects mid-stream stops its generation and the next request is served", async () => {
    const openai = client(server, key);
    const long = { model: "m", messages: [{ role: "user" as const, content: "Tell me a long story." }], max_tokens: 200, temperature: 0 };
    const controller = new AbortController();
    const running = await openai.chat.completions.create({ ...long, stream: true }, { signal: controller.signal });
    const it = running[Symbol.asyncIterator]();
    await it.next(); // the role chunk: the generation has its turn
    await it.next();
    // The HTTP thread answers while the model generates.
    const health = await getJson(`${server.url}/health`);
    expect(health.body).toMatchObject({ busy: true });
    const waiting = openai.chat.completions.create({ ...long, max_tokens: 3 });
    await until(async () => (await getJson(`${server.url}/health`)).body.waiting === 1, "the second request to wait");
    const refused = await post(server, "/v1/chat/completions", JSON.stringify(long), { Authorization: `Bearer ${key}` });
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limit_exceeded");
    expect(refused.headers.get("retry-after")).toBe("1");
    controller.abort();
    // The client ends an aborted stream quietly: the chunks it had already read from the socket
    // (on a fast machine one read can hold several), then done, no error.
    let buffered = 0;
    for (let r = await it.next(); !r.done; r = await it.next()) buffered++;
    expect(buffered).toBeLessThan(long.max_tokens);
    // The waiting request runs once the first is stopped, long before its 200 tokens would have ended.
    const r = await waiting;
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(3);
    const stats = (await getJson(`${server.url}/v1/stats`, { headers: { Authorization: `Bearer ${key}` } })).body;
    expect(stats.requests.disconnected).toBe(1);
    expect(stats.requests.refused).toBeGreaterThanOrEqual(1);
    expect(server.stderr()).toMatch(/the client disconnected; generation stopped/);
  });

  it("SIGTERM during a generation ends its stream with an error event and exits with status 0", async () => {
    const openai = client(server, key);
    const stream = await openai.chat.completions.create({ model: "m", messages: [{ role: "user", content: "Tell me a long story." }], max_tokens: 200, temperature: 0, stream: true });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    const status = server.stop("SIGTERM");
    await expect((async () => {
      for (;;) if ((await it.next()).done) return;
    })()).rejects.toThrow(/shutting down/);
    expect(await status).toBe(0);
    expect(server.stderr()).toMatch(/SIGTERM: closing/);
  });
});
