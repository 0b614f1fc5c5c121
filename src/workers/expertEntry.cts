// CommonJS entry of the CPU expert-pool worker. piscina loads its task file with require(); on
// Node 20 that require()s our ES modules synchronously, which can crash the process if the pool
// closes while a worker is still instantiating them. A CommonJS shim with a dynamic import keeps
// the ES module graph on the ordinary asynchronous path.
import type { ExpertResult, ExpertTask } from "../scheduler/expertWorker.js";

export = async function compute(task: ExpertTask): Promise<ExpertResult> {
  const m = await import("../scheduler/expertWorker.js");
  return m.default(task);
};
