/**
 * Chat sessions (issue 14, part 2): the KV cache kept between turns (the second turn computes only
 * what is new, with the same tokens as computing the whole prompt afresh), dropping the oldest
 * turns when the context fills, stopped replies, reset; the same on a worker thread; and
 * `moe-run chat` driven through its stdin and stdout: piped turns, /stats, /reset, /exit, the
 * drop-oldest notice, Ctrl-C stopping a reply and twice at the prompt exiting.
 */
import { spawn, spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModel, loadModelOnThisThread, type ChatTurnStats, type LanguageModel } from "../src/index.js";
import { CLI, importFixture } from "./helpers.js";

/** Runs a reply to its end: its text and statistics. */
async function turn<S>(gen: AsyncGenerator<string, S>): Promise<{ text: string; stats: S }> {
  let text = "";
  for (;;) {
    const r = await gen.next();
    if (r.done) return { text, stats: r.value };
    text += r.value;
  }
}

let dir: string;
beforeAll(async () => {
  dir = await importFixture("tiny-mixtral");
});

describe.each([
  ["on the caller's thread", (d: string) => loadModelOnThisThread(d, { threads: 1, log: () => {} })],
  ["on a worker thread", (d: string) => loadModel(d, { threads: 1, log: () => {} })],
] as const)("a chat session %s", (_name, load) => {
  let model: LanguageModel;
  beforeAll(async () => {
    model = await load(dir);
  });
  afterAll(async () => model?.dispose());

  it("keeps the conversation in the KV cache: the second turn computes only the new message", async () => {
    const session = model.createChatSession({ systemPrompt: "You are a licence expert." });
    const greedy = { maxTokens: 12, stopAtEos: false };
    const first = await turn(session.prompt("What is a license?", greedy));
    expect(first.stats.reusedTokens).toBe(0);
    expect(first.stats.generatedTokens).toBe(12);
    // The first turn is plain generation with the chat template.
    let direct = "";
    for await (const p of model.generate(session.history.slice(0, 2), { ...greedy, chat: true })) direct += p;
    expect(first.text).toBe(direct);

    const second = await turn(session.prompt("And a warranty?", greedy));
    // Everything the cache held (the first prompt and the reply, less its last token, never fed back) is reused.
    expect(second.stats.reusedTokens).toBe(first.stats.promptTokens + 12 - 1);
    expect(second.stats.promptTokens).toBeGreaterThan(second.stats.reusedTokens);
    expect(session.history.map((m) => m.role)).toEqual(["system", "user", "assistant", "user", "assistant"]);
    expect(session.history[4]!.content).toBe(second.text);
    expect(session.conversationTokens).toBe(second.stats.promptTokens + 12);

    await session.dispose();
  });

  it("a continued sequence gives the same tokens as the same prompt from an empty cache", async () => {
    const greedy = { maxTokens: 10, stopAtEos: false };
    const first = model.tokenize([{ role: "user", content: "The license" }], true);
    const seq = model.openSequence();
    const reply: number[] = [];
    await turn(seq.generate(first, { ...greedy, onToken: (id) => reply.push(id) }));
    const prompt = [...first, ...reply, ...model.tokenizer.encode("</s>\n<|user|>\nGo on.</s>\n<|assistant|>\n", { addSpecialTokens: false })];
    const continued: number[] = [];
    const again = await turn(seq.generate(prompt, { ...greedy, onToken: (id) => continued.push(id) }));
    expect(again.stats.reusedTokens).toBe(first.length + reply.length - 1);
    const fresh = model.openSequence();
    const scratch: number[] = [];
    const afresh = await turn(fresh.generate(prompt, { ...greedy, onToken: (id) => scratch.push(id) }));
    expect(afresh.stats.reusedTokens).toBe(0);
    expect(continued).toEqual(scratch);
    // A prompt that parts from the cache midway keeps the common prefix (the cache is cut back to
    // it) and gives the tokens an empty cache gives.
    const forked = [...first, ...model.tokenizer.encode(" and the rest", { addSpecialTokens: false })];
    const forkedOut: number[] = [];
    const fork = await turn(seq.generate(forked, { ...greedy, onToken: (id) => forkedOut.push(id) }));
    expect(fork.stats.reusedTokens).toBe(first.length);
    const forkFresh: number[] = [];
    const other = model.openSequence();
    await turn(other.generate(forked, { ...greedy, onToken: (id) => forkFresh.push(id) }));
    expect(forkedOut).toEqual(forkFresh);
    await other.dispose();
    // The same prompt again: all but its last token come from the cache.
    expect((await turn(seq.generate(forked, greedy))).stats.reusedTokens).toBe(forked.length - 1);
    await seq.dispose();
    await fresh.dispose();
  });

  it("drops the oldest turns (keeping the system prompt) when the conversation and the reply would overflow the context", async () => {
    const trims: { droppedTurns: number; keptTurns: number }[] = [];
    const session = model.createChatSession({ systemPrompt: "Be brief.", onTrim: (e) => trims.push(e) });
    const long = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software";
    const opts = { maxTokens: 24, stopAtEos: false };
    let last: ChatTurnStats | undefined;
    for (let i = 0; i < 6 && trims.length === 0; i++) last = (await turn(session.prompt(`${long} (${i})`, opts))).stats;
    expect(trims.length).toBe(1);
    expect(trims[0]!.droppedTurns).toBeGreaterThanOrEqual(1);
    expect(last!.droppedTurns).toBe(trims[0]!.droppedTurns);
    // The trimmed conversation parts from the cached one after the system prompt (and whatever
    // the dropped and the kept turns share): only that prefix is reused.
    expect(last!.reusedTokens).toBeGreaterThan(0);
    expect(last!.reusedTokens).toBeLessThan(last!.promptTokens - 24);
    expect(last!.promptTokens + 24).toBeLessThanOrEqual(model.contextSize);
    const h = session.history;
    expect(h[0]).toEqual({ role: "system", content: "Be brief." });
    expect(h.length).toBe(1 + 2 * (trims[0]!.keptTurns + 1));
    // The turn after a trim (with room left) builds on the trimmed conversation's cache again.
    const next = await turn(session.prompt(`${long} (next)`, opts));
    expect(next.stats.droppedTurns).toBe(0);
    expect(next.stats.reusedTokens).toBe(last!.conversationTokens - 1);
    // A message longer than the whole context is refused, and the conversation is unchanged.
    const before = session.history;
    await expect(turn(session.prompt(long.repeat(20), opts))).rejects.toMatchObject({ code: "CONTEXT_OVERFLOW" });
    expect(session.history).toEqual(before);
    await session.dispose();
  });

  it("keeps a stopped reply as far as it got; reset() starts again with the system prompt", async () => {
    const session = model.createChatSession({ systemPrompt: "S." });
    const controller = new AbortController();
    let pieces = 0;
    const gen = session.prompt("Tell me everything.", { maxTokens: 100, stopAtEos: false, signal: controller.signal });
    await expect(
      (async () => {
        for await (const _ of gen) if (++pieces === 3) controller.abort(new DOMException("stop", "AbortError"));
      })()
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(session.lastStats?.finishReason).toBe("abort");
    expect(session.history.length).toBe(3);
    const next = await turn(session.prompt("More.", { maxTokens: 3, stopAtEos: false }));
    expect(next.stats.reusedTokens).toBeGreaterThan(0);
    // Leaving the loop early keeps the reply too.
    for await (const _ of session.prompt("Again.", { maxTokens: 50, stopAtEos: false })) break;
    expect(session.history.length).toBe(7);
    await session.reset();
    expect(session.history).toEqual([{ role: "system", content: "S." }]);
    const fresh = await turn(session.prompt("Hello.", { maxTokens: 3, stopAtEos: false }));
    expect(fresh.stats.reusedTokens).toBe(0);
    await session.dispose();
  });
});

/** Runs `moe-run chat` with `input` on its stdin (piped, not a terminal) until it exits. */
function chatCli(args: string[], input: string) {
  const r = spawnSync(process.execPath, [CLI, "chat", ...args], { input, encoding: "utf8", timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The per-turn lines `chat` writes to stderr: [prompt tokens, reused tokens]. */
function turnLines(stderr: string): [number, number][] {
  return [...stderr.matchAll(/\[moe-run\] prompt (\d+) tok \((\d+) reused from the KV cache/g)].map((m) => [Number(m[1]), Number(m[2])]);
}

describe("moe-run chat", () => {
  it("answers piped messages one by one, reusing the KV cache between turns; /stats, /reset and /exit work", () => {
    const input = ["What is a license?", "And a warranty?", "/stats", "/reset", "Hello.", "/exit", "Never answered."].join("\n") + "\n";
    const r = chatCli([dir, "-n", "8", "--threads", "1", "--system", "Be brief."], input);
    expect(r.status, r.stderr).toBe(0);
    const turns = turnLines(r.stderr);
    expect(turns.length, r.stderr).toBe(3); // the message after /exit is not read
    expect(turns[0]![1]).toBe(0);
    expect(turns[1]![1]).toBe(turns[0]![0] + 8 - 1); // turn one's prompt and reply (less its last token) from the cache
    expect(turns[2]![1]).toBe(0); // after /reset
    expect(r.stderr).toMatch(/conversation: 2 turns, \d+ of 256 context tokens, with a system prompt/);
    expect(r.stderr).toMatch(/last reply: prompt \d+ tok \([1-9]\d* reused from the KV cache/);
    expect(r.stderr).toMatch(/expert cache: \d+ hits/);
    expect(r.stderr).toMatch(/conversation cleared/);
    // stdout is the replies alone; the first is what `run --chat` gives for the same conversation.
    expect(r.stdout).not.toMatch(/moe-run|conversation/);
    const single = chatCli([dir, "-n", "8", "--threads", "1", "--system", "Be brief."], "What is a license?\n");
    expect(r.stdout.startsWith(single.stdout)).toBe(true);
    expect(single.stdout.length).toBeGreaterThan(1);
  });

  it("drops the oldest turns when the context fills, and says so; a message longer than the context is an error and the chat goes on", () => {
    const input = ["Hello there, how are you?", "What is new?", "Tell me more.", "x ".repeat(200), "And then?"].join("\n") + "\n";
    const r = chatCli([dir, "-n", "16", "--context-size", "96", "--threads", "1", "-s", "Be brief."], input);
    expect(r.stderr).toMatch(/the conversation no longer fits the context \(96 tokens\) with room for the reply: dropped the oldest 1 turn \(\d+ kept, and the system prompt\)/);
    expect(r.stderr).toMatch(/moe-run: error: the prompt has \d+ tokens but the context holds 96/);
    expect(turnLines(r.stderr).length).toBe(4); // every other message was answered
    expect(r.status).toBe(1); // piped input with a failed message
    expect(r.stderr).toMatch(/moe-run: error: 1 message failed \(see above\)/);
  });

  it("a missing --system-file is one line with what is wrong", () => {
    const r = chatCli([dir, "--threads", "1", "--system-file", "/nonexistent/system.txt"], "");
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--system-file \/nonexistent\/system.txt: no such file/);
  });

  it("Ctrl-C stops a reply and returns to the prompt; Ctrl-C twice at the prompt exits with status 0", async () => {
    // A slower model (the trained one, JS expert kernel) so that the reply is still running when Ctrl-C comes.
    const slow = await importFixture("moe-tiny-en");
    const child = spawn(process.execPath, [CLI, "chat", slow, "-n", "200", "--expert-kernel", "js", "--schedule", "device", "--threads", "1"], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (status) => resolve(status)));
    const until = async (ok: () => boolean, what: string) => {
      for (let waited = 0; !ok(); waited += 10) {
        if (waited > 60_000 || child.exitCode !== null) throw new Error(`timed out waiting for ${what}; stderr: ${stderr}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    child.stdin.write("Tell me a story.\n");
    await until(() => stdout.length > 0, "the reply");
    child.kill("SIGINT");
    await until(() => /reply stopped/.test(stderr), "the reply to stop");
    expect(stderr).toMatch(/stop: abort/);
    child.stdin.write("/stats\n");
    await until(() => /conversation: 1 turn/.test(stderr), "/stats");
    child.kill("SIGINT");
    await until(() => /Ctrl-C again to exit/.test(stderr), "the notice");
    child.kill("SIGINT");
    expect(await exited).toBe(0);
  });
});
