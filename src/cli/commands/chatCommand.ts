/**
 * `moe-run chat`: a conversation in the terminal, or over piped stdin (one message a line, ended
 * by end of input). Replies stream to stdout, each ending with a newline; the prompt, notices and
 * timings go to stderr, so piped output is the replies alone.
 */
import * as path from "node:path";
import * as readline from "node:readline";
import type { Command } from "commander";
import { InvalidOptionError, MoeRunError } from "../../errors.js";
import type { ChatSession, ChatTurnStats } from "../../model/ChatSession.js";
import type { MoeModel } from "../../model/MoeModel.js";
import { addModelOptions, loadModelForCli, loadOptions, reportStats, type ModelCliOptions } from "../modelOptions.js";
import { out, outputSignal, stdoutClosed } from "../output.js";
import { readPromptFile } from "../promptInput.js";
import { addSamplingOptions, samplingFrom, type SamplingCliOptions } from "../samplingOptions.js";

interface ChatOptions extends ModelCliOptions, SamplingCliOptions {
  system?: string;
  systemFile?: string;
}

const HELP = [
  "/reset   start the conversation again (the system prompt stays)",
  "/stats   the conversation's length, the last reply's timings and KV cache reuse, the expert cache",
  "/exit    leave (so do end of input, Ctrl-D, and Ctrl-C twice at the prompt)",
  "Ctrl-C stops a reply; start a message with // to send one that begins with /",
];

export function registerChat(program: Command): void {
  const cmd = program
    .command("chat")
    .description("chat with a model (terminal or piped stdin); replies go to stdout, the prompt, notices and timings to stderr")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .option("-s, --system <text>", "system prompt")
    .option("--system-file <file>", "read the system prompt from a file");
  addSamplingOptions(cmd, { maxTokens: 256 });
  addModelOptions(cmd).action(async (modelDir: string, opts: ChatOptions) => {
    if (opts.system !== undefined && opts.systemFile !== undefined) throw new InvalidOptionError("give the system prompt with --system or --system-file, not both");
    if (opts.systemFile === "-") throw new InvalidOptionError("--system-file - would read stdin, which the chat's messages come from; give a file");
    const system = opts.systemFile !== undefined ? await readPromptFile(opts.systemFile, "--system-file") : opts.system;
    const model = await loadModelForCli(modelDir, loadOptions(opts));
    let session: ChatSession | undefined;
    try {
      session = model.createChatSession({
        systemPrompt: system,
        onTrim: (e) =>
          note(
            `[moe-run] the conversation no longer fits the context (${e.contextSize} tokens) with room for the reply: ` +
              `dropped the oldest ${plural(e.droppedTurns, "turn")} (${e.keptTurns} kept${system !== undefined ? ", and the system prompt" : ""}); the prompt is computed again`
          ),
      });
      const failed = await converse(model, session, opts, path.basename(path.resolve(modelDir)));
      reportStats(model, opts, { generation: session.lastStats });
      if (failed > 0) throw new MoeRunError("INPUT_INVALID", `${plural(failed, "message")} failed (see above)`);
    } finally {
      await session?.dispose();
      await model.dispose();
    }
  });
}

/** Reads messages until /exit, end of input or Ctrl-C twice; resolves to the number of messages that failed. */
async function converse(model: MoeModel, session: ChatSession, opts: ChatOptions, name: string): Promise<number> {
  const tty = Boolean(process.stdin.isTTY);
  note(`moe-run chat: ${name}, context ${model.contextSize} tokens; /help lists the commands${tty ? "; Ctrl-C stops a reply, twice at the prompt exits" : ""}`);
  // In a terminal readline shows its prompt and echo on stderr; stdin is raw there, so Ctrl-C
  // arrives as readline's SIGINT event rather than the signal.
  const rl = readline.createInterface({ input: process.stdin, output: tty ? process.stderr : undefined, terminal: tty, prompt: "> " });
  let reply: AbortController | undefined;
  let armed = false;
  const interrupt = () => {
    if (reply) {
      if (!reply.signal.aborted) reply.abort(new DOMException("interrupted", "AbortError"));
      return;
    }
    if (armed) {
      note("");
      rl.close();
      return;
    }
    armed = true;
    if (tty) rl.write(null, { ctrl: true, name: "u" }); // clear what was typed
    note(tty ? "\n(Ctrl-C again to exit, or /exit)" : "(Ctrl-C again to exit)");
    if (tty) rl.prompt();
  };
  rl.on("SIGINT", interrupt);
  process.on("SIGINT", interrupt);
  let failed = 0;
  try {
    if (tty) rl.prompt();
    for await (const raw of rl) {
      armed = false;
      const line = raw.trim();
      if (line.startsWith("/") && !line.startsWith("//")) {
        const command = line.split(/\s+/)[0]!;
        if (command === "/exit" || command === "/quit") break;
        if (command === "/reset") {
          await session.reset();
          note("[moe-run] conversation cleared");
        } else if (command === "/stats") {
          printChatStats(model, session);
        } else if (command === "/help") {
          note(HELP.join("\n"));
        } else {
          note(`[moe-run] unknown command ${command}; /help lists them`);
        }
      } else if (line !== "") {
        reply = new AbortController();
        try {
          const ended = await turn(session, line.startsWith("//") ? raw.trimStart().slice(1) : raw, opts, reply.signal);
          if (ended === "failed") failed++;
          if (ended === "closed") break;
        } finally {
          reply = undefined;
        }
      }
      if (tty) rl.prompt();
    }
  } finally {
    rl.off("SIGINT", interrupt);
    process.off("SIGINT", interrupt);
    rl.close();
  }
  return failed;
}

/** One message and its streamed reply. */
async function turn(session: ChatSession, text: string, opts: ChatOptions, stop: AbortSignal): Promise<"ok" | "failed" | "closed"> {
  let stats: ChatTurnStats | undefined;
  try {
    const reply = session.prompt(text, {
      ...samplingFrom(opts),
      // Also stop when stdout's reader has gone or stdout cannot be written.
      signal: AbortSignal.any([stop, outputSignal]),
      onStats: (s) => void (stats = s),
    });
    for await (const piece of reply) out(piece);
    out("\n");
  } catch (err) {
    if (outputSignal.aborted) {
      if (stdoutClosed()) return "closed";
      throw outputSignal.reason;
    }
    if (stop.aborted) {
      out("\n");
      note("[moe-run] reply stopped");
    } else if (err instanceof MoeRunError && (err.code === "CONTEXT_OVERFLOW" || err.code === "INVALID_OPTION" || err.code === "CHAT_TEMPLATE_FAILED")) {
      // This message cannot be answered; the conversation goes on without it.
      note(`moe-run: error: ${err.message}`);
      return "failed";
    } else {
      throw err;
    }
  }
  if (stats) note(`[moe-run] ${describeTurn(stats)}`);
  return "ok";
}

function describeTurn(s: ChatTurnStats): string {
  const computed = s.promptTokens - s.reusedTokens;
  return (
    `prompt ${s.promptTokens} tok (${s.reusedTokens} reused from the KV cache, ${computed} computed at ${s.prefillTokensPerSecond.toFixed(1)} tok/s); ` +
    `generated ${s.generatedTokens} tok at ${s.decodeTokensPerSecond.toFixed(1)} tok/s; stop: ${s.finishReason}`
  );
}

function printChatStats(model: MoeModel, session: ChatSession): void {
  const turns = session.history.filter((m) => m.role === "user").length;
  const c = model.cacheStats().cache;
  note(
    [
      `conversation: ${plural(turns, "turn")}, ${session.conversationTokens} of ${model.contextSize} context tokens${session.systemPrompt !== undefined ? ", with a system prompt" : ""}`,
      `last reply: ${session.lastStats ? describeTurn(session.lastStats) + (session.lastStats.droppedTurns ? `; ${plural(session.lastStats.droppedTurns, "turn")} dropped before it` : "") : "none yet"}`,
      `expert cache: ${c.hits} hits, ${c.misses} misses, hit rate ${(100 * c.hitRate).toFixed(1)}%`,
    ].join("\n")
  );
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function note(line: string): void {
  process.stderr.write(line + "\n");
}
