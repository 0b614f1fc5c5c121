// CommonJS entry of the expert-loader worker. piscina loads its task file with require(); on
// Node 20 that require()s our ES modules synchronously, which can crash the process if the pool
// closes while a worker is still instantiating them. A CommonJS shim with a dynamic import keeps
// the ES module graph on the ordinary asynchronous path.
import type { LoadTask } from "../cache/loaderWorker.js";

export = async function load(task: LoadTask): Promise<ArrayBuffer> {
  const m = await import("../cache/loaderWorker.js");
  return m.default(task);
};
