/**
 * Disposing a model while it generates (issue 17, item 1): the process never aborts, a pending
 * generator settles with a DISPOSED error (or ends), and dispose() waits for compute in flight
 * instead of pulling onnxruntime's sessions from under it. Process-level: the loops run in a child
 * process, so an abort shows up as a signal, and a hang as a timeout.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT, importFixture, tmpDir } from "./helpers.js";

let dir: string;
beforeAll(async () => {
  dir = await importFixture("moe-tiny-en");
});

function runScript(body: string, timeoutMs = 240_000) {
  const file = path.join(tmpDir("moe-run-dispose-"), "script.mjs");
  fs.writeFileSync(file, `import { loadModel, loadModelOnThisThread } from ${JSON.stringify(path.join(ROOT, "dist", "index.js"))};\nconst dir = ${JSON.stringify(dir)};\n${body}\n`);
  return spawnSync(process.execPath, [file], { encoding: "utf8", timeout: timeoutMs });
}

describe("dispose during generation", () => {
  it("worker model (loadModel): break after 2 pieces then dispose, and dispose while the consumer waits, 12 times each", () => {
    const r = runScript(`
      const outcomes = { broke: 0, disposedError: 0, finished: 0 };
      for (let i = 0; i < 12; i++) {
        const m = await loadModel(dir, { threads: 1, log: () => {} });
        let n = 0;
        for await (const _ of m.generate("And the LORD spake", { maxTokens: 200, stopAtEos: false })) if (++n === 2) break;
        outcomes.broke++;
        await m.dispose();
        const m2 = await loadModel(dir, { threads: 1, log: () => {} });
        const gen = m2.generate("And the LORD spake", { maxTokens: 200, stopAtEos: false });
        await gen.next();
        const pending = (async () => { for (;;) { const r = await gen.next(); if (r.done) return "finished"; } })().catch((e) => e);
        await new Promise((r) => setTimeout(r, i * 3));
        await m2.dispose();
        const settled = await pending;
        if (settled === "finished") outcomes.finished++;
        else if (settled?.code === "DISPOSED") outcomes.disposedError++;
        else throw new Error("unexpected outcome: " + (settled?.stack ?? settled));
      }
      console.log(JSON.stringify(outcomes));
    `);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const o = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(o.broke).toBe(12);
    expect(o.disposedError + o.finished).toBe(12);
    expect(o.disposedError).toBeGreaterThan(0);
  });

  it("inline model (loadModelOnThisThread): dispose mid-generation gives DISPOSED (never onnxruntime's raw error), 12 times", () => {
    const r = runScript(`
      let disposed = 0;
      for (let i = 0; i < 12; i++) {
        const m = await loadModelOnThisThread(dir, { threads: 1, log: () => {} });
        const gen = m.generate("And the LORD spake", { maxTokens: 200, stopAtEos: false });
        await gen.next();
        const pending = (async () => { for (;;) { const r = await gen.next(); if (r.done) return "finished"; } })().catch((e) => e);
        await new Promise((r) => setTimeout(r, i));
        await m.dispose();
        const settled = await pending;
        if (settled?.code === "DISPOSED") disposed++;
        else if (settled !== "finished") throw new Error("unexpected outcome: " + (settled?.stack ?? settled));
        // A disposed model says so, with a code.
        try { await m.logits([1, 2]); throw new Error("logits after dispose did not throw"); } catch (e) { if (e.code !== "DISPOSED") throw e; }
      }
      console.log(JSON.stringify({ disposed }));
    `);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).disposed).toBeGreaterThan(0);
  });
});

describe("errors from the worker keep their class", () => {
  it("a bad option arrives as InvalidOptionError, not a bare MoeRunError", async () => {
    const { loadModel } = await import("../src/index.js");
    const { InvalidOptionError } = await import("../src/errors.js");
    const err = await loadModel(dir, { threads: 1, log: () => {}, policy: "nope" as never }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InstanceType<typeof InvalidOptionError>).code).toBe("INVALID_OPTION");
  });
});
