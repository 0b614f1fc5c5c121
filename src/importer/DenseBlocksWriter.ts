/**
 * The dense matrices of a GGUF file (attention, shared experts, dense MLPs, LM head) kept as the
 * file stores them, where the native kernels compute from that form (Q4_K, Q6_K, Q8_0, F16, ...):
 * a token then reads the bytes llama.cpp reads, computed from the very values it computes from.
 * Decoding them to fp32 and encoding again at the experts' width (what a safetensors import does)
 * would round twice and, for a Q4_K_M file, read twice the bytes (int8 for 4-5 bits).
 *
 * One file, `dense-blocks.bin`: each matrix in our encoding's bytes (store/ggmlExpertBlocks.ts,
 * lossless), at a multiple of 64 bytes; the manifest's `denseBlocks` says where each one lies.
 * The ONNX graphs keep the fp32 values (the onnx dense layers and the GPU read those).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { rawBlocks } from "../architectures/expertLayouts.js";
import type { HfCheckpoint } from "../formats/HfCheckpoint.js";
import { UnsupportedConfigError } from "../errors.js";
import type { DenseBlock, DenseBlocks } from "../model/manifest.js";
import { expertMatrixFromGgml, losslessExpertEncoding } from "../store/ggmlExpertBlocks.js";

/** File name in the model directory. */
export const DENSE_BLOCKS_FILE = "dense-blocks.bin";
const ALIGN = 64;

/** One matrix to keep: the native dense layer's section, the checkpoint tensor, its [rows, cols]. */
export interface DenseMatrix {
  section: string;
  tensor: string;
  shape: readonly [rows: number, cols: number];
}

export class DenseBlocksWriter {
  private offset = 0;
  private readonly layers: Record<string, DenseBlock>[] = [];
  private lmHead: DenseBlock | undefined;
  private closed = false;

  private constructor(
    private readonly ckpt: HfCheckpoint,
    private readonly file: string,
    private readonly fd: number
  ) {}

  /** A writer for a GGUF checkpoint; undefined for others (their values are fp32 or bf16: nothing to keep). */
  static open(ckpt: HfCheckpoint, dir: string): DenseBlocksWriter | undefined {
    if (!rawBlocks(ckpt)) return undefined;
    const file = path.join(dir, DENSE_BLOCKS_FILE);
    return new DenseBlocksWriter(ckpt, file, fs.openSync(file, "wx"));
  }

  /** Layer `layer`'s matrices (layers are added in order, each once). */
  addLayer(layer: number, matrices: readonly DenseMatrix[]): void {
    if (layer !== this.layers.length) throw new Error(`dense blocks of layer ${layer} added after ${this.layers.length} layers`);
    const kept: Record<string, DenseBlock> = {};
    for (const m of matrices) {
      const block = this.keep(m.tensor, m.shape);
      if (block) kept[m.section] = block;
    }
    this.layers.push(kept);
  }

  setLmHead(tensor: string, shape: readonly [number, number]): void {
    this.lmHead = this.keep(tensor, shape);
  }

  /** Closes the file; the manifest entry, or undefined (and no file) when nothing was kept. */
  finish(): DenseBlocks | undefined {
    this.close();
    if (this.offset === 0) {
      fs.rmSync(this.file);
      return undefined;
    }
    return { file: DENSE_BLOCKS_FILE, layers: this.layers, ...(this.lmHead ? { lmHead: this.lmHead } : {}) };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }

  /**
   * The tensor's stored blocks in our encoding, appended; undefined where the file stores it in a
   * form kept better as before: F32 (the experts' width is smaller), types without a lossless
   * counterpart, tensors the checkpoint view computes (derived, absent biases).
   */
  private keep(tensor: string, [rows, cols]: readonly [number, number]): DenseBlock | undefined {
    let raw;
    try {
      raw = rawBlocks(this.ckpt)!.readRaw(tensor, [rows, cols]);
    } catch (err) {
      if (err instanceof UnsupportedConfigError) return undefined;
      throw err;
    }
    const encoding = losslessExpertEncoding(raw.type.id);
    if (encoding === undefined || encoding === "f32") return undefined;
    const { bytes } = expertMatrixFromGgml(raw.type.id, raw.bytes, rows, cols);
    const offset = Math.ceil(this.offset / ALIGN) * ALIGN;
    fs.writeSync(this.fd, new Uint8Array(offset - this.offset));
    fs.writeSync(this.fd, bytes);
    this.offset = offset + bytes.byteLength;
    return { encoding, rows, cols, offset, bytes: bytes.byteLength };
  }
}
