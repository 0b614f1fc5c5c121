/** The dense layers as onnxruntime sessions over the importer's graphs (fp32 weights). */
import * as path from "node:path";
import { OnnxSession, type ExecutionDevice } from "../backends/onnx.js";
import { layerWindow, modelFeatures, type ModelDims, type ModelFeatures } from "../architectures/ModelDims.js";
import { IO } from "../importer/modelGraphs.js";
import type { ModelManifest } from "../model/manifest.js";
import type { DenseLayers, LayerOutputs, RopeTables } from "./DenseLayers.js";
import type { KvCache } from "./KvCache.js";
import { causalMask } from "./rope.js";

export class OnnxDenseLayers implements DenseLayers {
  readonly name = "onnx" as const;
  readonly bytesPerToken: number;
  private readonly features: ModelFeatures;

  private constructor(
    private readonly dims: ModelDims,
    private readonly embedSession: OnnxSession,
    private readonly layers: OnnxSession[],
    private readonly headSession: OnnxSession
  ) {
    const d = dims;
    this.features = modelFeatures(d);
    const attn = (d.numHeads + 2 * d.numKvHeads) * d.headDim * d.hiddenSize + d.hiddenSize * d.numHeads * d.headDim;
    const shared = 3 * d.sharedExpertFfn * d.hiddenSize;
    this.bytesPerToken = 4 * (d.numLayers * (attn + d.numExperts * d.hiddenSize + shared) + d.vocabSize * d.hiddenSize);
  }

  static async create(modelDir: string, manifest: ModelManifest, options: { threads: number; device: ExecutionDevice }): Promise<OnnxDenseLayers> {
    const open = (rel: string) => OnnxSession.create(path.join(modelDir, rel), options);
    const sessions: OnnxSession[] = [];
    const track = async (p: Promise<OnnxSession>) => {
      const s = await p;
      sessions.push(s);
      return s;
    };
    try {
      const embed = await track(open(manifest.graphs.embed));
      const head = await track(open(manifest.graphs.head));
      const layers: OnnxSession[] = [];
      for (const rel of manifest.graphs.layers) layers.push(await track(open(rel)));
      return new OnnxDenseLayers(manifest.dims, embed, layers, head);
    } catch (err) {
      await Promise.all(sessions.map((s) => s.dispose()));
      throw err;
    }
  }

  async embed(ids: readonly number[]): Promise<Float32Array> {
    const out = await this.embedSession.run({ [IO.embed.ids]: { data: BigInt64Array.from(ids, (i) => BigInt(i)), dims: [ids.length] } });
    return out[IO.embed.hidden]!.data;
  }

  async layer(layer: number, hidden: Float32Array, T: number, kv: KvCache, rope: RopeTables): Promise<LayerOutputs> {
    const d = this.dims;
    const L = IO.layer;
    const past = kv.length;
    const out = await this.layers[layer]!.run({
      [L.hidden]: { data: hidden, dims: [T, d.hiddenSize] },
      [L.cos]: { data: rope.cos, dims: [T, d.headDim] },
      [L.sin]: { data: rope.sin, dims: [T, d.headDim] },
      [L.mask]: { data: causalMask(past, T, layerWindow(this.features, layer)), dims: [T, past + T] },
      [L.pastKey]: kv.keys[layer]!,
      // Multi-head latent attention caches latent rows only (as keys).
      ...(this.features.mla ? {} : { [L.pastValue]: kv.values[layer]! }),
    });
    kv.keys[layer] = out[L.presentKey]!;
    if (out[L.presentValue]) kv.values[layer] = out[L.presentValue]!;
    // Dense layers have no router: empty logits.
    return { attnOut: out[L.attnOut]!.data, moeIn: out[L.moeIn]!.data, routerLogits: out[L.routerLogits]?.data ?? new Float32Array(0), sharedOut: out[L.sharedOut]?.data };
  }

  async head(hidden: Float32Array, T: number): Promise<Float32Array> {
    return (await this.headSession.run({ [IO.head.hidden]: { data: hidden, dims: [T, this.dims.hiddenSize] } }))[IO.head.logits]!.data;
  }

  async dispose(): Promise<void> {
    await Promise.all([this.embedSession, this.headSession, ...this.layers].map((s) => s.dispose()));
  }
}
