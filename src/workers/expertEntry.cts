// CommonJS entry of the CPU expert-pool worker (see loaderEntry.cts for why a shim).
import type { ExpertResult, ExpertTask } from "../scheduler/expertWorker.js";

export = async function compute(task: ExpertTask): Promise<ExpertResult> {
  const m = await import("../scheduler/expertWorker.js");
  return m.default(task);
};
