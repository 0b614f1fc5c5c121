/**
 * Descriptive statistics of a routing trace for `profile` and `report`: how evenly each layer
 * uses its experts and how often the top-1 expert changes.
 */
import type { RoutingTrace } from "./trace.js";

/** Selections of each expert per layer: counts[layer][expert]. */
export function expertUsage(trace: RoutingTrace): number[][] {
  const { numLayers, numExperts } = trace.meta;
  const counts = Array.from({ length: numLayers }, () => new Array<number>(numExperts).fill(0));
  for (const r of trace.records) for (const e of r.experts) counts[r.layer]![e]!++;
  return counts;
}

/** Shannon entropy of a count vector in bits, and as a share of the maximum log2(n). */
export function usageEntropy(counts: readonly number[]): { bits: number; normalized: number } {
  const total = counts.reduce((a, b) => a + b, 0);
  let bits = 0;
  for (const c of counts) if (c > 0) bits -= (c / total) * Math.log2(c / total);
  const max = Math.log2(counts.length);
  return { bits, normalized: max > 0 ? bits / max : 0 };
}

/** Distinct (seq, token) pairs in the trace. */
export function countTokens(trace: RoutingTrace): number {
  const seen = new Set<number>();
  for (const r of trace.records) seen.add(r.seq * 2 ** 26 + r.token);
  return seen.size;
}

/** Records grouped by token: rows[i] = experts per layer (undefined where a layer is missing). */
function tokenRows(trace: RoutingTrace): { seq: number; token: number; layers: (number[] | undefined)[] }[] {
  const rows: { seq: number; token: number; layers: (number[] | undefined)[] }[] = [];
  for (const r of trace.records) {
    let row = rows[rows.length - 1];
    if (!row || row.seq !== r.seq || row.token !== r.token) rows.push((row = { seq: r.seq, token: r.token, layers: new Array(trace.meta.numLayers) }));
    row.layers[r.layer] = r.experts;
  }
  return rows;
}

export interface Top1ChangeRates {
  /** layerPairs[l]: share of tokens whose top-1 expert id at layer l+1 differs from layer l. */
  layerPairs: (number | null)[];
  /** adjacentTokens[l]: share of tokens (after a prompt's first) whose top-1 at l differs from the previous token's. */
  adjacentTokens: (number | null)[];
}

export function top1ChangeRates(trace: RoutingTrace): Top1ChangeRates {
  const L = trace.meta.numLayers;
  const pair = { changed: new Array<number>(Math.max(0, L - 1)).fill(0), seen: new Array<number>(Math.max(0, L - 1)).fill(0) };
  const adj = { changed: new Array<number>(L).fill(0), seen: new Array<number>(L).fill(0) };
  let prev: ReturnType<typeof tokenRows>[number] | undefined;
  for (const row of tokenRows(trace)) {
    for (let l = 0; l + 1 < L; l++) {
      const a = row.layers[l]?.[0];
      const b = row.layers[l + 1]?.[0];
      if (a === undefined || b === undefined) continue;
      pair.seen[l]!++;
      if (a !== b) pair.changed[l]!++;
    }
    if (prev && prev.seq === row.seq && prev.token + 1 === row.token) {
      for (let l = 0; l < L; l++) {
        const a = prev.layers[l]?.[0];
        const b = row.layers[l]?.[0];
        if (a === undefined || b === undefined) continue;
        adj.seen[l]!++;
        if (a !== b) adj.changed[l]!++;
      }
    }
    prev = row;
  }
  const rate = (c: number[], s: number[]) => c.map((x, i) => (s[i]! > 0 ? x / s[i]! : null));
  return { layerPairs: rate(pair.changed, pair.seen), adjacentTokens: rate(adj.changed, adj.seen) };
}
