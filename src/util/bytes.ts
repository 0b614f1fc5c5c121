/** Byte sizes as users write them: "6GiB", "512MiB", "1.5GB", "2000000", or "50%" of a total. */
import { InvalidOptionError } from "../errors.js";

const UNITS: Record<string, number> = {
  b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

/** A size in bytes, or a share of `total` when written as "NN%". */
export type ByteSize = number | { percent: number };

export function parseByteSize(text: string, option = "size"): ByteSize {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z%]*)\s*$/.exec(text);
  if (!m) throw new InvalidOptionError(`--${option} must look like 6GiB, 512MiB, 1.5GB, 1000000 or 50%, got "${text}"`);
  const value = Number(m[1]);
  const unit = m[2]!.toLowerCase();
  if (unit === "%") return { percent: value };
  const scale = unit === "" ? 1 : UNITS[unit];
  if (scale === undefined) throw new InvalidOptionError(`--${option}: unknown unit "${m[2]}" in "${text}" (use B, KiB, MiB, GiB, KB, MB, GB)`);
  return Math.floor(value * scale);
}

export function resolveByteSize(size: ByteSize, total: number): number {
  return typeof size === "number" ? size : Math.floor((size.percent / 100) * total);
}

export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return "unlimited";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}
