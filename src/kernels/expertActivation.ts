/**
 * What an expert computes between its matrices, and whether it has biases. Every expert kernel
 * (native, js, onnx) takes these as ExpertKernelOptions.activation / expertBias:
 *
 *   silu          (Mixtral, Qwen-MoE, OLMoE; the default):
 *                 y = down(silu(gate x) * up x)
 *   clampedSwiglu (gpt-oss, HF modeling_gpt_oss.py GptOssExperts):
 *                 g = min(gate x + bg, limit), u = clamp(up x + bu, -limit, limit),
 *                 y = down((u + 1) * g * sigmoid(alpha * g)) + bd      (gpt-oss: alpha 1.702, limit 7)
 *
 * Biases (expertBias: true; any activation) are fp32 and follow the three matrices in the record:
 * gate bias [F], up bias [F], down bias [H] (store/expertEncoding.ts, expertRecordLayout). Without
 * them the record is exactly what it always was.
 */
export type ExpertActivation = { kind: "silu" } | { kind: "clampedSwiglu"; alpha: number; limit: number };

export const SILU: ExpertActivation = Object.freeze({ kind: "silu" });

/** gpt-oss's constants (alpha 1.702; limit is config.swiglu_limit, 7.0 in every released model). */
export function gptOssActivation(limit = 7.0, alpha = 1.702): ExpertActivation {
  return { kind: "clampedSwiglu", alpha, limit };
}

export function isDefaultActivation(a: ExpertActivation | undefined): boolean {
  return a === undefined || a.kind === "silu";
}

/** True when the expert computes what it always did: silu and no biases (byte-identical paths). */
export function isPlainExpert(o: { activation?: ExpertActivation; expertBias?: boolean }): boolean {
  return isDefaultActivation(o.activation) && !o.expertBias;
}

/**
 * The native kernels' form: [kind (0 silu, 1 clampedSwiglu), alpha, limit, bias (0/1)] (the
 * optional 9th argument of expertForward). Numbers the native code takes as fp32.
 */
export function nativeExpertSpec(activation: ExpertActivation | undefined, expertBias: boolean | undefined): Float64Array {
  const a = activation ?? SILU;
  return Float64Array.of(a.kind === "silu" ? 0 : 1, a.kind === "silu" ? 0 : a.alpha, a.kind === "silu" ? 0 : a.limit, expertBias ? 1 : 0);
}

export function checkActivation(a: ExpertActivation): void {
  if (a.kind === "silu") return;
  if (a.kind !== "clampedSwiglu") throw new Error(`unknown expert activation ${JSON.stringify(a)}`);
  if (!(Number.isFinite(a.alpha) && Number.isFinite(a.limit) && a.limit > 0)) {
    throw new Error(`clampedSwiglu needs a finite alpha and a positive finite limit (got alpha ${a.alpha}, limit ${a.limit})`);
  }
}

/**
 * The hidden activation h = act(g, u) for one element (the JS reference; fp64). g and u already
 * include their biases.
 */
export function activate(a: ExpertActivation, g: number, u: number): number {
  if (a.kind === "silu") return (g / (1 + Math.exp(-g))) * u;
  const gc = Math.min(g, a.limit);
  const uc = Math.min(Math.max(u, -a.limit), a.limit);
  return (uc + 1) * (gc / (1 + Math.exp(-a.alpha * gc)));
}
