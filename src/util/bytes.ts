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
  return parseByteSizeAs(text, `--${option}`);
}

/** parseByteSize with the name shown in errors as given (a library option: "deviceMem"). */
export function parseByteSizeAs(text: string, label: string): ByteSize {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z%]*)\s*$/.exec(text);
  if (!m) throw new InvalidOptionError(`${label} must look like 6GiB, 512MiB, 1.5GB, 1000000 or 50%, got "${text}"`);
  const value = Number(m[1]);
  const unit = m[2]!.toLowerCase();
  if (unit === "%") return { percent: value };
  const scale = unit === "" ? 1 : UNITS[unit];
  if (scale === undefined) throw new InvalidOptionError(`${label}: unknown unit "${m[2]}" in "${text}" (use B, KiB, MiB, GiB, KB, MB, GB)`);
  const bytes = Math.floor(value * scale);
  if (!Number.isSafeInteger(bytes)) throw new InvalidOptionError(`${label} "${text}" is too large`);
  return bytes;
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

/**
 * Two sizes formatted with enough decimals that unequal sizes read differently: "770.50 KiB is
 * below the minimum 770.50 KiB" becomes "770.499 KiB is below the minimum 770.500 KiB".
 */
export function formatBytesDistinct(a: number, b: number): [string, string] {
  let fa = formatBytes(a);
  let fb = formatBytes(b);
  if (a === b || fa !== fb || !Number.isFinite(a) || !Number.isFinite(b)) return [fa, fb];
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.max(a, b) >= 1024 ** (i + 1) && i < units.length - 1) i++;
  for (let decimals = 3; decimals <= 12 && fa === fb; decimals++) {
    fa = `${(a / 1024 ** i).toFixed(decimals)} ${units[i]}`;
    fb = `${(b / 1024 ** i).toFixed(decimals)} ${units[i]}`;
  }
  return fa === fb ? [`${a} bytes`, `${b} bytes`] : [fa, fb];
}
