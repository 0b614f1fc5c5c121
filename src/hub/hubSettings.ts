/** Where the hub is and who we are to it, from the environment variables huggingface_hub reads. */
import * as fs from "node:fs";
import * as path from "node:path";
import { hfHome } from "./hubCache.js";

export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** $HF_ENDPOINT (a mirror, or a local test hub), else https://huggingface.co; no trailing slash. */
export function resolveEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  return (env.HF_ENDPOINT || DEFAULT_ENDPOINT).replace(/\/+$/, "");
}

/**
 * $HF_TOKEN (or the older $HUGGING_FACE_HUB_TOKEN), else the file `hf auth login` writes
 * ($HF_TOKEN_PATH, else $HF_HOME/token); undefined when there is none.
 */
export function resolveToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const fromEnv = (env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || "").trim();
  if (fromEnv) return fromEnv;
  const file = env.HF_TOKEN_PATH ? path.resolve(env.HF_TOKEN_PATH) : path.join(hfHome(env), "token");
  try {
    const text = fs.readFileSync(file, "utf8").trim();
    return text || undefined;
  } catch {
    return undefined;
  }
}

/** $HF_HUB_OFFLINE set to 1/true/yes/on: use the cache only. */
export function offlineFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return /^(1|true|yes|on)$/i.test((env.HF_HUB_OFFLINE ?? "").trim());
}
