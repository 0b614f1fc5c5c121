/**
 * Models whose expert matrices differ in encoding (store/recordEncodings.ts): a GGUF file that
 * mixes expert types, as llama.cpp's Q4_K_M does (Q6_K ffn_down in some layers, Q4_K elsewhere),
 * keeps every tensor's blocks, each layer's records of their own size. Checked here: the record
 * layout, every kernel (native at each instruction-set level, onnx, js) on a record of three
 * encodings, the manifest's checks, and a Q4_K_M-style GGUF imported end to end: blocks kept, the
 * store as large as the file's experts, numbers against the f32 import, and the output unchanged
 * by the memory budget and the scheduler.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportGguf } from "../src/formats/ggufExport.js";
import { importModel } from "../src/importer/importModel.js";
import { loadModel } from "../src/index.js";
import type { ExpertKernelName } from "../src/kernels/expertKernels.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import { readManifest, type DenseBlock, type ModelManifest } from "../src/model/manifest.js";
import { readFloatInitializer, readGraph } from "../src/onnx/graphFile.js";
import { decodeMatrix, encodeExpertRecord, expertRecordLayout, recordBytes, type RecordEncodings } from "../src/store/expertEncoding.js";
import { describeExpertEncodings, largestRecordBytes, layerRecordBytes, mixedRecordCode, nativeRecordCode } from "../src/store/recordEncodings.js";
import { ExpertStore } from "../src/store/ExpertStore.js";
import { expertShape } from "../src/model/manifest.js";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { MODELS, ROOT, expertOutput, greedyRun, matmulRef, maxRelErr, rand, runCli, sameBits, tmpDir } from "./helpers.js";

const H = 256;
const F = 512;
const MIX: RecordEncodings = { gate: "q4_k", up: "q5_0", down: "q6_k" };

describe("a record whose three matrices have encodings of their own", () => {
  const weights = { gate: rand(F * H, 1, 0.2), up: rand(F * H, 2, 0.2), down: rand(H * F, 3, 0.15) };
  const record = encodeExpertRecord(MIX, H, F, weights);
  const l = expertRecordLayout(MIX, H, F);
  const part = ([o, n]: [number, number]) => record.subarray(o, o + n);
  const [G, U, D] = [decodeMatrix("q4_k", part(l.gate), F, H), decodeMatrix("q5_0", part(l.up), F, H), decodeMatrix("q6_k", part(l.down), H, F)];
  const expertRef = (x: Float32Array, T: number) => {
    const g = Float32Array.from(matmulRef(G, F, H, x, T));
    const u = Float32Array.from(matmulRef(U, F, H, x, T));
    const h = Float32Array.from(g, (v, i) => (v / (1 + Math.exp(-v))) * u[i]!);
    return Float32Array.from(matmulRef(D, H, F, h, T));
  };

  it("lays out gate, up and down each in its own encoding, one after the other", () => {
    expect(l.gate).toEqual([0, (F * H * 144) / 256]);
    expect(l.up).toEqual([l.gate[1], (F * H * 22) / 32]);
    expect(l.down).toEqual([l.gate[1] + l.up[1], (H * F * 210) / 256]);
    expect(record.byteLength).toBe(recordBytes(MIX, H, F));
    const shape = { hiddenSize: H, expertFfn: F, encoding: "q4_k" as const, layerEncodings: [{ gate: "q4_k", up: "q4_k", down: "q4_k" } as const, MIX] };
    expect(layerRecordBytes(shape, 0)).toBe(recordBytes("q4_k", H, F));
    expect(layerRecordBytes(shape, 1)).toBe(record.byteLength);
    expect(largestRecordBytes(shape)).toBe(Math.max(recordBytes("q4_k", H, F), record.byteLength));
    expect(describeExpertEncodings(shape)).toBe("q4_k; ffn_up q5_0 in layer 1, ffn_down q6_k in layer 1");
  });

  // Layer 1 is the mixed one.
  const run = (name: ExpertKernelName, rec: Uint8Array, x: Float32Array, tokens: number) =>
    expertOutput(name, { encoding: "q4_k", layerEncodings: [{ gate: "q4_k", up: "q4_k", down: "q4_k" }, MIX], hiddenSize: H, expertFfn: F, threads: 2 }, rec, x, tokens, 1);

  it("js and onnx compute the decoded matrices; native within its 8-bit activations", async () => {
    for (const tokens of [1, 3, 17]) {
      const x = rand(tokens * H, 10 + tokens, 1);
      const ref = expertRef(x, tokens);
      expect(maxRelErr(await run("js", record, x, tokens), ref), `js T=${tokens}`).toBeLessThan(1e-5);
      expect(maxRelErr(await run("onnx", record, x, tokens), ref), `onnx T=${tokens}`).toBeLessThan(1e-5);
      expect(maxRelErr(await run("native", record, x, tokens), ref), `native T=${tokens}`).toBeLessThan(2e-2);
    }
  });

  it("the native kernel's mixed-record path is its one-encoding path where the three agree, and refuses what does not fit", () => {
    const addon = loadNativeAddon().addon!;
    const w = { gate: rand(F * H, 4, 0.2), up: rand(F * H, 5, 0.2), down: rand(H * F, 6, 0.15) };
    const q6 = encodeExpertRecord("q6_k", H, F, w);
    const x = rand(5 * H, 7, 1);
    const plain = new Float32Array(5 * H);
    const mixed = new Float32Array(5 * H);
    addon.expertForward(6, q6, H, F, x, 5, plain, 2);
    addon.expertForward(mixedRecordCode({ gate: "q6_k", up: "q6_k", down: "q6_k" }), q6, H, F, x, 5, mixed, 2);
    expect(Buffer.from(mixed.buffer).equals(Buffer.from(plain.buffer))).toBe(true);
    // A layer whose three agree passes the plain code, whatever the other layers hold.
    expect(nativeRecordCode({ hiddenSize: H, expertFfn: F, encoding: "q6_k" }, 0)).toBe(6);
    expect(nativeRecordCode({ hiddenSize: H, expertFfn: F, encoding: "q6_k", layerEncodings: [{ gate: "q6_k", up: "q6_k", down: "q6_k" }, MIX] }, 0)).toBe(6);
    expect(nativeRecordCode({ hiddenSize: H, expertFfn: F, encoding: "q6_k", layerEncodings: [{ gate: "q6_k", up: "q6_k", down: "q6_k" }, MIX] }, 1)).toBe(mixedRecordCode(MIX));
    const code = mixedRecordCode(MIX);
    const out = new Float32Array(H);
    expect(() => addon.expertForward(code, record.subarray(0, record.byteLength - 1), H, F, x, 1, out, 1)).toThrow(/buffer sizes/);
    const longer = new Uint8Array(record.byteLength + 1);
    longer.set(record);
    expect(() => addon.expertForward(code, longer, H, F, x, 1, out, 1)).toThrow(/buffer sizes/);
    // q4_k gate rows of 96 values are not whole super-blocks.
    expect(() => addon.expertForward(code, record, 96, F, x, 1, out, 1)).toThrow(/whole blocks/);
    expect(() => addon.expertForward(2 ** 24 + 13, record, H, F, x, 1, out, 1)).toThrow(/0\.\.12/);
  });

  it("at every kernel instruction-set level this CPU runs: matches fp64, bits independent of threads and of the other tokens", () => {
    const isas = loadNativeAddon().addon!.kernelIsas();
    const ex = rand(17 * H, 20, 1);
    const code = mixedRecordCode(MIX);
    const cases = [
      { kind: "expert", enc: code, H, F, T: 17, threads: 2, w: record, x: ex },
      { kind: "expert", enc: code, H, F, T: 1, threads: 1, w: record, x: ex.slice(0, H) },
    ];
    const dir = tmpDir("moe-run-mixed-isa-");
    try {
      const parts: Buffer[] = [];
      let at = 0;
      const put = (u8: Uint8Array) => {
        parts.push(Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength));
        at += u8.byteLength;
        return [at - u8.byteLength, u8.byteLength];
      };
      const meta = cases.map((c) => ({ ...c, w: put(c.w), x: put(new Uint8Array(c.x.buffer, c.x.byteOffset, c.x.byteLength)) }));
      fs.writeFileSync(path.join(dir, "in.bin"), Buffer.concat(parts));
      fs.writeFileSync(path.join(dir, "cases.json"), JSON.stringify(meta));
      const ref = expertRef(ex, 17);
      for (const isa of isas) {
        const r = spawnSync(process.execPath, [path.join(ROOT, "test", "kernel-isa-child.mjs"), dir], { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", timeout: 120_000 });
        expect(r.status, `${isa}: ${r.stderr}`).toBe(0);
        const res = JSON.parse(r.stdout) as { isa: string; outputs: [number, number][] };
        expect(res.isa).toBe(isa);
        const buf = fs.readFileSync(path.join(dir, "out.bin"));
        const [all, one] = res.outputs.map(([o, n]) => new Float32Array(buf.buffer.slice(buf.byteOffset + o, buf.byteOffset + o + 4 * n)));
        expect(maxRelErr(all!, ref), `${isa} expert`).toBeLessThan(2e-2);
        expect(Buffer.from(one!.buffer).equals(Buffer.from(all!.slice(0, H).buffer)), `${isa} token alone, 1 thread`).toBe(true);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});

describe("a Q4_K_M-style GGUF (Q6_K ffn_down in one layer, Q4_K elsewhere)", () => {
  const quiet = { progress: false, log: () => {} };
  let dir: string;
  let gguf: string;
  let blocks: string;
  let floats: string;
  let hf: string;
  beforeAll(async () => {
    dir = tmpDir("moe-run-mixed-gguf-");
    hf = path.join(dir, "synth256");
    writeSyntheticCheckpoint(hf, { tokenizerFrom: path.join(MODELS, "tiny-mixtral"), vocabSize: 512, hiddenSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, numExperts: 4, topK: 2, expertFfn: 256, dtype: "F32", seed: 5 });
    gguf = path.join(dir, "synth256-Q4_K_M.gguf");
    // As llama.cpp's Q4_K_M: Q6_K for attn_v too.
    const written = exportGguf(hf, gguf, { type: "Q4_K", typeFor: (name) => (name === "blk.1.ffn_down_exps.weight" || name.endsWith("attn_v.weight") ? "Q6_K" : undefined) });
    expect(written.types.get("blk.1.ffn_down_exps.weight")).toBe("Q6_K");
    expect(written.types.get("blk.0.attn_v.weight")).toBe("Q6_K");
    expect(written.types.get("blk.0.ffn_down_exps.weight")).toBe("Q4_K");
    blocks = path.join(dir, "blocks");
    floats = path.join(dir, "f32");
    await importModel(gguf, blocks, quiet);
    await importModel(gguf, floats, { ...quiet, experts: "f32" });
  }, 300_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("imports every expert tensor's blocks as they are: each layer's records their own size, the store as large as the file's experts", () => {
    const m = readManifest(blocks);
    expect(m.precision.experts).toBe("q4_k");
    expect(m.precision.expertLayers).toEqual([
      { gate: "q4_k", up: "q4_k", down: "q4_k" },
      { gate: "q4_k", up: "q4_k", down: "q6_k" },
    ]);
    // recordBytes: the largest record (budgets size a slot by it).
    const q4 = recordBytes("q4_k", 256, 256);
    const mixed = recordBytes({ gate: "q4_k", up: "q4_k", down: "q6_k" }, 256, 256);
    expect(m.experts.recordBytes).toBe(mixed);
    const store = ExpertStore.openReadOnly(path.join(blocks, m.experts.store), expertShape(m), { layers: [0, 1], numExperts: 4 });
    try {
      for (let j = 0; j < 4; j++) {
        expect(store.getRecord(0, j).byteLength).toBe(q4);
        expect(store.getRecord(1, j).byteLength).toBe(mixed);
      }
    } finally {
      store.close();
    }
    // The file's expert tensors, byte for byte in size: 4 experts x (3 + 3) matrices of 256 x 256.
    expect(4 * (q4 + mixed)).toBe(4 * 256 * 256 * ((5 * 144 + 210) / 256));
    expect(mixed / readManifest(floats).experts.recordBytes).toBeLessThan(0.2);
  });

  it("keeps the file's dense matrices as they are (q/k rows back in Hugging Face order), and the native dense layers read them", async () => {
    const m = readManifest(blocks);
    const kept = m.denseBlocks!;
    const encodings = (layer: Record<string, { encoding: string }>) => Object.fromEntries(Object.entries(layer).map(([k, b]) => [k, b.encoding]));
    for (const layer of kept.layers) expect(encodings(layer)).toEqual({ q_proj: "q4_k", k_proj: "q4_k", v_proj: "q6_k", o_proj: "q4_k" });
    expect(kept.lmHead?.encoding).toBe("q4_k");
    // The kept blocks hold exactly the values the graphs hold in fp32 (decoded and un-permuted from the same tensors).
    const file = fs.readFileSync(path.join(blocks, kept.file));
    const values = (b: DenseBlock) => decodeMatrix(b.encoding, file.subarray(b.offset, b.offset + b.bytes), b.rows, b.cols);
    const graphValues = (rel: string, name: string) => readFloatInitializer(blocks, rel, readGraph(blocks, rel), name);
    kept.layers.forEach((layer, l) => {
      for (const [section, b] of Object.entries(layer)) expect(sameBits(values(b), graphValues(m.graphs.layers[l]!, section)), `layer ${l} ${section}`).toBe(true);
    });
    expect(sameBits(values(kept.lmHead!), graphValues(m.graphs.head, "lm_head"))).toBe(true);
    // Experts re-encoded on request (--experts): the dense weights follow them, nothing kept.
    expect(readManifest(floats).denseBlocks).toBeUndefined();
    // A decode step reads the kept bytes: each layer's matrices, its fp32 norms and router, the head.
    const { hiddenSize: Hd, numExperts: E } = m.dims;
    const layerBytes = kept.layers.reduce((sum, layer) => sum + Object.values(layer).reduce((a, b) => a + b.bytes, 0) + 4 * (2 * Hd + E * Hd), 0);
    const model = await loadModel(blocks, { threads: 1, log: () => {} });
    try {
      expect(model.engineInfo().dense).toBe("native");
      expect(model.engineInfo().denseBytesPerToken).toBe(layerBytes + kept.lmHead!.bytes + 4 * Hd);
    } finally {
      await model.dispose();
    }
  }, 120_000);

  it("top-1 agreement >= 95% with the f32 import of the same file under teacher forcing; `--stats` names the mix", async () => {
    const ids = [1, ...(await greedyRun(floats, "The license", 127)).ids];
    const [a, b] = [await loadModel(blocks, { threads: 1, log: () => {} }), await loadModel(floats, { threads: 1, log: () => {} })];
    try {
      expect(a.engineInfo().experts).toBe("q4_k; ffn_down q6_k in layer 1");
      const cli = runCli(["run", blocks, "--prompt", "The license", "--max-tokens", "4", "--threads", "1", "--stats"]);
      expect(cli.status, cli.stderr).toBe(0);
      expect(cli.stderr).toContain("expert kernel native (experts q4_k; ffn_down q6_k in layer 1)");
      const la = (await a.logits(ids)).data;
      const lb = (await b.logits(ids)).data;
      const V = a.dims.vocabSize;
      const argmax = (l: Float32Array, i: number) => {
        let best = 0;
        for (let j = 1; j < V; j++) if (l[i * V + j]! > l[i * V + best]!) best = j;
        return best;
      };
      let agree = 0;
      for (let i = 0; i < ids.length; i++) if (argmax(la, i) === argmax(lb, i)) agree++;
      expect(agree / ids.length, `${agree} of ${ids.length}`).toBeGreaterThanOrEqual(0.95);
    } finally {
      await a.dispose();
      await b.dispose();
    }
  }, 300_000);

  it("greedy output is the same with every expert resident, out of core (records of two sizes through both tiers), and on the CPU pool", async () => {
    const base = await greedyRun(blocks, "The license", 24, { threads: 1 });
    // The device tier counts each layer's own record size: all 8 experts resident = the file's expert bytes.
    expect(base.stats.tiers.device.residentBytesMax).toBe(4 * (recordBytes("q4_k", 256, 256) + recordBytes({ gate: "q4_k", up: "q4_k", down: "q6_k" }, 256, 256)));
    const record = readManifest(blocks).experts.recordBytes;
    const runs = {
      outOfCore: await greedyRun(blocks, "The license", 24, { threads: 1, deviceMem: 3 * record, hostMem: 0 }),
      cpuPool: await greedyRun(blocks, "The license", 24, { threads: 1, deviceMem: 3 * record, schedule: "cpu", cpuThreads: 1 }),
    };
    for (const [name, r] of Object.entries(runs)) expect(r.ids, name).toEqual(base.ids);
    // The budgets did bite: 3 of 8 experts fit, so records were read again and again.
    expect(runs.outOfCore.stats.tiers.host.reads).toBeGreaterThan(8);
    expect(runs.outOfCore.stats.cache.misses).toBeGreaterThan(8);
  }, 300_000);

  it("experts in a type without a record form (BF16) import as f32, and the import says why and what re-quantizes", async () => {
    const bf = path.join(dir, "bf16-down.gguf");
    exportGguf(hf, bf, { type: "Q4_K", typeFor: (name) => (name === "blk.1.ffn_down_exps.weight" ? "BF16" : undefined) });
    const notes: string[] = [];
    const r = await importModel(bf, path.join(dir, "bf16-down"), { progress: false, log: (l) => notes.push(l) });
    expect(r.manifest.precision.experts).toBe("f32");
    expect(r.manifest.precision.expertLayers).toBeUndefined();
    expect(notes.join("\n")).toMatch(/experts' types \(BF16, Q4_K\) are not all block types .* imported as f32 .* --experts <encoding> re-quantizes/);
  }, 120_000);

  it("a manifest whose layer encodings are edited is refused", () => {
    const copy = path.join(dir, "edited");
    fs.cpSync(blocks, copy, { recursive: true });
    const file = path.join(copy, "manifest.json");
    const m = JSON.parse(fs.readFileSync(file, "utf8"));
    m.precision.expertLayers[1].down = "q9_k";
    fs.writeFileSync(file, JSON.stringify(m));
    expect(() => readManifest(copy)).toThrow(/expertLayers\[1\]: ffn_down encoding must be one of/);
    m.precision.expertLayers = m.precision.expertLayers.slice(0, 1);
    fs.writeFileSync(file, JSON.stringify(m));
    expect(() => readManifest(copy)).toThrow(/must list dims.numLayers \(2\) layers' encodings/);
    // Record size no longer matching the encodings: the store's records would be misread.
    m.precision.expertLayers = [
      { gate: "q4_k", up: "q4_k", down: "q4_k" },
      { gate: "q4_k", up: "q4_k", down: "q4_k" },
    ];
    fs.writeFileSync(file, JSON.stringify(m));
    expect(() => readManifest(copy)).toThrow(/experts.recordBytes is/);
  });

  it("a manifest whose kept dense blocks are edited, or a truncated blocks file, is refused with what to do", () => {
    const copy = path.join(dir, "edited-dense");
    fs.cpSync(blocks, copy, { recursive: true });
    const file = path.join(copy, "manifest.json");
    const original = fs.readFileSync(file, "utf8");
    const edit = (change: (m: ModelManifest) => void) => {
      const m = JSON.parse(original) as ModelManifest;
      change(m);
      fs.writeFileSync(file, JSON.stringify(m));
    };
    edit((m) => (m.denseBlocks!.layers[0]!.q_proj!.bytes += 1));
    expect(() => readManifest(copy)).toThrow(/denseBlocks.layers\[0\].q_proj has \d+ bytes, but \[256, 256\] in q4_k take \d+; re-import the model/);
    edit((m) => (m.denseBlocks!.layers[1]!.q_proj!.offset = m.files[m.denseBlocks!.file]!.bytes));
    expect(() => readManifest(copy)).toThrow(/denseBlocks.layers\[1\].q_proj lies outside dense-blocks.bin/);
    edit((m) => (m.denseBlocks!.layers[0]!.router = m.denseBlocks!.layers[0]!.q_proj!));
    expect(() => readManifest(copy)).toThrow(/names an unknown section "router"/);
    edit((m) => Object.assign(m.denseBlocks!.layers[0]!.k_proj!, { rows: 256, bytes: m.denseBlocks!.layers[0]!.q_proj!.bytes }));
    expect(() => readManifest(copy)).toThrow(/dense-blocks.bin in .* disagrees with manifest.json: layer 0's k_proj is \[256, 256\] but the dims imply \[128, 256\]/);
    // The file cut short: its size no longer the manifest's.
    fs.writeFileSync(file, original);
    fs.truncateSync(path.join(copy, "dense-blocks.bin"), 1000);
    expect(() => readManifest(copy)).toThrow(/dense-blocks.bin in .* has 1000 bytes, expected \d+; re-import the model/);
  });
});
