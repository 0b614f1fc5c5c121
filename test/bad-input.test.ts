/**
 * Bad input gets a clear message, a non-zero exit, and leaves nothing half-written. These run the
 * real CLI (dist/, built by `pretest`) on damaged copies of the bundled checkpoints.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { MODELS, copyFixture, importFixture, runCli, startCli, tmpDir } from "./helpers.js";

function expectCleanFailure(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  expect(r.status).not.toBe(0);
  expect(r.status).not.toBeNull();
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
}

function importTo(hfDir: string): { r: ReturnType<typeof runCli>; out: string } {
  const out = path.join(tmpDir(), "model");
  return { r: runCli(["import", hfDir, out, "--no-progress"]), out };
}

describe("import refuses bad checkpoints and writes nothing", () => {
  it("missing safetensors", () => {
    const hf = copyFixture("tiny-mixtral");
    fs.rmSync(path.join(hf, "model.safetensors"));
    const { r, out } = importTo(hf);
    expectCleanFailure(r, /has no \*\.safetensors weights/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("missing shard of a sharded checkpoint", () => {
    const hf = copyFixture("tiny-qwen2-moe");
    const shard = fs.readdirSync(hf).find((f) => /^model-0+2-of-/.test(f))!;
    expect(shard).toBeDefined();
    fs.rmSync(path.join(hf, shard));
    const { r, out } = importTo(hf);
    expectCleanFailure(r, new RegExp(`shard ${shard} listed in model.safetensors.index.json is missing`));
    expect(fs.existsSync(out)).toBe(false);
  });

  it("truncated safetensors", () => {
    const hf = copyFixture("tiny-mixtral");
    const file = path.join(hf, "model.safetensors");
    fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
    const { r, out } = importTo(hf);
    expectCleanFailure(r, /model\.safetensors is truncated: tensor ".+" needs bytes up to \d+ but the file has \d+/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("corrupt safetensors header", () => {
    const hf = copyFixture("tiny-mixtral");
    const file = path.join(hf, "model.safetensors");
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, Buffer.from("#garbage#"), 0, 9, 8); // over the opening brace
    fs.closeSync(fd);
    expectCleanFailure(importTo(hf).r, /corrupt safetensors header/);
  });

  it("header whose dtype disagrees with its data offsets", () => {
    const hf = copyFixture("tiny-mixtral");
    const file = path.join(hf, "model.safetensors");
    const bytes = fs.readFileSync(file);
    const at = bytes.indexOf('"dtype":"F32"');
    expect(at).toBeGreaterThan(0);
    bytes.write('"dtype":"F16"', at); // same length: the header stays parseable
    fs.writeFileSync(file, bytes);
    expectCleanFailure(importTo(hf).r, /header mismatch: shape \[.*\] F16 needs \d+ bytes but data_offsets span \d+/);
  });

  it("tensor shape disagrees with config.json", () => {
    const hf = copyFixture("tiny-mixtral");
    const cfgPath = path.join(hf, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
    cfg.intermediate_size += 32;
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    const { r, out } = importTo(hf);
    expectCleanFailure(r, /has shape \[\d+, \d+\] but config\.json implies \[\d+, \d+\]/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("unknown model_type", () => {
    const hf = copyFixture("tiny-mixtral");
    const cfgPath = path.join(hf, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
    cfg.model_type = "deepseek_v9";
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    expectCleanFailure(importTo(hf).r, /model_type "deepseek_v9" is not supported; supported model types: mixtral, qwen2_moe/);
  });

  it("a negative expert count names its own key (not top-k)", () => {
    const hf = copyFixture("tiny-mixtral");
    const cfgPath = path.join(hf, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
    cfg.num_local_experts = -8;
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    expectCleanFailure(importTo(hf).r, /num_local_experts in config\.json must be a whole number >= 1, got -8/);
  });

  it("missing tokenizer", () => {
    const hf = copyFixture("tiny-mixtral");
    fs.rmSync(path.join(hf, "tokenizer.json"));
    const { r, out } = importTo(hf);
    expectCleanFailure(r, /has no tokenizer\.json/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("missing config.json", () => {
    const hf = copyFixture("tiny-mixtral");
    fs.rmSync(path.join(hf, "config.json"));
    expectCleanFailure(importTo(hf).r, /config\.json is missing/);
  });

  it("existing model directory without --force", async () => {
    const model = await importFixture("tiny-mixtral");
    const r = runCli(["import", path.join(MODELS, "tiny-mixtral"), model, "--no-progress"]);
    expectCleanFailure(r, /already exists; pass --force/);
    expect(runCli(["import", path.join(MODELS, "tiny-mixtral"), model, "--no-progress", "--force"]).status).toBe(0);
  });
});

describe("run refuses bad requests", () => {
  let model: string;
  beforeAll(async () => {
    model = await importFixture("tiny-mixtral");
  });

  it("prompt longer than the context", () => {
    const r = runCli(["run", model, "--prompt", "the quick brown fox jumps over the lazy dog ".repeat(4), "--context-size", "16"]);
    expectCleanFailure(r, /the prompt has \d+ tokens but the context holds 16/);
    const long = runCli(["run", model, "--prompt", "the quick brown fox jumps over the lazy dog ".repeat(60)]);
    expectCleanFailure(long, /the prompt has \d+ tokens but the context holds 256/);
  });

  it("context size beyond the model's limit", () => {
    expectCleanFailure(runCli(["run", model, "--prompt", "hi", "--context-size", "100000"]), /context size must be a whole number from 2 to 256/);
  });

  it("a KV cache precision it does not have; the ones it has run and say so", () => {
    expectCleanFailure(runCli(["run", model, "--prompt", "hi", "--kv-cache", "q8"]), /--kv-cache must be f32 or f16, got "q8"/);
    const half = runCli(["run", model, "--prompt", "hi", "-n", "4", "--kv-cache", "f16", "--stats"]);
    expect(half.status, half.stderr).toBe(0);
    expect(half.stderr).toMatch(/f16 KV cache/);
    expect(half.stdout.length).toBeGreaterThan(0);
  });

  it("bad sampling option", () => {
    expectCleanFailure(runCli(["run", model, "--prompt", "hi", "--top-p", "1.5"]), /--top-p must be a number in \[0, 1\]/);
  });

  it("a directory that is not a model", () => {
    expectCleanFailure(runCli(["run", MODELS, "--prompt", "hi"]), /not a complete moe-run model|not a moe-run model directory/);
  });

  it("a model directory with a truncated graph file", async () => {
    const damaged = await importFixture("tiny-mixtral");
    const data = path.join(damaged, "graphs", "layer_001.onnx.data");
    fs.truncateSync(data, 100);
    expectCleanFailure(runCli(["run", damaged, "--prompt", "hi"]), /layer_001\.onnx\.data in .* has 100 bytes, expected \d+; re-import the model/);
  });
});

describe("an interrupted import is detected, never served, and redone", () => {
  it("SIGKILL during import leaves no model; the next import redoes it", async () => {
    const hf = path.join(tmpDir(), "big-hf");
    // Large enough (~150 MB of experts) that the import is still running when it is killed.
    writeSyntheticCheckpoint(hf, {
      tokenizerFrom: path.join(MODELS, "tiny-mixtral"),
      vocabSize: 512,
      hiddenSize: 256,
      numLayers: 6,
      numHeads: 4,
      numKvHeads: 2,
      numExperts: 8,
      topK: 2,
      expertFfn: 1024,
      dtype: "BF16",
      seed: 7,
    });
    const out = path.join(tmpDir(), "model");
    const child = startCli(["import", hf, out]);
    let stderr = "";
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    // Kill as soon as the first layer's experts are in the store.
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        if (/layer 1\//.test(stderr)) {
          clearInterval(timer);
          child.kill("SIGKILL");
          resolve();
        }
      }, 5);
      child.on("exit", () => {
        clearInterval(timer);
        reject(new Error(`import finished before it could be interrupted: ${stderr}`));
      });
    });
    await exited;
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.existsSync(out + ".importing")).toBe(true);

    const served = runCli(["run", out, "--prompt", "hi", "--max-tokens", "2"]);
    expectCleanFailure(served, /not a complete moe-run model .*an import may have been interrupted/);

    const redo = runCli(["import", hf, out]);
    expect(redo.status).toBe(0);
    expect(redo.stderr).toMatch(/found an interrupted import/);
    expect(fs.existsSync(out + ".importing")).toBe(false);
    const ok = runCli(["run", out, "--prompt", "hello", "--max-tokens", "4"]);
    expect(ok.status).toBe(0);
    expect(ok.stderr).toMatch(/generated 4 tok/);
  }, 300_000);
});

describe("damaged stores and full disks", () => {
  it("--verify finds an expert record that no longer matches its checksum", async () => {
    const model = await importFixture("tiny-mixtral");
    const { ExpertStore } = await import("../src/store/ExpertStore.js");
    const store = ExpertStore.openReadOnly(path.join(model, "experts.mdb"), { hiddenSize: 64, expertFfn: 96, encoding: "f32" });
    const record = store.getRecord(1, 3);
    store.close();
    const file = path.join(model, "experts.mdb");
    const bytes = fs.readFileSync(file);
    const probe = Buffer.from(record.subarray(20_000, 20_064));
    const at = bytes.indexOf(probe);
    expect(at).toBeGreaterThan(0);
    bytes[at + 10] ^= 0x40; // one bit of one weight
    fs.writeFileSync(file, bytes);
    expect(runCli(["run", model, "--prompt", "hi", "-n", "2"]).status).toBe(0); // unnoticed without --verify
    expectCleanFailure(runCli(["run", model, "--prompt", "hi", "-n", "2", "--verify"]), /expert \(1, 3\) in .* fails its checksum; re-import the model/);
  });

  it("a full disk stops the import with a clear message and leaves nothing behind", () => {
    const mnt = tmpDir("moe-run-tmpfs-");
    const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=600k", "tmpfs", mnt]);
    if (mounted.status !== 0) {
      console.warn(`skipped: cannot mount a small tmpfs here (${mounted.stderr?.toString().trim()})`);
      return;
    }
    try {
      const out = path.join(mnt, "model");
      const r = runCli(["import", path.join(MODELS, "tiny-mixtral"), out, "--no-progress"]);
      expectCleanFailure(r, /no space left on the device while importing into .*; the partial import was removed\. Free about [\d.]+ MiB/);
      expect(fs.readdirSync(mnt)).toEqual([]);
    } finally {
      spawnSync("umount", [mnt]);
    }
  });
});
