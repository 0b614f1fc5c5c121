/** Per-layer attention keys and values of one sequence: [Hkv, S, hd] fp32 each. */
import type { HostTensor } from "../backends/onnx.js";

export class KvCache {
  /** Number of positions held. */
  length = 0;
  readonly keys: HostTensor[];
  readonly values: HostTensor[];

  constructor(
    readonly numLayers: number,
    private readonly numKvHeads: number,
    private readonly headDim: number
  ) {
    this.keys = [];
    this.values = [];
    this.reset();
  }

  reset(): void {
    this.length = 0;
    const empty = (): HostTensor => ({ data: new Float32Array(0), dims: [this.numKvHeads, 0, this.headDim] });
    this.keys.length = 0;
    this.values.length = 0;
    for (let l = 0; l < this.numLayers; l++) {
      this.keys.push(empty());
      this.values.push(empty());
    }
  }
}
