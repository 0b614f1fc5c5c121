/**
 * The dense (non-expert) parts of a model: token embedding, each layer's attention + router (+
 * shared expert), and the final norm + LM head. Two implementations, checked against each other
 * in test/dense-layers.test.ts:
 *   native : native-bindings/src/dense_layer.cc, weights at the experts' width (f16/int8), the
 *            KV cache in buffers that grow in place. The default on the CPU.
 *   onnx   : the layer graphs on an onnxruntime execution provider (fp32); the default with a GPU
 *            provider and the fallback when the native kernels are not built.
 */
import type { KvCache } from "./KvCache.js";

export type DenseLayersName = "native" | "onnx";

/** One layer's outputs, each [T, *] fp32. */
export interface LayerOutputs {
  /** [T, H] residual after attention. */
  attnOut: Float32Array;
  /** [T, H] post-attention norm: the router's and experts' input (gate input). */
  moeIn: Float32Array;
  /** [T, E]; empty in dense layers (no router). */
  routerLogits: Float32Array;
  /** [T, H] gated shared-expert output when the model has one; a dense layer's MLP output. */
  sharedOut?: Float32Array;
}

/** Each layer's spec, weight blob and section table, as addon.denseLayer takes them. */
export interface DecodeLayers {
  specs: readonly Float64Array[];
  blobs: readonly Uint8Array[];
  sections: readonly Float64Array[];
  /** Per layer: whether it has a shared expert (a dense layer: its MLP), i.e. a sharedOut. */
  shared: readonly boolean[];
}

/** RoPE tables for the T positions of a forward pass, [T, hd] each. */
export interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
}

export interface DenseLayers {
  readonly name: DenseLayersName;
  /** Dense weight bytes one decode token reads (attention, router, shared expert, LM head). */
  readonly bytesPerToken: number;
  /**
   * Makes `kv` ready to take T more positions before a forward pass (native: grows its buffers;
   * onnx keeps the tensors its graphs return and needs nothing).
   */
  reserve?(kv: KvCache, T: number): void;
  /** [T, H] embeddings of `ids`. */
  embed(ids: readonly number[]): Promise<Float32Array>;
  /** Layer `layer` over T tokens at positions kv.length..; appends them to the layer's cache. */
  layer(layer: number, hidden: Float32Array, T: number, kv: KvCache, rope: RopeTables): Promise<LayerOutputs>;
  /**
   * The per-layer arguments of the native decode step (FusedDecode), with `kv`'s precision set;
   * undefined where it cannot run these layers (onnx; latent attention).
   */
  decodeLayers?(kv: KvCache): DecodeLayers | undefined;
  /** Logits [T, V] of the T rows of `hidden` ([T, H]). */
  head(hidden: Float32Array, T: number): Promise<Float32Array>;
  dispose(): Promise<void>;
}
