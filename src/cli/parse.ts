/** Option parsers for the CLI that turn bad values into actionable errors. */
import { InvalidOptionError } from "../errors.js";

export function parseIntOption(name: string, min = 0): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidOptionError(`--${name} must be a whole number >= ${min}, got "${value}"`);
    return n;
  };
}

export function parseFloatOption(name: string, min = -Infinity, max = Infinity): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidOptionError(`--${name} must be a number in [${min}, ${max}], got "${value}"`);
    return n;
  };
}
