/**
 * What a model's expert records are: one encoding (precision.experts) for every matrix, or, for a
 * GGUF file that mixes expert tensor types, each layer's gate, up and down encodings. llama.cpp's
 * Q4_K_M and Q5_K_M keep ffn_down in Q6_K in some layers (the first and last eighth and every
 * third between), and every k-quant falls back to Q5_0/Q8_0 etc. where a row is not whole
 * super-blocks; those blocks are imported as they are, so the numbers stay llama.cpp's.
 *
 * Each layer's records take that layer's bytes, so the experts take what the file's do. The
 * manifest's experts.recordBytes is the largest record (what budgets and plans size a slot by);
 * the store checks each record against its own layer, and the caches count each expert's bytes.
 */
import { InvalidOptionError } from "../errors.js";
import {
  ALL_EXPERT_ENCODINGS,
  BLOCK,
  QK_K,
  encodingCode,
  expertRecordLayout,
  isGgmlBlocks,
  isKQuant,
  partEncodings,
  type ExpertEncoding,
  type ExpertRecordLayout,
  type RecordEncoding,
  type RecordEncodings,
} from "./expertEncoding.js";

export type { RecordEncodings } from "./expertEncoding.js";

/** The byte form of a model's expert records (the store's layout). */
export interface ExpertRecordShape {
  hiddenSize: number; // H
  expertFfn: number; // F
  /** Every matrix's encoding, unless layerEncodings says otherwise. */
  encoding: ExpertEncoding;
  /** Per layer (dense layers included, numLayers entries) when the matrices' encodings differ. */
  layerEncodings?: readonly RecordEncodings[];
  /** Records end with fp32 biases gate [F], up [F], down [H] (gpt-oss). */
  expertBias?: boolean;
}

const PARTS = ["gate", "up", "down"] as const;

/** The encodings of layer `layer`'s records. */
export function encodingsOf(shape: ExpertRecordShape, layer: number): RecordEncodings {
  if (!shape.layerEncodings) return partEncodings(shape.encoding);
  const e = shape.layerEncodings[layer];
  if (!e) throw new InvalidOptionError(`the experts' encodings name ${shape.layerEncodings.length} layers; there is no layer ${layer}`);
  return e;
}

/** Layer `layer`'s encoding as the record functions take it: the model's one encoding, or the layer's three. */
export function recordEncodingOf(shape: ExpertRecordShape, layer: number): RecordEncoding {
  return shape.layerEncodings ? encodingsOf(shape, layer) : shape.encoding;
}

/** Where each part of a layer's record lies. */
export function layerRecordLayout(shape: ExpertRecordShape, layer: number): ExpertRecordLayout {
  return expertRecordLayout(encodingsOf(shape, layer), shape.hiddenSize, shape.expertFfn, shape.expertBias ?? false);
}

/** Bytes of one record of layer `layer`. */
export function layerRecordBytes(shape: ExpertRecordShape, layer: number): number {
  return shape.layerEncodings ? layerRecordLayout(shape, layer).bytes : largestRecordBytes(shape);
}

/** Bytes of the model's largest record (of every record, where all layers share one encoding). */
export function largestRecordBytes(shape: ExpertRecordShape): number {
  const one = (enc: RecordEncodings | ExpertEncoding) => expertRecordLayout(enc, shape.hiddenSize, shape.expertFfn, shape.expertBias ?? false).bytes;
  if (!shape.layerEncodings) return one(shape.encoding);
  return Math.max(...shape.layerEncodings.map(one));
}

/** The native kernels' code for layer `layer`'s records: an encoding's (0..12) where the three agree, else mixedRecordCode. */
export function nativeRecordCode(shape: ExpertRecordShape, layer: number): number {
  const e = encodingsOf(shape, layer);
  return e.gate === e.up && e.up === e.down ? encodingCode(e.gate) : mixedRecordCode(e);
}

/** 2^24 + gate + up * 256 + down * 65536 (native-bindings/src/moe_native.cc record_encs). */
export function mixedRecordCode(e: RecordEncodings): number {
  return 2 ** 24 + encodingCode(e.gate) + encodingCode(e.up) * 256 + encodingCode(e.down) * 65536;
}

/** A short description: "q4_k", or "q4_k; ffn_down q6_k in layers 0, 3, 6-7". */
export function describeExpertEncodings(shape: ExpertRecordShape): string {
  if (!shape.layerEncodings) return shape.encoding;
  const parts: string[] = [];
  for (const part of PARTS) {
    const by = new Map<ExpertEncoding, number[]>();
    shape.layerEncodings.forEach((e, l) => by.set(e[part], [...(by.get(e[part]) ?? []), l]));
    for (const [enc, layers] of by) {
      if (enc === shape.encoding) continue;
      parts.push(`ffn_${part} ${enc} in ${layers.length === shape.layerEncodings.length ? "every layer" : `layer${layers.length > 1 ? "s" : ""} ${ranges(layers)}`}`);
    }
  }
  return parts.length ? `${shape.encoding}; ${parts.join(", ")}` : shape.encoding;
}

function ranges(xs: number[]): string {
  const out: string[] = [];
  for (let i = 0; i < xs.length; ) {
    let j = i;
    while (j + 1 < xs.length && xs[j + 1] === xs[j]! + 1) j++;
    out.push(j > i ? `${xs[i]}-${xs[j]}` : `${xs[i]}`);
    i = j + 1;
  }
  return out.join(", ");
}

/**
 * Refuses encodings a record cannot hold: unknown names, or rows that are not whole blocks (gate
 * and up rows are H values long, down rows F). `what` names the source in the message.
 */
export function checkRecordEncodings(e: RecordEncodings, hiddenSize: number, expertFfn: number, what: string): void {
  for (const part of PARTS) {
    const enc = e?.[part];
    if (!(ALL_EXPERT_ENCODINGS as readonly string[]).includes(enc as string)) {
      throw new InvalidOptionError(`${what}: ffn_${part} encoding must be one of ${ALL_EXPERT_ENCODINGS.join(", ")}, got ${JSON.stringify(enc)}`);
    }
    const cols = part === "down" ? expertFfn : hiddenSize;
    const k = isKQuant(enc) ? QK_K : enc === "int8" || enc === "int4" || enc === "mxfp4" || isGgmlBlocks(enc) ? BLOCK : 1;
    if (cols % k !== 0) throw new InvalidOptionError(`${what}: ffn_${part} rows of ${cols} values are not whole ${k}-value blocks of ${enc}`);
  }
}
