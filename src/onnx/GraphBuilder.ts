/**
 * Builds ONNX models (opset 17) in memory with onnx-proto. Large initializers go to an external
 * data file beside the model, as ONNX's external-data convention describes, so graphs stay small
 * and onnxruntime can read weights straight from that file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import onnxProto from "onnx-proto";

const { onnx } = onnxProto;

export const OPSET = 17;
/** Initializers at least this large are written as external data. */
const EXTERNAL_MIN_BYTES = 1024;
/** External tensors start on this boundary, so readers may map them directly. */
const EXTERNAL_ALIGN = 64;

export type ElemType = "float32" | "float16" | "int8" | "int64";
export type Dim = number | string;
export type AttrValue = number | number[] | { float: number };

const ELEM: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  int8: onnx.TensorProto.DataType.INT8,
  int64: onnx.TensorProto.DataType.INT64,
};

export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly initializers: { name: string; dims: number[]; elem: ElemType; bytes: Uint8Array }[] = [];
  private counter = 0;

  constructor(private readonly name: string) {}

  input(name: string, elem: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, elem, dims));
    return name;
  }

  /** Marks `value` as a graph output called `name` (adds an Identity when the names differ). */
  output(value: string, name: string, elem: ElemType, dims: Dim[]): void {
    if (value !== name) this.nodes.push(onnx.NodeProto.create({ opType: "Identity", input: [value], output: [name], name: `out_${name}` }));
    this.outputs.push(valueInfo(name, elem, dims));
  }

  weight(name: string, data: Float32Array, dims: number[]): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`initializer ${name}: ${data.length} values for dims [${dims.join(", ")}]`);
    this.initializers.push({ name, dims, elem: "float32", bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
    return name;
  }

  constFloat(values: number[], dims: number[] = [values.length]): string {
    return this.weight(this.fresh("cf"), Float32Array.from(values), dims);
  }

  constInt64(values: number[]): string {
    const arr = BigInt64Array.from(values.map((v) => BigInt(v)));
    const name = this.fresh("ci");
    this.initializers.push({ name, dims: [values.length], elem: "int64", bytes: new Uint8Array(arr.buffer) });
    return name;
  }

  /** Adds a node and returns its (first) output name. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    const out = this.fresh(opType.toLowerCase());
    const attribute = Object.entries(attrs).map(([name, v]) => attribute_(name, v));
    this.nodes.push(onnx.NodeProto.create({ opType, input: inputs, output: [out], name: out, attribute }));
    return out;
  }

  /**
   * Serialises the model to `modelPath`; large initializers go to `modelPath + ".data"`.
   * Returns the paths written.
   */
  save(modelPath: string): string[] {
    const dataName = `${path.basename(modelPath)}.data`;
    const dataPath = path.join(path.dirname(modelPath), dataName);
    let fd: number | undefined;
    let offset = 0;
    const tensors = this.initializers.map((init) => {
      const base = { name: init.name, dims: init.dims, dataType: ELEM[init.elem] };
      if (init.bytes.byteLength < EXTERNAL_MIN_BYTES) return onnx.TensorProto.create({ ...base, rawData: init.bytes });
      fd ??= fs.openSync(dataPath, "w");
      const pad = (EXTERNAL_ALIGN - (offset % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
      if (pad) fs.writeSync(fd, new Uint8Array(pad));
      offset += pad;
      fs.writeSync(fd, init.bytes);
      const entry = onnx.TensorProto.create({
        ...base,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: "location", value: dataName },
          { key: "offset", value: String(offset) },
          { key: "length", value: String(init.bytes.byteLength) },
        ],
      });
      offset += init.bytes.byteLength;
      return entry;
    });
    if (fd !== undefined) {
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    }
    fs.writeFileSync(modelPath, this.encode(tensors));
    return fd !== undefined ? [modelPath, dataPath] : [modelPath];
  }

  /** The model as bytes with every initializer inline: for small graphs built at run time. */
  toBytes(): Uint8Array {
    return this.encode(this.initializers.map((init) => onnx.TensorProto.create({ name: init.name, dims: init.dims, dataType: ELEM[init.elem], rawData: init.bytes })));
  }

  private encode(initializer: InstanceType<typeof onnx.TensorProto>[]): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: "moe-run",
      opsetImport: [{ domain: "", version: OPSET }],
      graph: onnx.GraphProto.create({ name: this.name, node: this.nodes, input: this.inputs, output: this.outputs, initializer }),
    });
    return onnx.ModelProto.encode(model).finish();
  }

  private fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }
}

function valueInfo(name: string, elem: ElemType, dims: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: ELEM[elem],
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

function attribute_(name: string, v: AttrValue) {
  const T = onnx.AttributeProto.AttributeType;
  if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: T.INTS, ints: v });
  if (typeof v === "number") return onnx.AttributeProto.create({ name, type: T.INT, i: v });
  return onnx.AttributeProto.create({ name, type: T.FLOAT, f: v.float });
}
