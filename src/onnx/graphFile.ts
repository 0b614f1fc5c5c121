/**
 * Reads the graph files the importer wrote (GraphBuilder.save): initializer shapes, where their
 * data lies (inline, or at an offset of the `.onnx.data` file beside the graph), and the data
 * itself. Used to check a model directory against its manifest and by the native dense layers,
 * which compute from the same weights without onnxruntime.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import onnxProto from "onnx-proto";
import { MoeRunError } from "../errors.js";

const { onnx } = onnxProto;

/** The graph files (.onnx) hold structure only, their weights are in .onnx.data. */
const MAX_GRAPH_BYTES = 64 * 1024 * 1024;

/** protobufjs gives int64 fields as numbers, or as Long objects when the long package is there. */
function int(v: unknown): number {
  if (typeof v === "number") return v;
  if (v && typeof (v as { toNumber?: unknown }).toNumber === "function") return (v as { toNumber(): number }).toNumber();
  return Number(v);
}

export interface GraphInitializer {
  dims: number[];
  /** ONNX TensorProto data type (1 = float32). */
  dataType: number;
  external?: { location: string; offset: number; length: number };
  /** Inline bytes (small initializers). */
  raw?: Uint8Array;
}

export interface GraphFile {
  inits: Map<string, GraphInitializer>;
  /** Each graph input's shape: numbers, or names of symbolic dims. */
  inputs: (number | string)[][];
}

/** The initializers of a graph file and its inputs' shapes; a file that is not ONNX is refused. */
export function readGraph(modelDir: string, rel: string): GraphFile {
  const p = path.join(modelDir, rel);
  const damaged = (why: string) => new MoeRunError("MODEL_DIR_INVALID", `${rel} in ${modelDir} is damaged (${why}); re-import the model`);
  if (fs.statSync(p).size > MAX_GRAPH_BYTES) throw damaged("far larger than a graph file");
  let model: InstanceType<typeof onnx.ModelProto>;
  try {
    model = onnx.ModelProto.decode(fs.readFileSync(p));
  } catch (err) {
    throw damaged(`not an ONNX model: ${(err instanceof Error ? err.message : String(err)).split("\n")[0]}`);
  }
  if (!model.graph) throw damaged("an ONNX model without a graph");
  const inits = new Map<string, GraphInitializer>();
  for (const t of model.graph.initializer ?? []) {
    const init: GraphInitializer = { dims: (t.dims ?? []).map(int), dataType: t.dataType ?? 0 };
    if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL) {
      const kv = new Map((t.externalData ?? []).map((e): [string, string] => [e.key ?? "", e.value ?? ""]));
      init.external = { location: kv.get("location") ?? "", offset: Number(kv.get("offset") ?? 0), length: Number(kv.get("length") ?? NaN) };
    } else if (t.rawData && t.rawData.length) {
      init.raw = t.rawData;
    }
    inits.set(t.name ?? "", init);
  }
  const inputs = (model.graph.input ?? []).map((i) => (i.type?.tensorType?.shape?.dim ?? []).map((x) => (x.dimParam ? x.dimParam : int(x.dimValue ?? 0))));
  return { inits, inputs };
}

/**
 * One float32 initializer's values, read from the graph's data file (or inline). The shape was
 * checked against the manifest when the model was opened; a short read here means the file
 * changed since, and is refused.
 */
export function readFloatInitializer(modelDir: string, rel: string, graph: GraphFile, name: string): Float32Array {
  const init = graph.inits.get(name);
  const damaged = (why: string) => new MoeRunError("MODEL_DIR_INVALID", `${rel} in ${modelDir}: weight ${name} ${why}; re-import the model`);
  if (!init) throw damaged("is missing");
  if (init.dataType !== onnx.TensorProto.DataType.FLOAT) throw damaged(`has data type ${init.dataType}, not float32`);
  const count = init.dims.reduce((a, b) => a * b, 1);
  const out = new Float32Array(count);
  const bytes = new Uint8Array(out.buffer);
  if (init.external) {
    const { location, offset, length } = init.external;
    if (length !== count * 4) throw damaged(`holds ${length} bytes for ${count} values`);
    const fd = fs.openSync(path.join(path.dirname(path.join(modelDir, rel)), location), "r");
    try {
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, bytes, done, length - done, offset + done);
        if (n === 0) throw damaged("lies past the end of its data file");
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
  } else {
    if (!init.raw || init.raw.byteLength !== count * 4) throw damaged(`holds ${init.raw?.byteLength ?? 0} bytes for ${count} values`);
    bytes.set(init.raw);
  }
  return out;
}
